//! How the per-shard replies of a Redis request become one: split commands merged in key order
//! or summed, INFO with the shards' keyspace counts, SCAN with the shard in the cursor, a
//! transaction answered by EXEC.

use bytes::{BufMut, Bytes, BytesMut};

use crate::backend::BackendError;
use crate::command::Merge;
use crate::config::Protocol;
use crate::protocol::resp::{ReplyScanner, bulk_elements, encode, int_line, parse_int};
use crate::server::error::ClientError;
use crate::server::merge::{Gather, Merger, failed};

/// The RESP error reply for a backend reply that cannot be merged; `how` completes "a backend
/// answered …".
fn odd(how: &'static str) -> Bytes {
    ClientError::OddBackendReply(how).render(Protocol::Redis)
}

/// What to make of the parts.
enum RespMerge {
    /// A split MGET/MSET/DEL…: `key_parts[i]` is the part that key i went to; within a part,
    /// keys keep their order.
    Split {
        merge: Merge,
        key_parts: Vec<u32>,
        max_depth: usize,
    },
    /// SCAN on one shard of `shards`: the cursor re-encoded with the shard.
    Scan { shard: usize, shards: usize },
    /// A transaction sent as MULTI, its commands and EXEC: EXEC's reply, the last part's.
    Last,
    /// A change of subscriptions: the confirmations the proxy made, once every shard has
    /// confirmed its part.
    Confirmed(Bytes),
    /// SCRIPT KILL or FUNCTION KILL on every node.
    Kill,
    /// COMMAND LIST as a node gives it: the names of the commands the proxy serves.
    Served,
}

/// Sees a merged reply that is not an error on its way to the client (SCRIPT LOAD: the
/// script's SHA).
pub(super) type Record = Box<dyn Fn(&[u8]) + Send>;

struct Recording<M> {
    merger: M,
    record: Record,
}

impl<M: Merger> Merger for Recording<M> {
    fn merge(&mut self, parts: Vec<Result<Bytes, BackendError>>) -> Bytes {
        let merged = self.merger.merge(parts);
        if merged.first() != Some(&b'-') {
            (self.record)(&merged);
        }
        merged
    }
}

/// A command split by shard into `parts`, merged as `merge` says.
pub(super) fn split(merge: Merge, parts: usize, key_parts: Vec<u32>, max_depth: usize) -> Gather {
    Gather::new(
        parts,
        RespMerge::Split {
            merge,
            key_parts,
            max_depth,
        },
    )
}

/// [`split`], whose merged reply `record` sees.
pub(super) fn split_recording(
    merge: Merge,
    parts: usize,
    max_depth: usize,
    record: Record,
) -> Gather {
    let merger = RespMerge::Split {
        merge,
        key_parts: Vec::new(),
        max_depth,
    };
    Gather::new(parts, Recording { merger, record })
}

/// INFO of `parts` shards.
/// A transaction of `parts` requests, answered by the last.
pub(super) fn last(parts: usize) -> Gather {
    Gather::new(parts, RespMerge::Last)
}

/// (UN)SUBSCRIBE confirmed by `parts` subscriber connections: `reply`, the client's
/// confirmations.
pub(super) fn confirmed(parts: usize, reply: Bytes) -> Gather {
    Gather::new(parts, RespMerge::Confirmed(reply))
}

/// SCRIPT KILL or FUNCTION KILL on `parts` nodes.
pub(super) fn kill(parts: usize) -> Gather {
    Gather::new(parts, RespMerge::Kill)
}

/// COMMAND LIST [FILTERBY …] of one node, narrowed to what the proxy serves.
pub(super) fn served_commands() -> Gather {
    Gather::new(1, RespMerge::Served)
}

/// SCAN of shard `shard`.
pub(super) fn scan(shard: usize, shards: usize) -> Gather {
    Gather::new(1, RespMerge::Scan { shard, shards })
}

impl Merger for RespMerge {
    fn merge(&mut self, parts: Vec<Result<Bytes, BackendError>>) -> Bytes {
        match self {
            RespMerge::Split {
                merge,
                key_parts,
                max_depth,
            } => {
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
                    Merge::Values => values(&replies, key_parts, *max_depth),
                    Merge::Sum => merge_sum(&replies),
                    Merge::Same => replies.swap_remove(0),
                    Merge::Concat => merge_concat(&replies, *max_depth),
                    // From a shard picked at random, so every shard's keys come up.
                    Merge::FirstNonNil => {
                        let nil = |r: &Bytes| &r[..] == b"$-1\r\n" || &r[..] == b"_\r\n";
                        let start = crate::placement::random_below(replies.len());
                        let mut order = (0..replies.len()).map(|i| (start + i) % replies.len());
                        match order.find(|&i| !nil(&replies[i])) {
                            Some(i) => replies.swap_remove(i),
                            None => replies.swap_remove(0),
                        }
                    }
                    Merge::AllOf => merge_all_of(&replies),
                    Merge::PairSums => merge_pair_sums(&replies, *max_depth),
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
            RespMerge::Last => {
                // A lost connection fails the whole transaction, whichever part saw it.
                let mut last = None;
                for part in parts {
                    match part {
                        Err(e) => return failed(Protocol::Redis, e),
                        // A command the slot's new node should have had: EXEC aborted.
                        Ok(reply) => match ClientError::instead_of_redirect(&reply) {
                            Some(moved) => return moved.render(Protocol::Redis),
                            None => last = Some(reply),
                        },
                    }
                }
                last.unwrap_or_else(|| ClientError::NoNodeAnswered.render(Protocol::Redis))
            }
            // +OK if a node killed what it ran; else why a node could not (-UNKILLABLE: the
            // script wrote; or it was not reached); -NOTBUSY when none ran anything.
            RespMerge::Kill => {
                let (mut killed, mut not_busy, mut other) = (None, None, None);
                for part in parts {
                    match part {
                        Ok(reply) if reply.starts_with(b"+") => killed = Some(reply),
                        Ok(reply) if reply.starts_with(b"-NOTBUSY") => not_busy = Some(reply),
                        Ok(reply) => _ = other.get_or_insert(reply),
                        Err(e) => _ = other.get_or_insert_with(|| failed(Protocol::Redis, e)),
                    }
                }
                (killed.or(other).or(not_busy))
                    .unwrap_or_else(|| ClientError::NoNodeAnswered.render(Protocol::Redis))
            }
            // A subcommand (`client|list`) is served with its command.
            RespMerge::Served => match parts.into_iter().next() {
                Some(Ok(reply)) if reply.first() == Some(&b'*') => {
                    let served = |name: &&[u8]| {
                        let command = name.split(|&b| b == b'|').next().unwrap_or(name);
                        crate::command::lookup(command).is_some()
                    };
                    let names: Vec<&[u8]> = bulk_elements(&reply).filter(served).collect();
                    let mut out = BytesMut::new();
                    encode::array(&mut out, names.len());
                    names.iter().for_each(|name| encode::bulk(&mut out, name));
                    out.freeze()
                }
                Some(Ok(refused)) => refused,
                Some(Err(e)) => failed(Protocol::Redis, e),
                None => ClientError::NoNodeAnswered.render(Protocol::Redis),
            },
            // A server that refused the change (-NOPERM) says why, as one server would (a
            // cluster node's redirect is followed by the subscriber, never seen here).
            RespMerge::Confirmed(reply) => parts
                .into_iter()
                .find_map(|p| p.ok().filter(|r| r.first() == Some(&b'-')))
                .unwrap_or_else(|| reply.clone()),
            RespMerge::Scan { shard, shards } => match parts.into_iter().next() {
                Some(Ok(reply)) => merge_scan(reply, *shard, *shards),
                Some(Err(e)) => failed(Protocol::Redis, e),
                None => ClientError::NoNodeAnswered.render(Protocol::Redis),
            },
        }
    }
}

/// The elements of an array reply: its length and where they start.
fn array_body(reply: &[u8]) -> Option<(usize, usize)> {
    if reply.first() != Some(&b'*') {
        return None;
    }
    let (n, start) = int_line(reply, 1)?;
    Some((usize::try_from(n).ok()?, start))
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
pub(super) fn values(replies: &[Bytes], key_parts: &[u32], max_depth: usize) -> Bytes {
    const NOT_AN_ARRAY: &str = "MGET with something other than an array";
    let mut cursors = Vec::with_capacity(replies.len());
    for r in replies {
        let header_end = match (r.first(), int_line(r, 1)) {
            (Some(b'*'), Some((_, end))) => end,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Failure;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn values_follow_key_order() {
        // Keys 0 and 2 on part 1, key 1 on part 0.
        let mut g = split(Merge::Values, 2, vec![1, 0, 1], 8);
        assert_eq!(g.add(1, Ok(b("*2\r\n$1\r\na\r\n$-1\r\n"))), None);
        assert_eq!(
            g.add(0, Ok(b("*1\r\n$1\r\nb\r\n"))).unwrap(),
            b("*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n")
        );
    }

    #[test]
    fn short_or_odd_backend_replies_are_errors() {
        let mut g = split(Merge::Values, 2, vec![0, 1, 1], 8);
        g.add(0, Ok(b("*1\r\n$1\r\na\r\n")));
        let merged = g.add(1, Ok(b("*1\r\n$1\r\nb\r\n"))).unwrap();
        assert_eq!(
            merged,
            b("-ERR a backend answered MGET with too few values\r\n")
        );
        let mut g = split(Merge::Values, 2, vec![0, 1], 8);
        g.add(0, Ok(b("+OK\r\n")));
        let merged = g.add(1, Ok(b("*1\r\n$1\r\nb\r\n"))).unwrap();
        assert!(
            merged.starts_with(b"-ERR a backend answered MGET with something other than an array")
        );
        let mut g = split(Merge::Sum, 2, vec![], 8);
        g.add(0, Ok(b(":1\r\n")));
        assert_eq!(
            g.add(1, Ok(b("+OK\r\n"))).unwrap(),
            b("-ERR a backend answered with something other than an integer\r\n")
        );
    }

    #[test]
    fn a_kill_is_ok_if_any_node_killed_and_notbusy_only_if_none_ran_anything() {
        const NOTBUSY: &str = "-NOTBUSY No scripts in execution right now.\r\n";
        const UNKILLABLE: &str = "-UNKILLABLE Sorry the script already executed write commands\r\n";
        let kill = |replies: &[Result<&'static str, Failure>]| {
            let mut g = kill(replies.len());
            let mut merged = None;
            for (i, reply) in replies.iter().enumerate() {
                let reply = reply.clone().map(b).map_err(|failure| BackendError {
                    node: "n".into(),
                    failure,
                });
                merged = g.add(i, reply);
            }
            merged.unwrap()
        };
        assert_eq!(
            kill(&[Ok(NOTBUSY), Ok("+OK\r\n"), Ok(UNKILLABLE)]),
            b("+OK\r\n")
        );
        assert_eq!(kill(&[Ok(NOTBUSY), Ok(NOTBUSY)]), b(NOTBUSY));
        assert_eq!(kill(&[Ok(NOTBUSY), Ok(UNKILLABLE)]), b(UNKILLABLE));
        // A node not reached may be running one: not NOTBUSY.
        let unreached = kill(&[Ok(NOTBUSY), Err(Failure::Closed)]);
        assert_eq!(unreached, b("-ERR backend n connection closed\r\n"));
    }

    #[test]
    fn sums_and_oks() {
        let mut g = split(Merge::Sum, 3, vec![], 8);
        g.add(0, Ok(b(":2\r\n")));
        g.add(2, Ok(b(":0\r\n")));
        assert_eq!(g.add(1, Ok(b(":5\r\n"))).unwrap(), b(":7\r\n"));
        let mut g = split(Merge::Same, 2, vec![], 8);
        g.add(0, Ok(b("+OK\r\n")));
        assert_eq!(g.add(1, Ok(b("+OK\r\n"))).unwrap(), b("+OK\r\n"));
    }

    #[test]
    fn a_failed_part_fails_the_request() {
        let mut g = split(Merge::Sum, 2, vec![], 8);
        g.add(0, Ok(b(":1\r\n")));
        let err = BackendError {
            node: "s (h:1)".into(),
            failure: Failure::Closed,
        };
        assert_eq!(
            g.add(1, Err(err)).unwrap(),
            b("-ERR backend s (h:1) connection closed\r\n")
        );
        let mut g = split(Merge::Values, 2, vec![0, 1], 8);
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
}
