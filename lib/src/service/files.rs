//! The file service's transfer state machines, sans-IO: they count bytes, keep the running
//! BLAKE3, page a listing, and decide what comes next, but never touch a file. The
//! connection's stream table (`conn/streams/`) does the reads and writes they ask for,
//! through the [`Disk`] in its context, in bounded chunks per turn.
//!
//! A GET sends `[offset, size)` and ends with the whole file's hash, which is either known in
//! advance (the cache) or computed from byte 0 while the bytes are sent:
//!
//! ```text
//! GetTransfer:  sending + (hash known | hashing 0..size)  --both done-->  DIGEST
//! ```
//! "Both done" is this machine's part; the connection then sends the DIGEST only once the last
//! queued DATA range has left its outbox and the file is as it was at the open, else an
//! ERROR (`Get::pump` in `conn/streams/get.rs`; checking a file is the disk's part).
//! A PUT takes exactly `size` bytes, hashing them as they are written; a resumed one first
//! re-hashes the prefix the server already holds:
//!
//! ```text
//! PutTransfer:  Rehashing 0..held --> Receiving held..size --DIGEST, all checks--> Verified
//! ```
//! (Its writes and syncs are [`crate::service::upload`]'s.) A LIST reads directory entries
//! from the disk and encodes them into ENTRIES pages ([`ListTransfer`]).

use std::fmt;

use crate::proto::ErrorCode;
use crate::proto::files::{DirEntry, Hash, PutReady};
use crate::service::disk::{DirRead, Disk, FileError, FileMeta, ListingHandle};

/// Where a GET's hash comes from.
#[derive(Debug)]
enum GetHash {
    /// The cache had it.
    Known(Hash),
    /// Being computed; the next byte to hash.
    Computing(Box<blake3::Hasher>, u64),
}

/// One GET: which bytes to send next, and the whole-file hash for the trailer.
#[derive(Debug)]
pub(crate) struct GetTransfer {
    size: u64,
    next: u64,
    hash: GetHash,
}

impl GetTransfer {
    /// A GET of a file of `size` bytes from `offset` (at most `size`), with its cached hash
    /// if there is one.
    pub(crate) fn new(size: u64, offset: u64, known: Option<Hash>) -> GetTransfer {
        GetTransfer {
            size,
            next: offset.min(size),
            hash: match known {
                Some(hash) => GetHash::Known(hash),
                None => GetHash::Computing(Box::new(blake3::Hasher::new()), 0),
            },
        }
    }

    /// The next range to send, at most `max` bytes: `(offset, len)`.
    pub(crate) fn next_range(&self, max: u64) -> Option<(u64, u64)> {
        (self.next < self.size).then(|| (self.next, (self.size - self.next).min(max)))
    }

    /// The range `next_range` gave was queued for sending.
    pub(crate) fn on_queued(&mut self, len: u64) {
        self.next = (self.next + len).min(self.size);
    }

    /// Where hashing continues, and how many bytes it still needs, if it does.
    pub(crate) fn hash_wanted(&self) -> Option<(u64, u64)> {
        match &self.hash {
            GetHash::Computing(_, at) if *at < self.size => Some((*at, self.size - at)),
            _ => None,
        }
    }

    /// The next bytes of the file, from where [`GetTransfer::hash_wanted`] said.
    pub(crate) fn handle_hashed(&mut self, bytes: &[u8]) {
        if let GetHash::Computing(hasher, at) = &mut self.hash {
            hasher.update(bytes);
            *at += bytes.len() as u64;
        }
    }

    /// Whether anything is left to send or hash.
    pub(crate) fn is_done(&self) -> bool {
        self.next >= self.size && self.hash_wanted().is_none()
    }

    /// Once everything is queued and hashed: the trailer's hash, and whether it was computed
    /// now (worth caching) rather than known.
    pub(crate) fn poll_digest(&self) -> Option<(Hash, bool)> {
        if !self.is_done() {
            return None;
        }
        Some(match &self.hash {
            GetHash::Known(hash) => (*hash, false),
            GetHash::Computing(hasher, _) => (*hasher.finalize().as_bytes(), true),
        })
    }
}

/// Why a PUT's stream ends in an error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PutError {
    /// DATA arrived while the server was still re-hashing what it holds (before PUT_READY).
    NotReady,
    /// More DATA than the declared size.
    TooMuch {
        /// The declared size.
        size: u64,
        /// Where the offending frame would have ended.
        end: u64,
    },
    /// DIGEST before all the bytes.
    Incomplete {
        /// Bytes received (held included).
        received: u64,
        /// The declared size.
        size: u64,
    },
    /// The bytes do not hash to what the client said.
    Mismatch,
}

impl PutError {
    /// The error code for the stream's ERROR frame.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            PutError::Mismatch => ErrorCode::HashMismatch,
            _ => ErrorCode::BadRequest,
        }
    }
}

impl fmt::Display for PutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::NotReady => f.write_str("DATA before PUT_READY on a resumed upload"),
            PutError::TooMuch { size, end } => {
                write!(f, "DATA up to byte {end} of a {size}-byte upload")
            }
            PutError::Incomplete { received, size } => {
                write!(f, "DIGEST after {received} of {size} bytes")
            }
            PutError::Mismatch => f.write_str(
                "the bytes received do not hash to the BLAKE3 given; nothing was stored",
            ),
        }
    }
}

/// Where a PUT is.
#[derive(Debug, PartialEq, Eq)]
enum PutPhase {
    /// Re-reading the held prefix; the next byte to hash.
    Rehashing(u64),
    /// Taking DATA; PUT_READY still to be sent if `ready_due`.
    Receiving,
    /// Checked and handed to commit.
    Verified,
}

/// One PUT: the bytes received so far, their hash, the checks before the commit.
#[derive(Debug)]
pub(crate) struct PutTransfer {
    size: u64,
    held: u64,
    received: u64,
    upload_id: u64,
    declared: Option<Hash>,
    hasher: Box<blake3::Hasher>,
    phase: PutPhase,
    ready_due: bool,
}

impl PutTransfer {
    /// A PUT of `size` bytes whose server already holds `held` (to be re-hashed first), bound
    /// to `declared` if the client gave the hash up front.
    pub(crate) fn new(size: u64, held: u64, upload_id: u64, declared: Option<Hash>) -> PutTransfer {
        let held = held.min(size);
        PutTransfer {
            size,
            held,
            received: held,
            upload_id,
            declared,
            hasher: Box::new(blake3::Hasher::new()),
            phase: if held > 0 {
                PutPhase::Rehashing(0)
            } else {
                PutPhase::Receiving
            },
            ready_due: true,
        }
    }

    /// Where re-hashing continues and how many bytes it still needs, while it does.
    pub(crate) fn rehash_wanted(&self) -> Option<(u64, u64)> {
        match self.phase {
            PutPhase::Rehashing(at) => Some((at, self.held - at)),
            _ => None,
        }
    }

    /// The next bytes of the held prefix. A prefix that turns out shorter than expected
    /// (`bytes` empty) is treated as held only as far as it goes.
    pub(crate) fn handle_rehashed(&mut self, bytes: &[u8]) {
        let PutPhase::Rehashing(at) = self.phase else {
            return;
        };
        self.hasher.update(bytes);
        let at = at + bytes.len() as u64;
        if bytes.is_empty() || at >= self.held {
            self.held = at;
            self.received = at;
            self.phase = PutPhase::Receiving;
        } else {
            self.phase = PutPhase::Rehashing(at);
        }
    }

    /// PUT_READY, once, when the server is ready for DATA.
    pub(crate) fn poll_ready(&mut self) -> Option<PutReady> {
        if self.phase != PutPhase::Receiving || !self.ready_due {
            return None;
        }
        self.ready_due = false;
        Some(PutReady {
            upload_id: self.upload_id,
            held: self.held,
        })
    }

    /// A DATA frame of `len` bytes arrived: the offset to write it at.
    pub(crate) fn handle_data(&mut self, len: usize) -> Result<u64, PutError> {
        if self.phase != PutPhase::Receiving {
            return Err(PutError::NotReady);
        }
        let end = self.received + len as u64;
        if end > self.size {
            return Err(PutError::TooMuch {
                size: self.size,
                end,
            });
        }
        Ok(self.received)
    }

    /// The bytes of that frame were written.
    pub(crate) fn on_written(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.received += bytes.len() as u64;
    }

    /// The client's trailing DIGEST: every byte must be in, and the trailer, the declared hash
    /// and the computed one must agree. Returns the hash to commit under.
    pub(crate) fn handle_digest(&mut self, trailer: &Hash) -> Result<Hash, PutError> {
        if self.phase != PutPhase::Receiving || self.received != self.size {
            return Err(PutError::Incomplete {
                received: self.received,
                size: self.size,
            });
        }
        let computed = *self.hasher.finalize().as_bytes();
        if &computed != trailer || self.declared.is_some_and(|declared| declared != computed) {
            return Err(PutError::Mismatch);
        }
        self.phase = PutPhase::Verified;
        Ok(computed)
    }

    /// Bytes received so far, held ones included.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Whether PUT_READY is yet to be sent or the held prefix to be hashed: work that needs no
    /// event from the client.
    pub(crate) fn wants_turn(&self) -> bool {
        self.rehash_wanted().is_some() || (self.ready_due && self.phase == PutPhase::Receiving)
    }
}

/// One LIST: the directory's entries, read from the disk a bounded number at a time and
/// encoded into ENTRIES pages.
#[derive(Debug)]
pub(crate) struct ListTransfer {
    listing: ListingHandle,
    path: String,
    /// An entry read that did not fit in the last page.
    pending: Option<(String, FileMeta)>,
    done: bool,
}

impl ListTransfer {
    /// A listing of the directory `path`, opened as `listing`.
    pub(crate) fn new(listing: ListingHandle, path: &str) -> ListTransfer {
        ListTransfer {
            listing,
            path: path.to_string(),
            pending: None,
            done: false,
        }
    }

    /// The handle the disk knows the listing by.
    pub(crate) fn listing(&self) -> ListingHandle {
        self.listing
    }

    /// Appends entries to `page` without letting it pass `max_bytes` (an entry that does not
    /// fit waits for the next page), reading at most `max_entries` directory entries, hidden
    /// and skipped ones included, so a directory full of names LIST does not show still costs
    /// a bounded turn. Returns whether the directory is finished. An entry too long for any
    /// page (a frame limit below 274 bytes and a long name) is an error.
    pub(crate) fn next_page(
        &mut self,
        disk: &mut dyn Disk,
        page: &mut Vec<u8>,
        max_bytes: usize,
        max_entries: usize,
    ) -> Result<bool, FileError> {
        for _ in 0..max_entries {
            let (name, meta) = match self.pending.take() {
                Some(entry) => entry,
                None => match disk.read_entry(self.listing)? {
                    DirRead::Entry(name, meta) => (name, meta),
                    DirRead::Skipped => continue,
                    DirRead::End => {
                        self.done = true;
                        break;
                    }
                },
            };
            let entry = DirEntry {
                name: &name,
                kind: meta.kind,
                size: meta.size,
                mtime_ns: meta.mtime_ns,
            };
            if page.len() + entry.wire_len() > max_bytes {
                if page.is_empty() {
                    return Err(FileError::new(
                        ErrorCode::LimitReached,
                        format!(
                            "{}/{name}: the entry needs {} bytes, more than a frame may carry here ({max_bytes})",
                            self.path,
                            entry.wire_len()
                        ),
                    ));
                }
                self.pending = Some((name, meta));
                break;
            }
            let at = page.len();
            page.resize(at + entry.wire_len(), 0);
            entry.emit(&mut page[at..]);
        }
        Ok(self.done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(bytes: &[u8]) -> Hash {
        *blake3::hash(bytes).as_bytes()
    }

    #[test]
    fn a_get_sends_the_range_and_hashes_the_whole_file() {
        let file = b"hello, world";
        let mut get = GetTransfer::new(file.len() as u64, 7, None);
        assert_eq!(get.next_range(100), Some((7, 5)));
        get.on_queued(5);
        assert_eq!(get.next_range(100), None);
        assert!(get.poll_digest().is_none(), "still hashing");
        assert_eq!(get.hash_wanted(), Some((0, 12)));
        get.handle_hashed(&file[..4]);
        get.handle_hashed(&file[4..]);
        assert_eq!(get.poll_digest(), Some((hash(file), true)));

        let known = GetTransfer::new(12, 12, Some([1; 32]));
        assert_eq!(known.next_range(100), None);
        assert_eq!(known.poll_digest(), Some(([1; 32], false)));
    }

    #[test]
    fn a_get_of_an_empty_file_is_only_a_digest() {
        let get = GetTransfer::new(0, 0, None);
        assert_eq!(get.next_range(10), None);
        assert_eq!(get.poll_digest(), Some((hash(b""), true)));
    }

    #[test]
    fn a_put_checks_count_and_hash() {
        let data = b"0123456789";
        let mut put = PutTransfer::new(10, 0, 0, None);
        assert_eq!(
            put.poll_ready(),
            Some(PutReady {
                upload_id: 0,
                held: 0
            })
        );
        assert_eq!(put.poll_ready(), None, "once");
        assert_eq!(put.handle_data(4), Ok(0));
        put.on_written(&data[..4]);
        assert_eq!(
            put.handle_digest(&hash(data)),
            Err(PutError::Incomplete {
                received: 4,
                size: 10
            })
        );
        assert_eq!(
            put.handle_data(7),
            Err(PutError::TooMuch { size: 10, end: 11 })
        );
        assert_eq!(put.handle_data(6), Ok(4));
        put.on_written(&data[4..]);
        assert_eq!(put.handle_digest(&hash(b"other")), Err(PutError::Mismatch));
        assert_eq!(put.handle_digest(&hash(data)), Ok(hash(data)));
    }

    #[test]
    fn a_declared_hash_must_match_too() {
        let mut put = PutTransfer::new(3, 0, 9, Some(hash(b"abd")));
        put.handle_data(3).unwrap();
        put.on_written(b"abc");
        assert_eq!(put.handle_digest(&hash(b"abc")), Err(PutError::Mismatch));
    }

    #[test]
    fn a_resumed_put_rehashes_before_ready() {
        let data = b"abcdefgh";
        let mut put = PutTransfer::new(8, 5, 42, Some(hash(data)));
        assert_eq!(put.poll_ready(), None);
        assert_eq!(put.handle_data(1), Err(PutError::NotReady));
        assert_eq!(put.rehash_wanted(), Some((0, 5)));
        put.handle_rehashed(&data[..2]);
        assert_eq!(put.rehash_wanted(), Some((2, 3)));
        put.handle_rehashed(&data[2..5]);
        assert_eq!(
            put.poll_ready(),
            Some(PutReady {
                upload_id: 42,
                held: 5
            })
        );
        assert_eq!(put.handle_data(3), Ok(5));
        put.on_written(&data[5..]);
        assert_eq!(put.handle_digest(&hash(data)), Ok(hash(data)));
    }

    #[test]
    fn a_short_prefix_is_held_only_as_far_as_it_goes() {
        let mut put = PutTransfer::new(8, 5, 42, None);
        put.handle_rehashed(b"ab");
        put.handle_rehashed(b"");
        assert_eq!(put.poll_ready().map(|ready| ready.held), Some(2));
    }
}
