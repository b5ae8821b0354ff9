//! Backend nodes: a few multiplexed, pipelined connections per node carrying every client's
//! requests, replies matched first-in first-out, plus a health checker.

mod broadcast;
mod connection;
mod error;
#[cfg(test)]
mod fake;
mod health;
mod inbox;
mod opening;
mod report;
mod sentinel;
mod subscriber;
mod tracking;

pub use error::{BackendError, ConnectError, Failure};
use inbox::Delivery;
pub use inbox::{Completion, Inbox, Mailbox, ReplyTo, Token};
pub use report::{Health, NodeEvent, Role, Said};
pub use sentinel::{Named, SentinelClient};
pub use subscriber::{Subscriber, Topic, notice_after};
use tracking::Tracking;
pub use tracking::{Invalidations, Source};

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::{Address, PoolConfig, Protocol};
use crate::metrics::ServerMetrics;
use crate::net::TlsConnector;
use crate::protocol::ReplyKind;
use crate::protocol::resp::encode;
use crate::workers::Workers;

/// One request for a node: bytes to send as they are, how its reply is framed, and where the
/// reply goes.
#[derive(Debug)]
pub struct Job {
    pub payload: Bytes,
    pub kind: ReplyKind,
    pub reply_to: ReplyTo,
    /// How long a blocking command may wait, on top of the pool's timeout; `None` for any
    /// other request.
    pub timeout: Option<Duration>,
}

/// A node's identity for as long as the process runs, whatever its place in a topology.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(u64);

impl NodeId {
    /// A new identity, never given before.
    pub(crate) fn next() -> NodeId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NodeId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// What a node's connection and health tasks share with the node.
#[derive(Debug)]
pub(crate) struct NodeShared {
    id: NodeId,
    /// `shard-a (127.0.0.1:7000)`: how errors and logs name the node.
    label: Arc<str>,
    /// The node's own verdict (a [`Health`]), to report changes only; the pool's snapshot is
    /// what routes.
    health: AtomicU8,
    failures: AtomicU32,
    metrics: ServerMetrics,
    events: UnboundedSender<NodeEvent>,
    /// Failures in a row that are reported as [`NodeEvent::FailedRepeatedly`].
    failure_limit: Option<u32>,
    /// A node of a replicated memcache shard: after any failure it may have missed writes, so
    /// it is taken out of service at once and emptied (`flush_all`) before it serves again.
    flush_when_back: bool,
    /// Failed since its last flush.
    stale: AtomicBool,
    /// Wakes the health checker before its next tick (a write answered READONLY).
    check_now: Notify,
    /// A master this node is to follow (`REPLICAOF`), sent by the health checker.
    attach_to: Mutex<Option<Address>>,
    /// Counts the times writes moved away from this node (see [`Node::replaced`]); each of its
    /// connections fails what it has in flight when the count moves, woken by `replaced_now`.
    replacements: AtomicU64,
    replaced_now: Notify,
    /// Key tracking for the pool's near cache, if it has one.
    tracking: Option<Tracking>,
}

impl NodeShared {
    /// A node's state before anything is known of it, reporting to `events`.
    fn new(label: Arc<str>, metrics: ServerMetrics, events: UnboundedSender<NodeEvent>) -> Self {
        NodeShared {
            id: NodeId::next(),
            label,
            // Not known yet: the first check's verdict, up or down, is reported either way.
            health: AtomicU8::new(Health::Suspect as u8),
            failures: AtomicU32::new(0),
            metrics,
            events,
            failure_limit: None,
            flush_when_back: false,
            stale: AtomicBool::new(false),
            check_now: Notify::new(),
            attach_to: Mutex::new(None),
            replacements: AtomicU64::new(0),
            replaced_now: Notify::new(),
            tracking: None,
        }
    }

    fn error(&self, failure: Failure) -> BackendError {
        BackendError {
            node: self.label.clone(),
            failure,
        }
    }

    /// A connection attempt, request or health check failed: an Up node becomes Suspect.
    fn record_failure(&self, why: &dyn fmt::Display) {
        if self.flush_when_back && !self.stale.swap(true, Ordering::Relaxed) {
            tracing::warn!(node = %self.label, "out of service until it is back and flushed: it may miss writes");
            self.set_health(Health::Down, why);
        } else if self.health() == Health::Up {
            self.set_health(Health::Suspect, why);
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(limit) = self.failure_limit
            && n >= limit
        {
            self.failures.store(0, Ordering::Relaxed);
            let _ = self.events.send(NodeEvent::FailedRepeatedly(self.id));
        }
    }

    fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn report(&self, said: Said) {
        let _ = self.events.send(NodeEvent::Said {
            node: self.id,
            said,
        });
    }

    fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    fn set_health(&self, health: Health, why: &dyn fmt::Display) {
        let was = Health::from_u8(self.health.swap(health as u8, Ordering::Relaxed));
        if was == health {
            return;
        }
        self.metrics.up.set(i64::from(health != Health::Down));
        self.metrics.state.set(match health {
            Health::Up => 2,
            Health::Suspect => 1,
            Health::Down => 0,
            Health::Busy => 3,
        });
        match health {
            Health::Up => {
                tracing::info!(node = %self.label, "backend is up (was {})", was.as_str())
            }
            _ => tracing::warn!(node = %self.label, "backend is {}: {why}", health.as_str()),
        }
        let _ = self.events.send(NodeEvent::Health {
            node: self.id,
            health,
            reason: why.to_string().into(),
        });
    }
}

/// How a node's connections are opened.
#[derive(Debug)]
struct ConnSettings {
    addr: Address,
    protocol: Protocol,
    timeout: Duration,
    /// AUTH / SELECT / HELLO sent on every new connection, and how many replies they produce.
    handshake: Bytes,
    handshake_replies: usize,
    preconnect: bool,
    max_reply_depth: usize,
    tls: Option<TlsConnector>,
}

impl ConnSettings {
    /// How `pool`'s connections of `profile` to `addr` are opened.
    fn new(pool: &PoolConfig, addr: &Address, profile: Profile) -> ConnSettings {
        let (handshake, handshake_replies) = opening::handshake(pool, profile);
        ConnSettings {
            addr: addr.clone(),
            protocol: pool.protocol,
            timeout: pool.timeout,
            handshake,
            handshake_replies,
            preconnect: pool.preconnect && profile == Profile::default(),
            max_reply_depth: pool.max_reply_depth,
            tls: pool.backend_tls.as_ref().map(|t| t.connector(&addr.host)),
        }
    }
}

/// Sends one command to `addr` on a connection of its own (with the pool's backend auth and
/// TLS) and returns its reply, all within the pool's timeout: for what the proxy asks a node
/// outside any client's request (a cluster's slot map).
pub async fn ask_node(
    pool: &PoolConfig,
    addr: &Address,
    args: &[&str],
) -> Result<BytesMut, Failure> {
    let settings = ConnSettings::new(pool, addr, Profile::default());
    let asked = async {
        let stream = opening::connect(&settings)
            .await
            .map_err(Failure::Unreachable)?;
        let mut request = BytesMut::new();
        encode::command(&mut request, args.iter().map(|a| a.as_bytes()));
        stream.write_all(&request).await?;
        let mut buf = BytesMut::new();
        opening::read_reply(&stream, &mut buf, &settings, ReplyKind::Resp).await
    };
    within(pool.timeout, asked).await
}

/// What a backend connection carries for the clients whose requests it takes: their database
/// (SELECT) and protocol level (HELLO 3). Requests go on connections of their client's profile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// The client's database, 0 to the pool's `databases` - 1 (the pool's `db` is added).
    pub db: u16,
    pub resp3: bool,
}

impl Profile {
    /// Where the profile's connections and settings are kept (see [`Node::lanes`]).
    fn lane(self) -> usize {
        usize::from(self.db) * 2 + usize::from(self.resp3)
    }
}

/// One worker's connections to a node, by profile lane. Database 0's are started with the
/// node; another database's when a client first uses it.
struct WorkerConns {
    shared: Vec<OnceLock<Vec<UnboundedSender<Job>>>>,
    /// Reserved connections given back, ready for the next client of the same profile that
    /// needs one. Only this worker's sessions use them.
    idle: Vec<Mutex<Vec<Reserved>>>,
}

/// Reserved connections kept open per node, worker and protocol level once given back.
const MAX_IDLE_RESERVED: usize = 16;

/// A connection to one node that serves one client alone (a blocking command, a transaction)
/// until it is given back with [`Node::give_back`]. Dropped instead, it closes at once, even
/// with a request in flight: a blocked command is not left holding it.
#[derive(Debug)]
pub struct Reserved {
    tx: UnboundedSender<Job>,
    lane: usize,
    /// The server's id of the connection (CLIENT ID), once connected.
    id: Arc<AtomicU64>,
}

impl Reserved {
    /// Queues a request on the connection, bounded by the pool's timeout.
    pub fn send(&self, job: Job) {
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
            job.reply_to.send(Err(BackendError {
                node: "reserved connection".into(),
                failure: Failure::Closed,
            }));
        }
    }
}

impl Reserved {
    /// Queues a blocking command that may wait `wait` (`None`: without limit) before its
    /// reply, and the pool's timeout after that.
    pub fn send_blocking(&self, mut job: Job, wait: Option<Duration>) {
        job.timeout = Some(wait.unwrap_or(NO_TIMEOUT));
        self.send(job);
    }

    /// The server's id of the connection (CLIENT ID; 0 until it is connected).
    pub fn server_id(&self) -> &Arc<AtomicU64> {
        &self.id
    }
}

/// "No timeout": far enough ahead to never fire, near enough not to overflow an `Instant`.
const NO_TIMEOUT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What a node is in its pool.
pub struct NodeSpec<'a> {
    pub server_name: &'a str,
    pub addr: Address,
    pub metrics: ServerMetrics,
    /// Where the node reports its health.
    pub events: UnboundedSender<NodeEvent>,
    /// See [`NodeEvent::FailedRepeatedly`].
    pub failure_limit: Option<u32>,
    /// See [`NodeShared::flush_when_back`].
    pub flush_when_back: bool,
    /// The pool's near cache, which the node's invalidations go to.
    pub invalidations: Option<Arc<dyn Invalidations>>,
}

/// A backend server: each worker's connections to it, and its shared state.
pub struct Node {
    pub addr: Address,
    shared: Arc<NodeShared>,
    per_worker: Vec<WorkerConns>,
    /// How new connections are opened, by profile lane: database 0 with RESP2 (or memcache)
    /// at 0, with RESP3 at 1, database 1 at 2 and 3…
    settings: Vec<Arc<ConnSettings>>,
    /// Shared connections per worker and lane.
    connections: usize,
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
    /// Starts the node's connection tasks on every worker (connecting now only with
    /// `preconnect`) and its health checker on the current runtime.
    pub fn start(workers: &Workers, pool: &PoolConfig, spec: NodeSpec<'_>) -> Node {
        let NodeSpec {
            server_name,
            addr,
            metrics,
            events,
            failure_limit,
            flush_when_back,
            invalidations,
        } = spec;
        let label = format!("{server_name} ({addr})").into();
        let shared = Arc::new(NodeShared {
            failure_limit,
            flush_when_back,
            tracking: invalidations.clone().map(Tracking::new),
            ..NodeShared::new(label, metrics, events)
        });
        let settings: Vec<Arc<ConnSettings>> = (0..pool.redis.databases)
            .flat_map(|db| {
                [false, true]
                    .map(|resp3| Arc::new(ConnSettings::new(pool, &addr, Profile { db, resp3 })))
            })
            .collect();
        let per_worker = (0..workers.len())
            .map(|w| {
                let worker = workers.handle(w);
                WorkerConns {
                    shared: (0..settings.len())
                        .map(|lane| {
                            // memcache has one protocol level: no RESP3 connections.
                            let at_start =
                                lane == 0 || (lane == 1 && pool.protocol == Protocol::Redis);
                            let started = at_start.then(|| {
                                spawn_set(&shared, &settings[lane], pool.server_connections, worker)
                            });
                            started.map_or_else(OnceLock::new, OnceLock::from)
                        })
                        .collect(),
                    idle: settings.iter().map(|_| Mutex::default()).collect(),
                }
            })
            .collect();
        let stop = CancellationToken::new();
        if let Some(sink) = invalidations {
            let resp3 = settings[Profile { db: 0, resp3: true }.lane()].clone();
            tokio::spawn(broadcast::follow(
                shared.clone(),
                resp3.clone(),
                sink.clone(),
                stop.clone(),
            ));
            tokio::spawn(tracking::listen(shared.clone(), resp3, sink, stop.clone()));
        }
        tokio::spawn(health::run(
            shared.clone(),
            settings[0].clone(),
            pool.health_check.clone(),
            stop.clone(),
        ));
        Node {
            addr,
            shared,
            per_worker,
            settings,
            connections: pool.server_connections,
            _stop_health: stop.drop_guard(),
        }
    }

    pub fn label(&self) -> &Arc<str> {
        &self.shared.label
    }

    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// Makes the node a replica of `master` (`REPLICAOF`), at once.
    pub fn replicate_from(&self, master: &Address) {
        *self
            .shared
            .attach_to
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(master.clone());
        self.check_now();
    }

    /// Asks the node what it is now, on a connection of its own (a failover's fresh look).
    pub async fn said_now(&self) -> Result<Said, Failure> {
        let settings = &self.settings[0];
        within(settings.timeout, health::Asker::default().said(settings)).await
    }

    /// Makes the node a master (`REPLICAOF NO ONE`), now.
    pub async fn promote(&self) -> Result<(), Failure> {
        let settings = &self.settings[0];
        let mut asker = health::Asker::default();
        within(settings.timeout, asker.replicate_from(settings, None)).await
    }

    /// Writes no longer go to this node (another was made master in its place): every
    /// request in flight on its connections fails now with [`Failure::Replaced`], and replies
    /// that come later are dropped. A stalled master that resumes would otherwise acknowledge
    /// writes sent to it before it was replaced, which its resync then loses.
    pub fn replaced(&self) {
        if let Some(tracking) = &self.shared.tracking {
            tracking.lost();
        }
        self.shared.replacements.fetch_add(1, Ordering::Relaxed);
        self.shared.replaced_now.notify_waiters();
    }

    /// The node's near-cache generation, if its reads can be tracked now: a reply kept from a
    /// read sent now is served while [`Node::cache_generation`] stays the same.
    pub fn tracking_ready(&self) -> Option<u64> {
        self.shared.tracking.as_ref()?.ready()
    }

    /// Whether the node's tracking listener hears every key's changes (BCAST), as it changes;
    /// `None` without a near cache.
    pub fn broadcasting(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        self.shared.tracking.as_ref().map(Tracking::broadcasting)
    }

    /// See [`Node::tracking_ready`].
    pub fn cache_generation(&self) -> u64 {
        self.shared
            .tracking
            .as_ref()
            .map_or(0, Tracking::generation)
    }

    /// Runs a health check (with `INFO replication`) now rather than at the next tick.
    pub fn check_now(&self) {
        self.shared.check_now.notify_one();
    }

    /// Counts the node's shard leaving the ring on its account.
    pub fn count_ejection(&self) {
        self.shared.metrics.ejections.inc();
    }

    /// A connection of `worker`'s to the node for one client alone: an idle one given back
    /// earlier, or a new one. Must be called on that worker's runtime.
    pub fn reserve(&self, worker: usize, profile: Profile) -> Reserved {
        let lane = profile.lane();
        let idle = &self.per_worker[worker].idle[lane];
        let reused = {
            let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
            std::iter::from_fn(|| idle.pop()).find(|r| !r.tx.is_closed())
        };
        reused.unwrap_or_else(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let settings = self.settings[lane].clone();
            let id = Arc::new(AtomicU64::new(0));
            let shared = self.shared.clone();
            tokio::spawn(connection::run(shared, settings, rx, Some(id.clone())));
            Reserved { tx, lane, id }
        })
    }

    /// A subscriber connection for one client, delivering its messages to `inbox` as
    /// [`Token::Push`] completions (channels are not in a database). Must be called on the
    /// client's worker runtime.
    pub fn subscriber(&self, resp3: bool, inbox: Arc<dyn Mailbox>) -> Subscriber {
        let settings = self.settings[Profile { db: 0, resp3 }.lane()].clone();
        Subscriber::start(self.shared.clone(), settings, inbox)
    }

    /// Takes back a reserved connection whose client is done with it and left it as it found
    /// it (nothing in flight, no WATCH, not subscribed), for the next client to reserve.
    pub fn give_back(&self, worker: usize, reserved: Reserved) {
        let idle = &self.per_worker[worker].idle[reserved.lane];
        let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_RESERVED && !reserved.tx.is_closed() {
            idle.push(reserved);
        }
    }

    /// Queues a request on one of the worker's connections of `profile` to the node (started
    /// now if it is the profile's first request); `spread` (a session id, say) picks which, so
    /// a session's requests stay in order on one connection. Must be called on that worker's
    /// runtime.
    pub fn send(&self, job: Job, worker: usize, profile: Profile, spread: usize) {
        let lane = profile.lane();
        let conns = self.per_worker[worker].shared[lane].get_or_init(|| {
            let here = tokio::runtime::Handle::current();
            spawn_set(&self.shared, &self.settings[lane], self.connections, &here)
        });
        if let Err(mpsc::error::SendError(job)) = conns[spread % conns.len()].send(job) {
            job.reply_to.send(Err(self.shared.error(Failure::Closed)));
        }
    }
}

/// Starts `count` shared connection tasks to a node on `runtime`; their senders.
fn spawn_set(
    shared: &Arc<NodeShared>,
    settings: &Arc<ConnSettings>,
    count: usize,
    runtime: &tokio::runtime::Handle,
) -> Vec<UnboundedSender<Job>> {
    (0..count)
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            runtime.spawn(connection::run(shared.clone(), settings.clone(), rx, None));
            tx
        })
        .collect()
}

/// The scalar elements of a small RESP reply, nested arrays flattened, in order: every element
/// is a line of its own once the `*` and `$` headers are skipped (simple values only: a bulk
/// string holding CRLF would be split). `:` prefixes are dropped.
fn flat_fields(reply: &[u8]) -> impl Iterator<Item = &[u8]> {
    reply
        .split(|&b| b == b'\n')
        .map(<[u8]>::trim_ascii_end)
        .filter(|l| !l.is_empty() && !l.starts_with(b"*") && !l.starts_with(b"$"))
        .map(|l| l.strip_prefix(b":").unwrap_or(l))
}

/// `work`, or a timeout failure when it takes longer than `limit`.
async fn within<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(Failure::Timeout(limit)))
}
