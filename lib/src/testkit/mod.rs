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
//! - [`ScriptedDisk`] is the file service's disk over a real directory: it holds the blocking
//!   calls a connection hands off until you complete them (with the real call, or a result you
//!   choose), and makes a write, an `fsync` or a rename fail on demand ([`DiskCall`]).
//! - [`ConnHarness`] drives a [`Connection`](crate::conn::Connection) through a [`ScriptedIo`] the way the reactor
//!   does, with the clock in your hands.
//! - [`SplitMix64`], the small seeded generator they use.

mod children;
mod disk;
mod harness;
mod scripted_io;

pub use children::{ScriptedChild, ScriptedChildren};
pub use disk::{DiskCall, ScriptedDisk};
pub use harness::ConnHarness;
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
}
