//! Accepting clients: one session task per connection, tracked so shutdown can wait for them.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use socket2::{Domain, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::ClientError;
use super::memcache::Memcache;
use super::redis::Resp;
use super::session::Session;
use crate::config::{Address, Protocol};
use crate::net::Stream;
use crate::topology::Pool;
use crate::workers::Workers;

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

/// Accepts clients until `stop` fires and hands them to the workers in turn, each to the pool
/// `serving` names at the time (a reload may change it). Every session is tracked by
/// `tracker` and told by its pool when to leave, so it can finish what is in flight.
pub async fn serve(
    listener: TcpListener,
    serving: watch::Receiver<Arc<Pool>>,
    workers: Arc<Workers>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut next_worker = 0;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let pool = serving.borrow().clone();
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the clients we have.
                tracing::warn!(pool = %pool.config.name, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let protocol = pool.config.protocol;
        if let Some(limit) = pool.config.client_connections
            && pool.metrics.client_connections.get() >= i64::from(limit)
        {
            let mut stream = stream;
            tracker.spawn(async move {
                let refusal = ClientError::TooManyClients.render(protocol);
                let _ = stream.write_all(&refusal).await;
            });
            continue;
        }
        // The socket moves to the worker's own reactor.
        let Ok(stream) = stream.into_std() else {
            continue;
        };
        let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
        let worker = next_worker;
        next_worker = (next_worker + 1) % workers.len();
        tracing::debug!(pool = %pool.config.name, session = id, worker, %peer, "client connected");
        pool.metrics.client_connections.inc();
        pool.metrics.client_connections_total.inc();
        let leave = pool.admit();
        workers
            .handle(worker)
            .spawn(tracker.track_future(serve_client(id, worker, pool, stream, peer, leave)));
    }
}

/// One client's task, on its worker. The session is built here, not captured, so the task holds
/// one copy of it.
async fn serve_client(
    id: u64,
    worker: usize,
    pool: Arc<Pool>,
    stream: std::net::TcpStream,
    peer: std::net::SocketAddr,
    stop: oneshot::Receiver<()>,
) {
    if let Ok(stream) = Stream::from_std(stream) {
        match pool.config.protocol {
            Protocol::Redis => {
                let session: Session<Resp> = Session::new(id, worker, pool.clone(), peer);
                session.run(stream, stop).await;
            }
            Protocol::Memcache => {
                let session: Session<Memcache> = Session::new(id, worker, pool.clone(), peer);
                session.run(stream, stop).await;
            }
        }
    }
    pool.metrics.client_connections.dec();
}
