//! `serve --tls-cert --tls-key [--tls-client-ca]` against a rustls client written here: the
//! framed protocol over TLS 1.3 (echo, a large echo, a multi-MiB GET verified with BLAKE3), the
//! refusals (wrong ALPN, a client certificate from another CA), the two mixups (a plaintext
//! client on the TLS port, a TLS client on the plaintext port), the limits (a stalled handshake
//! and the hello timeout, a flood of half-handshakes and `--max-client-memory`), the client
//! key reaching the connection, start-up errors, and one thread throughout.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use monoreactor::proto::files::FileInfo;
use monoreactor::proto::{ErrorCode, FrameType};
use support::files::{blake3_of, get_frame};
use support::{IO_TIMEOUT, Server, TempDir, echo_request, hello_bytes, retry, run_cli, tcp};
use tls_support::{
    ALPN, ServerFiles, TestCa, TlsStream, client_config, connect, expect_closed, expect_error,
    handshake, recv_frame,
};

/// A server on loopback with TLS on the framed listener (and `extra` flags).
fn tls_server(dir: &TempDir, extra: &[&str]) -> (Server, ServerFiles) {
    let files = ServerFiles::write(dir.path());
    let mut args: Vec<String> = files.flags();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(&args), files)
}

fn tls_client(server: &Server, files: &ServerFiles) -> TlsStream {
    let config = client_config(&files.ca.der, &[ALPN], None);
    connect(server.framed(), config, IO_TIMEOUT)
}

#[track_caller]
fn hello(stream: &mut (impl Read + Write)) {
    stream.write_all(&hello_bytes()).expect("send HELLO");
    let (header, _) = recv_frame(stream);
    assert_eq!(header.frame_type, FrameType::HelloOk);
}

// === Over TLS ===

#[test]
fn handshake_then_framed_echo_over_tls_on_one_thread() {
    let dir = TempDir::new("tls-echo");
    let (server, files) = tls_server(&dir, &[]);
    let mut clients: Vec<TlsStream> = (0..4).map(|_| tls_client(&server, &files)).collect();
    for client in &mut clients {
        hello(client);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let payload = format!("hello over TLS {i}");
        client
            .write_all(&echo_request(1, payload.as_bytes()))
            .unwrap();
        let (header, reply) = recv_frame(client);
        assert_eq!(
            (header.frame_type, header.stream),
            (FrameType::EchoReply, 1)
        );
        assert_eq!(reply, payload.as_bytes());
        assert_eq!(client.conn.alpn_protocol(), Some(ALPN));
    }
    assert_eq!(server.threads(), 1, "one thread while TLS connections run");
}

#[test]
fn a_large_echo_and_a_multi_mib_get_over_tls_arrive_whole() {
    let dir = TempDir::new("tls-get");
    let root = dir.join("root");
    std::fs::create_dir(&root).unwrap();
    let data = support::seeded_bytes(14, 5 << 20 | 12_345);
    std::fs::write(root.join("big"), &data).unwrap();
    let root_arg = root.display().to_string();
    let (server, files) = tls_server(&dir, &["--root", &root_arg]);
    let mut client = tls_client(&server, &files);
    hello(&mut client);

    // A frame of most of a MiB: many records each way, split as TCP likes.
    let payload = support::seeded_bytes(3, (1 << 20) - 64);
    client.write_all(&echo_request(5, &payload)).unwrap();
    let (header, reply) = recv_frame(&mut client);
    assert_eq!(header.frame_type, FrameType::EchoReply);
    assert!(reply == payload, "the echo came back changed");

    client.write_all(&get_frame(7, b"big", 0)).unwrap();
    let (header, info) = recv_frame(&mut client);
    assert_eq!(header.frame_type, FrameType::FileInfo);
    assert_eq!(FileInfo::parse(&info).unwrap().size, data.len() as u64);
    let mut received = Vec::with_capacity(data.len());
    loop {
        let (header, payload) = recv_frame(&mut client);
        match header.frame_type {
            FrameType::Data => received.extend_from_slice(&payload),
            FrameType::Digest => {
                assert_eq!(payload, blake3_of(&data));
                break;
            }
            other => panic!("{other} during the GET"),
        }
    }
    assert_eq!(received.len(), data.len());
    assert_eq!(
        blake3_of(&received),
        blake3_of(&data),
        "BLAKE3 of what arrived"
    );
}

// === Refusals ===

#[test]
fn a_client_offering_other_alpn_is_refused_and_one_offering_none_is_served() {
    let dir = TempDir::new("tls-alpn");
    let (server, files) = tls_server(&dir, &[]);
    let config = client_config(&files.ca.der, &[b"h2", b"http/1.1"], None);
    let mut wrong = connect(server.framed(), config, IO_TIMEOUT);
    let error = handshake(&mut wrong).expect_err("no common ALPN protocol");
    assert!(
        error.to_string().contains("NoApplicationProtocol")
            || error.to_string().contains("no_application_protocol")
            || error.to_string().contains("application protocol"),
        "{error}"
    );

    let config = client_config(&files.ca.der, &[], None);
    let mut none = connect(server.framed(), config, IO_TIMEOUT);
    hello(&mut none);
    assert_eq!(none.conn.alpn_protocol(), None);
}

#[test]
fn a_plaintext_client_on_the_tls_port_is_told_bad_hello_in_plaintext() {
    let dir = TempDir::new("tls-plain-client");
    let (server, _files) = tls_server(&dir, &[]);
    let mut plain = tcp(server.framed());
    plain.write_all(&hello_bytes()).unwrap();
    let text = expect_error(&mut plain, ErrorCode::BadHello);
    assert!(
        text.contains("speaks TLS") && text.contains("--tls"),
        "{text}"
    );
    expect_closed(&mut plain);
}

#[test]
fn a_tls_client_on_the_plaintext_port_gets_a_plaintext_answer() {
    let server = Server::start(&[]);
    let ca = TestCa::new("unused");
    let mut client = connect(
        server.framed(),
        client_config(&ca.der, &[ALPN], None),
        IO_TIMEOUT,
    );
    let error = handshake(&mut client).expect_err("a plaintext server cannot answer TLS");
    // What reached rustls was not a TLS record: our ERROR frame, in plaintext.
    assert!(
        error.kind() == ErrorKind::InvalidData,
        "rustls saw something that is not TLS: {error}"
    );

    // The bytes themselves, read by a raw socket sending a ClientHello's first bytes.
    let mut raw = tcp(server.framed());
    raw.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0, 0, 0xc4, 3, 3, 0])
        .unwrap();
    let text = expect_error(&mut raw, ErrorCode::BadHello);
    assert!(text.contains("TLS client on a plaintext port"), "{text}");
    expect_closed(&mut raw);
}

#[test]
fn a_client_certificate_from_the_client_ca_is_verified_and_its_key_reaches_the_connection() {
    let dir = TempDir::new("tls-mtls");
    let client_ca = TestCa::new("client CA");
    let ca_path = dir.join("clients.pem");
    std::fs::write(&ca_path, &client_ca.pem).unwrap();
    let ca_arg = ca_path.display().to_string();
    // `-v -v` after the helper's `-q`: debug, where the established line is logged.
    let (server, files) = tls_server(&dir, &["--tls-client-ca", &ca_arg, "-v", "-v"]);

    let alice = client_ca.client("alice");
    let config = client_config(&files.ca.der, &[ALPN], Some(&alice));
    let mut client = connect(server.framed(), config, IO_TIMEOUT);
    hello(&mut client);
    let fingerprint = monoreactor::key_fingerprint(&alice.der)
        .unwrap()
        .to_string();
    let line = retry(Duration::from_secs(5), || {
        server
            .stderr_text()
            .lines()
            .find(|line| line.contains("TLS established") && line.contains(&fingerprint))
            .map(str::to_string)
    });
    assert!(
        line.is_some(),
        "the client key {fingerprint} in the log:\n{}",
        server.stderr_text()
    );

    // No certificate: still served (a token may authenticate it).
    let mut anonymous = tls_client(&server, &files);
    hello(&mut anonymous);

    // A certificate from another CA: refused in the handshake.
    let stranger = TestCa::new("other CA").client("mallory");
    let config = client_config(&files.ca.der, &[ALPN], Some(&stranger));
    let mut refused = connect(server.framed(), config, IO_TIMEOUT);
    // TLS 1.3: the client's handshake is done before the server has judged its certificate;
    // the refusal is the alert that comes instead of HELLO_OK.
    let outcome = handshake(&mut refused)
        .and_then(|()| refused.write_all(&hello_bytes()))
        .and_then(|()| refused.read(&mut [0; 16]));
    let error = outcome.expect_err("a certificate from another CA is refused");
    assert!(
        error.to_string().contains("UnknownCA")
            || error.to_string().contains("unknown_ca")
            || error.to_string().contains("alert"),
        "{error}"
    );
}

// === Limits ===

#[test]
fn a_stalled_handshake_is_closed_by_the_hello_timeout() {
    let dir = TempDir::new("tls-stall");
    let (server, _files) = tls_server(&dir, &["--hello-timeout", "1"]);
    let mut stalled = tcp(server.framed());
    // Half a ClientHello's record, then nothing.
    stalled
        .write_all(&[
            0x16, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00, 0x00, 0xfc, 0x03, 0x03,
        ])
        .unwrap();
    let started = Instant::now();
    expect_closed(&mut stalled);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
}

#[test]
fn a_flood_of_half_handshakes_stays_under_max_client_memory() {
    let dir = TempDir::new("tls-flood");
    // 256 KiB for every client buffer together: a few dozen half-handshakes' worth (frames
    // of 16 KiB at most, so that the budget may be that small).
    let (server, files) = tls_server(
        &dir,
        &["--max-frame", "16384", "--max-client-memory", "262144"],
    );
    // Each sends a record header announcing 16 KiB and 2 KiB of it: the session grows its
    // buffer to hold the record (decided from the header), so each holds ~16 KiB.
    let mut flood = Vec::new();
    for _ in 0..64 {
        let mut stream = tcp(server.framed());
        let mut bytes = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc];
        bytes.resize(2048, 0x5a);
        stream.write_all(&bytes).unwrap();
        flood.push(stream);
    }
    // The server sheds the biggest holders until the total is under the budget: at most
    // 256 KiB / 16 KiB = 16 half-handshakes stay open.
    let open = retry(Duration::from_secs(10), || {
        let open = flood
            .iter_mut()
            .filter(|stream: &&mut TcpStream| {
                stream
                    .set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
                match (&**stream).read(&mut [0; 64]) {
                    Ok(0) => false,
                    Ok(_) => false,
                    Err(error) => {
                        matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                    }
                }
            })
            .count();
        (open <= 17).then_some(open)
    });
    assert!(
        open.is_some(),
        "half-handshakes still open over the budget; stderr:\n{}",
        server.stderr_text()
    );
    // And the server still serves a real client.
    drop(flood);
    let mut client = tls_client(&server, &files);
    hello(&mut client);
}

#[test]
fn a_record_header_announcing_16_kib_then_a_trickle_is_closed_by_the_hello_timeout() {
    let dir = TempDir::new("tls-trickle");
    let (server, files) = tls_server(&dir, &["--hello-timeout", "1"]);
    let mut trickle = tcp(server.framed());
    trickle
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    // A handshake record of 16 KiB, a byte every 50 ms: never whole, always moving.
    trickle.write_all(&[0x16, 0x03, 0x01, 0x40, 0x00]).unwrap();
    let started = Instant::now();
    let closed = loop {
        if started.elapsed() > Duration::from_secs(6) {
            break None;
        }
        match trickle.write(&[0x01]) {
            Ok(_) => {}
            Err(_) => break Some(started.elapsed()),
        }
        match trickle.read(&mut [0; 64]) {
            Ok(0) => break Some(started.elapsed()),
            Ok(n) => panic!("{n} bytes to a half record"),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break Some(started.elapsed()),
        }
    };
    let closed = closed.expect("the trickle is closed by the hello timeout");
    assert!(
        closed >= Duration::from_millis(800) && closed < Duration::from_secs(4),
        "closed after {closed:?}"
    );
    let mut client = tls_client(&server, &files);
    hello(&mut client);
}

#[test]
fn a_tls_client_that_never_reads_its_get_costs_bounded_memory_and_no_cpu() {
    let dir = TempDir::new("tls-never-reads");
    let root = dir.join("root");
    std::fs::create_dir(&root).unwrap();
    let data = support::seeded_bytes(5, 48 << 20);
    std::fs::write(root.join("big"), &data).unwrap();
    let root_arg = root.display().to_string();
    let (server, files) = tls_server(&dir, &["--root", &root_arg]);
    let mut client = tls_client(&server, &files);
    hello(&mut client);
    let rss_before = server.rss_kib();
    client.write_all(&get_frame(7, b"big", 0)).unwrap();
    // The socket buffers fill and the server stops; it then holds one record, not the file.
    std::thread::sleep(Duration::from_millis(700));
    let cpu_before = server.cpu_time();
    let wall = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    let wall = wall.elapsed();
    assert!(
        cpu < wall / 10,
        "the server used {cpu:?} of CPU in {wall:?} waiting for a client that never reads"
    );
    let grown = server.rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 8 << 10,
        "the server's memory grew by {grown} KiB for a GET it cannot send"
    );
    // Others are served meanwhile.
    let mut other = tls_client(&server, &files);
    hello(&mut other);
    other
        .write_all(&support::echo_request(1, b"still here"))
        .unwrap();
    let (header, reply) = recv_frame(&mut other);
    assert_eq!(header.frame_type, FrameType::EchoReply);
    assert_eq!(reply, b"still here");
}

/// Idle TLS connections measured: RSS growth per connection (see `idle_tls_connections`).
const IDLE_TLS_CONNECTIONS: usize = 400;
/// Most server memory an idle established TLS connection may cost. Measured 2,252 bytes
/// (2,000 connections, debug server; the same after HELLO alone): the 72-byte slot, its
/// 16-byte timer entry, the boxed session (160 bytes) and its traffic state (1,744: the two
/// directions' keys, 576 each, and rustls' `KernelConnection`, 552, with what it boxes).
/// Before the record buffers went back to the loop's list: 35,082 bytes after a 20 KiB echo
/// (both buffers one record), 7,215 after HELLO alone (a 4 KiB incoming buffer and the
/// flight's outgoing one).
const IDLE_TLS_MAX_BYTES: u64 = 5 << 10;

/// Opens `count` TLS connections to `server`, each through HELLO and, if `echo` is not
/// empty, one echo of it; returns them (held open) and the server's RSS growth per
/// connection, in bytes. One connection first, outside the count, so the pools' first
/// buffers are not spread over the others (as `bench idle` does).
fn idle_tls_connections(
    server: &Server,
    files: &ServerFiles,
    count: usize,
    echo: &[u8],
) -> (Vec<TlsStream>, u64) {
    let open = |held: &mut Vec<TlsStream>| {
        let mut client = tls_client(server, files);
        hello(&mut client);
        if !echo.is_empty() {
            client.write_all(&echo_request(1, echo)).unwrap();
            let (header, reply) = recv_frame(&mut client);
            assert_eq!(header.frame_type, FrameType::EchoReply);
            assert_eq!(reply.len(), echo.len());
        }
        held.push(client);
    };
    let mut held = Vec::with_capacity(count + 1);
    open(&mut held);
    std::thread::sleep(Duration::from_millis(100));
    let rss_before = server.rss_kib();
    for _ in 0..count {
        open(&mut held);
    }
    std::thread::sleep(Duration::from_millis(300));
    let rss_after = server.rss_kib();
    let per_connection = rss_after.saturating_sub(rss_before) * 1024 / count as u64;
    eprintln!(
        "{count} idle TLS connections (echo of {} bytes each): server RSS {rss_before} KiB -> \
         {rss_after} KiB, {per_connection} bytes per connection",
        echo.len()
    );
    (held, per_connection)
}

#[test]
fn an_idle_tls_connection_holds_no_record_buffer() {
    let dir = TempDir::new("tls-idle");
    let (server, files) = tls_server(&dir, &["--max-conns", "1000"]);
    // An echo of 20 KiB each way first: a full record in, a full record out, so each
    // connection has needed both record buffers at their largest.
    let echo = support::seeded_bytes(9, 20 << 10);
    let (mut held, per_connection) =
        idle_tls_connections(&server, &files, IDLE_TLS_CONNECTIONS, &echo);
    assert!(
        per_connection <= IDLE_TLS_MAX_BYTES,
        "{per_connection} bytes per idle TLS connection, over {IDLE_TLS_MAX_BYTES}"
    );
    // Every one is still served (a buffer taken again when bytes come).
    for client in held.iter_mut().step_by(50) {
        client.write_all(&echo_request(3, &echo)).unwrap();
        let (header, reply) = recv_frame(client);
        assert_eq!(
            (header.frame_type, header.stream),
            (FrameType::EchoReply, 3)
        );
        assert!(reply == echo, "the echo came back changed");
    }
    assert_eq!(server.threads(), 1);
}

// === Records rustls refuses mid-handshake ===

/// A ClientHello from a real client on a raw socket, and the server's whole first flight
/// read back (its records parsed up to the encrypted Finished).
fn client_hello_and_flight(server: &Server, files: &ServerFiles) -> TcpStream {
    let config = client_config(&files.ca.der, &[ALPN], None);
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut client = rustls::ClientConnection::new(config, name).unwrap();
    let mut raw = tcp(server.framed());
    while client.wants_write() {
        client.write_tls(&mut raw).unwrap();
    }
    // The flight: ServerHello, ChangeCipherSpec, then encrypted records; read until rustls
    // has processed a whole flight (it then wants to write its own).
    let mut buf = [0; 16 << 10];
    while !client.wants_write() {
        let n = raw.read(&mut buf).expect("the server's flight");
        assert!(n > 0, "the server closed during its flight");
        client.read_tls(&mut &buf[..n]).unwrap();
        client.process_new_packets().unwrap();
    }
    raw
}

#[test]
fn a_bad_record_in_the_clients_flight_gets_an_alert_and_the_server_lives_on() {
    let dir = TempDir::new("tls-bad-flight");
    let (server, files) = tls_server(&dir, &[]);
    // Instead of the client's encrypted Finished: a record that does not decrypt
    // (bad_record_mac), a plaintext data record, a bad CCS (rustls refuses each with an
    // alert), and an oversized one (refused from its header, before rustls sees it: closed).
    let records: [(&[u8], bool); 4] = [
        (&[&[0x17, 3, 3, 0, 32][..], &[0x42; 32]].concat(), true),
        (&[0x17, 3, 3, 0, 5, b'h', b'e', b'l', b'l', b'o'], true),
        (&[0x14, 3, 3, 0, 2, 1, 1], true),
        (&[0x17, 3, 3, 0x48, 0x01], false),
    ];
    for (record, alert) in records {
        let mut raw = client_hello_and_flight(&server, &files);
        raw.write_all(record).unwrap();
        // The alert (a record of some type), then the close.
        let mut rest = Vec::new();
        let _ = raw.read_to_end(&mut rest);
        assert!(
            !alert || (rest.len() >= 5 && matches!(rest[0], 0x15 | 0x17)),
            "an alert record for {record:02x?}: {rest:02x?}"
        );
        // The server is alive and serving.
        let mut client = tls_client(&server, &files);
        hello(&mut client);
    }
    assert_eq!(server.threads(), 1);
}

// === Start-up ===

#[test]
fn a_bad_certificate_file_is_one_line_naming_it_and_nothing_is_created() {
    let dir = TempDir::new("tls-bad-files");
    let files = ServerFiles::write(dir.path());
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let root = dir.join("root-never-created");
    let (junk_arg, key_arg, root_arg) = (
        junk.display().to_string(),
        files.key.display().to_string(),
        root.display().to_string(),
    );
    let finished = run_cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &junk_arg,
            "--tls-key",
            &key_arg,
            "--root",
            &root_arg,
        ],
        Duration::from_secs(10),
    );
    assert!(!finished.status.success());
    let lines: Vec<&str> = finished
        .stderr
        .lines()
        .filter(|line| line.starts_with("monoreactor: "))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("--tls-cert") && lines[0].contains(&junk_arg),
        "{}",
        lines[0]
    );
    assert!(!root.exists(), "serve created nothing before failing");

    // A key that does not go with the certificate.
    let other = TestCa::new("other").server();
    let other_key = dir.join("other.key");
    std::fs::write(&other_key, &other.key_pem).unwrap();
    let (cert_arg, other_arg) = (
        files.cert.display().to_string(),
        other_key.display().to_string(),
    );
    let finished = run_cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert_arg,
            "--tls-key",
            &other_arg,
            "--root",
            &root_arg,
        ],
        Duration::from_secs(10),
    );
    assert!(!finished.status.success());
    assert!(finished.stderr.contains(&other_arg), "{}", finished.stderr);
    assert!(!root.exists());
}

#[test]
fn a_non_loopback_framed_listener_without_tls_refuses_to_start_unless_insecure() {
    let dir = TempDir::new("tls-policy");
    let token = dir.join("token");
    std::fs::write(&token, "a-token-long-enough-for-the-server-0123456789").unwrap();
    let token_arg = token.display().to_string();
    let finished = run_cli(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--echo-tcp",
            "off",
            "--echo-udp",
            "off",
            "--no-files",
            "--token-file",
            &token_arg,
        ],
        Duration::from_secs(10),
    );
    assert!(!finished.status.success());
    let line = finished
        .stderr
        .lines()
        .find(|line| line.starts_with("monoreactor: "))
        .unwrap_or_default();
    assert!(
        line.contains("without TLS") && line.contains("--tls-cert") && line.contains("--insecure"),
        "{line}"
    );
}

/// A connection from a plain `TcpStream`, for the tests that never speak TLS.
#[allow(dead_code)]
fn raw(server: &Server) -> TcpStream {
    tcp(server.framed())
}
