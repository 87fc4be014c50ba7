//! Certificates made on the spot for TLS tests, and a blocking rustls client: a CA
//! ([`TestCa`]) that issues server and client certificates ([`Identity`]), written as PEM files
//! where `serve --tls-cert/--tls-key/--tls-client-ca` reads them, and a client configuration
//! that trusts the CA and speaks ALPN `monoreactor` ([`client_config`]).
//!
//! Self-contained (rcgen on ring, rustls, rustls-pki-types, std), so any test file can
//! `#[path]` it in or use it through `support`.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use monoreactor::proto::{ErrorCode, ErrorMessage, FrameType, HEADER_LEN, Header};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// The ALPN name of the framed protocol over TLS.
pub const ALPN: &[u8] = b"monoreactor";

/// A certificate authority for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, DER.
    pub der: CertificateDer<'static>,
    /// Its certificate, PEM.
    pub pem: String,
}

/// A certificate and its key.
pub struct Identity {
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The key, PKCS#8 PEM.
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Identity {
    /// The key, for a rustls configuration.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Identity {
        self.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate named `name`.
    pub fn client(&self, name: &str) -> Identity {
        self.issue(name, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Identity {
        let names = vec![name.to_string(), "127.0.0.1".to_string()];
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Identity {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}

/// The server's files, written into `dir`: `ca.pem`, `server.pem`, `server.key`.
pub struct ServerFiles {
    /// The CA that issued the server's certificate.
    pub ca: TestCa,
    /// `--tls-cert`.
    pub cert: PathBuf,
    /// `--tls-key`.
    pub key: PathBuf,
}

impl ServerFiles {
    /// A CA and a server certificate from it, written as PEM files in `dir`.
    pub fn write(dir: &Path) -> ServerFiles {
        let ca = TestCa::new("monoreactor test CA");
        let server = ca.server();
        let cert = dir.join("server.pem");
        let key = dir.join("server.key");
        std::fs::write(&cert, &server.cert_pem).expect("write server.pem");
        std::fs::write(&key, &server.key_pem).expect("write server.key");
        std::fs::write(dir.join("ca.pem"), &ca.pem).expect("write ca.pem");
        ServerFiles { ca, cert, key }
    }

    /// The `serve` flags for these files.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

/// A client configuration trusting `ca`, offering `alpn` (none if empty), and presenting
/// `identity` if given; TLS 1.3 on ring.
pub fn client_config(
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
    identity: Option<&Identity>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).expect("trust the test CA");
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => builder
            .with_client_auth_cert(vec![identity.der.clone()], identity.key())
            .expect("client certificate"),
    };
    config.alpn_protocols = alpn.iter().map(|name| name.to_vec()).collect();
    Arc::new(config)
}

/// rustls' ring provider (deprecated by rustls for lacking post-quantum key exchange; the
/// server uses the same).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A blocking TLS stream to a server.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` over TLS with `config` (timeouts of `timeout` both ways); the handshake
/// happens at the first read or write (`handshake` forces it).
pub fn connect(addr: SocketAddr, config: Arc<ClientConfig>, timeout: Duration) -> TlsStream {
    let socket = TcpStream::connect_timeout(&addr, timeout).expect("connect");
    socket.set_read_timeout(Some(timeout)).expect("timeout");
    socket.set_write_timeout(Some(timeout)).expect("timeout");
    socket.set_nodelay(true).expect("TCP_NODELAY");
    let name = ServerName::try_from("localhost").expect("server name");
    let conn = ClientConnection::new(config, name).expect("client connection");
    StreamOwned::new(conn, socket)
}

/// Completes the handshake (the client's Finished included); the error is rustls' or the
/// socket's.
pub fn handshake(stream: &mut TlsStream) -> std::io::Result<()> {
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    // The client's Finished may still be queued.
    while stream.conn.wants_write() {
        stream.conn.write_tls(&mut stream.sock)?;
    }
    stream.sock.flush()
}

/// Reads exactly `len` bytes from `reader`.
pub fn read_exact_vec(reader: &mut impl Read, len: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0; len];
    reader.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Reads one frame (header and payload) from any stream.
#[track_caller]
pub fn recv_frame(stream: &mut impl Read) -> (Header, Vec<u8>) {
    let mut head = [0; HEADER_LEN];
    stream.read_exact(&mut head).expect("a frame header");
    let header = Header::parse(&head, u32::MAX)
        .expect("a valid header")
        .expect("a whole header");
    let mut payload = vec![0; header.len as usize];
    stream
        .read_exact(&mut payload)
        .expect("the frame's payload");
    (header, payload)
}

/// The next frame is an ERROR with `code`; returns its text.
#[track_caller]
pub fn expect_error(stream: &mut impl Read, code: ErrorCode) -> String {
    let (header, payload) = recv_frame(stream);
    assert_eq!(header.frame_type, FrameType::Error, "{header:?}");
    let message = ErrorMessage::parse(&payload).expect("ERROR parses");
    assert_eq!(message.code, code, "{}", message.text);
    message.text.to_string()
}

/// The server closed: EOF (or a reset) before any further byte.
#[track_caller]
pub fn expect_closed(stream: &mut impl Read) {
    let mut byte = [0; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
            ) => {}
        other => panic!("expected the server to close, got {other:?}"),
    }
}
