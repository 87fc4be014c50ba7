//! Remote exec at its limits: the time limit and the output cap stop a command (TERM, then
//! KILL for one that ignores TERM), a lost connection or a server shutdown leaves no process
//! behind, hundreds of short commands leave no zombie, and the per-connection and server-wide
//! command limits refuse at once instead of queueing.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use monoreactor::proto::ErrorCode;
use monoreactor::proto::exec::{EndReason, ExecRequest, Exit, Signal, Termination};
use support::exec::*;
use support::*;

/// A script whose whole process group ignores SIGTERM (an ignored signal stays ignored
/// across exec, so `sleep` ignores it too).
const IGNORES_TERM: &str = "trap '' TERM; sleep 30";

const KILLED: Termination = Termination::Signaled {
    signal: 9,
    core_dumped: false,
};
const TERMINATED: Termination = Termination::Signaled {
    signal: 15,
    core_dumped: false,
};

#[test]
fn the_time_limit_kills_a_command_that_ignores_term_after_the_grace() {
    let server = Server::start_exec(&["--exec-timeout", "1"]);
    let mut conn = ExecConn::connect(&server);
    // A client asking for more than the server's limit gets the server's limit.
    let stream = conn.exec(&ExecRequest {
        timeout_ms: 60_000,
        ..shell(IGNORES_TERM)
    });
    let pid = conn.started(stream).pid;
    let done = conn.wait_end(stream, Duration::from_secs(10));
    let exit = done.exit();
    assert_eq!(exit.termination, KILLED, "{}", done.summary());
    assert_eq!(exit.reason, EndReason::Timeout);
    // 1 s limit, TERM ignored, KILL after the 2 s grace.
    let elapsed = done.elapsed();
    assert!(
        elapsed >= Duration::from_millis(2_800) && elapsed < Duration::from_secs(6),
        "EXIT after {elapsed:?}; expected about 1 s + 2 s grace"
    );
    assert!(
        wait_group_gone(pid, Duration::from_secs(2)),
        "the `sleep` in the group survived"
    );
}

#[test]
fn a_shorter_client_time_limit_wins_and_term_ends_a_command_that_obeys_it() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec(&ExecRequest {
        timeout_ms: 300,
        ..request(&["sleep", "30"])
    });
    let done = conn.wait_end(stream, Duration::from_secs(10));
    let exit = done.exit();
    assert_eq!(exit.termination, TERMINATED, "{}", done.summary());
    assert_eq!(exit.reason, EndReason::Timeout);
    assert!(
        done.elapsed() < Duration::from_secs(2),
        "EXIT after {:?} for a 300 ms limit",
        done.elapsed()
    );
}

#[test]
fn the_output_cap_delivers_exactly_the_cap_then_stops_the_command() {
    const CAP: u64 = 1 << 20;
    let server = Server::start_exec(&["--exec-max-output", "1048576"]);
    let mut conn = ExecConn::connect(&server);
    let done = conn.run_argv(&["yes"]);
    assert_eq!(done.stdout.len, CAP, "{}", done.summary());
    assert!(
        done.stdout.bytes.chunks(2).all(|pair| pair == b"y\n"),
        "`yes` output came back changed"
    );
    let exit = done.exit();
    assert_eq!(exit.reason, EndReason::OutputCap, "{}", done.summary());
    assert!(
        matches!(exit.termination, Termination::Signaled { .. }),
        "{exit:?}"
    );

    // Output of exactly the cap is not over it.
    let done = conn.run_argv(&["head", "-c", "1048576", "/dev/zero"]);
    assert_eq!(done.stdout.len, CAP);
    assert_eq!(
        done.exit().termination,
        Termination::Exited(0),
        "{}",
        done.summary()
    );
    assert_eq!(done.exit().reason, EndReason::None);

    // The cap counts stdout and stderr together.
    let done = conn.run(&shell("head -c 700000 /dev/zero; yes >&2"));
    assert_eq!(done.stdout.len + done.stderr.len, CAP, "{}", done.summary());
    assert!(done.stdout.len <= 700_000);
    assert_eq!(done.exit().reason, EndReason::OutputCap);
}

/// Waits until process group `pgid` has at least `count` processes (a shell has started its
/// children, so its traps are set).
#[track_caller]
fn wait_for_members(pgid: u32, count: usize) {
    let reached = retry(Duration::from_secs(5), || {
        (group_members(pgid).len() >= count).then_some(())
    });
    assert!(
        reached.is_some(),
        "group {pgid} never had {count} processes: {:?}",
        group_members(pgid)
    );
}

/// Starts `script`, which runs two processes, and waits until both are; returns the group id.
#[track_caller]
fn start_group(conn: &mut ExecConn, script: &str) -> u32 {
    let stream = conn.exec(&shell(script));
    let pgid = conn.started(stream).pid;
    wait_for_members(pgid, 2);
    pgid
}

#[test]
fn a_background_child_holding_stdout_delays_exit_only_until_the_drain_deadline() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    // The shell exits at once; its background `sleep` keeps the output pipes open.
    let stream = conn.exec(&shell("echo before; sleep 30 & exit 3"));
    let pgid = conn.started(stream).pid;
    let done = conn.wait_end(stream, Duration::from_secs(10));
    assert_eq!(
        done.exit().termination,
        Termination::Exited(3),
        "{}",
        done.summary()
    );
    assert_eq!(done.exit().reason, EndReason::None);
    assert_eq!(done.stdout.text(), "before\n");
    // The drain deadline is 1 s after the exit, not the 30 s of the sleep.
    assert!(
        done.elapsed() < Duration::from_secs(4),
        "EXIT after {:?}",
        done.elapsed()
    );
    // What the command left behind in its group is killed once the EXIT is out.
    assert!(
        wait_group_gone(pgid, Duration::from_secs(5)),
        "the background sleep survived: {:?}",
        group_members(pgid)
    );
}

#[test]
fn a_disconnect_kills_the_whole_process_group() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let pgid = start_group(&mut conn, "sleep 99 & sleep 99");
    drop(conn);
    assert!(
        wait_group_gone(pgid, Duration::from_secs(5)),
        "group {pgid} outlived its connection: {:?}",
        group_members(pgid)
    );
    assert!(
        server.wait_no_children(Duration::from_secs(2)),
        "unreaped: {:?}",
        server.children()
    );
}

#[test]
fn a_disconnect_in_the_middle_of_output_kills_the_command() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec_with(&request(&["yes"]), Sink::Count);
    let pgid = conn.started(stream).pid;
    conn.wait_for(stream, RUN_TIMEOUT, "1 MiB of output", |state| {
        state.stdout.len >= 1 << 20
    });
    drop(conn);
    assert!(
        wait_group_gone(pgid, Duration::from_secs(5)),
        "`yes` outlived its connection: {:?}",
        group_members(pgid)
    );
    assert!(server.wait_no_children(Duration::from_secs(2)));
}

#[test]
fn a_disconnect_kills_a_group_that_ignores_term_after_the_grace() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let pgid = start_group(&mut conn, "trap '' TERM; sleep 99 & sleep 99");
    let dropped = Instant::now();
    drop(conn);
    thread::sleep(Duration::from_millis(500));
    assert!(
        group_running(pgid),
        "TERM is ignored: only the KILL after the grace ends this group"
    );
    assert!(
        wait_group_gone(pgid, Duration::from_secs(6)),
        "group {pgid} outlived its connection: {:?}",
        group_members(pgid)
    );
    assert!(
        dropped.elapsed() < Duration::from_secs(5),
        "KILL came {:?} after the disconnect",
        dropped.elapsed()
    );
    assert!(server.wait_no_children(Duration::from_secs(2)));
}

#[test]
fn five_hundred_short_commands_leave_no_zombie() {
    const TOTAL: usize = 500;
    const IN_FLIGHT: usize = 8;
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let started = Instant::now();
    let mut running = Vec::new();
    let (mut sent, mut exits) = (0, 0);
    while exits < TOTAL {
        while sent < TOTAL && running.len() < IN_FLIGHT {
            running.push(conn.exec(&request(&["true"])));
            sent += 1;
        }
        let oldest = running.remove(0);
        let done = conn.wait_end(oldest, RUN_TIMEOUT);
        assert_eq!(done.code(), 0, "{}", done.summary());
        conn.take(oldest);
        exits += 1;
        if exits % 100 == 0 {
            assert_eq!(server.threads(), 1, "after {exits} commands");
        }
    }
    eprintln!("{TOTAL} commands in {:?}", started.elapsed());
    // Every EXIT is sent after the command is reaped: nothing may be left, zombie or not.
    let children = server.children();
    let zombies: Vec<_> = children.iter().filter(|(_, state)| *state == 'Z').collect();
    assert!(
        zombies.is_empty(),
        "zombies after {TOTAL} commands: {zombies:?}"
    );
    assert!(children.is_empty(), "children left: {children:?}");
}

#[test]
fn the_default_number_of_commands_run_at_once_on_one_connection_and_one_more_is_refused() {
    let limit = monoreactor::Limits::default().max_streams_per_connection;
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let streams: Vec<u32> = (0..limit)
        .map(|_| conn.exec(&request_with_stdin(&["cat"])))
        .collect();
    let pids: Vec<u32> = streams.iter().map(|&s| conn.started(s).pid).collect();
    let one_more = conn.exec(&request_with_stdin(&["cat"]));
    let (code, text) = conn.refused(one_more);
    assert_eq!(code, ErrorCode::LimitReached, "{text}");
    assert_eq!(server.children().len(), limit, "{:?}", server.children());
    conn.echo(b"the connection goes on");
    for (index, &stream) in streams.iter().enumerate() {
        conn.stdin(stream, format!("command {index}\n").as_bytes());
        conn.stdin_eof(stream);
    }
    for (index, &stream) in streams.iter().enumerate() {
        let done = conn.wait_end(stream, RUN_TIMEOUT);
        assert_eq!(done.stdout.text(), format!("command {index}\n"));
        assert_eq!(done.code(), 0);
    }
    for pid in pids {
        assert!(
            wait_group_gone(pid, Duration::from_secs(2)),
            "{pid} still runs"
        );
    }
    // Room again.
    let done = conn.run_argv(&["echo", "one more"]);
    assert_eq!(done.stdout.text(), "one more\n");
}

#[test]
fn the_per_connection_limit_follows_its_flag() {
    let server = Server::start_exec(&["--max-commands-per-conn", "2"]);
    let mut conn = ExecConn::connect(&server);
    let first = conn.exec(&request_with_stdin(&["cat"]));
    let second = conn.exec(&request_with_stdin(&["cat"]));
    let third = conn.exec(&request(&["true"]));
    conn.started(first);
    conn.started(second);
    assert_eq!(conn.refused(third).0, ErrorCode::LimitReached);
    // Another connection has its own two.
    let mut other = ExecConn::connect(&server);
    assert_eq!(other.run_argv(&["true"]).code(), 0);
    conn.stdin_eof(first);
    conn.stdin_eof(second);
    assert_eq!(conn.wait_end(first, RUN_TIMEOUT).code(), 0);
    assert_eq!(conn.wait_end(second, RUN_TIMEOUT).code(), 0);
}

#[test]
fn the_per_connection_limit_answers_to_its_clearer_alias_too() {
    let server = Server::start_exec(&["--max-streams-per-conn", "1"]);
    let mut conn = ExecConn::connect(&server);
    let first = conn.exec(&request_with_stdin(&["cat"]));
    let second = conn.exec(&request(&["true"]));
    conn.started(first);
    assert_eq!(conn.refused(second).0, ErrorCode::LimitReached);
    conn.stdin_eof(first);
    assert_eq!(conn.wait_end(first, RUN_TIMEOUT).code(), 0);
}

#[test]
fn fifty_commands_run_at_once_on_fifty_connections() {
    const CONNS: usize = 50;
    let server = Server::start_exec(&["--max-commands", "64"]);
    let mut running: Vec<(ExecConn, u32)> = (0..CONNS)
        .map(|_| {
            let mut conn = ExecConn::connect(&server);
            let stream = conn.exec(&request_with_stdin(&["cat"]));
            (conn, stream)
        })
        .collect();
    for (conn, stream) in &mut running {
        conn.started(*stream);
    }
    assert_eq!(server.children().len(), CONNS, "{:?}", server.children());
    assert_eq!(server.threads(), 1);
    for (index, (conn, stream)) in running.iter_mut().enumerate() {
        conn.stdin(*stream, format!("connection {index}\n").as_bytes());
        conn.stdin_eof(*stream);
    }
    for (index, (conn, stream)) in running.iter_mut().enumerate() {
        let done = conn.wait_end(*stream, RUN_TIMEOUT);
        assert_eq!(done.stdout.text(), format!("connection {index}\n"));
        assert_eq!(done.code(), 0);
    }
    assert!(server.wait_no_children(Duration::from_secs(2)));
}

#[test]
fn the_server_wide_limit_refuses_at_once_and_does_not_queue() {
    let server = Server::start_exec(&["--max-commands", "3"]);
    let mut first = ExecConn::connect(&server);
    let mut second = ExecConn::connect(&server);
    let a = first.exec(&request_with_stdin(&["cat"]));
    let b = first.exec(&request_with_stdin(&["cat"]));
    let c = second.exec(&request_with_stdin(&["cat"]));
    first.started(a);
    first.started(b);
    second.started(c);
    let refused_second = second.exec(&request(&["true"]));
    let (code, text) = second.refused(refused_second);
    assert_eq!(code, ErrorCode::LimitReached, "{text}");
    let waited = second.state(refused_second).elapsed();
    assert!(waited < Duration::from_secs(1), "refused after {waited:?}");
    let refused_first = first.exec(&request(&["true"]));
    assert_eq!(first.refused(refused_first).0, ErrorCode::LimitReached);

    // One ends: the refused requests stay refused (no STARTED later: the driver fails on any
    // frame after a stream's end), and a new request gets the free place.
    first.stdin_eof(a);
    assert_eq!(first.wait_end(a, RUN_TIMEOUT).code(), 0);
    thread::sleep(Duration::from_millis(200));
    second.echo(b"anything late arrives before this");
    first.echo(b"and before this");
    let done = second.run_argv(&["echo", "now there is room"]);
    assert_eq!(done.stdout.text(), "now there is room\n");
    first.stdin_eof(b);
    second.stdin_eof(c);
    first.wait_end(b, RUN_TIMEOUT);
    second.wait_end(c, RUN_TIMEOUT);
}

/// What a client saw of a server shutdown: each command's group id and EXIT, the connection's
/// error.
struct Shutdown {
    server: Server,
    commands: Vec<(u32, Option<Exit>)>,
    conn_error: Option<(ErrorCode, String)>,
}

/// Runs a `sleep` that obeys TERM and a script that ignores it, SIGTERMs the server, and reads
/// until the server closes the connection.
fn sigterm_mid_command(shutdown_grace: &str) -> Shutdown {
    let server = Server::start_exec(&["--shutdown-grace", shutdown_grace]);
    let mut conn = ExecConn::connect(&server);
    let obeys = conn.exec(&request(&["sleep", "30"]));
    let ignores = conn.exec(&shell(IGNORES_TERM));
    let pids = [conn.started(obeys).pid, conn.started(ignores).pid];
    // Once the shell has started `sleep`, its trap is set.
    wait_for_members(pids[1], 2);
    server.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match conn.pump(deadline) {
            Event::Frame { .. } => {}
            Event::Closed { .. } => break,
            Event::Timeout => panic!("the connection outlived the shutdown: {conn:?}"),
        }
    }
    let commands = [obeys, ignores]
        .into_iter()
        .zip(pids)
        .map(|(stream, pid)| (pid, conn.state(stream).exit))
        .collect();
    Shutdown {
        server,
        commands,
        conn_error: conn.conn_error.clone(),
    }
}

impl Shutdown {
    #[track_caller]
    fn assert_server_exits_leaving_nothing(mut self) {
        let status = self.server.wait_exit(Duration::from_secs(15));
        assert!(
            status.is_some_and(|status| status.success()),
            "server exit: {status:?}; stderr:\n{}",
            self.server.stderr_text()
        );
        for &(pid, _) in &self.commands {
            assert!(
                wait_group_gone(pid, Duration::from_secs(1)),
                "group {pid} outlived the server: {:?}",
                group_members(pid)
            );
        }
    }
}

#[test]
fn sigterm_mid_command_reports_shutdown_and_leaves_no_process() {
    // A grace longer than the kill grace: both commands end (the second by KILL) and their
    // EXITs are sent before SHUTTING_DOWN.
    let shutdown = sigterm_mid_command("5");
    let expected = [TERMINATED, KILLED];
    for (&(pid, exit), termination) in shutdown.commands.iter().zip(expected) {
        let exit = exit.unwrap_or_else(|| panic!("no EXIT for pid {pid}"));
        assert_eq!(exit.reason, EndReason::Shutdown, "pid {pid}: {exit:?}");
        assert_eq!(exit.termination, termination, "pid {pid}");
    }
    assert_eq!(
        shutdown.conn_error.as_ref().map(|(code, _)| *code),
        Some(ErrorCode::ShuttingDown),
        "{:?}",
        shutdown.conn_error
    );
    shutdown.assert_server_exits_leaving_nothing();
}

#[test]
fn sigterm_with_a_grace_shorter_than_the_kill_grace_still_leaves_no_process() {
    // The shutdown grace (1 s) ends while the TERM-ignoring command still runs (the kill grace
    // is 2 s): the server closes the connection, kills the group and exits.
    let shutdown = sigterm_mid_command("1");
    let (_, obeys) = shutdown.commands[0];
    assert_eq!(
        obeys.map(|exit| (exit.termination, exit.reason)),
        Some((TERMINATED, EndReason::Shutdown))
    );
    shutdown.assert_server_exits_leaving_nothing();
}

#[test]
fn sigterm_with_a_grace_shorter_than_the_kill_grace_tells_the_client_why() {
    let shutdown = sigterm_mid_command("1");
    let shutting_down = shutdown
        .conn_error
        .as_ref()
        .is_some_and(|(code, _)| *code == ErrorCode::ShuttingDown);
    for &(pid, exit) in &shutdown.commands {
        let shutdown_exit = exit.is_some_and(|exit| exit.reason == EndReason::Shutdown);
        assert!(
            shutdown_exit || shutting_down,
            "pid {pid}: the connection closed with neither EXIT (shutdown) nor SHUTTING_DOWN: {exit:?}, {:?}",
            shutdown.conn_error
        );
    }
    shutdown.assert_server_exits_leaving_nothing();
}

#[test]
fn a_signal_request_reaches_the_whole_group() {
    let server = Server::start_exec(&[]);
    let mut conn = ExecConn::connect(&server);
    let stream = conn.exec(&shell("sleep 99 & sleep 99; echo not reached"));
    let pgid = conn.started(stream).pid;
    wait_for_members(pgid, 3);
    conn.signal(stream, Signal::Term);
    let done = conn.wait_end(stream, Duration::from_secs(5));
    assert_eq!(done.exit().reason, EndReason::ClientSignal);
    assert_eq!(done.stdout.text(), "", "{}", done.summary());
    assert!(
        wait_group_gone(pgid, Duration::from_secs(2)),
        "{:?}",
        group_members(pgid)
    );
}
