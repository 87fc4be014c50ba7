//! A download on its stream: the table entry for a GET ([`Get`]), and each turn's disk work for
//! it — DATA ranges queued (sent later with `sendfile`), the hash computed alongside if the
//! cache had none, and the DIGEST once every range has left.

use std::fs::File;
use std::sync::Arc;

use log::debug;

use crate::conn::context::{Budget, Context, Pumped};
use crate::metrics::access::{Outcome, Record};
use crate::outbox::{FileRange, Outbox, Replies};
use crate::proto::files::{DATA_FRAME_LEN, Digest, FileInfo, GetRequest};
use crate::proto::{ErrorCode, Flags, FrameType};
use crate::service::disk::{Disk, FileError, FileMeta, TransferPermit};
use crate::service::files::GetTransfer;
use crate::timer::WallClock;

/// A GET in progress: the table entry.
#[derive(Debug)]
pub(crate) struct Get {
    /// The state machine: what is left to send and to hash.
    transfer: GetTransfer,
    /// The open file, shared with queued DATA ranges.
    file: Arc<File>,
    /// The file's metadata at open (a computed hash is cached only if it still holds).
    meta: FileMeta,
    /// When it was opened (the loop's wall clock): the time a computed hash is valid as of.
    opened: WallClock,
    /// Its place in the server's transfer limit.
    permit: TransferPermit,
}

impl Get {
    /// Opens the file `request` names and queues its FILE_INFO on `stream`. On failure the
    /// permit goes back and nothing is queued (the caller sends the ERROR).
    pub(crate) fn open(
        stream: u32,
        request: &GetRequest<'_>,
        permit: TransferPermit,
        disk: &mut dyn Disk,
        replies: &mut Replies<'_>,
        now: WallClock,
    ) -> Result<Get, FileError> {
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
        let opened = match opened {
            Ok(opened) => opened,
            Err(error) => {
                disk.end_transfer(permit);
                return Err(error);
            }
        };
        let info = opened.meta.info(opened.hash);
        let mode = opened.mode;
        replies.part(
            FrameType::FileInfo,
            stream,
            FileInfo::WITH_MODE_LEN as u32,
            |out| {
                info.emit(out);
                FileInfo::emit_mode(mode, out);
            },
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
        Ok(Get {
            transfer: GetTransfer::new(opened.meta.size, request.offset, opened.hash),
            file: opened.file,
            meta: opened.meta,
            opened: now,
            permit,
        })
    }

    /// Whether it has work that needs no new readiness event.
    pub(crate) fn wants_turn(&self, may_produce: bool) -> bool {
        self.transfer.hash_wanted().is_some()
            // Done, and its last DATA range has left the outbox: the DIGEST (or the ERROR) is
            // due. While ranges wait, the socket's writable edge brings the next turn.
            || (self.transfer.is_done() && Arc::strong_count(&self.file) == 1)
            || (may_produce && self.transfer.next_range(1).is_some())
    }

    /// The GET is over, however it ended: its place among the server's transfers goes back.
    /// Its file closes once its last range has left the outbox.
    pub(crate) fn end(self, disk: &mut dyn Disk) {
        disk.end_transfer(self.permit);
    }

    /// Queues DATA ranges while the outbox may take more and hashes what the hash still
    /// needs, within the turn's disk budget; once every range has left the outbox, the
    /// DIGEST (or an ERROR if the file changed).
    pub(crate) fn pump(
        &mut self,
        stream: u32,
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
        budget: &mut Budget,
        record: &mut Record,
    ) -> Pumped {
        let Get {
            transfer: get,
            file,
            meta,
            opened,
            ..
        } = self;
        let opened = *opened;
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
                    record.bytes_out += len;
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
                    record.outcome = Some(Outcome::Error(ErrorCode::IoFailed));
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
            record.outcome = Some(Outcome::Error(ErrorCode::IoFailed));
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
}
