//! Failed AUTH attempts: counted by pool and user, and logged at most once a second per client
//! address with how many there were, so a password-guessing client neither goes unnoticed nor
//! floods the log.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::Throttle;

/// Addresses remembered before the quiet ones are forgotten.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UserLabels {
    pub pool: String,
    pub user: String,
}

/// One pool's failed AUTH attempts.
#[derive(Clone, Debug)]
pub struct AuthFailures {
    pool: String,
    counts: Family<UserLabels, Counter>,
    logged: Arc<Mutex<Unlogged>>,
}

/// Per client address (none: a Unix socket): its failures' log lines.
type Unlogged = HashMap<Option<IpAddr>, Throttle>;

impl AuthFailures {
    pub(super) fn new(pool: &str, counts: Family<UserLabels, Counter>) -> AuthFailures {
        AuthFailures {
            pool: pool.to_string(),
            counts,
            logged: Arc::default(),
        }
    }

    /// Counts a failed attempt as `user` (a configured user's name, or `unknown`) from `peer`.
    pub fn failed(&self, user: &str, peer: Option<SocketAddr>) {
        let labels = UserLabels {
            pool: self.pool.clone(),
            user: user.to_string(),
        };
        self.counts.get_or_create(&labels).inc();
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.len() >= MAX_ADDRESSES {
            logged.retain(|_, throttle| !throttle.is_quiet(now));
        }
        let ip = peer.map(|p| p.ip());
        if let Some(n) = logged.entry(ip).or_default().note(now) {
            let from = ip.map_or_else(|| "a Unix socket".to_string(), |ip| ip.to_string());
            tracing::warn!(pool = %self.pool, "{n} failed AUTH from {from} (last as user {user})");
        }
    }
}
