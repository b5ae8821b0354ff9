//! The admin endpoint's connections, bounded: at most [`MAX_CONNECTIONS`] at once (more wait
//! in the listen backlog, holding no descriptor of the process), each closed after [`IDLE`]
//! without a byte either way, and each counted against the descriptors kept for backend
//! connections. Idle connections to the admin port cannot exhaust the process's descriptors.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep, sleep};

use crate::net::descriptors::{self, Descriptor};

/// Admin connections served at once: load balancers and scrapers need a few; idle ones held by
/// anyone else are closed after [`IDLE`].
const MAX_CONNECTIONS: usize = 16;

/// How long an admin connection may send and receive nothing before it is closed.
const IDLE: Duration = Duration::from_secs(10);

/// The admin listener, as axum serves it.
pub(super) struct Bounded {
    listener: TcpListener,
    permits: Arc<Semaphore>,
}

impl Bounded {
    pub(super) fn new(listener: TcpListener) -> Bounded {
        Bounded {
            listener,
            permits: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

impl axum::serve::Listener for Bounded {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        loop {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                unreachable!("the semaphore is never closed");
            };
            match self.listener.accept().await {
                Ok((stream, peer)) => match descriptors::take() {
                    Some(descriptor) => {
                        let connection = Connection {
                            stream,
                            idle: Box::pin(sleep(IDLE)),
                            _permit: permit,
                            _descriptor: descriptor,
                        };
                        return (connection, peer);
                    }
                    None => tracing::debug!(
                        "admin connection from {peer} refused: the descriptors left are kept for backend connections"
                    ),
                },
                Err(e) => {
                    tracing::debug!("admin accept failed: {e}");
                    sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// One admin connection: a TCP stream that reports an error once idle too long.
pub(super) struct Connection {
    stream: TcpStream,
    idle: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
    _descriptor: Descriptor,
}

impl Connection {
    /// What `io` did: progress moves the idle deadline; waiting checks it.
    fn idle_or<T>(&mut self, io: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match io {
            Poll::Ready(done) => {
                self.idle.as_mut().reset(Instant::now() + IDLE);
                Poll::Ready(done)
            }
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "admin connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let read = Pin::new(&mut self.stream).poll_read(cx, buf);
        self.idle_or(read, cx)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.idle_or(written, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
