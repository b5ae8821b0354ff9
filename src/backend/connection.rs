//! One pipelined backend connection: requests from many sessions are written in batches, replies
//! are matched to them in order, and every request is bounded by the pool's timeout. Full
//! duplex: reads, writes, new requests and deadlines are polled in one loop, so a write the
//! node does not take (it stopped reading) never holds back its replies or a deadline.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{Instant, sleep_until};

use super::inbox::Late;
use super::opening::{Framer, connect, identify};
use super::{ConnSettings, Delivery, Failure, Job, NodeShared, ReplyTo, tracking};
use crate::metrics::LatencyCounts;
use crate::net::{Stream, Unwritten};
use crate::protocol::{ReplyError, ReplyKind};

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Requests taken off the queue for one write, at most…
const MAX_BATCH: usize = 1024;
const FIRST_READ_CHUNK: u32 = 16 * 1024;
/// …and bytes of requests taken but not yet written, past which no more are taken.
const MAX_UNWRITTEN: usize = 4 * 1024 * 1024;

/// The connection's life: connect (now with preconnect, else on the first request), serve until
/// the connection fails, fail what was in flight, and reconnect, backing off while the node
/// refuses. Ends when the node is dropped and nothing is in flight. A reserved connection
/// (`reserved_id`: where to keep the id the server gives it, for CLIENT UNBLOCK) ends as soon
/// as its client drops it, in flight or not.
pub(super) async fn run(
    shared: Arc<NodeShared>,
    settings: Arc<ConnSettings>,
    mut rx: UnboundedReceiver<Job>,
    reserved_id: Option<Arc<AtomicU64>>,
) {
    let reserved = reserved_id.is_some();
    let mut queued: VecDeque<Queued> = VecDeque::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if queued.is_empty() && !settings.preconnect {
            match rx.recv().await {
                Some(job) => queued.push_back(Queued::now(job)),
                None => return,
            }
        }
        // Shared connections of a pool with a near cache track the keys they read.
        let tracking = shared.tracking.as_ref().filter(|_| !reserved);
        let mut followed = None;
        let connected = match (connect(&settings).await, &reserved_id, tracking) {
            (Ok(stream), Some(id), _) => identify(stream, &settings, id).await,
            (Ok(stream), None, Some(tracking)) => {
                match tracking::start(&stream, &shared, &settings, tracking).await {
                    Ok(generation) => {
                        followed = Some(generation);
                        Ok(stream)
                    }
                    Err(e) => Err(e),
                }
            }
            (connected, ..) => connected,
        };
        match connected {
            Ok(stream) => {
                backoff = FIRST_BACKOFF;
                shared.metrics.connects.inc();
                shared.metrics.connections.inc();
                let conn = Serving {
                    stream,
                    reserved,
                    followed,
                };
                let ended = serve(conn, &shared, &settings, &mut rx, &mut queued).await;
                shared.metrics.connections.dec();
                if let Some(tracking) = tracking {
                    // What the server tracked for the connection is gone with it.
                    tracking.lost();
                }
                match ended {
                    Some(failure) => {
                        tracing::warn!(node = %shared.label, "backend connection failed: {failure}")
                    }
                    None => return,
                }
                if reserved {
                    // Its client's state (WATCH, a transaction) died with it: a new
                    // connection would silently lack it. What was sent to it fails, and so
                    // does anything sent later.
                    rx.close();
                    let pending = (queued.drain(..).map(|q| q.job))
                        .chain(std::iter::from_fn(|| rx.try_recv().ok()));
                    fail_all(&shared, pending.map(|j| j.reply_to), &Failure::Closed);
                    return;
                }
            }
            Err(why) => {
                tracing::warn!(node = %shared.label, "cannot connect: {why}");
                shared.record_failure(&why);
                let failure = Failure::Unreachable(why);
                fail_all(&shared, queued.drain(..).map(|q| q.job.reply_to), &failure);
                // Until the next attempt, requests fail at once instead of waiting.
                let retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                loop {
                    tokio::select! {
                        _ = sleep_until(retry_at) => break,
                        job = rx.recv() => match job {
                            Some(job) => job.reply_to.send(Err(shared.error(failure.clone()))),
                            None => return,
                        },
                    }
                }
            }
        }
    }
}

fn fail_all(shared: &NodeShared, requests: impl Iterator<Item = ReplyTo>, failure: &Failure) {
    let mut n = 0;
    for to in requests {
        to.send(Err(shared.error(failure.clone())));
        n += 1;
    }
    shared.metrics.errors.inc_by(n);
}

/// An established connection, and what it is for.
struct Serving {
    stream: Stream,
    reserved: bool,
    /// A tracking connection's listener generation (see `tracking`).
    followed: Option<u64>,
}

/// Serves one established connection. Returns why it ended, or `None` when the node was dropped
/// and every request in flight was answered.
async fn serve(
    conn: Serving,
    shared: &NodeShared,
    settings: &ConnSettings,
    rx: &mut UnboundedReceiver<Job>,
    queued: &mut VecDeque<Queued>,
) -> Option<Failure> {
    let Serving {
        stream,
        reserved,
        mut followed,
    } = conn;
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut read_buf = BytesMut::new();
    let mut read_chunk = FIRST_READ_CHUNK;
    let mut unwritten = Unwritten::default();
    let mut framer = Framer::new(settings);
    let mut delivery = Delivery::default();
    let mut accepting = true;
    // One timer for the connection, armed at the next thing to check: the earliest deadline of
    // a request still waiting for its reply, or when the connection will have been silent too
    // long. Moved earlier when a new request's deadline comes first (one sent after an older
    // request timed out, whose reply is still awaited), else only when it fires.
    let timer = sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed_at: Option<Instant> = None;
    // When the node last sent anything.
    let mut heard = Instant::now();
    let silence = silence_bound(settings.timeout);
    // How many times writes had moved away from the node when what is in flight was sent.
    let mut replacements = shared.replacements.load(Ordering::Relaxed);
    let failure = loop {
        let now_replaced = shared.replacements.load(Ordering::Relaxed);
        if now_replaced != replacements {
            if !in_flight.is_empty() {
                break Failure::Replaced;
            }
            replacements = now_replaced;
        }
        // A new listener hears the node's invalidations: reads written from now on are
        // tracked for it.
        if let (Some(tracking), Some(followed)) = (&shared.tracking, &mut followed)
            && let Some(command) = tracking.redirect(followed)
        {
            unwritten.push(command);
            let now = Instant::now();
            in_flight.push_back(InFlight {
                waiter: Waiter::Nobody,
                kind: ReplyKind::Resp,
                sent: now,
                deadline: now + settings.timeout,
                waits: false,
            });
        }
        // Taken for writing while the node takes what was written before; the rest waits in
        // the queue, its deadlines running from when it was queued.
        if !queued.is_empty() && unwritten.len() < MAX_UNWRITTEN {
            let mut taken = 0;
            while unwritten.len() < MAX_UNWRITTEN
                && let Some(Queued { job, since }) = queued.pop_front()
            {
                unwritten.push(job.payload);
                in_flight.push_back(InFlight {
                    waiter: Waiter::Client(job.reply_to),
                    kind: job.kind,
                    sent: since,
                    deadline: since + settings.timeout + job.timeout.unwrap_or_default(),
                    waits: job.timeout.is_some(),
                });
                taken += 1;
            }
            shared.metrics.requests.inc_by(taken);
        }
        // Written as far as the socket takes it now; the rest when it is writable again, while
        // replies are read and deadlines kept meanwhile.
        if let Err(e) = unwritten.write_to(&stream) {
            break e.into();
        }
        if !accepting && in_flight.is_empty() && queued.is_empty() {
            return None;
        }
        let unsent = queued.front().map(|q| q.deadline(settings.timeout));
        if let Some(at) = earliest(next_check(&in_flight, heard, silence), unsent)
            && armed_at.is_none_or(|armed| at < armed)
        {
            timer.as_mut().reset(at);
            armed_at = Some(at);
        }
        let waiting = !unwritten.is_empty() || stream.is_holding_output();
        tokio::select! {
            biased;
            read = stream.read_some(&mut read_buf, &mut read_chunk) => {
                match read {
                    Ok(0) => break Failure::Closed,
                    Err(e) => break e.into(),
                    Ok(_) => {}
                }
                heard = Instant::now();
                // Replies to what was sent before writes moved away are not handed on.
                if shared.replacements.load(Ordering::Relaxed) != replacements {
                    break Failure::Replaced;
                }
                if let Err(failure) = answer(shared, &mut framer, &mut read_buf, &mut in_flight, &mut delivery) {
                    break failure;
                }
                shared.record_success();
            }
            writable = stream.writable(), if waiting => {
                if let Err(e) = writable {
                    break e.into();
                }
            }
            job = rx.recv(), if accepting => match job {
                Some(job) => {
                    // Written after the worker's other ready sessions and its next look at
                    // its sockets: their requests join this write. Fewer, larger writes cost
                    // the proxy and the node less per request than one write per wakeup.
                    tokio::task::yield_now().await;
                    let since = Instant::now();
                    queued.push_back(Queued { job, since });
                    for _ in 1..MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => queued.push_back(Queued { job, since }),
                            Err(_) => break,
                        }
                    }
                }
                // A reserved connection's client is gone: close now, so a blocked command
                // does not keep the connection.
                None if reserved => return None,
                None => accepting = false,
            },
            _ = shared.replaced_now.notified(), if !in_flight.is_empty() => {}
            _ = &mut timer, if armed_at.is_some() => {
                armed_at = None;
                let now = Instant::now();
                // A request past its deadline gets its error now, and the connection is kept:
                // its late reply is dropped when it comes, and requests behind it still get
                // theirs.
                let mut expired = 0;
                for request in in_flight.iter_mut().take_while(|r| r.deadline <= now) {
                    if let Waiter::Client(to) = std::mem::replace(&mut request.waiter, Waiter::Nobody) {
                        request.waiter = Waiter::Late {
                            _held: to.time_out(shared.error(Failure::Timeout(settings.timeout))),
                        };
                        expired += 1;
                    }
                }
                // What a node that stopped reading never took fails too, as never sent.
                while let Some(q) = queued.front()
                    && q.deadline(settings.timeout) <= now
                    && let Some(q) = queued.pop_front()
                {
                    q.job.reply_to.send(Err(shared.error(Failure::NotSent(settings.timeout))));
                    expired += 1;
                }
                if expired > 0 {
                    shared.metrics.errors.inc_by(expired);
                    // A node that keeps timing out is failing, as the health checks see it.
                    shared.record_failure(&Failure::Timeout(settings.timeout));
                }
                // Only a node silent for much longer than a request may take is given up.
                if in_flight.front().and_then(|oldest| silent_at(oldest, heard, silence)).is_some_and(|at| now >= at) {
                    break Failure::Silent(silence);
                }
            }
        }
    };
    // Recorded before the requests in flight fail, so a retry sees the node's new state. A
    // node replaced as master has not failed.
    if failure != Failure::Replaced {
        shared.record_failure(&failure);
    }
    // FIFO matching is lost with the connection: everything still unanswered fails.
    fail_all(
        shared,
        in_flight.drain(..).filter_map(|f| f.waiter.client()),
        &failure,
    );
    Some(failure)
}

/// How long a connection with requests in flight may stay silent before it is reset: well past
/// the request timeout, so one slow request does not fail the requests queued behind it.
fn silence_bound(timeout: Duration) -> Duration {
    (timeout * 4).max(Duration::from_secs(2))
}

/// When the connection should next look at its requests: the first unanswered one's deadline,
/// or when it will have been silent too long.
fn next_check(
    in_flight: &VecDeque<InFlight>,
    heard: Instant,
    silence: Duration,
) -> Option<Instant> {
    let silent_at = silent_at(in_flight.front()?, heard, silence);
    let deadline = in_flight
        .iter()
        .find(|r| matches!(r.waiter, Waiter::Client(_)))
        .map(|r| r.deadline);
    earliest(deadline, silent_at)
}

/// When the connection is given up if the node stays silent while `oldest` is its oldest
/// request; never while that request waits by design (a blocking command, silent until data
/// comes or its own timeout passes, which bounds it instead).
fn silent_at(oldest: &InFlight, heard: Instant, silence: Duration) -> Option<Instant> {
    (!oldest.waits).then(|| heard.max(oldest.sent) + silence)
}

/// Who waits for a request's reply.
enum Waiter {
    Client(ReplyTo),
    /// The request timed out: its client has its error, its reply is dropped when it comes,
    /// and until then (or until the connection fails) it still counts against the client's
    /// in-flight bound.
    Late {
        _held: Late,
    },
    /// Nobody: a command the connection sends itself (CLIENT TRACKING), or a timed-out
    /// request's while its waiter is replaced.
    Nobody,
}

impl Waiter {
    /// Where the reply goes, unless the request timed out.
    fn client(self) -> Option<ReplyTo> {
        match self {
            Waiter::Client(to) => Some(to),
            Waiter::Late { .. } | Waiter::Nobody => None,
        }
    }
}

/// A request taken for the node and not written yet, and since when.
struct Queued {
    job: Job,
    since: Instant,
}

impl Queued {
    fn now(job: Job) -> Queued {
        Queued {
            job,
            since: Instant::now(),
        }
    }

    /// When it fails if it is still not written: the pool's `timeout` (and a blocking
    /// command's own) from when it was queued.
    fn deadline(&self, timeout: Duration) -> Instant {
        self.since + timeout + self.job.timeout.unwrap_or_default()
    }
}

/// The earlier of two instants, if either is.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A request written to the backend and not answered yet.
struct InFlight {
    waiter: Waiter,
    kind: ReplyKind,
    /// When it was queued: its latency counts its wait to be written.
    sent: Instant,
    deadline: Instant,
    /// Whether it has a timeout of its own: a blocking command's, which may be silent for as
    /// long as it asked to wait.
    waits: bool,
}

/// Removes `range` from `buf`: at the front, without a copy.
fn set_aside(buf: &mut BytesMut, range: std::ops::Range<usize>) {
    if range.start == 0 {
        let _ = buf.split_to(range.end);
    } else {
        let after = buf.split_off(range.start);
        buf.extend_from_slice(&after[range.len()..]);
    }
}

/// Hands every complete reply in `buf` to the request waiting for it.
fn answer(
    shared: &NodeShared,
    framer: &mut Framer,
    buf: &mut BytesMut,
    in_flight: &mut VecDeque<InFlight>,
    delivery: &mut Delivery,
) -> Result<(), Failure> {
    let now = Instant::now();
    let mut latency = LatencyCounts::default();
    let outcome = loop {
        if buf.is_empty() {
            break Ok(());
        }
        let (done, parts) = framer.partial;
        if framer.pushes && buf.get(done) == Some(&b'>') {
            // A push is no request's reply: matched to one, it would shift every later reply.
            match framer.resp.scan(&buf[done..]) {
                Ok(Some(len)) => {
                    set_aside(buf, done..done + len);
                    tracing::debug!(node = %shared.label, "a push frame no request asked for was set aside");
                    continue;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(Failure::BadReply(e.into())),
            }
        }
        let Some(kind) = in_flight.front().map(|f| f.kind) else {
            break Err(Failure::BadReply(ReplyError::Unsolicited));
        };
        match framer.scan(&buf[done..], kind) {
            Ok(Some(len)) => {
                if let ReplyKind::Resps(n) = kind
                    && parts + 1 < n
                {
                    framer.partial = (done + len, parts + 1);
                    continue;
                }
                framer.partial = (0, 0);
                let reply = buf.split_to(done + len).freeze();
                if reply.first() == Some(&b'-') && reply.starts_with(b"-READONLY") {
                    // A write reached a node that is a replica now: learn its role at once.
                    shared.check_now.notify_one();
                }
                if let Some(f) = in_flight.pop_front() {
                    let took = now.saturating_duration_since(f.sent);
                    latency.observe(took, 1);
                    if let Some(to) = f.waiter.client() {
                        delivery.add(to, Ok(reply), took);
                    }
                }
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(Failure::BadReply(e)),
        }
    };
    delivery.flush();
    shared.metrics.latency.add(&mut latency);
    outcome
}

#[cfg(test)]
mod tests;
