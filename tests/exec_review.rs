//! Regressions found in review, each over loopback against the real binary: output the server
//! held back is not cut by the drain deadline; the output cap holds after a client SIGNAL; EXIT
//! names the latest cause; a server started with SIGCHLD ignored still reports every exit.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use monoreactor::proto::exec::{EndReason, Signal};
use support::exec::*;
use support::*;

#[test]
fn output_of_a_command_that_exits_while_the_client_is_not_reading_is_all_delivered() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    // A fills the socket buffers and the outbox: the outbox stays paused while nobody reads.
    let a = conn.exec_with(
        &request(&["head", "-c", "50000000", "/dev/zero"]),
        Sink::Count,
    );
    // B prints one line and exits meanwhile; its line waits in its pipe.
    let b = conn.exec(&shell("sleep 0.5; echo hello-from-b"));
    // Longer than the 1 s drain deadline: the wait is the server's, not a grandchild's.
    thread::sleep(Duration::from_secs(3));
    let a = conn.wait_end(a, Duration::from_secs(30));
    assert_eq!(a.stdout.len, 50_000_000, "A: {}", a.summary());
    let b = conn.wait_end(b, Duration::from_secs(30));
    assert_eq!(b.stdout.text(), "hello-from-b\n", "B: {}", b.summary());
}

#[test]
fn the_output_cap_stops_a_command_even_after_a_client_signal() {
    let server = Server::start_exec(&["--exec-max-output", "1048576", "--exec-timeout", "20"]);
    let mut conn = ExecConn::connect(&server);
    let s = conn.exec_with(&shell("trap '' INT; exec yes"), Sink::Count);
    conn.started(s);
    // `yes` runs (and prints) only after the trap is in place.
    conn.wait_for(s, Duration::from_secs(5), "output", |state| {
        state.stdout.len > 0
    });
    conn.signal(s, Signal::Int);
    let asked = Instant::now();
    let done = conn.wait_end(s, Duration::from_secs(15));
    assert_eq!(
        done.exit().reason,
        EndReason::OutputCap,
        "{}",
        done.summary()
    );
    assert_eq!(done.stdout.len, 1_048_576);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "stopped only after {:?}",
        asked.elapsed()
    );
}

#[test]
fn exit_names_the_time_limit_when_it_ends_a_command_that_ignored_a_client_signal() {
    let server = Server::start_exec(&["--exec-timeout", "1"]);
    let mut conn = ExecConn::connect(&server);
    let s = conn.exec(&shell("trap '' INT; echo ready; sleep 30"));
    conn.started(s);
    // The trap is in place once the line is out; a signal before it would end the shell.
    conn.wait_for(s, Duration::from_secs(5), "ready", |state| {
        state.stdout.len > 0
    });
    conn.signal(s, Signal::Int);
    let done = conn.wait_end(s, Duration::from_secs(10));
    assert_eq!(done.exit().reason, EndReason::Timeout, "{}", done.summary());
}

#[test]
fn a_server_started_with_sigchld_ignored_still_reports_every_exit() {
    use std::os::unix::process::CommandExt;
    let server = Server::start_exec_with(&[], |command| {
        // SAFETY: between fork and exec only async-signal-safe calls; signal(2) is one.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGCHLD, libc::SIG_IGN);
                Ok(())
            });
        }
    });
    let mut conn = ExecConn::connect(&server);
    for _ in 0..5 {
        let done = conn.run(&shell("exit 7"));
        assert_eq!(done.exit().shell_code(), 7, "{}", done.summary());
    }
    server.wait_no_children(Duration::from_secs(5));
}
