//! ringproxy against real redis-server shards, asserting raw reply bytes.

mod common;

use std::time::Duration;

use common::*;
use redis::Commands;

/// Three redis-server shards behind one ringproxy pool.
struct Setup {
    shards: Vec<Redis>,
    port: u16,
    proxy: Proxy,
}

fn setup(extra: &str) -> Setup {
    let (shards, port, proxy) = three_shards("shard-", extra);
    Setup {
        shards,
        port,
        proxy,
    }
}

impl Setup {
    fn raw(&self) -> Raw {
        Raw::connect(self.port)
    }

    fn client(&self) -> redis::Connection {
        connect(self.port)
    }

    /// Which shard holds `key`, asking each directly.
    fn holder(&self, key: &str) -> Option<usize> {
        self.shards
            .iter()
            .position(|s| s.client().exists::<_, bool>(key).unwrap())
    }

    /// A key that lives on shard `i`.
    fn key_on(&self, i: usize, prefix: &str) -> String {
        self.proxy.key_on(i, prefix)
    }
}

/// Reads HELLO's reply (eight fields, the last an empty module list) and returns its header.
fn hello_reply(r: &mut Raw) -> String {
    let header = r.read_line();
    for _ in 0..16 {
        let line = r.read_line();
        if line.starts_with('$') {
            r.read_line();
        } else if line.starts_with('*') {
            assert_eq!(line, "*0\r\n");
        }
    }
    header
}

#[test]
fn handshake_commands_are_answered_by_the_proxy() {
    let s = setup("");
    let mut r = s.raw();
    r.roundtrip(b"PING\r\n", b"+PONG\r\n");
    r.roundtrip(&command(&[b"PING", b"hi"]), b"$2\r\nhi\r\n");
    r.roundtrip(&command(&[b"ECHO", b"x y"]), b"$3\r\nx y\r\n");
    r.roundtrip(&command(&[b"SELECT", b"0"]), b"+OK\r\n");
    // One database unless the pool says `databases`.
    r.roundtrip(
        &command(&[b"SELECT", b"1"]),
        b"-ERR DB index is out of range\r\n",
    );
    r.roundtrip(&command(&[b"CLIENT", b"GETNAME"]), b"$-1\r\n");
    r.roundtrip(&command(&[b"CLIENT", b"SETNAME", b"app"]), b"+OK\r\n");
    r.roundtrip(&command(&[b"CLIENT", b"GETNAME"]), b"$3\r\napp\r\n");
    r.roundtrip(
        &command(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"x"]),
        b"+OK\r\n",
    );
    r.roundtrip(
        &command(&[b"CLIENT", b"PAUSE", b"10"]),
        b"-ERR unsupported command 'CLIENT PAUSE'\r\n",
    );
    r.send(&command(&[b"CLIENT", b"ID"]));
    assert!(r.read_line().starts_with(':'));
    r.send(&command(&[b"COMMAND", b"COUNT"]));
    let count: usize = r.read_line()[1..].trim().parse().unwrap();
    assert!(count > 100);
    // A refused command is described as an unknown one (the rest: tests/compat.rs).
    r.roundtrip(
        &command(&[b"COMMAND", b"INFO", b"nosuch", b"debug"]),
        b"*2\r\n$-1\r\n$-1\r\n",
    );
    r.roundtrip(&command(&[b"COMMAND", b"DOCS", b"debug"]), b"*0\r\n");
    // HELLO 3 switches this client to RESP3: a map, and `_` for null.
    r.send(&command(&[b"HELLO", b"3"]));
    assert_eq!(hello_reply(&mut r), "%8\r\n");
    r.roundtrip(&command(&[b"GET", b"missing"]), b"_\r\n");
    r.roundtrip(
        &command(&[b"HELLO", b"4"]),
        b"-NOPROTO unsupported protocol version\r\n",
    );
    r.send(&command(&[b"HELLO", b"2"]));
    assert_eq!(hello_reply(&mut r), "*16\r\n");
    r.roundtrip(&command(&[b"GET", b"missing"]), b"$-1\r\n");
    r.roundtrip(&command(&[b"QUIT"]), b"+OK\r\n");
    assert!(r.is_closed());
}

#[test]
fn pipeline_across_shards_keeps_request_order() {
    let s = setup("");
    let mut r = s.raw();
    let mut pipeline = Vec::new();
    let mut expected = Vec::new();
    for i in 0..500 {
        let key = format!("k{i}");
        let value = format!("v{i}");
        pipeline.extend(command(&[b"SET", key.as_bytes(), value.as_bytes()]));
        pipeline.extend(command(&[b"GET", key.as_bytes()]));
        pipeline.extend(command(&[b"PING"]));
        expected.extend_from_slice(b"+OK\r\n");
        expected.extend(format!("${}\r\n{value}\r\n+PONG\r\n", value.len()).bytes());
    }
    r.send(&pipeline);
    assert_eq!(
        String::from_utf8_lossy(&r.read_n(expected.len())),
        String::from_utf8_lossy(&expected)
    );
    let per_shard: Vec<usize> = s
        .shards
        .iter()
        .map(|sh| redis::cmd("DBSIZE").query(&mut sh.client()).unwrap())
        .collect();
    assert_eq!(per_shard.iter().sum::<usize>(), 500);
    assert!(
        per_shard.iter().all(|&n| n > 100),
        "keys spread over every shard: {per_shard:?}"
    );
}

#[test]
fn multi_key_commands_split_and_merge_in_key_order() {
    let s = setup("");
    let mut c = s.client();
    // twemproxy's fnv1a_64 puts similar short keys on one shard; these spread.
    let keys: Vec<String> = (0..100u64)
        .map(|i| format!("{:x}:user", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    let pairs: Vec<(String, String)> = keys
        .iter()
        .map(|k| (k.clone(), format!("{k}-value")))
        .collect();
    let _: () = c.mset(&pairs).unwrap();
    let mut asked = keys.clone();
    asked.insert(50, "absent".to_string());
    let values: Vec<Option<String>> = c.mget(&asked).unwrap();
    assert_eq!(values.len(), 101);
    assert_eq!(values[50], None);
    assert_eq!(values[0], Some(format!("{}-value", keys[0])));
    assert_eq!(values[100], Some(format!("{}-value", keys[99])));
    let holders: std::collections::HashSet<_> = keys.iter().map(|k| s.holder(k)).collect();
    assert_eq!(holders.len(), 3, "the keys spread over all shards");
    let n: i64 = redis::cmd("EXISTS").arg(&asked).query(&mut c).unwrap();
    assert_eq!(n, 100);
    let n: i64 = redis::cmd("TOUCH").arg(&keys[..10]).query(&mut c).unwrap();
    assert_eq!(n, 10);
    let n: i64 = redis::cmd("UNLINK").arg(&keys[..10]).query(&mut c).unwrap();
    assert_eq!(n, 10);
    let n: i64 = c.del(&asked).unwrap();
    assert_eq!(n, 90);
    let n: i64 = redis::cmd("EXISTS").arg(&asked).query(&mut c).unwrap();
    assert_eq!(n, 0);
    // One MGET over 1,000 keys in raw bytes: values come back in key order.
    let mut r = s.raw();
    let many: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    for k in &many {
        mset.push(k.as_bytes());
        mset.push(k.as_bytes());
    }
    r.roundtrip(&command(&mset), b"+OK\r\n");
    let mut mget: Vec<&[u8]> = vec![b"MGET"];
    mget.extend(many.iter().map(|k| k.as_bytes()));
    let mut expected = b"*1000\r\n".to_vec();
    for k in &many {
        expected.extend(format!("${}\r\n{k}\r\n", k.len()).bytes());
    }
    r.roundtrip(&command(&mget), &expected);
}

#[test]
fn unsupported_and_cross_shard_commands_get_errors_and_the_connection_stays() {
    let s = setup("");
    let a = s.key_on(0, "a");
    let b = s.key_on(1, "b");
    let mut r = s.raw();
    r.roundtrip(
        &command(&[b"DEBUG", b"SLEEP", b"0"]),
        b"-ERR unsupported command 'DEBUG': server administration: connect to the server itself\r\n",
    );
    r.roundtrip(
        &command(&[b"FLUSHALL"]),
        b"-ERR FLUSHALL would empty every shard; the pool needs allow_flush: true\r\n",
    );
    r.roundtrip(
        &command(&[b"NOSUCHCOMMAND"]),
        b"-ERR unknown command 'NOSUCHCOMMAND', with args beginning with: \r\n",
    );
    r.roundtrip(
        &command(&[b"GET"]),
        b"-ERR wrong number of arguments for 'get' command\r\n",
    );
    // A key without its value: refused as Redis does (the router once split it and panicked).
    r.roundtrip(
        &command(&[b"MSET", a.as_bytes(), b"1", b.as_bytes()]),
        b"-ERR wrong number of arguments for 'mset' command\r\n",
    );
    r.roundtrip(
        &command(&[b"RENAME", a.as_bytes(), b.as_bytes()]),
        b"-CROSSSLOT Keys in request don't hash to the same shard (command 'rename'); use a hash tag\r\n",
    );
    r.roundtrip(&command(&[b"SET", a.as_bytes(), b"1"]), b"+OK\r\n");
    r.roundtrip(&command(&[b"GET", a.as_bytes()]), b"$1\r\n1\r\n");
}

#[test]
fn hash_tags_keep_related_keys_together() {
    let s = setup("    hash_tag: \"{}\"\n");
    let mut r = s.raw();
    for i in 0..20 {
        let from = format!("{{order{i}}}:pending");
        let to = format!("{{order{i}}}:done");
        r.roundtrip(&command(&[b"SET", from.as_bytes(), b"x"]), b"+OK\r\n");
        r.roundtrip(
            &command(&[b"RENAME", from.as_bytes(), to.as_bytes()]),
            b"+OK\r\n",
        );
        assert_eq!(
            s.holder(&to),
            s.holder(&format!("{{order{i}}}")).or(s.holder(&to))
        );
    }
}

#[test]
fn pool_password_is_required() {
    let s = setup("    auth: { password: s3cret }\n");
    let mut r = s.raw();
    r.roundtrip(
        &command(&[b"GET", b"k"]),
        b"-NOAUTH Authentication required.\r\n",
    );
    r.roundtrip(
        &command(&[b"PING"]),
        b"-NOAUTH Authentication required.\r\n",
    );
    r.roundtrip(
        &command(&[b"AUTH", b"wrong"]),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    r.roundtrip(&command(&[b"AUTH", b"s3cret"]), b"+OK\r\n");
    r.roundtrip(&command(&[b"GET", b"k"]), b"$-1\r\n");
    let mut r = s.raw();
    r.send(&command(&[
        b"HELLO", b"3", b"AUTH", b"default", b"s3cret", b"SETNAME", b"me",
    ]));
    assert_eq!(r.read_line(), "%8\r\n");
    let mut r = s.raw();
    r.roundtrip(
        &command(&[b"AUTH", b"other", b"s3cret"]),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
}

#[test]
fn acl_style_users_with_a_password_from_the_environment() {
    let backend = Redis::start();
    let port = free_port();
    let extra = "    users:\n      - { name: app, password: app-pw }\n      - { name: ops, password_env: RINGPROXY_OPS_PASSWORD }\n";
    let config = pool_config(port, &[format!("{}:1", backend.addr())], extra);
    let proxy = Proxy::start_with_env(&config, port, &[("RINGPROXY_OPS_PASSWORD", "ops-from-env")]);
    let mut r = Raw::connect(port);
    r.roundtrip(
        &command(&[b"GET", b"k"]),
        b"-NOAUTH Authentication required.\r\n",
    );
    for (user, password) in [
        (&b"default"[..], &b"app-pw"[..]),
        (b"app", b"wrong"),
        (b"ops", b"app-pw"),
    ] {
        r.roundtrip(
            &command(&[b"AUTH", user, password]),
            b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
        );
    }
    r.roundtrip(
        &command(&[b"AUTH", b"app-pw"]),
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    r.roundtrip(&command(&[b"AUTH", b"ops", b"ops-from-env"]), b"+OK\r\n");
    r.roundtrip(&command(&[b"SET", b"k", b"1"]), b"+OK\r\n");
    let mut r = Raw::connect(port);
    r.send(&command(&[b"HELLO", b"3", b"AUTH", b"app", b"app-pw"]));
    assert_eq!(r.read_line(), "%8\r\n");
    // A standard client with a username connects unchanged.
    let mut client = open(&format!("redis://app:app-pw@127.0.0.1:{port}/"));
    assert_eq!(
        redis::cmd("GET")
            .arg("k")
            .query::<String>(&mut client)
            .unwrap(),
        "1"
    );
    // Passwords never show on the admin endpoint.
    for path in ["/topology", "/metrics", "/ready"] {
        let body = proxy.http(path).1;
        assert!(
            !body.contains("app-pw") && !body.contains("ops-from-env"),
            "{path}: {body}"
        );
    }
}

#[test]
fn malformed_input_closes_only_that_client() {
    let s = setup("");
    let mut steady = s.raw();
    steady.roundtrip(&command(&[b"SET", b"steady", b"1"]), b"+OK\r\n");
    let rss_before = s.proxy.rss_kib();
    let cases: [(&[u8], &[u8]); 4] = [
        (
            b"*1\r\n$4\r\nPING\r\n*x\r\n",
            b"+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*2\r\n$3\r\nGET\r\n$1073741824\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n*1\r\n*1\r\n",
            b"-ERR Protocol error: expected '$', got '*'\r\n",
        ),
        (
            b"*1\r\n$4\r\nPINGxx",
            b"-ERR Protocol error: expected CRLF after bulk string\r\n",
        ),
    ];
    for (input, reply) in cases {
        let mut r = s.raw();
        r.send(input);
        assert_eq!(
            String::from_utf8_lossy(&r.read_n(reply.len())),
            String::from_utf8_lossy(reply)
        );
        assert!(r.is_closed());
    }
    // 100,000 nested arrays: rejected at the first nested header, nothing recursed.
    let mut r = s.raw();
    r.send(&b"*1\r\n".repeat(100_000));
    let reply = b"-ERR Protocol error: expected '$', got '*'\r\n";
    assert_eq!(r.read_n(reply.len()), reply);
    assert!(r.is_closed());
    // A request cut off by the client's close is dropped without harm.
    let mut r = s.raw();
    r.send(b"*3\r\n$3\r\nSET\r\n$4\r\nhalf");
    drop(r);
    // Garbage bytes read as inline commands: error replies (unknown commands, then a protocol
    // error), never a crash.
    let mut r = s.raw();
    let garbage: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    r.send(&garbage);
    let line = r.read_line();
    assert!(line.starts_with("-ERR "), "{line}");
    drop(r);
    steady.roundtrip(&command(&[b"GET", b"steady"]), b"$1\r\n1\r\n");
    let rss_after = s.proxy.rss_kib();
    assert!(
        rss_after < rss_before + 32 * 1024,
        "rss grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[test]
fn inline_commands_work() {
    let s = setup("");
    let mut r = s.raw();
    r.roundtrip(
        b"SET inline \"a b\"\r\nGET inline\r\n",
        b"+OK\r\n$3\r\na b\r\n",
    );
}

#[test]
fn dead_backend_gives_errors_for_its_keys_only_and_its_return_is_noticed() {
    let mut s = setup(
        "    timeout_ms: 500\n    health_check: { interval_ms: 50, timeout_ms: 200, failures: 1 }\n",
    );
    let keys: Vec<String> = (0..3).map(|i| s.key_on(i, &format!("s{i}-"))).collect();
    let mut r = s.raw();
    for k in &keys {
        r.roundtrip(&command(&[b"SET", k.as_bytes(), b"v"]), b"+OK\r\n");
    }
    s.shards[1].kill();
    let mut pipeline = Vec::new();
    for k in &keys {
        pipeline.extend(command(&[b"GET", k.as_bytes()]));
    }
    r.send(&pipeline);
    assert_eq!(r.read_line(), "$1\r\n");
    assert_eq!(r.read_line(), "v\r\n");
    let err = r.read_line();
    assert!(err.starts_with("-ERR backend shard-1 (127.0.0.1:"), "{err}");
    assert_eq!(r.read_line(), "$1\r\n");
    assert_eq!(r.read_line(), "v\r\n");
    r.roundtrip(
        &command(&[b"NOSUCHCOMMAND"]),
        b"-ERR unknown command 'NOSUCHCOMMAND', with args beginning with: \r\n",
    );
    let metrics = s.proxy.http("/metrics").1;
    let kind = |kind: &str| {
        metric(
            &metrics,
            &format!("ringproxy_client_errors_total{{pool=\"main\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(
        (kind("connection"), kind("refused"), kind("timeout")),
        (1, 1, 0)
    );
    s.proxy.wait_ready(false);
    let (_, body) = s.proxy.http("/ready");
    assert!(body.contains("shard-1"), "{body}");
    s.shards[1].restart();
    s.proxy.wait_ready(true);
    // Same client connection: the key of the returned shard works again (its data is gone).
    wait_until("shard-1 serving again", Duration::from_secs(10), || {
        r.send(&command(&[b"SET", keys[1].as_bytes(), b"w"]));
        r.read_line() == "+OK\r\n"
    });
    r.roundtrip(&command(&[b"GET", keys[1].as_bytes()]), b"$1\r\nw\r\n");
}

#[test]
fn slow_backend_times_out_with_an_error_reply() {
    let s = setup("    timeout_ms: 200\n");
    let key = s.key_on(0, "slow");
    // The pause is in force once its +OK arrives.
    let mut direct = Raw::connect(s.shards[0].port);
    direct.roundtrip(
        &command(&[b"CLIENT", b"PAUSE", b"1000", b"ALL"]),
        b"+OK\r\n",
    );
    let mut r = s.raw();
    r.send(&command(&[b"GET", key.as_bytes()]));
    let line = r.read_line();
    assert!(
        line.starts_with("-ERR backend shard-0 (127.0.0.1:")
            && line.contains("timed out after 200 ms"),
        "{line}"
    );
    let timeouts = "ringproxy_client_errors_total{pool=\"main\",kind=\"timeout\"}";
    assert_eq!(metric(&s.proxy.http("/metrics").1, timeouts), 1);
    wait_until("shard-0 answering again", Duration::from_secs(10), || {
        r.send(&command(&[b"GET", key.as_bytes()]));
        r.read_line() == "$-1\r\n"
    });
}

#[test]
fn eject_takes_a_failing_server_off_the_ring_and_back() {
    let mut s = setup(
        "    failover: eject\n    server_failure_limit: 1\n    server_retry_timeout_ms: 2000\n    timeout_ms: 1000\n    health_check: { interval_ms: 50, timeout_ms: 1000, failures: 1 }\n",
    );
    let key = s.key_on(2, "ej");
    s.shards[2].kill();
    wait_until("shard-2 ejected", Duration::from_secs(10), || {
        s.proxy.http("/topology").1.contains(
            "\"name\":\"shard-2\",\"identity\":\"shard-2\",\"weight\":1,\"on_ring\":false",
        )
    });
    // While it is out, its keys rehash to the others and writes succeed.
    let mut r = s.raw();
    r.roundtrip(&command(&[b"SET", key.as_bytes(), b"moved"]), b"+OK\r\n");
    assert!(
        s.shards[..2]
            .iter()
            .any(|sh| sh.client().exists::<_, bool>(&key).unwrap())
    );
    let (status, body) = s.proxy.http("/ready");
    assert_eq!(
        status, 200,
        "ready: every shard on the ring has its master: {body}"
    );
    s.shards[2].restart();
    wait_until("shard-2 back on the ring", Duration::from_secs(10), || {
        s.proxy
            .http("/topology")
            .1
            .contains("\"name\":\"shard-2\",\"identity\":\"shard-2\",\"weight\":1,\"on_ring\":true")
    });
    r.roundtrip(&command(&[b"SET", key.as_bytes(), b"home"]), b"+OK\r\n");
    assert!(s.shards[2].client().exists::<_, bool>(&key).unwrap());
}

/// One shard whose "replica" is a standalone server holding `k = from-replica`, so where each
/// command went is visible; `extra` pool lines set the read policy.
fn master_and_replica(extra: &str) -> (Redis, Redis, u16, Proxy) {
    let (master, replica) = (Redis::start(), Redis::start());
    let _: () = replica.client().set("k", "from-replica").unwrap();
    one_server(master, replica, extra)
}

#[test]
fn reads_go_to_replicas_and_writes_to_masters() {
    let (master, replica, port, proxy) = master_and_replica("    read_from: replica\n");
    let mut r = Raw::connect(port);
    r.roundtrip(&command(&[b"GET", b"k"]), b"$12\r\nfrom-replica\r\n");
    r.roundtrip(&command(&[b"SET", b"w", b"1"]), b"+OK\r\n");
    assert!(master.client().exists::<_, bool>("w").unwrap());
    assert!(!replica.client().exists::<_, bool>("w").unwrap());
    let (_, topology) = proxy.http("/topology");
    assert!(
        topology.contains(&format!(
            "\"replicas\":[{{\"address\":\"{}\"",
            replica.addr()
        )),
        "{topology}"
    );
}

#[test]
fn admin_endpoint_reports_health_readiness_metrics_and_topology() {
    let s = setup("    preconnect: true\n");
    assert_eq!(s.proxy.http("/health"), (200, "ok\n".to_string()));
    s.proxy.wait_ready(true);
    let mut r = s.raw();
    r.roundtrip(&command(&[b"SET", b"m", b"1"]), b"+OK\r\n");
    // The connection that probed the listener at start may take a moment to be counted out.
    wait_until("one client", Duration::from_secs(10), || {
        s.proxy
            .http("/metrics")
            .1
            .contains("ringproxy_client_connections{pool=\"main\"} 1")
    });
    let (status, metrics) = s.proxy.http("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("ringproxy_client_requests_total{pool=\"main\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringproxy_client_connections{pool=\"main\"} 1"),
        "{metrics}"
    );
    for i in 0..3 {
        // preconnect: every master has one connection per worker before any request.
        let line = format!(
            "ringproxy_server_connections{{pool=\"main\",server=\"shard-{i}\",role=\"master\",address=\"{}\"}} {PROXY_WORKERS}",
            s.shards[i].addr()
        );
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    let (status, topology) = s.proxy.http("/topology");
    assert_eq!(status, 200);
    assert!(topology.contains("\"hash\":\"fnv1a_64\""), "{topology}");
    assert_eq!(s.proxy.http("/nowhere").0, 404);
}

#[test]
fn info_reports_the_proxy_and_summed_keyspace() {
    let s = setup("");
    let mut c = s.client();
    for i in 0..30 {
        let _: () = c.set(format!("i{i}"), i).unwrap();
    }
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    assert!(info.contains("# Server\r\nredis_version:7."), "{info}");
    assert!(info.contains("# Proxy\r\nproxy:ringproxy"), "{info}");
    assert!(info.contains("db0:keys=30,expires=0"), "{info}");
    let only: String = redis::cmd("INFO").arg("clients").query(&mut c).unwrap();
    assert!(
        only.starts_with("# Clients\r\nconnected_clients:1\r\n"),
        "{only}"
    );
    assert!(!only.contains("# Server"), "{only}");
    // A client waiting in BLPOP is a blocked client, as Redis counts them.
    let mut blocked = s.raw();
    blocked.send(&command(&[b"BLPOP", b"nothing", b"0"]));
    wait_until("one blocked client", Duration::from_secs(10), || {
        let clients: String = redis::cmd("INFO").arg("clients").query(&mut c).unwrap();
        clients.contains("blocked_clients:1\r\n")
    });
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_zero() {
    let mut s = setup("    timeout_ms: 5000\n");
    let key = s.key_on(0, "drain");
    let mut direct = Raw::connect(s.shards[0].port);
    direct.roundtrip(&command(&[b"CLIENT", b"PAUSE", b"500", b"ALL"]), b"+OK\r\n");
    let requests = |proxy: &Proxy| {
        metric(
            &proxy.http("/metrics").1,
            "ringproxy_client_requests_total{pool=\"main\"}",
        )
    };
    let before = requests(&s.proxy);
    let mut r = s.raw();
    r.send(&command(&[b"GET", key.as_bytes()]));
    wait_until("request in flight", Duration::from_secs(5), || {
        requests(&s.proxy) > before
    });
    s.proxy.signal("-TERM");
    assert_eq!(r.read_line(), "$-1\r\n");
    assert!(r.is_closed());
    let status = s.proxy.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn sigterm_makes_ready_fail_while_clients_are_still_served_then_closes_idle_ones() {
    let redis = Redis::start();
    let port = free_port();
    let config = format!("drain_ms: 1500\n{}", pool_over(port, &[&redis], &["one"]));
    let mut proxy = Proxy::start(&config, port);
    proxy.wait_ready(true);
    let mut idle = Raw::connect(port);
    idle.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
    let signalled = std::time::Instant::now();
    proxy.signal("-TERM");
    wait_until("/ready fails", Duration::from_secs(1), || {
        proxy.http("/ready")
            == (
                503,
                "{\"ready\":false,\"reason\":\"shutting down: draining\"}\n".to_string(),
            )
    });
    // The load balancer has not noticed yet: a client that arrives now is still served.
    let mut late = Raw::connect(port);
    late.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
    assert!(signalled.elapsed() < Duration::from_millis(1500));
    // After the drain: idle clients are closed and the process exits 0.
    assert!(idle.is_closed());
    assert!(late.is_closed());
    assert!(signalled.elapsed() >= Duration::from_millis(1500));
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn admin_token_guards_metrics_and_topology_but_not_health_and_readiness() {
    let redis = Redis::start();
    let port = free_port();
    let config = format!(
        "admin: {{ listen: 127.0.0.1:1, token_env: ADMIN_TOKEN }}\n{}",
        pool_over(port, &[&redis], &["one"])
    );
    let proxy = Proxy::start_with_env(&config, port, &[("ADMIN_TOKEN", "s3cret-token")]);
    proxy.wait_ready(true);
    let ask = |method: &str, path: &str, headers: &str| {
        http_request(proxy.admin, method, path, headers).expect("admin endpoint answers")
    };
    assert_eq!(ask("GET", "/health", ""), (200, "ok\n".to_string()));
    assert_eq!(ask("GET", "/ready", "").0, 200);
    for path in ["/metrics", "/topology"] {
        assert_eq!(ask("GET", path, "").0, 401, "{path} without a token");
        let wrong = "Authorization: Bearer s3cret-tokem\r\n";
        assert_eq!(ask("GET", path, wrong).0, 401, "{path} with a wrong token");
        for right in [
            "Authorization: Bearer s3cret-token\r\n",
            "authorization: bearer s3cret-token\r\n",
            "Authorization: BEARER  s3cret-token\r\n",
        ] {
            let (status, body) = ask("GET", path, right);
            assert_eq!(status, 200, "{path} {right}");
            assert!(!body.contains("s3cret"), "{body}");
        }
    }
    assert_eq!(ask("POST", "/health", "").0, 405);
    assert_eq!(ask("GET", "/nowhere", "").0, 404);
}

#[test]
fn twemproxy_style_backend_auth_and_db() {
    let shard = Redis::start_with(&["--requirepass", "pw"]);
    let port = free_port();
    let config = format!(
        "alpha:\n  listen: 127.0.0.1:{port}\n  redis: true\n  redis_auth: pw\n  redis_db: 3\n  servers:\n   - {}:1\n",
        shard.addr()
    );
    let _proxy = Proxy::start(&config, port);
    let mut r = Raw::connect(port);
    r.roundtrip(
        &command(&[b"SET", b"k", b"v"]),
        b"-NOAUTH Authentication required.\r\n",
    );
    r.roundtrip(&command(&[b"AUTH", b"pw"]), b"+OK\r\n");
    r.roundtrip(&command(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    let mut direct = Raw::connect(shard.port);
    direct.roundtrip(&command(&[b"AUTH", b"pw"]), b"+OK\r\n");
    direct.roundtrip(&command(&[b"SELECT", b"3"]), b"+OK\r\n");
    direct.roundtrip(&command(&[b"GET", b"k"]), b"$1\r\nv\r\n");
}

#[test]
fn bad_backend_password_is_reported() {
    let shard = Redis::start_with(&["--requirepass", "right"]);
    let port = free_port();
    let config = pool_config(
        port,
        &[format!("{}:1 only", shard.addr())],
        "    backend_auth: { password: wrong }\n",
    );
    let _proxy = Proxy::start(&config, port);
    let mut r = Raw::connect(port);
    r.send(&command(&[b"GET", b"k"]));
    let line = r.read_line();
    assert!(
        line.starts_with("-ERR backend only (") && line.contains("handshake refused: WRONGPASS"),
        "{line}"
    );
}

#[test]
fn config_mistakes_exit_64_with_the_place() {
    let dir = TempDir::new("badconfig");
    let path = dir.write(
        "bad.yaml",
        "pools:\n  p:\n    listen: 127.0.0.1:1\n    hash: sha1\n    servers: [127.0.0.1:2:1]\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringproxy"))
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:4:11: unknown hash 'sha1'", path.display())),
        "{stderr}"
    );
    let good = dir.write(
        "good.yaml",
        "pools:\n  p:\n    listen: 127.0.0.1:1\n    servers: [127.0.0.1:2:1 one]\n",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringproxy"))
        .args(["--check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("server one weight 1 master 127.0.0.1:2")
    );
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_ringproxy"))
        .args(["--config", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(64));
}

#[test]
fn client_connections_limit_is_enforced() {
    let shard = Redis::start();
    let port = free_port();
    let config = format!(
        "alpha:\n  listen: 127.0.0.1:{port}\n  redis: true\n  client_connections: 1\n  servers:\n   - {}:1\n",
        shard.addr()
    );
    let _proxy = Proxy::start(&config, port);
    // The readiness probe's connection must be gone before the limit is tested.
    wait_until("no clients", Duration::from_secs(5), || {
        _proxy
            .http("/metrics")
            .1
            .contains("ringproxy_client_connections{pool=\"alpha\"} 0")
    });
    let mut first = Raw::connect(port);
    first.roundtrip(b"PING\r\n", b"+PONG\r\n");
    let mut second = Raw::connect(port);
    assert_eq!(second.read_line(), "-ERR max number of clients reached\r\n");
    assert!(second.is_closed());
    first.roundtrip(b"PING\r\n", b"+PONG\r\n");
}

#[test]
fn a_client_that_stops_sending_still_gets_its_replies() {
    let s = setup("");
    let mut r = s.raw();
    r.send(b"SET half-closed yes\r\nGET half-closed\r\nOBJECT HELP\r\n");
    r.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(r.read_line(), "+OK\r\n");
    assert_eq!(r.read_line(), "$3\r\n");
    assert_eq!(r.read_line(), "yes\r\n");
    // OBJECT HELP has no key: any shard answers it.
    assert!(r.read_line().starts_with('*'));
}

#[test]
fn replica_preferred_falls_back_to_the_master() {
    let (master, mut replica, port, proxy) = master_and_replica(
        "    read_from: replica_preferred\n    health_check: { interval_ms: 50, timeout_ms: 200, failures: 1 }\n",
    );
    let _: () = master.client().set("k", "from-master").unwrap();
    let replica_state = |up: bool| {
        format!(
            "\"replicas\":[{{\"address\":\"{}\",\"up\":{up}}}",
            replica.addr()
        )
    };
    let (shown_up, shown_down) = (replica_state(true), replica_state(false));
    wait_until("replica up", Duration::from_secs(10), || {
        proxy.http("/topology").1.contains(&shown_up)
    });
    let mut r = Raw::connect(port);
    r.roundtrip(&command(&[b"GET", b"k"]), b"$12\r\nfrom-replica\r\n");
    replica.kill();
    wait_until("replica down", Duration::from_secs(10), || {
        proxy.http("/topology").1.contains(&shown_down)
    });
    r.roundtrip(&command(&[b"GET", b"k"]), b"$11\r\nfrom-master\r\n");
}

#[test]
fn replica_preferred_reads_never_fail_when_the_replica_dies() {
    let (master, mut replica, port, proxy) = master_and_replica(
        "    read_from: replica_preferred\n    health_check: { interval_ms: 200, timeout_ms: 200, failures: 3 }\n",
    );
    let _: () = master.client().set("k", "from-master").unwrap();
    let replica_node = format!(
        "{{\"address\":\"{}\",\"role\":\"replica\",\"state\":\"up\"",
        replica.addr()
    );
    wait_until("replica up", Duration::from_secs(10), || {
        proxy.http("/topology").1.contains(&replica_node)
    });
    let stop = std::sync::atomic::AtomicBool::new(false);
    let reads = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut c = connect(port);
            let mut failures = Vec::new();
            for _ in 0..1_000_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match c.get::<_, String>("k") {
                    Ok(v) => assert!(v == "from-replica" || v == "from-master", "{v}"),
                    Err(e) => failures.push(e.to_string()),
                }
                reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            failures
        });
        let count = || reads.load(std::sync::atomic::Ordering::Relaxed);
        wait_until("reads before", Duration::from_secs(10), || count() > 200);
        replica.kill();
        let killed_at = count();
        // Through the detection window (3 failed checks 200 ms apart) and past it.
        wait_until("replica down", Duration::from_secs(10), || {
            proxy.http("/topology").1.contains(&format!(
                "{{\"address\":\"{}\",\"role\":\"replica\",\"state\":\"down\"",
                replica.addr()
            ))
        });
        wait_until("reads after", Duration::from_secs(10), || {
            count() > killed_at + 500
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let failures = reader.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} of {} reads failed: {:?}",
            failures.len(),
            count(),
            &failures[..failures.len().min(3)]
        );
    });
}

#[test]
fn json_logs_are_one_object_per_line() {
    use std::io::BufRead;
    let redis = Redis::start();
    let port = free_port();
    let dir = TempDir::new("json-logs");
    let config = pool_over(port, &[&redis], &["one"]);
    let path = dir.write("config.yaml", &config);
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_ringproxy"))
        .args(["--config", path.to_str().unwrap(), "--log-format", "json"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut proxy = Process { child };
    let stderr = proxy.child.stderr.take().unwrap();
    let listening = std::io::BufReader::new(stderr)
        .lines()
        .take(20)
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(&line.unwrap())
                .expect("a JSON object per line")
        })
        .find(|entry| {
            entry["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening on"))
        })
        .expect("the listening line");
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["pool"], "main");
}

#[test]
fn metrics_pass_promtool_and_openmetrics_is_served_to_who_asks() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let s = setup("");
    let mut c = s.client();
    let _: () = c.set("k", 1).unwrap();
    let (status, classic) = s.proxy.http("/metrics");
    assert_eq!(status, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test installs Debian's prometheus)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(classic.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The process metrics every exporter has, about the proxy process.
    let rss = metric(&classic, "process_resident_memory_bytes") / 1024;
    let measured = s.proxy.rss_kib();
    assert!(
        rss.abs_diff(measured) < measured / 2,
        "{rss} KiB vs {measured} KiB"
    );
    assert!(metric(&classic, "process_open_fds") > 0);
    assert!(classic.contains("# TYPE process_cpu_seconds_total counter"));
    let accept = "Accept: application/openmetrics-text; version=1.0.0\r\n";
    let (status, openmetrics) = http_request(s.proxy.admin, "GET", "/metrics", accept).unwrap();
    assert_eq!(status, 200);
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
}
