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
//! **Hash cache.** A file's BLAKE3, once a GET has computed it, is kept in the root's hash
//! index ([`crate::sys::hash_index`]) with the device, inode, size, mtime and **ctime** it was
//! computed for and the time the hashing began. It is trusted only while all five still match
//! the file's `fstat` and the hashing began more than [`RACY_WINDOW_NS`] after the last
//! change (git's "racy clean" rule). The ctime is what makes it sound: an mtime can be set
//! back to the nanosecond (`utimensat`), a ctime cannot, and every write moves it. (The cache
//! used to be an extended attribute on the file, compared on size and mtime only: setting the
//! attribute moves the ctime, so it could not record one, and a same-size change with the
//! mtime restored kept the old hash — issue 12.) A file a PUT has just renamed into place is
//! not cached: the rename and link move its ctime after its bytes were hashed, so its first
//! GET hashes it again, from the disk. Without an index (a read-only root) every GET hashes.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, warn};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat};
use rustix::io::Errno;

use crate::proto::ErrorCode;
use crate::proto::files::{DirEntry, FileInfo, FileKind, Hash, partial_id};
use crate::proto::path::RESERVED_PREFIX;
use crate::sys::disk::{Disk, Job, OFFLOAD_UNLINK_BYTES, trash_name};
use crate::sys::hash_index::{Entry, HashIndex};
use crate::sys::root::Root;
use crate::sys::upload::Uploads;

/// A file whose ctime or mtime is within this of the moment its hashing began may have been
/// written again in the same timestamp tick, so that hash is not trusted. Kernel timestamps
/// advance in ticks of 1–10 ms; 100 ms leaves a wide margin.
pub const RACY_WINDOW_NS: i64 = 100_000_000;

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
            ctime_ns: stat
                .st_ctime
                .saturating_mul(1_000_000_000)
                .saturating_add(stat.st_ctime_nsec as i64),
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

/// The wall clock, ns since the epoch (the hash cache compares it with file ctimes and mtimes).
pub fn wall_clock_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as i64)
}

/// The hash index as far as this process knows it.
#[derive(Debug)]
enum Index {
    /// Not opened yet (it is opened at the first lookup, beneath the root).
    Unopened,
    /// Open.
    Open(HashIndex),
    /// Cannot be opened (a read-only root, something else under its name): no cache, every
    /// GET hashes.
    Unavailable,
}

/// The file service's shared state: how many transfers run, which resumable uploads are in
/// use, the hash index.
#[derive(Debug)]
pub struct FileState {
    transfers: Arc<AtomicUsize>,
    pub(crate) uploads: Uploads,
    index: Index,
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
            index: Index::Unopened,
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
        let hash = self.cached_hash(&meta);
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
        // The index is keyed on what `stat` gives: the file need not be opened.
        let hash = if meta.kind == FileKind::File {
            self.cached_hash(&meta)
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
        if partial_id(&name).is_some() {
            return self.delete_partial(&dir, &name, path, disk);
        }
        let stat = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| FileError::from_errno(errno, path))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        let frees_much = kind == FileType::RegularFile
            && stat.st_nlink == 1
            && (stat.st_blocks as u64).saturating_mul(512) >= OFFLOAD_UNLINK_BYTES;
        let mut disk = disk;
        if let (true, Some(disk)) = (
            frees_much,
            disk.as_mut().map(|disk| &mut **disk as &mut dyn Disk),
        ) {
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
        match rustix::fs::unlinkat(&dir, name.as_str(), flags) {
            // Not empty: perhaps only of interrupted uploads, which the user could not see
            // to remove before LIST showed them.
            Err(Errno::NOTEMPTY) => {
                self.remove_leftovers(&dir, &name, path, disk)?;
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

    /// The index, opened beneath the root at the first use; `None` if it cannot be (then
    /// nothing is cached, and every GET hashes).
    fn index(&mut self) -> Option<&HashIndex> {
        if matches!(self.state.index, Index::Unopened) {
            self.state.index = match HashIndex::open(self.root.dir()) {
                Ok(index) => Index::Open(index),
                Err(error) => {
                    warn!(
                        "no hash cache (every GET hashes its file): cannot open {} in the root: {error}",
                        crate::sys::hash_index::INDEX_NAME
                    );
                    Index::Unavailable
                }
            };
        }
        match &self.state.index {
            Index::Open(index) => Some(index),
            _ => None,
        }
    }

    /// The cached hash of the file whose `fstat` is `meta` now, if the index holds one still
    /// valid for it ([`Entry::valid_for`]).
    pub fn cached_hash(&mut self, meta: &Meta) -> Option<Hash> {
        let entry = self.index()?.get(meta.dev, meta.ino)?;
        entry.valid_for(meta).then_some(entry.hash)
    }

    /// Caches `hash` as the content of the file with `meta`.
    ///
    /// `as_of_ns` is when the bytes hashed began to be read — the start of the hashing, not
    /// its end, and `meta` the `fstat` taken before that: a write during a long hash in the
    /// tick of the ctime recorded must still make the entry racy. The caller checks that
    /// `meta` still holds after the hashing.
    pub fn store_hash(&mut self, meta: &Meta, hash: &Hash, as_of_ns: i64) {
        let entry = Entry::new(meta, hash, as_of_ns);
        if let Some(index) = self.index() {
            if let Err(error) = index.put(&entry) {
                debug!("hash not cached: {error}");
            }
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
    use std::os::unix::fs::FileExt;

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
    fn a_hash_is_cached_by_ctime_and_never_after_an_in_place_change() {
        let base =
            std::env::temp_dir().join(format!("monoreactor-hashcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = Root::open_or_create(&base).unwrap();
        let path = root.path().join("f");
        std::fs::write(&path, b"hello").unwrap();
        let mut state = FileState::new(4, 1 << 20);
        let mut files = Files {
            root: &root,
            state: &mut state,
        };
        let opened = files.open_read("f").unwrap();
        assert_eq!(opened.hash, None, "nothing cached yet");
        let hash = *blake3::hash(b"hello").as_bytes();
        // Hashed "now", right after the write: racy, so not trusted.
        files.store_hash(&opened.meta, &hash, wall_clock_ns());
        assert_eq!(files.stat("f").unwrap().hash, None, "racily clean");
        // Hashed well after the last change: trusted, by STAT and GET.
        let later = opened.meta.ctime_ns.max(opened.meta.mtime_ns) + RACY_WINDOW_NS + 1;
        files.store_hash(&opened.meta, &hash, later);
        assert_eq!(files.stat("f").unwrap().hash, Some(hash));
        assert_eq!(files.open_read("f").unwrap().hash, Some(hash));
        // Same size, mtime set back to the nanosecond: the ctime moved, the entry is gone.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let file = File::options().write(true).open(&path).unwrap();
        file.write_all_at(b"HELLO", 0).unwrap();
        file.set_modified(mtime).unwrap();
        let now = files.open_read("f").unwrap();
        assert_eq!(
            (now.meta.size, now.meta.mtime_ns),
            (5, opened.meta.mtime_ns)
        );
        assert_eq!(now.hash, None);
        assert_eq!(files.stat("f").unwrap().hash, None);
        assert!(base.join(crate::sys::hash_index::INDEX_NAME).exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn without_an_index_nothing_is_cached_and_nothing_fails() {
        let base = std::env::temp_dir().join(format!("monoreactor-noindex-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = Root::open_or_create(&base).unwrap();
        // Something the index cannot be in the way (as a read-only root would refuse it).
        std::fs::create_dir(base.join(crate::sys::hash_index::INDEX_NAME)).unwrap();
        std::fs::write(root.path().join("f"), b"hello").unwrap();
        let mut state = FileState::new(4, 1 << 20);
        let mut files = Files {
            root: &root,
            state: &mut state,
        };
        let opened = files.open_read("f").unwrap();
        files.store_hash(&opened.meta, &[1; 32], i64::MAX);
        assert_eq!(files.open_read("f").unwrap().hash, None);
        assert_eq!(files.stat("f").unwrap().hash, None);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn split_separates_parent_and_name() {
        assert_eq!(split("a/b/c"), ("a/b", "c"));
        assert_eq!(split("c"), ("", "c"));
        assert_eq!(split(""), ("", ""));
    }
}
