//! Two ringproxy instances behind a real HAProxy (configured by `docker/haproxy.cfg`, checking
//! each instance's `/ready`), over three Redis shards of a master and a replica followed by
//! three Sentinels, and memcached: a rolling restart and a reload of both instances under
//! continuous load lose nothing. `scripts/ha-demo` starts the same harness and leaves it up.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

const SHARDS: [&str; 3] = ["shard-a", "shard-b", "shard-c"];
const INSTANCES: usize = 2;

/// Everything `scripts/ha-demo` runs, on free loopback ports.
struct HaDemo {
    /// Each shard's master and replica.
    shards: Vec<(Redis, Redis)>,
    sentinels: Vec<Sentinel>,
    memcached: Server,
    proxies: Vec<Proxy>,
    /// Each instance's redis and memcache ports.
    ports: Vec<(u16, u16)>,
    /// Started once the instances are up: it needs their addresses.
    haproxy: Option<Process>,
    /// HAProxy's redis and memcache ports: where clients connect.
    redis_port: u16,
    memcache_port: u16,
    dir: TempDir,
}

impl HaDemo {
    fn start() -> HaDemo {
        let shards: Vec<(Redis, Redis)> = SHARDS
            .iter()
            .map(|_| {
                let master = Redis::start();
                let port = master.port.to_string();
                let replica = Redis::start_with(&[
                    "--replicaof",
                    "127.0.0.1",
                    &port,
                    "--repl-diskless-sync-delay",
                    "0",
                ]);
                (master, replica)
            })
            .collect();
        for (_, replica) in &shards {
            wait_until("replicas in sync", Duration::from_secs(20), || {
                info_text(replica, "replication").contains("master_link_status:up")
            });
        }
        let masters: Vec<(&str, &Redis)> = SHARDS
            .iter()
            .copied()
            .zip(shards.iter().map(|s| &s.0))
            .collect();
        let sentinels: Vec<Sentinel> = (0..3)
            .map(|_| Sentinel::start_for(&masters, 5000, None))
            .collect();
        let memcached = Server::memcached();
        let mut demo = HaDemo {
            shards,
            sentinels,
            memcached,
            proxies: Vec::new(),
            ports: (0..INSTANCES).map(|_| (free_port(), free_port())).collect(),
            haproxy: None,
            redis_port: free_port(),
            memcache_port: free_port(),
            dir: TempDir::new("ha-demo"),
        };
        for i in 0..INSTANCES {
            let proxy = Proxy::start(&demo.config(i, ""), demo.ports[i].0);
            demo.proxies.push(proxy);
        }
        demo.haproxy = Some(demo.start_haproxy());
        demo.wait_in_service(0);
        demo.wait_in_service(1);
        demo
    }

    /// Instance `i`'s configuration, with `extra` lines in its redis pool.
    fn config(&self, i: usize, extra: &str) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let servers: String = SHARDS
            .iter()
            .map(|name| format!("      - {{ name: {name} }}\n"))
            .collect();
        format!(
            "pools:\n  redis:\n    listen: 127.0.0.1:{}\n    failover: sentinel\n    sentinels: [{}]\n{extra}    servers:\n{servers}  memcache:\n    listen: 127.0.0.1:{}\n    protocol: memcache\n    servers: [\"127.0.0.1:{}:1 cache\"]\n",
            self.ports[i].0,
            sentinels.join(", "),
            self.ports[i].1,
            self.memcached.port
        )
    }

    fn stats_socket(&self) -> PathBuf {
        self.dir.0.join("haproxy.sock")
    }

    /// HAProxy on `docker/haproxy.cfg`, its addresses given in the environment.
    fn start_haproxy(&self) -> Process {
        let config = format!("{}/docker/haproxy.cfg", env!("CARGO_MANIFEST_DIR"));
        let log = std::fs::File::create(self.dir.0.join("haproxy.log")).unwrap();
        let mut command = Command::new("haproxy");
        command
            .args(["-db", "-f", &config])
            .env("HA_STATS_SOCKET", self.stats_socket())
            .env("HA_REDIS_BIND", format!("127.0.0.1:{}", self.redis_port))
            .env(
                "HA_MEMCACHE_BIND",
                format!("127.0.0.1:{}", self.memcache_port),
            )
            .stdout(Stdio::null())
            .stderr(log);
        for (i, (proxy, (redis, memcache))) in self.proxies.iter().zip(&self.ports).enumerate() {
            let n = i + 1;
            command
                .env(format!("RINGPROXY_{n}_REDIS"), format!("127.0.0.1:{redis}"))
                .env(
                    format!("RINGPROXY_{n}_MEMCACHE"),
                    format!("127.0.0.1:{memcache}"),
                )
                .env(format!("RINGPROXY_{n}_ADMIN_PORT"), proxy.admin.to_string());
        }
        let child = command
            .spawn()
            .expect("haproxy must be installed (scripts/test installs it)");
        let process = Process { child };
        let up = poll_until(Duration::from_secs(10), || {
            self.stats_socket().exists()
                && std::net::TcpStream::connect(("127.0.0.1", self.redis_port)).is_ok()
        });
        let log = std::fs::read_to_string(self.dir.0.join("haproxy.log"));
        assert!(up, "haproxy did not start: {}", log.unwrap_or_default());
        process
    }

    /// What HAProxy says of instance `i` in `backend`: UP, DOWN, or on its way ("UP 1/2").
    fn status(&self, backend: &str, i: usize) -> String {
        let mut socket = UnixStream::connect(self.stats_socket()).unwrap();
        socket.write_all(b"show stat\n").unwrap();
        let mut csv = String::new();
        socket.read_to_string(&mut csv).unwrap();
        let server = format!("{backend},ringproxy-{},", i + 1);
        let line = csv
            .lines()
            .find(|l| l.starts_with(&server))
            .unwrap_or_else(|| panic!("{server} in {csv}"));
        // The 18th field of `show stat` is the status.
        line.split(',').nth(17).unwrap().to_string()
    }

    /// Waits until HAProxy sends clients of both protocols to instance `i`.
    fn wait_in_service(&self, i: usize) {
        wait_until(
            "HAProxy puts the instance in service",
            Duration::from_secs(30),
            || {
                ["ringproxy_redis", "ringproxy_memcache"]
                    .iter()
                    .all(|b| self.status(b, i) == "UP")
            },
        );
    }
}

/// redis-benchmark through HAProxy, run again and again until told to stop: a run ends early
/// when its connection is closed, which is allowed; every other failure is kept. A run is
/// bounded to a minute, and stopping (or dropping, when a test fails) kills the one under way.
struct Benchmark {
    stop: Arc<AtomicBool>,
    runs: Option<JoinHandle<(u32, u32, Vec<String>)>>,
}

impl Benchmark {
    fn start(port: u16) -> Benchmark {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let runs = std::thread::spawn(move || {
            let (mut complete, mut cut, mut failures) = (0, 0, Vec::new());
            while !stopping.load(Ordering::Relaxed) && complete + cut < 1000 {
                let mut run = Command::new("redis-benchmark")
                    .args(["-p", &port.to_string(), "-c", "8", "-n", "5000"])
                    .args(["-r", "100000", "-t", "set,get", "-q"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("redis-benchmark (scripts/test installs it)");
                let ended = poll_until(Duration::from_secs(60), || {
                    stopping.load(Ordering::Relaxed) || !matches!(run.try_wait(), Ok(None))
                });
                if !ended || stopping.load(Ordering::Relaxed) {
                    let _ = run.kill();
                    let _ = run.wait();
                    if !ended {
                        failures.push("a redis-benchmark run took over a minute".to_string());
                    }
                    break;
                }
                let out = run.wait_with_output().unwrap();
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                let closed = text.contains("Server closed the connection")
                    || text.contains("Connection reset by peer");
                if text.contains("Error from server") || !(out.status.success() || closed) {
                    failures.push(text);
                } else if out.status.success() {
                    complete += 1;
                } else {
                    cut += 1;
                }
            }
            (complete, cut, failures)
        });
        Benchmark {
            stop,
            runs: Some(runs),
        }
    }

    /// Stops and returns (runs complete, runs whose connection was closed, failures).
    fn finish(mut self) -> (u32, u32, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.runs.take().unwrap().join().unwrap()
    }
}

impl Drop for Benchmark {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(runs) = self.runs.take() {
            let _ = runs.join();
        }
    }
}

/// `tests/python/ha_load.py`: redis-py clients writing and checking through HAProxy.
struct PythonLoad {
    child: Option<std::process::Child>,
    progress: PathBuf,
    stop: PathBuf,
}

impl PythonLoad {
    fn start(port: u16, clients: usize, dir: &TempDir) -> PythonLoad {
        let (progress, stop) = (dir.0.join("progress"), dir.0.join("stop"));
        let script = format!("{}/tests/python/ha_load.py", env!("CARGO_MANIFEST_DIR"));
        let child = Command::new("python3")
            .args([&script, &port.to_string(), &clients.to_string()])
            .args([&progress, &stop])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 (scripts/test installs it)");
        PythonLoad {
            child: Some(child),
            progress,
            stop,
        }
    }

    fn acked(&self) -> u64 {
        std::fs::read_to_string(&self.progress)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until `more` writes beyond those acknowledged now are acknowledged.
    fn wait_more(&self, more: u64) {
        let target = self.acked() + more;
        wait_until("writes through HAProxy", Duration::from_secs(60), || {
            self.acked() >= target
        });
    }

    /// Stops the clients, which then check every write; returns their last line.
    fn finish(mut self) -> String {
        std::fs::write(&self.stop, "").unwrap();
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout.lines().last().unwrap_or_default().to_string()
    }
}

impl Drop for PythonLoad {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn a_rolling_restart_and_a_reload_behind_haproxy_under_load_lose_nothing() {
    let mut demo = HaDemo::start();
    let load = PythonLoad::start(demo.redis_port, 8, &demo.dir);
    let bench = Benchmark::start(demo.redis_port);
    load.wait_more(2000);
    for i in 0..INSTANCES {
        let (redis, _) = demo.ports[i];
        demo.proxies[i].signal("-TERM");
        wait_until(
            "HAProxy takes the instance out",
            Duration::from_secs(10),
            || demo.status("ringproxy_redis", i).starts_with("DOWN"),
        );
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", redis)).is_ok(),
            "instance {i} still accepted clients when HAProxy took it out"
        );
        assert_eq!(
            demo.proxies[i].wait_exit(Duration::from_secs(15)).code(),
            Some(0),
            "{}",
            demo.proxies[i].log()
        );
        demo.proxies[i].restart();
        demo.wait_in_service(i);
        load.wait_more(1000);
    }
    // A reload of both, one by SIGHUP and one by POST /reload: the redis pool's timeout
    // changes, so each instance replaces the pool and its clients move to the new one.
    for i in 0..INSTANCES {
        let config = demo.config(i, "    timeout_ms: 900\n");
        demo.proxies[i].rewrite_config(&config);
    }
    demo.proxies[0].signal("-HUP");
    let (status, body) = http_request(demo.proxies[1].admin, "POST", "/reload", "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pool redis replaced"), "{body}");
    for proxy in &demo.proxies {
        wait_until("the reload", Duration::from_secs(10), || {
            metric(
                &proxy.http("/metrics").1,
                "ringproxy_config_reloads_total{result=\"ok\"}",
            ) == 1
        });
    }
    load.wait_more(1000);
    let (complete, cut, failures) = bench.finish();
    let python = load.finish();
    eprintln!(
        "redis-benchmark: {complete} runs complete, {cut} cut by a closed connection; redis-py: {python}"
    );
    assert!(failures.is_empty(), "redis-benchmark: {failures:?}");
    assert!(complete + cut > 0, "redis-benchmark ran");
    assert!(python.starts_with("ok acked"), "{python}");
    for (master, _) in &demo.shards {
        assert!(master.dbsize() > 0, "every shard took writes");
    }
}

/// `scripts/ha-demo`: starts the harness, prints where everything is, and keeps it up until
/// standard input closes (Enter or Ctrl-D).
#[test]
#[ignore = "interactive: run by scripts/ha-demo"]
fn demo() {
    let demo = HaDemo::start();
    let (first, second) = (&demo.proxies[0], &demo.proxies[1]);
    println!(
        "\nHAProxy: redis on 127.0.0.1:{r}, memcache on 127.0.0.1:{m}\n\
         ringproxy instances: redis {r1} and {r2}, memcache {m1} and {m2}, admin http://127.0.0.1:{a1}/ and http://127.0.0.1:{a2}/\n\
         shards (master, replica): {shards}\nSentinels: {sentinels}\nmemcached: {mc}\n\n\
         Try:\n  redis-cli -p {r} set hello world && redis-cli -p {r} get hello\n  \
         printf hi > greeting && memccp --servers=127.0.0.1:{m} greeting && memccat --servers=127.0.0.1:{m} greeting\n  \
         curl -s http://127.0.0.1:{a1}/topology\n  \
         kill -TERM {p1}   # instance 1 drains: HAProxy takes it out, clients move to instance 2\n\n\
         Press Enter to stop everything.",
        r = demo.redis_port,
        m = demo.memcache_port,
        r1 = demo.ports[0].0,
        r2 = demo.ports[1].0,
        m1 = demo.ports[0].1,
        m2 = demo.ports[1].1,
        a1 = first.admin,
        a2 = second.admin,
        shards = demo
            .shards
            .iter()
            .map(|(m, r)| format!("{}/{}", m.port, r.port))
            .collect::<Vec<_>>()
            .join(" "),
        sentinels = demo
            .sentinels
            .iter()
            .map(|s| s.port.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        mc = demo.memcached.port,
        p1 = first.pid(),
    );
    let _ = std::io::stdin().read_line(&mut String::new());
}
