//! The near cache as Redis commands meet it: which reads it may answer (a command whose reply
//! depends on its one key's value alone), and the writes through this proxy that invalidate
//! what it holds, once when sent and again when answered (a read sent meanwhile on another
//! connection may have been served before the write).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::{merge, route};
use crate::backend::{BackendError, Profile};
use crate::cache::clients::{Changed, ClientTracking, one_key};
use crate::cache::{NearCache, Ticket, Variant};
use crate::command::{Command, Fanout, Kind, TxCommand};
use crate::config::Protocol;
use crate::metrics::{InvalidationCause, Refusal};
use crate::protocol::ReplyKind;
use crate::protocol::resp::{ReplyScanner, Request, encode, int_line, parse_int};
use crate::server::merge::{Gather, Merger, failed};
use crate::server::near_cache::{CACHING_YES, CachedRead, FillReplies, Keeper, serves};
use crate::server::outbox::{Outbox, ResendWhen};
use crate::server::plan::{Part, Plan, Target, parts_by_shard};
use crate::server::session::Context;
use crate::topology::PoolState;

/// The reads kept, by the command table's names, sorted. Not: anything that depends on time or
/// chance (TTL, SRANDMEMBER, RANDOMKEY…), on other keys (SORT), or that blocks.
const CACHEABLE: &[&str] = &[
    "EXISTS",
    "GET",
    "GETBIT",
    "GETRANGE",
    "HEXISTS",
    "HGET",
    "HGETALL",
    "HKEYS",
    "HLEN",
    "HMGET",
    "HSTRLEN",
    "HVALS",
    "LINDEX",
    "LLEN",
    "LRANGE",
    "SCARD",
    "SISMEMBER",
    "SMEMBERS",
    "SMISMEMBER",
    "STRLEN",
    "TYPE",
    "ZCARD",
    "ZCOUNT",
    "ZLEXCOUNT",
    "ZMSCORE",
    "ZRANGE",
    "ZRANGEBYLEX",
    "ZRANGEBYSCORE",
    "ZRANK",
    "ZREVRANGE",
    "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE",
    "ZREVRANK",
    "ZSCORE",
];

/// `plan`, routed for a read of `cmd`, as a read the near cache may answer or keep; `reader`:
/// the tracking client it is tracked for, if any.
pub(super) fn read(
    cache: &NearCache,
    (cmd, req): (&Command, &Request),
    plan: Plan,
    reader: Option<u64>,
) -> Plan {
    // EXISTS of one key only: of several, it is split by shard.
    let one_key = req.argc() >= 2 && (cmd.name != "EXISTS" || req.argc() == 2);
    if !one_key || CACHEABLE.binary_search(&cmd.name).is_err() || !cache.caches(req.arg(1)) {
        return plan;
    }
    let (part, resend) = match plan {
        Plan::Forward(part) => (part, false),
        Plan::Resend {
            part,
            when: ResendWhen::NodeFails,
            quiet: None,
            ..
        } => (part, true),
        other => return other,
    };
    let frame = req.frame();
    let read = CachedRead {
        key: frame.slice_ref(req.arg(1)),
        command: cmd.name,
        rest: frame.slice_ref(req.after(1)),
        reader,
    };
    Plan::Cached { part, read, resend }
}

/// How an MGET's value of a key is kept: a string's as GET's reply (the same bytes), nil as
/// MGET's own (GET of a key of another type is an error, not nil).
const MGET_VALUES: [&str; 2] = ["GET", "MGET"];

/// The keys of one fill request at most: its replies are counted in a byte.
const MAX_FILLED_KEYS: usize = u8::MAX as usize - 2;

/// MGET through the near cache: the values it holds answered from it, the rest read from their
/// shards, each shard's with one fill request whose values are then kept; and whether every
/// key's read is tracked by its server. `None` when a key has no shard (the routed plan says
/// so). `reader`: the tracking client the keys' reads are tracked for, if any.
pub(super) fn mget(
    cx: &mut Context<'_>,
    (cache, state): (&Arc<NearCache>, &PoolState),
    req: &Request,
    (profile, reader): (Profile, Option<u64>),
) -> Option<(Plan, bool)> {
    let read_from = cx.pool.config.read_from;
    let variants = MGET_VALUES.map(|command| Variant {
        command,
        db: profile.db,
        resp3: profile.resp3,
        rest: b"",
    });
    let mut hits = Vec::new();
    let mut missed = Vec::new();
    let mut hit = Vec::with_capacity(req.argc() - 1);
    for pos in 1..req.argc() {
        let key = req.arg(pos);
        let (_, shard) = state.group_for(key)?;
        let serves = |id, generation| serves(&state.shards[shard], read_from, id, generation);
        let mut found = None;
        if cache.caches(key) {
            found = cache.get(key, &variants, cx.now(), serves);
            cx.cache_read(found.is_some());
        }
        match found {
            Some(value) => hits.push(value),
            None => missed.push(pos),
        }
        hit.push(missed.last() != Some(&pos));
    }
    let mut values = BytesMut::new();
    encode::array(&mut values, hits.len());
    hits.iter().for_each(|v| values.put_slice(v));
    if missed.is_empty() {
        return Some((Plan::Reply(values.freeze()), true));
    }
    let (miss_parts, part_shards) =
        parts_by_shard(state, missed.iter().map(|&p| req.arg(p))).ok()?;
    let hits_part = part_shards.len() as u32;
    let mut misses = miss_parts.iter();
    let key_parts = hit
        .iter()
        .map(|&hit| match hit {
            true => hits_part,
            false => *misses.next().unwrap_or(&hits_part),
        })
        .collect();
    let frame = req.frame();
    let mut parts = Vec::with_capacity(part_shards.len());
    let mut fills = Vec::with_capacity(part_shards.len());
    for (part, &(group, shard)) in part_shards.iter().enumerate() {
        let keys: Vec<Bytes> = (missed.iter().zip(&miss_parts))
            .filter(|&(_, &p)| p as usize == part)
            .map(|(&pos, _)| frame.slice_ref(req.arg(pos)))
            .collect();
        // As routing has it: a cluster's slot on the move is read from its master.
        let master = state.reads_master(group);
        let node = state.shards[shard].node_for(master, read_from, cx.listing.id as usize);
        let target = Target::Node { shard, node };
        let node = &state.shards[shard].nodes[node];
        let (payload, kind, fill) = match node.tracking_ready() {
            Some(generation) if keys.len() <= MAX_FILLED_KEYS => {
                let now = cx.now();
                let fill = keys
                    .iter()
                    .map(|k| {
                        let hot = || cx.pool.hot_keys.is_hot(cx.worker(), k);
                        let keeps = cache.keeps(k, hot);
                        keeps.then(|| cache.ticket(k, node.id(), generation, now))
                    })
                    .collect();
                let keeper = Keeper {
                    cache: cache.clone(),
                    node: node.clone(),
                    profile: (profile.db, profile.resp3),
                    reader: reader.and_then(|id| Some((cx.pool.client_tracking.clone()?, id))),
                };
                let kind = ReplyKind::Resps(keys.len() as u8 + 2);
                (
                    mget_request(&keys, true),
                    kind,
                    Some(KeyFills {
                        keeper,
                        keys,
                        tickets: fill,
                    }),
                )
            }
            _ => (mget_request(&keys, false), ReplyKind::Resp, None),
        };
        parts.push(Part {
            target,
            payload,
            kind,
        });
        fills.push(fill);
    }
    let max_depth = cx.pool.config.max_reply_depth;
    let tracked = fills.iter().all(Option::is_some);
    let merger = FilledMget {
        fills,
        hits: values.freeze(),
        key_parts,
        max_depth,
    };
    let gather = Gather::new(part_shards.len(), merger);
    Some((Plan::Gather(parts, gather), tracked))
}

/// Whether `plan`, a read of one key, is tracked by its server: answered from the cache (only
/// while it is tracked) or sent with CLIENT CACHING YES, as it is on a shard whose nodes all
/// track (if one stops before the read is sent, its clients are told every key changed).
pub(super) fn tracked(plan: &Plan, state: &PoolState, cache: &NearCache) -> bool {
    let Plan::Cached { part, .. } = plan else {
        return false;
    };
    let nodes = &state.shards[part.target.shard()].nodes;
    !cache.hot_only() && nodes.iter().all(|n| n.tracking_ready().is_some())
}

/// MGET of `keys`; `tracked`: as a fill request (CLIENT CACHING YES first, each key's PTTL
/// after).
fn mget_request(keys: &[Bytes], tracked: bool) -> Bytes {
    let mut buf = BytesMut::with_capacity(keys.iter().map(|k| k.len() + 24).sum::<usize>() + 64);
    if tracked {
        buf.put_slice(CACHING_YES);
    }
    encode::array(&mut buf, 1 + keys.len());
    encode::bulk(&mut buf, b"MGET");
    keys.iter().for_each(|key| encode::bulk(&mut buf, key));
    for key in keys.iter().filter(|_| tracked) {
        encode::command(&mut buf, [&b"PTTL"[..], key].into_iter());
    }
    buf.freeze()
}

/// What one shard's MGET fill request keeps: each key's value, where the key is cached.
struct KeyFills {
    keeper: Keeper,
    keys: Vec<Bytes>,
    tickets: Vec<Option<Ticket>>,
}

impl KeyFills {
    /// MGET's reply, out of the fill request's, after keeping its values.
    fn take(&self, reply: &Bytes, max_depth: usize) -> Bytes {
        let mut replies = FillReplies::new(reply, max_depth);
        let tracked = replies.tracked();
        let values = replies.next();
        let Some((_, mut at)) = (values.first() == Some(&b'*'))
            .then(|| int_line(&values, 1))
            .flatten()
        else {
            return values;
        };
        let mut scanner = ReplyScanner::new(max_depth);
        for (key, ticket) in self.keys.iter().zip(&self.tickets) {
            let Ok(Some(len)) = scanner.scan(&values[at..]) else {
                break;
            };
            let value = values.slice(at..at + len);
            at += len;
            let pttl = replies.pttl();
            match ticket {
                _ if !tracked => self.keeper.untracked(key, Refusal::Untracked),
                None => {}
                Some(ticket) => {
                    let nil = &value[..] == b"$-1\r\n" || &value[..] == b"_\r\n";
                    let command = MGET_VALUES[usize::from(nil)];
                    (self.keeper).keep(key.clone(), (command, b""), (ticket, &value, pttl));
                }
            }
        }
        values
    }
}

/// MGET's values in key order: from the fill requests' replies and from the cache's hits.
struct FilledMget {
    fills: Vec<Option<KeyFills>>,
    /// The hits, as an array: the last part of `key_parts`.
    hits: Bytes,
    key_parts: Vec<u32>,
    max_depth: usize,
}

impl Merger for FilledMget {
    fn merge(&mut self, parts: Vec<Result<Bytes, BackendError>>) -> Bytes {
        let mut replies = Vec::with_capacity(parts.len() + 1);
        for (reply, fill) in parts.into_iter().zip(&self.fills) {
            let reply = match (reply, fill) {
                (Err(e), _) => return failed(Protocol::Redis, e),
                (Ok(reply), Some(fill)) => fill.take(&reply, self.max_depth),
                (Ok(reply), None) => reply,
            };
            // A failed shard fails the whole request, as a single server would.
            if reply.first() == Some(&b'-') {
                return reply;
            }
            replies.push(reply);
        }
        replies.push(self.hits.clone());
        merge::values(&replies, &self.key_parts, self.max_depth)
    }

    fn resent(&mut self, part: usize) {
        if let Some(fill) = self.fills.get_mut(part).and_then(Option::take) {
            let untracked = |key: &Bytes| fill.keeper.untracked(key, Refusal::Resent);
            fill.keys.iter().for_each(untracked);
        }
    }
}

/// What a write through the proxy invalidates: the pool's near cache, and what its tracking
/// clients read, told by `writer`.
pub(super) struct Written<'a> {
    pub cache: &'a NearCache,
    pub clients: Option<&'a ClientTracking>,
    pub writer: u64,
}

/// What the writer itself is to be told, right after its write's reply: the keys changed
/// (see `cache::clients`), each as a client is told them.
pub(super) type OwnChanges = Vec<Changed>;

impl Written<'_> {
    fn key(&self, key: &[u8], own: &mut OwnChanges) {
        self.cache.invalidate(key, InvalidationCause::Write);
        if self.clients.is_some_and(|c| c.changed(key, self.writer)) {
            own.push(one_key(key));
        }
    }

    /// Other tracking clients are told by the servers, whose flush says every key changed.
    fn flush(&self, own: &mut OwnChanges) {
        self.cache.flush();
        if self.clients.is_some_and(|c| c.tracks_own(self.writer)) {
            own.push(Changed::new());
        }
    }
}

/// Invalidates what request `seq`, `cmd`, may change: the keys of a write, or everything
/// for FLUSHALL and FLUSHDB; now, and in the cache again once it is answered. Returns what the
/// writer is to be told.
pub(super) fn written(
    to: &Written<'_>,
    out: &mut Outbox,
    cmd: &Command,
    req: &Request,
) -> OwnChanges {
    let seq = out.next_seq();
    let mut own = OwnChanges::new();
    if cmd.kind == Kind::Keyspace(Fanout::Flush) {
        to.flush(&mut own);
        out.invalidate_when_answered(seq, None);
        return own;
    }
    if !cmd.writes() {
        return own;
    }
    for key in written_keys(cmd, req) {
        to.key(&key, &mut own);
        out.invalidate_when_answered(seq, Some(key));
    }
    own
}

/// Inside MULTI: a queued write is invalidated now, and in the cache again when EXEC, which
/// carries it out, is answered; `pending` keeps those keys until then. Returns what the
/// writer is to be told.
pub(super) fn queued(
    to: &Written<'_>,
    out: &mut Outbox,
    pending: &mut Vec<Option<Bytes>>,
    (cmd, req): (&Command, &Request),
) -> OwnChanges {
    let mut own = OwnChanges::new();
    match cmd.kind {
        Kind::Transaction(TxCommand::Exec) => {
            let seq = out.next_seq();
            for key in pending.drain(..) {
                out.invalidate_when_answered(seq, key);
            }
        }
        Kind::Transaction(TxCommand::Discard) => pending.clear(),
        Kind::Keyspace(Fanout::Flush) => {
            to.flush(&mut own);
            pending.push(None);
        }
        _ if cmd.writes() => {
            for key in written_keys(cmd, req) {
                to.key(&key, &mut own);
                pending.push(Some(key));
            }
        }
        _ => {}
    }
    own
}

/// The keys of `req`, as slices of its frame: a script's declared keys, any other command's
/// keys.
fn written_keys<'r>(cmd: &'r Command, req: &'r Request) -> impl Iterator<Item = Bytes> + 'r {
    let frame = req.frame();
    let declared = match cmd.kind {
        Kind::Script(_) => parse_int(req.arg(2)).and_then(|n| usize::try_from(n).ok()),
        _ => None,
    };
    let script = declared.map(|n| 3..3usize.saturating_add(n).min(req.argc()));
    let script = (script.into_iter().flatten()).map(|pos| req.arg(pos));
    let other = declared.is_none().then(|| route::key_args(cmd, req));
    script
        .chain(other.into_iter().flatten())
        .map(move |key| frame.slice_ref(key))
}

#[cfg(test)]
mod tests {
    use super::CACHEABLE;

    #[test]
    fn the_cacheable_commands_are_sorted_and_known() {
        assert!(CACHEABLE.windows(2).all(|w| w[0] < w[1]));
        for name in CACHEABLE {
            let cmd = crate::command::lookup(name.as_bytes()).expect(name);
            assert!(!cmd.write, "{name} writes");
        }
    }
}
