//! The one writer of a pool's state: it hears what the nodes report (up, down, failing) and
//! publishes a new snapshot when routing should change. Placement is never rebuilt for health,
//! except for twemproxy's ejection, which the configuration asks for: then the ring of the
//! servers left is built once per set of ejected servers and kept for when that set recurs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::{Instant, MissedTickBehavior, interval, sleep_until};

use super::cluster::ClusterNews;
use super::failover;
use super::sentinel::MasterNamed;
use super::shards::NodeMaker;
use super::state::{PoolState, Shard};
use crate::backend::{NodeEvent, NodeId, Role};
use crate::config::{Address, FailoverMode, PoolConfig};
use crate::metrics::ShardMetrics;
use crate::placement::{Placement, Ring};
use cluster::ClusterKeep;

mod cluster;
mod promotion;
pub(super) use promotion::Promotion;

/// Rings kept for sets of ejected servers that may recur.
const MAX_RINGS_KEPT: usize = 64;

pub(super) struct Keeper {
    config: PoolConfig,
    /// Starts the nodes a reload adds.
    maker: NodeMaker,
    shards: Vec<Shard>,
    /// When each ejected shard rejoins the ring.
    out_until: Vec<Option<Instant>>,
    /// Per shard: its failover state and counters.
    failover: Vec<ShardFailover>,
    /// Where promotion tasks report.
    promotions: UnboundedSender<Promotion>,
    /// Rings by the set of shards on them, the full ring among them.
    rings: HashMap<Vec<bool>, Arc<Ring>>,
    /// A cluster pool's slot map and the task asking the cluster.
    cluster: Option<ClusterKeep>,
    state: Arc<ArcSwap<PoolState>>,
}

/// What a keeper hears.
pub(super) struct Inputs {
    pub events: UnboundedReceiver<NodeEvent>,
    pub promoted: UnboundedReceiver<Promotion>,
    pub sentinel: Option<UnboundedReceiver<MasterNamed>>,
    pub cluster: Option<UnboundedReceiver<ClusterNews>>,
    /// New shapes from reloads; closed when the pool is gone.
    pub reshape: UnboundedReceiver<PoolConfig>,
}

/// A shard's failover bookkeeping.
pub(super) struct ShardFailover {
    metrics: ShardMetrics,
    /// Since when its master has been down.
    down_since: Option<Instant>,
    /// Up to when its time without a master has been counted.
    counted_until: Instant,
    /// A promotion is under way.
    promoting: bool,
    /// A master Sentinel named that is none of the shard's nodes (warned about once).
    unknown_master: Option<Address>,
    /// When writes last moved to a new master (promoted here or elsewhere), which keeps its
    /// place for [`HOLD_DOWN`].
    moved_at: Option<Instant>,
    /// No replica could take the master's place (said once per outage).
    no_candidate_said: bool,
}

/// How long a new master stays master whatever its checks say, on every instance (each counts
/// from when it moved its writes there): a master that stalls and recovers again and again (a
/// flapping VM, forks of a large data set) gets errors for its stalls rather than promotions
/// that each lose what the last did not replicate.
const HOLD_DOWN: Duration = Duration::from_secs(10);

impl ShardFailover {
    pub(super) fn new(metrics: ShardMetrics) -> ShardFailover {
        ShardFailover {
            metrics,
            down_since: None,
            counted_until: Instant::now(),
            promoting: false,
            unknown_master: None,
            moved_at: None,
            no_candidate_said: false,
        }
    }
}

impl Keeper {
    /// A keeper for `config`'s shards (a cluster pool's come from the cluster) whose nodes
    /// report to `events`, the pool's first snapshot, and what the keeper will hear (Sentinel
    /// is the caller's to add).
    pub(super) fn new(
        config: PoolConfig,
        maker: NodeMaker,
        events: UnboundedReceiver<NodeEvent>,
        reshape: UnboundedReceiver<PoolConfig>,
    ) -> (Keeper, Arc<ArcSwap<PoolState>>, Inputs) {
        let shards: Vec<Shard> = config
            .servers
            .iter()
            .map(|s| maker.shard(&config, s, None))
            .collect();
        let failover = config
            .servers
            .iter()
            .map(|s| ShardFailover::new(maker.metrics.shard(&config.name, &s.name)))
            .collect();
        let live = vec![true; shards.len()];
        let ring = Arc::new(config.ring(&live));
        let (cluster, news) = match &config.cluster {
            Some(c) => {
                let (keep, news) = ClusterKeep::start(&config, c, &maker.metrics);
                (Some(keep), Some(news))
            }
            None => (None, None),
        };
        let placement = match &cluster {
            Some(c) => Placement::Slots(c.slots.clone()),
            None => Placement::Ring(ring.clone()),
        };
        let state = Arc::new(ArcSwap::from_pointee(PoolState::new(
            placement,
            shards.clone(),
        )));
        let (promotions, promoted) = mpsc::unbounded_channel();
        let inputs = Inputs {
            events,
            promoted,
            sentinel: None,
            cluster: news,
            reshape,
        };
        let keeper = Keeper {
            out_until: vec![None; shards.len()],
            rings: HashMap::from([(live, ring)]),
            failover,
            promotions,
            config,
            maker,
            shards,
            cluster,
            state: state.clone(),
        };
        (keeper, state, inputs)
    }

    /// What sessions of a cluster pool tell this keeper through.
    pub(super) fn cluster_link(&self) -> Option<super::cluster::ClusterLink> {
        self.cluster.as_ref().map(ClusterKeep::link)
    }

    /// Applies node events, promotions, what Sentinel says and new shapes (`reshape`) until
    /// the pool is gone (`reshape` closes). Every health interval it also looks again at each
    /// shard, so a promotion that failed is tried again.
    pub(super) async fn run(mut self, inputs: Inputs) {
        let Inputs {
            mut events,
            mut promoted,
            mut sentinel,
            mut cluster,
            mut reshape,
        } = inputs;
        let mut tick = interval(self.config.health_check.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let next_return = self.out_until.iter().flatten().min().copied();
            let changed = tokio::select! {
                Some(event) = events.recv() => self.apply(event),
                config = reshape.recv() => match config {
                    Some(config) => self.reshape(config),
                    None => return,
                },
                Some(promotion) = promoted.recv() => self.promoted(promotion),
                Some(named) = next(&mut sentinel) => self.sentinel_named(named),
                Some(news) = next(&mut cluster) => self.cluster_news(news),
                _ = sleep_until(next_return.unwrap_or_else(Instant::now)), if next_return.is_some() => {
                    self.rejoin(Instant::now())
                }
                _ = tick.tick() => {
                    let settled = self.settle(Instant::now());
                    (0..self.shards.len()).fold(settled, |changed, s| self.heal(s) | changed)
                }
            };
            self.count_unwritable(Instant::now());
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
            | NodeEvent::Said { node, .. } => *node,
        };
        let Some((s, n)) = self.locate(id) else {
            return false;
        };
        match event {
            NodeEvent::Health { health, reason, .. } => {
                let node = &mut self.shards[s].status[n];
                node.reason = reason;
                node.checked = true;
                let changed = std::mem::replace(&mut node.health, health) != health;
                // A master that went down may have been replaced by a node promoted elsewhere.
                changed | self.heal(s)
            }
            NodeEvent::FailedRepeatedly(_) => self.eject(s),
            NodeEvent::Said { said, .. } => {
                let (role, keys) = (said.role, said.keys);
                let node = &mut self.shards[s].status[n];
                let (before, held_data) = (node.said.clone(), node.in_sync_at.is_some());
                node.heard(said, before.as_ref());
                // Offsets move with every write: only what operators read in /topology, or
                // what routes, is worth a new snapshot.
                let changed = before.as_ref().map(|b| (b.role, b.keys)) != Some((role, keys))
                    || held_data != node.in_sync_at.is_some();
                if self.cluster.is_some() {
                    return changed;
                }
                let guarded = self.guard(s, n, before.as_ref());
                let master_before = self.shards[s].master;
                let healed = self.heal(s);
                // A node that was a replica and now says master, in the same process, was
                // promoted on purpose (by Sentinel or an operator): it is followed, not undone.
                // One that comes back as master (a new process, or not heard from) is attached.
                let said = self.shards[s].status[n].said.as_ref();
                let came_back = match (&before, said) {
                    (Some(b), Some(now)) => b.role != Role::Replica || b.run_id != now.run_id,
                    _ => true,
                };
                if came_back {
                    self.attach_former_master(s, n);
                }
                if healed {
                    // The master that lost its place to the nodes' claims.
                    self.attach_former_master(s, master_before);
                }
                healed | changed | guarded
            }
        }
    }

    /// Makes the shard writable again if its nodes allow: writes follow a node promoted
    /// elsewhere, or with `failover: promote` a replica is promoted in place of a master that is
    /// down. Returns whether routing changed now.
    fn heal(&mut self, s: usize) -> bool {
        if self.cluster.is_some() {
            // The cluster fails over itself; its new master comes with its slot map.
            self.ask_while_failing();
            return false;
        }
        if self.failover[s].promoting {
            // Its outcome decides; until then what the nodes say may be its doing.
            return false;
        }
        if self.follow_roles(s) {
            return true;
        }
        if self.config.failover == FailoverMode::Promote {
            self.start_promotion(s);
        }
        false
    }

    /// Writes go where the nodes say the master is ([`Shard::master_by_roles`]): a failover
    /// made by an operator, Sentinel or another instance, or a master back empty beside the
    /// node promoted in its place. Returns whether it changed.
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
            "{} is no longer master by what the nodes say; writes go to {}, which says it is master",
            shard.nodes[shard.master].label(),
            shard.nodes[new].label()
        );
        move_writes(shard, new);
        self.failover[s].metrics.followed.inc();
        self.failover[s].moved_at = Some(Instant::now());
        true
    }

    /// Sentinel named a server's master: writes go there if it is another of the server's
    /// nodes. Returns whether routing changed.
    fn sentinel_named(&mut self, named: MasterNamed) -> bool {
        let Some(s) = self.shards.iter().position(|s| s.name == named.server) else {
            return false;
        };
        let shard = &mut self.shards[s];
        let failover = &mut self.failover[s];
        let Some(new) = shard.nodes.iter().position(|n| n.addr == named.master) else {
            if failover.unknown_master.as_ref() != Some(&named.master) {
                tracing::error!(pool = %self.config.name, server = %shard.name, "Sentinel names {} master, which is none of the server's nodes; writes stay on {} until a restart or reload adds it", named.master, shard.master().label());
                failover.unknown_master = Some(named.master);
            }
            return false;
        };
        failover.unknown_master = None;
        if new == shard.master {
            return false;
        }
        tracing::warn!(
            pool = %self.config.name,
            server = %shard.name,
            "Sentinel names {} master; writes go there instead of {}",
            shard.nodes[new].label(),
            shard.master().label()
        );
        move_writes(shard, new);
        failover.metrics.sentinel.inc();
        true
    }

    /// The empty-master guard: a master that restarted with fewer keys than a replica that
    /// still follows it is held down (so that it takes no writes and, with `failover: promote`,
    /// a replica is promoted before the replicas resync from it and empty themselves), logged
    /// and counted. It is released once it follows another node or nothing is left to wipe.
    /// Returns whether routing changed.
    fn guard(&mut self, s: usize, n: usize, before: Option<&crate::backend::Said>) -> bool {
        let shard = &mut self.shards[s];
        if let Some(why) = failover::restarted_empty(shard, n, before) {
            tracing::error!(pool = %self.config.name, server = %shard.name, "{} {why}; it takes no writes until it follows another node or no replica has more keys", shard.nodes[n].label());
            self.failover[s].metrics.empty_master_restarts.inc();
            shard.status[n].restarted_empty = Some(why.into());
            return true;
        }
        let mut released = false;
        for i in 0..shard.nodes.len() {
            if shard.status[i].restarted_empty.is_some() && failover::no_longer_wipes(shard, i) {
                tracing::info!(pool = %self.config.name, server = %shard.name, "{} is no longer held down: it follows another node, or no replica has more keys", shard.nodes[i].label());
                shard.status[i].restarted_empty = None;
                released = true;
            }
        }
        released
    }

    /// A node that was this shard's master and claims to be master beside the current one
    /// (restarted with its old configuration, say) is made a replica of the current master:
    /// it never takes writes back on its own, and the current master's data wins. (Sentinel
    /// would do the same, later: it waits to see the node report itself master for a while.)
    fn attach_former_master(&self, s: usize, n: usize) {
        let shard = &self.shards[s];
        let current = shard.master;
        let node = &shard.status[n];
        let current_serves =
            shard.is_up(current) && shard.status[current].says() == Some(Role::Master);
        if n != current
            && current_serves
            && node.former_master
            && node.says() == Some(Role::Master)
            && !failover::would_wipe(shard, current, n)
        {
            shard.nodes[n].replicate_from(&shard.nodes[current].addr);
        }
    }

    /// Counts time without a master to write to, per shard, up to `now`.
    fn count_unwritable(&mut self, now: Instant) {
        for (shard, f) in self.shards.iter().zip(&mut self.failover) {
            if let Some(since) = f.down_since {
                let from = since.max(f.counted_until);
                let unwritable: Duration = now.saturating_duration_since(from);
                f.metrics
                    .unwritable_seconds
                    .inc_by(unwritable.as_secs_f64());
            }
            f.counted_until = now;
            let master_found_down = shard.status[shard.master].checked && !shard.serving();
            f.down_since = match !master_found_down {
                true => None,
                false => f.down_since.or(Some(now)),
            };
        }
    }

    /// twemproxy's auto-eject: the shard leaves the ring for the retry timeout and its keys
    /// rehash to the others meanwhile. A replicated shard stays while another of its nodes is
    /// up: its keys are served there without moving. Returns whether it left the ring now.
    fn eject(&mut self, s: usize) -> bool {
        let FailoverMode::Eject { retry_timeout, .. } = self.config.failover else {
            return false;
        };
        let shard = &self.shards[s];
        let standby_up =
            shard.replicated && (0..shard.nodes.len()).any(|i| i != shard.master && shard.is_up(i));
        if standby_up {
            return false;
        }
        let leaves = self.out_until[s].is_none();
        if leaves {
            shard.master().count_ejection();
            tracing::warn!(pool = %self.config.name, server = %shard.name, "ejecting server for {} ms", retry_timeout.as_millis());
        }
        self.out_until[s] = Some(Instant::now() + retry_timeout);
        leaves
    }

    /// Takes a pool's new shape from a reload: each server keeps what is known of it by name
    /// (its nodes still listed, their health, its master, ejection and failover state); new
    /// addresses get new nodes, and nodes no longer listed go once the last request on them
    /// is answered. Placement is rebuilt from the new configuration. Returns true: routing
    /// changes.
    fn reshape(&mut self, config: PoolConfig) -> bool {
        if self.cluster.is_some() {
            return self.reshape_cluster(config);
        }
        let before = std::mem::take(&mut self.shards);
        let mut failover: Vec<Option<ShardFailover>> = std::mem::take(&mut self.failover)
            .into_iter()
            .map(Some)
            .collect();
        let mut out_until = Vec::new();
        for server in &config.servers {
            let old = before.iter().position(|s| *s.name == *server.name);
            self.shards
                .push(self.maker.shard(&config, server, old.map(|i| &before[i])));
            out_until.push(old.and_then(|i| self.out_until[i]));
            let kept = old.and_then(|i| failover[i].take());
            self.failover.push(kept.unwrap_or_else(|| {
                ShardFailover::new(self.maker.metrics.shard(&config.name, &server.name))
            }));
        }
        self.out_until = out_until;
        self.rings.clear();
        tracing::info!(pool = %config.name, "reloaded: {} servers", config.servers.len());
        self.config = config;
        true
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
        if let Some(cluster) = &self.cluster {
            let placement = Placement::Slots(cluster.slots.clone());
            let state = PoolState::new(placement, self.shards.clone());
            self.state.store(Arc::new(state));
            return;
        }
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
        let state = PoolState::new(Placement::Ring(ring), self.shards.clone());
        self.state.store(Arc::new(state));
    }
}

/// Writes go to node `new` from now on. What is in flight on the former master fails rather
/// than be acknowledged later by a master that lost its place (it resyncs from the new one).
/// The new master is taken to say it is one until its next check: what it said last, as a
/// replica, would otherwise read as a master that stepped down, and send writes back.
fn move_writes(shard: &mut Shard, new: usize) {
    shard.status[shard.master].former_master = true;
    shard.master().replaced();
    shard.master = new;
    if let Some(said) = &mut shard.status[new].said {
        said.role = Role::Master;
    }
}

/// The next value from `rx`, or never when there is no `rx`.
async fn next<T>(rx: &mut Option<UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
