//! twemproxy's `nutcracker.yml` as serde reads it, and its keys in ringproxy's terms.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::*;

/// An unchanged twemproxy `nutcracker.yml`: pools at the top level.
#[derive(Deserialize)]
#[serde(transparent)]
pub(in crate::config) struct TwemproxyFile(BTreeMap<String, Spanned<TwemproxyPool>>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TwemproxyPool {
    listen: Spanned<Listen>,
    hash: Option<HashFn>,
    hash_tag: Option<HashTag>,
    distribution: Option<Distribution>,
    #[serde(default, deserialize_with = "whole_millis")]
    timeout: Option<u64>,
    backlog: Option<u32>,
    preconnect: Option<bool>,
    redis: Option<bool>,
    redis_auth: Option<String>,
    redis_db: Option<u32>,
    server_connections: Option<Connections>,
    auto_eject_hosts: Option<bool>,
    #[serde(default, deserialize_with = "whole_millis")]
    server_retry_timeout: Option<u64>,
    server_failure_limit: Option<u32>,
    client_connections: Option<u32>,
    tcpkeepalive: Option<bool>,
    reuseport: Option<bool>,
    servers: Vec<Spanned<Server>>,
}

impl From<TwemproxyPool> for Pool {
    /// twemproxy's keys in ringproxy's terms: `redis_auth` is both the clients' password and
    /// the backends', `auto_eject_hosts` is `failover: eject`.
    fn from(t: TwemproxyPool) -> Pool {
        // Accepted for compatibility: ringproxy always sets TCP keepalive on backend connections
        // and does not use SO_REUSEPORT.
        let _ = (t.tcpkeepalive, t.reuseport);
        Pool {
            listen: t.listen,
            protocol: Some(if t.redis.unwrap_or(false) {
                Protocol::Redis
            } else {
                Protocol::Memcache
            }),
            hash: t.hash,
            distribution: t.distribution,
            hash_tag: t.hash_tag,
            timeout_ms: t.timeout,
            server_connections: t.server_connections,
            preconnect: t.preconnect,
            read_from: None,
            failover: t
                .auto_eject_hosts
                .unwrap_or(false)
                .then_some(Failover::Eject),
            server_failure_limit: t.server_failure_limit,
            server_retry_timeout_ms: t.server_retry_timeout,
            health_check: None,
            kill_busy_scripts_after_ms: None,
            auth: t.redis_auth.clone().map(|password| ClientAuth {
                password: Some(password),
                password_env: None,
            }),
            users: None,
            sentinels: None,
            sentinel_auth: None,
            backend_auth: t.redis_auth.map(|password| RawBackendAuth {
                username: None,
                password: Some(password),
                password_env: None,
            }),
            tls: None,
            backend_tls: None,
            db: t.redis_db,
            databases: None,
            client_connections: t.client_connections,
            backlog: t.backlog,
            client_output_timeout_ms: None,
            client_idle_timeout_ms: None,
            client_request_timeout_ms: None,
            auth_max_failures: None,
            slowlog_slower_than_us: None,
            slowlog_max_len: None,
            limits: None,
            item_size_max: None,
            allow_flush: None,
            allow_keys: None,
            allow_config: None,
            announce_version: None,
            reject_past_exptime: None,
            cluster: None,
            near_cache: None,
            servers: t.servers,
        }
    }
}

impl TwemproxyFile {
    pub(in crate::config) fn into_parts(self) -> Result<Parts, Invalid> {
        let pools = self
            .0
            .into_iter()
            .map(|(name, pool)| Ok((name, Pool::from(pool.value).into_parts(pool.referenced)?)))
            .collect::<Result<_, Invalid>>()?;
        Ok(Parts {
            workers: None,
            admin_listen: None,
            admin_token: None,
            drain: DEFAULT_DRAIN,
            shutdown_grace: DEFAULT_GRACE,
            pools,
        })
    }
}
