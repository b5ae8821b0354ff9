//! The near cache's stale-read detector: writers INCR keys, one through a cached proxy
//! instance and one through an instance without a cache; readers GET and MGET them through two
//! cached instances. A read that returns less than a value acknowledged before it began is
//! stale. A request that fails (a test may cut the proxy's connections) is counted and skipped:
//! a write not acknowledged is not counted on.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Commands;

use super::connect;

/// The client ports the detector reads and writes through.
#[derive(Clone, Copy)]
pub struct Ports {
    /// A pool with the near cache: the writes counted as "through the same instance".
    pub cached: u16,
    /// Another instance's pool with its own cache: every write is one made elsewhere for it.
    pub other: u16,
    /// A pool without a cache on the same servers.
    pub plain: u16,
}

/// What the readers saw.
pub struct Stale {
    /// Stale reads, through `cached`, of keys written through `cached`: never allowed.
    pub same: u64,
    /// Stale reads of keys written elsewhere: how long after the write each was.
    pub elsewhere: Vec<Duration>,
    pub reads: u64,
    /// Requests that failed.
    pub errors: u64,
}

impl Stale {
    /// Asserts no read was older than a write through the same instance, and none older than
    /// a write elsewhere by as much as a second (an invalidation's delay is far less); prints
    /// what was seen.
    pub fn assert_exact(&self) {
        assert_eq!(
            self.same, 0,
            "stale reads of keys written through the proxy"
        );
        let worst = self.elsewhere.iter().max().copied().unwrap_or_default();
        eprintln!(
            "{} reads, {} failed requests; stale reads of keys written elsewhere: {} (at most {worst:?} after the write)",
            self.reads,
            self.errors,
            self.elsewhere.len()
        );
        assert!(worst < Duration::from_secs(1), "a read {worst:?} stale");
    }
}

/// Runs the writers and readers over `keys` keys of each kind while `during` runs, and for
/// `at_least` in all.
pub fn detect(ports: Ports, keys: usize, at_least: Duration, during: impl FnOnce()) -> Stale {
    let acked: Arc<Vec<(AtomicI64, Mutex<Option<Instant>>)>> = Arc::new(
        (0..2 * keys)
            .map(|_| (AtomicI64::new(0), Mutex::new(None)))
            .collect(),
    );
    let key = move |i: usize| match i < keys {
        true => format!("same:{i}"),
        false => format!("elsewhere:{i}"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let same = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let elsewhere = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let mut threads = Vec::new();
    for (through, first) in [(ports.cached, 0), (ports.plain, keys)] {
        let (acked, stop, errors) = (acked.clone(), stop.clone(), errors.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = connect(through);
            // Bounded in count as well as by the stop.
            for n in 0..10_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let i = first + n % keys;
                let Ok(v) = c.incr::<_, _, i64>(key(i), 1) else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                acked[i].0.fetch_max(v, Ordering::SeqCst);
                *acked[i].1.lock().unwrap() = Some(Instant::now());
            }
        }));
    }
    // Readers of both instances, by GET and by MGET of three keys: for the other instance,
    // every write is one made elsewhere.
    for (reader, through) in [ports.cached, ports.cached, ports.other, ports.other]
        .into_iter()
        .enumerate()
    {
        let (acked, stop) = (acked.clone(), stop.clone());
        let (same, elsewhere, reads) = (same.clone(), elsewhere.clone(), reads.clone());
        let errors = errors.clone();
        threads.push(std::thread::spawn(move || {
            let mut c = connect(through);
            for n in reader..10_000_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let read: Vec<usize> = match reader % 2 {
                    0 => vec![n % (2 * keys)],
                    _ => (0..3).map(|k| (n + 7 * k) % (2 * keys)).collect(),
                };
                let before: Vec<(i64, Option<Instant>)> = (read.iter())
                    .map(|&i| {
                        (
                            acked[i].0.load(Ordering::SeqCst),
                            *acked[i].1.lock().unwrap(),
                        )
                    })
                    .collect();
                let started = Instant::now();
                let got: redis::RedisResult<Vec<Option<i64>>> = match read.len() {
                    1 => c.get(key(read[0])).map(|v| vec![v]),
                    _ => c.mget(read.iter().map(|&i| key(i)).collect::<Vec<_>>()),
                };
                let Ok(got) = got else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                reads.fetch_add(1, Ordering::Relaxed);
                for ((&i, (before, acked_at)), got) in read.iter().zip(before).zip(got) {
                    if got.unwrap_or(0) >= before {
                        continue;
                    }
                    match i < keys && through == ports.cached {
                        true => _ = same.fetch_add(1, Ordering::SeqCst),
                        false => elsewhere
                            .lock()
                            .unwrap()
                            .push(started - acked_at.unwrap_or(started)),
                    }
                }
            }
        }));
    }
    let started = Instant::now();
    during();
    std::thread::sleep(at_least.saturating_sub(started.elapsed()));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elsewhere = std::mem::take(&mut *elsewhere.lock().unwrap());
    Stale {
        same: same.load(Ordering::SeqCst),
        elsewhere,
        reads: reads.load(Ordering::SeqCst),
        errors: errors.load(Ordering::SeqCst),
    }
}
