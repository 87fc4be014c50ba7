//! What a connection needs from its transport, apart from the connection: the socket in the
//! server, a scripted peer in tests. Both the connection (reading) and the
//! [`Outbox`](crate::outbox::Outbox) (writing, `sendfile`) use it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::FileExt;

/// What a connection needs from its transport: bytes both ways, closing the write half, and
/// (for file ranges in the outbox) sending from a file.
pub trait Stream: Read + Write {
    /// Sends FIN after the pending bytes (`shutdown(SHUT_WR)`).
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Sends up to `len` bytes of `file` from `offset`; returns how many went, fewer than
    /// `len` only if the transport took fewer (it is full) or the file ended. The default
    /// reads chunks and writes them until then (a short write rereads the rest next time); a
    /// socket sends straight from the page cache with `sendfile`.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut chunk = [0; 16 << 10];
        let mut sent = 0;
        while sent < len {
            let want = (len - sent).min(chunk.len());
            let n = file.read_at(&mut chunk[..want], offset + sent as u64)?;
            if n == 0 {
                break;
            }
            let written = match self.write(&chunk[..n]) {
                Ok(written) => written,
                // What went before counts; the error comes again on the next call.
                Err(error) if sent > 0 && error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            };
            sent += written;
            if written < n {
                break;
            }
        }
        Ok(sent)
    }
}

impl Stream for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut offset = offset;
        rustix::fs::sendfile(&*self, file, Some(&mut offset), len).map_err(io::Error::from)
    }
}
