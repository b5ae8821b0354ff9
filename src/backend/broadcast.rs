//! Every key's changes on a node, for the pool's clients that track key prefixes (CLIENT
//! TRACKING … BCAST through the proxy). While any client does, one more RESP3 connection per
//! node turns on `CLIENT TRACKING ON BCAST` for itself and hands what it hears to the pool as
//! [`Source::Broadcast`]; it is closed when none does any more. It is apart from the node's
//! listener so that a change is told to prefix clients once, from here, and not again as the
//! invalidation of a key some data connection read.
//!
//! [`Node::broadcasting`](super::Node::broadcasting) says when the server has confirmed BCAST, which a client's
//! CLIENT TRACKING ON BCAST waits for. A connection lost while BCAST is wanted may have
//! missed changes: once another is confirmed, the pool's clients are told that every key may
//! have changed.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::BytesMut;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

use super::opening::{self, identify};
use super::tracking::{FIRST_BACKOFF, Invalidations, MAX_BACKOFF, Source, hear};
use super::{ConnSettings, ConnectError, NodeShared};
use crate::net::Stream;
use crate::protocol::resp::encode;

/// Keeps the node's broadcast connection open while `sink` wants it, until `stop`.
pub(super) async fn follow(
    shared: Arc<NodeShared>,
    settings: Arc<ConnSettings>,
    sink: Arc<dyn Invalidations>,
    stop: CancellationToken,
) {
    let (Some(tracking), Some(mut wanted)) = (shared.tracking.as_ref(), sink.broadcast()) else {
        return;
    };
    let mut backoff = FIRST_BACKOFF;
    // BCAST was wanted while no connection heard it: changes may have gone unheard.
    let mut missed = false;
    loop {
        if !*wanted.borrow_and_update() {
            missed = false;
            tokio::select! {
                changed = wanted.changed() => if changed.is_err() { return },
                _ = stop.cancelled() => return,
            }
            continue;
        }
        match open(&settings).await {
            Ok(stream) => {
                backoff = FIRST_BACKOFF;
                tracking.broadcasting.send_replace(true);
                if missed {
                    sink.all();
                }
                let everything = || sink.all();
                let ended = tokio::select! {
                    ended = hear(&stream, &settings, (sink.as_ref(), Source::Broadcast), everything) => Some(ended),
                    _ = wanted.wait_for(|wanted| !*wanted) => None,
                    _ = stop.cancelled() => return,
                };
                tracking.broadcasting.send_replace(false);
                if let Some(ended) = ended {
                    missed = true;
                    tracing::warn!(node = %shared.label, "broadcast tracking connection lost: {ended}");
                }
                continue;
            }
            Err(e) => {
                // Wanted and not there: what changes until it is goes unheard.
                missed = true;
                tracing::debug!(node = %shared.label, "broadcast tracking connection cannot open: {e}");
            }
        }
        tokio::select! {
            _ = sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A RESP3 connection to the node that tracks every key in broadcast mode, confirmed.
async fn open(settings: &ConnSettings) -> Result<Stream, ConnectError> {
    let stream = identify(
        opening::connect(settings).await?,
        settings,
        &AtomicU64::new(0),
    )
    .await?;
    let mut command = BytesMut::new();
    let args: [&[u8]; 4] = [b"CLIENT", b"TRACKING", b"ON", b"BCAST"];
    encode::command(&mut command, args.into_iter());
    let reply = opening::ask(&stream, settings, &command).await?;
    match reply.starts_with(b"+OK") {
        true => Ok(stream),
        false => Err(ConnectError::Refused(
            String::from_utf8_lossy(&reply).trim_end().to_string(),
        )),
    }
}
