//! The one stream type of client and backend connections (plain TCP now; TLS plugs in here),
//! with reads and writes that make as few system calls as the data allows.
//!
//! Tokio learns that a socket is drained only from a read that fails with `WouldBlock`, which
//! costs one wasted `read` per wakeup. A read that leaves room in the buffer has drained the
//! socket already, so its readiness is cleared at once. This is sound on the single-threaded
//! worker runtimes: their I/O driver runs only between task polls, so no readiness event can
//! arrive between the read and the clearing; data that comes later raises a new event.

use std::io;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The most a read buffer grows by at once.
const MAX_READ_CHUNK: usize = 64 * 1024;

/// A connection to a client or a backend node.
#[derive(Debug)]
pub struct Stream {
    tcp: TcpStream,
}

impl Stream {
    /// Connects to `host:port` with Nagle off and TCP keepalive on.
    pub async fn connect(host: &str, port: u16) -> io::Result<Stream> {
        let tcp = TcpStream::connect((host, port)).await?;
        socket2::SockRef::from(&tcp).set_keepalive(true)?;
        Stream::new(tcp)
    }

    /// Takes over a socket accepted on another thread, on the current runtime.
    pub fn from_std(socket: std::net::TcpStream) -> io::Result<Stream> {
        Stream::new(TcpStream::from_std(socket)?)
    }

    /// Wraps an accepted or connected socket, Nagle off.
    pub fn new(tcp: TcpStream) -> io::Result<Stream> {
        tcp.set_nodelay(true)?;
        Ok(Stream { tcp })
    }

    /// Waits until there is something to read (or the peer closed).
    pub async fn readable(&self) -> io::Result<()> {
        self.tcp.readable().await
    }

    /// Reads what the socket has, waiting for it if need be. `Ok(0)` means the peer closed.
    /// `chunk` is how much room to make in `buf`; it doubles each time a read fills the room.
    pub async fn read_some(&self, buf: &mut BytesMut, chunk: &mut usize) -> io::Result<usize> {
        read_some(&self.tcp, buf, chunk).await
    }

    /// Writes all of `data`: one `write` when the socket takes it, as is usual.
    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        write_all(&self.tcp, data).await
    }
}

async fn read_some(stream: &TcpStream, buf: &mut BytesMut, chunk: &mut usize) -> io::Result<usize> {
    loop {
        if buf.capacity() - buf.len() < *chunk / 4 {
            buf.reserve(*chunk);
        }
        let room = buf.capacity() - buf.len();
        match stream.try_read_buf(buf) {
            Ok(n) => {
                if n == room {
                    *chunk = (*chunk * 2).min(MAX_READ_CHUNK);
                } else if n > 0 {
                    let _ = stream.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::ErrorKind::WouldBlock.into())
                    });
                }
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.readable().await?,
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
