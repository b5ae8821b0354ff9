//! `ringproxy --config FILE`: load the topology, serve every pool, drain on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ringproxy::config::{Address, Config};

/// jemalloc rather than glibc's malloc: an idle client's task and socket registration are
/// 128-byte aligned, and glibc leaves a fragment beside each such block; jemalloc's size
/// classes keep them packed (bench/NOTES.md, item 14).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    #[arg(long, env = "RINGPROXY_ADMIN_LISTEN")]
    admin_listen: Option<Address>,
    /// Worker threads serving clients, each with its own backend connections (default: the
    /// configuration's `workers`, else the CPUs this process may use).
    #[arg(long)]
    workers: Option<usize>,
    /// Do not reload when the configuration file changes (SIGHUP and `POST /reload` still
    /// reload).
    #[arg(long)]
    no_watch: bool,
    /// Log lines as text or as JSON objects, one per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Print which Redis commands are served, restricted or refused (docs/commands.md's lists) and
    /// exit.
    #[arg(long)]
    commands: bool,
    /// Ask the admin endpoint (`--admin-listen`) for /health and exit 0 if it answers 200: a
    /// container's health check, with no HTTP client in the image.
    #[arg(long, requires = "admin_listen")]
    health: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.commands {
        print!("{}", ringproxy::command::markdown());
        return ExitCode::SUCCESS;
    }
    if let Some(admin) = args.admin_listen.as_ref().filter(|_| args.health) {
        return match healthy(admin) {
            Ok(()) => ExitCode::SUCCESS,
            Err(why) => {
                eprintln!("unhealthy: {why}");
                ExitCode::FAILURE
            }
        };
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if args.check_config {
        let shown = Config {
            admin_listen: args.admin_listen.or(config.admin_listen),
            ..config
        };
        print!("{}", shown.summary());
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let (workers, from) = match (args.workers, config.workers) {
        (Some(n), _) => (n, "--workers"),
        (None, Some(n)) => (n, "the configuration's workers"),
        // The standard library counts what this process may use: its affinity mask, and the
        // CPU quota of its cgroup (v1 or v2).
        (None, None) => (
            std::thread::available_parallelism().map_or(1, |n| n.get()),
            "the CPUs this process may use (its affinity mask and cgroup CPU quota)",
        ),
    };
    tracing::info!("{workers} worker threads, from {from}");
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
    let options = ringproxy::Options {
        workers,
        watch: !args.no_watch,
        admin_listen: args.admin_listen,
    };
    match runtime.block_on(ringproxy::run(config, &args.config, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `GET /health` on the admin endpoint listening at `admin` (on every address: asked on
/// loopback), within two seconds.
fn healthy(admin: &Address) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let limit = Duration::from_secs(2);
    let mut addr = (admin.host.as_str(), admin.port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("the address does not resolve")?;
    if addr.ip().is_unspecified() {
        addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port());
    }
    let mut stream = TcpStream::connect_timeout(&addr, limit).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(limit))
        .map_err(|e| e.to_string())?;
    let request = format!("GET /health HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    match answer.lines().next() {
        Some(status) if status.starts_with("HTTP/1.1 200") => Ok(()),
        other => Err(format!("answered {:?}", other.unwrap_or_default())),
    }
}
