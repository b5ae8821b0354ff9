//! The client side: listeners, one session task per client, its outbox, and the Redis and
//! memcache frontends that route requests into plans and merge fanned-out replies.

mod error;
mod listener;
mod memcache;
mod merge;
mod near_cache;
mod outbox;
mod plan;
mod redis;
mod session;
mod timing;

pub use listener::{Listener, bind, bind_tcp, serve};
