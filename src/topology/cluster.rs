//! A Redis Cluster backend: what one node says of the cluster's slots (`CLUSTER SHARDS`, or
//! `CLUSTER SLOTS` where that is missing), the view the nodes asked agree on, and the task that
//! keeps asking them — every `refresh_ms`, and at once (at most every [`MIN_SPACING`]) when a
//! session meets a redirect or a node fails.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use crate::backend::ask_node;
use crate::config::{Address, PoolConfig};
use crate::metrics::{ClusterMetrics, RedirectKind, RefreshCause};
use crate::placement::slots::{SLOTS, SlotMap};
use crate::protocol::resp::Value;

/// One shard as the cluster lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterShard {
    /// Its slot ranges, first and last slot of each, in order; none for a master without
    /// slots (a node just added, or emptied before it is removed).
    pub slots: Vec<(u16, u16)>,
    pub master: Address,
    /// Replicas the cluster sees online.
    pub replicas: Vec<Address>,
}

impl ClusterShard {
    /// How the shard is named in logs, metrics and `/topology`: its slot ranges.
    pub fn name(&self) -> String {
        if self.slots.is_empty() {
            return format!("no slots ({})", self.master);
        }
        let ranges: Vec<String> = self
            .slots
            .iter()
            .map(|&(first, last)| match first == last {
                true => first.to_string(),
                false => format!("{first}-{last}"),
            })
            .collect();
        ranges.join(",")
    }
}

/// The cluster as one node describes it: shards with slots first, by their first slot, then
/// masters without slots, by address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    pub shards: Vec<ClusterShard>,
}

impl ClusterView {
    fn sorted(mut shards: Vec<ClusterShard>) -> ClusterView {
        for shard in &mut shards {
            shard.slots.sort_unstable();
            shard
                .replicas
                .sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        }
        let first_slot = |s: &ClusterShard| s.slots.first().map_or(u32::MAX, |r| u32::from(r.0));
        shards.sort_by(|a, b| {
            (first_slot(a), &a.master.host, a.master.port).cmp(&(
                first_slot(b),
                &b.master.host,
                b.master.port,
            ))
        });
        ClusterView { shards }
    }

    /// The slot map of the view: each slot to the index of its shard.
    pub fn slot_map(&self) -> SlotMap {
        let mut map = SlotMap::default();
        for (i, shard) in self.shards.iter().enumerate() {
            for &(first, last) in &shard.slots {
                map.assign(first, last, i);
            }
        }
        map
    }

    /// Every node's address, masters first.
    fn masters(&self) -> impl Iterator<Item = &Address> {
        self.shards.iter().map(|s| &s.master)
    }
}

/// An endpoint the node gave: `?`, empty or null means "the address you asked" (the cluster
/// specification's unknown endpoint).
fn endpoint(host: Option<&[u8]>, port: i64, asked: &Address) -> Option<Address> {
    let port = u16::try_from(port).ok().filter(|&p| p > 0)?;
    let host = match host {
        None | Some(b"") | Some(b"?") => asked.host.clone(),
        Some(host) => std::str::from_utf8(host).ok()?.to_string(),
    };
    Some(Address { host, port })
}

/// A `CLUSTER SHARDS` reply (Redis 7+): per shard its `slots` (pairs of first and last slot)
/// and its `nodes`, each a map with `endpoint` (or `ip`), `port`, `tls-port`, `role` and
/// `health`. With `tls`, the TLS port is taken. Replicas not `online` are left out.
pub fn parse_shards(reply: &[u8], asked: &Address, tls: bool) -> Option<ClusterView> {
    let value = Value::read(reply, 6)?;
    let mut shards = Vec::new();
    for shard in value.list()? {
        let slots = shard.field("slots")?.list()?;
        let slots = slots
            .chunks_exact(2)
            .map(|pair| Some((slot(&pair[0])?, slot(&pair[1])?)))
            .collect::<Option<Vec<_>>>()?;
        let (mut master, mut replicas) = (None, Vec::new());
        for node in shard.field("nodes")?.list()? {
            let host = node.field("endpoint").or_else(|| node.field("ip"));
            let host = host.and_then(Value::text);
            let port = match (tls, node.field("tls-port")) {
                (true, Some(port)) => port,
                _ => node.field("port")?,
            };
            let Some(addr) = endpoint(host, port.int()?, asked) else {
                continue;
            };
            let online = node.field("health").and_then(Value::text) == Some(b"online");
            match node.field("role").and_then(Value::text) {
                Some(b"master") => master = Some(addr),
                _ if online => replicas.push(addr),
                _ => {}
            }
        }
        // A shard whose master has failed and whose replica is not promoted yet still
        // lists its slots: without a master it is left out until it has one.
        if let Some(master) = master {
            shards.push(ClusterShard {
                slots,
                master,
                replicas,
            });
        }
    }
    Some(ClusterView::sorted(shards))
}

/// A `CLUSTER SLOTS` reply: per slot range its first and last slot, then its master and its
/// replicas, each `[host, port, id, …]`. A master with several ranges is one shard.
pub fn parse_slots(reply: &[u8], asked: &Address) -> Option<ClusterView> {
    let value = Value::read(reply, 6)?;
    let mut shards: Vec<ClusterShard> = Vec::new();
    for range in value.list()? {
        let items = range.list()?;
        let (first, last) = (slot(items.first()?)?, slot(items.get(1)?)?);
        let mut nodes = items[2..].iter().filter_map(|node| {
            let node = node.list()?;
            endpoint(node.first()?.text(), node.get(1)?.int()?, asked)
        });
        let master = nodes.next()?;
        match shards.iter_mut().find(|s| s.master == master) {
            Some(shard) => shard.slots.push((first, last)),
            None => shards.push(ClusterShard {
                slots: vec![(first, last)],
                master,
                replicas: nodes.collect(),
            }),
        }
    }
    Some(ClusterView::sorted(shards))
}

fn slot(value: &Value<'_>) -> Option<u16> {
    u16::try_from(value.int()?)
        .ok()
        .filter(|&s| usize::from(s) < SLOTS)
}

/// A cluster node's answer that a request was not served there, and where it goes instead.
/// None of them was applied: each is followed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// `-MOVED <slot> <host>:<port>`: the slot is served there now.
    Moved { slot: u16, to: Address },
    /// `-ASK <slot> <host>:<port>`: this once, there, after `ASKING` (the slot is migrating).
    Ask { slot: u16, to: Address },
    /// `-TRYAGAIN` (the keys of a migrating slot are split for a moment) or `-CLUSTERDOWN`:
    /// the same node, a little later.
    Later,
}

/// The redirect an error reply is, if it is one. An empty host (the node does not know its
/// own) is left empty: it means the host of the node that answered.
pub fn redirect(reply: &[u8]) -> Option<Redirect> {
    let line = reply.strip_prefix(b"-")?;
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    if line.starts_with(b"TRYAGAIN") || line.starts_with(b"CLUSTERDOWN") {
        return Some(Redirect::Later);
    }
    let mut words = std::str::from_utf8(line).ok()?.split(' ');
    let (kind, slot, to) = (words.next()?, words.next()?, words.next()?);
    let slot = slot.parse().ok().filter(|&s| usize::from(s) < SLOTS)?;
    let (host, port) = to.rsplit_once(':')?;
    let to = Address {
        host: host.to_string(),
        port: port.parse().ok()?,
    };
    match kind {
        "MOVED" => Some(Redirect::Moved { slot, to }),
        "ASK" => Some(Redirect::Ask { slot, to }),
        _ => None,
    }
}

/// The view most of the nodes that answered give, if more than half of them give it: a node
/// cut off on a minority side, or one that has not heard of a change yet, does not make
/// routing flip back and forth.
pub fn agree(answers: &[ClusterView]) -> Option<&ClusterView> {
    let votes = |view: &ClusterView| answers.iter().filter(|a| *a == view).count();
    let best = answers.iter().max_by_key(|view| votes(view))?;
    (votes(best) * 2 > answers.len()).then_some(best)
}

/// The least time between two asks at once (a storm of redirects asks once).
pub const MIN_SPACING: Duration = Duration::from_millis(100);

/// How soon the cluster is asked again when no node answered or they disagreed.
const UNSETTLED_RETRY: Duration = Duration::from_millis(250);

/// The most nodes asked per refresh: the seeds and the masters last known.
const MAX_ASKED: usize = 5;

/// What reaches a cluster pool's keeper.
#[derive(Debug)]
pub enum ClusterNews {
    /// The view the nodes asked agree on, when it changed.
    View(ClusterView),
    /// A node answered MOVED: `slot` is served by `to` now.
    Moved { slot: u16, to: Address },
    /// A node answered ASK: `slot` is migrating.
    Asked { slot: u16 },
}

/// What the sessions, the keeper and the task asking the cluster of one pool share: where to
/// send news, how to have the cluster asked now, and what is counted and shown.
#[derive(Clone, Debug)]
pub struct ClusterLink {
    news: UnboundedSender<ClusterNews>,
    refresh_now: Arc<Notify>,
    /// Why the cluster is asked now: the last [`RefreshCause`] given, as its index in `ALL`.
    cause: Arc<AtomicU8>,
    pub metrics: ClusterMetrics,
    asked: Arc<Mutex<Asked>>,
}

/// The last time the cluster was asked, for `/topology`.
#[derive(Clone, Debug, Default)]
pub struct Asked {
    pub at: Option<std::time::SystemTime>,
    pub nodes: usize,
    pub answered: usize,
    /// Most of the nodes that answered gave the same map.
    pub agreed: bool,
}

impl ClusterLink {
    /// A link counting into `metrics`, and where its news arrive.
    pub fn new(metrics: ClusterMetrics) -> (ClusterLink, UnboundedReceiver<ClusterNews>) {
        let (news, rx) = tokio::sync::mpsc::unbounded_channel();
        let link = ClusterLink {
            news,
            refresh_now: Arc::new(Notify::new()),
            cause: Arc::default(),
            metrics,
            asked: Arc::default(),
        };
        (link, rx)
    }

    /// `slot` was found moved to `to`: routing follows at once, and the cluster is asked.
    pub fn moved(&self, slot: u16, to: Address) {
        let _ = self.news.send(ClusterNews::Moved { slot, to });
    }

    /// A node answered ASK for `slot`: reads of it go to its master for a while.
    pub fn asked(&self, slot: u16) {
        let _ = self.news.send(ClusterNews::Asked { slot });
    }

    /// Asks the cluster for its slot map now (at most every [`MIN_SPACING`]), for `cause`.
    pub fn refresh(&self, cause: RefreshCause) {
        let index = RefreshCause::ALL
            .iter()
            .position(|&c| c == cause)
            .unwrap_or(0);
        self.cause.store(index as u8, Ordering::Relaxed);
        self.refresh_now.notify_one();
    }

    /// Counts a redirect a request followed.
    pub fn redirected(&self, kind: RedirectKind) {
        self.metrics.redirects[kind as usize].inc();
    }

    /// When the cluster was last asked, and what came of it.
    pub fn last_asked(&self) -> Asked {
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Asks the cluster for its slot map, and sends its keeper every view the nodes agree on that
/// differs from the last, until the keeper is gone. It asks every `refresh`, and at once when
/// the link asks (after at least [`MIN_SPACING`]).
pub(super) async fn follow(
    pool: PoolConfig,
    seeds: Vec<Address>,
    refresh: Duration,
    link: ClusterLink,
) {
    let pool = Arc::new(pool);
    let mut last: Option<ClusterView> = None;
    let mut cause = RefreshCause::Start;
    loop {
        link.metrics.refreshes[cause as usize].inc();
        let asked_at = Instant::now();
        let mut asked: Vec<Address> = seeds.clone();
        for master in last.iter().flat_map(ClusterView::masters) {
            if !asked.contains(master) {
                asked.push(master.clone());
            }
        }
        // The nodes last known come first: a seed may have left the cluster.
        let seeds_first = seeds.len().min(asked.len());
        asked.rotate_left(seeds_first);
        asked.truncate(MAX_ASKED);
        let nodes = asked.len();
        let (answers, why) = ask_all(&pool, asked).await;
        let agreed = agree(&answers);
        // Until the nodes agree (a cluster just made, a change on its way), ask again soon.
        let next = match agreed {
            Some(_) => refresh,
            None => refresh.min(UNSETTLED_RETRY),
        };
        *link.asked.lock().unwrap_or_else(|p| p.into_inner()) = Asked {
            at: Some(std::time::SystemTime::now()),
            nodes,
            answered: answers.len(),
            agreed: agreed.is_some(),
        };
        match agreed {
            Some(view) if last.as_ref() != Some(view) => {
                if link.news.send(ClusterNews::View(view.clone())).is_err() {
                    return;
                }
                last = Some(view.clone());
            }
            Some(_) => {}
            None if answers.is_empty() => {
                let why = why.unwrap_or_default();
                tracing::warn!(pool = %pool.name, "no cluster node gave its slot map ({why})");
            }
            None => {
                tracing::warn!(pool = %pool.name, "the cluster nodes asked disagree on the slot map: keeping the last one");
            }
        }
        if link.news.is_closed() {
            return;
        }
        cause = tokio::select! {
            _ = sleep(next) => RefreshCause::Periodic,
            _ = link.refresh_now.notified() => {
                sleep_until(asked_at + MIN_SPACING).await;
                let index = usize::from(link.cause.load(Ordering::Relaxed));
                RefreshCause::ALL.get(index).copied().unwrap_or(RefreshCause::Moved)
            }
        };
    }
}

/// What each of `nodes` says, asked at once, within the pool's timeout; and, when none gave a
/// slot map, why the first did not.
async fn ask_all(
    pool: &Arc<PoolConfig>,
    nodes: Vec<Address>,
) -> (Vec<ClusterView>, Option<String>) {
    let mut asks = JoinSet::new();
    for addr in nodes {
        let pool = pool.clone();
        asks.spawn(async move {
            let view = ask_one(&pool, &addr).await;
            view.map_err(|why| format!("{addr}: {why}"))
        });
    }
    let (mut views, mut why) = (Vec::new(), None);
    while let Some(answer) = asks.join_next().await {
        match answer {
            Ok(Ok(view)) => views.push(view),
            Ok(Err(e)) => _ = why.get_or_insert(e),
            Err(_) => {}
        }
    }
    (views, why)
}

/// What node `addr` says of the cluster: CLUSTER SHARDS, or CLUSTER SLOTS before Redis 7.
async fn ask_one(pool: &PoolConfig, addr: &Address) -> Result<ClusterView, String> {
    let tls = pool.backend_tls.is_some();
    let shards = ask_node(pool, addr, &["CLUSTER", "SHARDS"]).await;
    let reply = match shards {
        Ok(reply) if !reply.starts_with(b"-") => {
            return parse_shards(&reply, addr, tls).ok_or_else(|| "an odd CLUSTER SHARDS".into());
        }
        Ok(_) => ask_node(pool, addr, &["CLUSTER", "SLOTS"]).await,
        Err(why) => return Err(why.to_string()),
    };
    match reply {
        Ok(reply) if reply.starts_with(b"-") => {
            Err(String::from_utf8_lossy(&reply[1..]).trim_end().to_string())
        }
        Ok(reply) => parse_slots(&reply, addr).ok_or_else(|| "an odd CLUSTER SLOTS".into()),
        Err(why) => Err(why.to_string()),
    }
}

#[cfg(test)]
mod tests;
