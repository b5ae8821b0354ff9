//! The client side: listeners, one session task per client, fan-out and merging.

mod error;
mod keyspace;
mod listener;
mod local;
mod memcache;
mod merge;
mod pubsub;
mod resp;
mod session;
mod transaction;

pub use listener::{bind, serve_pool};
