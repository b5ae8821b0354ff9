//! One burst of a client's requests: the loop that serves it while it is active, one handler
//! per kind of wakeup (the inbox, the client's socket, its timers), and the flush after each
//! that writes what is ready and applies the output limits.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Instant;

use bytes::BytesMut;
use tokio::time::Sleep;

use super::{Burst, Frontend, LEAVE_GRACE, READ_WHILE_BLOCKED, Session, fires};
use crate::backend::{Completion, Mailbox};
use crate::metrics::CloseReason;
use crate::server::timing::Timing;

/// A fresh read buffer's size: small, so a burst of idle clients costs little; it doubles
/// while reads fill it.
const FIRST_READ_CHUNK: u32 = 1024;

impl<F: Frontend> Session<F> {
    /// Serves requests until nothing has been in flight or buffered for `linger`
    /// (`Burst::Idle`), or the connection is to close. `leaving`: the pool has asked the
    /// client to leave already. Each wakeup is handled by one of the `on_…` handlers, then
    /// [`Session::flush`] writes what is ready.
    pub(super) async fn burst(&mut self, leaving: bool) -> Burst {
        let mut b = Pass::new(leaving);
        let listing = self.listing.clone();
        let inbox = listing.inbox();
        let linger = self.linger();
        // Armed (`b.quiet`) once everything asked is answered: the burst ends when it fires.
        let lingering = tokio::time::sleep(linger);
        tokio::pin!(lingering);
        if self.fe.hears_pushes() {
            // Messages that arrived while the session was idle.
            self.take_inbox(&mut b);
        }
        loop {
            if b.unparsed && self.has_room() && !b.closing {
                // Room again for requests already read.
                self.parse(&mut b);
            } else {
                let can_read = self.can_read(&b);
                let unwritten = !self.out.output().is_empty() || self.stream.is_holding_output();
                let ended = tokio::select! {
                    biased;
                    // Replies, messages, and what the pool asks of the client.
                    _ = inbox.wait() => self.on_inbox(&mut b),
                    writable = self.stream.writable(), if unwritten => writable.err().map(|_| Burst::Close),
                    read = self.stream.read_some(&mut b.read_buf, &mut b.read_chunk), if can_read => {
                        self.on_read(&mut b, matches!(read, Ok(n) if n > 0))
                    }
                    // Only while reading: a client the proxy stops reading from is not slow.
                    _ = fires(&mut b.incomplete), if can_read => Some(self.close_for_slow_request()),
                    _ = fires(&mut b.unread_too_long) => {
                        Some(self.close_for_unread_replies("max_client_output_bytes"))
                    }
                    _ = &mut lingering, if b.quiet => Some(self.go_idle()),
                };
                if let Some(ended) = ended {
                    return ended;
                }
            }
            let was_quiet = b.quiet;
            if let Some(ended) = self.flush(&mut b) {
                return ended;
            }
            // Asked to leave: closed between requests once nothing more waits on its socket.
            if b.leave_by.is_some() && b.between_requests && !self.has_input_waiting().await {
                return Burst::Close;
            }
            if b.quiet && !was_quiet {
                let at = tokio::time::Instant::now() + linger;
                lingering.as_mut().reset(at);
            }
        }
    }

    /// Whether the client is read now. While blocked it is still read (up to a bound), so that
    /// its leaving is seen and its blocking command's connection closed.
    fn can_read(&mut self, b: &Pass) -> bool {
        !b.closing
            && (self.has_room() && !b.unparsed
                || self.carrier.is_blocked() && b.read_buf.len() < READ_WHILE_BLOCKED)
    }

    /// Parses and routes what was read, for as long as there is room.
    fn parse(&mut self, b: &mut Pass) {
        let (first, at) = (self.out.next_seq(), Instant::now());
        self.carrier.in_flight_mut().read_at = at;
        let (fe, mut cx) = self.split();
        b.closing = fe.handle_input(&mut cx, &mut b.read_buf);
        b.timing.read(first, self.out.next_seq(), at);
        b.unparsed = !b.read_buf.is_empty() && !self.has_room();
    }

    /// The inbox woke the session: what the pool asks of the client (close, leave), replies
    /// and messages, and resends they call for.
    fn on_inbox(&mut self, b: &mut Pass) -> Option<Burst> {
        let signals = self.listing.take_signals();
        if signals.kill() {
            self.count_kill(signals);
            return Some(Burst::Close);
        }
        if signals.leave() && b.leave_by.is_none() {
            b.leave_by = Some(Instant::now() + LEAVE_GRACE);
        }
        self.take_inbox(b);
        if self.out.has_retries() {
            self.cx().resend();
        }
        None
    }

    fn take_inbox(&mut self, b: &mut Pass) {
        self.listing.inbox().take(&mut b.completions);
        self.complete_all(&mut b.completions);
    }

    /// The client sent something (`got`), or is done sending (`!got`).
    fn on_read(&mut self, b: &mut Pass, got: bool) -> Option<Burst> {
        if !got {
            // The client is done sending: answer what it asked, then close; but like Redis, do
            // not wait on its blocking commands, which may never return (their reserved
            // connections close with the session).
            if self.fe.is_mid_request(&b.read_buf) {
                tracing::debug!(
                    session = self.listing.id,
                    "client closed in the middle of a request"
                );
            }
            if self.carrier.holds_any() {
                return Some(Burst::Close);
            }
            b.closing = true;
            return None;
        }
        let first = self.out.next_seq();
        self.parse(b);
        // The bound is on one request: it starts again when one completes.
        let bound = self.pool.config.clients.request_timeout;
        let progressed = self.out.next_seq() > first;
        match (&mut b.incomplete, bound) {
            _ if !self.fe.is_mid_request(&b.read_buf) || b.unparsed => b.incomplete = None,
            (Some(timer), Some(t)) if progressed => {
                timer.as_mut().reset(tokio::time::Instant::now() + t);
            }
            (None, Some(t)) => b.incomplete = Some(Box::pin(tokio::time::sleep(t))),
            _ => {}
        }
        None
    }

    /// A request stayed incomplete too long (a slow sender): the client is closed.
    fn close_for_slow_request(&self) -> Burst {
        tracing::debug!(
            session = self.listing.id,
            "a request stayed incomplete too long: client closed"
        );
        self.pool.metrics.closed(CloseReason::RequestTimeout);
        Burst::Close
    }

    /// The burst lingered with nothing to do: its buffers go.
    fn go_idle(&mut self) -> Burst {
        self.out.shrink();
        match &mut self.carrier.in_flight {
            Some(f) if !f.held.is_empty() => f.recorded = VecDeque::new(),
            _ => self.carrier.in_flight = None,
        }
        Burst::Idle
    }

    /// After each wakeup: writes every reply next in order (what the socket takes now),
    /// applies the output limits, times what was answered, and says whether the burst ends
    /// (closing, or leaving between requests) and whether it is quiet.
    fn flush(&mut self, b: &mut Pass) -> Option<Burst> {
        self.out.collect_ready(self.pool.near_cache.as_deref());
        if self.carrier.holds_any() {
            self.cx().give_back_done();
        }
        // Counted before the client can see them.
        if let Some(cache) = &self.pool.near_cache
            && let Some(f) = &mut self.carrier.in_flight
            && f.cache_reads != [0; 2]
        {
            cache.count_reads(std::mem::take(&mut f.cache_reads));
        }
        let errors = self.out.take_errors();
        for (counter, n) in self.pool.metrics.errors.iter().zip(errors.0) {
            if n > 0 {
                counter.inc_by(n);
            }
        }
        if !self.out.output().is_empty() || self.stream.is_holding_output() {
            match self.stream.try_write(self.out.output()) {
                Ok(n) => self.out.consume_output(n),
                Err(_) => return Some(Burst::Close),
            }
        }
        if let Some(ended) = self.apply_output_limits(b) {
            return Some(ended);
        }
        self.time_answered(b);
        let answered_all = self.out.pending() == 0
            && self.out.output().is_empty()
            && !self.stream.is_holding_output();
        if answered_all && b.closing {
            return Some(Burst::Close);
        }
        if let Some(by) = b.leave_by {
            // Past the grace, a client that keeps sending is closed once answered.
            b.closing |= Instant::now() >= by;
            b.between_requests = answered_all && !self.fe.is_mid_request(&b.read_buf);
        }
        b.quiet = answered_all && b.read_buf.is_empty();
        None
    }

    /// Closes a client owed more than the hard limit at once, and one over the soft limit
    /// once it has been for `client_output_timeout` (a subscriber at once: a publisher cannot
    /// be made to wait).
    fn apply_output_limits(&mut self, b: &mut Pass) -> Option<Burst> {
        let limits = &self.pool.config.clients;
        if self.out.owed() > limits.max_output_hard_bytes {
            return Some(self.close_for_unread_replies("max_client_output_hard_bytes"));
        }
        if self.out.owed() <= limits.max_output_bytes {
            b.unread_too_long = None;
        } else if self.fe.is_listening() {
            return Some(self.close_for_unread_replies("max_client_output_bytes"));
        } else if b.unread_too_long.is_none() {
            b.unread_too_long = Some(Box::pin(tokio::time::sleep(limits.output_timeout)));
        }
        None
    }

    /// Records the latency of the requests answered since the last look, and logs the slow.
    fn time_answered(&mut self, b: &mut Pass) {
        let answered = self.out.first_unanswered();
        let (metrics, slowlog) = (&self.pool.metrics, &self.pool.slowlog);
        let mut none = VecDeque::new();
        let recorded = self.carrier.recorded().unwrap_or(&mut none);
        let slow = b
            .timing
            .answered(answered, &metrics.latency, recorded, slowlog);
        for (request, took) in slow {
            self.fe.log_slow(&self.pool, &self.listing, request, took);
        }
    }
}

/// What a burst keeps between its wakeups.
struct Pass {
    read_buf: BytesMut,
    /// How much the next read asks for: it doubles while reads fill it, from
    /// [`FIRST_READ_CHUNK`] in each burst.
    read_chunk: u32,
    completions: Vec<Completion>,
    timing: Timing,
    /// Armed while a request is incomplete: a client that sends one slowly is closed.
    incomplete: Option<Pin<Box<Sleep>>>,
    /// Armed while the client holds more unread replies than it may: then it is closed.
    unread_too_long: Option<Pin<Box<Sleep>>>,
    /// Requests read but left unparsed for want of room (see [`Session::has_room`]).
    unparsed: bool,
    /// The session closes once everything asked is answered.
    closing: bool,
    /// Asked to leave: the client is still read until then, and closed between requests,
    /// once everything it sent is answered and nothing more is waiting on its socket.
    leave_by: Option<Instant>,
    /// Everything asked is answered and nothing is left unread.
    quiet: bool,
    /// Asked to leave, the client has everything it asked answered and is not in the middle
    /// of a request.
    between_requests: bool,
}

impl Pass {
    fn new(leaving: bool) -> Pass {
        Pass {
            read_buf: BytesMut::new(),
            read_chunk: FIRST_READ_CHUNK,
            completions: Vec::new(),
            timing: Timing::default(),
            incomplete: None,
            unread_too_long: None,
            unparsed: false,
            closing: false,
            leave_by: leaving.then(|| Instant::now() + LEAVE_GRACE),
            quiet: false,
            between_requests: false,
        }
    }
}
