//! One TCP connection's state machine, independent of the poll.
//!
//! A [`Connection`] owns its buffers and protocol state but not its socket: [`Connection::drive`]
//! takes any [`Stream`] (a `mio` socket in the server, a
//! [`ScriptedIo`](crate::testkit::ScriptedIo) in tests), does all the work that readiness and
//! this turn's budget allow, and says what the caller must do next ([`Verdict`]). It never reads
//! the clock: the caller passes `now` in [`Context`].
//!
//! # Call order
//! 1. After `poll` reports the socket: [`Connection::on_ready`] with what it reported.
//! 2. [`Connection::drive`]; act on the [`Verdict`] (wait, queue for the next turn, close).
//! 3. Re-register the socket if [`Connection::interest`] changed; re-arm the timer from
//!    [`Connection::deadline`].
//! 4. When the deadline passes: [`Connection::on_deadline`], then `drive` again.
//!
//! # States
//! ```text
//!  framed:  AwaitingHello --HELLO--> Open --fatal error / timeout / shutdown--> Closing --> Closed
//!  raw:     Echoing ------------------------------EOF / timeout / shutdown----> Closing --> Closed
//! ```
//! `Closing` writes what is pending (an error frame, the last replies), shuts the write side,
//! then reads and discards until the peer closes or the linger deadline passes, so the last
//! bytes are not destroyed by a reset.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use log::{debug, trace};
use mio::Interest;

use crate::buffer::{Buf, BufferPool};
use crate::limits::Limits;
use crate::proto::message::MIN_PROTOCOL_VERSION;
use crate::proto::{
    DecodeError, Decoder, ErrorCode, ErrorMessage, Flags, Frame, FrameType, HEADER_LEN, Header,
    Hello, HelloOk, PROTOCOL_VERSION,
};
use crate::service::echo;
use crate::timer::Tick;

/// What a connection needs from its transport: bytes both ways, and closing the write half.
pub trait Stream: Read + Write {
    /// Sends FIN after the pending bytes (`shutdown(SHUT_WR)`).
    fn shutdown_write(&mut self) -> io::Result<()>;
}

impl Stream for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Which protocol a connection speaks, fixed by the listener that accepted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Length-prefixed frames (`docs/PROTOCOL.md`).
    Framed,
    /// RFC 862 echo: every byte comes back, nothing else is sent.
    RawEcho,
}

/// Where a connection is in its life; see the module docs for the transitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Framed: waiting for the client's HELLO.
    AwaitingHello,
    /// Framed: version agreed; serving requests.
    Open,
    /// Raw echo: writing back every byte read.
    Echoing,
    /// Flushing the last output, then waiting for the peer to close; input is discarded.
    Closing,
    /// Finished: the caller should close the socket.
    Closed,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            State::AwaitingHello => "awaiting-hello",
            State::Open => "open",
            State::Echoing => "echoing",
            State::Closing => "closing",
            State::Closed => "closed",
        };
        f.write_str(name)
    }
}

/// What the caller should do after [`Connection::drive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing more can happen until the socket becomes ready again or a deadline passes.
    Wait,
    /// The turn's budget ran out with work left: drive again on the next turn, without waiting
    /// for readiness (an edge-triggered poll will not report it again).
    Again,
    /// Close the socket.
    Close,
}

/// What [`Connection::drive`] borrows from the loop: the buffer pool, the limits, and the time.
#[derive(Debug)]
pub struct Context<'a> {
    /// Where buffers come from and go back to.
    pub pool: &'a mut BufferPool,
    /// The limits in force.
    pub limits: &'a Limits,
    /// The loop's current time.
    pub now: Tick,
}

/// Readiness hints and sticky conditions, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bits(u8);

impl Bits {
    /// The socket may have bytes to read (cleared by `WouldBlock` or a short read).
    const READ_READY: u8 = 1 << 0;
    /// The socket may accept bytes (cleared by `WouldBlock` or a short write).
    const WRITE_READY: u8 = 1 << 1;
    /// A read returned 0: the peer will send nothing more.
    const PEER_EOF: u8 = 1 << 2;
    /// Output passed the high-water mark: reading is paused until it falls to the low-water mark.
    const BACKPRESSURE: u8 = 1 << 3;
    /// `shutdown(SHUT_WR)` was done.
    const WRITE_SHUT: u8 = 1 << 4;
    /// The poll reported the peer's FIN (or an error) with the bytes before it. Its edge is
    /// spent, so a short read no longer proves the socket drained: read on until 0 or an error.
    const READ_CLOSED: u8 = 1 << 5;

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// Per-turn allowance, so one busy connection cannot starve the rest.
#[derive(Debug)]
struct Budget {
    bytes: usize,
    frames: usize,
}

enum ReadOutcome {
    /// Some bytes were read.
    Data,
    /// Nothing to read now.
    Drained,
    /// The peer closed its side.
    Eof,
    /// The connection failed.
    Failed(io::Error),
}

/// Why a framed connection must close: the ERROR frame to send first (none when the client
/// itself reported an error), and the text for the log.
struct Fatal {
    code: Option<ErrorCode>,
    text: String,
}

impl Fatal {
    fn new(code: ErrorCode, text: impl Into<String>) -> Fatal {
        Fatal {
            code: Some(code),
            text: text.into(),
        }
    }

    fn quiet(text: impl Into<String>) -> Fatal {
        Fatal {
            code: None,
            text: text.into(),
        }
    }
}

/// Where frame handlers put replies: the connection's output buffer, taken from the pool on
/// first use.
#[derive(Debug)]
pub struct Replies<'a> {
    out: &'a mut Option<Box<Buf>>,
    pool: &'a mut BufferPool,
    /// The output buffer's largest capacity: the high-water mark plus one maximal reply, the
    /// most that backpressure lets accumulate.
    max_capacity: usize,
}

impl<'a> Replies<'a> {
    fn new(
        out: &'a mut Option<Box<Buf>>,
        pool: &'a mut BufferPool,
        limits: &Limits,
    ) -> Replies<'a> {
        Replies {
            out,
            pool,
            max_capacity: limits.output_high_water + limits.input_cap(),
        }
    }
}

impl Replies<'_> {
    /// Appends a frame that ends its stream, with a `len`-byte payload written by `emit` straight
    /// into the output buffer.
    pub fn frame_with(
        &mut self,
        frame_type: FrameType,
        stream: u32,
        len: u32,
        emit: impl FnOnce(&mut [u8]),
    ) {
        let header = Header {
            frame_type,
            flags: Flags::END_STREAM,
            stream,
            len,
        };
        let out = self.out.get_or_insert_with(|| self.pool.take());
        out.append_with(header.wire_len(), self.max_capacity, |bytes| {
            header.emit(&mut bytes[..HEADER_LEN]);
            emit(&mut bytes[HEADER_LEN..]);
        });
    }

    /// Appends an ERROR frame about `stream` (0 = the connection).
    pub fn error(&mut self, stream: u32, code: ErrorCode, text: &str) {
        let message = ErrorMessage::new(code, text);
        // At most 2 + MAX_ERROR_TEXT_LEN bytes: the cast cannot truncate.
        let len = message.payload_len() as u32;
        self.frame_with(FrameType::Error, stream, len, |out| message.emit(out));
    }
}

/// One connection's protocol state and buffers. See the module docs for the call order.
#[derive(Debug)]
pub struct Connection {
    state: State,
    bits: Bits,
    /// Bytes read but not yet handled (framed only); `None` while empty.
    input: Option<Box<Buf>>,
    /// Bytes to write (replies, or the raw echo); `None` while empty.
    output: Option<Box<Buf>>,
    /// Last time bytes moved in either direction.
    last_active: Tick,
    /// A deadline earlier than the idle one: for HELLO (accept plus the hello timeout), for the
    /// incomplete frame at the head of `input` (its first byte's arrival plus the frame timeout),
    /// or, in `Closing`, for the whole close. [`Tick::NEVER`] when none applies.
    phase_deadline: Tick,
}

impl Connection {
    /// A new connection accepted at `now`. Both readiness hints start set: a fresh socket may
    /// already hold bytes, and its send buffer is empty.
    pub fn new(protocol: Protocol, now: Tick, limits: &Limits) -> Connection {
        // A framed client must finish its HELLO within the hello timeout; until it does, that
        // deadline stands in for the frame deadline.
        let (state, phase_deadline) = match protocol {
            Protocol::Framed => (State::AwaitingHello, now.after(limits.hello_timeout)),
            Protocol::RawEcho => (State::Echoing, Tick::NEVER),
        };
        Connection {
            state,
            bits: Bits(Bits::READ_READY | Bits::WRITE_READY),
            input: None,
            output: None,
            last_active: now,
            phase_deadline,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes waiting to be written.
    pub fn pending_output(&self) -> usize {
        self.output.as_ref().map_or(0, |buf| buf.len())
    }

    /// Bytes read but not yet handled.
    pub fn pending_input(&self) -> usize {
        self.input.as_ref().map_or(0, |buf| buf.len())
    }

    /// Bytes of buffer memory the connection holds (capacity, not content).
    pub fn buffer_capacity(&self) -> usize {
        [&self.input, &self.output]
            .into_iter()
            .flatten()
            .map(|buf| buf.capacity())
            .sum()
    }

    /// Whether the connection holds any buffer (an idle one holds none).
    pub fn holds_buffers(&self) -> bool {
        self.input.is_some() || self.output.is_some()
    }

    /// Records readiness reported by the poll. Errors and hang-ups should be passed as both:
    /// the next read or write then reports the condition precisely.
    pub fn on_ready(&mut self, readable: bool, writable: bool) {
        if readable {
            self.bits.set(Bits::READ_READY, true);
        }
        if writable {
            self.bits.set(Bits::WRITE_READY, true);
        }
    }

    /// Records that the poll reported the read side closed (the peer's FIN, `EPOLLRDHUP`) or an
    /// error. Data and FIN that arrive together produce one edge; after it, the connection reads
    /// until a read returns 0 instead of trusting a short read to mean "drained", which would
    /// leave the EOF unseen until the idle timeout.
    pub fn on_read_closed(&mut self) {
        self.bits.set(Bits::READ_READY, true);
        self.bits.set(Bits::READ_CLOSED, true);
    }

    /// The poll interest the connection needs now. Derived from state each time, never tracked
    /// separately, so it cannot drift; the caller re-registers only when it differs from what
    /// is registered.
    pub fn interest(&self) -> Interest {
        let read = self.may_read() || self.lingering();
        let write = self.pending_output() > 0;
        match (read, write) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (false, true) => Interest::WRITABLE,
            _ => Interest::READABLE,
        }
    }

    /// When [`Connection::on_deadline`] must be called: the idle deadline, or sooner if HELLO is
    /// still awaited, a frame is half-received, or the connection is closing.
    pub fn deadline(&self, limits: &Limits) -> Tick {
        if self.state == State::Closing {
            return self.phase_deadline;
        }
        self.last_active
            .after(limits.idle_timeout)
            .min(self.phase_deadline)
    }

    /// Handles a passed deadline: a framed connection is told `TIMEOUT` and starts closing; any
    /// other closes at once. Call [`Connection::drive`] afterwards to send the error.
    pub fn on_deadline(&mut self, cx: &mut Context<'_>) {
        match self.state {
            State::AwaitingHello | State::Open => {
                let idle_deadline = self.last_active.after(cx.limits.idle_timeout);
                let text = if cx.now >= idle_deadline {
                    format!("no activity for {:?}", cx.limits.idle_timeout)
                } else if self.state == State::AwaitingHello {
                    format!("no HELLO within {:?}", cx.limits.hello_timeout)
                } else {
                    format!("frame not completed within {:?}", cx.limits.frame_timeout)
                };
                debug!("timeout: {text}");
                self.begin_close(
                    Some((ErrorCode::Timeout, &text)),
                    cx.limits.linger_timeout,
                    cx,
                );
            }
            State::Echoing | State::Closing | State::Closed => self.set_state(State::Closed),
        }
    }

    /// Starts an orderly close that takes at most `within`: queue `error` (framed connections
    /// only), stop handling input, flush, shut the write side, wait for the peer's EOF. Does
    /// nothing if already closing.
    pub fn begin_close(
        &mut self,
        error: Option<(ErrorCode, &str)>,
        within: Duration,
        cx: &mut Context<'_>,
    ) {
        if matches!(self.state, State::Closing | State::Closed) {
            return;
        }
        if let (Some((code, text)), State::AwaitingHello | State::Open) = (error, self.state) {
            Replies::new(&mut self.output, cx.pool, cx.limits).error(0, code, text);
        }
        if let Some(input) = self.input.take() {
            cx.pool.give(input);
        }
        self.phase_deadline = cx.now.after(within);
        self.set_state(State::Closing);
    }

    /// Returns the connection's buffers to the pool; call once, when the socket is closed.
    pub fn release(&mut self, pool: &mut BufferPool) {
        for buf in [self.input.take(), self.output.take()]
            .into_iter()
            .flatten()
        {
            pool.give(buf);
        }
        self.set_state(State::Closed);
    }

    /// Does everything readiness and the turn's budget allow: read, handle frames, write.
    pub fn drive<S: Stream>(&mut self, io: &mut S, cx: &mut Context<'_>) -> Verdict {
        let mut budget = Budget {
            bytes: cx.limits.read_budget,
            frames: cx.limits.frame_budget,
        };
        let verdict = match self.state {
            State::AwaitingHello | State::Open => self.drive_framed(io, cx, &mut budget),
            State::Echoing => self.drive_echo(io, cx, &mut budget),
            State::Closing => self.drive_closing(io, cx, &mut budget),
            State::Closed => Verdict::Close,
        };
        cx.pool.give_if_empty(&mut self.input);
        cx.pool.give_if_empty(&mut self.output);
        verdict
    }

    // === Framed ===

    fn drive_framed<S: Stream>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Verdict {
        let mut waiting_for_bytes;
        loop {
            waiting_for_bytes = match self.handle_frames(cx, budget) {
                Ok(waiting) => waiting,
                Err(fatal) => {
                    debug!("closing: {}", fatal.text);
                    let error = fatal.code.map(|code| (code, fatal.text.as_str()));
                    self.begin_close(error, cx.limits.linger_timeout, cx);
                    return self.drive_closing(io, cx, budget);
                }
            };
            if self.pending_output() >= cx.limits.output_high_water
                && self.flush(io, cx.now).is_err()
            {
                return self.fail();
            }
            self.update_backpressure(cx.limits);
            // Frames paused at the high-water mark can go on now that the output drained.
            let frames_left = !waiting_for_bytes && self.pending_input() > 0;
            if frames_left
                && budget.frames > 0
                && self.pending_output() < cx.limits.output_high_water
            {
                continue;
            }
            if !self.can_read_now(budget) {
                break;
            }
            match self.read_input(io, cx, budget) {
                ReadOutcome::Data => continue,
                ReadOutcome::Drained => break,
                ReadOutcome::Eof => {
                    self.bits.set(Bits::PEER_EOF, true);
                    break;
                }
                ReadOutcome::Failed(error) => {
                    debug!("read failed: {error}");
                    return self.fail();
                }
            }
        }
        if self.flush(io, cx.now).is_err() {
            return self.fail();
        }
        self.update_backpressure(cx.limits);
        self.track_partial_frame(waiting_for_bytes, cx.limits, cx.now);

        let frames_left = !waiting_for_bytes && self.pending_input() > 0;
        if self.bits.has(Bits::PEER_EOF) && !frames_left && self.pending_output() == 0 {
            if self.pending_input() > 0 {
                debug!(
                    "peer closed mid-frame with {} bytes pending",
                    self.pending_input()
                );
            }
            self.set_state(State::Closed);
            return Verdict::Close;
        }
        let room_for_replies = !self.bits.has(Bits::BACKPRESSURE);
        if (frames_left && room_for_replies) || self.read_pending() {
            return Verdict::Again;
        }
        Verdict::Wait
    }

    /// Handles the complete frames at the head of the input, within budget and while output
    /// is below the high-water mark. Returns whether it stopped at an incomplete frame (or an
    /// empty buffer), i.e. whether more bytes are what it needs.
    fn handle_frames(&mut self, cx: &mut Context<'_>, budget: &mut Budget) -> Result<bool, Fatal> {
        let Some(input) = self.input.as_mut() else {
            return Ok(true);
        };
        let decoder = Decoder::new(cx.limits.max_frame_len);
        let mut replies = Replies::new(&mut self.output, cx.pool, cx.limits);
        loop {
            let pending_output = replies.out.as_ref().map_or(0, |buf| buf.len());
            if budget.frames == 0 || pending_output >= cx.limits.output_high_water {
                return Ok(input.is_empty());
            }
            let frame = match decoder.decode(input.data()) {
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
            let len = frame.wire_len();
            let next_state = dispatch(self.state, frame, &mut replies, cx.limits)?;
            input.consume(len);
            transition(&mut self.state, next_state);
        }
    }

    fn read_input<S: Stream>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> ReadOutcome {
        let mut input = self.input.take().unwrap_or_else(|| cx.pool.take());
        // Grow only as bytes arrive: one pool buffer's worth at a time, never past one maximal
        // frame. A header announcing 1 MiB reserves nothing until the bytes come. (A full
        // buffer holds a complete frame, so `room` is zero only while frames wait to be handled.)
        let room = cx.limits.input_cap().saturating_sub(input.len());
        let want = room.min(cx.pool.buffer_len()).min(budget.bytes);
        let outcome = if want == 0 {
            ReadOutcome::Drained
        } else {
            input.reserve(want, cx.limits.input_cap());
            self.read_into(io, &mut input, want, budget, cx.now)
        };
        self.input = Some(input);
        outcome
    }

    fn track_partial_frame(&mut self, waiting_for_bytes: bool, limits: &Limits, now: Tick) {
        if self.state == State::AwaitingHello {
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

    // === Raw echo ===

    fn drive_echo<S: Stream>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Verdict {
        loop {
            if self.flush(io, cx.now).is_err() {
                return self.fail();
            }
            self.update_backpressure(cx.limits);
            if !self.can_read_now(budget) {
                break;
            }
            // Bytes read are output at once: read straight into the output buffer, after
            // whatever is still waiting to be written.
            let mut out = self.output.take().unwrap_or_else(|| cx.pool.take());
            let want = cx.pool.buffer_len().min(budget.bytes);
            // Backpressure stops reading at the high-water mark, so one read past it is the most
            // this buffer holds.
            out.reserve(want, cx.limits.output_high_water + cx.pool.buffer_len());
            let outcome = self.read_into(io, &mut out, want, budget, cx.now);
            self.output = Some(out);
            match outcome {
                ReadOutcome::Data => continue,
                ReadOutcome::Drained => break,
                ReadOutcome::Eof => {
                    self.bits.set(Bits::PEER_EOF, true);
                    break;
                }
                ReadOutcome::Failed(error) => {
                    debug!("read failed: {error}");
                    return self.fail();
                }
            }
        }
        if self.bits.has(Bits::PEER_EOF) && self.pending_output() == 0 {
            self.set_state(State::Closed);
            return Verdict::Close;
        }
        if self.read_pending() {
            Verdict::Again
        } else {
            Verdict::Wait
        }
    }

    // === Closing ===

    fn drive_closing<S: Stream>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Verdict {
        if self.flush(io, cx.now).is_err() {
            return self.fail();
        }
        if self.pending_output() > 0 {
            return Verdict::Wait;
        }
        if self.bits.has(Bits::PEER_EOF) {
            self.set_state(State::Closed);
            return Verdict::Close;
        }
        if !self.bits.has(Bits::WRITE_SHUT) {
            self.bits.set(Bits::WRITE_SHUT, true);
            if let Err(error) = io.shutdown_write() {
                debug!("shutdown failed: {error}");
                return self.fail();
            }
        }
        // Linger: read and discard until the peer closes, so it sees our FIN after the last
        // bytes rather than a reset that may discard them.
        let mut scratch = cx.pool.take();
        let mut verdict = Verdict::Wait;
        while self.bits.has(Bits::READ_READY) {
            if budget.bytes == 0 {
                verdict = Verdict::Again;
                break;
            }
            let want = scratch.capacity().min(budget.bytes);
            match self.read_into(io, &mut scratch, want, budget, cx.now) {
                ReadOutcome::Data => scratch.consume(scratch.len()),
                ReadOutcome::Drained => break,
                ReadOutcome::Eof | ReadOutcome::Failed(_) => {
                    self.set_state(State::Closed);
                    verdict = Verdict::Close;
                    break;
                }
            }
        }
        cx.pool.give(scratch);
        verdict
    }

    fn lingering(&self) -> bool {
        self.state == State::Closing && self.bits.has(Bits::WRITE_SHUT)
    }

    // === Shared ===

    fn may_read(&self) -> bool {
        matches!(
            self.state,
            State::AwaitingHello | State::Open | State::Echoing
        ) && !self.bits.has(Bits::PEER_EOF)
            && !self.bits.has(Bits::BACKPRESSURE)
    }

    /// Reading is allowed and the socket may have bytes: only the budget can stop a read.
    fn read_pending(&self) -> bool {
        self.may_read() && self.bits.has(Bits::READ_READY)
    }

    fn can_read_now(&self, budget: &Budget) -> bool {
        self.read_pending() && budget.bytes > 0 && budget.frames > 0
    }

    /// Reads once into `buf`'s spare space, at most `want` bytes. A read shorter than asked
    /// means the socket is drained (epoll(7)), which saves the extra `read` that would only
    /// return `WouldBlock` — unless the poll already reported the peer's FIN, whose edge is
    /// spent (see [`Connection::on_read_closed`]). `Interrupted` is retried.
    fn read_into<S: Read>(
        &mut self,
        io: &mut S,
        buf: &mut Buf,
        want: usize,
        budget: &mut Budget,
        now: Tick,
    ) -> ReadOutcome {
        let spare = buf.spare();
        let want = want.min(spare.len());
        loop {
            match io.read(&mut spare[..want]) {
                Ok(0) => return ReadOutcome::Eof,
                Ok(n) => {
                    buf.commit(n);
                    budget.bytes = budget.bytes.saturating_sub(n);
                    self.last_active = now;
                    if n < want && !self.bits.has(Bits::READ_CLOSED) {
                        self.bits.set(Bits::READ_READY, false);
                    }
                    return ReadOutcome::Data;
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    self.bits.set(Bits::READ_READY, false);
                    return ReadOutcome::Drained;
                }
                Err(error) => return ReadOutcome::Failed(error),
            }
        }
    }

    fn update_backpressure(&mut self, limits: &Limits) {
        let pending = self.pending_output();
        if pending >= limits.output_high_water {
            self.bits.set(Bits::BACKPRESSURE, true);
        } else if pending <= limits.output_low_water {
            self.bits.set(Bits::BACKPRESSURE, false);
        }
    }

    /// Writes pending output until it is gone or the socket is full. A short write means the
    /// send buffer is full (epoll(7)), so no second `write` just to collect `WouldBlock`.
    fn flush<S: Stream>(&mut self, io: &mut S, now: Tick) -> io::Result<()> {
        let Some(out) = self.output.as_mut() else {
            return Ok(());
        };
        while !out.is_empty() && self.bits.has(Bits::WRITE_READY) {
            match io.write(out.data()) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let short = n < out.len();
                    out.consume(n);
                    self.last_active = now;
                    if short {
                        self.bits.set(Bits::WRITE_READY, false);
                    }
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    self.bits.set(Bits::WRITE_READY, false);
                }
                Err(error) => {
                    debug!("write failed: {error}");
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    fn fail(&mut self) -> Verdict {
        self.set_state(State::Closed);
        Verdict::Close
    }

    fn set_state(&mut self, next: State) {
        transition(&mut self.state, next);
    }
}

/// Every state change goes through here, so a `trace` log shows each one.
fn transition(state: &mut State, next: State) {
    if next != *state {
        trace!("state {state} -> {next}");
        *state = next;
    }
}

/// Handles one complete frame in `state`; returns the next state.
fn dispatch(
    state: State,
    frame: Frame<'_>,
    replies: &mut Replies<'_>,
    limits: &Limits,
) -> Result<State, Fatal> {
    let stream = frame.header.stream;
    let frame_type = frame.header.frame_type;
    // Stream 0 is the connection itself: HELLO lives there, requests never do.
    if frame_type == FrameType::Hello && stream != 0 {
        return Err(Fatal::new(
            ErrorCode::BadHello,
            format!("HELLO on stream {stream}; it belongs on stream 0"),
        ));
    }
    if state == State::Open
        && stream == 0
        && matches!(frame_type, FrameType::EchoRequest | FrameType::Unknown(_))
    {
        return Err(Fatal::new(
            ErrorCode::UnexpectedFrame,
            format!("{frame_type} on stream 0; requests need a stream id other than 0"),
        ));
    }
    match (state, frame_type) {
        (State::AwaitingHello, FrameType::Hello) => {
            let hello = Hello::parse(frame.payload)
                .map_err(|error| Fatal::new(ErrorCode::BadHello, error.to_string()))?;
            let version = hello.negotiate().ok_or_else(|| {
                Fatal::new(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "client speaks versions {}..={}, server {}..={}",
                        hello.min_version,
                        hello.max_version,
                        MIN_PROTOCOL_VERSION,
                        PROTOCOL_VERSION
                    ),
                )
            })?;
            let ok = HelloOk {
                version,
                max_payload_len: limits.max_frame_len,
            };
            replies.frame_with(FrameType::HelloOk, 0, HelloOk::PAYLOAD_LEN as u32, |out| {
                ok.emit(out)
            });
            Ok(State::Open)
        }
        (State::AwaitingHello, other) => Err(Fatal::new(
            ErrorCode::UnexpectedFrame,
            format!("expected HELLO first, got {other}"),
        )),
        (State::Open, FrameType::EchoRequest) => {
            echo::reply(frame, replies);
            Ok(state)
        }
        (State::Open, FrameType::Unknown(byte)) => {
            let text = format!("frame type 0x{byte:02x} is not known to this server");
            replies.error(stream, ErrorCode::UnknownFrameType, &text);
            Ok(state)
        }
        (State::Open, FrameType::Error) => {
            let reason = ErrorMessage::parse(frame.payload)
                .map(|error| error.to_string())
                .unwrap_or_else(|error| format!("unparsable error frame: {error}"));
            Err(Fatal::quiet(format!("client reported an error: {reason}")))
        }
        (State::Open, other) => Err(Fatal::new(
            ErrorCode::UnexpectedFrame,
            format!("{other} is not valid from a client here"),
        )),
        (State::Echoing | State::Closing | State::Closed, _) => Ok(state),
    }
}
