//! Wire protocols, I/O-free: parsers on byte buffers that return what they consumed, and encoders
//! for the replies the proxy makes itself.

pub mod memcache;
pub mod resp;

/// How the reply to a request sent to a backend is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// One RESP value.
    Resp,
    /// RESP values, one per command of a request that is several, taken together as one
    /// reply (a near-cache read: CLIENT CACHING YES, the read, PTTL).
    Resps(u8),
    Memcache(memcache::ReplyShape),
}

/// A backend reply that cannot be framed: the connection cannot be trusted any more.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("{0}")]
    Resp(#[from] resp::ReplyError),
    #[error("{0}")]
    Memcache(#[from] memcache::ReplyError),
    #[error("a reply nobody asked for")]
    Unsolicited,
}
