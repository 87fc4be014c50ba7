//! Helpers for testing code that speaks this protocol, yours as well as ours.
//!
//! - [`FragmentingWriter`] writes a byte stream to a real socket in seeded random pieces, with
//!   optional pauses, so a server sees the splits a real network produces (and a failing seed
//!   can be replayed).
//! - [`ScriptedIo`] replays reads, `WouldBlock`s, errors and expected writes into anything that
//!   drives a `Read + Write`, such as [`Connection::drive`](crate::conn::Connection::drive) —
//!   the synchronous cousin of tokio-test's `io::Builder`.
//! - [`SplitMix64`], the small seeded generator both use.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::time::Duration;

use crate::conn::Stream;

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
