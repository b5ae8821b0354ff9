//! A pool's checks that span its fields: settings its protocol has no use for, what a
//! cluster pool refuses, and its servers (names, masters, replicas for its reads).

use std::collections::HashMap;

use serde_saphyr::{Location, Spanned};

use super::{FailoverMode, Invalid, PoolConfig, Protocol, ReadFrom, invalid, raw};
use crate::config::Listen;

/// A pool as parsed, before the checks that span its fields.
pub(super) struct PoolParts {
    pub(super) listen: Spanned<Listen>,
    pub(super) at: Location,
    /// Whether a memcache-only setting was given.
    pub(super) memcache_only: bool,
    /// Whether Sentinels or their auth were given.
    pub(super) sentinel_keys: bool,
    /// Placement and failover keys that were given (a cluster pool refuses them).
    pub(super) placement_keys: Vec<&'static str>,
    pub(super) config: PoolConfig,
    pub(super) servers: Vec<Spanned<raw::Server>>,
}

impl PoolParts {
    /// A setting that the pool's protocol has no use for.
    fn protocol_mismatch(&self, c: &PoolConfig) -> Option<&'static str> {
        match c.protocol {
            Protocol::Memcache if !c.redis.users.is_empty() => {
                Some("auth and users are for redis pools: memcached's text protocol has no AUTH")
            }
            Protocol::Memcache if c.redis.backend_auth.is_some() => {
                Some("backend_auth is for redis pools: memcached's text protocol has no AUTH")
            }
            Protocol::Memcache if c.redis.db != 0 => Some("db is for redis pools"),
            Protocol::Memcache if c.redis.databases != 1 => Some("databases is for redis pools"),
            Protocol::Memcache if c.redis.allow_keys => Some("allow_keys is for redis pools"),
            Protocol::Memcache if c.redis.allow_config => Some("allow_config is for redis pools"),
            Protocol::Memcache if c.redis.announce_version.is_some() => {
                Some("announce_version is for redis pools")
            }
            Protocol::Memcache if c.near_cache.is_some() => Some(
                "near_cache is for redis pools: memcached cannot tell the proxy when a key changes, so a cached reply could not be kept exact",
            ),
            Protocol::Memcache if c.health_check.kill_busy_scripts_after.is_some() => {
                Some("kill_busy_scripts_after_ms is for redis pools: memcached runs no scripts")
            }
            Protocol::Memcache
                if matches!(
                    c.failover,
                    FailoverMode::Promote | FailoverMode::Sentinel { .. }
                ) =>
            {
                Some(
                    "failover: promote and sentinel are for redis pools: a memcache server's replicas all take its writes already",
                )
            }
            Protocol::Redis if self.memcache_only => {
                Some("item_size_max and reject_past_exptime are for memcache pools")
            }
            _ => None,
        }
    }

    pub(super) fn into_config(self, name: String) -> Result<PoolConfig, Invalid> {
        if let Some(why) = self.protocol_mismatch(&self.config) {
            return Err(invalid(self.at, format!("pool '{name}': {why}")));
        }
        let mut config = self.config;
        config.name = name;
        config.listen = self.listen.value;
        if config.cluster.is_some() {
            return cluster_checked(config, &self.placement_keys, self.at);
        }
        if self.servers.is_empty() {
            return Err(invalid(
                self.at,
                format!(
                    "pool '{}' has no servers (give servers, or cluster: {{ seeds: […] }} for a Redis Cluster)",
                    config.name
                ),
            ));
        }
        let sentinel = config.failover.is_sentinel();
        if matches!(&config.failover, FailoverMode::Sentinel { sentinels, .. } if sentinels.is_empty())
        {
            let why = format!(
                "pool '{}': failover: sentinel needs sentinels: [host:port, …]",
                config.name
            );
            return Err(invalid(self.at, why));
        }
        if !sentinel && self.sentinel_keys {
            let why = format!(
                "pool '{}': sentinels and sentinel_auth are for failover: sentinel",
                config.name
            );
            return Err(invalid(self.at, why));
        }
        let mut seen: HashMap<String, ()> = HashMap::new();
        for s in self.servers {
            let named = s.value.has_name();
            let server = s.value.into_server_config();
            if sentinel && !named {
                let why = format!(
                    "server '{}' needs a name: its Sentinel master name",
                    server.name
                );
                return Err(invalid(s.referenced, why));
            }
            if server.master.is_none() && !sentinel {
                let why = format!(
                    "server '{}' needs a master (only Sentinel can name it)",
                    server.name
                );
                return Err(invalid(s.referenced, why));
            }
            if seen.insert(server.name.clone(), ()).is_some() {
                return Err(invalid(
                    s.referenced,
                    format!("duplicate server name '{}'", server.name),
                ));
            }
            if config.read_from == ReadFrom::Replica && server.replicas.is_empty() {
                return Err(invalid(
                    s.referenced,
                    format!(
                        "server '{}' has no replicas but the pool reads from replicas",
                        server.name
                    ),
                ));
            }
            config.servers.push(server);
        }
        Ok(config)
    }
}

/// A cluster pool, checked: the cluster places keys and fails over itself, has one database,
/// and speaks Redis.
fn cluster_checked(
    config: PoolConfig,
    placement_keys: &[&str],
    at: Location,
) -> Result<PoolConfig, Invalid> {
    let name = &config.name;
    let why = if let Some(key) = placement_keys.first() {
        format!(
            "pool '{name}': {key} is not for a cluster pool: the cluster places keys (CRC16 slots, {{…}} hash tags) and fails over itself"
        )
    } else if config.protocol != Protocol::Redis {
        format!("pool '{name}': cluster is for redis pools")
    } else if config.redis.databases != 1 || config.redis.db != 0 {
        format!("pool '{name}': a Redis Cluster has database 0 only: no db or databases")
    } else if config.cluster.as_ref().is_some_and(|c| c.seeds.is_empty()) {
        format!("pool '{name}': cluster needs seeds: [host:port, …]")
    } else {
        return Ok(config);
    };
    Err(invalid(at, why))
}
