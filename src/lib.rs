//! ringproxy: a stateless Redis and memcached proxy over a twemproxy-compatible consistent-hash ring.
#![forbid(unsafe_code)]

pub mod config;
pub mod protocol;
pub mod ring;
