//! Certificates made here for the TLS client tests ([`Pki`]: a CA, server certificates valid,
//! expired or for another name, client certificates, written as the PEM files `serve
//! --tls-cert/--tls-key/--tls-client-ca` and the client's `--tls-*` flags read), and a
//! TLS-terminating proxy ([`TlsProxy`]) for the peers the real server cannot play: it accepts
//! TLS 1.3 (rustls, ring) with the ALPN it is told (a server that agrees on none) and may
//! demand a client certificate (the server only ever asks for one), then relays the plaintext
//! both ways to a real `monoreactor serve`. It records the BLAKE3 of each client certificate
//! presented, so a test can check which certificate the client showed.
//!
//! Every wait is bounded: the relay polls with a timeout, and a proxy stops accepting when
//! dropped.

#![allow(dead_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use monoreactor::client::tls::{self, ALPN};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, ServerConnection};

/// A certificate and its key, as DER and as the PEM text the command line reads.
#[derive(Clone)]
pub struct Leaf {
    /// The certificate.
    pub der: CertificateDer<'static>,
    /// Its PEM.
    pub cert_pem: String,
    /// The private key's PEM (PKCS#8).
    pub key_pem: String,
    key_der: Vec<u8>,
}

impl Leaf {
    /// The chain (this certificate alone) and key, for rustls.
    pub fn identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (
            vec![self.der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        )
    }

    /// BLAKE3 of the certificate's DER: what the proxy records for a client certificate.
    pub fn fingerprint(&self) -> [u8; 32] {
        *blake3::hash(&self.der).as_bytes()
    }

    /// Writes `NAME.pem` and `NAME.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write a certificate");
        std::fs::write(&key, &self.key_pem).expect("write a key");
        (cert, key)
    }
}

/// A test CA and the certificates it signs.
pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    /// The CA's certificate.
    pub ca_der: CertificateDer<'static>,
    /// Its PEM: the bundle `--tls-ca` reads.
    pub ca_pem: String,
}

impl Default for Pki {
    fn default() -> Pki {
        Pki::new()
    }
}

impl Pki {
    /// A fresh CA ("monoreactor test CA N": each its own name, so that one CA's
    /// certificates are not mistaken for another's by name).
    pub fn new() -> Pki {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let key = KeyPair::generate().expect("a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        let name = format!(
            "monoreactor test CA {}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Pki {
            ca_der: cert.der().clone(),
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses, each a SAN), signed by this CA,
    /// valid from 1975 to 4096, or for a year in 2001 if `expired`.
    pub fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let key = KeyPair::generate().expect("a key");
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, "monoreactor test");
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign a leaf");
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// The usual server certificate (the server's in the tests, the proxy's by default):
    /// `localhost` and `127.0.0.1`.
    pub fn server_leaf(&self) -> Leaf {
        self.leaf(&["localhost", "127.0.0.1"], false)
    }

    /// This CA alone, as trust anchors.
    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("the CA as a root");
        roots
    }

    /// A client configuration that trusts this CA (and presents `identity` if given).
    pub fn client_config(&self, identity: Option<&Leaf>) -> Arc<ClientConfig> {
        tls::client_config(self.roots(), identity.map(Leaf::identity)).expect("client config")
    }

    /// Writes the CA's PEM as `ca.pem` into `dir`; returns its path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write the CA");
        path
    }
}

/// Whether the proxy asks for a client certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// It does not ask.
    None,
    /// It asks; a client may present none.
    Optional,
    /// It demands one signed by the test CA.
    Required,
}

/// How a proxy terminates TLS.
pub struct ProxyOptions {
    /// The certificate it shows.
    pub leaf: Leaf,
    /// Client certificates, checked against this CA.
    pub client_auth: ClientAuth,
    /// The ALPN protocols it accepts (the server's: `monoreactor`).
    pub alpn: Vec<Vec<u8>>,
}

impl ProxyOptions {
    /// `pki`'s server certificate, no client certificate asked, ALPN `monoreactor`.
    pub fn new(pki: &Pki) -> ProxyOptions {
        ProxyOptions {
            leaf: pki.server_leaf(),
            client_auth: ClientAuth::None,
            alpn: vec![ALPN.to_vec()],
        }
    }
}

/// A TLS-terminating proxy in front of a plaintext framed port.
pub struct TlsProxy {
    addr: SocketAddr,
    fingerprints: Arc<Mutex<Vec<[u8; 32]>>>,
    stop: Arc<AtomicBool>,
}

impl TlsProxy {
    /// Listens on a free loopback port and relays each TLS connection to `upstream`.
    pub fn start(upstream: SocketAddr, options: ProxyOptions, pki: &Pki) -> TlsProxy {
        let provider = tls::provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3");
        let builder = match options.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            auth => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(pki.roots()), provider);
                let verifier = if auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(verifier.build().expect("client verifier"))
            }
        };
        let (chain, key) = options.leaf.identity();
        let mut config = builder
            .with_single_cert(chain, key)
            .expect("the server certificate");
        config.alpn_protocols = options.alpn;
        let config = Arc::new(config);

        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let fingerprints = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (Arc::clone(&fingerprints), Arc::clone(&stop));
        thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (config, seen) = (Arc::clone(&config), Arc::clone(&seen));
                thread::spawn(move || {
                    if let Err(error) = relay(client, upstream, config, &seen) {
                        eprintln!("tls proxy: {error}");
                    }
                });
            }
        });
        TlsProxy {
            addr,
            fingerprints,
            stop,
        }
    }

    /// Where clients connect (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The BLAKE3 of each client certificate presented so far, in order.
    pub fn client_fingerprints(&self) -> Vec<[u8; 32]> {
        self.fingerprints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Longest a relay waits without any event before looking again (a safety net: every read
/// and write goes on until it would block, so no edge should be missed).
const TICK: Duration = Duration::from_millis(100);

/// Relays one connection: TLS from the client, plaintext to `upstream`, both ways, until
/// both sides are done or either fails.
fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    config: Arc<ServerConfig>,
    seen: &Mutex<Vec<[u8; 32]>>,
) -> io::Result<()> {
    let mut session = ServerConnection::new(config).map_err(io::Error::other)?;
    session.set_buffer_limit(None);
    let server = TcpStream::connect(upstream)?;
    client.set_nonblocking(true)?;
    server.set_nonblocking(true)?;
    let mut poll = Poll::new()?;
    for (index, socket) in [&client, &server].into_iter().enumerate() {
        poll.registry().register(
            &mut SourceFd(&socket.as_raw_fd()),
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
    }
    let mut events = Events::with_capacity(8);
    let mut buf = vec![0; 64 << 10];
    let mut to_server: Vec<u8> = Vec::new();
    let (mut client_done, mut server_done, mut shut) = (false, false, false);
    let mut recorded = false;
    loop {
        // Client → session → plaintext for the server, the plaintext drained after each
        // read (rustls reads no more while it holds 16 KiB of it).
        while !client_done {
            match session.read_tls(&mut &client) {
                Ok(0) => client_done = true,
                Ok(_) => {
                    if let Err(error) = session.process_new_packets() {
                        // The alert rustls queued says why; then the connection closes.
                        let _ = session.write_tls(&mut &client);
                        return Err(io::Error::other(format!("handshake: {error}")));
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => client_done = true,
            }
            loop {
                match session.reader().read(&mut buf) {
                    Ok(0) => {
                        client_done = true;
                        break;
                    }
                    Ok(n) => to_server.extend_from_slice(&buf[..n]),
                    Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        client_done = true;
                        break;
                    }
                }
            }
        }
        if !recorded && !session.is_handshaking() {
            recorded = true;
            if let Some(cert) = session.peer_certificates().and_then(|chain| chain.first()) {
                seen.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(*blake3::hash(cert).as_bytes());
            }
        }
        // Server → session.
        while !server_done && !session.is_handshaking() {
            match (&server).read(&mut buf) {
                Ok(0) => {
                    server_done = true;
                    session.send_close_notify();
                }
                Ok(n) => session.writer().write_all(&buf[..n])?,
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    server_done = true;
                    session.send_close_notify();
                }
            }
        }
        // Out both ways, as far as the sockets take it.
        while session.wants_write() {
            match session.write_tls(&mut &client) {
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Ok(()),
            }
        }
        while !to_server.is_empty() {
            match (&server).write(&to_server) {
                Ok(n) => {
                    to_server.drain(..n);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    to_server.clear();
                    server_done = true;
                }
            }
        }
        if client_done && to_server.is_empty() && !shut {
            shut = true;
            let _ = server.shutdown(Shutdown::Write);
        }
        if server_done && !session.wants_write() {
            let _ = client.shutdown(Shutdown::Write);
            return Ok(());
        }
        match poll.poll(&mut events, Some(TICK)) {
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            other => other.map(drop)?,
        }
    }
}
