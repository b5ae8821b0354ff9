//! Pub/Sub. A channel lives on the shard its name hashes to, so PUBLISH and SUBSCRIBE meet
//! there; a pattern is subscribed on every shard, and since a message is published on one
//! shard only, it is delivered once. Each client has its own subscriber connection per shard
//! it listens to; the proxy answers SUBSCRIBE and UNSUBSCRIBE itself, counting the client's
//! subscriptions across shards as one Redis would.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::RespSession;
use super::keyspace::every_master;
use crate::backend::{Subscriber, Topic};
use crate::command::{Command, Merge};
use crate::protocol::resp::{Request, encode};
use crate::server::error::ClientError;
use crate::server::merge::Gather;
use crate::server::plan::{Part, Plan, Target};
use crate::topology::PoolState;

/// A client's subscriptions, in the order it made them, and its subscriber connections, by
/// shard.
#[derive(Debug, Default)]
pub(super) struct PubSub {
    channels: Vec<Bytes>,
    patterns: Vec<Bytes>,
    shard_channels: Vec<Bytes>,
    /// By shard name: a subscription stays where it was made while the pool's state changes.
    subscribers: Vec<(Arc<str>, Subscriber)>,
}

impl PubSub {
    /// Whether the client is subscribed to anything.
    pub(super) fn active(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shard_channels.is_empty())
    }

    /// Whether `message` (`message`, `pmessage` or `smessage`, RESP2 or RESP3) is for one of
    /// the client's current subscriptions.
    pub(super) fn wants(&self, message: &[u8]) -> bool {
        let mut elements = bulk_elements(message);
        let (Some(kind), Some(name)) = (elements.next(), elements.next()) else {
            return false;
        };
        let set = match kind {
            b"message" => &self.channels,
            b"pmessage" => &self.patterns,
            b"smessage" => &self.shard_channels,
            _ => return false,
        };
        set.iter().any(|n| n == name)
    }

    fn set(&mut self, topic: Topic) -> &mut Vec<Bytes> {
        match topic {
            Topic::Channel => &mut self.channels,
            Topic::Pattern => &mut self.patterns,
            Topic::ShardChannel => &mut self.shard_channels,
        }
    }

    /// The count a confirmation reports: channels and patterns together, shard channels apart.
    fn count(&self, topic: Topic) -> usize {
        match topic {
            Topic::ShardChannel => self.shard_channels.len(),
            _ => self.channels.len() + self.patterns.len(),
        }
    }
}

/// The bulk strings of an array or push frame, in order.
fn bulk_elements(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = memchr::memchr(b'\n', frame).map_or(&[][..], |nl| &frame[nl + 1..]);
    std::iter::from_fn(move || {
        let nl = memchr::memchr(b'\n', rest)?;
        let len: usize = std::str::from_utf8(rest.strip_prefix(b"$")?.get(..nl.checked_sub(2)?)?)
            .ok()?
            .parse()
            .ok()?;
        let element = rest.get(nl + 1..nl + 1 + len)?;
        rest = rest.get(nl + 1 + len + 2..)?;
        Some(element)
    })
}

/// Commands a RESP2 client may send while subscribed.
pub(super) fn allowed_while_subscribed(name: &str) -> bool {
    matches!(
        name,
        "SUBSCRIBE"
            | "UNSUBSCRIBE"
            | "PSUBSCRIBE"
            | "PUNSUBSCRIBE"
            | "SSUBSCRIBE"
            | "SUNSUBSCRIBE"
            | "PING"
            | "QUIT"
    )
}

pub(super) fn run(s: &mut RespSession, state: &PoolState, cmd: &Command, req: Request) {
    let names = || (1..req.argc()).map(|i| req.arg_bytes(i)).collect();
    match cmd.name {
        "SUBSCRIBE" => subscribe(s, state, Topic::Channel, names()),
        "PSUBSCRIBE" => subscribe(s, state, Topic::Pattern, names()),
        "SSUBSCRIBE" => subscribe(s, state, Topic::ShardChannel, names()),
        "UNSUBSCRIBE" => unsubscribe(s, state, Topic::Channel, names()),
        "PUNSUBSCRIBE" => unsubscribe(s, state, Topic::Pattern, names()),
        "SUNSUBSCRIBE" => unsubscribe(s, state, Topic::ShardChannel, names()),
        "PUBLISH" | "SPUBLISH" => {
            let Some(shard) = state.shard_for(req.arg(1)) else {
                return s.out.error(ClientError::NoServer);
            };
            let target = Target::Shard { shard, write: true };
            s.execute(
                state,
                Plan::Forward(Part::resp(target, req.frame().clone())),
            );
        }
        _ => pubsub_introspection(s, state, &req),
    }
}

/// The shards a subscription lives on: its channel's, or every shard for a pattern.
fn shards_of(state: &PoolState, topic: Topic, name: &[u8]) -> Vec<usize> {
    match topic {
        Topic::Pattern => (0..state.shards.len()).collect(),
        _ => state.shard_for(name).into_iter().collect(),
    }
}

fn subscribe(s: &mut RespSession, state: &PoolState, topic: Topic, names: Vec<Bytes>) {
    let shards = state.shards.len();
    let resp3 = s.client().resp3;
    let mut per_shard: Vec<Vec<Bytes>> = vec![Vec::new(); shards];
    let mut confirmations = BytesMut::new();
    for name in names {
        for shard in shards_of(state, topic, &name) {
            per_shard[shard].push(name.clone());
        }
        let set = s.fe.pubsub.set(topic);
        if !set.contains(&name) {
            set.push(name.clone());
        }
        let count = s.fe.pubsub.count(topic);
        confirm(&mut confirmations, topic, true, Some(&name), count, resp3);
    }
    let inbox = s.out.inbox().clone();
    for (shard, names) in state.shards.iter().zip(per_shard) {
        if names.is_empty() {
            continue;
        }
        let subscribers = &mut s.fe.pubsub.subscribers;
        let at = match subscribers.iter().position(|(name, _)| *name == shard.name) {
            Some(at) => at,
            None => {
                let subscriber = shard.master().subscriber(resp3, inbox.clone());
                subscribers.push((shard.name.clone(), subscriber));
                subscribers.len() - 1
            }
        };
        subscribers[at].1.subscribe(topic, names);
    }
    s.out.listening = true;
    s.out.ready(confirmations.freeze());
}

fn unsubscribe(s: &mut RespSession, state: &PoolState, topic: Topic, names: Vec<Bytes>) {
    let shards = state.shards.len();
    let resp3 = s.client().resp3;
    let names: Vec<Bytes> = if names.is_empty() {
        s.fe.pubsub.set(topic).to_vec()
    } else {
        names
    };
    let mut confirmations = BytesMut::new();
    if names.is_empty() {
        let count = s.fe.pubsub.count(topic);
        confirm(&mut confirmations, topic, false, None, count, resp3);
    }
    let mut per_shard: Vec<Vec<Bytes>> = vec![Vec::new(); shards];
    for name in names {
        let set = s.fe.pubsub.set(topic);
        if let Some(at) = set.iter().position(|n| *n == name) {
            set.remove(at);
            for shard in shards_of(state, topic, &name) {
                per_shard[shard].push(name.clone());
            }
        }
        let count = s.fe.pubsub.count(topic);
        confirm(&mut confirmations, topic, false, Some(&name), count, resp3);
    }
    if s.fe.pubsub.active() {
        for (shard, names) in state.shards.iter().zip(per_shard) {
            let subscriber =
                s.fe.pubsub
                    .subscribers
                    .iter()
                    .find(|(n, _)| *n == shard.name);
            if let Some((_, subscriber)) = subscriber
                && !names.is_empty()
            {
                subscriber.unsubscribe(topic, names);
            }
        }
    } else {
        // Nothing left: the subscriber connections close.
        s.fe.pubsub.subscribers.clear();
        s.out.listening = false;
    }
    s.out.ready(confirmations.freeze());
}

/// `["subscribe", channel, count]` and its kin, as a push in RESP3.
fn confirm(
    out: &mut BytesMut,
    topic: Topic,
    subscribe: bool,
    name: Option<&[u8]>,
    count: usize,
    resp3: bool,
) {
    let kind: &[u8] = match (topic, subscribe) {
        (Topic::Channel, true) => b"subscribe",
        (Topic::Channel, false) => b"unsubscribe",
        (Topic::Pattern, true) => b"psubscribe",
        (Topic::Pattern, false) => b"punsubscribe",
        (Topic::ShardChannel, true) => b"ssubscribe",
        (Topic::ShardChannel, false) => b"sunsubscribe",
    };
    encode::push(out, 3, resp3);
    encode::bulk(out, kind);
    match name {
        Some(name) => encode::bulk(out, name),
        None => encode::null(out, resp3),
    }
    encode::integer(out, count as i64);
}

/// PUBSUB CHANNELS / SHARDCHANNELS / NUMSUB / SHARDNUMSUB / NUMPAT over every shard.
fn pubsub_introspection(s: &mut RespSession, state: &PoolState, req: &Request) {
    let sub = req.arg(1).to_ascii_uppercase();
    let merge = match &sub[..] {
        b"CHANNELS" | b"SHARDCHANNELS" => Merge::Concat,
        b"NUMSUB" | b"SHARDNUMSUB" => Merge::PairSums,
        // Every client's pattern is held on every shard: the largest count is the number.
        b"NUMPAT" => Merge::Max,
        _ => {
            let shown = String::from_utf8_lossy(req.arg(1)).to_ascii_uppercase();
            return s.out.error(ClientError::Exact(format!(
                "ERR unsupported command 'PUBSUB {shown}' (CHANNELS, NUMSUB, NUMPAT, SHARDCHANNELS and SHARDNUMSUB are served)"
            ).into()));
        }
    };
    let shards = state.shards.len();
    let depth = s.pool.config.max_reply_depth;
    let gather = Gather::split(merge, shards, Vec::new(), depth);
    s.execute(state, every_master(state, req.frame(), gather));
}
