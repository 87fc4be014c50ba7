//! Shutting down without losing what clients already sent, and draining so that a load
//! balancer sees the server go before its listeners close.
//!
//! The connection side, driven by hand: at shutdown a connection answers the requests it
//! already received (buffered, or waiting in its socket) before SHUTTING_DOWN; the raw echo
//! echoes them. Then the real binary: SIGTERM with a request in flight, a connection still in
//! the backlog, and the drain (`--drain-delay`): health checks (PROXY v2 LOCAL) fail while
//! ordinary clients are still served, a second SIGTERM cuts it short, SIGINT skips it.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use monoreactor::proto::{ErrorCode, ErrorMessage, Flags, Frame, FrameType, Hello};
use monoreactor::testkit::{ConnHarness, MemoryIo};
use monoreactor::{Limits, Protocol, State, Verdict};
use rustls::ClientConnection;
use rustls::pki_types::ServerName;
use support::{IO_TIMEOUT, Server, TempDir, echo_request, hello_bytes, retry, tcp};
use tls_support::{ALPN, ServerFiles, client_config, expect_closed, recv_frame};

const GRACE: Duration = Duration::from_secs(5);

fn hello() -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::current().encode(&mut wire);
    wire
}

fn echo(stream: u32, payload: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::EchoRequest, Flags::END_STREAM, stream, payload).to_vec()
}

/// The frame types and payloads written since the last call, errors as their codes.
fn written(io: &mut MemoryIo) -> Vec<(FrameType, Vec<u8>)> {
    io.take_frames()
        .into_iter()
        .map(|frame| (frame.header.frame_type, frame.payload))
        .collect()
}

fn error_code(payload: &[u8]) -> ErrorCode {
    ErrorMessage::parse(payload).expect("ERROR parses").code
}

/// Drives until the connection is closing and has nothing left to write (or closed).
fn drive_to_the_end(h: &mut ConnHarness, io: &mut MemoryIo) {
    for _ in 0..16 {
        if matches!(h.conn.state(), State::Closing | State::Closed) && h.conn.pending_output() == 0
        {
            return;
        }
        h.drive(io);
    }
    panic!("the connection did not finish: {:?}", h.conn.state());
}

// === The connection: what was received is answered ===

#[test]
fn a_request_in_the_socket_when_shutdown_begins_is_answered_before_shutting_down() {
    let mut io = MemoryIo::new();
    let mut h = ConnHarness::framed(Limits::default());
    io.push(&hello());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(written(&mut io)[0].0, FrameType::HelloOk);

    // The request reached the socket; its edge has not been reported when SIGTERM is handled.
    io.push(&echo(1, b"sent before the shutdown"));
    h.shutdown(&mut io, GRACE);
    drive_to_the_end(&mut h, &mut io);
    let frames = written(&mut io);
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(
        frames[0],
        (FrameType::EchoReply, b"sent before the shutdown".to_vec())
    );
    assert_eq!(frames[1].0, FrameType::Error);
    assert_eq!(error_code(&frames[1].1), ErrorCode::ShuttingDown);
    assert!(io.write_shut, "then the orderly close");
}

#[test]
fn complete_frames_held_back_by_the_budget_are_answered_at_shutdown() {
    let limits = Limits {
        frame_budget: 1,
        ..Limits::default()
    };
    let mut io = MemoryIo::new();
    let mut h = ConnHarness::framed(limits);
    let mut wire = hello();
    for stream in 1..=4u32 {
        wire.extend(echo(stream, &stream.to_be_bytes()));
    }
    io.push(&wire);
    assert_eq!(h.event(&mut io, true, false), Verdict::Again);
    assert!(
        h.conn.pending_input() > 0,
        "frames wait in the input buffer"
    );
    h.shutdown(&mut io, GRACE);
    drive_to_the_end(&mut h, &mut io);
    let frames = written(&mut io);
    let types: Vec<FrameType> = frames.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(
        types,
        [
            FrameType::HelloOk,
            FrameType::EchoReply,
            FrameType::EchoReply,
            FrameType::EchoReply,
            FrameType::EchoReply,
            FrameType::Error
        ]
    );
    for (stream, (_, payload)) in (1..=4u32).zip(&frames[1..5]) {
        assert_eq!(payload, &stream.to_be_bytes());
    }
}

#[test]
fn a_connection_awaiting_hello_at_shutdown_gets_its_hello_answered_first() {
    let mut io = MemoryIo::new();
    let mut h = ConnHarness::framed(Limits::default());
    let mut wire = hello();
    wire.extend(echo(1, b"x"));
    io.push(&wire);
    h.shutdown(&mut io, GRACE);
    drive_to_the_end(&mut h, &mut io);
    let types: Vec<FrameType> = written(&mut io).iter().map(|(kind, _)| *kind).collect();
    assert_eq!(
        types,
        [FrameType::HelloOk, FrameType::EchoReply, FrameType::Error]
    );
}

#[test]
fn an_idle_connection_at_shutdown_is_told_shutting_down_at_once() {
    let mut io = MemoryIo::new();
    let mut h = ConnHarness::framed(Limits::default());
    io.push(&hello());
    h.event(&mut io, true, false);
    written(&mut io);
    h.shutdown(&mut io, GRACE);
    assert_eq!(h.conn.state(), State::Closing);
    let frames = written(&mut io);
    assert_eq!(frames.len(), 1);
    assert_eq!(error_code(&frames[0].1), ErrorCode::ShuttingDown);
}

#[test]
fn the_raw_echo_echoes_what_it_received_before_closing_at_shutdown() {
    let mut io = MemoryIo::new();
    let mut h = ConnHarness::new(Protocol::RawEcho, Limits::default());
    io.push(b"first ");
    h.event(&mut io, true, false);
    io.push(b"and in flight");
    h.shutdown(&mut io, GRACE);
    assert_eq!(io.written(), b"first and in flight");
    assert!(io.write_shut, "closed once echoed");
}

#[test]
fn a_health_check_while_draining_gets_shutting_down_for_its_hello() {
    let mut io = MemoryIo::new();
    let mut h = ConnHarness::framed(Limits::default());
    h.conn.fail_health_check();
    io.push(&hello());
    h.event(&mut io, true, false);
    let frames = written(&mut io);
    assert_eq!(frames.len(), 1, "no HELLO_OK: {frames:?}");
    let message = ErrorMessage::parse(&frames[0].1).expect("ERROR parses");
    assert_eq!(message.code, ErrorCode::ShuttingDown);
    assert!(message.text.contains("health check"), "{}", message.text);
    assert_eq!(h.conn.state(), State::Closing);
}

// === The binary ===

/// Sends HELLO on a fresh connection to `server` and reads HELLO_OK.
fn hello_client(server: &Server) -> std::net::TcpStream {
    let mut client = tcp(server.framed());
    client.write_all(&hello_bytes()).unwrap();
    let (header, _) = recv_frame(&mut client);
    assert_eq!(header.frame_type, FrameType::HelloOk);
    client
}

#[track_caller]
fn expect_frame(stream: &mut impl Read, kind: FrameType) -> Vec<u8> {
    let (header, payload) = recv_frame(stream);
    assert_eq!(
        header.frame_type,
        kind,
        "{:?}",
        ErrorMessage::parse(&payload).map(|error| error.text.to_string())
    );
    payload
}

#[track_caller]
fn wait_log(server: &Server, text: &str) {
    let found = retry(Duration::from_secs(10), || {
        server.stderr_text().contains(text).then_some(())
    });
    assert!(found.is_some(), "no {text:?} in:\n{}", server.stderr_text());
}

/// v2 LOCAL: what HAProxy's health checks send.
const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

#[test]
fn sigterm_with_a_request_in_flight_and_a_client_in_the_backlog_answers_both() {
    let mut server = Server::start(&[]);
    let mut open = hello_client(&server);
    // Stopped, the server handles nothing: the kernel queues the request in the socket and
    // completes the next connection into the backlog, and SIGTERM waits with them.
    server.stop();
    open.write_all(&echo_request(1, b"in flight")).unwrap();
    let mut queued = tcp(server.framed());
    let mut wire = hello_bytes();
    wire.extend(echo_request(7, b"from the backlog"));
    queued.write_all(&wire).unwrap();
    server.signal(libc::SIGTERM);
    server.resume();

    assert_eq!(expect_frame(&mut open, FrameType::EchoReply), b"in flight");
    let error = expect_frame(&mut open, FrameType::Error);
    assert_eq!(error_code(&error), ErrorCode::ShuttingDown);
    expect_closed(&mut open);

    expect_frame(&mut queued, FrameType::HelloOk);
    assert_eq!(
        expect_frame(&mut queued, FrameType::EchoReply),
        b"from the backlog"
    );
    let error = expect_frame(&mut queued, FrameType::Error);
    assert_eq!(error_code(&error), ErrorCode::ShuttingDown);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn during_the_drain_health_checks_fail_and_clients_are_still_served() {
    let mut server = Server::start(&[
        "--proxy-protocol",
        "allow",
        "--insecure",
        "--drain-delay",
        "3",
        "-v",
    ]);
    // A check connected before the drain, its HELLO not sent yet.
    let mut early_check = tcp(server.framed());
    early_check.write_all(V2_LOCAL).unwrap();
    let started = Instant::now();
    let mut open = hello_client(&server);
    server.signal(libc::SIGTERM);
    wait_log(&server, "draining for 3s");

    // Its HELLO, sent now, is answered with SHUTTING_DOWN.
    early_check.write_all(&hello_bytes()).unwrap();
    let error = expect_frame(&mut early_check, FrameType::Error);
    assert_eq!(error_code(&error), ErrorCode::ShuttingDown);

    // A framed health check: ERROR SHUTTING_DOWN where HELLO_OK would be.
    let mut check = tcp(server.framed());
    let mut wire = V2_LOCAL.to_vec();
    wire.extend(hello_bytes());
    check.write_all(&wire).unwrap();
    let error = expect_frame(&mut check, FrameType::Error);
    let message = ErrorMessage::parse(&error).expect("ERROR parses");
    assert_eq!(message.code, ErrorCode::ShuttingDown);
    assert!(message.text.contains("draining"), "{}", message.text);
    expect_closed(&mut check);

    // A raw echo health check: closed, nothing echoed.
    let mut raw_check = tcp(server.echo_tcp());
    let mut wire = V2_LOCAL.to_vec();
    wire.extend(b"ping");
    raw_check.write_all(&wire).unwrap();
    expect_closed(&mut raw_check);

    // Clients, new and open, are still served: the listeners stay open.
    let mut client = hello_client(&server);
    client.write_all(&echo_request(1, b"still served")).unwrap();
    assert_eq!(
        expect_frame(&mut client, FrameType::EchoReply),
        b"still served"
    );
    open.write_all(&echo_request(2, b"open one")).unwrap();
    assert_eq!(expect_frame(&mut open, FrameType::EchoReply), b"open one");
    let mut raw = tcp(server.echo_tcp());
    raw.write_all(b"echo").unwrap();
    let mut back = [0; 4];
    raw.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"echo");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "all of that within the drain"
    );

    // Then the shutdown proper.
    let error = expect_frame(&mut open, FrameType::Error);
    assert_eq!(error_code(&error), ErrorCode::ShuttingDown);
    assert!(server.wait_exit(Duration::from_secs(15)).is_some());
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "not before the drain delay"
    );
    let log = server.stderr_text();
    assert!(log.contains("drain over after 3s"), "{log}");
}

#[test]
fn a_second_sigterm_ends_the_drain_early_and_sigint_skips_it() {
    let mut server = Server::start(&[
        "--proxy-protocol",
        "allow",
        "--insecure",
        "--drain-delay",
        "60",
        "-v",
    ]);
    server.signal(libc::SIGTERM);
    wait_log(&server, "draining for 60s");
    server.signal(libc::SIGTERM);
    assert!(
        server.wait_exit(Duration::from_secs(10)).is_some(),
        "a second SIGTERM shuts down now"
    );
    wait_log(&server, "ending the drain early");

    // With the PROXY protocol on, the drain is on by default; SIGINT does not wait for it.
    let mut server = Server::start(&["--proxy-protocol", "require", "--insecure", "-v"]);
    server.signal(libc::SIGINT);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    let log = server.stderr_text();
    assert!(!log.contains("draining"), "{log}");
}

#[test]
fn a_tls_client_finishing_its_handshake_at_sigterm_gets_its_requests_answered() {
    let dir = TempDir::new("drain-tls");
    let files = ServerFiles::write(dir.path());
    let args: Vec<String> = files.flags();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start(&args);

    let mut socket = TcpStream::connect(server.framed()).unwrap();
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    socket.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let config = client_config(&files.ca.der, &[ALPN], None);
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(config, name).unwrap();
    // The ClientHello out and the server's flight in, until the client's Finished is ready.
    while client.wants_write() {
        client.write_tls(&mut socket).unwrap();
    }
    while client.is_handshaking() {
        client.read_tls(&mut socket).unwrap();
        client.process_new_packets().unwrap();
    }
    // The server waits for the client's Finished; it comes, with HELLO and a request behind it
    // in the same flight, while the server is stopped, and so does SIGTERM.
    server.stop();
    let mut wire = hello_bytes();
    wire.extend(echo_request(1, b"right behind the handshake"));
    client.writer().write_all(&wire).unwrap();
    while client.wants_write() {
        client.write_tls(&mut socket).unwrap();
    }
    server.signal(libc::SIGTERM);
    server.resume();

    let mut tls = rustls::StreamOwned::new(client, socket);
    expect_frame(&mut tls, FrameType::HelloOk);
    assert_eq!(
        expect_frame(&mut tls, FrameType::EchoReply),
        b"right behind the handshake"
    );
    let error = expect_frame(&mut tls, FrameType::Error);
    assert_eq!(error_code(&error), ErrorCode::ShuttingDown);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn a_health_check_over_tls_is_told_shutting_down_inside_its_session() {
    let dir = TempDir::new("drain-tls-check");
    let files = ServerFiles::write(dir.path());
    let mut args: Vec<String> = files.flags();
    args.extend(
        [
            "--proxy-protocol",
            "require",
            "--insecure",
            "--drain-delay",
            "30",
            "-v",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start(&args);
    server.signal(libc::SIGTERM);
    wait_log(&server, "draining for 30s");

    // HAProxy's `check-ssl` with `check-send-proxy`: the LOCAL header, then TLS, then HELLO.
    let mut socket = TcpStream::connect(server.framed()).unwrap();
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    socket.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    socket.write_all(V2_LOCAL).unwrap();
    let config = client_config(&files.ca.der, &[ALPN], None);
    let name = ServerName::try_from("localhost").unwrap();
    let client = ClientConnection::new(config, name).unwrap();
    let mut tls = rustls::StreamOwned::new(client, socket);
    tls_support::handshake(&mut tls).expect("the handshake succeeds");
    tls.write_all(&hello_bytes()).unwrap();
    let error = expect_frame(&mut tls, FrameType::Error);
    let message = ErrorMessage::parse(&error).expect("ERROR parses");
    assert_eq!(message.code, ErrorCode::ShuttingDown);
    assert!(message.text.contains("draining"), "{}", message.text);

    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
}
