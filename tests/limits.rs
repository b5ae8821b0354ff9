//! Hostile and careless clients against real redis-server shards: whatever one client does, it
//! gets its error or its connection closed, the proxy's memory stays bounded, and a client on
//! the side doing SET/GET sees no error.

mod common;

use std::io::Write;

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
    let port = free_port();
    let config = pool_config(
        port,
        &[format!("{}:1 one", redis.addr())],
        "    auth: { password: s3cret }\n",
    );
    let proxy = Proxy::start(&config, port);
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
    let port = free_port();
    let config = pool_config(
        port,
        &[format!("{}:1 one", redis.addr())],
        "    limits: { max_request_bytes: 1048576 }\n",
    );
    let proxy = Proxy::start(&config, port);
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
    let port = free_port();
    let config = pool_config(
        port,
        &[format!("{}:1 one", redis.addr())],
        "    auth: { password: s3cret }\n    auth_max_failures: 10\n",
    );
    let proxy = Proxy::start(&config, port);
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
    let logged = proxy.log().matches("failed AUTH from 127.0.0.1").count();
    let seconds = started.elapsed().as_secs() as usize;
    assert!(
        (1..=seconds + 1).contains(&logged),
        "{logged} log lines in {seconds} s"
    );
}
