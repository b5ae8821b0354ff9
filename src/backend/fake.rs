//! What tests of backend connections share: a node's state and settings for a fake node on a
//! loopback socket of the test's own.

use std::sync::Arc;
use std::time::Duration;

use super::{ConnSettings, NodeShared};
use crate::config::Protocol;

/// A session's inbox, alone.
#[derive(Debug, Default)]
pub(super) struct Session(pub(super) crate::backend::Inbox);

impl crate::backend::Mailbox for Session {
    fn inbox(&self) -> &crate::backend::Inbox {
        &self.0
    }
}

/// The first completion that reaches `session`.
pub(super) async fn answered(session: &Session) -> crate::backend::Completion {
    let mut got = Vec::new();
    while got.is_empty() {
        std::future::poll_fn(|cx| session.0.poll_woken(cx)).await;
        session.0.take(&mut got);
    }
    got.remove(0)
}

/// A node's shared state and connection settings for `addr`, with the pool's `timeout`.
pub(super) fn fake_node(
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> (Arc<NodeShared>, Arc<ConnSettings>) {
    let (events, _) = tokio::sync::mpsc::unbounded_channel();
    let metrics = crate::metrics::Metrics::default().server(crate::metrics::ServerLabels {
        pool: "p".into(),
        server: "s".into(),
        role: "master".into(),
        address: addr.to_string(),
    });
    let shared = Arc::new(NodeShared::new("s (fake)".into(), metrics, events));
    let settings = Arc::new(ConnSettings {
        addr: crate::config::Address {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        protocol: Protocol::Redis,
        timeout,
        handshake: bytes::Bytes::new(),
        handshake_replies: 0,
        preconnect: false,
        max_reply_depth: 64,
        tls: None,
    });
    (shared, settings)
}
