use super::*;
use crate::backend::fake::{Session, answered, fake_node};

fn reply(seq: u64) -> Token {
    Token::Reply { seq, part: 0 }
}

#[test]
fn frames_are_told_apart_in_resp2_and_resp3() {
    let kind = |f: &[u8]| frame_kind(f);
    assert_eq!(
        kind(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"),
        Frame::Message
    );
    assert_eq!(
        kind(b">4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$1\r\nc\r\n$1\r\nm\r\n"),
        Frame::Message
    );
    assert_eq!(
        kind(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"),
        Frame::Confirmation
    );
    assert_eq!(
        kind(b">3\r\n$12\r\npunsubscribe\r\n$1\r\n*\r\n:0\r\n"),
        Frame::Confirmation
    );
    // A channel named like a kind is still a message's second element.
    assert_eq!(
        kind(b"*3\r\n$7\r\nmessage\r\n$9\r\nsubscribe\r\n$1\r\nm\r\n"),
        Frame::Message
    );
    assert_eq!(kind(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"), Frame::Other);
    assert_eq!(kind(b"-NOPERM no\r\n"), Frame::Error);
}

#[test]
fn a_change_is_acknowledged_after_its_last_confirmation_in_order() {
    let change = |names: usize, ack: Option<Token>| Change {
        subscribe: true,
        topic: Topic::Channel,
        names: vec![Bytes::from_static(b"c"); names],
        ack,
    };
    let mut awaiting = Awaiting::default();
    awaiting.sent(&change(1, None));
    awaiting.sent(&change(2, Some(reply(7))));
    awaiting.sent(&change(1, Some(reply(8))));
    let mut out = Vec::new();
    let tokens = |out: &Vec<Completion>| out.iter().map(|c| c.token).collect::<Vec<_>>();
    awaiting.confirmed(&mut out);
    awaiting.confirmed(&mut out);
    assert!(
        out.is_empty(),
        "the second change has one confirmation to come"
    );
    awaiting.confirmed(&mut out);
    assert_eq!(tokens(&out), [reply(7)]);
    // A lost connection releases what is still owed.
    awaiting.release(&mut out);
    assert_eq!(tokens(&out), [reply(7), reply(8)]);
    assert!(awaiting.0.is_empty());
}

fn shard_change(subscribe: bool, names: &[&'static str], ack: Option<Token>) -> Change {
    Change {
        subscribe,
        topic: Topic::ShardChannel,
        names: names
            .iter()
            .map(|n| Bytes::from_static(n.as_bytes()))
            .collect(),
        ack,
    }
}

#[test]
fn an_sunsubscribe_the_proxy_did_not_ask_for_is_no_confirmation() {
    let dropped = b"*3\r\n$12\r\nsunsubscribe\r\n$1\r\nc\r\n:0\r\n";
    let mut awaiting = Awaiting::default();
    assert!(!awaiting.confirms(dropped), "nothing awaited");
    awaiting.sent(&shard_change(true, &["c"], None));
    assert!(!awaiting.confirms(dropped), "a subscription is awaited");
    assert!(awaiting.confirms(b"*3\r\n$10\r\nssubscribe\r\n$1\r\nc\r\n:1\r\n"));
    awaiting.confirmed(&mut Vec::new());
    awaiting.sent(&shard_change(false, &["d"], None));
    assert!(!awaiting.confirms(dropped), "another channel is given up");
    awaiting.0.clear();
    awaiting.sent(&shard_change(false, &["d", "c"], None));
    assert!(awaiting.confirms(dropped));
}

#[test]
fn a_shard_channel_a_node_redirects_becomes_a_notice_per_name() {
    let node = NodeId::next();
    let mut held: HashSet<(Topic, Bytes)> = HashSet::new();
    let mut awaiting = Awaiting::default();
    let change = shard_change(true, &["a", "b"], Some(reply(3)));
    apply(&mut held, &change);
    awaiting.sent(&change);
    let moved = Bytes::from_static(b"-MOVED 15495 127.0.0.1:7001\r\n");
    let mut out = Vec::new();
    awaiting.refused((moved, node), &mut held, &mut out);
    assert!(held.is_empty());
    let notices: Vec<(Token, Bytes)> = out
        .into_iter()
        .map(|c| (c.token, c.result.unwrap()))
        .collect();
    let notice = |name: &str| {
        let frame =
            format!("*3\r\n$12\r\nsunsubscribe\r\n$1\r\n{name}\r\n-MOVED 15495 127.0.0.1:7001\r\n");
        (Token::Notice { from: node }, Bytes::from(frame))
    };
    // The client's change is confirmed: the channels are made where the slot is.
    assert_eq!(
        notices,
        [notice("a"), notice("b"), (reply(3), Bytes::new())]
    );
    // Any other refusal is the client's to hear.
    let change = shard_change(true, &["c"], Some(reply(4)));
    awaiting.sent(&change);
    let noperm = Bytes::from_static(b"-NOPERM no\r\n");
    let mut out = Vec::new();
    awaiting.refused((noperm.clone(), node), &mut held, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].token, out[0].result.as_ref().unwrap()),
        (reply(4), &noperm)
    );
}

/// A node that sends a malformed frame has its connection made again, and the
/// subscriptions with it: messages come on the new connection.
#[tokio::test(start_paused = true)]
async fn a_malformed_frame_makes_the_connection_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    const CONFIRMED: &[u8] = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n";
    const MESSAGE: &[u8] = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n";
    tokio::spawn(async move {
        let mut buf = [0u8; 256];
        // Confirmed, then garbage while nothing is awaited: no timer would notice.
        let (mut first, _) = listener.accept().await.unwrap();
        let _ = first.read(&mut buf).await.unwrap();
        first
            .write_all(&[CONFIRMED, b"?what\r\n", MESSAGE].concat())
            .await
            .unwrap();
        let (mut second, _) = listener.accept().await.unwrap();
        let _ = second.read(&mut buf).await.unwrap();
        second
            .write_all(&[CONFIRMED, MESSAGE].concat())
            .await
            .unwrap();
        std::future::pending::<()>().await;
    });
    let (shared, settings) = fake_node(addr, Duration::from_secs(1));
    let session = Arc::new(Session::default());
    let subscriber = Subscriber::start(shared, settings, session.clone());
    subscriber.change(
        true,
        Topic::Channel,
        vec![Bytes::from_static(b"c")],
        reply(0),
    );
    let ack = answered(&session).await;
    assert_eq!(ack.token, reply(0));
    let message = tokio::time::timeout(Duration::from_secs(10), answered(&session)).await;
    let message = message.expect("a message on the new connection");
    assert_eq!(message.token, Token::Push);
    assert!(message.result.unwrap().ends_with(b"$2\r\nhi\r\n"));
}
