//! CLUSTER, READONLY and READWRITE as a cluster pool answers them: the proxy presents itself
//! as a cluster of one node that serves every slot, at the address the client connected to
//! (or the pool's `announce` address), so a cluster-aware client pointed at it sends
//! everything through it. A ring pool answers as a server with cluster support disabled.

use bytes::BytesMut;
use md5::{Digest, Md5};

use super::context::{Local, ok};
use crate::config::Address;
use crate::placement::slots::{self, SLOTS};
use crate::protocol::resp::{Request, encode};
use crate::server::error::ClientError;
use crate::server::plan::Plan;
use crate::topology::PoolState;

/// The one node a cluster pool presents.
struct Myself {
    id: String,
    addr: Address,
}

impl Myself {
    /// The proxy as the client sees it: the same id from every instance of the pool (derived
    /// from its name), at the address the client reached.
    fn of(cx: &Local<'_>) -> Myself {
        let digest = Md5::digest(format!("ringproxy pool {}", cx.pool.config.name));
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let announced = cx
            .pool
            .config
            .cluster
            .as_ref()
            .and_then(|c| c.announce.clone());
        let addr = announced.unwrap_or_else(|| match cx.listing.laddr {
            Some(laddr) => Address {
                host: laddr.ip().to_string(),
                port: laddr.port(),
            },
            None => Address {
                host: "127.0.0.1".into(),
                port: 0,
            },
        });
        Myself {
            id: format!("{hex}{}", &hex[..8]),
            addr,
        }
    }
}

/// READONLY and READWRITE: accepted (the proxy decides where reads go).
pub(super) fn read_mode(state: &PoolState) -> Plan {
    match state.slots() {
        Some(_) => ok(),
        None => disabled(),
    }
}

fn disabled() -> Plan {
    Plan::Fail(ClientError::Exact(
        "ERR This instance has cluster support disabled".into(),
    ))
}

/// CLUSTER INFO, MYID, KEYSLOT, SLOTS, SHARDS, NODES; the rest is refused with the reason.
pub(super) fn run(cx: &Local<'_>, state: &PoolState, req: &Request) -> Plan {
    let Some(slots) = state.slots() else {
        return disabled();
    };
    let sub = req.arg(1).to_ascii_uppercase();
    let me = Myself::of(cx);
    let mut b = BytesMut::new();
    let served = slots.covers_all();
    match (&sub[..], req.argc()) {
        (b"INFO", 2) => {
            let state = if served { "ok" } else { "fail" };
            let assigned = if served { SLOTS } else { 0 };
            let info = format!(
                "cluster_state:{state}\r\ncluster_slots_assigned:{assigned}\r\ncluster_slots_ok:{assigned}\r\ncluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:1\r\ncluster_size:1\r\ncluster_current_epoch:1\r\ncluster_my_epoch:1\r\ncluster_stats_messages_sent:0\r\ncluster_stats_messages_received:0\r\ntotal_cluster_links_buffer_limit_exceeded:0\r\n"
            );
            encode::bulk(&mut b, info.as_bytes());
        }
        (b"MYID", 2) => encode::bulk(&mut b, me.id.as_bytes()),
        (b"KEYSLOT", 3) => encode::integer(&mut b, i64::from(slots::slot(req.arg(2)))),
        (b"SLOTS", 2) if served => {
            encode::array(&mut b, 1);
            encode::array(&mut b, 3);
            encode::integer(&mut b, 0);
            encode::integer(&mut b, SLOTS as i64 - 1);
            encode::array(&mut b, 3);
            encode::bulk(&mut b, me.addr.host.as_bytes());
            encode::integer(&mut b, i64::from(me.addr.port));
            encode::bulk(&mut b, me.id.as_bytes());
        }
        (b"SHARDS", 2) if served => {
            let resp3 = cx.client.resp3;
            encode::array(&mut b, 1);
            encode::map(&mut b, 2, resp3);
            encode::bulk(&mut b, b"slots");
            encode::array(&mut b, 2);
            encode::integer(&mut b, 0);
            encode::integer(&mut b, SLOTS as i64 - 1);
            encode::bulk(&mut b, b"nodes");
            encode::array(&mut b, 1);
            encode::map(&mut b, 7, resp3);
            for (field, value) in [
                ("id", me.id.as_str()),
                ("ip", &me.addr.host),
                ("endpoint", &me.addr.host),
                ("role", "master"),
                ("health", "online"),
            ] {
                encode::bulk(&mut b, field.as_bytes());
                encode::bulk(&mut b, value.as_bytes());
            }
            encode::bulk(&mut b, b"port");
            encode::integer(&mut b, i64::from(me.addr.port));
            encode::bulk(&mut b, b"replication-offset");
            encode::integer(&mut b, 0);
        }
        (b"SLOTS" | b"SHARDS", 2) => encode::array(&mut b, 0),
        (b"NODES", 2) => {
            let ranges = if served { "0-16383" } else { "" };
            let line = format!(
                "{} {}:{}@0 myself,master - 0 0 1 connected {ranges}\n",
                me.id, me.addr.host, me.addr.port
            );
            encode::bulk(&mut b, line.as_bytes());
        }
        (b"INFO" | b"MYID" | b"KEYSLOT" | b"SLOTS" | b"SHARDS" | b"NODES", _) => {
            let name = String::from_utf8_lossy(&sub).to_ascii_lowercase();
            return Plan::Fail(ClientError::WrongArity(format!("cluster|{name}")));
        }
        _ => {
            return Plan::Fail(ClientError::Unsupported {
                command: format!("CLUSTER {}", String::from_utf8_lossy(&sub)),
                why: "the proxy presents the cluster as one node serving every slot: CLUSTER INFO, MYID, KEYSLOT, SLOTS, SHARDS and NODES are answered; ask the cluster's nodes themselves for the rest".into(),
            });
        }
    }
    Plan::Reply(b.freeze())
}
