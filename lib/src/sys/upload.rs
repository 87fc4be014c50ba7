//! Uploads on disk: the temporary file a PUT writes, who may write it, and how it becomes the
//! file at its path.
//!
//! **One writer per upload, across processes.** A resumable upload's bytes go to the partial
//! file `.monoreactor-partial-<id>` in the target's directory, and every server process that
//! shares the root (`serve --workers N`, or two servers on one root) may be asked to continue
//! it. So whoever writes a partial first takes an exclusive *open file description* lock on it
//! (`F_OFD_SETLK`): the kernel then refuses it to any other open of the file — another
//! process's, or a second open in this one — while a `dup` of the holder's descriptor shares
//! it, and it goes away by itself when the last descriptor closes (a dead process holds
//! nothing). The lock is taken before the partial is truncated or written; a PUT that cannot
//! get it is refused with `UPLOAD_BUSY`, which the client may retry. Whoever removes or
//! renames a partial's name (the commit, a failed upload, the expiry sweep, DELETE) does so
//! while holding its lock, and whoever takes the lock then checks that the name still leads to
//! the inode it locked — so a process that opened the name just before another committed it
//! notices, and starts a new partial instead of writing into the committed file. A partial
//! with more than one link is never written either: a crash between a commit's rename and its
//! removal of the partial's name can leave one, and it *is* the committed file. The partial's
//! name belongs to the server, so anything else found under it (a symlink, a FIFO, put there
//! from outside) is removed rather than left to block that upload for good.
//!
//! Within one process the newest PUT of an upload takes it over (a client that vanished
//! without a FIN, resuming from elsewhere, must not wait for the idle timeout): it shares the
//! older one's descriptor, so the lock stays held, and the older one is marked superseded; it
//! never writes, commits or removes again. The superseded one still holds the descriptor (and
//! so the lock) until its stream ends, which for a stalled client may be the idle timeout; so
//! the table entry that lets the next PUT take the descriptor over (a `Partial`) stays as long
//! as *any* upload shares it, whichever ends first. A commit or a discard removes the entry at
//! once instead: the partial's name is gone, and the descriptor must never be handed to a
//! later PUT (which would truncate a committed file). The uploads open and the table are the
//! loop's own ([`FileState`]): a connection holds an [`UploadHandle`], and the upload ends
//! when the handle is given back.
//!
//! **Committing the inode that was verified.** The bytes were hashed as they arrived and were
//! written through the upload's descriptor, so that descriptor — never "whatever the partial's
//! name points to now" — is what becomes the file. Once the DIGEST is verified
//! ([`Upload::finish`]) and every write is done, the file is `fsync`ed by the disk helper
//! ([`Upload::durable`] says when); then the commit ([`Disk::publish`]) links the descriptor
//! to a fresh `.monoreactor-tmp-` name through `/proc/self/fd` (`linkat(AT_SYMLINK_FOLLOW)`;
//! `AT_EMPTY_PATH` would need `CAP_DAC_READ_SEARCH`) and renames that onto the target:
//! `RENAME_EXCHANGE` if the target exists, so the old file keeps a name and the rename frees
//! none of its blocks (ext4 would, inside the rename, on the loop), else `RENAME_NOREPLACE`.
//! The partial's name is then removed, still under the lock. What is left is handed to the
//! disk helper: the unlink of the old file's new name, and the directory's `fsync` (Pillai et
//! al., OSDI'14), after which the DIGEST may be sent (the caller waits for it). An
//! `O_TMPFILE` upload, which cannot resume, takes the same path without a partial; it is
//! locked too, from its start, so that its `.monoreactor-tmp-` link is as busy as a partial's
//! to a DELETE of the directory in another process.
//!
//! **Writes by the disk helper.** An upload's writes never wait on the disk: each piece
//! ([`SLOT_LEN`](crate::sys::disk::SLOT_LEN)) is copied into a slot of the helper's write
//! ring, and the helper copies it into the file (the copy into fresh page cache is the slow
//! part; see [`crate::sys::disk`]). A piece is written here only when the ring is full or
//! there is no helper. When the writes and syncs are asked for, and what a failed one means,
//! is the service's bookkeeping ([`crate::service::upload`]); this module makes the calls. It
//! remembers, per resumable upload, the writes it handed to the helper (`Partial::writes`),
//! and a newer PUT asks the helper whether any is still in its hands, whether or not the
//! upload that made it is still open: what the partial holds cannot be told while they are on
//! their way.
//!
//! **Leftovers.** A partial nobody resumes expires: a PUT starting in its directory sweeps out
//! leftovers untouched for [`PARTIAL_TTL_NS`] (bounded work, at most hourly per directory,
//! skipping any partial whose lock is held), and trash (a file DELETE renamed aside for the
//! disk helper) older than a minute. Partials are not hidden: LIST shows them (kind PARTIAL,
//! the bytes held), and a DELETE of a partial's path removes it under its lock
//! (`Files::delete_partial`; `UPLOAD_BUSY` while some process is receiving it). A DELETE of a
//! directory holding nothing else removes its leftovers all or none
//! (`Files::remove_leftovers`): it judges every entry, locks every partial and link (one
//! busy: `UPLOAD_BUSY`), and only then removes them.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use log::{debug, info, warn};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

use crate::proto::ErrorCode;
use crate::proto::files::{Hash, PARTIAL_PREFIX, PutAttrs, PutFlags, PutRequest, partial_id};
#[cfg(doc)]
use crate::service::disk::Disk;
use crate::service::disk::{BegunUpload, FileError, JobId, Pending, SyncKind, UploadHandle};
#[cfg(doc)]
use crate::service::upload::Upload;
use crate::service::upload::superseded_error;
use crate::sys::disk::{Job, Jobs, TRASH_PREFIX, trash_name};
use crate::sys::errno::{file_error, io_file_error};
use crate::sys::files::{FileState, Files, meta_of_stat};
use crate::timer::WallClock;

/// A resumable partial untouched for this long is removed (by the next sweep of its
/// directory): an interrupted upload can be resumed for a day.
pub const PARTIAL_TTL_NS: i64 = 24 * 3600 * 1_000_000_000;

/// A directory is swept for expired partials at most this often (when a PUT starts in it).
const SWEEP_INTERVAL_NS: i64 = 3600 * 1_000_000_000;

/// Most entries one sweep looks at, so a huge directory costs a bounded pause.
const SWEEP_ENTRIES: usize = 4096;

/// Most leftovers a DELETE of a directory removes with it (more: `NOT_EMPTY`). It holds each
/// open and locked at once, so that it removes all or none: a descriptor each.
const DELETE_LEFTOVERS: usize = 1024;

/// Trash (a file DELETE renamed aside for the disk helper to unlink) older than this was left
/// behind — the helper or the server was killed before the unlink — and is swept out.
const TRASH_TTL_NS: i64 = 60 * 1_000_000_000;

/// Most directories whose last sweep is remembered.
const SWEPT_DIRS: usize = 4096;

/// Name prefix under which a verified upload is linked just before its rename.
const LINKED_PREFIX: &str = ".monoreactor-tmp-";

/// How often opening a partial and locking it is tried when the name keeps changing under
/// us (each change means another process just committed or removed it).
const LOCK_ATTEMPTS: usize = 4;

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

/// One resumable upload being received in this process (an entry of
/// [`FileState::partials`], by upload id): who holds it now, and the descriptor a newer PUT
/// shares (with its lock).
#[derive(Debug)]
pub(crate) struct Partial {
    /// The newest upload of it: the one that may write it.
    holder: UploadHandle,
    /// Its descriptor, as long as any upload still shares it.
    file: Weak<File>,
    /// The holder's writes handed to the disk helper: those still pending (not yet done) are
    /// on their way to the file. Pruned of the done ones when they pile up, and when a newer
    /// PUT asks.
    writes: Vec<JobId>,
}

/// The writes a [`Partial`] remembers before it forgets the ones done.
const WRITES_REMEMBERED: usize = 64;

/// Where an upload's bytes go until they are committed.
#[derive(Debug)]
enum Temp {
    /// An `O_TMPFILE`: no name until commit.
    Unnamed,
    /// What stands in for an `O_TMPFILE` on a file system without them (NFS, FUSE, old
    /// kernels): a fresh [`LINKED_PREFIX`] name, locked, that is renamed onto the target at
    /// commit and removed if the upload ends otherwise (or swept, as a leftover, after a crash).
    Named(String),
    /// A resumable partial, by name, locked.
    Partial(String),
}

/// An upload open in this process (an entry of [`FileState::uploads`]): its temporary file,
/// its directory, and the name it will get. Given back unpublished ([`FileState::close_upload`])
/// it leaves an unnamed temporary to vanish with its descriptor and a resumable partial for a
/// later resume (its lock goes with the last descriptor).
#[derive(Debug)]
pub(crate) struct OpenUpload {
    /// Tells this upload apart from an earlier one in the same slot.
    generation: u32,
    /// The temporary file; shared with a newer PUT that took this upload over.
    file: Arc<File>,
    dir: OwnedFd,
    name: String,
    path: String,
    temp: Temp,
    /// The upload id (0: not resumable).
    id: u64,
    /// Set when a newer PUT of the same upload took over its partial: this one may then
    /// neither write, nor commit, nor remove it.
    superseded: bool,
    committed: bool,
    /// The PUT's `DEFER_SYNC` and `SYNC_FS` flags: how the commit makes it durable.
    durability: PutFlags,
    /// The mode and mtime the commit gives the file (`ATTRS`).
    attrs: Option<PutAttrs>,
}

/// The slot of `uploads` an upload handle names, and its generation.
fn slot_of(handle: UploadHandle) -> (usize, u32) {
    (
        (handle.0 & u64::from(u32::MAX)) as usize,
        (handle.0 >> 32) as u32,
    )
}

impl FileState {
    /// The upload `handle` names, if it is still open.
    fn upload(&self, handle: UploadHandle) -> Option<&OpenUpload> {
        let (slot, generation) = slot_of(handle);
        self.uploads
            .get(slot)
            .filter(|upload| upload.generation == generation)
    }

    fn upload_mut(&mut self, handle: UploadHandle) -> Option<&mut OpenUpload> {
        let (slot, generation) = slot_of(handle);
        self.uploads
            .get_mut(slot)
            .filter(|upload| upload.generation == generation)
    }

    /// Takes the upload `handle` names out of the table (the handle is given back).
    pub(crate) fn take_upload(&mut self, handle: UploadHandle) -> Option<OpenUpload> {
        self.upload(handle)?;
        Some(self.uploads.remove(slot_of(handle).0))
    }

    /// Whether a newer PUT of the same upload took `handle` over.
    pub(crate) fn superseded(&self, handle: UploadHandle) -> bool {
        self.upload(handle).is_some_and(|upload| upload.superseded)
    }

    /// The path an open upload will get (the test kit's failure injection names it).
    #[cfg(any(test, feature = "testkit"))]
    pub(crate) fn upload_path(&self, handle: UploadHandle) -> Option<&str> {
        self.upload(handle).map(|upload| upload.path.as_str())
    }

    /// Ends an upload taken out of the table: it leaves the table of uploads in progress if
    /// no other upload shares its descriptor (or it was committed), and its descriptor is
    /// closed (the last one frees the lock).
    pub(crate) fn close_upload(&mut self, upload: OpenUpload) {
        // The entry is how the next PUT of this upload in this process gets the descriptor,
        // and with it the lock. So it stays as long as any upload still shares the descriptor:
        // a superseded one keeps it (and the lock) until its stream ends, and without the
        // entry every PUT would be refused `UPLOAD_BUSY` meanwhile, whichever of the two ends
        // first. Once committed, the partial's name is gone and the descriptor is the
        // committed file: the entry goes at once, or the next PUT would take it over and
        // truncate a confirmed file.
        if upload.committed || Arc::strong_count(&upload.file) == 1 {
            self.unregister(&upload);
        }
        if !upload.committed {
            if let Temp::Partial(name) = &upload.temp {
                debug!("{}: partial upload {name} kept for a resume", upload.path);
            }
        }
    }

    /// Removes `upload`'s entry from the table of uploads in progress, if the entry is still
    /// for its descriptor (not for a newer upload of the same id started afresh).
    fn unregister(&mut self, upload: &OpenUpload) {
        if upload.id == 0 {
            return;
        }
        if self.partials.get(&upload.id).is_some_and(|partial| {
            // The entry's `Weak` keeps the allocation, so its address is not reused.
            std::ptr::eq(partial.file.as_ptr(), Arc::as_ptr(&upload.file))
        }) {
            self.partials.remove(&upload.id);
        }
    }

    /// Opens `upload` in the table: its handle.
    fn insert_upload(&mut self, mut upload: OpenUpload) -> UploadHandle {
        self.next_generation = self.next_generation.wrapping_add(1);
        upload.generation = self.next_generation;
        let slot = self.uploads.insert(upload);
        UploadHandle((u64::from(self.next_generation) << 32) | slot as u64)
    }
}

/// Tries to take the exclusive open-file-description lock on the whole of `file` (however
/// long it grows). `Ok(false)`: another open file description holds a lock on it.
/// `Err(ENOLCK)`: the file system (or kernel) has no such locks — see [`lock_failed`].
fn try_lock(file: &impl AsFd) -> Result<bool, Errno> {
    // SAFETY: `flock` is plain data; all-zero is a valid value (l_start and l_len 0 = the
    // whole file; l_pid must be 0 for an OFD lock).
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = libc::F_WRLCK as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on a descriptor we own, with a pointer to a valid `flock` that lives
    // across the call. rustix's `fcntl_lock` takes a process-associated lock, which a second
    // open in the same process would not be refused — hence libc here.
    let rc = unsafe { libc::fcntl(file.as_fd().as_raw_fd(), libc::F_OFD_SETLK, &request) };
    if rc == 0 {
        return Ok(true);
    }
    match Errno::from_io_error(&io::Error::last_os_error()) {
        Some(Errno::AGAIN | Errno::ACCESS) => Ok(false),
        // EINVAL is how a kernel or file system without OFD locks refuses F_OFD_SETLK; it
        // would otherwise read as a bad argument about the file.
        Some(Errno::INVAL | Errno::NOLCK) => Err(Errno::NOLCK),
        Some(errno) => Err(errno),
        None => Err(Errno::IO),
    }
}

/// The error for a PUT or DELETE whose partial (or link) could not be opened and locked.
fn lock_failed(errno: Errno, path: &str) -> FileError {
    match errno {
        Errno::NOLCK => FileError::new(
            ErrorCode::IoFailed,
            format!("{path}: this filesystem does not support open-file-description locks"),
        ),
        Errno::ISDIR => FileError::new(
            ErrorCode::IoFailed,
            format!("{path}: the upload's partial file is a directory"),
        ),
        errno => file_error(errno, path),
    }
}

/// Whether two stats are of the same inode.
fn same_inode(a: &Stat, b: &Stat) -> bool {
    (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
}

/// What opening a partial found.
enum Opened {
    /// The partial, locked by us, its name verified to lead to it, with its stat.
    Locked(File, Stat),
    /// Another open file description holds its lock.
    Busy,
    /// No such name (only without `create`).
    Missing,
    /// The name was not a partial that can be written, and was removed (only without
    /// `create`): a second link of a committed file (what a crash between a commit's rename
    /// and its unlink leaves), or something planted from outside the server — a symlink, a
    /// FIFO, a device.
    Removed,
}

/// Opens the partial `name` in `dir` (creating it with `create`) and takes its lock. Once the
/// lock is ours, the name must still lead to the inode locked: whoever commits or removes a
/// partial removes its name before letting go, so a changed name means we opened it just
/// before that, and open it again. A partial that is linked elsewhere too (the committed file
/// itself, after a crash between a commit's rename and its unlink) is unlinked, never written.
///
/// The name belongs to the server (no request can create it), so anything else found there —
/// a symlink, a FIFO, a device, put there from outside — is removed too, rather than blocking
/// that upload for good. (A directory is left alone: `EISDIR`.)
fn open_locked(dir: &OwnedFd, name: &str, create: bool) -> Result<Opened, Errno> {
    let mut removed = false;
    for _ in 0..LOCK_ATTEMPTS {
        // O_NONBLOCK: a FIFO planted under the name must not block the loop; O_NOCTTY: nor
        // may a terminal become ours. Either is removed below.
        let mut flags =
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        if create {
            flags |= OFlags::CREATE;
        }
        let fd = match rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o644)) {
            Ok(fd) => fd,
            Err(Errno::NOENT) if !create => {
                return Ok(if removed {
                    Opened::Removed
                } else {
                    Opened::Missing
                });
            }
            // ELOOP: a symlink (O_NOFOLLOW); ENXIO: a socket, or a FIFO's other end missing.
            Err(errno @ (Errno::LOOP | Errno::NXIO)) => {
                match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(named) if !writable_type(&named) => {
                        warn!("{name} is not a regular file: removing it");
                        unlink_same(dir, name, &named)?;
                        removed = true;
                        continue;
                    }
                    // Changed meanwhile: try again.
                    Ok(_) | Err(Errno::NOENT) => continue,
                    Err(_) => return Err(errno),
                }
            }
            Err(errno) => return Err(errno),
        };
        let file = File::from(fd);
        let stat = rustix::fs::fstat(&file)?;
        if !writable_type(&stat) {
            warn!("{name} is not a regular file: removing it");
            drop(file);
            unlink_same(dir, name, &stat)?;
            removed = true;
            continue;
        }
        if !try_lock(&file)? {
            return Ok(Opened::Busy);
        }
        match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(named) if same_inode(&named, &stat) => {
                if stat.st_nlink == 1 {
                    return Ok(Opened::Locked(file, stat));
                }
                warn!("partial {name} has {} links: set aside", stat.st_nlink);
                unlink_same(dir, name, &stat)?;
                removed = true;
            }
            Ok(_) | Err(Errno::NOENT) => {}
            Err(errno) => return Err(errno),
        }
        if !create {
            return Ok(if removed {
                Opened::Removed
            } else {
                Opened::Missing
            });
        }
    }
    Ok(Opened::Busy)
}

/// Whether `stat` is of a regular file, the only kind a partial may be. (A directory is not
/// one either, but nothing here removes a directory: its `open` fails with `EISDIR`.)
fn writable_type(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
}

/// Takes the partial `name` out of `dir`, if it still leads to the inode of `stat` (whose lock
/// the caller holds). A big one with no other link — whose unlink would free its blocks on the
/// loop, 0.65 s per GiB on this disk — is renamed aside to a fresh trash name when jobs go off
/// the loop (`offload`), and that name returned: the caller hands it to the helper with
/// [`free_aside`] once it has closed its own descriptors of the file (the last close is what
/// frees the blocks). Anything else is unlinked here.
fn set_aside(
    dir: &OwnedFd,
    name: &str,
    stat: &Stat,
    offload: bool,
    now: WallClock,
) -> Option<String> {
    let big = stat.st_nlink == 1
        && (stat.st_blocks as u64).saturating_mul(512) >= crate::sys::disk::OFFLOAD_UNLINK_BYTES;
    if big && offload {
        let still_ours = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|named| same_inode(&named, stat));
        let trash = trash_name(now);
        if still_ours
            && rustix::fs::renameat_with(dir, name, dir, trash.as_str(), RenameFlags::NOREPLACE)
                .is_ok()
        {
            return Some(trash);
        }
    }
    unlink_if_same(dir, name, stat);
    None
}

/// Hands the unlink of the trash name `trash` in `dir` to the disk helper (here, if jobs are
/// made here or there is no descriptor to give it).
fn free_aside(dir: &OwnedFd, trash: String, jobs: &mut dyn Jobs) {
    match rustix::io::fcntl_dupfd_cloexec(dir, 0) {
        Ok(dir) if jobs.off_the_loop() => {
            // Its completion is only logged (`Connection::handle_disk_done`).
            let _ = jobs.submit(Job::Unlink { dir, name: trash });
        }
        _ => {
            let _ = rustix::fs::unlinkat(dir, trash.as_str(), AtFlags::empty());
        }
    }
}

/// Removes `name` from `dir` if it still leads to the inode of `stat` (whose lock the caller
/// holds, so nobody else may have replaced it since — unless from outside the server).
fn unlink_if_same(dir: &OwnedFd, name: &str, stat: &Stat) {
    if let Err(errno) = unlink_same(dir, name, stat) {
        warn!("cannot remove {name}: {errno}");
    }
}

/// Renames `linked` over `name` in `dir`. If `name` exists, the two are exchanged instead
/// (`RENAME_EXCHANGE`: still one atomic step for readers), and the old file's new name is
/// returned, for its blocks to be freed off the loop: ext4 frees a replaced file's blocks
/// inside the rename, 0.65 s per GiB on this disk. A directory found at `name` is put back and
/// refused; a file system without the flags gets a plain rename.
fn replace(dir: &OwnedFd, linked: &str, name: &str) -> Result<Option<String>, Errno> {
    for _ in 0..LOCK_ATTEMPTS {
        let exists = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                return Err(Errno::ISDIR);
            }
            Ok(_) => true,
            Err(Errno::NOENT) => false,
            Err(errno) => return Err(errno),
        };
        let flags = if exists {
            RenameFlags::EXCHANGE
        } else {
            RenameFlags::NOREPLACE
        };
        match rustix::fs::renameat_with(dir, linked, dir, name, flags) {
            Ok(()) if !exists => return Ok(None),
            Ok(()) => {
                // What came out must be a file to unlink; a directory slipped in meanwhile
                // goes back where it was.
                match rustix::fs::statat(dir, linked, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                        rustix::fs::renameat_with(dir, linked, dir, name, RenameFlags::EXCHANGE)?;
                        return Err(Errno::ISDIR);
                    }
                    _ => return Ok(Some(linked.to_string())),
                }
            }
            // Created or removed since the stat: look again.
            Err(Errno::EXIST | Errno::NOENT) => continue,
            Err(Errno::INVAL | Errno::NOSYS | Errno::NOTSUP) => break,
            Err(errno) => return Err(errno),
        }
    }
    rustix::fs::renameat(dir, linked, dir, name).map(|()| None)
}

/// [`unlink_if_same`], telling why not.
fn unlink_same(dir: &OwnedFd, name: &str, stat: &Stat) -> Result<(), Errno> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(named) if same_inode(&named, stat) => rustix::fs::unlinkat(dir, name, AtFlags::empty()),
        Ok(_) | Err(Errno::NOENT) => Ok(()),
        Err(errno) => Err(errno),
    }
}

/// Whether `name` is one of the server's own leftovers that a DELETE of its directory may
/// remove: a partial upload, a commit's link, trash.
fn is_leftover(name: &str) -> bool {
    partial_id(name).is_some() || name.starts_with(LINKED_PREFIX) || name.starts_with(TRASH_PREFIX)
}

/// Unlinks the trash `name` in `dir` (of the directory `path`) here, on the loop.
fn unlink_trash(dir: &OwnedFd, name: &str, path: &str) -> Result<(), FileError> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => {
            info!("{path}: removed trash {name}");
            Ok(())
        }
        Err(Errno::NOENT) => Ok(()),
        // A directory, made meanwhile: not ours to empty.
        Err(Errno::ISDIR | Errno::PERM) => Err(file_error(Errno::NOTEMPTY, path)),
        Err(errno) => Err(file_error(errno, path)),
    }
}

/// Removes the trash `name` from `dir` (the directory `path`, in `parent`) for a DELETE
/// of that directory: renamed into `parent` under a fresh name and handed to the disk
/// helper, which frees its blocks off the loop (a DELETE renamed it aside because it is
/// big); without a helper, or if the rename fails, unlinked here.
fn remove_trash(
    parent: &OwnedFd,
    dir: &OwnedFd,
    name: &str,
    path: &str,
    jobs: &mut dyn Jobs,
    now: WallClock,
) -> Result<(), FileError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        // Only files are renamed aside; a directory under a trash name (a rename aside undone
        // halfway) is not ours to empty, nor to move.
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
            return Err(file_error(Errno::NOTEMPTY, path));
        }
        Ok(_) => {}
        Err(Errno::NOENT) => return Ok(()), // the helper was quicker
        Err(errno) => return Err(file_error(errno, path)),
    }
    if jobs.off_the_loop() {
        let moved = trash_name(now);
        let renamed =
            rustix::fs::renameat_with(dir, name, parent, moved.as_str(), RenameFlags::NOREPLACE);
        match renamed {
            // If the helper already had the old name queued, it now finds ENOENT, which
            // counts as done.
            Ok(()) => match rustix::io::fcntl_dupfd_cloexec(parent, 0) {
                Ok(parent) => {
                    let _ = jobs.submit(Job::Unlink {
                        dir: parent,
                        name: moved,
                    });
                    return Ok(());
                }
                Err(errno) => {
                    debug!("{path}: cannot hand {moved} to the disk helper ({errno})");
                    return unlink_trash(parent, &moved, path);
                }
            },
            Err(Errno::NOENT) => return Ok(()), // the helper was quicker
            Err(errno) => debug!("{path}: cannot move {name} out ({errno}); unlinking here"),
        }
    }
    unlink_trash(dir, name, path)
}

/// Whether unlinking `name` in `dir` would free enough blocks to be worth the disk helper:
/// a regular file with no other link, occupying at least
/// [`OFFLOAD_UNLINK_BYTES`](crate::sys::disk::OFFLOAD_UNLINK_BYTES).
fn frees_much(dir: &OwnedFd, name: &str) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|stat| {
        FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
            && stat.st_nlink == 1
            && (stat.st_blocks as u64).saturating_mul(512) >= crate::sys::disk::OFFLOAD_UNLINK_BYTES
    })
}

/// Opens an unnamed temporary file in `dir` for an upload that cannot resume.
fn open_tmpfile(dir: &OwnedFd, mode: Mode) -> Result<OwnedFd, Errno> {
    #[cfg(test)]
    if tests::NO_TMPFILE.with(std::cell::Cell::get) {
        return Err(Errno::OPNOTSUPP);
    }
    rustix::fs::openat(
        dir,
        ".",
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        mode,
    )
}

/// A fresh name for linking a verified upload before its rename: unique to this process and
/// call, so two processes committing at once never touch each other's link.
fn linked_name() -> String {
    // Atomic because it is a static: every server in this process links its uploads in the
    // same directories (two on one root, in an embedding program or the tests), and two must
    // never pick the same name.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let serial = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{LINKED_PREFIX}{:x}-{serial:x}", std::process::id())
}

impl Files<'_> {
    /// Prepares an upload: checks the size limit and the target, opens the temporary file.
    /// With a declared hash the upload is resumable: its partial is found (with `resume`) or
    /// started over (without) — once its lock is ours.
    pub(crate) fn open_upload(
        &mut self,
        request: &PutRequest<'_>,
    ) -> Result<BegunUpload, FileError> {
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
                FileType::Directory => return Err(file_error(Errno::ISDIR, path)),
                FileType::Symlink => return Err(file_error(Errno::LOOP, path)),
                _ => {
                    return Err(FileError::new(
                        ErrorCode::BadRequest,
                        format!("{path}: not a regular file"),
                    ));
                }
            },
            Err(Errno::NOENT) => {}
            Err(errno) => return Err(file_error(errno, path)),
        }
        let mode = Mode::from_raw_mode(0o644);
        let Some(hash) = request.hash else {
            let (file, temp) = match open_tmpfile(&dir, mode) {
                Ok(fd) => {
                    // Locked too, although nobody else can open it yet: the commit may give
                    // it a `.monoreactor-tmp-` name for a moment, and a DELETE of the
                    // directory in another process must then find that name busy, as it
                    // finds a partial's link. Without OFD locks the upload goes ahead; such a
                    // DELETE fails on the lock anyway.
                    if let Err(errno) = try_lock(&fd) {
                        debug!("{path}: upload not locked: {errno}");
                    }
                    (File::from(fd), Temp::Unnamed)
                }
                // No `O_TMPFILE` on this file system (`EOPNOTSUPP`; `EISDIR` from kernels
                // before 3.11): a fresh name instead, locked like a partial.
                Err(Errno::OPNOTSUPP | Errno::ISDIR) => {
                    // Such a name outlives a crash, and on a tree of small files no resumable
                    // upload, which sweeps its directory, may ever come here again.
                    self.sweep_expired(&dir, path);
                    let temp = linked_name();
                    match open_locked(&dir, &temp, true) {
                        Ok(Opened::Locked(file, _)) => (file, Temp::Named(temp)),
                        Ok(_) => return Err(file_error(Errno::EXIST, path)),
                        Err(errno) => return Err(lock_failed(errno, path)),
                    }
                }
                Err(errno) => return Err(file_error(errno, path)),
            };
            let handle = self.state.insert_upload(OpenUpload {
                generation: 0,
                file: Arc::new(file),
                dir,
                name,
                path: path.to_string(),
                temp,
                id: 0,
                superseded: false,
                committed: false,
                durability: durability_of(request.flags),
                attrs: request.attrs,
            });
            return Ok(BegunUpload {
                handle,
                id: 0,
                held: 0,
            });
        };
        self.sweep_expired(&dir, path);
        let id = upload_id(path, request.size, &hash);
        let temp_name = format!("{PARTIAL_PREFIX}{id:016x}");
        // The newest PUT of an upload in this process wins: one still in progress (a client
        // that vanished without a FIN, say, and is resuming from elsewhere) is told to stop
        // at its next frame, and never touches the partial again. The newer one shares its
        // descriptor, and so its lock.
        let jobs = &*self.jobs;
        let in_process = self.state.partials.get_mut(&id).and_then(|partial| {
            // Whether or not the upload that made them is still open: what the partial holds
            // cannot be told while they are on their way.
            partial.writes.retain(|write| jobs.pending(*write));
            Some((
                partial.file.upgrade()?,
                partial.holder,
                !partial.writes.is_empty(),
            ))
        });
        let busy = || {
            FileError::new(
                ErrorCode::UploadBusy,
                format!(
                    "{path}: another server process is receiving this upload (or its last bytes are still being written); try again when it ends"
                ),
            )
        };
        let file = match in_process {
            // Bytes the older one took are still on their way to the file: what it holds
            // cannot be told yet (its length would say less, or skip a hole).
            Some((_, _, true)) => return Err(busy()),
            Some((file, older, false)) => {
                info!("{path}: upload {id:016x} taken over by a newer PUT");
                if let Some(older) = self.state.upload_mut(older) {
                    older.superseded = true;
                }
                file
            }
            None => match open_locked(&dir, &temp_name, true) {
                Ok(Opened::Locked(file, _)) => Arc::new(file),
                Ok(Opened::Busy) => return Err(busy()),
                // (Only without `create`.)
                Ok(Opened::Missing | Opened::Removed) => {
                    return Err(file_error(Errno::NOENT, path));
                }
                Err(errno) => return Err(lock_failed(errno, path)),
            },
        };
        let weak = Arc::downgrade(&file);
        let handle = self.state.insert_upload(OpenUpload {
            generation: 0,
            file,
            dir,
            name,
            path: path.to_string(),
            temp: Temp::Partial(temp_name),
            id,
            superseded: false,
            committed: false,
            durability: durability_of(request.flags),
            attrs: request.attrs,
        });
        self.state.partials.insert(
            id,
            Partial {
                holder: handle,
                file: weak,
                writes: Vec::new(),
            },
        );
        // Only now, with the lock: keep what is held for a resume, or start over.
        match self.held_or_truncated(handle, request) {
            Ok(held) => Ok(BegunUpload { handle, id, held }),
            Err(error) => {
                if let Some(upload) = self.state.take_upload(handle) {
                    self.state.close_upload(upload);
                }
                Err(error)
            }
        }
    }

    /// What a resumable upload's partial holds for a resume of `request`, or 0 once it is
    /// started over (without RESUME, or longer than the upload: it cannot be ours).
    fn held_or_truncated(
        &self,
        handle: UploadHandle,
        request: &PutRequest<'_>,
    ) -> Result<u64, FileError> {
        let path = request.path;
        let Some(upload) = self.state.upload(handle) else {
            return Ok(0);
        };
        let len = upload
            .file
            .metadata()
            .map_err(|error| io_file_error(&error, path))?
            .len();
        let resume = request.flags.contains(PutFlags::RESUME);
        if resume && len <= request.size {
            return Ok(len);
        }
        if len > 0 {
            upload
                .file
                .set_len(0)
                .map_err(|error| io_file_error(&error, path))?;
        }
        Ok(0)
    }

    /// Reads back what an upload holds at `offset` (a resumed upload's prefix, to hash it).
    pub(crate) fn read_held(
        &self,
        handle: UploadHandle,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<usize, FileError> {
        let upload = self.state.upload(handle).ok_or_else(closed)?;
        upload.file.read_at(buf, offset).map_err(|error| {
            file_error(Errno::from_io_error(&error).unwrap_or(Errno::IO), "upload")
        })
    }

    /// Writes `bytes` (at most [`SLOT_LEN`](crate::sys::disk::SLOT_LEN)) at `offset` of an
    /// upload: a job for the disk helper, its bytes copied into the ring (`Some`), or written
    /// here (`None`) when the helper cannot take it. A resumable upload remembers the writes
    /// it handed over.
    pub(crate) fn write_piece(
        &mut self,
        handle: UploadHandle,
        bytes: &[u8],
        offset: u64,
    ) -> Result<Option<JobId>, FileError> {
        let upload = self.state.upload(handle).ok_or_else(closed)?;
        if upload.superseded {
            return Err(superseded_error(&upload.path));
        }
        let Some(job) = self.jobs.submit_write(upload.file.as_fd(), offset, bytes) else {
            upload
                .file
                .write_all_at(bytes, offset)
                .map_err(|error| io_file_error(&error, &upload.path))?;
            return Ok(None);
        };
        let id = upload.id;
        if let Some(partial) = self
            .state
            .partials
            .get_mut(&id)
            .filter(|partial| partial.holder == handle)
        {
            if partial.writes.len() >= WRITES_REMEMBERED {
                let jobs = &*self.jobs;
                partial.writes.retain(|write| jobs.pending(*write));
            }
            partial.writes.push(job);
        }
        Ok(Some(job))
    }

    /// Asks for a sync of an upload's file, by the disk helper where there is one. The job
    /// works on a descriptor of its own that shares the upload's open file: an error the
    /// helper's call sees is the upload's.
    pub(crate) fn sync(&mut self, handle: UploadHandle, kind: SyncKind) -> Pending {
        let Some(upload) = self.state.upload(handle) else {
            return Pending::Done(Err(crate::sys::errno::disk_error(Errno::BADF)));
        };
        let fd = match upload.file.as_fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(error) => {
                warn!("{}: cannot sync: {error}", upload.path);
                let errno = Errno::from_io_error(&error).unwrap_or(Errno::IO);
                return Pending::Done(Err(crate::sys::errno::disk_error(errno)));
            }
        };
        let job = match kind {
            SyncKind::Fsync => Job::Fsync(fd),
            SyncKind::Writeback => Job::Writeback(fd),
        };
        self.jobs.submit(job)
    }

    /// Removes the server's own leftovers in the directory `dir` (of `path`) that have not
    /// been touched for [`PARTIAL_TTL_NS`]: resumable partials nobody came back for, and a
    /// verified upload's link left by a crash between its link and its rename. One whose lock
    /// is held (an upload in progress in some process) is left alone. At most once per
    /// [`SWEEP_INTERVAL_NS`] per directory, and at most [`SWEEP_ENTRIES`] entries.
    fn sweep_expired(&mut self, dir: &OwnedFd, path: &str) {
        let Ok(stat) = rustix::fs::fstat(dir) else {
            return;
        };
        let now = self.now.0;
        let key = (stat.st_dev, stat.st_ino);
        if let Some(&last) = self.state.swept.get(&key) {
            if now.saturating_sub(last) < SWEEP_INTERVAL_NS {
                return;
            }
        }
        if self.state.swept.len() >= SWEPT_DIRS {
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
        let mut candidates = Vec::new();
        let mut trash = Vec::new();
        for entry in std::iter::from_fn(|| entries.read()).take(SWEEP_ENTRIES) {
            let Ok(entry) = entry else { break };
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name.starts_with(TRASH_PREFIX) {
                trash.push(name.to_string());
                continue;
            }
            let id = partial_id(name);
            if id.is_none() && !name.starts_with(LINKED_PREFIX) {
                continue;
            }
            if id.is_some_and(|id| self.state.partials.contains_key(&id)) {
                continue;
            }
            candidates.push(name.to_string());
        }
        for name in candidates {
            // Locked while it is judged and removed, so no writer can start on it meanwhile.
            let Ok(Opened::Locked(_file, stat)) = open_locked(dir, &name, false) else {
                continue;
            };
            if now.saturating_sub(meta_of_stat(&stat).mtime_ns) > PARTIAL_TTL_NS {
                unlink_if_same(dir, &name, &stat);
                info!("{path}: removed expired upload leftover {name}");
            }
        }
        // Trash is judged by its ctime, which its rename aside set (its mtime is the deleted
        // file's). It is unlinked here, on the loop: this sweep has no disk helper to hand it
        // to, and such leftovers are rare (the helper or the server killed in between).
        for name in trash {
            let Ok(stat) = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            if writable_type(&stat)
                && now.saturating_sub(meta_of_stat(&stat).ctime_ns) > TRASH_TTL_NS
            {
                unlink_if_same(dir, &name, &stat);
                info!("{path}: removed leftover trash {name}");
            }
        }
    }

    /// Makes a complete, verified upload whose data is durable (its syncs all answered) the
    /// file at its path: links the upload's own inode to a fresh name and renames that over
    /// the target — exchanging the two names if the target exists, so that the old file
    /// keeps a name and its blocks are freed later, by the disk helper, not inside the
    /// rename — then removes the partial's name. What is left is handed to the disk helper:
    /// the old file's unlink, and the directory's `fsync` (after which the new file is
    /// durable), which is returned for the caller to wait for. The upload is closed either
    /// way; after an error the target is untouched.
    ///
    /// A PUT with `SYNC_FS` has its directory's file system synced instead (`syncfs`: the
    /// uploads committed before it with `DEFER_SYNC` become durable with it); one with
    /// `DEFER_SYNC` alone has nothing synced, and is answered at once.
    pub(crate) fn commit(&mut self, handle: UploadHandle) -> Result<Pending, FileError> {
        let mut upload = self.state.take_upload(handle).ok_or_else(closed)?;
        let durability = upload.durability;
        // `DEFER_SYNC` alone syncs nothing, so its commit needs no directory descriptor.
        let sync_dir =
            durability.contains(PutFlags::SYNC_FS) || !durability.contains(PutFlags::DEFER_SYNC);
        let published = publish(&mut upload, sync_dir);
        if let (Err(_), Temp::Named(name)) = (&published, &upload.temp) {
            // Nothing was stored: a named temporary goes, as an unnamed one would.
            if let Ok(stat) = rustix::fs::fstat(&*upload.file) {
                unlink_if_same(&upload.dir, name, &stat);
            }
        }
        self.state.close_upload(upload);
        let (dir, replaced) = published?;
        if let Some(unlink) = replaced {
            // Freed off the loop; its outcome is only logged (`handle_disk_done`).
            let _ = self.jobs.submit(unlink);
        }
        match dir {
            Some(dir) if durability.contains(PutFlags::SYNC_FS) => {
                Ok(self.jobs.submit(Job::Syncfs(dir)))
            }
            Some(dir) => Ok(self.jobs.submit(Job::Fsync(dir))),
            None => Ok(Pending::Done(Ok(()))),
        }
    }

    /// Ends an upload that was neither committed nor failed (its stream or connection went
    /// away): a resumable partial stays for a resume, an unnamed temporary vanishes with its
    /// descriptor, and a named one (no `O_TMPFILE` here) is removed as a failed upload is.
    pub(crate) fn release(&mut self, handle: UploadHandle) {
        let named = self
            .state
            .upload(handle)
            .is_some_and(|upload| matches!(upload.temp, Temp::Named(_)));
        if named {
            self.remove_upload(handle);
        } else if let Some(open) = self.state.take_upload(handle) {
            self.state.close_upload(open);
        }
    }

    /// DELETE of a partial upload (`name` in `dir`, of `path`): removed under its lock, or
    /// refused with `UPLOAD_BUSY` while some process is receiving it.
    pub(crate) fn delete_partial(
        &mut self,
        dir: &OwnedFd,
        name: &str,
        path: &str,
    ) -> Result<(), FileError> {
        match open_locked(dir, name, false) {
            Ok(Opened::Locked(file, stat)) => {
                let aside = set_aside(dir, name, &stat, self.jobs.off_the_loop(), self.now);
                drop(file);
                if let Some(trash) = aside {
                    free_aside(dir, trash, self.jobs);
                }
                Ok(())
            }
            // Removed while being opened (a committed file's second link, or something
            // planted under the name): what was asked for is done.
            Ok(Opened::Removed) => Ok(()),
            Ok(Opened::Busy) => Err(FileError::new(
                ErrorCode::UploadBusy,
                format!("{path}: the upload is in progress; it cannot be removed now"),
            )),
            Ok(Opened::Missing) => Err(file_error(Errno::NOENT, path)),
            Err(errno) => Err(lock_failed(errno, path)),
        }
    }

    /// For a DELETE of the directory `name` in `parent` (of `path`) that `rmdir` found not
    /// empty: if all it holds is the server's own leftovers — partial uploads nobody is
    /// receiving, the link of an interrupted commit, trash DELETE renamed aside — removes
    /// them, so that the `rmdir` can be tried again; otherwise says why not (`NOT_EMPTY`, or
    /// `UPLOAD_BUSY`) and removes none of them.
    ///
    /// All or none: the whole directory is judged first (at most [`DELETE_LEFTOVERS`]
    /// entries, more is `NOT_EMPTY`), then every partial and link is locked — one busy, held
    /// by an upload or a commit in progress in some process, refuses the DELETE — and only
    /// then is anything removed, each name still under its lock. Trash goes to the disk
    /// helper, renamed into `parent` so the directory empties at once; where jobs are made
    /// here anyway it is unlinked here.
    pub(crate) fn remove_leftovers(
        &mut self,
        parent: &OwnedFd,
        name: &str,
        path: &str,
    ) -> Result<(), FileError> {
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| file_error(errno, path))?;
        let dir = rustix::fs::openat(&fd, ".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .map_err(|errno| file_error(errno, path))?;
        let mut entries = rustix::fs::Dir::new(fd).map_err(|errno| file_error(errno, path))?;
        let not_empty = || file_error(Errno::NOTEMPTY, path);
        // 1. Judge every entry, touching none.
        let mut names = Vec::new();
        for entry in std::iter::from_fn(|| entries.read()) {
            let entry = entry.map_err(|errno| file_error(errno, path))?;
            // A name that is not UTF-8 is none of the server's.
            let Ok(name) = entry.file_name().to_str() else {
                return Err(not_empty());
            };
            if name == "." || name == ".." {
                continue;
            }
            if !is_leftover(name) || names.len() == DELETE_LEFTOVERS {
                return Err(not_empty());
            }
            names.push(name.to_string());
        }
        // 2. Lock every partial and link; trash needs no lock (nobody writes it).
        let mut locked = Vec::new();
        let mut trash = Vec::new();
        for name in names {
            if name.starts_with(TRASH_PREFIX) {
                trash.push(name);
                continue;
            }
            match open_locked(&dir, &name, false) {
                Ok(Opened::Locked(file, stat)) => locked.push((name, file, stat)),
                // Gone meanwhile, or not an upload at all and removed as such.
                Ok(Opened::Missing | Opened::Removed) => {}
                Ok(Opened::Busy) => {
                    return Err(FileError::new(
                        ErrorCode::UploadBusy,
                        format!("{path}: an upload into it is in progress"),
                    ));
                }
                Err(errno) => return Err(lock_failed(errno, path)),
            }
        }
        // 3. Remove. Trash first: it is garbage either way, and the one step here that can
        // fail for a reason of its own (a directory under a trash name).
        for name in trash {
            remove_trash(parent, &dir, &name, path, self.jobs, self.now)?;
        }
        for (name, _file, stat) in &locked {
            unlink_if_same(&dir, name, stat);
            info!("{path}: removed upload leftover {name}");
        }
        Ok(())
    }

    /// Gives up an upload whose bytes are wrong or could not be written (a hash mismatch, a
    /// full disk, an I/O error): even a resumable partial is removed, since resuming would
    /// only repeat the mismatch, or keep holding the space a retry needs.
    ///
    /// Call it once the upload's disk work is answered ([`Upload::disk_idle`]): a job still
    /// in the helper's hands holds a descriptor of the file, and whoever closes the last one
    /// frees its blocks — that must be the helper, not the loop.
    pub(crate) fn remove_upload(&mut self, handle: UploadHandle) {
        let Some(upload) = self.state.take_upload(handle) else {
            return;
        };
        if upload.superseded {
            // The partial is the newer upload's now.
            self.state.close_upload(upload);
            return;
        }
        let aside = match &upload.temp {
            Temp::Partial(name) | Temp::Named(name) => match rustix::fs::fstat(&*upload.file) {
                Ok(stat) => set_aside(&upload.dir, name, &stat, self.jobs.off_the_loop(), self.now),
                Err(errno) => {
                    warn!("{}: cannot remove partial {name}: {errno}", upload.path);
                    None
                }
            },
            Temp::Unnamed => None,
        };
        // The name is gone (or going): a superseded upload still sharing the descriptor must
        // not hand this inode to the next PUT, which starts a new partial instead.
        self.state.unregister(&upload);
        let dir = aside.as_ref().and_then(|_| upload.dir.try_clone().ok());
        self.state.close_upload(upload); // its descriptor, before the helper's unlink
        if let (Some(trash), Some(dir)) = (aside, dir) {
            free_aside(&dir, trash, self.jobs);
        }
    }
}

/// The error for a call on an upload that is no longer open (a caller's mistake: a handle
/// given back is never used again).
/// The flags of a PUT that say how its commit makes it durable.
fn durability_of(flags: PutFlags) -> PutFlags {
    let mut durability = PutFlags::NONE;
    for flag in [PutFlags::DEFER_SYNC, PutFlags::SYNC_FS] {
        if flags.contains(flag) {
            durability = durability.with(flag);
        }
    }
    durability
}

fn closed() -> FileError {
    FileError::new(ErrorCode::IoFailed, "the upload is no longer open")
}

/// The commit's steps on the upload's own descriptor and names (see [`Files::commit`]): the
/// directory to `fsync` (opened only if `sync_dir`), and the unlink of the file the rename
/// replaced, if there was one and it is big enough to free off the loop.
///
/// An unnamed upload (`O_TMPFILE`) whose target does not exist is linked straight to the
/// target's name: `linkat` never replaces a name (`EEXIST`), so it is the same single atomic
/// step as a `RENAME_NOREPLACE`, and a tree of new small files pays one directory change per
/// file instead of three (link, rename, unlink). Anything at the name sends it the long way.
fn publish(
    upload: &mut OpenUpload,
    sync_dir: bool,
) -> Result<(Option<OwnedFd>, Option<Job>), FileError> {
    if upload.superseded {
        return Err(superseded_error(&upload.path));
    }
    let path = upload.path.clone();
    let errno = |errno| file_error(errno, &path);
    if let Some(attrs) = upload.attrs {
        // Before the file gets its name, so that it appears with them. Permission bits only:
        // a client never makes a setuid, setgid or sticky file.
        rustix::fs::fchmod(&*upload.file, Mode::from_raw_mode(attrs.mode & 0o777))
            .map_err(errno)?;
        let at = Timespec {
            tv_sec: attrs.mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: attrs.mtime_ns.rem_euclid(1_000_000_000) as _,
        };
        rustix::fs::futimens(
            &*upload.file,
            &Timestamps {
                last_access: at,
                last_modification: at,
            },
        )
        .map_err(errno)?;
    }
    // Opened first: once the rename is done, nothing should be left to fail but the sync.
    let dir = if sync_dir {
        Some(
            rustix::fs::openat(
                &upload.dir,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(errno)?,
        )
    } else {
        None
    };
    let proc_path = format!("/proc/self/fd/{}", upload.file.as_raw_fd());
    let link = |name: &str| {
        rustix::fs::linkat(
            rustix::fs::CWD,
            proc_path.as_str(),
            &upload.dir,
            name,
            AtFlags::SYMLINK_FOLLOW,
        )
    };
    let link_failed = |error| match error {
        // An unnamed upload leaves its directory empty of it, so the directory may have been
        // removed meanwhile (a DELETE, an rmdir): nowhere to link into.
        Errno::NOENT if rustix::fs::fstat(&upload.dir).is_ok_and(|dir| dir.st_nlink == 0) => {
            FileError::new(
                ErrorCode::NotFound,
                format!("{path}: its directory was removed while the file was being received"),
            )
        }
        // The directory is open: /proc is missing, or the partial was removed from outside
        // the server (an inode without links cannot get one).
        Errno::NOENT => FileError::new(
            ErrorCode::IoFailed,
            format!("{path}: cannot name the upload (is /proc mounted? was its partial removed?)"),
        ),
        error => errno(error),
    };
    let linked = match &upload.temp {
        Temp::Named(name) => name.clone(),
        Temp::Unnamed => match link(&upload.name) {
            Ok(()) => {
                upload.committed = true;
                return Ok((dir, None));
            }
            Err(Errno::EXIST) => {
                let linked = linked_name();
                link(&linked).map_err(link_failed)?;
                linked
            }
            Err(error) => return Err(link_failed(error)),
        },
        Temp::Partial(_) => {
            let linked = linked_name();
            link(&linked).map_err(link_failed)?;
            linked
        }
    };
    let replaced = match replace(&upload.dir, &linked, &upload.name) {
        // A small old file is unlinked here: freeing a few blocks is quick, quicker than
        // the round trip to the helper (DELETE's rule, `OFFLOAD_UNLINK_BYTES`).
        Ok(Some(old)) if !frees_much(&upload.dir, &old) => {
            let _ = rustix::fs::unlinkat(&upload.dir, old.as_str(), AtFlags::empty());
            None
        }
        Ok(replaced) => replaced,
        Err(error) => {
            // A named temporary is removed by the caller, under its lock.
            if !matches!(upload.temp, Temp::Named(_)) {
                let _ = rustix::fs::unlinkat(&upload.dir, linked.as_str(), AtFlags::empty());
            }
            return Err(errno(error));
        }
    };
    upload.committed = true;
    if let Temp::Partial(partial) = &upload.temp {
        // Still under the lock: a process that opened the name meanwhile finds it gone
        // once the lock is free, and starts a new partial.
        if let Ok(stat) = rustix::fs::fstat(&*upload.file) {
            unlink_if_same(&upload.dir, partial, &stat);
        }
    }
    // The file is stored: nothing may fail it now. Without a descriptor to give the helper,
    // the old file is freed here.
    let aside = replaced.and_then(|name| match upload.dir.try_clone() {
        Ok(dir) => Some(Job::Unlink { dir, name }),
        Err(_) => {
            let _ = rustix::fs::unlinkat(&upload.dir, name.as_str(), AtFlags::empty());
            None
        }
    });
    Ok((dir, aside))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::disk::Disk;
    use crate::sys::disk::RunHere;
    use crate::sys::root::Root;
    use std::time::SystemTime;

    fn scratch(name: &str) -> std::path::PathBuf {
        let base =
            std::env::temp_dir().join(format!("monoreactor-upload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        base
    }

    /// The upload ends unfinished (as its connection going away would end it).
    fn release(files: &mut Files<'_>, upload: BegunUpload) {
        files.release_upload(upload.handle);
    }

    /// The descriptor an open upload writes through.
    fn file_of(files: &Files<'_>, upload: &BegunUpload) -> Arc<File> {
        Arc::clone(&files.state.upload(upload.handle).unwrap().file)
    }

    fn request(hash: crate::proto::files::Hash, flags: PutFlags) -> PutRequest<'static> {
        PutRequest {
            size: 1,
            flags: flags.with(PutFlags::HASH_DECLARED),
            hash: Some(hash),
            attrs: None,
            path: "target",
        }
    }

    #[test]
    fn a_put_sweeps_expired_partials_of_its_directory_only() {
        let base = scratch("sweep");
        let root = Root::open_or_create(&base).unwrap();
        let old = root
            .path()
            .join(format!("{PARTIAL_PREFIX}00000000000000ff"));
        let fresh = root
            .path()
            .join(format!("{PARTIAL_PREFIX}00000000000000fe"));
        let linked = root.path().join(format!("{LINKED_PREFIX}1"));
        let held = root
            .path()
            .join(format!("{PARTIAL_PREFIX}00000000000000fd"));
        for file in [&old, &fresh, &linked, &held] {
            std::fs::write(file, b"x").unwrap();
        }
        let two_days_ago = SystemTime::now() - std::time::Duration::from_secs(2 * 24 * 3600);
        for file in [&old, &linked, &held] {
            std::fs::File::options()
                .write(true)
                .open(file)
                .unwrap()
                .set_modified(two_days_ago)
                .unwrap();
        }
        // Another open file description (another process, as far as the lock can tell) is
        // still writing this one.
        let writer = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&held)
            .unwrap();
        assert!(try_lock(&writer).unwrap());
        let mut state = FileState::new(4, 1 << 20);
        let mut files = Files {
            root: &root,
            state: &mut state,
            jobs: &mut RunHere,
            now: WallClock::read(),
        };
        let upload = files.begin_put(&request([0; 32], PutFlags::NONE)).unwrap();
        release(&mut files, upload);
        assert!(!old.exists(), "expired partial removed");
        assert!(!linked.exists(), "expired link removed");
        assert!(fresh.exists(), "a recent partial stays");
        assert!(held.exists(), "a locked partial stays, however old");
        drop(writer);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_partial_locked_elsewhere_is_busy_and_untouched() {
        let base = scratch("busy");
        let root = Root::open_or_create(&base).unwrap();
        let hash = [7; 32];
        let id = upload_id("target", 1, &hash);
        let partial = root.path().join(format!("{PARTIAL_PREFIX}{id:016x}"));
        std::fs::write(&partial, b"x").unwrap();
        let writer = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&partial)
            .unwrap();
        assert!(try_lock(&writer).unwrap());
        let mut state = FileState::new(4, 1 << 20);
        let mut files = Files {
            root: &root,
            state: &mut state,
            jobs: &mut RunHere,
            now: WallClock::read(),
        };
        let refused = files.begin_put(&request(hash, PutFlags::NONE)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::UploadBusy, "{}", refused.text);
        assert_eq!(std::fs::read(&partial).unwrap(), b"x", "not truncated");
        drop(writer);
        let upload = files.begin_put(&request(hash, PutFlags::RESUME)).unwrap();
        assert_eq!(upload.held, 1, "free again once the other lets go");
        release(&mut files, upload);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_partial_linked_elsewhere_is_never_written() {
        let base = scratch("nlink");
        let root = Root::open_or_create(&base).unwrap();
        let hash = [9; 32];
        let id = upload_id("target", 1, &hash);
        let partial = root.path().join(format!("{PARTIAL_PREFIX}{id:016x}"));
        // As a crash between a commit's rename and its unlink leaves it.
        std::fs::write(root.path().join("target"), b"y").unwrap();
        std::fs::hard_link(root.path().join("target"), &partial).unwrap();
        let mut state = FileState::new(4, 1 << 20);
        let mut files = Files {
            root: &root,
            state: &mut state,
            jobs: &mut RunHere,
            now: WallClock::read(),
        };
        let upload = files.begin_put(&request(hash, PutFlags::NONE)).unwrap();
        assert_eq!(upload.held, 0);
        assert_eq!(
            std::fs::read(root.path().join("target")).unwrap(),
            b"y",
            "the committed file is not truncated"
        );
        release(&mut files, upload);
        std::fs::remove_dir_all(&base).unwrap();
    }
    fn in_table(files: &Files<'_>) -> usize {
        files.state.partials.len()
    }

    #[test]
    fn a_takeover_stays_resumable_whichever_upload_ends_first() {
        for newer_first in [false, true] {
            let base = scratch(&format!("takeover-{newer_first}"));
            let root = Root::open_or_create(&base).unwrap();
            let hash = [3; 32];
            let mut state = FileState::new(4, 1 << 20);
            let mut files = Files {
                root: &root,
                state: &mut state,
                jobs: &mut RunHere,
                now: WallClock::read(),
            };
            let older = files.begin_put(&request(hash, PutFlags::NONE)).unwrap();
            let newer = files.begin_put(&request(hash, PutFlags::RESUME)).unwrap();
            assert!(files.superseded(older.handle) && !files.superseded(newer.handle));
            let (first, second) = if newer_first {
                (newer, older)
            } else {
                (older, newer)
            };
            release(&mut files, first);
            // The one left still holds the descriptor, hence the lock: the next PUT must be
            // able to take it over rather than be refused UPLOAD_BUSY.
            let next = files.begin_put(&request(hash, PutFlags::RESUME)).unwrap();
            assert!(files.superseded(second.handle), "newer_first {newer_first}");
            release(&mut files, second);
            release(&mut files, next);
            assert_eq!(in_table(&files), 0, "the last one out removes the entry");
            // And the lock went with the last descriptor.
            let last = files.begin_put(&request(hash, PutFlags::RESUME)).unwrap();
            release(&mut files, last);
            std::fs::remove_dir_all(&base).unwrap();
        }
    }

    #[test]
    fn a_committed_or_discarded_upload_is_never_taken_over() {
        for commit in [true, false] {
            let base = scratch(&format!("ends-{commit}"));
            let root = Root::open_or_create(&base).unwrap();
            let hash = [4; 32];
            let mut state = FileState::new(4, 1 << 20);
            let mut files = Files {
                root: &root,
                state: &mut state,
                jobs: &mut RunHere,
                now: WallClock::read(),
            };
            let older = files.begin_put(&request(hash, PutFlags::NONE)).unwrap();
            let newer = files.begin_put(&request(hash, PutFlags::RESUME)).unwrap();
            file_of(&files, &newer).write_all_at(b"z", 0).unwrap();
            if commit {
                files.publish(newer.handle).unwrap();
            } else {
                files.discard(newer.handle);
            }
            // The superseded one still shares the inode, but the table no longer leads to it.
            assert_eq!(in_table(&files), 0, "commit {commit}");
            let next = files.begin_put(&request(hash, PutFlags::NONE)).unwrap();
            assert_eq!(next.held, 0);
            assert!(
                !Arc::ptr_eq(&file_of(&files, &next), &file_of(&files, &older)),
                "commit {commit}"
            );
            if commit {
                assert_eq!(
                    std::fs::read(root.path().join("target")).unwrap(),
                    b"z",
                    "the committed file is not truncated"
                );
            }
            release(&mut files, older);
            assert_eq!(
                in_table(&files),
                1,
                "the older one leaves the new entry alone"
            );
            release(&mut files, next);
            std::fs::remove_dir_all(&base).unwrap();
        }
    }

    thread_local! {
        /// Set by a test to make `O_TMPFILE` fail as it does on NFS, in this thread only.
        pub(super) static NO_TMPFILE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// The names in `dir` other than the hash index, sorted.
    fn names_in(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != crate::sys::hash_index::INDEX_NAME)
            .collect();
        names.sort();
        names
    }

    fn unnamed(flags: PutFlags, path: &str) -> PutRequest<'_> {
        PutRequest {
            size: 1,
            flags,
            hash: None,
            attrs: None,
            path,
        }
    }

    #[test]
    fn an_upload_that_cannot_resume_lands_new_or_replacing_or_not_at_all_with_or_without_tmpfile() {
        for no_tmpfile in [false, true] {
            NO_TMPFILE.with(|flag| flag.set(no_tmpfile));
            let base = scratch(&format!("unnamed-{no_tmpfile}"));
            let root = Root::open_or_create(&base).unwrap();
            std::fs::create_dir(root.path().join("dir")).unwrap();
            std::fs::write(root.path().join("old"), b"old").unwrap();
            let mut state = FileState::new(4, 1 << 20);
            let mut files = Files {
                root: &root,
                state: &mut state,
                jobs: &mut RunHere,
                now: WallClock::read(),
            };
            let deferred = PutFlags::NONE.with(PutFlags::DEFER_SYNC);
            // A new name (linked straight there with O_TMPFILE), with and without a sync.
            for (name, flags) in [("new", deferred), ("synced", PutFlags::NONE)] {
                let upload = files.begin_put(&unnamed(flags, name)).unwrap();
                file_of(&files, &upload).write_all_at(b"n", 0).unwrap();
                files.publish(upload.handle).unwrap();
                assert_eq!(std::fs::read(root.path().join(name)).unwrap(), b"n");
            }
            // An existing file: replaced in one step.
            let upload = files.begin_put(&unnamed(deferred, "old")).unwrap();
            file_of(&files, &upload).write_all_at(b"r", 0).unwrap();
            files.publish(upload.handle).unwrap();
            assert_eq!(std::fs::read(root.path().join("old")).unwrap(), b"r");
            // A directory made at the name meanwhile: refused, and nothing of it left.
            let upload = files.begin_put(&unnamed(deferred, "late")).unwrap();
            file_of(&files, &upload).write_all_at(b"x", 0).unwrap();
            std::fs::create_dir(root.path().join("late")).unwrap();
            let error = files.publish(upload.handle).unwrap_err();
            assert_eq!(error.code, ErrorCode::IsDirectory, "{no_tmpfile}");
            files.discard(upload.handle);
            // Ended unfinished, and failed: nothing left either.
            let upload = files.begin_put(&unnamed(deferred, "gone")).unwrap();
            file_of(&files, &upload).write_all_at(b"g", 0).unwrap();
            release(&mut files, upload);
            let upload = files.begin_put(&unnamed(deferred, "failed")).unwrap();
            files.discard(upload.handle);
            assert_eq!(
                names_in(root.path()),
                ["dir", "late", "new", "old", "synced"],
                "no temporary left (no O_TMPFILE: {no_tmpfile})"
            );
            NO_TMPFILE.with(|flag| flag.set(false));
            std::fs::remove_dir_all(&base).unwrap();
        }
    }

    /// Jobs run here, their kinds recorded: what a commit asked to be made durable.
    #[derive(Default)]
    struct Recorded(Vec<crate::service::disk::JobKind>);

    impl Jobs for Recorded {
        fn submit(&mut self, job: Job) -> Pending {
            self.0.push(job.kind());
            RunHere.submit(job)
        }

        fn submit_write(
            &mut self,
            _: std::os::fd::BorrowedFd<'_>,
            _: u64,
            _: &[u8],
        ) -> Option<JobId> {
            None
        }

        fn off_the_loop(&self) -> bool {
            false
        }

        fn pending(&self, _: JobId) -> bool {
            false
        }
    }

    /// Review of 3eb82dd: without O_TMPFILE an unnamed upload stands in a named temporary,
    /// which a crash leaves behind; only a resumable upload swept its directory, and a tree
    /// of small files (all unnamed since 3eb82dd) never sends one, so such leftovers stayed
    /// for good. An unnamed upload that makes a named temporary sweeps its directory too.
    #[test]
    fn an_unnamed_upload_without_tmpfile_sweeps_what_a_crash_left() {
        NO_TMPFILE.with(|flag| flag.set(true));
        let base = scratch("sweep-named");
        let root = Root::open_or_create(&base).unwrap();
        let dead = root.path().join(format!("{LINKED_PREFIX}dead-1"));
        std::fs::write(&dead, b"left by a crash").unwrap();
        let two_days_ago = SystemTime::now() - std::time::Duration::from_secs(2 * 24 * 3600);
        std::fs::File::options()
            .write(true)
            .open(&dead)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        let mut state = FileState::new(4, 1 << 20);
        let mut files = Files {
            root: &root,
            state: &mut state,
            jobs: &mut RunHere,
            now: WallClock::read(),
        };
        let upload = files
            .begin_put(&unnamed(PutFlags::NONE.with(PutFlags::DEFER_SYNC), "new"))
            .unwrap();
        file_of(&files, &upload).write_all_at(b"n", 0).unwrap();
        files.publish(upload.handle).unwrap();
        NO_TMPFILE.with(|flag| flag.set(false));
        assert_eq!(names_in(root.path()), ["new"]);
        std::fs::remove_dir_all(&base).unwrap();
    }

    /// Review of 3eb82dd, held: a symlink planted at an unnamed upload's name between its PUT
    /// and its commit (dangling, or to a file, both outside the root) is replaced by the
    /// file, never followed, whether the upload is an O_TMPFILE linked straight into place
    /// or a named stand-in; and the direct link carries the PUT's mode and mtime.
    #[test]
    fn a_symlink_planted_before_an_unnamed_commit_is_replaced_never_followed() {
        for no_tmpfile in [false, true] {
            NO_TMPFILE.with(|flag| flag.set(no_tmpfile));
            let base = scratch(&format!("planted-{no_tmpfile}"));
            let outside = base.join("outside");
            std::fs::create_dir_all(&outside).unwrap();
            std::fs::write(outside.join("kept"), b"kept").unwrap();
            let root = Root::open_or_create(&base.join("root")).unwrap();
            let mut state = FileState::new(4, 1 << 20);
            let mut files = Files {
                root: &root,
                state: &mut state,
                jobs: &mut RunHere,
                now: WallClock::read(),
            };
            let attrs = PutAttrs {
                mode: 0o4640,
                mtime_ns: 1_000_000_000_123_456_789,
            };
            for (name, points_at) in [("dangling", "escaped"), ("to-file", "kept")] {
                let request = PutRequest {
                    attrs: Some(attrs),
                    ..unnamed(PutFlags::NONE.with(PutFlags::DEFER_SYNC), name)
                };
                let upload = files.begin_put(&request).unwrap();
                file_of(&files, &upload).write_all_at(b"n", 0).unwrap();
                std::os::unix::fs::symlink(outside.join(points_at), root.path().join(name))
                    .unwrap();
                files.publish(upload.handle).unwrap();
                let meta = std::fs::symlink_metadata(root.path().join(name)).unwrap();
                assert!(meta.file_type().is_file(), "{name} ({no_tmpfile})");
                assert_eq!(std::fs::read(root.path().join(name)).unwrap(), b"n");
                use std::os::unix::fs::MetadataExt;
                assert_eq!(
                    (meta.mode() & 0o7777, meta.mtime(), meta.mtime_nsec()),
                    (0o640, 1_000_000_000, 123_456_789),
                    "{name} ({no_tmpfile})"
                );
            }
            let new = PutRequest {
                attrs: Some(attrs),
                ..unnamed(PutFlags::NONE.with(PutFlags::DEFER_SYNC), "new")
            };
            let upload = files.begin_put(&new).unwrap();
            files.publish(upload.handle).unwrap();
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(root.path().join("new")).unwrap();
            assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o640, 1_000_000_000));
            assert!(!outside.join("escaped").exists(), "{no_tmpfile}");
            assert_eq!(std::fs::read(outside.join("kept")).unwrap(), b"kept");
            assert_eq!(names_in(root.path()), ["dangling", "new", "to-file"]);
            NO_TMPFILE.with(|flag| flag.set(false));
            std::fs::remove_dir_all(&base).unwrap();
        }
    }

    /// Review of 3eb82dd, held: two server processes (two tables, one root) committing
    /// unnamed uploads of one path, in either order, leave one whole file, the last one
    /// committed, and no temporary.
    #[test]
    fn two_processes_committing_unnamed_uploads_of_one_path_leave_the_last_whole() {
        for no_tmpfile in [false, true] {
            NO_TMPFILE.with(|flag| flag.set(no_tmpfile));
            let base = scratch(&format!("two-{no_tmpfile}"));
            let root = Root::open_or_create(&base).unwrap();
            let (mut one, mut two) = (FileState::new(4, 1 << 20), FileState::new(4, 1 << 20));
            let (mut jobs_one, mut jobs_two) = (RunHere, RunHere);
            let mut first = Files {
                root: &root,
                state: &mut one,
                jobs: &mut jobs_one,
                now: WallClock::read(),
            };
            let mut second = Files {
                root: &root,
                state: &mut two,
                jobs: &mut jobs_two,
                now: WallClock::read(),
            };
            let deferred = PutFlags::NONE.with(PutFlags::DEFER_SYNC);
            for (round, first_last) in [false, true].into_iter().enumerate() {
                let a = first.begin_put(&unnamed(deferred, "same")).unwrap();
                let b = second.begin_put(&unnamed(deferred, "same")).unwrap();
                file_of(&first, &a).write_all_at(b"first", 0).unwrap();
                file_of(&second, &b).write_all_at(b"second!", 0).unwrap();
                let expected: &[u8] = if first_last {
                    second.publish(b.handle).unwrap();
                    first.publish(a.handle).unwrap();
                    b"first"
                } else {
                    first.publish(a.handle).unwrap();
                    second.publish(b.handle).unwrap();
                    b"second!"
                };
                assert_eq!(
                    std::fs::read(root.path().join("same")).unwrap(),
                    expected,
                    "round {round} ({no_tmpfile})"
                );
                assert_eq!(names_in(root.path()), ["same"]);
            }
            NO_TMPFILE.with(|flag| flag.set(false));
            std::fs::remove_dir_all(&base).unwrap();
        }
    }

    /// Review of 3eb82dd, held: what each commit asks to be made durable is still what
    /// PROTOCOL.md 6.4 promises, whatever way the file took into place (linked straight to a
    /// new name, or exchanged with an old file, with or without O_TMPFILE): its directory's
    /// fsync by default, the file system's syncfs with SYNC_FS (DEFER_SYNC or not), nothing
    /// with DEFER_SYNC alone.
    #[test]
    fn each_commit_asks_for_the_sync_protocol_6_4_promises() {
        use crate::service::disk::JobKind;
        let cases = [
            (PutFlags::NONE, vec![JobKind::Fsync]),
            (
                PutFlags::NONE.with(PutFlags::SYNC_FS),
                vec![JobKind::Syncfs],
            ),
            (
                PutFlags::NONE
                    .with(PutFlags::SYNC_FS)
                    .with(PutFlags::DEFER_SYNC),
                vec![JobKind::Syncfs],
            ),
            (PutFlags::NONE.with(PutFlags::DEFER_SYNC), vec![]),
        ];
        for no_tmpfile in [false, true] {
            NO_TMPFILE.with(|flag| flag.set(no_tmpfile));
            let base = scratch(&format!("durable-{no_tmpfile}"));
            let root = Root::open_or_create(&base).unwrap();
            let mut state = FileState::new(4, 1 << 20);
            for (at, (flags, expected)) in cases.iter().enumerate() {
                for existing in [false, true] {
                    let name = format!("f{at}-{existing}");
                    if existing {
                        std::fs::write(root.path().join(&name), b"old").unwrap();
                    }
                    let mut jobs = Recorded::default();
                    let mut files = Files {
                        root: &root,
                        state: &mut state,
                        jobs: &mut jobs,
                        now: WallClock::read(),
                    };
                    let upload = files.begin_put(&unnamed(*flags, &name)).unwrap();
                    file_of(&files, &upload).write_all_at(b"n", 0).unwrap();
                    files.publish(upload.handle).unwrap();
                    let syncs: Vec<JobKind> = jobs
                        .0
                        .into_iter()
                        .filter(|kind| *kind != JobKind::Unlink)
                        .collect();
                    assert_eq!(&syncs, expected, "{name} ({no_tmpfile})");
                }
            }
            NO_TMPFILE.with(|flag| flag.set(false));
            std::fs::remove_dir_all(&base).unwrap();
        }
    }

    #[test]
    fn an_unnamed_upload_is_locked_like_a_partial() {
        let base = scratch("tmpfile");
        let root = Root::open_or_create(&base).unwrap();
        let mut state = FileState::new(4, 1 << 20);
        let mut files = Files {
            root: &root,
            state: &mut state,
            jobs: &mut RunHere,
            now: WallClock::read(),
        };
        let upload = files
            .begin_put(&PutRequest {
                size: 1,
                flags: PutFlags::NONE,
                hash: None,
                attrs: None,
                path: "target",
            })
            .unwrap();
        // As the commit names it, for a moment.
        let linked = root.path().join(format!("{LINKED_PREFIX}1-1"));
        rustix::fs::linkat(
            rustix::fs::CWD,
            format!("/proc/self/fd/{}", file_of(&files, &upload).as_raw_fd()).as_str(),
            rustix::fs::CWD,
            &linked,
            AtFlags::SYMLINK_FOLLOW,
        )
        .unwrap();
        let other = std::fs::File::options()
            .read(true)
            .write(true)
            .open(&linked)
            .unwrap();
        assert!(!try_lock(&other).unwrap(), "held by the upload");
        release(&mut files, upload);
        assert!(try_lock(&other).unwrap(), "free once the upload ends");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn deleting_a_directory_removes_all_of_its_leftovers_or_none() {
        let base = scratch("leftovers");
        let root = Root::open_or_create(&base).unwrap();
        let dir = root.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        let names = [
            format!("{PARTIAL_PREFIX}0000000000000001"),
            format!("{PARTIAL_PREFIX}0000000000000002"),
            format!("{LINKED_PREFIX}1-2"),
            format!("{TRASH_PREFIX}1-2"),
        ];
        for name in &names {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let mut state = FileState::new(4, 1 << 20);
        let mut files = Files {
            root: &root,
            state: &mut state,
            jobs: &mut RunHere,
            now: WallClock::read(),
        };
        for busy in &names[..3] {
            let writer = std::fs::File::options()
                .read(true)
                .write(true)
                .open(dir.join(busy))
                .unwrap();
            assert!(try_lock(&writer).unwrap());
            let refused = files.delete("d").unwrap_err();
            assert_eq!(
                refused.code,
                ErrorCode::UploadBusy,
                "{busy}: {}",
                refused.text
            );
            for name in &names {
                assert!(dir.join(name).exists(), "{busy} busy, yet {name} removed");
            }
        }
        files.delete("d").unwrap();
        assert!(!dir.exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn fresh_trash_stays_until_its_helper_had_time() {
        let base = scratch("trash");
        let root = Root::open_or_create(&base).unwrap();
        let trash = root.path().join(format!("{TRASH_PREFIX}1-1"));
        std::fs::write(&trash, b"x").unwrap();
        let mut state = FileState::new(4, 1 << 20);
        let mut files = Files {
            root: &root,
            state: &mut state,
            jobs: &mut RunHere,
            now: WallClock::read(),
        };
        let upload = files.begin_put(&request([5; 32], PutFlags::NONE)).unwrap();
        release(&mut files, upload);
        assert!(
            trash.exists(),
            "its unlink may still be queued for the helper"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
