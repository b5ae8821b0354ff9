//! MULTI / EXEC / DISCARD / WATCH / UNWATCH. A transaction is pinned to one shard: the shard of
//! its first key (or of its WATCH). The proxy queues the commands itself, answering `+QUEUED`,
//! and at EXEC sends MULTI, the commands and EXEC in one write on a backend connection
//! reserved for the client, given back once EXEC is answered. WATCH reserves that connection
//! early and keeps it until EXEC, DISCARD or UNWATCH.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::RespSession;
use super::route::shard_of_keys;
use crate::backend::{Job, Node, Reserved};
use crate::command::{Command, Kind};
use crate::protocol::ReplyKind;
use crate::protocol::resp::{Request, encode};
use crate::server::error::ClientError;
use crate::server::merge::Gather;
use crate::server::session::Held;
use crate::topology::PoolState;

/// A client's open transaction, if any.
#[derive(Debug, Default)]
pub(super) struct Transaction {
    /// The name of the shard every key must map to, once a key or WATCH chose it.
    shard: Option<Arc<str>>,
    /// Between MULTI and EXEC / DISCARD: the queued requests.
    queued: Option<Vec<Bytes>>,
    /// A command was refused while queueing: EXEC aborts.
    aborted: bool,
    /// The connection WATCH reserved on the shard's master.
    watching: Option<(Arc<Node>, Reserved)>,
}

impl Transaction {
    pub(super) fn in_multi(&self) -> bool {
        self.queued.is_some()
    }
}

const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

/// The transaction commands themselves, outside MULTI.
pub(super) fn run(s: &mut RespSession, state: &PoolState, cmd: &Command, req: Request) {
    match cmd.name {
        "MULTI" => {
            s.fe.tx.queued = Some(Vec::new());
            s.out.ready(Bytes::from_static(b"+OK\r\n"));
        }
        "EXEC" => s
            .out
            .error(ClientError::Exact("ERR EXEC without MULTI".into())),
        "DISCARD" => s
            .out
            .error(ClientError::Exact("ERR DISCARD without MULTI".into())),
        "WATCH" => watch(s, state, cmd, &req),
        "UNWATCH" => {
            s.fe.tx.shard = None;
            match s.fe.tx.watching.take() {
                Some(held) => send_on(s, held, vec![req.frame().clone()]),
                None => s.out.ready(Bytes::from_static(b"+OK\r\n")),
            }
        }
        _ => s
            .out
            .error(ClientError::Exact("ERR unknown transaction command".into())),
    }
}

/// A request between MULTI and EXEC: EXEC and DISCARD end the transaction; anything else is
/// checked and queued, or refused and the transaction marked to abort.
pub(super) fn queue(s: &mut RespSession, state: &PoolState, cmd: Option<&Command>, req: Request) {
    let refuse = |s: &mut RespSession, e: ClientError| {
        s.fe.tx.aborted = true;
        s.out.error(e);
    };
    let Some(cmd) = cmd else {
        let shown = String::from_utf8_lossy(req.arg(0)).to_string();
        return refuse(s, ClientError::UnknownCommand(shown));
    };
    if !cmd.arity_ok(req.argc()) {
        let name = cmd.name.to_ascii_lowercase();
        return refuse(s, ClientError::WrongArity(name));
    }
    match (cmd.name, cmd.kind) {
        ("EXEC", _) => return exec(s, state),
        ("DISCARD", _) => return discard(s),
        ("MULTI", _) => {
            return s.out.error(ClientError::Exact(
                "ERR MULTI calls can not be nested".into(),
            ));
        }
        ("WATCH", _) => {
            return s.out.error(ClientError::Exact(
                "ERR WATCH inside MULTI is not allowed".into(),
            ));
        }
        ("PING" | "ECHO", _)
        | (_, Kind::Keyed | Kind::Split(_) | Kind::Script | Kind::Blocking(_)) => {}
        ("UNWATCH", _) => {}
        _ => {
            let name = cmd.name;
            return refuse(
                s,
                ClientError::Refused(
                    format!("'{name}' cannot run inside a transaction through the proxy").into(),
                ),
            );
        }
    }
    let mut keys: Vec<usize> = cmd.key_positions(req.argc()).collect();
    keys.extend(cmd.movable_keys(&req));
    if cmd.kind == Kind::Script {
        let declared = crate::protocol::resp::parse_int(req.arg(2))
            .unwrap_or(0)
            .max(0) as usize;
        keys.extend((3..3 + declared).take_while(|&i| i < req.argc()));
    }
    for pos in keys {
        let Some(owner) = state.shard_for(req.arg(pos)) else {
            return refuse(s, ClientError::NoServer);
        };
        let owner = &state.shards[owner].name;
        match &s.fe.tx.shard {
            Some(pinned) if pinned != owner => {
                let name = cmd.name.to_ascii_lowercase();
                return refuse(s, ClientError::CrossShardTransaction(name));
            }
            _ => s.fe.tx.shard = Some(owner.clone()),
        }
    }
    if let Some(queued) = &mut s.fe.tx.queued {
        queued.push(req.frame().clone());
    }
    s.out.ready(Bytes::from_static(b"+QUEUED\r\n"));
}

/// WATCH: on a connection reserved on the keys' shard, kept until the transaction ends.
fn watch(s: &mut RespSession, state: &PoolState, cmd: &Command, req: &Request) {
    let keys = cmd.key_positions(req.argc());
    let shard = match shard_of_keys(state, cmd, keys, req) {
        Ok(shard) => shard,
        Err(e) => return s.out.error(e),
    };
    let shard = &state.shards[shard];
    if s.fe
        .tx
        .shard
        .as_ref()
        .is_some_and(|pinned| *pinned != shard.name)
    {
        return s.out.error(ClientError::CrossShardWatch);
    }
    s.fe.tx.shard = Some(shard.name.clone());
    let resp3 = s.client().resp3;
    let (node, conn) = match s.fe.tx.watching.take() {
        Some(held) => held,
        None => {
            let master = shard.master().clone();
            let conn = master.reserve(s.worker, resp3);
            (master, conn)
        }
    };
    let seq = s.out.next_seq();
    conn.send(
        job(s, req.frame().clone(), seq, 0),
        Some(s.pool.config.timeout),
    );
    s.out.forwarded();
    s.fe.tx.watching = Some((node, conn));
}

/// EXEC: the queued commands between MULTI and EXEC, in one write on the reserved connection;
/// the client gets EXEC's reply.
fn exec(s: &mut RespSession, state: &PoolState) {
    let tx = std::mem::take(&mut s.fe.tx);
    if tx.aborted {
        // Dropping a WATCH connection closes it, which unwatches.
        return s.out.error(ClientError::Exact(EXECABORT.into()));
    }
    let held = match tx.watching {
        Some(held) => held,
        None => {
            let shard = match &tx.shard {
                Some(name) => state.shard_named(name),
                None => state.shard_for(b"").map(|i| &state.shards[i]),
            };
            let Some(shard) = shard else {
                return s.out.error(ClientError::NoServer);
            };
            let master = shard.master().clone();
            let conn = master.reserve(s.worker, s.client().resp3);
            (master, conn)
        }
    };
    let mut requests = vec![command(b"MULTI")];
    requests.extend(tx.queued.unwrap_or_default());
    requests.push(command(b"EXEC"));
    send_on(s, held, requests);
}

/// DISCARD: the queue is dropped; a WATCH ends with an UNWATCH, whose reply is DISCARD's.
fn discard(s: &mut RespSession) {
    let tx = std::mem::take(&mut s.fe.tx);
    match tx.watching {
        Some(held) => send_on(s, held, vec![command(b"UNWATCH")]),
        None => s.out.ready(Bytes::from_static(b"+OK\r\n")),
    }
}

/// Sends `requests` on `conn` (to `node`, a shard's master) as the parts of the next reply,
/// which is the last part's, and gives the connection back once that reply is written.
fn send_on(s: &mut RespSession, (node, conn): (Arc<Node>, Reserved), requests: Vec<Bytes>) {
    let seq = s.out.next_seq();
    let parts = requests.len();
    for (part, payload) in requests.into_iter().enumerate() {
        conn.send(job(s, payload, seq, part), Some(s.pool.config.timeout));
    }
    s.out.gathering(Gather::last(parts));
    s.held.push(Held {
        node,
        conn,
        until: Some(seq),
    });
}

fn job(s: &RespSession, payload: Bytes, seq: u64, part: usize) -> Job {
    Job {
        payload,
        kind: ReplyKind::Resp,
        reply_to: s.out.reply_to_seq(seq, part),
        timeout: None,
    }
}

fn command(name: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    encode::command(&mut b, [name].into_iter());
    b.freeze()
}
