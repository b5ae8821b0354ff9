//! One client connection: parse pipelined requests, route each to its shard, and write replies
//! in request order, batched into one write per wakeup. The protocol is a [`Frontend`]: RESP
//! or memcache.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::error::ClientError;
use super::merge::Gather;
use crate::backend::{
    BackendError, Completion, Inbox, Job, Node, NodeId, ReplyTo, Reserved, Token,
};
use crate::config::Protocol;
use crate::net::Stream;
use crate::protocol::memcache::Verb;
use crate::protocol::{ReplyKind, resp::encode};
use crate::topology::{Pool, PoolState, Scripts};

/// A fresh read buffer's size: small, so a burst of idle clients costs little; it doubles
/// while reads fill it.
const FIRST_READ_CHUNK: usize = 1024;

/// A client protocol: how requests are parsed and routed.
pub(super) trait Frontend: Sized {
    fn new(pool: &Pool) -> Self;

    /// Parses and routes every complete request in `buf`. Returns true when the session must
    /// close after the queued replies (quit, malformed input).
    fn handle_input(s: &mut Session<Self>, buf: &mut BytesMut) -> bool;

    /// Whether `buf` (what is left unparsed) ends in the middle of a request.
    fn is_mid_request(&self, buf: &BytesMut) -> bool;

    /// Whether a Pub/Sub message is still for the client: one sent before its unsubscription
    /// reached the backend is not.
    fn wants(&self, _message: &[u8]) -> bool {
        true
    }
}

/// How a burst of requests ended.
#[derive(Debug, PartialEq, Eq)]
enum Burst {
    Idle,
    Close,
}

/// A request's place in the reply order.
enum Slot {
    Ready(Bytes),
    /// One backend reply is awaited and becomes the client's reply as it is.
    Forwarded,
    /// A memcache request sent with `noreply` or `q`: the reply is dropped when the command
    /// would not have shown it.
    Quiet(Verb),
    /// Several parts are awaited and merged.
    Gathering(Box<Gather>),
    /// A request the proxy may send again: its reply is awaited as part 0.
    Resend(Box<Resend>),
}

/// A request that is sent again when its first answer is not the last word.
pub(super) struct Resend {
    /// The shard's name: the request may be sent again after the pool's state changed.
    pub(super) shard: Arc<str>,
    /// The node it was last sent to.
    pub(super) node: NodeId,
    /// How many more times it may be sent.
    pub(super) retries_left: usize,
    pub(super) job: (Bytes, ReplyKind),
    pub(super) quiet: Option<Verb>,
    pub(super) when: ResendWhen,
    /// Sent on the node's RESP3 connections (a client that said HELLO 3).
    pub(super) resp3: bool,
}

pub(super) enum ResendWhen {
    /// The node failed: a read on a replicated memcache shard moves to the next node.
    NodeFails,
    /// The node answered NOSCRIPT to an EVALSHA of this SHA, and the pool knows the script:
    /// it is loaded there again first.
    NoScript { sha: Bytes },
}

/// A resend to make: the request's sequence number and, for a lost script, its SCRIPT LOAD.
struct Retry {
    seq: u64,
    reload: Option<Bytes>,
}

/// Replies owed to the client, in request order.
pub(super) struct Outbox {
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    inbox: Arc<Inbox>,
    buf: BytesMut,
    protocol: Protocol,
    pub(super) errors: u64,
    /// Requests to send again.
    retries: Vec<Retry>,
    /// The pool's scripts, consulted when a node has lost one.
    scripts: Scripts,
    /// Subscribed to Pub/Sub: messages may arrive at any time.
    pub(super) listening: bool,
}

impl Outbox {
    pub(super) fn next_seq(&self) -> u64 {
        self.first_seq + self.slots.len() as u64
    }

    /// Queues a reply the proxy made.
    pub(super) fn ready(&mut self, reply: Bytes) {
        self.slots.push_back(Slot::Ready(reply));
    }

    /// Queues an error reply.
    pub(super) fn error(&mut self, e: ClientError) {
        self.errors += 1;
        self.ready(e.render(self.protocol));
    }

    /// Queues the slot of a request sent to one backend.
    pub(super) fn forwarded(&mut self) {
        self.slots.push_back(Slot::Forwarded);
    }

    /// Queues the slot of a memcache request whose client asked for no reply.
    pub(super) fn quiet(&mut self, verb: Verb) {
        self.slots.push_back(Slot::Quiet(verb));
    }

    /// Queues the slot of a request that may be sent again.
    pub(super) fn resend(&mut self, resend: Resend) {
        self.slots.push_back(Slot::Resend(Box::new(resend)));
    }

    /// Queues the slot of a request whose parts `gather` merges.
    pub(super) fn gathering(&mut self, gather: Gather) {
        self.slots.push_back(Slot::Gathering(Box::new(gather)));
    }

    /// The inbox the session reads, for connections that deliver to it unasked (Pub/Sub).
    pub(super) fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    /// Where a backend sends the reply to part `part` of the next request.
    pub(super) fn reply_to(&self, part: usize) -> ReplyTo {
        self.reply_to_seq(self.next_seq(), part)
    }

    pub(super) fn reply_to_seq(&self, seq: u64, part: usize) -> ReplyTo {
        ReplyTo {
            inbox: self.inbox.clone(),
            token: Token::Reply { seq, part },
        }
    }

    /// Takes in the reply to part `part` of request `seq`.
    fn complete(&mut self, seq: u64, part: usize, c: Completion) {
        let Some(slot) = seq
            .checked_sub(self.first_seq)
            .and_then(|i| self.slots.get_mut(i as usize))
        else {
            return;
        };
        if let Slot::Resend(resend) = slot {
            if part != 0 {
                // The reply to a SCRIPT LOAD sent before the request again.
                return;
            }
            if let Some(retry) = retry(resend, &c.result, &self.scripts, seq) {
                self.retries.push(retry);
                return;
            }
        }
        let reply = match c.result {
            Ok(reply) => Ok(reply),
            Err(e) => {
                self.errors += 1;
                Err(*e)
            }
        };
        match slot {
            Slot::Forwarded => *slot = Slot::Ready(shown(self.protocol, None, reply)),
            Slot::Quiet(verb) => *slot = Slot::Ready(shown(self.protocol, Some(*verb), reply)),
            Slot::Resend(resend) => *slot = Slot::Ready(shown(self.protocol, resend.quiet, reply)),
            Slot::Gathering(g) => {
                if let Some(merged) = g.add(part, reply) {
                    *slot = Slot::Ready(merged);
                }
            }
            Slot::Ready(_) => {}
        }
    }

    /// Moves every reply that is next in order into the write buffer.
    fn collect_ready(&mut self) {
        while let Some(Slot::Ready(_)) = self.slots.front() {
            if let Some(Slot::Ready(reply)) = self.slots.pop_front() {
                self.buf.extend_from_slice(&reply);
            }
            self.first_seq += 1;
        }
    }
}

/// Whether `result` calls for sending `resend` again, and how.
fn retry(
    resend: &Resend,
    result: &Result<Bytes, Box<BackendError>>,
    scripts: &Scripts,
    seq: u64,
) -> Option<Retry> {
    if resend.retries_left == 0 {
        return None;
    }
    match (&resend.when, result) {
        (ResendWhen::NodeFails, Err(_)) => Some(Retry { seq, reload: None }),
        (ResendWhen::NoScript { sha }, Ok(reply)) if reply.starts_with(b"-NOSCRIPT") => {
            let scripts = scripts.lock().unwrap_or_else(|p| p.into_inner());
            let body = scripts.get(&sha.to_ascii_lowercase())?;
            let mut load = BytesMut::new();
            encode::command(&mut load, [&b"SCRIPT"[..], b"LOAD", body].into_iter());
            Some(Retry {
                seq,
                reload: Some(load.freeze()),
            })
        }
        _ => None,
    }
}

/// Groups keys by shard for a split request: the part of every key (one part per shard, in
/// order of first use) and each part's shard. `None` when a key has no server left.
pub(super) fn parts_by_shard<'a>(
    state: &PoolState,
    keys: impl Iterator<Item = &'a [u8]>,
) -> Option<(Vec<u32>, Vec<usize>)> {
    let mut key_parts = Vec::with_capacity(keys.size_hint().0);
    let mut part_shards: Vec<usize> = Vec::new();
    for key in keys {
        let shard = state.shard_for(key)?;
        let part = match part_shards.iter().position(|&s| s == shard) {
            Some(part) => part,
            None => {
                part_shards.push(shard);
                part_shards.len() - 1
            }
        };
        key_parts.push(part as u32);
    }
    Some((key_parts, part_shards))
}

/// What the client sees of a single backend reply: the reply or an error, unless it asked for
/// quiet and the command would not have shown it.
fn shown(protocol: Protocol, quiet: Option<Verb>, reply: Result<Bytes, BackendError>) -> Bytes {
    match (quiet, reply) {
        (None, Ok(r)) => r,
        (None, Err(e)) => ClientError::Backend(e).render(protocol),
        (Some(verb), Ok(r)) if !verb.quiet_hides(&r) => r,
        (Some(verb), Err(e)) if verb.is_meta() => ClientError::Backend(e).render(protocol),
        (Some(_), _) => Bytes::new(),
    }
}

/// A connection reserved for this session, and when it is given back.
pub(super) struct Held {
    pub(super) node: Arc<Node>,
    pub(super) conn: Reserved,
    /// Given back once the reply with this sequence number is written; `None`: kept until
    /// the session says (a WATCH until EXEC).
    pub(super) until: Option<u64>,
}

pub(super) struct Session<F> {
    pub(super) id: u64,
    /// The worker thread this session runs on: it uses that worker's backend connections.
    pub(super) worker: usize,
    pub(super) pool: Arc<Pool>,
    pub(super) out: Outbox,
    pub(super) fe: F,
    /// Reserved connections; dropped with the session, they close.
    pub(super) held: Vec<Held>,
}

impl<F: Frontend> Session<F> {
    pub(super) fn new(id: u64, worker: usize, pool: Arc<Pool>) -> Session<F> {
        Session {
            id,
            worker,
            fe: F::new(&pool),
            out: Outbox {
                slots: VecDeque::new(),
                first_seq: 0,
                inbox: Arc::default(),
                buf: BytesMut::new(),
                protocol: pool.config.protocol,
                errors: 0,
                retries: Vec::new(),
                scripts: pool.scripts.clone(),
                listening: false,
            },
            held: Vec::new(),
            pool,
        }
    }

    /// Serves the client until it leaves, quits, sends malformed input, or `shutdown` fires
    /// (then what is in flight is answered first).
    ///
    /// Between bursts of requests the task holds only the session itself: the buffers and the
    /// larger state of a burst live in a future allocated while the client is active, so
    /// thousands of idle clients cost little memory.
    pub(super) async fn run(mut self, stream: Stream, mut shutdown: oneshot::Receiver<()>) {
        let mut read_chunk = FIRST_READ_CHUNK;
        let inbox = self.out.inbox.clone();
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                ready = stream.readable() => if ready.is_err() {
                    return;
                },
                _ = inbox.wait(), if self.out.listening => {}
            }
            let burst = Box::pin(self.burst(&stream, &mut shutdown, &mut read_chunk));
            if burst.await == Burst::Close {
                return;
            }
        }
    }

    /// Takes in replies, and Pub/Sub messages, which are written as they come.
    fn complete_all(&mut self, completions: &mut Vec<Completion>) {
        for c in completions.drain(..) {
            match c.token {
                Token::Reply { seq, part } => self.out.complete(seq, part, c),
                Token::Push => {
                    if let Ok(message) = c.result
                        && self.fe.wants(&message)
                    {
                        self.out.buf.extend_from_slice(&message);
                    }
                }
            }
        }
    }

    /// Serves requests until nothing is in flight and nothing is buffered (`Burst::Idle`) or
    /// the connection is to close.
    async fn burst(
        &mut self,
        stream: &Stream,
        shutdown: &mut oneshot::Receiver<()>,
        read_chunk: &mut usize,
    ) -> Burst {
        let mut read_buf = BytesMut::new();
        let mut completions = Vec::new();
        let inbox = self.out.inbox.clone();
        let mut closing = false;
        if self.out.listening {
            // Messages that arrived while the session was idle.
            inbox.take(&mut completions);
            self.complete_all(&mut completions);
            if !self.out.buf.is_empty() {
                if stream.write_all(&self.out.buf).await.is_err() {
                    return Burst::Close;
                }
                self.out.buf.clear();
            }
        }
        loop {
            let can_read = !closing && self.out.slots.len() < self.pool.config.max_pipeline;
            let waiting = !self.out.slots.is_empty() || self.out.listening;
            tokio::select! {
                biased;
                _ = inbox.wait(), if waiting => {
                    inbox.take(&mut completions);
                    self.complete_all(&mut completions);
                    if !self.out.retries.is_empty() {
                        self.resend();
                    }
                }
                read = stream.read_some(&mut read_buf, read_chunk), if can_read => {
                    if matches!(read, Ok(n) if n > 0) {
                        closing = F::handle_input(self, &mut read_buf);
                    } else {
                        // The client is done sending: answer what it asked, then close; but
                        // like Redis, do not wait on its blocking commands, which may never
                        // return (their reserved connections close with the session).
                        if self.fe.is_mid_request(&read_buf) {
                            tracing::debug!(session = self.id, "client closed in the middle of a request");
                        }
                        if self.held.iter().any(|h| h.until.is_some()) {
                            return Burst::Close;
                        }
                        closing = true;
                    }
                }
                _ = &mut *shutdown, if !closing => closing = true,
            }
            self.out.collect_ready();
            if !self.held.is_empty() {
                self.give_back_done();
            }
            if !self.out.buf.is_empty() {
                if stream.write_all(&self.out.buf).await.is_err() {
                    return Burst::Close;
                }
                self.out.buf.clear();
            }
            if self.out.errors > 0 {
                self.pool
                    .metrics
                    .errors
                    .inc_by(std::mem::take(&mut self.out.errors));
            }
            if self.out.slots.is_empty() {
                if closing {
                    return Burst::Close;
                }
                if read_buf.is_empty() {
                    self.out.buf = BytesMut::new();
                    self.out.slots = VecDeque::new();
                    return Burst::Idle;
                }
            }
        }
    }
}

impl<F> Session<F> {
    /// Gives back every reserved connection whose last reply has been written: each was left
    /// as it was found, with nothing in flight.
    fn give_back_done(&mut self) {
        let first_unanswered = self.out.first_seq;
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].until.is_some_and(|seq| seq < first_unanswered) {
                let held = self.held.swap_remove(i);
                held.node.give_back(self.worker, held.conn);
            } else {
                i += 1;
            }
        }
    }

    /// Sends again what asked for it: a failed read to the next node of its shard, an EVALSHA
    /// to its node after loading the script there. The shard is found in the pool's current
    /// state; one that left it fails the request.
    fn resend(&mut self) {
        let state = self.pool.state();
        for Retry { seq, reload } in std::mem::take(&mut self.out.retries) {
            let index = (seq - self.out.first_seq) as usize;
            let Some(Slot::Resend(resend)) = self.out.slots.get(index) else {
                continue;
            };
            let shard = state.shard_named(&resend.shard);
            let last = shard.and_then(|shard| Some((shard, shard.index_of(resend.node)?)));
            let Some((shard, last)) = last else {
                let error = ClientError::ShardLeft(resend.shard.clone());
                self.out.slots[index] = Slot::Ready(error.render(self.out.protocol));
                self.out.errors += 1;
                continue;
            };
            let node = match reload {
                Some(_) => last,
                None => shard.retry_index(last),
            };
            let node = &shard.nodes[node];
            let (job, resp3) = (resend.job.clone(), resend.resp3);
            if let Some(load) = reload {
                let load = (load, ReplyKind::Resp);
                self.send_job_to(node, load, self.out.reply_to_seq(seq, 1), resp3);
            }
            let reply_to = self.out.reply_to_seq(seq, 0);
            self.send_job_to(node, job, reply_to, resp3);
            if let Some(Slot::Resend(resend)) = self.out.slots.get_mut(index) {
                resend.node = node.id();
                resend.retries_left -= 1;
            }
        }
    }

    /// Sends part `part` of the next request to shard `s` of `state` (the node `write` and
    /// the pool's `read_from` choose). The request's slot is queued after all its parts are
    /// sent.
    pub(super) fn send(
        &self,
        state: &PoolState,
        s: usize,
        write: bool,
        job: (Bytes, ReplyKind),
        part: usize,
        resp3: bool,
    ) {
        let shard = &state.shards[s];
        let node = shard.node_for(write, self.pool.config.read_from, self.id as usize);
        self.send_to(&shard.nodes[node], job, part, resp3);
    }

    /// Sends part `part` of the next request to `node`.
    pub(super) fn send_to(&self, node: &Node, job: (Bytes, ReplyKind), part: usize, resp3: bool) {
        self.send_job_to(node, job, self.out.reply_to(part), resp3);
    }

    fn send_job_to(
        &self,
        node: &Node,
        (payload, kind): (Bytes, ReplyKind),
        reply_to: ReplyTo,
        resp3: bool,
    ) {
        let job = Job {
            payload,
            kind,
            reply_to,
            timeout: None,
        };
        node.send(job, self.worker, resp3, self.id as usize);
    }
}
