//! A pool's `near_cache` as serde reads it, and its defaults.

use std::time::Duration;

use serde::Deserialize;

use super::whole_millis;
use crate::config::NearCacheConfig;

/// Memory for cached replies unless set: 256 MiB.
const DEFAULT_MAX_BYTES: usize = 256 * 1024 * 1024;
/// The oldest an entry is served unless set: a bound on anything an invalidation missed.
const DEFAULT_MAX_TTL: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(in crate::config) struct RawNearCache {
    max_bytes: Option<usize>,
    #[serde(default, deserialize_with = "whole_millis")]
    max_ttl_ms: Option<u64>,
    keys: Option<Vec<String>>,
    hot_only: Option<bool>,
}

impl RawNearCache {
    /// The settings, or why they cannot be used.
    pub(in crate::config) fn into_config(self) -> Result<NearCacheConfig, String> {
        let max_bytes = self.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes < 1024 * 1024 {
            return Err("near_cache: max_bytes must be at least 1048576 (1 MiB)".into());
        }
        let max_ttl = match self.max_ttl_ms {
            Some(0) => return Err("near_cache: max_ttl_ms must be at least 1".into()),
            Some(ms) => Duration::from_millis(ms),
            None => DEFAULT_MAX_TTL,
        };
        let keys = self.keys.unwrap_or_default();
        if keys.iter().any(String::is_empty) {
            return Err("near_cache: keys: an empty pattern matches no key; give '*' for every key, or leave keys out".into());
        }
        Ok(NearCacheConfig {
            max_bytes,
            max_ttl,
            keys,
            hot_only: self.hot_only.unwrap_or(false),
        })
    }
}
