//! Why a backend request got no reply, kept as a cause rather than a string, so the client's
//! error reply, the logs and the health checks all say what happened.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::protocol::ReplyError;

/// Why a connection to a node could not be opened and made ready.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConnectError {
    #[error("{0}")]
    Io(io::ErrorKind),
    #[error("no connection within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// AUTH, SELECT or HELLO answered with an error: the server's own words.
    #[error("handshake refused: {0}")]
    Refused(String),
    /// The TLS handshake failed: rustls's words (an unknown issuer, a wrong name, …).
    #[error("TLS: {0}")]
    Tls(String),
    #[error("handshake: {0}")]
    Handshake(Box<Failure>),
}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> ConnectError {
        ConnectError::Io(e.kind())
    }
}

/// Why a request sent to a node has no reply.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Failure {
    #[error("unreachable: {0}")]
    Unreachable(ConnectError),
    #[error("timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Never written: the node took none of what was queued for it (it stopped reading) for
    /// this long. Not applied.
    #[error("not sent within {} ms: the node is not reading requests", .0.as_millis())]
    NotSent(Duration),
    /// Lost with a connection reset because the node sent nothing for this long while
    /// requests were in flight.
    #[error("connection reset: the node sent nothing for {} ms", .0.as_millis())]
    Silent(Duration),
    #[error("connection closed")]
    Closed,
    /// Writes moved to another master while the request was in flight: a reply that comes
    /// later (a stalled master resuming) could acknowledge a write that is then lost.
    #[error("connection reset: writes moved to another master while the request was in flight")]
    Replaced,
    #[error("connection failed: {0}")]
    Io(io::ErrorKind),
    #[error("sent a malformed reply: {0}")]
    BadReply(ReplyError),
    /// A health check was answered `-BUSY`: a script or function has run past the node's
    /// time limit, and the node answers nothing else until it ends or is killed.
    #[error("busy: {0}")]
    Busy(String),
    /// A health check got an answer other than the one a healthy node gives.
    #[error("answered {0:?}")]
    Unexpected(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => Failure::Closed,
            kind => Failure::Io(kind),
        }
    }
}

/// A request the backend did not answer; the client gets an error reply naming the node.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("backend {node} {failure}")]
pub struct BackendError {
    pub node: Arc<str>,
    pub failure: Failure,
}
