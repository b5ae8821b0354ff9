//! Reloading the configuration file while serving (SIGHUP, `POST /reload`, a change of the
//! file). The file is read
//! and validated as at start-up; a bad one is refused with the same `FILE:LINE:COLUMN` message
//! and the running topology keeps serving. What a reload may change, for now: the servers of
//! each pool (added, removed, re-addressed, re-weighted), which each pool's keeper applies to
//! its live state. Adding or removing pools and changing a pool's other settings are refused
//! with the reason, so nothing is half-applied.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use md5::{Digest, Md5};
use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Topology;
use crate::config::{Config, Failover, PoolConfig, ServerConfig};

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

impl Topology {
    /// Reads the configuration file again and applies it; returns what changed, or why it was
    /// refused (logged and counted either way).
    pub fn reload(&self) -> Result<String, String> {
        let path = self.config_path();
        let outcome = self.apply(&path);
        self.metrics.count_reload(outcome.is_ok());
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        match &outcome {
            Ok(changed) => {
                tracing::info!("configuration reloaded from {}: {changed}", path.display());
                *loaded = Loaded::of(&path);
            }
            Err(why) => {
                tracing::error!("configuration reload refused, the running one stays: {why}");
                loaded.last_error = Some(why.clone());
            }
        }
        outcome
    }

    /// The configuration file served.
    fn config_path(&self) -> PathBuf {
        let loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded.path.clone()
    }

    fn apply(&self, path: &Path) -> Result<String, String> {
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let applied: Vec<PoolConfig> = self
            .pools
            .iter()
            .map(|p| p.applied.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .collect();
        let changes = plan(&applied, &config)?;
        let mut changed = Vec::new();
        for (pool, change) in self.pools.iter().zip(changes) {
            if let Some(new) = change {
                changed.push(pool.config.name.clone());
                *pool.applied.lock().unwrap_or_else(|e| e.into_inner()) = new.clone();
                // The keeper lives as long as the pool: the send cannot fail while it is here.
                let _ = pool.reshape.send(new);
            }
        }
        Ok(match changed.is_empty() {
            true => "no pool changed".to_string(),
            false => format!("servers changed in pool {}", changed.join(", ")),
        })
    }
}

/// How long the file must stay unchanged after a change before it is reloaded: an editor's
/// save or a deployment tool's copy is a burst of events.
const QUIET: Duration = Duration::from_millis(200);

/// Reloads whenever the configuration file changes, for as long as the returned watcher is
/// kept. The file's directory is watched, since editors and deployment tools often replace a
/// file by renaming another over it; a burst of changes reloads once, after [`QUIET`].
pub fn watch(topology: Arc<Topology>) -> notify::Result<RecommendedWatcher> {
    let path = topology.config_path();
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
    tokio::spawn(async move {
        while changes.recv().await.is_some() {
            while let Ok(Some(())) = tokio::time::timeout(QUIET, changes.recv()).await {}
            let _ = topology.reload();
        }
    });
    Ok(watcher)
}

/// For each pool now served (`current`, as last applied), its new configuration when its
/// servers changed, or `None`; `Err` when `new` changes something a reload cannot apply yet.
fn plan(current: &[PoolConfig], new: &Config) -> Result<Vec<Option<PoolConfig>>, String> {
    let names = |pools: &[PoolConfig]| pools.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    if names(current) != names(&new.pools) {
        return Err(format!(
            "pools {:?} would become {:?}: adding or removing pools needs a restart for now",
            names(current),
            names(&new.pools)
        ));
    }
    current
        .iter()
        .zip(&new.pools)
        .map(|(old, new)| {
            let settings_kept = PoolConfig {
                servers: new.servers.clone(),
                ..old.clone()
            };
            if settings_kept != *new {
                return Err(format!(
                    "pool {}: only its servers can change on a reload for now (its other settings need a restart)",
                    old.name
                ));
            }
            if !servers_differ(old, new) {
                return Ok(None);
            }
            if old.failover == Failover::Sentinel {
                return Err(format!(
                    "pool {}: the servers of a sentinel pool can change only with a restart for now",
                    old.name
                ));
            }
            Ok(Some(new.clone()))
        })
        .collect()
}

/// Whether `new` lists other servers than `old`. In a sentinel pool a server's nodes are
/// Sentinel's to name, so only names, identities and weights count.
fn servers_differ(old: &PoolConfig, new: &PoolConfig) -> bool {
    if old.failover != Failover::Sentinel {
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

    fn config(text: &str) -> Config {
        Config::parse("test.yml", text).unwrap()
    }

    const BASE: &str = "pools:\n  a:\n    listen: 127.0.0.1:6380\n    servers: [127.0.0.1:7000:1 one]\n  b:\n    listen: 127.0.0.1:6381\n    servers: [127.0.0.1:7100:1 x]\n";

    #[test]
    fn only_pools_whose_servers_changed_are_reshaped() {
        let current = config(BASE).pools;
        let same = plan(&current, &config(BASE)).unwrap();
        assert!(same.iter().all(Option::is_none));
        let added = BASE.replace(
            "[127.0.0.1:7000:1 one]",
            "[127.0.0.1:7000:1 one, 127.0.0.1:7001:1 two]",
        );
        let changes = plan(&current, &config(&added)).unwrap();
        assert_eq!(changes[0].as_ref().unwrap().servers.len(), 2);
        assert!(changes[1].is_none());
    }

    #[test]
    fn what_a_reload_cannot_apply_yet_is_refused_whole() {
        let current = config(BASE).pools;
        let removed =
            "pools:\n  a:\n    listen: 127.0.0.1:6380\n    servers: [127.0.0.1:7000:1 one]\n";
        assert!(
            plan(&current, &config(removed))
                .unwrap_err()
                .contains("adding or removing pools")
        );
        let moved = BASE.replace("6381", "6390");
        assert!(
            plan(&current, &config(&moved))
                .unwrap_err()
                .contains("pool b: only its servers")
        );
        let timeout = BASE.replace(
            "    listen: 127.0.0.1:6380\n",
            "    listen: 127.0.0.1:6380\n    timeout_ms: 5\n",
        );
        assert!(
            plan(&current, &config(&timeout))
                .unwrap_err()
                .contains("pool a: only its servers")
        );
    }
}
