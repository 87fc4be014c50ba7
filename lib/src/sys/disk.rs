//! Disk calls off the loop: the *disk helper*, a process that makes the blocking calls.
//!
//! Some file-system calls block for as long as the disk takes, whatever `O_NONBLOCK` says:
//! `fsync`/`fdatasync` (tens of ms, measured, at the end of a PUT), and `unlinkat`/`renameat`
//! of the last name of a large file, in which ext4 frees the file's blocks (178 ms for 1 GiB,
//! measured). redis moves exactly these calls off its loop with threads (`bio.c`: lazy free,
//! close of a replaced file, AOF fsync). And an upload's writes, though each is short, add up:
//! copying a DATA payload into fresh page cache is most of a PUT's time on the loop (see
//! [`Ring`]). This server has one thread, so a **process** makes them: the same binary
//! re-executed (`/proc/self/exe __disk-helper FD`), one thread, doing one job at a time.
//!
//! **Why a process and not a thread.** The server is one thread by rule, and a process keeps
//! it so: no lock, no shared heap, no second stack that a signal, a `fork` for a command or an
//! allocator could trip over, and `Threads: 1` in `/proc` stays true. A process costs one
//! `recvmsg`/`sendmsg` pair per job (microseconds against the milliseconds a job takes) and
//! the descriptors it works on are handed over with `SCM_RIGHTS`: the helper opens nothing by
//! path, so it can reach nothing but what the server opened beneath its root, and the write
//! ring the server shares with it.
//!
//! **Protocol** over a `SOCK_SEQPACKET` socket pair (message boundaries kept, and one
//! `SCM_RIGHTS` per message), little-endian:
//! ```text
//!  helper -> server  HELLO   tag 0 | magic u32 | version u8                 (once, at start)
//!  server -> helper  JOB     id u64 | op u8 | len u16 | args      + 1 descriptor (write: 2)
//!  helper -> server  DONE    tag 1 | id u64 | errno i32 (0: success)
//! ```
//! | op | call | args | descriptors |
//! |---|---|---|---|
//! | 0 | `fsync(fd)` | none | the file |
//! | 1 | `fdatasync(fd)` | none | the file |
//! | 2 | `unlinkat(dir, name, 0)` | the name: one component (no `/`, not `.` or `..`) | the directory |
//! | 3 | write: `len` bytes from slot `slot` of the ring into the file at `offset` (`pwrite` from the helper's read-only mapping of the ring: never the file position) | `offset u64 \| slot u32 \| len u32` | the file, then the [`Ring`] |
//! | 4 | writeback: `sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)` | none | the file |
//!
//! The helper answers jobs in the order sent; it exits at EOF (the server closed its end, or
//! died: the kernel closes it), and `PR_SET_PDEATHSIG` kills it if the server dies first
//! anyway. A job it cannot take (an unknown op, a bad length or name, the wrong number of
//! descriptors) is answered `EINVAL`; a message without even an id ends the helper.
//!
//! **Server side** ([`DiskHelper`]): the socket and the helper's pidfd are registered in the
//! loop's poll. Jobs go out until [`MAX_IN_FLIGHT`] are unanswered or the socket would block;
//! the rest wait in a queue; past [`MAX_HELD`] jobs held in all, a job runs inline (the old
//! behaviour, a stall, but bounded memory and descriptors). Replies are read until
//! `WouldBlock` (the readiness rules of [`crate::reactor`]); each becomes a [`DiskDone`]
//! routed to the job's owner. A completion is never delivered inside the call that submitted
//! it, not even for a job run inline. A write's bytes wait in a slot of the [`Ring`]
//! ([`Jobs::submit_write`]); with every slot taken, the caller writes them itself.
//!
//! **Restart and resend.** The helper dying (its pidfd readable, or EOF on the socket) is
//! confirmed with `waitid`; every job sent and not answered goes back to the front of the
//! queue, and the helper is started again after [`super::restart::backoff`] (at once the first
//! time). Resending is safe: a writeback may be repeated, a write puts the same bytes (its
//! slot is held until the job is done) at the same offset again, and an unlink resent that
//! finds `ENOENT` was done by the dead helper, so it counts as done. A sync is **not** resent:
//! the dead helper may have made it and been told of a write-back error, which Linux reports
//! once per open file, so the same sync again would succeed over lost data; it completes with
//! `EIO` instead, failing its upload.
//! Nothing is reported done that was not, and no job is lost. A job sent [`MAX_ATTEMPTS`]
//! times runs inline. A helper that cannot be started, or dies before its HELLO, is given up
//! on: every job then runs inline on the loop, and every write is made there, with one warning.
//!
//! **Its users.** A PUT ([`crate::sys::upload`]): its writes, a writeback every
//! [`SYNC_WINDOW`](crate::service::upload::SYNC_WINDOW), the `fsync` of the verified file before
//! its rename and of its directory after it (the DIGEST waits for both), and the unlink of the
//! file it replaced (exchanged aside by the rename, which so frees nothing). DELETE: a large
//! regular file is renamed aside to a fresh [`TRASH_PREFIX`] name, which frees nothing, DONE is
//! answered at once, and the unlink goes to the helper. **Still on the loop:** the commit's
//! link and rename (metadata), the unlink of partials and small files, and the `close` of the
//! last descriptor of a file whose names are all gone (a GET still sending it).

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use rustix::fs::AtFlags;
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use rustix::process::{Pid, PidfdFlags, Signal, WaitIdOptions};

use crate::service::disk::{JobDone, JobId, JobKind, Pending};
use crate::sys::errno::disk_error;
use crate::timer::WallClock;

/// The hidden subcommand that runs the helper: `monoreactor __disk-helper FD`.
pub(crate) const HELPER_SUBCOMMAND: &str = "__disk-helper";

/// Name prefix of files DELETE has renamed aside for the helper to unlink. It starts with
/// [`RESERVED_PREFIX`](crate::proto::path::RESERVED_PREFIX), so such a file is never listed
/// and no request can name it; one left behind (the helper or the server killed in between)
/// is for the directory sweep to remove.
pub const TRASH_PREFIX: &str = ".monoreactor-trash-";

const _: () = assert!(
    TRASH_PREFIX.len() > crate::proto::path::RESERVED_PREFIX.len(),
    "trash names are reserved names"
);

/// A file occupying less than this is unlinked inline by DELETE: freeing a few blocks is
/// quick, and the rename and the round trip to the helper would cost more than they save.
pub(crate) const OFFLOAD_UNLINK_BYTES: u64 = 1 << 20;

/// A fresh name under [`TRASH_PREFIX`]: the wall clock `now` in ns (the loop's, this turn)
/// and a counter, in hex. It is created with `RENAME_NOREPLACE`, so a clash (a leftover from
/// another run) is detected and another name tried, never overwritten.
pub(crate) fn trash_name(now: WallClock) -> String {
    // Atomic because it is a static: every server in this process names trash in the same
    // directories (two on one root, in an embedding program or the tests).
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = now.0 as u64;
    format!("{TRASH_PREFIX}{now:x}-{count:x}")
}

/// Bytes in one slot of the write [`Ring`]: a write job carries at most this much, one
/// `WRITE_PIECE` of an upload.
pub const SLOT_LEN: usize = crate::service::upload::WRITE_PIECE;

/// Slots in the write [`Ring`]: 8 MiB in all, shared by every upload of the process.
pub(crate) const RING_SLOTS: u32 = 32;

/// Memory shared with the helper for the bytes of write jobs: a `memfd` of
/// `RING_SLOTS` × [`SLOT_LEN`] bytes. The server copies a DATA payload into a free slot
/// (`pwrite` into pages that stay in memory, a fast copy) and the helper writes the slot into
/// the file (`pwrite` from its read-only mapping of the `memfd`): the copy into the file's page cache, which on this
/// VM costs 5 ms per MiB of fresh pages (measured: 90 % of a PUT's loop time), happens in the
/// helper. A slot is taken until its job is done (whoever completes the job gives it back,
/// [`Ring::release`]), so a job resent to a restarted helper still finds its bytes.
///
/// Only the server claims and gives back slots, on its one thread: the ring is its
/// [`DiskHelper`]'s (a scripted disk in tests has its own), and the helper process only reads
/// the slots it is told to. So the free mask is a plain number. (Two threads claiming slots
/// of one ring was a test's doing: each of its two writers now has a ring of its own.)
#[derive(Debug)]
pub struct Ring {
    fd: Arc<OwnedFd>,
    /// One bit per slot, set while it is free.
    free: u64,
}

impl Ring {
    /// A ring with every slot free.
    pub fn new() -> io::Result<Ring> {
        let fd =
            rustix::fs::memfd_create("monoreactor-disk-ring", rustix::fs::MemfdFlags::CLOEXEC)?;
        rustix::fs::ftruncate(&fd, u64::from(RING_SLOTS) * SLOT_LEN as u64)?;
        Ok(Ring {
            fd: Arc::new(fd),
            free: (1u64 << RING_SLOTS) - 1,
        })
    }

    /// Copies `bytes` (at most [`SLOT_LEN`]) into a free slot; `None` if every slot is taken.
    /// The slot stays taken until [`Ring::release`].
    pub fn store(&mut self, bytes: &[u8]) -> Option<Result<Slot, Errno>> {
        if bytes.len() > SLOT_LEN || self.free == 0 {
            return None;
        }
        let index = self.free.trailing_zeros();
        let slot = Slot {
            index,
            len: bytes.len() as u32,
        };
        let mut at = 0;
        while at < bytes.len() {
            match rustix::io::pwrite(&*self.fd, &bytes[at..], slot.offset() + at as u64) {
                Ok(n) => at += n,
                Err(Errno::INTR) => {}
                Err(errno) => return Some(Err(errno)),
            }
        }
        self.free &= !(1u64 << index);
        Some(Ok(slot))
    }

    /// Gives back the slot of a finished job.
    pub fn release(&mut self, slot: &Slot) {
        if slot.index < RING_SLOTS {
            self.free |= 1u64 << slot.index;
        }
    }

    /// Gives back the slot of `job`, if it is a write.
    pub fn release_job(&mut self, job: &Job) {
        if let Job::Write { slot, .. } = job {
            self.release(slot);
        }
    }

    /// Slots free now.
    pub fn free_slots(&self) -> u32 {
        self.free.count_ones()
    }
}

thread_local! {
    /// The ring as the process that writes its slots into files sees it: mapped once, read
    /// only (the helper, or the loop making a write itself; each has one thread).
    static RING_MAP: std::cell::RefCell<Option<RingMap>> = const { std::cell::RefCell::new(None) };
}

/// A read-only mapping of a [`Ring`]'s `memfd`, known by its inode.
#[derive(Debug)]
struct RingMap {
    ino: u64,
    at: std::ptr::NonNull<u8>,
    len: usize,
}

impl RingMap {
    fn of(ring: &OwnedFd, ino: u64) -> Result<RingMap, Errno> {
        let len = RING_SLOTS as usize * SLOT_LEN;
        // SAFETY: a new shared, read-only mapping of a descriptor we hold; no existing memory
        // is touched, and the mapping is unmapped only by `Drop`.
        let at = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::SHARED,
                ring,
                0,
            )?
        };
        let at = std::ptr::NonNull::new(at.cast::<u8>()).ok_or(Errno::NOMEM)?;
        Ok(RingMap { ino, at, len })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped readable at `at` for as long as `self` lives. The
        // server writes a slot only while no job holds it, and a job reads only its own slot,
        // so the bytes read are never being written.
        unsafe { std::slice::from_raw_parts(self.at.as_ptr(), self.len) }
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `of` made; no slice of it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.at.as_ptr().cast(), self.len) };
    }
}

/// Writes all of `bytes` at `offset` of `fd`.
fn write_all_at(fd: &OwnedFd, bytes: &[u8], offset: u64) -> Result<(), Errno> {
    let mut done = 0;
    while done < bytes.len() {
        match rustix::io::pwrite(fd, &bytes[done..], offset + done as u64) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => done += n,
            Err(Errno::INTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

/// One slot of the [`Ring`], holding a write job's bytes until the job is done (then
/// [`Ring::release`]).
#[derive(Debug)]
pub struct Slot {
    index: u32,
    len: u32,
}

impl Slot {
    /// Where its bytes start in the ring.
    fn offset(&self) -> u64 {
        u64::from(self.index) * SLOT_LEN as u64
    }
}

/// Jobs sent and not answered, at most. The helper does one at a time; a few more in its
/// socket keep it busy without a round trip between jobs.
pub const MAX_IN_FLIGHT: usize = 16;

/// Jobs held in all (queued and in flight), each with its descriptor. One more runs inline.
pub const MAX_HELD: usize = 256;

/// The helper's nice value: below the loop's when they compete for a core.
const HELPER_NICE: libc::c_int = 10;

/// Sends of one job (first send and resends after the helper died) before it runs inline.
pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// Identifies the helper protocol in HELLO.
const HELLO_MAGIC: u32 = 0x6d72_646b; // "mrdk"
/// Version of the helper protocol; a helper that says another is not used.
const PROTOCOL_VERSION: u8 = 1;

/// Longest name an unlink carries (`NAME_MAX`).
const MAX_NAME: usize = 255;
/// A write job's arguments, where an unlink has its name: offset u64, slot u32, length u32.
const WRITE_ARGS: usize = 8 + 4 + 4;
/// A job's fixed part: id, op, name length.
const JOB_HEAD: usize = 8 + 1 + 2;
/// Longest job message.
pub(crate) const MAX_JOB_LEN: usize = JOB_HEAD + MAX_NAME;
/// Length of a DONE reply.
const DONE_LEN: usize = 1 + 8 + 4;
/// Length of HELLO.
const HELLO_LEN: usize = 1 + 4 + 1;
const TAG_HELLO: u8 = 0;
const TAG_DONE: u8 = 1;

/// How long dropping a [`DiskHelper`] waits for the helper to finish what it was sent.
const DROP_WAIT: Duration = Duration::from_secs(1);

/// A blocking call to make off the loop, with the descriptor it works on.
#[derive(Debug)]
pub enum Job {
    /// `fsync(fd)`: data and metadata durable.
    Fsync(OwnedFd),
    /// `fdatasync(fd)`: data (and the metadata needed to read it) durable.
    Fdatasync(OwnedFd),
    /// `syncfs(fd)`: everything written to the file system holding `fd` durable.
    Syncfs(OwnedFd),
    /// `sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)`: start writing the file's dirty
    /// pages to the disk, without waiting for them (or making anything durable).
    Writeback(OwnedFd),
    /// `unlinkat(dir, name, 0)`: remove a name that is not a directory.
    Unlink {
        /// The directory (an `O_PATH` descriptor will do).
        dir: OwnedFd,
        /// One component: no `/`, not `.` or `..`, at most 255 bytes.
        name: String,
    },
    /// Write the bytes in a [`Ring`] slot at `offset` of `file` (`pwrite` from the
    /// ring's mapping into the file: the file's position is never used).
    Write {
        /// The file (open for writing).
        file: OwnedFd,
        /// Where in the file.
        offset: u64,
        /// The ring holding the bytes.
        ring: Arc<OwnedFd>,
        /// Which bytes of the ring.
        slot: Slot,
    },
}

/// A job's op code in the protocol.
fn kind_code(kind: JobKind) -> u8 {
    match kind {
        JobKind::Fsync => 0,
        JobKind::Fdatasync => 1,
        JobKind::Unlink => 2,
        JobKind::Write => 3,
        JobKind::Writeback => 4,
        JobKind::Syncfs => 5,
    }
}

/// Descriptors a job of this kind carries.
fn fd_count(kind: JobKind) -> usize {
    if kind == JobKind::Write { 2 } else { 1 }
}

/// The job kind of an op code.
fn kind_from_code(code: u8) -> Option<JobKind> {
    Some(match code {
        0 => JobKind::Fsync,
        1 => JobKind::Fdatasync,
        2 => JobKind::Unlink,
        3 => JobKind::Write,
        4 => JobKind::Writeback,
        5 => JobKind::Syncfs,
        _ => return None,
    })
}

/// Whether `name` is a single component an unlink may carry.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0'])
}

impl Job {
    /// What the job does.
    pub fn kind(&self) -> JobKind {
        match self {
            Job::Fsync(_) => JobKind::Fsync,
            Job::Fdatasync(_) => JobKind::Fdatasync,
            Job::Writeback(_) => JobKind::Writeback,
            Job::Syncfs(_) => JobKind::Syncfs,
            Job::Unlink { .. } => JobKind::Unlink,
            Job::Write { .. } => JobKind::Write,
        }
    }

    /// The descriptor the job works on (for a write, the file).
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Job::Fsync(fd)
            | Job::Fdatasync(fd)
            | Job::Syncfs(fd)
            | Job::Writeback(fd)
            | Job::Unlink { dir: fd, .. }
            | Job::Write { file: fd, .. } => fd.as_fd(),
        }
    }

    /// The descriptors its message carries: the one it works on, and a write's ring.
    fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Job::Write { file, ring, .. } => vec![file.as_fd(), ring.as_fd()],
            job => vec![job.fd()],
        }
    }

    /// The variable part of its message: an unlink's name, a write's arguments.
    fn args(&self) -> Vec<u8> {
        match self {
            Job::Unlink { name, .. } => name.as_bytes().to_vec(),
            Job::Write { offset, slot, .. } => {
                let mut args = Vec::with_capacity(WRITE_ARGS);
                args.extend_from_slice(&offset.to_le_bytes());
                args.extend_from_slice(&slot.index.to_le_bytes());
                args.extend_from_slice(&slot.len.to_le_bytes());
                args
            }
            Job::Fsync(_) | Job::Fdatasync(_) | Job::Syncfs(_) | Job::Writeback(_) => Vec::new(),
        }
    }

    /// Makes the blocking call, here and now: in the helper, or inline on the loop when there
    /// is no helper. A name that is not a single component is refused with `EINVAL` (the
    /// helper checks what it is sent; a `/` would let an unlink leave its directory).
    pub fn run(&self) -> Result<(), Errno> {
        match self {
            Job::Fsync(fd) => rustix::fs::fsync(fd),
            Job::Fdatasync(fd) => rustix::fs::fdatasync(fd),
            Job::Syncfs(fd) => rustix::fs::syncfs(fd),
            Job::Writeback(fd) => {
                // SAFETY: a plain system call on a descriptor the job owns.
                let rc = unsafe {
                    libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE)
                };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::IO))
                }
            }
            Job::Unlink { dir, name } => {
                if !valid_name(name) {
                    return Err(Errno::INVAL);
                }
                rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty())
            }
            Job::Write {
                file,
                offset,
                ring,
                slot,
            } => {
                if slot.index >= RING_SLOTS || slot.len as usize > SLOT_LEN {
                    return Err(Errno::INVAL);
                }
                // pwrite from the ring's mapping into the file: never the file's position,
                // which every descriptor of the upload shares (the server's, the helper's, a
                // job run on the loop while the helper holds another) — a seek and a sendfile
                // from two of them at once would put bytes at the wrong offset.
                let start = slot.offset() as usize;
                let end = start + slot.len as usize;
                RING_MAP.with(|map| {
                    let mut map = map.borrow_mut();
                    let ino = rustix::fs::fstat(&**ring)?.st_ino;
                    if map.as_ref().is_none_or(|mapped| mapped.ino != ino) {
                        *map = Some(RingMap::of(ring, ino)?);
                    }
                    let mapped = map.as_ref().ok_or(Errno::IO)?;
                    write_all_at(file, &mapped.bytes()[start..end], *offset)
                })
            }
        }
    }

    /// The job's message (without its descriptor). `None` for a name that cannot be sent.
    pub fn encode(&self, id: JobId) -> Option<Vec<u8>> {
        if let Job::Unlink { name, .. } = self {
            if !valid_name(name) {
                return None;
            }
        }
        let args = self.args();
        let mut out = Vec::with_capacity(JOB_HEAD + args.len());
        out.extend_from_slice(&id.0.to_le_bytes());
        out.push(kind_code(self.kind()));
        out.extend_from_slice(&(args.len() as u16).to_le_bytes());
        out.extend_from_slice(&args);
        Some(out)
    }

    /// Rebuilds a job from its message and the descriptor that came with it.
    pub fn decode(bytes: &[u8], fd: OwnedFd) -> Result<(JobId, Job), WireError> {
        Job::decode_with(bytes, vec![fd])
    }

    /// Rebuilds a job from its message and the descriptors that came with it (two for a
    /// write: the file, then the ring).
    pub fn decode_with(bytes: &[u8], mut fds: Vec<OwnedFd>) -> Result<(JobId, Job), WireError> {
        let (id, kind, args) = decode_job_head(bytes)?;
        if fds.len() != fd_count(kind) {
            return Err(WireError::BadLength(id));
        }
        let second = (fds.len() == 2).then(|| fds.pop()).flatten();
        let fd = fds.pop().ok_or(WireError::BadLength(id))?;
        let job = match kind {
            JobKind::Fsync => Job::Fsync(fd),
            JobKind::Fdatasync => Job::Fdatasync(fd),
            JobKind::Writeback => Job::Writeback(fd),
            JobKind::Syncfs => Job::Syncfs(fd),
            JobKind::Unlink => Job::Unlink {
                dir: fd,
                name: std::str::from_utf8(args)
                    .map_err(|_| WireError::BadName(id))?
                    .to_string(),
            },
            JobKind::Write => {
                let word = |at: usize, len: usize| -> Result<u64, WireError> {
                    let mut bytes = [0u8; 8];
                    bytes[..len].copy_from_slice(&args[at..at + len]);
                    Ok(u64::from_le_bytes(bytes))
                };
                Job::Write {
                    file: fd,
                    offset: word(0, 8)?,
                    ring: Arc::new(second.ok_or(WireError::BadLength(id))?),
                    slot: Slot {
                        index: word(8, 4)? as u32,
                        len: word(12, 4)? as u32,
                    },
                }
            }
        };
        Ok((id, job))
    }
}

/// The id, op and arguments (an unlink's name, checked) of a job message.
fn decode_job_head(bytes: &[u8]) -> Result<(JobId, JobKind, &[u8]), WireError> {
    if bytes.len() < JOB_HEAD {
        return Err(WireError::Short);
    }
    let id = JobId(u64::from_le_bytes(
        bytes[..8].try_into().map_err(|_| WireError::Short)?,
    ));
    let kind = kind_from_code(bytes[8]).ok_or(WireError::UnknownOp(id))?;
    let len = usize::from(u16::from_le_bytes([bytes[9], bytes[10]]));
    if bytes.len() != JOB_HEAD + len {
        return Err(WireError::BadLength(id));
    }
    let args = &bytes[JOB_HEAD..];
    let args_ok = match kind {
        JobKind::Unlink => std::str::from_utf8(args).is_ok_and(valid_name),
        JobKind::Fsync | JobKind::Fdatasync | JobKind::Syncfs | JobKind::Writeback => {
            args.is_empty()
        }
        JobKind::Write => args.len() == WRITE_ARGS,
    };
    if !args_ok {
        return Err(WireError::BadName(id));
    }
    Ok((id, kind, args))
}

/// A message that does not follow the helper protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than its fixed part.
    Short,
    /// An op this side does not know (the job's id is known).
    UnknownOp(JobId),
    /// The length does not match what the message says.
    BadLength(JobId),
    /// A name that is not one component, or is there when it should not be.
    BadName(JobId),
    /// A reply with an unknown tag, or the wrong length for its tag.
    BadReply,
}

impl WireError {
    /// The job the message was about, when its id could be read.
    pub fn job(self) -> Option<JobId> {
        match self {
            WireError::UnknownOp(id) | WireError::BadLength(id) | WireError::BadName(id) => {
                Some(id)
            }
            WireError::Short | WireError::BadReply => None,
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Short => f.write_str("message too short"),
            WireError::UnknownOp(id) => write!(f, "{id}: unknown operation"),
            WireError::BadLength(id) => write!(f, "{id}: length does not match"),
            WireError::BadName(id) => write!(f, "{id}: not a single name"),
            WireError::BadReply => f.write_str("malformed reply"),
        }
    }
}

impl std::error::Error for WireError {}

/// A message from the helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The helper runs and speaks this protocol version.
    Hello {
        /// Its protocol version.
        version: u8,
    },
    /// A job is finished: `errno` 0 for success.
    Done {
        /// The job.
        id: JobId,
        /// The call's errno, 0 for success.
        errno: i32,
    },
}

impl Reply {
    /// The message's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        match *self {
            Reply::Hello { version } => {
                let mut out = vec![TAG_HELLO];
                out.extend_from_slice(&HELLO_MAGIC.to_le_bytes());
                out.push(version);
                out
            }
            Reply::Done { id, errno } => {
                let mut out = vec![TAG_DONE];
                out.extend_from_slice(&id.0.to_le_bytes());
                out.extend_from_slice(&errno.to_le_bytes());
                out
            }
        }
    }

    /// Parses one message.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Reply, WireError> {
        match (bytes.first(), bytes.len()) {
            (Some(&TAG_HELLO), HELLO_LEN) if bytes[1..5] == HELLO_MAGIC.to_le_bytes() => {
                Ok(Reply::Hello { version: bytes[5] })
            }
            (Some(&TAG_DONE), DONE_LEN) => {
                let id =
                    u64::from_le_bytes(bytes[1..9].try_into().map_err(|_| WireError::BadReply)?);
                let errno =
                    i32::from_le_bytes(bytes[9..13].try_into().map_err(|_| WireError::BadReply)?);
                Ok(Reply::Done {
                    id: JobId(id),
                    errno,
                })
            }
            _ => Err(WireError::BadReply),
        }
    }
}

/// A finished job, as the [`DiskHelper`] reports it (its owner hears of it as a
/// [`JobDone`], [`DiskDone::into_job_done`]).
#[derive(Debug, PartialEq, Eq)]
pub struct DiskDone {
    /// The job, as [`DiskHelper::submit`] numbered it.
    pub id: JobId,
    /// What it did.
    pub kind: JobKind,
    /// The call's result.
    pub result: Result<(), Errno>,
}

impl DiskDone {
    /// The completion as the file service hears it: the errno mapped to what the client
    /// would be told.
    pub fn into_job_done(self) -> JobDone {
        JobDone {
            id: self.id,
            kind: self.kind,
            result: self.result.map_err(disk_error),
        }
    }
}

/// Where the file layer ([`crate::sys::files::Files`]) hands its blocking calls: the disk
/// helper, for a connection of the server (the reactor's `ConnJobs`: the job's owner is the
/// submitting connection, with its generation); held until a test completes them
/// ([`crate::testkit::ScriptedDisk`]); or made at once (`RunHere`, in tests).
pub(crate) trait Jobs {
    /// Hands `job` over. A [`Pending::Job`]'s completion comes back as a [`JobDone`] with the
    /// id returned, through
    /// [`Connection::handle_disk_done`](crate::conn::Connection::handle_disk_done), never
    /// within this call (not even when the job ran inline), and not at all if the connection
    /// is closed by then (the job is still done).
    fn submit(&mut self, job: Job) -> Pending;

    /// Hands over a write of `bytes` (at most [`SLOT_LEN`]) at `offset` of `file`: the bytes
    /// are copied into the [`Ring`] now, and written into the file by the helper. `None` if
    /// the ring is full (or cannot be had), or there is no helper: the caller writes them
    /// itself.
    fn submit_write(&mut self, file: BorrowedFd<'_>, offset: u64, bytes: &[u8]) -> Option<JobId>;

    /// Whether jobs go off the loop. Where they do not, there is no point in setting a big
    /// file aside for its unlink: it is unlinked where it is.
    fn off_the_loop(&self) -> bool;

    /// Whether job `id` is still in the helper's hands: not done yet (its completion not yet
    /// queued for its owner).
    fn pending(&self, id: JobId) -> bool;
}

/// Jobs made at once, on the calling thread, for the I/O layer's own tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct RunHere;

#[cfg(test)]
impl Jobs for RunHere {
    fn submit(&mut self, job: Job) -> Pending {
        Pending::Done(job.run().map_err(disk_error))
    }

    fn submit_write(&mut self, _: BorrowedFd<'_>, _: u64, _: &[u8]) -> Option<JobId> {
        None
    }

    fn off_the_loop(&self) -> bool {
        false
    }

    fn pending(&self, _: JobId) -> bool {
        false
    }
}

/// A write job for `bytes` at `offset` of `file`, its bytes stored in `ring`; `None` if the
/// ring is full, the bytes do not fit a slot, or a descriptor cannot be had. Whoever
/// completes the job gives its slot back ([`Ring::release_job`]).
pub fn write_job(ring: &mut Ring, file: BorrowedFd<'_>, offset: u64, bytes: &[u8]) -> Option<Job> {
    let file = file.try_clone_to_owned().ok()?;
    let slot = match ring.store(bytes)? {
        Ok(slot) => slot,
        Err(errno) => {
            debug!("cannot copy into the write ring ({errno}): writing inline");
            return None;
        }
    };
    Some(Job::Write {
        file,
        offset,
        ring: Arc::clone(&ring.fd),
        slot,
    })
}

// === The helper process ===

/// Runs the helper on the inherited socket `fd` until the server closes it. This is all the
/// `__disk-helper` subcommand does; it starts no thread.
///
/// Errors: `fd` is not an inherited `SOCK_SEQPACKET` socket, or the socket failed.
pub fn helper_main(fd: RawFd) -> io::Result<()> {
    if fd <= 2 {
        return Err(io::Error::other(format!(
            "descriptor {fd} is standard I/O, not a socket from the server"
        )));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::other(format!(
            "descriptor {fd} was not inherited"
        )));
    }
    // SAFETY: the descriptor is open (checked above) and was passed to this process on its
    // command line by the server for this purpose; nothing else in this process owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    if rustix::net::sockopt::socket_type(&socket)? != SocketType::SEQPACKET {
        return Err(io::Error::other(format!(
            "descriptor {fd} is not a SOCK_SEQPACKET socket"
        )));
    }
    rustix::io::fcntl_setfd(&socket, rustix::io::FdFlags::CLOEXEC)?;
    // Background work: when the two compete for a core, the loop (which answers clients)
    // goes first; the helper's jobs wait a little, and uploads with them (their connections
    // read no more meanwhile), which is the trade wanted. Best effort.
    // SAFETY: setpriority on this process only; no memory is passed.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, HELPER_NICE) };
    send_reply(
        &socket,
        &Reply::Hello {
            version: PROTOCOL_VERSION,
        },
    )?;
    let mut message = [0u8; MAX_JOB_LEN + 1];
    // Room for a few descriptors: a job carries one, and any extra are received (and closed)
    // rather than truncated into the void.
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    loop {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = loop {
            match rustix::net::recvmsg(
                &socket,
                &mut [IoSliceMut::new(&mut message)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(Errno::INTR) => continue,
                other => break other?,
            }
        };
        if received.bytes == 0 {
            return Ok(()); // EOF: the server is gone or done with us
        }
        let mut fds: Vec<OwnedFd> = Vec::new();
        for item in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = item {
                fds.extend(rights);
            }
        }
        let bytes = &message[..received.bytes.min(message.len())];
        let truncated = received
            .flags
            .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC);
        let errno = match (truncated, decode_job_head(bytes)) {
            (false, Ok((_, kind, _))) if fds.len() == fd_count(kind) => {
                match Job::decode_with(bytes, std::mem::take(&mut fds)) {
                    Ok((id, job)) => Some((id, job.run().err())),
                    Err(error) => error.job().map(|id| (id, Some(Errno::INVAL))),
                }
            }
            (_, Ok((id, _, _))) => Some((id, Some(Errno::INVAL))),
            (_, Err(error)) => error.job().map(|id| (id, Some(Errno::INVAL))),
        };
        drop(fds);
        let Some((id, errno)) = errno else {
            // Not even an id to answer: the server and this helper disagree on the protocol.
            return Err(io::Error::other("malformed job message"));
        };
        send_reply(
            &socket,
            &Reply::Done {
                id,
                errno: errno.map_or(0, Errno::raw_os_error),
            },
        )?;
    }
}

fn send_reply(socket: &OwnedFd, reply: &Reply) -> io::Result<()> {
    let bytes = reply.encode();
    loop {
        match rustix::net::send(socket, &bytes, SendFlags::NOSIGNAL) {
            Err(Errno::INTR) => continue,
            Ok(_) => return Ok(()),
            Err(errno) => return Err(errno.into()),
        }
    }
}

// === The server's side ===

/// The tokens the helper's descriptors are registered under in the loop's poll.
#[derive(Clone, Copy, Debug)]
pub struct HelperTokens {
    /// The socket.
    pub socket: Token,
    /// The helper's pidfd.
    pub exit: Token,
}

/// Counters, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// Jobs submitted.
    pub submitted: u64,
    /// Jobs the helper answered.
    pub by_helper: u64,
    /// Jobs run inline on the loop (no helper, too many held, too many attempts).
    pub inline: u64,
    /// Jobs sent again after a helper died with them unanswered.
    pub resent: u64,
    /// Helpers started, the first included.
    pub started: u64,
    /// Helpers that died and were reaped.
    pub died: u64,
}

/// One job held by the server until its completion is queued.
#[derive(Debug)]
struct Held {
    id: JobId,
    owner: Option<u64>,
    job: Job,
    /// Times sent to a helper.
    sends: u32,
}

/// A started helper process.
#[derive(Debug)]
struct Process {
    pid: Pid,
    pidfd: OwnedFd,
    /// Our end, nonblocking; `None` once EOF was seen (the process is exiting).
    socket: Option<OwnedFd>,
    /// Said HELLO.
    ready: bool,
    /// The socket is registered for writability too (a send would have blocked).
    wants_write: bool,
    started: Instant,
}

#[derive(Debug)]
enum State {
    /// No helper and none to come: jobs run inline.
    Inline,
    /// A helper is started (and may not have said HELLO yet).
    Live(Process),
    /// The helper died; the loop calls [`DiskHelper::restart`] when the delay returned passed.
    Waiting,
}

/// The server's end of the disk helper: starts and restarts it, sends jobs, reads completions.
/// See the module docs.
#[derive(Debug)]
pub struct DiskHelper {
    program: Option<PathBuf>,
    tokens: HelperTokens,
    state: State,
    next_id: u64,
    /// Sent, unanswered, in the order sent.
    in_flight: VecDeque<Held>,
    /// Not sent yet.
    queued: VecDeque<Held>,
    /// Completions not yet handed to their owners.
    done: VecDeque<(Option<u64>, DiskDone)>,
    /// Consecutive deaths of helpers that did not live [`super::restart::STABLE_AFTER`].
    crashes: u32,
    stats: DiskStats,
    /// The write ring shared with the helper (`None` if no `memfd` could be had: writes are
    /// then made inline).
    ring: Option<Ring>,
}

impl DiskHelper {
    /// A disk layer that runs `program HELPER_SUBCOMMAND FD` as its helper once
    /// [`DiskHelper::start`] is called; with `None`, every job runs inline.
    pub fn new(program: Option<PathBuf>, tokens: HelperTokens) -> DiskHelper {
        DiskHelper {
            program,
            tokens,
            state: State::Inline,
            next_id: 0,
            in_flight: VecDeque::with_capacity(MAX_IN_FLIGHT),
            queued: VecDeque::new(),
            done: VecDeque::new(),
            crashes: 0,
            stats: DiskStats::default(),
            ring: None,
        }
    }

    /// Starts the helper. If it cannot be started, jobs run inline (one warning).
    pub fn start(&mut self, registry: &Registry) {
        let Some(program) = self.program.clone() else {
            return;
        };
        if self.ring.is_none() {
            match Ring::new() {
                Ok(ring) => self.ring = Some(ring),
                Err(error) => warn!("no write ring ({error}): uploads write on the loop"),
            }
        }
        match spawn(&program).and_then(|process| {
            register(registry, &process, self.tokens)?;
            Ok(process)
        }) {
            Ok(process) => {
                debug!("disk helper {} started", process.pid.as_raw_nonzero());
                self.stats.started += 1;
                self.state = State::Live(process);
                self.flush(registry);
            }
            Err(error) => self.give_up(&format!("cannot start {}: {error}", program.display())),
        }
    }

    /// Starts the helper again after its backoff.
    pub fn restart(&mut self, registry: &Registry) {
        if matches!(self.state, State::Waiting) {
            self.start(registry);
        }
    }

    /// The helper's pid, while one runs.
    pub fn pid(&self) -> Option<u32> {
        match &self.state {
            State::Live(process) => Some(process.pid.as_raw_nonzero().get() as u32),
            State::Inline | State::Waiting => None,
        }
    }

    /// Whether jobs run inline because there is no helper.
    pub fn is_inline(&self) -> bool {
        matches!(self.state, State::Inline)
    }

    /// Counters so far.
    pub fn stats(&self) -> DiskStats {
        self.stats
    }

    /// No job held and no completion waiting.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_empty() && self.queued.is_empty() && self.done.is_empty()
    }

    /// Whether job `id` is held (queued or sent, not answered): its completion is not queued
    /// yet, and a write's bytes are still in their slot.
    pub fn is_pending(&self, id: JobId) -> bool {
        self.in_flight.iter().any(|held| held.id == id)
            || self.queued.iter().any(|held| held.id == id)
    }

    /// Completions are waiting for [`DiskHelper::next_done`].
    pub fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// The next completion and its owner.
    pub fn next_done(&mut self) -> Option<(Option<u64>, DiskDone)> {
        self.done.pop_front()
    }

    /// Takes `job` for `owner` (an opaque number the caller routes completions by). It is
    /// sent now if it can be, queued if the helper is busy or restarting, and run inline here
    /// if there is no helper or [`MAX_HELD`] jobs are held already.
    pub fn submit(&mut self, owner: Option<u64>, job: Job, registry: &Registry) -> JobId {
        let id = JobId(self.next_id);
        self.next_id += 1;
        self.stats.submitted += 1;
        let held = Held {
            id,
            owner,
            job,
            sends: 0,
        };
        if self.is_inline() || self.in_flight.len() + self.queued.len() >= MAX_HELD {
            self.run_inline(held);
        } else {
            self.queued.push_back(held);
            self.flush(registry);
        }
        id
    }

    /// A write of `bytes` at `offset` of `file`, by the helper, for `owner`: `None` if there
    /// is no helper or its ring has no free slot (the caller writes them itself, at once).
    pub fn submit_write(
        &mut self,
        owner: Option<u64>,
        file: BorrowedFd<'_>,
        offset: u64,
        bytes: &[u8],
        registry: &Registry,
    ) -> Option<JobId> {
        // No helper, or as many jobs held as may be: the caller writes straight from its
        // buffer, which costs the copy into the ring too.
        if self.is_inline() || self.in_flight.len() + self.queued.len() >= MAX_HELD {
            return None;
        }
        let job = write_job(self.ring.as_mut()?, file, offset, bytes)?;
        Some(self.submit(owner, job, registry))
    }

    fn run_inline(&mut self, held: Held) {
        run_inline(&mut self.stats, &mut self.done, &mut self.ring, held);
    }

    /// Sends queued jobs while fewer than [`MAX_IN_FLIGHT`] are unanswered and the socket
    /// takes them.
    fn flush(&mut self, registry: &Registry) {
        let State::Live(process) = &mut self.state else {
            return;
        };
        let Some(socket) = process.socket.as_ref() else {
            return;
        };
        let mut blocked = false;
        while self.in_flight.len() < MAX_IN_FLIGHT {
            let Some(mut held) = self.queued.pop_front() else {
                break;
            };
            let Some(message) = held.job.encode(held.id) else {
                // A name no helper takes: the same refusal the call itself would give.
                complete(&mut self.done, &mut self.ring, held, Err(Errno::INVAL));
                continue;
            };
            let fds = held.job.fds();
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            control.push(SendAncillaryMessage::ScmRights(&fds));
            let sent = loop {
                match rustix::net::sendmsg(
                    socket,
                    &[IoSlice::new(&message)],
                    &mut control,
                    SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
                ) {
                    Err(Errno::INTR) => continue,
                    other => break other,
                }
            };
            match sent {
                Ok(_) => {
                    held.sends += 1;
                    self.in_flight.push_back(held);
                }
                Err(Errno::AGAIN) => {
                    self.queued.push_front(held);
                    blocked = true;
                    break;
                }
                Err(Errno::PIPE | Errno::CONNRESET) => {
                    // The helper is gone; its pidfd (or EOF) reports it, and the job is resent
                    // to the next one.
                    self.queued.push_front(held);
                    break;
                }
                Err(errno) => {
                    warn!(
                        "cannot send {} to the disk helper ({errno}): running it inline",
                        held.id
                    );
                    run_inline(&mut self.stats, &mut self.done, &mut self.ring, held);
                }
            }
        }
        if blocked != process.wants_write {
            let interest = if blocked {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match registry.reregister(
                &mut SourceFd(&socket.as_raw_fd()),
                self.tokens.socket,
                interest,
            ) {
                Ok(()) => process.wants_write = blocked,
                Err(error) => warn!("re-register of the disk helper's socket failed: {error}"),
            }
        }
    }

    /// The helper's socket is ready: read every reply (until `WouldBlock`), send what may be
    /// sent. Returns the delay after which [`DiskHelper::restart`] must be called, if the
    /// helper turned out to be dead.
    pub fn on_socket_event(&mut self, registry: &Registry) -> Option<Duration> {
        let eof = self.read_replies();
        if eof {
            if let State::Live(process) = &mut self.state {
                if let Some(socket) = process.socket.take() {
                    let _ = registry.deregister(&mut SourceFd(&socket.as_raw_fd()));
                }
            }
            return self.check_exit(registry);
        }
        self.flush(registry);
        None
    }

    /// The helper's pidfd is readable: it has exited (confirmed with `waitid`). Returns the
    /// restart delay, as [`DiskHelper::on_socket_event`] does.
    pub fn on_exit_event(&mut self, registry: &Registry) -> Option<Duration> {
        // The replies it sent before dying still count.
        self.read_replies();
        self.check_exit(registry)
    }

    /// Reads replies until `WouldBlock`; true at EOF (or a failed socket).
    fn read_replies(&mut self) -> bool {
        let State::Live(process) = &mut self.state else {
            return false;
        };
        let Some(socket) = process.socket.as_ref() else {
            return true;
        };
        let mut buf = [0u8; 64];
        loop {
            let bytes = match rustix::net::recv(socket, &mut buf, RecvFlags::DONTWAIT) {
                Ok((0, _)) => return true,
                Ok((bytes, _)) => &buf[..bytes.min(buf.len())],
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) => return false,
                Err(errno) => {
                    warn!("disk helper socket: {errno}");
                    return true;
                }
            };
            match Reply::decode(bytes) {
                Ok(Reply::Hello { version }) if version == PROTOCOL_VERSION => {
                    process.ready = true;
                    info!(
                        "disk helper {} ready: blocking disk calls run off the loop",
                        process.pid.as_raw_nonzero()
                    );
                }
                Ok(Reply::Hello { version }) => {
                    warn!("the disk helper speaks version {version}, not {PROTOCOL_VERSION}");
                    return true;
                }
                Ok(Reply::Done { id, errno }) => {
                    let Some(at) = self.in_flight.iter().position(|held| held.id == id) else {
                        warn!("the disk helper answered {id}, which is not outstanding");
                        continue;
                    };
                    let Some(held) = self.in_flight.remove(at) else {
                        continue;
                    };
                    self.stats.by_helper += 1;
                    let result = if errno == 0 {
                        Ok(())
                    } else {
                        Err(Errno::from_raw_os_error(errno))
                    };
                    complete(&mut self.done, &mut self.ring, held, result);
                }
                Err(error) => {
                    warn!("disk helper: {error}");
                    return true;
                }
            }
        }
    }

    /// After EOF or an exit event: reap the helper if it has exited, requeue what it did not
    /// answer, and decide between a restart and giving up.
    fn check_exit(&mut self, registry: &Registry) -> Option<Duration> {
        let State::Live(process) = &mut self.state else {
            return None;
        };
        let status = match rustix::process::waitid(
            rustix::process::WaitId::PidFd(process.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(status)) => super::restart::describe(&status),
            Ok(None) => {
                if process.socket.is_none() {
                    // EOF, yet running: it closed its end of the protocol. Make sure it ends;
                    // its pidfd reports the exit.
                    let _ = rustix::process::pidfd_send_signal(&process.pidfd, Signal::KILL);
                }
                return None;
            }
            Err(error) => format!("status unknown ({})", io::Error::from(error)),
        };
        let State::Live(process) = std::mem::replace(&mut self.state, State::Waiting) else {
            return None;
        };
        let _ = registry.deregister(&mut SourceFd(&process.pidfd.as_raw_fd()));
        if let Some(socket) = &process.socket {
            let _ = registry.deregister(&mut SourceFd(&socket.as_raw_fd()));
        }
        self.stats.died += 1;
        let pid = process.pid.as_raw_nonzero();
        // Unanswered jobs go first again, in their order; one sent too often runs inline.
        // Except a sync: the dead helper may have made it and seen an error, which Linux
        // reports once per open file — the same sync again would succeed over lost data. It
        // fails instead (EIO), and the upload with it; the client may retry.
        while let Some(held) = self.in_flight.pop_back() {
            if matches!(
                held.job.kind(),
                JobKind::Fsync | JobKind::Fdatasync | JobKind::Syncfs
            ) {
                warn!(
                    "{} ({:?}) unanswered by a helper that died: failed, not repeated",
                    held.id,
                    held.job.kind()
                );
                complete(&mut self.done, &mut self.ring, held, Err(Errno::IO));
            } else if held.sends >= MAX_ATTEMPTS {
                warn!(
                    "{} was sent {} times without an answer: running it inline",
                    held.id, held.sends
                );
                self.run_inline(held);
            } else {
                self.stats.resent += 1;
                self.queued.push_front(held);
            }
        }
        if !process.ready {
            self.give_up(&format!("helper {pid} {status} before it was ready"));
            return None;
        }
        if process.started.elapsed() >= super::restart::STABLE_AFTER {
            self.crashes = 0;
        }
        let delay = super::restart::backoff(self.crashes);
        self.crashes = self.crashes.saturating_add(1);
        warn!(
            "disk helper {pid} {status}; restarting it in {delay:?}, {} jobs to send again",
            self.queued.len()
        );
        Some(delay)
    }

    /// No helper from now on: every job held runs inline, now, and so will every new one.
    fn give_up(&mut self, why: &str) {
        warn!("disk helper: {why}; blocking disk calls run on the loop instead");
        self.state = State::Inline;
        while let Some(held) = self.in_flight.pop_front() {
            self.run_inline(held);
        }
        while let Some(held) = self.queued.pop_front() {
            self.run_inline(held);
        }
    }
}

/// Runs a held job on the loop and queues its completion.
fn run_inline(
    stats: &mut DiskStats,
    done: &mut VecDeque<(Option<u64>, DiskDone)>,
    ring: &mut Option<Ring>,
    held: Held,
) {
    stats.inline += 1;
    let result = held.job.run();
    complete(done, ring, held, result);
}

/// Queues the completion of `held`, and gives its slot back to the ring: the job is done with
/// its bytes (a job is completed once, whoever made its call).
fn complete(
    done: &mut VecDeque<(Option<u64>, DiskDone)>,
    ring: &mut Option<Ring>,
    held: Held,
    result: Result<(), Errno>,
) {
    if let Some(ring) = ring.as_mut() {
        ring.release_job(&held.job);
    }
    // A resent unlink that finds no name: the helper that died had done it.
    let result = match (held.job.kind(), result) {
        (JobKind::Unlink, Err(Errno::NOENT)) if held.sends > 1 => Ok(()),
        (_, result) => result,
    };
    done.push_back((
        held.owner,
        DiskDone {
            id: held.id,
            kind: held.job.kind(),
            result,
        },
    ));
}

impl Drop for DiskHelper {
    /// Closes the socket: the helper finishes what it was sent, sees EOF and exits. It is
    /// waited for (briefly: the loop waits for held jobs before it ends, so it is idle), so a
    /// program that embeds the server is left no zombie.
    fn drop(&mut self) {
        let State::Live(process) = std::mem::replace(&mut self.state, State::Inline) else {
            return;
        };
        let held = self.in_flight.len() + self.queued.len();
        if held > 0 {
            debug!("disk helper: {held} jobs not answered at exit");
        }
        drop(process.socket);
        let mut pollfd = libc::pollfd {
            fd: process.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let deadline = Instant::now() + DROP_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // SAFETY: poll reads and writes exactly the one pollfd passed, which outlives it.
            let rc = unsafe { libc::poll(&mut pollfd, 1, left.as_millis() as libc::c_int) };
            if rc == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        let _ = rustix::process::pidfd_send_signal(&process.pidfd, Signal::KILL);
        let _ = rustix::process::waitid(
            rustix::process::WaitId::PidFd(process.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        );
    }
}

fn register(registry: &Registry, process: &Process, tokens: HelperTokens) -> io::Result<()> {
    registry.register(
        &mut SourceFd(&process.pidfd.as_raw_fd()),
        tokens.exit,
        Interest::READABLE,
    )?;
    if let Some(socket) = &process.socket {
        registry.register(
            &mut SourceFd(&socket.as_raw_fd()),
            tokens.socket,
            Interest::READABLE,
        )?;
    }
    Ok(())
}

/// Starts `program __disk-helper FD` on one end of a new socket pair.
fn spawn(program: &Path) -> io::Result<Process> {
    // CLOEXEC on both ends: the commands the server runs must not inherit either; the
    // helper's end is let through exec below, in the child only.
    let (ours, theirs) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // Nonblocking on our end only: O_NONBLOCK belongs to the open file description, and each
    // end is its own, so the helper's end stays blocking, as its loop wants.
    rustix::io::ioctl_fionbio(&ours, true)?;
    let fd = theirs.as_raw_fd();
    let parent = std::process::id();
    let mut command = Command::new(program);
    // `ps` shows the name the server was started as, not /proc/self/exe.
    if let Some(name) = std::env::args_os().next() {
        command.arg0(name);
    }
    command
        .arg(HELPER_SUBCOMMAND)
        .arg(fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Its own process group: a terminal's Ctrl-C reaches the server, which shuts down
        // and closes the socket; the helper then ends after the job in hand.
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (fcntl, prctl, getppid) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // A job in hand completes even under SIGKILL (the call is in the kernel).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The server died before PR_SET_PDEATHSIG took effect: do not start orphaned.
            if u32::try_from(libc::getppid()) != Ok(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(theirs);
    let raw = i32::try_from(child.id()).map_err(io::Error::other)?;
    let pid = Pid::from_raw(raw).ok_or_else(|| io::Error::other("pid 0"))?;
    // Not reaped until its pidfd says so, so the pid cannot be reused meanwhile.
    let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
        Ok(pidfd) => pidfd,
        Err(error) => {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
            let mut child = child;
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "pidfd_open: {} (needs Linux 5.3 or later)",
                io::Error::from(error)
            )));
        }
    };
    // `std::process::Child` neither kills nor waits when dropped: the pidfd takes over.
    drop(child);
    Ok(Process {
        pid,
        pidfd,
        socket: Some(ours),
        ready: false,
        wants_write: false,
        started: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_null() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    #[test]
    fn jobs_round_trip_through_their_encoding() {
        let cases = [
            (JobId(0), Job::Fsync(dev_null())),
            (JobId(u64::MAX), Job::Fdatasync(dev_null())),
            (JobId(9), Job::Writeback(dev_null())),
            (
                JobId(42),
                Job::Unlink {
                    dir: dev_null(),
                    name: ".monoreactor-trash-1f-2".to_string(),
                },
            ),
        ];
        for (id, job) in cases {
            let bytes = job.encode(id).unwrap();
            let (back_id, back) = Job::decode(&bytes, dev_null()).unwrap();
            assert_eq!(back_id, id);
            assert_eq!(back.kind(), job.kind());
            assert_eq!(back.args(), job.args());
        }
    }

    #[test]
    fn a_write_job_round_trips_and_writes_its_slot_where_it_says() {
        let mut ring = Ring::new().unwrap();
        let path = std::env::temp_dir().join(format!("monoreactor-ring-{}", std::process::id()));
        let file = std::fs::File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let first = write_job(&mut ring, file.as_fd(), 5, b"hello").unwrap();
        let second = write_job(&mut ring, file.as_fd(), 0, b"12345").unwrap();
        assert_eq!(ring.free_slots(), RING_SLOTS - 2);
        let bytes = second.encode(JobId(7)).unwrap();
        let fds: Vec<OwnedFd> = second
            .fds()
            .into_iter()
            .map(|fd| fd.try_clone_to_owned().unwrap())
            .collect();
        let (id, back) = Job::decode_with(&bytes, fds).unwrap();
        assert_eq!(
            (id, back.kind(), back.args()),
            (JobId(7), JobKind::Write, second.args())
        );
        assert!(
            Job::decode(&bytes, dev_null()).is_err(),
            "a write needs its ring too"
        );
        first.run().unwrap();
        back.run().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"12345hello");
        // The helper's copy of a job names the slot but never gives it back: only the
        // server's side does, once, when the job is done.
        drop(back);
        assert_eq!(ring.free_slots(), RING_SLOTS - 2);
        ring.release_job(&first);
        ring.release_job(&second);
        assert_eq!(
            ring.free_slots(),
            RING_SLOTS,
            "slots come back when their jobs are done"
        );
        let _ = std::fs::remove_file(&path);
        let mut full = Ring::new().unwrap();
        let held: Vec<Slot> = (0..RING_SLOTS)
            .map(|_| full.store(b"x").unwrap().unwrap())
            .collect();
        assert!(full.store(b"x").is_none(), "a full ring says so");
        assert!(
            full.store(&vec![0; SLOT_LEN + 1]).is_none(),
            "too big for a slot"
        );
        drop(held);
    }

    #[test]
    fn a_name_that_is_not_one_component_is_never_sent_nor_accepted() {
        for name in ["", ".", "..", "a/b", "../x", "a\0b", &"x".repeat(256)] {
            let job = Job::Unlink {
                dir: dev_null(),
                name: name.to_string(),
            };
            assert_eq!(job.encode(JobId(1)), None, "{name:?}");
            assert_eq!(job.run(), Err(Errno::INVAL), "{name:?}");
            // Hand-made messages with such names are refused by the helper's decoder.
            let mut bytes = 1u64.to_le_bytes().to_vec();
            bytes.push(2);
            bytes.extend_from_slice(&(name.len() as u16).to_le_bytes());
            bytes.extend_from_slice(name.as_bytes());
            assert!(
                matches!(
                    Job::decode(&bytes, dev_null()),
                    Err(WireError::BadName(JobId(1)) | WireError::BadLength(JobId(1)))
                ),
                "{name:?}"
            );
        }
        assert_eq!(
            Job::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0], dev_null()).unwrap_err(),
            WireError::UnknownOp(JobId(1))
        );
        assert_eq!(
            Job::decode(&[1, 0, 0], dev_null()).unwrap_err(),
            WireError::Short
        );
        // An fsync carries no name.
        assert_eq!(
            Job::decode(&[3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, b'x'], dev_null()).unwrap_err(),
            WireError::BadName(JobId(3))
        );
        // A length that does not match the message.
        assert_eq!(
            Job::decode(&[3, 0, 0, 0, 0, 0, 0, 0, 2, 5, 0, b'x'], dev_null()).unwrap_err(),
            WireError::BadLength(JobId(3))
        );
    }

    #[test]
    fn replies_round_trip_and_garbage_is_refused() {
        for reply in [
            Reply::Hello { version: 1 },
            Reply::Done {
                id: JobId(7),
                errno: 0,
            },
            Reply::Done {
                id: JobId(u64::MAX),
                errno: libc::ENOSPC,
            },
        ] {
            assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
        }
        let mut hello = Reply::Hello { version: 1 }.encode();
        hello[1] ^= 1;
        assert_eq!(Reply::decode(&hello), Err(WireError::BadReply), "bad magic");
        assert_eq!(Reply::decode(&[]), Err(WireError::BadReply));
        assert_eq!(Reply::decode(&[TAG_DONE, 1, 2]), Err(WireError::BadReply));
        assert_eq!(Reply::decode(&[9; DONE_LEN]), Err(WireError::BadReply));
    }

    #[test]
    fn trash_names_are_reserved() {
        assert!(TRASH_PREFIX.starts_with(crate::proto::path::RESERVED_PREFIX));
        assert!(crate::proto::path::check_relative(&format!("{TRASH_PREFIX}1")).is_err());
    }

    /// Without a helper every job runs inline, and its completion still waits for
    /// `next_done` (never delivered within `submit`).
    #[test]
    fn inline_jobs_complete_through_the_queue() {
        let dir = std::env::temp_dir().join(format!("mr-disk-inline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("victim"), b"x").unwrap();
        let poll = mio::Poll::new().unwrap();
        let mut disk = DiskHelper::new(
            None,
            HelperTokens {
                socket: Token(1),
                exit: Token(2),
            },
        );
        disk.start(poll.registry());
        assert!(disk.is_inline());
        let dirfd = OwnedFd::from(std::fs::File::open(&dir).unwrap());
        let unlink = disk.submit(
            Some(9),
            Job::Unlink {
                dir: dirfd,
                name: "victim".to_string(),
            },
            poll.registry(),
        );
        let sync = disk.submit(None, Job::Fsync(dev_null()), poll.registry());
        assert!(!dir.join("victim").exists());
        assert_eq!(
            disk.next_done(),
            Some((
                Some(9),
                DiskDone {
                    id: unlink,
                    kind: JobKind::Unlink,
                    result: Ok(()),
                }
            ))
        );
        // fsync of /dev/null: EINVAL or success depending on the kernel; what matters is that
        // the result is the call's.
        let (owner, done) = disk.next_done().unwrap();
        assert_eq!((owner, done.id), (None, sync));
        assert_eq!(done.result, rustix::fs::fsync(dev_null()));
        assert!(disk.is_idle());
        assert_eq!(disk.stats().inline, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The server's side against a helper played by the test, on a socket whose send buffer
    /// is as small as the kernel allows: sends block, the socket is registered for
    /// writability, the rest goes out as the "helper" reads, and every reply (an errno
    /// included) reaches its job's owner once.
    #[test]
    fn a_full_socket_holds_jobs_in_the_queue_until_it_is_writable() {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        rustix::io::ioctl_fionbio(&ours, true).unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&ours, 1).unwrap();
        // A process for the pidfd: the "helper" is this test, on `theirs`.
        let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = Pid::from_raw(sleeper.id() as i32).unwrap();
        let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let tokens = HelperTokens {
            socket: Token(1),
            exit: Token(2),
        };
        let mut disk = DiskHelper::new(None, tokens);
        let process = Process {
            pid,
            pidfd,
            socket: Some(ours),
            ready: true,
            wants_write: false,
            started: Instant::now(),
        };
        register(poll.registry(), &process, tokens).unwrap();
        disk.state = State::Live(process);

        let jobs = MAX_IN_FLIGHT;
        let ids: Vec<JobId> = (0..jobs)
            .map(|_| disk.submit(Some(3), Job::Fdatasync(dev_null()), poll.registry()))
            .collect();
        let sent = disk.in_flight.len();
        assert!(
            sent < jobs,
            "the small buffer blocks some sends: {sent} went out"
        );
        assert_eq!(disk.queued.len(), jobs - sent);
        let State::Live(process) = &disk.state else {
            panic!("live")
        };
        assert!(process.wants_write, "registered for writability");

        let mut events = mio::Events::with_capacity(8);
        let mut answered = Vec::new();
        let mut done = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.len() < jobs && Instant::now() < deadline {
            // The "helper": take one job with its descriptor, answer it.
            let mut message = [0u8; MAX_JOB_LEN];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(2))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            match rustix::net::recvmsg(
                &theirs,
                &mut [IoSliceMut::new(&mut message)],
                &mut control,
                RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(received) => {
                    let mut fds = Vec::new();
                    for item in control.drain() {
                        if let RecvAncillaryMessage::ScmRights(rights) = item {
                            fds.extend(rights);
                        }
                    }
                    assert_eq!(fds.len(), 1, "one descriptor per job");
                    let fd = fds.pop().unwrap();
                    let (id, job) = Job::decode(&message[..received.bytes], fd).unwrap();
                    assert_eq!(job.kind(), JobKind::Fdatasync);
                    // The last one fails, to see the errno travel.
                    let errno = if id == ids[jobs - 1] { libc::EIO } else { 0 };
                    answered.push(id);
                    send_reply(&theirs, &Reply::Done { id, errno }).unwrap();
                }
                Err(Errno::AGAIN) => {}
                Err(errno) => panic!("recvmsg: {errno}"),
            }
            poll.poll(&mut events, Some(Duration::from_millis(10)))
                .unwrap();
            for event in events.iter() {
                assert_eq!(event.token(), tokens.socket);
                assert_eq!(disk.on_socket_event(poll.registry()), None);
            }
            while let Some(one) = disk.next_done() {
                done.push(one);
            }
        }
        assert_eq!(answered, ids, "sent in order, each once");
        let expected: Vec<_> = ids
            .iter()
            .map(|&id| {
                let result = if id == ids[jobs - 1] {
                    Err(Errno::IO)
                } else {
                    Ok(())
                };
                (
                    Some(3),
                    DiskDone {
                        id,
                        kind: JobKind::Fdatasync,
                        result,
                    },
                )
            })
            .collect();
        assert_eq!(done, expected);
        assert!(disk.is_idle());
        let State::Live(process) = &disk.state else {
            panic!("live")
        };
        assert!(
            !process.wants_write,
            "back to readable only once the queue is empty"
        );
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        // The sleeper is reaped: dropping the helper must not wait on it.
        disk.state = State::Inline;
    }
}
