//! Scripts, functions and whole-keyspace commands through ringproxy with real redis-server
//! shards: routing by declared keys, SCRIPT LOAD everywhere, NOSCRIPT recovery, SCAN over every
//! shard, and the commands a pool must allow.

mod common;

use std::collections::HashSet;
use std::io::Read;
use std::time::{Duration, Instant};

use common::*;
use redis::{Commands, Value};

/// Keys that spread over the shards (twemproxy's fnv1a_64 puts similar short keys together).
fn spread_key(prefix: &str, i: u64) -> String {
    format!("{prefix}:{:x}", i.wrapping_mul(2_654_435_761) % (1 << 32))
}

fn error_of(result: redis::RedisResult<Value>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn scripts_run_on_the_shard_of_their_keys() {
    let (shards, port, _proxy) = three_shards("s", "    hash_tag: \"{}\"\n");
    let mut c = connect(port);
    let script = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])";
    // Keys on every shard: each script runs where its key lives.
    for i in 0..30 {
        let key = spread_key("script", i);
        let got: String = redis::cmd("EVAL")
            .arg(script)
            .arg(1)
            .arg(&key)
            .arg(i)
            .query(&mut c)
            .unwrap();
        assert_eq!(got, i.to_string());
    }
    let holders: HashSet<usize> = (0..30)
        .map(|i| {
            shards
                .iter()
                .position(|s| {
                    s.client()
                        .exists::<_, bool>(spread_key("script", i))
                        .unwrap()
                })
                .unwrap()
        })
        .collect();
    assert_eq!(holders.len(), 3, "the keys span every shard");
    // Keys of two shards: refused; with a hash tag: one shard, fine.
    let err = error_of(
        redis::cmd("EVAL")
            .arg("return 1")
            .arg(2)
            .arg(spread_key("script", 0))
            .arg(spread_key("script", 1))
            .query(&mut c),
    );
    assert!(
        err.contains("CROSSSLOT") || err.contains("same shard"),
        "{err}"
    );
    let n: i64 = redis::cmd("EVAL")
        .arg("return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])")
        .arg(2)
        .arg("{tag}a")
        .arg("{tag}b")
        .query(&mut c)
        .unwrap();
    assert_eq!(n, 2);
    for (numkeys, want) in [
        ("x", "not an integer"),
        ("-1", "can't be negative"),
        ("5", "can't be greater than number of args"),
    ] {
        let err = error_of(
            redis::cmd("EVAL")
                .arg("return 1")
                .arg(numkeys)
                .arg("k")
                .query(&mut c),
        );
        assert!(err.contains(want), "{numkeys}: {err}");
    }
    // Read-only scripts and no keys at all.
    let v: i64 = redis::cmd("EVAL_RO")
        .arg("return 7")
        .arg(0)
        .query(&mut c)
        .unwrap();
    assert_eq!(v, 7);
}

#[test]
fn script_load_reaches_every_node_and_a_lost_script_is_loaded_again() {
    let (mut shards, port, _proxy) = three_shards("s", "");
    let mut c = connect(port);
    let body = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(body)
        .query(&mut c)
        .unwrap();
    assert_eq!(sha.len(), 40);
    for s in &shards {
        let exists: Vec<i64> = redis::cmd("SCRIPT")
            .arg("EXISTS")
            .arg(&sha)
            .query(&mut s.client())
            .unwrap();
        assert_eq!(exists, [1]);
    }
    let exists: Vec<i64> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .arg("0".repeat(40))
        .query(&mut c)
        .unwrap();
    assert_eq!(exists, [1, 0]);
    let keys: Vec<String> = (0..30).map(|i| spread_key("sha", i)).collect();
    for k in &keys {
        let n: i64 = redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(k)
            .arg(5)
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 5);
    }
    // Every shard restarts and forgets its scripts: EVALSHA still works.
    for s in &mut shards {
        s.kill();
        s.restart();
    }
    for k in &keys {
        // The first request after a restart may find the proxy's old connection closed.
        let mut n = None;
        wait_until("EVALSHA after the restart", Duration::from_secs(10), || {
            match redis::cmd("EVALSHA")
                .arg(&sha)
                .arg(1)
                .arg(k)
                .arg(3)
                .query::<i64>(&mut c)
            {
                Ok(v) => n = Some(v),
                Err(e) if e.to_string().contains("backend") => {}
                Err(e) => panic!("{e}"),
            }
            n.is_some()
        });
        assert_eq!(n, Some(3), "{k}");
    }
    // A script the proxy never saw loaded: NOSCRIPT, as from one server.
    let err = error_of(
        redis::cmd("EVALSHA")
            .arg("f".repeat(40))
            .arg(1)
            .arg("k")
            .query(&mut c),
    );
    assert!(err.to_uppercase().contains("NOSCRIPT"), "{err}");
    // SCRIPT FLUSH empties every node and the proxy's memory of them.
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query(&mut c).unwrap();
    let err = error_of(
        redis::cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg("k")
            .arg(1)
            .query(&mut c),
    );
    assert!(err.to_uppercase().contains("NOSCRIPT"), "{err}");
    // Nothing runs on any node: SCRIPT KILL is answered as one server answers it.
    let err = error_of(redis::cmd("SCRIPT").arg("KILL").query(&mut c));
    assert!(err.contains("No scripts in execution right now"), "{err}");
}

#[test]
fn functions_load_on_every_master_and_fcall_routes_by_key() {
    let (shards, port, _proxy) = three_shards("s", "");
    let mut c = connect(port);
    let library = "#!lua name=ringlib\nredis.register_function('bump', function(keys, args) return redis.call('INCR', keys[1]) end)\nredis.register_function{function_name='peek', callback=function(keys, args) return redis.call('GET', keys[1]) end, flags={'no-writes'}}";
    let name: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(library)
        .query(&mut c)
        .unwrap();
    assert_eq!(name, "ringlib");
    for s in &shards {
        let list: Value = redis::cmd("FUNCTION")
            .arg("LIST")
            .query(&mut s.client())
            .unwrap();
        assert!(format!("{list:?}").contains("ringlib"));
    }
    for i in 0..20 {
        let key = spread_key("fn", i);
        let n: i64 = redis::cmd("FCALL")
            .arg("bump")
            .arg(1)
            .arg(&key)
            .query(&mut c)
            .unwrap();
        assert_eq!(n, 1);
        let v: String = redis::cmd("FCALL_RO")
            .arg("peek")
            .arg(1)
            .arg(&key)
            .query(&mut c)
            .unwrap();
        assert_eq!(v, "1");
    }
    let list: Value = redis::cmd("FUNCTION").arg("LIST").query(&mut c).unwrap();
    assert!(format!("{list:?}").contains("ringlib"));
    let _: () = redis::cmd("FUNCTION")
        .arg("DELETE")
        .arg("ringlib")
        .query(&mut c)
        .unwrap();
    let err = error_of(
        redis::cmd("FCALL")
            .arg("bump")
            .arg(1)
            .arg(spread_key("fn", 0))
            .query(&mut c),
    );
    assert!(err.contains("Function not found"), "{err}");
    // Errors in the server's own words: a number of keys that is none, a subcommand it does
    // not know; SCRIPT DEBUG, which would make a shared connection a debugging session, is
    // refused.
    let err = error_of(redis::cmd("FCALL").arg("bump").arg("x").query(&mut c));
    assert!(err.contains("Bad number of keys provided"), "{err}");
    let err = error_of(redis::cmd("FUNCTION").arg("NOSUCH").query(&mut c));
    assert!(err.contains("unknown subcommand"), "{err}");
    let err = error_of(redis::cmd("SCRIPT").arg("DEBUG").arg("YES").query(&mut c));
    assert!(err.contains("unsupported command 'SCRIPT DEBUG'"), "{err}");
}

#[test]
fn scan_visits_every_key_of_every_shard_once() {
    let (shards, port, _proxy) = three_shards("s", "");
    let mut c = connect(port);
    let keys: HashSet<String> = (0..2000).map(|i| format!("scan:{i}")).collect();
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.set(k, 1).ignore();
    }
    pipe.set("other", 1)
        .ignore()
        .hset("scan:hash", "f", "v")
        .ignore();
    let _: () = pipe.query(&mut c).unwrap();
    for s in &shards {
        let n: i64 = redis::cmd("DBSIZE").query(&mut s.client()).unwrap();
        assert!(n > 100, "every shard holds keys");
    }
    // MATCH, COUNT and TYPE pass through; the cursor walks every shard.
    let mut seen = Vec::new();
    let mut cursor = "0".to_string();
    let mut calls = 0;
    loop {
        let (next, batch): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("MATCH")
            .arg("scan:*")
            .arg("COUNT")
            .arg(100)
            .arg("TYPE")
            .arg("string")
            .query(&mut c)
            .unwrap();
        seen.extend(batch);
        calls += 1;
        if next == "0" {
            break;
        }
        cursor = next;
    }
    assert!(calls > 3, "{calls} calls");
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique, keys, "every key, and only the matching strings");
    assert_eq!(seen.len(), keys.len(), "no key twice");
    // redis-py-style iteration through the crate's scan helper agrees.
    let all: HashSet<String> = c.scan::<String>().unwrap().map(Result::unwrap).collect();
    assert_eq!(all.len(), keys.len() + 2);
    let err = error_of(redis::cmd("SCAN").arg("x").query(&mut c));
    assert!(err.contains("invalid cursor"), "{err}");
    // DBSIZE sums the shards; RANDOMKEY finds a key.
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 2002);
    let k: String = redis::cmd("RANDOMKEY").query(&mut c).unwrap();
    assert!(keys.contains(&k) || k == "other" || k == "scan:hash", "{k}");
}

#[test]
fn keys_and_flush_need_the_pool_to_allow_them() {
    let (_shards, port, _proxy) = three_shards("s", "");
    let mut c = connect(port);
    let _: () = c.set("k1", 1).unwrap();
    let err = error_of(redis::cmd("KEYS").arg("*").query(&mut c));
    assert!(err.contains("allow_keys: true"), "{err}");
    for cmd in ["FLUSHDB", "FLUSHALL"] {
        let err = error_of(redis::cmd(cmd).query(&mut c));
        assert!(err.contains("allow_flush: true"), "{err}");
    }
    assert_eq!(c.get::<_, i64>("k1").unwrap(), 1, "nothing was flushed");

    let (_shards, port, _proxy) =
        three_shards("s", "    allow_keys: true\n    allow_flush: true\n");
    let mut c = connect(port);
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.set(format!("k:{i}"), i).ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    let mut all: Vec<String> = redis::cmd("KEYS").arg("k:*").query(&mut c).unwrap();
    all.sort();
    let mut want: Vec<String> = (0..100).map(|i| format!("k:{i}")).collect();
    want.sort();
    assert_eq!(all, want);
    let _: () = redis::cmd("FLUSHDB").query(&mut c).unwrap();
    let n: i64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(n, 0);
    let v: Value = redis::cmd("RANDOMKEY").query(&mut c).unwrap();
    assert_eq!(v, Value::Nil);
}

/// Sends `request` and reads until `len` bytes are in.
fn reply_of(port: u16, request: &[u8], len: usize) -> Vec<u8> {
    let mut c = Raw::connect(port);
    c.send(request);
    c.read_n(len)
}

#[test]
fn a_script_reply_nested_as_deep_as_redis_makes_it_is_passed_through() {
    // Redis nests this until Lua's stack runs out: about 8,000 levels, then an error.
    let recursive = b"local a = {} local b = {a} a[1] = b return a";
    let request = command(&[b"EVAL", recursive, b"0"]);
    let redis = Redis::start();
    let mut direct = Raw::connect(redis.port);
    direct.send(&request);
    let mut expected = Vec::new();
    while !expected.ends_with(b"-ERR reached lua stack limit\r\n") {
        expected.extend(direct.read_n(1));
    }
    assert!(expected.len() > 30_000, "{} bytes", expected.len());
    let (_shards, port, _proxy) = three_shards("deep", "");
    assert_eq!(reply_of(port, &request, expected.len()), expected);
    // A pool with a lower cap refuses it, with an error reply, and keeps serving.
    let (_shards, port, _proxy) = three_shards("shallow", "    limits: { max_reply_depth: 100 }\n");
    let mut c = Raw::connect(port);
    c.send(&request);
    let refused = c.read_line();
    assert!(
        refused.contains("nested deeper than 100 levels"),
        "{refused}"
    );
    c.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
}

/// A key of `port`'s pool that lands on `server` (one of its masters), found by writing.
fn key_held_by(port: u16, server: &Redis, prefix: &str) -> String {
    let mut c = connect(port);
    (0..1000)
        .map(|i| spread_key(prefix, i))
        .find(|key| {
            let _: () = c.set(key, 1).unwrap();
            server.client().exists(key).unwrap()
        })
        .expect("a key on the server")
}

/// Loads `spin`, a function that runs until it is killed, on every master.
fn load_spinner(c: &mut redis::Connection) {
    let library = "#!lua name=spinner\nredis.register_function{function_name='spin', callback=function(keys, args) while true do end end, flags={'no-writes'}}";
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(library)
        .query(c)
        .unwrap();
}

/// A script running past its time limit: its shard answers `-BUSY` as one server would and is
/// shown busy, never down, so `failover: promote` keeps its master; the other shards serve
/// throughout; SCRIPT KILL and FUNCTION KILL through the proxy end it, and it serves again.
#[test]
fn a_busy_script_is_killed_through_the_proxy_and_its_master_is_kept() {
    let threshold = ["--busy-reply-threshold", "100"];
    let (master, replica) = (Redis::start_with(&threshold), Redis::start_with(&threshold));
    replica_of(&replica, &master);
    let others = [Redis::start(), Redis::start()];
    let servers = vec![
        format!(
            "{{ name: one, master: \"{}\", replicas: [\"{}\"] }}",
            master.addr(),
            replica.addr()
        ),
        format!("{}:1 two", others[0].addr()),
        format!("{}:1 three", others[1].addr()),
    ];
    let extra = "    failover: promote\n    timeout_ms: 2000\n    health_check: { interval_ms: 100, timeout_ms: 100, failures: 2 }\n";
    let port = free_port();
    let proxy = Proxy::start(&pool_config(port, &servers, extra), port);
    proxy.wait_ready(true);
    let busy_key = key_held_by(port, &master, "busy");
    let free_keys: Vec<String> = others
        .iter()
        .map(|s| key_held_by(port, s, "free"))
        .collect();
    let spin_then_kill = |spin: &[&[u8]], kill: &[u8]| {
        let mut spinning = Raw::connect(port);
        spinning.send(&command(spin));
        wait_until("the shard to be busy", Duration::from_secs(10), || {
            proxy.http("/topology").1.contains("\"state\":\"busy\"")
        });
        // Its keys get the node's -BUSY (on a connection to the node other than the one the
        // script came on: a request behind it there waits, as behind any slow request); the
        // other shards serve as ever, and the master stays master for ten health intervals
        // and more (two failed checks would have replaced it).
        wait_until("a -BUSY reply", Duration::from_secs(10), || {
            let mut asking = Raw::connect(port);
            asking
                .stream
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            asking.send(&command(&[b"GET", busy_key.as_bytes()]));
            let mut first = [0u8; 6];
            match asking.stream.read_exact(&mut first) {
                Ok(()) => {
                    assert_eq!(&first, b"-BUSY ");
                    true
                }
                Err(_) => false,
            }
        });
        let mut c = Raw::connect(port);
        let until = Instant::now() + Duration::from_millis(1500);
        let mut served = 0;
        while Instant::now() < until {
            for key in &free_keys {
                c.roundtrip(&command(&[b"INCR", key.as_bytes()]), b":");
                c.read_line();
                served += 1;
            }
        }
        assert!(served > 10, "{served}");
        let topology = proxy.http("/topology").1;
        assert!(topology.contains("\"state\":\"busy\""), "{topology}");
        assert!(
            topology.contains(&format!("\"master\":{{\"address\":\"{}\"", master.addr())),
            "{topology}"
        );
        c.send(&command(&[kill, b"KILL"]));
        assert_eq!(c.read_line(), "+OK\r\n");
        let killed = spinning.read_line();
        assert!(
            killed.starts_with("-") && killed.contains("killed"),
            "{killed}"
        );
        c.roundtrip(
            &command(&[b"SET", busy_key.as_bytes(), b"again"]),
            b"+OK\r\n",
        );
        c.roundtrip(
            &command(&[kill, b"KILL"]),
            b"-NOTBUSY No scripts in execution right now.\r\n",
        );
        wait_until("the shard to be up", Duration::from_secs(10), || {
            !proxy.http("/topology").1.contains("\"state\":\"busy\"")
        });
    };
    spin_then_kill(
        &[b"EVAL", b"while true do end", b"1", busy_key.as_bytes()],
        b"SCRIPT",
    );
    let mut c = connect(port);
    load_spinner(&mut c);
    spin_then_kill(&[b"FCALL", b"spin", b"1", busy_key.as_bytes()], b"FUNCTION");
    let role: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut replica.client())
        .unwrap();
    assert!(role.contains("role:slave"), "the replica was promoted");
}

/// With `kill_busy_scripts_after_ms`, a script past its time limit is killed by the proxy
/// itself, as Sentinel kills one, and the node serves again.
#[test]
fn a_pool_may_kill_busy_scripts_itself() {
    let node = Redis::start_with(&["--busy-reply-threshold", "100"]);
    let port = free_port();
    let extra = "    kill_busy_scripts_after_ms: 300\n    health_check: { interval_ms: 100, timeout_ms: 100 }\n";
    let proxy = Proxy::start(
        &pool_config(port, &[format!("{}:1", node.addr())], extra),
        port,
    );
    proxy.wait_ready(true);
    let mut spinning = Raw::connect(port);
    let started = Instant::now();
    spinning.send(&command(&[b"EVAL", b"while true do end", b"0"]));
    let killed = spinning.read_line();
    assert!(
        killed.starts_with("-") && killed.contains("killed"),
        "{killed}"
    );
    // Busy after 100 ms, killed once seen busy for 300 ms more.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let mut c = connect(port);
    let _: () = c.set("after", 1).unwrap();
    wait_until("the log", Duration::from_secs(10), || {
        proxy.log().contains("SCRIPT KILL answered +OK")
    });
    // A function, which SCRIPT KILL does not kill: FUNCTION KILL does.
    load_spinner(&mut c);
    spinning.send(&command(&[b"FCALL", b"spin", b"0"]));
    let killed = spinning.read_line();
    assert!(
        killed.starts_with("-") && killed.contains("killed"),
        "{killed}"
    );
    let _: () = c.set("after", 2).unwrap();
}

/// RANDOMKEY comes from a shard picked at random: keys on different shards all come up.
#[test]
fn randomkey_reaches_the_keys_of_every_shard() {
    let (shards, port, _proxy) = three_shards("r", "");
    let keys: Vec<String> = shards
        .iter()
        .map(|s| key_held_by(port, s, "random"))
        .collect();
    let mut c = connect(port);
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let key: String = redis::cmd("RANDOMKEY").query(&mut c).unwrap();
        seen.insert(key);
    }
    for key in &keys {
        assert!(seen.contains(key), "{key} never came up: {seen:?}");
    }
}
