//! The clients over TLS, library and command line, against the real server terminating TLS
//! itself (`serve --tls-cert --tls-key`, certificates made here and written as PEM files):
//! echo, exec, files and bench; and every TLS failure as one line and a non-zero exit: an
//! unknown CA, an expired certificate, the wrong name, a TLS client on the plaintext port, a
//! plaintext client on the TLS port; `--tls-insecure`'s warning.
//!
//! Two cases need a peer the real server cannot be, and keep the TLS-terminating proxy of
//! [`tls_proxy`]: a TLS server that agrees on no ALPN (the server always offers `monoreactor`)
//! and one that demands a client certificate (the server's `--tls-client-ca` asks for one
//! but lets a client without one in, for the token).

mod support;
#[path = "support/tls_proxy.rs"]
mod tls_proxy;

use std::fs;
use std::io::Cursor;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use monoreactor::client::exec::{Command as RemoteCommand, ExecClient};
use monoreactor::client::files::FileClient;
use monoreactor::client::{Client, ClientError, Target, TlsFailure, tls};
use monoreactor::proto::ErrorCode;
use monoreactor::proto::exec::Termination;
use support::exec::TEST_TOKEN;
use support::{Finished, Server, TempDir, run_cli, run_cli_with, seeded_bytes};
use tls_proxy::{ClientAuth, Leaf, Pki, ProxyOptions, TlsProxy};

/// Longest a command here may run.
const LIMIT: Duration = Duration::from_secs(30);
/// Connect and handshake timeout for library clients.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A CA, a real server speaking TLS with a certificate from it, and a directory for the PEM
/// files (the server's and the client's).
struct Rig {
    // First: the server is killed before its certificate's directory goes.
    server: Server,
    pki: Pki,
    dir: TempDir,
}

impl Rig {
    /// A plain server (no token, files on) with `pki`'s server certificate.
    fn new() -> Rig {
        Rig::serving(Pki::server_leaf, Server::start)
    }

    /// A server started by `start` with the TLS flags of the certificate `leaf` issues from
    /// the rig's CA ([`Pki::server_leaf`]: for `localhost` and 127.0.0.1).
    fn serving(leaf: impl FnOnce(&Pki) -> Leaf, start: impl FnOnce(&[&str]) -> Server) -> Rig {
        let pki = Pki::new();
        let dir = TempDir::new("tls-client");
        let leaf = leaf(&pki);
        let flags = server_flags(&leaf, dir.path());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let server = start(&flags);
        Rig { server, pki, dir }
    }

    /// The TLS endpoint: the server's framed listener.
    fn addr(&self) -> SocketAddr {
        self.server.framed()
    }

    /// A library target for it, trusting the test CA.
    fn target(&self) -> Target {
        Target::tls(self.addr().to_string(), self.pki.client_config(None))
    }

    /// `--addr tls://ADDR --tls-ca CA.pem`.
    fn flags(&self) -> Vec<String> {
        vec![
            "--addr".to_string(),
            format!("tls://{}", self.addr()),
            "--tls-ca".to_string(),
            self.ca_path(),
        ]
    }

    fn ca_path(&self) -> String {
        path_text(&self.pki.write_ca(self.dir.path()))
    }

    /// A file holding the exec server's token.
    fn token_file(&self) -> String {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.join("token");
        fs::write(&path, TEST_TOKEN).expect("write the token");
        // 0600, or the client warns that others can read it.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod the token");
        path_text(&path)
    }
}

/// `--tls-cert DIR/server.pem --tls-key DIR/server.key`, the files written from `leaf`.
fn server_flags(leaf: &Leaf, dir: &Path) -> Vec<String> {
    let (cert, key) = leaf.write(dir, "server");
    vec![
        "--tls-cert".to_string(),
        path_text(&cert),
        "--tls-key".to_string(),
        path_text(&key),
    ]
}

fn path_text(path: &Path) -> String {
    path.to_str().expect("UTF-8 temp path").to_string()
}

/// `monoreactor SUBCOMMAND FLAGS... REST...`.
fn cli(subcommand: &str, flags: &[String], rest: &[&str]) -> Finished {
    let mut args: Vec<&str> = subcommand.split(' ').collect();
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(rest);
    run_cli(&args, LIMIT)
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

/// A failure: non-zero exit and one line on stderr containing `text`.
#[track_caller]
fn failed_with(run: &Finished, text: &str) {
    assert!(!run.status.success(), "succeeded; stdout:\n{}", run.stdout);
    assert!(
        run.stderr.contains(text),
        "stderr lacks {text:?}:\n{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "one line:\n{}",
        run.stderr
    );
}

// === Echo ===

#[test]
fn library_echo_over_tls() {
    let rig = Rig::new();
    let mut client = Client::connect(rig.target(), TIMEOUT).expect("connect over TLS");
    assert!(client.is_tls());
    for size in [1, 100, 70_000] {
        let payload = seeded_bytes(size as u64, size);
        // Above the pre-authentication frame limit the server refuses; a server without a
        // token authenticates everyone, so every size here is fine.
        assert_eq!(
            client.echo(&payload).expect("echo"),
            payload,
            "{size} bytes"
        );
    }
    assert_eq!(
        rig.server.threads(),
        1,
        "the server terminates TLS on its one thread"
    );
}

#[test]
fn cli_echo_over_tls_by_scheme_flag_and_name() {
    let rig = Rig::new();
    let run = cli("echo", &rig.flags(), &["hello", "tls"]);
    assert_eq!(succeeded(&run), "hello tls\n");
    // --tls with a plain address, and a DNS name checked against the certificate's.
    let port = rig.addr().port().to_string();
    let flags = [
        "--tls".to_string(),
        "--addr".to_string(),
        format!("localhost:{port}"),
        "--tls-ca".to_string(),
        rig.ca_path(),
    ];
    assert_eq!(
        succeeded(&cli("echo", &flags, &["by", "name"])),
        "by name\n"
    );
}

// === Exec ===

#[test]
fn exec_over_tls_streams_stdin_stdout_stderr_and_the_exit_status() {
    let rig = Rig::serving(Pki::server_leaf, Server::start_exec);
    // More stdin than one window, so credit has to come back over TLS while output flows.
    let input = seeded_bytes(7, 3 << 20);
    let client = ExecClient::connect(rig.target(), Some(&token()), TIMEOUT).expect("connect");
    let running = client
        .start(&RemoteCommand::shell("cat; echo done >&2; exit 3"))
        .expect("start");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = running
        .finish(Some(Cursor::new(input.clone())), &mut out, &mut err)
        .expect("finish");
    assert_eq!(exit.termination, Termination::Exited(3));
    assert!(out == input, "{} bytes back of {}", out.len(), input.len());
    assert_eq!(err, b"done\n");

    // The command line: stdin from a file, the exit status passed through.
    let stdin_file = rig.dir.join("stdin");
    fs::write(&stdin_file, "hello over tls\n").expect("write stdin");
    let mut args = vec!["exec".to_string()];
    args.extend(rig.flags());
    args.extend(["--token-file".to_string(), rig.token_file()]);
    args.extend(["--", "sh", "-c", "tr a-z A-Z; echo oops >&2; exit 4"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_cli_with(&args, LIMIT, |command| {
        command.stdin(Stdio::from(fs::File::open(&stdin_file).expect("stdin")));
    });
    assert_eq!(run.status.code(), Some(4), "stderr: {}", run.stderr);
    assert_eq!(run.stdout, "HELLO OVER TLS\n");
    assert_eq!(run.stderr, "oops\n");
}

#[test]
fn exec_over_tls_forwards_a_signal() {
    let rig = Rig::serving(Pki::server_leaf, Server::start_exec);
    let client = ExecClient::connect(rig.target(), Some(&token()), TIMEOUT).expect("connect");
    let mut command = RemoteCommand::new(["sleep", "30"]);
    command.stdin = false;
    let running = client.start(&command).expect("start");
    running
        .signaller()
        .send(monoreactor::proto::exec::Signal::Term)
        .expect("SIGNAL");
    let exit = running
        .finish(None::<std::io::Empty>, &mut Vec::new(), &mut Vec::new())
        .expect("finish");
    assert_eq!(exit.shell_code(), 143);
    assert!(
        rig.server.wait_no_children(Duration::from_secs(5)),
        "the signalled command was reaped"
    );
}

fn token() -> monoreactor::Token {
    monoreactor::Token::new(TEST_TOKEN.to_vec()).expect("the test token")
}

// === Files ===

#[test]
fn files_over_tls_put_get_ls_stat_rm_mkdir() {
    let rig = Rig::new();
    let flags = rig.flags();
    let data = seeded_bytes(3, (5 << 20) + 12_345);
    let local = rig.dir.join("big.bin");
    fs::write(&local, &data).expect("write the local file");
    succeeded(&cli("mkdir", &flags, &["remote"]));
    succeeded(&cli("put", &flags, &[&path_text(&local), "remote/big.bin"]));
    let copy = rig.dir.join("copy.bin");
    succeeded(&cli("get", &flags, &["remote/big.bin", &path_text(&copy)]));
    assert!(
        fs::read(&copy).expect("the copy") == data,
        "the copy differs"
    );
    let listing = succeeded(&cli("ls", &flags, &["remote"])).to_string();
    assert!(listing.contains(&format!("- {} ", data.len())), "{listing}");
    assert!(listing.contains("big.bin"), "{listing}");
    let stat = succeeded(&cli("stat", &flags, &["--json", "remote/big.bin"])).to_string();
    assert!(stat.contains(&format!("\"size\":{}", data.len())), "{stat}");
    succeeded(&cli("rm", &flags, &["remote/big.bin", "remote"]));
    let after = cli("stat", &flags, &["remote"]);
    assert_eq!(after.status.code(), Some(1), "{}", after.stderr);

    // The library: a download through a sink, verified.
    let mut files = FileClient::connect(rig.target(), None, TIMEOUT).expect("connect");
    let hash = *blake3::hash(&data).as_bytes();
    files
        .put(
            "lib.bin",
            &mut Cursor::new(&data),
            data.len() as u64,
            hash,
            false,
            &mut |_, _| {},
        )
        .expect("put");
    let mut back = Vec::new();
    let got = files
        .get(
            "lib.bin",
            0,
            blake3::Hasher::new(),
            &mut back,
            &mut |_, _| {},
        )
        .expect("get");
    assert_eq!(got.hash, hash);
    assert!(back == data);
}

// === Bench ===

#[test]
fn bench_over_tls_says_so() {
    let rig = Rig::new();
    let flags = rig.flags();
    let run = cli(
        "bench echo",
        &flags,
        &["-c", "4", "-P", "2", "-d", "0.3", "--json"],
    );
    let report = succeeded(&run).to_string();
    assert!(report.contains("\"tls\":\"on\""), "{report}");
    let requests = report
        .split("\"requests\":")
        .nth(1)
        .and_then(|rest| rest.split([',', '}']).next())
        .and_then(|number| number.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(requests > 0, "{report}");
    let run = cli("bench get", &flags, &["-c", "2", "-s", "256K", "-d", "0.3"]);
    assert!(succeeded(&run).contains("tls"), "{}", run.stdout);
    let run = cli("bench probe", &flags, &["-d", "0.2"]);
    succeeded(&run);
    // Raw echo stays plaintext.
    let run = cli("bench udp", &flags, &["-d", "0.2"]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
}

// === Failures ===

#[test]
fn an_unknown_ca_is_named() {
    let rig = Rig::new();
    let other = Pki::new();
    let ca = other.write_ca(&rig.dir.join(""));
    let flags = [
        "--addr".to_string(),
        format!("tls://{}", rig.addr()),
        "--tls-ca".to_string(),
        path_text(&ca),
    ];
    failed_with(
        &cli("echo", &flags, &["x"]),
        "the server's certificate is not signed by a CA you trust (--tls-ca)",
    );
    let error = Client::connect(
        Target::tls(rig.addr().to_string(), other.client_config(None)),
        TIMEOUT,
    )
    .expect_err("an unknown CA");
    assert!(
        matches!(
            &error,
            ClientError::Tls {
                failure: TlsFailure::UnknownIssuer,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn an_expired_certificate_is_named() {
    // The server loads an expired certificate without a word (it is the client's to judge).
    let rig = Rig::serving(
        |pki| pki.leaf(&["localhost", "127.0.0.1"], true),
        Server::start,
    );
    failed_with(
        &cli("ls", &rig.flags(), &[]),
        "the server's certificate has expired",
    );
    let error = Client::connect(rig.target(), TIMEOUT).expect_err("an expired certificate");
    assert!(
        matches!(
            &error,
            ClientError::Tls {
                failure: TlsFailure::Expired,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn a_certificate_for_another_name_is_named() {
    let rig = Rig::serving(|pki| pki.leaf(&["elsewhere.example"], false), Server::start);
    let run = cli("echo", &rig.flags(), &["x"]);
    failed_with(
        &run,
        &format!(
            "the server's certificate is not valid for {}",
            rig.addr().ip()
        ),
    );
    assert!(run.stderr.contains("elsewhere.example"), "{}", run.stderr);
    // By name: localhost is not elsewhere.example either.
    let flags = [
        "--addr".to_string(),
        format!("tls://localhost:{}", rig.addr().port()),
        "--tls-ca".to_string(),
        rig.ca_path(),
    ];
    failed_with(
        &cli("echo", &flags, &["x"]),
        "the server's certificate is not valid for localhost",
    );
}

#[test]
fn a_tls_client_on_the_plaintext_port_is_told_to_drop_tls() {
    // A plaintext server: its framed port answers a ClientHello with a plaintext ERROR.
    let server = Server::start(&[]);
    let pki = Pki::new();
    let dir = TempDir::new("tls-on-plain");
    let flags = [
        "--addr".to_string(),
        format!("tls://{}", server.framed()),
        "--tls-ca".to_string(),
        path_text(&pki.write_ca(dir.path())),
    ];
    for command in ["echo", "ls"] {
        let rest: &[&str] = if command == "echo" { &["x"] } else { &[] };
        failed_with(
            &cli(command, &flags, rest),
            &format!(
                "the server at {} answered in plaintext: it does not speak TLS on this port (drop --tls)",
                server.framed()
            ),
        );
    }
    let error = Client::connect(
        Target::tls(server.framed_str(), pki.client_config(None)),
        TIMEOUT,
    )
    .expect_err("plaintext port");
    assert!(
        matches!(
            &error,
            ClientError::Tls {
                failure: TlsFailure::Plaintext,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn a_plaintext_client_on_the_tls_port_is_told_to_connect_with_tls() {
    let rig = Rig::new();
    let flags = ["--addr".to_string(), rig.addr().to_string()];
    // The server's own answer, a plaintext ERROR, in one line.
    let text = "this port speaks TLS: connect with --tls";
    failed_with(&cli("echo", &flags, &["x"]), text);
    failed_with(&cli("ls", &flags, &[]), text);
    let mut exec = flags.to_vec();
    exec.extend(["--token-file".to_string(), rig.token_file()]);
    failed_with(&cli("exec", &exec, &["--", "true"]), text);
    let error = Client::connect(Target::plain(rig.addr().to_string()), TIMEOUT)
        .expect_err("a plaintext HELLO on the TLS port");
    assert_eq!(error.server_code(), Some(ErrorCode::BadHello), "{error:?}");
    assert!(error.to_string().contains(text), "{error}");
}

#[test]
fn tls_insecure_warns_and_still_works() {
    let rig = Rig::new();
    let flags = [
        "--addr".to_string(),
        format!("tls://{}", rig.addr()),
        "--tls-insecure".to_string(),
    ];
    let run = cli("echo", &flags, &["unchecked"]);
    assert_eq!(succeeded(&run), "unchecked\n");
    assert!(
        run.stderr.contains("warning: --tls-insecure") && run.stderr.contains("for tests only"),
        "{}",
        run.stderr
    );
    let config = tls::insecure_config(None).expect("insecure config");
    let mut client =
        Client::connect(Target::tls(rig.addr().to_string(), config), TIMEOUT).expect("connect");
    assert_eq!(client.echo(b"x").expect("echo"), b"x");
}

#[test]
fn without_tls_ca_the_system_roots_are_trusted_and_the_test_ca_is_not() {
    let rig = Rig::new();
    let flags = ["--addr".to_string(), format!("tls://{}", rig.addr())];
    let run = cli("echo", &flags, &["x"]);
    assert!(!run.status.success(), "{}", run.stdout);
    // A machine with a CA store: the test CA is not in it. One without: nothing to trust.
    assert!(
        run.stderr
            .contains("the server's certificate is not signed by a CA you trust (--tls-ca)")
            || run.stderr.contains("no CA certificates found"),
        "{}",
        run.stderr
    );
}

#[test]
fn tls_flags_are_checked_before_connecting() {
    let dir = TempDir::new("tls-flags");
    let missing = path_text(&dir.join("missing.pem"));
    failed_with(
        &cli("echo", &["--tls-ca".to_string(), missing.clone()], &["x"]),
        "--tls-ca",
    );
    let run = run_cli(&["echo", "--tls-cert", &missing, "x"], LIMIT);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let run = run_cli(&["echo", "--addr", "http://127.0.0.1:1", "x"], LIMIT);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
}

// === Peers the server cannot be (the proxy) ===

/// A proxy with `adjust`ed options in front of a plain server, and a directory for the CA.
fn proxied(adjust: impl FnOnce(&mut ProxyOptions)) -> (TlsProxy, Pki, TempDir, Server) {
    let server = Server::start(&[]);
    let pki = Pki::new();
    let mut options = ProxyOptions::new(&pki);
    adjust(&mut options);
    let proxy = TlsProxy::start(server.framed(), options, &pki);
    (proxy, pki, TempDir::new("tls-proxied"), server)
}

#[test]
fn no_alpn_agreement_is_named() {
    // The proxy: the server offers `monoreactor` to every client, so it never disagrees.
    let (proxy, pki, dir, _server) = proxied(|options| {
        options.alpn = vec![b"something-else".to_vec()];
    });
    let flags = [
        "--addr".to_string(),
        format!("tls://{}", proxy.addr()),
        "--tls-ca".to_string(),
        path_text(&pki.write_ca(dir.path())),
    ];
    failed_with(&cli("echo", &flags, &["x"]), "no ALPN agreement");
}

#[test]
fn a_client_certificate_is_presented_and_demanded() {
    // The proxy: the server's `--tls-client-ca` asks for a certificate but never demands one
    // (a client without one may authenticate with the token); tests/tls_access.rs has the
    // server mapping a presented one to its credential.
    let (proxy, pki, dir, _server) = proxied(|options| {
        options.client_auth = ClientAuth::Required;
    });
    let leaf = pki.leaf(&["client.example"], false);
    let (cert, key) = leaf.write(dir.path(), "client");
    let flags = vec![
        "--addr".to_string(),
        format!("tls://{}", proxy.addr()),
        "--tls-ca".to_string(),
        path_text(&pki.write_ca(dir.path())),
    ];
    let mut with_cert = flags.clone();
    with_cert.extend([
        "--tls-cert".to_string(),
        path_text(&cert),
        "--tls-key".to_string(),
        path_text(&key),
    ]);
    assert_eq!(succeeded(&cli("echo", &with_cert, &["mine"])), "mine\n");
    assert_eq!(proxy.client_fingerprints(), vec![leaf.fingerprint()]);

    // Without one: the server's alert, in words.
    failed_with(
        &cli("echo", &flags, &["x"]),
        "the server requires a client certificate (--tls-cert and --tls-key)",
    );
    // The library, presenting it.
    let config = pki.client_config(Some(&leaf));
    let mut client =
        Client::connect(Target::tls(proxy.addr().to_string(), config), TIMEOUT).expect("connect");
    assert_eq!(client.echo(b"y").expect("echo"), b"y");
    assert_eq!(proxy.client_fingerprints().len(), 2);
}

/// Not a check, a measurement to run by hand (`--ignored --nocapture`, best with
/// `--release`): GET and PUT of 64 MiB through the library, to a plaintext server and to one
/// that terminates TLS itself.
#[test]
#[ignore]
fn measure_get_and_put_throughput() {
    let plain = Server::start(&[]);
    let rig = Rig::new();
    let data = seeded_bytes(9, 64 << 20);
    let hash = *blake3::hash(&data).as_bytes();
    for (label, target) in [
        ("plain", Target::plain(plain.framed_str())),
        ("tls", rig.target()),
    ] {
        let mut files = FileClient::connect(target, None, TIMEOUT).expect("connect");
        let started = std::time::Instant::now();
        files
            .put(
                "m.bin",
                &mut Cursor::new(&data),
                data.len() as u64,
                hash,
                false,
                &mut |_, _| {},
            )
            .expect("put");
        let put = started.elapsed();
        let started = std::time::Instant::now();
        files
            .get(
                "m.bin",
                0,
                blake3::Hasher::new(),
                &mut std::io::sink(),
                &mut |_, _| {},
            )
            .expect("get");
        let get = started.elapsed();
        let rate = |elapsed: Duration| data.len() as f64 / elapsed.as_secs_f64() / 1e6;
        println!(
            "{label}: put {:.0} MB/s, get {:.0} MB/s",
            rate(put),
            rate(get)
        );
    }
}
