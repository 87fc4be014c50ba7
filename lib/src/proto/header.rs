//! The fixed 12-byte frame header: field layout, [`FrameType`], [`Flags`], and a
//! [`Header::parse`] / [`Header::emit`] pair.
//!
//! ```text
//! offset  0        1        2        4                    8                    12
//!         +--------+--------+--------+--------------------+--------------------+
//!         |  type  | flags  | rsvd=0 | stream id (BE u32) | length (BE u32)    |
//!         +--------+--------+--------+--------------------+--------------------+
//!           1 byte   1 byte   2 bytes       4 bytes              4 bytes
//! ```
//!
//! Every field is a named byte range in [`field`], so the layout is stated once and both
//! directions use the same definition.

use std::fmt;

/// Header fields as byte ranges (the smoltcp `wire` convention).
pub mod field {
    use std::ops::Range;

    /// One byte: the [`FrameType`](super::FrameType).
    pub const TYPE: usize = 0;
    /// One byte: [`Flags`](super::Flags).
    pub const FLAGS: usize = 1;
    /// Two bytes that must be zero in protocol version 1.
    pub const RESERVED: Range<usize> = 2..4;
    /// Big-endian `u32`: the stream a frame belongs to (0 = the connection itself).
    pub const STREAM: Range<usize> = 4..8;
    /// Big-endian `u32`: the number of payload bytes that follow the header.
    pub const LENGTH: Range<usize> = 8..12;
}

/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = field::LENGTH.end;

/// What a frame carries. Numbers not listed here decode as [`FrameType::Unknown`] so that a
/// newer peer's frame can be answered with an error instead of killing the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Client → server, first frame: magic, supported version range, credentials.
    Hello,
    /// Server → client: the chosen version and the server's frame-size limit.
    HelloOk,
    /// Either direction: an error code and a human-readable message.
    Error,
    /// Client → server: echo the payload back.
    EchoRequest,
    /// Server → client: the payload of an [`FrameType::EchoRequest`], unchanged.
    EchoReply,
    /// Client → server (version 2): run a command on a new stream
    /// ([`ExecRequest`](crate::proto::exec::ExecRequest)).
    Exec,
    /// Server → client: the command started ([`Started`](crate::proto::exec::Started)).
    Started,
    /// Client → server: bytes for the command's stdin, within the stream's credit window.
    Stdin,
    /// Client → server: the command's stdin is finished (the pipe is closed once drained).
    StdinEof,
    /// Server → client: more stdin credit ([`Window`](crate::proto::exec::Window)).
    Window,
    /// Server → client: bytes the command wrote to stdout.
    Stdout,
    /// Server → client: bytes the command wrote to stderr.
    Stderr,
    /// Server → client, last frame of an exec stream: how the command ended
    /// ([`Exit`](crate::proto::exec::Exit)).
    Exit,
    /// Client → server: deliver a signal to the command's process group
    /// ([`SignalRequest`](crate::proto::exec::SignalRequest)).
    Signal,
    /// Client → server: a command's terminal changed size
    /// ([`Resize`](crate::proto::exec::Resize)).
    Resize,
    /// Client → server (version 2): a file's bytes
    /// ([`GetRequest`](crate::proto::files::GetRequest)).
    Get,
    /// Client → server: store a file ([`PutRequest`](crate::proto::files::PutRequest)).
    Put,
    /// Client → server: a directory's entries (payload: the path).
    List,
    /// Client → server: what a path names (payload: the path).
    Stat,
    /// Client → server: remove a file or an empty directory (payload: the path).
    Delete,
    /// Client → server: create a directory (payload: the path).
    Mkdir,
    /// Client → server: give an existing file or directory a mode and mtime
    /// ([`SetAttrsRequest`](crate::proto::files::SetAttrsRequest)).
    SetAttrs,
    /// Server → client: size, mtime, kind and known hash
    /// ([`FileInfo`](crate::proto::files::FileInfo)).
    FileInfo,
    /// Either direction: a file's bytes, in order.
    Data,
    /// Either direction: a whole file's BLAKE3 ([`Digest`](crate::proto::files::Digest)).
    Digest,
    /// Server → client: send DATA from this offset
    /// ([`PutReady`](crate::proto::files::PutReady)).
    PutReady,
    /// Server → client: a page of directory entries
    /// ([`Entries`](crate::proto::files::Entries)).
    Entries,
    /// Server → client: a DELETE, MKDIR or SET_ATTRS succeeded (empty payload).
    Done,
    /// A type number this version does not know.
    Unknown(u8),
}

impl FrameType {
    /// Decodes the type byte. Never fails: unknown numbers are kept as [`FrameType::Unknown`].
    pub const fn from_u8(byte: u8) -> FrameType {
        match byte {
            0x01 => FrameType::Hello,
            0x02 => FrameType::HelloOk,
            0x03 => FrameType::Error,
            0x10 => FrameType::EchoRequest,
            0x11 => FrameType::EchoReply,
            0x20 => FrameType::Exec,
            0x21 => FrameType::Started,
            0x22 => FrameType::Stdin,
            0x23 => FrameType::StdinEof,
            0x24 => FrameType::Window,
            0x25 => FrameType::Stdout,
            0x26 => FrameType::Stderr,
            0x27 => FrameType::Exit,
            0x28 => FrameType::Signal,
            0x29 => FrameType::Resize,
            0x30 => FrameType::Get,
            0x31 => FrameType::Put,
            0x32 => FrameType::List,
            0x33 => FrameType::Stat,
            0x34 => FrameType::Delete,
            0x35 => FrameType::Mkdir,
            0x36 => FrameType::SetAttrs,
            0x38 => FrameType::FileInfo,
            0x39 => FrameType::Data,
            0x3a => FrameType::Digest,
            0x3b => FrameType::PutReady,
            0x3c => FrameType::Entries,
            0x3d => FrameType::Done,
            other => FrameType::Unknown(other),
        }
    }

    /// The type byte on the wire.
    pub const fn to_u8(self) -> u8 {
        match self {
            FrameType::Hello => 0x01,
            FrameType::HelloOk => 0x02,
            FrameType::Error => 0x03,
            FrameType::EchoRequest => 0x10,
            FrameType::EchoReply => 0x11,
            FrameType::Exec => 0x20,
            FrameType::Started => 0x21,
            FrameType::Stdin => 0x22,
            FrameType::StdinEof => 0x23,
            FrameType::Window => 0x24,
            FrameType::Stdout => 0x25,
            FrameType::Stderr => 0x26,
            FrameType::Exit => 0x27,
            FrameType::Signal => 0x28,
            FrameType::Resize => 0x29,
            FrameType::Get => 0x30,
            FrameType::Put => 0x31,
            FrameType::List => 0x32,
            FrameType::Stat => 0x33,
            FrameType::Delete => 0x34,
            FrameType::Mkdir => 0x35,
            FrameType::SetAttrs => 0x36,
            FrameType::FileInfo => 0x38,
            FrameType::Data => 0x39,
            FrameType::Digest => 0x3a,
            FrameType::PutReady => 0x3b,
            FrameType::Entries => 0x3c,
            FrameType::Done => 0x3d,
            FrameType::Unknown(other) => other,
        }
    }
}

impl FrameType {
    /// The protocol version that introduced this frame type: a connection that agreed on an
    /// earlier one treats it as unknown.
    pub const fn since_version(self) -> u16 {
        match self {
            FrameType::Hello
            | FrameType::HelloOk
            | FrameType::Error
            | FrameType::EchoRequest
            | FrameType::EchoReply
            | FrameType::Unknown(_) => 1,
            _ => 2,
        }
    }

    /// Whether this is a file-service request from a client (GET, PUT, LIST, STAT, DELETE,
    /// MKDIR, SET_ATTRS), each of which starts a stream.
    pub const fn is_file_request(self) -> bool {
        matches!(
            self,
            FrameType::Get
                | FrameType::Put
                | FrameType::List
                | FrameType::Stat
                | FrameType::Delete
                | FrameType::Mkdir
                | FrameType::SetAttrs
        )
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameType::Hello => f.write_str("HELLO"),
            FrameType::HelloOk => f.write_str("HELLO_OK"),
            FrameType::Error => f.write_str("ERROR"),
            FrameType::EchoRequest => f.write_str("ECHO_REQUEST"),
            FrameType::EchoReply => f.write_str("ECHO_REPLY"),
            FrameType::Exec => f.write_str("EXEC"),
            FrameType::Started => f.write_str("STARTED"),
            FrameType::Stdin => f.write_str("STDIN"),
            FrameType::StdinEof => f.write_str("STDIN_EOF"),
            FrameType::Window => f.write_str("WINDOW"),
            FrameType::Stdout => f.write_str("STDOUT"),
            FrameType::Stderr => f.write_str("STDERR"),
            FrameType::Exit => f.write_str("EXIT"),
            FrameType::Signal => f.write_str("SIGNAL"),
            FrameType::Resize => f.write_str("RESIZE"),
            FrameType::Get => f.write_str("GET"),
            FrameType::Put => f.write_str("PUT"),
            FrameType::List => f.write_str("LIST"),
            FrameType::Stat => f.write_str("STAT"),
            FrameType::Delete => f.write_str("DELETE"),
            FrameType::Mkdir => f.write_str("MKDIR"),
            FrameType::SetAttrs => f.write_str("SET_ATTRS"),
            FrameType::FileInfo => f.write_str("FILE_INFO"),
            FrameType::Data => f.write_str("DATA"),
            FrameType::Digest => f.write_str("DIGEST"),
            FrameType::PutReady => f.write_str("PUT_READY"),
            FrameType::Entries => f.write_str("ENTRIES"),
            FrameType::Done => f.write_str("DONE"),
            FrameType::Unknown(byte) => write!(f, "UNKNOWN(0x{byte:02x})"),
        }
    }
}

/// The flags byte. Version 1 defines one flag; the other seven bits must be zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    /// No flags set.
    pub const NONE: Flags = Flags(0);
    /// The sender will send no more frames on this stream. Every reply that completes a request
    /// carries it; a streamed reply (exec output, later file data) carries it only on its last
    /// frame (EXIT, or a per-stream ERROR). The server ignores it on frames it receives.
    pub const END_STREAM: Flags = Flags(0x01);
    /// The bits version 1 assigns a meaning to.
    pub const KNOWN: Flags = Flags(0x01);

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Builds flags from a byte, or `None` if a bit unknown to this version is set.
    pub const fn from_bits(bits: u8) -> Option<Flags> {
        if bits & !Flags::KNOWN.0 == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// Whether every flag in `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Why a header was rejected. Each of these ends the connection: after a bad header the reader
/// no longer knows where the next frame starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The declared payload length is above the receiver's limit.
    TooLarge {
        /// The declared payload length.
        len: u32,
        /// The receiver's limit.
        max: u32,
    },
    /// A flag bit that version 1 does not define is set.
    UnknownFlags(u8),
    /// The reserved bytes are not zero.
    ReservedNonZero(u16),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge { len, max } => {
                write!(f, "frame declares {len} payload bytes, limit is {max}")
            }
            DecodeError::UnknownFlags(bits) => write!(f, "unknown flag bits 0x{bits:02x}"),
            DecodeError::ReservedNonZero(value) => {
                write!(f, "reserved header bytes are 0x{value:04x}, must be zero")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    /// What the payload is.
    pub frame_type: FrameType,
    /// Per-frame flags.
    pub flags: Flags,
    /// The stream (request) this frame belongs to; replies repeat the request's stream id.
    pub stream: u32,
    /// Number of payload bytes after the header.
    pub len: u32,
}

impl Header {
    /// Parses a header from the first [`HEADER_LEN`] bytes of `bytes`.
    ///
    /// Returns `Ok(None)` when fewer than [`HEADER_LEN`] bytes are present: that is "need more
    /// bytes", never an error. A payload length above `max_len` is rejected here, from the
    /// header alone, before anyone reserves memory for the body.
    pub fn parse(bytes: &[u8], max_len: u32) -> Result<Option<Header>, DecodeError> {
        let Some(bytes) = bytes.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let flags_byte = bytes[field::FLAGS];
        let flags = Flags::from_bits(flags_byte).ok_or(DecodeError::UnknownFlags(flags_byte))?;
        let reserved = u16::from_be_bytes([
            bytes[field::RESERVED.start],
            bytes[field::RESERVED.start + 1],
        ]);
        if reserved != 0 {
            return Err(DecodeError::ReservedNonZero(reserved));
        }
        let len = read_u32(bytes, field::LENGTH.start);
        if len > max_len {
            return Err(DecodeError::TooLarge { len, max: max_len });
        }
        Ok(Some(Header {
            frame_type: FrameType::from_u8(bytes[field::TYPE]),
            flags,
            stream: read_u32(bytes, field::STREAM.start),
            len,
        }))
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`, setting every byte
    /// including the reserved ones.
    ///
    /// # Panics
    /// If `out` is shorter than [`HEADER_LEN`]; callers size the buffer from that constant.
    pub fn emit(&self, out: &mut [u8]) {
        let out = &mut out[..HEADER_LEN];
        out[field::TYPE] = self.frame_type.to_u8();
        out[field::FLAGS] = self.flags.bits();
        out[field::RESERVED].fill(0);
        out[field::STREAM].copy_from_slice(&self.stream.to_be_bytes());
        out[field::LENGTH].copy_from_slice(&self.len.to_be_bytes());
    }

    /// The header as an array, for a writer that sends header and payload from separate
    /// buffers (a vectored write) instead of copying them together.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0; HEADER_LEN];
        self.emit(&mut bytes);
        bytes
    }

    /// Header plus payload length: the frame's size on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

fn read_u32(bytes: &[u8; HEADER_LEN], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECHO_HEADER: [u8; HEADER_LEN] = [0x10, 0x01, 0, 0, 0, 0, 0, 7, 0, 0, 0, 5];

    fn echo_header() -> Header {
        Header {
            frame_type: FrameType::EchoRequest,
            flags: Flags::END_STREAM,
            stream: 7,
            len: 5,
        }
    }

    #[test]
    fn parse_reads_every_field() {
        assert_eq!(Header::parse(&ECHO_HEADER, 1024), Ok(Some(echo_header())));
    }

    #[test]
    fn emit_sets_every_byte_of_a_dirty_buffer() {
        let mut out = [0xa5; HEADER_LEN + 4];
        echo_header().emit(&mut out);
        assert_eq!(out[..HEADER_LEN], ECHO_HEADER);
        assert_eq!(out[HEADER_LEN..], [0xa5; 4], "emit wrote past the header");
    }

    #[test]
    fn parse_of_emit_round_trips_every_type_byte() {
        for byte in 0..=u8::MAX {
            let header = Header {
                frame_type: FrameType::from_u8(byte),
                flags: Flags::NONE,
                stream: u32::MAX - u32::from(byte),
                len: u32::from(byte) * 3,
            };
            assert_eq!(header.frame_type.to_u8(), byte);
            assert_eq!(
                Header::parse(&header.to_bytes(), u32::MAX),
                Ok(Some(header))
            );
        }
    }

    #[test]
    fn parse_of_short_input_needs_more() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                Header::parse(&ECHO_HEADER[..len], 1024),
                Ok(None),
                "prefix {len}"
            );
        }
    }

    #[test]
    fn parse_rejects_oversize_from_header_alone() {
        let mut bytes = ECHO_HEADER;
        bytes[field::LENGTH].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Header::parse(&bytes, 1 << 20),
            Err(DecodeError::TooLarge {
                len: u32::MAX,
                max: 1 << 20
            })
        );
    }

    #[test]
    fn parse_accepts_length_equal_to_limit() {
        let mut bytes = ECHO_HEADER;
        bytes[field::LENGTH].copy_from_slice(&1024u32.to_be_bytes());
        assert_eq!(
            Header::parse(&bytes, 1024).map(|h| h.map(|h| h.len)),
            Ok(Some(1024))
        );
    }

    #[test]
    fn parse_rejects_unknown_flags_and_reserved_bytes() {
        let mut bytes = ECHO_HEADER;
        bytes[field::FLAGS] = 0x81;
        assert_eq!(
            Header::parse(&bytes, 1024),
            Err(DecodeError::UnknownFlags(0x81))
        );
        let mut bytes = ECHO_HEADER;
        bytes[field::RESERVED.start + 1] = 1;
        assert_eq!(
            Header::parse(&bytes, 1024),
            Err(DecodeError::ReservedNonZero(1))
        );
    }
}
