//! The two file formats as serde reads them, and their defaults.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de;
use serde::{Deserialize, Deserializer};
use serde_saphyr::{Location, Spanned};

use super::*;

/// Unread replies past which a client is closed at once, unless set.
const DEFAULT_HARD_OUTPUT_BYTES: usize = 64 * 1024 * 1024;

mod near_cache;
mod server;
mod twemproxy;
use near_cache::RawNearCache;
use server::Connections;
pub(super) use server::Server;
pub(super) use twemproxy::TwemproxyFile;

/// What both formats reduce to before cross-field validation.
pub(super) struct Parts {
    pub workers: Option<usize>,
    pub admin_listen: Option<Spanned<Address>>,
    pub admin_token: Option<AdminToken>,
    pub drain: Duration,
    pub shutdown_grace: Duration,
    pub pools: Vec<(String, PoolParts)>,
}

/// ringproxy's own schema.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    workers: Option<Spanned<usize>>,
    admin: Option<Admin>,
    #[serde(default, deserialize_with = "whole_millis")]
    drain_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole_millis")]
    shutdown_grace_ms: Option<u64>,
    pools: BTreeMap<String, Spanned<Pool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Admin {
    listen: Spanned<Address>,
    token: Option<String>,
    token_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pool {
    listen: Spanned<Listen>,
    protocol: Option<Protocol>,
    hash: Option<HashFn>,
    distribution: Option<Distribution>,
    hash_tag: Option<HashTag>,
    #[serde(default, deserialize_with = "whole_millis")]
    timeout_ms: Option<u64>,
    server_connections: Option<Connections>,
    preconnect: Option<bool>,
    read_from: Option<ReadFrom>,
    failover: Option<Failover>,
    server_failure_limit: Option<u32>,
    #[serde(default, deserialize_with = "whole_millis")]
    server_retry_timeout_ms: Option<u64>,
    health_check: Option<RawHealthCheck>,
    #[serde(default, deserialize_with = "whole_millis")]
    kill_busy_scripts_after_ms: Option<u64>,
    auth: Option<ClientAuth>,
    users: Option<Vec<RawUser>>,
    backend_auth: Option<RawBackendAuth>,
    tls: Option<RawTls>,
    backend_tls: Option<RawBackendTls>,
    sentinels: Option<Vec<Address>>,
    sentinel_auth: Option<RawBackendAuth>,
    db: Option<u32>,
    databases: Option<u16>,
    client_connections: Option<u32>,
    backlog: Option<u32>,
    limits: Option<RawLimits>,
    item_size_max: Option<usize>,
    allow_flush: Option<bool>,
    allow_keys: Option<bool>,
    allow_config: Option<bool>,
    announce_version: Option<String>,
    slowlog_slower_than_us: Option<i64>,
    slowlog_max_len: Option<usize>,
    auth_max_failures: Option<u16>,
    #[serde(default, deserialize_with = "whole_millis")]
    client_idle_timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole_millis")]
    client_request_timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole_millis")]
    client_output_timeout_ms: Option<u64>,
    reject_past_exptime: Option<bool>,
    cluster: Option<RawCluster>,
    near_cache: Option<RawNearCache>,
    #[serde(default)]
    servers: Vec<Spanned<Server>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    seeds: Vec<Address>,
    announce: Option<Address>,
    #[serde(default, deserialize_with = "whole_millis")]
    refresh_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(default, deserialize_with = "whole_millis")]
    interval_ms: Option<u64>,
    #[serde(default, deserialize_with = "whole_millis")]
    timeout_ms: Option<u64>,
    failures: Option<u32>,
    successes: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientAuth {
    password: Option<String>,
    password_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: Option<String>,
    password_env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendAuth {
    username: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
}

impl RawBackendAuth {
    fn into_auth(self, at: Location, what: &str) -> Result<BackendAuth, Invalid> {
        let password = secret(self.password, self.password_env, at, what)?
            .ok_or_else(|| invalid(at, format!("{what} needs a password or password_env")))?;
        Ok(BackendAuth {
            username: self.username,
            password,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendTls {
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_args: Option<usize>,
    max_bulk_bytes: Option<usize>,
    max_inline_bytes: Option<usize>,
    max_request_bytes: Option<usize>,
    max_unauthenticated_bytes: Option<usize>,
    max_client_output_bytes: Option<usize>,
    max_client_output_hard_bytes: Option<usize>,
    max_pipeline: Option<usize>,
    max_reply_depth: Option<usize>,
}

/// Reads a secret given inline or through an environment variable.
fn secret(
    value: Option<String>,
    env: Option<String>,
    at: Location,
    what: &str,
) -> Result<Option<String>, Invalid> {
    match (value, env) {
        (Some(_), Some(_)) => Err(invalid(
            at,
            format!("{what}: give the value or the _env variable, not both"),
        )),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(var)) => std::env::var(&var)
            .map(Some)
            .map_err(|_| invalid(at, format!("{what}: environment variable {var} is not set"))),
        (None, None) => Ok(None),
    }
}

/// A duration key: a whole number of milliseconds. `400ms` or `"1s"` (twemproxy users write
/// them) get a message that says what is expected rather than "invalid u64".
fn whole_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Visitor;
    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a whole number of milliseconds")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<u64>, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<u64>, E> {
            u64::try_from(v).map(Some).map_err(|_| {
                E::custom(format!(
                    "{v} is negative: give a whole number of milliseconds"
                ))
            })
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<u64>, E> {
            let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
            let hint = match v[digits.len()..].trim() {
                "ms" if !digits.is_empty() => format!(": write {digits}"),
                "s" if !digits.is_empty() => format!(": write {digits}000"),
                _ => String::new(),
            };
            Err(E::custom(format!(
                "'{v}' is not a whole number of milliseconds{hint}"
            )))
        }
    }
    d.deserialize_any(Visitor)
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The pool defaults shared by both formats (twemproxy's where it has one).
fn base_pool(listen: &Spanned<Listen>) -> PoolConfig {
    PoolConfig {
        name: String::new(),
        listen: listen.value.clone(),
        protocol: Protocol::Redis,
        hash: HashFn::Fnv1a64,
        distribution: Distribution::Ketama,
        hash_tag: None,
        timeout: DEFAULT_TIMEOUT,
        server_connections: 1,
        preconnect: false,
        read_from: ReadFrom::Master,
        failover: FailoverMode::None,
        health_check: HealthCheck {
            interval: millis(1000),
            timeout: millis(500),
            failures: 3,
            successes: 1,
            kill_busy_scripts_after: None,
        },
        tls: None,
        backend_tls: None,
        max_reply_depth: 10_000,
        allow_flush: false,
        clients: ClientLimits {
            max_connections: None,
            backlog: 512,
            requests: Limits::default(),
            max_pipeline: 1024,
            idle_timeout: None,
            request_timeout: Some(Duration::from_secs(30)),
            max_output_bytes: 16 * 1024 * 1024,
            output_timeout: Duration::from_secs(10),
            max_output_hard_bytes: DEFAULT_HARD_OUTPUT_BYTES,
        },
        redis: RedisSettings {
            users: Vec::new(),
            backend_auth: None,
            db: 0,
            databases: 1,
            slowlog_slower_than_us: 10_000,
            slowlog_max_len: 128,
            auth_max_failures: 10,
            allow_keys: false,
            allow_config: false,
            announce_version: None,
        },
        memcache: MemcacheSettings {
            item_size_max: 1024 * 1024,
            reject_past_exptime: false,
        },
        near_cache: None,
        cluster: None,
        servers: Vec::new(),
    }
}

impl Pool {
    /// Applies the pool's settings over the defaults.
    fn into_parts(self, at: Location) -> Result<PoolParts, Invalid> {
        let p = self;
        let mut c = base_pool(&p.listen);
        // What a cluster decides itself: given beside `cluster`, it is refused.
        let placement_keys: Vec<&'static str> = [
            ("servers", !p.servers.is_empty()),
            ("hash", p.hash.is_some()),
            ("distribution", p.distribution.is_some()),
            ("hash_tag", p.hash_tag.is_some()),
            ("failover", p.failover.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, given)| given.then_some(key))
        .collect();
        c.cluster = p.cluster.map(|cl| ClusterConfig {
            seeds: cl.seeds,
            announce: cl.announce,
            refresh: cl.refresh_ms.map_or(DEFAULT_CLUSTER_REFRESH, millis),
        });
        c.protocol = p.protocol.unwrap_or(c.protocol);
        c.hash = p.hash.unwrap_or(c.hash);
        c.distribution = p.distribution.unwrap_or(c.distribution);
        c.hash_tag = p.hash_tag;
        c.timeout = p.timeout_ms.map_or(c.timeout, millis);
        c.server_connections = p.server_connections.map_or(1, |n| n.0);
        c.preconnect = p.preconnect.unwrap_or(false);
        c.read_from = p.read_from.unwrap_or(c.read_from);
        let sentinel_keys =
            p.sentinels.as_ref().is_some_and(|s| !s.is_empty()) || p.sentinel_auth.is_some();
        c.failover = match p.failover.unwrap_or(Failover::None) {
            Failover::None => FailoverMode::None,
            Failover::Eject => FailoverMode::Eject {
                failure_limit: p.server_failure_limit.unwrap_or(2).max(1),
                retry_timeout: p.server_retry_timeout_ms.map_or(millis(30_000), millis),
            },
            Failover::Promote => FailoverMode::Promote,
            Failover::Sentinel => FailoverMode::Sentinel {
                sentinels: p.sentinels.unwrap_or_default(),
                auth: p
                    .sentinel_auth
                    .map(|b| b.into_auth(at, "sentinel_auth"))
                    .transpose()?,
            },
        };
        if let Some(h) = p.health_check {
            c.health_check = HealthCheck {
                interval: h.interval_ms.map_or(c.health_check.interval, millis),
                timeout: h.timeout_ms.map_or(c.health_check.timeout, millis),
                failures: h.failures.unwrap_or(c.health_check.failures).max(1),
                successes: h.successes.unwrap_or(c.health_check.successes).max(1),
                kill_busy_scripts_after: None,
            };
        }
        // 0: never.
        c.health_check.kill_busy_scripts_after = p
            .kill_busy_scripts_after_ms
            .filter(|&ms| ms > 0)
            .map(millis);
        if let Some(a) = p.auth
            && let Some(password) = secret(a.password, a.password_env, at, "auth")?
        {
            c.redis.users.push(ClientUser {
                name: "default".to_string(),
                password,
            });
        }
        for u in p.users.unwrap_or_default() {
            let what = format!("user '{}'", u.name);
            let password = secret(u.password, u.password_env, at, &what)?
                .ok_or_else(|| invalid(at, format!("{what} needs a password or password_env")))?;
            if c.redis.users.iter().any(|known| known.name == u.name) {
                return Err(invalid(at, format!("{what} is given twice")));
            }
            c.redis.users.push(ClientUser {
                name: u.name,
                password,
            });
        }
        c.redis.backend_auth = p
            .backend_auth
            .map(|b| b.into_auth(at, "backend_auth"))
            .transpose()?;
        if p.tls.is_some() && matches!(p.listen.value, Listen::Unix { .. }) {
            return Err(invalid(at, "tls needs a TCP listen address"));
        }
        c.tls = p
            .tls
            .map(|t| ServerTls::load(&t.cert, &t.key, t.client_ca.as_deref()))
            .transpose()
            .map_err(|e| invalid(at, format!("tls: {e}")))?;
        c.backend_tls = p
            .backend_tls
            .map(|t| BackendTls::load(&t.ca, t.cert.as_deref(), t.key.as_deref(), t.server_name))
            .transpose()
            .map_err(|e| invalid(at, format!("backend_tls: {e}")))?;
        c.redis.db = p.db.unwrap_or(0);
        c.redis.databases = match p.databases {
            Some(0) => return Err(invalid(at, "databases must be at least 1")),
            databases => databases.unwrap_or(1),
        };
        let k = &mut c.clients;
        k.max_connections = p.client_connections.filter(|&n| n > 0);
        k.backlog = p.backlog.unwrap_or(k.backlog);
        if c.protocol == Protocol::Memcache {
            // The longest multi-get line: libmemcached's mget puts every key on one line.
            k.requests.max_inline_bytes = crate::protocol::memcache::Limits::default().max_get_line;
        }
        if let Some(l) = p.limits {
            let r = &mut k.requests;
            r.max_args = l.max_args.unwrap_or(r.max_args);
            r.max_bulk_bytes = l.max_bulk_bytes.unwrap_or(r.max_bulk_bytes);
            r.max_inline_bytes = l.max_inline_bytes.unwrap_or(r.max_inline_bytes);
            r.max_request_bytes = l.max_request_bytes.unwrap_or(r.max_request_bytes);
            r.max_unauthenticated_bytes = l
                .max_unauthenticated_bytes
                .unwrap_or(r.max_unauthenticated_bytes);
            k.max_output_bytes = l.max_client_output_bytes.unwrap_or(k.max_output_bytes);
            // By default never under the soft limit, which would then never apply.
            k.max_output_hard_bytes = match l.max_client_output_hard_bytes {
                Some(hard) if hard < k.max_output_bytes => {
                    return Err(invalid(
                        at,
                        "max_client_output_hard_bytes must be at least max_client_output_bytes",
                    ));
                }
                Some(hard) => hard,
                None => DEFAULT_HARD_OUTPUT_BYTES.max(k.max_output_bytes),
            };
            k.max_pipeline = l.max_pipeline.unwrap_or(k.max_pipeline).max(1);
            c.max_reply_depth = l.max_reply_depth.unwrap_or(c.max_reply_depth).max(1);
        }
        // 0: no bound.
        let bound = |ms: u64| (ms > 0).then(|| millis(ms));
        let k = &mut c.clients;
        k.idle_timeout = p.client_idle_timeout_ms.map_or(k.idle_timeout, bound);
        k.request_timeout = p.client_request_timeout_ms.map_or(k.request_timeout, bound);
        k.output_timeout = p.client_output_timeout_ms.map_or(k.output_timeout, millis);
        let memcache_only = p.item_size_max.is_some() || p.reject_past_exptime.is_some();
        let m = &mut c.memcache;
        m.item_size_max = p.item_size_max.unwrap_or(m.item_size_max);
        m.reject_past_exptime = p.reject_past_exptime.unwrap_or(false);
        c.allow_flush = p.allow_flush.unwrap_or(false);
        let r = &mut c.redis;
        r.allow_keys = p.allow_keys.unwrap_or(false);
        r.allow_config = p.allow_config.unwrap_or(false);
        r.announce_version = match p.announce_version {
            Some(v) if !is_version(&v) => {
                let why = format!("announce_version must be a version such as 7.4.0, not '{v}'");
                return Err(invalid(at, why));
            }
            v => v,
        };
        r.slowlog_slower_than_us = p.slowlog_slower_than_us.unwrap_or(r.slowlog_slower_than_us);
        r.slowlog_max_len = p.slowlog_max_len.unwrap_or(r.slowlog_max_len);
        r.auth_max_failures = p.auth_max_failures.unwrap_or(r.auth_max_failures);
        c.near_cache = p
            .near_cache
            .map(RawNearCache::into_config)
            .transpose()
            .map_err(|why| invalid(at, why))?;
        Ok(PoolParts {
            listen: p.listen,
            at,
            memcache_only,
            sentinel_keys,
            placement_keys,
            config: c,
            servers: p.servers,
        })
    }
}

impl File {
    pub(super) fn into_parts(self) -> Result<Parts, Invalid> {
        let pools = self
            .pools
            .into_iter()
            .map(|(name, pool)| Ok((name, pool.value.into_parts(pool.referenced)?)))
            .collect::<Result<_, Invalid>>()?;
        let admin_token = match &self.admin {
            Some(a) => {
                let at = a.listen.referenced;
                secret(a.token.clone(), a.token_env.clone(), at, "admin token")?.map(AdminToken)
            }
            None => None,
        };
        if let Some(w) = self.workers.as_ref().filter(|w| w.value == 0) {
            let why = "workers must be at least 1 (leave it out for the CPUs this process may use)";
            return Err(invalid(w.referenced, why));
        }
        Ok(Parts {
            workers: self.workers.map(|w| w.value),
            admin_listen: self.admin.map(|a| a.listen),
            admin_token,
            drain: self.drain_ms.map_or(DEFAULT_DRAIN, millis),
            shutdown_grace: self.shutdown_grace_ms.map_or(DEFAULT_GRACE, millis),
            pools,
        })
    }
}

/// Whether `v` is a version as Redis gives its own: numbers joined by dots (7.4.0).
fn is_version(v: &str) -> bool {
    !v.is_empty()
        && v.split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
