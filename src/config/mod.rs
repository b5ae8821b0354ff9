//! The YAML topology: ringproxy's own schema and twemproxy's `nutcracker.yml`, both loaded into
//! one validated [`Config`]. Every mistake is reported as `FILE:LINE:COLUMN: what is wrong`.

mod cluster;
mod near_cache;
mod pool;
mod raw;
mod values;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_saphyr::Location;
use thiserror::Error;

use crate::net::{BackendTls, ServerTls};
use crate::placement::{Distribution, HashFn};
use crate::protocol::resp::Limits;
pub use cluster::{ClusterConfig, DEFAULT_CLUSTER_REFRESH};
pub use near_cache::NearCacheConfig;
use pool::PoolParts;
pub use values::{Address, Failover, HashTag, Listen, Protocol, ReadFrom};

/// A configuration mistake, with where it is when that is known.
#[derive(Debug, Error)]
pub struct ConfigError {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        } else {
            write!(f, "{}: {}", self.file, self.message)
        }
    }
}

/// A mistake found after parsing, at a place in the file.
struct Invalid {
    at: Location,
    message: String,
}

fn invalid(at: Location, message: impl Into<String>) -> Invalid {
    Invalid {
        at,
        message: message.into(),
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Worker threads, when the file says (else the command line's, else the CPUs this
    /// process may use).
    pub workers: Option<usize>,
    pub admin_listen: Option<Address>,
    /// Bearer token the admin endpoint asks for, except on `/health` and `/ready`.
    pub admin_token: Option<AdminToken>,
    /// After SIGTERM: how long `/ready` answers 503 while clients are still accepted, so the
    /// load balancer stops sending new ones before the listeners close…
    pub drain: Duration,
    /// …then how long in-flight requests may take to finish.
    pub shutdown_grace: Duration,
    pub pools: Vec<PoolConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failed checks that mark a node down…
    pub failures: u32,
    /// …and passed checks that bring a down node back.
    pub successes: u32,
    /// How long a node may stay busy (a script or function past its time limit) before its
    /// health checker sends SCRIPT KILL, then FUNCTION KILL, itself, as Sentinel does; `None`:
    /// never.
    pub kill_busy_scripts_after: Option<Duration>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct ClientUser {
    pub name: String,
    pub password: String,
}

/// Passwords stay out of logs and debug output.
impl fmt::Debug for ClientUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientUser")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The admin endpoint's bearer token; never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(pub String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(…)")
    }
}

/// Equality of secrets that looks at every byte whatever differs first.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[derive(Clone, PartialEq, Eq)]
pub struct BackendAuth {
    pub username: Option<String>,
    pub password: String,
}

impl fmt::Debug for BackendAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendAuth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// One pool: settings common to both protocols, then by concern (what bounds each client, the
/// failover mode with its own settings, what only Redis or only memcache pools have).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    pub name: String,
    pub listen: Listen,
    pub protocol: Protocol,
    pub hash: HashFn,
    pub distribution: Distribution,
    pub hash_tag: Option<HashTag>,
    pub timeout: Duration,
    pub server_connections: usize,
    pub preconnect: bool,
    pub read_from: ReadFrom,
    pub failover: FailoverMode,
    pub health_check: HealthCheck,
    /// TLS for clients: new handshakes take new certificates at a reload, without replacing
    /// the pool.
    pub tls: Option<ServerTls>,
    /// TLS to every backend node (not to Sentinels).
    pub backend_tls: Option<BackendTls>,
    /// Deepest nesting accepted in a backend reply.
    pub max_reply_depth: usize,
    /// Whether commands that empty every server (FLUSHDB, FLUSHALL, memcache `flush_all`) are
    /// forwarded.
    pub allow_flush: bool,
    pub clients: ClientLimits,
    pub redis: RedisSettings,
    pub memcache: MemcacheSettings,
    /// Replies of reads kept in the proxy, kept exact by the servers' invalidations.
    pub near_cache: Option<NearCacheConfig>,
    /// A Redis Cluster backend: its slot map places keys instead of a ring over `servers`.
    pub cluster: Option<ClusterConfig>,
    pub servers: Vec<ServerConfig>,
}

/// How a pool's servers are failed over, with the settings that way alone has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailoverMode {
    None,
    /// twemproxy's ejection: `failure_limit` consecutive failures take a server off the ring
    /// for `retry_timeout`.
    Eject {
        failure_limit: u32,
        retry_timeout: Duration,
    },
    Promote,
    /// Redis Sentinel decides: the Sentinels to ask and follow, and what is sent on every
    /// connection to them.
    Sentinel {
        sentinels: Vec<Address>,
        auth: Option<BackendAuth>,
    },
}

impl FailoverMode {
    /// The mode's keyword in the configuration.
    pub fn kind(&self) -> Failover {
        match self {
            FailoverMode::None => Failover::None,
            FailoverMode::Eject { .. } => Failover::Eject,
            FailoverMode::Promote => Failover::Promote,
            FailoverMode::Sentinel { .. } => Failover::Sentinel,
        }
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(self, FailoverMode::Sentinel { .. })
    }
}

/// What bounds each client of a pool, and how many there may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// Clients served at once (`None`: no bound).
    pub max_connections: Option<u32>,
    /// The listen backlog.
    pub backlog: u32,
    /// What one request may hold.
    pub requests: Limits,
    /// Requests one client may have in flight before the proxy stops reading from it.
    pub max_pipeline: usize,
    /// A client with nothing in flight is closed after this long (Redis's `timeout`).
    pub idle_timeout: Option<Duration>,
    /// A client whose request stays incomplete this long is closed (slow senders).
    pub request_timeout: Option<Duration>,
    /// Unread replies a client may hold before the proxy stops forwarding its requests…
    pub max_output_bytes: usize,
    /// …and how long it may stay over that before it is closed.
    pub output_timeout: Duration,
    /// Unread replies past which a client is closed at once (Redis's hard
    /// `client-output-buffer-limit`).
    pub max_output_hard_bytes: usize,
}

/// What only Redis pools have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSettings {
    /// Who may connect: clients must AUTH as one of these first, unless there are none. The
    /// pool's `auth` password is user `default`.
    pub users: Vec<ClientUser>,
    /// Sent on every backend connection.
    pub backend_auth: Option<BackendAuth>,
    /// Backend database of the clients' database 0: a client's database n is the backends'
    /// `db` + n.
    pub db: u32,
    /// Databases clients may SELECT, 0 to `databases` - 1; each has its own backend
    /// connections, opened when a client first uses it.
    pub databases: u16,
    /// SLOWLOG records requests at least this slow, in microseconds (negative: none)…
    pub slowlog_slower_than_us: i64,
    /// …and keeps this many.
    pub slowlog_max_len: usize,
    /// Failed AUTH attempts after which a connection is closed (0: never).
    pub auth_max_failures: u16,
    /// Whether KEYS, which scans every shard at once, is forwarded.
    pub allow_keys: bool,
    /// CONFIG SET and CONFIG RESETSTAT reach every node only when true.
    pub allow_config: bool,
    /// HELLO and INFO announce `redis` of this version rather than what the backends run
    /// (client libraries that enable features by version: redis-py's client-side cache).
    pub announce_version: Option<String>,
}

/// What only memcache pools have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemcacheSettings {
    /// The largest value a storage command may carry.
    pub item_size_max: usize,
    /// Refuse writes whose exptime is an absolute time already past.
    pub reject_past_exptime: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// How logs, errors and metrics name the server.
    pub name: String,
    /// What the ketama ring hashes: the name if one was given, else the address as written
    /// (the host alone for port 11211, as libmemcached does).
    pub identity: String,
    pub weight: u32,
    /// `None` only in a `failover: sentinel` pool until Sentinel names it at start-up.
    pub master: Option<Address>,
    pub replicas: Vec<Address>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
pub const DEFAULT_GRACE: Duration = Duration::from_millis(5000);
pub const DEFAULT_DRAIN: Duration = Duration::from_millis(2000);

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&file, &text)
    }

    /// Parses either format: a file with top-level `pools:` or `admin:` keys is ringproxy's
    /// schema, anything else a twemproxy file whose top-level keys are pool names.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let at_file = |at: Location, message: String| ConfigError {
            file: file.to_string(),
            line: at.line(),
            column: at.column(),
            message,
        };
        let from_serde = |e: serde_saphyr::Error| {
            at_file(e.location().unwrap_or(Location::UNKNOWN), serde_message(&e))
        };
        let parts = if is_ringproxy_format(text) {
            serde_saphyr::from_str::<raw::File>(text)
                .map_err(from_serde)?
                .into_parts()
        } else {
            serde_saphyr::from_str::<raw::TwemproxyFile>(text)
                .map_err(from_serde)?
                .into_parts()
        };
        parts
            .and_then(validate)
            .map_err(|i| at_file(i.at, i.message))
    }

    /// A one-screen summary of pools and servers, for `--check-config`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        if let Some(a) = &self.admin_listen {
            out.push_str(&format!(
                "admin: http://{a}/ (health, ready, metrics, topology)\n"
            ));
        }
        for p in &self.pools {
            if let Some(c) = &p.cluster {
                let seeds: Vec<String> = c.seeds.iter().map(ToString::to_string).collect();
                out.push_str(&format!(
                    "pool {} listen {} protocol redis cluster seeds {} refresh {} ms timeout {} ms read_from {}\n",
                    p.name,
                    p.listen,
                    seeds.join(","),
                    c.refresh.as_millis(),
                    p.timeout.as_millis(),
                    p.read_from,
                ));
                continue;
            }
            out.push_str(&format!(
                "pool {} listen {} protocol {} hash {} distribution {}{} timeout {} ms read_from {} failover {}\n",
                p.name,
                p.listen,
                p.protocol,
                p.hash,
                p.distribution,
                p.hash_tag.map(|t| format!(" hash_tag {t}")).unwrap_or_default(),
                p.timeout.as_millis(),
                p.read_from,
                p.failover.kind(),
            ));
            for s in &p.servers {
                let replicas = if s.replicas.is_empty() {
                    String::new()
                } else {
                    let list: Vec<String> = s.replicas.iter().map(ToString::to_string).collect();
                    format!(" replicas {}", list.join(","))
                };
                let master = s
                    .master
                    .as_ref()
                    .map_or_else(|| "from sentinel".to_string(), ToString::to_string);
                out.push_str(&format!(
                    "  server {} weight {} master {master}{replicas} (ring identity \"{}\")\n",
                    s.name, s.weight, s.identity
                ));
            }
        }
        out
    }
}

fn is_ringproxy_format(text: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("pools:") || l.starts_with("admin:"))
}

/// serde-saphyr's message without its own location suffix or source snippet: we print the
/// location ourselves, in front.
fn serde_message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let first = text.lines().next().unwrap_or_default();
    match first.rfind(" at line ") {
        Some(i) => first[..i].to_string(),
        None => first.to_string(),
    }
}

/// Cross-field checks that no single value can make.
fn validate(parts: raw::Parts) -> Result<Config, Invalid> {
    let mut listens: HashMap<Listen, String> = HashMap::new();
    if let Some(admin) = &parts.admin_listen {
        listens.insert(Listen::Tcp(admin.value.clone()), "admin".to_string());
    }
    let mut pools = Vec::new();
    for (name, pool) in parts.pools {
        if let Some(other) = listens.insert(pool.listen.value.clone(), name.clone()) {
            return Err(invalid(
                pool.listen.referenced,
                format!(
                    "listen address {} is already used by {other}",
                    pool.listen.value
                ),
            ));
        }
        pools.push(pool.into_config(name)?);
    }
    if pools.is_empty() {
        return Err(invalid(Location::UNKNOWN, "no pools are configured"));
    }
    Ok(Config {
        workers: parts.workers,
        admin_listen: parts.admin_listen.map(|a| a.value),
        admin_token: parts.admin_token,
        drain: parts.drain,
        shutdown_grace: parts.shutdown_grace,
        pools,
    })
}

impl PoolConfig {
    /// The pool's ring with the servers for which `live` is true.
    pub fn ring(&self, live: &[bool]) -> crate::placement::Ring {
        let members: Vec<crate::placement::RingMember<'_>> = self
            .servers
            .iter()
            .zip(live)
            .map(|(s, &live)| crate::placement::RingMember {
                identity: &s.identity,
                weight: s.weight,
                live,
            })
            .collect();
        crate::placement::Ring::new(
            self.hash,
            self.distribution,
            self.hash_tag.map(|t| t.0),
            &members,
        )
    }
}

#[cfg(test)]
mod tests;
