//! The client side: listeners, one session task per client, fan-out and merging.

mod error;
mod listener;
mod memcache;
mod merge;
mod outbox;
mod plan;
mod redis;
mod session;

pub use listener::{bind, serve_pool};
