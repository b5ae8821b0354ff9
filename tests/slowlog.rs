//! SLOWLOG, the latency histograms and requests by class: what an operator looks at when requests are slow,
//! against a real redis-server made slow with CLIENT PAUSE.

mod common;

use common::*;
use redis::Commands;

#[test]
fn slow_requests_are_in_slowlog_with_their_client_shard_and_backend_time() {
    let redis = Redis::start();
    let extra = "    slowlog_slower_than_us: 100000\n    slowlog_max_len: 2\n";
    let (port, proxy) = pool_over_one(&redis, extra);
    let mut c = connect(port);
    let _: () = redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg("checkout")
        .query(&mut c)
        .unwrap();
    let _: () = c.set("fast", 1).unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(300)
        .query(&mut redis.client())
        .unwrap();
    let _: Option<String> = c.get("slowkey").unwrap();
    let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut c).unwrap();
    assert_eq!(len, 1, "only the paused GET was slow");
    // As redis-cli shows it: Redis's six fields, then the shard and the backend's time.
    let out = bounded("redis-cli")
        .args(["-p", &port.to_string(), "SLOWLOG", "GET"])
        .output()
        .expect("redis-cli (scripts/test installs it)");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 9, "{lines:?}");
    assert_eq!(lines[0], "0", "the entry's id");
    let took: u64 = lines[2].parse().unwrap();
    assert!((200_000..5_000_000).contains(&took), "{took} µs");
    assert_eq!(lines[3..5], ["GET", "slowkey"]);
    assert!(
        lines[5].starts_with("127.0.0.1:"),
        "the client's address: {}",
        lines[5]
    );
    assert_eq!(lines[6], "checkout", "the client's name");
    assert_eq!(lines[7], "one", "the shard");
    let backend: u64 = lines[8].parse().unwrap();
    assert!(
        backend >= 200_000 && backend <= took,
        "{backend} µs of {took}"
    );
    // At most slowlog_max_len entries, newest first; GET's count; RESET.
    for key in ["second", "third"] {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(150)
            .query(&mut redis.client())
            .unwrap();
        let _: Option<String> = c.get(key).unwrap();
    }
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(&mut c)
        .unwrap();
    assert_eq!(entries.len(), 2);
    let newest: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1)
        .query(&mut c)
        .unwrap();
    assert_eq!(newest.len(), 1);
    let redis::Value::Array(fields) = &newest[0] else {
        panic!("{newest:?}")
    };
    assert_eq!(fields[0], redis::Value::Int(2));
    let bad: redis::RedisResult<()> = redis::cmd("SLOWLOG").arg("GET").arg(-2).query(&mut c);
    assert_eq!(
        bad.unwrap_err().detail(),
        Some("count should be greater than or equal to -1")
    );
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut c).unwrap();
    let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut c).unwrap();
    assert_eq!(len, 0);
    // The latency histograms saw the slow requests: client-observed and on the backend.
    let metrics = proxy.http("/metrics").1;
    let client = |suffix: &str| {
        metric(
            &metrics,
            &format!("ringproxy_request_duration_seconds_{suffix}"),
        )
    };
    assert!(client("count{pool=\"main\"}") >= 8, "{metrics}");
    assert_eq!(
        client("bucket{le=\"0.1\",pool=\"main\"}") + 3,
        client("count{pool=\"main\"}"),
        "three requests took more than 100 ms"
    );
    let backend = "ringproxy_server_request_duration_seconds_count";
    let backend = proxy.master_metric(backend, "one", &redis);
    assert!(backend >= 4, "{metrics}");
    // Requests by class of command.
    let class = |c: &str| {
        metric(
            &metrics,
            &format!("ringproxy_client_commands_total{{pool=\"main\",class=\"{c}\"}}"),
        )
    };
    assert_eq!((class("read"), class("write")), (3, 1));
    assert!(class("connection") >= 6, "CLIENT SETNAME and the SLOWLOGs");
}

/// CONFIG SET of the slow log's settings, passed on to the servers, sets the proxy's own log
/// too (clients' test suites set `slowlog-log-slower-than 0` and read SLOWLOG GET).
#[test]
fn config_set_of_slowlog_settings_reaches_the_proxys_own_log() {
    let redis = Redis::start();
    let (port, _proxy) = pool_over_one(&redis, "    allow_config: true\n");
    let mut c = connect(port);
    let _: Option<String> = c.get("before").unwrap();
    let len: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut c).unwrap();
    assert_eq!(len, 0, "10 ms by default: nothing is that slow here");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(0)
        .arg("slowlog-max-len")
        .arg(2)
        .query(&mut c)
        .unwrap();
    for key in ["a", "b", "c"] {
        let _: Option<String> = c.get(key).unwrap();
    }
    let entries: Vec<redis::Value> = redis::cmd("SLOWLOG").arg("GET").query(&mut c).unwrap();
    assert_eq!(entries.len(), 2);
    let server: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("slowlog-max-len")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(server[1], "2", "the server took the setting too");
}

#[test]
fn no_password_reaches_slowlog_and_client_list_shows_each_users_name() {
    let redis = Redis::start();
    let extra = "    slowlog_slower_than_us: 0\n    slowlog_max_len: 100\n    allow_config: true\n    users:\n      - { name: app, password: app-secret-123 }\n      - { name: ops, password: ops-secret-456 }\n";
    let (port, _proxy) = pool_over_one(&redis, extra);
    let mut ops = connect_as(port, "ops", "ops-secret-456");
    let _: redis::Value = redis::cmd("HELLO")
        .arg(2)
        .arg("AUTH")
        .arg("ops")
        .arg("ops-secret-456")
        .query(&mut ops)
        .unwrap();
    let mut app = connect_as(port, "app", "app-secret-123");
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("masterauth")
        .arg("replica-secret-789")
        .query(&mut app)
        .unwrap();
    let entries: redis::Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(-1)
        .query(&mut app)
        .unwrap();
    let shown = format!("{entries:?}");
    for secret in ["ops-secret-456", "app-secret-123", "replica-secret-789"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("(redacted)"), "{shown}");
    assert!(shown.contains("HELLO"), "{shown}");

    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut app).unwrap();
    let users: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("user=")))
        .collect();
    let mut sorted = users.clone();
    sorted.sort();
    assert_eq!(sorted, ["app", "ops"], "{list}");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("ops")
        .query(&mut app)
        .unwrap();
    assert_eq!(killed, 1);
    assert!(redis::cmd("PING").query::<String>(&mut ops).is_err());
}

/// A connection that has authenticated as `user`.
fn connect_as(port: u16, user: &str, password: &str) -> redis::Connection {
    open(&format!("redis://{user}:{password}@127.0.0.1:{port}"))
}
