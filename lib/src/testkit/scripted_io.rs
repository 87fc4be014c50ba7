//! Scripted and in-memory byte streams, and a writer that fragments what it writes.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::time::Duration;

use crate::testkit::SplitMix64;
use crate::transport::Transport;

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

impl Transport for ScriptedIo {
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
    delivered: usize,
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
        self.delivered += n;
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

impl Transport for MemoryIo {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.write_shut = true;
        Ok(())
    }
}

impl MemoryIo {
    /// Everything written so far, as the peer would read it (raw bytes, whatever
    /// [`MemoryIo::take_frames`] has taken).
    pub fn written(&self) -> &[u8] {
        &self.written
    }

    /// Bytes reads have handed to the connection so far.
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    /// The whole frames written since the last call; a frame not completely written yet (a
    /// short write stopped inside it) is left for a later call.
    ///
    /// # Panics
    /// On bytes that are not a frame: the connection must only ever write valid frames.
    pub fn take_whole_frames(&mut self) -> Vec<crate::client::OwnedFrame> {
        let mut reader = FrameReader::new();
        reader.push(&self.written[self.taken..]);
        let mut frames = Vec::new();
        while let Some(frame) = reader
            .next_frame()
            .expect("the connection writes valid frames")
        {
            frames.push(frame);
        }
        self.taken = self.written.len() - reader.partial();
        frames
    }
}

/// Splits what a connection wrote into frames, from raw bytes in pieces of any size: a frame
/// cut short by a short write stays [`FrameReader::partial`] until its rest is pushed. What
/// a client's receive loop does (`docs/PROTOCOL.md`, 10.2), for tests and fuzzers that
/// check the server's output.
///
/// ```
/// use monoreactor::proto::{Flags, Frame, FrameType};
/// use monoreactor::testkit::FrameReader;
///
/// let wire = Frame::new(FrameType::EchoReply, Flags::END_STREAM, 1, b"hi").to_vec();
/// let mut reader = FrameReader::new();
/// reader.push(&wire[..5]);
/// assert!(reader.next_frame().unwrap().is_none());
/// assert_eq!(reader.partial(), 5);
/// reader.push(&wire[5..]);
/// assert_eq!(reader.next_frame().unwrap().unwrap().payload, b"hi");
/// assert_eq!(reader.partial(), 0);
/// ```
///
#[derive(Debug)]
pub struct FrameReader {
    decoder: crate::proto::Decoder,
    bytes: Vec<u8>,
    /// Start of the first byte not yet returned as part of a frame.
    at: usize,
}

impl Default for FrameReader {
    fn default() -> FrameReader {
        FrameReader::new()
    }
}

impl FrameReader {
    /// A reader that takes frames of any length the header can declare.
    pub fn new() -> FrameReader {
        FrameReader::with_limit(u32::MAX)
    }

    /// A reader that refuses payloads above `max_payload_len`, as a client with that limit.
    pub fn with_limit(max_payload_len: u32) -> FrameReader {
        FrameReader {
            decoder: crate::proto::Decoder::new(max_payload_len),
            bytes: Vec::new(),
            at: 0,
        }
    }

    /// More bytes from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.at > 0 && self.at == self.bytes.len() {
            self.bytes.clear();
            self.at = 0;
        }
        self.bytes.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` until one is complete, or the header's error (after
    /// which the stream cannot be split any further: the same error comes back).
    pub fn next_frame(
        &mut self,
    ) -> Result<Option<crate::client::OwnedFrame>, crate::proto::DecodeError> {
        let Some(frame) = self.decoder.decode(&self.bytes[self.at..])? else {
            return Ok(None);
        };
        let owned = crate::client::OwnedFrame {
            header: frame.header,
            payload: frame.payload.to_vec(),
        };
        self.at += frame.wire_len();
        Ok(Some(owned))
    }

    /// Bytes pushed that are not part of a frame returned yet: a frame still incomplete, or
    /// complete frames not asked for yet.
    pub fn partial(&self) -> usize {
        self.bytes.len() - self.at
    }
}

/// What the next read of a [`FuzzIo`] does, when planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadStep {
    /// Returns at most this many bytes (at least 1): the peer's bytes arrived in pieces. The
    /// rest is read only after the next readable edge, as on a socket.
    Upto(usize),
    /// `WouldBlock`: the bytes had not arrived yet; they do at once, with a new edge.
    WouldBlock,
    /// Fails with this kind (`Interrupted` to test retries, `ConnectionReset`, ...).
    Error(ErrorKind),
}

/// What the next write of a [`FuzzIo`] does, when planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteStep {
    /// Takes at most this many bytes: a short write (0 is `WouldBlock`). The socket buffer
    /// frees room at once, with a new writable edge.
    Upto(usize),
    /// `WouldBlock`, then room at once, with a new writable edge.
    WouldBlock,
    /// Fails with this kind (`Interrupted`, `BrokenPipe`, `ConnectionReset`, ...).
    Error(ErrorKind),
}

/// What the poll reports for a [`FuzzIo`]: the edges that happened since the last report,
/// within the interest asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// New bytes (or the FIN) arrived.
    pub readable: bool,
    /// Room was made in the send buffer after a write found it full.
    pub writable: bool,
    /// The peer's FIN was seen (`EPOLLRDHUP`): pass it on with
    /// [`Connection::on_read_closed`](crate::conn::Connection::on_read_closed).
    pub read_closed: bool,
}

/// A transport for fuzzers and for tests that let their input decide everything: it never
/// panics, whatever the connection does. The input chooses what the peer sends
/// ([`FuzzIo::push`]), how each read is cut or refused ([`FuzzIo::plan_read`]), how much room
/// the send buffer has ([`FuzzIo::drain`], [`FuzzIo::set_room`]) and how each write is cut
/// or refused ([`FuzzIo::plan_write`]); the output is kept as raw bytes
/// ([`FuzzIo::output`]), to be split with a [`FrameReader`].
///
/// Readiness is edge-triggered, the way the reactor sees a socket through epoll: bytes
/// pushed, the FIN, and room made after a write found the buffer full each leave an *edge*,
/// and [`FuzzIo::take_readiness`] reports them once, within the interest asked for (an edge
/// outside it waits, as epoll reports a ready socket again when the interest is changed). A
/// read cut short with bytes left, or a planned `WouldBlock`, leaves an edge too: on a
/// socket, those bytes arrive after the read.
///
/// A write after `shutdown_write` fails with `BrokenPipe` and is counted
/// ([`FuzzIo::writes_after_shutdown`]).
#[derive(Debug)]
pub struct FuzzIo {
    input: VecDeque<u8>,
    peer_closed: bool,
    reads: VecDeque<ReadStep>,
    writes: VecDeque<WriteStep>,
    room: usize,
    output: Vec<u8>,
    delivered: usize,
    write_shut: bool,
    writes_after_shutdown: usize,
    failures: usize,
    readable_edge: bool,
    writable_edge: bool,
    read_closed_edge: bool,
    /// A write found the buffer full since the last room was made.
    write_blocked: bool,
}

impl Default for FuzzIo {
    fn default() -> FuzzIo {
        FuzzIo::new()
    }
}

impl FuzzIo {
    /// Nothing sent yet, a send buffer with unlimited room, no plans.
    pub fn new() -> FuzzIo {
        FuzzIo {
            input: VecDeque::new(),
            peer_closed: false,
            reads: VecDeque::new(),
            writes: VecDeque::new(),
            room: usize::MAX,
            output: Vec::new(),
            delivered: 0,
            write_shut: false,
            writes_after_shutdown: 0,
            failures: 0,
            readable_edge: false,
            writable_edge: false,
            read_closed_edge: false,
            write_blocked: false,
        }
    }

    /// The peer sends `bytes` (ignored after [`FuzzIo::close`]: a FIN is the end).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.peer_closed || bytes.is_empty() {
            return;
        }
        self.input.extend(bytes);
        self.readable_edge = true;
    }

    /// The peer sends its FIN: once the bytes pushed are read, reads return 0.
    pub fn close(&mut self) {
        if !self.peer_closed {
            self.peer_closed = true;
            self.readable_edge = true;
            self.read_closed_edge = true;
        }
    }

    /// Whether the peer sent its FIN.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Plans the next read (after any planned before it).
    pub fn plan_read(&mut self, step: ReadStep) {
        self.reads.push_back(step);
    }

    /// Plans the next write (after any planned before it).
    pub fn plan_write(&mut self, step: WriteStep) {
        self.writes.push_back(step);
    }

    /// Sets the room left in the send buffer (`usize::MAX`: unlimited). More room than before,
    /// after a write found the buffer full, is a writable edge.
    pub fn set_room(&mut self, room: usize) {
        if room > self.room {
            self.room_made();
        }
        self.room = room;
    }

    /// The peer reads `bytes` from the socket: that much room is made in the send buffer.
    pub fn drain(&mut self, bytes: usize) {
        if bytes > 0 {
            self.room = self.room.saturating_add(bytes);
            self.room_made();
        }
    }

    fn room_made(&mut self) {
        if self.write_blocked {
            self.write_blocked = false;
            self.writable_edge = true;
        }
    }

    /// The edges within the interest (`readable`, `writable`) since the last call, taken; the
    /// others wait. `None` when there is none to report.
    pub fn take_readiness(&mut self, readable: bool, writable: bool) -> Option<Readiness> {
        let report = self.peek_readiness(readable, writable);
        if report == Readiness::default() {
            return None;
        }
        if report.readable {
            self.readable_edge = false;
            self.read_closed_edge = false;
        }
        if report.writable {
            self.writable_edge = false;
        }
        Some(report)
    }

    /// The edges [`FuzzIo::take_readiness`] would report for this interest, left in place.
    pub fn peek_readiness(&self, readable: bool, writable: bool) -> Readiness {
        Readiness {
            readable: readable && self.readable_edge,
            writable: writable && self.writable_edge,
            read_closed: readable && self.read_closed_edge,
        }
    }

    /// Everything the connection wrote, in order.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Bytes pushed and not read yet.
    pub fn unread(&self) -> usize {
        self.input.len()
    }

    /// Bytes reads handed to the connection so far.
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    /// Whether `shutdown_write` was called.
    pub fn write_shut(&self) -> bool {
        self.write_shut
    }

    /// Writes attempted after `shutdown_write` (each failed with `BrokenPipe`).
    pub fn writes_after_shutdown(&self) -> usize {
        self.writes_after_shutdown
    }

    /// The room left in the send buffer.
    pub fn room(&self) -> usize {
        self.room
    }

    /// Planned errors returned so far that end a connection (any but `Interrupted` and
    /// `WouldBlock`): after one, output may stop inside a frame.
    pub fn failures(&self) -> usize {
        self.failures
    }

    fn planned_error(&mut self, kind: ErrorKind) -> io::Error {
        if !matches!(kind, ErrorKind::Interrupted | ErrorKind::WouldBlock) {
            self.failures += 1;
        }
        kind.into()
    }
}

impl Read for FuzzIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut limit = buf.len();
        match self.reads.front().copied() {
            Some(ReadStep::WouldBlock) => {
                self.reads.pop_front();
                self.readable_edge |= !self.input.is_empty() || self.peer_closed;
                return Err(ErrorKind::WouldBlock.into());
            }
            Some(ReadStep::Error(kind)) => {
                self.reads.pop_front();
                self.readable_edge |= !self.input.is_empty() || self.peer_closed;
                return Err(self.planned_error(kind));
            }
            // A cut applies to a read that finds bytes; an empty socket keeps it.
            Some(ReadStep::Upto(n)) if !self.input.is_empty() => {
                self.reads.pop_front();
                limit = limit.min(n.max(1));
            }
            Some(ReadStep::Upto(_)) | None => {}
        }
        if self.input.is_empty() {
            return if self.peer_closed {
                Ok(0)
            } else {
                Err(ErrorKind::WouldBlock.into())
            };
        }
        let n = limit.min(self.input.len());
        for (slot, byte) in buf.iter_mut().zip(self.input.drain(..n)) {
            *slot = byte;
        }
        self.delivered += n;
        if n < buf.len() && (!self.input.is_empty() || self.peer_closed) {
            // A short read proves a socket drained: what is left arrives after it.
            self.readable_edge = true;
        }
        Ok(n)
    }
}

impl Write for FuzzIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.write_shut {
            self.writes_after_shutdown += 1;
            return Err(ErrorKind::BrokenPipe.into());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let mut limit = buf.len();
        match self.writes.pop_front() {
            Some(WriteStep::WouldBlock | WriteStep::Upto(0)) => {
                // Full now; room comes at once, with its edge.
                self.writable_edge = true;
                return Err(ErrorKind::WouldBlock.into());
            }
            Some(WriteStep::Error(kind)) => return Err(self.planned_error(kind)),
            Some(WriteStep::Upto(n)) => {
                limit = n;
                if n < buf.len() {
                    self.writable_edge = true;
                }
            }
            None => {}
        }
        let n = limit.min(buf.len()).min(self.room);
        if n == 0 {
            self.write_blocked = true;
            return Err(ErrorKind::WouldBlock.into());
        }
        if n < buf.len() && self.room == n {
            self.write_blocked = true;
        }
        if self.room != usize::MAX {
            self.room -= n;
        }
        self.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for FuzzIo {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.write_shut = true;
        Ok(())
    }
}
