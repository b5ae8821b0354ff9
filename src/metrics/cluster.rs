//! A cluster pool's metrics: the redirects its clients' requests followed, the times the
//! cluster was asked for its slot map and why, and the changes of that map.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use super::{PoolLabels, family};

/// What a node answered instead of serving a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedirectKind {
    Moved,
    Ask,
    /// TRYAGAIN or CLUSTERDOWN: the same node, later.
    Later,
}

impl RedirectKind {
    pub const ALL: [RedirectKind; 3] =
        [RedirectKind::Moved, RedirectKind::Ask, RedirectKind::Later];

    fn name(self) -> &'static str {
        match self {
            RedirectKind::Moved => "moved",
            RedirectKind::Ask => "ask",
            RedirectKind::Later => "tryagain",
        }
    }
}

/// Why the cluster was asked for its slot map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshCause {
    /// The first time, when the pool starts.
    Start,
    /// Every `refresh_ms`.
    Periodic,
    /// A node answered MOVED.
    Moved,
    /// A master that owns slots is not up.
    Failing,
    /// A redirect named a node the proxy does not know.
    UnknownNode,
}

impl RefreshCause {
    pub const ALL: [RefreshCause; 5] = [
        RefreshCause::Start,
        RefreshCause::Periodic,
        RefreshCause::Moved,
        RefreshCause::Failing,
        RefreshCause::UnknownNode,
    ];

    fn name(self) -> &'static str {
        match self {
            RefreshCause::Start => "start",
            RefreshCause::Periodic => "periodic",
            RefreshCause::Moved => "moved",
            RefreshCause::Failing => "failing",
            RefreshCause::UnknownNode => "unknown_node",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    pool: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    pool: String,
    cause: String,
}

/// The families of every cluster pool.
#[derive(Debug)]
pub(super) struct ClusterFamilies {
    redirects: Family<KindLabels, Counter>,
    refreshes: Family<CauseLabels, Counter>,
    map_changes: Family<PoolLabels, Counter>,
}

impl ClusterFamilies {
    pub(super) fn register(r: &mut Registry) -> ClusterFamilies {
        ClusterFamilies {
            redirects: family(
                r,
                "cluster_redirects",
                "Requests a cluster node redirected, followed by the proxy, by kind",
            ),
            refreshes: family(
                r,
                "cluster_refreshes",
                "Times the cluster was asked for its slot map, by cause",
            ),
            map_changes: family(
                r,
                "cluster_slot_map_changes",
                "Changes of the slot map: a new agreed map, or a slot moved by a MOVED",
            ),
        }
    }

    pub(super) fn pool(&self, pool: &str) -> ClusterMetrics {
        ClusterMetrics {
            redirects: RedirectKind::ALL.map(|kind| {
                let labels = KindLabels {
                    pool: pool.to_string(),
                    kind: kind.name().to_string(),
                };
                self.redirects.get_or_create(&labels).clone()
            }),
            refreshes: RefreshCause::ALL.map(|cause| {
                let labels = CauseLabels {
                    pool: pool.to_string(),
                    cause: cause.name().to_string(),
                };
                self.refreshes.get_or_create(&labels).clone()
            }),
            map_changes: self
                .map_changes
                .get_or_create(&PoolLabels {
                    pool: pool.to_string(),
                })
                .clone(),
        }
    }
}

/// One cluster pool's handles.
#[derive(Clone, Debug)]
pub struct ClusterMetrics {
    /// By [`RedirectKind`], in `ALL`'s order.
    pub redirects: [Counter; RedirectKind::ALL.len()],
    /// By [`RefreshCause`], in `ALL`'s order.
    pub refreshes: [Counter; RefreshCause::ALL.len()],
    pub map_changes: Counter,
}
