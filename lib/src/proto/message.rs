//! Payload layouts of the connection-level frames: HELLO, HELLO_OK and ERROR, with the error
//! codes. Each message has `parse` (from a payload) and `emit` (into a payload-sized slice);
//! `encode` wraps the payload in a frame for senders that build a `Vec`.

use std::fmt;

use super::frame::Frame;
use super::header::{Flags, FrameType};

/// First four payload bytes of HELLO and HELLO_OK: "MNRX". A client that connected to the wrong
/// port gets a clear error instead of a misparse.
pub const MAGIC: [u8; 4] = *b"MNRX";

/// The newest protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 2;

/// The first version with remote exec, authentication and per-stream errors.
pub const EXEC_VERSION: u16 = 2;

/// The oldest protocol version this build speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// Upper bound on an ERROR message text, so an error frame is always small.
pub const MAX_ERROR_TEXT_LEN: usize = 1024;

/// Upper bound on HELLO credentials.
pub const MAX_CREDENTIALS_LEN: usize = 1024;

/// Why a payload did not parse as the message its frame type promised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageError {
    /// The payload is shorter than the message's fixed part.
    Truncated {
        /// Bytes the fixed part needs.
        need: usize,
        /// Bytes the payload has.
        got: usize,
    },
    /// The payload does not start with [`MAGIC`].
    BadMagic([u8; 4]),
    /// HELLO's minimum version is above its maximum.
    BadVersionRange {
        /// The declared minimum.
        min: u16,
        /// The declared maximum.
        max: u16,
    },
    /// A variable-length field is longer than its limit.
    TooLong {
        /// The field's length.
        len: usize,
        /// Its limit.
        max: usize,
    },
    /// An ERROR message text is not UTF-8.
    NotUtf8,
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageError::Truncated { need, got } => {
                write!(f, "payload has {got} bytes, needs at least {need}")
            }
            MessageError::BadMagic(magic) => write!(f, "bad magic {magic:02x?}, expected \"MNRX\""),
            MessageError::BadVersionRange { min, max } => {
                write!(f, "version range {min}..={max} is empty")
            }
            MessageError::TooLong { len, max } => write!(f, "field of {len} bytes, limit {max}"),
            MessageError::NotUtf8 => f.write_str("error text is not UTF-8"),
        }
    }
}

impl std::error::Error for MessageError {}

fn need(payload: &[u8], fixed: usize) -> Result<(), MessageError> {
    if payload.len() < fixed {
        return Err(MessageError::Truncated {
            need: fixed,
            got: payload.len(),
        });
    }
    Ok(())
}

fn check_magic(payload: &[u8]) -> Result<(), MessageError> {
    let magic = [payload[0], payload[1], payload[2], payload[3]];
    if magic != MAGIC {
        return Err(MessageError::BadMagic(magic));
    }
    Ok(())
}

fn be_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// HELLO payload fields as byte ranges.
pub mod hello_field {
    use std::ops::Range;
    /// [`MAGIC`](super::MAGIC).
    pub const MAGIC: Range<usize> = 0..4;
    /// Oldest version the client speaks (BE u16).
    pub const MIN_VERSION: Range<usize> = 4..6;
    /// Newest version the client speaks (BE u16).
    pub const MAX_VERSION: Range<usize> = 6..8;
    /// Length of the credentials that follow (BE u16).
    pub const CREDENTIALS_LEN: Range<usize> = 8..10;
    /// Credentials start here; bytes after them are reserved for later versions and ignored.
    pub const CREDENTIALS: usize = 10;
}

/// The client's first frame: which versions it speaks, and credentials: the server's token, for
/// a connection that needs more than echo (a server without a token ignores them). The credentials carry their own
/// length, so a later version can append fields that this one skips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Oldest version the client speaks.
    pub min_version: u16,
    /// Newest version the client speaks.
    pub max_version: u16,
    /// Opaque credentials, at most [`MAX_CREDENTIALS_LEN`] bytes.
    pub credentials: &'a [u8],
}

impl<'a> Hello<'a> {
    /// A HELLO offering exactly the versions this build speaks, without credentials.
    pub const fn current() -> Hello<'static> {
        Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            credentials: &[],
        }
    }

    /// A HELLO offering the versions this build speaks, with `token` as credentials.
    pub const fn with_credentials(token: &'a [u8]) -> Hello<'a> {
        Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            credentials: token,
        }
    }

    /// Parses a HELLO payload. Bytes after the credentials are ignored.
    pub fn parse(payload: &'a [u8]) -> Result<Hello<'a>, MessageError> {
        need(payload, hello_field::CREDENTIALS)?;
        check_magic(payload)?;
        let min_version = be_u16(payload, hello_field::MIN_VERSION.start);
        let max_version = be_u16(payload, hello_field::MAX_VERSION.start);
        if min_version > max_version {
            return Err(MessageError::BadVersionRange {
                min: min_version,
                max: max_version,
            });
        }
        let len = usize::from(be_u16(payload, hello_field::CREDENTIALS_LEN.start));
        if len > MAX_CREDENTIALS_LEN {
            return Err(MessageError::TooLong {
                len,
                max: MAX_CREDENTIALS_LEN,
            });
        }
        let end = hello_field::CREDENTIALS + len;
        need(payload, end)?;
        Ok(Hello {
            min_version,
            max_version,
            credentials: &payload[hello_field::CREDENTIALS..end],
        })
    }

    /// The payload length [`Hello::emit`] writes.
    pub fn payload_len(&self) -> usize {
        hello_field::CREDENTIALS + self.credentials.len()
    }

    /// Writes the payload into `out[..self.payload_len()]`.
    ///
    /// # Panics
    /// If the credentials are longer than `u16::MAX` bytes (the limit is
    /// [`MAX_CREDENTIALS_LEN`]).
    pub fn emit(&self, out: &mut [u8]) {
        out[hello_field::MAGIC].copy_from_slice(&MAGIC);
        out[hello_field::MIN_VERSION].copy_from_slice(&self.min_version.to_be_bytes());
        out[hello_field::MAX_VERSION].copy_from_slice(&self.max_version.to_be_bytes());
        let len = u16::try_from(self.credentials.len()).expect("credentials fit in u16");
        out[hello_field::CREDENTIALS_LEN].copy_from_slice(&len.to_be_bytes());
        out[hello_field::CREDENTIALS..self.payload_len()].copy_from_slice(self.credentials);
    }

    /// Appends a complete HELLO frame on stream 0.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut payload = vec![0; self.payload_len()];
        self.emit(&mut payload);
        Frame::new(FrameType::Hello, Flags::END_STREAM, 0, &payload).encode_into(out);
    }

    /// The version both sides speak, preferring the newest: `None` if the ranges do not meet.
    pub fn negotiate(&self) -> Option<u16> {
        let newest = self.max_version.min(PROTOCOL_VERSION);
        (newest >= self.min_version.max(MIN_PROTOCOL_VERSION)).then_some(newest)
    }
}

/// HELLO_OK payload fields as byte ranges.
pub mod hello_ok_field {
    use std::ops::Range;
    /// [`MAGIC`](super::MAGIC).
    pub const MAGIC: Range<usize> = 0..4;
    /// The version the connection now speaks (BE u16).
    pub const VERSION: Range<usize> = 4..6;
    /// The largest payload the server accepts in one frame (BE u32).
    pub const MAX_PAYLOAD_LEN: Range<usize> = 6..10;
    /// Version 2: [`SessionFlags`](super::SessionFlags) (BE u16).
    pub const FLAGS: Range<usize> = 10..12;
}

/// What a connection may do, announced in a version 2 HELLO_OK.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionFlags(u16);

impl SessionFlags {
    /// Nothing beyond echo.
    pub const NONE: SessionFlags = SessionFlags(0);
    /// The connection may make requests beyond echo: the server needs no token, or the HELLO
    /// carried the right one.
    pub const AUTHENTICATED: SessionFlags = SessionFlags(0x0001);
    /// The server runs commands (`serve --exec`).
    pub const EXEC: SessionFlags = SessionFlags(0x0002);
    /// The connection may use the file service (GET, PUT, LIST, ...) under the server's root.
    pub const FILES: SessionFlags = SessionFlags(0x0004);

    /// The raw bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Flags from raw bits; bits this build does not know are kept (a later server may send
    /// them) and ignored.
    pub const fn from_bits(bits: u16) -> SessionFlags {
        SessionFlags(bits)
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: SessionFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the flags of `other` added.
    pub const fn with(self, other: SessionFlags) -> SessionFlags {
        SessionFlags(self.0 | other.0)
    }
}

/// The server's answer to a HELLO it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloOk {
    /// The version the connection now speaks.
    pub version: u16,
    /// The largest payload the server accepts in one frame on this connection. Before
    /// authentication it is the small pre-authentication limit.
    pub max_payload_len: u32,
    /// Version 2 only (a version 1 HELLO_OK has no such field; it parses as
    /// [`SessionFlags::NONE`]).
    pub flags: SessionFlags,
}

impl HelloOk {
    /// Payload length of a version 1 HELLO_OK.
    pub const V1_PAYLOAD_LEN: usize = hello_ok_field::MAX_PAYLOAD_LEN.end;
    /// Payload length of a version 2 HELLO_OK.
    pub const V2_PAYLOAD_LEN: usize = hello_ok_field::FLAGS.end;

    /// The payload length [`HelloOk::emit`] writes for this version.
    pub const fn payload_len(&self) -> usize {
        if self.version >= EXEC_VERSION {
            Self::V2_PAYLOAD_LEN
        } else {
            Self::V1_PAYLOAD_LEN
        }
    }

    /// Parses a HELLO_OK payload. Bytes after the fields of the announced version are ignored,
    /// so a later version may append fields.
    pub fn parse(payload: &[u8]) -> Result<HelloOk, MessageError> {
        need(payload, Self::V1_PAYLOAD_LEN)?;
        check_magic(payload)?;
        let version = be_u16(payload, hello_ok_field::VERSION.start);
        let flags = if version >= EXEC_VERSION {
            need(payload, Self::V2_PAYLOAD_LEN)?;
            SessionFlags::from_bits(be_u16(payload, hello_ok_field::FLAGS.start))
        } else {
            SessionFlags::NONE
        };
        Ok(HelloOk {
            version,
            max_payload_len: be_u32(payload, hello_ok_field::MAX_PAYLOAD_LEN.start),
            flags,
        })
    }

    /// Writes the payload into `out[..self.payload_len()]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[hello_ok_field::MAGIC].copy_from_slice(&MAGIC);
        out[hello_ok_field::VERSION].copy_from_slice(&self.version.to_be_bytes());
        out[hello_ok_field::MAX_PAYLOAD_LEN].copy_from_slice(&self.max_payload_len.to_be_bytes());
        if self.version >= EXEC_VERSION {
            out[hello_ok_field::FLAGS].copy_from_slice(&self.flags.bits().to_be_bytes());
        }
    }

    /// Appends a complete HELLO_OK frame on stream 0.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut payload = [0; Self::V2_PAYLOAD_LEN];
        self.emit(&mut payload);
        Frame::new(
            FrameType::HelloOk,
            Flags::END_STREAM,
            0,
            &payload[..self.payload_len()],
        )
        .encode_into(out);
    }
}

/// Compares presented credentials with the configured token in time that depends only on their
/// lengths, never on where they first differ, so a client cannot find the token byte by byte by
/// timing its HELLOs.
pub fn credentials_match(presented: &[u8], token: &[u8]) -> bool {
    let mut difference = u8::from(presented.len() != token.len());
    for (index, expected) in token.iter().enumerate() {
        let got = presented.get(index).copied().unwrap_or(!expected);
        difference |= got ^ expected;
    }
    // Keep the optimiser from turning the fold into an early exit.
    std::hint::black_box(difference) == 0
}

/// Error codes carried in ERROR frames. Whether an ERROR ends the connection is decided by its
/// stream, not its code ([`ends_connection`]); the codes say why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A header had unknown flag bits or non-zero reserved bytes.
    MalformedFrame,
    /// A header declared a payload above the server's limit.
    FrameTooLarge,
    /// The frame type is unknown to the server; its payload was skipped.
    UnknownFrameType,
    /// A frame arrived that is not valid now (anything before HELLO, a second HELLO, a frame
    /// type only the server sends).
    UnexpectedFrame,
    /// The HELLO payload did not parse.
    BadHello,
    /// No protocol version is in both the client's and the server's range.
    UnsupportedVersion,
    /// The server is at its connection limit.
    ServerBusy,
    /// The connection was idle too long, or a frame took too long to arrive.
    Timeout,
    /// The server is shutting down (on stream 0), or will start nothing new (on a request's
    /// stream).
    ShuttingDown,
    /// HELLO carried credentials, and they are not the server's token.
    AuthFailed,
    /// The request needs an authenticated connection (a HELLO with the server's token).
    Unauthenticated,
    /// The server does not run commands (`serve` without `--exec`).
    ExecDisabled,
    /// The program (or a path) does not exist.
    NotFound,
    /// The program is not executable, or a path is outside the server's root or not permitted.
    PermissionDenied,
    /// A limit was reached: commands per connection, commands on the server, descriptors.
    LimitReached,
    /// The request's payload does not parse, or asks for something the protocol forbids.
    BadRequest,
    /// The client sent more STDIN bytes than its credit window allowed.
    FlowControl,
    /// Starting the command failed for another reason (the text says which).
    SpawnFailed,
    /// The path names a directory where a file is needed (GET, PUT).
    IsDirectory,
    /// The path (or one of its parents) is not a directory where one is needed (LIST, MKDIR).
    NotDirectory,
    /// The path would leave the server's root or pass through a symlink.
    OutsideRoot,
    /// A GET's offset is past the end of the file.
    BadOffset,
    /// An upload's bytes do not hash to the BLAKE3 the client gave; nothing was stored.
    HashMismatch,
    /// The server's disk is full (or a quota is reached); nothing was stored.
    NoSpace,
    /// MKDIR of a path that exists.
    AlreadyExists,
    /// DELETE of a directory that is not empty.
    NotEmpty,
    /// A disk operation failed for another reason (the text says which).
    IoFailed,
    /// PUT: another server process sharing the root is receiving the same resumable upload
    /// right now. Retryable: the same PUT succeeds once that one ends.
    UploadBusy,
    /// The credential the connection authenticated with may not make this request: the
    /// access file's rules (read-only, a subtree, an exec allowlist, `max_commands`, a quota),
    /// or exec or files asked for in plaintext from another host. The text names the rule and
    /// the credential.
    Forbidden,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    /// Decodes a wire code.
    pub const fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::MalformedFrame,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::UnknownFrameType,
            4 => ErrorCode::UnexpectedFrame,
            5 => ErrorCode::BadHello,
            6 => ErrorCode::UnsupportedVersion,
            7 => ErrorCode::ServerBusy,
            8 => ErrorCode::Timeout,
            9 => ErrorCode::ShuttingDown,
            10 => ErrorCode::AuthFailed,
            11 => ErrorCode::Unauthenticated,
            12 => ErrorCode::ExecDisabled,
            13 => ErrorCode::NotFound,
            14 => ErrorCode::PermissionDenied,
            15 => ErrorCode::LimitReached,
            16 => ErrorCode::BadRequest,
            17 => ErrorCode::FlowControl,
            18 => ErrorCode::SpawnFailed,
            19 => ErrorCode::IsDirectory,
            20 => ErrorCode::NotDirectory,
            21 => ErrorCode::OutsideRoot,
            22 => ErrorCode::BadOffset,
            23 => ErrorCode::HashMismatch,
            24 => ErrorCode::NoSpace,
            25 => ErrorCode::AlreadyExists,
            26 => ErrorCode::NotEmpty,
            27 => ErrorCode::IoFailed,
            28 => ErrorCode::UploadBusy,
            29 => ErrorCode::Forbidden,
            other => ErrorCode::Other(other),
        }
    }

    /// The wire code.
    pub const fn to_u16(self) -> u16 {
        match self {
            ErrorCode::MalformedFrame => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::UnknownFrameType => 3,
            ErrorCode::UnexpectedFrame => 4,
            ErrorCode::BadHello => 5,
            ErrorCode::UnsupportedVersion => 6,
            ErrorCode::ServerBusy => 7,
            ErrorCode::Timeout => 8,
            ErrorCode::ShuttingDown => 9,
            ErrorCode::AuthFailed => 10,
            ErrorCode::Unauthenticated => 11,
            ErrorCode::ExecDisabled => 12,
            ErrorCode::NotFound => 13,
            ErrorCode::PermissionDenied => 14,
            ErrorCode::LimitReached => 15,
            ErrorCode::BadRequest => 16,
            ErrorCode::FlowControl => 17,
            ErrorCode::SpawnFailed => 18,
            ErrorCode::IsDirectory => 19,
            ErrorCode::NotDirectory => 20,
            ErrorCode::OutsideRoot => 21,
            ErrorCode::BadOffset => 22,
            ErrorCode::HashMismatch => 23,
            ErrorCode::NoSpace => 24,
            ErrorCode::AlreadyExists => 25,
            ErrorCode::NotEmpty => 26,
            ErrorCode::IoFailed => 27,
            ErrorCode::UploadBusy => 28,
            ErrorCode::Forbidden => 29,
            ErrorCode::Other(other) => other,
        }
    }
}

/// Whether an ERROR frame on `stream` ends the connection: on stream 0 it does (the close
/// sequence follows); on any other stream it ends that stream only, and the connection goes
/// on. Version 1 said the same by code: its only non-fatal code, `UNKNOWN_FRAME_TYPE`, is the
/// only one it sent on a request's stream.
pub const fn ends_connection(stream: u32) -> bool {
    stream == 0
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::MalformedFrame => "MALFORMED_FRAME",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::UnknownFrameType => "UNKNOWN_FRAME_TYPE",
            ErrorCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ErrorCode::BadHello => "BAD_HELLO",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::ServerBusy => "SERVER_BUSY",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::ExecDisabled => "EXEC_DISABLED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::LimitReached => "LIMIT_REACHED",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::FlowControl => "FLOW_CONTROL",
            ErrorCode::SpawnFailed => "SPAWN_FAILED",
            ErrorCode::IsDirectory => "IS_DIRECTORY",
            ErrorCode::NotDirectory => "NOT_DIRECTORY",
            ErrorCode::OutsideRoot => "OUTSIDE_ROOT",
            ErrorCode::BadOffset => "BAD_OFFSET",
            ErrorCode::HashMismatch => "HASH_MISMATCH",
            ErrorCode::NoSpace => "NO_SPACE",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::NotEmpty => "NOT_EMPTY",
            ErrorCode::IoFailed => "IO_FAILED",
            ErrorCode::UploadBusy => "UPLOAD_BUSY",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::Other(code) => return write!(f, "ERROR_{code}"),
        };
        f.write_str(name)
    }
}

/// ERROR payload fields as byte ranges.
pub mod error_field {
    use std::ops::Range;
    /// The [`ErrorCode`](super::ErrorCode) (BE u16).
    pub const CODE: Range<usize> = 0..2;
    /// UTF-8 text: the rest of the payload.
    pub const TEXT: usize = 2;
}

/// An ERROR frame's payload: a code for programs and a message for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorMessage<'a> {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail, at most [`MAX_ERROR_TEXT_LEN`] bytes.
    pub text: &'a str,
}

impl<'a> ErrorMessage<'a> {
    /// An error message; `text` longer than [`MAX_ERROR_TEXT_LEN`] bytes is cut at a character
    /// boundary.
    pub fn new(code: ErrorCode, text: &'a str) -> ErrorMessage<'a> {
        let mut end = text.len().min(MAX_ERROR_TEXT_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        ErrorMessage {
            code,
            text: &text[..end],
        }
    }

    /// Parses an ERROR payload.
    pub fn parse(payload: &'a [u8]) -> Result<ErrorMessage<'a>, MessageError> {
        need(payload, error_field::TEXT)?;
        let text = &payload[error_field::TEXT..];
        if text.len() > MAX_ERROR_TEXT_LEN {
            return Err(MessageError::TooLong {
                len: text.len(),
                max: MAX_ERROR_TEXT_LEN,
            });
        }
        Ok(ErrorMessage {
            code: ErrorCode::from_u16(be_u16(payload, error_field::CODE.start)),
            text: std::str::from_utf8(text).map_err(|_| MessageError::NotUtf8)?,
        })
    }

    /// The payload length [`ErrorMessage::emit`] writes.
    pub fn payload_len(&self) -> usize {
        error_field::TEXT + self.text.len()
    }

    /// Writes the payload into `out[..self.payload_len()]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[error_field::CODE].copy_from_slice(&self.code.to_u16().to_be_bytes());
        out[error_field::TEXT..self.payload_len()].copy_from_slice(self.text.as_bytes());
    }

    /// Appends a complete ERROR frame about `stream` (0 = the connection).
    pub fn encode(&self, stream: u32, out: &mut Vec<u8>) {
        let mut payload = vec![0; self.payload_len()];
        self.emit(&mut payload);
        Frame::new(FrameType::Error, Flags::END_STREAM, stream, &payload).encode_into(out);
    }
}

impl fmt::Display for ErrorMessage<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // === HELLO ===

    #[test]
    fn hello_emit_then_parse_round_trips() {
        let hello = Hello {
            min_version: 1,
            max_version: 3,
            credentials: b"secret",
        };
        let mut payload = vec![0xa5; hello.payload_len() + 2];
        hello.emit(&mut payload);
        assert_eq!(&payload[..10], b"MNRX\x00\x01\x00\x03\x00\x06");
        assert_eq!(
            &payload[hello.payload_len()..],
            [0xa5, 0xa5],
            "emit wrote past its length"
        );
        assert_eq!(Hello::parse(&payload[..hello.payload_len()]), Ok(hello));
    }

    #[test]
    fn hello_parse_ignores_fields_after_the_credentials() {
        let payload = b"MNRX\0\x01\0\x02\0\x02okLATER-FIELDS";
        let hello = Hello::parse(payload).unwrap();
        assert_eq!(
            (hello.min_version, hello.max_version, hello.credentials),
            (1, 2, &b"ok"[..])
        );
    }

    #[test]
    fn hello_parse_rejects_short_bad_magic_and_empty_range() {
        assert_eq!(
            Hello::parse(b"MNRX\0\x01\0\x01"),
            Err(MessageError::Truncated { need: 10, got: 8 })
        );
        assert_eq!(
            Hello::parse(b"MNRX\0\x01\0\x01\0\x05abc"),
            Err(MessageError::Truncated { need: 15, got: 13 }),
            "credentials shorter than their length field"
        );
        assert_eq!(
            Hello::parse(b"HTTP\0\x01\0\x01\0\0"),
            Err(MessageError::BadMagic(*b"HTTP"))
        );
        assert_eq!(
            Hello::parse(b"MNRX\0\x02\0\x01\0\0"),
            Err(MessageError::BadVersionRange { min: 2, max: 1 })
        );
    }

    #[test]
    fn hello_parse_rejects_oversize_credentials_from_the_length_field() {
        let len = (MAX_CREDENTIALS_LEN + 1) as u16;
        let mut payload = b"MNRX\0\x01\0\x01".to_vec();
        payload.extend(len.to_be_bytes());
        assert_eq!(
            Hello::parse(&payload),
            Err(MessageError::TooLong {
                len: MAX_CREDENTIALS_LEN + 1,
                max: MAX_CREDENTIALS_LEN
            })
        );
    }

    #[test]
    fn negotiate_picks_newest_common_version() {
        let range = |min, max| Hello {
            min_version: min,
            max_version: max,
            credentials: &[],
        };
        assert_eq!(range(1, 1).negotiate(), Some(1));
        assert_eq!(range(0, 9).negotiate(), Some(PROTOCOL_VERSION));
        assert_eq!(
            range(1, 1).negotiate(),
            Some(1),
            "a version 1 client gets version 1"
        );
        assert_eq!(range(3, 9).negotiate(), None);
        assert_eq!(range(0, 0).negotiate(), None);
    }

    // === HELLO_OK ===

    #[test]
    fn hello_ok_version_1_round_trips_and_ignores_trailing_fields() {
        let ok = HelloOk {
            version: 1,
            max_payload_len: 1 << 20,
            flags: SessionFlags::NONE,
        };
        assert_eq!(ok.payload_len(), 10);
        let mut payload = [0xa5; HelloOk::V1_PAYLOAD_LEN + 3];
        ok.emit(&mut payload);
        assert_eq!(
            payload[..HelloOk::V1_PAYLOAD_LEN],
            *b"MNRX\x00\x01\x00\x10\x00\x00"
        );
        assert_eq!(payload[10..], [0xa5; 3], "version 1 has no flags field");
        assert_eq!(HelloOk::parse(&payload), Ok(ok));
    }

    #[test]
    fn hello_ok_version_2_carries_session_flags() {
        let ok = HelloOk {
            version: 2,
            max_payload_len: 4096,
            flags: SessionFlags::AUTHENTICATED.with(SessionFlags::EXEC),
        };
        let mut payload = [0xa5; HelloOk::V2_PAYLOAD_LEN];
        ok.emit(&mut payload);
        assert_eq!(payload, *b"MNRX\x00\x02\x00\x00\x10\x00\x00\x03");
        assert_eq!(HelloOk::parse(&payload), Ok(ok));
        assert_eq!(
            HelloOk::parse(&payload[..10]),
            Err(MessageError::Truncated { need: 12, got: 10 })
        );
    }

    #[test]
    fn credentials_match_only_the_exact_token() {
        let token = b"0123456789abcdef";
        assert!(credentials_match(token, token));
        assert!(!credentials_match(b"0123456789abcdeF", token));
        assert!(!credentials_match(b"0123456789abcde", token), "a prefix");
        assert!(!credentials_match(b"0123456789abcdef0", token), "longer");
        assert!(!credentials_match(b"", token));
        assert!(credentials_match(b"", b""));
    }

    // === ERROR ===

    #[test]
    fn error_round_trips() {
        let error = ErrorMessage::new(ErrorCode::FrameTooLarge, "too big");
        let mut out = Vec::new();
        error.encode(9, &mut out);
        assert_eq!(&out[..12], [0x03, 0x01, 0, 0, 0, 0, 0, 9, 0, 0, 0, 9]);
        assert_eq!(ErrorMessage::parse(&out[12..]), Ok(error));
    }

    #[test]
    fn error_text_is_cut_at_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_TEXT_LEN);
        let error = ErrorMessage::new(ErrorCode::Timeout, &long);
        assert!(error.text.len() <= MAX_ERROR_TEXT_LEN);
        assert_eq!(error.text.len() % 2, 0);
    }

    #[test]
    fn error_parse_rejects_non_utf8_and_keeps_unknown_codes() {
        assert_eq!(
            ErrorMessage::parse(b"\x00\x01\xff"),
            Err(MessageError::NotUtf8)
        );
        let parsed = ErrorMessage::parse(b"\x01\x00hi").unwrap();
        assert_eq!(parsed.code, ErrorCode::Other(256));
        assert!(ends_connection(0) && !ends_connection(7));
    }

    #[test]
    fn every_known_code_round_trips() {
        for code in 0..=20 {
            assert_eq!(ErrorCode::from_u16(code).to_u16(), code);
        }
    }
}
