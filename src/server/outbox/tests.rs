use super::*;
use std::time::Duration;

use crate::backend::{Failure, NodeId};
use crate::server::merge::Merger;

fn reply(text: &str) -> Completion {
    Completion {
        token: Token::Push,
        result: Ok(Bytes::copy_from_slice(text.as_bytes())),
        backend_us: 0,
    }
}

fn failure() -> Completion {
    let error = BackendError {
        node: "s".into(),
        failure: Failure::Closed,
    };
    Completion {
        token: Token::Push,
        result: Err(Box::new(error)),
        backend_us: 0,
    }
}

/// What the outbox has ready to write, taken as written.
fn written(out: &mut Outbox) -> String {
    out.collect_ready(None);
    let text = String::from_utf8(out.output().to_vec()).unwrap();
    out.consume_output(out.output().len());
    text
}

#[test]
fn replies_are_written_in_request_order_whatever_order_they_come_in() {
    let mut out = Outbox::new(Protocol::Redis);
    for _ in 0..3 {
        out.forwarded();
    }
    out.complete(2, 0, reply(":2\r\n"));
    out.complete(1, 0, reply(":1\r\n"));
    assert_eq!(written(&mut out), "", "the first is still owed");
    assert_eq!(out.pending(), 3);
    out.complete(0, 0, reply(":0\r\n"));
    assert_eq!(written(&mut out), ":0\r\n:1\r\n:2\r\n");
    assert_eq!((out.pending(), out.first_unanswered()), (0, 3));
}

#[test]
fn a_reply_for_a_request_no_longer_owed_is_ignored() {
    let mut out = Outbox::new(Protocol::Redis);
    out.forwarded();
    out.complete(0, 0, reply("+OK\r\n"));
    assert_eq!(written(&mut out), "+OK\r\n");
    out.complete(0, 0, reply("+LATE\r\n"));
    out.complete(7, 0, reply("+FUTURE\r\n"));
    assert_eq!(written(&mut out), "");
}

#[test]
fn owed_bytes_count_replies_held_for_an_earlier_one_and_those_unwritten() {
    let mut out = Outbox::new(Protocol::Redis);
    out.forwarded();
    out.forwarded();
    out.complete(1, 0, reply("$5\r\nhello\r\n"));
    assert_eq!(out.owed(), 11, "held behind request 0");
    out.complete(0, 0, reply("+OK\r\n"));
    out.collect_ready(None);
    assert_eq!(out.owed(), 16);
    assert_eq!(out.output().len(), 16);
    out.consume_output(10);
    assert_eq!(out.owed(), 6, "what the socket took is no longer owed");
    out.ready(Bytes::from_static(b"+PONG\r\n"));
    out.error(ClientError::NoServer);
    assert!(out.owed() > 6 + 7);
}

#[test]
fn the_typical_reply_rises_at_once_and_falls_slowly() {
    let mut out = Outbox::new(Protocol::Redis);
    assert_eq!(out.typical_reply(), None);
    let big = format!("${}\r\n{}\r\n", 1000, "v".repeat(1000));
    out.forwarded();
    out.complete(0, 0, reply(&big));
    assert_eq!(out.typical_reply(), Some(big.len()));
    for seq in 1..=8 {
        out.forwarded();
        out.complete(seq, 0, reply("+OK\r\n"));
    }
    let after_eight = out.typical_reply().unwrap();
    assert!(
        after_eight < big.len() / 2 && after_eight > 5,
        "{after_eight}"
    );
    for seq in 9..=200 {
        out.forwarded();
        out.complete(seq, 0, reply("+OK\r\n"));
    }
    assert!(out.typical_reply().unwrap() < 16);
}

#[test]
fn muted_replies_are_not_written_but_keep_their_place() {
    let mut out = Outbox::new(Protocol::Redis);
    for _ in 0..3 {
        out.forwarded();
    }
    out.mute_from(1);
    out.complete(0, 0, reply(":0\r\n"));
    out.complete(1, 0, reply(":1\r\n"));
    out.complete(2, 0, reply(":2\r\n"));
    assert_eq!(written(&mut out), ":0\r\n");
    assert_eq!(out.pending(), 0);
}

#[test]
fn a_failed_request_gets_its_error_rendered_for_the_protocol_and_counted() {
    let mut redis = Outbox::new(Protocol::Redis);
    redis.forwarded();
    redis.complete(0, 0, failure());
    assert!(written(&mut redis).starts_with("-ERR "));
    let errors = redis.take_errors();
    assert_eq!(errors.0.iter().sum::<u64>(), 1);
    let mut memcache = Outbox::new(Protocol::Memcache);
    memcache.forwarded();
    memcache.fail(0, ClientError::NoServer);
    assert!(written(&mut memcache).starts_with("SERVER_ERROR "));
}

/// Concatenates the parts' replies, failures as `E`.
struct Joined;

impl Merger for Joined {
    fn merge(&mut self, parts: Vec<Result<Bytes, BackendError>>) -> Bytes {
        let texts: Vec<&[u8]> = parts
            .iter()
            .map(|p| p.as_ref().map_or(&b"E"[..], |b| &b[..]))
            .collect();
        Bytes::from(texts.concat())
    }
}

#[test]
fn a_gathered_request_is_ready_when_its_last_part_comes_in_part_order() {
    let mut out = Outbox::new(Protocol::Redis);
    out.gathering(Gather::new(3, Joined));
    out.forwarded();
    out.complete(1, 0, reply("+after\r\n"));
    out.complete(0, 2, reply("c"));
    out.complete(0, 0, reply("a"));
    assert_eq!(written(&mut out), "");
    out.complete(0, 1, failure());
    assert_eq!(written(&mut out), "aEc+after\r\n");
}

#[test]
fn pubsub_messages_wait_behind_replies_still_owed() {
    let mut out = Outbox::new(Protocol::Redis);
    out.push_message(Bytes::from_static(b"m1"));
    out.forwarded();
    out.push_message(Bytes::from_static(b"m2"));
    assert_eq!(written(&mut out), "m1");
    out.complete(0, 0, reply("r"));
    assert_eq!(written(&mut out), "rm2");
}

/// Part `part` of request `seq`, sent to a new node, resent `when`, `retries` more times.
fn kept(seq: u64, part: usize, when: ResendWhen, retries: usize) -> Sent {
    Sent {
        seq,
        part,
        shard: Some("s".into()),
        node: NodeId::next(),
        payload: Bytes::from_static(b"request"),
        kind: ReplyKind::Resp,
        profile: Profile::default(),
        when: Some(when),
        retries_left: retries,
        redirects: None,
        blocking: None,
    }
}

/// Every retry due now.
fn due(out: &mut Outbox) -> Vec<Retry> {
    std::iter::from_fn(|| out.take_retry(Instant::now())).collect()
}

#[test]
fn a_part_answered_with_its_resend_prefix_is_retried_and_that_answer_never_written() {
    let mut out = Outbox::new(Protocol::Redis);
    out.forwarded();
    let when = ResendWhen::Answered {
        prefix: b"-NOSCRIPT",
        first: Bytes::from_static(b"load"),
    };
    out.keep(kept(0, 0, when, 1));
    out.complete(0, 0, reply("-NOSCRIPT No matching script\r\n"));
    assert_eq!(written(&mut out), "");
    let retries = due(&mut out);
    assert_eq!(retries.len(), 1);
    assert_eq!((retries[0].seq, retries[0].part), (0, 0));
    assert!(matches!(&retries[0].how, Resend::After(first) if first == "load"));
    let sent = out.sent_at(0, 0).expect("kept while unanswered");
    assert_eq!(&sent.payload[..], b"request");
    sent.retries_left -= 1;
    // What was sent first is answered as a preamble, then the part itself.
    out.complete(0, PREAMBLE, reply("$40\r\n...\r\n"));
    out.complete(0, 0, reply("-NOSCRIPT again\r\n"));
    assert!(due(&mut out).is_empty(), "no retries left");
    assert_eq!(written(&mut out), "-NOSCRIPT again\r\n");
    assert!(out.sent_at(0, 0).is_none(), "let go once answered");
}

#[test]
fn any_part_of_a_gathered_request_can_be_sent_again_alone() {
    let mut out = Outbox::new(Protocol::Redis);
    out.gathering(Gather::new(2, Joined));
    out.keep(kept(0, 1, ResendWhen::NodeFails, 1));
    out.complete(0, 0, reply("a"));
    out.complete(0, 1, failure());
    let retries = due(&mut out);
    assert_eq!((retries[0].seq, retries[0].part), (0, 1));
    assert_eq!(written(&mut out), "");
    out.complete(0, 1, reply("b"));
    assert_eq!(written(&mut out), "ab");
}

#[test]
fn a_quiet_request_kept_for_resend_stays_quiet() {
    let mut out = Outbox::new(Protocol::Memcache);
    let quiet = Quiet {
        hides: |r| r.starts_with(b"EN"),
        shows_failures: true,
    };
    out.quiet(quiet);
    out.keep(kept(0, 0, ResendWhen::NodeFails, 0));
    out.complete(0, 0, reply("EN\r\n"));
    assert_eq!(written(&mut out), "");
    assert_eq!(out.pending(), 0);
}

/// A cluster's part: only what its node answers as a redirect is followed.
fn redirectable(seq: u64, part: usize) -> Sent {
    Sent {
        when: None,
        retries_left: 0,
        redirects: Some(Redirects {
            deadline: Instant::now() + Duration::from_secs(1),
            hops: 0,
        }),
        ..kept(seq, part, ResendWhen::NodeFails, 0)
    }
}

#[test]
fn redirects_are_followed_in_order_and_hold_later_requests_back() {
    let mut out = Outbox::new(Protocol::Redis);
    for seq in 0..3 {
        out.forwarded();
        out.keep(redirectable(seq, 0));
    }
    // Nothing redirected: new requests may go.
    assert!(!out.behind_redirects());
    out.complete(0, 0, reply("-MOVED 12182 127.0.0.1:7002\r\n"));
    out.complete(1, 0, reply("-ERR not a redirect\r\n"));
    out.complete(2, 0, reply("-ASK 1 127.0.0.1:7003\r\n"));
    assert!(
        out.behind_redirects(),
        "until the redirected requests are answered"
    );
    let retries = due(&mut out);
    let sent_to: Vec<_> = retries
        .iter()
        .map(|r| match &r.how {
            Resend::Redirect(Redirect::Moved { slot, to }) => (r.seq, *slot, to.port, false),
            Resend::Redirect(Redirect::Ask { slot, to }) => (r.seq, *slot, to.port, true),
            _ => panic!("not a redirect"),
        })
        .collect();
    assert_eq!(sent_to, [(0, 12182, 7002, false), (2, 1, 7003, true)]);
    // A retry put off holds back every retry after it.
    let mut retries = retries.into_iter();
    let later = Instant::now() + Duration::from_secs(60);
    out.defer(retries.next().unwrap(), later);
    out.complete(2, 0, reply("-TRYAGAIN\r\n"));
    assert!(due(&mut out).is_empty());
    assert!(out.take_retry(later).is_some_and(|r| r.seq == 0));
    assert!(
        out.take_retry(later)
            .is_some_and(|r| matches!(r.how, Resend::Redirect(Redirect::Later)))
    );
    out.complete(0, 0, reply("+OK\r\n"));
    out.complete(2, 0, reply("+QUEUED\r\n"));
    assert_eq!(
        written(&mut out),
        "+OK\r\n-ERR not a redirect\r\n+QUEUED\r\n"
    );
    assert!(!out.behind_redirects());
}

#[test]
fn a_redirect_not_followed_reaches_the_client_as_an_error_that_says_so() {
    let mut out = Outbox::new(Protocol::Redis);
    out.forwarded();
    out.keep(kept(0, 0, ResendWhen::NodeFails, 1));
    out.complete(0, 0, reply("-MOVED 1 127.0.0.1:7002\r\n"));
    assert!(due(&mut out).is_empty());
    assert_eq!(
        written(&mut out),
        "-ERR not applied: the slot moved under a transaction or WATCH (MOVED 1 127.0.0.1:7002); send it again\r\n"
    );
}

/// A merger that says which parts were sent again as requests of their own.
struct Resent(Arc<std::sync::Mutex<Vec<usize>>>);

impl Merger for Resent {
    fn merge(&mut self, parts: Vec<Result<Bytes, BackendError>>) -> Bytes {
        Joined.merge(parts)
    }

    fn resent(&mut self, part: usize) {
        self.0.lock().unwrap().push(part);
    }
}

#[test]
fn a_fill_redirected_inside_its_replies_is_sent_again_as_its_plain_read() {
    use crate::server::near_cache::fill_request;
    let get = Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    let resent = Arc::default();
    let mut out = Outbox::new(Protocol::Redis);
    out.gathering(Gather::new(2, Resent(Arc::clone(&resent))));
    for part in 0..2 {
        out.keep(Sent {
            payload: fill_request(&get, b"k"),
            kind: ReplyKind::Resps(3),
            ..redirectable(0, part)
        });
    }
    // CLIENT CACHING YES taken, then the read and its PTTL redirected.
    let asked = "+OK\r\n-ASK 1 127.0.0.1:7003\r\n-ASK 1 127.0.0.1:7003\r\n";
    out.complete(0, 1, reply(asked));
    let retries = due(&mut out);
    assert!(matches!(
        &retries[..],
        [Retry {
            seq: 0,
            part: 1,
            how: Resend::Redirect(Redirect::Ask { slot: 1, .. }),
            ..
        }]
    ));
    let sent = out.sent_at(0, 1).unwrap();
    assert_eq!((&sent.payload, sent.kind), (&get, ReplyKind::Resp));
    assert_eq!(*resent.lock().unwrap(), [1]);
    // The other part, answered as a fill, is the merger's to read.
    out.complete(0, 0, reply("+OK\r\n$1\r\na\r\n:-1\r\n"));
    out.complete(0, 1, reply("$1\r\nb\r\n"));
    assert_eq!(written(&mut out), "+OK\r\n$1\r\na\r\n:-1\r\n$1\r\nb\r\n");
}
