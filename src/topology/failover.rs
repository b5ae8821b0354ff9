//! The decisions of a failover, apart from the keeper that applies them: which replica takes a
//! dead master's place, and whether a master that restarted would wipe its replicas.

use std::sync::Arc;

use tokio::task::JoinSet;

use super::state::Shard;
use crate::backend::{Health, Node, Role, Said};
use crate::config::Address;

/// How far behind the most any node is known to hold (in bytes of the replication stream) a
/// replica may be and still take a master's place: enough for checks taken at different
/// moments under load, far less than a replica in its first sync lags.
pub const MAX_LAG_BYTES: u64 = 1 << 20;

/// The nodes that may take the place of the shard's master, which is down: those not down that
/// hold its data. A replica qualifies once it has said it was in sync with its master (link up,
/// no full sync under way) in its current process, at an offset within [`MAX_LAG_BYTES`] of
/// the most known: the master's own offset at its last check, or another replica's. A replica
/// restarted without its data, still in its first sync, or a former master still resyncing
/// never qualifies: promoting it would lose what the others hold. The master's offset does
/// not count when it is held down as restarted empty (it holds nothing any more).
pub fn candidates<N>(shard: &Shard<N>) -> Vec<usize> {
    let m = shard.master;
    let master = &shard.status[m];
    let master_offset = master
        .said
        .as_ref()
        .filter(|said| said.role == Role::Master && master.restarted_empty.is_none())
        .map(|said| said.offset);
    let others = || (0..shard.nodes.len()).filter(move |&i| i != m);
    let best = others()
        .filter_map(|i| shard.status[i].in_sync_at)
        .chain(master_offset)
        .max()
        .unwrap_or(0);
    others()
        // A busy replica would refuse REPLICAOF NO ONE until its script ends.
        .filter(|&i| !matches!(shard.status[i].state(), Health::Down | Health::Busy))
        .filter(|&i| {
            (shard.status[i].in_sync_at).is_some_and(|at| at.saturating_add(MAX_LAG_BYTES) >= best)
        })
        .collect()
}

/// Whether making node `n` a replica of node `master` would empty it of data: `master` holds
/// fewer than 90% of the keys `n` held at its last check (the empty-master guard's rule, kept
/// for every repointing; the margin is for keys written and expired between checks).
pub fn would_wipe<N>(shard: &Shard<N>, master: usize, n: usize) -> bool {
    let keys = |i: usize| shard.status[i].said.as_ref().map(|said| said.keys);
    match (keys(master), keys(n)) {
        (Some(theirs), Some(mine)) => theirs.saturating_mul(10) < mine.saturating_mul(9),
        // Nothing known of the master yet: wait until it says.
        (None, Some(mine)) => mine > 0,
        (_, None) => false,
    }
}

/// Which of `answers` (node index, its address, what it says now) should be the shard's
/// master, so that every instance that asks picks the same node:
/// 1. a node that already says it is master (another instance, or an operator, promoted it);
/// 2. a node another candidate follows already (another instance chose it and is repointing
///    the rest: its offset no longer compares with theirs);
/// 3. the replica with the largest replication offset (it has lost the least);
/// 4. the first in configuration order.
pub fn successor(answers: &[(usize, Address, Said)]) -> Option<usize> {
    let followed = |addr: &Address| {
        answers
            .iter()
            .any(|(_, _, said)| said.follows.as_ref() == Some(addr))
    };
    answers
        .iter()
        .max_by_key(|(i, addr, said)| {
            (
                said.role == Role::Master,
                followed(addr),
                said.offset,
                std::cmp::Reverse(*i),
            )
        })
        .map(|(i, _, _)| *i)
}

/// The node that takes a dead master's place.
#[derive(Debug)]
pub struct Successor {
    pub index: usize,
    /// Whether this instance promoted it, rather than found it promoted already.
    pub promoted_here: bool,
}

/// Asks `candidates` (node index, node) what they are now, picks the [`successor`] and makes it
/// a master (`REPLICAOF NO ONE`) unless it is one already.
pub async fn promote(candidates: Vec<(usize, Arc<Node>)>) -> Result<Successor, String> {
    let mut asked = JoinSet::new();
    for (i, node) in candidates.iter().cloned() {
        asked.spawn(async move {
            let said = node.said_now().await;
            (
                i,
                node.addr.clone(),
                said.map_err(|why| format!("{}: {why}", node.label())),
            )
        });
    }
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    while let Some(Ok((i, addr, said))) = asked.join_next().await {
        match said {
            Ok(said) => answers.push((i, addr, said)),
            Err(why) => failures.push(why),
        }
    }
    let Some(chosen) = successor(&answers) else {
        return Err(format!("no replica answered ({})", failures.join("; ")));
    };
    let already = answers
        .iter()
        .any(|(i, _, said)| *i == chosen && said.role == Role::Master);
    if !already {
        let node = &candidates
            .iter()
            .find(|(i, _)| *i == chosen)
            .expect("asked")
            .1;
        node.promote()
            .await
            .map_err(|why| format!("{}: REPLICAOF NO ONE failed: {why}", node.label()))?;
    }
    Ok(Successor {
        index: chosen,
        promoted_here: !already,
    })
}

/// Whether node `n`, the shard's master, has just restarted with fewer keys than a replica
/// still following it: its replicas would resync from it and empty themselves. `before` is what
/// it said before this report. Returns why, for operators.
pub fn restarted_empty<N>(shard: &Shard<N>, n: usize, before: Option<&Said>) -> Option<String> {
    let now = shard.status[n].said.as_ref()?;
    let before = before?;
    if n != shard.master || now.role != Role::Master || before.run_id == now.run_id {
        return None;
    }
    let most = most_keys_on_replicas(shard, n)?;
    (now.keys < most).then(|| {
        format!(
            "restarted (run id {} is new) with {} keys while a replica holds {most}: it would wipe its replicas",
            now.run_id, now.keys
        )
    })
}

/// Whether a node held down as restarted empty no longer threatens anyone: it follows another
/// node now, or no replica holds more keys than it.
pub fn no_longer_wipes<N>(shard: &Shard<N>, n: usize) -> bool {
    let Some(said) = &shard.status[n].said else {
        return false;
    };
    said.role == Role::Replica
        || most_keys_on_replicas(shard, n).is_none_or(|most| said.keys >= most)
}

/// The most keys a node other than `n` holds while saying it is a replica.
fn most_keys_on_replicas<N>(shard: &Shard<N>, n: usize) -> Option<u64> {
    (0..shard.nodes.len())
        .filter(|&i| i != n)
        .filter_map(|i| shard.status[i].said.as_ref())
        .filter(|said| said.role == Role::Replica)
        .map(|said| said.keys)
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::NodeStatus;

    fn said(role: Role, offset: u64, keys: u64, run_id: &str) -> Said {
        Said::for_tests(role, offset, keys, run_id)
    }

    #[test]
    fn the_successor_is_the_one_chosen_already_then_the_most_advanced_then_the_first() {
        use Role::{Master, Replica};
        let addr = |i: usize| Address {
            host: "h".into(),
            port: 7000 + i as u16,
        };
        let pick = |answers: &[(usize, Said)]| {
            let answers: Vec<_> = answers
                .iter()
                .map(|(i, said)| (*i, addr(*i), said.clone()))
                .collect();
            successor(&answers)
        };
        assert_eq!(pick(&[]), None);
        assert_eq!(
            pick(&[
                (1, said(Replica, 10, 0, "a")),
                (2, said(Replica, 12, 0, "b"))
            ]),
            Some(2)
        );
        assert_eq!(
            pick(&[
                (2, said(Replica, 12, 0, "b")),
                (1, said(Replica, 12, 0, "a"))
            ]),
            Some(1),
            "a tie goes to configuration order, whatever the answers' order"
        );
        assert_eq!(
            pick(&[(1, said(Replica, 99, 0, "a")), (2, said(Master, 3, 0, "b"))]),
            Some(2),
            "promoted already elsewhere"
        );
        // Another instance promoted 1 and repointed 2, whose offset then went past 1's last
        // answer as a replica: 1 still wins.
        let repointed = Said {
            follows: Some(addr(1)),
            ..said(Replica, 50, 0, "b")
        };
        assert_eq!(
            pick(&[(1, said(Replica, 40, 0, "a")), (2, repointed)]),
            Some(1)
        );
    }

    fn shard(saids: Vec<Option<Said>>) -> Shard<()> {
        Shard {
            name: "s".into(),
            identity: "s".into(),
            weight: 1,
            nodes: vec![(); saids.len()],
            status: saids
                .into_iter()
                .map(|said| NodeStatus {
                    said,
                    ..NodeStatus::unchecked()
                })
                .collect(),
            master: 0,
            replicated: false,
        }
    }

    #[test]
    fn a_master_back_with_a_new_run_id_and_fewer_keys_than_a_replica_would_wipe_it() {
        use Role::{Master, Replica};
        let before = said(Master, 500, 1030, "old");
        let s = shard(vec![
            Some(said(Master, 0, 0, "new")),
            Some(said(Replica, 500, 1030, "r")),
        ]);
        let why = restarted_empty(&s, 0, Some(&before)).unwrap();
        assert!(why.contains("0 keys while a replica holds 1030"), "{why}");
        assert!(!no_longer_wipes(&s, 0));
        // Same process: a master that lost keys to expiry or DEL is not a restart.
        let same = said(Master, 0, 0, "new");
        assert_eq!(restarted_empty(&s, 0, Some(&same)), None);
        // Nothing known from before (the proxy just started): no verdict.
        assert_eq!(restarted_empty(&s, 0, None), None);
        // Restarted with its data (persistence): nothing to wipe.
        let s = shard(vec![
            Some(said(Master, 0, 1030, "new")),
            Some(said(Replica, 500, 1030, "r")),
        ]);
        assert_eq!(restarted_empty(&s, 0, Some(&before)), None);
        assert!(no_longer_wipes(&s, 0));
        // A replica is not a master that restarted.
        let s = shard(vec![
            Some(said(Master, 0, 5, "m")),
            Some(said(Replica, 0, 0, "new")),
        ]);
        assert_eq!(restarted_empty(&s, 1, Some(&before)), None);
    }

    #[test]
    fn only_replicas_seen_in_sync_near_the_masters_offset_may_take_its_place() {
        use Role::{Master, Replica};
        let mb = MAX_LAG_BYTES;
        let mut s = shard(vec![
            Some(said(Master, 5 * mb, 20_000, "m")),
            Some(said(Replica, 5 * mb, 20_000, "a")),
            Some(said(Replica, 0, 0, "b")),
            Some(said(Replica, 3 * mb, 12_000, "c")),
        ]);
        s.status[0].health = Health::Down;
        for i in 1..4 {
            s.status[i].health = Health::Up;
        }
        // b restarted without its data and is in its first sync; c lags by 2 MiB.
        s.status[1].in_sync_at = Some(5 * mb - 100);
        s.status[3].in_sync_at = Some(3 * mb);
        assert_eq!(candidates(&s), [1]);
        // The only replica in sync is down: nobody.
        s.status[1].health = Health::Down;
        assert_eq!(candidates(&s), Vec::<usize>::new());
        // A master held down as restarted empty holds nothing: its replicas compare among
        // themselves (here, a when it was last in sync counts too: c stays out).
        s.status[0].restarted_empty = Some("restarted empty".into());
        assert_eq!(candidates(&s), Vec::<usize>::new());
        s.status[1].in_sync_at = None;
        assert_eq!(candidates(&s), [3]);
    }

    #[test]
    fn a_node_is_never_pointed_at_a_master_with_far_fewer_keys() {
        use Role::{Master, Replica};
        let s = shard(vec![
            Some(said(Master, 0, 0, "promoted-empty")),
            Some(said(Master, 9, 20_000, "old")),
            Some(said(Replica, 9, 19_000, "r")),
            Some(said(Replica, 0, 0, "new")),
            None,
        ]);
        assert!(would_wipe(&s, 0, 1));
        assert!(!would_wipe(&s, 1, 2), "within the margin");
        assert!(!would_wipe(&s, 0, 3), "nothing to lose");
        assert!(would_wipe(&s, 4, 1), "the master's keys unknown");
        assert!(!would_wipe(&s, 1, 4));
    }

    #[test]
    fn a_held_master_is_released_once_it_follows_or_nothing_is_left_to_wipe() {
        use Role::{Master, Replica};
        let s = shard(vec![
            Some(said(Replica, 0, 0, "new")),
            Some(said(Master, 500, 1030, "r")),
        ]);
        assert!(no_longer_wipes(&s, 0), "it follows another node");
        let s = shard(vec![
            Some(said(Master, 0, 0, "new")),
            Some(said(Replica, 0, 0, "r")),
        ]);
        assert!(no_longer_wipes(&s, 0), "the replica resynced already");
    }
}
