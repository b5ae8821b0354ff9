//! Pub/Sub: one connection per client and shard that holds the client's subscriptions there
//! and hands every message to the client's inbox. A change is acknowledged to the client's
//! session once the server has confirmed it, so a client that has its confirmation is heard
//! by the next PUBLISH (and no longer counted after UNSUBSCRIBE). It keeps the set of
//! subscriptions itself, so after a lost connection it reconnects and subscribes again without
//! the client noticing (messages published meanwhile are lost, as Pub/Sub loses them).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::sleep;

use super::connection::connect;
use super::{Completion, ConnSettings, Mailbox, NodeShared, Token};
use crate::net::Unwritten;
use crate::protocol::resp::{ReplyScanner, bulk_elements, encode};

/// What a subscription is to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// SUBSCRIBE: a channel.
    Channel,
    /// PSUBSCRIBE: a glob pattern of channels.
    Pattern,
    /// SSUBSCRIBE: a shard channel.
    ShardChannel,
}

impl Topic {
    fn command(self, subscribe: bool) -> &'static [u8] {
        match (self, subscribe) {
            (Topic::Channel, true) => b"SUBSCRIBE",
            (Topic::Channel, false) => b"UNSUBSCRIBE",
            (Topic::Pattern, true) => b"PSUBSCRIBE",
            (Topic::Pattern, false) => b"PUNSUBSCRIBE",
            (Topic::ShardChannel, true) => b"SSUBSCRIBE",
            (Topic::ShardChannel, false) => b"SUNSUBSCRIBE",
        }
    }
}

/// A change to a subscriber connection's subscriptions.
#[derive(Debug)]
struct Change {
    subscribe: bool,
    topic: Topic,
    names: Vec<Bytes>,
    /// Completed (with an empty reply) once the server has confirmed every name.
    ack: Option<Token>,
}

/// A client's subscriber connection to one node; dropped, it closes.
#[derive(Debug)]
pub struct Subscriber {
    tx: UnboundedSender<Change>,
    node: super::NodeId,
}

impl Subscriber {
    pub(super) fn start(
        shared: Arc<NodeShared>,
        settings: Arc<ConnSettings>,
        inbox: Arc<dyn Mailbox>,
    ) -> Subscriber {
        let (tx, rx) = mpsc::unbounded_channel();
        let node = shared.id;
        tokio::spawn(run(shared, settings, inbox, rx));
        Subscriber { tx, node }
    }

    /// The node it holds the subscriptions on.
    pub fn node(&self) -> super::NodeId {
        self.node
    }

    /// Subscribes to `names` the client holds already, without confirming anything to it
    /// (the subscriptions move here from a node that is gone).
    pub fn carry(&self, topic: Topic, names: Vec<Bytes>) {
        let _ = self.tx.send(Change {
            subscribe: true,
            topic,
            names,
            ack: None,
        });
    }

    /// Subscribes to `names`, or unsubscribes from them; `ack` arrives in the client's inbox
    /// when the server has confirmed it (or at once when the node cannot be reached: the
    /// subscription is made when it can).
    pub fn change(&self, subscribe: bool, topic: Topic, names: Vec<Bytes>, ack: Token) {
        let _ = self.tx.send(Change {
            subscribe,
            topic,
            names,
            ack: Some(ack),
        });
    }
}

fn encode_change(out: &mut Unwritten, change: &Change) {
    out.encode(|buf| {
        encode::array(buf, 1 + change.names.len());
        encode::bulk(buf, change.topic.command(change.subscribe));
        change.names.iter().for_each(|n| encode::bulk(buf, n));
    });
}

/// What a frame from the connection is: a message for the client, or the server's
/// confirmation of one name of the proxy's own (UN)SUBSCRIBE (the client got its own from the
/// proxy).
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Message,
    Confirmation,
    /// The server refused a change.
    Error,
    Other,
}

fn frame_kind(frame: &[u8]) -> Frame {
    if matches!(frame.first(), Some(b'-' | b'!')) {
        return Frame::Error;
    }
    match bulk_elements(frame).next() {
        Some(b"message" | b"pmessage" | b"smessage") => Frame::Message,
        Some(
            b"subscribe" | b"psubscribe" | b"ssubscribe" | b"unsubscribe" | b"punsubscribe"
            | b"sunsubscribe",
        ) => Frame::Confirmation,
        _ => Frame::Other,
    }
}

/// Changes sent and not yet confirmed, oldest first.
#[derive(Debug, Default)]
struct Awaiting(VecDeque<Sent>);

/// A change sent: the confirmations still to come, and the acknowledgement owed when they
/// have.
#[derive(Debug)]
struct Sent {
    left: usize,
    ack: Option<Token>,
    subscribe: bool,
    topic: Topic,
    names: Vec<Bytes>,
}

impl Awaiting {
    fn sent(&mut self, change: &Change) {
        self.0.push_back(Sent {
            left: change.names.len(),
            ack: change.ack,
            subscribe: change.subscribe,
            topic: change.topic,
            names: change.names.clone(),
        });
    }

    /// Counts one confirmation; an acknowledgement it completes goes to `out`.
    fn confirmed(&mut self, out: &mut Vec<Completion>) {
        let Some(sent) = self.0.front_mut() else {
            return;
        };
        sent.left = sent.left.saturating_sub(1);
        if sent.left == 0
            && let Some(Sent {
                ack: Some(token), ..
            }) = self.0.pop_front()
        {
            out.push(acknowledgement(token, Bytes::new()));
        }
    }

    /// The server refused the oldest change with `error` (as `-NOPERM` for a channel the
    /// user may not use): it is taken out of `held`, and its acknowledgement carries the
    /// error to the client.
    fn refused(
        &mut self,
        error: Bytes,
        held: &mut HashSet<(Topic, Bytes)>,
        out: &mut Vec<Completion>,
    ) {
        let Some(sent) = self.0.pop_front() else {
            return;
        };
        if sent.subscribe {
            for name in sent.names {
                held.remove(&(sent.topic, name));
            }
        }
        match sent.ack {
            Some(token) => out.push(acknowledgement(token, error)),
            None => tracing::warn!(
                "subscribing again was refused: {}",
                String::from_utf8_lossy(&error).trim_end()
            ),
        }
    }

    /// Every acknowledgement still owed, without waiting for the server (the connection is
    /// lost; the subscriptions are made again when it is back).
    fn release(&mut self, out: &mut Vec<Completion>) {
        out.extend(
            self.0
                .drain(..)
                .filter_map(|sent| sent.ack.map(|t| acknowledgement(t, Bytes::new()))),
        );
    }
}

/// The completion of a change: empty once confirmed, else the server's error.
fn acknowledgement(token: Token, reply: Bytes) -> Completion {
    Completion {
        token,
        result: Ok(reply),
        backend_us: 0,
    }
}

const RETRY: Duration = Duration::from_millis(200);

async fn run(
    shared: Arc<NodeShared>,
    settings: Arc<ConnSettings>,
    inbox: Arc<dyn Mailbox>,
    mut rx: UnboundedReceiver<Change>,
) {
    let mut held: HashSet<(Topic, Bytes)> = HashSet::new();
    let mut awaiting = Awaiting::default();
    // The client has gone (or left every subscription): confirmations owed are awaited, then
    // the connection closes.
    let mut closing = false;
    loop {
        let stream = match connect(&settings).await {
            Ok(stream) => stream,
            Err(why) => {
                tracing::warn!(node = %shared.label, "subscriber cannot connect: {why}");
                // The client's session hears of it: it may move the subscriptions elsewhere.
                let lost = shared.error(super::Failure::Unreachable(why));
                inbox.inbox().push(Completion {
                    token: Token::Push,
                    result: Err(Box::new(lost)),
                    backend_us: 0,
                });
                // Keep the set current while waiting to retry; the client is not kept waiting.
                tokio::select! {
                    _ = sleep(RETRY) => continue,
                    change = rx.recv() => match change {
                        Some(change) => {
                            apply(&mut held, &change);
                            change.ack.into_iter().for_each(|t| inbox.inbox().push(acknowledgement(t, Bytes::new())));
                            continue;
                        }
                        None => return,
                    },
                }
            }
        };
        // Subscribe again to everything held, then serve. Full duplex: what is to be written
        // waits in `out` while the connection goes on reading and keeping its timer.
        let mut out = Unwritten::default();
        for (topic, name) in &held {
            let again = Change {
                subscribe: true,
                topic: *topic,
                names: vec![name.clone()],
                ack: None,
            };
            encode_change(&mut out, &again);
            awaiting.sent(&again);
        }
        let mut read_buf = BytesMut::new();
        let mut chunk = 16 * 1024;
        let mut scanner = ReplyScanner::new(settings.max_reply_depth);
        // A server that confirms nothing for the pool's timeout while changes wait is given up
        // on: what is owed is released and the connection made again.
        let silent_until = sleep(settings.timeout);
        tokio::pin!(silent_until);
        let later = || tokio::time::Instant::now() + settings.timeout;
        loop {
            if closing && awaiting.0.is_empty() {
                return;
            }
            if out.write_to(&stream).is_err() {
                break;
            }
            let unwritten = !out.is_empty() || stream.is_holding_output();
            tokio::select! {
                change = rx.recv(), if !closing => match change {
                    Some(change) => {
                        apply(&mut held, &change);
                        encode_change(&mut out, &change);
                        if awaiting.0.is_empty() {
                            silent_until.as_mut().reset(later());
                        }
                        awaiting.sent(&change);
                    }
                    None => closing = true,
                },
                writable = stream.writable(), if unwritten => if writable.is_err() {
                    break;
                },
                _ = &mut silent_until, if !awaiting.0.is_empty() => {
                    tracing::warn!(node = %shared.label, "subscriber: no confirmation within {:?}", settings.timeout);
                    break;
                }
                read = stream.read_some(&mut read_buf, &mut chunk) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        break;
                    }
                    let mut delivered = Vec::new();
                    let outcome = frames(&mut scanner, &mut read_buf, |frame| match frame_kind(&frame) {
                        Frame::Message => delivered.push(Completion {
                            token: Token::Push,
                            result: Ok(frame),
                            backend_us: 0,
                        }),
                        Frame::Confirmation => {
                            awaiting.confirmed(&mut delivered);
                            silent_until.as_mut().reset(later());
                        }
                        Frame::Error => awaiting.refused(frame, &mut held, &mut delivered),
                        Frame::Other => {}
                    });
                    if !delivered.is_empty() {
                        inbox.inbox().push_all(&mut delivered);
                    }
                    if let Err(e) = outcome {
                        tracing::warn!(node = %shared.label, "subscriber: malformed frame ({e}); connecting again");
                        break;
                    }
                }
            }
        }
        let mut released = Vec::new();
        awaiting.release(&mut released);
        if !released.is_empty() {
            inbox.inbox().push_all(&mut released);
        }
        if closing {
            return;
        }
        tracing::warn!(node = %shared.label, "subscriber connection lost; subscribing again");
        sleep(RETRY).await;
    }
}

/// Hands every complete frame at the start of `buf` to `each`; an error if one is malformed.
fn frames(
    scanner: &mut ReplyScanner,
    buf: &mut BytesMut,
    mut each: impl FnMut(Bytes),
) -> Result<(), crate::protocol::ReplyError> {
    while let Some(len) = scanner.scan(buf)? {
        each(buf.split_to(len).freeze());
    }
    Ok(())
}

fn apply(held: &mut HashSet<(Topic, Bytes)>, change: &Change) {
    for name in &change.names {
        if change.subscribe {
            held.insert((change.topic, name.clone()));
        } else {
            held.remove(&(change.topic, name.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
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
}
