//! SIGHUP on a real server: the access file and the TLS material are re-read, validated whole,
//! and swapped only if every file is good; a bad file keeps what was in use; a connection keeps
//! the grant it authenticated with; `--workers` passes the signal to every worker, and only a
//! good one; with `--config`, the access file the configuration names is re-read.

mod support;

#[path = "support/tls.rs"]
mod tls_support;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use monoreactor::Token;
use monoreactor::client::files::FileClient;
use monoreactor::client::{ClientError, Target};
use monoreactor::proto::ErrorCode;
use support::{Server, TempDir, run_cli};
use tls_support::{ALPN, ServerFiles, TestCa, client_config};

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test waits for the server to act on a SIGHUP.
const RELOAD_WAIT: Duration = Duration::from_secs(5);

/// `monoreactor access add --file FILE --name NAME ARGS`: the token it printed.
fn add(file: &Path, name: &str, args: &[&str]) -> Token {
    let file = file.to_str().expect("utf-8 path");
    let mut all = vec!["access", "add", "--file", file, "--name", name];
    all.extend_from_slice(args);
    let done = run_cli(&all, TIMEOUT);
    assert!(done.status.success(), "access add: {}", done.stderr);
    Token::new(done.stdout.trim().as_bytes().to_vec()).expect("a token")
}

fn connect(target: impl Into<Target>, token: &Token) -> Result<FileClient, ClientError> {
    FileClient::connect(target, Some(token), TIMEOUT)
}

/// What a MKDIR with `token` gets: `Ok` or the server's error code.
fn mkdir_with(server: &Server, token: &Token, path: &str) -> Result<(), Option<ErrorCode>> {
    let mut client = connect(server.framed_str().as_str(), token).map_err(|e| e.server_code())?;
    client.mkdir(path).map_err(|error| error.server_code())
}

/// Polls `check` until it holds or [`RELOAD_WAIT`] passes.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + RELOAD_WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {RELOAD_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A root and an access file with one read-only credential, `reader`.
struct Files {
    dir: TempDir,
    access: std::path::PathBuf,
    reader: Token,
}

impl Files {
    fn new(label: &str) -> Files {
        let dir = TempDir::new(label);
        fs::create_dir_all(dir.path().join("root")).expect("root");
        let access = dir.path().join("access.toml");
        let reader = add(&access, "reader", &["--files", "read"]);
        Files {
            dir,
            access,
            reader,
        }
    }

    fn serve_flags(&self) -> Vec<String> {
        vec![
            "--access".into(),
            self.access.display().to_string(),
            "--root".into(),
            self.dir.path().join("root").display().to_string(),
        ]
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("root")
    }
}

fn strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

#[test]
fn sighup_swaps_the_access_file_and_open_connections_keep_their_grant() {
    let files = Files::new("reload-access");
    let server = Server::start(&strs(&files.serve_flags()));
    assert_eq!(
        mkdir_with(&server, &files.reader, "before"),
        Err(Some(ErrorCode::Forbidden)),
        "read-only at start"
    );
    // Authenticated before the reload: keeps the read-only grant it got.
    let mut open = connect(server.framed_str().as_str(), &files.reader).expect("connect");
    open.list("").expect("a reader may list");

    // The new file: `reader` may now write, `writer` is new, and nothing else changed.
    let text = fs::read_to_string(&files.access).expect("read access file");
    fs::write(
        &files.access,
        text.replace("files = \"read\"", "files = \"write\""),
    )
    .expect("rewrite");
    let writer = add(&files.access, "writer", &["--files", "write"]);
    server.signal(libc::SIGHUP);
    eventually("the new credential is accepted", || {
        mkdir_with(&server, &writer, "by-writer").is_ok()
    });
    assert!(files.root().join("by-writer").is_dir());
    assert_eq!(
        mkdir_with(&server, &files.reader, "by-reader"),
        Ok(()),
        "a new connection gets the new grant"
    );
    assert_eq!(
        open.mkdir("by-old-connection").map_err(|e| e.server_code()),
        Err(Some(ErrorCode::Forbidden)),
        "an open connection keeps the grant it authenticated with"
    );
    assert!(!files.root().join("by-old-connection").exists());

    // A credential taken out of the file is refused from then on.
    let text = fs::read_to_string(&files.access).expect("read access file");
    let without_writer = text
        .split("[[credential]]")
        .filter(|entry| !entry.contains("\"writer\""))
        .collect::<Vec<_>>()
        .join("[[credential]]");
    fs::write(&files.access, without_writer).expect("rewrite");
    server.signal(libc::SIGHUP);
    eventually("the removed credential is refused", || {
        matches!(
            connect(server.framed_str().as_str(), &writer),
            Err(error) if error.server_code() == Some(ErrorCode::AuthFailed)
        )
    });
    assert!(server.stderr_text().is_empty() || !server.stderr_text().contains("panicked"));
}

#[test]
fn a_bad_access_file_on_sighup_keeps_the_one_in_use_and_says_why() {
    let files = Files::new("reload-bad-access");
    let server = Server::start(&strs(&files.serve_flags()));
    let good = fs::read_to_string(&files.access).expect("read access file");
    // A good credential added beside an unknown key: the whole file is refused, so the good
    // one must not be let in either.
    let newcomer = add(&files.access, "newcomer", &["--files", "write"]);
    let text = fs::read_to_string(&files.access).expect("read access file");
    fs::write(&files.access, format!("{text}colour = \"blue\"\n")).expect("rewrite");
    server.signal(libc::SIGHUP);
    eventually("the error is logged", || {
        server
            .stderr_text()
            .contains("keeping the configuration in use")
    });
    let log = server.stderr_text();
    assert!(log.contains("colour"), "names what is wrong: {log}");
    assert_eq!(
        connect(server.framed_str().as_str(), &newcomer)
            .err()
            .and_then(|error| error.server_code()),
        Some(ErrorCode::AuthFailed),
        "nothing of a bad file is taken"
    );
    assert!(connect(server.framed_str().as_str(), &files.reader).is_ok());

    // A file that is gone is the same.
    fs::remove_file(&files.access).expect("remove");
    server.signal(libc::SIGHUP);
    eventually("the missing file is logged", || {
        server.stderr_text().contains("cannot read")
    });
    assert!(connect(server.framed_str().as_str(), &files.reader).is_ok());
    fs::write(&files.access, good).expect("restore");
}

/// A TLS client trusting only `ca`: whether its handshake and HELLO succeed.
fn tls_connects(server: &Server, ca: &TestCa, token: &Token) -> bool {
    let config = client_config(&ca.der, &[ALPN], None);
    let target = Target::tls(server.framed_str(), config);
    connect(&target, token).is_ok()
}

#[test]
fn sighup_swaps_the_certificate_and_a_bad_one_keeps_the_one_in_use() {
    let files = Files::new("reload-tls");
    let tls_dir = files.dir.path().join("tls");
    fs::create_dir_all(&tls_dir).expect("tls dir");
    let first = ServerFiles::write(&tls_dir);
    let mut flags = files.serve_flags();
    flags.extend(first.flags());
    let server = Server::start(&strs(&flags));
    assert!(tls_connects(&server, &first.ca, &files.reader));

    // A key that does not parse: the old certificate stays.
    let first_key = fs::read(&first.key).expect("key");
    fs::write(&first.key, b"-----BEGIN PRIVATE KEY-----\nnot base64\n").expect("break key");
    server.signal(libc::SIGHUP);
    eventually("the error is logged", || {
        server
            .stderr_text()
            .contains("keeping the configuration in use")
    });
    assert!(tls_connects(&server, &first.ca, &files.reader));
    fs::write(&first.key, first_key).expect("restore key");

    // A certificate from another CA, written over the same paths.
    let second_ca = TestCa::new("the renewed CA");
    let renewed = second_ca.server();
    fs::write(&first.cert, &renewed.cert_pem).expect("cert");
    fs::write(&first.key, &renewed.key_pem).expect("key");
    server.signal(libc::SIGHUP);
    eventually("new handshakes present the new certificate", || {
        tls_connects(&server, &second_ca, &files.reader)
    });
    assert!(
        !tls_connects(&server, &first.ca, &files.reader),
        "the old certificate is no longer presented"
    );
}

#[test]
fn workers_pass_sighup_to_every_worker() {
    let files = Files::new("reload-workers");
    let mut flags = files.serve_flags();
    flags.extend(["--workers".to_string(), "2".to_string()]);
    let server = Server::start(&strs(&flags));
    let writer_file = fs::read_to_string(&files.access).expect("read");
    let writer = add(&files.access, "writer", &["--files", "write"]);
    server.signal(libc::SIGHUP);
    // Connections spread over both workers (the kernel balances SO_REUSEPORT by address):
    // every one of many must know the new credential.
    eventually("every worker knows the new credential", || {
        (0..16).all(|_| connect(server.framed_str().as_str(), &writer).is_ok())
    });
    assert!(writer_file.contains("reader"));
    assert_eq!(
        support::threads(server.pid()),
        1,
        "Threads: 1 in the supervisor"
    );
}

#[test]
fn workers_do_not_get_a_reload_the_supervisor_found_bad() {
    let files = Files::new("reload-workers-bad");
    let mut flags = files.serve_flags();
    flags.extend(["--workers".to_string(), "2".to_string(), "-v".to_string()]);
    let server = Server::start(&strs(&flags));
    eventually("both workers are ready", || {
        server
            .stderr_text()
            .lines()
            .filter(|line| line.contains("workers] worker ") && line.ends_with(" ready"))
            .count()
            >= 2
    });
    let text = fs::read_to_string(&files.access).expect("read access file");
    fs::write(&files.access, format!("{text}colour = \"blue\"\n")).expect("rewrite");
    server.signal(libc::SIGHUP);
    eventually("the supervisor says it kept the reload back", || {
        server.stderr_text().contains("not passed on")
    });
    // Give a forwarded signal time to show, had there been one.
    std::thread::sleep(Duration::from_millis(300));
    let log = server.stderr_text();
    assert_eq!(
        log.matches("colour").count(),
        1,
        "the error is logged once, by the supervisor: {log}"
    );
    assert!(connect(server.framed_str().as_str(), &files.reader).is_ok());
}

#[test]
fn sighup_with_a_config_file_rereads_the_access_file_it_names() {
    let files = Files::new("reload-config-access");
    let config = files.dir.path().join("monoreactor.toml");
    fs::write(
        &config,
        format!("access = \"{}\"\n", files.access.display()),
    )
    .expect("write the configuration");
    let server = Server::start(&[
        "--config",
        config.to_str().expect("utf-8"),
        "--root",
        files.root().to_str().expect("utf-8"),
    ]);
    assert_eq!(
        mkdir_with(&server, &files.reader, "before"),
        Err(Some(ErrorCode::Forbidden)),
        "the access file named in the configuration is in force"
    );
    let writer = add(&files.access, "writer", &["--files", "write"]);
    server.signal(libc::SIGHUP);
    eventually("the new credential is accepted", || {
        mkdir_with(&server, &writer, "by-writer").is_ok()
    });
}
