//! The admin HTTP endpoint for load balancers and operators: `/health` and `/ready` for anyone,
//! `/metrics`, `/topology` and `POST /reload` behind the bearer token when one is configured. HTTP is axum's,
//! JSON serde_json's. Its connections are bounded ([`connections`]).

mod connections;
mod hotkeys;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backend::{Health, Role};
use crate::config::{AdminToken, same_secret};
use crate::topology::reload::Reloads;
use crate::topology::{NodeStatus, Pool, Topology};

/// What the handlers share.
struct Admin {
    topology: Arc<Topology>,
    reloads: Reloads,
    token: Option<AdminToken>,
}

/// Serves admin requests until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    topology: Arc<Topology>,
    reloads: Reloads,
    token: Option<AdminToken>,
    shutdown: CancellationToken,
) {
    let admin = Arc::new(Admin {
        topology,
        reloads,
        token,
    });
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/topology", get(topology_view))
        .route("/hotkeys", get(hotkeys::hot_keys_view))
        .route("/reload", post(reload))
        .route_layer(middleware::from_fn_with_state(admin.clone(), authorize));
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .merge(guarded)
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: try /health /ready /metrics /topology /hotkeys\n",
            )
        })
        .with_state(admin);
    let listener = connections::Bounded::new(listener);
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned());
    if let Err(e) = served.await {
        tracing::error!("admin endpoint stopped: {e}");
    }
}

/// With a token configured, a request must carry `Authorization: Bearer <token>`.
async fn authorize(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(AdminToken(token)) = &admin.token else {
        return next.run(request).await;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme's name is case-insensitive (RFC 9110, 11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .map(|(_, token)| token.trim_start());
    match given {
        Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is needed: Authorization: Bearer <admin token>\n",
        )
            .into_response(),
    }
}

#[derive(Serialize)]
struct Readiness {
    ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

async fn ready(State(admin): State<Arc<Admin>>) -> Response {
    let (status, reason) = match admin.topology.readiness() {
        Ok(()) => (StatusCode::OK, None),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, Some(reason)),
    };
    let ready = reason.is_none();
    json(status, &Readiness { ready, reason })
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), else the classic text format.
async fn metrics(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    hotkeys::show_in_metrics(&admin.topology);
    let metrics = &admin.topology.metrics;
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let (content_type, body) = match openmetrics {
        true => (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        false => (
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode_classic(),
        ),
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A JSON body with a final newline, for people reading it with curl.
fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let mut body = serde_json::to_string(value).unwrap_or_default();
    body.push('\n');
    let content_type = HeaderValue::from_static("application/json");
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

#[derive(Serialize)]
struct TopologyView<'a> {
    pools: Vec<PoolView<'a>>,
    config: LoadedView,
}

/// The configuration file served and what its last reload did.
#[derive(Serialize)]
struct LoadedView {
    file: String,
    md5: String,
    /// When it was loaded, in seconds since the Unix epoch.
    loaded_at: u64,
    /// Why the last reload was refused, until one succeeds.
    last_reload_error: Option<String>,
}

#[derive(Serialize)]
struct Reloaded {
    reloaded: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `POST /reload`: reads the configuration file again, as SIGHUP does.
async fn reload(State(admin): State<Arc<Admin>>) -> Response {
    match admin.reloads.reload().await {
        Ok(changed) => json(
            StatusCode::OK,
            &Reloaded {
                reloaded: true,
                changed: Some(changed),
                error: None,
            },
        ),
        Err(error) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &Reloaded {
                reloaded: false,
                changed: None,
                error: Some(error),
            },
        ),
    }
}

#[derive(Serialize)]
struct PoolView<'a> {
    name: &'a str,
    listen: String,
    protocol: &'static str,
    hash: &'static str,
    distribution: &'static str,
    read_from: &'static str,
    failover: &'static str,
    /// A cluster pool's slot map and when it was last asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterView>,
    servers: Vec<ServerView>,
}

#[derive(Serialize)]
struct ClusterView {
    seeds: Vec<String>,
    /// Slots some shard serves (16384 when the map is whole).
    slots_served: usize,
    /// When the cluster was last asked (Unix seconds), how many nodes were, how many answered
    /// and whether most of them gave the same map.
    last_asked: Option<u64>,
    nodes_asked: usize,
    nodes_answered: usize,
    agreed: bool,
}

#[derive(Serialize)]
struct ServerView {
    name: String,
    identity: String,
    weight: u32,
    on_ring: bool,
    master: Endpoint,
    replicas: Vec<Endpoint>,
    nodes: Vec<NodeView>,
}

/// A node in brief: its address and whether it is in service (not down).
#[derive(Serialize)]
struct Endpoint {
    address: String,
    up: bool,
}

#[derive(Serialize)]
struct NodeView {
    address: String,
    /// How the proxy routes to it.
    role: &'static str,
    state: &'static str,
    reason: String,
    /// What it says it is.
    says: Option<&'static str>,
    /// It has said it was a replica in sync with its master, in its current process: it may
    /// take the master's place.
    holds_data: bool,
    keys: Option<u64>,
    /// With a near cache: whether the node's invalidations are heard (its tracking listener is
    /// connected), and its cache generation (moved on by each lost tracking connection, flush
    /// or failover: what was cached from it before is not served).
    #[serde(skip_serializing_if = "Option::is_none")]
    tracking: Option<TrackingView>,
}

#[derive(Serialize)]
struct TrackingView {
    on: bool,
    generation: u64,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Master => "master",
        Role::Replica => "replica",
    }
}

/// Pools, servers, their addresses and live state. Passwords are never shown.
async fn topology_view(State(admin): State<Arc<Admin>>) -> Response {
    let served = admin.topology.pools();
    let pools = served.iter().map(|p| pool_view(p)).collect();
    let loaded = admin
        .topology
        .loaded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let config = LoadedView {
        file: loaded.path.display().to_string(),
        md5: loaded.md5,
        loaded_at: loaded
            .at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        last_reload_error: loaded.last_error,
    };
    json(StatusCode::OK, &TopologyView { pools, config })
}

fn pool_view(pool: &Pool) -> PoolView<'_> {
    let state = pool.state();
    let c = &pool.config;
    let servers = state
        .shards
        .iter()
        .enumerate()
        .map(|(i, shard)| {
            let address = |n: usize| shard.nodes[n].addr.to_string();
            let up = |n: usize| shard.status[n].state() != Health::Down;
            let node = |n: usize, status: &NodeStatus| NodeView {
                address: address(n),
                role: if n == shard.master {
                    "master"
                } else {
                    "replica"
                },
                state: status.state().as_str(),
                reason: status.why().to_string(),
                says: status.says().map(role_name),
                holds_data: status.in_sync_at.is_some(),
                keys: status.said.as_ref().map(|s| s.keys),
                tracking: pool.near_cache.as_ref().map(|_| TrackingView {
                    on: shard.nodes[n].tracking_ready().is_some(),
                    generation: shard.nodes[n].cache_generation(),
                }),
            };
            ServerView {
                name: shard.name.to_string(),
                identity: shard.identity.to_string(),
                weight: shard.weight,
                on_ring: state.on_ring(i),
                master: Endpoint {
                    address: address(shard.master),
                    up: up(shard.master),
                },
                replicas: (0..shard.nodes.len())
                    .filter(|&n| n != shard.master)
                    .map(|n| Endpoint {
                        address: address(n),
                        up: up(n),
                    })
                    .collect(),
                nodes: shard
                    .status
                    .iter()
                    .enumerate()
                    .map(|(n, status)| node(n, status))
                    .collect(),
            }
        })
        .collect();
    let cluster = pool
        .cluster
        .as_ref()
        .zip(c.cluster.as_ref())
        .map(|(link, config)| {
            let asked = link.last_asked();
            ClusterView {
                seeds: config.seeds.iter().map(ToString::to_string).collect(),
                slots_served: state.slots().map_or(0, |s| s.owned()),
                last_asked: asked
                    .at
                    .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_secs()),
                nodes_asked: asked.nodes,
                nodes_answered: asked.answered,
                agreed: asked.agreed,
            }
        });
    PoolView {
        name: &c.name,
        listen: pool.applied().listen.to_string(),
        protocol: c.protocol.name(),
        hash: c.hash.name(),
        distribution: c.distribution.name(),
        read_from: c.read_from.name(),
        failover: c.failover.kind().name(),
        cluster,
        servers,
    }
}
