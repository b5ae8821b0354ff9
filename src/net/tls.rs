//! TLS on a TCP socket, driven by the same readiness as a plain socket: rustls's connection is
//! fed by `try_read` and drained by `try_write`, so a TLS stream reads and writes where a plain
//! one does, with no poll-based wrapper and no task of its own. Also the certificates each side
//! presents and trusts, loaded from PEM files (again on every reload).

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::BytesMut;
use md5::{Digest, Md5};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

/// A TCP socket carrying TLS. The lock is the connection's own (one task uses it); it is
/// never held across an await.
#[derive(Debug)]
pub(super) struct TlsSocket {
    tcp: TcpStream,
    conn: Mutex<Connection>,
}

/// The socket as rustls reads and writes it: without waiting (`WouldBlock` when it would).
struct Nonblocking<'a>(&'a TcpStream);

impl Read for Nonblocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for Nonblocking<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsSocket {
    /// Runs the server side of the handshake on an accepted socket.
    pub(super) async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsSocket> {
        let conn = rustls::ServerConnection::new(config).map_err(tls_error)?;
        TlsSocket::handshake(tcp, conn.into()).await
    }

    /// Runs the client side of the handshake on a connected socket.
    pub(super) async fn connect(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<TlsSocket> {
        let conn = ClientConnection::new(config, name).map_err(tls_error)?;
        TlsSocket::handshake(tcp, conn.into()).await
    }

    async fn handshake(tcp: TcpStream, mut conn: Connection) -> io::Result<TlsSocket> {
        loop {
            // Whatever is to be sent (an alert too) goes before anything else happens.
            while conn.wants_write() {
                match conn.write_tls(&mut Nonblocking(&tcp)) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.writable().await?,
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
            }
            if !conn.is_handshaking() {
                break;
            }
            match conn.read_tls(&mut Nonblocking(&tcp)) {
                Ok(0) => {
                    let e = "the peer closed the connection during the TLS handshake";
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, e));
                }
                Ok(_) => {
                    if let Err(e) = conn.process_new_packets() {
                        // Tell the peer why, as far as the socket takes it now.
                        let _ = conn.write_tls(&mut Nonblocking(&tcp));
                        return Err(tls_error(e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tcp.readable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(TlsSocket {
            tcp,
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether something can be read without waiting for the socket: plaintext already
    /// decrypted, or the peer's close.
    pub(super) fn has_input(&self) -> io::Result<bool> {
        let ready = self.conn().process_new_packets().map_err(tls_error)?;
        Ok(ready.plaintext_bytes_to_read() > 0 || ready.peer_has_closed())
    }

    pub(super) fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Reads the plaintext there is, waiting for it if need be. `Ok(0)` means the peer closed.
    pub(super) async fn read_some(&self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            {
                let mut conn = self.conn();
                let state = match conn.process_new_packets() {
                    Ok(state) => state,
                    Err(e) => {
                        let _ = conn.write_tls(&mut Nonblocking(&self.tcp));
                        return Err(tls_error(e));
                    }
                };
                let n = state.plaintext_bytes_to_read();
                if n > 0 {
                    let start = buf.len();
                    buf.resize(start + n, 0);
                    let read = conn.reader().read(&mut buf[start..])?;
                    buf.truncate(start + read);
                    return Ok(read);
                }
                if state.peer_has_closed() {
                    return Ok(0);
                }
                match conn.read_tls(&mut Nonblocking(&self.tcp)) {
                    Ok(0) => return Ok(0),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            self.tcp.readable().await?;
        }
    }

    /// Sends what is encrypted and unsent, then takes what it can of `data` and sends that:
    /// how many bytes of `data` it took (0 while earlier ones are still unsent).
    pub(super) fn try_write(&self, data: &[u8]) -> io::Result<usize> {
        self.try_write_vectored(&[io::IoSlice::new(data)])
    }

    /// [`TlsSocket::try_write`] of `data` one after the other.
    pub(super) fn try_write_vectored(&self, data: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let mut conn = self.conn();
        if !send(&mut conn, &self.tcp)? || data.iter().all(|d| d.is_empty()) {
            return Ok(0);
        }
        let taken = conn.writer().write_vectored(data)?;
        send(&mut conn, &self.tcp)?;
        Ok(taken)
    }

    /// Whether bytes taken by `try_write` are still unsent.
    pub(super) fn is_holding_output(&self) -> bool {
        self.conn().wants_write()
    }

    pub(super) async fn writable(&self) -> io::Result<()> {
        self.tcp.writable().await
    }

    /// Writes all of `data` and sends it.
    pub(super) async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        loop {
            let taken = self.try_write(data)?;
            data = &data[taken..];
            if data.is_empty() && !self.is_holding_output() {
                return Ok(());
            }
            if taken == 0 || self.is_holding_output() {
                self.tcp.writable().await?;
            }
        }
    }
}

/// Sends what the connection has encrypted, as far as the socket takes it: whether all went.
fn send(conn: &mut Connection, tcp: &TcpStream) -> io::Result<bool> {
    while conn.wants_write() {
        match conn.write_tls(&mut Nonblocking(tcp)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A pool's TLS for its clients: the certificate it presents and, for mutual TLS, the CA
/// client certificates must be signed by. Equal when the files and their contents are.
#[derive(Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    digest: [u8; 16],
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Reads and checks the files.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, String> {
        let mut files = Files::default();
        let chain = files.certificates(cert)?;
        let private = files.private_key(key)?;
        let verifier = match client_ca {
            Some(ca) => WebPkiClientVerifier::builder(Arc::new(files.roots(ca)?))
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?,
            None => WebPkiClientVerifier::no_client_auth(),
        };
        let config = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, private)
            .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?;
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
            digest: files.digest(),
            config: Arc::new(config),
        })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }
}

/// A pool's TLS to its backends: the CA their certificates must be signed by, the name they
/// must carry (the server's host by default), and the pool's own certificate if they ask for
/// one. Equal when the settings, the files and their contents are.
#[derive(Clone)]
pub struct BackendTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
    digest: [u8; 16],
    config: Arc<ClientConfig>,
}

impl BackendTls {
    /// Reads and checks the files; a certificate needs its key and the other way round.
    pub fn load(
        ca: &Path,
        cert: Option<&Path>,
        key: Option<&Path>,
        server_name: Option<String>,
    ) -> Result<BackendTls, String> {
        if let Some(name) = &server_name {
            ServerName::try_from(name.as_str())
                .map_err(|e| format!("server_name '{name}': {e}"))?;
        }
        let mut files = Files::default();
        let builder = ClientConfig::builder().with_root_certificates(files.roots(ca)?);
        let config = match (cert, key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(files.certificates(cert)?, files.private_key(key)?)
                .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("cert and key go together".to_string()),
        };
        Ok(BackendTls {
            ca: ca.to_path_buf(),
            cert: cert.map(Path::to_path_buf),
            key: key.map(Path::to_path_buf),
            server_name,
            digest: files.digest(),
            config: Arc::new(config),
        })
    }

    /// How to open TLS to a backend at `host`.
    pub fn connector(&self, host: &str) -> TlsConnector {
        TlsConnector {
            config: self.config.clone(),
            server_name: self.server_name.clone().unwrap_or_else(|| host.to_string()),
        }
    }
}

/// What a backend connection needs to open TLS.
#[derive(Clone, Debug)]
pub struct TlsConnector {
    pub(super) config: Arc<ClientConfig>,
    /// The name the backend's certificate must carry (a DNS name or an IP address).
    pub server_name: String,
}

impl PartialEq for ServerTls {
    fn eq(&self, other: &ServerTls) -> bool {
        (&self.cert, &self.key, &self.client_ca, self.digest)
            == (&other.cert, &other.key, &other.client_ca, other.digest)
    }
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &BackendTls) -> bool {
        let fields = |t: &BackendTls| (t.ca.clone(), t.cert.clone(), t.key.clone(), t.digest);
        fields(self) == fields(other) && self.server_name == other.server_name
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("client_ca", &self.client_ca)
            .finish()
    }
}

impl fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendTls")
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// PEM files read for one side's TLS, and a digest of what they held (a reload that finds
/// them changed takes the new ones).
#[derive(Default)]
struct Files {
    digest: Md5,
}

impl Files {
    fn read(&mut self, path: &Path) -> Result<Vec<u8>, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.digest.update(&bytes);
        Ok(bytes)
    }

    fn certificates(&mut self, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
        let pem = self.read(path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no PEM certificate in it", path.display()));
        }
        Ok(certs)
    }

    fn private_key(&mut self, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
        let pem = self.read(path)?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn roots(&mut self, path: &Path) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        for cert in self.certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(roots)
    }

    fn digest(self) -> [u8; 16] {
        self.digest.finalize().into()
    }
}
