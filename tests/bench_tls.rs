//! `monoreactor bench` over TLS where the load is not framed: raw echo inside TLS, short
//! connections that are each a full TLS 1.3 handshake (with an echo, or the handshake alone),
//! and idle TLS sessions. The targets are the real server's framed TLS port (`serve
//! --tls-cert --tls-key`) and a TLS raw echo written here (rustls over a std socket, a thread
//! per connection) standing in for a TLS-terminating proxy in front of an echo server, such as
//! nginx's stream ssl. Runs are short: these check the generator, not anyone's speed.

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};
use support::{Finished, Server, TempDir, retry, run_cli};
use tls_support::{ServerFiles, TestCa, provider};

/// Longest any bench process here may run.
const LIMIT: Duration = Duration::from_secs(30);

fn bench(args: &[&str]) -> Finished {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    run_cli(&all, LIMIT)
}

#[track_caller]
fn succeeded(run: &Finished) -> String {
    assert!(
        run.status.success(),
        "exit {}; stdout:\n{}\nstderr:\n{}",
        run.status,
        run.stdout,
        run.stderr
    );
    run.stdout.clone()
}

/// The one line a failed run wrote on stderr, after checking its exit code.
#[track_caller]
fn failed(run: &Finished, code: i32) -> String {
    assert_eq!(run.status.code(), Some(code), "{run:?}");
    let line = run.stderr.trim();
    assert!(!line.contains('\n'), "one line on stderr: {run:?}");
    line.to_string()
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

/// Count and errors from the text report's second line ("N UNIT in S s, E errors").
#[track_caller]
fn counts(text: &str, unit: &str) -> (u64, u64) {
    let line = text
        .lines()
        .find(|line| line.contains(&format!(" {unit} in ")))
        .unwrap_or_else(|| panic!("no count of {unit} in {text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let count = words[0].parse().expect("a count");
    let errors_at = words
        .iter()
        .position(|word| word.starts_with("error"))
        .expect("an error count");
    (count, words[errors_at - 1].parse().expect("an error count"))
}

/// A server with TLS on its framed listener, its files in `dir`.
fn tls_server(dir: &TempDir) -> (Server, ServerFiles) {
    let files = ServerFiles::write(dir.path());
    let args = files.flags();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(&args), files)
}

/// `tls://ADDR` and the CA flag that trusts `dir`'s `ca.pem`.
fn tls_flags(addr: SocketAddr, dir: &TempDir) -> [String; 4] {
    [
        "--addr".to_string(),
        format!("tls://{addr}"),
        "--tls-ca".to_string(),
        dir.path().join("ca.pem").display().to_string(),
    ]
}

// === A TLS raw echo ===

/// A raw echo inside TLS 1.3, on loopback: a thread per connection, each a rustls session
/// over a std socket echoing whatever plaintext comes. rustls' server defaults otherwise:
/// it sends session tickets after the handshake (as nginx does), so a client that kept one
/// could resume, which [`TlsEcho::resumed`] would count.
struct TlsEcho {
    addr: SocketAddr,
    /// Handshakes completed, counted when their connection ends.
    handshakes: Arc<AtomicU64>,
    /// Of those, resumed ones.
    resumed: Arc<AtomicU64>,
}

impl TlsEcho {
    /// Serves a certificate from `ca` and, if `alpn` is not empty, accepts only those ALPN
    /// protocols (a client offering none is still accepted, as rustls does).
    fn start(ca: &TestCa, alpn: &[&[u8]]) -> TlsEcho {
        let identity = ca.server();
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(vec![identity.der.clone()], identity.key())
            .expect("the server certificate");
        config.alpn_protocols = alpn.iter().map(|name| name.to_vec()).collect();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let echo = TlsEcho {
            addr: listener.local_addr().expect("local address"),
            handshakes: Arc::new(AtomicU64::new(0)),
            resumed: Arc::new(AtomicU64::new(0)),
        };
        let (handshakes, resumed) = (Arc::clone(&echo.handshakes), Arc::clone(&echo.resumed));
        thread::spawn(move || {
            for socket in listener.incoming() {
                let Ok(socket) = socket else { continue };
                let config = Arc::clone(&config);
                let (handshakes, resumed) = (Arc::clone(&handshakes), Arc::clone(&resumed));
                thread::spawn(move || {
                    let kind = echo_one(socket, config);
                    if kind.is_some() {
                        handshakes.fetch_add(1, Ordering::Relaxed);
                    }
                    if kind == Some(HandshakeKind::Resumed) {
                        resumed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        echo
    }

    /// Waits (bounded) until at least `count` handshakes are counted; the count then.
    fn handshakes_at_least(&self, count: u64) -> u64 {
        retry(Duration::from_secs(5), || {
            let seen = self.handshakes.load(Ordering::Relaxed);
            (seen >= count).then_some(seen)
        })
        .unwrap_or_else(|| self.handshakes.load(Ordering::Relaxed))
    }
}

/// Echoes one connection until it ends; the kind of handshake it completed, if it did.
fn echo_one(socket: TcpStream, config: Arc<ServerConfig>) -> Option<HandshakeKind> {
    socket.set_read_timeout(Some(LIMIT)).ok()?;
    socket.set_write_timeout(Some(LIMIT)).ok()?;
    socket.set_nodelay(true).ok()?;
    let mut tls = StreamOwned::new(ServerConnection::new(config).ok()?, socket);
    let mut chunk = vec![0; 64 << 10];
    loop {
        match tls.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tls.write_all(&chunk[..n]).is_err() {
                    break;
                }
            }
        }
    }
    if tls.conn.is_handshaking() {
        return None;
    }
    tls.conn.handshake_kind()
}

// === Raw echo inside TLS ===

#[test]
fn raw_echo_inside_tls_pipelines_and_says_tls_on() {
    let dir = TempDir::new("bench-tls-raw");
    let files = ServerFiles::write(dir.path());
    let echo = TlsEcho::start(&files.ca, &[]);
    let tls = tls_flags(echo.addr, &dir);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();

    let mut args = vec![
        "echo", "--raw", "-c", "2", "-P", "4", "-s", "1K", "-n", "200",
    ];
    args.extend(&tls);
    args.push("--json");
    let json = succeeded(&bench(&args)).trim().to_string();
    assert!(json.contains("\"what\":\"echo raw\""), "{json}");
    assert!(json.contains("\"tls\":\"on\""), "{json}");
    assert_eq!(json_number(&json, "requests"), Some(200.0), "{json}");
    assert_eq!(json_number(&json, "depth"), Some(4.0), "{json}");
    assert_eq!(json_number(&json, "errors_total"), Some(0.0), "{json}");

    // Echoes of several TLS records each (16 KiB of plaintext per record at most).
    let mut args = vec![
        "echo", "--raw", "-c", "1", "-P", "2", "-s", "40K", "-n", "20",
    ];
    args.extend(&tls);
    let text = succeeded(&bench(&args));
    assert_eq!(counts(&text, "requests"), (20, 0), "{text}");
    assert!(text.contains("tls on"), "{text}");
}

#[test]
fn raw_echo_offers_no_alpn_unless_told() {
    let dir = TempDir::new("bench-tls-alpn");
    let files = ServerFiles::write(dir.path());
    // A server that accepts only `x-echo`, or no ALPN at all.
    let echo = TlsEcho::start(&files.ca, &[b"x-echo"]);
    let tls = tls_flags(echo.addr, &dir);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let run = |alpn: Option<&str>| {
        let mut args = vec!["echo", "--raw", "-c", "1", "-n", "20"];
        args.extend(&tls);
        if let Some(alpn) = alpn {
            args.extend(["--tls-alpn", alpn]);
        }
        bench(&args)
    };
    assert_eq!(counts(&succeeded(&run(None)), "requests"), (20, 0));
    assert_eq!(
        counts(&succeeded(&run(Some("x-echo"))), "requests"),
        (20, 0)
    );
    // A handshake that fails is the connection's failure: 255 (issue 16's convention).
    let line = failed(&run(Some("monoreactor")), 255);
    assert!(
        line.contains("accepts no ALPN protocol offered (monoreactor)"),
        "{line}"
    );
}

// === Short connections, each a full handshake ===

#[test]
fn connect_over_tls_is_a_full_handshake_each_never_resumed() {
    let dir = TempDir::new("bench-tls-connect");
    let files = ServerFiles::write(dir.path());
    let echo = TlsEcho::start(&files.ca, &[]);
    let tls = tls_flags(echo.addr, &dir);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();

    // The handshake and one echo of -s bytes inside it, per connection.
    let mut args = vec!["connect", "-c", "2", "-s", "100", "-n", "30", "--json"];
    args.extend(&tls);
    let json = succeeded(&bench(&args)).trim().to_string();
    assert!(json.contains("\"unit\":\"handshake\""), "{json}");
    assert!(json.contains("\"tls\":\"on\""), "{json}");
    assert_eq!(json_number(&json, "requests"), Some(30.0), "{json}");
    assert_eq!(json_number(&json, "errors_total"), Some(0.0), "{json}");
    assert!(
        json_number(&json, "mb_per_s").expect("MB/s") > 0.0,
        "{json}"
    );

    // The handshake alone.
    let mut args = vec!["connect", "--handshake-only", "-c", "2", "-n", "30"];
    args.extend(&tls);
    let text = succeeded(&bench(&args));
    assert_eq!(counts(&text, "handshakes"), (30, 0), "{text}");
    assert!(
        text.contains("handshake/s") && text.contains("handshake_only true"),
        "{text}"
    );

    // 60 measured, and the address checks' two; none resumed, though every session was
    // offered tickets.
    let handshakes = echo.handshakes_at_least(62);
    assert!(handshakes >= 62, "{handshakes} handshakes");
    assert_eq!(echo.resumed.load(Ordering::Relaxed), 0);
}

#[test]
fn handshake_only_against_the_framed_tls_port_reports_server_cpu() {
    let dir = TempDir::new("bench-tls-handshake");
    let (server, _files) = tls_server(&dir);
    let tls = tls_flags(server.framed(), &dir);
    let pid = server.pid().to_string();
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.splice(0..0, ["connect", "--handshake-only", "-c", "2", "-d", "1"]);
    args.extend(["--pid", &pid]);
    let text = succeeded(&bench(&args));
    let (handshakes, errors) = counts(&text, "handshakes");
    assert!(handshakes > 0 && errors == 0, "{text}");
    let cpu = text
        .split("CPU per handshake: server ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no server CPU per handshake in {text}"));
    assert!(cpu > 0.0, "{text}");
}

// === Idle sessions ===

#[test]
fn idle_over_tls_holds_framed_and_raw_sessions() {
    let dir = TempDir::new("bench-tls-idle");
    let (server, files) = tls_server(&dir);
    let pid = server.pid().to_string();
    let tls = tls_flags(server.framed(), &dir);
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.splice(0..0, ["idle", "-c", "20", "--pid", &pid]);
    let text = succeeded(&bench(&args));
    assert!(
        text.contains("20 idle connections") && text.contains("per connection"),
        "{text}"
    );

    // Raw: the handshake and nothing more; the memory measured is this test's own.
    let echo = TlsEcho::start(&files.ca, &[]);
    let me = std::process::id().to_string();
    let tls = tls_flags(echo.addr, &dir);
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.splice(0..0, ["idle", "--raw", "-c", "10", "--pid", &me]);
    let text = succeeded(&bench(&args));
    assert!(text.contains("10 idle connections"), "{text}");
}

// === Refusals ===

#[test]
fn tls_misuse_gets_a_hint() {
    let dir = TempDir::new("bench-tls-misuse");
    let (server, _files) = tls_server(&dir);
    let raw = server.echo_tcp();

    // A plaintext echo port sends the ClientHello back.
    let tls = tls_flags(raw, &dir);
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.splice(0..0, ["echo", "--raw", "-d", "0.3"]);
    let line = failed(&bench(&args), 255);
    assert!(line.contains("sent our TLS ClientHello back"), "{line}");

    // Raw echo inside TLS to the framed TLS port: its ERROR frame gives it away.
    let tls = tls_flags(server.framed(), &dir);
    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.splice(0..0, ["connect", "-d", "0.3"]);
    let line = failed(&bench(&args), 255);
    assert!(line.contains("speaks the framed protocol"), "{line}");

    // Usage errors, before any connection.
    let raw = raw.to_string();
    for args in [
        vec!["connect", "--handshake-only", "--addr", &raw, "-d", "0.3"],
        vec!["echo", "--redis", "--tls", "--addr", &raw, "-d", "0.3"],
        vec![
            "echo",
            "--raw",
            "--tls-alpn",
            "x",
            "--addr",
            &raw,
            "-d",
            "0.3",
        ],
    ] {
        let line = failed(&bench(&args), 2);
        assert!(line.contains("tls") || line.contains("TLS"), "{line}");
    }
    // --tls-alpn is for raw echo; the framed protocol's is monoreactor.
    let run = bench(&["echo", "--tls-alpn", "x", "--addr", &raw]);
    assert_eq!(run.status.code(), Some(2), "{run:?}");
}
