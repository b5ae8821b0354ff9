//! What a node tells the keeper of its pool: its health, what it says it is (role,
//! replication, key count, process), and the events that carry them.

use std::sync::Arc;

use super::NodeId;
use crate::config::Address;

/// A node's health as its checks and its connections see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Its health checks pass.
    Up,
    /// A request, connection or check failed since the last check that passed: it is still
    /// in service, but reads go elsewhere when they can.
    Suspect,
    /// Its health checks failed `failures` times in a row (or it may have missed writes), or it
    /// has not been checked yet.
    Down,
    /// It answers `-BUSY`: a script or function runs past its time limit. In service (its
    /// requests get `-BUSY`, as the node answers them), never replaced for it; reads go
    /// elsewhere when they can.
    Busy,
}

impl Health {
    pub(super) fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Up,
            1 => Health::Suspect,
            3 => Health::Busy,
            _ => Health::Down,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Suspect => "suspect",
            Health::Down => "down",
            Health::Busy => "busy",
        }
    }
}

/// What a Redis node says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Master,
    Replica,
}

/// What a Redis node says of itself at a health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Said {
    pub role: Role,
    /// Its replication offset: a master's own, or how much of its master's stream a replica
    /// has taken in. Among replicas of a dead master, the largest has lost the least.
    pub offset: u64,
    /// Keys in the pool's database.
    pub keys: u64,
    /// Its process's run id: a new one means the node restarted.
    pub run_id: Arc<str>,
    /// What it is (`server_name`: `valkey`; `redis` where INFO does not say) and its version
    /// (`valkey_version`, else `redis_version`), which HELLO reports to clients.
    pub server: Arc<str>,
    pub version: Arc<str>,
    /// The master a replica follows, as it names it.
    pub follows: Option<Address>,
    /// A replica whose link to its master is up and not in a full sync: it holds the master's
    /// data up to its offset.
    pub in_sync: bool,
    /// Its replication history's id (`master_replid`), and the one before it
    /// (`master_replid2`, set when a replica is promoted): a node whose previous id is
    /// another's current one took that node's place.
    pub replid: Arc<str>,
    pub replid2: Arc<str>,
}

#[cfg(test)]
impl Said {
    /// What a node says in tests: `role` at `offset` with `keys` keys, in process `run_id`, in
    /// sync if a replica, with no replication history.
    pub(crate) fn for_tests(role: Role, offset: u64, keys: u64, run_id: &str) -> Said {
        Said {
            role,
            offset,
            keys,
            run_id: run_id.into(),
            server: "redis".into(),
            version: "7.0.15".into(),
            follows: None,
            in_sync: role == Role::Replica,
            replid: "".into(),
            replid2: "".into(),
        }
    }
}

/// What a node reports to whoever keeps its pool's topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// Its health changed; `reason` says why, for operators.
    Health {
        node: NodeId,
        health: Health,
        reason: Arc<str>,
    },
    /// Connection attempts, requests or health checks failed `failure_limit` times in a row.
    FailedRepeatedly(NodeId),
    /// What the node says of itself changed (Redis `INFO replication`, `DBSIZE`, run id).
    Said { node: NodeId, said: Said },
}
