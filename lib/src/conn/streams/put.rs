//! An upload on its stream: the table entry for a PUT ([`Put`]), from its first DATA to its
//! DIGEST.
//!
//! An upload never waits on the disk here. Each DATA frame is handed to the disk helper as it
//! is handled ([`Upload::write_at`]), so what a turn hands over is bounded by the socket's
//! read budget, and the connection reads no more while the upload is too far ahead of the disk
//! ([`Put::disk_bound`]). A verified upload is committed: its `fsync` by the helper, then the
//! rename ([`Disk::publish`], metadata only, here), then its directory's `fsync` by the helper,
//! and only then its DIGEST — each step taken by `pump_commit` once the helper's completion
//! has arrived ([`Put::on_disk_done`]). A resumed upload's held bytes are re-read for the hash
//! first, within the turn's disk budget. A failed upload whose partial goes, and whose writes
//! the helper still holds, waits for them on stream 0 (the client may reuse its id) before the
//! partial is removed ([`Put::settle`]).

use log::info;

use crate::access::{Grant, QuotaHold};
use crate::buffer::BufferPool;
use crate::conn::context::{Budget, Context, Pumped};
use crate::limits::Limits;
use crate::metrics::access::{Outcome, Record};
use crate::outbox::Outbox;
use crate::proto::files::{Digest, Hash, PutFlags, PutReady, PutRequest};
use crate::proto::{ErrorCode, FrameType};
use crate::service::disk::{Disk, FileError, JobDone, Pending, TransferPermit};
use crate::service::files::{PutError, PutTransfer};
use crate::service::upload::Upload;

/// A PUT in progress: the table entry.
#[derive(Debug)]
pub(crate) struct Put {
    phase: Phase,
    /// Its place in the server's transfer limit.
    permit: TransferPermit,
    /// Its bytes reserved in its credential's quota: kept once it is stored, given back if it
    /// is not (when this is dropped).
    quota: Option<QuotaHold>,
}

/// Where an upload is.
#[derive(Debug)]
enum Phase {
    /// Taking DATA: the checks, and the upload's writes and syncs.
    Receiving {
        /// The state machine.
        transfer: PutTransfer,
        /// The upload on the disk.
        upload: Upload,
    },
    /// Verified, and being made durable and put in place.
    Committing(Commit),
    /// Failed (its ERROR sent); its partial goes once the disk helper has answered its
    /// writes. It waits on a stream of its own (0), since the client may reuse the request's.
    Discarding(Upload),
}

/// What an upload's DATA or DIGEST made of it ([`Put::on_frame`]).
#[derive(Debug)]
pub(crate) enum Received {
    /// Bytes written: more are expected.
    More,
    /// The DIGEST matched: the upload is to be committed ([`Put::settle`]).
    Verified(Hash),
    /// The upload failed: the ERROR to send, and whether its partial goes (else it stays for
    /// a resume).
    Failed {
        code: ErrorCode,
        text: String,
        discard: bool,
    },
}

impl Put {
    /// Begins the upload `request` asks for (a resume if its partial is there). On failure the
    /// permit goes back (the caller sends the ERROR), and so does `quota`, dropped.
    ///
    /// An upload counted against a quota is never resumable: the disk is asked for a plain
    /// temporary file, which vanishes if the upload does not complete. A resumable partial
    /// would stay on the disk after its reservation was given back, and a client could leave
    /// as many as it likes; the declared hash is still checked against the DIGEST.
    pub(crate) fn begin(
        stream: u32,
        request: &PutRequest<'_>,
        permit: TransferPermit,
        quota: Option<QuotaHold>,
        disk: &mut dyn Disk,
    ) -> Result<Put, FileError> {
        // The durability flags stay; only the resume goes.
        let mut durability = PutFlags::NONE;
        for flag in [PutFlags::DEFER_SYNC, PutFlags::SYNC_FS] {
            if request.flags.contains(flag) {
                durability = durability.with(flag);
            }
        }
        let unresumable = PutRequest {
            flags: durability,
            hash: None,
            ..*request
        };
        let asked = if quota.is_some() {
            &unresumable
        } else {
            request
        };
        let begun = match disk.begin_put(asked) {
            Ok(begun) => begun,
            Err(error) => {
                disk.end_transfer(permit);
                return Err(error);
            }
        };
        let mut upload = Upload::new(begun, request.path);
        if request.flags.contains(PutFlags::DEFER_SYNC) || request.flags.contains(PutFlags::SYNC_FS)
        {
            upload = upload.without_final_fsync();
        }
        log::debug!(
            "stream {stream}: PUT {} of {} bytes (upload id {:016x}, {} held)",
            request.path,
            request.size,
            upload.id,
            upload.held
        );
        let transfer = PutTransfer::new(request.size, upload.held, upload.id, request.hash);
        Ok(Put {
            phase: Phase::Receiving { transfer, upload },
            permit,
            quota,
        })
    }

    /// Whether it still takes DATA and DIGEST from the client.
    pub(crate) fn is_receiving(&self) -> bool {
        matches!(self.phase, Phase::Receiving { .. })
    }

    /// Whether it is verified and being committed: a shutdown waits for its DIGEST.
    pub(crate) fn is_committing(&self) -> bool {
        matches!(self.phase, Phase::Committing(_))
    }

    /// Whether it has work that needs no new readiness event.
    pub(crate) fn wants_turn(&self) -> bool {
        match &self.phase {
            Phase::Receiving { transfer, .. } => transfer.wants_turn(),
            Phase::Committing(commit) => commit.ready(),
            Phase::Discarding(upload) => upload.disk_idle(),
        }
    }

    /// Whether it has run ahead of the disk ([`Upload::disk_bound`]): the connection then
    /// reads no more until a sync comes back.
    pub(crate) fn disk_bound(&self) -> bool {
        match &self.phase {
            Phase::Receiving { upload, .. } => upload.disk_bound(),
            _ => false,
        }
    }

    /// A finished disk job: noted if it is this upload's (which may hand the disk its next
    /// job). Returns whether it was.
    pub(crate) fn on_disk_done(&mut self, done: &JobDone, disk: &mut dyn Disk) -> bool {
        match &mut self.phase {
            Phase::Receiving { upload, .. }
            | Phase::Discarding(upload)
            | Phase::Committing(Commit {
                step: CommitStep::Data(upload),
                ..
            }) => upload.on_disk_done(done, disk),
            Phase::Committing(Commit {
                step: CommitStep::Dir(pending),
                ..
            }) => {
                let ours = matches!(pending, Pending::Job(id) if *id == done.id);
                if ours {
                    *pending = Pending::Done(done.result.clone());
                }
                ours
            }
        }
    }

    /// DATA or DIGEST from the client (the caller checked it [is receiving](Put::is_receiving)):
    /// the next bytes, written through the disk, or the trailer, checked.
    pub(crate) fn on_frame(
        &mut self,
        stream: u32,
        frame_type: FrameType,
        payload: &[u8],
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
    ) -> Received {
        let Phase::Receiving { transfer, upload } = &mut self.phase else {
            return Received::More;
        };
        let Some(disk) = cx.files.as_deref_mut() else {
            return Received::More; // no file service: no upload was ever begun
        };
        // PUT_READY is due before anything else on the stream: DATA may have been sent right
        // behind the PUT, and handled before the pump had a chance to send it.
        queue_ready(transfer, stream, outbox, cx.pool, cx.limits);
        let failed = |code, text, discard| Received::Failed {
            code,
            text,
            discard,
        };
        if frame_type == FrameType::Data {
            return match transfer.handle_data(payload.len()) {
                Ok(offset) => match upload.write_at(payload, offset, disk) {
                    Ok(()) => {
                        transfer.on_written(payload);
                        Received::More
                    }
                    // The partial goes even if resumable: after a full disk it would hold
                    // the space that a retry needs, and after an I/O error its bytes are
                    // suspect.
                    Err(error) => failed(error.code, error.text, true),
                },
                Err(error) => failed(error.code(), error.to_string(), false),
            };
        }
        match Digest::parse(payload) {
            Err(error) => failed(ErrorCode::BadRequest, format!("bad DIGEST: {error}"), false),
            Ok(digest) => match transfer.handle_digest(&digest.hash) {
                Ok(hash) => Received::Verified(hash),
                Err(error) => {
                    let discard = error == PutError::Mismatch;
                    failed(error.code(), error.to_string(), discard)
                }
            },
        }
    }

    /// What becomes of the upload after its last frame (`received` is not [`Received::More`]),
    /// taken out of the table: verified, it is committed (off the loop, `pump_commit`, which
    /// answers DIGEST when that is done); failed, its ERROR is queued, and it ends (a
    /// resumable partial stays) or is discarded — now if the disk is idle, or later, on stream
    /// 0. Returns the entry to put back in the table, with its stream id.
    pub(crate) fn settle(
        self: Box<Put>,
        stream: u32,
        received: Received,
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
        grant: Option<&Grant>,
        record: &mut Record,
    ) -> Option<(u32, Box<Put>)> {
        let Some(disk) = cx.files.as_deref_mut() else {
            return None; // no file service: no upload was ever begun
        };
        let Put {
            phase,
            permit,
            quota,
        } = *self;
        let Phase::Receiving {
            transfer,
            mut upload,
        } = phase
        else {
            Put {
                phase,
                permit,
                quota,
            }
            .end(disk);
            return None;
        };
        let (code, text, discard) = match received {
            Received::More => {
                let phase = Phase::Receiving { transfer, upload };
                return Some((
                    stream,
                    Box::new(Put {
                        phase,
                        permit,
                        quota,
                    }),
                ));
            }
            Received::Verified(hash) => {
                upload.finish(disk);
                let commit = Commit {
                    hash,
                    size: transfer.received(),
                    step: CommitStep::Data(upload),
                };
                let phase = Phase::Committing(commit);
                return Some((
                    stream,
                    Box::new(Put {
                        phase,
                        permit,
                        quota,
                    }),
                ));
            }
            Received::Failed {
                code,
                text,
                discard,
            } => (code, text, discard),
        };
        // A failed upload stores nothing: its reservation goes back now.
        drop(quota);
        record.outcome = Some(Outcome::Error(code));
        let mut replies = outbox.replies(cx.pool, cx.limits);
        info!("stream {stream}: upload failed: {text}");
        let kept = if discard && upload.disk_idle() {
            disk.discard(upload.handle());
            disk.end_transfer(permit);
            None
        } else if discard {
            // Its writes are still in the helper's hands: discarded when answered.
            let phase = Phase::Discarding(upload);
            Some((
                0,
                Box::new(Put {
                    phase,
                    permit,
                    quota: None,
                }),
            ))
        } else {
            // Ended: a resumable partial stays for a resume.
            let phase = Phase::Receiving { transfer, upload };
            Put {
                phase,
                permit,
                quota: None,
            }
            .end(disk);
            None
        };
        let text = shown(grant, &text);
        replies.error(stream, code, &text);
        kept
    }

    /// This turn's work: a resumed upload's held bytes re-read for the hash and PUT_READY
    /// once that is done; a commit's next step; a discard once the disk is idle.
    pub(crate) fn pump(
        &mut self,
        stream: u32,
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
        budget: &mut Budget,
        grant: Option<&Grant>,
        record: &mut Record,
    ) -> Pumped {
        let Some(disk) = cx.files.as_deref_mut() else {
            return Pumped::Finished; // no file service: nothing was admitted
        };
        let (put, upload) = match &mut self.phase {
            Phase::Receiving { transfer, upload } => (transfer, upload),
            Phase::Committing(commit) => {
                return pump_commit(stream, commit, &mut self.quota, outbox, cx, grant, record);
            }
            // Finished once idle: the table then discards it (`Put::finish`).
            Phase::Discarding(upload) => {
                return if upload.disk_idle() {
                    Pumped::Finished
                } else {
                    Pumped::Running(false)
                };
            }
        };
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
                    outbox.replies(cx.pool, cx.limits).error(
                        stream,
                        error.code,
                        &shown(grant, &error.text),
                    );
                    record.outcome = Some(Outcome::Error(error.code));
                    return Pumped::Finished;
                }
            }
        }
        if let Some(chunk) = buf {
            cx.pool.give(chunk);
        }
        moved |= queue_ready(put, stream, outbox, cx.pool, cx.limits);
        Pumped::Running(moved)
    }

    /// The upload is over, however it ended: it goes back to the disk (one not committed
    /// keeps its resumable partial), and its place among the server's transfers with it.
    pub(crate) fn end(self, disk: &mut dyn Disk) {
        match self.phase {
            Phase::Receiving { upload, .. }
            | Phase::Discarding(upload)
            | Phase::Committing(Commit {
                step: CommitStep::Data(upload),
                ..
            }) => disk.release_upload(upload.handle()),
            Phase::Committing(_) => {
                // Renamed into place already (its directory's sync was pending): stored, so
                // it counts against the quota although its DIGEST never went out.
                if let Some(hold) = self.quota {
                    hold.commit();
                }
            }
        }
        disk.end_transfer(self.permit);
    }

    /// Its last frame is queued (or a discard's disk work is answered): a failed upload is
    /// discarded now, anything else ends ([`Put::end`]).
    pub(crate) fn finish(self, disk: &mut dyn Disk) {
        match self.phase {
            Phase::Discarding(upload) => {
                disk.discard(upload.handle());
                disk.end_transfer(self.permit);
            }
            _ => self.end(disk),
        }
    }
}

/// Queues PUT_READY on `stream` if it is due (once, when the server is ready for DATA: a
/// resumed upload's held bytes hashed); returns whether it was.
fn queue_ready(
    transfer: &mut PutTransfer,
    stream: u32,
    outbox: &mut Outbox,
    pool: &mut BufferPool,
    limits: &Limits,
) -> bool {
    let Some(ready) = transfer.poll_ready() else {
        return false;
    };
    outbox.replies(pool, limits).part(
        FrameType::PutReady,
        stream,
        PutReady::PAYLOAD_LEN as u32,
        |out| ready.emit(out),
    );
    true
}

/// A verified upload on its way to its DIGEST: its data made durable, then renamed into place,
/// then its directory made durable — each blocking step by the disk helper, the loop going on
/// meanwhile.
#[derive(Debug)]
struct Commit {
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

/// Takes a commit's next step if the disk has answered: the rename once the data is durable,
/// the DIGEST once the directory is; an ERROR (and the partial removed) if a sync failed.
fn pump_commit(
    stream: u32,
    commit: &mut Commit,
    quota: &mut Option<QuotaHold>,
    outbox: &mut Outbox,
    cx: &mut Context<'_>,
    grant: Option<&Grant>,
    record: &mut Record,
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
                        // The access line says it (with who, what and how long).
                        log::debug!("stream {stream}: stored {} bytes", commit.size);
                        record.outcome = Some(Outcome::Ok);
                        if let Some(hold) = quota.take() {
                            hold.commit();
                        }
                        let digest = Digest { hash: commit.hash };
                        replies.reply(
                            FrameType::Digest,
                            stream,
                            Digest::PAYLOAD_LEN as u32,
                            |out| digest.emit(out),
                        );
                    }
                    Err(error) => {
                        // Renamed into place, but perhaps not durable: it counts as stored
                        // (the hold is kept, and committed), since the file is there.
                        if let Some(hold) = quota.take() {
                            hold.commit();
                        }
                        let error = error.on("the upload's directory");
                        record.outcome = Some(Outcome::Error(error.code));
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
                return pump_commit(stream, commit, quota, outbox, cx, grant, record);
            }
            Pumped::Running(true)
        }
        Err(error) => {
            info!("stream {stream}: upload failed: {}", error.text);
            record.outcome = Some(Outcome::Error(error.code));
            outbox.replies(cx.pool, cx.limits).error(
                stream,
                error.code,
                &shown(grant, &error.text),
            );
            Pumped::Finished
        }
    }
}

/// A text for the client, through the connection's grant (which hides its scope).
fn shown<'t>(grant: Option<&Grant>, text: &'t str) -> std::borrow::Cow<'t, str> {
    grant.map_or(std::borrow::Cow::Borrowed(text), |grant| grant.shown(text))
}
