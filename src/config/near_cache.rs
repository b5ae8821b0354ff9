//! The settings of a pool's near cache.

use std::time::Duration;

/// The near cache of a pool: how much it holds, for how long at most, and which keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NearCacheConfig {
    /// Bytes of cached keys and replies, for the pool's workers together.
    pub max_bytes: usize,
    /// No entry is served older than this, whatever the servers said.
    pub max_ttl: Duration,
    /// Glob patterns (as KEYS takes them) of the keys cached; empty: every key.
    pub keys: Vec<String>,
    /// Only keys the hot-key counter ranks among a worker's hottest are kept.
    pub hot_only: bool,
}
