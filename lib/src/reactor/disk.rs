//! The loop's side of the disk helper ([`crate::sys::disk`]): the [`Jobs`] a connection's
//! file layer submits through, the helper's events, its restart timer, and the delivery of
//! each completion to the connection that submitted the job.
//!
//! A job's owner is its connection's socket token, which carries the slot and the
//! generation: a completion for a connection closed since (or for a successor in its slot)
//! finds no live slot and is dropped, as a stale event would be (rule 6).

use log::{debug, warn};
use std::os::fd::BorrowedFd;

use mio::{Registry, Token};

use super::Core;
use super::slots::live_slot;
use super::token::{ConnKey, Source, TimerKey};
use crate::service::disk::{JobId, Pending};
use crate::sys::disk::{DiskHelper, Job, Jobs};

/// One connection's view of the [`DiskHelper`]: its jobs are owned by the connection.
pub(super) struct ConnJobs<'a> {
    pub(super) helper: &'a mut DiskHelper,
    pub(super) registry: &'a Registry,
    pub(super) key: ConnKey,
}

impl Jobs for ConnJobs<'_> {
    fn submit(&mut self, job: Job) -> Pending {
        let owner = self.key.socket().0 as u64;
        // Even a job the helper runs inline completes through its queue, after the turn's
        // drives: never within this call.
        Pending::Job(self.helper.submit(Some(owner), job, self.registry))
    }

    fn submit_write(&mut self, file: BorrowedFd<'_>, offset: u64, bytes: &[u8]) -> Option<JobId> {
        let owner = self.key.socket().0 as u64;
        self.helper
            .submit_write(Some(owner), file, offset, bytes, self.registry)
    }

    fn off_the_loop(&self) -> bool {
        true
    }

    fn pending(&self, id: JobId) -> bool {
        self.helper.is_pending(id)
    }
}

impl Core {
    /// The helper's socket or pidfd fired.
    pub(super) fn serve_disk(&mut self, exit: bool) {
        let registry = self.env.poll.registry();
        let restart = if exit {
            self.env.disk.on_exit_event(registry)
        } else {
            self.env.disk.on_socket_event(registry)
        };
        if let Some(delay) = restart {
            let at = self.env.now.after(delay);
            self.env.timers.push(at, TimerKey::DiskRestart.pack());
        }
    }

    /// The helper's restart delay passed.
    pub(super) fn disk_restart_timer(&mut self) {
        self.env.disk.restart(self.env.poll.registry());
    }

    /// Hands every waiting completion to its connection, then drives each connection that got
    /// one, once, so what the completions unblocked (replies, next steps) goes out this turn
    /// in one write: a tree of small uploads completes many per turn, and a drive per
    /// completion would send each DIGEST in a segment of its own.
    pub(super) fn deliver_disk_done(&mut self) {
        let mut woken = std::mem::take(&mut self.disk_woken);
        while let Some((owner, done)) = self.env.disk.next_done() {
            let key = owner.and_then(|owner| match Source::from_token(Token(owner as usize)) {
                Some(Source::Conn(key, _)) => Some(key),
                _ => None,
            });
            let Some(key) = key.filter(|key| live_slot(&mut self.conns, *key).is_some()) else {
                match &done.result {
                    Ok(()) => debug!("{} done; its connection is gone", done.id),
                    Err(errno) => warn!(
                        "{} ({:?}) failed: {errno}; its connection is gone",
                        done.id, done.kind
                    ),
                }
                continue;
            };
            let peer = self.peer(key.slot as usize);
            if let Some(slot) = live_slot(&mut self.conns, key) {
                let done = done.into_job_done();
                self.env
                    .with_context(key, peer, |cx| slot.conn.handle_disk_done(done, cx));
                if !woken.contains(&key) {
                    woken.push(key);
                }
            }
        }
        for key in woken.drain(..) {
            self.drive_slot(key);
        }
        // Kept, with its capacity, for the next turn.
        self.disk_woken = woken;
    }
}
