//! What routing decides for one request, before any I/O: where each backend request goes and
//! what becomes of the replies. The frontends' routing functions return a [`Plan`] from the
//! request and a `PoolState` snapshot; the session carries it out.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

use super::error::ClientError;
use super::merge::Gather;
use super::near_cache::CachedRead;
use super::outbox::{Quiet, ResendWhen, TimeoutArg};
use crate::protocol::ReplyKind;
use crate::topology::PoolState;

/// Which node of the snapshot a backend request goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// The shard's master for a write; for a read, the node the pool's `read_from` picks.
    Shard { shard: usize, write: bool },
    /// Node `node` (in `Shard::nodes`) of shard `shard`: fan-outs that reach every node.
    Node { shard: usize, node: usize },
}

impl Target {
    /// The shard (its index in the snapshot) the target is in.
    pub(super) fn shard(self) -> usize {
        match self {
            Target::Shard { shard, .. } | Target::Node { shard, .. } => shard,
        }
    }
}

/// One backend request: where, what, and how its reply is framed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Part {
    pub target: Target,
    pub payload: Bytes,
    pub kind: ReplyKind,
}

impl Part {
    pub(super) fn resp(target: Target, payload: Bytes) -> Part {
        Part {
            target,
            payload,
            kind: ReplyKind::Resp,
        }
    }
}

/// A reply still to be made: see [`Plan::Later`].
pub(super) struct Waiting(pub Pin<Box<dyn Future<Output = Bytes> + Send>>);

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waiting")
    }
}

/// What the session does with one request.
#[derive(Debug)]
pub(super) enum Plan {
    /// Answer at once.
    Reply(Bytes),
    Fail(ClientError),
    /// An error answered only after a while: a failed AUTH, slowed per client address.
    FailAfter(ClientError, Duration),
    /// A reply the proxy makes once something it waits for has happened (CLIENT TRACKING ON
    /// BCAST, once every node hears every key's changes).
    Later(Waiting),
    /// One backend request; its reply is the client's.
    Forward(Part),
    /// A request whose client asked for no reply (memcache `noreply`, `q`): its reply is
    /// dropped where the server would not have shown it.
    Quiet(Part, Quiet),
    /// One backend request per part, merged into one reply.
    Gather(Vec<Part>, Gather),
    /// [`Plan::Gather`], each part on a connection reserved for it: SCRIPT KILL, which a node
    /// running a script past its time limit reads on any connection but the one the script
    /// came on, which may be the shared one its other requests wait behind.
    Aside(Vec<Part>, Gather),
    /// A request that may be sent again (a read to the next node when its node fails; an
    /// EVALSHA after loading the script where it was lost).
    Resend {
        part: Part,
        retries: usize,
        when: ResendWhen,
        quiet: Option<Quiet>,
    },
    /// A read the pool's near cache may answer, or else keep the reply of; `resend`: as
    /// [`Plan::Resend`] to the next node of its shard if its node fails.
    Cached {
        part: Part,
        read: CachedRead,
        resend: bool,
    },
    /// A command that may wait on its backend, on a connection reserved for the client until
    /// it answers; `wait` is how long it may wait (`None`: forever) beyond the pool's timeout,
    /// as its argument `timeout_at` says.
    Reserved {
        part: Part,
        wait: Option<Duration>,
        timeout_at: TimeoutArg,
    },
}

impl Plan {
    /// A read of one node; `may_move`: sent once more, to the next node of its shard, if its
    /// node fails before answering.
    pub(super) fn read(part: Part, may_move: bool) -> Plan {
        match may_move {
            true => Plan::Resend {
                part,
                retries: 1,
                when: ResendWhen::NodeFails,
                quiet: None,
            },
            false => Plan::Forward(part),
        }
    }

    /// Where its first backend request goes, and how many it makes; `None` when the proxy
    /// answers.
    pub(super) fn first_target(&self) -> Option<(Target, usize)> {
        match self {
            Plan::Reply(_) | Plan::Fail(_) | Plan::FailAfter(..) | Plan::Later(_) => None,
            Plan::Forward(part)
            | Plan::Quiet(part, _)
            | Plan::Resend { part, .. }
            | Plan::Cached { part, .. }
            | Plan::Reserved { part, .. } => Some((part.target, 1)),
            Plan::Gather(parts, _) | Plan::Aside(parts, _) => {
                parts.first().map(|p| (p.target, parts.len()))
            }
        }
    }
}

/// Where a part of a split request goes: its group (see `PoolState::group_for`) and shard.
pub(super) type Placed = (u32, usize);

/// Groups of a split request found by a scan; past that, by a table.
const SCANNED_GROUPS: usize = 16;

/// Groups keys for a split request: the part of every key (one part per shard, or per slot in
/// a cluster, in order of first use) and each part's group and shard.
pub(super) fn parts_by_shard<'a, N>(
    state: &PoolState<N>,
    keys: impl Iterator<Item = &'a [u8]>,
) -> Result<(Vec<u32>, Vec<Placed>), ClientError> {
    let mut key_parts = Vec::with_capacity(keys.size_hint().0);
    let mut part_shards: Vec<Placed> = Vec::new();
    let mut groups: Vec<u32> = Vec::new();
    let mut index: HashMap<u32, u32> = HashMap::new();
    for key in keys {
        let (group, shard) = state
            .group_for(key)
            .ok_or_else(|| ClientError::unplaced(state))?;
        let known = match groups.len() <= SCANNED_GROUPS {
            true => groups.iter().position(|&g| g == group).map(|p| p as u32),
            false => index.get(&group).copied(),
        };
        let part = known.unwrap_or_else(|| {
            groups.push(group);
            part_shards.push((group, shard));
            let part = groups.len() as u32 - 1;
            match groups.len() {
                n if n == SCANNED_GROUPS + 1 => {
                    index.extend(groups.iter().enumerate().map(|(p, &g)| (g, p as u32)));
                }
                n if n > SCANNED_GROUPS + 1 => _ = index.insert(group, part),
                _ => {}
            }
            part
        });
        key_parts.push(part);
    }
    Ok((key_parts, part_shards))
}

/// Test helpers: a pool state over three shards without sockets.
#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;

    use bytes::BytesMut;

    use crate::backend::Health;
    use crate::placement::{Distribution, HashFn, Placement, Ring, RingMember};
    use crate::protocol::resp::{Request, RequestParser, encode};
    use crate::topology::{NodeStatus, PoolState, Shard};

    /// A RESP request of `args`, as a client sends it.
    pub(in crate::server) fn request(args: &[&str]) -> Request {
        let mut buf = BytesMut::new();
        encode::command(&mut buf, args.iter().map(|a| a.as_bytes()));
        RequestParser::default()
            .parse(&mut buf, &Default::default(), true)
            .unwrap()
            .unwrap()
    }

    /// Three shards `s0`..`s2` (fnv1a_64, ketama, `{}` hash tags), each a master and
    /// `replicas` replicas, every node up.
    pub(in crate::server) fn three_shards(replicas: usize, replicated: bool) -> PoolState<()> {
        let names = ["s0", "s1", "s2"];
        let members: Vec<RingMember<'_>> = names
            .iter()
            .map(|identity| RingMember {
                identity,
                weight: 1,
                live: true,
            })
            .collect();
        let ring = Ring::new(
            HashFn::Fnv1a64,
            Distribution::Ketama,
            Some(*b"{}"),
            &members,
        );
        let up = NodeStatus {
            health: Health::Up,
            ..NodeStatus::unchecked()
        };
        let shards = names
            .iter()
            .map(|name| Shard {
                name: (*name).into(),
                identity: (*name).into(),
                weight: 1,
                nodes: vec![(); 1 + replicas],
                status: vec![up.clone(); 1 + replicas],
                master: 0,
                replicated,
            })
            .collect();
        PoolState::new(Placement::Ring(Arc::new(ring)), shards)
    }

    /// The first key `<prefix><n>` on shard `shard`.
    pub(in crate::server) fn key_on(state: &PoolState<()>, shard: usize, prefix: &str) -> String {
        (0..10_000)
            .map(|n| format!("{prefix}{n}"))
            .find(|k| state.shard_for(k.as_bytes()) == Some(shard))
            .unwrap()
    }
}
