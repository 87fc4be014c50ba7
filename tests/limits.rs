//! Limits over loopback against the real binary: backpressure against a client that never
//! reads, idle and frame timeouts, the connection limit, and running out of descriptors.

mod support;

use std::io::{self, ErrorKind};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

use monoreactor::client::{Client, ClientError};
use monoreactor::proto::{ErrorCode, FrameType, HEADER_LEN};
use support::*;

/// Most the server's memory may grow while one client floods it.
const FLOOD_RSS_GROWTH_KIB: u64 = 16 << 10;

fn check_flood_bounded(server: &Server, rss_before: u64, written: usize) {
    assert!(
        written < FLOOD_CAP,
        "the server kept reading a client that never reads ({written} bytes accepted)"
    );
    let rss_after = server.rss_kib();
    assert!(
        rss_after < rss_before + FLOOD_RSS_GROWTH_KIB,
        "server RSS grew from {rss_before} KiB to {rss_after} KiB while a client sent {written} bytes without reading"
    );
}

#[test]
fn raw_echo_client_that_never_reads_is_throttled_and_others_still_get_echoes() {
    let server = Server::start(&[]);
    let mut warm = tcp(server.echo_tcp());
    send(&mut warm, &[1; 4096]);
    read_exactly(&mut warm, 4096);
    drop(warm);
    let rss_before = server.rss_kib();

    let mut flooder = tcp(server.echo_tcp());
    let written = flood_without_reading(&mut flooder, &seeded_bytes(11, 1 << 20));
    check_flood_bounded(&server, rss_before, written);

    let mut other = tcp(server.echo_tcp());
    set_timeouts(&other, Duration::from_secs(2));
    send(&mut other, b"still served");
    assert_eq!(read_exactly(&mut other, 12), b"still served");
    drop(flooder);
}

#[test]
fn framed_client_that_never_reads_is_throttled_and_others_still_get_echoes() {
    let server = Server::start(&[]);
    let mut warm = framed_client(&server);
    assert_eq!(warm.echo(&[2; 4096]).unwrap(), vec![2; 4096]);
    drop(warm);
    let rss_before = server.rss_kib();

    // 1 MiB of whole 64 KiB frames, so repeating it stays a valid stream of requests.
    let payload = seeded_bytes(12, (64 << 10) - HEADER_LEN);
    let mut pattern = Vec::with_capacity(1 << 20);
    for stream in 1..=16 {
        push_echo_request(&mut pattern, stream, &payload);
    }
    assert_eq!(pattern.len(), 1 << 20);
    let mut flooder = tcp(server.framed());
    send(&mut flooder, &hello_bytes());
    let written = flood_without_reading(&mut flooder, &pattern);
    check_flood_bounded(&server, rss_before, written);

    let mut other = framed_client(&server);
    other
        .stream()
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert_eq!(other.echo(b"still served").unwrap(), b"still served");
    drop(flooder);
}

#[test]
fn silent_framed_client_is_closed_at_the_hello_timeout() {
    let server = Server::start(&["--hello-timeout", "0.5"]);
    let started = Instant::now();
    let mut client = Client::from_stream(tcp(server.framed()));
    let text = expect_error(&mut client, 0, ErrorCode::Timeout);
    assert!(text.contains("HELLO"), "says what was missing: {text}");
    expect_eof(&mut client);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}, not at the 300 s idle timeout",
        started.elapsed()
    );
}

#[test]
fn idle_framed_client_gets_timeout_error_then_eof() {
    // Long enough that a slow debug run still gets its first echo back before the timeout.
    let server = Server::start(&["--idle-timeout", "1.5"]);
    let mut client = framed_client(&server);
    assert_eq!(client.echo(b"active once").unwrap(), b"active once");
    let text = expect_error(&mut client, 0, ErrorCode::Timeout);
    assert!(!text.is_empty(), "timeout error carries a message");
    expect_eof(&mut client);
}

#[test]
fn idle_raw_echo_client_is_closed() {
    let server = Server::start(&["--idle-timeout", "1.5"]);
    let mut stream = tcp(server.echo_tcp());
    send(&mut stream, b"once");
    assert_eq!(read_exactly(&mut stream, 4), b"once");
    expect_stream_eof(&mut stream);
}

#[test]
fn slowloris_one_byte_every_200ms_is_cut_off_by_the_frame_timeout() {
    let server = Server::start(&["--frame-timeout", "1", "--idle-timeout", "30"]);
    let mut client = framed_client(&server);
    let started = Instant::now();
    let frame = echo_request(1, &[b's'; 1000]);
    client
        .stream()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut sent = 0;
    let reply = loop {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still open after {:?} of one byte every 200 ms ({sent} bytes sent)",
            started.elapsed()
        );
        client.send_raw(&frame[sent..=sent]).expect("send one byte");
        sent += 1;
        // Waits ~200 ms for something from the server.
        match client.recv_frame() {
            Ok(frame) => break frame,
            Err(ClientError::Io(error))
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => panic!("after {sent} bytes: {error}"),
        }
    };
    assert_eq!(
        reply.header.frame_type,
        FrameType::Error,
        "got {}",
        describe(&reply)
    );
    let message = monoreactor::proto::ErrorMessage::parse(&reply.payload).expect("parses");
    assert_eq!(message.code, ErrorCode::Timeout, "text: {}", message.text);
    client
        .stream()
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("timeout");
    expect_eof(&mut client);
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "closed only after {elapsed:?}"
    );
    assert!(sent < frame.len(), "the frame was never meant to complete");
}

#[test]
fn framed_client_over_max_conns_gets_server_busy_until_a_slot_frees() {
    let server = Server::start(&["--max-conns", "3"]);
    let mut admitted: Vec<Client> = (0..3).map(|_| framed_client(&server)).collect();
    for (i, client) in admitted.iter_mut().enumerate() {
        let payload = format!("admitted {i}");
        assert_eq!(client.echo(payload.as_bytes()).unwrap(), payload.as_bytes());
    }

    let mut fourth = framed_client_raw(&server);
    let text = expect_error(&mut fourth, 0, ErrorCode::ServerBusy);
    assert!(!text.is_empty());
    expect_eof(&mut fourth);

    drop(admitted.remove(0));
    // The close is processed asynchronously: retry briefly.
    let mut newcomer = framed_client_eventually(&server, Duration::from_secs(5));
    assert_eq!(newcomer.echo(b"got in").unwrap(), b"got in");
    for client in &mut admitted {
        assert_eq!(client.echo(b"still here").unwrap(), b"still here");
    }
}

#[test]
fn raw_echo_client_over_max_conns_just_reads_eof() {
    let server = Server::start(&["--max-conns", "3"]);
    // Framed and raw connections count against the same limit.
    let mut framed = framed_client(&server);
    assert_eq!(framed.echo(b"framed").unwrap(), b"framed");
    let mut raw: Vec<TcpStream> = (0..2).map(|_| tcp(server.echo_tcp())).collect();
    for stream in &mut raw {
        send(stream, b"raw");
        assert_eq!(read_exactly(stream, 3), b"raw");
    }
    let mut extra = tcp(server.echo_tcp());
    expect_stream_eof(&mut extra);
    for stream in &mut raw {
        send(stream, b"still");
        assert_eq!(read_exactly(stream, 5), b"still");
    }
}

/// Descriptors the EMFILE test's server is started with: soft = hard = 64.
const EMFILE_FD_LIMIT: u64 = 64;
/// Inherited `/dev/null` descriptors placed in the child before exec, so the server cannot
/// open as many connections as its limit computation believes: it clamps `max_conns` to
/// 64 − 32 reserved = 32, but only about 20 descriptors are really free.
const EMFILE_FILLER_FDS: std::ops::Range<libc::c_int> = 24..56;

/// What happened to one flood client.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Admitted,
    Busy,
    Closed,
    Reset,
}

fn hello_outcome(client: &mut Client) -> Outcome {
    let frame = match client.recv_frame() {
        Ok(frame) => frame,
        Err(ClientError::Closed { .. }) => return Outcome::Closed,
        Err(ClientError::Io(error)) if error.kind() == ErrorKind::ConnectionReset => {
            return Outcome::Reset;
        }
        Err(error) => panic!("flood client got no answer to HELLO: {error}"),
    };
    match frame.header.frame_type {
        FrameType::HelloOk => Outcome::Admitted,
        FrameType::Error => {
            let message = monoreactor::proto::ErrorMessage::parse(&frame.payload).unwrap();
            assert_eq!(message.code, ErrorCode::ServerBusy, "{message}");
            Outcome::Busy
        }
        _ => panic!("unexpected answer to HELLO: {}", describe(&frame)),
    }
}

#[test]
fn out_of_descriptors_sheds_connections_without_spinning_and_recovers() {
    let server = Server::start_with(&[], |command| {
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (setrlimit, open, dup2, close); it allocates nothing.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: EMFILE_FD_LIMIT,
                    rlim_max: EMFILE_FD_LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                if null < 0 {
                    return Err(io::Error::last_os_error());
                }
                for fd in EMFILE_FILLER_FDS {
                    // dup2 leaves FD_CLOEXEC clear: the server inherits these.
                    if fd != null && libc::dup2(null, fd) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if !EMFILE_FILLER_FDS.contains(&null) {
                    libc::close(null);
                }
                Ok(())
            });
        }
    });
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid())).unwrap();
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("open-file limit listed");
    assert_eq!(
        open_files.split_whitespace().collect::<Vec<_>>()[3..5],
        ["64", "64"],
        "server runs with the limit set in pre_exec: {open_files}"
    );

    // Flood: 60 connections, each sends HELLO; all stay open on our side.
    let mut clients: Vec<Client> = (0..60).map(|_| framed_client_raw(&server)).collect();
    for client in &mut clients {
        client.send_raw(&hello_bytes()).expect("send HELLO");
    }
    let outcomes: Vec<Outcome> = clients.iter_mut().map(hello_outcome).collect();
    let admitted = outcomes.iter().filter(|o| **o == Outcome::Admitted).count();
    let busy = outcomes.iter().filter(|o| **o == Outcome::Busy).count();
    // Only two paths answer SERVER_BUSY: the connection limit and shedding on EMFILE. Fewer
    // admissions than the clamped limit (32) means the descriptors ran out first.
    assert!(
        (1..32).contains(&admitted) && busy > 0,
        "expected the descriptor limit, not --max-conns (32 after clamping), to stop admissions: {admitted} admitted, {busy} busy; outcomes {outcomes:?}"
    );

    // Out of descriptors, with the flood open and a few more arriving: the loop must sleep.
    // Not a speed measurement: a spinning loop burns a whole core (CPU ≈ wall time), a sleeping
    // one almost nothing (measured: 0 ns), and the bound sits far from both.
    let cpu_before = server.cpu_time();
    let window = Instant::now();
    let mut late = Vec::new();
    for _ in 0..5 {
        thread::sleep(Duration::from_millis(200));
        late.push(tcp(server.framed()));
    }
    let wall = window.elapsed();
    let cpu = server.cpu_time().saturating_sub(cpu_before);
    assert!(
        cpu < wall / 2,
        "server used {cpu:?} of CPU in {wall:?} while out of descriptors (spinning?)"
    );

    drop(late);
    drop(clients);
    let mut fresh = framed_client_eventually(&server, Duration::from_secs(10));
    assert_eq!(fresh.echo(b"recovered").unwrap(), b"recovered");
}

#[test]
fn client_buffers_over_max_client_memory_close_the_biggest_holders() {
    // 8 MiB for all connections' buffers; 16 clients each park 1 MiB - 1 byte of a 1 MiB
    // frame (the attack: many clients trickling large frames, each pinning its input).
    let budget = 8 << 20;
    let server = Server::start(&["--max-client-memory", &budget.to_string()]);
    let rss_before = server.rss_kib();
    let frame_len: u32 = 1 << 20;
    let mut header = vec![0; HEADER_LEN];
    monoreactor::proto::Header {
        frame_type: FrameType::EchoRequest,
        flags: monoreactor::proto::Flags::NONE,
        stream: 1,
        len: frame_len,
    }
    .emit(&mut header);
    let partial = vec![0x5a; frame_len as usize - 1];
    let mut clients = Vec::new();
    for _ in 0..16 {
        let mut client = framed_client(&server);
        // The server may close this client while it sends: what it wrote until then counts.
        let _ = client
            .send_raw(&header)
            .and_then(|()| client.send_raw(&partial));
        clients.push(client);
    }
    // Each client that was shed has an ERROR LIMIT_REACHED waiting, then EOF.
    let mut shed = 0;
    for client in &mut clients {
        client
            .stream()
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        match client.recv_frame() {
            Ok(frame) if frame.header.frame_type == FrameType::Error => {
                let error = monoreactor::proto::ErrorMessage::parse(&frame.payload).unwrap();
                assert_eq!(error.code, ErrorCode::LimitReached, "{}", error.text);
                assert!(error.text.contains("max-client-memory"), "{}", error.text);
                shed += 1;
            }
            Ok(frame) => panic!("unexpected {}", describe(&frame)),
            Err(ClientError::Io(error))
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(error) => panic!("unexpected {error}"),
        }
    }
    assert!(
        shed >= 8,
        "at most 8 MiB of parked frames may stay, so at least 8 of 16 clients go: {shed} did"
    );
    let rss_after = server.rss_kib();
    assert!(
        rss_after < rss_before + (budget as u64 >> 10) + (8 << 10),
        "server RSS grew from {rss_before} KiB to {rss_after} KiB with a budget of {budget} bytes"
    );
    // Everyone else is still served.
    let mut fresh = framed_client(&server);
    assert_eq!(fresh.echo(b"still served").unwrap(), b"still served");
}
