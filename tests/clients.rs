//! Standard clients, unchanged, through ringproxy: redis-py (sync, asyncio, hiredis, RESP3),
//! redis-cli and redis-benchmark.

mod common;

use std::process::Command;

use common::*;

fn setup() -> (Vec<Redis>, u16, Proxy) {
    three_shards("s", "")
}

#[test]
fn redis_py_sync_asyncio_hiredis_and_resp3() {
    let (_shards, port, _proxy) = setup();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/clients.py");
    let out = Command::new("python3")
        .args([script, &port.to_string()])
        .output()
        .expect("python3 (scripts/test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok ")).count(),
        7,
        "{stdout}"
    );
}

#[test]
fn redis_cli_works_unchanged() {
    let (_shards, port, _proxy) = setup();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
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
    let out = Command::new("redis-benchmark")
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
