//! A Redis Cluster behind the proxy: real clusters made with `redis-cli --cluster create`,
//! clients that speak to one server, and the cluster's own events (resharding, a manual
//! failover) under a checked load: every acknowledged increment is there, no reply goes back,
//! and clients see no error.

mod common;

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

#[test]
fn clients_see_one_server_over_the_cluster() {
    let cluster = Cluster::start(3, 1, 2000);
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
    threads: Vec<JoinHandle<(Vec<i64>, Vec<String>)>>,
}

impl Load {
    const CLIENTS: usize = 4;
    const KEYS: usize = 50;

    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..Load::CLIENTS)
            .map(|t| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut c = connect(port);
                    let mut counts = vec![0i64; Load::KEYS];
                    let mut errors = Vec::new();
                    // Bounded in count as well as by the test's stop.
                    for round in 0..200_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let k = round % Load::KEYS;
                        let key = format!("counter:{t}:{k}");
                        match c.incr::<_, _, i64>(&key, 1) {
                            Ok(n) if n == counts[k] + 1 => counts[k] = n,
                            Ok(n) => errors.push(format!("{key}: {n} after {}", counts[k])),
                            Err(e) => errors.push(format!("{key}: {e}")),
                        }
                    }
                    (counts, errors)
                })
            })
            .collect();
        Load { stop, threads }
    }

    /// Stops the clients; checks every counter holds what its client was told, and returns
    /// the errors they saw and the increments made.
    fn finish(self, port: u16) -> (Vec<String>, i64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut c = connect(port);
        let (mut errors, mut total) = (Vec::new(), 0);
        for (t, thread) in self.threads.into_iter().enumerate() {
            let (counts, seen) = thread.join().unwrap();
            errors.extend(seen);
            for (k, acked) in counts.into_iter().enumerate() {
                let held: Option<i64> = c.get(format!("counter:{t}:{k}")).unwrap();
                assert_eq!(held.unwrap_or(0), acked, "counter:{t}:{k}");
                total += acked;
            }
        }
        (errors, total)
    }
}

/// Waits until the load has made `n` more increments than `from`, so an event lands while it
/// runs.
fn wait_for_increments(port: u16, n: i64) {
    let mut c = connect(port);
    let total = |c: &mut redis::Connection| -> i64 {
        (0..Load::CLIENTS)
            .map(|t| {
                c.get::<_, Option<i64>>(format!("counter:{t}:0"))
                    .unwrap()
                    .unwrap_or(0)
            })
            .sum()
    };
    let from = total(&mut c);
    wait_until("increments", Duration::from_secs(20), || {
        total(&mut c) >= from + n
    });
}

#[test]
fn resharding_there_and_back_loses_nothing_and_shows_no_redirect() {
    let cluster = Cluster::start(3, 0, 2000);
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
    let (errors, total) = load.finish(port);
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    println!("4000 slots moved in {took:?} under {total} increments: 0 errors");
    let metrics = proxy.http("/metrics").1;
    assert!(metrics.contains("ringproxy"), "{metrics}");
}

#[test]
fn a_manual_failover_is_followed_without_errors() {
    let cluster = Cluster::start(3, 1, 2000);
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
    let (errors, total) = load.finish(port);
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    println!("3 manual failovers under {total} increments: 0 errors");
    // The proxy's map follows: the former replicas are the masters now.
    wait_until("the map to follow", Duration::from_secs(10), || {
        let (_, topology) = proxy.http("/topology");
        cluster.nodes[3..]
            .iter()
            .all(|r| topology.contains(&format!("\"master\":{{\"address\":\"{}\"", r.addr())))
    });
}
