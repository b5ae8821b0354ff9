//! The one writer of a pool's state: it hears what the nodes report (up, down, failing) and
//! publishes a new snapshot when routing should change. Placement is never rebuilt for health,
//! except for twemproxy's ejection, which the configuration asks for: then the ring of the
//! servers left is built once per set of ejected servers and kept for when that set recurs.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, sleep_until};

use super::state::{PoolState, Shard};
use crate::backend::{NodeEvent, NodeId, Role};
use crate::config::PoolConfig;
use crate::placement::Ring;

/// Rings kept for sets of ejected servers that may recur.
const MAX_RINGS_KEPT: usize = 64;

pub(super) struct Keeper {
    config: PoolConfig,
    shards: Vec<Shard>,
    /// When each ejected shard rejoins the ring.
    out_until: Vec<Option<Instant>>,
    /// Per shard: times its writes moved to a node the nodes said is master.
    followed: Vec<Counter>,
    /// Rings by the set of shards on them, the full ring among them.
    rings: HashMap<Vec<bool>, Arc<Ring>>,
    state: Arc<ArcSwap<PoolState>>,
}

impl Keeper {
    /// A keeper for `shards`, and the pool's first snapshot.
    pub(super) fn new(
        config: PoolConfig,
        shards: Vec<Shard>,
        followed: Vec<Counter>,
    ) -> (Keeper, Arc<ArcSwap<PoolState>>) {
        let live = vec![true; shards.len()];
        let ring = Arc::new(config.ring(&live));
        let state = Arc::new(ArcSwap::from_pointee(PoolState::new(
            ring.clone(),
            shards.clone(),
        )));
        let keeper = Keeper {
            out_until: vec![None; shards.len()],
            rings: HashMap::from([(live, ring)]),
            followed,
            config,
            shards,
            state: state.clone(),
        };
        (keeper, state)
    }

    /// Applies node events until every node is gone.
    pub(super) async fn run(mut self, mut events: UnboundedReceiver<NodeEvent>) {
        loop {
            let next_return = self.out_until.iter().flatten().min().copied();
            let changed = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => self.apply(event),
                    None => return,
                },
                _ = sleep_until(next_return.unwrap_or_else(Instant::now)), if next_return.is_some() => {
                    self.rejoin(Instant::now())
                }
            };
            // A storm of failures from a dead node changes routing once, not per failure.
            if changed {
                self.publish();
            }
        }
    }

    fn locate(&self, id: NodeId) -> Option<(usize, usize)> {
        self.shards
            .iter()
            .enumerate()
            .find_map(|(s, shard)| Some((s, shard.index_of(id)?)))
    }

    /// Takes in one event; returns whether routing changed.
    fn apply(&mut self, event: NodeEvent) -> bool {
        let id = match &event {
            NodeEvent::Health { node, .. }
            | NodeEvent::FailedRepeatedly(node)
            | NodeEvent::Role { node, .. } => *node,
        };
        let Some((s, n)) = self.locate(id) else {
            return false;
        };
        match event {
            NodeEvent::Health { health, reason, .. } => {
                let node = &mut self.shards[s].status[n];
                node.reason = reason;
                let changed = std::mem::replace(&mut node.health, health) != health;
                // A master that went down may have been replaced by a node promoted elsewhere.
                changed | self.follow_roles(s)
            }
            NodeEvent::FailedRepeatedly(_) => self.eject(s),
            NodeEvent::Role { role, .. } => {
                let changed = self.shards[s].status[n].says.replace(role) != Some(role);
                self.attach_former_master(s, n);
                self.follow_roles(s) | changed
            }
        }
    }

    /// Writes go where the nodes say the master is: when the shard's master has stepped down
    /// and exactly one other live node says it is master (a failover made by an operator,
    /// Sentinel or another instance), that node becomes the shard's master. Returns whether it
    /// changed.
    fn follow_roles(&mut self, s: usize) -> bool {
        let shard = &mut self.shards[s];
        let Some(new) = shard.master_by_roles() else {
            if shard.master_stepped_down() {
                // The master stepped down and no node claims it yet: ask them all now.
                shard.nodes.iter().for_each(|n| n.check_now());
            }
            return false;
        };
        tracing::warn!(
            pool = %self.config.name,
            server = %shard.name,
            "{} reports itself a replica; writes go to {}, which reports itself master",
            shard.nodes[shard.master].label(),
            shard.nodes[new].label()
        );
        shard.status[shard.master].former_master = true;
        shard.master = new;
        self.followed[s].inc();
        true
    }

    /// A node that was this shard's master and now claims to be master again beside the
    /// current one (restarted with its old configuration, say) is made a replica of the current
    /// master: it never takes writes back on its own, and the current master's data wins.
    fn attach_former_master(&mut self, s: usize, n: usize) {
        let shard = &self.shards[s];
        let current = shard.master;
        let node = &shard.status[n];
        let current_serves =
            shard.is_up(current) && shard.status[current].says == Some(Role::Master);
        if n != current && node.former_master && node.says == Some(Role::Master) && current_serves {
            shard.nodes[n].replicate_from(&shard.nodes[current].addr);
        }
    }

    /// twemproxy's auto-eject: the shard leaves the ring for the retry timeout and its keys
    /// rehash to the others meanwhile. A replicated shard stays while another of its nodes is
    /// up: its keys are served there without moving. Returns whether it left the ring now.
    fn eject(&mut self, s: usize) -> bool {
        let shard = &self.shards[s];
        let standby_up =
            shard.replicated && (0..shard.nodes.len()).any(|i| i != shard.master && shard.is_up(i));
        if standby_up {
            return false;
        }
        let leaves = self.out_until[s].is_none();
        if leaves {
            shard.master().count_ejection();
            tracing::warn!(pool = %self.config.name, server = %shard.name, "ejecting server for {} ms", self.config.retry_timeout.as_millis());
        }
        self.out_until[s] = Some(Instant::now() + self.config.retry_timeout);
        leaves
    }

    /// Puts back on the ring the servers whose time out is over; returns whether any did.
    fn rejoin(&mut self, now: Instant) -> bool {
        let mut any = false;
        for (s, until) in self.out_until.iter_mut().enumerate() {
            if until.is_some_and(|t| t <= now) {
                tracing::info!(pool = %self.config.name, server = %self.shards[s].name, "server rejoins the ring");
                *until = None;
                any = true;
            }
        }
        any
    }

    fn publish(&mut self) {
        let live: Vec<bool> = self.out_until.iter().map(Option::is_none).collect();
        if self.rings.len() > MAX_RINGS_KEPT {
            self.rings.retain(|live, _| live.iter().all(|&l| l));
        }
        let config = &self.config;
        let ring = self
            .rings
            .entry(live)
            .or_insert_with_key(|live| Arc::new(config.ring(live)))
            .clone();
        self.state
            .store(Arc::new(PoolState::new(ring, self.shards.clone())));
    }
}
