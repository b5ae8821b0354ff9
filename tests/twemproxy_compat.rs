//! The same unchanged nutcracker.yml run by twemproxy (nutcracker) and by ringproxy puts every
//! key on the same backend, for redis pools and for memcache pools.

mod common;

use std::collections::HashMap;

use common::*;

/// 10,000 keys: ASCII, UTF-8 and raw bytes ≥ 0x80, of varied lengths.
fn keys() -> Vec<Vec<u8>> {
    (0..10_000u32)
        .map(|i| match i % 4 {
            0 => format!("user:{i}").into_bytes(),
            1 => format!("ключ-{i}-ü").into_bytes(),
            2 => {
                let mut k = vec![0xff, 0x80, (i % 256) as u8];
                k.extend_from_slice(&i.to_le_bytes());
                k
            }
            _ => format!(
                "session/{:08x}/{}",
                i.wrapping_mul(2_654_435_761),
                "x".repeat((i % 50) as usize)
            )
            .into_bytes(),
        })
        .collect()
}

/// Writes every key through the proxy on `port`, then asks each backend which keys it holds.
fn placement(port: u16, backends: &[Redis], keys: &[Vec<u8>]) -> HashMap<Vec<u8>, usize> {
    // Raw RESP: twemproxy cannot answer the handshake that client libraries send.
    let mut conn = Raw::connect(port);
    for chunk in keys.chunks(500) {
        let pipeline: Vec<u8> = chunk
            .iter()
            .flat_map(|k| command(&[b"SET", k, b"1"]))
            .collect();
        conn.roundtrip(&pipeline, &b"+OK\r\n".repeat(chunk.len()));
    }
    let mut placed = HashMap::new();
    for (i, b) in backends.iter().enumerate() {
        let held: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut b.client()).unwrap();
        for k in held {
            assert!(placed.insert(k, i).is_none(), "a key on two backends");
        }
    }
    assert_eq!(placed.len(), keys.len());
    placed
}

/// Writes every key through a memcache proxy on `port`, then asks each backend which keys it
/// holds.
fn memcache_placement(port: u16, backends: &[Server], keys: &[Vec<u8>]) -> HashMap<Vec<u8>, usize> {
    let mut conn = Raw::connect(port);
    for chunk in keys.chunks(500) {
        let pipeline: Vec<u8> = chunk
            .iter()
            .flat_map(|k| [&b"set "[..], k, b" 0 0 1\r\n1\r\n"].concat())
            .collect();
        conn.roundtrip(&pipeline, &b"STORED\r\n".repeat(chunk.len()));
    }
    let mut placed = HashMap::new();
    for (i, b) in backends.iter().enumerate() {
        let mut direct = Raw::connect(b.port);
        for chunk in keys.chunks(500) {
            let pipeline: Vec<u8> = chunk
                .iter()
                .flat_map(|k| [&b"mg "[..], k, b"\r\n"].concat())
                .collect();
            direct.send(&pipeline);
            for k in chunk {
                if direct.read_line() == "HD\r\n" {
                    assert!(
                        placed.insert(k.clone(), i).is_none(),
                        "a key on two backends"
                    );
                }
            }
        }
    }
    assert_eq!(placed.len(), keys.len());
    placed
}

/// The same 10,000 keys as memcached accepts them: the raw-byte ones keep bytes ≥ 0x80 but
/// lose those below 0x21.
fn memcache_keys() -> Vec<Vec<u8>> {
    keys()
        .into_iter()
        .enumerate()
        .map(|(i, k)| match i % 4 {
            2 => [
                &[0xff, 0x80, 0xc0 | (i % 64) as u8][..],
                i.to_string().as_bytes(),
            ]
            .concat(),
            _ => k,
        })
        .collect()
}

fn same_placement(server_lines: &[&str]) {
    let backends: Vec<Redis> = (0..3).map(|_| Redis::start()).collect();
    let keys = keys();
    let run = |port: u16| placement(port, &backends, &keys);
    let flush = || {
        for b in &backends {
            redis::cmd("FLUSHALL").query::<()>(&mut b.client()).unwrap();
        }
    };
    compare(
        "  redis: true\n",
        &backends,
        server_lines,
        &keys,
        run,
        flush,
    );
}

fn same_memcache_placement(server_lines: &[&str]) {
    let backends: Vec<Server> = (0..3).map(|_| Server::memcached()).collect();
    let keys = memcache_keys();
    let run = |port: u16| memcache_placement(port, &backends, &keys);
    let flush = || {
        for b in &backends {
            Raw::connect(b.port).roundtrip(b"flush_all\r\n", b"OK\r\n");
        }
    };
    compare("", &backends, server_lines, &keys, run, flush);
}

/// Runs nutcracker, then ringproxy, on one unchanged file with `protocol_line` and the
/// `backends` as `server_lines`, and compares where `place` finds each key.
fn compare(
    protocol_line: &str,
    backends: &[Server],
    server_lines: &[&str],
    keys: &[Vec<u8>],
    place: impl Fn(u16) -> HashMap<Vec<u8>, usize>,
    flush: impl Fn(),
) {
    let port = free_port();
    let mut yaml = format!(
        "alpha:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n{protocol_line}  timeout: 2000\n  servers:\n"
    );
    for (b, line) in backends.iter().zip(server_lines) {
        yaml.push_str(&format!("   - {}:{line}\n", b.addr()));
    }
    let dir = TempDir::new("compat");
    let file = dir.write("nutcracker.yml", &yaml);

    let twemproxy = nutcracker(&file, port);
    let by_twemproxy = place(port);
    drop(twemproxy);
    flush();

    let proxy = Proxy::start(&std::fs::read_to_string(&file).unwrap(), port);
    let by_ringproxy = place(port);
    drop(proxy);

    let moved = keys
        .iter()
        .filter(|k| by_twemproxy[*k] != by_ringproxy[*k])
        .count();
    assert_eq!(
        moved, 0,
        "keys placed differently for servers {server_lines:?}"
    );
    let mut per_backend = [0; 3];
    by_ringproxy.values().for_each(|&i| per_backend[i] += 1);
    assert!(
        per_backend.iter().all(|&n| n > 0),
        "every backend holds keys: {per_backend:?}"
    );
}

#[test]
fn named_servers_with_unequal_weights() {
    same_placement(&["1 alpha", "2 beta", "3 gamma"]);
}

#[test]
fn unnamed_servers_with_equal_weights() {
    same_placement(&["1", "1", "1"]);
}

#[test]
fn unnamed_servers_with_unequal_weights() {
    same_placement(&["3", "1", "2"]);
}

#[test]
fn memcache_named_servers_with_unequal_weights() {
    same_memcache_placement(&["1 alpha", "2 beta", "3 gamma"]);
}

#[test]
fn memcache_unnamed_servers_with_unequal_weights() {
    same_memcache_placement(&["3", "1", "2"]);
}

/// twemproxy's `listen: /path/to.sock 0666`: clients connect on the Unix socket, whose file has
/// those permissions, is removed when the proxy stops, and is replaced when a process that is
/// gone left it.
#[test]
fn a_pool_listens_on_a_unix_socket_with_its_permissions() {
    use std::io::{Read, Write};
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    use std::os::unix::net::UnixStream;
    let redis = Redis::start();
    let dir = TempDir::new("unix");
    let socket = dir.0.join("nutcracker.sock");
    let port = free_port();
    let config = format!(
        "alpha:\n  listen: 127.0.0.1:{port}\n  redis: true\n  servers:\n   - {addr}:1\nbeta:\n  listen: {path} 0666\n  redis: true\n  servers:\n   - {addr}:1\n",
        addr = redis.addr(),
        path = socket.display()
    );
    let mut proxy = Proxy::start(&config, port);
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    let mut client = UnixStream::connect(&socket).unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut roundtrip = |request: &[u8], reply: &[u8]| {
        client.write_all(request).unwrap();
        let mut got = vec![0; reply.len()];
        client.read_exact(&mut got).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(reply)
        );
    };
    roundtrip(&command(&[b"SET", b"k", b"v"]), b"+OK\r\n");
    roundtrip(&command(&[b"GET", b"k"]), b"$1\r\nv\r\n");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut connect(port))
        .unwrap();
    assert!(info.contains("tcp_port:"), "{info}");
    proxy.signal("-TERM");
    assert_eq!(
        proxy.wait_exit(std::time::Duration::from_secs(10)).code(),
        Some(0)
    );
    assert!(!socket.exists(), "the socket file is removed on exit");
    // Started again over a stale socket file, as after a crash.
    let stale = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    drop(stale);
    proxy.restart();
    let mut again = UnixStream::connect(&socket).unwrap();
    again.write_all(&command(&[b"PING"])).unwrap();
    let mut pong = [0; 7];
    again.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
}
