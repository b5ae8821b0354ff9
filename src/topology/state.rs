//! A pool's serving state: an immutable snapshot of where keys go, which node of each shard is
//! its master and which nodes are healthy. Sessions load the current one per burst of requests;
//! the pool's keeper replaces it whole when something changes.

use std::sync::Arc;

use crate::backend::{Health, Node, NodeId, Role, Said};
use crate::config::ReadFrom;
use crate::placement::Placement;

/// One snapshot of a pool. Generic over the node type so routing is tested without sockets.
#[derive(Debug)]
pub struct PoolState<N = Arc<Node>> {
    /// Where keys go: the configured ring, or, while twemproxy-style ejection has taken
    /// servers off, the ring of those left; or a cluster's slot map.
    placement: Placement,
    /// In configuration order, which is the ring's server order.
    pub shards: Vec<Shard<N>>,
}

impl<N> PoolState<N> {
    pub(crate) fn new(placement: Placement, shards: Vec<Shard<N>>) -> PoolState<N> {
        PoolState { placement, shards }
    }

    /// The shard owning `key` (its position in [`PoolState::shards`]), or `None` when no server
    /// is on the ring (or no shard owns its slot).
    pub fn shard_for(&self, key: &[u8]) -> Option<usize> {
        self.placement.shard_for(key)
    }

    /// The group `key` is sent in when a command's keys are split (its shard on a ring, its
    /// slot in a cluster, where a request must not span slots) and that group's shard.
    pub fn group_for(&self, key: &[u8]) -> Option<(u32, usize)> {
        match &self.placement {
            Placement::Slots(map) => {
                let slot = crate::placement::slots::slot(key);
                Some((u32::from(slot), map.owner(slot)?))
            }
            Placement::Ring(_) => {
                let shard = self.shard_for(key)?;
                Some((shard as u32, shard))
            }
        }
    }

    /// Whether a read of group `group` (see [`PoolState::group_for`]) goes to its shard's
    /// master whatever `read_from` says: in a cluster, a slot that may be migrating.
    pub fn reads_master(&self, group: u32) -> bool {
        self.slots()
            .is_some_and(|slots| slots.reads_master(group as u16))
    }

    /// The part of `key` placement hashes: its hash tag's content, or the whole key.
    pub fn hashed_part<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        self.placement.hashed_part(key)
    }

    /// How many shards are given keys.
    pub fn live_servers(&self) -> usize {
        (0..self.shards.len()).filter(|&i| self.on_ring(i)).count()
    }

    /// Whether shard `index` is given keys: on the ring (not ejected), or owning slots.
    pub fn on_ring(&self, index: usize) -> bool {
        self.placement.places_on(index)
    }

    /// The cluster's slot map, in a cluster pool.
    pub fn slots(&self) -> Option<&crate::placement::slots::SlotMap> {
        match &self.placement {
            Placement::Slots(map) => Some(map),
            Placement::Ring(_) => None,
        }
    }

    /// The shard called `name`, a shard's lasting identity across snapshots.
    pub fn shard_named(&self, name: &str) -> Option<&Shard<N>> {
        self.shards.iter().find(|s| &*s.name == name)
    }

    /// Every node of every shard.
    pub fn nodes(&self) -> impl Iterator<Item = &N> {
        self.shards.iter().flat_map(|s| &s.nodes)
    }
}

/// What the pool knows of one node.
#[derive(Clone, Debug)]
pub struct NodeStatus {
    /// What its checks and connections say.
    pub health: Health,
    /// What last changed `health`, for operators.
    pub reason: Arc<str>,
    /// Its health has been reported at least once: a node found down, not merely unchecked.
    pub checked: bool,
    /// What the node last said of itself (Redis); `None` until it says.
    pub said: Option<Said>,
    /// It was the shard's master before a failover.
    pub former_master: bool,
    /// Why the node is held down whatever its checks say: it is a master that restarted with
    /// fewer keys than its replicas, whose data it would wipe.
    pub restarted_empty: Option<Arc<str>>,
    /// The replication offset at which this process last said it was a replica in sync with
    /// its master: it holds the master's data up to there. Forgotten when the process restarts
    /// or a master is made a replica (it will resync); kept when it is promoted.
    pub in_sync_at: Option<u64>,
}

impl NodeStatus {
    /// A node not checked yet: down until its first health check passes.
    pub fn unchecked() -> NodeStatus {
        NodeStatus {
            health: Health::Down,
            reason: "no health check yet".into(),
            checked: false,
            said: None,
            former_master: false,
            restarted_empty: None,
            in_sync_at: None,
        }
    }

    /// Takes in what the node says now, after `before`.
    ///
    /// A replica first heard with its link down (the proxy started while its master was
    /// dead) counts as in sync at its offset if it has one: only a replica that has synced
    /// has an offset, and one restarted without its data has none.
    pub fn heard(&mut self, said: Said, before: Option<&Said>) {
        let same_process = before.is_some_and(|b| b.run_id == said.run_id);
        let resyncs = before.is_some_and(|b| b.role == Role::Master) && said.role == Role::Replica;
        let first_seen_synced = before.is_none() && said.role == Role::Replica && said.offset > 0;
        self.in_sync_at = match said.in_sync {
            true => Some(said.offset),
            false if first_seen_synced => Some(said.offset),
            false if same_process && !resyncs => self.in_sync_at,
            false => None,
        };
        self.said = Some(said);
    }

    /// The health that routes: down while it is held down.
    pub fn state(&self) -> Health {
        match self.restarted_empty {
            Some(_) => Health::Down,
            None => self.health,
        }
    }

    /// Why it is in its state.
    pub fn why(&self) -> &Arc<str> {
        self.restarted_empty.as_ref().unwrap_or(&self.reason)
    }

    /// What the node last said it is.
    pub fn says(&self) -> Option<Role> {
        self.said.as_ref().map(|s| s.role)
    }
}

/// A shard: its name (its ring identity), its nodes, and which of them is its master now.
/// Generic over the node type so routing rules are tested without sockets.
#[derive(Clone, Debug)]
pub struct Shard<N = Arc<Node>> {
    pub name: Arc<str>,
    /// What the ring hashes for it, and its weight there.
    pub identity: Arc<str>,
    pub weight: u32,
    /// The configured master first, then the replicas in configuration order.
    pub nodes: Vec<N>,
    /// What the pool knows of each node, in `nodes`' order.
    pub status: Vec<NodeStatus>,
    /// The index in `nodes` of the master.
    pub master: usize,
    /// A memcache shard with replicas: writes go to every node, and reads and writes go on
    /// while any node is up.
    pub replicated: bool,
}

impl Shard {
    /// Where node `id` is in `nodes`.
    pub fn index_of(&self, id: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id() == id)
    }
}

impl<N> Shard<N> {
    /// The master node.
    pub fn master(&self) -> &N {
        &self.nodes[self.master]
    }

    fn replica_count(&self) -> usize {
        self.nodes.len() - 1
    }

    /// The `k`-th replica (in configuration order, skipping the master), as an index in `nodes`.
    fn replica(&self, k: usize) -> usize {
        if k < self.master { k } else { k + 1 }
    }

    /// Whether node `i` takes reads by preference: it passed its last check and nothing has
    /// failed on it since.
    pub fn is_up(&self, i: usize) -> bool {
        self.status.get(i).is_some_and(|n| n.state() == Health::Up)
    }

    /// Whether the master has stepped down: it says it is a replica, or its checks found it
    /// down (a node merely not checked yet, at start-up, has not stepped down).
    pub fn master_stepped_down(&self) -> bool {
        let master = &self.status[self.master];
        match master.says() {
            Some(Role::Replica) => true,
            _ => master.checked && master.state() == Health::Down,
        }
    }

    /// The node that should be master by what the nodes say, when it is not the current one:
    /// - the master stepped down and other nodes that are not down say they are master;
    /// - or another node says it is master beside the current one, which has no replication
    ///   history (after a failover, an instance that starts with the configured master,
    ///   restarted empty, must not keep writing there).
    ///
    /// Among several claims, the largest offset wins, then the current master, then
    /// configuration order, so that every instance picks the same node.
    pub fn master_by_roles(&self) -> Option<usize> {
        let claims: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let node = &self.status[i];
                node.state() != Health::Down && node.says() == Some(Role::Master)
            })
            .collect();
        let offset = |i: usize| self.status[i].said.as_ref().map_or(0, |s| s.offset);
        let succeeds_a_claim = |i: usize| claims.iter().any(|&j| self.succeeded(i, j));
        let best = *claims.iter().max_by_key(|&&i| {
            (
                succeeds_a_claim(i),
                offset(i),
                i == self.master,
                std::cmp::Reverse(i),
            )
        })?;
        // Promoted in the current master's place (by another instance, Sentinel or an
        // operator) while the current master still says it is one (it was stalled, say): the
        // promoted node's history says so, and every instance that hears both goes there.
        if best != self.master && self.succeeded(best, self.master) {
            return Some(best);
        }
        // A master with no replication history (a fresh process that never had a replica)
        // beside one with history: offsets taken at different checks do not compare finely,
        // but zero against more does.
        let current = &self.status[self.master];
        let contested = current.says() == Some(Role::Master)
            && current.state() != Health::Down
            && offset(self.master) == 0
            && offset(best) > 0;
        match best != self.master && (self.master_stepped_down() || contested) {
            true => Some(best),
            false => None,
        }
    }

    /// Whether node `i` took node `j`'s place: `i`'s previous replication id is `j`'s current
    /// one (a replica promoted keeps its master's id as its second).
    fn succeeded(&self, i: usize, j: usize) -> bool {
        let said = |n: usize| self.status[n].said.as_ref();
        match (said(i), said(j)) {
            (Some(i), Some(j)) => {
                let known = i.replid2.bytes().any(|b| b != b'0');
                known && i.replid2 == j.replid
            }
            _ => false,
        }
    }

    /// Whether the shard can serve its keys: the master is not down, or for a replicated shard
    /// any node.
    pub fn serving(&self) -> bool {
        let alive = |n: &NodeStatus| n.state() != Health::Down;
        alive(&self.status[self.master]) || (self.replicated && self.status.iter().any(alive))
    }

    /// The node a command goes to, as an index in `nodes`: writes to the master, reads as
    /// `read_from` says. `spread` (a session id) picks among replicas.
    pub fn node_for(&self, write: bool, read_from: ReadFrom, spread: usize) -> usize {
        if self.replicated && !write {
            return self.read_index(read_from, spread);
        }
        let replicas = self.replica_count();
        if write || replicas == 0 || read_from == ReadFrom::Master {
            return self.master;
        }
        let start = spread % replicas;
        match read_from {
            ReadFrom::Replica => self.replica(start),
            _ => (0..replicas)
                .map(|k| self.replica((start + k) % replicas))
                .find(|&i| self.is_up(i))
                .unwrap_or(self.master),
        }
    }

    /// For a replicated shard, the node a read goes to: the first in service in `read_from`'s
    /// order, else the first in that order.
    pub fn read_index(&self, read_from: ReadFrom, spread: usize) -> usize {
        let replicas = self.replica_count().max(1);
        let start = spread % replicas;
        let nth = |k: usize| match read_from {
            ReadFrom::Master if k == 0 => self.master,
            ReadFrom::Master => self.replica((start + k - 1) % replicas),
            _ if k < replicas => self.replica((start + k) % replicas),
            _ => self.master,
        };
        let order = self.replica_count() + 1;
        (0..order)
            .map(nth)
            .find(|&i| self.is_up(i))
            .unwrap_or(nth(0))
    }

    /// The node after `failed` to retry a read on: the next one in service, else the next.
    pub fn retry_index(&self, failed: usize) -> usize {
        let n = self.nodes.len();
        (1..n)
            .map(|k| (failed + k) % n)
            .find(|&i| self.is_up(i))
            .unwrap_or((failed + 1) % n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard of `n` nodes with `master` as its master and the nodes in `down` failing.
    fn shard(n: usize, master: usize, down: &[usize], replicated: bool) -> Shard<()> {
        Shard {
            name: "s".into(),
            identity: "s".into(),
            weight: 1,
            nodes: vec![(); n],
            status: (0..n)
                .map(|i| NodeStatus {
                    health: match down.contains(&i) {
                        true => Health::Down,
                        false => Health::Up,
                    },
                    ..NodeStatus::unchecked()
                })
                .collect(),
            master,
            replicated,
        }
    }

    #[test]
    fn writes_go_to_the_master_wherever_it_is() {
        for master in 0..3 {
            let s = shard(3, master, &[], false);
            for read_from in [
                ReadFrom::Master,
                ReadFrom::Replica,
                ReadFrom::ReplicaPreferred,
            ] {
                assert_eq!(s.node_for(true, read_from, 7), master);
            }
            assert_eq!(s.node_for(false, ReadFrom::Master, 7), master);
        }
    }

    #[test]
    fn replica_reads_spread_over_the_replicas_and_never_hit_the_master() {
        let s = shard(3, 1, &[], false);
        let picked: Vec<usize> = (0..4)
            .map(|spread| s.node_for(false, ReadFrom::Replica, spread))
            .collect();
        assert_eq!(picked, [0, 2, 0, 2]);
    }

    #[test]
    fn replica_preferred_falls_back_to_the_master_only_when_every_replica_is_down() {
        let s = shard(3, 0, &[1], false);
        assert_eq!(s.node_for(false, ReadFrom::ReplicaPreferred, 0), 2);
        let s = shard(3, 0, &[1, 2], false);
        assert_eq!(s.node_for(false, ReadFrom::ReplicaPreferred, 0), 0);
        // `replica` does not look at health: the pool asked for replicas only.
        assert_eq!(s.node_for(false, ReadFrom::Replica, 0), 1);
    }

    #[test]
    fn replicated_reads_take_the_first_node_in_service() {
        let s = shard(3, 0, &[0], true);
        assert_eq!(s.node_for(false, ReadFrom::Master, 0), 1);
        let s = shard(3, 0, &[], true);
        assert_eq!(s.node_for(false, ReadFrom::Master, 5), 0);
        assert_eq!(s.node_for(false, ReadFrom::Replica, 1), 2);
        let s = shard(3, 0, &[0, 1, 2], true);
        assert_eq!(
            s.node_for(false, ReadFrom::Master, 0),
            0,
            "none up: the first"
        );
    }

    #[test]
    fn a_failed_read_moves_to_the_next_node_in_service() {
        let s = shard(3, 0, &[1], true);
        assert_eq!(s.retry_index(0), 2);
        assert_eq!(s.retry_index(2), 0);
        let s = shard(3, 0, &[0, 1, 2], true);
        assert_eq!(s.retry_index(0), 1, "none up: the next");
    }

    fn says(s: &mut Shard<()>, roles: [Option<(Role, u64)>; 3]) {
        for (node, role) in s.status.iter_mut().zip(roles) {
            node.checked = true;
            node.said = role.map(|(role, offset)| Said::for_tests(role, offset, 0, ""));
        }
    }

    #[test]
    fn the_master_follows_what_the_nodes_say() {
        let (master, replica) = (Some((Role::Master, 0)), Some((Role::Replica, 0)));
        let mut s = shard(3, 0, &[], false);
        assert_eq!(s.master_by_roles(), None, "nothing said yet");
        says(&mut s, [master, replica, replica]);
        assert_eq!(s.master_by_roles(), None, "the master is master");
        says(&mut s, [replica, replica, master]);
        assert_eq!(s.master_by_roles(), Some(2));
        says(&mut s, [replica, master, master]);
        assert_eq!(
            s.master_by_roles(),
            Some(1),
            "two claim it: the first of equals"
        );
        says(
            &mut s,
            [replica, Some((Role::Master, 5)), Some((Role::Master, 9))],
        );
        assert_eq!(
            s.master_by_roles(),
            Some(2),
            "two claim it: the most advanced"
        );
        says(&mut s, [None, master, replica]);
        s.status[0].checked = false;
        assert_eq!(s.master_by_roles(), None, "the master is not checked yet");
    }

    #[test]
    fn a_master_back_empty_beside_the_promoted_one_gives_way() {
        // After a failover another instance made, this one starts with the configured master,
        // which came back empty claiming master beside the promoted node.
        let mut s = shard(2, 0, &[], false);
        says(
            &mut s,
            [Some((Role::Master, 0)), Some((Role::Master, 48_000)), None],
        );
        assert_eq!(s.master_by_roles(), Some(1));
        // The current master leads, or is level: nothing changes.
        says(
            &mut s,
            [Some((Role::Master, 48_000)), Some((Role::Master, 0)), None],
        );
        assert_eq!(s.master_by_roles(), None);
        let mut s = shard(2, 1, &[], false);
        says(
            &mut s,
            [Some((Role::Master, 7)), Some((Role::Master, 7)), None],
        );
        assert_eq!(s.master_by_roles(), None);
    }

    #[test]
    fn a_master_that_died_gives_way_to_the_one_node_promoted_elsewhere() {
        let (master, replica) = (Some((Role::Master, 0)), Some((Role::Replica, 0)));
        // The master was seen as master, then went down; a replica was promoted by Sentinel.
        let mut s = shard(3, 0, &[0], false);
        says(&mut s, [master, master, replica]);
        assert!(s.master_stepped_down());
        assert_eq!(s.master_by_roles(), Some(1));
        // A node that is down itself does not count as a claim.
        let mut s = shard(3, 0, &[0, 1], false);
        says(&mut s, [master, master, replica]);
        assert_eq!(s.master_by_roles(), None);
        // Not checked yet: a node still starting up is not a master that stepped down.
        let mut s = shard(3, 0, &[0], false);
        says(&mut s, [None, master, replica]);
        s.status[0].checked = false;
        assert!(!s.master_stepped_down());
        // Checked and found down, never having said anything (the proxy started while it was
        // dead): it has stepped down.
        s.status[0].checked = true;
        assert!(s.master_stepped_down());
        assert_eq!(s.master_by_roles(), Some(1));
    }

    #[test]
    fn a_node_promoted_in_the_masters_place_wins_while_the_old_master_still_claims() {
        // The master stalled; another instance promoted node 1 (its previous replication id
        // is the master's) and the master, back, still says it is master with a larger offset.
        let mut s = shard(2, 0, &[], false);
        says(
            &mut s,
            [Some((Role::Master, 900)), Some((Role::Master, 800)), None],
        );
        assert_eq!(
            s.master_by_roles(),
            None,
            "no history: the current master stays"
        );
        let ids = |s: &mut Shard<()>, n: usize, replid: &str, replid2: &str| {
            let said = s.status[n].said.as_mut().unwrap();
            (said.replid, said.replid2) = (replid.into(), replid2.into());
        };
        let none = "0000000000000000000000000000000000000000";
        ids(&mut s, 0, "old", none);
        ids(&mut s, 1, "new", "old");
        assert_eq!(s.master_by_roles(), Some(1));
        // Seen from an instance that already follows node 1: it stays.
        s.master = 1;
        assert_eq!(s.master_by_roles(), None);
        // Never promoted: an all-zero id matches nothing.
        ids(&mut s, 0, none, none);
        ids(&mut s, 1, "new", none);
        s.master = 0;
        assert_eq!(s.master_by_roles(), None);
    }

    #[test]
    fn in_sync_is_remembered_until_the_process_restarts_or_a_master_resyncs() {
        let said = |role, in_sync, run_id: &str| Said {
            in_sync,
            ..Said::for_tests(role, 500, 1, run_id)
        };
        let mut node = NodeStatus::unchecked();
        node.heard(said(Role::Replica, true, "a"), None);
        assert_eq!(node.in_sync_at, Some(500));
        // First heard with its link down, with an offset: it synced before.
        let mut first = NodeStatus::unchecked();
        first.heard(said(Role::Replica, false, "a"), None);
        assert_eq!(first.in_sync_at, Some(500));
        // Without one: it never synced (restarted without its data).
        let mut empty = NodeStatus::unchecked();
        empty.heard(
            Said {
                offset: 0,
                ..said(Role::Replica, false, "a")
            },
            None,
        );
        assert_eq!(empty.in_sync_at, None);
        // Its master died: the link is down, the data as it was.
        let before = node.said.clone();
        node.heard(said(Role::Replica, false, "a"), before.as_ref());
        assert_eq!(node.in_sync_at, Some(500));
        // Promoted: it keeps its data.
        let before = node.said.clone();
        node.heard(said(Role::Master, false, "a"), before.as_ref());
        assert_eq!(node.in_sync_at, Some(500));
        // Made a replica again: it resyncs first.
        let before = node.said.clone();
        node.heard(said(Role::Replica, false, "a"), before.as_ref());
        assert_eq!(node.in_sync_at, None);
        node.heard(said(Role::Replica, true, "a"), node.said.clone().as_ref());
        // Restarted: nothing is known of its data.
        let before = node.said.clone();
        node.heard(said(Role::Replica, false, "b"), before.as_ref());
        assert_eq!(node.in_sync_at, None);
    }

    #[test]
    fn serving_needs_the_master_unless_replicated() {
        assert!(!shard(2, 0, &[0], false).serving());
        assert!(shard(2, 0, &[0], true).serving());
        assert!(shard(2, 1, &[0], false).serving());
    }
}
