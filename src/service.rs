//! The whole proxy's life: start the workers and the pools, serve until SIGTERM or SIGINT, then
//! stop accepting and let the requests in flight finish within the grace period.

use std::io;
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Address, Config};
use crate::topology::reload::{self, Loaded};
use crate::topology::{Topology, sentinel};
use crate::workers::Workers;
use crate::{admin, server};

/// Why the proxy could not start.
#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot start the worker threads: {0}")]
    Workers(io::Error),
    #[error("pool {pool}: cannot listen on {addr}: {source}")]
    Listen {
        pool: String,
        addr: Address,
        source: io::Error,
    },
    #[error("admin: cannot listen on {addr}: {source}")]
    Admin { addr: Address, source: io::Error },
    #[error("cannot watch for signals: {0}")]
    Signals(io::Error),
    #[error("{0}")]
    Sentinel(String),
}

/// Serves `config`, read from `path`, with `workers` worker threads until a signal says stop;
/// SIGHUP reloads `path`, and so does a change of it when `watch`. Runs on a current-thread runtime, which accepts clients and runs
/// health checks and the admin endpoint; the workers serve the clients.
pub async fn run(
    mut config: Config,
    path: &Path,
    workers: usize,
    watch: bool,
) -> Result<(), StartError> {
    sentinel::discover(&mut config)
        .await
        .map_err(StartError::Sentinel)?;
    let workers = Arc::new(Workers::start(workers).map_err(StartError::Workers)?);
    let topology = Arc::new(Topology::start(&config, Loaded::of(path), &workers));
    // Kept for as long as the proxy serves: dropping it stops the watching.
    let _watching = watch
        .then(|| reload::watch(topology.clone()))
        .transpose()
        .map_err(|e| {
            tracing::warn!(
                "cannot watch {} for changes (SIGHUP and POST /reload still reload): {e}",
                path.display()
            )
        })
        .ok()
        .flatten();
    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    for pool in &topology.pools {
        let addr = &pool.config.listen;
        let listener = server::bind(addr, pool.config.backlog)
            .await
            .map_err(|source| StartError::Listen {
                pool: pool.config.name.clone(),
                addr: addr.clone(),
                source,
            })?;
        if let Ok(local) = listener.local_addr() {
            tracing::info!(pool = %pool.config.name, "listening on {local}");
        }
        tokio::spawn(server::serve_pool(
            pool.clone(),
            listener,
            workers.clone(),
            shutdown.clone(),
            sessions.clone(),
        ));
    }
    if let Some(addr) = &config.admin_listen {
        let admin_error = |source| StartError::Admin {
            addr: addr.clone(),
            source,
        };
        let listener = server::bind(addr, 128).await.map_err(admin_error)?;
        if let Ok(local) = listener.local_addr() {
            tracing::info!("admin endpoint on http://{local}/");
        }
        let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
        if !loopback && config.admin_token.is_none() {
            tracing::warn!(
                "the admin endpoint listens beyond loopback without a token: anyone who reaches {addr} can read /metrics and /topology (set admin.token)"
            );
        }
        tokio::spawn(admin::serve(
            listener,
            topology.clone(),
            config.admin_token.clone(),
            shutdown.clone(),
        ));
    }
    let mut signals = Signals::new().map_err(StartError::Signals)?;
    while signals.next().await == Signal::Reload {
        let _ = topology.reload();
    }
    // The load balancer sees /ready fail and stops sending clients while they are still
    // served; a second signal cuts the drain short.
    tracing::info!(
        "shutting down: /ready answers 503; accepting clients for {} ms more",
        config.drain.as_millis()
    );
    topology.start_draining();
    let drained = async { while signals.next().await == Signal::Reload {} };
    let _ = tokio::time::timeout(config.drain, drained).await;
    tracing::info!("no new clients; closing each client once its requests are answered");
    shutdown.cancel();
    sessions.close();
    if tokio::time::timeout(config.shutdown_grace, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "grace period of {} ms over; closing remaining clients",
            config.shutdown_grace.as_millis()
        );
    }
    workers.stop();
    Ok(())
}

/// What a signal asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    /// SIGTERM or SIGINT.
    Stop,
    /// SIGHUP (which logrotate setups written for twemproxy send, too).
    Reload,
}

/// SIGTERM, SIGINT and SIGHUP, as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next signal.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
