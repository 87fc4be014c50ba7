//! TLS for the blocking clients: where a client connects and how ([`Target`]), the rustls
//! session under a [`Client`](super::Client) ([`Transport`]), the handshake and its failures
//! in words a user can act on ([`TlsFailure`]), and the configurations a client needs
//! ([`client_config`], [`insecure_config`]).
//!
//! The framed protocol is the same inside TLS 1.3 (rustls, ring), with ALPN [`ALPN`]. A
//! [`Target`] without TLS is the plain `TcpStream` it always was; one with TLS runs the
//! handshake in [`Client::connect_raw`](super::Client::connect_raw), so that every way a
//! handshake fails (an unknown CA, an expired certificate, the wrong name, a plaintext port)
//! is reported there, once, before any frame is sent.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct,
    RootCertStore, SignatureScheme,
};

use super::ClientError;

/// The ALPN protocol name the framed protocol is offered under inside TLS: the server's.
pub use crate::transport::ALPN;

/// Prefix of an address that asks for TLS (`tls://HOST:PORT`), as an alternative to `--tls`.
pub const TLS_SCHEME: &str = "tls://";

/// Where a client connects, and whether over TLS: `HOST:PORT` (resolved at connect time) and,
/// for TLS, the rustls configuration and the name to verify the certificate against (by
/// default the address's host; an IP address is checked against the certificate's IP SANs).
///
/// `&str`, `&String` and `SocketAddr` convert into a plain target, so every `connect` that
/// took an address takes one as before; a test switches to TLS by passing a
/// [`Target::tls`] instead. (An owned `String` does not convert: a caller passing
/// `&text` then needs no borrow lifted, and `Target::plain(text)` says what it is.)
#[derive(Clone)]
pub struct Target {
    addr: String,
    tls: Option<Arc<ClientConfig>>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Target {
    /// A plaintext framed connection to `addr` (`HOST:PORT`).
    pub fn plain(addr: impl Into<String>) -> Target {
        Target {
            addr: addr.into(),
            tls: None,
            server_name: None,
        }
    }

    /// A TLS connection to `addr`, with `config` (see [`client_config`]; its ALPN list is
    /// replaced by [`ALPN`] at connect time if it has none).
    pub fn tls(addr: impl Into<String>, config: Arc<ClientConfig>) -> Target {
        Target {
            addr: addr.into(),
            tls: Some(config),
            server_name: None,
        }
    }

    /// The same target with TLS on (`Some`) or off.
    pub fn with_tls(mut self, config: Option<Arc<ClientConfig>>) -> Target {
        self.tls = config;
        self
    }

    /// Verifies the server's certificate against `name` instead of the address's host (for
    /// an address that is not the name in the certificate: a tunnel, a raw IP).
    pub fn with_server_name(mut self, name: ServerName<'static>) -> Target {
        self.server_name = Some(name);
        self
    }

    /// `HOST:PORT`, as given (without `tls://`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether the connection is made over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS configuration, if any.
    pub fn tls_config(&self) -> Option<&Arc<ClientConfig>> {
        self.tls.as_ref()
    }

    /// The name the certificate must carry: the one given, else the address's host
    /// (`[::1]:7878` → `::1`, an IP address).
    pub fn server_name(&self) -> Result<ServerName<'static>, ClientError> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = host_of(&self.addr);
        ServerName::try_from(host.to_string()).map_err(|_| ClientError::Tls {
            addr: self.addr.clone(),
            failure: TlsFailure::BadName(host.to_string()),
        })
    }
}

/// `tls://HOST:PORT` → (`true`, `HOST:PORT`); anything else → (`false`, as it is).
pub fn split_scheme(text: &str) -> (bool, &str) {
    match text.strip_prefix(TLS_SCHEME) {
        Some(rest) => (true, rest),
        None => (false, text),
    }
}

/// The host of `HOST:PORT` (brackets of an IPv6 literal removed).
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|byte| byte.is_ascii_digit()) => host,
        _ => addr,
    };
    host.strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host)
}

impl From<&str> for Target {
    fn from(addr: &str) -> Target {
        Target::plain(addr)
    }
}

impl From<&String> for Target {
    fn from(addr: &String) -> Target {
        Target::plain(addr.clone())
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Target {
        Target::plain(addr.to_string())
    }
}

impl From<&Target> for Target {
    fn from(target: &Target) -> Target {
        target.clone()
    }
}

/// The ring provider: the one crypto provider this crate builds with, the server's
/// ([`tls_provider`](crate::tls_provider) says why ring).
pub use crate::transport::tls_provider as provider;

/// A client certificate chain and its key, presented when the server asks for one.
pub type Identity = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// A TLS 1.3 client configuration that trusts `roots`, offers [`ALPN`], and presents
/// `identity` if given.
pub fn client_config(
    roots: RootCertStore,
    identity: Option<Identity>,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A configuration that accepts any server certificate: for tests only (`--tls-insecure`).
/// The handshake's signatures are still checked against the certificate presented, so the
/// session is encrypted to whoever holds that key, but nothing says who that is.
pub fn insecure_config(identity: Option<Identity>) -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = provider();
    let verifier = Arc::new(AnyCertificate {
        algorithms: provider.signature_verification_algorithms,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// The verifier behind [`insecure_config`].
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a TLS connection failed, in the words a user can act on.
#[derive(Debug)]
pub enum TlsFailure {
    /// The server's certificate chain does not lead to a trusted CA.
    UnknownIssuer,
    /// The server's certificate has expired.
    Expired,
    /// The server presented a CA certificate (basicConstraints CA:TRUE) as its own, as
    /// `openssl req -x509` makes by default: a server certificate must say CA:FALSE.
    CaAsServerCertificate,
    /// The server's certificate is not valid yet (or this machine's clock is behind).
    NotYetValid,
    /// The server's certificate does not name the host connected to.
    WrongName {
        /// The name checked.
        expected: String,
        /// The names the certificate carries, if rustls said.
        presented: Vec<String>,
    },
    /// The host is neither a DNS name nor an IP address, so no certificate can match it.
    BadName(String),
    /// The server answered the TLS ClientHello with bytes that are not TLS: a plaintext port.
    Plaintext,
    /// A plaintext client was answered with a TLS record: the port speaks TLS.
    ServerSpeaksTls,
    /// The server does not speak the framed protocol's ALPN (`monoreactor`).
    NoAlpn,
    /// The server demands a client certificate and none was presented.
    CertificateRequired,
    /// The server refused the client certificate presented.
    CertificateRefused(AlertDescription),
    /// The server closed the connection during the handshake.
    Closed,
    /// Anything else rustls reported.
    Other(rustls::Error),
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsFailure::UnknownIssuer => {
                f.write_str("the server's certificate is not signed by a CA you trust (--tls-ca)")
            }
            TlsFailure::Expired => f.write_str("the server's certificate has expired"),
            TlsFailure::CaAsServerCertificate => f.write_str(
                "the server's certificate is a CA certificate (basicConstraints CA:TRUE), not a \
                 server certificate: make it with CA:FALSE (openssl req -x509 ... -addext \
                 basicConstraints=critical,CA:FALSE)",
            ),
            TlsFailure::NotYetValid => f.write_str(
                "the server's certificate is not valid yet (is this machine's clock right?)",
            ),
            TlsFailure::WrongName {
                expected,
                presented,
            } if presented.is_empty() => {
                write!(f, "the server's certificate is not valid for {expected}")
            }
            TlsFailure::WrongName {
                expected,
                presented,
            } => write!(
                f,
                "the server's certificate is not valid for {expected} (it names {})",
                presented.join(", ")
            ),
            TlsFailure::BadName(host) => write!(
                f,
                "`{host}` is neither a DNS name nor an IP address a certificate can name"
            ),
            TlsFailure::Plaintext => {
                f.write_str("answered in plaintext: it does not speak TLS on this port (drop --tls)")
            }
            TlsFailure::ServerSpeaksTls => f.write_str("the server speaks TLS on this port: add --tls"),
            TlsFailure::NoAlpn => f.write_str(
                "the server does not offer the monoreactor protocol over TLS (no ALPN agreement): is it a monoreactor TLS port?",
            ),
            TlsFailure::CertificateRequired => f.write_str(
                "the server requires a client certificate (--tls-cert and --tls-key)",
            ),
            TlsFailure::CertificateRefused(alert) => write!(
                f,
                "the server refused the client certificate (--tls-cert): {alert:?}"
            ),
            TlsFailure::Closed => f.write_str("closed the connection during the TLS handshake"),
            TlsFailure::Other(error) => write!(f, "TLS failed: {error}"),
        }
    }
}

impl TlsFailure {
    /// The failure a rustls error stands for (`expected`: the name checked).
    pub fn from_rustls(error: rustls::Error, expected: &str) -> TlsFailure {
        use rustls::Error as E;
        match error {
            // A bad signature on the chain is a certificate naming an issuer you trust that
            // did not sign it (another CA of the same name, a forgery): as far as the user
            // can act on it, the same as an unknown issuer.
            E::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            ) => TlsFailure::UnknownIssuer,
            E::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => TlsFailure::Expired,
            E::InvalidCertificate(CertificateError::Other(other))
                if matches!(
                    other.0.downcast_ref::<webpki::Error>(),
                    Some(webpki::Error::CaUsedAsEndEntity)
                ) =>
            {
                TlsFailure::CaAsServerCertificate
            }
            E::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            ) => TlsFailure::NotYetValid,
            E::InvalidCertificate(CertificateError::NotValidForName) => TlsFailure::WrongName {
                expected: expected.to_string(),
                presented: Vec::new(),
            },
            E::InvalidCertificate(CertificateError::NotValidForNameContext {
                presented, ..
            }) => TlsFailure::WrongName {
                expected: expected.to_string(),
                presented,
            },
            E::NoApplicationProtocol
            | E::AlertReceived(AlertDescription::NoApplicationProtocol) => TlsFailure::NoAlpn,
            E::AlertReceived(AlertDescription::CertificateRequired) => {
                TlsFailure::CertificateRequired
            }
            E::AlertReceived(
                alert @ (AlertDescription::BadCertificate
                | AlertDescription::UnknownCA
                | AlertDescription::CertificateExpired
                | AlertDescription::CertificateRevoked
                | AlertDescription::CertificateUnknown
                | AlertDescription::UnsupportedCertificate
                | AlertDescription::AccessDenied),
            ) => TlsFailure::CertificateRefused(alert),
            other => TlsFailure::Other(other),
        }
    }
}

/// Whether `bytes` (at least the first of them) can start a TLS record: a content type from
/// 20 to 24 and a major version of 3.
fn looks_like_tls(bytes: &[u8]) -> bool {
    match bytes {
        [] => true,
        [kind] => (20..=24).contains(kind),
        [kind, major, ..] => (20..=24).contains(kind) && *major == 3,
    }
}

/// Whether an answer to a plaintext HELLO is a TLS record (an alert, or a handshake record),
/// which only a TLS server sends.
pub fn is_tls_record(answer: &[u8]) -> bool {
    matches!(answer, [0x15 | 0x16, 0x03, ..])
}

/// Bytes asked of the kernel per read under a TLS session. rustls reads 4 KiB at a time from
/// what it is given; reading the socket in larger pieces here keeps a download to a few
/// system calls per MiB instead of 256.
const SOCKET_READ: usize = 256 << 10;

/// The socket under a TLS session: reads are buffered (256 KiB at a time), writes go straight
/// through (rustls hands over whole records, vectored).
pub struct Socket {
    tcp: TcpStream,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("tcp", &self.tcp)
            .field("buffered", &(self.end - self.start))
            .finish()
    }
}

impl Socket {
    fn new(tcp: TcpStream) -> Socket {
        Socket {
            tcp,
            buffer: vec![0; SOCKET_READ].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// The TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Gives up the buffer (and whatever it held), returning the socket.
    pub fn into_tcp(self) -> TcpStream {
        self.tcp
    }

    /// Whether bytes read from the kernel wait here.
    fn buffered(&self) -> bool {
        self.start < self.end
    }

    /// What the peer sent first, reading once if nothing is buffered (empty: end of file).
    fn first_bytes(&mut self) -> io::Result<&[u8]> {
        if !self.buffered() {
            let n = loop {
                match self.tcp.read(&mut self.buffer) {
                    Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            self.start = 0;
            self.end = n;
        }
        Ok(&self.buffer[self.start..self.end])
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.buffered() {
            if buf.len() >= self.buffer.len() {
                return self.tcp.read(buf);
            }
            self.end = self.tcp.read(&mut self.buffer)?;
            self.start = 0;
        }
        let n = (self.end - self.start).min(buf.len());
        buf[..n].copy_from_slice(&self.buffer[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.tcp.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A TLS session over its socket.
pub type TlsStream = rustls::StreamOwned<ClientConnection, Socket>;

/// What a [`Client`](super::Client) reads and writes: the socket itself, or a TLS session
/// over it.
#[derive(Debug)]
pub enum Transport {
    /// Plaintext: reads and writes are the socket's.
    Plain(TcpStream),
    /// TLS: the session encrypts and decrypts, its socket carries records.
    Tls(Box<TlsStream>),
}

impl Transport {
    /// The TCP socket (for timeouts, addresses, socket options; not for I/O under TLS).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.sock.tcp(),
        }
    }

    /// Whether this is a TLS session.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Whether bytes (or end of file, or an error) wait to be read without blocking. Under
    /// TLS, records that carry no data (a session ticket, a key update) do not count: they
    /// are handed to the session here, so that a read does not then wait for a frame that is
    /// not coming.
    pub fn input_pending(&mut self) -> bool {
        let tls = match self {
            Transport::Plain(tcp) => return socket_readable(tcp),
            Transport::Tls(tls) => tls,
        };
        loop {
            match tls.conn.process_new_packets() {
                Err(_) => return true,
                Ok(state) if state.plaintext_bytes_to_read() > 0 || state.peer_has_closed() => {
                    return true;
                }
                Ok(_) => {}
            }
            if !tls.sock.buffered() && !socket_readable(tls.sock.tcp()) {
                return false;
            }
            // Bytes are there, so this read does not block.
            match tls.conn.read_tls(&mut tls.sock) {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }
}

/// Whether a read of `tcp` would return at once (bytes, end of file or an error): `MSG_PEEK`.
fn socket_readable(tcp: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    let peeked =
        socket2::SockRef::from(tcp).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT);
    match peeked {
        Ok(_) => true,
        Err(error) => !matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted),
    }
}

/// The nonblocking half of a [`Transport`], for a caller that drives the connection from a
/// poll ([`exec`](super::exec)): reads and writes go on until they would block.
impl Transport {
    /// Reads what the socket has into `into`, until it would block. Returns whether anything
    /// arrived (bytes or records: worth another look before sleeping) and whether the peer
    /// closed.
    pub fn read_available(&mut self, into: &mut Vec<u8>) -> io::Result<(bool, bool)> {
        let mut chunk = [0; 64 << 10];
        let mut progress = false;
        match self {
            Transport::Plain(tcp) => loop {
                match tcp.read(&mut chunk) {
                    Ok(0) => return Ok((true, true)),
                    Ok(n) => {
                        into.extend_from_slice(&chunk[..n]);
                        progress = true;
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {
                        return Ok((progress, false));
                    }
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            },
            Transport::Tls(tls) => loop {
                // Plaintext first: rustls refuses to read more while its buffer is full.
                loop {
                    match tls.conn.reader().read(&mut chunk) {
                        // close_notify: the peer is done.
                        Ok(0) => return Ok((true, true)),
                        Ok(n) => {
                            into.extend_from_slice(&chunk[..n]);
                            progress = true;
                        }
                        Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                        // A TCP end without close_notify: what came before it still counts.
                        Err(error) if error.kind() == ErrorKind::UnexpectedEof => {
                            return Ok((true, true));
                        }
                        Err(error) => return Err(error),
                    }
                }
                match tls.conn.read_tls(&mut tls.sock) {
                    Ok(0) => {
                        tls.conn
                            .process_new_packets()
                            .map_err(|error| io::Error::new(ErrorKind::InvalidData, error))?;
                        // The loop drains the plaintext left, then sees the end.
                        progress = true;
                    }
                    Ok(_) => {
                        progress = true;
                        tls.conn
                            .process_new_packets()
                            .map_err(|error| io::Error::new(ErrorKind::InvalidData, error))?;
                    }
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {
                        return Ok((progress, false));
                    }
                    Err(error) if error.kind() == ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            },
        }
    }

    /// Writes `out[*sent..]` until done or the socket would block, advancing `sent`. Under
    /// TLS the session takes the bytes (encrypting them into records) as its buffer allows,
    /// and the records go out as the socket takes them; records still held count as unsent
    /// work for the next call, even when `out` is all taken.
    pub fn write_available(&mut self, out: &[u8], sent: &mut usize) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => {
                while *sent < out.len() {
                    match tcp.write(&out[*sent..]) {
                        Ok(0) => return Err(ErrorKind::WriteZero.into()),
                        Ok(n) => *sent += n,
                        Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                        Err(error) if error.kind() == ErrorKind::Interrupted => {}
                        Err(error) => return Err(error),
                    }
                }
                Ok(())
            }
            Transport::Tls(tls) => loop {
                let mut moved = 0;
                if *sent < out.len() {
                    moved = tls.conn.writer().write(&out[*sent..])?;
                    *sent += moved;
                }
                if tls.conn.wants_write() {
                    match tls.conn.write_tls(&mut tls.sock) {
                        Ok(_) => {}
                        Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                        Err(error) if error.kind() == ErrorKind::Interrupted => {}
                        Err(error) => return Err(error),
                    }
                    continue;
                }
                // All sent, or a session that takes nothing more and has nothing to send
                // (its buffer full before a handshake ends, which cannot happen after one).
                if *sent == out.len() || moved == 0 {
                    return Ok(());
                }
            },
        }
    }

    /// Under TLS, sends close_notify (best effort, without blocking for long: the socket's
    /// own state decides); nothing for a plain socket, whose FIN says the same.
    pub fn close_notify(&mut self) {
        if let Transport::Tls(tls) = self {
            tls.conn.send_close_notify();
            while tls.conn.wants_write() {
                if tls.conn.write_tls(&mut tls.sock).is_err() {
                    break;
                }
            }
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buf),
            Transport::Tls(tls) => tls.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.write(buf),
            Transport::Tls(tls) => tls.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.write_all(buf),
            Transport::Tls(tls) => {
                tls.write_all(buf)?;
                // rustls keeps what the socket did not take yet; a frame must be on its way
                // when this returns, as it is with a plain socket.
                tls.flush()
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(tcp) => tcp.flush(),
            Transport::Tls(tls) => tls.flush(),
        }
    }
}

/// The TLS error (if any) inside an I/O error from a session.
pub fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Runs the TLS handshake over `tcp` for `target`; the connection's timeouts bound each read
/// and write. Returns the session ready for frames, or the failure in words
/// ([`ClientError::Tls`]).
pub fn handshake(
    tcp: TcpStream,
    target: &Target,
    config: &Arc<ClientConfig>,
) -> Result<Transport, ClientError> {
    let addr = target.addr().to_string();
    let fail = |failure| ClientError::Tls {
        addr: addr.clone(),
        failure,
    };
    let name = target.server_name()?;
    let expected = name.to_str().into_owned();
    let config = if config.alpn_protocols.is_empty() {
        let mut with_alpn = ClientConfig::clone(config);
        with_alpn.alpn_protocols = vec![ALPN.to_vec()];
        Arc::new(with_alpn)
    } else {
        Arc::clone(config)
    };
    let mut conn =
        ClientConnection::new(config, name).map_err(|error| fail(TlsFailure::Other(error)))?;
    let mut socket = Socket::new(tcp);
    let mut first_answer = true;
    while conn.is_handshaking() {
        while conn.wants_write() {
            conn.write_tls(&mut socket)?;
        }
        if !conn.is_handshaking() {
            break;
        }
        if first_answer {
            first_answer = false;
            // The server's first bytes say whether it speaks TLS at all; rustls would only
            // call them a corrupt message.
            let first = socket.first_bytes()?;
            if first.is_empty() {
                return Err(fail(TlsFailure::Closed));
            }
            if !looks_like_tls(first) {
                return Err(fail(TlsFailure::Plaintext));
            }
        }
        match conn.read_tls(&mut socket) {
            Ok(0) => return Err(fail(TlsFailure::Closed)),
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(ClientError::Io(error)),
        }
        if let Err(error) = conn.process_new_packets() {
            // The alert rustls queued tells the server why; best effort.
            let _ = conn.write_tls(&mut socket);
            return Err(fail(TlsFailure::from_rustls(error, &expected)));
        }
    }
    while conn.wants_write() {
        conn.write_tls(&mut socket)?;
    }
    if conn.alpn_protocol() != Some(ALPN) {
        return Err(fail(TlsFailure::NoAlpn));
    }
    Ok(Transport::Tls(Box::new(rustls::StreamOwned::new(
        conn, socket,
    ))))
}

/// How long [`Client::hello`](super::Client::hello) waited, for a silent peer's message:
/// the read timeout of the socket.
pub(crate) fn read_timeout(transport: &Transport) -> Duration {
    transport
        .tcp()
        .read_timeout()
        .ok()
        .flatten()
        .unwrap_or_default()
}
