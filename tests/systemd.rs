//! systemd integration, without systemd: the server's notifications are read from a unix
//! datagram socket the test binds and names in `NOTIFY_SOCKET` (as systemd does for
//! `Type=notify`), socket activation is the environment and descriptors systemd would pass
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, descriptors from 3 on), and the unit printed
//! by `monoreactor systemd-unit` is compared with docs/ and checked by `systemd-analyze
//! verify` where that is installed (skipped with a printed reason otherwise).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{Server, TempDir, run_cli, wait_child};

/// Longest a notification may take to arrive.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// The socket a service manager listens on, bound by the test.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = TempDir::new("notify");
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        NotifySocket {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next message (its `KEY=VALUE` lines), or `None` after `timeout`.
    fn next(&self, timeout: Duration) -> Option<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                return Some(text.lines().map(str::to_string).collect());
            }
        }
        None
    }

    /// The next message, which must contain `line` (a whole line, or a `KEY=` prefix).
    #[track_caller]
    fn expect(&self, line: &str) -> Vec<String> {
        let message = self
            .next(NOTIFY_TIMEOUT)
            .unwrap_or_else(|| panic!("no notification with {line} within {NOTIFY_TIMEOUT:?}"));
        assert!(
            message
                .iter()
                .any(|seen| seen == line || (line.ends_with('=') && seen.starts_with(line))),
            "expected {line}, got {message:?}"
        );
        message
    }
}

fn notify_env(socket: &NotifySocket) -> impl FnOnce(&mut Command) + '_ {
    move |command: &mut Command| {
        command.env("NOTIFY_SOCKET", &socket.path);
    }
}

#[test]
fn a_lone_server_says_ready_reloading_ready_and_stopping() {
    let notify = NotifySocket::bind();
    let mut server = Server::start_with(&[], notify_env(&notify));
    // Sent after the `listening` lines, which Server::start has read.
    let ready = notify.expect("READY=1");
    assert!(
        ready.iter().any(|line| line.starts_with("STATUS=serving")),
        "{ready:?}"
    );
    server.signal(libc::SIGHUP);
    let reloading = notify.expect("RELOADING=1");
    let usec = reloading
        .iter()
        .find_map(|line| line.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC=: {reloading:?}"));
    assert!(usec.parse::<u64>().is_ok_and(|usec| usec > 0), "{usec}");
    notify.expect("READY=1");
    server.signal(libc::SIGTERM);
    notify.expect("STOPPING=1");
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|status| status.success()), "{status:?}");
    assert_eq!(notify.next(Duration::from_millis(200)), None);
}

#[test]
fn with_workers_only_the_supervisor_speaks_once_all_are_ready() {
    let notify = NotifySocket::bind();
    let mut server = Server::start_with(&["--workers", "2"], notify_env(&notify));
    let ready = notify.expect("READY=1");
    assert!(
        ready
            .iter()
            .any(|line| line == "STATUS=serving with 2 workers"),
        "{ready:?}"
    );
    // The workers have no NOTIFY_SOCKET: nothing more comes until we ask.
    assert_eq!(notify.next(Duration::from_millis(300)), None);
    server.signal(libc::SIGHUP);
    notify.expect("RELOADING=1");
    notify.expect("READY=1");
    server.signal(libc::SIGTERM);
    notify.expect("STOPPING=1");
    assert!(server.wait_exit(Duration::from_secs(15)).is_some());
    assert_eq!(notify.next(Duration::from_millis(200)), None);
}

// === Socket activation ===

/// A server started as systemd would start it on a socket unit's descriptors.
struct Activated {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Activated {
    /// `monoreactor serve ARGS` with `sockets` as descriptors 3, 4, ... and `names` (if any)
    /// in `LISTEN_FDNAMES`. `LISTEN_PID` must be the server's own pid, which only the child
    /// knows before it execs: a shell sets it, then execs the server in its place.
    fn start(sockets: &[RawFd], names: Option<&str>, args: &[&str]) -> Activated {
        // Moved above the range they are dup'ed onto, so no dup2 overwrites another source.
        let sources: Vec<OwnedFd> = sockets
            .iter()
            .map(|&fd| {
                // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor, owned here.
                let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
                assert!(copy >= 0, "dup: {}", std::io::Error::last_os_error());
                // SAFETY: `copy` was just made and nothing else owns it.
                unsafe { OwnedFd::from_raw_fd(copy) }
            })
            .collect();
        let raw: Vec<RawFd> = sources.iter().map(AsRawFd::as_raw_fd).collect();
        let mut command = Command::new("sh");
        command
            .args(["-c", "export LISTEN_PID=$$; exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_monoreactor"))
            .args(["serve", "-q", "--no-files"])
            .args(args)
            .env("LISTEN_FDS", sockets.len().to_string())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("MONOREACTOR_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match names {
            Some(names) => command.env("LISTEN_FDNAMES", names),
            None => command.env_remove("LISTEN_FDNAMES"),
        };
        // SAFETY: dup2 is async-signal-safe; the closure allocates nothing (`raw` is moved in).
        unsafe {
            command.pre_exec(move || {
                for (index, &fd) in raw.iter().enumerate() {
                    if libc::dup2(fd, 3 + index as RawFd) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn sh");
        drop(sources);
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = sender.send(line);
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        Activated {
            child,
            lines,
            stderr,
        }
    }

    /// The `listening` lines, until `count` were printed.
    #[track_caller]
    fn listening(&self, count: usize) -> Vec<String> {
        (0..count)
            .map(|_| {
                self.lines
                    .recv_timeout(Duration::from_secs(10))
                    .expect("a listening line")
            })
            .collect()
    }

    /// Waits for the exit; its stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let status = wait_child(&mut self.child, Duration::from_secs(10));
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
        (
            status.and_then(|status| status.code()),
            stderr.join().unwrap_or_default(),
        )
    }
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// One raw echo over TCP.
fn raw_echo(addr: SocketAddr) {
    let mut stream = TcpStream::connect(addr).expect("connect to the echo socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(b"ping\n").unwrap();
    let mut back = [0; 5];
    stream.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping\n");
}

#[test]
fn activated_sockets_are_served_by_name_in_any_order() {
    let (framed, framed_addr) = listener();
    let (echo, echo_addr) = listener();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp.local_addr().unwrap();
    // The flags' addresses are ignored: the passed sockets are served.
    let server = Activated::start(
        &[udp.as_raw_fd(), framed.as_raw_fd(), echo.as_raw_fd()],
        Some("echo-udp:framed:echo-tcp"),
        &["--listen", "127.0.0.1:1"],
    );
    assert_eq!(
        server.listening(3),
        [
            format!("listening framed {framed_addr}"),
            format!("listening echo-tcp {echo_addr}"),
            format!("listening echo-udp {udp_addr}"),
        ]
    );
    raw_echo(echo_addr);
    let finished = run_cli(
        &["echo", "--addr", &framed_addr.to_string(), "activated"],
        Duration::from_secs(10),
    );
    assert_eq!(finished.stdout, "activated\n", "{}", finished.stderr);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(b"datagram", udp_addr).unwrap();
    let mut back = [0; 16];
    let (n, _) = client.recv_from(&mut back).expect("a UDP echo");
    assert_eq!(&back[..n], b"datagram");
}

#[test]
fn unnamed_activated_sockets_are_taken_in_order() {
    let (framed, framed_addr) = listener();
    let (echo, echo_addr) = listener();
    // systemd names every socket of a unit after the unit when FileDescriptorName= is unset.
    let server = Activated::start(
        &[framed.as_raw_fd(), echo.as_raw_fd()],
        Some("monoreactor.socket:monoreactor.socket"),
        &[],
    );
    assert_eq!(
        server.listening(2),
        [
            format!("listening framed {framed_addr}"),
            format!("listening echo-tcp {echo_addr}"),
        ]
    );
    raw_echo(echo_addr);
}

#[test]
fn an_activated_socket_of_the_wrong_kind_is_one_line() {
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = Activated::start(&[udp.as_raw_fd()], Some("framed"), &[]);
    let (code, stderr) = server.finish();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        "monoreactor: socket activation: descriptor 3 (framed) is a datagram socket, not a listening TCP socket (ListenStream=)"
    );
    // A TCP socket that is not listening is refused too.
    let unbound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let server = Activated::start(&[unbound.as_raw_fd()], None, &[]);
    let (code, stderr) = server.finish();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is a TCP socket that is not listening"),
        "{stderr}"
    );
}

#[test]
fn socket_activation_with_workers_is_refused_in_one_line() {
    let (framed, _) = listener();
    let server = Activated::start(&[framed.as_raw_fd()], None, &["--workers", "2"]);
    let (code, stderr) = server.finish();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--workers 2 with socket activation"),
        "{stderr}"
    );
}

// === The unit ===

const DOCS_SERVICE: &str = include_str!("../docs/monoreactor.service");
const DOCS_SOCKET: &str = include_str!("../docs/monoreactor.socket");

#[test]
fn the_printed_unit_is_the_docs_file_with_the_paths_filled_in() {
    let binary = env!("CARGO_BIN_EXE_monoreactor");
    let printed = run_cli(&["systemd-unit"], Duration::from_secs(10));
    assert!(printed.status.success(), "{}", printed.stderr);
    let binary_path = std::fs::canonicalize(binary).unwrap();
    assert_eq!(
        printed.stdout,
        DOCS_SERVICE.replace(
            "ExecStart=/usr/local/bin/monoreactor ",
            &format!("ExecStart={} ", binary_path.display())
        )
    );
    let printed = run_cli(
        &[
            "systemd-unit",
            "--binary",
            "/opt/mr/bin/monoreactor",
            "--root",
            "/var/lib/files",
            "--",
            "--max-conns",
            "500",
        ],
        Duration::from_secs(10),
    );
    assert!(printed.status.success(), "{}", printed.stderr);
    let expected = DOCS_SERVICE
        .lines()
        .map(|line| {
            if line.starts_with("ExecStart=") {
                "ExecStart=/opt/mr/bin/monoreactor serve --root /var/lib/files --max-conns 500"
                    .to_string()
            } else if line.starts_with('#') {
                line.to_string()
            } else {
                line.replace("/var/lib/monoreactor", "/var/lib/files")
                    .replace("StateDirectory=monoreactor", "StateDirectory=files")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    assert_eq!(printed.stdout, expected);
    let socket = run_cli(&["systemd-unit", "--socket"], Duration::from_secs(10));
    assert_eq!(socket.stdout, DOCS_SOCKET);
}

#[test]
fn the_unit_has_the_sandbox_the_issue_asks_for() {
    for line in [
        "Type=notify",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/monoreactor",
        "StateDirectory=monoreactor",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "KillMode=control-group",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "LimitNOFILE=1048576",
        "Restart=on-failure",
    ] {
        assert!(
            DOCS_SERVICE.lines().any(|seen| seen == line),
            "docs/monoreactor.service lacks {line}"
        );
    }
}

#[test]
fn systemd_analyze_verifies_the_units() {
    let version = Command::new("systemd-analyze").arg("--version").output();
    if !version.is_ok_and(|output| output.status.success()) {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    let dir = TempDir::new("units");
    let service = run_cli(&["systemd-unit"], Duration::from_secs(10));
    std::fs::write(dir.join("monoreactor.service"), &service.stdout).unwrap();
    std::fs::write(dir.join("monoreactor.socket"), DOCS_SOCKET).unwrap();
    let mut command = Command::new("systemd-analyze");
    command
        .args(["verify", "monoreactor.service", "monoreactor.socket"])
        .current_dir(dir.path())
        // Offline: the units' own directory, not the running system's.
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn systemd-analyze");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = wait_child(&mut child, Duration::from_secs(60));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("systemd-analyze verify did not finish within 60 s");
    }
    let stderr = reader.join().unwrap_or_default();
    // Unknown keys are warnings with a zero exit: any line about our units is a failure.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("monoreactor."))
        .collect();
    assert!(
        status.is_some_and(|status| status.success()) && ours.is_empty(),
        "systemd-analyze verify: {status:?}\n{stderr}"
    );
}
