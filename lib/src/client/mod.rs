//! A blocking client for the framed protocol, used by `monoreactor echo`, `monoreactor exec`
//! and by tests.
//!
//! It is deliberately simple: one request at a time, blocking sockets with timeouts. (The
//! server is the nonblocking part of this crate; a client may block, and [`exec`] even uses a
//! thread for stdin.)
//!
//! Every `connect` takes a [`Target`]: an address (`&str`, `&String` and `SocketAddr` convert
//! into a plaintext one) and, for TLS, a rustls configuration ([`tls`]). Over TLS the
//! protocol is the same, inside a rustls session on the same socket.
//!
//! The handshake is where a client most often meets the wrong peer: the raw echo port, a web
//! server, something silent. [`Client::hello`] looks at what came back instead of HELLO_OK and
//! says what it probably is ([`ClientError::WrongProtocol`]).

pub mod exec;
pub mod files;
pub mod glob;
pub mod tls;
pub mod tree;

pub use tls::{Target, TlsFailure, Transport};

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::limits::MAX_FRAME_LEN;

/// Payloads at least this long are read in pieces by [`Client::recv_frame_streaming`] (and
/// collected from them by [`Client::recv_frame`]) instead of through the receive buffer.
pub const DIRECT_READ_MIN: usize = 64 << 10;

/// The piece [`Client::recv_frame_streaming`] reads at a time (unless the lent buffer is
/// larger): large enough for few system calls, small enough to stay in a core's cache between
/// the copy from the kernel and the hash.
pub const STREAM_PIECE: usize = 128 << 10;

/// Where [`Client::recv_frame_streaming`] puts a large payload: it borrows buffers to read
/// into and gives them back filled, in order.
pub trait Pieces {
    /// A buffer to read the next piece into (its contents are overwritten; it is grown to
    /// [`STREAM_PIECE`] if shorter).
    fn buffer(&mut self) -> Vec<u8>;
    /// The next piece of `header`'s payload: the first `len` bytes of the buffer lent for it.
    fn take(&mut self, header: &Header, piece: Vec<u8>, len: usize) -> Result<(), ClientError>;
}

/// Collects a streamed payload whole, for [`Client::recv_frame`].
#[derive(Default)]
struct Collect {
    payload: Vec<u8>,
    piece: Vec<u8>,
}

impl Pieces for Collect {
    fn buffer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.piece)
    }

    fn take(&mut self, header: &Header, piece: Vec<u8>, len: usize) -> Result<(), ClientError> {
        if self.payload.is_empty() {
            self.payload.reserve_exact(header.len as usize);
        }
        self.payload.extend_from_slice(&piece[..len]);
        self.piece = piece;
        Ok(())
    }
}

/// What [`Client::recv_frame_streaming`] received.
#[derive(Debug)]
pub enum Received {
    /// A whole frame.
    Frame(OwnedFrame),
    /// A frame whose payload went to the callback.
    Streamed(Header),
}
use crate::proto::{
    DecodeError, Decoder, ErrorCode, ErrorMessage, Flags, Frame, FrameType, HEADER_LEN, Header,
    Hello, HelloOk, MessageError,
};
use crate::server::{DEFAULT_ECHO_ADDR, DEFAULT_FRAMED_ADDR};

/// A frame that owns its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedFrame {
    /// The header.
    pub header: Header,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Everything that can go wrong for a client, each with a one-line description.
#[derive(Debug)]
pub enum ClientError {
    /// No connection could be made to any address the name resolved to.
    Connect {
        /// What the user asked for.
        addr: String,
        /// The last failure.
        source: io::Error,
    },
    /// Reading or writing failed (a timeout shows as `WouldBlock`/`TimedOut`).
    Io(io::Error),
    /// The server sent bytes that are not a valid frame.
    Decode(DecodeError),
    /// A frame's payload did not parse.
    Message(MessageError),
    /// The server answered with an ERROR frame.
    Server {
        /// The error code.
        code: ErrorCode,
        /// The server's message.
        text: String,
    },
    /// The server sent a frame the client did not expect here.
    Unexpected(FrameType),
    /// The server closed the connection (mid-frame if `partial` bytes were pending).
    Closed {
        /// Bytes of an incomplete frame received before the close.
        partial: usize,
    },
    /// The peer answered HELLO with something that shows it does not speak the framed
    /// protocol: the client is probably talking to the wrong port.
    WrongProtocol {
        /// The peer, as the user named it.
        addr: String,
        /// What it did instead of answering HELLO_OK.
        evidence: NotFramed,
    },
    /// The server speaks a protocol version without the feature asked for.
    Unsupported {
        /// The version the connection speaks.
        version: u16,
        /// What is missing, e.g. "remote exec".
        feature: &'static str,
    },
    /// A request does not fit in one frame of the size the server announced in HELLO_OK.
    TooLarge {
        /// The request's payload, bytes.
        len: usize,
        /// The server's limit for this connection (small before authentication).
        max: u32,
    },
    /// Writing the command's output locally (stdout or stderr) failed.
    Output(io::Error),
    /// A transfer's bytes do not match what the server said about them: their BLAKE3 differs
    /// from the DIGEST, or their count from the size. The file changed during the transfer, or
    /// bytes were corrupted; the text says which check failed.
    Verify(String),
    /// A local file (or stdin) could not be read or written.
    Local {
        /// What failed, completing "cannot ...": e.g. "read big.iso".
        what: String,
        /// Why.
        source: io::Error,
    },
    /// TLS failed: the handshake (the server's certificate, its name, a port that does not
    /// speak TLS, no ALPN agreement), a client certificate refused, or a TLS port spoken to
    /// in plaintext.
    Tls {
        /// The peer, as the user named it.
        addr: String,
        /// What went wrong.
        failure: TlsFailure,
    },
}

/// What a peer that is not a framed-protocol server did with our HELLO.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotFramed {
    /// It sent our HELLO back, byte for byte: an echo service (the raw echo port).
    OwnHello,
    /// It answered in HTTP; the first line of its answer.
    Http(String),
    /// It sent bytes that do not start a frame (or a frame no server sends); the first of them.
    Bytes(Vec<u8>),
    /// It closed the connection without a word.
    Closed,
    /// It said nothing within the timeout.
    Silent(Duration),
}

/// At most this many bytes of a wrong peer's answer are quoted in a message.
const QUOTED_BYTES: usize = 24;

impl NotFramed {
    /// Classifies the first bytes a peer sent instead of HELLO_OK (`ours` is the HELLO we sent).
    pub fn from_answer(answer: &[u8], ours: &[u8]) -> NotFramed {
        if !ours.is_empty() && answer.starts_with(ours) {
            return NotFramed::OwnHello;
        }
        if answer.starts_with(b"HTTP/") {
            let line = answer.split(|&byte| byte == b'\r' || byte == b'\n').next();
            let line = line.unwrap_or(answer);
            return NotFramed::Http(String::from_utf8_lossy(&line[..line.len().min(64)]).into());
        }
        NotFramed::Bytes(answer[..answer.len().min(QUOTED_BYTES)].to_vec())
    }
}

impl fmt::Display for NotFramed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotFramed::OwnHello => write!(
                f,
                "answered with our own HELLO: is it the raw echo port ({} by default)?",
                DEFAULT_ECHO_ADDR.port()
            ),
            NotFramed::Http(line) => write!(f, "answered in HTTP ({line:?}): is it a web server?"),
            NotFramed::Bytes(bytes) => write!(
                f,
                "answered with bytes that are not a monoreactor frame (\"{}\"): is it another service?",
                bytes.escape_ascii()
            ),
            NotFramed::Closed => f.write_str(
                "closed the connection without answering HELLO: is it a monoreactor framed port?",
            ),
            NotFramed::Silent(timeout) => write!(
                f,
                "accepted the connection but did not answer HELLO within {}: is it a monoreactor framed port?",
                seconds(*timeout)
            ),
        }
    }
}

/// `1.5s`, `10s`: a duration as a person writes it.
fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs_f64())
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { addr, source }
                if source.kind() == ErrorKind::ConnectionRefused =>
            {
                write!(
                    f,
                    "cannot connect to {addr}: connection refused: is `monoreactor serve` running there?"
                )
            }
            ClientError::Connect { addr, source }
                if matches!(source.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                write!(f, "cannot connect to {addr}: timed out")
            }
            ClientError::Connect { addr, source } => {
                write!(f, "cannot connect to {addr}: {source}")
            }
            ClientError::Io(error)
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                f.write_str("timed out waiting for the server")
            }
            ClientError::Io(error) => write!(f, "connection failed: {error}"),
            ClientError::Decode(error) => write!(f, "invalid frame from server: {error}"),
            ClientError::Message(error) => write!(f, "invalid message from server: {error}"),
            ClientError::Server { code, text } => write!(f, "server error {code}: {text}"),
            ClientError::Unexpected(frame_type) => {
                write!(f, "unexpected {frame_type} frame from server")
            }
            ClientError::Closed { partial: 0 } => f.write_str("server closed the connection"),
            ClientError::Closed { partial } => {
                write!(
                    f,
                    "server closed the connection in the middle of a frame ({partial} bytes)"
                )
            }
            ClientError::WrongProtocol { addr, evidence } => write!(
                f,
                "{addr} {evidence} The framed protocol listens on {} by default",
                DEFAULT_FRAMED_ADDR.port()
            ),
            ClientError::Unsupported { version, feature } => write!(
                f,
                "the server speaks protocol version {version}, which has no {feature}: upgrade the server"
            ),
            ClientError::TooLarge { len, max } => write!(
                f,
                "the request is {len} bytes; the server accepts at most {max} in one frame"
            ),
            ClientError::Output(error) => write!(f, "cannot write the output: {error}"),
            ClientError::Verify(text) => write!(f, "verification failed: {text}"),
            ClientError::Local { what, source } => write!(f, "cannot {what}: {source}"),
            ClientError::Tls {
                addr,
                failure: failure @ (TlsFailure::Plaintext | TlsFailure::Closed),
            } => write!(f, "the server at {addr} {failure}"),
            ClientError::Tls { addr, failure } => write!(f, "{addr}: {failure}"),
        }
    }
}

impl ClientError {
    /// The server's error code, if this is an ERROR frame from the server.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether this is a local stdout or stderr that the reader closed (`EPIPE`): a Unix tool
    /// then stops quietly, as `yes | head -1` does.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, ClientError::Output(error) if error.kind() == ErrorKind::BrokenPipe)
    }
}

/// Resolves `HOST:PORT` (`127.0.0.1:7878`, `localhost:7878`, `[::1]:7878`) to one address,
/// IPv4 first when a name has both families (a server on the default loopback listens on
/// 127.0.0.1, not ::1). The error says what is wrong in words fit for a command line.
pub fn resolve_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    // "localhost" or "127.0.0.1" alone: the usual slip is a forgotten port.
    if !text.contains(':') || text.ends_with(':') {
        return Err(format!(
            "`{text}` has no port: write HOST:PORT, e.g. {}:{}",
            text.trim_end_matches(':'),
            DEFAULT_FRAMED_ADDR.port()
        ));
    }
    let resolved: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|error| format!("`{text}` is not HOST:PORT ({error})"))?
        .collect();
    resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("`{text}` resolves to no address"))
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(error: io::Error) -> ClientError {
        ClientError::Io(error)
    }
}

/// A received frame as it was on the wire, for quoting it.
fn wire_bytes(frame: &OwnedFrame) -> Vec<u8> {
    let header = frame.header;
    Frame::new(
        header.frame_type,
        header.flags,
        header.stream,
        &frame.payload,
    )
    .to_vec()
}

/// A framed-protocol connection, plaintext or over TLS.
#[derive(Debug)]
pub struct Client {
    stream: Transport,
    received: Vec<u8>,
    decoder: Decoder,
    next_stream: u32,
    /// The peer as the user named it, for messages.
    peer: String,
}

impl Client {
    /// Connects (trying every address the target's resolves to; over TLS, with the
    /// handshake), then exchanges HELLO. `timeout` bounds the connect and every later read
    /// and write.
    pub fn connect(target: impl Into<Target>, timeout: Duration) -> Result<Client, ClientError> {
        let mut client = Client::connect_raw(target, timeout)?;
        client.hello(Hello::current())?;
        Ok(client)
    }

    /// Like [`Client::connect`], presenting `credentials` (the server's token, or empty) in
    /// HELLO; returns the server's HELLO_OK too, which says what the connection may do.
    pub fn connect_with(
        target: impl Into<Target>,
        credentials: &[u8],
        timeout: Duration,
    ) -> Result<(Client, HelloOk), ClientError> {
        let mut client = Client::connect_raw(target, timeout)?;
        let ok = client.hello(Hello::with_credentials(credentials))?;
        Ok((client, ok))
    }

    /// Connects without sending HELLO, for tests of the handshake itself. Over TLS the TLS
    /// handshake is done here, so its failures ([`ClientError::Tls`]) come from this call.
    pub fn connect_raw(
        target: impl Into<Target>,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let target = target.into();
        let addr = target.addr();
        let connect_error = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(connect_error)?.collect();
        let mut last = io::Error::new(ErrorKind::InvalidInput, "the name resolved to no address");
        for candidate in addrs {
            // What `-v` shows of every client command: where, how, how long it waits.
            log::debug!(
                "connecting to {addr} ({candidate}) {}, waiting at most {timeout:?}",
                if target.tls_config().is_some() {
                    "over TLS"
                } else {
                    "without TLS"
                }
            );
            match TcpStream::connect_timeout(&candidate, timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    let transport = match target.tls_config() {
                        Some(config) => tls::handshake(stream, &target, config)?,
                        None => Transport::Plain(stream),
                    };
                    return Ok(Client::from_transport(transport, addr.to_string()));
                }
                Err(error) => last = error,
            }
        }
        Err(connect_error(last))
    }

    /// Wraps a connected stream (no HELLO is sent).
    pub fn from_stream(stream: TcpStream) -> Client {
        let peer = match stream.peer_addr() {
            Ok(addr) => addr.to_string(),
            Err(_) => "the server".to_string(),
        };
        Client::from_transport(Transport::Plain(stream), peer)
    }

    /// Wraps a connected transport (a TLS session after its handshake, or a socket); `peer`
    /// names the server in messages.
    pub fn from_transport(stream: Transport, peer: String) -> Client {
        Client {
            stream,
            received: Vec::new(),
            decoder: Decoder::new(MAX_FRAME_LEN),
            next_stream: 1,
            peer,
        }
    }

    /// Whether the connection is a TLS session.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// A read or write error, with what TLS said about it in words (a client certificate
    /// refused after the handshake, an alert) when there is a TLS error inside.
    fn io_error(&self, error: io::Error) -> ClientError {
        match tls::rustls_error(&error) {
            Some(tls_error) => ClientError::Tls {
                addr: self.peer.clone(),
                failure: TlsFailure::from_rustls(tls_error.clone(), &self.peer),
            },
            None => ClientError::Io(error),
        }
    }

    /// The peer as the user named it (or its address), for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Sends `hello` and waits for HELLO_OK. An answer that shows the peer does not speak the
    /// framed protocol (our HELLO echoed back, HTTP, other bytes, silence, a close without a
    /// word) is reported as [`ClientError::WrongProtocol`]; an ERROR frame as
    /// [`ClientError::Server`].
    pub fn hello(&mut self, hello: Hello<'_>) -> Result<HelloOk, ClientError> {
        let mut wire = Vec::new();
        hello.encode(&mut wire);
        self.send_raw(&wire)?;
        let evidence = match self.recv_frame() {
            Ok(frame) => match frame.header.frame_type {
                FrameType::HelloOk if frame.header.stream == 0 => {
                    match HelloOk::parse(&frame.payload) {
                        Ok(ok) => {
                            log::debug!(
                                "connected to {}: protocol version {}, {}, frames up to {} bytes",
                                self.peer,
                                ok.version,
                                if ok.flags.contains(crate::proto::SessionFlags::AUTHENTICATED) {
                                    "authenticated"
                                } else {
                                    "not authenticated"
                                },
                                ok.max_payload_len
                            );
                            return Ok(ok);
                        }
                        // A HELLO_OK type byte with a payload that is not ours: another
                        // protocol whose first byte happens to be 0x02.
                        Err(_) => NotFramed::from_answer(&wire_bytes(&frame), &wire),
                    }
                }
                FrameType::Error => match ErrorMessage::parse(&frame.payload) {
                    Ok(error) => {
                        return Err(ClientError::Server {
                            code: error.code,
                            text: error.text.to_string(),
                        });
                    }
                    Err(_) => NotFramed::from_answer(&wire_bytes(&frame), &wire),
                },
                // Only an echo service answers a client's HELLO with a HELLO.
                FrameType::Hello => NotFramed::OwnHello,
                _ => NotFramed::from_answer(&wire_bytes(&frame), &wire),
            },
            // What did not decode is still in `received`.
            Err(ClientError::Decode(_)) => NotFramed::from_answer(&self.received, &wire),
            Err(ClientError::Closed { partial: 0 }) => NotFramed::Closed,
            Err(ClientError::Closed { .. }) => NotFramed::from_answer(&self.received, &wire),
            Err(ClientError::Io(error))
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                // Part of an answer still tells who is there (an echo that stalled).
                if self.received.is_empty() {
                    NotFramed::Silent(tls::read_timeout(&self.stream))
                } else {
                    NotFramed::from_answer(&self.received, &wire)
                }
            }
            Err(error) => return Err(error),
        };
        // A TLS server answers a plaintext HELLO with an alert (or a handshake record).
        let answer = match &evidence {
            NotFramed::Bytes(bytes) => bytes.as_slice(),
            _ => &[],
        };
        if tls::is_tls_record(answer) || tls::is_tls_record(&self.received) {
            return Err(ClientError::Tls {
                addr: self.peer.clone(),
                failure: TlsFailure::ServerSpeaksTls,
            });
        }
        Err(ClientError::WrongProtocol {
            addr: self.peer.clone(),
            evidence,
        })
    }

    /// Sends one ECHO_REQUEST and returns the echoed payload.
    pub fn echo(&mut self, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        let stream = self.next_stream;
        self.next_stream = self.next_stream.checked_add(1).unwrap_or(1);
        self.send_frame(Frame::new(
            FrameType::EchoRequest,
            Flags::END_STREAM,
            stream,
            payload,
        ))?;
        Ok(self.expect(FrameType::EchoReply, stream)?.payload)
    }

    /// Sends a frame.
    pub fn send_frame(&mut self, frame: Frame<'_>) -> io::Result<()> {
        self.send_raw(&frame.to_vec())
    }

    /// Sends raw bytes (well-formed or not).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Receives the next frame.
    pub fn recv_frame(&mut self) -> Result<OwnedFrame, ClientError> {
        let mut collect = Collect::default();
        match self.recv_frame_streaming(&mut collect)? {
            Received::Frame(frame) => Ok(frame),
            Received::Streamed(header) => Ok(OwnedFrame {
                header,
                payload: collect.payload,
            }),
        }
    }

    /// Receives the next frame, but hands a payload of [`DIRECT_READ_MIN`] bytes or more to
    /// `pieces` as it arrives instead of collecting it: each piece is read into a buffer
    /// `pieces` lends (small enough to stay in the CPU's cache) and given back to it filled,
    /// so a file's DATA goes from the kernel to the hash and the sink without another copy.
    pub fn recv_frame_streaming(
        &mut self,
        pieces: &mut dyn Pieces,
    ) -> Result<Received, ClientError> {
        loop {
            if let Some(header) =
                Header::parse(&self.received, MAX_FRAME_LEN).map_err(ClientError::Decode)?
            {
                let len = header.len as usize;
                if len >= DIRECT_READ_MIN {
                    let buffered = (self.received.len() - HEADER_LEN).min(len);
                    // A piece refused (a sink that failed, bytes that do not add up) still has
                    // the rest of its frame read and dropped, so the next frame is found where
                    // it starts; the refusal is returned after.
                    let mut refused = None;
                    if buffered > 0 {
                        let mut piece = pieces.buffer();
                        if piece.len() < buffered {
                            piece.resize(buffered, 0);
                        }
                        piece[..buffered]
                            .copy_from_slice(&self.received[HEADER_LEN..HEADER_LEN + buffered]);
                        refused = pieces.take(&header, piece, buffered).err();
                    }
                    self.received.drain(..HEADER_LEN + buffered);
                    let mut left = len - buffered;
                    let mut dropped = Vec::new();
                    while left > 0 {
                        let mut piece = if refused.is_some() {
                            std::mem::take(&mut dropped)
                        } else {
                            pieces.buffer()
                        };
                        if piece.len() < STREAM_PIECE {
                            // Zeroed once; a lent buffer comes back at its full length.
                            piece.resize(STREAM_PIECE, 0);
                        }
                        let want = left.min(piece.len());
                        match self.read_piece(&mut piece[..want]) {
                            Ok(0) => {
                                return Err(ClientError::Closed {
                                    partial: HEADER_LEN + len - left,
                                });
                            }
                            Ok(n) => {
                                left -= n;
                                if refused.is_some() {
                                    dropped = piece;
                                } else {
                                    refused = pieces.take(&header, piece, n).err();
                                }
                            }
                            Err(error) if error.kind() == ErrorKind::Interrupted => {}
                            Err(error) => return Err(self.io_error(error)),
                        }
                    }
                    return match refused {
                        Some(error) => Err(error),
                        None => Ok(Received::Streamed(header)),
                    };
                }
            }
            if let Some(frame) = self
                .decoder
                .decode(&self.received)
                .map_err(ClientError::Decode)?
            {
                let owned = OwnedFrame {
                    header: frame.header,
                    payload: frame.payload.to_vec(),
                };
                self.received.drain(..frame.wire_len());
                return Ok(Received::Frame(owned));
            }
            self.fill()?;
        }
    }

    /// One read of a large payload's piece. Plaintext: one read, whatever the socket has.
    /// TLS: the session yields at most one record's plaintext (16 KiB) a read, so it reads on
    /// until the piece is full (the bytes are owed by the frame, so this waits for nothing
    /// that is not coming), and the hash and the sink get pieces as large as over plaintext.
    fn read_piece(&mut self, piece: &mut [u8]) -> io::Result<usize> {
        if !self.stream.is_tls() {
            return self.stream.read(piece);
        }
        let mut filled = 0;
        while filled < piece.len() {
            match self.stream.read(&mut piece[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                // What was read counts; the error comes back on the next read.
                Err(_) if filled > 0 => break,
                Err(error) => return Err(error),
            }
        }
        Ok(filled)
    }

    /// Reads what the socket has into the receive buffer; the peer's close is an error that
    /// says how much of a frame was left.
    fn fill(&mut self) -> Result<(), ClientError> {
        let mut chunk = [0; 64 * 1024];
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(self.io_error(error)),
                Ok(n) => break n,
            }
        };
        if n == 0 {
            return Err(ClientError::Closed {
                partial: self.received.len(),
            });
        }
        self.received.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Receives the next frame and checks it is `frame_type` on `stream`; an ERROR frame
    /// becomes [`ClientError::Server`].
    pub fn expect(
        &mut self,
        frame_type: FrameType,
        stream: u32,
    ) -> Result<OwnedFrame, ClientError> {
        let frame = self.recv_frame()?;
        match frame.header.frame_type {
            FrameType::Error => {
                let error = ErrorMessage::parse(&frame.payload).map_err(ClientError::Message)?;
                Err(ClientError::Server {
                    code: error.code,
                    text: error.text.to_string(),
                })
            }
            found if found == frame_type && frame.header.stream == stream => Ok(frame),
            found => Err(ClientError::Unexpected(found)),
        }
    }

    /// The socket underneath (under TLS: for its options and addresses, not for I/O).
    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// The transport: the socket, or the TLS session over it.
    pub fn transport(&mut self) -> &mut Transport {
        &mut self.stream
    }

    /// Whether something waits to be read without blocking (see [`Transport::input_pending`]).
    pub fn input_pending(&mut self) -> bool {
        !self.received.is_empty() || self.stream.input_pending()
    }

    /// Gives up the client, keeping the connection open. A TLS session is given up with it:
    /// what is left is the socket under it, fit only to be held open or closed.
    pub fn into_stream(self) -> TcpStream {
        match self.stream {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => {
                let rustls::StreamOwned { sock, .. } = *tls;
                sock.into_tcp()
            }
        }
    }

    /// Gives up the client, returning its transport and the bytes received but not yet
    /// decoded (for a caller that drives the connection itself, as [`exec`] does).
    pub(crate) fn into_parts(self) -> (Transport, Vec<u8>, String) {
        (self.stream, self.received, self.peer)
    }
}
