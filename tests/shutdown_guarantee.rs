//! The guarantee SHUTTING_DOWN gives a client (docs/PROTOCOL.md, SHUTTING_DOWN), as HTTP/2's
//! GOAWAY does: every request whose bytes the server had received before it is answered
//! before it, and nothing that arrives after it is handled. So a request with no answer
//! before SHUTTING_DOWN was not processed, and a client may send it again on a new connection
//! (`bench echo --reconnect` does). These tests fail if the connection ever ran, stored or
//! answered a request that reached it after its SHUTTING_DOWN: an EXEC must not spawn, a PUT
//! must not store, an ECHO must not be answered. The connection is driven by hand (no socket,
//! no clock), then the same for the real binary over loopback.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use monoreactor::client::OwnedFrame;
use monoreactor::proto::exec::ExecRequest;
use monoreactor::proto::files::{Hash, PutFlags, PutRequest};
use monoreactor::proto::{
    ErrorCode, ErrorMessage, Flags, Frame, FrameType, HEADER_LEN, Header, Hello,
};
use monoreactor::testkit::{ConnHarness, MemoryIo};
use monoreactor::{Limits, State, Verdict};
use support::{Server, TempDir, tcp};

const TOKEN: &[u8] = b"0123456789abcdef-token";

const GRACE: Duration = Duration::from_secs(5);

fn hello(token: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::with_credentials(token).encode(&mut wire);
    wire
}

fn exec(stream: u32, argv: &[&[u8]]) -> Vec<u8> {
    let mut wire = Vec::new();
    ExecRequest::new(argv.to_vec()).encode(stream, &mut wire);
    wire
}

fn echo(stream: u32, payload: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::EchoRequest, Flags::END_STREAM, stream, payload).to_vec()
}

/// PUT of `file` on `stream`, its DATA and its DIGEST: a whole upload.
fn upload(stream: u32, file: &[u8], path: &str) -> Vec<u8> {
    let request = PutRequest {
        size: file.len() as u64,
        flags: PutFlags::NONE,
        hash: None,
        attrs: None,
        path,
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    let mut wire = Frame::new(FrameType::Put, Flags::NONE, stream, &payload).to_vec();
    wire.extend(Frame::new(FrameType::Data, Flags::NONE, stream, file).to_vec());
    let hash: Hash = *blake3::hash(file).as_bytes();
    wire.extend(Frame::new(FrameType::Digest, Flags::END_STREAM, stream, &hash).to_vec());
    wire
}

/// (type, stream, error code if an ERROR) of each frame.
fn kinds(frames: &[OwnedFrame]) -> Vec<(FrameType, u32, Option<ErrorCode>)> {
    frames
        .iter()
        .map(|frame| {
            let code = (frame.header.frame_type == FrameType::Error).then(|| {
                ErrorMessage::parse(&frame.payload)
                    .expect("ERROR parses")
                    .code
            });
            (frame.header.frame_type, frame.header.stream, code)
        })
        .collect()
}

/// The SHUTTING_DOWN that ends a connection.
const SHUTTING_DOWN: (FrameType, u32, Option<ErrorCode>) =
    (FrameType::Error, 0, Some(ErrorCode::ShuttingDown));

/// Shuts an idle, open connection down: it says SHUTTING_DOWN at once and is closing.
#[track_caller]
fn shut_down(h: &mut ConnHarness, io: &mut MemoryIo) {
    h.shutdown(io, GRACE);
    assert_eq!(kinds(&io.take_frames()), [SHUTTING_DOWN]);
    assert_eq!(h.conn.state(), State::Closing);
}

/// `wire` reaches the connection after its SHUTTING_DOWN (the client sent it as the server's
/// frame crossed it on the wire), then the client closes: nothing is answered, and the
/// connection closes.
#[track_caller]
fn arrives_after_shutting_down(h: &mut ConnHarness, io: &mut MemoryIo, wire: &[u8]) {
    io.push(wire);
    h.event(io, true, false);
    for _ in 0..8 {
        h.drive(io);
    }
    assert_eq!(kinds(&io.take_frames()), [], "answered after SHUTTING_DOWN");
    io.close();
    assert_eq!(h.hangup_event(io, false), Verdict::Close);
    assert_eq!(kinds(&io.take_frames()), []);
}

#[test]
fn an_exec_and_an_echo_that_arrive_after_shutting_down_are_not_run_nor_answered() {
    let mut h = ConnHarness::framed(Limits::default()).with_exec(TOKEN);
    let mut io = MemoryIo::new();
    io.push(&hello(TOKEN));
    h.event(&mut io, true, false);
    assert_eq!(io.take_frames()[0].header.frame_type, FrameType::HelloOk);
    shut_down(&mut h, &mut io);
    let mut wire = exec(1, &[b"/bin/touch", b"/tmp/must-not-exist"]);
    wire.extend(echo(3, b"too late"));
    arrives_after_shutting_down(&mut h, &mut io, &wire);
    assert!(h.children().all().is_empty(), "a command was spawned");
}

#[test]
fn a_put_that_arrives_after_shutting_down_stores_nothing() {
    let dir = TempDir::new("after-shutdown");
    let mut h = ConnHarness::framed(Limits::default()).with_files(dir.path());
    let mut io = MemoryIo::new();
    io.push(&hello(b""));
    h.event(&mut io, true, false);
    assert_eq!(io.take_frames()[0].header.frame_type, FrameType::HelloOk);
    shut_down(&mut h, &mut io);
    arrives_after_shutting_down(
        &mut h,
        &mut io,
        &upload(1, b"must not be stored", "late.txt"),
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("the root")
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(left.is_empty(), "stored after SHUTTING_DOWN: {left:?}");
}

/// The other half: what arrived before the shutdown is answered before SHUTTING_DOWN — an
/// echo with its reply, an EXEC with a refusal on its own stream (the server starts nothing
/// new once shutting down) — so "no answer before SHUTTING_DOWN" really means "not received".
#[test]
fn what_arrived_before_the_shutdown_is_answered_before_shutting_down() {
    let mut h = ConnHarness::framed(Limits::default()).with_exec(TOKEN);
    let mut io = MemoryIo::new();
    io.push(&hello(TOKEN));
    h.event(&mut io, true, false);
    io.take_frames();
    // In the socket, its readiness not reported yet, when the shutdown begins.
    let mut wire = echo(1, b"in time");
    wire.extend(exec(3, &[b"/bin/true"]));
    io.push(&wire);
    h.shutdown(&mut io, GRACE);
    for _ in 0..8 {
        h.drive(&mut io);
    }
    assert_eq!(
        kinds(&io.take_frames()),
        [
            (FrameType::EchoReply, 1, None),
            (FrameType::Error, 3, Some(ErrorCode::ShuttingDown)),
            SHUTTING_DOWN
        ]
    );
    assert!(h.children().all().is_empty());
}

// === The binary ===

/// The next frame from `stream`: (type, stream, payload).
fn read_frame(stream: &mut impl Read) -> (FrameType, u32, Vec<u8>) {
    let mut header = [0; HEADER_LEN];
    stream.read_exact(&mut header).expect("a frame header");
    let header = Header::parse(&header, monoreactor::MAX_FRAME_LEN)
        .expect("a valid header")
        .expect("a whole header");
    let mut payload = vec![0; header.len as usize];
    stream
        .read_exact(&mut payload)
        .expect("the frame's payload");
    (header.frame_type, header.stream, payload)
}

#[test]
fn the_server_runs_no_exec_and_answers_no_echo_sent_after_its_shutting_down() {
    let mut server = Server::start_exec(&["--shutdown-grace", "5"]);
    let marker = server.scratch().join("ran-after-shutting-down");
    let mut client = tcp(server.framed());
    client.write_all(&hello(server.token())).unwrap();
    assert_eq!(read_frame(&mut client).0, FrameType::HelloOk);
    server.signal(libc::SIGTERM);
    let (kind, stream, payload) = read_frame(&mut client);
    assert_eq!((kind, stream), (FrameType::Error, 0));
    assert_eq!(
        ErrorMessage::parse(&payload).expect("ERROR parses").code,
        ErrorCode::ShuttingDown
    );
    // Sent after SHUTTING_DOWN arrived: the server lingers for our FIN, discarding.
    let touch = format!("touch '{}'", marker.display());
    let mut wire = exec(1, &[b"/bin/sh", b"-c", touch.as_bytes()]);
    wire.extend(echo(3, b"too late"));
    client.write_all(&wire).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    match client.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "answered after SHUTTING_DOWN: {rest:?}"),
        Err(error) => assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error}"),
    }
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    assert!(!marker.exists(), "the EXEC ran after SHUTTING_DOWN");
}
