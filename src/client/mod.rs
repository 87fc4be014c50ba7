//! A blocking client for the framed protocol, used by `monoreactor echo` and by tests.
//!
//! It is deliberately simple: one request at a time, blocking sockets with timeouts. (The
//! server is the nonblocking part of this crate; a client may block.)

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::limits::MAX_FRAME_LEN;
use crate::proto::{
    DecodeError, Decoder, ErrorCode, ErrorMessage, Flags, Frame, FrameType, Header, Hello, HelloOk,
    MessageError,
};

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
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
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
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(error: io::Error) -> ClientError {
        ClientError::Io(error)
    }
}

/// A framed-protocol connection.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    received: Vec<u8>,
    decoder: Decoder,
    next_stream: u32,
}

impl Client {
    /// Connects (trying every address `addr` resolves to), then exchanges HELLO. `timeout`
    /// bounds the connect and every later read and write.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        let mut client = Client::connect_raw(addr, timeout)?;
        client.hello(Hello::current())?;
        Ok(client)
    }

    /// Connects without sending HELLO, for tests of the handshake itself.
    pub fn connect_raw(addr: &str, timeout: Duration) -> Result<Client, ClientError> {
        let connect_error = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let addrs: Vec<SocketAddr> = addr.to_socket_addrs().map_err(connect_error)?.collect();
        let mut last = io::Error::new(ErrorKind::InvalidInput, "the name resolved to no address");
        for candidate in addrs {
            match TcpStream::connect_timeout(&candidate, timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    return Ok(Client::from_stream(stream));
                }
                Err(error) => last = error,
            }
        }
        Err(connect_error(last))
    }

    /// Wraps a connected stream (no HELLO is sent).
    pub fn from_stream(stream: TcpStream) -> Client {
        Client {
            stream,
            received: Vec::new(),
            decoder: Decoder::new(MAX_FRAME_LEN),
            next_stream: 1,
        }
    }

    /// Sends `hello` and waits for HELLO_OK.
    pub fn hello(&mut self, hello: Hello<'_>) -> Result<HelloOk, ClientError> {
        let mut wire = Vec::new();
        hello.encode(&mut wire);
        self.send_raw(&wire)?;
        let reply = self.expect(FrameType::HelloOk, 0)?;
        HelloOk::parse(&reply.payload).map_err(ClientError::Message)
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
        loop {
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
                return Ok(owned);
            }
            let mut chunk = [0; 64 * 1024];
            let n = loop {
                match self.stream.read(&mut chunk) {
                    Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            if n == 0 {
                return Err(ClientError::Closed {
                    partial: self.received.len(),
                });
            }
            self.received.extend_from_slice(&chunk[..n]);
        }
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

    /// The socket underneath.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Gives up the client, keeping the connection open.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}
