//! The tree commands against a real server over loopback: `mkdir -p`, `rm -r` and `rm -f`,
//! `ls -l` (local time, TZ honoured), `ls -R`, `ls -h`, `ls --json`, remote globs in `ls` and
//! `rm` (and a pattern that matches nothing), and the file commands' `--timeout`.

mod support;

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monoreactor::proto::{HEADER_LEN, Header, HelloOk, SessionFlags};
use support::exec::Scratch;
use support::files::*;
use support::*;

/// Sets a file's modification time on the server's disk, seconds since the epoch.
fn set_mtime(path: &std::path::Path, secs: i64) {
    let when = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
}

/// `ls` in `cli`'s directory with the time zone `tz`: stdout (the command must succeed).
#[track_caller]
fn ls_in_zone(cli: &ClientDir, tz: &str, args: &[&str]) -> String {
    let out = cli.work.path().join("ls.out");
    let err = cli.work.path().join("ls.err");
    let mut child = Command::new(env!("CARGO_BIN_EXE_monoreactor"))
        .arg("ls")
        .args(["--addr", &cli.addr])
        .args(args)
        .env("TZ", tz)
        .env_remove("MONOREACTOR_TOKEN")
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .expect("spawn ls");
    let status = wait_child(&mut child, CLI_TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("ls did not exit");
    });
    assert!(
        status.success(),
        "ls {args:?}: {}",
        fs::read_to_string(&err).unwrap()
    );
    fs::read_to_string(&out).unwrap()
}

#[test]
fn mkdir_p_creates_parents_and_accepts_an_existing_directory() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-commands");

    let stderr = cli.exits(1, "mkdir", &["a/b/c"]);
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");
    assert!(!server.at("a").exists());

    cli.ok("mkdir", &["-p", "a/b/c", "x"]);
    assert!(server.at("a/b/c").is_dir());
    assert!(server.at("x").is_dir());
    // Again: everything exists, which -p accepts.
    cli.ok("mkdir", &["-p", "a/b/c", "a/b", "./a//"]);
    // Some parents there, some not.
    cli.ok("mkdir", &["--parents", "a/b/d/e"]);
    assert!(server.at("a/b/d/e").is_dir());
    // Without -p an existing directory is still refused.
    let stderr = cli.exits(1, "mkdir", &["a"]);
    assert!(stderr.contains("ALREADY_EXISTS"), "{stderr}");

    // A file in the way: refused, with the server's word for it, and the other paths made.
    fs::write(server.at("f"), b"file").unwrap();
    let stderr = cli.exits(1, "mkdir", &["-p", "f", "g/h"]);
    assert!(
        stderr.contains("mkdir f: ") && stderr.contains("ALREADY_EXISTS"),
        "{stderr}"
    );
    assert!(server.at("g/h").is_dir());
    let stderr = cli.exits(1, "mkdir", &["-p", "f/sub"]);
    assert!(stderr.contains("mkdir f"), "{stderr}");
    assert_eq!(fs::read(server.at("f")).unwrap(), b"file");
    // Wildcards are not expanded by mkdir; `\*` is a `*` there too.
    cli.ok("mkdir", &["star\\*", "-p", "q?/r"]);
    assert!(server.at("star*").is_dir() && server.at("q?/r").is_dir());
    // The root itself is a usage error, as before.
    cli.exits(2, "mkdir", &["-p", "."]);
    server.assert_nothing_outside("mkdir -p");
}

#[test]
fn rm_r_removes_a_tree_deepest_first_and_never_follows_links() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-commands");
    for dir in ["t/a/b/c", "t/empty", "t/x"] {
        fs::create_dir_all(server.at(dir)).unwrap();
    }
    for file in [
        "t/top",
        "t/a/one",
        "t/a/b/two",
        "t/a/b/c/three",
        "t/x/.hidden",
    ] {
        fs::write(server.at(file), file).unwrap();
    }
    // A link to a directory outside the root and one to a directory inside: both removed as
    // links, neither target touched.
    symlink(server.outside(), server.at("t/a/out")).unwrap();
    symlink(server.at("keep"), server.at("t/a/b/in")).unwrap();
    fs::create_dir(server.at("keep")).unwrap();
    fs::write(server.at("keep/k"), b"k").unwrap();
    // An interrupted upload inside the tree goes too.
    fs::write(server.at("t/a/.monoreactor-partial-0000000000000001"), b"x").unwrap();

    // Without -r: the server's NOT_EMPTY, nothing removed.
    let stderr = cli.exits(1, "rm", &["t"]);
    assert!(stderr.contains("NOT_EMPTY"), "{stderr}");
    assert!(server.at("t/a/b/c/three").exists());
    // An empty directory needs no -r (the server removes it), as before.
    cli.ok("rm", &["t/empty"]);
    assert!(!server.at("t/empty").exists());

    cli.ok("rm", &["-r", "t"]);
    assert!(!server.at("t").exists(), "the tree is gone");
    assert_eq!(fs::read(server.at("keep/k")).unwrap(), b"k");
    server.assert_nothing_outside("rm -r");

    // -R is -r; a file needs neither.
    fs::create_dir_all(server.at("u/v")).unwrap();
    fs::write(server.at("u/v/w"), b"w").unwrap();
    fs::write(server.at("file"), b"f").unwrap();
    cli.ok("rm", &["-R", "u", "file"]);
    assert!(!server.at("u").exists() && !server.at("file").exists());
}

#[test]
fn rm_f_ignores_what_is_missing_but_not_other_refusals() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-commands");
    fs::write(server.at("here"), b"x").unwrap();
    let stderr = cli.exits(1, "rm", &["missing"]);
    assert!(stderr.contains("NOT_FOUND"), "{stderr}");
    cli.ok("rm", &["-f", "missing", "here", "gone/too"]);
    assert!(!server.at("here").exists());
    cli.ok("rm", &["-rf", "missing"]);
    cli.ok("rm", &["-f", "nothing*"]);

    fs::create_dir_all(server.at("d/e")).unwrap();
    let stderr = cli.exits(1, "rm", &["-f", "d"]);
    assert!(
        stderr.contains("NOT_EMPTY"),
        "-f does not hide NOT_EMPTY: {stderr}"
    );
    assert!(server.at("d/e").is_dir());
}

#[test]
fn ls_l_shows_local_times_as_ls_does_in_the_zone_tz_names() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-commands");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // 2001-09-08 23:46:40 UTC: the 8th in UTC, the 9th nine hours east.
    fs::write(server.at("old"), b"o").unwrap();
    set_mtime(&server.at("old"), 999_992_800);
    // An hour ago: shown with its time of day.
    let recent = now - 3600;
    fs::write(server.at("recent"), b"r").unwrap();
    set_mtime(&server.at("recent"), recent);
    // A day ahead: shown with its year, as ls does.
    fs::write(server.at("future"), b"f").unwrap();
    set_mtime(&server.at("future"), now + 86_400);

    // POSIX zone strings, so no zone files are needed.
    for (tz, offset_s) in [("UTC0", 0), ("XXX-9", 9 * 3600), ("YYY+5", -5 * 3600)] {
        let listing = ls_in_zone(&cli, tz, &["-l"]);
        let line = |name: &str| {
            listing
                .lines()
                .find(|line| line.ends_with(&format!(" {name}")))
                .unwrap_or_else(|| panic!("no {name} in\n{listing}"))
                .to_string()
        };
        let shown = |secs: i64, recent: bool| {
            let local = time::OffsetDateTime::from_unix_timestamp(secs + offset_s).unwrap();
            let month = &format!("{:?}", local.month())[..3];
            if recent {
                format!(
                    "{month} {:>2} {:02}:{:02}",
                    local.day(),
                    local.hour(),
                    local.minute()
                )
            } else {
                format!("{month} {:>2} {:>5}", local.day(), local.year())
            }
        };
        assert_eq!(
            line("old"),
            format!("- 1 {} old", shown(999_992_800, false)),
            "TZ={tz}"
        );
        assert_eq!(
            line("recent"),
            format!("- 1 {} recent", shown(recent, true)),
            "TZ={tz}"
        );
        assert_eq!(
            line("future"),
            format!("- 1 {} future", shown(now + 86_400, false)),
            "TZ={tz}"
        );
    }
    assert!(ls_in_zone(&cli, "UTC0", &["-l", "old"]).contains("Sep  8  2001 old"));
    assert!(ls_in_zone(&cli, "XXX-9", &["-l", "old"]).contains("Sep  9  2001 old"));
    // Without -l: UTC, to the minute, whatever TZ says (as before).
    assert!(ls_in_zone(&cli, "XXX-9", &["old"]).contains("2001-09-08 23:46 old"));
}

#[test]
fn ls_h_shows_sizes_as_ls_h_does() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-commands");
    let sized = [
        ("a", 0u64),
        ("b", 1023),
        ("c", 1024),
        ("d", 1536),
        ("e", 23 << 20),
        ("f", (5 << 30) + 1),
    ];
    for (name, size) in sized {
        // Sparse: the size is what counts.
        File::create(server.at(name))
            .unwrap()
            .set_len(size)
            .unwrap();
    }
    let listing = cli.ok("ls", &["-h"]);
    let sizes: Vec<(String, String)> = listing
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (words[1].to_string(), words[words.len() - 1].to_string())
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("0", "a"),
        ("1023", "b"),
        ("1.0K", "c"),
        ("1.5K", "d"),
        ("23M", "e"),
        ("5.1G", "f"),
    ]
    .iter()
    .map(|(size, name)| (size.to_string(), name.to_string()))
    .collect();
    assert_eq!(sizes, expected, "{listing}");
    // Right-aligned in one column.
    assert!(listing.starts_with("-    0 "), "{listing}");
    // --human-readable is the same; --json keeps bytes.
    assert_eq!(cli.ok("ls", &["--human-readable"]), listing);
    assert!(
        cli.ok("ls", &["-h", "--json"])
            .contains("\"size\":24117248")
    );
    // -h is not help here: --help still is.
    assert!(cli.ok("ls", &["--help"]).contains("--human-readable"));
}

#[test]
fn ls_r_lists_every_directory_beneath_as_ls_r_does() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-commands");
    for dir in ["d/sub/deeper", "d/empty", "d/zz"] {
        fs::create_dir_all(server.at(dir)).unwrap();
    }
    for file in ["d/a", "d/sub/b", "d/sub/deeper/c", "d/zz/z", "top"] {
        fs::write(server.at(file), b"x").unwrap();
    }
    // A link to a directory is listed, never entered.
    symlink(server.at("d/sub"), server.at("d/link")).unwrap();

    let listing = cli.ok("ls", &["-R", "d"]);
    assert_eq!(
        listed_names(&listing),
        [
            "d:",
            "a",
            "empty",
            "link",
            "sub",
            "zz",
            "",
            "d/empty:",
            "",
            "d/sub:",
            "b",
            "deeper",
            "",
            "d/sub/deeper:",
            "c",
            "",
            "d/zz:",
            "z",
        ],
        "{listing}"
    );
    // A directory's name cannot break the headers' lines.
    fs::create_dir_all(server.at("odd/bad\nname")).unwrap();
    let listing = cli.ok("ls", &["-R", "odd"]);
    assert_eq!(
        listed_names(&listing),
        ["odd:", "bad\\nname", "", "odd/bad\\nname:"],
        "{listing}"
    );
    fs::remove_dir_all(server.at("odd")).unwrap();

    // From the root: `.` and `./...`, as ls -R names them.
    let listing = cli.ok("ls", &["--recursive"]);
    let lines = listed_names(&listing);
    assert_eq!(lines[..3], [".:", "d", "top"], "{listing}");
    assert!(lines.contains(&"./d/sub/deeper:".to_string()), "{listing}");

    // --json -R: one array, every entry with its path from the root.
    let json = cli.ok("ls", &["-R", "--json", "d"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    let paths: Vec<&str> = parsed
        .as_array()
        .expect("an array")
        .iter()
        .map(|entry| entry["path"].as_str().expect("a path"))
        .collect();
    assert_eq!(
        paths,
        [
            "d/a",
            "d/empty",
            "d/link",
            "d/sub",
            "d/zz",
            "d/sub/b",
            "d/sub/deeper",
            "d/sub/deeper/c",
            "d/zz/z"
        ]
    );
}

#[test]
fn ls_of_several_paths_shows_files_first_then_each_directory() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-commands");
    fs::create_dir_all(server.at("d1")).unwrap();
    fs::create_dir_all(server.at("d2")).unwrap();
    for file in ["d1/x", "f"] {
        fs::write(server.at(file), b"x").unwrap();
    }
    let listing = cli.ok("ls", &["d2", "f", "d1"]);
    assert_eq!(
        listed_names(&listing),
        ["f", "", "d1:", "x", "", "d2:"],
        "{listing}"
    );
    // One missing among them: reported, the others listed, exit status 1.
    let output = cli.run("ls", &["d1", "nope"]);
    assert_eq!(output.code(), 1);
    assert!(
        output.stderr.contains("ls nope: ") && output.stderr.contains("NOT_FOUND"),
        "{}",
        output.stderr
    );
    // Two operands, so a header, as GNU ls prints `d1:` here too.
    assert_eq!(listed_names(&output.text()), ["d1:", "x"]);
}

#[test]
fn ls_json_is_one_document_with_names_escaped() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-commands");
    let odd = "q\"uote\\back\nline\u{1}é";
    fs::write(server.at(odd), b"12345").unwrap();
    set_mtime(&server.at(odd), 1_700_000_000);
    fs::create_dir(server.at("dir")).unwrap();
    let json = cli.ok("ls", &["--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    let entries = parsed.as_array().expect("an array");
    assert_eq!(entries.len(), 2, "{json}");
    assert_eq!(entries[0]["name"], "dir");
    assert_eq!(entries[0]["kind"], "directory");
    assert_eq!(entries[1]["name"], odd);
    assert_eq!(entries[1]["path"], odd);
    assert_eq!(entries[1]["kind"], "file");
    assert_eq!(entries[1]["size"], 5);
    assert_eq!(entries[1]["mtime_ns"], 1_700_000_000_000_000_000_i64);
    assert!(!json.contains('\n') || json.lines().count() == 4, "{json}");
    // An empty directory is an empty array; a pattern's files are entries named by path.
    fs::create_dir(server.at("void")).unwrap();
    assert_eq!(cli.ok("ls", &["--json", "void"]), "[]\n");
    let json = cli.ok("ls", &["--json", "q*"]);
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(parsed[0]["name"], odd);
}

#[test]
fn remote_globs_expand_in_ls_and_rm() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-commands");
    for dir in ["logs/old", "tmp", "lit"] {
        fs::create_dir_all(server.at(dir)).unwrap();
    }
    for file in [
        "logs/a.gz",
        "logs/b.gz",
        "logs/c.txt",
        "logs/.hidden.gz",
        "logs/old/d.gz",
        "tmp/x.part",
        "tmp/y.part",
        "tmp/keep",
        "lit/*",
        "lit/x",
        "lit/[a]",
        "lit/a",
    ] {
        fs::write(server.at(file), file).unwrap();
    }

    let listing = cli.ok("ls", &["logs/*.gz"]);
    assert_eq!(
        listed_names(&listing),
        ["logs/a.gz", "logs/b.gz"],
        "{listing}"
    );
    let listing = cli.ok("ls", &["l?gs/[!a].gz"]);
    assert_eq!(listed_names(&listing), ["logs/b.gz"], "{listing}");
    let listing = cli.ok("ls", &["logs/.*.gz"]);
    assert_eq!(listed_names(&listing), ["logs/.hidden.gz"], "{listing}");
    // A wildcard in a directory component; a matched directory is listed, as `ls dir*` does.
    let listing = cli.ok("ls", &["*/*.gz"]);
    assert_eq!(
        listed_names(&listing),
        ["logs/a.gz", "logs/b.gz"],
        "{listing}"
    );
    let listing = cli.ok("ls", &["logs/o*"]);
    assert_eq!(listed_names(&listing), ["d.gz"], "{listing}");
    let listing = cli.ok("ls", &["*s/old/*"]);
    assert_eq!(listed_names(&listing), ["logs/old/d.gz"], "{listing}");

    // Nothing matches: an error, exit status 1 (the server's NOT_FOUND's), in plain words.
    let stderr = cli.exits(1, "ls", &["logs/*.zip"]);
    assert!(stderr.contains("no match for `logs/*.zip`"), "{stderr}");
    assert!(!stderr.contains("server error"), "{stderr}");
    cli.exits(1, "ls", &["nodir/*"]);
    cli.exits(1, "rm", &["tmp/*.none"]);

    cli.ok("rm", &["tmp/*.part"]);
    assert!(!server.at("tmp/x.part").exists() && !server.at("tmp/y.part").exists());
    assert!(server.at("tmp/keep").exists());

    // `\*` is a literal `*`, `\[` a literal `[`.
    cli.ok("rm", &["lit/\\*", "lit/\\[a]"]);
    assert!(!server.at("lit/*").exists() && !server.at("lit/[a]").exists());
    assert!(server.at("lit/x").exists() && server.at("lit/a").exists());
    // An unterminated `[` is itself.
    fs::write(server.at("lit/[b"), b"b").unwrap();
    assert_eq!(listed_names(&cli.ok("ls", &["lit/[b"])), ["lit/[b"]);

    // rm -r through a glob.
    cli.ok("rm", &["-r", "l*s"]);
    assert!(!server.at("logs").exists());
    // A pattern never leaves the root.
    cli.exits(2, "ls", &["../*"]);
    cli.exits(2, "rm", &["/tmp/*"]);
    server.assert_nothing_outside("globs");
}

/// A listener on a free loopback port that accepts one connection and, if `hello`, answers
/// HELLO_OK, then says nothing until the client hangs up.
fn silent_server(hello: bool) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    let serving = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        if hello {
            let mut head = [0; HEADER_LEN];
            stream.read_exact(&mut head).expect("HELLO");
            let header = Header::parse(&head, u32::MAX)
                .expect("a valid header")
                .expect("a whole header");
            let mut payload = vec![0; header.len as usize];
            stream.read_exact(&mut payload).expect("HELLO payload");
            let mut out = Vec::new();
            HelloOk {
                version: 2,
                max_payload_len: 1 << 20,
                flags: SessionFlags::FILES,
            }
            .encode(&mut out);
            stream.write_all(&out).expect("HELLO_OK");
        }
        let _ = stream.read_to_end(&mut Vec::new());
    });
    (addr, serving)
}

#[test]
fn timeout_bounds_the_wait_for_hello_and_for_each_answer() {
    let work = Scratch::new("files-timeout");
    for hello in [false, true] {
        let (addr, serving) = silent_server(hello);
        let started = Instant::now();
        let output = cli(
            &["ls", "--addr", &addr, "--timeout", "0.5"],
            work.path(),
            None,
        );
        let waited = started.elapsed();
        assert_eq!(output.code(), 255, "hello {hello}: {}", output.stderr);
        assert!(
            waited < Duration::from_secs(5),
            "hello {hello}: waited {waited:?}"
        );
        assert!(!output.stderr.is_empty());
        serving.join().expect("the silent server");
    }
    // A value that is not a duration is a usage error.
    let output = cli(
        &["ls", "--addr", "127.0.0.1:1", "--timeout", "soon"],
        work.path(),
        None,
    );
    assert_eq!(output.code(), 2, "{}", output.stderr);
    assert!(output.stderr.contains("--timeout"), "{}", output.stderr);
}

#[test]
fn glob_expand_is_usable_from_the_library() {
    use monoreactor::client::files::FileClient;
    use monoreactor::client::glob::{self, RemoteMatch};
    use monoreactor::proto::ErrorCode;
    use monoreactor::proto::files::FileKind;

    let server = FileServer::start(&[]);
    for dir in ["logs/old", "logs/new", "other"] {
        fs::create_dir_all(server.at(dir)).unwrap();
    }
    for (file, bytes) in [
        ("logs/a.gz", &b"aa"[..]),
        ("logs/old/keep", b"k"),
        ("other/keep", b"kkk"),
    ] {
        fs::write(server.at(file), bytes).unwrap();
    }
    set_mtime(&server.at("logs/a.gz"), 1_000);
    let mut client =
        FileClient::connect(&server.framed_str(), None, Duration::from_secs(10)).expect("connect");
    let paths = |matches: Vec<RemoteMatch>| -> Vec<String> {
        matches.into_iter().map(|matched| matched.path).collect()
    };

    let matched = glob::expand(&mut client, "logs/*.gz").expect("matches");
    assert_eq!(
        matched,
        [RemoteMatch {
            path: "logs/a.gz".into(),
            kind: FileKind::File,
            size: 2,
            mtime_ns: 1_000_000_000_000,
        }]
    );
    // A literal component after a wildcard: only where it exists (a STAT for the last one).
    let matched = glob::expand(&mut client, "*/*/keep").expect("matches");
    assert_eq!(paths(matched), ["logs/old/keep"]);
    let matched = glob::expand(&mut client, "*/keep").expect("matches");
    assert_eq!(paths(matched.clone()), ["other/keep"]);
    assert_eq!(matched[0].size, 3);
    // Directories match too, in the shell's order.
    let matched = glob::expand(&mut client, "logs/[n-o]*").expect("matches");
    assert_eq!(paths(matched.clone()), ["logs/new", "logs/old"]);
    assert!(matched.iter().all(|m| m.kind == FileKind::Directory));
    // No wildcard: one STAT, the server's own answer when it is missing.
    let matched = glob::expand(&mut client, "logs/a.gz").expect("the file");
    assert_eq!(paths(matched), ["logs/a.gz"]);
    let missing = glob::expand(&mut client, "logs/nope").expect_err("missing");
    assert_eq!(missing.server_code(), Some(ErrorCode::NotFound));
    assert!(!glob::is_no_match(&missing));
    // Nothing matched: NOT_FOUND, recognisably the pattern's.
    let none = glob::expand(&mut client, "logs/*.zip").expect_err("no match");
    assert_eq!(none.server_code(), Some(ErrorCode::NotFound));
    assert!(glob::is_no_match(&none), "{none}");
    assert!(glob::is_no_match(
        &glob::expand(&mut client, "nodir/*").expect_err("no match")
    ));
    // A pattern that cannot name a path is refused before any request.
    let refused = glob::expand(&mut client, "../*").expect_err("refused");
    assert_eq!(refused.server_code(), Some(ErrorCode::BadRequest));
    // The connection is still good.
    assert_eq!(client.list("").expect("LIST").len(), 2);
}
