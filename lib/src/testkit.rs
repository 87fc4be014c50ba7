//! Helpers for testing code that speaks this protocol, yours as well as ours.
//!
//! - [`FragmentingWriter`] writes a byte stream to a real socket in seeded random pieces, with
//!   optional pauses, so a server sees the splits a real network produces (and a failing seed
//!   can be replayed).
//! - [`ScriptedIo`] replays reads, `WouldBlock`s, errors and expected writes into anything that
//!   drives a `Read + Write`, such as [`Connection::drive`](crate::conn::Connection::drive) —
//!   the synchronous cousin of tokio-test's `io::Builder`.
//! - [`ScriptedChildren`] stands in for the processes a connection runs: pipes that hold the
//!   bytes you put there, exits you decide, signals and stdin recorded.
//! - [`ScriptedDisk`] holds the disk jobs a connection submits until you complete them (with
//!   the real call, or a result you choose).
//! - [`ConnHarness`] drives a [`Connection`] through a [`ScriptedIo`] the way the reactor
//!   does, with the clock in your hands.
//! - [`SplitMix64`], the small seeded generator they use.

use crate::sys::disk::{Disk, DiskDone, Job, JobId};
use crate::sys::files::{FileState, Files};
use crate::sys::root::Root;
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::time::Duration;

use crate::access::{Access, Token};
use crate::buffer::BufferPool;
use crate::conn::{Connection, Context, Protocol, Stream, Verdict};
use crate::limits::Limits;
use crate::proto::exec::{EndReason, Signal, Termination};
use crate::service::exec::{
    ChildId, ChildSource, Children, OutputPipe, SpawnError, SpawnSpec, Spawned,
};
use crate::timer::Tick;

/// SplitMix64: a tiny, fast, seeded generator. Not for cryptography; for reproducible tests.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    ///
    /// # Panics
    /// If `low > high`.
    pub fn between(&mut self, low: usize, high: usize) -> usize {
        assert!(low <= high, "empty range {low}..={high}");
        let span = (high - low) as u64 + 1;
        low + (self.next_u64() % span) as usize
    }
}

/// Writes everything given to it to `inner` in random-sized pieces (1 to `max_piece` bytes),
/// each followed by `flush`, optionally sleeping up to `max_pause` between pieces.
///
/// Use it through [`Write::write_all`]. On a TCP socket, turn on `TCP_NODELAY` so each piece
/// leaves as its own segment.
///
/// ```no_run
/// use std::io::Write;
/// use std::net::TcpStream;
/// use std::time::Duration;
/// use monoreactor::testkit::FragmentingWriter;
///
/// let socket = TcpStream::connect("127.0.0.1:7007")?;
/// socket.set_nodelay(true)?;
/// let mut writer = FragmentingWriter::new(socket, 42)
///     .max_piece(3)
///     .max_pause(Duration::from_millis(2));
/// writer.write_all(b"hello, in pieces")?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct FragmentingWriter<W> {
    inner: W,
    rng: SplitMix64,
    max_piece: usize,
    max_pause: Duration,
}

impl<W: Write> FragmentingWriter<W> {
    /// Pieces of 1 to 16 bytes, no pauses; `seed` fixes the sizes.
    pub fn new(inner: W, seed: u64) -> FragmentingWriter<W> {
        FragmentingWriter {
            inner,
            rng: SplitMix64::new(seed),
            max_piece: 16,
            max_pause: Duration::ZERO,
        }
    }

    /// Largest piece, in bytes (at least 1).
    pub fn max_piece(mut self, bytes: usize) -> FragmentingWriter<W> {
        self.max_piece = bytes.max(1);
        self
    }

    /// Longest pause between pieces; each pause is random up to this.
    pub fn max_pause(mut self, pause: Duration) -> FragmentingWriter<W> {
        self.max_pause = pause;
        self
    }

    /// The writer underneath.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Gives back the writer underneath.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for FragmentingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.max_pause.is_zero() {
            let micros = self.rng.between(0, self.max_pause.as_micros() as usize);
            std::thread::sleep(Duration::from_micros(micros as u64));
        }
        let piece = self.rng.between(1, self.max_piece.min(buf.len()));
        let written = self.inner.write(&buf[..piece])?;
        self.inner.flush()?;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One step of a [`ScriptedIo`] script.
#[derive(Clone, PartialEq, Eq)]
enum Action {
    Read(Vec<u8>),
    ReadError(ErrorKind),
    Eof,
    Write(Vec<u8>),
    WriteError(ErrorKind),
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Read(bytes) => write!(f, "read {:?}", bytes.escape_ascii().to_string()),
            Action::ReadError(kind) => write!(f, "read error {kind:?}"),
            Action::Eof => f.write_str("eof"),
            Action::Write(bytes) => write!(f, "write {:?}", bytes.escape_ascii().to_string()),
            Action::WriteError(kind) => write!(f, "write error {kind:?}"),
        }
    }
}

/// Builds a [`ScriptedIo`]: the steps happen in the order given.
#[derive(Debug, Default)]
pub struct Builder {
    actions: VecDeque<Action>,
}

impl Builder {
    /// An empty script.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// The peer sends `bytes`: reads return them (in several reads if the caller's buffer is
    /// smaller).
    pub fn read(&mut self, bytes: &[u8]) -> &mut Builder {
        self.actions.push_back(Action::Read(bytes.to_vec()));
        self
    }

    /// The next read fails with `WouldBlock` (nothing has arrived yet).
    pub fn read_would_block(&mut self) -> &mut Builder {
        self.read_error(ErrorKind::WouldBlock)
    }

    /// The next read fails with `kind` (use `Interrupted` to test retries).
    pub fn read_error(&mut self, kind: ErrorKind) -> &mut Builder {
        self.actions.push_back(Action::ReadError(kind));
        self
    }

    /// The peer closes its side: the read that reaches this step and every later read return
    /// 0. Writes scripted after it may still happen (a half-closed peer still reads).
    pub fn eof(&mut self) -> &mut Builder {
        self.actions.push_back(Action::Eof);
        self
    }

    /// The code under test must write exactly `bytes` next, in one write or several. A write
    /// that offers more than this step holds is accepted only up to the step's end: a short
    /// write, as a full socket buffer would give.
    pub fn write(&mut self, bytes: &[u8]) -> &mut Builder {
        self.actions.push_back(Action::Write(bytes.to_vec()));
        self
    }

    /// The next write fails with `WouldBlock` (the socket buffer is full).
    pub fn write_would_block(&mut self) -> &mut Builder {
        self.write_error(ErrorKind::WouldBlock)
    }

    /// The next write fails with `kind`.
    pub fn write_error(&mut self, kind: ErrorKind) -> &mut Builder {
        self.actions.push_back(Action::WriteError(kind));
        self
    }

    /// The finished script.
    pub fn build(&mut self) -> ScriptedIo {
        ScriptedIo {
            actions: std::mem::take(&mut self.actions),
            write_shut: false,
            eof: false,
        }
    }
}

/// A scripted transport: reads replay the script, writes are checked against it.
///
/// - A read when the next step is a write returns `WouldBlock`: the peer is waiting for our
///   reply. A read at the end of the script returns `WouldBlock` too.
/// - A write when the next step is not a write panics: the code under test said something the
///   script did not expect. So does a write whose bytes differ from the script's.
/// - On drop, every step but a final `eof` must have been used, or it panics.
/// - Once a read reaches an `eof` step, every later read returns 0.
#[derive(Debug)]
pub struct ScriptedIo {
    actions: VecDeque<Action>,
    write_shut: bool,
    /// An `eof` step was read: every later read returns 0, and writes may still follow.
    eof: bool,
}

impl ScriptedIo {
    /// Whether `shutdown_write` was called.
    pub fn write_shut(&self) -> bool {
        self.write_shut
    }

    /// Steps not used yet.
    pub fn remaining(&self) -> usize {
        self.actions.len()
    }
}

impl Read for ScriptedIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        match self.actions.front_mut() {
            Some(Action::Read(bytes)) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                bytes.drain(..n);
                if bytes.is_empty() {
                    self.actions.pop_front();
                }
                Ok(n)
            }
            Some(Action::ReadError(kind)) => {
                let kind = *kind;
                self.actions.pop_front();
                Err(kind.into())
            }
            Some(Action::Eof) => {
                self.actions.pop_front();
                self.eof = true;
                Ok(0)
            }
            Some(Action::Write(_) | Action::WriteError(_)) | None => {
                Err(ErrorKind::WouldBlock.into())
            }
        }
    }
}

impl Write for ScriptedIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.actions.front_mut() {
            Some(Action::Write(expected)) => {
                let n = expected.len().min(buf.len());
                assert!(
                    buf[..n] == expected[..n],
                    "write mismatch:\n  wrote    {:?}\n  expected {:?}",
                    buf[..n].escape_ascii().to_string(),
                    expected[..n].escape_ascii().to_string()
                );
                expected.drain(..n);
                if expected.is_empty() {
                    self.actions.pop_front();
                }
                Ok(n)
            }
            Some(Action::WriteError(kind)) => {
                let kind = *kind;
                self.actions.pop_front();
                Err(kind.into())
            }
            next => panic!(
                "unexpected write of {:?}; next step is {next:?}",
                buf.escape_ascii().to_string()
            ),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for ScriptedIo {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.write_shut = true;
        Ok(())
    }
}

impl Drop for ScriptedIo {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let unused: Vec<&Action> = self
            .actions
            .iter()
            .filter(|action| **action != Action::Eof)
            .collect();
        assert!(unused.is_empty(), "script not used up: {unused:?}");
    }
}

/// A transport for tests that care about *what* a connection sends more than about each
/// `write` call: reads take from bytes you [`MemoryIo::push`] (`WouldBlock` when there are
/// none, 0 after [`MemoryIo::close`]), writes are recorded, at most [`MemoryIo::room`] bytes
/// in all if set (then `WouldBlock`, like a full socket buffer). Decode what was written with
/// [`MemoryIo::take_frames`].
#[derive(Debug, Default)]
pub struct MemoryIo {
    input: VecDeque<u8>,
    closed: bool,
    written: Vec<u8>,
    taken: usize,
    /// Bytes writes may still add; `None`: unlimited.
    pub room: Option<usize>,
    /// Whether `shutdown_write` was called.
    pub write_shut: bool,
}

impl MemoryIo {
    /// An empty transport with unlimited room.
    pub fn new() -> MemoryIo {
        MemoryIo::default()
    }

    /// The peer sends `bytes`.
    pub fn push(&mut self, bytes: &[u8]) -> &mut MemoryIo {
        self.input.extend(bytes);
        self
    }

    /// The peer closes its side: once pushed bytes are read, reads return 0.
    pub fn close(&mut self) -> &mut MemoryIo {
        self.closed = true;
        self
    }

    /// Bytes pushed and not yet read.
    pub fn unread(&self) -> usize {
        self.input.len()
    }

    /// Everything written since the last call, as whole frames (panics on a partial or
    /// invalid frame: the connection must only ever write whole frames).
    pub fn take_frames(&mut self) -> Vec<crate::client::OwnedFrame> {
        let bytes = &self.written[self.taken..];
        let decoder = crate::proto::Decoder::new(u32::MAX);
        let mut frames = decoder.frames(bytes);
        let owned = frames
            .by_ref()
            .map(|frame| {
                let frame = frame.expect("the connection writes valid frames");
                crate::client::OwnedFrame {
                    header: frame.header,
                    payload: frame.payload.to_vec(),
                }
            })
            .collect();
        assert_eq!(
            frames.consumed(),
            bytes.len(),
            "the connection wrote part of a frame"
        );
        self.taken = self.written.len();
        owned
    }
}

impl Read for MemoryIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return if self.closed {
                Ok(0)
            } else {
                Err(ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.input.len());
        for (slot, byte) in buf.iter_mut().zip(self.input.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for MemoryIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.room.map_or(buf.len(), |room| room.min(buf.len()));
        if n == 0 && !buf.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.written.extend_from_slice(&buf[..n]);
        if let Some(room) = self.room.as_mut() {
            *room -= n;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for MemoryIo {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.write_shut = true;
        Ok(())
    }
}

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

/// Disk jobs for a [`Connection`] under test: each submitted job is held, in order, until the
/// test completes it — with the real blocking call ([`ScriptedDisk::run_next`]) or with a
/// result of its choosing ([`ScriptedDisk::finish_next`]) — and hands the completion to
/// [`ConnHarness::disk_done`], as the reactor delivers it.
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

/// Child processes for a [`Connection`] under test: every spawn succeeds (with pids from 1000
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

/// Drives one [`Connection`] through a [`ScriptedIo`] (or a [`MemoryIo`]) exactly as the
/// reactor does, so a test
/// states only what the peer sends, what the connection must write, and what time it is.
///
/// Two rules of the real loop shape every script, and the harness keeps both:
/// - **Readiness is an edge.** [`ConnHarness::event`] is one poll event: it records the
///   readiness ([`Connection::on_ready`]) and drives once. The connection then reads until the
///   socket says `WouldBlock` — or until a read comes back *shorter* than its buffer, which
///   proves the socket drained (epoll(7)). So bytes scripted after a short read or a
///   `read_would_block` are only read at the next `event`, as on a real socket.
/// - **Budgets end a turn.** When a drive returns [`Verdict::Again`], the reactor drives again
///   next turn without any event; [`ConnHarness::drive`] is that next turn, and
///   [`ConnHarness::settle`] repeats it until the verdict changes.
///
/// ```
/// use monoreactor::conn::Verdict;
/// use monoreactor::limits::Limits;
/// use monoreactor::proto::{Flags, Frame, FrameType, Hello, HelloOk, PROTOCOL_VERSION, SessionFlags};
/// use monoreactor::testkit::{Builder, ConnHarness};
///
/// let mut hello = Vec::new();
/// Hello::current().encode(&mut hello);
/// let mut hello_ok = Vec::new();
/// HelloOk {
///     version: PROTOCOL_VERSION,
///     max_payload_len: Limits::default().max_frame_len,
///     flags: SessionFlags::AUTHENTICATED,
/// }
/// .encode(&mut hello_ok);
/// let request = Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 1, b"hi").to_vec();
/// let reply = Frame::new(FrameType::EchoReply, Flags::END_STREAM, 1, b"hi").to_vec();
///
/// let mut io = Builder::new()
///     .read(&hello)    // the client's HELLO: shorter than the read buffer, so the socket
///     .write(&hello_ok) // counts as drained and the connection answers without reading on
///     .read(&request)  // a second packet: read only at the next readiness event
///     .write(&reply)
///     .eof()           // the client closes
///     .build();
/// let mut harness = ConnHarness::framed(Limits::default());
/// assert_eq!(harness.event(&mut io, true, true), Verdict::Wait);
/// assert_eq!(harness.event(&mut io, true, false), Verdict::Wait);
/// assert_eq!(harness.event(&mut io, true, false), Verdict::Close);
/// ```
#[derive(Debug)]
pub struct ConnHarness {
    /// The connection under test.
    pub conn: Connection,
    /// Its buffer pool.
    pub pool: BufferPool,
    /// Its limits.
    pub limits: Limits,
    /// The time the next drive sees.
    pub now: Tick,
    /// Access rules (default: echo only, no token).
    pub access: Access,
    /// Child processes, when commands are enabled ([`ConnHarness::with_exec`]).
    pub children: Option<ScriptedChildren>,
    /// The loop's turn number, advanced by every event and drive.
    pub turn: u64,
    /// The file service's root and state, when files are enabled
    /// ([`ConnHarness::with_files`]).
    pub files: Option<(Root, FileState)>,
    /// Disk jobs, held until the test completes them ([`ConnHarness::with_disk`]); without,
    /// blocking disk calls are made inline.
    pub disk: Option<ScriptedDisk>,
}

impl ConnHarness {
    /// A framed connection accepted at tick 0.
    pub fn framed(limits: Limits) -> ConnHarness {
        ConnHarness::new(Protocol::Framed, limits)
    }

    /// A connection of `protocol` accepted at tick 0.
    pub fn new(protocol: Protocol, limits: Limits) -> ConnHarness {
        ConnHarness {
            conn: Connection::new(protocol, Tick(0), &limits),
            pool: BufferPool::new(limits.io_buffer_len, 8),
            limits,
            now: Tick(0),
            access: Access::ECHO_ONLY,
            children: None,
            files: None,
            disk: None,
            turn: 0,
        }
    }

    /// Disk jobs go to a [`ScriptedDisk`] instead of being made inline.
    pub fn with_disk(mut self) -> ConnHarness {
        self.disk = Some(ScriptedDisk::new());
        self
    }

    /// The scripted disk.
    ///
    /// # Panics
    /// Without [`ConnHarness::with_disk`].
    pub fn disk(&mut self) -> &mut ScriptedDisk {
        self.disk.as_mut().expect("with_disk() first")
    }

    /// A disk job's completion reaches the connection, then one drive (as the reactor does).
    pub fn disk_done<S: Stream>(&mut self, io: &mut S, done: DiskDone) -> Verdict {
        self.with_context(|conn, cx| conn.handle_disk_done(done, cx));
        self.drive(io)
    }

    /// Commands enabled behind `token`, run by [`ScriptedChildren`].
    pub fn with_exec(mut self, token: &[u8]) -> ConnHarness {
        self.access = Access {
            token: Some(Token::new(token.to_vec()).expect("a valid token")),
            exec: true,
        };
        self.children = Some(ScriptedChildren::new());
        self
    }

    /// Serves files from a real directory `root` (created if missing), as the reactor does.
    ///
    /// # Panics
    /// If the directory cannot be opened.
    pub fn with_files(mut self, root: &std::path::Path) -> ConnHarness {
        let root = Root::open_or_create(root).expect("a usable root directory");
        let state = FileState::new(self.limits.max_transfers, self.limits.max_put);
        self.files = Some((root, state));
        self
    }

    /// The scripted children.
    ///
    /// # Panics
    /// Without [`ConnHarness::with_exec`].
    pub fn children(&mut self) -> &mut ScriptedChildren {
        self.children.as_mut().expect("with_exec() first")
    }

    /// One readiness event for the socket, then one drive.
    pub fn event<S: Stream>(&mut self, io: &mut S, readable: bool, writable: bool) -> Verdict {
        self.conn.on_ready(readable, writable);
        self.drive(io)
    }

    /// One readiness event for a command's descriptor (child number `index`), then one drive.
    pub fn child_event<S: Stream>(
        &mut self,
        io: &mut S,
        index: u8,
        source: ChildSource,
    ) -> Verdict {
        self.conn.on_child_ready(index, source);
        self.drive(io)
    }

    /// One more turn without an event (what the reactor does after [`Verdict::Again`]).
    pub fn drive<S: Stream>(&mut self, io: &mut S) -> Verdict {
        self.turn += 1;
        self.with_context(|conn, cx| conn.drive(io, cx))
    }

    /// Runs `work` on the connection with the [`Context`] the reactor would give it.
    pub fn with_context<R>(
        &mut self,
        work: impl FnOnce(&mut Connection, &mut Context<'_>) -> R,
    ) -> R {
        let mut cx = Context {
            pool: &mut self.pool,
            limits: &self.limits,
            now: self.now,
            access: &self.access,
            children: self
                .children
                .as_mut()
                .map(|children| children as &mut dyn Children),
            turn: self.turn,
            auth_log: None,
            files: self
                .files
                .as_mut()
                .map(|(root, state)| Files { root, state }),
            disk: self.disk.as_mut().map(|disk| disk as &mut dyn Disk),
        };
        work(&mut self.conn, &mut cx)
    }

    /// Drives again while the verdict is [`Verdict::Again`] (at most 10,000 turns).
    pub fn settle<S: Stream>(&mut self, io: &mut S) -> Verdict {
        let mut verdict = self.drive(io);
        for _ in 0..10_000 {
            if verdict != Verdict::Again {
                return verdict;
            }
            verdict = self.drive(io);
        }
        panic!("still Again after 10,000 turns");
    }

    /// Moves the clock to the connection's next deadline, lets it act on it, and drives.
    pub fn expire<S: Stream>(&mut self, io: &mut S) -> Verdict {
        self.now = self.conn.deadline(&self.limits);
        self.with_context(|conn, cx| conn.on_deadline(cx));
        self.drive(io)
    }

    /// Starts the connection's part of a server shutdown, with `grace` to finish, and drives.
    pub fn shutdown<S: Stream>(&mut self, io: &mut S, grace: Duration) -> Verdict {
        self.with_context(|conn, cx| conn.begin_shutdown(grace, cx));
        self.drive(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragmenting_writer_delivers_everything_in_small_pieces() {
        let data: Vec<u8> = (0..=255).collect();
        let mut writer = FragmentingWriter::new(Vec::new(), 7).max_piece(5);
        writer.write_all(&data).unwrap();
        assert_eq!(writer.into_inner(), data);
    }

    #[test]
    fn fragmenting_writer_piece_sizes_follow_the_seed() {
        struct Pieces(Vec<usize>);
        impl Write for Pieces {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.push(buf.len());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let sizes = |seed| {
            let mut writer = FragmentingWriter::new(Pieces(Vec::new()), seed).max_piece(9);
            writer.write_all(&[0; 100]).unwrap();
            writer.into_inner().0
        };
        assert_eq!(sizes(1), sizes(1));
        assert_ne!(sizes(1), sizes(2));
        assert!(sizes(3).iter().all(|&size| (1..=9).contains(&size)));
    }

    #[test]
    fn scripted_reads_follow_the_script() {
        let mut io = Builder::new()
            .read(b"abc")
            .read_would_block()
            .read_error(ErrorKind::Interrupted)
            .eof()
            .build();
        let mut buf = [0; 2];
        assert_eq!(io.read(&mut buf).unwrap(), 2);
        assert_eq!(io.read(&mut buf).unwrap(), 1, "the rest of the chunk");
        assert_eq!(io.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
        assert_eq!(
            io.read(&mut buf).unwrap_err().kind(),
            ErrorKind::Interrupted
        );
        assert_eq!(io.read(&mut buf).unwrap(), 0);
        assert_eq!(io.read(&mut buf).unwrap(), 0, "eof stays");
    }

    #[test]
    fn scripted_write_longer_than_step_is_short() {
        let mut io = Builder::new().write(b"ab").write(b"cd").build();
        assert_eq!(io.write(b"abcd").unwrap(), 2);
        assert_eq!(io.write(b"cd").unwrap(), 2);
    }

    #[test]
    fn scripted_read_before_expected_write_would_block() {
        let mut io = Builder::new().write(b"x").build();
        assert_eq!(
            io.read(&mut [0; 4]).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        io.write_all(b"x").unwrap();
    }

    #[test]
    #[should_panic(expected = "write mismatch")]
    fn scripted_wrong_write_panics() {
        let mut io = Builder::new().write(b"yes").build();
        let _ = io.write(b"no");
    }

    #[test]
    #[should_panic(expected = "unexpected write")]
    fn scripted_write_when_a_read_is_next_panics() {
        let mut io = Builder::new().read(b"hi").build();
        let _ = io.write(b"?");
    }

    #[test]
    #[should_panic(expected = "script not used up")]
    fn scripted_unused_steps_panic_on_drop() {
        let _io = Builder::new().read(b"never read").build();
    }
}
