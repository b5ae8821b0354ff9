//! `ringproxy --config FILE`: load the topology, serve every pool, drain on SIGTERM/SIGINT.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ringproxy::config::{Address, Config};
use ringproxy::topology::Topology;
use ringproxy::workers::Workers;
use ringproxy::{admin, server};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// sysexits' EX_CONFIG-adjacent EX_USAGE: the configuration is wrong.
const EXIT_BAD_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    version,
    about = "A Redis proxy over a twemproxy-compatible consistent-hash ring"
)]
struct Args {
    /// The YAML topology (ringproxy's schema or a twemproxy nutcracker.yml).
    #[arg(short, long, default_value = "config.yaml")]
    config: PathBuf,
    /// Validate the configuration, print a summary and exit.
    #[arg(long)]
    check_config: bool,
    /// Serve the admin HTTP endpoint here (overrides `admin.listen`).
    #[arg(long)]
    admin_listen: Option<Address>,
    /// Worker threads serving clients, each with its own backend connections
    /// (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// Print which Redis commands are served, restricted or refused (the README's lists) and
    /// exit.
    #[arg(long)]
    commands: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.commands {
        print!("{}", ringproxy::command::markdown());
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Some(admin) = args.admin_listen {
        config.admin_listen = Some(admin);
    }
    if args.check_config {
        print!("{}", config.summary());
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The main thread accepts clients and runs health checks and the admin endpoint; the
    // workers serve the clients.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, workers)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringproxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, workers: usize) -> anyhow::Result<()> {
    use anyhow::Context;
    let workers = Arc::new(Workers::start(workers).context("cannot start the worker threads")?);
    let topology = Arc::new(Topology::start(&config, &workers));
    let shutdown = CancellationToken::new();
    let sessions = TaskTracker::new();
    for pool in &topology.pools {
        let listener = server::bind(&pool.config.listen, pool.config.backlog)
            .await
            .with_context(|| {
                format!(
                    "pool {}: cannot listen on {}",
                    pool.config.name, pool.config.listen
                )
            })?;
        tracing::info!(pool = %pool.config.name, "listening on {}", listener.local_addr()?);
        tokio::spawn(server::serve_pool(
            pool.clone(),
            listener,
            workers.clone(),
            shutdown.clone(),
            sessions.clone(),
        ));
    }
    if let Some(addr) = &config.admin_listen {
        let listener = server::bind(addr, 128)
            .await
            .with_context(|| format!("admin: cannot listen on {addr}"))?;
        tracing::info!("admin endpoint on http://{}/", listener.local_addr()?);
        tokio::spawn(admin::serve(listener, topology.clone(), shutdown.clone()));
    }
    wait_for_signal().await?;
    tracing::info!("shutting down: no new clients, finishing requests in flight");
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

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
