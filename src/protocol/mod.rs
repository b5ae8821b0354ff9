//! Wire protocols, I/O-free: parsers on byte buffers that return what they consumed, and encoders
//! for the replies the proxy makes itself.

pub mod memcache;
pub mod resp;

/// How the reply to a request sent to a backend is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// One RESP value.
    Resp,
    Memcache(memcache::ReplyShape),
}
