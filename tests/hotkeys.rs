//! Hot keys against real servers: `/hotkeys` and the metric list what a skewed load made
//! hottest, with its counts and shards, for Redis and memcache pools; `hot_only` keeps only
//! hot keys in the near cache.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use common::*;
use redis::Commands;

/// `/hotkeys`: for pool `pool`, each key with its requests and shard, hottest first.
fn hot_keys(proxy: &Proxy, pool: &str) -> Vec<(String, u64, String)> {
    let (status, body) = proxy.http("/hotkeys");
    assert_eq!(status, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    let pools = view["pools"].as_array().unwrap();
    let found = pools.iter().find(|p| p["name"] == pool).unwrap();
    (found["keys"].as_array().unwrap().iter())
        .map(|k| {
            let key = k["key"].as_str().unwrap().to_string();
            let shard = k["shard"].as_str().unwrap_or_default().to_string();
            (key, k["requests"].as_u64().unwrap(), shard)
        })
        .collect()
}

#[test]
fn a_skewed_load_lists_its_hot_keys_with_their_counts_and_shards() {
    let (shards, port, proxy) = three_shards("s", "");
    let mut c = connect(port);
    let load = [("hot:a", 3), ("hot:b", 2), ("hot:c\u{1}", 1)];
    for (key, _) in load {
        let _: () = c.set(key, 1).unwrap();
    }
    // 3,000, 2,000 and 1,000 reads of three keys among 2,000 others, interleaved; reads,
    // writes and a multi-key read alike.
    for round in 0..1000 {
        let mut pipe = redis::pipe();
        for (key, times) in load {
            for _ in 0..times {
                pipe.get(key).ignore();
            }
        }
        pipe.set(format!("cold:{round}"), 1).ignore();
        pipe.mget(&[format!("cold:{round}:a"), format!("cold:{round}:b")])
            .ignore();
        let _: () = pipe.query(&mut c).unwrap();
    }
    let top = hot_keys(&proxy, "main");
    assert!(top.len() >= 3, "{top:?}");
    for ((key, requests, shard), (want, times)) in top.iter().zip(load) {
        // Control characters are shown escaped.
        assert_eq!(key, &want.replace('\u{1}', "\\x01"));
        let exact = (times * 1000 + 1) as f64;
        // One request in eight is counted: within 20% (more than 4 standard deviations).
        let off = (*requests as f64 - exact).abs() / exact;
        assert!(off < 0.2, "{key}: {requests} for {exact}");
        let holder = (shards.iter())
            .position(|s| s.client().exists::<_, bool>(want).unwrap())
            .unwrap();
        assert_eq!(shard, &format!("s{holder}"));
    }
    let metrics = proxy.http("/metrics").1;
    let rate = metrics
        .lines()
        .find(|l| {
            l.starts_with("ringproxy_hot_key_requests_per_second{") && l.contains("key=\"hot:a\"")
        })
        .unwrap_or_else(|| panic!("no hot key metric in\n{metrics}"));
    let value: f64 = rate.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(value > 0.0, "{rate}");
}

#[test]
fn memcache_pools_count_their_keys_too() {
    let server = Server::memcached();
    let port = free_port();
    let servers = [format!("{}:1 mc0", server.addr())];
    let config = pool_config(port, &servers, "    protocol: memcache\n");
    let proxy = Proxy::start(&config, port);
    let mut c = connect_tcp(port);
    let mut replies = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    c.write_all(b"set page 0 0 1\r\nx\r\n").unwrap();
    replies.read_line(&mut line).unwrap();
    assert_eq!(line, "STORED\r\n");
    for _ in 0..1000 {
        // A multi-key get counts each key; a meta get counts its key.
        c.write_all(b"get page other\r\nmg page v\r\n").unwrap();
        for want in [
            "VALUE page 0 1\r\n",
            "x\r\n",
            "END\r\n",
            "VA 1\r\n",
            "x\r\n",
        ] {
            line.clear();
            replies.read_line(&mut line).unwrap();
            assert_eq!(line, want);
        }
    }
    let top = hot_keys(&proxy, "main");
    let (key, requests, shard) = &top[0];
    assert_eq!((key.as_str(), shard.as_str()), ("page", "mc0"));
    assert!((1600..2400).contains(requests), "{requests} for 2,001");
    assert_eq!(top[1].0, "other");
}

/// With `hot_only`, a key is kept in the near cache only while its worker ranks it among its
/// 32 hottest.
#[test]
fn hot_only_keeps_only_hot_keys_in_the_near_cache() {
    let (_shards, port, proxy) = three_shards(
        "s",
        "    near_cache: { max_bytes: 16777216, hot_only: true }\n",
    );
    let mut c = connect(port);
    let hits = || {
        let metrics = proxy.http("/metrics").1;
        metric(&metrics, "ringproxy_near_cache_hits_total{pool=\"main\"}")
    };
    wait_until("tracking on", Duration::from_secs(5), || {
        proxy
            .http("/topology")
            .1
            .matches("\"tracking\":{\"on\":true")
            .count()
            == 3
    });
    // 40 keys read 200 times each: each is hot (none ranks far above it) once one of its
    // requests has been counted, then kept and answered.
    for round in 0..200 {
        let mut pipe = redis::pipe();
        for i in 0..40 {
            pipe.get(format!("warm:{i}")).ignore();
        }
        let _: () = pipe.query(&mut c).unwrap();
        if round == 0 {
            assert_eq!(hits(), 0);
        }
    }
    assert!(hits() >= 40 * 150, "{}", hits());
    // A key read twice now ranks below those 40 (about 25 requests of each counted): it is
    // not kept.
    let before = hits();
    let _: Option<String> = c.get("cold").unwrap();
    let _: Option<String> = c.get("cold").unwrap();
    assert_eq!(hits(), before);
    let _: Option<String> = c.get("warm:0").unwrap();
    assert_eq!(hits(), before + 1);
}
