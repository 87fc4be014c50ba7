//! `serve --access FILE` end to end, on a real server over loopback (plaintext, which loopback
//! allows): credentials made with `monoreactor access add` and used with the token it printed;
//! for each scope rule, a table of attempts that must fail with nothing created, run or
//! revealed (writes with a read-only credential, every path form that could escape the
//! subtree, listings and STATs outside it, commands outside the allowlist, a PUT over the
//! quota, a command over `max_commands`), and the cases that must work; and access files that
//! `serve` refuses with one line.

mod support;

#[path = "support/requests.rs"]
mod requests;

use std::fs;
use std::path::Path;
use std::time::Duration;

use monoreactor::client::Client;
use monoreactor::proto::exec::{Signal, SignalRequest, Termination};
use monoreactor::proto::files::Entries;
use monoreactor::proto::{ErrorCode, Flags, Frame, FrameType, SessionFlags};
use requests::{error_of, exchange, exec, get, output_of, path_request, put, snapshot};
use support::{Server, TempDir, run_cli};

const TIMEOUT: Duration = Duration::from_secs(10);

/// `monoreactor access add --file FILE ARGS`: the token it printed.
fn add(file: &Path, args: &[&str]) -> String {
    let file = file.to_str().unwrap();
    let mut all = vec!["access", "add", "--file", file];
    all.extend_from_slice(args);
    let done = run_cli(&all, TIMEOUT);
    assert!(
        done.status.success(),
        "access add {args:?}: {}",
        done.stderr
    );
    let token = done.stdout.trim().to_string();
    assert_eq!(token.len(), 64, "32 random bytes in hex: {token:?}");
    token
}

/// A root with `team/a/inside.txt`, `team/b/secret.txt` and `top.txt`, and an access file
/// beside it with the credentials the tests use; returns their tokens.
struct Setup {
    dir: TempDir,
    reader: String,
    writer: String,
    runner: String,
}

impl Setup {
    fn new(label: &str) -> Setup {
        let dir = TempDir::new(label);
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("team/a/sub")).unwrap();
        fs::create_dir_all(root.join("team/b")).unwrap();
        fs::write(root.join("team/a/inside.txt"), b"inside").unwrap();
        fs::write(root.join("team/b/secret.txt"), b"secret").unwrap();
        fs::write(root.join("top.txt"), b"top").unwrap();
        let file = dir.path().join("access.toml");
        let reader = add(
            &file,
            &["--name", "reader", "--root", "team/a", "--files", "read"],
        );
        let writer = add(
            &file,
            &[
                "--name", "writer", "--root", "team/a", "--files", "write", "--quota", "1000",
            ],
        );
        let runner = add(
            &file,
            &[
                "--name",
                "runner",
                "--root",
                "team/a",
                "--allow",
                "echo",
                "--allow",
                "pwd",
                "--allow",
                "sleep",
                "--allow",
                "git status",
                "--max-commands",
                "1",
            ],
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the access file is created mode 600");
        let text = fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&reader), "the file holds hashes only");
        Setup {
            dir,
            reader,
            writer,
            runner,
        }
    }

    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("root")
    }

    fn serve(&self) -> Server {
        let access = self.dir.path().join("access.toml");
        let root = self.root();
        Server::start(&[
            "--access",
            access.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ])
    }
}

/// A connection with `token`; its HELLO_OK flags.
fn connect(server: &Server, token: &str) -> (Client, SessionFlags) {
    let (client, ok) =
        Client::connect_with(&server.framed_str(), token.as_bytes(), TIMEOUT).unwrap();
    (client, ok.flags)
}

/// No text the client sees names the scope or the server's root.
#[track_caller]
fn reveals_nothing(text: &str, setup: &Setup) {
    assert!(!text.contains("team/a"), "{text}");
    assert!(!text.contains(setup.root().to_str().unwrap()), "{text}");
}

#[test]
fn a_read_only_credential_writes_nothing() {
    let setup = Setup::new("scope-read");
    let server = setup.serve();
    let before = snapshot(&setup.root());
    let (mut client, flags) = connect(&server, &setup.reader);
    assert!(flags.contains(SessionFlags::FILES) && !flags.contains(SessionFlags::EXEC));
    let attempts: [(&str, Vec<u8>); 5] = [
        ("PUT", put(1, b"new.txt", b"x")),
        ("PUT over", put(1, b"inside.txt", b"x")),
        ("DELETE", path_request(FrameType::Delete, 1, b"inside.txt")),
        ("MKDIR", path_request(FrameType::Mkdir, 1, b"d")),
        ("EXEC", exec(1, &[b"echo", b"hi"])),
    ];
    for (what, frames) in attempts {
        let got = exchange(&mut client, &frames, 1);
        let (code, text) = error_of(&got).unwrap_or_else(|| panic!("{what} went through"));
        assert_eq!(code, ErrorCode::Forbidden, "{what}: {text}");
        assert!(text.contains("credential \"reader\""), "{what}: {text}");
        reveals_nothing(&text, &setup);
    }
    assert_eq!(
        snapshot(&setup.root()),
        before,
        "nothing created, replaced or removed"
    );
    // It may read what is inside its scope.
    let got = exchange(&mut client, &get(3, b"inside.txt"), 3);
    assert_eq!(got.last().unwrap().header.frame_type, FrameType::Digest);
}

#[test]
fn no_path_leaves_the_scope_and_no_reply_reveals_the_layout() {
    let setup = Setup::new("scope-escape");
    let server = setup.serve();
    let root = setup.root();
    std::os::unix::fs::symlink(root.join("team/b"), root.join("team/a/to-b")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("team/a/etc")).unwrap();
    let before = snapshot(&root);
    let (mut client, _) = connect(&server, &setup.writer);
    // The path forms of tests/files.rs's traversal table, and the neighbours' real names.
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
        let attempts = [
            ("GET", stream, get(stream, path)),
            (
                "STAT",
                stream + 2,
                path_request(FrameType::Stat, stream + 2, path),
            ),
            (
                "LIST",
                stream + 4,
                path_request(FrameType::List, stream + 4, path),
            ),
            ("PUT", stream + 6, put(stream + 6, path, b"escaped!")),
            (
                "MKDIR",
                stream + 8,
                path_request(FrameType::Mkdir, stream + 8, path),
            ),
            (
                "DELETE",
                stream + 10,
                path_request(FrameType::Delete, stream + 10, path),
            ),
        ];
        // The neighbours' names are names inside the scope too: reading or removing them
        // finds nothing there (writing them writes inside, below).
        let neighbour = matches!(path, b"team/b/secret.txt" | b"top.txt" | b"b/secret.txt");
        let attempts = attempts
            .into_iter()
            .filter(|(what, _, _)| !neighbour || !matches!(*what, "PUT" | "MKDIR"));
        for (what, on, frames) in attempts {
            let got = exchange(&mut client, &frames, on);
            let (code, text) =
                error_of(&got).unwrap_or_else(|| panic!("{what} {shown:?} went through: {got:?}"));
            assert_ne!(
                code,
                ErrorCode::Forbidden,
                "a path refusal, not a rule: {text}"
            );
            reveals_nothing(&text, &setup);
            assert!(
                !got.iter()
                    .any(|frame| frame.header.frame_type == FrameType::Data),
                "{what} {shown:?} served bytes"
            );
        }
        stream += 12;
    }
    assert_eq!(
        snapshot(&root),
        before,
        "nothing created, replaced or removed"
    );

    // Its root is team/a: a listing shows that and nothing else; STAT of the root too.
    let got = exchange(&mut client, &path_request(FrameType::List, 1001, b""), 1001);
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
    assert_eq!(names, ["etc", "inside.txt", "sub", "to-b"]);
    let _ = fs::remove_file(root.join("team/a/top.txt"));
    // A neighbour's name written is written inside, never over the neighbour.
    let got = exchange(&mut client, &put(1007, b"top.txt", b"mine"), 1007);
    assert_eq!(got.last().unwrap().header.frame_type, FrameType::Digest);
    assert_eq!(fs::read(root.join("top.txt")).unwrap(), b"top");
    assert_eq!(fs::read(root.join("team/a/top.txt")).unwrap(), b"mine");
    // And it writes there: under the name it gave.
    let got = exchange(&mut client, &put(1003, b"sub/mine.txt", b"mine"), 1003);
    assert_eq!(got.last().unwrap().header.frame_type, FrameType::Digest);
    assert_eq!(fs::read(root.join("team/a/sub/mine.txt")).unwrap(), b"mine");
    let got = exchange(
        &mut client,
        &path_request(FrameType::Delete, 1005, b"sub/mine.txt"),
        1005,
    );
    assert_eq!(got.last().unwrap().header.frame_type, FrameType::Done);
}

#[test]
fn commands_outside_the_allowlist_never_run() {
    let setup = Setup::new("scope-exec");
    let server = setup.serve();
    let marker = setup.dir.path().join("ran");
    let touch = format!("touch {}", marker.display());
    let (mut client, flags) = connect(&server, &setup.runner);
    assert!(flags.contains(SessionFlags::EXEC) && !flags.contains(SessionFlags::FILES));
    let refused: Vec<Vec<&[u8]>> = vec![
        vec![b"sh", b"-c", touch.as_bytes()],
        vec![b"/bin/sh", b"-c", touch.as_bytes()],
        vec![b"/bin/echo", b"hi"],
        vec![b"/usr/bin/touch", marker.to_str().unwrap().as_bytes()],
        vec![b"./echo"],
        vec![b"echo;touch", marker.to_str().unwrap().as_bytes()],
        vec![b"echo hi"],
        vec![b"env", b"echo", b"hi"],
        vec![b"git", b"push"],
        vec![b"git"],
        vec![b"touch", marker.to_str().unwrap().as_bytes()],
    ];
    for (n, argv) in refused.iter().enumerate() {
        let stream = 1 + 2 * n as u32;
        let got = exchange(&mut client, &exec(stream, argv), stream);
        let (code, text) = error_of(&got).unwrap_or_else(|| panic!("{argv:?} ran"));
        assert_eq!(code, ErrorCode::Forbidden, "{text}");
        assert!(text.contains("credential \"runner\""), "{text}");
        reveals_nothing(&text, &setup);
    }
    assert!(!marker.exists(), "no refused command ran");
    // Allowed ones run, in the scope's root.
    let got = exchange(&mut client, &exec(101, &[b"pwd"]), 101);
    let (out, exit) = output_of(&got);
    assert_eq!(exit.unwrap().termination, Termination::Exited(0));
    assert!(
        String::from_utf8_lossy(&out)
            .trim_end()
            .ends_with("root/team/a"),
        "{out:?}"
    );
    let got = exchange(&mut client, &exec(103, &[b"echo", b"hi"]), 103);
    assert_eq!(output_of(&got).0, b"hi\n");
    // And no file request at all (files = "none" by default).
    let got = exchange(&mut client, &get(105, b"inside.txt"), 105);
    assert_eq!(error_of(&got).unwrap().0, ErrorCode::Forbidden);
}

#[test]
fn max_commands_holds_across_connections_until_the_command_ends() {
    let setup = Setup::new("scope-max");
    let server = setup.serve();
    let (mut first, _) = connect(&server, &setup.runner);
    first.send_raw(&exec(1, &[b"sleep", b"30"])).unwrap();
    let started = first.recv_frame().unwrap();
    assert_eq!(started.header.frame_type, FrameType::Started, "{started:?}");
    let (mut second, _) = connect(&server, &setup.runner);
    let got = exchange(&mut second, &exec(1, &[b"echo", b"hi"]), 1);
    let (code, text) = error_of(&got).unwrap();
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(text.contains("max_commands"), "{text}");
    // The first command is stopped: its place is free again.
    let mut signal = [0];
    SignalRequest {
        signal: Signal::Kill,
    }
    .emit(&mut signal);
    let got = exchange(
        &mut first,
        &Frame::new(FrameType::Signal, Flags::NONE, 1, &signal).to_vec(),
        1,
    );
    assert_eq!(got.last().unwrap().header.frame_type, FrameType::Exit);
    let got = exchange(&mut second, &exec(3, &[b"echo", b"again"]), 3);
    assert_eq!(output_of(&got).0, b"again\n");
    // A connection that goes away gives its command's place back too.
    first.send_raw(&exec(3, &[b"sleep", b"30"])).unwrap();
    assert_eq!(
        first.recv_frame().unwrap().header.frame_type,
        FrameType::Started
    );
    drop(first);
    let freed = support::retry(TIMEOUT, || {
        let got = exchange(&mut second, &exec(5, &[b"echo", b"x"]), 5);
        (error_of(&got).is_none()).then_some(())
    });
    assert!(
        freed.is_some(),
        "the closed connection's command gave its place back"
    );
}

#[test]
fn a_put_over_the_quota_stores_nothing_and_leaves_no_partial() {
    let setup = Setup::new("scope-quota");
    let server = setup.serve();
    let before = snapshot(&setup.root());
    let (mut client, _) = connect(&server, &setup.writer);
    let got = exchange(&mut client, &put(1, b"big.bin", &[7; 1001]), 1);
    let (code, text) = error_of(&got).unwrap();
    assert_eq!(code, ErrorCode::Forbidden, "{text}");
    assert!(
        text.contains("quota") && text.contains("\"writer\""),
        "{text}"
    );
    assert_eq!(
        snapshot(&setup.root()),
        before,
        "nothing stored, no partial left"
    );
    // Within it, stored; then the rest of the quota is what is left.
    let got = exchange(&mut client, &put(3, b"a.bin", &[7; 600]), 3);
    assert_eq!(got.last().unwrap().header.frame_type, FrameType::Digest);
    let got = exchange(&mut client, &put(5, b"b.bin", &[7; 401]), 5);
    assert_eq!(error_of(&got).unwrap().0, ErrorCode::Forbidden);
    assert!(!setup.root().join("team/a/b.bin").exists());
    let got = exchange(&mut client, &put(7, b"b.bin", &[7; 400]), 7);
    assert_eq!(got.last().unwrap().header.frame_type, FrameType::Digest);
}

#[test]
fn bad_access_files_stop_serve_with_one_line() {
    let dir = TempDir::new("scope-bad");
    let hash = monoreactor::token_hash(b"some-token-0123456789");
    let cases = [
        (
            "unknown key",
            format!("[[credential]]\nname = \"a\"\ntoken = \"{hash}\"\ncolour = \"red\"\n"),
            ":4: ",
            "colour",
        ),
        (
            "bad hash",
            "[[credential]]\nname = \"a\"\ntoken = \"blake3:1234\"\n".to_string(),
            ":1: ",
            "credential \"a\": token must be",
        ),
        (
            "duplicate",
            format!(
                "[[credential]]\nname = \"a\"\ntoken = \"{hash}\"\n\n[[credential]]\nname = \"b\"\ntoken = \"{hash}\"\n"
            ),
            ":5: ",
            "the same token as credential \"a\"",
        ),
    ];
    for (what, text, line, words) in cases {
        let file = dir.path().join(format!("{}.toml", what.replace(' ', "-")));
        fs::write(&file, text).unwrap();
        let done = run_cli(
            &[
                "serve",
                "--access",
                file.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--echo-tcp",
                "off",
                "--echo-udp",
                "off",
                "--root",
                dir.path().join("root").to_str().unwrap(),
            ],
            TIMEOUT,
        );
        assert!(!done.status.success(), "{what}: serve started");
        let stderr = done.stderr.trim_end();
        assert_eq!(stderr.lines().count(), 1, "{what}: one line: {stderr}");
        assert!(
            stderr.contains(line) && stderr.contains(words),
            "{what}: {stderr}"
        );
        assert!(done.stdout.is_empty(), "{what}: nothing listening");
    }
}

#[test]
fn access_hash_prints_what_the_file_stores() {
    // Without input (stdin is /dev/null here): a usage error, nothing printed.
    let done = run_cli(&["access", "hash"], TIMEOUT);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(done.stdout.is_empty());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_monoreactor"))
        .args(["access", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"my-token-0123456789\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim_end(),
        monoreactor::token_hash(b"my-token-0123456789")
    );
}
