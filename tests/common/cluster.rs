//! A real Redis Cluster for tests: redis-server nodes with `--cluster-enabled yes` on free
//! loopback ports (their bus ports free too, set with `--cluster-port`), joined by
//! `redis-cli --cluster create`, waited for until every node sees every slot served and every
//! replica in sync.

use std::process::Command;
use std::time::Duration;

use super::{Program, Server, free_port, wait_until};

/// A cluster's nodes, masters first as `redis-cli --cluster create` was given them.
pub struct Cluster {
    pub nodes: Vec<Server>,
    masters: usize,
    /// redis-server or valkey-server.
    pub program: Program,
    /// What every node asks of its clients (`requirepass`), if anything.
    password: Option<String>,
}

impl Cluster {
    /// `masters` masters, each with `replicas` replicas, of `program`; a node is judged
    /// failing after `node_timeout_ms`.
    pub fn start(
        program: Program,
        masters: usize,
        replicas: usize,
        node_timeout_ms: u64,
    ) -> Cluster {
        Cluster::start_with(program, masters, replicas, node_timeout_ms, None)
    }

    /// Three masters whose clients (and replicas) must AUTH with `password`.
    pub fn start_with_password(program: Program, password: &str) -> Cluster {
        Cluster::start_with(program, 3, 0, 2000, Some(password))
    }

    fn start_with(
        program: Program,
        masters: usize,
        replicas: usize,
        node_timeout_ms: u64,
        password: Option<&str>,
    ) -> Cluster {
        let auth: Vec<&str> = match password {
            Some(p) => vec!["--requirepass", p, "--masterauth", p],
            None => Vec::new(),
        };
        let nodes: Vec<Server> = (0..masters * (1 + replicas))
            .map(|_| Cluster::node_with(program, node_timeout_ms, &auth))
            .collect();
        let addrs: Vec<String> = nodes.iter().map(Server::addr).collect();
        let cli_auth: Vec<&str> = match password {
            Some(p) => vec!["-a", p, "--no-auth-warning"],
            None => Vec::new(),
        };
        let status = Command::new(program.cli())
            .args(&cli_auth)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli must be installed (scripts/test installs it)");
        assert!(status.success(), "redis-cli --cluster create");
        let cluster = Cluster {
            nodes,
            masters,
            program,
            password: password.map(str::to_string),
        };
        cluster.wait_settled();
        cluster
    }

    /// A node of its own, not in any cluster yet.
    pub fn node(program: Program, node_timeout_ms: u64) -> Server {
        Cluster::node_with(program, node_timeout_ms, &[])
    }

    /// A node of its own with `extra` arguments.
    fn node_with(program: Program, node_timeout_ms: u64, extra: &[&str]) -> Server {
        let bus = free_port().to_string();
        let timeout = node_timeout_ms.to_string();
        Server::start_on(
            program,
            &[
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &timeout,
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .collect::<Vec<_>>(),
        )
    }

    /// The masters as created (a failover may have changed which nodes are masters now).
    pub fn masters(&self) -> &[Server] {
        &self.nodes[..self.masters]
    }

    /// Waits until every running node says the cluster is ok and sees all its nodes, and
    /// every replica has finished its sync.
    pub fn wait_settled(&self) {
        wait_until("the cluster to settle", Duration::from_secs(30), || {
            self.nodes.iter().all(|n| {
                let password =
                    (self.password.as_deref()).map_or(String::new(), |p| format!(":{p}@"));
                let Ok(mut c) = redis::Client::open(format!("redis://{password}{}/", n.addr()))
                    .and_then(|c| c.get_connection())
                else {
                    return false;
                };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut c)
                    .unwrap_or_default();
                let role: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut c)
                    .unwrap_or_default();
                let synced = role.contains("role:master") || role.contains("master_link_status:up");
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{}", self.nodes.len()))
                    && synced
            })
        });
    }

    /// Starts a new node and joins it to the cluster, with no slots (`--cluster add-node`).
    pub fn add_node(&mut self) -> &Server {
        let node = Cluster::node(self.program, 2000);
        let status = Command::new(self.program.cli())
            .args(["--cluster", "add-node", &node.addr(), &self.nodes[0].addr()])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "--cluster add-node");
        self.nodes.push(node);
        self.wait_settled();
        self.nodes.last().unwrap()
    }

    /// Takes node `index`, which must serve no slot, out of the cluster (`--cluster del-node`,
    /// which also stops it).
    pub fn remove_node(&mut self, index: usize) {
        let node = self.nodes.remove(index);
        let status = Command::new(self.program.cli())
            .args([
                "--cluster",
                "del-node",
                &self.nodes[0].addr(),
                &Cluster::id(&node),
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "--cluster del-node");
        self.wait_settled();
    }

    /// Starts moving the slot of `keys` from `from` to `to` and moves those keys, as
    /// `redis-cli --cluster reshard` does slot by slot; the slot stays `from`'s until
    /// [`Cluster::give_slot`]. Returns the slot.
    pub fn migrate(&self, keys: &[&str], from: &Server, to: &Server) -> u16 {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(keys[0])
            .query(&mut to.client())
            .unwrap();
        let setslot = |node: &Server, how: &str, id: &str| {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(how)
                .arg(id)
                .query(&mut node.client())
                .unwrap();
        };
        setslot(to, "IMPORTING", &Cluster::id(from));
        setslot(from, "MIGRATING", &Cluster::id(to));
        let _: () = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to.port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(keys)
            .query(&mut from.client())
            .unwrap();
        slot
    }

    /// Gives `slot` to `to` on every master as created.
    pub fn give_slot(&self, slot: u16, to: &Server) {
        let id = Cluster::id(to);
        for node in self.masters() {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&id)
                .query(&mut node.client())
                .unwrap();
        }
    }

    /// The index in `nodes` of a replica of `master`.
    pub fn replica_of(&self, master: &Server) -> usize {
        let follows = format!("master_port:{}", master.port);
        (self.nodes.iter())
            .position(|node| {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut node.client())
                    .unwrap();
                info.contains("role:slave") && info.contains(&follows)
            })
            .expect("a replica of the master")
    }

    /// The node id of `node`.
    pub fn id(node: &Server) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut node.client())
            .unwrap()
    }

    /// Moves `slots` slots from `from` to `to` with `redis-cli --cluster reshard`, keys and all.
    pub fn reshard(&self, from: &Server, to: &Server, slots: usize) {
        let status = Command::new(self.program.cli())
            .args(["--cluster", "reshard", &from.addr()])
            .args(["--cluster-from", &Cluster::id(from)])
            .args(["--cluster-to", &Cluster::id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "redis-cli --cluster reshard");
    }

    /// The address of the node serving `key` now, as `CLUSTER SLOTS` on `asked` says.
    pub fn owner_of(asked: &Server, key: &str) -> String {
        let mut c = asked.client();
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut c)
            .unwrap();
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut c).unwrap();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let owns = fields.iter().skip(8).any(|range| {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                match (first.parse::<i64>(), last.parse::<i64>()) {
                    (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                    _ => false,
                }
            });
            if owns {
                return fields[1].split('@').next().unwrap().to_string();
            }
        }
        panic!("no node serves slot {slot}");
    }
}

/// Each named test of the calling file, which starts a cluster of the `Program` it is given,
/// run against redis-server 7 and valkey-server 8.
#[macro_export]
macro_rules! on_both_servers {
    ($($test:ident),* $(,)?) => {
        mod redis_7 {
            $(#[test]
            fn $test() {
                super::$test(super::Program::Redis)
            })*
        }
        mod valkey_8 {
            $(#[test]
            fn $test() {
                super::$test(super::Program::Valkey)
            })*
        }
    };
}
