//! Periodic health checks: PING (memcache: `version`) on a connection of their own, so a dead
//! node is noticed without client traffic and a returning one without a restart. Redis nodes
//! are also asked what they are (`INFO replication`, `DBSIZE`, and their run id when the
//! connection is new), so the pool learns which node is master and which replicas are in sync,
//! and notices a master that restarted empty, from the nodes themselves. The same exchanges serve a failover: asking candidates, promoting one.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use super::opening::{connect, read_reply};
use super::{ConnSettings, Failure, Health, NodeShared, Role, Said, within};
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
    // Since when the node has been seen busy, and what a SCRIPT KILL sent since got.
    let mut busy: Option<(Instant, Option<String>)> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
            _ = shared.check_now.notified() => {}
        }
        let passed = within(check.timeout, asker.check(&shared, &settings)).await;
        match passed {
            Ok(said) => {
                busy = None;
                failed_in_a_row = 0;
                passed_in_a_row += 1;
                shared.record_success();
                let was_down = shared.health() == Health::Down;
                if !was_down || passed_in_a_row >= check.successes {
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
            // Running a script past its time limit: it answers, so it is not down, and it is
            // never replaced for it (a long script is no dead node).
            Err(Failure::Busy(why)) => {
                passed_in_a_row = 0;
                failed_in_a_row = 0;
                shared.set_health(Health::Busy, &why);
                let (since, answered) = busy.get_or_insert_with(|| (Instant::now(), None));
                if let Some(after) = check.kill_busy_scripts_after
                    && since.elapsed() >= after
                {
                    let answer = match within(check.timeout, asker.kill_busy(&settings)).await {
                        Ok(answer) => answer,
                        Err(failure) => failure.to_string(),
                    };
                    // Said once per answer: an unkillable script is not logged every check.
                    if answered.as_ref() != Some(&answer) {
                        tracing::warn!(node = %shared.label, "busy for {} ms: SCRIPT KILL answered {answer}", since.elapsed().as_millis());
                        *answered = Some(answer);
                    }
                }
            }
            Err(failure) => {
                busy = None;
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
    server: Arc<str>,
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

    /// What a Redis node says it is: `INFO replication` and `DBSIZE` in one round trip, with
    /// `INFO server` for the run id and version when this connection has not asked yet.
    pub(super) async fn said(&mut self, settings: &ConnSettings) -> Result<Said, Failure> {
        let mut request =
            b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n*1\r\n$6\r\nDBSIZE\r\n".to_vec();
        let known = self.process.clone();
        if known.is_none() {
            request.extend_from_slice(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n");
        }
        let stream = open(&mut self.conn, settings).await?;
        stream.write_all(&request).await?;
        let replication = read_reply(stream, &mut self.buf, settings, ReplyKind::Resp).await?;
        let keys = read_reply(stream, &mut self.buf, settings, ReplyKind::Resp).await?;
        let process = match known {
            Some(process) => process,
            None => {
                let info = read_reply(stream, &mut self.buf, settings, ReplyKind::Resp).await?;
                let field = |name: &[u8]| info_field(&info, name).ok_or_else(|| unexpected(&info));
                let process = Process {
                    run_id: field(b"run_id:")?,
                    server: info_field(&info, b"server_name:").unwrap_or_else(|| "redis".into()),
                    version: match info_field(&info, b"valkey_version:") {
                        Some(version) => version,
                        None => field(b"redis_version:")?,
                    },
                };
                self.process = Some(process.clone());
                process
            }
        };
        let keys = keys
            .strip_prefix(b":")
            .and_then(|n| std::str::from_utf8(n).ok()?.trim_end().parse().ok())
            .ok_or_else(|| unexpected(&keys))?;
        let replication =
            parse_replication(&replication).ok_or_else(|| unexpected(&replication))?;
        Ok(Said {
            keys,
            run_id: process.run_id,
            server: process.server,
            version: process.version,
            ..replication
        })
    }

    /// SCRIPT KILL, then FUNCTION KILL when no script ran (`-NOTBUSY`) or what runs is a
    /// function (`-BUSY`: SCRIPT KILL does not kill those): what the node answered last.
    async fn kill_busy(&mut self, settings: &ConnSettings) -> Result<String, Failure> {
        let kills: [&[u8]; 2] = [
            b"*2\r\n$6\r\nSCRIPT\r\n$4\r\nKILL\r\n",
            b"*2\r\n$8\r\nFUNCTION\r\n$4\r\nKILL\r\n",
        ];
        let mut answer = String::new();
        for kill in kills {
            let stream = open(&mut self.conn, settings).await?;
            stream.write_all(kill).await?;
            let reply = read_reply(stream, &mut self.buf, settings, ReplyKind::Resp).await?;
            answer = String::from_utf8_lossy(&reply).trim_end().to_string();
            if !(reply.starts_with(b"-NOTBUSY") || reply.starts_with(b"-BUSY")) {
                break;
            }
        }
        Ok(answer)
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
    let said = String::from_utf8_lossy(reply).trim_end().to_string();
    match reply.starts_with(b"-BUSY") {
        true => Failure::Busy(said),
        false => Failure::Unexpected(said),
    }
}

/// What `INFO replication` says: the role, the replication offset (`master_repl_offset`,
/// which a replica keeps while its link is down), for a replica its master and whether it is in
/// sync with it, and the replication ids. Keys, run id and version are left empty.
fn parse_replication(info: &[u8]) -> Option<Said> {
    let field = |name: &[u8]| info_field(info, name);
    let role = match &*field(b"role:")? {
        "master" => Role::Master,
        "slave" => Role::Replica,
        _ => return None,
    };
    let offset: i64 = field(b"master_repl_offset:")?.parse().ok()?;
    let follows = match role {
        Role::Master => None,
        Role::Replica => Some(Address {
            host: field(b"master_host:")?.to_string(),
            port: field(b"master_port:")?.parse().ok()?,
        }),
    };
    let in_sync = role == Role::Replica
        && field(b"master_link_status:").as_deref() == Some("up")
        && field(b"master_sync_in_progress:").as_deref() == Some("0");
    Some(Said {
        role,
        offset: offset.max(0) as u64,
        keys: 0,
        run_id: "".into(),
        server: "".into(),
        version: "".into(),
        follows,
        in_sync,
        replid: field(b"master_replid:").unwrap_or_default(),
        replid2: field(b"master_replid2:").unwrap_or_default(),
    })
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

    /// A node running a script past its time limit answers PING with -BUSY: the check says
    /// busy (not a failure that counts toward down), and the connection stays for the next.
    #[tokio::test(start_paused = true)]
    async fn a_node_answering_busy_is_busy_not_failing() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        const BUSY: &[u8] = b"-BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.\r\n";
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            loop {
                let _ = conn.read(&mut buf).await.unwrap();
                conn.write_all(BUSY).await.unwrap();
            }
        });
        let timeout = std::time::Duration::from_secs(1);
        let (shared, settings) = crate::backend::fake::fake_node(addr, timeout);
        let mut asker = Asker::default();
        for _ in 0..2 {
            let checked = asker.check(&shared, &settings).await;
            let Err(Failure::Busy(said)) = checked else {
                panic!("{checked:?}");
            };
            assert!(said.starts_with("-BUSY Redis is busy"), "{said}");
        }
    }

    #[test]
    fn roles_offsets_and_sync_from_info_replication() {
        let master = b"$200\r\n# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.1,port=9001,state=online,offset=3129242,lag=0\r\nmaster_replid:aaa\r\nmaster_replid2:0000000000000000000000000000000000000000\r\nmaster_repl_offset:3129659\r\nsecond_repl_offset:-1\r\n\r\n";
        let said = parse_replication(master).unwrap();
        assert_eq!(
            (said.role, said.offset, said.follows, said.in_sync),
            (Role::Master, 3129659, None, false)
        );
        assert_eq!(&*said.replid, "aaa");
        let replica = |link: &str, syncing: &str| {
            format!(
                "$1\r\n# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:9000\r\nmaster_link_status:{link}\r\nmaster_sync_in_progress:{syncing}\r\nslave_repl_offset:87\r\nmaster_replid:bbb\r\nmaster_replid2:aaa\r\nmaster_repl_offset:87\r\n\r\n"
            )
        };
        let of = Some("127.0.0.1:9000".parse().unwrap());
        let said = parse_replication(replica("up", "0").as_bytes()).unwrap();
        assert_eq!(
            (said.role, said.offset, &said.follows, said.in_sync),
            (Role::Replica, 87, &of, true)
        );
        assert_eq!(&*said.replid2, "aaa");
        // The link down (its master died) keeps the offset; a full sync is not in sync.
        let down = parse_replication(replica("down", "0").as_bytes()).unwrap();
        assert_eq!((down.offset, down.in_sync), (87, false));
        assert!(
            !parse_replication(replica("up", "1").as_bytes())
                .unwrap()
                .in_sync
        );
        assert_eq!(parse_replication(b"$10\r\nrole:sentinel\r\n"), None);
        assert_eq!(parse_replication(b"-ERR unknown command\r\n"), None);
    }

    #[test]
    fn run_id_from_info() {
        let info = b"$60\r\n# Server\r\nredis_version:7.0.15\r\nrun_id:4f2a\r\ntcp_port:1\r\n\r\n";
        assert_eq!(info_field(info, b"run_id:").as_deref(), Some("4f2a"));
        assert_eq!(info_field(info, b"nothing:"), None);
    }
}
