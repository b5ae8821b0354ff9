//! memcache pools against real memcached servers: byte-for-byte agreement with memcached, gets
//! and quiet meta pipelines across shards, limits, the expiry guard, flush_all, stats, ejection
//! and replicated shards.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// Sends `script` then `mn`, and returns everything answered before the `MN`.
fn exchange(port: u16, script: &[u8]) -> Vec<u8> {
    let mut c = Raw::connect(port);
    exchange_on(&mut c, script)
}

fn exchange_on(c: &mut Raw, script: &[u8]) -> Vec<u8> {
    c.send(script);
    c.send(b"mn\r\n");
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while !got.ends_with(b"MN\r\n") {
        let n = c.stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got.truncate(got.len() - 4);
    got
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).to_string()
}

/// A memcache pool over `servers` (entries as the YAML list writes them) with `extra` lines.
fn memcache_pool(servers: &[String], extra: &str) -> (u16, Proxy) {
    let port = free_port();
    let config = pool_config(port, servers, &format!("    protocol: memcache\n{extra}"));
    (port, Proxy::start(&config, port))
}

/// `n` memcached servers named `mc0`… behind one pool.
fn shards(n: usize, extra: &str) -> (Vec<Server>, u16, Proxy) {
    let servers: Vec<Server> = (0..n).map(|_| Server::memcached()).collect();
    let entries: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}:1 mc{i}", s.addr()))
        .collect();
    let (port, proxy) = memcache_pool(&entries, extra);
    (servers, port, proxy)
}

/// Which of `servers` holds `key`, asked directly.
fn holder(servers: &[Server], key: &str) -> Vec<usize> {
    servers
        .iter()
        .enumerate()
        .filter(|(_, s)| exchange(s.port, format!("mg {key}\r\n").as_bytes()) == b"HD\r\n")
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn every_command_and_error_is_answered_as_memcached_answers_it() {
    let direct = Server::memcached();
    let behind = Server::memcached();
    let (port, _proxy) =
        memcache_pool(&[format!("{}:1", behind.addr())], "    allow_flush: true\n");
    let long_key = "k".repeat(251);
    let big = vec![b'v'; 2 * 1024 * 1024];
    let mut too_large = b"set big 0 0 2097152\r\n".to_vec();
    too_large.extend_from_slice(&big);
    too_large.extend_from_slice(b"\r\nget big\r\n");
    let scripts: Vec<Vec<u8>> = vec![
        // Storage, with and without noreply.
        b"set a 1 0 2\r\nhi\r\nadd a 0 0 1\r\nx\r\nadd b 0 0 1\r\ny\r\nreplace a 2 0 3\r\nabc\r\nreplace zz 0 0 1\r\nx\r\nappend a 0 0 2\r\nde\r\nprepend a 0 0 2\r\n12\r\nappend zz 0 0 1\r\nx\r\nget a b zz\r\n".to_vec(),
        b"set q 0 0 1 noreply\r\n1\r\nadd q 0 0 1 noreply\r\n2\r\nappend q 0 0 1 noreply\r\n3\r\nget q\r\n".to_vec(),
        // Compare and swap: the CAS value comes from gets.
        b"set c 0 0 1\r\n1\r\ngets c\r\ncas c 0 0 1 999\r\n2\r\ncas zz 0 0 1 1\r\n2\r\ncas c 0 0 1 abc\r\n2\r\n".to_vec(),
        // Counters, touch, gat, delete.
        b"set n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 100\r\nincr n x\r\nincr zz 1\r\nincr a 1\r\nincr n 1 noreply\r\nget n\r\ndecr n\r\n".to_vec(),
        b"touch a 100\r\ntouch zz 100\r\ntouch a x\r\ntouch a\r\ngat 100 a b zz\r\ngats 100 a\r\ngat x a\r\ngat 10\r\ngats\r\n".to_vec(),
        b"delete a 0\r\ndelete b 5\r\ndelete b noreply\r\ndelete b\r\ndelete\r\nget a b\r\n".to_vec(),
        // Malformed commands.
        b"foo\r\n\r\nGET a\r\nget\r\nset a 0 0 x\r\nhi\r\nset a 0 0 -1\r\nset a 0 0\r\nhi\r\nset a 0 0 2 noreply extra\r\nhi\r\nset a 0 0 2\r\nhello\r\nset a 0 0 x noreply\r\nset a 0 0 2 noreply\r\nhello\r\n".to_vec(),
        format!("get a {long_key}\r\nset {long_key} 0 0 2\r\nhi\r\nincr {long_key} 1\r\n").into_bytes(),
        too_large,
        // Whitespace memcached tolerates.
        b"  set  w 0 0 1 \r\nx\r\nget w \nget  w\r\n".to_vec(),
        // Meta commands and their flags.
        b"ms m 2 T0 F5\r\nhi\r\nmg m v k f t s c O123\r\nmg m\r\nmg zz v\r\nmg zz v q\r\nmg m v q\r\nms m 2 q\r\nhi\r\nms m 2 MA\r\n!!\r\nmg m v\r\n".to_vec(),
        b"ms m 2 zz\r\nhi\r\nms m\r\nmg\r\nmd\r\nms m x\r\nhi\r\nms m 2 q\r\nhello\r\n".to_vec(),
        b"ma cnt N0 J7 v\r\nma cnt v\r\nma cnt MD D3 v\r\nma cnt q\r\nma cnt q v\r\nma zz\r\nma zz q\r\nmg cnt v\r\n".to_vec(),
        b"md m q\r\nmd m q\r\nmd m\r\nmg m v\r\nms Zm9v 3 b\r\nbar\r\nmg Zm9v b v k\r\nget foo\r\nmg !!! b v\r\n".to_vec(),
        // The rest.
        b"verbosity 1\r\nverbosity 1 noreply\r\nverbosity\r\nversion\r\nflush_all\r\nflush_all noreply\r\nflush_all x\r\nget a w\r\n".to_vec(),
    ];
    for script in &scripts {
        let want = exchange(direct.port, script);
        let got = exchange(port, script);
        assert_eq!(
            text(&got),
            text(&want),
            "for {:?}",
            text(&script[..script.len().min(300)])
        );
    }
}

#[test]
fn gets_across_shards_come_back_in_key_order_with_one_end() {
    let (servers, port, _proxy) = shards(3, "");
    let mut c = Raw::connect(port);
    let keys: Vec<String> = (0..120).map(|i| format!("key:{i}")).collect();
    let mut script = Vec::new();
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
        script.extend_from_slice(format!("set {k} {i} 0 {}\r\n{k}\r\n", k.len()).as_bytes());
    }
    exchange_on(&mut c, &script);
    // The keys really are on several servers.
    let used: std::collections::BTreeSet<usize> =
        keys.iter().flat_map(|k| holder(&servers, k)).collect();
    assert_eq!(used.len(), 3);
    let mut want = String::new();
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
        want.push_str(&format!("VALUE {k} {i} {}\r\n{k}\r\n", k.len()));
    }
    // The key asked twice is answered twice, as memcached does.
    want.push_str(&format!(
        "VALUE {0} 1 {1}\r\n{0}\r\n",
        keys[1],
        keys[1].len()
    ));
    want.push_str("END\r\n");
    let got = exchange_on(
        &mut c,
        format!("get {} {}\r\n", keys.join(" "), keys[1]).as_bytes(),
    );
    assert_eq!(text(&got), want);
    // gets carries each server's CAS value; every value comes once.
    let got = text(&exchange_on(
        &mut c,
        format!("gets {}\r\n", keys.join(" ")).as_bytes(),
    ));
    assert_eq!(got.matches("VALUE ").count(), 80);
    assert_eq!(got.matches("END\r\n").count(), 1);
    // A key too long anywhere in the get: memcached's error, alone.
    let got = exchange_on(
        &mut c,
        format!("get {} {}\r\n", keys[1], "k".repeat(251)).as_bytes(),
    );
    assert_eq!(text(&got), "CLIENT_ERROR bad command line format\r\n");
}

#[test]
fn quiet_meta_pipelines_across_shards_end_at_mn() {
    let (servers, port, _proxy) = shards(3, "    hash: md5\n");
    let keys: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    // Quiet sets show nothing; one conflicting add shows its NS.
    let mut script = Vec::new();
    for k in &keys {
        script.extend_from_slice(format!("ms {k} 2 q T0 O{k}\r\nhi\r\n").as_bytes());
    }
    script.extend_from_slice(b"ms m3 1 q ME Oadd\r\nx\r\n");
    assert_eq!(text(&exchange(port, &script)), "NS Oadd\r\n");
    let used: std::collections::BTreeSet<usize> =
        keys.iter().flat_map(|k| holder(&servers, k)).collect();
    assert_eq!(used.len(), 3, "keys spread over every shard");
    // Quiet gets: hits only, in request order, each with its opaque token; misses vanish.
    let mut script = Vec::new();
    let mut want = String::new();
    for (i, k) in keys.iter().enumerate() {
        script.extend_from_slice(format!("mg {k} v k q O{i}\r\nmg absent{i} v q\r\n").as_bytes());
        want.push_str(&format!("VA 2 k{k} O{i}\r\nhi\r\n"));
    }
    assert_eq!(text(&exchange(port, &script)), want);
    // Quiet deletes: hidden when they succeed, shown when the key is missing.
    let mut script = Vec::new();
    for k in &keys {
        script.extend_from_slice(format!("md {k} q\r\n").as_bytes());
    }
    script.extend_from_slice(b"md m0 q Oagain\r\n");
    assert_eq!(text(&exchange(port, &script)), "NF Oagain\r\n");
    // A base64 key lives where its plain spelling does.
    for i in 0..20 {
        let plain = format!("base64-key-{i}");
        let script = format!("set {plain} 0 0 1\r\nz\r\n");
        assert_eq!(text(&exchange(port, script.as_bytes())), "STORED\r\n");
        let encoded = base64(plain.as_bytes());
        assert_eq!(
            text(&exchange(
                port,
                format!("mg {encoded} b v k\r\n").as_bytes()
            )),
            format!("VA 1 k{plain}\r\nz\r\n")
        );
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, &b| (n << 8) | u32::from(b)) << (8 * (3 - chunk.len()));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn noreply_pipelines_stay_in_step() {
    let (_servers, port, _proxy) = shards(2, "");
    let mut c = Raw::connect(port);
    let mut script = Vec::new();
    for i in 0..500 {
        script.extend_from_slice(
            format!("set nr{i} 0 0 {}\r\n{i}\r\n", i.to_string().len()).as_bytes(),
        );
        script.extend_from_slice(
            format!("set nr{i} 0 0 {} noreply\r\n{i}\r\n", i.to_string().len()).as_bytes(),
        );
        script.extend_from_slice(
            format!("incr nr{i} 1 noreply\r\ndelete gone{i} noreply\r\n").as_bytes(),
        );
        // A malformed noreply command is silent too.
        script.extend_from_slice(b"incr x y noreply\r\n");
    }
    script.extend_from_slice(b"get nr7 nr499\r\n");
    let got = text(&exchange_on(&mut c, &script));
    let want = format!(
        "{}VALUE nr7 0 1\r\n8\r\nVALUE nr499 0 3\r\n500\r\nEND\r\n",
        "STORED\r\n".repeat(500)
    );
    assert_eq!(got, want);
}

#[test]
fn values_over_item_size_max_are_refused_before_forwarding() {
    let (servers, port, proxy) = shards(1, "    item_size_max: 1000\n");
    let mut c = Raw::connect(port);
    let mut script = format!("set big 0 0 1001\r\n{}\r\n", "v".repeat(1001)).into_bytes();
    script.extend_from_slice(format!("ms big 1001 T0\r\n{}\r\n", "v".repeat(1001)).as_bytes());
    script.extend_from_slice(format!("set ok 0 0 1000\r\n{}\r\n", "v".repeat(1000)).as_bytes());
    script.extend_from_slice(
        format!("set big 0 0 1001 noreply\r\n{}\r\n", "v".repeat(1001)).as_bytes(),
    );
    script.extend_from_slice(b"get big\r\n");
    assert_eq!(
        text(&exchange_on(&mut c, &script)),
        "SERVER_ERROR object too large for cache\r\nSERVER_ERROR object too large for cache\r\nSTORED\r\nEND\r\n"
    );
    // Not one byte of the refused values reached memcached.
    let stats = text(&exchange(servers[0].port, b"stats\r\n"));
    assert!(stats.contains("STAT cmd_set 1\r\n"), "{stats}");
    assert!(
        proxy
            .http("/metrics")
            .1
            .contains("ringproxy_client_errors_total{pool=\"main\",kind=\"refused\"} 2")
    );
}

#[test]
fn past_absolute_exptimes_are_counted_and_can_be_refused() {
    let past = 30 * 24 * 3600 + 1;
    let (_servers, port, proxy) = shards(1, "");
    let script = format!(
        "set e 0 {past} 1\r\nx\r\nget e\r\nset f 0 100 1\r\nx\r\nget f\r\nms g 1 T{past}\r\nx\r\n"
    );
    // Accepted (memcached expires it at once), counted and logged.
    assert_eq!(
        text(&exchange(port, script.as_bytes())),
        "STORED\r\nEND\r\nSTORED\r\nVALUE f 0 1\r\nx\r\nEND\r\nHD\r\n"
    );
    assert!(
        proxy
            .http("/metrics")
            .1
            .contains("ringproxy_past_exptime_writes_total{pool=\"main\"} 2")
    );

    let (_servers, port, proxy) = shards(1, "    reject_past_exptime: true\n");
    let refusal =
        format!("CLIENT_ERROR exptime {past} is in the past: over 2592000 s it is a Unix time\r\n");
    let script = format!(
        "set e 0 {past} 1\r\nx\r\nset e 0 {past} 1 noreply\r\nx\r\ntouch f {past}\r\ngat {past} f\r\nmg f T{past} v\r\nset f 0 -1 1\r\nx\r\nget e\r\n"
    );
    assert_eq!(
        text(&exchange(port, script.as_bytes())),
        format!("{0}{0}{0}{0}STORED\r\nEND\r\n", refusal)
    );
    assert!(
        proxy
            .http("/metrics")
            .1
            .contains("ringproxy_past_exptime_writes_total{pool=\"main\"} 5")
    );
}

#[test]
fn flush_all_reaches_every_server_only_when_allowed() {
    let (servers, port, _proxy) = shards(2, "");
    assert_eq!(
        text(&exchange(port, b"flush_all\r\nflush_all noreply\r\n")),
        "CLIENT_ERROR flush_all would empty every server; the pool needs allow_flush: true\r\n"
    );
    drop(servers);
    let (servers, port, _proxy) = shards(3, "    allow_flush: true\n");
    let mut script = Vec::new();
    for i in 0..30 {
        script.extend_from_slice(format!("set f{i} 0 0 1\r\nx\r\n").as_bytes());
    }
    exchange(port, &script);
    assert_eq!(text(&exchange(port, b"flush_all\r\n")), "OK\r\n");
    for s in &servers {
        let stats = text(&exchange(s.port, b"stats\r\n"));
        assert!(stats.contains("STAT cmd_flush 1\r\n"), "{stats}");
    }
    assert_eq!(text(&exchange(port, b"get f1 f2 f3\r\n")), "END\r\n");
}

#[test]
fn stats_are_the_proxys_and_per_backend_under_backends() {
    let (servers, port, _proxy) = shards(2, "");
    // Items on both servers: `stats` shows the pool as one memcached, counts summed.
    let mut c = Raw::connect(port);
    for n in 0..50u64 {
        let key = format!("item-{:x}", n.wrapping_mul(2_654_435_761) % 1_000_003);
        c.roundtrip(
            format!("set {key} 0 0 1\r\nx\r\n").as_bytes(),
            b"STORED\r\n",
        );
    }
    let items = |port| {
        let stats = text(&exchange(port, b"stats\r\n"));
        let line = stats
            .lines()
            .find(|l| l.starts_with("STAT curr_items "))
            .unwrap()
            .to_string();
        line.trim_start_matches("STAT curr_items ")
            .parse::<u64>()
            .unwrap()
    };
    let each: Vec<u64> = servers.iter().map(|s| items(s.port)).collect();
    assert!(each.iter().all(|&n| n > 0), "{each:?}");
    assert_eq!(items(port), 50);
    let own = text(&exchange(port, b"stats\r\n"));
    for stat in [
        "STAT pid ",
        "STAT uptime ",
        "STAT version 1.",
        "STAT proxy_version ringproxy-",
        "STAT curr_connections ",
        "STAT cmd_set 50\r\n",
        "STAT limit_maxbytes ",
        "STAT nodes_up ",
    ] {
        assert!(own.contains(stat), "{stat} in {own}");
    }
    assert!(own.ends_with("END\r\n"));
    let backends = text(&exchange(port, b"stats backends\r\n"));
    assert!(backends.contains("STAT mc0:pid "), "{backends}");
    assert!(backends.contains("STAT mc1:version "), "{backends}");
    assert_eq!(backends.matches("END\r\n").count(), 1);
    let settings = text(&exchange(port, b"stats backends settings\r\n"));
    assert!(settings.contains("STAT mc1:item_size_max "), "{settings}");
    // Other groups come from the first server, as it answers them.
    let slabs = text(&exchange(port, b"stats settings\r\n"));
    assert!(
        slabs.contains("STAT item_size_max ") && slabs.ends_with("END\r\n"),
        "{slabs}"
    );
    assert!(
        text(&exchange(port, b"shutdown\r\n"))
            .starts_with("CLIENT_ERROR 'shutdown' is not supported")
    );
}

#[test]
fn overlong_lines_close_only_their_connection() {
    let (_servers, port, _proxy) = shards(1, "");
    let mut other = Raw::connect(port);
    let mut c = Raw::connect(port);
    c.send(&[b'x'; 3000]);
    assert_eq!(c.read_line(), "CLIENT_ERROR line too long\r\n");
    assert!(c.is_closed());
    // A long multi-get line is fine.
    let keys: Vec<String> = (0..500).map(|i| format!("long-get-key-{i}")).collect();
    assert_eq!(
        text(&exchange_on(
            &mut other,
            format!("get {}\r\n", keys.join(" ")).as_bytes()
        )),
        "END\r\n"
    );
}

#[test]
fn a_dead_server_gives_errors_then_is_ejected_and_its_keys_rehash() {
    let (mut servers, port, proxy) = shards(
        3,
        "    failover: eject\n    server_failure_limit: 1\n    server_retry_timeout_ms: 60000\n    health_check: { interval_ms: 50, timeout_ms: 50, failures: 1 }\n",
    );
    let keys: Vec<String> = (0..200).map(|i| format!("e{i}")).collect();
    let mut script = Vec::new();
    for k in &keys {
        script.extend_from_slice(format!("set {k} 0 0 1\r\nx\r\n").as_bytes());
    }
    exchange(port, &script);
    let on_dead: Vec<&String> = keys.iter().filter(|k| holder(&servers, k) == [0]).collect();
    let elsewhere: Vec<&String> = keys.iter().filter(|k| holder(&servers, k) != [0]).collect();
    assert!(!on_dead.is_empty() && !elsewhere.is_empty());
    let ejections = format!(
        "ringproxy_server_ejections_total{{pool=\"main\",server=\"mc0\",role=\"master\",address=\"{}\"}}",
        servers[0].addr()
    );
    servers[0].kill();
    wait_until("ejection", Duration::from_secs(10), || {
        metric(&proxy.http("/metrics").1, &ejections) == 1
            && exchange(port, format!("get {}\r\n", on_dead[0]).as_bytes()) == b"END\r\n"
    });
    // The dead server's keys miss and can be written again elsewhere; the others still hit.
    let mut c = Raw::connect(port);
    for k in &on_dead {
        assert_eq!(
            text(&exchange_on(&mut c, format!("get {k}\r\n").as_bytes())),
            "END\r\n"
        );
        assert_eq!(
            text(&exchange_on(
                &mut c,
                format!("set {k} 0 0 1\r\ny\r\nget {k}\r\n").as_bytes()
            )),
            format!("STORED\r\nVALUE {k} 0 1\r\ny\r\nEND\r\n")
        );
    }
    for k in &elsewhere {
        assert_eq!(
            text(&exchange_on(&mut c, format!("get {k}\r\n").as_bytes())),
            format!("VALUE {k} 0 1\r\nx\r\nEND\r\n")
        );
    }
}

/// Reads and writes against a replicated shard, checking every reply, until `stop`.
fn load(port: u16, stop: &std::sync::atomic::AtomicBool) -> (u64, Vec<String>) {
    let mut c = Raw::connect(port);
    let mut done = 0;
    let mut failures = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) || done < 50 {
        let key = format!("r{}", done % 50);
        let value = done.to_string();
        let script = format!("set {key} 0 0 {}\r\n{value}\r\nget {key}\r\n", value.len());
        let want = format!(
            "STORED\r\nVALUE {key} 0 {}\r\n{value}\r\nEND\r\n",
            value.len()
        );
        let got = text(&exchange_on(&mut c, script.as_bytes()));
        if got != want {
            failures.push(got);
        }
        done += 1;
    }
    (done, failures)
}

#[test]
fn a_replicated_server_keeps_serving_from_its_replica_when_the_master_dies() {
    let mut master = Server::memcached();
    let replica = Server::memcached();
    let other = Server::memcached();
    let servers = [
        format!(
            "{{ name: rep, master: {}, replicas: [{}] }}",
            master.addr(),
            replica.addr()
        ),
        format!("{{ name: solo, master: {} }}", other.addr()),
    ];
    let (port, proxy) = memcache_pool(
        &servers,
        "    failover: eject\n    server_failure_limit: 1\n    health_check: { interval_ms: 50, timeout_ms: 50, failures: 1 }\n",
    );
    proxy.wait_ready(true);
    // Writes reach both copies.
    let mut keys = Vec::new();
    for i in 0..40 {
        let key = format!("w{i}");
        assert_eq!(
            text(&exchange(
                port,
                format!("set {key} 0 0 1\r\nx\r\n").as_bytes()
            )),
            "STORED\r\n"
        );
        keys.push(key);
    }
    let on_rep: Vec<&String> = keys
        .iter()
        .filter(|k| exchange(master.port, format!("mg {k}\r\n").as_bytes()) == b"HD\r\n")
        .collect();
    assert!(!on_rep.is_empty());
    for k in &on_rep {
        assert_eq!(
            exchange(replica.port, format!("mg {k} v\r\n").as_bytes()),
            b"VA 1\r\nx\r\n"
        );
    }
    // Load runs while the master dies.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let loader = scope.spawn(|| load(port, &stop));
        wait_until("some load", Duration::from_secs(10), || {
            text(&exchange(replica.port, b"stats\r\n")).contains("STAT cmd_set ")
        });
        master.kill();
        // Writes keep landing on the replica after the master is gone.
        let before = stat(replica.port, "cmd_set");
        wait_until("writes on the replica", Duration::from_secs(10), || {
            stat(replica.port, "cmd_set") > before + 200
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (done, failures) = loader.join().unwrap();
        assert!(
            failures.is_empty(),
            "{} of {done} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(3)]
        );
    });
    // The shard was not ejected: its keys did not move.
    let ejections = format!(
        "ringproxy_server_ejections_total{{pool=\"main\",server=\"rep\",role=\"master\",address=\"{}\"}}",
        master.addr()
    );
    let metrics = proxy.http("/metrics").1;
    assert!(metrics.contains(&ejections), "{metrics}");
    assert_eq!(metric(&metrics, &ejections), 0);
    for k in &on_rep {
        assert_eq!(
            text(&exchange(port, format!("get {k}\r\n").as_bytes())),
            format!("VALUE {k} 0 1\r\nx\r\nEND\r\n")
        );
    }
    // The master returns empty; it is flushed before it serves, and reads go back to it.
    master.restart();
    wait_until("master back", Duration::from_secs(10), || {
        proxy.http("/metrics").1.contains(&format!(
            "ringproxy_server_up{{pool=\"main\",server=\"rep\",role=\"master\",address=\"{}\"}} 1",
            master.addr()
        ))
    });
    assert_eq!(
        text(&exchange(port, b"set back 0 0 1\r\nb\r\nget back\r\n")),
        "STORED\r\nVALUE back 0 1\r\nb\r\nEND\r\n"
    );
}

fn stat(port: u16, name: &str) -> u64 {
    let stats = text(&exchange(port, b"stats\r\n"));
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("STAT {name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_client_that_leaves_mid_value_does_not_disturb_others() {
    let (_servers, port, _proxy) = shards(1, "");
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(b"set half 0 0 100\r\nonly a little").unwrap();
    drop(c);
    assert_eq!(
        text(&exchange(port, b"get half\r\nset ok 0 0 1\r\n1\r\n")),
        "END\r\nSTORED\r\n"
    );
}

#[test]
fn a_replicated_node_that_missed_writes_is_flushed_before_it_serves_again() {
    let master = Server::memcached();
    let replica = Server::memcached();
    let servers = [format!(
        "{{ name: rep, master: {}, replicas: [{}] }}",
        master.addr(),
        replica.addr()
    )];
    let (port, proxy) = memcache_pool(
        &servers,
        "    timeout_ms: 200\n    health_check: { interval_ms: 50, timeout_ms: 50, failures: 1 }\n",
    );
    proxy.wait_ready(true);
    assert_eq!(
        text(&exchange(port, b"set k 0 0 3\r\nold\r\n")),
        "STORED\r\n"
    );
    // The master stops answering: the write lands on the replica alone.
    master.signal("-STOP");
    assert_eq!(
        text(&exchange(port, b"set k 0 0 3\r\nnew\r\nget k\r\n")),
        "STORED\r\nVALUE k 0 3\r\nnew\r\nEND\r\n"
    );
    // It comes back still holding the old value; it is emptied before reads return to it.
    master.signal("-CONT");
    let labels = format!(
        "{{pool=\"main\",server=\"rep\",role=\"master\",address=\"{}\"}}",
        master.addr()
    );
    wait_until("master flushed", Duration::from_secs(10), || {
        proxy
            .http("/metrics")
            .1
            .contains(&format!("ringproxy_server_flushes_total{labels} 1"))
    });
    // Empty, or holding the write that was still in its socket when it froze: never the old
    // value.
    let held = text(&exchange(master.port, b"mg k v\r\n"));
    assert!(held == "EN\r\n" || held == "VA 3\r\nnew\r\n", "{held}");
    let got = text(&exchange(port, b"get k\r\n"));
    assert_ne!(got, "VALUE k 0 3\r\nold\r\nEND\r\n");
}

#[test]
fn a_binary_protocol_request_gets_a_binary_error_and_the_connection_closes() {
    let (_servers, port, _proxy) = shards(1, "");
    let mut c = Raw::connect(port);
    // A binary GET of key "k": magic, opcode 0x00, key length 1, body length 1, opaque.
    let mut get = vec![
        0x80, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef,
    ];
    get.extend_from_slice(&[0; 8]);
    get.push(b'k');
    c.send(&get);
    let header = c.read_n(24);
    // Response magic, the opcode, status 0x0081 (unknown command), the opaque echoed.
    assert_eq!(&header[..2], &[0x81, 0x00]);
    assert_eq!(&header[6..8], &[0x00, 0x81]);
    assert_eq!(&header[12..16], &[0xde, 0xad, 0xbe, 0xef]);
    let len = u32::from_be_bytes(header[8..12].try_into().unwrap()) as usize;
    let why = String::from_utf8(c.read_n(len)).unwrap();
    assert!(why.contains("binary protocol"), "{why}");
    assert!(c.is_closed());
}

#[test]
fn control_bytes_in_a_key_cannot_shift_replies_between_requests() {
    let (servers, port, _proxy) = shards(1, "");
    // Why the proxy refuses them: memcached reads the line only up to the NUL, and then the
    // value as a command of its own, so it answers one request with two lines.
    let direct = exchange(servers[0].port, b"set k\0y 0 0 1\r\nx\r\n");
    assert_eq!(text(&direct), "ERROR\r\nERROR\r\n");

    let mut victim = Raw::connect(port);
    victim.roundtrip(b"set victimkey 0 0 6\r\nsecret\r\n", b"STORED\r\n");
    let mut attacker = Raw::connect(port);
    let mut script = Vec::new();
    for bad in [
        &b"set k\0y 0 0 1\r\nx\r\n"[..],
        b"set k\0y 0 0 1 noreply\r\nx\r\n",
        b"ms k\0 1\r\nx\r\n",
        b"delete k\0x noreply\r\n",
        b"get a\x01b\r\n",
        b"incr k\x7f 1\r\n",
    ] {
        script.extend_from_slice(bad);
        script.extend_from_slice(b"get missing\r\n");
    }
    let got = exchange_on(&mut attacker, &script);
    assert_eq!(
        text(&got),
        "CLIENT_ERROR bad command line format\r\nEND\r\n".repeat(6)
    );
    let got = exchange_on(&mut victim, b"get victimkey\r\nget missing\r\n");
    assert_eq!(
        text(&got),
        "VALUE victimkey 0 6\r\nsecret\r\nEND\r\nEND\r\n"
    );
}

#[test]
fn large_gets_and_sets_pipelined_to_one_memcached_never_wedge_its_connection() {
    // memcached stops reading requests while its replies wait unread: a connection that
    // stopped reading replies while it wrote would wait on it for ever.
    let (_servers, port, _proxy) = shards(1, "");
    let value = vec![b'v'; 1024 * 1024 - 512];
    let set = |key: &str| {
        let mut req = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
        req.extend_from_slice(&value);
        req.extend_from_slice(b"\r\n");
        req
    };
    let mut c = Raw::connect(port);
    c.send(&set("big"));
    assert_eq!(c.read_line(), "STORED\r\n");
    let mut pipeline = Vec::new();
    for n in 0..16 {
        pipeline.extend_from_slice(b"get big\r\n");
        pipeline.extend(set(&format!("big{n}")));
    }
    let writer = std::thread::spawn(move || {
        c.send(&pipeline);
        c
    });
    let mut c = writer.join().unwrap();
    let value_line = format!("VALUE big 0 {}\r\n", value.len());
    for n in 0..16 {
        assert_eq!(c.read_line(), value_line, "get {n}");
        let _ = c.read_n(value.len() + 2);
        assert_eq!(c.read_line(), "END\r\n");
        assert_eq!(c.read_line(), "STORED\r\n", "set {n}");
    }
    // Another client of the same memcached is served.
    assert_eq!(text(&exchange(port, b"mg big15\r\n")), "HD\r\n");
}
