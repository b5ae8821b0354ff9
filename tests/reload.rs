//! Reloading the configuration while clients are connected: SIGHUP and `POST /reload`, against
//! real redis-server shards.

mod common;

use std::io::Write;
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
    proxy.master_metric("ringproxy_server_connects_total", server, redis)
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
    assert!(body.contains("pool main: servers changed"), "{body}");
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
    // A file that listens where something else does is refused whole, with the reason.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let two_pools = format!(
        "{}  second:\n    listen: 127.0.0.1:{taken_port}\n    servers: [\"{}:1 two\"]\n",
        pool_over(port, &[&redis], &["one"])
            .replace("    listen:", "    timeout_ms: 5\n    listen:"),
        redis.addr()
    );
    proxy.rewrite_config(&two_pools);
    let (status, body) = reload(&proxy);
    assert_eq!(status, 422);
    let refusal = format!("cannot listen on 127.0.0.1:{taken_port}");
    assert!(body.contains(&refusal), "{body}");
    // Nothing was applied: not the pool's new timeout either (its clients stay connected).
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
            .contains(&format!("\"last_reload_error\":\"{refusal}"))
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

#[test]
fn an_added_pool_listens_and_a_removed_one_answers_what_it_read_then_closes_its_clients() {
    let (a, b) = (Redis::start(), Redis::start());
    let _: () = b.client().set("k", "from b").unwrap();
    let port = free_port();
    let mut proxy = unwatched(&pool_over(port, &[&a], &["one"]), port);
    let mut idle = Raw::connect(port);
    idle.roundtrip(b"PING\r\n", b"+PONG\r\n");
    let mut blocked = Raw::connect(port);
    blocked.send(&command(&[b"BLPOP", b"list", b"2"]));
    wait_until(
        "BLPOP blocks on the backend",
        Duration::from_secs(10),
        || info_field(&a, "clients", "blocked_clients") == 1,
    );
    let other = free_port();
    proxy.rewrite_config(&format!(
        "pools:\n  other:\n    listen: 127.0.0.1:{other}\n    servers: [\"{}:1 two\"]\n",
        b.addr()
    ));
    let (status, body) = reload(&proxy);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("pool other added") && body.contains("pool main removed"),
        "{body}"
    );
    assert_eq!(connect(other).get::<_, String>("k").unwrap(), "from b");
    wait_until(
        "the removed pool's listener closes",
        Duration::from_secs(10),
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
    );
    assert!(
        idle.is_closed(),
        "an idle client of a removed pool is closed"
    );
    assert_eq!(
        blocked.read_line(),
        "*-1\r\n",
        "the request in flight is answered"
    );
    assert!(blocked.is_closed(), "then its client is closed");
    let topology = proxy.http("/topology").1;
    assert!(!topology.contains("\"name\":\"main\""), "{topology}");
}

#[test]
fn a_pool_whose_settings_change_is_replaced_and_one_that_moves_keeps_its_clients() {
    let redis = Redis::start();
    let _: () = redis.client().set("k", "v").unwrap();
    let port = free_port();
    let plain = pool_over(port, &[&redis], &["one"]);
    let mut proxy = unwatched(&plain, port);
    assert_eq!(connect(port).get::<_, String>("k").unwrap(), "v");
    // A new setting: clients must now authenticate. The pool is replaced; its clients are
    // closed between requests and new ones meet the new setting.
    let mut idle = Raw::connect(port);
    idle.roundtrip(b"PING\r\n", b"+PONG\r\n");
    let guarded = plain.replace(
        "    servers:",
        "    auth: { password: s3cret }\n    servers:",
    );
    proxy.rewrite_config(&guarded);
    let (status, body) = reload(&proxy);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pool main replaced"), "{body}");
    assert!(idle.is_closed(), "a client of the replaced pool is closed");
    let mut fresh = Raw::connect(port);
    fresh.send(&command(&[b"GET", b"k"]));
    assert!(fresh.read_line().starts_with("-NOAUTH"));
    fresh.roundtrip(&command(&[b"AUTH", b"s3cret"]), b"+OK\r\n");
    fresh.roundtrip(&command(&[b"GET", b"k"]), b"$1\r\nv\r\n");
    // Moving the pool to another address keeps the pool and its clients.
    let moved_port = free_port();
    let mut stays = Raw::connect(port);
    stays.roundtrip(&command(&[b"AUTH", b"s3cret"]), b"+OK\r\n");
    proxy.rewrite_config(&guarded.replace(&format!(":{port}\n"), &format!(":{moved_port}\n")));
    let (status, body) = reload(&proxy);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("pool main listens on 127.0.0.1:{moved_port}")),
        "{body}"
    );
    wait_until("the old address closes", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    });
    stays.roundtrip(&command(&[b"GET", b"k"]), b"$1\r\nv\r\n");
    let mut moved = Raw::connect(moved_port);
    moved.roundtrip(&command(&[b"AUTH", b"s3cret"]), b"+OK\r\n");
    moved.roundtrip(&command(&[b"GET", b"k"]), b"$1\r\nv\r\n");
}

#[test]
fn a_twemproxy_file_reloads_too() {
    let (a, b) = (Redis::start(), Redis::start());
    let port = free_port();
    let nutcracker = |servers: &[&Redis]| {
        let mut yaml = format!("alpha:\n  listen: 127.0.0.1:{port}\n  redis: true\n  servers:\n");
        for (n, s) in servers.iter().enumerate() {
            yaml.push_str(&format!("   - {}:1 s{n}\n", s.addr()));
        }
        yaml
    };
    let mut proxy = unwatched(&nutcracker(&[&a]), port);
    assert_eq!(servers_shown(&proxy), 1);
    proxy.rewrite_config(&nutcracker(&[&a, &b]));
    let (status, body) = reload(&proxy);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pool alpha: servers changed"), "{body}");
    assert_eq!(servers_shown(&proxy), 2);
}

#[test]
fn a_file_written_slowly_is_applied_whole_once_it_stops_changing() {
    let shards: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let port = free_port();
    let names = ["one", "two", "three"];
    let two = pool_over(port, &[&shards[0], &shards[1]], &names[..2]);
    let proxy = Proxy::start(&two, port);
    assert_eq!(servers_shown(&proxy), 2);
    let full = pool_over(port, &[&shards[0], &shards[1], &shards[2]], &names);
    // Cut after the first server: what was written so far parses, with one server.
    let first = format!("{}:1 one\n", shards[0].addr());
    let cut = full.find(&first).unwrap() + first.len();
    let path = proxy.config_path();
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&full.as_bytes()[..cut]).unwrap();
    file.sync_all().unwrap();
    // The writer's own pause, longer than a burst of changes lasts.
    let paused = std::time::Instant::now();
    while paused.elapsed() < Duration::from_millis(500) {
        assert_ne!(
            servers_shown(&proxy),
            1,
            "the half-written file was applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    file.write_all(&full.as_bytes()[cut..]).unwrap();
    file.sync_all().unwrap();
    wait_until("the whole file applied", Duration::from_secs(10), || {
        servers_shown(&proxy) == 3
    });
    let metrics = proxy.http("/metrics").1;
    assert_eq!(
        metric(&metrics, "ringproxy_config_reloads_total{result=\"ok\"}"),
        1
    );
}

#[test]
fn requests_sent_before_a_client_knew_its_pool_was_replaced_are_answered_not_reset() {
    let redis = Redis::start();
    let port = free_port();
    let plain = pool_over(port, &[&redis], &["one"]);
    let mut proxy = unwatched(&plain, port);
    let mut c = Raw::connect(port);
    c.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
    // A slow request in flight when the pool is replaced…
    let turns = spin_turns(&redis, 400);
    c.send(&command(&[
        b"EVAL",
        SPIN.as_bytes(),
        b"0",
        turns.as_bytes(),
    ]));
    proxy.rewrite_config(&plain.replace("    servers:", "    timeout_ms: 2000\n    servers:"));
    let (status, body) = reload(&proxy);
    assert!(
        status == 200 && body.contains("pool main replaced"),
        "{body}"
    );
    // …and one sent after the pool asked the client to leave, which it cannot know yet.
    c.send(&command(&[b"PING"]));
    c.roundtrip(b"", b":1\r\n+PONG\r\n");
    // Then it is closed, between requests.
    assert!(c.is_closed());
}
