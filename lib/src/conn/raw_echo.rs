//! The raw echo (RFC 862): every byte read goes back, nothing else is ever sent.
//!
//! [`RawEcho`] is the part of a [`Connection`](super::Connection) the raw echo uses, borrowed
//! for one drive: what it knows of the transport, the outbox and the activity clock. No frame,
//! stream or protocol state is in reach, and once the echo is done the connection goes on to
//! the same lingering close as a framed one.

use std::io;

use log::debug;

use super::context::{Budget, Context, Step, Verdict, after_read, count_read};
use crate::outbox::Outbox;
use crate::timer::Tick;
use crate::transport::{IoState, ReadOutcome, Transport};

/// A raw echo connection's transport-facing parts, borrowed for one drive.
pub(super) struct RawEcho<'c> {
    pub(super) io_state: &'c mut IoState,
    pub(super) outbox: &'c mut Outbox,
    pub(super) last_active: &'c mut Tick,
}

impl RawEcho<'_> {
    /// Echoes what readiness and the turn's budget allow. `Close` once the peer has closed and
    /// everything has gone back, or when the transport failed.
    pub(super) fn drive<T: Transport>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Verdict {
        loop {
            if self.flush(io, cx).is_err() {
                return Verdict::Close;
            }
            if !self.read_pending() || budget.bytes == 0 {
                break;
            }
            let outcome = if self.outbox.is_empty() && self.io_state.has(IoState::WRITE_READY) {
                match self.echo_direct(io, cx, budget) {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        debug!("write failed: {error}");
                        return Verdict::Close;
                    }
                }
            } else {
                self.echo_queued(io, cx, budget)
            };
            match after_read(self.io_state, outcome) {
                Step::Continue => continue,
                Step::Stop => break,
                Step::Fail => return Verdict::Close,
            }
        }
        if self.io_state.has(IoState::PEER_EOF) && self.outbox.is_empty() {
            return Verdict::Close;
        }
        if self.read_pending() {
            Verdict::Again
        } else {
            Verdict::Wait
        }
    }

    /// The transport may have bytes, the peer has not closed, and the outbox may take more
    /// (the backpressure question): only the budget can stop a read.
    fn read_pending(&self) -> bool {
        self.io_state.has(IoState::READ_READY)
            && !self.io_state.has(IoState::PEER_EOF)
            && self.outbox.may_produce()
    }

    /// The echo while nothing is queued and the socket takes bytes (the steady state): read
    /// into the pool's scratch buffer and write it straight back, as a C echo loop does. Only
    /// what the socket does not take is copied into the outbox, whose backpressure then
    /// governs reading. A write error comes back as the `Err`.
    fn echo_direct<T: Transport>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> io::Result<ReadOutcome> {
        let mut scratch = cx.pool.take_scratch();
        let want = scratch.len().min(budget.bytes);
        let outcome = self.io_state.read_once(io, &mut scratch[..want]);
        count_read(&outcome, budget, self.last_active, cx.now);
        let result = match outcome {
            ReadOutcome::Data(n) => match self.io_state.write_once(io, &scratch[..n]) {
                Ok(sent) => {
                    if sent < n {
                        self.outbox
                            .replies(cx.pool, cx.limits)
                            .raw(&scratch[sent..n]);
                    }
                    Ok(outcome)
                }
                Err(error) => Err(error),
            },
            other => Ok(other),
        };
        cx.pool.give_scratch(scratch);
        result
    }

    /// The echo behind queued output: bytes read go straight into the outbox, after whatever
    /// is still waiting to be written. Backpressure stops reading at the high-water mark, so
    /// one read past it is the most the buffer holds.
    fn echo_queued<T: Transport>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> ReadOutcome {
        let want = cx.pool.buffer_len().min(budget.bytes);
        let max_capacity = cx.limits.output_high_water + cx.pool.buffer_len();
        let io_state = &mut *self.io_state;
        let mut outcome = ReadOutcome::Drained;
        let _ = self
            .outbox
            .replies(cx.pool, cx.limits)
            .raw_from(want, max_capacity, |spare| {
                outcome = io_state.read_once(io, spare);
                Ok(match outcome {
                    ReadOutcome::Data(n) => n,
                    _ => 0,
                })
            });
        count_read(&outcome, budget, self.last_active, cx.now);
        outcome
    }

    /// Writes pending output until it is gone or the transport is full ([`Outbox::flush`]).
    fn flush<T: Transport>(&mut self, io: &mut T, cx: &Context<'_>) -> io::Result<()> {
        if self.outbox.flush(io, self.io_state, cx.limits)? {
            *self.last_active = cx.now;
        }
        Ok(())
    }
}
