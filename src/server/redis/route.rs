//! Where a Redis command goes, decided without I/O from the request and a pool snapshot: to
//! the one shard of its keys, split by shard and merged, or held on a reserved connection
//! while it blocks.

use std::time::Duration;

use bytes::BytesMut;

use super::merge;
use crate::command::{BlockTimeout, Command, Merge, Movable, ScriptCall};
use crate::config::ReadFrom;
use crate::protocol::resp::{Request, encode, parse_int};
use crate::server::error::ClientError;
use crate::server::outbox::{ResendWhen, TimeoutArg};
use crate::server::plan::{Part, Plan, Target, parts_by_shard};
use crate::topology::{PoolState, Scripts};

/// A cluster node's answer to a request whose keys are in several slots.
pub(super) const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// The one shard of the keys at `positions` (any shard when there are none); an error when
/// the keys span shards (slots, in a cluster) or no server is left.
pub(super) fn shard_of_keys<N>(
    state: &PoolState<N>,
    cmd: &Command,
    positions: impl Iterator<Item = usize>,
    req: &Request,
) -> Result<usize, ClientError> {
    group_of_keys(state, cmd, positions, req).map(|(_, shard)| shard)
}

/// The one group of the keys at `positions` (their shard on a ring, their slot in a cluster)
/// and its shard, as [`shard_of_keys`].
fn group_of_keys<N>(
    state: &PoolState<N>,
    cmd: &Command,
    positions: impl Iterator<Item = usize>,
    req: &Request,
) -> Result<(u32, usize), ClientError> {
    let mut group = None;
    let mut positions = positions.peekable();
    if positions.peek().is_none() {
        group = state.group_for(b"");
    }
    for pos in positions {
        let g = state.group_for(req.arg(pos));
        if group.is_some() && g != group {
            return Err(match state.slots() {
                // As a cluster node answers, before any node is asked.
                Some(_) => ClientError::Exact(CROSSSLOT.into()),
                None => ClientError::CrossShard(cmd.name.to_ascii_lowercase()),
            });
        }
        group = g;
    }
    group.ok_or_else(|| ClientError::unplaced(state))
}

/// Every key position of `req`: the command's range and the ones only its arguments tell.
pub(super) fn keys(cmd: &Command, req: &Request) -> impl Iterator<Item = usize> {
    let movable = cmd.movable_keys(req);
    cmd.key_positions(req.argc()).chain(movable)
}

/// Every key of `req`, as [`keys`] places them.
pub(super) fn key_args<'r>(cmd: &Command, req: &'r Request) -> impl Iterator<Item = &'r [u8]> {
    keys(cmd, req).map(|pos| req.arg(pos))
}

/// A command on the shard of its keys; XREAD / XREADGROUP with BLOCK on a reserved
/// connection. A read on a shard with replicas moves once to another node of the shard if its
/// node fails before answering (not with `read_from: replica`, which keeps reads off the
/// master); a write is never sent twice.
pub(super) fn keyed<N>(
    state: &PoolState<N>,
    cmd: &Command,
    req: &Request,
    read_from: ReadFrom,
) -> Plan {
    if let Movable::Streams { from } = cmd.movable
        && let Some(at) = (from..req.argc())
            .take_while(|&i| !req.arg(i).eq_ignore_ascii_case(b"STREAMS"))
            .find(|&i| req.arg(i).eq_ignore_ascii_case(b"BLOCK"))
    {
        // XREAD … BLOCK milliseconds.
        let index = (at + 1).min(req.argc() - 1);
        let timeout = TimeoutArg {
            index,
            millis: true,
        };
        return reserved(
            state,
            cmd,
            req,
            (wait_limit(req.arg(index), 0.001), timeout),
        );
    }
    let (group, shard) = match group_of_keys(state, cmd, keys(cmd, req), req) {
        Ok(placed) => placed,
        Err(e) => return Plan::Fail(e),
    };
    if matches!(cmd.name, "SORT" | "SORT_RO")
        && let Err(e) = sort_patterns_on_the_shard(state, req)
    {
        return Plan::Fail(e);
    }
    // MEMORY USAGE is about a key (redis-cli --memkeys asks it); the other subcommands are one
    // server's.
    if cmd.name == "MEMORY" && !req.arg(1).eq_ignore_ascii_case(b"USAGE") {
        let shown = String::from_utf8_lossy(req.arg(1)).to_ascii_uppercase();
        return Plan::Fail(ClientError::Unsupported {
            command: format!("MEMORY {shown}"),
            why: "MEMORY USAGE is served; the rest is one server's: ask the server itself".into(),
        });
    }
    let target = Target::Shard {
        shard,
        write: cmd.write || state.reads_master(group),
    };
    let part = Part::resp(target, req.frame().clone());
    // A cluster's replica answers MOVED to a client that did not ask for replica reads.
    let may_move = !cmd.write
        && state.shards[shard].nodes.len() > 1
        && read_from != ReadFrom::Replica
        && state.slots().is_none();
    Plan::read(part, may_move)
}

/// SORT's BY and GET patterns name other keys, one per element (`weight_*`, `obj_*->field`):
/// served when those keys are on the sorted key's shard, that is when each pattern carries
/// the key's hash tag with the `*` outside it. Patterns without `*` (`nosort`, `#`, a constant)
/// read no key.
fn sort_patterns_on_the_shard<N>(state: &PoolState<N>, req: &Request) -> Result<(), ClientError> {
    if state.live_servers() <= 1 {
        return Ok(());
    }
    let key = req.arg(1);
    let tag = state.hashed_part(key);
    let mut i = 2;
    while i + 1 < req.argc() {
        let option = req.arg(i);
        if option.eq_ignore_ascii_case(b"LIMIT") {
            i += 3;
            continue;
        }
        if option.eq_ignore_ascii_case(b"BY") || option.eq_ignore_ascii_case(b"GET") {
            let pattern = req.arg(i + 1);
            if let Some(star) = memchr::memchr(b'*', pattern) {
                // `key->field`: the key is what comes before the first `->` after the `*`.
                let key_part = memchr::memmem::find(&pattern[star + 1..], b"->")
                    .map_or(pattern, |at| &pattern[..star + 1 + at]);
                let hashed = state.hashed_part(key_part);
                let tagged = tag.len() < key.len() && hashed.len() < key_part.len();
                if !tagged || hashed != tag || hashed.contains(&b'*') {
                    return Err(ClientError::Refused(
                        format!(
                            "SORT pattern '{}' must carry the key's hash tag, outside the '*', so the keys it names share the key's shard",
                            String::from_utf8_lossy(pattern)
                        )
                        .into(),
                    ));
                }
            }
            i += 2;
            continue;
        }
        i += 1;
    }
    Ok(())
}

/// A blocking command (BLPOP, BZMPOP…), its timeout where `at` says.
pub(super) fn blocking<N>(
    state: &PoolState<N>,
    cmd: &Command,
    req: &Request,
    at: BlockTimeout,
) -> Plan {
    let index = match at {
        BlockTimeout::Last => req.argc() - 1,
        BlockTimeout::First => 1,
    };
    let timeout = TimeoutArg {
        index,
        millis: false,
    };
    reserved(state, cmd, req, (wait_limit(req.arg(index), 1.0), timeout))
}

/// A command that may wait on its backend: on a connection reserved for this client until
/// the reply comes, so no other client waits behind it.
fn reserved<N>(
    state: &PoolState<N>,
    cmd: &Command,
    req: &Request,
    (wait, timeout_at): (Option<Duration>, TimeoutArg),
) -> Plan {
    match shard_of_keys(state, cmd, keys(cmd, req), req) {
        Ok(shard) => Plan::Reserved {
            part: Part::resp(
                Target::Shard {
                    shard,
                    write: cmd.write,
                },
                req.frame().clone(),
            ),
            wait,
            timeout_at,
        },
        Err(e) => Plan::Fail(e),
    }
}

/// A blocking command's own timeout, given in `unit` seconds: `None` for 0 (wait forever). A
/// timeout that is not a positive number is the backend's to refuse, at once.
fn wait_limit(timeout: &[u8], unit: f64) -> Option<Duration> {
    let seconds = std::str::from_utf8(timeout)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|t| t.is_finite());
    match seconds {
        Some(0.0) => None,
        Some(t) if t > 0.0 => Some(Duration::from_secs_f64((t * unit).min(1e9))),
        _ => Some(Duration::ZERO),
    }
}

/// MGET, MSET, DEL…: one request per shard with that shard's keys, merged as `merge` says;
/// sent whole when every key is on one shard.
pub(super) fn split<N>(
    state: &PoolState<N>,
    cmd: &Command,
    merge: Merge,
    req: &Request,
    max_depth: usize,
) -> Plan {
    let step = cmd.key_step;
    let keys = cmd.key_positions(req.argc()).map(|pos| req.arg(pos));
    let (key_parts, part_shards) = match parts_by_shard(state, keys) {
        Ok(grouped) => grouped,
        Err(e) => return Plan::Fail(e),
    };
    let target = |(group, shard)| Target::Shard {
        shard,
        write: cmd.write || state.reads_master(group),
    };
    if let [part] = part_shards[..] {
        return Plan::Forward(Part::resp(target(part), req.frame().clone()));
    }
    // Every part's request in one buffer, sent as slices of it.
    let mut payloads = BytesMut::with_capacity(req.frame().len() + 16 * part_shards.len());
    let mut ends = Vec::with_capacity(part_shards.len());
    for part in 0..part_shards.len() as u32 {
        let keys = key_parts.iter().filter(|&&p| p == part).count();
        encode::array(&mut payloads, 1 + keys * step);
        encode::bulk(&mut payloads, req.arg(0));
        for (pos, _) in cmd
            .key_positions(req.argc())
            .zip(&key_parts)
            .filter(|(_, p)| **p == part)
        {
            for i in pos..pos + step {
                encode::bulk(&mut payloads, req.arg(i));
            }
        }
        ends.push(payloads.len());
    }
    let payloads = payloads.freeze();
    let mut start = 0;
    let mut parts = Vec::with_capacity(part_shards.len());
    for (&part, &end) in part_shards.iter().zip(&ends) {
        parts.push(Part::resp(target(part), payloads.slice(start..end)));
        start = end;
    }
    let gather = merge::split(merge, part_shards.len(), key_parts, max_depth);
    Plan::Gather(parts, gather)
}

/// EVAL, EVALSHA, FCALL and their read-only forms: to the one shard of the declared keys. An
/// EVALSHA of a script the pool saw loaded is sent again, after its SCRIPT LOAD, to a node
/// that answers NOSCRIPT.
pub(super) fn script<N>(
    state: &PoolState<N>,
    scripts: &Scripts,
    cmd: &Command,
    call: ScriptCall,
    req: &Request,
) -> Plan {
    let declared = match parse_int(req.arg(2)) {
        // As the server words it for each.
        None if call == ScriptCall::Function => {
            return Plan::Fail(ClientError::Exact("ERR Bad number of keys provided".into()));
        }
        None => return Plan::Fail(ClientError::NotAnInteger),
        Some(n) if n < 0 => {
            return Plan::Fail(ClientError::Exact(
                "ERR Number of keys can't be negative".into(),
            ));
        }
        Some(n) if n as usize > req.argc() - 3 => {
            return Plan::Fail(ClientError::Exact(
                "ERR Number of keys can't be greater than number of args".into(),
            ));
        }
        Some(n) => n as usize,
    };
    let shard = match shard_of_keys(state, cmd, 3..3 + declared, req) {
        Ok(shard) => shard,
        Err(e) => return Plan::Fail(e),
    };
    let target = Target::Shard {
        shard,
        write: cmd.writes(),
    };
    let part = Part::resp(target, req.frame().clone());
    let load = match call {
        ScriptCall::EvalSha => scripts.load_request(req.arg(1)),
        _ => None,
    };
    match load {
        Some(first) => Plan::Resend {
            part,
            retries: 1,
            when: ResendWhen::Answered {
                prefix: b"-NOSCRIPT",
                first,
            },
            quiet: None,
        },
        None => Plan::Forward(part),
    }
}

#[cfg(test)]
mod tests;
