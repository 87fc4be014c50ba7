//! A raw-frame driver for the file service (protocol version 2) against a real server, so the
//! protocol tests depend on nothing but the wire format: [`FileServer`] (a server whose root
//! sits a few levels down in a scratch tree, with a sibling directory and an `outside`
//! directory to watch), [`FileConn`] (one connection sending GET, PUT, DATA, DIGEST, LIST,
//! STAT, DELETE and MKDIR as hand-built frames and checking each reply stream's shape), and
//! helpers for data, hashes and directory snapshots.
//!
//! Every wait is bounded by the client socket's timeout ([`IO_TIMEOUT`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use monoreactor::client::{Client, ClientError, OwnedFrame};
use monoreactor::proto::files::{
    Entries, FileInfo, FileKind, HASH_LEN, Hash, PutFlags, PutReady, get_field, put_field,
};
use monoreactor::proto::{ErrorCode, ErrorMessage, Flags, Frame, FrameType, Hello, HelloOk};
use monoreactor::proto::{SessionFlags, message::PROTOCOL_VERSION};

use super::exec::Scratch;
use super::{IO_TIMEOUT, Server, describe};

/// The most file bytes a DATA frame from this driver carries: the server's default frame
/// payload limit (and the most the server puts in one of its DATA frames).
pub const DATA_CHUNK: usize = 1 << 20;

/// Most payload bytes the server puts in one ENTRIES page.
pub const LIST_PAGE_MAX: usize = 64 << 10;

/// Prefix of every name the server keeps for itself (partial uploads, the hash index).
pub const RESERVED_PREFIX: &str = ".monoreactor-";

/// The server's hash index in the root: it is there by design, and written by GETs, so
/// [`reserved_entries`] and [`snapshot`] leave it out (they look for leftovers and changes).
pub const HASH_INDEX: &str = ".monoreactor-hash-index";

/// What a refused or failed request ended with: the ERROR's code and text.
pub type Refusal = (ErrorCode, String);

/// One MiB.
pub const MIB: usize = 1 << 20;

// === Frames ===

/// A GET frame; `path` as raw bytes (it may be anything, NUL and invalid UTF-8 included).
pub fn get_frame(stream: u32, path: &[u8], offset: u64) -> Vec<u8> {
    let mut payload = vec![0; get_field::PATH];
    payload[get_field::OFFSET].copy_from_slice(&offset.to_be_bytes());
    payload.extend_from_slice(path);
    Frame::new(FrameType::Get, Flags::END_STREAM, stream, &payload).to_vec()
}

/// A PUT frame. `flags` is sent as given, with `HASH_DECLARED` added when `hash` is given.
pub fn put_frame(
    stream: u32,
    path: &[u8],
    size: u64,
    flags: PutFlags,
    hash: Option<Hash>,
) -> Vec<u8> {
    let mut payload = vec![0; put_field::PATH];
    payload[put_field::SIZE].copy_from_slice(&size.to_be_bytes());
    let flags = match hash {
        Some(_) => flags.with(PutFlags::HASH_DECLARED),
        None => flags,
    };
    payload[put_field::FLAGS] = flags.bits();
    payload[put_field::HASH].copy_from_slice(&hash.unwrap_or([0; HASH_LEN]));
    payload.extend_from_slice(path);
    Frame::new(FrameType::Put, Flags::NONE, stream, &payload).to_vec()
}

/// A DATA frame.
pub fn data_frame(stream: u32, bytes: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::Data, Flags::NONE, stream, bytes).to_vec()
}

/// A DIGEST frame (the client's trailer).
pub fn digest_frame(stream: u32, hash: &Hash) -> Vec<u8> {
    Frame::new(FrameType::Digest, Flags::END_STREAM, stream, hash).to_vec()
}

/// A LIST, STAT, DELETE or MKDIR frame: the payload is the path alone.
pub fn path_frame(frame_type: FrameType, stream: u32, path: &[u8]) -> Vec<u8> {
    Frame::new(frame_type, Flags::END_STREAM, stream, path).to_vec()
}

// === Hashes and data ===

/// BLAKE3 of `bytes`.
pub fn blake3_of(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// Lower-case hex.
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// BLAKE3 of a file, streamed.
pub fn blake3_file(path: &Path) -> Hash {
    let mut file =
        fs::File::open(path).unwrap_or_else(|error| panic!("open {}: {error}", path.display()));
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0; MIB];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => panic!("read {}: {error}", path.display()),
        }
    }
    *hasher.finalize().as_bytes()
}

/// What `b3sum` prints for `path` (hex), or `None` if `b3sum` is not installed.
pub fn b3sum(path: &Path) -> Option<String> {
    let output = Command::new("b3sum")
        .arg("--no-names")
        .arg(path)
        .output()
        .ok()?;
    assert!(
        output.status.success(),
        "b3sum {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `len` pseudo-random bytes, fast even in a debug build: a 1 MiB seeded block, repeated with
/// a different rotation each time, so no two MiB of the result are equal.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let block = super::seeded_bytes(seed, len.min(MIB));
    let mut bytes = Vec::with_capacity(len);
    let mut turn = 0usize;
    while bytes.len() < len {
        let rotate = (turn * 7919 + 1) % block.len().max(1);
        let take = (len - bytes.len()).min(block.len());
        let rotated = block[rotate..].iter().chain(&block[..rotate]);
        bytes.extend(rotated.take(take));
        turn += 1;
    }
    bytes
}

// === Directory snapshots ===

/// What a snapshot records of one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A regular file: its length and hash.
    File(u64, Hash),
    /// A directory.
    Dir,
    /// A symlink and its target.
    Link(PathBuf),
    /// Anything else.
    Other,
}

/// Every entry under `dir` (not following symlinks), by path relative to `dir`, leaving out
/// the subtrees in `skip` (absolute paths) and the server's hash index.
pub fn snapshot(dir: &Path, skip: &[&Path]) -> BTreeMap<PathBuf, Node> {
    let mut found = BTreeMap::new();
    walk(dir, dir, skip, &mut found);
    found
}

fn walk(base: &Path, dir: &Path, skip: &[&Path], found: &mut BTreeMap<PathBuf, Node>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|error| panic!("read_dir {}: {error}", dir.display()));
    for entry in entries {
        let entry = entry.expect("directory entry");
        let path = entry.path();
        if skip.iter().any(|skipped| *skipped == path) || entry.file_name() == HASH_INDEX {
            continue;
        }
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let relative = path.strip_prefix(base).expect("beneath base").to_path_buf();
        let node = if meta.file_type().is_symlink() {
            Node::Link(fs::read_link(&path).expect("readlink"))
        } else if meta.is_dir() {
            walk(base, &path, skip, found);
            Node::Dir
        } else if meta.is_file() {
            Node::File(meta.len(), blake3_file(&path))
        } else {
            Node::Other
        };
        found.insert(relative, node);
    }
}

/// Names in `dir` that start with [`RESERVED_PREFIX`], with their sizes (but the hash index).
pub fn reserved_entries(dir: &Path) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("read_dir {}: {error}", dir.display()))
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().to_str()?.to_string();
            let len = entry.metadata().ok()?.len();
            (name.starts_with(RESERVED_PREFIX) && name != HASH_INDEX).then_some((name, len))
        })
        .collect();
    found.sort();
    found
}

/// Modification time of `path` (not following a symlink), ns since the epoch.
pub fn mtime_ns(path: &Path) -> i64 {
    let meta = fs::symlink_metadata(path).expect("lstat");
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

// === A server with a watched neighbourhood ===

/// A file server whose root is `SCRATCH/up/down/root`, beside an empty `sibling` directory,
/// with `SCRATCH/outside/secret` for symlinks to point at. [`FileServer::assert_nothing_outside`]
/// checks that everything in the scratch tree but the root is as it was at the start.
pub struct FileServer {
    /// The server (dropped, so killed, before the scratch tree goes).
    pub server: Server,
    root: PathBuf,
    outside: PathBuf,
    sibling: PathBuf,
    before: BTreeMap<PathBuf, Node>,
    top_before: Vec<String>,
    scratch: Scratch,
}

/// The content of `SCRATCH/outside/secret`; no GET may ever return it.
pub const SECRET: &[u8] = b"outside the root: never to be served";

impl FileServer {
    /// Starts `serve --root SCRATCH/up/down/root` plus `extra`.
    pub fn start(extra: &[&str]) -> FileServer {
        let scratch = Scratch::new("files");
        let down = scratch.path().join("up").join("down");
        let root = down.join("root");
        let sibling = down.join("sibling");
        let outside = scratch.path().join("outside");
        for dir in [&root, &sibling, &outside] {
            fs::create_dir_all(dir).expect("create the scratch tree");
        }
        fs::write(outside.join("secret"), SECRET).expect("write the secret");
        let server = start_on(&root, extra);
        let before = snapshot(scratch.path(), &[&root]);
        FileServer {
            server,
            root,
            outside,
            sibling,
            before,
            top_before: top_level(),
            scratch,
        }
    }

    /// A new server on the same root (the old one is killed if still running).
    pub fn restart(&mut self, extra: &[&str]) {
        self.server = start_on(&self.root, extra);
    }

    /// The server's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/relative`.
    pub fn at(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// A directory outside the root holding only `secret`.
    pub fn outside(&self) -> &Path {
        &self.outside
    }

    /// The root's empty sibling directory.
    pub fn sibling(&self) -> &Path {
        &self.sibling
    }

    /// The top of the scratch tree.
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    /// A connection that has done HELLO (version 2, authenticated, FILES).
    #[track_caller]
    pub fn conn(&self) -> FileConn {
        FileConn::connect(&self.server)
    }

    /// Fails the test if anything in the scratch tree outside the root changed, or a new
    /// entry appeared at the top of the filesystem.
    #[track_caller]
    pub fn assert_nothing_outside(&self, when: &str) {
        let now = snapshot(self.scratch.path(), &[&self.root]);
        assert_eq!(
            now, self.before,
            "{when}: the scratch tree outside the root changed"
        );
        let top = top_level();
        let new: Vec<&String> = top
            .iter()
            .filter(|name| !self.top_before.contains(name))
            .collect();
        assert!(new.is_empty(), "{when}: new entries in /: {new:?}");
    }
}

impl Deref for FileServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl DerefMut for FileServer {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

fn start_on(root: &Path, extra: &[&str]) -> Server {
    let root = root.to_str().expect("UTF-8 temp path");
    let mut args = vec!["--root", root];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn top_level() -> Vec<String> {
    fs::read_dir("/")
        .map(|entries| {
            entries
                .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

// === A connection ===

/// A directory entry as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns.
    pub mtime_ns: i64,
}

/// What a GET delivered.
#[derive(Debug)]
pub struct Got {
    /// FILE_INFO.
    pub info: FileInfo,
    /// The DATA bytes (only if kept).
    pub bytes: Vec<u8>,
    /// How many DATA bytes came.
    pub len: u64,
    /// How many DATA frames carried them.
    pub frames: u64,
    /// BLAKE3 of the DATA bytes as received.
    pub received_hash: Hash,
    /// The DIGEST trailer.
    pub digest: Hash,
}

/// One version-2 connection speaking the file service in raw frames, one request at a time
/// (each helper sends its request on a new stream and reads that stream to its end; a frame
/// on another stream fails the test).
pub struct FileConn {
    client: Client,
    /// The server's HELLO_OK.
    pub hello_ok: HelloOk,
    next_stream: u32,
}

impl FileConn {
    /// Connects with a HELLO without credentials and checks HELLO_OK: version 2,
    /// authenticated, file service on.
    #[track_caller]
    pub fn connect(server: &Server) -> FileConn {
        let conn = FileConn::connect_with(server, Hello::current());
        assert_eq!(conn.hello_ok.version, PROTOCOL_VERSION, "protocol version");
        assert!(
            conn.hello_ok
                .flags
                .contains(SessionFlags::AUTHENTICATED.with(SessionFlags::FILES)),
            "HELLO_OK flags {:#x}: expected AUTHENTICATED and FILES",
            conn.hello_ok.flags.bits()
        );
        conn
    }

    /// Connects and sends `hello`; HELLO_OK is not checked.
    #[track_caller]
    pub fn connect_with(server: &Server, hello: Hello<'_>) -> FileConn {
        let mut client = Client::connect_raw(&server.framed_str(), IO_TIMEOUT)
            .unwrap_or_else(|error| panic!("connect to {}: {error}", server.framed()));
        let hello_ok = client
            .hello(hello)
            .unwrap_or_else(|error| panic!("HELLO to {}: {error}", server.framed()));
        FileConn {
            client,
            hello_ok,
            next_stream: 1,
        }
    }

    /// The client underneath.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Gives up the connection's socket (to close it in a particular way).
    pub fn into_client(self) -> Client {
        self.client
    }

    /// A stream id not used before on this connection.
    pub fn new_stream(&mut self) -> u32 {
        let stream = self.next_stream;
        self.next_stream += 1;
        stream
    }

    /// Sends raw bytes.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.client
            .send_raw(bytes)
            .unwrap_or_else(|error| panic!("write of {} bytes failed: {error}", bytes.len()));
    }

    /// The next frame, whatever it is.
    #[track_caller]
    pub fn recv(&mut self) -> OwnedFrame {
        match self.client.recv_frame() {
            Ok(frame) => frame,
            Err(error) => panic!("expected a frame, got: {error} ({error:?})"),
        }
    }

    /// The next frame, or what ended the connection.
    pub fn try_recv(&mut self) -> Result<OwnedFrame, ClientError> {
        self.client.recv_frame()
    }

    /// The next frame, which must be on `stream`; an ERROR becomes `Err` (and must end the
    /// stream).
    #[track_caller]
    fn next_on(&mut self, stream: u32) -> Result<OwnedFrame, Refusal> {
        let frame = self.recv();
        assert_eq!(
            frame.header.stream,
            stream,
            "expected a frame on stream {stream}, got {}",
            describe(&frame)
        );
        match refusal(&frame) {
            Some(refused) => Err(refused),
            None => Ok(frame),
        }
    }

    /// A request whose answer is one frame of `answer` with END_STREAM.
    #[track_caller]
    fn one_answer(
        &mut self,
        request: Vec<u8>,
        stream: u32,
        answer: FrameType,
    ) -> Result<OwnedFrame, Refusal> {
        self.send(&request);
        let frame = self.next_on(stream)?;
        expect_frame(&frame, answer, true);
        Ok(frame)
    }

    /// STAT.
    #[track_caller]
    pub fn stat(&mut self, path: &str) -> Result<FileInfo, Refusal> {
        self.stat_raw(path.as_bytes())
    }

    /// STAT of a path given as raw bytes.
    #[track_caller]
    pub fn stat_raw(&mut self, path: &[u8]) -> Result<FileInfo, Refusal> {
        let stream = self.new_stream();
        let frame = self.one_answer(
            path_frame(FrameType::Stat, stream, path),
            stream,
            FrameType::FileInfo,
        )?;
        Ok(FileInfo::parse(&frame.payload).expect("FILE_INFO parses"))
    }

    /// MKDIR.
    #[track_caller]
    pub fn mkdir(&mut self, path: &str) -> Result<(), Refusal> {
        self.mkdir_raw(path.as_bytes())
    }

    /// MKDIR of raw bytes.
    #[track_caller]
    pub fn mkdir_raw(&mut self, path: &[u8]) -> Result<(), Refusal> {
        let stream = self.new_stream();
        let frame = self.one_answer(
            path_frame(FrameType::Mkdir, stream, path),
            stream,
            FrameType::Done,
        )?;
        assert!(frame.payload.is_empty(), "DONE with a payload");
        Ok(())
    }

    /// DELETE.
    #[track_caller]
    pub fn delete(&mut self, path: &str) -> Result<(), Refusal> {
        self.delete_raw(path.as_bytes())
    }

    /// DELETE of raw bytes.
    #[track_caller]
    pub fn delete_raw(&mut self, path: &[u8]) -> Result<(), Refusal> {
        let stream = self.new_stream();
        let frame = self.one_answer(
            path_frame(FrameType::Delete, stream, path),
            stream,
            FrameType::Done,
        )?;
        assert!(frame.payload.is_empty(), "DONE with a payload");
        Ok(())
    }

    /// LIST: every entry of every page, in the order received. Checks that pages stay within
    /// [`LIST_PAGE_MAX`] and that only the last has END_STREAM.
    #[track_caller]
    pub fn list(&mut self, dir: &str) -> Result<Vec<Entry>, Refusal> {
        self.list_pages(dir.as_bytes()).map(|(entries, _)| entries)
    }

    /// LIST of raw bytes; also returns the number of pages.
    #[track_caller]
    pub fn list_pages(&mut self, dir: &[u8]) -> Result<(Vec<Entry>, usize), Refusal> {
        let stream = self.new_stream();
        self.send(&path_frame(FrameType::List, stream, dir));
        let mut entries = Vec::new();
        let mut pages = 0;
        loop {
            let frame = self.next_on(stream)?;
            assert_eq!(
                frame.header.frame_type,
                FrameType::Entries,
                "LIST answered with {}",
                describe(&frame)
            );
            assert!(
                frame.payload.len() <= LIST_PAGE_MAX,
                "an ENTRIES page of {} bytes",
                frame.payload.len()
            );
            pages += 1;
            for entry in Entries::new(&frame.payload) {
                let entry = entry.expect("ENTRIES parses");
                entries.push(Entry {
                    name: entry.name.to_string(),
                    kind: entry.kind,
                    size: entry.size,
                    mtime_ns: entry.mtime_ns,
                });
            }
            if frame.header.flags.contains(Flags::END_STREAM) {
                return Ok((entries, pages));
            }
        }
    }

    /// GET from `offset`, keeping the bytes.
    #[track_caller]
    pub fn get(&mut self, path: &str, offset: u64) -> Result<Got, Refusal> {
        self.get_raw(path.as_bytes(), offset, true)
    }

    /// GET of raw bytes from `offset`; the bytes are kept only if `keep` (the received hash
    /// and length always). Checks the stream's shape: FILE_INFO (no END_STREAM), DATA frames
    /// of at most [`DATA_CHUNK`] bytes, DIGEST with END_STREAM.
    #[track_caller]
    pub fn get_raw(&mut self, path: &[u8], offset: u64, keep: bool) -> Result<Got, Refusal> {
        let stream = self.new_stream();
        self.send(&get_frame(stream, path, offset));
        self.read_get(stream, keep)
    }

    /// Reads the answer to a GET sent on `stream`.
    #[track_caller]
    pub fn read_get(&mut self, stream: u32, keep: bool) -> Result<Got, Refusal> {
        let first = self.next_on(stream)?;
        expect_frame(&first, FrameType::FileInfo, false);
        let info = FileInfo::parse(&first.payload).expect("FILE_INFO parses");
        let mut got = Got {
            info,
            bytes: Vec::new(),
            len: 0,
            frames: 0,
            received_hash: [0; HASH_LEN],
            digest: [0; HASH_LEN],
        };
        let mut hasher = blake3::Hasher::new();
        loop {
            let frame = self.next_on(stream)?;
            match frame.header.frame_type {
                FrameType::Data => {
                    expect_frame(&frame, FrameType::Data, false);
                    assert!(
                        frame.payload.len() <= DATA_CHUNK,
                        "a DATA frame of {} bytes",
                        frame.payload.len()
                    );
                    hasher.update(&frame.payload);
                    got.len += frame.payload.len() as u64;
                    got.frames += 1;
                    if keep {
                        got.bytes.extend_from_slice(&frame.payload);
                    }
                }
                FrameType::Digest => {
                    expect_frame(&frame, FrameType::Digest, true);
                    assert_eq!(frame.payload.len(), HASH_LEN, "DIGEST length");
                    got.digest.copy_from_slice(&frame.payload);
                    got.received_hash = *hasher.finalize().as_bytes();
                    return Ok(got);
                }
                _ => panic!("GET answered with {}", describe(&frame)),
            }
        }
    }

    /// Sends PUT on `stream` and waits for PUT_READY (or the refusal).
    #[track_caller]
    pub fn begin_put(
        &mut self,
        stream: u32,
        path: &[u8],
        size: u64,
        flags: PutFlags,
        hash: Option<Hash>,
    ) -> Result<PutReady, Refusal> {
        self.send(&put_frame(stream, path, size, flags, hash));
        self.read_put_ready(stream)
    }

    /// Waits for PUT_READY on `stream`.
    #[track_caller]
    pub fn read_put_ready(&mut self, stream: u32) -> Result<PutReady, Refusal> {
        let frame = self.next_on(stream)?;
        expect_frame(&frame, FrameType::PutReady, false);
        Ok(PutReady::parse(&frame.payload).expect("PUT_READY parses"))
    }

    /// Sends `bytes` as DATA frames of at most [`DATA_CHUNK`] bytes.
    #[track_caller]
    pub fn send_data(&mut self, stream: u32, bytes: &[u8]) {
        self.send_data_in(stream, bytes, DATA_CHUNK);
    }

    /// Sends `bytes` as DATA frames of at most `chunk` bytes.
    #[track_caller]
    pub fn send_data_in(&mut self, stream: u32, bytes: &[u8], chunk: usize) {
        let mut wire = Vec::with_capacity(chunk.min(bytes.len()) + 12);
        for piece in bytes.chunks(chunk) {
            wire.clear();
            Frame::new(FrameType::Data, Flags::NONE, stream, piece).encode_into(&mut wire);
            self.send(&wire);
        }
    }

    /// Sends the trailer and waits for the server's DIGEST (the hash it computed) or ERROR.
    #[track_caller]
    pub fn finish_put(&mut self, stream: u32, trailer: &Hash) -> Result<Hash, Refusal> {
        self.send(&digest_frame(stream, trailer));
        self.read_put_end(stream)
    }

    /// Waits for the end of a PUT on `stream`: DIGEST with END_STREAM, or ERROR.
    #[track_caller]
    pub fn read_put_end(&mut self, stream: u32) -> Result<Hash, Refusal> {
        let frame = self.next_on(stream)?;
        expect_frame(&frame, FrameType::Digest, true);
        let mut hash = [0; HASH_LEN];
        assert_eq!(frame.payload.len(), HASH_LEN, "DIGEST length");
        hash.copy_from_slice(&frame.payload);
        Ok(hash)
    }

    /// A whole PUT: `declared` in the request (with `resume` if asked), PUT_READY, DATA from
    /// what the server holds, `trailer`, the server's answer. Returns PUT_READY and the hash
    /// the server computed.
    #[track_caller]
    pub fn put_full(
        &mut self,
        path: &[u8],
        data: &[u8],
        declared: Option<Hash>,
        resume: bool,
        trailer: &Hash,
    ) -> Result<(PutReady, Hash), Refusal> {
        let stream = self.new_stream();
        let flags = if resume {
            PutFlags::RESUME
        } else {
            PutFlags::NONE
        };
        let ready = self.begin_put(stream, path, data.len() as u64, flags, declared)?;
        assert!(
            ready.held <= data.len() as u64,
            "PUT_READY says {} bytes held of {}",
            ready.held,
            data.len()
        );
        assert_eq!(
            ready.upload_id == 0,
            declared.is_none(),
            "upload id {} with a declared hash: {}",
            ready.upload_id,
            declared.is_some()
        );
        self.send_data(stream, &data[ready.held as usize..]);
        let hash = self.finish_put(stream, trailer)?;
        Ok((ready, hash))
    }

    /// PUT of `data` with its hash declared (resumable), not resuming. Returns the server's
    /// hash.
    #[track_caller]
    pub fn put(&mut self, path: &str, data: &[u8]) -> Result<Hash, Refusal> {
        let hash = blake3_of(data);
        self.put_full(path.as_bytes(), data, Some(hash), false, &hash)
            .map(|(_, hash)| hash)
    }

    /// PUT of `data` without a declared hash (only the trailer). Returns the server's hash.
    #[track_caller]
    pub fn put_unhashed(&mut self, path: &str, data: &[u8]) -> Result<Hash, Refusal> {
        let hash = blake3_of(data);
        self.put_full(path.as_bytes(), data, None, false, &hash)
            .map(|(_, hash)| hash)
    }

    /// An ECHO round trip on a new stream.
    #[track_caller]
    pub fn echo(&mut self, payload: &[u8]) {
        let stream = self.new_stream();
        self.send(&super::echo_request(stream, payload));
        let frame = self.recv();
        assert_eq!(
            (frame.header.frame_type, frame.header.stream),
            (FrameType::EchoReply, stream),
            "expected ECHO_REPLY, got {}",
            describe(&frame)
        );
        assert_eq!(frame.payload, payload, "echo payload");
    }
}

/// The code and text of an ERROR frame (which must have END_STREAM), or `None`.
#[track_caller]
pub fn refusal(frame: &OwnedFrame) -> Option<Refusal> {
    if frame.header.frame_type != FrameType::Error {
        return None;
    }
    assert!(
        frame.header.flags.contains(Flags::END_STREAM),
        "ERROR without END_STREAM: {}",
        describe(frame)
    );
    let message = ErrorMessage::parse(&frame.payload).expect("ERROR payload parses");
    Some((message.code, message.text.to_string()))
}

/// Checks a frame's type and whether it ends its stream.
#[track_caller]
pub fn expect_frame(frame: &OwnedFrame, frame_type: FrameType, end_stream: bool) {
    assert_eq!(
        frame.header.frame_type,
        frame_type,
        "expected {frame_type}, got {}",
        describe(frame)
    );
    assert_eq!(
        frame.header.flags.contains(Flags::END_STREAM),
        end_stream,
        "{frame_type} with END_STREAM {}",
        if end_stream { "clear" } else { "set" }
    );
}

/// Fails the test unless `result` is a refusal with `code`; returns the text.
#[track_caller]
pub fn expect_refused<T: std::fmt::Debug>(
    result: Result<T, Refusal>,
    code: ErrorCode,
    what: &str,
) -> String {
    match result {
        Err((got, text)) => {
            assert_eq!(got, code, "{what}: wrong error code (text: {text:?})");
            text
        }
        Ok(value) => panic!("{what}: expected {code}, got success: {value:?}"),
    }
}

/// Unwraps a result, failing the test with the refusal's code and text.
#[track_caller]
pub fn ok<T>(result: Result<T, Refusal>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err((code, text)) => panic!("{what}: refused with {code}: {text}"),
    }
}

/// Retries `attempt` while it is refused with UPLOAD_BUSY because the same upload is still
/// held elsewhere (a server learns of a dropped connection asynchronously), up to `timeout`.
#[track_caller]
pub fn retry_busy_upload<T>(
    timeout: Duration,
    mut attempt: impl FnMut() -> Result<T, Refusal>,
) -> Result<T, Refusal> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match attempt() {
            Err((ErrorCode::UploadBusy, _)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The server's own entries in `dir` once the disk helper has had up to 10 s to free what was
/// set aside for it (a deleted or discarded file renamed `.monoreactor-trash-*`, a replaced
/// one swapped to `.monoreactor-tmp-*`): what stays is a real leftover.
pub fn leftovers_after_the_disk(dir: &Path) -> Vec<(String, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = reserved_entries(dir);
        let trash_only = left.iter().all(|(name, _)| {
            name.starts_with(".monoreactor-trash-") || name.starts_with(".monoreactor-tmp-")
        });
        if left.is_empty() || !trash_only || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Holds the partial of the resumable upload (`path`, `data`) locked as another server
/// process receiving it would (an exclusive open-file-description lock) until dropped; with
/// `held`, the partial first holds that prefix of `data`.
pub fn hold_upload_elsewhere(root: &Path, path: &str, data: &[u8], held: usize) -> fs::File {
    use std::os::fd::AsRawFd;
    let id = monoreactor::internal::upload_id(path, data.len() as u64, &blake3_of(data));
    let (dir, _) = path.rsplit_once('/').unwrap_or(("", path));
    let partial = root
        .join(dir)
        .join(format!(".monoreactor-partial-{id:016x}"));
    fs::write(&partial, &data[..held]).expect("write the partial");
    let file = fs::File::options()
        .read(true)
        .write(true)
        .open(&partial)
        .expect("open the partial");
    // SAFETY: all-zero is a valid `flock` (the whole file); fcntl gets a pointer to it that
    // outlives the call, on a descriptor we own.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = libc::F_WRLCK as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &request) };
    assert_eq!(rc, 0, "lock: {}", std::io::Error::last_os_error());
    file
}

// === The command line ===

/// What a finished `monoreactor` command printed (stdout as bytes) and how it exited.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status.
    pub status: std::process::ExitStatus,
    /// Everything on stdout, as bytes.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: String,
}

impl CliOutput {
    /// The exit code (a signal death fails the test).
    #[track_caller]
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }

    /// Stdout as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// How long one CLI command in these tests may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `monoreactor ARGS` in `cwd` with `stdin` as its standard input (or `/dev/null`), to
/// completion within [`CLI_TIMEOUT`] (killed and the test failed otherwise).
/// `MONOREACTOR_TOKEN` is removed from its environment.
#[track_caller]
pub fn cli(args: &[&str], cwd: &Path, stdin: Option<Vec<u8>>) -> CliOutput {
    use std::io::Write;
    use std::process::Stdio;
    let mut command = Command::new(env!("CARGO_BIN_EXE_monoreactor"));
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("MONOREACTOR_TOKEN")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot spawn monoreactor {args:?}: {error}"));
    let feeder = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        std::thread::spawn(move || {
            // The command may exit without reading everything (a refusal).
            let _ = pipe.write_all(&bytes);
        })
    });
    let mut stdout_pipe = child.stdout.take().expect("piped stdout");
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let stdout = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout_pipe.read_to_end(&mut bytes);
        bytes
    });
    let stderr = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let Some(status) = super::wait_child(&mut child, CLI_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("monoreactor {args:?} did not exit within {CLI_TIMEOUT:?}");
    };
    if let Some(feeder) = feeder {
        let _ = feeder.join();
    }
    CliOutput {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// A client's working directory beside a server, and that server's address: each command runs
/// there as `monoreactor COMMAND --addr ADDR ARGS...`.
pub struct ClientDir {
    /// The server's framed address.
    pub addr: String,
    /// The client's working directory.
    pub work: Scratch,
}

impl ClientDir {
    /// A fresh working directory (named after `name`) for commands to `server`.
    pub fn new(server: &Server, name: &str) -> ClientDir {
        ClientDir {
            addr: server.framed_str(),
            work: Scratch::new(name),
        }
    }

    /// `monoreactor COMMAND --addr ADDR ARGS...` in the working directory.
    #[track_caller]
    pub fn run(&self, command: &str, args: &[&str]) -> CliOutput {
        let mut all = vec![command, "--addr", &self.addr];
        all.extend_from_slice(args);
        cli(&all, self.work.path(), None)
    }

    /// Like [`ClientDir::run`], failing the test unless the command exits with `code`.
    #[track_caller]
    pub fn exits_with(&self, code: i32, command: &str, args: &[&str]) -> CliOutput {
        let output = self.run(command, args);
        assert_eq!(
            output.code(),
            code,
            "monoreactor {command} {args:?}: stdout {:?} stderr {}",
            output.text(),
            output.stderr
        );
        output
    }

    /// Like [`ClientDir::run`], failing the test unless the command exits with `code`; its
    /// stderr.
    #[track_caller]
    pub fn exits(&self, code: i32, command: &str, args: &[&str]) -> String {
        self.exits_with(code, command, args).stderr
    }

    /// Like [`ClientDir::run`], failing the test unless the command succeeds; its stdout.
    #[track_caller]
    pub fn ok(&self, command: &str, args: &[&str]) -> String {
        self.exits_with(0, command, args).text()
    }

    /// A path in the working directory.
    pub fn local(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }
}

/// The names of a listing's lines (the last word of each), and its other lines (section
/// headers) as they are.
pub fn listed_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(|line| match line.split(' ').next() {
            Some("-" | "d" | "l" | "u" | "?") => {
                line.rsplit(' ').next().unwrap_or_default().to_string()
            }
            _ => line.to_string(),
        })
        .collect()
}
