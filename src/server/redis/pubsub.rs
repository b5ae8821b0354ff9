//! Pub/Sub. A channel lives on the shard its name hashes to, so PUBLISH and SUBSCRIBE meet
//! there; a pattern is subscribed on every shard, and since a message is published on one
//! shard only, it is delivered once. Each client has its own subscriber connection per shard
//! it listens to; the proxy answers SUBSCRIBE and UNSUBSCRIBE itself, counting the client's
//! subscriptions across shards as one Redis would. Decided here without I/O; the frontend
//! holds the subscriber connections and applies the changes.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use bytes::{Bytes, BytesMut};

use super::keyspace::every_master;
use super::merge;
use crate::backend::Topic;
use crate::command::{Channels, Merge, PubSubCommand};
use crate::config::PoolConfig;
use crate::protocol::resp::{Request, bulk_elements, encode};
use crate::server::error::ClientError;
use crate::server::plan::{Part, Plan, Target};
use crate::topology::PoolState;

/// A client's subscriptions, hashed as Redis keeps them: subscribing to n names costs O(n),
/// and a message finds its subscription in O(1), however many the client holds. Each name
/// keeps when it was subscribed, so unsubscribing from everything names them in that order.
#[derive(Debug, Default)]
pub(super) struct PubSub {
    channels: Subscribed,
    patterns: Subscribed,
    shard_channels: Subscribed,
    subscribed: u64,
}

/// Names, each with the number of the subscription that made it.
type Subscribed = HashMap<Bytes, u64>;

/// What a SUBSCRIBE or UNSUBSCRIBE changes: per shard (index in the snapshot), the names to
/// subscribe or unsubscribe there, and the confirmations the client gets.
#[derive(Debug)]
pub(super) struct Change {
    pub topic: Topic,
    pub subscribe: bool,
    /// One list per shard of the snapshot; empty where nothing changes.
    pub per_shard: Vec<Vec<Bytes>>,
    pub reply: Bytes,
    /// The names a subscription added, taken back if a server refuses it.
    pub added: Vec<Bytes>,
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
        set.contains_key(name)
    }

    /// Whether the client holds a subscription of `name` to `topic`.
    pub(super) fn holds(&self, topic: Topic, name: &[u8]) -> bool {
        match topic {
            Topic::Channel => self.channels.contains_key(name),
            Topic::Pattern => self.patterns.contains_key(name),
            Topic::ShardChannel => self.shard_channels.contains_key(name),
        }
    }

    /// Takes back the subscriptions of `names` to `topic` that a server refused.
    pub(super) fn refused(&mut self, topic: Topic, names: &[Bytes]) {
        let set = self.set(topic);
        names.iter().for_each(|name| _ = set.remove(name));
    }

    /// How many channels, patterns and shard channels the client listens to.
    /// Where each of the client's subscriptions lives in `state`: per shard (index), its
    /// names by topic.
    pub(super) fn homes<N>(&self, state: &PoolState<N>) -> Vec<(usize, Topic, Vec<Bytes>)> {
        let mut homes: Vec<(usize, Topic, Vec<Bytes>)> = Vec::new();
        let sets = [
            (Topic::Channel, &self.channels),
            (Topic::Pattern, &self.patterns),
            (Topic::ShardChannel, &self.shard_channels),
        ];
        for (topic, set) in sets {
            for name in set.keys() {
                for shard in shards_of(state, topic, name) {
                    match homes
                        .iter_mut()
                        .find(|(s, t, _)| (*s, *t) == (shard, topic))
                    {
                        Some((.., names)) => names.push(name.clone()),
                        None => homes.push((shard, topic, vec![name.clone()])),
                    }
                }
            }
        }
        homes
    }

    pub(super) fn counts(&self) -> [u32; 3] {
        [&self.channels, &self.patterns, &self.shard_channels]
            .map(|set| u32::try_from(set.len()).unwrap_or(u32::MAX))
    }

    fn set(&mut self, topic: Topic) -> &mut Subscribed {
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

fn topic(channels: Channels) -> Topic {
    match channels {
        Channels::Named => Topic::Channel,
        Channels::Patterns => Topic::Pattern,
        Channels::Sharded => Topic::ShardChannel,
    }
}

/// What a Pub/Sub command does: a plan (PUBLISH, PUBSUB …), or a change of the client's
/// subscriptions to `topic`, which [`change`] makes.
#[derive(Debug)]
pub(super) enum Routed {
    Plan(Plan),
    Change { topic: Topic, subscribe: bool },
}

pub(super) fn route<N>(
    state: &PoolState<N>,
    config: &PoolConfig,
    which: PubSubCommand,
    req: &Request,
) -> Routed {
    match which {
        PubSubCommand::Subscribe(channels) => Routed::Change {
            topic: topic(channels),
            subscribe: true,
        },
        PubSubCommand::Unsubscribe(channels) => Routed::Change {
            topic: topic(channels),
            subscribe: false,
        },
        PubSubCommand::Publish => Routed::Plan(match state.shard_for(req.arg(1)) {
            Some(shard) => {
                let target = Target::Shard { shard, write: true };
                Plan::Forward(Part::resp(target, req.frame().clone()))
            }
            None => Plan::Fail(ClientError::unplaced(state)),
        }),
        PubSubCommand::Introspect => Routed::Plan(introspection(state, config, req)),
    }
}

/// Subscribes to (or unsubscribes from) the names `req` gives, as [`route`] said. The names
/// are copies: slices of the request would keep the client's read buffer alive for as long
/// as it stays subscribed.
pub(super) fn change<N>(
    pubsub: &mut PubSub,
    state: &PoolState<N>,
    topic: Topic,
    subscribe: bool,
    req: &Request,
    resp3: bool,
) -> Change {
    let names = (1..req.argc())
        .map(|i| Bytes::copy_from_slice(req.arg(i)))
        .collect();
    match subscribe {
        true => self::subscribe(pubsub, state, topic, names, resp3),
        false => unsubscribe(pubsub, state, topic, names, resp3),
    }
}

/// The shards a subscription lives on: its channel's, or every shard for a pattern. In a
/// cluster, where every node hears every PUBLISH, a channel or pattern lives on one node
/// (slot 0's) and only a shard channel on its slot's.
fn shards_of<N>(state: &PoolState<N>, topic: Topic, name: &[u8]) -> Vec<usize> {
    match (topic, state.slots()) {
        (Topic::Channel | Topic::Pattern, Some(slots)) => slots.owner(0).into_iter().collect(),
        (Topic::Pattern, None) => (0..state.shards.len()).collect(),
        _ => state.shard_for(name).into_iter().collect(),
    }
}

fn subscribe<N>(
    pubsub: &mut PubSub,
    state: &PoolState<N>,
    topic: Topic,
    names: Vec<Bytes>,
    resp3: bool,
) -> Change {
    let mut per_shard: Vec<Vec<Bytes>> = vec![Vec::new(); state.shards.len()];
    let mut confirmations = BytesMut::new();
    let mut added = Vec::new();
    for name in names {
        for shard in shards_of(state, topic, &name) {
            per_shard[shard].push(name.clone());
        }
        pubsub.subscribed += 1;
        let number = pubsub.subscribed;
        if let Entry::Vacant(entry) = pubsub.set(topic).entry(name.clone()) {
            entry.insert(number);
            added.push(name.clone());
        }
        let count = pubsub.count(topic);
        confirm(&mut confirmations, topic, true, Some(&name), count, resp3);
    }
    Change {
        topic,
        subscribe: true,
        per_shard,
        reply: confirmations.freeze(),
        added,
    }
}

fn unsubscribe<N>(
    pubsub: &mut PubSub,
    state: &PoolState<N>,
    topic: Topic,
    names: Vec<Bytes>,
    resp3: bool,
) -> Change {
    let names: Vec<Bytes> = if names.is_empty() {
        let mut held: Vec<(&Bytes, &u64)> = pubsub.set(topic).iter().collect();
        held.sort_unstable_by_key(|(_, number)| **number);
        held.into_iter().map(|(name, _)| name.clone()).collect()
    } else {
        names
    };
    let mut confirmations = BytesMut::new();
    if names.is_empty() {
        let count = pubsub.count(topic);
        confirm(&mut confirmations, topic, false, None, count, resp3);
    }
    let mut per_shard: Vec<Vec<Bytes>> = vec![Vec::new(); state.shards.len()];
    for name in names {
        if pubsub.set(topic).remove(&name).is_some() {
            for shard in shards_of(state, topic, &name) {
                per_shard[shard].push(name.clone());
            }
        }
        let count = pubsub.count(topic);
        confirm(&mut confirmations, topic, false, Some(&name), count, resp3);
    }
    Change {
        topic,
        subscribe: false,
        per_shard,
        reply: confirmations.freeze(),
        added: Vec::new(),
    }
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
fn introspection<N>(state: &PoolState<N>, config: &PoolConfig, req: &Request) -> Plan {
    let sub = req.arg(1).to_ascii_uppercase();
    let merge = match &sub[..] {
        b"CHANNELS" | b"SHARDCHANNELS" => Merge::Concat,
        b"NUMSUB" | b"SHARDNUMSUB" => Merge::PairSums,
        // Every client's pattern is held on every shard: the largest count is the number.
        b"NUMPAT" => Merge::Max,
        _ => {
            let shown = String::from_utf8_lossy(req.arg(1)).to_ascii_uppercase();
            return Plan::Fail(ClientError::Unsupported {
                command: format!("PUBSUB {shown}"),
                why: "CHANNELS, NUMSUB, NUMPAT, SHARDCHANNELS and SHARDNUMSUB are served".into(),
            });
        }
    };
    let gather = merge::split(
        merge,
        state.shards.len(),
        Vec::new(),
        config.max_reply_depth,
    );
    every_master(state, req.frame(), gather)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::plan::testing::{key_on, request, three_shards};

    fn names(names: &[&str]) -> Vec<Bytes> {
        names.iter().map(|n| Bytes::from(n.to_string())).collect()
    }

    #[test]
    fn channels_live_on_their_shard_and_patterns_on_every_shard() {
        let state = three_shards(0, false);
        let (a, b) = (key_on(&state, 0, "a"), key_on(&state, 2, "b"));
        let mut pubsub = PubSub::default();
        let change = subscribe(&mut pubsub, &state, Topic::Channel, names(&[&a, &b]), false);
        assert_eq!(change.per_shard, [names(&[&a]), vec![], names(&[&b])]);
        let change = subscribe(&mut pubsub, &state, Topic::Pattern, names(&["n*"]), false);
        assert_eq!(change.per_shard, vec![names(&["n*"]); 3]);
        // Counts run across shards, as one server counts them.
        assert!(change.reply.ends_with(b":3\r\n"));
        assert!(pubsub.active());
    }

    #[test]
    fn unsubscribing_from_everything_names_what_was_held() {
        let state = three_shards(0, false);
        let a = key_on(&state, 1, "a");
        let mut pubsub = PubSub::default();
        subscribe(&mut pubsub, &state, Topic::Channel, names(&[&a]), false);
        let change = unsubscribe(&mut pubsub, &state, Topic::Channel, Vec::new(), false);
        assert_eq!(change.per_shard, [vec![], names(&[&a]), vec![]]);
        assert!(!pubsub.active());
        // Nothing held: one confirmation with a nil channel and a count of 0.
        let change = unsubscribe(&mut pubsub, &state, Topic::Channel, Vec::new(), false);
        assert_eq!(
            &change.reply[..],
            b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n"
        );
    }

    #[test]
    fn publish_goes_to_the_channels_shard() {
        let state = three_shards(1, false);
        let a = key_on(&state, 2, "a");
        let req = request(&["PUBLISH", &a, "hi"]);
        let config = crate::config::Config::parse(
            "t.yaml",
            "pools:\n  p:\n    listen: 127.0.0.1:1\n    servers: [127.0.0.1:2:1]\n",
        )
        .unwrap()
        .pools
        .remove(0);
        let routed = route(&state, &config, PubSubCommand::Publish, &req);
        match routed {
            Routed::Plan(Plan::Forward(part)) => {
                assert_eq!(
                    part.target,
                    Target::Shard {
                        shard: 2,
                        write: true
                    }
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
