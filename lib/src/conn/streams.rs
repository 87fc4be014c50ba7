//! A connection's open streams: the requests that take time (a running command now, a file
//! transfer next), each on the stream its request came on.
//!
//! The table is allocated with the first such request. After the last one ends its list is
//! freed at once and the table itself (a few dozen bytes, remembering the child number just
//! freed) at the connection's next drive in a later turn; a connection that never ran a
//! command pays 8 bytes for it. Each command has a *child number* (0–63) that names
//! its pipes and pidfd in poll tokens; [`Streams::free_index`] never hands out a number freed
//! in the same turn of the loop, so an event of that turn's batch for the old command cannot
//! reach a new one.
//!
//! `Streams::pump` moves a command's bytes: stdin from the stream's queue into the pipe,
//! output from the pipes into STDOUT/STDERR frames read straight into the outbox — only while
//! the outbox [may take more](crate::outbox::Outbox::may_produce) and within the turn's byte
//! budget — and, once the command has exited and its pipes are at EOF, the EXIT frame that
//! ends the stream.

use std::io::ErrorKind;
use std::time::Duration;

use log::debug;

use super::{Budget, Context};
use crate::buffer::BufferPool;
use crate::limits::Limits;
use crate::outbox::Outbox;
use crate::proto::exec::{EndReason, Exit, Window};
use crate::proto::{FrameType, HEADER_LEN};
use crate::service::exec::{ChildAction, ChildId, ChildSource, Children, ExecSession, OutputPipe};
use crate::timer::Tick;

/// Child numbers per connection: 6 bits of a poll token.
pub const CHILD_NUMBERS: u8 = 64;

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

/// A running command on its stream.
#[derive(Debug)]
pub struct ExecStream {
    /// The stream id its EXEC came on.
    pub id: u32,
    /// Its child number in poll tokens.
    pub index: u8,
    /// The I/O layer's handle.
    pub child: ChildId,
    /// Readiness reported for its descriptors and not yet used up.
    ready: u8,
    /// The protocol state machine.
    pub session: ExecSession,
}

impl ExecStream {
    /// A command that has just started.
    pub fn new(id: u32, index: u8, child: ChildId, session: ExecSession) -> ExecStream {
        ExecStream {
            id,
            index,
            child,
            ready: 0,
            session,
        }
    }
}

/// The open streams of one connection.
#[derive(Debug)]
pub struct Streams {
    open: Vec<ExecStream>,
    /// File transfers (GET, PUT, LIST) in progress.
    pub(super) transfers: Vec<super::transfers::Transfer>,
    /// Child numbers freed in turn `cooling_turn`, not to be reused before the next turn.
    cooling: u64,
    cooling_turn: u64,
}

impl Streams {
    /// An empty table with room for `capacity` commands.
    pub fn new(capacity: usize) -> Box<Streams> {
        Box::new(Streams {
            open: Vec::with_capacity(capacity),
            transfers: Vec::new(),
            cooling: 0,
            cooling_turn: 0,
        })
    }

    /// Commands and transfers running.
    pub fn len(&self) -> usize {
        self.open.len() + self.transfers.len()
    }

    /// Commands running.
    pub fn commands(&self) -> usize {
        self.open.len()
    }

    /// Whether nothing runs.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.transfers.is_empty()
    }

    /// Whether a command or a transfer is using `stream`.
    pub fn in_use(&self, stream: u32) -> bool {
        self.find(stream).is_some() || self.transfers.iter().any(|transfer| transfer.id == stream)
    }

    /// The command on `stream`.
    pub fn find(&self, stream: u32) -> Option<&ExecStream> {
        self.open.iter().find(|command| command.id == stream)
    }

    /// The command on `stream`, mutably.
    pub fn find_mut(&mut self, stream: u32) -> Option<&mut ExecStream> {
        self.open.iter_mut().find(|command| command.id == stream)
    }

    /// A child number neither in use nor freed during `turn`.
    pub fn free_index(&mut self, turn: u64) -> Option<u8> {
        if self.cooling_turn != turn {
            self.cooling = 0;
        }
        let used = self
            .open
            .iter()
            .fold(self.cooling, |mask, command| mask | 1 << command.index);
        (0..CHILD_NUMBERS).find(|index| used & (1 << index) == 0)
    }

    /// Takes the command on `stream` out of the table (its child number cools for `turn`).
    pub fn remove(&mut self, stream: u32, turn: u64) -> Option<ExecStream> {
        let at = self.open.iter().position(|command| command.id == stream)?;
        let command = self.open.swap_remove(at);
        self.cool(command.index, turn);
        Some(command)
    }

    fn cool(&mut self, index: u8, turn: u64) {
        if self.cooling_turn != turn {
            self.cooling = 0;
            self.cooling_turn = turn;
        }
        self.cooling |= 1 << index;
        if self.open.is_empty() {
            // The table itself must outlive this turn (it remembers the cooling child
            // number); its list need not.
            self.open = Vec::new();
        }
    }

    /// Adds a started command.
    pub fn insert(&mut self, command: ExecStream) {
        self.open.push(command);
    }

    /// Whether the table is empty and may be dropped: no command runs, and no child number
    /// is cooling in `turn` (dropping it would forget that).
    pub fn is_finished(&self, turn: u64) -> bool {
        self.is_empty() && (self.cooling == 0 || self.cooling_turn != turn)
    }

    /// Records readiness for child number `index`.
    pub fn on_ready(&mut self, index: u8, source: ChildSource) {
        if let Some(command) = self.open.iter_mut().find(|command| command.index == index) {
            command.ready |= Ready::of(source);
        }
    }

    /// The earliest deadline of any command.
    pub fn deadline(&self) -> Tick {
        self.open
            .iter()
            .map(|command| command.session.poll_timeout())
            .min()
            .unwrap_or(Tick::NEVER)
    }

    /// Passes `now` to every command whose deadline has come.
    pub fn handle_timeout(&mut self, now: Tick, limits: &Limits) {
        for command in &mut self.open {
            if command.session.poll_timeout() <= now {
                command.session.handle_timeout(now, limits);
            }
        }
    }

    /// Stops every command for a shutdown: SIGTERM now, SIGKILL after `kill_grace`.
    pub fn handle_shutdown(&mut self, now: Tick, kill_grace: Duration) {
        for command in &mut self.open {
            command.session.handle_shutdown(now, kill_grace);
        }
    }

    /// Whether a command has work that needs no new readiness event: bytes to move with
    /// readiness in hand, or an exit to read.
    pub fn wants_turn(&self, may_produce: bool, bytes_left: bool) -> bool {
        self.open.iter().any(|command| {
            let output = command.ready & (Ready::STDOUT | Ready::STDERR) != 0;
            let stdin =
                command.ready & Ready::STDIN != 0 && !command.session.stdin_pending().is_empty();
            command.ready & Ready::EXIT != 0 || stdin || (output && may_produce && bytes_left)
        })
    }

    /// Releases every command to the I/O layer (the connection is closing): their groups are
    /// stopped and they are reaped there. Transfers end (an upload's resumable partial stays).
    pub fn release_all(&mut self, cx: &mut Context<'_>, reason: EndReason) {
        self.end_transfers(cx);
        self.release_all_commands(cx, reason);
    }

    /// Releases every command to the I/O layer; transfers are left alone.
    pub fn release_all_commands(&mut self, cx: &mut Context<'_>, reason: EndReason) {
        while let Some(mut command) = self.open.pop() {
            debug!(
                "stream {}: command pid {} released ({reason})",
                command.id,
                command.session.pid()
            );
            command.session.release(cx.pool);
            if let Some(children) = cx.children.as_deref_mut() {
                children.release(command.child, reason);
            }
            self.cool(command.index, cx.turn);
        }
    }

    /// Moves every command's bytes as far as readiness, the outbox and the budget allow; sends
    /// EXIT for the commands that are done. Returns whether anything moved.
    pub(crate) fn pump(
        &mut self,
        outbox: &mut Outbox,
        cx: &mut Context<'_>,
        budget: &mut Budget,
    ) -> bool {
        let Some(children) = cx.children.as_deref_mut() else {
            return false;
        };
        let mut io = CommandIo {
            children,
            pool: cx.pool,
            limits: cx.limits,
            now: cx.now,
        };
        let mut progress = false;
        let mut at = 0;
        while at < self.open.len() {
            let command = &mut self.open[at];
            progress |= io.pump_one(command, outbox, budget);
            let Some(exit) = command.session.poll_exit() else {
                at += 1;
                continue;
            };
            outbox.replies(io.pool, io.limits).reply(
                FrameType::Exit,
                command.id,
                Exit::PAYLOAD_LEN as u32,
                |out| exit.emit(out),
            );
            debug!(
                "stream {}: pid {} {exit}",
                command.id,
                command.session.pid()
            );
            let mut done = self.open.swap_remove(at);
            done.session.release(io.pool);
            io.children.release(done.child, done.session.reason());
            self.cool(done.index, cx.turn);
            progress = true;
        }
        progress
    }
}

/// What moving one command's bytes borrows from the connection's [`Context`]: the I/O layer,
/// the pool, the limits and the time.
struct CommandIo<'a> {
    children: &'a mut dyn Children,
    pool: &'a mut BufferPool,
    limits: &'a Limits,
    now: Tick,
}

impl CommandIo<'_> {
    /// One command's I/O for this turn.
    fn pump_one(
        &mut self,
        command: &mut ExecStream,
        outbox: &mut Outbox,
        budget: &mut Budget,
    ) -> bool {
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
                command.id,
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
    fn check_exit(&mut self, command: &mut ExecStream) -> bool {
        match self.children.exit_status(command.child) {
            Ok(Some(termination)) => {
                command
                    .session
                    .handle_exit(termination, self.now, self.limits);
                true
            }
            Ok(None) => false, // not yet: the pidfd fires at the exit
            Err(error) => {
                debug!("stream {}: exit status: {error}", command.id);
                false
            }
        }
    }

    fn run_actions(&mut self, command: &mut ExecStream) -> bool {
        let mut progress = false;
        while let Some(action) = command.session.poll_action(self.now) {
            progress = true;
            match action {
                ChildAction::Signal(signal) => {
                    if let Err(error) = self.children.signal(command.child, signal) {
                        debug!("stream {}: {signal} failed: {error}", command.id);
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
            }
        }
        progress
    }

    fn write_stdin(&mut self, command: &mut ExecStream) -> bool {
        let mut progress = false;
        while command.ready & Ready::STDIN != 0 && command.session.stdin_open() {
            let pending = command.session.stdin_pending();
            if pending.is_empty() {
                break;
            }
            let offered = pending.len();
            match self.children.write_stdin(command.child, pending) {
                Ok(n) => {
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
                    debug!(
                        "stream {}: stdin closed by the command ({error})",
                        command.id
                    );
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
        command: &mut ExecStream,
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
                    replies.frame_from(frame_type, command.id, want.min(allowance), |buf| {
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
                        debug!("stream {}: reading {pipe:?} failed: {error}", command.id);
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
