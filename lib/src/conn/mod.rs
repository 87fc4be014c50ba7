//! One TCP connection's state machine, independent of the poll.
//!
//! A [`Connection`] owns its protocol state, its buffers and its open streams, but no
//! descriptor: [`Connection::drive`] takes any [`Stream`] (a `mio` socket in the server, a
//! [`ScriptedIo`](crate::testkit::ScriptedIo) in tests) and reaches its commands' processes
//! through the [`Children`] in its [`Context`] (the reactor's I/O layer, or a
//! [`ScriptedChildren`](crate::testkit::ScriptedChildren)). It does all the work that
//! readiness and this turn's budget allow and says what the caller must do next ([`Verdict`]).
//! It never reads the clock: the caller passes `now` in the [`Context`].
//!
//! # Call order
//! 1. After `poll` reports the socket: [`Connection::on_ready`] with what it reported (and
//!    [`Connection::on_read_closed`] for a FIN or an error); after it reports one of a
//!    command's pipes or its pidfd: [`Connection::on_child_ready`].
//! 2. [`Connection::drive`]; act on the [`Verdict`] (wait, queue for the next turn, close).
//! 3. Re-register the socket if [`Connection::interest`] changed; re-arm the timer from
//!    [`Connection::deadline`].
//! 4. When the deadline passes: [`Connection::on_deadline`], then `drive` again.
//! 5. When the socket is closed: [`Connection::release`].
//!
//! [`ConnHarness`](crate::testkit::ConnHarness) runs these steps over a script, with a worked
//! example.
//!
//! # States
//! ```text
//!  framed:  AwaitingHello --HELLO--> Open --fatal error / timeout / shutdown--> Closing --> Closed
//!  raw:     Echoing ------------------------------EOF / timeout / shutdown----> Closing --> Closed
//! ```
//! `Closing` writes what is pending (an error frame, the last replies), shuts the write side,
//! then reads and discards until the peer closes or the linger deadline passes, so the last
//! bytes are not destroyed by a reset. An `Open` connection with running commands stays `Open`
//! at shutdown until they have been stopped and their EXIT frames queued ("draining").
//!
//! # Streams
//! Requests that take time (a command now, a file transfer next) live on their stream in the
//! connection's [`streams::Streams`] table, allocated with the first such request; an idle
//! connection holds none. Their output goes through the same [`Outbox`] as every reply.

mod dispatch;
mod echoes;
pub mod streams;
pub mod transfers;

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::time::Duration;

use log::{debug, trace};
use mio::Interest;

use crate::access::Access;
use crate::buffer::{Buf, BufferPool};
use crate::limits::Limits;
use crate::outbox::Outbox;
use crate::proto::exec::EndReason;
use crate::proto::{DecodeError, Decoder, ErrorCode, Frame, FrameType, HEADER_LEN, Header};
use crate::service::disk::{Disk, JobDone, JobKind};
use crate::service::exec::{ChildSource, Children};
use crate::throttle::LogThrottle;
use crate::timer::{Tick, WallClock};

pub use crate::service::Verdict;
pub use crate::transport::Stream;
use streams::Streams;

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

/// Text of the ERROR SHUTTING_DOWN a connection gets at a server shutdown.
const SHUTTING_DOWN_TEXT: &str = "server is shutting down";

/// Smallest read worth making into the room an input buffer has; below it the buffer grows.
const MIN_READ: usize = 4 << 10;

/// The server's access rules when a [`Context`] is made without any: echo only, no token.
static ECHO_ONLY: Access = Access::ECHO_ONLY;

/// What [`Connection::drive`] borrows from the loop.
pub struct Context<'a> {
    /// Where buffers come from and go back to.
    pub pool: &'a mut BufferPool,
    /// The limits in force.
    pub limits: &'a Limits,
    /// The loop's current time.
    pub now: Tick,
    /// The wall clock as the loop read it this turn (only the file service uses it).
    pub wall_clock: WallClock,
    /// The token and whether commands may run.
    pub access: &'a Access,
    /// The I/O layer's processes; `None` where no command can run (EXEC is then refused).
    pub children: Option<&'a mut dyn Children>,
    /// The loop's turn number: a child number freed in a turn is not reused in the same turn,
    /// so no event of that turn's batch can reach the wrong command.
    pub turn: u64,
    /// Throttles the log line for a wrong token; `None` logs each at debug level only.
    pub auth_log: Option<&'a mut LogThrottle>,
    /// The file service's disk (the I/O layer's, which hands blocking calls to the disk
    /// helper); `None` where files are not served (file requests are then refused).
    pub files: Option<&'a mut dyn Disk>,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("now", &self.now)
            .field("turn", &self.turn)
            .field("access", &self.access)
            .field("children", &self.children.is_some())
            .field("files", &self.files.is_some())
            .finish_non_exhaustive()
    }
}

impl<'a> Context<'a> {
    /// A context for driving one connection by hand (tests, fuzzing, another event loop):
    /// echo only, no token, no processes.
    pub fn new(pool: &'a mut BufferPool, limits: &'a Limits, now: Tick) -> Context<'a> {
        Context {
            pool,
            limits,
            now,
            wall_clock: WallClock::default(),
            access: &ECHO_ONLY,
            children: None,
            turn: 0,
            auth_log: None,
            files: None,
        }
    }
}

/// Readiness hints and sticky conditions, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bits(u16);

impl Bits {
    /// The socket may have bytes to read (cleared by `WouldBlock` or a short read).
    const READ_READY: u16 = 1 << 0;
    /// The socket may accept bytes (cleared by `WouldBlock` or a short write).
    const WRITE_READY: u16 = 1 << 1;
    /// A read returned 0: the peer will send nothing more.
    const PEER_EOF: u16 = 1 << 2;
    /// `shutdown(SHUT_WR)` was done.
    const WRITE_SHUT: u16 = 1 << 3;
    /// The poll reported the peer's FIN (or an error) with the bytes before it. Its edge is
    /// spent, so a short read no longer proves the socket drained: read on until 0 or an error.
    const READ_CLOSED: u16 = 1 << 4;
    /// HELLO authenticated the connection (or no token is configured).
    const AUTHENTICATED: u16 = 1 << 5;
    /// The connection speaks protocol version 2 or later: exec frames mean something.
    const EXEC_FRAMES: u16 = 1 << 6;
    /// Shutting down with commands still running: they are being stopped, and the close comes
    /// once their EXIT frames are queued.
    const DRAINING: u16 = 1 << 7;

    fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }

    fn set(&mut self, bit: u16, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }
}

/// Per-turn allowance, so one busy connection cannot starve the rest.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Bytes that may still be read, from the socket and from commands' pipes together.
    pub(crate) bytes: usize,
    /// Frames that may still be handled.
    pub(crate) frames: usize,
    /// File bytes that may still be queued, hashed or re-read (and directory entries listed,
    /// at a fixed cost each).
    pub(crate) disk: usize,
}

/// What one read did.
enum ReadOutcome {
    /// Some bytes were read.
    Data(usize),
    /// Nothing to read now.
    Drained,
    /// The peer closed its side.
    Eof,
    /// The connection failed.
    Failed(io::Error),
}

/// Where a reading loop goes after a read ([`Connection::after_read`]).
enum Step {
    /// Read again.
    Continue,
    /// Leave the loop.
    Stop,
    /// The connection failed: close it.
    Fail,
}

/// Why a framed connection must close: the ERROR frame to send first (none when the client
/// itself reported an error), and the text for the log.
struct Fatal {
    code: Option<ErrorCode>,
    text: String,
    /// The socket itself failed: close at once, with nothing more to send.
    broken: bool,
}

impl Fatal {
    fn new(code: ErrorCode, text: impl Into<String>) -> Fatal {
        Fatal {
            code: Some(code),
            text: text.into(),
            broken: false,
        }
    }

    fn quiet(text: impl Into<String>) -> Fatal {
        Fatal {
            code: None,
            text: text.into(),
            broken: false,
        }
    }

    fn broken(text: impl Into<String>) -> Fatal {
        Fatal {
            code: None,
            text: text.into(),
            broken: true,
        }
    }
}

/// One connection's protocol state and buffers. See the module docs for the call order.
#[derive(Debug)]
pub struct Connection {
    state: State,
    bits: Bits,
    /// Bytes read but not yet handled (framed only); `None` while empty.
    input: Option<Box<Buf>>,
    /// Everything to send (replies, command output, the raw echo).
    outbox: Outbox,
    /// Requests that take time, by stream; `None` while there are none.
    streams: Option<Box<Streams>>,
    /// Last time bytes moved in either direction.
    last_active: Tick,
    /// A deadline earlier than the idle one: for HELLO (accept plus the hello timeout), for the
    /// incomplete frame at the head of `input` (its first byte's arrival plus the frame timeout),
    /// or, in `Closing`, for the whole close. [`Tick::NEVER`] when none applies.
    phase_deadline: Tick,
    /// The buffer held, in KiB, as last reported by [`Connection::report_buffer_kib`].
    reported_kib: u16,
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
            outbox: Outbox::new(),
            streams: None,
            last_active: now,
            phase_deadline,
            reported_kib: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes waiting to be written.
    pub fn pending_output(&self) -> usize {
        self.outbox.pending()
    }

    /// Bytes read but not yet handled.
    pub fn pending_input(&self) -> usize {
        self.input.as_ref().map_or(0, |buf| buf.len())
    }

    /// Bytes of buffer memory the connection holds (capacity, not content).
    pub fn buffer_capacity(&self) -> usize {
        self.input.as_ref().map_or(0, |buf| buf.capacity()) + self.outbox.buffer_capacity()
    }

    /// Reports the buffer memory held now, in KiB rounded up (at most `u16::MAX`), and
    /// returns `(as last reported, now)`: the caller keeps a running total of all
    /// connections' buffers (`--max-client-memory`) from these differences.
    pub fn report_buffer_kib(&mut self) -> (u16, u16) {
        let now = u16::try_from(self.buffer_capacity().div_ceil(1024)).unwrap_or(u16::MAX);
        (std::mem::replace(&mut self.reported_kib, now), now)
    }

    /// The buffer memory as last reported by [`Connection::report_buffer_kib`], in KiB.
    pub fn reported_buffer_kib(&self) -> u16 {
        self.reported_kib
    }

    /// Whether the connection holds any buffer (an idle one holds none).
    pub fn holds_buffers(&self) -> bool {
        self.input.is_some() || self.outbox.holds_buffer()
    }

    /// Commands and transfers running on this connection.
    pub fn open_streams(&self) -> usize {
        self.streams.as_ref().map_or(0, |streams| streams.len())
    }

    /// Commands running on this connection.
    pub fn running_commands(&self) -> usize {
        self.streams
            .as_ref()
            .map_or(0, |streams| streams.commands())
    }

    /// What a shutdown lets finish before it closes the connection: running commands (their
    /// EXIT), and verified uploads being committed (their DIGEST: the client must not be told
    /// SHUTTING_DOWN about a file that is already in place).
    fn draining_work(&self) -> bool {
        self.streams
            .as_ref()
            .is_some_and(|streams| streams.commands() > 0 || streams.commits() > 0)
    }

    /// Whether HELLO authenticated the connection (always, when the server has no token).
    pub fn authenticated(&self) -> bool {
        self.bits.has(Bits::AUTHENTICATED)
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

    /// A disk job this connection submitted through [`Context::files`] is finished: an
    /// upload's sync or its directory's (the transfer waiting for it takes it, and goes on at
    /// the next drive), or the unlink that frees a deleted or replaced file, after its answer
    /// was sent (only logged: a failure leaves a hidden name for the directory sweep).
    pub fn handle_disk_done(&mut self, done: JobDone, cx: &mut Context<'_>) {
        if let (Some(streams), Some(disk)) = (self.streams.as_mut(), cx.files.as_deref_mut()) {
            if streams.on_disk_done(&done, disk) {
                trace!("{} ({:?}) done for a transfer", done.id, done.kind);
                return;
            }
        }
        match done.result {
            Ok(()) => trace!("{} ({:?}) done", done.id, done.kind),
            // The aside name was removed by someone else first (the directory sweep): the
            // blocks are freed all the same.
            Err(error) if done.kind == JobKind::Unlink && error.code() == ErrorCode::NotFound => {
                debug!("{}: the aside name was already removed", done.id);
            }
            Err(error) => log::warn!(
                "{} ({:?}) failed: {error}; a deleted file's blocks stay in use until the sweep removes its hidden name",
                done.id,
                done.kind
            ),
        }
    }

    /// Records that the poll reported one of a command's descriptors: `index` is the child
    /// number its token carries. An index with no command finds nothing.
    pub fn on_child_ready(&mut self, index: u8, source: ChildSource) {
        if let Some(streams) = self.streams.as_mut() {
            streams.on_ready(index, source);
        }
    }

    /// The poll interest the socket needs now. Derived from state each time, never tracked
    /// separately, so it cannot drift; the caller re-registers only when it differs from what
    /// is registered.
    pub fn interest(&self) -> Interest {
        let read = self.may_read() || self.lingering();
        let write = !self.outbox.is_empty();
        match (read, write) {
            (true, true) => Interest::READABLE | Interest::WRITABLE,
            (false, true) => Interest::WRITABLE,
            _ => Interest::READABLE,
        }
    }

    /// When [`Connection::on_deadline`] must be called: the idle deadline (not while commands
    /// run: their own limits bound them; transfers do not suspend it, since bytes moving keep
    /// it away), or sooner if HELLO is still awaited, a frame is
    /// half-received, the connection is closing, or a command's deadline comes first.
    pub fn deadline(&self, limits: &Limits) -> Tick {
        let streams = self
            .streams
            .as_ref()
            .map_or(Tick::NEVER, |streams| streams.deadline());
        self.own_deadline(limits).min(streams)
    }

    fn own_deadline(&self, limits: &Limits) -> Tick {
        if self.state == State::Closing || self.running_commands() > 0 {
            return self.phase_deadline;
        }
        self.last_active
            .after(limits.idle_timeout)
            .min(self.phase_deadline)
    }

    /// Handles passed deadlines: a command's (its limits are enforced), and the connection's
    /// own (a framed connection is told `TIMEOUT` and starts closing; any other closes at
    /// once). Call [`Connection::drive`] afterwards to act on them.
    pub fn on_deadline(&mut self, cx: &mut Context<'_>) {
        if let Some(streams) = self.streams.as_mut() {
            if streams.deadline() <= cx.now {
                streams.handle_timeout(cx.now, cx.limits);
            }
        }
        if self.own_deadline(cx.limits) > cx.now {
            return;
        }
        match self.state {
            State::AwaitingHello | State::Open => {
                let idle_deadline = self.last_active.after(cx.limits.idle_timeout);
                let text = if cx.now >= idle_deadline && self.running_commands() == 0 {
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
    /// only), stop handling input, release running commands (their groups are stopped),
    /// flush, shut the write side, wait for the peer's EOF. Does nothing if already closing.
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
            self.outbox.replies(cx.pool, cx.limits).error(0, code, text);
        }
        if let Some(input) = self.input.take() {
            cx.pool.give(input);
        }
        self.release_streams(cx, EndReason::Disconnect);
        self.phase_deadline = cx.now.after(within);
        self.set_state(State::Closing);
    }

    /// Starts the shutdown of this connection with `grace` to finish: running commands get
    /// SIGTERM and their EXIT frames go out before `SHUTTING_DOWN`; without commands the
    /// orderly close starts at once.
    pub fn begin_shutdown(&mut self, grace: Duration, cx: &mut Context<'_>) {
        if self.state == State::Open && self.draining_work() {
            if let Some(streams) = self.streams.as_mut() {
                // SIGKILL comes within half the grace at most, so the EXIT frames and
                // SHUTTING_DOWN still go out before the grace period ends.
                let kill_grace = cx.limits.exec_kill_grace.min(grace / 2);
                streams.handle_shutdown(cx.now, kill_grace);
                self.bits.set(Bits::DRAINING, true);
                return;
            }
        }
        self.begin_close(
            Some((ErrorCode::ShuttingDown, SHUTTING_DOWN_TEXT)),
            grace,
            cx,
        );
    }

    /// Returns the connection's buffers to the pool and releases its commands; call once, when
    /// the socket is closed.
    pub fn release(&mut self, cx: &mut Context<'_>) {
        if let Some(input) = self.input.take() {
            cx.pool.give(input);
        }
        self.outbox.release(cx.pool);
        self.release_streams(cx, EndReason::Disconnect);
        self.set_state(State::Closed);
    }

    /// Releases every command. The table stays (it remembers the child numbers just freed, so
    /// they are not reused this turn); an empty one is dropped at a drive in a later turn.
    fn release_streams(&mut self, cx: &mut Context<'_>, reason: EndReason) {
        if let Some(streams) = self.streams.as_mut() {
            streams.release_all(cx, reason);
        }
    }

    /// Does everything readiness and the turn's budget allow: read, handle frames, run
    /// commands' I/O, write.
    pub fn drive<S: Stream>(&mut self, io: &mut S, cx: &mut Context<'_>) -> Verdict {
        let mut budget = Budget {
            bytes: cx.limits.read_budget,
            frames: cx.limits.frame_budget,
            disk: cx.limits.disk_budget,
        };
        let verdict = match self.state {
            State::AwaitingHello | State::Open => self.drive_framed(io, cx, &mut budget),
            State::Echoing => self.drive_echo(io, cx, &mut budget),
            State::Closing => self.drive_closing(io, cx, &mut budget),
            State::Closed => Verdict::Close,
        };
        cx.pool.give_if_empty(&mut self.input);
        if self.input.is_some() {
            self.shrink_unauthenticated_input(cx);
        }
        // A command's output fills the outbox past one pool buffer, so its buffer grows (once:
        // `Replies::grow_to`); given back, a grown buffer is freed by the pool, and the next
        // burst would allocate again. While commands run, the connection keeps it, so
        // streaming output allocates nothing; it goes (and is freed) after the last command.
        let keep =
            self.outbox.buffer_capacity() > cx.pool.buffer_len() && self.running_commands() > 0;
        if !keep {
            self.outbox.release_if_empty(cx.pool);
        }
        verdict
    }

    /// Before authentication a frame is at most the pre-authentication limit, so a partial one
    /// left waiting moves from the pooled buffer into one of that size: a client that never
    /// authenticates pins a few KiB of input, not a pool buffer (the allocation happens only
    /// when such a client stalls mid-frame).
    fn shrink_unauthenticated_input(&mut self, cx: &mut Context<'_>) {
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

    // === Framed ===

    fn drive_framed<S: Stream>(
        &mut self,
        io: &mut S,
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
            match self.after_read(outcome) {
                Step::Continue => continue,
                Step::Stop => break,
                Step::Fail => return self.fail(),
            }
        }
        if self.bits.has(Bits::PEER_EOF) && self.open_streams() > 0 {
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
                    streams.release_all_commands(cx, EndReason::Disconnect);
                }
            }
        }
        if self.flush(io, cx).is_err() {
            return self.fail();
        }
        self.track_partial_frame(waiting_for_bytes, cx.limits, cx.now);

        if self.bits.has(Bits::DRAINING) && !self.draining_work() {
            self.begin_close(
                Some((ErrorCode::ShuttingDown, SHUTTING_DOWN_TEXT)),
                cx.limits.linger_timeout,
                cx,
            );
            return self.drive_closing(io, cx, budget);
        }
        let frames_left = !waiting_for_bytes && self.pending_input() > 0;
        if self.bits.has(Bits::PEER_EOF)
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

    /// The largest payload a frame may declare now: small until the connection has
    /// authenticated (or a HELLO without credentials was accepted on a server with no token).
    fn max_payload(&self, limits: &Limits) -> u32 {
        if self.state == State::Open && self.bits.has(Bits::AUTHENTICATED) {
            limits.max_frame_len
        } else {
            limits.pre_auth_frame_len()
        }
    }

    /// Closes for a fatal error: at once if the socket broke, else through `Closing`, with
    /// the ERROR frame (if any) after the replies already queued.
    fn close_for<S: Stream>(
        &mut self,
        fatal: Fatal,
        io: &mut S,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Verdict {
        debug!("closing: {}", fatal.text);
        if fatal.broken {
            return self.fail();
        }
        let error = fatal.code.map(|code| (code, fatal.text.as_str()));
        self.begin_close(error, cx.limits.linger_timeout, cx);
        self.drive_closing(io, cx, budget)
    }

    /// Handles the complete frames at the head of the input buffer (see
    /// [`Connection::handle_frames_in`]) and consumes them.
    fn handle_frames<S: Stream>(
        &mut self,
        io: &mut S,
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
    fn read_and_handle<S: Stream>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Result<ReadOutcome, Fatal> {
        let mut scratch = cx.pool.take_scratch();
        let want = cx.limits.input_cap().min(scratch.len()).min(budget.bytes);
        let outcome = read_once(io, &mut scratch[..want], &mut self.bits);
        self.count_read(&outcome, budget, cx.now);
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
    fn handle_frames_in<S: Stream>(
        &mut self,
        io: &mut S,
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

    fn handle_frames_run<S: Stream>(
        &mut self,
        io: &mut S,
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
            let outcome = read_once(io, &mut spare[..want], &mut self.bits);
            if let ReadOutcome::Data(n) = outcome {
                input.commit(n);
            }
            outcome
        };
        self.input = Some(input);
        self.count_read(&outcome, budget, cx.now);
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

    // === Streams ===

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
        let mut progress = streams.pump(&mut self.outbox, cx, budget);
        if !streams.transfers.is_empty() {
            progress |= streams.pump_transfers(&mut self.outbox, cx, budget);
        }
        if streams.is_finished(cx.turn) {
            self.streams = None;
        }
        progress
    }

    /// Whether a stream has work that needs no new readiness event.
    fn streams_want_turn(&self, bytes_left: bool) -> bool {
        self.streams.as_ref().is_some_and(|streams| {
            let may_produce = self.outbox.may_produce();
            streams.wants_turn(may_produce, bytes_left)
                || (!streams.transfers.is_empty() && streams.transfers_want_turn(may_produce))
        })
    }

    // === Raw echo ===

    fn drive_echo<S: Stream>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Verdict {
        loop {
            if !self.outbox.is_empty() && self.flush(io, cx).is_err() {
                return self.fail();
            }
            if !self.can_read_now(budget) {
                break;
            }
            let outcome = if self.outbox.is_empty() && self.bits.has(Bits::WRITE_READY) {
                match self.echo_direct(io, cx, budget) {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        debug!("write failed: {error}");
                        return self.fail();
                    }
                }
            } else {
                self.echo_queued(io, cx, budget)
            };
            match self.after_read(outcome) {
                Step::Continue => continue,
                Step::Stop => break,
                Step::Fail => return self.fail(),
            }
        }
        if self.bits.has(Bits::PEER_EOF) && self.outbox.is_empty() {
            self.set_state(State::Closed);
            return Verdict::Close;
        }
        if self.read_pending() {
            Verdict::Again
        } else {
            Verdict::Wait
        }
    }

    /// The echo while nothing is queued and the socket takes bytes (the steady state): read
    /// into the pool's scratch buffer and write it straight back, as a C echo loop does. Only
    /// what the socket does not take is copied into the outbox, whose backpressure then
    /// governs reading. A write error comes back as the `Err`.
    fn echo_direct<S: Stream>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> io::Result<ReadOutcome> {
        let mut scratch = cx.pool.take_scratch();
        let want = scratch.len().min(budget.bytes);
        let outcome = read_once(io, &mut scratch[..want], &mut self.bits);
        self.count_read(&outcome, budget, cx.now);
        let result = match outcome {
            ReadOutcome::Data(n) => match write_once(io, &scratch[..n], &mut self.bits) {
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
    fn echo_queued<S: Stream>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> ReadOutcome {
        let want = cx.pool.buffer_len().min(budget.bytes);
        let max_capacity = cx.limits.output_high_water + cx.pool.buffer_len();
        let bits = &mut self.bits;
        let mut outcome = ReadOutcome::Drained;
        let _ = self
            .outbox
            .replies(cx.pool, cx.limits)
            .raw_from(want, max_capacity, |spare| {
                outcome = read_once(io, spare, bits);
                Ok(match outcome {
                    ReadOutcome::Data(n) => n,
                    _ => 0,
                })
            });
        self.count_read(&outcome, budget, cx.now);
        outcome
    }

    // === Closing ===

    fn drive_closing<S: Stream>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Verdict {
        if self.flush(io, cx).is_err() {
            return self.fail();
        }
        if !self.outbox.is_empty() {
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
            let outcome = read_once(io, &mut scratch.spare()[..want], &mut self.bits);
            self.count_read(&outcome, budget, cx.now);
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
        cx.pool.give(scratch);
        verdict
    }

    fn lingering(&self) -> bool {
        self.state == State::Closing && self.bits.has(Bits::WRITE_SHUT)
    }

    // === Shared ===

    /// Reading the socket is allowed: the state takes input, the peer has not closed, the
    /// outbox may take replies (the backpressure question), and no upload has run ahead of the
    /// disk (the same question, asked of the disk helper's syncs).
    fn may_read(&self) -> bool {
        matches!(
            self.state,
            State::AwaitingHello | State::Open | State::Echoing
        ) && !self.bits.has(Bits::PEER_EOF)
            && self.outbox.may_produce()
            && !self
                .streams
                .as_ref()
                .is_some_and(|streams| streams.disk_bound())
    }

    /// Reading is allowed and the socket may have bytes: only the budget can stop a read.
    fn read_pending(&self) -> bool {
        self.may_read() && self.bits.has(Bits::READ_READY)
    }

    fn can_read_now(&self, budget: &Budget) -> bool {
        self.read_pending() && budget.bytes > 0 && budget.frames > 0
    }

    /// What a reading loop does after a read: go on after data, stop when drained, stop for
    /// good at EOF (noted), fail on an error.
    fn after_read(&mut self, outcome: ReadOutcome) -> Step {
        match outcome {
            ReadOutcome::Data(_) => Step::Continue,
            ReadOutcome::Drained => Step::Stop,
            ReadOutcome::Eof => {
                self.bits.set(Bits::PEER_EOF, true);
                Step::Stop
            }
            ReadOutcome::Failed(error) => {
                debug!("read failed: {error}");
                Step::Fail
            }
        }
    }

    /// Charges a read to the budget and the activity clock.
    fn count_read(&mut self, outcome: &ReadOutcome, budget: &mut Budget, now: Tick) {
        if let ReadOutcome::Data(n) = outcome {
            budget.bytes = budget.bytes.saturating_sub(*n);
            self.last_active = now;
        }
    }

    /// Writes pending output until it is gone or the socket is full. A short write means the
    /// send buffer is full (epoll(7)), so no second `write` just to collect `WouldBlock`.
    fn flush<S: Stream>(&mut self, io: &mut S, cx: &Context<'_>) -> io::Result<()> {
        while !self.outbox.is_empty() && self.bits.has(Bits::WRITE_READY) {
            match self.outbox.write_to(io, cx.limits) {
                Ok(written) if written.bytes == 0 => return Err(ErrorKind::WriteZero.into()),
                Ok(written) => {
                    self.last_active = cx.now;
                    if written.short {
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

    /// Every state change goes through here, so a `trace` log shows each one.
    fn set_state(&mut self, next: State) {
        if next != self.state {
            trace!("state {} -> {next}", self.state);
            self.state = next;
        }
    }
}

/// Reads once into `buf` with the loop's rules. A read shorter than asked means the socket is
/// drained (epoll(7)), which saves the extra `read` that would only return `WouldBlock` —
/// unless the poll already reported the peer's FIN, whose edge is spent (see
/// [`Connection::on_read_closed`]). `Interrupted` is retried.
fn read_once<R: Read>(io: &mut R, buf: &mut [u8], bits: &mut Bits) -> ReadOutcome {
    loop {
        match io.read(buf) {
            Ok(0) if !buf.is_empty() => return ReadOutcome::Eof,
            Ok(n) => {
                if n < buf.len() && !bits.has(Bits::READ_CLOSED) {
                    bits.set(Bits::READ_READY, false);
                }
                return ReadOutcome::Data(n);
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                bits.set(Bits::READ_READY, false);
                return ReadOutcome::Drained;
            }
            Err(error) => return ReadOutcome::Failed(error),
        }
    }
}

/// Writes `bytes` once with the loop's rules: returns how many the socket took, 0 for
/// `WouldBlock`; a write shorter than offered (or `WouldBlock`) means the send buffer is full
/// (epoll(7)), which clears the write hint. `Interrupted` is retried; a write that takes
/// nothing of a non-empty slice is an error.
fn write_once<W: Write>(io: &mut W, bytes: &[u8], bits: &mut Bits) -> io::Result<usize> {
    loop {
        match io.write(bytes) {
            Ok(0) if !bytes.is_empty() => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                if n < bytes.len() {
                    bits.set(Bits::WRITE_READY, false);
                }
                return Ok(n);
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                bits.set(Bits::WRITE_READY, false);
                return Ok(0);
            }
            Err(error) => return Err(error),
        }
    }
}
