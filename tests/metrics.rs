//! `serve --metrics`, access lines and `monoreactor stats`, against the real server: the
//! counters move by exactly what the traffic did, every request of a file or a command has
//! its access line (who, what, how much, how it ended), the metrics port survives what a
//! client may send it, `promtool` accepts what it serves, and `stats` prints it.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::exec::{Scratch, TEST_TOKEN, write_token_file};
use support::{Server, retry, run_cli};

const TIMEOUT: Duration = Duration::from_secs(20);

/// One HTTP exchange with the metrics port: the whole answer (the server closes after it).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics port");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.write_all(request).expect("send the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    String::from_utf8(answer).expect("a text answer")
}

/// `GET /metrics`: the exposition's body.
fn scrape_text(addr: SocketAddr) -> String {
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    body.to_string()
}

/// Every sample of a scrape, by `name{labels}`.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    scrape_text(addr)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// How much `series` moved from `before` to `after` (a series not there yet counts as 0).
fn moved(before: &HashMap<String, f64>, after: &HashMap<String, f64>, series: &str) -> f64 {
    after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
}

/// A server with exec, files and an access file holding the credential `alice` (its token
/// file is returned), with info logging (where access lines are) and a metrics port.
fn start(scratch: &Path) -> (Server, String) {
    let access = scratch.join("access.toml");
    let access_arg = access.to_str().unwrap().to_string();
    let added = run_cli(
        &[
            "access",
            "add",
            "--file",
            &access_arg,
            "--name",
            "alice",
            "--files",
            "write",
            "--exec",
        ],
        TIMEOUT,
    );
    assert!(added.status.success(), "access add: {}", added.stderr);
    let alice = write_token_file(scratch, added.stdout.trim().as_bytes());
    let alice_token = scratch.join("alice.token");
    std::fs::rename(&alice, &alice_token).unwrap();
    let server_token = write_token_file(scratch, TEST_TOKEN);
    let root = scratch.join("root");
    std::fs::create_dir(&root).unwrap();
    let server = Server::start(&[
        "-v",
        "--metrics",
        "127.0.0.1:0",
        "--exec",
        "--token-file",
        server_token.to_str().unwrap(),
        "--access",
        &access_arg,
        "--root",
        root.to_str().unwrap(),
    ]);
    (server, alice_token.to_str().unwrap().to_string())
}

/// `monoreactor ARGS --addr FRAMED --token-file TOKEN`, which must succeed unless `fails`.
fn client(server: &Server, token: &str, args: &[&str], fails: bool) -> String {
    let framed = server.framed_str();
    let (command, rest) = args.split_first().unwrap();
    let mut full = vec![*command, "--addr", &framed, "--token-file", token];
    full.extend_from_slice(rest);
    let finished = run_cli(&full, TIMEOUT);
    assert_eq!(
        finished.status.success(),
        !fails,
        "monoreactor {full:?}: {}",
        finished.stderr
    );
    finished.stdout
}

/// The access lines the server has logged so far.
fn access_lines(server: &Server) -> Vec<String> {
    server
        .stderr_text()
        .lines()
        .filter(|line| line.contains("[monoreactor::access]"))
        .map(str::to_string)
        .collect()
}

#[test]
fn counters_move_by_exactly_the_traffic_and_each_request_has_its_access_line() {
    let scratch = Scratch::new("metrics");
    let (server, token) = start(scratch.path());
    let metrics = server.addr("metrics").expect("a metrics port");
    let before = scrape(metrics);

    let upload = scratch.path().join("upload.bin");
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(&upload, &bytes).unwrap();
    client(&server, &token, &["mkdir", "d"], false);
    client(
        &server,
        &token,
        &["put", upload.to_str().unwrap(), "d/u.bin"],
        false,
    );
    let copy = scratch.path().join("copy.bin");
    client(
        &server,
        &token,
        &["get", "d/u.bin", copy.to_str().unwrap()],
        false,
    );
    assert_eq!(std::fs::read(&copy).unwrap(), bytes);
    let listed = client(&server, &token, &["ls", "d"], false);
    assert!(listed.contains("u.bin"), "{listed}");
    let framed = server.framed_str();
    let exec = run_cli(
        &[
            "exec",
            "--addr",
            &framed,
            "--token-file",
            &token,
            "-n",
            "--",
            "sh",
            "-c",
            "echo out; exit 3",
        ],
        TIMEOUT,
    );
    assert_eq!(exec.status.code(), Some(3), "{}", exec.stderr);
    client(&server, &token, &["rm", "d/u.bin"], false);
    // A name with a newline: its line must not be two lines.
    client(&server, &token, &["stat", "no\nsuch"], true);
    assert_eq!(
        client(&server, &token, &["echo", "hello"], false),
        "hello\n"
    );
    let mut raw = TcpStream::connect(server.echo_tcp()).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    raw.write_all(&[b'r'; 1000]).unwrap();
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    let mut echoed = Vec::new();
    raw.read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed.len(), 1000);
    drop(raw);
    let udp = support::udp();
    udp.send_to(&[b'u'; 100], server.echo_udp()).unwrap();
    let mut reply = [0; 200];
    let (len, _) = udp.recv_from(&mut reply).expect("the UDP echo");
    assert_eq!(len, 100);

    // The raw echo's counters move when its connection is driven, its line at the close:
    // wait for the line, then scrape.
    retry(Duration::from_secs(5), || {
        access_lines(&server)
            .iter()
            .any(|line| line.contains("\"RAW-ECHO\""))
            .then_some(())
    })
    .expect("the raw echo connection's access line");
    let after = scrape(metrics);
    let expect = |series: &str, by: f64| {
        assert_eq!(
            moved(&before, &after, series),
            by,
            "{series} moved by {}, expected {by}",
            moved(&before, &after, series)
        );
    };
    for (kind, by) in [
        ("mkdir", 1.0),
        ("put", 1.0),
        ("get", 1.0),
        ("exec", 1.0),
        ("stat", 1.0),
        ("echo", 1.0),
        ("list", 1.0),
        ("rm", 1.0),
    ] {
        expect(
            &format!("monoreactor_requests_total{{kind=\"{kind}\"}}"),
            by,
        );
    }
    expect("monoreactor_errors_total{code=\"NOT_FOUND\"}", 1.0);
    expect("monoreactor_commands_started_total", 1.0);
    expect(
        "monoreactor_command_exits_total{cause=\"exit_nonzero\"}",
        1.0,
    );
    expect("monoreactor_command_exits_total{cause=\"exit_0\"}", 0.0);
    expect("monoreactor_transfers_total{result=\"ok\"}", 3.0);
    expect(
        "monoreactor_transfer_bytes_total{direction=\"put\"}",
        100_000.0,
    );
    expect(
        "monoreactor_transfer_bytes_total{direction=\"get\"}",
        100_000.0,
    );
    expect("monoreactor_bytes_in_total{service=\"raw_echo\"}", 1000.0);
    expect("monoreactor_bytes_out_total{service=\"raw_echo\"}", 1000.0);
    expect("monoreactor_bytes_in_total{service=\"udp\"}", 100.0);
    expect("monoreactor_bytes_out_total{service=\"udp\"}", 100.0);
    expect("monoreactor_udp_datagrams_echoed_total", 1.0);
    expect(
        "monoreactor_connections_accepted_total{service=\"raw_echo\"}",
        1.0,
    );
    // This scrape's own connection.
    expect(
        "monoreactor_connections_accepted_total{service=\"metrics\"}",
        1.0,
    );
    assert!(
        moved(
            &before,
            &after,
            "monoreactor_bytes_in_total{service=\"framed\"}"
        ) > 100_000.0
    );
    assert!(
        moved(
            &before,
            &after,
            "monoreactor_bytes_out_total{service=\"framed\"}"
        ) > 100_000.0
    );
    assert!(
        after["monoreactor_loop_turn_seconds_count"]
            > before["monoreactor_loop_turn_seconds_count"]
    );
    assert_eq!(after["monoreactor_commands_running"], 0.0);

    let lines = access_lines(&server);
    let line = |needle: &str| {
        lines
            .iter()
            .find(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no access line with {needle:?} in {lines:#?}"))
            .clone()
    };
    let put = line("\"PUT d/u.bin\"");
    assert!(
        put.contains("127.0.0.1:")
            && put.contains(" alice ")
            && put.contains(" OK in=100000 out=0 ms="),
        "{put}"
    );
    let get = line("\"GET d/u.bin\"");
    assert!(
        get.contains("127.0.0.1:")
            && get.contains(" alice ")
            && get.contains(" OK in=0 out=100000 ms="),
        "{get}"
    );
    let exec = line("\"EXEC sh -c 'echo out; exit 3'\"");
    assert!(
        exec.contains(" alice ") && exec.contains(" exit=3 in=0 out=4 ms="),
        "{exec}"
    );
    let list = line("\"LIST d\"");
    assert!(list.contains(" alice \"LIST d\" OK in=0 out="), "{list}");
    let rm = line("\"RM d/u.bin\"");
    assert!(rm.contains(" alice \"RM d/u.bin\" OK "), "{rm}");
    let stat = line("\"STAT no\\x0asuch\"");
    assert!(stat.contains(" NOT_FOUND in=0 out=0 "), "{stat}");
    let raw = line("\"RAW-ECHO\"");
    assert!(
        raw.contains(" - \"RAW-ECHO\" CLOSED in=1000 out=1000 "),
        "{raw}"
    );
    let echo = line("\"ECHO x1\"");
    assert!(echo.contains(" alice \"ECHO x1\" CLOSED "), "{echo}");
    // Nothing a client named reached the log unescaped: every line starts with the logger's
    // timestamp and level (a forged line would not).
    for text in server.stderr_text().lines() {
        let (stamp, rest) = text.split_once(' ').unwrap_or(("", text));
        assert!(
            stamp.len() == "2026-12-07T19:18:56.123Z".len()
                && stamp.ends_with('Z')
                && ["INFO ", "WARN ", "ERROR", "DEBUG", "TRACE"]
                    .iter()
                    .any(|level| rest.starts_with(level)),
            "a log line that is not a log line: {text:?}"
        );
    }
}

#[test]
fn bad_http_gets_400_or_431_and_the_metrics_port_goes_on() {
    let server = Server::start(&["--metrics", "127.0.0.1:0", "--echo-udp", "off"]);
    let metrics = server.addr("metrics").expect("a metrics port");
    let garbage = http(metrics, b"\x16\x03\x01\x00\xff garbage\r\n\r\n");
    assert!(
        garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{garbage}"
    );
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(20_000, b'a');
    let too_large = http(metrics, &huge);
    assert!(
        too_large.starts_with("HTTP/1.1 431 "),
        "{}",
        too_large.lines().next().unwrap_or("")
    );
    let missing = http(metrics, b"GET /nothing HTTP/1.1\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    // Split across writes, as a slow client sends it.
    let mut stream = TcpStream::connect(metrics).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    for piece in [&b"GET /met"[..], b"rics HTTP/1.1\r\nHo", b"st: x\r\n\r\n"] {
        stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    // Still serving, and still serving the clients.
    let samples = scrape(metrics);
    assert_eq!(samples["monoreactor_connections"], 0.0);
    assert_eq!(
        support::framed_client(&server).echo(b"alive").unwrap(),
        b"alive"
    );
}

#[test]
fn metrics_off_loopback_is_refused_without_insecure() {
    let finished = run_cli(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--echo-tcp",
            "off",
            "--echo-udp",
            "off",
            "--metrics",
            "0.0.0.0:0",
        ],
        TIMEOUT,
    );
    assert!(!finished.status.success());
    assert!(
        finished.stderr.contains("refusing --metrics on 0.0.0.0:0"),
        "{}",
        finished.stderr
    );
}

#[test]
fn promtool_accepts_the_exposition() {
    let Ok(status) = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    else {
        println!("skipped: promtool not found (Debian's `prometheus` package has it)");
        return;
    };
    assert!(status.success(), "promtool --version failed");
    let server = Server::start(&["--metrics", "127.0.0.1:0", "--echo-udp", "off"]);
    // Some traffic, so that labelled series and the histogram have values.
    assert_eq!(support::framed_client(&server).echo(b"x").unwrap(), b"x");
    let text = scrape_text(server.addr("metrics").unwrap());
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = check.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn stats_prints_the_counters_and_says_in_one_line_when_it_cannot() {
    let server = Server::start(&["--metrics", "127.0.0.1:0", "--echo-udp", "off"]);
    let metrics = server.addr("metrics").unwrap().to_string();
    let finished = run_cli(&["stats", "--addr", &metrics], TIMEOUT);
    assert!(finished.status.success(), "{}", finished.stderr);
    let rows: Vec<&str> = finished.stdout.lines().collect();
    let connections = rows
        .iter()
        .find(|row| row.starts_with("connections "))
        .expect("a connections row");
    assert!(connections.ends_with(" 0"), "{connections}");
    assert!(
        rows.iter()
            .any(|row| row.starts_with("requests ") && row.contains("kind=\"echo\"")),
        "{}",
        finished.stdout
    );
    // The columns line up: every number starts at the same column.
    let columns: Vec<usize> = rows
        .iter()
        .filter_map(|row| {
            let (start, value) = row.rsplit_once(' ')?;
            value.parse::<f64>().ok().map(|_| start.len())
        })
        .collect();
    assert!(
        columns.len() > 10 && columns.iter().all(|&column| column == columns[0]),
        "{}",
        finished.stdout
    );

    // Nothing listening there any more.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let failed = run_cli(&["stats", "--addr", &closed], TIMEOUT);
    assert_eq!(failed.status.code(), Some(255));
    assert_eq!(failed.stderr.lines().count(), 1, "{}", failed.stderr);
    assert!(
        failed
            .stderr
            .starts_with(&format!("monoreactor: stats from {closed}: cannot connect")),
        "{}",
        failed.stderr
    );
}

#[test]
fn each_worker_serves_its_own_counters_on_its_own_port() {
    // Two consecutive free ports (the kernel may hand one out meanwhile: retried below).
    let base = (0..20)
        .find_map(|_| {
            let first = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
            let port = first.local_addr().ok()?.port();
            let _second = std::net::TcpListener::bind(("127.0.0.1", port.checked_add(1)?)).ok()?;
            Some(port)
        })
        .expect("two consecutive free ports");
    let metrics = format!("127.0.0.1:{base}");
    let server = Server::start(&["--workers", "2", "--metrics", &metrics, "--echo-udp", "off"]);
    let workers = [
        SocketAddr::from(([127, 0, 0, 1], base)),
        SocketAddr::from(([127, 0, 0, 1], base + 1)),
    ];
    // Both workers up (each binds its port as it starts).
    let accepted = |addr: SocketAddr| -> Option<f64> {
        let mut stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(TIMEOUT)).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        answer
            .lines()
            .find(|line| {
                line.starts_with("monoreactor_connections_accepted_total{service=\"framed\"}")
            })?
            .rsplit_once(' ')?
            .1
            .parse()
            .ok()
    };
    let before: Vec<f64> = workers
        .iter()
        .map(|&addr| {
            retry(Duration::from_secs(10), || accepted(addr))
                .unwrap_or_else(|| panic!("worker metrics at {addr}: {}", server.stderr_text()))
        })
        .collect();
    for _ in 0..8 {
        assert_eq!(support::framed_client(&server).echo(b"w").unwrap(), b"w");
    }
    let after: Vec<f64> = workers
        .iter()
        .map(|&addr| accepted(addr).unwrap())
        .collect();
    // The kernel spread the 8 connections; together the workers counted each once.
    assert_eq!(
        after.iter().sum::<f64>() - before.iter().sum::<f64>(),
        8.0,
        "before {before:?}, after {after:?}"
    );
}

#[test]
fn refused_requests_are_all_counted_but_their_lines_are_throttled() {
    let scratch = Scratch::new("metrics-refused");
    let (server, _) = start(scratch.path());
    let metrics = server.addr("metrics").unwrap();
    let before = scrape(metrics);
    // No token: every EXEC is refused UNAUTHENTICATED, on its own stream, at line rate.
    let mut client = support::framed_client_raw(&server);
    client
        .hello(monoreactor::proto::Hello::with_credentials(&[]))
        .expect("HELLO without a token");
    let mut frames = Vec::new();
    for stream in 1..=50 {
        frames.extend(support::exec::exec_frame(
            stream,
            &support::exec::request(&["true"]),
        ));
    }
    client.send_raw(&frames).unwrap();
    for stream in 1..=50 {
        support::expect_error(
            &mut client,
            stream,
            monoreactor::proto::ErrorCode::Unauthenticated,
        );
    }
    let after = scrape(metrics);
    assert_eq!(
        moved(
            &before,
            &after,
            "monoreactor_errors_total{code=\"UNAUTHENTICATED\"}"
        ),
        50.0
    );
    assert_eq!(
        moved(&before, &after, "monoreactor_requests_total{kind=\"exec\"}"),
        50.0
    );
    // The line is written before the refusals go out, but stderr is read by another thread:
    // wait for it rather than race it.
    let refused: Vec<String> = support::retry(std::time::Duration::from_secs(5), || {
        let lines: Vec<String> = access_lines(&server)
            .into_iter()
            .filter(|line| line.contains("UNAUTHENTICATED"))
            .collect();
        (!lines.is_empty()).then_some(lines)
    })
    .unwrap_or_default();
    assert!(
        !refused.is_empty() && refused.len() <= 2,
        "one line a second, not one per refusal: {refused:#?}"
    );
    assert!(
        refused[0].contains(" - \"EXEC true\" UNAUTHENTICATED "),
        "{}",
        refused[0]
    );
}
