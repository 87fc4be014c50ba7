//! The fuzz targets' entry points (the `fuzzing` feature; hidden from the docs): each takes
//! the fuzzer's bytes and panics on a finding. `fuzz/fuzz_targets/*.rs` call them under
//! cargo-fuzz (nightly), and `tests/fuzz_corpus.rs` replays the seed corpus through the same
//! functions on stable, which is how CI runs every target.
//!
//! | target | what it drives | checked |
//! |---|---|---|
//! | [`decoder`] | [`Decoder`] and every payload parser | no panic; the same frames whatever the splits; frames and parsed payloads encode back to the same bytes |
//! | [`framed_connection`] | a framed [`Connection`](crate::conn::Connection) through [`ConnHarness`] and a [`FuzzIo`] | the [session checks](#the-session-checks) |
//! | [`exec_session`] | the same, authenticated, commands on [`ScriptedChildren`] | the session checks, and the exec checks |
//! | [`tls_session`] | a server `TlsSession` over a [`FuzzIo`]: the client's bytes raw, or a real client's handshake and then garbage or mutated records | no panic, no endless loop; buffers within [`tls::BUFFER_BOUND`]; plaintext only after the handshake, never after the session failed or the end, a prefix of what the real client sent |
//! | [`proxy_header`] | the PROXY header's parser, and the prelude taking a header off a socket fed in pieces | no panic; never more bytes claimed than given; an answer is final; the prelude agrees with the parser and takes exactly the header's bytes |
//! | [`file_session`] | the same, files served from a temporary root, disk jobs on a [`ScriptedDisk`](crate::testkit::ScriptedDisk) | the session checks, and the file checks |
//!
//! # The op script
//! A connection target reads its input as a script: one byte picks the limits (the defaults,
//! or small ones that make backpressure, budgets and windows bite within a few bytes), then
//! ops, each an opcode byte and its arguments (missing bytes read as 0). The ops choose what
//! the peer sends (raw bytes, a frame, or an `Arbitrary` message), how each read and write
//! is cut or refused, when the peer reads, when readiness edges are delivered (the way the
//! reactor sees them: only within the interest, once), when time passes, when the peer sends
//! its FIN, a server shutdown, and for the exec and file targets what the commands do (output,
//! exits, refused spawns, pipe errors) and how disk jobs end. [`Script`] writes such inputs;
//! the seed corpus is made with it (`tests/fuzz_corpus.rs`). With `MONOREACTOR_FUZZ_TRACE`
//! set, the frames the server writes are printed.
//!
//! After the last op the session is *settled*: the peer reads everything, every command
//! closes its pipes and exits, every disk job completes, and the connection is driven until
//! nothing moves; then it is closed and released, as the reactor would.
//!
//! # The session checks
//! - no panic, and no verdict of `Again` forever (10,000 turns without an event);
//! - once settled with the connection up, all the peer's bytes were read and every whole
//!   frame among them handled ([`ConnHarness::input_consumed`]);
//! - everything the server wrote parses as frames, with payloads that parse as their type's
//!   message and stay within the frame limit; only a frame cut by the end of the output (a
//!   short write) may be incomplete, and only while the rest of it is queued; HELLO_OK or
//!   an ERROR comes first; nothing follows an ERROR on stream 0; no frame type a server never
//!   sends;
//! - nothing is written after the write side was shut;
//! - memory stays bounded: the connection's buffers within one maximal input frame plus one
//!   output queue ([`Limits::input_cap`] + [`Limits::output_cap`]), and the output it holds
//!   within the high-water mark plus one maximal frame and one DATA range.
//!
//! # The exec checks
//! - per stream, exactly one EXIT per STARTED: none without a STARTED before it, no second
//!   STARTED before the EXIT, and, once settled, an EXIT for every STARTED unless the
//!   connection closed or the client ended the stream with an ERROR;
//! - never more stdin delivered to a command than the window granted (STARTED plus every
//!   WINDOW), checked whenever all the output is written;
//! - the [`Children`] rules: no call for a released child, no second release, no read into an
//!   empty buffer, a child number never shared by two live commands nor reused in the turn
//!   that freed it; every child released once the connection is closed.
//!
//! # The file checks
//! - nothing visible under the root before a PUT's digest is verified: after every op, every
//!   regular file under the root (hidden `.monoreactor-` names aside) holds either its
//!   contents from before the session or bytes whose BLAKE3 the client sent in a DIGEST.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use crate::client::OwnedFrame;
use crate::conn::{State, Verdict};
use crate::limits::Limits;
use crate::proto::exec::{
    EndReason, ExecRequest, Exit, SignalRequest, Started, Termination, Window,
};
use crate::proto::files::{Digest, Entries, FileInfo, GetRequest, HASH_LEN, PutReady, PutRequest};
use crate::proto::{
    Decoder, ErrorMessage, Flags, Frame, FrameType, HEADER_LEN, Header, Hello, HelloOk,
};
use crate::service::exec::{
    ChildId, ChildSource, Children, OutputPipe, SpawnError, SpawnSpec, Spawned,
};
use crate::testkit::{
    ConnHarness, FrameReader, FuzzIo, ReadStep, Readiness, ScriptedChildren, WriteStep,
};
use crate::timer::Tick;

pub mod proxy;
pub mod tls;
pub use proxy::proxy_header;
pub use tls::tls_session;

/// The token of the exec target's server (what [`Script::hello`] sends with `token: true`).
pub const TOKEN: &[u8] = b"fuzzing-token-0123456789";

/// The opcodes of the op script (an opcode byte is taken modulo 16).
pub mod op {
    /// `len: u16`, `len` bytes: the peer sends them.
    pub const SEND: u8 = 0;
    /// `type: u8`, `flags: u8`, `stream: u8`, `len: u16`, `len` bytes: the peer sends a
    /// frame with that header (the length field filled in).
    pub const FRAME: u8 = 1;
    /// `stream: u8`, `len: u16`, `len` bytes read as an `Arbitrary` client message: the peer
    /// sends it on that stream.
    pub const MESSAGE: u8 = 2;
    /// Every pending readiness edge (the socket's, within its interest, and the commands'
    /// pipes') is delivered, then one drive.
    pub const EVENT: u8 = 3;
    /// `bits: u8`: a socket event whatever happened (1 readable, 2 writable, 4 the FIN seen),
    /// then one drive: spurious events are normal.
    pub const SPURIOUS: u8 = 4;
    /// `kind: u8`, `n: u16`: the next read is cut to `n` bytes (0), would block (1), is
    /// interrupted (2) or fails with a reset (3).
    pub const READ: u8 = 5;
    /// `kind: u8`, `n: u16`: the next write is cut to `n` bytes (0), would block (1), is
    /// interrupted (2) or fails with a broken pipe (3).
    pub const WRITE: u8 = 6;
    /// `n: u16`: the peer reads `n` bytes, making room in the send buffer.
    pub const DRAIN: u8 = 7;
    /// `n: u16`: the send buffer has `n` bytes of room (`0xffff`: unlimited).
    pub const ROOM: u8 = 8;
    /// `ms: u16`: time passes; a deadline that passed is acted on, then one drive.
    pub const TIME: u8 = 9;
    /// Time jumps to the connection's next deadline, which is acted on, then one drive.
    pub const EXPIRE: u8 = 10;
    /// The peer sends its FIN.
    pub const FIN: u8 = 11;
    /// `grace_ms: u16`: the server starts shutting down, then one drive.
    pub const SHUTDOWN: u8 = 12;
    /// `child: u8`, `action: u8`, arguments: a command does something (see [`child`]).
    pub const CHILD: u8 = 13;
    /// `action: u8`: the oldest disk job completes: really (0), with `EIO` (1) or with
    /// `ENOSPC` (2); then one drive.
    pub const DISK: u8 = 14;
    /// One drive without an event.
    pub const TURN: u8 = 15;

    /// The actions of [`CHILD`] (an action byte is taken modulo 13). The child is the
    /// `child`-th spawned (modulo how many were); nothing happens before the first spawn
    /// (but [`child::REFUSE`]) or to a released child.
    pub mod child {
        /// `len: u16`, `len` bytes: written to stdout.
        pub const STDOUT: u8 = 0;
        /// `len: u16`, `len` bytes: written to stderr.
        pub const STDERR: u8 = 1;
        /// The command closes its stdout.
        pub const CLOSE_STDOUT: u8 = 2;
        /// The command closes its stderr.
        pub const CLOSE_STDERR: u8 = 3;
        /// `code: u8`: it exits with that code (once).
        pub const EXIT: u8 = 4;
        /// `signal: u8`: a signal kills it (once).
        pub const KILLED: u8 = 5;
        /// `pipe: u8`, `kind: u8`: the next read of stdout (even) or stderr (odd) is
        /// interrupted (even kind) or fails with an I/O error (odd).
        pub const FAIL_READ: u8 = 6;
        /// `kind: u8`: the next stdin write is interrupted (0), broken (1) or fails (2).
        pub const FAIL_WRITE: u8 = 7;
        /// The next signal to it fails.
        pub const FAIL_SIGNAL: u8 = 8;
        /// The next look at its exit status fails (then the pidfd reports again: a real
        /// `waitid` on a pidfd of our child does not fail, and the fault must not cost the
        /// exit).
        pub const FAIL_EXIT_STATUS: u8 = 9;
        /// `n: u16`: its stdin pipe takes `n` more bytes (the command read them).
        pub const STDIN_ROOM: u8 = 10;
        /// `kind: u8`: the next spawn is refused (not found, permission, limit, failed).
        pub const REFUSE: u8 = 11;
        /// `source: u8`: a spurious event for one of its descriptors.
        pub const SPURIOUS: u8 = 12;
    }
}

/// Whether `MONOREACTOR_FUZZ_TRACE` is set: then the frames the server writes are printed
/// (replaying one input to see what it does).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("MONOREACTOR_FUZZ_TRACE").is_some())
}

/// Turns without an event after which a verdict of `Again` is taken for a loop.
const MAX_AGAIN: usize = 10_000;

/// The fuzzer's bytes, read front to back; past the end every number is 0.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        let Some((&first, rest)) = self.data.split_first() else {
            return 0;
        };
        self.data = rest;
        first
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        taken
    }
}

// ------------------------------------------------------------------------------------------
// The decoder target

/// The `decoder` target: the first byte picks a payload limit and the second a split step;
/// the rest is a byte stream. Checks: [`Decoder::decode`] never panics; decoding the stream
/// whole, in pieces of the chosen size and byte by byte gives the same frames and the same
/// error; each frame encodes back to the bytes it came from; every payload that parses as
/// its type's message (or as any message, for the unknown types) emits bytes that parse to
/// the same message again.
pub fn decoder(data: &[u8]) {
    let mut input = Input { data };
    let max = match input.u8() % 4 {
        0 => u32::MAX,
        1 => 4096,
        2 => 64,
        _ => 0,
    };
    let step = usize::from(input.u8()).max(1);
    let stream = input.data;
    let decoder = Decoder::new(max);

    let whole = decode_all(&decoder, max, stream, stream.len().max(1));
    for piece in [step, 1] {
        assert_eq!(
            decode_all(&decoder, max, stream, piece),
            whole,
            "decoding in pieces of {piece} differs from decoding whole"
        );
    }
    let mut at = 0;
    for frame in &whole.0 {
        let wire = Frame::new(
            frame.header.frame_type,
            frame.header.flags,
            frame.header.stream,
            &frame.payload,
        )
        .to_vec();
        assert_eq!(
            wire,
            stream[at..at + wire.len()],
            "a frame re-encodes differently"
        );
        at += wire.len();
        check_payload_roundtrip(frame.header.frame_type, &frame.payload);
    }
    // A header alone parses the same way the decoder sees it.
    if stream.len() >= HEADER_LEN {
        let _ = Header::parse(stream, max);
    }
}

/// The frames of `stream` fed `piece` bytes at a time, and the error that stopped it.
fn decode_all(
    decoder: &Decoder,
    max: u32,
    stream: &[u8],
    piece: usize,
) -> (Vec<OwnedFrame>, Option<crate::proto::DecodeError>) {
    let mut frames = Vec::new();
    let mut buffered: Vec<u8> = Vec::new();
    for chunk in stream.chunks(piece) {
        buffered.extend_from_slice(chunk);
        loop {
            match decoder.decode(&buffered) {
                Ok(Some(frame)) => {
                    assert_eq!(frame.header.len as usize, frame.payload.len());
                    assert!(frame.header.len <= max);
                    let len = frame.wire_len();
                    frames.push(OwnedFrame {
                        header: frame.header,
                        payload: frame.payload.to_vec(),
                    });
                    buffered.drain(..len);
                }
                Ok(None) => break,
                Err(error) => return (frames, Some(error)),
            }
        }
    }
    (frames, None)
}

/// Parse, emit, parse again: the two parses agree.
fn check_payload_roundtrip(frame_type: FrameType, payload: &[u8]) {
    macro_rules! fixed {
        ($type:ty, $len:expr) => {
            if let Ok(message) = <$type>::parse(payload) {
                let mut out = vec![0; $len];
                message.emit(&mut out);
                assert_eq!(
                    <$type>::parse(&out).ok(),
                    Some(message),
                    "{frame_type} round trip"
                );
            }
        };
    }
    macro_rules! sized {
        ($type:ty) => {
            if let Ok(message) = <$type>::parse(payload) {
                let mut out = vec![0; message.payload_len()];
                message.emit(&mut out);
                assert_eq!(
                    <$type>::parse(&out).ok(),
                    Some(message),
                    "{frame_type} round trip"
                );
            }
        };
    }
    let all = matches!(frame_type, FrameType::Unknown(_));
    if all || frame_type == FrameType::Hello {
        sized!(Hello);
    }
    if all || frame_type == FrameType::HelloOk {
        sized!(HelloOk);
    }
    if all || frame_type == FrameType::Error {
        sized!(ErrorMessage);
    }
    if all || frame_type == FrameType::Exec {
        sized!(ExecRequest);
    }
    if all || frame_type == FrameType::Started {
        fixed!(Started, Started::PAYLOAD_LEN);
    }
    if all || frame_type == FrameType::Window {
        fixed!(Window, Window::PAYLOAD_LEN);
    }
    if all || frame_type == FrameType::Signal {
        fixed!(SignalRequest, SignalRequest::PAYLOAD_LEN);
    }
    if all || frame_type == FrameType::Resize {
        fixed!(
            crate::proto::exec::Resize,
            crate::proto::exec::Resize::PAYLOAD_LEN
        );
    }
    if all || frame_type == FrameType::Exit {
        fixed!(Exit, Exit::PAYLOAD_LEN);
    }
    if all || frame_type == FrameType::Get {
        sized!(GetRequest);
    }
    if all || frame_type == FrameType::Put {
        sized!(PutRequest);
    }
    if all || frame_type == FrameType::FileInfo {
        fixed!(FileInfo, FileInfo::PAYLOAD_LEN);
    }
    if all || frame_type == FrameType::Digest {
        fixed!(Digest, Digest::PAYLOAD_LEN);
    }
    if all || frame_type == FrameType::PutReady {
        fixed!(PutReady, PutReady::PAYLOAD_LEN);
    }
    if all || frame_type == FrameType::Entries {
        for entry in Entries::new(payload) {
            if entry.is_err() {
                break;
            }
        }
    }
    if all || frame_type.is_file_request() {
        let _ = crate::proto::files::parse_path(payload);
        let _ = crate::proto::files::parse_delete_path(payload);
    }
}

// ------------------------------------------------------------------------------------------
// Client messages

/// A message a client sends, for the [`op::MESSAGE`] op.
#[derive(Debug, Arbitrary)]
enum ClientMessage<'a> {
    /// HELLO with the server's token (the exec target's [`TOKEN`]).
    Authenticate,
    Hello(Hello<'a>),
    Echo(&'a [u8]),
    Exec(ExecRequest<'a>),
    Stdin(&'a [u8]),
    StdinEof,
    Signal(SignalRequest),
    Get(GetRequest<'a>),
    Put(PutRequest<'a>),
    Data(&'a [u8]),
    Digest(Digest),
    List(&'a str),
    Stat(&'a str),
    Delete(&'a str),
    Mkdir(&'a str),
    Error(ErrorMessage<'a>),
    Frame(Frame<'a>),
}

impl ClientMessage<'_> {
    fn encode(&self, stream: u32, out: &mut Vec<u8>) {
        let mut frame = |frame_type, payload: &[u8]| {
            Frame::new(frame_type, Flags::NONE, stream, payload).encode_into(out);
        };
        match self {
            ClientMessage::Authenticate => Hello::with_credentials(TOKEN).encode(out),
            ClientMessage::Hello(hello) => hello.encode(out),
            ClientMessage::Echo(bytes) => frame(FrameType::EchoRequest, bytes),
            ClientMessage::Exec(request) => request.encode(stream, out),
            ClientMessage::Stdin(bytes) => frame(FrameType::Stdin, bytes),
            ClientMessage::StdinEof => frame(FrameType::StdinEof, &[]),
            ClientMessage::Signal(signal) => {
                let mut payload = [0; SignalRequest::PAYLOAD_LEN];
                signal.emit(&mut payload);
                frame(FrameType::Signal, &payload);
            }
            ClientMessage::Get(request) => {
                let mut payload = vec![0; request.payload_len()];
                request.emit(&mut payload);
                frame(FrameType::Get, &payload);
            }
            ClientMessage::Put(request) => {
                let mut payload = vec![0; request.payload_len()];
                request.emit(&mut payload);
                frame(FrameType::Put, &payload);
            }
            ClientMessage::Data(bytes) => frame(FrameType::Data, bytes),
            ClientMessage::Digest(digest) => frame(FrameType::Digest, &digest.hash),
            ClientMessage::List(path) => frame(FrameType::List, path.as_bytes()),
            ClientMessage::Stat(path) => frame(FrameType::Stat, path.as_bytes()),
            ClientMessage::Delete(path) => frame(FrameType::Delete, path.as_bytes()),
            ClientMessage::Mkdir(path) => frame(FrameType::Mkdir, path.as_bytes()),
            ClientMessage::Error(error) => error.encode(stream, out),
            ClientMessage::Frame(raw) => raw.encode_into(out),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Checking children

/// The [`Children`] of the exec target: a [`ScriptedChildren`] behind checks of the rules
/// the real I/O layer relies on, and the readiness edges its pipes and pidfds would raise.
#[derive(Debug)]
struct CheckedChildren {
    inner: ScriptedChildren,
    /// The loop's turn, set before each drive.
    turn: u64,
    /// The live child of each child number.
    live: HashMap<u8, ChildId>,
    /// Child numbers released, with the turn.
    freed: HashMap<u8, u64>,
    /// Edges not delivered yet: (child number, descriptor).
    edges: BTreeSet<(u8, ChildSource)>,
}

impl CheckedChildren {
    fn new() -> CheckedChildren {
        CheckedChildren {
            inner: ScriptedChildren::new(),
            turn: 0,
            live: HashMap::new(),
            freed: HashMap::new(),
            edges: BTreeSet::new(),
        }
    }
}

impl Children for CheckedChildren {
    fn spawn(&mut self, index: u8, spec: &SpawnSpec<'_>) -> Result<Spawned, SpawnError> {
        assert!(index < 64, "child number {index} out of range");
        assert!(
            !self.live.contains_key(&index),
            "child number {index} given to a second live command"
        );
        assert!(
            self.freed.get(&index) != Some(&self.turn),
            "child number {index} reused in the turn that freed it"
        );
        let spawned = self.inner.spawn(index, spec)?;
        self.live.insert(index, spawned.child);
        if spec.stdin || spec.pty.is_some() {
            // Registering a writable pipe reports it at once.
            self.edges.insert((index, ChildSource::Stdin));
        }
        Ok(spawned)
    }

    fn read(&mut self, child: ChildId, pipe: OutputPipe, buf: &mut [u8]) -> std::io::Result<usize> {
        assert!(
            !buf.is_empty(),
            "a pipe read into an empty buffer: its 0 would read as EOF"
        );
        self.inner.read(child, pipe, buf)
    }

    fn write_stdin(&mut self, child: ChildId, bytes: &[u8]) -> std::io::Result<usize> {
        self.inner.write_stdin(child, bytes)
    }

    fn close_stdin(&mut self, child: ChildId) {
        self.inner.close_stdin(child);
    }

    fn close_output(&mut self, child: ChildId, pipe: OutputPipe) {
        self.inner.close_output(child, pipe);
    }

    fn signal(
        &mut self,
        child: ChildId,
        signal: crate::proto::exec::Signal,
    ) -> std::io::Result<()> {
        self.inner.signal(child, signal)
    }

    fn resize(&mut self, child: ChildId, size: crate::proto::exec::Resize) -> std::io::Result<()> {
        self.inner.resize(child, size)
    }

    fn exit_status(&mut self, child: ChildId) -> std::io::Result<Option<Termination>> {
        let status = self.inner.exit_status(child);
        if status.is_err() {
            // Only an injected fault gets here: `waitid(P_PIDFD, WNOHANG | WNOWAIT)` on a
            // child of ours does not fail. The connection drops the pidfd's readiness on an
            // error, and a real pidfd would not report its exit twice; so that the fault
            // costs a look and not the exit, the pidfd reports again.
            let index = self.inner.all()[child.0 as usize].index;
            self.edges.insert((index, ChildSource::Exit));
        }
        status
    }

    fn release(&mut self, child: ChildId, reason: EndReason) {
        self.inner.release(child, reason);
        let index = self.inner.all()[child.0 as usize].index;
        self.live.remove(&index);
        self.freed.insert(index, self.turn);
        // Its descriptors are deregistered: no more events.
        self.edges.retain(|(edge, _)| *edge != index);
    }
}

// ------------------------------------------------------------------------------------------
// What the server wrote

/// One exec stream as its frames show it.
#[derive(Debug, Default)]
struct ExecStreamSeen {
    /// The command started and has not ended.
    open: bool,
    /// Its child (pid - 1000 for scripted children).
    child: usize,
}

/// The server's output, checked frame by frame as it is written.
#[derive(Debug, Default)]
struct OutputCheck {
    reader: FrameReader,
    /// Bytes of the transport's output already pushed into the reader.
    seen: usize,
    frames: usize,
    /// An ERROR on stream 0 was read: the connection is over.
    fatal: bool,
    streams: HashMap<u32, ExecStreamSeen>,
    /// Stdin credit granted per child: STARTED's window plus every WINDOW.
    granted: HashMap<usize, u64>,
    /// STARTED frames seen, and EXIT frames.
    started: usize,
    exits: usize,
}

impl OutputCheck {
    fn read(&mut self, output: &[u8], limits: &Limits) {
        self.reader.push(&output[self.seen..]);
        self.seen = output.len();
        loop {
            let frame = match self.reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(error) => panic!("the server wrote an invalid frame header: {error}"),
            };
            self.check(&frame, limits);
        }
    }

    fn check(&mut self, frame: &OwnedFrame, limits: &Limits) {
        let header = frame.header;
        if trace() {
            eprintln!(
                "server: {} stream {} {} bytes",
                header.frame_type, header.stream, header.len
            );
        }
        let payload = &frame.payload[..];
        let kind = header.frame_type;
        assert!(
            !self.fatal,
            "{kind} on stream {} after the connection's ERROR",
            header.stream
        );
        assert!(
            header.len <= limits.max_frame_len,
            "{kind} of {} bytes, over the frame limit",
            header.len
        );
        if self.frames == 0 {
            assert!(
                matches!(kind, FrameType::HelloOk | FrameType::Error),
                "the first frame is {kind}"
            );
        }
        self.frames += 1;
        let stream = header.stream;
        match kind {
            FrameType::HelloOk => {
                assert_eq!(self.frames, 1, "a second HELLO_OK");
                HelloOk::parse(payload).expect("HELLO_OK parses");
            }
            FrameType::Error => {
                ErrorMessage::parse(payload).expect("ERROR parses");
                if stream == 0 {
                    self.fatal = true;
                } else if let Some(seen) = self.streams.get_mut(&stream) {
                    seen.open = false;
                }
            }
            FrameType::EchoReply | FrameType::Data | FrameType::Done => {}
            FrameType::Started => {
                let started = Started::parse(payload).expect("STARTED parses");
                let seen = self.streams.entry(stream).or_default();
                assert!(
                    !seen.open,
                    "a second STARTED on stream {stream} before its EXIT"
                );
                seen.open = true;
                seen.child = started.pid.wrapping_sub(1000) as usize;
                self.granted
                    .insert(seen.child, u64::from(started.stdin_window));
                self.started += 1;
            }
            FrameType::Window => {
                let window = Window::parse(payload).expect("WINDOW parses");
                let seen = self.open_stream(stream, kind);
                *self.granted.entry(seen).or_default() += u64::from(window.increment);
            }
            FrameType::Stdout | FrameType::Stderr => {
                assert!(!payload.is_empty(), "an empty {kind}");
                self.open_stream(stream, kind);
            }
            FrameType::Exit => {
                Exit::parse(payload).expect("EXIT parses");
                self.open_stream(stream, kind);
                self.streams.get_mut(&stream).expect("open").open = false;
                self.exits += 1;
            }
            FrameType::FileInfo => {
                FileInfo::parse(payload).expect("FILE_INFO parses");
            }
            FrameType::Digest => {
                Digest::parse(payload).expect("DIGEST parses");
            }
            FrameType::PutReady => {
                PutReady::parse(payload).expect("PUT_READY parses");
            }
            FrameType::Entries => {
                for entry in Entries::new(payload) {
                    entry.expect("ENTRIES parse");
                }
            }
            other => panic!("the server sent {other}, which only a client sends"),
        }
    }

    /// The child of the command open on `stream`; panics if none is.
    fn open_stream(&self, stream: u32, kind: FrameType) -> usize {
        match self.streams.get(&stream) {
            Some(seen) if seen.open => seen.child,
            _ => panic!("{kind} on stream {stream}, which has no command running"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// The file target's root

static ROOTS: AtomicU64 = AtomicU64::new(0);

/// A temporary root with a few files in it, removed on drop.
#[derive(Debug)]
struct TempRoot {
    path: PathBuf,
    /// BLAKE3 of every content a file may show: those from before the session.
    before: HashSet<[u8; HASH_LEN]>,
}

impl TempRoot {
    fn new() -> TempRoot {
        let path = std::env::temp_dir().join(format!(
            "monoreactor-fuzz-{}-{}",
            std::process::id(),
            ROOTS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("d")).expect("a temporary root");
        let files: [(&str, &[u8]); 3] = [
            ("a.txt", b"hello, world\n"),
            ("d/b.bin", &[0, 1, 2]),
            ("empty", b""),
        ];
        let mut before = HashSet::new();
        for (name, contents) in files {
            std::fs::write(path.join(name), contents).expect("a seed file");
            before.insert(*blake3::hash(contents).as_bytes());
        }
        TempRoot { path, before }
    }

    /// Every regular file under the root holds contents from before or verified ones.
    fn check(&self, verified: &HashSet<[u8; HASH_LEN]>) {
        let mut dirs = vec![self.path.clone()];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name
                    .to_string_lossy()
                    .starts_with(crate::proto::path::RESERVED_PREFIX)
                {
                    continue;
                }
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                if kind.is_dir() {
                    dirs.push(entry.path());
                } else if kind.is_file() {
                    let Ok(contents) = std::fs::read(entry.path()) else {
                        continue;
                    };
                    let hash = *blake3::hash(&contents).as_bytes();
                    assert!(
                        self.before.contains(&hash) || verified.contains(&hash),
                        "{} is visible with {} bytes no DIGEST verified",
                        relative(&self.path, &entry.path()),
                        contents.len()
                    );
                }
            }
        }
    }
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ------------------------------------------------------------------------------------------
// A session

/// Which connection target runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Framed,
    Exec,
    Files,
}

/// One connection, its peer and everything the checks need.
struct Session {
    harness: ConnHarness<CheckedChildren>,
    io: FuzzIo,
    output: OutputCheck,
    /// The client's frames as sent, to collect its DIGESTs and its stream ERRORs.
    client: FrameReader,
    client_broken: bool,
    digests: HashSet<[u8; HASH_LEN]>,
    /// Streams the client ended with an ERROR.
    abandoned: HashSet<u32>,
    root: Option<TempRoot>,
    /// The connection said `Close` and was released.
    closed: bool,
}

/// The limits of a session: the defaults, or small ones.
fn limits(choice: u8) -> Limits {
    let limits = if choice % 2 == 0 {
        Limits::default()
    } else {
        Limits {
            max_frame_len: 4096,
            pre_auth_max_frame: 1024,
            io_buffer_len: 1024,
            output_high_water: 2048,
            output_low_water: 512,
            read_budget: 3000,
            frame_budget: 4,
            stdin_window: 100,
            disk_budget: 5000,
            max_streams_per_connection: 2,
            exec_output_cap: 10_000,
            ..Limits::default()
        }
    };
    debug_assert_eq!(limits.validate(), Ok(()));
    limits
}

impl Session {
    fn new(target: Target, limits: Limits) -> Session {
        // Commands run on checked scripted children behind the token; the other targets
        // serve echo (and files) to anyone, and refuse EXEC.
        let mut harness = ConnHarness::framed(limits).with_children(TOKEN, CheckedChildren::new());
        if target != Target::Exec {
            harness.access = crate::access::Access::ECHO_ONLY;
            harness.children = None;
        }
        let root = (target == Target::Files).then(TempRoot::new);
        if let Some(root) = &root {
            harness = harness.with_files(&root.path).with_disk();
        }
        Session {
            harness,
            io: FuzzIo::new(),
            output: OutputCheck::default(),
            client: FrameReader::new(),
            client_broken: false,
            digests: HashSet::new(),
            abandoned: HashSet::new(),
            root,
            closed: false,
        }
    }

    fn children(&mut self) -> Option<&mut CheckedChildren> {
        self.harness.children.as_mut()
    }

    /// The peer sends `bytes`.
    fn send(&mut self, bytes: &[u8]) {
        if self.io.peer_closed() {
            return;
        }
        self.io.push(bytes);
        if self.client_broken {
            return;
        }
        self.client.push(bytes);
        loop {
            match self.client.next_frame() {
                Ok(Some(frame)) => {
                    if frame.header.frame_type == FrameType::Digest
                        && frame.payload.len() == HASH_LEN
                    {
                        let mut hash = [0; HASH_LEN];
                        hash.copy_from_slice(&frame.payload);
                        self.digests.insert(hash);
                    }
                    if frame.header.frame_type == FrameType::Error {
                        self.abandoned.insert(frame.header.stream);
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    self.client_broken = true;
                    break;
                }
            }
        }
    }

    /// One drive (after the readiness was recorded), then the turns `Again` asks for.
    fn drive(&mut self) {
        self.step(|harness, io| harness.drive(io));
    }

    /// One call of the harness that ends in a drive (an event's, a timer's, a disk
    /// completion's, a shutdown's), then the turns `Again` asks for, each checked.
    fn step(
        &mut self,
        call: impl FnOnce(&mut ConnHarness<CheckedChildren>, &mut FuzzIo) -> Verdict,
    ) {
        if self.closed {
            return;
        }
        let mut verdict = self.checked(call);
        let mut turns = 0;
        while verdict == Verdict::Again {
            turns += 1;
            assert!(turns < MAX_AGAIN, "still Again after {MAX_AGAIN} turns");
            verdict = self.checked(|harness, io| harness.drive(io));
        }
        if verdict == Verdict::Close {
            self.close();
        }
    }

    fn checked(
        &mut self,
        call: impl FnOnce(&mut ConnHarness<CheckedChildren>, &mut FuzzIo) -> Verdict,
    ) -> Verdict {
        // Every call of the harness that drives starts a new turn.
        let turn = self.harness.turn + 1;
        if let Some(children) = self.children() {
            children.turn = turn;
        }
        let verdict = call(&mut self.harness, &mut self.io);
        self.after_drive();
        verdict
    }

    /// The checks that hold after every drive.
    fn after_drive(&mut self) {
        let limits = self.harness.limits.clone();
        let conn = &self.harness.conn;
        assert!(
            conn.buffer_capacity() <= limits.input_cap() + limits.output_cap(),
            "the connection holds {} bytes of buffers",
            conn.buffer_capacity()
        );
        let data_range = limits.max_frame_len as usize + HEADER_LEN;
        assert!(
            conn.pending_output() <= limits.output_cap() + data_range + 4096,
            "the connection holds {} bytes of output",
            conn.pending_output()
        );
        assert_eq!(
            self.io.writes_after_shutdown(),
            0,
            "a write after the write side was shut"
        );
        self.output.read(self.io.output(), &limits);
        if conn.pending_output() == 0 {
            // The outbox holds whole frames: with nothing left in it, what was written ends
            // on a frame boundary (unless a planned error broke the connection mid-frame, or
            // it is closed and dropped what it held).
            if self.io.failures() == 0 && conn.state() != State::Closed {
                assert_eq!(
                    self.output.reader.partial(),
                    0,
                    "nothing is left to write and the output ends inside a frame"
                );
            }
            self.check_stdin_windows();
        }
        if let (Some(root), false) = (&self.root, self.closed) {
            root.check(&self.digests);
        }
    }

    /// Never more stdin delivered to a child than the credit its frames granted.
    fn check_stdin_windows(&mut self) {
        let Some(children) = self.harness.children.as_ref() else {
            return;
        };
        for (n, child) in children.inner.all().iter().enumerate() {
            let granted = self.output.granted.get(&n).copied().unwrap_or(0);
            assert!(
                child.stdin.len() as u64 <= granted,
                "child {n} got {} stdin bytes, {granted} granted",
                child.stdin.len()
            );
        }
    }

    /// The socket's pending edges (within the interest) and the commands', then one drive.
    fn event(&mut self) {
        let interest = self.harness.conn.interest();
        let socket = self
            .io
            .take_readiness(interest.is_readable(), interest.is_writable());
        let mut any = false;
        if let Some(ready) = socket {
            self.harness.conn.on_ready(ready.readable, ready.writable);
            if ready.read_closed {
                self.harness.conn.on_read_closed();
            }
            any = true;
        }
        if let Some(children) = self.harness.children.as_mut() {
            for (index, source) in std::mem::take(&mut children.edges) {
                self.harness.conn.on_child_ready(index, source);
                any = true;
            }
        }
        if any {
            self.drive();
        }
    }

    /// Time moves to `at`; a passed deadline is acted on; one drive.
    fn advance(&mut self, at: Tick) {
        self.step(|harness, io| harness.advance_to(io, at));
    }

    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.harness.release();
        }
    }

    fn run_op(&mut self, input: &mut Input<'_>) {
        match input.u8() % 16 {
            op::SEND => {
                let len = usize::from(input.u16());
                let bytes = input.bytes(len);
                self.send(bytes);
            }
            op::FRAME => {
                let frame_type = FrameType::from_u8(input.u8());
                let flags = input.u8() & 1;
                let stream = u32::from(input.u8());
                let len = usize::from(input.u16());
                let payload = input.bytes(len);
                let flags = Flags::from_bits(flags).unwrap_or(Flags::NONE);
                let wire = Frame::new(frame_type, flags, stream, payload).to_vec();
                self.send(&wire);
            }
            op::MESSAGE => {
                let stream = u32::from(input.u8());
                let len = usize::from(input.u16());
                let mut u = Unstructured::new(input.bytes(len));
                if let Ok(message) = ClientMessage::arbitrary(&mut u) {
                    let mut wire = Vec::new();
                    message.encode(stream, &mut wire);
                    self.send(&wire);
                }
            }
            op::EVENT => self.event(),
            op::SPURIOUS => {
                let bits = input.u8();
                if !self.closed {
                    self.harness.conn.on_ready(bits & 1 != 0, bits & 2 != 0);
                    if bits & 4 != 0 && self.io.peer_closed() {
                        self.harness.conn.on_read_closed();
                    }
                    self.drive();
                }
            }
            op::READ => {
                let kind = input.u8();
                let n = usize::from(input.u16());
                self.io.plan_read(match kind % 4 {
                    0 => ReadStep::Upto(n),
                    1 => ReadStep::WouldBlock,
                    2 => ReadStep::Error(ErrorKind::Interrupted),
                    _ => ReadStep::Error(ErrorKind::ConnectionReset),
                });
            }
            op::WRITE => {
                let kind = input.u8();
                let n = usize::from(input.u16());
                self.io.plan_write(match kind % 4 {
                    0 => WriteStep::Upto(n),
                    1 => WriteStep::WouldBlock,
                    2 => WriteStep::Error(ErrorKind::Interrupted),
                    _ => WriteStep::Error(ErrorKind::BrokenPipe),
                });
            }
            op::DRAIN => {
                let n = usize::from(input.u16());
                self.io.drain(n);
            }
            op::ROOM => {
                let n = input.u16();
                self.io.set_room(if n == u16::MAX {
                    usize::MAX
                } else {
                    usize::from(n)
                });
            }
            op::TIME => {
                let ms = u64::from(input.u16());
                let at = self.harness.now.after(Duration::from_millis(ms));
                self.advance(at);
            }
            op::EXPIRE => {
                let deadline = self.harness.conn.deadline(&self.harness.limits);
                if deadline != Tick::NEVER {
                    self.advance(deadline);
                }
            }
            op::FIN => self.io.close(),
            op::SHUTDOWN => {
                let grace = Duration::from_millis(u64::from(input.u16()));
                self.step(|harness, io| harness.shutdown(io, grace));
            }
            op::CHILD => self.child_op(input),
            op::DISK => {
                let action = input.u8();
                self.disk_op(action);
            }
            _ => {
                // op::TURN
                self.drive();
            }
        }
    }

    fn child_op(&mut self, input: &mut Input<'_>) {
        use op::child;
        let which = usize::from(input.u8());
        let action = input.u8() % 13;
        let Some(children) = self.harness.children.as_mut() else {
            return;
        };
        if action == child::REFUSE {
            let text = "refused by the script".to_string();
            children.inner.refuse_next(match input.u8() % 4 {
                0 => SpawnError::NotFound(text),
                1 => SpawnError::PermissionDenied(text),
                2 => SpawnError::LimitReached(text),
                _ => SpawnError::Failed(text),
            });
            return;
        }
        let count = children.inner.all().len();
        // Read the arguments whatever happens, so that the script stays aligned.
        let (len, bytes, arg) = match action {
            child::STDOUT | child::STDERR => {
                let len = usize::from(input.u16());
                (len, input.bytes(len), 0)
            }
            child::STDIN_ROOM => (usize::from(input.u16()), &[][..], 0),
            child::FAIL_READ => (
                0,
                &[][..],
                u16::from(input.u8()) << 8 | u16::from(input.u8()),
            ),
            child::EXIT | child::KILLED | child::FAIL_WRITE | child::SPURIOUS => {
                (0, &[][..], u16::from(input.u8()))
            }
            _ => (0, &[][..], 0),
        };
        if count == 0 {
            return;
        }
        let n = which % count;
        let scripted = children.inner.nth(n);
        if scripted.released.is_some() {
            return;
        }
        let index = scripted.index;
        let mut edge = None;
        match action {
            child::STDOUT | child::STDERR => {
                let pipe = if action == child::STDOUT {
                    OutputPipe::Stdout
                } else {
                    OutputPipe::Stderr
                };
                if scripted.try_write(pipe, bytes).is_ok() && !bytes.is_empty() {
                    edge = Some(source_of(pipe));
                }
            }
            child::CLOSE_STDOUT | child::CLOSE_STDERR => {
                let pipe = if action == child::CLOSE_STDOUT {
                    OutputPipe::Stdout
                } else {
                    OutputPipe::Stderr
                };
                if !scripted.output_eof(pipe) {
                    scripted.close(pipe);
                    edge = Some(source_of(pipe));
                }
            }
            child::EXIT | child::KILLED => {
                if scripted.exited().is_none() {
                    scripted.exit(if action == child::EXIT {
                        Termination::Exited(arg as u8)
                    } else {
                        Termination::Signaled {
                            signal: arg as u8,
                            core_dumped: arg & 0x80 != 0,
                        }
                    });
                    edge = Some(ChildSource::Exit);
                }
            }
            child::FAIL_READ => {
                let pipe = if (arg >> 8) % 2 == 0 {
                    OutputPipe::Stdout
                } else {
                    OutputPipe::Stderr
                };
                let kind = if arg % 2 == 0 {
                    ErrorKind::Interrupted
                } else {
                    ErrorKind::Other
                };
                scripted.fail_read(pipe, kind);
            }
            child::FAIL_WRITE => {
                scripted.fail_write(match arg % 3 {
                    0 => ErrorKind::Interrupted,
                    1 => ErrorKind::BrokenPipe,
                    _ => ErrorKind::Other,
                });
            }
            child::FAIL_SIGNAL => {
                scripted.fail_signal(ErrorKind::Other);
            }
            child::FAIL_EXIT_STATUS => {
                scripted.fail_exit_status(ErrorKind::Other);
            }
            child::STDIN_ROOM => {
                if len > 0 {
                    scripted.stdin_room = scripted.stdin_room.saturating_add(len);
                    edge = Some(ChildSource::Stdin);
                }
            }
            _ => {
                // child::SPURIOUS
                edge = Some(ChildSource::ALL[usize::from(arg) % 4]);
            }
        }
        if let Some(source) = edge {
            children.edges.insert((index, source));
        }
    }

    fn disk_op(&mut self, action: u8) {
        if self.closed {
            return;
        }
        let Some(disk) = self.harness.disk.as_mut() else {
            return;
        };
        let done = match action % 3 {
            0 => disk.run_next(),
            1 => disk.finish_next(Err(rustix::io::Errno::IO)),
            _ => disk.finish_next(Err(rustix::io::Errno::NOSPC)),
        };
        if let Some(done) = done {
            self.step(|harness, io| harness.disk_done(io, done));
        }
    }

    /// The end of the script: everything that was waiting happens, until nothing moves.
    fn settle(&mut self) {
        self.io.set_room(usize::MAX);
        // Each round either moves something or takes a fault the script planned (at most
        // one per three input bytes).
        for _ in 0..4096 {
            if self.closed {
                break;
            }
            let before = (
                self.io.output().len(),
                self.harness.input_read,
                self.harness.conn.state(),
            );
            if let Some(children) = self.harness.children.as_mut() {
                let live: Vec<usize> = children
                    .inner
                    .all()
                    .iter()
                    .enumerate()
                    .filter(|(_, child)| child.released.is_none())
                    .map(|(n, _)| n)
                    .collect();
                for n in live {
                    let child = children.inner.nth(n);
                    let index = child.index;
                    for pipe in OutputPipe::BOTH {
                        if !child.output_eof(pipe) {
                            child.close(pipe);
                            children.edges.insert((index, source_of(pipe)));
                        }
                    }
                    if child.exited().is_none() {
                        child.exit(Termination::Exited(0));
                        children.edges.insert((index, ChildSource::Exit));
                    }
                    child.stdin_room = usize::MAX;
                    children.edges.insert((index, ChildSource::Stdin));
                }
            }
            let mut disk_work = false;
            while self
                .harness
                .disk
                .as_ref()
                .is_some_and(|disk| disk.pending().next().is_some())
            {
                self.disk_op(0);
                disk_work = true;
            }
            self.harness.conn.on_ready(true, true);
            self.event();
            self.drive();
            let after = (
                self.io.output().len(),
                self.harness.input_read,
                self.harness.conn.state(),
            );
            let edges_left = self
                .harness
                .children
                .as_ref()
                .is_some_and(|children| !children.edges.is_empty());
            let interest = self.harness.conn.interest();
            let socket_edge = self
                .io
                .peek_readiness(interest.is_readable(), interest.is_writable())
                != Readiness::default();
            if before == after && !disk_work && !edges_left && !socket_edge {
                break;
            }
        }
        if !self.closed {
            self.check_settled();
        }
        // Close it as the reactor would, past every deadline.
        for _ in 0..16 {
            if self.closed {
                break;
            }
            let deadline = self.harness.conn.deadline(&self.harness.limits);
            if deadline == Tick::NEVER {
                break;
            }
            self.advance(deadline);
        }
        self.close();
        if let Some(children) = self.harness.children.as_ref() {
            let unreleased: Vec<u8> = children.inner.unreleased().map(|c| c.index).collect();
            assert!(
                unreleased.is_empty(),
                "children {unreleased:?} never released after the connection closed"
            );
        }
        if let Some(root) = &self.root {
            root.check(&self.digests);
        }
    }

    /// Once settled with the connection still up: every command's EXIT was written.
    fn check_settled(&mut self) {
        let state = self.harness.conn.state();
        if matches!(state, State::Closing | State::Closed) || self.output.fatal {
            return;
        }
        if self.harness.conn.pending_output() > 0 {
            // Still held by a write error the script planned; nothing more to say.
            return;
        }
        // The peer's bytes were all read, and every whole frame among them handled: what the
        // connection still holds is the start of a frame the peer never finished.
        assert_eq!(self.io.unread(), 0, "settled with input left unread");
        if !self.client_broken {
            assert_eq!(
                self.harness.conn.pending_input(),
                self.client.partial(),
                "settled with whole frames unhandled"
            );
        }
        for (stream, seen) in &self.output.streams {
            assert!(
                !seen.open || self.abandoned.contains(stream),
                "stream {stream}: STARTED and, settled, no EXIT ({} STARTED, {} EXIT)",
                self.output.started,
                self.output.exits
            );
        }
    }
}

fn source_of(pipe: OutputPipe) -> ChildSource {
    match pipe {
        OutputPipe::Stdout => ChildSource::Stdout,
        OutputPipe::Stderr => ChildSource::Stderr,
    }
}

fn run(target: Target, data: &[u8]) {
    let mut input = Input { data };
    let limits = limits(input.u8());
    let mut session = Session::new(target, limits);
    let mut ops = 0;
    while !input.is_empty() && ops < 4096 {
        session.run_op(&mut input);
        ops += 1;
    }
    session.settle();
}

/// The `framed_connection` target: an echo-only framed connection (no token, no commands, no
/// files) driven by the op script. Checks: the session checks.
pub fn framed_connection(data: &[u8]) {
    run(Target::Framed, data);
}

/// The `exec_session` target: a framed connection on a server with the token [`TOKEN`] and
/// commands on scripted children, driven by the op script (the commands' output, exits,
/// refused spawns and pipe errors included). Checks: the session checks and the exec checks.
pub fn exec_session(data: &[u8]) {
    run(Target::Exec, data);
}

/// The `file_session` target: a framed connection serving files from a temporary root
/// (`a.txt`, `d/b.bin`, `empty`), its disk jobs held by a scripted disk until the op script
/// completes them, driven by the op script. Checks: the session checks and the file checks.
pub fn file_session(data: &[u8]) {
    run(Target::Files, data);
}

// ------------------------------------------------------------------------------------------
// Writing scripts

/// Writes op-script inputs for the connection targets: the seed corpus, and tests that want
/// a finding as a readable script.
///
/// ```
/// use monoreactor::fuzzing::{Script, framed_connection};
/// use monoreactor::proto::{Flags, Frame, FrameType, Hello};
///
/// let mut hello = Vec::new();
/// Hello::current().encode(&mut hello);
/// let script = Script::new(false)
///     .send(&hello)
///     .frame(FrameType::EchoRequest, Flags::END_STREAM, 1, b"hi")
///     .event()
///     .fin()
///     .event()
///     .into_bytes();
/// framed_connection(&script);
/// ```
#[derive(Clone, Debug, Default)]
pub struct Script {
    bytes: Vec<u8>,
}

impl Script {
    /// A script with the default limits, or the small ones.
    pub fn new(small_limits: bool) -> Script {
        Script {
            bytes: vec![u8::from(small_limits)],
        }
    }

    fn op(mut self, code: u8, args: &[u8]) -> Script {
        self.bytes.push(code);
        self.bytes.extend_from_slice(args);
        self
    }

    fn len16(len: usize) -> [u8; 2] {
        u16::try_from(len)
            .expect("at most 65535 bytes in one op")
            .to_be_bytes()
    }

    /// The peer sends `bytes` (in pieces of at most 65535).
    pub fn send(mut self, bytes: &[u8]) -> Script {
        for piece in bytes.chunks(u16::MAX as usize) {
            let mut args = Script::len16(piece.len()).to_vec();
            args.extend_from_slice(piece);
            self = self.op(op::SEND, &args);
        }
        self
    }

    /// The peer sends a HELLO, with the exec target's [`TOKEN`] or without credentials.
    pub fn hello(self, token: bool) -> Script {
        let mut wire = Vec::new();
        if token {
            Hello::with_credentials(TOKEN).encode(&mut wire);
        } else {
            Hello::current().encode(&mut wire);
        }
        self.send(&wire)
    }

    /// The peer sends a frame (stream ids up to 255).
    pub fn frame(self, frame_type: FrameType, flags: Flags, stream: u8, payload: &[u8]) -> Script {
        let mut args = vec![frame_type.to_u8(), flags.bits(), stream];
        args.extend_from_slice(&Script::len16(payload.len()));
        args.extend_from_slice(payload);
        self.op(op::FRAME, &args)
    }

    /// The pending readiness edges are delivered, then one drive.
    pub fn event(self) -> Script {
        self.op(op::EVENT, &[])
    }

    /// The next read is cut to `n` bytes.
    pub fn read_upto(self, n: u16) -> Script {
        let [high, low] = n.to_be_bytes();
        self.op(op::READ, &[0, high, low])
    }

    /// The next read would block.
    pub fn read_would_block(self) -> Script {
        self.op(op::READ, &[1, 0, 0])
    }

    /// The next write is cut to `n` bytes.
    pub fn write_upto(self, n: u16) -> Script {
        let [high, low] = n.to_be_bytes();
        self.op(op::WRITE, &[0, high, low])
    }

    /// The send buffer has `n` bytes of room (`u16::MAX`: unlimited).
    pub fn room(self, n: u16) -> Script {
        self.op(op::ROOM, &n.to_be_bytes())
    }

    /// The peer reads `n` bytes.
    pub fn drain(self, n: u16) -> Script {
        self.op(op::DRAIN, &n.to_be_bytes())
    }

    /// `ms` milliseconds pass.
    pub fn time(self, ms: u16) -> Script {
        self.op(op::TIME, &ms.to_be_bytes())
    }

    /// Time jumps to the next deadline.
    pub fn expire(self) -> Script {
        self.op(op::EXPIRE, &[])
    }

    /// The peer sends its FIN.
    pub fn fin(self) -> Script {
        self.op(op::FIN, &[])
    }

    /// The server starts shutting down with `grace_ms` to finish.
    pub fn shutdown(self, grace_ms: u16) -> Script {
        self.op(op::SHUTDOWN, &grace_ms.to_be_bytes())
    }

    /// The `child`-th command writes `bytes` to stdout (or stderr).
    pub fn child_output(self, child: u8, stderr: bool, bytes: &[u8]) -> Script {
        let action = if stderr {
            op::child::STDERR
        } else {
            op::child::STDOUT
        };
        let mut args = vec![child, action];
        args.extend_from_slice(&Script::len16(bytes.len()));
        args.extend_from_slice(bytes);
        self.op(op::CHILD, &args)
    }

    /// The `child`-th command closes stdout and stderr and exits with `code`.
    pub fn child_exit(self, child: u8, code: u8) -> Script {
        self.op(op::CHILD, &[child, op::child::CLOSE_STDOUT])
            .op(op::CHILD, &[child, op::child::CLOSE_STDERR])
            .op(op::CHILD, &[child, op::child::EXIT, code])
    }

    /// Any child op: `action` from [`op::child`] and its argument bytes.
    pub fn child(self, child: u8, action: u8, args: &[u8]) -> Script {
        let mut all = vec![child, action];
        all.extend_from_slice(args);
        self.op(op::CHILD, &all)
    }

    /// The oldest disk job completes: really (0), with `EIO` (1) or `ENOSPC` (2).
    pub fn disk(self, action: u8) -> Script {
        self.op(op::DISK, &[action])
    }

    /// One drive without an event.
    pub fn turn(self) -> Script {
        self.op(op::TURN, &[])
    }

    /// The input.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}
