//! Shared helpers for the loopback integration tests: a real `monoreactor serve` child process
//! on port 0, framed and raw clients, `/proc` probes, and bounded waits.
//!
//! Every wait here is bounded: sockets get read and write timeouts, loops have deadlines, and a
//! [`Server`] kills and reaps its child when dropped (also when a test panics).

#![allow(dead_code)]

pub mod exec;
pub mod files;
pub mod workers;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use monoreactor::client::{Client, ClientError, OwnedFrame};
use monoreactor::proto::{ErrorCode, ErrorMessage, Flags, Frame, FrameType, Hello};

/// How long a server may take to print its `listening` lines.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Read/write timeout for test sockets: far above any expected latency, still bounded.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of server stderr kept for diagnostics (the most recent ones).
const STDERR_KEEP: usize = 64 << 10;

/// The default listen flags; each is left out when the caller passes the same flag.
const DEFAULT_LISTEN: [(&str, &str); 3] = [
    ("--listen", "127.0.0.1:0"),
    ("--echo-tcp", "127.0.0.1:0"),
    ("--echo-udp", "127.0.0.1:0"),
];

/// A `monoreactor serve` child process. Killed and reaped on drop, after the process groups
/// of the commands it runs (its children) are killed.
pub struct Server {
    child: Child,
    /// Every `listening KIND ADDR` line, in the order printed.
    listening: Vec<(String, SocketAddr)>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_thread: Option<JoinHandle<()>>,
    /// For a server started with [`Server::start_exec`]: its root, token file and scratch
    /// space, removed after the server is gone (fields drop after `Drop::drop`).
    exec: Option<exec::ExecSetup>,
    /// The `--root` given when the caller gave none (so no test creates `monoreactor-files`
    /// in the working directory); removed after the server is gone.
    default_root: Option<ScratchRoot>,
}

/// A directory removed when dropped.
struct ScratchRoot(std::path::PathBuf);

impl Drop for ScratchRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    /// `serve --listen 127.0.0.1:0 --echo-tcp 127.0.0.1:0 --echo-udp 127.0.0.1:0 -q` plus
    /// `extra` (a listen flag given in `extra` replaces the default one).
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with(extra, |_| {})
    }

    /// Like [`Server::start`], with a chance to adjust the command first (e.g. `pre_exec`).
    pub fn start_with(extra: &[&str], configure: impl FnOnce(&mut Command)) -> Server {
        let mut args: Vec<&str> = vec!["serve"];
        for (flag, value) in DEFAULT_LISTEN {
            if !extra.iter().any(|arg| flag_matches(arg, flag)) {
                args.extend([flag, value]);
            }
        }
        args.push("-q");
        let default_root = (!extra.iter().any(|arg| flag_matches(arg, "--root"))).then(|| {
            static ROOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            ScratchRoot(std::env::temp_dir().join(format!(
                "monoreactor-test-root-{}-{}",
                std::process::id(),
                ROOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )))
        });
        let root_arg = default_root
            .as_ref()
            .map(|root| root.0.to_string_lossy().into_owned());
        if let Some(root) = &root_arg {
            args.extend(["--root", root]);
        }
        args.extend_from_slice(extra);
        let expected = expected_kinds(&args);

        let mut command = Command::new(env!("CARGO_BIN_EXE_monoreactor"));
        command
            .args(&args)
            // A token in the test runner's environment must not change what a test sees.
            .env_remove("MONOREACTOR_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot spawn monoreactor {args:?}: {error}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_thread = Some(spawn_stderr_collector(stderr_pipe, Arc::clone(&stderr)));
        // From here on, a panic drops `server`, which kills the child.
        let mut server = Server {
            child,
            listening: Vec::new(),
            stderr,
            stderr_thread,
            exec: None,
            default_root,
        };

        let (lines_tx, lines_rx) = mpsc::channel();
        thread::spawn(move || {
            // Keeps draining stdout until EOF, so the child can never block on it.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // After start-up nobody listens any more; keep draining anyway.
                let _ = lines_tx.send(line);
            }
        });

        let deadline = Instant::now() + START_TIMEOUT;
        while !expected
            .iter()
            .all(|kind| server.listening.iter().any(|(seen, _)| seen == kind))
        {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(remaining) {
                Ok(line) => {
                    let parsed = parse_listening(&line).unwrap_or_else(|| {
                        panic!("unexpected stdout line from the server: {line:?}")
                    });
                    server.listening.push(parsed);
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "server {args:?} did not print {expected:?} within {START_TIMEOUT:?}; got {:?}; stderr:\n{}",
                    server.listening,
                    server.stderr_text()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = server.wait_exit(Duration::from_secs(2));
                    panic!(
                        "server {args:?} closed stdout before printing {expected:?} (got {:?}, exit {status:?}); stderr:\n{}",
                        server.listening,
                        server.stderr_text()
                    )
                }
            }
        }
        server
    }

    /// The framed-protocol address.
    pub fn framed(&self) -> SocketAddr {
        self.addr("framed")
            .expect("the server always prints a framed listener")
    }

    /// The framed-protocol address as `host:port`, for [`Client::connect`].
    pub fn framed_str(&self) -> String {
        self.framed().to_string()
    }

    /// The raw TCP echo address (panics if it is off).
    pub fn echo_tcp(&self) -> SocketAddr {
        self.addr("echo-tcp").expect("raw TCP echo is enabled")
    }

    /// The UDP echo address (panics if it is off).
    pub fn echo_udp(&self) -> SocketAddr {
        self.addr("echo-udp").expect("UDP echo is enabled")
    }

    /// The address printed for `kind` (`framed`, `echo-tcp`, `echo-udp`), if any.
    pub fn addr(&self, kind: &str) -> Option<SocketAddr> {
        self.listening
            .iter()
            .find(|(seen, _)| seen == kind)
            .map(|(_, addr)| *addr)
    }

    /// The kinds of `listening` lines printed, in order.
    pub fn listening_kinds(&self) -> Vec<String> {
        self.listening
            .iter()
            .map(|(kind, _)| kind.clone())
            .collect()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server wrote to stderr so far (the most recent [`STDERR_KEEP`] bytes).
    pub fn stderr_text(&self) -> String {
        let bytes = self.stderr.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Sends `signal` to the server.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill only sends a signal to our own, not yet reaped, child.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Stops the server (SIGSTOP) and waits until it is stopped, so the kernel alone handles
    /// its sockets meanwhile. [`Server::resume`] continues it; drop kills it either way.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
        let stopped = retry(Duration::from_secs(5), || {
            (process_state(self.pid()) == Some('T')).then_some(())
        });
        assert!(stopped.is_some(), "server did not stop after SIGSTOP");
    }

    /// Continues a server stopped by [`Server::stop`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Waits up to `timeout` for the server to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }

    /// Server resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Server thread count.
    pub fn threads(&self) -> u64 {
        threads(self.pid())
    }

    /// Server CPU time (user + system).
    pub fn cpu_time(&self) -> Duration {
        cpu_time(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Commands outlive a SIGKILLed server (they are reparented, not killed), so their
        // groups go first. The server is stopped meanwhile: it cannot reap a command, so every
        // group id named here stays reserved by its (possibly zombie) leader until the kill.
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
            // SAFETY: signals to our own unreaped child and to the groups its children lead.
            unsafe {
                libc::kill(pid, libc::SIGSTOP);
            }
            for (child, _) in children_of(self.child.id()) {
                let child = libc::pid_t::try_from(child).expect("pid fits pid_t");
                // SAFETY: as above; a child that leads no group gets ESRCH, then a plain kill.
                unsafe {
                    libc::kill(-child, libc::SIGKILL);
                    libc::kill(child, libc::SIGKILL);
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(collector) = self.stderr_thread.take() {
            // The pipe closes with the child; give the collector a moment to see EOF.
            let deadline = Instant::now() + Duration::from_secs(1);
            while !collector.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if collector.is_finished() {
                let _ = collector.join();
            }
        }
        if thread::panicking() {
            eprintln!(
                "--- server (pid {}) stderr ---\n{}--- end of server stderr ---",
                self.child.id(),
                self.stderr_text()
            );
        }
    }
}

fn flag_matches(arg: &str, flag: &str) -> bool {
    arg == flag
        || arg
            .strip_prefix(flag)
            .is_some_and(|rest| rest.starts_with('='))
}

/// Which `listening` lines `serve args` will print: a listener given as `off` prints none.
fn expected_kinds(args: &[&str]) -> Vec<&'static str> {
    let is_off = |flag: &str| {
        args.windows(2)
            .any(|pair| pair[0] == flag && pair[1].eq_ignore_ascii_case("off"))
            || args.iter().any(|arg| {
                arg.strip_prefix(flag)
                    .and_then(|rest| rest.strip_prefix('='))
                    .is_some_and(|value| value.eq_ignore_ascii_case("off"))
            })
    };
    let mut kinds = vec!["framed"];
    if !is_off("--echo-tcp") {
        kinds.push("echo-tcp");
    }
    if !is_off("--echo-udp") {
        kinds.push("echo-udp");
    }
    if args.iter().any(|arg| flag_matches(arg, "--metrics")) {
        kinds.push("metrics");
    }
    kinds
}

/// `listening KIND ADDR` → (KIND, ADDR).
fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    let mut words = line.split(' ');
    let (Some("listening"), Some(kind), Some(addr), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return None;
    };
    if !matches!(kind, "framed" | "echo-tcp" | "echo-udp" | "metrics") {
        return None;
    }
    Some((kind.to_string(), addr.parse().ok()?))
}

fn spawn_stderr_collector(pipe: ChildStderr, sink: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut pipe = pipe;
        let mut chunk = [0; 4096];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let Ok(mut kept) = sink.lock() else { break };
                    kept.extend_from_slice(&chunk[..n]);
                    if kept.len() > STDERR_KEEP {
                        let excess = kept.len() - STDERR_KEEP;
                        kept.drain(..excess);
                    }
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    })
}

// === Processes ===

/// Polls `child` until it exits or `timeout` passes; `None` on timeout (the child is left
/// running: the caller decides).
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(error) => panic!("try_wait failed: {error}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// What a finished command printed and how it exited.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

/// Runs `monoreactor ARGS` to completion within `timeout` (killed and the test failed
/// otherwise), collecting its output.
pub fn run_cli(args: &[&str], timeout: Duration) -> Finished {
    run_cli_with(args, timeout, |_| {})
}

/// Like [`run_cli`], with a chance to adjust the command first (its environment). Unless it
/// sets them again, `MONOREACTOR_TOKEN` and `MONOREACTOR_ADDR` are removed from the
/// environment the command inherits.
pub fn run_cli_with(
    args: &[&str],
    timeout: Duration,
    configure: impl FnOnce(&mut Command),
) -> Finished {
    let mut command = Command::new(env!("CARGO_BIN_EXE_monoreactor"));
    command
        .args(args)
        .env_remove("MONOREACTOR_TOKEN")
        // Nor may a default server in it (`--addr`'s default).
        .env_remove("MONOREACTOR_ADDR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    configure(&mut command);
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("cannot spawn monoreactor {args:?}: {error}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let Some(status) = wait_child(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("monoreactor {args:?} did not exit within {timeout:?}");
    };
    Finished {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

// === /proc ===

/// The state letter of `pid` in `/proc/PID/stat` (`R`, `S`, `T`, `Z`, ...).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().next()?.chars().next()
}

/// Every process in `/proc` with the fields of its `/proc/PID/stat` after the command name
/// (`[0]` state, `[1]` ppid, `[2]` process group). A process that ends during the scan is
/// skipped.
pub fn processes() -> Vec<(u32, Vec<String>)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses; the fields after its last ')'
        // are fixed.
        let Some((_, after_name)) = stat.rsplit_once(')') else {
            continue;
        };
        found.push((
            pid,
            after_name.split_whitespace().map(String::from).collect(),
        ));
    }
    found
}

/// The children of `parent` with their state letters (`Z` for a zombie).
pub fn children_of(parent: u32) -> Vec<(u32, char)> {
    let parent = parent.to_string();
    processes()
        .into_iter()
        .filter(|(_, fields)| fields.get(1) == Some(&parent))
        .filter_map(|(pid, fields)| Some((pid, fields.first()?.chars().next()?)))
        .collect()
}

/// Whether `pid` is a server's disk helper (`monoreactor __disk-helper FD`).
pub fn is_disk_helper(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|&byte| byte == 0)
            .any(|arg| arg == b"__disk-helper")
    })
}

/// The processes in process group `pgid`, with their state letters.
pub fn group_members(pgid: u32) -> Vec<(u32, char)> {
    let pgid = pgid.to_string();
    processes()
        .into_iter()
        .filter(|(_, fields)| fields.get(2) == Some(&pgid))
        .filter_map(|(pid, fields)| Some((pid, fields.first()?.chars().next()?)))
        .collect()
}

/// Whether any process of group `pgid` still runs. `kill(-pgid, 0)` answers first (`ESRCH`:
/// none); members it finds count only if they are not zombies. A zombie here is an orphaned
/// grandchild (its shell died first) reparented to init: reaping it is init's job, and some
/// container inits do that only every few seconds.
pub fn group_running(pgid: u32) -> bool {
    let raw = libc::pid_t::try_from(pgid).expect("pgid fits pid_t");
    assert!(raw > 1, "refusing to probe process group {pgid}");
    // SAFETY: signal 0 only checks that the group exists; nothing is delivered.
    let rc = unsafe { libc::kill(-raw, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    group_members(pgid).iter().any(|&(_, state)| state != 'Z')
}

/// Waits up to `timeout` until no process of group `pgid` runs ([`group_running`]); whether
/// none does.
pub fn wait_group_gone(pgid: u32, timeout: Duration) -> bool {
    retry(timeout, || (!group_running(pgid)).then_some(())).is_some()
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    monoreactor_bench::procstat::rss_kib(pid).expect("VmRSS readable")
}

/// Virtual memory size of `pid`, KiB.
pub fn vm_size_kib(pid: u32) -> u64 {
    monoreactor_bench::procstat::status_field(pid, "VmSize").expect("VmSize readable")
}

/// Threads of `pid`.
pub fn threads(pid: u32) -> u64 {
    monoreactor_bench::procstat::threads(pid).expect("Threads readable")
}

/// CPU time (user + system) of `pid`.
pub fn cpu_time(pid: u32) -> Duration {
    monoreactor_bench::procstat::cpu_time(pid).expect("/proc/PID/stat readable")
}

/// Raises this test process's open-file soft limit to its hard limit; returns the new soft
/// limit (panics if it cannot be read).
pub fn raise_fd_limit() -> u64 {
    monoreactor::raise_descriptor_limit().expect("RLIMIT_NOFILE readable")
}

// === Clients ===

/// A framed client that has done HELLO, with [`IO_TIMEOUT`] on everything.
pub fn framed_client(server: &Server) -> Client {
    Client::connect(&server.framed_str(), IO_TIMEOUT)
        .unwrap_or_else(|error| panic!("framed client to {}: {error}", server.framed()))
}

/// A framed client that has not sent HELLO.
pub fn framed_client_raw(server: &Server) -> Client {
    Client::connect_raw(&server.framed_str(), IO_TIMEOUT)
        .unwrap_or_else(|error| panic!("framed connect to {}: {error}", server.framed()))
}

/// A plain TCP connection with [`IO_TIMEOUT`] both ways and `TCP_NODELAY`.
pub fn tcp(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|error| panic!("connect to {addr}: {error}"));
    set_timeouts(&stream, IO_TIMEOUT);
    stream.set_nodelay(true).expect("TCP_NODELAY");
    stream
}

/// Sets read and write timeouts.
pub fn set_timeouts(stream: &TcpStream, timeout: Duration) {
    stream
        .set_read_timeout(Some(timeout))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(timeout))
        .expect("write timeout");
}

/// A UDP socket on loopback with [`IO_TIMEOUT`] both ways.
pub fn udp() -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    socket.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
    socket
}

/// HELLO for the current version, as bytes.
pub fn hello_bytes() -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::current().encode(&mut wire);
    wire
}

/// An ECHO_REQUEST frame, as bytes.
pub fn echo_request(stream: u32, payload: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::EchoRequest, Flags::END_STREAM, stream, payload).to_vec()
}

/// Appends an ECHO_REQUEST frame to `out`.
pub fn push_echo_request(out: &mut Vec<u8>, stream: u32, payload: &[u8]) {
    Frame::new(FrameType::EchoRequest, Flags::END_STREAM, stream, payload).encode_into(out);
}

/// Receives one frame, failing the test on anything but a frame.
#[track_caller]
pub fn recv(client: &mut Client) -> OwnedFrame {
    match client.recv_frame() {
        Ok(frame) => frame,
        Err(error) => panic!("expected a frame, got: {error} ({error:?})"),
    }
}

/// Receives HELLO_OK.
#[track_caller]
pub fn expect_hello_ok(client: &mut Client) {
    let frame = recv(client);
    assert_eq!(
        (frame.header.frame_type, frame.header.stream),
        (FrameType::HelloOk, 0),
        "expected HELLO_OK on stream 0"
    );
}

/// Receives an ECHO_REPLY and checks its stream and payload.
#[track_caller]
pub fn expect_echo_reply(client: &mut Client, stream: u32, payload: &[u8]) {
    let frame = recv(client);
    assert_eq!(
        frame.header.frame_type,
        FrameType::EchoReply,
        "expected ECHO_REPLY for stream {stream}, got {:?}",
        describe(&frame)
    );
    assert_eq!(frame.header.stream, stream, "reply on the wrong stream");
    assert!(
        frame.payload == payload,
        "stream {stream}: payload of {} bytes differs from the {} bytes sent",
        frame.payload.len(),
        payload.len()
    );
}

/// Receives an ERROR frame on `stream` and checks its code; returns the text.
#[track_caller]
pub fn expect_error(client: &mut Client, stream: u32, code: ErrorCode) -> String {
    let frame = recv(client);
    assert_eq!(
        frame.header.frame_type,
        FrameType::Error,
        "expected ERROR {code}, got {}",
        describe(&frame)
    );
    assert_eq!(frame.header.stream, stream, "ERROR on the wrong stream");
    let message = ErrorMessage::parse(&frame.payload).expect("ERROR payload parses");
    assert_eq!(
        message.code, code,
        "wrong error code (text: {:?})",
        message.text
    );
    message.text.to_string()
}

/// The server closed the connection cleanly: the next read is EOF (no data, no reset).
#[track_caller]
pub fn expect_eof(client: &mut Client) {
    match client.recv_frame() {
        Err(ClientError::Closed { partial: 0 }) => {}
        Ok(frame) => panic!("expected EOF, got another frame: {}", describe(&frame)),
        Err(error) => panic!("expected a clean EOF, got: {error} ({error:?})"),
    }
}

/// The next read on a plain stream is EOF.
#[track_caller]
pub fn expect_stream_eof(stream: &mut TcpStream) {
    let mut buf = [0; 256];
    match read_retrying(stream, &mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "expected EOF, got {n} bytes: {:?}",
            buf[..n].escape_ascii().to_string()
        ),
        Err(error) => panic!("expected EOF, got: {error}"),
    }
}

/// `read`, retrying `Interrupted`.
pub fn read_retrying(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Reads exactly `len` bytes (several reads if need be), failing the test on EOF or timeout.
#[track_caller]
pub fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut got = vec![0; len];
    let mut filled = 0;
    while filled < len {
        match read_retrying(stream, &mut got[filled..]) {
            Ok(0) => panic!("EOF after {filled} of {len} bytes"),
            Ok(n) => filled += n,
            Err(error) => panic!("read failed after {filled} of {len} bytes: {error}"),
        }
    }
    got
}

/// Writes everything, failing the test with context on error.
#[track_caller]
pub fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream
        .write_all(bytes)
        .unwrap_or_else(|error| panic!("write of {} bytes failed: {error}", bytes.len()));
}

/// One line about a frame, for assertion messages.
pub fn describe(frame: &OwnedFrame) -> String {
    if frame.header.frame_type == FrameType::Error {
        if let Ok(message) = ErrorMessage::parse(&frame.payload) {
            return format!("ERROR on stream {}: {message}", frame.header.stream);
        }
    }
    format!(
        "{} on stream {} with {} payload bytes",
        frame.header.frame_type,
        frame.header.stream,
        frame.payload.len()
    )
}

/// Repeats `attempt` every 20 ms until it returns `Some`, for at most `timeout`.
pub fn retry<T>(timeout: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A framed client that completes HELLO and one echo, retried for up to `timeout` (closes are
/// processed asynchronously, so a freed slot may take a moment to appear).
#[track_caller]
pub fn framed_client_eventually(server: &Server, timeout: Duration) -> Client {
    let mut last = String::new();
    let client = retry(timeout, || {
        let attempt = Client::connect(&server.framed_str(), IO_TIMEOUT).and_then(|mut client| {
            let reply = client.echo(b"are you there")?;
            Ok((client, reply))
        });
        match attempt {
            Ok((client, reply)) => {
                assert_eq!(reply, b"are you there");
                Some(client)
            }
            Err(error) => {
                last = error.to_string();
                None
            }
        }
    });
    client.unwrap_or_else(|| panic!("no framed client got through within {timeout:?}: {last}"))
}

/// `len` bytes from a seeded generator.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = monoreactor::testkit::SplitMix64::new(seed);
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Sets `SO_LINGER` to zero: closing the socket then sends RST instead of FIN.
pub fn set_linger_zero(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).expect("small");
    // SAFETY: the fd is a live socket owned by `stream`; the option value is a valid `linger`
    // of the length given.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            len,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt(SO_LINGER): {}",
        std::io::Error::last_os_error()
    );
}

/// Stop flooding after this much, whether or not writes block.
pub const FLOOD_CAP: usize = 64 << 20;
/// Flooding stops once writes have blocked for this long without progress.
pub const BLOCKED_FOR: Duration = Duration::from_millis(500);
/// Writes `pattern` over and over on a nonblocking socket, never reading, until writes have
/// returned `WouldBlock` for [`BLOCKED_FOR`] or [`FLOOD_CAP`] bytes are out. Returns the bytes
/// written.
pub fn flood_without_reading(stream: &mut TcpStream, pattern: &[u8]) -> usize {
    stream.set_nonblocking(true).expect("nonblocking");
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut offset = 0;
    let mut written = 0;
    while written < FLOOD_CAP {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "flooding took over a minute ({written} bytes written)"
        );
        match stream.write(&pattern[offset..]) {
            Ok(0) => panic!("write returned 0"),
            Ok(n) => {
                written += n;
                offset = (offset + n) % pattern.len();
                last_progress = Instant::now();
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                if last_progress.elapsed() >= BLOCKED_FOR {
                    break;
                }
                thread::sleep(Duration::from_millis(5));
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => panic!("flood write failed after {written} bytes: {error}"),
        }
    }
    written
}

/// A directory of its own under the system's temporary directory, removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    /// `TMP/monoreactor-LABEL-PID-N`, empty.
    pub fn new(label: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "monoreactor-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("a temporary directory");
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// `name` in it.
    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }

    /// Every name in it (hidden and reserved ones included), sorted — but the server's hash
    /// index, which a GET creates in a root by design (these checks look for what an upload
    /// or a DELETE leaves behind).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("readable")
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != monoreactor::internal::INDEX_NAME)
            .collect();
        names.sort();
        names
    }

    /// The names of resumable partial uploads in it.
    pub fn partials(&self) -> Vec<String> {
        self.names()
            .into_iter()
            .filter(|name| name.starts_with(".monoreactor-partial-"))
            .collect()
    }

    /// The directory, opened (for the `*at` calls of a disk job).
    pub fn dir_fd(&self) -> std::os::fd::OwnedFd {
        std::os::fd::OwnedFd::from(std::fs::File::open(&self.0).expect("open the directory"))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
