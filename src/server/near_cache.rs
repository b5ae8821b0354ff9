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

const CACHING_YES: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nCACHING\r\n$3\r\nYES\r\n";

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

/// A read sent with [`fill_request`], whose reply is kept when it comes unless its key may
/// have changed meanwhile.
pub(in crate::server) struct Filling {
    pub(super) cache: Arc<NearCache>,
    pub(super) read: CachedRead,
    pub(super) profile: (u16, bool),
    pub(super) ticket: Ticket,
    pub(super) node: Arc<Node>,
    /// Sent again to another node: its ticket was for the first.
    pub(super) moved: bool,
    pub(super) max_depth: usize,
}

impl Filling {
    /// The client's reply (the read's), after keeping it if it may be kept.
    pub(super) fn take(&self, reply: Result<Bytes, BackendError>) -> Result<Bytes, BackendError> {
        let reply = reply?;
        let mut scanner = ReplyScanner::new(self.max_depth);
        let mut next = |from: usize| match scanner.scan(&reply[from..]) {
            Ok(Some(len)) => from + len,
            _ => reply.len(),
        };
        let caching = next(0);
        let read = next(caching);
        let pttl = parse_int(
            reply[read..]
                .strip_prefix(b":")
                .unwrap_or_default()
                .trim_ascii_end(),
        );
        let answer = reply.slice(caching..read);
        let metrics = self.cache.metrics();
        if !reply.starts_with(b"+OK") {
            metrics.refused(Refusal::Untracked);
        } else if self.moved {
            metrics.refused(Refusal::Reconnected);
        } else if let (Some(pttl), false) = (pttl, answer.starts_with(b"-")) {
            let (db, resp3) = self.profile;
            let generation = self.node.cache_generation();
            let keyed = (self.read.key.clone(), self.read.variant(db, resp3));
            self.cache
                .fill(keyed, &self.ticket, answer.clone(), (generation, pttl));
        }
        Ok(answer)
    }
}
