//! The disk, as the file service sees it: the [`Disk`] trait, and the vocabulary that crosses
//! it.
//!
//! The file service reaches the disk the way exec reaches processes through
//! [`Children`](crate::service::exec::Children): through a trait, with handles instead of
//! descriptors. The connection (its stream table, `conn/streams/`) and the service's state machines
//! ([`crate::service::files`], [`crate::service::upload`]) ask for what a request needs — open
//! this file, write these bytes of that upload, make it durable, publish it — and hear back
//! metadata, handles, errors as the client will hear them ([`FileError`], [`DiskError`]), and
//! the ids of blocking calls handed off the loop ([`JobId`]) whose completions come back later
//! as [`JobDone`]s. The I/O layer implements it (`Files`, in `sys/files.rs`: `openat2`
//! beneath the root, the upload's lock and partial, the hash cache, the disk helper's jobs);
//! tests script it ([`crate::testkit::ScriptedDisk`], which can make a write, an `fsync` or a
//! rename fail).
//!
//! **What crosses.** Paths as the client sent them (already checked), [`FileMeta`], bytes to
//! write and buffers to read into, and opaque handles: an [`UploadHandle`] and a
//! [`ListingHandle`] are numbers the implementation gave out, valid until they are given back
//! ([`Disk::release_upload`], [`Disk::publish`], [`Disk::discard`], [`Disk::close_listing`]), as a
//! [`ChildId`](crate::service::exec::ChildId) is until its release. So is a
//! [`TransferPermit`], the transfer's place in the server's limit ([`Disk::end_transfer`]).
//!
//! **The one descriptor that crosses** is a GET's file ([`OpenedFile::file`], a shared
//! [`File`]): its DATA frames are ranges of it in the outbox
//! ([`FileRange`](crate::outbox::FileRange)), which the transport sends with `sendfile` from
//! the page cache, without the bytes ever entering the server's memory. Everything else done
//! to it — hashing reads, the check that it did not change — goes through the trait
//! ([`Disk::read_at`], [`Disk::unchanged`]).
//!
//! **Time.** An implementation never reads the clock: the wall clock it needs (the age of
//! leftovers, a fresh trash name) is the loop's, read once per turn
//! ([`WallClock`]), and a hash is stored as of the time the caller
//! says ([`Disk::store_hash`]).

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io;
use std::sync::Arc;

use crate::proto::ErrorCode;
use crate::proto::files::{FileInfo, FileKind, Hash, PutAttrs, PutRequest};
use crate::timer::WallClock;

/// One blocking disk call handed off the loop, as [`Disk`] numbered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "disk job {}", self.0)
    }
}

/// What a disk job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// `fsync`: data and metadata durable.
    Fsync,
    /// `fdatasync`: data (and the metadata needed to read it) durable.
    Fdatasync,
    /// `sync_file_range(WRITE)` of the whole file: writeback started, nothing made durable.
    Writeback,
    /// `unlinkat`: a name removed (the blocks of a deleted or replaced file freed).
    Unlink,
    /// A write of an upload's bytes into its file.
    Write,
    /// `syncfs`: everything written to the file system durable (a tree upload's one sync,
    /// `PUT` flag `SYNC_FS`).
    Syncfs,
}

/// Why a disk call failed, as the client will hear it: the code for its ERROR frame and the
/// reason in words. The path is added by whoever knows it ([`DiskError::on`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskError {
    code: ErrorCode,
    reason: Cow<'static, str>,
    os_error: Option<i32>,
}

impl DiskError {
    /// A failure with `code` and `reason`; `os_error` is the system's error number, when the
    /// failure is one (it is what [`Display`](fmt::Display) shows, as `std::io::Error` would).
    pub fn new(
        code: ErrorCode,
        reason: impl Into<Cow<'static, str>>,
        os_error: Option<i32>,
    ) -> Self {
        DiskError {
            code,
            reason: reason.into(),
            os_error,
        }
    }

    /// The error code for the stream's ERROR frame.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The failure of an operation on `path` (what the client asked about; the root when
    /// empty), as the client will hear it.
    pub fn on(&self, path: &str) -> FileError {
        let shown = if path.is_empty() { "/" } else { path };
        FileError::new(self.code, format!("{shown}: {}", self.reason))
    }
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.os_error {
            Some(raw) => io::Error::from_raw_os_error(raw).fmt(f),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for DiskError {}

/// A finished disk job, as the connection that submitted it hears of it
/// ([`Connection::handle_disk_done`](crate::conn::Connection::handle_disk_done)).
#[derive(Debug, PartialEq, Eq)]
pub struct JobDone {
    /// The job, as [`Disk`] numbered it when it was handed over.
    pub id: JobId,
    /// What it did.
    pub kind: JobKind,
    /// How the call went.
    pub result: Result<(), DiskError>,
}

/// A blocking call the caller waits for: handed off the loop, or already made.
#[derive(Debug, PartialEq, Eq)]
pub enum Pending {
    /// Handed off as this job: its [`JobDone`] comes later, never within the call that
    /// submitted it.
    Job(JobId),
    /// Made at once (no disk helper in reach, or a failure before it could be handed over).
    Done(Result<(), DiskError>),
}

/// A file operation's failure, as the client will hear it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    /// The error code for the stream's ERROR frame.
    pub code: ErrorCode,
    /// The text, naming the path.
    pub text: String,
}

impl FileError {
    /// A failure with `code` and `text`.
    pub fn new(code: ErrorCode, text: impl Into<String>) -> FileError {
        FileError {
            code,
            text: text.into(),
        }
    }
}

/// What `stat` says of a file, in the protocol's terms plus its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Inode change time, ns since the epoch: moved by every write, truncation, link, rename
    /// or metadata change, and, unlike the mtime, impossible to set back.
    pub ctime_ns: i64,
    /// What it is.
    pub kind: FileKind,
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl FileMeta {
    /// The protocol's view, with `hash` if known.
    pub fn info(&self, hash: Option<Hash>) -> FileInfo {
        FileInfo {
            size: self.size,
            mtime_ns: self.mtime_ns,
            kind: self.kind,
            hash,
        }
    }
}

/// One running transfer's place among the server's `--max-transfers`
/// ([`Disk::admit`]). It holds nothing: it is the proof that a place was taken, and it must be
/// given back ([`Disk::end_transfer`]) when the transfer ends, however it ends.
#[derive(Debug)]
#[must_use = "a permit is given back with Disk::end_transfer"]
pub struct TransferPermit {
    _taken: (),
}

impl TransferPermit {
    /// A place was taken (for implementations of [`Disk::admit`]).
    pub fn taken() -> TransferPermit {
        TransferPermit { _taken: () }
    }
}

/// A file opened for a GET.
#[derive(Debug)]
pub struct OpenedFile {
    /// The file, shared with the DATA ranges queued in the outbox (sent with `sendfile`).
    pub file: Arc<File>,
    /// Its metadata when opened.
    pub meta: FileMeta,
    /// Its BLAKE3 if the hash cache holds one still valid for it.
    pub hash: Option<Hash>,
    /// Its permission bits (`0o777` at most), sent after FILE_INFO's 50 bytes.
    pub mode: u32,
}

/// An upload in progress, as [`Disk::begin_put`] numbered it: valid until it is given back
/// ([`Disk::release_upload`], [`Disk::publish`] or [`Disk::discard`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UploadHandle(pub u64);

/// What [`Disk::begin_put`] prepared.
#[derive(Debug)]
pub struct BegunUpload {
    /// The upload, for every later call.
    pub handle: UploadHandle,
    /// The upload id PUT_READY carries (0: not resumable).
    pub id: u64,
    /// Bytes already held from an earlier attempt (a resume).
    pub held: u64,
}

/// A directory being listed, as [`Disk::open_listing`] numbered it: valid until
/// [`Disk::close_listing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListingHandle(pub u64);

/// What reading one directory entry gave.
#[derive(Debug)]
pub enum DirRead {
    /// An entry to list: its name and metadata (a partial upload's kind is
    /// [`FileKind::Partial`]).
    Entry(String, FileMeta),
    /// An entry LIST does not show (`.`, `..`, the server's own names, a name not in UTF-8, an
    /// entry removed meanwhile). It costs a read all the same.
    Skipped,
    /// The end of the directory.
    End,
}

/// Which sync an upload asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// Start writing the file's dirty pages (`sync_file_range(WRITE)`): every window of an
    /// upload, so the final `fsync` has little left to do.
    Writeback,
    /// `fsync` of the verified file: its data durable, before it is renamed into place.
    Fsync,
}

/// What the file service needs from the disk. The I/O layer implements it over the root
/// directory and the disk helper (`Files`, in `sys/files.rs`); tests script it
/// (`testkit::ScriptedDisk`, with the `testkit` feature). Every path has passed
/// [`check_relative`](crate::proto::path::check_relative); every error is a [`FileError`]
/// naming the path, ready for the stream's ERROR frame.
///
/// Calls that block for as long as the disk takes (`fsync`, the unlink of a big file, an
/// upload's writes) are handed off the loop where the implementation can: they answer with a
/// [`JobId`] (or [`Pending::Job`]), and the [`JobDone`] comes back later to the connection that
/// made the call, never within it.
pub trait Disk {
    /// STAT: what `path` names (a symlink as itself), with the cached hash of a regular file,
    /// and its permission bits (`st_mode & 0o777`).
    fn stat(&mut self, path: &str) -> Result<(FileInfo, u32), FileError>;
    /// MKDIR: creates one directory (its parent must exist).
    fn mkdir(&mut self, path: &str) -> Result<(), FileError>;
    /// SET_ATTRS: gives the regular file or directory `path` (not the root, never through a
    /// symlink) the permission bits of `attrs.mode` and its mtime (the atime too). Metadata
    /// only: done on the loop, like MKDIR.
    fn set_attrs(&mut self, path: &str, attrs: PutAttrs) -> Result<(), FileError>;
    /// DELETE: removes a file, a symlink (not its target) or an empty directory (one holding
    /// only the server's own leftovers counts as empty). The path is gone when this returns;
    /// a big file's blocks may be freed later, off the loop, by a job whose completion comes
    /// back like any other.
    fn delete(&mut self, path: &str) -> Result<(), FileError>;

    /// A place among the server's running transfers, or `LIMIT_REACHED`.
    fn admit(&mut self) -> Result<TransferPermit, FileError>;
    /// A transfer ended: its place is free again.
    fn end_transfer(&mut self, permit: TransferPermit);

    /// GET: opens a regular file for reading, with its metadata and cached hash.
    fn open_read(&mut self, path: &str) -> Result<OpenedFile, FileError>;
    /// Reads from a GET's file at `offset` (for its hash): the bytes read, 0 at the end.
    fn read_at(&mut self, file: &File, buf: &mut [u8], offset: u64) -> Result<usize, FileError>;
    /// Whether a GET's file is still as it was at the open (size, mtime and ctime): the
    /// DIGEST vouches only for a file nothing changed while it was sent.
    fn unchanged(&mut self, file: &File, meta: &FileMeta) -> bool;
    /// Caches `hash` as the content of the file with `meta`, as of `as_of`: when the bytes
    /// hashed began to be read, `meta` taken before that and checked again after.
    fn store_hash(&mut self, meta: &FileMeta, hash: &Hash, as_of: WallClock);

    /// LIST: opens a directory for listing.
    fn open_listing(&mut self, path: &str) -> Result<ListingHandle, FileError>;
    /// The next entry of a listing.
    fn read_entry(&mut self, listing: ListingHandle) -> Result<DirRead, FileError>;
    /// The listing is over (finished or abandoned).
    fn close_listing(&mut self, listing: ListingHandle);

    /// PUT: checks the size limit and the target, and opens the upload's temporary file —
    /// a resumable partial (found, or started over) when the hash is declared, once its lock
    /// is ours (`UPLOAD_BUSY` while another upload holds it).
    fn begin_put(&mut self, request: &PutRequest<'_>) -> Result<BegunUpload, FileError>;
    /// Whether a newer PUT of the same upload took this one over: it may then neither write,
    /// nor commit, nor remove the partial.
    fn superseded(&self, upload: UploadHandle) -> bool;
    /// Reads back what the upload holds at `offset` (a resumed upload's prefix, to hash it).
    fn read_upload(
        &mut self,
        upload: UploadHandle,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<usize, FileError>;
    /// Writes `bytes` (at most `WRITE_PIECE`) at
    /// `offset` of the upload: handed to the disk helper (`Some`, the job to wait for), or
    /// written here (`None`: done) when the helper cannot take it.
    fn write_upload(
        &mut self,
        upload: UploadHandle,
        bytes: &[u8],
        offset: u64,
    ) -> Result<Option<JobId>, FileError>;
    /// Asks for a sync of the upload's file (of everything written before it).
    fn sync_upload(&mut self, upload: UploadHandle, kind: SyncKind) -> Pending;
    /// Makes a complete, verified, durable upload the file at its path (the one atomic step:
    /// a rename), and asks for its directory's `fsync`, which the DIGEST waits for. The
    /// handle is given back either way; on an error the target is untouched.
    fn publish(&mut self, upload: UploadHandle) -> Result<Pending, FileError>;
    /// Gives up an upload whose bytes are wrong or could not be written: even a resumable
    /// partial is removed. Call it once none of its jobs is in the helper's hands. The handle
    /// is given back.
    fn discard(&mut self, upload: UploadHandle);
    /// The upload ends unfinished: an unnamed temporary vanishes, a resumable partial stays
    /// for a later resume. The handle is given back.
    fn release_upload(&mut self, upload: UploadHandle);
}
