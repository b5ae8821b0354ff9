//! The memcached side of a session: text and meta commands routed by key, multi-key gets split
//! by shard and merged, writes to replicated shards sent to every node, and the commands the
//! proxy answers itself (`mn`, `verbosity`, `quit`, `stats`).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use super::error::ClientError;
use super::merge::Gather;
use super::session::{Frontend, Resend, ResendWhen, Session, parts_by_shard};
use crate::protocol::ReplyKind;
use crate::protocol::memcache::{
    Limits, MAX_KEY_BYTES, Parsed, ReplyShape, Request, RequestParser, Verb, decode_base64,
};
use crate::topology::{Pool, PoolState, Shard};

/// memcached reads an exptime above 30 days as a Unix time, not as seconds from now.
const MAX_RELATIVE_EXPTIME: i64 = 30 * 24 * 60 * 60;

pub(super) struct Memcache {
    parser: RequestParser,
    /// Whether this client has been warned about an exptime in the past (once per client).
    warned_past_exptime: bool,
}

type McSession = Session<Memcache>;

impl Frontend for Memcache {
    fn new(pool: &Pool) -> Memcache {
        Memcache {
            parser: RequestParser::new(Limits {
                item_size_max: pool.config.item_size_max,
                max_get_line: pool.config.limits.max_inline_bytes,
            }),
            warned_past_exptime: false,
        }
    }

    fn handle_input(s: &mut McSession, buf: &mut BytesMut) -> bool {
        let state = s.pool.state();
        let mut count = 0;
        let closing = loop {
            match s.fe.parser.parse(buf) {
                Ok(Some(Parsed::Request(req))) => {
                    count += 1;
                    if s.dispatch(&state, req) {
                        break true;
                    }
                }
                Ok(Some(Parsed::Reject { reply, silent })) => {
                    count += 1;
                    if !silent {
                        s.out.error(ClientError::Exact(reply.into()));
                    }
                }
                Ok(None) => break false,
                Err(e) => {
                    s.out
                        .error(ClientError::Exact(format!("CLIENT_ERROR {e}").into()));
                    break true;
                }
            }
        };
        s.pool.metrics.requests.inc_by(count);
        closing
    }

    fn is_mid_request(&self, buf: &BytesMut) -> bool {
        self.parser.is_mid_request(buf)
    }
}

/// Room for a meta command's key as the ring hashes it: base64-decoded with the `b` flag.
struct Key {
    buf: [u8; MAX_KEY_BYTES],
}

fn ring_key<'a>(req: &'a Request, decoded: &'a mut Key) -> &'a [u8] {
    let key = req.token(1).unwrap_or_default();
    let base64 = req.verb.is_meta() && req.tokens().skip(2).any(|t| t == b"b");
    let decoded_len = if base64 {
        decode_base64(key, &mut decoded.buf)
    } else {
        None
    };
    match decoded_len {
        Some(len) => &decoded.buf[..len],
        None => key,
    }
}

/// The exptime a command sets, if it sets one: the text commands' field, or a meta command's
/// `T` (and, for mg and ma, `N`: the TTL of an item created on a miss).
fn exptime(req: &Request) -> Option<i64> {
    let field = match req.verb {
        Verb::Set | Verb::Add | Verb::Replace | Verb::Cas => req.token(3),
        Verb::Touch => req.token(2),
        Verb::Gat | Verb::Gats => req.token(1),
        Verb::MetaSet | Verb::MetaGet | Verb::MetaArithmetic | Verb::MetaDelete => {
            let vivify = matches!(req.verb, Verb::MetaGet | Verb::MetaArithmetic);
            req.tokens().skip(2).find_map(|t| match t.split_first() {
                Some((b'T', v)) => Some(v),
                Some((b'N', v)) if vivify => Some(v),
                _ => None,
            })
        }
        _ => None,
    }?;
    std::str::from_utf8(field).ok()?.parse().ok()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl McSession {
    /// Routes one command. Returns true for `quit`.
    fn dispatch(&mut self, state: &PoolState, req: Request) -> bool {
        match req.verb {
            Verb::Quit => return true,
            Verb::MetaNoop => self.out.ready(Bytes::from_static(b"MN\r\n")),
            Verb::Verbosity if req.is_quiet() => {}
            Verb::Verbosity => self.out.ready(Bytes::from_static(b"OK\r\n")),
            Verb::Stats => self.stats(state, &req),
            Verb::FlushAll => self.flush_all(state, &req),
            Verb::Get | Verb::Gets => self.get(state, &req),
            Verb::Gat | Verb::Gats => {
                if self.exptime_allowed(&req, req.token(2).unwrap_or_default()) {
                    self.get(state, &req);
                }
            }
            Verb::Shutdown
            | Verb::Slabs
            | Verb::LruCrawler
            | Verb::Lru
            | Verb::Watch
            | Verb::CacheMemlimit
            | Verb::Misbehave
            | Verb::Debugtime
            | Verb::Extstore => self.out.error(ClientError::Exact(
                format!(
                    "CLIENT_ERROR '{}' is not supported through the proxy",
                    req.verb
                )
                .into(),
            )),
            _ => self.keyed(state, &req),
        }
        false
    }

    /// Counts, logs (once per client) and, when the pool says so, refuses a command whose
    /// exptime is an absolute time already past, which memcached expires at once. Returns
    /// whether the command may go on.
    fn exptime_allowed(&mut self, req: &Request, key: &[u8]) -> bool {
        let Some(t) = exptime(req) else {
            return true;
        };
        if t <= MAX_RELATIVE_EXPTIME || t > unix_now() {
            return true;
        }
        self.pool.metrics.past_exptime.inc();
        if !self.fe.warned_past_exptime {
            self.fe.warned_past_exptime = true;
            tracing::warn!(
                pool = %self.pool.config.name,
                session = self.id,
                key = %String::from_utf8_lossy(key),
                exptime = t,
                "exptime over 30 days is read as a Unix time, and this one is past: the item expires at once"
            );
        }
        if !self.pool.config.reject_past_exptime {
            return true;
        }
        if !req.is_quiet() || req.verb.is_meta() {
            self.out.error(ClientError::Exact(format!(
                "CLIENT_ERROR exptime {t} is in the past: over {MAX_RELATIVE_EXPTIME} s it is a Unix time"
            ).into()));
        }
        false
    }

    /// A single-key command: to its shard's node, or to every node of a replicated shard if
    /// it writes.
    fn keyed(&mut self, state: &PoolState, req: &Request) {
        let mut decoded = Key {
            buf: [0; MAX_KEY_BYTES],
        };
        // `version` has no key: any shard answers.
        let key = match req.verb {
            Verb::Version => &b""[..],
            _ => ring_key(req, &mut decoded),
        };
        if !self.exptime_allowed(req, key) {
            return;
        }
        let Some(s) = state.shard_for(key) else {
            self.out.error(ClientError::NoServer);
            return;
        };
        let kind = ReplyKind::Memcache(req.verb.reply_shape());
        let quiet = req.is_quiet().then_some(req.verb);
        match (state.shards[s].replicated, req.verb.is_write()) {
            (true, true) => self.replicate(&state.shards[s], req, kind, quiet),
            (true, false) => self.failover_read(&state.shards[s], (req.forwarded(), kind), quiet),
            (false, write) => {
                self.send(state, s, write, (req.forwarded(), kind), 0, false);
                match quiet {
                    Some(verb) => self.out.quiet(verb),
                    None => self.out.forwarded(),
                }
            }
        }
    }

    /// A read on a replicated shard: to the node `read_from` prefers among those in
    /// service, and on to the next if that node fails.
    fn failover_read(&mut self, shard: &Shard, job: (Bytes, ReplyKind), quiet: Option<Verb>) {
        let node = &shard.nodes[shard.read_index(self.pool.config.read_from, self.id as usize)];
        self.send_to(node, job.clone(), 0, false);
        self.out.resend(Resend {
            shard: shard.name.clone(),
            node: node.id(),
            retries_left: shard.nodes.len() - 1,
            job,
            quiet,
            when: ResendWhen::NodeFails,
            resp3: false,
        });
    }

    /// A write to a replicated shard goes to the master and every replica; the client gets
    /// the master's reply, or a replica's when the master fails. A compare-and-swap cannot be
    /// repeated on replicas (their CAS values differ), so there the key is deleted instead.
    fn replicate(&mut self, shard: &Shard, req: &Request, kind: ReplyKind, quiet: Option<Verb>) {
        let payload = req.forwarded();
        let invalidation = invalidation(req);
        let nodes = shard.nodes.len();
        // The master first: its reply is the one the client gets while it answers.
        let order = std::iter::once(shard.master).chain((0..nodes).filter(|&i| i != shard.master));
        for (part, node) in order.map(|i| &shard.nodes[i]).enumerate() {
            let job = match &invalidation {
                Some(delete) if part > 0 => (delete.clone(), ReplyKind::Memcache(ReplyShape::Line)),
                _ => (payload.clone(), kind),
            };
            self.send_to(node, job, part, false);
        }
        let candidates = if invalidation.is_some() { 1 } else { nodes };
        self.out
            .gathering(Gather::first_answer(nodes, candidates, quiet));
    }

    /// get / gets / gat / gats: one request per shard with that shard's keys, merged in key
    /// order.
    fn get(&mut self, state: &PoolState, req: &Request) {
        let first_key = if matches!(req.verb, Verb::Gat | Verb::Gats) {
            2
        } else {
            1
        };
        let kind = ReplyKind::Memcache(ReplyShape::Values);
        let mut keys = req.tokens().skip(first_key);
        if let (Some(key), None) = (keys.next(), keys.next()) {
            // The common single-key get: nothing to group.
            return match state.shard_for(key) {
                Some(s) => self.get_from(state, s, req, kind),
                None => self.out.error(ClientError::NoServer),
            };
        }
        let Some((key_parts, part_shards)) = parts_by_shard(state, req.tokens().skip(first_key))
        else {
            return self.out.error(ClientError::NoServer);
        };
        match part_shards[..] {
            // `gat 10` with no key: memcached answers END.
            [] => self.out.ready(Bytes::from_static(b"END\r\n")),
            [s] => self.get_from(state, s, req, kind),
            _ => {
                let head: Vec<&[u8]> = req.tokens().take(first_key).collect();
                let mut payloads =
                    BytesMut::with_capacity(req.line().len() + 32 * part_shards.len());
                let mut ends = Vec::with_capacity(part_shards.len());
                for part in 0..part_shards.len() as u32 {
                    payloads.extend_from_slice(&head.join(&b' '));
                    for (key, _) in req
                        .tokens()
                        .skip(first_key)
                        .zip(&key_parts)
                        .filter(|(_, p)| **p == part)
                    {
                        payloads.extend_from_slice(b" ");
                        payloads.extend_from_slice(key);
                    }
                    payloads.extend_from_slice(b"\r\n");
                    ends.push(payloads.len());
                }
                let payloads = payloads.freeze();
                let mut start = 0;
                for (part, (&s, &end)) in part_shards.iter().zip(&ends).enumerate() {
                    self.send(
                        state,
                        s,
                        false,
                        (payloads.slice(start..end), kind),
                        part,
                        false,
                    );
                    start = end;
                }
                let line = req.frame().slice(..req.line().len());
                let parts = part_shards.len();
                self.out
                    .gathering(Gather::values(line, first_key, key_parts, parts));
            }
        }
    }

    /// A get whose keys all live on shard `s`: forwarded as it is.
    fn get_from(&mut self, state: &PoolState, s: usize, req: &Request, kind: ReplyKind) {
        if state.shards[s].replicated {
            return self.failover_read(&state.shards[s], (req.frame().clone(), kind), None);
        }
        self.send(state, s, false, (req.frame().clone(), kind), 0, false);
        self.out.forwarded();
    }

    /// `flush_all` empties every node, if the pool allows a command that reaches them all.
    fn flush_all(&mut self, state: &PoolState, req: &Request) {
        if !self.pool.config.allow_flush {
            if !req.is_quiet() {
                self.out.error(ClientError::Refused(
                    "flush_all would empty every server; the pool needs allow_flush: true".into(),
                ));
            }
            return;
        }
        let payload = req.forwarded();
        let kind = ReplyKind::Memcache(ReplyShape::Line);
        let mut parts = 0;
        for (part, node) in state.nodes().enumerate() {
            self.send_to(node, (payload.clone(), kind), part, false);
            parts += 1;
        }
        let quiet = req.is_quiet().then_some(req.verb);
        self.out.gathering(Gather::broadcast(parts, quiet));
    }

    /// `stats`: the proxy's own counters. `stats backends [group]`: every node's `stats`,
    /// each line prefixed with the node's name.
    fn stats(&mut self, state: &PoolState, req: &Request) {
        let mut args = req.tokens().skip(1);
        match args.next() {
            None => {
                let reply = self.own_stats(state);
                self.out.ready(reply);
            }
            Some(b"backends") => {
                let mut payload = BytesMut::from(&b"stats"[..]);
                for arg in args {
                    payload.extend_from_slice(b" ");
                    payload.extend_from_slice(arg);
                }
                payload.extend_from_slice(b"\r\n");
                let payload = payload.freeze();
                let kind = ReplyKind::Memcache(ReplyShape::Stats);
                let mut names = Vec::new();
                for shard in &state.shards {
                    for (i, node) in shard.nodes.iter().enumerate() {
                        self.send_to(node, (payload.clone(), kind), names.len(), false);
                        names.push(match i {
                            0 => shard.name.to_string(),
                            _ => format!("{}/{}", shard.name, node.addr),
                        });
                    }
                }
                self.out.gathering(Gather::stats(names));
            }
            Some(other) => self.out.error(ClientError::Exact(format!(
                "CLIENT_ERROR stats {} is not served by the proxy: use stats, or stats backends [group]",
                String::from_utf8_lossy(other)
            ).into())),
        }
    }

    fn own_stats(&self, state: &PoolState) -> Bytes {
        let pool = &self.pool;
        let m = &pool.metrics;
        let up = state
            .shards
            .iter()
            .flat_map(|s| &s.up)
            .filter(|&&u| u)
            .count();
        let nodes = state.nodes().count();
        let stats: [(&str, String); 11] = [
            ("pid", std::process::id().to_string()),
            ("uptime", pool.started.elapsed().as_secs().to_string()),
            ("time", unix_now().to_string()),
            (
                "version",
                format!("ringproxy-{}", env!("CARGO_PKG_VERSION")),
            ),
            ("curr_connections", m.client_connections.get().to_string()),
            (
                "total_connections",
                m.client_connections_total.get().to_string(),
            ),
            ("cmd_total", m.requests.get().to_string()),
            ("errors", m.errors.get().to_string()),
            ("past_exptime", m.past_exptime.get().to_string()),
            ("servers", state.shards.len().to_string()),
            ("nodes_up", format!("{up}/{nodes}")),
        ];
        let mut out = String::new();
        for (name, value) in stats {
            out.push_str(&format!("STAT {name} {value}\r\n"));
        }
        out.push_str("END\r\n");
        Bytes::from(out)
    }
}

/// What a replica gets instead of a compare-and-swap: the key's deletion.
fn invalidation(req: &Request) -> Option<Bytes> {
    let key = req.token(1)?;
    let delete = match req.verb {
        Verb::Cas => [&b"delete "[..], key, b"\r\n"].concat(),
        Verb::MetaSet if req.tokens().skip(3).any(|t| t.starts_with(b"C")) => {
            let base64 = req.tokens().skip(3).any(|t| t == b"b");
            [&b"md "[..], key, if base64 { b" b\r\n" } else { b"\r\n" }].concat()
        }
        _ => return None,
    };
    Some(Bytes::from(delete))
}
