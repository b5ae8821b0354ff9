//! Periodic health checks: PING (memcache: `version`) on a connection of their own, so a dead
//! node is noticed without client traffic and a returning one without a restart; for Redis,
//! `ROLE` too, so the pool learns which node is master from the nodes themselves.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::time::{MissedTickBehavior, interval, timeout};
use tokio_util::sync::CancellationToken;

use super::connection::{connect, read_reply};
use super::{ConnSettings, Failure, Health, NodeShared, Role};
use crate::config::{Address, HealthCheck, Protocol};
use crate::net::Stream;
use crate::protocol::ReplyKind;
use crate::protocol::memcache::ReplyShape;
use crate::protocol::resp::encode;

pub(super) async fn run(
    shared: Arc<NodeShared>,
    settings: Arc<ConnSettings>,
    check: HealthCheck,
    stop: CancellationToken,
) {
    let mut ticker = interval(check.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut conn: Option<Stream> = None;
    let mut failed_in_a_row = 0;
    let mut reported_role = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
            _ = shared.check_now.notified() => {}
        }
        let passed = timeout(check.timeout, async {
            ping(&mut conn, &settings).await?;
            if settings.protocol == Protocol::Redis {
                let attach = shared.attach_to.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(master) = attach {
                    replicate_from(&mut conn, &settings, &master).await?;
                    tracing::warn!(node = %shared.label, "attached as a replica of {master}: it was this shard's master and came back claiming to be master");
                }
                return Ok(Some(role(&mut conn, &settings).await?));
            }
            if shared.stale.load(Ordering::Relaxed) {
                flush(&mut conn, &settings).await?;
                shared.metrics.flushes.inc();
                tracing::info!(node = %shared.label, "flushed before serving again");
                shared.stale.store(false, Ordering::Relaxed);
            }
            Ok(None)
        })
        .await
        .unwrap_or(Err(Failure::Timeout(check.timeout)));
        match passed {
            Ok(role) => {
                failed_in_a_row = 0;
                shared.record_success();
                shared.set_health(Health::Up, &"health check passed");
                // After the node is up: a role is only ever known of a node seen up.
                if let Some(role) = role
                    && reported_role != Some(role)
                {
                    reported_role = Some(role);
                    shared.report_role(role);
                }
            }
            Err(failure) => {
                conn = None;
                failed_in_a_row += 1;
                tracing::debug!(node = %shared.label, "health check failed: {failure}");
                shared.record_failure(&failure);
                if failed_in_a_row >= check.failures {
                    let why =
                        format!("{failed_in_a_row} health checks failed, the last: {failure}");
                    shared.set_health(Health::Down, &why);
                }
            }
        }
    }
}

/// PING, expecting PONG (a node still loading its data set answers -LOADING and is not
/// healthy); memcache: `version`, expecting `VERSION …`.
async fn ping(conn: &mut Option<Stream>, settings: &ConnSettings) -> Result<(), Failure> {
    let (request, expected): (&[u8], &[u8]) = match settings.protocol {
        Protocol::Redis => (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
        Protocol::Memcache => (b"version\r\n", b"VERSION "),
    };
    ask(conn, settings, request, expected).await.map(drop)
}

/// What the node says it is (`ROLE`): a master, or a replica of another node.
async fn role(conn: &mut Option<Stream>, settings: &ConnSettings) -> Result<Role, Failure> {
    let reply = ask(conn, settings, b"*1\r\n$4\r\nROLE\r\n", b"*").await?;
    // `*3\r\n$6\r\nmaster\r\n…` or `*5\r\n$5\r\nslave\r\n…`: the first element names it.
    let mut lines = reply[..].split(|&b| b == b'\n').skip(2);
    match lines.next().map(<[u8]>::trim_ascii_end) {
        Some(b"master") => Ok(Role::Master),
        Some(b"slave" | b"replica") => Ok(Role::Replica),
        _ => {
            let shown = String::from_utf8_lossy(&reply).trim_end().to_string();
            Err(Failure::Unexpected(shown))
        }
    }
}

/// `REPLICAOF host port`: the node follows `master`.
async fn replicate_from(
    conn: &mut Option<Stream>,
    settings: &ConnSettings,
    master: &Address,
) -> Result<(), Failure> {
    let mut request = BytesMut::new();
    let port = master.port.to_string();
    encode::command(
        &mut request,
        [&b"REPLICAOF"[..], master.host.as_bytes(), port.as_bytes()].into_iter(),
    );
    ask(conn, settings, &request, b"+OK").await.map(drop)
}

/// Empties a memcached node that may have missed writes.
async fn flush(conn: &mut Option<Stream>, settings: &ConnSettings) -> Result<(), Failure> {
    ask(conn, settings, b"flush_all\r\n", b"OK\r\n")
        .await
        .map(drop)
}

/// Sends `request` on the checker's connection (opening it if needed) and expects a reply that
/// starts with `expected`; returns the reply.
async fn ask(
    conn: &mut Option<Stream>,
    settings: &ConnSettings,
    request: &[u8],
    expected: &[u8],
) -> Result<BytesMut, Failure> {
    let stream = match conn {
        Some(stream) => stream,
        None => conn.insert(connect(settings).await.map_err(Failure::Unreachable)?),
    };
    stream.write_all(request).await?;
    let kind = match settings.protocol {
        Protocol::Redis => ReplyKind::Resp,
        Protocol::Memcache => ReplyKind::Memcache(ReplyShape::Line),
    };
    let mut buf = BytesMut::with_capacity(64);
    let reply = read_reply(stream, &mut buf, settings, kind).await?;
    if reply.starts_with(expected) {
        Ok(reply)
    } else {
        let shown = String::from_utf8_lossy(&reply).trim_end().to_string();
        Err(Failure::Unexpected(shown))
    }
}
