//! Payloads of the file-service frames (protocol version 2, types 0x30–0x3D): GET, PUT, LIST,
//! STAT, DELETE, MKDIR, SET_ATTRS from the client; FILE_INFO, PUT_READY, ENTRIES and DONE from the server;
//! DATA and DIGEST both ways.
//!
//! One request lives on one stream, chosen by the client:
//!
//! ```text
//! GET    path, offset      ---->
//!                          <----  FILE_INFO size, mtime, kind, hash if known
//!                          <----  DATA ... (the bytes from offset to the end)
//!                          <----  DIGEST BLAKE3 of the whole file            (END_STREAM)
//!
//! PUT    path, size, hash? ---->
//!                          <----  PUT_READY upload id, bytes the server holds
//! DATA ... (from that offset) ---->
//! DIGEST BLAKE3 of the whole file ---->
//!                          <----  DIGEST the hash the server computed         (END_STREAM)
//!
//! LIST   dir               ---->
//!                          <----  ENTRIES ... (pages; the last one has END_STREAM)
//! STAT   path              ---->  FILE_INFO                                   (END_STREAM)
//! DELETE / MKDIR path      ---->  DONE                                        (END_STREAM)
//! SET_ATTRS mode, mtime, path ->  DONE                                        (END_STREAM)
//! ```
//! Any of them may end instead with an ERROR on the stream (not found, is a directory, ...),
//! which ends only that stream.
//!
//! **Why the hash is declared up front *and* sent as a trailer.** A hash known before the
//! first byte binds a resumable upload to its content: the upload id is derived from (path,
//! size, hash), so resuming with any other file's hash finds nothing to splice onto and starts
//! over. A client streaming from a pipe cannot know the hash in advance; it leaves the hash out
//! of PUT (no resume then) and gives it only in the trailing DIGEST. The trailer is always
//! sent, so the server's check is the same in both cases: the trailer, the declared hash (if
//! any) and the hash the server computed over the bytes it wrote must all agree before the
//! file is renamed into place.
//!
//! Like the rest of [`crate::proto`], nothing here touches a file or a descriptor.

use std::fmt;

use super::message::MessageError;
use super::path::{PathError, check_len, check_relative};

/// Most file bytes in one DATA frame from the server (1 MiB), or the announced maximum payload
/// if that is smaller.
pub const DATA_FRAME_LEN: u64 = 1 << 20;

/// Most payload bytes in one ENTRIES page (64 KiB), or the announced maximum payload if that
/// is smaller.
pub const LIST_PAGE_LEN: usize = 64 << 10;

/// Length of a BLAKE3 hash.
pub const HASH_LEN: usize = 32;

/// A BLAKE3 hash.
pub type Hash = [u8; HASH_LEN];

pub use super::path::{MAX_NAME_LEN, MAX_PATH_LEN};

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

fn be_i64(bytes: &[u8], at: usize) -> i64 {
    be_u64(bytes, at) as i64
}

fn be_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn fixed(bytes: &[u8], len: usize) -> Result<&[u8], MessageError> {
    bytes.get(..len).ok_or(MessageError::Truncated {
        need: len,
        got: bytes.len(),
    })
}

/// Why a file request's payload was refused. Each is answered with `BAD_REQUEST` on the
/// request's stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileRequestError {
    /// The fixed part is cut short.
    Message(MessageError),
    /// The path is not UTF-8.
    NotUtf8,
    /// The path's syntax is refused (absolute, `..`, NUL, backslash, ...).
    Path(PathError),
    /// A PUT flag this version does not define is set.
    UnknownFlags(u8),
    /// PUT asks to resume without declaring the hash the upload is bound to.
    ResumeWithoutHash,
}

impl fmt::Display for FileRequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileRequestError::Message(error) => write!(f, "malformed request: {error}"),
            FileRequestError::NotUtf8 => f.write_str("the path is not UTF-8"),
            FileRequestError::Path(error) => error.fmt(f),
            FileRequestError::UnknownFlags(bits) => write!(f, "unknown PUT flags 0x{bits:02x}"),
            FileRequestError::ResumeWithoutHash => {
                f.write_str("PUT asks to resume but declares no hash to bind the upload to")
            }
        }
    }
}

impl std::error::Error for FileRequestError {}

impl From<MessageError> for FileRequestError {
    fn from(error: MessageError) -> FileRequestError {
        FileRequestError::Message(error)
    }
}

/// Checks a request path: length, UTF-8, then [`check_relative`].
pub fn parse_path(bytes: &[u8]) -> Result<&str, FileRequestError> {
    check_len(bytes.len()).map_err(FileRequestError::Path)?;
    let path = std::str::from_utf8(bytes).map_err(|_| FileRequestError::NotUtf8)?;
    check_relative(path).map_err(FileRequestError::Path)?;
    Ok(path)
}

/// Name prefix of a resumable upload's partial file; 16 lowercase hex digits of the upload id
/// follow. The only server name a client may address, and only to DELETE it.
pub const PARTIAL_PREFIX: &str = ".monoreactor-partial-";

/// The upload id in a partial file's name, if `name` is one.
pub fn partial_id(name: &str) -> Option<u64> {
    let hex = name.strip_prefix(PARTIAL_PREFIX)?;
    let lower_hex = |byte: u8| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte);
    if hex.len() != 16 || !hex.bytes().all(lower_hex) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A DELETE's path: any path [`parse_path`] takes, or one whose last component names a
/// partial upload (its parent passing the same checks).
pub fn parse_delete_path(bytes: &[u8]) -> Result<&str, FileRequestError> {
    let refused = match parse_path(bytes) {
        Ok(path) => return Ok(path),
        Err(refused) => refused,
    };
    let Ok(path) = std::str::from_utf8(bytes) else {
        return Err(refused);
    };
    let (parent, name) = match path.rsplit_once('/') {
        // `/name`: the parent would be the empty path, which `check_relative` takes for the
        // root — but a leading `/` makes the path absolute, which every request refuses.
        Some(("", _)) => return Err(refused),
        Some(split) => split,
        None => ("", path),
    };
    if bytes.len() <= MAX_PATH_LEN && partial_id(name).is_some() && check_relative(parent).is_ok() {
        return Ok(path);
    }
    Err(refused)
}

/// GET payload fields; the path follows the offset.
///
/// ```text
/// offset 0                   8
///        +-------------------+---------------------
///        | offset (BE u64)   | path (UTF-8, the rest)
///        +-------------------+---------------------
/// ```
pub mod get_field {
    use std::ops::Range;
    /// The first byte to send (BE u64); 0 for the whole file.
    pub const OFFSET: Range<usize> = 0..8;
    /// The path starts here and runs to the end of the payload.
    pub const PATH: usize = 8;
}

/// GET: a file's bytes from `offset` to its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GetRequest<'a> {
    /// First byte wanted (a resumed download asks for what it lacks).
    pub offset: u64,
    /// The file, relative to the root.
    pub path: &'a str,
}

impl<'a> GetRequest<'a> {
    /// Parses a GET payload.
    pub fn parse(payload: &'a [u8]) -> Result<GetRequest<'a>, FileRequestError> {
        let head = fixed(payload, get_field::PATH)?;
        Ok(GetRequest {
            offset: be_u64(head, get_field::OFFSET.start),
            path: parse_path(&payload[get_field::PATH..])?,
        })
    }

    /// Payload length.
    pub fn payload_len(&self) -> usize {
        get_field::PATH + self.path.len()
    }

    /// Writes the payload into `out[..self.payload_len()]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[get_field::OFFSET].copy_from_slice(&self.offset.to_be_bytes());
        out[get_field::PATH..self.payload_len()].copy_from_slice(self.path.as_bytes());
    }
}

/// PUT flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PutFlags(u8);

impl PutFlags {
    /// The hash is unknown until the trailing DIGEST; the upload cannot be resumed.
    pub const NONE: PutFlags = PutFlags(0);
    /// The hash field holds the whole file's BLAKE3: the upload is resumable, bound to (path,
    /// size, hash).
    pub const HASH_DECLARED: PutFlags = PutFlags(0x01);
    /// Continue an interrupted upload of the same (path, size, hash) from what the server
    /// holds; needs [`PutFlags::HASH_DECLARED`].
    pub const RESUME: PutFlags = PutFlags(0x02);
    /// `mode` and `mtime_ns` follow the hash (12 bytes, before the path): the server gives
    /// the file that mode (permission bits only) and modification time when it commits it.
    pub const ATTRS: PutFlags = PutFlags(0x04);
    /// A tree transfer defers durability: the file is committed (renamed into place, atomic
    /// for every reader) without its own `fsync` nor its directory's; a later PUT with
    /// [`PutFlags::SYNC_FS`] makes it durable.
    pub const DEFER_SYNC: PutFlags = PutFlags(0x08);
    /// The commit syncs the whole file system holding the file (`syncfs`) instead of the file
    /// and its directory: when its DIGEST comes, this file and every upload committed before
    /// it on that file system (those with [`PutFlags::DEFER_SYNC`] included) are durable.
    pub const SYNC_FS: PutFlags = PutFlags(0x10);
    /// The flags this version defines.
    pub const KNOWN: PutFlags = PutFlags(0x1f);

    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: PutFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` with the flags of `other` added.
    pub const fn with(self, other: PutFlags) -> PutFlags {
        PutFlags(self.0 | other.0)
    }
}

/// PUT payload fields; the path follows the hash, or with `ATTRS` the mode and mtime.
///
/// ```text
/// offset 0               8       9                   41
///        +---------------+-------+-------------------+---------------------
///        | size (BE u64) | flags | BLAKE3 (32 bytes) | path (UTF-8, the rest)
///        +---------------+-------+-------------------+---------------------
/// with ATTRS:                                        41           45             53
///                                                    +------------+--------------+------
///                                                    | mode (u32) | mtime ns i64 | path
///                                                    +------------+--------------+------
/// ```
pub mod put_field {
    use std::ops::Range;
    /// The file's exact size (BE u64).
    pub const SIZE: Range<usize> = 0..8;
    /// [`PutFlags`](super::PutFlags).
    pub const FLAGS: usize = 8;
    /// The whole file's BLAKE3 if `HASH_DECLARED`, else zeros.
    pub const HASH: Range<usize> = 9..41;
    /// The path starts here and runs to the end of the payload (without `ATTRS`).
    pub const PATH: usize = 41;
    /// With `ATTRS`: the file's mode (BE u32; the server keeps the permission bits `0o777`).
    pub const MODE: Range<usize> = 41..45;
    /// With `ATTRS`: its modification time, ns since the Unix epoch (BE i64).
    pub const MTIME_NS: Range<usize> = 45..53;
    /// With `ATTRS`, the path starts here.
    pub const PATH_AFTER_ATTRS: usize = 53;
}

/// The mode and mtime a PUT with `ATTRS` gives its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutAttrs {
    /// The mode as sent; the server applies its permission bits only (`& 0o777`): never
    /// setuid, setgid or sticky from a client.
    pub mode: u32,
    /// The modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// PUT: the client will send exactly `size` bytes for `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutRequest<'a> {
    /// The file's exact size.
    pub size: u64,
    /// What the client knows and wants.
    pub flags: PutFlags,
    /// The declared hash (`HASH_DECLARED`), or `None`.
    pub hash: Option<Hash>,
    /// The mode and mtime to give the file (`ATTRS`), or `None`.
    pub attrs: Option<PutAttrs>,
    /// The file, relative to the root.
    pub path: &'a str,
}

impl<'a> PutRequest<'a> {
    /// Parses a PUT payload.
    pub fn parse(payload: &'a [u8]) -> Result<PutRequest<'a>, FileRequestError> {
        let head = fixed(payload, put_field::PATH)?;
        let flags = PutFlags(head[put_field::FLAGS]);
        if flags.0 & !PutFlags::KNOWN.0 != 0 {
            return Err(FileRequestError::UnknownFlags(flags.0));
        }
        let declared = flags.contains(PutFlags::HASH_DECLARED);
        if flags.contains(PutFlags::RESUME) && !declared {
            return Err(FileRequestError::ResumeWithoutHash);
        }
        let hash = declared.then(|| {
            let mut hash = [0; HASH_LEN];
            hash.copy_from_slice(&head[put_field::HASH]);
            hash
        });
        let (attrs, path_at) = if flags.contains(PutFlags::ATTRS) {
            let head = fixed(payload, put_field::PATH_AFTER_ATTRS)?;
            let mut mode = [0; 4];
            mode.copy_from_slice(&head[put_field::MODE]);
            let attrs = PutAttrs {
                mode: u32::from_be_bytes(mode),
                mtime_ns: be_i64(head, put_field::MTIME_NS.start),
            };
            (Some(attrs), put_field::PATH_AFTER_ATTRS)
        } else {
            (None, put_field::PATH)
        };
        Ok(PutRequest {
            size: be_u64(head, put_field::SIZE.start),
            flags,
            hash,
            attrs,
            path: parse_path(&payload[path_at..])?,
        })
    }

    /// Where the path starts.
    fn path_at(&self) -> usize {
        if self.attrs.is_some() {
            put_field::PATH_AFTER_ATTRS
        } else {
            put_field::PATH
        }
    }

    /// Payload length.
    pub fn payload_len(&self) -> usize {
        self.path_at() + self.path.len()
    }

    /// Writes the payload into `out[..self.payload_len()]`. The `HASH_DECLARED` flag follows
    /// `hash`, and `ATTRS` follows `attrs`.
    pub fn emit(&self, out: &mut [u8]) {
        let mut flags = self.flags;
        flags.0 &= !(PutFlags::HASH_DECLARED.0 | PutFlags::ATTRS.0);
        if self.hash.is_some() {
            flags = flags.with(PutFlags::HASH_DECLARED);
        }
        out[put_field::SIZE].copy_from_slice(&self.size.to_be_bytes());
        out[put_field::HASH].copy_from_slice(&self.hash.unwrap_or([0; HASH_LEN]));
        if let Some(attrs) = self.attrs {
            flags = flags.with(PutFlags::ATTRS);
            out[put_field::MODE].copy_from_slice(&attrs.mode.to_be_bytes());
            out[put_field::MTIME_NS].copy_from_slice(&attrs.mtime_ns.to_be_bytes());
        }
        out[put_field::FLAGS] = flags.0;
        out[self.path_at()..self.payload_len()].copy_from_slice(self.path.as_bytes());
    }
}

/// SET_ATTRS payload fields: the mode, the mtime, then the path.
///
/// ```text
/// offset 0            4                   12
///        +------------+-------------------+---------------------
///        | mode (u32) | mtime ns (BE i64) | path (UTF-8, the rest)
///        +------------+-------------------+---------------------
/// ```
pub mod set_attrs_field {
    use std::ops::Range;
    /// The mode (BE u32); the server keeps the permission bits, `mode & 0o777`.
    pub const MODE: Range<usize> = 0..4;
    /// The modification time, ns since the Unix epoch (BE i64, signed).
    pub const MTIME_NS: Range<usize> = 4..12;
    /// The path starts here and runs to the end of the payload.
    pub const PATH: usize = 12;
}

/// SET_ATTRS: give an existing regular file or directory a mode (permission bits only) and a
/// modification time, as a PUT with `ATTRS` gives the file it stores. What `put -r -p` sends
/// for each directory once everything inside it is stored (writing a file moves its
/// directory's mtime), deepest first, and for a file `--continue` skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetAttrsRequest<'a> {
    /// The mode and the mtime, as PUT's `ATTRS` carries them.
    pub attrs: PutAttrs,
    /// The file or directory, relative to the root (never the root itself).
    pub path: &'a str,
}

impl<'a> SetAttrsRequest<'a> {
    /// Parses a SET_ATTRS payload.
    pub fn parse(payload: &'a [u8]) -> Result<SetAttrsRequest<'a>, FileRequestError> {
        let head = fixed(payload, set_attrs_field::PATH)?;
        let mut mode = [0; 4];
        mode.copy_from_slice(&head[set_attrs_field::MODE]);
        Ok(SetAttrsRequest {
            attrs: PutAttrs {
                mode: u32::from_be_bytes(mode),
                mtime_ns: be_i64(head, set_attrs_field::MTIME_NS.start),
            },
            path: parse_path(&payload[set_attrs_field::PATH..])?,
        })
    }

    /// Payload length.
    pub fn payload_len(&self) -> usize {
        set_attrs_field::PATH + self.path.len()
    }

    /// Writes the payload into `out[..self.payload_len()]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[set_attrs_field::MODE].copy_from_slice(&self.attrs.mode.to_be_bytes());
        out[set_attrs_field::MTIME_NS].copy_from_slice(&self.attrs.mtime_ns.to_be_bytes());
        out[set_attrs_field::PATH..self.payload_len()].copy_from_slice(self.path.as_bytes());
    }

    /// The payload, in a vector of its own.
    pub fn to_payload(&self) -> Vec<u8> {
        let mut payload = vec![0; self.payload_len()];
        self.emit(&mut payload);
        payload
    }
}

/// What a file request's path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (listed, never followed).
    Symlink,
    /// Anything else (a socket, a FIFO, a device).
    Other,
    /// An unfinished resumable upload ([`PARTIAL_PREFIX`]): its size is the bytes held, its
    /// mtime the last write. Listed so it can be seen and removed (DELETE of its path).
    Partial,
}

impl FileKind {
    /// The wire byte.
    pub const fn to_u8(self) -> u8 {
        match self {
            FileKind::File => 0,
            FileKind::Directory => 1,
            FileKind::Symlink => 2,
            FileKind::Other => 3,
            FileKind::Partial => 4,
        }
    }

    /// Decodes the wire byte; unknown values read as `Other`.
    pub const fn from_u8(byte: u8) -> FileKind {
        match byte {
            0 => FileKind::File,
            1 => FileKind::Directory,
            2 => FileKind::Symlink,
            4 => FileKind::Partial,
            _ => FileKind::Other,
        }
    }

    /// A one-letter tag for listings (`-`, `d`, `l`, `?`, as `ls -l` shows them; `u` for a
    /// partial upload).
    pub const fn letter(self) -> char {
        match self {
            FileKind::File => '-',
            FileKind::Directory => 'd',
            FileKind::Symlink => 'l',
            FileKind::Other => '?',
            FileKind::Partial => 'u',
        }
    }
}

/// FILE_INFO payload fields.
///
/// ```text
/// offset 0               8                   16     17      18                  50
///        +---------------+-------------------+------+-------+-------------------+
///        | size (BE u64) | mtime ns (BE i64) | kind | flags | BLAKE3 (32 bytes) |
///        +---------------+-------------------+------+-------+-------------------+
/// ```
pub mod info_field {
    use std::ops::Range;
    /// Size in bytes (BE u64).
    pub const SIZE: Range<usize> = 0..8;
    /// Modification time, nanoseconds since the Unix epoch (BE i64).
    pub const MTIME_NS: Range<usize> = 8..16;
    /// [`FileKind`](super::FileKind).
    pub const KIND: usize = 16;
    /// Bit 0: the hash field holds the file's BLAKE3 (the server already knew it).
    pub const FLAGS: usize = 17;
    /// The whole file's BLAKE3, or zeros.
    pub const HASH: Range<usize> = 18..50;
    /// After the 50 bytes, in GET's and STAT's FILE_INFO from a server of this version: the
    /// permission bits (BE u32, `st_mode & 0o777`). A client must not require them.
    pub const MODE: Range<usize> = 50..54;
}

/// FILE_INFO: what GET's header and STAT's answer say about a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// What the path names.
    pub kind: FileKind,
    /// The whole file's BLAKE3 if the server already knew it (from a put or its cache).
    pub hash: Option<Hash>,
}

impl FileInfo {
    /// Payload length of FILE_INFO.
    pub const PAYLOAD_LEN: usize = info_field::HASH.end;
    const HASH_KNOWN: u8 = 0x01;

    /// Payload length of GET's and STAT's FILE_INFO, with the mode after the 50 bytes.
    pub const WITH_MODE_LEN: usize = info_field::MODE.end;

    /// The mode after the 50 bytes (GET's and STAT's FILE_INFO), if the payload has it: a
    /// server before this version sends 50 bytes, and a later one may send more.
    pub fn parse_mode(payload: &[u8]) -> Option<u32> {
        let bytes = payload.get(info_field::MODE)?;
        let mut mode = [0; 4];
        mode.copy_from_slice(bytes);
        Some(u32::from_be_bytes(mode))
    }

    /// Writes `mode` after the 50 bytes: `out[50..54]`.
    pub fn emit_mode(mode: u32, out: &mut [u8]) {
        out[info_field::MODE].copy_from_slice(&mode.to_be_bytes());
    }

    /// Parses a FILE_INFO payload; bytes after the known fields are ignored.
    pub fn parse(payload: &[u8]) -> Result<FileInfo, MessageError> {
        let head = fixed(payload, Self::PAYLOAD_LEN)?;
        let hash = (head[info_field::FLAGS] & Self::HASH_KNOWN != 0).then(|| {
            let mut hash = [0; HASH_LEN];
            hash.copy_from_slice(&head[info_field::HASH]);
            hash
        });
        Ok(FileInfo {
            size: be_u64(head, info_field::SIZE.start),
            mtime_ns: be_i64(head, info_field::MTIME_NS.start),
            kind: FileKind::from_u8(head[info_field::KIND]),
            hash,
        })
    }

    /// Writes the payload into `out[..FileInfo::PAYLOAD_LEN]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[info_field::SIZE].copy_from_slice(&self.size.to_be_bytes());
        out[info_field::MTIME_NS].copy_from_slice(&self.mtime_ns.to_be_bytes());
        out[info_field::KIND] = self.kind.to_u8();
        out[info_field::FLAGS] = if self.hash.is_some() {
            Self::HASH_KNOWN
        } else {
            0
        };
        out[info_field::HASH].copy_from_slice(&self.hash.unwrap_or([0; HASH_LEN]));
    }
}

/// DIGEST: a whole file's BLAKE3 (32 bytes), the last frame of a transfer in either direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    /// The hash.
    pub hash: Hash,
}

impl Digest {
    /// Payload length of DIGEST.
    pub const PAYLOAD_LEN: usize = HASH_LEN;

    /// Parses a DIGEST payload, which must be exactly 32 bytes.
    pub fn parse(payload: &[u8]) -> Result<Digest, MessageError> {
        if payload.len() > HASH_LEN {
            return Err(MessageError::TooLong {
                len: payload.len(),
                max: HASH_LEN,
            });
        }
        let head = fixed(payload, HASH_LEN)?;
        let mut hash = [0; HASH_LEN];
        hash.copy_from_slice(head);
        Ok(Digest { hash })
    }

    /// Writes the payload into `out[..Digest::PAYLOAD_LEN]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[..HASH_LEN].copy_from_slice(&self.hash);
    }
}

/// PUT_READY payload fields.
///
/// ```text
/// offset 0                    8                    16
///        +--------------------+--------------------+
///        | upload id (BE u64) | held (BE u64)      |
///        +--------------------+--------------------+
/// ```
pub mod ready_field {
    use std::ops::Range;
    /// The upload's id, derived from (path, size, hash); 0 for an upload that cannot resume.
    pub const UPLOAD_ID: Range<usize> = 0..8;
    /// Bytes the server already holds: the client sends from this offset.
    pub const HELD: Range<usize> = 8..16;
}

/// PUT_READY: the server will take DATA from offset `held`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutReady {
    /// The upload's id (0: not resumable).
    pub upload_id: u64,
    /// Bytes of this upload the server already holds, verified to be a prefix of the upload
    /// that has this id.
    pub held: u64,
}

impl PutReady {
    /// Payload length of PUT_READY.
    pub const PAYLOAD_LEN: usize = ready_field::HELD.end;

    /// Parses a PUT_READY payload.
    pub fn parse(payload: &[u8]) -> Result<PutReady, MessageError> {
        let head = fixed(payload, Self::PAYLOAD_LEN)?;
        Ok(PutReady {
            upload_id: be_u64(head, ready_field::UPLOAD_ID.start),
            held: be_u64(head, ready_field::HELD.start),
        })
    }

    /// Writes the payload into `out[..PutReady::PAYLOAD_LEN]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[ready_field::UPLOAD_ID].copy_from_slice(&self.upload_id.to_be_bytes());
        out[ready_field::HELD].copy_from_slice(&self.held.to_be_bytes());
    }
}

/// One entry of an ENTRIES page:
///
/// ```text
/// offset 0      1               9                   17            19
///        +------+---------------+-------------------+-------------+-----------------
///        | kind | size (BE u64) | mtime ns (BE i64) | name_len u16| name (UTF-8)
///        +------+---------------+-------------------+-------------+-----------------
/// ```
pub mod entry_field {
    use std::ops::Range;
    /// [`FileKind`](super::FileKind).
    pub const KIND: usize = 0;
    /// Size in bytes (BE u64).
    pub const SIZE: Range<usize> = 1..9;
    /// Modification time, ns since the epoch (BE i64).
    pub const MTIME_NS: Range<usize> = 9..17;
    /// Length of the name that follows (BE u16).
    pub const NAME_LEN: Range<usize> = 17..19;
    /// The name starts here.
    pub const NAME: usize = 19;
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// Its name within the directory.
    pub name: &'a str,
    /// What it is (a symlink is reported as one, never followed).
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
}

impl DirEntry<'_> {
    /// Bytes this entry takes in a page.
    pub fn wire_len(&self) -> usize {
        entry_field::NAME + self.name.len()
    }

    /// Writes the entry into `out[..self.wire_len()]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[entry_field::KIND] = self.kind.to_u8();
        out[entry_field::SIZE].copy_from_slice(&self.size.to_be_bytes());
        out[entry_field::MTIME_NS].copy_from_slice(&self.mtime_ns.to_be_bytes());
        out[entry_field::NAME_LEN].copy_from_slice(&(self.name.len() as u16).to_be_bytes());
        out[entry_field::NAME..self.wire_len()].copy_from_slice(self.name.as_bytes());
    }
}

/// The entries of one ENTRIES payload, in order.
#[derive(Clone, Debug)]
pub struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    /// Iterates over an ENTRIES payload.
    pub fn new(payload: &'a [u8]) -> Entries<'a> {
        Entries { rest: payload }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<DirEntry<'a>, MessageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let entry = (|| {
            let head = fixed(self.rest, entry_field::NAME)?;
            let name_len = usize::from(be_u16(head, entry_field::NAME_LEN.start));
            let end = entry_field::NAME + name_len;
            let name = self
                .rest
                .get(entry_field::NAME..end)
                .ok_or(MessageError::Truncated {
                    need: end,
                    got: self.rest.len(),
                })?;
            let name = std::str::from_utf8(name).map_err(|_| MessageError::NotUtf8)?;
            let entry = DirEntry {
                name,
                kind: FileKind::from_u8(head[entry_field::KIND]),
                size: be_u64(head, entry_field::SIZE.start),
                mtime_ns: be_i64(head, entry_field::MTIME_NS.start),
            };
            self.rest = &self.rest[end..];
            Ok(entry)
        })();
        if entry.is_err() {
            self.rest = &[];
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_round_trips_and_checks_the_path() {
        let request = GetRequest {
            offset: 7,
            path: "a/b.txt",
        };
        let mut out = vec![0; request.payload_len()];
        request.emit(&mut out);
        assert_eq!(GetRequest::parse(&out), Ok(request));
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "a\\..\\x",
            "a\0b",
            "a//b",
        ] {
            let mut payload = vec![0; 8];
            payload.extend_from_slice(bad.as_bytes());
            assert!(
                matches!(GetRequest::parse(&payload), Err(FileRequestError::Path(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            GetRequest::parse(&[0; 7]),
            Err(FileRequestError::Message(_))
        ));
        let mut not_utf8 = vec![0; 8];
        not_utf8.push(0xff);
        assert_eq!(GetRequest::parse(&not_utf8), Err(FileRequestError::NotUtf8));
    }

    #[test]
    fn put_round_trips_and_resume_needs_a_hash() {
        let request = PutRequest {
            size: 1 << 33,
            flags: PutFlags::RESUME.with(PutFlags::HASH_DECLARED),
            hash: Some([7; HASH_LEN]),
            attrs: None,
            path: "dir/file",
        };
        let mut out = vec![0; request.payload_len()];
        request.emit(&mut out);
        assert_eq!(PutRequest::parse(&out), Ok(request));

        let mut no_hash = out.clone();
        no_hash[put_field::FLAGS] = PutFlags::RESUME.bits();
        assert_eq!(
            PutRequest::parse(&no_hash),
            Err(FileRequestError::ResumeWithoutHash)
        );
        let mut unknown = out;
        unknown[put_field::FLAGS] = 0x80;
        assert_eq!(
            PutRequest::parse(&unknown),
            Err(FileRequestError::UnknownFlags(0x80))
        );
    }

    #[test]
    fn put_attrs_sit_between_the_hash_and_the_path_and_flags_for_trees_parse() {
        let request = PutRequest {
            size: 5,
            flags: PutFlags::DEFER_SYNC,
            hash: Some([9; HASH_LEN]),
            attrs: Some(PutAttrs {
                mode: 0o4755,
                mtime_ns: -1_234_567_890,
            }),
            path: "a/b",
        };
        let mut out = vec![0; request.payload_len()];
        request.emit(&mut out);
        assert_eq!(out.len(), 53 + 3);
        assert_eq!(
            out[put_field::FLAGS],
            (PutFlags::HASH_DECLARED
                .with(PutFlags::ATTRS)
                .with(PutFlags::DEFER_SYNC))
            .bits()
        );
        assert_eq!(out[put_field::MODE], 0o4755u32.to_be_bytes());
        assert_eq!(out[put_field::MTIME_NS], (-1_234_567_890i64).to_be_bytes());
        assert_eq!(&out[put_field::PATH_AFTER_ATTRS..], b"a/b");
        let parsed = PutRequest::parse(&out).unwrap();
        assert_eq!(
            parsed,
            PutRequest {
                flags: PutFlags::HASH_DECLARED
                    .with(PutFlags::ATTRS)
                    .with(PutFlags::DEFER_SYNC),
                ..request
            }
        );
        // ATTRS announced, but the payload ends inside them: refused, not read as a path.
        let mut short = out[..put_field::PATH + 4].to_vec();
        short[put_field::FLAGS] = PutFlags::ATTRS.bits();
        assert!(matches!(
            PutRequest::parse(&short),
            Err(FileRequestError::Message(_))
        ));
        // SYNC_FS is known; a bit above it is not.
        let mut sync = out.clone();
        sync[put_field::FLAGS] = PutFlags::SYNC_FS.with(PutFlags::ATTRS).bits();
        let parsed = PutRequest::parse(&sync).unwrap();
        assert!(parsed.flags.contains(PutFlags::SYNC_FS) && parsed.hash.is_none());
        assert_eq!(parsed.path, "a/b");
        sync[put_field::FLAGS] = 0x20 | PutFlags::ATTRS.bits();
        assert_eq!(
            PutRequest::parse(&sync),
            Err(FileRequestError::UnknownFlags(0x24))
        );
    }

    #[test]
    fn set_attrs_round_trips_keeps_odd_values_and_checks_the_path() {
        for attrs in [
            PutAttrs {
                mode: 0o750,
                mtime_ns: 1_735_689_600_000_000_000,
            },
            // Whatever the bits and however far from 1970 either way: the codec carries
            // them; what the server keeps is its business (`mode & 0o777`).
            PutAttrs {
                mode: 0o4_7777 | 0xffff_0000,
                mtime_ns: -86_400_000_000_123,
            },
            PutAttrs {
                mode: 0,
                mtime_ns: i64::MAX,
            },
        ] {
            let request = SetAttrsRequest {
                attrs,
                path: "t/sub",
            };
            let payload = request.to_payload();
            assert_eq!(payload.len(), 12 + 5);
            assert_eq!(&payload[set_attrs_field::PATH..], b"t/sub");
            assert_eq!(SetAttrsRequest::parse(&payload), Ok(request));
        }
        assert_eq!(
            SetAttrsRequest::parse(&[0; 11]),
            Err(FileRequestError::Message(MessageError::Truncated {
                need: 12,
                got: 11
            }))
        );
        let mut dotdot = vec![0; 12];
        dotdot.extend_from_slice(b"a/../b");
        assert!(matches!(
            SetAttrsRequest::parse(&dotdot),
            Err(FileRequestError::Path(_))
        ));
        // The empty path parses (it names the root); the server refuses it, not the codec.
        assert_eq!(SetAttrsRequest::parse(&[0; 12]).map(|r| r.path), Ok(""));
    }

    #[test]
    fn info_ready_and_digest_round_trip() {
        let info = FileInfo {
            size: 65_536,
            mtime_ns: -5,
            kind: FileKind::File,
            hash: Some([3; HASH_LEN]),
        };
        let mut out = [0; FileInfo::PAYLOAD_LEN];
        info.emit(&mut out);
        assert_eq!(FileInfo::parse(&out), Ok(info));
        let unknown = FileInfo { hash: None, ..info };
        let mut with_mode = [0; FileInfo::WITH_MODE_LEN];
        info.emit(&mut with_mode);
        FileInfo::emit_mode(0o640, &mut with_mode);
        assert_eq!(FileInfo::parse(&with_mode), Ok(info));
        assert_eq!(FileInfo::parse_mode(&with_mode), Some(0o640));
        assert_eq!(FileInfo::parse_mode(&out), None);
        unknown.emit(&mut out);
        assert_eq!(FileInfo::parse(&out), Ok(unknown));

        let ready = PutReady {
            upload_id: 0xdead_beef,
            held: 12,
        };
        let mut out = [0; PutReady::PAYLOAD_LEN];
        ready.emit(&mut out);
        assert_eq!(PutReady::parse(&out), Ok(ready));

        let digest = Digest { hash: [9; 32] };
        let mut out = [0; 32];
        digest.emit(&mut out);
        assert_eq!(Digest::parse(&out), Ok(digest));
        assert!(Digest::parse(&out[..31]).is_err());
        assert!(Digest::parse(&[0; 33]).is_err());
    }

    #[test]
    fn entries_round_trip_and_stop_at_a_cut() {
        let entries = [
            DirEntry {
                name: "a",
                kind: FileKind::File,
                size: 1,
                mtime_ns: 2,
            },
            DirEntry {
                name: "sub dir",
                kind: FileKind::Directory,
                size: 4096,
                mtime_ns: 3,
            },
        ];
        let mut page = Vec::new();
        for entry in &entries {
            let at = page.len();
            page.resize(at + entry.wire_len(), 0);
            entry.emit(&mut page[at..]);
        }
        let parsed: Vec<_> = Entries::new(&page).collect::<Result<_, _>>().unwrap();
        assert_eq!(parsed, entries);
        for cut in 1..page.len() {
            let results: Vec<_> = Entries::new(&page[..cut]).collect();
            let complete = results.iter().filter(|entry| entry.is_ok()).count();
            assert!(complete < 2, "cut {cut}");
            if cut != entries[0].wire_len() {
                assert!(
                    results.last().is_some_and(|last| last.is_err()),
                    "cut {cut}"
                );
            }
        }
    }
}
