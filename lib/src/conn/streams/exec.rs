//! A command on its stream: the table entry for an EXEC ([`Exec`]), and each turn's I/O for it.
//!
//! [`Exec::pump`] moves a command's bytes: stdin from the stream's queue into the pipe, output
//! from the pipes into STDOUT/STDERR frames read straight into the outbox — only while the
//! outbox [may take more](crate::outbox::Outbox::may_produce) and within the turn's byte
//! budget — and, once the command has exited and its pipes are at EOF, the EXIT frame that
//! ends the stream.
//!
//! Each command has a *child number* (below [`CHILD_NUMBERS`]) that names its pipes and pidfd
//! in poll tokens; the table hands them out ([`Streams::free_child_number`]).
//!
//! [`Streams::free_child_number`]: super::Streams::free_child_number

use std::io::ErrorKind;

use log::{debug, info};

use crate::access::{CommandSlot, Grant};
use crate::buffer::BufferPool;
use crate::conn::context::{Budget, Context, Pumped};
use crate::limits::Limits;
use crate::metrics::access::{Outcome, Record};
use crate::outbox::Outbox;
use crate::proto::exec::{EndReason, ExecFlags, ExecRequest, Exit, Started, Window};
use crate::proto::{ErrorCode, FrameType, HEADER_LEN};
use crate::service::exec::{
    ChildAction, ChildId, ChildSource, Children, ExecSession, OutputPipe, SpawnSpec,
};
use crate::timer::Tick;

/// Child numbers per connection: 6 bits of a poll token.
pub(crate) const CHILD_NUMBERS: u8 = 64;

/// Smallest pipe read worth a frame header: below this much room, the outbox's buffer grows
/// rather than the output being cut into tiny frames.
const MIN_PIPE_READ: usize = 4 << 10;

/// Readiness bits of one command's descriptors.
struct Ready;

impl Ready {
    const STDIN: u8 = 1 << 0;
    const STDOUT: u8 = 1 << 1;
    const STDERR: u8 = 1 << 2;
    const EXIT: u8 = 1 << 3;

    fn of(source: ChildSource) -> u8 {
        match source {
            ChildSource::Stdin => Ready::STDIN,
            ChildSource::Stdout => Ready::STDOUT,
            ChildSource::Stderr => Ready::STDERR,
            ChildSource::Exit => Ready::EXIT,
        }
    }

    fn of_output(pipe: OutputPipe) -> u8 {
        match pipe {
            OutputPipe::Stdout => Ready::STDOUT,
            OutputPipe::Stderr => Ready::STDERR,
        }
    }
}

/// A running command: the table entry for an EXEC.
#[derive(Debug)]
pub(crate) struct Exec {
    /// Its child number in poll tokens.
    pub(crate) child_number: u8,
    /// The I/O layer's handle.
    child: ChildId,
    /// Readiness reported for its descriptors and not yet used up.
    ready: u8,
    /// The protocol state machine.
    pub(crate) session: ExecSession,
    /// Its place in its credential's `max_commands`, given back when it is dropped: when the
    /// stream ends, however it ends.
    _slot: Option<CommandSlot>,
}

impl Exec {
    /// Starts the command `request` asks for on `stream` through the I/O layer, in `cwd`
    /// (the request's, inside the credential's scope), its descriptors under `child_number`,
    /// and queues STARTED; if it cannot start, queues the ERROR instead (its text shown
    /// through `grant`) and returns its code, and `slot` goes back.
    pub(crate) fn spawn(
        stream: u32,
        request: &ExecRequest<'_>,
        cwd: &str,
        (child_number, slot): (u8, Option<CommandSlot>),
        grant: Option<&Grant>,
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
    ) -> Result<Exec, ErrorCode> {
        // Admission refuses EXEC where no command can run.
        let Some(children) = cx.children.as_deref_mut() else {
            return Err(ErrorCode::ExecDisabled);
        };
        let stdin = request.flags.contains(ExecFlags::STDIN);
        // With a PTY and no argv, the server's shell (admission checked it against the
        // credential's allowlist as this same argv).
        let shell = [cx.limits.exec_shell.as_bytes()];
        let argv: &[&[u8]] = if request.argv.is_empty() {
            &shell
        } else {
            &request.argv
        };
        let spec = SpawnSpec {
            argv,
            cwd,
            stdin,
            pty: request.pty,
        };
        let spawned = match children.spawn(child_number, &spec) {
            Ok(spawned) => spawned,
            Err(error) => {
                info!("stream {stream}: command refused: {error}");
                let text = grant.map_or(error.text().into(), |grant| grant.shown(error.text()));
                outbox
                    .replies(cx.pool, cx.limits)
                    .error(stream, error.code(), &text);
                return Err(error.code());
            }
        };
        cx.count(|metrics| metrics.commands_started += 1);
        let mut session =
            ExecSession::new(spawned.pid, stdin, request.timeout_ms, cx.now, cx.limits);
        if request.pty.is_some() {
            session = session.on_pty(cx.limits);
        }
        let started = session.started();
        debug!(
            "stream {stream}: started pid {} {:?}",
            spawned.pid,
            argv.iter()
                .map(|arg| String::from_utf8_lossy(arg))
                .collect::<Vec<_>>()
        );
        outbox.replies(cx.pool, cx.limits).part(
            FrameType::Started,
            stream,
            Started::PAYLOAD_LEN as u32,
            |out| started.emit(out),
        );
        Ok(Exec {
            child_number,
            child: spawned.child,
            ready: 0,
            session,
            _slot: slot,
        })
    }

    /// Records readiness reported for one of its descriptors.
    pub(crate) fn on_ready(&mut self, source: ChildSource) {
        self.ready |= Ready::of(source);
    }

    /// Whether it has work that needs no new readiness event: bytes to move with readiness in
    /// hand, or an exit to read.
    pub(crate) fn wants_turn(&self, may_produce: bool, bytes_left: bool) -> bool {
        let output = self.ready & (Ready::STDOUT | Ready::STDERR) != 0;
        let stdin = self.ready & Ready::STDIN != 0 && !self.session.stdin_pending().is_empty();
        self.ready & Ready::EXIT != 0 || stdin || (output && may_produce && bytes_left)
    }

    /// Moves the command's bytes as far as readiness, the outbox and the budget allow, and
    /// queues its EXIT once it is done (then [`Exec::end`] it).
    pub(crate) fn pump(
        &mut self,
        id: u32,
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
        budget: &mut Budget,
        record: &mut Record,
    ) -> Pumped {
        let Some(children) = cx.children.as_deref_mut() else {
            return Pumped::Running(false);
        };
        let mut io = CommandIo {
            id,
            children,
            pool: cx.pool,
            limits: cx.limits,
            now: cx.now,
            record,
        };
        let progress = io.pump_one(self, outbox, budget);
        let Some(exit) = self.session.poll_exit() else {
            return Pumped::Running(progress);
        };
        outbox.replies(cx.pool, cx.limits).reply(
            FrameType::Exit,
            id,
            Exit::PAYLOAD_LEN as u32,
            |out| exit.emit(out),
        );
        debug!("stream {id}: pid {} {exit}", self.session.pid());
        record.outcome = Some(Outcome::Exit(exit));
        Pumped::Finished
    }

    /// The command is over for this connection, for `reason` (its own, once it has exited):
    /// its buffers go back to the pool and its process to the I/O layer, which stops its group
    /// if it still runs and reaps it.
    pub(crate) fn end(mut self, cx: &mut Context<'_>, reason: EndReason) {
        self.session.release(cx.pool);
        if let Some(children) = cx.children.as_deref_mut() {
            children.release(self.child, reason);
        }
    }
}

/// What moving one command's bytes borrows from the connection's [`Context`]: the I/O layer,
/// the pool, the limits and the time.
struct CommandIo<'a> {
    /// The command's stream id (for the log).
    id: u32,
    children: &'a mut dyn Children,
    pool: &'a mut BufferPool,
    limits: &'a Limits,
    now: Tick,
    /// Its access line's byte counts.
    record: &'a mut Record,
}

impl CommandIo<'_> {
    /// One command's I/O for this turn.
    fn pump_one(&mut self, command: &mut Exec, outbox: &mut Outbox, budget: &mut Budget) -> bool {
        let mut progress = self.run_actions(command);
        if command.ready & Ready::EXIT != 0 {
            command.ready &= !Ready::EXIT;
            progress |= self.check_exit(command);
        }
        progress |= self.write_stdin(command);
        if let Some(increment) = command.session.poll_window() {
            let window = Window { increment };
            outbox.replies(self.pool, self.limits).part(
                FrameType::Window,
                self.id,
                Window::PAYLOAD_LEN as u32,
                |out| window.emit(out),
            );
            progress = true;
        }
        let outputs_were_open = command.session.outputs_open();
        progress |= self.read_output(command, outbox, budget);
        if outputs_were_open && !command.session.outputs_open() && !command.session.exited() {
            // Both pipes just reached EOF. A process closes them as it exits, a moment before
            // its pidfd turns readable, so the exit is most likely there already: looking now
            // saves the wakeup for the pidfd event (which, if it is not, still comes).
            progress |= self.check_exit(command);
        }
        progress |= self.run_actions(command);
        progress
    }

    /// Reads the command's exit status, if it has exited; returns whether it had.
    fn check_exit(&mut self, command: &mut Exec) -> bool {
        match self.children.exit_status(command.child) {
            Ok(Some(termination)) => {
                command
                    .session
                    .handle_exit(termination, self.now, self.limits);
                true
            }
            Ok(None) => false, // not yet: the pidfd fires at the exit
            Err(error) => {
                debug!("stream {}: exit status: {error}", self.id);
                false
            }
        }
    }

    fn run_actions(&mut self, command: &mut Exec) -> bool {
        let mut progress = false;
        while let Some(action) = command.session.poll_action(self.now) {
            progress = true;
            match action {
                ChildAction::Signal(signal) => {
                    if let Err(error) = self.children.signal(command.child, signal) {
                        debug!("stream {}: {signal} failed: {error}", self.id);
                    }
                }
                ChildAction::CloseStdin => {
                    command.ready &= !Ready::STDIN;
                    self.children.close_stdin(command.child);
                }
                ChildAction::CloseOutput(pipe) => {
                    command.ready &= !Ready::of_output(pipe);
                    self.children.close_output(command.child, pipe);
                }
                ChildAction::Resize(size) => {
                    if let Err(error) = self.children.resize(command.child, size) {
                        debug!("stream {}: resize failed: {error}", self.id);
                    }
                }
            }
        }
        progress
    }

    fn write_stdin(&mut self, command: &mut Exec) -> bool {
        let mut progress = false;
        while command.ready & Ready::STDIN != 0 && command.session.stdin_open() {
            let pending = command.session.stdin_pending();
            if pending.is_empty() {
                break;
            }
            let offered = pending.len();
            match self.children.write_stdin(command.child, pending) {
                Ok(n) => {
                    self.record.bytes_in += n as u64;
                    command.session.handle_stdin_written(n, self.pool);
                    progress = true;
                    if n < offered {
                        command.ready &= !Ready::STDIN; // the pipe is full
                    }
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    command.ready &= !Ready::STDIN;
                }
                Err(error) => {
                    debug!("stream {}: stdin closed by the command ({error})", self.id);
                    command.ready &= !Ready::STDIN;
                    command.session.handle_stdin_closed(self.pool);
                    progress = true;
                }
            }
        }
        progress
    }

    /// Reads the output pipes into STDOUT/STDERR frames, alternating between them, while the
    /// outbox may take more and the budget lasts; a ready pipe left unread for either reason
    /// is reported as held back, so the drain deadline does not count that wait. Past the
    /// output cap, output is read and dropped (the command is being stopped), so a full pipe
    /// never keeps it alive.
    fn read_output(
        &mut self,
        command: &mut Exec,
        outbox: &mut Outbox,
        budget: &mut Budget,
    ) -> bool {
        let mut progress = false;
        // At least one byte: a read of an empty buffer returns 0, which would be taken for the
        // pipe's EOF and lose the command's output. `Limits::validate` keeps pool buffers well
        // above a header (`MIN_IO_BUFFER_LEN`); this keeps a bad value from losing data anyway.
        let chunk = (self.pool.buffer_len().saturating_sub(HEADER_LEN))
            .min(self.limits.max_frame_len as usize)
            .max(1);
        loop {
            let mut moved = false;
            for pipe in OutputPipe::BOTH {
                let bit = Ready::of_output(pipe);
                if command.ready & bit == 0 {
                    continue;
                }
                if !outbox.may_produce() || budget.bytes == 0 {
                    command.session.handle_output_held(pipe);
                    continue;
                }
                let allowance =
                    usize::try_from(command.session.output_allowance()).unwrap_or(usize::MAX);
                // Read what fits in the outbox's buffer as it is; only a nearly full buffer
                // grows.
                let room = outbox
                    .room(self.pool.buffer_len())
                    .saturating_sub(HEADER_LEN);
                // Never 0 (the chunk, the budget checked above and the room floor are all at
                // least 1, and the allowance is applied only when it is not 0), so a read of 0
                // below is the pipe's EOF and nothing else.
                let want = chunk.min(budget.bytes).min(room.max(MIN_PIPE_READ));
                debug_assert!(want > 0);
                let frame_type = match pipe {
                    OutputPipe::Stdout => FrameType::Stdout,
                    OutputPipe::Stderr => FrameType::Stderr,
                };
                let children = &mut *self.children;
                let result = if allowance == 0 {
                    let mut scratch = [0; 4096];
                    let asked = want.min(scratch.len());
                    children.read(command.child, pipe, &mut scratch[..asked])
                } else {
                    let bound = self.limits.output_high_water + self.pool.buffer_len();
                    let mut replies = outbox.replies(self.pool, self.limits);
                    if want > room {
                        // Streaming output fills the outbox to the high-water mark (past it
                        // nothing is read) plus one read: the buffer grows once, straight to
                        // that, and a command's steady output then allocates nothing (the
                        // connection keeps the grown buffer while commands run; see
                        // `Connection::drive`).
                        replies.grow_to(bound);
                    }
                    replies.frame_from(frame_type, self.id, want.min(allowance), |buf| {
                        children.read(command.child, pipe, buf)
                    })
                };
                match result {
                    Ok(0) => {
                        command.ready &= !bit;
                        command.session.handle_eof(pipe);
                        self.children.close_output(command.child, pipe);
                        moved = true;
                    }
                    Ok(n) => {
                        budget.bytes = budget.bytes.saturating_sub(n);
                        if allowance != 0 {
                            // Sent to the client (output past the cap is dropped).
                            self.record.bytes_out += n as u64;
                        }
                        if allowance == 0 {
                            command
                                .session
                                .handle_output_over_cap(self.now, self.limits);
                        } else {
                            command
                                .session
                                .handle_output(pipe, n, self.now, self.limits);
                        }
                        // No short-read shortcut here, unlike the socket: a command that
                        // writes and exits closes the pipe with data still in it, and one edge
                        // reports both, so only a read of 0 or `WouldBlock` ends the reading.
                        moved = true;
                    }
                    Err(error) if error.kind() == ErrorKind::Interrupted => moved = true,
                    Err(error) if error.kind() == ErrorKind::WouldBlock => {
                        command.ready &= !bit;
                        command.session.handle_output_drained(pipe);
                    }
                    Err(error) => {
                        debug!("stream {}: reading {pipe:?} failed: {error}", self.id);
                        command.ready &= !bit;
                        command.session.handle_eof(pipe);
                        self.children.close_output(command.child, pipe);
                        moved = true;
                    }
                }
            }
            if !moved {
                return progress;
            }
            progress = true;
        }
    }
}
