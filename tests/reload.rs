//! Reloading the configuration while clients are connected: SIGHUP and `POST /reload`, against
//! real redis-server shards.

mod common;

use std::time::Duration;

use common::*;
use redis::Commands;

/// A proxy that reloads on SIGHUP and `POST /reload` only, so a test decides when.
fn unwatched(config: &str, port: u16) -> Proxy {
    Proxy::start_with_args(config, port, &[], &["--no-watch"])
}

fn reload(proxy: &Proxy) -> (u16, String) {
    http_request(proxy.admin, "POST", "/reload", "").expect("admin endpoint answers")
}

fn servers_shown(proxy: &Proxy) -> usize {
    proxy.http("/topology").1.matches("\"identity\":").count()
}

fn connects(proxy: &Proxy, server: &str, redis: &Redis) -> u64 {
    metric(
        &proxy.http("/metrics").1,
        &format!(
            "ringproxy_server_connects_total{{pool=\"main\",server=\"{server}\",role=\"master\",address=\"{}\"}}",
            redis.addr()
        ),
    )
}

#[test]
fn an_added_server_takes_exactly_the_keys_a_fresh_start_places_there_and_sighup_reloads() {
    let shards: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let port = free_port();
    let two = pool_over(port, &[&shards[0], &shards[1]], &["a", "b"]);
    let mut proxy = Proxy::start(&two, port);
    proxy.wait_ready(true);
    let mut c = connect(port);
    let keys: Vec<String> = (0..300).map(|n| format!("reload:{n}")).collect();
    for k in &keys {
        let _: () = c.set(k, k).unwrap();
    }
    let connects_before = connects(&proxy, "a", &shards[0]);
    proxy.rewrite_config(&pool_over(
        port,
        &[&shards[0], &shards[1], &shards[2]],
        &["a", "b", "c"],
    ));
    wait_until("the third server", Duration::from_secs(10), || {
        servers_shown(&proxy) == 3
    });
    proxy.wait_ready(true);
    // The same client connection: keys now placed on the new server miss, the others hit.
    let mut moved = 0;
    for k in &keys {
        let now: Option<String> = c.get(k).unwrap();
        if proxy.shard_of(k.as_bytes()) == 2 {
            moved += 1;
            assert_eq!(now, None, "{k} is placed on the new, empty server");
        } else {
            assert_eq!(now.as_deref(), Some(k.as_str()), "{k} stays where it was");
        }
    }
    assert!(moved > 30 && moved < 200, "{moved} of 300 keys moved");
    assert_eq!(
        connects(&proxy, "a", &shards[0]),
        connects_before,
        "server a kept its connections"
    );
    // The watcher applied the edit; SIGHUP reloads too, and does not stop the process as it
    // stops twemproxy.
    let reloads = || {
        metric(
            &proxy.http("/metrics").1,
            "ringproxy_config_reloads_total{result=\"ok\"}",
        )
    };
    let before = reloads();
    proxy.signal("-HUP");
    wait_until("SIGHUP reloads", Duration::from_secs(10), || {
        reloads() == before + 1
    });
    assert_eq!(
        c.get::<_, Option<String>>("reload:0").unwrap().is_some(),
        proxy.shard_of(b"reload:0") != 2
    );
}

#[test]
fn a_server_whose_address_changes_is_served_from_the_new_address() {
    let (old, new) = (Redis::start(), Redis::start());
    let _: () = old.client().set("k", "old").unwrap();
    let _: () = new.client().set("k", "new").unwrap();
    let port = free_port();
    let mut proxy = unwatched(&pool_over(port, &[&old], &["one"]), port);
    let mut c = connect(port);
    assert_eq!(c.get::<_, String>("k").unwrap(), "old");
    proxy.rewrite_config(&pool_over(port, &[&new], &["one"]));
    let (status, body) = reload(&proxy);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("servers changed in pool main"), "{body}");
    wait_until("the new address", Duration::from_secs(10), || {
        c.get::<_, String>("k").unwrap() == "new"
    });
}

#[test]
fn a_bad_file_is_refused_with_its_place_and_the_running_topology_keeps_serving() {
    let redis = Redis::start();
    let port = free_port();
    let mut proxy = unwatched(&pool_over(port, &[&redis], &["one"]), port);
    let mut c = connect(port);
    let _: () = c.set("k", "v").unwrap();
    proxy.rewrite_config(
        "pools:\n  main:\n    listen: 127.0.0.1:1\n    hash: sha1\n    servers: []\n",
    );
    let (status, body) = reload(&proxy);
    assert_eq!(status, 422);
    assert!(
        body.contains("config.yaml:4:11: unknown hash 'sha1'"),
        "{body}"
    );
    // A change a reload cannot apply yet is refused whole, with the reason.
    let slower = pool_over(port, &[&redis], &["one"])
        .replace("    servers:", "    timeout_ms: 5\n    servers:");
    proxy.rewrite_config(&slower);
    let (status, body) = reload(&proxy);
    assert_eq!(status, 422);
    assert!(
        body.contains("pool main: only its servers can change"),
        "{body}"
    );
    assert_eq!(c.get::<_, String>("k").unwrap(), "v");
    let metrics = proxy.http("/metrics").1;
    assert_eq!(
        metric(
            &metrics,
            "ringproxy_config_reloads_total{result=\"failed\"}"
        ),
        2
    );
    assert!(
        proxy
            .http("/topology")
            .1
            .contains("\"last_reload_error\":\"pool main: only its servers")
    );
}

#[test]
fn an_edited_file_is_reloaded_without_a_signal() {
    let (old, new) = (Redis::start(), Redis::start());
    let _: () = new.client().set("k", "new").unwrap();
    let port = free_port();
    let mut proxy = Proxy::start(&pool_over(port, &[&old], &["one"]), port);
    let mut c = connect(port);
    assert_eq!(c.get::<_, Option<String>>("k").unwrap(), None);
    proxy.rewrite_config(&pool_over(port, &[&new], &["one"]));
    wait_until("the edit applied", Duration::from_secs(10), || {
        c.get::<_, Option<String>>("k").unwrap().as_deref() == Some("new")
    });
    // One edit, one reload: reading the file to reload it is not taken for a change.
    let metrics = proxy.http("/metrics").1;
    assert_eq!(
        metric(&metrics, "ringproxy_config_reloads_total{result=\"ok\"}"),
        1
    );
    let (status, _) = reload(&proxy);
    assert_eq!(status, 200);
    let metrics = proxy.http("/metrics").1;
    assert_eq!(
        metric(&metrics, "ringproxy_config_reloads_total{result=\"ok\"}"),
        2
    );
}
