//! Opening a backend connection: connecting (TLS, the pool's handshake), asking its id, and
//! reading one reply while nothing else is in flight; and [`Framer`], which finds where each
//! reply ends.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::time::timeout;

use super::{ConnSettings, ConnectError, Failure, Profile};
use crate::config::{PoolConfig, Protocol, ReadFrom};
use crate::net::Stream;
use crate::protocol::resp::encode;
use crate::protocol::{ReplyError, ReplyKind, memcache, resp};

/// Opens a connection and runs the handshake, within the pool's timeout.
pub(super) async fn connect(settings: &ConnSettings) -> Result<Stream, ConnectError> {
    let attempt = async {
        let mut stream = Stream::connect(&settings.addr.host, settings.addr.port).await?;
        if let Some(tls) = &settings.tls {
            stream = stream
                .connect_tls(tls)
                .await
                .map_err(|e| ConnectError::Tls(e.to_string()))?;
        }
        if settings.handshake_replies > 0 {
            let handshake = |f: Failure| ConnectError::Handshake(Box::new(f));
            stream
                .write_all(&settings.handshake)
                .await
                .map_err(|e| handshake(e.into()))?;
            let mut buf = BytesMut::with_capacity(256);
            for _ in 0..settings.handshake_replies {
                let reply = read_reply(&stream, &mut buf, settings, ReplyKind::Resp)
                    .await
                    .map_err(handshake)?;
                if reply.first() == Some(&b'-') {
                    let text = String::from_utf8_lossy(&reply[1..]).trim_end().to_string();
                    return Err(ConnectError::Refused(text));
                }
            }
        }
        Ok(stream)
    };
    timeout(settings.timeout, attempt)
        .await
        .unwrap_or(Err(ConnectError::Timeout(settings.timeout)))
}

/// Asks the server the connection's id (CLIENT ID) and keeps it in `id`.
pub(super) async fn identify(
    stream: Stream,
    settings: &ConnSettings,
    id: &AtomicU64,
) -> Result<Stream, ConnectError> {
    let failed = |f: Failure| ConnectError::Handshake(Box::new(f));
    let mut out = BytesMut::new();
    encode::command(&mut out, [&b"CLIENT"[..], b"ID"].into_iter());
    let asked = async {
        stream.write_all(&out).await.map_err(|e| failed(e.into()))?;
        let mut buf = BytesMut::with_capacity(64);
        let reply = read_reply(&stream, &mut buf, settings, ReplyKind::Resp)
            .await
            .map_err(failed)?;
        let text = std::str::from_utf8(&reply).unwrap_or_default();
        match text
            .strip_prefix(':')
            .and_then(|n| n.trim_end().parse().ok())
        {
            Some(n) => Ok(n),
            // A script runs past its time limit: the connection may carry SCRIPT KILL, and its
            // id stays unknown (0), so CLIENT UNBLOCK and KILL through the proxy cannot name it.
            None if text.starts_with("-BUSY") => Ok(0),
            None => Err(ConnectError::Refused(format!(
                "CLIENT ID answered {}",
                text.trim_end()
            ))),
        }
    };
    let n = timeout(settings.timeout, asked)
        .await
        .unwrap_or(Err(ConnectError::Timeout(settings.timeout)))?;
    id.store(n, Ordering::Relaxed);
    Ok(stream)
}

/// Finds where each reply ends, in the protocol of the request it answers.
pub(super) struct Framer {
    pub(super) resp: resp::ReplyScanner,
    pub(super) memcache: memcache::ReplyScanner,
    /// A Redis connection, on which a RESP3 push frame (`>`) may come that answers no request.
    pub(super) pushes: bool,
    /// Of a request whose reply is several ([`ReplyKind::Resps`]): the bytes of those
    /// complete so far, and how many they are.
    pub(super) partial: (usize, u8),
}

impl Framer {
    pub(super) fn new(settings: &ConnSettings) -> Framer {
        Framer {
            resp: resp::ReplyScanner::new(settings.max_reply_depth),
            memcache: memcache::ReplyScanner::default(),
            pushes: settings.protocol == Protocol::Redis,
            partial: (0, 0),
        }
    }

    /// The length of the complete reply at the start of `buf`, if it is complete.
    pub(super) fn scan(
        &mut self,
        buf: &[u8],
        kind: ReplyKind,
    ) -> Result<Option<usize>, ReplyError> {
        Ok(match kind {
            ReplyKind::Resp | ReplyKind::Resps(_) => self.resp.scan(buf)?,
            ReplyKind::Memcache(shape) => self.memcache.scan(buf, shape)?,
        })
    }
}

/// Reads one complete reply from a stream that has nothing else in flight.
pub(super) async fn read_reply(
    stream: &Stream,
    buf: &mut BytesMut,
    settings: &ConnSettings,
    kind: ReplyKind,
) -> Result<BytesMut, Failure> {
    let mut framer = Framer::new(settings);
    let mut chunk = 256;
    loop {
        if let Some(len) = framer.scan(buf, kind).map_err(Failure::BadReply)? {
            return Ok(buf.split_to(len));
        }
        if stream.read_some(buf, &mut chunk).await? == 0 {
            return Err(Failure::Closed);
        }
    }
}

/// Sends `command` on a connection just opened and reads its one reply, within the
/// connection's timeout.
pub(super) async fn ask(
    stream: &Stream,
    settings: &ConnSettings,
    command: &[u8],
) -> Result<BytesMut, ConnectError> {
    let failed = |f: Failure| ConnectError::Handshake(Box::new(f));
    let asked = async {
        stream
            .write_all(command)
            .await
            .map_err(|e| failed(e.into()))?;
        let mut buf = BytesMut::with_capacity(64);
        read_reply(stream, &mut buf, settings, ReplyKind::Resp)
            .await
            .map_err(failed)
    };
    timeout(settings.timeout, asked)
        .await
        .unwrap_or(Err(ConnectError::Timeout(settings.timeout)))
}

/// The commands every new connection of `profile` starts with, pre-encoded.
pub(super) fn handshake(pool: &PoolConfig, profile: Profile) -> (Bytes, usize) {
    let mut buf = BytesMut::new();
    let mut replies = 0;
    if pool.protocol == Protocol::Memcache {
        return (buf.freeze(), replies);
    }
    if let Some(auth) = &pool.redis.backend_auth {
        match &auth.username {
            Some(user) => encode::command(
                &mut buf,
                [&b"AUTH"[..], user.as_bytes(), auth.password.as_bytes()].into_iter(),
            ),
            None => encode::command(
                &mut buf,
                [&b"AUTH"[..], auth.password.as_bytes()].into_iter(),
            ),
        }
        replies += 1;
    }
    let db = pool.redis.db + u32::from(profile.db);
    if db != 0 {
        let db = db.to_string();
        encode::command(&mut buf, [&b"SELECT"[..], db.as_bytes()].into_iter());
        replies += 1;
    }
    if profile.resp3 {
        encode::command(&mut buf, [&b"HELLO"[..], b"3"].into_iter());
        replies += 1;
    }
    // A cluster's replica serves reads only to a connection that said READONLY (a master
    // ignores it, and a replica promoted keeps serving).
    if pool.cluster.is_some() && pool.read_from != ReadFrom::Master {
        encode::command(&mut buf, [&b"READONLY"[..]].into_iter());
        replies += 1;
    }
    (buf.freeze(), replies)
}
