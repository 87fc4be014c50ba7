//! The file service's I/O layer: every descriptor and every disk call the file service makes,
//! confined beneath the root ([`Root`]), behind the [`Disk`] trait the connection uses.
//!
//! **Confinement.** A request's path has passed [`check_relative`](crate::proto::path) before
//! it gets here. Files and directories are then opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)` beneath the root's descriptor, so the kernel
//! refuses any component that is a symlink or leads out; a name is created, renamed or removed
//! only through its parent directory opened the same way, with a single-component `*at` call.
//! What was checked is what is used: there is no path string re-resolved later.
//!
//! **What lives where.** This module: opening and `stat` (GET, STAT), DELETE, MKDIR, SET_ATTRS, the
//! server's [`FileState`] (its transfers, uploads and listings, by handle), and [`Files`], the
//! [`Disk`] the connection is given. Uploads — atomic, resumable, one writer across processes,
//! committed by descriptor — are [`crate::sys::upload`]; directory listings
//! [`crate::sys::listing`]; what an errno means to a client [`crate::sys::errno`]; the hash
//! cache's index [`crate::sys::hash_index`]; the blocking calls made off the loop
//! [`crate::sys::disk`].
//!
//! **Hash cache.** A file's BLAKE3, once a GET has computed it, is kept in the root's hash
//! index ([`crate::sys::hash_index`]) with the device, inode, size, mtime and **ctime** it was
//! computed for and the time the hashing began. It is trusted only while all five still match
//! the file's `fstat` and the hashing began more than
//! [`RACY_WINDOW_NS`](crate::sys::hash_index::RACY_WINDOW_NS) after the last change (git's
//! "racy clean" rule). The ctime is what makes it sound: an mtime can be set back to the
//! nanosecond (`utimensat`), a ctime cannot, and every write moves it. (The cache used to be an
//! extended attribute on the file, compared on size and mtime only: setting the attribute moves
//! the ctime, so it could not record one, and a same-size change with the mtime restored kept
//! the old hash — issue 12.) A file a PUT has just renamed into place is not cached: the rename
//! and link move its ctime after its bytes were hashed, so its first GET hashes it again, from
//! the disk. Without an index (a read-only root) every GET hashes.
//!
//! **One thread.** The server's file state is the loop's alone: the count of transfers, the
//! table of uploads in progress, the listings are plain fields, handed to each connection's
//! drive inside a [`Files`]; what a connection holds is handles into them, given back
//! explicitly, as a command's [`ChildId`](crate::service::exec::ChildId) is.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use log::{debug, warn};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use slab::Slab;

use crate::proto::ErrorCode;
use crate::proto::files::{FileInfo, FileKind, Hash, PutAttrs, PutRequest, partial_id};
use crate::service::disk::{
    BegunUpload, DirRead, Disk, FileError, FileMeta, JobId, ListingHandle, OpenedFile, Pending,
    SyncKind, TransferPermit, UploadHandle,
};
use crate::sys::disk::{Job, Jobs, OFFLOAD_UNLINK_BYTES, trash_name};
use crate::sys::errno::{file_error, io_file_error};
use crate::sys::hash_index::{Entry, HashIndex};
use crate::sys::listing::Listing;
use crate::sys::root::Root;
use crate::sys::upload::{OpenUpload, Partial};
use crate::timer::WallClock;

/// What `stat` says of a file, in the file service's terms.
pub(crate) fn meta_of_stat(stat: &Stat) -> FileMeta {
    let kind = match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Directory,
        FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    };
    FileMeta {
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

/// Re-reads the metadata of an open file (to see whether it changed while being sent).
pub(crate) fn meta_of(file: &impl AsFd) -> io::Result<FileMeta> {
    Ok(meta_of_stat(&rustix::fs::fstat(file)?))
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

/// The file service's state in this server: how many transfers run, the uploads and listings
/// open (by handle), which resumable uploads are in progress, the hash index. The loop's
/// alone, like everything else it owns.
#[derive(Debug)]
pub(crate) struct FileState {
    /// Transfers running, each holding a [`TransferPermit`].
    transfers: usize,
    /// Taken from the limits at start and by a reload (SIGHUP).
    pub(crate) max_transfers: usize,
    pub(crate) max_put: u64,
    index: Index,
    /// When each directory (device, inode) was last swept for expired partials.
    pub(crate) swept: HashMap<(u64, u64), i64>,
    /// The uploads open, by the index in their [`UploadHandle`].
    pub(crate) uploads: Slab<OpenUpload>,
    /// Told apart from an earlier upload in the same slot of `uploads`.
    pub(crate) next_generation: u32,
    /// The resumable uploads being received in this process, by upload id.
    pub(crate) partials: HashMap<u64, Partial>,
    /// The directories being listed, by [`ListingHandle`].
    listings: Slab<Listing>,
}

impl FileState {
    /// State for a server allowing `max_transfers` at once and puts of up to `max_put` bytes.
    pub(crate) fn new(max_transfers: usize, max_put: u64) -> FileState {
        FileState {
            transfers: 0,
            max_transfers,
            max_put,
            index: Index::Unopened,
            swept: HashMap::new(),
            uploads: Slab::new(),
            next_generation: 0,
            partials: HashMap::new(),
            listings: Slab::new(),
        }
    }

    /// Transfers running now (the test kit shows it).
    #[cfg(any(test, feature = "testkit"))]
    pub(crate) fn transfers(&self) -> usize {
        self.transfers
    }
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
fn rename_aside(dir: &OwnedFd, name: &str, now: WallClock) -> Result<String, Errno> {
    for _ in 0..8 {
        let trash = trash_name(now);
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

/// The file service's disk for one connection's drive: the root, the server's file state,
/// where blocking calls go, and the loop's wall clock this turn. The reactor builds one per
/// drive (its jobs go to the disk helper, owned by the connection); a test harness builds one
/// over a scripted disk.
pub(crate) struct Files<'a> {
    /// The root everything is beneath.
    pub root: &'a Root,
    /// The server's file state.
    pub state: &'a mut FileState,
    /// Where blocking calls go.
    pub jobs: &'a mut dyn Jobs,
    /// The wall clock as the loop read it this turn.
    pub now: WallClock,
}

impl std::fmt::Debug for Files<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("root", &self.root)
            .field("state", &self.state)
            .field("off_the_loop", &self.jobs.off_the_loop())
            .field("now", &self.now)
            .finish()
    }
}

impl Files<'_> {
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
            .map_err(|errno| file_error(errno, parent))?;
        Ok((dir, name.to_string()))
    }

    /// Removes `path`; see [`Disk::delete`].
    ///
    /// With jobs that go off the loop, a regular file whose blocks would be freed by the
    /// removal (its last link, at least [`OFFLOAD_UNLINK_BYTES`]) is renamed aside to a fresh
    /// [`TRASH_PREFIX`](crate::sys::disk::TRASH_PREFIX) name in the same directory — a new
    /// name, so the rename frees nothing and is quick — and the unlink of that name, which
    /// frees the blocks (178 ms for 1 GiB on ext4, measured), is submitted as a job. The path
    /// is gone when this returns either way. Anything else is removed here, as is everything
    /// when jobs are made here anyway.
    fn remove(&mut self, path: &str) -> Result<(), FileError> {
        let (dir, name) = self.parent(path)?;
        if partial_id(&name).is_some() {
            return self.delete_partial(&dir, &name, path);
        }
        let stat = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| file_error(errno, path))?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        let frees_much = kind == FileType::RegularFile
            && stat.st_nlink == 1
            && (stat.st_blocks as u64).saturating_mul(512) >= OFFLOAD_UNLINK_BYTES;
        if frees_much && self.jobs.off_the_loop() {
            match rename_aside(&dir, &name, self.now) {
                Ok(trash) => {
                    debug!("{path}: renamed aside to {trash}, unlinked off the loop");
                    // Its completion is only logged (`Connection::handle_disk_done`).
                    let _ = self.jobs.submit(Job::Unlink { dir, name: trash });
                    return Ok(());
                }
                Err(Errno::NOENT) => return Err(file_error(Errno::NOENT, path)),
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
                self.remove_leftovers(&dir, &name, path)?;
                rustix::fs::unlinkat(&dir, name.as_str(), flags)
            }
            done => done,
        }
        .map_err(|errno| file_error(errno, path))
    }

    /// Opens a regular file for reading, with its metadata and cached hash.
    fn open_file(&mut self, path: &str) -> Result<OpenedFile, FileError> {
        // O_NONBLOCK: opening a FIFO must not block the loop (it is refused right after).
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = self
            .root
            .open_beneath(path, flags, Mode::empty())
            .map_err(|errno| file_error(errno, path))?;
        let stat = rustix::fs::fstat(&fd).map_err(|errno| file_error(errno, path))?;
        let meta = meta_of_stat(&stat);
        match meta.kind {
            FileKind::File => {}
            FileKind::Directory => {
                return Err(file_error(Errno::ISDIR, path));
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
            mode: stat.st_mode & 0o777,
        })
    }

    /// What `path` names (a symlink as itself), with the cached hash of a regular file, and
    /// its permission bits.
    fn stat_path(&mut self, path: &str) -> Result<(FileInfo, u32), FileError> {
        if path.is_empty() {
            let stat =
                rustix::fs::fstat(self.root.dir()).map_err(|errno| file_error(errno, path))?;
            return Ok((meta_of_stat(&stat).info(None), stat.st_mode & 0o777));
        }
        let (dir, name) = self.parent(path)?;
        let stat = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|errno| file_error(errno, path))?;
        let meta = meta_of_stat(&stat);
        // The index is keyed on what `stat` gives: the file need not be opened.
        let hash = if meta.kind == FileKind::File {
            self.cached_hash(&meta)
        } else {
            None
        };
        Ok((meta.info(hash), stat.st_mode & 0o777))
    }

    /// Gives the file or directory `path` the permission bits and times of `attrs`, through
    /// a descriptor opened beneath the root (no symlink on the way, the last component
    /// included): what was checked is what is changed, and nothing outside the root can be
    /// (a regular file with another hard link is refused: that link may be outside).
    fn set_path_attrs(&mut self, path: &str, attrs: PutAttrs) -> Result<(), FileError> {
        if path.is_empty() {
            // The root's mode is the operator's: a client that gave it 0o000 would lock
            // every other client (and the server's own names) out.
            return Err(FileError::new(
                ErrorCode::BadRequest,
                "the root's mode and times cannot be set",
            ));
        }
        // O_RDONLY opens a directory as well as a file (fchmod and futimens need a real
        // descriptor, not O_PATH); O_NONBLOCK so that a FIFO cannot block the loop (it is
        // refused right after).
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = self
            .root
            .open_beneath(path, flags, Mode::empty())
            .map_err(|errno| file_error(errno, path))?;
        let stat = rustix::fs::fstat(&fd).map_err(|errno| file_error(errno, path))?;
        match FileType::from_raw_mode(stat.st_mode) {
            // SET_ATTRS is the one request that changes an inode in place (PUT renames a new
            // file over the name, DELETE removes the name), so it alone would reach through
            // a hard link: to a file outside the root, or outside a credential's scope.
            FileType::RegularFile if stat.st_nlink > 1 => {
                return Err(FileError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "{path}: has other hard links, which may lie outside the root; \
                         its mode and times are left alone"
                    ),
                ));
            }
            FileType::RegularFile | FileType::Directory => {}
            _ => {
                return Err(FileError::new(
                    ErrorCode::BadRequest,
                    format!("{path}: not a regular file or a directory"),
                ));
            }
        }
        // Permission bits only, as PUT's ATTRS: a client never makes anything setuid, setgid
        // or sticky.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(attrs.mode & 0o777))
            .map_err(|errno| file_error(errno, path))?;
        let at = Timespec {
            tv_sec: attrs.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: attrs.mtime_ns.rem_euclid(1_000_000_000) as _,
        };
        let times = Timestamps {
            last_access: at,
            last_modification: at,
        };
        rustix::fs::futimens(&fd, &times).map_err(|errno| file_error(errno, path))
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
    fn cached_hash(&mut self, meta: &FileMeta) -> Option<Hash> {
        let entry = self.index()?.get(meta.dev, meta.ino)?;
        entry.valid_for(meta).then_some(entry.hash)
    }
}

impl Disk for Files<'_> {
    fn stat(&mut self, path: &str) -> Result<(FileInfo, u32), FileError> {
        self.stat_path(path)
    }

    fn set_attrs(&mut self, path: &str, attrs: PutAttrs) -> Result<(), FileError> {
        self.set_path_attrs(path, attrs)
    }

    fn mkdir(&mut self, path: &str) -> Result<(), FileError> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o755))
            .map_err(|errno| file_error(errno, path))
    }

    fn delete(&mut self, path: &str) -> Result<(), FileError> {
        self.remove(path)
    }

    fn admit(&mut self) -> Result<TransferPermit, FileError> {
        let running = self.state.transfers;
        if running >= self.state.max_transfers {
            return Err(FileError::new(
                ErrorCode::LimitReached,
                format!(
                    "{running} transfers are running on this server, its limit (--max-transfers)"
                ),
            ));
        }
        self.state.transfers += 1;
        Ok(TransferPermit::taken())
    }

    fn end_transfer(&mut self, permit: TransferPermit) {
        drop(permit);
        self.state.transfers = self.state.transfers.saturating_sub(1);
    }

    fn open_read(&mut self, path: &str) -> Result<OpenedFile, FileError> {
        self.open_file(path)
    }

    fn read_at(&mut self, file: &File, buf: &mut [u8], offset: u64) -> Result<usize, FileError> {
        file.read_at(buf, offset)
            .map_err(|error| io_file_error(&error, "the file being sent"))
    }

    fn unchanged(&mut self, file: &File, meta: &FileMeta) -> bool {
        meta_of(file).is_ok_and(|now| now == *meta)
    }

    /// Caches `hash` as the content of the file with `meta`.
    ///
    /// `as_of` is when the bytes hashed began to be read — the start of the hashing, not its
    /// end, and `meta` the `fstat` taken before that: a write during a long hash in the tick
    /// of the ctime recorded must still make the entry racy. The caller checks that `meta`
    /// still holds after the hashing.
    fn store_hash(&mut self, meta: &FileMeta, hash: &Hash, as_of: WallClock) {
        let entry = Entry::new(meta, hash, as_of.0);
        if let Some(index) = self.index() {
            if let Err(error) = index.put(&entry) {
                debug!("hash not cached: {error}");
            }
        }
    }

    fn open_listing(&mut self, path: &str) -> Result<ListingHandle, FileError> {
        let listing = Listing::open(self.root, path)?;
        Ok(ListingHandle(self.state.listings.insert(listing) as u64))
    }

    fn read_entry(&mut self, listing: ListingHandle) -> Result<DirRead, FileError> {
        match self.state.listings.get_mut(listing.0 as usize) {
            Some(listing) => listing.read_entry(),
            // Closed already: nothing more to list.
            None => Ok(DirRead::End),
        }
    }

    fn close_listing(&mut self, listing: ListingHandle) {
        self.state.listings.try_remove(listing.0 as usize);
    }

    fn begin_put(&mut self, request: &PutRequest<'_>) -> Result<BegunUpload, FileError> {
        self.open_upload(request)
    }

    fn superseded(&self, upload: UploadHandle) -> bool {
        self.state.superseded(upload)
    }

    fn read_upload(
        &mut self,
        upload: UploadHandle,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<usize, FileError> {
        self.read_held(upload, buf, offset)
    }

    fn write_upload(
        &mut self,
        upload: UploadHandle,
        bytes: &[u8],
        offset: u64,
    ) -> Result<Option<JobId>, FileError> {
        self.write_piece(upload, bytes, offset)
    }

    fn sync_upload(&mut self, upload: UploadHandle, kind: SyncKind) -> Pending {
        self.sync(upload, kind)
    }

    fn publish(&mut self, upload: UploadHandle) -> Result<Pending, FileError> {
        self.commit(upload)
    }

    fn discard(&mut self, upload: UploadHandle) {
        self.remove_upload(upload);
    }

    fn release_upload(&mut self, upload: UploadHandle) {
        self.release(upload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::disk::RunHere;
    use crate::sys::hash_index::RACY_WINDOW_NS;
    use std::os::unix::fs::FileExt;

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
            jobs: &mut RunHere,
            now: WallClock::read(),
        };
        let opened = files.open_read("f").unwrap();
        assert_eq!(opened.hash, None, "nothing cached yet");
        let hash = *blake3::hash(b"hello").as_bytes();
        // Hashed "now", right after the write: racy, so not trusted.
        files.store_hash(&opened.meta, &hash, WallClock::read());
        assert_eq!(files.stat("f").unwrap().0.hash, None, "racily clean");
        // Hashed well after the last change: trusted, by STAT and GET.
        let later = opened.meta.ctime_ns.max(opened.meta.mtime_ns) + RACY_WINDOW_NS + 1;
        files.store_hash(&opened.meta, &hash, WallClock(later));
        assert_eq!(files.stat("f").unwrap().0.hash, Some(hash));
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
        assert_eq!(files.stat("f").unwrap().0.hash, None);
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
            jobs: &mut RunHere,
            now: WallClock::read(),
        };
        let opened = files.open_read("f").unwrap();
        files.store_hash(&opened.meta, &[1; 32], WallClock(i64::MAX));
        assert_eq!(files.open_read("f").unwrap().hash, None);
        assert_eq!(files.stat("f").unwrap().0.hash, None);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn transfers_take_places_up_to_the_limit_and_give_them_back() {
        let base = std::env::temp_dir().join(format!("monoreactor-permits-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = Root::open_or_create(&base).unwrap();
        let mut state = FileState::new(2, 1 << 20);
        let mut files = Files {
            root: &root,
            state: &mut state,
            jobs: &mut RunHere,
            now: WallClock::read(),
        };
        let first = files.admit().unwrap();
        let second = files.admit().unwrap();
        assert_eq!(files.admit().unwrap_err().code, ErrorCode::LimitReached);
        files.end_transfer(first);
        let third = files.admit().unwrap();
        files.end_transfer(second);
        files.end_transfer(third);
        assert_eq!(files.state.transfers(), 0);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn split_separates_parent_and_name() {
        assert_eq!(split("a/b/c"), ("a/b", "c"));
        assert_eq!(split("c"), ("", "c"));
        assert_eq!(split(""), ("", ""));
    }
}
