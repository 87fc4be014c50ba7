//! The hash cache's index: one file in the root, [`INDEX_NAME`], of [`SLOTS`] fixed-size
//! slots, each holding one file's BLAKE3 with the `stat` data it was computed for.
//!
//! **Why a file of its own, keyed on ctime.** A cached hash may only be used while the content
//! is the one hashed, and the only timestamp nobody can set back is the inode's change time:
//! `utimensat` can restore an mtime to the nanosecond, but it moves the ctime, as every write,
//! truncation, `chmod` or link count change does (git keeps ctime in its index for this
//! reason; `Documentation/technical/racy-git.txt`). The cache used to live in an extended
//! attribute on the file itself, which cannot record a ctime: setting the attribute moves it.
//! So the entries live outside the files, here.
//!
//! **Layout.** The file is [`SLOTS`] × [`SLOT_LEN`] bytes, sparse until written. A file's slot
//! is a hash of its (device, inode) modulo [`SLOTS`] — direct-mapped, so a lookup or a store
//! is one `pread` or `pwrite` of one slot, and two files sharing a slot only evict each other
//! (the loser is hashed again at its next GET). A slot holds, big-endian: device, inode, size,
//! mtime ns, ctime ns, as-of ns (when the hashing began), the hash, 16 reserved zero bytes, and
//! a 32-byte BLAKE3 (in derive-key mode, its own context) of the 96 bytes before it.
//!
//! **No locks, no fsync.** Worker processes of one server share the file and write slots
//! concurrently; `pwrite` of 128 bytes is not atomic against a concurrent `pread`. A torn or
//! half-written slot fails its checksum and reads as empty, as do the zeros of a slot never
//! written. A lost or stale slot costs one recomputation, never a wrong answer, so nothing is
//! synced: after a crash the index is whatever reached the disk.
//!
//! **When an entry is trusted** ([`Entry::valid_for`]): device, inode, size, mtime and ctime
//! all equal the file's `fstat` now, and the hashing began more than
//! [`RACY_WINDOW_NS`] after both the ctime and the mtime. The second rule is git's racy-clean
//! rule applied to the ctime: timestamps advance in ticks (1–10 ms), so a write in the same
//! tick as the last change, after the hashing began, would leave the ctime as recorded. The
//! mtime is included because a user can set it into the future. With both, inode reuse is
//! harmless: a new file on a recycled inode has a ctime later than any old entry's as-of.
//!
//! **What it cannot see.** A change that does not go through the inode — the block device
//! written directly, a filesystem that does not keep ctime — and anyone who can write this
//! file can forge an entry (the server's user: a shell, or a command run with exec). Both
//! could write the served files themselves. The client's check still catches a DIGEST that
//! does not match the bytes it received.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::{FileType, Mode, OFlags};

use crate::proto::files::{HASH_LEN, Hash};
use crate::service::disk::FileMeta;

/// A file whose ctime or mtime is within this of the moment its hashing began may have been
/// written again in the same timestamp tick, so that hash is not trusted. Kernel timestamps
/// advance in ticks of 1–10 ms; 100 ms leaves a wide margin.
pub const RACY_WINDOW_NS: i64 = 100_000_000;

/// The index's name in the root (reserved: no client can address it, LIST does not show it).
pub const INDEX_NAME: &str = ".monoreactor-hash-index";

/// Slots in the index: 16,384 × 128 bytes, a 2 MiB file (sparse: blocks are allocated only
/// for slots written). Enough that a server's working set rarely collides; a collision costs a
/// hash pass, nothing else.
pub(crate) const SLOTS: u64 = 16_384;

/// Bytes per slot.
pub(crate) const SLOT_LEN: usize = 128;

/// Bytes of a slot covered by its checksum.
const BODY_LEN: usize = 96;

/// The checksum's derive-key context (so no other BLAKE3 of the same bytes matches it).
const CHECKSUM_CONTEXT: &str = "monoreactor 2026-12 hash index slot";

/// One cached hash and the file state it was computed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Inode change time, ns since the epoch.
    pub ctime_ns: i64,
    /// When the hashing began (wall clock, ns): every byte hashed was read after it.
    pub as_of_ns: i64,
    /// The BLAKE3 of the whole file.
    pub hash: Hash,
}

impl Entry {
    /// The entry for `hash`, computed from bytes read after `as_of_ns`, of a file with `meta`.
    pub(crate) fn new(meta: &FileMeta, hash: &Hash, as_of_ns: i64) -> Entry {
        Entry {
            dev: meta.dev,
            ino: meta.ino,
            size: meta.size,
            mtime_ns: meta.mtime_ns,
            ctime_ns: meta.ctime_ns,
            as_of_ns,
            hash: *hash,
        }
    }

    /// Whether this entry describes the content of a file whose `fstat` is `meta` now: the
    /// same inode, size, mtime and ctime, and hashed clearly after its last change (see the
    /// module docs).
    pub(crate) fn valid_for(&self, meta: &FileMeta) -> bool {
        self.dev == meta.dev
            && self.ino == meta.ino
            && self.size == meta.size
            && self.mtime_ns == meta.mtime_ns
            && self.ctime_ns == meta.ctime_ns
            && self
                .as_of_ns
                .saturating_sub(self.ctime_ns.max(self.mtime_ns))
                > RACY_WINDOW_NS
    }

    /// The slot's bytes.
    pub(crate) fn encode(&self) -> [u8; SLOT_LEN] {
        let mut slot = [0; SLOT_LEN];
        slot[0..8].copy_from_slice(&self.dev.to_be_bytes());
        slot[8..16].copy_from_slice(&self.ino.to_be_bytes());
        slot[16..24].copy_from_slice(&self.size.to_be_bytes());
        slot[24..32].copy_from_slice(&self.mtime_ns.to_be_bytes());
        slot[32..40].copy_from_slice(&self.ctime_ns.to_be_bytes());
        slot[40..48].copy_from_slice(&self.as_of_ns.to_be_bytes());
        slot[48..48 + HASH_LEN].copy_from_slice(&self.hash);
        let checksum = checksum(&slot[..BODY_LEN]);
        slot[BODY_LEN..].copy_from_slice(&checksum);
        slot
    }

    /// The entry in `slot`, or `None` if its checksum fails (never written, torn, damaged).
    pub(crate) fn decode(slot: &[u8; SLOT_LEN]) -> Option<Entry> {
        if checksum(&slot[..BODY_LEN]) != slot[BODY_LEN..] {
            return None;
        }
        let word = |at: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&slot[at..at + 8]);
            word
        };
        let mut hash = [0; HASH_LEN];
        hash.copy_from_slice(&slot[48..48 + HASH_LEN]);
        Some(Entry {
            dev: u64::from_be_bytes(word(0)),
            ino: u64::from_be_bytes(word(8)),
            size: u64::from_be_bytes(word(16)),
            mtime_ns: i64::from_be_bytes(word(24)),
            ctime_ns: i64::from_be_bytes(word(32)),
            as_of_ns: i64::from_be_bytes(word(40)),
            hash,
        })
    }
}

fn checksum(body: &[u8]) -> [u8; HASH_LEN] {
    let mut hasher = blake3::Hasher::new_derive_key(CHECKSUM_CONTEXT);
    hasher.update(body);
    *hasher.finalize().as_bytes()
}

/// The slot of (device, inode): a 64-bit mix (splitmix64's finaliser), so inodes allocated
/// in runs spread over the table.
fn slot_of(dev: u64, ino: u64) -> u64 {
    let mut x = ino ^ dev.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) % SLOTS
}

/// The open index file.
#[derive(Debug)]
pub(crate) struct HashIndex {
    file: File,
}

impl HashIndex {
    /// Opens (creating it if needed) the index in the directory `root`. An index of the
    /// wrong size (another layout, or damaged) is emptied and resized; not a regular file
    /// (something else in the way) is an error, as is a root the server cannot write.
    pub(crate) fn open(root: impl rustix::fd::AsFd) -> io::Result<HashIndex> {
        // NONBLOCK: a FIFO planted under the name must not block the loop (refused below).
        let fd = rustix::fs::openat(
            root,
            INDEX_NAME,
            OFlags::RDWR
                | OFlags::CREATE
                | OFlags::NOFOLLOW
                | OFlags::NONBLOCK
                | OFlags::NOCTTY
                | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::other(format!(
                "{INDEX_NAME} is not a regular file"
            )));
        }
        let file = File::from(fd);
        let len = SLOTS * SLOT_LEN as u64;
        if stat.st_size as u64 != len {
            // Zeros read as empty slots; emptying first drops whatever a wrong layout held.
            file.set_len(0)?;
            file.set_len(len)?;
        }
        Ok(HashIndex { file })
    }

    /// The entry in the slot of (`dev`, `ino`), if it is intact and about that file.
    pub(crate) fn get(&self, dev: u64, ino: u64) -> Option<Entry> {
        let mut slot = [0; SLOT_LEN];
        self.file
            .read_exact_at(&mut slot, slot_of(dev, ino) * SLOT_LEN as u64)
            .ok()?;
        Entry::decode(&slot).filter(|entry| entry.dev == dev && entry.ino == ino)
    }

    /// Writes `entry` to its slot (evicting whatever was there).
    pub(crate) fn put(&self, entry: &Entry) -> io::Result<()> {
        let at = slot_of(entry.dev, entry.ino) * SLOT_LEN as u64;
        self.file.write_all_at(&entry.encode(), at)
    }

    /// The index file (tests damage it).
    #[cfg(test)]
    fn file(&self) -> &File {
        &self.file
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::files::FileKind;

    fn meta() -> FileMeta {
        FileMeta {
            size: 5,
            mtime_ns: 1_000_000_000,
            ctime_ns: 1_000_000_000,
            kind: FileKind::File,
            dev: 1,
            ino: 2,
        }
    }

    fn scratch(name: &str) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!(
            "monoreactor-hash-index-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fd = File::open(&dir).unwrap();
        (dir, fd)
    }

    #[test]
    fn an_entry_is_trusted_only_for_the_same_inode_size_and_times_and_not_racily() {
        let meta = meta();
        let entry = Entry::new(&meta, &[4; 32], meta.ctime_ns + RACY_WINDOW_NS + 1);
        assert!(entry.valid_for(&meta));
        assert_eq!(Entry::decode(&entry.encode()), Some(entry));
        let racy = Entry {
            as_of_ns: meta.ctime_ns + RACY_WINDOW_NS,
            ..entry
        };
        assert!(!racy.valid_for(&meta), "hashed within the racy window");
        let changed = [
            FileMeta { size: 6, ..meta },
            FileMeta {
                mtime_ns: meta.mtime_ns + 1,
                ..meta
            },
            // The change `utimensat` cannot hide: content rewritten, mtime set back.
            FileMeta {
                ctime_ns: meta.ctime_ns + 1,
                ..meta
            },
            FileMeta { ino: 3, ..meta },
            FileMeta { dev: 9, ..meta },
        ];
        for now in changed {
            assert!(!entry.valid_for(&now), "{now:?}");
        }
        // An mtime set into the future is racy against itself.
        let future = FileMeta {
            mtime_ns: entry.as_of_ns,
            ..meta
        };
        assert!(!Entry::new(&future, &[4; 32], entry.as_of_ns).valid_for(&future));
    }

    #[test]
    fn a_damaged_slot_reads_as_no_entry() {
        let entry = Entry::new(&meta(), &[7; 32], 5_000_000_000);
        let good = entry.encode();
        for at in [0, 20, 50, 95, 96, 127] {
            let mut bad = good;
            bad[at] ^= 1;
            assert_eq!(Entry::decode(&bad), None, "byte {at} flipped");
        }
        assert_eq!(Entry::decode(&[0; SLOT_LEN]), None, "a slot never written");
        // A slot half from one write and half from another (a torn write).
        let other = Entry { size: 6, ..entry }.encode();
        let mut torn = good;
        torn[64..].copy_from_slice(&other[64..]);
        assert_eq!(Entry::decode(&torn), None);
    }

    #[test]
    fn the_index_stores_finds_and_survives_damage_and_a_wrong_size() {
        let (dir, root) = scratch("store");
        let index = HashIndex::open(&root).unwrap();
        let path = dir.join(INDEX_NAME);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            SLOTS * SLOT_LEN as u64
        );
        let entry = Entry::new(&meta(), &[7; 32], 5_000_000_000);
        index.put(&entry).unwrap();
        assert_eq!(index.get(1, 2), Some(entry));
        assert_eq!(index.get(1, 3), None, "another inode, maybe the same slot");

        // A byte of the slot damaged on disk: no entry, no error.
        let at = slot_of(1, 2) * SLOT_LEN as u64;
        let mut slot = [0; SLOT_LEN];
        index.file().read_exact_at(&mut slot, at).unwrap();
        slot[30] ^= 0x10;
        index.file().write_all_at(&slot, at).unwrap();
        assert_eq!(index.get(1, 2), None);
        index.put(&entry).unwrap();
        assert_eq!(index.get(1, 2), Some(entry), "rewritten");

        // An index of the wrong size (another version's, or cut short) is emptied on open.
        drop(index);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(1000)
            .unwrap();
        let index = HashIndex::open(&root).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            SLOTS * SLOT_LEN as u64
        );
        assert_eq!(index.get(1, 2), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn something_else_under_the_name_is_refused() {
        let (dir, root) = scratch("refused");
        std::fs::create_dir(dir.join(INDEX_NAME)).unwrap();
        assert!(HashIndex::open(&root).is_err(), "a directory");
        std::fs::remove_dir(dir.join(INDEX_NAME)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join(INDEX_NAME)).unwrap();
        assert!(HashIndex::open(&root).is_err(), "a symlink is not followed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn slots_spread_consecutive_inodes() {
        let used: std::collections::HashSet<u64> =
            (0..1000).map(|ino| slot_of(64769, ino)).collect();
        assert!(used.len() > 950, "{} slots for 1000 inodes", used.len());
    }
}
