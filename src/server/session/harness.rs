//! A frontend under test, against a [`Context`] of its own: a pool whose nodes sit on loopback
//! ports nothing listens on, an outbox, and no socket. What the frontend answers itself is
//! read back as the client would read it.

use std::sync::Arc;

use bytes::BytesMut;

use super::{Carrier, Context, Frontend};
use crate::config::Config;
use crate::server::outbox::Outbox;
use crate::topology::{Client, Pool};

pub(in crate::server) struct Harness<F> {
    pool: Arc<Pool>,
    listing: Arc<Client>,
    out: Outbox,
    carrier: Carrier,
    pub(in crate::server) fe: F,
    /// What the frontend has not parsed yet.
    pub(in crate::server) unparsed: BytesMut,
}

impl<F: Frontend> Harness<F> {
    /// A frontend for a pool of `lines` (YAML pool keys, each ending in a newline) over two
    /// servers. Needs a Tokio runtime.
    pub(in crate::server) fn new(lines: &str) -> Harness<F> {
        let text = format!(
            "pools:\n  p:\n    listen: 127.0.0.1:6380\n{lines}    servers: [127.0.0.1:1:1 a, 127.0.0.1:2:1 b]\n"
        );
        let config = Config::parse("test.yml", &text).unwrap().pools.remove(0);
        let pool = Arc::new(Pool::for_tests(&config));
        let listing = pool.admit_client(Client::new(1, 0, None, None, -1));
        Harness {
            fe: F::new(&pool),
            out: Outbox::new(config.protocol),
            carrier: Carrier::default(),
            unparsed: BytesMut::new(),
            pool,
            listing,
        }
    }

    /// Sends `input`: what the client reads back at once (the replies the proxy makes
    /// itself, up to the first still owed by a node), and whether the connection is to close.
    pub(in crate::server) fn send(&mut self, input: &[u8]) -> (String, bool) {
        self.unparsed.extend_from_slice(input);
        let mut cx = Context {
            pool: &self.pool,
            listing: &self.listing,
            out: &mut self.out,
            carrier: &mut self.carrier,
        };
        let closing = self.fe.handle_input(&mut cx, &mut self.unparsed);
        self.out.collect_ready(self.pool.near_cache.as_deref());
        let read = String::from_utf8_lossy(self.out.output()).into_owned();
        self.out.consume_output(self.out.output().len());
        (read, closing)
    }

    /// Requests sent to nodes and not answered yet.
    pub(in crate::server) fn pending(&self) -> usize {
        self.out.pending()
    }
}
