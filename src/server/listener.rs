//! Accepting clients: one session task per connection, tracked so shutdown can wait for them.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use socket2::{Domain, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::session::Session;
use crate::config::Address;
use crate::topology::Pool;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Binds a listening socket with the pool's backlog.
pub async fn bind(addr: &Address, backlog: u32) -> io::Result<TcpListener> {
    let resolved = tokio::net::lookup_host((addr.host.as_str(), addr.port))
        .await?
        .next()
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("{addr} does not resolve"))
        })?;
    let socket = Socket::new(Domain::for_address(resolved), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&resolved.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Accepts clients until `shutdown` fires; every session is spawned on `tracker` and told of
/// the shutdown too, so it can finish what is in flight.
pub async fn serve_pool(
    pool: Arc<Pool>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (mut stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the clients we have.
                tracing::warn!(pool = %pool.config.name, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Some(limit) = pool.config.client_connections
            && pool.metrics.client_connections.get() >= i64::from(limit)
        {
            tracker.spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        }
        let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(pool = %pool.config.name, session = id, %peer, "client connected");
        let metrics = pool.metrics.clone();
        metrics.client_connections.inc();
        metrics.client_connections_total.inc();
        let (session, replies) = Session::new(id, pool.clone());
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            session.run(stream, replies, shutdown).await;
            metrics.client_connections.dec();
        });
    }
}
