//! The admin HTTP endpoint for load balancers and operators: `/health`, `/ready`, `/metrics`,
//! `/topology`. A few routes with tiny bodies do not need an HTTP framework.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::backend::{Health, Role};
use crate::topology::Topology;

const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// Serves admin requests until `shutdown` fires.
pub async fn serve(listener: TcpListener, topology: Arc<Topology>, shutdown: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(_) => continue,
            },
        };
        let topology = topology.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), handle(stream, &topology)).await;
        });
    }
}

async fn handle(mut stream: TcpStream, topology: &Topology) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || head.len() + n > MAX_REQUEST_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let (method, path) = (
        words.next().unwrap_or_default(),
        words.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = if method != b"GET" && method != b"HEAD" {
        (405, "text/plain", "only GET is served\n".to_string())
    } else {
        route(path, topology)
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != b"HEAD" {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn route(path: &[u8], topology: &Topology) -> (u16, &'static str, String) {
    match path {
        b"/health" => (200, "text/plain", "ok\n".to_string()),
        b"/ready" => match topology.readiness() {
            Ok(()) => (200, "application/json", "{\"ready\":true}\n".to_string()),
            Err(reason) => (
                503,
                "application/json",
                format!("{{\"ready\":false,\"reason\":{}}}\n", json_string(&reason)),
            ),
        },
        b"/metrics" => (
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            topology.metrics.encode(),
        ),
        b"/topology" => (200, "application/json", topology_json(topology)),
        _ => (
            404,
            "text/plain",
            "not found: try /health /ready /metrics /topology\n".to_string(),
        ),
    }
}

/// Pools, servers, their addresses and live state. Passwords are never shown.
fn topology_json(topology: &Topology) -> String {
    let pools: Vec<String> = topology
        .pools
        .iter()
        .map(|pool| {
            let state = pool.state();
            let c = &pool.config;
            let servers: Vec<String> = state
                .shards
                .iter()
                .enumerate()
                .map(|(i, shard)| {
                    let replicas: Vec<String> = (0..shard.nodes.len())
                        .filter(|&n| n != shard.master)
                        .map(|n| format!("{{\"address\":{},\"up\":{}}}", json_string(&shard.nodes[n].addr.to_string()), shard.status[n].state() != Health::Down))
                        .collect();
                    let nodes: Vec<String> = (0..shard.nodes.len())
                        .map(|n| {
                            format!(
                                "{{\"address\":{},\"role\":\"{}\",\"state\":\"{}\",\"reason\":{},\"says\":{},\"keys\":{}}}",
                                json_string(&shard.nodes[n].addr.to_string()),
                                if n == shard.master { "master" } else { "replica" },
                                shard.status[n].state().as_str(),
                                json_string(shard.status[n].why()),
                                match shard.status[n].says() {
                                    Some(Role::Master) => "\"master\"",
                                    Some(Role::Replica) => "\"replica\"",
                                    None => "null",
                                },
                                shard.status[n].said.as_ref().map_or_else(|| "null".to_string(), |s| s.keys.to_string()),
                            )
                        })
                        .collect();
                    format!(
                        "{{\"name\":{},\"identity\":{},\"weight\":{},\"on_ring\":{},\"master\":{{\"address\":{},\"up\":{}}},\"replicas\":[{}],\"nodes\":[{}]}}",
                        json_string(&shard.name),
                        json_string(&c.servers[i].identity),
                        c.servers[i].weight,
                        state.on_ring(i),
                        json_string(&shard.master().addr.to_string()),
                        shard.status[shard.master].state() != Health::Down,
                        replicas.join(","),
                        nodes.join(",")
                    )
                })
                .collect();
            format!(
                "{{\"name\":{},\"listen\":{},\"protocol\":\"{}\",\"hash\":\"{}\",\"distribution\":\"{}\",\"read_from\":\"{}\",\"failover\":\"{}\",\"servers\":[{}]}}",
                json_string(&c.name),
                json_string(&c.listen.to_string()),
                c.protocol,
                c.hash,
                c.distribution,
                c.read_from,
                c.failover,
                servers.join(",")
            )
        })
        .collect();
    format!("{{\"pools\":[{}]}}\n", pools.join(","))
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(super::json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
