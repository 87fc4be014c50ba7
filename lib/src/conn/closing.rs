//! The lingering close: write what is pending, shut the write side, then read and discard
//! until the peer closes or the linger deadline passes, so that the peer sees our FIN after the
//! last bytes rather than a reset that may destroy them.

use log::debug;

use super::context::{Budget, Context, Verdict, count_read};
use super::{Connection, State};
use crate::transport::{IoState, ReadOutcome, Transport};

impl Connection {
    /// One turn of the close: flush, shut the write side once everything is out, then
    /// discard what the peer still sends until its EOF.
    pub(super) fn drive_closing<T: Transport>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Verdict {
        if self.flush(io, cx).is_err() {
            return self.fail();
        }
        if !self.outbox.is_empty() {
            return Verdict::Wait;
        }
        if self.io_state.has(IoState::PEER_EOF) {
            self.set_state(State::Closed);
            return Verdict::Close;
        }
        if !self.io_state.has(IoState::WRITE_SHUT) {
            self.io_state.set(IoState::WRITE_SHUT, true);
            if let Err(error) = io.shutdown_write() {
                debug!("shutdown failed: {error}");
                return self.fail();
            }
        }
        // Linger: read and discard until the peer closes, so it sees our FIN after the last
        // bytes rather than a reset that may discard them.
        let mut discard = cx.pool.take();
        let mut verdict = Verdict::Wait;
        while self.io_state.has(IoState::READ_READY) {
            if budget.bytes == 0 {
                verdict = Verdict::Again;
                break;
            }
            let want = discard.capacity().min(budget.bytes);
            let outcome = self.io_state.read_once(io, &mut discard.spare()[..want]);
            count_read(&outcome, budget, &mut self.last_active, cx.now);
            match outcome {
                ReadOutcome::Data(_) => {}
                ReadOutcome::Drained => break,
                ReadOutcome::Eof | ReadOutcome::Failed(_) => {
                    self.set_state(State::Closed);
                    verdict = Verdict::Close;
                    break;
                }
            }
        }
        cx.pool.give(discard);
        verdict
    }

    /// Waiting for the peer's EOF after our FIN: the socket must stay readable, whatever
    /// else the connection wants.
    pub(super) fn lingering(&self) -> bool {
        self.state == State::Closing && self.io_state.has(IoState::WRITE_SHUT)
    }
}
