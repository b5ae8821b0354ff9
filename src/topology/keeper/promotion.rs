//! The keeper's promotions (`failover: promote`): a replica that holds the master's data is
//! promoted off the keeper's loop, and the outcome is applied when it comes.

use std::sync::Arc;

use tokio::time::Instant;

use super::{HOLD_DOWN, Keeper, move_writes};
use crate::backend::{Health, NodeId};
use crate::topology::failover;

/// What a promotion task reports.
pub(in crate::topology) struct Promotion {
    /// The shard's name: a reload may move it meanwhile.
    pub(super) shard: Arc<str>,
    /// The master it replaces.
    pub(super) replaces: NodeId,
    /// The node that took the master's place, or why none did.
    pub(super) result: Result<failover::Successor, String>,
}

impl Keeper {
    /// With `failover: promote`, when the shard's master has been found down by its checks
    /// (not merely unchecked yet) and no promotion is under way, promotes one of the replicas
    /// that are not down, off the keeper's loop; [`Keeper::promoted`] applies the outcome.
    pub(super) fn start_promotion(&mut self, s: usize) {
        let shard = &self.shards[s];
        let master = &shard.status[shard.master];
        let failover = &mut self.failover[s];
        if master.state() != Health::Down {
            failover.no_candidate_said = false;
        }
        let held = failover.moved_at.is_some_and(|at| at.elapsed() < HOLD_DOWN);
        if failover.promoting
            || shard.replicated
            || !master.checked
            || master.state() != Health::Down
            || held
        {
            return;
        }
        let candidates: Vec<_> = failover::candidates(shard)
            .into_iter()
            .map(|i| (i, shard.nodes[i].clone()))
            .collect();
        if candidates.is_empty() {
            if !std::mem::replace(&mut failover.no_candidate_said, true) {
                tracing::error!(pool = %self.config.name, server = %shard.name, "{} is down and no replica holds its data (none was seen in sync with it within {} bytes): writes fail until the master is back or a replica catches up", shard.master().label(), failover::MAX_LAG_BYTES);
            }
            return;
        }
        failover.no_candidate_said = false;
        failover.promoting = true;
        let replaces = shard.master().id();
        let name = shard.name.clone();
        let report = self.promotions.clone();
        tokio::spawn(async move {
            let result = failover::promote(candidates).await;
            let _ = report.send(Promotion {
                shard: name,
                replaces,
                result,
            });
        });
    }

    /// Applies a promotion's outcome: writes go to the promoted node, and the shard's other
    /// nodes (the old master too, when it comes back) are made its replicas. Returns whether
    /// routing changed.
    pub(super) fn promoted(&mut self, promotion: Promotion) -> bool {
        let Promotion {
            shard: name,
            replaces,
            result,
        } = promotion;
        let Some(s) = self.shards.iter().position(|s| s.name == name) else {
            return false;
        };
        let failover = &mut self.failover[s];
        failover.promoting = false;
        let shard = &mut self.shards[s];
        if shard.master().id() != replaces {
            // Writes moved meanwhile (the nodes said so): nothing left to do.
            return false;
        }
        let successor = match result {
            Ok(successor) => successor,
            Err(why) => {
                tracing::error!(pool = %self.config.name, server = %shard.name, "cannot promote a replica in place of {}: {why}", shard.master().label());
                return false;
            }
        };
        let (old, new) = (shard.master, successor.index);
        tracing::warn!(
            pool = %self.config.name,
            server = %shard.name,
            "{} {} in place of {} ({}); the other nodes now replicate from it",
            match successor.promoted_here {
                true => "promoted",
                false => "writes go to the node promoted elsewhere,",
            },
            shard.nodes[new].label(),
            shard.nodes[old].label(),
            shard.status[old].why()
        );
        move_writes(shard, new);
        let addr = shard.nodes[new].addr.clone();
        for (i, node) in shard.nodes.iter().enumerate() {
            if i == new {
                continue;
            }
            match failover::would_wipe(shard, new, i) {
                true => {
                    tracing::error!(pool = %self.config.name, server = %shard.name, "{} is not made a replica of {}, which holds far fewer keys: it would be emptied", node.label(), shard.nodes[new].label())
                }
                false => node.replicate_from(&addr),
            }
        }
        failover.moved_at = Some(Instant::now());
        if !successor.promoted_here {
            failover.metrics.followed.inc();
            return true;
        }
        failover.metrics.promoted.inc();
        if let Some(since) = failover.down_since {
            failover
                .metrics
                .promotion_seconds
                .observe(since.elapsed().as_secs_f64());
        }
        true
    }
}
