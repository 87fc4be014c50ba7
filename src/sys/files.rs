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
//! **Uploads** — atomic, resumable, one writer across processes, committed by descriptor —
//! are in [`crate::sys::upload`].
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
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use log::debug;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, XattrFlags};
use rustix::io::Errno;

use crate::proto::ErrorCode;
use crate::proto::files::{DirEntry, FileInfo, FileKind, HASH_LEN, Hash, partial_id};
use crate::proto::path::RESERVED_PREFIX;
use crate::sys::root::Root;
use crate::sys::upload::Uploads;

/// A file whose mtime is within this of the moment its hash was stored may have been written
/// again in the same timestamp tick, so that hash is not trusted. Kernel timestamps advance
/// in ticks of 1–10 ms; 100 ms leaves a wide margin.
pub const RACY_WINDOW_NS: i64 = 100_000_000;

/// Most entries the in-memory hash index keeps (used only where xattrs are unsupported).
const MEMO_ENTRIES: usize = 4096;

/// The extended attribute holding a file's cached hash.
const HASH_XATTR: &str = "user.monoreactor.blake3";

/// Layout of [`HASH_XATTR`]: size, mtime ns, stored-at ns (BE u64 each), then the hash.
const XATTR_LEN: usize = 24 + HASH_LEN;

/// A file operation's failure, as the client will hear it.
#[derive(Debug)]
pub struct FileError {
    /// The error code for the stream's ERROR frame.
    pub code: ErrorCode,
    /// The text, naming the path.
    pub text: String,
}

impl FileError {
    pub(crate) fn new(code: ErrorCode, text: impl Into<String>) -> FileError {
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
            // Opening a socket file (or a device with nothing behind it) gives ENXIO: like a
            // FIFO's, the answer is that it is not a regular file, not an I/O failure.
            Errno::NXIO => (ErrorCode::BadRequest, "not a regular file"),
            Errno::MFILE | Errno::NFILE => (ErrorCode::LimitReached, "out of file descriptors"),
            _ => {
                let text = format!("{shown}: {}", io::Error::from(errno));
                return FileError::new(ErrorCode::IoFailed, text);
            }
        };
        FileError::new(code, format!("{shown}: {what}"))
    }

    pub(crate) fn io(error: &io::Error, path: &str) -> FileError {
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
    pub(crate) fn of(stat: &Stat) -> Meta {
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

/// The file service's shared state: how many transfers run, which resumable uploads are in
/// use, the fallback hash index.
#[derive(Debug)]
pub struct FileState {
    transfers: Arc<AtomicUsize>,
    pub(crate) uploads: Uploads,
    memo: HashMap<(u64, u64), CacheEntry>,
    /// When each directory (device, inode) was last swept for expired partials.
    pub(crate) swept: HashMap<(u64, u64), i64>,
    max_transfers: usize,
    pub(crate) max_put: u64,
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
        let partial = partial_id(name).is_some();
        if name == "." || name == ".." || (name.starts_with(RESERVED_PREFIX) && !partial) {
            return Ok(Read::Skipped);
        }
        let fd = self
            .dir
            .fd()
            .map_err(|errno| FileError::from_errno(errno, &self.path))?;
        match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => {
                let mut meta = Meta::of(&stat);
                if partial && meta.kind == FileKind::File {
                    meta.kind = FileKind::Partial;
                }
                Ok(Read::Entry(name.to_string(), meta))
            }
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

/// Splits `path` into its parent directory and last component ("" has neither).
fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(at) => (&path[..at], &path[at + 1..]),
        None => ("", path),
    }
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

    pub(crate) fn parent(&self, path: &str) -> Result<(OwnedFd, String), FileError> {
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
    pub fn delete(&mut self, path: &str) -> Result<(), FileError> {
        let (dir, name) = self.parent(path)?;
        if partial_id(&name).is_some() {
            return self.delete_partial(&dir, &name, path);
        }
        let stat = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| FileError::from_errno(errno, path))?;
        let flags = if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        match rustix::fs::unlinkat(&dir, name.as_str(), flags) {
            // Not empty: perhaps only of interrupted uploads, which the user could not see
            // to remove before LIST showed them.
            Err(Errno::NOTEMPTY) => {
                self.remove_leftovers(&dir, &name, path)?;
                rustix::fs::unlinkat(&dir, name.as_str(), flags)
            }
            done => done,
        }
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
    fn split_separates_parent_and_name() {
        assert_eq!(split("a/b/c"), ("a/b", "c"));
        assert_eq!(split("c"), ("", "c"));
        assert_eq!(split(""), ("", ""));
    }
}
