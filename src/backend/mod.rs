//! Backend nodes: a few multiplexed, pipelined connections per node carrying every client's
//! requests, replies matched first-in first-out, plus a health checker.

mod connection;
mod health;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use thiserror::Error;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{Address, PoolConfig};
use crate::keyword::keywords;
use crate::metrics::ServerMetrics;
use crate::protocol::resp::encode;

/// Where a backend's reply goes: the requesting session's channel, with the session's token.
#[derive(Debug)]
pub struct ReplyTo {
    pub tx: UnboundedSender<Completion>,
    pub token: u64,
}

impl ReplyTo {
    fn send(self, result: Result<Bytes, BackendError>) {
        // A session that has gone away no longer needs the reply.
        let _ = self.tx.send(Completion {
            token: self.token,
            result,
        });
    }
}

/// One request for a node: bytes to send as they are, and where the reply goes.
#[derive(Debug)]
pub struct Job {
    pub payload: Bytes,
    pub reply_to: ReplyTo,
}

/// A backend's reply (one complete RESP value) or why there is none.
#[derive(Debug)]
pub struct Completion {
    pub token: u64,
    pub result: Result<Bytes, BackendError>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    Timeout(Duration),
    /// Lost with the connection that another request's timeout closed.
    Aborted,
    Unreachable(String),
    Closed,
    BadReply(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout(d) => write!(f, "timed out after {} ms", d.as_millis()),
            Failure::Aborted => f.write_str("connection reset after an earlier request timed out"),
            Failure::Unreachable(why) => write!(f, "unreachable: {why}"),
            Failure::Closed => f.write_str("connection closed"),
            Failure::BadReply(why) => write!(f, "sent a malformed reply: {why}"),
        }
    }
}

/// A request the backend did not answer; the client gets an error reply naming the node.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("backend {node} {failure}")]
pub struct BackendError {
    pub node: Arc<str>,
    pub failure: Failure,
}

keywords! {
    pub enum Role ("role") {
        Master = "master",
        Replica = "replica",
    }
}

/// Called when a master fails `failure_limit` times in a row, to take its shard off the ring.
#[derive(Debug)]
pub struct EjectHook {
    pub tx: UnboundedSender<usize>,
    pub shard: usize,
    pub failure_limit: u32,
}

/// What a node's connection and health tasks share with the node.
#[derive(Debug)]
pub(crate) struct NodeShared {
    /// `shard-a (127.0.0.1:7000)`, or `shard-a (127.0.0.1:7100, replica)`: how errors and logs
    /// name the node.
    label: Arc<str>,
    up: AtomicBool,
    failures: AtomicU32,
    metrics: ServerMetrics,
    eject: Option<EjectHook>,
}

impl NodeShared {
    fn error(&self, failure: Failure) -> BackendError {
        BackendError {
            node: self.label.clone(),
            failure,
        }
    }

    /// A connection attempt, request or health check failed.
    fn record_failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(hook) = &self.eject
            && n >= hook.failure_limit
        {
            self.failures.store(0, Ordering::Relaxed);
            self.metrics.ejections.inc();
            let _ = hook.tx.send(hook.shard);
        }
    }

    fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.metrics.up.set(i64::from(up));
            if up {
                tracing::info!(node = %self.label, "backend is up");
            } else {
                tracing::warn!(node = %self.label, "backend is down");
            }
        }
    }
}

/// How a node's connections are opened.
#[derive(Debug)]
struct ConnSettings {
    addr: Address,
    timeout: Duration,
    /// AUTH / SELECT / HELLO sent on every new connection, and how many replies they produce.
    handshake: Bytes,
    handshake_replies: usize,
    preconnect: bool,
    max_reply_depth: usize,
}

/// A backend server: its connections (RESP2, and RESP3 for clients that said HELLO 3) and state.
pub struct Node {
    pub role: Role,
    pub addr: Address,
    shared: Arc<NodeShared>,
    resp2: Vec<UnboundedSender<Job>>,
    resp3: Vec<UnboundedSender<Job>>,
    _stop_health: DropGuard,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("label", &self.shared.label)
            .finish()
    }
}

impl Node {
    /// Starts the node's connection tasks (connecting now only with `preconnect`) and its health
    /// checker. Must run inside a Tokio runtime.
    pub fn start(
        pool: &PoolConfig,
        server_name: &str,
        role: Role,
        addr: Address,
        metrics: ServerMetrics,
        eject: Option<EjectHook>,
    ) -> Node {
        let label: Arc<str> = match role {
            Role::Master => format!("{server_name} ({addr})"),
            Role::Replica => format!("{server_name} ({addr}, replica)"),
        }
        .into();
        let shared = Arc::new(NodeShared {
            label,
            up: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            metrics,
            eject,
        });
        let settings = |resp3: bool| {
            let (handshake, handshake_replies) = handshake(pool, resp3);
            Arc::new(ConnSettings {
                addr: addr.clone(),
                timeout: pool.timeout,
                handshake,
                handshake_replies,
                preconnect: pool.preconnect && !resp3,
                max_reply_depth: pool.max_reply_depth,
            })
        };
        let spawn_set = |settings: Arc<ConnSettings>| {
            (0..pool.server_connections)
                .map(|_| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(connection::run(shared.clone(), settings.clone(), rx));
                    tx
                })
                .collect()
        };
        let resp2 = spawn_set(settings(false));
        let resp3 = spawn_set(settings(true));
        let stop = CancellationToken::new();
        tokio::spawn(health::run(
            shared.clone(),
            settings(false),
            pool.health_check.clone(),
            stop.clone(),
        ));
        Node {
            role,
            addr,
            shared,
            resp2,
            resp3,
            _stop_health: stop.drop_guard(),
        }
    }

    pub fn label(&self) -> &Arc<str> {
        &self.shared.label
    }

    /// Whether the last health checks passed.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Queues a request on one of the node's connections; `spread` (a session id, say) picks
    /// which, so a session's requests stay in order on one connection.
    pub fn send(&self, job: Job, resp3: bool, spread: usize) {
        let conns = if resp3 { &self.resp3 } else { &self.resp2 };
        if let Err(mpsc::error::SendError(job)) = conns[spread % conns.len()].send(job) {
            job.reply_to.send(Err(self.shared.error(Failure::Closed)));
        }
    }
}

/// The commands every new connection starts with, pre-encoded.
fn handshake(pool: &PoolConfig, resp3: bool) -> (Bytes, usize) {
    let mut buf = BytesMut::new();
    let mut replies = 0;
    if let Some(auth) = &pool.backend_auth {
        match &auth.username {
            Some(user) => encode::command(
                &mut buf,
                [&b"AUTH"[..], user.as_bytes(), auth.password.as_bytes()].into_iter(),
            ),
            None => encode::command(
                &mut buf,
                [&b"AUTH"[..], auth.password.as_bytes()].into_iter(),
            ),
        }
        replies += 1;
    }
    if pool.db != 0 {
        let db = pool.db.to_string();
        encode::command(&mut buf, [&b"SELECT"[..], db.as_bytes()].into_iter());
        replies += 1;
    }
    if resp3 {
        encode::command(&mut buf, [&b"HELLO"[..], b"3"].into_iter());
        replies += 1;
    }
    (buf.freeze(), replies)
}
