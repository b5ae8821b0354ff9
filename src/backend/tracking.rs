//! Key tracking for a pool's near cache (Redis's CLIENT TRACKING). Each node has one listening
//! connection, which hears the node's invalidations as RESP3 pushes and hands them to the
//! cache. Every shared data connection to the node tracks the keys it reads with OPTIN and
//! REDIRECT to the listener: the connection that reads is the one tracked, its replies stay in
//! its clients' protocol (a RESP2 connection cannot carry pushes), and one connection per node
//! hears for all of them.
//!
//! The node's cache *generation* moves whenever a cached reply from the node may have missed
//! its invalidation: the listener or a tracking connection was lost (the server drops what
//! it tracked for a closed connection), the node said its whole keyspace changed, or it was
//! replaced as master.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

use super::opening::{self, identify};
use super::{ConnSettings, ConnectError, Failure, NodeShared};
use crate::net::Stream;
use crate::protocol::resp::{ReplyScanner, Value, encode};

pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(50);
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where a node's invalidations go: the pool's near cache, and its clients that track keys.
pub trait Invalidations: Send + Sync {
    /// `keys` changed on the node, as one invalidation heard from `source` said.
    fn keys(&self, keys: &[&[u8]], source: Source);

    /// Any key of the node may have changed unheard: the node's generation moved.
    fn all(&self);

    /// Whether a node should hear every key's changes for the clients that listen to key
    /// prefixes (see `backend::broadcast`), as it changes.
    fn broadcast(&self) -> Option<watch::Receiver<bool>> {
        None
    }
}

/// Which connection heard an invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The listener, of keys read by the data connections that redirect to it.
    Reads,
    /// The broadcast connection, of every key (see `backend::broadcast`).
    Broadcast,
}

/// A node's tracking state, shared by its listener and data connections.
#[derive(Default)]
pub(crate) struct Tracking {
    /// Told whenever the generation moves.
    sink: Option<Arc<dyn Invalidations>>,
    /// The listener's id on the server (CLIENT ID); 0 while it is not connected.
    listener: AtomicU64,
    /// Moves each time the listener connects: data connections then redirect to it.
    listener_generation: AtomicU64,
    /// See the module's doc.
    generation: AtomicU64,
    /// Whether the node's broadcast connection hears every key's changes (its BCAST
    /// confirmed by the server).
    pub(super) broadcasting: watch::Sender<bool>,
}

impl std::fmt::Debug for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracking")
            .field("listener", &self.listener)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Tracking {
    /// A node's tracking, whose generation moves are told to `sink`.
    pub(crate) fn new(sink: Arc<dyn Invalidations>) -> Tracking {
        Tracking {
            sink: Some(sink),
            ..Tracking::default()
        }
    }

    /// The cache generation, if the node's reads can be tracked now (its listener is
    /// connected).
    pub(crate) fn ready(&self) -> Option<u64> {
        let generation = self.generation.load(Ordering::SeqCst);
        (self.listener.load(Ordering::SeqCst) != 0).then_some(generation)
    }

    /// Whether the node's broadcast connection hears every key's changes, as it changes.
    pub(crate) fn broadcasting(&self) -> watch::Receiver<bool> {
        self.broadcasting.subscribe()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Cached replies from the node may have missed an invalidation.
    pub(crate) fn lost(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(sink) = &self.sink {
            sink.all();
        }
    }

    /// The listener's generation and id, read in that order: a connection that redirects to
    /// the id and keeps the generation redirects again when the listener next connects.
    fn listener(&self) -> (u64, u64) {
        let generation = self.listener_generation.load(Ordering::SeqCst);
        (generation, self.listener.load(Ordering::SeqCst))
    }

    /// The command a data connection sends to track its reads with the listener `id`, if a
    /// new listener has connected since the connection last did (`followed`, which it
    /// updates).
    pub(super) fn redirect(&self, followed: &mut u64) -> Option<Bytes> {
        let (generation, id) = self.listener();
        if generation == *followed {
            return None;
        }
        *followed = generation;
        (id != 0).then(|| tracking_command(id))
    }
}

/// `CLIENT TRACKING ON OPTIN REDIRECT id`: only reads after CLIENT CACHING YES are tracked.
fn tracking_command(id: u64) -> Bytes {
    let mut buf = BytesMut::new();
    let id = id.to_string();
    let args: [&[u8]; 6] = [
        b"CLIENT",
        b"TRACKING",
        b"ON",
        b"OPTIN",
        b"REDIRECT",
        id.as_bytes(),
    ];
    encode::command(&mut buf, args.into_iter());
    buf.freeze()
}

/// Turns tracking on for a data connection just opened; returns the listener generation it
/// follows. A server that refuses (one older than Redis 6) leaves the connection untracked:
/// its reads are then never kept.
pub(super) async fn start(
    stream: &Stream,
    shared: &NodeShared,
    settings: &ConnSettings,
    tracking: &Tracking,
) -> Result<u64, ConnectError> {
    let mut followed = u64::MAX;
    let Some(command) = tracking.redirect(&mut followed) else {
        return Ok(followed);
    };
    let reply = opening::ask(stream, settings, &command).await?;
    if reply.first() == Some(&b'-') {
        tracing::warn!(node = %shared.label, "CLIENT TRACKING refused: {}; reads from it are not cached", String::from_utf8_lossy(&reply).trim_end());
    }
    Ok(followed)
}

/// The node's listener: connects (RESP3), learns its id, and hands every invalidation it
/// hears to `sink`, until `stop`; reconnects with backoff when it is lost.
pub(super) async fn listen(
    shared: Arc<NodeShared>,
    settings: Arc<ConnSettings>,
    sink: Arc<dyn Invalidations>,
    stop: CancellationToken,
) {
    let Some(tracking) = shared.tracking.as_ref() else {
        return;
    };
    let mut backoff = FIRST_BACKOFF;
    let id = AtomicU64::new(0);
    loop {
        let connected = match opening::connect(&settings).await {
            Ok(stream) => identify(stream, &settings, &id).await,
            Err(e) => Err(e),
        };
        let stream = match connected {
            Ok(stream) if id.load(Ordering::SeqCst) != 0 => Some(stream),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(node = %shared.label, "tracking listener cannot connect: {e}");
                None
            }
        };
        if let Some(stream) = stream {
            backoff = FIRST_BACKOFF;
            tracking
                .listener
                .store(id.load(Ordering::SeqCst), Ordering::SeqCst);
            tracking.listener_generation.fetch_add(1, Ordering::SeqCst);
            tracking.lost();
            let ended = tokio::select! {
                ended = hear(&stream, &settings, (sink.as_ref(), Source::Reads), || tracking.lost()) => ended,
                _ = stop.cancelled() => return,
            };
            tracking.listener.store(0, Ordering::SeqCst);
            tracking.lost();
            tracing::warn!(node = %shared.label, "tracking listener lost: {ended}; cached replies from the node are dropped");
        }
        tokio::select! {
            _ = sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads the pushes a tracking connection hears, until it fails: keys go to `sink` as from
/// `source`; a run of invalidations of every key is `everything`.
pub(super) async fn hear(
    stream: &Stream,
    settings: &ConnSettings,
    (sink, source): (&dyn Invalidations, Source),
    everything: impl Fn(),
) -> Failure {
    let mut buf = BytesMut::new();
    let mut chunk = 4096;
    let mut scanner = ReplyScanner::new(settings.max_reply_depth);
    loop {
        match stream.read_some(&mut buf, &mut chunk).await {
            Ok(0) => return Failure::Closed,
            Err(e) => return e.into(),
            Ok(_) => {}
        }
        let mut all = false;
        loop {
            let len = match scanner.scan(&buf) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => return Failure::BadReply(e.into()),
            };
            let frame = buf.split_to(len);
            all |= invalidated(&frame, settings.max_reply_depth, (sink, source));
        }
        if all {
            everything();
        }
    }
}

/// Takes in one frame the listener heard: `invalidate` with the keys, or with a null when
/// every key changed.
/// Returns whether it said every key changed: the caller moves the generation once for a run
/// of those (a flush sends one for each connection redirecting to the listener).
fn invalidated(frame: &[u8], depth: usize, (sink, source): (&dyn Invalidations, Source)) -> bool {
    let Some(value) = Value::read(frame, depth) else {
        return false;
    };
    let Some([kind, keys]) = value.list() else {
        return false;
    };
    if kind.text() != Some(b"invalidate") {
        return false;
    }
    match keys {
        Value::Nil => return true,
        Value::List(keys) => {
            let keys: Vec<&[u8]> = keys.iter().filter_map(Value::text).collect();
            sink.keys(&keys, source);
        }
        _ => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Heard(Mutex<Vec<Vec<u8>>>);

    impl Invalidations for Heard {
        fn keys(&self, keys: &[&[u8]], _: Source) {
            let mut heard = self.0.lock().unwrap();
            heard.extend(keys.iter().map(|k| k.to_vec()));
        }

        fn all(&self) {}
    }

    #[test]
    fn keys_are_handed_on_and_a_null_says_every_key_changed() {
        let sink = Heard::default();
        let heard = (&sink as &dyn Invalidations, Source::Reads);
        let keys = b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$3\r\nb\nc\r\n";
        assert!(!invalidated(keys, 8, heard));
        assert_eq!(*sink.0.lock().unwrap(), [b"a".to_vec(), b"b\nc".to_vec()]);
        assert!(invalidated(b">2\r\n$10\r\ninvalidate\r\n_\r\n", 8, heard));
        // Anything else is not an invalidation.
        let message = b">2\r\n$7\r\nmessage\r\n*1\r\n$1\r\nx\r\n";
        assert!(!invalidated(message, 8, heard));
        assert!(!invalidated(b"+OK\r\n", 8, heard));
        assert_eq!(sink.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_data_connection_redirects_once_per_listener() {
        let tracking = Tracking::default();
        let mut followed = u64::MAX;
        // No listener yet: nothing to redirect to.
        assert_eq!(tracking.redirect(&mut followed), None);
        assert_eq!(tracking.redirect(&mut followed), None);
        tracking.listener.store(42, Ordering::SeqCst);
        tracking.listener_generation.fetch_add(1, Ordering::SeqCst);
        let command = tracking.redirect(&mut followed).unwrap();
        assert!(command.ends_with(b"$8\r\nREDIRECT\r\n$2\r\n42\r\n"));
        assert_eq!(tracking.redirect(&mut followed), None);
        assert_eq!(tracking.ready(), Some(0));
    }
}
