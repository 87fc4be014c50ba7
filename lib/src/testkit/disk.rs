//! A scripted disk: jobs held until the test completes them.

use crate::sys::disk::{Disk, DiskDone, Job, JobId};
use std::collections::VecDeque;

/// Disk jobs for a [`Connection`](crate::conn::Connection) under test: each submitted job is held, in order, until the
/// test completes it — with the real blocking call ([`ScriptedDisk::run_next`]) or with a
/// result of its choosing ([`ScriptedDisk::finish_next`]) — and hands the completion to
/// [`ConnHarness::disk_done`](crate::testkit::ConnHarness::disk_done), as the reactor delivers it.
#[derive(Debug, Default)]
pub struct ScriptedDisk {
    pending: VecDeque<(JobId, Job)>,
    next_id: u64,
    /// The ring a write's bytes are copied into, made at the first write.
    ring: Option<crate::sys::disk::Ring>,
}

impl ScriptedDisk {
    /// No jobs yet.
    pub fn new() -> ScriptedDisk {
        ScriptedDisk::default()
    }

    /// The jobs submitted and not completed, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = (JobId, &Job)> {
        self.pending.iter().map(|(id, job)| (*id, job))
    }

    /// Completes the oldest job by making its call, here.
    pub fn run_next(&mut self) -> Option<DiskDone> {
        let (id, job) = self.pending.pop_front()?;
        Some(DiskDone {
            id,
            kind: job.kind(),
            result: job.run(),
        })
    }

    /// Completes the oldest job without making its call, with `result`.
    pub fn finish_next(&mut self, result: Result<(), rustix::io::Errno>) -> Option<DiskDone> {
        let (id, job) = self.pending.pop_front()?;
        Some(DiskDone {
            id,
            kind: job.kind(),
            result,
        })
    }
}

impl Disk for ScriptedDisk {
    fn submit(&mut self, job: Job) -> JobId {
        let id = JobId(self.next_id);
        self.next_id += 1;
        self.pending.push_back((id, job));
        id
    }

    fn submit_write(
        &mut self,
        file: std::os::fd::BorrowedFd<'_>,
        offset: u64,
        bytes: &[u8],
        writing: Option<&std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    ) -> Option<JobId> {
        if self.ring.is_none() {
            self.ring = Some(crate::sys::disk::Ring::new().ok()?);
        }
        let job = crate::sys::disk::write_job(self.ring.as_ref()?, file, offset, bytes, writing)?;
        Some(self.submit(job))
    }
}
