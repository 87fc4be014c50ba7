//! The `proxy_header` target: the PROXY protocol header's parser, and the prelude that takes
//! a header off a socket, on arbitrary bytes delivered in arbitrary pieces.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};

use crate::proto::proxy::{self, MAX_LEN};
use crate::transport::Transport;
use crate::transport::proxy::{Expect, Peek, Prelude, ProxyPrelude};

/// How much of the input the prefix checks look at: enough for any v1 line and the start of a
/// v2 header, small enough to keep the target fast (each check parses every prefix).
const PREFIX_CHECKED: usize = 300;

/// A socket's receive side in memory: the bytes that have arrived so far.
#[derive(Default)]
struct Arrived {
    waiting: VecDeque<u8>,
    taken: usize,
}

impl Read for Arrived {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.waiting.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.waiting.len());
        for (slot, byte) in buf.iter_mut().zip(self.waiting.drain(..n)) {
            *slot = byte;
        }
        self.taken += n;
        Ok(n)
    }
}

impl Write for Arrived {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        panic!("the prelude wrote to the socket");
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Arrived {
    fn shutdown_write(&mut self) -> io::Result<()> {
        panic!("the prelude shut the socket");
    }
}

impl Peek for Arrived {
    fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.waiting.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.waiting.len());
        for (slot, byte) in buf.iter_mut().zip(self.waiting.iter()) {
            *slot = *byte;
        }
        Ok(n)
    }
}

/// The `proxy_header` target: the first byte picks the size of the pieces the rest arrives
/// in (1 to 256 bytes). Checks: [`proxy::parse`] never panics, never claims more bytes than
/// it was given nor more than [`MAX_LEN`]; its answer is final (a prefix that is refused, or
/// a header found in a prefix, stays so with every byte after it); and the prelude that
/// requires a header (`ProxyPrelude::advance`), fed the pieces one at a time, agrees with
/// `parse` on the whole input: done with the same header having taken exactly its bytes off
/// the socket, failed when it is refused, waiting when it needs more; it never writes.
pub fn proxy_header(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step) + 1;
    let whole = proxy::parse(stream);
    if let Ok(Some((_, used))) = &whole {
        assert!(
            *used <= stream.len() && *used <= MAX_LEN,
            "{used} bytes used"
        );
    }
    let checked = &stream[..stream.len().min(PREFIX_CHECKED)];
    for end in 0..=checked.len() {
        match proxy::parse(&checked[..end]) {
            Ok(None) => {}
            Ok(Some(found)) => {
                assert_eq!(whole, Ok(Some(found)), "a header in {end} bytes changed");
                break;
            }
            Err(error) => {
                assert!(
                    whole.is_err(),
                    "refused at {end} bytes ({error}), not whole"
                );
                break;
            }
        }
    }

    let mut socket = Arrived::default();
    let mut prelude = ProxyPrelude::new(Expect::Required);
    let mut outcome = Prelude::NeedMore;
    for piece in stream.chunks(step) {
        socket.waiting.extend(piece);
        outcome = prelude.advance(&mut socket);
        if !matches!(outcome, Prelude::NeedMore) {
            break;
        }
    }
    match (outcome, whole) {
        (Prelude::Done(Some(header)), Ok(Some((expected, used)))) => {
            assert_eq!(header, expected);
            assert_eq!(socket.taken, used, "the prelude took other than the header");
        }
        (Prelude::Failed(_), Err(_)) => assert_eq!(socket.taken, 0),
        (Prelude::NeedMore, Ok(None)) => assert_eq!(socket.taken, 0),
        (Prelude::NeedMore, _) if stream.is_empty() => {}
        (outcome, whole) => panic!("the prelude says {outcome:?}, parse says {whole:?}"),
    }
}
