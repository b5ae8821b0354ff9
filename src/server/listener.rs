//! Accepting clients: one session task per connection, tracked so shutdown can wait for them.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use tokio::net::{TcpListener, UnixListener};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::ClientError;
use super::memcache::Memcache;
use super::redis::Resp;
use super::session::{Frontend, Session};
use crate::config::{Address, Listen, Protocol};
use crate::metrics::Throttle;
use crate::net::Stream;
use crate::net::descriptors::{self, Descriptor};
use crate::topology::{Client, Pool};
use crate::workers::Workers;

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// Binds a TCP listening socket with `backlog`.
pub async fn bind_tcp(addr: &Address, backlog: u32) -> io::Result<TcpListener> {
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

/// A pool's listening socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    /// A Unix socket, whose file is removed when it closes.
    Unix(UnixListener, PathBuf),
}

/// A client just accepted, and its address (none on a Unix socket).
enum Accepted {
    Tcp(std::net::TcpStream, SocketAddr),
    Unix(std::os::unix::net::UnixStream),
}

/// Binds where a pool listens, with its backlog. A Unix socket's file left by a process that
/// is gone is replaced; one a live process answers on is in use.
pub async fn bind(listen: &Listen, backlog: u32) -> io::Result<Listener> {
    let (path, mode) = match listen {
        Listen::Tcp(addr) => return bind_tcp(addr, backlog).await.map(Listener::Tcp),
        Listen::Unix { path, mode } => (path, *mode),
    };
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(io::ErrorKind::AddrInUse.into());
        }
        std::fs::remove_file(path)?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    if let Some(mode) = mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    let std: std::os::unix::net::UnixListener = socket.into();
    Ok(Listener::Unix(UnixListener::from_std(std)?, path.clone()))
}

impl Listener {
    /// Where it listens, for the log.
    pub fn local(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map_or_else(|e| e.to_string(), |a| a.to_string()),
            Listener::Unix(_, path) => path.display().to_string(),
        }
    }

    async fn accept(&self) -> io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => {
                let (stream, peer) = l.accept().await?;
                Ok(Accepted::Tcp(stream.into_std()?, peer))
            }
            Listener::Unix(l, _) => Ok(Accepted::Unix(l.accept().await?.0.into_std()?)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Accepts clients until `stop` fires and hands them to the workers in turn, each to the pool
/// `serving` names at the time (a reload may change it). Every session is tracked by
/// `tracker` and told by its pool when to leave, so it can finish what is in flight.
pub async fn serve(
    listener: Listener,
    serving: watch::Receiver<Arc<Pool>>,
    workers: Arc<Workers>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut next_worker = 0;
    // Out of file descriptors, this one is closed to accept the waiting client and tell it.
    let mut spare = std::fs::File::open("/dev/null").ok();
    let mut failures = AcceptFailures::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let pool = serving.borrow().clone();
        let protocol = pool.config.protocol;
        let client = match accepted {
            Ok(client) => client,
            Err(e) => {
                failures.note(&pool.config.name, &e);
                if is_out_of_files(&e) && spare.take().is_some() {
                    let waiting = tokio::time::timeout(SPARE_ACCEPT, listener.accept()).await;
                    if let Ok(Ok(client)) = waiting {
                        refuse(client, protocol);
                    }
                    spare = std::fs::File::open("/dev/null").ok();
                } else {
                    // Keep serving the clients we have; try again shortly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        let tls = pool.client_tls();
        let over_limit = pool
            .config
            .clients
            .max_connections
            .is_some_and(|limit| pool.metrics.client_connections.get() >= i64::from(limit));
        let descriptor = match over_limit {
            true => None,
            false => descriptors::take(),
        };
        let Some(descriptor) = descriptor else {
            if !over_limit {
                failures.note_reserve(&pool.config.name);
            }
            // A TLS client could not read a plain refusal: it is only closed.
            if tls.is_none() {
                refuse(client, protocol);
            }
            continue;
        };
        let id = NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed);
        let worker = next_worker;
        next_worker = (next_worker + 1) % workers.len();
        tracing::debug!(pool = %pool.config.name, session = id, worker, peer = ?client.peer(), "client connected");
        let listing = pool.admit_client(client.listing(id, worker));
        let handle = workers.handle(worker);
        let admitted = Admitted {
            pool,
            descriptor: Some(descriptor),
            listing: Some(listing),
        };
        match protocol {
            Protocol::Redis => start::<Resp>(handle, &tracker, admitted, client, tls),
            Protocol::Memcache => start::<Memcache>(handle, &tracker, admitted, client, tls),
        }
    }
}

/// How long accepting with the spare descriptor may wait for the client that was waiting.
const SPARE_ACCEPT: Duration = Duration::from_millis(10);

fn is_out_of_files(e: &io::Error) -> bool {
    // EMFILE (the process's limit) and ENFILE (the system's).
    matches!(e.raw_os_error(), Some(24 | 23))
}

/// Tells a client there is no room for it (`-ERR max number of clients reached`, or memcache's
/// `SERVER_ERROR`) and closes it at once, freeing its descriptor: the short reply fits in a new
/// socket's buffer.
fn refuse(client: Accepted, protocol: Protocol) {
    use std::io::Write;
    let refusal = ClientError::TooManyClients.render(protocol);
    let _ = match client {
        Accepted::Tcp(mut socket, _) => socket.write(&refusal),
        Accepted::Unix(mut socket) => socket.write(&refusal),
    };
}

/// Failed accepts, logged at most once a second with how many there were.
#[derive(Default)]
struct AcceptFailures(Throttle);

impl AcceptFailures {
    fn note(&mut self, pool: &str, e: &io::Error) {
        if let Some(n) = self.0.note(std::time::Instant::now()) {
            tracing::warn!(pool = %pool, "{n} failed accepts in the last second: {e}");
        }
    }

    /// A client refused to keep the descriptors reserved for backend connections.
    fn note_reserve(&mut self, pool: &str) {
        if let Some(n) = self.0.note(std::time::Instant::now()) {
            tracing::warn!(pool = %pool, "{n} clients refused in the last second: the descriptors left are kept for backend connections");
        }
    }
}

impl Accepted {
    /// The client as the pool lists it.
    fn listing(&self, id: u64, worker: usize) -> Client {
        use std::os::fd::AsRawFd;
        match self {
            Accepted::Tcp(socket, peer) => Client::new(
                id,
                worker,
                Some(*peer),
                socket.local_addr().ok(),
                socket.as_raw_fd(),
            ),
            Accepted::Unix(socket) => Client::new(id, worker, None, None, socket.as_raw_fd()),
        }
    }

    fn peer(&self) -> Option<SocketAddr> {
        match self {
            Accepted::Tcp(_, peer) => Some(*peer),
            Accepted::Unix(_) => None,
        }
    }

    /// The client's socket, on the current runtime's reactor.
    fn into_stream(self) -> io::Result<Stream> {
        match self {
            Accepted::Tcp(socket, _) => Stream::from_std(socket),
            Accepted::Unix(socket) => Stream::from_std_unix(socket),
        }
    }
}

/// A client in the pool's list on its way to a session, on the worker it was given to. One
/// that gets none (its socket failed, or the TLS handshake) is taken out of the list.
struct Admitted {
    pool: Arc<Pool>,
    descriptor: Option<Descriptor>,
    /// Taken by the session, which takes the client out of the list when it ends.
    listing: Option<Arc<Client>>,
}

impl Admitted {
    fn into_session<F: Frontend>(mut self, stream: Stream) -> Session<F> {
        let listing = self.listing.take().expect("admitted once");
        let descriptor = self.descriptor.take().expect("admitted once");
        Session::new(self.pool.clone(), listing, stream, descriptor)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(listing) = &self.listing {
            self.pool.forget_client(listing.id);
        }
    }
}

/// An idle client's task is its session and two words. A session of its stream (40 bytes in
/// release builds, more in debug ones) and at most 80 bytes more keeps the task within 144
/// bytes, so that Tokio's task cell for it takes 256 bytes, not 384 (an idle client's memory is
/// measured in `tests/allocations.rs`).
const _: () = {
    let most = size_of::<Stream>() + 80;
    assert!(size_of::<Session<Resp>>() <= most && size_of::<Session<Memcache>>() <= most);
};

/// Serves a client on worker `handle`, after a TLS handshake if the pool serves TLS. The
/// handshake has a task of its own, so that the session's task, which lives as long as the
/// client, holds nothing of it.
fn start<F: Frontend + Send + 'static>(
    handle: &Handle,
    tracker: &TaskTracker,
    admitted: Admitted,
    client: Accepted,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let peer = client.peer();
    let stream = {
        // Registered with the worker's reactor, whose thread serves the client.
        let _worker = handle.enter();
        client.into_stream()
    };
    let Ok(stream) = stream else {
        return;
    };
    match tls {
        None => _ = handle.spawn(tracker.track_future(admitted.into_session::<F>(stream).serve())),
        Some(tls) => {
            let tracker = tracker.clone();
            handle.spawn(tracker.clone().track_future(async move {
                if let Some(stream) = accept_tls(stream, tls, &admitted.pool, peer).await {
                    let session = admitted.into_session::<F>(stream);
                    tokio::spawn(tracker.track_future(session.serve()));
                }
            }));
        }
    }
}

/// The client's stream once its TLS handshake is done; `None` if it failed (counted and
/// logged) or took longer than a request may.
async fn accept_tls(
    stream: Stream,
    tls: Arc<rustls::ServerConfig>,
    pool: &Pool,
    peer: Option<SocketAddr>,
) -> Option<Stream> {
    let bound = pool
        .config
        .clients
        .request_timeout
        .unwrap_or(HANDSHAKE_TIMEOUT);
    let secure = tokio::time::timeout(bound, stream.accept_tls(tls))
        .await
        .unwrap_or_else(|_| {
            let why = format!("not done within {} ms", bound.as_millis());
            Err(io::Error::new(io::ErrorKind::TimedOut, why))
        });
    match secure {
        Ok(secure) => Some(secure),
        // It left (a TCP health check does): nothing went wrong.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::debug!(pool = %pool.config.name, ?peer, "{e}");
            None
        }
        Err(e) => {
            pool.metrics.tls_failed(&pool.config.name, peer, &e);
            None
        }
    }
}

/// How long a TLS handshake may take when requests have no bound.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
