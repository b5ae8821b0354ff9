//! A Redis Cluster behind the proxy: real clusters made with `redis-cli --cluster create`
//! (redis-server 7 and valkey-server 8, each test on both), clients that speak to one server,
//! and the cluster's own events (resharding, a manual failover, a master killed) under a
//! checked load: every acknowledged increment is there, no reply goes back, and clients see no
//! error.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::*;
use redis::Commands;

/// A proxy in front of `cluster` (seeded with its first node), its client port, and the
/// pool's extra lines.
fn proxy_for(cluster: &Cluster, extra: &str) -> (Proxy, u16) {
    let port = free_port();
    let config = format!(
        "pools:\n  main:\n    listen: 127.0.0.1:{port}\n    timeout_ms: 2000\n    cluster:\n      seeds: [{}]\n{extra}",
        cluster.nodes[0].addr()
    );
    let proxy = Proxy::start(&config, port);
    proxy.wait_ready(true);
    (proxy, port)
}

fn clients_see_one_server_over_the_cluster(program: Program) {
    let cluster = Cluster::start(program, 3, 1, 2000);
    let (proxy, port) = proxy_for(&cluster, "");
    let mut c = connect(port);
    for i in 0..200 {
        let _: () = c.set(format!("key:{i}"), i).unwrap();
    }
    // Each key is on the node that serves its slot, asked directly.
    for i in (0..200).step_by(17) {
        let key = format!("key:{i}");
        let owner = Cluster::owner_of(&cluster.nodes[0], &key);
        let node = cluster.nodes.iter().find(|n| n.addr() == owner).unwrap();
        let held: Option<i64> = node.client().get(&key).unwrap();
        assert_eq!(held, Some(i), "{key} on {owner}");
    }
    let mut raw = Raw::connect(port);
    // Multi-key commands are split by slot and merged in key order.
    raw.roundtrip(
        &command(&[b"MSET", b"a", b"1", b"b", b"2", b"c", b"3", b"{a}x", b"4"]),
        b"+OK\r\n",
    );
    raw.roundtrip(
        &command(&[b"MGET", b"c", b"nope", b"a", b"{a}x", b"b"]),
        b"*5\r\n$1\r\n3\r\n$-1\r\n$1\r\n1\r\n$1\r\n4\r\n$1\r\n2\r\n",
    );
    raw.roundtrip(&command(&[b"EXISTS", b"a", b"b", b"nope", b"c"]), b":3\r\n");
    // Other multi-key commands need one slot, as on a cluster node.
    raw.roundtrip(
        &command(&[b"RENAME", b"a", b"b"]),
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
    );
    raw.roundtrip(&command(&[b"RENAME", b"a", b"{a}y"]), b"+OK\r\n");
    raw.roundtrip(&command(&[b"DEL", b"{a}y", b"b", b"c", b"nope"]), b":3\r\n");
    let (_, topology) = proxy.http("/topology");
    for range in ["0-5460", "5461-10922", "10923-16383"] {
        assert!(
            topology.contains(&format!("\"name\":\"{range}\"")),
            "{topology}"
        );
    }
}

/// Clients that each INCR their own counters through the proxy until stopped, checking every
/// reply is the one before plus one (nothing lost, nothing counted twice, nothing going back).
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Seen>>,
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// The last value each counter was acknowledged at.
    counts: Vec<i64>,
    /// Requests that failed: the key, when, and the error.
    errors: Vec<(String, Instant, String)>,
    /// Replies that were not the value before plus one.
    odd: Vec<String>,
}

/// What a load saw, all clients together.
struct Outcome {
    errors: Vec<(String, Instant, String)>,
    odd: Vec<String>,
    /// Counters holding less than their client was told at the end: increments lost.
    lost: Vec<String>,
    increments: i64,
}

impl Outcome {
    fn assert_clean(&self) {
        assert!(
            self.errors.is_empty(),
            "{} errors, first: {:?}",
            self.errors.len(),
            self.errors.first()
        );
        assert!(
            self.odd.is_empty(),
            "{} odd replies, first: {:?}",
            self.odd.len(),
            self.odd.first()
        );
        assert!(
            self.lost.is_empty(),
            "{} counters lost increments: {:?}",
            self.lost.len(),
            self.lost
        );
    }
}

impl Load {
    const CLIENTS: usize = 4;
    const KEYS: usize = 50;

    fn key(client: usize, k: usize) -> String {
        format!("counter:{client}:{k}")
    }

    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..Load::CLIENTS)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut c = connect(port);
                    let mut seen = Seen {
                        counts: vec![0; Load::KEYS],
                        ..Seen::default()
                    };
                    // Bounded in count as well as by the test's stop.
                    for round in 0..200_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let k = round % Load::KEYS;
                        let key = Load::key(t, k);
                        match c.incr::<_, _, i64>(&key, 1) {
                            Ok(n) if n == seen.counts[k] + 1 => seen.counts[k] = n,
                            Ok(n) => {
                                seen.odd
                                    .push(format!("{key}: {n} after {}", seen.counts[k]));
                                seen.counts[k] = n;
                            }
                            Err(e) => seen.errors.push((key, Instant::now(), e.to_string())),
                        }
                    }
                    seen
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients, and reads every counter back.
    fn finish(self, port: u16) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut c = connect(port);
        let mut outcome = Outcome {
            errors: Vec::new(),
            odd: Vec::new(),
            lost: Vec::new(),
            increments: 0,
        };
        for (t, thread) in self.threads.into_iter().enumerate() {
            let seen = thread.join().unwrap();
            outcome.errors.extend(seen.errors);
            outcome.odd.extend(seen.odd);
            for (k, acked) in seen.counts.into_iter().enumerate() {
                let held: Option<i64> = c.get(Load::key(t, k)).unwrap();
                if held.unwrap_or(0) < acked {
                    outcome
                        .lost
                        .push(format!("{}: {held:?} < {acked}", Load::key(t, k)));
                }
                outcome.increments += acked;
            }
        }
        outcome
    }
}

/// Waits until the load has made `n` more increments on the counters of `owner` (every
/// counter when `None`), so an event lands while it runs.
fn wait_for_increments(port: u16, n: i64) {
    let mut c = connect(port);
    let total = |c: &mut redis::Connection| -> i64 {
        (0..Load::CLIENTS)
            .flat_map(|t| (0..Load::KEYS).map(move |k| Load::key(t, k)))
            .map(|key| {
                c.get::<_, Option<i64>>(key)
                    .unwrap_or_default()
                    .unwrap_or(0)
            })
            .sum()
    };
    let from = total(&mut c);
    wait_until("increments", Duration::from_secs(30), || {
        total(&mut c) >= from + n
    });
}

fn resharding_there_and_back_loses_nothing_and_shows_no_redirect(program: Program) {
    let cluster = Cluster::start(program, 3, 0, 2000);
    let (proxy, port) = proxy_for(&cluster, "");
    let load = Load::start(port);
    wait_for_increments(port, 20);
    let [a, b, _] = cluster.masters() else {
        unreachable!()
    };
    let started = Instant::now();
    cluster.reshard(a, b, 2000);
    cluster.reshard(b, a, 2000);
    let took = started.elapsed();
    wait_for_increments(port, 20);
    let outcome = load.finish(port);
    outcome.assert_clean();
    println!(
        "4000 slots moved in {took:?} under {} increments: 0 errors",
        outcome.increments
    );
    // The redirects were followed, counted, and had the cluster asked again.
    let metrics = proxy.http("/metrics").1;
    let count = |name: &str| metric(&metrics, &format!("ringproxy_cluster_{name}"));
    let moved = count("redirects_total{pool=\"main\",kind=\"moved\"}");
    let ask = count("redirects_total{pool=\"main\",kind=\"ask\"}");
    assert!(moved > 0, "moved {moved}");
    assert!(count("refreshes_total{pool=\"main\",cause=\"moved\"}") > 0);
    assert!(count("slot_map_changes_total{pool=\"main\"}") >= 2);
    println!("redirects followed: {moved} MOVED, {ask} ASK");
    let (_, topology) = proxy.http("/topology");
    assert!(
        topology.contains("\"slots_served\":16384") && topology.contains("\"agreed\":true"),
        "{topology}"
    );
}

fn a_manual_failover_is_followed_without_errors(program: Program) {
    let cluster = Cluster::start(program, 3, 1, 2000);
    let (proxy, port) = proxy_for(&cluster, "");
    let load = Load::start(port);
    wait_for_increments(port, 20);
    // The replica of each master takes its place, one after the other.
    for replica in &cluster.nodes[3..] {
        let _: () = redis::cmd("CLUSTER")
            .arg("FAILOVER")
            .query(&mut replica.client())
            .unwrap();
        wait_until("the replica to be master", Duration::from_secs(20), || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut replica.client())
                .unwrap();
            info.contains("role:master")
        });
        wait_for_increments(port, 20);
    }
    let outcome = load.finish(port);
    outcome.assert_clean();
    println!(
        "3 manual failovers under {} increments: 0 errors",
        outcome.increments
    );
    // The proxy's map follows: the former replicas are the masters now.
    wait_until("the map to follow", Duration::from_secs(10), || {
        let (_, topology) = proxy.http("/topology");
        cluster.nodes[3..]
            .iter()
            .all(|r| topology.contains(&format!("\"master\":{{\"address\":\"{}\"", r.addr())))
    });
}

fn a_killed_master_costs_only_its_slots_and_only_until_its_replica_takes_over(program: Program) {
    let mut cluster = Cluster::start(program, 3, 1, 1000);
    let (proxy, port) = proxy_for(
        &cluster,
        "    health_check: { interval_ms: 200, timeout_ms: 200 }\n",
    );
    let victim = cluster.nodes[0].addr();
    let on_victim: Vec<String> = (0..Load::CLIENTS)
        .flat_map(|t| (0..Load::KEYS).map(move |k| Load::key(t, k)))
        .filter(|key| Cluster::owner_of(&cluster.nodes[1], key) == victim)
        .collect();
    let heir = cluster.replica_of(&cluster.nodes[0]);
    let load = Load::start(port);
    wait_for_increments(port, 100);
    let killed = Instant::now();
    cluster.nodes[0].signal("-KILL");
    wait_until("the replica to take over", Duration::from_secs(30), || {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut cluster.nodes[heir].client())
            .unwrap();
        info.contains("role:master")
    });
    let promoted = killed.elapsed();
    wait_until("the map to follow", Duration::from_secs(10), || {
        let (_, topology) = proxy.http("/topology");
        topology.contains(&format!(
            "\"master\":{{\"address\":\"{}\",\"up\":true",
            cluster.nodes[heir].addr()
        ))
    });
    wait_for_increments(port, 200);
    let outcome = load.finish(port);
    let last_error = outcome.errors.iter().map(|(_, at, _)| *at).max();
    let elsewhere: Vec<_> = outcome
        .errors
        .iter()
        .filter(|(key, ..)| !on_victim.contains(key))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "errors on other masters' slots: {:?}",
        elsewhere.first()
    );
    let full_service = last_error.map_or(Duration::ZERO, |at| at - killed);
    println!(
        "kill -9 of a master: the cluster promoted its replica after {promoted:?}; {} errors, all on its slots; full service {full_service:?} after the kill; {} increments, {} lost, {} odd",
        outcome.errors.len(),
        outcome.increments,
        outcome.lost.len(),
        outcome.odd.len()
    );
    assert!(
        full_service <= promoted + Duration::from_secs(2),
        "errors went on {full_service:?} after the kill, the replica took over after {promoted:?}"
    );
    cluster.nodes[0].kill();
}

fn cluster_aware_clients_find_one_node_serving_every_slot(program: Program) {
    let cluster = Cluster::start(program, 3, 0, 2000);
    let (_proxy, port) = proxy_for(&cluster, "");
    let mut raw = Raw::connect(port);
    raw.roundtrip(&command(&[b"CLUSTER", b"KEYSLOT", b"foo"]), b":12182\r\n");
    raw.roundtrip(&command(&[b"READONLY"]), b"+OK\r\n");
    let id: String = redis::cmd("CLUSTER")
        .arg("MYID")
        .query(&mut connect(port))
        .unwrap();
    let slots =
        format!("*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:{port}\r\n$40\r\n{id}\r\n");
    raw.roundtrip(&command(&[b"CLUSTER", b"SLOTS"]), slots.as_bytes());
    raw.roundtrip(
        &command(&[b"CLUSTER", b"FAILOVER"]),
        b"-ERR unsupported command 'CLUSTER FAILOVER': the proxy presents the cluster as one node serving every slot: CLUSTER INFO, MYID, KEYSLOT, SLOTS, SHARDS and NODES are answered; ask the cluster's nodes themselves for the rest\r\n",
    );
    assert_eq!(python("cluster_client.py", port).len(), 3);
}

#[test]
fn a_ring_pool_has_cluster_support_disabled() {
    let server = Redis::start();
    let port = free_port();
    let config = format!(
        "pools:\n  main:\n    listen: 127.0.0.1:{port}\n    servers: [{}:1]\n",
        server.addr()
    );
    let _proxy = Proxy::start(&config, port);
    let mut raw = Raw::connect(port);
    for request in [&command(&[b"CLUSTER", b"SLOTS"]), &command(&[b"READONLY"])] {
        raw.roundtrip(
            request,
            b"-ERR This instance has cluster support disabled\r\n",
        );
    }
}

fn a_migrating_slot_is_served_through_ask_then_moved(program: Program) {
    let cluster = Cluster::start(program, 3, 0, 2000);
    let (proxy, port) = proxy_for(&cluster, "");
    let mut raw = Raw::connect(port);
    raw.roundtrip(&command(&[b"SET", b"foo", b"bar"]), b"+OK\r\n");
    let owner = Cluster::owner_of(&cluster.nodes[0], "foo");
    let from = cluster
        .masters()
        .iter()
        .find(|n| n.addr() == owner)
        .unwrap();
    let to = cluster
        .masters()
        .iter()
        .find(|n| n.addr() != owner)
        .unwrap();
    let slot = cluster.migrate(&["foo"], from, to);
    // The key moved, its slot did not yet: the old node answers ASK, never seen by the client.
    raw.roundtrip(&command(&[b"GET", b"foo"]), b"$3\r\nbar\r\n");
    raw.roundtrip(&command(&[b"SET", b"foo", b"baz"]), b"+OK\r\n");
    cluster.give_slot(slot, to);
    // The slot moved: MOVED, followed.
    raw.roundtrip(&command(&[b"GET", b"foo"]), b"$3\r\nbaz\r\n");
    let metrics = proxy.http("/metrics").1;
    let count = |kind: &str| {
        metric(
            &metrics,
            &format!("ringproxy_cluster_redirects_total{{pool=\"main\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!((count("ask"), count("moved")), (2, 1));
    let held: Option<String> = to.client().get("foo").unwrap();
    assert_eq!(held.as_deref(), Some("baz"));
}

/// Gives the slot of `keys` (all of its keys) to another master of `cluster`, without the
/// proxy hearing of it; returns that master.
fn move_slot<'c>(cluster: &'c Cluster, keys: &[&str]) -> &'c Redis {
    let owner = Cluster::owner_of(&cluster.nodes[0], keys[0]);
    let from = cluster.nodes.iter().find(|n| n.addr() == owner).unwrap();
    let to = cluster
        .masters()
        .iter()
        .find(|n| n.addr() != owner)
        .unwrap();
    let slot = cluster.migrate(keys, from, to);
    cluster.give_slot(slot, to);
    to
}

fn transactions_keep_to_one_slot_and_a_slot_moved_under_one_is_a_clear_error(program: Program) {
    let cluster = Cluster::start(program, 3, 0, 2000);
    let (_proxy, port) = proxy_for(&cluster, "");
    let mut raw = Raw::connect(port);
    raw.roundtrip(&command(&[b"MULTI"]), b"+OK\r\n");
    raw.roundtrip(&command(&[b"SET", b"{t}a", b"1"]), b"+QUEUED\r\n");
    raw.roundtrip(&command(&[b"INCR", b"{t}b"]), b"+QUEUED\r\n");
    raw.roundtrip(&command(&[b"EXEC"]), b"*2\r\n+OK\r\n:1\r\n");
    // Another slot, even on the same node, aborts the transaction as a cluster node does.
    raw.roundtrip(&command(&[b"MULTI"]), b"+OK\r\n");
    raw.roundtrip(&command(&[b"SET", b"{t}a", b"2"]), b"+QUEUED\r\n");
    raw.roundtrip(
        &command(&[b"SET", b"{u}a", b"2"]),
        b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
    );
    raw.roundtrip(
        &command(&[b"EXEC"]),
        b"-EXECABORT Transaction discarded because of previous errors.\r\n",
    );
    // The slot of {t} moves while a transaction is queued: not applied, and said so.
    raw.roundtrip(&command(&[b"MULTI"]), b"+OK\r\n");
    raw.roundtrip(&command(&[b"INCR", b"{t}b"]), b"+QUEUED\r\n");
    let to = move_slot(&cluster, &["{t}a", "{t}b"]);
    raw.send(&command(&[b"EXEC"]));
    let line = raw.read_line();
    assert!(
        line.starts_with(
            "-ERR not applied: the slot moved under a transaction or WATCH (MOVED 15891 "
        ),
        "{line}"
    );
    // The pool hears where the slot went (its keeper applies it a moment later): the
    // transaction, sent again, is served there, once.
    wait_until("the transaction served", Duration::from_secs(10), || {
        raw.roundtrip(&command(&[b"MULTI"]), b"+OK\r\n");
        raw.roundtrip(&command(&[b"INCR", b"{t}b"]), b"+QUEUED\r\n");
        raw.send(&command(&[b"EXEC"]));
        let line = raw.read_line();
        if line.starts_with("-ERR not applied") {
            return false;
        }
        assert_eq!(line, "*1\r\n");
        assert_eq!(raw.read_line(), ":2\r\n");
        true
    });
    let held: Option<i64> = to.client().get("{t}b").unwrap();
    assert_eq!(held, Some(2));
}

fn a_blocking_command_whose_slot_moves_waits_on_the_new_node(program: Program) {
    let cluster = Cluster::start(program, 3, 0, 2000);
    let (proxy, port) = proxy_for(&cluster, "");
    let mut raw = Raw::connect(port);
    raw.send(&command(&[b"BLPOP", b"{b}q", b"0"]));
    let owner = Cluster::owner_of(&cluster.nodes[0], "{b}q");
    let blocked_on = |node: &Redis| {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query(&mut node.client())
            .unwrap();
        info.contains("blocked_clients:1")
    };
    let node = cluster.nodes.iter().find(|n| n.addr() == owner).unwrap();
    wait_until("BLPOP to block", Duration::from_secs(10), || {
        blocked_on(node)
    });
    let to = move_slot(&cluster, &["{b}q"]);
    // The old node lets it go with a MOVED; the proxy has it wait on the new one.
    wait_until(
        "BLPOP to block on the new node",
        Duration::from_secs(10),
        || blocked_on(to),
    );
    let mut other = Raw::connect(port);
    other.roundtrip(&command(&[b"RPUSH", b"{b}q", b"x"]), b":1\r\n");
    let popped = b"*2\r\n$4\r\n{b}q\r\n$1\r\nx\r\n";
    assert_eq!(raw.read_n(popped.len()), popped);
    raw.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
    // A timeout runs from when the client sent the command: the slot moves a second into a
    // 2.5 s wait, and the new node waits what is left, not 2.5 s more.
    let started = Instant::now();
    raw.send(&command(&[b"BLPOP", b"{c}q", b"2.5"]));
    let owner = Cluster::owner_of(&cluster.nodes[0], "{c}q");
    let node = cluster.nodes.iter().find(|n| n.addr() == owner).unwrap();
    wait_until("BLPOP to block", Duration::from_secs(10), || {
        blocked_on(node)
    });
    std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    move_slot(&cluster, &["{c}q"]);
    assert_eq!(raw.read_line(), "*-1\r\n");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2400) && took < Duration::from_millis(3300),
        "{took:?}"
    );
    let metrics = proxy.http("/metrics").1;
    let moved = metric(
        &metrics,
        "ringproxy_cluster_redirects_total{pool=\"main\",kind=\"moved\"}",
    );
    assert!(moved >= 1, "{moved}");
}

fn pubsub_over_a_cluster_delivers_each_message_once(program: Program) {
    let cluster = Cluster::start(program, 3, 0, 2000);
    let (_proxy, port) = proxy_for(&cluster, "");
    let mut sub = Raw::connect(port);
    sub.roundtrip(
        &command(&[b"SUBSCRIBE", b"news"]),
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
    );
    sub.roundtrip(
        &command(&[b"PSUBSCRIBE", b"n*"]),
        b"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:2\r\n",
    );
    sub.roundtrip(
        &command(&[b"SSUBSCRIBE", b"{s}c"]),
        b"*3\r\n$10\r\nssubscribe\r\n$4\r\n{s}c\r\n:1\r\n",
    );
    // Published through the proxy and straight to each node: heard once per subscription.
    let mut publisher = Raw::connect(port);
    publisher.roundtrip(&command(&[b"PUBLISH", b"news", b"a"]), b":2\r\n");
    let message = b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$1\r\na\r\n*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$1\r\na\r\n";
    assert_eq!(sub.read_n(message.len()), message);
    for node in cluster.masters() {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("news")
            .arg("b")
            .query(&mut node.client())
            .unwrap();
        let message = b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$1\r\nb\r\n*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$1\r\nb\r\n";
        assert_eq!(sub.read_n(message.len()), message);
    }
    publisher.roundtrip(&command(&[b"SPUBLISH", b"{s}c", b"x"]), b":1\r\n");
    let smessage = b"*3\r\n$8\r\nsmessage\r\n$4\r\n{s}c\r\n$1\r\nx\r\n";
    assert_eq!(sub.read_n(smessage.len()), smessage);
    // Nothing more: no copy from another node.
    sub.roundtrip(&command(&[b"PING"]), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    // The shard channel's slot moves without the proxy hearing of it: a new SSUBSCRIBE, which
    // the old node answers with a MOVED, is confirmed and made where the slot went.
    move_slot(&cluster, &["{s}c"]);
    let mut again = Raw::connect(port);
    again.roundtrip(
        &command(&[b"SSUBSCRIBE", b"{s}c"]),
        b"*3\r\n$10\r\nssubscribe\r\n$4\r\n{s}c\r\n:1\r\n",
    );
    let publish = command(&[b"SPUBLISH", b"{s}c", b"y"]);
    let smessage = b"*3\r\n$8\r\nsmessage\r\n$4\r\n{s}c\r\n$1\r\ny\r\n";
    heard_once_moved(&mut again, &mut publisher, &publish, smessage);
}

/// How many times `node` ran `command`, by its INFO commandstats.
fn calls(node: &Redis, command: &str) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut node.client())
        .unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

fn replica_reads_go_to_replicas_except_for_a_slot_on_the_move(program: Program) {
    let cluster = Cluster::start(program, 3, 1, 2000);
    let (proxy, port) = proxy_for(&cluster, "    read_from: replica\n");
    let mut c = connect(port);
    let _: () = c.set("foo", "bar").unwrap();
    let owner = Cluster::owner_of(&cluster.nodes[0], "foo");
    let master = cluster.nodes.iter().find(|n| n.addr() == owner).unwrap();
    let replica = &cluster.nodes[cluster.replica_of(master)];
    wait_until("replicated", Duration::from_secs(10), || {
        let mut rc = replica.client();
        let _: () = redis::cmd("READONLY").query(&mut rc).unwrap();
        rc.get::<_, Option<String>>("foo").unwrap().as_deref() == Some("bar")
    });
    // Replicas are listed once the cluster sees them online.
    wait_until("the replica listed", Duration::from_secs(10), || {
        let (_, topology) = proxy.http("/topology");
        topology.contains(&format!(
            "\"replicas\":[{{\"address\":\"{}\",\"up\":true",
            replica.addr()
        ))
    });
    let before = (calls(master, "get"), calls(replica, "get"));
    for _ in 0..20 {
        let got: Option<String> = c.get("foo").unwrap();
        assert_eq!(got.as_deref(), Some("bar"));
    }
    assert_eq!(calls(master, "get"), before.0, "no read reached the master");
    assert_eq!(calls(replica, "get"), before.1 + 20);
    // The slot starts moving; the key moves: its master answers ASK to a write, after which
    // its reads go to masters (the replica would answer nil: it knows nothing of the move).
    let to = cluster
        .masters()
        .iter()
        .find(|n| n.addr() != owner)
        .unwrap();
    cluster.migrate(&["foo"], master, to);
    let _: () = c.set("foo", "baz").unwrap();
    wait_until("the slot read from masters", Duration::from_secs(5), || {
        c.get::<_, Option<String>>("foo").unwrap().as_deref() == Some("baz")
    });
    for _ in 0..20 {
        let got: Option<String> = c.get("foo").unwrap();
        assert_eq!(got.as_deref(), Some("baz"));
    }
}

fn a_node_added_given_slots_then_removed_costs_no_error(program: Program) {
    let mut cluster = Cluster::start(program, 3, 0, 2000);
    let (proxy, port) = proxy_for(&cluster, "");
    let load = Load::start(port);
    wait_for_increments(port, 20);
    let added = cluster.add_node().addr();
    let new = cluster.nodes.len() - 1;
    cluster.reshard(&cluster.nodes[0], &cluster.nodes[new], 1000);
    wait_until("the new node in the map", Duration::from_secs(10), || {
        let (_, topology) = proxy.http("/topology");
        topology.contains(&format!("\"master\":{{\"address\":\"{added}\""))
    });
    wait_for_increments(port, 20);
    cluster.reshard(&cluster.nodes[new], &cluster.nodes[0], 1000);
    cluster.remove_node(new);
    wait_for_increments(port, 20);
    let outcome = load.finish(port);
    outcome.assert_clean();
    println!(
        "a node added, given 1000 slots, emptied and removed under {} increments: 0 errors",
        outcome.increments
    );
    wait_until(
        "the removed node out of the map",
        Duration::from_secs(10),
        || !proxy.http("/topology").1.contains(&added),
    );
}

fn whole_cluster_commands_reach_every_master(program: Program) {
    let cluster = Cluster::start(program, 3, 1, 2000);
    let (_proxy, port) = proxy_for(&cluster, "    allow_keys: true\n    allow_flush: true\n");
    let mut c = connect(port);
    let keys: Vec<String> = (0..300).map(|i| format!("whole:{i}")).collect();
    for key in &keys {
        let _: () = c.set(key, 1).unwrap();
    }
    let size: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(size, 300);
    let mut scanned: Vec<String> = c
        .scan_match("whole:*")
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    scanned.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(scanned, expected);
    let listed: Vec<String> = redis::cmd("KEYS").arg("whole:1?").query(&mut c).unwrap();
    assert_eq!(listed.len(), 10);
    let _: () = redis::cmd("FLUSHALL").query(&mut c).unwrap();
    let size: u64 = redis::cmd("DBSIZE").query(&mut c).unwrap();
    assert_eq!(size, 0);
}

fn a_cluster_with_a_password_is_served_with_backend_auth(program: Program) {
    let cluster = Cluster::start_with_password(program, "s3cret");
    let (proxy, port) = proxy_for(&cluster, "    backend_auth: { password: s3cret }\n");
    let mut raw = Raw::connect(port);
    raw.roundtrip(
        &command(&[b"MSET", b"a", b"1", b"b", b"2", b"c", b"3"]),
        b"+OK\r\n",
    );
    raw.roundtrip(
        &command(&[b"MGET", b"a", b"b", b"c"]),
        b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n",
    );
    let (_, topology) = proxy.http("/topology");
    assert!(topology.contains("\"slots_served\":16384"), "{topology}");
    // Without the password the pool is not ready, and says why.
    let port = free_port();
    let config = format!(
        "pools:\n  main:\n    listen: 127.0.0.1:{port}\n    cluster:\n      seeds: [{}]\n",
        cluster.nodes[0].addr()
    );
    let unauthenticated = Proxy::start(&config, port);
    wait_until("the warning", Duration::from_secs(10), || {
        unauthenticated.log().contains("Authentication required")
    });
    assert_eq!(unauthenticated.http("/ready").0, 503);
}

fn subscriptions_move_off_a_master_that_died(program: Program) {
    let cluster = Cluster::start(program, 3, 1, 1000);
    let (proxy, port) = proxy_for(
        &cluster,
        "    health_check: { interval_ms: 200, timeout_ms: 200 }\n",
    );
    let mut sub = Raw::connect(port);
    sub.roundtrip(
        &command(&[b"SUBSCRIBE", b"news"]),
        b"*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n",
    );
    // Channels live on the master of slot 0, the first created.
    let first = cluster.nodes[0].addr();
    assert_eq!(Cluster::owner_of(&cluster.nodes[1], ""), first);
    let heir = &cluster.nodes[cluster.replica_of(&cluster.nodes[0])];
    cluster.nodes[0].signal("-KILL");
    wait_until("the map to follow", Duration::from_secs(30), || {
        let (_, topology) = proxy.http("/topology");
        topology.contains(&format!(
            "\"master\":{{\"address\":\"{}\",\"up\":true",
            heir.addr()
        ))
    });
    // Published through the proxy until the subscriber hears it: once its subscription has
    // moved to the new master.
    let mut publisher = Raw::connect(port);
    let message = b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nafter\r\n";
    let publish = command(&[b"PUBLISH", b"news", b"after"]);
    heard_once_moved(&mut sub, &mut publisher, &publish, message);
}

/// Publishes `publish` through `publisher` until `sub` hears it (once its subscription has
/// moved where the message is published), and checks that what it hears first is `message`.
fn heard_once_moved(sub: &mut Raw, publisher: &mut Raw, publish: &[u8], message: &[u8]) {
    sub.stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut first = [0u8; 1];
    wait_until("the subscription to move", Duration::from_secs(10), || {
        publisher.send(publish);
        publisher.read_line();
        matches!(sub.stream.read(&mut first), Ok(1))
    });
    sub.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let rest = sub.read_n(message.len() - 1);
    assert_eq!([&first[..], &rest].concat(), message);
}

/// A shard channel's subscription follows its slot: to the master it was resharded to (the
/// node it was on drops it with an `sunsubscribe` the client never sees), and to the replica
/// that a manual failover made master in its place.
fn a_shard_channel_subscription_follows_its_slot(program: Program) {
    let cluster = Cluster::start(program, 3, 1, 2000);
    let (_proxy, port) = proxy_for(&cluster, "");
    let mut sub = Raw::connect(port);
    sub.roundtrip(
        &command(&[b"SSUBSCRIBE", b"{s}c", b"{s}d"]),
        b"*3\r\n$10\r\nssubscribe\r\n$4\r\n{s}c\r\n:1\r\n*3\r\n$10\r\nssubscribe\r\n$4\r\n{s}d\r\n:2\r\n",
    );
    let mut publisher = Raw::connect(port);
    let to = move_slot(&cluster, &["{s}c"]);
    let publish = command(&[b"SPUBLISH", b"{s}d", b"moved"]);
    let message = b"*3\r\n$8\r\nsmessage\r\n$4\r\n{s}d\r\n$5\r\nmoved\r\n";
    heard_once_moved(&mut sub, &mut publisher, &publish, message);
    let replica = &cluster.nodes[cluster.replica_of(to)];
    let _: () = redis::cmd("CLUSTER")
        .arg("FAILOVER")
        .query(&mut replica.client())
        .unwrap();
    let publish = command(&[b"SPUBLISH", b"{s}c", b"failed over"]);
    let message = b"*3\r\n$8\r\nsmessage\r\n$4\r\n{s}c\r\n$11\r\nfailed over\r\n";
    wait_until("the replica to be master", Duration::from_secs(20), || {
        Cluster::owner_of(replica, "{s}c") == replica.addr()
    });
    heard_once_moved(&mut sub, &mut publisher, &publish, message);
    // Both channels are still held, once each, and given up as one server gives them up.
    sub.roundtrip(
        &command(&[b"SUNSUBSCRIBE", b"{s}c"]),
        b"*3\r\n$12\r\nsunsubscribe\r\n$4\r\n{s}c\r\n:1\r\n",
    );
    publisher.roundtrip(&command(&[b"SPUBLISH", b"{s}d", b"last"]), b":1\r\n");
    let message = b"*3\r\n$8\r\nsmessage\r\n$4\r\n{s}d\r\n$4\r\nlast\r\n";
    assert_eq!(sub.read_n(message.len()), message);
}

on_both_servers!(
    clients_see_one_server_over_the_cluster,
    resharding_there_and_back_loses_nothing_and_shows_no_redirect,
    a_manual_failover_is_followed_without_errors,
    a_killed_master_costs_only_its_slots_and_only_until_its_replica_takes_over,
    cluster_aware_clients_find_one_node_serving_every_slot,
    a_migrating_slot_is_served_through_ask_then_moved,
    transactions_keep_to_one_slot_and_a_slot_moved_under_one_is_a_clear_error,
    a_blocking_command_whose_slot_moves_waits_on_the_new_node,
    pubsub_over_a_cluster_delivers_each_message_once,
    replica_reads_go_to_replicas_except_for_a_slot_on_the_move,
    a_node_added_given_slots_then_removed_costs_no_error,
    whole_cluster_commands_reach_every_master,
    a_cluster_with_a_password_is_served_with_backend_auth,
    subscriptions_move_off_a_master_that_died,
    a_shard_channel_subscription_follows_its_slot,
);

#[test]
fn without_a_slot_map_the_pool_is_not_ready_and_says_why() {
    // A seed where nothing listens, and one that is no cluster node.
    let standalone = Redis::start();
    let (port, nowhere) = (free_port(), free_port());
    let config = format!(
        "pools:\n  main:\n    listen: 127.0.0.1:{port}\n    cluster:\n      seeds: [127.0.0.1:{nowhere}, {}]\n",
        standalone.addr()
    );
    let proxy = Proxy::start(&config, port);
    let (status, why) = proxy.http("/ready");
    assert_eq!(status, 503);
    assert!(
        why.contains("the cluster's slot map serves 0 of 16384 slots"),
        "{why}"
    );
    let mut raw = Raw::connect(port);
    raw.roundtrip(
        &command(&[b"GET", b"a"]),
        b"-CLUSTERDOWN Hash slot not served\r\n",
    );
    raw.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
    raw.roundtrip(
        &command(&[b"CLUSTER", b"INFO"]),
        b"$306\r\ncluster_state:fail\r\ncluster_slots_assigned:0\r\ncluster_slots_ok:0\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:1\r\ncluster_size:1\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\ncluster_stats_messages_sent:0\r\ncluster_stats_messages_received:0\r\ntotal_cluster_links_buffer_limit_exceeded:0\r\n\r\n",
    );
    wait_until("the warning", Duration::from_secs(10), || {
        proxy.log().contains("no cluster node gave its slot map (")
    });
}
