//! Review of the operations work (configuration, reload, access lines, the metrics port,
//! systemd): each test here failed before the fix beside it.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::Server;

const TIMEOUT: Duration = Duration::from_secs(20);

/// One `GET /metrics`: how long the whole answer took, and whether it was a 200.
fn timed_scrape(addr: SocketAddr) -> (Duration, bool) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("send the request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (
        started.elapsed(),
        answer.starts_with(b"HTTP/1.1 200 OK\r\n"),
    )
}

/// A metrics client that sends its request and then keeps sending (a blaster on the lingering
/// close) is closed once it has sent a little past its request: before, the loop read and
/// dropped everything until the 10 s deadline, at full speed (GBs, the loop's whole CPU, and
/// every other client and scrape waiting behind each read-until-`WouldBlock`).
#[test]
fn a_metrics_client_that_never_stops_sending_is_closed() {
    let server = Server::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = server.addr("metrics").expect("a metrics port");
    let stop = Arc::new(AtomicBool::new(false));
    let blasters: Vec<_> = (0..2)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(metrics).expect("connect");
                stream
                    .set_write_timeout(Some(Duration::from_secs(1)))
                    .unwrap();
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
                    .expect("request");
                let chunk = vec![b'x'; 1 << 20];
                let started = Instant::now();
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(4) {
                    match stream.write(&chunk) {
                        Ok(n) => sent += n as u64,
                        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return (sent, true),
                    }
                }
                (sent, false)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let (took, ok) = timed_scrape(metrics);
        assert!(ok, "a scrape beside the blasters was not answered");
        slowest = slowest.max(took);
    }
    let ended: Vec<(u64, bool)> = blasters.into_iter().map(|b| b.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    for (sent, closed) in ended {
        assert!(
            closed && sent < 64 << 20,
            "a client sending past its request was still read after {sent} bytes (closed: {closed}); slowest scrape beside it {slowest:?}"
        );
    }
}

/// A service manager's notify socket, bound by the test.
struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    path: std::path::PathBuf,
    _dir: support::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = support::TempDir::new("notify");
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            socket,
            path,
            _dir: dir,
        }
    }

    /// Every message that arrives within `wait`, each as its lines.
    fn within(&self, wait: Duration) -> Vec<Vec<String>> {
        let deadline = Instant::now() + wait;
        let mut messages = Vec::new();
        let mut buf = [0; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                messages.push(text.lines().map(str::to_string).collect());
            }
        }
        messages
    }
}

/// Once STOPPING=1 is sent (SIGTERM starts the drain), a SIGHUP must not say READY=1 (nor
/// RELOADING=1): systemd would read "serving" from a server on its way out. Before, the
/// reload's RELOADING=1 and READY=1 "serving (reload done)" went out during the drain.
#[test]
fn a_reload_during_the_drain_does_not_say_ready_again() {
    let notify = NotifySocket::bind();
    let mut server = Server::start_with(&["--drain-delay", "3"], |command| {
        command.env("NOTIFY_SOCKET", &notify.path);
    });
    let ready = notify.within(Duration::from_millis(500));
    assert!(
        ready.iter().flatten().any(|line| line == "READY=1"),
        "{ready:?}"
    );
    server.signal(libc::SIGTERM);
    let stopping = notify.within(Duration::from_millis(500));
    assert!(
        stopping.iter().flatten().any(|line| line == "STOPPING=1"),
        "{stopping:?}"
    );
    server.signal(libc::SIGHUP);
    let after = notify.within(Duration::from_millis(700));
    assert!(
        !after
            .iter()
            .flatten()
            .any(|line| line == "READY=1" || line == "RELOADING=1"),
        "after STOPPING=1, a SIGHUP sent {after:?}"
    );
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(TIMEOUT);
    assert!(status.is_some_and(|status| status.success()), "{status:?}");
}

/// `--check-config` checks what the start checks: `--metrics` with port 0 (or ports past
/// 65535) and `--workers N` failed at start ("needs a port") but was "configuration OK".
#[test]
fn check_config_refuses_what_the_start_refuses_for_worker_metrics() {
    for (metrics, says) in [
        ("127.0.0.1:0", "needs a port"),
        ("127.0.0.1:65535", "port 65536 does not exist"),
    ] {
        let checked = support::run_cli(
            &[
                "serve",
                "--check-config",
                "--workers",
                "2",
                "--metrics",
                metrics,
            ],
            TIMEOUT,
        );
        assert!(
            !checked.status.success() && checked.stderr.contains(says),
            "--metrics {metrics} --workers 2 --check-config: {:?} {} {}",
            checked.status,
            checked.stdout,
            checked.stderr
        );
    }
    let good = support::run_cli(
        &[
            "serve",
            "--check-config",
            "--workers",
            "2",
            "--metrics",
            "127.0.0.1:65534",
        ],
        TIMEOUT,
    );
    assert!(good.status.success(), "{}", good.stderr);
}

/// `NOTIFY_SOCKET=@name` is an abstract socket (sd_notify(3): "If the first character of
/// $NOTIFY_SOCKET is "@", the string is understood as Linux abstract namespace socket"),
/// as older systemd versions and some containers give. Before, the `@` was taken as a file
/// name: READY=1 never arrived (with Type=notify, systemd kills the server at its start
/// timeout) and each notification logged "cannot notify the service manager".
#[test]
fn an_abstract_notify_socket_is_told_ready() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!(
        "monoreactor-review-{}-{:?}",
        std::process::id(),
        Instant::now()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind abstract");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let server = Server::start_with(&[], |command| {
        command.env("NOTIFY_SOCKET", format!("@{name}"));
    });
    let mut buf = [0; 4096];
    let received = socket.recv(&mut buf);
    let text = received
        .as_ref()
        .map(|&n| String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(
        text.as_ref()
            .is_ok_and(|text| text.lines().any(|line| line == "READY=1")),
        "{text:?}; the server said: {}",
        server.stderr_text()
    );
}

/// The worker processes of a supervisor (its children that are not zombies).
fn live_workers(supervisor: u32) -> Vec<u32> {
    support::children_of(supervisor)
        .into_iter()
        .filter(|(_, state)| *state != 'Z')
        .map(|(pid, _)| pid)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("--worker-of"))
        })
        .collect()
}

/// With `--workers`, a worker that dies is restarted with the configuration the running
/// ones were given (at start, or by the last SIGHUP the supervisor validated), not with
/// whatever the file holds at that moment. Before, the new worker read the file again: an
/// operator halfway through an edit (no SIGHUP yet) made it fail at start, and the supervisor
/// gave it up for good ("not restarting it"), the server left with one worker fewer.
#[test]
fn a_restarted_worker_takes_the_validated_configuration_not_the_file_as_it_is_now() {
    let dir = support::TempDir::new("review-config");
    let path = dir.join("monoreactor.toml");
    std::fs::write(&path, "workers = 2\nmax-conns = 50\n").unwrap();
    // Info level for the supervisor's "worker PID ready" lines.
    let server = Server::start(&["--log-level", "info", "--config", path.to_str().unwrap()]);
    let started = Instant::now();
    let mut workers = live_workers(server.pid());
    while workers.len() < 2 && started.elapsed() < TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
        workers = live_workers(server.pid());
    }
    assert_eq!(workers.len(), 2, "{}", server.stderr_text());
    // A worker killed before it has said it is ready counts as failed at start and is not
    // restarted (by design): wait until both have (under load that takes a while).
    let ready = |pid: u32| format!("worker {pid} ready");
    while !workers
        .iter()
        .all(|pid| server.stderr_text().contains(&ready(*pid)))
    {
        assert!(started.elapsed() < TIMEOUT, "{}", server.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Halfway through an edit: not a valid file, and no SIGHUP sent.
    std::fs::write(&path, "workers = 2\nmax-conns = \"5").unwrap();
    // SAFETY: kill(2) on a process of this test's server.
    unsafe { libc::kill(workers[0] as libc::pid_t, libc::SIGKILL) };
    let killed = Instant::now();
    let mut now = live_workers(server.pid());
    while (now.len() != 2 || now.contains(&workers[0])) && killed.elapsed() < TIMEOUT {
        std::thread::sleep(Duration::from_millis(50));
        now = live_workers(server.pid());
    }
    assert!(
        now.len() == 2 && !now.contains(&workers[0]),
        "workers {now:?} after killing {}: {}",
        workers[0],
        server.stderr_text()
    );
    assert!(
        !server.stderr_text().contains("failed at start"),
        "{}",
        server.stderr_text()
    );
}

/// A raw echo connection that sends nothing (a port scan, a balancer's connect-only health
/// check every 200 ms) has nothing to log but that it came: its line is throttled like a
/// framed connection's that made no request. Before, each one wrote a `RAW-ECHO in=0` line,
/// at whatever rate connections could be opened.
#[test]
fn raw_echo_connections_that_send_nothing_do_not_flood_the_log() {
    let server = Server::start(&["-v"]);
    for _ in 0..50 {
        drop(TcpStream::connect(server.echo_tcp()).expect("connect"));
    }
    let mut echo = TcpStream::connect(server.echo_tcp()).expect("connect");
    echo.set_read_timeout(Some(TIMEOUT)).unwrap();
    echo.write_all(b"hi").unwrap();
    let mut back = [0; 2];
    echo.read_exact(&mut back).unwrap();
    drop(echo);
    let lines = |server: &Server| -> Vec<String> {
        server
            .stderr_text()
            .lines()
            .filter(|line| line.contains("[monoreactor::access]") && line.contains("RAW-ECHO"))
            .map(str::to_string)
            .collect()
    };
    let started = Instant::now();
    while !lines(&server).iter().any(|line| line.contains(" in=2 ")) {
        assert!(started.elapsed() < TIMEOUT, "{}", server.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let silent = lines(&server)
        .into_iter()
        .filter(|line| line.contains(" in=0 "))
        .count();
    assert!(
        silent <= 2,
        "{silent} access lines for 50 connections that sent nothing:\n{}",
        lines(&server).join("\n")
    );
}

/// SIGHUP reads the configuration on the loop: a path that is not a regular file must not
/// block it. Before, a FIFO at the path (no writer) blocked the open for good: the server
/// answered no one and no longer handled SIGTERM. It is refused in one line, the
/// configuration in use kept.
#[test]
fn a_reload_of_a_config_path_that_is_a_fifo_does_not_block_the_loop() {
    let dir = support::TempDir::new("review-fifo");
    let path = dir.join("monoreactor.toml");
    std::fs::write(&path, "max-conns = 50\n").unwrap();
    reload_onto_a_fifo(&["-v", "--config", path.to_str().unwrap()], &path);
}

/// The same for the access file, which SIGHUP reads again too.
#[test]
fn a_reload_of_an_access_file_that_is_a_fifo_does_not_block_the_loop() {
    let dir = support::TempDir::new("review-fifo-access");
    let path = dir.join("access.toml");
    let added = support::run_cli(
        &[
            "access",
            "add",
            "--file",
            path.to_str().unwrap(),
            "--name",
            "alice",
        ],
        TIMEOUT,
    );
    assert!(added.status.success(), "access add: {}", added.stderr);
    reload_onto_a_fifo(&["-v", "--access", path.to_str().unwrap()], &path);
}

/// Starts a server with `args`, puts a FIFO at `path`, sends SIGHUP: the server must still
/// answer, say why the reload was refused, and stop at SIGTERM.
fn reload_onto_a_fifo(args: &[&str], path: &std::path::Path) {
    let mut server = Server::start(args);
    std::fs::remove_file(path).unwrap();
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    server.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let mut echo = TcpStream::connect(server.echo_tcp()).expect("connect");
    echo.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    echo.write_all(b"hi").unwrap();
    let mut back = [0; 2];
    let answered = echo.read_exact(&mut back);
    assert!(
        answered.is_ok(),
        "the raw echo after a SIGHUP on a FIFO: {answered:?}\n{}",
        server.stderr_text()
    );
    assert!(
        server.stderr_text().contains("not a regular file"),
        "{}",
        server.stderr_text()
    );
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(TIMEOUT).is_some(), "no exit after SIGTERM");
}

/// With `--workers`, the supervisor and every worker write to the same stderr (journald's
/// stream, a file): each log line must be one `write(2)`, or two processes' lines mix (`A B`
/// then an empty line), and an access line can no longer be told from its neighbour. Before,
/// each line was two writes (simple_logger's `eprintln!`: the text, then the newline).
#[test]
#[ignore = "open (issue 15 review): simple_logger, a fixed core crate, writes a line as two write(2) calls; with --workers sharing stderr, lines of two processes can mix"]
fn with_workers_every_log_line_is_whole() {
    let server = Server::start(&["-v", "--workers", "2", "--echo-udp", "off"]);
    let addr = server.echo_tcp();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..250 {
                    let Ok(mut stream) = TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = stream.set_read_timeout(Some(TIMEOUT));
                    let _ = stream.write_all(b"x");
                    let mut back = [0; 1];
                    let _ = stream.read_exact(&mut back);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let text = server.stderr_text();
    // The kept stderr is its most recent bytes: its first line may start mid-line.
    let broken: Vec<&str> = text
        .lines()
        .skip(1)
        .filter(|line| {
            line.is_empty() || !line.starts_with("20") || line.matches(" [monoreactor").count() > 1
        })
        .take(5)
        .collect();
    let lines = text.lines().count();
    assert!(
        broken.is_empty(),
        "{} of {lines} lines are mixed, e.g. {broken:?}",
        broken.len()
    );
    assert!(lines >= 300, "{lines} lines");
}

/// A reload that lowers `max-client-memory` below what the clients hold now brings them under
/// it at once (the biggest holders closed with LIMIT_REACHED, as at any other time). Before,
/// the new budget was only checked when some connection's buffers grew: the reload said
/// "reloaded max client memory" and the server went on holding more than it, for as long as
/// the holders stayed still.
#[test]
fn a_reload_lowering_max_client_memory_sheds_at_once() {
    use monoreactor::proto::{ErrorCode, FrameType, HEADER_LEN};
    let dir = support::TempDir::new("review-memory");
    let path = dir.join("monoreactor.toml");
    std::fs::write(&path, "max-client-memory = 67108864\n").unwrap();
    let server = Server::start(&["--config", path.to_str().unwrap()]);
    let frame_len: u32 = 1 << 20;
    let mut header = vec![0; HEADER_LEN];
    monoreactor::proto::Header {
        frame_type: FrameType::EchoRequest,
        flags: monoreactor::proto::Flags::NONE,
        stream: 1,
        len: frame_len,
    }
    .emit(&mut header);
    let partial = vec![0x5a; frame_len as usize - 1];
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut client = support::framed_client(&server);
        client.send_raw(&header).unwrap();
        client.send_raw(&partial).unwrap();
        clients.push(client);
    }
    // Six parked frames, 6 MiB, well under 64 MiB: nobody is shed.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&path, "max-client-memory = 3145728\n").unwrap();
    server.signal(libc::SIGHUP);
    let mut shed = 0;
    for client in &mut clients {
        client
            .stream()
            .set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        if let Ok(frame) = client.recv_frame() {
            if frame.header.frame_type == FrameType::Error {
                let error = monoreactor::proto::ErrorMessage::parse(&frame.payload).unwrap();
                assert_eq!(error.code, ErrorCode::LimitReached, "{}", error.text);
                shed += 1;
            }
        }
    }
    assert!(
        shed >= 3,
        "6 MiB held and a new budget of 3 MiB: at least 3 of 6 must go, {shed} did\n{}",
        server.stderr_text()
    );
}
