use std::time::{Duration, Instant};

use super::{HotKeys, TOP};

/// Counts `times` requests for `key` on `worker` at `at`.
fn count(hot: &HotKeys, worker: usize, key: &str, times: u32, at: Instant) {
    for _ in 0..times {
        hot.count(worker, || [key.as_bytes()], at);
    }
}

fn counts(hot: &HotKeys, n: usize, at: Instant) -> Vec<(String, u64)> {
    (hot.top(n, at).into_iter())
        .map(|h| (String::from_utf8(h.key.to_vec()).unwrap(), h.requests))
        .collect()
}

#[test]
fn a_skewed_load_ranks_its_hot_keys_with_their_counts() {
    let now = Instant::now();
    let hot = HotKeys::counting_all(1, now);
    // Interleaved: the hot keys' first requests come among thousands of others.
    for i in 0..5000u32 {
        let cold = format!("cold:{i}");
        hot.count(0, || [cold.as_bytes()], now);
        match i % 10 {
            0..=4 => count(&hot, 0, "a", 2, now),
            5..=7 => count(&hot, 0, "b", 1, now),
            _ => count(&hot, 0, "c", 1, now),
        }
    }
    let top = counts(&hot, 3, now);
    let names: Vec<&str> = top.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    // Count-min never counts low, and over-counts by little (15,000 requests, 2,048 wide).
    for ((_, got), want) in top.iter().zip([5000, 1500, 1000]) {
        assert!((want..want + 30).contains(got), "{got} for {want}");
    }
}

#[test]
fn the_minute_slides() {
    let start = Instant::now();
    let hot = HotKeys::counting_all(1, start);
    count(&hot, 0, "early", 100, start);
    count(&hot, 0, "later", 50, start + Duration::from_secs(30));
    let at = |s| start + Duration::from_secs(s);
    assert_eq!(
        counts(&hot, 2, at(59)),
        [("early".into(), 100), ("later".into(), 50)]
    );
    // The slice of "early" has left the minute.
    assert_eq!(counts(&hot, 2, at(61)), [("later".into(), 50)]);
    assert_eq!(counts(&hot, 2, at(95)), []);
    // Idle for long: counting starts afresh.
    count(&hot, 0, "again", 3, at(1000));
    assert_eq!(counts(&hot, 2, at(1001)), [("again".into(), 3)]);
}

#[test]
fn workers_counts_are_merged_and_rates_cover_the_window() {
    let start = Instant::now();
    let hot = HotKeys::counting_all(2, start);
    count(&hot, 0, "k", 300, start);
    count(&hot, 1, "k", 200, start);
    count(&hot, 1, "other", 100, start);
    let top = hot.top(TOP, start + Duration::from_secs(10));
    assert_eq!(top.len(), 2);
    assert_eq!((&top[0].key[..], top[0].requests), (&b"k"[..], 500));
    assert!(
        (top[0].per_second - 50.0).abs() < 1e-9,
        "{}",
        top[0].per_second
    );
    // After a minute the rate is over the minute.
    let top = hot.top(1, start + Duration::from_secs(55));
    assert!((top[0].per_second - 500.0 / 55.0).abs() < 1e-9);
}

#[test]
fn a_key_is_hot_when_its_worker_ranks_it_in_the_top() {
    let now = Instant::now();
    let hot = HotKeys::counting_all(2, now);
    for i in 0..TOP {
        count(&hot, 0, &format!("warm:{i}"), 10, now);
    }
    count(&hot, 0, "hottest", 50, now);
    count(&hot, 0, "once", 1, now);
    assert!(hot.is_hot(0, b"hottest"));
    assert!(!hot.is_hot(0, b"once"), "ranked below {TOP} others");
    assert!(!hot.is_hot(1, b"hottest"), "counted by another worker");
    assert!(!hot.is_hot(0, b"never"));
}

#[test]
fn one_request_in_eight_is_counted_and_scaled_back() {
    let now = Instant::now();
    let hot = HotKeys::new(1, now);
    for _ in 0..4000 {
        hot.count(0, || [&b"a"[..], b"b", b"b"], now);
    }
    let top = hot.top(2, now);
    let (a, b) = (top[1].requests as f64, top[0].requests as f64);
    // 500 and 1,000 counted on average, each well within 20% (about 4 and 3 standard deviations of the count).
    assert!((a - 4000.0).abs() < 4000.0 * 0.2, "{a}");
    assert!((b - 8000.0).abs() < 8000.0 * 0.2, "{b}");
}
