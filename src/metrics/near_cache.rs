//! A pool's near-cache metrics: hits and misses, fills and why some were refused,
//! invalidations by cause, evictions, and what it holds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{PoolLabels, family};

/// Why a reply was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The key was invalidated or written while its read was in flight.
    Invalidated,
    /// A connection tracking the node's keys was lost, or the node flushed or was replaced.
    Reconnected,
    /// FLUSHALL or FLUSHDB went through the proxy meanwhile.
    Flushed,
    /// The key expires now.
    Expiring,
    /// The node did not take the read as tracked (CLIENT CACHING failed).
    Untracked,
    /// The read was sent again (a cluster's redirect, a failed node), untracked: its ticket
    /// was for the first node.
    Resent,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::Invalidated,
        Refusal::Reconnected,
        Refusal::Flushed,
        Refusal::Expiring,
        Refusal::Untracked,
        Refusal::Resent,
    ];

    fn name(self) -> &'static str {
        match self {
            Refusal::Invalidated => "invalidated",
            Refusal::Reconnected => "reconnected",
            Refusal::Flushed => "flushed",
            Refusal::Expiring => "expiring",
            Refusal::Untracked => "untracked",
            Refusal::Resent => "resent",
        }
    }
}

/// Why cached replies were forgotten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidationCause {
    /// A server said the key changed.
    Server,
    /// A write to the key went through this proxy.
    Write,
    /// FLUSHALL or FLUSHDB went through this proxy.
    Flush,
}

impl InvalidationCause {
    pub const ALL: [InvalidationCause; 3] = [
        InvalidationCause::Server,
        InvalidationCause::Write,
        InvalidationCause::Flush,
    ];

    fn name(self) -> &'static str {
        match self {
            InvalidationCause::Server => "server",
            InvalidationCause::Write => "write",
            InvalidationCause::Flush => "flush",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    pool: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    pool: String,
    cause: String,
}

/// The families of every pool's near cache.
#[derive(Debug)]
pub(super) struct NearCacheFamilies {
    hits: Family<PoolLabels, Counter>,
    misses: Family<PoolLabels, Counter>,
    fills: Family<PoolLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    invalidations: Family<CauseLabels, Counter>,
    evictions: Family<PoolLabels, Counter>,
    entries: Family<PoolLabels, Gauge>,
    bytes: Family<PoolLabels, Gauge>,
}

impl NearCacheFamilies {
    pub(super) fn register(r: &mut Registry) -> NearCacheFamilies {
        NearCacheFamilies {
            hits: family(r, "near_cache_hits", "Reads answered from the near cache"),
            misses: family(
                r,
                "near_cache_misses",
                "Cacheable reads the near cache did not hold",
            ),
            fills: family(r, "near_cache_fills", "Replies kept in the near cache"),
            refused: family(
                r,
                "near_cache_fills_refused",
                "Replies not kept, by reason: the key may have changed while its read was in flight, or its server did not track the read",
            ),
            invalidations: family(
                r,
                "near_cache_invalidations",
                "Invalidations taken in, by cause",
            ),
            evictions: family(
                r,
                "near_cache_evictions",
                "Keys evicted to stay within max_bytes",
            ),
            entries: family(r, "near_cache_keys", "Keys with replies in the near cache"),
            bytes: family(
                r,
                "near_cache_bytes",
                "Bytes the near cache counts for its keys and replies",
            ),
        }
    }

    pub(super) fn pool(&self, pool: &str) -> NearCacheMetrics {
        let l = PoolLabels {
            pool: pool.to_string(),
        };
        NearCacheMetrics {
            hits: self.hits.get_or_create(&l).clone(),
            misses: self.misses.get_or_create(&l).clone(),
            fills: self.fills.get_or_create(&l).clone(),
            refused: Refusal::ALL.map(|why| {
                let labels = ReasonLabels {
                    pool: pool.to_string(),
                    reason: why.name().to_string(),
                };
                self.refused.get_or_create(&labels).clone()
            }),
            invalidations: InvalidationCause::ALL.map(|cause| {
                let labels = CauseLabels {
                    pool: pool.to_string(),
                    cause: cause.name().to_string(),
                };
                self.invalidations.get_or_create(&labels).clone()
            }),
            evictions: self.evictions.get_or_create(&l).clone(),
            entries: self.entries.get_or_create(&l).clone(),
            bytes: self.bytes.get_or_create(&l).clone(),
        }
    }
}

/// One pool's handles.
#[derive(Clone, Debug)]
pub struct NearCacheMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub fills: Counter,
    refused: [Counter; Refusal::ALL.len()],
    invalidations: [Counter; InvalidationCause::ALL.len()],
    evictions: Counter,
    entries: Gauge,
    bytes: Gauge,
}

impl NearCacheMetrics {
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].inc();
    }

    pub fn invalidated(&self, cause: InvalidationCause) {
        self.invalidations[cause as usize].inc();
    }

    /// What the cache holds changed by `entries` keys and `bytes`, `evicted` keys evicted.
    pub fn changed(&self, entries: i64, bytes: i64, evicted: u64) {
        if entries != 0 {
            self.entries.inc_by(entries);
        }
        if bytes != 0 {
            self.bytes.inc_by(bytes);
        }
        if evicted > 0 {
            self.evictions.inc_by(evicted);
        }
    }

    /// Its values now: hits, misses, fills, refused, invalidations, evictions, keys, bytes
    /// (INFO's near-cache section).
    pub fn values(&self) -> [(&'static str, i64); 8] {
        let sum = |c: &[Counter]| c.iter().map(|c| c.get() as i64).sum();
        [
            ("near_cache_hits", self.hits.get() as i64),
            ("near_cache_misses", self.misses.get() as i64),
            ("near_cache_fills", self.fills.get() as i64),
            ("near_cache_fills_refused", sum(&self.refused)),
            ("near_cache_invalidations", sum(&self.invalidations)),
            ("near_cache_evictions", self.evictions.get() as i64),
            ("near_cache_keys", self.entries.get()),
            ("near_cache_bytes", self.bytes.get()),
        ]
    }
}
