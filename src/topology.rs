//! Pools, their shards (a master and its replicas) and their live rings.
//!
//! Sessions read a pool's ring through an `ArcSwap`: a lock-free load per request. Only the
//! ejector task of a pool ever writes it, when a server leaves or rejoins the ring.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::backend::{EjectHook, Node, NodeHealth, NodeSpec, Role};
use crate::config::{Config, Failover, PoolConfig, Protocol, ReadFrom};
use crate::metrics::{Metrics, PoolMetrics, ServerLabels};
use crate::ring::Ring;
use crate::workers::Workers;

/// Everything the proxy serves, built once from the configuration.
pub struct Topology {
    pub pools: Vec<Arc<Pool>>,
    pub metrics: Metrics,
}

pub struct Pool {
    pub config: PoolConfig,
    pub ring: Arc<ArcSwap<Ring>>,
    pub shards: Vec<Shard>,
    pub metrics: PoolMetrics,
    pub started: std::time::Instant,
    pub scripts: Scripts,
}

/// The scripts clients loaded with SCRIPT LOAD, by SHA1 (lower-case hex), to load again on a
/// node that lost them (a restart). Locked only by SCRIPT LOAD and on a NOSCRIPT reply.
pub type Scripts = Arc<std::sync::Mutex<std::collections::HashMap<Vec<u8>, bytes::Bytes>>>;

pub struct Shard {
    pub name: String,
    pub master: Node,
    pub replicas: Vec<Node>,
    /// A memcache shard with replicas: writes go to every node, and reads and writes go on
    /// while any node is up.
    pub replicated: bool,
}

impl Topology {
    /// Starts every node's connections on the workers, and health checks and ejection on the
    /// current runtime.
    pub fn start(config: &Config, workers: &Workers) -> Topology {
        let metrics = Metrics::default();
        let pools = config
            .pools
            .iter()
            .map(|p| Arc::new(Pool::start(p, &metrics, workers)))
            .collect();
        Topology { pools, metrics }
    }

    /// Whether every pool can serve every key: a reachable master for every shard on its ring.
    /// `Err` says which cannot.
    pub fn readiness(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for pool in &self.pools {
            let ring = pool.ring.load();
            if ring.live_servers() == 0 {
                problems.push(format!(
                    "pool {}: no server is on the ring",
                    pool.config.name
                ));
            }
            for (i, shard) in pool.shards.iter().enumerate() {
                let serving = shard.master.is_up()
                    || (shard.replicated && shard.replicas.iter().any(Node::is_up));
                if ring.contains(i) && !serving {
                    problems.push(format!(
                        "pool {}: master of {} is unreachable",
                        pool.config.name,
                        shard.master.label()
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Pool {
    fn start(config: &PoolConfig, metrics: &Metrics, workers: &Workers) -> Pool {
        let live = vec![true; config.servers.len()];
        let ring = Arc::new(ArcSwap::from_pointee(config.ring(&live)));
        let (eject_tx, eject_rx) = mpsc::unbounded_channel();
        let replicated = config.protocol == Protocol::Memcache;
        let node = |server_name: &str, role: Role, addr: &crate::config::Address, eject, flush| {
            let labels = ServerLabels {
                pool: config.name.clone(),
                server: server_name.to_string(),
                role: role.to_string(),
                address: addr.to_string(),
            };
            let spec = NodeSpec {
                server_name,
                role,
                addr: addr.clone(),
                metrics: metrics.server(labels),
                eject,
                flush_when_back: flush,
            };
            Node::start(workers, config, spec)
        };
        let shards = config
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let eject = (config.failover == Failover::Eject).then(|| EjectHook {
                    tx: eject_tx.clone(),
                    shard: i,
                    failure_limit: config.failure_limit,
                });
                let replicated = replicated && !s.replicas.is_empty();
                Shard {
                    name: s.name.clone(),
                    master: node(&s.name, Role::Master, &s.master, eject, replicated),
                    replicas: s
                        .replicas
                        .iter()
                        .map(|r| node(&s.name, Role::Replica, r, None, replicated))
                        .collect(),
                    replicated,
                }
            })
            .collect::<Vec<Shard>>();
        if config.failover == Failover::Eject {
            let standbys = shards
                .iter()
                .map(|s| match s.replicated {
                    true => s.replicas.iter().map(Node::health).collect(),
                    false => Vec::new(),
                })
                .collect();
            tokio::spawn(eject_servers(
                config.clone(),
                ring.clone(),
                standbys,
                eject_rx,
            ));
        }
        Pool {
            config: config.clone(),
            ring,
            shards,
            metrics: metrics.pool(&config.name),
            started: std::time::Instant::now(),
            scripts: Scripts::default(),
        }
    }
}

impl Shard {
    /// The master, then the replicas.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.master).chain(&self.replicas)
    }

    /// Node `i` of [`Shard::nodes`].
    pub fn node(&self, i: usize) -> &Node {
        match i {
            0 => &self.master,
            _ => &self.replicas[(i - 1) % self.replicas.len()],
        }
    }

    /// For a replicated shard, the index (in [`Shard::nodes`]) of the node a read goes to: the
    /// first in service in `read_from`'s order, else the first in that order.
    pub fn read_index(&self, read_from: ReadFrom, spread: usize) -> usize {
        let replicas = self.replicas.len().max(1);
        let start = spread % replicas;
        // The k-th node in preference order.
        let nth = |k: usize| match read_from {
            ReadFrom::Master if k == 0 => 0,
            ReadFrom::Master => 1 + (start + k - 1) % replicas,
            _ if k < replicas => 1 + (start + k) % replicas,
            _ => 0,
        };
        (0..=replicas)
            .map(nth)
            .find(|&i| self.node(i).is_up())
            .unwrap_or(nth(0))
    }

    /// The node after `failed` to retry a read on: the next one in service, else the next.
    pub fn retry_index(&self, failed: usize) -> usize {
        let n = 1 + self.replicas.len();
        (1..n)
            .map(|k| (failed + k) % n)
            .find(|&i| self.node(i).is_up())
            .unwrap_or((failed + 1) % n)
    }

    /// The node a command goes to: writes to the master, reads as the pool's `read_from` says.
    /// `spread` picks among replicas.
    pub fn node_for(&self, write: bool, read_from: ReadFrom, spread: usize) -> &Node {
        self.node(self.node_index_for(write, read_from, spread))
    }

    /// [`Shard::node_for`]'s node, as an index in [`Shard::nodes`].
    pub fn node_index_for(&self, write: bool, read_from: ReadFrom, spread: usize) -> usize {
        if self.replicated && !write {
            return self.read_index(read_from, spread);
        }
        let replicas = self.replicas.len();
        if write || replicas == 0 || read_from == ReadFrom::Master {
            return 0;
        }
        let start = spread % replicas;
        match read_from {
            ReadFrom::Replica => 1 + start,
            _ => (0..replicas)
                .map(|k| 1 + (start + k) % replicas)
                .find(|&i| self.node(i).is_up())
                .unwrap_or(0),
        }
    }
}

/// twemproxy's auto-eject: a shard reported here leaves the ring for the retry timeout, then
/// rejoins; its keys rehash to the others meanwhile. A replicated shard stays while one of its
/// `standbys` is up: its keys are served there without moving.
async fn eject_servers(
    config: PoolConfig,
    ring: Arc<ArcSwap<Ring>>,
    standbys: Vec<Vec<NodeHealth>>,
    mut rx: mpsc::UnboundedReceiver<usize>,
) {
    let mut out_until: Vec<Option<Instant>> = vec![None; config.servers.len()];
    loop {
        let next_return = out_until.iter().flatten().min().copied();
        tokio::select! {
            shard = rx.recv() => match shard {
                Some(i) if standbys[i].iter().any(NodeHealth::is_up) => continue,
                Some(i) => {
                    if out_until[i].is_none() {
                        tracing::warn!(pool = %config.name, server = %config.servers[i].name, "ejecting server for {} ms", config.retry_timeout.as_millis());
                    }
                    out_until[i] = Some(Instant::now() + config.retry_timeout);
                }
                None => return,
            },
            _ = sleep_until(next_return.unwrap_or_else(Instant::now)), if next_return.is_some() => {
                let now = Instant::now();
                for (i, until) in out_until.iter_mut().enumerate() {
                    if until.is_some_and(|t| t <= now) {
                        tracing::info!(pool = %config.name, server = %config.servers[i].name, "server rejoins the ring");
                        *until = None;
                    }
                }
            }
        }
        let live: Vec<bool> = out_until.iter().map(Option::is_none).collect();
        ring.store(Arc::new(config.ring(&live)));
    }
}
