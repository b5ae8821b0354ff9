//! The whole-keyspace commands, decided without I/O: SCAN one shard at a time with the shard in
//! the cursor; KEYS, DBSIZE, RANDOMKEY, FLUSHDB, FLUSHALL on every master, merged; SCRIPT on
//! every node (scripts are not replicated); FUNCTION on every master; CONFIG.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::merge::{self, decode_cursor};
use crate::command::{Fanout, Merge};
use crate::config::PoolConfig;
use crate::protocol::resp::{Request, encode};
use crate::server::error::ClientError;
use crate::server::merge::Gather;
use crate::server::plan::{Part, Plan, Target};
use crate::topology::{PoolState, Scripts};

/// The plan of a whole-keyspace command. SCRIPT LOAD and FLUSH also keep `scripts` current,
/// for EVALSHA on a node that lost its scripts.
pub(super) fn route<N>(
    state: &PoolState<N>,
    config: &PoolConfig,
    scripts: &Arc<Scripts>,
    fanout: Fanout,
    req: &Request,
) -> Plan {
    let masters = |merge| {
        every_master(
            state,
            req.frame(),
            merge::split(
                merge,
                state.shards.len(),
                Vec::new(),
                config.max_reply_depth,
            ),
        )
    };
    match fanout {
        Fanout::Scan => scan(state, req),
        Fanout::Keys if !config.redis.allow_keys => Plan::Fail(ClientError::Refused(
            "KEYS would scan every shard; the pool needs allow_keys: true (or use SCAN)".into(),
        )),
        Fanout::Keys => masters(Merge::Concat),
        Fanout::DbSize => masters(Merge::Sum),
        Fanout::RandomKey => masters(Merge::FirstNonNil),
        Fanout::Flush if !config.allow_flush => Plan::Fail(ClientError::Refused(
            format!(
                "{} would empty every shard; the pool needs allow_flush: true",
                String::from_utf8_lossy(req.arg(0)).to_ascii_uppercase()
            )
            .into(),
        )),
        Fanout::Flush => masters(Merge::Same),
        Fanout::Script => script_admin(state, config, scripts, req),
        Fanout::Function => function_admin(state, config, req),
        Fanout::Config => config_admin(state, config, req),
    }
}

/// CONFIG GET and HELP from the first shard's master (the masters of a pool are configured
/// alike, or the first one speaks for them); CONFIG SET and RESETSTAT on every node, replicas
/// included, when the pool allows it (frameworks set `notify-keyspace-events` at start-up).
fn config_admin<N>(state: &PoolState<N>, config: &PoolConfig, req: &Request) -> Plan {
    let sub = req.arg(1).to_ascii_uppercase();
    match &sub[..] {
        b"GET" | b"HELP" => first_master(req),
        b"SET" | b"RESETSTAT" if !config.redis.allow_config => Plan::Fail(ClientError::Refused(
            format!(
                "CONFIG {} would change every node; the pool needs allow_config: true",
                String::from_utf8_lossy(&sub)
            )
            .into(),
        )),
        b"SET" => match (2..req.argc()).step_by(2).map(|i| req.arg(i)).find(|p| cuts_off(p)) {
            Some(parameter) => Plan::Fail(ClientError::Refused(
                format!(
                    "CONFIG SET {} would cut the proxy off from its servers: change it on each server, and the pool's configuration with it",
                    String::from_utf8_lossy(parameter).to_lowercase()
                )
                .into(),
            )),
            None => {
                let parts = every_node(state, req);
                let gather = merge::split(Merge::Same, parts.len(), Vec::new(), config.max_reply_depth);
                Plan::Gather(parts, gather)
            }
        },
        b"RESETSTAT" => {
            let parts = every_node(state, req);
            let gather = merge::split(Merge::Same, parts.len(), Vec::new(), config.max_reply_depth);
            Plan::Gather(parts, gather)
        }
        b"REWRITE" => unsupported_sub(req, "CONFIG GET, SET, RESETSTAT and HELP are served"),
        // What no server knows: the first master refuses it in its own words.
        _ => first_master(req),
    }
}

/// Whether setting a server parameter would keep the proxy's own connections out: its
/// password, where it listens, its TLS.
fn cuts_off(parameter: &[u8]) -> bool {
    let parameter = parameter.to_ascii_lowercase();
    matches!(
        &parameter[..],
        b"requirepass" | b"port" | b"bind" | b"unixsocket" | b"protected-mode"
    ) || parameter.starts_with(b"tls-")
}

/// `payload` to every shard's master, merged by `gather`.
pub(super) fn every_master<N>(state: &PoolState<N>, payload: &Bytes, gather: Gather) -> Plan {
    let parts = (0..state.shards.len())
        .map(|shard| Part::resp(Target::Shard { shard, write: true }, payload.clone()))
        .collect();
    Plan::Gather(parts, gather)
}

/// The request as it is, one part for every node, replicas included.
fn every_node<N>(state: &PoolState<N>, req: &Request) -> Vec<Part> {
    state
        .shards
        .iter()
        .enumerate()
        .flat_map(|(shard, s)| (0..s.nodes.len()).map(move |node| Target::Node { shard, node }))
        .map(|target| Part::resp(target, req.frame().clone()))
        .collect()
}

/// SCAN: the client's cursor names the shard and that shard's own cursor.
fn scan<N>(state: &PoolState<N>, req: &Request) -> Plan {
    let shards = state.shards.len();
    let Some(cursor) = std::str::from_utf8(req.arg(1))
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return Plan::Fail(ClientError::Exact("ERR invalid cursor".into()));
    };
    let (shard, backend) = decode_cursor(cursor, shards);
    let mut payload = BytesMut::with_capacity(req.frame().len() + 16);
    let backend = backend.to_string();
    encode::array(&mut payload, req.argc());
    encode::bulk(&mut payload, req.arg(0));
    encode::bulk(&mut payload, backend.as_bytes());
    req.args()
        .skip(2)
        .for_each(|a| encode::bulk(&mut payload, a));
    let part = Part::resp(
        Target::Shard {
            shard,
            write: false,
        },
        payload.freeze(),
    );
    Plan::Gather(vec![part], merge::scan(shard, shards))
}

/// SCRIPT LOAD / EXISTS / FLUSH on every node, replicas included (scripts are not
/// replicated), so EVALSHA and EVALSHA_RO find them wherever they run.
fn script_admin<N>(
    state: &PoolState<N>,
    config: &PoolConfig,
    scripts: &Arc<Scripts>,
    req: &Request,
) -> Plan {
    let sub = req.arg(1).to_ascii_uppercase();
    let depth = config.max_reply_depth;
    match &sub[..] {
        b"LOAD" if req.argc() == 3 => {
            let scripts = scripts.clone();
            let load = req.frame().clone();
            let record = move |reply: &[u8]| {
                // `$40\r\n<sha>\r\n`, or `+<sha>` in RESP3 verbatim forms: take the hex.
                let sha = reply
                    .split(|&b| b == b'\n')
                    .map(<[u8]>::trim_ascii)
                    .find(|l| l.len() == 40 && l.iter().all(u8::is_ascii_hexdigit));
                if let Some(sha) = sha {
                    scripts.remember(sha, load.clone());
                }
            };
            let parts = every_node(state, req);
            let gather = merge::split_recording(Merge::Same, parts.len(), depth, Box::new(record));
            Plan::Gather(parts, gather)
        }
        b"EXISTS" if req.argc() >= 3 => {
            let parts = every_node(state, req);
            let gather = merge::split(Merge::AllOf, parts.len(), Vec::new(), depth);
            Plan::Gather(parts, gather)
        }
        b"FLUSH" if req.argc() <= 3 => {
            scripts.forget_all();
            let parts = every_node(state, req);
            let gather = merge::split(Merge::Same, parts.len(), Vec::new(), depth);
            Plan::Gather(parts, gather)
        }
        b"KILL" if req.argc() == 2 => kill_everywhere(state, req),
        // It would turn the shared connection it came on into a debugging session.
        b"DEBUG" => unsupported_sub(req, "scripts are debugged on a node itself"),
        // HELP, and what the node refuses in its own words.
        _ => first_master(req),
    }
}

/// SCRIPT KILL or FUNCTION KILL: to every node, replicas included (EVAL_RO and FCALL_RO run
/// there), each on a connection of its own.
fn kill_everywhere<N>(state: &PoolState<N>, req: &Request) -> Plan {
    let parts = every_node(state, req);
    let gather = merge::kill(parts.len());
    Plan::Aside(parts, gather)
}

/// FUNCTION LOAD / DELETE / FLUSH / RESTORE on every master; LIST, DUMP and STATS from the
/// first shard (every master holds the same libraries when they are loaded through the proxy);
/// KILL on every node.
fn function_admin<N>(state: &PoolState<N>, config: &PoolConfig, req: &Request) -> Plan {
    let sub = req.arg(1).to_ascii_uppercase();
    match &sub[..] {
        b"LOAD" | b"DELETE" | b"FLUSH" | b"RESTORE" => {
            let gather = merge::split(
                Merge::Same,
                state.shards.len(),
                Vec::new(),
                config.max_reply_depth,
            );
            every_master(state, req.frame(), gather)
        }
        b"LIST" | b"DUMP" | b"STATS" => Plan::Forward(Part::resp(
            Target::Shard {
                shard: 0,
                write: false,
            },
            req.frame().clone(),
        )),
        b"KILL" if req.argc() == 2 => kill_everywhere(state, req),
        // HELP, and what the node refuses in its own words.
        _ => first_master(req),
    }
}

/// The request to the first shard's master, whose reply is the client's.
fn first_master(req: &Request) -> Plan {
    Plan::Forward(Part::resp(
        Target::Shard {
            shard: 0,
            write: true,
        },
        req.frame().clone(),
    ))
}

fn unsupported_sub(req: &Request, served: &'static str) -> Plan {
    let shown = String::from_utf8_lossy(req.arg(1)).to_ascii_uppercase();
    let name = String::from_utf8_lossy(req.arg(0)).to_ascii_uppercase();
    Plan::Fail(ClientError::Unsupported {
        command: format!("{name} {shown}"),
        why: served.into(),
    })
}
