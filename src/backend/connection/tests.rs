use super::*;
use crate::backend::fake::{Session, answered, fake_node};

fn request(sent: Instant, deadline: Instant, waits: bool) -> InFlight {
    let to = ReplyTo {
        inbox: Arc::new(Session::default()),
        token: crate::backend::Token::Push,
    };
    InFlight {
        waiter: Waiter::Client(to),
        kind: ReplyKind::Resp,
        sent,
        deadline,
        waits,
    }
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

/// A SET of 64 MiB: more than the sockets' buffers take from a node that does not read.
fn large_set() -> Vec<u8> {
    let big = vec![b'x'; 64 * 1024 * 1024];
    let mut payload = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", big.len()).into_bytes();
    payload.extend_from_slice(&big);
    payload.extend_from_slice(b"\r\n");
    payload
}

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
    let payload = large_set();
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

/// A request that timed out still counts against its client until the node has answered it;
/// its late reply is dropped, and the count falls with it.
#[tokio::test(start_paused = true)]
async fn a_timed_out_request_counts_as_late_until_its_reply_comes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let _ = socket.read(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        socket.write_all(b"+PONG\r\n").await.unwrap();
        std::future::pending::<()>().await;
    });
    let jobs = connection(addr, Duration::from_secs(1));
    let (job, session) = job(PING);
    jobs.send(job).unwrap();
    assert!(answered(&session).await.result.is_err());
    assert_eq!(session.0.late(), 1, "late while the node works on it");
    let started = Instant::now();
    std::future::poll_fn(|cx| session.0.poll_woken(cx)).await;
    assert_eq!(session.0.late(), 0, "released by its reply");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let mut got = Vec::new();
    session.0.take(&mut got);
    assert!(got.is_empty(), "the late reply is dropped");
}

/// Behind a write the node does not take (it stopped reading), requests wait unwritten, and
/// each fails at its own deadline as never sent, not when the connection is given up.
#[tokio::test(start_paused = true)]
async fn requests_queued_behind_a_write_the_node_does_not_take_fail_at_their_deadline() {
    let timeout = Duration::from_secs(1);
    let jobs = connection(silent_node().await, timeout);
    let payload = large_set();
    let (first, _) = job(payload);
    jobs.send(first).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ping, session) = job(PING);
    let started = Instant::now();
    jobs.send(ping).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), answered(&session)).await;
    let took = started.elapsed();
    let error = got.expect("answered").result.unwrap_err();
    assert_eq!(error.failure, Failure::NotSent(timeout));
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(50),
        "{took:?}"
    );
}

/// A request of several commands gets their replies as one, whatever way they arrive, and a
/// push that comes between them is set aside, not made part of it.
#[tokio::test]
async fn the_replies_of_a_request_of_several_commands_come_as_one_without_pushes() {
    let (shared, settings) = fake_node("127.0.0.1:9".parse().unwrap(), Duration::from_secs(1));
    let mut framer = Framer::new(&settings);
    let (mut delivery, mut in_flight) = (Delivery::default(), VecDeque::new());
    let session = Arc::new(Session::default());
    let now = Instant::now();
    for kind in [ReplyKind::Resps(3), ReplyKind::Resp] {
        in_flight.push_back(InFlight {
            kind,
            ..request(now, now + Duration::from_secs(1), false)
        });
        if let Some(last) = in_flight.back_mut() {
            last.waiter = Waiter::Client(ReplyTo {
                inbox: session.clone(),
                token: crate::backend::Token::Push,
            });
        }
    }
    let push = "*2\r\n$21\r\ntracking-redir-broken\r\n:3\r\n".replacen('*', ">", 1);
    let arriving = ["+OK\r\n$1\r", &format!("\nv\r\n{push}"), ":-1\r\n+PONG\r\n"];
    let mut buf = BytesMut::new();
    for bytes in arriving {
        buf.extend_from_slice(bytes.as_bytes());
        answer(
            &shared,
            &mut framer,
            &mut buf,
            &mut in_flight,
            &mut delivery,
        )
        .unwrap();
    }
    assert!(buf.is_empty() && in_flight.is_empty());
    let mut got = Vec::new();
    session.0.take(&mut got);
    let replies: Vec<_> = got.into_iter().map(|c| c.result.unwrap()).collect();
    assert_eq!(replies, [&b"+OK\r\n$1\r\nv\r\n:-1\r\n"[..], b"+PONG\r\n"]);
}
