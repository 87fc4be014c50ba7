//! Raw TCP echo (RFC 862) and UDP echo over loopback against the real binary.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use support::*;

#[test]
fn raw_echo_returns_exactly_the_bytes_sent_then_eof() {
    let server = Server::start(&[]);
    let mut stream = tcp(server.echo_tcp());
    send(&mut stream, b"hello");
    let mut buf = [0; 100];
    let mut got = Vec::new();
    while got.len() < 5 {
        match read_retrying(&mut stream, &mut buf) {
            Ok(0) => panic!("EOF after {:?}", got.escape_ascii().to_string()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(error) => panic!("read failed: {error}"),
        }
    }
    assert_eq!(got, b"hello");
    // Nothing else follows: after our FIN the next read is EOF, not more bytes.
    stream.shutdown(Shutdown::Write).expect("shutdown");
    expect_stream_eof(&mut stream);
}

/// A client that sends its bytes and its FIN at once (`printf hello | nc -N`): both are queued
/// before the server reads (it is stopped meanwhile), so one read returns all the data and
/// only another read can find the EOF.
#[test]
fn raw_echo_client_that_sends_and_half_closes_at_once_gets_echo_then_eof() {
    let server = Server::start(&[]);
    server.stop();
    let mut stream = tcp(server.echo_tcp());
    send(&mut stream, b"hello, and goodbye");
    stream.shutdown(Shutdown::Write).expect("shutdown");
    server.resume();
    assert_eq!(read_exactly(&mut stream, 18), b"hello, and goodbye");
    expect_stream_eof(&mut stream);
}

#[test]
fn raw_echo_of_eight_mib_seeded_stream_written_and_read_concurrently_is_identical() {
    const TOTAL: usize = 8 << 20;
    let server = Server::start(&[]);
    let data = seeded_bytes(0xec40, TOTAL);
    let mut stream = tcp(server.echo_tcp());
    let mut writer = stream.try_clone().expect("clone");
    let to_send = data.clone();
    let writing = thread::spawn(move || -> std::io::Result<()> {
        // Uneven chunks, so writes and the server's reads do not line up.
        let mut rng = monoreactor::testkit::SplitMix64::new(17);
        let mut sent = 0;
        while sent < to_send.len() {
            let end = (sent + rng.between(1, 200_000)).min(to_send.len());
            writer.write_all(&to_send[sent..end])?;
            sent = end;
        }
        Ok(())
    });
    let mut received = vec![0; TOTAL];
    let mut filled = 0;
    while filled < TOTAL {
        let end = (filled + (64 << 10)).min(TOTAL);
        match read_retrying(&mut stream, &mut received[filled..end]) {
            Ok(0) => panic!("EOF after {filled} of {TOTAL} bytes"),
            Ok(n) => filled += n,
            Err(error) => panic!("read failed after {filled} of {TOTAL} bytes: {error}"),
        }
    }
    writing
        .join()
        .expect("writer thread")
        .expect("writing 8 MiB");
    let first_difference = received.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_difference, None, "echoed stream differs");
    // Nothing more comes back.
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut extra = [0; 64];
    match read_retrying(&mut stream, &mut extra) {
        Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(n) => panic!("{n} bytes more than were sent came back (or EOF, if 0)"),
        Err(error) => panic!("read after the echo failed: {error}"),
    }
}

/// Sends `payload` to the UDP echo and returns the reply and its source. UDP may drop, even on
/// loopback: up to three attempts, each with a bounded wait.
fn udp_round_trip(server: &Server, payload: &[u8]) -> (Vec<u8>, std::net::SocketAddr) {
    let socket = udp();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut buf = vec![0; 70_000];
    for _ in 0..3 {
        let sent = socket.send_to(payload, server.echo_udp()).expect("send_to");
        assert_eq!(sent, payload.len());
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => return (buf[..n].to_vec(), from),
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => panic!("recv_from: {error}"),
        }
    }
    panic!(
        "no UDP echo of {} bytes after three attempts",
        payload.len()
    );
}

#[test]
fn udp_echo_of_one_byte_and_of_the_largest_datagram_is_identical_and_from_the_server() {
    let server = Server::start(&[]);
    let (reply, from) = udp_round_trip(&server, b"x");
    assert_eq!(reply, b"x");
    assert_eq!(from, server.echo_udp(), "reply source");

    let largest = seeded_bytes(65_507, 65_507);
    let (reply, from) = udp_round_trip(&server, &largest);
    assert_eq!(reply.len(), 65_507, "datagram length");
    assert!(reply == largest, "65,507-byte datagram came back changed");
    assert_eq!(from, server.echo_udp(), "reply source");
}

#[test]
fn udp_echo_of_an_empty_datagram_is_an_empty_datagram() {
    let server = Server::start(&[]);
    let (reply, from) = udp_round_trip(&server, b"");
    assert_eq!((reply.len(), from), (0, server.echo_udp()));
}

#[test]
fn echo_tcp_off_prints_no_raw_listener_and_the_rest_still_works() {
    let server = Server::start(&["--echo-tcp", "off"]);
    assert_eq!(server.listening_kinds(), ["framed", "echo-udp"]);
    assert_eq!(server.addr("echo-tcp"), None);
    let mut client = framed_client(&server);
    assert_eq!(client.echo(b"framed still on").unwrap(), b"framed still on");
    let (reply, _) = udp_round_trip(&server, b"udp still on");
    assert_eq!(reply, b"udp still on");
}

#[test]
fn all_three_listeners_are_printed_in_order_on_distinct_ports() {
    let server = Server::start(&[]);
    assert_eq!(server.listening_kinds(), ["framed", "echo-tcp", "echo-udp"]);
    assert_ne!(server.framed().port(), 0);
    assert_ne!(server.framed().port(), server.echo_tcp().port());
    // Raw echo really is raw: a HELLO comes back as the same bytes, not as HELLO_OK.
    let mut stream = tcp(server.echo_tcp());
    let hello = hello_bytes();
    send(&mut stream, &hello);
    let mut got = vec![0; hello.len()];
    stream.read_exact(&mut got).expect("echo of HELLO bytes");
    assert_eq!(got, hello);
}
