//! Client certificates mapped to scoped credentials, end to end: a real `serve --tls-cert
//! --tls-key --tls-client-ca CA --access FILE` whose file names two client keys, `alice`
//! (`root = "team/a"`, `files = "read"`) and `bob` (`files = "write"`, `exec = ["echo"]`), and
//! a token credential; clients that present `--tls-cert/--tls-key` and no token.
//!
//! For each: what it may do works, and everything else is refused with nothing created, run
//! or revealed: alice's writes are FORBIDDEN, none of the escape forms of
//! tests/access_scope.rs's table leaves `team/a`, and her paths are relative to it; bob puts
//! and runs `echo` but not `sh`. A certificate from another CA is refused in the handshake; one
//! from the right CA whose key the file does not name may only echo (`Access::authenticate`:
//! no credentials and an unknown key is an anonymous connection); a wrong token is
//! AUTH_FAILED whatever the certificate; a token credential works over TLS too. The key an
//! entry needs is the one `openssl` prints (docs/SECURITY.md, *The file*).

mod support;

#[path = "support/requests.rs"]
mod requests;
#[path = "support/tls_proxy.rs"]
mod tls_proxy;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use monoreactor::client::{Client, ClientError, OwnedFrame, Target, TlsFailure};
use monoreactor::proto::exec::Termination;
use monoreactor::proto::files::Entries;
use monoreactor::proto::{ErrorCode, FrameType, SessionFlags};
use requests::{error_of, exchange, exec, get, output_of, path_request, put, snapshot};
use support::{Finished, Server, TempDir, run_cli};
use tls_proxy::{Leaf, Pki};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The token of the `reader-token` credential (its BLAKE3 is in the file).
const TOKEN: &str = "a-token-for-the-reader-over-tls-0123456789";

/// A root (`team/a/inside.txt`, `team/a/sub/`, `team/b/secret.txt`, `top.txt`), a server CA
/// and a client CA with alice's, bob's and carol's certificates (carol's key is in no entry),
/// the access file, and the server.
struct Setup {
    // First: the server goes before the files it reads.
    server: Server,
    pki: Pki,
    alice: Leaf,
    bob: Leaf,
    carol: Leaf,
    dir: TempDir,
}

impl Setup {
    fn new(label: &str) -> Setup {
        let dir = TempDir::new(label);
        let root = dir.join("root");
        fs::create_dir_all(root.join("team/a/sub")).unwrap();
        fs::create_dir_all(root.join("team/b")).unwrap();
        fs::write(root.join("team/a/inside.txt"), b"inside").unwrap();
        fs::write(root.join("team/b/secret.txt"), b"secret").unwrap();
        fs::write(root.join("top.txt"), b"top").unwrap();

        let (pki, clients) = (Pki::new(), Pki::new());
        let (alice, bob, carol) = (
            clients.leaf(&["alice.example"], false),
            clients.leaf(&["bob.example"], false),
            clients.leaf(&["carol.example"], false),
        );
        let access = format!(
            r#"[[credential]]
name = "alice"
key = "{}"
root = "team/a"
files = "read"

[[credential]]
name = "bob"
key = "{}"
files = "write"
exec = ["echo"]

[[credential]]
name = "reader-token"
token = "{}"
root = "team/b"
files = "read"
"#,
            fingerprint(&alice, dir.path(), "alice"),
            fingerprint(&bob, dir.path(), "bob"),
            monoreactor::token_hash(TOKEN.as_bytes()),
        );
        let access_file = dir.join("access.toml");
        fs::write(&access_file, access).unwrap();
        let (cert, key) = pki.server_leaf().write(dir.path(), "server");
        let client_ca = dir.join("clients.pem");
        fs::write(&client_ca, &clients.ca_pem).unwrap();
        pki.write_ca(dir.path());
        let server = Server::start(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            client_ca.to_str().unwrap(),
            "--access",
            access_file.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            // After the helper's `-q`: debug, where each handshake's client key is logged.
            "-v",
            "-v",
        ]);
        Setup {
            server,
            pki,
            alice,
            bob,
            carol,
            dir,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// A TLS target trusting the server's CA and presenting `leaf`.
    fn target(&self, leaf: Option<&Leaf>) -> Target {
        Target::tls(self.server.framed_str(), self.pki.client_config(leaf))
    }

    /// A connection presenting `leaf` and `credentials` in HELLO; its HELLO_OK flags.
    fn connect(&self, leaf: Option<&Leaf>, credentials: &[u8]) -> (Client, SessionFlags) {
        let (client, ok) = Client::connect_with(self.target(leaf), credentials, TIMEOUT)
            .unwrap_or_else(|error| panic!("connect: {error}"));
        assert!(client.is_tls());
        (client, ok.flags)
    }

    /// `--addr tls://ADDR --tls-ca CA [--tls-cert NAME.pem --tls-key NAME.key]`.
    fn flags(&self, leaf: Option<(&Leaf, &str)>) -> Vec<String> {
        let mut flags = vec![
            "--addr".to_string(),
            format!("tls://{}", self.server.framed()),
            "--tls-ca".to_string(),
            self.dir.join("ca.pem").display().to_string(),
        ];
        if let Some((leaf, name)) = leaf {
            let (cert, key) = leaf.write(self.dir.path(), name);
            flags.extend([
                "--tls-cert".to_string(),
                cert.display().to_string(),
                "--tls-key".to_string(),
                key.display().to_string(),
            ]);
        }
        flags
    }
}

/// The key fingerprint an entry needs for `leaf`, as a user gets it from the certificate file
/// with openssl (docs/SECURITY.md), checked against the server's own
/// ([`monoreactor::key_fingerprint`], what it matches entries with). Without openssl, the
/// server's, with a note.
fn fingerprint(leaf: &Leaf, dir: &Path, name: &str) -> String {
    let ours = monoreactor::key_fingerprint(&leaf.der)
        .expect("the server reads the certificate")
        .to_string();
    let (cert, _) = leaf.write(dir, name);
    let pipeline = format!(
        "openssl x509 -pubkey -noout -in '{}' | openssl pkey -pubin -outform der | sha256sum",
        cert.display()
    );
    match Command::new("sh").args(["-c", &pipeline]).output() {
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let hex = text.split_whitespace().next().unwrap_or_default();
            assert_eq!(
                hex,
                ours,
                "openssl's SPKI SHA-256 is the key the server matches (stderr: {})",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        other => eprintln!("openssl not usable ({other:?}): the server's fingerprint alone"),
    }
    // And what `monoreactor access key CERT.pem` prints for the user's entry.
    let printed = support::run_cli(
        &["access", "key", cert.to_str().expect("utf-8 path")],
        Duration::from_secs(10),
    );
    assert!(printed.status.success(), "access key: {}", printed.stderr);
    assert_eq!(
        printed.stdout.trim(),
        ours,
        "access key prints the key entries name"
    );
    ours
}

#[track_caller]
fn refused(frames: &[OwnedFrame], code: ErrorCode, what: &str) -> String {
    let (got, text) = error_of(frames).unwrap_or_else(|| panic!("{what} went through"));
    assert_eq!(got, code, "{what}: {text}");
    text
}

/// The bytes of a whole GET, checked to end with its DIGEST.
#[track_caller]
fn got_bytes(frames: &[OwnedFrame]) -> Vec<u8> {
    assert_eq!(
        frames.last().map(|frame| frame.header.frame_type),
        Some(FrameType::Digest),
        "{:?}",
        error_of(frames)
    );
    frames
        .iter()
        .filter(|frame| frame.header.frame_type == FrameType::Data)
        .flat_map(|frame| frame.payload.iter().copied())
        .collect()
}

/// A request's frames on a stream, for a path.
type Request = fn(u32, &[u8]) -> Vec<u8>;

/// The names a LIST of `path` shows, sorted.
fn listed(client: &mut Client, stream: u32, path: &[u8]) -> Vec<String> {
    let got = exchange(client, &path_request(FrameType::List, stream, path), stream);
    assert_eq!(
        error_of(&got),
        None,
        "LIST {:?}",
        String::from_utf8_lossy(path)
    );
    let mut names: Vec<String> = got
        .iter()
        .filter(|frame| frame.header.frame_type == FrameType::Entries)
        .flat_map(|frame| {
            Entries::new(&frame.payload)
                .map(|entry| entry.unwrap().name.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names
}

/// No text the client sees names the scope or the server's root.
#[track_caller]
fn reveals_nothing(text: &str, setup: &Setup) {
    assert!(!text.contains("team/a"), "{text}");
    assert!(!text.contains(setup.root().to_str().unwrap()), "{text}");
}

#[track_caller]
fn failed_with(run: &Finished, text: &str) {
    assert!(!run.status.success(), "succeeded; stdout:\n{}", run.stdout);
    assert!(
        run.stderr.contains(text),
        "stderr lacks {text:?}:\n{}",
        run.stderr
    );
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{}", run.stderr);
}

#[track_caller]
fn succeeded(run: &Finished) -> &str {
    assert!(run.status.success(), "exit {}: {}", run.status, run.stderr);
    &run.stdout
}

fn cli(subcommand: &str, flags: &[String], rest: &[&str]) -> Finished {
    let mut args = vec![subcommand];
    args.extend(flags.iter().map(String::as_str));
    args.extend_from_slice(rest);
    run_cli(&args, TIMEOUT)
}

// === alice: a read-only key scoped to team/a ===

#[test]
fn a_read_only_key_reads_its_subtree_and_writes_nothing() {
    let setup = Setup::new("tls-access-read");
    let before = snapshot(&setup.root());
    let (mut client, flags) = setup.connect(Some(&setup.alice), b"");
    assert!(
        flags.contains(SessionFlags::AUTHENTICATED.with(SessionFlags::FILES))
            && !flags.contains(SessionFlags::EXEC),
        "{flags:?}"
    );
    // Authenticated: frames beyond the 4 KiB allowed before.
    let big = support::seeded_bytes(5, 70_000);
    assert!(client.echo(&big).unwrap() == big);
    // The server logs the key it matched, as the entry spells it.
    let key = monoreactor::key_fingerprint(&setup.alice.der)
        .unwrap()
        .to_string();
    let logged = support::retry(Duration::from_secs(5), || {
        let log = setup.server.stderr_text();
        log.lines()
            .any(|line| line.contains("TLS established") && line.contains(&key))
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "{key} in:\n{}",
        setup.server.stderr_text()
    );
    // Paths are relative to team/a: its root lists team/a, its files are team/a's.
    assert_eq!(listed(&mut client, 1, b""), ["inside.txt", "sub"]);
    assert_eq!(
        got_bytes(&exchange(&mut client, &get(3, b"inside.txt"), 3)),
        b"inside"
    );
    let got = exchange(&mut client, &path_request(FrameType::Stat, 5, b"sub"), 5);
    assert_eq!(error_of(&got), None);

    let attempts: [(&str, Vec<u8>); 6] = [
        ("PUT", put(7, b"new.txt", b"x")),
        ("PUT over", put(7, b"inside.txt", b"x")),
        ("DELETE", path_request(FrameType::Delete, 7, b"inside.txt")),
        (
            "DELETE a directory",
            path_request(FrameType::Delete, 7, b"sub"),
        ),
        ("MKDIR", path_request(FrameType::Mkdir, 7, b"d")),
        ("EXEC", exec(7, &[b"echo", b"hi"])),
    ];
    for (what, frames) in attempts {
        let got = exchange(&mut client, &frames, 7);
        let text = refused(&got, ErrorCode::Forbidden, what);
        assert!(text.contains("credential \"alice\""), "{what}: {text}");
        reveals_nothing(&text, &setup);
    }
    assert_eq!(
        snapshot(&setup.root()),
        before,
        "nothing created, replaced or removed"
    );

    // The command line, with the certificate and no token.
    let flags = setup.flags(Some((&setup.alice, "alice")));
    let copy = setup.dir.join("copy.txt");
    succeeded(&cli("get", &flags, &["inside.txt", copy.to_str().unwrap()]));
    assert_eq!(fs::read(&copy).unwrap(), b"inside");
    let listing = succeeded(&cli("ls", &flags, &[])).to_string();
    assert!(
        listing.contains("inside.txt") && !listing.contains("secret"),
        "{listing}"
    );
    for (command, rest) in [
        ("put", vec![copy.to_str().unwrap(), "new.txt"]),
        ("rm", vec!["inside.txt"]),
        ("mkdir", vec!["d"]),
    ] {
        failed_with(
            &cli(command, &flags, &rest),
            "credential \"alice\" may only read files (files = \"read\")",
        );
    }
    assert_eq!(
        snapshot(&setup.root()),
        before,
        "the command line wrote nothing either"
    );
}

#[test]
fn no_path_takes_a_scoped_key_out_of_its_subtree() {
    let setup = Setup::new("tls-access-escape");
    let root = setup.root();
    std::os::unix::fs::symlink(root.join("team/b"), root.join("team/a/to-b")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("team/a/etc")).unwrap();
    let before = snapshot(&root);
    let (mut client, _) = setup.connect(Some(&setup.alice), b"");
    // tests/access_scope.rs's table: tests/files.rs's traversal forms, the neighbours' names.
    let paths: [&[u8]; 18] = [
        b"../b/secret.txt",
        b"../../top.txt",
        b"../sibling/x",
        b"/tmp/x",
        b"/etc/passwd",
        b"sub/../../b/secret.txt",
        b"a\\..\\b",
        b"sub/f\0../../x",
        b"./inside.txt",
        b"sub/",
        b"sub//x",
        b".monoreactor-partial-1",
        b"sub/\xff",
        b"to-b/secret.txt",
        b"etc/passwd",
        b"team/b/secret.txt",
        b"top.txt",
        b"b/secret.txt",
    ];
    let mut stream = 1;
    for path in paths {
        let shown = String::from_utf8_lossy(path);
        // Reads are refused for the path (not for the rule: alice may read); writes are
        // refused one way or the other, and create nothing (checked below).
        let reads: [(&str, Request); 3] = [
            ("GET", get),
            ("STAT", |on, path| path_request(FrameType::Stat, on, path)),
            ("LIST", |on, path| path_request(FrameType::List, on, path)),
        ];
        for (what, request) in reads {
            let got = exchange(&mut client, &request(stream, path), stream);
            let (code, text) =
                error_of(&got).unwrap_or_else(|| panic!("{what} {shown:?} went through: {got:?}"));
            assert_ne!(
                code,
                ErrorCode::Forbidden,
                "{what} {shown:?}: a path refusal: {text}"
            );
            reveals_nothing(&text, &setup);
            assert!(
                !got.iter()
                    .any(|frame| frame.header.frame_type == FrameType::Data),
                "{what} {shown:?} served bytes"
            );
            stream += 2;
        }
        let writes: [(&str, Request); 3] = [
            ("PUT", |on, path| put(on, path, b"escaped!")),
            ("MKDIR", |on, path| path_request(FrameType::Mkdir, on, path)),
            ("DELETE", |on, path| {
                path_request(FrameType::Delete, on, path)
            }),
        ];
        for (what, request) in writes {
            let got = exchange(&mut client, &request(stream, path), stream);
            let (_, text) =
                error_of(&got).unwrap_or_else(|| panic!("{what} {shown:?} went through: {got:?}"));
            reveals_nothing(&text, &setup);
            stream += 2;
        }
    }
    assert_eq!(
        snapshot(&root),
        before,
        "nothing created, replaced or removed"
    );
    // What she sees of the tree is team/a, and a neighbour's name is not found there.
    assert_eq!(
        listed(&mut client, stream, b""),
        ["etc", "inside.txt", "sub", "to-b"]
    );
    let got = exchange(&mut client, &get(stream + 2, b"top.txt"), stream + 2);
    refused(&got, ErrorCode::NotFound, "GET top.txt");
}

// === bob: a writing key that may run echo ===

#[test]
fn a_writing_key_puts_and_runs_echo_but_not_sh() {
    let setup = Setup::new("tls-access-write");
    let root = setup.root();
    let (mut client, flags) = setup.connect(Some(&setup.bob), b"");
    assert!(
        flags.contains(
            SessionFlags::AUTHENTICATED
                .with(SessionFlags::FILES)
                .with(SessionFlags::EXEC)
        ),
        "{flags:?}"
    );
    // The whole root is his.
    let got = exchange(&mut client, &put(1, b"team/b/new.txt", b"from bob"), 1);
    assert_eq!(error_of(&got), None);
    assert_eq!(fs::read(root.join("team/b/new.txt")).unwrap(), b"from bob");
    let got = exchange(&mut client, &path_request(FrameType::Mkdir, 3, b"made"), 3);
    assert_eq!(error_of(&got), None);
    assert!(root.join("made").is_dir());

    let got = exchange(&mut client, &exec(5, &[b"echo", b"hi"]), 5);
    let (out, exit) = output_of(&got);
    assert_eq!(out, b"hi\n");
    assert_eq!(exit.unwrap().termination, Termination::Exited(0));

    let marker = setup.dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let argvs: [&[&[u8]]; 3] = [
        &[b"sh", b"-c", touch.as_bytes()],
        &[b"/bin/echo", b"hi"],
        &[b"env", b"echo", b"hi"],
    ];
    for (n, argv) in argvs.into_iter().enumerate() {
        let stream = 7 + 2 * n as u32;
        let got = exchange(&mut client, &exec(stream, argv), stream);
        let text = refused(&got, ErrorCode::Forbidden, &format!("{argv:?}"));
        assert!(text.contains("credential \"bob\""), "{text}");
    }
    assert!(!marker.exists(), "no refused command ran");

    // The command line, with the certificate and no token.
    let flags = setup.flags(Some((&setup.bob, "bob")));
    let local = setup.dir.join("local.txt");
    fs::write(&local, b"by the cli").unwrap();
    succeeded(&cli("put", &flags, &[local.to_str().unwrap(), "cli.txt"]));
    assert_eq!(fs::read(root.join("cli.txt")).unwrap(), b"by the cli");
    assert_eq!(
        succeeded(&cli("exec", &flags, &["--", "echo", "hello"])),
        "hello\n"
    );
    failed_with(
        &cli("exec", &flags, &["--", "sh", "-c", &touch]),
        "credential \"bob\" may not run this command",
    );
    assert!(!marker.exists(), "no refused command ran");
}

// === Keys the file does not grant ===

#[test]
fn a_certificate_from_another_ca_is_refused_in_the_handshake() {
    let setup = Setup::new("tls-access-stranger");
    let stranger = Pki::new().leaf(&["alice.example"], false);
    let error = Client::connect_with(setup.target(Some(&stranger)), b"", TIMEOUT)
        .expect_err("a certificate from another CA");
    // TLS 1.3: the client's side of the handshake ends before the server judges the
    // certificate; its alert arrives instead of HELLO_OK.
    assert!(
        matches!(
            &error,
            ClientError::Tls {
                failure: TlsFailure::CertificateRefused(_),
                ..
            }
        ),
        "{error:?}"
    );
    let flags = setup.flags(Some((&stranger, "stranger")));
    failed_with(
        &cli("ls", &flags, &[]),
        "the server refused the client certificate (--tls-cert)",
    );
    // The same key signed by the right CA is alice's: the refusal was the CA's.
    let (_, flags) = setup.connect(Some(&setup.alice), b"");
    assert!(flags.contains(SessionFlags::AUTHENTICATED));
}

#[test]
fn a_verified_key_the_file_does_not_name_may_only_echo() {
    let setup = Setup::new("tls-access-unknown-key");
    // Carol's certificate is from the client CA, so the handshake passes; no entry names
    // her key, and without credentials the connection is anonymous (`Access::authenticate`).
    let (mut client, flags) = setup.connect(Some(&setup.carol), b"");
    assert_eq!(
        flags,
        SessionFlags::NONE,
        "not authenticated, no files, no exec"
    );
    assert_eq!(client.echo(b"carol").unwrap(), b"carol");
    let got = exchange(&mut client, &get(3, b"team/a/inside.txt"), 3);
    refused(&got, ErrorCode::Unauthenticated, "GET");
    let got = exchange(&mut client, &exec(5, &[b"echo", b"hi"]), 5);
    refused(&got, ErrorCode::Unauthenticated, "EXEC");
    // Echo stays limited to the unauthenticated frame size.
    let big = vec![7; 8 << 10];
    let error = client.echo(&big).expect_err("8 KiB before authentication");
    assert_eq!(
        error.server_code(),
        Some(ErrorCode::FrameTooLarge),
        "{error}"
    );

    let flags = setup.flags(Some((&setup.carol, "carol")));
    assert_eq!(
        succeeded(&cli("echo", &flags, &["anonymous"])),
        "anonymous\n"
    );
    let run = cli("ls", &flags, &[]);
    assert!(!run.status.success(), "{}", run.stdout);
    assert!(run.stderr.contains("UNAUTHENTICATED"), "{}", run.stderr);
}

#[test]
fn a_wrong_token_is_refused_whatever_the_certificate() {
    let setup = Setup::new("tls-access-wrong-token");
    let error = Client::connect_with(
        setup.target(Some(&setup.bob)),
        b"not-the-token-for-anyone-at-all",
        TIMEOUT,
    )
    .expect_err("a wrong token beside bob's key");
    assert_eq!(error.server_code(), Some(ErrorCode::AuthFailed), "{error}");
}

// === A token over TLS ===

#[test]
fn a_token_credential_works_over_tls_and_wins_over_the_certificate() {
    let setup = Setup::new("tls-access-token");
    // Without a certificate.
    let (mut client, flags) = setup.connect(None, TOKEN.as_bytes());
    assert!(
        flags.contains(SessionFlags::AUTHENTICATED.with(SessionFlags::FILES)),
        "{flags:?}"
    );
    assert_eq!(
        got_bytes(&exchange(&mut client, &get(1, b"secret.txt"), 1)),
        b"secret"
    );
    let got = exchange(&mut client, &put(3, b"new.txt", b"x"), 3);
    let text = refused(&got, ErrorCode::Forbidden, "PUT");
    assert!(text.contains("credential \"reader-token\""), "{text}");
    // Beside alice's certificate: credentials in HELLO decide, so this is the token's scope
    // (team/b), not hers.
    let (mut client, _) = setup.connect(Some(&setup.alice), TOKEN.as_bytes());
    assert_eq!(listed(&mut client, 5, b""), ["secret.txt"]);

    // The command line.
    let token_file = setup.dir.join("token");
    fs::write(&token_file, TOKEN).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&token_file, fs::Permissions::from_mode(0o600)).unwrap();
    let mut flags = setup.flags(None);
    flags.extend(["--token-file".to_string(), token_file.display().to_string()]);
    let listing = succeeded(&cli("ls", &flags, &[])).to_string();
    assert!(listing.contains("secret.txt"), "{listing}");
}
