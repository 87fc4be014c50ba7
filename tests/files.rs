//! The file service over loopback against the real binary, in raw frames: round trips with
//! BLAKE3 checks, listings, STAT/MKDIR/DELETE, confinement to the root (a table of escapes and
//! a property test), verified and resumable uploads across client and server deaths, ranged
//! downloads, concurrency, a GiB each way beside an echo client, and a full disk.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use monoreactor::proto::files::{FileKind, Hash, PutFlags};
use monoreactor::proto::path::check_relative;
use monoreactor::proto::{ErrorCode, FrameType, Hello};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use support::exec::{Scratch, TEST_TOKEN};
use support::files::*;
use support::*;

// === Round trips ===

/// Puts `data` at `path`, gets it back, and checks bytes and hashes every way: the server's
/// put answer, the GET's FILE_INFO and DIGEST, the file in the root, `b3sum` if installed.
#[track_caller]
fn round_trip(server: &FileServer, conn: &mut FileConn, path: &str, data: &[u8]) {
    let expected = blake3_of(data);
    let stored = ok(conn.put(path, data), &format!("put {path}"));
    assert_eq!(
        hex(&stored),
        hex(&expected),
        "{path}: the server's put digest"
    );
    let on_disk = fs::read(server.at(path)).expect("the stored file");
    assert!(on_disk == data, "{path}: the file in the root differs");
    if let Some(sum) = b3sum(&server.at(path)) {
        assert_eq!(sum, hex(&expected), "{path}: b3sum of the stored file");
    }
    let got = ok(conn.get(path, 0), &format!("get {path}"));
    assert_eq!(got.info.size, data.len() as u64, "{path}: FILE_INFO size");
    assert_eq!(got.info.kind, FileKind::File, "{path}: FILE_INFO kind");
    if let Some(hash) = got.info.hash {
        assert_eq!(hex(&hash), hex(&expected), "{path}: FILE_INFO's known hash");
    }
    assert_eq!(got.len, data.len() as u64, "{path}: bytes received");
    assert!(got.bytes == data, "{path}: the bytes received differ");
    assert_eq!(hex(&got.digest), hex(&expected), "{path}: GET's DIGEST");
    assert_eq!(
        hex(&got.received_hash),
        hex(&expected),
        "{path}: hash of what came"
    );
}

#[test]
fn round_trips_of_edge_sizes_keep_every_byte_and_hash() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    for (seed, size) in [0usize, 1, 65_535, 65_536, 1_048_577]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(seed as u64 + 1, size);
        round_trip(&server, &mut conn, &format!("size-{size}"), &data);
    }
    // Without a declared hash too (an unnamed temporary file until the commit).
    let data = random_bytes(77, 70_000);
    let stored = ok(conn.put_unhashed("unhashed", &data), "put without a hash");
    assert_eq!(stored, blake3_of(&data));
    assert!(fs::read(server.at("unhashed")).unwrap() == data);
    // A second put replaces the file whole.
    let smaller = random_bytes(78, 10);
    round_trip(&server, &mut conn, "size-65536", &smaller);
    assert!(
        leftovers_after_the_disk(server.root()).is_empty(),
        "temporary files left: {:?}",
        reserved_entries(server.root())
    );
    assert_eq!(server.threads(), 1);
    server.assert_nothing_outside("after the round trips");
}

#[test]
fn a_100_mib_round_trip_matches_blake3() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    let data = random_bytes(100, 100 * MIB);
    round_trip(&server, &mut conn, "big.bin", &data);
    assert_eq!(server.threads(), 1);
}

// === LIST, STAT, MKDIR, DELETE ===

#[test]
fn list_shows_names_sizes_and_kinds_and_hides_reserved_names() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    ok(conn.mkdir("d"), "mkdir d");
    ok(conn.put("d/ten", b"0123456789"), "put d/ten");
    ok(conn.put("d/empty", b""), "put d/empty");
    ok(conn.put("d/b c é", b"xyz"), "put a name with a space and é");
    ok(conn.mkdir("d/sub"), "mkdir d/sub");
    symlink("/etc", server.at("d/link")).unwrap();
    fs::write(
        server.at("d/.monoreactor-partial-00000000000000ff"),
        b"half",
    )
    .unwrap();
    fs::create_dir(server.at("d/.monoreactor-dir")).unwrap();
    fs::write(server.at("d/.hidden"), b"h").unwrap();

    let mut entries = ok(conn.list("d"), "list d");
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let seen: Vec<(&str, FileKind, Option<u64>)> = entries
        .iter()
        .map(|e| {
            let size = matches!(e.kind, FileKind::File | FileKind::Partial).then_some(e.size);
            (e.name.as_str(), e.kind, size)
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (".hidden", FileKind::File, Some(1)),
            (
                ".monoreactor-partial-00000000000000ff",
                FileKind::Partial,
                Some(4)
            ),
            ("b c é", FileKind::File, Some(3)),
            ("empty", FileKind::File, Some(0)),
            ("link", FileKind::Symlink, None),
            ("sub", FileKind::Directory, None),
            ("ten", FileKind::File, Some(10)),
        ],
        "LIST d (the server's own .monoreactor-* names are hidden, partial uploads shown)"
    );
    let link = entries.iter().find(|e| e.name == "link").unwrap();
    assert_eq!(
        link.size, 4,
        "a symlink's size is the lstat size (its target's length)"
    );
    for entry in &entries {
        let path = server.at(&format!("d/{}", entry.name));
        assert_eq!(entry.mtime_ns, mtime_ns(&path), "{}: mtime", entry.name);
    }

    // "" lists the root.
    let root: Vec<String> = ok(conn.list(""), "list the root")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(root, vec!["d".to_string()]);
    // An empty directory: one page, no entries.
    let (empty, pages) = ok(conn.list_pages(b"d/sub"), "list an empty directory");
    assert!(empty.is_empty());
    assert_eq!(pages, 1);

    expect_refused(conn.list("d/ten"), ErrorCode::NotDirectory, "list a file");
    expect_refused(
        conn.list("missing"),
        ErrorCode::NotFound,
        "list a missing dir",
    );
    expect_refused(
        conn.list("d/link"),
        ErrorCode::OutsideRoot,
        "list a symlink",
    );
    expect_refused(
        conn.list_pages(b"d/.monoreactor-dir"),
        ErrorCode::BadRequest,
        "list a reserved name",
    );
    // The connection is still fine.
    conn.echo(b"after the refusals");
}

#[test]
fn a_big_directory_is_listed_in_pages_with_every_name_once() {
    let server = FileServer::start(&[]);
    let dir = server.at("many");
    fs::create_dir(&dir).unwrap();
    let names: BTreeSet<String> = (0..2500)
        .map(|i| format!("file-{i:05}-{}", "n".repeat(40)))
        .collect();
    for name in &names {
        fs::write(dir.join(name), name.as_bytes()).unwrap();
    }
    let mut conn = server.conn();
    let (entries, pages) = ok(conn.list_pages(b"many"), "list many");
    assert!(
        pages >= 3,
        "{} entries came in {pages} pages",
        entries.len()
    );
    let listed: Vec<&String> = entries.iter().map(|e| &e.name).collect();
    let unique: BTreeSet<String> = entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(listed.len(), unique.len(), "a name was listed twice");
    assert_eq!(unique, names);
    for entry in &entries {
        assert_eq!(entry.size, entry.name.len() as u64);
        assert_eq!(entry.kind, FileKind::File);
    }
}

#[test]
fn stat_describes_files_directories_links_and_the_root() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    ok(conn.mkdir("dir"), "mkdir");
    let data = random_bytes(5, 12_345);
    ok(conn.put("dir/f", &data), "put");
    symlink("/etc/passwd", server.at("dir/link")).unwrap();

    let info = ok(conn.stat("dir/f"), "stat a file");
    assert_eq!((info.kind, info.size), (FileKind::File, data.len() as u64));
    assert_eq!(info.mtime_ns, mtime_ns(&server.at("dir/f")));
    if let Some(hash) = info.hash {
        assert_eq!(hash, blake3_of(&data), "a known hash must be the file's");
    }
    let info = ok(conn.stat("dir"), "stat a directory");
    assert_eq!(info.kind, FileKind::Directory);
    assert_eq!(info.hash, None);
    let info = ok(conn.stat("dir/link"), "stat a symlink");
    assert_eq!(
        info.kind,
        FileKind::Symlink,
        "STAT looks at the link itself"
    );
    assert_eq!(info.size, "/etc/passwd".len() as u64);
    let info = ok(conn.stat(""), "stat the root");
    assert_eq!(info.kind, FileKind::Directory);
    assert_eq!(info.mtime_ns, mtime_ns(server.root()));

    expect_refused(
        conn.stat("nope"),
        ErrorCode::NotFound,
        "stat a missing file",
    );
    expect_refused(
        conn.stat("dir/f/x"),
        ErrorCode::NotDirectory,
        "stat beneath a file",
    );
    expect_refused(
        conn.stat("dir/link/x"),
        ErrorCode::OutsideRoot,
        "stat through a link",
    );
    expect_refused(conn.stat("../up"), ErrorCode::BadRequest, "stat ..");
}

#[test]
fn mkdir_and_delete_follow_their_rules() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    ok(conn.mkdir("a"), "mkdir a");
    assert!(server.at("a").is_dir());
    expect_refused(conn.mkdir("a"), ErrorCode::AlreadyExists, "mkdir again");
    expect_refused(
        conn.mkdir("x/y"),
        ErrorCode::NotFound,
        "mkdir without parent",
    );
    assert!(!server.at("x").exists(), "mkdir is one level only");
    expect_refused(conn.mkdir(""), ErrorCode::BadRequest, "mkdir the root");
    ok(conn.mkdir("a/b"), "mkdir a/b");
    ok(conn.put("a/b/f", b"content"), "put a/b/f");
    expect_refused(
        conn.mkdir("a/b/f"),
        ErrorCode::AlreadyExists,
        "mkdir over a file",
    );

    expect_refused(
        conn.delete("a/b"),
        ErrorCode::NotEmpty,
        "delete a non-empty dir",
    );
    assert!(
        server.at("a/b/f").is_file(),
        "nothing removed by a refused delete"
    );
    ok(conn.delete("a/b/f"), "delete a file");
    assert!(!server.at("a/b/f").exists());
    expect_refused(conn.delete("a/b/f"), ErrorCode::NotFound, "delete it again");
    ok(conn.delete("a/b"), "delete an empty dir");
    assert!(!server.at("a/b").exists());

    // A symlink is removed itself; its target stays.
    fs::write(server.at("a/target"), b"t").unwrap();
    symlink("target", server.at("a/link")).unwrap();
    symlink(server.outside(), server.at("a/out")).unwrap();
    ok(conn.delete("a/link"), "delete a symlink");
    ok(conn.delete("a/out"), "delete a symlink to outside");
    assert!(fs::symlink_metadata(server.at("a/link")).is_err());
    assert_eq!(fs::read(server.at("a/target")).unwrap(), b"t");
    expect_refused(conn.delete(""), ErrorCode::BadRequest, "delete the root");
    assert!(server.root().is_dir());
    server.assert_nothing_outside("after mkdir/delete");
}

#[test]
fn get_and_put_refusals_name_the_problem() {
    let server = FileServer::start(&["--max-put", "1000"]);
    let mut conn = server.conn();
    ok(conn.mkdir("dir"), "mkdir");
    ok(conn.put("dir/f", b"12345"), "put");
    expect_refused(conn.get("missing", 0), ErrorCode::NotFound, "get missing");
    expect_refused(
        conn.get("dir", 0),
        ErrorCode::IsDirectory,
        "get a directory",
    );
    expect_refused(conn.get("", 0), ErrorCode::IsDirectory, "get the root");
    expect_refused(
        conn.get("dir/f", 6),
        ErrorCode::BadOffset,
        "get past the end",
    );
    // offset == size: FILE_INFO, no DATA, the whole file's DIGEST.
    let got = ok(conn.get("dir/f", 5), "get at the end");
    assert_eq!((got.len, got.frames), (0, 0));
    assert_eq!(got.digest, blake3_of(b"12345"));
    // A FIFO is not a regular file (and opening it must not block the server).
    let fifo = std::ffi::CString::new(server.at("fifo").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    expect_refused(conn.get("fifo", 0), ErrorCode::BadRequest, "get a FIFO");

    expect_refused(
        conn.put("dir", b"x"),
        ErrorCode::IsDirectory,
        "put over a dir",
    );
    expect_refused(
        conn.put("nodir/f", b"x"),
        ErrorCode::NotFound,
        "put without parent",
    );
    expect_refused(
        conn.put("big", &[0; 1001]),
        ErrorCode::LimitReached,
        "put over --max-put",
    );
    // RESUME without a hash is malformed.
    let stream = conn.new_stream();
    expect_refused(
        conn.begin_put(stream, b"f", 3, PutFlags::RESUME, None),
        ErrorCode::BadRequest,
        "RESUME without HASH_DECLARED",
    );
    // More DATA than the size.
    let stream = conn.new_stream();
    ok(
        conn.begin_put(stream, b"over", 3, PutFlags::NONE, None),
        "put over",
    );
    conn.send_data(stream, b"four");
    expect_refused(
        conn.read_put_end(stream),
        ErrorCode::BadRequest,
        "too much DATA",
    );
    // DIGEST before all the bytes.
    let stream = conn.new_stream();
    ok(
        conn.begin_put(stream, b"short", 3, PutFlags::NONE, None),
        "put short",
    );
    conn.send_data(stream, b"ab");
    expect_refused(
        conn.finish_put(stream, &blake3_of(b"ab")),
        ErrorCode::BadRequest,
        "DIGEST before all bytes",
    );
    assert!(!server.at("over").exists() && !server.at("short").exists());
    assert!(leftovers_after_the_disk(server.root()).is_empty());
    conn.echo(b"still open");
    assert_eq!(server.threads(), 1);
}

// === Confinement ===

/// What a refused request must leave: nothing new outside the root, and no file by `name` in
/// /tmp.
#[track_caller]
fn assert_confined(server: &FileServer, name: &str, when: &str) {
    server.assert_nothing_outside(when);
    if !name.is_empty() {
        assert!(
            fs::symlink_metadata(std::env::temp_dir().join(name)).is_err(),
            "{when}: /tmp/{name} exists"
        );
    }
}

#[test]
fn traversal_attempts_are_refused_and_create_nothing_outside() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    // Inside the root: a real directory, a link to /etc, a link to a directory inside the root,
    // a link to a directory outside the root, a link to a file outside.
    fs::create_dir(server.at("real")).unwrap();
    fs::write(server.at("real/f"), b"inside").unwrap();
    symlink("/etc", server.at("etc")).unwrap();
    symlink(server.at("real"), server.at("inner")).unwrap();
    symlink("real", server.at("inner-rel")).unwrap();
    symlink(server.outside(), server.at("out")).unwrap();
    symlink(server.outside().join("secret"), server.at("secret-link")).unwrap();
    let root_before = snapshot(server.root(), &[]);

    let unique = format!("mr-escape-{}", std::process::id());
    let tmp_target = format!("/tmp/{unique}");
    let up = format!("../{unique}");
    let up2 = format!("a/../../{unique}");
    let backslash = format!("a\\..\\{unique}");
    let sibling = format!("../sibling/{unique}");
    let cases: Vec<(&str, &[u8], ErrorCode)> = vec![
        ("../x", up.as_bytes(), ErrorCode::BadRequest),
        ("../sibling/x", sibling.as_bytes(), ErrorCode::BadRequest),
        ("absolute", tmp_target.as_bytes(), ErrorCode::BadRequest),
        ("a/../../x", up2.as_bytes(), ErrorCode::BadRequest),
        ("a\\..\\x", backslash.as_bytes(), ErrorCode::BadRequest),
        ("NUL", b"real/f\0../../x", ErrorCode::BadRequest),
        ("NUL alone", b"\0", ErrorCode::BadRequest),
        ("dot", b"./real/f", ErrorCode::BadRequest),
        ("trailing slash", b"real/", ErrorCode::BadRequest),
        ("double slash", b"real//f", ErrorCode::BadRequest),
        ("reserved", b".monoreactor-partial-1", ErrorCode::BadRequest),
        ("not UTF-8", b"real/\xff", ErrorCode::BadRequest),
        (
            "link to /etc, beneath",
            b"etc/passwd",
            ErrorCode::OutsideRoot,
        ),
        ("link to /etc itself", b"etc", ErrorCode::OutsideRoot),
        ("link inside the root", b"inner/f", ErrorCode::OutsideRoot),
        (
            "relative link inside the root",
            b"inner-rel/f",
            ErrorCode::OutsideRoot,
        ),
        (
            "link to a dir outside",
            b"out/secret",
            ErrorCode::OutsideRoot,
        ),
        (
            "link to a file outside",
            b"secret-link",
            ErrorCode::OutsideRoot,
        ),
    ];
    for (what, path, code) in &cases {
        let result = conn.get_raw(path, 0, true);
        if let Ok(got) = &result {
            assert!(got.bytes != SECRET, "GET {what} served the secret");
        }
        expect_refused(result.map(|got| got.len), *code, &format!("GET {what}"));
    }
    // GET /etc/passwd by its absolute name: a syntax refusal.
    expect_refused(
        conn.get("/etc/passwd", 0).map(|got| got.len),
        ErrorCode::BadRequest,
        "GET /etc/passwd",
    );

    // PUT the same paths (never an absolute path that would land anywhere that matters),
    // plus through links: the link to /etc is only ever replaced, never written through.
    let put_cases: Vec<(&str, Vec<u8>, ErrorCode)> = vec![
        ("../x", up.as_bytes().to_vec(), ErrorCode::BadRequest),
        (
            "../sibling/x",
            sibling.as_bytes().to_vec(),
            ErrorCode::BadRequest,
        ),
        (
            "absolute",
            tmp_target.as_bytes().to_vec(),
            ErrorCode::BadRequest,
        ),
        ("a/../../x", up2.as_bytes().to_vec(), ErrorCode::BadRequest),
        (
            "a\\..\\x",
            backslash.as_bytes().to_vec(),
            ErrorCode::BadRequest,
        ),
        (
            "NUL",
            format!("x\0{unique}").into_bytes(),
            ErrorCode::BadRequest,
        ),
        (
            "reserved",
            b"real/.monoreactor-partial-1".to_vec(),
            ErrorCode::BadRequest,
        ),
        (
            "link to /etc itself",
            b"etc".to_vec(),
            ErrorCode::OutsideRoot,
        ),
        (
            "through a link inside",
            format!("inner/{unique}").into_bytes(),
            ErrorCode::OutsideRoot,
        ),
        (
            "link inside itself",
            b"inner".to_vec(),
            ErrorCode::OutsideRoot,
        ),
        (
            "through a link outside",
            format!("out/{unique}").into_bytes(),
            ErrorCode::OutsideRoot,
        ),
        (
            "over the secret",
            b"out/secret".to_vec(),
            ErrorCode::OutsideRoot,
        ),
        (
            "over a file link",
            b"secret-link".to_vec(),
            ErrorCode::OutsideRoot,
        ),
    ];
    for (what, path, code) in &put_cases {
        let data = b"escaped!";
        let hash = blake3_of(data);
        for declared in [Some(hash), None] {
            expect_refused(
                conn.put_full(path, data, declared, false, &hash),
                *code,
                &format!("PUT {what} (hash declared: {})", declared.is_some()),
            );
        }
    }
    // MKDIR, LIST, STAT and DELETE through links and out of the root.
    expect_refused(
        conn.mkdir(&format!("out/{unique}")),
        ErrorCode::OutsideRoot,
        "MKDIR through out",
    );
    expect_refused(
        conn.mkdir(&format!("inner/{unique}")),
        ErrorCode::OutsideRoot,
        "MKDIR through inner",
    );
    expect_refused(conn.mkdir(&up), ErrorCode::BadRequest, "MKDIR ..");
    expect_refused(conn.list("out"), ErrorCode::OutsideRoot, "LIST out");
    expect_refused(conn.list("etc"), ErrorCode::OutsideRoot, "LIST etc");
    expect_refused(conn.list("inner"), ErrorCode::OutsideRoot, "LIST inner");
    expect_refused(conn.list(".."), ErrorCode::BadRequest, "LIST ..");
    expect_refused(
        conn.stat("etc/passwd"),
        ErrorCode::OutsideRoot,
        "STAT etc/passwd",
    );
    expect_refused(
        conn.stat("out/secret"),
        ErrorCode::OutsideRoot,
        "STAT out/secret",
    );
    expect_refused(
        conn.delete("out/secret"),
        ErrorCode::OutsideRoot,
        "DELETE out/secret",
    );
    expect_refused(
        conn.delete("inner/f"),
        ErrorCode::OutsideRoot,
        "DELETE inner/f",
    );
    expect_refused(conn.delete(&up), ErrorCode::BadRequest, "DELETE ..");

    assert_eq!(
        snapshot(server.root(), &[]),
        root_before,
        "the root changed (a link replaced or written through?)"
    );
    assert_confined(&server, &unique, "after the traversal table");
    assert!(fs::read(server.outside().join("secret")).unwrap() == SECRET);
    conn.echo(b"still open");
}

/// Components for the property test's paths, weighted towards the ones that lead somewhere:
/// names that exist, a symlink to the outside directory (`link`) and the secret's name in it,
/// a symlink to a directory inside the root (`in`), dots, and the bytes that must never pass.
const COMPONENTS: &[(u32, &str)] = &[
    (3, "link"),
    (3, "in"),
    (2, "secret"),
    (3, "a"),
    (2, ".."),
    (1, "."),
    (1, ""),
    (1, ".monoreactor-x"),
    (2, "b c"),
    (2, "é"),
    (1, "\0"),
    (1, "\\"),
    (1, "a\\..\\b"),
];

/// Separators between components: mostly `/`, sometimes none, a doubled one or a backslash.
const SEPARATORS: &[(u32, &str)] = &[(8, "/"), (1, ""), (1, "//"), (1, "\\")];

fn weighted(choices: &'static [(u32, &'static str)]) -> BoxedStrategy<&'static str> {
    let options: Vec<(u32, BoxedStrategy<&'static str>)> = choices
        .iter()
        .map(|&(weight, text)| (weight, Just(text).boxed()))
        .collect();
    prop::strategy::Union::new_weighted(options).boxed()
}

/// A path of 1 to 4 components: an optional leading `/`, then components and separators.
fn path_strategy() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.1),
        prop::collection::vec((weighted(COMPONENTS), weighted(SEPARATORS)), 1..=4),
    )
        .prop_map(|(absolute, parts)| {
            let mut path = String::from(if absolute { "/" } else { "" });
            for (at, (component, separator)) in parts.iter().enumerate() {
                if at > 0 {
                    path.push_str(separator);
                }
                path.push_str(component);
            }
            path
        })
}

/// Puts back whatever an earlier case removed or replaced of the property test's fixture.
fn restore_fixture(server: &FileServer) {
    let _ = fs::create_dir(server.at("a"));
    let _ = fs::create_dir(server.at("a/a"));
    for (link, target) in [
        ("link", server.outside().to_path_buf()),
        ("in", "a".into()),
        ("a/a/link", "..".into()),
    ] {
        let path = server.at(link);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => continue,
            Ok(meta) if meta.is_dir() => fs::remove_dir_all(&path).unwrap(),
            Ok(_) => fs::remove_file(&path).unwrap(),
            Err(_) => {}
        }
        symlink(target, &path).unwrap();
    }
    if !server.at("a/é").is_file() {
        let _ = fs::remove_dir_all(server.at("a/é"));
        fs::write(server.at("a/é"), b"inside a").unwrap();
    }
}

#[test]
fn property_no_path_escapes_the_root() {
    let server = FileServer::start(&[]);
    // One connection for every case (the runner's closure is `Fn`).
    let conn = std::cell::RefCell::new(server.conn());
    fs::write(server.at("b c"), b"inside b c").unwrap();
    fs::write(server.at("secret"), b"the root's own secret").unwrap();

    // 512 cases take well under a second against one server.
    let mut runner = TestRunner::new(Config {
        cases: 512,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&(path_strategy(), 0u8..6), |(path, op)| {
        restore_fixture(&server);
        let bytes = path.as_bytes();
        let syntax_ok = check_relative(&path).is_ok();
        let payload = b"written by the property test";
        let hash = blake3_of(payload);
        let mut conn = conn.borrow_mut();
        let (what, result): (&str, Result<Option<Vec<u8>>, Refusal>) = match op {
            0 => (
                "GET",
                conn.get_raw(bytes, 0, true).map(|got| Some(got.bytes)),
            ),
            1 => (
                "PUT",
                conn.put_full(bytes, payload, Some(hash), false, &hash)
                    .map(|_| None),
            ),
            2 => ("MKDIR", conn.mkdir_raw(bytes).map(|()| None)),
            3 => ("LIST", conn.list_pages(bytes).map(|_| None)),
            4 => ("STAT", conn.stat_raw(bytes).map(|_| None)),
            _ => ("DELETE", conn.delete_raw(bytes).map(|()| None)),
        };
        if !syntax_ok {
            let code = result.as_ref().err().map(|(code, _)| *code);
            prop_assert_eq!(
                code,
                Some(ErrorCode::BadRequest),
                "{} {:?}: refused by check_relative, answered {:?}",
                what,
                path,
                result
            );
        }
        if result.is_ok() {
            // Only STAT and DELETE may name a symlink, and only as the last component.
            let last_may_be_a_link = matches!(what, "STAT" | "DELETE");
            prop_assert!(
                !through_symlink(server.root(), &path, last_may_be_a_link),
                "{} {:?} succeeded through a symlink",
                what,
                path
            );
        }
        if let Ok(Some(bytes)) = &result {
            prop_assert!(
                bytes.as_slice() != SECRET,
                "GET {:?} served the secret",
                path
            );
            prop_assert_eq!(bytes, &fs::read(server.at(&path)).unwrap());
        }
        if what == "PUT" && result.is_ok() {
            prop_assert_eq!(fs::read(server.at(&path)).unwrap(), payload.to_vec());
        }
        if what == "MKDIR" && result.is_ok() {
            prop_assert!(server.at(&path).is_dir());
        }
        server.assert_nothing_outside(&format!("after {what} {path:?}"));
        Ok(())
    });
    if let Err(error) = outcome {
        panic!("{error}");
    }
    conn.borrow_mut().echo(b"still open");
    assert!(fs::read(server.outside().join("secret")).unwrap() == SECRET);
}

/// Whether a component of `relative` (beneath `root`) is a symlink; the last one is not
/// looked at if `except_last`.
fn through_symlink(root: &std::path::Path, relative: &str, except_last: bool) -> bool {
    let parts: Vec<&str> = relative.split('/').collect();
    let checked = if except_last {
        parts.len().saturating_sub(1)
    } else {
        parts.len()
    };
    let mut at = root.to_path_buf();
    for part in &parts[..checked] {
        at.push(part);
        if fs::symlink_metadata(&at).is_ok_and(|meta| meta.file_type().is_symlink()) {
            return true;
        }
    }
    false
}

// === Verified uploads ===

#[test]
fn a_corrupted_hash_is_refused_and_the_target_kept() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    let old = b"the old content".to_vec();
    ok(conn.put("t", &old), "put the old content");
    let data = random_bytes(9, 3 * MIB + 7);
    let right = blake3_of(&data);
    let mut wrong = right;
    wrong[0] ^= 1;
    let mut flipped = data.clone();
    flipped[MIB + 3] ^= 0x40;

    let attempts: Vec<(&str, &[u8], Option<Hash>, Hash)> = vec![
        ("declared right, trailer wrong", &data, Some(right), wrong),
        ("declared wrong, trailer wrong", &data, Some(wrong), wrong),
        (
            "declared right, trailer right, a byte flipped",
            &flipped,
            Some(right),
            right,
        ),
        ("no declared hash, trailer wrong", &data, None, wrong),
        ("no declared hash, a byte flipped", &flipped, None, right),
    ];
    for (what, bytes, declared, trailer) in attempts {
        expect_refused(
            conn.put_full(b"t", bytes, declared, false, &trailer),
            ErrorCode::HashMismatch,
            what,
        );
        assert_eq!(
            fs::read(server.at("t")).unwrap(),
            old,
            "{what}: target changed"
        );
        // The partial goes once the disk helper has answered the writes it was given.
        let names = retry(Duration::from_secs(10), || {
            let names: Vec<String> = ok(conn.list(""), "list")
                .into_iter()
                .map(|e| e.name)
                .collect();
            (names.len() == 1).then_some(names)
        });
        assert_eq!(
            names,
            Some(vec!["t".to_string()]),
            "{what}: LIST shows a partial"
        );
        // The partial goes at once from its name; a big one is renamed aside and its blocks
        // freed by the disk helper a moment later.
        assert_eq!(
            leftovers_after_the_disk(server.root()),
            vec![],
            "{what}: the partial file was not removed"
        );
    }
    // The right bytes with the right hash still go through afterwards.
    ok(conn.put("t", &data), "put after the mismatches");
    assert!(fs::read(server.at("t")).unwrap() == data);
}

/// Sends PUT (hash declared) and the first `sent` bytes of `data` on a new connection, then
/// closes it (with RST if `reset`). Returns the upload id.
fn interrupted_put(server: &FileServer, path: &str, data: &[u8], sent: usize, reset: bool) -> u64 {
    let mut conn = server.conn();
    let stream = conn.new_stream();
    let ready = ok(
        conn.begin_put(
            stream,
            path.as_bytes(),
            data.len() as u64,
            PutFlags::NONE,
            Some(blake3_of(data)),
        ),
        "begin the put",
    );
    assert_eq!(ready.held, 0, "a put without RESUME starts from 0");
    assert_ne!(ready.upload_id, 0);
    conn.send_data(stream, &data[..sent]);
    // An echo round trip: the server has read everything before it.
    conn.echo(b"sync");
    let client = conn.into_client();
    if reset {
        set_linger_zero(client.stream());
    }
    drop(client);
    ready.upload_id
}

/// Waits until the partial upload in `dir` has at least `len` bytes; returns its size.
fn wait_partial(dir: &std::path::Path, len: u64) -> u64 {
    let found = retry(Duration::from_secs(10), || {
        reserved_entries(dir)
            .into_iter()
            .find(|(name, size)| name.starts_with(".monoreactor-partial-") && *size >= len)
            .map(|(_, size)| size)
    });
    found.unwrap_or_else(|| {
        panic!(
            "no partial of {len} bytes in {}: {:?}",
            dir.display(),
            reserved_entries(dir)
        )
    })
}

#[test]
fn an_upload_cut_by_the_client_resumes_and_never_splices() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    let old = b"old".to_vec();
    ok(conn.put("f", &old), "put the old content");
    let data = random_bytes(21, 4 * MIB + 321);
    // A cut at a random byte (printed, to replay a failure): any split must resume.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |since| since.subsec_nanos() as usize);
    let half = 1 + nanos % (data.len() - 1);
    println!("cut at byte {half} of {}", data.len());

    for reset in [false, true] {
        interrupted_put(&server, "f", &data, half, reset);
        assert_eq!(
            fs::read(server.at("f")).unwrap(),
            old,
            "target changed (reset {reset})"
        );
        let kinds: Vec<FileKind> = ok(conn.list(""), "list")
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert!(
            kinds.contains(&FileKind::File) && kinds.contains(&FileKind::Partial),
            "LIST shows the file and the partial (reset {reset}): {kinds:?}"
        );
        assert!(
            reserved_entries(server.root())
                .iter()
                .any(|(name, _)| name.starts_with(".monoreactor-partial-")),
            "the partial did not survive the disconnect (reset {reset})"
        );
        let hash = blake3_of(&data);
        let (ready, stored) = ok(
            retry_busy_upload(Duration::from_secs(5), || {
                conn.put_full(b"f", &data, Some(hash), true, &hash)
            }),
            "resume",
        );
        assert!(
            ready.held > 0 && ready.held <= half as u64,
            "resume held {} of the {half} bytes sent (reset {reset})",
            ready.held
        );
        if !reset {
            assert_eq!(
                ready.held, half as u64,
                "everything sent before FIN is held"
            );
        }
        assert_eq!(stored, hash);
        assert!(
            fs::read(server.at("f")).unwrap() == data,
            "resumed file differs"
        );
        assert!(
            leftovers_after_the_disk(server.root()).is_empty(),
            "partial left after the commit: {:?}",
            reserved_entries(server.root())
        );
        ok(conn.put("f", &old), "put the old content back");
    }

    // Another file of the same size to the same path: another upload, nothing spliced.
    interrupted_put(&server, "f", &data, half, false);
    let other = random_bytes(22, data.len());
    let other_hash = blake3_of(&other);
    let (ready, stored) = ok(
        retry_busy_upload(Duration::from_secs(5), || {
            conn.put_full(b"f", &other, Some(other_hash), true, &other_hash)
        }),
        "resume with another file's hash",
    );
    assert_eq!(ready.held, 0, "a resume with another hash must start over");
    assert_eq!(stored, other_hash);
    assert!(fs::read(server.at("f")).unwrap() == other);
    // The same file to another path: another upload too.
    interrupted_put(&server, "f", &data, half, false);
    let hash = blake3_of(&data);
    let (ready, _) = ok(
        conn.put_full(b"g", &data, Some(hash), true, &hash),
        "resume to another path",
    );
    assert_eq!(ready.held, 0, "a resume to another path must start over");
    // Without RESUME the partial is not used either.
    let (ready, _) = ok(
        retry_busy_upload(Duration::from_secs(5), || {
            conn.put_full(b"f", &data, Some(hash), false, &hash)
        }),
        "a put without RESUME",
    );
    assert_eq!(ready.held, 0, "without RESUME the upload starts from 0");
    assert!(fs::read(server.at("f")).unwrap() == data);
    let visible: Vec<String> = ok(conn.list(""), "list")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        visible
            .iter()
            .all(|name| !name.starts_with(RESERVED_PREFIX))
    );
    assert_eq!(server.threads(), 1);
}

/// A put cut by the server's death (`signal`): after a restart on the same root the target
/// is unchanged, no partial is listed, and a resume completes the file.
fn server_dies_mid_put(signal: libc::c_int) {
    let mut server = FileServer::start(&["--shutdown-grace", "2"]);
    let old = b"old content".to_vec();
    ok(server.conn().put("f", &old), "put the old content");
    let data = random_bytes(31, 6 * MIB + 99);
    let hash = blake3_of(&data);
    let sent = 3 * MIB;

    let mut conn = server.conn();
    let stream = conn.new_stream();
    ok(
        conn.begin_put(stream, b"f", data.len() as u64, PutFlags::NONE, Some(hash)),
        "begin the put",
    );
    conn.send_data(stream, &data[..sent]);
    wait_partial(server.root(), sent as u64);
    server.signal(signal);
    let status = server.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "the server did not exit after signal {signal}"
    );
    drop(conn);
    assert_eq!(
        fs::read(server.at("f")).unwrap(),
        old,
        "target changed by the death"
    );

    server.restart(&[]);
    let mut conn = server.conn();
    let mut entries = ok(conn.list(""), "list");
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let kinds: Vec<FileKind> = entries.into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [FileKind::Partial, FileKind::File],
        "LIST after the restart: the file and the partial"
    );
    let (ready, stored) = ok(
        conn.put_full(b"f", &data, Some(hash), true, &hash),
        "resume",
    );
    assert!(
        ready.held <= sent as u64,
        "held {} after sending {sent}",
        ready.held
    );
    assert!(
        ready.held > 0,
        "the partial of {sent} bytes on disk was not resumed after signal {signal}"
    );
    assert_eq!(stored, hash);
    assert!(
        fs::read(server.at("f")).unwrap() == data,
        "the resumed file differs"
    );
    assert!(leftovers_after_the_disk(server.root()).is_empty());
}

#[test]
fn a_put_cut_by_sigterm_leaves_the_target_and_resumes_after_a_restart() {
    server_dies_mid_put(libc::SIGTERM);
}

#[test]
fn a_put_cut_by_sigkill_leaves_the_target_and_resumes_after_a_restart() {
    server_dies_mid_put(libc::SIGKILL);
}

// === Downloads ===

#[test]
fn a_get_resumes_from_any_offset_with_the_whole_files_digest() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    let data = random_bytes(41, 3 * MIB + 123);
    let whole = blake3_of(&data);
    ok(conn.put("f", &data), "put");
    let mut rng = monoreactor::testkit::SplitMix64::new(4242);
    let mut offsets = vec![
        0u64,
        1,
        MIB as u64,
        data.len() as u64 - 1,
        data.len() as u64,
    ];
    offsets.extend((0..5).map(|_| rng.next_u64() % data.len() as u64));
    for offset in offsets {
        let got = ok(conn.get("f", offset), &format!("get from {offset}"));
        assert_eq!(got.info.size, data.len() as u64);
        assert!(
            got.bytes == data[offset as usize..],
            "bytes from offset {offset} differ"
        );
        assert_eq!(hex(&got.digest), hex(&whole), "DIGEST from offset {offset}");
    }
    // Concurrent GETs on one connection, each on its own stream, interleave correctly.
    let (a, b) = (conn.new_stream(), conn.new_stream());
    conn.send(&get_frame(a, b"f", 17));
    conn.send(&get_frame(b, b"f", 2 * MIB as u64));
    let mut bytes = [Vec::new(), Vec::new()];
    let mut ended = [false, false];
    while !(ended[0] && ended[1]) {
        let frame = conn.recv();
        let slot = if frame.header.stream == a { 0 } else { 1 };
        assert!(frame.header.stream == a || frame.header.stream == b);
        match frame.header.frame_type {
            FrameType::FileInfo => {}
            FrameType::Data => bytes[slot].extend_from_slice(&frame.payload),
            FrameType::Digest => {
                assert_eq!(frame.payload, whole);
                ended[slot] = true;
            }
            other => panic!("{other} during two GETs: {}", describe(&frame)),
        }
    }
    assert!(bytes[0] == data[17..]);
    assert!(bytes[1] == data[2 * MIB..]);
}

// === Load ===

#[test]
fn twenty_concurrent_transfers_all_succeed() {
    let server = FileServer::start(&[]);
    let mut setup = server.conn();
    for i in 0..10 {
        ok(
            setup.put(
                &format!("src-{i}"),
                &random_bytes(500 + i, MIB + i as usize * 1000),
            ),
            "put a source",
        );
    }
    let barrier = Arc::new(Barrier::new(21));
    let server_ref = &server;
    let threads_seen = thread::scope(|scope| {
        let workers: Vec<_> = (0..20u64)
            .map(|i| {
                let barrier = Arc::clone(&barrier);
                scope.spawn(move || {
                    let mut conn = server_ref.conn();
                    barrier.wait();
                    if i % 2 == 0 {
                        let data = random_bytes(100 + i, 2 * MIB + i as usize * 777);
                        let hash = ok(conn.put(&format!("up-{i}"), &data), "concurrent put");
                        assert_eq!(hash, blake3_of(&data));
                        (format!("up-{i}"), data)
                    } else {
                        let n = i / 2;
                        let expected = random_bytes(500 + n, MIB + n as usize * 1000);
                        let got = ok(conn.get(&format!("src-{n}"), 0), "concurrent get");
                        assert!(got.bytes == expected, "get of src-{n} differs");
                        assert_eq!(got.digest, blake3_of(&expected));
                        (format!("src-{n}"), expected)
                    }
                })
            })
            .collect();
        barrier.wait();
        let mut threads_seen = Vec::new();
        while workers.iter().any(|worker| !worker.is_finished()) {
            threads_seen.push(server.threads());
            thread::sleep(Duration::from_millis(5));
        }
        for worker in workers {
            let (path, data) = worker.join().expect("a transfer thread");
            assert!(
                fs::read(server.at(&path)).unwrap() == data,
                "{path} differs"
            );
        }
        threads_seen
    });
    assert!(
        threads_seen.iter().all(|&count| count == 1),
        "the server ran other threads: {threads_seen:?}"
    );
    assert!(leftovers_after_the_disk(server.root()).is_empty());
}

const GIB: u64 = 1 << 30;

/// Writes a GiB straight into the root (a MiB block 1024 times); returns its hash.
fn make_gib_file(path: &std::path::Path) -> Hash {
    let block = random_bytes(1 << 20, MIB);
    let mut file = fs::File::create(path).unwrap();
    let mut hasher = blake3::Hasher::new();
    for _ in 0..GIB / MIB as u64 {
        file.write_all(&block).unwrap();
        hasher.update(&block);
    }
    *hasher.finalize().as_bytes()
}

#[test]
fn echo_keeps_answering_while_a_gib_is_downloaded() {
    let server = FileServer::start(&[]);
    let expected = make_gib_file(&server.at("gib"));
    let stop = Arc::new(AtomicBool::new(false));
    let pid = server.pid();
    let prober = {
        let stop = Arc::clone(&stop);
        let addr = server.framed_str();
        thread::spawn(move || {
            let mut client = monoreactor::client::Client::connect(&addr, IO_TIMEOUT)
                .expect("echo client connects");
            let (mut rounds, mut worst, mut thread_counts) = (0u32, Duration::ZERO, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let reply = client.echo(&[0x5a; 64]).expect("echo during the GET");
                worst = worst.max(sent.elapsed());
                assert_eq!(reply, [0x5a; 64]);
                rounds += 1;
                thread_counts.push(threads(pid));
                thread::sleep(Duration::from_millis(5));
            }
            (rounds, worst, thread_counts)
        })
    };
    let started = Instant::now();
    let reader = {
        let mut conn = server.conn();
        thread::spawn(move || {
            conn.get("gib", 0)
                .map(|got| (got.len, got.received_hash, got.digest))
        })
    };
    let result = reader.join().expect("the GET thread");
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (rounds, worst, thread_counts) = prober.join().expect("echo prober");
    eprintln!("1 GiB GET in {elapsed:?}; {rounds} echoes meanwhile, slowest {worst:?}");
    let (len, received, digest) = ok(result, "the GiB GET");
    assert_eq!(len, GIB);
    assert_eq!(hex(&received), hex(&expected), "the bytes received");
    assert_eq!(hex(&digest), hex(&expected), "the DIGEST");
    assert!(rounds >= 10, "only {rounds} echoes in {elapsed:?}");
    assert!(
        worst < Duration::from_secs(1),
        "an echo took {worst:?} during the GET"
    );
    assert!(
        thread_counts.iter().all(|&count| count == 1),
        "the server ran other threads: {thread_counts:?}"
    );
}

/// Most the server's RSS may reach while a GiB is uploaded.
const PUT_RSS_LIMIT_KIB: u64 = 64 << 10;

#[test]
fn server_memory_stays_bounded_during_a_gib_upload() {
    let server = FileServer::start(&[]);
    let rss_before = server.rss_kib();
    let block = random_bytes(1 << 21, MIB);
    let mut hasher = blake3::Hasher::new();
    for _ in 0..GIB / MIB as u64 {
        hasher.update(&block);
    }
    let hash = *hasher.finalize().as_bytes();
    let mut conn = server.conn();
    let stream = conn.new_stream();
    ok(
        conn.begin_put(stream, b"gib", GIB, PutFlags::NONE, Some(hash)),
        "begin the GiB put",
    );
    let started = Instant::now();
    let (mut rss_max, mut threads_max) = (0, 0);
    for i in 0..GIB / MIB as u64 {
        // In 64 KiB frames for a quarter of it, like a client with small writes.
        if i % 4 == 0 {
            conn.send_data_in(stream, &block, 64 << 10);
        } else {
            conn.send_data(stream, &block);
        }
        if i % 32 == 0 {
            rss_max = rss_max.max(server.rss_kib());
            threads_max = threads_max.max(server.threads());
        }
    }
    let stored = ok(conn.finish_put(stream, &hash), "finish the GiB put");
    let elapsed = started.elapsed();
    eprintln!("1 GiB PUT in {elapsed:?}; RSS {rss_before} -> max {rss_max} KiB");
    assert_eq!(stored, hash);
    assert_eq!(fs::metadata(server.at("gib")).unwrap().len(), GIB);
    assert!(
        rss_max < PUT_RSS_LIMIT_KIB,
        "server RSS reached {rss_max} KiB (from {rss_before}) during the GiB upload"
    );
    assert_eq!(threads_max, 1, "the server ran other threads");
}

// === A full disk ===

/// A 2 MiB tmpfs, unmounted on drop; `None` (with a note) where mounting is not allowed.
struct SmallFs {
    dir: std::path::PathBuf,
    _scratch: Scratch,
}

impl SmallFs {
    fn mount() -> Option<SmallFs> {
        let scratch = Scratch::new("nospace");
        let dir = scratch.path().join("mnt");
        fs::create_dir(&dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&dir)
            .stderr(std::process::Stdio::null())
            .status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("note: cannot mount a tmpfs (not root?); skipping the full-disk test");
            return None;
        }
        Some(SmallFs {
            dir,
            _scratch: scratch,
        })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

#[test]
fn a_full_disk_answers_no_space_and_frees_the_space() {
    let Some(small) = SmallFs::mount() else {
        return;
    };
    let root = small.dir.join("root");
    fs::create_dir(&root).unwrap();
    {
        let server = Server::start(&["--root", root.to_str().unwrap()]);
        let mut conn = FileConn::connect(&server);
        let old = b"small and old".to_vec();
        ok(conn.put("target", &old), "put the old content");
        let big = random_bytes(61, 4 * MIB);
        for declared in [false, true] {
            let hash = blake3_of(&big);
            expect_refused(
                conn.put_full(b"target", &big, declared.then_some(hash), false, &hash),
                ErrorCode::NoSpace,
                &format!("a 4 MiB put on a 2 MiB disk (hash declared: {declared})"),
            );
            assert_eq!(
                fs::read(root.join("target")).unwrap(),
                old,
                "target changed"
            );
            // The failed upload must not keep the disk full: its partial goes once the disk
            // helper has answered the writes it was given, and its blocks a moment later.
            let gone = retry(Duration::from_secs(10), || {
                leftovers_after_the_disk(&root).is_empty().then_some(())
            });
            assert!(
                gone.is_some(),
                "NO_SPACE (hash declared: {declared}) left a partial holding the space: {:?}",
                reserved_entries(&root)
            );
            let names: Vec<String> = ok(conn.list(""), "list")
                .into_iter()
                .map(|e| e.name)
                .collect();
            assert_eq!(names, vec!["target".to_string()]);
            // The space is free again: a 1 MiB put fits.
            let fits = random_bytes(62, MIB);
            ok(
                conn.put("fits", &fits),
                &format!("a 1 MiB put after NO_SPACE (hash declared: {declared})"),
            );
            ok(conn.delete("fits"), "delete fits");
        }
        conn.echo(b"still open");
    }
    drop(small);
}

// === Versions and authentication ===

#[test]
fn a_version_1_connection_does_not_know_file_frames() {
    let server = FileServer::start(&[]);
    fs::write(server.at("f"), b"hello").unwrap();
    let mut conn = FileConn::connect_with(
        &server,
        Hello {
            min_version: 1,
            max_version: 1,
            credentials: &[],
        },
    );
    assert_eq!(conn.hello_ok.version, 1);
    for (frame_type, wire) in [
        (FrameType::Get, get_frame(3, b"f", 0)),
        (FrameType::Put, put_frame(5, b"g", 1, PutFlags::NONE, None)),
        (FrameType::List, path_frame(FrameType::List, 7, b"")),
        (FrameType::Stat, path_frame(FrameType::Stat, 9, b"f")),
        (FrameType::Mkdir, path_frame(FrameType::Mkdir, 11, b"d")),
        (FrameType::Delete, path_frame(FrameType::Delete, 13, b"f")),
    ] {
        conn.send(&wire);
        let frame = conn.recv();
        let stream = wire[4..8].try_into().map(u32::from_be_bytes).unwrap();
        let refused = refusal(&frame);
        assert_eq!(
            (frame.header.stream, refused.map(|(code, _)| code)),
            (stream, Some(ErrorCode::UnknownFrameType)),
            "{frame_type} on version 1: {}",
            describe(&frame)
        );
    }
    conn.echo(b"still open");
    assert!(server.at("f").exists() && !server.at("g").exists() && !server.at("d").exists());
}

#[test]
fn file_requests_need_an_authenticated_connection() {
    let server = Server::start_exec(&[]);
    fs::write(server.root().join("f"), b"secret file").unwrap();
    let mut conn = FileConn::connect_with(&server, Hello::current());
    assert!(
        !conn
            .hello_ok
            .flags
            .contains(monoreactor::proto::SessionFlags::FILES),
        "FILES offered without the token"
    );
    expect_refused(
        conn.get("f", 0).map(|got| got.len),
        ErrorCode::Unauthenticated,
        "GET",
    );
    expect_refused(
        conn.put_full(b"g", b"x", None, false, &blake3_of(b"x")),
        ErrorCode::Unauthenticated,
        "PUT",
    );
    expect_refused(conn.list(""), ErrorCode::Unauthenticated, "LIST");
    expect_refused(conn.stat("f"), ErrorCode::Unauthenticated, "STAT");
    expect_refused(conn.mkdir("d"), ErrorCode::Unauthenticated, "MKDIR");
    expect_refused(conn.delete("f"), ErrorCode::Unauthenticated, "DELETE");
    conn.echo(b"echo needs no token");
    assert!(!server.root().join("g").exists() && !server.root().join("d").exists());
    assert!(server.root().join("f").exists());

    // With the token, the same requests work.
    let mut conn = FileConn::connect_with(&server, Hello::with_credentials(TEST_TOKEN));
    assert!(
        conn.hello_ok
            .flags
            .contains(monoreactor::proto::SessionFlags::FILES),
        "FILES not offered with the token"
    );
    let got = ok(conn.get("f", 0), "GET with the token");
    assert_eq!(got.bytes, b"secret file");
}

// === Review findings ===

#[test]
fn a_file_that_shrinks_during_a_get_ends_the_transfer_instead_of_hanging() {
    let server = FileServer::start(&[]);
    let data = random_bytes(31, 64 * MIB);
    fs::write(server.at("shrinking"), &data).unwrap();
    // One whole GET first, once the file is older than the racy window, so the server caches
    // its hash: the GET below then only sends, and the shrink meets `sendfile` mid-range.
    thread::sleep(Duration::from_millis(200));
    let mut conn = server.conn();
    let whole = ok(conn.get("shrinking", 0), "the first GET");
    assert_eq!(whole.received_hash, blake3_of(&data));
    assert_eq!(
        ok(conn.stat("shrinking"), "stat").hash,
        Some(blake3_of(&data)),
        "the hash is cached"
    );
    conn.client()
        .stream()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let stream = conn.new_stream();
    conn.send(&get_frame(stream, b"shrinking", 0));
    // FILE_INFO and the first DATA: the transfer is under way, most of it not yet sent.
    let info = conn.recv();
    assert_eq!(
        info.header.frame_type,
        FrameType::FileInfo,
        "{}",
        describe(&info)
    );
    let first = conn.recv();
    assert_eq!(
        first.header.frame_type,
        FrameType::Data,
        "{}",
        describe(&first)
    );
    fs::OpenOptions::new()
        .write(true)
        .open(server.at("shrinking"))
        .unwrap()
        // Not on a DATA frame's boundary: a range is cut in its middle.
        .set_len(10 * MIB as u64 + 12_345)
        .unwrap();
    let started = Instant::now();
    let mut received = first.payload.len();
    let ended = loop {
        match conn.try_recv() {
            Ok(frame) if frame.header.frame_type == FrameType::Data => {
                received += frame.payload.len();
            }
            Ok(frame) => break describe(&frame),
            Err(error) => break format!("the connection ended: {error}"),
        }
    };
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(10),
        "the transfer of a shrunk file took {waited:?} to end ({ended}) after {received} bytes"
    );
    assert!(
        !ended.starts_with("DIGEST"),
        "a shrunk file must not end with a DIGEST after {received} of {} bytes: {ended}",
        data.len()
    );
    // The server is fine: a new connection works.
    let mut again = server.conn();
    again.echo(b"still here");
}

#[test]
fn a_newer_put_of_the_same_upload_takes_it_over() {
    let server = FileServer::start(&[]);
    let data = random_bytes(32, 3 * MIB + 17);
    let hash = blake3_of(&data);
    let half = MIB + 3;
    // The first client sends half, then goes quiet without closing (as behind a dead NAT).
    let mut first = server.conn();
    let first_stream = first.new_stream();
    ok(
        first.begin_put(
            first_stream,
            b"taken",
            data.len() as u64,
            PutFlags::NONE,
            Some(hash),
        ),
        "begin the first put",
    );
    first.send_data(first_stream, &data[..half]);
    first.echo(b"sync");
    // The same upload resumed from elsewhere takes over what the server holds.
    let mut second = server.conn();
    let stream = second.new_stream();
    let ready = ok(
        // Busy for a moment while the first one's bytes are still being written.
        retry_busy_upload(Duration::from_secs(10), || {
            second.begin_put(
                stream,
                b"taken",
                data.len() as u64,
                PutFlags::RESUME,
                Some(hash),
            )
        }),
        "resume while the first is still open",
    );
    assert_eq!(
        ready.held, half as u64,
        "the resume holds what the first sent"
    );
    second.send_data(stream, &data[half..]);
    assert_eq!(ok(second.finish_put(stream, &hash), "finish"), hash);
    assert_eq!(fs::read(server.at("taken")).unwrap(), data);
    // The first one is told at its next frame, and its bytes go nowhere.
    first.send_data(first_stream, &data[half..half + 1000]);
    let frame = first.recv();
    let (code, text) =
        refusal(&frame).unwrap_or_else(|| panic!("expected an ERROR, got {}", describe(&frame)));
    assert_eq!(code, ErrorCode::IoFailed, "{text}");
    assert!(text.contains("took this upload over"), "{text}");
    assert_eq!(
        fs::read(server.at("taken")).unwrap(),
        data,
        "the stored file is untouched"
    );
}

#[test]
fn a_symlink_swapped_in_during_a_put_leads_nowhere_outside() {
    let server = FileServer::start(&[]);
    fs::create_dir(server.at("d")).unwrap();
    let data = random_bytes(33, 2 * MIB + 99);
    let hash = blake3_of(&data);
    let mut conn = server.conn();
    let stream = conn.new_stream();
    ok(
        conn.begin_put(
            stream,
            b"d/f",
            data.len() as u64,
            PutFlags::NONE,
            Some(hash),
        ),
        "begin",
    );
    conn.send_data(stream, &data[..MIB]);
    conn.echo(b"sync");
    // Mid-upload, the directory is moved away and a symlink to outside the root takes its
    // name: the upload was opened through the directory itself, not through its name.
    fs::rename(server.at("d"), server.at("d.moved")).unwrap();
    symlink(server.outside(), server.at("d")).unwrap();
    conn.send_data(stream, &data[MIB..]);
    assert_eq!(ok(conn.finish_put(stream, &hash), "finish"), hash);
    assert_eq!(
        fs::read(server.at("d.moved/f")).unwrap(),
        data,
        "the file lands in the directory the PUT resolved"
    );
    assert!(
        !server.outside().join("f").exists(),
        "nothing is created through the symlink"
    );
    // And a new request through the symlink is refused.
    let refused = conn.stat("d/f").map(drop);
    assert!(
        matches!(refused, Err((ErrorCode::OutsideRoot, _))),
        "{refused:?}"
    );
    fs::remove_file(server.at("d")).unwrap();
    server.assert_nothing_outside("after the swap");
}

// === Protocol defects found by an independent client (issue 12 §4) ===

#[test]
fn a_unix_socket_is_answered_like_a_fifo_by_every_request() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    let fifo = std::ffi::CString::new(server.at("fifo").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    // Opening a socket file gives ENXIO, not a descriptor: the server must not call that an
    // I/O failure.
    let _listener = std::os::unix::net::UnixListener::bind(server.at("socket")).unwrap();

    for name in ["fifo", "socket"] {
        let text = expect_refused(conn.get(name, 0), ErrorCode::BadRequest, name);
        assert!(text.contains("not a regular file"), "GET {name}: {text:?}");
        let info = ok(conn.stat(name), name);
        assert_eq!(info.kind, FileKind::Other, "STAT {name}");
        let text = expect_refused(conn.put(name, b"x"), ErrorCode::BadRequest, name);
        assert!(text.contains("not a regular file"), "PUT {name}: {text:?}");
    }
    assert!(
        fs::symlink_metadata(server.at("socket")).is_ok(),
        "PUT left it"
    );
    for name in ["fifo", "socket"] {
        ok(conn.delete(name), name);
        assert!(
            fs::symlink_metadata(server.at(name)).is_err(),
            "{name} deleted"
        );
    }
    conn.echo(b"still open");
}

/// Every request with `path`: the code and text of each answer, in the order GET, PUT, LIST,
/// STAT, DELETE, MKDIR.
fn answers_to_every_request(conn: &mut FileConn, path: &[u8]) -> Vec<(&'static str, Refusal)> {
    let get = conn.get_raw(path, 0, false).map(drop);
    let stream = conn.new_stream();
    let answers = [
        ("GET", get),
        (
            "PUT",
            conn.begin_put(stream, path, 1, PutFlags::NONE, None)
                .map(drop),
        ),
        ("LIST", conn.list_pages(path).map(drop)),
        ("STAT", conn.stat_raw(path).map(drop)),
        ("DELETE", conn.delete_raw(path)),
        ("MKDIR", conn.mkdir_raw(path)),
    ];
    answers
        .into_iter()
        .map(|(request, answer)| match answer {
            Err(refusal) => (request, refusal),
            Ok(()) => panic!("{request} of a {}-byte path succeeded", path.len()),
        })
        .collect()
}

#[test]
fn an_over_long_path_or_name_is_a_bad_request_for_every_request() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    // PATH_MAX (4096) counts the terminating NUL: 4095 bytes is the longest path. Short
    // components, so only the whole path's length is at stake.
    let path_of = |len: usize| {
        let mut path = "d/".repeat(len / 2);
        path.truncate(len - 1);
        path.push('x');
        assert_eq!(path.len(), len);
        path
    };
    for (request, (code, text)) in answers_to_every_request(&mut conn, path_of(4096).as_bytes()) {
        assert_eq!(
            code,
            ErrorCode::BadRequest,
            "{request} of 4096 bytes: {text:?}"
        );
        assert!(text.contains("4095"), "{request} names the limit: {text:?}");
    }
    for (request, (code, text)) in answers_to_every_request(&mut conn, path_of(4095).as_bytes()) {
        assert_eq!(
            code,
            ErrorCode::NotFound,
            "{request} of 4095 bytes: {text:?}"
        );
    }
    // NAME_MAX: 255 bytes in one component.
    let long_name = format!("d/{}", "n".repeat(256));
    for (request, (code, text)) in answers_to_every_request(&mut conn, long_name.as_bytes()) {
        assert_eq!(
            code,
            ErrorCode::BadRequest,
            "{request} of a 256-byte name: {text:?}"
        );
        assert!(text.contains("255"), "{request} names the limit: {text:?}");
    }
    let name = format!("d/{}", "n".repeat(255));
    for (request, (code, text)) in answers_to_every_request(&mut conn, name.as_bytes()) {
        assert_eq!(
            code,
            ErrorCode::NotFound,
            "{request} of a 255-byte name: {text:?}"
        );
    }
    conn.echo(b"still open");
}

#[test]
fn a_resume_put_pipelined_with_its_data_is_stored_when_nothing_is_held() {
    let server = FileServer::start(&[]);
    let mut conn = server.conn();
    let data = random_bytes(51, 100_000);
    let hash = blake3_of(&data);
    let stream = conn.new_stream();
    // PUT, DATA and DIGEST in one go, without waiting for PUT_READY: the server holds nothing
    // of this upload, so `held` is 0 and the DATA is taken from offset 0.
    let mut wire = put_frame(
        stream,
        b"f",
        data.len() as u64,
        PutFlags::RESUME,
        Some(hash),
    );
    for chunk in data.chunks(16 << 10) {
        wire.extend_from_slice(&data_frame(stream, chunk));
    }
    wire.extend_from_slice(&digest_frame(stream, &hash));
    conn.send(&wire);
    let ready = ok(conn.read_put_ready(stream), "PUT_READY");
    assert_eq!(ready.held, 0);
    assert_eq!(ok(conn.read_put_end(stream), "stored"), hash);
    assert_eq!(fs::read(server.at("f")).unwrap(), data);

    // With bytes held, DATA sent from offset 0 without waiting is refused, never spliced: at
    // once while the server re-hashes what it holds, else once it runs past `size - held`.
    let sent = 60_000;
    interrupted_put(&server, "g", &data, sent, false);
    wait_partial(server.root(), sent as u64);
    let mut conn = server.conn();
    let stream = conn.new_stream();
    let mut wire = put_frame(
        stream,
        b"g",
        data.len() as u64,
        PutFlags::RESUME,
        Some(hash),
    );
    for chunk in data.chunks(16 << 10) {
        wire.extend_from_slice(&data_frame(stream, chunk));
    }
    wire.extend_from_slice(&digest_frame(stream, &hash));
    conn.send(&wire);
    let refused = conn
        .read_put_ready(stream)
        .and_then(|_| conn.read_put_end(stream));
    expect_refused(
        refused,
        ErrorCode::BadRequest,
        "pipelined DATA with bytes held",
    );
    assert!(!server.at("g").exists(), "nothing stored");
    conn.echo(b"still open");
}

#[test]
fn a_hard_link_in_the_root_serves_its_targets_content() {
    // Documented (serve --help, SECURITY.md): a hard link is the file itself, as for nginx and
    // rsync; making one needs access to the file on the same filesystem.
    let server = FileServer::start(&[]);
    fs::hard_link(server.outside().join("secret"), server.at("linked")).unwrap();
    let mut conn = server.conn();
    let got = ok(conn.get("linked", 0), "get the hard link");
    assert_eq!(got.bytes, SECRET);
    fs::remove_file(server.at("linked")).unwrap();
}
