//! The near cache against real redis-servers: reads answered from the proxy stay exact —
//! never older than a write acknowledged through the same instance, and older than a write
//! made elsewhere only for as long as the server's invalidation takes to arrive — while
//! tracking connections are killed, a shard is flushed, the server forgets what it tracks, and
//! keys expire.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use redis::Commands;

/// Two shards; pool `cached` with a near cache, pool `plain` without, on the same servers.
fn config(servers: &[&Redis], cached: u16, plain: u16) -> String {
    let list: String = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("      - {{ name: s{i}, master: {} }}\n", s.addr()))
        .collect();
    format!(
        "pools:
  cached:
    listen: 127.0.0.1:{cached}
    hash_tag: \"{{}}\"
    allow_flush: true
    near_cache: {{ max_bytes: 16777216, max_ttl_ms: 60000 }}
    servers:
{list}  plain:
    listen: 127.0.0.1:{plain}
    hash_tag: \"{{}}\"
    allow_flush: true
    servers:
{list}"
    )
}

/// Two redis-servers and a proxy serving both pools: the cached pool's port, the plain one's.
fn setup() -> (Vec<Redis>, Proxy, u16, u16) {
    let servers = vec![Redis::start(), Redis::start()];
    let (cached, plain) = (free_port(), free_port());
    let proxy = Proxy::start(&config(&[&servers[0], &servers[1]], cached, plain), cached);
    (servers, proxy, cached, plain)
}

fn near_cache_metric(proxy: &Proxy, name: &str) -> u64 {
    metric(
        &proxy.http("/metrics").1,
        &format!("ringproxy_near_cache_{name}{{pool=\"cached\"}}"),
    )
}

/// Reads `key` through `port` until it is `want`, within a second: what a server's
/// invalidation takes to arrive.
fn reads_within_a_second(port: u16, key: &str, want: Option<&str>) {
    let mut c = connect(port);
    let mut got = None;
    let seen = poll_until(Duration::from_secs(1), || {
        got = c.get::<_, Option<String>>(key).unwrap();
        got.as_deref() == want
    });
    assert!(seen, "{key}: still {got:?}, not {want:?}, a second on");
}

#[test]
fn a_read_is_answered_from_the_cache_until_its_key_changes() {
    let (_servers, proxy, port, plain) = setup();
    let mut c = connect(port);
    let _: () = c.set("k", "v1").unwrap();
    // The listeners connect as the proxy starts: reads are kept once they have.
    wait_until(
        "a read answered from the cache",
        Duration::from_secs(5),
        || {
            assert_eq!(c.get::<_, String>("k").unwrap(), "v1");
            near_cache_metric(&proxy, "hits_total") >= 1
        },
    );
    // A write elsewhere (another pool, as another proxy instance would): the server's
    // invalidation drops the reply.
    let _: () = connect(plain).set("k", "v2").unwrap();
    reads_within_a_second(port, "k", Some("v2"));
    let server = "ringproxy_near_cache_invalidations_total{pool=\"cached\",cause=\"server\"}";
    assert!(metric(&proxy.http("/metrics").1, server) >= 1);
}

/// Every write through the proxy is seen by the very next read, cached or not: a plain
/// write, a transaction, a script, a deletion, a flush.
#[test]
fn a_read_after_a_write_through_the_proxy_sees_it_at_once() {
    let (_servers, _proxy, port, _) = setup();
    let mut c = connect(port);
    let read = |c: &mut redis::Connection| {
        let v: Option<String> = c.get("k").unwrap();
        let again: Option<String> = c.get("k").unwrap();
        assert_eq!(v, again);
        v
    };
    let _: () = c.set("k", "1").unwrap();
    assert_eq!(read(&mut c).as_deref(), Some("1"));
    let _: () = redis::pipe()
        .atomic()
        .set("k", "2")
        .ignore()
        .query(&mut c)
        .unwrap();
    assert_eq!(read(&mut c).as_deref(), Some("2"));
    let _: () = redis::cmd("EVAL")
        .arg("redis.call('SET', KEYS[1], ARGV[1])")
        .arg(1)
        .arg("k")
        .arg("3")
        .query(&mut c)
        .unwrap();
    assert_eq!(read(&mut c).as_deref(), Some("3"));
    let _: () = c.incr("k", 1).unwrap();
    assert_eq!(read(&mut c).as_deref(), Some("4"));
    let _: () = c.del("k").unwrap();
    assert_eq!(read(&mut c), None);
    let _: () = c.set("k", "5").unwrap();
    assert_eq!(read(&mut c).as_deref(), Some("5"));
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    assert_eq!(read(&mut c), None);
    // Other reads of a key are kept apart and dropped together.
    let _: () = c.hset("h", "f", "a").unwrap();
    assert_eq!(c.hget::<_, _, String>("h", "f").unwrap(), "a");
    assert_eq!(c.hget::<_, _, Option<String>>("h", "g").unwrap(), None);
    assert_eq!(c.hlen::<_, i64>("h").unwrap(), 1);
    let _: () = c.hset("h", "g", "b").unwrap();
    assert_eq!(c.hget::<_, _, String>("h", "g").unwrap(), "b");
    assert_eq!(c.hlen::<_, i64>("h").unwrap(), 2);
}

/// RESP2 and RESP3 clients get their own protocol's reply from the cache.
#[test]
fn each_protocol_gets_its_own_reply() {
    let (_servers, _proxy, port, _) = setup();
    let mut c = connect(port);
    let _: () = c.hset("h", "f", "v").unwrap();
    let hgetall = command(&[b"HGETALL", b"h"]);
    let mut resp2 = Raw::connect(port);
    let mut resp3 = Raw::connect(port);
    resp3.send(&command(&[b"HELLO", b"3"]));
    let hello = resp3.read_line();
    assert!(hello.starts_with('%'), "{hello}");
    // Its last field: `modules`, an empty array.
    while resp3.read_line() != "*0\r\n" {}
    for _ in 0..2 {
        resp2.roundtrip(&hgetall, b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
        resp3.roundtrip(&hgetall, b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    }
}

/// The stale-read detector (`common::stale`) over two instances with their own caches: reads
/// are never older than a write through the same instance, and older than a write elsewhere
/// only within the invalidation's own delay.
#[test]
fn reads_are_never_older_than_a_write_acknowledged_through_the_same_instance() {
    let (servers, proxy, port, plain) = setup();
    // A second instance with its own cache, on the same servers.
    let (other, other_plain) = (free_port(), free_port());
    let servers: Vec<&Redis> = servers.iter().collect();
    let _other_proxy = Proxy::start(&config(&servers, other, other_plain), other);
    let ports = stale::Ports {
        cached: port,
        other,
        plain,
    };
    let seen = stale::detect(ports, 20, Duration::from_secs(3), || {});
    let hits = near_cache_metric(&proxy, "hits_total");
    assert!(hits > 100, "only {hits} reads answered from the cache");
    seen.assert_exact();
    assert_eq!(seen.errors, 0);
}

/// The same detector while the servers forget what they tracked for the proxy: its
/// connections killed (writes go on elsewhere while they are down) and the servers' tracking
/// tables shrunk to a few keys, so that they evict tracked keys and say so.
#[test]
fn reads_stay_exact_while_the_servers_forget_what_they_track() {
    let (servers, proxy, port, plain) = setup();
    let (other, other_plain) = (free_port(), free_port());
    let listed: Vec<&Redis> = servers.iter().collect();
    let other_proxy = Proxy::start(&config(&listed, other, other_plain), other);
    let ports = stale::Ports {
        cached: port,
        other,
        plain,
    };
    let tracking_back = |proxy: &Proxy| {
        wait_until("tracking back on", Duration::from_secs(10), || {
            let generations = tracking(proxy);
            generations.0 == servers.len()
        })
    };
    let seen = stale::detect(ports, 20, Duration::from_secs(3), || {
        for round in 0..4 {
            // Reads answered from the cache again before each cut.
            let hits = near_cache_metric(&proxy, "hits_total");
            wait_until("hits", Duration::from_secs(10), || {
                near_cache_metric(&proxy, "hits_total") > hits + 100
            });
            servers.iter().for_each(Server::kill_clients);
            if round == 1 {
                for s in &servers {
                    let _: () = redis::cmd("CONFIG")
                        .arg(&["SET", "tracking-table-max-keys", "5"][..])
                        .query(&mut s.client())
                        .unwrap();
                }
            }
            tracking_back(&proxy);
            tracking_back(&other_proxy);
        }
    });
    seen.assert_exact();
    let hits = near_cache_metric(&proxy, "hits_total");
    assert!(hits > 100, "only {hits} reads answered from the cache");
}

/// MGET takes what the cache holds from it and reads the rest, one request per shard, whose
/// values are then kept: a string's for GET too, a nil for MGET alone (GET of a key of another
/// type is an error).
#[test]
fn mget_is_answered_partly_from_the_cache() {
    let (_servers, proxy, port, _) = setup();
    let mut c = connect(port);
    let keys: Vec<String> = (0..8).map(|i| format!("m{i}")).collect();
    for k in &keys[..6] {
        let _: () = c.set(k, format!("v-{k}")).unwrap();
    }
    let _: () = c.hset("m6", "f", "x").unwrap();
    let want: Vec<Option<String>> = (0..8).map(|i| (i < 6).then(|| format!("v-m{i}"))).collect();
    let hits = || near_cache_metric(&proxy, "hits_total");
    wait_until(
        "an MGET answered from the cache",
        Duration::from_secs(5),
        || {
            assert_eq!(c.mget::<_, Vec<Option<String>>>(&keys).unwrap(), want);
            let before = hits();
            assert_eq!(c.mget::<_, Vec<Option<String>>>(&keys).unwrap(), want);
            hits() == before + 8
        },
    );
    // The values MGET kept answer GET; the hash is still GET's error.
    let before = hits();
    assert_eq!(c.get::<_, String>("m0").unwrap(), "v-m0");
    assert_eq!(hits(), before + 1);
    let wrong: redis::RedisResult<String> = c.get("m6");
    assert!(wrong.unwrap_err().to_string().contains("WRONGTYPE"));
    // A write to one key: MGET reads that one again, the others from the cache.
    let _: () = c.set("m3", "new").unwrap();
    let mut now = want.clone();
    now[3] = Some("new".into());
    let before = hits();
    assert_eq!(c.mget::<_, Vec<Option<String>>>(&keys).unwrap(), now);
    assert_eq!(hits(), before + 7);
}

/// The proxy's tracking connections are killed and a key written while they are down: the
/// server forgot what they tracked, so what was cached from that node is no longer served.
#[test]
fn killed_tracking_connections_drop_what_was_cached_from_their_node() {
    let (servers, proxy, port, _) = setup();
    let mut c = connect(port);
    let _: () = c.set("k", "old").unwrap();
    assert_eq!(c.get::<_, String>("k").unwrap(), "old");
    wait_until("tracking on", Duration::from_secs(5), || {
        tracking(&proxy).0 == 2
    });
    let (_, before) = tracking(&proxy);
    let holder = servers
        .iter()
        .find(|s| s.client().exists::<_, bool>("k").unwrap())
        .unwrap();
    holder.kill_clients();
    let _: () = holder.client().set("k", "new").unwrap();
    reads_within_a_second(port, "k", Some("new"));
    // /topology shows each node's tracking back on, at a later generation only for the node
    // whose connections were killed.
    wait_until("tracking on again", Duration::from_secs(5), || {
        let (on, now) = tracking(&proxy);
        on == 2 && now.iter().zip(&before).filter(|(n, b)| n > b).count() == 1
    });
}

/// How many nodes of the cached pool `/topology` shows tracking, and each node's generation.
fn tracking(proxy: &Proxy) -> (usize, Vec<u64>) {
    let topology = proxy.http("/topology").1;
    let on = topology.matches("\"tracking\":{\"on\":true").count();
    let generations = (topology.split("\"generation\":").skip(1))
        .map(|g| g[..g.find('}').unwrap()].parse().unwrap())
        .collect();
    (on, generations)
}

/// FLUSHALL on one shard, made on the server itself: it tells tracking connections that every
/// key changed.
#[test]
fn a_shard_flushed_on_the_server_is_not_served_from_the_cache() {
    let (servers, _proxy, port, _) = setup();
    let mut c = connect(port);
    let keys: Vec<String> = (0..40).map(|i| format!("key{i}")).collect();
    for k in &keys {
        let _: () = c.set(k, "v").unwrap();
        assert_eq!(c.get::<_, String>(k).unwrap(), "v");
    }
    let holds = |s: &Redis, k: &str| s.client().exists::<_, bool>(k).unwrap();
    let flushed = servers.iter().find(|s| holds(s, "key0")).unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut flushed.client()).unwrap();
    for k in &keys {
        let kept = servers.iter().any(|s| holds(s, k));
        reads_within_a_second(port, k, kept.then_some("v"));
    }
}

/// A server that may track fewer keys than the proxy reads evicts them from its table and
/// says so: those keys are not served from the cache once it has.
#[test]
fn keys_the_server_stops_tracking_are_not_served_from_the_cache() {
    let (servers, proxy, port, _) = setup();
    for s in &servers {
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "tracking-table-max-keys", "5"][..])
            .query(&mut s.client())
            .unwrap();
    }
    let mut c = connect(port);
    let keys: Vec<String> = (0..50).map(|i| format!("key{i}")).collect();
    for k in &keys {
        let _: () = c.set(k, "old").unwrap();
        let _: String = c.get(k).unwrap();
    }
    // Written on the servers themselves, where the proxy cannot see it.
    for s in &servers {
        for k in &keys {
            if s.client().exists::<_, bool>(k).unwrap() {
                let _: () = s.client().set(k, "new").unwrap();
            }
        }
    }
    for k in &keys {
        reads_within_a_second(port, k, Some("new"));
    }
    assert!(near_cache_metric(&proxy, "fills_total") >= 50);
}

/// A key with a short expiry is never served past it.
#[test]
fn a_key_is_never_served_past_its_expiry() {
    let (_servers, _proxy, port, _) = setup();
    let mut c = connect(port);
    let _: () = redis::cmd("SET")
        .arg(&["k", "v", "PX", "300"][..])
        .query(&mut c)
        .unwrap();
    let set = Instant::now();
    assert_eq!(
        c.get::<_, Option<String>>("k").unwrap().as_deref(),
        Some("v")
    );
    let mut seen_after = 0;
    while set.elapsed() < Duration::from_millis(600) {
        let started = set.elapsed();
        let got: Option<String> = c.get("k").unwrap();
        if started > Duration::from_millis(305) {
            assert_eq!(got, None, "served {started:?} after a 300 ms expiry");
            seen_after += 1;
        }
    }
    assert!(seen_after > 0);
}

/// What the proxy says of its cache: INFO's fields and the metrics.
#[test]
fn info_and_metrics_count_what_the_cache_did() {
    let (_servers, proxy, port, _) = setup();
    let mut c = connect(port);
    let _: () = c.set("k", "v").unwrap();
    let mut info = String::new();
    wait_until(
        "a read answered from the cache",
        Duration::from_secs(5),
        || {
            let _: String = c.get("k").unwrap();
            info = redis::cmd("INFO").arg("proxy").query(&mut c).unwrap();
            info.contains("near_cache_hits:1")
        },
    );
    let fields: HashMap<&str, &str> = info.lines().filter_map(|l| l.split_once(':')).collect();
    assert_eq!(fields["near_cache"], "1");
    assert_eq!(fields["near_cache_fills"], "1");
    assert_eq!(fields["near_cache_keys"], "1");
    assert_eq!(near_cache_metric(&proxy, "keys"), 1);
    assert!(near_cache_metric(&proxy, "bytes") > 0);
}

/// `failover: promote` replaces a dead master: what was cached from it is not served, though
/// the promoted replica never tracked those reads for the proxy (a write made on it directly
/// would never invalidate them).
#[test]
fn a_promoted_replica_is_not_answered_for_by_what_its_old_master_gave() {
    let quick = ["--repl-diskless-sync-delay", "0"];
    let (master, replica) = (Redis::start_with(&quick), Redis::start_with(&quick));
    replica_of(&replica, &master);
    let extra = "    failover: promote
    near_cache: { max_bytes: 16777216 }
    health_check: { interval_ms: 100, timeout_ms: 200, failures: 3 }
";
    let (mut master, replica, port, proxy) = one_server(master, replica, extra);
    let mut c = connect(port);
    let _: () = c.set("k", "v1").unwrap();
    wait_until("the replica holds k", Duration::from_secs(10), || {
        replica
            .client()
            .get::<_, Option<String>>("k")
            .unwrap()
            .is_some()
    });
    let hits = || {
        metric(
            &proxy.http("/metrics").1,
            "ringproxy_near_cache_hits_total{pool=\"main\"}",
        )
    };
    wait_until("k answered from the cache", Duration::from_secs(10), || {
        assert_eq!(c.get::<_, String>("k").unwrap(), "v1");
        hits() >= 1
    });
    wait_until("the replica seen in sync", Duration::from_secs(10), || {
        proxy.http("/topology").1.contains("\"holds_data\":true")
    });
    master.kill();
    wait_until("the replica promoted", Duration::from_secs(10), || {
        let topology = proxy.http("/topology").1;
        topology.contains(&format!("\"master\":{{\"address\":\"{}\"", replica.addr()))
    });
    let _: () = replica.client().set("k", "v2").unwrap();
    let mut c = connect(port);
    assert_eq!(c.get::<_, String>("k").unwrap(), "v2");
}
