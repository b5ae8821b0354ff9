//! Prometheus metrics. Handles are resolved once, when the topology is built, so the hot path only
//! increments atomics it already holds.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::command::{Class, ClassCounts};

mod auth;
mod cluster;
mod hotkeys;
mod latency;
mod near_cache;
mod process;
mod throttle;

pub use auth::AuthFailures;
use auth::UserLabels;
use cluster::ClusterFamilies;
pub use cluster::{ClusterMetrics, RedirectKind, RefreshCause};
use hotkeys::HotKeyFamily;
pub use hotkeys::{SHOWN as HOT_KEYS_SHOWN, ShownKey};
use near_cache::NearCacheFamilies;
pub use near_cache::{InvalidationCause, NearCacheMetrics, Refusal};
pub use throttle::Throttle;

pub use latency::{Latency, LatencyCounts};
pub use process::cpu_seconds;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub pool: String,
    pub server: String,
    pub role: String,
    pub address: String,
}

/// Why the proxy closed a client: `ringproxy_client_closes_total{reason}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Nothing in flight for `client_idle_timeout_ms`.
    Idle,
    /// A request left incomplete for `client_request_timeout_ms`.
    RequestTimeout,
    /// More unread replies than `max_client_output_bytes`, too long.
    OutputLimit,
    /// `auth_max_failures` failed AUTHs.
    AuthFailures,
    /// A TLS handshake that failed (a bad or missing certificate, plain text, …) or did not
    /// finish within `client_request_timeout_ms`.
    TlsHandshake,
    /// CLIENT KILL.
    Killed,
}

impl CloseReason {
    pub const ALL: [CloseReason; 6] = [
        CloseReason::Idle,
        CloseReason::RequestTimeout,
        CloseReason::OutputLimit,
        CloseReason::AuthFailures,
        CloseReason::TlsHandshake,
        CloseReason::Killed,
    ];

    fn name(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::RequestTimeout => "request_timeout",
            CloseReason::OutputLimit => "output_limit",
            CloseReason::AuthFailures => "auth_failures",
            CloseReason::TlsHandshake => "tls_handshake",
            CloseReason::Killed => "killed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub pool: String,
    pub reason: String,
}

/// What an error reply made by the proxy reports: `ringproxy_client_errors_total{kind}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A backend did not answer in time.
    Timeout,
    /// No backend could be reached for the request (refused, closed, ejected).
    Connection,
    /// A backend answered something that cannot be passed on.
    Backend,
    /// The client's input was malformed.
    Protocol,
    /// The proxy refused the command (unknown, unsupported, across shards, over a limit).
    Refused,
    /// Authentication was missing or wrong.
    Auth,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::Backend,
        ErrorKind::Protocol,
        ErrorKind::Refused,
        ErrorKind::Auth,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::Backend => "backend",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Refused => "refused",
            ErrorKind::Auth => "auth",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub pool: String,
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub pool: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub pool: String,
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailoverLabels {
    pub pool: String,
    pub server: String,
    /// `followed`: the nodes said another node is master now; `promoted`: the proxy promoted a
    /// replica; `sentinel`: Sentinel named another master.
    pub reason: String,
}

/// A histogram of durations in seconds, from 10 ms to a minute.
fn durations() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
    ])
}

/// The metric families, registered once.
pub struct Metrics {
    registry: Registry,
    /// The `process_*` metrics, which carry no `ringproxy_` prefix.
    process: Registry,
    client_connections: Family<PoolLabels, Gauge>,
    blocked_clients: Family<PoolLabels, Gauge>,
    client_connections_total: Family<PoolLabels, Counter>,
    client_requests: Family<PoolLabels, Counter>,
    client_commands: Family<ClassLabels, Counter>,
    client_latency: Family<PoolLabels, Latency>,
    client_errors: Family<ErrorLabels, Counter>,
    auth_failures: Family<UserLabels, Counter>,
    client_closes: Family<CloseLabels, Counter>,
    past_exptime: Family<PoolLabels, Counter>,
    server_requests: Family<ServerLabels, Counter>,
    server_latency: Family<ServerLabels, Latency>,
    server_errors: Family<ServerLabels, Counter>,
    server_connections: Family<ServerLabels, Gauge>,
    server_connects: Family<ServerLabels, Counter>,
    server_ejections: Family<ServerLabels, Counter>,
    server_flushes: Family<ServerLabels, Counter>,
    server_up: Family<ServerLabels, Gauge>,
    server_state: Family<ServerLabels, Gauge>,
    failovers: Family<FailoverLabels, Counter>,
    empty_master_restarts: Family<ShardLabels, Counter>,
    promotion_seconds: Family<ShardLabels, Histogram, fn() -> Histogram>,
    unwritable_seconds: Family<ShardLabels, Counter<f64, AtomicU64>>,
    config_reloads: Family<ResultLabels, Counter>,
    cluster: ClusterFamilies,
    near_cache: NearCacheFamilies,
    hot_keys: HotKeyFamily,
}

/// One server's (shard's) failover handles.
#[derive(Clone, Debug)]
pub struct ShardMetrics {
    /// Writes moved to the node the nodes say is master.
    pub followed: Counter,
    /// The proxy promoted a replica.
    pub promoted: Counter,
    /// Sentinel named another master.
    pub sentinel: Counter,
    pub empty_master_restarts: Counter,
    /// From the master found down to a replica promoted.
    pub promotion_seconds: Histogram,
    /// Time with no master to write to.
    pub unwritable_seconds: Counter<f64, AtomicU64>,
}

/// One pool's handles.
#[derive(Clone, Debug)]
pub struct PoolMetrics {
    pub client_connections: Gauge,
    /// Blocking commands waiting on their backend (INFO's `blocked_clients`).
    pub blocked_clients: Gauge,
    pub client_connections_total: Counter,
    pub requests: Counter,
    /// Requests by [`Class`], in `Class::ALL`'s order.
    pub commands: [Counter; Class::ALL.len()],
    /// From reading a request to writing its reply.
    pub latency: Latency,
    /// Error replies the proxy made for clients, by [`ErrorKind`] in `ALL`'s order.
    pub errors: [Counter; ErrorKind::ALL.len()],
    /// memcache writes whose exptime was an absolute time already past.
    pub past_exptime: Counter,
    pub auth_failures: AuthFailures,
    /// Clients the proxy closed, by [`CloseReason`] in `ALL`'s order.
    pub closes: [Counter; CloseReason::ALL.len()],
    /// Failed TLS handshakes' log lines.
    tls_failures: Arc<Mutex<Throttle>>,
}

/// One backend node's handles.
#[derive(Clone, Debug)]
pub struct ServerMetrics {
    pub requests: Counter,
    /// From writing a request to the node to reading its reply.
    pub latency: Latency,
    /// Requests that got no reply from the node: timeouts, refused or lost connections.
    pub errors: Counter,
    pub connections: Gauge,
    pub connects: Counter,
    pub ejections: Counter,
    /// Times a node of a replicated memcache shard was emptied before serving again.
    pub flushes: Counter,
    pub up: Gauge,
    pub state: Gauge,
}

/// A metric family, created and registered in one step.
fn family<F: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> F {
    let family = F::default();
    registry.register(name, help, family.clone());
    family
}

impl Default for Metrics {
    fn default() -> Self {
        let r = &mut Registry::with_prefix("ringproxy");
        Metrics {
            client_connections: family(r, "client_connections", "Open client connections"),
            blocked_clients: family(
                r,
                "blocked_clients",
                "Blocking commands waiting on their backend",
            ),
            client_connections_total: family(
                r,
                "client_connections_accepted",
                "Client connections accepted",
            ),
            client_requests: family(r, "client_requests", "Requests received from clients"),
            client_commands: family(
                r,
                "client_commands",
                "Requests received from clients, by class of command",
            ),
            client_latency: family(
                r,
                "request_duration_seconds",
                "From reading a client's request to writing its reply",
            ),
            client_closes: family(
                r,
                "client_closes",
                "Clients the proxy closed, by reason (idle, request_timeout, output_limit, auth_failures)",
            ),
            auth_failures: family(
                r,
                "auth_failures",
                "Failed AUTH attempts, by user (unknown: not a configured user)",
            ),
            client_errors: family(
                r,
                "client_errors",
                "Error replies made by the proxy, by kind",
            ),
            past_exptime: family(
                r,
                "past_exptime_writes",
                "memcache writes with an exptime over 30 days that is already past",
            ),
            server_requests: family(r, "server_requests", "Requests sent to a backend"),
            server_latency: family(
                r,
                "server_request_duration_seconds",
                "From writing a request to a backend node to reading its reply",
            ),
            server_errors: family(
                r,
                "server_errors",
                "Backend requests that failed (timeout, connection)",
            ),
            server_connections: family(r, "server_connections", "Open backend connections"),
            server_connects: family(r, "server_connects", "Backend connections established"),
            server_ejections: family(
                r,
                "server_ejections",
                "Times a server was taken off the ring",
            ),
            server_flushes: family(
                r,
                "server_flushes",
                "Times a replicated memcache node was flushed after missing writes",
            ),
            server_up: family(r, "server_up", "1 while the server is not down"),
            failovers: family(
                r,
                "failovers",
                "Times a server's writes moved to another of its nodes, by reason",
            ),
            server_state: family(
                r,
                "server_state",
                "The server's health: 2 up, 1 suspect (a recent failure), 0 down, 3 busy (running a script past its time limit)",
            ),
            empty_master_restarts: family(
                r,
                "empty_master_restarts",
                "Times a master restarted with fewer keys than its replicas (it would have wiped them)",
            ),
            promotion_seconds: {
                let f = Family::new_with_constructor(durations as fn() -> Histogram);
                r.register(
                    "promotion_seconds",
                    "From a master found down to a replica promoted in its place",
                    f.clone(),
                );
                f
            },
            unwritable_seconds: family(
                r,
                "server_unwritable_seconds",
                "Time a server had no master to take writes (its master down)",
            ),
            config_reloads: family(r, "config_reloads", "Configuration reloads, by result"),
            cluster: ClusterFamilies::register(r),
            near_cache: NearCacheFamilies::register(r),
            hot_keys: HotKeyFamily::register(r),
            registry: std::mem::take(r),
            process: {
                let mut process = Registry::default();
                process.register_collector(Box::new(process::ProcessCollector));
                process
            },
        }
    }
}

impl PoolMetrics {
    /// Counts a client the proxy closed.
    pub fn closed(&self, reason: CloseReason) {
        self.closes[reason as usize].inc();
    }

    /// Counts and logs (at most once a second) a client whose TLS handshake failed.
    pub fn tls_failed(&self, pool: &str, peer: Option<SocketAddr>, why: &std::io::Error) {
        self.closed(CloseReason::TlsHandshake);
        let mut throttle = self.tls_failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = throttle.note(Instant::now()) {
            let from = peer.map_or_else(|| "?".to_string(), |p| p.to_string());
            tracing::warn!(pool = %pool, "{n} failed TLS handshakes (last from {from}: {why})");
        }
    }

    /// Counts the requests of one read, by class.
    pub fn count_requests(&self, counts: &ClassCounts) {
        let mut total = 0;
        for (counter, &n) in self.commands.iter().zip(&counts.0) {
            if n > 0 {
                counter.inc_by(n);
                total += n;
            }
        }
        self.requests.inc_by(total);
    }
}

impl Metrics {
    pub fn pool(&self, pool: &str) -> PoolMetrics {
        let l = PoolLabels {
            pool: pool.to_string(),
        };
        PoolMetrics {
            client_connections: self.client_connections.get_or_create(&l).clone(),
            blocked_clients: self.blocked_clients.get_or_create(&l).clone(),
            client_connections_total: self.client_connections_total.get_or_create(&l).clone(),
            requests: self.client_requests.get_or_create(&l).clone(),
            commands: Class::ALL.map(|class| {
                let labels = ClassLabels {
                    pool: pool.to_string(),
                    class: class.name().to_string(),
                };
                self.client_commands.get_or_create(&labels).clone()
            }),
            latency: self.client_latency.get_or_create(&l).clone(),
            errors: ErrorKind::ALL.map(|kind| {
                let labels = ErrorLabels {
                    pool: pool.to_string(),
                    kind: kind.name().to_string(),
                };
                self.client_errors.get_or_create(&labels).clone()
            }),
            past_exptime: self.past_exptime.get_or_create(&l).clone(),
            auth_failures: AuthFailures::new(pool, self.auth_failures.clone()),
            closes: CloseReason::ALL.map(|reason| {
                let labels = CloseLabels {
                    pool: pool.to_string(),
                    reason: reason.name().to_string(),
                };
                self.client_closes.get_or_create(&labels).clone()
            }),
            tls_failures: Arc::default(),
        }
    }

    /// A cluster pool's handles.
    pub fn cluster(&self, pool: &str) -> ClusterMetrics {
        self.cluster.pool(pool)
    }

    /// Shows `pools`' hottest keys (each pool's name and keys, hottest first).
    pub fn show_hot_keys<'a>(&self, pools: impl Iterator<Item = (&'a str, Vec<ShownKey>)>) {
        self.hot_keys.show(pools);
    }

    /// A pool's near-cache handles.
    pub fn near_cache(&self, pool: &str) -> NearCacheMetrics {
        self.near_cache.pool(pool)
    }

    pub fn server(&self, labels: ServerLabels) -> ServerMetrics {
        let l = &labels;
        ServerMetrics {
            requests: self.server_requests.get_or_create(l).clone(),
            latency: self.server_latency.get_or_create(l).clone(),
            errors: self.server_errors.get_or_create(l).clone(),
            connections: self.server_connections.get_or_create(l).clone(),
            connects: self.server_connects.get_or_create(l).clone(),
            ejections: self.server_ejections.get_or_create(l).clone(),
            flushes: self.server_flushes.get_or_create(l).clone(),
            up: self.server_up.get_or_create(l).clone(),
            state: self.server_state.get_or_create(l).clone(),
        }
    }

    /// A server's failover handles.
    pub fn shard(&self, pool: &str, server: &str) -> ShardMetrics {
        let failovers = |reason: &str| {
            let labels = FailoverLabels {
                pool: pool.to_string(),
                server: server.to_string(),
                reason: reason.to_string(),
            };
            self.failovers.get_or_create(&labels).clone()
        };
        let l = ShardLabels {
            pool: pool.to_string(),
            server: server.to_string(),
        };
        ShardMetrics {
            followed: failovers("followed"),
            promoted: failovers("promoted"),
            sentinel: failovers("sentinel"),
            empty_master_restarts: self.empty_master_restarts.get_or_create(&l).clone(),
            promotion_seconds: self.promotion_seconds.get_or_create(&l).clone(),
            unwritable_seconds: self.unwritable_seconds.get_or_create(&l).clone(),
        }
    }

    /// Counts a configuration reload that succeeded (`ok`) or was refused (`failed`).
    pub fn count_reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" }.to_string();
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The OpenMetrics text exposition (what Prometheus asks for first).
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry)
            .and_then(|()| encode_registry(&mut out, &self.process))
            .and_then(|()| encode_eof(&mut out));
        out
    }

    /// The classic Prometheus text format (0.0.4), for scrapers and tools (`promtool check
    /// metrics`, curl) that do not ask for OpenMetrics.
    pub fn encode_classic(&self) -> String {
        classic_text(&self.encode())
    }
}

/// OpenMetrics text as the classic format: a counter's HELP and TYPE name its `_total`
/// samples, and there is no `# EOF` or `# UNIT`.
fn classic_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with("# HELP ") {
            // Held until the TYPE line says whether the family is a counter.
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some(text) = help.take().and_then(|h| h.strip_prefix("# HELP ")) {
                let text = text.strip_prefix(name).unwrap_or(text);
                out.push_str(&format!("# HELP {name}{suffix}{text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::classic_text;

    #[test]
    fn counters_are_named_by_their_samples_in_the_classic_format() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{pool=\"p\"} 3\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{pool=\"p\"} 3\n# HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }
}
