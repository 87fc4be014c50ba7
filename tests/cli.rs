//! The client commands as a user meets them: `monoreactor exec`, `echo` and `bench` run as
//! processes against a real server over loopback. Exit status as ssh reports it, bytes intact
//! both ways, quiet ends on a closed stdout, signals forwarded, one-line errors with hints.
//!
//! Every client process is killed (by pid) and reaped if it outlives its limit or the test
//! panics; servers clean up their commands when dropped.

mod support;

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use monoreactor::Token;
use monoreactor::client::exec::{Command as RemoteCommand, ExecClient};
use monoreactor::proto::exec::{EndReason, Signal, Termination};
use support::exec::{Scratch, TEST_TOKEN, write_token_file};
use support::{Server, seeded_bytes, wait_child};

/// Longest any client process in these tests may run.
const LIMIT: Duration = Duration::from_secs(30);
/// How soon a client must react to a signal or a closed pipe.
const PROMPTLY: Duration = Duration::from_secs(5);

// === Running the client ===

/// What a client's stdin is.
enum Input {
    Null,
    Bytes(Vec<u8>),
    File(File),
}

/// A `monoreactor` client process. Killed and reaped on drop unless it was waited for.
struct Client {
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    stdin: Option<JoinHandle<()>>,
    waited: bool,
}

/// A finished client.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

impl Finished {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The status and stderr, for assertion messages.
    fn describe(&self) -> String {
        format!(
            "{:?}, {} bytes of stdout, stderr {:?}",
            self.status,
            self.stdout.len(),
            self.stderr
        )
    }

    /// Asserts the exit code and that stderr is exactly one `monoreactor: ...` line; returns
    /// that line.
    #[track_caller]
    fn one_line_failure(&self, code: i32) -> &str {
        assert_eq!(self.status.code(), Some(code), "{}", self.describe());
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("monoreactor: "),
            "expected one `monoreactor: ...` line on stderr, got {:?}",
            self.stderr
        );
        lines[0]
    }
}

/// `monoreactor ARGS`, with a clean token environment and piped output, both collected.
fn spawn(args: &[&str], input: Input) -> Client {
    start(args, input, |_| {}, true)
}

/// Like [`spawn`], with a chance to adjust the command first.
fn spawn_with(args: &[&str], input: Input, configure: impl FnOnce(&mut Command)) -> Client {
    start(args, input, configure, true)
}

/// Like [`spawn`], but stdout is left for the test to read ([`Client::take_stdout`]) or close.
fn spawn_reading(args: &[&str], input: Input) -> Client {
    start(args, input, |_| {}, false)
}

fn start(
    args: &[&str],
    input: Input,
    configure: impl FnOnce(&mut Command),
    collect_stdout: bool,
) -> Client {
    let mut command = Command::new(env!("CARGO_BIN_EXE_monoreactor"));
    command
        .args(args)
        // A token in the test runner's environment must not change what a test sees.
        .env_remove("MONOREACTOR_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let bytes = match input {
        Input::Null => {
            command.stdin(Stdio::null());
            None
        }
        Input::Bytes(bytes) => {
            command.stdin(Stdio::piped());
            Some(bytes)
        }
        Input::File(file) => {
            command.stdin(Stdio::from(file));
            None
        }
    };
    configure(&mut command);
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot spawn monoreactor {args:?}: {error}"));
    let stdin = bytes.map(|bytes| {
        let mut pipe = child.stdin.take().expect("piped stdin");
        // Written from a thread: the client reads stdin while we read its stdout. A write
        // error means the client stopped reading, which the test then sees in the output.
        thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })
    });
    let stdout = if collect_stdout {
        child.stdout.take().map(drain)
    } else {
        None
    };
    let stderr = child.stderr.take().map(drain);
    Client {
        child,
        stdout,
        stderr,
        stdin,
        waited: false,
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

impl Client {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stdout, for a client from [`spawn_reading`].
    fn take_stdout(&mut self) -> ChildStdout {
        self.child
            .stdout
            .take()
            .expect("a client from spawn_reading, stdout not yet taken")
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: a signal to our own child, not yet reaped (so the pid is still its).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Waits up to `timeout` for the exit; fails the test (after killing it) otherwise.
    #[track_caller]
    fn finish_within(mut self, timeout: Duration) -> Finished {
        let Some(status) = wait_child(&mut self.child, timeout) else {
            panic!("the client did not exit within {timeout:?}");
        };
        self.waited = true;
        let stdout = self
            .stdout
            .take()
            .map_or_else(Vec::new, |reader| reader.join().expect("stdout collector"));
        let stderr = self
            .stderr
            .take()
            .map_or_else(Vec::new, |reader| reader.join().expect("stderr collector"));
        if let Some(writer) = self.stdin.take() {
            let _ = writer.join();
        }
        Finished {
            status,
            stdout,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    #[track_caller]
    fn finish(self) -> Finished {
        self.finish_within(LIMIT)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if !self.waited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `monoreactor ARGS` to its end.
#[track_caller]
fn run(args: &[&str], input: Input) -> Finished {
    spawn(args, input).finish()
}

/// The token file [`Server::start_exec`] wrote.
fn token_file(server: &Server) -> String {
    path_arg(server.scratch().join("token"))
}

fn path_arg(path: PathBuf) -> String {
    path.to_str().expect("UTF-8 temp path").to_string()
}

/// `exec --addr FRAMED --token-file TOKEN` followed by `rest`.
fn exec_args(server: &Server, rest: &[&str]) -> Vec<String> {
    let mut args = vec![
        "exec".to_string(),
        "--addr".to_string(),
        server.framed_str(),
        "--token-file".to_string(),
        token_file(server),
    ];
    args.extend(rest.iter().map(|arg| arg.to_string()));
    args
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `monoreactor exec ... REST` against `server`, to its end.
#[track_caller]
fn run_exec(server: &Server, rest: &[&str], input: Input) -> Finished {
    run(&as_strs(&exec_args(server, rest)), input)
}

/// Lines of a child's stdout, delivered through a channel so that waits can have deadlines.
fn lines_of(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[track_caller]
fn expect_line(lines: &Receiver<String>, expected: &str) {
    match lines.recv_timeout(Duration::from_secs(10)) {
        Ok(line) => assert_eq!(line, expected),
        Err(error) => panic!("no line {expected:?} from the client: {error}"),
    }
}

/// A loopback port with nothing listening (it was free a moment ago).
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("local addr")
}

/// A loopback listener that accepts one connection within 10 s, reads what the client sends
/// for a moment, writes `answer` (if any), then holds the connection (silent) until the client
/// closes it or `hold` passes. Everything it does is bounded.
fn fake_server(answer: Option<&'static [u8]>, hold: Duration) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let thread = thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Err(_) => return,
            }
        };
        conn.set_nonblocking(false).expect("blocking");
        conn.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let mut hello = [0; 256];
        let _ = conn.read(&mut hello);
        if let Some(answer) = answer {
            let _ = conn.write_all(answer);
        }
        conn.set_read_timeout(Some(hold)).expect("timeout");
        let _ = conn.read(&mut hello);
    });
    (addr, thread)
}

// === Exit status ===

#[test]
fn exit_codes_pass_through_and_a_death_by_signal_n_is_128_plus_n() {
    let server = Server::start_exec(&[]);
    for (script, code) in [
        ("exit 0", 0),
        ("exit 1", 1),
        ("exit 3", 3),
        ("exit 255", 255),
        ("kill -TERM $$", 128 + 15),
        ("kill -KILL $$", 128 + 9),
    ] {
        let done = run_exec(&server, &["--shell", script], Input::Null);
        assert_eq!(
            done.status.code(),
            Some(code),
            "{script}: {}",
            done.describe()
        );
        assert_eq!(done.stderr, "", "{script}: nothing of ours on stderr");
    }
}

#[test]
fn failures_of_the_client_itself_exit_255_with_one_line() {
    let nobody = closed_port().to_string();
    let done = run(&["exec", "--addr", &nobody, "--", "true"], Input::Null);
    let line = done.one_line_failure(255);
    assert!(
        line.contains("cannot connect") && line.contains(&nobody),
        "{line}"
    );

    let server = Server::start_exec(&[]);
    let wrong = Scratch::new("cli-wrong-token");
    let wrong_file = path_arg(write_token_file(wrong.path(), b"not-the-token-0123456789"));
    let addr = server.framed_str();
    let done = run(
        &[
            "exec",
            "--addr",
            &addr,
            "--token-file",
            &wrong_file,
            "--",
            "true",
        ],
        Input::Null,
    );
    let line = done.one_line_failure(255);
    assert!(
        line.contains("server error AUTH_FAILED") && line.contains(&wrong_file),
        "a wrong token names the file it came from: {line}"
    );

    let done = spawn_with(
        &["exec", "--addr", &addr, "--", "true"],
        Input::Null,
        |cmd| {
            cmd.env("MONOREACTOR_TOKEN", "not-the-token-0123456789");
        },
    )
    .finish();
    let line = done.one_line_failure(255);
    assert!(
        line.contains("AUTH_FAILED") && line.contains("MONOREACTOR_TOKEN"),
        "{line}"
    );

    let done = run(&["exec", "--addr", &addr, "--", "true"], Input::Null);
    let line = done.one_line_failure(255);
    assert!(
        line.contains("server error UNAUTHENTICATED")
            && line.contains("--token-file")
            && line.contains("MONOREACTOR_TOKEN"),
        "a missing token says how to give one: {line}"
    );

    let missing = path_arg(wrong.path().join("no-such-file"));
    let done = run(
        &[
            "exec",
            "--addr",
            &addr,
            "--token-file",
            &missing,
            "--",
            "true",
        ],
        Input::Null,
    );
    let line = done.one_line_failure(255);
    assert!(
        line.contains("--token-file") && line.contains(&missing),
        "{line}"
    );
    server.assert_no_children("after refused commands");
}

#[test]
fn a_server_without_exec_or_program_is_a_decoded_error() {
    let echo_only = Server::start(&[]);
    let addr = echo_only.framed_str();
    let done = run(&["exec", "--addr", &addr, "--", "true"], Input::Null);
    let line = done.one_line_failure(255);
    assert!(line.contains("server error EXEC_DISABLED: "), "{line}");

    // As a shell (and so ssh) reports them: 127 for a program that is not there.
    let server = Server::start_exec(&[]);
    let done = run_exec(&server, &["--", "nosuchprog-cli-test"], Input::Null);
    let line = done.one_line_failure(127);
    assert!(
        line.contains("server error NOT_FOUND: nosuchprog-cli-test"),
        "{line}"
    );
}

// === Bytes ===

#[test]
fn stdout_and_stderr_stay_apart() {
    let server = Server::start_exec(&[]);
    let done = run_exec(
        &server,
        &[
            "--shell",
            "echo out; echo err >&2; echo out2; echo err2 >&2",
        ],
        Input::Null,
    );
    assert_eq!(done.status.code(), Some(0), "{}", done.describe());
    assert_eq!(done.stdout_text(), "out\nout2\n");
    assert_eq!(done.stderr, "err\nerr2\n");
}

#[test]
fn every_byte_value_survives_the_round_trip() {
    let server = Server::start_exec(&[]);
    let bytes: Vec<u8> = (0..=255u8).cycle().take(256 * 4).collect();
    let done = run_exec(&server, &["--", "cat"], Input::Bytes(bytes.clone()));
    assert_eq!(done.status.code(), Some(0), "{}", done.describe());
    assert!(done.stdout == bytes, "cat returned different bytes");

    // The other way on its own: bytes made remotely, including NUL and 0xff.
    let done = run_exec(
        &server,
        &["--shell", r"printf '\000\001\177\200\377'"],
        Input::Null,
    );
    assert_eq!(done.stdout, [0x00, 0x01, 0x7f, 0x80, 0xff]);
}

#[test]
fn ten_mib_through_cat_come_back_intact() {
    let server = Server::start_exec(&[]);
    let bytes = seeded_bytes(0x5eed, 10 << 20);
    let done = run_exec(&server, &["--", "cat"], Input::Bytes(bytes.clone()));
    assert_eq!(done.status.code(), Some(0), "{}", done.describe());
    assert_eq!(done.stdout.len(), bytes.len(), "length");
    assert!(done.stdout == bytes, "10 MiB through cat differ");
    assert_eq!(done.stderr, "");

    // And stdin alone: every byte arrived, then EOF.
    let done = run_exec(&server, &["--", "wc", "-c"], Input::Bytes(bytes));
    assert_eq!(done.stdout_text().trim(), (10 << 20).to_string());
}

#[test]
fn shell_runs_a_string_and_argv_is_taken_literally() {
    let server = Server::start_exec(&[]);
    let done = run_exec(
        &server,
        &["--shell", "echo $((6 * 7)) | tr 4 x"],
        Input::Null,
    );
    assert_eq!(done.status.code(), Some(0), "{}", done.describe());
    assert_eq!(done.stdout_text(), "x2\n");

    // Without --shell no shell sees the arguments, and options after PROG are PROG's.
    let done = run_exec(
        &server,
        &["--", "echo", "$HOME", "*", "--addr"],
        Input::Null,
    );
    assert_eq!(done.stdout_text(), "$HOME * --addr\n");
}

#[test]
fn no_stdin_leaves_local_stdin_unread_and_cwd_is_under_the_root() {
    let server = Server::start_exec(&[]);
    let scratch = Scratch::new("cli-stdin");
    let path = scratch.path().join("input");
    std::fs::write(&path, b"local stdin\n").expect("write input");
    let file = File::open(&path).expect("open input");

    // The client gets a descriptor sharing our file's offset: had it read, the offset moved.
    let shared = file.try_clone().expect("dup");
    let done = run_exec(&server, &["-n", "--", "cat"], Input::File(shared));
    assert_eq!(done.status.code(), Some(0), "{}", done.describe());
    assert_eq!(done.stdout, b"", "the command's stdin is /dev/null");
    let mut offset_probe = file.try_clone().expect("dup");
    assert_eq!(
        offset_probe.stream_position().expect("tell"),
        0,
        "-n read stdin"
    );

    let done = run_exec(&server, &["--", "cat"], Input::File(file));
    assert_eq!(
        done.stdout, b"local stdin\n",
        "without -n stdin is forwarded"
    );

    std::fs::create_dir(server.root().join("sub")).expect("mkdir");
    let done = run_exec(&server, &["--cwd", "sub", "--", "pwd"], Input::Null);
    assert_eq!(done.status.code(), Some(0), "{}", done.describe());
    assert!(
        done.stdout_text().ends_with("/sub\n"),
        "{}",
        done.stdout_text()
    );
}

#[test]
fn time_limit_is_the_commands_limit_and_says_so() {
    let server = Server::start_exec(&[]);
    let started = Instant::now();
    let done = run_exec(
        &server,
        &["--time-limit", "0.5", "--", "sleep", "10"],
        Input::Null,
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let line = done.one_line_failure(128 + 15);
    assert!(line.contains("time limit"), "{line}");

    // A limit is not a deadline for a silent command that stays within it.
    let done = run_exec(
        &server,
        &["--time-limit", "5", "--shell", "sleep 1.5; echo late"],
        Input::Null,
    );
    assert_eq!(done.status.code(), Some(0), "{}", done.describe());
    assert_eq!(done.stdout_text(), "late\n");
}

// === Unix habits ===

/// Whether a client ended as a filter should when its reader left: killed by SIGPIPE, or
/// exit status 141, and nothing on stderr.
#[track_caller]
fn assert_quiet_pipe_end(done: &Finished, what: &str) {
    let by_sigpipe = done.status.signal() == Some(libc::SIGPIPE) || done.status.code() == Some(141);
    assert!(by_sigpipe, "{what}: {}", done.describe());
    assert_eq!(done.stderr, "", "{what}: no panic, no message");
}

#[test]
fn a_closed_stdout_ends_every_client_quietly() {
    let server = Server::start_exec(&[]);

    // `exec -- yes | head -1`
    let args = exec_args(&server, &["--", "yes"]);
    let mut client = spawn_reading(&as_strs(&args), Input::Null);
    let mut stdout = client.take_stdout();
    let mut first = [0; 2];
    stdout.read_exact(&mut first).expect("first line");
    assert_eq!(&first, b"y\n");
    drop(stdout);
    let done = client.finish_within(PROMPTLY);
    assert_quiet_pipe_end(&done, "exec -- yes | head -1");
    assert!(
        server.wait_no_children(PROMPTLY),
        "`yes` outlived its client: {:?}",
        server.children()
    );

    // `exec -- yes | head -0`: the reader is gone before the first byte.
    let mut client = spawn_reading(&as_strs(&args), Input::Null);
    drop(client.take_stdout());
    assert_quiet_pipe_end(&client.finish_within(PROMPTLY), "exec -- yes | head -0");

    // `echo hi | head -0` and `bench ... | head -0`.
    let addr = server.framed_str();
    let mut client = spawn_reading(&["echo", "--addr", &addr, "hi"], Input::Null);
    drop(client.take_stdout());
    assert_quiet_pipe_end(&client.finish(), "echo | head -0");

    let bench = [
        "bench", "echo", "--addr", &addr, "-c", "1", "-d", "0.2", "--warmup", "0.05",
    ];
    let mut client = spawn_reading(&bench, Input::Null);
    drop(client.take_stdout());
    assert_quiet_pipe_end(&client.finish(), "bench | head -0");
}

/// `/dev/full`, opened for writing: every write to it fails with ENOSPC.
fn dev_full() -> File {
    File::options()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full")
}

#[test]
fn a_full_stdout_is_one_line_and_255_for_every_client() {
    let server = Server::start_exec(&[]);
    let addr = server.framed_str();
    let exec = exec_args(&server, &["--", "echo", "hi"]);
    let runs: [(&str, Vec<&str>); 7] = [
        ("--help", vec!["get", "--help"]),
        ("--version", vec!["--version"]),
        ("echo", vec!["echo", "--addr", &addr, "hi"]),
        ("exec", as_strs(&exec)),
        (
            "bench echo",
            vec![
                "bench", "echo", "--addr", &addr, "-c", "1", "-d", "0.2", "--warmup", "0.05",
            ],
        ),
        (
            "bench echo --json",
            vec![
                "bench", "echo", "--addr", &addr, "-c", "1", "-d", "0.2", "--json",
            ],
        ),
        (
            "bench probe",
            vec!["bench", "probe", "--addr", &addr, "-d", "0.2"],
        ),
    ];
    for (what, args) in runs {
        let done = spawn_with(&args, Input::Null, |cmd| {
            cmd.stdout(dev_full());
        })
        .finish();
        let line = done.one_line_failure(255);
        assert!(
            line.contains("No space left on device"),
            "{what} >/dev/full: {line}"
        );
    }
}

#[test]
fn localhost_port_is_an_address_for_every_client() {
    let server = Server::start_exec(&[]);
    let port = server.framed().port();
    let addr = format!("localhost:{port}");
    let token = token_file(&server);

    let done = run(
        &[
            "exec",
            "--addr",
            &addr,
            "--token-file",
            &token,
            "--",
            "echo",
            "ok",
        ],
        Input::Null,
    );
    assert_eq!(done.stdout_text(), "ok\n", "{}", done.describe());

    let done = run(&["echo", "--addr", &addr, "hello", "there"], Input::Null);
    assert_eq!(done.stdout_text(), "hello there\n", "{}", done.describe());

    let done = run(
        &[
            "bench", "echo", "--addr", &addr, "-c", "1", "-d", "0.2", "--warmup", "0.05",
        ],
        Input::Null,
    );
    assert_eq!(done.status.code(), Some(0), "{}", done.describe());
    assert!(
        done.stdout_text().contains("req/s"),
        "{}",
        done.stdout_text()
    );

    // No port: the default one, as nc and ssh (whatever answers there, -v says where).
    let done = run(
        &["-v", "exec", "--addr", "localhost", "--", "true"],
        Input::Null,
    );
    assert!(
        done.stderr.contains("connecting to localhost:7878"),
        "{}",
        done.describe()
    );
}

#[test]
fn the_wrong_port_or_protocol_gets_a_hint() {
    let server = Server::start_exec(&[]);
    let raw = server.echo_tcp().to_string();
    let token = token_file(&server);

    // The raw echo port sends our HELLO back.
    let done = run(
        &["exec", "--addr", &raw, "--token-file", &token, "--", "true"],
        Input::Null,
    );
    let line = done.one_line_failure(255);
    assert!(
        line.contains(&format!("{raw} answered with our own HELLO"))
            && line.contains("raw echo port")
            && line.contains("7878"),
        "{line}"
    );
    let done = run(&["echo", "--addr", &raw, "hi"], Input::Null);
    assert!(done.one_line_failure(255).contains("our own HELLO"));
    let done = run(&["bench", "echo", "--addr", &raw, "-d", "0.2"], Input::Null);
    assert!(done.one_line_failure(255).contains("our own HELLO"));

    // Raw bench pointed at the framed port.
    let framed = server.framed_str();
    let done = run(
        &["bench", "echo", "--raw", "--addr", &framed, "-d", "0.2"],
        Input::Null,
    );
    let line = done.one_line_failure(255);
    assert!(line.contains("speaks the framed protocol"), "{line}");

    // A web server.
    let (http, web) = fake_server(
        Some(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
        Duration::from_secs(3),
    );
    let http = http.to_string();
    let done = run(&["echo", "--addr", &http, "hi"], Input::Null);
    let line = done.one_line_failure(255);
    assert!(
        line.contains("answered in HTTP") && line.contains("400 Bad Request"),
        "{line}"
    );
    web.join().expect("fake web server");

    // A server that says nothing: the handshake's own timeout, then the hint.
    let (silent, quiet) = fake_server(None, Duration::from_secs(5));
    let silent = silent.to_string();
    let started = Instant::now();
    let done = run(
        &["echo", "--addr", &silent, "--timeout", "0.5", "hi"],
        Input::Null,
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    let line = done.one_line_failure(255);
    assert!(line.contains("did not answer HELLO within 0.5s"), "{line}");
    quiet.join().expect("fake silent server");
}

// === Signals ===

#[test]
fn sigint_is_forwarded_and_the_remote_death_is_130() {
    let server = Server::start_exec(&[]);
    let args = exec_args(&server, &["--shell", "echo ready; exec sleep 30"]);
    let mut client = spawn_reading(&as_strs(&args), Input::Null);
    let lines = lines_of(client.take_stdout());
    // The line comes after STARTED, by when the client forwards signals.
    expect_line(&lines, "ready");
    client.signal(libc::SIGINT);
    let started = Instant::now();
    let done = client.finish_within(PROMPTLY);
    assert_eq!(done.status.code(), Some(130), "{}", done.describe());
    assert!(started.elapsed() < PROMPTLY);
    assert_eq!(done.stderr, "", "the user asked for it: nothing to report");
    assert!(server.wait_no_children(PROMPTLY), "{:?}", server.children());

    // SIGTERM likewise.
    let mut client = spawn_reading(&as_strs(&args), Input::Null);
    let lines = lines_of(client.take_stdout());
    expect_line(&lines, "ready");
    client.signal(libc::SIGTERM);
    let done = client.finish_within(PROMPTLY);
    assert_eq!(done.status.code(), Some(143), "{}", done.describe());
}

#[test]
fn a_second_sigint_gives_up_and_the_command_is_stopped() {
    let server = Server::start_exec(&[]);
    let script = "trap 'echo trapped' INT; echo ready; while :; do sleep 0.1; done";
    let args = exec_args(&server, &["--shell", script]);
    let mut client = spawn_reading(&as_strs(&args), Input::Null);
    let lines = lines_of(client.take_stdout());
    expect_line(&lines, "ready");
    client.signal(libc::SIGINT);
    expect_line(&lines, "trapped");
    client.signal(libc::SIGINT);
    let done = client.finish_within(PROMPTLY);
    let line = done.one_line_failure(130);
    assert!(line.contains("gave up"), "{line}");
    assert!(
        server.wait_no_children(Duration::from_secs(10)),
        "the command outlived the client that gave up: {:?}",
        server.children()
    );
}

// === The library underneath ===

/// Runs `f` on a thread and waits at most `LIMIT` for it.
#[track_caller]
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LIMIT)
        .unwrap_or_else(|error| panic!("no result within {LIMIT:?}: {error}"))
}

#[test]
fn the_library_client_streams_bytes_and_sends_signals() {
    let server = Server::start_exec(&[]);
    let addr = server.framed_str();
    let token = Token::new(TEST_TOKEN.to_vec()).expect("token");
    let bytes = seeded_bytes(7, 3 << 20);

    let (addr2, token2, sent) = (addr.clone(), token.clone(), bytes.clone());
    let (exit, out, err) = bounded(move || {
        let client =
            ExecClient::connect(&addr2, Some(&token2), Duration::from_secs(5)).expect("connect");
        let running = client.start(&RemoteCommand::new(["cat"])).expect("start");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let exit = running
            .finish(Some(std::io::Cursor::new(sent)), &mut out, &mut err)
            .expect("finish");
        (exit, out, err)
    });
    assert_eq!(exit.termination, Termination::Exited(0));
    assert!(out == bytes && err.is_empty(), "{} bytes back", out.len());

    let (addr2, token2) = (addr.clone(), token.clone());
    let exit = bounded(move || {
        let client =
            ExecClient::connect(&addr2, Some(&token2), Duration::from_secs(5)).expect("connect");
        let mut command = RemoteCommand::new(["sleep", "30"]);
        command.stdin = false;
        let running = client.start(&command).expect("start");
        let signaller = running.signaller();
        signaller.send(Signal::Term).expect("SIGNAL");
        running
            .finish(None::<std::io::Empty>, &mut Vec::new(), &mut Vec::new())
            .expect("finish")
    });
    assert_eq!(exit.shell_code(), 143);
    assert_eq!(exit.reason, EndReason::ClientSignal);

    // Giving up: finish returns at once, and the server stops the command.
    let result = bounded(move || {
        let client =
            ExecClient::connect(&addr, Some(&token), Duration::from_secs(5)).expect("connect");
        let running = client
            .start(&RemoteCommand::new(["sleep", "30"]))
            .expect("start");
        let signaller = running.signaller();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(200));
            signaller.abandon();
        });
        running
            .finish(None::<std::io::Empty>, &mut Vec::new(), &mut Vec::new())
            .map(|exit| exit.to_string())
            .map_err(|error| error.to_string())
    });
    assert!(result.is_err(), "{result:?}");
    assert!(server.wait_no_children(PROMPTLY), "{:?}", server.children());
}
