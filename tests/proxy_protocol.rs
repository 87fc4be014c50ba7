//! `serve --proxy-protocol` with the real binary: a plain TCP client playing the load
//! balancer writes a PROXY v1 or v2 header, then HELLO and echo (or raw echo bytes); the
//! server serves it as the client named in the header (its logs say so, and a remote client
//! behind a local balancer is not "loopback"); the refusals (no header under `require`, a
//! header from a peer not in `--proxy-from`, a malformed header); and the header before TLS.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use monoreactor::proto::proxy::{MAX_LEN, ProxyHeader, parse};
use monoreactor::proto::{ErrorCode, ErrorMessage, FrameType};
use proptest::collection::vec;
use proptest::prelude::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use support::files::get_frame;
use support::{IO_TIMEOUT, Server, TempDir, echo_request, hello_bytes, retry, tcp};
use tls_support::{
    ALPN, ServerFiles, client_config, expect_closed, expect_error, handshake, recv_frame,
};

/// What HAProxy would send for a client at 203.0.113.7:56324 that connected to 192.0.2.1:7878.
const V1_TCP4: &[u8] = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 7878\r\n";
const V1_TCP6: &[u8] = b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 7878\r\n";

/// The v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header for 203.0.113.7:56324 → 192.0.2.1:7878 over TCP/IPv4, with an ALPN and
/// an authority TLV, as HAProxy's `send-proxy-v2` may send.
fn v2_tcp4_with_tlvs() -> Vec<u8> {
    let mut body = vec![203, 0, 113, 7, 192, 0, 2, 1];
    body.extend_from_slice(&56324u16.to_be_bytes());
    body.extend_from_slice(&7878u16.to_be_bytes());
    for (kind, value) in [(0x01u8, &b"monoreactor"[..]), (0x02, b"example.com")] {
        body.push(kind);
        body.extend_from_slice(&(value.len() as u16).to_be_bytes());
        body.extend_from_slice(value);
    }
    v2(0x21, 0x11, &body)
}

/// A v2 LOCAL header, what HAProxy's health checks send.
fn v2_local() -> Vec<u8> {
    v2(0x20, 0x00, &[])
}

fn v2(version_command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[version_command, family]);
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(body);
    header
}

/// A server with `--proxy-protocol MODE` (and `extra`), logging at debug level (`-v -v`
/// against the `-q` the support adds), so the per-connection lines can be read.
fn proxied_server(mode: &str, extra: &[&str]) -> Server {
    // No token: the tests play clients on this machine (`--insecure` accepts that the
    // balancer could relay anyone).
    let mut args = vec!["--proxy-protocol", mode, "--insecure", "-v", "-v"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[track_caller]
fn expect_hello_ok(stream: &mut impl Read) {
    let (header, payload) = recv_frame(stream);
    assert_eq!(
        header.frame_type,
        FrameType::HelloOk,
        "{:?}",
        ErrorMessage::parse(&payload).map(|error| error.text.to_string())
    );
}

#[track_caller]
fn expect_echo(stream: &mut impl Read, payload: &[u8]) {
    let (header, body) = recv_frame(stream);
    assert_eq!(header.frame_type, FrameType::EchoReply, "{header:?}");
    assert_eq!(body, payload);
}

/// Waits until the server's stderr has a line containing every one of `words`.
#[track_caller]
fn expect_log_line(server: &Server, words: &[&str]) {
    let found = retry(Duration::from_secs(5), || {
        server
            .stderr_text()
            .lines()
            .any(|line| words.iter().all(|word| line.contains(word)))
            .then_some(())
    });
    assert!(
        found.is_some(),
        "no log line with {words:?} in:\n{}",
        server.stderr_text()
    );
}

// === Served as the client in the header ===

#[test]
fn v1_header_hello_and_echo_in_one_write_are_served_and_logged_as_the_client() {
    let server = proxied_server("require", &[]);
    for header in [V1_TCP4, V1_TCP6] {
        let mut balancer = tcp(server.framed());
        // The header and the first frames in one segment: the bytes after the header are the
        // connection's, not lost with it.
        let mut wire = header.to_vec();
        wire.extend_from_slice(&hello_bytes());
        wire.extend_from_slice(&echo_request(1, b"after the header"));
        balancer.write_all(&wire).unwrap();
        expect_hello_ok(&mut balancer);
        expect_echo(&mut balancer, b"after the header");
    }
    expect_log_line(
        &server,
        &["PROXY header from 127.0.0.1", "client 203.0.113.7:56324"],
    );
    expect_log_line(&server, &["client [2001:db8::7]:40000"]);
}

#[test]
fn v2_header_with_tlvs_one_byte_at_a_time_then_framed_and_raw_echo() {
    let server = proxied_server("require", &[]);
    let header = v2_tcp4_with_tlvs();

    let mut framed = tcp(server.framed());
    for byte in &header {
        framed.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    framed.write_all(&hello_bytes()).unwrap();
    expect_hello_ok(&mut framed);
    framed.write_all(&echo_request(3, b"v2")).unwrap();
    expect_echo(&mut framed, b"v2");

    // The same header on the raw echo port, and the bytes after it in the same write.
    let mut raw = tcp(server.echo_tcp());
    let mut wire = header.clone();
    wire.extend_from_slice(b"echo me");
    raw.write_all(&wire).unwrap();
    let mut back = [0; 7];
    raw.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"echo me", "only what follows the header is echoed");
    expect_log_line(
        &server,
        &["PROXY header", "client 203.0.113.7:56324 to 192.0.2.1:7878"],
    );
}

#[test]
fn a_remote_client_behind_a_local_balancer_is_not_loopback() {
    // The balancer connects from 127.0.0.1, but the client is 203.0.113.7: files over
    // plaintext are refused as for any remote client.
    let server = proxied_server("require", &[]);
    let mut balancer = tcp(server.framed());
    let mut wire = V1_TCP4.to_vec();
    wire.extend_from_slice(&hello_bytes());
    wire.extend_from_slice(&get_frame(1, b"anything", 0));
    balancer.write_all(&wire).unwrap();
    expect_hello_ok(&mut balancer);
    let text = expect_error(&mut balancer, ErrorCode::Forbidden);
    assert!(text.contains("plaintext from another host"), "{text}");

    // Without a header (allowed under `allow`), the same request from loopback is not
    // refused for that reason.
    let server = proxied_server("allow", &[]);
    let mut direct = tcp(server.framed());
    let mut wire = hello_bytes();
    wire.extend_from_slice(&get_frame(1, b"anything", 0));
    direct.write_all(&wire).unwrap();
    expect_hello_ok(&mut direct);
    let (header, payload) = recv_frame(&mut direct);
    if header.frame_type == FrameType::Error {
        let message = ErrorMessage::parse(&payload).expect("ERROR parses");
        assert_ne!(message.code, ErrorCode::Forbidden, "{}", message.text);
    }
}

/// The code of the answer to a GET sent after HELLO behind `header`, or `None` for no ERROR.
fn get_refusal_behind(server: &Server, header: &[u8]) -> Option<ErrorCode> {
    let mut balancer = tcp(server.framed());
    let mut wire = header.to_vec();
    wire.extend_from_slice(&hello_bytes());
    wire.extend_from_slice(&get_frame(1, b"anything", 0));
    balancer.write_all(&wire).unwrap();
    expect_hello_ok(&mut balancer);
    let (header, payload) = recv_frame(&mut balancer);
    (header.frame_type == FrameType::Error)
        .then(|| ErrorMessage::parse(&payload).expect("ERROR parses").code)
}

#[test]
fn a_proxied_client_is_loopback_only_if_the_header_names_a_local_client() {
    // The balancer is on loopback here; the client it names decides.
    let server = proxied_server("require", &[]);
    let local_client = b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 7878\r\n";
    assert_ne!(
        get_refusal_behind(&server, local_client),
        Some(ErrorCode::Forbidden),
        "a client on this machine, through a balancer on this machine"
    );
    // A header that names no client: it may be anywhere.
    for header in [&b"PROXY UNKNOWN\r\n"[..], &v2_local()] {
        assert_eq!(
            get_refusal_behind(&server, header),
            Some(ErrorCode::Forbidden),
            "{header:?}"
        );
    }
}

#[test]
fn a_v2_local_health_check_is_served_with_the_balancers_own_address() {
    let server = proxied_server("require", &[]);
    let mut check = tcp(server.framed());
    let mut wire = v2_local();
    wire.extend_from_slice(&hello_bytes());
    check.write_all(&wire).unwrap();
    expect_hello_ok(&mut check);
    expect_log_line(&server, &["PROXY header from 127.0.0.1", "LOCAL"]);

    let mut raw = tcp(server.echo_tcp());
    let mut wire = b"PROXY UNKNOWN\r\n".to_vec();
    wire.extend_from_slice(b"ping");
    raw.write_all(&wire).unwrap();
    let mut back = [0; 4];
    raw.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
}

// === Refusals ===

#[test]
fn require_refuses_a_connection_without_a_header() {
    let server = proxied_server("require", &[]);
    let mut framed = tcp(server.framed());
    framed.write_all(&hello_bytes()).unwrap();
    let text = expect_error(&mut framed, ErrorCode::BadHello);
    assert!(text.contains("no PROXY protocol header"), "{text}");
    expect_closed(&mut framed);

    let mut raw = tcp(server.echo_tcp());
    raw.write_all(b"no header here").unwrap();
    expect_closed(&mut raw);
    expect_log_line(&server, &["127.0.0.1", "no PROXY protocol header"]);
}

#[test]
fn a_header_from_a_peer_not_in_proxy_from_is_refused_and_a_direct_client_is_served() {
    let server = proxied_server("require", &["--proxy-from", "10.0.0.0/8,192.168.0.1"]);
    let mut spoofer = tcp(server.framed());
    let mut wire = V1_TCP4.to_vec();
    wire.extend_from_slice(&hello_bytes());
    spoofer.write_all(&wire).unwrap();
    let text = expect_error(&mut spoofer, ErrorCode::BadHello);
    assert!(text.contains("not in --proxy-from"), "{text}");
    expect_closed(&mut spoofer);

    let mut raw_spoofer = tcp(server.echo_tcp());
    raw_spoofer.write_all(&v2_tcp4_with_tlvs()).unwrap();
    expect_closed(&mut raw_spoofer);

    // A client that is not a balancer connects directly, with no header.
    let mut direct = tcp(server.framed());
    direct.write_all(&hello_bytes()).unwrap();
    expect_hello_ok(&mut direct);
    let mut raw = tcp(server.echo_tcp());
    raw.write_all(b"direct").unwrap();
    let mut back = [0; 6];
    raw.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"direct");
}

#[test]
fn malformed_and_oversize_headers_are_refused() {
    let server = proxied_server("allow", &[]);
    let mut oversize = v2(0x21, 0x11, &[]);
    oversize[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "malformed PROXY v1",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 99999 7878\r\n".to_vec(),
        ),
        ("longer than 107", {
            let mut line = b"PROXY TCP4 ".to_vec();
            line.resize(120, b'1');
            line
        }),
        ("over the 2048-byte limit", oversize),
    ];
    for (expected, wire) in cases {
        let mut balancer = tcp(server.framed());
        balancer.write_all(&wire).unwrap();
        let text = expect_error(&mut balancer, ErrorCode::BadHello);
        assert!(text.contains(expected), "{expected}: {text}");
        expect_closed(&mut balancer);
    }
}

#[test]
fn proxy_from_must_parse() {
    let finished = support::run_cli(
        &[
            "serve",
            "--proxy-protocol",
            "allow",
            "--proxy-from",
            "10.0.0.0/40",
        ],
        Duration::from_secs(10),
    );
    assert!(!finished.status.success());
    assert!(
        finished.stderr.contains("--proxy-from"),
        "{}",
        finished.stderr
    );
}

// === Before TLS ===

#[test]
fn the_header_comes_before_the_tls_handshake() {
    let dir = TempDir::new("proxy-tls");
    let files = ServerFiles::write(dir.path());
    let mut args: Vec<String> = files.flags();
    args.extend(["--proxy-protocol", "require", "--insecure", "-v", "-v"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = Server::start(&args);

    let mut socket = TcpStream::connect(server.framed()).unwrap();
    socket.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    socket.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    socket.write_all(&v2_tcp4_with_tlvs()).unwrap();
    let config = client_config(&files.ca.der, &[ALPN], None);
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::clone(&config), name).unwrap();
    let mut tls = StreamOwned::new(conn, socket);
    handshake(&mut tls).expect("TLS after the PROXY header");
    tls.write_all(&hello_bytes()).unwrap();
    expect_hello_ok(&mut tls);
    tls.write_all(&echo_request(1, b"over TLS, behind a balancer"))
        .unwrap();
    expect_echo(&mut tls, b"over TLS, behind a balancer");
    expect_log_line(&server, &["PROXY header", "client 203.0.113.7:56324"]);
    expect_log_line(&server, &["TLS established"]);
}

// === The parser, by property ===

proptest! {
    #[test]
    fn any_v1_tcp4_header_parses_whole_and_needs_more_at_every_prefix(
        client in any::<[u8; 4]>(), server in any::<[u8; 4]>(),
        client_port in any::<u16>(), server_port in any::<u16>(),
        after in vec(any::<u8>(), 0..64),
    ) {
        let (client, server) = (
            SocketAddr::from((Ipv4Addr::from(client), client_port)),
            SocketAddr::from((Ipv4Addr::from(server), server_port)),
        );
        let header = format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            client.ip(), server.ip(), client_port, server_port
        ).into_bytes();
        for end in 0..header.len() {
            prop_assert_eq!(parse(&header[..end]), Ok(None));
        }
        let mut wire = header.clone();
        wire.extend_from_slice(&after);
        prop_assert_eq!(
            parse(&wire),
            Ok(Some((ProxyHeader::Proxied { client, server }, header.len())))
        );
    }

    #[test]
    fn any_v2_tcp6_header_with_tlvs_parses_whole_and_needs_more_at_every_prefix(
        client in any::<[u8; 16]>(), server in any::<[u8; 16]>(),
        client_port in any::<u16>(), server_port in any::<u16>(),
        tlvs in vec((any::<u8>(), vec(any::<u8>(), 0..40)), 0..6),
        after in vec(any::<u8>(), 0..64),
    ) {
        let mut body = client.to_vec();
        body.extend_from_slice(&server);
        body.extend_from_slice(&client_port.to_be_bytes());
        body.extend_from_slice(&server_port.to_be_bytes());
        for (kind, value) in &tlvs {
            body.push(*kind);
            body.extend_from_slice(&(value.len() as u16).to_be_bytes());
            body.extend_from_slice(value);
        }
        let header = v2(0x21, 0x21, &body);
        for end in 0..header.len() {
            prop_assert_eq!(parse(&header[..end]), Ok(None));
        }
        let mut wire = header.clone();
        wire.extend_from_slice(&after);
        let expected = ProxyHeader::Proxied {
            client: SocketAddr::from((Ipv6Addr::from(client), client_port)),
            server: SocketAddr::from((Ipv6Addr::from(server), server_port)),
        };
        prop_assert_eq!(parse(&wire), Ok(Some((expected, header.len()))));
    }

    #[test]
    fn the_fuzz_targets_checks_hold_on_headers_cut_and_mutated(
        step in any::<u8>(),
        base in prop_oneof![
            Just(V1_TCP4.to_vec()),
            Just(V1_TCP6.to_vec()),
            Just(b"PROXY UNKNOWN\r\n".to_vec()),
            Just(v2_tcp4_with_tlvs()),
            Just(v2_local()),
        ],
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in any::<prop::sample::Index>(),
        after in vec(any::<u8>(), 0..32),
    ) {
        let mut wire = base;
        for (at, byte) in flips {
            let at = at.index(wire.len());
            wire[at] = byte;
        }
        wire.truncate(cut.index(wire.len() + 1));
        wire.extend_from_slice(&after);
        let mut data = vec![step];
        data.extend_from_slice(&wire);
        monoreactor::fuzzing::proxy_header(&data);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_never_claim_more_than_they_hold(
        start in prop_oneof![Just(&b""[..]), Just(&b"PROXY "[..]), Just(V2_SIGNATURE)],
        bytes in vec(any::<u8>(), 0..300),
    ) {
        let mut wire = start.to_vec();
        wire.extend_from_slice(&bytes);
        if let Ok(Some((_, used))) = parse(&wire) {
            prop_assert!(used <= wire.len() && used <= MAX_LEN);
        }
    }
}
