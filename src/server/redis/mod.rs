//! The Redis side of a session: RESP requests routed by the command table, split by shard
//! where their keys are, or answered by the proxy.

mod keyspace;
mod local;
mod pubsub;
mod route;
mod transaction;

use bytes::BytesMut;

use crate::server::error::ClientError;
use crate::server::outbox::Outbox;
use crate::server::session::{Frontend, Session};
use local::ClientState;
use pubsub::PubSub;
use transaction::Transaction;

use crate::command::{self, Kind};
use crate::protocol::resp::{Request, RequestParser};
use crate::topology::{Pool, PoolState};

/// A Redis client's parser and what the proxy remembers about it.
pub(super) struct Resp {
    parser: RequestParser,
    client: ClientState,
    tx: Transaction,
    pubsub: PubSub,
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

    fn resp3(&self) -> bool {
        self.client.resp3
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
        let config = &self.pool.config;
        let plan = match cmd.kind {
            Kind::Keyed => route::keyed(state, cmd, &req),
            Kind::Split(merge) => route::split(state, cmd, merge, &req, config.max_reply_depth),
            Kind::Script => route::script(state, cmd, &req),
            Kind::Keyspace(fanout) => {
                keyspace::route(state, config, &self.pool.scripts, fanout, &req)
            }
            Kind::Blocking(at) => route::blocking(state, cmd, &req, at),
            Kind::Transaction => {
                transaction::run(self, state, cmd, req);
                return false;
            }
            Kind::PubSub => {
                pubsub::run(self, state, cmd, req);
                return false;
            }
            Kind::Local => return false,
        };
        self.execute(state, plan);
        false
    }

    fn client(&mut self) -> &mut ClientState {
        &mut self.fe.client
    }

    pub(super) fn out(&mut self) -> &mut Outbox {
        &mut self.out
    }
}
