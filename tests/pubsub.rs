//! Pub/Sub through ringproxy with real redis-server shards: channels on the shard their name
//! hashes to, patterns on every shard with each message delivered once, RESP2 subscribed-mode
//! rules, RESP3 pushes, introspection, and resubscription after a shard restarts.

mod common;

use std::time::Duration;

use common::*;
use redis::Commands;

/// Channels whose names put them on every shard of `proxy`, one per shard.
fn channels_on_every_shard(proxy: &Proxy, shards: usize, prefix: &str) -> Vec<String> {
    (0..shards).map(|i| proxy.key_on(i, prefix)).collect()
}

fn push3(kind: &str, name: &str, count: i64) -> Vec<u8> {
    format!(
        "*3\r\n${}\r\n{kind}\r\n${}\r\n{name}\r\n:{count}\r\n",
        kind.len(),
        name.len()
    )
    .into_bytes()
}

/// SUBSCRIBE to every one of `channels` in one command; the confirmations, counting up.
fn subscribe_all(sub: &mut Raw, channels: &[String]) {
    let mut subscribe = vec![&b"SUBSCRIBE"[..]];
    subscribe.extend(channels.iter().map(|c| c.as_bytes()));
    let confirmations: Vec<u8> = channels
        .iter()
        .enumerate()
        .flat_map(|(i, c)| push3("subscribe", c, i as i64 + 1))
        .collect();
    sub.roundtrip(&command(&subscribe), &confirmations);
}

fn message(channel: &str, payload: &str) -> Vec<u8> {
    format!(
        "*3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{payload}\r\n",
        channel.len(),
        payload.len()
    )
    .into_bytes()
}

#[test]
fn channels_and_patterns_across_shards_in_resp2() {
    let (shards, port, proxy) = three_shards("s", "");
    let channels = channels_on_every_shard(&proxy, shards.len(), "news.");
    let mut sub = Raw::connect(port);
    let mut publisher = connect(port);
    subscribe_all(&mut sub, &channels);
    // Only the subscribed-mode commands are allowed; PING answers as a message.
    sub.roundtrip(
        &command(&[b"GET", b"k"]),
        b"-ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context\r\n",
    );
    sub.roundtrip(&command(&[b"PING"]), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    // Confirmed means subscribed on the shard: the next PUBLISH reaches the client.
    for (i, c) in channels.iter().enumerate() {
        let receivers: i64 = publisher.publish(c, format!("hello {i}")).unwrap();
        assert_eq!(receivers, 1, "{c}");
    }
    // Messages from different shards may arrive in any order.
    let mut want: Vec<Vec<u8>> = channels
        .iter()
        .enumerate()
        .map(|(i, c)| message(c, &format!("hello {i}")))
        .collect();
    while !want.is_empty() {
        let got = read_message(&mut sub);
        let at = want.iter().position(|w| *w == got);
        assert!(
            at.is_some(),
            "unexpected {:?}",
            String::from_utf8_lossy(&got)
        );
        want.swap_remove(at.unwrap_or_default());
    }
    // A pattern spans every shard; each message comes once.
    sub.roundtrip(
        &command(&[b"PSUBSCRIBE", b"news.*"]),
        &push3("psubscribe", "news.*", channels.len() as i64 + 1),
    );
    sub.roundtrip(
        &command(&[b"UNSUBSCRIBE"]),
        &channels
            .iter()
            .enumerate()
            .flat_map(|(i, c)| push3("unsubscribe", c, (channels.len() - i) as i64))
            .collect::<Vec<u8>>(),
    );
    // Confirmed means unsubscribed on the shards: only the pattern is left.
    for c in &channels {
        let subscribers: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(c)
            .query(&mut publisher)
            .unwrap();
        assert_eq!(subscribers[0].1, 0, "{c}");
    }
    for c in &channels {
        let n: i64 = publisher.publish(c, "via pattern").unwrap();
        assert_eq!(n, 1, "one receiver: the pattern on the channel's shard");
    }
    let mut delivered = 0;
    while delivered < channels.len() {
        let got = String::from_utf8_lossy(&read_message(&mut sub)).to_string();
        assert!(
            got.starts_with("*4\r\n$8\r\npmessage\r\n$6\r\nnews.*\r\n"),
            "{got}"
        );
        if got.ends_with("via pattern\r\n") {
            delivered += 1;
        }
    }
    // Last unsubscription: back to normal commands.
    sub.roundtrip(
        &command(&[b"PUNSUBSCRIBE"]),
        &push3("punsubscribe", "news.*", 0),
    );
    sub.roundtrip(&command(&[b"GET", b"nothing"]), b"$-1\r\n");
    sub.roundtrip(
        &command(&[b"UNSUBSCRIBE"]),
        b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n",
    );
}

/// Reads one RESP array frame (a message) from a raw connection.
fn read_message(c: &mut Raw) -> Vec<u8> {
    let header = c.read_line();
    let n: usize = header[1..header.len() - 2].parse().unwrap();
    let mut frame = header.into_bytes();
    for _ in 0..n {
        let len_line = c.read_line();
        let len: usize = len_line[1..len_line.len() - 2].parse().unwrap();
        frame.extend_from_slice(len_line.as_bytes());
        frame.extend_from_slice(&c.read_n(len + 2));
    }
    frame
}

#[test]
fn resp3_clients_get_pushes_and_keep_issuing_commands() {
    let (_shards, port, _proxy) = three_shards("s", "");
    let mut sub = Raw::connect(port);
    sub.send(&command(&[b"HELLO", b"3"]));
    assert_eq!(sub.read_line(), "%8\r\n");
    // The reply ends with the empty module list.
    while sub.read_line() != "*0\r\n" {}
    sub.roundtrip(
        &command(&[b"SUBSCRIBE", b"r3"]),
        b">3\r\n$9\r\nsubscribe\r\n$2\r\nr3\r\n:1\r\n",
    );
    sub.roundtrip(&command(&[b"SET", b"r3key", b"v"]), b"+OK\r\n");
    let mut publisher = connect(port);
    assert_eq!(publisher.publish::<_, _, i64>("r3", "x").unwrap(), 1);
    assert_eq!(sub.read_line(), ">3\r\n");
    assert_eq!(sub.read_line(), "$7\r\n");
}

#[test]
fn introspection_and_resubscription_after_a_shard_restart() {
    let (mut shards, port, proxy) = three_shards("s", "");
    let channels = channels_on_every_shard(&proxy, shards.len(), "intro.");
    let mut client = connect(port);
    let mut pubsub = client.as_pubsub();
    for c in &channels {
        pubsub.subscribe(c).unwrap();
    }
    pubsub.psubscribe("intro.*").unwrap();
    let mut c = connect(port);
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(&channels)
        .query(&mut c)
        .unwrap();
    assert!(counts.iter().all(|(_, n)| *n == 1), "{counts:?}");
    let mut listed: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("intro.*")
        .query(&mut c)
        .unwrap();
    listed.sort();
    let mut want = channels.clone();
    want.sort();
    assert_eq!(listed, want);
    let numpat: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut c).unwrap();
    assert_eq!(numpat, 1);
    // A shard restarts: the proxy subscribes again there, and messages flow.
    shards[0].kill();
    shards[0].restart();
    pubsub
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    wait_until("resubscribed", Duration::from_secs(20), || {
        let receivers: i64 = c.publish(&channels[0], "after restart").unwrap_or(0);
        receivers == 2
    });
    let mut got = None;
    wait_until("message after restart", Duration::from_secs(10), || {
        if let Ok(m) = pubsub.get_message() {
            let payload: String = m.get_payload().unwrap();
            if payload == "after restart" {
                got = Some(m.get_channel_name().to_string());
            }
        }
        got.is_some()
    });
    assert_eq!(got.unwrap(), channels[0]);
    // The client leaves: its subscriber connections close.
    drop(pubsub);
    drop(client);
    wait_until("subscriptions gone", Duration::from_secs(10), || {
        let n: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut c).unwrap();
        n == 0
    });
}

#[test]
fn reset_leaves_every_subscription_as_redis_does() {
    let (_shards, port, _proxy) = three_shards("r", "");
    let mut sub = Raw::connect(port);
    sub.roundtrip(
        &command(&[b"SUBSCRIBE", b"news"]),
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
    );
    sub.roundtrip(&command(&[b"RESET"]), b"+RESET\r\n");
    // Out of subscribed mode: PING answers as a normal command, any command runs.
    sub.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
    sub.roundtrip(&command(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    // The backend subscription is gone: nobody receives what is published.
    let mut publisher = Raw::connect(port);
    wait_until(
        "the backend subscription dropped",
        Duration::from_secs(10),
        || {
            publisher.send(&command(&[b"PUBLISH", b"news", b"x"]));
            publisher.read_line() == ":0\r\n"
        },
    );
}

/// Redis's promise, kept across shards: once a client has its confirmation, PUBLISH counts it;
/// once it has its UNSUBSCRIBE confirmation, PUBLISH no longer does.
#[test]
fn confirmations_come_when_the_shards_have_made_the_change() {
    let (shards, port, proxy) = three_shards("c", "");
    let mut sub = Raw::connect(port);
    let mut publisher = Raw::connect(port);
    let publish = |publisher: &mut Raw, channel: &str| {
        publisher.send(&command(&[b"PUBLISH", channel.as_bytes(), b"m"]));
        publisher.read_line()
    };
    for round in 0..20 {
        let channels = channels_on_every_shard(&proxy, shards.len(), &format!("r{round}."));
        subscribe_all(&mut sub, &channels);
        for c in &channels {
            assert_eq!(publish(&mut publisher, c), ":1\r\n", "round {round}, {c}");
            assert_eq!(read_message(&mut sub), message(c, "m"));
        }
        let confirmations: Vec<u8> = channels
            .iter()
            .enumerate()
            .flat_map(|(i, c)| push3("unsubscribe", c, (channels.len() - i - 1) as i64))
            .collect();
        sub.roundtrip(&command(&[b"UNSUBSCRIBE"]), &confirmations);
        for c in &channels {
            assert_eq!(publish(&mut publisher, c), ":0\r\n", "round {round}, {c}");
        }
    }
}

/// A shard that confirms nothing (paused) does not hold a client's confirmation past the
/// pool's timeout, whether it subscribes or leaves its last channel.
#[test]
fn a_silent_shard_does_not_hold_confirmations() {
    let redis = Redis::start();
    let (port, _proxy) = pool_over_one(&redis, "    timeout_ms: 300\n");
    let mut sub = Raw::connect(port);
    sub.roundtrip(
        &command(&[b"SUBSCRIBE", b"quiet"]),
        b"*3\r\n$9\r\nsubscribe\r\n$5\r\nquiet\r\n:1\r\n",
    );
    let mut direct = Raw::connect(redis.port);
    direct.roundtrip(
        &command(&[b"CLIENT", b"PAUSE", b"4000", b"ALL"]),
        b"+OK\r\n",
    );
    let asked = std::time::Instant::now();
    sub.roundtrip(
        &command(&[b"UNSUBSCRIBE"]),
        b"*3\r\n$11\r\nunsubscribe\r\n$5\r\nquiet\r\n:0\r\n",
    );
    let waited = asked.elapsed();
    assert!(
        waited < Duration::from_millis(3000),
        "confirmed after {waited:?}, while the shard was paused for 4 s"
    );
    sub.roundtrip(b"PING\r\n", b"+PONG\r\n");
}

/// Reads from `sub` until what it read ends with `tail`.
fn read_until_ending(sub: &mut Raw, tail: &[u8]) {
    let mut last = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while !last.ends_with(tail) {
        let read = std::io::Read::read(&mut sub.stream, &mut buf).unwrap();
        assert!(read > 0, "closed");
        last.extend_from_slice(&buf[..read]);
        let keep = last.len().saturating_sub(tail.len());
        last.drain(..keep);
    }
}

#[test]
fn a_hundred_thousand_subscriptions_take_well_under_a_second_and_cost_others_nothing() {
    let (_shards, port, _proxy) = three_shards("s", "");
    let channels: Vec<String> = (0..100_000).map(|i| format!("chan:{i}")).collect();
    let mut sub = Raw::connect(port);
    let mut other = Raw::connect(port);
    let started = std::time::Instant::now();
    // In batches of 1,000 names, pipelined: 100 SUBSCRIBE commands.
    let mut pipeline = Vec::new();
    for batch in channels.chunks(1_000) {
        let mut subscribe = vec![&b"SUBSCRIBE"[..]];
        subscribe.extend(batch.iter().map(|c| c.as_bytes()));
        pipeline.extend(command(&subscribe));
    }
    sub.send(&pipeline);
    // Meanwhile another client's PINGs are answered at once.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let asked = std::time::Instant::now();
        other.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
        slowest = slowest.max(asked.elapsed());
    }
    // The last confirmation counts them all.
    read_until_ending(&mut sub, b"$10\r\nchan:99999\r\n:100000\r\n");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    // And a message still finds its subscription among them.
    let mut publisher = connect(port);
    let _: i64 = publisher.publish("chan:99999", "hi").unwrap();
    sub.roundtrip(b"", &message("chan:99999", "hi"));
    println!("100,000 subscriptions in {took:?}; another client's slowest PING {slowest:?}");
}

#[test]
fn a_subscription_the_server_refuses_gets_its_error_and_is_not_made() {
    let redis = Redis::start();
    let mut admin = redis.client();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", "app", "on", ">pw", "~*", "&ok.*", "+@all"])
        .query(&mut admin)
        .unwrap();
    let (port, _proxy) = pool_over_one(
        &redis,
        "    backend_auth: { username: app, password: pw }\n",
    );
    let mut sub = Raw::connect(port);
    let refused = command(&[b"SUBSCRIBE", b"secret"]);
    sub.send(&refused);
    let line = sub.read_line();
    assert!(line.starts_with("-NOPERM"), "{line}");
    // Not in subscribed mode: any command works, as after a refused SUBSCRIBE on one server.
    sub.roundtrip(&command(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    // A channel the user may use is subscribed, and counted alone.
    sub.roundtrip(
        &command(&[b"SUBSCRIBE", b"ok.1"]),
        &push3("subscribe", "ok.1", 1),
    );
    let _: i64 = admin.publish("ok.1", "hello").unwrap();
    assert_eq!(
        sub.read_n(message("ok.1", "hello").len()),
        message("ok.1", "hello")
    );
    // A refusal while subscribed leaves the other subscriptions as they were.
    sub.send(&command(&[b"PSUBSCRIBE", b"secret.*"]));
    let line = sub.read_line();
    assert!(line.starts_with("-NOPERM"), "{line}");
    sub.roundtrip(
        &command(&[b"UNSUBSCRIBE"]),
        &push3("unsubscribe", "ok.1", 0),
    );
}
