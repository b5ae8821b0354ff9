//! Redis commands that reach beyond one key's shard: scripts and functions routed by their
//! declared keys, and the whole-keyspace commands (SCAN, KEYS, DBSIZE, RANDOMKEY, FLUSHDB,
//! FLUSHALL, SCRIPT, FUNCTION) fanned out and merged.

use bytes::BytesMut;

use super::error::ClientError;
use super::merge::{Gather, decode_cursor};
use super::resp::RespSession;
use super::session::{Resend, ResendWhen};
use crate::command::{Command, Fanout, Merge};
use crate::protocol::ReplyKind;
use crate::protocol::resp::{Request, encode, parse_int};
use crate::topology::PoolState;

/// EVAL, EVALSHA, FCALL and their read-only forms: to the one shard of the declared keys.
pub(super) fn script(s: &mut RespSession, state: &PoolState, cmd: &Command, req: &Request) {
    let declared = match parse_int(req.arg(2)) {
        None => return s.out.error(ClientError::NotAnInteger),
        Some(n) if n < 0 => {
            return s.out.error(ClientError::Exact(
                "ERR Number of keys can't be negative".into(),
            ));
        }
        Some(n) if n as usize > req.argc() - 3 => {
            return s.out.error(ClientError::Exact(
                "ERR Number of keys can't be greater than number of args".into(),
            ));
        }
        Some(n) => n as usize,
    };
    let Some(shard) = s.shard_of_keys(state, cmd, 3..3 + declared, req) else {
        return;
    };
    let write = cmd.writes();
    let resp3 = s.client().resp3;
    let job = (req.frame().clone(), ReplyKind::Resp);
    if !matches!(cmd.name, "EVALSHA" | "EVALSHA_RO") {
        s.send(state, shard, write, job, 0, resp3);
        return s.out.forwarded();
    }
    let shard = &state.shards[shard];
    let node = &shard.nodes[shard.node_for(write, s.pool.config.read_from, s.id as usize)];
    s.send_to(node, job.clone(), 0, resp3);
    s.out.resend(Resend {
        shard: shard.name.clone(),
        node: node.id(),
        retries_left: 1,
        job,
        quiet: None,
        when: ResendWhen::NoScript {
            sha: req.arg_bytes(1),
        },
        resp3,
    });
}

/// The whole-keyspace commands.
pub(super) fn run(s: &mut RespSession, state: &PoolState, fanout: Fanout, req: &Request) {
    let shards = state.shards.len();
    let depth = s.pool.config.max_reply_depth;
    let all = |merge| Gather::split(merge, shards, Vec::new(), depth);
    match fanout {
        Fanout::Scan => scan(s, state, req),
        Fanout::Keys if !s.pool.config.allow_keys => s.out.error(ClientError::Refused(
            "KEYS would scan every shard; the pool needs allow_keys: true (or use SCAN)".into(),
        )),
        Fanout::Keys => s.broadcast(state, req.frame().clone(), all(Merge::Concat)),
        Fanout::DbSize => s.broadcast(state, req.frame().clone(), all(Merge::Sum)),
        Fanout::RandomKey => s.broadcast(state, req.frame().clone(), all(Merge::FirstNonNil)),
        Fanout::Flush if !s.pool.config.allow_flush => s.out.error(ClientError::Refused(
            format!(
                "{} would empty every shard; the pool needs allow_flush: true",
                String::from_utf8_lossy(req.arg(0)).to_ascii_uppercase()
            )
            .into(),
        )),
        Fanout::Flush => s.broadcast(state, req.frame().clone(), all(Merge::Same)),
        Fanout::Script => script_admin(s, state, req),
        Fanout::Function => function_admin(s, state, req),
    }
}

/// SCAN: the client's cursor is `backend cursor × shards + shard`, so iteration walks shard 0
/// to the last, each exactly once, and a cursor of 0 starts and ends it.
fn scan(s: &mut RespSession, state: &PoolState, req: &Request) {
    let shards = state.shards.len();
    let Some(cursor) = std::str::from_utf8(req.arg(1))
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
    else {
        return s.out.error(ClientError::Exact("ERR invalid cursor".into()));
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
    let resp3 = s.client().resp3;
    s.send(
        state,
        shard,
        false,
        (payload.freeze(), ReplyKind::Resp),
        0,
        resp3,
    );
    s.out.gathering(Gather::scan(shard, shards));
}

/// SCRIPT LOAD / EXISTS / FLUSH on every node, replicas included (scripts are not
/// replicated), so EVALSHA and EVALSHA_RO find them wherever they run.
fn script_admin(s: &mut RespSession, state: &PoolState, req: &Request) {
    let sub = req.arg(1).to_ascii_uppercase();
    let nodes = state.nodes().count();
    let depth = s.pool.config.max_reply_depth;
    let gather = |merge| Gather::split(merge, nodes, Vec::new(), depth);
    match &sub[..] {
        b"LOAD" if req.argc() == 3 => {
            let scripts = s.pool.scripts.clone();
            let body = req.arg_bytes(2);
            let record = move |reply: &[u8]| {
                // `$40\r\n<sha>\r\n`, or `+<sha>` in RESP3 verbatim forms: take the hex.
                let sha: Vec<u8> = reply
                    .split(|&b| b == b'\n')
                    .map(<[u8]>::trim_ascii)
                    .find(|l| l.len() == 40 && l.iter().all(u8::is_ascii_hexdigit))
                    .map(<[u8]>::to_ascii_lowercase)
                    .unwrap_or_default();
                if !sha.is_empty() {
                    scripts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(sha, body.clone());
                }
            };
            s.broadcast_nodes(
                state,
                req.frame().clone(),
                gather(Merge::Same).recording(Box::new(record)),
            );
        }
        b"EXISTS" if req.argc() >= 3 => {
            s.broadcast_nodes(state, req.frame().clone(), gather(Merge::AllOf))
        }
        b"FLUSH" if req.argc() <= 3 => {
            s.pool
                .scripts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            s.broadcast_nodes(state, req.frame().clone(), gather(Merge::Same));
        }
        _ => unsupported_sub(s, req, "SCRIPT LOAD, EXISTS and FLUSH are served"),
    }
}

/// FUNCTION LOAD / DELETE / FLUSH / RESTORE on every master; LIST, DUMP and STATS from the
/// first shard (every master holds the same libraries when they are loaded through the proxy).
fn function_admin(s: &mut RespSession, state: &PoolState, req: &Request) {
    let sub = req.arg(1).to_ascii_uppercase();
    let shards = state.shards.len();
    let depth = s.pool.config.max_reply_depth;
    match &sub[..] {
        b"LOAD" | b"DELETE" | b"FLUSH" | b"RESTORE" => s.broadcast(
            state,
            req.frame().clone(),
            Gather::split(Merge::Same, shards, Vec::new(), depth),
        ),
        b"LIST" | b"DUMP" | b"STATS" => {
            let resp3 = s.client().resp3;
            s.send(
                state,
                0,
                false,
                (req.frame().clone(), ReplyKind::Resp),
                0,
                resp3,
            );
            s.out.forwarded();
        }
        _ => unsupported_sub(
            s,
            req,
            "FUNCTION LOAD, DELETE, FLUSH, RESTORE, LIST, DUMP and STATS are served",
        ),
    }
}

fn unsupported_sub(s: &mut RespSession, req: &Request, served: &'static str) {
    let shown = String::from_utf8_lossy(req.arg(1)).to_ascii_uppercase();
    let name = String::from_utf8_lossy(req.arg(0)).to_ascii_uppercase();
    s.out.error(ClientError::Unsupported {
        command: format!("{name} {shown}"),
        why: served.into(),
    });
}
