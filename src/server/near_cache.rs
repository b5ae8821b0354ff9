//! What a session does for the pool's near cache: a read it may answer from the cache or keep
//! the reply of ([`CachedRead`]), the request that keeps it exact (CLIENT CACHING YES, the
//! read, PTTL of its key), and the reply's way back ([`Filling`]).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::backend::{BackendError, Node, NodeId};
use crate::cache::{NearCache, Ticket, Variant};
use crate::config::ReadFrom;
use crate::metrics::Refusal;
use crate::protocol::ReplyKind;
use crate::protocol::resp::{ReplyScanner, encode, parse_int};
use crate::topology::Shard;

/// The reply framing of [`fill_request`]: its three commands' replies, taken together.
pub(super) const FILL_REPLIES: ReplyKind = ReplyKind::Resps(3);

/// CLIENT CACHING YES: the next read is tracked.
pub(in crate::server) const CACHING_YES: &[u8] =
    b"*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$3\r\nYES\r\n";

/// A read of one key whose reply depends on the key's value alone.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct CachedRead {
    pub key: Bytes,
    /// The command, as the command table names it.
    pub command: &'static str,
    /// The request's bytes after the key: its other arguments.
    pub rest: Bytes,
}

impl CachedRead {
    pub(super) fn variant(&self, db: u16, resp3: bool) -> Variant<'_> {
        Variant {
            command: self.command,
            db,
            resp3,
            rest: &self.rest,
        }
    }
}

/// The request that reads `key` with `read` so that its reply can be kept: tracked (CLIENT
/// CACHING YES, on a connection tracking with OPTIN) and followed by the key's PTTL.
pub(super) fn fill_request(read: &[u8], key: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(CACHING_YES.len() + read.len() + key.len() + 32);
    buf.extend_from_slice(CACHING_YES);
    buf.extend_from_slice(read);
    encode::command(&mut buf, [&b"PTTL"[..], key].into_iter());
    buf.freeze()
}

/// Whether a reply cached from node `id` at cache generation `generation` may answer a read
/// of `shard` now: the node is still the shard's (its master, unless the pool reads from
/// replicas) and has lost nothing since.
pub(super) fn serves(shard: &Shard, read_from: ReadFrom, id: NodeId, generation: u64) -> bool {
    shard.index_of(id).is_some_and(|i| {
        (i == shard.master || read_from != ReadFrom::Master)
            && shard.nodes[i].cache_generation() == generation
    })
}

/// Where what one fill request brings is kept: the pool's cache, as filled from `node` for a
/// client of `profile` (database, RESP3).
pub(in crate::server) struct Keeper {
    pub(super) cache: Arc<NearCache>,
    pub(super) node: Arc<Node>,
    pub(super) profile: (u16, bool),
}

impl Keeper {
    /// Keeps `answer`, the reply to a read of `key` sent with `ticket`, unless it is an error
    /// or the server did not say when the key expires (`pttl`).
    pub(super) fn keep(&self, key: Bytes, (command, rest): (&'static str, &[u8]), fill: Fill<'_>) {
        let (ticket, answer, pttl) = fill;
        if let (Some(pttl), false) = (pttl, answer.starts_with(b"-")) {
            let (db, resp3) = self.profile;
            let variant = Variant {
                command,
                db,
                resp3,
                rest,
            };
            let generation = self.node.cache_generation();
            (self.cache).fill((key, variant), ticket, answer.clone(), (generation, pttl));
        }
    }

    /// Counts a fill not made, for `why`.
    pub(super) fn refuse(&self, why: Refusal) {
        self.cache.metrics().refused(why);
    }
}

/// A read's ticket, its reply, and the key's PTTL as the server gave it.
pub(super) type Fill<'a> = (&'a Ticket, &'a Bytes, Option<i64>);

/// The replies of a fill request, taken one by one: CLIENT CACHING's, the read's, then PTTLs.
pub(super) struct FillReplies<'r> {
    reply: &'r Bytes,
    at: usize,
    scanner: ReplyScanner,
}

impl<'r> FillReplies<'r> {
    pub(super) fn new(reply: &'r Bytes, max_depth: usize) -> FillReplies<'r> {
        FillReplies {
            reply,
            at: 0,
            scanner: ReplyScanner::new(max_depth),
        }
    }

    /// The next reply (empty past the last).
    pub(super) fn next(&mut self) -> Bytes {
        let start = self.at;
        self.at = match self.scanner.scan(&self.reply[start..]) {
            Ok(Some(len)) => start + len,
            _ => self.reply.len(),
        };
        self.reply.slice(start..self.at)
    }

    /// Whether CLIENT CACHING YES, the first reply, was taken: the read is tracked.
    pub(super) fn tracked(&mut self) -> bool {
        self.next().starts_with(b"+OK")
    }

    /// The next reply as a PTTL's integer.
    pub(super) fn pttl(&mut self) -> Option<i64> {
        let reply = self.next();
        parse_int(reply.strip_prefix(b":")?.trim_ascii_end())
    }
}

/// A read sent with [`fill_request`], whose reply is kept when it comes unless its key may
/// have changed meanwhile.
pub(in crate::server) struct Filling {
    pub(super) keeper: Keeper,
    pub(super) read: CachedRead,
    pub(super) ticket: Ticket,
    /// Sent again to another node: its ticket was for the first.
    pub(super) moved: bool,
    pub(super) max_depth: usize,
}

impl Filling {
    /// The client's reply (the read's), after keeping it if it may be kept.
    pub(super) fn take(&self, reply: Result<Bytes, BackendError>) -> Result<Bytes, BackendError> {
        let reply = reply?;
        let mut replies = FillReplies::new(&reply, self.max_depth);
        let tracked = replies.tracked();
        let answer = replies.next();
        let pttl = replies.pttl();
        let read = &self.read;
        if !tracked {
            self.keeper.refuse(Refusal::Untracked);
        } else if self.moved {
            self.keeper.refuse(Refusal::Reconnected);
        } else {
            let fill = (&self.ticket, &answer, pttl);
            (self.keeper).keep(read.key.clone(), (read.command, &read.rest), fill);
        }
        Ok(answer)
    }
}
