//! File transfers on a connection's streams: the file-service requests (GET, PUT, LIST, STAT,
//! DELETE, MKDIR), and each turn's bounded disk work for the transfers that take time.
//!
//! Disk calls block: a read or write of the page cache takes microseconds, one of a cold disk
//! milliseconds, an `fsync` of a big file seconds. So each turn a connection does at most
//! [`disk_budget`](crate::limits::Limits::disk_budget) bytes of file work — queueing DATA
//! ranges (sent later with `sendfile`), hashing, re-reading a resumed upload, listing — and
//! comes back next turn (nginx's `sendfile_max_chunk` rule).
//!
//! Every disk call goes through the [`Disk`] in the connection's [`Context`] (`cx.files`): a
//! transfer holds handles the disk gave out, given back when it ends ([`Transfer::end`]),
//! never a descriptor — but for a GET's file, whose DATA ranges the outbox sends with
//! `sendfile`.
//!
//! An upload never waits on the disk here. Each DATA frame is handed to the disk helper as it
//! is handled ([`Upload::write_at`]), so what a turn hands over is bounded by the socket's
//! read budget, and the connection reads no more while the upload is too far ahead of the disk
//! ([`Streams::disk_bound`]). A verified upload becomes a [`TransferKind::Commit`]: its `fsync`
//! by the helper, then the rename ([`Disk::publish`], metadata only, here), then its
//! directory's `fsync` by the helper, and only then its DIGEST — each step taken by
//! `pump_commit` once the helper's completion has arrived ([`Streams::on_disk_done`]).
//!
//! Output obeys the outbox like everything else: DATA ranges and listing pages are produced
//! only while [`Outbox::may_produce`] is true.

use std::fs::File;
use std::sync::Arc;

use log::{debug, info};

use super::streams::Streams;
use super::{Bits, Budget, Connection, Context};
use crate::outbox::{FileRange, Outbox};
use crate::proto::files::{
    Digest, FileInfo, GetRequest, Hash, PutReady, PutRequest, parse_delete_path, parse_path,
};
use crate::proto::{ErrorCode, Flags, Frame, FrameType};
use crate::service::disk::{Disk, FileError, FileMeta, JobDone, Pending, TransferPermit};
use crate::service::files::{GetTransfer, ListTransfer, PutError, PutTransfer};
use crate::service::upload::Upload;
use crate::timer::WallClock;
use crate::transport::IoState;

/// Most file bytes in one DATA frame.
pub const DATA_FRAME_LEN: u64 = 1 << 20;

/// Most payload bytes in one ENTRIES page.
pub const LIST_PAGE_LEN: usize = 64 << 10;

/// What one listed entry costs from the disk budget: its `stat` may read an inode block.
const ENTRY_COST: usize = 4 << 10;

/// A transfer in progress.
#[derive(Debug)]
pub enum TransferKind {
    /// A GET: the file and what is left to send and hash.
    Get {
        /// The state machine.
        get: GetTransfer,
        /// The open file, shared with queued DATA ranges.
        file: Arc<File>,
        /// The file's metadata at open (a computed hash is cached only if it still holds).
        meta: FileMeta,
        /// When it was opened (the loop's wall clock): the time a computed hash is valid as of.
        opened: WallClock,
    },
    /// A PUT: the checks, and the upload's writes and syncs.
    Put {
        /// The state machine.
        put: PutTransfer,
        /// The upload on the disk.
        upload: Upload,
    },
    /// A verified PUT being made durable and put in place.
    Commit(Commit),
    /// A failed PUT (its ERROR sent) whose partial goes once the disk helper has answered
    /// its writes: on a stream of its own (0), since the client may reuse the request's.
    Discard(Upload),
    /// A LIST: the directory being read.
    List(ListTransfer),
}

/// A verified upload on its way to its DIGEST: its data made durable, then renamed into place,
/// then its directory made durable — each blocking step by the disk helper, the loop going on
/// meanwhile.
#[derive(Debug)]
pub struct Commit {
    /// The hash the DIGEST will carry.
    hash: Hash,
    /// Bytes stored.
    size: u64,
    step: CommitStep,
}

/// Where a commit is.
#[derive(Debug)]
enum CommitStep {
    /// Waiting for the upload's syncs (the final `fsync` among them).
    Data(Upload),
    /// Renamed into place; waiting for its directory's `fsync`, if it is still pending.
    Dir(Pending),
}

impl Commit {
    /// Whether the next step can be taken without waiting for the disk.
    fn ready(&self) -> bool {
        match &self.step {
            CommitStep::Data(upload) => upload.durable(),
            CommitStep::Dir(pending) => matches!(pending, Pending::Done(_)),
        }
    }
}

/// One transfer on its stream.
#[derive(Debug)]
pub struct Transfer {
    /// The stream its request came on.
    pub id: u32,
    /// What it is.
    pub kind: TransferKind,
    /// Its place in the server's transfer limit.
    permit: TransferPermit,
}

impl Transfer {
    /// The transfer is over, however it ended: what it holds goes back to the disk, and its
    /// place among the server's transfers with it. An upload not committed keeps its
    /// resumable partial; a GET's file closes once its last range has left the outbox.
    pub fn end(self, disk: &mut dyn Disk) {
        match self.kind {
            TransferKind::Put { upload, .. }
            | TransferKind::Discard(upload)
            | TransferKind::Commit(Commit {
                step: CommitStep::Data(upload),
                ..
            }) => disk.release_upload(upload.handle()),
            TransferKind::List(list) => disk.close_listing(list.listing()),
            TransferKind::Get { .. } | TransferKind::Commit(_) => {}
        }
        disk.end_transfer(self.permit);
    }

    /// The transfer finished (its last frame is queued): a failed upload waiting for its disk
    /// work is discarded now, anything else ends.
    fn finish(self, disk: &mut dyn Disk) {
        match self.kind {
            TransferKind::Discard(upload) => {
                disk.discard(upload.handle());
                disk.end_transfer(self.permit);
            }
            _ => self.end(disk),
        }
    }
}

/// `opened` with the permit it was admitted under; if it failed, the permit goes back.
fn admitted<T>(
    disk: &mut dyn Disk,
    permit: TransferPermit,
    opened: Result<T, FileError>,
) -> Result<(T, TransferPermit), FileError> {
    match opened {
        Ok(opened) => Ok((opened, permit)),
        Err(error) => {
            disk.end_transfer(permit);
            Err(error)
        }
    }
}

/// What one transfer's turn did.
enum Pumped {
    /// Moved something (or not), still running.
    Running(bool),
    /// Finished: its last frame is queued.
    Finished,
}

impl Streams {
    /// The transfer on `stream`.
    pub fn transfer_mut(&mut self, stream: u32) -> Option<&mut Transfer> {
        self.transfers
            .iter_mut()
            .find(|transfer| transfer.id == stream)
    }

    /// Takes the transfer on `stream` out of the table.
    pub fn remove_transfer(&mut self, stream: u32) -> Option<Transfer> {
        let at = self
            .transfers
            .iter()
            .position(|transfer| transfer.id == stream)?;
        let transfer = self.transfers.swap_remove(at);
        if self.transfers.is_empty() {
            self.transfers = Vec::new();
        }
        Some(transfer)
    }

    /// Whether a transfer has work that needs no new readiness event.
    pub fn transfers_want_turn(&self, may_produce: bool) -> bool {
        self.transfers.iter().any(|transfer| match &transfer.kind {
            TransferKind::Get { get, file, .. } => {
                get.hash_wanted().is_some()
                    // Done, and its last DATA range has left the outbox: the DIGEST (or the
                    // ERROR) is due. While ranges wait, the socket's writable edge brings the
                    // next turn.
                    || (get.is_done() && Arc::strong_count(file) == 1)
                    || (may_produce && get.next_range(1).is_some())
            }
            TransferKind::Put { put, .. } => put.wants_turn(),
            TransferKind::Commit(commit) => commit.ready(),
            TransferKind::Discard(upload) => upload.disk_idle(),
            TransferKind::List(_) => may_produce,
        })
    }

    /// Ends the uploads still receiving (their resumable partials stay for a resume); GETs,
    /// LISTs and commits go on: they need nothing more from the client.
    pub fn release_uploads(&mut self, cx: &mut Context<'_>) {
        let Some(disk) = cx.files.as_deref_mut() else {
            return;
        };
        let mut at = self.transfers.len();
        while at > 0 {
            at -= 1;
            if matches!(self.transfers[at].kind, TransferKind::Put { .. }) {
                self.transfers.remove(at).end(disk);
            }
        }
    }

    /// Ends every transfer (the connection is closing): see [`Transfer::end`].
    pub fn end_transfers(&mut self, cx: &mut Context<'_>) {
        let transfers = std::mem::take(&mut self.transfers);
        if let Some(disk) = cx.files.as_deref_mut() {
            for transfer in transfers {
                transfer.end(disk);
            }
        }
    }

    /// Verified uploads being committed.
    pub fn commits(&self) -> usize {
        self.transfers
            .iter()
            .filter(|transfer| matches!(transfer.kind, TransferKind::Commit(_)))
            .count()
    }

    /// Whether an upload has run ahead of the disk ([`Upload::disk_bound`]): the connection
    /// then reads no more until a sync comes back.
    pub fn disk_bound(&self) -> bool {
        self.transfers.iter().any(|transfer| match &transfer.kind {
            TransferKind::Put { upload, .. } => upload.disk_bound(),
            _ => false,
        })
    }

    /// A finished disk job: noted by the transfer that waits for it (which may hand the disk
    /// its next job). Returns whether one did.
    pub fn on_disk_done(&mut self, done: &JobDone, disk: &mut dyn Disk) -> bool {
        for transfer in &mut self.transfers {
            let taken = match &mut transfer.kind {
                TransferKind::Put { upload, .. }
                | TransferKind::Discard(upload)
                | TransferKind::Commit(Commit {
                    step: CommitStep::Data(upload),
                    ..
                }) => upload.on_disk_done(done, disk),
                TransferKind::Commit(Commit {
                    step: CommitStep::Dir(pending),
                    ..
                }) => {
                    let ours = matches!(pending, Pending::Job(id) if *id == done.id);
                    if ours {
                        *pending = Pending::Done(done.result.clone());
                    }
                    ours
                }
                _ => false,
            };
            if taken {
                return true;
            }
        }
        false
    }

    /// Each transfer's disk work for this turn, within the budget. Returns whether anything
    /// moved.
    pub(crate) fn pump_transfers(
        &mut self,
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> bool {
        let mut progress = false;
        let mut at = 0;
        while at < self.transfers.len() {
            let transfer = &mut self.transfers[at];
            match pump_one(transfer, outbox, cx, budget) {
                Pumped::Running(moved) => {
                    progress |= moved;
                    at += 1;
                }
                Pumped::Finished => {
                    let finished = self.transfers.swap_remove(at);
                    if let Some(disk) = cx.files.as_deref_mut() {
                        finished.finish(disk);
                    }
                    progress = true;
                }
            }
        }
        if self.transfers.is_empty() && self.transfers.capacity() > 0 {
            self.transfers = Vec::new();
        }
        progress
    }
}

fn pump_one(
    transfer: &mut Transfer,
    outbox: &mut Outbox,
    cx: &mut Context<'_>,
    budget: &mut Budget,
) -> Pumped {
    let stream = transfer.id;
    let Some(disk) = cx.files.as_deref_mut() else {
        return Pumped::Finished; // no file service: nothing was admitted
    };
    match &mut transfer.kind {
        TransferKind::Get {
            get,
            file,
            meta,
            opened,
        } => pump_get(stream, get, (file, meta, *opened), outbox, cx, budget),
        TransferKind::Put { put, upload } => {
            let mut moved = false;
            let mut buf = None;
            while let Some((at, left)) = put.rehash_wanted() {
                if budget.disk == 0 {
                    break;
                }
                let chunk = buf.get_or_insert_with(|| cx.pool.take());
                let want = (left as usize).min(chunk.capacity()).min(budget.disk);
                let spare = &mut chunk.spare()[..want];
                match disk.read_upload(upload.handle(), spare, at) {
                    Ok(n) => {
                        put.handle_rehashed(&spare[..n]);
                        budget.disk = budget.disk.saturating_sub(n.max(1));
                        moved = true;
                    }
                    Err(error) => {
                        if let Some(chunk) = buf.take() {
                            cx.pool.give(chunk);
                        }
                        outbox
                            .replies(cx.pool, cx.limits)
                            .error(stream, error.code, &error.text);
                        return Pumped::Finished;
                    }
                }
            }
            if let Some(chunk) = buf {
                cx.pool.give(chunk);
            }
            if let Some(ready) = put.poll_ready() {
                outbox.replies(cx.pool, cx.limits).part(
                    FrameType::PutReady,
                    stream,
                    PutReady::PAYLOAD_LEN as u32,
                    |out| ready.emit(out),
                );
                moved = true;
            }
            Pumped::Running(moved)
        }
        TransferKind::Commit(commit) => pump_commit(stream, commit, outbox, cx),
        // Finished once idle: `pump_transfers` then discards it.
        TransferKind::Discard(upload) => {
            if upload.disk_idle() {
                Pumped::Finished
            } else {
                Pumped::Running(false)
            }
        }
        TransferKind::List(listing) => {
            if !outbox.may_produce() || budget.disk == 0 {
                return Pumped::Running(false);
            }
            let max_entries = (budget.disk / ENTRY_COST).max(1);
            let mut page = Vec::new();
            // Every frame the server sends fits the payload limit it announced.
            let page_len = LIST_PAGE_LEN.min(cx.limits.max_frame_len as usize);
            let finished = match listing.next_page(disk, &mut page, page_len, max_entries) {
                Ok(finished) => finished,
                Err(error) => {
                    outbox
                        .replies(cx.pool, cx.limits)
                        .error(stream, error.code, &error.text);
                    return Pumped::Finished;
                }
            };
            // Charged for every entry it may have read, shown or not.
            budget.disk = budget.disk.saturating_sub(max_entries * ENTRY_COST);
            let mut replies = outbox.replies(cx.pool, cx.limits);
            if finished {
                replies.reply(FrameType::Entries, stream, page.len() as u32, |out| {
                    out.copy_from_slice(&page)
                });
                return Pumped::Finished;
            }
            if !page.is_empty() {
                replies.part(FrameType::Entries, stream, page.len() as u32, |out| {
                    out.copy_from_slice(&page)
                });
            }
            Pumped::Running(true)
        }
    }
}

/// Takes a commit's next step if the disk has answered: the rename once the data is durable,
/// the DIGEST once the directory is; an ERROR (and the partial removed) if a sync failed.
fn pump_commit(
    stream: u32,
    commit: &mut Commit,
    outbox: &mut Outbox,
    cx: &mut Context<'_>,
) -> Pumped {
    if !commit.ready() {
        return Pumped::Running(false);
    }
    let published =
        match std::mem::replace(&mut commit.step, CommitStep::Dir(Pending::Done(Ok(())))) {
            CommitStep::Data(upload) => {
                let Some(disk) = cx.files.as_deref_mut() else {
                    return Pumped::Finished; // no file service: nothing was admitted
                };
                if let Some(error) = upload.disk_error() {
                    disk.discard(upload.handle());
                    Err(error)
                } else {
                    // The rename, then the directory's fsync handed to the disk (and the
                    // unlink of a file it replaced, whose outcome is only logged).
                    disk.publish(upload.handle())
                }
            }
            CommitStep::Dir(Pending::Done(result)) => {
                let mut replies = outbox.replies(cx.pool, cx.limits);
                match result {
                    Ok(()) => {
                        info!("stream {stream}: stored {} bytes", commit.size);
                        let digest = Digest { hash: commit.hash };
                        replies.reply(
                            FrameType::Digest,
                            stream,
                            Digest::PAYLOAD_LEN as u32,
                            |out| digest.emit(out),
                        );
                    }
                    Err(error) => {
                        let error = error.on("the upload's directory");
                        replies.error(stream, error.code, &error.text);
                    }
                }
                return Pumped::Finished;
            }
            CommitStep::Dir(pending) => {
                commit.step = CommitStep::Dir(pending);
                return Pumped::Running(false);
            }
        };
    match published {
        Ok(dir_sync) => {
            commit.step = CommitStep::Dir(dir_sync);
            // The directory's sync may have been made here and now.
            if commit.ready() {
                return pump_commit(stream, commit, outbox, cx);
            }
            Pumped::Running(true)
        }
        Err(error) => {
            info!("stream {stream}: upload failed: {}", error.text);
            outbox
                .replies(cx.pool, cx.limits)
                .error(stream, error.code, &error.text);
            Pumped::Finished
        }
    }
}

fn pump_get(
    stream: u32,
    get: &mut GetTransfer,
    (file, meta, opened): (&Arc<File>, &FileMeta, WallClock),
    outbox: &mut Outbox,
    cx: &mut Context<'_>,
    budget: &mut Budget,
) -> Pumped {
    let Some(disk) = cx.files.as_deref_mut() else {
        return Pumped::Finished; // no file service: nothing was admitted
    };
    let mut moved = false;
    let mut buf = None;
    loop {
        if budget.disk == 0 {
            break;
        }
        if outbox.may_produce() {
            let frame_len = DATA_FRAME_LEN.min(u64::from(cx.limits.max_frame_len));
            if let Some((offset, len)) = get.next_range(frame_len.min(budget.disk as u64)) {
                outbox.replies(cx.pool, cx.limits).file_frame(
                    FrameType::Data,
                    Flags::NONE,
                    stream,
                    FileRange {
                        file: Arc::clone(file),
                        offset,
                        len,
                    },
                );
                get.on_queued(len);
                budget.disk = budget.disk.saturating_sub(len as usize);
                moved = true;
                continue;
            }
        }
        let Some((at, left)) = get.hash_wanted() else {
            break;
        };
        let chunk = buf.get_or_insert_with(|| cx.pool.take());
        let want = (left as usize).min(chunk.capacity()).min(budget.disk);
        let spare = &mut chunk.spare()[..want];
        match disk.read_at(file, spare, at) {
            Ok(0) | Err(_) => {
                if let Some(chunk) = buf.take() {
                    cx.pool.give(chunk);
                }
                // The file shrank (or cannot be read) under the transfer: the stream cannot
                // end with a true hash. The client sees the error; any DATA range past the new
                // end fails the connection when it is sent.
                outbox.replies(cx.pool, cx.limits).error(
                    stream,
                    ErrorCode::IoFailed,
                    "the file changed while it was being sent",
                );
                return Pumped::Finished;
            }
            Ok(n) => {
                get.handle_hashed(&spare[..n]);
                budget.disk = budget.disk.saturating_sub(n);
                moved = true;
            }
        }
    }
    if let Some(chunk) = buf {
        cx.pool.give(chunk);
    }
    let Some((hash, computed)) = get.poll_digest() else {
        return Pumped::Running(moved);
    };
    // The DIGEST vouches for the bytes sent, and a queued DATA range is only a promise:
    // `sendfile` reads the file when the range leaves the outbox, so bytes written (or cut off)
    // meanwhile are what goes. So the DIGEST is decided only once every range has left (the
    // transfer holds the only reference to the file again), and only if one `fstat` then
    // shows the file as it was at the open — size, mtime and ctime, which no write leaves
    // alone past the racy window of a cached hash. Otherwise the stream ends with an ERROR.
    // (Bytes already handed to the kernel cannot be recalled: socket buffers hold references
    // to the page-cache pages sent, so a truncation after the last range left still lets the
    // client receive the whole earlier version — a version the file really had, and the
    // DIGEST verifies exactly it. Issue 12's "24 MiB after a truncation to 1 MiB" was that.)
    if Arc::strong_count(file) > 1 {
        return Pumped::Running(moved);
    }
    if !disk.unchanged(file, meta) {
        debug!("stream {stream}: the file changed during the GET: no DIGEST");
        outbox.replies(cx.pool, cx.limits).error(
            stream,
            ErrorCode::IoFailed,
            "the file changed while it was being sent",
        );
        return Pumped::Finished;
    }
    if computed {
        // Every byte hashed was read after `opened`, from a file whose `fstat` is the same now
        // as before it: the entry holds if the last change was a racy window before.
        disk.store_hash(meta, &hash, opened);
    }
    let digest = Digest { hash };
    outbox.replies(cx.pool, cx.limits).reply(
        FrameType::Digest,
        stream,
        Digest::PAYLOAD_LEN as u32,
        |out| digest.emit(out),
    );
    Pumped::Finished
}

impl Connection {
    /// Whether a file request may start here; the refusal to send otherwise.
    fn refuse_file_request(
        &self,
        frame_type: FrameType,
        cx: &Context<'_>,
    ) -> Option<(ErrorCode, String)> {
        let takes_a_stream = matches!(
            frame_type,
            FrameType::Get | FrameType::Put | FrameType::List
        );
        if !self.bits.has(Bits::AUTHENTICATED) {
            Some((
                ErrorCode::Unauthenticated,
                format!(
                    "{frame_type} needs an authenticated connection: send the server's token in HELLO"
                ),
            ))
        } else if cx.files.is_none() {
            Some((
                ErrorCode::UnknownFrameType,
                "this server has no file service".to_string(),
            ))
        } else if frame_type == FrameType::Put && self.io_state.has(IoState::PEER_EOF) {
            Some((
                ErrorCode::BadRequest,
                "PUT after the client closed its side of the connection".to_string(),
            ))
        } else if self.bits.has(Bits::DRAINING) {
            Some((
                ErrorCode::ShuttingDown,
                "the server is shutting down and starts no new transfers".to_string(),
            ))
        } else if takes_a_stream && self.open_streams() >= cx.limits.max_streams_per_connection {
            Some((
                ErrorCode::LimitReached,
                format!(
                    "{} commands and transfers are running on this connection, its limit",
                    cx.limits.max_streams_per_connection
                ),
            ))
        } else {
            None
        }
    }

    /// GET, PUT, LIST, STAT, DELETE or MKDIR on a fresh stream. Never fatal: a refusal or a
    /// failure ends only its stream.
    pub(super) fn file_request(
        &mut self,
        frame_type: FrameType,
        frame: Frame<'_>,
        cx: &mut Context<'_>,
    ) {
        let stream = frame.header.stream;
        if let Some((code, text)) = self.refuse_file_request(frame_type, cx) {
            self.outbox
                .replies(cx.pool, cx.limits)
                .error(stream, code, &text);
            return;
        }
        if let Err(error) = self.try_file_request(frame_type, frame, cx) {
            debug!("stream {stream}: {frame_type} refused: {}", error.text);
            self.outbox
                .replies(cx.pool, cx.limits)
                .error(stream, error.code, &error.text);
        }
    }

    fn try_file_request(
        &mut self,
        frame_type: FrameType,
        frame: Frame<'_>,
        cx: &mut Context<'_>,
    ) -> Result<(), FileError> {
        let stream = frame.header.stream;
        let bad = |error: crate::proto::files::FileRequestError| FileError {
            code: ErrorCode::BadRequest,
            text: error.to_string(),
        };
        let Some(disk) = cx.files.as_deref_mut() else {
            return Ok(()); // refused above
        };
        let mut replies = self.outbox.replies(cx.pool, cx.limits);
        let kind = match frame_type {
            FrameType::Stat => {
                let path = parse_path(frame.payload).map_err(bad)?;
                let info = disk.stat(path)?;
                replies.reply(
                    FrameType::FileInfo,
                    stream,
                    FileInfo::PAYLOAD_LEN as u32,
                    |out| info.emit(out),
                );
                return Ok(());
            }
            FrameType::Delete | FrameType::Mkdir => {
                let path = if frame_type == FrameType::Delete {
                    parse_delete_path(frame.payload)
                } else {
                    parse_path(frame.payload)
                }
                .map_err(bad)?;
                if frame_type == FrameType::Delete {
                    // DONE goes out once the name is gone; a big file's blocks are freed
                    // after, off the loop (`Disk::delete`).
                    disk.delete(path)?;
                } else {
                    disk.mkdir(path)?;
                }
                info!("{frame_type} {path}");
                replies.reply(FrameType::Done, stream, 0, |_| {});
                return Ok(());
            }
            FrameType::List => {
                let path = parse_path(frame.payload).map_err(bad)?;
                let permit = disk.admit()?;
                let opened = disk.open_listing(path);
                let (listing, permit) = admitted(disk, permit, opened)?;
                (TransferKind::List(ListTransfer::new(listing, path)), permit)
            }
            FrameType::Get => {
                let request = GetRequest::parse(frame.payload).map_err(bad)?;
                let permit = disk.admit()?;
                let opened = disk.open_read(request.path).and_then(|opened| {
                    if request.offset > opened.meta.size {
                        return Err(FileError::new(
                            ErrorCode::BadOffset,
                            format!(
                                "{}: offset {} is past the end ({} bytes)",
                                request.path, request.offset, opened.meta.size
                            ),
                        ));
                    }
                    Ok(opened)
                });
                let (opened, permit) = admitted(disk, permit, opened)?;
                let info = opened.meta.info(opened.hash);
                replies.part(
                    FrameType::FileInfo,
                    stream,
                    FileInfo::PAYLOAD_LEN as u32,
                    |out| info.emit(out),
                );
                debug!(
                    "stream {stream}: GET {} from {} of {} (hash {})",
                    request.path,
                    request.offset,
                    opened.meta.size,
                    if opened.hash.is_some() {
                        "cached"
                    } else {
                        "to compute"
                    }
                );
                let get = GetTransfer::new(opened.meta.size, request.offset, opened.hash);
                (
                    TransferKind::Get {
                        get,
                        file: opened.file,
                        meta: opened.meta,
                        opened: cx.wall_clock,
                    },
                    permit,
                )
            }
            FrameType::Put => {
                let request = PutRequest::parse(frame.payload).map_err(bad)?;
                let permit = disk.admit()?;
                let begun = disk.begin_put(&request);
                let (begun, permit) = admitted(disk, permit, begun)?;
                let upload = Upload::new(begun, request.path);
                debug!(
                    "stream {stream}: PUT {} of {} bytes (upload id {:016x}, {} held)",
                    request.path, request.size, upload.id, upload.held
                );
                let put = PutTransfer::new(request.size, upload.held, upload.id, request.hash);
                (TransferKind::Put { put, upload }, permit)
            }
            _ => return Ok(()),
        };
        let (kind, permit) = kind;
        let streams = self
            .streams
            .get_or_insert_with(|| Streams::new(cx.limits.max_streams_per_connection));
        streams.transfers.push(Transfer {
            id: stream,
            kind,
            permit,
        });
        Ok(())
    }

    /// DATA or DIGEST from the client: the next bytes of the upload on that stream, or its
    /// trailer. Frames for a stream with no upload are ignored (they may have crossed the
    /// stream's ERROR on the wire).
    pub(super) fn upload_frame(
        &mut self,
        frame_type: FrameType,
        frame: Frame<'_>,
        cx: &mut Context<'_>,
    ) {
        let stream = frame.header.stream;
        let Some(streams) = self.streams.as_mut() else {
            debug!("{frame_type} for stream {stream}, which has no upload: ignored");
            return;
        };
        let Some(Transfer {
            kind: TransferKind::Put { put, upload },
            ..
        }) = streams.transfer_mut(stream)
        else {
            debug!("{frame_type} for stream {stream}, which has no upload: ignored");
            return;
        };
        let Some(disk) = cx.files.as_deref_mut() else {
            return; // no file service: no upload was ever begun
        };
        // PUT_READY is due before anything else on the stream: DATA may have been sent right
        // behind the PUT, and handled before the pump had a chance to send it.
        if let Some(ready) = put.poll_ready() {
            self.outbox.replies(cx.pool, cx.limits).part(
                FrameType::PutReady,
                stream,
                PutReady::PAYLOAD_LEN as u32,
                |out| ready.emit(out),
            );
        }
        let outcome = if frame_type == FrameType::Data {
            match put.handle_data(frame.payload.len()) {
                Ok(offset) => match upload.write_at(frame.payload, offset, disk) {
                    Ok(()) => {
                        put.on_written(frame.payload);
                        return;
                    }
                    // The partial goes even if resumable: after a full disk it would hold
                    // the space that a retry needs, and after an I/O error its bytes are
                    // suspect.
                    Err(error) => Err((error.code, error.text, true)),
                },
                Err(error) => Err((error.code(), error.to_string(), false)),
            }
        } else {
            match Digest::parse(frame.payload) {
                Err(error) => Err((ErrorCode::BadRequest, format!("bad DIGEST: {error}"), false)),
                Ok(digest) => match put.handle_digest(&digest.hash) {
                    Ok(hash) => Ok(hash),
                    Err(error) => {
                        let discard = error == PutError::Mismatch;
                        Err((error.code(), error.to_string(), discard))
                    }
                },
            }
        };
        let Some(transfer) = streams.remove_transfer(stream) else {
            return;
        };
        let (id, put, mut upload, permit) = match transfer {
            Transfer {
                id,
                kind: TransferKind::Put { put, upload },
                permit,
            } => (id, put, upload, permit),
            other => {
                other.end(disk);
                return;
            }
        };
        let (code, text, discard) = match outcome {
            Ok(hash) => {
                // Verified: the commit makes it durable and puts it in place, off the loop
                // (`pump_commit`), and answers DIGEST when that is done.
                upload.finish(disk);
                let commit = Commit {
                    hash,
                    size: put.received(),
                    step: CommitStep::Data(upload),
                };
                streams.transfers.push(Transfer {
                    id,
                    kind: TransferKind::Commit(commit),
                    permit,
                });
                return;
            }
            Err(failure) => failure,
        };
        let mut replies = self.outbox.replies(cx.pool, cx.limits);
        info!("stream {stream}: upload failed: {text}");
        if discard && upload.disk_idle() {
            disk.discard(upload.handle());
            disk.end_transfer(permit);
        } else if discard {
            // Its writes are still in the helper's hands: discarded when answered.
            streams.transfers.push(Transfer {
                id: 0,
                kind: TransferKind::Discard(upload),
                permit,
            });
        } else {
            // Ended: a resumable partial stays for a resume.
            Transfer {
                id,
                kind: TransferKind::Put { put, upload },
                permit,
            }
            .end(disk);
        }
        replies.error(stream, code, &text);
    }

    /// A client ERROR on a transfer's stream: the transfer ends (an upload's resumable partial
    /// stays). Returns whether there was one.
    pub(super) fn abandon_transfer(&mut self, stream: u32, cx: &mut Context<'_>) -> bool {
        let Some(transfer) = self
            .streams
            .as_mut()
            .and_then(|streams| streams.remove_transfer(stream))
        else {
            return false;
        };
        if let Some(disk) = cx.files.as_deref_mut() {
            transfer.end(disk);
        }
        true
    }
}
