//! Hostile and careless clients against real redis-server shards: whatever one client does, it
//! gets its error or its connection closed, the proxy's memory stays bounded, and a client on
//! the side doing SET/GET sees no error.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A client on the side: SET and GET of its own keys, counting what fails.
fn side_errors(port: u16, password: Option<&str>, rounds: usize) -> usize {
    let mut c = Raw::connect(port);
    if let Some(password) = password {
        c.roundtrip(&command(&[b"AUTH", password.as_bytes()]), b"+OK\r\n");
    }
    let mut errors = 0;
    for n in 0..rounds {
        let key = format!("side:{n}");
        c.send(&command(&[b"SET", key.as_bytes(), b"v"]));
        errors += usize::from(c.read_line() != "+OK\r\n");
        c.send(&command(&[b"GET", key.as_bytes()]));
        errors += usize::from(c.read_line() != "$1\r\n");
        errors += usize::from(c.read_line() != "v\r\n");
    }
    errors
}

#[test]
fn unauthenticated_clients_get_redis_errors_before_anything_large_is_buffered() {
    let redis = Redis::start();
    let (port, proxy) = pool_over_one(&redis, "    auth: { password: s3cret }\n");
    let before = proxy.rss_kib();
    // Ten connections each announce a 500 MB argument and start sending it, as Redis itself
    // would refuse: on the header, with its own message, and the connection closes.
    let attackers: Vec<Raw> = (0..10)
        .map(|_| {
            let mut a = Raw::connect(port);
            a.send(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$524288000\r\n");
            let _ = a.stream.write_all(&[b'x'; 64 * 1024]);
            a
        })
        .collect();
    for mut a in attackers {
        assert_eq!(
            a.read_line(),
            "-ERR Protocol error: unauthenticated bulk length\r\n"
        );
        assert!(a.is_closed());
    }
    let mut many = Raw::connect(port);
    many.send(b"*11\r\n");
    assert_eq!(
        many.read_line(),
        "-ERR Protocol error: unauthenticated multibulk length\r\n"
    );
    assert_eq!(side_errors(port, Some("s3cret"), 100), 0);
    // Once authenticated, a client may send what Redis allows.
    let mut c = Raw::connect(port);
    c.roundtrip(&command(&[b"AUTH", b"s3cret"]), b"+OK\r\n");
    let big = vec![b'v'; 100_000];
    c.roundtrip(&command(&[b"SET", b"big", &big]), b"+OK\r\n");
    let grown = proxy.rss_kib().saturating_sub(before);
    assert!(grown < 20 * 1024, "the proxy grew by {grown} KiB");
}

#[test]
fn a_request_over_max_request_bytes_is_refused_on_its_header() {
    let redis = Redis::start();
    let (port, proxy) = pool_over_one(&redis, "    limits: { max_request_bytes: 1048576 }\n");
    let before = proxy.rss_kib();
    // An unfinished MSET whose arguments would add up to 2 GB: refused on the first header
    // that takes the request over the bound, before its bytes are buffered.
    let mut a = Raw::connect(port);
    a.send(b"*9\r\n$4\r\nMSET\r\n$1\r\na\r\n$600000\r\n");
    a.send(&vec![b'x'; 600_000]);
    a.send(b"\r\n");
    a.send(b"$1\r\nb\r\n$524288000\r\n");
    assert_eq!(
        a.read_line(),
        "-ERR Protocol error: request larger than max_request_bytes (1048576)\r\n"
    );
    assert!(a.is_closed());
    assert_eq!(side_errors(port, None, 100), 0);
    let grown = proxy.rss_kib().saturating_sub(before);
    assert!(grown < 20 * 1024, "the proxy grew by {grown} KiB");
}

#[test]
fn a_client_guessing_passwords_is_counted_logged_once_a_second_and_closed() {
    let redis = Redis::start();
    let (port, proxy) = pool_over_one(
        &redis,
        "    auth: { password: s3cret }\n    auth_max_failures: 10\n",
    );
    let started = std::time::Instant::now();
    let mut guesser = Raw::connect(port);
    guesser.send(&command(&[b"AUTH", b"mallory", b"guess"]));
    assert!(guesser.read_line().starts_with("-WRONGPASS"));
    for n in 1..10 {
        guesser.send(&command(&[b"AUTH", format!("guess{n}").as_bytes()]));
        assert!(guesser.read_line().starts_with("-WRONGPASS"), "attempt {n}");
    }
    assert!(guesser.is_closed(), "closed after its tenth failure");
    assert_eq!(side_errors(port, Some("s3cret"), 50), 0);
    let metrics = proxy.http("/metrics").1;
    let failures = |user: &str| {
        metric(
            &metrics,
            &format!("ringproxy_auth_failures_total{{pool=\"main\",user=\"{user}\"}}"),
        )
    };
    assert_eq!((failures("default"), failures("unknown")), (9, 1));
    let closed = "ringproxy_client_closes_total{pool=\"main\",reason=\"auth_failures\"}";
    assert_eq!(metric(&metrics, closed), 1);
    let logged = proxy.log().matches("failed AUTH from 127.0.0.1").count();
    let seconds = started.elapsed().as_secs() as usize;
    assert!(
        (1..=seconds + 1).contains(&logged),
        "{logged} log lines in {seconds} s"
    );
}

#[test]
fn each_failed_auth_from_an_address_is_answered_later_than_the_last() {
    let redis = Redis::start();
    let (port, _proxy) = pool_over_one(
        &redis,
        "    auth: { password: s3cret }\n    auth_max_failures: 0\n",
    );
    // Eleven guesses on parallel connections from one address: 1 ms, 2 ms … 1,024 ms.
    let started = std::time::Instant::now();
    let mut guessers: Vec<Raw> = (0..11).map(|_| Raw::connect(port)).collect();
    for (n, guesser) in guessers.iter_mut().enumerate() {
        guesser.send(&command(&[b"AUTH", format!("guess{n}").as_bytes()]));
    }
    for guesser in &mut guessers {
        assert!(guesser.read_line().starts_with("-WRONGPASS"));
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1024), "{took:?}");
    // The right password is not held back, and the connection still serves.
    let started = std::time::Instant::now();
    let mut user = Raw::connect(port);
    user.roundtrip(&command(&[b"AUTH", b"s3cret"]), b"+OK\r\n");
    user.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
    assert!(started.elapsed() < Duration::from_millis(500));
    // A further guess waits longer again, and its connection keeps order: the PING sent
    // behind it is answered after it.
    let mut guesser = Raw::connect(port);
    let mut pipeline = command(&[b"AUTH", b"guess"]);
    pipeline.extend(command(&[b"PING"]));
    guesser.send(&pipeline);
    assert!(guesser.read_line().starts_with("-WRONGPASS"));
    assert_eq!(guesser.read_line(), "-NOAUTH Authentication required.\r\n");
}

#[test]
fn idle_and_slow_clients_are_closed_but_subscribers_and_others_are_not() {
    let redis = Redis::start();
    let (port, proxy) = pool_over_one(
        &redis,
        "    client_idle_timeout_ms: 300\n    client_request_timeout_ms: 300\n",
    );
    let mut subscriber = Raw::connect(port);
    subscriber.send(&command(&[b"SUBSCRIBE", b"news"]));
    for line in [
        "*3\r\n",
        "$9\r\n",
        "subscribe\r\n",
        "$4\r\n",
        "news\r\n",
        ":1\r\n",
    ] {
        assert_eq!(subscriber.read_line(), line);
    }
    let started = std::time::Instant::now();
    let mut idle = Raw::connect(port);
    idle.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
    // A slowloris: a request that never completes.
    let mut slow = Raw::connect(port);
    slow.send(b"*2\r\n$3\r\nGET\r\n$5\r\nab");
    assert!(idle.is_closed(), "the idle client is closed");
    assert!(slow.is_closed(), "the slow sender is closed");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The subscriber, idle all along, still gets its messages.
    let _: () = redis::cmd("PUBLISH")
        .arg("news")
        .arg("hi")
        .query(&mut connect(port))
        .unwrap();
    for line in [
        "*3\r\n",
        "$7\r\n",
        "message\r\n",
        "$4\r\n",
        "news\r\n",
        "$2\r\n",
        "hi\r\n",
    ] {
        assert_eq!(subscriber.read_line(), line);
    }
    assert_eq!(side_errors(port, None, 20), 0);
    let metrics = proxy.http("/metrics").1;
    let closed = |reason: &str| {
        metric(
            &metrics,
            &format!("ringproxy_client_closes_total{{pool=\"main\",reason=\"{reason}\"}}"),
        )
    };
    assert!(closed("idle") >= 1);
    assert_eq!(closed("request_timeout"), 1);
}

/// A proxy over one redis-server, a client on the side that has set `k`, and then the proxy
/// allowed 64 open files.
fn allowed_64_files() -> (Redis, u16, Proxy, Raw) {
    let redis = Redis::start();
    let port = free_port();
    let proxy = Proxy::start(&pool_over(port, &[&redis], &["one"]), port);
    let mut side = Raw::connect(port);
    side.roundtrip(&command(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    let limit = Command::new("prlimit")
        .args(["--pid", &proxy.pid().to_string(), "--nofile=64:64"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(limit.success());
    (redis, port, proxy, side)
}

#[test]
fn out_of_file_descriptors_new_clients_are_told_and_closed() {
    let (_redis, port, proxy, mut side) = allowed_64_files();
    let started = std::time::Instant::now();
    let (mut served, mut refused) = (Vec::new(), 0);
    for _ in 0..100 {
        let mut c = Raw::connect(port);
        c.send(&command(&[b"PING"]));
        match c.read_line().as_str() {
            "+PONG\r\n" => served.push(c),
            "-ERR max number of clients reached\r\n" => {
                assert!(c.is_closed());
                refused += 1;
            }
            other => panic!("a new client got {other:?}"),
        }
    }
    assert!(refused > 0 && !served.is_empty(), "{refused} refused");
    side.roundtrip(&command(&[b"GET", b"k"]), b"$1\r\nv\r\n");
    // Refused to keep descriptors for backend connections, or for want of any.
    let log = proxy.log();
    let logged = log.matches("clients refused in the last second").count()
        + log.matches("failed accepts in the last second").count();
    let seconds = started.elapsed().as_secs() as usize;
    assert!(
        (1..=seconds + 1).contains(&logged),
        "{logged} log lines in {seconds} s"
    );
}

#[test]
fn no_number_of_admin_or_client_connections_keeps_the_proxy_from_its_nodes() {
    let (mut redis, port, proxy, mut side) = allowed_64_files();
    // Idle connections to the admin port and clients, far more than the limit allows.
    let admin: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", proxy.admin)).ok())
        .collect();
    let mut clients = Vec::new();
    let mut refused = 0;
    for _ in 0..100 {
        let mut c = Raw::connect(port);
        c.send(&command(&[b"PING"]));
        match c.read_line().as_str() {
            "+PONG\r\n" => clients.push(c),
            "-ERR max number of clients reached\r\n" => refused += 1,
            other => panic!("a new client got {other:?}"),
        }
    }
    assert!(refused > 0 && !clients.is_empty(), "{refused} refused");
    // The node restarts: the proxy still has descriptors to reach it again.
    redis.restart();
    wait_until("the node reached again", Duration::from_secs(10), || {
        side.send(&command(&[b"SET", b"k", b"again"]));
        side.read_line() == "+OK\r\n"
    });
    let stored: String = redis::cmd("GET")
        .arg("k")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(stored, "again");
    // Idle admin connections are closed (within 10 s), and the admin port serves again.
    let mut idle = admin.into_iter().next().unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    assert_eq!(
        std::io::Read::read(&mut idle, &mut [0u8; 16]).unwrap_or(0),
        0
    );
    wait_until("the admin port serves", Duration::from_secs(10), || {
        http_get(proxy.admin, "/health").is_some_and(|(status, _)| status == 200)
    });
}

/// A Lua script that keeps its redis-server busy for ARGV[1] microseconds.
#[test]
fn a_request_that_times_out_leaves_the_connection_and_its_late_reply_is_dropped() {
    let redis = Redis::start();
    let (port, proxy) = pool_over_one(&redis, "    timeout_ms: 200\n");
    let mut c = Raw::connect(port);
    c.roundtrip(&command(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    let connects = || proxy.master_metric("ringproxy_server_connects_total", "one", &redis);
    let before = connects();
    // The script runs 300 ms: its request times out at 200 ms, with the error a timeout gives.
    let turns = spin_turns(&redis, 300);
    c.send(&command(&[
        b"EVAL",
        SPIN.as_bytes(),
        b"1",
        b"k",
        turns.as_bytes(),
    ]));
    let line = c.read_line();
    assert!(line.contains("timed out after 200 ms"), "{line}");
    // The next request goes on the same connection, behind the script: it gets its own reply,
    // not the script's late one, which is dropped.
    c.roundtrip(&command(&[b"GET", b"k"]), b"$1\r\nv\r\n");
    c.roundtrip(&command(&[b"INCR", b"n"]), b":1\r\n");
    assert_eq!(connects(), before, "the backend connection was kept");
}

#[test]
fn a_client_that_never_reads_stops_being_served_then_is_closed_and_costs_others_nothing() {
    let redis = Redis::start();
    redis.set_large("big", 100_000);
    let (port, proxy) = pool_over_one(
        &redis,
        "    limits: { max_client_output_bytes: 1048576, max_pipeline: 16 }\n    client_output_timeout_ms: 500\n",
    );
    let before = proxy.rss_kib();
    // 2,000 GETs of a 100 KB value, never read: 200 MB of replies if all were served.
    let mut hog = Raw::connect(port);
    hog.send(&command(&[b"GET", b"big"]).repeat(2000));
    assert_eq!(
        side_errors(port, None, 100),
        0,
        "others are served meanwhile"
    );
    let closes = "ringproxy_client_closes_total{pool=\"main\",reason=\"output_limit\"}";
    wait_until("the non-reader is closed", Duration::from_secs(10), || {
        metric(&proxy.http("/metrics").1, closes) == 1
    });
    let forwarded = proxy.master_metric("ringproxy_server_requests_total", "one", &redis);
    // Its replies filled the sockets' buffers and its allowance; then nothing more was sent
    // for it. (The side client's 200 requests are counted too.)
    assert!(forwarded < 700, "{forwarded} requests forwarded");
    let grown = proxy.rss_kib().saturating_sub(before);
    assert!(grown < 50 * 1024, "the proxy grew by {grown} KiB");
    assert!(proxy.log().contains("over max_client_output_bytes"));
    eprintln!("non-reader: {forwarded} requests forwarded, the proxy grew by {grown} KiB");
}

#[test]
fn a_client_over_the_hard_output_limit_is_closed_at_once() {
    let redis = Redis::start();
    redis.set_large("big", 1024 * 1024);
    let (port, proxy) = pool_over_one(
        &redis,
        "    limits: { max_client_output_bytes: 1048576, max_client_output_hard_bytes: 1572864 }\n    client_output_timeout_ms: 600000\n",
    );
    // Its first GETs' replies (16 MB) overflow the sockets' buffers and the hard limit.
    let mut hog = Raw::connect(port);
    hog.send(&command(&[b"GET", b"big"]).repeat(100));
    let closes = "ringproxy_client_closes_total{pool=\"main\",reason=\"output_limit\"}";
    wait_until("the non-reader is closed", Duration::from_secs(30), || {
        metric(&proxy.http("/metrics").1, closes) == 1
    });
    assert!(proxy.log().contains("over max_client_output_hard_bytes"));
    assert_eq!(side_errors(port, None, 100), 0);
}

#[test]
fn no_more_than_max_pipeline_requests_of_one_client_are_in_flight_and_the_rest_follow() {
    let redis = Redis::start();
    let (port, proxy) = pool_over_one(&redis, "    limits: { max_pipeline: 4 }\n");
    let mut c = Raw::connect(port);
    c.roundtrip(&command(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    let forwarded = || proxy.master_metric("ringproxy_server_requests_total", "one", &redis);
    let before = forwarded();
    let mut direct = Raw::connect(redis.port);
    direct.roundtrip(&command(&[b"CLIENT", b"PAUSE", b"500"]), b"+OK\r\n");
    // 100 requests in one write: while the backend is paused, 4 are sent and 96 wait unparsed.
    c.send(&command(&[b"GET", b"k"]).repeat(100));
    wait_until("four in flight", Duration::from_secs(5), || {
        forwarded() >= before + 4
    });
    assert_eq!(
        forwarded(),
        before + 4,
        "no more than max_pipeline in flight"
    );
    // Then every one is answered, in order.
    for n in 0..100 {
        assert_eq!(c.read_line(), "$1\r\n", "reply {n}");
        assert_eq!(c.read_line(), "v\r\n");
    }
    assert_eq!(forwarded(), before + 100);
}

#[test]
fn a_stopped_node_fails_each_large_write_at_its_timeout_and_costs_other_shards_nothing() {
    let (shards, port, proxy) = three_shards("s", "    timeout_ms: 1000\n");
    let stopped_key = proxy.key_on(1, "big");
    let other_key = proxy.key_on(0, "small");
    shards[1].signal("-STOP");
    let value = vec![b'v'; 4 * 1024 * 1024];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (late, other_errors) = std::thread::scope(|scope| {
        let other = scope.spawn(|| {
            let mut c = Raw::connect(port);
            let mut errors = 0;
            for _ in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                c.send(&command(&[b"SET", other_key.as_bytes(), b"1"]));
                if c.read_line() != "+OK\r\n" {
                    errors += 1;
                }
            }
            errors
        });
        let mut c = Raw::connect(port);
        let mut late = Vec::new();
        // 48 MB, more than the sockets' buffers hold (up to 36 MB here): later SETs wait
        // unwritten behind earlier ones.
        for _ in 0..12 {
            c.send(&command(&[b"SET", stopped_key.as_bytes(), &value]));
            // Timed from when the client has handed over its 4 MB: the proxy's timeout runs
            // from when it has the whole request, and on a busy machine the handing over alone
            // can take tens of milliseconds.
            let started = std::time::Instant::now();
            let reply = c.read_line();
            assert!(reply.starts_with("-ERR backend s1"), "{reply}");
            late.push(started.elapsed());
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (late, other.join().unwrap())
    });
    shards[1].signal("-CONT");
    assert_eq!(other_errors, 0);
    // Each within its timeout and 100 ms (a reset of the silent connection may come sooner).
    assert!(
        late.iter().all(|t| *t < Duration::from_millis(1100)),
        "{late:?}"
    );
}
