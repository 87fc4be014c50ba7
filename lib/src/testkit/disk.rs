//! A scripted disk: the file service's [`Disk`] over a real directory, its blocking calls held
//! until the test completes them, and failures on demand.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::BorrowedFd;
use std::path::Path;

use rustix::io::Errno;

use crate::proto::files::{FileInfo, Hash, PutAttrs, PutRequest};
use crate::service::disk::{
    BegunUpload, DirRead, Disk, FileError, FileMeta, JobDone, JobId, JobKind, ListingHandle,
    OpenedFile, Pending, SyncKind, TransferPermit, UploadHandle,
};
use crate::sys::disk::{DiskDone, Job, Jobs, Ring, write_job};
use crate::sys::errno::{disk_error, file_error};
use crate::sys::files::{FileState, Files};
use crate::sys::root::Root;
use crate::timer::WallClock;

/// A disk call a test can make fail ([`ScriptedDisk::fail_next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskCall {
    /// An upload's write: the helper's job fails when it completes; without held jobs, the
    /// write made at once fails.
    Write,
    /// An `fsync` (of an upload's data, or of its directory after the rename): its job fails
    /// when it completes; without held jobs, the call made at once fails.
    Fsync,
    /// The commit's rename of a verified upload onto its path: nothing is renamed, as when the
    /// real call fails.
    Rename,
}

/// The file service's disk for a [`Connection`](crate::conn::Connection) under test, as
/// [`ConnHarness::with_files`](crate::testkit::ConnHarness::with_files) sets it up: the real
/// I/O layer (confinement, uploads and their locks, the hash cache) over a real directory, so
/// a test sees what a client would leave on a disk.
///
/// Its blocking calls (an upload's writes and syncs, the unlink of a big deleted file) are
/// made at once, or, once [`ScriptedDisk::hold_jobs`] is called
/// ([`ConnHarness::with_disk`](crate::testkit::ConnHarness::with_disk)), held in order until
/// the test completes them — with the real call ([`ScriptedDisk::run_next`]) or with a result
/// of its choosing ([`ScriptedDisk::finish_next`]) — and hands the completion to
/// [`ConnHarness::disk_done`](crate::testkit::ConnHarness::disk_done), as the reactor delivers
/// it. [`ScriptedDisk::fail_next`] makes a write, an `fsync` or a rename fail as a full or
/// broken disk would: the paths a real disk reaches only by failing.
#[derive(Debug)]
pub struct ScriptedDisk {
    root: Root,
    state: FileState,
    jobs: ScriptedJobs,
    /// Failures armed for the next write and the next rename.
    write_failure: Option<Errno>,
    rename_failure: Option<Errno>,
    /// The loop's wall clock for the drive under way.
    wall_clock: WallClock,
}

/// Where the file layer's blocking calls go: made at once, or held.
#[derive(Debug, Default)]
struct ScriptedJobs {
    hold: bool,
    pending: VecDeque<Held>,
    next_id: u64,
    /// The ring a write's bytes are copied into, made at the first held write.
    ring: Option<Ring>,
    /// Failures armed for the next write job and the next fsync.
    write_failure: Option<Errno>,
    fsync_failure: Option<Errno>,
}

/// A job held until the test completes it, and the failure armed for it.
#[derive(Debug)]
struct Held {
    id: JobId,
    job: Job,
    failure: Option<Errno>,
}

impl ScriptedJobs {
    fn hold(&mut self, job: Job, failure: Option<Errno>) -> JobId {
        let id = JobId(self.next_id);
        self.next_id += 1;
        self.pending.push_back(Held { id, job, failure });
        id
    }
}

impl Jobs for ScriptedJobs {
    fn submit(&mut self, job: Job) -> Pending {
        let failure = match job.kind() {
            JobKind::Fsync => self.fsync_failure.take(),
            _ => None,
        };
        if !self.hold {
            let result = match failure {
                Some(errno) => Err(errno),
                None => job.run(),
            };
            return Pending::Done(result.map_err(disk_error));
        }
        Pending::Job(self.hold(job, failure))
    }

    fn submit_write(&mut self, file: BorrowedFd<'_>, offset: u64, bytes: &[u8]) -> Option<JobId> {
        if !self.hold {
            return None; // written at once, by the caller
        }
        if self.ring.is_none() {
            self.ring = Some(Ring::new().ok()?);
        }
        let job = write_job(self.ring.as_mut()?, file, offset, bytes)?;
        let failure = self.write_failure.take();
        Some(self.hold(job, failure))
    }

    fn off_the_loop(&self) -> bool {
        self.hold
    }

    fn pending(&self, id: JobId) -> bool {
        self.pending.iter().any(|held| held.id == id)
    }
}

impl ScriptedDisk {
    /// The disk over the directory `root` (created if missing), for a server allowing
    /// `max_transfers` at once and puts of up to `max_put` bytes. Its blocking calls are made
    /// at once.
    ///
    /// # Panics
    /// If the directory cannot be opened.
    pub fn new(root: &Path, max_transfers: usize, max_put: u64) -> ScriptedDisk {
        ScriptedDisk {
            root: Root::open_or_create(root).expect("a usable root directory"),
            state: FileState::new(max_transfers, max_put),
            jobs: ScriptedJobs::default(),
            write_failure: None,
            rename_failure: None,
            wall_clock: WallClock::read(),
        }
    }

    /// From now on, blocking calls are held until the test completes them, as the disk helper
    /// holds them until it has made them.
    pub fn hold_jobs(&mut self) {
        self.jobs.hold = true;
    }

    /// The loop's wall clock for the next calls (the harness sets it at every drive).
    pub fn set_wall_clock(&mut self, now: WallClock) {
        self.wall_clock = now;
    }

    /// Transfers running (places taken among the server's `--max-transfers`).
    pub fn transfers(&self) -> usize {
        self.state.transfers()
    }

    /// The jobs submitted and not completed, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = (JobId, JobKind)> + '_ {
        self.jobs
            .pending
            .iter()
            .map(|held| (held.id, held.job.kind()))
    }

    /// Completes the oldest job by making its call, here (or failing it, if a failure was
    /// armed for it).
    pub fn run_next(&mut self) -> Option<JobDone> {
        let held = self.jobs.pending.pop_front()?;
        let result = match held.failure {
            Some(errno) => Err(errno),
            None => held.job.run(),
        };
        Some(self.complete(held, result))
    }

    /// Completes the oldest job without making its call, with `result`.
    pub fn finish_next(&mut self, result: Result<(), Errno>) -> Option<JobDone> {
        let held = self.jobs.pending.pop_front()?;
        Some(self.complete(held, result))
    }

    /// Makes the next `call` fail with `errno` (`ENOSPC` for NO_SPACE, `EIO` for IO_FAILED),
    /// as a full or broken disk would, wherever it is made.
    pub fn fail_next(&mut self, call: DiskCall, errno: Errno) {
        match call {
            DiskCall::Write => self.write_failure = Some(errno),
            DiskCall::Fsync => self.jobs.fsync_failure = Some(errno),
            DiskCall::Rename => self.rename_failure = Some(errno),
        }
    }

    /// A held job is done: its slot goes back to the ring, and the completion is what the
    /// connection hears.
    fn complete(&mut self, held: Held, result: Result<(), Errno>) -> JobDone {
        if let Some(ring) = self.jobs.ring.as_mut() {
            ring.release_job(&held.job);
        }
        DiskDone {
            id: held.id,
            kind: held.job.kind(),
            result,
        }
        .into_job_done()
    }

    /// The real file layer, for one call.
    fn files(&mut self) -> Files<'_> {
        Files {
            root: &self.root,
            state: &mut self.state,
            jobs: &mut self.jobs,
            now: self.wall_clock,
        }
    }
}

impl Disk for ScriptedDisk {
    fn stat(&mut self, path: &str) -> Result<(FileInfo, u32), FileError> {
        self.files().stat(path)
    }

    fn set_attrs(&mut self, path: &str, attrs: PutAttrs) -> Result<(), FileError> {
        self.files().set_attrs(path, attrs)
    }

    fn mkdir(&mut self, path: &str) -> Result<(), FileError> {
        self.files().mkdir(path)
    }

    fn delete(&mut self, path: &str) -> Result<(), FileError> {
        self.files().delete(path)
    }

    fn admit(&mut self) -> Result<TransferPermit, FileError> {
        self.files().admit()
    }

    fn end_transfer(&mut self, permit: TransferPermit) {
        self.files().end_transfer(permit);
    }

    fn open_read(&mut self, path: &str) -> Result<OpenedFile, FileError> {
        self.files().open_read(path)
    }

    fn read_at(&mut self, file: &File, buf: &mut [u8], offset: u64) -> Result<usize, FileError> {
        self.files().read_at(file, buf, offset)
    }

    fn unchanged(&mut self, file: &File, meta: &FileMeta) -> bool {
        self.files().unchanged(file, meta)
    }

    fn store_hash(&mut self, meta: &FileMeta, hash: &Hash, as_of: WallClock) {
        self.files().store_hash(meta, hash, as_of);
    }

    fn open_listing(&mut self, path: &str) -> Result<ListingHandle, FileError> {
        self.files().open_listing(path)
    }

    fn read_entry(&mut self, listing: ListingHandle) -> Result<DirRead, FileError> {
        self.files().read_entry(listing)
    }

    fn close_listing(&mut self, listing: ListingHandle) {
        self.files().close_listing(listing);
    }

    fn begin_put(&mut self, request: &PutRequest<'_>) -> Result<BegunUpload, FileError> {
        self.files().begin_put(request)
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
        self.files().read_upload(upload, buf, offset)
    }

    fn write_upload(
        &mut self,
        upload: UploadHandle,
        bytes: &[u8],
        offset: u64,
    ) -> Result<Option<JobId>, FileError> {
        if let Some(errno) = self.write_failure.take() {
            if !self.jobs.hold {
                // The write made at once fails, as `pwrite` would.
                let path = self.state.upload_path(upload).unwrap_or_default();
                return Err(file_error(errno, path));
            }
            // The helper's write fails: its job completes with the error.
            self.jobs.write_failure = Some(errno);
        }
        self.files().write_upload(upload, bytes, offset)
    }

    fn sync_upload(&mut self, upload: UploadHandle, kind: SyncKind) -> Pending {
        self.files().sync_upload(upload, kind)
    }

    fn publish(&mut self, upload: UploadHandle) -> Result<Pending, FileError> {
        if let Some(errno) = self.rename_failure.take() {
            // Nothing renamed: the upload ends as after a real failed rename (an unnamed
            // temporary vanishes, a resumable partial stays for a resume).
            let path = self
                .state
                .upload_path(upload)
                .unwrap_or_default()
                .to_string();
            self.files().release_upload(upload);
            return Err(file_error(errno, &path));
        }
        self.files().publish(upload)
    }

    fn discard(&mut self, upload: UploadHandle) {
        self.files().discard(upload);
    }

    fn release_upload(&mut self, upload: UploadHandle) {
        self.files().release_upload(upload);
    }
}
