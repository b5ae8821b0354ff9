//! Differential checks: the same sequences of commands sent to one redis-server and to
//! ringproxy over three shards give the same replies (keys of one transaction share a hash tag,
//! as they must through any sharding proxy).

mod common;

use std::time::Duration;

use common::*;
use redis::Value;

/// A reply as a comparable string: the value, or the error's whole text.
fn reply(conn: &mut redis::Connection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query::<Value>(conn) {
        Ok(v) => format!("{v:?}"),
        Err(e) => format!(
            "error: {} {}",
            e.code().unwrap_or("?"),
            e.detail().unwrap_or("")
        ),
    }
}

/// Commands, each as its arguments.
type Steps<'a> = &'a [&'a [&'a str]];

/// A sequence of commands, and maybe a command another client sends before step `at`.
type Sequence<'a> = (Steps<'a>, Option<(usize, &'a [&'a str])>);

/// Runs each sequence on a fresh connection to the server and to the proxy; `between` runs
/// on another connection of the same side before step `at` (a concurrent client).
fn same_replies(sequences: &[Sequence<'_>]) {
    let server = Redis::start();
    let (_shards, port, _proxy) = three_shards(
        "compat",
        "    allow_flush: true\n    hash_tag: \"{}\"\n    databases: 16\n",
    );
    for (steps, between) in sequences {
        let run = |conn: &mut redis::Connection, other: &mut redis::Connection| -> Vec<String> {
            let _: () = redis::cmd("FLUSHALL").query(other).unwrap();
            steps
                .iter()
                .enumerate()
                .map(|(n, args)| {
                    if let Some((at, other_args)) = between
                        && *at == n
                    {
                        reply(other, other_args);
                    }
                    format!("{} -> {}", args.join(" "), reply(conn, args))
                })
                .collect()
        };
        let expected = run(&mut server.client(), &mut server.client());
        let got = run(&mut connect(port), &mut connect(port));
        assert_eq!(got, expected);
    }
}

#[test]
fn transactions_in_every_order_answer_as_redis_does() {
    let k = "{t}k";
    // MULTI or WATCH inside MULTI, answered as Redis 7 does; Valkey 8 also aborts the
    // transaction (docs/commands.md).
    let nested: Steps<'_> = &[
        &["MULTI"],
        &["SET", k, "1"],
        &["MULTI"],
        &["INCR", k],
        &["EXEC"],
        &["GET", k],
    ];
    let watch_inside: Steps<'_> = &[
        &["MULTI"],
        &["SET", k, "1"],
        &["WATCH", k],
        &["EXEC"],
        &["GET", k],
    ];
    if Program::default_server() == Program::Redis {
        same_replies(&[(nested, None), (watch_inside, None)]);
    }
    let sequences: &[Sequence<'_>] = &[
        (&[&["EXEC"], &["DISCARD"], &["UNWATCH"]], None),
        (&[&["MULTI"], &["EXEC"]], None),
        (
            &[
                &["MULTI"],
                &["SET", k, "1"],
                &["NOSUCHCOMMAND"],
                &["EXEC"],
                &["GET", k],
                &["EXEC"],
            ],
            None,
        ),
        (
            &[
                &["MULTI"],
                &["SET", k, "1"],
                &["GET"],
                &["EXEC"],
                &["SET", k, "2"],
                &["GET", k],
            ],
            None,
        ),
        (
            &[
                &["MULTI"],
                &["GET"],
                &["DISCARD"],
                &["EXEC"],
                &["SET", k, "3"],
            ],
            None,
        ),
        (
            &[
                &["MULTI"],
                &["SET", k, "1"],
                &["DISCARD"],
                &["GET", k],
                &["EXEC"],
            ],
            None,
        ),
        (
            &[
                &["SET", k, "a"],
                &["MULTI"],
                &["INCR", k],
                &["SET", k, "b"],
                &["EXEC"],
                &["GET", k],
            ],
            None,
        ),
        (
            &[
                &["WATCH", k],
                &["MULTI"],
                &["SET", k, "mine"],
                &["EXEC"],
                &["GET", k],
            ],
            Some((1, &["SET", k, "theirs"])),
        ),
        (
            &[
                &["WATCH", k],
                &["UNWATCH"],
                &["MULTI"],
                &["SET", k, "mine"],
                &["EXEC"],
                &["GET", k],
            ],
            Some((2, &["SET", k, "theirs"])),
        ),
        (
            &[
                &["WATCH", k],
                &["MULTI"],
                &["SET", k, "1"],
                &["DISCARD"],
                &["MULTI"],
                &["SET", k, "2"],
                &["EXEC"],
            ],
            Some((4, &["SET", k, "theirs"])),
        ),
        (&[&["MULTI"], &["PING"], &["ECHO", "x"], &["EXEC"]], None),
        (
            &[
                &["MULTI"],
                &["EXEC"],
                &["EXEC"],
                &["MULTI"],
                &["DISCARD"],
                &["DISCARD"],
            ],
            None,
        ),
    ];
    same_replies(sequences);
}

#[test]
fn connection_commands_answer_as_redis_does() {
    let long = "x".repeat(200);
    let sequences: &[Sequence<'_>] = &[
        (
            &[
                &["NOSUCH"],
                &["NOSUCH", "a", "b c"],
                &["NOSUCH", &long, "more"],
            ],
            None,
        ),
        (
            &[&["PING"], &["PING", "hi"], &["ECHO", "x"], &["SELECT", "0"]],
            None,
        ),
        (
            &[
                &["MULTI"],
                &["SET", "{t}k", "1"],
                &["RESET"],
                &["EXEC"],
                &["GET", "{t}k"],
            ],
            None,
        ),
        (
            &[
                &["WATCH", "{t}k"],
                &["RESET"],
                &["MULTI"],
                &["SET", "{t}k", "mine"],
                &["EXEC"],
            ],
            Some((2, &["SET", "{t}k", "theirs"])),
        ),
        (
            &[
                &["CLIENT", "SETNAME", "x"],
                &["RESET"],
                &["CLIENT", "GETNAME"],
                &["RESET", "now"],
            ],
            None,
        ),
        (
            &[
                &["COMMAND", "INFO", "get", "set", "nosuch"],
                &["COMMAND", "INFO", "blpop", "eval", "mget", "mset"],
                &["COMMAND", "DOCS", "get", "nosuch"],
                &["COMMAND", "DOCS", "nosuch"],
                &["COMMAND", "GETKEYS", "SET", "k", "v"],
                &["COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2"],
                &["COMMAND", "GETKEYS", "EVAL", "return 1", "2", "x", "y", "z"],
                &["COMMAND", "GETKEYS", "PING"],
                &["COMMAND", "LIST", "FILTERBY", "PATTERN", "get"],
                &["COMMAND", "LIST", "FILTERBY", "ACLCAT", "nosuch"],
                &["COMMAND", "LIST", "FILTERBY", "MODULE", "nosuch"],
                &["COMMAND", "LIST", "bad_arg"],
                &["COMMAND", "GETKEYS", "GET"],
                &[
                    "COMMAND",
                    "GETKEYSANDFLAGS",
                    "LMOVE",
                    "a",
                    "b",
                    "LEFT",
                    "RIGHT",
                ],
            ],
            None,
        ),
    ];
    same_replies(sequences);
}

#[test]
fn select_keeps_each_database_apart_as_redis_does() {
    let sequences: &[Sequence<'_>] = &[
        (
            &[
                &["SELECT", "15"],
                &["SELECT", "16"],
                &["SELECT", "-1"],
                &["SELECT", "x"],
                &["SELECT", "0"],
            ],
            None,
        ),
        (
            &[
                &["SET", "{d}k", "zero"],
                &["SELECT", "3"],
                &["GET", "{d}k"],
                &["SET", "{d}k", "three"],
                &["MSET", "{a}x", "1", "{b}y", "2", "{c}z", "3"],
                &["MGET", "{a}x", "{b}y", "{c}z", "{d}k"],
                &["DBSIZE"],
                &["SELECT", "0"],
                &["GET", "{d}k"],
                &["MGET", "{a}x", "{b}y"],
                &["DBSIZE"],
                &["SELECT", "3"],
                &["GET", "{d}k"],
                &["RESET"],
                &["GET", "{d}k"],
            ],
            None,
        ),
        (
            &[
                &["SELECT", "5"],
                &["MULTI"],
                &["INCR", "{t}n"],
                &["INCR", "{t}n"],
                &["EXEC"],
                &["EVAL", "return redis.call('GET', KEYS[1])", "1", "{t}n"],
                &["SELECT", "0"],
                &["GET", "{t}n"],
            ],
            None,
        ),
        // A write to the same name in another database does not touch a watched key.
        (
            &[
                &["SELECT", "2"],
                &["WATCH", "{t}w"],
                &["MULTI"],
                &["SET", "{t}w", "mine"],
                &["EXEC"],
                &["GET", "{t}w"],
            ],
            Some((2, &["SET", "{t}w", "theirs in 0"])),
        ),
    ];
    same_replies(sequences);
}

/// What differs from one server: SELECT is refused while keys are watched in the current
/// database (the watching connection stays in it). Blocking commands wait in the client's
/// database.
#[test]
fn select_with_blocking_pops_and_watch() {
    let (_shards, port, _proxy) = three_shards("sel", "    databases: 4\n");
    let mut waiter = Raw::connect(port);
    waiter.roundtrip(&command(&[b"SELECT", b"2"]), b"+OK\r\n");
    waiter.send(&command(&[b"BLPOP", b"q", b"10"]));
    let mut pusher = connect(port);
    wait_until("the pop waits", Duration::from_secs(10), || {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(&mut pusher)
            .unwrap();
        info.contains("blocked_clients:1\r\n")
    });
    let _: i64 = redis::cmd("RPUSH")
        .arg("q")
        .arg("in 0")
        .query(&mut pusher)
        .unwrap();
    let _: () = redis::cmd("SELECT").arg(2).query(&mut pusher).unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg("q")
        .arg("in 2")
        .query(&mut pusher)
        .unwrap();
    assert_eq!(
        waiter.read_n(b"*2\r\n$1\r\nq\r\n$4\r\nin 2\r\n".len()),
        b"*2\r\n$1\r\nq\r\n$4\r\nin 2\r\n"
    );
    let _: () = redis::cmd("SELECT").arg(0).query(&mut pusher).unwrap();
    let left: Vec<String> = redis::cmd("LRANGE")
        .arg("q")
        .arg(0)
        .arg(-1)
        .query(&mut pusher)
        .unwrap();
    assert_eq!(left, ["in 0"]);
    waiter.roundtrip(&command(&[b"WATCH", b"q"]), b"+OK\r\n");
    waiter.roundtrip(
        &command(&[b"SELECT", b"1"]),
        b"-ERR SELECT of another database while keys are watched: UNWATCH first\r\n",
    );
    waiter.roundtrip(&command(&[b"SELECT", b"2"]), b"+OK\r\n");
    waiter.roundtrip(&command(&[b"UNWATCH"]), b"+OK\r\n");
    waiter.roundtrip(&command(&[b"SELECT", b"1"]), b"+OK\r\n");
}

#[test]
fn hello_and_time_speak_for_the_backends() {
    let server = Redis::start();
    let (_shards, port, proxy) = three_shards("hello", "");
    proxy.wait_ready(true);
    let hello = |conn: &mut redis::Connection| -> Vec<(String, Value)> {
        redis::cmd("HELLO").arg(2).query(conn).unwrap()
    };
    let field = |pairs: &[(String, Value)], name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| format!("{v:?}"))
    };
    let (direct, proxied) = (hello(&mut server.client()), hello(&mut connect(port)));
    assert_eq!(field(&proxied, "version"), field(&direct, "version"));
    assert_eq!(field(&proxied, "server"), field(&direct, "server"));
    // TIME: two bulk strings, seconds and microseconds, the clock of the same machine.
    let time =
        |conn: &mut redis::Connection| -> (u64, u64) { redis::cmd("TIME").query(conn).unwrap() };
    let ((s1, _), (s2, us)) = (time(&mut server.client()), time(&mut connect(port)));
    assert!(s2.abs_diff(s1) <= 2 && us < 1_000_000, "{s1} {s2} {us}");
}

#[test]
fn sort_with_patterns_of_the_key_hash_tag_answers_as_redis_does() {
    let data: &[&[&str]] = &[
        &["RPUSH", "{u}list", "3", "1", "2"],
        &["MSET", "{u}w_1", "30", "{u}w_2", "10", "{u}w_3", "20"],
        &["HSET", "{u}o_1", "name", "one"],
        &["HSET", "{u}o_2", "name", "two"],
        &["MSET", "{u}n_1", "uno", "{u}n_3", "tres"],
    ];
    let sorts: &[&[&str]] = &[
        &[
            "SORT", "{u}list", "BY", "{u}w_*", "GET", "#", "GET", "{u}n_*",
        ],
        &[
            "SORT",
            "{u}list",
            "BY",
            "{u}w_*",
            "DESC",
            "GET",
            "{u}o_*->name",
        ],
        &["SORT_RO", "{u}list", "BY", "nosort", "GET", "{u}n_*"],
        &["SORT", "{u}list", "LIMIT", "0", "2", "STORE", "{u}out"],
        &["LRANGE", "{u}out", "0", "-1"],
    ];
    let steps: Vec<&[&str]> = data.iter().chain(sorts).copied().collect();
    same_replies(&[(&steps, None)]);
    // A pattern naming keys of other shards is refused, not answered with missing values.
    let (_shards, port, _proxy) = three_shards("sort", "    hash_tag: \"{}\"\n");
    let mut c = connect(port);
    let refused = reply(&mut c, &["SORT", "{u}list", "BY", "w_*"]);
    assert!(
        refused.contains("must carry the key's hash tag"),
        "{refused}"
    );
}

#[test]
fn config_get_answers_from_the_masters_and_set_reaches_every_node_when_allowed() {
    let server = Redis::start();
    let (shards, port, _proxy) = three_shards("config", "    allow_config: true\n");
    let mut c = connect(port);
    let get = ["CONFIG", "GET", "maxmemory-policy"];
    assert_eq!(reply(&mut c, &get), reply(&mut server.client(), &get));
    // As frameworks such as Spring Session do at start-up.
    let set = ["CONFIG", "SET", "notify-keyspace-events", "KEA"];
    assert_eq!(reply(&mut c, &set), reply(&mut server.client(), &set));
    for shard in &shards {
        let got: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("notify-keyspace-events")
            .query(&mut shard.client())
            .unwrap();
        assert_eq!(
            got[1].chars().collect::<std::collections::BTreeSet<_>>(),
            "AKE".chars().collect()
        );
    }
    let wrong = ["CONFIG", "SET", "no-such-parameter", "1"];
    assert_eq!(reply(&mut c, &wrong), reply(&mut server.client(), &wrong));
    assert_eq!(reply(&mut c, &["CONFIG", "RESETSTAT"]), "ok");
    // A password (or a port, or TLS) set on every node would lock the proxy out: refused.
    let locked = reply(
        &mut c,
        &[
            "CONFIG",
            "SET",
            "maxmemory-policy",
            "allkeys-lru",
            "requirepass",
            "x",
        ],
    );
    assert!(
        locked.contains("CONFIG SET requirepass would cut the proxy off"),
        "{locked}"
    );
    for shard in &shards {
        let pong: String = redis::cmd("PING").query(&mut shard.client()).unwrap();
        assert_eq!(pong, "PONG");
    }
    let rewrite = reply(&mut c, &["CONFIG", "REWRITE"]);
    assert!(
        rewrite.contains("unsupported command 'CONFIG REWRITE'"),
        "{rewrite}"
    );
    // A subcommand no server knows: refused in the server's words.
    let unknown = reply(&mut c, &["CONFIG", "GET_XX"]);
    assert!(unknown.contains("unknown subcommand"), "{unknown}");

    // Without allow_config, reading is allowed and changing is refused with the reason.
    let (_shards, port, _proxy) = three_shards("config-off", "");
    let mut c = connect(port);
    assert_eq!(reply(&mut c, &get), reply(&mut server.client(), &get));
    let refused = reply(&mut c, &set);
    assert!(
        refused.contains("the pool needs allow_config: true"),
        "{refused}"
    );
}

#[test]
fn info_has_the_sections_and_fields_of_one_redis_server() {
    let server = Redis::start();
    let (_shards, port, proxy) = three_shards("info", "");
    let titles = |info: &str| -> Vec<String> {
        info.lines()
            .filter_map(|l| l.strip_prefix("# "))
            .map(str::to_string)
            .collect()
    };
    let direct: String = redis::cmd("INFO").query(&mut server.client()).unwrap();
    let proxied: String = redis::cmd("INFO").query(&mut connect(port)).unwrap();
    let mut expected = titles(&direct);
    expected.push("Proxy".to_string());
    assert_eq!(titles(&proxied), expected, "{proxied}");
    // What client libraries and monitoring tools read.
    for field in [
        "redis_version:7.",
        "redis_mode:standalone",
        "arch_bits:64",
        "os:",
        "run_id:",
        "connected_clients:1",
        "blocked_clients:0",
        "used_memory:",
        "used_memory_human:",
        "maxmemory_policy:",
        "rdb_changes_since_last_save:",
        "total_commands_processed:",
        "keyspace_hits:",
        "role:master",
        "used_cpu_user:",
        "cluster_enabled:0",
    ] {
        assert!(
            proxied.contains(&format!("\r\n{field}")),
            "{field} in {proxied}"
        );
    }
    // Through a RESP3 connection too (its backends answer in verbatim strings).
    let mut resp3 = open(&format!("redis://127.0.0.1:{port}/?protocol=resp3"));
    let server_section: String = redis::cmd("INFO").arg("server").query(&mut resp3).unwrap();
    assert!(
        server_section.contains("\r\narch_bits:64\r\n"),
        "{server_section}"
    );
    // Sections named one by one, in any case, and `everything`.
    let some: String = redis::cmd("INFO")
        .arg("CPU")
        .arg("cluster")
        .query(&mut connect(port))
        .unwrap();
    assert_eq!(titles(&some), ["CPU", "Cluster"]);
    let stats: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut connect(port))
        .unwrap();
    assert!(stats.contains("\r\nkeyspace_hits:"), "{stats}");
    let mut c = connect(port);
    let all: String = redis::cmd("INFO").arg("everything").query(&mut c).unwrap();
    let direct: String = redis::cmd("INFO")
        .arg("everything")
        .query(&mut server.client())
        .unwrap();
    let mut expected = titles(&direct);
    expected.push("Proxy".to_string());
    assert_eq!(titles(&all), expected);
    // Command counts are the pool's: a GET on each shard counts three calls.
    for n in 0..3 {
        let _: Option<String> = redis::cmd("GET")
            .arg(proxy.key_on(n, "cs:"))
            .query(&mut c)
            .unwrap();
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    assert!(stats.contains("\r\ncmdstat_get:calls=3,"), "{stats}");
}

#[test]
fn redis_cli_memkeys_and_stat_read_real_figures() {
    let (_shards, port, _proxy) = three_shards("memkeys", "");
    let mut c = connect(port);
    for n in 0..30 {
        let _: () = redis::cmd("SET")
            .arg(format!("mk:{n}"))
            .arg("v")
            .query(&mut c)
            .unwrap();
    }
    // --memkeys: SCAN, TYPE and MEMORY USAGE of every key.
    let out = bounded("redis-cli")
        .args(["-p", &port.to_string(), "--memkeys"])
        .output()
        .expect("redis-cli (scripts/test installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(" strings with "))
        .unwrap_or_default();
    let bytes: u64 = line
        .split(' ')
        .nth(3)
        .and_then(|b| b.parse().ok())
        .unwrap_or(0);
    assert!(line.starts_with("30 strings with ") && bytes > 0, "{text}");
    // MEMORY's other subcommands are one server's.
    let stats = reply(&mut c, &["MEMORY", "STATS"]);
    assert!(
        stats.contains("unsupported command 'MEMORY STATS'"),
        "{stats}"
    );
    // --stat reads these INFO fields; the proxy once answered without them.
    let info: String = redis::cmd("INFO").query(&mut c).unwrap();
    for field in [
        "db0:keys=30,",
        "used_memory_human:",
        "connected_clients:",
        "blocked_clients:",
        "total_commands_processed:",
        "total_connections_received:",
    ] {
        assert!(info.contains(field), "{field} in {info}");
    }
}

/// Sends `script` on a new connection to `port`, then PING, and returns every byte up to the
/// PING's reply.
fn raw_exchange(port: u16, script: &[&[&[u8]]]) -> Vec<u8> {
    let mut c = Raw::connect(port);
    for args in script {
        c.send(&command(args));
    }
    c.send(&command(&[b"PING"]));
    let mut got = Vec::new();
    while !got.ends_with(b"+PONG\r\n") {
        got.extend(c.read_n(1));
    }
    got
}

#[test]
fn client_reply_off_skip_and_on_answer_as_redis_does() {
    let server = Redis::start();
    let (_shards, port, _proxy) = three_shards("reply", "");
    let script: &[&[&[u8]]] = &[
        &[b"CLIENT", b"REPLY", b"OFF"],
        &[b"SET", b"a", b"1"],
        &[b"GET", b"a"],
        &[b"NOSUCH"],
        &[b"CLIENT", b"REPLY", b"ON"],
        &[b"GET", b"a"],
        &[b"CLIENT", b"REPLY", b"SKIP"],
        &[b"MGET", b"a", b"b", b"c"],
        &[b"GET", b"a"],
        &[b"CLIENT", b"REPLY", b"SKIP"],
        &[b"CLIENT", b"REPLY", b"SKIP"],
        &[b"GET", b"a"],
        &[b"GET", b"a"],
    ];
    let expected = raw_exchange(server.port, script);
    assert_eq!(
        String::from_utf8_lossy(&raw_exchange(port, script)),
        String::from_utf8_lossy(&expected)
    );
    // Subscription confirmations (and messages) are pushes: sent whatever CLIENT REPLY says.
    // RESET turns replies on again.
    let subscriber: &[&[&[u8]]] = &[
        &[b"CLIENT", b"REPLY", b"OFF"],
        &[b"SUBSCRIBE", b"news"],
        &[b"RESET"],
    ];
    assert_eq!(
        raw_exchange(port, subscriber),
        raw_exchange(server.port, subscriber)
    );
}
