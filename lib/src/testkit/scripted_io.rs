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

impl Transport for MemoryIo {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.write_shut = true;
        Ok(())
    }
}
