//! The keeper of a cluster pool: its shards and slot map are the cluster's agreed view, a
//! redirect a session met moves its slot at once, and a failing master has the cluster asked
//! again until it has been replaced. The cluster fails over itself: no promotion here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{Keeper, ShardFailover};
use crate::backend::Health;
use crate::config::{Address, ClusterConfig, PoolConfig};
use crate::metrics::{Metrics, RefreshCause};
use crate::placement::slots::SlotMap;
use crate::topology::cluster::{self, ClusterLink, ClusterNews, ClusterView};

/// How long a slot a node redirected is read from its master: longer than a slot's migration
/// by `redis-cli --cluster reshard` takes, so its replicas are not read while it may be on its way.
const UNSETTLED_FOR: Duration = Duration::from_secs(10);

/// The keeper's part of a cluster pool.
pub(in crate::topology) struct ClusterKeep {
    pub(super) slots: Arc<SlotMap>,
    /// Slots redirected lately, read from their masters until then.
    unsettled: HashMap<u16, Instant>,
    link: ClusterLink,
    /// The task asking the cluster, stopped with the keeper or when a reload changes the
    /// seeds.
    follower: AbortHandle,
}

impl Drop for ClusterKeep {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl ClusterKeep {
    /// Starts asking the cluster of `pool` (which must have `cluster`); what it says arrives on
    /// the receiver, as do the redirects sent through [`ClusterKeep::link`].
    pub(in crate::topology) fn start(
        pool: &PoolConfig,
        cluster: &ClusterConfig,
        metrics: &Metrics,
    ) -> (ClusterKeep, UnboundedReceiver<ClusterNews>) {
        let (link, news) = ClusterLink::new(metrics.cluster(&pool.name));
        let follower = spawn_follower(pool, cluster, &link);
        let keep = ClusterKeep {
            slots: Arc::new(SlotMap::default()),
            unsettled: HashMap::new(),
            link,
            follower,
        };
        (keep, news)
    }

    pub(in crate::topology) fn link(&self) -> ClusterLink {
        self.link.clone()
    }
}

fn spawn_follower(pool: &PoolConfig, cluster: &ClusterConfig, link: &ClusterLink) -> AbortHandle {
    let follow = cluster::follow(
        pool.clone(),
        cluster.seeds.clone(),
        cluster.refresh,
        link.clone(),
    );
    tokio::spawn(follow).abort_handle()
}

impl Keeper {
    /// Takes in what the cluster or a session says; returns whether routing changed.
    pub(super) fn cluster_news(&mut self, news: ClusterNews) -> bool {
        match news {
            ClusterNews::View(view) => self.take_view(view),
            ClusterNews::Moved { slot, to } => {
                let unsettled = self.unsettle(slot);
                self.slot_moved(slot, &to) | unsettled
            }
            ClusterNews::Asked { slot } => self.unsettle(slot),
        }
    }

    /// The cluster's new view: shards rebuilt from it, each node kept (with what is known of
    /// it) wherever its address is still listed.
    fn take_view(&mut self, view: ClusterView) -> bool {
        let before = std::mem::take(&mut self.shards);
        let mut failover: Vec<(Arc<str>, ShardFailover)> = before
            .iter()
            .map(|s| s.name.clone())
            .zip(std::mem::take(&mut self.failover))
            .collect();
        for listed in &view.shards {
            let shard = self.maker.cluster_shard(&self.config, listed, &before);
            let kept = failover.iter().position(|(name, _)| *name == shard.name);
            self.failover.push(match kept {
                Some(i) => failover.swap_remove(i).1,
                None => {
                    ShardFailover::new(self.maker.metrics.shard(&self.config.name, &shard.name))
                }
            });
            self.shards.push(shard);
        }
        self.out_until = vec![None; self.shards.len()];
        let mut slots = view.slot_map();
        tracing::info!(
            pool = %self.config.name,
            "cluster slot map: {} shards, {} of {} slots served",
            view.shards.iter().filter(|s| !s.slots.is_empty()).count(),
            slots.owned(),
            crate::placement::slots::SLOTS
        );
        if let Some(cluster) = &mut self.cluster {
            for &slot in cluster.unsettled.keys() {
                slots.set_unsettled(slot, true);
            }
            cluster.slots = Arc::new(slots);
            cluster.link.metrics.map_changes.inc();
        }
        true
    }

    /// A node answered MOVED for `slot`: if `to` is a master the keeper knows, the slot is
    /// routed there now; the cluster is asked either way.
    fn slot_moved(&mut self, slot: u16, to: &Address) -> bool {
        let Some(cluster) = &mut self.cluster else {
            return false;
        };
        cluster.link.refresh(RefreshCause::Moved);
        let Some(s) = self.shards.iter().position(|s| s.master().addr == *to) else {
            return false;
        };
        if cluster.slots.owner(slot) == Some(s) {
            return false;
        }
        Arc::make_mut(&mut cluster.slots).assign(slot, slot, s);
        cluster.link.metrics.map_changes.inc();
        true
    }

    /// A node redirected a request of `slot`: its reads go to its master for
    /// [`UNSETTLED_FOR`]. Returns whether routing changed.
    fn unsettle(&mut self, slot: u16) -> bool {
        let Some(cluster) = &mut self.cluster else {
            return false;
        };
        let until = Instant::now() + UNSETTLED_FOR;
        if cluster.unsettled.insert(slot, until).is_some() {
            return false;
        }
        Arc::make_mut(&mut cluster.slots).set_unsettled(slot, true)
    }

    /// Lets the slots whose time is up be read from replicas again; returns whether any was.
    pub(super) fn settle(&mut self, now: Instant) -> bool {
        let Some(cluster) = &mut self.cluster else {
            return false;
        };
        let before = cluster.unsettled.len();
        let mut settled = Vec::new();
        cluster.unsettled.retain(|&slot, until| {
            let keep = *until > now;
            if !keep {
                settled.push(slot);
            }
            keep
        });
        if cluster.unsettled.len() == before {
            return false;
        }
        let slots = Arc::make_mut(&mut cluster.slots);
        settled.into_iter().fold(false, |changed, slot| {
            slots.set_unsettled(slot, false) | changed
        })
    }

    /// While a master of a slot-owning shard is not up, the cluster is asked again (each
    /// health interval, and when its health changes): a master that died is replaced as soon
    /// as the cluster promotes its replica.
    pub(super) fn ask_while_failing(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let failing = self.shards.iter().enumerate().any(|(i, shard)| {
            cluster.slots.owns_any(i) && shard.status[shard.master].state() != Health::Up
        });
        if failing {
            cluster.link.refresh(RefreshCause::Failing);
        }
    }

    /// A reload of a cluster pool: new seeds or a new refresh interval restart the task that
    /// asks the cluster; the shards stay what the cluster says.
    pub(super) fn reshape_cluster(&mut self, config: PoolConfig) -> bool {
        if let (Some(keep), Some(new)) = (&mut self.cluster, &config.cluster)
            && config.cluster != self.config.cluster
        {
            keep.follower.abort();
            keep.follower = spawn_follower(&config, new, &keep.link);
            tracing::info!(pool = %config.name, "reloaded: the cluster is asked from {} seeds", new.seeds.len());
        }
        self.config = config;
        false
    }
}
