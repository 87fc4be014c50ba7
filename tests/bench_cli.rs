//! `monoreactor bench` as a user runs it: every subcommand briefly against a real server,
//! reports with sane numbers, `--json` with its keys, errors counted by kind, the hint for a
//! wrong port, and partial results when the server dies mid-run. Runs are short (`-d 0.3` or
//! `-n 200`): these check the generator's behaviour, never the server's speed.

mod support;

use std::thread;
use std::time::Duration;

use support::exec::TEST_TOKEN;
use support::{Finished, Server, run_cli};

/// Longest any bench process here may run.
const LIMIT: Duration = Duration::from_secs(20);

fn bench(args: &[&str]) -> Finished {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    run_cli(&all, LIMIT)
}

#[track_caller]
fn succeeded(run: &Finished) -> &str {
    assert!(
        run.status.success(),
        "exit {}; stdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    &run.stdout
}

/// The number after `"key":` in a one-line JSON object (`null` is `None`).
#[track_caller]
fn json_number(json: &str, key: &str) -> Option<f64> {
    let pattern = format!("\"{key}\":");
    let at = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pattern.len();
    let text: String = json[at..]
        .chars()
        .take_while(|c| !matches!(c, ',' | '}'))
        .collect();
    if text == "null" {
        return None;
    }
    Some(
        text.parse()
            .unwrap_or_else(|_| panic!("{key} is {text:?} in {json}")),
    )
}

/// Checks the shape of a `--json` report: one object on one line, every key present, the
/// latency percentiles in order.
#[track_caller]
fn check_json(json: &str) {
    let json = json.trim();
    assert!(
        json.starts_with('{') && json.ends_with('}') && !json.contains('\n'),
        "{json}"
    );
    assert_eq!(
        json.matches('{').count(),
        json.matches('}').count(),
        "{json}"
    );
    for key in [
        "what",
        "addr",
        "unit",
        "requests",
        "duration_s",
        "throughput",
        "mb_per_s",
        "errors_total",
        "errors",
        "latency_us",
        "server_cpu_us_per_request",
        "client_cpu_us_per_request",
        "generator_busy",
        "complete",
        "ended_early",
    ] {
        assert!(json.contains(&format!("\"{key}\":")), "{key} in {json}");
    }
    let order: Vec<f64> = ["min", "p50", "p90", "p99", "p99_9", "max"]
        .iter()
        .map(|key| json_number(json, key).expect("a latency"))
        .collect();
    assert!(order.windows(2).all(|pair| pair[0] <= pair[1]), "{json}");
}

/// Requests and errors from the text report's second line ("N requests in S s, E errors").
#[track_caller]
fn counts(text: &str, unit: &str) -> (u64, u64) {
    let line = text
        .lines()
        .find(|line| line.contains(&format!(" {unit} in ")))
        .unwrap_or_else(|| panic!("no count of {unit} in {text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let requests = words[0].parse().expect("a count");
    let errors_at = words
        .iter()
        .position(|word| word.starts_with("error"))
        .expect("an error count");
    let errors = words[errors_at - 1].parse().expect("an error count");
    (requests, errors)
}

#[test]
fn echo_framed_and_raw_report_sane_numbers() {
    let server = Server::start(&[]);
    let framed = server.framed_str();
    let raw = server.echo_tcp().to_string();
    let pid = server.pid().to_string();

    let run = bench(&[
        "echo", "--addr", &framed, "-c", "2", "-d", "0.3", "--pid", &pid,
    ]);
    let text = succeeded(&run);
    let (requests, errors) = counts(text, "requests");
    assert!(requests > 50 && errors == 0, "{text}");
    for part in [
        "echo framed",
        "req/s",
        "MB/s",
        "latency us min",
        "p99.9",
        "CPU per req: server",
        "generator busy",
    ] {
        assert!(text.contains(part), "{part} in {text}");
    }

    let run = bench(&[
        "echo", "--raw", "--addr", &raw, "-c", "2", "-P", "4", "-s", "1K", "-n", "200", "--json",
    ]);
    let json = succeeded(&run);
    check_json(json);
    assert!(json.contains("\"what\":\"echo raw\""), "{json}");
    assert_eq!(json_number(json, "requests"), Some(200.0), "{json}");
    assert_eq!(json_number(json, "depth"), Some(4.0), "{json}");
    assert_eq!(json_number(json, "errors_total"), Some(0.0), "{json}");
    assert!(json.contains("\"complete\":true"), "{json}");
    let throughput = json_number(json, "throughput").expect("a rate");
    let megabytes = json_number(json, "mb_per_s").expect("MB/s");
    // 1 KiB each way per request.
    let expected = throughput * 2048.0 / 1e6;
    assert!(
        (megabytes - expected).abs() <= expected * 0.01 + 0.01,
        "{json}"
    );

    // What the flag style from before the subcommands did, in the subcommand form it became.
    let run = bench(&[
        "echo", "--raw", "--addr", &raw, "-c", "1", "-d", "0.2", "--warmup", "0.05",
    ]);
    assert!(succeeded(&run).contains("echo raw"), "{}", run.stdout);
    // The flags themselves are gone: a usage error, before any connection.
    let run = bench(&["--addr", &raw, "--conns", "1", "--secs", "0.2"]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--addr"), "{}", run.stderr);
}

#[test]
fn open_loop_sends_at_the_rate() {
    let server = Server::start(&[]);
    let raw = server.echo_tcp().to_string();
    let udp = server.echo_udp().to_string();
    for (what, addr) in [("echo", &raw), ("udp", &udp)] {
        let mut args = vec![what];
        if what == "echo" {
            args.push("--raw");
        }
        args.extend([
            "--addr", addr, "-c", "4", "--rate", "1000", "-d", "0.4", "--json",
        ]);
        let run = bench(&args);
        let json = succeeded(&run);
        check_json(json);
        assert_eq!(json_number(json, "rate"), Some(1000.0), "{json}");
        // 1000/s for 0.4 s: about 400, whatever the scheduler does to this process.
        let requests = json_number(json, "requests").expect("a count");
        assert!((250.0..=410.0).contains(&requests), "{json}");
    }
}

#[test]
fn udp_and_connect_measure_an_echo_server() {
    let server = Server::start(&[]);
    let raw = server.echo_tcp().to_string();
    let udp = server.echo_udp().to_string();

    let run = bench(&["udp", "--addr", &udp, "-c", "2", "-P", "2", "-n", "200"]);
    let text = succeeded(&run);
    let (datagrams, errors) = counts(text, "datagrams");
    assert_eq!((datagrams, errors), (200, 0), "{text}");
    assert!(text.contains("datagram/s"), "{text}");

    let run = bench(&[
        "connect", "--addr", &raw, "-c", "2", "-d", "0.3", "--rst", "--json",
    ]);
    let json = succeeded(&run);
    check_json(json);
    assert!(json.contains("\"unit\":\"conn\""), "{json}");
    assert!(
        json_number(json, "requests").expect("a count") > 10.0,
        "{json}"
    );
    assert_eq!(json_number(json, "errors_total"), Some(0.0), "{json}");
}

#[test]
fn get_put_and_exec_report_transfers_and_commands() {
    let server = Server::start_exec(&[]);
    let framed = server.framed_str();
    let token = server.scratch().join("token");
    let token = token.to_str().expect("UTF-8 temp path");
    assert_eq!(server.token(), TEST_TOKEN);

    for what in ["get", "put"] {
        let run = bench(&[
            what,
            "--addr",
            &framed,
            "--token-file",
            token,
            "-c",
            "2",
            "-s",
            "64K",
            "-n",
            "20",
            "--json",
        ]);
        let json = succeeded(&run);
        check_json(json);
        assert!(json.contains("\"unit\":\"transfer\""), "{json}");
        assert_eq!(json_number(json, "requests"), Some(20.0), "{json}");
        assert_eq!(json_number(json, "size"), Some(65536.0), "{json}");
        assert_eq!(json_number(json, "errors_total"), Some(0.0), "{json}");
        assert!(json_number(json, "mb_per_s").expect("MB/s") > 0.0, "{json}");
    }
    // The benchmark's files are gone afterwards.
    let left: Vec<_> = std::fs::read_dir(server.root())
        .expect("the root")
        .filter_map(Result::ok)
        .map(|entry| entry.file_name())
        .filter(|name| *name != monoreactor::internal::INDEX_NAME)
        .collect();
    assert!(left.is_empty(), "left in the root: {left:?}");

    let run = bench(&["exec", "--addr", &framed, "--token-file", token, "-n", "10"]);
    let text = succeeded(&run);
    assert_eq!(counts(text, "commands"), (10, 0), "{text}");

    // A command that fails is an error of its kind, not a success: with nothing else, the
    // server refused every request (exit 1), the report printed all the same.
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
}

#[test]
fn stream_reports_server_memory_and_echo_latency() {
    let server = Server::start_exec(&[]);
    let framed = server.framed_str();
    let token = server.scratch().join("token");
    let token = token.to_str().expect("UTF-8 temp path");
    let pid = server.pid().to_string();
    let run = bench(&[
        "stream",
        "--addr",
        &framed,
        "--token-file",
        token,
        "--pid",
        &pid,
        "-s",
        "1M",
        "--read-rate",
        "20000000",
    ]);
    let text = succeeded(&run);
    assert!(
        text.starts_with("stream of 1048576 bytes") && text.contains("echoes of 64 B meanwhile"),
        "{text}"
    );
}

#[test]
fn idle_and_probe_still_run() {
    let server = Server::start(&[]);
    let framed = server.framed_str();
    let pid = server.pid().to_string();
    let run = bench(&["idle", "--addr", &framed, "-c", "20", "--pid", &pid]);
    assert!(
        succeeded(&run).contains("20 idle connections"),
        "{}",
        run.stdout
    );
    let run = bench(&["probe", "--addr", &framed, "-d", "0.3"]);
    assert!(succeeded(&run).contains("echoes of 64 B"), "{}", run.stdout);
}

#[test]
fn errors_from_the_server_are_counted_by_code() {
    // Two connections allowed, four asked for: the others get SERVER_BUSY and are dropped.
    let server = Server::start(&["--max-conns", "2"]);
    let framed = server.framed_str();
    thread::sleep(Duration::from_millis(100));
    let run = bench(&["echo", "--addr", &framed, "-c", "4", "-d", "0.3", "--json"]);
    let json = succeeded(&run);
    check_json(json);
    assert!(
        json_number(json, "SERVER_BUSY").is_some_and(|busy| busy >= 2.0),
        "{json}"
    );
    assert!(
        json_number(json, "requests").expect("a count") > 0.0,
        "{json}"
    );
}

#[test]
fn the_wrong_port_gets_a_hint() {
    let server = Server::start(&[]);
    let framed = server.framed_str();
    let raw = server.echo_tcp().to_string();

    let failure = |run: &Finished| {
        // The wrong peer is the connection's failure, not a refusal (issue 16's convention).
        assert_eq!(run.status.code(), Some(255), "{run:?}");
        assert!(run.stdout.is_empty(), "{run:?}");
        run.stderr.trim().to_string()
    };
    let line = failure(&bench(&["echo", "--addr", &raw, "-d", "0.3"]));
    assert!(
        line.contains("our own HELLO") && line.contains("raw echo port"),
        "{line}"
    );
    let line = failure(&bench(&["echo", "--raw", "--addr", &framed, "-d", "0.3"]));
    assert!(line.contains("speaks the framed protocol"), "{line}");
    let line = failure(&bench(&["connect", "--addr", &framed, "-d", "0.3"]));
    assert!(line.contains("speaks the framed protocol"), "{line}");
    let line = failure(&bench(&["get", "--addr", &raw, "-n", "1"]));
    assert!(line.contains("our own HELLO"), "{line}");
    // Nothing on that UDP port: ICMP says so.
    let line = failure(&bench(&["udp", "--addr", &framed, "-d", "0.3"]));
    assert!(line.contains("UDP echo port"), "{line}");
}

#[test]
fn a_server_that_dies_mid_run_leaves_partial_results() {
    let server = Server::start(&[]);
    let framed = server.framed_str();
    let raw = server.echo_tcp().to_string();
    let runs: Vec<_> = [
        vec!["echo", "--addr", &framed, "-c", "2", "-d", "10", "--json"],
        vec!["connect", "--addr", &raw, "-c", "2", "-d", "10"],
    ]
    .into_iter()
    .map(|args| {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bench(&args)
        })
    })
    .collect();
    thread::sleep(Duration::from_millis(700));
    server.signal(libc::SIGKILL);
    let mut runs = runs
        .into_iter()
        .map(|run| run.join().expect("bench thread"));

    let echo = runs.next().expect("echo run");
    // A run cut short by the server's death: the connection failed, 255.
    assert_eq!(echo.status.code(), Some(255), "{echo:?}");
    let json = echo.stdout.trim();
    check_json(json);
    assert!(json.contains("\"complete\":false"), "{json}");
    assert!(
        json_number(json, "requests").expect("a count") > 0.0,
        "{json}"
    );
    assert!(
        json_number(json, "errors_total").expect("errors") >= 1.0,
        "{json}"
    );
    assert!(echo.stderr.contains("partial results"), "{echo:?}");

    let connect = runs.next().expect("connect run");
    assert_eq!(connect.status.code(), Some(255), "{connect:?}");
    assert!(
        connect.stdout.contains("ended early") && connect.stdout.contains("conn/s"),
        "{connect:?}"
    );
    let (connections, _) = counts(&connect.stdout, "connections");
    assert!(connections > 0, "{connect:?}");
}

/// A stand-in for redis-server that knows two RESP commands, PING and ECHO (or, with
/// `refuse_echo`, answers ECHO with an error as redis does an unknown command). Serves for at
/// most `LIMIT`.
fn fake_redis(refuse_echo: bool) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Instant;

    /// The length of the RESP array of bulk strings at the start of `buf` and its items, once
    /// it is complete.
    fn parse(buf: &[u8]) -> Option<(usize, Vec<Vec<u8>>)> {
        fn line(buf: &[u8], at: usize, marker: u8) -> Option<(usize, usize)> {
            let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
            assert_eq!(buf[at], marker, "RESP marker");
            let n = std::str::from_utf8(&buf[at + 1..end]).ok()?.parse().ok()?;
            Some((n, end + 2))
        }
        let (count, mut at) = line(buf, 0, b'*')?;
        let mut items = Vec::new();
        for _ in 0..count {
            let (len, start) = line(buf, at, b'$')?;
            items.push(buf.get(start..start + len)?.to_vec());
            at = start + len + 2;
            if buf.len() < at {
                return None;
            }
        }
        Some((at, items))
    }

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    listener.set_nonblocking(true).expect("nonblocking");
    thread::spawn(move || {
        let until = Instant::now() + LIMIT;
        while Instant::now() < until {
            let Ok((mut stream, _)) = listener.accept() else {
                thread::sleep(Duration::from_millis(5));
                continue;
            };
            stream.set_nonblocking(false).expect("blocking");
            stream.set_read_timeout(Some(LIMIT)).expect("timeout");
            thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0; 16 << 10];
                while let Ok(n @ 1..) = stream.read(&mut chunk) {
                    buf.extend_from_slice(&chunk[..n]);
                    let mut out = Vec::new();
                    while let Some((used, items)) = parse(&buf) {
                        match items[0].as_slice() {
                            b"PING" => out.extend_from_slice(b"+PONG\r\n"),
                            b"ECHO" if refuse_echo => out.extend_from_slice(b"-ERR no ECHO\r\n"),
                            b"ECHO" => {
                                out.extend(format!("${}\r\n", items[1].len()).bytes());
                                out.extend_from_slice(&items[1]);
                                out.extend_from_slice(b"\r\n");
                            }
                            other => panic!("unexpected command {other:?}"),
                        }
                        buf.drain(..used);
                    }
                    if stream.write_all(&out).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn echo_redis_measures_a_resp_server_and_stops_at_its_errors() {
    let addr = fake_redis(false).to_string();
    let run = bench(&[
        "echo", "--redis", "--addr", &addr, "-c", "2", "-P", "3", "-s", "100", "-n", "300",
        "--json",
    ]);
    let json = succeeded(&run);
    check_json(json);
    assert!(json.contains("\"what\":\"echo redis\""), "{json}");
    assert_eq!(json_number(json, "requests"), Some(300.0), "{json}");
    assert_eq!(json_number(json, "errors_total"), Some(0.0), "{json}");

    let refusing = fake_redis(true).to_string();
    let run = bench(&[
        "echo", "--redis", "--addr", &refusing, "-c", "1", "-n", "10",
    ]);
    assert!(!run.status.success(), "{}", run.stdout);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("not a RESP bulk reply to ECHO"), "{all}");

    // A raw echo port is not redis: the PING probe says so at once.
    let server = Server::start(&[]);
    let raw = server.echo_tcp().to_string();
    let run = bench(&["echo", "--redis", "--addr", &raw, "-n", "10"]);
    assert!(!run.status.success(), "{}", run.stdout);
    assert!(
        run.stderr.contains("does not answer PING as redis does"),
        "{}",
        run.stderr
    );
}
