//! Who may do what, over loopback against the real binary: the token in HELLO, what a
//! connection without it may still do (echo, in small frames), frames refused from their header
//! before HELLO, exec off by default, and the configurations `serve` refuses to start with.

mod support;

use std::net::TcpStream;
use std::time::Duration;

use monoreactor::client::Client;
use monoreactor::proto::{
    ErrorCode, Flags, FrameType, HEADER_LEN, Header, SessionFlags, message::EXEC_VERSION,
};
use support::exec::*;
use support::*;

/// The pre-authentication frame limit (`Limits::pre_auth_max_frame`).
const PRE_AUTH_MAX: u32 = 4 << 10;

/// How long to look for a marker file that a refused command would have created.
const MARKER_GRACE: Duration = Duration::from_millis(300);

/// A header alone, declaring `len` payload bytes that are never sent.
fn header(frame_type: FrameType, stream: u32, len: u32) -> [u8; HEADER_LEN] {
    Header {
        frame_type,
        flags: Flags::NONE,
        stream,
        len,
    }
    .to_bytes()
}

/// `touch MARKER` as an EXEC on `stream`, with the marker beside the server's root.
fn touch_marker(server: &Server, stream: u32, name: &str) -> Vec<u8> {
    let marker = server.scratch().join(name);
    exec_frame(stream, &request(&["touch", marker.to_str().unwrap()]))
}

#[track_caller]
fn assert_nothing_ran(server: &Server, markers: &[&str]) {
    server.assert_no_children("nothing may have been spawned");
    std::thread::sleep(MARKER_GRACE);
    for name in markers {
        assert!(
            !server.scratch().join(name).exists(),
            "the command that creates {name} ran"
        );
    }
    server.assert_no_children("nothing may have been spawned");
}

#[test]
fn a_wrong_token_gets_auth_failed_then_eof_and_a_pipelined_exec_never_runs() {
    let server = Server::start_exec(&[]);
    let token = server.token().to_vec();
    let mut last_byte_changed = token.clone();
    *last_byte_changed.last_mut().unwrap() ^= 1;
    let mut longer = token.clone();
    longer.push(b'x');
    let wrong: [(&str, &[u8]); 4] = [
        ("last byte changed", &last_byte_changed),
        ("a prefix", &token[..token.len() - 1]),
        ("one byte longer", &longer),
        ("another token", b"0123456789abcdef0123456789abcdef"),
    ];
    let mut markers = Vec::new();
    for (index, (what, credentials)) in wrong.iter().enumerate() {
        let marker = format!("wrong-token-{index}");
        // HELLO and EXEC in one write: the EXEC is already in the server's buffer when the
        // HELLO is refused.
        let mut wire = hello_with(credentials);
        wire.extend(touch_marker(&server, 1, &marker));
        let mut client = framed_client_raw(&server);
        client.send_raw(&wire).unwrap();
        let text = expect_error(&mut client, 0, ErrorCode::AuthFailed);
        expect_eof(&mut client);
        assert!(
            !text.contains(std::str::from_utf8(&token).unwrap()),
            "{what}: the error text shows the token"
        );
        markers.push(marker);
    }
    let markers: Vec<&str> = markers.iter().map(String::as_str).collect();
    assert_nothing_ran(&server, &markers);
    // The right token still works.
    let mut conn = ExecConn::connect(&server);
    assert_eq!(conn.run_argv(&["true"]).code(), 0);
}

#[test]
fn without_the_token_exec_is_refused_on_its_stream_and_echo_still_works() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect_with(&server, None).expect("HELLO without a token");
    let hello_ok = conn.hello_ok;
    assert_eq!(hello_ok.version, EXEC_VERSION);
    assert!(
        !hello_ok.flags.contains(SessionFlags::AUTHENTICATED),
        "flags {:#x}",
        hello_ok.flags.bits()
    );
    assert!(
        !hello_ok.flags.contains(SessionFlags::EXEC),
        "a connection that may not run commands is not told whether the server does"
    );
    assert_eq!(hello_ok.max_payload_len, PRE_AUTH_MAX, "the pre-auth limit");

    let stream = conn.new_stream();
    conn.exec_on_raw(stream, &touch_marker(&server, stream, "unauthenticated"));
    let (code, text) = conn.refused(stream);
    assert_eq!(code, ErrorCode::Unauthenticated, "{text}");
    // The connection goes on: echo up to the pre-auth limit.
    conn.echo(b"hello");
    conn.echo(&seeded_bytes(4, PRE_AUTH_MAX as usize));
    assert_nothing_ran(&server, &["unauthenticated"]);
}

#[test]
fn unauthenticated_echo_is_limited_to_4_kib_from_the_header() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect_with(&server, None).expect("HELLO without a token");
    conn.echo(&[7; PRE_AUTH_MAX as usize]);
    // A header declaring one byte more is refused before its payload is sent.
    conn.send(&header(FrameType::EchoRequest, 99, PRE_AUTH_MAX + 1));
    conn.expect_conn_error(ErrorCode::FrameTooLarge);

    // With the token, the full frame limit applies.
    let mut conn = ExecConn::connect(&server);
    assert_eq!(conn.hello_ok.max_payload_len, 1 << 20);
    conn.echo(&seeded_bytes(5, 256 << 10));
}

#[test]
fn before_hello_anything_else_is_refused_from_its_header_alone() {
    let server = Server::start_exec(&[]);
    for (frame_type, len) in [
        (FrameType::EchoRequest, 100),
        (FrameType::Exec, 64),
        (FrameType::Stdin, PRE_AUTH_MAX),
        (FrameType::Unknown(0x7f), 10),
    ] {
        let mut client = framed_client_raw(&server);
        client.send_raw(&header(frame_type, 1, len)).unwrap();
        // No payload byte follows: the answer comes from the 12 header bytes.
        let text = expect_error(&mut client, 0, ErrorCode::UnexpectedFrame);
        expect_eof(&mut client);
        assert!(text.contains("HELLO"), "{frame_type}: {text}");
    }
    // A non-HELLO header that is also too large may be refused for either reason.
    let mut client = framed_client_raw(&server);
    client
        .send_raw(&header(FrameType::Stdin, 1, 1 << 20))
        .unwrap();
    let frame = recv(&mut client);
    let refusal = monoreactor::proto::ErrorMessage::parse(&frame.payload).map(|error| error.code);
    assert!(
        frame.header.frame_type == FrameType::Error
            && frame.header.stream == 0
            && matches!(
                refusal,
                Ok(ErrorCode::UnexpectedFrame | ErrorCode::FrameTooLarge)
            ),
        "got {}",
        describe(&frame)
    );
    expect_eof(&mut client);
    server.assert_no_children("after frames before HELLO");
}

#[test]
fn a_hello_header_declaring_more_than_4_kib_is_refused_from_the_header() {
    let server = Server::start_exec(&[]);
    let mut client = framed_client_raw(&server);
    client
        .send_raw(&header(FrameType::Hello, 0, PRE_AUTH_MAX + 1))
        .unwrap();
    expect_error(&mut client, 0, ErrorCode::FrameTooLarge);
    expect_eof(&mut client);

    // A HELLO of exactly 4 KiB (the token, then bytes a later version might append) is fine.
    let mut payload = hello_with(server.token())[HEADER_LEN..].to_vec();
    payload.resize(PRE_AUTH_MAX as usize, 0xee);
    let mut client = framed_client_raw(&server);
    let mut wire = header(FrameType::Hello, 0, PRE_AUTH_MAX).to_vec();
    wire[1] = Flags::END_STREAM.bits();
    wire.extend_from_slice(&payload);
    client.send_raw(&wire).unwrap();
    expect_hello_ok(&mut client);
    assert_eq!(client.echo(b"ok").unwrap(), b"ok");
}

#[test]
fn clients_before_hello_cannot_pin_large_frames_in_server_memory() {
    const CLIENTS: usize = 40;
    let server = Server::start_exec(&[]);
    // Warm up the pool and the allocator with one refused client.
    let mut warm = framed_client_raw(&server);
    warm.send_raw(&header(FrameType::Hello, 0, 1 << 20))
        .unwrap();
    expect_error(&mut warm, 0, ErrorCode::FrameTooLarge);
    drop(warm);
    let rss_start = server.rss_kib();

    // Each declares a 1 MiB HELLO and sends 48 KiB of it at once: each is refused from the
    // header, without waiting for the rest.
    let mut hello = header(FrameType::Hello, 0, 1 << 20).to_vec();
    hello.extend(std::iter::repeat_n(0xab, 48 << 10));
    let refused: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut stream = tcp(server.framed());
            // The server may refuse (and stop reading) before all of it is written.
            let _ = std::io::Write::write_all(&mut stream, &hello);
            stream
        })
        .collect();
    for stream in refused {
        let mut client = Client::from_stream(stream);
        expect_error(&mut client, 0, ErrorCode::FrameTooLarge);
    }
    let rss_refused = server.rss_kib();

    // Then clients that stop half-way through a HELLO within the limit: held, not refused.
    let mut partial = header(FrameType::Hello, 0, PRE_AUTH_MAX).to_vec();
    partial.extend(std::iter::repeat_n(0xcd, 2000));
    let held: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut stream = tcp(server.framed());
            send(&mut stream, &partial);
            stream
        })
        .collect();
    // Let the server read every partial HELLO before measuring.
    std::thread::sleep(Duration::from_millis(300));
    let rss_held = server.rss_kib();
    eprintln!(
        "RSS {rss_start} KiB; {rss_refused} KiB after {CLIENTS} refused 1 MiB HELLOs; {rss_held} KiB with {CLIENTS} partial HELLOs held"
    );
    // Before the pre-auth limit, 40 clients sending 1 MiB HELLOs could pin 40 MiB; the bounds
    // here allow for a pooled I/O buffer (64 KiB) per connection and nothing more.
    let per_client = 80;
    assert!(
        rss_refused < rss_start + CLIENTS as u64 * per_client,
        "refused clients: server RSS {rss_start} KiB -> {rss_refused} KiB"
    );
    assert!(
        rss_held < rss_refused + CLIENTS as u64 * per_client,
        "held clients: server RSS {rss_refused} KiB -> {rss_held} KiB"
    );
    drop(held);
}

#[test]
fn exec_is_off_by_default() {
    let server = Server::start(&[]);
    let mut conn = ExecConn::connect_with(&server, None).expect("HELLO");
    let flags = conn.hello_ok.flags;
    assert!(
        flags.contains(SessionFlags::AUTHENTICATED),
        "no token: every connection is trusted"
    );
    assert!(
        !flags.contains(SessionFlags::EXEC),
        "flags {:#x}",
        flags.bits()
    );
    let stream = conn.exec(&request(&["true"]));
    let (code, text) = conn.refused(stream);
    assert_eq!(code, ErrorCode::ExecDisabled, "{text}");
    conn.echo(b"echo still works");
    server.assert_no_children("exec is off");
}

#[test]
fn a_token_without_exec_authenticates_but_runs_nothing() {
    let scratch = Scratch::new("auth");
    let token_file = write_token_file(scratch.path(), TEST_TOKEN);
    let server = Server::start(&["--token-file", token_file.to_str().unwrap()]);
    let mut client = framed_client_raw(&server);
    let hello_ok = client
        .hello(monoreactor::proto::Hello::with_credentials(TEST_TOKEN))
        .unwrap();
    assert!(hello_ok.flags.contains(SessionFlags::AUTHENTICATED));
    assert!(!hello_ok.flags.contains(SessionFlags::EXEC));
    let mut conn = ExecConn::from_client(client, hello_ok);
    let stream = conn.exec(&request(&["true"]));
    assert_eq!(conn.refused(stream).0, ErrorCode::ExecDisabled);
    server.assert_no_children("exec is off");
}

#[test]
fn the_token_may_come_from_the_environment() {
    let scratch = Scratch::new("auth-env");
    let root = scratch.path().join("root");
    let root_arg = root.to_str().unwrap();
    let server = Server::start_with(&["--exec", "--root", root_arg], |command| {
        command.env(
            "MONOREACTOR_TOKEN",
            std::str::from_utf8(TEST_TOKEN).unwrap(),
        );
    });
    let mut client = framed_client_raw(&server);
    let hello_ok = client
        .hello(monoreactor::proto::Hello::with_credentials(TEST_TOKEN))
        .unwrap();
    let mut conn = ExecConn::from_client(client, hello_ok);
    assert_eq!(
        conn.run_argv(&["echo", "env token"]).stdout.text(),
        "env token\n"
    );
}

/// Runs `serve ARGS` expecting it to refuse to start: a failure exit within 10 s, nothing on
/// stdout, exactly one line on stderr (returned).
#[track_caller]
fn refused_start(args: &[&str]) -> String {
    let mut full = vec!["serve", "--echo-tcp", "off", "--echo-udp", "off"];
    full.extend_from_slice(args);
    let finished = run_cli(&full, Duration::from_secs(10));
    assert!(
        !finished.status.success(),
        "serve {args:?} started; stdout {:?}",
        finished.stdout
    );
    assert_eq!(finished.stdout, "", "serve {args:?} printed on stdout");
    let lines: Vec<&str> = finished.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "serve {args:?}: stderr {:?}",
        finished.stderr
    );
    lines[0].to_string()
}

#[test]
fn exec_without_a_token_refuses_to_start_with_one_line() {
    let scratch = Scratch::new("auth-start");
    let root = scratch.path().join("root");
    let line = refused_start(&[
        "--listen",
        "127.0.0.1:0",
        "--exec",
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(line.contains("--exec") && line.contains("token"), "{line}");
}

#[test]
fn a_non_loopback_listener_without_a_token_refuses_to_start_with_one_line() {
    // Refused before anything is bound; nothing connects to it either way.
    let line = refused_start(&["--listen", "0.0.0.0:0"]);
    assert!(line.contains("0.0.0.0") && line.contains("token"), "{line}");
    assert!(line.contains("--insecure"), "the way out is named: {line}");
}

#[test]
fn a_short_token_file_refuses_to_start_with_one_line() {
    let scratch = Scratch::new("auth-short");
    let token_file = write_token_file(scratch.path(), b"too-short");
    let root = scratch.path().join("root");
    let line = refused_start(&[
        "--listen",
        "127.0.0.1:0",
        "--exec",
        "--token-file",
        token_file.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(
        line.contains("--token-file") && line.contains("16"),
        "{line}"
    );
}

#[test]
fn wrong_tokens_are_logged_at_most_about_once_a_second() {
    const ATTEMPTS: usize = 30;
    let server = Server::start_exec(&[]);
    let started = std::time::Instant::now();
    for _ in 0..ATTEMPTS {
        let mut client = framed_client_raw(&server);
        client
            .send_raw(&hello_with(b"not-the-token-0123456789abcdef"))
            .unwrap();
        expect_error(&mut client, 0, ErrorCode::AuthFailed);
    }
    let elapsed = started.elapsed();
    let count_lines = || {
        server
            .stderr_text()
            .lines()
            .filter(|line| line.contains("wrong token"))
            .count()
    };
    retry(Duration::from_secs(2), || {
        (count_lines() >= 1).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "no log line for {ATTEMPTS} wrong tokens:\n{}",
            server.stderr_text()
        )
    });
    let lines = count_lines();
    assert!(
        lines as u64 <= elapsed.as_secs() + 1,
        "{lines} log lines for {ATTEMPTS} wrong tokens in {elapsed:?}:\n{}",
        server.stderr_text()
    );
    assert!(
        !server
            .stderr_text()
            .contains(std::str::from_utf8(TEST_TOKEN).unwrap()),
        "the log shows the token"
    );
}

#[test]
fn a_version_1_client_sees_exec_as_an_unknown_frame_type() {
    let server = Server::start_exec(&[]);
    let mut client = framed_client_raw(&server);
    let hello_ok = client
        .hello(monoreactor::proto::Hello {
            min_version: 1,
            max_version: 1,
            credentials: TEST_TOKEN,
        })
        .unwrap();
    assert_eq!(hello_ok.version, 1);
    let marker = server.scratch().join("version-1");
    client
        .send_raw(&exec_frame(
            5,
            &request(&["touch", marker.to_str().unwrap()]),
        ))
        .unwrap();
    expect_error(&mut client, 5, ErrorCode::UnknownFrameType);
    assert_eq!(client.echo(b"still open").unwrap(), b"still open");
    assert_nothing_ran(&server, &["version-1"]);
}
