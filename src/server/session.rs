//! One client connection's I/O loop: read what the client sends and hand it to the protocol's
//! [`Frontend`] (RESP or memcache), which parses and routes it; carry out the [`Plan`] of each
//! request on the nodes of the pool's current snapshot; write the replies in request order,
//! batched into one write per wakeup.

mod burst;
mod context;
#[cfg(test)]
pub(super) mod harness;
mod plans;
mod resend;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Sleep;

use super::near_cache;
use super::outbox::Outbox;
use super::timing::Recorded;
use crate::backend::{Completion, Mailbox, NodeId, Profile, Token};
use crate::metrics::CloseReason;
use crate::net::Stream;
use crate::net::descriptors::Descriptor;
use crate::topology::cluster::Redirect;
use crate::topology::{Client, Pool, Signals};
use context::Carrier;
pub(super) use context::Context;

/// What is read of a blocked client's next requests before reading stops until it is
/// answered.
const READ_WHILE_BLOCKED: usize = 64 * 1024;

/// How long a burst outlives its last reply: a client that sends its next request sooner (as
/// an application that does not pipeline does, a round trip later) is served by the same burst
/// and its buffers, with nothing allocated again. Re-armed by moving a deadline later, which
/// costs the timer nothing until it is reached.
const LINGER: Duration = Duration::from_millis(100);

/// How long a client asked to leave (its pool removed or replaced by a reload, a shutdown) is
/// still read, so that requests it sent before it knew are answered rather than reset.
const LEAVE_GRACE: Duration = Duration::from_secs(2);

/// A client protocol: how requests are parsed and routed.
pub(super) trait Frontend: Sized {
    fn new(pool: &Pool) -> Self;

    /// Parses and routes every complete request in `buf`. Returns true when the session must
    /// close after the queued replies (quit, malformed input).
    fn handle_input(&mut self, cx: &mut Context<'_>, buf: &mut BytesMut) -> bool;

    /// Whether `buf` (what is left unparsed) ends in the middle of a request.
    fn is_mid_request(&self, buf: &BytesMut) -> bool;

    /// A backend answered part of request `seq` with an error: what the frontend took for
    /// granted when it sent the request (a subscription) is taken back.
    fn refused(&mut self, _seq: u64) {}

    /// Whether the client listens for Pub/Sub messages, which may come at any time: it hears
    /// pushes (below), and one that does not read them is closed at once (a publisher cannot
    /// be made to wait).
    fn is_listening(&self) -> bool {
        false
    }

    /// Whether messages may come to the client at any time (Pub/Sub, invalidations of keys it
    /// tracks): it is woken for them while idle, and never closed for being idle.
    fn hears_pushes(&self) -> bool {
        self.is_listening()
    }

    /// Whether a Pub/Sub message is still for the client: one sent before its unsubscription
    /// reached the backend is not.
    fn wants(&self, _message: &[u8]) -> bool {
        true
    }

    /// The connections the client's requests go on: its database and protocol level.
    fn profile(&self) -> Profile {
        Profile::default()
    }

    /// A subscriber connection of the client's cannot reach its node: the subscriptions it
    /// holds may be moved to another.
    fn subscriber_lost(&mut self, _cx: &mut Context<'_>) {}

    /// Node `from` no longer holds one of the client's subscriptions (`notice`, a cluster's
    /// `sunsubscribe`): it may be made elsewhere.
    fn subscription_dropped(&mut self, _cx: &mut Context<'_>, _from: NodeId, _notice: &[u8]) {}

    /// Keys the client tracks changed (`changed`: a RESP array of them; empty: every key).
    fn invalidated(&mut self, _cx: &mut Context<'_>, _changed: &[u8]) {}

    /// Adds a request that took `took` to the pool's slow log.
    fn log_slow(&self, _pool: &Pool, _listing: &Client, _request: Recorded, _took: Duration) {}
}

/// Waits for `timer`, or forever when there is none.
async fn fires(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(timer) => timer.await,
        None => std::future::pending().await,
    }
}

/// What woke an idle client.
enum Woke {
    /// The pool asked it to leave, or to close.
    Asked(Signals),
    /// Pub/Sub messages came.
    Messages,
    /// It sent something (`false`: its socket failed).
    Readable(bool),
    /// The pool asked it to leave while it had sent something: that is served first.
    LeavingReadable,
    /// It stayed idle too long.
    Idle,
}

/// How a burst of requests ended.
#[derive(Debug, PartialEq, Eq)]
enum Burst {
    Idle,
    Close,
}

/// One client's connection and what the proxy keeps of it. An idle client's task is this and
/// two words, kept within 144 bytes so that Tokio's task cell for it takes 256 bytes, not 384:
/// what only some clients need is boxed, or kept in their entry in the pool's list.
pub(super) struct Session<F> {
    /// The client in the pool's list: what CLIENT LIST shows of it, and what the pool asks
    /// of it.
    pub(super) listing: Arc<Client>,
    pub(super) pool: Arc<Pool>,
    stream: Stream,
    /// Carries out the frontend's plans.
    carrier: Carrier,
    pub(super) out: Outbox,
    pub(super) fe: F,
    /// The client's socket, counted against the descriptors kept for backend connections.
    _descriptor: Descriptor,
}

impl<F> Drop for Session<F> {
    /// The client leaves the pool's list; replies still in flight for it are dropped as they
    /// come.
    fn drop(&mut self) {
        self.listing.inbox().close();
        self.pool.forget_client(self.listing.id);
    }
}

impl<F: Frontend> Session<F> {
    pub(super) fn new(
        pool: Arc<Pool>,
        listing: Arc<Client>,
        stream: Stream,
        descriptor: Descriptor,
    ) -> Session<F> {
        Session {
            _descriptor: descriptor,
            out: Outbox::new(pool.config.protocol),
            listing,
            stream,
            carrier: Carrier::default(),
            fe: F::new(&pool),
            pool,
        }
    }

    /// Serves the client until it leaves, quits, sends malformed input, is killed, or the pool
    /// asks it to leave (then what is in flight is answered first).
    ///
    /// This future is the client's task, held for as long as the client is connected, so it
    /// is kept small: between bursts of requests it holds the session and two words. The
    /// buffers and the larger state of a burst live in a future allocated while the client is
    /// active, and what can be looked up again is not kept across waits. Not an `async fn`,
    /// whose argument would be moved into a local of the future and held twice.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn serve(mut self) -> impl Future<Output = ()> + Send
    where
        F: Send,
    {
        async move {
            let mut leaving = false;
            loop {
                // Like Redis's `timeout`, not for a Pub/Sub subscriber; counted from the last
                // reply, so the burst's lingering is part of it. Only an idle client with a
                // bound holds a timer.
                let mut idle = (self.pool.config.clients.idle_timeout)
                    .filter(|_| !self.fe.hears_pushes())
                    .map(|t| Box::pin(tokio::time::sleep(t.saturating_sub(self.linger()))));
                let session = &mut self;
                match std::future::poll_fn(move |cx| session.poll_idle(&mut idle, cx)).await {
                    Woke::Asked(signals) => {
                        self.count_kill(signals);
                        return;
                    }
                    Woke::Readable(false) => return,
                    Woke::Readable(true) | Woke::Messages => {}
                    Woke::LeavingReadable => leaving = true,
                    Woke::Idle => {
                        tracing::debug!(session = self.listing.id, "idle client closed");
                        self.pool.metrics.closed(CloseReason::Idle);
                        return;
                    }
                }
                let burst = Box::pin(self.burst(leaving));
                if burst.await == Burst::Close {
                    return;
                }
            }
        }
    }

    /// What ends an idle wait: input, what the pool asks, a Pub/Sub message, or the idle
    /// timer. Polled by hand rather than selected from futures, which the task would hold for
    /// as long as the client stays idle. Takes the session mutably only so that the client's
    /// task, which holds the borrow across the wait, can be sent between threads.
    fn poll_idle(
        &mut self,
        idle: &mut Option<Pin<Box<Sleep>>>,
        cx: &mut task::Context<'_>,
    ) -> Poll<Woke> {
        while self.listing.inbox().poll_woken(cx).is_ready() {
            let signals = self.listing.take_signals();
            if !signals.kill() && signals.leave() && self.stream.poll_readable(cx).is_ready() {
                // Requests the client sent before it was asked to leave are answered, not
                // reset by closing a socket with unread input.
                return Poll::Ready(Woke::LeavingReadable);
            }
            if signals.kill() || signals.leave() {
                return Poll::Ready(Woke::Asked(signals));
            }
            if self.fe.hears_pushes() {
                return Poll::Ready(Woke::Messages);
            }
        }
        if let Poll::Ready(ready) = self.stream.poll_readable(cx) {
            return Poll::Ready(Woke::Readable(ready.is_ok()));
        }
        match idle.as_mut().map(|timer| timer.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Woke::Idle),
            _ => Poll::Pending,
        }
    }

    /// Whether the client's socket has input (or its end) the session has not read yet. Takes
    /// the session mutably so that the client's task, which holds the borrow, stays `Send`.
    async fn has_input_waiting(&mut self) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(self.stream.poll_readable(cx).is_ready())).await
    }

    /// How long a burst outlives its last reply: [`LINGER`], or the idle timeout if shorter.
    fn linger(&self) -> Duration {
        let idle_timeout = self.pool.config.clients.idle_timeout;
        idle_timeout.map_or(LINGER, |t| t.min(LINGER))
    }

    /// Takes in replies, and Pub/Sub messages, which are written as they come.
    fn complete_all(&mut self, completions: &mut Vec<Completion>) {
        for c in completions.drain(..) {
            match c.token {
                Token::Reply { seq, part } => {
                    if let Ok(reply) = &c.result {
                        if reply.first() == Some(&b'-') {
                            self.fe.refused(seq);
                        }
                        // Wherever it came from, a MOVED says where its slot is now, an ASK
                        // that it is migrating.
                        if let Some(cluster) = &self.pool.cluster {
                            match near_cache::redirect_in(reply) {
                                Some(Redirect::Moved { slot, to }) => cluster.moved(slot, to),
                                Some(Redirect::Ask { slot, .. }) => cluster.asked(slot),
                                _ => {}
                            }
                        }
                    }
                    self.note_backend_time(seq, c.backend_us);
                    self.out.complete(seq, part, c);
                }
                Token::Notice { from } => {
                    if let Ok(notice) = c.result {
                        let (fe, mut cx) = self.split();
                        fe.subscription_dropped(&mut cx, from, &notice);
                    }
                }
                Token::Invalidate => {
                    if let Ok(changed) = c.result {
                        let (fe, mut cx) = self.split();
                        fe.invalidated(&mut cx, &changed);
                    }
                }
                Token::Push => match c.result {
                    Ok(message) if self.fe.wants(&message) => self.out.push_message(message),
                    Ok(_) => {}
                    Err(_) => {
                        let (fe, mut cx) = self.split();
                        fe.subscriber_lost(&mut cx);
                    }
                },
            }
        }
    }
}

impl<F: Frontend> Session<F> {
    /// The session split in two: its frontend, and the context that frontend sees.
    fn split(&mut self) -> (&mut F, Context<'_>) {
        let cx = Context {
            pool: &self.pool,
            listing: &self.listing,
            out: &mut self.out,
            carrier: &mut self.carrier,
        };
        (&mut self.fe, cx)
    }

    /// What the frontend sees, for the session's own use of it.
    fn cx(&mut self) -> Context<'_> {
        self.split().1
    }

    fn has_room(&mut self) -> bool {
        self.cx().has_room()
    }

    /// Closes a client that held more unread replies than `limit` allows, counting it.
    fn close_for_unread_replies(&self, limit: &str) -> Burst {
        tracing::warn!(
            pool = %self.pool.config.name,
            session = self.listing.id,
            peer = ?self.listing.addr,
            "client closed: {} bytes of replies unread, over {limit}",
            self.out.owed()
        );
        self.pool.metrics.closed(CloseReason::OutputLimit);
        Burst::Close
    }

    /// A backend request of request `seq` took `backend_us`.
    fn note_backend_time(&mut self, seq: u64, backend_us: u32) {
        let Some(recorded) = self.carrier.recorded() else {
            return;
        };
        let at = recorded.partition_point(|r| r.seq < seq);
        if let Some(r) = recorded.get_mut(at)
            && r.seq == seq
        {
            r.backend = r.backend.max(Duration::from_micros(u64::from(backend_us)));
        }
    }
}

impl<F> Session<F> {
    /// Counts a client closed by CLIENT KILL.
    fn count_kill(&self, signals: Signals) {
        if signals.kill() {
            self.pool.metrics.closed(CloseReason::Killed);
        }
    }
}
