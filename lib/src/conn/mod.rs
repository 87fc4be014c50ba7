//! One TCP connection's state machine, independent of the poll.
//!
//! A [`Connection`] owns its protocol state, its buffers and its open streams, but no
//! descriptor: [`Connection::drive`] reads and writes through any [`Transport`] (a `mio` socket
//! in the server, a [`ScriptedIo`](crate::testkit::ScriptedIo) in tests; TLS would be one too,
//! see [`crate::transport`]) and reaches its commands' processes through the
//! [`Children`](crate::service::exec::Children) in its [`Context`] (the reactor's I/O layer,
//! or a [`ScriptedChildren`](crate::testkit::ScriptedChildren)). It does all the work that
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
//! bytes are not destroyed by a reset. At shutdown a connection first answers what its client
//! had sent (what its input and its socket hold; `Bits::FINISHING`), and an `Open` one with
//! running commands stays `Open` until they have been stopped and their EXIT frames queued
//! ("draining"); only then does it go `Closing`.
//!
//! # Streams
//! A *stream* is what the protocol means by it: the id a request and its answers carry. The
//! requests that take time — a command (EXEC), a download (GET), an upload (PUT), a listing
//! (LIST) — stay open on their stream in the connection's stream table, allocated with the
//! first such request; an idle connection holds none. Every request that would start passes
//! one admission ladder first (`Connection::admit`, in `admission.rs`). Their output goes
//! through the same [`Outbox`] as every reply.
//!
//! # Files
//! - `mod.rs`: [`Connection`], its life (accept, readiness, deadlines, shutdown, release) and
//!   [`Connection::drive`], which hands the turn to the driver for its state;
//! - `framed.rs`: the framed driver — read, decode, handle, run the streams, write;
//! - `echoes.rs`: framed echo replies written straight from the input;
//! - `dispatch.rs`: what each complete frame does, and how an admitted request starts;
//! - `admission.rs`: which stream id a request may use, and the one ladder that admits or
//!   refuses every request that would start;
//! - `streams/`: the stream table (`mod.rs`), and one module per kind of entry: `exec.rs`,
//!   `get.rs`, `put.rs`, `list.rs`;
//! - `raw_echo.rs`: the raw echo (RFC 862), a small type of its own;
//! - `closing.rs`: the lingering close;
//! - `context.rs`: [`Context`], [`Verdict`], the turn's budget and why a connection fails.

mod admission;
mod closing;
mod context;
mod dispatch;
mod echoes;
mod framed;
mod raw_echo;
mod sniff;
mod streams;

use std::fmt;
use std::time::Duration;

use log::{debug, trace};

use crate::buffer::Buf;
use crate::limits::Limits;
use crate::outbox::Outbox;
use crate::proto::ErrorCode;
use crate::proto::exec::EndReason;
use crate::service::disk::{JobDone, JobKind};
use crate::service::exec::ChildSource;
use crate::timer::Tick;
use crate::transport::{IoState, Readiness, Transport};

use context::{Budget, Fatal};
pub use context::{Context, Verdict};
use raw_echo::RawEcho;
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
pub(crate) const SHUTTING_DOWN_TEXT: &str = "server is shutting down";

/// Text of the ERROR SHUTTING_DOWN a load balancer's health check gets while the server drains.
pub(crate) const DRAINING_TEXT: &str =
    "server is draining before a shutdown: health check failed on purpose";

/// The connection's protocol conditions, one bit each (what the connection knows of its
/// transport is an [`IoState`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bits(u8);

impl Bits {
    /// HELLO authenticated the connection (or no token is configured).
    const AUTHENTICATED: u8 = 1 << 0;
    /// The connection speaks protocol version 2 or later: exec frames mean something.
    const EXEC_FRAMES: u8 = 1 << 1;
    /// Shutting down with commands still running: they are being stopped, and the close comes
    /// once their EXIT frames are queued.
    const DRAINING: u8 = 1 << 2;
    /// Shutting down: the requests already received (in the input buffer, or in the socket
    /// when the shutdown began) are answered, nothing new is started, and once they are the
    /// connection closes (framed: with SHUTTING_DOWN).
    const FINISHING: u8 = 1 << 3;
    /// The transport has not handed over its first plaintext yet (a TLS handshake in
    /// progress): a read that found nothing proves nothing about what the client sent.
    const TRANSPORT_PENDING: u8 = 1 << 4;
    /// A load balancer's health check while the server drains: HELLO is answered with
    /// SHUTTING_DOWN instead of HELLO_OK.
    const FAIL_HEALTH_CHECK: u8 = 1 << 5;

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

/// One connection's protocol state and buffers. See the module docs for the call order.
#[derive(Debug)]
pub struct Connection {
    state: State,
    /// What the connection knows of its transport: readiness hints, half-closes.
    io_state: IoState,
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
            io_state: IoState::fresh(),
            bits: Bits::default(),
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

    /// The access file's grant the connection authenticated with, if it did with one: what it
    /// may do for its whole life, whatever a reload changes.
    pub fn grant(&self) -> Option<&std::sync::Arc<crate::access::Grant>> {
        self.streams
            .as_ref()
            .and_then(|streams| streams.grant.as_ref())
    }

    /// Records readiness reported by the poll. Errors and hang-ups should be passed as both:
    /// the next read or write then reports the condition precisely.
    pub fn on_ready(&mut self, readable: bool, writable: bool) {
        if readable {
            self.io_state.set(IoState::READ_READY, true);
        }
        if writable {
            self.io_state.set(IoState::WRITE_READY, true);
        }
    }

    /// Records that the poll reported the read side closed (the peer's FIN, `EPOLLRDHUP`) or an
    /// error. Data and FIN that arrive together produce one edge; after it, the connection reads
    /// until a read returns 0 instead of trusting a short read to mean "drained", which would
    /// leave the EOF unseen until the idle timeout.
    pub fn on_read_closed(&mut self) {
        self.io_state.set(IoState::READ_READY, true);
        self.io_state.set(IoState::READ_CLOSED, true);
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

    /// Records that the poll reported one of a command's descriptors: `child_number` is the
    /// one its token carries. A number with no command finds nothing.
    pub fn on_child_ready(&mut self, child_number: u8, source: ChildSource) {
        if let Some(streams) = self.streams.as_mut() {
            streams.on_child_ready(child_number, source);
        }
    }

    /// The readiness the connection waits for now, never nothing. Derived from state each time,
    /// never tracked separately, so it cannot drift; the caller adds what the transport wants
    /// ([`Transport::wants`]) and re-registers only when that differs from what is registered.
    pub fn interest(&self) -> Readiness {
        let read = self.may_read() || self.lingering();
        let write = !self.outbox.is_empty();
        match (read, write) {
            (true, true) => Readiness::READABLE | Readiness::WRITABLE,
            (false, true) => Readiness::WRITABLE,
            // Never nothing: READABLE also brings the errors and hang-ups.
            _ => Readiness::READABLE,
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
                debug!("{}: timeout: {text}", cx.peer.addr);
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
            cx.count(|metrics| metrics.error(code));
            self.outbox.replies(cx.pool, cx.limits).error(0, code, text);
        }
        if let Some(input) = self.input.take() {
            cx.pool.give(input);
        }
        self.release_streams(cx, EndReason::Disconnect);
        self.phase_deadline = cx.now.after(within);
        self.set_state(State::Closing);
    }

    /// Starts the shutdown of this connection with `grace` to finish. What the client sent
    /// before it is answered first: the connection reads what its socket already holds and
    /// handles every complete frame (the raw echo echoes it), starting nothing new; running
    /// commands get SIGTERM and their EXIT frames go out; then `SHUTTING_DOWN` and the orderly
    /// close. Call [`Connection::drive`] next: the close comes from a drive.
    pub fn begin_shutdown(&mut self, grace: Duration, cx: &mut Context<'_>) {
        if !matches!(
            self.state,
            State::AwaitingHello | State::Open | State::Echoing
        ) {
            return;
        }
        self.bits.set(Bits::FINISHING, true);
        // Bytes may be waiting whose edge this turn has not reported yet; a read that finds
        // none costs one `WouldBlock` (rule 4: spurious readiness is normal).
        self.io_state.set(IoState::READ_READY, true);
        if self.state == State::Open && self.draining_work() {
            if let Some(streams) = self.streams.as_mut() {
                // SIGKILL comes within half the grace at most, so the EXIT frames and
                // SHUTTING_DOWN still go out before the grace period ends.
                let kill_grace = cx.limits.exec_kill_grace.min(grace / 2);
                streams.handle_shutdown(cx.now, kill_grace);
                self.bits.set(Bits::DRAINING, true);
            }
        }
    }

    /// The server is draining and this framed connection is a load balancer's health check
    /// ([`Peer::health_check`](crate::transport::Peer::health_check)): its HELLO is answered
    /// with ERROR SHUTTING_DOWN instead of HELLO_OK and the connection closes, so the
    /// balancer's check fails and it stops sending clients. Call [`Connection::drive`] next (a
    /// HELLO may be waiting). No effect after HELLO.
    pub fn fail_health_check(&mut self) {
        self.bits.set(Bits::FAIL_HEALTH_CHECK, true);
    }

    /// Tells a shutting-down connection whether its transport is still setting up (a TLS
    /// session in its handshake): while it is, a read that found nothing does not end the
    /// connection, since the client's first requests may follow its handshake in the same
    /// flight. The caller clears it (and drives again) once the transport is ready; the
    /// shutdown's grace period bounds the wait.
    pub fn set_transport_pending(&mut self, pending: bool) {
        self.bits.set(Bits::TRANSPORT_PENDING, pending);
    }

    /// Shutting down, and everything received before it is answered: no complete frame left
    /// in the input, the socket read until it had nothing more (or the client's FIN), and no
    /// command or commit still finishing. `frames_left`: complete frames wait in the input.
    fn finished_received_work(&self, frames_left: bool) -> bool {
        self.bits.has(Bits::FINISHING)
            && !self.bits.has(Bits::TRANSPORT_PENDING)
            && !frames_left
            && (!self.io_state.has(IoState::READ_READY) || self.io_state.has(IoState::PEER_EOF))
            && !self.draining_work()
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

    /// Ends every stream: the transfers end, the commands are released
    /// ([`Streams::release_all`](streams::Streams::release_all)). The table stays (it remembers
    /// the child numbers just freed, so they are not reused this turn); an empty one is dropped
    /// at a drive in a later turn.
    fn release_streams(&mut self, cx: &mut Context<'_>, reason: EndReason) {
        if let Some(streams) = self.streams.as_mut() {
            streams.release_all(cx, reason);
        }
    }

    /// Does everything readiness and the turn's budget allow: read, handle frames, run
    /// commands' I/O, write.
    pub fn drive<T: Transport>(&mut self, io: &mut T, cx: &mut Context<'_>) -> Verdict {
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

    /// Drives the raw echo through the part of the connection it uses ([`RawEcho`]); once it
    /// is done, the connection is closed.
    fn drive_echo<T: Transport>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> Verdict {
        let mut echo = RawEcho {
            io_state: &mut self.io_state,
            outbox: &mut self.outbox,
            last_active: &mut self.last_active,
        };
        let verdict = echo.drive(io, cx, budget);
        if verdict == Verdict::Close {
            self.set_state(State::Closed);
        } else if self.finished_received_work(false) {
            // Shutting down, and what the client sent before it is echoed (or queued to be):
            // the lingering close sends it and ends the connection, within the grace period
            // (as the shutdown's own timer does anyway).
            self.begin_close(None, cx.limits.shutdown_grace, cx);
            return self.drive_closing(io, cx, budget);
        }
        verdict
    }

    // === Shared by the drivers ===

    /// Reading the socket is allowed: the state takes input, the peer has not closed, the
    /// outbox may take replies (the backpressure question), and no upload has run ahead of the
    /// disk (the same question, asked of the disk helper's syncs).
    fn may_read(&self) -> bool {
        matches!(
            self.state,
            State::AwaitingHello | State::Open | State::Echoing
        ) && !self.io_state.has(IoState::PEER_EOF)
            && self.outbox.may_produce()
            && !self
                .streams
                .as_ref()
                .is_some_and(|streams| streams.disk_bound())
    }

    /// Reading is allowed and the socket may have bytes: only the budget can stop a read.
    fn read_pending(&self) -> bool {
        self.may_read() && self.io_state.has(IoState::READ_READY)
    }

    fn can_read_now(&self, budget: &Budget) -> bool {
        self.read_pending() && budget.bytes > 0 && budget.frames > 0
    }

    /// Writes pending output until it is gone or the transport is full ([`Outbox::flush`]).
    fn flush<T: Transport>(&mut self, io: &mut T, cx: &Context<'_>) -> std::io::Result<()> {
        if self.outbox.flush(io, &mut self.io_state, cx.limits)? {
            self.last_active = cx.now;
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
