//! One shard of the near cache: cached replies by key, within a byte budget, the least
//! recently used keys evicted first (a CLOCK: a key read since the hand last passed gets
//! another round).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use crate::backend::NodeId;

/// Bytes counted for a key beyond its name and replies: the map's entry, the clock's.
pub(super) const KEY_OVERHEAD: usize = 96;
/// Bytes counted for a reply beyond its own: its place among the key's replies.
pub(super) const REPLY_OVERHEAD: usize = 80;

/// Which reply of a key: the command, the client's database and protocol level, and the
/// request's bytes after the key (the other arguments, as the client sent them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Variant<'a> {
    pub command: &'static str,
    pub db: u16,
    pub resp3: bool,
    pub rest: &'a [u8],
}

/// Where a cached reply came from, and until when it may be served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub node: NodeId,
    /// The node's cache generation when the read was sent: a lost connection, a flush or a
    /// failover moves it on, and the reply is no longer served.
    pub generation: u64,
    pub expires: Instant,
}

struct Reply {
    command: &'static str,
    db: u16,
    resp3: bool,
    rest: Bytes,
    reply: Bytes,
    origin: Origin,
    /// The cache's flush count when the read was sent.
    flushes: u32,
}

impl Reply {
    fn is(&self, v: &Variant<'_>) -> bool {
        self.command == v.command
            && self.db == v.db
            && self.resp3 == v.resp3
            && self.rest[..] == *v.rest
    }

    fn bytes(&self) -> usize {
        REPLY_OVERHEAD + self.rest.len() + self.reply.len()
    }
}

struct Entry {
    replies: Vec<Reply>,
    /// Read since the clock's hand last passed it.
    referenced: bool,
    /// Its place on the clock (an entry removed and filled again gets a new one).
    tick: u64,
    bytes: usize,
}

/// What a shard did that the pool's metrics count.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Change {
    pub entries: i64,
    pub bytes: i64,
    pub evicted: u64,
}

#[derive(Default)]
pub(super) struct Store {
    entries: HashMap<Bytes, Entry>,
    /// Keys in the order the hand meets them, with the tick they had when queued.
    clock: VecDeque<(Bytes, u64)>,
    next_tick: u64,
    bytes: usize,
}

impl Store {
    /// The cached reply of `key` for `variant`, if `valid` says its origin still serves and
    /// `flushes` is the one it was filled under.
    pub(super) fn get(
        &mut self,
        key: &[u8],
        variants: &[Variant<'_>],
        flushes: u32,
        valid: impl Fn(&Origin) -> bool,
    ) -> Option<Bytes> {
        let entry = self.entries.get_mut(key)?;
        let reply = variants.iter().find_map(|v| {
            let reply = entry.replies.iter().find(|r| r.is(v))?;
            (reply.flushes == flushes && valid(&reply.origin)).then_some(reply)
        })?;
        entry.referenced = true;
        Some(reply.reply.clone())
    }

    /// Keeps `reply` for `key` and `variant`, replacing the one kept before, then evicts
    /// until the shard is within `budget` bytes.
    pub(super) fn put(
        &mut self,
        (key, variant): (Bytes, Variant<'_>),
        (reply, origin, flushes): (Bytes, Origin, u32),
        budget: usize,
    ) -> Change {
        let mut change = Change::default();
        let reply = Reply {
            command: variant.command,
            db: variant.db,
            resp3: variant.resp3,
            rest: Bytes::copy_from_slice(variant.rest),
            reply,
            origin,
            flushes,
        };
        let added = reply.bytes();
        let entry = match self.entries.get_mut(&key) {
            Some(entry) => entry,
            None => {
                let tick = self.next_tick;
                self.next_tick += 1;
                self.clock.push_back((key.clone(), tick));
                let bytes = KEY_OVERHEAD + key.len();
                self.bytes += bytes;
                change.entries += 1;
                change.bytes += bytes as i64;
                self.entries.entry(key).or_insert(Entry {
                    replies: Vec::new(),
                    referenced: false,
                    tick,
                    bytes,
                })
            }
        };
        if let Some(at) = entry.replies.iter().position(|r| r.is(&variant)) {
            let old = entry.replies.swap_remove(at).bytes();
            entry.bytes -= old;
            self.bytes -= old;
            change.bytes -= old as i64;
        }
        entry.replies.push(reply);
        entry.bytes += added;
        self.bytes += added;
        change.bytes += added as i64;
        self.evict(budget, &mut change);
        change
    }

    /// Forgets every reply of `key`.
    pub(super) fn remove(&mut self, key: &[u8]) -> Change {
        match self.entries.remove(key) {
            Some(entry) => {
                self.bytes -= entry.bytes;
                self.compact();
                Change {
                    entries: -1,
                    bytes: -(entry.bytes as i64),
                    evicted: 0,
                }
            }
            None => Change::default(),
        }
    }

    /// Forgets everything.
    pub(super) fn clear(&mut self) -> Change {
        let change = Change {
            entries: -(self.entries.len() as i64),
            bytes: -(self.bytes as i64),
            evicted: 0,
        };
        *self = Store {
            next_tick: self.next_tick,
            ..Store::default()
        };
        change
    }

    /// Evicts keys the hand finds unread since it last passed, until within `budget`.
    fn evict(&mut self, budget: usize, change: &mut Change) {
        while self.bytes > budget {
            let Some((key, tick)) = self.clock.pop_front() else {
                return;
            };
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if entry.tick != tick {
                continue;
            }
            if std::mem::take(&mut entry.referenced) {
                self.clock.push_back((key, tick));
                continue;
            }
            if let Some(entry) = self.entries.remove(&key) {
                self.bytes -= entry.bytes;
                change.entries -= 1;
                change.bytes -= entry.bytes as i64;
                change.evicted += 1;
            }
        }
    }

    /// Drops the clock's places of removed keys once they outnumber the keys kept, so keys
    /// filled and invalidated over and over do not grow it.
    fn compact(&mut self) {
        if self.clock.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.clock
                .retain(|(key, tick)| entries.get(key).is_some_and(|e| e.tick == *tick));
        }
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }
}
