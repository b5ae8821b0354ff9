//! Periodic health checks: PING (memcache: `version`) on a connection of their own, so a dead
//! node is noticed without client traffic and a returning one without a restart. Redis nodes
//! are also asked what they are (`ROLE`, `DBSIZE`, and their run id when the connection is new),
//! so the pool learns which node is master, and notices a master that restarted empty, from the
//! nodes themselves. The same exchanges serve a failover: asking candidates, promoting one.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use super::connection::{connect, read_reply};
use super::{ConnSettings, Failure, Health, NodeShared, Role, Said, flat_fields, within};
use crate::config::{Address, HealthCheck, Protocol};
use crate::net::Stream;
use crate::protocol::ReplyKind;
use crate::protocol::memcache::ReplyShape;
use crate::protocol::resp::encode;

pub(super) async fn run(
    shared: Arc<NodeShared>,
    settings: Arc<ConnSettings>,
    check: HealthCheck,
    stop: CancellationToken,
) {
    let mut ticker = interval(check.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut asker = Asker::default();
    let (mut failed_in_a_row, mut passed_in_a_row) = (0, 0);
    let mut reported: Option<Said> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
            _ = shared.check_now.notified() => {}
        }
        let passed = within(check.timeout, asker.check(&shared, &settings)).await;
        match passed {
            Ok(said) => {
                failed_in_a_row = 0;
                passed_in_a_row += 1;
                shared.record_success();
                if shared.health() != Health::Down || passed_in_a_row >= check.successes {
                    shared.set_health(Health::Up, &"health check passed");
                }
                // After the node is up: what a node says is only ever known of a node seen up.
                if let Some(said) = said
                    && reported.as_ref() != Some(&said)
                {
                    reported = Some(said.clone());
                    shared.report(said);
                }
            }
            Err(failure) => {
                asker = Asker::default();
                passed_in_a_row = 0;
                failed_in_a_row += 1;
                tracing::debug!(node = %shared.label, "health check failed: {failure}");
                shared.record_failure(&failure);
                if failed_in_a_row >= check.failures {
                    let why =
                        format!("{failed_in_a_row} health checks failed, the last: {failure}");
                    shared.set_health(Health::Down, &why);
                }
            }
        }
    }
}

/// A connection for asking a node things, and what is known of the process behind it.
#[derive(Default)]
pub(super) struct Asker {
    conn: Option<Stream>,
    buf: BytesMut,
    /// The node's process (run id and version), asked once per connection: a new connection
    /// may reach a restarted process.
    process: Option<Process>,
}

/// What `INFO server` says of a node's process.
#[derive(Clone)]
struct Process {
    run_id: Arc<str>,
    version: Arc<str>,
}

impl Asker {
    /// One health check: PING, then for Redis a pending `REPLICAOF` and what the node says it
    /// is; for memcache a pending flush.
    async fn check(
        &mut self,
        shared: &NodeShared,
        settings: &ConnSettings,
    ) -> Result<Option<Said>, Failure> {
        let (ping, pong): (&[u8], &[u8]) = match settings.protocol {
            Protocol::Redis => (b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
            Protocol::Memcache => (b"version\r\n", b"VERSION "),
        };
        // A node still loading its data set answers -LOADING and is not healthy.
        self.ask(settings, ping, pong).await?;
        if settings.protocol == Protocol::Redis {
            let attach = shared
                .attach_to
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(master) = attach {
                self.replicate_from(settings, Some(&master)).await?;
                tracing::warn!(node = %shared.label, "now a replica of {master}");
            }
            return self.said(settings).await.map(Some);
        }
        if shared.stale.load(Ordering::Relaxed) {
            self.ask(settings, b"flush_all\r\n", b"OK\r\n").await?;
            shared.metrics.flushes.inc();
            tracing::info!(node = %shared.label, "flushed before serving again");
            shared.stale.store(false, Ordering::Relaxed);
        }
        Ok(None)
    }

    /// What a Redis node says it is: `ROLE` and `DBSIZE` in one round trip, with
    /// `INFO server` for the run id and version when this connection has not asked yet.
    pub(super) async fn said(&mut self, settings: &ConnSettings) -> Result<Said, Failure> {
        let mut request = b"*1\r\n$4\r\nROLE\r\n*1\r\n$6\r\nDBSIZE\r\n".to_vec();
        let known = self.process.clone();
        if known.is_none() {
            request.extend_from_slice(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n");
        }
        let stream = open(&mut self.conn, settings).await?;
        stream.write_all(&request).await?;
        let role = read_reply(stream, &mut self.buf, settings, ReplyKind::Resp).await?;
        let keys = read_reply(stream, &mut self.buf, settings, ReplyKind::Resp).await?;
        let process = match known {
            Some(process) => process,
            None => {
                let info = read_reply(stream, &mut self.buf, settings, ReplyKind::Resp).await?;
                let field = |name: &[u8]| info_field(&info, name).ok_or_else(|| unexpected(&info));
                let process = Process {
                    run_id: field(b"run_id:")?,
                    version: field(b"redis_version:")?,
                };
                self.process = Some(process.clone());
                process
            }
        };
        let (role, offset, follows) = parse_role(&role).ok_or_else(|| unexpected(&role))?;
        let keys = keys
            .strip_prefix(b":")
            .and_then(|n| std::str::from_utf8(n).ok()?.trim_end().parse().ok())
            .ok_or_else(|| unexpected(&keys))?;
        Ok(Said {
            role,
            offset,
            keys,
            run_id: process.run_id,
            version: process.version,
            follows,
        })
    }

    /// `REPLICAOF host port`: the node follows `master`; `None`: `REPLICAOF NO ONE`, the node
    /// becomes a master.
    pub(super) async fn replicate_from(
        &mut self,
        settings: &ConnSettings,
        master: Option<&Address>,
    ) -> Result<(), Failure> {
        let mut request = BytesMut::new();
        let port = master.map(|m| m.port.to_string());
        let (host, port) = match (master, &port) {
            (Some(m), Some(port)) => (m.host.as_bytes(), port.as_bytes()),
            _ => (&b"NO"[..], &b"ONE"[..]),
        };
        encode::command(&mut request, [&b"REPLICAOF"[..], host, port].into_iter());
        self.ask(settings, &request, b"+OK").await.map(drop)
    }

    /// Sends `request` and expects a reply that starts with `expected`.
    async fn ask(
        &mut self,
        settings: &ConnSettings,
        request: &[u8],
        expected: &[u8],
    ) -> Result<(), Failure> {
        let stream = open(&mut self.conn, settings).await?;
        stream.write_all(request).await?;
        let kind = match settings.protocol {
            Protocol::Redis => ReplyKind::Resp,
            Protocol::Memcache => ReplyKind::Memcache(ReplyShape::Line(&[])),
        };
        let reply = read_reply(stream, &mut self.buf, settings, kind).await?;
        match reply.starts_with(expected) {
            true => Ok(()),
            false => Err(unexpected(&reply)),
        }
    }
}

/// The connection in `conn`, opened first if there is none.
async fn open<'a>(
    conn: &'a mut Option<Stream>,
    settings: &ConnSettings,
) -> Result<&'a Stream, Failure> {
    match conn {
        Some(stream) => Ok(stream),
        None => {
            let stream = connect(settings).await.map_err(Failure::Unreachable)?;
            Ok(conn.insert(stream))
        }
    }
}

fn unexpected(reply: &[u8]) -> Failure {
    Failure::Unexpected(String::from_utf8_lossy(reply).trim_end().to_string())
}

/// The role, replication offset and (for a replica) master in a `ROLE` reply:
/// `*3 master <offset> [replicas]` or `*5 slave <host> <port> <state> <offset>` (an offset of
/// -1, not synced yet, counts as 0).
fn parse_role(reply: &[u8]) -> Option<(Role, u64, Option<Address>)> {
    let mut fields = flat_fields(reply).map(|l| std::str::from_utf8(l).ok());
    let (role, follows, offset) = match fields.next()?? {
        "master" => (Role::Master, None, fields.next()??),
        "slave" | "replica" => {
            let (host, port) = (fields.next()??, fields.next()??);
            let master = Address {
                host: host.to_string(),
                port: port.parse().ok()?,
            };
            (Role::Replica, Some(master), fields.nth(1)??)
        }
        _ => return None,
    };
    let offset: i64 = offset.parse().ok()?;
    Some((role, offset.max(0) as u64, follows))
}

/// The value of `name` (with its colon) in an INFO reply.
fn info_field(info: &[u8], name: &[u8]) -> Option<Arc<str>> {
    info.split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(name))
        .map(|v| String::from_utf8_lossy(v.trim_ascii_end()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_offsets() {
        let master = b"*3\r\n$6\r\nmaster\r\n:3129659\r\n*1\r\n*3\r\n$9\r\n127.0.0.1\r\n$4\r\n9001\r\n$7\r\n3129242\r\n";
        assert_eq!(parse_role(master), Some((Role::Master, 3129659, None)));
        let alone = b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n";
        assert_eq!(parse_role(alone), Some((Role::Master, 0, None)));
        let replica =
            b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$9\r\nconnected\r\n:3167038\r\n";
        let of = Some("127.0.0.1:9000".parse().unwrap());
        assert_eq!(
            parse_role(replica),
            Some((Role::Replica, 3167038, of.clone()))
        );
        let connecting =
            b"*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:9000\r\n$7\r\nconnect\r\n:-1\r\n";
        assert_eq!(parse_role(connecting), Some((Role::Replica, 0, of)));
        let sentinel = b"*2\r\n$8\r\nsentinel\r\n*1\r\n$10\r\nmymaster-1\r\n";
        assert_eq!(parse_role(sentinel), None);
        assert_eq!(parse_role(b"-ERR unknown command\r\n"), None);
    }

    #[test]
    fn run_id_from_info() {
        let info = b"$60\r\n# Server\r\nredis_version:7.0.15\r\nrun_id:4f2a\r\ntcp_port:1\r\n\r\n";
        assert_eq!(info_field(info, b"run_id:").as_deref(), Some("4f2a"));
        assert_eq!(info_field(info, b"nothing:"), None);
    }
}
