//! The slot map as real nodes describe it (`testdata/redis-cluster`), and how answers agree.

use super::*;

fn addr(s: &str) -> Address {
    s.parse().unwrap()
}

fn testdata(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/testdata/redis-cluster/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(path).unwrap()
}

fn shard(slots: &[(u16, u16)], master: &str, replicas: &[&str]) -> ClusterShard {
    ClusterShard {
        slots: slots.to_vec(),
        master: addr(master),
        replicas: replicas.iter().map(|r| addr(r)).collect(),
    }
}

/// The cluster of `testdata/redis-cluster`: three masters with a replica each.
fn testdata_view() -> ClusterView {
    ClusterView {
        shards: vec![
            shard(&[(0, 5460)], "127.0.0.1:17001", &["127.0.0.1:17006"]),
            shard(&[(5461, 10922)], "127.0.0.1:17002", &["127.0.0.1:17004"]),
            shard(&[(10923, 16383)], "127.0.0.1:17003", &["127.0.0.1:17005"]),
        ],
    }
}

#[test]
fn cluster_shards_of_redis_7() {
    let asked = addr("127.0.0.1:17001");
    let reply = testdata("cluster-shards.resp");
    let view = parse_shards(&reply, &asked, false).unwrap();
    let expected = testdata_view();
    assert_eq!(view, expected);
    let map = view.slot_map();
    assert!(map.covers_all());
    assert_eq!(map.shard_for(b"foo"), Some(2));
    assert_eq!(view.shards[0].name(), "0-5460");
    // The last node listed (17004, a replica) still loading its first sync: not listed.
    let at = memchr::memmem::rfind(&reply, b"$6\r\nonline").unwrap();
    let loading = [&reply[..at], b"$7\r\nloading", &reply[at + 10..]].concat();
    let view = parse_shards(&loading, &asked, false).unwrap();
    assert_eq!(view.shards[1].replicas, Vec::<Address>::new());
    assert_eq!(view.shards[0], expected.shards[0]);
}

#[test]
fn cluster_slots_of_redis_7() {
    let asked = addr("127.0.0.1:17001");
    let view = parse_slots(&testdata("cluster-slots.resp"), &asked).unwrap();
    assert_eq!(view, testdata_view());
}

#[test]
fn several_ranges_unknown_endpoints_and_tls_ports() {
    let asked = addr("10.0.0.9:7000");
    // CLUSTER SLOTS: one master with two ranges; an empty host is the node asked.
    let slots = b"*2\r\n*3\r\n:0\r\n:99\r\n*2\r\n$0\r\n\r\n:7000\r\n*3\r\n:200\r\n:200\r\n*2\r\n$0\r\n\r\n:7000\r\n";
    let view = parse_slots(slots, &asked).unwrap();
    assert_eq!(
        view.shards,
        vec![shard(&[(0, 99), (200, 200)], "10.0.0.9:7000", &[])]
    );
    assert_eq!(view.shards[0].name(), "0-99,200");
    // CLUSTER SHARDS: a master without slots, `?` as endpoint, a TLS port.
    let shards = b"*1\r\n%2\r\n$5\r\nslots\r\n*0\r\n$5\r\nnodes\r\n*1\r\n%5\r\n$8\r\nendpoint\r\n$1\r\n?\r\n$4\r\nport\r\n:7001\r\n$8\r\ntls-port\r\n:8001\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n";
    let plain = parse_shards(shards, &asked, false).unwrap();
    assert_eq!(plain.shards, vec![shard(&[], "10.0.0.9:7001", &[])]);
    assert_eq!(plain.shards[0].name(), "no slots (10.0.0.9:7001)");
    let tls = parse_shards(shards, &asked, true).unwrap();
    assert_eq!(tls.shards[0].master, addr("10.0.0.9:8001"));
    assert!(!plain.slot_map().owns_any(0));
    assert_eq!(
        parse_shards(b"-ERR unknown command\r\n", &asked, false),
        None
    );
    assert_eq!(parse_slots(b"*1\r\n*2\r\n:0\r\n:99\r\n", &asked), None);
}

#[test]
fn a_view_is_taken_when_most_answers_agree() {
    let a = ClusterView {
        shards: vec![shard(&[(0, 16383)], "127.0.0.1:1", &[])],
    };
    let b = ClusterView {
        shards: vec![shard(&[(0, 16383)], "127.0.0.1:2", &[])],
    };
    assert_eq!(agree(&[a.clone(), b.clone(), a.clone()]), Some(&a));
    assert_eq!(agree(std::slice::from_ref(&a)), Some(&a));
    // A tie is no agreement: the last map stays.
    assert_eq!(agree(&[a.clone(), b.clone()]), None);
    assert_eq!(agree(&[]), None);
}

#[test]
fn redirects_as_nodes_write_them() {
    let moved = redirect(b"-MOVED 12182 127.0.0.1:17003\r\n");
    let to = addr("127.0.0.1:17003");
    assert_eq!(
        moved,
        Some(Redirect::Moved {
            slot: 12182,
            to: to.clone()
        })
    );
    assert_eq!(
        redirect(b"-ASK 5 127.0.0.1:17003\r\n"),
        Some(Redirect::Ask { slot: 5, to })
    );
    let v6 = redirect(b"-MOVED 1 ::1:7000\r\n");
    let to = Address {
        host: "::1".into(),
        port: 7000,
    };
    assert_eq!(v6, Some(Redirect::Moved { slot: 1, to }));
    let unknown_host = redirect(b"-MOVED 1 :7000\r\n");
    let to = Address {
        host: String::new(),
        port: 7000,
    };
    assert_eq!(unknown_host, Some(Redirect::Moved { slot: 1, to }));
    for later in [
        &b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"[..],
        b"-CLUSTERDOWN The cluster is down\r\n",
    ] {
        assert_eq!(redirect(later), Some(Redirect::Later));
    }
    for other in [
        &b"-ERR MOVED 1 a:1\r\n"[..],
        b"+MOVED 1 a:1\r\n",
        b"-MOVED 16384 a:1\r\n",
        b"-MOVED x a:1\r\n",
        b"-ASK 1 nohost\r\n",
    ] {
        assert_eq!(redirect(other), None);
    }
}
