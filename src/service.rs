//! The whole proxy's life: start the workers and the pools, serve until SIGTERM or SIGINT, then
//! stop accepting and let the requests in flight finish within the grace period.

use std::io;
use std::path::Path;
use std::sync::Arc;

use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Address, Config, Listen};
use crate::server::Listener;
use crate::topology::reload::{self, Loaded, Reloads};
use crate::topology::{Pool, Topology, sentinel};
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
        addr: Listen,
        source: io::Error,
    },
    #[error("admin: cannot listen on {addr}: {source}")]
    Admin { addr: Address, source: io::Error },
    #[error("cannot watch for signals: {0}")]
    Signals(io::Error),
    #[error("{0}")]
    Sentinel(String),
}

/// How to run, besides the configuration file.
pub struct Options {
    /// Worker threads serving clients.
    pub workers: usize,
    /// Reload when the configuration file changes.
    pub watch: bool,
    /// Serve the admin endpoint here rather than where the file says.
    pub admin_listen: Option<Address>,
}

/// Serves `config`, read from `path`, until a signal says stop; SIGHUP and `POST /reload`
/// reload `path`, and so does a change of it when `options.watch`. Runs on a current-thread
/// runtime, which accepts clients and runs health checks and the admin endpoint; the workers
/// serve the clients.
pub async fn run(mut config: Config, path: &Path, options: Options) -> Result<(), StartError> {
    sentinel::discover(&mut config)
        .await
        .map_err(StartError::Sentinel)?;
    // Every client is a descriptor: take all the system allows this process.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(files) => tracing::info!("open files allowed: {files}"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let workers = Arc::new(Workers::start(options.workers).map_err(StartError::Workers)?);
    let admin_listen = options.admin_listen.or(config.admin_listen.clone());
    let topology = Arc::new(Topology::start(&config, Loaded::of(path), &workers));
    let mut service = Service {
        topology: topology.clone(),
        workers: workers.clone(),
        listeners: Vec::new(),
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        config,
    };
    for pool in topology.pools().iter() {
        let addr = &pool.config.listen;
        let listener = server::bind(addr, pool.config.clients.backlog)
            .await
            .map_err(|source| StartError::Listen {
                pool: pool.config.name.clone(),
                addr: addr.clone(),
                source,
            })?;
        service.listen(addr, listener, pool.clone());
    }
    let (reloads, mut asked) = Reloads::channel();
    // Kept for as long as the proxy serves: dropping it stops the watching.
    let _watching = options
        .watch
        .then(|| reload::watch(path, reloads.clone()))
        .transpose()
        .map_err(|e| {
            tracing::warn!(
                "cannot watch {} for changes (SIGHUP and POST /reload still reload): {e}",
                path.display()
            )
        })
        .ok()
        .flatten();
    if let Some(addr) = &admin_listen {
        let admin_error = |source| StartError::Admin {
            addr: addr.clone(),
            source,
        };
        let listener = server::bind_tcp(addr, 128).await.map_err(admin_error)?;
        if let Ok(local) = listener.local_addr() {
            tracing::info!("admin endpoint on http://{local}/");
        }
        let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
        if !loopback && service.config.admin_token.is_none() {
            tracing::warn!(
                "the admin endpoint listens beyond loopback without a token: anyone who reaches {addr} can read /metrics and /topology (set admin.token)"
            );
        }
        tokio::spawn(admin::serve(
            listener,
            topology.clone(),
            reloads,
            service.config.admin_token.clone(),
            service.shutdown.clone(),
        ));
    }
    let mut signals = Signals::new().map_err(StartError::Signals)?;
    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break,
                Signal::Reload => {
                    let _ = service.reload().await;
                }
            },
            Some(answer) = asked.recv() => {
                let _ = answer.send(service.reload().await);
            }
        }
    }
    // Reloads asked from now on are told the proxy is shutting down.
    drop(asked);
    service.stop(&mut signals).await;
    workers.stop();
    Ok(())
}

/// What the proxy runs: the topology, and a listener per address it listens on.
struct Service {
    topology: Arc<Topology>,
    workers: Arc<Workers>,
    listeners: Vec<Listening>,
    /// Fires when the proxy stops accepting: every listener and the admin endpoint stop.
    shutdown: CancellationToken,
    /// Every client's session, so shutdown can wait for them.
    sessions: TaskTracker,
    /// The configuration last applied, as the file says.
    config: Config,
}

/// A listening address, and the pool whose clients it accepts.
struct Listening {
    addr: Listen,
    serving: watch::Sender<Arc<Pool>>,
    stop: CancellationToken,
}

impl Service {
    /// Accepts clients for `pool` on `listener`, bound to `addr`.
    fn listen(&mut self, addr: &Listen, listener: Listener, pool: Arc<Pool>) {
        tracing::info!(pool = %pool.config.name, "listening on {}", listener.local());
        let (serving, to_serve) = watch::channel(pool);
        let stop = self.shutdown.child_token();
        tokio::spawn(server::serve(
            listener,
            to_serve,
            self.workers.clone(),
            stop.clone(),
            self.sessions.clone(),
        ));
        self.listeners.push(Listening {
            addr: addr.clone(),
            serving,
            stop,
        });
    }

    /// Reads the configuration file again and applies it whole, or refuses it and changes
    /// nothing; the outcome is logged and counted.
    async fn reload(&mut self) -> Result<String, String> {
        let outcome = self.try_reload().await;
        self.topology.record_reload(&outcome);
        outcome
    }

    async fn try_reload(&mut self) -> Result<String, String> {
        let plan = self.topology.plan_reload().await?;
        if plan.config.admin_listen != self.config.admin_listen
            || plan.config.admin_token != self.config.admin_token
        {
            return Err(
                "the admin endpoint's settings (admin.listen, admin.token) change only with a restart"
                    .to_string(),
            );
        }
        if plan.config.workers != self.config.workers {
            return Err("workers changes only with a restart".to_string());
        }
        // Every new address is bound before anything changes, so one in use refuses the
        // reload whole.
        let mut bound = Vec::new();
        for (addr, backlog) in plan.listens() {
            if !self.listeners.iter().any(|l| l.addr == *addr) {
                let listener = server::bind(addr, backlog)
                    .await
                    .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
                bound.push((addr.clone(), listener));
            }
        }
        let config = plan.config.clone();
        let applied = self.topology.apply(plan);
        let mut listeners = std::mem::take(&mut self.listeners);
        for pool in self.topology.pools().iter() {
            let addr = pool.applied().listen;
            if let Some(i) = listeners.iter().position(|l| l.addr == addr) {
                let kept = listeners.swap_remove(i);
                kept.serving.send_if_modified(|serving| {
                    let other = !Arc::ptr_eq(serving, pool);
                    if other {
                        *serving = pool.clone();
                    }
                    other
                });
                self.listeners.push(kept);
            } else if let Some(i) = bound.iter().position(|(a, _)| *a == addr) {
                let (addr, listener) = bound.swap_remove(i);
                self.listen(&addr, listener, pool.clone());
            }
        }
        for gone in listeners {
            tracing::info!("no longer listening on {}", gone.addr);
            gone.stop.cancel();
        }
        for pool in &applied.retired {
            pool.close_clients();
        }
        self.config = config;
        Ok(applied.summary)
    }

    /// Drains and stops: `/ready` fails at once so the load balancer stops sending clients
    /// while they are still served; after `drain_ms` (or a second signal) the listeners close
    /// and each client is closed once its requests are answered, within `shutdown_grace_ms`.
    async fn stop(self, signals: &mut Signals) {
        let (drain, grace) = (self.config.drain, self.config.shutdown_grace);
        tracing::info!(
            "shutting down: /ready answers 503; accepting clients for {} ms more",
            drain.as_millis()
        );
        self.topology.start_draining();
        let drained = async { while signals.next().await == Signal::Reload {} };
        let _ = tokio::time::timeout(drain, drained).await;
        tracing::info!("no new clients; closing each client once its requests are answered");
        self.shutdown.cancel();
        for pool in self.topology.pools().iter() {
            pool.close_clients();
        }
        self.sessions.close();
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "grace period of {} ms over; closing remaining clients",
                grace.as_millis()
            );
        }
    }
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
