//! The process as a whole: signals, the single thread, and the command-line front end.

mod support;

use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use monoreactor::proto::ErrorCode;
use support::*;

/// How long a clean shutdown may take.
const EXIT_WITHIN: Duration = Duration::from_secs(3);

#[track_caller]
fn assert_exits_cleanly(server: &mut Server, what: &str) {
    match server.wait_exit(EXIT_WITHIN) {
        Some(status) => assert!(
            status.success(),
            "{what}: server exited with {status}; stderr:\n{}",
            server.stderr_text()
        ),
        None => panic!("{what}: server still running {EXIT_WITHIN:?} later"),
    }
}

#[test]
fn sigterm_with_no_clients_exits_zero() {
    let mut server = Server::start(&[]);
    server.signal(libc::SIGTERM);
    assert_exits_cleanly(&mut server, "SIGTERM");
}

#[test]
fn sigint_with_no_clients_exits_zero() {
    let mut server = Server::start(&[]);
    server.signal(libc::SIGINT);
    assert_exits_cleanly(&mut server, "SIGINT");
}

#[test]
fn sigterm_tells_a_connected_client_shutting_down_then_exits_zero_once_it_leaves() {
    let mut server = Server::start(&[]);
    let mut client = framed_client(&server);
    assert_eq!(client.echo(b"before").unwrap(), b"before");
    server.signal(libc::SIGTERM);
    expect_error(&mut client, 0, ErrorCode::ShuttingDown);
    expect_eof(&mut client);
    drop(client);
    assert_exits_cleanly(&mut server, "SIGTERM with a client");
}

/// A framed client that has pipelined requests and stopped reading, so the server holds
/// replies it cannot send.
fn client_with_unsent_replies(server: &Server) -> TcpStream {
    let mut pattern = Vec::new();
    for stream in 1..=16 {
        push_echo_request(&mut pattern, stream, &[7; 16 << 10]);
    }
    let mut stalled = tcp(server.framed());
    send(&mut stalled, &hello_bytes());
    flood_without_reading(&mut stalled, &pattern);
    stalled
}

#[test]
fn shutdown_grace_ends_with_a_client_that_never_reads_and_exits_zero() {
    let mut server = Server::start(&["--shutdown-grace", "1"]);
    let _stalled = client_with_unsent_replies(&server);
    server.signal(libc::SIGTERM);
    // The grace period (1 s) closes what cannot flush; EXIT_WITHIN leaves room for a slow run.
    assert_exits_cleanly(&mut server, "SIGTERM with a client that never reads");
}

#[test]
fn second_signal_closes_everything_without_waiting_for_the_grace_period() {
    let mut server = Server::start(&["--shutdown-grace", "60"]);
    let _stalled = client_with_unsent_replies(&server);
    server.signal(libc::SIGTERM);
    assert!(
        server.wait_exit(Duration::from_millis(300)).is_none(),
        "first signal: still flushing"
    );
    server.signal(libc::SIGINT);
    assert_exits_cleanly(&mut server, "second signal");
}

#[test]
fn server_runs_on_one_thread_before_during_and_after_a_burst_of_connections() {
    let server = Server::start(&[]);
    assert_eq!(server.threads(), 1, "after start");

    let mut clients: Vec<TcpStream> = (0..50).map(|_| tcp(server.framed())).collect();
    let mut raw: Vec<TcpStream> = (0..50).map(|_| tcp(server.echo_tcp())).collect();
    for (i, socket) in clients.iter_mut().enumerate() {
        let mut wire = hello_bytes();
        push_echo_request(&mut wire, 1, format!("framed {i}").as_bytes());
        send(socket, &wire);
    }
    for (i, socket) in raw.iter_mut().enumerate() {
        send(socket, format!("raw {i:03}").as_bytes());
    }
    assert_eq!(server.threads(), 1, "with 100 connections sending");
    let mut clients: Vec<_> = clients
        .into_iter()
        .map(monoreactor::client::Client::from_stream)
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        expect_hello_ok(client);
        expect_echo_reply(client, 1, format!("framed {i}").as_bytes());
    }
    for (i, socket) in raw.iter_mut().enumerate() {
        let mut got = [0; 7];
        let mut filled = 0;
        while filled < got.len() {
            match read_retrying(socket, &mut got[filled..]) {
                Ok(0) => panic!("raw client {i}: EOF"),
                Ok(n) => filled += n,
                Err(error) => panic!("raw client {i}: {error}"),
            }
        }
        assert_eq!(got, format!("raw {i:03}").as_bytes());
    }
    assert_eq!(
        server.threads(),
        1,
        "with 100 connections open after echoing"
    );
    drop(clients);
    drop(raw);
    let mut after = framed_client_eventually(&server, Duration::from_secs(5));
    assert_eq!(after.echo(b"after").unwrap(), b"after");
    assert_eq!(server.threads(), 1, "after the burst");
}

#[test]
fn echo_command_prints_the_reply_and_exits_zero() {
    let server = Server::start(&[]);
    let addr = server.framed_str();
    let run = run_cli(
        &["echo", "--addr", &addr, "hello", "world"],
        Duration::from_secs(10),
    );
    assert!(run.status.success(), "exit {}: {}", run.status, run.stderr);
    assert_eq!(run.stdout, "hello world\n");
}

#[test]
fn echo_command_against_a_closed_port_fails_with_one_line() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let addr = format!("127.0.0.1:{port}");
    let run = run_cli(
        &["echo", "--addr", &addr, "--timeout", "2", "anyone?"],
        Duration::from_secs(10),
    );
    assert!(!run.status.success(), "exit {}", run.status);
    assert_eq!(run.stdout, "", "nothing on stdout");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", run.stderr);
    assert!(
        lines[0].starts_with("monoreactor:"),
        "stderr: {:?}",
        run.stderr
    );
    assert!(
        lines[0].contains(&addr),
        "names the address: {:?}",
        lines[0]
    );
}

#[test]
fn help_for_every_subcommand_exits_zero() {
    for subcommand in ["serve", "echo", "bench"] {
        let run = run_cli(&[subcommand, "--help"], Duration::from_secs(10));
        assert!(
            run.status.success(),
            "{subcommand} --help: exit {}; stderr {}",
            run.status,
            run.stderr
        );
        assert!(
            run.stdout.contains("Usage:"),
            "{subcommand} --help prints usage: {:?}",
            run.stdout
        );
    }
}

#[test]
fn serve_with_max_frame_1_fails_with_one_line_naming_the_limit() {
    let run = run_cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--echo-tcp",
            "off",
            "--echo-udp",
            "off",
            "--max-frame",
            "1",
        ],
        Duration::from_secs(10),
    );
    assert!(!run.status.success(), "exit {}", run.status);
    assert!(
        run.stdout.is_empty(),
        "no listening lines: {:?}",
        run.stdout
    );
    assert!(!run.stderr.contains("panicked"), "stderr: {:?}", run.stderr);
    // A value out of range is a usage error, said by the flag's parser like any other.
    assert_eq!(run.status.code(), Some(2), "exit {}", run.status);
    let first = run.stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("--max-frame") && first.contains("at least 64"),
        "stderr: {:?}",
        run.stderr
    );
}
