//! Tracking for the proxy's own clients (CLIENT TRACKING through the proxy): which clients read
//! which keys, and which listen to key prefixes (BCAST); an invalidation the proxy hears (a
//! server's, or a write through the proxy) is passed to each client it concerns, as the
//! keys changed, and every client is told that everything changed when the proxy may have
//! missed an invalidation (a lost tracking connection).
//!
//! As on a server, a client is told once per read: a key it is told of is no longer tracked
//! for it until it reads it again. The keys kept are bounded ([`MAX_KEYS`]): past that, one is
//! let go and its clients told, as Redis does with `tracking-table-max-keys`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use crate::backend::{Mailbox, ReplyTo, Token};
use crate::protocol::resp::encode;

/// Keys tracked for clients, in all: Redis's default `tracking-table-max-keys`.
pub(crate) const MAX_KEYS: usize = 1_000_000;
/// Shards of the key table, each with its own lock.
const SHARDS: usize = 64;

/// How a client tracks: where its invalidations go, whether it listens to prefixes, and
/// whether it is told of its own writes.
#[derive(Clone)]
pub(crate) struct Tracker {
    /// Where the invalidations are delivered: the client itself, or the one it redirects to.
    pub to: Arc<dyn Mailbox>,
    /// `to` is the client itself: of its own writes, it is told on its connection right
    /// after the write's reply, as a server tells it, rather than whenever its inbox is read.
    pub own: bool,
    /// BCAST: the prefixes it listens to (empty: every key); `None`: the keys it reads.
    pub bcast: Option<Vec<Bytes>>,
    /// NOLOOP: not told of keys it wrote itself.
    pub noloop: bool,
}

/// The pool's tracking clients and the keys they read.
pub(crate) struct ClientTracking {
    clients: RwLock<HashMap<u64, Tracker>>,
    /// How many clients track: with none, an invalidation costs nothing more.
    tracking: AtomicUsize,
    /// Whether some client listens to prefixes (BCAST): each node then has a broadcast
    /// connection that hears every key's changes (`backend::broadcast`).
    broadcast: watch::Sender<bool>,
    /// Each key read by a tracking client, and who read it; sharded by the key's hash.
    keys: Box<[Mutex<Readers>]>,
    hasher: std::hash::RandomState,
}

/// Keys read by tracking clients, each with the clients that read it.
type Readers = HashMap<Bytes, Vec<u64>>;

/// What a client is told: the keys changed (a RESP array), or, empty, that every key may have.
pub(crate) type Changed = Bytes;

impl Default for ClientTracking {
    fn default() -> ClientTracking {
        ClientTracking {
            clients: RwLock::default(),
            tracking: AtomicUsize::new(0),
            broadcast: watch::Sender::new(false),
            keys: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl ClientTracking {
    fn read_clients(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Tracker>> {
        self.clients.read().unwrap_or_else(|p| p.into_inner())
    }

    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, Readers> {
        use std::hash::BuildHasher;
        let at = self.hasher.hash_one(key) as usize % SHARDS;
        self.keys[at].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any client tracks.
    pub(crate) fn any(&self) -> bool {
        self.tracking.load(Ordering::Relaxed) > 0
    }

    /// Client `id` tracks as `tracker` says (from now, replacing how it tracked before).
    pub(crate) fn start(&self, id: u64, tracker: Tracker) {
        let mut clients = self.clients.write().unwrap_or_else(|p| p.into_inner());
        clients.insert(id, tracker);
        self.counted(&clients);
    }

    /// Client `id` no longer tracks (CLIENT TRACKING OFF, or it left). The keys it read are
    /// let go of when they next change.
    pub(crate) fn stop(&self, id: u64) {
        let mut clients = self.clients.write().unwrap_or_else(|p| p.into_inner());
        if clients.remove(&id).is_some() {
            self.counted(&clients);
        }
    }

    fn counted(&self, clients: &HashMap<u64, Tracker>) {
        self.tracking.store(clients.len(), Ordering::Relaxed);
        let broadcast = clients.values().any(|t| t.bcast.is_some());
        self.broadcast
            .send_if_modified(|b| std::mem::replace(b, broadcast) != broadcast);
    }

    /// Whether some client listens to prefixes, as it changes.
    pub(crate) fn broadcast(&self) -> watch::Receiver<bool> {
        self.broadcast.subscribe()
    }

    /// Client `id` read `key`: it is told when the key changes.
    pub(crate) fn read(&self, id: u64, key: &[u8]) {
        let mut shard = self.shard(key);
        if let Some(readers) = shard.get_mut(key) {
            if !readers.contains(&id) {
                readers.push(id);
            }
            return;
        }
        // Past the bound, a key is let go of (its readers told) to make room.
        let full = shard.len() >= MAX_KEYS / SHARDS;
        let dropped = full
            .then(|| shard.keys().next().cloned())
            .flatten()
            .and_then(|k| shard.remove(&k).map(|readers| (k, readers)));
        // A copy: a slice would keep the client's read buffer alive.
        shard.insert(Bytes::copy_from_slice(key), vec![id]);
        drop(shard);
        if let Some((key, readers)) = dropped {
            self.tell_readers(&readers, &one_key(&key), None);
        }
    }

    /// A server said `keys` changed, read by the proxy's connections: each reader is told of
    /// each key.
    pub(crate) fn heard(&self, keys: &[&[u8]]) {
        if !self.any() {
            return;
        }
        for key in keys {
            self.forget(key, None);
        }
    }

    /// A server said `keys` changed, in one broadcast: each BCAST client is told of the keys
    /// under each of its prefixes, in one message per prefix, as a server tells them.
    pub(crate) fn broadcast_heard(&self, keys: &[&[u8]]) {
        if !self.any() {
            return;
        }
        let clients = self.read_clients();
        for t in clients.values() {
            let Some(prefixes) = &t.bcast else {
                continue;
            };
            let every_key = [Bytes::new()];
            let prefixes = if prefixes.is_empty() {
                &every_key[..]
            } else {
                prefixes
            };
            for prefix in prefixes {
                let under: Vec<&[u8]> = keys
                    .iter()
                    .copied()
                    .filter(|k| k.starts_with(prefix))
                    .collect();
                if !under.is_empty() {
                    deliver(t, some_keys(&under));
                }
            }
        }
    }

    /// Client `id` read `key` untracked by its server: it is told at once that `key` changed.
    pub(crate) fn tell(&self, id: u64, key: &[u8]) {
        if let Some(t) = self.read_clients().get(&id).filter(|t| t.bcast.is_none()) {
            deliver(t, one_key(key));
        }
    }

    /// `key` was written through the proxy by client `writer`.
    /// Returns whether the writer is to be told by the caller, on its own connection after
    /// its write's reply (it read the key, without NOLOOP, and redirects nowhere). BCAST
    /// clients are not told here: they hear the server's own change, which every write makes.
    pub(crate) fn changed(&self, key: &[u8], writer: u64) -> bool {
        self.any() && self.forget(key, Some(writer))
    }

    /// `key` changed: its readers are told and it is no longer tracked. Returns whether
    /// `writer` is to be told by the caller (see [`ClientTracking::changed`]).
    fn forget(&self, key: &[u8], writer: Option<u64>) -> bool {
        let readers = self.shard(key).remove(key);
        readers.is_some_and(|readers| self.tell_readers(&readers, &one_key(key), writer))
    }

    /// Whether client `id` tracks on its own connection: told there that every key changed
    /// when it flushes through the proxy, right after the reply.
    pub(crate) fn tracks_own(&self, id: u64) -> bool {
        self.any() && self.read_clients().get(&id).is_some_and(|t| t.own)
    }

    /// Every key may have changed: every tracking client is told so, and no key is tracked.
    pub(crate) fn all_changed(&self) {
        if !self.any() {
            return;
        }
        for shard in &self.keys {
            shard.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
        for tracker in self.read_clients().values() {
            deliver(tracker, Bytes::new());
        }
    }

    /// Tells `readers` that a key changed (`message`); a NOLOOP `writer` is not told. Returns
    /// whether the writer is to be told by the caller (see [`ClientTracking::changed`]).
    fn tell_readers(&self, readers: &[u64], message: &Changed, writer: Option<u64>) -> bool {
        let clients = self.read_clients();
        let mut writer_told = false;
        for id in readers {
            let Some(t) = clients.get(id).filter(|t| t.bcast.is_none()) else {
                continue;
            };
            match writer == Some(*id) {
                true if t.noloop => {}
                true if t.own => writer_told = true,
                _ => deliver(t, message.clone()),
            }
        }
        writer_told
    }
}

/// The keys changed as a client is told them: an array of one.
pub(crate) fn one_key(key: &[u8]) -> Changed {
    some_keys(&[key])
}

fn some_keys(keys: &[&[u8]]) -> Changed {
    let mut buf = BytesMut::with_capacity(keys.iter().map(|k| k.len() + 16).sum::<usize>() + 8);
    encode::array(&mut buf, keys.len());
    keys.iter().for_each(|k| encode::bulk(&mut buf, k));
    buf.freeze()
}

fn deliver(tracker: &Tracker, changed: Changed) {
    let to = ReplyTo {
        inbox: tracker.to.clone(),
        token: Token::Invalidate,
    };
    to.answer(changed);
}

#[cfg(test)]
mod tests;
