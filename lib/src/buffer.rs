//! The buffers a connection borrows, and the pool that lends them.
//!
//! A connection holds a buffer only while bytes are in it: an idle connection holds none, and an
//! echo in steady state borrows and returns the same pooled buffers, so it allocates nothing.
//! The pool lends two shapes: plain [`Buf`]s (input, stdin) and [`OutQueue`]s, bytes with file
//! ranges between them, which an [`Outbox`](crate::outbox::Outbox) sends. What goes into a queue
//! and when (whole frames, backpressure) is the outbox's business; this module only keeps the
//! bytes and ranges in order.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::Arc;

/// A growable byte buffer: `data()` is the unconsumed part, `spare()` the writable tail.
///
/// The backing vector is always fully initialised (`len == capacity`), so a read can fill
/// `spare()` without `unsafe`; `start..end` marks the bytes in use.
#[derive(Debug)]
pub struct Buf {
    bytes: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buf {
    /// An empty buffer of `capacity` zeroed bytes.
    pub fn with_capacity(capacity: usize) -> Buf {
        Buf {
            bytes: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// Unconsumed bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether no bytes are pending.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Total bytes the buffer can hold without growing.
    pub fn capacity(&self) -> usize {
        self.bytes.len()
    }

    /// The unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// The unconsumed bytes, to be rewritten in place (an echo request into its reply).
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.end]
    }

    /// Marks `n` leading bytes as used. An emptied buffer rewinds to its start, so the next
    /// read has the whole capacity without a copy.
    ///
    /// # Panics
    /// If `n > self.len()`.
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.len(), "consume past the end of the buffer");
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// The writable tail, for a read to fill; follow with [`Buf::commit`].
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.bytes[self.end..]
    }

    /// Marks `n` bytes of [`Buf::spare`] as filled.
    ///
    /// # Panics
    /// If `n` exceeds the spare length.
    pub fn commit(&mut self, n: usize) {
        assert!(self.end + n <= self.bytes.len(), "commit past the capacity");
        self.end += n;
    }

    /// Ensures `spare()` is at least `additional` bytes long: first by moving the unconsumed
    /// bytes to the front, then by growing — to twice the old capacity, but never past
    /// `max_capacity` unless the bytes themselves need more. The cap is what keeps a
    /// connection's documented buffer bound true while doubling keeps growth cheap.
    pub fn reserve(&mut self, additional: usize, max_capacity: usize) {
        if self.bytes.len() - self.end >= additional {
            return;
        }
        if self.start > 0 {
            self.bytes.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let needed = self.end + additional;
        if needed > self.bytes.len() {
            let capacity = (self.bytes.len() * 2).min(max_capacity).max(needed);
            self.bytes.resize(capacity, 0);
        }
    }

    /// Appends `n` bytes written by `fill` into a slice of exactly that length, growing within
    /// `max_capacity` as [`Buf::reserve`] does.
    pub fn append_with(&mut self, n: usize, max_capacity: usize, fill: impl FnOnce(&mut [u8])) {
        self.reserve(n, max_capacity);
        fill(&mut self.bytes[self.end..self.end + n]);
        self.end += n;
    }

    /// Appends a copy of `bytes`, growing within `max_capacity`.
    pub fn append(&mut self, bytes: &[u8], max_capacity: usize) {
        self.append_with(bytes.len(), max_capacity, |out| out.copy_from_slice(bytes));
    }
}

/// Buffers a pool can lend: reset on return, and kept only if still of the standard size.
pub(crate) trait Pooled {
    /// A new, empty value holding `buffer_len` bytes of buffer.
    fn with_buffer_len(buffer_len: usize) -> Self;
    /// Forgets the contents.
    fn reset(&mut self);
    /// Whether the value is worth keeping: it did not grow past `buffer_len`.
    fn is_standard(&self, buffer_len: usize) -> bool;
}

impl Pooled for Buf {
    fn with_buffer_len(buffer_len: usize) -> Buf {
        Buf::with_capacity(buffer_len)
    }

    fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    fn is_standard(&self, buffer_len: usize) -> bool {
        self.capacity() == buffer_len
    }
}

/// A free list of standard-size values of one shape.
///
/// Values that grew past the standard size (a large frame) are freed rather than kept, so one
/// burst of big frames does not pin memory afterwards.
#[derive(Debug)]
pub(crate) struct FreeList<T> {
    /// Boxed because connections hold `Option<Box<T>>` (8 bytes, not the whole value), and
    /// lending a pooled box is a pointer move.
    free: Vec<Box<T>>,
    buffer_len: usize,
    max_free: usize,
    created: u64,
}

impl<T: Pooled> FreeList<T> {
    /// A list of values with `buffer_len`-byte buffers that keeps at most `max_free` of them.
    pub(crate) fn new(buffer_len: usize, max_free: usize) -> FreeList<T> {
        FreeList {
            free: Vec::with_capacity(max_free),
            buffer_len,
            max_free,
            created: 0,
        }
    }

    /// An empty value: a pooled one if there is one, else a new one.
    pub(crate) fn take(&mut self) -> Box<T> {
        self.free.pop().unwrap_or_else(|| {
            self.created += 1;
            Box::new(T::with_buffer_len(self.buffer_len))
        })
    }

    /// Returns a value. Its contents are discarded.
    pub(crate) fn give(&mut self, mut value: Box<T>) {
        if value.is_standard(self.buffer_len) && self.free.len() < self.max_free {
            value.reset();
            self.free.push(value);
        }
    }

    /// Values created since the list was made (a miss allocates one).
    pub(crate) fn created(&self) -> u64 {
        self.created
    }

    /// Values waiting for reuse.
    pub(crate) fn free_len(&self) -> usize {
        self.free.len()
    }
}

/// The buffers connections borrow: plain `Buf`s for input, and output queues for outboxes.
#[derive(Debug)]
pub struct BufferPool {
    bufs: FreeList<Buf>,
    outputs: FreeList<OutQueue>,
    /// One standard-size buffer lent for the length of a single call and returned before it
    /// ends ([`BufferPool::take_scratch`]): the raw echo reads into it and writes straight
    /// back, so a connection whose socket takes the whole echo touches no buffer of its own.
    scratch: Vec<u8>,
    buffer_len: usize,
}

impl BufferPool {
    /// A pool of `buffer_len`-byte buffers that keeps at most `max_free` of each shape.
    pub fn new(buffer_len: usize, max_free: usize) -> BufferPool {
        BufferPool {
            bufs: FreeList::new(buffer_len, max_free),
            outputs: FreeList::new(buffer_len, max_free),
            scratch: vec![0; buffer_len],
            buffer_len,
        }
    }

    /// The scratch buffer (`buffer_len` bytes), to be given back with
    /// [`BufferPool::give_scratch`] before the caller returns. Moving a `Vec` out and back is
    /// three words, and leaves the pool's borrow free for the caller meanwhile.
    pub fn take_scratch(&mut self) -> Vec<u8> {
        let scratch = std::mem::take(&mut self.scratch);
        if scratch.len() == self.buffer_len {
            scratch
        } else {
            // Only if a caller kept it: never in the server, which gives it back at once.
            vec![0; self.buffer_len]
        }
    }

    /// Returns the scratch buffer.
    pub fn give_scratch(&mut self, scratch: Vec<u8>) {
        self.scratch = scratch;
    }

    /// An empty buffer: a pooled one if there is one, else a new one.
    pub fn take(&mut self) -> Box<Buf> {
        self.bufs.take()
    }

    /// Returns a buffer. Its contents are discarded.
    pub fn give(&mut self, buf: Box<Buf>) {
        self.bufs.give(buf);
    }

    /// Returns the buffer in `slot`, if any, when it holds no bytes.
    #[inline]
    pub fn give_if_empty(&mut self, slot: &mut Option<Box<Buf>>) {
        if slot.as_ref().is_some_and(|buf| buf.is_empty()) {
            if let Some(buf) = slot.take() {
                self.give(buf);
            }
        }
    }

    /// An empty output queue, for an `Outbox`.
    pub fn take_output(&mut self) -> Box<OutQueue> {
        self.outputs.take()
    }

    /// Returns an output queue.
    pub fn give_output(&mut self, queue: Box<OutQueue>) {
        self.outputs.give(queue);
    }

    /// The standard buffer size.
    pub fn buffer_len(&self) -> usize {
        self.buffer_len
    }

    /// Buffers and queues created since the pool was made (a pool miss allocates one).
    pub fn created(&self) -> u64 {
        self.bufs.created() + self.outputs.created()
    }

    /// Plain buffers waiting in the pool.
    pub fn free_len(&self) -> usize {
        self.bufs.free_len()
    }
}

/// A byte range of an open file, queued as (part of) a frame's payload.
///
/// Queuing a range copies nothing: its bytes are whatever the file holds when `sendfile`
/// reads them, as the range leaves the outbox — and not even then, for TCP: the socket keeps
/// references to the page-cache pages until they are acknowledged (on loopback, until the
/// peer reads them). A truncation takes pages out of the file, not out of those buffers, so
/// bytes already handed over arrive as they were; a write into a page still in flight changes
/// them. Whoever vouches for the bytes (a GET's DIGEST, `Get::pump` in `conn/streams/get.rs`) decides only after its
/// last range has left, by checking the file then.
#[derive(Clone, Debug)]
pub struct FileRange {
    /// The file, shared with whoever opened it.
    pub file: Arc<File>,
    /// First byte.
    pub offset: u64,
    /// Bytes to send.
    pub len: u64,
}

/// One piece of the queue once a file range is in it.
#[derive(Debug)]
enum Segment {
    /// The next `n` bytes of the buffer.
    Bytes(usize),
    /// A file range.
    File(FileRange),
}

/// What leaves an [`OutQueue`] next.
#[derive(Debug)]
pub enum Front<'a> {
    /// Bytes, up to the next file range (all of them while no range is queued).
    Bytes(&'a [u8]),
    /// A file range.
    File(&'a FileRange),
}

/// Bytes with file ranges between them, in order: the pooled part of an
/// [`Outbox`](crate::outbox::Outbox).
///
/// Bytes are appended at the back as a [`Buf`] takes them (whole, from a closure, or read into
/// [`OutQueue::spare`] and [`OutQueue::commit`]ted); a range goes in with
/// [`OutQueue::push_file`]; [`OutQueue::front`] and [`OutQueue::advance`] take from the front.
#[derive(Debug)]
pub struct OutQueue {
    bytes: Buf,
    /// Empty while the queue holds only bytes — the common case, with no bookkeeping per
    /// frame. Once a file range is queued, every segment in order, `Bytes(n)` standing for the
    /// next `n` bytes of `bytes` (their sum is `bytes.len()`).
    segments: VecDeque<Segment>,
    /// Bytes of file ranges queued.
    file_bytes: u64,
    /// The outbox's backpressure state ([`OutQueue::paused`]), kept here so that an outbox is
    /// one pointer.
    paused: bool,
}

impl Pooled for OutQueue {
    fn with_buffer_len(buffer_len: usize) -> OutQueue {
        OutQueue {
            bytes: Buf::with_capacity(buffer_len),
            segments: VecDeque::new(),
            file_bytes: 0,
            paused: false,
        }
    }

    fn reset(&mut self) {
        self.bytes.reset();
        if !self.segments.is_empty() {
            self.segments.clear();
        }
        self.file_bytes = 0;
        self.paused = false;
    }

    fn is_standard(&self, buffer_len: usize) -> bool {
        self.bytes.capacity() == buffer_len
    }
}

impl OutQueue {
    /// Bytes queued, file ranges included.
    pub fn pending(&self) -> usize {
        let files = usize::try_from(self.file_bytes).unwrap_or(usize::MAX);
        self.bytes.len().saturating_add(files)
    }

    /// Bytes of buffer held (capacity, not content).
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Bytes in the buffer (file ranges not included).
    pub fn buffered(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the owner paused production; see
    /// [`Outbox::may_produce`](crate::outbox::Outbox::may_produce).
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Records the owner's backpressure state.
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Ensures [`OutQueue::spare`] is at least `additional` bytes, as [`Buf::reserve`] does.
    pub fn reserve(&mut self, additional: usize, max_capacity: usize) {
        self.bytes.reserve(additional, max_capacity);
    }

    /// The writable tail, for a read to fill; follow with [`OutQueue::commit`].
    pub fn spare(&mut self) -> &mut [u8] {
        self.bytes.spare()
    }

    /// Appends `n` bytes of [`OutQueue::spare`] to the queue.
    pub fn commit(&mut self, n: usize) {
        self.bytes.commit(n);
        self.note_bytes(n);
    }

    /// Appends `n` bytes written by `fill`, growing within `max_capacity`.
    pub fn append_with(&mut self, n: usize, max_capacity: usize, fill: impl FnOnce(&mut [u8])) {
        self.bytes.append_with(n, max_capacity, fill);
        self.note_bytes(n);
    }

    /// Appends a copy of `bytes`, growing within `max_capacity`.
    pub fn append(&mut self, bytes: &[u8], max_capacity: usize) {
        self.bytes.append(bytes, max_capacity);
        self.note_bytes(bytes.len());
    }

    /// Appends `header` (copied) and then `range`.
    pub fn push_file(&mut self, header: &[u8], range: FileRange, max_capacity: usize) {
        if self.segments.is_empty() && !self.bytes.is_empty() {
            let queued = self.bytes.len();
            self.segments.push_back(Segment::Bytes(queued));
        }
        self.bytes.append(header, max_capacity);
        match self.segments.back_mut() {
            Some(Segment::Bytes(run)) => *run += header.len(),
            _ => self.segments.push_back(Segment::Bytes(header.len())),
        }
        self.file_bytes += range.len;
        if range.len > 0 {
            self.segments.push_back(Segment::File(range));
        }
    }

    /// What leaves next: the bytes up to the next file range, or that range.
    pub fn front(&self) -> Front<'_> {
        match self.segments.front() {
            // Bytes only (no file range queued), the common case: the whole buffer.
            None => Front::Bytes(self.bytes.data()),
            Some(Segment::Bytes(run)) => Front::Bytes(&self.bytes.data()[..*run]),
            Some(Segment::File(range)) => Front::File(range),
        }
    }

    /// Takes `n` bytes of [`OutQueue::front`] off the queue.
    ///
    /// # Panics
    /// If `n` is more than the front holds.
    pub fn advance(&mut self, n: usize) {
        match self.segments.front_mut() {
            None => self.bytes.consume(n),
            Some(Segment::Bytes(run)) => {
                self.bytes.consume(n);
                *run -= n;
                if *run == 0 {
                    self.segments.pop_front();
                }
            }
            Some(Segment::File(range)) => {
                range.offset += n as u64;
                range.len -= n as u64;
                self.file_bytes -= n as u64;
                if range.len == 0 {
                    self.segments.pop_front();
                }
            }
        }
        if self.segments.len() == 1 && matches!(self.segments.front(), Some(Segment::Bytes(_))) {
            // Back to bytes only: drop the bookkeeping.
            self.segments.clear();
        }
    }

    /// Records that `n` bytes were just appended to the buffer.
    fn note_bytes(&mut self, n: usize) {
        if self.segments.is_empty() || n == 0 {
            return;
        }
        match self.segments.back_mut() {
            Some(Segment::Bytes(run)) => *run += n,
            _ => self.segments.push_back(Segment::Bytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_everything_rewinds() {
        let mut buf = Buf::with_capacity(8);
        buf.append(b"abcd", usize::MAX);
        buf.consume(2);
        assert_eq!(buf.data(), b"cd");
        buf.consume(2);
        assert_eq!(
            buf.spare().len(),
            8,
            "an empty buffer offers its whole capacity"
        );
    }

    #[test]
    fn reserve_compacts_before_growing() {
        let mut buf = Buf::with_capacity(8);
        buf.append(b"abcdefg", usize::MAX);
        buf.consume(5);
        buf.reserve(6, usize::MAX);
        assert_eq!(buf.capacity(), 8, "moving 2 bytes to the front was enough");
        assert_eq!(buf.data(), b"fg");
        buf.reserve(20, usize::MAX);
        assert!(buf.capacity() >= 22);
        assert_eq!(buf.data(), b"fg");
    }

    #[test]
    fn reserve_doubles_but_stops_at_the_cap_unless_the_bytes_need_more() {
        let mut buf = Buf::with_capacity(8);
        buf.append(&[1; 8], 100);
        buf.reserve(1, 12);
        assert_eq!(buf.capacity(), 12, "doubling to 16 would pass the cap");
        buf.reserve(10, 12);
        assert_eq!(buf.capacity(), 18, "the bytes themselves need 18");
    }

    #[test]
    fn pool_reuses_standard_buffers_and_frees_grown_ones() {
        let mut pool = BufferPool::new(16, 2);
        let a = pool.take();
        let mut b = pool.take();
        assert_eq!(pool.created(), 2);
        b.append(&[1; 40], usize::MAX);
        pool.give(a);
        pool.give(b);
        assert_eq!(pool.free_len(), 1, "the grown buffer was freed");
        let again = pool.take();
        assert!(again.is_empty());
        assert_eq!(pool.created(), 2, "the pooled buffer was reused");
    }

    #[test]
    fn pool_keeps_at_most_max_free() {
        let mut pool = BufferPool::new(16, 1);
        let (a, b) = (pool.take(), pool.take());
        pool.give(a);
        pool.give(b);
        assert_eq!(pool.free_len(), 1);
    }

    #[test]
    fn out_queue_gives_bytes_and_ranges_in_order_and_drops_the_bookkeeping_after() {
        fn front_bytes(queue: &OutQueue) -> Vec<u8> {
            match queue.front() {
                Front::Bytes(bytes) => bytes.to_vec(),
                Front::File(range) => panic!("expected bytes, got {range:?}"),
            }
        }
        let mut queue = OutQueue::with_buffer_len(16);
        let file = Arc::new(File::open("/dev/null").unwrap());
        queue.append(b"ab", usize::MAX);
        let range = FileRange {
            file,
            offset: 10,
            len: 5,
        };
        queue.push_file(b"H", range, usize::MAX);
        queue.append(b"cd", usize::MAX);
        assert_eq!(queue.pending(), 2 + 1 + 5 + 2);
        assert_eq!(front_bytes(&queue), b"abH", "bytes up to the range");
        queue.advance(3);
        let Front::File(range) = queue.front() else {
            panic!("expected the range");
        };
        assert_eq!((range.offset, range.len), (10, 5));
        queue.advance(2);
        let Front::File(range) = queue.front() else {
            panic!("expected the rest of the range");
        };
        assert_eq!((range.offset, range.len), (12, 3));
        queue.advance(3);
        assert!(queue.segments.is_empty(), "bytes only again");
        assert_eq!(front_bytes(&queue), b"cd");
        assert_eq!(queue.pending(), 2);
    }
}
