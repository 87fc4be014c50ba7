//! The loop's side of child processes: the [`Children`] a connection drives its commands
//! through, and the events and deadlines of children released by their connections.
//!
//! A command's descriptors are registered under its connection's tokens (see
//! [`token`](super::token)), so their events go to the connection like its socket's. Once the
//! connection is done with a child — EXIT sent, or the connection gone — the child is
//! *released*: its pipes are closed and, if it is still running, its pidfd is re-registered
//! under [`Source::Released`] and a SIGKILL deadline is queued. Its exit then reaps it here.

use mio::Registry;

use super::Core;
use super::token::{ConnKey, Source, Sub, TimerKey};
use crate::limits::Limits;
use crate::proto::exec::{EndReason, Resize, Signal, Termination};
use crate::service::exec::{ChildId, Children, OutputPipe, SpawnError, SpawnSpec, Spawned};
use crate::sys::process::ChildTable;
use crate::sys::root::Root;
use crate::timer::{Tick, TimerQueue};

/// One connection's view of the [`ChildTable`]: it spawns under the connection's tokens and
/// queues the kill deadline of what it releases.
pub(super) struct ConnChildren<'a> {
    pub(super) table: &'a mut ChildTable,
    pub(super) root: &'a Root,
    pub(super) registry: &'a Registry,
    pub(super) timers: &'a mut TimerQueue<mio::Token>,
    pub(super) limits: &'a Limits,
    pub(super) key: ConnKey,
    pub(super) now: Tick,
}

impl Children for ConnChildren<'_> {
    fn spawn(&mut self, child_number: u8, spec: &SpawnSpec<'_>) -> Result<Spawned, SpawnError> {
        let key = self.key;
        self.table.spawn(spec, self.root, self.registry, |source| {
            Source::Conn(key, Sub::Child(child_number, source)).token()
        })
    }

    fn read(&mut self, child: ChildId, pipe: OutputPipe, buf: &mut [u8]) -> std::io::Result<usize> {
        self.table.read(child, pipe, buf)
    }

    fn write_stdin(&mut self, child: ChildId, bytes: &[u8]) -> std::io::Result<usize> {
        self.table.write_stdin(child, bytes)
    }

    fn close_stdin(&mut self, child: ChildId) {
        self.table.close_stdin(child, self.registry);
    }

    fn close_output(&mut self, child: ChildId, pipe: OutputPipe) {
        self.table.close_output(child, pipe, self.registry);
    }

    fn signal(&mut self, child: ChildId, signal: Signal) -> std::io::Result<()> {
        self.table.signal(child, signal)
    }

    fn exit_status(&mut self, child: ChildId) -> std::io::Result<Option<Termination>> {
        self.table.exit_status(child)
    }

    fn resize(&mut self, child: ChildId, size: Resize) -> std::io::Result<()> {
        self.table.resize(child, size)
    }

    fn release(&mut self, child: ChildId, reason: EndReason) {
        let kill_at = self.now.after(self.limits.exec_kill_grace);
        let token = Source::Released(child).token();
        if let Some(at) = self
            .table
            .release(child, reason, self.registry, token, kill_at)
        {
            self.timers.push(at, TimerKey::Released(child).pack());
        }
    }
}

impl Core {
    /// A released child's pidfd fired: reap it if it has exited.
    pub(super) fn serve_released(&mut self, child: ChildId) {
        self.env.children.on_released_event(child);
    }

    /// A released child's kill deadline.
    pub(super) fn released_timer(&mut self, child: ChildId) {
        self.env.children.on_deadline(child, self.env.now);
    }
}
