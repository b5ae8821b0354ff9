//! A client's subscriber connections: one per shard it listens to, and in a cluster pool one
//! per master (a cluster shard's name is its slot ranges, which change as slots move). What
//! the client holds is decided in `pubsub`; here it is kept where the pool serves it as the
//! pool changes under it: moved off a master that died, and a shard channel moved with its
//! slot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::pubsub::{Change, PubSub};
use crate::backend::{NodeId, Subscriber, Topic};
use crate::metrics::RefreshCause;
use crate::protocol::resp::bulk_elements;
use crate::server::session::Context;
use crate::topology::cluster::{Redirect, redirect};
use crate::topology::{PoolState, Shard};

/// How long a shard channel given up by a node waits for the pool's map to say where its slot
/// went, between two looks.
const STALE_MAP_WAIT: Duration = Duration::from_millis(20);

/// How long the map is waited for before the node that gave up a shard channel is asked to
/// take it again (its slot is elsewhere: it says where with a MOVED).
const STALE_MAP_PATIENCE: Duration = Duration::from_secs(1);

/// The connections, each with the name of the shard it was made for, and the shard channels
/// waiting for the map to say where their slot went, since when.
#[derive(Debug, Default)]
pub(super) struct Subscribers {
    made: Vec<(Arc<str>, Subscriber)>,
    waiting: Vec<(Bytes, Instant)>,
}

impl Subscribers {
    pub(super) fn is_empty(&self) -> bool {
        self.made.is_empty()
    }

    /// Closes every connection once it has confirmed what it was sent.
    pub(super) fn clear(&mut self) {
        self.made.clear();
        self.waiting.clear();
    }

    /// The connection for `shard`, if there is one: in a cluster pool the one on its master,
    /// else the one made for it, wherever its master is now (a subscription stays where it
    /// was made while a ring pool's shard fails over).
    fn find(&self, state: &PoolState, shard: &Shard) -> Option<&Subscriber> {
        let master = shard.master().id();
        let fits = |(name, s): &&(Arc<str>, Subscriber)| match state.slots() {
            Some(_) => s.node() == master,
            None => *name == shard.name,
        };
        self.made.iter().find(fits).map(|(_, s)| s)
    }

    /// The connection for `shard`, made if there is none.
    fn on(
        &mut self,
        cx: &Context<'_>,
        state: &PoolState,
        shard: &Shard,
        resp3: bool,
    ) -> &Subscriber {
        if self.find(state, shard).is_none() {
            let subscriber = cx.subscriber(shard.master(), resp3);
            self.made.push((shard.name.clone(), subscriber));
        }
        self.find(state, shard).expect("just made")
    }

    /// Sends a change of the client's subscriptions to the shards it concerns, each
    /// acknowledged to part `parts` of the client's request; returns how many parts there are.
    pub(super) fn change(
        &mut self,
        cx: &mut Context<'_>,
        state: &PoolState,
        change: &mut Change,
        resp3: bool,
    ) -> usize {
        let (topic, subscribe) = (change.topic, change.subscribe);
        let mut parts = 0;
        for (shard, names) in state.shards.iter().zip(&mut change.per_shard) {
            if names.is_empty() || (!subscribe && self.find(state, shard).is_none()) {
                continue;
            }
            let ack = cx.out.token(parts);
            let names = std::mem::take(names);
            self.on(cx, state, shard, resp3)
                .change(subscribe, topic, names, ack);
            parts += 1;
        }
        parts
    }

    /// In a cluster pool, a subscriber connection that cannot reach its node: the client's
    /// subscriptions are each kept on the master that serves them now (the cluster failed
    /// the node over), made there if need be; the client notices nothing but the messages
    /// lost meanwhile. Connections left over close.
    pub(super) fn rehome(&mut self, cx: &Context<'_>, pubsub: &PubSub, resp3: bool) {
        let state = cx.pool.state();
        if state.slots().is_none() || !pubsub.active() {
            return;
        }
        let mut before = std::mem::take(&mut self.made);
        // The masters whose connections are made here, to be given their names.
        let mut fresh: Vec<NodeId> = Vec::new();
        for (shard, topic, names) in pubsub.homes(&state) {
            let shard = &state.shards[shard];
            let master = shard.master().id();
            if !self.made.iter().any(|(_, s)| s.node() == master) {
                match before.iter().position(|(_, s)| s.node() == master) {
                    // Still on its master: it holds what it held.
                    Some(kept) => self.made.push(before.swap_remove(kept)),
                    None => {
                        let made = cx.subscriber(shard.master(), resp3);
                        self.made.push((shard.name.clone(), made));
                        fresh.push(master);
                    }
                }
            }
            if fresh.contains(&master)
                && let Some((_, subscriber)) = self.made.iter().find(|(_, s)| s.node() == master)
            {
                subscriber.carry(topic, names);
            }
        }
    }

    /// Node `from` no longer holds one of the client's shard channels (`notice`): its slot
    /// left the node (the server's own `sunsubscribe`), or the node would not take it (the
    /// subscriber's `sunsubscribe` with the node's redirect in place of a count). It is
    /// subscribed where the slot is now: where a MOVED says, else where the pool's map says.
    /// A map that still names `from` has not heard yet: the cluster is asked, and the notice
    /// decided again a moment later, until [`STALE_MAP_PATIENCE`] has passed (then the slot is
    /// taken to be `from`'s still, and it is asked again).
    pub(super) fn follow(
        &mut self,
        cx: &Context<'_>,
        pubsub: &PubSub,
        (from, notice): (NodeId, &[u8]),
        resp3: bool,
    ) {
        let mut elements = bulk_elements(notice);
        let (Some(b"sunsubscribe"), Some(name)) = (elements.next(), elements.next()) else {
            return;
        };
        let (state, Some(cluster)) = (cx.pool.state(), cx.pool.cluster.as_ref()) else {
            return;
        };
        if !pubsub.holds(Topic::ShardChannel, name) {
            self.waiting.retain(|(n, _)| n != name);
            return;
        }
        // The last element: the server's count, or the redirect the subscriber put there.
        let body = notice.strip_suffix(b"\r\n").unwrap_or(notice);
        let last = memchr::memrchr(b'\n', body).map_or(notice, |at| &notice[at + 1..]);
        let mut shard = state.shard_for(name);
        if let Some(Redirect::Moved { slot, to }) = redirect(last) {
            cluster.moved(slot, to.clone());
            shard = state.shards.iter().position(|s| s.master().addr == to);
            if shard.is_none() {
                cluster.refresh(RefreshCause::UnknownNode);
            }
        }
        let since = match self.waiting.iter().find(|(n, _)| n == name) {
            Some((_, since)) => *since,
            None => {
                self.waiting
                    .push((Bytes::copy_from_slice(name), Instant::now()));
                Instant::now()
            }
        };
        let patient = since.elapsed() < STALE_MAP_PATIENCE;
        let Some(shard) = shard.filter(|&s| state.shards[s].master().id() != from || !patient)
        else {
            if shard.is_some() {
                cluster.refresh(RefreshCause::Moved);
            }
            cx.notice_again(STALE_MAP_WAIT, from, Bytes::copy_from_slice(notice));
            return;
        };
        self.waiting.retain(|(n, _)| n != name);
        let names = vec![Bytes::copy_from_slice(name)];
        (self.on(cx, &state, &state.shards[shard], resp3)).carry(Topic::ShardChannel, names);
    }
}
