//! Keeps `docs/PROTOCOL.md` true.
//!
//! - Every hex dump in the document is rebuilt here: the frames a client sends with the crate's
//!   encoders, the frames the server sends captured from the server itself — its connection
//!   state machine driven through the public testkit ([`ConnHarness`] with [`MemoryIo`] and
//!   scripted child processes), or a real server on loopback — and the exact dump text must
//!   appear in the document.
//! - The tables marked `<!-- table: NAME -->` (frame types, what the server does with each
//!   frame, error codes and the streams they travel on, field layouts, flags, signals, exit
//!   reasons, example error texts, constants) are parsed and compared with the code, in both
//!   directions: a row the code does not back fails, and so does a value the table leaves out.
//! - Every `](#anchor)` link in the document leads to a heading.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use monoreactor::access::{Access, Token};
use monoreactor::conn::{State, Verdict};
use monoreactor::limits::{self, Limits};
use monoreactor::proto::exec::{
    EndReason, ExecFlags, ExecRequest, Exit, MAX_ARGS, MAX_CWD_LEN, Signal, SignalRequest, Started,
    Termination, Window, exec_field, exit_field, started_field,
};
use monoreactor::proto::header::field;
use monoreactor::proto::message::{
    EXEC_VERSION, MAX_CREDENTIALS_LEN, MAX_ERROR_TEXT_LEN, MIN_PROTOCOL_VERSION, error_field,
    hello_field, hello_ok_field,
};
use monoreactor::proto::{
    DecodeError, Decoder, ErrorCode, ErrorMessage, Flags, Frame, FrameType, HEADER_LEN, Header,
    Hello, HelloOk, MAGIC, PROTOCOL_VERSION, SessionFlags, ends_connection,
};
use monoreactor::server::{Config, DEFAULT_ECHO_ADDR, DEFAULT_FRAMED_ADDR, DEFAULT_ROOT, Server};
use monoreactor::service::echo::{MAX_DATAGRAM, REFUSED_SOURCE_PORTS};
use monoreactor::service::exec::{ChildSource, OutputPipe, SpawnError};
use monoreactor::sys::process::EXEC_ENV;
use monoreactor::testkit::{ConnHarness, MemoryIo, ScriptedChild};

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

/// The server's side of one framed connection, with the default limits: the harness drives
/// the connection exactly as the reactor does; what it writes is read back frame by frame.
struct ServerSide {
    harness: ConnHarness,
    io: MemoryIo,
}

impl ServerSide {
    /// What `monoreactor serve` runs with by default: no token, no commands.
    fn default_server() -> ServerSide {
        ServerSide {
            harness: ConnHarness::framed(Limits::default()),
            io: MemoryIo::new(),
        }
    }

    /// A server started with `--exec` and [`TOKEN`]; its commands are scripted.
    fn exec_server() -> ServerSide {
        ServerSide {
            harness: ConnHarness::framed(Limits::default()).with_exec(TOKEN),
            io: MemoryIo::new(),
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

// === The frames of section 7 ===

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

/// What a default server answers a version 2 HELLO.
fn hello_ok() -> Vec<u8> {
    hello_ok_with(
        PROTOCOL_VERSION,
        Limits::default().max_frame_len,
        SessionFlags::AUTHENTICATED,
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
        SessionFlags::AUTHENTICATED.with(SessionFlags::EXEC),
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

/// A type no version assigns (0x30: reserved for file transfer).
fn unknown_type_request() -> Vec<u8> {
    Frame::new(FrameType::Unknown(0x30), Flags::END_STREAM, 2, b"xyz").to_vec()
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
            SessionFlags::AUTHENTICATED,
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
            SessionFlags::AUTHENTICATED.with(SessionFlags::EXEC),
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

/// Section 9.3, frame by frame, through the connection state machine with scripted
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

// === A real server ===

/// A real server on loopback, run on a thread; stopped and its root removed on drop.
struct RealServer {
    addr: SocketAddr,
    shutdown: monoreactor::reactor::ShutdownHandle,
    running: Option<thread::JoinHandle<std::io::Result<monoreactor::reactor::ReactorStats>>>,
    root: PathBuf,
}

impl RealServer {
    fn start(limits: Limits, access: Access) -> RealServer {
        static ROOTS: AtomicUsize = AtomicUsize::new(0);
        let root = std::env::temp_dir().join(format!(
            "monoreactor-protocol-doc-{}-{}",
            std::process::id(),
            ROOTS.fetch_add(1, Ordering::Relaxed)
        ));
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
        }
    }

    /// `serve --exec` with [`TOKEN`].
    fn exec() -> RealServer {
        RealServer::start(
            Limits::default(),
            Access {
                token: Some(Token::new(TOKEN).unwrap()),
                exec: true,
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
        let _ = std::fs::remove_dir_all(&self.root);
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

/// Section 9.2, frame by frame.
#[test]
fn worked_echo_session_gives_the_documented_bytes() {
    let mut server = ServerSide::default_server();
    let pipelined = [hello(), echo_request(), unknown_type_request()].concat();
    assert_eq!(pipelined.len(), 22 + 17 + 15);
    let answer = server.send(&pipelined);
    let unknown_error = error_frame(
        2,
        ErrorCode::UnknownFrameType,
        "frame type 0x30 is not known to this server",
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
    for byte in (0x29..=0x2f).chain(0x30..=0x3f) {
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
            "other" => FrameType::Unknown(0x30),
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
    for stream in 1..=8 {
        let sent = server.send(&exec_on(stream, &ExecRequest::new(vec![b"sleep", b"99"])));
        assert_eq!(frames(&sent)[0].header.frame_type, FrameType::Started);
    }
    record(&server.send(&exec_on(9, &ExecRequest::new(vec![b"true"]))));
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
    // SERVER_BUSY and SHUTTING_DOWN from a real event loop are checked byte for byte against
    // their dumps by `busy_and_shutting_down_dumps_are_what_a_real_server_sends`.
    for name in ["error-server-busy", "error-shutting-down"] {
        record(&dump_bytes(name));
    }
    observed
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

/// Every example text in section 6.1 is what the server says in the situation the table names,
/// and every situation has its row.
#[test]
fn error_text_table_matches_what_the_server_sends() {
    let produced: Vec<(String, String)> = observed_errors()
        .into_iter()
        .map(|(_, code, text)| (code.to_string(), text))
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
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    let argc_at = exec_field::CWD + request.cwd.len();
    assert_eq!(
        payload[argc_at..],
        *b"\x00\x02\x00\x00\x00\x02ab\x00\x00\x00\x01c"
    );
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
    ]
    .into_iter()
    .map(|(bits, name)| (bits, name.to_string()))
    .collect();
    assert_eq!(bit_rows("session-flags"), session);
    let exec: BTreeSet<(u16, String)> = [(ExecFlags::STDIN.bits(), "STDIN".to_string())].into();
    assert_eq!(bit_rows("exec-flags"), exec);
    let all = exec.iter().fold(0, |bits, (bit, _)| bits | bit);
    assert_eq!(all, ExecFlags::KNOWN.bits(), "every EXEC flag is listed");
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
        ("MIN_FRAME_LEN", limits::MIN_FRAME_LEN.to_string()),
        ("MAX_FRAME_LEN", limits::MAX_FRAME_LEN.to_string()),
        ("pre_auth_max_frame", limits.pre_auth_max_frame.to_string()),
        ("MAX_ARGS", MAX_ARGS.to_string()),
        ("MAX_CWD_LEN", MAX_CWD_LEN.to_string()),
        ("stdin_window", limits.stdin_window.to_string()),
        ("exec_timeout", seconds(limits.exec_timeout)),
        ("exec_kill_grace", seconds(limits.exec_kill_grace)),
        ("exec_drain_timeout", seconds(limits.exec_drain_timeout)),
        ("exec_output_cap", limits.exec_output_cap.to_string()),
        (
            "max_exec_per_connection",
            limits.max_exec_per_connection.to_string(),
        ),
        (
            "MAX_EXEC_PER_CONNECTION",
            limits::MAX_EXEC_PER_CONNECTION.to_string(),
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
