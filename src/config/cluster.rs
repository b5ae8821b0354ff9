//! The settings of a pool whose backend is a Redis Cluster.

use std::time::Duration;

use super::Address;

/// Where to learn a Redis Cluster's slot map, and how often to ask again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Any nodes of the cluster: the rest is discovered.
    pub seeds: Vec<Address>,
    /// The slot map is asked for again this often (and at once after a redirect or a failure).
    pub refresh: Duration,
    /// The address CLUSTER SLOTS, SHARDS and NODES give for the proxy (instances behind a load
    /// balancer: the balancer's); by default, the address each client connected to.
    pub announce: Option<Address>,
}

pub const DEFAULT_CLUSTER_REFRESH: Duration = Duration::from_millis(5000);
