//! Carrying out a plan: sending its parts to the nodes it names (the shard's master or the
//! replica `read_from` picks), sending again what asks for it, and the connections reserved
//! for a client (a blocking command, a transaction) until the reply they carry is written.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;

use super::Context;
use crate::backend::{Job, Node, NodeId, Profile, ReplyTo, Reserved, Subscriber, Token};
use crate::protocol::ReplyKind;
use crate::server::merge::Gather;
use crate::server::near_cache::{CachedRead, FILL_REPLIES, Filling, Keeper, fill_request, serves};
use crate::server::outbox::{Blocking, Redirects, Sent};
use crate::server::plan::{Part, Plan, Target};
use crate::topology::{BlockedOn, Client, PoolState};

/// A connection reserved for this session until the reply to one request is written.
pub(super) struct Held {
    node: Arc<Node>,
    conn: Reserved,
    /// The sequence number of that request.
    until: u64,
    /// A blocking command waiting on it.
    blocked: Option<Blocked>,
}

/// One blocking command, counted in `blocked_clients` and shown in the client's listing
/// (where CLIENT UNBLOCK finds its connection) until it is dropped.
struct Blocked {
    gauge: Gauge,
    listing: Arc<Client>,
}

impl Held {
    pub(super) fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }
}

impl Blocked {
    fn new(gauge: &Gauge, listing: &Arc<Client>, on: BlockedOn) -> Blocked {
        gauge.inc();
        listing.set_blocked_on(Some(on));
        Blocked {
            gauge: gauge.clone(),
            listing: listing.clone(),
        }
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        self.gauge.dec();
        self.listing.set_blocked_on(None);
    }
}

/// How long a blocking command without a timeout may wait: far enough ahead never to come.
const NO_LIMIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

impl Context<'_> {
    /// Carries out `plan` for the next request, on the nodes of `state`, on the client's
    /// connections of `profile`.
    pub(in crate::server) fn execute(&mut self, state: &PoolState, plan: Plan, profile: Profile) {
        let next = self.out.next_seq();
        if let Some(r) = self
            .carrier
            .in_flight
            .as_mut()
            .and_then(|f| f.recorded.back_mut())
            && r.seq == next
            && let Some((target, parts)) = plan.first_target()
        {
            r.shard = Some((state.shards[target.shard()].name.clone(), parts - 1));
        }
        match plan {
            Plan::Reply(reply) => self.out.ready(reply),
            Plan::Fail(e) => self.out.error(e),
            Plan::FailAfter(e, after) => {
                let to = self.reply_to(self.out.token(0));
                let reply = self.out.error_later(&e);
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    to.answer(reply);
                });
            }
            Plan::Later(reply) => {
                let to = self.reply_to(self.out.token(0));
                self.out.forwarded();
                tokio::spawn(async move { to.answer(reply.0.await) });
            }
            Plan::Forward(part) => {
                self.send_part(state, part, 0, profile);
                self.out.forwarded();
            }
            Plan::Quiet(part, quiet) => {
                self.send_part(state, part, 0, profile);
                self.out.quiet(quiet);
            }
            Plan::Gather(parts, gather) => {
                for (i, part) in parts.into_iter().enumerate() {
                    self.send_part(state, part, i, profile);
                }
                self.out.gathering(gather);
            }
            Plan::Aside(parts, gather) => {
                for (i, part) in parts.into_iter().enumerate() {
                    let (shard, node) = self.resolve(state, part.target);
                    let node = state.shards[shard].nodes[node].clone();
                    let conn = node.reserve(self.worker(), profile);
                    conn.send(Job {
                        payload: part.payload,
                        kind: part.kind,
                        reply_to: self.reply_to(self.out.token(i)),
                        timeout: None,
                    });
                    self.hold(node, conn, None);
                }
                self.out.gathering(gather);
            }
            Plan::Resend {
                part,
                retries,
                when,
                quiet,
            } => {
                let (shard, node) = self.resolve(state, part.target);
                let (shard, node) = (&state.shards[shard], &state.shards[shard].nodes[node]);
                self.send_to(node, (part.payload.clone(), part.kind), 0, profile);
                match quiet {
                    Some(quiet) => self.out.quiet(quiet),
                    None => self.out.forwarded(),
                }
                let mut sent = self.sent(state, node, (next, 0), part, profile);
                sent.shard = Some(shard.name.clone());
                sent.when = Some(when);
                sent.retries_left = retries;
                self.out.keep(sent);
            }
            Plan::Cached { part, read, resend } => {
                self.cached(state, (part, read), resend, profile)
            }
            Plan::Reserved {
                part,
                wait,
                timeout_at,
            } => {
                // Like Redis, the time a blocking command waits does not make it slow.
                let next = self.out.next_seq();
                if let Some(f) = &mut self.carrier.in_flight
                    && f.recorded.back().is_some_and(|r| r.seq == next)
                {
                    f.recorded.pop_back();
                }
                let (shard, node) = self.resolve(state, part.target);
                let node = state.shards[shard].nodes[node].clone();
                let conn = node.reserve(self.worker(), profile);
                if state.slots().is_some() {
                    // Its slot may move while it waits: then it waits on the new node.
                    let kept = Part {
                        payload: part.payload.clone(),
                        ..part
                    };
                    let mut sent = self.sent(state, &node, (next, 0), kept, profile);
                    let limit = wait.unwrap_or(NO_LIMIT) + self.pool.config.timeout;
                    sent.redirects = sent.redirects.map(|r| Redirects {
                        deadline: self.now() + limit,
                        ..r
                    });
                    sent.blocking = Some(Blocking {
                        wait,
                        since: self.now(),
                        timeout_at,
                    });
                    self.out.keep(sent);
                }
                let job = Job {
                    payload: part.payload,
                    kind: part.kind,
                    reply_to: self.reply_to(self.out.token(0)),
                    timeout: None,
                };
                conn.send_blocking(job, wait);
                let on = BlockedOn {
                    node: node.clone(),
                    connection: conn.server_id().clone(),
                };
                let blocked = Blocked::new(&self.pool.metrics.blocked_clients, self.listing, on);
                self.hold(node, conn, Some(blocked));
                self.out.forwarded();
            }
        }
    }

    /// A read the near cache answers; else sent so that its reply is kept, when its node's
    /// reads can be tracked now; else sent as it is.
    fn cached(
        &mut self,
        state: &PoolState,
        (part, read): (Part, CachedRead),
        resend: bool,
        profile: Profile,
    ) {
        let as_routed = |part| Plan::read(part, resend);
        let Some(cache) = self.pool.near_cache.clone() else {
            return self.execute(state, as_routed(part), profile);
        };
        let (shard, node) = self.resolve(state, part.target);
        let read_from = self.pool.config.read_from;
        let now = self.now();
        let variant = read.variant(profile.db, profile.resp3);
        let serves = |id, generation| serves(&state.shards[shard], read_from, id, generation);
        let found = cache.get(&read.key, &[variant], now, serves);
        self.cache_read(found.is_some());
        if let Some(reply) = found {
            return self.out.ready(reply);
        }
        let node = state.shards[shard].nodes[node].clone();
        let hot = || self.pool.hot_keys.is_hot(self.worker(), &read.key);
        let Some(generation) = node
            .tracking_ready()
            .filter(|_| cache.keeps(&read.key, hot))
        else {
            return self.execute(state, as_routed(part), profile);
        };
        let ticket = cache.ticket(&read.key, node.id(), generation, now);
        let fill = Part {
            target: part.target,
            payload: fill_request(&part.payload, &read.key),
            kind: FILL_REPLIES,
        };
        self.execute(state, as_routed(fill), profile);
        self.out.filling_last(Box::new(Filling {
            keeper: Keeper {
                cache,
                node,
                profile: (profile.db, profile.resp3),
                reader: (read.reader).and_then(|id| Some((self.pool.client_tracking.clone()?, id))),
            },
            read,
            ticket,
            max_depth: self.pool.config.max_reply_depth,
        }));
    }

    /// The shard and node (indices in `state`) a target names.
    fn resolve(&self, state: &PoolState, target: Target) -> (usize, usize) {
        match target {
            Target::Shard { shard, write } => {
                let read_from = self.pool.config.read_from;
                let node = state.shards[shard].node_for(write, read_from, self.listing.id as usize);
                (shard, node)
            }
            Target::Node { shard, node } => (shard, node),
        }
    }

    /// Sends `part` as part `index` of the next request; in a cluster it is kept, so that a
    /// redirect can send it again.
    fn send_part(&mut self, state: &PoolState, part: Part, index: usize, profile: Profile) {
        let (shard, node) = self.resolve(state, part.target);
        let node = &state.shards[shard].nodes[node];
        if state.slots().is_none() {
            self.send_to(node, (part.payload, part.kind), index, profile);
            return;
        }
        self.send_to(node, (part.payload.clone(), part.kind), index, profile);
        let seq = self.out.next_seq();
        let sent = self.sent(state, node, (seq, index), part, profile);
        self.out.keep(sent);
    }

    /// What is kept of part `index` of request `seq`, sent to `node`: it may be sent again
    /// for a cluster's redirects (for nothing else, until the caller says).
    pub(super) fn sent(
        &self,
        state: &PoolState,
        node: &Node,
        (seq, index): (u64, usize),
        part: Part,
        profile: Profile,
    ) -> Sent {
        Sent {
            seq,
            part: index,
            shard: None,
            node: node.id(),
            payload: part.payload,
            kind: part.kind,
            profile,
            when: None,
            retries_left: 0,
            blocking: None,
            redirects: state.slots().map(|_| Redirects {
                deadline: self.now() + self.pool.config.timeout,
                hops: 0,
            }),
        }
    }

    /// A subscriber connection of the client's to `node`: it delivers messages to the
    /// client's inbox, and acknowledges changes there.
    pub(in crate::server) fn subscriber(&self, node: &Node, resp3: bool) -> Subscriber {
        node.subscriber(resp3, self.listing.clone())
    }

    /// Hands `frame`, a notice from a subscriber connection on node `from`, back to the
    /// session after `delay`: what becomes of it is decided again then.
    pub(in crate::server) fn notice_again(&self, delay: Duration, from: NodeId, frame: Bytes) {
        crate::backend::notice_after(self.listing.clone(), delay, from, frame);
    }

    /// Sends `requests` in order on `conn`, a connection reserved for the client, as the parts
    /// of the next request, whose replies `gather` merges (a transaction's: EXEC's).
    pub(in crate::server) fn send_in_order(
        &mut self,
        conn: &Reserved,
        requests: Vec<Bytes>,
        gather: Gather,
    ) {
        for (part, payload) in requests.into_iter().enumerate() {
            conn.send(Job {
                payload,
                kind: ReplyKind::Resp,
                reply_to: self.reply_to(self.out.token(part)),
                timeout: None,
            });
        }
        self.out.gathering(gather);
    }

    /// Holds `conn`, reserved on `node`, until the reply to the next request queued is
    /// written; then it is given back for another client.
    pub(in crate::server) fn hold_for_next(&mut self, node: Arc<Node>, conn: Reserved) {
        self.hold(node, conn, None);
    }

    /// Sends the blocking command `seq` again on a new connection reserved on `node`, after
    /// `first`, to wait `wait` more: its slot moved. The connection it waited on closes.
    pub(super) fn block_again(
        &mut self,
        seq: u64,
        node: Arc<Node>,
        (first, job): (Option<Bytes>, Job),
        wait: Option<Duration>,
        profile: Profile,
    ) {
        let conn = node.reserve(self.worker(), profile);
        if let Some(first) = first {
            conn.send(Job {
                payload: first,
                kind: job.kind,
                reply_to: self.reply_to(Token::Reply {
                    seq,
                    part: crate::server::outbox::PREAMBLE,
                }),
                timeout: None,
            });
        }
        conn.send_blocking(job, wait);
        let Some(f) = &mut self.carrier.in_flight else {
            return;
        };
        if let Some(held) = f.held.iter_mut().find(|h| h.until == seq) {
            if let Some(blocked) = &held.blocked {
                blocked.listing.set_blocked_on(Some(BlockedOn {
                    node: node.clone(),
                    connection: conn.server_id().clone(),
                }));
            }
            held.node = node;
            held.conn = conn;
        }
    }

    fn hold(&mut self, node: Arc<Node>, conn: Reserved, blocked: Option<Blocked>) {
        let until = self.out.next_seq();
        self.carrier.in_flight_mut().held.push(Held {
            node,
            conn,
            until,
            blocked,
        });
    }

    /// Gives back every reserved connection whose last reply has been written: each was left
    /// as it was found, with nothing in flight.
    pub(super) fn give_back_done(&mut self) {
        let (first_unanswered, worker) = (self.out.first_unanswered(), self.worker());
        let Some(f) = &mut self.carrier.in_flight else {
            return;
        };
        let mut i = 0;
        while i < f.held.len() {
            if f.held[i].until < first_unanswered {
                let held = f.held.swap_remove(i);
                held.node.give_back(worker, held.conn);
            } else {
                i += 1;
            }
        }
    }

    /// Sends part `part` of the next request to `node`.
    pub(in crate::server) fn send_to(
        &self,
        node: &Node,
        job: (Bytes, ReplyKind),
        part: usize,
        profile: Profile,
    ) {
        self.send_job_to(node, job, self.reply_to(self.out.token(part)), profile);
    }

    /// Where a backend sends the reply `token`: this client's inbox.
    pub(in crate::server) fn reply_to(&self, token: Token) -> ReplyTo {
        ReplyTo {
            inbox: self.listing.clone(),
            token,
        }
    }

    pub(super) fn send_job_to(
        &self,
        node: &Node,
        (payload, kind): (Bytes, ReplyKind),
        reply_to: ReplyTo,
        profile: Profile,
    ) {
        let job = Job {
            payload,
            kind,
            reply_to,
            timeout: None,
        };
        node.send(job, self.worker(), profile, self.listing.id as usize);
    }
}
