//! Pools and their live state. The pools served are a list swapped whole by a reload; a
//! [`Pool`] lasts while it is listed or has clients. What a pool serves (the ring, the shards,
//! which node is each shard's master, which nodes are up) is a [`PoolState`] snapshot swapped
//! atomically by the pool's keeper, so sessions see failover, ejection and reshaping on their
//! next request without any lock.

mod clients;
pub mod cluster;
mod failover;
mod keeper;
pub mod reload;
mod scripts;
pub mod sentinel;
mod shards;
mod state;

pub use clients::{BlockedOn, Client, Clients, Second, Signals};
pub use scripts::Scripts;
pub use state::{NodeStatus, PoolState, Shard};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use tokio::sync::mpsc;

use crate::backend::{Invalidations, NodeEvent};
use crate::cache::clients::ClientTracking;
use crate::cache::hotkeys::{HotKey, HotKeys};
use crate::cache::{Heard, NearCache};
use crate::config::{Config, PoolConfig};
use crate::metrics::{Metrics, PoolMetrics};
use crate::net::ServerTls;
use crate::slowlog::SlowLog;
use crate::workers::Workers;
pub use cluster::ClusterLink;
use keeper::Keeper;
use shards::NodeMaker;

/// Everything the proxy serves.
pub struct Topology {
    pools: ArcSwap<Vec<Arc<Pool>>>,
    pub metrics: Arc<Metrics>,
    workers: Arc<Workers>,
    /// The file the configuration came from, and what its last reload did.
    pub loaded: Mutex<reload::Loaded>,
    /// The process is shutting down: the load balancer should send no new clients.
    draining: AtomicBool,
}

/// A pool: its configuration, its counters, and its current state.
pub struct Pool {
    /// The pool's settings. Its `servers` are those it started with; the live ones are in
    /// its state, and `applied` holds the configuration last applied.
    pub config: PoolConfig,
    applied: Mutex<PoolConfig>,
    /// Where a reload sends the pool's new shape to its keeper.
    reshape: mpsc::UnboundedSender<PoolConfig>,
    /// A cluster pool's: where sessions tell its keeper of redirects.
    pub cluster: Option<ClusterLink>,
    state: Arc<ArcSwap<PoolState>>,
    pub metrics: PoolMetrics,
    pub started: std::time::Instant,
    pub scripts: Arc<Scripts>,
    /// Requests slower than the pool's `slowlog_slower_than_us`.
    pub slowlog: SlowLog,
    /// Its clients, for CLIENT LIST, CLIENT KILL and closing them all.
    pub clients: Clients,
    /// Replies of reads kept for the pool's clients, if it has `near_cache`.
    pub near_cache: Option<Arc<NearCache>>,
    /// The pool's clients that track keys (CLIENT TRACKING), if it has `near_cache`: only
    /// then does the proxy hear its nodes' invalidations.
    pub client_tracking: Option<Arc<ClientTracking>>,
    /// Requests per key over the last minute, per worker.
    pub hot_keys: HotKeys,
    /// What new clients' TLS handshakes use (a reload may load new certificates).
    client_tls: ArcSwapOption<rustls::ServerConfig>,
}

impl Topology {
    /// Starts every node's connections on the workers, and health checks and each pool's
    /// keeper on the current runtime.
    pub fn start(config: &Config, loaded: reload::Loaded, workers: &Arc<Workers>) -> Topology {
        let metrics = Arc::new(Metrics::default());
        let pools = config
            .pools
            .iter()
            .map(|p| Arc::new(Pool::start(p, &metrics, workers)))
            .collect();
        Topology {
            pools: ArcSwap::from_pointee(pools),
            metrics,
            workers: workers.clone(),
            loaded: Mutex::new(loaded),
            draining: AtomicBool::new(false),
        }
    }

    /// The pools served now.
    pub fn pools(&self) -> Arc<Vec<Arc<Pool>>> {
        self.pools.load_full()
    }

    /// From now on [`Topology::readiness`] says the process is shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether every pool can serve every key: a reachable master for every shard on its
    /// ring, once every node of those shards has been checked (so that, after a failover made
    /// while this instance was away, the node that is master now is known before clients are
    /// sent here). `Err` says which cannot.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("shutting down: draining".to_string());
        }
        let mut problems = Vec::new();
        for pool in self.pools().iter() {
            let state = pool.state();
            match state.slots() {
                Some(slots) if !slots.covers_all() => problems.push(format!(
                    "pool {}: the cluster's slot map serves {} of {} slots",
                    pool.config.name,
                    slots.owned(),
                    crate::placement::slots::SLOTS
                )),
                None if state.live_servers() == 0 => problems.push(format!(
                    "pool {}: no server is on the ring",
                    pool.config.name
                )),
                _ => {}
            }
            for (i, shard) in state.shards.iter().enumerate() {
                // A shard off the ring (ejected) serves no key: its nodes need no answer yet.
                if !state.on_ring(i) {
                    continue;
                }
                if let Some(n) = shard.status.iter().position(|n| !n.checked) {
                    problems.push(format!(
                        "pool {}: {} not checked yet",
                        pool.config.name,
                        shard.nodes[n].label()
                    ));
                } else if !shard.serving() {
                    problems.push(format!(
                        "pool {}: master {} is down: {}",
                        pool.config.name,
                        shard.master().label(),
                        shard.status[shard.master].why()
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
    fn start(config: &PoolConfig, metrics: &Arc<Metrics>, workers: &Arc<Workers>) -> Pool {
        let (events, events_rx) = mpsc::unbounded_channel::<NodeEvent>();
        let near_cache = (config.near_cache.as_ref())
            .map(|c| Arc::new(NearCache::new(c, metrics.near_cache(&config.name))));
        let client_tracking = near_cache
            .as_ref()
            .map(|_| Arc::new(ClientTracking::default()));
        let maker = NodeMaker {
            workers: workers.clone(),
            metrics: metrics.clone(),
            events,
            invalidations: near_cache.clone().zip(client_tracking.clone()).map(
                |(cache, clients)| Arc::new(Heard { cache, clients }) as Arc<dyn Invalidations>,
            ),
        };
        let (reshape, reshape_rx) = mpsc::unbounded_channel();
        let (keeper, state, mut inputs) = Keeper::new(config.clone(), maker, events_rx, reshape_rx);
        inputs.sentinel = (config.failover.is_sentinel()).then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            sentinel::follow(config, tx);
            rx
        });
        let cluster = keeper.cluster_link();
        tokio::spawn(keeper.run(inputs));
        Pool {
            config: config.clone(),
            applied: Mutex::new(config.clone()),
            reshape,
            cluster,
            state,
            metrics: metrics.pool(&config.name),
            started: std::time::Instant::now(),
            scripts: Arc::default(),
            slowlog: SlowLog::new(
                config.redis.slowlog_slower_than_us,
                config.redis.slowlog_max_len,
            ),
            clients: Clients::default(),
            near_cache,
            client_tracking,
            hot_keys: HotKeys::new(workers.len(), std::time::Instant::now()),
            client_tls: ArcSwapOption::new(config.tls.as_ref().map(ServerTls::config)),
        }
    }

    /// A pool of its own (its nodes on a worker of their own), for tests of what is built on
    /// it: its nodes are never reached unless a test sends them something.
    #[cfg(test)]
    pub(crate) fn for_tests(config: &PoolConfig) -> Pool {
        let workers = Arc::new(Workers::start(1).expect("a worker"));
        Pool::start(config, &Arc::new(Metrics::default()), &workers)
    }

    /// The TLS configuration for a client accepted now, if the pool serves TLS.
    pub fn client_tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.client_tls.load_full()
    }

    /// The pool's configuration as last applied (its servers and listen address may have
    /// changed since it started).
    pub fn applied(&self) -> PoolConfig {
        lock(&self.applied).clone()
    }

    /// Lists a client just accepted, and counts it.
    pub fn admit_client(&self, client: Client) -> Arc<Client> {
        self.metrics.client_connections.inc();
        self.metrics.client_connections_total.inc();
        self.clients.admit(client)
    }

    /// Takes a client that left out of the list and the count.
    pub fn forget_client(&self, id: u64) {
        self.clients.remove(id);
        if let Some(tracking) = &self.client_tracking {
            tracking.stop(id);
        }
        self.metrics.client_connections.dec();
    }

    /// Asks every client, present and future, to leave: each closes once its requests are
    /// answered. For shutdown, and for a pool a reload removed or replaced.
    pub fn close_clients(&self) {
        self.clients.close_all();
    }

    /// The pool's `n` hottest keys over the last minute, hottest first, each with the name of
    /// the shard it is on now.
    pub fn hottest(&self, n: usize) -> Vec<(HotKey, Option<Arc<str>>)> {
        let state = self.state();
        let keys = self.hot_keys.top(n, std::time::Instant::now());
        keys.into_iter()
            .map(|k| {
                let shard = state
                    .shard_for(&k.key)
                    .map(|i| state.shards[i].name.clone());
                (k, shard)
            })
            .collect()
    }

    /// The pool's current state. Load it per burst of requests and do not keep it: the next
    /// burst should see what changed.
    pub fn state(&self) -> Guard<Arc<PoolState>> {
        self.state.load()
    }
}

/// Locks a mutex that a panic elsewhere may have poisoned: what it guards stays usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
