//! Pub/Sub: one connection per client and shard that holds the client's subscriptions there
//! and hands every message to the client's inbox. A change is acknowledged to the client's
//! session once the server has confirmed it, so a client that has its confirmation is heard
//! by the next PUBLISH (and no longer counted after UNSUBSCRIBE). It keeps the set of
//! subscriptions itself, so after a lost connection it reconnects and subscribes again without
//! the client noticing (messages published meanwhile are lost, as Pub/Sub loses them). A shard
//! channel the node gives up (its slot moved: the server's own `sunsubscribe`) or will not take
//! (a redirect) is handed to the session as a notice, to be subscribed where its slot is now.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::time::sleep;

use super::opening::connect;
use super::{Completion, ConnSettings, Mailbox, NodeId, NodeShared, Token};
use crate::net::Unwritten;
use crate::protocol::resp::{ReplyScanner, bulk_elements, encode};
use crate::topology::cluster::redirect;

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
    node: NodeId,
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
    pub fn node(&self) -> NodeId {
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
    /// Whether `frame`, a confirmation, answers the oldest change. Every one does but an
    /// `sunsubscribe` of a shard channel that change does not give up: the server sends that
    /// of itself when the channel's slot leaves the node.
    fn confirms(&self, frame: &[u8]) -> bool {
        let mut elements = bulk_elements(frame);
        if elements.next() != Some(b"sunsubscribe") {
            return true;
        }
        let name = elements.next().unwrap_or_default();
        self.0.front().is_some_and(|sent| {
            !sent.subscribe
                && sent.topic == Topic::ShardChannel
                && sent.names.iter().any(|n| n == name)
        })
    }

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

    /// The server refused the oldest change with `error`: it is taken out of `held`. A
    /// cluster node that does not serve a shard channel's slot (a redirect) has each name
    /// handed to the session as a notice, and the client's change is acknowledged: the
    /// channels are subscribed where their slot is. Otherwise (as `-NOPERM` for a channel the
    /// user may not use) the acknowledgement carries the error to the client.
    fn refused(
        &mut self,
        (error, from): (Bytes, NodeId),
        held: &mut HashSet<(Topic, Bytes)>,
        out: &mut Vec<Completion>,
    ) {
        let Some(sent) = self.0.pop_front() else {
            return;
        };
        if sent.subscribe {
            for name in &sent.names {
                held.remove(&(sent.topic, name.clone()));
            }
        }
        if sent.subscribe && sent.topic == Topic::ShardChannel && redirect(&error).is_some() {
            out.extend((sent.names.iter()).map(|name| notice(from, refusal(name, &error))));
            out.extend(sent.ack.map(|t| acknowledgement(t, Bytes::new())));
            return;
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

/// `sunsubscribe` of `name` with the server's `error` in place of a count: the node refused to
/// hold the shard channel.
fn refusal(name: &[u8], error: &[u8]) -> Bytes {
    let mut frame = BytesMut::new();
    encode::array(&mut frame, 3);
    encode::bulk(&mut frame, b"sunsubscribe");
    encode::bulk(&mut frame, name);
    frame.extend_from_slice(error);
    frame.freeze()
}

/// Delivers `frame`, a notice from node `from`, to `inbox` again after `delay`.
pub fn notice_after(inbox: Arc<dyn Mailbox>, delay: Duration, from: NodeId, frame: Bytes) {
    tokio::spawn(async move {
        sleep(delay).await;
        inbox.inbox().push(notice(from, frame));
    });
}

/// A notice from node `from` that it no longer holds a subscription: `frame`, an
/// `sunsubscribe`.
fn notice(from: NodeId, frame: Bytes) -> Completion {
    Completion {
        token: Token::Notice { from },
        result: Ok(frame),
        backend_us: 0,
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
                        Frame::Confirmation if awaiting.confirms(&frame) => {
                            awaiting.confirmed(&mut delivered);
                            silent_until.as_mut().reset(later());
                        }
                        Frame::Confirmation => {
                            // The node gave the shard channel up: the session moves it.
                            if let Some(name) = bulk_elements(&frame).nth(1) {
                                held.remove(&(Topic::ShardChannel, Bytes::copy_from_slice(name)));
                            }
                            delivered.push(notice(shared.id, frame));
                        }
                        Frame::Error => awaiting.refused((frame, shared.id), &mut held, &mut delivered),
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
mod tests;
