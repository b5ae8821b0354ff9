//! The near cache: replies of reads kept in the proxy and served without a backend, kept exact
//! by the servers' own invalidations (Redis's CLIENT TRACKING).
//!
//! A reply is kept only if nothing could have changed its key between the read being sent and
//! its reply arriving. Three counters say so, each read when the read is sent and compared,
//! under the key's shard lock, when its reply comes:
//! - the key's *epoch* (one of [`EPOCHS`] counters, by the key's hash), moved on by an
//!   invalidation of the key and by a write to it through this proxy, both when the write is
//!   sent and when it is answered;
//! - the node's cache *generation* (kept by the node), moved on when a connection that tracks
//!   keys for it is lost, when it says its whole keyspace changed (FLUSHALL), and when it is
//!   replaced as master;
//! - the cache's *flush* count, moved on by FLUSHALL and FLUSHDB through this proxy.
//!
//! Each also removes what it invalidates (an epoch move removes the key; a generation or
//! flush move leaves stale entries that are never served and are evicted in time).

pub(crate) mod clients;
use clients::ClientTracking;
pub(crate) mod hotkeys;
mod pattern;
mod store;

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{Invalidations, NodeId, Source};
use crate::config::NearCacheConfig;
use crate::metrics::{InvalidationCause, NearCacheMetrics, Refusal};
pub(crate) use pattern::matches;
use store::Store;
pub(crate) use store::{Origin, Variant};

/// Shards of the cache, each with its own lock: a request takes one, never all.
const SHARDS: usize = 64;
/// Epoch counters, by key hash: two keys share one in [`EPOCHS`], which costs them no more
/// than a refused fill now and then.
const EPOCHS: usize = 1 << 16;

/// A pool's near cache, shared by its workers.
pub(crate) struct NearCache {
    max_ttl: Duration,
    hot_only: bool,
    patterns: Vec<Box<[u8]>>,
    /// Bytes each shard may hold.
    budget: usize,
    shards: Box<[Mutex<Store>]>,
    epochs: Box<[AtomicU32]>,
    flushes: AtomicU32,
    hasher: std::hash::RandomState,
    metrics: NearCacheMetrics,
}

/// What was true of a key when its read was sent: the reply is kept only if it still is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    hash: u64,
    epoch: u32,
    flushes: u32,
    origin: Origin,
    sent: Instant,
}

impl NearCache {
    pub(crate) fn new(config: &NearCacheConfig, metrics: NearCacheMetrics) -> NearCache {
        NearCache {
            max_ttl: config.max_ttl,
            hot_only: config.hot_only,
            patterns: config.keys.iter().map(|k| k.as_bytes().into()).collect(),
            budget: config.max_bytes / SHARDS,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            epochs: (0..EPOCHS).map(|_| AtomicU32::new(0)).collect(),
            flushes: AtomicU32::new(0),
            hasher: std::hash::RandomState::new(),
            metrics,
        }
    }

    pub(crate) fn metrics(&self) -> &NearCacheMetrics {
        &self.metrics
    }

    /// Whether replies of `key` are cached at all (the pool's `keys` patterns).
    pub(crate) fn caches(&self, key: &[u8]) -> bool {
        self.patterns.is_empty() || self.patterns.iter().any(|p| matches(p, key))
    }

    /// Whether only hot keys are kept (`hot_only`).
    pub(crate) fn hot_only(&self) -> bool {
        self.hot_only
    }

    /// Whether a reply of `key` may be kept now: `is_hot` says whether the hot-key counter ranks
    /// it hot, asked only when the pool caches hot keys alone.
    pub(crate) fn keeps(&self, key: &[u8], is_hot: impl FnOnce() -> bool) -> bool {
        self.caches(key) && (!self.hot_only || is_hot())
    }

    fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The shard a key's hash is kept in. Its epoch's index determines it, so the epoch only
    /// moves under the lock a fill takes.
    fn shard(&self, hash: u64) -> MutexGuard<'_, Store> {
        let epoch = hash as usize % EPOCHS;
        (self.shards[epoch % SHARDS])
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn epoch(&self, hash: u64) -> &AtomicU32 {
        &self.epochs[hash as usize % EPOCHS]
    }

    /// The cached reply of `key` for the first of `variants` that has one, if `serves` says
    /// where it came from still serves the key (with the same generation) and it has not
    /// expired by `now`. The caller counts it ([`NearCache::count_reads`]).
    pub(crate) fn get(
        &self,
        key: &[u8],
        variants: &[Variant<'_>],
        now: Instant,
        serves: impl Fn(NodeId, u64) -> bool,
    ) -> Option<Bytes> {
        let flushes = self.flushes.load(Ordering::SeqCst);
        self.shard(self.hash(key)).get(key, variants, flushes, |o| {
            o.expires > now && serves(o.node, o.generation)
        })
    }

    /// Counts reads answered from the cache and not, as a session adds them up: one shared
    /// counter touched per burst, not per read.
    pub(crate) fn count_reads(&self, [hits, misses]: [u32; 2]) {
        if hits > 0 {
            self.metrics.hits.inc_by(u64::from(hits));
        }
        if misses > 0 {
            self.metrics.misses.inc_by(u64::from(misses));
        }
    }

    /// What to check when the reply of a read of `key` comes, sent now to `node` whose cache
    /// generation is `generation`.
    pub(crate) fn ticket(&self, key: &[u8], node: NodeId, generation: u64, now: Instant) -> Ticket {
        let hash = self.hash(key);
        Ticket {
            hash,
            epoch: self.epoch(hash).load(Ordering::SeqCst),
            flushes: self.flushes.load(Ordering::SeqCst),
            origin: Origin {
                node,
                generation,
                expires: now + self.max_ttl,
            },
            sent: now,
        }
    }

    /// Keeps `reply`, the reply to the read `ticket` was taken for, unless something may have
    /// changed the key meanwhile: `generation` is the node's now, `pttl` what the server said
    /// of the key's expiry (PTTL: -2 no key, -1 no expiry, else milliseconds left).
    pub(crate) fn fill(
        &self,
        (key, variant): (Bytes, Variant<'_>),
        ticket: &Ticket,
        reply: Bytes,
        (generation, pttl): (u64, i64),
    ) {
        let refused = if generation != ticket.origin.generation {
            Some(Refusal::Reconnected)
        } else if self.flushes.load(Ordering::SeqCst) != ticket.flushes {
            Some(Refusal::Flushed)
        } else if pttl == 0 {
            Some(Refusal::Expiring)
        } else {
            None
        };
        if let Some(why) = refused {
            return self.metrics.refused(why);
        }
        let mut origin = ticket.origin;
        if pttl > 0 {
            let expiry = ticket.sent + Duration::from_millis(pttl as u64);
            origin.expires = origin.expires.min(expiry);
        }
        let mut shard = self.shard(ticket.hash);
        // Under the lock that every move of the epoch takes.
        if self.epoch(ticket.hash).load(Ordering::SeqCst) != ticket.epoch {
            drop(shard);
            return self.metrics.refused(Refusal::Invalidated);
        }
        let change = shard.put((key, variant), (reply, origin, ticket.flushes), self.budget);
        drop(shard);
        self.metrics.fills.inc();
        self.metrics
            .changed(change.entries, change.bytes, change.evicted);
    }

    /// `key` changed, or may have: its replies are forgotten, and reads of it in flight are
    /// not kept.
    pub(crate) fn invalidate(&self, key: &[u8], cause: InvalidationCause) {
        let hash = self.hash(key);
        let mut shard = self.shard(hash);
        self.epoch(hash).fetch_add(1, Ordering::SeqCst);
        let change = shard.remove(key);
        drop(shard);
        self.metrics.invalidated(cause);
        self.metrics.changed(change.entries, change.bytes, 0);
    }

    /// Every key may have changed (FLUSHALL, FLUSHDB through this proxy).
    pub(crate) fn flush(&self) {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        for shard in self.shards.iter() {
            let change = shard.lock().unwrap_or_else(|p| p.into_inner()).clear();
            self.metrics.changed(change.entries, change.bytes, 0);
        }
        self.metrics.invalidated(InvalidationCause::Flush);
    }
}

/// Where a pool's nodes' invalidations go: its near cache and its clients that track keys.
pub(crate) struct Heard {
    pub cache: Arc<NearCache>,
    pub clients: Arc<ClientTracking>,
}

impl Invalidations for Heard {
    fn keys(&self, keys: &[&[u8]], source: Source) {
        for key in keys {
            self.cache.invalidate(key, InvalidationCause::Server);
        }
        match source {
            Source::Reads => self.clients.heard(keys),
            Source::Broadcast => self.clients.broadcast_heard(keys),
        }
    }

    /// The cache needs nothing: it compares generations itself.
    fn all(&self) {
        self.clients.all_changed();
    }

    fn broadcast(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.clients.broadcast())
    }
}

#[cfg(test)]
mod tests;
