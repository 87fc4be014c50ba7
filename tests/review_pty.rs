//! Review of `exec -t` (rev2): what tests/exec_pty.rs does not reach with its helpers — a
//! terminal session over TLS.

#![allow(dead_code)] // the shared support modules carry helpers other test files use

mod support;
#[path = "support/tls_proxy.rs"]
mod tls_proxy;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use support::exec::TEST_TOKEN;
use support::{Server, TempDir, wait_child};
use tls_proxy::Pki;

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn exec_tt_over_tls_runs_on_a_terminal_reads_input_and_passes_the_status() {
    let pki = Pki::new();
    let dir = TempDir::new("review-pty-tls");
    let (cert, key) = pki.server_leaf().write(dir.path(), "server");
    let server = Server::start_exec(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let ca = pki.write_ca(dir.path());
    let token = dir.path().join("token");
    fs::write(&token, TEST_TOKEN).unwrap();
    fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
    let addr = format!("tls://{}", server.framed());
    let script = "tty >/dev/null && echo on-a-tty; stty size; read line; echo got $line; exit 4";
    let mut child = Command::new(env!("CARGO_BIN_EXE_monoreactor"))
        .args([
            "exec",
            "--addr",
            &addr,
            "--tls-ca",
            ca.to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
            "-tt",
            "--",
            "sh",
            "-c",
            script,
        ])
        .env_remove("MONOREACTOR_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let readers = thread::spawn(move || {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        let _ = out.read_to_string(&mut stdout);
        let _ = err.read_to_string(&mut stderr);
        (stdout, stderr)
    });
    let status = wait_child(&mut child, WAIT).expect("exec -tt over TLS ends");
    let (stdout, stderr) = readers.join().unwrap();
    assert_eq!(status.code(), Some(4), "{stdout}{stderr}");
    assert!(stdout.contains("on-a-tty\r\n"), "{stdout}");
    assert!(
        stdout.contains("24 80\r\n"),
        "no local terminal: 24x80: {stdout}"
    );
    assert!(stdout.contains("got hello\r\n"), "{stdout}");
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
}

fn on_a_pty(argv: &[&'static str]) -> monoreactor::proto::exec::ExecRequest<'static> {
    monoreactor::proto::exec::ExecRequest {
        pty: Some(monoreactor::proto::exec::PtyRequest {
            rows: 24,
            cols: 80,
            term: "vt100",
        }),
        ..support::exec::request(argv)
    }
}

#[test]
fn a_client_that_never_reads_stops_the_server_reading_the_terminal() {
    let server = Server::start_exec(&[]);
    let mut socket = support::tcp(server.framed());
    let mut wire = support::exec::hello_with(TEST_TOKEN);
    wire.extend(support::exec::exec_frame(1, &on_a_pty(&["yes"])));
    socket.write_all(&wire).unwrap();
    // Nothing is read from here on.
    let running = support::retry(WAIT, || {
        let children = server.children();
        (!children.is_empty()).then_some(children)
    });
    let (pid, _) = running.expect("yes runs")[0];
    thread::sleep(Duration::from_secs(2));
    let before = server.rss_kib();
    // Once the socket and the server's outbox are full, the server reads the master no
    // more: `yes` blocks on the full terminal (sleeping, not running) and memory stays flat.
    let blocked = support::retry(WAIT, || {
        (support::process_state(pid) == Some('S')).then_some(())
    });
    thread::sleep(Duration::from_secs(2));
    let after = server.rss_kib();
    assert!(
        blocked.is_some(),
        "yes never blocked: {:?}",
        support::process_state(pid)
    );
    assert!(
        after < before + 8 * 1024,
        "the server's memory grew from {before} KiB to {after} KiB"
    );
    drop(socket);
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
}

#[test]
fn a_command_that_lets_go_of_its_terminal_and_runs_on_ends_at_its_exit() {
    let server = Server::start_exec(&[]);
    let mut conn = support::exec::ExecConn::connect(&server);
    let started = std::time::Instant::now();
    let stream = conn.exec(&on_a_pty(&[
        "sh",
        "-c",
        "echo bye; exec </dev/null >/dev/null 2>&1; sleep 1; exit 7",
    ]));
    let done = conn.wait_end(stream, WAIT);
    assert_eq!(done.code(), 7, "{}", done.summary());
    assert!(done.stdout.text().contains("bye"), "{}", done.summary());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
}

fn open_descriptors(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

#[test]
fn sessions_that_end_every_way_leave_no_descriptor_in_the_server() {
    let server = Server::start_exec(&[]);
    let mut conn = support::exec::ExecConn::connect(&server);
    // Warm up: the first command opens what the server keeps (its root, its poll entries).
    let done = conn.run(&on_a_pty(&["true"]));
    assert_eq!(done.code(), 0, "{}", done.summary());
    let before = open_descriptors(server.pid());
    for round in 0..5 {
        // An exit, a death by signal, a job left holding the terminal, and a disconnect.
        for script in ["exit 3", "kill -9 $$", "sleep 30 & exit 0"] {
            let done = conn.run(&on_a_pty(&["sh", "-c", script]));
            assert!(done.ended(), "round {round}, {script}: {}", done.summary());
        }
        let mut dropped = support::exec::ExecConn::connect(&server);
        let stream = dropped.exec(&on_a_pty(&["sleep", "30"]));
        dropped.started(stream);
        drop(dropped);
    }
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
    let after = support::retry(WAIT, || {
        let now = open_descriptors(server.pid());
        (now <= before).then_some(now)
    });
    assert!(
        after.is_some(),
        "{before} descriptors before, {} after",
        open_descriptors(server.pid())
    );
}
