//! How the replies of a memcache request's parts become one: a split get merged in key order
//! with one END, a replicated write answered by the first node that answers, flush_all on every
//! node, `stats backends` with each node's name.

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::BackendError;
use crate::config::Protocol;
use crate::server::error::ClientError;
use crate::server::merge::{Fields, Gather, Merger, as_one_server, failed};
use crate::server::outbox::Quiet;

/// What to make of the parts.
enum McMerge {
    /// A get split by shard: `line` is the client's command line, whose keys start at token
    /// `first_key`; key i went to part `key_parts[i]`.
    Values {
        line: Bytes,
        first_key: usize,
        key_parts: Vec<u32>,
    },
    /// One write sent to a shard's nodes: the reply of the first of the first `candidates`
    /// parts that answered (the master's, unless it failed). Later parts are invalidations
    /// whose replies do not count.
    FirstAnswer { candidates: usize },
    /// `flush_all` on every node: the first failure, else the first reply.
    Broadcast,
    /// `stats backends`: every node's counters, prefixed with its name.
    Stats { nodes: Vec<String> },
    /// `stats`: the shards' counters summed where a sum means something, with `own` the
    /// proxy's.
    Summed { own: Vec<(&'static str, String)> },
}

/// A merger whose reply is left out where the client's quiet request would not show it.
struct Quieted {
    merger: McMerge,
    quiet: Option<Quiet>,
}

impl Merger for Quieted {
    fn merge(&mut self, parts: Vec<Result<Bytes, BackendError>>) -> Bytes {
        Quiet::apply(self.quiet, self.merger.merge(parts))
    }
}

/// A get of keys on `parts` shards.
pub(super) fn values(line: Bytes, first_key: usize, key_parts: Vec<u32>, parts: usize) -> Gather {
    Gather::new(
        parts,
        McMerge::Values {
            line,
            first_key,
            key_parts,
        },
    )
}

/// A write on `parts` nodes, answered by the first of the first `candidates` that answers.
pub(super) fn first_answer(parts: usize, candidates: usize, quiet: Option<Quiet>) -> Gather {
    let merger = McMerge::FirstAnswer { candidates };
    Gather::new(parts, Quieted { merger, quiet })
}

/// A command on `parts` nodes.
pub(super) fn broadcast(parts: usize, quiet: Option<Quiet>) -> Gather {
    let merger = McMerge::Broadcast;
    Gather::new(parts, Quieted { merger, quiet })
}

/// `stats` of every node in `nodes`.
pub(super) fn stats(nodes: Vec<String>) -> Gather {
    let parts = nodes.len();
    Gather::new(parts, McMerge::Stats { nodes })
}

pub(super) fn summed_stats(parts: usize, own: Vec<(&'static str, String)>) -> Gather {
    Gather::new(parts, McMerge::Summed { own })
}

impl Merger for McMerge {
    fn merge(&mut self, parts: Vec<Result<Bytes, BackendError>>) -> Bytes {
        match self {
            McMerge::Values {
                line,
                first_key,
                key_parts,
            } => merge_values(line, *first_key, key_parts, parts),
            McMerge::FirstAnswer { candidates } => {
                first_answer_of(parts.into_iter().take(*candidates))
            }
            McMerge::Broadcast => {
                let first_failed = parts.iter().position(|p| match p {
                    Ok(r) => crate::protocol::memcache::is_error_line(r),
                    Err(_) => true,
                });
                match parts.into_iter().nth(first_failed.unwrap_or(0)) {
                    Some(Ok(reply)) => reply,
                    Some(Err(e)) => failed(Protocol::Memcache, e),
                    None => ClientError::NoNodeAnswered.render(Protocol::Memcache),
                }
            }
            McMerge::Stats { nodes } => merge_stats(nodes, &parts),
            McMerge::Summed { own } => sum_stats(own, &parts),
        }
    }
}

/// A memcache get: each part's `VALUE` blocks are walked with a cursor and taken in the order
/// of the client's keys (a missed key has none), then one `END`. An error from any part is
/// the reply, as memcached answers a get with a bad key.
fn merge_values(
    line: &[u8],
    first_key: usize,
    key_parts: &[u32],
    parts: Vec<Result<Bytes, BackendError>>,
) -> Bytes {
    let mut replies = Vec::with_capacity(parts.len());
    for p in parts {
        match p {
            Ok(r) if r.starts_with(b"VALUE ") || &r[..] == b"END\r\n" => replies.push(r),
            Ok(r) => return r,
            Err(e) => return failed(Protocol::Memcache, e),
        }
    }
    let mut cursors = vec![0; replies.len()];
    let mut out = BytesMut::with_capacity(replies.iter().map(Bytes::len).sum::<usize>());
    let keys = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .skip(first_key);
    for (key, &part) in keys.zip(key_parts) {
        let (reply, cursor) = (&replies[part as usize], &mut cursors[part as usize]);
        let rest = &reply[*cursor..];
        let Some(block) = value_block(rest).filter(|_| value_key(rest) == Some(key)) else {
            continue;
        };
        out.put_slice(&rest[..block]);
        *cursor += block;
    }
    out.put_slice(b"END\r\n");
    out.freeze()
}

/// The key of the `VALUE` line at the start of `reply`.
fn value_key(reply: &[u8]) -> Option<&[u8]> {
    reply
        .strip_prefix(b"VALUE ")?
        .split(|&b| b == b' ')
        .find(|t| !t.is_empty())
}

/// The length of the `VALUE` line and data block at the start of `reply` (the backend
/// connection has checked their framing).
fn value_block(reply: &[u8]) -> Option<usize> {
    let nl = memchr::memchr(b'\n', reply)?;
    let len = reply[..nl]
        .trim_ascii_end()
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .nth(3)
        .and_then(crate::protocol::memcache::parse_decimal)?;
    Some(nl + 1 + len as usize + 2).filter(|&end| end <= reply.len())
}

fn first_answer_of(parts: impl Iterator<Item = Result<Bytes, BackendError>>) -> Bytes {
    let mut first_error = None;
    for p in parts {
        match p {
            Ok(r) => return r,
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => failed(Protocol::Memcache, e),
        None => ClientError::NoNodeAnswered.render(Protocol::Memcache),
    }
}

/// Every node's `STAT` lines as `STAT <node>:<name> <value>`, then one `END`.
fn merge_stats(nodes: &[String], parts: &[Result<Bytes, BackendError>]) -> Bytes {
    let mut out = BytesMut::new();
    for (node, part) in nodes.iter().zip(parts) {
        match part {
            Ok(reply) => {
                for line in reply.split(|&b| b == b'\n') {
                    if let Some(stat) = line.strip_prefix(b"STAT ") {
                        out.put_slice(b"STAT ");
                        out.put_slice(node.as_bytes());
                        out.put_u8(b':');
                        out.put_slice(stat.trim_ascii_end());
                        out.put_slice(b"\r\n");
                    }
                }
            }
            Err(e) => {
                let error = e.failure.to_string().replace(' ', "_");
                out.put_slice(format!("STAT {node}:error {error}\r\n").as_bytes());
            }
        }
    }
    out.put_slice(b"END\r\n");
    out.freeze()
}

/// Stats that do not add up across servers: who each is and how it is set up.
const NOT_SUMMED: [&str; 10] = [
    "pid",
    "uptime",
    "time",
    "version",
    "libevent",
    "pointer_size",
    "max_connections",
    "threads",
    "reserved_fds",
    "hash_power_level",
];

/// `stats` as one memcached would show the pool: the first server's stats, each integer one
/// summed over the servers that answered (not those of [`NOT_SUMMED`]), then `own` in place
/// of (or after) the servers' own.
fn sum_stats(own: &[(&'static str, String)], parts: &[Result<Bytes, BackendError>]) -> Bytes {
    let replies: Vec<Fields> = parts
        .iter()
        .flatten()
        .map(|reply| {
            String::from_utf8_lossy(reply)
                .lines()
                .filter_map(|l| l.strip_prefix("STAT ")?.split_once(' '))
                .map(|(k, v)| (k.to_string(), v.trim_end().to_string()))
                .collect()
        })
        .collect();
    let servers: Vec<&Fields> = replies.iter().collect();
    let adds_up = |name: &str| !NOT_SUMMED.contains(&name);
    let mut out = BytesMut::new();
    for (name, value) in as_one_server(&servers, adds_up, own) {
        out.put_slice(format!("STAT {name} {value}\r\n").as_bytes());
    }
    out.put_slice(b"END\r\n");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Failure;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn split_gets_come_back_in_key_order_with_one_end() {
        // Keys a and c on part 0, b on part 1; c missed.
        let mut g = values(b("get a b c\r\n"), 1, vec![0, 1, 0], 2);
        assert_eq!(g.add(1, Ok(b("VALUE b 0 1\r\n2\r\nEND\r\n"))), None);
        let merged = g.add(0, Ok(b("VALUE a 0 1\r\n1\r\nEND\r\n"))).unwrap();
        assert_eq!(merged, b("VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n"));
    }

    #[test]
    fn a_replicated_write_is_answered_by_the_master_unless_it_failed() {
        let down = || {
            Err(BackendError {
                node: "m (h:1)".into(),
                failure: Failure::Closed,
            })
        };
        let mut g = first_answer(2, 2, None);
        g.add(1, Ok(b("STORED\r\n")));
        assert_eq!(g.add(0, down()).unwrap(), b("STORED\r\n"));
        // An invalidation's reply never answers the client.
        let mut g = first_answer(2, 1, None);
        g.add(1, Ok(b("DELETED\r\n")));
        assert_eq!(
            g.add(0, down()).unwrap(),
            b("SERVER_ERROR backend m (h:1) connection closed\r\n")
        );
    }

    #[test]
    fn stats_add_up_counters_and_keep_identities() {
        let mut g = summed_stats(3, vec![("pid", "7".into()), ("nodes_up", "2/3".into())]);
        g.add(0, Ok(b("STAT pid 1\r\nSTAT version 1.6.18\r\nSTAT curr_items 3\r\nSTAT rusage_user 0.5\r\nEND\r\n")));
        let down = BackendError {
            node: "m (h:1)".into(),
            failure: Failure::Closed,
        };
        g.add(2, Err(down));
        let merged = g
            .add(1, Ok(b("STAT pid 2\r\nSTAT version 1.6.18\r\nSTAT curr_items 4\r\nSTAT rusage_user 0.7\r\nEND\r\n")))
            .unwrap();
        assert_eq!(
            merged,
            b(
                "STAT pid 7\r\nSTAT version 1.6.18\r\nSTAT curr_items 7\r\nSTAT rusage_user 0.5\r\nSTAT nodes_up 2/3\r\nEND\r\n"
            )
        );
    }
}
