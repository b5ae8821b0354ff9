//! The errors the proxy answers a client with, and the one place they become RESP or memcache
//! bytes.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::backend::{BackendError, Failure};
use crate::config::Protocol;
use crate::metrics::ErrorKind;
use crate::protocol::resp::encode;

/// The kind of a backend's failure, for the metrics.
pub fn backend_error_kind(e: &BackendError) -> ErrorKind {
    match e.failure {
        Failure::Timeout(_) | Failure::NotSent(_) => ErrorKind::Timeout,
        Failure::BadReply(_) | Failure::Unexpected(_) => ErrorKind::Backend,
        _ => ErrorKind::Connection,
    }
}

/// Why a request gets an error reply instead of an answer.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("no server is available for the key (all are ejected)")]
    NoServer,
    /// The keys of one command live on different shards.
    #[error("Keys in request don't hash to the same shard (command '{0}'); use a hash tag")]
    CrossShard(String),
    /// A key in a transaction is not on the transaction's shard.
    #[error(
        "Keys in request don't hash to the shard of the transaction (command '{0}'); use a hash tag"
    )]
    CrossShardTransaction(String),
    #[error("Keys in request don't hash to the shard of earlier WATCHed keys; use a hash tag")]
    CrossShardWatch,
    #[error("{0}")]
    Backend(#[from] BackendError),
    /// A request to resend found its shard gone from the pool.
    #[error("server {0} left the pool")]
    ShardLeft(Arc<str>),
    #[error("no node answered")]
    NoNodeAnswered,
    /// A cluster node redirected a request the proxy cannot send again (on a connection
    /// reserved for the client: a transaction, WATCH, a blocking command): `0` is what it
    /// answered.
    #[error("not applied: the slot moved under a transaction or WATCH ({0}); send it again")]
    SlotMoved(String),
    /// The pool's `client_connections` are all taken; the connection closes.
    #[error("max number of clients reached")]
    TooManyClients,
    /// A backend's reply cannot be merged: `0` says how it was odd.
    #[error("a backend answered {0}")]
    OddBackendReply(&'static str),
    /// Malformed client input; the connection closes after this reply.
    #[error("Protocol error: {0}")]
    Protocol(String),
    /// Redis's words: the name and the first arguments, quoted.
    #[error("unknown command {0}")]
    UnknownCommand(String),
    /// Served by Redis, not through the proxy, and why.
    #[error("unsupported command '{command}'{}", why_suffix(.why))]
    Unsupported {
        command: String,
        why: Cow<'static, str>,
    },
    #[error("wrong number of arguments for '{0}' command")]
    WrongArity(String),
    #[error("Authentication required.")]
    NoAuth,
    #[error("invalid username-password pair or user is disabled.")]
    WrongPass,
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    /// A request the pool's configuration refuses, with the reason and what would allow it.
    #[error("{0}")]
    Refused(Cow<'static, str>),
    /// The server's own reply, word for word, code included, where the proxy answers as
    /// redis-server or memcached would.
    #[error("{0}")]
    Exact(Cow<'static, str>),
}

fn why_suffix(why: &str) -> String {
    if why.is_empty() {
        String::new()
    } else {
        format!(": {why}")
    }
}

impl ClientError {
    /// No shard serves a key: every server is ejected, or, in a cluster pool, its slot is
    /// served by no node (as a cluster node says it).
    pub fn unplaced<N>(state: &crate::topology::PoolState<N>) -> ClientError {
        match state.slots() {
            Some(_) => ClientError::Exact("CLUSTERDOWN Hash slot not served".into()),
            None => ClientError::NoServer,
        }
    }

    /// The error a client gets instead of a cluster's redirect `reply`, if it is one.
    pub fn instead_of_redirect(reply: &[u8]) -> Option<ClientError> {
        crate::topology::cluster::redirect(reply)?;
        let text = reply.strip_prefix(b"-").unwrap_or(reply).trim_ascii_end();
        Some(ClientError::SlotMoved(
            String::from_utf8_lossy(text).into_owned(),
        ))
    }

    /// A command the proxy does not know, worded as Redis words it: the name, then the first
    /// 128 bytes or so of arguments, each quoted (line breaks become spaces).
    pub fn unknown_command<'a>(name: &[u8], args: impl Iterator<Item = &'a [u8]>) -> ClientError {
        let text = |b: &[u8]| String::from_utf8_lossy(b).replace(['\r', '\n'], " ");
        let mut shown = format!(
            "'{}', with args beginning with: ",
            text(&name[..name.len().min(128)])
        );
        let mut quoted = String::new();
        for arg in args {
            if quoted.len() >= 128 {
                break;
            }
            let room = 128 - quoted.len();
            quoted.push_str(&format!("'{}' ", text(&arg[..arg.len().min(room)])));
        }
        shown.push_str(&quoted);
        ClientError::UnknownCommand(shown)
    }

    /// What the error reports, for the metrics.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClientError::Backend(e) => backend_error_kind(e),
            ClientError::NoServer
            | ClientError::ShardLeft(_)
            | ClientError::NoNodeAnswered
            | ClientError::SlotMoved(_) => ErrorKind::Connection,
            ClientError::OddBackendReply(_) => ErrorKind::Backend,
            ClientError::Protocol(_) => ErrorKind::Protocol,
            ClientError::NoAuth | ClientError::WrongPass => ErrorKind::Auth,
            _ => ErrorKind::Refused,
        }
    }

    /// The RESP error code.
    fn resp_code(&self) -> &'static str {
        match self {
            ClientError::CrossShard(_)
            | ClientError::CrossShardTransaction(_)
            | ClientError::CrossShardWatch => "CROSSSLOT",
            ClientError::NoAuth => "NOAUTH",
            ClientError::WrongPass => "WRONGPASS",
            _ => "ERR",
        }
    }

    /// The memcache error line's kind: the server's fault, or the client's.
    fn memcache_code(&self) -> &'static str {
        match self {
            ClientError::NoServer
            | ClientError::Backend(_)
            | ClientError::ShardLeft(_)
            | ClientError::NoNodeAnswered
            | ClientError::TooManyClients
            | ClientError::OddBackendReply(_) => "SERVER_ERROR",
            _ => "CLIENT_ERROR",
        }
    }

    /// The error reply in the client's protocol.
    pub fn render(&self, protocol: Protocol) -> Bytes {
        let text = match self {
            ClientError::Exact(text) => Cow::Borrowed(&**text),
            _ => {
                let code = match protocol {
                    Protocol::Redis => self.resp_code(),
                    Protocol::Memcache => self.memcache_code(),
                };
                Cow::Owned(format!("{code} {self}"))
            }
        };
        let mut b = BytesMut::with_capacity(text.len() + 3);
        match protocol {
            Protocol::Redis => encode::error(&mut b, &text),
            Protocol::Memcache => {
                b.extend_from_slice(text.as_bytes());
                b.extend_from_slice(b"\r\n");
            }
        }
        b.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Failure;

    fn both(e: ClientError) -> (Bytes, Bytes) {
        (e.render(Protocol::Redis), e.render(Protocol::Memcache))
    }

    #[test]
    fn each_protocol_gets_its_own_codes() {
        let (resp, mc) = both(ClientError::NoServer);
        assert_eq!(
            resp,
            "-ERR no server is available for the key (all are ejected)\r\n"
        );
        assert_eq!(
            mc,
            "SERVER_ERROR no server is available for the key (all are ejected)\r\n"
        );
        let (resp, _) = both(ClientError::CrossShard("mget".into()));
        assert!(resp.starts_with(b"-CROSSSLOT Keys in request"));
        let (_, mc) = both(ClientError::Protocol("bad".into()));
        assert_eq!(mc, "CLIENT_ERROR Protocol error: bad\r\n");
    }

    #[test]
    fn backend_errors_name_the_node_and_the_cause() {
        let e = BackendError {
            node: "a (h:1)".into(),
            failure: Failure::Closed,
        };
        let (resp, mc) = both(e.into());
        assert_eq!(resp, "-ERR backend a (h:1) connection closed\r\n");
        assert_eq!(mc, "SERVER_ERROR backend a (h:1) connection closed\r\n");
    }

    #[test]
    fn exact_replies_are_sent_as_they_are() {
        let (resp, mc) = both(ClientError::Exact("ERROR".into()));
        assert_eq!(
            (&resp[..], &mc[..]),
            (&b"-ERROR\r\n"[..], &b"ERROR\r\n"[..])
        );
    }

    #[test]
    fn unsupported_says_why_when_there_is_a_reason() {
        let e = ClientError::Unsupported {
            command: "WAIT".into(),
            why: "shared connections".into(),
        };
        assert_eq!(
            e.render(Protocol::Redis),
            "-ERR unsupported command 'WAIT': shared connections\r\n"
        );
        let e = ClientError::Unsupported {
            command: "CLIENT KILL".into(),
            why: "".into(),
        };
        assert_eq!(
            e.render(Protocol::Redis),
            "-ERR unsupported command 'CLIENT KILL'\r\n"
        );
    }
}
