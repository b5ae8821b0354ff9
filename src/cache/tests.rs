use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::metrics::Metrics;

fn cache(max_bytes: usize, keys: &[&str]) -> NearCache {
    let config = NearCacheConfig {
        max_bytes,
        max_ttl: Duration::from_secs(60),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        hot_only: false,
    };
    NearCache::new(&config, Metrics::default().near_cache("test"))
}

fn get() -> Variant<'static> {
    Variant {
        command: "GET",
        db: 0,
        resp3: false,
        rest: b"",
    }
}

const NODE_GENERATION: u64 = 7;

/// A read of `key` sent to node `node` at `now`, and its reply kept with `pttl`.
fn filled(cache: &NearCache, key: &str, reply: &str, now: Instant, pttl: i64) -> Ticket {
    let node = NodeId::next();
    let ticket = cache.ticket(key.as_bytes(), node, NODE_GENERATION, now);
    let keyed = (Bytes::from(key.to_string()), get());
    let reply = Bytes::from(reply.to_string());
    cache.fill(keyed, &ticket, reply, (NODE_GENERATION, pttl));
    ticket
}

/// Any node at the generation the replies were kept with still serves.
fn any_node(_: NodeId, generation: u64) -> bool {
    generation == NODE_GENERATION
}

#[test]
fn a_reply_is_served_until_its_key_is_invalidated() {
    let cache = cache(1 << 20, &[]);
    let now = Instant::now();
    filled(&cache, "k", "$1\r\nv\r\n", now, -1);
    let hit = cache.get(b"k", &[get()], now, any_node);
    assert_eq!(hit.as_deref(), Some(&b"$1\r\nv\r\n"[..]));
    cache.invalidate(b"k", InvalidationCause::Server);
    assert_eq!(cache.get(b"k", &[get()], now, any_node), None);
}

#[test]
fn a_reply_to_a_read_in_flight_while_its_key_changed_is_not_kept() {
    let cache = cache(1 << 20, &[]);
    let now = Instant::now();
    // The read of `k` is sent, `meanwhile` happens, and its reply comes from a node at
    // `generation`.
    let read = |meanwhile: &dyn Fn(), generation: u64| {
        let ticket = cache.ticket(b"k", NodeId::next(), NODE_GENERATION, now);
        meanwhile();
        let keyed = (Bytes::from_static(b"k"), get());
        let reply = Bytes::from_static(b"$1\r\nv\r\n");
        cache.fill(keyed, &ticket, reply, (generation, -1));
        cache.get(b"k", &[get()], now, any_node)
    };
    // A write through the proxy, or the server's invalidation, while the read is in flight.
    assert_eq!(
        read(
            &|| cache.invalidate(b"k", InvalidationCause::Write),
            NODE_GENERATION
        ),
        None
    );
    // Nor after a flush through the proxy, nor once the node lost a tracking connection.
    assert_eq!(read(&|| cache.flush(), NODE_GENERATION), None);
    assert_eq!(read(&|| {}, NODE_GENERATION + 1), None);
    // With nothing in between, it is kept.
    assert!(read(&|| {}, NODE_GENERATION).is_some());
}

#[test]
fn a_flush_or_a_new_node_generation_stops_what_was_kept_being_served() {
    let cache = cache(1 << 20, &[]);
    let now = Instant::now();
    filled(&cache, "k", "+v\r\n", now, -1);
    assert!(
        cache
            .get(b"k", &[get()], now, |_, g| g == NODE_GENERATION + 1)
            .is_none()
    );
    assert!(cache.get(b"k", &[get()], now, any_node).is_some());
    cache.flush();
    assert!(cache.get(b"k", &[get()], now, any_node).is_none());
}

#[test]
fn a_reply_is_never_served_past_the_keys_expiry_nor_max_ttl() {
    let cache = cache(1 << 20, &[]);
    let now = Instant::now();
    filled(&cache, "short", "+v\r\n", now, 100);
    filled(&cache, "long", "+v\r\n", now, -1);
    let later = |ms| now + Duration::from_millis(ms);
    let short = |at| cache.get(b"short", &[get()], at, any_node).is_some();
    assert!(short(later(99)));
    assert!(!short(later(100)));
    let long = |at| cache.get(b"long", &[get()], at, any_node).is_some();
    assert!(long(later(59_999)));
    assert!(!long(later(60_000)));
    // A key expiring as it is read is not kept.
    filled(&cache, "now", "+v\r\n", now, 0);
    assert!(cache.get(b"now", &[get()], now, any_node).is_none());
}

#[test]
fn replies_differ_by_command_arguments_database_and_protocol() {
    let cache = cache(1 << 20, &[]);
    let now = Instant::now();
    let node = NodeId::next();
    let variants = [
        (get(), "get"),
        (Variant { db: 1, ..get() }, "db 1"),
        (
            Variant {
                resp3: true,
                ..get()
            },
            "resp3",
        ),
        (
            Variant {
                command: "HGET",
                rest: b"$1\r\nf\r\n",
                ..get()
            },
            "hget f",
        ),
    ];
    for (variant, reply) in &variants {
        let ticket = cache.ticket(b"k", node, NODE_GENERATION, now);
        let keyed = (Bytes::from_static(b"k"), variant.clone());
        let reply = Bytes::from(reply.to_string());
        cache.fill(keyed, &ticket, reply, (NODE_GENERATION, -1));
    }
    for (variant, reply) in &variants {
        let hit = cache.get(b"k", std::slice::from_ref(variant), now, any_node);
        assert_eq!(hit.as_deref(), Some(reply.as_bytes()));
    }
    let other_field = Variant {
        command: "HGET",
        rest: b"$1\r\ng\r\n",
        ..get()
    };
    assert!(cache.get(b"k", &[other_field], now, any_node).is_none());
    // One invalidation drops every reply of the key.
    cache.invalidate(b"k", InvalidationCause::Server);
    assert!(variants.iter().all(|(v, _)| {
        cache
            .get(b"k", std::slice::from_ref(v), now, any_node)
            .is_none()
    }));
}

#[test]
fn the_cache_stays_within_its_bytes_and_keeps_what_is_read() {
    let max = 1 << 20;
    let cache = cache(max, &[]);
    let now = Instant::now();
    let value = "x".repeat(1000);
    filled(&cache, "read-often", &value, now, -1);
    for i in 0..5000 {
        filled(&cache, &format!("key{i}"), &value, now, -1);
        cache.get(b"read-often", &[get()], now, any_node);
    }
    let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().bytes()).sum();
    assert!(held <= max, "{held} bytes held");
    assert!(held > max / 2, "only {held} bytes held");
    assert!(cache.get(b"read-often", &[get()], now, any_node).is_some());
    assert!(cache.get(b"key0", &[get()], now, any_node).is_none());
}

#[test]
fn only_keys_matching_the_patterns_are_cached() {
    let cache = cache(1 << 20, &["user:*", "cfg:?"]);
    assert!(cache.caches(b"user:1"));
    assert!(cache.caches(b"cfg:a"));
    assert!(!cache.caches(b"cfg:ab"));
    assert!(!cache.caches(b"session:1"));
    assert!(self::cache(1 << 20, &[]).caches(b"anything"));
}
