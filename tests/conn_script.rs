//! The connection state machine driven by scripted I/O: every read, `WouldBlock`, error and
//! expected write is spelled out, and time is whatever the test says it is.

use std::io::ErrorKind;
use std::time::Duration;

use monoreactor::Limits;
use monoreactor::Readiness;
use monoreactor::Tick;
use monoreactor::proto::{
    ErrorCode, ErrorMessage, Flags, Frame, FrameType, HEADER_LEN, Hello, HelloOk, PROTOCOL_VERSION,
    SessionFlags,
};
use monoreactor::testkit::{Builder, ConnHarness, MemoryIo};
use monoreactor::{Protocol, State, Verdict};

fn hello() -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::current().encode(&mut wire);
    wire
}

fn hello_ok() -> Vec<u8> {
    hello_ok_announcing(Limits::default().max_frame_len)
}

fn hello_ok_announcing(max_payload_len: u32) -> Vec<u8> {
    let mut wire = Vec::new();
    HelloOk {
        version: PROTOCOL_VERSION,
        max_payload_len,
        flags: SessionFlags::AUTHENTICATED,
    }
    .encode(&mut wire);
    wire
}

fn echo_request(stream: u32, payload: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::EchoRequest, Flags::END_STREAM, stream, payload).to_vec()
}

fn echo_reply(stream: u32, payload: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::EchoReply, Flags::END_STREAM, stream, payload).to_vec()
}

/// HELLO followed by `requests`, and HELLO_OK followed by their replies: the bytes a client sends
/// and the bytes the server must answer with.
fn conversation(requests: &[(u32, &[u8])]) -> (Vec<u8>, Vec<u8>) {
    let (mut input, mut output) = (hello(), hello_ok());
    for (stream, payload) in requests {
        input.extend(echo_request(*stream, payload));
        output.extend(echo_reply(*stream, payload));
    }
    (input, output)
}

fn error_frame(code: ErrorCode, text: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    ErrorMessage::new(code, text).encode(0, &mut wire);
    wire
}

// === Handshake ===

#[test]
fn hello_one_byte_per_event_is_answered_once_complete() {
    let wire = hello();
    let mut script = Builder::new();
    for byte in &wire {
        script.read(&[*byte]);
    }
    let mut io = script.write(&hello_ok()).build();
    let mut h = ConnHarness::framed(Limits::default());
    for _ in &wire {
        assert_eq!(h.conn.state(), State::AwaitingHello);
        assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    }
    assert_eq!(h.conn.state(), State::Open);
    assert!(
        !h.conn.holds_buffers(),
        "an idle connection gives its buffers back"
    );
}

#[test]
fn interrupted_read_is_retried() {
    let mut io = Builder::new()
        .read_error(ErrorKind::Interrupted)
        .read(&hello())
        .write(&hello_ok())
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(h.conn.state(), State::Open);
}

#[test]
fn request_before_hello_is_refused_and_closed_in_order() {
    let error = error_frame(
        ErrorCode::UnexpectedFrame,
        "expected HELLO first, got ECHO_REQUEST",
    );
    let mut io = Builder::new()
        .read(&echo_request(1, b"hi"))
        .write(&error)
        .eof()
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(
        h.event(&mut io, true, false),
        Verdict::Wait,
        "error sent, FIN sent, lingering"
    );
    assert!(io.write_shut());
    assert_eq!(
        h.event(&mut io, true, false),
        Verdict::Close,
        "the peer's EOF ends the linger"
    );
}

// === Requests ===

#[test]
fn pipelined_requests_are_answered_in_order_in_one_write() {
    let mut input = hello();
    let mut output = hello_ok();
    for stream in 1..=5u32 {
        input.extend(echo_request(stream, &stream.to_be_bytes()));
        output.extend(echo_reply(stream, &stream.to_be_bytes()));
    }
    let mut io = Builder::new().read(&input).write(&output).build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
}

#[test]
fn unknown_frame_type_gets_an_error_and_the_connection_stays_open() {
    let unknown = Frame::new(FrameType::Unknown(0x7f), Flags::NONE, 9, b"future").to_vec();
    let mut error = Vec::new();
    ErrorMessage::new(
        ErrorCode::UnknownFrameType,
        "frame type 0x7f is not known to this server",
    )
    .encode(9, &mut error);
    let mut input = hello();
    input.extend(unknown);
    input.extend(echo_request(10, b"still here"));
    let mut output = hello_ok();
    output.extend(error);
    output.extend(echo_reply(10, b"still here"));
    let mut io = Builder::new().read(&input).write(&output).build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(h.conn.state(), State::Open);
}

#[test]
fn frames_split_across_events_give_the_same_replies() {
    let first = echo_request(1, b"first");
    let mut input = hello();
    input.extend(&first);
    input.extend(echo_request(2, b"second"));
    let hello_end = hello().len();
    let first_end = hello_end + first.len();
    // Pieces end inside a header, inside HELLO's payload, inside a payload, and on a frame
    // boundary; each reply goes out as soon as its request is complete.
    let mut io = Builder::new()
        .read(&input[..3])
        .read(&input[3..HEADER_LEN + 5])
        .read(&input[HEADER_LEN + 5..hello_end + 7])
        .write(&hello_ok())
        .read(&input[hello_end + 7..first_end])
        .write(&echo_reply(1, b"first"))
        .read(&input[first_end..])
        .write(&echo_reply(2, b"second"))
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    for _ in 0..5 {
        assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    }
    assert_eq!(h.conn.pending_input(), 0);
}

#[test]
fn request_on_stream_zero_is_refused() {
    let mut input = hello();
    input.extend(echo_request(0, b"no stream"));
    let mut output = hello_ok();
    output.extend(error_frame(
        ErrorCode::UnexpectedFrame,
        "ECHO_REQUEST on stream 0; requests need a stream id other than 0",
    ));
    let mut io = Builder::new().read(&input).write(&output).build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(
        h.event(&mut io, true, false),
        Verdict::Wait,
        "lingering after the error"
    );
    assert_eq!(h.conn.state(), State::Closing);
}

#[test]
fn hello_on_another_stream_is_refused() {
    let mut payload = vec![0; Hello::current().payload_len()];
    Hello::current().emit(&mut payload);
    let input = Frame::new(FrameType::Hello, Flags::END_STREAM, 3, &payload).to_vec();
    let output = error_frame(
        ErrorCode::BadHello,
        "HELLO on stream 3; it belongs on stream 0",
    );
    let mut io = Builder::new().read(&input).write(&output).build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(h.conn.state(), State::Closing);
}

// === Writing ===

#[test]
fn blocked_write_waits_for_writable_and_then_sends_everything() {
    let (input, output) = conversation(&[(1, b"ping")]);
    let mut io = Builder::new()
        .read(&input)
        .write_would_block()
        .write(&output)
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(h.conn.pending_output(), output.len());
    assert_eq!(h.conn.interest(), Readiness::READABLE | Readiness::WRITABLE);
    assert_eq!(h.event(&mut io, false, true), Verdict::Wait);
    assert_eq!(h.conn.pending_output(), 0);
    assert_eq!(
        h.conn.interest(),
        Readiness::READABLE,
        "WRITABLE dropped once nothing is pending"
    );
}

#[test]
fn short_write_stops_writing_until_writable() {
    let (input, output) = conversation(&[(1, b"ping")]);
    // The first step takes 5 bytes of a longer write: a short write means the socket is full,
    // so no second write is attempted until the next WRITABLE.
    let mut io = Builder::new()
        .read(&input)
        .write(&output[..5])
        .write(&output[5..])
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(h.conn.pending_output(), output.len() - 5);
    assert_eq!(io.remaining(), 1);
    assert_eq!(h.event(&mut io, false, true), Verdict::Wait);
    assert_eq!(h.conn.pending_output(), 0);
}

#[test]
fn write_error_closes() {
    let mut io = Builder::new()
        .read(&hello())
        .write_error(ErrorKind::BrokenPipe)
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
    assert_eq!(h.conn.state(), State::Closed);
}

// === Backpressure and budgets ===

#[test]
fn output_above_high_water_stops_reading_until_it_drains() {
    let limits = Limits {
        output_high_water: 1024,
        output_low_water: 256,
        ..Limits::default()
    };
    let payload = [7u8; 64];
    let mut input = hello();
    let mut output = hello_ok();
    for stream in 1..=100 {
        input.extend(echo_request(stream, &payload));
        output.extend(echo_reply(stream, &payload));
    }
    let mut io = Builder::new()
        .read(&input)
        .write_would_block()
        .write(&output)
        .build();
    let mut h = ConnHarness::new(Protocol::Framed, limits);
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    let pending = h.conn.pending_output();
    assert!(
        (1024..1024 + 200).contains(&pending),
        "stopped near the high-water mark: {pending}"
    );
    assert_eq!(
        h.conn.interest(),
        Readiness::WRITABLE,
        "reading paused while output is high"
    );

    let mut turns = 0;
    let mut verdict = h.event(&mut io, false, true);
    while verdict == Verdict::Again {
        turns += 1;
        assert!(turns < 100, "bounded");
        verdict = h.drive(&mut io);
    }
    assert_eq!(verdict, Verdict::Wait);
    assert_eq!((h.conn.pending_output(), h.conn.pending_input()), (0, 0));
    assert_eq!(h.conn.interest(), Readiness::READABLE);
}

#[test]
fn frame_budget_spreads_pipelined_requests_over_turns() {
    let limits = Limits {
        frame_budget: 4,
        ..Limits::default()
    };
    let mut input = hello();
    let mut output = hello_ok();
    for stream in 1..=10 {
        input.extend(echo_request(stream, b"x"));
        output.extend(echo_reply(stream, b"x"));
    }
    let mut io = Builder::new().read(&input).write(&output).build();
    let mut h = ConnHarness::new(Protocol::Framed, limits);
    // 11 frames at 4 per turn: three turns.
    assert_eq!(h.event(&mut io, true, false), Verdict::Again);
    assert_eq!(h.drive(&mut io), Verdict::Again);
    assert_eq!(h.drive(&mut io), Verdict::Wait);
}

#[test]
fn a_large_frame_grows_the_input_buffer_no_further_than_one_maximal_frame() {
    let limits = Limits {
        max_frame_len: 100_000,
        io_buffer_len: 16 << 10,
        ..Limits::default()
    };
    let request = echo_request(1, &vec![9; 100_000]);
    let mut input = hello();
    input.extend(&request[..request.len() - 1]);
    let mut io = Builder::new()
        .read(&input)
        .write(&hello_ok_announcing(100_000))
        .build();
    let mut h = ConnHarness::new(Protocol::Framed, limits);
    let mut verdict = h.event(&mut io, true, false);
    while verdict == Verdict::Again {
        verdict = h.drive(&mut io);
    }
    assert_eq!(h.conn.pending_input(), request.len() - 1);
    let cap = h.limits.input_cap();
    assert!(
        h.conn.buffer_capacity() <= cap,
        "buffers hold {} bytes, cap {cap}",
        h.conn.buffer_capacity()
    );
}

// === End of stream ===

#[test]
fn peer_eof_after_requests_flushes_replies_then_closes() {
    let (input, output) = conversation(&[(1, b"last words")]);
    let mut io = Builder::new().read(&input).write(&output).eof().build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
}

#[test]
fn data_and_fin_in_one_edge_are_both_seen() {
    // The peer's last request and its FIN arrived before the server read: one event, flagged
    // read-closed. The short read must not end the turn, or the EOF waits for the idle timeout.
    let (input, output) = conversation(&[(1, b"bye")]);
    let mut io = Builder::new().read(&input).eof().write(&output).build();
    let mut h = ConnHarness::framed(Limits::default());
    h.conn.on_read_closed();
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
}

#[test]
fn raw_echo_sees_fin_that_came_with_the_data() {
    let mut io = Builder::new().read(b"last").write(b"last").eof().build();
    let mut h = ConnHarness::new(Protocol::RawEcho, Limits::default());
    h.conn.on_read_closed();
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
}

#[test]
fn connection_reset_closes() {
    let mut io = Builder::new()
        .read(&hello()[..4])
        .read_error(ErrorKind::ConnectionReset)
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
}

#[test]
fn oversize_header_gets_error_then_fin_then_input_is_discarded_until_eof() {
    let mut input = hello();
    input.extend(&[0x10, 0x01, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
    let mut output = hello_ok();
    output.extend(error_frame(
        ErrorCode::FrameTooLarge,
        "frame declares 4294967295 payload bytes, limit is 1048576",
    ));
    let mut io = Builder::new()
        .read(&input)
        .write(&output)
        .read(b"more junk the client sent")
        .eof()
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(
        h.event(&mut io, true, false),
        Verdict::Wait,
        "lingering: waiting for the client to close"
    );
    assert!(io.write_shut());
    assert_eq!(h.conn.state(), State::Closing);
    assert_eq!(h.conn.interest(), Readiness::READABLE);
    assert_eq!(
        h.event(&mut io, true, false),
        Verdict::Wait,
        "junk read and dropped"
    );
    assert_eq!(h.conn.pending_input(), 0);
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
}

#[test]
fn client_error_after_hello_closes_quietly_after_earlier_replies() {
    let mut client_error = Vec::new();
    ErrorMessage::new(ErrorCode::Other(500), "client gives up").encode(0, &mut client_error);
    let mut input = hello();
    input.extend(echo_request(1, b"answered"));
    input.extend(client_error);
    input.extend(echo_request(2, b"discarded"));
    let mut output = hello_ok();
    output.extend(echo_reply(1, b"answered"));
    let mut io = Builder::new().read(&input).write(&output).eof().build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(
        h.event(&mut io, true, false),
        Verdict::Wait,
        "no ERROR of its own; FIN sent"
    );
    assert!(io.write_shut());
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
}

#[test]
fn linger_ends_at_its_deadline_when_the_client_never_closes() {
    let mut io = Builder::new()
        .read(&echo_request(1, b"no hello"))
        .write(&error_frame(
            ErrorCode::UnexpectedFrame,
            "expected HELLO first, got ECHO_REQUEST",
        ))
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    h.now = Tick(1_000);
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait, "lingering");
    assert_eq!(
        h.conn.deadline(&h.limits),
        Tick(1_000).after(h.limits.linger_timeout)
    );
    assert_eq!(h.expire(&mut io), Verdict::Close);
}

// === Deadlines ===

#[test]
fn idle_deadline_follows_activity() {
    let mut io = Builder::new().read(&hello()).write(&hello_ok()).build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(
        h.conn.deadline(&h.limits),
        Tick(0).after(h.limits.hello_timeout),
        "before HELLO, the hello deadline"
    );
    h.now = Tick(5_000);
    h.event(&mut io, true, false);
    assert_eq!(
        h.conn.deadline(&h.limits),
        Tick(5_000).after(h.limits.idle_timeout)
    );
}

#[test]
fn idle_timeout_sends_timeout_error_and_closes() {
    let text = format!("no activity for {:?}", Limits::default().idle_timeout);
    let mut io = Builder::new()
        .read(&hello())
        .write(&hello_ok())
        .write(&error_frame(ErrorCode::Timeout, &text))
        .eof()
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    h.event(&mut io, true, false);
    assert_eq!(h.expire(&mut io), Verdict::Wait, "TIMEOUT sent, lingering");
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
}

#[test]
fn silent_client_gets_timeout_at_the_hello_deadline() {
    let text = format!("no HELLO within {:?}", Limits::default().hello_timeout);
    let mut io = Builder::new()
        .write(&error_frame(ErrorCode::Timeout, &text))
        .eof()
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.conn.deadline(&h.limits), Tick(10_000));
    // Never driven, so the read hint from accept is still set: the linger reads the EOF at once.
    assert_eq!(h.expire(&mut io), Verdict::Close);
    assert!(io.write_shut());
}

#[test]
fn hello_trickled_in_keeps_the_hello_deadline() {
    let wire = hello();
    let mut script = Builder::new();
    for byte in &wire[..wire.len() - 1] {
        script.read(&[*byte]);
    }
    let mut io = script.build();
    let mut h = ConnHarness::framed(Limits::default());
    for (step, _) in wire[..wire.len() - 1].iter().enumerate() {
        h.now = Tick(step as u64 * 400);
        h.event(&mut io, true, false);
        assert_eq!(
            h.conn.deadline(&h.limits),
            Tick(10_000),
            "activity does not extend it"
        );
    }
}

#[test]
fn slow_frame_hits_the_frame_deadline_despite_activity() {
    let limits = Limits {
        frame_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let request = echo_request(1, b"slow");
    let text = format!("frame not completed within {:?}", limits.frame_timeout);
    let mut script = Builder::new();
    script.read(&hello()).write(&hello_ok());
    for byte in &request[..6] {
        script.read(&[*byte]);
    }
    let mut io = script
        .write(&error_frame(ErrorCode::Timeout, &text))
        .eof()
        .build();
    let mut h = ConnHarness::new(Protocol::Framed, limits);
    h.event(&mut io, true, false);
    // One byte every 500 ms keeps the connection active, but the frame began at 1 s.
    for step in 0..6 {
        h.now = Tick(1_000 + step * 500);
        h.event(&mut io, true, false);
    }
    assert_eq!(h.conn.deadline(&h.limits), Tick(3_000));
    assert_eq!(h.expire(&mut io), Verdict::Wait, "TIMEOUT sent, lingering");
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
}

// === Raw echo ===

#[test]
fn raw_echo_returns_bytes_and_closes_after_peer_eof() {
    let mut io = Builder::new()
        .read(b"hello")
        .write(b"hello")
        .read(b" world")
        .write(b" world")
        .eof()
        .build();
    let mut h = ConnHarness::new(Protocol::RawEcho, Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
}

#[test]
fn raw_echo_queues_the_whole_read_when_the_socket_takes_nothing() {
    let mut io = Builder::new()
        .read(b"abcdef")
        .write_would_block()
        .write(b"abcdef")
        .build();
    let mut h = ConnHarness::new(Protocol::RawEcho, Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(h.conn.pending_output(), 6);
    assert_eq!(h.event(&mut io, false, true), Verdict::Wait);
    assert_eq!(h.conn.pending_output(), 0);
}

#[test]
fn raw_echo_keeps_unsent_bytes_until_writable() {
    let mut io = Builder::new()
        .read(b"abcdef")
        .write(b"abc")
        .write(b"def")
        .build();
    let mut h = ConnHarness::new(Protocol::RawEcho, Limits::default());
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    assert_eq!(h.conn.pending_output(), 3);
    assert_eq!(h.event(&mut io, false, true), Verdict::Wait);
    assert_eq!(h.conn.pending_output(), 0);
}

// === Echo replies written from the input ===
//
// While nothing is queued and the socket takes bytes, echo replies are the requests rewritten
// in place and written from the input; everything else must still come out in order.

/// An open connection on a `MemoryIo` whose HELLO_OK has been taken.
fn open_on_memory() -> (ConnHarness, MemoryIo) {
    let mut io = MemoryIo::new();
    io.push(&hello());
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.event(&mut io, true, true), Verdict::Wait);
    let frames = io.take_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].header.frame_type, FrameType::HelloOk);
    (h, io)
}

/// (type, stream, payload) of each frame written since the last call.
fn written(io: &mut MemoryIo) -> Vec<(FrameType, u32, Vec<u8>)> {
    io.take_frames()
        .into_iter()
        .map(|frame| (frame.header.frame_type, frame.header.stream, frame.payload))
        .collect()
}

#[test]
fn echo_replies_keep_their_order_around_other_replies() {
    let (mut h, mut io) = open_on_memory();
    let big = vec![0xa5; 16 << 10];
    io.push(&echo_request(1, b"a"))
        .push(&echo_request(3, b"bb"))
        .push(&Frame::new(FrameType::Unknown(0x7f), Flags::NONE, 5, b"x").to_vec())
        .push(&echo_request(7, b"ccc"))
        .push(&echo_request(9, &big));
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    let frames = written(&mut io);
    let kinds: Vec<(FrameType, u32)> = frames.iter().map(|(t, s, _)| (*t, *s)).collect();
    assert_eq!(
        kinds,
        [
            (FrameType::EchoReply, 1),
            (FrameType::EchoReply, 3),
            (FrameType::Error, 5),
            (FrameType::EchoReply, 7),
            (FrameType::EchoReply, 9),
        ]
    );
    assert_eq!(frames[0].2, b"a");
    assert_eq!(frames[1].2, b"bb");
    assert_eq!(frames[3].2, b"ccc");
    assert_eq!(frames[4].2, big);
    assert!(!h.conn.holds_buffers(), "nothing is left over");
}

#[test]
fn echo_replies_the_socket_does_not_take_are_queued_in_order() {
    let (mut h, mut io) = open_on_memory();
    let payloads: [&[u8]; 3] = [&[1; 100], &[2; 50], b"z"];
    for (stream, payload) in [1, 2, 3].into_iter().zip(payloads) {
        io.push(&echo_request(stream, payload));
    }
    let total: usize = payloads.iter().map(|p| HEADER_LEN + p.len()).sum();
    io.room = Some(20); // the first write stops inside the first reply
    assert_eq!(h.event(&mut io, true, true), Verdict::Wait);
    assert_eq!(h.conn.pending_output(), total - 20);
    // A request that arrives meanwhile is answered behind the queued replies.
    io.push(&echo_request(4, b"late"));
    assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
    io.room = None;
    assert_eq!(h.event(&mut io, false, true), Verdict::Wait);
    assert_eq!(
        written(&mut io),
        [
            (FrameType::EchoReply, 1, payloads[0].to_vec()),
            (FrameType::EchoReply, 2, payloads[1].to_vec()),
            (FrameType::EchoReply, 3, payloads[2].to_vec()),
            (FrameType::EchoReply, 4, b"late".to_vec()),
        ]
    );
    assert!(!h.conn.holds_buffers());
}

#[test]
fn echo_request_split_across_reads_at_every_point_is_answered_once() {
    let request = echo_request(5, b"split me");
    for split in 1..request.len() {
        let (mut h, mut io) = open_on_memory();
        // A whole request, then part of the next: the part waits in an input buffer.
        io.push(&echo_request(3, b"whole")).push(&request[..split]);
        assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
        assert_eq!(
            written(&mut io),
            [(FrameType::EchoReply, 3, b"whole".to_vec())]
        );
        assert_eq!(h.conn.pending_input(), split);
        io.push(&request[split..]);
        assert_eq!(h.event(&mut io, true, false), Verdict::Wait);
        assert_eq!(
            written(&mut io),
            [(FrameType::EchoReply, 5, b"split me".to_vec())]
        );
        assert!(!h.conn.holds_buffers());
    }
}

#[test]
fn echo_write_error_closes_at_once() {
    // HELLO_OK goes out first; the echo reply's write then fails.
    let mut io = Builder::new()
        .read(&hello())
        .write(&hello_ok())
        .read(&echo_request(1, b"x"))
        .write_error(ErrorKind::BrokenPipe)
        .build();
    let mut h = ConnHarness::framed(Limits::default());
    assert_eq!(h.event(&mut io, true, true), Verdict::Wait);
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
}
