//! Latency histograms on atomics, observed from every worker without a lock (prometheus-client's
//! own histogram takes one per observation). Observations are counted locally first
//! ([`LatencyCounts`]) and added once per batch: per write of a session's replies, per read of
//! a backend connection's. Each thread adds to its own shard of the histogram (its own cache
//! lines), and a scrape sums the shards.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the buckets, in microseconds: from a loopback round trip to a timeout.
const BOUNDS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];
/// The buckets, the last one unbounded.
const BUCKETS: usize = BOUNDS_US.len() + 1;

/// Shards of each histogram: threads beyond this many share them.
const SHARDS: usize = 8;

/// A histogram of durations, shared by every worker.
#[derive(Clone, Debug, Default)]
pub struct Latency(Arc<[Shard; SHARDS]>);

/// One thread's part, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

/// The shard this thread adds to: threads take shards in turn as they first add.
fn this_threads_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
    }
    SHARD.with(|shard| {
        *shard.get().get_or_insert_with(|| {
            let next = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
            shard.set(Some(next));
            next
        })
    })
}

/// Durations counted by one task, to add to a [`Latency`] at once.
#[derive(Debug, Default)]
pub struct LatencyCounts {
    buckets: [u64; BUCKETS],
    sum_us: u64,
    count: u64,
}

impl LatencyCounts {
    /// Counts `n` requests that each took `took`.
    pub fn observe(&mut self, took: Duration, n: u64) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[bucket] += n;
        self.sum_us = self.sum_us.saturating_add(us.saturating_mul(n));
        self.count += n;
    }
}

impl Latency {
    /// Adds what `counts` holds, and clears it.
    pub fn add(&self, counts: &mut LatencyCounts) {
        if counts.count == 0 {
            return;
        }
        let shard = &self.0[this_threads_shard()];
        for (shared, local) in shard.buckets.iter().zip(&mut counts.buckets) {
            if *local > 0 {
                shared.fetch_add(std::mem::take(local), Ordering::Relaxed);
            }
        }
        let sum_us = std::mem::take(&mut counts.sum_us);
        shard.sum_us.fetch_add(sum_us, Ordering::Relaxed);
        counts.count = 0;
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // The encoder wants each bucket's own count, the last bound infinite.
        let bounds = BOUNDS_US
            .iter()
            .map(|&us| us as f64 / 1e6)
            .chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .enumerate()
            .map(|(i, bound)| {
                let n = self.0.iter().map(|s| s.buckets[i].load(Ordering::Relaxed));
                (bound, n.sum())
            })
            .collect();
        let sum_us: u64 = self
            .0
            .iter()
            .map(|s| s.sum_us.load(Ordering::Relaxed))
            .sum();
        let sum = sum_us as f64 / 1e6;
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let mut counts = LatencyCounts::default();
        counts.observe(Duration::from_micros(100), 2);
        counts.observe(Duration::from_micros(101), 1);
        counts.observe(Duration::from_secs(60), 1);
        assert_eq!(counts.buckets[0], 2);
        assert_eq!(counts.buckets[1], 1);
        assert_eq!(counts.buckets[BUCKETS - 1], 1);
        let latency = Latency::default();
        latency.add(&mut counts);
        assert_eq!(counts.count, 0, "added and cleared");
        let mut text = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("t", "test", latency);
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("t_bucket{le=\"0.0001\"} 2\n"), "{text}");
        assert!(text.contains("t_bucket{le=\"0.00025\"} 3\n"), "{text}");
        assert!(text.contains("t_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("t_count 4\n"), "{text}");
        assert!(text.contains("t_sum 60.000301\n"), "{text}");
    }
}
