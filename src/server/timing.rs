//! How long requests take, from being read to their replies being written: the pool's latency
//! histogram, and SLOWLOG's record of the slow ones. Requests read together share one clock
//! reading, and replies written together another, so timing costs two clock readings per
//! read-and-write, not per request.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::metrics::{Latency, LatencyCounts};
use crate::slowlog::SlowLog;

/// Requests read and not yet all answered, one entry per read. Lives as long as a burst.
#[derive(Default)]
pub(super) struct Timing {
    reads: VecDeque<Read>,
    counts: LatencyCounts,
}

/// Requests with sequence numbers `start..end`, read at `at`; `start` moves as they are
/// answered.
struct Read {
    start: u64,
    end: u64,
    at: Instant,
}

/// A request kept until it is answered, in case it turns out slow: only while the pool keeps a
/// slow log.
pub(super) struct Recorded {
    /// The sequence number of its reply.
    pub seq: u64,
    pub frame: Bytes,
    /// The shard its first backend request went to, and how many more it had.
    pub shard: Option<(Arc<str>, usize)>,
    /// The longest time one of its backend requests took.
    pub backend: Duration,
}

impl Timing {
    /// Requests `start..end` were read at `at`.
    pub(super) fn read(&mut self, start: u64, end: u64, at: Instant) {
        if end > start {
            self.reads.push_back(Read { start, end, at });
        }
    }

    /// Every request before `answered` has had its reply written, just now: each is counted
    /// in `latency`, and the `recorded` ones among them are returned if `slowlog` finds them
    /// slow, with how long they took.
    pub(super) fn answered(
        &mut self,
        answered: u64,
        latency: &Latency,
        recorded: &mut VecDeque<Recorded>,
        slowlog: &SlowLog,
    ) -> Vec<(Recorded, Duration)> {
        let mut slow = Vec::new();
        if self.reads.front().is_none_or(|r| r.start >= answered) {
            return slow;
        }
        let now = Instant::now();
        while let Some(read) = self.reads.front_mut() {
            let end = read.end.min(answered);
            if end <= read.start {
                break;
            }
            let took = now.saturating_duration_since(read.at);
            self.counts.observe(took, end - read.start);
            while recorded.front().is_some_and(|r| r.seq < end) {
                if let Some(request) = recorded.pop_front()
                    && slowlog.is_slow(took)
                {
                    slow.push((request, took));
                }
            }
            read.start = end;
            if read.start < read.end {
                break;
            }
            self.reads.pop_front();
        }
        latency.add(&mut self.counts);
        slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(seq: u64) -> Recorded {
        Recorded {
            seq,
            frame: Bytes::new(),
            shard: None,
            backend: Duration::ZERO,
        }
    }

    #[test]
    fn answered_requests_are_timed_and_the_slow_ones_returned() {
        let mut timing = Timing::default();
        let long_ago = Instant::now() - Duration::from_secs(1);
        timing.read(0, 3, long_ago);
        timing.read(3, 4, Instant::now());
        let mut kept: VecDeque<Recorded> = (0..4).map(recorded).collect();
        let (latency, slowlog) = (Latency::default(), SlowLog::new(500_000, 10));
        let slow = timing.answered(2, &latency, &mut kept, &slowlog);
        assert_eq!(slow.iter().map(|(r, _)| r.seq).collect::<Vec<_>>(), [0, 1]);
        assert!(slow.iter().all(|(_, took)| *took >= Duration::from_secs(1)));
        assert!(timing.answered(2, &latency, &mut kept, &slowlog).is_empty());
        assert_eq!(kept.len(), 2, "requests 2 and 3 are not answered yet");
        let slow = timing.answered(4, &latency, &mut kept, &slowlog);
        assert_eq!(slow.iter().map(|(r, _)| r.seq).collect::<Vec<_>>(), [2]);
        assert!(kept.is_empty() && timing.reads.is_empty());
    }
}
