//! Clients that send and never read, against a real redis-server: they are closed, and neither
//! the node, the proxy nor a client on the side pays for what they asked.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

const PASSWORD: &str = "s3cret";
const MIB: u64 = 1024;

/// Rounds the side client makes after the non-readers are closed: what they asked may still
/// be ahead of its requests on the node's connection.
const ROUNDS_AFTER: usize = 5_000;

/// A client on the side: SET and GET of small keys until `stop`, counting its rounds in
/// `made`; how many replies were not the ones expected.
fn side_client(port: u16, stop: &AtomicBool, made: &AtomicUsize) -> usize {
    let mut c = Raw::connect(port);
    c.roundtrip(&command(&[b"AUTH", PASSWORD.as_bytes()]), b"+OK\r\n");
    let (mut rounds, mut errors) = (0, 0);
    while !stop.load(Ordering::Relaxed) && rounds < 1_000_000 {
        let key = format!("side:{}", rounds % 100);
        c.send(&command(&[b"SET", key.as_bytes(), b"v"]));
        errors += usize::from(c.read_line() != "+OK\r\n");
        c.send(&command(&[b"GET", key.as_bytes()]));
        errors += usize::from(c.read_line() != "$1\r\n");
        errors += usize::from(c.read_line() != "v\r\n");
        rounds += 1;
        made.store(rounds, Ordering::Relaxed);
    }
    errors
}

/// Authenticates and pipelines 20,000 `GET big`, never reading a byte. The connection is
/// returned to be held open (unread) until the end of the scenario.
fn non_reader(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut requests = command(&[b"AUTH", PASSWORD.as_bytes()]);
    requests.extend(command(&[b"GET", b"big"]).repeat(20_000));
    // Ends when the proxy has read it all or closed the connection.
    let _ = s.write_all(&requests);
    s
}

/// One scenario: `non_readers` clients pipelining GETs of a 1 MB value with the pool's
/// `timeout_ms`, beside a client doing SET/GET. What the node and the proxy grew by, in KiB.
fn scenario(non_readers: usize, timeout_ms: u64) -> (u64, u64) {
    let redis = Redis::start();
    redis.set_large("big", 1024 * 1024);
    let extra = format!("    auth: {{ password: {PASSWORD} }}\n    timeout_ms: {timeout_ms}\n");
    let (port, proxy) = pool_over_one(&redis, &extra);
    let (redis_before, proxy_before) = (memory_kib(redis.pid(), "VmRSS"), proxy.rss_kib());
    let stop = AtomicBool::new(false);
    let made = AtomicUsize::new(0);
    let closes = "ringproxy_client_closes_total{pool=\"main\",reason=\"output_limit\"}";
    let errors = std::thread::scope(|scope| {
        let side = scope.spawn(|| side_client(port, &stop, &made));
        let non_readers: Vec<_> = (0..non_readers)
            .map(|_| scope.spawn(|| non_reader(port)))
            .collect();
        let closed = poll_until(Duration::from_secs(30), || {
            metric(&proxy.http("/metrics").1, closes) == non_readers.len() as u64
        });
        let until = made.load(Ordering::Relaxed) + ROUNDS_AFTER;
        let went_on = poll_until(Duration::from_secs(60), || {
            made.load(Ordering::Relaxed) >= until
        });
        stop.store(true, Ordering::Relaxed);
        assert!(closed, "non-readers closed within 30 s: {}", proxy.log());
        assert!(went_on, "the side client made {ROUNDS_AFTER} rounds after");
        for n in non_readers {
            drop(n.join().unwrap());
        }
        side.join().unwrap()
    });
    let rounds = made.load(Ordering::Relaxed);
    let redis_grew = memory_kib(redis.pid(), "VmHWM").saturating_sub(redis_before);
    let proxy_grew = proxy.peak_rss_kib().saturating_sub(proxy_before);
    eprintln!(
        "{non_readers} non-readers, timeout_ms {timeout_ms}: redis-server grew {} MiB, the proxy \
         {} MiB; the side client made {rounds} rounds with {errors} errors",
        redis_grew / MIB,
        proxy_grew / MIB
    );
    assert_eq!(errors, 0, "the side client got errors");
    assert!(rounds > 0);
    assert!(proxy.log().contains("client closed"), "{}", proxy.log());
    (redis_grew, proxy_grew)
}

fn check(non_readers: usize, timeout_ms: u64) {
    let (redis_grew, proxy_grew) = scenario(non_readers, timeout_ms);
    assert!(redis_grew < 400 * MIB, "redis-server grew {redis_grew} KiB");
    assert!(proxy_grew < 400 * MIB, "the proxy grew {proxy_grew} KiB");
}

#[test]
fn one_non_reader_is_closed_and_costs_no_one_anything() {
    check(1, 1000);
    check(1, 10_000);
}

#[test]
fn four_non_readers_are_closed_and_cost_no_one_anything() {
    check(4, 1000);
    check(4, 10_000);
}
