//! The wire protocol, sans-IO: bytes in, frames out, and back. Nothing here touches a socket, a
//! process or the clock, so it can be driven from a test, a fuzzer or another event loop.
//!
//! Six modules, from the bytes up:
//! - [`header`]: the fixed 12-byte header ([`Header::parse`], [`Header::emit`]);
//! - [`frame`]: whole frames ([`Decoder::decode`], [`Frame::encode_into`]);
//! - [`message`]: payloads of the connection-level frames (HELLO, HELLO_OK, ERROR);
//! - [`exec`]: payloads of the remote-exec frames (EXEC, STARTED, WINDOW, EXIT, SIGNAL);
//! - [`files`]: payloads of the file-service frames (GET, PUT, LIST, FILE_INFO, DIGEST, ...);
//! - [`path`]: the syntax of paths relative to the server's root;
//! - [`proxy`]: the PROXY protocol header a load balancer sends before the first byte of
//!   either protocol (and before TLS);
//! - `arbitrary` (the `arbitrary` feature): `arbitrary::Arbitrary` for the message types, for
//!   fuzzers and property tests.
//!
//! `docs/PROTOCOL.md` specifies the same bytes for people writing their own clients.

#[cfg(feature = "arbitrary")]
mod arbitrary;
pub mod exec;
pub mod files;
pub mod frame;
pub mod header;
pub mod message;
pub mod path;
pub mod proxy;

pub use frame::{Decoder, Frame, Frames};
pub use header::{DecodeError, Flags, FrameType, HEADER_LEN, Header};
pub use message::{
    ErrorCode, ErrorMessage, Hello, HelloOk, MAGIC, MessageError, PROTOCOL_VERSION, SessionFlags,
    ends_connection,
};
