//! The memcached side of a session: text and meta commands routed by key, multi-key gets split
//! by shard and merged, writes to replicated shards sent to every node, and the commands the
//! proxy answers itself (`mn`, `verbosity`, `quit`) or makes from every server's (`stats`).
//! Routing is in `route`.

mod merge;
mod route;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

use crate::backend::Profile;
use crate::command::{Class, ClassCounts};
use crate::protocol::ReplyKind;
use crate::protocol::memcache::{
    Limits, MAX_KEY_BYTES, Parsed, ReplyShape, Request, RequestParser, Verb, decode_base64,
};
use crate::server::error::ClientError;
use crate::server::plan::{Part, Plan, Target};
use crate::server::session::{Context, Frontend};
use crate::topology::{Pool, PoolState};

/// memcached reads an exptime above 30 days as a Unix time, not as seconds from now.
const MAX_RELATIVE_EXPTIME: i64 = 30 * 24 * 60 * 60;

pub(super) struct Memcache {
    parser: RequestParser,
    /// Whether this client has been warned about an exptime in the past (once per client).
    warned_past_exptime: bool,
}

impl Frontend for Memcache {
    fn new(_: &Pool) -> Memcache {
        Memcache {
            parser: RequestParser::default(),
            warned_past_exptime: false,
        }
    }

    fn handle_input(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> bool {
        let state = cx.pool.state();
        let limits = Limits {
            item_size_max: cx.pool.config.memcache.item_size_max,
            max_get_line: cx.pool.config.clients.requests.max_inline_bytes,
        };
        let mut counts = ClassCounts::default();
        let closing = loop {
            // The rest waits in `buf` until there is room for more requests.
            if !cx.has_room() {
                break false;
            }
            match self.parser.parse(buf, &limits) {
                Ok(Some(Parsed::Request(req))) => {
                    counts.count(class(req.verb));
                    if self.dispatch(cx, &state, req) {
                        break true;
                    }
                }
                Ok(Some(Parsed::Reject { reply, silent })) => {
                    counts.count(Class::Unknown);
                    if !silent {
                        cx.out.error(ClientError::Exact(reply.into()));
                    }
                }
                Ok(Some(Parsed::Binary(refusal))) => {
                    counts.count(Class::Unknown);
                    cx.out.ready(refusal);
                    break true;
                }
                Ok(None) => break false,
                Err(e) => {
                    cx.out
                        .error(ClientError::Exact(format!("CLIENT_ERROR {e}").into()));
                    break true;
                }
            }
        };
        cx.pool.metrics.count_requests(&counts);
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

/// What kind of work a memcache command asks for.
fn class(verb: Verb) -> Class {
    match verb {
        Verb::Get | Verb::Gets | Verb::MetaGet | Verb::MetaDebug => Class::Read,
        Verb::Gat
        | Verb::Gats
        | Verb::Set
        | Verb::Add
        | Verb::Replace
        | Verb::Append
        | Verb::Prepend
        | Verb::Cas
        | Verb::Delete
        | Verb::Incr
        | Verb::Decr
        | Verb::Touch
        | Verb::MetaSet
        | Verb::MetaDelete
        | Verb::MetaArithmetic => Class::Write,
        Verb::FlushAll => Class::Keyspace,
        Verb::Stats | Verb::Version | Verb::Verbosity | Verb::Quit | Verb::MetaNoop => {
            Class::Connection
        }
        // memcached's administrative commands, which the proxy refuses.
        _ => Class::Unknown,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Memcache {
    /// Routes one command. Returns true for `quit`.
    fn dispatch(&mut self, cx: &mut Context<'_>, state: &PoolState, req: Request) -> bool {
        match req.verb {
            Verb::Quit => return true,
            Verb::MetaNoop => cx.out.ready(Bytes::from_static(b"MN\r\n")),
            Verb::Verbosity if req.is_quiet() => {}
            Verb::Verbosity => cx.out.ready(Bytes::from_static(b"OK\r\n")),
            Verb::Stats => self.stats(cx, state, &req),
            Verb::FlushAll => {
                if let Some(plan) = route::flush_all(state, cx.pool.config.allow_flush, &req) {
                    cx.execute(state, plan, Profile::default());
                }
            }
            Verb::Get | Verb::Gets => self.get(cx, state, &req),
            Verb::Gat | Verb::Gats => {
                if self.exptime_allowed(cx, &req, req.token(2).unwrap_or_default()) {
                    self.get(cx, state, &req);
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
            | Verb::Extstore => cx.out.error(ClientError::Exact(
                format!(
                    "CLIENT_ERROR '{}' is not supported through the proxy",
                    req.verb
                )
                .into(),
            )),
            _ => self.keyed(cx, state, &req),
        }
        false
    }

    /// Counts, logs (once per client) and, when the pool says so, refuses a command whose
    /// exptime is an absolute time already past, which memcached expires at once. Returns
    /// whether the command may go on.
    fn exptime_allowed(&mut self, cx: &mut Context<'_>, req: &Request, key: &[u8]) -> bool {
        let Some(t) = exptime(req) else {
            return true;
        };
        if t <= MAX_RELATIVE_EXPTIME || t > unix_now() {
            return true;
        }
        cx.pool.metrics.past_exptime.inc();
        if !self.warned_past_exptime {
            self.warned_past_exptime = true;
            tracing::warn!(
                pool = %cx.pool.config.name,
                session = cx.listing.id,
                key = %String::from_utf8_lossy(key),
                exptime = t,
                "exptime over 30 days is read as a Unix time, and this one is past: the item expires at once"
            );
        }
        if !cx.pool.config.memcache.reject_past_exptime {
            return true;
        }
        if !req.is_quiet() || req.verb.is_meta() {
            cx.out.error(ClientError::Exact(format!(
                "CLIENT_ERROR exptime {t} is in the past: over {MAX_RELATIVE_EXPTIME} s it is a Unix time"
            ).into()));
        }
        false
    }

    /// A single-key command: to its shard's node, or to every node of a replicated shard if
    /// it writes.
    fn keyed(&mut self, cx: &mut Context<'_>, state: &PoolState, req: &Request) {
        let mut decoded = Key {
            buf: [0; MAX_KEY_BYTES],
        };
        // `version` has no key: any shard answers.
        let key = match req.verb {
            Verb::Version => &b""[..],
            _ => ring_key(req, &mut decoded),
        };
        if !self.exptime_allowed(cx, req, key) {
            return;
        }
        let plan = route::keyed(state, req, key);
        if !key.is_empty() {
            cx.pool.hot_keys.count(cx.worker(), || [key], cx.now());
        }
        cx.execute(state, plan, Profile::default());
    }

    /// get / gets / gat / gats, of one key or several.
    fn get(&mut self, cx: &mut Context<'_>, state: &PoolState, req: &Request) {
        (cx.pool.hot_keys).count(cx.worker(), || route::get_keys(req), cx.now());
        cx.execute(state, route::get(state, req), Profile::default());
    }

    /// `stats`: the servers' counters summed as one memcached would show the pool, with the
    /// proxy's own connections, uptime and counts. `stats backends [group]`: every node's
    /// `stats`, each line prefixed with the node's name. Other groups (`settings`, `items`,
    /// `slabs`, …) from the first server.
    fn stats(&mut self, cx: &mut Context<'_>, state: &PoolState, req: &Request) {
        let mut args = req.tokens().skip(1);
        let plan = match args.next() {
            None => {
                let primaries: Vec<Part> = (0..state.shards.len())
                    .map(|shard| Part {
                        target: Target::Node { shard, node: 0 },
                        payload: Bytes::from_static(b"stats\r\n"),
                        kind: ReplyKind::Memcache(ReplyShape::Stats),
                    })
                    .collect();
                let gather =
                    merge::summed_stats(primaries.len(), Memcache::own_stats(cx.pool, state));
                Plan::Gather(primaries, gather)
            }
            Some(b"backends") => route::stats_backends(state, args, |node| node.addr.to_string()),
            Some(_) => Plan::Forward(Part {
                target: Target::Node { shard: 0, node: 0 },
                payload: req.frame().clone(),
                kind: ReplyKind::Memcache(ReplyShape::Stats),
            }),
        };
        cx.execute(state, plan, Profile::default());
    }

    /// The proxy's own stats: its process, its clients, what it counted.
    fn own_stats(pool: &Pool, state: &PoolState) -> Vec<(&'static str, String)> {
        let m = &pool.metrics;
        let up = state
            .shards
            .iter()
            .flat_map(|s| (0..s.nodes.len()).filter(|&i| s.is_up(i)))
            .count();
        let nodes = state.nodes().count();
        vec![
            ("pid", std::process::id().to_string()),
            ("uptime", pool.started.elapsed().as_secs().to_string()),
            ("time", unix_now().to_string()),
            ("curr_connections", m.client_connections.get().to_string()),
            (
                "total_connections",
                m.client_connections_total.get().to_string(),
            ),
            (
                "proxy_version",
                format!("ringproxy-{}", env!("CARGO_PKG_VERSION")),
            ),
            ("cmd_total", m.requests.get().to_string()),
            (
                "errors",
                m.errors.iter().map(|c| c.get()).sum::<u64>().to_string(),
            ),
            ("past_exptime", m.past_exptime.get().to_string()),
            ("servers", state.shards.len().to_string()),
            ("nodes_up", format!("{up}/{nodes}")),
        ]
    }
}

#[cfg(test)]
mod tests;
