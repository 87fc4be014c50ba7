//! Helpers for testing code that speaks this protocol, yours as well as ours.
//!
//! - [`FragmentingWriter`] writes a byte stream to a real socket in seeded random pieces, with
//!   optional pauses, so a server sees the splits a real network produces (and a failing seed
//!   can be replayed).
//! - [`ScriptedIo`] replays reads, `WouldBlock`s, errors and expected writes into anything that
//!   drives a `Read + Write`, such as [`Connection::drive`](crate::conn::Connection::drive) —
//!   the synchronous cousin of tokio-test's `io::Builder`.
//! - [`MemoryIo`] is a looser peer: bytes you push, writes recorded ([`MemoryIo::written`],
//!   [`MemoryIo::take_frames`], [`MemoryIo::take_whole_frames`]).
//! - [`FuzzIo`] lets its input decide everything and never panics: read sizes, `WouldBlock`s,
//!   short writes, errors, the room in the send buffer, and readiness as edges the way epoll
//!   reports them; the output is kept raw, to be split with a [`FrameReader`], which
//!   tolerates a frame cut short.
//! - [`ScriptedChildren`] stands in for the processes a connection runs: pipes that hold the
//!   bytes you put there, exits you decide, signals and stdin recorded, errors injected per
//!   call, and the I/O layer's rules enforced (no call after release, one exit per child).
//! - [`ScriptedDisk`] is the file service's disk over a real directory: it holds the blocking
//!   calls a connection hands off until you complete them (with the real call, or a result you
//!   choose), and makes a write, an `fsync` or a rename fail on demand ([`DiskCall`]).
//! - [`ConnHarness`] drives a [`Connection`](crate::Connection) through any of these peers the
//!   way the reactor does, with the clock in your hands, its commands on [`ScriptedChildren`]
//!   or on any [`Children`](crate::children::Children) of yours, and says how much of the
//!   peer's input the connection consumed.
//! - [`SplitMix64`], the small seeded generator they use.
//!
//! The fuzz targets (`fuzz/`, the `fuzzing` feature) are built on the same pieces.

mod children;
mod disk;
mod harness;
mod scripted_io;

pub use children::{ScriptedChild, ScriptedChildren, ScriptedPty};
pub use disk::{DiskCall, ScriptedDisk};
pub use harness::ConnHarness;
/// The error a scripted disk call fails with (`Errno::NOSPC`, `Errno::IO` ...): re-exported so
/// a test can name one without depending on `rustix` itself.
pub use rustix::io::Errno;
pub use scripted_io::*;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, ErrorKind, Read, Write};

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

    #[test]
    fn fuzz_io_cuts_reads_and_reports_the_rest_as_a_new_edge() {
        let mut io = FuzzIo::new();
        assert_eq!(io.take_readiness(true, true), None);
        io.push(b"abcdef");
        io.plan_read(ReadStep::Upto(2));
        assert_eq!(
            io.take_readiness(true, true),
            Some(Readiness {
                readable: true,
                writable: false,
                read_closed: false
            })
        );
        let mut buf = [0; 8];
        assert_eq!(io.read(&mut buf).unwrap(), 2);
        assert!(
            io.take_readiness(true, false).is_some(),
            "the rest arrives after the short read"
        );
        io.plan_read(ReadStep::WouldBlock);
        assert_eq!(io.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
        assert!(io.take_readiness(true, false).is_some());
        assert_eq!(io.read(&mut buf).unwrap(), 4);
        assert_eq!(io.read(&mut buf).unwrap_err().kind(), ErrorKind::WouldBlock);
        io.close();
        let ready = io.take_readiness(true, false).unwrap();
        assert!(ready.readable && ready.read_closed);
        assert_eq!(io.read(&mut buf).unwrap(), 0);
        assert_eq!(io.delivered(), 6);
    }

    #[test]
    fn fuzz_io_edges_wait_outside_the_interest() {
        let mut io = FuzzIo::new();
        io.push(b"x");
        assert_eq!(io.take_readiness(false, true), None);
        assert!(io.take_readiness(true, false).unwrap().readable);
        assert_eq!(
            io.take_readiness(true, true),
            None,
            "an edge is reported once"
        );
    }

    #[test]
    fn fuzz_io_room_short_writes_and_writable_edges() {
        let mut io = FuzzIo::new();
        io.set_room(3);
        assert_eq!(io.write(b"hello").unwrap(), 3);
        assert_eq!(io.write(b"lo").unwrap_err().kind(), ErrorKind::WouldBlock);
        assert_eq!(io.take_readiness(true, true), None, "no room made yet");
        io.drain(10);
        assert!(io.take_readiness(false, true).unwrap().writable);
        io.plan_write(WriteStep::Upto(1));
        io.plan_write(WriteStep::Error(ErrorKind::Interrupted));
        assert_eq!(io.write(b"lo").unwrap(), 1);
        assert_eq!(io.write(b"o").unwrap_err().kind(), ErrorKind::Interrupted);
        assert_eq!(io.write(b"o").unwrap(), 1);
        assert_eq!(io.output(), b"hello");
        crate::transport::Transport::shutdown_write(&mut io).unwrap();
        assert_eq!(io.write(b"!").unwrap_err().kind(), ErrorKind::BrokenPipe);
        assert_eq!(io.writes_after_shutdown(), 1);
    }

    #[test]
    fn frame_reader_keeps_a_cut_frame_for_later() {
        use crate::proto::{Flags, Frame, FrameType};
        let mut wire = Frame::new(FrameType::EchoReply, Flags::END_STREAM, 1, b"one").to_vec();
        wire.extend(Frame::new(FrameType::EchoReply, Flags::END_STREAM, 3, b"two").to_vec());
        let mut reader = FrameReader::new();
        for byte in &wire {
            reader.push(std::slice::from_ref(byte));
        }
        assert_eq!(reader.next_frame().unwrap().unwrap().payload, b"one");
        assert_eq!(reader.next_frame().unwrap().unwrap().header.stream, 3);
        assert_eq!(reader.next_frame().unwrap(), None);
        reader.push(&[0xff; 12]);
        assert!(reader.next_frame().is_err(), "unknown flags");
    }

    #[test]
    fn memory_io_whole_frames_leave_the_cut_one() {
        use crate::proto::{Flags, Frame, FrameType};
        let wire = Frame::new(FrameType::EchoReply, Flags::END_STREAM, 1, b"hi").to_vec();
        let mut io = MemoryIo::new();
        io.write_all(&wire).unwrap();
        io.write_all(&wire[..5]).unwrap();
        assert_eq!(io.take_whole_frames().len(), 1);
        io.write_all(&wire[5..]).unwrap();
        assert_eq!(io.take_whole_frames().len(), 1);
        assert_eq!(io.written().len(), 2 * wire.len());
    }
}
