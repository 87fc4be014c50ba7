//! The framed driver: the connection's core. Each drive handles the frames already buffered,
//! runs the open streams, reads (straight into the pool's scratch buffer while no input is
//! held), handles what arrived, and writes; backpressure, the turn's budget and the
//! partial-frame deadline decide when it stops.

use log::debug;

use super::context::{Budget, Context, Fatal, Step, Verdict, after_read, count_read};
use super::{Bits, Connection, SHUTTING_DOWN_TEXT, State, echoes};
use crate::buffer::Buf;
use crate::limits::Limits;
use crate::metrics::RequestKind;
use crate::proto::exec::EndReason;
use crate::proto::{DecodeError, Decoder, ErrorCode, Frame, FrameType, HEADER_LEN, Header};
use crate::timer::Tick;
use crate::transport::{IoState, ReadOutcome, Transport};

/// Smallest read worth making into the room an input buffer has; below it the buffer grows.
const MIN_READ: usize = 4 << 10;

impl Connection {
    /// One turn of the framed protocol; see the module docs.
    pub(super) fn drive_framed<T: Transport>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Verdict {
        let mut waiting_for_bytes;
        loop {
            // Nothing buffered (the start of most drives): no frames to look at.
            let handled = if self.input.is_some() {
                self.handle_frames(io, cx, budget)
            } else {
                Ok(true)
            };
            waiting_for_bytes = match handled {
                Ok(waiting) => waiting,
                Err(fatal) => return self.close_for(fatal, io, cx, budget),
            };
            let pumped = self.pump_streams(cx, budget);
            // At the high-water mark nothing more is produced: make room before anything else.
            let mut room_made = false;
            if !self.outbox.may_produce() {
                if self.flush(io, cx).is_err() {
                    return self.fail();
                }
                room_made = self.outbox.may_produce();
            }
            let frames_left = !waiting_for_bytes && self.pending_input() > 0;
            if frames_left && budget.frames > 0 && self.outbox.may_produce() {
                continue;
            }
            if (pumped || room_made) && self.streams_want_turn(budget.bytes > 0) {
                continue;
            }
            if !self.can_read_now(budget) {
                break;
            }
            let outcome = if self.input.is_some() {
                self.read_input(io, cx, budget)
            } else {
                match self.read_and_handle(io, cx, budget) {
                    Ok(outcome) => outcome,
                    Err(fatal) => return self.close_for(fatal, io, cx, budget),
                }
            };
            match after_read(&mut self.io_state, outcome) {
                Step::Continue => continue,
                Step::Stop => break,
                Step::Fail => return self.fail(),
            }
        }
        if self.io_state.has(IoState::PEER_EOF) && self.open_streams() > 0 {
            // The client will send nothing more — no STDIN, no SIGNAL, no DATA — and a dropped
            // connection looks the same: its commands are stopped, as ssh's are, and its
            // uploads end. GETs and LISTs go on: they need nothing more from the client.
            if let Some(streams) = self.streams.as_mut() {
                streams.release_uploads(cx);
                if streams.commands() > 0 {
                    debug!(
                        "peer closed its side: stopping {} commands",
                        streams.commands()
                    );
                    streams.release_commands(cx, EndReason::Disconnect);
                }
            }
        }
        if self.flush(io, cx).is_err() {
            return self.fail();
        }
        self.track_partial_frame(waiting_for_bytes, cx.limits, cx.now);

        let frames_left = !waiting_for_bytes && self.pending_input() > 0;
        if self.finished_received_work(frames_left) {
            // The output may be large (replies, a transfer's queued DATA): it has the grace
            // period to go, as the shutdown's own timer allows anyway.
            self.begin_close(
                Some((ErrorCode::ShuttingDown, SHUTTING_DOWN_TEXT)),
                cx.limits.shutdown_grace,
                cx,
            );
            return self.drive_closing(io, cx, budget);
        }
        if self.io_state.has(IoState::PEER_EOF)
            && !frames_left
            && self.outbox.is_empty()
            && self.open_streams() == 0
        {
            if self.pending_input() > 0 {
                debug!(
                    "peer closed mid-frame with {} bytes pending",
                    self.pending_input()
                );
            }
            self.set_state(State::Closed);
            return Verdict::Close;
        }
        if (frames_left && self.outbox.may_produce())
            || self.read_pending()
            || self.streams_want_turn(true)
        {
            return Verdict::Again;
        }
        Verdict::Wait
    }

    /// Before authentication a frame is at most the pre-authentication limit, so a partial one
    /// left waiting moves from the pooled buffer into one of that size: a client that never
    /// authenticates pins a few KiB of input, not a pool buffer (the allocation happens only
    /// when such a client stalls mid-frame).
    pub(super) fn shrink_unauthenticated_input(&mut self, cx: &mut Context<'_>) {
        let cap = HEADER_LEN + self.max_payload(cx.limits) as usize;
        if cap >= cx.pool.buffer_len() {
            return;
        }
        let Some(input) = self.input.as_mut() else {
            return;
        };
        // Only a lone partial frame is moved (complete frames left for the next turn are
        // handled soon; they are not a stall).
        if input.capacity() <= cap || input.len() > cap {
            return;
        }
        let mut small = Box::new(Buf::with_capacity(cap));
        small.append(input.data(), cap);
        if let Some(pooled) = self.input.replace(small) {
            cx.pool.give(pooled);
        }
    }

    /// The largest payload a frame may declare now: small until the connection has
    /// authenticated (or a HELLO without credentials was accepted on a server with no token).
    pub(super) fn max_payload(&self, limits: &Limits) -> u32 {
        if self.state == State::Open && self.bits.has(Bits::AUTHENTICATED) {
            limits.max_frame_len
        } else {
            limits.pre_auth_frame_len()
        }
    }

    /// Closes for a fatal error: at once if the socket broke, else through `Closing`, with
    /// the ERROR frame (if any) after the replies already queued.
    fn close_for<T: Transport>(
        &mut self,
        fatal: Fatal,
        io: &mut T,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Verdict {
        debug!("{}: closing: {}", cx.peer.addr, fatal.text);
        if fatal.broken {
            return self.fail();
        }
        let error = fatal.code.map(|code| (code, fatal.text.as_str()));
        self.begin_close(error, cx.limits.linger_timeout, cx);
        self.drive_closing(io, cx, budget)
    }

    /// Handles the complete frames at the head of the input buffer (see
    /// [`Connection::handle_frames_in`]) and consumes them.
    fn handle_frames<T: Transport>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Result<bool, Fatal> {
        let Some(mut input) = self.input.take() else {
            return Ok(true);
        };
        let (used, result) = self.handle_frames_in(io, input.data_mut(), cx, budget);
        input.consume(used);
        self.input = Some(input);
        result
    }

    /// Reads into the pool's scratch buffer while no input buffer is held (the steady state:
    /// each read ends on a frame boundary), handles the complete frames straight from it, and
    /// keeps only what is left — a partial frame, or frames the budget or backpressure held
    /// back — in an input buffer from the pool.
    fn read_and_handle<T: Transport>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Result<ReadOutcome, Fatal> {
        let mut scratch = cx.pool.take_scratch();
        let want = cx.limits.input_cap().min(scratch.len()).min(budget.bytes);
        let outcome = self.io_state.read_once(io, &mut scratch[..want]);
        count_read(&outcome, budget, &mut self.last_active, cx.now);
        let mut result = Ok(outcome);
        if let Ok(ReadOutcome::Data(n)) = result {
            let (used, handled) = self.handle_frames_in(io, &mut scratch[..n], cx, budget);
            if used < n {
                let mut input = cx.pool.take();
                input.append(&scratch[used..n], cx.limits.input_cap());
                self.input = Some(input);
            }
            if let Err(fatal) = handled {
                result = Err(fatal);
            }
        }
        cx.pool.give_scratch(scratch);
        result
    }

    /// Handles the complete frames at the head of `input`, within budget and while the outbox
    /// may take more; echo requests are answered in place where they can be ([`echoes`]),
    /// which rewrites their headers in `input`. Returns the bytes used, and whether it stopped
    /// at an incomplete frame (or the end), i.e. whether more bytes are what it needs.
    fn handle_frames_in<T: Transport>(
        &mut self,
        io: &mut T,
        input: &mut [u8],
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> (usize, Result<bool, Fatal>) {
        let mut run = echoes::EchoRun::default();
        let mut used = 0;
        let handled = self.handle_frames_run(io, input, &mut used, &mut run, cx, budget);
        // The replies in the run go out before anything an error adds.
        let sent = self.send_echoes(io, input, &mut run, cx);
        (used, sent.and(handled))
    }

    fn handle_frames_run<T: Transport>(
        &mut self,
        io: &mut T,
        input: &mut [u8],
        used: &mut usize,
        run: &mut echoes::EchoRun,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Result<bool, Fatal> {
        loop {
            let rest = &input[*used..];
            if rest.is_empty() {
                return Ok(true);
            }
            if budget.frames == 0 || !self.outbox.may_produce() {
                return Ok(false);
            }
            let max = self.max_payload(cx.limits);
            if self.state == State::AwaitingHello {
                self.refuse_tls_client(rest, cx)?;
                // Before HELLO only HELLO is valid: refuse anything else from its header,
                // before a byte of its payload is waited for.
                if let Ok(Some(header)) = Header::parse(rest, max) {
                    if header.frame_type != FrameType::Hello {
                        return Err(Fatal::new(
                            ErrorCode::UnexpectedFrame,
                            format!("expected HELLO first, got {}", header.frame_type),
                        ));
                    }
                }
            }
            let frame = match Decoder::new(max).decode(rest) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(true),
                Err(error) => {
                    let code = match error {
                        DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
                        DecodeError::UnknownFlags(_) | DecodeError::ReservedNonZero(_) => {
                            ErrorCode::MalformedFrame
                        }
                    };
                    return Err(Fatal::new(code, error.to_string()));
                }
            };
            budget.frames -= 1;
            self.phase_deadline = Tick::NEVER;
            let header = frame.header;
            let at = *used;
            *used += header.wire_len();
            if header.frame_type == FrameType::EchoRequest
                && self.echo_in_place(&header, input, at, run)
            {
                // Counted like the echoes `dispatch` answers (one add, no line: see
                // `crate::metrics::access`).
                cx.count(|metrics| metrics.request(RequestKind::Echo));
                continue;
            }
            self.send_echoes(io, input, run, cx)?;
            let frame = Frame {
                header,
                payload: &input[at + HEADER_LEN..*used],
            };
            if let Err(fatal) = self.dispatch(frame, cx) {
                *used = at; // not consumed, as before the handlers saw it
                return Err(fatal);
            }
        }
    }

    /// Reads more into the input buffer held (a frame continues, or frames wait).
    fn read_input<T: Transport>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> ReadOutcome {
        let mut input = self.input.take().unwrap_or_else(|| cx.pool.take());
        // Grow only as bytes arrive: one pool buffer's worth at a time, never past one maximal
        // frame. A header announcing 1 MiB reserves nothing until the bytes come. (A full
        // buffer holds a complete frame, so `room` is zero only while frames wait to be handled.)
        let cap = cx.limits.input_cap();
        let room = cap.saturating_sub(input.len());
        let mut want = room.min(cx.pool.buffer_len()).min(budget.bytes);
        // Read into the room the buffer already has while that is a useful amount: a partial
        // frame left at the head must not make a pooled buffer grow (a grown buffer is freed
        // instead of reused). A frame larger than the buffer still grows it as it arrives.
        let free = input.capacity() - input.len();
        if free >= MIN_READ {
            want = want.min(free);
        }
        let outcome = if want == 0 {
            ReadOutcome::Drained
        } else {
            input.reserve(want, cap);
            let spare = input.spare();
            let want = want.min(spare.len());
            let outcome = self.io_state.read_once(io, &mut spare[..want]);
            if let ReadOutcome::Data(n) = outcome {
                input.commit(n);
            }
            outcome
        };
        self.input = Some(input);
        count_read(&outcome, budget, &mut self.last_active, cx.now);
        outcome
    }

    fn track_partial_frame(&mut self, waiting_for_bytes: bool, limits: &Limits, now: Tick) {
        if self.state != State::Open {
            return; // the hello deadline set at accept stands until HELLO is handled
        }
        if waiting_for_bytes && self.pending_input() > 0 {
            if self.phase_deadline == Tick::NEVER {
                self.phase_deadline = now.after(limits.frame_timeout);
            }
        } else {
            self.phase_deadline = Tick::NEVER;
        }
    }

    /// Runs the open streams' I/O within the budget; returns whether anything moved.
    #[inline]
    fn pump_streams(&mut self, cx: &mut Context<'_>, budget: &mut Budget) -> bool {
        // Inlined test, out-of-line work: most drives (every echo) have no streams.
        self.streams.is_some() && self.pump_open_streams(cx, budget)
    }

    fn pump_open_streams(&mut self, cx: &mut Context<'_>, budget: &mut Budget) -> bool {
        let Some(streams) = self.streams.as_mut() else {
            return false;
        };
        let progress = streams.pump(&mut self.outbox, cx, budget);
        if streams.is_finished(cx.turn) {
            self.streams = None;
        }
        progress
    }

    /// Whether a stream has work that needs no new readiness event.
    fn streams_want_turn(&self, bytes_left: bool) -> bool {
        self.streams
            .as_ref()
            .is_some_and(|streams| streams.wants_turn(self.outbox.may_produce(), bytes_left))
    }
}
