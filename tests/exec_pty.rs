//! `exec -t`: commands on a pseudo-terminal.
//!
//! - The connection, driven through the test kit with a scripted terminal: an EXEC with PTY
//!   fields starts a command with them (the server's shell when no argv is given), STDIN has
//!   its window, output comes as STDOUT only, RESIZE reaches the terminal, a bad RESIZE is
//!   fatal, STDIN_EOF is one `^D`.
//! - The real thing: the CLI run on a pseudo-terminal of the test's own (the test plays the
//!   user's terminal emulator), against a real `serve --exec`: a prompt, `stty size`, a
//!   resize seen by the remote side, `^C` that interrupts the remote job and not the session,
//!   the exit status, and the local terminal's settings (`stty -g`) identical before and
//!   after, also after the connection is lost, a SIGTERM, `~.`, and a panic (a debug-build
//!   test hook), whose report is printed on the restored terminal.

mod support;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use monoreactor::children::{ChildSource, OutputPipe};
use monoreactor::client::OwnedFrame;
use monoreactor::proto::exec::{
    ExecFlags, ExecRequest, PtyRequest, Resize, Started, Termination, Window,
};
use monoreactor::proto::{ErrorCode, ErrorMessage, Flags, Frame, FrameType, Hello};
use monoreactor::testkit::{ConnHarness, MemoryIo, ScriptedPty};
use monoreactor::{Limits, Verdict};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use support::{Server, wait_child};

// === The connection, with a scripted terminal ===

const TOKEN: &[u8] = b"0123456789abcdef-token";

fn authenticated(limits: Limits) -> (ConnHarness, MemoryIo) {
    let mut h = ConnHarness::framed(limits).with_exec(TOKEN);
    let mut io = MemoryIo::new();
    let mut hello = Vec::new();
    Hello::with_credentials(TOKEN).encode(&mut hello);
    io.push(&hello);
    assert_eq!(h.event(&mut io, true, true), Verdict::Wait);
    io.take_frames();
    (h, io)
}

fn pty_exec(stream: u32, argv: Vec<&[u8]>, rows: u16, cols: u16, term: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    ExecRequest {
        pty: Some(PtyRequest { rows, cols, term }),
        ..ExecRequest::new(argv)
    }
    .encode(stream, &mut wire);
    wire
}

fn resize(stream: u32, rows: u16, cols: u16) -> Vec<u8> {
    let mut wire = Vec::new();
    Resize { rows, cols }.encode(stream, &mut wire);
    wire
}

fn kinds(frames: &[OwnedFrame]) -> Vec<FrameType> {
    frames.iter().map(|frame| frame.header.frame_type).collect()
}

#[test]
fn a_pty_exec_without_argv_runs_the_servers_shell_on_the_terminal_asked_for() {
    let limits = Limits {
        exec_shell: "bash".to_string(),
        ..Limits::default()
    };
    let window = limits.stdin_window;
    let (mut h, mut io) = authenticated(limits);
    io.push(&pty_exec(1, vec![], 33, 101, "screen-256color"));
    h.event(&mut io, true, false);
    let frames = io.take_frames();
    assert_eq!(kinds(&frames), [FrameType::Started]);
    let started = Started::parse(&frames[0].payload).unwrap();
    assert_eq!(
        started.stdin_window, window,
        "a terminal always takes stdin, STDIN flag or not"
    );
    let child = h.children().nth(0);
    assert_eq!(child.argv, [b"bash".to_vec()]);
    assert_eq!(
        child.pty,
        Some(ScriptedPty {
            rows: 33,
            cols: 101,
            term: "screen-256color".to_string()
        })
    );
    assert!(child.has_stdin);
}

#[test]
fn on_a_pty_output_is_stdout_only_resize_reaches_the_terminal_and_eof_is_one_ctrl_d() {
    let (mut h, mut io) = authenticated(Limits::default());
    io.push(&pty_exec(1, vec![b"sh"], 24, 80, "vt100"));
    h.event(&mut io, true, false);
    io.take_frames();
    let index = h.children().nth(0).index;

    io.push(&Frame::new(FrameType::Stdin, Flags::NONE, 1, b"ls\r").to_vec());
    io.push(&resize(1, 50, 132));
    io.push(&resize(1, 51, 133));
    io.push(&Frame::new(FrameType::StdinEof, Flags::NONE, 1, b"").to_vec());
    h.event(&mut io, true, false);
    h.child_event(&mut io, index, ChildSource::Stdin);
    let child = h.children().nth(0);
    assert_eq!(child.stdin(), b"ls\r\x04", "the bytes, then one ^D");
    assert!(!child.stdin_closed, "the terminal stays open");
    assert_eq!(
        child.resizes.last(),
        Some(&Resize {
            rows: 51,
            cols: 133
        }),
        "the latest size wins"
    );

    h.children()
        .nth(0)
        .write(OutputPipe::Stdout, b"$ ls\r\nfile\r\n")
        .close(OutputPipe::Stdout)
        .exit(Termination::Exited(3));
    h.child_event(&mut io, index, ChildSource::Stdout);
    h.child_event(&mut io, index, ChildSource::Exit);
    let frames = io.take_frames();
    let types = kinds(&frames);
    assert!(!types.contains(&FrameType::Stderr), "{types:?}");
    assert_eq!(types.last(), Some(&FrameType::Exit), "{types:?}");
    let output: Vec<u8> = frames
        .iter()
        .filter(|frame| frame.header.frame_type == FrameType::Stdout)
        .flat_map(|frame| frame.payload.clone())
        .collect();
    assert_eq!(output, b"$ ls\r\nfile\r\n");
    let credit: u32 = frames
        .iter()
        .filter(|frame| frame.header.frame_type == FrameType::Window)
        .map(|frame| Window::parse(&frame.payload).unwrap().increment)
        .sum();
    assert!(
        credit <= 3,
        "never credit for the ^D the client did not send"
    );
}

#[test]
fn a_resize_of_a_bad_size_is_fatal_and_one_for_a_command_without_a_terminal_is_ignored() {
    let (mut h, mut io) = authenticated(Limits::default());
    let mut wire = Vec::new();
    ExecRequest {
        flags: ExecFlags::STDIN,
        ..ExecRequest::new(vec![b"cat"])
    }
    .encode(1, &mut wire);
    io.push(&wire);
    io.push(&resize(1, 10, 10));
    h.event(&mut io, true, false);
    assert_eq!(kinds(&io.take_frames()), [FrameType::Started]);
    assert!(h.children().nth(0).resizes.is_empty());

    io.push(&Frame::new(FrameType::Resize, Flags::NONE, 1, &[0, 0, 0, 80]).to_vec());
    h.event(&mut io, true, false);
    let frames = io.take_frames();
    let error = frames
        .iter()
        .find(|frame| frame.header.frame_type == FrameType::Error)
        .expect("an ERROR");
    let message = ErrorMessage::parse(&error.payload).unwrap();
    assert_eq!(
        (error.header.stream, message.code),
        (0, ErrorCode::BadRequest)
    );
    assert!(
        message.text.contains("terminal size 0x80"),
        "{}",
        message.text
    );
}

#[test]
fn a_pty_exec_with_a_bad_term_or_size_is_refused_on_its_stream_and_nothing_runs() {
    let (mut h, mut io) = authenticated(Limits::default());
    io.push(&pty_exec(1, vec![b"sh"], 24, 80, "xterm;reboot"));
    io.push(&pty_exec(3, vec![b"sh"], 0, 80, "xterm"));
    h.event(&mut io, true, false);
    let frames = io.take_frames();
    let refusals: Vec<(u32, ErrorCode)> = frames
        .iter()
        .map(|frame| {
            let message = ErrorMessage::parse(&frame.payload).unwrap();
            (frame.header.stream, message.code)
        })
        .collect();
    assert_eq!(
        refusals,
        [(1, ErrorCode::BadRequest), (3, ErrorCode::BadRequest)]
    );
    assert!(h.children().all().is_empty());
}

// === The real thing: the CLI on a terminal of ours ===

/// Bounds every wait for the remote side.
const WAIT: Duration = Duration::from_secs(15);

/// A pseudo-terminal the test owns, with `monoreactor exec` running on its slave as a
/// session leader (as a shell in a terminal emulator would start it): the test writes what
/// the user types to the master and reads what the terminal shows.
struct Terminal {
    master: File,
    /// Kept open: `stty -g` reads the settings through it, and the master never reads EIO
    /// under the reader thread.
    slave: OwnedFd,
    shown: Arc<Mutex<Vec<u8>>>,
    child: Child,
}

impl Terminal {
    fn open(rows: u16, cols: u16) -> (File, OwnedFd) {
        let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
        let master = rustix::pty::openpt(flags).expect("openpt");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let slave = rustix::pty::ioctl_tiocgptpeer(&master, flags).expect("the slave");
        set_size(&master, rows, cols);
        (File::from(master), slave)
    }

    /// `monoreactor ARGS` on a new terminal of `rows` x `cols`; `settings` is `stty -g` of the
    /// terminal before it started.
    fn run(args: &[&str], rows: u16, cols: u16) -> (Terminal, String) {
        let (master, slave) = Terminal::open(rows, cols);
        let settings = stty_g(&slave);
        let mut command = Command::new(env!("CARGO_BIN_EXE_monoreactor"));
        command
            .args(args)
            .env_remove("MONOREACTOR_TOKEN")
            .env("TERM", "xterm")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()));
        // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe and take no pointers.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn monoreactor exec -t");
        let shown = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&shown);
        thread::spawn(move || {
            let mut buf = [0; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        (
            Terminal {
                master,
                slave,
                shown,
                child,
            },
            settings,
        )
    }

    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.shown.lock().unwrap()).into_owned()
    }

    /// Waits until the terminal shows `needle` past byte `from`; returns where it ends.
    #[track_caller]
    fn expect(&self, needle: &str, from: usize, timeout: Duration) -> usize {
        self.try_expect(needle, from, timeout).unwrap_or_else(|| {
            panic!(
                "the terminal did not show {needle:?} within {timeout:?}; it shows:\n{}",
                self.shown()
            )
        })
    }

    fn try_expect(&self, needle: &str, from: usize, timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let shown = self.shown.lock().unwrap();
                let tail = &shown[from.min(shown.len())..];
                if let Some(at) = tail
                    .windows(needle.len())
                    .position(|window| window == needle.as_bytes())
                {
                    return Some(from + at + needle.len());
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn type_in(&mut self, bytes: &[u8]) {
        self.master.write_all(bytes).expect("write to the terminal");
    }

    /// Waits for the shell's prompt ($ or #) past `from`.
    fn expect_prompt(&self, from: usize) -> usize {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            for prompt in ["$ ", "# "] {
                if let Some(end) = self.try_expect(prompt, from, Duration::from_millis(50)) {
                    return end;
                }
            }
        }
        panic!("no prompt; the terminal shows:\n{}", self.shown());
    }

    #[track_caller]
    fn wait_exit(&mut self) -> i32 {
        let status = wait_child(&mut self.child, WAIT).unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("exec -t did not end; the terminal shows:\n{}", self.shown())
        });
        status
            .code()
            .unwrap_or_else(|| panic!("killed: {status:?}"))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn set_size(master: impl AsFd, rows: u16, cols: u16) {
    let size = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, size).expect("TIOCSWINSZ");
}

/// `stty -g` of the terminal `slave` is: every setting, as one line.
fn stty_g(slave: &OwnedFd) -> String {
    let out = Command::new("stty")
        .arg("-g")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .output()
        .expect("run stty");
    assert!(out.status.success(), "stty -g: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn exec_t_args(server: &Server, extra: &[&str]) -> Vec<String> {
    let token = server.scratch().join("token");
    let mut args = vec![
        "exec".to_string(),
        "--addr".to_string(),
        server.framed_str(),
        "--token-file".to_string(),
        token.to_str().unwrap().to_string(),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args
}

fn run_exec_t(server: &Server, extra: &[&str], rows: u16, cols: u16) -> (Terminal, String) {
    let args = exec_t_args(server, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Terminal::run(&args, rows, cols)
}

#[test]
fn a_shell_on_a_terminal_sizes_resizes_interrupts_and_exits_with_its_status() {
    let server = Server::start_exec(&["--log-level", "warn,monoreactor::access=info"]);
    let (mut tty, settings) = run_exec_t(&server, &["-t"], 30, 100);
    let at = tty.expect_prompt(0);

    // The size sent at the start.
    tty.type_in(b"stty size\r");
    let at = tty.expect("30 100", at, WAIT);

    // A resize here reaches the remote terminal, and its foreground job gets SIGWINCH: a
    // job that waits for it, then prints the size it sees.
    tty.type_in(
        b"sh -c \"trap 'echo WINCH \\$(stty size); exit' WINCH; while :; do sleep 0.1; done\"\r",
    );
    let at = tty.expect("done\"", at, WAIT);
    thread::sleep(Duration::from_millis(300));
    set_size(&tty.master, 40, 120);
    let at = tty.expect("WINCH 40 120", at, WAIT);

    // ^C interrupts the remote foreground job, not the session.
    tty.type_in(b"sleep 4711\r");
    let at = tty.expect("sleep 4711", at, WAIT);
    let running = support::retry(WAIT, || {
        (!processes_with("sleep 4711").is_empty()).then_some(())
    });
    assert!(running.is_some(), "the job runs");
    tty.type_in(b"\x03");
    tty.type_in(b"echo AFTER$((2+3))\r");
    let at = tty.expect("AFTER5", at, WAIT);
    assert_eq!(processes_with("sleep 4711"), Vec::<String>::new());

    tty.type_in(b"exit 3\r");
    let _ = at;
    assert_eq!(tty.wait_exit(), 3, "{}", tty.shown());
    assert_eq!(stty_g(&tty.slave), settings, "the terminal is as it was");
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
    let logged = support::retry(WAIT, || {
        server
            .stderr_text()
            .contains("\"EXEC -t\" exit=3")
            .then_some(())
    });
    assert!(logged.is_some(), "access line: {}", server.stderr_text());
}

#[test]
fn the_terminal_is_restored_when_the_connection_is_lost() {
    let mut server = Server::start_exec(&[]);
    let (mut tty, settings) = run_exec_t(&server, &["-t"], 24, 80);
    tty.expect_prompt(0);
    assert_ne!(stty_g(&tty.slave), settings, "raw while the session runs");
    server.signal(libc::SIGKILL);
    let _ = server.wait_exit(WAIT);
    assert_eq!(tty.wait_exit(), 255, "{}", tty.shown());
    assert_eq!(stty_g(&tty.slave), settings);
}

#[test]
fn the_terminal_is_restored_after_a_sigterm_and_the_server_stops_the_shell() {
    let server = Server::start_exec(&[]);
    let (mut tty, settings) = run_exec_t(&server, &["-t"], 24, 80);
    tty.expect_prompt(0);
    assert!(!server.children().is_empty());
    // SAFETY: kill on the pid of a child of ours that has not been waited for.
    unsafe { libc::kill(tty.child.id() as i32, libc::SIGTERM) };
    assert_eq!(tty.wait_exit(), 255, "{}", tty.shown());
    assert_eq!(stty_g(&tty.slave), settings);
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
}

#[test]
fn tilde_dot_after_a_newline_closes_a_session_and_mid_line_it_is_typed() {
    let server = Server::start_exec(&[]);
    let (mut tty, settings) = run_exec_t(&server, &["-t"], 24, 80);
    let at = tty.expect_prompt(0);
    // Mid-line, ~. is text; ~~ after a newline is one ~.
    tty.type_in(b"echo a~.b\r");
    let at = tty.expect("a~.b\r\n", at, WAIT);
    tty.type_in(b"~~/x\r");
    let at = tty.expect("~/x", at, WAIT);
    // A job that ignores everything: only the escape gets us out.
    tty.type_in(b"trap '' INT; sleep 100\r");
    tty.expect("sleep 100", at, WAIT);
    tty.type_in(b"\r~.");
    assert_eq!(tty.wait_exit(), 255, "{}", tty.shown());
    // The client's last line may still be on its way through the terminal to our reader.
    tty.expect("(~.)", 0, WAIT);
    assert_eq!(stty_g(&tty.slave), settings);
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
}

#[test]
fn exec_t_without_a_terminal_is_refused_and_tt_forces_one() {
    let server = Server::start_exec(&[]);
    let args = exec_t_args(&server, &["-t"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = support::run_cli(&args, WAIT);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.stderr);
    assert!(refused.stderr.contains("-tt"), "{}", refused.stderr);

    let script = "tty >/dev/null && echo on-a-tty; read line; echo got $line; exit 4";
    let args = exec_t_args(&server, &["-tt", "--", "sh", "-c", script]);
    let mut forced = Command::new(env!("CARGO_BIN_EXE_monoreactor"))
        .args(&args)
        .env_remove("MONOREACTOR_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    forced.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let status = wait_child(&mut forced, WAIT).expect("exec -tt ends");
    let mut stdout = String::new();
    forced
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert_eq!(status.code(), Some(4), "{stdout}");
    assert!(stdout.contains("on-a-tty"), "{stdout}");
    assert!(stdout.contains("got hello"), "{stdout}");
    assert!(
        !stdout.contains('\n') || stdout.contains("\r\n"),
        "a terminal's CR LF"
    );

    // The end of the piped input is one ^D: the shell at its prompt reads end of file.
    let token = String::from_utf8(support::exec::TEST_TOKEN.to_vec()).unwrap();
    let (status, stdout, stderr) = exec_tt(&server, &token, &[], b"echo hi $((6*7))\n");
    assert_eq!(status, 0, "{stdout}{stderr}");
    assert!(stdout.contains("hi 42\r\n"), "{stdout}");

    // No program and no -t: nothing to run.
    let args = exec_t_args(&server, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nothing = support::run_cli(&args, WAIT);
    assert_eq!(nothing.status.code(), Some(2), "{nothing:?}");
    assert_eq!(nothing.stderr.lines().count(), 1, "{}", nothing.stderr);
}

/// `exec -tt` with `input` piped in, as the credential `token`; (status, stdout, stderr).
fn exec_tt(server: &Server, token: &str, argv: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut args = vec!["exec", "--addr"];
    let addr = server.framed_str();
    args.push(&addr);
    args.push("-tt");
    if !argv.is_empty() {
        args.push("--");
        args.extend_from_slice(argv);
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_monoreactor"))
        .args(&args)
        .env("MONOREACTOR_TOKEN", token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Then the end of input, which the server turns into one ^D.
    child.stdin.take().unwrap().write_all(input).unwrap();
    let status = wait_child(&mut child, WAIT).expect("exec -tt ends");
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.code().unwrap_or(-1), stdout, stderr)
}

#[test]
fn the_default_shell_is_held_to_the_credentials_allowlist_like_any_argv() {
    let dir = support::TempDir::new("pty-access");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("home")).unwrap();
    let file = dir.path().join("access.toml");
    let add = |name: &str, allow: &str| {
        let file = file.to_str().unwrap();
        let done = support::run_cli(
            &[
                "access", "add", "--file", file, "--name", name, "--root", "home", "--allow", allow,
            ],
            WAIT,
        );
        assert!(done.status.success(), "{}", done.stderr);
        done.stdout.trim().to_string()
    };
    let echo_only = add("echo-only", "echo");
    let shell_user = add("shell-user", "sh");
    let server = Server::start(&[
        "--access",
        file.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);

    let (status, stdout, stderr) = exec_tt(&server, &echo_only, &[], b"echo hi; exit 5\n");
    assert_eq!(status, 255, "{stdout}{stderr}");
    assert!(stderr.contains("may not run this command"), "{stderr}");

    let (status, stdout, stderr) = exec_tt(&server, &shell_user, &[], b"pwd; exit 5\n");
    assert_eq!(status, 5, "{stdout}{stderr}");
    assert!(
        stdout.contains("/home\r\n"),
        "in the credential's root: {stdout}"
    );
}

/// The command lines of every process on the machine that contain `marker`.
fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn the_time_limit_stops_the_shells_foreground_job_even_one_that_ignores_sighup() {
    // An interactive shell puts its job in a process group of its own; one that ignores
    // SIGHUP outlives the shell's death. The server's TERM must reach it all the same.
    let server = Server::start_exec(&["--exec-timeout", "2"]);
    let (mut tty, settings) = run_exec_t(&server, &["-t"], 24, 80);
    let at = tty.expect_prompt(0);
    tty.type_in(b"sh -c \"trap '' HUP; sleep 9797; echo survived\"\r");
    tty.expect("survived\"", at, WAIT);
    let status = tty.wait_exit();
    assert!(
        status == 143 || status == 137,
        "killed at the time limit: {status}; {}",
        tty.shown()
    );
    // The client's last line may still be on its way through the terminal to our reader.
    tty.expect("time limit", 0, WAIT);
    assert_eq!(stty_g(&tty.slave), settings);
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
    let deadline = Instant::now() + WAIT;
    while !processes_with("sleep 9797").is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        processes_with("sleep 9797"),
        Vec::<String>::new(),
        "nothing left"
    );
}

/// The pids of every process on the machine whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(marker)
            {
                found.push(pid);
            }
        }
    }
    found
}

/// Waits until no process's command line contains `marker`; false if one still does.
fn wait_none_with(marker: &str) -> bool {
    support::retry(WAIT, || pids_with(marker).is_empty().then_some(())).is_some()
}

#[test]
fn a_disconnect_kills_the_background_jobs_of_the_session_too() {
    // An interactive shell puts `job &` in a process group of its own, which is neither the
    // shell's group nor the terminal's foreground job: only a kill of the whole session (every
    // process whose session id is the shell's pid) reaches it.
    let server = Server::start_exec(&[]);
    let (mut tty, _) = run_exec_t(&server, &["-t"], 24, 80);
    let at = tty.expect_prompt(0);
    tty.type_in(b"sleep 5151 &\r");
    let at = tty.expect_prompt(at);
    let started = support::retry(WAIT, || (!pids_with("sleep 5151").is_empty()).then_some(()));
    assert!(started.is_some(), "the job runs: {}", tty.shown());
    tty.type_in(b"\r~.");
    let _ = at;
    assert_eq!(tty.wait_exit(), 255, "{}", tty.shown());
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
    let left = wait_none_with("sleep 5151");
    for pid in pids_with("sleep 5151") {
        // SAFETY: kill on a pid this test's session started; it is still there (just listed).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(left, "the background job outlived the session");
}

#[test]
fn a_shell_that_exits_takes_its_background_jobs_with_it() {
    let server = Server::start_exec(&[]);
    let token = String::from_utf8(support::exec::TEST_TOKEN.to_vec()).unwrap();
    let (status, stdout, stderr) = exec_tt(
        &server,
        &token,
        &[],
        b"sleep 5252 &\necho JOB=$! | tr = :\nexit 6\n",
    );
    assert_eq!(status, 6, "{stdout}{stderr}");
    assert!(stdout.contains("JOB:"), "the job started: {stdout}");
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
    let left = wait_none_with("sleep 5252");
    for pid in pids_with("sleep 5252") {
        // SAFETY: kill on a pid this test's session started; it is still there (just listed).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(left, "the background job outlived the session");
}

#[test]
fn a_second_session_inherits_no_descriptor_of_the_first() {
    // Every descriptor of the first session (its PTY master, the server's sockets) is
    // close-on-exec; the second shell has its terminal on 0, 1, 2 and nothing else of ours.
    let server = Server::start_exec(&[]);
    let (mut first, _) = run_exec_t(&server, &["-t"], 24, 80);
    first.expect_prompt(0);
    let (mut second, _) = run_exec_t(&server, &["-t"], 24, 80);
    let at = second.expect_prompt(0);
    // The shell lists its own descriptors (a subshell's would add ls's directory handle).
    // (EN''D: the echo of the typed line must not match what is waited for.)
    second.type_in(b"ls -l /proc/$$/fd | grep -c -- '->' ; echo EN''D\r");
    second.expect("END\r\n", at, WAIT);
    let shown = second.shown();
    let count: Vec<&str> = shown
        .lines()
        .filter(|line| line.trim().parse::<u32>().is_ok())
        .collect();
    assert!(
        count
            .last()
            .is_some_and(|line| line.trim().parse::<u32>().unwrap() <= 4),
        "the shell's descriptors: {shown}"
    );
    first.type_in(b"exit\r");
    second.type_in(b"exit\r");
    assert_eq!(first.wait_exit(), 0);
    assert_eq!(second.wait_exit(), 0);
}

#[test]
fn tilde_dot_gets_out_of_a_session_whose_server_hangs() {
    let server = Server::start_exec(&[]);
    let (mut tty, settings) = run_exec_t(&server, &["-t"], 24, 80);
    tty.expect_prompt(0);
    server.stop();
    tty.type_in(b"echo lost\r~.");
    let status = wait_child(&mut tty.child, WAIT);
    server.resume();
    let code = status.map(|status| status.code());
    assert_eq!(code, Some(Some(255)), "{}", tty.shown());
    assert_eq!(stty_g(&tty.slave), settings);
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
}

#[test]
fn every_byte_value_comes_through_a_raw_remote_terminal_unchanged() {
    let server = Server::start_exec(&[]);
    let token = String::from_utf8(support::exec::TEST_TOKEN.to_vec()).unwrap();
    let all: Vec<u8> = (0..=255).collect();
    let escapes: String = all.iter().map(|byte| format!("\\{byte:03o}")).collect();
    // Markers around the bytes, so what the terminal echoes before `stty raw` runs does
    // not count.
    let script = format!("stty raw -echo; printf '<<{escapes}>>'");
    let mut args = vec!["exec", "--addr"];
    let addr = server.framed_str();
    args.extend([addr.as_str(), "-tt", "--", "sh", "-c", script.as_str()]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_monoreactor"))
        .args(&args)
        .env("MONOREACTOR_TOKEN", &token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = Vec::new();
    let mut out = child.stdout.take().unwrap();
    let reader = thread::spawn(move || {
        let _ = out.read_to_end(&mut stdout);
        stdout
    });
    let status = wait_child(&mut child, WAIT).expect("exec -tt ends");
    drop(child.stdin.take());
    let stdout = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{stdout:?}");
    let mut expected = b"<<".to_vec();
    expected.extend_from_slice(&all);
    expected.extend_from_slice(b">>");
    assert!(
        stdout
            .windows(expected.len())
            .any(|window| window == expected),
        "the 256 byte values, in order and unchanged: {stdout:?}"
    );
}

#[test]
fn the_terminal_is_restored_after_a_sighup_or_a_sigint_from_outside() {
    let server = Server::start_exec(&[]);
    for signal in [libc::SIGHUP, libc::SIGINT] {
        let (mut tty, settings) = run_exec_t(&server, &["-t"], 24, 80);
        tty.expect_prompt(0);
        assert_ne!(stty_g(&tty.slave), settings, "raw while the session runs");
        // SAFETY: kill on the pid of a child of ours that has not been waited for.
        unsafe { libc::kill(tty.child.id() as i32, signal) };
        assert_eq!(tty.wait_exit(), 255, "signal {signal}: {}", tty.shown());
        assert_eq!(stty_g(&tty.slave), settings, "signal {signal}");
        assert!(server.wait_no_children(WAIT), "{:?}", server.children());
    }
}

#[test]
fn exec_tt_passes_a_signal_death_as_128_plus_n_and_takes_piped_tildes_literally() {
    let server = Server::start_exec(&[]);
    let token = String::from_utf8(support::exec::TEST_TOKEN.to_vec()).unwrap();
    let (status, stdout, stderr) = exec_tt(&server, &token, &["sh", "-c", "kill -9 $$"], b"");
    assert_eq!(status, 137, "{stdout}{stderr}");
    // No escape on a piped stdin (as ssh): `~.` after a newline is two bytes for the shell.
    let (status, stdout, stderr) = exec_tt(
        &server,
        &token,
        &[],
        b"echo a\n~.\necho b$((1+1))\nexit 9\n",
    );
    assert_eq!(status, 9, "{stdout}{stderr}");
    assert!(stdout.contains("b2\r\n"), "{stdout}");
}

#[test]
fn piped_input_without_a_final_newline_still_ends_the_shell() {
    // In canonical mode one ^D after a partial line only hands the line over; a second one,
    // at the start of the now empty line, is the end of file.
    let server = Server::start_exec(&["--exec-timeout", "8"]);
    let token = String::from_utf8(support::exec::TEST_TOKEN.to_vec()).unwrap();
    let started = Instant::now();
    let (status, stdout, stderr) = exec_tt(&server, &token, &[], b"echo hi$((2*3))");
    assert_eq!(status, 0, "{stdout}{stderr}");
    assert!(stdout.contains("hi6\r\n"), "{stdout}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "ended by the time limit: {stdout}"
    );
}

#[test]
fn a_paste_of_several_windows_reaches_a_raw_remote_program_whole() {
    // More than the stdin window (256 KiB), typed at once into the local terminal: the client
    // sends it as credit comes back, and nothing is lost or repeated on the way.
    const PASTE: usize = 1 << 20;
    let server = Server::start_exec(&[]);
    let (mut tty, settings) = run_exec_t(&server, &["-t"], 24, 80);
    let at = tty.expect_prompt(0);
    tty.type_in(format!("stty raw -echo; head -c {PASTE} | wc -c; stty sane\r").as_bytes());
    let at = tty.expect("sane", at, WAIT);
    thread::sleep(Duration::from_millis(300));
    // No newline and no `~` in it: a plain byte pattern, written from a thread (the local
    // terminal's input queue is small, the writer blocks until the client reads).
    let paste: Vec<u8> = (0..PASTE).map(|i| b'a' + (i % 26) as u8).collect();
    let mut writer = tty.master.try_clone().unwrap();
    let typing = thread::spawn(move || writer.write_all(&paste));
    let at = tty.expect(&format!("{PASTE}"), at, Duration::from_secs(60));
    typing.join().unwrap().unwrap();
    // Typed before `stty sane` ran, the line would sit in a raw terminal with no newline.
    let at = tty.expect_prompt(at);
    tty.type_in(b"exit 0\r");
    let _ = at;
    assert_eq!(tty.wait_exit(), 0, "{}", tty.shown());
    assert_eq!(stty_g(&tty.slave), settings);
}

#[test]
fn a_server_shutdown_ends_the_background_jobs_of_a_session_too() {
    let mut server = Server::start_exec(&[]);
    let (mut tty, settings) = run_exec_t(&server, &["-t"], 24, 80);
    let at = tty.expect_prompt(0);
    tty.type_in(b"sleep 5353 &\r");
    tty.expect_prompt(at);
    let started = support::retry(WAIT, || (!pids_with("sleep 5353").is_empty()).then_some(()));
    assert!(started.is_some(), "the job runs: {}", tty.shown());
    server.signal(libc::SIGTERM);
    let exited = server.wait_exit(WAIT);
    let status = tty.wait_exit();
    let left = wait_none_with("sleep 5353");
    for pid in pids_with("sleep 5353") {
        // SAFETY: kill on a pid this test's session started; it is still there (just listed).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(exited.is_some(), "the server did not stop");
    assert!(
        status == 143 || status == 137 || status == 255,
        "{status}: {}",
        tty.shown()
    );
    assert_eq!(stty_g(&tty.slave), settings);
    assert!(left, "the background job outlived the server");
}

#[test]
fn a_storm_of_resizes_leaves_the_session_working_at_the_last_size() {
    let server = Server::start_exec(&[]);
    let (mut tty, settings) = run_exec_t(&server, &["-t"], 24, 80);
    let at = tty.expect_prompt(0);
    let pid = tty.child.id() as i32;
    for i in 0..2000u16 {
        set_size(&tty.master, 20 + i % 50, 60 + i % 100);
        // SAFETY: kill on the pid of a child of ours that has not been waited for.
        unsafe { libc::kill(pid, libc::SIGWINCH) };
    }
    set_size(&tty.master, 33, 99);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGWINCH) };
    thread::sleep(Duration::from_millis(500));
    tty.type_in(b"stty size\r");
    let at = tty.expect("33 99", at, WAIT);
    tty.type_in(b"exit 4\r");
    let _ = at;
    assert_eq!(tty.wait_exit(), 4, "{}", tty.shown());
    assert_eq!(stty_g(&tty.slave), settings);
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
}

#[test]
fn tilde_dot_gets_out_of_a_hung_session_after_a_paste_larger_than_the_window() {
    let server = Server::start_exec(&[]);
    let (mut tty, settings) = run_exec_t(&server, &["-t"], 24, 80);
    tty.expect_prompt(0);
    server.stop();
    let mut typed: Vec<u8> = (0..(300 << 10)).map(|i| b'a' + (i % 26) as u8).collect();
    typed.extend_from_slice(b"\r~.");
    let mut writer = tty.master.try_clone().unwrap();
    // Not joined: had the client stopped reading the terminal, the write would never end.
    // With the server hung the paste fills the stdin window (256 KiB) and the rest waits in
    // the client, whose terminal thread still reads and sees the `~.` after it.
    thread::spawn(move || writer.write_all(&typed));
    let status = wait_child(&mut tty.child, WAIT);
    server.resume();
    let code = status.map(|status| status.code());
    assert_eq!(code, Some(Some(255)), "the client did not see ~.");
    assert_eq!(stty_g(&tty.slave), settings);
}

/// A panic while the terminal is raw (a test hook of debug builds: MONOREACTOR_TEST_PANIC)
/// is reported on the terminal as it was — the panic hook restores it before the message is
/// printed, so the message's lines end in CR LF, not in bare line feeds that would stair-step
/// across the screen — and the terminal stays restored after the exit.
#[test]
fn a_panic_with_the_terminal_raw_is_reported_on_a_restored_terminal() {
    if !cfg!(debug_assertions) {
        return; // The hook exists in debug builds only.
    }
    let server = Server::start_exec(&[]);
    let args = exec_t_args(&server, &["-t", "--", "sleep", "30"]);
    let (master, slave) = Terminal::open(24, 80);
    let settings = stty_g(&slave);
    let mut command = Command::new(env!("CARGO_BIN_EXE_monoreactor"));
    command
        .args(&args)
        .env_remove("MONOREACTOR_TOKEN")
        .env("MONOREACTOR_TEST_PANIC", "after-raw")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe and take no pointers.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 || libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn monoreactor exec -t");
    let status = wait_child(&mut child, WAIT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("exec -t did not end after its panic");
    });
    assert_eq!(status.code(), Some(101), "a panic's status: {status:?}");
    assert_eq!(stty_g(&slave), settings, "the terminal is as it was");
    // Everything the child wrote is in the master's buffer: read it without blocking.
    rustix::fs::fcntl_setfl(&master, rustix::fs::OFlags::NONBLOCK).unwrap();
    let mut shown = Vec::new();
    let _ = (&master).read_to_end(&mut shown);
    let shown = String::from_utf8_lossy(&shown);
    let message = "MONOREACTOR_TEST_PANIC=after-raw: a panic with the terminal raw";
    assert!(
        shown.contains(&format!("{message}\r\n")),
        "the panic was not reported on a restored terminal: {shown:?}"
    );
    assert!(server.wait_no_children(WAIT), "{:?}", server.children());
}
