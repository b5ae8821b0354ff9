//! ringproxy: a stateless Redis and memcached proxy over a twemproxy-compatible consistent-hash
//! ring, or over a Redis Cluster's slots.
//!
//! # Layout
//!
//! Data flows top to bottom; nothing calls back up. This is the one map of the code: every
//! module is named here. The manual (configuration, operations, commands, errors) is in
//! `docs/`; benchmarks and their history in `bench/`.
//!
//! - `main.rs`: the command line only; [`service`] starts the workers, pools and admin
//!   endpoint, binds listeners before a reload applies, applies reloads one at a time and
//!   drains on SIGTERM; `workers`: thread-per-core runtimes.
//! - [`config`]: the YAML topology, read and validated into typed pools with
//!   `FILE:LINE:COLUMN` errors: `raw` (ringproxy's schema), `raw/twemproxy` (`nutcracker.yml`
//!   as it is), `values` (values that check themselves as they are read), `pool` (a pool's
//!   checks across its fields).
//! - [`placement`]: key → server: twemproxy's hash functions (`hash`), ketama / modula /
//!   random, hash tags; or a Redis Cluster's slots (`slots`). Built from configuration (or
//!   the cluster's agreed map) only; health never rebuilds it.
//! - [`command`]: the Redis command table (`table`), matched once into a typed command: key
//!   positions, write flag, how each is routed. `keyword`: the enums of configuration
//!   keywords, each with its YAML spelling.
//! - [`protocol`]: I/O-free parsers, reply scanners and encoders: `resp` (`request`, `reply`,
//!   `encode`, and `value`, a reply read as a tree for what the proxy reads itself) and
//!   `memcache` (`request`, `reply`).
//! - `net`: the one `Stream` type of client and backend sockets (TCP, Unix, TLS over TCP
//!   with rustls driven on the same readiness: `tls`) and the fast read path; `unwritten`,
//!   bytes queued for vectored writes without a copy; `descriptors`, the share of the
//!   open-file limit kept for backend connections.
//! - `backend`: a node (`mod`: its connections per worker, reserved connections, what it
//!   reports, and `ask_node`, one command on a connection of its own); `opening`, opening a
//!   connection and framing replies; `connection`, one full-duplex pipelined connection (replies matched first in,
//!   first out, RESP3 pushes set aside, every request bounded by its deadline); `subscriber`,
//!   a client's Pub/Sub connection per shard; `inbox`, where replies reach each session (and
//!   what a timed-out request still counts); `health`, the checks (PING, INFO replication,
//!   DBSIZE, run id, REPLICAOF); `tracking`, CLIENT TRACKING for the near cache (a listening
//!   connection per node, and the data connections' redirect to it); `broadcast`, one more
//!   connection per node hearing every key's changes while a client tracks prefixes (BCAST);
//!   `sentinel`, a Sentinel client; `error`, failures that keep their cause; `report`, node
//!   events for the pool's keeper.
//! - `cache`: a pool's near cache: replies of one-key reads by key, sharded, within a byte
//!   budget, kept only when no invalidation, write, flush or lost tracking connection came
//!   while their read was in flight (`store`, one shard and its eviction; `pattern`, the
//!   `keys` globs). `backend/tracking` feeds it each node's invalidations. `cache/clients`:
//!   tracking for the proxy's own clients (who read which key, who listens to which prefix,
//!   and telling them). `cache/hotkeys`:
//!   every pool's requests per key over the last minute (a count-min sketch and a ranking per
//!   worker, merged when asked).
//! - `topology`: pools and their live state: `state`, the `PoolState` snapshot (placement,
//!   shards by name, each shard's master as data, node health) sessions load per burst;
//!   `shards`, building a pool's shards from its configuration (reusing nodes across a
//!   reload); `keeper`, the snapshot's one writer (`keeper/promotion`, promoting a replica;
//!   `keeper/cluster`, its part in a cluster pool); `cluster`, a Redis Cluster's slot map as
//!   its nodes give it, their agreement, redirects, and the task asking them; `failover`,
//!   which replica to promote and whether a restarted master would wipe its replicas;
//!   `sentinel`, following Redis Sentinel; `reload`, what a new configuration file changes,
//!   and the file watcher; `clients`, each pool's client list (CLIENT LIST, and what the pool
//!   asks of a client); `scripts`, the scripts loaded through the pool.
//! - `server`: `listener` (TCP and Unix sockets); `session`, one client's connection and its
//!   idle wait, `session/burst`, the loop that serves it while it is active (a handler per
//!   wakeup: inbox, socket, timers; then the flush), `session/context`, the narrow seam a
//!   frontend sees instead of the session (pool, client entry, replies owed, room, carrying
//!   out plans), `session/plans`, carrying out a plan on the nodes and the connections
//!   reserved for a client, and `session/resend`, sending again what asks for it (a failed
//!   read, an EVALSHA, a cluster's redirect); `outbox`, reply order, typed tokens, and the parts kept to be sent again; `plan`,
//!   what routing decides; `near_cache`, a read the near cache answers or keeps and the
//!   request that keeps it exact; `merge`, collecting the parts of a fanned-out request; `error`, the
//!   client-error type rendered per protocol; `timing`, each request's time for the latency
//!   histograms and the slow log. The frontends: `redis` (`route`, `keyspace` for commands
//!   over every shard, `transaction`, `pubsub`, `subscribers` for the client's subscriber
//!   connections as the pool changes under them, `local` and `context` for what the proxy
//!   answers itself, `client` for CLIENT, `cluster` for CLUSTER as a cluster pool presents
//!   itself, `info` for INFO over the pool, `tracking` for CLIENT TRACKING and how a client
//!   is told of invalidations, `cached`
//!   for which reads the near cache serves and which writes invalidate it, `merge`) and
//!   `memcache` (`route`, `merge`).
//! - `slowlog`: the pool's slow log (SLOWLOG), secrets redacted.
//! - `admin`: the HTTP endpoint (`/health`, `/ready`, `/metrics`, `/topology`, `/reload`,
//!   `/hotkeys` in `hotkeys`), with a bounded number of connections, each closed when idle
//!   (`connections`); `metrics`:
//!   the Prometheus families, latency histograms (`latency`), `process_*` metrics
//!   (`process`), failed-AUTH delays per address (`auth`), a cluster pool's redirects and
//!   slot-map asks (`cluster`), the hottest keys' rates (`hotkeys`), and logs kept to one a
//!   second (`throttle`).
//! - Tests of a large module live beside it in `tests.rs` (`mod tests;`); `backend/fake`
//!   holds what tests of backend connections share. Integration tests in `tests/` run real
//!   servers.
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
mod cache;
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
