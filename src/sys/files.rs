//! The file service's I/O layer: every descriptor and every disk call the file service makes,
//! confined beneath the root ([`Root`]).
//!
//! **Confinement.** A request's path has passed [`check_relative`](crate::proto::path) before
//! it gets here. Files and directories are then opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` beneath the root's descriptor, so the kernel
//! refuses any component that is a symlink or leads out; a name is created, renamed or removed
//! only through its parent directory opened the same way, with a single-component `*at` call.
//! What was checked is what is used: there is no path string re-resolved later.
//!
//! **Atomic put** (Pillai et al., OSDI'14): the bytes go to a temporary file in the target's
//! directory — an unnamed `O_TMPFILE` for an upload that cannot resume (a crash leaves
//! nothing), a `.monoreactor-partial-<id>` file for one that can — then size and hash are
//! checked, the file is `fsync`ed, renamed over the target, and the directory is `fsync`ed.
//! Until the rename the target is untouched; after it, it is the whole new file. A partial
//! nobody resumes expires: a PUT starting in its directory sweeps out leftovers untouched for
//! [`PARTIAL_TTL_NS`] (bounded work, at most hourly per directory).
//!
//! **Write-behind.** While an upload streams, every [`WRITE_BEHIND`] bytes the range just
//! written is handed to the disk (`sync_file_range(WRITE)`), and every
//! [`SYNC_EVERY_WINDOWS`] windows the upload is made durable (`fdatasync`), so the `fsync` at
//! the end has little left to do: the loop never stalls for a whole file's writeback at once.
//!
//! **Hash cache.** A file's BLAKE3 is kept in its `user.monoreactor.blake3` extended attribute
//! with the size and modification time it was computed for and the time it was stored. It is
//! trusted only while size and mtime still match and the mtime is older than the moment of
//! storing by more than [`RACY_WINDOW_NS`] (git's "racy clean" rule: a write in the same
//! timestamp tick would leave the mtime unchanged). Where extended attributes are not
//! supported, a bounded in-memory index keyed by device and inode stands in.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, info, warn};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, XattrFlags};
use rustix::io::Errno;

use crate::proto::ErrorCode;
use crate::proto::files::{DirEntry, FileInfo, FileKind, HASH_LEN, Hash, PutRequest};
use crate::proto::path::RESERVED_PREFIX;
use crate::sys::disk::{Disk, Job, OFFLOAD_UNLINK_BYTES, trash_name};
use crate::sys::root::Root;

/// Bytes written between write-behind steps.
pub const WRITE_BEHIND: u64 = 8 << 20;

/// Every this many write-behind windows (32 MiB) the upload is `fdatasync`ed. Starting
/// writeback (`sync_file_range`) only moves the bytes into the disk's own cache — on a VM,
/// the host's — and the commit's `fsync` then had to flush the whole file from there: a
/// second-long stall of the loop per GiB, measured. Syncing as the upload streams bounds each
/// stall to what 32 MiB costs (0.1–0.2 s measured, most far less) and leaves the commit at
/// most that much to do.
pub const SYNC_EVERY_WINDOWS: u64 = 4;

/// A file whose mtime is within this of the moment its hash was stored may have been written
/// again in the same timestamp tick, so that hash is not trusted. Kernel timestamps advance
/// in ticks of 1–10 ms; 100 ms leaves a wide margin.
pub const RACY_WINDOW_NS: i64 = 100_000_000;

/// A resumable partial untouched for this long is removed (by the next sweep of its
/// directory): an interrupted upload can be resumed for a day.
pub const PARTIAL_TTL_NS: i64 = 24 * 3600 * 1_000_000_000;

/// A directory is swept for expired partials at most this often (when a PUT starts in it).
const SWEEP_INTERVAL_NS: i64 = 3600 * 1_000_000_000;

/// Most entries one sweep looks at, so a huge directory costs a bounded pause.
const SWEEP_ENTRIES: usize = 4096;

/// Most entries the in-memory hash index keeps (used only where xattrs are unsupported).
const MEMO_ENTRIES: usize = 4096;

/// The extended attribute holding a file's cached hash.
const HASH_XATTR: &str = "user.monoreactor.blake3";

/// Layout of [`HASH_XATTR`]: size, mtime ns, stored-at ns (BE u64 each), then the hash.
const XATTR_LEN: usize = 24 + HASH_LEN;

/// Name prefix of resumable partial uploads.
const PARTIAL_PREFIX: &str = ".monoreactor-partial-";

/// Name prefix under which a finished unnamed upload is linked just before its rename.
const LINKED_PREFIX: &str = ".monoreactor-tmp-";

/// A file operation's failure, as the client will hear it.
#[derive(Debug)]
pub struct FileError {
    /// The error code for the stream's ERROR frame.
    pub code: ErrorCode,
    /// The text, naming the path.
    pub text: String,
}

impl FileError {
    fn new(code: ErrorCode, text: impl Into<String>) -> FileError {
        FileError {
            code,
            text: text.into(),
        }
    }

    /// Maps an errno from an operation on `path` (what the client asked about).
    pub fn from_errno(errno: Errno, path: &str) -> FileError {
        let shown = if path.is_empty() { "/" } else { path };
        let (code, what) = match errno {
            Errno::NOENT => (ErrorCode::NotFound, "no such file or directory"),
            Errno::NOTDIR => (ErrorCode::NotDirectory, "a component is not a directory"),
            Errno::LOOP | Errno::XDEV => (
                ErrorCode::OutsideRoot,
                "the path leaves the root or passes through a symlink",
            ),
            Errno::ACCESS | Errno::PERM | Errno::ROFS => {
                (ErrorCode::PermissionDenied, "permission denied")
            }
            Errno::ISDIR => (ErrorCode::IsDirectory, "is a directory"),
            Errno::NOSPC | Errno::DQUOT => (ErrorCode::NoSpace, "no space left on the device"),
            Errno::EXIST => (ErrorCode::AlreadyExists, "already exists"),
            Errno::NOTEMPTY => (ErrorCode::NotEmpty, "directory not empty"),
            Errno::NAMETOOLONG => (ErrorCode::BadRequest, "a name is too long"),
            Errno::MFILE | Errno::NFILE => (ErrorCode::LimitReached, "out of file descriptors"),
            _ => {
                let text = format!("{shown}: {}", io::Error::from(errno));
                return FileError::new(ErrorCode::IoFailed, text);
            }
        };
        FileError::new(code, format!("{shown}: {what}"))
    }

    fn io(error: &io::Error, path: &str) -> FileError {
        match error.raw_os_error() {
            Some(raw) => FileError::from_errno(Errno::from_raw_os_error(raw), path),
            None => FileError::new(ErrorCode::IoFailed, format!("{path}: {error}")),
        }
    }
}

/// What `stat` says of a file, in the protocol's terms plus its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// What it is.
    pub kind: FileKind,
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
}

impl Meta {
    fn of(stat: &Stat) -> Meta {
        let kind = match FileType::from_raw_mode(stat.st_mode) {
            FileType::RegularFile => FileKind::File,
            FileType::Directory => FileKind::Directory,
            FileType::Symlink => FileKind::Symlink,
            _ => FileKind::Other,
        };
        Meta {
            size: stat.st_size as u64,
            mtime_ns: stat
                .st_mtime
                .saturating_mul(1_000_000_000)
                .saturating_add(stat.st_mtime_nsec as i64),
            kind,
            dev: stat.st_dev,
            ino: stat.st_ino,
        }
    }

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

/// A cached hash and what it was computed for.
#[derive(Clone, Copy, Debug)]
struct CacheEntry {
    size: u64,
    mtime_ns: i64,
    stored_ns: i64,
    hash: Hash,
}

impl CacheEntry {
    fn encode(&self) -> [u8; XATTR_LEN] {
        let mut out = [0; XATTR_LEN];
        out[0..8].copy_from_slice(&self.size.to_be_bytes());
        out[8..16].copy_from_slice(&self.mtime_ns.to_be_bytes());
        out[16..24].copy_from_slice(&self.stored_ns.to_be_bytes());
        out[24..].copy_from_slice(&self.hash);
        out
    }

    fn decode(bytes: &[u8]) -> Option<CacheEntry> {
        if bytes.len() != XATTR_LEN {
            return None;
        }
        let word = |at: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            word
        };
        let mut hash = [0; HASH_LEN];
        hash.copy_from_slice(&bytes[24..]);
        Some(CacheEntry {
            size: u64::from_be_bytes(word(0)),
            mtime_ns: i64::from_be_bytes(word(8)),
            stored_ns: i64::from_be_bytes(word(16)),
            hash,
        })
    }

    /// Whether this entry still describes a file with `meta`: same size and mtime, and the
    /// mtime clearly older than the storing (not racily clean).
    fn valid_for(&self, meta: &Meta) -> bool {
        self.size == meta.size
            && self.mtime_ns == meta.mtime_ns
            && self.stored_ns.saturating_sub(self.mtime_ns) > RACY_WINDOW_NS
    }
}

/// The wall clock, ns since the epoch (the hash cache compares it with file mtimes).
pub fn wall_clock_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i64)
}

/// The resumable uploads in progress: each id with the flag that tells its holder a newer
/// PUT of the same upload took over.
type Uploads = Arc<Mutex<HashMap<u64, Arc<AtomicBool>>>>;

/// The file service's shared state: how many transfers run, which resumable uploads are in
/// use, the fallback hash index.
#[derive(Debug)]
pub struct FileState {
    transfers: Arc<AtomicUsize>,
    uploads: Uploads,
    memo: HashMap<(u64, u64), CacheEntry>,
    /// When each directory (device, inode) was last swept for expired partials.
    swept: HashMap<(u64, u64), i64>,
    max_transfers: usize,
    max_put: u64,
}

impl FileState {
    /// State for a server allowing `max_transfers` at once and puts of up to `max_put` bytes.
    pub fn new(max_transfers: usize, max_put: u64) -> FileState {
        FileState {
            transfers: Arc::new(AtomicUsize::new(0)),
            uploads: Arc::new(Mutex::new(HashMap::new())),
            memo: HashMap::new(),
            swept: HashMap::new(),
            max_transfers,
            max_put,
        }
    }

    /// Transfers running now.
    pub fn transfers(&self) -> usize {
        self.transfers.load(Ordering::Relaxed)
    }
}

/// One running transfer's place in the server-wide count; dropping it frees the place.
#[derive(Debug)]
pub struct TransferPermit(Arc<AtomicUsize>);

impl Drop for TransferPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A file opened for GET.
#[derive(Debug)]
pub struct OpenedFile {
    /// The file, shared with the outbox's file segments.
    pub file: Arc<File>,
    /// Its metadata when opened.
    pub meta: Meta,
    /// Its BLAKE3 if the cache holds a valid one.
    pub hash: Option<Hash>,
}

/// Where an upload's bytes go until they are committed.
#[derive(Debug)]
enum Temp {
    /// An `O_TMPFILE`: no name until commit.
    Unnamed,
    /// A resumable partial, by name.
    Partial(String),
}

/// An upload in progress: its temporary file, its directory, and the name it will get.
/// Dropping it without [`Files::commit`] removes an unnamed temporary (nothing to do) and
/// keeps a resumable partial for a later resume.
#[derive(Debug)]
pub struct Upload {
    file: File,
    dir: OwnedFd,
    name: String,
    path: String,
    temp: Temp,
    /// The upload id (0: not resumable).
    pub id: u64,
    /// Bytes already held from an earlier attempt.
    pub held: u64,
    /// Bytes up to which write-behind has been started.
    flushed: u64,
    uploads: Uploads,
    /// Set when a newer PUT of the same upload took over its partial: this one may then
    /// neither write, nor commit, nor remove it.
    superseded: Arc<AtomicBool>,
    committed: bool,
}

impl Drop for Upload {
    fn drop(&mut self) {
        if self.id != 0 {
            let mut uploads = lock(&self.uploads);
            if uploads
                .get(&self.id)
                .is_some_and(|holder| Arc::ptr_eq(holder, &self.superseded))
            {
                uploads.remove(&self.id);
            }
        }
        if !self.committed {
            if let Temp::Partial(name) = &self.temp {
                debug!("{}: partial upload {name} kept for a resume", self.path);
            }
        }
    }
}

impl Upload {
    /// The temporary file (to re-read the held prefix on resume).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether a newer PUT of the same (path, size, hash) took this upload over.
    pub fn superseded(&self) -> bool {
        self.superseded.load(Ordering::Relaxed)
    }

    fn superseded_error(&self) -> FileError {
        FileError::new(
            ErrorCode::IoFailed,
            format!(
                "{}: a newer PUT of the same file took this upload over",
                self.path
            ),
        )
    }

    /// Writes `bytes` at `offset`, then starts writeback of each completed
    /// [`WRITE_BEHIND`] window and waits for the one before it.
    pub fn write_at(&mut self, bytes: &[u8], offset: u64) -> Result<(), FileError> {
        if self.superseded() {
            return Err(self.superseded_error());
        }
        self.file
            .write_all_at(bytes, offset)
            .map_err(|error| FileError::io(&error, &self.path))?;
        let end = offset + bytes.len() as u64;
        while end >= self.flushed + WRITE_BEHIND {
            let start = self.flushed;
            self.flushed += WRITE_BEHIND;
            self.write_behind(start)
                .map_err(|error| FileError::io(&error, &self.path))?;
        }
        Ok(())
    }

    /// Starts writeback of the window `[start, start + WRITE_BEHIND)` just written, and every
    /// [`SYNC_EVERY_WINDOWS`] windows makes the upload so far durable (`fdatasync`): the
    /// disk works while the upload streams, and the `fsync` at the commit stays short however
    /// much faster the network is than the disk.
    fn write_behind(&self, start: u64) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: a plain syscall on a descriptor this upload owns. Its failure only costs
        // the optimisation: the data is still written, and made durable below.
        unsafe {
            libc::sync_file_range(
                fd,
                start as i64,
                WRITE_BEHIND as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        if (start / WRITE_BEHIND) % SYNC_EVERY_WINDOWS == SYNC_EVERY_WINDOWS - 1 {
            // Its error must not be lost: Linux reports a writeback error once per open file,
            // to whichever sync sees it first, so the commit's fsync would then succeed over
            // a damaged file.
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// A directory being listed, page by page.
#[derive(Debug)]
pub struct Listing {
    dir: rustix::fs::Dir,
    path: String,
    /// An entry read that did not fit in the last page.
    pending: Option<(String, Meta)>,
    done: bool,
}

impl Listing {
    /// Appends entries to `page` without letting it pass `max_bytes` (an entry that does not
    /// fit waits for the next page), reading at most `max_entries` directory entries, hidden
    /// and skipped ones included, so a directory full of names LIST does not show still costs
    /// a bounded turn. Returns whether the directory is finished. An entry too long for any
    /// page (a frame limit below 274 bytes and a long name) is an error.
    pub fn next_page(
        &mut self,
        page: &mut Vec<u8>,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<bool, FileError> {
        for _ in 0..max_entries {
            let (name, meta) = match self.pending.take() {
                Some(entry) => entry,
                None => match self.read_entry()? {
                    Read::Entry(name, meta) => (name, meta),
                    Read::Skipped => continue,
                    Read::End => {
                        self.done = true;
                        break;
                    }
                },
            };
            let entry = DirEntry {
                name: &name,
                kind: meta.kind,
                size: meta.size,
                mtime_ns: meta.mtime_ns,
            };
            if page.len() + entry.wire_len() > max_bytes {
                if page.is_empty() {
                    return Err(FileError::new(
                        ErrorCode::LimitReached,
                        format!(
                            "{}/{name}: the entry needs {} bytes, more than a frame may carry here ({max_bytes})",
                            self.path,
                            entry.wire_len()
                        ),
                    ));
                }
                self.pending = Some((name, meta));
                break;
            }
            let at = page.len();
            page.resize(at + entry.wire_len(), 0);
            entry.emit(&mut page[at..]);
        }
        Ok(self.done)
    }

    /// The next directory entry: one worth listing, with its metadata, or one skipped.
    fn read_entry(&mut self) -> Result<Read, FileError> {
        let Some(next) = self.dir.read() else {
            return Ok(Read::End);
        };
        let entry = next.map_err(|errno| FileError::from_errno(errno, &self.path))?;
        let Ok(name) = entry.file_name().to_str() else {
            debug!("{}: skipping an entry whose name is not UTF-8", self.path);
            return Ok(Read::Skipped);
        };
        if name == "." || name == ".." || name.starts_with(RESERVED_PREFIX) {
            return Ok(Read::Skipped);
        }
        let fd = self
            .dir
            .fd()
            .map_err(|errno| FileError::from_errno(errno, &self.path))?;
        match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Read::Entry(name.to_string(), Meta::of(&stat))),
            // Removed between the read and the stat: not listed.
            Err(Errno::NOENT) => Ok(Read::Skipped),
            Err(errno) => Err(FileError::from_errno(errno, &self.path)),
        }
    }
}

/// What reading one directory entry gave.
enum Read {
    /// An entry to list.
    Entry(String, Meta),
    /// An entry LIST does not show (`.`, `..`, the server's own, a name not in UTF-8, one
    /// removed meanwhile).
    Skipped,
    /// The end of the directory.
    End,
}

/// The upload id of (path, size, hash): the same triple always gives the same id, and any
/// other triple another one, so a resume can never splice two different files.
pub fn upload_id(path: &str, size: u64, hash: &Hash) -> u64 {
    let mut hasher = blake3::Hasher::new_derive_key("monoreactor 2026-11 upload id");
    hasher.update(&(path.len() as u64).to_be_bytes());
    hasher.update(path.as_bytes());
    hasher.update(&size.to_be_bytes());
    hasher.update(hash);
    let mut id = [0; 8];
    id.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_be_bytes(id).max(1)
}

/// The uploads in progress. (The server has one thread; the lock only makes the state
/// `Send`, for a program that runs the server on a thread of its own. A poisoned lock still
/// holds a usable map.)
fn lock(
    uploads: &Mutex<HashMap<u64, Arc<AtomicBool>>>,
) -> MutexGuard<'_, HashMap<u64, Arc<AtomicBool>>> {
    uploads
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Splits `path` into its parent directory and last component ("" has neither).
fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => ("", path),
    }
}

/// Renames `name` in `dir` to a fresh trash name (never over an existing one) and returns
/// it. If what was renamed turns out not to be a regular file (the name was replaced after
/// it was looked at), it is renamed back and `EISDIR`/`EINVAL` returned, so the caller
/// removes it the ordinary way.
fn rename_aside(dir: &OwnedFd, name: &str) -> Result<String, Errno> {
    for _ in 0..8 {
        let trash = trash_name();
        match rustix::fs::renameat_with(dir, name, dir, trash.as_str(), RenameFlags::NOREPLACE) {
            Ok(()) => {}
            Err(Errno::EXIST) => continue,
            Err(errno) => return Err(errno),
        }
        let kind = rustix::fs::statat(dir, trash.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map(|stat| FileType::from_raw_mode(stat.st_mode));
        if kind == Ok(FileType::RegularFile) {
            return Ok(trash);
        }
        // Back where it was; if even that fails, it stays hidden for the sweep to remove.
        if let Err(errno) =
            rustix::fs::renameat_with(dir, trash.as_str(), dir, name, RenameFlags::NOREPLACE)
        {
            warn!("{name}: replaced while being deleted, left as {trash}: {errno}");
            return Err(Errno::NOENT);
        }
        return Err(Errno::INVAL);
    }
    Err(Errno::EXIST)
}

/// The file service's view of the loop: the root, the shared state.
#[derive(Debug)]
pub struct Files<'a> {
    /// The root everything is beneath.
    pub root: &'a Root,
    /// Shared state.
    pub state: &'a mut FileState,
}

impl Files<'_> {
    /// A place among the running transfers, or `LIMIT_REACHED`.
    pub fn admit(&mut self) -> Result<TransferPermit, FileError> {
        let running = self.state.transfers.load(Ordering::Relaxed);
        if running >= self.state.max_transfers {
            return Err(FileError::new(
                ErrorCode::LimitReached,
                format!(
                    "{running} transfers are running on this server, its limit (--max-transfers)"
                ),
            ));
        }
        self.state.transfers.fetch_add(1, Ordering::Relaxed);
        Ok(TransferPermit(Arc::clone(&self.state.transfers)))
    }

    fn parent(&self, path: &str) -> Result<(OwnedFd, String), FileError> {
        let (parent, name) = split(path);
        if name.is_empty() {
            return Err(FileError::new(
                ErrorCode::BadRequest,
                "the root itself cannot be created, replaced or removed",
            ));
        }
        let dir = self
            .root
            .open_beneath(parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .map_err(|errno| FileError::from_errno(errno, parent))?;
        Ok((dir, name.to_string()))
    }

    /// Opens a regular file for reading, with its metadata and cached hash.
    pub fn open_read(&mut self, path: &str) -> Result<OpenedFile, FileError> {
        // O_NONBLOCK: opening a FIFO must not block the loop (it is refused right after).
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = self
            .root
            .open_beneath(path, flags, Mode::empty())
            .map_err(|errno| FileError::from_errno(errno, path))?;
        let stat = rustix::fs::fstat(&fd).map_err(|errno| FileError::from_errno(errno, path))?;
        let meta = Meta::of(&stat);
        match meta.kind {
            FileKind::File => {}
            FileKind::Directory => {
                return Err(FileError::from_errno(Errno::ISDIR, path));
            }
            _ => {
                return Err(FileError::new(
                    ErrorCode::BadRequest,
                    format!("{path}: not a regular file"),
                ));
            }
        }
        let file = File::from(fd);
        let hash = self.cached_hash(&file, &meta);
        Ok(OpenedFile {
            file: Arc::new(file),
            meta,
            hash,
        })
    }

    /// What `path` names (a symlink as itself), with the cached hash of a regular file.
    pub fn stat(&mut self, path: &str) -> Result<FileInfo, FileError> {
        if path.is_empty() {
            let stat = rustix::fs::fstat(self.root.dir())
                .map_err(|errno| FileError::from_errno(errno, path))?;
            return Ok(Meta::of(&stat).info(None));
        }
        let (dir, name) = self.parent(path)?;
        let stat = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| FileError::from_errno(errno, path))?;
        let meta = Meta::of(&stat);
        let hash = if meta.kind == FileKind::File {
            // Opened only to read the cache; beneath the parent, never following a link.
            rustix::fs::openat(
                &dir,
                name.as_str(),
                OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()
            .and_then(|fd| {
                let file = File::from(fd);
                let now = rustix::fs::fstat(&file).ok().map(|stat| Meta::of(&stat))?;
                (now == meta).then(|| self.cached_hash(&file, &meta))?
            })
        } else {
            None
        };
        Ok(meta.info(hash))
    }

    /// Removes a file, a symlink (not its target) or an empty directory.
    ///
    /// With a `disk`, a regular file whose blocks would be freed by the removal (its last
    /// link, at least [`OFFLOAD_UNLINK_BYTES`]) is renamed aside to a fresh
    /// [`TRASH_PREFIX`](crate::sys::disk::TRASH_PREFIX) name in the same directory — a new
    /// name, so the rename frees nothing and is quick — and the unlink of that name, which
    /// frees the blocks (178 ms for 1 GiB on ext4, measured), is submitted to `disk`. The path
    /// is gone when this returns either way. Anything else is removed here, as is everything
    /// without a `disk`.
    pub fn delete(&mut self, path: &str, disk: Option<&mut dyn Disk>) -> Result<(), FileError> {
        let (dir, name) = self.parent(path)?;
        let stat = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| FileError::from_errno(errno, path))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        let frees_much = kind == FileType::RegularFile
            && stat.st_nlink == 1
            && (stat.st_blocks as u64).saturating_mul(512) >= OFFLOAD_UNLINK_BYTES;
        if let (true, Some(disk)) = (frees_much, disk) {
            match rename_aside(&dir, &name) {
                Ok(trash) => {
                    debug!("{path}: renamed aside to {trash}, unlinked off the loop");
                    disk.submit(Job::Unlink { dir, name: trash });
                    return Ok(());
                }
                Err(Errno::NOENT) => return Err(FileError::from_errno(Errno::NOENT, path)),
                // No RENAME_NOREPLACE on this file system, or no fresh name: the old way.
                Err(errno) => debug!("{path}: cannot rename aside ({errno}); unlinking here"),
            }
        }
        let flags = if kind == FileType::Directory {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&dir, name.as_str(), flags)
            .map_err(|errno| FileError::from_errno(errno, path))
    }

    /// Creates one directory (its parent must exist).
    pub fn mkdir(&mut self, path: &str) -> Result<(), FileError> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755))
            .map_err(|errno| FileError::from_errno(errno, path))
    }

    /// Opens a directory for listing.
    pub fn open_listing(&mut self, path: &str) -> Result<Listing, FileError> {
        let fd = self
            .root
            .open_beneath(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .map_err(|errno| FileError::from_errno(errno, path))?;
        let dir = rustix::fs::Dir::new(fd).map_err(|errno| FileError::from_errno(errno, path))?;
        Ok(Listing {
            dir,
            path: path.to_string(),
            pending: None,
            done: false,
        })
    }

    /// Prepares an upload: checks the size limit and the target, opens the temporary file.
    /// With a declared hash the upload is resumable: its partial is found (with `resume`) or
    /// started over (without).
    pub fn begin_put(&mut self, request: &PutRequest<'_>) -> Result<Upload, FileError> {
        let path = request.path;
        if request.size > self.state.max_put {
            return Err(FileError::new(
                ErrorCode::LimitReached,
                format!(
                    "{path}: {} bytes is more than this server takes in one file ({}; --max-put)",
                    request.size, self.state.max_put
                ),
            ));
        }
        let (dir, name) = self.parent(path)?;
        match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => {}
                FileType::Directory => return Err(FileError::from_errno(Errno::ISDIR, path)),
                FileType::Symlink => return Err(FileError::from_errno(Errno::LOOP, path)),
                _ => {
                    return Err(FileError::new(
                        ErrorCode::BadRequest,
                        format!("{path}: not a regular file"),
                    ));
                }
            },
            Err(Errno::NOENT) => {}
            Err(errno) => return Err(FileError::from_errno(errno, path)),
        }
        let mode = Mode::from_raw_mode(0o644);
        let Some(hash) = request.hash else {
            let fd = rustix::fs::openat(
                &dir,
                ".",
                OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
                mode,
            )
            .map_err(|errno| FileError::from_errno(errno, path))?;
            return Ok(Upload {
                file: File::from(fd),
                dir,
                name,
                path: path.to_string(),
                temp: Temp::Unnamed,
                id: 0,
                held: 0,
                flushed: 0,
                uploads: Arc::clone(&self.state.uploads),
                superseded: Arc::new(AtomicBool::new(false)),
                committed: false,
            });
        };
        self.sweep_expired(&dir, path);
        let id = upload_id(path, request.size, &hash);
        let temp_name = format!("{PARTIAL_PREFIX}{id:016x}");
        let resume = request
            .flags
            .contains(crate::proto::files::PutFlags::RESUME);
        let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if !resume {
            flags |= OFlags::TRUNC;
        }
        let opened = rustix::fs::openat(&dir, temp_name.as_str(), flags, mode);
        let file = File::from(opened.map_err(|errno| FileError::from_errno(errno, path))?);
        let held = match file.metadata() {
            Ok(meta) if meta.len() <= request.size => meta.len(),
            // Longer than the upload (cannot be ours): start over.
            Ok(_) => {
                file.set_len(0)
                    .map_err(|error| FileError::io(&error, path))?;
                0
            }
            Err(error) => return Err(FileError::io(&error, path)),
        };
        // The newest PUT of an upload wins: one still in progress (a client that vanished
        // without a FIN, say, and is resuming from elsewhere) is told to stop at its next
        // frame, and never touches the partial again.
        let superseded = Arc::new(AtomicBool::new(false));
        if let Some(older) = lock(&self.state.uploads).insert(id, Arc::clone(&superseded)) {
            info!("{path}: upload {id:016x} taken over by a newer PUT");
            older.store(true, Ordering::Relaxed);
        }
        Ok(Upload {
            file,
            dir,
            name,
            path: path.to_string(),
            temp: Temp::Partial(temp_name),
            id,
            held,
            flushed: held - held % WRITE_BEHIND,
            uploads: Arc::clone(&self.state.uploads),
            superseded,
            committed: false,
        })
    }

    /// Removes the server's own leftovers in the directory `dir` (of `path`) that have not
    /// been touched for [`PARTIAL_TTL_NS`]: resumable partials nobody came back for, and a
    /// finished upload's link left by a crash between its link and its rename. At most once
    /// per [`SWEEP_INTERVAL_NS`] per directory, and at most [`SWEEP_ENTRIES`] entries.
    fn sweep_expired(&mut self, dir: &OwnedFd, path: &str) {
        let Ok(stat) = rustix::fs::fstat(dir) else {
            return;
        };
        let now = wall_clock_ns();
        let key = (stat.st_dev, stat.st_ino);
        if let Some(&last) = self.state.swept.get(&key) {
            if now.saturating_sub(last) < SWEEP_INTERVAL_NS {
                return;
            }
        }
        if self.state.swept.len() >= MEMO_ENTRIES {
            self.state.swept.clear();
        }
        self.state.swept.insert(key, now);
        let Ok(fd) = rustix::fs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return;
        };
        let Ok(mut entries) = rustix::fs::Dir::new(fd) else {
            return;
        };
        let mut expired = Vec::new();
        for entry in std::iter::from_fn(|| entries.read()).take(SWEEP_ENTRIES) {
            let Ok(entry) = entry else { break };
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            let id = name
                .strip_prefix(PARTIAL_PREFIX)
                .and_then(|hex| u64::from_str_radix(hex, 16).ok());
            if id.is_none() && !name.starts_with(LINKED_PREFIX) {
                continue;
            }
            if id.is_some_and(|id| lock(&self.state.uploads).contains_key(&id)) {
                continue;
            }
            let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            if now.saturating_sub(Meta::of(&stat).mtime_ns) > PARTIAL_TTL_NS {
                expired.push(name.to_string());
            }
        }
        for name in expired {
            match rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty()) {
                Ok(()) => info!("{path}: removed expired upload leftover {name}"),
                Err(errno) => debug!("{path}: cannot remove {name}: {errno}"),
            }
        }
    }

    /// Makes a complete, verified upload the file at its path: caches its hash, `fsync`,
    /// rename over the target, `fsync` of the directory.
    pub fn commit(&mut self, mut upload: Upload, hash: &Hash) -> Result<(), FileError> {
        if upload.superseded() {
            return Err(upload.superseded_error());
        }
        let path = upload.path.clone();
        upload
            .file
            .sync_all()
            .map_err(|error| FileError::io(&error, &path))?;
        // Stored after the fsync, which for a large file puts the time of storing well past
        // the last write's mtime: the cache is trusted from the first GET. (A small file's
        // hash, stored within the racy window, is recomputed once: cheap.) The attribute is
        // written before the rename, so the file never appears without it.
        if let Ok(stat) = rustix::fs::fstat(&upload.file) {
            let meta = Meta::of(&stat);
            self.store_hash(&upload.file, &meta, hash, wall_clock_ns());
        }
        let temp_name = match &upload.temp {
            Temp::Partial(name) => name.clone(),
            Temp::Unnamed => {
                // An O_TMPFILE gets a name only now, through /proc (linkat with
                // AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH).
                let name = format!("{LINKED_PREFIX}{:016x}", upload_id(&path, 0, hash));
                let proc_path = format!("/proc/self/fd/{}", upload.file.as_raw_fd());
                let _ = rustix::fs::unlinkat(&upload.dir, name.as_str(), AtFlags::empty());
                rustix::fs::linkat(
                    rustix::fs::CWD,
                    proc_path.as_str(),
                    &upload.dir,
                    name.as_str(),
                    AtFlags::SYMLINK_FOLLOW,
                )
                .map_err(|errno| match errno {
                    // The name is ours and the directory is open: only /proc can be missing.
                    Errno::NOENT => FileError::new(
                        ErrorCode::IoFailed,
                        format!("{path}: cannot name the upload (is /proc mounted?)"),
                    ),
                    errno => FileError::from_errno(errno, &path),
                })?;
                name
            }
        };
        if let Err(errno) = rustix::fs::renameat(
            &upload.dir,
            temp_name.as_str(),
            &upload.dir,
            upload.name.as_str(),
        ) {
            if matches!(upload.temp, Temp::Unnamed) {
                let _ = rustix::fs::unlinkat(&upload.dir, temp_name.as_str(), AtFlags::empty());
            }
            return Err(FileError::from_errno(errno, &path));
        }
        upload.committed = true;
        // The rename is durable once the directory is.
        let dir = rustix::fs::openat(
            &upload.dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| FileError::from_errno(errno, &path))?;
        rustix::fs::fsync(&dir).map_err(|errno| FileError::from_errno(errno, &path))?;
        Ok(())
    }

    /// Gives up an upload whose bytes are wrong or could not be written (a hash mismatch, a
    /// full disk, an I/O error): even a resumable partial is removed, since resuming would
    /// only repeat the mismatch, or keep holding the space a retry needs.
    pub fn discard(&mut self, upload: Upload) {
        if upload.superseded() {
            return; // the partial is the newer upload's now
        }
        if let Temp::Partial(name) = &upload.temp {
            if let Err(errno) = rustix::fs::unlinkat(&upload.dir, name.as_str(), AtFlags::empty()) {
                warn!("{}: cannot remove partial {name}: {errno}", upload.path);
            }
        }
    }

    /// The cached hash of `file` if it is valid for `meta`.
    pub fn cached_hash(&self, file: &File, meta: &Meta) -> Option<Hash> {
        let mut value = [0u8; XATTR_LEN];
        let entry = match rustix::fs::fgetxattr(file, HASH_XATTR, &mut value[..]) {
            Ok(len) => CacheEntry::decode(&value[..len]),
            Err(Errno::NOTSUP) => self.state.memo.get(&(meta.dev, meta.ino)).copied(),
            Err(_) => None,
        }?;
        entry.valid_for(meta).then_some(entry.hash)
    }

    /// Caches `hash` as the content of `file` while it has `meta`.
    ///
    /// `as_of_ns` is when the bytes hashed were read — the start of the hashing, not its
    /// end: a write in the same timestamp tick as the mtime, during a long hash, must still
    /// make the entry racy.
    pub fn store_hash(&mut self, file: &File, meta: &Meta, hash: &Hash, as_of_ns: i64) {
        let entry = CacheEntry {
            size: meta.size,
            mtime_ns: meta.mtime_ns,
            stored_ns: as_of_ns,
            hash: *hash,
        };
        match rustix::fs::fsetxattr(file, HASH_XATTR, &entry.encode(), XattrFlags::empty()) {
            Ok(()) => {}
            Err(Errno::NOTSUP) => {
                if self.state.memo.len() >= MEMO_ENTRIES {
                    self.state.memo.clear();
                }
                self.state.memo.insert((meta.dev, meta.ino), entry);
            }
            Err(errno) => debug!("hash not cached: {errno}"),
        }
    }
}

/// Re-reads the metadata of an open file (to see whether it changed while being hashed).
pub fn meta_of(file: &impl AsFd) -> io::Result<Meta> {
    Ok(Meta::of(&rustix::fs::fstat(file)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_bind_path_size_and_hash() {
        let id = upload_id("a/b", 10, &[1; 32]);
        assert_eq!(id, upload_id("a/b", 10, &[1; 32]));
        assert_ne!(id, upload_id("a/c", 10, &[1; 32]));
        assert_ne!(id, upload_id("a/b", 11, &[1; 32]));
        assert_ne!(id, upload_id("a/b", 10, &[2; 32]));
        assert_ne!(id, 0);
    }

    #[test]
    fn a_cache_entry_is_trusted_only_when_not_racily_clean() {
        let meta = Meta {
            size: 5,
            mtime_ns: 1_000_000_000,
            kind: FileKind::File,
            dev: 1,
            ino: 2,
        };
        let entry = CacheEntry {
            size: 5,
            mtime_ns: meta.mtime_ns,
            stored_ns: meta.mtime_ns + RACY_WINDOW_NS + 1,
            hash: [4; 32],
        };
        assert!(entry.valid_for(&meta));
        let decoded = CacheEntry::decode(&entry.encode()).unwrap();
        assert!(decoded.valid_for(&meta));
        let racy = CacheEntry {
            stored_ns: meta.mtime_ns + RACY_WINDOW_NS,
            ..entry
        };
        assert!(!racy.valid_for(&meta));
        let grown = Meta { size: 6, ..meta };
        assert!(!entry.valid_for(&grown));
        let touched = Meta {
            mtime_ns: meta.mtime_ns + 1,
            ..meta
        };
        assert!(!entry.valid_for(&touched));
    }

    #[test]
    fn a_put_sweeps_expired_partials_of_its_directory_only() {
        let base = std::env::temp_dir().join(format!("monoreactor-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = Root::open_or_create(&base).unwrap();
        let old = root
            .path()
            .join(format!("{PARTIAL_PREFIX}00000000000000ff"));
        let fresh = root
            .path()
            .join(format!("{PARTIAL_PREFIX}00000000000000fe"));
        let linked = root.path().join(format!("{LINKED_PREFIX}1"));
        for file in [&old, &fresh, &linked] {
            std::fs::write(file, b"x").unwrap();
        }
        let two_days_ago = SystemTime::now() - std::time::Duration::from_secs(2 * 24 * 3600);
        for file in [&old, &linked] {
            std::fs::File::options()
                .write(true)
                .open(file)
                .unwrap()
                .set_modified(two_days_ago)
                .unwrap();
        }
        let mut state = FileState::new(4, 1 << 20);
        let mut files = Files {
            root: &root,
            state: &mut state,
        };
        let request = PutRequest {
            size: 1,
            flags: crate::proto::files::PutFlags::HASH_DECLARED,
            hash: Some([0; 32]),
            path: "target",
        };
        drop(files.begin_put(&request).unwrap());
        assert!(!old.exists(), "expired partial removed");
        assert!(!linked.exists(), "expired link removed");
        assert!(fresh.exists(), "a recent partial stays");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn split_separates_parent_and_name() {
        assert_eq!(split("a/b/c"), ("a/b", "c"));
        assert_eq!(split("c"), ("", "c"));
        assert_eq!(split(""), ("", ""));
    }
}
