//! Keeps `docs/PROTOCOL.md` true.
//!
//! - Every hex dump in the document is rebuilt here with the public encoder; the frames the
//!   server sends are also captured from the server itself (its connection state machine, or a
//!   real server on loopback), and the exact dump text must appear in the document.
//! - The tables marked `<!-- table: NAME -->` (frame types, error codes, field layouts, example
//!   error texts, constants) are parsed and compared with the code, in both directions: a row
//!   the code does not back fails, and so does a code value the table leaves out.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use monoreactor::buffer::BufferPool;
use monoreactor::conn::{Connection, Context, Protocol, State, Stream, Verdict};
use monoreactor::limits::{self, Limits};
use monoreactor::proto::header::field;
use monoreactor::proto::message::{
    MAX_CREDENTIALS_LEN, MAX_ERROR_TEXT_LEN, MIN_PROTOCOL_VERSION, error_field, hello_field,
    hello_ok_field,
};
use monoreactor::proto::{
    DecodeError, Decoder, ErrorCode, ErrorMessage, Flags, Frame, FrameType, HEADER_LEN, Header,
    Hello, HelloOk, MAGIC, PROTOCOL_VERSION, SessionFlags, ends_connection,
};
use monoreactor::server::{Config, DEFAULT_ECHO_ADDR, DEFAULT_FRAMED_ADDR, Server};
use monoreactor::service::echo::{MAX_DATAGRAM, REFUSED_SOURCE_PORTS};
use monoreactor::timer::Tick;

const DOC: &str = include_str!("../docs/PROTOCOL.md");

/// Bounds every blocking socket call in the loopback test.
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

// === A server connection with captured output ===

/// A transport that hands the connection whatever the test queued and records what it writes.
#[derive(Default)]
struct Wire {
    input: Vec<u8>,
    read: usize,
    output: Vec<u8>,
    write_shut: bool,
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pending = &self.input[self.read..];
        if pending.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = pending.len().min(buf.len());
        buf[..n].copy_from_slice(&pending[..n]);
        self.read += n;
        Ok(n)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Stream for Wire {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.write_shut = true;
        Ok(())
    }
}

/// The server's side of one framed connection, with the default limits.
struct ServerSide {
    conn: Connection,
    pool: BufferPool,
    limits: Limits,
    now: Tick,
    wire: Wire,
}

impl ServerSide {
    fn new() -> ServerSide {
        let limits = Limits::default();
        ServerSide {
            conn: Connection::new(Protocol::Framed, Tick(0), &Limits::default()),
            pool: BufferPool::new(limits.io_buffer_len, 4),
            limits,
            now: Tick(0),
            wire: Wire::default(),
        }
    }

    /// The client sends `bytes`; returns what the server writes in answer.
    fn send(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.wire.input.extend_from_slice(bytes);
        self.conn.on_ready(true, true);
        self.drive()
    }

    /// Time moves to the connection's next deadline; returns what the server writes.
    fn expire(&mut self) -> Vec<u8> {
        self.now = self.conn.deadline(&self.limits);
        let mut cx = Context::new(&mut self.pool, &self.limits, self.now);
        self.conn.on_deadline(&mut cx);
        self.drive()
    }

    fn drive(&mut self) -> Vec<u8> {
        let before = self.wire.output.len();
        loop {
            let mut cx = Context::new(&mut self.pool, &self.limits, self.now);
            if self.conn.drive(&mut self.wire, &mut cx) != Verdict::Again {
                break;
            }
        }
        self.wire.output[before..].to_vec()
    }

    /// A connection that has completed the handshake.
    fn open() -> ServerSide {
        let mut server = ServerSide::new();
        assert_eq!(server.send(&hello()), hello_ok());
        server
    }
}

/// The single ERROR frame in `wire`: (stream, code, text).
#[track_caller]
fn error_in(wire: &[u8]) -> (u32, ErrorCode, String) {
    let frame = Decoder::new(u32::MAX)
        .decode(wire)
        .expect("a valid header")
        .expect("a complete frame");
    assert_eq!(frame.wire_len(), wire.len(), "exactly one frame");
    assert_eq!(frame.header.frame_type, FrameType::Error);
    assert_eq!(frame.header.flags, Flags::END_STREAM);
    let error = ErrorMessage::parse(frame.payload).expect("an ERROR payload");
    (frame.header.stream, error.code, error.text.to_string())
}

/// Re-encodes an ERROR frame with the public encoder.
fn error_frame(stream: u32, code: ErrorCode, text: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    ErrorMessage::new(code, text).encode(stream, &mut wire);
    wire
}

// === The frames of section 6 ===

fn hello() -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::current().encode(&mut wire);
    wire
}

fn hello_ok() -> Vec<u8> {
    let mut wire = Vec::new();
    HelloOk {
        version: PROTOCOL_VERSION,
        max_payload_len: Limits::default().max_frame_len,
        flags: SessionFlags::AUTHENTICATED,
    }
    .encode(&mut wire);
    wire
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

fn unknown_type_request() -> Vec<u8> {
    Frame::new(FrameType::Unknown(0x20), Flags::END_STREAM, 2, b"xyz").to_vec()
}

#[test]
fn hello_dump_matches_the_encoder() {
    let wire = hello();
    let by_hand = Frame::new(
        FrameType::Hello,
        Flags::END_STREAM,
        0,
        b"MNRX\x00\x01\x00\x01\x00\x00",
    );
    assert_eq!(wire, by_hand.to_vec());
    assert_dump("hello", &wire);
}

#[test]
fn hello_ok_dump_is_what_a_default_server_sends() {
    let sent = ServerSide::new().send(&hello());
    assert_eq!(sent, hello_ok());
    let payload = &sent[HEADER_LEN..];
    assert_eq!(
        HelloOk::parse(payload),
        Ok(HelloOk {
            version: 2,
            max_payload_len: 1 << 20,
            flags: SessionFlags::AUTHENTICATED,
        })
    );
    assert_dump("hello-ok", &sent);
}

#[test]
fn echo_dumps_are_a_request_and_the_servers_reply() {
    let mut server = ServerSide::open();
    let sent = server.send(&echo_request());
    assert_eq!(sent, echo_reply());
    assert_dump("echo-request", &echo_request());
    assert_dump("echo-reply", &sent);
}

#[test]
fn frame_too_large_dump_is_what_the_server_sends_for_a_4_gib_header() {
    let mut server = ServerSide::open();
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
    assert_eq!(server.conn.state(), State::Closing);
    assert!(server.wire.write_shut, "FIN follows the fatal error");
    assert_dump("oversize-header", &oversize_header());
    assert_dump("error-frame-too-large", &sent);
}

#[test]
fn unknown_frame_type_dump_is_what_the_server_sends_and_the_connection_stays_open() {
    let mut server = ServerSide::open();
    let sent = server.send(&unknown_type_request());
    let (stream, code, text) = error_in(&sent);
    assert_eq!((stream, code), (2, ErrorCode::UnknownFrameType));
    assert!(!ends_connection(stream));
    assert_eq!(sent, error_frame(2, code, &text));
    assert_eq!(server.conn.state(), State::Open);
    assert_eq!(
        server.send(&echo_request()),
        echo_reply(),
        "the next frame is handled normally"
    );
    assert_dump("unknown-type-request", &unknown_type_request());
    assert_dump("error-unknown-frame-type", &sent);
}

/// Section 8.2, frame by frame.
#[test]
fn worked_example_session_gives_the_documented_bytes() {
    let mut server = ServerSide::new();
    let pipelined = [hello(), echo_request(), unknown_type_request()].concat();
    assert_eq!(pipelined.len(), 22 + 17 + 15);
    let answer = server.send(&pipelined);
    let unknown_error = error_frame(
        2,
        ErrorCode::UnknownFrameType,
        "frame type 0x20 is not known to this server",
    );
    assert_eq!(answer, [hello_ok(), echo_reply(), unknown_error].concat());
    assert_eq!(answer.len(), 22 + 17 + 57);
    assert_eq!(server.send(&oversize_header()), frame_too_large());
    assert!(server.wire.write_shut);
}

/// SERVER_BUSY and SHUTTING_DOWN come from the event loop, not the connection: a real server
/// on loopback with room for one connection.
#[test]
fn busy_and_shutting_down_dumps_are_what_a_real_server_sends() {
    let config = Config {
        framed: "127.0.0.1:0".parse().unwrap(),
        echo_tcp: None,
        echo_udp: None,
        limits: Limits {
            max_connections: 1,
            ..Limits::default()
        },
        handle_signals: false,
        ..Config::default()
    };
    let server = Server::bind(config).expect("bind on loopback");
    let addr = server.addrs().framed;
    let shutdown = server.shutdown_handle();
    let running = thread::spawn(move || server.run());

    let connect = |addr: SocketAddr| {
        let socket = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
        socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        socket.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        socket
    };
    let read_to_eof = |socket: &mut TcpStream| {
        let mut received = Vec::new();
        socket.read_to_end(&mut received).unwrap();
        received
    };

    // The first client takes the only place (HELLO_OK proves it was admitted).
    let mut admitted = connect(addr);
    admitted.write_all(&hello()).unwrap();
    let mut answer = vec![0; hello_ok().len()];
    admitted.read_exact(&mut answer).unwrap();
    assert_eq!(answer, hello_ok());

    // The second is refused before it sends anything.
    let busy = read_to_eof(&mut connect(addr));
    let (stream, code, text) = error_in(&busy);
    assert_eq!((stream, code), (0, ErrorCode::ServerBusy));
    assert_eq!(busy, error_frame(0, code, &text));
    assert_dump("error-server-busy", &busy);

    shutdown.shutdown().unwrap();
    let goodbye = read_to_eof(&mut admitted);
    let (stream, code, text) = error_in(&goodbye);
    assert_eq!((stream, code), (0, ErrorCode::ShuttingDown));
    assert_eq!(goodbye, error_frame(0, code, &text));
    assert_dump("error-shutting-down", &goodbye);

    drop(admitted);
    running.join().expect("server thread").expect("server run");
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
    let known: BTreeSet<u8> = (0..=u8::MAX)
        .filter(|&byte| !matches!(FrameType::from_u8(byte), FrameType::Unknown(_)))
        .collect();
    assert_eq!(
        documented, known,
        "every frame type the code knows is listed"
    );
    // The ranges the document reserves for later versions are unknown to this one.
    for byte in 0x20..=0x3f {
        assert_eq!(FrameType::from_u8(byte), FrameType::Unknown(byte));
    }
}

#[test]
fn error_code_table_matches_the_code() {
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
        let fatal = match row[2].as_str() {
            "yes" => true,
            "no" => false,
            other => panic!("`Fatal` of code {number} is `{other}`, not yes or no"),
        };
        let stream = if fatal { "0" } else { "the frame's" };
        assert_eq!(row[3], stream, "stream of {code}");
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

/// A field table's rows: offset, size (`None` for "the rest of the payload") and name.
fn field_rows(name: &str) -> Vec<(usize, Option<usize>, String)> {
    table(name)
        .into_iter()
        .map(|row| {
            let offset = row[0].parse().expect("offset is a number");
            let size = match row[1].as_str() {
                "rest" | "var" => None,
                size => Some(size.parse().expect("size is a number, `var` or `rest`")),
            };
            (offset, size, row[2].clone())
        })
        .collect()
}

fn fixed(range: std::ops::Range<usize>, name: &str) -> (usize, Option<usize>, String) {
    (range.start, Some(range.len()), name.to_string())
}

fn rest(offset: usize, name: &str) -> (usize, Option<usize>, String) {
    (offset, None, name.to_string())
}

#[test]
fn field_tables_match_the_code() {
    assert_eq!(
        field_rows("header-fields"),
        [
            fixed(field::TYPE..field::TYPE + 1, "type"),
            fixed(field::FLAGS..field::FLAGS + 1, "flags"),
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
        ]
    );
    assert_eq!(
        field_rows("error-fields"),
        [
            fixed(error_field::CODE, "code"),
            rest(error_field::TEXT, "text"),
        ]
    );
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
        ("HELLO_OK_PAYLOAD_LEN", HelloOk::V2_PAYLOAD_LEN.to_string()),
        ("MAX_CREDENTIALS_LEN", MAX_CREDENTIALS_LEN.to_string()),
        ("MAX_ERROR_TEXT_LEN", MAX_ERROR_TEXT_LEN.to_string()),
        ("max_frame_len", limits.max_frame_len.to_string()),
        ("MIN_FRAME_LEN", limits::MIN_FRAME_LEN.to_string()),
        ("MAX_FRAME_LEN", limits::MAX_FRAME_LEN.to_string()),
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

/// The connection-level error the server sends after `frames` on a fresh connection.
#[track_caller]
fn fatal_error_after(frames: &[u8]) -> (ErrorCode, String) {
    let mut server = ServerSide::new();
    let sent = server.send(frames);
    let error_at = sent.len() - last_frame_len(&sent);
    let (stream, code, text) = error_in(&sent[error_at..]);
    assert!(ends_connection(stream), "a fatal error is on stream 0");
    assert_eq!(server.conn.state(), State::Closing);
    (code, text)
}

/// Length of the last frame in `wire` (a sequence of whole frames).
fn last_frame_len(wire: &[u8]) -> usize {
    let decoder = Decoder::new(u32::MAX);
    let mut frames = decoder.frames(wire);
    let last = frames.by_ref().last().expect("at least one frame").unwrap();
    assert_eq!(frames.consumed(), wire.len(), "whole frames only");
    last.wire_len()
}

fn hello_with_payload(payload: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::Hello, Flags::END_STREAM, 0, payload).to_vec()
}

/// Every example text in section 5.1 is what the server says in the situation the table names.
#[test]
fn error_text_table_matches_what_the_server_sends() {
    let mut produced: Vec<(ErrorCode, String)> = Vec::new();

    let mut bad_flags = echo_request();
    bad_flags[field::FLAGS] = 0x80;
    let mut bad_reserved = echo_request();
    bad_reserved[field::RESERVED.end - 1] = 0x01;
    let hello_versions = |min: u16, max: u16| {
        let hello = Hello {
            min_version: min,
            max_version: max,
            credentials: &[],
        };
        let mut wire = Vec::new();
        hello.encode(&mut wire);
        wire
    };
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
        hello_with_payload(b"HTTP\x00\x01\x00\x01\x00\x00"),
        hello_versions(2, 5),
    ] {
        produced.push(fatal_error_after(&frames));
    }

    let mut server = ServerSide::open();
    let (_, code, text) = error_in(&server.send(&unknown_type_request()));
    produced.push((code, text));

    // Hello: nothing at all. Idle: nothing after the handshake. Frame: 5 bytes of a header,
    // then nothing.
    let mut server = ServerSide::new();
    let (_, code, text) = error_in(&server.expire());
    produced.push((code, text));
    let mut server = ServerSide::open();
    let (_, code, text) = error_in(&server.expire());
    produced.push((code, text));
    let mut server = ServerSide::open();
    assert!(server.send(&echo_request()[..5]).is_empty());
    let (_, code, text) = error_in(&server.expire());
    produced.push((code, text));

    // SERVER_BUSY and SHUTTING_DOWN are checked byte for byte against their dumps by
    // `busy_and_shutting_down_dumps_are_what_a_real_server_sends`; their texts are taken from
    // those dumps here.
    for name in ["error-server-busy", "error-shutting-down"] {
        let marker = format!("<!-- dump: {name} -->\n```text\n");
        let start = DOC.find(&marker).expect("dump present") + marker.len();
        let hex = &DOC[start..start + DOC[start..].find("\n```").unwrap()];
        let bytes: Vec<u8> = hex
            .split_whitespace()
            .map(|byte| u8::from_str_radix(byte, 16).unwrap())
            .collect();
        let (_, code, text) = error_in(&bytes);
        produced.push((code, text));
    }

    let documented: Vec<(String, String)> = table("error-texts")
        .into_iter()
        .map(|row| (row[0].clone(), row[2].clone()))
        .collect();
    let produced: Vec<(String, String)> = produced
        .into_iter()
        .map(|(code, text)| (code.to_string(), text))
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
