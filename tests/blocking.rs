//! Blocking commands through ringproxy with real redis-server shards: each waits on a backend
//! connection reserved for its client, wakes when data comes, honours its own timeout, and lets
//! go of the connection when its client leaves.

mod common;

use std::time::{Duration, Instant};

use common::*;
use redis::{Commands, Value};

fn blocked_clients(shards: &[Redis]) -> i64 {
    shards
        .iter()
        .map(|s| info_field(s, "clients", "blocked_clients"))
        .sum()
}

#[test]
fn blpop_wakes_when_data_comes_and_others_are_not_held_up() {
    let (shards, port, _proxy) = three_shards("s", "");
    let waiter = std::thread::spawn(move || {
        let mut c = connect(port);
        let got: (String, String) = redis::cmd("BLPOP")
            .arg("queue")
            .arg(10)
            .query(&mut c)
            .unwrap();
        got
    });
    wait_until("BLPOP blocked", Duration::from_secs(10), || {
        blocked_clients(&shards) == 1
    });
    // Meanwhile every other client is served at once, on every shard.
    let mut other = connect(port);
    let started = Instant::now();
    for i in 0..200 {
        let _: () = other.set(format!("other:{i}"), i).unwrap();
        assert_eq!(other.get::<_, i64>(format!("other:{i}")).unwrap(), i);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let _: () = other.rpush("queue", "job-1").unwrap();
    assert_eq!(
        waiter.join().unwrap(),
        ("queue".to_string(), "job-1".to_string())
    );
    // Pipelined after a blocking command, replies stay in order.
    let mut p = redis::pipe();
    p.rpush("q2", "a").blpop("q2", 1.0).get("other:5");
    let (n, popped, v): (i64, (String, String), i64) = p.query(&mut other).unwrap();
    assert_eq!((n, popped.1.as_str(), v), (1, "a", 5));
}

#[test]
fn the_clients_timeout_is_honoured_not_the_pools() {
    let (_shards, port, _proxy) = three_shards("s", "    timeout_ms: 300\n");
    let mut c = connect(port);
    // Shorter than the pool's timeout: nil when it passes.
    let started = Instant::now();
    let v: Value = redis::cmd("BLPOP")
        .arg("empty")
        .arg(0.1)
        .query(&mut c)
        .unwrap();
    assert_eq!(v, Value::Nil);
    assert!(started.elapsed() >= Duration::from_millis(100));
    // Longer than the pool's timeout: still nil, not a timeout error.
    let started = Instant::now();
    let v: Value = redis::cmd("BZPOPMIN")
        .arg("empty-z")
        .arg(0.8)
        .query(&mut c)
        .unwrap();
    assert_eq!(v, Value::Nil);
    assert!(started.elapsed() >= Duration::from_millis(800));
    // XREAD BLOCK counts milliseconds.
    let started = Instant::now();
    let v: Value = redis::cmd("XREAD")
        .arg("BLOCK")
        .arg(700)
        .arg("STREAMS")
        .arg("st")
        .arg("$")
        .query(&mut c)
        .unwrap();
    assert_eq!(v, Value::Nil);
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[test]
fn a_client_that_leaves_while_blocked_frees_the_backend_connection() {
    let (shards, port, proxy) = three_shards("s", "");
    let mut raw = Raw::connect(port);
    raw.send(&command(&[b"BLPOP", b"never", b"0"]));
    wait_until("BLPOP blocked", Duration::from_secs(10), || {
        blocked_clients(&shards) == 1
    });
    drop(raw);
    wait_until("backend unblocked", Duration::from_secs(10), || {
        blocked_clients(&shards) == 0
    });
    // The proxy goes on serving.
    let mut c = connect(port);
    let _: () = c.rpush("never", "x").unwrap();
    assert_eq!(c.lpop::<_, String>("never", None).unwrap(), "x");
    assert_eq!(proxy.http("/ready").0, 200);
}

#[test]
fn reserved_connections_are_reused_not_opened_per_command() {
    let (shards, port, proxy) = three_shards("s", "");
    // Health checks have opened their connections.
    proxy.wait_ready(true);
    let mut c = connect(port);
    // Every connection the loop needs is open before counting.
    let _: () = c.rpush("ready-queue", "warm").unwrap();
    let _: Value = redis::cmd("BRPOP")
        .arg("ready-queue")
        .arg(1)
        .query(&mut c)
        .unwrap();
    // Asking opens a connection to each shard, counted in each answer.
    let asking = shards.len() as i64;
    let before: i64 = shards
        .iter()
        .map(|s| info_field(s, "stats", "total_connections_received"))
        .sum();
    for i in 0..100 {
        let _: () = c.rpush("ready-queue", i).unwrap();
        let (_, v): (String, i64) = redis::cmd("BRPOP")
            .arg("ready-queue")
            .arg(1)
            .query(&mut c)
            .unwrap();
        assert_eq!(v, i);
    }
    let after: i64 = shards
        .iter()
        .map(|s| info_field(s, "stats", "total_connections_received"))
        .sum();
    assert_eq!(
        after - before - asking,
        0,
        "new backend connections for 100 blocking commands"
    );
}

#[test]
fn many_blocked_clients_all_wake() {
    let (shards, port, proxy) = three_shards("s", "");
    let waiters: Vec<_> = (0..40)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = connect(port);
                let key = format!("wake:{i}");
                let got: (String, String) =
                    redis::cmd("BRPOP").arg(&key).arg(20).query(&mut c).unwrap();
                assert_eq!(got, (key, i.to_string()));
            })
        })
        .collect();
    wait_until("all blocked", Duration::from_secs(10), || {
        blocked_clients(&shards) == 40
    });
    let mut c = connect(port);
    for i in 0..40 {
        let _: () = c.lpush(format!("wake:{i}"), i).unwrap();
    }
    for w in waiters {
        w.join().unwrap();
    }
    // The multi-key forms: one shard, or an error saying so.
    let _: () = c.rpush("{m}a", "x").unwrap();
    let v: Value = redis::cmd("BLMPOP")
        .arg(1)
        .arg(2)
        .arg("{m}b")
        .arg("{m}a")
        .arg("LEFT")
        .query(&mut c)
        .unwrap();
    assert!(format!("{v:?}").contains("x"), "{v:?}");
    let moved: String = {
        let _: () = c.rpush("{m}src", "y").unwrap();
        redis::cmd("BLMOVE")
            .arg("{m}src")
            .arg("{m}dst")
            .arg("LEFT")
            .arg("RIGHT")
            .arg(1)
            .query(&mut c)
            .unwrap()
    };
    assert_eq!(moved, "y");
    let (a, b) = keys_on_two_shards(&proxy, &mut c);
    let err = redis::cmd("BLMOVE")
        .arg(&a)
        .arg(&b)
        .arg("LEFT")
        .arg("RIGHT")
        .arg(1)
        .query::<Value>(&mut c)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("same shard") || err.contains("CROSSSLOT") || err.contains("cross"),
        "{err}"
    );
}

#[test]
fn a_blocked_request_keeps_its_connection_while_the_topology_changes() {
    let (mut shards, port, proxy) = three_shards(
        "s",
        "    failover: eject\n    server_failure_limit: 1\n    health_check: { interval_ms: 50, timeout_ms: 50, failures: 1 }\n",
    );
    proxy.wait_ready(true);
    let queue = proxy.key_on(0, "swap-queue:");
    let waiting = queue.clone();
    let waiter = std::thread::spawn(move || {
        let mut c = connect(port);
        let got: (String, String) = redis::cmd("BLPOP")
            .arg(&waiting)
            .arg(20)
            .query(&mut c)
            .unwrap();
        got
    });
    wait_until("BLPOP blocked", Duration::from_secs(10), || {
        blocked_clients(&shards) == 1
    });
    // Another shard dies and leaves the ring: the pool's state is replaced under the session.
    let ejections = format!(
        "ringproxy_server_ejections_total{{pool=\"main\",server=\"s2\",role=\"master\",address=\"{}\"}}",
        shards[2].addr()
    );
    shards[2].kill();
    wait_until("s2 ejected", Duration::from_secs(10), || {
        metric(&proxy.http("/metrics").1, &ejections) == 1
    });
    assert_eq!(
        blocked_clients(&shards[..2]),
        1,
        "still blocked where it was sent"
    );
    // Keys of the live shards stay where they were, so the push wakes the waiter.
    let mut other = connect(port);
    let _: () = other.rpush(&queue, "after-swap").unwrap();
    assert_eq!(waiter.join().unwrap(), (queue, "after-swap".to_string()));
}

#[test]
fn a_blocking_wait_longer_than_the_silence_bound_is_answered_by_a_push() {
    // The pool's default timeout (1 s): a connection silent for 4 s with a request in flight
    // is given up, but not one whose blocking command waits by design.
    let (shards, port, proxy) = three_shards("s", "");
    let forever = std::thread::spawn(move || {
        let mut c = connect(port);
        let got: (String, String) = redis::cmd("BLPOP")
            .arg("jobs")
            .arg(0)
            .query(&mut c)
            .unwrap();
        got
    });
    let bounded = std::thread::spawn(move || {
        let mut c = connect(port);
        let started = Instant::now();
        let got: Value = redis::cmd("BLPOP")
            .arg("never")
            .arg(5.5)
            .query(&mut c)
            .unwrap();
        (got, started.elapsed())
    });
    wait_until("both BLPOPs blocked", Duration::from_secs(10), || {
        blocked_clients(&shards) == 2
    });
    // The scenario itself: a job queue that stays empty for 6 s.
    std::thread::sleep(Duration::from_secs(6));
    let mut other = connect(port);
    let _: () = other.rpush("jobs", "job-1").unwrap();
    assert_eq!(
        forever.join().unwrap(),
        ("jobs".to_string(), "job-1".to_string())
    );
    let (got, took) = bounded.join().unwrap();
    assert_eq!(got, Value::Nil, "its own timeout, not a reset");
    assert!(took >= Duration::from_millis(5500), "{took:?}");
    let log = proxy.log();
    assert!(!log.contains("sent nothing"), "{log}");
}

#[test]
fn pipelined_blocking_commands_run_one_at_a_time_in_order() {
    let (shards, port, _proxy) = three_shards("s", "");
    let mut c = Raw::connect(port);
    let mut pipeline = command(&[b"BLPOP", b"qa", b"5"]);
    pipeline.extend(command(&[b"BLPOP", b"qb", b"5"]));
    pipeline.extend(command(&[b"GET", b"after"]));
    c.send(&pipeline);
    wait_until("the first BLPOP blocked", Duration::from_secs(10), || {
        blocked_clients(&shards) == 1
    });
    let mut other = connect(port);
    let _: () = other.rpush("qb", "job-b").unwrap();
    // As on one server, the second BLPOP has not run: the job stays queued while the first
    // waits, and when the client leaves.
    assert_eq!(blocked_clients(&shards), 1);
    assert_eq!(other.llen::<_, i64>("qb").unwrap(), 1);
    drop(c);
    wait_until(
        "the BLPOP's connection closed",
        Duration::from_secs(10),
        || blocked_clients(&shards) == 0,
    );
    assert_eq!(
        other.llen::<_, i64>("qb").unwrap(),
        1,
        "the job was not lost"
    );

    // 1,000 pipelined: one reserved connection, the next BLPOP sent once one is answered.
    let mut c = Raw::connect(port);
    let mut pipeline = Vec::new();
    for _ in 0..1000 {
        pipeline.extend(command(&[b"BLPOP", b"qa", b"5"]));
    }
    c.send(&pipeline);
    wait_until("one BLPOP blocked", Duration::from_secs(10), || {
        blocked_clients(&shards) == 1
    });
    let clients: i64 = shards
        .iter()
        .map(|s| info_field(s, "clients", "connected_clients"))
        .sum();
    assert!(
        clients < 60,
        "{clients} connections for one client's 1,000 BLPOPs"
    );
    let _: () = other.rpush("qa", "a1").unwrap();
    assert_eq!(
        c.read_n(b"*2\r\n$2\r\nqa\r\n$2\r\na1\r\n".len()),
        b"*2\r\n$2\r\nqa\r\n$2\r\na1\r\n"
    );
    wait_until("the next BLPOP blocked", Duration::from_secs(10), || {
        blocked_clients(&shards) == 1
    });
}
