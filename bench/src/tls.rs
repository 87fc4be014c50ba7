//! TLS for the workloads that speak plain echo inside it (raw echo, connect, idle): the
//! configuration a run offers ([`BenchTls`]: ALPN, resumption), a blocking handshake for the
//! runs that hold connections rather than load them ([`connect_blocking`]), and rustls errors
//! carried in an `io::Error` so that reports can name them ([`tls_error`]).
//!
//! Raw bytes inside TLS are what a TLS-terminating proxy in front of an echo server carries
//! (nginx's `stream { server { listen ... ssl; proxy_pass ...; } }`), so these workloads
//! measure such a proxy with the same generator as the framed TLS port.

use std::fmt;
use std::io::{self, ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use monoreactor::client::Target;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// TLS for a run: the client configuration, and the name the server's certificate must carry
/// (the host the user typed, which a resolved address no longer says).
#[derive(Clone, Debug)]
pub struct BenchTls {
    /// The rustls client configuration (trust, ALPN, client certificate).
    pub config: Arc<ClientConfig>,
    /// The name checked in the server's certificate.
    pub server_name: ServerName<'static>,
}

impl BenchTls {
    /// The same TLS offering `protocols` by ALPN, in order (none if empty), instead of what
    /// the configuration offered. A raw echo needs none; the framed port wants `monoreactor`
    /// or nothing, and refuses any other.
    pub fn with_alpn(&self, protocols: Vec<Vec<u8>>) -> BenchTls {
        self.adjusted(|config| config.alpn_protocols = protocols)
    }

    /// The same TLS never resuming a session: no ticket kept, no PSK offered, so every
    /// handshake is a full one (key exchange and certificate signature on both sides).
    pub fn without_resumption(&self) -> BenchTls {
        self.adjusted(|config| config.resumption = Resumption::disabled())
    }

    /// A copy with its configuration changed by `change`.
    fn adjusted(&self, change: impl FnOnce(&mut ClientConfig)) -> BenchTls {
        let mut config = ClientConfig::clone(&self.config);
        change(&mut config);
        BenchTls {
            config: Arc::new(config),
            server_name: self.server_name.clone(),
        }
    }

    /// A target for the library's clients: `addr` over this TLS.
    pub fn target(&self, addr: impl Into<String>) -> Target {
        Target::tls(addr, Arc::clone(&self.config)).with_server_name(self.server_name.clone())
    }

    /// A new client session for one connection.
    pub fn session(&self) -> io::Result<ClientConnection> {
        ClientConnection::new(Arc::clone(&self.config), self.server_name.clone()).map_err(tls_error)
    }
}

/// A rustls error as an `io::Error` (`InvalidData`, the rustls error inside, as rustls'
/// own `complete_io` does), so that one error path carries both and a report can name it
/// ([`rustls_error`]).
pub fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, error)
}

/// The rustls error inside `error`, if it is one ([`tls_error`], rustls' `complete_io`).
pub fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A TLS session over a blocking socket, handshake done.
pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` and completes a TLS handshake with `tls`, the client's Finished sent;
/// `timeout` bounds the connect and each read and write, and stays on the socket.
pub fn connect_blocking(
    addr: SocketAddr,
    tls: &BenchTls,
    timeout: Duration,
) -> io::Result<TlsStream> {
    let socket = TcpStream::connect_timeout(&addr, timeout)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    socket.set_nodelay(true)?;
    let mut stream = StreamOwned::new(tls.session()?, socket);
    // The ClientHello out, and the first answer judged before rustls sees it: an echo port
    // sends the ClientHello back, which rustls would only call an unexpected message.
    while stream.conn.wants_write() {
        stream.conn.write_tls(&mut stream.sock)?;
    }
    if let Some(not_tls) = judge_first_answer(&stream.sock)? {
        return Err(io::Error::new(ErrorKind::InvalidData, not_tls));
    }
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    // The client's Finished may still be queued.
    while stream.conn.wants_write() {
        stream.conn.write_tls(&mut stream.sock)?;
    }
    Ok(stream)
}

/// What a server's first bytes said when they were not a TLS server's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotTls {
    /// Our ClientHello came back: a plaintext echo port.
    Echo,
    /// Bytes that cannot start a TLS record: a plaintext port of another kind.
    Plaintext,
}

impl fmt::Display for NotTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NotTls::Echo => "sent our TLS ClientHello back: a plaintext echo port? (drop --tls)",
            NotTls::Plaintext => {
                "answered in plaintext: it does not speak TLS on this port (drop --tls)"
            }
        })
    }
}

impl std::error::Error for NotTls {}

/// Looks at the first bytes the server sent after our ClientHello (waiting for them, within
/// the socket's read timeout), without taking them: a TLS record starts with a content type
/// from 20 to 24, and a handshake record holding a ClientHello (type 1) is ours come back.
/// Nothing yet (EOF) is left to the handshake to report.
fn judge_first_answer(socket: &TcpStream) -> io::Result<Option<NotTls>> {
    /// Record header (content type, version, length), then the handshake message type.
    const HEAD: usize = 6;
    const HANDSHAKE: u8 = 22;
    const CLIENT_HELLO: u8 = 1;
    let mut head = [0; HEAD];
    let n = loop {
        match socket.peek(&mut head) {
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            other => break other?,
        }
    };
    Ok(match head[..n] {
        [] => None,
        [kind, ..] if !(20..=24).contains(&kind) => Some(NotTls::Plaintext),
        [HANDSHAKE, _, _, _, _, CLIENT_HELLO] => Some(NotTls::Echo),
        _ => None,
    })
}

/// Whether the server has ended a held session: EOF, a close_notify, a reset or a fatal
/// alert. Reads only what has arrived (the socket is nonblocking from here on), taking in
/// whatever else came meanwhile (a session ticket). Plaintext that arrives is dropped.
pub fn is_closed(stream: &mut TlsStream) -> io::Result<bool> {
    stream.sock.set_nonblocking(true)?;
    let mut chunk = [0; 4096];
    loop {
        match stream.conn.read_tls(&mut stream.sock) {
            Ok(0) => return Ok(true),
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Ok(true),
        }
        if stream.conn.process_new_packets().is_err() {
            return Ok(true);
        }
        loop {
            match stream.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Ok(true),
            }
        }
    }
}
