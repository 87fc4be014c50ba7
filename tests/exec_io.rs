//! Remote exec with volume: large outputs intact with bounded server memory for a slow reader,
//! stdin through the credit window (a command that never reads cannot stop the connection, a
//! client past its credit is cut off), and echo on other connections answering while a command
//! streams a GiB, all on one thread.

mod support;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use monoreactor::proto::ErrorCode;
use monoreactor::proto::exec::{EndReason, Signal, Termination};
use support::exec::*;
use support::*;

const MIB: usize = 1 << 20;

/// Most the server's RSS may grow while it streams far more than this to a slow reader: its
/// output queue (256 KiB high-water), a few pooled 64 KiB buffers and allocator slack.
const STREAM_RSS_GROWTH_KIB: u64 = 8 << 10;

#[test]
fn fifty_mib_of_output_arrives_intact_with_bounded_server_memory_for_a_slow_reader() {
    let server = Server::start_exec(&[]);
    let data = seeded_bytes(50, 50 * MIB);
    let expected = Fnv64::of(&data);
    fs::write(server.root().join("big.bin"), &data).unwrap();
    drop(data);

    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec_with(&request(&["cat", "big.bin"]), Sink::Hash);
    conn.started(stream);
    let rss_before = server.rss_kib();
    // Not reading at all: a server without backpressure would now read all 50 MiB from `cat`.
    thread::sleep(Duration::from_millis(500));
    let mut rss_max = server.rss_kib();

    // Then reading slowly: a short pause after every frame, and a long one every 5 MiB, after
    // which the server has had time to fill whatever it would fill.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next_stall = 5 * MIB as u64;
    while !conn.state(stream).ended() {
        match conn.pump(deadline) {
            Event::Frame { .. } => {}
            other => panic!("{other:?} while reading: {}", conn.state(stream).summary()),
        }
        if conn.state(stream).stdout.len >= next_stall {
            thread::sleep(Duration::from_millis(100));
            rss_max = rss_max.max(server.rss_kib());
            next_stall += 5 * MIB as u64;
        } else {
            thread::sleep(Duration::from_micros(200));
        }
    }
    let done = conn.take(stream);
    assert_eq!(done.stdout.len, 50 * MIB as u64, "{}", done.summary());
    assert_eq!(done.stdout.hash, expected, "the 50 MiB came back changed");
    assert_eq!(done.stderr.len, 0);
    assert_eq!(done.code(), 0);
    assert!(
        rss_max < rss_before + STREAM_RSS_GROWTH_KIB,
        "server RSS went from {rss_before} KiB to {rss_max} KiB while streaming 50 MiB to a slow reader"
    );
}

#[test]
fn ten_mib_of_stdin_round_trips_through_cat() {
    let server = Server::start_exec(&[]);
    let data = seeded_bytes(10, 10 * MIB);
    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec_with(&request_with_stdin(&["cat"]), Sink::Hash);
    let started = conn.started(stream);
    assert!(started.stdin_window > 0, "a STDIN command gets credit");
    // Frames of 48 KiB: never aligned with the window or the pipe.
    let done = conn.feed_stdin(stream, &data, 48 << 10, Duration::from_secs(60));
    assert_eq!(done.stdin_sent, data.len() as u64);
    assert_eq!(done.stdout.len, data.len() as u64, "{}", done.summary());
    assert_eq!(
        done.stdout.hash,
        Fnv64::of(&data),
        "stdin came back changed"
    );
    assert!(
        done.windows.len() >= (data.len() / started.stdin_window as usize),
        "10 MiB through a {}-byte window needs WINDOWs: {:?}",
        started.stdin_window,
        done.windows.len()
    );
    assert_eq!(done.code(), 0);
}

#[test]
fn a_command_that_never_reads_stdin_still_gets_the_signal_after_a_full_window() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec(&request_with_stdin(&["sleep", "30"]));
    let started = conn.started(stream);
    let window = started.stdin_window as usize;
    assert!(window > 0);
    // The whole credit, in frames the server must read and hold: `sleep` reads none of it.
    let filler = vec![b'x'; window];
    for piece in filler.chunks(60_000) {
        conn.stdin(stream, piece);
    }
    // The connection still reads frames: an echo and then the SIGNAL get through.
    let rtt = conn.echo(b"still reading?");
    assert!(rtt < Duration::from_secs(1), "echo took {rtt:?}");
    let signalled = Instant::now();
    conn.signal(stream, Signal::Term);
    let done = conn.wait_end(stream, Duration::from_secs(5));
    let after = signalled.elapsed();
    let exit = done.exit();
    assert_eq!(
        exit.termination,
        Termination::Signaled {
            signal: 15,
            core_dumped: false
        },
        "{}",
        done.summary()
    );
    assert_eq!(exit.reason, EndReason::ClientSignal);
    assert!(
        after < Duration::from_secs(2),
        "EXIT {after:?} after the SIGNAL"
    );
    assert!(
        wait_group_gone(started.pid, Duration::from_secs(2)),
        "the command's group outlived its EXIT"
    );
}

#[test]
fn the_credit_window_is_respected_and_one_byte_past_it_closes_the_connection() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec(&request_with_stdin(&["sleep", "30"]));
    let started = conn.started(stream);
    // Send all the credit there is, again each time a WINDOW tops it up, until the pipe is
    // full and no more credit comes back.
    loop {
        let credit = conn.state(stream).credit as usize;
        for piece in vec![b'y'; credit].chunks(64 << 10) {
            conn.stdin(stream, piece);
        }
        let windows_before = conn.state(stream).windows.len();
        let quiet_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < quiet_until {
            match conn.pump(quiet_until) {
                Event::Frame { .. } | Event::Timeout => {}
                Event::Closed { clean } => panic!("closed (clean: {clean}) within the window"),
            }
        }
        let state = conn.state(stream);
        let granted: u64 = state.windows.iter().map(|&w| u64::from(w)).sum();
        assert!(
            granted <= state.stdin_sent,
            "the server granted {granted} bytes of credit for {} sent",
            state.stdin_sent
        );
        if state.windows.len() == windows_before {
            break;
        }
        assert!(
            state.stdin_sent < 16 * MIB as u64,
            "credit keeps coming for a command that reads nothing: {}",
            state.summary()
        );
    }
    assert_eq!(conn.state(stream).credit, 0);
    assert!(!conn.state(stream).ended());
    // One byte more than the credit.
    conn.stdin_unchecked(stream, b"!");
    let text = conn.expect_conn_error(ErrorCode::FlowControl);
    assert!(text.contains("credit"), "{text}");
    // The connection is gone, and with it the command.
    assert!(
        wait_group_gone(started.pid, Duration::from_secs(5)),
        "`sleep 30` survived its connection"
    );
}

#[test]
fn stdin_beyond_the_initial_window_in_one_frame_or_without_the_stdin_flag_is_fatal() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec(&request_with_stdin(&["cat"]));
    let window = conn.started(stream).stdin_window as usize;
    conn.stdin_unchecked(stream, &vec![0; window + 1]);
    conn.expect_conn_error(ErrorCode::FlowControl);

    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec(&request(&["sleep", "30"]));
    assert_eq!(
        conn.started(stream).stdin_window,
        0,
        "no STDIN flag, no credit"
    );
    conn.stdin_unchecked(stream, b"x");
    conn.expect_conn_error(ErrorCode::FlowControl);
    assert!(server.wait_no_children(Duration::from_secs(5)));
}

#[test]
fn echo_on_other_connections_keeps_answering_while_a_command_streams_a_gib() {
    const GIB: u64 = 1 << 30;
    let server = Server::start_exec(&["--exec-max-output", "2147483648"]);
    let pid = server.pid();
    let rss_before = server.rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let addr = server.framed_str();
    let prober = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            // Echo needs no token: this connection is not authenticated.
            let mut client = monoreactor::client::Client::connect(&addr, IO_TIMEOUT)
                .expect("echo client connects");
            let (mut rounds, mut worst, mut thread_counts) = (0u32, Duration::ZERO, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let reply = client.echo(&[0x5a; 64]).expect("echo during the stream");
                worst = worst.max(sent.elapsed());
                assert_eq!(reply, [0x5a; 64]);
                rounds += 1;
                thread_counts.push(threads(pid));
                thread::sleep(Duration::from_millis(5));
            }
            (rounds, worst, thread_counts)
        })
    };

    let mut conn = ExecConn::connect(&server);
    let started = Instant::now();
    let stream = conn.exec_with(
        &request(&["head", "-c", "1073741824", "/dev/zero"]),
        Sink::Count,
    );
    let mut rss_max = 0;
    let deadline = started + Duration::from_secs(120);
    let mut next_sample = 0;
    while !conn.state(stream).ended() {
        match conn.pump(deadline) {
            Event::Frame { .. } => {}
            other => panic!("{other:?} while reading: {}", conn.state(stream).summary()),
        }
        let received = conn.state(stream).stdout.len;
        if received >= next_sample {
            rss_max = rss_max.max(server.rss_kib());
            next_sample = received + 64 * MIB as u64;
        }
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (rounds, worst, thread_counts) = prober.join().expect("echo prober");
    let done = conn.take(stream);
    eprintln!(
        "1 GiB in {elapsed:?}; {rounds} echoes meanwhile, slowest {worst:?}; RSS {rss_before} -> max {rss_max} KiB"
    );
    assert_eq!(done.stdout.len, GIB, "{}", done.summary());
    assert_eq!(done.code(), 0);
    assert!(rounds >= 10, "only {rounds} echoes in {elapsed:?}");
    assert!(
        worst < Duration::from_secs(1),
        "an echo took {worst:?} during the stream"
    );
    assert!(
        thread_counts.iter().all(|&count| count == 1),
        "the server ran other threads: {thread_counts:?}"
    );
    assert!(
        rss_max < rss_before + STREAM_RSS_GROWTH_KIB,
        "server RSS went from {rss_before} KiB to {rss_max} KiB during the GiB"
    );
}

#[test]
fn credit_keeps_coming_after_the_command_closes_its_stdin() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    // Reads a little, closes its stdin, and lives on for a while: the client must still be
    // able to send all it has (the server drops it and returns the credit).
    let stream = conn.exec_with(
        &request_with_stdin(&[
            "sh",
            "-c",
            "head -c 10 >/dev/null; exec 0<&-; sleep 3; echo done",
        ]),
        Sink::Keep,
    );
    let data = vec![b'z'; 2 * MIB];
    let done = conn.feed_stdin(stream, &data, 64 << 10, Duration::from_secs(20));
    assert_eq!(
        done.stdin_sent,
        data.len() as u64,
        "the feed stopped early: {}",
        done.summary()
    );
    assert_eq!(done.stdout.text(), "done\n");
    assert_eq!(done.code(), 0);
}
