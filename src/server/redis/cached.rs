//! The near cache as Redis commands meet it: which reads it may answer (a command whose reply
//! depends on its one key's value alone), and the writes through this proxy that invalidate
//! what it holds, once when sent and again when answered (a read sent meanwhile on another
//! connection may have been served before the write).

use bytes::Bytes;

use super::route;
use crate::cache::NearCache;
use crate::command::{Command, Fanout, Kind, TxCommand};
use crate::metrics::InvalidationCause;
use crate::protocol::resp::{Request, parse_int};
use crate::server::near_cache::CachedRead;
use crate::server::outbox::{Outbox, ResendWhen};
use crate::server::plan::Plan;

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

/// `plan`, routed for a read of `cmd`, as a read the near cache may answer or keep.
pub(super) fn read(cache: &NearCache, cmd: &Command, req: &Request, plan: Plan) -> Plan {
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
    };
    Plan::Cached { part, read, resend }
}

/// Invalidates what request `seq`, `cmd`, may change: the keys of a write, or everything
/// for FLUSHALL and FLUSHDB; now, and again once it is answered.
pub(super) fn written(cache: &NearCache, out: &mut Outbox, cmd: &Command, req: &Request) {
    let seq = out.next_seq();
    if cmd.kind == Kind::Keyspace(Fanout::Flush) {
        cache.flush();
        return out.invalidate_when_answered(seq, None);
    }
    if !cmd.writes() {
        return;
    }
    for key in written_keys(cmd, req) {
        cache.invalidate(&key, InvalidationCause::Write);
        out.invalidate_when_answered(seq, Some(key));
    }
}

/// Inside MULTI: a queued write is invalidated now, and again when EXEC, which carries it out,
/// is answered; `pending` keeps those keys until then.
pub(super) fn queued(
    cache: &NearCache,
    out: &mut Outbox,
    pending: &mut Vec<Option<Bytes>>,
    (cmd, req): (&Command, &Request),
) {
    match cmd.kind {
        Kind::Transaction(TxCommand::Exec) => {
            let seq = out.next_seq();
            for key in pending.drain(..) {
                out.invalidate_when_answered(seq, key);
            }
        }
        Kind::Transaction(TxCommand::Discard) => pending.clear(),
        Kind::Keyspace(Fanout::Flush) => {
            cache.flush();
            pending.push(None);
        }
        _ if cmd.writes() => {
            for key in written_keys(cmd, req) {
                cache.invalidate(&key, InvalidationCause::Write);
                pending.push(Some(key));
            }
        }
        _ => {}
    }
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
    let other = declared.is_none().then(|| route::keys(cmd, req));
    (script.into_iter().flatten())
        .chain(other.into_iter().flatten())
        .filter(move |&pos| pos < req.argc())
        .map(move |pos| frame.slice_ref(req.arg(pos)))
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
