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
use tokio::time::{Instant, sleep_until, timeout};

use super::{ConnSettings, ConnectError, Delivery, Failure, Job, NodeShared, ReplyTo};
use crate::config::Protocol;
use crate::metrics::LatencyCounts;
use crate::net::Stream;
use crate::protocol::resp::encode;
use crate::protocol::{ReplyError, ReplyKind, memcache, resp};

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Requests taken off the queue for one write, at most…
const MAX_BATCH: usize = 1024;
const FIRST_READ_CHUNK: u32 = 16 * 1024;
/// …and bytes of requests taken but not yet written, past which no more are taken.
const MAX_UNWRITTEN: usize = 4 * 1024 * 1024;
const FIRST_WRITE_BUFFER: usize = 16 * 1024;
/// The largest write buffer kept once empty.
const KEPT_WRITE_BUFFER: usize = 1024 * 1024;

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
    let mut queued: VecDeque<Job> = VecDeque::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        if queued.is_empty() && !settings.preconnect {
            match rx.recv().await {
                Some(job) => queued.push_back(job),
                None => return,
            }
        }
        let connected = match (connect(&settings).await, &reserved_id) {
            (Ok(stream), Some(id)) => identify(stream, &settings, id).await,
            (connected, _) => connected,
        };
        match connected {
            Ok(stream) => {
                backoff = FIRST_BACKOFF;
                shared.metrics.connects.inc();
                shared.metrics.connections.inc();
                let ended = serve(stream, &shared, &settings, &mut rx, &mut queued, reserved).await;
                shared.metrics.connections.dec();
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
                    let pending = queued
                        .drain(..)
                        .chain(std::iter::from_fn(|| rx.try_recv().ok()));
                    fail_all(&shared, pending.map(|j| j.reply_to), &Failure::Closed);
                    return;
                }
            }
            Err(why) => {
                tracing::warn!(node = %shared.label, "cannot connect: {why}");
                shared.record_failure(&why);
                let failure = Failure::Unreachable(why);
                fail_all(&shared, queued.drain(..).map(|j| j.reply_to), &failure);
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

/// Opens a connection and runs the handshake, within the pool's timeout.
pub(super) async fn connect(settings: &ConnSettings) -> Result<Stream, ConnectError> {
    let attempt = async {
        let mut stream = Stream::connect(&settings.addr.host, settings.addr.port).await?;
        if let Some(tls) = &settings.tls {
            stream = stream
                .connect_tls(tls)
                .await
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
        }
        if settings.handshake_replies > 0 {
            let handshake = |f: Failure| ConnectError::Handshake(Box::new(f));
            stream
                .write_all(&settings.handshake)
                .await
                .map_err(|e| handshake(e.into()))?;
            let mut buf = BytesMut::with_capacity(256);
            for _ in 0..settings.handshake_replies {
                let reply = read_reply(&stream, &mut buf, settings, ReplyKind::Resp)
                    .await
                    .map_err(handshake)?;
                if reply.first() == Some(&b'-') {
                    let text = String::from_utf8_lossy(&reply[1..]).trim_end().to_string();
                    return Err(ConnectError::Refused(text));
                }
            }
        }
        Ok(stream)
    };
    timeout(settings.timeout, attempt)
        .await
        .unwrap_or(Err(ConnectError::Timeout(settings.timeout)))
}

/// Asks the server the connection's id (CLIENT ID) and keeps it in `id`.
async fn identify(
    stream: Stream,
    settings: &ConnSettings,
    id: &AtomicU64,
) -> Result<Stream, ConnectError> {
    let failed = |f: Failure| ConnectError::Handshake(Box::new(f));
    let mut out = BytesMut::new();
    encode::command(&mut out, [&b"CLIENT"[..], b"ID"].into_iter());
    let asked = async {
        stream.write_all(&out).await.map_err(|e| failed(e.into()))?;
        let mut buf = BytesMut::with_capacity(64);
        let reply = read_reply(&stream, &mut buf, settings, ReplyKind::Resp)
            .await
            .map_err(failed)?;
        let text = std::str::from_utf8(&reply).unwrap_or_default();
        match text
            .strip_prefix(':')
            .and_then(|n| n.trim_end().parse().ok())
        {
            Some(n) => Ok(n),
            None => Err(ConnectError::Refused(format!(
                "CLIENT ID answered {}",
                text.trim_end()
            ))),
        }
    };
    let n = timeout(settings.timeout, asked)
        .await
        .unwrap_or(Err(ConnectError::Timeout(settings.timeout)))?;
    id.store(n, Ordering::Relaxed);
    Ok(stream)
}

/// Finds where each reply ends, in the protocol of the request it answers.
struct Framer {
    resp: resp::ReplyScanner,
    memcache: memcache::ReplyScanner,
    /// A Redis connection, on which a RESP3 push frame (`>`) may come that answers no request.
    pushes: bool,
}

impl Framer {
    fn new(settings: &ConnSettings) -> Framer {
        Framer {
            resp: resp::ReplyScanner::new(settings.max_reply_depth),
            memcache: memcache::ReplyScanner::default(),
            pushes: settings.protocol == Protocol::Redis,
        }
    }

    /// The length of the complete reply at the start of `buf`, if it is complete.
    fn scan(&mut self, buf: &[u8], kind: ReplyKind) -> Result<Option<usize>, ReplyError> {
        Ok(match kind {
            ReplyKind::Resp => self.resp.scan(buf)?,
            ReplyKind::Memcache(shape) => self.memcache.scan(buf, shape)?,
        })
    }
}

/// Reads one complete reply from a stream that has nothing else in flight.
pub(super) async fn read_reply(
    stream: &Stream,
    buf: &mut BytesMut,
    settings: &ConnSettings,
    kind: ReplyKind,
) -> Result<BytesMut, Failure> {
    let mut framer = Framer::new(settings);
    let mut chunk = 256;
    loop {
        if let Some(len) = framer.scan(buf, kind).map_err(Failure::BadReply)? {
            return Ok(buf.split_to(len));
        }
        if stream.read_some(buf, &mut chunk).await? == 0 {
            return Err(Failure::Closed);
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

/// Serves one established connection. Returns why it ended, or `None` when the node was dropped
/// and every request in flight was answered.
async fn serve(
    stream: Stream,
    shared: &NodeShared,
    settings: &ConnSettings,
    rx: &mut UnboundedReceiver<Job>,
    queued: &mut VecDeque<Job>,
    reserved: bool,
) -> Option<Failure> {
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut read_buf = BytesMut::new();
    let mut read_chunk = FIRST_READ_CHUNK;
    let mut write_buf = BytesMut::with_capacity(FIRST_WRITE_BUFFER);
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
        if !queued.is_empty() {
            let now = Instant::now();
            shared.metrics.requests.inc_by(queued.len() as u64);
            for job in queued.drain(..) {
                write_buf.extend_from_slice(&job.payload);
                in_flight.push_back(InFlight {
                    reply_to: Some(job.reply_to),
                    kind: job.kind,
                    sent: now,
                    deadline: now + settings.timeout + job.timeout.unwrap_or_default(),
                    waits: job.timeout.is_some(),
                });
            }
        }
        // Written as far as the socket takes it now; the rest when it is writable again, while
        // replies are read and deadlines kept meanwhile.
        if let Err(e) = write_some(&stream, &mut write_buf) {
            break e.into();
        }
        if !accepting && in_flight.is_empty() {
            return None;
        }
        if let Some(at) = next_check(&in_flight, heard, silence)
            && armed_at.is_none_or(|armed| at < armed)
        {
            timer.as_mut().reset(at);
            armed_at = Some(at);
        }
        let unwritten = !write_buf.is_empty() || stream.is_holding_output();
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
            writable = stream.writable(), if unwritten => {
                if let Err(e) = writable {
                    break e.into();
                }
            }
            // While much is unwritten (a node that reads slowly), no more is taken: the jobs
            // wait in the queue, and their deadlines still run from when they are written.
            job = rx.recv(), if accepting && write_buf.len() < MAX_UNWRITTEN => match job {
                Some(job) => {
                    queued.push_back(job);
                    // Written after the worker's other ready sessions and its next look at
                    // its sockets: their requests join this write. Fewer, larger writes cost
                    // the proxy and the node less per request than one write per wakeup.
                    tokio::task::yield_now().await;
                    let mut bytes =
                        write_buf.len() + queued.iter().map(|j| j.payload.len()).sum::<usize>();
                    while queued.len() < MAX_BATCH && bytes < MAX_UNWRITTEN {
                        match rx.try_recv() {
                            Ok(job) => {
                                bytes += job.payload.len();
                                queued.push_back(job);
                            }
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
                    if let Some(to) = request.reply_to.take() {
                        to.send(Err(shared.error(Failure::Timeout(settings.timeout))));
                        expired += 1;
                    }
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
        in_flight.drain(..).filter_map(|f| f.reply_to),
        &failure,
    );
    Some(failure)
}

/// Writes what the socket takes of `buf` now. A buffer that grew for a large batch is let go
/// once written, so a spike does not hold its memory for the connection's life.
fn write_some(stream: &Stream, buf: &mut BytesMut) -> std::io::Result<()> {
    if buf.is_empty() && !stream.is_holding_output() {
        return Ok(());
    }
    let n = stream.try_write(buf)?;
    bytes::Buf::advance(buf, n);
    if buf.is_empty() && buf.capacity() > KEPT_WRITE_BUFFER {
        *buf = BytesMut::with_capacity(FIRST_WRITE_BUFFER);
    }
    Ok(())
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
        .find(|r| r.reply_to.is_some())
        .map(|r| r.deadline);
    match (deadline, silent_at) {
        (Some(d), Some(s)) => Some(d.min(s)),
        (d, s) => d.or(s),
    }
}

/// When the connection is given up if the node stays silent while `oldest` is its oldest
/// request; never while that request waits by design (a blocking command, silent until data
/// comes or its own timeout passes, which bounds it instead).
fn silent_at(oldest: &InFlight, heard: Instant, silence: Duration) -> Option<Instant> {
    (!oldest.waits).then(|| heard.max(oldest.sent) + silence)
}

/// A request written to the backend and not answered yet.
struct InFlight {
    /// Where the reply goes; `None` once the request has timed out (its reply is dropped).
    reply_to: Option<ReplyTo>,
    kind: ReplyKind,
    sent: Instant,
    deadline: Instant,
    /// Whether it has a timeout of its own: a blocking command's, which may be silent for as
    /// long as it asked to wait.
    waits: bool,
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
        if framer.pushes && buf[0] == b'>' {
            // A push is no request's reply: matched to one, it would shift every later reply.
            match framer.resp.scan(buf) {
                Ok(Some(len)) => {
                    let _ = buf.split_to(len);
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
        match framer.scan(buf, kind) {
            Ok(Some(len)) => {
                let reply = buf.split_to(len).freeze();
                if reply.first() == Some(&b'-') && reply.starts_with(b"-READONLY") {
                    // A write reached a node that is a replica now: learn its role at once.
                    shared.check_now.notify_one();
                }
                if let Some(f) = in_flight.pop_front() {
                    let took = now.saturating_duration_since(f.sent);
                    latency.observe(took, 1);
                    if let Some(to) = f.reply_to {
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
mod tests {
    use super::*;

    #[derive(Debug, Default)]
    struct Session(crate::backend::Inbox);

    impl crate::backend::Mailbox for Session {
        fn inbox(&self) -> &crate::backend::Inbox {
            &self.0
        }
    }

    fn request(sent: Instant, deadline: Instant, waits: bool) -> InFlight {
        let to = ReplyTo {
            inbox: Arc::new(Session::default()),
            token: crate::backend::Token::Push,
        };
        InFlight {
            reply_to: Some(to),
            kind: ReplyKind::Resp,
            sent,
            deadline,
            waits,
        }
    }

    /// The first completion that reaches `session`.
    async fn answered(session: &Session) -> crate::backend::Completion {
        let mut got = Vec::new();
        while got.is_empty() {
            std::future::poll_fn(|cx| session.0.poll_woken(cx)).await;
            session.0.take(&mut got);
        }
        got.remove(0)
    }

    /// A node's shared state and connection settings for `addr`, with the pool's `timeout`.
    fn fake_node(
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> (Arc<NodeShared>, Arc<ConnSettings>) {
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let metrics = crate::metrics::Metrics::default().server(crate::metrics::ServerLabels {
            pool: "p".into(),
            server: "s".into(),
            role: "master".into(),
            address: addr.to_string(),
        });
        let shared = Arc::new(NodeShared::new("s (fake)".into(), metrics, events));
        let settings = Arc::new(ConnSettings {
            addr: crate::config::Address {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            protocol: Protocol::Redis,
            timeout,
            handshake: bytes::Bytes::new(),
            handshake_replies: 0,
            preconnect: false,
            max_reply_depth: 64,
            tls: None,
        });
        (shared, settings)
    }

    /// A node on a loopback socket that accepts and then never reads nor answers.
    async fn silent_node() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        addr
    }

    /// A connection to the node at `addr` (the pool's `timeout`), and where to send it jobs.
    fn connection(
        addr: std::net::SocketAddr,
        timeout: Duration,
    ) -> tokio::sync::mpsc::UnboundedSender<Job> {
        let (shared, settings) = fake_node(addr, timeout);
        let (jobs, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run(shared, settings, rx, None));
        jobs
    }

    /// A job of `payload` whose reply goes to a new session, and that session.
    fn job(payload: impl Into<bytes::Bytes>) -> (Job, Arc<Session>) {
        let session = Arc::new(Session::default());
        let job = Job {
            payload: payload.into(),
            kind: ReplyKind::Resp,
            reply_to: ReplyTo {
                inbox: session.clone(),
                token: crate::backend::Token::Push,
            },
            timeout: None,
        };
        (job, session)
    }

    const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

    /// Sequential requests to a node that never answers each get their timeout error at their
    /// own deadline, not at a later check armed for an older request.
    #[tokio::test(start_paused = true)]
    async fn sequential_requests_to_a_silent_node_time_out_at_their_own_deadlines() {
        let timeout = Duration::from_secs(1);
        let jobs = connection(silent_node().await, timeout);
        for n in 0..4 {
            let (job, session) = job(PING);
            let started = Instant::now();
            jobs.send(job).unwrap();
            let got = answered(&session).await;
            let took = started.elapsed();
            assert!(got.result.is_err(), "request {n}");
            assert!(
                took >= timeout && took < timeout + Duration::from_millis(50),
                "request {n}: {took:?}"
            );
        }
    }

    /// A node that stops reading (its socket buffers full of a large request) does not hold a
    /// request past its deadline: the write waits inside the loop that keeps deadlines.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_fires_while_a_write_waits() {
        let timeout = Duration::from_secs(1);
        let jobs = connection(silent_node().await, timeout);
        let big = vec![b'x'; 64 * 1024 * 1024];
        let mut payload = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", big.len()).into_bytes();
        payload.extend_from_slice(&big);
        payload.extend_from_slice(b"\r\n");
        let (job, session) = job(payload);
        let started = Instant::now();
        jobs.send(job).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), answered(&session)).await;
        let took = started.elapsed();
        assert!(got.expect("answered").result.is_err());
        assert!(took < timeout + Duration::from_millis(50), "{took:?}");
    }

    /// A RESP3 push frame, before any request or before a reply, answers no request: each
    /// request still gets its own reply, and the connection is kept.
    #[tokio::test(start_paused = true)]
    async fn a_push_never_answers_a_request() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        const PUSH: &[u8] = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(PUSH).await.unwrap();
            let mut buf = [0u8; 64];
            for n in 0..2 {
                let _ = socket.read(&mut buf).await.unwrap();
                let reply = format!(":{n}\r\n");
                socket
                    .write_all(&[PUSH, reply.as_bytes()].concat())
                    .await
                    .unwrap();
            }
            std::future::pending::<()>().await;
        });
        let jobs = connection(addr, Duration::from_secs(1));
        for n in 0..2 {
            let (job, session) = job(PING);
            jobs.send(job).unwrap();
            let reply = answered(&session).await.result.unwrap();
            assert_eq!(&reply[..], format!(":{n}\r\n").as_bytes());
        }
    }

    #[test]
    fn a_blocking_command_is_bounded_by_its_deadline_not_by_silence() {
        let now = Instant::now();
        let silence = Duration::from_secs(4);
        let far = now + Duration::from_secs(3600);
        let blocked = VecDeque::from([request(now, far, true)]);
        assert_eq!(next_check(&blocked, now, silence), Some(far));
        let plain = VecDeque::from([request(now, far, false)]);
        assert_eq!(next_check(&plain, now, silence), Some(now + silence));
    }
}
