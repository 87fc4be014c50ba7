//! Keeps `docs/PROTOCOL.md` true.
//!
//! - Every hex dump in the document is rebuilt here: the frames a client sends with the crate's
//!   encoders, the frames the server sends captured from the server itself — its connection
//!   state machine driven through the public testkit ([`ConnHarness`] with [`MemoryIo`] and
//!   scripted child processes), or a real server on loopback — and the exact dump text must
//!   appear in the document.
//! - The file-service dumps are parsed back with the payload types of
//!   `monoreactor::proto::files` and re-emitted byte for byte, and a real server on loopback
//!   must send the same frames (but for mtimes and the upload id, which are its own).
//! - The tables marked `<!-- table: NAME -->` (frame types, what the server does with each
//!   frame, error codes and the streams they travel on, field layouts, flags, signals, exit
//!   reasons, file kinds, example error texts, constants) are parsed and compared with the
//!   code, in both directions: a row the code does not back fails, and so does a value the
//!   table leaves out. The table of errors each file request can get is checked one way: every
//!   refusal a real server sends in the cases run here is listed.
//! - Every `](#anchor)` link in the document leads to a heading.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use monoreactor::children::{ChildSource, OutputPipe, SpawnError};
use monoreactor::internal::EXEC_ENV;
use monoreactor::internal::PARTIAL_TTL_NS;
use monoreactor::internal::RACY_WINDOW_NS;
use monoreactor::internal::file_error;
use monoreactor::internal::{MAX_DATAGRAM, REFUSED_SOURCE_PORTS};
use monoreactor::proto::exec::{
    EndReason, ExecFlags, ExecRequest, Exit, MAX_ARGS, MAX_CWD_LEN, MAX_TERM_DIM, MAX_TERM_LEN,
    PtyRequest, Resize, Signal, SignalRequest, Started, Termination, Window, exec_field,
    exit_field, started_field,
};
use monoreactor::proto::files::{DATA_FRAME_LEN, LIST_PAGE_LEN};
use monoreactor::proto::files::{
    Digest, DirEntry, Entries, FileInfo, FileKind, GetRequest, HASH_LEN, Hash, MAX_NAME_LEN,
    MAX_PATH_LEN, PutAttrs, PutFlags, PutReady, PutRequest, SetAttrsRequest, entry_field,
    get_field, info_field, parse_path, put_field, ready_field, set_attrs_field,
};
use monoreactor::proto::header::field;
use monoreactor::proto::message::{
    EXEC_VERSION, MAX_CREDENTIALS_LEN, MAX_ERROR_TEXT_LEN, MIN_PROTOCOL_VERSION, error_field,
    hello_field, hello_ok_field,
};
use monoreactor::proto::path::RESERVED_PREFIX;
use monoreactor::proto::{
    DecodeError, Decoder, ErrorCode, ErrorMessage, Flags, Frame, FrameType, HEADER_LEN, Header,
    Hello, HelloOk, MAGIC, PROTOCOL_VERSION, SessionFlags, ends_connection,
};
use monoreactor::testkit::{ConnHarness, MemoryIo, ScriptedChild};
use monoreactor::{Access, Peer, Token};
use monoreactor::{Config, DEFAULT_ECHO_ADDR, DEFAULT_FRAMED_ADDR, DEFAULT_ROOT, Server};
use monoreactor::{Limits, MAX_FRAME_LEN, MAX_STREAMS_PER_CONNECTION, MIN_FRAME_LEN};
use monoreactor::{State, Verdict};
use rustix::io::Errno;

const DOC: &str = include_str!("../docs/PROTOCOL.md");

/// The token of the document's examples: 16 bytes, the shortest a server accepts.
const TOKEN: &[u8] = b"example-token-16";

/// Bounds every blocking socket call in the loopback tests.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

// === The document ===

/// Lowercase hex bytes separated by single spaces, 16 per line: the dump format of the document.
fn hex_dump(bytes: &[u8]) -> String {
    bytes
        .chunks(16)
        .map(|line| {
            line.iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asserts that the document holds `bytes` as the dump called `name`, byte for byte.
#[track_caller]
fn assert_dump(name: &str, bytes: &[u8]) {
    let block = format!("<!-- dump: {name} -->\n```text\n{}\n```\n", hex_dump(bytes));
    assert!(
        DOC.contains(&block),
        "docs/PROTOCOL.md does not hold dump `{name}` as the code encodes it; expected:\n{block}"
    );
}

/// The bytes of the dump called `name`, as the document has them.
fn dump_bytes(name: &str) -> Vec<u8> {
    let marker = format!("<!-- dump: {name} -->\n```text\n");
    let start = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no dump `{name}`"))
        + marker.len();
    let hex = &DOC[start..start + DOC[start..].find("\n```").expect("a closed block")];
    hex.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex bytes"))
        .collect()
}

/// The body rows of the table after `<!-- table: NAME -->`, as cells with surrounding
/// whitespace and backticks removed.
fn table(name: &str) -> Vec<Vec<String>> {
    let marker = format!("<!-- table: {name} -->\n");
    let start = DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/PROTOCOL.md has no `{}`", marker.trim()))
        + marker.len();
    let rows: Vec<Vec<String>> = DOC[start..]
        .lines()
        .take_while(|line| line.starts_with('|'))
        .skip(2) // the header row and the `|---|` row
        .map(|line| {
            line.trim()
                .trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect();
    assert!(!rows.is_empty(), "table `{name}` has no rows");
    rows
}

// === Frames on the wire ===

/// The frames in `wire`, which must be whole frames only.
fn frames(wire: &[u8]) -> Vec<Frame<'_>> {
    let mut frames = Decoder::new(u32::MAX).frames(wire);
    let all: Vec<Frame<'_>> = frames.by_ref().map(|frame| frame.unwrap()).collect();
    assert_eq!(frames.consumed(), wire.len(), "whole frames only");
    all
}

/// Every ERROR frame in `wire`: (stream, code, text).
fn errors_in(wire: &[u8]) -> Vec<(u32, ErrorCode, String)> {
    frames(wire)
        .into_iter()
        .filter(|frame| frame.header.frame_type == FrameType::Error)
        .map(|frame| {
            assert_eq!(
                frame.header.flags,
                Flags::END_STREAM,
                "ERROR ends its stream"
            );
            let error = ErrorMessage::parse(frame.payload).expect("an ERROR payload");
            (frame.header.stream, error.code, error.text.to_string())
        })
        .collect()
}

/// The single ERROR frame in `wire`: (stream, code, text).
#[track_caller]
fn error_in(wire: &[u8]) -> (u32, ErrorCode, String) {
    assert_eq!(frames(wire).len(), 1, "exactly one frame");
    errors_in(wire).pop().expect("an ERROR frame")
}

/// Re-encodes an ERROR frame with the public encoder.
fn error_frame(stream: u32, code: ErrorCode, text: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    ErrorMessage::new(code, text).encode(stream, &mut wire);
    wire
}

// === The server: its connection state machine, through the testkit ===

/// A fresh directory under the system's temporary one, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "monoreactor-protocol-doc-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server's side of one framed connection, with the default limits: the harness drives
/// the connection exactly as the reactor does; what it writes is read back frame by frame.
struct ServerSide {
    harness: ConnHarness,
    io: MemoryIo,
    /// The root its files are served from (files are on by default).
    _root: Scratch,
}

impl ServerSide {
    /// What `monoreactor serve` runs with by default: no token, no commands, files served.
    fn default_server() -> ServerSide {
        let root = Scratch::new();
        ServerSide {
            harness: ConnHarness::framed(Limits::default()).with_files(&root.0),
            io: MemoryIo::new(),
            _root: root,
        }
    }

    /// A server started with `--exec` and [`TOKEN`]; its commands are scripted.
    fn exec_server() -> ServerSide {
        let root = Scratch::new();
        ServerSide {
            harness: ConnHarness::framed(Limits::default())
                .with_exec(TOKEN)
                .with_files(&root.0),
            io: MemoryIo::new(),
            _root: root,
        }
    }

    /// A server started with `--no-files`.
    fn no_files_server() -> ServerSide {
        ServerSide {
            harness: ConnHarness::framed(Limits::default()),
            io: MemoryIo::new(),
            _root: Scratch::new(),
        }
    }

    /// `server` after it accepted `hello`, whose answer must be `hello_ok`.
    #[track_caller]
    fn after(mut server: ServerSide, hello: &[u8], hello_ok: &[u8]) -> ServerSide {
        assert_eq!(server.send(hello), hello_ok);
        server
    }

    /// The client sends `bytes` (one readiness event); returns what the server writes.
    fn send(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.io.push(bytes);
        let verdict = self.harness.event(&mut self.io, true, true);
        self.settle(verdict)
    }

    /// The poll reports a descriptor of command `n` (0-based, in spawn order).
    fn child_event(&mut self, n: usize, source: ChildSource) -> Vec<u8> {
        let index = self.child(n).index;
        let verdict = self.harness.child_event(&mut self.io, index, source);
        self.settle(verdict)
    }

    /// Command `n` closes both output pipes and ends as `termination`; the poll reports its
    /// exit and both pipes.
    fn finish(&mut self, n: usize, termination: Termination) -> Vec<u8> {
        self.child(n)
            .close(OutputPipe::Stdout)
            .close(OutputPipe::Stderr)
            .exit(termination);
        let mut sent = self.child_event(n, ChildSource::Exit);
        sent.extend(self.child_event(n, ChildSource::Stdout));
        sent.extend(self.child_event(n, ChildSource::Stderr));
        sent
    }

    /// Time moves to the connection's next deadline; returns what the server writes.
    fn expire(&mut self) -> Vec<u8> {
        let verdict = self.harness.expire(&mut self.io);
        self.settle(verdict)
    }

    /// The server starts shutting down; returns what it writes.
    fn shutdown(&mut self) -> Vec<u8> {
        let grace = self.harness.limits.shutdown_grace;
        let verdict = self.harness.shutdown(&mut self.io, grace);
        self.settle(verdict)
    }

    fn settle(&mut self, verdict: Verdict) -> Vec<u8> {
        if verdict == Verdict::Again {
            self.harness.settle(&mut self.io);
        }
        self.written()
    }

    /// Everything written since the last call, re-encoded from the frames read back (the
    /// header round-trips exactly: every byte of it is a field, the reserved ones zero).
    fn written(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        for frame in self.io.take_frames() {
            wire.extend_from_slice(&frame.header.to_bytes());
            wire.extend_from_slice(&frame.payload);
        }
        wire
    }

    fn child(&mut self, n: usize) -> &mut ScriptedChild {
        self.harness.children().nth(n)
    }

    fn spawned(&mut self) -> usize {
        self.harness.children.as_ref().map_or(0, |c| c.all().len())
    }

    fn state(&self) -> State {
        self.harness.conn.state()
    }
}

// === The frames of section 8 ===

fn hello() -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::current().encode(&mut wire);
    wire
}

fn hello_token() -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::with_credentials(TOKEN).encode(&mut wire);
    wire
}

fn hello_versions(min: u16, max: u16, credentials: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    Hello {
        min_version: min,
        max_version: max,
        credentials,
    }
    .encode(&mut wire);
    wire
}

fn hello_v1() -> Vec<u8> {
    hello_versions(1, 1, b"")
}

/// A version 1 HELLO with the token: version 1 connections authenticate too.
fn hello_v1_token() -> Vec<u8> {
    hello_versions(1, 1, TOKEN)
}

fn hello_ok_with(version: u16, max_payload_len: u32, flags: SessionFlags) -> Vec<u8> {
    let mut wire = Vec::new();
    HelloOk {
        version,
        max_payload_len,
        flags,
    }
    .encode(&mut wire);
    wire
}

/// What a default server answers a version 2 HELLO: every connection authenticates, and the
/// file service is always on.
fn hello_ok() -> Vec<u8> {
    hello_ok_with(
        PROTOCOL_VERSION,
        Limits::default().max_frame_len,
        SessionFlags::AUTHENTICATED.with(SessionFlags::FILES),
    )
}

/// What a default server answers a version 1 HELLO.
fn hello_ok_v1() -> Vec<u8> {
    hello_ok_with(1, Limits::default().max_frame_len, SessionFlags::NONE)
}

/// What an exec server answers a HELLO with its token.
fn hello_ok_exec() -> Vec<u8> {
    hello_ok_with(
        PROTOCOL_VERSION,
        Limits::default().max_frame_len,
        SessionFlags::AUTHENTICATED
            .with(SessionFlags::EXEC)
            .with(SessionFlags::FILES),
    )
}

/// What an exec server answers a HELLO without credentials.
fn hello_ok_unauthenticated() -> Vec<u8> {
    hello_ok_with(
        PROTOCOL_VERSION,
        Limits::default().pre_auth_max_frame,
        SessionFlags::NONE,
    )
}

fn echo_request() -> Vec<u8> {
    Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 1, b"hello").to_vec()
}

fn echo_reply() -> Vec<u8> {
    Frame::new(FrameType::EchoReply, Flags::END_STREAM, 1, b"hello").to_vec()
}

fn oversize_header() -> [u8; HEADER_LEN] {
    Header {
        frame_type: FrameType::EchoRequest,
        flags: Flags::END_STREAM,
        stream: 1,
        len: u32::MAX,
    }
    .to_bytes()
}

fn frame_too_large() -> Vec<u8> {
    let error = DecodeError::TooLarge {
        len: u32::MAX,
        max: Limits::default().max_frame_len,
    };
    error_frame(0, ErrorCode::FrameTooLarge, &error.to_string())
}

/// A type this version does not assign (0x3f: reserved for the file service's answers).
const UNKNOWN_TYPE: u8 = 0x3f;

fn unknown_type_request() -> Vec<u8> {
    Frame::new(
        FrameType::Unknown(UNKNOWN_TYPE),
        Flags::END_STREAM,
        2,
        b"xyz",
    )
    .to_vec()
}

fn exec_on(stream: u32, request: &ExecRequest<'_>) -> Vec<u8> {
    let mut wire = Vec::new();
    request.encode(stream, &mut wire);
    wire
}

/// The worked example's command: `sh -c 'cat; echo bye >&2; exit 3'` with stdin, stream 1.
fn exec_request() -> Vec<u8> {
    exec_on(
        1,
        &ExecRequest {
            flags: ExecFlags::STDIN,
            ..ExecRequest::new(vec![b"sh", b"-c", b"cat; echo bye >&2; exit 3"])
        },
    )
}

fn stdin() -> Vec<u8> {
    Frame::new(FrameType::Stdin, Flags::NONE, 1, b"hi\n").to_vec()
}

fn stdin_eof() -> Vec<u8> {
    Frame::new(FrameType::StdinEof, Flags::NONE, 1, b"").to_vec()
}

/// `sleep 99` on stream 3, stdin from `/dev/null`.
fn exec_sleep() -> Vec<u8> {
    exec_on(3, &ExecRequest::new(vec![b"sleep", b"99"]))
}

fn signal_on(stream: u32, signal: Signal) -> Vec<u8> {
    let mut payload = [0; SignalRequest::PAYLOAD_LEN];
    SignalRequest { signal }.emit(&mut payload);
    Frame::new(FrameType::Signal, Flags::NONE, stream, &payload).to_vec()
}

fn started(stream: u32, pid: u32, stdin_window: u32) -> Vec<u8> {
    let mut payload = [0; Started::PAYLOAD_LEN];
    Started { pid, stdin_window }.emit(&mut payload);
    Frame::new(FrameType::Started, Flags::NONE, stream, &payload).to_vec()
}

fn output(frame_type: FrameType, stream: u32, bytes: &[u8]) -> Vec<u8> {
    Frame::new(frame_type, Flags::NONE, stream, bytes).to_vec()
}

fn window(stream: u32, increment: u32) -> Vec<u8> {
    let mut payload = [0; Window::PAYLOAD_LEN];
    Window { increment }.emit(&mut payload);
    Frame::new(FrameType::Window, Flags::NONE, stream, &payload).to_vec()
}

fn exit(stream: u32, termination: Termination, reason: EndReason) -> Vec<u8> {
    let mut payload = [0; Exit::PAYLOAD_LEN];
    Exit {
        termination,
        reason,
    }
    .emit(&mut payload);
    Frame::new(FrameType::Exit, Flags::END_STREAM, stream, &payload).to_vec()
}

const TERM: Termination = Termination::Signaled {
    signal: 15,
    core_dumped: false,
};

// === The file frames of section 8 ===

/// The file of the worked file session (section 10.5): 13 bytes.
const HELLO_TXT: &[u8] = b"hello, world\n";

/// The mtime the document's examples show: 2025-01-01T00:00:00Z, in nanoseconds. A real
/// server's are the clock's, and are put in its place, as pids are.
const MTIME_NS: i64 = 1_735_689_600_000_000_000;

/// The upload id the document's examples show. A real server derives its own from (path,
/// size, hash); it is put in its place.
const UPLOAD_ID: u64 = 0x8a3f_12c4_5e6b_d907;

/// The size the document's ENTRIES example gives a directory (ext4's); a real server reports
/// its file system's.
const DIR_SIZE: u64 = 4096;

fn blake3(bytes: &[u8]) -> Hash {
    *::blake3::hash(bytes).as_bytes()
}

fn get_on(stream: u32, request: &GetRequest<'_>) -> Vec<u8> {
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    Frame::new(FrameType::Get, Flags::NONE, stream, &payload).to_vec()
}

fn put_on(stream: u32, request: &PutRequest<'_>) -> Vec<u8> {
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    Frame::new(FrameType::Put, Flags::NONE, stream, &payload).to_vec()
}

/// LIST, STAT, DELETE or MKDIR: the path is the whole payload.
/// SET_ATTRS of `path` on `stream`: mode 0o750, the example mtime.
fn set_attrs_on(stream: u32, path: &str) -> Vec<u8> {
    let request = SetAttrsRequest {
        attrs: PutAttrs {
            mode: 0o750,
            mtime_ns: MTIME_NS,
        },
        path,
    };
    Frame::new(
        FrameType::SetAttrs,
        Flags::NONE,
        stream,
        &request.to_payload(),
    )
    .to_vec()
}

fn path_request(frame_type: FrameType, stream: u32, path: &str) -> Vec<u8> {
    Frame::new(frame_type, Flags::NONE, stream, path.as_bytes()).to_vec()
}

fn file_info(stream: u32, info: &FileInfo, flags: Flags) -> Vec<u8> {
    let mut payload = [0; FileInfo::PAYLOAD_LEN];
    info.emit(&mut payload);
    Frame::new(FrameType::FileInfo, flags, stream, &payload).to_vec()
}

fn data(stream: u32, bytes: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::Data, Flags::NONE, stream, bytes).to_vec()
}

/// A DIGEST: `END_STREAM` from the server (the transfer's last frame), clear from a client.
fn digest(stream: u32, hash: Hash, flags: Flags) -> Vec<u8> {
    Frame::new(FrameType::Digest, flags, stream, &hash).to_vec()
}

fn put_ready(stream: u32, ready: PutReady) -> Vec<u8> {
    let mut payload = [0; PutReady::PAYLOAD_LEN];
    ready.emit(&mut payload);
    Frame::new(FrameType::PutReady, Flags::NONE, stream, &payload).to_vec()
}

fn entries(stream: u32, page: &[DirEntry<'_>], flags: Flags) -> Vec<u8> {
    let mut payload = Vec::new();
    for entry in page {
        let at = payload.len();
        payload.resize(at + entry.wire_len(), 0);
        entry.emit(&mut payload[at..]);
    }
    Frame::new(FrameType::Entries, flags, stream, &payload).to_vec()
}

fn done(stream: u32) -> Vec<u8> {
    Frame::new(FrameType::Done, Flags::END_STREAM, stream, b"").to_vec()
}

/// The worked file session, section 10.5: the client's frames and the server's, by step.
struct FileSession;

impl FileSession {
    fn mkdir() -> Vec<u8> {
        path_request(FrameType::Mkdir, 1, "docs")
    }

    fn put_request() -> PutRequest<'static> {
        PutRequest {
            size: HELLO_TXT.len() as u64,
            flags: PutFlags::HASH_DECLARED,
            hash: Some(blake3(HELLO_TXT)),
            attrs: None,
            path: "hello.txt",
        }
    }

    fn put() -> Vec<u8> {
        put_on(3, &FileSession::put_request())
    }

    /// The upload, pipelined behind the PUT: no `RESUME`, so it starts at 0.
    fn upload() -> Vec<u8> {
        [
            data(3, HELLO_TXT),
            digest(3, blake3(HELLO_TXT), Flags::NONE),
        ]
        .concat()
    }

    fn put_ready() -> Vec<u8> {
        put_ready(
            3,
            PutReady {
                upload_id: UPLOAD_ID,
                held: 0,
            },
        )
    }

    fn stored() -> Vec<u8> {
        digest(3, blake3(HELLO_TXT), Flags::END_STREAM)
    }

    fn list() -> Vec<u8> {
        path_request(FrameType::List, 5, "")
    }

    fn entries() -> Vec<DirEntry<'static>> {
        vec![
            DirEntry {
                name: "docs",
                kind: FileKind::Directory,
                size: DIR_SIZE,
                mtime_ns: MTIME_NS,
            },
            DirEntry {
                name: "hello.txt",
                kind: FileKind::File,
                size: HELLO_TXT.len() as u64,
                mtime_ns: MTIME_NS,
            },
        ]
    }

    fn page() -> Vec<u8> {
        entries(5, &FileSession::entries(), Flags::END_STREAM)
    }

    fn get_request() -> GetRequest<'static> {
        GetRequest {
            offset: 0,
            path: "hello.txt",
        }
    }

    fn get() -> Vec<u8> {
        get_on(7, &FileSession::get_request())
    }

    /// The server stored the file a moment ago: too soon after its last write for the hash it
    /// stored to be trusted, so the hash is not known yet.
    fn info() -> FileInfo {
        FileInfo {
            size: HELLO_TXT.len() as u64,
            mtime_ns: MTIME_NS,
            kind: FileKind::File,
            hash: None,
        }
    }

    fn file_info() -> Vec<u8> {
        file_info(7, &FileSession::info(), Flags::NONE)
    }

    fn data() -> Vec<u8> {
        data(7, HELLO_TXT)
    }

    fn digest() -> Vec<u8> {
        digest(7, blake3(HELLO_TXT), Flags::END_STREAM)
    }
}

// === Connection dumps ===

#[test]
fn hello_dumps_match_the_encoder() {
    let by_hand = Frame::new(
        FrameType::Hello,
        Flags::END_STREAM,
        0,
        b"MNRX\x00\x01\x00\x02\x00\x00",
    );
    assert_eq!(hello(), by_hand.to_vec());
    assert_dump("hello", &hello());

    let mut payload = b"MNRX\x00\x01\x00\x02\x00\x10".to_vec();
    payload.extend_from_slice(TOKEN);
    assert_eq!(TOKEN.len(), Token::MIN_LEN);
    let by_hand = Frame::new(FrameType::Hello, Flags::END_STREAM, 0, &payload);
    assert_eq!(hello_token(), by_hand.to_vec());
    assert_dump("hello-token", &hello_token());

    assert_dump("hello-v1", &hello_v1());
}

#[test]
fn hello_ok_dumps_are_what_the_server_sends() {
    let default = Limits::default();
    let cases = [
        // (server, HELLO, dump, version, max payload, flags, payload length)
        (
            ServerSide::default_server(),
            hello(),
            "hello-ok",
            2,
            default.max_frame_len,
            SessionFlags::AUTHENTICATED.with(SessionFlags::FILES),
            HelloOk::V2_PAYLOAD_LEN,
        ),
        (
            ServerSide::default_server(),
            hello_v1(),
            "hello-ok-v1",
            1,
            default.max_frame_len,
            SessionFlags::NONE,
            HelloOk::V1_PAYLOAD_LEN,
        ),
        (
            ServerSide::exec_server(),
            hello_token(),
            "hello-ok-exec",
            2,
            default.max_frame_len,
            SessionFlags::AUTHENTICATED
                .with(SessionFlags::EXEC)
                .with(SessionFlags::FILES),
            HelloOk::V2_PAYLOAD_LEN,
        ),
        (
            ServerSide::exec_server(),
            hello(),
            "hello-ok-unauthenticated",
            2,
            default.pre_auth_max_frame,
            SessionFlags::NONE,
            HelloOk::V2_PAYLOAD_LEN,
        ),
    ];
    for (mut server, hello, dump, version, max_payload_len, flags, len) in cases {
        let sent = server.send(&hello);
        let frame = frames(&sent)[0];
        assert_eq!(frame.wire_len(), sent.len(), "{dump}: one frame");
        assert_eq!(frame.header.flags, Flags::END_STREAM);
        assert_eq!(frame.payload.len(), len, "{dump}: payload length");
        assert_eq!(
            HelloOk::parse(frame.payload),
            Ok(HelloOk {
                version,
                max_payload_len,
                flags
            }),
            "{dump}"
        );
        assert_eq!(server.state(), State::Open);
        assert_dump(dump, &sent);
    }
    assert_eq!(
        ServerSide::default_server().send(&hello()),
        hello_ok(),
        "the encoder agrees"
    );
    assert_eq!(
        ServerSide::default_server().send(&hello_v1()),
        hello_ok_v1()
    );
    assert_eq!(
        ServerSide::exec_server().send(&hello_token()),
        hello_ok_exec()
    );
    assert_eq!(
        ServerSide::exec_server().send(&hello()),
        hello_ok_unauthenticated()
    );
}

#[test]
fn echo_dumps_are_a_request_and_the_servers_reply() {
    let mut server = ServerSide::after(ServerSide::default_server(), &hello(), &hello_ok());
    let sent = server.send(&echo_request());
    assert_eq!(sent, echo_reply());
    assert_dump("echo-request", &echo_request());
    assert_dump("echo-reply", &sent);
}

#[test]
fn frame_too_large_dump_is_what_the_server_sends_for_a_4_gib_header() {
    let mut server = ServerSide::after(ServerSide::default_server(), &hello(), &hello_ok());
    // The header alone, no payload: the server must answer without waiting for one.
    let sent = server.send(&oversize_header());
    assert_eq!(sent, frame_too_large());
    assert_eq!(
        error_in(&sent),
        (
            0,
            ErrorCode::FrameTooLarge,
            "frame declares 4294967295 payload bytes, limit is 1048576".to_string()
        )
    );
    assert_eq!(server.state(), State::Closing);
    assert!(server.io.write_shut, "FIN follows the fatal error");
    assert_dump("oversize-header", &oversize_header());
    assert_dump("error-frame-too-large", &sent);
}

#[test]
fn unknown_frame_type_dump_is_what_the_server_sends_and_the_connection_stays_open() {
    let mut server = ServerSide::after(ServerSide::default_server(), &hello(), &hello_ok());
    let sent = server.send(&unknown_type_request());
    let (stream, code, text) = error_in(&sent);
    assert_eq!((stream, code), (2, ErrorCode::UnknownFrameType));
    assert!(!ends_connection(stream));
    assert_eq!(sent, error_frame(2, code, &text));
    assert_eq!(server.state(), State::Open);
    assert_eq!(
        server.send(&echo_request()),
        echo_reply(),
        "the next frame is handled normally"
    );
    assert_dump("unknown-type-request", &unknown_type_request());
    assert_dump("error-unknown-frame-type", &sent);
}

#[test]
fn auth_failed_dump_is_what_a_wrong_token_gets_and_nothing_runs() {
    let mut server = ServerSide::exec_server();
    let wrong = hello_versions(1, 2, b"example-token-17");
    let sent = server.send(&[wrong, exec_request()].concat());
    let (stream, code, _) = error_in(&sent);
    assert_eq!(
        (stream, code),
        (0, ErrorCode::AuthFailed),
        "the EXEC is discarded"
    );
    assert_eq!(server.state(), State::Closing);
    assert!(server.io.write_shut);
    assert_eq!(server.spawned(), 0);
    assert_dump("error-auth-failed", &sent);
}

#[test]
fn unauthenticated_dump_is_an_exec_without_the_token_and_echo_still_works() {
    let mut server = ServerSide::after(
        ServerSide::exec_server(),
        &hello(),
        &hello_ok_unauthenticated(),
    );
    let sent = server.send(&exec_request());
    let (stream, code, _) = error_in(&sent);
    assert_eq!((stream, code), (1, ErrorCode::Unauthenticated));
    assert_eq!(server.spawned(), 0);
    assert_eq!(server.state(), State::Open);
    assert_eq!(server.send(&echo_request()), echo_reply());
    assert_dump("error-unauthenticated", &sent);

    // The pre-authentication limit holds after such a HELLO: 4097 bytes are refused from the
    // header, before a byte of the payload.
    let mut header = echo_request();
    header.truncate(HEADER_LEN);
    header[field::LENGTH].copy_from_slice(&4097u32.to_be_bytes());
    let (stream, code, text) = error_in(&server.send(&header));
    assert_eq!((stream, code), (0, ErrorCode::FrameTooLarge));
    assert_eq!(text, "frame declares 4097 payload bytes, limit is 4096");
}

// === Exec dumps ===

/// Section 10.3, frame by frame, through the connection state machine with scripted
/// commands: every exec dump the document shows.
#[test]
fn worked_exec_session_gives_the_documented_bytes() {
    let mut server = ServerSide::exec_server();
    let pipelined = [hello_token(), exec_request(), stdin(), stdin_eof()].concat();
    assert_eq!(pipelined.len(), 38 + 63 + 15 + 12);
    let sent = server.send(&pipelined);
    let started_1 = started(1, 1000, Limits::default().stdin_window);
    assert_eq!(sent, [hello_ok_exec(), started_1.clone()].concat());
    let child = server.child(0);
    assert_eq!(
        child.argv,
        [&b"sh"[..], b"-c", b"cat; echo bye >&2; exit 3"].map(<[u8]>::to_vec)
    );
    assert_eq!(child.cwd, "", "the root");
    assert!(child.has_stdin, "the STDIN flag gives a pipe");

    // The command's stdin becomes writable: "hi\n" goes in, then EOF (STDIN_EOF).
    assert!(server.child_event(0, ChildSource::Stdin).is_empty());
    assert_eq!(server.child(0).stdin, b"hi\n");
    assert!(server.child(0).stdin_closed);

    server.child(0).write(OutputPipe::Stdout, b"hi\n");
    let stdout = server.child_event(0, ChildSource::Stdout);
    assert_eq!(stdout, output(FrameType::Stdout, 1, b"hi\n"));
    server.child(0).write(OutputPipe::Stderr, b"bye\n");
    let stderr = server.child_event(0, ChildSource::Stderr);
    assert_eq!(stderr, output(FrameType::Stderr, 1, b"bye\n"));
    let exit_1 = server.finish(0, Termination::Exited(3));
    assert_eq!(exit_1, exit(1, Termination::Exited(3), EndReason::None));
    assert_eq!(server.child(0).released, Some(EndReason::None));

    // A second command, stopped by the client.
    let started_3 = server.send(&exec_sleep());
    assert_eq!(started_3, started(3, 1001, 0));
    assert!(!server.child(1).has_stdin, "no STDIN flag: /dev/null");
    assert!(
        server.send(&signal_on(3, Signal::Term)).is_empty(),
        "no reply"
    );
    assert_eq!(server.child(1).signals, [Signal::Term]);
    let exit_3 = server.finish(1, TERM);
    assert_eq!(exit_3, exit(3, TERM, EndReason::ClientSignal));
    assert_eq!(server.harness.conn.open_streams(), 0);
    assert_eq!(server.state(), State::Open);

    assert_eq!(
        [&hello_ok_exec(), &started_1, &stdout, &stderr, &exit_1]
            .map(Vec::len)
            .iter()
            .sum::<usize>(),
        24 + 20 + 15 + 16 + 16
    );
    assert_eq!(
        (exec_sleep().len(), signal_on(3, Signal::Term).len()),
        (37, 13)
    );
    assert_dump("exec", &exec_request());
    assert_dump("started", &started_1);
    assert_dump("stdin", &stdin());
    assert_dump("stdin-eof", &stdin_eof());
    assert_dump("stdout", &stdout);
    assert_dump("stderr", &stderr);
    assert_dump("exit", &exit_1);
    assert_dump("signal", &signal_on(3, Signal::Term));
    assert_dump("exit-signal", &exit_3);
}

/// Section 1, connection lifecycle: a FIN from the client stops its running commands, and no
/// EXIT is sent for them; the replies before it still go out.
#[test]
fn a_half_close_stops_running_commands_without_exit() {
    let mut server = ServerSide::after(ServerSide::exec_server(), &hello_token(), &hello_ok_exec());
    assert_eq!(server.send(&exec_sleep()), started(3, 1000, 0));
    // The last request, then the FIN: the poll reports the read side closed (EPOLLRDHUP).
    server.io.push(&echo_request()).close();
    server.harness.conn.on_read_closed();
    let verdict = server.harness.event(&mut server.io, true, false);
    assert_eq!(verdict, Verdict::Close);
    assert_eq!(server.written(), echo_reply(), "the reply, and no EXIT");
    assert_eq!(server.child(0).released, Some(EndReason::Disconnect));
    assert_eq!(server.state(), State::Closed);
}

/// Section 5.4: the credit window, byte by byte.
#[test]
fn window_dump_is_credit_returned_after_half_a_window() {
    let limits = Limits::default();
    assert_eq!(limits.stdin_window, 262_144);
    let mut server = ServerSide::after(ServerSide::exec_server(), &hello_token(), &hello_ok_exec());
    assert_eq!(server.send(&exec_request()), started(1, 1000, 262_144));
    let chunk = Frame::new(FrameType::Stdin, Flags::NONE, 1, &[b'a'; 65_536]).to_vec();

    // The client sends 131,072 bytes; the command reads 100,000 of them: less than half a
    // window, so no WINDOW yet.
    assert!(
        server
            .send(&[chunk.clone(), chunk.clone()].concat())
            .is_empty()
    );
    server.child(0).stdin_room = 100_000;
    assert!(server.child_event(0, ChildSource::Stdin).is_empty());
    assert_eq!(server.child(0).stdin.len(), 100_000);

    // 131,072 in all: half the window, all of it returned in one WINDOW.
    server.child(0).stdin_room = 1 << 20;
    let sent = server.child_event(0, ChildSource::Stdin);
    assert_eq!(server.child(0).stdin.len(), 131_072);
    assert_eq!(sent, window(1, 131_072));
    assert_dump("window", &sent);

    // The client used 131,072 of 262,144 and got 131,072 back: exactly 262,144 more may go
    // (the command reads nothing more), one byte more is a fatal FLOW_CONTROL.
    server.child(0).stdin_room = 0;
    for _ in 0..4 {
        assert!(server.send(&chunk).is_empty());
    }
    let one_more = Frame::new(FrameType::Stdin, Flags::NONE, 1, b"!").to_vec();
    let (stream, code, _) = error_in(&server.send(&one_more));
    assert_eq!((stream, code), (0, ErrorCode::FlowControl));
    assert_eq!(server.child(0).released, Some(EndReason::Disconnect));
}

// === File dumps ===

/// The one frame of dump `name`, as the document has it: its header and payload.
/// 8.21 and 8.22: what `exec -t` sends, and what the server makes of it: its shell on a
/// terminal of that size and TERM, then the new size.
#[test]
fn terminal_dumps_are_what_exec_t_sends_and_the_server_runs_the_shell_on_that_terminal() {
    let exec_pty = exec_on(
        1,
        &ExecRequest {
            flags: ExecFlags::STDIN,
            pty: Some(PtyRequest {
                rows: 24,
                cols: 80,
                term: "xterm-256color",
            }),
            ..ExecRequest::new(vec![])
        },
    );
    assert_dump("exec-pty", &exec_pty);
    let mut resize = Vec::new();
    Resize {
        rows: 50,
        cols: 132,
    }
    .encode(1, &mut resize);
    assert_dump("resize", &resize);

    let mut server = ServerSide::exec_server();
    let sent = server.send(&[hello_token(), exec_pty, resize].concat());
    let started_1 = started(1, 1000, Limits::default().stdin_window);
    assert_eq!(sent, [hello_ok_exec(), started_1].concat());
    let child = server.child(0);
    assert_eq!(child.argv, [b"sh".to_vec()], "the server's shell");
    let pty = child.pty.clone().expect("a terminal");
    assert_eq!(
        (pty.rows, pty.cols, pty.term.as_str()),
        (24, 80, "xterm-256color")
    );
    assert_eq!(
        child.resizes,
        [Resize {
            rows: 50,
            cols: 132
        }]
    );
}

fn dumped_frame(name: &str) -> (Header, Vec<u8>) {
    let bytes = dump_bytes(name);
    let all = frames(&bytes);
    assert_eq!(all.len(), 1, "dump `{name}` is one frame");
    (all[0].header, all[0].payload.to_vec())
}

#[track_caller]
fn assert_frame(header: Header, frame_type: FrameType, flags: Flags, stream: u32) {
    assert_eq!(
        (header.frame_type, header.flags, header.stream),
        (frame_type, flags, stream)
    );
}

/// Sections 8.17 to 8.20: every file dump is what the encoders give; read back from the
/// document, it parses with the payload types of `proto::files` into the values the text
/// describes, and emitting those gives the same bytes again.
#[test]
fn file_dumps_parse_with_the_file_types_and_re_emit_byte_for_byte() {
    let hash = blake3(HELLO_TXT);
    for (name, bytes) in [
        ("get", FileSession::get()),
        ("file-info", FileSession::file_info()),
        ("data", FileSession::data()),
        ("digest", FileSession::digest()),
        ("put", FileSession::put()),
        ("put-ready", FileSession::put_ready()),
        ("list", FileSession::list()),
        ("entries", FileSession::page()),
        ("mkdir", FileSession::mkdir()),
        ("done", done(1)),
    ] {
        assert_dump(name, &bytes);
    }

    let (header, payload) = dumped_frame("get");
    assert_frame(header, FrameType::Get, Flags::NONE, 7);
    let get = GetRequest::parse(&payload).unwrap();
    assert_eq!(get, FileSession::get_request());
    let mut out = vec![0; get.payload_len()];
    get.emit(&mut out);
    assert_eq!(out, payload);

    let (header, payload) = dumped_frame("file-info");
    assert_frame(header, FrameType::FileInfo, Flags::NONE, 7);
    let info = FileInfo::parse(&payload).unwrap();
    assert_eq!(info, FileSession::info());
    assert_eq!(payload[info_field::FLAGS], 0, "the hash is not known");
    assert!(payload[info_field::HASH].iter().all(|&byte| byte == 0));
    let mut out = [0; FileInfo::PAYLOAD_LEN];
    info.emit(&mut out);
    assert_eq!(out[..], payload);

    let (header, payload) = dumped_frame("data");
    assert_frame(header, FrameType::Data, Flags::NONE, 7);
    assert_eq!(payload, HELLO_TXT);

    let (header, payload) = dumped_frame("digest");
    assert_frame(header, FrameType::Digest, Flags::END_STREAM, 7);
    let parsed = Digest::parse(&payload).unwrap();
    assert_eq!(parsed.hash, hash, "the BLAKE3 of \"hello, world\\n\"");
    let mut out = [0; Digest::PAYLOAD_LEN];
    parsed.emit(&mut out);
    assert_eq!(out[..], payload);

    let (header, payload) = dumped_frame("put");
    assert_frame(header, FrameType::Put, Flags::NONE, 3);
    let put = PutRequest::parse(&payload).unwrap();
    assert_eq!(put, FileSession::put_request());
    assert_eq!(payload[put_field::FLAGS], PutFlags::HASH_DECLARED.bits());
    assert!(
        !put.flags.contains(PutFlags::RESUME),
        "so DATA may follow at once"
    );
    let mut out = vec![0; put.payload_len()];
    put.emit(&mut out);
    assert_eq!(out, payload);

    let (header, payload) = dumped_frame("put-ready");
    assert_frame(header, FrameType::PutReady, Flags::NONE, 3);
    let ready = PutReady::parse(&payload).unwrap();
    assert_eq!(
        ready,
        PutReady {
            upload_id: UPLOAD_ID,
            held: 0
        }
    );
    let mut out = [0; PutReady::PAYLOAD_LEN];
    ready.emit(&mut out);
    assert_eq!(out[..], payload);

    for (name, frame_type, stream, path) in [
        ("list", FrameType::List, 5, ""),
        ("mkdir", FrameType::Mkdir, 1, "docs"),
    ] {
        let (header, payload) = dumped_frame(name);
        assert_frame(header, frame_type, Flags::NONE, stream);
        assert_eq!(parse_path(&payload), Ok(path), "{name}");
    }

    let (header, payload) = dumped_frame("entries");
    assert_frame(header, FrameType::Entries, Flags::END_STREAM, 5);
    let page: Vec<DirEntry<'_>> = Entries::new(&payload).collect::<Result<_, _>>().unwrap();
    assert_eq!(page, FileSession::entries());
    let mut out = Vec::new();
    for entry in &page {
        let at = out.len();
        out.resize(at + entry.wire_len(), 0);
        entry.emit(&mut out[at..]);
    }
    assert_eq!(out, payload);

    let (header, payload) = dumped_frame("done");
    assert_frame(header, FrameType::Done, Flags::END_STREAM, 1);
    assert!(payload.is_empty());
}

// === A real server ===

/// A real server on loopback, run on a thread; stopped and its root removed on drop.
struct RealServer {
    addr: SocketAddr,
    shutdown: monoreactor::ShutdownHandle,
    running: Option<thread::JoinHandle<std::io::Result<monoreactor::ReactorStats>>>,
    root: PathBuf,
    /// Removed after the server has stopped (fields drop after `drop`).
    _scratch: Scratch,
}

impl RealServer {
    fn start(limits: Limits, access: Access) -> RealServer {
        RealServer::start_with(limits, access, |_| {})
    }

    /// A server whose root `populate` has filled before the server opens it.
    fn start_with(limits: Limits, access: Access, populate: impl FnOnce(&Path)) -> RealServer {
        let scratch = Scratch::new();
        populate(&scratch.0);
        let root = scratch.0.clone();
        let config = Config {
            framed: "127.0.0.1:0".parse().unwrap(),
            echo_tcp: None,
            echo_udp: None,
            limits,
            access,
            root: root.clone(),
            handle_signals: false,
            ..Config::default()
        };
        let server = Server::bind(config).expect("bind on loopback");
        RealServer {
            addr: server.addrs().framed,
            shutdown: server.shutdown_handle(),
            running: Some(thread::spawn(move || server.run())),
            root,
            _scratch: scratch,
        }
    }

    /// `serve --exec` with [`TOKEN`].
    fn exec() -> RealServer {
        RealServer::start(
            Limits::default(),
            Access {
                token: Some(Token::new(TOKEN).unwrap()),
                exec: true,
                credentials: None,
            },
        )
    }

    fn connect(&self) -> TcpStream {
        let socket = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT).unwrap();
        socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        socket.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        socket
    }

    fn stop(mut self) {
        self.shutdown.shutdown().unwrap();
        let running = self.running.take().unwrap();
        running.join().expect("server thread").expect("server run");
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = self.shutdown.shutdown();
            let _ = running.join();
        }
    }
}

fn read_to_eof(socket: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    socket.read_to_end(&mut received).unwrap();
    received
}

/// A client's receive side: whole frames from a socket.
struct Reader {
    socket: TcpStream,
    buffer: Vec<u8>,
}

impl Reader {
    fn connect(server: &RealServer) -> Reader {
        Reader {
            socket: server.connect(),
            buffer: Vec::new(),
        }
    }

    /// The next frame's bytes.
    fn frame(&mut self) -> Vec<u8> {
        loop {
            if let Some(frame) = Decoder::new(u32::MAX).decode(&self.buffer).unwrap() {
                let len = frame.wire_len();
                return self.buffer.drain(..len).collect();
            }
            let mut chunk = [0; 64 << 10];
            let n = self
                .socket
                .read(&mut chunk)
                .expect("a frame before the timeout");
            assert!(n > 0, "the server closed the connection");
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// Frames up to and including the first with `END_STREAM` on `stream`.
    fn until_end_of(&mut self, stream: u32) -> Vec<Vec<u8>> {
        let mut received = Vec::new();
        loop {
            let frame = self.frame();
            let header = Header::parse(&frame, u32::MAX).unwrap().unwrap();
            received.push(frame);
            if header.stream == stream && header.flags.contains(Flags::END_STREAM) {
                return received;
            }
        }
    }

    /// Frames up to and including the first with `END_STREAM` on each of `streams`.
    fn until_ends(&mut self, streams: &[u32]) -> Vec<Vec<u8>> {
        let mut open: BTreeSet<u32> = streams.iter().copied().collect();
        let mut received = Vec::new();
        while !open.is_empty() {
            let frame = self.frame();
            let header = Header::parse(&frame, u32::MAX).unwrap().unwrap();
            if header.flags.contains(Flags::END_STREAM) {
                open.remove(&header.stream);
            }
            received.push(frame);
        }
        received
    }

    fn send(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).unwrap();
    }
}

/// What a real `serve --exec` answers: the worked exec session (frames in the order received,
/// the pids set to the scripted ones) and EXECs its I/O layer refuses, with their causes.
struct RealAnswers {
    session: Vec<Vec<u8>>,
    refusals: Vec<(&'static str, Vec<u8>)>,
}

fn ask_a_real_exec_server() -> RealAnswers {
    let server = RealServer::exec();
    let mut client = Reader {
        socket: server.connect(),
        buffer: Vec::new(),
    };
    client.send(&[hello_token(), exec_request(), stdin(), stdin_eof()].concat());
    let mut session = client.until_end_of(1);
    client.send(&exec_sleep());
    let started_3 = client.frame();
    client.send(&signal_on(3, Signal::Term));
    session.push(started_3);
    session.extend(client.until_end_of(3));
    // The pids are the kernel's: the scripted ones stand in for them.
    for (frame, pid) in session
        .iter_mut()
        .filter(|frame| frame[field::TYPE] == FrameType::Started.to_u8())
        .zip([1000u32, 1001])
    {
        frame[HEADER_LEN + started_field::PID.start..HEADER_LEN + started_field::PID.end]
            .copy_from_slice(&pid.to_be_bytes());
    }

    let long_argument = vec![b'x'; 200_000];
    let refused: [(&str, u32, ExecRequest<'_>); 4] = [
        (
            "no-such-command",
            5,
            ExecRequest::new(vec![b"no-such-command"]),
        ),
        (
            "missing directory",
            7,
            ExecRequest {
                cwd: "missing",
                ..ExecRequest::new(vec![b"true"])
            },
        ),
        (
            "cwd ../etc",
            9,
            ExecRequest {
                cwd: "../etc",
                ..ExecRequest::new(vec![b"true"])
            },
        ),
        (
            "200,000-byte argument",
            11,
            ExecRequest::new(vec![b"true", &long_argument]),
        ),
    ];
    let mut refusals = Vec::new();
    for (cause, stream, request) in refused {
        client.send(&exec_on(stream, &request));
        refusals.push((cause, client.frame()));
    }
    drop(client);
    server.stop();
    RealAnswers { session, refusals }
}

/// The worked exec session against a real server: the same frames as from the state machine,
/// but for the pids; and the NOT_FOUND dump is what a real server says.
#[test]
fn a_real_exec_server_gives_the_worked_sessions_frames_and_the_not_found_dump() {
    let answers = ask_a_real_exec_server();
    let expected = [
        hello_ok_exec(),
        started(1, 1000, 262_144),
        output(FrameType::Stdout, 1, b"hi\n"),
        output(FrameType::Stderr, 1, b"bye\n"),
        exit(1, Termination::Exited(3), EndReason::None),
        started(3, 1001, 0),
        exit(3, TERM, EndReason::ClientSignal),
    ];
    assert_eq!(answers.session, expected);

    let (_, not_found) = &answers.refusals[0];
    let (stream, code, text) = error_in(not_found);
    assert_eq!((stream, code), (5, ErrorCode::NotFound));
    assert_dump("error-not-found", not_found);

    // The state machine forwards the I/O layer's refusal as it is, on the request's stream.
    let mut server = ServerSide::after(ServerSide::exec_server(), &hello_token(), &hello_ok_exec());
    server
        .harness
        .children()
        .refuse_next(SpawnError::NotFound(text));
    let sent = server.send(&exec_on(5, &ExecRequest::new(vec![b"no-such-command"])));
    assert_eq!(&sent, not_found);
    assert_eq!(server.state(), State::Open);
}

// === A real file server ===

/// The header of a frame's bytes.
fn header_of(frame: &[u8]) -> Header {
    Header::parse(frame, u32::MAX).unwrap().unwrap()
}

/// Section 10.5 against a real server: the frames the document shows, but for the mtimes and
/// the upload id, which are the server's own.
#[test]
fn a_real_server_gives_the_worked_file_sessions_frames() {
    let server = RealServer::start(Limits::default(), Access::ECHO_ONLY);
    let mut client = Reader::connect(&server);
    let pipelined = [
        hello(),
        FileSession::mkdir(),
        FileSession::put(),
        FileSession::upload(),
    ]
    .concat();
    assert_eq!(pipelined.len(), 22 + 16 + 62 + 25 + 44);
    client.send(&pipelined);
    let mut answers = client.until_ends(&[1, 3]);
    let ready_at = answers
        .iter()
        .position(|frame| header_of(frame).frame_type == FrameType::PutReady)
        .unwrap_or_else(|| {
            panic!(
                "no PUT_READY in {:?}",
                answers.iter().map(|f| header_of(f)).collect::<Vec<_>>()
            )
        });
    let ready = PutReady::parse(&answers[ready_at][HEADER_LEN..]).unwrap();
    assert_ne!(
        ready.upload_id, 0,
        "a declared hash makes the upload resumable"
    );
    answers[ready_at] = put_ready(
        3,
        PutReady {
            upload_id: UPLOAD_ID,
            ..ready
        },
    );
    assert_eq!(
        answers,
        [
            hello_ok(),
            done(1),
            FileSession::put_ready(),
            FileSession::stored()
        ]
    );
    assert!(server.root.join("docs").is_dir());
    assert_eq!(
        std::fs::read(server.root.join("hello.txt")).unwrap(),
        HELLO_TXT
    );

    // The entries come in directory order: sorted here, as a client would.
    client.send(&FileSession::list());
    let listing = client.until_ends(&[5]);
    assert_eq!(listing.len(), 1, "one page");
    assert_frame(
        header_of(&listing[0]),
        FrameType::Entries,
        Flags::END_STREAM,
        5,
    );
    let mut page: Vec<DirEntry<'_>> = Entries::new(&listing[0][HEADER_LEN..])
        .collect::<Result<_, _>>()
        .unwrap();
    page.sort_by_key(|entry| entry.name);
    let file_mtime = page[1].mtime_ns;
    for entry in &mut page {
        entry.mtime_ns = MTIME_NS;
        if entry.kind == FileKind::Directory {
            entry.size = DIR_SIZE;
        }
    }
    assert_eq!(entries(5, &page, Flags::END_STREAM), FileSession::page());

    client.send(&FileSession::get());
    let mut download = client.until_ends(&[7]);
    assert_eq!(download.len(), 3, "FILE_INFO, one DATA, DIGEST");
    let info = FileInfo::parse(&download[0][HEADER_LEN..]).unwrap();
    assert_eq!(info.mtime_ns, file_mtime, "FILE_INFO and ENTRIES agree");
    // Whether the hash stored at the PUT is trusted yet depends on the clock (section 6.6); if
    // it is, it is the right one.
    assert!(info.hash.is_none_or(|known| known == blake3(HELLO_TXT)));
    // Section 6.6: GET's FILE_INFO carries the mode after its 50 bytes (the PUT made 0644).
    assert_eq!(
        FileInfo::parse_mode(&download[0][HEADER_LEN..]).map(|mode| mode & 0o777),
        Some(0o644)
    );
    download[0] = file_info(
        7,
        &FileInfo {
            mtime_ns: MTIME_NS,
            hash: None,
            ..info
        },
        Flags::NONE,
    );
    assert_eq!(
        download,
        [
            FileSession::file_info(),
            FileSession::data(),
            FileSession::digest()
        ]
    );
    drop(client);
    server.stop();
}

/// Section 6.4 against a real server: an abandoned resumable upload is kept out of sight; a
/// PUT with another hash does not splice onto it; the same PUT with `RESUME` continues from
/// what the server holds, and the trailer covers the whole file.
#[test]
fn a_real_server_resumes_an_interrupted_upload_from_what_it_holds() {
    let server = RealServer::start(Limits::default(), Access::ECHO_ONLY);
    let content: Vec<u8> = (0..3usize << 19).map(|i| (i * 7 % 251) as u8).collect();
    let cut = 1 << 20;
    let hash = blake3(&content);
    let put = |stream: u32, hash: Hash| {
        put_on(
            stream,
            &PutRequest {
                size: content.len() as u64,
                flags: PutFlags::HASH_DECLARED.with(PutFlags::RESUME),
                hash: Some(hash),
                attrs: None,
                path: "big.bin",
            },
        )
    };
    let ready = |frame: Vec<u8>, stream: u32| {
        assert_frame(header_of(&frame), FrameType::PutReady, Flags::NONE, stream);
        PutReady::parse(&frame[HEADER_LEN..]).unwrap()
    };
    // Frames are handled in order: once the echo is answered, the frames before it were.
    let abandon = |client: &mut Reader, stream: u32| {
        client.send(&error_frame(stream, ErrorCode::BadRequest, "abandoned"));
        client.send(&echo_request());
        assert_eq!(
            client.frame(),
            echo_reply(),
            "nothing more on stream {stream}"
        );
    };
    let mut client = Reader::connect(&server);
    client.send(&hello());
    assert_eq!(client.frame(), hello_ok());

    client.send(&put(1, hash));
    let first = ready(client.frame(), 1);
    assert_eq!(first.held, 0, "nothing to resume yet");
    assert_ne!(first.upload_id, 0);
    client.send(&data(1, &content[..cut]));
    abandon(&mut client, 1);

    let other = blake3(b"another file of the same size and name");
    client.send(&put(3, other));
    let another = ready(client.frame(), 3);
    assert_ne!(another.upload_id, first.upload_id);
    assert_eq!(
        another.held, 0,
        "another hash never splices onto what is held"
    );
    abandon(&mut client, 3);

    client.send(&put(5, hash));
    let resumed = ready(client.frame(), 5);
    assert_eq!(
        resumed,
        PutReady {
            upload_id: first.upload_id,
            held: cut as u64
        }
    );
    client.send(&data(5, &content[cut..]));
    client.send(&digest(5, hash, Flags::NONE));
    assert_eq!(
        client.until_ends(&[5]),
        [digest(5, hash, Flags::END_STREAM)]
    );
    assert_eq!(std::fs::read(server.root.join("big.bin")).unwrap(), content);

    // The abandoned upload of the other hash is kept, and hidden.
    let on_disk: Vec<String> = std::fs::read_dir(&server.root)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        on_disk
            .iter()
            .any(|name| name.starts_with(&format!("{RESERVED_PREFIX}partial-"))),
        "{on_disk:?}"
    );
    client.send(&path_request(FrameType::List, 7, ""));
    let listing = client.until_ends(&[7]).concat();
    let mut entries: Vec<(&str, FileKind)> = Entries::new(&listing[HEADER_LEN..])
        .map(|entry| entry.map(|entry| (entry.name, entry.kind)).unwrap())
        .collect();
    entries.sort_unstable_by_key(|&(name, _)| name);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries[0]
            .0
            .starts_with(&format!("{RESERVED_PREFIX}partial-"))
    );
    assert_eq!(entries[0].1, FileKind::Partial, "the partial is shown");
    assert_eq!(entries[1], ("big.bin", FileKind::File));
    drop(client);
    server.stop();
}

/// Sections 2, 6.3 and 6.5 against a real server whose maximum payload is 4,096 bytes: a
/// download comes in DATA frames and a listing in pages no longer than that, every page but
/// the last without `END_STREAM`, and nothing is lost between them.
#[test]
fn a_real_servers_data_and_pages_fit_the_announced_maximum() {
    const MAX: u32 = 4096;
    let file: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let names: Vec<String> = (0..40).map(|i| format!("{i:0>200}")).collect();
    let server = RealServer::start_with(
        Limits {
            max_frame_len: MAX,
            ..Limits::default()
        },
        Access::ECHO_ONLY,
        |root| {
            std::fs::create_dir(root.join("many")).unwrap();
            for name in &names {
                std::fs::write(root.join("many").join(name), b"x").unwrap();
            }
            std::fs::write(root.join("file.bin"), &file).unwrap();
        },
    );
    let mut client = Reader::connect(&server);
    client.send(&hello());
    let files = SessionFlags::AUTHENTICATED.with(SessionFlags::FILES);
    assert_eq!(client.frame(), hello_ok_with(PROTOCOL_VERSION, MAX, files));
    let fits = |frame: &Vec<u8>| frame.len() - HEADER_LEN <= MAX as usize;

    let get = GetRequest {
        offset: 0,
        path: "file.bin",
    };
    client.send(&get_on(1, &get));
    let download = client.until_ends(&[1]);
    assert!(
        download.iter().all(fits),
        "{:?}",
        download.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let received: Vec<u8> = download[1..download.len() - 1]
        .iter()
        .flat_map(|frame| frame[HEADER_LEN..].to_vec())
        .collect();
    assert_eq!(received, file);
    assert_eq!(
        download.last().unwrap(),
        &digest(1, blake3(&file), Flags::END_STREAM)
    );

    client.send(&path_request(FrameType::List, 3, "many"));
    let pages = client.until_ends(&[3]);
    assert!(
        pages.iter().all(fits),
        "{:?}",
        pages.iter().map(Vec::len).collect::<Vec<_>>()
    );
    for (at, page) in pages.iter().enumerate() {
        let last = at + 1 == pages.len();
        let flags = if last { Flags::END_STREAM } else { Flags::NONE };
        assert_frame(header_of(page), FrameType::Entries, flags, 3);
        assert!(
            last || page.len() > HEADER_LEN,
            "only the last page may be empty"
        );
    }
    let mut listed: Vec<String> = pages
        .iter()
        .flat_map(|page| {
            Entries::new(&page[HEADER_LEN..])
                .map(|entry| entry.unwrap().name.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    listed.sort();
    assert_eq!(listed, names);
    drop(client);
    server.stop();
}

/// The root of the refusals below: a 13-byte file, a directory holding a file, and a symbolic
/// link to the file.
fn populate_file_root(root: &Path) {
    std::fs::write(root.join("hello.txt"), HELLO_TXT).unwrap();
    std::fs::create_dir(root.join("docs")).unwrap();
    std::fs::write(root.join("docs/a.txt"), b"a").unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("link")).unwrap();
}

/// File requests a real server with [`TOKEN`] refuses: the request's type, and the ERROR that
/// ended its stream.
fn ask_a_real_file_server() -> Vec<(FrameType, Vec<u8>)> {
    let server = RealServer::start_with(
        Limits::default(),
        Access {
            token: Some(Token::new(TOKEN).unwrap()),
            exec: false,
            credentials: None,
        },
        populate_file_root,
    );
    let mut client = Reader::connect(&server);
    client.send(&hello_token());
    let files = SessionFlags::AUTHENTICATED.with(SessionFlags::FILES);
    let hello_ok = hello_ok_with(PROTOCOL_VERSION, Limits::default().max_frame_len, files);
    assert_eq!(client.frame(), hello_ok, "files, no commands");

    let get = |stream: u32, offset: u64, path: &str| get_on(stream, &GetRequest { offset, path });
    let mismatched = PutRequest {
        size: 5,
        flags: PutFlags::HASH_DECLARED,
        hash: Some(blake3(b"right")),
        attrs: None,
        path: "new.txt",
    };
    let requests = [
        (FrameType::Get, get(1, 0, "missing.txt")),
        (FrameType::Get, get(3, 0, "docs")),
        (
            FrameType::List,
            path_request(FrameType::List, 5, "hello.txt"),
        ),
        (FrameType::Get, get(7, 0, "link")),
        (FrameType::Get, get(9, 14, "hello.txt")),
        (
            FrameType::Put,
            [
                put_on(11, &mismatched),
                data(11, b"wrong"),
                digest(11, blake3(b"wrong"), Flags::NONE),
            ]
            .concat(),
        ),
        (FrameType::Mkdir, path_request(FrameType::Mkdir, 13, "docs")),
        (FrameType::SetAttrs, set_attrs_on(23, "")),
        (FrameType::SetAttrs, set_attrs_on(25, "missing.txt")),
        (FrameType::SetAttrs, set_attrs_on(27, "link")),
        (
            FrameType::Delete,
            path_request(FrameType::Delete, 15, "docs"),
        ),
        (FrameType::Get, get(17, 0, ".monoreactor-partial-1")),
        (FrameType::Delete, path_request(FrameType::Delete, 19, "")),
    ];
    let mut refusals = Vec::new();
    for (frame_type, request) in requests {
        let stream = header_of(&request).stream;
        client.send(&request);
        let last = client.until_ends(&[stream]).pop().unwrap();
        assert_eq!(
            header_of(&last).frame_type,
            FrameType::Error,
            "{frame_type} on stream {stream} is refused"
        );
        refusals.push((frame_type, last));
    }
    assert!(
        !server.root.join("new.txt").exists(),
        "HASH_MISMATCH stores nothing"
    );

    // Another server process receiving the same upload: as far as the kernel's lock can
    // tell, that is any other open of the partial holding its lock.
    let busy = PutRequest {
        size: 4,
        flags: PutFlags::HASH_DECLARED,
        hash: Some(blake3(b"busy")),
        attrs: None,
        path: "big.iso",
    };
    let id = monoreactor::internal::upload_id(busy.path, busy.size, &blake3(b"busy"));
    let partial = fs::File::create(server.root.join(format!(".monoreactor-partial-{id:016x}")))
        .expect("create the partial");
    lock_whole_file(&partial);
    client.send(&put_on(21, &busy));
    refusals.push((FrameType::Put, client.until_ends(&[21]).pop().unwrap()));
    drop(partial);

    let mut stranger = Reader::connect(&server);
    stranger.send(&hello());
    assert_eq!(stranger.frame(), hello_ok_unauthenticated());
    stranger.send(&get(1, 0, "hello.txt"));
    refusals.push((FrameType::Get, stranger.frame()));
    drop((client, stranger));
    server.stop();
    refusals
}

/// Takes the exclusive open-file-description lock a server process holds on a partial upload
/// it is receiving.
fn lock_whole_file(file: &fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: all-zero is a valid `flock` (the whole file); fcntl gets a pointer to it that
    // outlives the call, on a descriptor the caller owns.
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = libc::F_WRLCK as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &request) };
    assert_eq!(rc, 0, "lock: {}", std::io::Error::last_os_error());
}

/// Section 6.9: every refusal a real server sends a file request is listed for that request,
/// in its row or among the codes every file request can get.
#[test]
fn file_error_table_lists_what_a_real_server_sends() {
    let start = DOC.find("### 6.9 ").expect("section 6.9");
    let end = start + DOC[start..].find("<!-- table: file-errors -->").unwrap();
    let every_request = &DOC[start..end];
    let names = |text: &str| -> BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
            .filter(|word| word.len() > 1)
            .map(str::to_string)
            .collect()
    };
    let rows: BTreeMap<String, BTreeSet<String>> = table("file-errors")
        .into_iter()
        .map(|row| (row[0].clone(), names(&row[2])))
        .collect();
    let requests = [
        FrameType::Get,
        FrameType::Put,
        FrameType::List,
        FrameType::Stat,
        FrameType::Delete,
        FrameType::Mkdir,
        FrameType::SetAttrs,
    ]
    .map(|request| request.to_string());
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        BTreeSet::from(requests.clone()).iter().collect::<Vec<_>>(),
        "one row per file request"
    );
    for (request, answer) in ask_a_real_file_server() {
        let (_, code, text) = error_in(&answer);
        let code = code.to_string();
        assert!(
            rows[&request.to_string()].contains(&code) || names(every_request).contains(&code),
            "{request} got {code} ({text}), which section 6.9 does not list for it"
        );
    }
}

/// SERVER_BUSY and SHUTTING_DOWN come from the event loop, not the connection: a real server
/// on loopback with room for one connection.
#[test]
fn busy_and_shutting_down_dumps_are_what_a_real_server_sends() {
    let server = RealServer::start(
        Limits {
            max_connections: 1,
            ..Limits::default()
        },
        Access::ECHO_ONLY,
    );

    // The first client takes the only place (HELLO_OK proves it was admitted).
    let mut admitted = server.connect();
    admitted.write_all(&hello()).unwrap();
    let mut answer = vec![0; hello_ok().len()];
    admitted.read_exact(&mut answer).unwrap();
    assert_eq!(answer, hello_ok());

    // The second is refused before it sends anything.
    let busy = read_to_eof(&mut server.connect());
    let (stream, code, text) = error_in(&busy);
    assert_eq!((stream, code), (0, ErrorCode::ServerBusy));
    assert_eq!(busy, error_frame(0, code, &text));
    assert_dump("error-server-busy", &busy);

    server.shutdown.shutdown().unwrap();
    let goodbye = read_to_eof(&mut admitted);
    let (stream, code, text) = error_in(&goodbye);
    assert_eq!((stream, code), (0, ErrorCode::ShuttingDown));
    assert_eq!(goodbye, error_frame(0, code, &text));
    assert_dump("error-shutting-down", &goodbye);

    drop(admitted);
    server.stop();
}

/// Section 10.2, frame by frame.
#[test]
fn worked_echo_session_gives_the_documented_bytes() {
    let mut server = ServerSide::default_server();
    let pipelined = [hello(), echo_request(), unknown_type_request()].concat();
    assert_eq!(pipelined.len(), 22 + 17 + 15);
    let answer = server.send(&pipelined);
    let unknown_error = error_frame(
        2,
        ErrorCode::UnknownFrameType,
        "frame type 0x3f is not known to this server",
    );
    assert_eq!(answer, [hello_ok(), echo_reply(), unknown_error].concat());
    assert_eq!(answer.len(), 24 + 17 + 57);
    assert_eq!(server.send(&oversize_header()), frame_too_large());
    assert!(server.io.write_shut);
}

// === Tables ===

#[test]
fn frame_type_table_matches_the_code() {
    let mut documented = BTreeSet::new();
    for row in table("frame-types") {
        let number = u8::from_str_radix(row[0].trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("frame type `{}` is not a hex byte", row[0]));
        let frame_type = FrameType::from_u8(number);
        assert!(
            !matches!(frame_type, FrameType::Unknown(_)),
            "the document assigns 0x{number:02x}, the code does not"
        );
        assert_eq!(
            frame_type.to_string(),
            row[1],
            "name of type 0x{number:02x}"
        );
        assert!(documented.insert(number), "0x{number:02x} listed twice");
    }
    assert_eq!(
        documented,
        known_frame_types(),
        "every frame type the code knows is listed"
    );
    // The ranges the document reserves for later versions are unknown to this one.
    for byte in (0x2a..=0x2f).chain(0x37..=0x37).chain(0x3e..=0x3f) {
        assert_eq!(FrameType::from_u8(byte), FrameType::Unknown(byte));
    }
}

fn known_frame_types() -> BTreeSet<u8> {
    (0..=u8::MAX)
        .filter(|&byte| !matches!(FrameType::from_u8(byte), FrameType::Unknown(_)))
        .collect()
}

/// What the server does with one frame of `frame_type` from a client, in a word or two:
/// the type of its answer, `fatal CODE`, `CODE` for an error that ends only the stream,
/// `ignored`, or `quiet close`.
fn outcome(mut server: ServerSide, frame_type: FrameType) -> String {
    let stream = 1;
    let frame = match frame_type {
        FrameType::Hello => hello_token(),
        FrameType::Error => error_frame(stream, ErrorCode::BadRequest, "client error"),
        FrameType::EchoRequest => Frame::new(frame_type, Flags::END_STREAM, stream, b"x").to_vec(),
        FrameType::Exec => exec_on(stream, &ExecRequest::new(vec![b"true"])),
        FrameType::Stdin => Frame::new(frame_type, Flags::NONE, stream, b"x").to_vec(),
        FrameType::Signal => signal_on(stream, Signal::Term),
        // A path its syntax refuses: the answer needs no disk. (GET and PUT get an empty
        // payload, too short for their fixed fields.)
        FrameType::List | FrameType::Stat | FrameType::Delete | FrameType::Mkdir => {
            path_request(frame_type, stream, "../x")
        }
        _ => Frame::new(frame_type, Flags::NONE, stream, b"").to_vec(),
    };
    let sent = server.send(&frame);
    match frames(&sent).first() {
        None if server.state() == State::Closing => "quiet close".to_string(),
        None => "ignored".to_string(),
        Some(reply) if reply.header.frame_type == FrameType::Error => {
            let (stream, code, _) = errors_in(&sent).remove(0);
            if ends_connection(stream) {
                format!("fatal {code}")
            } else {
                code.to_string()
            }
        }
        Some(reply) => reply.header.frame_type.to_string(),
    }
}

/// A fresh server connection in some state.
type Connect = fn() -> ServerSide;

/// Section 3.5: each cell names what the server does with that frame in that state, as the
/// connection state machine shows it on a server with `--exec`: before HELLO, after a version 2
/// HELLO with the token, after a version 1 HELLO with the token (frames on stream 1, or 0 for
/// HELLO; a stream with no command running).
#[test]
fn server_action_table_matches_what_the_server_does() {
    let states: [(&str, Connect); 3] = [
        ("before HELLO", ServerSide::exec_server),
        ("after a version 2 HELLO", || {
            ServerSide::after(ServerSide::exec_server(), &hello_token(), &hello_ok_exec())
        }),
        ("after a version 1 HELLO", || {
            ServerSide::after(ServerSide::exec_server(), &hello_v1_token(), &hello_ok_v1())
        }),
    ];
    let mut documented = BTreeSet::new();
    for row in table("server-actions") {
        assert_eq!(row.len(), 2 + states.len(), "row {row:?}");
        let frame_type = match row[0].as_str() {
            "other" => FrameType::Unknown(UNKNOWN_TYPE),
            "any" => continue, // a bad header: checked by the dumps and error texts
            hex => {
                let number = u8::from_str_radix(hex.trim_start_matches("0x"), 16)
                    .unwrap_or_else(|_| panic!("frame type `{hex}` is not a hex byte"));
                assert!(documented.insert(number), "0x{number:02x} listed twice");
                FrameType::from_u8(number)
            }
        };
        if !matches!(frame_type, FrameType::Unknown(_)) {
            assert_eq!(frame_type.to_string(), row[1], "name of {frame_type}");
        }
        for (column, (state, server)) in states.iter().enumerate() {
            let mut cell = &row[2 + column];
            if cell == "as version 2" {
                cell = &row[2 + column - 1];
            }
            let did = outcome(server(), frame_type);
            let (fatal, word) = match did.strip_prefix("fatal ") {
                Some(code) => (true, code),
                None => (false, did.as_str()),
            };
            assert!(
                cell.contains(word) && (!fatal || cell.contains("fatal")),
                "{} {state}: the server answers `{did}`, the table says `{cell}`",
                row[1]
            );
        }
    }
    assert_eq!(
        documented,
        known_frame_types(),
        "every frame type the code knows has a row"
    );
}

/// Every ERROR the server sends in the situations the document describes: (stream, code,
/// text), from the connection state machine, a real `serve --exec`, and the loopback dumps.
fn observed_errors() -> Vec<(u32, ErrorCode, String)> {
    let mut observed = Vec::new();
    let mut record = |sent: &[u8]| {
        let errors = errors_in(sent);
        assert!(!errors.is_empty(), "an ERROR was expected");
        observed.extend(errors);
    };

    // Connection-level errors on a fresh default connection.
    let mut bad_flags = echo_request();
    bad_flags[field::FLAGS] = 0x80;
    let mut bad_reserved = echo_request();
    bad_reserved[field::RESERVED.end - 1] = 0x01;
    for frames in [
        [hello(), bad_flags].concat(),
        [hello(), bad_reserved].concat(),
        [hello(), oversize_header().to_vec()].concat(),
        echo_request(),
        [hello(), hello()].concat(),
        [
            hello(),
            Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 0, b"x").to_vec(),
        ]
        .concat(),
        Frame::new(
            FrameType::Hello,
            Flags::END_STREAM,
            3,
            &hello()[HEADER_LEN..],
        )
        .to_vec(),
        hello_with_payload(b"MNRX\x00\x01"),
        hello_with_payload(b"HTTP\x00\x01\x00\x02\x00\x00"),
        hello_versions(3, 5, b""),
    ] {
        let mut server = ServerSide::default_server();
        let sent = server.send(&frames);
        assert_eq!(server.state(), State::Closing, "fatal");
        record(&sent);
    }

    // Per-stream errors of a default server: an unknown type, and EXEC without --exec.
    let mut server = ServerSide::after(ServerSide::default_server(), &hello(), &hello_ok());
    record(&server.send(&unknown_type_request()));
    record(&server.send(&exec_request()));
    assert_eq!(server.state(), State::Open);

    // A file request to a server without the file service.
    let no_files = hello_ok_with(
        PROTOCOL_VERSION,
        Limits::default().max_frame_len,
        SessionFlags::AUTHENTICATED,
    );
    let mut server = ServerSide::after(ServerSide::no_files_server(), &hello(), &no_files);
    record(&server.send(&FileSession::get()));
    assert_eq!(server.state(), State::Open);

    // A file request in plaintext from another host.
    let mut plaintext = ServerSide::default_server();
    plaintext.harness.peer = Peer {
        encrypted: false,
        loopback: false,
        client_key: None,
        ..Peer::LOCAL
    };
    let mut server = ServerSide::after(plaintext, &hello(), &hello_ok());
    record(&server.send(&FileSession::get()));
    assert_eq!(server.state(), State::Open);

    // A version 1 connection does not know EXEC.
    let mut server =
        ServerSide::after(ServerSide::exec_server(), &hello_v1_token(), &hello_ok_v1());
    record(&server.send(&exec_request()));

    // Timeouts. Hello: nothing at all. Idle: nothing after the handshake. Frame: 5 bytes of
    // a header, then nothing.
    record(&ServerSide::default_server().expire());
    record(&ServerSide::after(ServerSide::default_server(), &hello(), &hello_ok()).expire());
    let mut server = ServerSide::after(ServerSide::default_server(), &hello(), &hello_ok());
    assert!(server.send(&echo_request()[..5]).is_empty());
    record(&server.expire());

    // Authentication: a wrong token; an EXEC without the token; echo over the pre-auth limit.
    let mut server = ServerSide::exec_server();
    record(&server.send(&hello_versions(1, 2, b"example-token-17")));
    let mut server = ServerSide::after(
        ServerSide::exec_server(),
        &hello(),
        &hello_ok_unauthenticated(),
    );
    record(&server.send(&exec_request()));
    let big = Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 2, &[0; 4097]).to_vec();
    record(&server.send(&big));

    // Exec, on an authenticated connection.
    let exec_server =
        || ServerSide::after(ServerSide::exec_server(), &hello_token(), &hello_ok_exec());
    let mut server = exec_server();
    let no_program = exec_on(1, &ExecRequest::new(vec![]));
    record(&server.send(&no_program));
    let with_nul = ExecRequest::new(vec![b"echo", b"a\0b"]);
    record(&server.send(&exec_on(1, &with_nul)));
    assert_eq!(server.state(), State::Open);
    let limit = Limits::default().max_streams_per_connection as u32;
    for stream in 1..=limit {
        let sent = server.send(&exec_on(stream, &ExecRequest::new(vec![b"sleep", b"99"])));
        assert_eq!(frames(&sent)[0].header.frame_type, FrameType::Started);
    }
    record(&server.send(&exec_on(limit + 1, &ExecRequest::new(vec![b"true"]))));
    record(&server.send(&exec_on(7, &ExecRequest::new(vec![b"true"]))));

    let mut server = exec_server();
    server.send(&exec_request());
    let over = Frame::new(FrameType::Stdin, Flags::NONE, 1, &[0; 262_145]).to_vec();
    record(&server.send(&over));

    let mut server = exec_server();
    server.send(&exec_sleep());
    record(&server.send(&Frame::new(FrameType::Signal, Flags::NONE, 3, &[19]).to_vec()));

    let mut server = exec_server();
    server.send(&exec_sleep());
    record(&server.send(&Frame::new(FrameType::Started, Flags::NONE, 1, &[0; 8]).to_vec()));

    // Shutdown with a command running: new commands are refused on their stream, then the
    // command's EXIT, then SHUTTING_DOWN on stream 0.
    let mut server = exec_server();
    server.send(&exec_sleep());
    assert!(server.shutdown().is_empty(), "the command is stopped first");
    assert_eq!(server.child(0).signals, [Signal::Term]);
    record(&server.send(&exec_request()));
    assert_eq!(server.send(&echo_request()), echo_reply(), "still served");
    let sent = server.finish(0, TERM);
    assert_eq!(
        frames(&sent)[0].to_vec(),
        exit(3, TERM, EndReason::Shutdown)
    );
    record(&sent);
    // Without commands, SHUTTING_DOWN at once.
    record(&exec_server().shutdown());

    // Refusals only the real I/O layer makes.
    for (_, sent) in ask_a_real_exec_server().refusals {
        record(&sent);
    }
    for (_, sent) in ask_a_real_file_server() {
        record(&sent);
    }
    record(&shed_by_a_real_server());
    // SERVER_BUSY and SHUTTING_DOWN from a real event loop are checked byte for byte against
    // their dumps by `busy_and_shutting_down_dumps_are_what_a_real_server_sends`.
    for name in ["error-server-busy", "error-shutting-down"] {
        record(&dump_bytes(name));
    }
    observed
}

/// What the server says when the disk fails under a file request: a full one (`ENOSPC`, a
/// PUT of `big.iso`), a broken one (`EIO`, a GET of `hello.txt`). No test here can make a disk
/// fail under a real server, so these come from the server's own mapping of the errno, which
/// every file request's failure goes through; they are sent on the request's stream.
fn disk_failures() -> Vec<(ErrorCode, String)> {
    [(libc::ENOSPC, "big.iso"), (libc::EIO, "hello.txt")]
        .into_iter()
        .map(|(errno, path)| {
            let error = file_error(Errno::from_raw_os_error(errno), path);
            (error.code, error.text)
        })
        .collect()
}

/// What a client parking most of a large frame gets from a real server whose buffers for all
/// clients together go over `--max-client-memory`: the connection holding the most is closed
/// with LIMIT_REACHED on stream 0 (a connection-level error, unlike the per-request limits).
/// Returns all that client read after its HELLO_OK.
fn shed_by_a_real_server() -> Vec<u8> {
    let frame_len: u32 = 64 << 10;
    let limits = Limits {
        max_frame_len: frame_len,
        // One maximal frame: the smallest budget accepted. Three clients each parking most of
        // a frame go over it.
        max_client_memory: HEADER_LEN + frame_len as usize,
        ..Limits::default()
    };
    let server = RealServer::start(limits, Access::ECHO_ONLY);
    let mut header = [0; HEADER_LEN];
    Header {
        frame_type: FrameType::EchoRequest,
        flags: Flags::NONE,
        stream: 1,
        len: frame_len,
    }
    .emit(&mut header);
    let parked = [header.to_vec(), vec![0x5a; frame_len as usize - 1]].concat();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = server.connect();
        client.write_all(&hello()).unwrap();
        let mut hello_ok = [0; HEADER_LEN + HelloOk::V2_PAYLOAD_LEN];
        client.read_exact(&mut hello_ok).unwrap();
        // The server may close this client while it sends.
        let _ = client.write_all(&parked);
        clients.push(client);
    }
    for mut client in clients {
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut after = Vec::new();
        let _ = client.read_to_end(&mut after);
        if !after.is_empty() {
            return after;
        }
    }
    panic!("no client was shed over --max-client-memory");
}

fn hello_with_payload(payload: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::Hello, Flags::END_STREAM, 0, payload).to_vec()
}

/// The error-code table: names, and the streams each code travels on (`0`, `the request's`
/// or `both`) against the streams the server used in every situation `observed_errors` runs.
#[test]
fn error_code_table_matches_the_code_and_the_streams_the_server_uses() {
    let mut streams: BTreeMap<u16, BTreeSet<&str>> = BTreeMap::new();
    for (stream, code, _) in observed_errors() {
        let side = if ends_connection(stream) {
            "0"
        } else {
            "the request's"
        };
        streams.entry(code.to_u16()).or_default().insert(side);
    }
    let mut documented = BTreeSet::new();
    for row in table("error-codes") {
        let number: u16 = row[0]
            .parse()
            .unwrap_or_else(|_| panic!("error code `{}` is not a number", row[0]));
        let code = ErrorCode::from_u16(number);
        assert!(
            !matches!(code, ErrorCode::Other(_)),
            "the document assigns code {number}, the code does not"
        );
        assert_eq!(code.to_string(), row[1], "name of code {number}");
        let seen = streams.get(&number).cloned().unwrap_or_default();
        let column = match (seen.contains("0"), seen.contains("the request's")) {
            (true, true) => "both",
            (true, false) => "0",
            (false, true) => "the request's",
            (false, false) if disk_failures().iter().any(|(failure, _)| *failure == code) => {
                "the request's"
            }
            (false, false) => panic!("{code} was never sent in the cases this test runs"),
        };
        assert_eq!(row[2], column, "streams of {code}");
        assert!(documented.insert(number), "code {number} listed twice");
    }
    let known: BTreeSet<u16> = (0..=u16::MAX)
        .filter(|&number| !matches!(ErrorCode::from_u16(number), ErrorCode::Other(_)))
        .collect();
    assert_eq!(
        documented, known,
        "every error code the code knows is listed"
    );
}

/// Every example text in section 7.1 is what the server says in the situation the table names,
/// and every situation has its row.
#[test]
fn error_text_table_matches_what_the_server_sends() {
    let produced: Vec<(String, String)> = observed_errors()
        .into_iter()
        .map(|(_, code, text)| (code, text))
        .chain(disk_failures())
        .map(|(code, text)| (code.to_string(), text))
        .collect();
    let documented: Vec<(String, String)> = table("error-texts")
        .into_iter()
        .map(|row| (row[0].clone(), row[2].clone()))
        .collect();
    for row in &documented {
        assert!(
            produced.contains(row),
            "the document quotes {row:?}, which the server does not send in these cases: {produced:#?}"
        );
    }
    for pair in &produced {
        assert!(
            documented.contains(pair),
            "the server sends {pair:?}; add it to the error-texts table"
        );
    }
    // Every code the server can send has an example.
    let codes: BTreeSet<&str> = documented.iter().map(|(code, _)| code.as_str()).collect();
    let known = (1..=u16::MAX)
        .map(ErrorCode::from_u16)
        .filter(|code| !matches!(code, ErrorCode::Other(_)));
    for code in known {
        assert!(
            codes.contains(code.to_string().as_str()),
            "no example text for {code}"
        );
    }
}

/// A field table's rows: offset (a number, or `N + cwd_len` after EXEC's working directory),
/// size (`None` for a variable length or "the rest of the payload") and name.
fn field_rows(name: &str) -> Vec<(String, Option<usize>, String)> {
    table(name)
        .into_iter()
        .map(|row| {
            let size = match row[1].as_str() {
                "rest" | "var" => None,
                size => Some(size.parse().expect("size is a number, `var` or `rest`")),
            };
            (row[0].clone(), size, row[2].clone())
        })
        .collect()
}

fn fixed(range: std::ops::Range<usize>, name: &str) -> (String, Option<usize>, String) {
    (range.start.to_string(), Some(range.len()), name.to_string())
}

fn byte(at: usize, name: &str) -> (String, Option<usize>, String) {
    fixed(at..at + 1, name)
}

fn rest(offset: usize, name: &str) -> (String, Option<usize>, String) {
    (offset.to_string(), None, name.to_string())
}

#[test]
fn field_tables_match_the_code() {
    assert_eq!(
        field_rows("header-fields"),
        [
            byte(field::TYPE, "type"),
            byte(field::FLAGS, "flags"),
            fixed(field::RESERVED, "reserved"),
            fixed(field::STREAM, "stream"),
            fixed(field::LENGTH, "length"),
        ]
    );
    assert_eq!(field::LENGTH.end, HEADER_LEN);
    assert_eq!(
        field_rows("hello-fields"),
        [
            fixed(hello_field::MAGIC, "magic"),
            fixed(hello_field::MIN_VERSION, "min_version"),
            fixed(hello_field::MAX_VERSION, "max_version"),
            fixed(hello_field::CREDENTIALS_LEN, "credentials_len"),
            rest(hello_field::CREDENTIALS, "credentials"),
        ]
    );
    assert_eq!(
        field_rows("hello-ok-fields"),
        [
            fixed(hello_ok_field::MAGIC, "magic"),
            fixed(hello_ok_field::VERSION, "version"),
            fixed(hello_ok_field::MAX_PAYLOAD_LEN, "max_payload_len"),
            fixed(hello_ok_field::FLAGS, "flags"),
        ]
    );
    assert_eq!(hello_ok_field::FLAGS.end, HelloOk::V2_PAYLOAD_LEN);
    assert_eq!(
        field_rows("error-fields"),
        [
            fixed(error_field::CODE, "code"),
            rest(error_field::TEXT, "text"),
        ]
    );
    let after_cwd = |offset: usize, size: Option<usize>, name: &str| {
        (format!("{offset} + cwd_len"), size, name.to_string())
    };
    assert_eq!(
        field_rows("exec-fields"),
        [
            fixed(exec_field::FLAGS, "flags"),
            fixed(exec_field::TIMEOUT_MS, "timeout_ms"),
            fixed(exec_field::CWD_LEN, "cwd_len"),
            rest(exec_field::CWD, "cwd"),
            after_cwd(exec_field::CWD, Some(2), "argc"),
            after_cwd(exec_field::CWD + 2, None, "args"),
        ]
    );
    // The fields after the working directory, as the encoder lays them out: argc (u16), then
    // each argument as a u32 length and its bytes, and nothing after the last.
    let request = ExecRequest {
        flags: ExecFlags::STDIN,
        timeout_ms: 1500,
        cwd: "work",
        argv: vec![b"ab", b"c"],
        pty: None,
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    let argc_at = exec_field::CWD + request.cwd.len();
    assert_eq!(
        payload[argc_at..],
        *b"\x00\x02\x00\x00\x00\x02ab\x00\x00\x00\x01c"
    );
    // With PTY, after the last argument: rows, cols (u16 each), term_len (u8), term.
    let request = ExecRequest {
        pty: Some(PtyRequest {
            rows: 0x0102,
            cols: 0x0304,
            term: "vt100",
        }),
        ..request
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    let pty_at = argc_at + 2 + (4 + 2) + (4 + 1);
    assert_eq!(payload[pty_at..], *b"\x01\x02\x03\x04\x05vt100");
    assert_eq!(
        field_rows("exec-pty-fields"),
        [
            ("end of args".to_string(), Some(2), "rows".to_string()),
            ("end of args + 2".to_string(), Some(2), "cols".to_string()),
            (
                "end of args + 4".to_string(),
                Some(1),
                "term_len".to_string()
            ),
            ("end of args + 5".to_string(), None, "term".to_string()),
        ]
    );
    assert_eq!(
        field_rows("resize-fields"),
        [fixed(0..2, "rows"), fixed(2..Resize::PAYLOAD_LEN, "cols")]
    );
    let mut resize = [0; Resize::PAYLOAD_LEN];
    Resize {
        rows: 0x0102,
        cols: 0x0304,
    }
    .emit(&mut resize);
    assert_eq!(resize, [1, 2, 3, 4]);
    assert_eq!(
        field_rows("started-fields"),
        [
            fixed(started_field::PID, "pid"),
            fixed(started_field::STDIN_WINDOW, "stdin_window"),
        ]
    );
    assert_eq!(started_field::STDIN_WINDOW.end, Started::PAYLOAD_LEN);
    assert_eq!(
        field_rows("window-fields"),
        [fixed(0..Window::PAYLOAD_LEN, "increment")]
    );
    assert_eq!(
        field_rows("signal-fields"),
        [fixed(0..SignalRequest::PAYLOAD_LEN, "signal")]
    );
    assert_eq!(
        field_rows("exit-fields"),
        [
            byte(exit_field::HOW, "how"),
            byte(exit_field::VALUE, "value"),
            byte(exit_field::FLAGS, "flags"),
            byte(exit_field::REASON, "reason"),
        ]
    );
    assert_eq!(exit_field::REASON + 1, Exit::PAYLOAD_LEN);
    // `how` is 0 for an exit code and 1 for a signal; flag 0x01 is "dumped core".
    let mut payload = [0; Exit::PAYLOAD_LEN];
    Exit {
        termination: Termination::Signaled {
            signal: 6,
            core_dumped: true,
        },
        reason: EndReason::None,
    }
    .emit(&mut payload);
    assert_eq!(payload, [1, 6, 0x01, 0]);
    Exit {
        termination: Termination::Exited(255),
        reason: EndReason::Timeout,
    }
    .emit(&mut payload);
    assert_eq!(payload, [0, 255, 0, 1]);

    assert_eq!(
        field_rows("get-fields"),
        [
            fixed(get_field::OFFSET, "offset"),
            rest(get_field::PATH, "path"),
        ]
    );
    assert_eq!(
        field_rows("put-fields"),
        [
            fixed(put_field::SIZE, "size"),
            byte(put_field::FLAGS, "flags"),
            fixed(put_field::HASH, "hash"),
            rest(put_field::PATH, "path"),
        ]
    );
    assert_eq!(
        field_rows("put-attrs-fields"),
        [
            fixed(put_field::MODE, "mode"),
            fixed(put_field::MTIME_NS, "mtime_ns"),
            rest(put_field::PATH_AFTER_ATTRS, "path"),
        ]
    );
    assert_eq!(
        field_rows("ready-fields"),
        [
            fixed(ready_field::UPLOAD_ID, "upload_id"),
            fixed(ready_field::HELD, "held"),
        ]
    );
    assert_eq!(ready_field::HELD.end, PutReady::PAYLOAD_LEN);
    // LIST, STAT, DELETE and MKDIR carry the path alone: the whole payload.
    assert_eq!(field_rows("path-fields"), [rest(0, "path")]);
    assert_eq!(
        field_rows("set-attrs-fields"),
        [
            fixed(set_attrs_field::MODE, "mode"),
            fixed(set_attrs_field::MTIME_NS, "mtime_ns"),
            rest(set_attrs_field::PATH, "path"),
        ]
    );
    assert_eq!(
        field_rows("entry-fields"),
        [
            byte(entry_field::KIND, "kind"),
            fixed(entry_field::SIZE, "size"),
            fixed(entry_field::MTIME_NS, "mtime_ns"),
            fixed(entry_field::NAME_LEN, "name_len"),
            rest(entry_field::NAME, "name"),
        ]
    );
    assert_eq!(
        field_rows("info-fields"),
        [
            fixed(info_field::SIZE, "size"),
            fixed(info_field::MTIME_NS, "mtime_ns"),
            byte(info_field::KIND, "kind"),
            byte(info_field::FLAGS, "flags"),
            fixed(info_field::HASH, "hash"),
        ]
    );
    assert_eq!(info_field::HASH.end, FileInfo::PAYLOAD_LEN);
    assert_eq!(field_rows("digest-fields"), [fixed(0..HASH_LEN, "hash")]);
    // FILE_INFO's flag 0x01 is "the hash is known"; without it the hash field is zeros.
    let mut payload = [0xa5; FileInfo::PAYLOAD_LEN];
    FileInfo {
        size: 1,
        mtime_ns: -1,
        kind: FileKind::Symlink,
        hash: None,
    }
    .emit(&mut payload);
    assert_eq!(payload[info_field::KIND..info_field::FLAGS + 1], [2, 0]);
    assert_eq!(payload[info_field::MTIME_NS], [0xff; 8], "two's complement");
    assert!(payload[info_field::HASH].iter().all(|&byte| byte == 0));
    FileInfo {
        hash: Some([7; HASH_LEN]),
        ..FileInfo::parse(&payload).unwrap()
    }
    .emit(&mut payload);
    assert_eq!(payload[info_field::FLAGS], 0x01);
}

/// A bit table's rows as (bits, name); the bits cell is hex.
fn bit_rows(name: &str) -> BTreeSet<(u16, String)> {
    table(name)
        .into_iter()
        .map(|row| {
            let bits = u16::from_str_radix(row[0].trim_start_matches("0x"), 16)
                .unwrap_or_else(|_| panic!("bits `{}` are not hex", row[0]));
            (bits, row[1].clone())
        })
        .collect()
}

#[test]
fn flag_tables_match_the_code() {
    let session: BTreeSet<(u16, String)> = [
        (SessionFlags::AUTHENTICATED.bits(), "AUTHENTICATED"),
        (SessionFlags::EXEC.bits(), "EXEC"),
        (SessionFlags::FILES.bits(), "FILES"),
    ]
    .into_iter()
    .map(|(bits, name)| (bits, name.to_string()))
    .collect();
    assert_eq!(bit_rows("session-flags"), session);
    let exec: BTreeSet<(u16, String)> = [
        (ExecFlags::STDIN.bits(), "STDIN".to_string()),
        (ExecFlags::PTY.bits(), "PTY".to_string()),
    ]
    .into();
    assert_eq!(bit_rows("exec-flags"), exec);
    let all = exec.iter().fold(0, |bits, (bit, _)| bits | bit);
    assert_eq!(all, ExecFlags::KNOWN.bits(), "every EXEC flag is listed");
    let put: BTreeSet<(u16, String)> = [
        (PutFlags::HASH_DECLARED.bits(), "HASH_DECLARED"),
        (PutFlags::RESUME.bits(), "RESUME"),
        (PutFlags::ATTRS.bits(), "ATTRS"),
        (PutFlags::DEFER_SYNC.bits(), "DEFER_SYNC"),
        (PutFlags::SYNC_FS.bits(), "SYNC_FS"),
    ]
    .into_iter()
    .map(|(bits, name)| (u16::from(bits), name.to_string()))
    .collect();
    assert_eq!(bit_rows("put-flags"), put);
    let all = put.iter().fold(0, |bits, (bit, _)| bits | bit);
    assert_eq!(
        all,
        u16::from(PutFlags::KNOWN.bits()),
        "every PUT flag is listed"
    );
}

#[test]
fn file_kind_table_matches_the_code() {
    let mut documented = BTreeSet::new();
    for row in table("file-kinds") {
        let value: u8 = row[0].parse().expect("a kind byte");
        let kind = FileKind::from_u8(value);
        assert_eq!(
            kind.to_u8(),
            value,
            "the document assigns kind {value}, the code does not"
        );
        assert_eq!(
            screaming(&format!("{kind:?}")),
            row[1],
            "name of kind {value}"
        );
        documented.insert(value);
    }
    // Unknown bytes read as OTHER, so a kind is assigned when it survives the round trip.
    let known: BTreeSet<u8> = (0..=u8::MAX)
        .filter(|&value| FileKind::from_u8(value).to_u8() == value)
        .collect();
    assert_eq!(documented, known, "every kind is listed");
    assert_eq!(
        FileKind::from_u8(0xff),
        FileKind::Other,
        "unknown kinds read as OTHER"
    );
}

#[test]
fn signal_table_matches_the_code() {
    let mut documented = BTreeSet::new();
    for row in table("signals") {
        let number: u8 = row[0].parse().expect("a signal number");
        let signal = Signal::from_number(number)
            .unwrap_or_else(|| panic!("the document allows signal {number}, the code does not"));
        assert_eq!(signal.to_string(), row[1], "name of signal {number}");
        assert_eq!(signal.number(), number);
        documented.insert(number);
    }
    let allowed: BTreeSet<u8> = (0..=u8::MAX)
        .filter(|&number| Signal::from_number(number).is_some())
        .collect();
    assert_eq!(
        documented, allowed,
        "every signal a client may send is listed"
    );
}

/// `OutputCap` → `OUTPUT_CAP`: the wire name of a reason, from the code's own name for it.
fn screaming(name: &str) -> String {
    let mut out = String::new();
    for (index, letter) in name.chars().enumerate() {
        if letter.is_uppercase() && index > 0 {
            out.push('_');
        }
        out.push(letter.to_ascii_uppercase());
    }
    out
}

#[test]
fn exit_reason_table_matches_the_code() {
    let mut documented = BTreeSet::new();
    for row in table("exit-reasons") {
        let value: u8 = row[0].parse().expect("a reason byte");
        let reason = EndReason::from_u8(value);
        assert!(
            !matches!(reason, EndReason::Other(_)),
            "the document assigns reason {value}, the code does not"
        );
        assert_eq!(
            screaming(&format!("{reason:?}")),
            row[1],
            "name of reason {value}"
        );
        documented.insert(value);
    }
    let known: BTreeSet<u8> = (0..=u8::MAX)
        .filter(|&value| !matches!(EndReason::from_u8(value), EndReason::Other(_)))
        .collect();
    assert_eq!(documented, known, "every reason is listed");
}

fn seconds(duration: Duration) -> String {
    assert_eq!(duration.subsec_nanos(), 0, "{duration:?} is whole seconds");
    format!("{} s", duration.as_secs())
}

#[test]
fn constants_table_matches_the_code() {
    let limits = Limits::default();
    let expected: BTreeMap<&str, String> = [
        ("HEADER_LEN", HEADER_LEN.to_string()),
        ("END_STREAM", format!("0x{:02x}", Flags::END_STREAM.bits())),
        (
            "MAGIC",
            MAGIC
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("PROTOCOL_VERSION", PROTOCOL_VERSION.to_string()),
        ("MIN_PROTOCOL_VERSION", MIN_PROTOCOL_VERSION.to_string()),
        ("EXEC_VERSION", EXEC_VERSION.to_string()),
        (
            "HelloOk::V1_PAYLOAD_LEN",
            HelloOk::V1_PAYLOAD_LEN.to_string(),
        ),
        (
            "HelloOk::V2_PAYLOAD_LEN",
            HelloOk::V2_PAYLOAD_LEN.to_string(),
        ),
        ("MAX_CREDENTIALS_LEN", MAX_CREDENTIALS_LEN.to_string()),
        ("Token::MIN_LEN", Token::MIN_LEN.to_string()),
        ("MAX_ERROR_TEXT_LEN", MAX_ERROR_TEXT_LEN.to_string()),
        ("max_frame_len", limits.max_frame_len.to_string()),
        ("MIN_FRAME_LEN", MIN_FRAME_LEN.to_string()),
        ("MAX_FRAME_LEN", MAX_FRAME_LEN.to_string()),
        ("pre_auth_max_frame", limits.pre_auth_max_frame.to_string()),
        ("MAX_ARGS", MAX_ARGS.to_string()),
        ("MAX_CWD_LEN", MAX_CWD_LEN.to_string()),
        ("MAX_PATH_LEN", MAX_PATH_LEN.to_string()),
        ("MAX_NAME_LEN", MAX_NAME_LEN.to_string()),
        ("HASH_LEN", HASH_LEN.to_string()),
        ("FileInfo::PAYLOAD_LEN", FileInfo::PAYLOAD_LEN.to_string()),
        (
            "FileInfo::WITH_MODE_LEN",
            FileInfo::WITH_MODE_LEN.to_string(),
        ),
        ("PutReady::PAYLOAD_LEN", PutReady::PAYLOAD_LEN.to_string()),
        ("RESERVED_PREFIX", RESERVED_PREFIX.to_string()),
        ("DATA_FRAME_LEN", DATA_FRAME_LEN.to_string()),
        ("LIST_PAGE_LEN", LIST_PAGE_LEN.to_string()),
        ("max_transfers", limits.max_transfers.to_string()),
        ("max_put", limits.max_put.to_string()),
        (
            "PARTIAL_TTL_NS",
            seconds(Duration::from_nanos(PARTIAL_TTL_NS as u64)),
        ),
        (
            "RACY_WINDOW_NS",
            format!("{} ms", RACY_WINDOW_NS / 1_000_000),
        ),
        ("stdin_window", limits.stdin_window.to_string()),
        ("exec_timeout", seconds(limits.exec_timeout)),
        ("exec_kill_grace", seconds(limits.exec_kill_grace)),
        ("exec_drain_timeout", seconds(limits.exec_drain_timeout)),
        ("exec_output_cap", limits.exec_output_cap.to_string()),
        (
            "max_streams_per_connection",
            limits.max_streams_per_connection.to_string(),
        ),
        (
            "MAX_STREAMS_PER_CONNECTION",
            MAX_STREAMS_PER_CONNECTION.to_string(),
        ),
        ("max_exec", limits.max_exec.to_string()),
        (
            "EXEC_ENV",
            EXEC_ENV
                .map(|(name, value)| format!("{name}={value}"))
                .join(", "),
        ),
        ("DEFAULT_ROOT", DEFAULT_ROOT.to_string()),
        ("idle_timeout", seconds(limits.idle_timeout)),
        ("hello_timeout", seconds(limits.hello_timeout)),
        ("frame_timeout", seconds(limits.frame_timeout)),
        ("linger_timeout", seconds(limits.linger_timeout)),
        ("shutdown_grace", seconds(limits.shutdown_grace)),
        ("output_high_water", limits.output_high_water.to_string()),
        ("output_low_water", limits.output_low_water.to_string()),
        ("max_connections", limits.max_connections.to_string()),
        ("MAX_DATAGRAM", MAX_DATAGRAM.to_string()),
        (
            "REFUSED_SOURCE_PORTS",
            REFUSED_SOURCE_PORTS.map(|port| port.to_string()).join(", "),
        ),
        ("udp_queue_len", limits.udp_queue_len.to_string()),
        ("udp_queue_bytes", limits.udp_queue_bytes.to_string()),
        ("DEFAULT_FRAMED_ADDR", DEFAULT_FRAMED_ADDR.to_string()),
        ("DEFAULT_ECHO_ADDR", DEFAULT_ECHO_ADDR.to_string()),
        ("ExecFlags::PTY", format!("0x{:04x}", ExecFlags::PTY.bits())),
        ("MAX_TERM_DIM", MAX_TERM_DIM.to_string()),
        ("MAX_TERM_LEN", MAX_TERM_LEN.to_string()),
        ("Resize::PAYLOAD_LEN", Resize::PAYLOAD_LEN.to_string()),
        (
            "PutFlags::ATTRS",
            format!("0x{:02x}", PutFlags::ATTRS.bits()),
        ),
        (
            "PutFlags::DEFER_SYNC",
            format!("0x{:02x}", PutFlags::DEFER_SYNC.bits()),
        ),
        (
            "PutFlags::SYNC_FS",
            format!("0x{:02x}", PutFlags::SYNC_FS.bits()),
        ),
    ]
    .into_iter()
    .collect();
    let mut documented = BTreeMap::new();
    for row in table("constants") {
        assert!(
            documented.insert(row[0].clone(), row[1].clone()).is_none(),
            "constant `{}` listed twice",
            row[0]
        );
    }
    for (name, value) in &documented {
        let code = expected.get(name.as_str()).unwrap_or_else(|| {
            panic!("the document lists `{name}`, which this test does not know")
        });
        assert_eq!(value, code, "constant `{name}`: document vs code");
    }
    for name in expected.keys() {
        assert!(
            documented.contains_key(*name),
            "constant `{name}` is missing from the document"
        );
    }
}

/// GitHub's heading anchor: lowercase, spaces to hyphens, other punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c.to_lowercase().next().unwrap()),
            _ => None,
        })
        .collect()
}

#[test]
fn every_link_inside_the_document_leads_to_a_heading() {
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in DOC.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') {
            anchors.insert(anchor(line.trim_start_matches('#')));
        }
    }
    let mut links = 0;
    for (at, _) in DOC.match_indices("](#") {
        let target = &DOC[at + 3..];
        let target = &target[..target.find(')').expect("a closed link")];
        assert!(
            anchors.contains(target),
            "link to #{target}, which no heading has"
        );
        links += 1;
    }
    assert!(links > 20, "the document links its sections");
}

/// Section 8.23 and 8.24: the tree transfer's additions, as the code encodes them.
#[test]
fn tree_transfer_dumps_match_the_code() {
    let request = PutRequest {
        size: 1,
        flags: PutFlags::DEFER_SYNC,
        hash: Some(blake3(b"a")),
        attrs: Some(PutAttrs {
            mode: 0o640,
            mtime_ns: MTIME_NS,
        }),
        path: "t/a",
    };
    let put = put_on(9, &request);
    assert_dump("put-attrs", &put);
    assert_eq!(put[HEADER_LEN + put_field::FLAGS], 0x0d);
    let parsed = PutRequest::parse(&put[HEADER_LEN..]).unwrap();
    assert_eq!(parsed.attrs, request.attrs);
    assert_eq!(parsed.path, "t/a");

    let info = FileSession::info();
    let mut payload = [0; FileInfo::WITH_MODE_LEN];
    info.emit(&mut payload);
    FileInfo::emit_mode(0o644, &mut payload);
    let frame = Frame::new(FrameType::FileInfo, Flags::NONE, 7, &payload).to_vec();
    assert_dump("file-info-mode", &frame);
    assert_eq!(
        frame[HEADER_LEN..HEADER_LEN + FileInfo::PAYLOAD_LEN],
        FileSession::file_info()[HEADER_LEN..]
    );
    assert_eq!(
        FileInfo::parse(&payload),
        Ok(info),
        "an older client reads it as before"
    );
}

/// Section 8.25: SET_ATTRS as the code encodes it, and what a real server does with it: the
/// directory gets the permission bits and the mtime, and DONE comes back.
#[test]
fn set_attrs_dump_matches_the_code_and_a_real_server_applies_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let frame = set_attrs_on(11, "t");
    assert_dump("set-attrs", &frame);
    let (header, payload) = dumped_frame("set-attrs");
    assert_frame(header, FrameType::SetAttrs, Flags::NONE, 11);
    let parsed = SetAttrsRequest::parse(&payload).unwrap();
    assert_eq!(parsed.attrs.mode, 0o750);
    assert_eq!(parsed.attrs.mtime_ns, MTIME_NS);
    assert_eq!(parsed.path, "t");

    let server = RealServer::start_with(Limits::default(), Access::ECHO_ONLY, |root| {
        fs::create_dir(root.join("t")).unwrap();
        fs::write(root.join("t/a"), b"a").unwrap();
    });
    let mut client = Reader::connect(&server);
    client.send(&hello());
    client.frame();
    client.send(&frame);
    assert_eq!(client.until_end_of(11), [done(11)]);
    let meta = fs::metadata(server.root.join("t")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    assert_eq!(meta.mtime() * 1_000_000_000 + meta.mtime_nsec(), MTIME_NS);
    drop(client);
    server.stop();
}
