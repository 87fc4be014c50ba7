//! Remote exec, sans-IO: one [`ExecSession`] per running command.
//!
//! A session owns no descriptor and knows no `mio`. It is told what happened (`handle_*`: stdin
//! bytes from the client, output read, a pipe at EOF, the exit, a passed deadline), and it says
//! what should happen next (`poll_*`: a signal to send, stdin to close, credit to grant, the
//! next deadline, the EXIT to report). The connection ([`crate::conn`]) moves the bytes; the I/O
//! layer (`ChildTable`, in `sys/process.rs`) owns the child, its pipes and its pidfd, behind the
//! [`Children`] trait.
//!
//! # Life of a command
//! ```text
//!   spawned --exit seen--> exited --both outputs at EOF, or the drain deadline--> finished (EXIT)
//!      |                      ^
//!      +--time limit / output cap / client SIGNAL / shutdown: TERM, KILL after the grace
//! ```
//! EXIT is reported only after the process has exited *and* both output pipes have reached EOF,
//! so no output is lost behind it; a grandchild that keeps a pipe open gets
//! [`Limits::exec_drain_timeout`] (tokio#2363: exit is not EOF).
//!
//! # Stdin flow control
//! The client may send only as many STDIN bytes as it has credit for: the window announced in
//! STARTED, topped up by WINDOW frames as bytes go into the child's pipe (the SSH channel
//! window, RFC 4254 §5.2). So a child that never reads its stdin costs at most one window of
//! server memory, and the client's other frames — a SIGNAL above all — are still read.
//!
//! # On a pseudo-terminal
//! A command started with a PTY ([`SpawnSpec::pty`], `exec -t`) has one descriptor, the PTY
//! master, where a plain command has three pipes. The I/O layer shows it as the same two
//! sources: the master read as [`OutputPipe::Stdout`] and written as the stdin pipe (stdout
//! and stderr are one stream under a terminal, as in ssh, so there is no stderr: the session
//! starts with it closed). Everything else — the credit window, backpressure, the output cap,
//! the time limit, the drain deadline and the group kill — is the same code. What differs:
//! a RESIZE from the client becomes [`ChildAction::Resize`]; STDIN_EOF writes the terminal's
//! end-of-file character (`^D`, VEOF) instead of closing anything, since closing the master
//! would hang up the terminal and lose the output.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::buffer::{Buf, BufferPool};
use crate::limits::Limits;
use crate::proto::ErrorCode;
use crate::proto::exec::{EndReason, Exit, PtyRequest, Resize, Signal, Started, Termination};
use crate::timer::Tick;

/// A child process as the I/O layer knows it: an opaque handle, valid until
/// [`Children::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChildId(pub u32);

/// One of a command's two output pipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputPipe {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

impl OutputPipe {
    /// Both, in the order they are read.
    pub const BOTH: [OutputPipe; 2] = [OutputPipe::Stdout, OutputPipe::Stderr];

    fn bit(self) -> u8 {
        match self {
            OutputPipe::Stdout => Open::STDOUT,
            OutputPipe::Stderr => Open::STDERR,
        }
    }
}

/// Which of a child's descriptors a readiness event is about: its pipes, and its pidfd
/// (readable once the process has exited).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChildSource {
    /// The stdin pipe (writable).
    Stdin,
    /// The stdout pipe (readable).
    Stdout,
    /// The stderr pipe (readable).
    Stderr,
    /// The pidfd (readable: exited).
    Exit,
}

impl ChildSource {
    /// All four, in token order.
    pub const ALL: [ChildSource; 4] = [
        ChildSource::Stdin,
        ChildSource::Stdout,
        ChildSource::Stderr,
        ChildSource::Exit,
    ];
}

/// What to start: the parsed EXEC request, checked.
#[derive(Clone, Copy, Debug)]
pub struct SpawnSpec<'a> {
    /// Program and arguments.
    pub argv: &'a [&'a [u8]],
    /// Working directory relative to the server's root ("" = the root).
    pub cwd: &'a str,
    /// Whether stdin is a pipe from the server (else `/dev/null`). Ignored with a PTY, which
    /// is stdin, stdout and stderr at once.
    pub stdin: bool,
    /// Run it on a pseudo-terminal of this size and `TERM`, as a session leader with the
    /// terminal as its controlling terminal.
    pub pty: Option<PtyRequest<'a>>,
}

/// A started child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spawned {
    /// The I/O layer's handle.
    pub child: ChildId,
    /// Its process id, which is also its process group id.
    pub pid: u32,
}

/// Why a command could not start, with the text for the client. Each is answered with an ERROR
/// on the request's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpawnError {
    /// The program or the working directory does not exist.
    NotFound(String),
    /// Not executable, or the working directory is not permitted (outside the root, a symlink).
    PermissionDenied(String),
    /// Too many commands on the server, or out of descriptors or processes.
    LimitReached(String),
    /// Anything else.
    Failed(String),
}

impl SpawnError {
    /// The ERROR code the client gets.
    pub fn code(&self) -> ErrorCode {
        match self {
            SpawnError::NotFound(_) => ErrorCode::NotFound,
            SpawnError::PermissionDenied(_) => ErrorCode::PermissionDenied,
            SpawnError::LimitReached(_) => ErrorCode::LimitReached,
            SpawnError::Failed(_) => ErrorCode::SpawnFailed,
        }
    }

    /// The text the client gets.
    pub fn text(&self) -> &str {
        match self {
            SpawnError::NotFound(text)
            | SpawnError::PermissionDenied(text)
            | SpawnError::LimitReached(text)
            | SpawnError::Failed(text) => text,
        }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.text())
    }
}

/// What a connection needs from the I/O layer to run commands. The reactor implements it over
/// real processes (`ChildTable`, in `sys/process.rs`); tests script it
/// (`testkit::ScriptedChildren`, with the `testkit` feature).
///
/// Reads and writes follow the socket rules: `WouldBlock` means "wait for the next event", a
/// read of 0 is EOF.
pub trait Children {
    /// Starts a command as this connection's child number `child_number` (the sub-source its
    /// pipes are registered under).
    fn spawn(&mut self, child_number: u8, spec: &SpawnSpec<'_>) -> Result<Spawned, SpawnError>;
    /// Reads output from one pipe.
    fn read(&mut self, child: ChildId, pipe: OutputPipe, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes to the command's stdin.
    fn write_stdin(&mut self, child: ChildId, bytes: &[u8]) -> io::Result<usize>;
    /// Closes the command's stdin (EOF for the command).
    fn close_stdin(&mut self, child: ChildId);
    /// Closes an output pipe (EOF seen, or the drain deadline passed).
    fn close_output(&mut self, child: ChildId, pipe: OutputPipe);
    /// Sends `signal` to the command's process group.
    fn signal(&mut self, child: ChildId, signal: Signal) -> io::Result<()>;
    /// How the command ended, once it has; it stays unreaped (its process group id stays
    /// reserved) until [`Children::release`].
    fn exit_status(&mut self, child: ChildId) -> io::Result<Option<Termination>>;
    /// Sets the size of the command's terminal (the kernel then sends SIGWINCH to its
    /// foreground job). A command without a PTY has no terminal: `Ok` and nothing happens.
    /// The default is that of an I/O layer that starts nothing on a terminal.
    fn resize(&mut self, child: ChildId, size: Resize) -> io::Result<()> {
        let _ = (child, size);
        Ok(())
    }
    /// The connection is done with the child: whatever is left of its process group is killed
    /// (TERM then KILL if it is still running), and it is reaped. `reason` is for the log.
    fn release(&mut self, child: ChildId, reason: EndReason);
}

/// Open-pipe bits of a session.
struct Open;

impl Open {
    const STDOUT: u8 = 1 << 0;
    const STDERR: u8 = 1 << 1;
    /// The stdin pipe exists and is not closed.
    const STDIN: u8 = 1 << 2;
}

/// Something the connection must do to the child for the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChildAction {
    /// Send this signal to the process group.
    Signal(Signal),
    /// Close the command's stdin.
    CloseStdin,
    /// Close this output pipe: the drain deadline passed with it still open.
    CloseOutput(OutputPipe),
    /// Set the size of the command's terminal.
    Resize(Resize),
}

/// The client sent more STDIN than its window allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WindowExceeded {
    /// Bytes in the frame.
    pub sent: usize,
    /// Credit the client had.
    pub credit: u64,
}

impl fmt::Display for WindowExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "STDIN of {} bytes with only {} bytes of credit",
            self.sent, self.credit
        )
    }
}

/// One running command. See the module docs.
#[derive(Debug)]
pub(crate) struct ExecSession {
    pid: u32,
    open: u8,
    /// Signals still to send, one bit per [`Signal`].
    signals: u8,
    close_stdin_pending: bool,
    /// The client sent STDIN_EOF.
    stdin_eof: bool,
    /// Why the server last signalled the group.
    reason: EndReason,
    exit: Option<Termination>,
    /// Start plus the time limit.
    run_deadline: Tick,
    /// TERM plus the kill grace; [`Tick::NEVER`] until a TERM was sent.
    kill_deadline: Tick,
    /// After the exit: when an output pipe that has had nothing to read may be closed (the
    /// exit, or the last output read after it, plus the drain timeout). [`Tick::NEVER`] until
    /// the exit was seen.
    drain_deadline: Tick,
    /// After the exit: when every output pipe is closed, read or not — the time limit, or the
    /// drain deadline at the exit if that is later. Bounds a grandchild that writes forever and
    /// a client that never reads.
    close_deadline: Tick,
    /// Output pipes with bytes the server held back from reading (the outbox full, the turn's
    /// budget spent): the drain deadline does not close them, since the waiting was ours.
    held: u8,
    kill_sent: bool,
    /// STDIN bytes received and not yet written to the pipe.
    stdin: Option<Box<Buf>>,
    /// Bytes the client may still send.
    stdin_credit: u64,
    /// Bytes written to the pipe (or discarded) and not yet returned as credit.
    stdin_unacked: u64,
    window: u32,
    /// Output bytes that may still be forwarded before the cap.
    output_left: u64,
    /// It runs on a pseudo-terminal.
    pty: bool,
    /// The latest RESIZE not yet applied (only the last one matters).
    resize: Option<Resize>,
    /// The `^D`s queued for a STDIN_EOF under a PTY (one or three): bytes the client has no
    /// credit for, so their write returns no credit.
    eof_chars_queued: u8,
    /// The last STDIN byte queued for the terminal ended a line (`\n` or `\r`), or none was:
    /// one `^D` is then the end of file; after a partial line it only hands the line over.
    stdin_at_line_start: bool,
}

impl ExecSession {
    /// A session for a command that just started with `pid`. `timeout_ms` is the client's
    /// request (0: the server's limit); the server's limit always wins.
    pub(crate) fn new(
        pid: u32,
        stdin: bool,
        timeout_ms: u32,
        now: Tick,
        limits: &Limits,
    ) -> ExecSession {
        let requested = Duration::from_millis(u64::from(timeout_ms));
        let limit = if timeout_ms == 0 {
            limits.exec_timeout
        } else {
            requested.min(limits.exec_timeout)
        };
        let window = if stdin { limits.stdin_window } else { 0 };
        let mut open = Open::STDOUT | Open::STDERR;
        if stdin {
            open |= Open::STDIN;
        }
        ExecSession {
            pid,
            open,
            signals: 0,
            close_stdin_pending: false,
            stdin_eof: false,
            reason: EndReason::None,
            exit: None,
            run_deadline: now.after(limit),
            kill_deadline: Tick::NEVER,
            drain_deadline: Tick::NEVER,
            close_deadline: Tick::NEVER,
            held: 0,
            kill_sent: false,
            stdin: None,
            stdin_credit: u64::from(window),
            stdin_unacked: 0,
            window,
            output_left: limits.exec_output_cap,
            pty: false,
            resize: None,
            eof_chars_queued: 0,
            stdin_at_line_start: true,
        }
    }

    /// The command runs on a pseudo-terminal (see the module docs): one output stream, a stdin
    /// that is always open, the same window as a piped stdin.
    pub(crate) fn on_pty(mut self, limits: &Limits) -> ExecSession {
        self.pty = true;
        self.open = Open::STDOUT | Open::STDIN;
        self.window = limits.stdin_window;
        self.stdin_credit = u64::from(limits.stdin_window);
        self
    }

    /// The STARTED message for this session.
    pub(crate) fn started(&self) -> Started {
        Started {
            pid: self.pid,
            stdin_window: self.window,
        }
    }

    /// The command's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    // === Inputs ===

    /// STDIN bytes from the client. Beyond the client's credit this is a protocol violation
    /// (the connection ends); bytes for a stdin the command has closed are dropped, and their
    /// credit is returned all the same so the client never waits for it.
    pub(crate) fn handle_stdin(
        &mut self,
        bytes: &[u8],
        pool: &mut BufferPool,
        max_buffer: usize,
    ) -> Result<(), WindowExceeded> {
        let len = bytes.len() as u64;
        if len > self.stdin_credit {
            return Err(WindowExceeded {
                sent: bytes.len(),
                credit: self.stdin_credit,
            });
        }
        self.stdin_credit -= len;
        if self.open & Open::STDIN == 0 || self.stdin_eof {
            self.stdin_unacked += len;
            return Ok(());
        }
        if let Some(&last) = bytes.last() {
            self.stdin_at_line_start = last == b'\n' || last == b'\r';
            let buf = self.stdin.get_or_insert_with(|| pool.take());
            buf.append(bytes, max_buffer);
        }
        Ok(())
    }

    /// STDIN_EOF from the client: the pipe is closed once what is queued has been written.
    /// Under a PTY the terminal's end-of-file character (`^D`) is queued instead, once — three
    /// times after a partial line: in canonical mode the first only hands the line over, and
    /// a shell takes the next end of file as the end of that unfinished command (it runs it
    /// and prompts again), so only the third ends its input. The terminal stays open (it is the
    /// command's output too), and later STDIN is dropped.
    pub(crate) fn handle_stdin_eof(&mut self, pool: &mut BufferPool, max_buffer: usize) {
        if self.pty {
            if !self.stdin_eof && self.open & Open::STDIN != 0 {
                self.stdin_eof = true;
                let eof: &[u8] = if self.stdin_at_line_start {
                    &[VEOF]
                } else {
                    &[VEOF, VEOF, VEOF]
                };
                self.eof_chars_queued = eof.len() as u8;
                let buf = self.stdin.get_or_insert_with(|| pool.take());
                buf.append(eof, max_buffer);
            }
            return;
        }
        self.stdin_eof = true;
        if self.stdin_pending().is_empty() && self.open & Open::STDIN != 0 {
            self.close_stdin_pending = true;
        }
    }

    /// STDIN bytes waiting for the pipe.
    pub(crate) fn stdin_pending(&self) -> &[u8] {
        self.stdin.as_ref().map_or(&[], |buf| buf.data())
    }

    /// `n` queued STDIN bytes went into the pipe.
    pub(crate) fn handle_stdin_written(&mut self, n: usize, pool: &mut BufferPool) {
        if let Some(buf) = self.stdin.as_mut() {
            buf.consume(n);
        }
        self.stdin_unacked += n as u64;
        pool.give_if_empty(&mut self.stdin);
        if self.eof_chars_queued > 0 && self.stdin.is_none() {
            // The `^D`s were the last bytes queued, and they were not the client's.
            self.stdin_unacked = self
                .stdin_unacked
                .saturating_sub(u64::from(self.eof_chars_queued));
            self.eof_chars_queued = 0;
        }
        if self.pty {
            return; // the terminal stays open: it is the output too
        }
        if self.stdin_eof && self.stdin.is_none() && self.open & Open::STDIN != 0 {
            self.close_stdin_pending = true;
        }
    }

    /// Writing to the pipe failed (`EPIPE`: the command closed its stdin). Queued bytes are
    /// dropped, and later ones will be.
    pub(crate) fn handle_stdin_closed(&mut self, pool: &mut BufferPool) {
        if let Some(buf) = self.stdin.take() {
            self.stdin_unacked += buf.len() as u64;
            pool.give(buf);
        }
        if self.open & Open::STDIN != 0 {
            self.close_stdin_pending = true;
        }
    }

    /// A RESIZE from the client: applied to a terminal, ignored without one.
    pub(crate) fn handle_resize(&mut self, size: Resize) {
        if self.pty && self.exit.is_none() {
            self.resize = Some(size);
        }
    }

    /// A SIGNAL from the client.
    pub(crate) fn handle_signal(&mut self, signal: Signal) {
        if self.exit.is_some() {
            return; // nothing left to signal; the group is killed at release anyway
        }
        // Once the server is stopping the command itself (time limit, output cap, shutdown), a
        // client's signal is still forwarded but does not take over the cause: the server's TERM
        // is the signal that ends it.
        if self.kill_deadline == Tick::NEVER {
            self.note_reason(EndReason::ClientSignal);
        }
        self.queue_signal(signal);
    }

    /// How many output bytes may be forwarded now (0 once the cap is reached: what is read then
    /// is discarded).
    pub(crate) fn output_allowance(&self) -> u64 {
        self.output_left
    }

    /// `n` output bytes were read from `pipe` and forwarded.
    pub(crate) fn handle_output(&mut self, pipe: OutputPipe, n: usize, now: Tick, limits: &Limits) {
        self.output_left = self.output_left.saturating_sub(n as u64);
        self.held &= !pipe.bit();
        if self.exit.is_some() {
            // Output is still coming (a grandchild, or what the command left in the pipe):
            // the drain deadline counts from the last of it.
            self.drain_deadline = now
                .after(limits.exec_drain_timeout)
                .min(self.close_deadline);
        }
    }

    /// `pipe` had bytes, and the server held back from reading them (its outbox is full, or
    /// the turn's budget is spent).
    pub(crate) fn handle_output_held(&mut self, pipe: OutputPipe) {
        self.held |= pipe.bit();
    }

    /// `pipe` had nothing to read just now.
    pub(crate) fn handle_output_drained(&mut self, pipe: OutputPipe) {
        self.held &= !pipe.bit();
    }

    /// Output arrived past the cap and was discarded: the command is stopped (and, if it has
    /// exited, its pipes closed: whatever still writes to them is a grandchild).
    pub(crate) fn handle_output_over_cap(&mut self, now: Tick, limits: &Limits) {
        if self.exit.is_some() {
            self.close_deadline = now;
        } else if self.kill_deadline == Tick::NEVER {
            self.terminate(EndReason::OutputCap, now, limits.exec_kill_grace);
        }
    }

    /// An output pipe reached EOF (or failed).
    pub(crate) fn handle_eof(&mut self, pipe: OutputPipe) {
        self.open &= !pipe.bit();
        self.held &= !pipe.bit();
    }

    /// The command has exited.
    pub(crate) fn handle_exit(&mut self, termination: Termination, now: Tick, limits: &Limits) {
        if self.exit.is_none() {
            self.exit = Some(termination);
            self.drain_deadline = now.after(limits.exec_drain_timeout);
            self.close_deadline = self.run_deadline.max(self.drain_deadline);
            self.signals = 0;
        }
    }

    /// A deadline passed (call when `now >= poll_timeout()`).
    pub(crate) fn handle_timeout(&mut self, now: Tick, limits: &Limits) {
        if self.exit.is_none() {
            if now >= self.run_deadline && self.kill_deadline == Tick::NEVER {
                self.terminate(EndReason::Timeout, now, limits.exec_kill_grace);
            }
            if now >= self.kill_deadline && !self.kill_sent {
                self.kill_sent = true;
                self.queue_signal(Signal::Kill);
            }
        }
    }

    /// The server is shutting down: TERM now, KILL after `kill_grace`.
    pub(crate) fn handle_shutdown(&mut self, now: Tick, kill_grace: Duration) {
        if self.exit.is_none() && self.kill_deadline == Tick::NEVER {
            self.terminate(EndReason::Shutdown, now, kill_grace);
        }
    }

    // === Outputs ===

    /// The next thing to do to the child, if any. Drain it after every input.
    pub(crate) fn poll_action(&mut self, now: Tick) -> Option<ChildAction> {
        if self.close_stdin_pending {
            self.close_stdin_pending = false;
            self.open &= !Open::STDIN;
            return Some(ChildAction::CloseStdin);
        }
        if let Some(size) = self.resize.take() {
            return Some(ChildAction::Resize(size));
        }
        if self.signals != 0 {
            for signal in [Signal::Kill, Signal::Term, Signal::Int, Signal::Hup] {
                let bit = signal_bit(signal);
                if self.signals & bit != 0 {
                    self.signals &= !bit;
                    return Some(ChildAction::Signal(signal));
                }
            }
        }
        if self.exit.is_some() {
            // A pipe the server was holding back from is not idle: only the close deadline
            // ends it.
            let closable = if now >= self.close_deadline {
                self.open
            } else if now >= self.drain_deadline {
                self.open & !self.held
            } else {
                0
            };
            for pipe in OutputPipe::BOTH {
                if closable & pipe.bit() != 0 {
                    self.open &= !pipe.bit();
                    self.held &= !pipe.bit();
                    return Some(ChildAction::CloseOutput(pipe));
                }
            }
        }
        None
    }

    /// Credit to grant the client, once at least half a window has gone into the pipe (or been
    /// dropped): a WINDOW frame per half window, not per write.
    pub(crate) fn poll_window(&mut self) -> Option<u32> {
        let threshold = u64::from(self.window / 2).max(1);
        if self.stdin_unacked >= threshold {
            let increment = u32::try_from(self.stdin_unacked).unwrap_or(u32::MAX);
            self.stdin_unacked -= u64::from(increment);
            self.stdin_credit += u64::from(increment);
            return Some(increment);
        }
        None
    }

    /// When [`ExecSession::handle_timeout`] is next due.
    pub(crate) fn poll_timeout(&self) -> Tick {
        if self.exit.is_some() {
            let open = self.open & (Open::STDOUT | Open::STDERR);
            return if open == 0 {
                Tick::NEVER
            } else if open & !self.held == 0 {
                self.close_deadline
            } else {
                self.drain_deadline.min(self.close_deadline)
            };
        }
        if self.kill_deadline == Tick::NEVER {
            self.run_deadline
        } else if self.kill_sent {
            Tick::NEVER
        } else {
            self.kill_deadline
        }
    }

    /// Whether either output pipe is still open.
    pub(crate) fn outputs_open(&self) -> bool {
        self.open & (Open::STDOUT | Open::STDERR) != 0
    }

    /// Whether the exit has been seen.
    pub(crate) fn exited(&self) -> bool {
        self.exit.is_some()
    }

    /// Whether the stdin pipe is still open.
    pub(crate) fn stdin_open(&self) -> bool {
        self.open & Open::STDIN != 0
    }

    /// The EXIT to send, once the command has exited and both outputs are closed.
    pub(crate) fn poll_exit(&self) -> Option<Exit> {
        let termination = self.exit?;
        if self.open & (Open::STDOUT | Open::STDERR) != 0 {
            return None;
        }
        Some(Exit {
            termination,
            reason: self.reason,
        })
    }

    /// Why the server last signalled the command, if it did.
    pub(crate) fn reason(&self) -> EndReason {
        self.reason
    }

    /// Returns held buffers to the pool (when the stream ends).
    pub(crate) fn release(&mut self, pool: &mut BufferPool) {
        if let Some(buf) = self.stdin.take() {
            pool.give(buf);
        }
    }

    fn terminate(&mut self, reason: EndReason, now: Tick, kill_grace: Duration) {
        self.note_reason(reason);
        self.queue_signal(Signal::Term);
        if self.kill_deadline == Tick::NEVER {
            self.kill_deadline = now.after(kill_grace);
        }
    }

    /// The latest cause wins: EXIT names the cause of the signal that ended the command (a
    /// client's SIGINT the command ignored, then the time limit, is reported as the time limit;
    /// a client's signal after the server's own TERM does not count, see `handle_signal`).
    fn note_reason(&mut self, reason: EndReason) {
        self.reason = reason;
    }

    fn queue_signal(&mut self, signal: Signal) {
        self.signals |= signal_bit(signal);
    }
}

/// The end-of-file character a STDIN_EOF writes to a terminal: `^D`, VEOF's default, which the
/// server never changes (the command may; then it gets the byte as it is).
const VEOF: u8 = 0x04;

fn signal_bit(signal: Signal) -> u8 {
    match signal {
        Signal::Hup => 1 << 0,
        Signal::Int => 1 << 1,
        Signal::Kill => 1 << 2,
        Signal::Term => 1 << 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            exec_timeout: Duration::from_secs(10),
            exec_kill_grace: Duration::from_secs(2),
            exec_drain_timeout: Duration::from_secs(1),
            stdin_window: 8,
            exec_output_cap: 100,
            ..Limits::default()
        }
    }

    fn drain_actions(session: &mut ExecSession, now: Tick) -> Vec<ChildAction> {
        std::iter::from_fn(|| session.poll_action(now)).collect()
    }

    // === Stdin window ===

    #[test]
    fn stdin_within_the_window_is_queued_and_credit_returns_per_half_window() {
        let limits = limits();
        let mut pool = BufferPool::new(64, 2);
        let mut session = ExecSession::new(42, true, 0, Tick(0), &limits);
        assert_eq!(session.started().stdin_window, 8);
        session.handle_stdin(b"abcdefgh", &mut pool, 64).unwrap();
        assert_eq!(
            session.handle_stdin(b"i", &mut pool, 64),
            Err(WindowExceeded { sent: 1, credit: 0 })
        );
        assert_eq!(session.stdin_pending(), b"abcdefgh");
        session.handle_stdin_written(3, &mut pool);
        assert_eq!(
            session.poll_window(),
            None,
            "3 bytes is less than half a window"
        );
        session.handle_stdin_written(1, &mut pool);
        assert_eq!(session.poll_window(), Some(4));
        session.handle_stdin(b"ijkl", &mut pool, 64).unwrap();
        assert_eq!(session.stdin_pending(), b"efghijkl");
    }

    #[test]
    fn without_stdin_the_window_is_zero_and_any_stdin_exceeds_it() {
        let mut pool = BufferPool::new(64, 2);
        let mut session = ExecSession::new(42, false, 0, Tick(0), &limits());
        assert_eq!(session.started().stdin_window, 0);
        assert!(session.handle_stdin(b"x", &mut pool, 64).is_err());
        assert!(session.handle_stdin(b"", &mut pool, 64).is_ok());
    }

    #[test]
    fn stdin_eof_closes_the_pipe_once_the_queue_is_written() {
        let mut pool = BufferPool::new(64, 2);
        let mut session = ExecSession::new(42, true, 0, Tick(0), &limits());
        session.handle_stdin(b"ab", &mut pool, 64).unwrap();
        session.handle_stdin_eof(&mut pool, 64);
        assert_eq!(drain_actions(&mut session, Tick(0)), []);
        session.handle_stdin_written(2, &mut pool);
        assert_eq!(
            drain_actions(&mut session, Tick(0)),
            [ChildAction::CloseStdin]
        );
        assert!(!session.stdin_open());
    }

    #[test]
    fn a_command_that_closed_stdin_still_returns_the_clients_credit() {
        let mut pool = BufferPool::new(64, 2);
        let mut session = ExecSession::new(42, true, 0, Tick(0), &limits());
        session.handle_stdin(b"abcd", &mut pool, 64).unwrap();
        session.handle_stdin_closed(&mut pool);
        assert_eq!(
            drain_actions(&mut session, Tick(0)),
            [ChildAction::CloseStdin]
        );
        assert_eq!(session.poll_window(), Some(4));
        session.handle_stdin(b"efghijkl", &mut pool, 64).unwrap();
        assert_eq!(session.stdin_pending(), b"", "dropped, not queued");
        assert_eq!(session.poll_window(), Some(8));
    }

    // === On a PTY ===

    #[test]
    fn on_a_pty_there_is_no_stderr_and_stdin_has_the_window_whatever_the_flag() {
        let limits = limits();
        let session = ExecSession::new(42, false, 0, Tick(0), &limits).on_pty(&limits);
        assert_eq!(session.started().stdin_window, 8);
        assert!(session.stdin_open());
        let mut session = session;
        session.handle_eof(OutputPipe::Stdout);
        session.handle_exit(Termination::Exited(3), Tick(5), &limits);
        assert_eq!(
            session.poll_exit().map(|exit| exit.shell_code()),
            Some(3),
            "stdout alone ends the output"
        );
    }

    #[test]
    fn stdin_eof_on_a_pty_writes_one_ctrl_d_keeps_the_terminal_and_returns_only_client_credit() {
        let limits = limits();
        let mut pool = BufferPool::new(64, 2);
        let mut session = ExecSession::new(42, true, 0, Tick(0), &limits).on_pty(&limits);
        session.handle_stdin(b"ab\r", &mut pool, 64).unwrap();
        session.handle_stdin_eof(&mut pool, 64);
        session.handle_stdin_eof(&mut pool, 64);
        assert_eq!(
            session.stdin_pending(),
            b"ab\r\x04",
            "one ^D, after the bytes"
        );
        session.handle_stdin_written(4, &mut pool);
        assert_eq!(
            drain_actions(&mut session, Tick(0)),
            [],
            "nothing is closed"
        );
        assert!(session.stdin_open());
        assert_eq!(session.poll_window(), None, "3 bytes of credit: under half");
        session.handle_stdin(b"d", &mut pool, 64).unwrap();
        assert_eq!(session.stdin_pending(), b"", "after EOF, dropped");
        assert_eq!(session.poll_window(), Some(4), "ab, CR and d, not the ^D");
    }

    #[test]
    fn stdin_eof_on_a_pty_after_a_partial_line_writes_three_ctrl_ds_and_credits_none() {
        let limits = limits();
        let mut pool = BufferPool::new(64, 2);
        let mut session = ExecSession::new(42, true, 0, Tick(0), &limits).on_pty(&limits);
        session.handle_stdin(b"abc", &mut pool, 64).unwrap();
        session.handle_stdin_eof(&mut pool, 64);
        assert_eq!(
            session.stdin_pending(),
            b"abc\x04\x04\x04",
            "the first ^D hands the line over, the second ends that command, the third the input"
        );
        session.handle_stdin_written(6, &mut pool);
        assert_eq!(session.poll_window(), None, "3 bytes of credit: under half");
        session.handle_stdin(b"d", &mut pool, 64).unwrap();
        assert_eq!(session.poll_window(), Some(4), "abc and d, not the ^Ds");

        let mut empty = ExecSession::new(42, true, 0, Tick(0), &limits).on_pty(&limits);
        empty.handle_stdin_eof(&mut pool, 64);
        assert_eq!(empty.stdin_pending(), b"\x04", "no input at all: one ^D");
    }

    #[test]
    fn resize_keeps_the_latest_size_and_only_on_a_pty() {
        let limits = limits();
        let mut plain = ExecSession::new(42, true, 0, Tick(0), &limits);
        plain.handle_resize(Resize { rows: 1, cols: 1 });
        assert_eq!(drain_actions(&mut plain, Tick(0)), []);
        let mut session = ExecSession::new(42, true, 0, Tick(0), &limits).on_pty(&limits);
        session.handle_resize(Resize { rows: 10, cols: 20 });
        session.handle_resize(Resize { rows: 30, cols: 40 });
        assert_eq!(
            drain_actions(&mut session, Tick(0)),
            [ChildAction::Resize(Resize { rows: 30, cols: 40 })]
        );
    }

    // === Deadlines and signals ===

    #[test]
    fn time_limit_sends_term_then_kill_after_the_grace() {
        let limits = limits();
        let mut session = ExecSession::new(42, false, 0, Tick(0), &limits);
        assert_eq!(session.poll_timeout(), Tick(10_000));
        session.handle_timeout(Tick(10_000), &limits);
        assert_eq!(
            drain_actions(&mut session, Tick(10_000)),
            [ChildAction::Signal(Signal::Term)]
        );
        assert_eq!(session.poll_timeout(), Tick(12_000));
        session.handle_timeout(Tick(12_000), &limits);
        assert_eq!(
            drain_actions(&mut session, Tick(12_000)),
            [ChildAction::Signal(Signal::Kill)]
        );
        assert_eq!(
            session.poll_timeout(),
            Tick::NEVER,
            "only the exit is awaited"
        );
        session.handle_exit(
            Termination::Signaled {
                signal: 9,
                core_dumped: false,
            },
            Tick(12_005),
            &limits,
        );
        session.handle_eof(OutputPipe::Stdout);
        session.handle_eof(OutputPipe::Stderr);
        let exit = session.poll_exit().unwrap();
        assert_eq!(exit.reason, EndReason::Timeout);
        assert_eq!(exit.shell_code(), 137);
    }

    #[test]
    fn a_shorter_client_timeout_wins_and_a_longer_one_does_not() {
        let limits = limits();
        assert_eq!(
            ExecSession::new(1, false, 500, Tick(0), &limits).poll_timeout(),
            Tick(500)
        );
        assert_eq!(
            ExecSession::new(1, false, 60_000, Tick(0), &limits).poll_timeout(),
            Tick(10_000)
        );
    }

    #[test]
    fn exit_waits_for_both_pipes_or_the_drain_deadline() {
        let limits = limits();
        let mut session = ExecSession::new(42, false, 0, Tick(0), &limits);
        session.handle_exit(Termination::Exited(0), Tick(100), &limits);
        session.handle_eof(OutputPipe::Stdout);
        assert_eq!(session.poll_exit(), None, "stderr still open");
        assert_eq!(session.poll_timeout(), Tick(1_100));
        assert_eq!(drain_actions(&mut session, Tick(1_099)), []);
        assert_eq!(
            drain_actions(&mut session, Tick(1_100)),
            [ChildAction::CloseOutput(OutputPipe::Stderr)]
        );
        assert_eq!(
            session.poll_exit(),
            Some(Exit {
                termination: Termination::Exited(0),
                reason: EndReason::None
            })
        );
    }

    #[test]
    fn the_latest_cause_the_server_signalled_for_is_the_one_reported() {
        let limits = limits();
        let mut session = ExecSession::new(42, false, 0, Tick(0), &limits);
        session.handle_signal(Signal::Int);
        session.handle_shutdown(Tick(5), limits.exec_kill_grace);
        assert_eq!(
            drain_actions(&mut session, Tick(5)),
            [
                ChildAction::Signal(Signal::Term),
                ChildAction::Signal(Signal::Int)
            ]
        );
        assert_eq!(session.reason(), EndReason::Shutdown);
    }

    #[test]
    fn output_past_the_cap_stops_the_command_even_after_a_client_signal() {
        let limits = limits();
        let mut session = ExecSession::new(42, false, 0, Tick(0), &limits);
        session.handle_signal(Signal::Int);
        drain_actions(&mut session, Tick(0));
        session.handle_output(OutputPipe::Stdout, 100, Tick(1), &limits);
        session.handle_output_over_cap(Tick(2), &limits);
        assert_eq!(
            drain_actions(&mut session, Tick(2)),
            [ChildAction::Signal(Signal::Term)]
        );
        assert_eq!(session.reason(), EndReason::OutputCap);
        assert_eq!(
            session.poll_timeout(),
            Tick(2_002),
            "and SIGKILL after the grace"
        );
    }

    #[test]
    fn output_the_server_held_back_is_not_cut_by_the_drain_deadline() {
        let limits = limits();
        let mut session = ExecSession::new(42, false, 0, Tick(0), &limits);
        session.handle_output_held(OutputPipe::Stdout);
        session.handle_eof(OutputPipe::Stderr);
        session.handle_exit(Termination::Exited(0), Tick(100), &limits);
        assert_eq!(
            session.poll_timeout(),
            Tick(10_000),
            "only the time limit bounds a pipe the server is holding back from"
        );
        assert_eq!(drain_actions(&mut session, Tick(5_000)), []);
        // The client reads again: output flows, then the pipe is empty for a while.
        session.handle_output(OutputPipe::Stdout, 10, Tick(6_000), &limits);
        session.handle_output_drained(OutputPipe::Stdout);
        assert_eq!(session.poll_timeout(), Tick(7_000));
        assert_eq!(
            drain_actions(&mut session, Tick(7_000)),
            [ChildAction::CloseOutput(OutputPipe::Stdout)]
        );
        assert!(session.poll_exit().is_some());
    }

    #[test]
    fn a_grandchild_writing_forever_is_cut_at_the_time_limit() {
        let limits = limits();
        let mut session = ExecSession::new(42, false, 0, Tick(0), &limits);
        session.handle_eof(OutputPipe::Stderr);
        session.handle_exit(Termination::Exited(0), Tick(100), &limits);
        for at in (200..10_000).step_by(500) {
            session.handle_output(OutputPipe::Stdout, 1, Tick(at), &limits);
            assert_eq!(drain_actions(&mut session, Tick(at)), []);
        }
        assert_eq!(
            drain_actions(&mut session, Tick(10_000)),
            [ChildAction::CloseOutput(OutputPipe::Stdout)]
        );
    }

    #[test]
    fn a_client_signal_after_the_cap_stopped_the_command_does_not_rename_the_cause() {
        // Seen in exec_review under load: the cap's TERM went out, the client's SIGINT
        // (sent when it saw the first output) arrived after it, and EXIT said CLIENT_SIGNAL for a
        // command the cap ended.
        let limits = limits();
        let mut session = ExecSession::new(42, false, 0, Tick(0), &limits);
        session.handle_output(OutputPipe::Stdout, 100, Tick(1), &limits);
        session.handle_output_over_cap(Tick(2), &limits);
        drain_actions(&mut session, Tick(2));
        session.handle_signal(Signal::Int);
        assert_eq!(
            drain_actions(&mut session, Tick(3)),
            [ChildAction::Signal(Signal::Int)],
            "the signal is still forwarded"
        );
        assert_eq!(session.reason(), EndReason::OutputCap);
    }

    #[test]
    fn output_past_the_cap_stops_the_command() {
        let limits = limits();
        let mut session = ExecSession::new(42, false, 0, Tick(0), &limits);
        assert_eq!(session.output_allowance(), 100);
        session.handle_output(OutputPipe::Stdout, 100, Tick(1), &limits);
        assert_eq!(session.output_allowance(), 0);
        session.handle_output_over_cap(Tick(7), &limits);
        assert_eq!(
            drain_actions(&mut session, Tick(7)),
            [ChildAction::Signal(Signal::Term)]
        );
        assert_eq!(session.reason(), EndReason::OutputCap);
    }
}
