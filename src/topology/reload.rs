//! Reloading the configuration file while serving (SIGHUP, `POST /reload`, a change of the
//! file). The file is read and validated as at start-up; a bad one is refused with the same
//! `FILE:LINE:COLUMN` message and the running topology keeps serving. A good one is applied
//! whole, pool by pool (matched by name):
//! - a pool whose settings are unchanged is kept, with its clients and backend connections;
//!   when its servers changed its keeper reshapes it (nodes at unchanged addresses are kept),
//!   when a cluster pool's seeds or refresh interval changed its keeper asks the cluster anew,
//!   when its listen address changed the service listens on the new one, and when its client
//!   TLS files changed (or their contents) new clients' handshakes use the new ones;
//! - a new pool is started; a pool whose other settings changed is replaced by a new one
//!   (a sentinel pool also when its servers changed, so Sentinel names their nodes again);
//! - a pool no longer listed, or replaced, is retired: it stops accepting and each of its
//!   clients is closed once its requests are answered.
//!
//! Listening is the service's part: it binds new addresses before
//! anything is applied, so an address in use refuses the reload whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use md5::{Digest, Md5};
use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, oneshot};

use super::{Pool, Topology, lock, sentinel};
use crate::config::{Config, FailoverMode, Listen, PoolConfig, ServerConfig};
use crate::net::ServerTls;
/// The configuration file being served, and what its last reload did.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub path: PathBuf,
    /// MD5 of the file as last loaded, in hex.
    pub md5: String,
    pub at: SystemTime,
    /// Why the last reload was refused, until one succeeds.
    pub last_error: Option<String>,
}

impl Loaded {
    /// The file at `path` as it is now.
    pub fn of(path: &Path) -> Loaded {
        let bytes = std::fs::read(path).unwrap_or_default();
        let md5 = Md5::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Loaded {
            path: path.to_path_buf(),
            md5,
            at: SystemTime::now(),
            last_error: None,
        }
    }
}

/// A reload, worked out and not yet applied.
pub struct Plan {
    pub config: Config,
    pools: Vec<Planned>,
}

/// What becomes of one pool of the new configuration.
enum Planned {
    /// A pool served now keeps serving, with `config` (new servers or listen address).
    Kept { pool: Arc<Pool>, config: PoolConfig },
    /// A new pool, or one replacing a pool of the same name.
    Started(PoolConfig),
}

/// What applying a reload did.
pub struct Applied {
    /// Pools no longer served: they should stop accepting and close their clients.
    pub retired: Vec<Arc<Pool>>,
    pub summary: String,
}

impl Topology {
    /// Reads the configuration file again and works out what would change; `Err` says why the
    /// file cannot be served.
    pub async fn plan_reload(&self) -> Result<Plan, String> {
        let config = Config::load(&self.config_path()).map_err(|e| e.to_string())?;
        let mut plan = plan(&self.pools(), config)?;
        for planned in &mut plan.pools {
            if let Planned::Started(pool) = planned {
                sentinel::discover_pool(pool).await?;
            }
        }
        Ok(plan)
    }

    /// Applies `plan`: the new list of pools is served from now on.
    pub fn apply(&self, plan: Plan) -> Applied {
        let old = self.pools();
        let mut summary = Vec::new();
        let pools: Vec<Arc<Pool>> = plan
            .pools
            .into_iter()
            .map(|planned| match planned {
                Planned::Kept { pool, config } => {
                    let applied = pool.applied();
                    if applied.listen != config.listen {
                        summary.push(format!("pool {} listens on {}", config.name, config.listen));
                    }
                    if applied.servers != config.servers || applied.cluster != config.cluster {
                        summary.push(format!("pool {}: servers changed", config.name));
                        // The keeper lives as long as the pool: the send cannot fail.
                        let _ = pool.reshape.send(config.clone());
                    }
                    if applied.tls != config.tls {
                        summary.push(format!("pool {}: new TLS certificates", config.name));
                        pool.client_tls
                            .store(config.tls.as_ref().map(ServerTls::config));
                    }
                    *lock(&pool.applied) = config;
                    pool
                }
                Planned::Started(config) => {
                    let replaced = old.iter().any(|p| p.config.name == config.name);
                    summary.push(match replaced {
                        true => format!("pool {} replaced (its settings changed)", config.name),
                        false => format!("pool {} added", config.name),
                    });
                    Arc::new(Pool::start(&config, &self.metrics, &self.workers))
                }
            })
            .collect();
        let retired: Vec<Arc<Pool>> = old
            .iter()
            .filter(|p| !pools.iter().any(|q| Arc::ptr_eq(p, q)))
            .cloned()
            .collect();
        for pool in &retired {
            if !pools.iter().any(|p| p.config.name == pool.config.name) {
                summary.push(format!("pool {} removed", pool.config.name));
            }
        }
        self.pools.store(Arc::new(pools));
        Applied {
            retired,
            summary: match summary.is_empty() {
                true => "nothing changed".to_string(),
                false => summary.join("; "),
            },
        }
    }

    /// Logs and counts the outcome of a reload, and remembers it for `/topology`.
    pub fn record_reload(&self, outcome: &Result<String, String>) {
        self.metrics.count_reload(outcome.is_ok());
        let mut loaded = lock(&self.loaded);
        match outcome {
            Ok(changed) => {
                tracing::info!(
                    "configuration reloaded from {}: {changed}",
                    loaded.path.display()
                );
                *loaded = Loaded::of(&loaded.path);
            }
            Err(why) => {
                tracing::error!("configuration reload refused, the running one stays: {why}");
                loaded.last_error = Some(why.clone());
            }
        }
    }

    /// The configuration file served.
    pub fn config_path(&self) -> PathBuf {
        lock(&self.loaded).path.clone()
    }
}

impl Plan {
    /// The addresses the new configuration listens on, with each pool's backlog.
    pub fn listens(&self) -> impl Iterator<Item = (&Listen, u32)> {
        self.config
            .pools
            .iter()
            .map(|p| (&p.listen, p.clients.backlog))
    }
}

/// How a reload asks the service, which alone applies reloads, one at a time.
#[derive(Clone)]
pub struct Reloads(mpsc::UnboundedSender<oneshot::Sender<Result<String, String>>>);

/// Where the service takes reload requests, each with where to send its outcome.
pub type ReloadRequests = mpsc::UnboundedReceiver<oneshot::Sender<Result<String, String>>>;

impl Reloads {
    pub fn channel() -> (Reloads, ReloadRequests) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Reloads(tx), rx)
    }

    /// Asks for a reload and waits for what it changed, or why it was refused.
    pub async fn reload(&self) -> Result<String, String> {
        let (answer, outcome) = oneshot::channel();
        let stopping = || "shutting down: no more reloads".to_string();
        self.0.send(answer).map_err(|_| stopping())?;
        outcome.await.unwrap_or_else(|_| Err(stopping()))
    }
}

/// How long the file must stay unchanged after a change before it is looked at: an editor's
/// save or a deployment tool's copy is a burst of events.
const QUIET: Duration = Duration::from_millis(200);

/// How long the file must then read the same, with no change in between, before it is
/// reloaded: a writer that pauses in the middle of the file (a slow copy, a script writing it
/// line by line) has not finished, and the part written so far may well parse.
const STEADY: Duration = Duration::from_secs(1);

/// Reloads whenever the configuration file at `path` changes, for as long as the returned
/// watcher is kept. The file's directory is watched, since editors and deployment tools often
/// replace a file by renaming another over it; a burst of changes reloads once, after [`QUIET`]
/// and once the file has stayed the same for [`STEADY`]. Writing another file and renaming it
/// over this one is the safe way: the file is then never seen half-written.
pub fn watch(path: &Path, reloads: Reloads) -> notify::Result<RecommendedWatcher> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(ToOwned::to_owned);
    let (changed, mut changes) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reading the file (as a reload does) must not count as a change.
        let writes = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Remove(_)
                | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
        );
        if writes && event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            let _ = changed.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let path = path.to_path_buf();
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            loop {
                while let Ok(Some(())) = tokio::time::timeout(QUIET, changes.recv()).await {}
                let before = tokio::fs::read(&path).await.ok();
                match tokio::time::timeout(STEADY, changes.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) if tokio::fs::read(&path).await.ok() == before => break,
                    Err(_) => continue,
                }
            }
            // The outcome is logged and counted where reloads are applied.
            let _ = reloads.reload().await;
        }
    });
    Ok(watcher)
}

/// Works out what becomes of each pool of `config`, given the pools served now.
fn plan(served: &[Arc<Pool>], config: Config) -> Result<Plan, String> {
    let current: Vec<PoolConfig> = served.iter().map(|p| p.applied()).collect();
    let pools = keep(&current, &config.pools)
        .into_iter()
        .zip(&config.pools)
        .map(|(kept, new)| match kept {
            Some(i) => Planned::Kept {
                pool: served[i].clone(),
                config: match new.failover {
                    // Sentinel named the nodes of these servers.
                    FailoverMode::Sentinel { .. } => PoolConfig {
                        servers: current[i].servers.clone(),
                        ..new.clone()
                    },
                    _ => new.clone(),
                },
            },
            None => Planned::Started(new.clone()),
        })
        .collect();
    Ok(Plan { config, pools })
}

/// For each pool of `new`, the index of the pool now served (`current`, as last applied) that
/// keeps serving it, or `None` when a new pool must start: there is no pool of that name, or
/// it differs in more than its servers (or cluster seeds), listen address and client TLS, or
/// it turns from a ring into a cluster or back, or it is a sentinel pool whose
/// servers changed.
fn keep(current: &[PoolConfig], new: &[PoolConfig]) -> Vec<Option<usize>> {
    new.iter()
        .map(|pool| {
            let i = current.iter().position(|c| c.name == pool.name)?;
            let old = &current[i];
            let settings_kept = PoolConfig {
                servers: pool.servers.clone(),
                cluster: pool.cluster.clone(),
                listen: pool.listen.clone(),
                tls: pool.tls.clone(),
                ..old.clone()
            } == *pool;
            let renamed_nodes = old.failover.is_sentinel() && servers_differ(old, pool);
            let same_placement = old.cluster.is_some() == pool.cluster.is_some();
            (settings_kept && !renamed_nodes && same_placement).then_some(i)
        })
        .collect()
}

/// Whether `new` lists other servers than `old`. In a sentinel pool a server's nodes are
/// Sentinel's to name, so only names, identities and weights count.
fn servers_differ(old: &PoolConfig, new: &PoolConfig) -> bool {
    if !old.failover.is_sentinel() {
        return old.servers != new.servers;
    }
    let placed = |s: &ServerConfig| (s.name.clone(), s.identity.clone(), s.weight);
    !old.servers
        .iter()
        .map(placed)
        .eq(new.servers.iter().map(placed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(text: &str) -> Vec<PoolConfig> {
        Config::parse("test.yml", text).unwrap().pools
    }

    const BASE: &str = "pools:\n  a:\n    listen: 127.0.0.1:6380\n    servers: [127.0.0.1:7000:1 one]\n  b:\n    listen: 127.0.0.1:6381\n    servers: [127.0.0.1:7100:1 x]\n";

    #[test]
    fn pools_whose_servers_or_address_changed_are_kept() {
        let current = pools(BASE);
        assert_eq!(keep(&current, &pools(BASE)), [Some(0), Some(1)]);
        let changed = BASE
            .replace(
                "[127.0.0.1:7000:1 one]",
                "[127.0.0.1:7000:1 one, 127.0.0.1:7001:1 two]",
            )
            .replace("6381", "6390");
        assert_eq!(keep(&current, &pools(&changed)), [Some(0), Some(1)]);
    }

    #[test]
    fn new_pools_and_pools_whose_settings_changed_start_anew() {
        let current = pools(BASE);
        let swapped = "pools:\n  b:\n    listen: 127.0.0.1:6381\n    servers: [127.0.0.1:7100:1 x]\n  c:\n    listen: 127.0.0.1:6382\n    servers: [127.0.0.1:7200:1 y]\n";
        assert_eq!(keep(&current, &pools(swapped)), [Some(1), None]);
        let timeout = BASE.replace(
            "    listen: 127.0.0.1:6380\n",
            "    listen: 127.0.0.1:6380\n    timeout_ms: 5\n",
        );
        assert_eq!(keep(&current, &pools(&timeout)), [None, Some(1)]);
    }

    #[test]
    fn a_cluster_pool_is_kept_when_its_seeds_change_not_when_it_stops_being_one() {
        let cluster =
            "pools:\n  a:\n    listen: 127.0.0.1:6380\n    cluster: { seeds: [127.0.0.1:7000] }\n";
        let current = pools(cluster);
        let seeds = cluster.replace("[127.0.0.1:7000]", "[127.0.0.1:7001, 127.0.0.1:7002]");
        assert_eq!(keep(&current, &pools(&seeds)), [Some(0)]);
        let ring =
            "pools:\n  a:\n    listen: 127.0.0.1:6380\n    servers: [127.0.0.1:7000:1 one]\n";
        assert_eq!(keep(&current, &pools(ring)), [None]);
        assert_eq!(keep(&pools(ring), &current), [None]);
    }

    #[test]
    fn a_sentinel_pool_starts_anew_only_when_its_servers_are_renamed() {
        let sentinel = "pools:\n  s:\n    listen: 127.0.0.1:6380\n    failover: sentinel\n    sentinels: [127.0.0.1:26379]\n    servers:\n      - { name: m1 }\n";
        let mut current = pools(sentinel);
        // As discovered at start-up: Sentinel named the nodes.
        current[0].servers[0].master = Some("127.0.0.1:7000".parse().unwrap());
        assert_eq!(keep(&current, &pools(sentinel)), [Some(0)]);
        let renamed = sentinel.replace("m1", "m2");
        assert_eq!(keep(&current, &pools(&renamed)), [None]);
    }
}
