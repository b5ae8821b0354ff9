//! Merging the per-shard replies of a request that was split or broadcast.

use bytes::{BufMut, Bytes, BytesMut};

use super::session::error_reply;
use crate::backend::BackendError;
use crate::command::Merge;
use crate::protocol::resp::{ReplyScanner, encode, parse_int};

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
}

/// Collects one reply per part; the merged reply is ready when the last arrives.
pub(super) struct Gather {
    plan: Plan,
    parts: Vec<Option<Result<Bytes, BackendError>>>,
    missing: usize,
    max_depth: usize,
}

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

    fn new(plan: Plan, parts: usize, max_depth: usize) -> Gather {
        Gather {
            plan,
            parts: (0..parts).map(|_| None).collect(),
            missing: parts,
            max_depth,
        }
    }

    /// Records part `part`; returns the client's reply once every part is in.
    pub(super) fn add(&mut self, part: usize, reply: Result<Bytes, BackendError>) -> Option<Bytes> {
        let slot = self.parts.get_mut(part)?;
        if slot.is_none() {
            self.missing -= 1;
        }
        *slot = Some(reply);
        (self.missing == 0).then(|| self.merge())
    }

    fn merge(&mut self) -> Bytes {
        let parts: Vec<Result<Bytes, BackendError>> = self.parts.drain(..).flatten().collect();
        match &self.plan {
            Plan::Info {
                server,
                rest,
                keyspace,
            } => merge_info(server.as_deref(), rest, *keyspace, &parts),
            Plan::Split { merge, key_parts } => {
                // A failed shard fails the whole request, as a single server would.
                let mut replies = Vec::with_capacity(parts.len());
                for p in parts {
                    match p {
                        Ok(r) if r.first() == Some(&b'-') => return r,
                        Ok(r) => replies.push(r),
                        Err(e) => return error_reply(&e.to_string()),
                    }
                }
                match merge {
                    Merge::Values => merge_values(&replies, key_parts, self.max_depth),
                    Merge::Sum => merge_sum(&replies),
                    Merge::AllOk => replies
                        .into_iter()
                        .find(|r| &r[..] != b"+OK\r\n")
                        .unwrap_or_else(|| Bytes::from_static(b"+OK\r\n")),
                }
            }
        }
    }
}

/// MGET: walks each part's array reply with a cursor, taking the next value of key i's part,
/// so the values come out in key order without collecting them first.
fn merge_values(replies: &[Bytes], key_parts: &[u32], max_depth: usize) -> Bytes {
    const NOT_AN_ARRAY: &str = "a backend answered MGET with something other than an array";
    let mut cursors = Vec::with_capacity(replies.len());
    for r in replies {
        let header_end = match (r.first(), memchr::memchr(b'\n', r)) {
            (Some(b'*'), Some(nl)) => nl + 1,
            _ => return error_reply(NOT_AN_ARRAY),
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
            _ => return error_reply("a backend answered MGET with too few values"),
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
            None => return error_reply("a backend answered with something other than an integer"),
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
        let mut g = Gather::split(Merge::AllOk, 2, vec![], 8);
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
