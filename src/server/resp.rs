//! The Redis side of a session: RESP requests routed by the command table, split by shard
//! where their keys are, or answered by the proxy.

use bytes::{Bytes, BytesMut};

use super::error::ClientError;
use super::keyspace;
use super::local::{self, ClientState};
use super::merge::Gather;
use super::pubsub::{self, PubSub};
use super::session::{Frontend, Held, Outbox, Session, parts_by_shard};
use super::transaction::{self, Transaction};
use std::time::Duration;

use crate::backend::Job;
use crate::command::{self, BlockTimeout, Command, Kind, Movable};
use crate::protocol::ReplyKind;
use crate::protocol::resp::{Request, RequestParser, encode};
use crate::topology::Pool;
use crate::topology::PoolState;

/// A Redis client's parser and what the proxy remembers about it.
pub(super) struct Resp {
    parser: RequestParser,
    client: ClientState,
    pub(super) tx: Transaction,
    pub(super) pubsub: PubSub,
}

pub(super) type RespSession = Session<Resp>;

impl Frontend for Resp {
    fn new(pool: &Pool) -> Resp {
        Resp {
            parser: RequestParser::new(pool.config.limits),
            client: ClientState::new(pool.config.client_users.is_empty()),
            tx: Transaction::default(),
            pubsub: PubSub::default(),
        }
    }

    fn handle_input(s: &mut RespSession, buf: &mut BytesMut) -> bool {
        s.handle_input(buf)
    }

    fn is_mid_request(&self, buf: &BytesMut) -> bool {
        self.parser.is_mid_request(buf)
    }

    fn wants(&self, message: &[u8]) -> bool {
        self.pubsub.wants(message)
    }
}

impl RespSession {
    /// Parses and dispatches every complete request in `buf`. Returns true when the session must
    /// close after the queued replies (QUIT, malformed input).
    fn handle_input(&mut self, buf: &mut BytesMut) -> bool {
        let state = self.pool.state();
        let mut count = 0;
        let closing = loop {
            match self.fe.parser.parse(buf) {
                Ok(Some(req)) => {
                    count += 1;
                    if self.dispatch(&state, req) {
                        break true;
                    }
                }
                Ok(None) => break false,
                Err(e) => {
                    self.out.error(ClientError::Protocol(e.to_string()));
                    break true;
                }
            }
        };
        self.pool.metrics.requests.inc_by(count);
        closing
    }

    /// Routes one request. Returns true for QUIT.
    fn dispatch(&mut self, state: &PoolState, req: Request) -> bool {
        let name = req.arg(0);
        if self.fe.tx.in_multi() && !name.eq_ignore_ascii_case(b"QUIT") {
            transaction::queue(self, state, command::lookup(name), req);
            return false;
        }
        let Some(cmd) = command::lookup(name) else {
            if !self.fe.client.authenticated {
                self.out.error(ClientError::NoAuth);
            } else {
                let shown = String::from_utf8_lossy(name);
                match command::unsupported_reason(name) {
                    Some(why) => self.out.error(ClientError::Unsupported {
                        command: shown.to_string(),
                        why: why.into(),
                    }),
                    None => self
                        .out
                        .error(ClientError::UnknownCommand(shown.to_string())),
                }
            }
            return false;
        };
        if !cmd.arity_ok(req.argc()) {
            self.out
                .error(ClientError::WrongArity(cmd.name.to_ascii_lowercase()));
            return false;
        }
        if self.fe.pubsub.active()
            && !self.fe.client.resp3
            && !pubsub::allowed_while_subscribed(cmd.name)
        {
            self.out.error(ClientError::Exact(format!(
                "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
                cmd.name.to_ascii_lowercase()
            ).into()));
            return false;
        }
        if cmd.kind == Kind::Local {
            return local::run(self, state, cmd, &req);
        }
        if !self.fe.client.authenticated {
            self.out.error(ClientError::NoAuth);
            return false;
        }
        match cmd.kind {
            Kind::Keyed => self.forward_keyed(state, cmd, req),
            Kind::Split(merge) => self.split(state, cmd, merge, req),
            Kind::Script => keyspace::script(self, state, cmd, &req),
            Kind::Keyspace(fanout) => keyspace::run(self, state, fanout, &req),
            Kind::Transaction => transaction::run(self, state, cmd, req),
            Kind::PubSub => pubsub::run(self, state, cmd, req),
            Kind::Blocking(at) => {
                let timeout = match at {
                    BlockTimeout::Last => req.arg(req.argc() - 1),
                    BlockTimeout::First => req.arg(1),
                };
                let timeout = wait_limit(timeout, 1.0);
                self.forward_blocking(state, cmd, req, timeout);
            }
            Kind::Local => {}
        }
        false
    }

    fn forward_keyed(&mut self, state: &PoolState, cmd: &Command, req: Request) {
        if let Movable::Streams { from } = cmd.movable
            && let Some(at) = (from..req.argc())
                .take_while(|&i| !req.arg(i).eq_ignore_ascii_case(b"STREAMS"))
                .find(|&i| req.arg(i).eq_ignore_ascii_case(b"BLOCK"))
        {
            // XREAD … BLOCK milliseconds.
            let timeout = wait_limit(req.arg((at + 1).min(req.argc() - 1)), 0.001);
            return self.forward_blocking(state, cmd, req, timeout);
        }
        let movable = cmd.movable_keys(&req);
        let keys = cmd.key_positions(req.argc()).chain(movable);
        if let Some(s) = self.shard_of_keys(state, cmd, keys, &req) {
            self.send_resp(state, s, cmd.write, req.frame().clone(), 0);
            self.out.forwarded();
        }
    }

    /// A command that may wait on its backend: on a connection reserved for this client until
    /// the reply comes, so no other client waits behind it; waiting as long as the command's
    /// own timeout (`wait`; `None`: forever) plus the pool's.
    fn forward_blocking(
        &mut self,
        state: &PoolState,
        cmd: &Command,
        req: Request,
        wait: Option<Duration>,
    ) {
        let movable = cmd.movable_keys(&req);
        let keys = cmd.key_positions(req.argc()).chain(movable);
        let Some(shard) = self.shard_of_keys(state, cmd, keys, &req) else {
            return;
        };
        let resp3 = self.fe.client.resp3;
        let shard = &state.shards[shard];
        let node = shard.nodes
            [shard.node_for(cmd.write, self.pool.config.read_from, self.id as usize)]
        .clone();
        let conn = node.reserve(self.worker, resp3);
        let seq = self.out.next_seq();
        let job = Job {
            payload: req.frame().clone(),
            kind: ReplyKind::Resp,
            reply_to: self.out.reply_to(0),
            timeout: None,
        };
        conn.send(job, wait.map(|w| w + self.pool.config.timeout));
        self.out.forwarded();
        self.held.push(Held {
            node,
            conn,
            until: Some(seq),
        });
    }

    /// The one shard of the keys at `positions` (any shard when there are none), or `None`
    /// after queueing the error: the keys span shards, or no server is left.
    pub(super) fn shard_of_keys(
        &mut self,
        state: &PoolState,
        cmd: &Command,
        positions: impl Iterator<Item = usize>,
        req: &Request,
    ) -> Option<usize> {
        let mut shard = None;
        let mut positions = positions.peekable();
        if positions.peek().is_none() {
            shard = state.shard_for(b"");
        }
        for pos in positions {
            let s = state.shard_for(req.arg(pos));
            if shard.is_some() && s != shard {
                self.out
                    .error(ClientError::CrossShard(cmd.name.to_ascii_lowercase()));
                return None;
            }
            shard = s;
        }
        if shard.is_none() {
            self.out.error(ClientError::NoServer);
        }
        shard
    }

    fn split(&mut self, state: &PoolState, cmd: &Command, merge: command::Merge, req: Request) {
        let step = cmd.key_step;
        let keys = cmd.key_positions(req.argc()).map(|pos| req.arg(pos));
        let Some((key_parts, part_shards)) = parts_by_shard(state, keys) else {
            return self.out.error(ClientError::NoServer);
        };
        if let [s] = part_shards[..] {
            self.send_resp(state, s, cmd.write, req.frame().clone(), 0);
            self.out.forwarded();
            return;
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
        for (part, (&s, &end)) in part_shards.iter().zip(&ends).enumerate() {
            self.send_resp(state, s, cmd.write, payloads.slice(start..end), part);
            start = end;
        }
        let gather = Gather::split(
            merge,
            part_shards.len(),
            key_parts,
            self.pool.config.max_reply_depth,
        );
        self.out.gathering(gather);
    }

    fn send_resp(&self, state: &PoolState, s: usize, write: bool, payload: Bytes, part: usize) {
        self.send(
            state,
            s,
            write,
            (payload, ReplyKind::Resp),
            part,
            self.fe.client.resp3,
        );
    }

    pub(super) fn client(&mut self) -> &mut ClientState {
        &mut self.fe.client
    }

    pub(super) fn out(&mut self) -> &mut Outbox {
        &mut self.out
    }

    /// Sends the same request to every shard's master and gathers the replies with `gather`.
    pub(super) fn broadcast(&mut self, state: &PoolState, payload: Bytes, gather: Gather) {
        for s in 0..state.shards.len() {
            self.send(
                state,
                s,
                true,
                (payload.clone(), ReplyKind::Resp),
                s,
                self.fe.client.resp3,
            );
        }
        self.out.gathering(gather);
    }

    /// Sends the same request to every node, replicas included, and gathers the replies.
    pub(super) fn broadcast_nodes(&mut self, state: &PoolState, payload: Bytes, gather: Gather) {
        let nodes = state.nodes();
        for (part, node) in nodes.enumerate() {
            self.send_to(
                node,
                (payload.clone(), ReplyKind::Resp),
                part,
                self.fe.client.resp3,
            );
        }
        self.out.gathering(gather);
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
