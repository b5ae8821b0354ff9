//! ringproxy: a stateless Redis and memcached proxy over a twemproxy-compatible consistent-hash
//! ring.
//!
//! # Layout
//!
//! Data flows top to bottom; nothing calls back up.
//!
//! - [`config`]: the YAML topology (ringproxy's schema or twemproxy's `nutcracker.yml`), read
//!   and validated into typed pools, with `FILE:LINE:COLUMN` errors.
//! - [`placement`]: key → server: twemproxy's hash functions, ketama / modula / random, hash
//!   tags. Built from configuration only; health never rebuilds it.
//! - [`command`]: the Redis command table: key positions, write flags, how each is routed.
//! - [`protocol`]: I/O-free RESP and memcache parsers, reply scanners and encoders.
//! - `net`: the one [`Stream`](net::Stream) type of client and backend sockets (TCP, Unix,
//!   TLS over TCP with rustls driven on the same readiness) and the fast read path; the
//!   certificates each side presents and trusts; the descriptors kept for backend
//!   connections, which clients and admin connections may not take.
//! - `backend`: a node's multiplexed, pipelined connections per worker, reserved connections,
//!   subscriber connections, health checks (which also ask a Redis node its role, whether it
//!   is in sync with its master, its key count and run id), a Sentinel client; failures keep their cause and are reported as node
//!   events.
//! - `topology`: pools and their live state: a `PoolState` snapshot (ring, shards by name,
//!   each shard's master, node health and what each node says) that the pool's keeper swaps
//!   when node events change routing. `failover` holds the decisions (which replica to
//!   promote, whether a restarted master would wipe its replicas), `sentinel` follows Redis
//!   Sentinel. `reload` works out what a new configuration file changes: pools kept,
//!   reshaped, added, replaced or retired. `clients` lists each pool's clients (CLIENT LIST)
//!   and carries what the pool asks of them (leave, CLIENT KILL).
//! - `server`: listeners and sessions: one I/O loop per client with an outbox that keeps
//!   reply order, and the Redis and memcache frontends that parse, route and merge (and
//!   answer what one server would: INFO over the whole pool, CLIENT about the proxy's own
//!   clients, SELECT on per-database backend connections); one
//!   client-error type rendered per protocol; `timing` of each request for the latency
//!   histograms and the slow log (`slowlog`, read with SLOWLOG).
//! - `admin`: the HTTP endpoint (`/health`, `/ready`, `/metrics`, `/topology`, `/reload`),
//!   with a bounded number of connections, each closed when idle;
//!   `metrics`: the Prometheus families, latency histograms and `process_*` metrics.
//! - `workers`: thread-per-core runtimes; `service`: start, serve, apply reloads (binding
//!   listeners first), drain on SIGTERM.
//!
//! # One request
//!
//! A client's bytes arrive on its session's `Stream`; the frontend parses one request
//! zero-copy, matches the command table, loads the pool's current `PoolState` and picks the
//! shard (placement) and node (the shard's master, or a replica as `read_from` says). The
//! session queues a slot in its outbox and hands the payload to that node's connection on its
//! own worker, which writes it with others' in one batch and matches replies first in, first
//! out. The reply comes back through the session's inbox with its outbox token; fan-out parts
//! are merged; the outbox writes every reply that is next in order in one write.

mod admin;
mod backend;
pub mod command;
pub mod config;
mod keyword;
mod metrics;
mod net;
pub mod placement;
pub mod protocol;
mod server;
mod service;
mod slowlog;
mod topology;
mod workers;

pub use service::{Options, StartError, run};
