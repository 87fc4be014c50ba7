//! The outbox: everything one connection has to send, in order, and the one question every
//! producer asks before it makes more.
//!
//! Producers — frame handlers answering requests, the readers of a command's pipes, the file
//! sender — append only **whole frames**, through [`Replies`], so a frame can never land in the
//! middle of another. A frame's payload is either bytes in the queue's buffer or a
//! [`FileRange`], which the transport sends from the file ([`Transport::send_file`]: a socket
//! with `sendfile`, straight from the page cache and never copied into user space).
//!
//! **Backpressure** is one question, [`Outbox::may_produce`], with hysteresis: it turns false
//! when the queue reaches [`Limits::output_high_water`] and true again once it has drained to
//! [`Limits::output_low_water`]. Whoever produces output asks it — the socket reader (no new
//! requests are read), the pipe readers (the command blocks on a full pipe) and the file
//! sender — so a client that does not read costs the high-water mark plus one frame, whatever
//! is producing.
//!
//! The queue ([`OutQueue`], bytes with file ranges between them) lives behind an
//! `Option<Box<_>>` lent by the [`BufferPool`]: an idle connection holds 8 bytes here, and a
//! steady echo borrows and returns the same queue. `Outbox::flush` sends it through the
//! connection's transport with the loop's write rules.

use std::io;

use log::debug;

pub(crate) use crate::buffer::FileRange;
use crate::buffer::{BufferPool, Front, OutQueue};
use crate::limits::Limits;
use crate::proto::{ErrorCode, ErrorMessage, Flags, FrameType, HEADER_LEN, Header};
use crate::transport::{IoState, Transport};

/// Most bytes one `sendfile` call is asked for (nginx's `sendfile_max_chunk`, 2 MiB), so one
/// fast transfer cannot hold the loop.
pub(crate) const SENDFILE_CHUNK: usize = 2 << 20;

/// What one [`Outbox::write_to`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Written {
    /// Bytes the transport took.
    pub bytes: usize,
    /// It took fewer than offered: its buffer is full (epoll(7)), so the writer waits.
    pub short: bool,
}

/// A connection's output. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: Option<Box<OutQueue>>,
}

impl Outbox {
    /// An empty outbox holding no buffer.
    pub(crate) const fn new() -> Outbox {
        Outbox { queue: None }
    }

    /// Bytes waiting to be sent, file ranges included.
    pub(crate) fn pending(&self) -> usize {
        self.queue.as_ref().map_or(0, |queue| queue.pending())
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending() == 0
    }

    /// **The** backpressure question: may anything produce more output now? False from the
    /// high-water mark until the queue has drained to the low-water mark.
    pub(crate) fn may_produce(&self) -> bool {
        self.queue.as_ref().is_none_or(|queue| !queue.paused())
    }

    /// Whether a buffer is held.
    pub(crate) fn holds_buffer(&self) -> bool {
        self.queue.is_some()
    }

    /// Bytes that can be appended without growing the buffer (a fresh queue from the pool has
    /// `standard_len`). Producers that may choose their size, such as a pipe reader, stay
    /// within it while they can, and when they cannot, grow it once to their bound
    /// ([`Replies::grow_to`]) rather than by doubling.
    pub(crate) fn room(&self, standard_len: usize) -> usize {
        self.queue
            .as_ref()
            .map_or(standard_len, |queue| queue.capacity() - queue.buffered())
    }

    /// Bytes of buffer memory held (capacity, not content).
    pub(crate) fn buffer_capacity(&self) -> usize {
        self.queue.as_ref().map_or(0, |queue| queue.capacity())
    }

    /// A writer that appends frames, borrowing a buffer from `pool` on first use.
    pub(crate) fn replies<'a>(
        &'a mut self,
        pool: &'a mut BufferPool,
        limits: &'a Limits,
    ) -> Replies<'a> {
        Replies {
            outbox: self,
            pool,
            limits,
        }
    }

    /// Sends from the front of the queue once: the bytes up to the next file range, or one
    /// chunk of the file range at the front. `WouldBlock` and other errors come back as they
    /// are; the caller owns the retry rules.
    pub(crate) fn write_to<T: Transport>(
        &mut self,
        io: &mut T,
        limits: &Limits,
    ) -> io::Result<Written> {
        let Some(queue) = self.queue.as_mut() else {
            return Ok(Written {
                bytes: 0,
                short: false,
            });
        };
        let (n, offered) = match queue.front() {
            Front::Bytes(bytes) => (io.write(bytes)?, bytes.len()),
            Front::File(range) => {
                let offered = usize::try_from(range.len)
                    .unwrap_or(usize::MAX)
                    .min(SENDFILE_CHUNK);
                let n = io.send_file(&range.file, range.offset, offered)?;
                if n == 0 && offered > 0 {
                    // The file is shorter than the range promised (truncated under us): the
                    // frame cannot be completed, and the connection cannot stay in sync.
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended before its queued range",
                    ));
                }
                if n < offered
                    && range
                        .file
                        .metadata()
                        .is_ok_and(|meta| meta.len() < range.offset + range.len)
                {
                    // A short send is no proof the socket is full when the file shrank under
                    // it: waiting for a writable edge would wait for ever.
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file shrank below its queued range",
                    ));
                }
                (n, offered)
            }
        };
        queue.advance(n);
        update_pause(queue, limits);
        Ok(Written {
            bytes: n,
            short: n < offered,
        })
    }

    /// Sends what is queued until it is gone or the transport is full, then lets the transport
    /// send what it holds back for itself ([`Transport::send_pending`]). A short write means
    /// the transport is full (epoll(7)) and clears the write hint in `state`, so no second
    /// `write` is made just to collect `WouldBlock`; `Interrupted` is retried. Returns whether
    /// any queued byte went.
    #[inline(always)]
    pub(crate) fn flush<T: Transport>(
        &mut self,
        io: &mut T,
        state: &mut IoState,
        limits: &Limits,
    ) -> io::Result<bool> {
        // Inlined test, out-of-line work: most drives end with nothing queued (an echo's
        // replies went straight out).
        if self.is_empty() {
            state.send_pending(io)?;
            return Ok(false);
        }
        self.flush_queue(io, state, limits)
    }

    #[inline(never)]
    fn flush_queue<T: Transport>(
        &mut self,
        io: &mut T,
        state: &mut IoState,
        limits: &Limits,
    ) -> io::Result<bool> {
        let mut moved = false;
        while !self.is_empty() && state.has(IoState::WRITE_READY) {
            match self.write_to(io, limits) {
                Ok(written) if written.bytes == 0 => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    moved = true;
                    if written.short {
                        state.set(IoState::WRITE_READY, false);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    state.set(IoState::WRITE_READY, false);
                }
                Err(error) => {
                    debug!("write failed: {error}");
                    return Err(error);
                }
            }
        }
        state.send_pending(io)?;
        Ok(moved)
    }

    /// Gives the queue back to the pool if it is empty: an idle connection holds no buffer.
    pub(crate) fn release_if_empty(&mut self, pool: &mut BufferPool) {
        if self
            .queue
            .as_ref()
            .is_some_and(|queue| queue.pending() == 0)
        {
            if let Some(queue) = self.queue.take() {
                pool.give_output(queue);
            }
        }
    }

    /// Drops everything queued and gives the queue back.
    pub(crate) fn release(&mut self, pool: &mut BufferPool) {
        if let Some(queue) = self.queue.take() {
            pool.give_output(queue);
        }
    }
}

/// Appends whole frames to an [`Outbox`]. Obtained from [`Outbox::replies`].
#[derive(Debug)]
pub(crate) struct Replies<'a> {
    outbox: &'a mut Outbox,
    pool: &'a mut BufferPool,
    limits: &'a Limits,
}

impl Replies<'_> {
    fn queue(&mut self) -> &mut OutQueue {
        self.outbox
            .queue
            .get_or_insert_with(|| self.pool.take_output())
    }

    /// Appends a frame with `header`, its `header.len`-byte payload written by `emit` straight
    /// into the buffer.
    pub(crate) fn frame_with(&mut self, header: Header, emit: impl FnOnce(&mut [u8])) {
        let max_capacity = self.limits.output_cap();
        let limits = self.limits;
        let queue = self.queue();
        queue.append_with(header.wire_len(), max_capacity, |bytes| {
            header.emit(&mut bytes[..HEADER_LEN]);
            emit(&mut bytes[HEADER_LEN..]);
        });
        update_pause(queue, limits);
    }

    /// Appends a frame that answers a request completely: `END_STREAM` set.
    pub(crate) fn reply(
        &mut self,
        frame_type: FrameType,
        stream: u32,
        len: u32,
        emit: impl FnOnce(&mut [u8]),
    ) {
        self.frame_with(header(frame_type, Flags::END_STREAM, stream, len), emit);
    }

    /// Appends a frame that is one part of a streamed reply: `END_STREAM` clear.
    pub(crate) fn part(
        &mut self,
        frame_type: FrameType,
        stream: u32,
        len: u32,
        emit: impl FnOnce(&mut [u8]),
    ) {
        self.frame_with(header(frame_type, Flags::NONE, stream, len), emit);
    }

    /// Appends an ERROR frame about `stream` (0: the connection, which then closes; any other:
    /// that stream, which it ends).
    pub(crate) fn error(&mut self, stream: u32, code: ErrorCode, text: &str) {
        let message = ErrorMessage::new(code, text);
        // At most 2 + MAX_ERROR_TEXT_LEN bytes: the cast cannot truncate.
        let len = message.payload_len() as u32;
        self.reply(FrameType::Error, stream, len, |out| message.emit(out));
    }

    /// Appends a part frame whose payload `read` fills in place (at most `max_len` bytes, read
    /// straight into the buffer after room for the header). Returns what `read` returned; on 0
    /// bytes or an error nothing is appended, so a frame is never empty or half-made.
    pub(crate) fn frame_from(
        &mut self,
        frame_type: FrameType,
        stream: u32,
        max_len: usize,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let max_capacity = self.limits.output_cap();
        let limits = self.limits;
        let queue = self.queue();
        queue.reserve(HEADER_LEN + max_len, max_capacity);
        let spare = queue.spare();
        let n = read(&mut spare[HEADER_LEN..HEADER_LEN + max_len])?;
        if n == 0 {
            return Ok(0);
        }
        let header = Header {
            frame_type,
            flags: Flags::NONE,
            stream,
            // n <= max_len, which callers bound by the frame limit.
            len: u32::try_from(n).unwrap_or(u32::MAX),
        };
        header.emit(&mut spare[..HEADER_LEN]);
        queue.commit(HEADER_LEN + n);
        update_pause(queue, limits);
        Ok(n)
    }

    /// Appends a frame whose payload is `range`, sent later with `sendfile`.
    ///
    /// # Panics
    /// If the range is longer than a frame can declare (`u32::MAX` bytes).
    pub(crate) fn file_frame(
        &mut self,
        frame_type: FrameType,
        flags: Flags,
        stream: u32,
        range: FileRange,
    ) {
        let header = Header {
            frame_type,
            flags,
            stream,
            len: u32::try_from(range.len).expect("a file frame fits in u32"),
        };
        let max_capacity = self.limits.output_cap();
        let limits = self.limits;
        let queue = self.queue();
        queue.push_file(&header.to_bytes(), range, max_capacity);
        update_pause(queue, limits);
    }

    /// Grows the buffer, if it must, straight to `capacity` bytes in all (at most the output
    /// cap): a producer that knows how much it can queue — a pipe reader: the high-water mark
    /// plus one read — grows it once, where doubling could reach a size a later burst
    /// outgrows and allocate again long after the start.
    pub(crate) fn grow_to(&mut self, capacity: usize) {
        let capacity = capacity.min(self.limits.output_cap());
        let queue = self.queue();
        let len = queue.buffered();
        if capacity > len {
            queue.reserve(capacity - len, capacity);
        }
    }

    /// Appends a copy of unframed bytes (the part of a raw echo the socket did not take).
    pub(crate) fn raw(&mut self, bytes: &[u8]) {
        let max_capacity = self.limits.output_cap();
        let limits = self.limits;
        let queue = self.queue();
        queue.append(bytes, max_capacity);
        update_pause(queue, limits);
    }

    /// Appends unframed bytes that `read` fills in place (raw echo): at most `max_len`, the
    /// buffer growing no further than `max_capacity`.
    pub(crate) fn raw_from(
        &mut self,
        max_len: usize,
        max_capacity: usize,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let limits = self.limits;
        let queue = self.queue();
        queue.reserve(max_len, max_capacity);
        let spare = queue.spare();
        let want = max_len.min(spare.len());
        let n = read(&mut spare[..want])?;
        queue.commit(n);
        update_pause(queue, limits);
        Ok(n)
    }
}

/// The backpressure rule, with hysteresis: pause at the high-water mark, resume at the low one.
fn update_pause(queue: &mut OutQueue, limits: &Limits) {
    let pending = queue.pending();
    if pending >= limits.output_high_water {
        queue.set_paused(true);
    } else if pending <= limits.output_low_water {
        queue.set_paused(false);
    }
}

fn header(frame_type: FrameType, flags: Flags, stream: u32, len: u32) -> Header {
    Header {
        frame_type,
        flags,
        stream,
        len,
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::sync::Arc;

    use super::*;

    /// A transport that takes at most `room` bytes per write and records them.
    struct Sink {
        taken: Vec<u8>,
        room: usize,
    }

    impl io::Read for Sink {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room);
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Transport for Sink {
        fn shutdown_write(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn drain(outbox: &mut Outbox, sink: &mut Sink, limits: &Limits) {
        for _ in 0..1000 {
            if outbox.is_empty() {
                return;
            }
            outbox.write_to(sink, limits).unwrap();
        }
        panic!("outbox did not drain");
    }

    fn temp_file(bytes: &[u8]) -> Arc<File> {
        let path = std::env::temp_dir().join(format!(
            "monoreactor-outbox-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file.write_all(bytes).unwrap();
        file.seek(SeekFrom::Start(0)).unwrap();
        let mut check = Vec::new();
        file.read_to_end(&mut check).unwrap();
        assert_eq!(check, bytes);
        Arc::new(file)
    }

    #[test]
    fn file_ranges_go_out_between_byte_frames_in_order_through_short_writes() {
        let limits = Limits::default();
        let mut pool = BufferPool::new(64, 2);
        let mut outbox = Outbox::new();
        let file = temp_file(b"0123456789");
        {
            let mut replies = outbox.replies(&mut pool, &limits);
            replies.part(FrameType::Stdout, 1, 2, |out| out.copy_from_slice(b"ab"));
            replies.file_frame(
                FrameType::Stdout,
                Flags::NONE,
                1,
                FileRange {
                    file,
                    offset: 3,
                    len: 4,
                },
            );
            replies.reply(FrameType::EchoReply, 2, 1, |out| out.copy_from_slice(b"z"));
        }
        assert_eq!(outbox.pending(), 14 + 16 + 13);
        let mut sink = Sink {
            taken: Vec::new(),
            room: 5,
        };
        drain(&mut outbox, &mut sink, &limits);
        let header = |frame_type, flags, stream, len| {
            Header {
                frame_type,
                flags,
                stream,
                len,
            }
            .to_bytes()
        };
        let expected = [
            &header(FrameType::Stdout, Flags::NONE, 1, 2)[..],
            b"ab",
            &header(FrameType::Stdout, Flags::NONE, 1, 4),
            b"3456",
            &header(FrameType::EchoReply, Flags::END_STREAM, 2, 1),
            b"z",
        ]
        .concat();
        assert_eq!(sink.taken, expected);
        outbox.release_if_empty(&mut pool);
        assert!(!outbox.holds_buffer());
    }

    #[test]
    fn may_produce_turns_false_at_high_water_and_true_at_low_water() {
        let limits = Limits {
            output_high_water: 100,
            output_low_water: 40,
            ..Limits::default()
        };
        let mut pool = BufferPool::new(256, 2);
        let mut outbox = Outbox::new();
        while outbox.may_produce() {
            outbox
                .replies(&mut pool, &limits)
                .part(FrameType::Stdout, 1, 18, |out| out.fill(b'x'));
        }
        assert_eq!(outbox.pending(), 120, "paused at the first frame past 100");
        let mut sink = Sink {
            taken: Vec::new(),
            room: 30,
        };
        outbox.write_to(&mut sink, &limits).unwrap();
        assert!(
            !outbox.may_produce(),
            "90 is between the marks: still paused"
        );
        outbox.write_to(&mut sink, &limits).unwrap();
        outbox.write_to(&mut sink, &limits).unwrap();
        assert_eq!(outbox.pending(), 30);
        assert!(outbox.may_produce());
    }

    #[test]
    fn frame_from_appends_nothing_on_eof_or_error() {
        let limits = Limits::default();
        let mut pool = BufferPool::new(64, 2);
        let mut outbox = Outbox::new();
        let mut replies = outbox.replies(&mut pool, &limits);
        assert_eq!(
            replies
                .frame_from(FrameType::Stdout, 3, 16, |_| Ok(0))
                .unwrap(),
            0
        );
        assert!(
            replies
                .frame_from(FrameType::Stdout, 3, 16, |_| Err(
                    io::ErrorKind::WouldBlock.into()
                ))
                .is_err()
        );
        let n = replies
            .frame_from(FrameType::Stderr, 3, 16, |buf| {
                buf[..3].copy_from_slice(b"err");
                Ok(3)
            })
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(outbox.pending(), HEADER_LEN + 3);
    }
}
