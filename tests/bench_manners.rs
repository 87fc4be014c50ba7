//! `monoreactor bench` as a Unix tool: sizes that cannot work refused before connecting, an
//! exit status that says whether anything succeeded, MB/s that says what it counts, progress
//! on a terminal only, Ctrl-C that reports and cleans up, and help that names nothing the
//! user does not have. Runs are short; every child is bounded by [`LIMIT`].

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::{Finished, Server, run_cli, wait_child};

/// Longest any bench process here may run.
const LIMIT: Duration = Duration::from_secs(20);

fn bench(args: &[&str]) -> Finished {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    run_cli(&all, LIMIT)
}

/// The number after `"key":` in a one-line JSON object.
#[track_caller]
fn json_number(json: &str, key: &str) -> f64 {
    let pattern = format!("\"{key}\":");
    let at = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pattern.len();
    let text: String = json[at..]
        .chars()
        .take_while(|c| !matches!(c, ',' | '}'))
        .collect();
    text.parse()
        .unwrap_or_else(|_| panic!("{key} is {text:?} in {json}"))
}

#[test]
fn a_payload_larger_than_a_frame_or_a_datagram_is_a_usage_error_before_connecting() {
    // Nothing listens on port 1: a run that tried to connect would say so instead.
    for args in [
        ["echo", "-s", "65M", "--addr", "127.0.0.1:1"],
        ["echo", "-s", "100000000", "--addr", "127.0.0.1:1"],
        ["udp", "-s", "65508", "--addr", "127.0.0.1:1"],
        ["udp", "-s", "1M", "--addr", "127.0.0.1:1"],
    ] {
        let run = bench(&args);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {run:?}");
        assert_eq!(run.stderr.trim().lines().count(), 1, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("at most") && !run.stderr.contains("connect"),
            "{args:?}: {run:?}"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
    // The largest datagram is fine (it fails later, on the address).
    let run = bench(&["udp", "-s", "65507", "--addr", "127.0.0.1:1"]);
    assert_ne!(run.status.code(), Some(2), "{run:?}");

    // Above this server's own frame limit (its --max-frame): refused after the first
    // connection's HELLO_OK says so, not as a run of errors.
    let server = Server::start(&["--max-frame", "4096"]);
    let framed = server.framed_str();
    let run = bench(&["echo", "-s", "4097", "--addr", &framed, "-d", "0.3"]);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    assert!(
        run.stderr.contains("4096") && run.stdout.is_empty(),
        "{run:?}"
    );
    let run = bench(&["echo", "-s", "4096", "--addr", &framed, "-n", "10"]);
    assert_eq!(run.status.code(), Some(0), "{run:?}");
}

#[test]
fn a_rate_that_is_not_a_positive_number_is_a_usage_error_before_connecting() {
    for rate in ["0", "-5", "nan", "inf", "fast"] {
        for workload in ["echo", "udp"] {
            let flag = format!("--rate={rate}");
            let run = bench(&[workload, &flag, "--addr", "127.0.0.1:1", "-d", "0.3"]);
            assert_eq!(
                run.status.code(),
                Some(2),
                "{workload} --rate {rate}: {run:?}"
            );
            assert!(
                run.stderr.contains("positive number") && !run.stderr.contains("connect"),
                "{workload} --rate {rate}: {run:?}"
            );
        }
    }
}

/// A raw echo server that echoes the first connection (the bench's probe) and then, with
/// `answer_later` false, stops listening (every later connect is refused); with it true,
/// accepts every later connection and never answers. Lives for at most [`LIMIT`].
fn echo_once(answer_later: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    thread::spawn(move || {
        let Ok((mut probe, _)) = listener.accept() else {
            return;
        };
        let _ = probe.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0; 1024];
        if let Ok(n) = probe.read(&mut buf) {
            let _ = probe.write_all(&buf[..n]);
        }
        if !answer_later {
            // Closing the listener: later connects are refused.
            return;
        }
        listener.set_nonblocking(true).expect("nonblocking");
        let mut held = vec![probe];
        let end = Instant::now() + LIMIT;
        while Instant::now() < end {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5));
                }
                Err(_) => break,
            }
        }
    });
    addr
}

#[test]
fn a_run_where_nothing_succeeded_exits_255() {
    // No request answered: the run lasts its time and counts nothing.
    for workload in ["connect", "echo"] {
        let addr = echo_once(true).to_string();
        let mut args = vec![workload, "--addr", &addr, "-c", "2", "-d", "0.5"];
        if workload == "echo" {
            args.push("--raw");
        }
        let run = bench(&args);
        assert_eq!(run.status.code(), Some(255), "{workload}: {run:?}");
        assert!(run.stderr.contains("nothing succeeded"), "{run:?}");
        // The report is still printed.
        assert!(run.stdout.contains(" 0 "), "{run:?}");
    }
    // Every connection refused.
    let addr = echo_once(false).to_string();
    thread::sleep(Duration::from_millis(50));
    let run = bench(&["echo", "--raw", "--addr", &addr, "-c", "2", "-d", "3"]);
    assert_eq!(run.status.code(), Some(255), "{run:?}");
    assert!(
        run.stderr.to_lowercase().contains("connection refused"),
        "{run:?}"
    );
}

#[test]
fn a_run_the_server_refused_throughout_exits_1() {
    let server = Server::start_exec(&[]);
    let framed = server.framed_str();
    let token = server.scratch().join("token");
    let token = token.to_str().expect("UTF-8 temp path");
    let run = bench(&[
        "exec",
        "--addr",
        &framed,
        "--token-file",
        token,
        "-d",
        "0.3",
        "--",
        "false",
    ]);
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(run.stdout.contains("(exit 1 "), "{run:?}");
    assert!(run.stderr.contains("nothing succeeded"), "{run:?}");
}

#[test]
fn mb_per_s_says_what_it_counts_and_counts_the_same_everywhere() {
    let server = Server::start_exec(&[]);
    let framed = server.framed_str();
    let raw = server.echo_tcp().to_string();
    let udp = server.echo_udp().to_string();
    let token = server.scratch().join("token");
    let token = token.to_str().expect("UTF-8 temp path");
    // Payload bytes per request, sent plus received.
    let runs: [(&[&str], f64); 5] = [
        (
            &["echo", "--addr", &framed, "-s", "1000", "-n", "300"],
            2000.0,
        ),
        (
            &["echo", "--raw", "--addr", &raw, "-s", "1000", "-n", "300"],
            2000.0,
        ),
        (&["udp", "--addr", &udp, "-s", "1000", "-n", "300"], 2000.0),
        (
            &[
                "put",
                "--addr",
                &framed,
                "--token-file",
                token,
                "-s",
                "100000",
                "-n",
                "10",
            ],
            100_000.0,
        ),
        (
            &[
                "get",
                "--addr",
                &framed,
                "--token-file",
                token,
                "-s",
                "100000",
                "-n",
                "10",
            ],
            100_000.0,
        ),
    ];
    for (args, per_request) in runs {
        let run = bench(args);
        assert!(run.status.success(), "{args:?}: {run:?}");
        assert!(
            run.stdout
                .contains("MB/s (payload sent + received, 10^6 bytes)"),
            "{args:?}: {run:?}"
        );
        let mut json_args = args.to_vec();
        json_args.push("--json");
        let run = bench(&json_args);
        assert!(run.status.success(), "{json_args:?}: {run:?}");
        let json = run.stdout.trim();
        let expected = json_number(json, "throughput") * per_request / 1e6;
        let got = json_number(json, "mb_per_s");
        assert!(
            (got - expected).abs() <= expected * 0.02 + 0.002,
            "{args:?}: mb_per_s {got}, expected {expected}: {json}"
        );
    }
    let help = run_cli(&["bench", "--help"], LIMIT).stdout;
    assert!(help.contains("payload bytes sent plus"), "{help}");
}

/// `monoreactor bench ARGS` with stderr on a new pseudo-terminal and stdout piped; returns
/// how it exited, its stdout, and what it wrote to the terminal.
fn bench_on_a_terminal(args: &[&str]) -> (Option<i32>, String, String) {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // SAFETY: openpty writes two descriptors into the integers it is given; the other
    // arguments may be null.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    let mut child = Command::new(env!("CARGO_BIN_EXE_monoreactor"))
        .args(&all)
        .env_remove("MONOREACTOR_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("spawn monoreactor");
    // Our copy of the terminal's other end is gone with the Command: the master reads EIO
    // once the child has exited.
    let mut terminal = std::fs::File::from(master);
    let reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let mut chunk = [0; 4096];
        while let Ok(n) = terminal.read(&mut chunk) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let mut stdout = child.stdout.take().expect("piped stdout");
    let out = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let status = wait_child(&mut child, LIMIT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("bench {args:?} did not exit within {LIMIT:?}");
    }
    let code = status.and_then(|status| status.code());
    (
        code,
        out.join().expect("stdout reader"),
        reader.join().expect("terminal reader"),
    )
}

#[test]
fn progress_shows_on_a_terminal_only_and_not_with_q() {
    let server = Server::start(&[]);
    let framed = server.framed_str();
    let args = ["echo", "--addr", &framed, "-c", "2", "-d", "2.5"];
    let (code, stdout, terminal) = bench_on_a_terminal(&args);
    assert_eq!(code, Some(0), "{stdout}\n{terminal}");
    assert!(
        terminal.contains("s elapsed,") && terminal.contains(" requests, 0 errors"),
        "terminal: {terminal:?}"
    );
    assert!(!stdout.contains("elapsed"), "{stdout}");
    // The line is erased when the run ends, before the report.
    assert!(terminal.ends_with("\r\x1b[K"), "terminal: {terminal:?}");

    let mut quiet = args.to_vec();
    quiet.push("-q");
    let (code, stdout, terminal) = bench_on_a_terminal(&quiet);
    assert_eq!(code, Some(0), "{stdout}\n{terminal}");
    assert!(!terminal.contains("elapsed"), "terminal: {terminal:?}");

    // Piped: nothing but the report.
    let run = bench(&args);
    assert!(run.status.success(), "{run:?}");
    assert!(run.stderr.is_empty(), "{run:?}");
}

/// Starts `bench ARGS` (output piped), waits `until` holds (at most 10 s), sends it SIGINT
/// and returns how it ended.
fn interrupt(args: &[&str], mut until: impl FnMut() -> bool) -> Finished {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    let mut child = Command::new(env!("CARGO_BIN_EXE_monoreactor"))
        .args(&all)
        .env_remove("MONOREACTOR_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn monoreactor");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    // The run is under way once bench catches SIGINT (it does so after its target check)
    // and `until` holds.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(catches_sigint(child.id()) && until()) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(200));
    let pid = libc::pid_t::try_from(child.id()).expect("a pid");
    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let Some(status) = wait_child(&mut child, LIMIT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("bench {args:?} did not exit after SIGINT");
    };
    Finished {
        status,
        stdout: stdout.join().expect("stdout"),
        stderr: stderr.join().expect("stderr"),
    }
}

/// Whether process `pid` has a handler for SIGINT (`SigCgt` in `/proc/PID/status`).
fn catches_sigint(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
}

/// The names in `dir`, but the server's own index.
fn names_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("the root")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name != monoreactor::internal::INDEX_NAME)
        .collect()
}

#[test]
fn ctrl_c_prints_the_partial_report_removes_the_files_and_exits_130() {
    let server = Server::start_exec(&[]);
    let framed = server.framed_str();
    let token = server.scratch().join("token");
    let token = token.to_str().expect("UTF-8 temp path");
    let root = server.root().to_path_buf();
    for workload in ["put", "get"] {
        let run = interrupt(
            &[
                workload,
                "--addr",
                &framed,
                "--token-file",
                token,
                "-c",
                "2",
                "-s",
                "256K",
                "-d",
                "30",
            ],
            || names_in(&root).iter().any(|name| name.contains("bench")),
        );
        assert_eq!(run.status.code(), Some(130), "{workload}: {run:?}");
        assert!(
            run.stdout.contains("transfers in") && run.stdout.contains("interrupted"),
            "{workload}: {run:?}"
        );
        assert!(run.stderr.contains("interrupted"), "{workload}: {run:?}");
        let left = names_in(&root);
        assert!(left.is_empty(), "{workload} left in the root: {left:?}");
    }

    let started = Instant::now();
    let run = interrupt(
        &["echo", "--addr", &framed, "-c", "2", "-d", "30", "--json"],
        || started.elapsed() > Duration::from_millis(300),
    );
    assert_eq!(run.status.code(), Some(130), "{run:?}");
    let json = run.stdout.trim();
    assert!(
        json.contains("\"complete\":false") && json.contains("interrupted"),
        "{json}"
    );
    assert!(json_number(json, "requests") > 0.0, "{json}");
}

#[test]
fn help_names_nothing_the_user_does_not_have() {
    let mut helps = vec![vec!["bench", "--help"]];
    for workload in [
        "echo", "udp", "connect", "exec", "get", "put", "idle", "probe", "stream",
    ] {
        helps.push(vec!["bench", workload, "--help"]);
    }
    for args in helps {
        let run = run_cli(&args, LIMIT);
        assert!(run.status.success(), "{args:?}: {run:?}");
        let help = run.stdout;
        for word in ["../shared", "bench-tools", "loadgen", "connectgen"] {
            assert!(
                !help.to_lowercase().contains(word),
                "{args:?} names {word}:\n{help}"
            );
        }
        // Environment variables: only the program's own.
        for (at, _) in help.match_indices('$') {
            let name: String = help[at + 1..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            assert!(
                name.is_empty() || name.starts_with("MONOREACTOR_"),
                "{args:?} names ${name}:\n{help}"
            );
        }
        for word in help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '=')) {
            if let Some((name, _)) = word.split_once('=') {
                let upper = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit());
                assert!(
                    !upper || name.starts_with("MONOREACTOR_"),
                    "{args:?} names {name}=:\n{help}"
                );
            }
        }
    }
}

#[test]
fn ctrl_c_while_the_file_is_prepared_ends_the_run_at_once() {
    // `-s 1T`: minutes of hashing zeros (and, for get, uploading them) before the first
    // request; the one Ctrl-C that stops a run must stop that too (it was ignored: the run
    // went on until a second one).
    let server = Server::start_exec(&[]);
    let framed = server.framed_str();
    let token = server.scratch().join("token");
    let token = token.to_str().expect("UTF-8 temp path");
    let root = server.root().to_path_buf();
    for workload in ["put", "get"] {
        let started = Instant::now();
        let run = interrupt(
            &[
                workload,
                "--addr",
                &framed,
                "--token-file",
                token,
                "-c",
                "1",
                "-s",
                "1T",
                "-d",
                "30",
            ],
            || true,
        );
        assert_eq!(run.status.code(), Some(130), "{workload}: {run:?}");
        assert!(run.stderr.contains("interrupted"), "{workload}: {run:?}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{workload}: {run:?}"
        );
        let left = names_in(&root);
        assert!(left.is_empty(), "{workload} left in the root: {left:?}");
    }
}
