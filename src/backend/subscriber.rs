//! Pub/Sub: one connection per client and shard that holds the client's subscriptions there
//! and hands every message to the client's inbox. It keeps the set of subscriptions itself,
//! so after a lost connection it reconnects and subscribes again without the client noticing
//! (messages published meanwhile are lost, as Pub/Sub loses them).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::sleep;

use super::connection::connect;
use super::{Completion, ConnSettings, Inbox, NodeShared, Token};
use crate::protocol::resp::{ReplyScanner, encode};

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
}

/// A client's subscriber connection to one node; dropped, it closes.
#[derive(Debug)]
pub struct Subscriber {
    tx: UnboundedSender<Change>,
}

impl Subscriber {
    pub(super) fn start(
        shared: Arc<NodeShared>,
        settings: Arc<ConnSettings>,
        inbox: Arc<Inbox>,
    ) -> Subscriber {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(shared, settings, inbox, rx));
        Subscriber { tx }
    }

    pub fn subscribe(&self, topic: Topic, names: Vec<Bytes>) {
        let _ = self.tx.send(Change {
            subscribe: true,
            topic,
            names,
        });
    }

    pub fn unsubscribe(&self, topic: Topic, names: Vec<Bytes>) {
        let _ = self.tx.send(Change {
            subscribe: false,
            topic,
            names,
        });
    }
}

fn encode_change(buf: &mut BytesMut, change: &Change) {
    encode::array(buf, 1 + change.names.len());
    encode::bulk(buf, change.topic.command(change.subscribe));
    change.names.iter().for_each(|n| encode::bulk(buf, n));
}

/// Whether a frame from the connection is a message for the client (not a confirmation of
/// the proxy's own SUBSCRIBE and UNSUBSCRIBE, which the client got from the proxy).
fn is_message(frame: &[u8]) -> bool {
    let Some(nl) = memchr::memchr(b'\n', frame) else {
        return false;
    };
    let rest = &frame[nl + 1..];
    let Some(nl) = memchr::memchr(b'\n', rest) else {
        return false;
    };
    let kind = &rest[nl + 1..];
    kind.starts_with(b"message\r")
        || kind.starts_with(b"pmessage\r")
        || kind.starts_with(b"smessage\r")
}

const RETRY: Duration = Duration::from_millis(200);

async fn run(
    shared: Arc<NodeShared>,
    settings: Arc<ConnSettings>,
    inbox: Arc<Inbox>,
    mut rx: UnboundedReceiver<Change>,
) {
    let mut held: HashSet<(Topic, Bytes)> = HashSet::new();
    loop {
        let stream = match connect(&settings).await {
            Ok(stream) => stream,
            Err(why) => {
                tracing::warn!(node = %shared.label, "subscriber cannot connect: {why}");
                // Keep the set current while waiting to retry.
                tokio::select! {
                    _ = sleep(RETRY) => continue,
                    change = rx.recv() => match change {
                        Some(change) => { apply(&mut held, &change); continue; }
                        None => return,
                    },
                }
            }
        };
        // Subscribe again to everything held, then serve.
        let mut out = BytesMut::new();
        for (topic, name) in &held {
            encode_change(
                &mut out,
                &Change {
                    subscribe: true,
                    topic: *topic,
                    names: vec![name.clone()],
                },
            );
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            continue;
        }
        let mut read_buf = BytesMut::new();
        let mut chunk = 16 * 1024;
        let mut scanner = ReplyScanner::new(settings.max_reply_depth);
        loop {
            tokio::select! {
                change = rx.recv() => match change {
                    Some(change) => {
                        apply(&mut held, &change);
                        let mut out = BytesMut::new();
                        encode_change(&mut out, &change);
                        if stream.write_all(&out).await.is_err() {
                            break;
                        }
                    }
                    None => return,
                },
                read = stream.read_some(&mut read_buf, &mut chunk) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        break;
                    }
                    let mut messages = Vec::new();
                    while let Ok(Some(len)) = scanner.scan(&read_buf) {
                        let frame = read_buf.split_to(len).freeze();
                        if is_message(&frame) {
                            messages.push(Completion {
                                token: Token::Push,
                                result: Ok(frame),
                                backend_us: 0,
                            });
                        }
                    }
                    if !messages.is_empty() {
                        inbox.push_all(&mut messages);
                    }
                }
            }
        }
        tracing::warn!(node = %shared.label, "subscriber connection lost; subscribing again");
        sleep(RETRY).await;
    }
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
