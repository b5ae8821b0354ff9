//! One client connection: parse pipelined requests, route each to its shard, and write replies
//! in request order, batched into one write per wakeup.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::local::{self, ClientState};
use super::merge::Gather;
use crate::backend::{Completion, Inbox, Job, ReplyTo};
use crate::command::{self, Command, Kind};
use crate::net;
use crate::protocol::resp::{Request, RequestParser, encode};
use crate::ring::Ring;
use crate::topology::Pool;

/// Bits of a token that number the parts of a fanned-out request; the rest is its sequence.
const PART_BITS: u32 = 20;
/// A fresh read buffer's size: small, so a burst of idle clients costs little; it doubles
/// while reads fill it.
const FIRST_READ_CHUNK: usize = 1024;

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
    /// Several parts are awaited and merged.
    Gathering(Box<Gather>),
}

/// Replies owed to the client, in request order.
pub(super) struct Outbox {
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    first_seq: u64,
    inbox: Arc<Inbox>,
    buf: BytesMut,
    pub(super) errors: u64,
}

impl Outbox {
    fn next_seq(&self) -> u64 {
        self.first_seq + self.slots.len() as u64
    }

    /// Queues a reply the proxy made.
    pub(super) fn ready(&mut self, reply: Bytes) {
        self.slots.push_back(Slot::Ready(reply));
    }

    /// Queues an error reply the proxy made (`msg` starts with its code).
    pub(super) fn error(&mut self, msg: &str) {
        let mut b = BytesMut::with_capacity(msg.len() + 3);
        encode::error(&mut b, msg);
        self.errors += 1;
        self.ready(b.freeze());
    }

    /// Where a backend sends the reply to part `part` of the next request.
    pub(super) fn reply_to(&self, part: usize) -> ReplyTo {
        ReplyTo {
            inbox: self.inbox.clone(),
            token: (self.next_seq() << PART_BITS) | part as u64,
        }
    }

    fn complete(&mut self, c: Completion) {
        let seq = c.token >> PART_BITS;
        let part = (c.token & ((1 << PART_BITS) - 1)) as usize;
        let Some(slot) = seq
            .checked_sub(self.first_seq)
            .and_then(|i| self.slots.get_mut(i as usize))
        else {
            return;
        };
        let reply = match c.result {
            Ok(reply) => Ok(reply),
            Err(e) => {
                self.errors += 1;
                Err(*e)
            }
        };
        match slot {
            Slot::Forwarded => {
                *slot = Slot::Ready(reply.unwrap_or_else(|e| error_reply(&e.to_string())))
            }
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

pub(super) fn error_reply(msg: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(msg.len() + 8);
    encode::error(&mut b, &format!("ERR {msg}"));
    b.freeze()
}

pub(super) struct Session {
    pub(super) id: u64,
    /// The worker thread this session runs on: it uses that worker's backend connections.
    worker: usize,
    pool: Arc<Pool>,
    parser: RequestParser,
    client: ClientState,
    out: Outbox,
}

impl Session {
    pub(super) fn new(id: u64, worker: usize, pool: Arc<Pool>) -> Session {
        Session {
            id,
            worker,
            parser: RequestParser::new(pool.config.limits),
            client: ClientState::new(pool.config.client_password.is_none()),
            out: Outbox {
                slots: VecDeque::new(),
                first_seq: 0,
                inbox: Arc::default(),
                buf: BytesMut::new(),
                errors: 0,
            },
            pool,
        }
    }

    /// Serves the client until it leaves, sends QUIT, sends malformed input, or `shutdown` fires
    /// (then what is in flight is answered first).
    ///
    /// Between bursts of requests the task holds only the session itself: the buffers and the
    /// larger state of a burst live in a future allocated while the client is active, so
    /// thousands of idle clients cost little memory.
    pub(super) async fn run(mut self, stream: TcpStream, mut shutdown: oneshot::Receiver<()>) {
        let _ = stream.set_nodelay(true);
        let mut read_chunk = FIRST_READ_CHUNK;
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                ready = stream.readable() => if ready.is_err() {
                    return;
                },
            }
            let burst = Box::pin(self.burst(&stream, &mut shutdown, &mut read_chunk));
            if burst.await == Burst::Close {
                return;
            }
        }
    }

    /// Serves requests until nothing is in flight and nothing is buffered (`Burst::Idle`) or
    /// the connection is to close.
    async fn burst(
        &mut self,
        stream: &TcpStream,
        shutdown: &mut oneshot::Receiver<()>,
        read_chunk: &mut usize,
    ) -> Burst {
        let mut read_buf = BytesMut::new();
        let mut completions = Vec::new();
        let inbox = self.out.inbox.clone();
        let mut closing = false;
        loop {
            let can_read = !closing && self.out.slots.len() < self.pool.config.max_pipeline;
            let waiting = !self.out.slots.is_empty();
            tokio::select! {
                biased;
                _ = inbox.wait(), if waiting => {
                    inbox.take(&mut completions);
                    for c in completions.drain(..) {
                        self.out.complete(c);
                    }
                }
                read = net::read_some(stream, &mut read_buf, read_chunk), if can_read => {
                    if matches!(read, Ok(n) if n > 0) {
                        closing = self.handle_input(&mut read_buf);
                    } else {
                        // The client is done sending: answer what it asked, then close.
                        if self.parser.is_mid_request(&read_buf) {
                            tracing::debug!(session = self.id, "client closed in the middle of a request");
                        }
                        closing = true;
                    }
                }
                _ = &mut *shutdown, if !closing => closing = true,
            }
            self.out.collect_ready();
            if !self.out.buf.is_empty() {
                if net::write_all(stream, &self.out.buf).await.is_err() {
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

    /// Parses and dispatches every complete request in `buf`. Returns true when the session must
    /// close after the queued replies (QUIT, malformed input).
    fn handle_input(&mut self, buf: &mut BytesMut) -> bool {
        let ring = self.pool.ring.load();
        let mut count = 0;
        let closing = loop {
            match self.parser.parse(buf) {
                Ok(Some(req)) => {
                    count += 1;
                    if self.dispatch(&ring, req) {
                        break true;
                    }
                }
                Ok(None) => break false,
                Err(e) => {
                    self.out.error(&format!("ERR Protocol error: {e}"));
                    break true;
                }
            }
        };
        self.pool.metrics.requests.inc_by(count);
        closing
    }

    /// Routes one request. Returns true for QUIT.
    fn dispatch(&mut self, ring: &Ring, req: Request) -> bool {
        let name = req.arg(0);
        let Some(cmd) = command::lookup(name) else {
            if !self.client.authenticated {
                self.out.error("NOAUTH Authentication required.");
            } else {
                let shown = String::from_utf8_lossy(name);
                self.out
                    .error(&format!("ERR unsupported command '{shown}'"));
            }
            return false;
        };
        if !cmd.arity_ok(req.argc()) {
            self.out.error(&format!(
                "ERR wrong number of arguments for '{}' command",
                cmd.name.to_ascii_lowercase()
            ));
            return false;
        }
        if cmd.kind == Kind::Local {
            return local::run(self, cmd, &req);
        }
        if !self.client.authenticated {
            self.out.error("NOAUTH Authentication required.");
            return false;
        }
        match cmd.kind {
            Kind::Keyed => self.forward_keyed(ring, cmd, req),
            Kind::Split(merge) => self.split(ring, cmd, merge, req),
            Kind::Local => {}
        }
        false
    }

    fn forward_keyed(&mut self, ring: &Ring, cmd: &Command, req: Request) {
        // A keyed command without keys (OBJECT HELP, XINFO HELP) can go to any shard.
        let mut shard = None;
        let mut keys = cmd.key_positions(req.argc()).peekable();
        if keys.peek().is_none() {
            shard = ring.server_for(b"");
        }
        for pos in keys {
            let s = ring.server_for(req.arg(pos));
            if shard.is_some() && s != shard {
                self.out.error(&format!(
                    "CROSSSLOT Keys in request don't hash to the same shard (command '{}'); use a hash tag",
                    cmd.name.to_ascii_lowercase()
                ));
                return;
            }
            shard = s;
        }
        match shard {
            Some(s) => {
                self.send(s, cmd.write, req.frame().clone(), 0);
                self.out.slots.push_back(Slot::Forwarded);
            }
            None => self
                .out
                .error("ERR no server is available for the key (all are ejected)"),
        }
    }

    /// Sends part `part` of the next request to shard `s`. The request's slot is queued after
    /// all its parts are sent.
    fn send(&mut self, s: usize, write: bool, payload: Bytes, part: usize) {
        let shard = &self.pool.shards[s];
        let node = shard.node_for(write, self.pool.config.read_from, self.id as usize);
        let job = Job {
            payload,
            reply_to: self.out.reply_to(part),
        };
        node.send(job, self.worker, self.client.resp3, self.id as usize);
    }

    fn split(&mut self, ring: &Ring, cmd: &Command, merge: command::Merge, req: Request) {
        let step = cmd.key_step;
        // The part (one per shard, in order of first use) of every key, and each part's shard.
        let mut key_parts: Vec<u32> = Vec::with_capacity(req.argc() / step);
        let mut part_shards: Vec<usize> = Vec::new();
        for pos in cmd.key_positions(req.argc()) {
            let Some(s) = ring.server_for(req.arg(pos)) else {
                self.out
                    .error("ERR no server is available for the key (all are ejected)");
                return;
            };
            let part = match part_shards.iter().position(|&ps| ps == s) {
                Some(part) => part,
                None => {
                    part_shards.push(s);
                    part_shards.len() - 1
                }
            };
            key_parts.push(part as u32);
        }
        if let [s] = part_shards[..] {
            self.send(s, cmd.write, req.frame().clone(), 0);
            self.out.slots.push_back(Slot::Forwarded);
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
            self.send(s, cmd.write, payloads.slice(start..end), part);
            start = end;
        }
        let gather = Gather::split(
            merge,
            part_shards.len(),
            key_parts,
            self.pool.config.max_reply_depth,
        );
        self.out.slots.push_back(Slot::Gathering(Box::new(gather)));
    }

    pub(super) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub(super) fn client(&mut self) -> &mut ClientState {
        &mut self.client
    }

    pub(super) fn out(&mut self) -> &mut Outbox {
        &mut self.out
    }

    /// Sends the same request to every shard's master and gathers the replies with `gather`.
    pub(super) fn broadcast(&mut self, payload: Bytes, gather: Gather) {
        for s in 0..self.pool.shards.len() {
            self.send(s, true, payload.clone(), s);
        }
        self.out.slots.push_back(Slot::Gathering(Box::new(gather)));
    }
}
