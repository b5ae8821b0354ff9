//! The near cache over a real Redis Cluster (redis-server 7 and valkey-server 8): replies are
//! kept per node that tracked them, so a slot that moves — keys and all, or given away without
//! them — is never answered for by what its old node gave; a read redirected by ASK is not
//! tracked, so it is not kept and a tracking client is told of it; and the stale-read detector
//! finds no stale read through a reshard there and back.

mod common;

use std::time::Duration;

use common::cluster::Cluster;
use common::*;
use redis::Commands;

/// A proxy in front of `cluster` with pool `cached` (near cache, and `extra` lines) on the first
/// port and `plain` (none) on the second.
fn proxy_for(cluster: &Cluster, extra: &str) -> (Proxy, u16, u16) {
    let (cached, plain) = (free_port(), free_port());
    let seed = cluster.nodes[0].addr();
    let config = format!(
        "pools:
  cached:
    listen: 127.0.0.1:{cached}
    timeout_ms: 2000
    near_cache: {{ max_bytes: 16777216 }}
    cluster: {{ seeds: [{seed}] }}
{extra}  plain:
    listen: 127.0.0.1:{plain}
    timeout_ms: 2000
    cluster: {{ seeds: [{seed}] }}
"
    );
    let proxy = Proxy::start(&config, cached);
    proxy.wait_ready(true);
    // Reads are kept once every node's listener has connected.
    wait_until("tracking on every node", Duration::from_secs(10), || {
        let topology = proxy.http("/topology").1;
        topology.matches("\"tracking\":{\"on\":true").count() >= cluster.nodes.len()
    });
    (proxy, cached, plain)
}

fn cache_metric(proxy: &Proxy, name: &str) -> u64 {
    metric(
        &proxy.http("/metrics").1,
        &format!("ringproxy_near_cache_{name}"),
    )
}

/// Reads `key` through `c` until a read is answered from the cache.
fn until_cached(proxy: &Proxy, c: &mut redis::Connection, key: &str, want: &str) {
    let hits = || cache_metric(proxy, "hits_total{pool=\"cached\"}");
    wait_until(
        "a read answered from the cache",
        Duration::from_secs(5),
        || {
            let before = hits();
            assert_eq!(c.get::<_, String>(key).unwrap(), want);
            hits() > before
        },
    );
}

/// The master serving `key` now, and another.
fn owner_and_other<'c>(cluster: &'c Cluster, key: &str) -> (&'c Server, &'c Server) {
    let owner = Cluster::owner_of(&cluster.nodes[0], key);
    let masters = cluster.masters();
    let from = masters.iter().find(|n| n.addr() == owner).unwrap();
    let to = masters.iter().find(|n| n.addr() != owner).unwrap();
    (from, to)
}

/// Three masters, a proxy in front of them, and a client of its cached pool that has had
/// `foo` (= `bar`) answered from the cache.
fn foo_cached(program: Program) -> (Cluster, Proxy, u16, redis::Connection) {
    let cluster = Cluster::start(program, 3, 0, 2000);
    let (proxy, port, _) = proxy_for(&cluster, "");
    let mut c = connect(port);
    let _: () = c.set("foo", "bar").unwrap();
    until_cached(&proxy, &mut c, "foo", "bar");
    (cluster, proxy, port, c)
}

/// Reads sent again untracked, not kept (a fill redirected or its node failed).
fn resent(proxy: &Proxy) -> u64 {
    cache_metric(
        proxy,
        "fills_refused_total{pool=\"cached\",reason=\"resent\"}",
    )
}

fn a_slot_moved_is_never_answered_for_by_its_old_node(program: Program) {
    let (cluster, proxy, _, mut c) = foo_cached(program);
    let (from, to) = owner_and_other(&cluster, "foo");
    let resent = || resent(&proxy);
    // There and back, keys and all, each time written on the new node directly: every write
    // is seen, within an invalidation's delay of it.
    for (from, to) in [(from, to), (to, from)] {
        let before = resent();
        let slot = cluster.migrate(&["foo"], from, to);
        cluster.give_slot(slot, to);
        let held: String = to.client().get("foo").unwrap();
        // Redirected by MOVED: sent again untracked, and not kept.
        assert_eq!(c.get::<_, String>("foo").unwrap(), held);
        assert_eq!(resent(), before + 1);
        let _: () = to.client().set("foo", format!("{held}+")).unwrap();
        assert_eq!(c.get::<_, String>("foo").unwrap(), format!("{held}+"));
        until_cached(&proxy, &mut c, "foo", &format!("{held}+"));
        let _: () = to.client().set("foo", format!("{held}++")).unwrap();
        wait_until("the write seen", Duration::from_secs(1), || {
            c.get::<_, String>("foo").unwrap() == format!("{held}++")
        });
    }
    // MGET over several slots, from the cache and not.
    let _: () = c.set("{foo}2", "two").unwrap();
    let keys = ["foo", "{foo}2", "nothing", "other"];
    let want = [Some("bar++++"), Some("two"), None, None].map(|v| v.map(String::from));
    for _ in 0..2 {
        assert_eq!(c.mget::<_, Vec<Option<String>>>(&keys).unwrap(), want);
    }
}

fn a_read_redirected_by_ask_is_not_kept_and_its_tracking_client_is_told(program: Program) {
    let (cluster, proxy, port, mut c) = foo_cached(program);
    // The key moves, its slot not yet: the old node answers ASK.
    let (from, to) = owner_and_other(&cluster, "foo");
    let slot = cluster.migrate(&["foo"], from, to);
    let mut tracking = resp3(port);
    tracking.roundtrip(&command(&[b"CLIENT", b"TRACKING", b"ON"]), b"+OK\r\n");
    let resent = || resent(&proxy);
    let before = resent();
    // The read after ASKING is not tracked: not kept, and the client told right after it.
    let told = format!("$3\r\nbar\r\n{}", push("foo"));
    tracking.roundtrip(&command(&[b"GET", b"foo"]), told.as_bytes());
    assert_eq!(resent(), before + 1);
    // Written on the new node directly: each read sees it, as none was kept.
    for value in ["baz", "qux"] {
        let _: () = redis::pipe()
            .cmd("ASKING")
            .ignore()
            .set("foo", value)
            .ignore()
            .query(&mut to.client())
            .unwrap();
        assert_eq!(c.get::<_, String>("foo").unwrap(), value);
    }
    cluster.give_slot(slot, to);
    until_cached(&proxy, &mut c, "foo", "qux");
}

/// With `read_from: replica`, reads are kept from the replicas, which say when a write
/// replicated to them changes a key.
fn replica_reads_are_kept_and_told_by_the_replica(program: Program) {
    let cluster = Cluster::start(program, 3, 1, 2000);
    let (proxy, port, _) = proxy_for(&cluster, "    read_from: replica\n");
    let mut c = connect(port);
    let _: () = c.set("foo", "bar").unwrap();
    let owner = Cluster::owner_of(&cluster.nodes[0], "foo");
    let master = cluster.nodes.iter().find(|n| n.addr() == owner).unwrap();
    let replica = &cluster.nodes[cluster.replica_of(master)];
    wait_until("the replica read", Duration::from_secs(10), || {
        let topology = proxy.http("/topology").1;
        let listed = format!(
            "\"replicas\":[{{\"address\":\"{}\",\"up\":true",
            replica.addr()
        );
        topology.contains(&listed) && c.get::<_, Option<String>>("foo").unwrap().is_some()
    });
    until_cached(&proxy, &mut c, "foo", "bar");
    let reads = || {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut replica.client())
            .unwrap();
        stats.contains("cmdstat_get:")
    };
    assert!(reads(), "the read that was kept was the replica's");
    for value in ["baz", "qux"] {
        let _: () = master.client().set("foo", value).unwrap();
        wait_until("the write seen", Duration::from_secs(1), || {
            c.get::<_, String>("foo").unwrap() == value
        });
        until_cached(&proxy, &mut c, "foo", value);
    }
}

/// A master killed and its replica promoted by the cluster: nothing kept from the dead master
/// is served, though the new master never tracked those reads for the proxy.
fn a_failover_drops_what_the_dead_master_gave(program: Program) {
    let mut cluster = Cluster::start(program, 3, 1, 1000);
    let (proxy, port, _) = proxy_for(&cluster, "");
    let mut c = connect(port);
    let key = (0..100)
        .map(|i| format!("k{i}"))
        .find(|k| Cluster::owner_of(&cluster.nodes[1], k) == cluster.nodes[0].addr())
        .unwrap();
    let _: () = c.set(&key, "old").unwrap();
    let heir = cluster.replica_of(&cluster.nodes[0]);
    wait_until("replicated", Duration::from_secs(10), || {
        let mut rc = cluster.nodes[heir].client();
        let _: () = redis::cmd("READONLY").query(&mut rc).unwrap();
        rc.get::<_, Option<String>>(&key).unwrap().is_some()
    });
    until_cached(&proxy, &mut c, &key, "old");
    cluster.nodes[0].signal("-KILL");
    wait_until("the map to follow", Duration::from_secs(30), || {
        let (_, topology) = proxy.http("/topology");
        let master = format!(
            "\"master\":{{\"address\":\"{}\",\"up\":true",
            cluster.nodes[heir].addr()
        );
        topology.contains(&master)
    });
    let _: () = cluster.nodes[heir].client().set(&key, "new").unwrap();
    assert_eq!(c.get::<_, String>(&key).unwrap(), "new");
    until_cached(&proxy, &mut c, &key, "new");
    cluster.nodes[0].kill();
}

/// The detector (`common::stale`) through two instances while 2000 slots move there and back.
fn reads_stay_exact_through_a_reshard(program: Program) {
    let cluster = Cluster::start(program, 3, 0, 2000);
    let (proxy, cached, plain) = proxy_for(&cluster, "");
    let (other_proxy, other, _) = proxy_for(&cluster, "");
    let ports = stale::Ports {
        cached,
        other,
        plain,
    };
    let [a, b, _] = cluster.masters() else {
        unreachable!()
    };
    let seen = stale::detect(ports, 200, Duration::from_secs(2), || {
        cluster.reshard(a, b, 2000);
        cluster.reshard(b, a, 2000);
    });
    seen.assert_exact();
    assert_eq!(seen.errors, 0, "a reshard costs clients no error");
    for proxy in [&proxy, &other_proxy] {
        let hits = cache_metric(proxy, "hits_total{pool=\"cached\"}");
        let moved = metric(
            &proxy.http("/metrics").1,
            "ringproxy_cluster_redirects_total{pool=\"cached\",kind=\"moved\"}",
        );
        eprintln!("{hits} hits, {moved} MOVED followed");
        assert!(hits > 100 && moved > 0, "{hits} hits, {moved} MOVED");
    }
}

on_both_servers!(
    a_slot_moved_is_never_answered_for_by_its_old_node,
    a_read_redirected_by_ask_is_not_kept_and_its_tracking_client_is_told,
    replica_reads_are_kept_and_told_by_the_replica,
    a_failover_drops_what_the_dead_master_gave,
    reads_stay_exact_through_a_reshard,
);
