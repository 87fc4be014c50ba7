//! The framed protocol over loopback against the real binary: splits, pipelining, protocol
//! errors, oversize headers, resets, many connections, half-close, the largest frame.

mod support;

use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::Duration;

use monoreactor::client::{Client, OwnedFrame};
use monoreactor::proto::{ErrorCode, Flags, Frame, FrameType, Header, Hello, MAGIC};
use monoreactor::testkit::{FragmentingWriter, SplitMix64};
use support::*;

/// The server's default `--max-frame`.
const MAX_FRAME: usize = 1 << 20;

/// `count` request payloads with seeded sizes in `0..=max_len`; the first is empty and the
/// second is `max_len` bytes long, so both ends of the range are always covered.
fn seeded_payloads(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
    let mut rng = SplitMix64::new(seed);
    (0..count)
        .map(|i| {
            let len = match i {
                0 => 0,
                1 => max_len,
                _ => rng.between(0, max_len),
            };
            seeded_bytes(seed.wrapping_mul(1_000_003).wrapping_add(i as u64), len)
        })
        .collect()
}

/// Reads HELLO_OK and `count` frames on its own thread (so the writer never blocks on replies
/// nobody reads).
fn spawn_reader(stream: &std::net::TcpStream, count: usize) -> thread::JoinHandle<Vec<OwnedFrame>> {
    let mut client = Client::from_stream(stream.try_clone().expect("clone socket"));
    thread::spawn(move || {
        expect_hello_ok(&mut client);
        (0..count).map(|_| recv(&mut client)).collect()
    })
}

fn check_replies(frames: &[OwnedFrame], payloads: &[Vec<u8>], what: &str) {
    assert_eq!(frames.len(), payloads.len(), "{what}: reply count");
    for (index, (frame, payload)) in frames.iter().zip(payloads).enumerate() {
        let stream = index as u32 + 1;
        assert_eq!(
            (frame.header.frame_type, frame.header.stream),
            (FrameType::EchoReply, stream),
            "{what}: reply {index} is {}",
            describe(frame)
        );
        assert!(
            frame.header.flags.contains(Flags::END_STREAM),
            "{what}: reply {index} lacks END_STREAM"
        );
        assert!(
            frame.payload == *payload,
            "{what}: reply {index} ({} bytes) differs from request ({} bytes)",
            frame.payload.len(),
            payload.len()
        );
    }
}

/// HELLO, then one ECHO_REQUEST per payload on streams 1, 2, 3, ...
fn hello_then_requests<P: AsRef<[u8]>>(payloads: &[P]) -> Vec<u8> {
    let mut wire = hello_bytes();
    for (index, payload) in payloads.iter().enumerate() {
        push_echo_request(&mut wire, index as u32 + 1, payload.as_ref());
    }
    wire
}

/// HELLO_OK, then the reply to each of `payloads` in order, then end-of-stream.
#[track_caller]
fn expect_replies_then_eof<P: AsRef<[u8]>>(socket: std::net::TcpStream, payloads: &[P]) {
    let mut client = Client::from_stream(socket);
    expect_hello_ok(&mut client);
    for (index, payload) in payloads.iter().enumerate() {
        expect_echo_reply(&mut client, index as u32 + 1, payload.as_ref());
    }
    expect_eof(&mut client);
}

/// HELLO and 200 echo requests written in seeded random pieces of 1..=`max_piece` bytes, each
/// its own segment; every reply must match, in order.
fn fragmented_conversation(server: &Server, seed: u64, max_piece: usize, max_pause: Duration) {
    let what = format!("seed {seed}, pieces up to {max_piece}, pauses up to {max_pause:?}");
    let payloads = seeded_payloads(seed, 200, 2000);
    let wire = hello_then_requests(&payloads);
    let socket = tcp(server.framed());
    let reader = spawn_reader(&socket, payloads.len());
    let mut writer = FragmentingWriter::new(socket, seed)
        .max_piece(max_piece)
        .max_pause(max_pause);
    writer
        .write_all(&wire)
        .unwrap_or_else(|error| panic!("{what}: write failed: {error}"));
    let frames = reader
        .join()
        .unwrap_or_else(|_| panic!("{what}: reader failed"));
    check_replies(&frames, &payloads, &what);
}

#[test]
fn fragmented_frames_from_seeded_splits_echo_intact_and_in_order() {
    let server = Server::start(&[]);
    // (seed, largest piece, longest pause): several connections at once, so the server also
    // interleaves their partial frames.
    let cases = [
        (1, 1, Duration::ZERO),
        (2, 2, Duration::ZERO),
        (3, 3, Duration::ZERO),
        (4, 7, Duration::ZERO),
        (5, 5, Duration::ZERO),
        (6, 7, Duration::from_micros(2)),
        (7, 7, Duration::from_micros(2)),
    ];
    thread::scope(|scope| {
        let server = &server;
        let runs: Vec<_> = cases
            .into_iter()
            .map(|(seed, piece, pause)| {
                scope.spawn(move || fragmented_conversation(server, seed, piece, pause))
            })
            .collect();
        for run in runs {
            run.join().expect("conversation failed");
        }
    });
}

#[test]
fn thousand_pipelined_requests_in_one_write_get_thousand_replies_in_order() {
    let server = Server::start(&[]);
    let payloads = seeded_payloads(1000, 1000, 64);
    let wire = hello_then_requests(&payloads);
    let mut socket = tcp(server.framed());
    send(&mut socket, &wire);
    let mut client = Client::from_stream(socket.try_clone().expect("clone"));
    expect_hello_ok(&mut client);
    let frames: Vec<OwnedFrame> = (0..payloads.len()).map(|_| recv(&mut client)).collect();
    check_replies(&frames, &payloads, "pipelined");
    socket.shutdown(Shutdown::Write).expect("shutdown");
    expect_eof(&mut client);
}

#[test]
fn oversize_header_gets_error_and_close_without_memory_growth() {
    let server = Server::start(&[]);
    // Warm up: one ordinary echo, so buffers the server keeps anyway are in the baseline.
    let mut warm = framed_client(&server);
    assert_eq!(warm.echo(&[7; 4096]).expect("warm-up echo"), vec![7; 4096]);
    drop(warm);
    let rss_before = server.rss_kib();
    let vm_before = vm_size_kib(server.pid());

    let mut client = framed_client(&server);
    let header = Header {
        frame_type: FrameType::EchoRequest,
        flags: Flags::END_STREAM,
        stream: 1,
        len: u32::MAX,
    };
    client.send_raw(&header.to_bytes()).expect("send header");
    // The body starts arriving too; the server must discard it, not store it.
    client
        .send_raw(&seeded_bytes(3, 256 << 10))
        .expect("send part of the body");
    expect_error(&mut client, 0, ErrorCode::FrameTooLarge);
    expect_eof(&mut client);

    let rss_after = server.rss_kib();
    let vm_after = vm_size_kib(server.pid());
    assert!(
        rss_after < rss_before + 1024,
        "server RSS grew from {rss_before} KiB to {rss_after} KiB after a 4 GiB header"
    );
    assert!(
        vm_after < vm_before + (64 << 10),
        "server reserved memory for the declared body: VmSize {vm_before} KiB -> {vm_after} KiB"
    );
    let mut other = framed_client(&server);
    assert_eq!(other.echo(b"still here").expect("echo"), b"still here");
}

#[test]
fn frame_before_hello_gets_unexpected_frame_and_close() {
    let server = Server::start(&[]);
    let mut client = framed_client_raw(&server);
    client
        .send_raw(&echo_request(1, b"too early"))
        .expect("send");
    expect_error(&mut client, 0, ErrorCode::UnexpectedFrame);
    expect_eof(&mut client);
}

#[test]
fn hello_with_bad_magic_gets_bad_hello_and_close() {
    let server = Server::start(&[]);
    let mut client = framed_client_raw(&server);
    let mut payload = b"XNRX".to_vec();
    assert_ne!(payload[..4], MAGIC);
    payload.extend_from_slice(&1u16.to_be_bytes());
    payload.extend_from_slice(&1u16.to_be_bytes());
    client
        .send_frame(Frame::new(FrameType::Hello, Flags::END_STREAM, 0, &payload))
        .expect("send");
    expect_error(&mut client, 0, ErrorCode::BadHello);
    expect_eof(&mut client);
}

#[test]
fn hello_offering_only_versions_3_to_5_gets_unsupported_version_and_close() {
    let server = Server::start(&[]);
    let mut client = framed_client_raw(&server);
    let mut wire = Vec::new();
    Hello {
        min_version: 3,
        max_version: 5,
        credentials: &[],
    }
    .encode(&mut wire);
    client.send_raw(&wire).expect("send");
    expect_error(&mut client, 0, ErrorCode::UnsupportedVersion);
    expect_eof(&mut client);
}

#[test]
fn unknown_frame_type_gets_error_on_its_stream_and_connection_stays_usable() {
    let server = Server::start(&[]);
    let mut client = framed_client(&server);
    let unknown = Frame::new(
        FrameType::Unknown(0x7f),
        Flags::END_STREAM,
        41,
        b"from the future",
    );
    client.send_frame(unknown).expect("send");
    expect_error(&mut client, 41, ErrorCode::UnknownFrameType);
    // The stream is still in sync: requests after it work, on the same connection.
    for round in 0..3 {
        let payload = format!("after the unknown frame, round {round}");
        assert_eq!(
            client.echo(payload.as_bytes()).expect("echo after error"),
            payload.as_bytes()
        );
    }
}

#[test]
fn http_request_instead_of_frames_gets_malformed_frame_and_close() {
    let server = Server::start(&[]);
    let mut client = framed_client_raw(&server);
    client
        .send_raw(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send");
    expect_error(&mut client, 0, ErrorCode::MalformedFrame);
    expect_eof(&mut client);
}

#[test]
fn abrupt_client_resets_do_not_disturb_another_client_mid_conversation() {
    let server = Server::start(&[]);
    let mut steady = framed_client(&server);
    let mut stream = 1_000u32;
    let big = seeded_bytes(5, 512 << 10);
    for round in 0..25u32 {
        for k in 0..4 {
            let payload = format!("steady before, round {round}, #{k}");
            assert_eq!(steady.echo(payload.as_bytes()).unwrap(), payload.as_bytes());
        }
        // A request in flight on the steady connection while the other one resets.
        stream += 1;
        let in_flight = format!("in flight across reset {round}");
        steady
            .send_raw(&echo_request(stream, in_flight.as_bytes()))
            .unwrap();

        let mut victim = tcp(server.framed());
        match round % 5 {
            // Half a HELLO.
            0 => send(&mut victim, &hello_bytes()[..7]),
            // A reply the victim never reads.
            1 => {
                let mut wire = hello_bytes();
                push_echo_request(&mut wire, 1, b"never read");
                send(&mut victim, &wire);
                victim.peek(&mut [0; 1]).expect("reply arrives");
            }
            // A large reply, partly still in the server's output when the reset comes.
            2 => {
                let mut wire = hello_bytes();
                push_echo_request(&mut wire, 1, &big);
                send(&mut victim, &wire);
                victim.peek(&mut [0; 1]).expect("reply starts");
            }
            // Half a frame.
            3 => {
                let mut wire = hello_bytes();
                push_echo_request(&mut wire, 1, &big[..4096]);
                wire.truncate(wire.len() - 1000);
                send(&mut victim, &wire);
            }
            // Many pipelined requests, replies unread.
            _ => {
                let mut wire = hello_bytes();
                for id in 1..=300 {
                    push_echo_request(&mut wire, id, &big[..1000]);
                }
                send(&mut victim, &wire);
                victim.peek(&mut [0; 1]).expect("replies arrive");
            }
        }
        set_linger_zero(&victim);
        drop(victim);

        expect_echo_reply(&mut steady, stream, in_flight.as_bytes());
        for k in 0..4 {
            let payload = format!("steady after, round {round}, #{k}");
            assert_eq!(steady.echo(payload.as_bytes()).unwrap(), payload.as_bytes());
        }
    }
    let mut fresh = framed_client(&server);
    assert_eq!(fresh.echo(b"new client").unwrap(), b"new client");
}

#[test]
fn thousand_concurrent_connections_each_get_their_own_echo() {
    const CLIENTS: usize = 1000;
    let limit = raise_fd_limit();
    assert!(
        limit >= 1200,
        "this test needs RLIMIT_NOFILE of at least 1200 (the server inherits it); it is {limit}"
    );
    let server = Server::start(&[]);
    let payload = |i: usize| format!("client {i}: ").repeat(i % 7 + 1).into_bytes();
    let mut sockets: Vec<std::net::TcpStream> =
        (0..CLIENTS).map(|_| tcp(server.framed())).collect();
    // Write to all while all are open, then read from all.
    for (i, socket) in sockets.iter_mut().enumerate() {
        let mut wire = hello_bytes();
        push_echo_request(&mut wire, i as u32 + 1, &payload(i));
        send(socket, &wire);
    }
    let mut clients: Vec<Client> = sockets.into_iter().map(Client::from_stream).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        expect_hello_ok(client);
        expect_echo_reply(client, i as u32 + 1, &payload(i));
    }
    // Still all open: a second round on every connection.
    for (i, client) in clients.iter_mut().enumerate() {
        let second = format!("second round {i}");
        assert_eq!(
            client.echo(second.as_bytes()).expect("second echo"),
            second.as_bytes()
        );
    }
}

#[test]
fn half_closed_client_gets_all_replies_then_eof() {
    let server = Server::start(&[]);
    let mut socket = tcp(server.framed());
    let payloads: [&[u8]; 3] = [b"one", b"", b"three, the last"];
    let wire = hello_then_requests(&payloads);
    send(&mut socket, &wire);
    socket.shutdown(Shutdown::Write).expect("shutdown");
    expect_replies_then_eof(socket, &payloads);
}

/// The same half-close, made deterministic: the requests and the FIN are both queued in the
/// kernel before the server runs again, so its first read returns all the data (a short read)
/// and only a second read can see the EOF.
#[test]
fn half_close_queued_together_with_the_requests_still_ends_in_eof() {
    let server = Server::start(&[]);
    let payloads: [&[u8]; 3] = [b"one", b"two", b"three"];
    let wire = hello_then_requests(&payloads);
    server.stop();
    // The kernel completes the handshake and queues data and FIN while the server is stopped.
    let mut socket = tcp(server.framed());
    send(&mut socket, &wire);
    socket.shutdown(Shutdown::Write).expect("shutdown");
    server.resume();
    expect_replies_then_eof(socket, &payloads);
}

#[test]
fn largest_frame_round_trips_and_one_byte_more_gets_frame_too_large() {
    let server = Server::start(&[]);
    let mut client = framed_client(&server);
    let payload = seeded_bytes(8, MAX_FRAME);
    let reply = client.echo(&payload).expect("1 MiB echo");
    assert!(reply == payload, "1 MiB payload came back changed");

    let mut client = framed_client(&server);
    let too_big = seeded_bytes(9, MAX_FRAME + 1);
    client
        .send_frame(Frame::new(
            FrameType::EchoRequest,
            Flags::END_STREAM,
            1,
            &too_big,
        ))
        .expect("the server reads and discards the refused body");
    expect_error(&mut client, 0, ErrorCode::FrameTooLarge);
    expect_eof(&mut client);
}

#[test]
fn hello_ok_announces_the_configured_maximum_payload_and_the_server_holds_to_it() {
    let server = Server::start(&["--max-frame", "4096"]);
    let mut client = Client::connect_raw(&server.framed_str(), Duration::from_secs(5)).unwrap();
    let ok = client.hello(Hello::current()).expect("HELLO_OK");
    assert_eq!((ok.version, ok.max_payload_len), (2, 4096));
    assert_eq!(client.echo(&[1; 4096]).unwrap(), vec![1; 4096]);
    push_and_expect_too_large(&mut client, 4097);
}

fn push_and_expect_too_large(client: &mut Client, len: usize) {
    let header = Header {
        frame_type: FrameType::EchoRequest,
        flags: Flags::END_STREAM,
        stream: 9,
        len: len as u32,
    };
    client.send_raw(&header.to_bytes()).unwrap();
    expect_error(client, 0, ErrorCode::FrameTooLarge);
    expect_eof(client);
}
