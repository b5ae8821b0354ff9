//! Failed AUTH attempts: counted by pool and user, and logged at most once a second per client
//! address with how many there were, so a password-guessing client neither goes unnoticed nor
//! floods the log.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// How often one address's failures are logged, at most.
const LOG_EVERY: Duration = Duration::from_secs(1);
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

/// Per client address (none: a Unix socket): when its failures were last logged, and how many
/// came since.
type Unlogged = HashMap<Option<IpAddr>, (Option<Instant>, u64)>;

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
            logged.retain(|_, (at, _)| at.is_some_and(|at| now.duration_since(at) < LOG_EVERY));
        }
        let ip = peer.map(|p| p.ip());
        let (at, unlogged) = logged.entry(ip).or_insert((None, 0));
        *unlogged += 1;
        if at.is_none_or(|at| now.duration_since(at) >= LOG_EVERY) {
            let from = ip.map_or_else(|| "a Unix socket".to_string(), |ip| ip.to_string());
            tracing::warn!(pool = %self.pool, "{unlogged} failed AUTH from {from} (last as user {user})");
            *at = Some(now);
            *unlogged = 0;
        }
    }
}
