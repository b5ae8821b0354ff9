//! Building a pool's shards from its configuration. On a reload the shards of the new shape
//! reuse the nodes of the old one wherever a server keeps an address, so their connections,
//! health and what they said carry over; only new addresses get new nodes.

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::state::{NodeStatus, Shard};
use crate::backend::{Invalidations, Node, NodeEvent, NodeSpec};
use crate::config::{FailoverMode, PoolConfig, Protocol, ServerConfig};
use crate::metrics::{Metrics, ServerLabels};
use crate::topology::cluster::ClusterShard;
use crate::workers::Workers;

/// What starting a node takes, kept by the pool's keeper for reloads.
pub(super) struct NodeMaker {
    pub workers: Arc<Workers>,
    pub metrics: Arc<Metrics>,
    /// Where the pool's nodes report.
    pub events: UnboundedSender<NodeEvent>,
    /// The pool's near cache, which its nodes' invalidations go to.
    pub invalidations: Option<Arc<dyn Invalidations>>,
}

impl NodeMaker {
    /// The shard of `server` in `pool`, keeping the nodes (and what is known of them) of
    /// `before` whose addresses it still lists. Its master is the configured one, unless the
    /// node `before` routed writes to is still there.
    pub fn shard(&self, pool: &PoolConfig, server: &ServerConfig, before: Option<&Shard>) -> Shard {
        let replicated = pool.protocol == Protocol::Memcache && !server.replicas.is_empty();
        // Sentinel has named every master by now (`sentinel::discover`).
        let addrs = server.master.iter().chain(&server.replicas);
        let mut master = 0;
        let (nodes, status): (Vec<Arc<Node>>, Vec<NodeStatus>) = addrs
            .enumerate()
            .map(|(i, addr)| {
                let kept = before.and_then(|b| {
                    let n = b.nodes.iter().position(|node| node.addr == *addr)?;
                    if n == b.master {
                        master = i;
                    }
                    Some((b.nodes[n].clone(), b.status[n].clone()))
                });
                kept.unwrap_or_else(|| {
                    let node = self.start(pool, &server.name, i == 0, addr, replicated);
                    (node, NodeStatus::unchecked())
                })
            })
            .unzip();
        Shard {
            name: server.name.as_str().into(),
            identity: server.identity.as_str().into(),
            weight: server.weight,
            nodes,
            status,
            master,
            replicated,
        }
    }

    /// The shard of a cluster's `listed` shard: its master and replicas, each node of
    /// `before` (any shard's) kept with what is known of it where its address is listed.
    pub fn cluster_shard(
        &self,
        pool: &PoolConfig,
        listed: &ClusterShard,
        before: &[Shard],
    ) -> Shard {
        let name: Arc<str> = listed.name().into();
        let (nodes, status) = std::iter::once(&listed.master)
            .chain(&listed.replicas)
            .enumerate()
            .map(|(i, addr)| {
                let kept = before.iter().find_map(|b| {
                    let n = b.nodes.iter().position(|node| node.addr == *addr)?;
                    Some((b.nodes[n].clone(), b.status[n].clone()))
                });
                kept.unwrap_or_else(|| {
                    let node = self.start(pool, "cluster", i == 0, addr, false);
                    (node, NodeStatus::unchecked())
                })
            })
            .unzip();
        Shard {
            identity: name.clone(),
            name,
            weight: 1,
            nodes,
            status,
            master: 0,
            replicated: false,
        }
    }

    /// Starts a node of server `server_name` (its `master` or a replica) at `addr`;
    /// `replicated`: a memcache server with replicas.
    fn start(
        &self,
        pool: &PoolConfig,
        server_name: &str,
        master: bool,
        addr: &crate::config::Address,
        replicated: bool,
    ) -> Arc<Node> {
        let labels = ServerLabels {
            pool: pool.name.clone(),
            server: server_name.to_string(),
            role: if master { "master" } else { "replica" }.to_string(),
            address: addr.to_string(),
        };
        let spec = NodeSpec {
            server_name,
            addr: addr.clone(),
            metrics: self.metrics.server(labels),
            events: self.events.clone(),
            failure_limit: match pool.failover {
                FailoverMode::Eject { failure_limit, .. } if master => Some(failure_limit),
                _ => None,
            },
            flush_when_back: replicated,
            invalidations: self.invalidations.clone(),
        };
        Arc::new(Node::start(&self.workers, pool, spec))
    }
}
