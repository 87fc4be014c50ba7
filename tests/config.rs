//! `serve --config FILE` on the real binary: `--check-config`, a server started from a file
//! (and the command line over it), SIGHUP applying a changed limit live, a bad file keeping the
//! configuration in use, an address change logged as needing a restart, SIGUSR1 and SIGUSR2
//! not killing the server, the log line's format and levels, and `--workers` validating once.
//!
//! The servers here are started by [`FileServer`], not `support::Server`: that one puts the
//! listen addresses on the command line, where they would override the file's.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{TempDir, run_cli_with};

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test waits for the server to act on a signal.
const SIGNAL_WAIT: Duration = Duration::from_secs(5);

/// A `monoreactor serve --config FILE` child, its stderr in a file; killed on drop.
struct FileServer {
    child: Child,
    framed: SocketAddr,
    log: PathBuf,
}

impl FileServer {
    /// Starts `serve --config CONFIG EXTRA...` with `env` set and `RUST_LOG` otherwise
    /// unset; returns once it printed its framed address.
    fn start(dir: &TempDir, config: &Path, extra: &[&str], env: &[(&str, &str)]) -> FileServer {
        let log = dir.join("stderr.log");
        let stderr = fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_monoreactor"));
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(extra)
            .env_remove("MONOREACTOR_TOKEN")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = command.spawn().expect("spawn monoreactor");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Drains stdout to its end so the server never blocks on it.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = lines_tx.send(line);
            }
        });
        let mut server = FileServer {
            child,
            framed: "0.0.0.0:0".parse().expect("address"),
            log,
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening framed ") {
                        server.framed = addr.parse().expect("a framed address");
                        return server;
                    }
                }
                Err(_) => panic!(
                    "the server printed no framed address; stderr:\n{}",
                    server.log()
                ),
            }
        }
    }

    /// Everything on its stderr so far.
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until stderr contains `needle`; the log then.
    fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + SIGNAL_WAIT;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {SIGNAL_WAIT:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill only sends a signal to our own, not yet reaped, child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {signal}");
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        // The workers of a supervisor get SIGTERM when it dies (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A configuration in `dir` listening on loopback port 0, echo off, its root in `dir`, and
/// `extra` lines.
fn write_config(dir: &TempDir, extra: &str) -> PathBuf {
    let path = dir.join("monoreactor.toml");
    let root = dir.join("root");
    fs::write(
        &path,
        format!(
            "# test configuration\nlisten = \"127.0.0.1:0\"\necho-tcp = \"off\"\necho-udp = \"off\"\nroot = \"{}\"\n{extra}",
            root.display()
        ),
    )
    .expect("write the configuration");
    path
}

/// Whether the server closes a connection that says nothing within `within` (the hello
/// timeout at work).
fn silent_connection_closed_within(addr: SocketAddr, within: Duration) -> bool {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // The TIMEOUT error frame comes before the close.
            Ok(_) => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            // A reset is a close too.
            Err(_) => return true,
        }
    }
}

/// A framed HELLO and one echo, answered.
fn echoes(addr: SocketAddr) -> bool {
    let Ok(mut client) =
        monoreactor::client::Client::connect(addr.to_string().as_str(), Duration::from_secs(5))
    else {
        return false;
    };
    client
        .echo(b"still here")
        .is_ok_and(|reply| reply == b"still here")
}

#[test]
fn check_config_says_ok_or_names_each_error_with_its_line() {
    let dir = TempDir::new("config-check");
    let good = write_config(&dir, "hello-timeout = 2.5\nmax-conns = 50\n");
    let run = |args: &[&str]| {
        run_cli_with(args, TIMEOUT, |command| {
            command.env_remove("RUST_LOG");
        })
    };
    let good_str = good.to_str().expect("utf-8");
    let done = run(&["serve", "--config", good_str, "--check-config"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, format!("{good_str}: configuration OK\n"));
    assert!(!dir.join("root").exists(), "--check-config creates nothing");

    let bad = dir.join("bad.toml");
    fs::write(
        &bad,
        "listen = \"127.0.0.1:0\"\n\nmax-con = 5\nexec = \"yes\"\n",
    )
    .expect("write");
    let bad_str = bad.to_str().expect("utf-8");
    let done = run(&["serve", "--config", bad_str, "--check-config"]);
    assert_eq!(
        done.status.code(),
        Some(2),
        "a usage error: {}",
        done.stderr
    );
    assert!(
        done.stderr.contains(&format!(
            "{bad_str}:3: unknown key \"max-con\" (did you mean max-conns?)"
        )),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr
            .contains(&format!("{bad_str}:4: exec: expected true or false")),
        "every error, not just the first: {}",
        done.stderr
    );

    fs::write(&bad, "listen = \"127.0.0.1:0\"\nidle-timeout = \"soon\"\n").expect("write");
    let done = run(&["serve", "--config", bad_str, "--check-config"]);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr
            .contains(&format!("{bad_str}:2: idle-timeout = \"soon\": ")),
        "{}",
        done.stderr
    );

    // What the file names is loaded and checked too: a missing access file, a public address
    // without a token.
    let done = run(&[
        "serve",
        "--config",
        good_str,
        "--check-config",
        "--access",
        "/nonexistent/access.toml",
    ]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains("/nonexistent/access.toml"),
        "{}",
        done.stderr
    );
    let done = run(&[
        "serve",
        "--config",
        good_str,
        "--check-config",
        "--listen",
        "0.0.0.0:0",
    ]);
    assert_eq!(done.status.code(), Some(1), "{}", done.stderr);
    assert!(
        done.stderr.contains("refusing to listen"),
        "{}",
        done.stderr
    );

    // Without --config: the flags alone.
    let done = run(&["serve", "--check-config", "--no-files"]);
    assert!(done.status.success(), "{}", done.stderr);
    assert_eq!(done.stdout, "configuration OK\n");
}

#[test]
fn a_server_takes_its_settings_from_the_file_and_the_command_line_overrides_them() {
    let dir = TempDir::new("config-start");
    let config = write_config(&dir, "hello-timeout = 0.3\nmax-conns = 10\n");
    let server = FileServer::start(&dir, &config, &[], &[]);
    assert!(
        silent_connection_closed_within(server.framed, Duration::from_secs(3)),
        "the file's hello timeout"
    );
    assert!(dir.join("root").is_dir(), "the file's root");
    drop(server);

    let server = FileServer::start(&dir, &config, &["--hello-timeout", "60"], &[]);
    assert!(
        !silent_connection_closed_within(server.framed, Duration::from_secs(1)),
        "the command line's hello timeout, over the file's"
    );
    assert!(echoes(server.framed));
}

#[test]
fn sighup_applies_a_changed_hello_timeout_and_log_level_live() {
    let dir = TempDir::new("config-reload");
    let config = write_config(&dir, "hello-timeout = 60\n");
    let server = FileServer::start(&dir, &config, &[], &[]);
    assert!(!silent_connection_closed_within(
        server.framed,
        Duration::from_millis(700)
    ));
    // Opened before the reload: its deadline was armed with the old timeout.
    let mut before = TcpStream::connect(server.framed).expect("connect");
    write_config(&dir, "hello-timeout = 0.3\nlog-level = \"debug\"\n");
    server.signal(libc::SIGHUP);
    let log = server.wait_log("SIGHUP: reloaded");
    assert!(log.contains("hello timeout"), "{log}");
    assert!(log.contains("log levels debug"), "{log}");
    assert!(
        !log.contains("needs a restart"),
        "nothing restart-only changed: {log}"
    );
    assert!(
        silent_connection_closed_within(server.framed, Duration::from_secs(3)),
        "a new connection has the new hello timeout"
    );
    before
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    assert!(
        matches!(before.read(&mut byte), Err(error) if error.kind() == ErrorKind::WouldBlock),
        "an armed deadline keeps its time"
    );
    // Debug lines now appear: a connection's close is logged at debug level.
    assert!(echoes(server.framed));
    server.wait_log("DEBUG");
}

#[test]
fn after_a_reload_the_command_line_still_overrides_the_file() {
    let dir = TempDir::new("config-reload-override");
    let config = write_config(&dir, "hello-timeout = 60\n");
    let server = FileServer::start(&dir, &config, &["--hello-timeout", "60"], &[]);
    write_config(&dir, "hello-timeout = 0.3\nmax-put = 1000\n");
    server.signal(libc::SIGHUP);
    let log = server.wait_log("SIGHUP: reloaded");
    assert!(!log.contains("hello timeout"), "{log}");
    assert!(
        !silent_connection_closed_within(server.framed, Duration::from_millis(700)),
        "the command line's hello timeout holds"
    );
}

#[test]
fn a_bad_file_on_sighup_keeps_the_configuration_in_use_and_says_where() {
    let dir = TempDir::new("config-reload-bad");
    let config = write_config(&dir, "hello-timeout = 0.3\n");
    let config_str = config.display().to_string();
    let server = FileServer::start(&dir, &config, &[], &[]);
    // An unknown key beside a change that would be good: nothing of the file is taken.
    write_config(&dir, "hello-timeout = 60\nmax-con = 3\n");
    server.signal(libc::SIGHUP);
    let log = server.wait_log("keeping the configuration in use");
    assert!(
        log.contains(&format!("{config_str}:7: unknown key \"max-con\"")),
        "{log}"
    );
    assert!(
        silent_connection_closed_within(server.framed, Duration::from_secs(3)),
        "the old hello timeout still holds"
    );
    // A value the flag refuses, and a file that does not parse.
    write_config(&dir, "hello-timeout = \"soon\"\n");
    server.signal(libc::SIGHUP);
    server.wait_log(&format!("{config_str}:6: hello-timeout = \"soon\""));
    fs::write(&config, "listen = \n").expect("write");
    server.signal(libc::SIGHUP);
    server.wait_log(&format!("{config_str}:1: "));
    assert!(
        silent_connection_closed_within(server.framed, Duration::from_secs(3)),
        "still the old hello timeout"
    );
    assert!(echoes(server.framed));
}

#[test]
fn an_address_change_on_sighup_is_logged_as_needing_a_restart() {
    let dir = TempDir::new("config-reload-address");
    let config = write_config(&dir, "max-conns = 100\n");
    let server = FileServer::start(&dir, &config, &[], &[]);
    let text = fs::read_to_string(&config).expect("read");
    fs::write(
        &config,
        text.replace("127.0.0.1:0", "127.0.0.1:1")
            .replace("max-conns = 100", "max-conns = 200\nmax-put = 1000"),
    )
    .expect("write");
    server.signal(libc::SIGHUP);
    let log = server.wait_log("needs a restart");
    assert!(
        log.contains("SIGHUP: listen, max-conns changed and needs a restart"),
        "each key named: {log}"
    );
    assert!(log.contains("reloaded max put"), "the rest is taken: {log}");
    assert!(echoes(server.framed), "still on the old address");
}

#[test]
fn sigusr1_logs_counters_and_neither_sigusr1_nor_sigusr2_stops_the_server() {
    let dir = TempDir::new("config-usr1");
    let config = write_config(&dir, "");
    let mut server = FileServer::start(&dir, &config, &[], &[]);
    assert!(echoes(server.framed));
    server.signal(libc::SIGUSR1);
    let log = server.wait_log("SIGUSR1: ");
    assert!(log.contains("1 accepted"), "{log}");
    server.signal(libc::SIGUSR2);
    server.wait_log("SIGUSR2: ignored");
    assert!(server.is_running());
    assert!(echoes(server.framed));
}

/// `2026-12-07T19:18:56.123Z INFO  [monoreactor::server] files are served under ...`.
fn assert_log_line(line: &str) {
    let (stamp, rest) = line.split_at_checked(24).unwrap_or(("", ""));
    let bytes = stamp.as_bytes();
    let digits = |range: std::ops::Range<usize>| bytes[range].iter().all(u8::is_ascii_digit);
    assert!(
        bytes.len() == 24
            && digits(0..4)
            && bytes[4] == b'-'
            && digits(5..7)
            && bytes[7] == b'-'
            && digits(8..10)
            && bytes[10] == b'T'
            && digits(11..13)
            && bytes[13] == b':'
            && digits(14..16)
            && bytes[16] == b':'
            && digits(17..19)
            && bytes[19] == b'.'
            && digits(20..23)
            && bytes[23] == b'Z',
        "not an RFC 3339 UTC time with milliseconds: {line:?}"
    );
    let level = rest.trim_start().split(' ').next().unwrap_or_default();
    assert!(
        ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level) && rest.contains(" ["),
        "no level and module: {line:?}"
    );
}

#[test]
fn log_lines_have_a_utc_timestamp_a_level_and_levels_per_module() {
    let dir = TempDir::new("config-log");
    let config = write_config(&dir, "log-level = \"warn\"\n");
    // RUST_LOG over the file: the server module's info, every other module's warnings.
    let server = FileServer::start(
        &dir,
        &config,
        &[],
        &[("RUST_LOG", "warn,monoreactor::server=info")],
    );
    let log = server.wait_log("files are served");
    assert!(!log.contains("[monoreactor::reactor]"), "{log}");
    server.signal(libc::SIGUSR1);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !server.log().contains("SIGUSR1"),
        "the reactor's info lines are below its level"
    );
    for line in server.log().lines() {
        assert_log_line(line);
    }
    drop(server);

    // --log-level over RUST_LOG.
    let server = FileServer::start(
        &dir,
        &config,
        &["--log-level", "monoreactor::reactor=info,warn"],
        &[("RUST_LOG", "error")],
    );
    server.signal(libc::SIGUSR1);
    let log = server.wait_log("SIGUSR1: ");
    assert!(!log.contains("files are served"), "{log}");
    for line in log.lines() {
        assert_log_line(line);
    }

    // Client commands keep their quiet, unstamped lines.
    let done = run_cli_with(&["echo", "--addr", "127.0.0.1:1", "hi"], TIMEOUT, |_| {});
    assert!(!done.status.success());
    assert!(
        !done.stderr.starts_with("20"),
        "no timestamp on a client's line: {}",
        done.stderr
    );
}

#[test]
fn workers_validate_a_reload_once_and_forward_it_only_when_good() {
    let dir = TempDir::new("config-workers");
    let config = write_config(&dir, "hello-timeout = 60\n");
    let server = FileServer::start(&dir, &config, &["--workers", "2"], &[]);
    // Both workers ready before the signal (a starting one gets it late, not never, and
    // reads the file when it starts). The disk helpers say "ready" too: not those lines.
    let workers_ready = |log: &str| {
        log.lines()
            .filter(|line| line.contains("workers] worker ") && line.ends_with(" ready"))
            .count()
    };
    let deadline = Instant::now() + TIMEOUT;
    while workers_ready(&server.log()) < 2 {
        assert!(
            Instant::now() < deadline,
            "workers not ready:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    write_config(&dir, "hello-timeout = 0.3\nmax-con = 1\n");
    server.signal(libc::SIGHUP);
    let log = server.wait_log("not passed on");
    assert_eq!(
        log.matches("unknown key \"max-con\"").count(),
        1,
        "logged once, by the supervisor: {log}"
    );
    assert!(!silent_connection_closed_within(
        server.framed,
        Duration::from_millis(700)
    ));

    let text = fs::read_to_string(&config).expect("read");
    fs::write(
        &config,
        text.replace("max-con = 1\n", "")
            .replace("127.0.0.1:0", "127.0.0.1:1"),
    )
    .expect("write");
    server.signal(libc::SIGHUP);
    server.wait_log("forwarded to 2 worker(s)");
    let deadline = Instant::now() + SIGNAL_WAIT;
    while server.log().matches("SIGHUP: reloaded").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "both workers reload:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.log();
    assert_eq!(
        log.matches("listen changed and needs a restart").count(),
        1,
        "named once, by the supervisor: {log}"
    );
    // Connections spread over both workers: each has the new hello timeout.
    for _ in 0..6 {
        assert!(silent_connection_closed_within(
            server.framed,
            Duration::from_secs(3)
        ));
    }
}
