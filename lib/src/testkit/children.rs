//! Scripted child processes: the `Children` a connection under test runs its commands on.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};

use crate::proto::exec::{EndReason, Signal, Termination};
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
    stdout: ScriptedPipe,
    stderr: ScriptedPipe,
    exit: Option<Termination>,
}

/// Bytes waiting in a scripted output pipe.
#[derive(Debug, Default)]
struct ScriptedPipe {
    bytes: VecDeque<u8>,
    eof: bool,
    closed: bool,
}

impl ScriptedChild {
    fn pipe(&mut self, pipe: OutputPipe) -> &mut ScriptedPipe {
        match pipe {
            OutputPipe::Stdout => &mut self.stdout,
            OutputPipe::Stderr => &mut self.stderr,
        }
    }

    /// The command writes `bytes` to `pipe`.
    pub fn write(&mut self, pipe: OutputPipe, bytes: &[u8]) -> &mut ScriptedChild {
        self.pipe(pipe).bytes.extend(bytes);
        self
    }

    /// The command closes `pipe` (reads return 0 once its bytes are read).
    pub fn close(&mut self, pipe: OutputPipe) -> &mut ScriptedChild {
        self.pipe(pipe).eof = true;
        self
    }

    /// The command exits this way (the connection sees it at its next pidfd event).
    pub fn exit(&mut self, termination: Termination) -> &mut ScriptedChild {
        self.exit = Some(termination);
        self
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
/// left), 0 at EOF.
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

    fn child(&mut self, id: ChildId) -> &mut ScriptedChild {
        &mut self.children[id.0 as usize]
    }
}

impl Children for ScriptedChildren {
    fn spawn(&mut self, index: u8, spec: &SpawnSpec<'_>) -> Result<Spawned, SpawnError> {
        if let Some(error) = self.refusals.pop_front() {
            return Err(error);
        }
        let id = ChildId(self.children.len() as u32);
        self.children.push(ScriptedChild {
            argv: spec.argv.iter().map(|arg| arg.to_vec()).collect(),
            cwd: spec.cwd.to_string(),
            index,
            has_stdin: spec.stdin,
            stdin_room: self.stdin_room,
            ..ScriptedChild::default()
        });
        Ok(Spawned {
            child: id,
            pid: 1000 + id.0,
        })
    }

    fn read(&mut self, child: ChildId, pipe: OutputPipe, buf: &mut [u8]) -> io::Result<usize> {
        let pipe = self.child(child).pipe(pipe);
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
        let child = self.child(child);
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
        self.child(child).stdin_closed = true;
    }

    fn close_output(&mut self, child: ChildId, pipe: OutputPipe) {
        self.child(child).pipe(pipe).closed = true;
    }

    fn signal(&mut self, child: ChildId, signal: Signal) -> io::Result<()> {
        self.child(child).signals.push(signal);
        Ok(())
    }

    fn exit_status(&mut self, child: ChildId) -> io::Result<Option<Termination>> {
        Ok(self.child(child).exit)
    }

    fn release(&mut self, child: ChildId, reason: EndReason) {
        self.child(child).released = Some(reason);
    }
}
