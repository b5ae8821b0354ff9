//! Descriptors kept for the proxy's own connections to its nodes. Clients and admin
//! connections each hold one; one more is refused when taking it would leave fewer than a
//! reserve of the process's open-file limit, so no number of them can stop the proxy from
//! reconnecting to a node that restarted (or from opening a blocking command's connection).

use std::sync::atomic::{AtomicU64, Ordering};

/// Descriptors held by clients and admin connections, in every pool.
static HELD: AtomicU64 = AtomicU64::new(0);

/// A descriptor held by a client or an admin connection, given back when dropped.
#[derive(Debug)]
pub struct Descriptor(());

impl Drop for Descriptor {
    fn drop(&mut self) {
        HELD.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a descriptor for a client or admin connection, unless that would cut into the reserve.
/// The limit is read each time: an operator may change it while the proxy runs (`prlimit`).
pub fn take() -> Option<Descriptor> {
    let limit = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(u64::MAX, |(soft, _)| soft);
    let allowed = limit.saturating_sub(reserve(limit));
    let before = HELD.fetch_add(1, Ordering::Relaxed);
    if before >= allowed {
        HELD.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    Some(Descriptor(()))
}

/// What is kept for everything else: a quarter of the limit, at least 32 (the runtimes, the
/// listeners, a few nodes), at most 16,384 (thousands of backend connections).
fn reserve(limit: u64) -> u64 {
    (limit / 4).clamp(32, 16_384)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarter_is_kept_within_bounds() {
        assert_eq!(reserve(64), 32);
        assert_eq!(reserve(1024), 256);
        assert_eq!(reserve(1 << 20), 16_384);
    }
}
