//! The exec path of the connection state machine, driven by scripted I/O and scripted child
//! processes: authentication, pre-authentication limits, the stream table, stdin credit,
//! backpressure on a command's pipes, deadlines and the order of EXIT. No process, no socket,
//! no clock.

use std::time::Duration;

use monoreactor::Tick;
use monoreactor::children::{ChildSource, OutputPipe, SpawnError};
use monoreactor::client::OwnedFrame;
use monoreactor::proto::exec::{
    EndReason, ExecFlags, ExecRequest, Exit, Signal, SignalRequest, Started, Termination, Window,
};
use monoreactor::proto::{
    ErrorCode, ErrorMessage, Flags, Frame, FrameType, Header, Hello, HelloOk, SessionFlags,
};
use monoreactor::testkit::{ConnHarness, MemoryIo};
use monoreactor::{Limits, MIN_IO_BUFFER_LEN};
use monoreactor::{State, Verdict};

const TOKEN: &[u8] = b"0123456789abcdef-token";

fn hello(token: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::with_credentials(token).encode(&mut wire);
    wire
}

fn exec(stream: u32, argv: &[&[u8]], flags: ExecFlags) -> Vec<u8> {
    let mut wire = Vec::new();
    ExecRequest {
        flags,
        ..ExecRequest::new(argv.to_vec())
    }
    .encode(stream, &mut wire);
    wire
}

fn frame(frame_type: FrameType, stream: u32, payload: &[u8]) -> Vec<u8> {
    Frame::new(frame_type, Flags::NONE, stream, payload).to_vec()
}

fn signal(stream: u32, signal: Signal) -> Vec<u8> {
    let mut payload = [0];
    SignalRequest { signal }.emit(&mut payload);
    frame(FrameType::Signal, stream, &payload)
}

fn kinds(frames: &[OwnedFrame]) -> Vec<(FrameType, u32)> {
    frames
        .iter()
        .map(|frame| (frame.header.frame_type, frame.header.stream))
        .collect()
}

#[track_caller]
fn error_of(frame: &OwnedFrame) -> (u32, ErrorCode) {
    assert_eq!(frame.header.frame_type, FrameType::Error, "expected ERROR");
    let message = ErrorMessage::parse(&frame.payload).expect("ERROR payload");
    (frame.header.stream, message.code)
}

/// A connection with commands enabled, authenticated with the token.
fn authenticated(limits: Limits) -> (ConnHarness, MemoryIo) {
    let mut h = ConnHarness::framed(limits).with_exec(TOKEN);
    let mut io = MemoryIo::new();
    io.push(&hello(TOKEN));
    assert_eq!(h.event(&mut io, true, true), Verdict::Wait);
    let frames = io.take_frames();
    assert_eq!(kinds(&frames), [(FrameType::HelloOk, 0)]);
    let ok = HelloOk::parse(&frames[0].payload).unwrap();
    assert!(
        ok.flags
            .contains(SessionFlags::AUTHENTICATED.with(SessionFlags::EXEC))
    );
    (h, io)
}

/// Starts `argv` on `stream`; returns its STARTED.
#[track_caller]
fn start(
    h: &mut ConnHarness,
    io: &mut MemoryIo,
    stream: u32,
    argv: &[&[u8]],
    flags: ExecFlags,
) -> Started {
    io.push(&exec(stream, argv, flags));
    h.event(io, true, false);
    let frames = io.take_frames();
    assert_eq!(kinds(&frames), [(FrameType::Started, stream)]);
    assert!(!frames[0].header.flags.contains(Flags::END_STREAM));
    Started::parse(&frames[0].payload).unwrap()
}

/// Command `n` (child number `index`) closes both pipes and exits; the poll reports all three.
fn finish(h: &mut ConnHarness, io: &mut MemoryIo, n: usize, termination: Termination) {
    let index = h.children().nth(n).index;
    h.children()
        .nth(n)
        .close(OutputPipe::Stdout)
        .close(OutputPipe::Stderr)
        .exit(termination);
    h.child_event(io, index, ChildSource::Exit);
    h.child_event(io, index, ChildSource::Stdout);
    h.child_event(io, index, ChildSource::Stderr);
}

// === Authentication ===

#[test]
fn hello_without_credentials_may_echo_but_exec_is_refused_on_its_stream() {
    let mut h = ConnHarness::framed(Limits::default()).with_exec(TOKEN);
    let mut io = MemoryIo::new();
    io.push(&hello(b""));
    h.event(&mut io, true, true);
    let ok = HelloOk::parse(&io.take_frames()[0].payload).unwrap();
    assert_eq!(
        ok.flags,
        SessionFlags::NONE,
        "not authenticated, and not told that commands run"
    );
    assert_eq!(
        ok.max_payload_len, 4096,
        "the pre-authentication limit is announced"
    );

    io.push(&exec(1, &[b"true"], ExecFlags::NONE));
    io.push(&Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 2, b"still here").to_vec());
    h.event(&mut io, true, false);
    let frames = io.take_frames();
    assert_eq!(error_of(&frames[0]), (1, ErrorCode::Unauthenticated));
    assert!(frames[0].header.flags.contains(Flags::END_STREAM));
    assert_eq!(kinds(&frames[1..]), [(FrameType::EchoReply, 2)]);
    assert!(h.children().all().is_empty(), "nothing spawned");
    assert_eq!(h.conn.state(), State::Open);
}

#[test]
fn a_wrong_token_is_refused_with_auth_failed_and_the_connection_closes() {
    let mut h = ConnHarness::framed(Limits::default()).with_exec(TOKEN);
    let mut io = MemoryIo::new();
    io.push(&hello(b"0123456789abcdef-tokeN"));
    io.push(&exec(1, &[b"true"], ExecFlags::NONE));
    h.event(&mut io, true, true);
    let frames = io.take_frames();
    assert_eq!(frames.len(), 1, "the pipelined EXEC is discarded");
    assert_eq!(error_of(&frames[0]), (0, ErrorCode::AuthFailed));
    assert!(io.write_shut);
    assert_eq!(h.conn.state(), State::Closing);
    assert!(h.children().all().is_empty());
}

#[test]
fn a_non_hello_header_before_hello_is_refused_before_its_payload_arrives() {
    let mut h = ConnHarness::framed(Limits::default()).with_exec(TOKEN);
    let mut io = MemoryIo::new();
    let header = Header {
        frame_type: FrameType::EchoRequest,
        flags: Flags::END_STREAM,
        stream: 1,
        len: 4000,
    };
    io.push(&header.to_bytes());
    h.event(&mut io, true, true);
    let frames = io.take_frames();
    assert_eq!(error_of(&frames[0]), (0, ErrorCode::UnexpectedFrame));
    assert_eq!(h.conn.state(), State::Closing);
}

#[test]
fn a_hello_declaring_more_than_the_pre_auth_limit_is_refused_from_its_header() {
    let mut h = ConnHarness::framed(Limits::default()).with_exec(TOKEN);
    let mut io = MemoryIo::new();
    let header = Header {
        frame_type: FrameType::Hello,
        flags: Flags::END_STREAM,
        stream: 0,
        len: 4097,
    };
    io.push(&header.to_bytes());
    h.event(&mut io, true, true);
    assert_eq!(
        error_of(&io.take_frames()[0]),
        (0, ErrorCode::FrameTooLarge)
    );
    assert!(
        h.conn.buffer_capacity() <= 64 << 10,
        "nothing was reserved for the declared payload"
    );
}

#[test]
fn a_client_stalling_mid_hello_pins_a_few_kib_not_a_pool_buffer() {
    let mut h = ConnHarness::framed(Limits::default()).with_exec(TOKEN);
    let mut io = MemoryIo::new();
    let hello = hello(TOKEN);
    io.push(&hello[..hello.len() - 1]);
    h.event(&mut io, true, true);
    assert_eq!(h.conn.pending_input(), hello.len() - 1);
    let cap = 12 + h.limits.pre_auth_frame_len() as usize;
    assert!(
        h.conn.buffer_capacity() <= cap,
        "{} bytes of buffer held for {} bytes of a HELLO",
        h.conn.buffer_capacity(),
        hello.len() - 1
    );
    io.push(&hello[hello.len() - 1..]);
    h.event(&mut io, true, false);
    assert_eq!(kinds(&io.take_frames()), [(FrameType::HelloOk, 0)]);
    assert!(!h.conn.holds_buffers());
}

#[test]
fn a_version_1_connection_does_not_know_exec_frames() {
    let mut h = ConnHarness::framed(Limits::default()).with_exec(TOKEN);
    let mut io = MemoryIo::new();
    let mut v1 = Vec::new();
    Hello {
        min_version: 1,
        max_version: 1,
        credentials: TOKEN,
    }
    .encode(&mut v1);
    io.push(&v1);
    io.push(&exec(1, &[b"true"], ExecFlags::NONE));
    h.event(&mut io, true, true);
    let frames = io.take_frames();
    assert_eq!(HelloOk::parse(&frames[0].payload).unwrap().version, 1);
    assert_eq!(frames[0].payload.len(), HelloOk::V1_PAYLOAD_LEN);
    assert_eq!(error_of(&frames[1]), (1, ErrorCode::UnknownFrameType));
    assert!(h.children().all().is_empty());
}

// === A command's life ===

#[test]
fn output_streams_in_order_and_exit_waits_for_both_pipes() {
    let (mut h, mut io) = authenticated(Limits::default());
    let started = start(&mut h, &mut io, 5, &[b"sh", b"-c", b"x"], ExecFlags::NONE);
    assert_eq!((started.pid, started.stdin_window), (1000, 0));
    let child = h.children().nth(0);
    assert_eq!(child.argv, [b"sh".to_vec(), b"-c".to_vec(), b"x".to_vec()]);
    assert!(
        !child.has_stdin,
        "stdin is /dev/null without the STDIN flag"
    );
    child
        .write(OutputPipe::Stdout, b"out")
        .write(OutputPipe::Stderr, b"err")
        .close(OutputPipe::Stdout)
        .exit(Termination::Exited(3));
    h.child_event(&mut io, 0, ChildSource::Stdout);
    h.child_event(&mut io, 0, ChildSource::Exit);
    let frames = io.take_frames();
    assert_eq!(
        kinds(&frames),
        [(FrameType::Stdout, 5)],
        "stderr's readiness was not reported yet, and it is still open: no EXIT"
    );
    assert_eq!(frames[0].payload, b"out");

    h.children().nth(0).close(OutputPipe::Stderr);
    h.child_event(&mut io, 0, ChildSource::Stderr);
    let frames = io.take_frames();
    assert_eq!(
        kinds(&frames),
        [(FrameType::Stderr, 5), (FrameType::Exit, 5)]
    );
    assert_eq!(frames[0].payload, b"err");
    assert!(frames[1].header.flags.contains(Flags::END_STREAM));
    let exit = Exit::parse(&frames[1].payload).unwrap();
    assert_eq!(
        exit,
        Exit {
            termination: Termination::Exited(3),
            reason: EndReason::None
        }
    );
    assert_eq!(h.children().nth(0).released, Some(EndReason::None));
    assert_eq!(h.conn.open_streams(), 0);
}

#[test]
fn stdin_goes_into_the_pipe_and_credit_comes_back_per_half_window() {
    let limits = Limits {
        stdin_window: 8,
        ..Limits::default()
    };
    let (mut h, mut io) = authenticated(limits);
    let started = start(&mut h, &mut io, 1, &[b"cat"], ExecFlags::STDIN);
    assert_eq!(started.stdin_window, 8);
    h.children().nth(0).stdin_room = 3;
    io.push(&frame(FrameType::Stdin, 1, b"abcdefgh"));
    h.event(&mut io, true, false);
    h.child_event(&mut io, 0, ChildSource::Stdin);
    assert_eq!(
        h.children().nth(0).stdin,
        b"abc",
        "the pipe took what it had room for"
    );
    assert!(
        io.take_frames().is_empty(),
        "3 bytes is less than half the window"
    );

    h.children().nth(0).stdin_room = 100;
    h.child_event(&mut io, 0, ChildSource::Stdin);
    assert_eq!(h.children().nth(0).stdin, b"abcdefgh");
    let frames = io.take_frames();
    assert_eq!(kinds(&frames), [(FrameType::Window, 1)]);
    assert_eq!(Window::parse(&frames[0].payload).unwrap().increment, 8);

    io.push(&frame(FrameType::StdinEof, 1, b""));
    h.event(&mut io, true, false);
    assert!(
        h.children().nth(0).stdin_closed,
        "EOF closes the pipe once drained"
    );
}

#[test]
fn stdin_beyond_the_credit_window_is_a_fatal_flow_control_error() {
    let limits = Limits {
        stdin_window: 8,
        ..Limits::default()
    };
    let (mut h, mut io) = authenticated(limits);
    start(&mut h, &mut io, 1, &[b"cat"], ExecFlags::STDIN);
    io.push(&frame(FrameType::Stdin, 1, b"123456789"));
    h.event(&mut io, true, false);
    assert_eq!(error_of(&io.take_frames()[0]), (0, ErrorCode::FlowControl));
    assert_eq!(h.conn.state(), State::Closing);
    assert_eq!(
        h.children().nth(0).released,
        Some(EndReason::Disconnect),
        "the command is stopped with its connection"
    );
}

#[test]
fn a_signal_gets_through_while_the_command_never_reads_its_stdin() {
    let limits = Limits {
        stdin_window: 8,
        ..Limits::default()
    };
    let (mut h, mut io) = authenticated(limits);
    start(&mut h, &mut io, 1, &[b"sleep", b"30"], ExecFlags::STDIN);
    h.children().nth(0).stdin_room = 0;
    io.push(&frame(FrameType::Stdin, 1, b"12345678"));
    io.push(&signal(1, Signal::Int));
    h.event(&mut io, true, false);
    h.child_event(&mut io, 0, ChildSource::Stdin);
    assert_eq!(h.children().nth(0).signals, [Signal::Int]);
    assert!(
        io.take_frames().is_empty(),
        "no credit comes back: nothing was read"
    );
    finish(
        &mut h,
        &mut io,
        0,
        Termination::Signaled {
            signal: 2,
            core_dumped: false,
        },
    );
    let frames = io.take_frames();
    let exit = Exit::parse(&frames.last().unwrap().payload).unwrap();
    assert_eq!(exit.reason, EndReason::ClientSignal);
    assert_eq!(exit.shell_code(), 130);
}

#[test]
fn a_slow_client_stops_the_reading_of_a_commands_pipe() {
    let limits = Limits {
        output_high_water: 1 << 10,
        output_low_water: 256,
        io_buffer_len: 512,
        ..Limits::default()
    };
    let (mut h, mut io) = authenticated(limits);
    start(&mut h, &mut io, 1, &[b"yes"], ExecFlags::NONE);
    h.children()
        .nth(0)
        .write(OutputPipe::Stdout, &[b'y'; 100_000]);
    io.room = Some(0);
    h.child_event(&mut io, 0, ChildSource::Stdout);
    let unread = h.children().nth(0).unread(OutputPipe::Stdout);
    assert!(
        unread > 100_000 - 2 * 1024,
        "reading stopped near the high-water mark ({} bytes read)",
        100_000 - unread
    );
    assert!(h.conn.pending_output() < 1024 + 600);

    // The client reads again: the pipe is read again, without a new pipe event.
    io.room = None;
    let mut verdict = h.event(&mut io, false, true);
    while verdict == Verdict::Again {
        verdict = h.drive(&mut io);
    }
    assert_eq!(h.children().nth(0).unread(OutputPipe::Stdout), 0);
    let payload: usize = io.take_frames().iter().map(|f| f.payload.len()).sum();
    assert_eq!(payload, 100_000, "every byte, once");
}

#[test]
fn a_pipe_read_in_one_turn_is_bounded_by_the_read_budget() {
    let limits = Limits {
        read_budget: 10_000,
        io_buffer_len: 4096,
        ..Limits::default()
    };
    let (mut h, mut io) = authenticated(limits);
    start(&mut h, &mut io, 1, &[b"yes"], ExecFlags::NONE);
    h.children()
        .nth(0)
        .write(OutputPipe::Stdout, &[b'y'; 50_000]);
    assert_eq!(
        h.child_event(&mut io, 0, ChildSource::Stdout),
        Verdict::Again
    );
    let read = 50_000 - h.children().nth(0).unread(OutputPipe::Stdout);
    assert!(
        (10_000..=10_000 + 4096).contains(&read),
        "{read} bytes in one turn"
    );
    assert_eq!(h.settle(&mut io), Verdict::Wait);
    assert_eq!(h.children().nth(0).unread(OutputPipe::Stdout), 0);
}

// === Deadlines, limits, shutdown ===

#[test]
fn the_time_limit_sends_term_then_kill_and_exit_says_why() {
    let limits = Limits {
        exec_timeout: Duration::from_secs(1),
        exec_kill_grace: Duration::from_secs(2),
        ..Limits::default()
    };
    let (mut h, mut io) = authenticated(limits);
    start(&mut h, &mut io, 1, &[b"sleep", b"99"], ExecFlags::NONE);
    assert_eq!(
        h.conn.deadline(&h.limits),
        Tick(1_000),
        "no idle timeout while it runs"
    );
    h.expire(&mut io);
    assert_eq!(h.children().nth(0).signals, [Signal::Term]);
    assert_eq!(h.conn.deadline(&h.limits), Tick(3_000));
    h.expire(&mut io);
    assert_eq!(h.children().nth(0).signals, [Signal::Term, Signal::Kill]);
    finish(
        &mut h,
        &mut io,
        0,
        Termination::Signaled {
            signal: 9,
            core_dumped: false,
        },
    );
    let frames = io.take_frames();
    let exit = Exit::parse(&frames.last().unwrap().payload).unwrap();
    assert_eq!((exit.reason, exit.shell_code()), (EndReason::Timeout, 137));
}

#[test]
fn a_grandchild_holding_a_pipe_delays_exit_only_until_the_drain_deadline() {
    let (mut h, mut io) = authenticated(Limits::default());
    start(&mut h, &mut io, 1, &[b"sh"], ExecFlags::NONE);
    h.now = Tick(500);
    h.children()
        .nth(0)
        .close(OutputPipe::Stderr)
        .exit(Termination::Exited(0));
    h.child_event(&mut io, 0, ChildSource::Exit);
    h.child_event(&mut io, 0, ChildSource::Stderr);
    assert!(io.take_frames().is_empty(), "stdout is still open");
    assert_eq!(h.conn.deadline(&h.limits), Tick(1_500));
    h.expire(&mut io);
    assert_eq!(kinds(&io.take_frames()), [(FrameType::Exit, 1)]);
    assert!(h.children().nth(0).output_closed(OutputPipe::Stdout));
}

#[test]
fn the_per_connection_limit_refuses_the_next_command_on_its_stream() {
    let limits = Limits {
        max_streams_per_connection: 2,
        ..Limits::default()
    };
    let (mut h, mut io) = authenticated(limits);
    start(&mut h, &mut io, 1, &[b"sleep"], ExecFlags::NONE);
    start(&mut h, &mut io, 2, &[b"sleep"], ExecFlags::NONE);
    io.push(&exec(3, &[b"sleep"], ExecFlags::NONE));
    h.event(&mut io, true, false);
    assert_eq!(error_of(&io.take_frames()[0]), (3, ErrorCode::LimitReached));
    assert_eq!(h.children().all().len(), 2);
}

#[test]
fn a_refused_spawn_ends_only_its_stream() {
    let (mut h, mut io) = authenticated(Limits::default());
    h.children()
        .refuse_next(SpawnError::NotFound("nope: command not found".to_string()));
    io.push(&exec(1, &[b"nope"], ExecFlags::NONE));
    io.push(&Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 2, b"ok").to_vec());
    h.event(&mut io, true, false);
    let frames = io.take_frames();
    assert_eq!(error_of(&frames[0]), (1, ErrorCode::NotFound));
    assert_eq!(kinds(&frames[1..]), [(FrameType::EchoReply, 2)]);
}

#[test]
fn a_new_request_on_a_running_commands_stream_is_fatal() {
    let (mut h, mut io) = authenticated(Limits::default());
    start(&mut h, &mut io, 7, &[b"sleep"], ExecFlags::NONE);
    io.push(&Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 7, b"x").to_vec());
    h.event(&mut io, true, false);
    assert_eq!(
        error_of(&io.take_frames()[0]),
        (0, ErrorCode::UnexpectedFrame)
    );
    assert_eq!(h.children().nth(0).released, Some(EndReason::Disconnect));
}

#[test]
fn end_of_stream_from_the_client_stops_its_commands() {
    let (mut h, mut io) = authenticated(Limits::default());
    start(&mut h, &mut io, 1, &[b"sleep", b"99"], ExecFlags::NONE);
    io.close();
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
    assert_eq!(h.children().nth(0).released, Some(EndReason::Disconnect));
}

#[test]
fn a_client_error_on_a_commands_stream_ends_that_stream_only() {
    let (mut h, mut io) = authenticated(Limits::default());
    start(&mut h, &mut io, 4, &[b"sleep", b"99"], ExecFlags::NONE);
    let mut abandon = Vec::new();
    ErrorMessage::new(ErrorCode::Other(1000), "not interested").encode(4, &mut abandon);
    io.push(&abandon);
    io.push(&Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 5, b"still").to_vec());
    h.event(&mut io, true, false);
    assert_eq!(h.children().nth(0).released, Some(EndReason::ClientSignal));
    assert_eq!(h.conn.open_streams(), 0);
    assert_eq!(
        kinds(&io.take_frames()),
        [(FrameType::EchoReply, 5)],
        "nothing more on stream 4, and the connection goes on"
    );
    assert_eq!(h.conn.state(), State::Open);
}

#[test]
fn frames_for_a_finished_stream_are_ignored() {
    let (mut h, mut io) = authenticated(Limits::default());
    start(&mut h, &mut io, 1, &[b"true"], ExecFlags::STDIN);
    finish(&mut h, &mut io, 0, Termination::Exited(0));
    assert_eq!(kinds(&io.take_frames()), [(FrameType::Exit, 1)]);
    io.push(&frame(FrameType::Stdin, 1, b"late"));
    io.push(&signal(1, Signal::Term));
    h.event(&mut io, true, false);
    assert!(io.take_frames().is_empty());
    assert_eq!(h.conn.state(), State::Open);
}

#[test]
fn a_child_number_freed_in_a_turn_is_not_reused_in_that_turn() {
    let (mut h, mut io) = authenticated(Limits::default());
    start(&mut h, &mut io, 1, &[b"true"], ExecFlags::NONE);
    h.children()
        .nth(0)
        .close(OutputPipe::Stdout)
        .close(OutputPipe::Stderr)
        .exit(Termination::Exited(0));
    // One turn: the first command's exit is seen, and a new EXEC is read.
    h.conn.on_child_ready(0, ChildSource::Exit);
    h.conn.on_child_ready(0, ChildSource::Stdout);
    h.conn.on_child_ready(0, ChildSource::Stderr);
    io.push(&exec(2, &[b"true"], ExecFlags::NONE));
    h.event(&mut io, true, false);
    assert_eq!(
        kinds(&io.take_frames()),
        [(FrameType::Exit, 1), (FrameType::Started, 2)]
    );
    assert_eq!(h.children().nth(1).index, 1, "child number 0 is cooling");
    // A later turn may reuse it.
    io.push(&exec(3, &[b"true"], ExecFlags::NONE));
    h.event(&mut io, true, false);
    assert_eq!(h.children().nth(2).index, 0);
}

#[test]
fn shutdown_stops_commands_sends_their_exit_then_shutting_down() {
    let (mut h, mut io) = authenticated(Limits::default());
    start(&mut h, &mut io, 1, &[b"sleep", b"99"], ExecFlags::NONE);
    h.shutdown(&mut io, Duration::from_secs(5));
    assert_eq!(h.children().nth(0).signals, [Signal::Term]);
    io.push(&exec(2, &[b"true"], ExecFlags::NONE));
    h.event(&mut io, true, false);
    assert_eq!(error_of(&io.take_frames()[0]), (2, ErrorCode::ShuttingDown));
    finish(
        &mut h,
        &mut io,
        0,
        Termination::Signaled {
            signal: 15,
            core_dumped: false,
        },
    );
    let frames = io.take_frames();
    assert_eq!(
        kinds(&frames),
        [(FrameType::Exit, 1), (FrameType::Error, 0)]
    );
    assert_eq!(
        Exit::parse(&frames[0].payload).unwrap().reason,
        EndReason::Shutdown
    );
    assert_eq!(error_of(&frames[1]), (0, ErrorCode::ShuttingDown));
    assert_eq!(h.conn.state(), State::Closing);
}

// === The smallest limits ===

/// The smallest value [`Limits::validate`] accepts for every field, except the output cap:
/// its smallest (0) discards all output by design, so it is set to exactly what the command
/// writes here.
fn smallest_limits(output_cap: u64) -> Limits {
    let tick = Duration::from_nanos(1);
    let limits = Limits {
        max_connections: 1,
        reserved_fds: 0,
        max_frame_len: 64,
        io_buffer_len: MIN_IO_BUFFER_LEN,
        pooled_buffers: 0,
        output_high_water: 1,
        output_low_water: 0,
        read_budget: 1,
        frame_budget: 1,
        accept_budget: 1,
        datagram_budget: 1,
        udp_queue_len: 0,
        udp_queue_bytes: 0,
        idle_timeout: tick,
        hello_timeout: tick,
        frame_timeout: tick,
        linger_timeout: tick,
        shutdown_grace: Duration::ZERO,
        drain_delay: Duration::ZERO,
        pre_auth_max_frame: 64,
        max_exec: 1,
        max_streams_per_connection: 1,
        exec_timeout: tick,
        exec_kill_grace: tick,
        exec_drain_timeout: tick,
        exec_output_cap: output_cap,
        exec_shell: "sh".to_string(),
        stdin_window: 1,
        disk_budget: 1,
        max_transfers: 1,
        max_put: 0,
        max_client_memory: 64 + 12, // one maximal frame and its header
    };
    assert_eq!(limits.validate(), Ok(()), "these limits are accepted");
    limits
}

#[test]
fn an_exec_session_under_the_smallest_accepted_limits_loses_no_output() {
    let stdout: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
    let stderr = b"warning: small limits\n".repeat(5);
    let limits = smallest_limits((stdout.len() + stderr.len()) as u64);
    // A read budget of one byte makes every step take many turns: settle each.
    let mut h = ConnHarness::framed(limits).with_exec(TOKEN);
    let mut io = MemoryIo::new();
    io.push(&hello(TOKEN));
    h.event(&mut io, true, true);
    assert_eq!(h.settle(&mut io), Verdict::Wait);
    let frames = io.take_frames();
    assert_eq!(kinds(&frames), [(FrameType::HelloOk, 0)]);
    let ok = HelloOk::parse(&frames[0].payload).unwrap();
    assert!(
        ok.flags
            .contains(SessionFlags::AUTHENTICATED.with(SessionFlags::EXEC))
    );
    assert_eq!(ok.max_payload_len, 64);
    io.push(&exec(3, &[b"cat"], ExecFlags::STDIN));
    h.event(&mut io, true, false);
    assert_eq!(h.settle(&mut io), Verdict::Wait);
    let frames = io.take_frames();
    assert_eq!(kinds(&frames), [(FrameType::Started, 3)]);
    assert_eq!(Started::parse(&frames[0].payload).unwrap().stdin_window, 1);

    // Stdin one byte of credit at a time: each byte earns its WINDOW back.
    for byte in b"hi" {
        io.push(&frame(FrameType::Stdin, 3, &[*byte]));
        h.event(&mut io, true, false);
        h.settle(&mut io);
        h.child_event(&mut io, 0, ChildSource::Stdin);
        h.settle(&mut io);
        let frames = io.take_frames();
        assert_eq!(kinds(&frames), [(FrameType::Window, 3)]);
        assert_eq!(Window::parse(&frames[0].payload).unwrap().increment, 1);
    }
    io.push(&frame(FrameType::StdinEof, 3, b""));
    h.event(&mut io, true, false);
    h.settle(&mut io);
    assert_eq!(h.children().nth(0).stdin, b"hi");
    assert!(h.children().nth(0).stdin_closed);

    h.children()
        .nth(0)
        .write(OutputPipe::Stdout, &stdout)
        .write(OutputPipe::Stderr, &stderr);
    finish(&mut h, &mut io, 0, Termination::Exited(0));
    assert_eq!(h.settle(&mut io), Verdict::Wait);
    let frames = io.take_frames();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for frame in &frames[..frames.len() - 1] {
        assert!(frame.payload.len() <= 64, "within the frame limit");
        match frame.header.frame_type {
            FrameType::Stdout => out.extend_from_slice(&frame.payload),
            FrameType::Stderr => err.extend_from_slice(&frame.payload),
            other => panic!("unexpected {other:?} before EXIT"),
        }
    }
    assert_eq!(out, stdout, "all of stdout, in order");
    assert_eq!(err, stderr, "all of stderr, in order");
    let last = frames.last().unwrap();
    assert_eq!(
        (last.header.frame_type, last.header.stream),
        (FrameType::Exit, 3)
    );
    assert_eq!(
        Exit::parse(&last.payload).unwrap(),
        Exit {
            termination: Termination::Exited(0),
            reason: EndReason::None
        }
    );
    assert_eq!(h.conn.open_streams(), 0);
}

// === Half-close and stream reuse (issue 12 §4.6) ===

#[test]
fn an_exec_that_comes_with_the_clients_fin_is_refused_on_its_stream() {
    let (mut h, mut io) = authenticated(Limits::default());
    // EXEC and FIN in one write: the poll reports the data and the read side closed at once
    // (EPOLLRDHUP). The FIN would stop the command the moment it started, without EXIT, so
    // it is refused with a clear error instead of STARTED and silence.
    io.push(&exec(1, &[b"cat"], ExecFlags::STDIN));
    io.push(&frame(FrameType::StdinEof, 1, b""));
    io.push(
        &Frame::new(
            FrameType::EchoRequest,
            Flags::END_STREAM,
            3,
            b"still answered",
        )
        .to_vec(),
    );
    io.close();
    h.conn.on_read_closed();
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
    let frames = io.take_frames();
    assert_eq!(
        kinds(&frames),
        [(FrameType::Error, 1), (FrameType::EchoReply, 3)]
    );
    assert_eq!(error_of(&frames[0]), (1, ErrorCode::BadRequest));
    let text = ErrorMessage::parse(&frames[0].payload)
        .unwrap()
        .text
        .to_string();
    assert!(text.contains("FIN"), "the text says why: {text:?}");
    assert!(frames[0].header.flags.contains(Flags::END_STREAM));
    assert!(h.children().all().is_empty(), "nothing was started");
}

#[test]
fn a_fin_after_the_exec_was_handled_stops_the_command_without_exit() {
    let (mut h, mut io) = authenticated(Limits::default());
    start(&mut h, &mut io, 1, &[b"sleep", b"9"], ExecFlags::NONE);
    io.close();
    h.conn.on_read_closed();
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
    assert!(
        io.take_frames().is_empty(),
        "no EXIT: the client sends nothing more"
    );
    assert_eq!(h.children().nth(0).released, Some(EndReason::Disconnect));
}

#[test]
fn a_stream_ended_by_the_clients_error_may_be_reused_at_once() {
    let (mut h, mut io) = authenticated(Limits::default());
    start(&mut h, &mut io, 4, &[b"sleep", b"99"], ExecFlags::NONE);
    // ERROR on stream 4 and a new EXEC on stream 4 in the same write: the ERROR frees the id
    // before the next frame is handled.
    let mut abandon = Vec::new();
    ErrorMessage::new(ErrorCode::Other(1000), "never mind").encode(4, &mut abandon);
    io.push(&abandon);
    io.push(&exec(4, &[b"true"], ExecFlags::NONE));
    io.push(&Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 5, b"sync").to_vec());
    h.event(&mut io, true, false);
    assert_eq!(h.children().nth(0).released, Some(EndReason::ClientSignal));
    assert_eq!(
        kinds(&io.take_frames()),
        [(FrameType::Started, 4), (FrameType::EchoReply, 5)],
        "the new command runs on the reused id; nothing more comes for the old one"
    );
    assert_eq!(h.children().all().len(), 2);
    // Output the old command left in its pipe is never sent: its pipes went with it.
    h.children().nth(0).write(OutputPipe::Stdout, b"late");
    let old = h.children().nth(0).index;
    h.child_event(&mut io, old, ChildSource::Stdout);
    assert!(io.take_frames().is_empty());
    assert_eq!(h.conn.state(), State::Open);
}
