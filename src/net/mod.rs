//! The one stream type of client and backend connections (TCP, TLS over TCP, or a Unix socket
//! for clients), with reads and writes that make as few system calls as the data allows.
//!
//! Tokio learns that a socket is drained only from a read that fails with `WouldBlock`, which
//! costs one wasted `read` per wakeup. A read that leaves room in the buffer has drained the
//! socket already, so its readiness is cleared at once. This is sound on the single-threaded
//! worker runtimes: their I/O driver runs only between task polls, so no readiness event can
//! arrive between the read and the clearing; data that comes later raises a new event.

pub mod descriptors;
mod tls;
mod unwritten;

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{Interest, Ready};
use tokio::net::{TcpStream, UnixStream};

use tls::TlsSocket;
pub use tls::{BackendTls, ServerTls, TlsConnector};
pub use unwritten::Unwritten;

/// The most a read buffer grows by at once.
const MAX_READ_CHUNK: u32 = 64 * 1024;

/// A connection to a client or a backend node.
#[derive(Debug)]
pub struct Stream {
    socket: Socket,
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsSocket>),
}

/// What the reads and writes need of a socket, which TCP and Unix sockets both offer.
trait Io {
    fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize>;
    fn try_write(&self, data: &[u8]) -> io::Result<usize>;
    fn try_write_vectored(&self, data: &[io::IoSlice<'_>]) -> io::Result<usize>;
    fn clear_readable(&self);
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    async fn ready(&self, interest: Interest) -> io::Result<Ready>;
}

macro_rules! io_for {
    ($($t:ty),*) => {$(
        impl Io for $t {
            fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
                <$t>::try_read_buf(self, buf)
            }
            fn try_write(&self, data: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, data)
            }
            fn try_write_vectored(&self, data: &[io::IoSlice<'_>]) -> io::Result<usize> {
                <$t>::try_write_vectored(self, data)
            }
            fn clear_readable(&self) {
                let _ = self.try_io(Interest::READABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_read_ready(self, cx)
            }
            async fn ready(&self, interest: Interest) -> io::Result<Ready> {
                <$t>::ready(self, interest).await
            }
        }
    )*};
}

io_for!(TcpStream, UnixStream);

impl Stream {
    /// Connects to `host:port` with Nagle off and TCP keepalive on.
    pub async fn connect(host: &str, port: u16) -> io::Result<Stream> {
        let tcp = TcpStream::connect((host, port)).await?;
        socket2::SockRef::from(&tcp).set_keepalive(true)?;
        Stream::new(tcp)
    }

    /// Takes over a TCP socket accepted on another thread, on the current runtime.
    pub fn from_std(socket: std::net::TcpStream) -> io::Result<Stream> {
        Stream::new(TcpStream::from_std(socket)?)
    }

    /// Takes over a Unix socket accepted on another thread, on the current runtime.
    pub fn from_std_unix(socket: std::os::unix::net::UnixStream) -> io::Result<Stream> {
        Ok(Stream {
            socket: Socket::Unix(UnixStream::from_std(socket)?),
        })
    }

    /// Wraps an accepted or connected socket, Nagle off.
    pub fn new(tcp: TcpStream) -> io::Result<Stream> {
        tcp.set_nodelay(true)?;
        Ok(Stream {
            socket: Socket::Tcp(tcp),
        })
    }

    /// Runs the server side of a TLS handshake on this (TCP) connection.
    pub async fn accept_tls(self, config: Arc<rustls::ServerConfig>) -> io::Result<Stream> {
        let tls = TlsSocket::accept(self.into_tcp()?, config).await?;
        Ok(Stream {
            socket: Socket::Tls(Box::new(tls)),
        })
    }

    /// Runs the client side of a TLS handshake on this (TCP) connection.
    pub async fn connect_tls(self, connector: &TlsConnector) -> io::Result<Stream> {
        let name = ServerName::try_from(connector.server_name.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = TlsSocket::connect(self.into_tcp()?, connector.config.clone(), name).await?;
        Ok(Stream {
            socket: Socket::Tls(Box::new(tls)),
        })
    }

    fn into_tcp(self) -> io::Result<TcpStream> {
        match self.socket {
            Socket::Tcp(tcp) => Ok(tcp),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "TLS runs over a plain TCP connection",
            )),
        }
    }

    /// Ready when there is something to read (or the peer closed). It needs no future, so an
    /// idle client's task holds none; only the task that polled last is woken.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.socket {
            Socket::Tcp(s) => s.poll_read_ready(cx),
            Socket::Unix(s) => s.poll_read_ready(cx),
            Socket::Tls(s) => match s.has_input() {
                Ok(false) => s.tcp().poll_read_ready(cx),
                Ok(true) => Poll::Ready(Ok(())),
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    /// Reads what the socket has, waiting for it if need be. `Ok(0)` means the peer closed.
    /// `chunk` is how much room to make in `buf`; it doubles each time a read fills the room.
    /// (A `u32`, for it is kept by every active client.)
    pub async fn read_some(&self, buf: &mut BytesMut, chunk: &mut u32) -> io::Result<usize> {
        match &self.socket {
            Socket::Tcp(s) => read_some(s, buf, chunk).await,
            Socket::Unix(s) => read_some(s, buf, chunk).await,
            Socket::Tls(s) => s.read_some(buf).await,
        }
    }

    /// Writes what the socket takes of `data` now, without waiting: how many bytes (0 when it
    /// takes none). On TLS, bytes taken may wait unsent ([`Stream::is_holding_output`]) until
    /// the next call, which sends them first (`data` may be empty for that).
    pub fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        let written = match &self.socket {
            Socket::Tcp(s) => s.try_write(data),
            Socket::Unix(s) => s.try_write(data),
            Socket::Tls(s) => s.try_write(data),
        };
        match written {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    /// [`Stream::try_write`] of `data` one after the other, in one system call.
    pub fn try_write_vectored(&self, data: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let written = match &self.socket {
            Socket::Tcp(s) => Io::try_write_vectored(s, data),
            Socket::Unix(s) => Io::try_write_vectored(s, data),
            Socket::Tls(s) => s.try_write_vectored(data),
        };
        match written {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            other => other,
        }
    }

    /// Whether bytes `try_write` took are still unsent (only TLS holds any).
    pub fn is_holding_output(&self) -> bool {
        match &self.socket {
            Socket::Tls(s) => s.is_holding_output(),
            _ => false,
        }
    }

    /// Waits until the socket takes more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        match &self.socket {
            Socket::Tcp(s) => s.writable().await,
            Socket::Unix(s) => s.writable().await,
            Socket::Tls(s) => s.writable().await,
        }
    }

    /// Writes all of `data`: one `write` when the socket takes it, as is usual.
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        match &self.socket {
            Socket::Tcp(s) => write_all(s, data).await,
            Socket::Unix(s) => write_all(s, data).await,
            Socket::Tls(s) => s.write_all(data).await,
        }
    }
}

/// Waits through the socket's own slot for its reader's waker, not a readiness future: such a
/// future links itself into the socket's list of waiters, and out again each time a `select!`
/// drops it, and a session polls its read on every wakeup.
async fn read_some(stream: &impl Io, buf: &mut BytesMut, chunk: &mut u32) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        loop {
            let want = *chunk as usize;
            if buf.capacity() - buf.len() < want / 4 {
                // Only once there is something to read: until then the requests last taken off
                // the buffer may still hold its memory, and once they are answered it is reused
                // in place instead of allocated again.
                std::task::ready!(stream.poll_read_ready(cx))?;
                buf.reserve(want);
            }
            let room = buf.capacity() - buf.len();
            match stream.try_read_buf(buf) {
                Ok(n) => {
                    if n == room {
                        *chunk = (*chunk * 2).min(MAX_READ_CHUNK);
                    } else if n > 0 {
                        stream.clear_readable();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::task::ready!(stream.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    })
    .await
}

async fn write_all(stream: &impl Io, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                stream.ready(Interest::WRITABLE).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
