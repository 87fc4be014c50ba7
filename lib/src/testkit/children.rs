//! Scripted child processes: the `Children` a connection under test runs its commands on.
//!
//! A child spawned with a PTY ([`SpawnSpec::pty`]) is a scripted terminal: what the command
//! "prints" goes to [`OutputPipe::Stdout`] (there is no stderr: it starts closed, and writing
//! to it is a script error, as under a real terminal where both are one stream), its stdin is
//! always there, and every RESIZE that reaches it is recorded in [`ScriptedChild::resizes`].

use std::collections::VecDeque;
use std::io::{self, ErrorKind};

use crate::proto::exec::{EndReason, Resize, Signal, Termination};
use crate::service::exec::{ChildId, Children, OutputPipe, SpawnError, SpawnSpec, Spawned};

/// One scripted child process: output you queue, an exit you decide, and a record of what the
/// connection did to it.
#[derive(Debug, Default)]
pub struct ScriptedChild {
    /// The argv it was started with.
    pub argv: Vec<Vec<u8>>,
    /// Its working directory, as requested.
    pub cwd: String,
    /// Its child number (the sub-source its events carry).
    pub index: u8,
    /// Whether it was given a stdin pipe.
    pub has_stdin: bool,
    /// Everything written to its stdin.
    pub stdin: Vec<u8>,
    /// Bytes its stdin pipe still takes before writes would block.
    pub stdin_room: usize,
    /// Whether the connection closed its stdin.
    pub stdin_closed: bool,
    /// Whether the command closed its stdin (writes then fail with `BrokenPipe`).
    pub stdin_broken: bool,
    /// Signals sent to its group, in order.
    pub signals: Vec<Signal>,
    /// Set when the connection released it, with the reason.
    pub released: Option<EndReason>,
    /// The terminal it was started on, if any: its first size and `TERM`.
    pub pty: Option<ScriptedPty>,
    /// Every size its terminal was set to after the start, in order.
    pub resizes: Vec<Resize>,
    stdout: ScriptedPipe,
    stderr: ScriptedPipe,
    exit: Option<Termination>,
    /// Errors the next calls of each kind return, oldest first ([`ScriptedChild::fail_write`]
    /// and its siblings).
    faults: VecDeque<(Call, ErrorKind)>,
}

/// The terminal a scripted child was started on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptedPty {
    /// Rows at the start.
    pub rows: u16,
    /// Columns at the start.
    pub cols: u16,
    /// Its `TERM`.
    pub term: String,
}

/// Bytes waiting in a scripted output pipe.
#[derive(Debug, Default)]
struct ScriptedPipe {
    bytes: VecDeque<u8>,
    /// The command closed its end: reads return 0 once the bytes are read.
    eof: bool,
    /// The connection closed its end: the command's writes fail with `EPIPE`.
    closed: bool,
}

/// A [`Children`] call a scripted child can be told to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    Read(OutputPipe),
    WriteStdin,
    Signal,
    ExitStatus,
}

impl ScriptedChild {
    fn pipe(&mut self, pipe: OutputPipe) -> &mut ScriptedPipe {
        match pipe {
            OutputPipe::Stdout => &mut self.stdout,
            OutputPipe::Stderr => &mut self.stderr,
        }
    }

    /// The command writes `bytes` to `pipe`. If the connection has closed its end, the bytes
    /// are lost, as the command's `write` would fail with `EPIPE` ([`ScriptedChild::try_write`]
    /// says so).
    ///
    /// # Panics
    /// If the command already closed `pipe` ([`ScriptedChild::close`]): a script error.
    pub fn write(&mut self, pipe: OutputPipe, bytes: &[u8]) -> &mut ScriptedChild {
        let index = self.index;
        let end = self.pipe(pipe);
        assert!(
            !end.eof,
            "child {index}: {pipe:?} written after the command closed it"
        );
        if !end.closed {
            end.bytes.extend(bytes);
        }
        self
    }

    /// The command writes `bytes` to `pipe`, as `write(2)` would: all of them (a scripted pipe
    /// never fills), or `BrokenPipe` (`EPIPE`) if either end of the pipe is closed.
    pub fn try_write(&mut self, pipe: OutputPipe, bytes: &[u8]) -> io::Result<usize> {
        let end = self.pipe(pipe);
        if end.eof || end.closed {
            return Err(ErrorKind::BrokenPipe.into());
        }
        end.bytes.extend(bytes);
        Ok(bytes.len())
    }

    /// The command closes `pipe` (reads return 0 once its bytes are read). Closing twice is
    /// closing once.
    pub fn close(&mut self, pipe: OutputPipe) -> &mut ScriptedChild {
        self.pipe(pipe).eof = true;
        self
    }

    /// The command exits this way (the connection sees it at its next pidfd event).
    ///
    /// # Panics
    /// If an exit was set already: a process exits once.
    pub fn exit(&mut self, termination: Termination) -> &mut ScriptedChild {
        assert!(
            self.exit.is_none(),
            "child {}: exit set twice ({:?}, then {termination:?}): a process exits once",
            self.index,
            self.exit
        );
        self.exit = Some(termination);
        self
    }

    /// How the command exited, once [`ScriptedChild::exit`] said so.
    pub fn exited(&self) -> Option<Termination> {
        self.exit
    }

    /// The bytes written to its stdin so far, in order.
    pub fn stdin(&self) -> &[u8] {
        &self.stdin
    }

    /// Whether the command closed `pipe` ([`ScriptedChild::close`]).
    pub fn output_eof(&self, pipe: OutputPipe) -> bool {
        match pipe {
            OutputPipe::Stdout => self.stdout.eof,
            OutputPipe::Stderr => self.stderr.eof,
        }
    }

    /// The next read of `pipe` fails with `kind` (`Interrupted`, or an I/O error); later reads
    /// go on as before.
    pub fn fail_read(&mut self, pipe: OutputPipe, kind: ErrorKind) -> &mut ScriptedChild {
        self.faults.push_back((Call::Read(pipe), kind));
        self
    }

    /// The next write to its stdin fails with `kind`.
    pub fn fail_write(&mut self, kind: ErrorKind) -> &mut ScriptedChild {
        self.faults.push_back((Call::WriteStdin, kind));
        self
    }

    /// The next signal sent to it fails with `kind` (it is not recorded).
    pub fn fail_signal(&mut self, kind: ErrorKind) -> &mut ScriptedChild {
        self.faults.push_back((Call::Signal, kind));
        self
    }

    /// The next look at its exit status fails with `kind`.
    pub fn fail_exit_status(&mut self, kind: ErrorKind) -> &mut ScriptedChild {
        self.faults.push_back((Call::ExitStatus, kind));
        self
    }

    /// The fault planned for `call`, if any (taken).
    fn fault(&mut self, call: Call) -> Option<io::Error> {
        let at = self
            .faults
            .iter()
            .position(|(planned, _)| *planned == call)?;
        let (_, kind) = self.faults.remove(at)?;
        Some(kind.into())
    }

    /// Bytes still unread in `pipe`.
    pub fn unread(&self, pipe: OutputPipe) -> usize {
        match pipe {
            OutputPipe::Stdout => self.stdout.bytes.len(),
            OutputPipe::Stderr => self.stderr.bytes.len(),
        }
    }

    /// Whether the connection closed `pipe`.
    pub fn output_closed(&self, pipe: OutputPipe) -> bool {
        match pipe {
            OutputPipe::Stdout => self.stdout.closed,
            OutputPipe::Stderr => self.stderr.closed,
        }
    }
}

/// Child processes for a [`Connection`](crate::conn::Connection) under test: every spawn succeeds (with pids from 1000
/// up) unless [`ScriptedChildren::refuse_next`] says otherwise. Reads and writes follow the
/// pipe rules the connection relies on: `WouldBlock` when nothing is there (or no room is
/// left), 0 at EOF, `BrokenPipe` (`EPIPE`) for stdin once it is closed or broken.
///
/// It holds the connection to the rules of the real I/O layer, whose handles are slab keys
/// that a later spawn reuses: any call for a child after its [`Children::release`] panics
/// (`used after release`), and so does a second release. Errors can be injected per call
/// ([`ScriptedChild::fail_read`], [`ScriptedChild::fail_write`],
/// [`ScriptedChild::fail_signal`], [`ScriptedChild::fail_exit_status`]), and spawns refused.
#[derive(Debug, Default)]
pub struct ScriptedChildren {
    children: Vec<ScriptedChild>,
    refusals: VecDeque<SpawnError>,
    /// Room each new stdin pipe starts with. Default 64 KiB, like a Linux pipe.
    pub stdin_room: usize,
}

impl ScriptedChildren {
    /// No children yet; stdin pipes take 64 KiB before they block.
    pub fn new() -> ScriptedChildren {
        ScriptedChildren {
            stdin_room: 64 << 10,
            ..ScriptedChildren::default()
        }
    }

    /// The next spawn fails with `error`.
    pub fn refuse_next(&mut self, error: SpawnError) {
        self.refusals.push_back(error);
    }

    /// Every child spawned so far, in order.
    pub fn all(&self) -> &[ScriptedChild] {
        &self.children
    }

    /// The `n`th child spawned (0-based).
    ///
    /// # Panics
    /// If fewer were spawned.
    pub fn nth(&mut self, n: usize) -> &mut ScriptedChild {
        &mut self.children[n]
    }

    /// The bytes the `n`th child's stdin got (0-based).
    ///
    /// # Panics
    /// If fewer were spawned.
    pub fn stdin_of(&self, n: usize) -> &[u8] {
        &self.children[n].stdin
    }

    /// Children spawned and not released yet.
    pub fn unreleased(&self) -> impl Iterator<Item = &ScriptedChild> {
        self.children
            .iter()
            .filter(|child| child.released.is_none())
    }

    /// The child behind `id` for a call of the connection's.
    ///
    /// # Panics
    /// If `id` was never spawned, or was released: the real I/O layer may have given the
    /// handle to another command by then.
    fn child(&mut self, id: ChildId, call: &str) -> &mut ScriptedChild {
        let child = self
            .children
            .get_mut(id.0 as usize)
            .unwrap_or_else(|| panic!("{call} for {id:?}, which was never spawned"));
        assert!(
            child.released.is_none(),
            "{call} for {id:?} (child number {}) used after release",
            child.index
        );
        child
    }
}

impl Children for ScriptedChildren {
    fn spawn(&mut self, index: u8, spec: &SpawnSpec<'_>) -> Result<Spawned, SpawnError> {
        if let Some(error) = self.refusals.pop_front() {
            return Err(error);
        }
        let id = ChildId(self.children.len() as u32);
        let mut child = ScriptedChild {
            argv: spec.argv.iter().map(|arg| arg.to_vec()).collect(),
            cwd: spec.cwd.to_string(),
            index,
            has_stdin: spec.stdin || spec.pty.is_some(),
            stdin_room: self.stdin_room,
            pty: spec.pty.map(|pty| ScriptedPty {
                rows: pty.rows,
                cols: pty.cols,
                term: pty.term.to_string(),
            }),
            ..ScriptedChild::default()
        };
        // One stream under a terminal: no stderr to read, ever.
        child.stderr.eof = child.pty.is_some();
        self.children.push(child);
        Ok(Spawned {
            child: id,
            pid: 1000 + id.0,
        })
    }

    fn read(&mut self, child: ChildId, pipe: OutputPipe, buf: &mut [u8]) -> io::Result<usize> {
        let child = self.child(child, "read");
        if let Some(error) = child.fault(Call::Read(pipe)) {
            return Err(error);
        }
        let pipe = child.pipe(pipe);
        if pipe.closed {
            return Ok(0);
        }
        if pipe.bytes.is_empty() {
            return if pipe.eof {
                Ok(0)
            } else {
                Err(ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(pipe.bytes.len());
        for (slot, byte) in buf.iter_mut().zip(pipe.bytes.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }

    fn write_stdin(&mut self, child: ChildId, bytes: &[u8]) -> io::Result<usize> {
        let child = self.child(child, "write_stdin");
        if let Some(error) = child.fault(Call::WriteStdin) {
            return Err(error);
        }
        if child.stdin_broken || child.stdin_closed || !child.has_stdin {
            return Err(ErrorKind::BrokenPipe.into());
        }
        if child.stdin_room == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = bytes.len().min(child.stdin_room);
        child.stdin.extend_from_slice(&bytes[..n]);
        child.stdin_room -= n;
        Ok(n)
    }

    fn close_stdin(&mut self, child: ChildId) {
        self.child(child, "close_stdin").stdin_closed = true;
    }

    fn close_output(&mut self, child: ChildId, pipe: OutputPipe) {
        self.child(child, "close_output").pipe(pipe).closed = true;
    }

    fn signal(&mut self, child: ChildId, signal: Signal) -> io::Result<()> {
        let child = self.child(child, "signal");
        if let Some(error) = child.fault(Call::Signal) {
            return Err(error);
        }
        child.signals.push(signal);
        Ok(())
    }

    fn exit_status(&mut self, child: ChildId) -> io::Result<Option<Termination>> {
        let child = self.child(child, "exit_status");
        if let Some(error) = child.fault(Call::ExitStatus) {
            return Err(error);
        }
        Ok(child.exit)
    }

    fn resize(&mut self, child: ChildId, size: Resize) -> io::Result<()> {
        let child = self.child(child, "resize");
        if child.pty.is_some() {
            child.resizes.push(size);
        }
        Ok(())
    }

    fn release(&mut self, child: ChildId, reason: EndReason) {
        self.child(child, "release").released = Some(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn(children: &mut ScriptedChildren, stdin: bool) -> ChildId {
        let spec = SpawnSpec {
            argv: &[b"cat"],
            cwd: "",
            stdin,
            pty: None,
        };
        children.spawn(0, &spec).unwrap().child
    }

    #[test]
    fn injected_faults_come_once_in_order() {
        let mut children = ScriptedChildren::new();
        let id = spawn(&mut children, true);
        children
            .nth(0)
            .write(OutputPipe::Stdout, b"out")
            .fail_read(OutputPipe::Stdout, ErrorKind::Interrupted)
            .fail_write(ErrorKind::Other)
            .fail_signal(ErrorKind::PermissionDenied)
            .fail_exit_status(ErrorKind::Other);
        let mut buf = [0; 8];
        let read = children.read(id, OutputPipe::Stdout, &mut buf);
        assert_eq!(read.unwrap_err().kind(), ErrorKind::Interrupted);
        assert_eq!(children.read(id, OutputPipe::Stdout, &mut buf).unwrap(), 3);
        let write = children.write_stdin(id, b"in");
        assert_eq!(write.unwrap_err().kind(), ErrorKind::Other);
        assert_eq!(children.write_stdin(id, b"in").unwrap(), 2);
        assert!(children.signal(id, Signal::Term).is_err());
        children.signal(id, Signal::Term).unwrap();
        assert!(children.exit_status(id).is_err());
        assert_eq!(children.exit_status(id).unwrap(), None);
        assert_eq!(children.stdin_of(0), b"in");
        assert_eq!(children.nth(0).signals, [Signal::Term]);
    }

    #[test]
    fn stdin_is_refused_once_closed_and_output_once_either_end_is() {
        let mut children = ScriptedChildren::new();
        let id = spawn(&mut children, true);
        children.close_stdin(id);
        let write = children.write_stdin(id, b"late");
        assert_eq!(write.unwrap_err().kind(), ErrorKind::BrokenPipe);
        children.close_output(id, OutputPipe::Stdout);
        let child = children.nth(0);
        let write = child.try_write(OutputPipe::Stdout, b"x");
        assert_eq!(write.unwrap_err().kind(), ErrorKind::BrokenPipe);
        child.write(OutputPipe::Stdout, b"lost"); // the command's EPIPE
        assert_eq!(child.unread(OutputPipe::Stdout), 0);
        child.close(OutputPipe::Stderr);
        let write = child.try_write(OutputPipe::Stderr, b"x");
        assert_eq!(write.unwrap_err().kind(), ErrorKind::BrokenPipe);
    }

    #[test]
    #[should_panic(expected = "written after the command closed it")]
    fn writing_a_pipe_the_command_closed_is_a_script_error() {
        let mut children = ScriptedChildren::new();
        spawn(&mut children, false);
        children
            .nth(0)
            .close(OutputPipe::Stdout)
            .write(OutputPipe::Stdout, b"x");
    }

    #[test]
    #[should_panic(expected = "exit set twice")]
    fn a_second_exit_panics() {
        let mut children = ScriptedChildren::new();
        spawn(&mut children, false);
        children
            .nth(0)
            .exit(Termination::Exited(0))
            .exit(Termination::Exited(1));
    }

    #[test]
    #[should_panic(expected = "used after release")]
    fn a_call_after_release_panics() {
        let mut children = ScriptedChildren::new();
        let id = spawn(&mut children, false);
        children.release(id, EndReason::None);
        let _ = children.signal(id, Signal::Kill);
    }

    #[test]
    #[should_panic(expected = "used after release")]
    fn a_second_release_panics() {
        let mut children = ScriptedChildren::new();
        let id = spawn(&mut children, false);
        children.release(id, EndReason::None);
        children.release(id, EndReason::None);
    }
}
