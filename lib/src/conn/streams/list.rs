//! A directory listing on its stream: the table entry for a LIST ([`List`]), and each turn's
//! pages of ENTRIES, each entry charged to the disk budget (its `stat` may read an inode).

use crate::access::Grant;
use crate::conn::context::{Budget, Context, Pumped};
use crate::metrics::access::{Outcome, Record};
use crate::outbox::Outbox;
use crate::proto::FrameType;
use crate::proto::files::LIST_PAGE_LEN;
use crate::service::disk::{Disk, FileError, TransferPermit};
use crate::service::files::ListTransfer;

/// What one listed entry costs from the disk budget: its `stat` may read an inode block.
const ENTRY_COST: usize = 4 << 10;

/// A LIST in progress: the table entry.
#[derive(Debug)]
pub(crate) struct List {
    /// The directory being read.
    transfer: ListTransfer,
    /// Its place in the server's transfer limit.
    permit: TransferPermit,
}

impl List {
    /// Opens the directory at `path`. On failure the permit goes back (the caller sends the
    /// ERROR).
    pub(crate) fn open(
        path: &str,
        permit: TransferPermit,
        disk: &mut dyn Disk,
    ) -> Result<List, FileError> {
        match disk.open_listing(path) {
            Ok(listing) => Ok(List {
                transfer: ListTransfer::new(listing, path),
                permit,
            }),
            Err(error) => {
                disk.end_transfer(permit);
                Err(error)
            }
        }
    }

    /// The next page of entries, if the outbox may take it and the disk budget lasts; the last
    /// page ends the stream. An error's text is shown through the connection's `grant`.
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
        if !outbox.may_produce() || budget.disk == 0 {
            return Pumped::Running(false);
        }
        let max_entries = (budget.disk / ENTRY_COST).max(1);
        let mut page = Vec::new();
        // Every frame the server sends fits the payload limit it announced.
        let page_len = LIST_PAGE_LEN.min(cx.limits.max_frame_len as usize);
        let finished = match self
            .transfer
            .next_page(disk, &mut page, page_len, max_entries)
        {
            Ok(finished) => finished,
            Err(error) => {
                let text =
                    grant.map_or(error.text.as_str().into(), |grant| grant.shown(&error.text));
                outbox
                    .replies(cx.pool, cx.limits)
                    .error(stream, error.code, &text);
                record.outcome = Some(Outcome::Error(error.code));
                return Pumped::Finished;
            }
        };
        // Charged for every entry it may have read, shown or not.
        budget.disk = budget.disk.saturating_sub(max_entries * ENTRY_COST);
        record.bytes_out += page.len() as u64;
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

    /// The LIST is over, however it ended: the directory closes and its place among the
    /// server's transfers goes back.
    pub(crate) fn end(self, disk: &mut dyn Disk) {
        disk.close_listing(self.transfer.listing());
        disk.end_transfer(self.permit);
    }
}
