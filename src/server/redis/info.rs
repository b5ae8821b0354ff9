//! INFO as one redis-server answers it, for a whole pool: Redis 7's sections in its order.
//! Server comes from the backends (the lowest `redis_version`) with the proxy's own process
//! fields; Memory, Persistence and Stats are the masters' counters summed where a sum means
//! something, Stats with the proxy's own connection and command counts; Keyspace,
//! Commandstats and Errorstats are summed (Latencystats' percentiles are one master's);
//! Modules is the first master's. Clients, Replication (`role:master`, as
//! clients see it), CPU and Cluster (`cluster_enabled:0`) are the proxy's own, and so is the
//! Proxy section.

use std::fmt::Write;
use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};

use super::keyspace::every_master;
use crate::backend::BackendError;
use crate::config::Listen;
use crate::protocol::resp::{Request, encode};
use crate::server::merge::{Fields, Gather, Merger, as_one_server};
use crate::server::plan::Plan;
use crate::topology::{Pool, PoolState};

/// Redis 7's sections in its order, and the proxy's own at the end.
const SECTIONS: [&str; 14] = [
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "commandstats",
    "errorstats",
    "latencystats",
    "cluster",
    "keyspace",
    "proxy",
];

/// Sections that only `INFO all`, `INFO everything` or their own name bring.
const NOT_DEFAULT: [&str; 2] = ["commandstats", "latencystats"];

/// What one section of the reply is made of.
#[derive(Debug)]
enum Section {
    /// Lines the proxy wrote itself, title included.
    Own(String),
    /// The backends' Server section with these fields the proxy's.
    Server(Vec<(&'static str, String)>),
    /// A section of the masters' counters (`title` as Redis spells it), summed, with these
    /// fields the proxy's own.
    Summed {
        title: &'static str,
        own: Vec<(&'static str, String)>,
    },
    /// The first master's section as it is.
    First(&'static str),
    /// Lines of `name:a=1,b=2` (Keyspace, Commandstats, Errorstats, Latencystats): each
    /// name's counts summed over the masters (see [`tallies`]).
    Tallies(&'static str),
}

/// The plan of `INFO [section …]`.
pub(super) fn route(pool: &Pool, state: &PoolState, req: &Request) -> Plan {
    let wanted: Vec<String> = req
        .args()
        .skip(1)
        .map(|a| String::from_utf8_lossy(a).to_lowercase())
        .collect();
    let asked = |w: &str| wanted.iter().any(|a| a == w);
    let all = asked("all") || asked("everything");
    let default = wanted.is_empty() || asked("default");
    let (names, sections): (Vec<&str>, Vec<Section>) = SECTIONS
        .iter()
        .filter(|name| all || asked(name) || default && !NOT_DEFAULT.contains(name))
        .map(|name| (*name, section(pool, state, name)))
        .unzip();
    // The sections made from the backends' own.
    let backend: Vec<&str> = names
        .into_iter()
        .zip(&sections)
        .filter(|(_, s)| !matches!(s, Section::Own(_)))
        .map(|(name, _)| name)
        .collect();
    if backend.is_empty() {
        return Plan::Reply(render(&sections, &[]));
    }
    let mut args: Vec<&[u8]> = vec![b"INFO"];
    args.extend(backend.iter().map(|s| s.as_bytes()));
    let mut request = BytesMut::new();
    encode::command(&mut request, args.into_iter());
    let gather = Gather::new(state.shards.len(), InfoMerge(sections));
    every_master(state, &request.freeze(), gather)
}

/// The sections of an INFO reply, made from the masters' replies as they come.
struct InfoMerge(Vec<Section>);

impl Merger for InfoMerge {
    fn merge(&mut self, parts: Vec<Result<Bytes, BackendError>>) -> Bytes {
        // A shard that cannot answer leaves its counts out.
        let replies: Vec<BackendInfo> = parts
            .into_iter()
            .flatten()
            .map(|r| sections_of(&r))
            .collect();
        render(&self.0, &replies)
    }
}

fn section(pool: &Pool, state: &PoolState, name: &str) -> Section {
    let c = &pool.config;
    let m = &pool.metrics;
    let own = |title: &str, fields: &[(&str, String)]| {
        let mut text = format!("# {title}\r\n");
        for (k, v) in fields {
            let _ = write!(text, "{k}:{v}\r\n");
        }
        Section::Own(text)
    };
    match name {
        "server" => {
            let uptime = pool.started.elapsed().as_secs();
            let port = match &c.listen {
                Listen::Tcp(addr) => addr.port,
                Listen::Unix { .. } => 0,
            };
            let executable = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let announced = c.redis.announce_version.clone();
            let announced = announced.map(|v| ("redis_version", v));
            Section::Server(Vec::from_iter(announced.into_iter().chain([
                ("redis_mode", "standalone".to_string()),
                ("process_id", std::process::id().to_string()),
                ("run_id", run_id().to_string()),
                ("tcp_port", port.to_string()),
                ("uptime_in_seconds", uptime.to_string()),
                ("uptime_in_days", (uptime / 86_400).to_string()),
                ("executable", executable),
                ("config_file", String::new()),
                ("ringproxy_version", env!("CARGO_PKG_VERSION").to_string()),
            ])))
        }
        "clients" => own(
            "Clients",
            &[
                ("connected_clients", m.client_connections.get().to_string()),
                ("cluster_connections", "0".into()),
                (
                    "maxclients",
                    max_clients(c.clients.max_connections).to_string(),
                ),
                ("client_recent_max_input_buffer", "0".into()),
                ("client_recent_max_output_buffer", "0".into()),
                ("blocked_clients", m.blocked_clients.get().to_string()),
                ("tracking_clients", "0".into()),
                ("clients_in_timeout_table", "0".into()),
            ],
        ),
        "memory" => Section::Summed {
            title: "Memory",
            own: Vec::new(),
        },
        "persistence" => Section::Summed {
            title: "Persistence",
            own: Vec::new(),
        },
        "stats" => Section::Summed {
            title: "Stats",
            own: vec![
                (
                    "total_connections_received",
                    m.client_connections_total.get().to_string(),
                ),
                ("total_commands_processed", m.requests.get().to_string()),
            ],
        },
        "replication" => own(
            "Replication",
            &[
                ("role", "master".into()),
                ("connected_slaves", "0".into()),
                ("master_failover_state", "no-failover".into()),
                ("master_replid", run_id().to_string()),
                ("master_replid2", "0".repeat(40)),
                ("master_repl_offset", "0".into()),
                ("second_repl_offset", "-1".into()),
                ("repl_backlog_active", "0".into()),
                ("repl_backlog_size", "1048576".into()),
                ("repl_backlog_first_byte_offset", "0".into()),
                ("repl_backlog_histlen", "0".into()),
            ],
        ),
        "cpu" => {
            let (user, sys) = crate::metrics::cpu_seconds().unwrap_or_default();
            let secs = |s: f64| format!("{s:.6}");
            own(
                "CPU",
                &[
                    ("used_cpu_sys", secs(sys)),
                    ("used_cpu_user", secs(user)),
                    ("used_cpu_sys_children", secs(0.0)),
                    ("used_cpu_user_children", secs(0.0)),
                    ("used_cpu_sys_main_thread", secs(sys)),
                    ("used_cpu_user_main_thread", secs(user)),
                ],
            )
        }
        "modules" => Section::First("Modules"),
        "commandstats" => Section::Tallies("Commandstats"),
        "errorstats" => Section::Tallies("Errorstats"),
        "latencystats" => Section::Tallies("Latencystats"),
        "cluster" => own("Cluster", &[("cluster_enabled", "0".into())]),
        "keyspace" => Section::Tallies("Keyspace"),
        _ => {
            let mut fields = vec![
                ("proxy", "ringproxy".into()),
                ("proxy_version", env!("CARGO_PKG_VERSION").into()),
                ("pool", c.name.clone()),
                ("hash", c.hash.to_string()),
                ("distribution", c.distribution.to_string()),
                ("servers", state.shards.len().to_string()),
                ("servers_on_ring", state.live_servers().to_string()),
                ("total_commands_processed", m.requests.get().to_string()),
                (
                    "near_cache",
                    u8::from(pool.near_cache.is_some()).to_string(),
                ),
            ];
            if let Some(cache) = &pool.near_cache {
                let values = cache.metrics().values();
                fields.extend(values.map(|(name, value)| (name, value.to_string())));
            }
            own("Proxy", &fields)
        }
    }
}

/// How many clients may connect: the pool's limit, else as many as the process may open
/// files.
fn max_clients(limit: Option<u32>) -> u64 {
    limit.map_or_else(
        || rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft),
        u64::from,
    )
}

/// This process's run id, as Redis makes one: 40 random hex digits, fixed for its life.
fn run_id() -> &'static str {
    static RUN_ID: OnceLock<String> = OnceLock::new();
    RUN_ID.get_or_init(|| {
        use std::hash::{BuildHasher, RandomState};
        let state = RandomState::new();
        (0..3u64)
            .map(|i| format!("{:016x}", state.hash_one(i)))
            .collect::<String>()[..40]
            .to_string()
    })
}

/// One backend's INFO: each section's title (lower case) and fields.
type BackendInfo = Vec<(String, Fields)>;

/// A backend's INFO text as sections.
fn sections_of(reply: &[u8]) -> BackendInfo {
    let body = String::from_utf8_lossy(reply);
    let mut sections: BackendInfo = Vec::new();
    // The bulk header line comes first: skipped as it is neither a title nor a field. A RESP3
    // connection's reply is a verbatim string, whose text starts after `txt:`.
    for (n, line) in body.lines().skip(1).enumerate() {
        let line = match n {
            0 => line.strip_prefix("txt:").unwrap_or(line),
            _ => line,
        };
        if let Some(title) = line.strip_prefix("# ") {
            sections.push((title.trim().to_lowercase(), Vec::new()));
        } else if let (Some((k, v)), Some(last)) = (line.split_once(':'), sections.last_mut()) {
            last.1.push((k.to_string(), v.trim_end().to_string()));
        }
    }
    sections
}

/// Whether a field's values add up across servers: counters and sizes, not times, ratios,
/// settings of the machine, or the servers' identities.
fn sums(field: &str) -> bool {
    const NOT: [&str; 12] = [
        "time", "ratio", "hz", "lru", "pid", "port", "version", "system", "_human", "mode",
        "_status", "perc",
    ];
    !NOT.iter().any(|n| field.contains(n))
}

/// Lines of `name:a=1,b=2` from several servers as one server's: per name (in the order
/// first seen), integer counts summed and the rest the first server's (latency percentiles
/// cannot be summed), `usec_per_call` recomputed from the sums, and `avg_ttl` 0 (an average
/// over shards is not the sum).
fn tallies(servers: &[&Fields]) -> Vec<(String, String)> {
    let mut merged: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (name, value) in servers.iter().flat_map(|f| f.iter()) {
        let at = match merged.iter().position(|(n, _)| n == name) {
            Some(at) => at,
            None => {
                merged.push((name.clone(), Vec::new()));
                merged.len() - 1
            }
        };
        let counts = &mut merged[at].1;
        for (k, v) in value.split(',').filter_map(|kv| kv.split_once('=')) {
            match counts.iter_mut().find(|(c, _)| c == k) {
                None => counts.push((k.to_string(), v.to_string())),
                Some((_, sum)) => {
                    if let (Ok(a), Ok(b)) = (sum.parse::<i64>(), v.parse::<i64>()) {
                        *sum = (a + b).to_string();
                    }
                }
            }
        }
    }
    merged
        .into_iter()
        .map(|(name, mut counts)| {
            let count = |counts: &[(String, String)], k: &str| {
                counts
                    .iter()
                    .find(|(c, _)| c == k)
                    .and_then(|(_, v)| v.parse::<f64>().ok())
            };
            let per_call = match (count(&counts, "usec"), count(&counts, "calls")) {
                (Some(usec), Some(calls)) if calls > 0.0 => Some(format!("{:.2}", usec / calls)),
                _ => None,
            };
            for (k, v) in counts.iter_mut() {
                match (k.as_str(), &per_call) {
                    ("usec_per_call", Some(p)) => v.clone_from(p),
                    ("avg_ttl", _) => *v = "0".into(),
                    _ => {}
                }
            }
            let value: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (name, value.join(","))
        })
        .collect()
}

/// Bytes as Redis's `*_human` fields show them.
fn human(bytes: i64) -> String {
    let b = bytes as f64;
    match bytes {
        n if n < 1024 => format!("{n}B"),
        n if n < 1 << 20 => format!("{:.2}K", b / 1024.0),
        n if n < 1 << 30 => format!("{:.2}M", b / (1u64 << 20) as f64),
        n if n < 1 << 40 => format!("{:.2}G", b / (1u64 << 30) as f64),
        _ => format!("{:.2}T", b / (1u64 << 40) as f64),
    }
}

/// The reply to INFO: `sections` made from the masters' replies (`parts`, in shard order;
/// those that failed are left out).
fn render(sections: &[Section], parts: &[BackendInfo]) -> Bytes {
    let backend = |title: &str| {
        let title = title.to_lowercase();
        parts
            .iter()
            .filter_map(move |p| p.iter().find(|(t, _)| *t == title).map(|(_, f)| f))
    };
    let mut text = String::new();
    let lines = |text: &mut String, title: &str, fields: &[(String, String)]| {
        let _ = write!(text, "# {title}\r\n");
        for (k, v) in fields {
            let _ = write!(text, "{k}:{v}\r\n");
        }
    };
    for section in sections {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        match section {
            Section::Own(own) => text.push_str(own),
            Section::Server(own) => {
                let version = backend("server")
                    .filter_map(|f| f.iter().find(|(k, _)| k == "redis_version"))
                    .map(|(_, v)| v.clone())
                    .min_by_key(|v| {
                        v.split('.')
                            .map(|n| n.parse::<u32>().unwrap_or(0))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_else(|| "unknown".to_string());
                let first: Vec<&Fields> = backend("server").take(1).collect();
                let mut own = own.clone();
                // Unless the pool announces a version of its own.
                if !own.iter().any(|(k, _)| *k == "redis_version") {
                    own.insert(0, ("redis_version", version));
                }
                lines(&mut text, "Server", &as_one_server(&first, |_| false, &own));
            }
            Section::Summed { title, own } => {
                let servers: Vec<&Fields> = backend(title).collect();
                let mut fields = as_one_server(&servers, sums, own);
                // A size shown for people follows its sum.
                let sizes: Vec<(String, i64)> = fields
                    .iter()
                    .filter_map(|(k, v)| Some((format!("{k}_human"), v.parse().ok()?)))
                    .collect();
                for (k, v) in fields.iter_mut() {
                    if let Some((_, n)) = sizes.iter().find(|(h, _)| h == k) {
                        *v = human(*n);
                    }
                }
                lines(&mut text, title, &fields);
            }
            Section::First(title) => {
                let fields = backend(title).next().cloned().unwrap_or_default();
                lines(&mut text, title, &fields);
            }
            Section::Tallies(title) => {
                let servers: Vec<&Fields> = backend(title).collect();
                lines(&mut text, title, &tallies(&servers));
            }
        }
    }
    let mut out = BytesMut::new();
    encode::bulk(&mut out, text.as_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn sections_are_merged_as_one_server_would_show_them() {
        let a = "$0\r\n# Server\r\nredis_version:7.0.15\r\narch_bits:64\r\nprocess_id:11\r\n\r\n# Memory\r\nused_memory:1000\r\nused_memory_human:1000B\r\nmem_fragmentation_ratio:1.5\r\n\r\n# Stats\r\ntotal_commands_processed:5\r\nkeyspace_hits:2\r\n\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=5\r\n";
        let c = "$0\r\n# Server\r\nredis_version:6.2.1\r\narch_bits:64\r\nprocess_id:12\r\n\r\n# Memory\r\nused_memory:2048\r\nused_memory_human:2.00K\r\nmem_fragmentation_ratio:1.2\r\n\r\n# Stats\r\ntotal_commands_processed:7\r\nkeyspace_hits:3\r\n\r\n# Keyspace\r\ndb0:keys=4,expires=0,avg_ttl=0\r\n";
        let sections = vec![
            Section::Server(vec![("process_id", "99".into())]),
            Section::Own("# Clients\r\nconnected_clients:1\r\n".into()),
            Section::Summed {
                title: "Memory",
                own: Vec::new(),
            },
            Section::Summed {
                title: "Stats",
                own: vec![("total_commands_processed", "42".into())],
            },
            Section::Own("# Cluster\r\ncluster_enabled:0\r\n".into()),
            Section::Tallies("Keyspace"),
        ];
        let merged = render(&sections, &[sections_of(&b(a)), sections_of(&b(c))]);
        let text = String::from_utf8_lossy(&merged);
        let want = "# Server\r\nredis_version:6.2.1\r\narch_bits:64\r\nprocess_id:99\r\n\r\n\
            # Clients\r\nconnected_clients:1\r\n\r\n\
            # Memory\r\nused_memory:3048\r\nused_memory_human:2.98K\r\nmem_fragmentation_ratio:1.5\r\n\r\n\
            # Stats\r\ntotal_commands_processed:42\r\nkeyspace_hits:5\r\n\r\n\
            # Cluster\r\ncluster_enabled:0\r\n\r\n\
            # Keyspace\r\ndb0:keys=7,expires=1,avg_ttl=0\r\n";
        assert!(text.contains(want), "{text}");
    }

    #[test]
    fn command_and_error_counts_are_summed_and_percentiles_kept() {
        let a = "$0\r\n# Commandstats\r\ncmdstat_get:calls=2,usec=10,usec_per_call=5.00,rejected_calls=0,failed_calls=1\r\n# Errorstats\r\nerrorstat_ERR:count=3\r\n# Latencystats\r\nlatency_percentiles_usec_get:p50=1.003,p99=3.007\r\n";
        let c = "$0\r\n# Commandstats\r\ncmdstat_set:calls=1,usec=4,usec_per_call=4.00,rejected_calls=0,failed_calls=0\r\ncmdstat_get:calls=2,usec=2,usec_per_call=1.00,rejected_calls=1,failed_calls=0\r\n# Errorstats\r\nerrorstat_ERR:count=1\r\nerrorstat_WRONGTYPE:count=2\r\n# Latencystats\r\nlatency_percentiles_usec_get:p50=2.001,p99=9.000\r\n";
        let sections = [
            Section::Tallies("Commandstats"),
            Section::Tallies("Errorstats"),
            Section::Tallies("Latencystats"),
        ];
        let merged = render(&sections, &[sections_of(&b(a)), sections_of(&b(c))]);
        let text = String::from_utf8_lossy(&merged);
        let want = "# Commandstats\r\n\
            cmdstat_get:calls=4,usec=12,usec_per_call=3.00,rejected_calls=1,failed_calls=1\r\n\
            cmdstat_set:calls=1,usec=4,usec_per_call=4.00,rejected_calls=0,failed_calls=0\r\n\r\n\
            # Errorstats\r\nerrorstat_ERR:count=4\r\nerrorstat_WRONGTYPE:count=2\r\n\r\n\
            # Latencystats\r\nlatency_percentiles_usec_get:p50=1.003,p99=3.007\r\n";
        assert!(text.contains(want), "{text}");
    }

    #[test]
    fn a_resp3_reply_is_read_as_a_resp2_one() {
        let resp2 = "$0\r\n# Server\r\narch_bits:64\r\n";
        let resp3 = "=0\r\ntxt:# Server\r\narch_bits:64\r\n";
        assert_eq!(sections_of(&b(resp3)), sections_of(&b(resp2)));
        assert_eq!(
            sections_of(&b(resp2))[0].1,
            [("arch_bits".into(), "64".into())]
        );
    }

    #[test]
    fn a_run_id_is_forty_hex_digits() {
        assert_eq!(run_id().len(), 40);
        assert!(run_id().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
