//! Standard clients, unchanged, through ringproxy: redis-py (sync, asyncio, hiredis, RESP3),
//! ioredis and node-redis (Node.js), the redis gem (Ruby), redis-cli and redis-benchmark;
//! pymemcache, node's memcached and libmemcached's memccp, memccat and memcslap.

mod common;

use common::*;

fn setup() -> (Vec<Redis>, u16, Proxy) {
    three_shards("s", "")
}

/// Three memcached servers behind a memcache pool.
fn memcache_setup() -> (Vec<Server>, u16, Proxy) {
    let servers: Vec<Server> = (0..3).map(|_| Server::memcached()).collect();
    let entries: Vec<String> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{}:1 mc{i}", s.addr()))
        .collect();
    let port = free_port();
    let config = pool_config(port, &entries, "    protocol: memcache\n    hash: md5\n");
    let proxy = Proxy::start(&config, port);
    (servers, port, proxy)
}

#[test]
fn redis_py_sync_asyncio_hiredis_and_resp3() {
    let (_shards, port, _proxy) = setup();
    assert_eq!(python("clients.py", port).len(), 7);
}

/// Three shards with hash tags, so that transactions and scripts can name keys of one shard.
fn tagged_setup() -> (Vec<Redis>, u16, Proxy) {
    three_shards("s", "    hash_tag: \"{}\"\n")
}

#[test]
fn ioredis_handshake_pipelines_transactions_scripts_pubsub_and_blocking() {
    let (_shards, port, _proxy) = tagged_setup();
    let checks = node("ioredis.js", port);
    assert_eq!(checks.len(), 7, "{checks:?}");
}

#[test]
fn node_redis_handshake_pipelines_transactions_scripts_pubsub_and_blocking() {
    let (_shards, port, _proxy) = tagged_setup();
    let checks = node("node_redis.js", port);
    assert_eq!(checks.len(), 7, "{checks:?}");
}

#[test]
fn ruby_redis_handshake_pipelines_transactions_scripts_pubsub_and_blocking() {
    let (_shards, port, _proxy) = tagged_setup();
    let checks = ruby("clients.rb", port);
    assert_eq!(checks.len(), 7, "{checks:?}");
}

#[test]
fn pymemcache_single_and_pooled_clients() {
    let (servers, port, _proxy) = memcache_setup();
    assert_eq!(python("memcache_clients.py", port).len(), 2);
    // The keys really were spread over the servers.
    for s in &servers {
        let mut c = Raw::connect(s.port);
        c.send(b"stats\r\n");
        let stats = std::iter::from_fn(|| Some(c.read_line()))
            .take_while(|l| l != "END\r\n")
            .find(|l| l.starts_with("STAT cmd_set "))
            .unwrap();
        let sets: u64 = stats.trim_end()["STAT cmd_set ".len()..].parse().unwrap();
        assert!(sets > 100, "{stats}");
    }
}

#[test]
fn node_memcached_storage_multi_gets_cas_counters_and_stats() {
    let (_servers, port, _proxy) = memcache_setup();
    let checks = node("memcached.js", port);
    assert_eq!(checks.len(), 3, "{checks:?}");
}

#[test]
fn libmemcached_tools_copy_read_and_load() {
    let (_servers, port, _proxy) = memcache_setup();
    let servers = format!("--servers=127.0.0.1:{port}");
    let dir = TempDir::new("memccp");
    let mut files = Vec::new();
    for i in 0..20 {
        let body = format!("file {i} {}", "x".repeat(i * 100));
        files.push((format!("f{i}.txt"), body.clone()));
        dir.write(&format!("f{i}.txt"), &body);
    }
    let paths: Vec<String> = files
        .iter()
        .map(|(name, _)| dir.0.join(name).to_string_lossy().to_string())
        .collect();
    // Runs a libmemcached tool against the proxy; its output.
    let tool = |name: &str, args: &[String]| {
        let out = bounded(name).arg(&servers).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    tool("memccp", &paths);
    let names: Vec<String> = files.iter().map(|(name, _)| name.clone()).collect();
    let copied = tool("memccat", &names);
    let want: String = files.iter().map(|(_, body)| body.as_str()).collect();
    assert_eq!(copied.replace('\n', ""), want);

    for test in ["set", "get", "mget"] {
        let args = [
            "--concurrency=4",
            "--execute-number=2000",
            &format!("--test={test}"),
        ];
        let report = tool("memcslap", &args.map(String::from));
        assert!(
            report.contains(&format!("Time to {test} ")),
            "{test}: {report}"
        );
    }
}

#[test]
fn redis_cli_works_unchanged() {
    let (_shards, port, _proxy) = setup();
    let cli = |args: &[&str]| {
        let out = bounded("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "cli-key", "hello world"]), "OK");
    assert_eq!(cli(&["GET", "cli-key"]), "hello world");
    assert_eq!(cli(&["MGET", "cli-key", "nope"]), "hello world");
    assert_eq!(cli(&["PING"]), "PONG");
}

#[test]
fn redis_benchmark_runs_through_the_proxy() {
    let (_shards, port, _proxy) = setup();
    let out = bounded("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-n",
            "2000",
            "-c",
            "10",
            "-r",
            "1000",
            "-P",
            "4",
            "-t",
            "set,get,mset",
            "-q",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    for test in ["SET", "GET", "MSET (10 keys)"] {
        assert!(
            stdout.contains(&format!("{test}: ")) && stdout.contains("requests per second"),
            "{test} in {stdout}"
        );
    }
}
