//! Merging the per-shard replies of a request that was split or broadcast.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::ClientError;
use super::outbox::Quiet;
use crate::backend::BackendError;
use crate::command::Merge;
use crate::config::Protocol;
use crate::protocol::resp::{ReplyScanner, encode, parse_int};

/// The RESP error reply for a backend reply that cannot be merged; `how` completes "a backend
/// answered …".
fn odd(how: &'static str) -> Bytes {
    ClientError::OddBackendReply(how).render(Protocol::Redis)
}

/// The error reply for a request a backend did not answer.
fn failed(protocol: Protocol, e: BackendError) -> Bytes {
    ClientError::Backend(e).render(protocol)
}

/// What to make of the parts.
enum Plan {
    /// A split MGET/MSET/DEL…: `key_parts[i]` is the part that key i went to; within a part,
    /// keys keep their order.
    Split { merge: Merge, key_parts: Vec<u32> },
    /// INFO: a Server section with the lowest backend version, the proxy's own sections, then
    /// the shards' keyspace counts summed.
    Info {
        server: Option<String>,
        rest: String,
        keyspace: bool,
    },
    /// A memcache get split by shard: `line` is the client's command line, whose keys start
    /// at token `first_key`; key i went to part `key_parts[i]`.
    Values {
        line: Bytes,
        first_key: usize,
        key_parts: Vec<u32>,
    },
    /// One memcache write sent to a shard's nodes: the reply of the first of the first
    /// `candidates` parts that answered (the master's, unless it failed). Later parts are
    /// invalidations whose replies do not count.
    FirstAnswer { candidates: usize },
    /// memcache `flush_all` on every node: the first failure, else the first reply.
    Broadcast,
    /// memcache `stats backends`: every node's counters, prefixed with its name.
    Stats { nodes: Vec<String> },
    /// SCAN on one shard of `shards`: the cursor re-encoded with the shard.
    Scan { shard: usize, shards: usize },
    /// A transaction sent as MULTI, its commands and EXEC: EXEC's reply, the last part's.
    Last,
}

/// Collects one reply per part; the merged reply is ready when the last arrives.
pub(super) struct Gather {
    plan: Plan,
    parts: Vec<Option<Result<Bytes, BackendError>>>,
    missing: usize,
    max_depth: usize,
    /// A memcache command sent with `noreply` or `q`: the merged reply is dropped when the
    /// command would not have shown it.
    quiet: Option<Quiet>,
    record: Option<Record>,
}

/// Sees a merged reply on its way to the client.
pub(super) type Record = Box<dyn Fn(&[u8]) + Send>;

impl Gather {
    pub(super) fn split(
        merge: Merge,
        parts: usize,
        key_parts: Vec<u32>,
        max_depth: usize,
    ) -> Gather {
        Gather::new(Plan::Split { merge, key_parts }, parts, max_depth)
    }

    pub(super) fn info(
        server: Option<String>,
        rest: String,
        keyspace: bool,
        parts: usize,
    ) -> Gather {
        Gather::new(
            Plan::Info {
                server,
                rest,
                keyspace,
            },
            parts,
            1,
        )
    }

    /// A memcache get of keys on `key_parts.len()` shards.
    pub(super) fn values(
        line: Bytes,
        first_key: usize,
        key_parts: Vec<u32>,
        parts: usize,
    ) -> Gather {
        Gather::new(
            Plan::Values {
                line,
                first_key,
                key_parts,
            },
            parts,
            1,
        )
    }

    /// A memcache write on `parts` nodes, answered by the first of the first `candidates`
    /// that answers.
    pub(super) fn first_answer(parts: usize, candidates: usize, quiet: Option<Quiet>) -> Gather {
        let mut g = Gather::new(Plan::FirstAnswer { candidates }, parts, 1);
        g.quiet = quiet;
        g
    }

    /// A memcache command on every node.
    pub(super) fn broadcast(parts: usize, quiet: Option<Quiet>) -> Gather {
        let mut g = Gather::new(Plan::Broadcast, parts, 1);
        g.quiet = quiet;
        g
    }

    /// A transaction of `parts` requests, answered by the last.
    pub(super) fn last(parts: usize) -> Gather {
        Gather::new(Plan::Last, parts, 1)
    }

    /// SCAN of shard `shard`.
    pub(super) fn scan(shard: usize, shards: usize) -> Gather {
        Gather::new(Plan::Scan { shard, shards }, 1, 1)
    }

    /// Shows the merged reply, unless it is an error, to `record` on its way to the client
    /// (SCRIPT LOAD: the script's SHA).
    pub(super) fn recording(mut self, record: Record) -> Gather {
        self.record = Some(record);
        self
    }

    /// memcache `stats` of every node in `nodes`.
    pub(super) fn stats(nodes: Vec<String>) -> Gather {
        let parts = nodes.len();
        Gather::new(Plan::Stats { nodes }, parts, 1)
    }

    fn new(plan: Plan, parts: usize, max_depth: usize) -> Gather {
        Gather {
            plan,
            parts: (0..parts).map(|_| None).collect(),
            missing: parts,
            max_depth,
            quiet: None,
            record: None,
        }
    }

    /// Records part `part`; returns the client's reply once every part is in.
    pub(super) fn add(&mut self, part: usize, reply: Result<Bytes, BackendError>) -> Option<Bytes> {
        let slot = self.parts.get_mut(part)?;
        if slot.is_none() {
            self.missing -= 1;
        }
        *slot = Some(reply);
        if self.missing > 0 {
            return None;
        }
        let merged = self.merge();
        if let Some(record) = &self.record
            && merged.first() != Some(&b'-')
        {
            record(&merged);
        }
        Some(Quiet::apply(self.quiet, merged))
    }

    fn merge(&mut self) -> Bytes {
        let parts: Vec<Result<Bytes, BackendError>> = self.parts.drain(..).flatten().collect();
        match &self.plan {
            Plan::Info {
                server,
                rest,
                keyspace,
            } => merge_info(server.as_deref(), rest, *keyspace, &parts),
            Plan::Values {
                line,
                first_key,
                key_parts,
            } => merge_memcache_values(line, *first_key, key_parts, parts),
            Plan::FirstAnswer { candidates } => first_answer(parts.into_iter().take(*candidates)),
            Plan::Broadcast => {
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
            Plan::Stats { nodes } => merge_stats(nodes, &parts),
            Plan::Split { merge, key_parts } => {
                // A failed shard fails the whole request, as a single server would.
                let mut replies = Vec::with_capacity(parts.len());
                for p in parts {
                    match p {
                        Ok(r) if r.first() == Some(&b'-') => return r,
                        Ok(r) => replies.push(r),
                        Err(e) => return failed(Protocol::Redis, e),
                    }
                }
                match merge {
                    Merge::Values => merge_values(&replies, key_parts, self.max_depth),
                    Merge::Sum => merge_sum(&replies),
                    Merge::Same => replies.swap_remove(0),
                    Merge::Concat => merge_concat(&replies, self.max_depth),
                    Merge::FirstNonNil => {
                        let nil = |r: &Bytes| &r[..] == b"$-1\r\n" || &r[..] == b"_\r\n";
                        match replies.iter().position(|r| !nil(r)) {
                            Some(i) => replies.swap_remove(i),
                            None => replies.swap_remove(0),
                        }
                    }
                    Merge::AllOf => merge_all_of(&replies),
                    Merge::PairSums => merge_pair_sums(&replies, self.max_depth),
                    Merge::Max => {
                        let counts = replies
                            .iter()
                            .map(|r| parse_int(r.strip_prefix(b":")?.strip_suffix(b"\r\n")?));
                        match counts.collect::<Option<Vec<i64>>>() {
                            Some(counts) => {
                                let mut out = BytesMut::new();
                                encode::integer(&mut out, counts.into_iter().max().unwrap_or(0));
                                out.freeze()
                            }
                            None => odd("with something other than an integer"),
                        }
                    }
                }
            }
            Plan::Last => {
                // A lost connection fails the whole transaction, whichever part saw it.
                let mut last = None;
                for part in parts {
                    match part {
                        Err(e) => return failed(Protocol::Redis, e),
                        Ok(reply) => last = Some(reply),
                    }
                }
                last.unwrap_or_else(|| ClientError::NoNodeAnswered.render(Protocol::Redis))
            }
            Plan::Scan { shard, shards } => match parts.into_iter().next() {
                Some(Ok(reply)) => merge_scan(reply, *shard, *shards),
                Some(Err(e)) => failed(Protocol::Redis, e),
                None => ClientError::NoNodeAnswered.render(Protocol::Redis),
            },
        }
    }
}

/// The elements of an array reply: its length and where they start.
fn array_body(reply: &[u8]) -> Option<(usize, usize)> {
    let nl = memchr::memchr(b'\n', reply)?;
    if reply.first() != Some(&b'*') {
        return None;
    }
    let n = parse_int(&reply[1..nl.checked_sub(1)?])?;
    Some((usize::try_from(n).ok()?, nl + 1))
}

/// KEYS: the shards' arrays as one.
fn merge_concat(replies: &[Bytes], _max_depth: usize) -> Bytes {
    let mut total = 0;
    let mut bodies = Vec::with_capacity(replies.len());
    for r in replies {
        let Some((n, start)) = array_body(r) else {
            return odd("with something other than an array");
        };
        total += n;
        bodies.push(&r[start..]);
    }
    let mut out = BytesMut::with_capacity(bodies.iter().map(|b| b.len()).sum::<usize>() + 16);
    encode::array(&mut out, total);
    bodies.iter().for_each(|b| out.put_slice(b));
    out.freeze()
}

/// PUBSUB NUMSUB: every shard lists the same channels in the same order; the counts are summed.
fn merge_pair_sums(replies: &[Bytes], max_depth: usize) -> Bytes {
    const ODD: &str = "PUBSUB NUMSUB with an odd array";
    let mut names: Vec<&[u8]> = Vec::new();
    let mut sums: Vec<i64> = Vec::new();
    for r in replies {
        let Some((n, mut at)) = array_body(r) else {
            return odd(ODD);
        };
        for i in 0..n {
            let Ok(Some(len)) = ReplyScanner::new(max_depth).scan(&r[at..]) else {
                return odd(ODD);
            };
            let element = &r[at..at + len];
            at += len;
            if i % 2 == 0 {
                if names.len() <= i / 2 {
                    names.push(element);
                    sums.push(0);
                }
            } else {
                let Some(count) = element
                    .strip_prefix(b":")
                    .and_then(|e| e.strip_suffix(b"\r\n"))
                    .and_then(parse_int)
                else {
                    return odd(ODD);
                };
                sums[i / 2] += count;
            }
        }
    }
    let mut out = BytesMut::new();
    encode::array(&mut out, names.len() * 2);
    for (name, sum) in names.iter().zip(&sums) {
        out.put_slice(name);
        encode::integer(&mut out, *sum);
    }
    out.freeze()
}

/// SCRIPT EXISTS: 1 where every node has the script.
fn merge_all_of(replies: &[Bytes]) -> Bytes {
    let mut all: Option<Vec<bool>> = None;
    for r in replies {
        let Some((n, start)) = array_body(r) else {
            return odd("with something other than an array");
        };
        let flags: Vec<bool> = r[start..]
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| l.starts_with(b":1"))
            .collect();
        if flags.len() != n {
            return odd("SCRIPT EXISTS with an odd array");
        }
        all = Some(match all {
            None => flags,
            Some(prev) => prev.iter().zip(&flags).map(|(a, b)| *a && *b).collect(),
        });
    }
    let all = all.unwrap_or_default();
    let mut out = BytesMut::new();
    encode::array(&mut out, all.len());
    all.iter()
        .for_each(|&f| encode::integer(&mut out, i64::from(f)));
    out.freeze()
}

/// SCAN on shard `shard` of `shards`: the backend's cursor re-encoded so the next call comes
/// back to the same shard, or moves to the next one when this one is done (0 after the last).
fn merge_scan(reply: Bytes, shard: usize, shards: usize) -> Bytes {
    const ODD: &str = "SCAN with something other than a cursor and keys";
    let Some((2, start)) = array_body(&reply) else {
        return odd(ODD);
    };
    let rest = &reply[start..];
    let Some(nl) = memchr::memchr(b'\n', rest) else {
        return odd(ODD);
    };
    let cursor_start = nl + 1;
    let Some(cursor_end) = memchr::memchr(b'\r', &rest[cursor_start..]).map(|e| cursor_start + e)
    else {
        return odd(ODD);
    };
    let Some(backend) = std::str::from_utf8(&rest[cursor_start..cursor_end])
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return odd(ODD);
    };
    let Some(next) = next_cursor(backend, shard, shards) else {
        return odd("SCAN with a cursor too large to encode its shard");
    };
    let mut out = BytesMut::with_capacity(reply.len() + 8);
    encode::array(&mut out, 2);
    encode::bulk(&mut out, next.to_string().as_bytes());
    out.put_slice(&rest[cursor_end + 2..]);
    out.freeze()
}

/// The client's SCAN cursor is `backend cursor × shards + shard`: iteration walks shard 0 to
/// the last, each exactly once, and a cursor of 0 starts and ends it.
pub(super) fn decode_cursor(cursor: u64, shards: usize) -> (usize, u64) {
    let shards = shards as u64;
    ((cursor % shards) as usize, cursor / shards)
}

/// The client's cursor after shard `shard` answered with `backend`: the same shard's next
/// step, the next shard's start when this one is done, 0 after the last; `None` when the
/// backend's cursor is too large to encode.
fn next_cursor(backend: u64, shard: usize, shards: usize) -> Option<u64> {
    match backend {
        0 if shard + 1 == shards => Some(0),
        0 => Some(shard as u64 + 1),
        c => c.checked_mul(shards as u64)?.checked_add(shard as u64),
    }
}

/// MGET: walks each part's array reply with a cursor, taking the next value of key i's part,
/// so the values come out in key order without collecting them first.
fn merge_values(replies: &[Bytes], key_parts: &[u32], max_depth: usize) -> Bytes {
    const NOT_AN_ARRAY: &str = "MGET with something other than an array";
    let mut cursors = Vec::with_capacity(replies.len());
    for r in replies {
        let header_end = match (r.first(), memchr::memchr(b'\n', r)) {
            (Some(b'*'), Some(nl)) => nl + 1,
            _ => return odd(NOT_AN_ARRAY),
        };
        cursors.push(header_end);
    }
    let mut out = BytesMut::with_capacity(replies.iter().map(Bytes::len).sum::<usize>() + 16);
    encode::array(&mut out, key_parts.len());
    for &part in key_parts {
        let (reply, cursor) = (&replies[part as usize], &mut cursors[part as usize]);
        match ReplyScanner::new(max_depth).scan(&reply[*cursor..]) {
            Ok(Some(len)) => {
                out.put_slice(&reply[*cursor..*cursor + len]);
                *cursor += len;
            }
            _ => return odd("MGET with too few values"),
        }
    }
    out.freeze()
}

/// A memcache get: each part's `VALUE` blocks are walked with a cursor and taken in the order
/// of the client's keys (a missed key has none), then one `END`. An error from any part is
/// the reply, as memcached answers a get with a bad key.
fn merge_memcache_values(
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

fn first_answer(parts: impl Iterator<Item = Result<Bytes, BackendError>>) -> Bytes {
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

fn merge_sum(replies: &[Bytes]) -> Bytes {
    let mut sum = 0i64;
    for r in replies {
        let n = (r.first() == Some(&b':'))
            .then(|| parse_int(&r[1..r.len().saturating_sub(2)]))
            .flatten();
        match n {
            Some(n) => sum += n,
            None => return odd("with something other than an integer"),
        }
    }
    let mut out = BytesMut::new();
    encode::integer(&mut out, sum);
    out.freeze()
}

/// The proxy's INFO text plus a Keyspace section summing every shard's `db<N>:keys=…` lines.
fn merge_info(
    server: Option<&str>,
    rest: &str,
    keyspace: bool,
    parts: &[Result<Bytes, BackendError>],
) -> Bytes {
    let mut text = String::new();
    if let Some(server) = server {
        let version = parts
            .iter()
            .flatten()
            .filter_map(|r| {
                let body = std::str::from_utf8(r).ok()?;
                let v = body
                    .lines()
                    .find_map(|l| l.strip_prefix("redis_version:"))?;
                Some(v.trim().to_string())
            })
            .min_by_key(|v| {
                v.split('.')
                    .map(|n| n.parse::<u32>().unwrap_or(0))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_else(|| "unknown".to_string());
        text.push_str(&format!("# Server\r\nredis_version:{version}\r\n{server}"));
    }
    text.push_str(rest);
    if keyspace {
        let mut dbs: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        let mut unreachable = 0;
        for p in parts {
            let Ok(reply) = p else {
                unreachable += 1;
                continue;
            };
            let body = String::from_utf8_lossy(reply);
            for line in body.lines() {
                let Some((db, fields)) = line.split_once(":keys=") else {
                    continue;
                };
                let keys = fields
                    .split(',')
                    .next()
                    .and_then(|k| k.parse::<i64>().ok())
                    .unwrap_or(0);
                let expires = fields
                    .split(',')
                    .find_map(|f| f.strip_prefix("expires="))
                    .and_then(|e| e.parse::<i64>().ok())
                    .unwrap_or(0);
                let entry = dbs.entry(db.to_string()).or_default();
                entry.0 += keys;
                entry.1 += expires;
            }
        }
        text.push_str("# Keyspace\r\n");
        for (db, (keys, expires)) in dbs {
            text.push_str(&format!("{db}:keys={keys},expires={expires},avg_ttl=0\r\n"));
        }
        if unreachable > 0 {
            text.push_str(&format!("shards_unreachable:{unreachable}\r\n"));
        }
    }
    let mut out = BytesMut::new();
    encode::bulk(&mut out, text.as_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn values_follow_key_order() {
        // Keys 0 and 2 on part 1, key 1 on part 0.
        let mut g = Gather::split(Merge::Values, 2, vec![1, 0, 1], 8);
        assert_eq!(g.add(1, Ok(b("*2\r\n$1\r\na\r\n$-1\r\n"))), None);
        assert_eq!(
            g.add(0, Ok(b("*1\r\n$1\r\nb\r\n"))).unwrap(),
            b("*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n")
        );
    }

    #[test]
    fn short_or_odd_backend_replies_are_errors() {
        let mut g = Gather::split(Merge::Values, 2, vec![0, 1, 1], 8);
        g.add(0, Ok(b("*1\r\n$1\r\na\r\n")));
        let merged = g.add(1, Ok(b("*1\r\n$1\r\nb\r\n"))).unwrap();
        assert_eq!(
            merged,
            b("-ERR a backend answered MGET with too few values\r\n")
        );
        let mut g = Gather::split(Merge::Values, 2, vec![0, 1], 8);
        g.add(0, Ok(b("+OK\r\n")));
        let merged = g.add(1, Ok(b("*1\r\n$1\r\nb\r\n"))).unwrap();
        assert!(
            merged.starts_with(b"-ERR a backend answered MGET with something other than an array")
        );
        let mut g = Gather::split(Merge::Sum, 2, vec![], 8);
        g.add(0, Ok(b(":1\r\n")));
        assert_eq!(
            g.add(1, Ok(b("+OK\r\n"))).unwrap(),
            b("-ERR a backend answered with something other than an integer\r\n")
        );
    }

    #[test]
    fn sums_and_oks() {
        let mut g = Gather::split(Merge::Sum, 3, vec![], 8);
        g.add(0, Ok(b(":2\r\n")));
        g.add(2, Ok(b(":0\r\n")));
        assert_eq!(g.add(1, Ok(b(":5\r\n"))).unwrap(), b(":7\r\n"));
        let mut g = Gather::split(Merge::Same, 2, vec![], 8);
        g.add(0, Ok(b("+OK\r\n")));
        assert_eq!(g.add(1, Ok(b("+OK\r\n"))).unwrap(), b("+OK\r\n"));
    }

    #[test]
    fn a_failed_part_fails_the_request() {
        let mut g = Gather::split(Merge::Sum, 2, vec![], 8);
        g.add(0, Ok(b(":1\r\n")));
        let err = BackendError {
            node: "s (h:1)".into(),
            failure: crate::backend::Failure::Closed,
        };
        assert_eq!(
            g.add(1, Err(err)).unwrap(),
            b("-ERR backend s (h:1) connection closed\r\n")
        );
        let mut g = Gather::split(Merge::Values, 2, vec![0, 1], 8);
        g.add(0, Ok(b("-WRONGTYPE x\r\n")));
        assert_eq!(
            g.add(1, Ok(b("*1\r\n$1\r\na\r\n"))).unwrap(),
            b("-WRONGTYPE x\r\n")
        );
    }

    proptest::proptest! {
        /// A cursor the proxy hands out leads back to the shard and backend cursor it came
        /// from, and a finished shard leads to the start of the next.
        #[test]
        fn scan_cursors_round_trip(shards in 1usize..64, shard_seed: usize, backend: u64) {
            let shard = shard_seed % shards;
            match next_cursor(backend, shard, shards) {
                Some(0) => proptest::prop_assert!(backend == 0 && shard + 1 == shards),
                Some(next) if backend == 0 => {
                    proptest::prop_assert_eq!(decode_cursor(next, shards), (shard + 1, 0));
                }
                Some(next) => {
                    proptest::prop_assert_eq!(decode_cursor(next, shards), (shard, backend));
                }
                None => proptest::prop_assert!(backend.checked_mul(shards as u64).is_none()
                    || backend * shards as u64 > u64::MAX - shard as u64),
            }
        }
    }

    #[test]
    fn info_sums_keyspace() {
        let mut g = Gather::info(
            Some("x:1\r\n".to_string()),
            "# Proxy\r\n".to_string(),
            true,
            2,
        );
        g.add(0, Ok(b("$60\r\nredis_version:7.0.15\r\n# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=5\r\n\r\n")));
        let merged = g
            .add(
                1,
                Ok(b(
                    "$58\r\nredis_version:6.2.1\r\ndb0:keys=4,expires=0,avg_ttl=0\r\n\r\n",
                )),
            )
            .unwrap();
        let text = String::from_utf8_lossy(&merged);
        assert!(text.starts_with("$"), "{text}");
        assert!(text.contains("# Server\r\nredis_version:6.2.1\r\nx:1\r\n# Proxy\r\n# Keyspace\r\ndb0:keys=7,expires=1,avg_ttl=0\r\n"), "{text}");
    }
}
