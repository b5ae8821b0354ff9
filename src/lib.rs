//! ringproxy: a stateless Redis and memcached proxy over a twemproxy-compatible consistent-hash ring.
#![forbid(unsafe_code)]

mod keyword;

pub mod admin;
pub mod backend;
pub mod command;
pub mod config;
pub mod metrics;
pub mod net;
pub mod placement;
pub mod protocol;
pub mod server;
pub mod topology;
pub mod workers;
