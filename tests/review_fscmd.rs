//! An adversarial review of the tree commands (`rm -r`, `mkdir -p`, `ls`, remote globs,
//! `--timeout`): each test pins down a defect a careless or hostile user could hit, found by
//! the review and fixed since. They run against a real server over loopback.

mod support;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;

use support::exec::Scratch;
use support::files::*;

/// `rm` refuses an operand whose last component is `.` or `..`, as coreutils' rm does
/// ("refusing to remove '.' or '..' directory"): `rm -r a/.` used to remove `a` entirely, and
/// `rm -r '*/.'` every directory at the root.
#[test]
fn rm_refuses_dot_and_dot_dot_as_the_last_component() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-fscmd");
    fs::create_dir_all(server.at("a/b")).unwrap();
    fs::write(server.at("a/b/f"), b"f").unwrap();
    for operand in [
        ".", "./", "", "a/.", "a/./", "a//.//", "a/..", "a/b/..", "*/.", "a/*/.", "*/..", "\\.",
    ] {
        for flags in [&["-r"][..], &["-rf"][..], &[][..]] {
            let mut args = flags.to_vec();
            args.push(operand);
            let stderr = cli.exits(2, "rm", &args);
            assert_eq!(stderr.lines().count(), 1, "rm {args:?}: {stderr}");
        }
    }
    assert!(server.at("a/b/f").exists(), "nothing was removed");
    server.assert_nothing_outside("rm of dot operands");
}

/// A trailing `/` names a directory: `rm -r 'build*/'` must not remove the file `build.log`
/// (in sh `*/` matches directories only), and `rm file/` is refused as rm refuses it (not a
/// directory), not taken for `rm file`. The same for `ls`.
#[test]
fn a_trailing_slash_names_only_directories() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-fscmd");
    fs::create_dir_all(server.at("build1/obj")).unwrap();
    fs::write(server.at("build1/obj/o"), b"o").unwrap();
    fs::write(server.at("build.log"), b"log").unwrap();
    fs::write(server.at("note"), b"n").unwrap();
    symlink(server.at("build1"), server.at("buildlink")).unwrap();

    let listing = cli.ok("ls", &["build*/"]);
    assert_eq!(listed_names(&listing), ["obj"], "{listing}");
    let listing = cli.ok("ls", &["build1/", "*1/."]);
    assert_eq!(
        listed_names(&listing),
        ["build1:", "obj", "", "build1:", "obj"],
        "{listing}"
    );
    cli.exits(1, "ls", &["note/"]);
    cli.exits(1, "ls", &["n*/"]);

    cli.exits(1, "rm", &["note/"]);
    cli.exits(1, "rm", &["-r", "note/"]);
    cli.exits(1, "rm", &["-r", "buildlink/"]);
    cli.exits(1, "rm", &["-rf", "note/"]);
    assert!(server.at("note").exists(), "rm note/ left the file");
    assert!(
        server.at("buildlink").exists(),
        "rm buildlink/ left the link"
    );
    cli.ok("rm", &["-r", "build*/"]);
    assert!(!server.at("build1").exists(), "the directory is gone");
    assert!(
        server.at("build.log").exists(),
        "the file is not a directory"
    );
    // (`exists` would follow the link, which now dangles.)
    assert!(
        server.at("buildlink").symlink_metadata().is_ok(),
        "nor is the link"
    );
    // A directory with a trailing slash is removed as before.
    fs::create_dir_all(server.at("d/e")).unwrap();
    cli.ok("rm", &["-r", "d/"]);
    assert!(!server.at("d").exists());
    server.assert_nothing_outside("trailing slashes");
}

/// A glob walks past a symlink where a directory was expected, as it walks past a file:
/// `ls '*/sub/*'` used to fail as a whole (OUTSIDE_ROOT) because one `x/sub` was a link.
#[test]
fn a_glob_skips_a_symlink_in_a_directory_component() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-fscmd");
    fs::create_dir_all(server.at("a/sub")).unwrap();
    fs::create_dir_all(server.at("b")).unwrap();
    fs::write(server.at("a/sub/x"), b"x").unwrap();
    symlink(server.at("a/sub"), server.at("b/sub")).unwrap();
    symlink(server.outside(), server.at("c")).unwrap();

    let listing = cli.ok("ls", &["*/sub/*"]);
    assert_eq!(listed_names(&listing), ["a/sub/x"], "{listing}");
    let listing = cli.ok("ls", &["*/sub/x"]);
    assert_eq!(listed_names(&listing), ["a/sub/x"], "{listing}");
    // `c` leads outside the root: never followed, so nothing matches.
    let stderr = cli.exits(1, "ls", &["*/secret"]);
    assert!(stderr.contains("no match"), "{stderr}");
    server.assert_nothing_outside("globs past links");
}

/// `rm -r` goes on past a refusal inside the tree, as rm does: the other entries are still
/// removed, each refusal is reported, the directories above a refusal are left (silently:
/// they cannot be empty) and the exit status is 1. It used to stop at the first refusal.
#[test]
fn rm_r_goes_on_past_a_refusal_like_rm() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-fscmd");
    for dir in ["t/a_bad", "t/b_good/deep", "t/c_bad", "t/d_good"] {
        fs::create_dir_all(server.at(dir)).unwrap();
    }
    // A name that is not UTF-8 is not listed, so the client cannot remove it and the server
    // refuses its directory (NOT_EMPTY).
    for dir in ["t/a_bad", "t/c_bad"] {
        let odd = server.at(dir).join(OsStr::from_bytes(b"\xff\xfe"));
        fs::write(odd, b"odd").unwrap();
    }
    fs::write(server.at("t/b_good/deep/f"), b"f").unwrap();
    fs::write(server.at("t/e_file"), b"e").unwrap();
    fs::create_dir_all(server.at("u/v")).unwrap();

    let stderr = cli.exits(1, "rm", &["-r", "t", "u"]);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "one line per refusal: {stderr}");
    assert!(
        lines[0].contains("t/a_bad") && lines[0].contains("NOT_EMPTY"),
        "{stderr}"
    );
    assert!(lines[1].contains("t/c_bad"), "{stderr}");
    // Why a directory `ls` shows empty is not empty.
    assert!(lines[0].contains("not UTF-8"), "{stderr}");
    for gone in ["t/b_good", "t/d_good", "t/e_file", "u"] {
        assert!(!server.at(gone).exists(), "{gone} was removed");
    }
    assert!(server.at("t/a_bad").exists() && server.at("t/c_bad").exists());
    server.assert_nothing_outside("rm -r past refusals");
}

/// A `--timeout` too short to be a socket timeout (it rounds to 0 ns) is a usage error (2),
/// not a client failure (255) after parsing.
#[test]
fn a_timeout_that_rounds_to_zero_is_a_usage_error() {
    let work = Scratch::new("review-timeout");
    for value in ["1e-10", "0.0000000001", "0", "-1", "nan", "inf"] {
        for command in [&["ls"][..], &["rm", "x"], &["mkdir", "x"], &["stat", "x"]] {
            let mut args = command.to_vec();
            let timeout = format!("--timeout={value}");
            args.extend(["--addr", "127.0.0.1:1", &timeout]);
            let output = cli(&args, work.path(), None);
            assert_eq!(output.code(), 2, "{args:?}: {}", output.stderr);
            assert!(
                output.stderr.contains("--timeout"),
                "{args:?}: {}",
                output.stderr
            );
        }
    }
}

/// A listing cannot be spoofed by a name: a bidi override (U+202E) used to be printed as it
/// is, so `x\u{202e}gpj.exe` showed as `xexe.jpg`; a line separator too; and a name holding a
/// backslash and `n` looked like one holding a newline.
#[test]
fn ls_escapes_names_that_would_spoof_a_listing() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-fscmd");
    for name in ["x\u{202e}gpj.exe", "a\u{2028}b", "c\\nd", "c\nd"] {
        fs::write(server.at(name), b"").unwrap();
    }
    let listing = cli.ok("ls", &[]);
    assert!(
        !listing.contains('\u{202e}') && !listing.contains('\u{2028}'),
        "{listing:?}"
    );
    let mut shown = listed_names(&listing);
    shown.sort();
    assert_eq!(
        shown,
        ["a\\u{2028}b", "c\\\\nd", "c\\nd", "x\\u{202e}gpj.exe"],
        "{listing:?}"
    );
    // JSON has the names as they are.
    let json = cli.ok("ls", &["--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(parsed.as_array().map(Vec::len), Some(4), "{json}");
    assert!(parsed[0]["name"].is_string(), "{json}");
    assert!(json.contains("c\\\\nd") && json.contains("c\\nd"), "{json}");
}

/// A pattern component longer than any path is refused before connecting: matching costs
/// the name's length times the component's, and a 120 KB component (what a shell passes)
/// took 10 ms per name, minutes for a large directory.
#[test]
fn an_oversized_pattern_component_is_a_usage_error() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-fscmd");
    fs::create_dir(server.at("p")).unwrap();
    for i in 0..50 {
        fs::write(server.at(&format!("p/{}{i:03}", "a".repeat(250))), b"").unwrap();
    }
    let huge = format!("p/*[a{}]*{}b", "bcdefghij".repeat(12_000), "a".repeat(150));
    for command in ["ls", "rm"] {
        let stderr = cli.exits(2, command, &[&huge]);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("pattern component"), "{stderr}");
    }
    // One of the largest allowed, at its worst (a long set before a long literal run):
    // still an answer, no match.
    let big = format!("p/*[a{}]*{}b", "bcdefghij".repeat(400), "a".repeat(150));
    let stderr = cli.exits(1, "ls", &[&big]);
    assert!(stderr.contains("no match"), "{stderr}");
}

/// POSIX classes in a set: `rm '[[:digit:]]*'` used to read `[[:digit:]]` as the set
/// `[:digt` and a literal `]`, so it removed `d]oops` and kept `1.log`.
#[test]
fn rm_with_a_posix_class_removes_what_sh_would() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-fscmd");
    for name in ["1.log", "22", "d]oops", "x1"] {
        fs::write(server.at(name), b"").unwrap();
    }
    cli.ok("rm", &["[[:digit:]]*"]);
    assert!(!server.at("1.log").exists() && !server.at("22").exists());
    assert!(server.at("d]oops").exists() && server.at("x1").exists());
    let listing = cli.ok("ls", &["[![:digit:]]*"]);
    assert_eq!(listed_names(&listing), ["d]oops", "x1"], "{listing}");
}

/// `ls dir missing` heads `dir`'s section with `dir:`, as ls does whenever it was given more
/// than one operand: the output used to look like `ls dir`'s, so a script could not tell.
#[test]
fn ls_of_a_directory_and_a_missing_path_keeps_the_header() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-fscmd");
    fs::create_dir(server.at("dir")).unwrap();
    fs::write(server.at("dir/f"), b"").unwrap();
    let output = cli.run("ls", &["dir", "missing"]);
    assert_eq!(output.code(), 1, "{}", output.stderr);
    assert_eq!(
        listed_names(&output.text()),
        ["dir:", "f"],
        "{}",
        output.text()
    );
    assert_eq!(output.stderr.lines().count(), 1, "{}", output.stderr);
    let output = cli.run("ls", &["dir", "nothing*"]);
    assert_eq!(output.code(), 1, "{}", output.stderr);
    assert_eq!(
        listed_names(&output.text()),
        ["dir:", "f"],
        "{}",
        output.text()
    );
    // One operand: no header, as before.
    assert_eq!(listed_names(&cli.ok("ls", &["dir"])), ["f"]);
}

/// `mkdir -p` racing other clients creating the same path: every one must succeed (an
/// ALREADY_EXISTS for a directory is what -p wants), whoever wins each level.
#[test]
fn mkdir_p_racing_other_clients_succeeds() {
    let server = FileServer::start(&[]);
    let addr = server.server.framed_str();
    let work = Scratch::new("review-mkdir-race");
    for round in 0..4 {
        let path = format!("r{round}/a/b/c/d");
        let racers: Vec<_> = (0..6)
            .map(|_| {
                let (addr, path, cwd) = (addr.clone(), path.clone(), work.path().to_path_buf());
                std::thread::spawn(move || {
                    cli(&["mkdir", "--addr", &addr, "-p", &path], &cwd, None)
                })
            })
            .collect();
        for racer in racers {
            let output = racer.join().expect("a racer");
            assert_eq!(output.code(), 0, "round {round}: {}", output.stderr);
        }
        assert!(server.at(&path).is_dir());
    }
}

/// `rm -r` of a wide directory (more entries than one LIST page holds) and of a deep one.
#[test]
fn rm_r_removes_wide_and_deep_trees() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-fscmd");
    fs::create_dir(server.at("wide")).unwrap();
    for i in 0..3000 {
        fs::write(server.at(&format!("wide/{i:04}-{}", "n".repeat(40))), b"").unwrap();
    }
    let mut deep = String::from("deep");
    for _ in 0..200 {
        deep.push_str("/d");
    }
    fs::create_dir_all(server.at(&deep)).unwrap();
    fs::write(server.at(&format!("{deep}/leaf")), b"").unwrap();
    let listing = cli.ok("ls", &["wide"]);
    assert_eq!(listing.lines().count(), 3000);
    cli.ok("rm", &["-r", "wide", "deep"]);
    assert!(!server.at("wide").exists() && !server.at("deep").exists());
}

/// The same operand names the same path in every command: `stat 'x\*'` was a usage error
/// (a backslash) where `ls 'x\*'` and `rm 'x\*'` name the file `x*`.
#[test]
fn stat_takes_escapes_as_ls_and_rm_do() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-fscmd");
    fs::write(server.at("x*"), b"star").unwrap();
    assert_eq!(listed_names(&cli.ok("ls", &["x\\*"])), ["x*"]);
    let shown = cli.ok("stat", &["x\\*"]);
    assert!(
        shown.starts_with("path:   x*\n") && shown.contains("size:   4"),
        "{shown}"
    );
    cli.ok("rm", &["x\\*"]);
    assert!(!server.at("x*").exists());
}

/// A server (broken or hostile) whose every directory holds a directory: `name` (`x`, or
/// `..`, which no real server lists). Answers HELLO, then LIST with that one entry and
/// DELETE with NOT_EMPTY, until the client hangs up or `budget` requests were answered.
fn endless_tree_server(
    name: &'static str,
    budget: usize,
) -> (String, std::thread::JoinHandle<usize>) {
    listing_server(name, monoreactor::proto::files::FileKind::Directory, budget)
}

/// A fake server that answers every LIST with one entry `name` of `kind`, and any other
/// request with an error, for `budget` requests.
fn listing_server(
    name: &'static str,
    kind: monoreactor::proto::files::FileKind,
    budget: usize,
) -> (String, std::thread::JoinHandle<usize>) {
    use monoreactor::proto::files::DirEntry;
    use monoreactor::proto::{
        ErrorCode, ErrorMessage, Flags, Frame, FrameType, HEADER_LEN, Header, HelloOk, SessionFlags,
    };
    use std::io::{Read, Write};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let serving = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .expect("timeout");
        let read_frame = |stream: &mut std::net::TcpStream| -> Option<(Header, Vec<u8>)> {
            let mut head = [0; HEADER_LEN];
            stream.read_exact(&mut head).ok()?;
            let header = Header::parse(&head, u32::MAX).ok()??;
            let mut payload = vec![0; header.len as usize];
            stream.read_exact(&mut payload).ok()?;
            Some((header, payload))
        };
        read_frame(&mut stream).expect("HELLO");
        let mut out = Vec::new();
        HelloOk {
            version: 2,
            max_payload_len: 1 << 20,
            flags: SessionFlags::FILES,
        }
        .encode(&mut out);
        stream.write_all(&out).expect("HELLO_OK");
        let mut answered = 0;
        while answered < budget {
            let Some((header, _)) = read_frame(&mut stream) else {
                break;
            };
            let mut out = Vec::new();
            match header.frame_type {
                FrameType::List => {
                    let entry = DirEntry {
                        name,
                        kind,
                        size: 0,
                        mtime_ns: 0,
                    };
                    let mut payload = vec![0; entry.wire_len()];
                    entry.emit(&mut payload);
                    Frame::new(
                        FrameType::Entries,
                        Flags::END_STREAM,
                        header.stream,
                        &payload,
                    )
                    .encode_into(&mut out);
                }
                _ => ErrorMessage {
                    code: ErrorCode::NotEmpty,
                    text: "not empty",
                }
                .encode(header.stream, &mut out),
            }
            if stream.write_all(&out).is_err() {
                break;
            }
            answered += 1;
        }
        answered
    });
    (addr, serving)
}

/// `rm -r` and `ls -R` end against a server whose tree never ends (or that lists `..`): a
/// directory deeper than a request path can name is reported, not listed, and a name that
/// cannot be one path component is not followed. Both used to go on for as long as the
/// server answered (one LIST per level, the path growing each time).
#[test]
fn tree_walks_end_against_an_endless_server() {
    let work = Scratch::new("review-endless");
    // Enough answers for a walk to the path limit (about 2,000 levels), not for an endless one.
    let budget = 10_000;
    for name in ["x", ".."] {
        for command in [&["rm", "-r", "d"][..], &["ls", "-R", "d"]] {
            let (addr, serving) = endless_tree_server(name, budget);
            let mut args = command.to_vec();
            args.extend(["--addr", &addr]);
            let output = cli(&args, work.path(), None);
            let answered = serving.join().expect("the fake server");
            assert!(answered < budget, "{name} {command:?}: {answered} answers");
            // `ls -R` shows a `..` it was given, and does not follow it.
            let refused = !(name == ".." && command[0] == "ls");
            assert_eq!(
                output.code(),
                i32::from(refused),
                "{name} {command:?}: {}",
                output.stderr
            );
            assert_eq!(
                output.stderr.lines().count(),
                usize::from(refused),
                "{name} {command:?}: {}",
                output.stderr
            );
        }
    }
}

/// `get -r` turns the names a server lists into local paths: a broken or hostile server that
/// lists `../escape`, `/abs` or `..` must not make the client write outside its destination
/// (scp's CVE-2019-6111). Before, the plan held `DEST/../escape` and `/abs` as files to write.
#[test]
fn get_r_writes_nothing_outside_its_destination_whatever_the_server_lists() {
    use monoreactor::client::files::FileClient;
    use monoreactor::client::tree::{GetPlan, plan_get};
    use monoreactor::proto::files::FileKind;
    let work = Scratch::new("review-escape");
    let dest = work.path().join("dest");
    for (name, kind) in [
        ("../escape", FileKind::File),
        ("/abs", FileKind::File),
        ("..", FileKind::Directory),
        (".", FileKind::Directory),
        ("a/b", FileKind::Directory),
    ] {
        let (addr, serving) = listing_server(name, kind, 50);
        let mut client = FileClient::connect(
            addr.parse::<std::net::SocketAddr>().expect("address"),
            None,
            std::time::Duration::from_secs(10),
        )
        .expect("connect");
        let mut plan = GetPlan::default();
        plan_get(&mut client, "d", &dest, &mut plan).expect("plan");
        drop(client);
        serving.join().expect("the fake server");
        for path in plan
            .dirs
            .iter()
            .chain(plan.files.iter().map(|item| &item.local))
        {
            assert!(
                path.starts_with(&dest)
                    && !path
                        .components()
                        .any(|part| matches!(part, std::path::Component::ParentDir)),
                "{name}: {}",
                path.display()
            );
        }
        assert!(plan.files.is_empty() && plan.dirs.len() == 1, "{name}");
        assert_eq!(plan.skipped.len(), 1, "{name}: {:?}", plan.skipped);
    }
}
