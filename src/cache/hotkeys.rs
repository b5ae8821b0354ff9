//! Hot keys: how many requests each key got over the last minute, estimated within a bounded
//! memory — per worker a count-min sketch of the minute (six ten-second slices, so the minute
//! slides) and the keys it ranks highest, merged when asked (`/hotkeys`, the metric, a near
//! cache with `hot_only`). A worker's counter is locked only by its own sessions and by a
//! reader now and then: no lock is shared by every session.
//!
//! One request in [`SAMPLED`] is counted, chosen at random, and counts are scaled back up: a
//! hot key has many requests, so its estimate stays close, while the cost of counting every
//! request (a lock, a hash, a dozen counters) would be paid by every request of every pool.

use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Counters per row of a sketch: over-estimates stay within 1/2048 of the minute's requests.
const WIDTH: usize = 2048;
const ROWS: usize = 4;
/// The minute is counted in slices, the oldest dropped as a new one starts.
const SLICES: usize = 6;
const SLICE: Duration = Duration::from_secs(10);
/// Keys a worker ranks: twice what is shown, so that a key high on one worker and lower on
/// another is still merged.
const RANKED: usize = 64;
/// Keys shown, and ranked as hot for `hot_only`.
pub(crate) const TOP: usize = 32;
/// One request in this many is counted.
const SAMPLED: u32 = 8;

thread_local! {
    /// Each worker thread's own pseudo-random sequence for sampling (xorshift).
    static DRAWS: std::cell::Cell<u32> = const { std::cell::Cell::new(0x9e37_79b9) };
}

/// Whether this request is one of the one in `sampled` counted.
fn drawn(sampled: u32) -> bool {
    sampled <= 1
        || DRAWS.with(|d| {
            let mut x = d.get();
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            d.set(x);
            x % sampled == 0
        })
}

/// A pool's hot-key counters, one per worker.
pub(crate) struct HotKeys {
    workers: Box<[Mutex<Counter>]>,
    seed: u64,
    /// One request in this many is counted.
    sampled: u32,
}

/// A key among the hottest: its requests over the window, and the window's length.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HotKey {
    pub key: Bytes,
    pub requests: u64,
    pub per_second: f64,
}

/// A key as people read it: UTF-8 as it is, other bytes (and control characters) as `\xNN`.
pub(crate) fn shown(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_string(),
        _ => key
            .iter()
            .map(|&b| match b {
                b' '..=b'~' if b != b'\\' => char::from(b).to_string(),
                _ => format!("\\x{b:02x}"),
            })
            .collect(),
    }
}

type Sketch = Box<[[u32; WIDTH]; ROWS]>;

struct Counter {
    slices: [Sketch; SLICES],
    /// The sum of the slices: what estimates read.
    total: Sketch,
    current: usize,
    /// When the current slice started and ends, and when the first started (the window is
    /// shorter than a minute until a minute has passed).
    slice_started: Instant,
    slice_ends: Instant,
    started: Instant,
    ranked: Vec<Ranked>,
    /// With every place taken, the lowest count ranked (or lower): a key estimated at no more
    /// is not ranked, without looking.
    floor: u32,
}

struct Ranked {
    hash: u64,
    key: Bytes,
    count: u32,
}

fn sketch() -> Sketch {
    Box::new([[0; WIDTH]; ROWS])
}

/// A key's hash for the sketch: quick (a multiply per 8 bytes), seeded per process so that
/// which keys share counters cannot be chosen from outside.
fn hash(seed: u64, key: &[u8]) -> u64 {
    let mut h = seed ^ key.len() as u64;
    for chunk in key.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(23) ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    // MurmurHash3's finalizer: every bit of the key moves every bit of the hash.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The counter of each row a hash picks.
fn cells(hash: u64) -> impl Iterator<Item = (usize, usize)> {
    let (low, high) = (hash as u32 as usize, (hash >> 32) as usize | 1);
    (0..ROWS).map(move |row| (row, low.wrapping_add(row.wrapping_mul(high)) % WIDTH))
}

impl HotKeys {
    pub(crate) fn new(workers: usize, now: Instant) -> HotKeys {
        HotKeys::sampling(workers, now, SAMPLED)
    }

    /// Counters that count one request in `sampled`.
    fn sampling(workers: usize, now: Instant, sampled: u32) -> HotKeys {
        HotKeys {
            workers: (0..workers.max(1))
                .map(|_| Mutex::new(Counter::new(now)))
                .collect(),
            seed: std::hash::RandomState::new().hash_one(0u8),
            sampled,
        }
    }

    fn counter(&self, worker: usize) -> std::sync::MutexGuard<'_, Counter> {
        (self.workers[worker % self.workers.len()])
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request made `now` on `worker`, for each of the keys `keys` gives (asked only
    /// for the requests counted).
    pub(crate) fn count<'k, K: IntoIterator<Item = &'k [u8]>>(
        &self,
        worker: usize,
        keys: impl FnOnce() -> K,
        now: Instant,
    ) {
        if !drawn(self.sampled) {
            return;
        }
        let mut counter = self.counter(worker);
        for key in keys() {
            counter.count(hash(self.seed, key), key, now);
        }
    }

    /// Whether `key` is among the [`TOP`] keys of `worker`, the worker asking.
    pub(crate) fn is_hot(&self, worker: usize, key: &[u8]) -> bool {
        let hash = hash(self.seed, key);
        let counter = self.counter(worker);
        let Some(at) = counter.position(hash, key) else {
            return false;
        };
        let count = counter.ranked[at].count;
        counter.ranked.iter().filter(|r| r.count > count).count() < TOP
    }

    /// The `n` hottest keys over the window ending `now`, hottest first.
    pub(crate) fn top(&self, n: usize, now: Instant) -> Vec<HotKey> {
        let mut merged: Vec<HotKey> = Vec::new();
        for worker in 0..self.workers.len() {
            let mut counter = self.counter(worker);
            counter.rotate(now);
            let window = counter.window(now).as_secs_f64().max(1.0);
            for r in &counter.ranked {
                let requests = u64::from(r.count) * u64::from(self.sampled);
                match merged.iter_mut().find(|h| h.key == r.key) {
                    Some(h) => {
                        h.requests += requests;
                        h.per_second += requests as f64 / window;
                    }
                    None => merged.push(HotKey {
                        key: r.key.clone(),
                        requests,
                        per_second: requests as f64 / window,
                    }),
                }
            }
        }
        merged.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.key.cmp(&b.key)));
        merged.truncate(n);
        merged
    }
}

impl Counter {
    fn new(now: Instant) -> Counter {
        Counter {
            slices: std::array::from_fn(|_| sketch()),
            total: sketch(),
            current: 0,
            slice_started: now,
            slice_ends: now + SLICE,
            started: now,
            ranked: Vec::with_capacity(RANKED),
            floor: 0,
        }
    }

    fn count(&mut self, hash: u64, key: &[u8], now: Instant) {
        self.rotate(now);
        let mut estimate = u32::MAX;
        for (row, cell) in cells(hash) {
            let slice = &mut self.slices[self.current][row][cell];
            *slice = slice.saturating_add(1);
            let total = &mut self.total[row][cell];
            *total = total.saturating_add(1);
            estimate = estimate.min(*total);
        }
        // Most keys rank nowhere near: they are not looked for among the ranked. (One that is
        // ranked, at the floor, keeps its count a little longer.)
        if self.ranked.len() < RANKED || estimate > self.floor {
            self.rank(hash, key, estimate);
        }
    }

    /// Where `key` (of `hash`) is among the ranked keys, if it is.
    fn position(&self, hash: u64, key: &[u8]) -> Option<usize> {
        self.ranked
            .iter()
            .position(|r| r.hash == hash && r.key == key)
    }

    /// Keeps `key` among the ranked keys with its new estimate, if it ranks.
    fn rank(&mut self, hash: u64, key: &[u8], estimate: u32) {
        if let Some(at) = self.position(hash, key) {
            self.ranked[at].count = estimate;
            return;
        }
        let entry = || Ranked {
            hash,
            key: Bytes::copy_from_slice(key),
            count: estimate,
        };
        if self.ranked.len() < RANKED {
            return self.ranked.push(entry());
        }
        let lowest = (self.ranked.iter().enumerate())
            .min_by_key(|(_, r)| r.count)
            .map(|(i, r)| (i, r.count));
        if let Some((i, count)) = lowest
            && estimate > count
        {
            self.ranked[i] = entry();
        }
        self.floor = self.ranked.iter().map(|r| r.count).min().unwrap_or(0);
    }

    /// Starts the slices due by `now`, each dropping the oldest slice's counts.
    fn rotate(&mut self, now: Instant) {
        if now < self.slice_ends {
            return;
        }
        let mut rotated = false;
        for _ in 0..SLICES {
            if now < self.slice_started + SLICE {
                break;
            }
            self.current = (self.current + 1) % SLICES;
            let dropped = &mut self.slices[self.current];
            for (total, old) in self.total.iter_mut().zip(dropped.iter_mut()) {
                for (t, o) in total.iter_mut().zip(old.iter_mut()) {
                    *t -= *o;
                    *o = 0;
                }
            }
            self.slice_started += SLICE;
            rotated = true;
        }
        if now >= self.slice_started + SLICE {
            // Idle for a minute or more: everything has been dropped.
            self.slice_started = now;
        }
        self.slice_ends = self.slice_started + SLICE;
        if rotated {
            let total = &self.total;
            for r in &mut self.ranked {
                r.count = cells(r.hash)
                    .map(|(row, cell)| total[row][cell])
                    .min()
                    .unwrap_or(0);
            }
            self.ranked.retain(|r| r.count > 0);
            self.floor = 0;
        }
    }

    /// How long the counts cover: the minute, or less since the counter started.
    fn window(&self, now: Instant) -> Duration {
        let full = SLICE * (SLICES as u32 - 1) + now.saturating_duration_since(self.slice_started);
        full.min(now.saturating_duration_since(self.started))
    }
}

#[cfg(test)]
impl HotKeys {
    /// Counters that count every request, for tests.
    fn counting_all(workers: usize, now: Instant) -> HotKeys {
        HotKeys::sampling(workers, now, 1)
    }
}

#[cfg(test)]
mod tests;
