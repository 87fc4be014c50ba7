//! `serve --workers N`: N single-threaded worker processes on the same ports (SO_REUSEPORT),
//! supervised by a single-threaded parent that keeps their sockets, restarts them and drains
//! them on SIGTERM.

mod support;

use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use monoreactor::proto::ErrorCode;
use support::workers::{EchoFailure, connections_of, try_connect, try_echo, wait_workers};
use support::*;

/// How long a supervisor may take to start (or replace) its workers.
const WORKERS_WITHIN: Duration = Duration::from_secs(10);

fn signal_pid(pid: u32, signal: libc::c_int) {
    let raw = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill only sends a signal to a worker of our own child, still unreaped (its
    // parent reaps it only after it exits, and it is ours to kill).
    let rc = unsafe { libc::kill(raw, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// Opens `count` raw echo connections and completes one echo on each.
fn echo_connections(server: &Server, count: usize) -> Vec<TcpStream> {
    (0..count)
        .map(|i| {
            let mut stream = tcp(server.echo_tcp());
            let payload = format!("connection {i}");
            try_echo(&mut stream, payload.as_bytes())
                .unwrap_or_else(|failure| panic!("echo on connection {i}: {failure:?}"));
            stream
        })
        .collect()
}

/// Connections each worker holds.
fn accepted(pids: &[u32]) -> Vec<usize> {
    pids.iter().map(|&pid| connections_of(pid)).collect()
}

/// Whether `condition` holds within 5 s (the `/proc` tables it reads may miss an entry once).
fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    retry(Duration::from_secs(5), || condition().then_some(())).is_some()
}

#[test]
fn both_workers_serve_and_every_process_has_one_thread() {
    let server = Server::start(&["--workers", "2"]);
    let pids = wait_workers(&server, 2, WORKERS_WITHIN, |_| true);
    // One `listening` line per socket, printed once (by the supervisor).
    assert_eq!(server.listening_kinds(), ["framed", "echo-tcp", "echo-udp"]);

    // New connections are spread by a hash of the peer's address: 32 connections all landing
    // on one worker would happen once in 2^31 runs.
    let connections = echo_connections(&server, 32);
    let counts = retry(Duration::from_secs(5), || {
        let counts = accepted(&pids);
        (counts.iter().sum::<usize>() == connections.len()).then_some(counts)
    })
    .unwrap_or_else(|| {
        panic!(
            "every connection is held by exactly one worker: {:?}",
            accepted(&pids)
        )
    });
    assert!(
        counts.iter().all(|&count| count > 0),
        "connections landed on both workers {pids:?}: {counts:?}"
    );

    // The framed protocol and UDP echo are served too.
    let mut client = framed_client(&server);
    assert_eq!(client.echo(b"framed").unwrap(), b"framed");
    let udp = udp();
    udp.send_to(b"datagram", server.echo_udp()).unwrap();
    let mut buf = [0; 64];
    let (len, _) = udp.recv_from(&mut buf).expect("UDP echo reply");
    assert_eq!(&buf[..len], b"datagram");

    assert_eq!(server.threads(), 1, "the supervisor has one thread");
    for pid in &pids {
        assert_eq!(threads(*pid), 1, "worker {pid} has one thread");
    }
}

#[test]
fn a_killed_worker_is_replaced_and_serves_the_connections_queued_on_its_socket() {
    let server = Server::start(&["--workers", "2"]);
    let pids = wait_workers(&server, 2, WORKERS_WITHIN, |_| true);
    // Both are serving: each accepted some of these.
    let warm_up = echo_connections(&server, 16);
    assert!(eventually(|| accepted(&pids)
        .iter()
        .all(|&count| count > 0)));
    drop(warm_up);
    let victim = pids[0];

    // Stopped, the victim accepts nothing: the connections the kernel gives its listener
    // wait in that listener's queue, already connected from the client's side.
    signal_pid(victim, libc::SIGSTOP);
    assert!(
        retry(Duration::from_secs(5), || (process_state(victim)
            == Some('T'))
        .then_some(()))
        .is_some(),
        "worker {victim} did not stop"
    );
    let mut queued: Vec<TcpStream> = (0..64)
        .map(|i| {
            let mut stream = try_connect(server.echo_tcp())
                .unwrap_or_else(|failure| panic!("connect {i}: {failure:?}"));
            send(&mut stream, format!("queued {i:02}").as_bytes());
            stream
        })
        .collect();

    // Killed, it is replaced on the same sockets; its queue survives because the supervisor
    // still holds the listener.
    signal_pid(victim, libc::SIGKILL);
    let replaced = wait_workers(&server, 2, WORKERS_WITHIN, |pids| !pids.contains(&victim));
    let replacement = *replaced
        .iter()
        .find(|pid| !pids.contains(pid))
        .expect("a new worker");

    for (i, stream) in queued.iter_mut().enumerate() {
        set_timeouts(stream, IO_TIMEOUT);
        let expected = format!("queued {i:02}");
        assert_eq!(
            read_exactly(stream, expected.len()),
            expected.as_bytes(),
            "connection {i}"
        );
    }
    let from_queue = retry(Duration::from_secs(5), || {
        let held = connections_of(replacement);
        (held > 0).then_some(held)
    })
    .unwrap_or_else(|| {
        panic!("the replacement {replacement} served some of the 64 queued connections")
    });

    // And it takes new connections.
    let fresh = echo_connections(&server, 32);
    assert!(
        eventually(|| connections_of(replacement) > from_queue),
        "the replacement accepts new connections too"
    );
    assert_eq!(threads(replacement), 1);
    drop(fresh);
}

#[test]
fn no_connect_fails_under_a_connect_flood_while_a_worker_is_killed() {
    const FLOODERS: usize = 4;
    let server = Server::start(&["--workers", "2"]);
    let pids = wait_workers(&server, 2, WORKERS_WITHIN, |_| true);
    let addr = server.echo_tcp();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let stop = Arc::clone(&stop);
            let done = Arc::clone(&done);
            thread::spawn(move || {
                let (mut connect_failures, mut echo_failures) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    match try_connect(addr).and_then(|mut stream| try_echo(&mut stream, b"flood")) {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(EchoFailure::Connect) => connect_failures += 1,
                        Err(EchoFailure::Echo) => echo_failures += 1,
                    }
                }
                (connect_failures, echo_failures)
            })
        })
        .collect();

    let victim = pids[1];
    assert!(
        retry(Duration::from_secs(5), || (done.load(Ordering::Relaxed)
            > 200)
            .then_some(()))
        .is_some(),
        "the flood got going"
    );
    signal_pid(victim, libc::SIGKILL);
    let replaced = wait_workers(&server, 2, WORKERS_WITHIN, |pids| !pids.contains(&victim));
    let before = done.load(Ordering::Relaxed);
    assert!(
        retry(Duration::from_secs(5), || {
            (done.load(Ordering::Relaxed) > before + 200).then_some(())
        })
        .is_some(),
        "the flood goes on after the replacement"
    );
    stop.store(true, Ordering::Relaxed);
    let (mut connect_failures, mut echo_failures) = (0, 0);
    for flooder in flooders {
        let (connects, echoes) = flooder.join().expect("flooder");
        connect_failures += connects;
        echo_failures += echoes;
    }
    let total = done.load(Ordering::Relaxed);
    eprintln!(
        "{total} connections echoed; {connect_failures} connects failed; {echo_failures} echoes failed"
    );
    assert_eq!(connect_failures, 0, "no connect fails");
    // A connection the victim had already accepted dies with it (reset); each flooder has at
    // most one in flight. Queued ones are not lost (the test above).
    assert!(
        echo_failures <= FLOODERS,
        "{echo_failures} echoes failed: more than the connections in flight at the kill"
    );
    for pid in replaced {
        assert_eq!(threads(pid), 1);
    }
}

#[test]
fn sigterm_to_the_supervisor_drains_every_worker_and_exits_zero() {
    let mut server = Server::start(&["--workers", "2"]);
    let pids = wait_workers(&server, 2, WORKERS_WITHIN, |_| true);
    // 16 framed clients: both workers hold some (all on one: once in 2^15 runs).
    let mut clients: Vec<_> = (0..16).map(|_| framed_client(&server)).collect();
    for client in &mut clients {
        assert_eq!(client.echo(b"before").unwrap(), b"before");
    }
    assert!(
        eventually(|| accepted(&pids).iter().all(|&count| count > 0)),
        "both workers hold clients"
    );

    server.signal(libc::SIGTERM);
    for client in &mut clients {
        expect_error(client, 0, ErrorCode::ShuttingDown);
        expect_eof(client);
    }
    drop(clients);
    match server.wait_exit(Duration::from_secs(5)) {
        Some(status) => assert!(
            status.success(),
            "supervisor exited with {status}; stderr:\n{}",
            server.stderr_text()
        ),
        None => panic!(
            "supervisor still running 5 s after SIGTERM; stderr:\n{}",
            server.stderr_text()
        ),
    }
    for pid in pids {
        assert!(
            retry(Duration::from_secs(2), || process_state(pid)
                .is_none()
                .then_some(()))
            .is_some(),
            "worker {pid} is gone (reaped by the supervisor)"
        );
    }
    assert!(
        TcpStream::connect(server.framed()).is_err(),
        "the listening sockets are closed"
    );
}

#[test]
fn zero_workers_and_bad_worker_descriptors_are_refused() {
    let zero = run_cli(&["serve", "--workers", "0"], Duration::from_secs(10));
    assert_eq!(zero.status.code(), Some(2), "{}", zero.stderr);
    assert!(zero.stderr.contains("at least 1"), "{}", zero.stderr);

    let root = std::env::temp_dir().join(format!("monoreactor-workers-{}", std::process::id()));
    let root_arg = root.to_string_lossy().into_owned();
    let bad = run_cli(
        &["serve", "--root", &root_arg, "--worker-of", "900,901,-,-"],
        Duration::from_secs(10),
    );
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!(bad.status.code(), Some(1), "{}", bad.stderr);
    assert!(bad.stderr.contains("was not inherited"), "{}", bad.stderr);
}
