//! The hottest keys' request rates, per pool: set afresh at each scrape from the pools'
//! hot-key counters, so that keys no longer hot leave the listing.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::family;

/// Keys shown per pool: enough to see what dominates, few enough to keep the series bounded.
pub const SHOWN: usize = 8;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HotKeyLabels {
    pool: String,
    key: String,
    shard: String,
}

/// A hot key as the metric shows it.
pub struct ShownKey {
    pub key: String,
    pub shard: String,
    pub per_second: f64,
}

#[derive(Debug)]
pub(super) struct HotKeyFamily(Family<HotKeyLabels, Gauge<f64, AtomicU64>>);

impl HotKeyFamily {
    pub(super) fn register(r: &mut Registry) -> HotKeyFamily {
        HotKeyFamily(family(
            r,
            "hot_key_requests_per_second",
            "Requests per second over the last minute for each pool's hottest keys (estimated)",
        ))
    }

    /// Replaces what is shown by `pools`' hottest keys.
    pub(super) fn show<'a>(&self, pools: impl Iterator<Item = (&'a str, Vec<ShownKey>)>) {
        self.0.clear();
        for (pool, keys) in pools {
            for k in keys.into_iter().take(SHOWN) {
                let labels = HotKeyLabels {
                    pool: pool.to_string(),
                    key: k.key,
                    shard: k.shard,
                };
                self.0.get_or_create(&labels).set(k.per_second);
            }
        }
    }
}
