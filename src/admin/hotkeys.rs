//! `/hotkeys`: each pool's hottest keys over the last minute, and the metric of the hottest.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::{Admin, json};
use crate::cache::hotkeys::{TOP, shown};
use crate::metrics::{HOT_KEYS_SHOWN, ShownKey};
use crate::topology::Topology;

#[derive(Serialize)]
struct HotKeysView {
    pools: Vec<PoolHotKeys>,
}

#[derive(Serialize)]
struct PoolHotKeys {
    name: String,
    keys: Vec<HotKeyView>,
}

#[derive(Serialize)]
struct HotKeyView {
    key: String,
    /// Requests over the window (the last minute, or since the proxy started), estimated: a
    /// few more than were made, never fewer.
    requests: u64,
    requests_per_second: f64,
    /// The shard the key is on now.
    shard: Option<String>,
}

pub(super) async fn hot_keys_view(State(admin): State<Arc<Admin>>) -> Response {
    let pools = (admin.topology.pools().iter())
        .map(|pool| PoolHotKeys {
            name: pool.config.name.clone(),
            keys: (pool.hottest(TOP).into_iter())
                .map(|(k, shard)| HotKeyView {
                    key: shown(&k.key),
                    requests: k.requests,
                    requests_per_second: (k.per_second * 10.0).round() / 10.0,
                    shard: shard.map(|s| s.to_string()),
                })
                .collect(),
        })
        .collect();
    json(StatusCode::OK, &HotKeysView { pools })
}

/// Sets the metric of the hottest keys from the pools' counters, before a scrape.
pub(super) fn show_in_metrics(topology: &Topology) {
    let pools = topology.pools();
    let hottest = pools.iter().map(|pool| {
        let keys = (pool.hottest(HOT_KEYS_SHOWN).into_iter())
            .map(|(k, shard)| ShownKey {
                key: shown(&k.key),
                shard: shard.map(|s| s.to_string()).unwrap_or_default(),
                per_second: k.per_second,
            })
            .collect();
        (&*pool.config.name, keys)
    });
    topology.metrics.show_hot_keys(hottest);
}
