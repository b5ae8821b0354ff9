//! CLIENT TRACKING through the proxy, against real redis-servers: clients hear of the keys
//! they read changing (written through the proxy or on a server itself), in RESP3 pushes or,
//! for RESP2, redirected to a subscribed client; OPTIN, OPTOUT, NOLOOP and BCAST as a server
//! offers them; everything is invalidated when the proxy loses a tracking connection.

mod common;

use std::time::Duration;

use common::*;
use redis::Commands;

/// One redis-server behind a pool with a near cache (pool `main`), and one without (`plain`).
fn setup() -> (Redis, Proxy, u16, u16) {
    let server = Redis::start();
    let (port, plain) = (free_port(), free_port());
    let config = format!(
        "pools:
  main:
    listen: 127.0.0.1:{port}
    allow_flush: true
    near_cache: {{ max_bytes: 16777216 }}
    servers: [\"{addr}:1 s0\"]
  plain:
    listen: 127.0.0.1:{plain}
    servers: [\"{addr}:1 s0\"]
",
        addr = server.addr()
    );
    let proxy = Proxy::start(&config, port);
    wait_until("tracking on", Duration::from_secs(5), || {
        proxy
            .http("/topology")
            .1
            .contains("\"tracking\":{\"on\":true")
    });
    (server, proxy, port, plain)
}

/// CLIENT TRACKING for the keys under `user:`.
const USER_BCAST: &[&[u8]] = &[b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"PREFIX", b"user:"];

const PUSH_ALL: &str = ">2\r\n$10\r\ninvalidate\r\n_\r\n";

fn expect(c: &mut Raw, want: &str) {
    let got = c.read_n(want.len());
    assert_eq!(String::from_utf8_lossy(&got), want);
}

/// Nothing is waiting before the reply to a PING.
fn nothing_pending(c: &mut Raw) {
    c.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
}

fn set(port: u16, key: &str, value: &str) {
    let _: () = connect(port).set(key, value).unwrap();
}

#[test]
fn resp3_clients_hear_of_the_keys_they_read() {
    let (server, _proxy, port, plain) = setup();
    let mut c = resp3(port);
    c.roundtrip(&command(&[b"CLIENT", b"TRACKING", b"ON"]), b"+OK\r\n");
    c.roundtrip(&command(&[b"GET", b"k"]), b"_\r\n");
    // Written through the proxy by another client: told at once.
    set(port, "k", "1");
    expect(&mut c, &push("k"));
    // Told once per read: another write says nothing until k is read again.
    set(port, "k", "2");
    nothing_pending(&mut c);
    c.roundtrip(&command(&[b"GET", b"k"]), b"$1\r\n2\r\n");
    // Written on the server itself, or through a pool without tracking: the server says so.
    let _: () = server.client().set("k", "3").unwrap();
    expect(&mut c, &push("k"));
    c.roundtrip(&command(&[b"GET", b"k"]), b"$1\r\n3\r\n");
    set(plain, "k", "4");
    expect(&mut c, &push("k"));
    // A read the server does not track for the proxy (not a cached command) is invalidated
    // right after its reply: the client keeps nothing it would not hear about.
    c.roundtrip(
        &command(&[b"XLEN", b"s"]),
        format!(":0\r\n{}", push("s")).as_bytes(),
    );
    // FLUSHALL through the proxy: every key.
    c.roundtrip(&command(&[b"GET", b"k"]), b"$1\r\n4\r\n");
    let _: () = redis::cmd("FLUSHALL").query(&mut connect(port)).unwrap();
    expect(&mut c, PUSH_ALL);
    // Off: nothing more.
    c.roundtrip(&command(&[b"CLIENT", b"TRACKING", b"OFF"]), b"+OK\r\n");
    c.roundtrip(&command(&[b"GET", b"k"]), b"_\r\n");
    set(port, "k", "5");
    nothing_pending(&mut c);
}

#[test]
fn resp2_clients_redirect_to_a_subscribed_client() {
    let (_server, _proxy, port, _) = setup();
    let mut listener = Raw::connect(port);
    listener.send(&command(&[b"CLIENT", b"ID"]));
    let id = listener.read_line()[1..].trim().to_string();
    listener.roundtrip(
        &command(&[b"SUBSCRIBE", b"__redis__:invalidate"]),
        b"*3\r\n$9\r\nsubscribe\r\n$20\r\n__redis__:invalidate\r\n:1\r\n",
    );
    let mut c = Raw::connect(port);
    let on = [
        &b"CLIENT"[..],
        b"TRACKING",
        b"ON",
        b"REDIRECT",
        id.as_bytes(),
    ];
    c.roundtrip(&command(&on), b"+OK\r\n");
    c.roundtrip(
        &command(&[b"CLIENT", b"GETREDIR"]),
        format!(":{id}\r\n").as_bytes(),
    );
    c.roundtrip(&command(&[b"MGET", b"a", b"b"]), b"*2\r\n$-1\r\n$-1\r\n");
    set(port, "b", "1");
    expect(
        &mut listener,
        "*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nb\r\n",
    );
    c.roundtrip(
        &command(&[b"CLIENT", b"TRACKINGINFO"]),
        format!("*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$8\r\nredirect\r\n:{id}\r\n$8\r\nprefixes\r\n*0\r\n").as_bytes(),
    );
    // Redirecting to a client that does not exist.
    c.roundtrip(
        &command(&[b"CLIENT", b"TRACKING", b"ON", b"REDIRECT", b"999999"]),
        b"-ERR The client ID you want redirect to does not exist\r\n",
    );
}

#[test]
fn optin_optout_and_noloop_as_a_server_offers_them() {
    let (_server, _proxy, port, _) = setup();
    let mut c = resp3(port);
    let on = |how: &[u8]| command(&[b"CLIENT", b"TRACKING", b"ON", how]);
    c.roundtrip(&on(b"OPTIN"), b"+OK\r\n");
    c.roundtrip(&command(&[b"GET", b"k"]), b"_\r\n");
    set(port, "k", "1");
    nothing_pending(&mut c);
    c.roundtrip(&command(&[b"CLIENT", b"CACHING", b"YES"]), b"+OK\r\n");
    c.roundtrip(&command(&[b"GET", b"k"]), b"$1\r\n1\r\n");
    set(port, "k", "2");
    expect(&mut c, &push("k"));
    c.roundtrip(
        &command(&[b"CLIENT", b"CACHING", b"NO"]),
        b"-ERR CLIENT CACHING NO is only valid when tracking is enabled in OPTOUT mode.\r\n",
    );
    c.roundtrip(
        &on(b"OPTOUT"),
        b"-ERR You can't switch OPTIN/OPTOUT mode before disabling tracking for this client, and then re-enabling it with a different mode.\r\n",
    );
    c.roundtrip(&command(&[b"CLIENT", b"TRACKING", b"OFF"]), b"+OK\r\n");
    c.roundtrip(&on(b"OPTOUT"), b"+OK\r\n");
    c.roundtrip(&command(&[b"CLIENT", b"CACHING", b"NO"]), b"+OK\r\n");
    c.roundtrip(&command(&[b"GET", b"k"]), b"$1\r\n2\r\n");
    set(port, "k", "3");
    nothing_pending(&mut c);
    c.roundtrip(&command(&[b"CLIENT", b"TRACKING", b"OFF"]), b"+OK\r\n");
    // Without NOLOOP, told of its own write right after the write's reply, as by a server. (A
    // key of its own: the server's invalidation of an earlier write may still be on its way.)
    c.roundtrip(&command(&[b"CLIENT", b"TRACKING", b"ON"]), b"+OK\r\n");
    c.roundtrip(&command(&[b"GET", b"own"]), b"_\r\n");
    let told = format!("+OK\r\n{}", push("own"));
    c.roundtrip(&command(&[b"SET", b"own", b"1"]), told.as_bytes());
    c.roundtrip(&command(&[b"CLIENT", b"TRACKING", b"OFF"]), b"+OK\r\n");
    // NOLOOP: not told of its own writes, told of others'.
    c.roundtrip(&on(b"NOLOOP"), b"+OK\r\n");
    c.roundtrip(&command(&[b"GET", b"loop"]), b"_\r\n");
    c.roundtrip(&command(&[b"SET", b"loop", b"4"]), b"+OK\r\n");
    nothing_pending(&mut c);
    c.roundtrip(&command(&[b"GET", b"loop"]), b"$1\r\n4\r\n");
    set(port, "loop", "5");
    expect(&mut c, &push("loop"));
}

#[test]
fn bcast_clients_hear_every_change_to_their_prefixes() {
    let (server, _proxy, port, _) = setup();
    let mut c = resp3(port);
    // OK once the server hears every change for the proxy.
    c.roundtrip(&command(USER_BCAST), b"+OK\r\n");
    // Keys never read, written on the server itself.
    let _: () = server.client().set("other:1", "x").unwrap();
    let _: () = server.client().set("user:1", "x").unwrap();
    expect(&mut c, &push("user:1"));
    set(port, "user:2", "y");
    expect(&mut c, &push("user:2"));
    // The keys of one write, in one message.
    let _: () = server
        .client()
        .mset(&[("user:3", "z"), ("other:2", "z"), ("user:4", "z")])
        .unwrap();
    expect(
        &mut c,
        ">2\r\n$10\r\ninvalidate\r\n*2\r\n$6\r\nuser:3\r\n$6\r\nuser:4\r\n",
    );
    c.roundtrip(
        &command(&[b"CLIENT", b"TRACKINGINFO"]),
        b"%3\r\n$5\r\nflags\r\n~2\r\n$2\r\non\r\n$5\r\nbcast\r\n$8\r\nredirect\r\n:0\r\n$8\r\nprefixes\r\n*1\r\n$5\r\nuser:\r\n",
    );
    c.roundtrip(
        &command(&[b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"PREFIX", b"user:x"]),
        b"-ERR Prefix 'user:x' overlaps with an existing prefix 'user:'. Prefixes for a single client must not overlap.\r\n",
    );
}

#[test]
fn a_lost_tracking_connection_invalidates_everything() {
    let (server, _proxy, port, _) = setup();
    let mut c = resp3(port);
    c.roundtrip(&command(&[b"CLIENT", b"TRACKING", b"ON"]), b"+OK\r\n");
    c.roundtrip(&command(&[b"GET", b"k"]), b"_\r\n");
    server.kill_clients();
    expect(&mut c, PUSH_ALL);
}

#[test]
fn bad_requests_get_a_servers_errors() {
    let (_server, _proxy, port, plain) = setup();
    let mut c = Raw::connect(port);
    let cases: [(&[&[u8]], &str); 6] = [
        (
            &[b"CLIENT", b"TRACKING", b"ON", b"PREFIX", b"a"],
            "-ERR PREFIX option requires BCAST mode to be enabled\r\n",
        ),
        (
            &[b"CLIENT", b"TRACKING", b"ON", b"OPTIN", b"OPTOUT"],
            "-ERR You can't specify both OPTIN mode and OPTOUT mode\r\n",
        ),
        (
            &[b"CLIENT", b"TRACKING", b"ON", b"BCAST", b"OPTIN"],
            "-ERR OPTIN and OPTOUT are not compatible with BCAST\r\n",
        ),
        (&[b"CLIENT", b"TRACKING", b"MAYBE"], "-ERR syntax error\r\n"),
        (
            &[b"CLIENT", b"CACHING", b"YES"],
            "-ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled\r\n",
        ),
        (
            &[b"CLIENT", b"TRACKINGINFO"],
            "*6\r\n$5\r\nflags\r\n*1\r\n$3\r\noff\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n",
        ),
    ];
    for (request, reply) in cases {
        c.roundtrip(&command(request), reply.as_bytes());
    }
    // A pool without a near cache hears no invalidations, and says so.
    Raw::connect(plain).roundtrip(
        &command(&[b"CLIENT", b"TRACKING", b"ON"]),
        b"-ERR client tracking through this proxy needs the pool's near_cache: only there does it hear its servers' invalidations\r\n",
    );
}

/// redis-py turns its client-side cache on only for a server that says it is Redis 7.4 or
/// later: a pool states what it announces.
#[test]
fn a_pool_announces_the_version_it_is_told_to() {
    let server = Redis::start();
    let port = free_port();
    let servers = [format!("{}:1 s0", server.addr())];
    let config = pool_config(port, &servers, "    announce_version: \"7.4.0\"\n");
    let _proxy = Proxy::start(&config, port);
    let hello: Vec<redis::Value> = redis::cmd("HELLO")
        .arg(2)
        .query(&mut connect(port))
        .unwrap();
    let text: Vec<String> = hello
        .iter()
        .map(|v| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(&text[..4], ["server", "redis", "version", "7.4.0"]);
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut connect(port))
        .unwrap();
    assert!(info.contains("redis_version:7.4.0\r\n"), "{info}");
}

/// The proxy's connections to the server are killed under a BCAST client: it is told that
/// every key may have changed, and hears its prefixes' changes again once the proxy has
/// reconnected.
#[test]
fn bcast_resumes_after_the_proxys_connections_are_lost() {
    let (server, _proxy, port, _) = setup();
    let mut c = resp3(port);
    c.roundtrip(&command(USER_BCAST), b"+OK\r\n");
    server.kill_clients();
    expect(&mut c, PUSH_ALL);
    // Written on the server until the change is heard: none is before the proxy's broadcast
    // connection is back.
    let mut heard = Vec::new();
    let resumed = poll_until(Duration::from_secs(10), || {
        let _: () = server.client().set("user:7", "x").unwrap();
        c.send(&command(&[b"PING"]));
        loop {
            let line = c.read_line();
            match line.as_str() {
                "+PONG\r\n" => return heard.iter().any(|h: &String| h.contains("user:7")),
                ">2\r\n" => {
                    let mut rest = String::new();
                    for _ in 0..3 {
                        rest.push_str(&c.read_line());
                    }
                    if rest.starts_with("$10\r\ninvalidate\r\n*") {
                        rest.push_str(&c.read_line());
                        rest.push_str(&c.read_line());
                    }
                    heard.push(rest);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    assert!(resumed, "heard only {heard:?}");
}
