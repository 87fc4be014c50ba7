//! An upload's disk side, sans-IO: which of its writes and syncs are in the disk's hands, when
//! the next sync is due, whether the connection must stop reading, and when the data is
//! durable.
//!
//! An upload never waits on the disk on the loop. [`Upload::write_at`] hands each DATA
//! frame's bytes to the disk in [`WRITE_PIECE`]s ([`Disk::write_upload`]: the disk helper
//! writes them, or the I/O layer does at once when the helper cannot take them). Every
//! [`SYNC_WINDOW`], once the writes before it are answered, the file's writeback is started
//! ([`SyncKind::Writeback`], which does not wait), so the disk works while the upload streams
//! and the final `fsync` has little left to do. While [`WRITE_AHEAD`] bytes are unanswered or
//! [`MAX_SYNCS_IN_FLIGHT`] writebacks are queued, [`Upload::disk_bound`] holds and the
//! connection reads no more of its socket (TCP's window closes on the client). Once the
//! upload is verified ([`Upload::finish`]) and every write answered, its `fsync` is asked for,
//! and [`Upload::durable`] says when the commit may go on.
//!
//! A failed write or sync fails the upload ([`Upload::disk_error`]), and its partial is removed
//! rather than kept for a resume: Linux reports a writeback error to one sync of the open file
//! only, so a later `fsync` would succeed over damaged bytes, and after a full disk the partial
//! would hold the space a retry needs.
//!
//! This is the bookkeeping the I/O layer used to keep itself; the calls are made through
//! [`Disk`], and each [`JobDone`] is handed to [`Upload::on_disk_done`].

use crate::proto::ErrorCode;
use crate::service::disk::{
    BegunUpload, Disk, DiskError, FileError, JobDone, JobId, Pending, SyncKind, UploadHandle,
};

/// Most bytes one write hands to the disk: a slot of the disk helper's write ring.
pub(crate) const WRITE_PIECE: usize = 256 << 10;

/// Every this many bytes of an upload, the disk helper starts writing them to the disk
/// (`sync_file_range(WRITE)`, which does not wait), so the disk works while the upload
/// streams and the commit's `fsync` has little left to do. (The syncs used to be
/// `fdatasync`s, to bound how long the loop stalled at the commit: the helper makes them now,
/// and a waiting sync in its queue held up every write behind it — 0.43× `dd` measured.)
pub(crate) const SYNC_WINDOW: u64 = 16 << 20;

/// While this many of an upload's writeback starts are still queued, its connection reads
/// no more of it.
pub(crate) const MAX_SYNCS_IN_FLIGHT: usize = 2;

/// While this many bytes of an upload are still being written by the disk helper, its
/// connection reads no more of it: enough to keep the helper busy, a quarter of its ring.
pub(crate) const WRITE_AHEAD: usize = 2 << 20;

/// What the client of an upload to `path` hears once a newer PUT of the same file took it
/// over: it may no longer write, commit or remove the partial.
pub(crate) fn superseded_error(path: &str) -> FileError {
    FileError::new(
        ErrorCode::IoFailed,
        format!("{path}: a newer PUT of the same file took this upload over"),
    )
}

/// One upload's disk side: its handle, and its writes and syncs in the disk's hands.
#[derive(Debug)]
pub(crate) struct Upload {
    handle: UploadHandle,
    /// The path it will get (for the errors the client hears).
    path: String,
    /// The upload id (0: not resumable).
    pub id: u64,
    /// Bytes already held from an earlier attempt.
    pub held: u64,
    /// Writes outstanding, with their lengths.
    writes: Vec<(JobId, usize)>,
    /// Syncs outstanding.
    syncs: Vec<JobId>,
    /// The end of what was written (or handed over to be).
    written_to: u64,
    /// Up to where a sync was asked for.
    synced_to: u64,
    /// The upload is verified: the commit's `fsync` is due once the writes are done.
    finishing: bool,
    /// The commit's `fsync` was asked for; its job, if the disk handed it off.
    final_asked: bool,
    final_job: Option<JobId>,
    /// It is done.
    final_done: bool,
    /// The first failure of a write or a sync: the upload can no longer be vouched for.
    failed: Option<DiskError>,
    /// The commit has no `fsync` of the file (`DEFER_SYNC`, or `SYNC_FS`, whose `syncfs`
    /// covers it).
    no_final_fsync: bool,
}

impl Upload {
    /// The upload [`Disk::begin_put`] prepared for `path`: its writes start where what it
    /// held ends.
    pub(crate) fn new(begun: BegunUpload, path: &str) -> Upload {
        Upload {
            handle: begun.handle,
            path: path.to_string(),
            id: begun.id,
            held: begun.held,
            writes: Vec::new(),
            syncs: Vec::new(),
            written_to: begun.held,
            synced_to: begun.held,
            finishing: false,
            final_asked: false,
            final_job: None,
            final_done: false,
            failed: None,
            no_final_fsync: false,
        }
    }

    /// The commit will not `fsync` the file: durability is deferred to a later `syncfs`
    /// (`DEFER_SYNC`), or made by the commit's own (`SYNC_FS`).
    pub(crate) fn without_final_fsync(mut self) -> Upload {
        self.no_final_fsync = true;
        self
    }

    /// The handle the disk knows it by.
    pub(crate) fn handle(&self) -> UploadHandle {
        self.handle
    }

    /// Writes `bytes` at `offset`: handed to the disk in [`WRITE_PIECE`]s (by the disk helper,
    /// or at once where it cannot take them). Each complete [`SYNC_WINDOW`] is then made to
    /// start its writeback, once its writes are done.
    pub(crate) fn write_at(
        &mut self,
        bytes: &[u8],
        offset: u64,
        disk: &mut dyn Disk,
    ) -> Result<(), FileError> {
        if disk.superseded(self.handle) {
            return Err(superseded_error(&self.path));
        }
        if let Some(error) = self.disk_error() {
            return Err(error);
        }
        for (at, piece) in (offset..)
            .step_by(WRITE_PIECE)
            .zip(bytes.chunks(WRITE_PIECE))
        {
            if let Some(id) = disk.write_upload(self.handle, piece, at)? {
                self.writes.push((id, piece.len()));
            }
        }
        self.written_to = self.written_to.max(offset + bytes.len() as u64);
        self.sync_due(disk);
        Ok(())
    }

    /// Asks for what is due once no write is outstanding (a sync covers only what was
    /// written before it): the commit's `fsync` once asked for by [`Upload::finish`], else
    /// the writeback of each complete window.
    fn sync_due(&mut self, disk: &mut dyn Disk) {
        if !self.writes.is_empty() || self.failed.is_some() {
            return;
        }
        let commit = self.finishing && !self.final_asked;
        if !commit && (self.finishing || self.written_to < self.synced_to + SYNC_WINDOW) {
            return;
        }
        if commit && self.no_final_fsync {
            // Every write is answered: what the commit needs is there.
            self.final_asked = true;
            self.final_done = true;
            return;
        }
        self.synced_to = self.written_to;
        self.final_asked |= commit;
        let kind = if commit {
            SyncKind::Fsync
        } else {
            SyncKind::Writeback
        };
        match disk.sync_upload(self.handle, kind) {
            Pending::Job(id) => {
                self.syncs.push(id);
                if commit {
                    self.final_job = Some(id);
                }
            }
            // Made at once (no disk helper in reach), or failed before it could be asked.
            Pending::Done(result) => {
                if let Err(error) = result {
                    self.failed.get_or_insert(error);
                }
                self.final_done |= commit;
            }
        }
    }

    /// The upload is verified: once every write is done, its `fsync` is asked for; the
    /// commit goes on when [`Upload::durable`].
    pub(crate) fn finish(&mut self, disk: &mut dyn Disk) {
        self.finishing = true;
        self.sync_due(disk);
    }

    /// A finished disk job: whether it was one of this upload's (then it is noted, and what
    /// it unblocked is asked for).
    pub(crate) fn on_disk_done(&mut self, done: &JobDone, disk: &mut dyn Disk) -> bool {
        if let Some(at) = self.writes.iter().position(|(id, _)| *id == done.id) {
            self.writes.swap_remove(at);
        } else if let Some(at) = self.syncs.iter().position(|id| *id == done.id) {
            self.syncs.swap_remove(at);
            if self.final_job == Some(done.id) {
                self.final_done = true;
            }
        } else {
            return false;
        }
        // Linux reports a writeback error once per open file, to whichever sync sees it
        // first: a failed sync fails the upload, or a later fsync would vouch for damaged
        // bytes.
        if let Err(error) = &done.result {
            self.failed.get_or_insert_with(|| error.clone());
        }
        self.sync_due(disk);
        true
    }

    /// Whether the data is durable: every write and sync done, the commit's `fsync` too.
    pub(crate) fn durable(&self) -> bool {
        self.disk_idle() && (self.failed.is_some() || self.final_done)
    }

    /// Whether no write or sync of this upload is in the disk helper's hands (each holds a
    /// descriptor of its file).
    pub(crate) fn disk_idle(&self) -> bool {
        self.writes.is_empty() && self.syncs.is_empty()
    }

    /// Whether the disk is behind: [`WRITE_AHEAD`] bytes still being written, or
    /// [`MAX_SYNCS_IN_FLIGHT`] windows still being synced. Its connection reads no more then.
    pub(crate) fn disk_bound(&self) -> bool {
        self.writes.iter().map(|(_, len)| len).sum::<usize>() >= WRITE_AHEAD
            || self.syncs.len() >= MAX_SYNCS_IN_FLIGHT
    }

    /// The failure of a write or sync, as the client will hear it.
    pub(crate) fn disk_error(&self) -> Option<FileError> {
        self.failed.as_ref().map(|error| error.on(&self.path))
    }
}
