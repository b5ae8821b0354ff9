//! Replies owed to one client, in request order: each request takes a slot, backend replies
//! fill slots through typed tokens, and the replies next in order are written together.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::error::{ClientError, backend_error_kind};
use super::merge::Gather;
use super::near_cache::{self, Filling};
use crate::backend::{BackendError, Completion, NodeId, Profile, Token};
use crate::cache::NearCache;
use crate::config::Protocol;
use crate::metrics::{ErrorKind, InvalidationCause};
use crate::protocol::ReplyKind;
use crate::topology::cluster::Redirect;

/// What a client that asked for no reply (memcache `noreply`, meta `q`) still sees.
#[derive(Clone, Copy, Debug)]
pub(super) struct Quiet {
    /// Whether a reply is one the command leaves out.
    pub hides: fn(&[u8]) -> bool,
    /// Whether a failed request still gets its error reply.
    pub shows_failures: bool,
}

impl Quiet {
    /// The reply the client sees: `reply`, an error, or nothing.
    pub(super) fn apply(quiet: Option<Quiet>, reply: Bytes) -> Bytes {
        match quiet {
            Some(q) if (q.hides)(&reply) => Bytes::new(),
            _ => reply,
        }
    }
}

/// A request's place in the reply order.
pub(super) enum Slot {
    Ready(Bytes),
    /// One backend reply is awaited and becomes the client's reply as it is.
    Forwarded,
    /// A request whose client asked for no reply: the reply is dropped where the command
    /// would not have shown it.
    Quiet(Quiet),
    /// Several parts are awaited and merged.
    Gathering(Box<Gather>),
    /// A read's reply is awaited, to be kept in the near cache if nothing changed its key.
    Filling(Box<Filling>),
}

/// The token part of a reply to what was sent before a part sent again (the SCRIPT LOAD before
/// an EVALSHA): it answers nothing the client asked.
pub(super) const PREAMBLE: usize = usize::MAX;

/// A backend request kept until it is answered, so that it can be sent again, to its node or
/// another: its payload (the client's bytes, not a copy), where it went, and when to resend.
pub(super) struct Sent {
    pub(super) seq: u64,
    pub(super) part: usize,
    /// The shard's name, for a part sent again within its shard (`when`): the pool's state may
    /// have changed meanwhile.
    pub(super) shard: Option<Arc<str>>,
    /// The node it was last sent to.
    pub(super) node: NodeId,
    pub(super) payload: Bytes,
    pub(super) kind: ReplyKind,
    /// The client's connections to the node (its database and protocol level).
    pub(super) profile: Profile,
    /// When to send it again, besides a cluster's redirects.
    pub(super) when: Option<ResendWhen>,
    /// How many more times it may be sent for `when`.
    pub(super) retries_left: usize,
    /// A cluster's part: its redirects are followed until its deadline.
    pub(super) redirects: Option<Redirects>,
    /// A blocking command, on a connection reserved for the client: sent again, it waits
    /// on a new one.
    pub(super) blocking: Option<Blocking>,
}

/// Where a blocking command's own timeout is among its arguments, so that when its slot moves
/// it is sent again with what is left of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TimeoutArg {
    pub index: usize,
    /// In milliseconds (XREAD BLOCK), else in seconds.
    pub millis: bool,
}

/// How long a blocking command may wait, since when, and where its timeout argument is.
#[derive(Clone, Copy, Debug)]
pub(super) struct Blocking {
    /// `None`: for ever.
    pub(super) wait: Option<std::time::Duration>,
    pub(super) since: Instant,
    pub(super) timeout_at: TimeoutArg,
}

/// How far a cluster's part has been redirected.
pub(super) struct Redirects {
    /// Past it, the client gets the pool's timeout error instead of another redirect.
    pub(super) deadline: Instant,
    /// Redirects followed so far.
    pub(super) hops: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum ResendWhen {
    /// The node failed: the request moves to the next node of its shard (a read on a
    /// replicated memcache shard).
    NodeFails,
    /// The node's reply starts with `prefix`: `first` is sent to it, then the request again
    /// (an EVALSHA that finds its script lost gets a SCRIPT LOAD first).
    Answered { prefix: &'static [u8], first: Bytes },
}

/// A resend to make: which part of which request, and how.
pub(super) struct Retry {
    pub(super) seq: u64,
    pub(super) part: usize,
    pub(super) how: Resend,
    /// Not before then: it waits for a backoff, and every retry after it waits behind it.
    pub(super) not_before: Option<Instant>,
}

pub(super) enum Resend {
    /// To the next node of its shard.
    NextNode,
    /// To the same node, after `0`.
    After(Bytes),
    /// Where a cluster node said.
    Redirect(Redirect),
}

/// Replies owed to the client, in request order.
pub(super) struct Outbox {
    /// Sequence number of the first slot.
    first_seq: u64,
    protocol: Protocol,
    /// How large the client's backend replies are, in bytes (0: none seen yet): it rises at
    /// once with a larger reply and falls slowly, so a client that got large replies a moment
    /// ago is taken to get them still.
    typical_reply: u32,
    /// Allocated on first use and dropped by [`Outbox::shrink`]: an idle client holds none.
    queue: Option<Box<Queue>>,
}

/// What an outbox holds while requests are answered.
#[derive(Default)]
struct Queue {
    slots: VecDeque<Slot>,
    /// Bytes of the replies in `slots` that are ready but wait for an earlier one.
    held: usize,
    buf: BytesMut,
    /// Error replies made since the last [`Outbox::take_errors`], by kind.
    errors: ErrorCounts,
    /// Parts that may be sent again, in request and part order, until their request is
    /// answered.
    sent: VecDeque<Sent>,
    /// Where in `sent` the next reply's part probably is: replies mostly come in order.
    sent_next: usize,
    /// Parts to send again, in the order they are to be sent.
    retries: VecDeque<Retry>,
    /// Requests from before this one were redirected: until they are answered, no later one
    /// is sent (one that went to a node the earlier ones are redirected away from would
    /// overtake them).
    redirected_before: u64,
    /// Requests whose replies the client asked not to get (Redis's CLIENT REPLY), in order.
    muted: VecDeque<u64>,
    /// Keys written by requests not answered yet (`None`: every key), in request order:
    /// invalidated in the near cache again when their request is answered.
    written: VecDeque<(u64, Option<Bytes>)>,
}

impl Outbox {
    pub(super) fn new(protocol: Protocol) -> Outbox {
        Outbox {
            first_seq: 0,
            protocol,
            typical_reply: 0,
            queue: None,
        }
    }

    /// Request `seq` writes `key` (`None`: every key): it is invalidated in the near cache
    /// when the request is answered.
    pub(super) fn invalidate_when_answered(&mut self, seq: u64, key: Option<Bytes>) {
        self.queue().written.push_back((seq, key));
    }

    fn queue(&mut self) -> &mut Queue {
        self.queue.get_or_insert_default()
    }

    /// The slot of request `seq`, if it is still owed.
    fn slot(&mut self, seq: u64) -> Option<&mut Slot> {
        let index = seq.checked_sub(self.first_seq)?;
        self.queue
            .as_mut()?
            .slots
            .get_mut(usize::try_from(index).ok()?)
    }

    /// The replies of the requests from `first` to the last one queued are not to be written.
    pub(super) fn mute_from(&mut self, first: u64) {
        let next = self.next_seq();
        self.queue().muted.extend(first..next);
    }

    /// Requests whose replies are not written yet.
    pub(super) fn pending(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.slots.len())
    }

    /// The sequence number of the oldest request not answered yet.
    pub(super) fn first_unanswered(&self) -> u64 {
        self.first_seq
    }

    /// Bytes of replies ready and not written yet, whether next in order or not.
    pub(super) fn owed(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.held + q.buf.len())
    }

    /// How large the client's backend replies are, if one has come.
    pub(super) fn typical_reply(&self) -> Option<usize> {
        (self.typical_reply > 0).then_some(self.typical_reply as usize)
    }

    /// Replies ready to write, in order.
    pub(super) fn output(&self) -> &[u8] {
        self.queue.as_ref().map_or(&[], |q| &q.buf)
    }

    /// The first `n` bytes of the output were written.
    pub(super) fn consume_output(&mut self, n: usize) {
        let buf = &mut self.queue().buf;
        if n == buf.len() {
            // All of it, as usual: the buffer is reused from its start.
            buf.clear();
        } else {
            bytes::Buf::advance(buf, n);
        }
    }

    /// Adds a Pub/Sub message to the output as it is, after the replies still owed (a
    /// SUBSCRIBE's confirmations come before the channel's first message).
    pub(super) fn push_message(&mut self, message: Bytes) {
        let queue = self.queue();
        match queue.slots.is_empty() {
            true => queue.buf.extend_from_slice(&message),
            false => queue.push_ready(message),
        }
    }

    /// Lets go of the buffers of an idle client, which has nothing owed.
    pub(super) fn shrink(&mut self) {
        self.queue = None;
    }

    /// Error replies made since the last call, by kind.
    pub(super) fn take_errors(&mut self) -> ErrorCounts {
        self.queue
            .as_mut()
            .map(|q| std::mem::take(&mut q.errors))
            .unwrap_or_default()
    }

    /// The next part to send again, if it is due at `now`.
    pub(super) fn take_retry(&mut self, now: Instant) -> Option<Retry> {
        let retries = &mut self.queue.as_mut()?.retries;
        match retries.front()?.not_before {
            Some(at) if at > now => None,
            _ => retries.pop_front(),
        }
    }

    /// Puts `retry` back first in line, to be sent at `at`.
    pub(super) fn defer(&mut self, mut retry: Retry, at: Instant) {
        retry.not_before = Some(at);
        self.queue().retries.push_front(retry);
    }

    /// Whether a part waits to be sent again.
    pub(super) fn has_retries(&self) -> bool {
        self.queue.as_ref().is_some_and(|q| !q.retries.is_empty())
    }

    /// Whether new requests wait for redirected ones sent before them to be answered.
    pub(super) fn behind_redirects(&self) -> bool {
        self.queue
            .as_ref()
            .is_some_and(|q| q.redirected_before > self.first_seq)
    }

    /// Part `part` of request `seq`, if it is kept to be sent again.
    pub(super) fn sent_at(&mut self, seq: u64, part: usize) -> Option<&mut Sent> {
        let sent = &mut self.queue.as_mut()?.sent;
        let at = find(sent, 0, seq, part)?;
        sent.get_mut(at)
    }

    /// Keeps `sent`, a part of the request queued last, until that request is answered.
    pub(super) fn keep(&mut self, sent: Sent) {
        self.queue().sent.push_back(sent);
    }

    /// Answers request `seq` with an error, whatever it awaited.
    pub(super) fn fail(&mut self, seq: u64, e: ClientError) {
        let reply = e.render(self.protocol);
        let len = reply.len();
        let Some(slot) = self.slot(seq) else {
            return;
        };
        let before = std::mem::replace(slot, Slot::Ready(reply));
        let queue = self.queue();
        if let Slot::Ready(replaced) = before {
            queue.held -= replaced.len();
        }
        queue.held += len;
        queue.errors.count(e.kind());
    }

    pub(super) fn next_seq(&self) -> u64 {
        self.first_seq + self.pending() as u64
    }

    /// Queues a reply the proxy made.
    pub(super) fn ready(&mut self, reply: Bytes) {
        self.queue().push_ready(reply);
    }

    /// Queues an error reply.
    pub(super) fn error(&mut self, e: ClientError) {
        self.queue().errors.count(e.kind());
        self.ready(e.render(self.protocol));
    }

    /// Queues the slot of an error answered later, counted now; returns its reply, to be
    /// delivered as the completion of [`Outbox::token`]`(0)` taken before.
    pub(super) fn error_later(&mut self, e: &ClientError) -> Bytes {
        self.queue().errors.count(e.kind());
        self.forwarded();
        e.render(self.protocol)
    }

    /// Queues the slot of a request sent to one backend.
    pub(super) fn forwarded(&mut self) {
        self.queue().slots.push_back(Slot::Forwarded);
    }

    /// The request queued last, forwarded, is a read whose reply `filling` may keep.
    pub(super) fn filling_last(&mut self, filling: Box<Filling>) {
        if let Some(slot @ Slot::Forwarded) = self.queue().slots.back_mut() {
            *slot = Slot::Filling(filling);
        }
    }

    /// Queues the slot of a memcache request whose client asked for no reply.
    pub(super) fn quiet(&mut self, quiet: Quiet) {
        self.queue().slots.push_back(Slot::Quiet(quiet));
    }

    /// Queues the slot of a request whose parts `gather` merges.
    pub(super) fn gathering(&mut self, gather: Gather) {
        self.queue()
            .slots
            .push_back(Slot::Gathering(Box::new(gather)));
    }

    /// The token of part `part` of the next request's reply.
    pub(super) fn token(&self, part: usize) -> Token {
        Token::Reply {
            seq: self.next_seq(),
            part,
        }
    }

    /// Takes in the reply to part `part` of request `seq`.
    pub(super) fn complete(&mut self, seq: u64, part: usize, c: Completion) {
        let protocol = self.protocol;
        let Some(index) = seq.checked_sub(self.first_seq) else {
            return;
        };
        let Some(queue) = self.queue.as_deref_mut() else {
            return;
        };
        if part == PREAMBLE {
            return;
        }
        let found = match queue.sent.is_empty() {
            true => None,
            false => find(&queue.sent, queue.sent_next, seq, part),
        };
        if let Some(at) = found {
            queue.sent_next = at + 1;
        }
        if let Some(at) = found
            && let Some(how) = resend(&queue.sent[at], &c.result)
        {
            if let Resend::Redirect(_) = how {
                queue.redirected_before = self.first_seq + queue.slots.len() as u64;
            }
            let sent = &mut queue.sent[at];
            if let Some(read) = near_cache::plain_read(&sent.payload) {
                (sent.payload, sent.kind) = (read, ReplyKind::Resp);
                match queue.slots.get_mut(index as usize) {
                    Some(slot @ Slot::Filling(_)) => {
                        if let Slot::Filling(f) = std::mem::replace(slot, Slot::Forwarded) {
                            f.resent();
                        }
                    }
                    Some(Slot::Gathering(g)) => g.resent(part),
                    _ => {}
                }
            }
            queue.retries.push_back(Retry {
                seq,
                part,
                how,
                not_before: None,
            });
            return;
        }
        let Some(slot) = queue.slots.get_mut(index as usize) else {
            return;
        };
        let reply = match c.result {
            Ok(reply) => {
                self.typical_reply = typical(self.typical_reply, reply.len());
                Ok(reply)
            }
            Err(e) => {
                queue.errors.count(backend_error_kind(&e));
                Err(*e)
            }
        };
        let ready = match slot {
            Slot::Forwarded => shown(protocol, None, reply),
            Slot::Filling(f) => shown(protocol, None, f.take(reply)),
            Slot::Quiet(quiet) => shown(protocol, Some(*quiet), reply),
            Slot::Gathering(g) => match g.add(part, reply) {
                Some(merged) => merged,
                None => return,
            },
            Slot::Ready(_) => return,
        };
        queue.held += ready.len();
        *slot = Slot::Ready(ready);
    }

    /// Moves every reply that is next in order into the write buffer; the writes among them
    /// invalidate their keys in `near_cache`.
    pub(super) fn collect_ready(&mut self, near_cache: Option<&NearCache>) {
        let Some(queue) = self.queue.as_deref_mut() else {
            return;
        };
        while let Some(Slot::Ready(_)) = queue.slots.front() {
            if let Some(Slot::Ready(reply)) = queue.slots.pop_front() {
                queue.held -= reply.len();
                match queue.muted.front() == Some(&self.first_seq) {
                    true => _ = queue.muted.pop_front(),
                    false => queue.buf.extend_from_slice(&reply),
                }
            }
            self.first_seq += 1;
        }
        if let Some(cache) = near_cache {
            while let Some((seq, key)) = queue.written.front()
                && *seq < self.first_seq
            {
                match key {
                    Some(key) => cache.invalidate(key, InvalidationCause::Write),
                    None => cache.flush(),
                }
                queue.written.pop_front();
            }
        }
        while queue.sent.front().is_some_and(|s| s.seq < self.first_seq) {
            queue.sent.pop_front();
            queue.sent_next = queue.sent_next.saturating_sub(1);
        }
    }
}

impl Queue {
    fn push_ready(&mut self, reply: Bytes) {
        self.held += reply.len();
        self.slots.push_back(Slot::Ready(reply));
    }
}

/// The typical reply size once a reply of `len` bytes came after replies of `typical`: a
/// larger one is taken at once, a smaller one moves it an eighth of the way.
fn typical(typical: u32, len: usize) -> u32 {
    let len = u32::try_from(len).unwrap_or(u32::MAX).max(1);
    match len >= typical {
        true => len,
        false => typical - (typical - len) / 8,
    }
}

/// Where part `part` of request `seq` is in `sent`: usually at `likely`, as replies come in
/// order.
fn find(sent: &VecDeque<Sent>, likely: usize, seq: u64, part: usize) -> Option<usize> {
    match sent.get(likely) {
        Some(s) if (s.seq, s.part) == (seq, part) => Some(likely),
        _ => sent
            .binary_search_by_key(&(seq, part), |s| (s.seq, s.part))
            .ok(),
    }
}

/// Whether `result` calls for sending `sent` again, and how.
fn resend(sent: &Sent, result: &Result<Bytes, Box<BackendError>>) -> Option<Resend> {
    if sent.redirects.is_some()
        && let Ok(reply) = result
        && let Some(redirect) = near_cache::redirect_in(reply)
    {
        return Some(Resend::Redirect(redirect));
    }
    if sent.retries_left == 0 {
        return None;
    }
    match (sent.when.as_ref()?, result) {
        (ResendWhen::NodeFails, Err(_)) => Some(Resend::NextNode),
        (ResendWhen::Answered { prefix, first }, Ok(reply)) if reply.starts_with(prefix) => {
            Some(Resend::After(first.clone()))
        }
        _ => None,
    }
}

/// What the client sees of a single backend reply: the reply or an error, unless it asked for
/// quiet and the command would not have shown it.
fn shown(protocol: Protocol, quiet: Option<Quiet>, reply: Result<Bytes, BackendError>) -> Bytes {
    match (quiet, reply) {
        // A redirect not followed (the request was on a connection of its own) never reaches
        // a client as it is.
        (_, Ok(r))
            if r.first() == Some(&b'-')
                && let Some(e) = ClientError::instead_of_redirect(&r) =>
        {
            e.render(protocol)
        }
        (quiet, Ok(r)) => Quiet::apply(quiet, r),
        (Some(q), Err(_)) if !q.shows_failures => Bytes::new(),
        (_, Err(e)) => ClientError::Backend(e).render(protocol),
    }
}

/// Error replies by kind, in [`ErrorKind::ALL`]'s order.
#[derive(Debug, Default)]
pub(super) struct ErrorCounts(pub [u64; ErrorKind::ALL.len()]);

impl ErrorCounts {
    fn count(&mut self, kind: ErrorKind) {
        self.0[kind as usize] += 1;
    }
}

#[cfg(test)]
mod tests;
