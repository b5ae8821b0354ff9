//! Key → server placement: twemproxy's ketama, modula and random distributions over its hash
//! functions, with hash tags; or a Redis Cluster's slots (`slots`).

mod hash;
pub mod slots;

use std::cell::Cell;
use std::sync::Arc;

pub use hash::HashFn;

use crate::keyword::keywords;

keywords! {
    /// How keys spread over the servers of a pool.
    pub enum Distribution ("distribution") {
        Ketama = "ketama",
        Modula = "modula",
        Random = "random",
    }
}

/// Where a pool's keys go: a ring built from the configuration, or the slot map a Redis
/// Cluster agreed on. Neither knows anything of health.
#[derive(Clone, Debug)]
pub enum Placement {
    Ring(Arc<Ring>),
    Slots(Arc<slots::SlotMap>),
}

impl Placement {
    /// The index of the shard owning `key`, or `None` when none does.
    pub fn shard_for(&self, key: &[u8]) -> Option<usize> {
        match self {
            Placement::Ring(ring) => ring.server_for(key),
            Placement::Slots(map) => map.shard_for(key),
        }
    }

    /// The part of `key` that is hashed (its hash tag's content, or the whole key).
    pub fn hashed_part<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        match self {
            Placement::Ring(ring) => ring.hashed_part(key),
            Placement::Slots(_) => slots::hashed_part(key),
        }
    }

    /// Whether shard `index` is given keys: on the ring (not ejected), or owning a slot.
    pub fn places_on(&self, index: usize) -> bool {
        match self {
            Placement::Ring(ring) => ring.contains(index),
            Placement::Slots(map) => map.owns_any(index),
        }
    }
}

/// One server as the ring sees it.
#[derive(Clone, Debug)]
pub struct RingMember<'a> {
    /// The ketama identity (name, or `host:port`, or `host` for port 11211).
    pub identity: &'a str,
    pub weight: u32,
    /// Ejected servers take no part in the ring.
    pub live: bool,
}

#[derive(Clone, Copy, Debug)]
struct Point {
    value: u32,
    server: u32,
}

/// An immutable continuum: built when the topology loads or a server is ejected or returns.
#[derive(Clone, Debug)]
pub struct Ring {
    hash: HashFn,
    distribution: Distribution,
    hash_tag: Option<[u8; 2]>,
    points: Vec<Point>,
    /// Where each range of hash values starts among `points` (see [`Buckets`]).
    buckets: Buckets,
    servers: usize,
    live: Vec<bool>,
}

const KETAMA_POINTS_PER_SERVER: f32 = 160.0;

impl Ring {
    pub fn new(
        hash: HashFn,
        distribution: Distribution,
        hash_tag: Option<[u8; 2]>,
        members: &[RingMember<'_>],
    ) -> Ring {
        let live: Vec<(u32, &RingMember<'_>)> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.live)
            .map(|(i, m)| (i as u32, m))
            .collect();
        let points = match distribution {
            Distribution::Ketama => ketama_points(&live),
            Distribution::Modula => live
                .iter()
                .flat_map(|&(i, m)| {
                    (0..m.weight).map(move |_| Point {
                        value: 0,
                        server: i,
                    })
                })
                .collect(),
            Distribution::Random => live
                .iter()
                .map(|&(i, _)| Point {
                    value: 0,
                    server: i,
                })
                .collect(),
        };
        Ring {
            hash,
            distribution,
            hash_tag,
            buckets: Buckets::of(&points),
            points,
            servers: members.len(),
            live: members.iter().map(|m| m.live).collect(),
        }
    }

    /// The part of `key` that is hashed: the text between the hash-tag characters when both are
    /// present and enclose at least one byte, else the whole key (twemproxy's rule).
    pub fn hashed_part<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        let Some([open, close]) = self.hash_tag else {
            return key;
        };
        let Some(start) = memchr::memchr(open, key) else {
            return key;
        };
        match memchr::memchr(close, &key[start + 1..]) {
            Some(len) if len > 0 => &key[start + 1..start + 1 + len],
            _ => key,
        }
    }

    /// The hash twemproxy dispatches on: 0 for a single-server pool or an empty key.
    pub fn key_hash(&self, key: &[u8]) -> u32 {
        let part = self.hashed_part(key);
        if self.servers == 1 || part.is_empty() {
            return 0;
        }
        self.hash.hash(part)
    }

    /// The index (in the configured server list) of the server owning `key`, or `None` when no
    /// server is live.
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let point = match self.distribution {
            Distribution::Ketama => {
                let h = self.key_hash(key);
                let i = self.buckets.first_at_or_after(&self.points, h);
                self.points[if i == self.points.len() { 0 } else { i }]
            }
            Distribution::Modula => self.points[self.key_hash(key) as usize % self.points.len()],
            Distribution::Random => self.points[random_below(self.points.len())],
        };
        Some(point.server as usize)
    }

    /// Whether server `index` holds points (is not ejected).
    pub fn contains(&self, index: usize) -> bool {
        self.live.get(index).copied().unwrap_or(false)
    }
}

/// An index over a ketama continuum's points, sorted by value: for each of `2^BUCKET_BITS`
/// equal ranges of hash values, where its points start. A lookup searches one range's few
/// points, not the whole continuum: a key's server is found in a few steps, not a binary
/// search's unpredictable dozen.
#[derive(Clone, Debug, Default)]
struct Buckets(Vec<u32>);

const BUCKET_BITS: u32 = 10;

impl Buckets {
    fn of(points: &[Point]) -> Buckets {
        let starts = (0..=1u64 << BUCKET_BITS).map(|b| {
            let from = b << (32 - BUCKET_BITS);
            points.partition_point(|p| u64::from(p.value) < from) as u32
        });
        Buckets(starts.collect())
    }

    /// The index of the first of `points` (those it was made of) whose value is at least
    /// `h`; their number if there is none.
    fn first_at_or_after(&self, points: &[Point], h: u32) -> usize {
        let b = (h >> (32 - BUCKET_BITS)) as usize;
        let (from, to) = (self.0[b] as usize, self.0[b + 1] as usize);
        from + points[from..to].partition_point(|p| p.value < h)
    }
}

/// twemproxy's `ketama_update`: weights as a share of the live total, in single-precision
/// arithmetic, four points per md5 of `"<identity>-<i>"`.
fn ketama_points(live: &[(u32, &RingMember<'_>)]) -> Vec<Point> {
    let total: u32 = live.iter().map(|(_, m)| m.weight).sum();
    let nlive = live.len() as f32;
    let mut points = Vec::with_capacity(live.len() * 160);
    for &(server, m) in live {
        let pct = m.weight as f32 / total as f32;
        let share = f64::from(pct * KETAMA_POINTS_PER_SERVER / 4.0 * nlive) + 0.000_000_000_1;
        let per_server = ((share as f32).floor() as u32) * 4;
        for i in 0..per_server / 4 {
            let label = format!("{}-{}", m.identity, i);
            for value in hash::md5_points(label.as_bytes()) {
                points.push(Point { value, server });
            }
        }
    }
    // A stable sort keeps equal values in server order, as qsort happens to on these inputs.
    points.sort_by_key(|p| p.value);
    points
}

thread_local! {
    static RANDOM_STATE: Cell<u64> = const { Cell::new(0) };
}

/// A cheap per-thread xorshift for the `random` distribution and RANDOMKEY's first shard:
/// placement, not security.
pub(crate) fn random_below(n: usize) -> usize {
    RANDOM_STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
                | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x % n as u64) as usize
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members<'a>(ids: &[&'a str]) -> Vec<RingMember<'a>> {
        ids.iter()
            .map(|id| RingMember {
                identity: id,
                weight: 1,
                live: true,
            })
            .collect()
    }

    #[test]
    fn hash_tag_takes_the_enclosed_part() {
        let ring = Ring::new(
            HashFn::Fnv1a64,
            Distribution::Ketama,
            Some(*b"{}"),
            &members(&["a", "b"]),
        );
        assert_eq!(ring.hashed_part(b"user:{42}:name"), b"42");
        assert_eq!(ring.hashed_part(b"user:{}:name"), b"user:{}:name");
        assert_eq!(ring.hashed_part(b"user:{42"), b"user:{42");
        assert_eq!(ring.hashed_part(b"plain"), b"plain");
        assert_eq!(ring.server_for(b"a{x}"), ring.server_for(b"b{x}"));
    }

    #[test]
    fn ketama_points_follow_weights() {
        let m = vec![
            RingMember {
                identity: "a",
                weight: 1,
                live: true,
            },
            RingMember {
                identity: "b",
                weight: 3,
                live: true,
            },
        ];
        let ring = Ring::new(HashFn::Md5, Distribution::Ketama, None, &m);
        let count = |s| ring.points.iter().filter(|p| p.server == s).count();
        assert_eq!((count(0), count(1)), (80, 240));
    }

    #[test]
    fn ejected_servers_get_no_keys_and_others_keep_theirs() {
        let mut m = members(&["a", "b", "c"]);
        let full = Ring::new(HashFn::Fnv1a64, Distribution::Ketama, None, &m);
        m[1].live = false;
        let ejected = Ring::new(HashFn::Fnv1a64, Distribution::Ketama, None, &m);
        assert_eq!((0..3).filter(|&i| ejected.contains(i)).count(), 2);
        let mut moved = 0;
        for i in 0..1000 {
            let key = format!("k{i}");
            let (before, after) = (
                full.server_for(key.as_bytes()),
                ejected.server_for(key.as_bytes()),
            );
            assert_ne!(after, Some(1));
            match before {
                Some(1) => moved += 1,
                // With equal weights every live server keeps its 160 points: its keys stay.
                _ => assert_eq!(before, after, "{key} moved off a live server"),
            }
        }
        assert!(
            (200..470).contains(&moved),
            "a third of the keys were on b: {moved}"
        );
        m.iter_mut().for_each(|m| m.live = false);
        assert_eq!(
            Ring::new(HashFn::Md5, Distribution::Ketama, None, &m).server_for(b"x"),
            None
        );
        assert_eq!((0..3).filter(|&i| full.contains(i)).count(), 3);
    }

    #[test]
    fn random_spreads_over_live_servers() {
        let ring = Ring::new(
            HashFn::Md5,
            Distribution::Random,
            None,
            &members(&["a", "b", "c"]),
        );
        let mut seen = [false; 3];
        for _ in 0..300 {
            seen[ring.server_for(b"same-key").unwrap()] = true;
        }
        assert_eq!(seen, [true; 3]);
    }

    proptest::proptest! {
        /// The buckets find the point a binary search of the whole continuum finds, wherever
        /// the hash falls (bucket edges, past the last point, before the first).
        #[test]
        fn buckets_find_what_a_binary_search_finds(
            servers in 1usize..12,
            hashes in proptest::collection::vec(proptest::prelude::any::<u32>(), 64),
        ) {
            let ids: Vec<String> = (0..servers).map(|i| format!("10.0.0.{i}:6379")).collect();
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            let ring = Ring::new(HashFn::Md5, Distribution::Ketama, None, &members(&ids));
            let edges = [0, u32::MAX, 1 << (32 - BUCKET_BITS), ring.points[0].value];
            for h in hashes.into_iter().chain(edges) {
                let want = ring.points.partition_point(|p| p.value < h);
                proptest::prop_assert_eq!(ring.buckets.first_at_or_after(&ring.points, h), want);
            }
        }
    }
}
