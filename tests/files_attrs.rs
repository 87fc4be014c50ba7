//! `-p` carries directories' modes and times too, and STAT reports a path's mode (issue 16):
//! `put -r -p` and `get -r -p` leave each directory with its source's permission bits and
//! mtime, set deepest first once everything inside is written; without `-p` neither is
//! carried; `stat` shows the mode; `--continue -p` fixes a skipped file's mode and mtime both
//! ways; setuid/setgid/sticky bits are dropped, and mtimes before 1970 or far ahead are kept
//! as they are. Against a real server over loopback, through the `monoreactor` binary, and
//! with hand-built SET_ATTRS frames for the server's refusals.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::files::*;

/// 2001-09-09 01:46:40 UTC and some nanoseconds: an mtime no test run could give by itself.
const OLD: i64 = 1_000_000_000_123_456_789;

/// `path`'s mode, setuid/setgid/sticky included.
fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Gives `path` (a file or a directory) `mode` and the mtime `mtime_ns`, which may be before
/// 1970.
fn set(path: &Path, mode: u32, mtime_ns: i64) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    let at = if mtime_ns >= 0 {
        std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64)
    } else {
        std::time::UNIX_EPOCH - std::time::Duration::from_nanos(mtime_ns.unsigned_abs())
    };
    fs::File::open(path)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(at).set_accessed(at))
        .unwrap();
}

/// A tree whose directories have modes and old mtimes of their own, files in each, set
/// after the files are written (which moved them).
fn make_dirs(at: &Path) {
    fs::create_dir_all(at.join("private/group/deep")).unwrap();
    fs::create_dir_all(at.join("empty")).unwrap();
    fs::write(at.join("top.txt"), b"top").unwrap();
    fs::write(at.join("private/p.txt"), b"p").unwrap();
    fs::write(at.join("private/group/g.txt"), b"g").unwrap();
    fs::write(
        at.join("private/group/deep/d.txt"),
        random_bytes(3, 300_000),
    )
    .unwrap();
    set(&at.join("private/group/deep"), 0o755, OLD + 3);
    set(&at.join("private/group"), 0o750, OLD + 2);
    set(&at.join("private"), 0o700, OLD + 1);
    set(&at.join("empty"), 0o711, OLD + 4);
    set(at, 0o755, OLD);
}

/// The mode and mtime of each directory of `make_dirs`, relative to `at`.
fn dir_attrs(at: &Path) -> Vec<(&'static str, u32, i64)> {
    [
        "",
        "private",
        "private/group",
        "private/group/deep",
        "empty",
    ]
    .into_iter()
    .map(|dir| {
        let path = if dir.is_empty() {
            at.to_path_buf()
        } else {
            at.join(dir)
        };
        (dir, mode(&path), mtime_ns(&path))
    })
    .collect()
}

fn expected() -> Vec<(&'static str, u32, i64)> {
    vec![
        ("", 0o755, OLD),
        ("private", 0o700, OLD + 1),
        ("private/group", 0o750, OLD + 2),
        ("private/group/deep", 0o755, OLD + 3),
        ("empty", 0o711, OLD + 4),
    ]
}

#[test]
fn put_r_p_and_get_r_p_carry_directory_modes_and_mtimes_set_after_their_contents() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-attrs");
    make_dirs(&cli.local("src"));
    assert_eq!(dir_attrs(&cli.local("src")), expected(), "the source");

    cli.exits_with(0, "put", &["-r", "-p", "src", "kept"]);
    assert_eq!(dir_attrs(&server.at("kept")), expected(), "on the server");
    assert_eq!(
        fs::read(server.at("kept/private/group/deep/d.txt")).unwrap(),
        random_bytes(3, 300_000)
    );

    cli.exits_with(0, "get", &["-r", "-p", "kept", "back"]);
    assert_eq!(dir_attrs(&cli.local("back")), expected(), "brought back");
    server.assert_nothing_outside("after the trees");
}

#[test]
fn without_p_directory_modes_and_mtimes_are_not_carried() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-attrs");
    make_dirs(&cli.local("src"));
    cli.exits_with(0, "put", &["-r", "src", "plain"]);
    for (dir, mode, mtime) in dir_attrs(&server.at("plain")) {
        assert_ne!(mtime, mtime_ns(&cli.local("src").join(dir)), "{dir}");
        assert_eq!(mode & 0o7000, 0, "{dir}");
    }
    assert_ne!(mode(&server.at("plain/private")), 0o700);
    assert_ne!(mode(&server.at("plain/private/group")), 0o750);

    make_dirs(&server.at("remote"));
    cli.exits_with(0, "get", &["-r", "remote", "here"]);
    for (dir, _, mtime) in dir_attrs(&cli.local("here")) {
        assert_ne!(mtime, mtime_ns(&server.at("remote").join(dir)), "{dir}");
    }
    assert_ne!(mode(&cli.local("here/private")), 0o700);
}

#[test]
fn stat_shows_the_mode_and_its_file_info_carries_it() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-attrs");
    fs::write(server.at("f.txt"), b"f").unwrap();
    set(&server.at("f.txt"), 0o640, OLD);
    fs::create_dir(server.at("d")).unwrap();
    set(&server.at("d"), 0o710, OLD);

    let text = cli.ok("stat", &["f.txt"]);
    assert!(text.contains("mode:   0640 (-rw-r-----)\n"), "{text}");
    let text = cli.ok("stat", &["d"]);
    assert!(text.contains("mode:   0710 (drwx--x---)\n"), "{text}");
    let json = cli.ok("stat", &["--json", "f.txt"]);
    assert!(json.contains("\"mode\":416"), "{json}");

    // On the wire: STAT's FILE_INFO has the 4 bytes after its 50, as GET's has.
    let mut conn = server.conn();
    let stream = conn.new_stream();
    conn.send(&path_frame(
        monoreactor::proto::FrameType::Stat,
        stream,
        b"f.txt",
    ));
    let frame = conn.recv();
    assert_eq!(frame.payload.len(), 54);
    assert_eq!(
        monoreactor::proto::files::FileInfo::parse_mode(&frame.payload),
        Some(0o640)
    );
}

#[test]
fn continue_p_fixes_a_skipped_files_mode_and_mtime_both_ways() {
    let server = FileServer::start(&["--log-level", "warn,monoreactor::access=info"]);
    let cli = ClientDir::new(&server, "files-attrs");
    fs::create_dir(cli.local("src")).unwrap();
    fs::write(cli.local("src/a.txt"), b"same bytes").unwrap();
    // The smaller file: the one a resumed tree with nothing to send sends again, to carry
    // the final sync. `a.txt` is the one that stays skipped.
    fs::write(cli.local("src/s.txt"), b"s").unwrap();
    cli.exits_with(0, "put", &["-r", "src/.", "dst"]);
    assert_ne!(mtime_ns(&server.at("dst/a.txt")), OLD);

    // The server has the same bytes: skipped, but -p still gives it the mode and the time.
    set(&cli.local("src/a.txt"), 0o600, OLD);
    let out = cli.exits_with(0, "put", &["-r", "-p", "--continue", "src/.", "dst"]);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert_eq!(mode(&server.at("dst/a.txt")), 0o600, "{}", out.stderr);
    assert_eq!(mtime_ns(&server.at("dst/a.txt")), OLD);
    // Only the skipped file gets a SET_ATTRS (the other was sent, its PUT carried them), and
    // the directory `dst`, after it.
    let mut set_attrs = Vec::new();
    for _ in 0..100 {
        set_attrs = server
            .stderr_text()
            .lines()
            .filter(|line| line.contains("monoreactor::access") && line.contains("\"SET_ATTRS "))
            .map(|line| line.split('"').nth(1).unwrap_or("").to_string())
            .collect::<Vec<_>>();
        if set_attrs.len() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(set_attrs, ["SET_ATTRS dst/a.txt", "SET_ATTRS dst"]);

    // And back: the local copy has the same bytes, another mode and time.
    fs::create_dir(cli.local("here")).unwrap();
    fs::write(cli.local("here/a.txt"), b"same bytes").unwrap();
    set(&cli.local("here/a.txt"), 0o666, OLD + 5);
    set(&server.at("dst/a.txt"), 0o604, OLD + 7);
    cli.exits_with(0, "get", &["-r", "-p", "--continue", "dst/.", "here"]);
    assert_eq!(mode(&cli.local("here/a.txt")), 0o604);
    assert_eq!(mtime_ns(&cli.local("here/a.txt")), OLD + 7);
}

#[test]
fn odd_modes_and_times_are_carried_as_documented() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-attrs");
    // setgid and sticky directories, a setuid file: only the permission bits travel. An
    // mtime before 1970 and one in 2200 are kept as they are.
    let before_1970 = -86_400_000_000_123;
    let far_ahead = 7_258_118_400_000_000_001; // 2200-01-01
    fs::create_dir_all(cli.local("src/sticky/setgid")).unwrap();
    fs::write(cli.local("src/sticky/setgid/run"), b"#!/bin/sh\n").unwrap();
    set(&cli.local("src/sticky/setgid/run"), 0o4755, before_1970);
    set(&cli.local("src/sticky/setgid"), 0o2770, far_ahead);
    set(&cli.local("src/sticky"), 0o1777, before_1970);

    cli.exits_with(0, "put", &["-r", "-p", "src/.", "odd"]);
    assert_eq!(mode(&server.at("odd/sticky")), 0o777);
    assert_eq!(mtime_ns(&server.at("odd/sticky")), before_1970);
    assert_eq!(mode(&server.at("odd/sticky/setgid")), 0o770);
    assert_eq!(mtime_ns(&server.at("odd/sticky/setgid")), far_ahead);
    assert_eq!(mode(&server.at("odd/sticky/setgid/run")), 0o755);
    assert_eq!(mtime_ns(&server.at("odd/sticky/setgid/run")), before_1970);

    set(&server.at("odd/sticky"), 0o1777, before_1970);
    cli.exits_with(0, "get", &["-r", "-p", "odd/.", "back"]);
    assert_eq!(mode(&cli.local("back/sticky")), 0o777);
    assert_eq!(mtime_ns(&cli.local("back/sticky")), before_1970);
    assert_eq!(mode(&cli.local("back/sticky/setgid")), 0o770);
    assert_eq!(mtime_ns(&cli.local("back/sticky/setgid")), far_ahead);
    assert_eq!(mode(&cli.local("back/sticky/setgid/run")), 0o755);
    assert_eq!(mtime_ns(&cli.local("back/sticky/setgid/run")), before_1970);
}

// === SET_ATTRS on the wire ===

/// SET_ATTRS of `path` on `stream`, as the client builds it.
fn set_attrs_frame(stream: u32, path: &str, mode: u32, mtime_ns: i64) -> Vec<u8> {
    use monoreactor::proto::files::{PutAttrs, SetAttrsRequest};
    use monoreactor::proto::{Flags, Frame, FrameType};
    let request = SetAttrsRequest {
        attrs: PutAttrs { mode, mtime_ns },
        path,
    };
    Frame::new(
        FrameType::SetAttrs,
        Flags::NONE,
        stream,
        &request.to_payload(),
    )
    .to_vec()
}

/// The answer to a SET_ATTRS: `Ok` for DONE, else the ERROR's code and text.
fn set_attrs(conn: &mut FileConn, path: &str, mode: u32, mtime_ns: i64) -> Result<(), Refusal> {
    let stream = conn.new_stream();
    conn.send(&set_attrs_frame(stream, path, mode, mtime_ns));
    let frame = conn.recv();
    assert_eq!(frame.header.stream, stream);
    match refusal(&frame) {
        Some(refused) => Err(refused),
        None => {
            expect_frame(&frame, monoreactor::proto::FrameType::Done, true);
            Ok(())
        }
    }
}

#[test]
fn set_attrs_changes_files_and_directories_beneath_the_root_and_nothing_else() {
    use monoreactor::proto::ErrorCode;
    let server = FileServer::start(&[]);
    fs::create_dir(server.at("d")).unwrap();
    fs::write(server.at("d/f"), b"f").unwrap();
    std::os::unix::fs::symlink(server.outside(), server.at("out")).unwrap();
    std::os::unix::fs::symlink("d", server.at("d-link")).unwrap();
    let outside_before = (mode(server.outside()), mtime_ns(server.outside()));
    // The root's mode: its mtime moves with whatever the server keeps there (its hash index).
    let root_before = mode(server.root());
    let mut conn = server.conn();

    ok(set_attrs(&mut conn, "d", 0o2750, OLD), "a directory");
    assert_eq!(
        (mode(&server.at("d")), mtime_ns(&server.at("d"))),
        (0o750, OLD)
    );
    ok(set_attrs(&mut conn, "d/f", 0o4600, -1), "a file");
    assert_eq!(
        (mode(&server.at("d/f")), mtime_ns(&server.at("d/f"))),
        (0o600, -1)
    );
    // The field's ends, 1677 and 2262: taken, the file system storing what it can hold.
    ok(
        set_attrs(&mut conn, "d/f", 0o640, i64::MAX),
        "the last time",
    );
    ok(
        set_attrs(&mut conn, "d/f", 0o640, i64::MIN),
        "the first time",
    );
    assert_eq!(mode(&server.at("d/f")), 0o640);
    assert!(mtime_ns(&server.at("d/f")) < 0);

    let code = |result: Result<(), Refusal>| result.expect_err("refused").0;
    assert_eq!(
        code(set_attrs(&mut conn, "", 0o700, OLD)),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(set_attrs(&mut conn, "nothing", 0o700, OLD)),
        ErrorCode::NotFound
    );
    // A symlink, as the last component or on the way: never followed, whatever it points at.
    assert_eq!(
        code(set_attrs(&mut conn, "out", 0o777, OLD)),
        ErrorCode::OutsideRoot
    );
    assert_eq!(
        code(set_attrs(&mut conn, "d-link", 0o777, OLD)),
        ErrorCode::OutsideRoot
    );
    assert_eq!(
        code(set_attrs(&mut conn, "d-link/f", 0o777, OLD)),
        ErrorCode::OutsideRoot
    );
    assert_eq!(
        code(set_attrs(&mut conn, "../x", 0o777, OLD)),
        ErrorCode::BadRequest
    );
    let fifo =
        std::ffi::CString::new(server.at("fifo").into_os_string().into_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    assert_eq!(
        code(set_attrs(&mut conn, "fifo", 0o777, OLD)),
        ErrorCode::BadRequest
    );
    assert_eq!(mode(&server.at("fifo")), 0o600);

    assert_eq!(mode(server.root()), root_before);
    assert_eq!(
        (mode(server.outside()), mtime_ns(server.outside())),
        outside_before
    );
    assert_eq!(mode(&server.at("d")), 0o750, "not through d-link");
    server.assert_nothing_outside("after SET_ATTRS");
}

/// A server from before SET_ATTRS and STAT's mode, played by a proxy in front of this one:
/// SET_ATTRS goes on as type 0x37, which no server knows (`UNKNOWN_FRAME_TYPE` on its
/// stream, as an older server answers 0x36), and STAT's FILE_INFO comes back cut to its 50
/// bytes. Serves `connections` connections, then stops.
fn older_server(server: &FileServer, connections: usize) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    fn pump(mut from: TcpStream, mut to: TcpStream, rewrite: fn(&mut Vec<u8>)) {
        let mut header = [0; 12];
        while from.read_exact(&mut header).is_ok() {
            let len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
            let mut frame = header.to_vec();
            frame.resize(12 + len as usize, 0);
            if from.read_exact(&mut frame[12..]).is_err() {
                break;
            }
            rewrite(&mut frame);
            if to.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
    // One signature for both directions: the other one truncates.
    #[allow(clippy::ptr_arg)]
    fn to_server(frame: &mut Vec<u8>) {
        if frame[0] == 0x36 {
            frame[0] = 0x37;
        }
    }
    fn to_client(frame: &mut Vec<u8>) {
        // STAT's FILE_INFO ends its stream; GET's does not (and keeps its mode, as the
        // servers of the tree transfers did).
        if frame[0] == 0x38 && frame[1] & 0x01 != 0 && frame.len() > 12 + 50 {
            frame.truncate(12 + 50);
            frame[8..12].copy_from_slice(&50u32.to_be_bytes());
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let upstream = server.framed();
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Ok((client, _)) = listener.accept() else {
                return;
            };
            let Ok(real) = TcpStream::connect(upstream) else {
                return;
            };
            let (client2, real2) = (client.try_clone().unwrap(), real.try_clone().unwrap());
            std::thread::spawn(move || pump(client, real, to_server));
            std::thread::spawn(move || pump(real2, client2, to_client));
        }
    });
    addr
}

#[test]
fn an_older_server_gets_one_warning_and_the_tree_still_succeeds() {
    let server = FileServer::start(&[]);
    let mut cli = ClientDir::new(&server, "files-attrs");
    cli.addr = older_server(&server, 2);
    make_dirs(&cli.local("src"));

    let put = cli.exits_with(0, "put", &["-r", "-p", "src", "kept"]);
    let warnings: Vec<&str> = put.stderr.lines().collect();
    assert_eq!(warnings.len(), 1, "{}", put.stderr);
    assert!(
        warnings[0].starts_with("monoreactor: warning: ") && warnings[0].contains("SET_ATTRS"),
        "{}",
        put.stderr
    );
    assert_eq!(
        fs::read(server.at("kept/private/group/deep/d.txt")).unwrap(),
        random_bytes(3, 300_000)
    );
    assert_ne!(mode(&server.at("kept/private")), 0o700, "not set");

    // Downloads: the directories get their times; their modes, which STAT did not carry, not.
    make_dirs(&server.at("remote"));
    let get = cli.exits_with(0, "get", &["-r", "-p", "remote", "back"]);
    let warnings: Vec<&str> = get.stderr.lines().collect();
    assert_eq!(warnings.len(), 1, "{}", get.stderr);
    assert!(warnings[0].contains("no mode"), "{}", get.stderr);
    assert_eq!(mtime_ns(&cli.local("back/private/group")), OLD + 2);
    assert_ne!(mode(&cli.local("back/private")), 0o700);
}

/// `serve --access`: SET_ATTRS is a write (a read-only credential is refused), its path is
/// mapped into the credential's scope, and the scope's own directory, the root as that
/// client sees it, is refused as the server's root is.
#[test]
fn set_attrs_is_a_write_kept_to_the_credentials_scope() {
    use monoreactor::proto::ErrorCode;
    use support::{TempDir, run_cli};
    let timeout = std::time::Duration::from_secs(10);
    let dir = TempDir::new("attrs-scope");
    let root = dir.path().join("root");
    fs::create_dir_all(root.join("team/a/sub")).unwrap();
    let file = dir.path().join("access.toml");
    let add = |args: &[&str]| {
        let mut all = vec!["access", "add", "--file", file.to_str().unwrap()];
        all.extend_from_slice(args);
        let done = run_cli(&all, timeout);
        assert!(done.status.success(), "{}", done.stderr);
        done.stdout.trim().to_string()
    };
    let reader = add(&["--name", "r", "--root", "team/a", "--files", "read"]);
    let writer = add(&["--name", "w", "--root", "team/a", "--files", "write"]);
    let server = support::Server::start(&[
        "--access",
        file.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    let scope_before = (mode(&root.join("team/a")), mtime_ns(&root.join("team/a")));
    let answer = |token: &str, path: &str| {
        let hello = monoreactor::proto::Hello::with_credentials(token.as_bytes());
        let mut conn = FileConn::connect_with(&server, hello);
        set_attrs(&mut conn, path, 0o700, OLD)
    };
    let refused = answer(&reader, "sub").expect_err("a read-only credential");
    assert_eq!(refused.0, ErrorCode::Forbidden, "{}", refused.1);
    assert_ne!(mode(&root.join("team/a/sub")), 0o700);
    let refused = answer(&writer, "").expect_err("the scope's own directory");
    assert_eq!(refused.0, ErrorCode::BadRequest, "{}", refused.1);
    assert!(!refused.1.contains("team"), "{}", refused.1);
    ok(answer(&writer, "sub"), "inside the scope");
    assert_eq!(mode(&root.join("team/a/sub")), 0o700);
    assert_eq!(mtime_ns(&root.join("team/a/sub")), OLD);
    assert_eq!(
        (mode(&root.join("team/a")), mtime_ns(&root.join("team/a"))),
        scope_before
    );
}
