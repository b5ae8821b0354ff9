//! `failover: sentinel`: Redis Sentinel decides which node is each server's master (a server's
//! `name` is its Sentinel master name), and ringproxy follows. At start-up the Sentinels name
//! every master and its replicas; afterwards each Sentinel's `+switch-master` announcements,
//! and a lookup every health interval in case one was missed, say where writes go. Several
//! instances agree because they follow the same Sentinels; ringproxy never promotes here.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{MissedTickBehavior, interval, sleep};

use crate::backend::{Named, SentinelClient};
use crate::config::{Address, Config, FailoverMode, PoolConfig};

/// What a Sentinel says: server `server`'s master is now `master`.
#[derive(Debug)]
pub(super) struct MasterNamed {
    pub server: Arc<str>,
    pub master: Address,
}

fn clients(pool: &PoolConfig) -> Vec<SentinelClient> {
    let FailoverMode::Sentinel { sentinels, auth } = &pool.failover else {
        return Vec::new();
    };
    sentinels
        .iter()
        .map(|addr| SentinelClient::new(addr.clone(), auth.as_ref(), pool.timeout))
        .collect()
}

/// What the first Sentinel that answers says of `name`; `Err` lists why none did.
async fn ask(sentinels: &[SentinelClient], name: &str) -> Result<Named, String> {
    let mut failures = Vec::new();
    for sentinel in sentinels {
        match sentinel.lookup(name).await {
            Ok(Some(named)) => return Ok(named),
            Ok(None) => failures.push(format!("{} does not monitor it", sentinel.addr())),
            Err(why) => failures.push(format!("{}: {why}", sentinel.addr())),
        }
    }
    Err(failures.join("; "))
}

/// Fills in every `failover: sentinel` pool's servers as the Sentinels name them: the master,
/// and the replicas they know up. A server whose Sentinels do not answer keeps its configured
/// nodes, or, with none configured, stops the start with the reasons.
pub async fn discover(config: &mut Config) -> Result<(), String> {
    for pool in &mut config.pools {
        discover_pool(pool).await?;
    }
    Ok(())
}

/// What [`discover`] does for one pool (nothing unless it is a sentinel pool).
pub async fn discover_pool(pool: &mut PoolConfig) -> Result<(), String> {
    if !pool.failover.is_sentinel() {
        return Ok(());
    }
    let sentinels = clients(pool);
    for server in &mut pool.servers {
        match ask(&sentinels, &server.name).await {
            Ok(named) => {
                tracing::info!(pool = %pool.name, server = %server.name, "Sentinel names master {} and replicas {:?}", named.master, named.replicas.iter().map(ToString::to_string).collect::<Vec<_>>());
                server.master = Some(named.master);
                server.replicas = named.replicas;
            }
            Err(why) if server.master.is_some() => {
                tracing::warn!(pool = %pool.name, server = %server.name, "no Sentinel answered, starting with the configured nodes: {why}");
            }
            Err(why) => {
                return Err(format!(
                    "pool {}: server {}: no Sentinel names its master: {why}",
                    pool.name, server.name
                ));
            }
        }
    }
    Ok(())
}

/// How often every server is looked up, at most: each lookup is a connection to a Sentinel.
const LOOKUP_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Follows the pool's Sentinels until `to` closes: every Sentinel's `+switch-master`, and a
/// lookup of every server each health interval (or second, whichever is longer).
pub(super) fn follow(pool: &PoolConfig, to: UnboundedSender<MasterNamed>) {
    let sentinels = clients(pool);
    let names: Vec<Arc<str>> = pool
        .servers
        .iter()
        .map(|s| s.name.as_str().into())
        .collect();
    for sentinel in sentinels.clone() {
        let (to, names, pool_name) = (to.clone(), names.clone(), pool.name.clone());
        let pause = pool.health_check.interval;
        tokio::spawn(async move {
            while !to.is_closed() {
                let watching = sentinel.watch(|name, master| {
                    if let Some(server) = names.iter().find(|n| &***n == name) {
                        let server = server.clone();
                        let _ = to.send(MasterNamed { server, master });
                    }
                });
                // The pool's keeper is gone (the pool was retired by a reload).
                let failure = tokio::select! {
                    failure = watching => failure,
                    _ = to.closed() => return,
                };
                tracing::debug!(pool = %pool_name, "Sentinel {}: {failure}", sentinel.addr());
                sleep(pause).await;
            }
        });
    }
    let mut every = interval(pool.health_check.interval.max(LOOKUP_AT_MOST_EVERY));
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let pool_name = pool.name.clone();
    tokio::spawn(async move {
        while !to.is_closed() {
            every.tick().await;
            for server in &names {
                match ask(&sentinels, server).await {
                    Ok(named) => {
                        let server = server.clone();
                        let _ = to.send(MasterNamed {
                            server,
                            master: named.master,
                        });
                    }
                    Err(why) => {
                        tracing::warn!(pool = %pool_name, %server, "no Sentinel answered: {why}")
                    }
                }
            }
        }
    });
}
