//! Where backend replies go: each session's inbox, the token that says which request a reply
//! answers, and the grouping of a connection's replies into one wakeup per session.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use super::BackendError;

/// Where one session's backend replies land, and what wakes the session: a queue it drains
/// when woken, and its one waker (the session's task). Replies for many sessions are delivered
/// by a backend connection without any lock they all share; the pool's requests of a client
/// (leave, close) wake it here too, so an idle session waits on its socket and this alone.
#[derive(Debug, Default)]
pub struct Inbox {
    state: Mutex<InboxState>,
    /// Requests of the session that timed out and that their backend has not answered yet:
    /// they still count against the session's in-flight bound (see [`Late`]).
    late: AtomicU32,
}

#[derive(Debug, Default)]
struct InboxState {
    queue: Vec<Completion>,
    /// Woken since the session last looked.
    woken: bool,
    waker: Option<Waker>,
    /// The session has ended: replies still in flight are dropped as they come.
    closed: bool,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `add` on the queue and wakes the session, outside the lock. A closed inbox takes
    /// nothing: what `add` would have queued is dropped after the lock is let go.
    fn wake_with(&self, add: impl FnOnce(&mut Vec<Completion>)) {
        let mut dropped = Vec::new();
        let waker = {
            let mut state = self.lock();
            if state.closed {
                add(&mut dropped);
                None
            } else {
                add(&mut state.queue);
                state.woken = true;
                state.waker.take()
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    pub(super) fn push(&self, completion: Completion) {
        self.wake_with(|queue| queue.push(completion));
    }

    /// Moves all of `completions` in at once: one lock and one wakeup for a run of replies.
    pub(super) fn push_all(&self, completions: &mut Vec<Completion>) {
        self.wake_with(|queue| queue.append(completions));
    }

    /// Wakes the session with nothing queued: it has something else to look at.
    pub fn wake(&self) {
        self.wake_with(|_| {});
    }

    /// The session has ended: what it was owed is dropped, and so is every reply that comes
    /// later, so that a client gone with requests in flight holds no memory until they are
    /// answered.
    pub fn close(&self) {
        let queue = {
            let mut state = self.lock();
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.queue)
        };
        drop(queue);
    }

    /// Requests that timed out and are not answered by their backend yet.
    pub fn late(&self) -> usize {
        self.late.load(Ordering::Relaxed) as usize
    }

    /// Ready once the session has been woken since it last was; until then the session's
    /// task is woken by the next wakeup.
    pub fn poll_woken(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if std::mem::take(&mut state.woken) {
            return Poll::Ready(());
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits until the session has been woken since it last was.
    pub async fn wait(&self) {
        std::future::poll_fn(|cx| self.poll_woken(cx)).await;
    }

    /// Swaps the queued replies into `into` (which must be empty), so the caller's buffer is
    /// reused and an idle session's inbox holds no memory.
    pub fn take(&self, into: &mut Vec<Completion>) {
        std::mem::swap(&mut self.lock().queue, into);
    }
}

/// A request that timed out, held by its connection until the backend answers it (or the
/// connection fails): its client already has its error, but the backend still works on it, so
/// it still counts in its session's [`Inbox::late`]. Dropping it lets the session send another.
#[derive(Debug)]
pub(super) struct Late(Arc<dyn Mailbox>);

impl Drop for Late {
    fn drop(&mut self) {
        let inbox = self.0.inbox();
        inbox.late.fetch_sub(1, Ordering::Relaxed);
        inbox.wake();
    }
}

/// What holds a session's inbox. The pool's entry for a client does, so that an idle client's
/// inbox costs no allocation of its own; backends deliver to it through this.
pub trait Mailbox: Send + Sync + fmt::Debug {
    fn inbox(&self) -> &Inbox;
}

/// Which reply a completion is, as the session that asked understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// Part `part` of the session's request numbered `seq`.
    Reply { seq: u64, part: usize },
    /// A Pub/Sub message, which answers no request.
    Push,
    /// A subscriber connection's notice: its node `from` no longer holds a subscription.
    Notice { from: super::NodeId },
    /// Keys a client tracks changed (see `cache::clients`), which answers no request.
    Invalidate,
}

/// Where a backend's reply goes: the requesting session's inbox, with the session's token.
#[derive(Debug)]
pub struct ReplyTo {
    pub inbox: Arc<dyn Mailbox>,
    pub token: Token,
}

impl ReplyTo {
    /// Delivers a reply the proxy made itself, as if a backend had sent it.
    pub fn answer(self, reply: Bytes) {
        self.send(Ok(reply));
    }

    /// Fails the request for having taken too long; what is returned stands for it until its
    /// backend has answered.
    pub(super) fn time_out(self, error: BackendError) -> Late {
        self.inbox.inbox().late.fetch_add(1, Ordering::Relaxed);
        let late = Late(self.inbox.clone());
        self.send(Err(error));
        late
    }

    pub(super) fn send(self, result: Result<Bytes, BackendError>) {
        // A session that has gone away no longer reads its inbox; the reply is dropped with it.
        self.inbox.inbox().push(Completion {
            token: self.token,
            result: result.map_err(Box::new),
            backend_us: 0,
        });
    }
}

/// Replies read from one backend connection, grouped while consecutive replies go to the same
/// session (a pipelining client's usually do), so each group costs one lock and one wakeup.
#[derive(Default)]
pub(super) struct Delivery {
    inbox: Option<Arc<dyn Mailbox>>,
    run: Vec<Completion>,
}

impl Delivery {
    /// Adds the reply to `to`, which took `took` on the backend.
    pub(super) fn add(&mut self, to: ReplyTo, result: Result<Bytes, BackendError>, took: Duration) {
        if self
            .inbox
            .as_ref()
            .is_some_and(|i| !std::ptr::addr_eq(Arc::as_ptr(i), Arc::as_ptr(&to.inbox)))
        {
            self.flush();
        }
        self.run.push(Completion {
            token: to.token,
            result: result.map_err(Box::new),
            backend_us: u32::try_from(took.as_micros()).unwrap_or(u32::MAX),
        });
        self.inbox.get_or_insert(to.inbox);
    }

    pub(super) fn flush(&mut self) {
        if let Some(inbox) = self.inbox.take() {
            inbox.inbox().push_all(&mut self.run);
        }
    }
}

/// A backend's reply (one complete RESP value) or why there is none.
#[derive(Debug)]
pub struct Completion {
    pub token: Token,
    pub result: Result<Bytes, Box<BackendError>>,
    /// How long the backend took to answer, in microseconds (0: not measured).
    pub backend_us: u32,
}
