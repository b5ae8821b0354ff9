//! TLS for tests: a CA of the test's own with certificates for servers and clients, and raw
//! TLS client connections.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::{Raw, TempDir, connect_tcp};

/// A raw client connection over TLS.
pub type TlsRaw = Raw<StreamOwned<ClientConnection, TcpStream>>;

/// A CA and, signed by it, a certificate for `localhost` and `127.0.0.1` (for servers) and
/// one for a client, as PEM files.
pub struct Certs {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub dir: TempDir,
}

impl Certs {
    /// A new CA (`name`, its common name) and its certificates.
    pub fn new(name: &str) -> Certs {
        let dir = TempDir::new("certs");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: Vec<String>, file: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(DnType::CommonName, format!("{name} {file}"));
            let cert = params.signed_by(&key, &issuer).unwrap();
            (
                dir.write(&format!("{file}.pem"), &cert.pem()),
                dir.write(&format!("{file}.key"), &key.serialize_pem()),
            )
        };
        let (server_cert, server_key) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()], "server");
        let (client_cert, client_key) = leaf(vec!["client".into()], "client");
        Certs {
            ca: dir.write("ca.pem", &ca_pem),
            server_cert,
            server_key,
            client_cert,
            client_key,
            dir,
        }
    }

    /// A client trusting this CA, presenting this CA's client certificate if `with_cert`.
    pub fn client_config(&self, with_cert: bool) -> Arc<ClientConfig> {
        self.client_config_with(with_cert.then_some(self))
    }

    /// A client trusting this CA, presenting `identity`'s client certificate if any.
    pub fn client_config_with(&self, identity: Option<&Certs>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = ClientConfig::builder().with_root_certificates(roots);
        Arc::new(match identity {
            Some(id) => {
                let chain = CertificateDer::pem_file_iter(&id.client_cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect();
                let key = PrivateKeyDer::from_pem_file(&id.client_key).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        })
    }
}

/// Connects to a loopback port and runs the TLS handshake (for `localhost`): the connection,
/// or why the handshake failed.
pub fn connect(port: u16, config: Arc<ClientConfig>) -> Result<TlsRaw, std::io::Error> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config, name).unwrap();
    let mut stream = StreamOwned::new(conn, connect_tcp(port));
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(Raw { stream })
}
