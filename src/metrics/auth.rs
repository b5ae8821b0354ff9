//! Failed AUTH attempts: counted by pool and user, logged at most once a second per client
//! address with how many there were, so a password-guessing client neither goes unnoticed nor
//! floods the log, and slowed per address: each failure's reply waits longer than the last.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Per client address (none: a Unix socket): its recent failures.
type Unlogged = HashMap<Option<IpAddr>, Source>;

/// One address's failures.
#[derive(Debug)]
struct Source {
    log: Throttle,
    /// Failures since the address was last quiet for [`FORGET_AFTER`].
    failures: u32,
    last: Instant,
}

/// An address's failures are forgotten after this long without one.
const FORGET_AFTER: Duration = Duration::from_secs(60);

/// The longest a failed AUTH's reply is held back.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// How long the reply to an address's `failures`-th recent failure waits: 1 ms, doubling with
/// each failure, at most [`MAX_DELAY`]. A mistyped password costs its user nothing they would
/// notice; guessing from one address, on any number of connections, slows to a few hundred
/// tries a second at most (each connection waits out its own failure's delay).
fn delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(12);
    Duration::from_millis(1 << doublings).min(MAX_DELAY)
}

impl AuthFailures {
    pub(super) fn new(pool: &str, counts: Family<UserLabels, Counter>) -> AuthFailures {
        AuthFailures {
            pool: pool.to_string(),
            counts,
            logged: Arc::default(),
        }
    }

    /// Counts a failed attempt as `user` (a configured user's name, or `unknown`) from `peer`.
    /// Returns how long its reply should wait.
    pub fn failed(&self, user: &str, peer: Option<SocketAddr>) -> Duration {
        let labels = UserLabels {
            pool: self.pool.clone(),
            user: user.to_string(),
        };
        self.counts.get_or_create(&labels).inc();
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.len() >= MAX_ADDRESSES {
            logged.retain(|_, source| now.duration_since(source.last) < FORGET_AFTER);
        }
        if logged.len() >= MAX_ADDRESSES {
            // Guessing from more addresses than are remembered: each starts over.
            logged.clear();
        }
        let ip = peer.map(|p| p.ip());
        let source = logged.entry(ip).or_insert(Source {
            log: Throttle::default(),
            failures: 0,
            last: now,
        });
        if now.duration_since(source.last) >= FORGET_AFTER {
            source.failures = 0;
        }
        source.failures = source.failures.saturating_add(1);
        source.last = now;
        if let Some(n) = source.log.note(now) {
            let from = ip.map_or_else(|| "a Unix socket".to_string(), |ip| ip.to_string());
            tracing::warn!(pool = %self.pool, "{n} failed AUTH from {from} (last as user {user})");
        }
        delay(source.failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_from_an_address_waits_longer_up_to_a_cap() {
        let failures = AuthFailures::new("p", Family::default());
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let other: SocketAddr = "127.0.0.2:5000".parse().unwrap();
        let waits: Vec<Duration> = (0..14)
            .map(|_| failures.failed("app", Some(peer)))
            .collect();
        assert_eq!(waits[0], Duration::from_millis(1));
        assert_eq!(waits[3], Duration::from_millis(8));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(waits[13], MAX_DELAY);
        // Another address starts at the beginning.
        assert_eq!(
            failures.failed("app", Some(other)),
            Duration::from_millis(1)
        );
    }
}
