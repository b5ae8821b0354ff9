//! Periodic health checks: PING on a connection of their own, so a dead node is noticed without
//! client traffic and a returning one without a restart.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_util::sync::CancellationToken;

use super::connection::{connect, read_reply};
use super::{ConnSettings, NodeShared};
use crate::config::HealthCheck;

pub(super) async fn run(
    shared: Arc<NodeShared>,
    settings: Arc<ConnSettings>,
    check: HealthCheck,
    stop: CancellationToken,
) {
    let mut ticker = interval(check.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conn: Option<TcpStream> = None;
    let mut failed_in_a_row = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let passed = timeout(check.timeout, ping(&mut conn, &settings))
            .await
            .unwrap_or(Err(()));
        match passed {
            Ok(()) => {
                failed_in_a_row = 0;
                shared.record_success();
                shared.set_up(true);
            }
            Err(()) => {
                conn = None;
                failed_in_a_row += 1;
                shared.record_failure();
                if failed_in_a_row >= check.failures {
                    shared.set_up(false);
                }
            }
        }
    }
}

/// PING, expecting PONG; a node still loading its data set answers -LOADING and is not healthy.
async fn ping(conn: &mut Option<TcpStream>, settings: &ConnSettings) -> Result<(), ()> {
    if conn.is_none() {
        *conn = Some(connect(settings).await.map_err(|_| ())?);
    }
    let stream = conn.as_mut().ok_or(())?;
    stream
        .write_all(b"*1\r\n$4\r\nPING\r\n")
        .await
        .map_err(|_| ())?;
    let mut buf = BytesMut::with_capacity(64);
    let reply = read_reply(stream, &mut buf, settings.max_reply_depth)
        .await
        .map_err(|_| ())?;
    if &reply[..] == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(())
    }
}
