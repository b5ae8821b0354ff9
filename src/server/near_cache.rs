//! What a session does for the pool's near cache: a read it may answer from the cache or keep
//! the reply of ([`CachedRead`]), the request that keeps it exact (CLIENT CACHING YES, the
//! read, PTTL of its key), and the reply's way back ([`Filling`]). A fill request sent again
//! (a cluster's redirect, a failed node) goes as its plain read: its ticket was for the first
//! node, and after an ASK no tracked read can follow (ASKING and CLIENT CACHING YES each hold
//! for the next command alone).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::backend::{BackendError, Node, NodeId};
use crate::cache::clients::ClientTracking;
use crate::cache::{NearCache, Ticket, Variant};
use crate::config::ReadFrom;
use crate::metrics::Refusal;
use crate::protocol::ReplyKind;
use crate::protocol::resp::{ReplyScanner, encode, parse_int};
use crate::topology::Shard;
use crate::topology::cluster::{self, Redirect};

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
    /// The client, tracking through the proxy, that this read is tracked for: told at once
    /// that the key changed if the server does not track the read after all.
    pub reader: Option<u64>,
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

/// The read of `payload`, if it is a fill request (as [`fill_request`] or an MGET's makes
/// them): what is sent instead when it is sent again.
pub(super) fn plain_read(payload: &Bytes) -> Option<Bytes> {
    let read = payload.strip_prefix(CACHING_YES)?;
    // A request is an array of bulk strings: a reply's scanner finds where it ends.
    let len = ReplyScanner::new(2).scan(read).ok()??;
    Some(payload.slice_ref(&read[..len]))
}

/// The cluster's redirect `reply` is: the reply itself, or the read's in a fill request's
/// replies (CLIENT CACHING YES answered, then the read redirected).
pub(in crate::server) fn redirect_in(reply: &[u8]) -> Option<Redirect> {
    let read = match reply.first()? {
        b'-' => reply,
        _ => reply
            .strip_prefix(b"+OK\r\n")
            .filter(|r| r.first() == Some(&b'-'))?,
    };
    let line = memchr::memmem::find(read, b"\r\n").map_or(read, |end| &read[..end + 2]);
    cluster::redirect(line)
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
    /// The tracking client the read is tracked for (see [`CachedRead::reader`]).
    pub(super) reader: Option<(Arc<ClientTracking>, u64)>,
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

    /// The read of `key` was not tracked by its server (`why`): nothing is kept, and the
    /// client it was tracked for is told the key changed, after the reply it is owed.
    pub(super) fn untracked(&self, key: &[u8], why: Refusal) {
        self.cache.metrics().refused(why);
        if let Some((clients, id)) = &self.reader {
            clients.tell(*id, key);
        }
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
    /// (A fill sent again as its plain read is not taken here: see [`Filling::resent`].)
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
        match tracked {
            false => self.keeper.untracked(&read.key, Refusal::Untracked),
            true => {
                let fill = (&self.ticket, &answer, pttl);
                (self.keeper).keep(read.key.clone(), (read.command, &read.rest), fill);
            }
        }
        Ok(answer)
    }

    /// The read is sent again as it is, untracked: its reply is the client's alone.
    pub(super) fn resent(&self) {
        self.keeper.untracked(&self.read.key, Refusal::Resent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_is_found_alone_or_as_a_fill_requests_read() {
        let to = |port| crate::config::Address {
            host: "h".into(),
            port,
        };
        let moved = Some(Redirect::Moved { slot: 1, to: to(1) });
        assert_eq!(redirect_in(b"-MOVED 1 h:1\r\n"), moved);
        let ask = Some(Redirect::Ask { slot: 2, to: to(2) });
        assert_eq!(redirect_in(b"+OK\r\n-ASK 2 h:2\r\n-ASK 2 h:2\r\n"), ask);
        for not in [
            &b"+OK\r\n"[..],
            b"+OK\r\n$1\r\na\r\n:-1\r\n",
            b"-ERR CLIENT CACHING refused\r\n-MOVED 1 h:1\r\n",
            b"",
        ] {
            assert_eq!(redirect_in(not), None);
        }
    }

    #[test]
    fn a_fill_requests_plain_read_is_its_second_command() {
        let get = Bytes::from_static(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(plain_read(&fill_request(&get, b"k")), Some(get.clone()));
        assert_eq!(plain_read(&get), None);
    }
}
