//! The keeper's event sequences, applied by hand under Tokio's paused clock: its nodes are real
//! but point at a loopback port nothing listens on, and what they report themselves is never
//! read, so only the events of each test reach the keeper.

use std::sync::Arc;

use super::*;
use crate::backend::{Health, Said};
use crate::config::Config;
use crate::workers::Workers;

/// A keeper of servers `(name, replicas)` whose nodes sit on low loopback ports nothing
/// listens on (1, 2, …: a port each), with the pool's `failover` lines.
fn keeper(failover: &str, servers: &[(&str, usize)]) -> Keeper {
    let mut text =
        format!("pools:\n  p:\n    listen: 127.0.0.1:6380\n    {failover}\n    servers:\n");
    let mut port = 0;
    let mut next = || {
        port += 1;
        format!("127.0.0.1:{port}")
    };
    for (name, replicas) in servers {
        let master = next();
        let replicas: Vec<String> = (0..*replicas).map(|_| next()).collect();
        text.push_str(&format!(
            "      - {{ name: {name}, master: {master}, replicas: [{}] }}\n",
            replicas.join(", ")
        ));
    }
    let config = Config::parse("test.yml", &text).unwrap().pools.remove(0);
    let (events, _) = mpsc::unbounded_channel();
    let maker = NodeMaker {
        workers: Arc::new(Workers::start(1).unwrap()),
        metrics: Arc::new(crate::metrics::Metrics::default()),
        events,
        invalidations: None,
    };
    let (_, events) = mpsc::unbounded_channel();
    let (_, reshape) = mpsc::unbounded_channel();
    Keeper::new(config, maker, events, reshape).0
}

/// What node `n` of shard `s` says: its role, offset, key count, run id and replication ids.
fn said(role: Role, offset: u64, keys: u64, run_id: &str, replid: &str, replid2: &str) -> Said {
    Said {
        replid: replid.into(),
        replid2: replid2.into(),
        ..Said::for_tests(role, offset, keys, run_id)
    }
}

fn says(k: &mut Keeper, s: usize, n: usize, said: Said) -> bool {
    let node = k.shards[s].nodes[n].id();
    k.apply(NodeEvent::Said { node, said })
}

fn health(k: &mut Keeper, s: usize, n: usize, health: Health) -> bool {
    let node = k.shards[s].nodes[n].id();
    k.apply(NodeEvent::Health {
        node,
        health,
        reason: "test".into(),
    })
}

/// Shard `s` with its master (node 0) up and saying so, and its replicas up and in sync.
fn serving(k: &mut Keeper, s: usize) {
    for n in 0..k.shards[s].nodes.len() {
        health(k, s, n, Health::Up);
        let role = if n == 0 { Role::Master } else { Role::Replica };
        says(
            k,
            s,
            n,
            said(role, 1000, 10, &format!("run{n}"), "history", ""),
        );
    }
    assert_eq!(k.shards[s].master, 0);
}

#[tokio::test(start_paused = true)]
async fn an_ejected_server_leaves_the_ring_and_rejoins_after_its_retry_timeout() {
    let mut k = keeper(
        "failover: eject\n    server_retry_timeout_ms: 5000",
        &[("a", 0), ("b", 0)],
    );
    let node = k.shards[0].nodes[0].id();
    assert!(
        k.apply(NodeEvent::FailedRepeatedly(node)),
        "routing changed"
    );
    k.publish();
    assert!(!k.state.load().on_ring(0), "off the ring");
    assert_eq!(k.state.load().live_servers(), 1);
    assert!(!k.apply(NodeEvent::FailedRepeatedly(node)), "already out");
    assert!(!k.rejoin(Instant::now() + Duration::from_millis(4999)));
    assert!(k.rejoin(Instant::now() + Duration::from_millis(5000)));
    k.publish();
    assert_eq!(k.state.load().live_servers(), 2);
}

#[tokio::test(start_paused = true)]
async fn without_eject_a_failing_server_stays_on_the_ring() {
    let mut k = keeper("failover: none", &[("a", 0), ("b", 0)]);
    let node = k.shards[0].nodes[0].id();
    assert!(!k.apply(NodeEvent::FailedRepeatedly(node)));
    assert!(k.out_until.iter().all(Option::is_none));
}

#[tokio::test(start_paused = true)]
async fn writes_follow_a_replica_promoted_elsewhere_while_the_master_still_claims() {
    let mut k = keeper("failover: none", &[("a", 1)]);
    serving(&mut k, 0);
    // Another instance promoted the replica: its previous history is the master's.
    let promoted = said(Role::Master, 1200, 10, "run1", "new-history", "history");
    assert!(says(&mut k, 0, 1, promoted));
    assert_eq!(k.shards[0].master, 1, "writes moved to the promoted node");
    assert!(k.shards[0].status[0].former_master);
}

#[tokio::test(start_paused = true)]
async fn a_promotion_moves_writes_and_holds_them_there_for_the_hold_down() {
    let mut k = keeper("failover: promote", &[("a", 2)]);
    serving(&mut k, 0);
    health(&mut k, 0, 0, Health::Down);
    assert!(
        k.failover[0].promoting,
        "the master is down: a promotion starts"
    );
    let replaces = k.shards[0].master().id();
    let promotion = Promotion {
        shard: "a".into(),
        replaces,
        result: Ok(failover::Successor {
            index: 2,
            promoted_here: true,
        }),
    };
    assert!(k.promoted(promotion));
    assert_eq!(k.shards[0].master, 2);
    // The new master goes down at once: no promotion while it is held.
    assert!(health(&mut k, 0, 2, Health::Down));
    assert!(!k.failover[0].promoting, "held for {HOLD_DOWN:?}");
    assert_eq!(k.shards[0].master, 2);
    tokio::time::advance(HOLD_DOWN).await;
    k.heal(0);
    assert!(
        k.failover[0].promoting,
        "once the hold-down is over, node 1 may take its place"
    );
}

#[tokio::test(start_paused = true)]
async fn the_outcome_of_a_promotion_overtaken_by_events_changes_nothing() {
    let mut k = keeper("failover: promote", &[("a", 1)]);
    serving(&mut k, 0);
    let stale = Promotion {
        shard: "a".into(),
        replaces: k.shards[0].nodes[1].id(),
        result: Ok(failover::Successor {
            index: 1,
            promoted_here: true,
        }),
    };
    assert!(!k.promoted(stale), "it replaced a node that is not master");
    assert_eq!(k.shards[0].master, 0);
    let gone = Promotion {
        shard: "left-the-pool".into(),
        replaces: k.shards[0].master().id(),
        result: Err("no".into()),
    };
    assert!(!k.promoted(gone));
}

#[tokio::test(start_paused = true)]
async fn sentinel_moves_writes_only_to_a_node_of_the_server() {
    let mut k = keeper(
        "failover: sentinel\n    sentinels: [127.0.0.1:1]",
        &[("a", 1)],
    );
    let named = |master: &str| MasterNamed {
        server: "a".into(),
        master: master.parse().unwrap(),
    };
    assert!(
        !k.sentinel_named(named("127.0.0.1:9")),
        "not one of its nodes"
    );
    assert_eq!(
        k.failover[0].unknown_master,
        Some("127.0.0.1:9".parse().unwrap())
    );
    assert!(!k.sentinel_named(named("127.0.0.1:1")), "already master");
    assert_eq!(k.failover[0].unknown_master, None);
    assert!(k.sentinel_named(named("127.0.0.1:2")));
    assert_eq!(k.shards[0].master, 1);
}

#[tokio::test(start_paused = true)]
async fn a_master_back_empty_is_held_down_until_it_follows_another_node() {
    let mut k = keeper("failover: none", &[("a", 1)]);
    serving(&mut k, 0);
    // The master restarted (new run id) with no keys while its replica holds ten.
    let empty = said(Role::Master, 0, 0, "run-new", "fresh", "");
    assert!(says(&mut k, 0, 0, empty));
    assert!(k.shards[0].status[0].restarted_empty.is_some());
    // It is made a replica (by an operator, say): released.
    let follows = said(Role::Replica, 0, 0, "run-new", "history", "");
    assert!(says(&mut k, 0, 0, follows));
    assert!(k.shards[0].status[0].restarted_empty.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_reshape_keeps_the_nodes_and_state_of_the_servers_it_keeps() {
    let mut k = keeper("failover: none", &[("a", 1), ("b", 0)]);
    serving(&mut k, 0);
    let kept = k.shards[0].nodes[0].id();
    let mut config = k.config.clone();
    config.servers.retain(|s| s.name == "a");
    assert!(k.reshape(config));
    assert_eq!(k.shards.len(), 1);
    assert_eq!(
        k.shards[0].nodes[0].id(),
        kept,
        "the node of a kept server is kept"
    );
    assert!(k.shards[0].status[0].said.is_some(), "and what it said");
    assert_eq!(k.failover.len(), 1);
}
