//! `put -r` and `get -r` (and several sources in one `put` or `get`) against a real server
//! over loopback: nested trees round trip byte for byte, scp's rules for where sources land,
//! `--continue` after an interrupted tree (what was finished is skipped, seen in the server's
//! access lines), symlinks and FIFOs skipped with a warning, `-p` carrying mtimes, a
//! download that fails verification failing the command, and trees whose client was SIGKILLed
//! part-way (through a throttling relay, so that there is a "part-way") finished by
//! `--continue` without sending again what had landed.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use support::files::*;

/// Every file and directory under `dir`, relative, with a file's bytes (`None` for a
/// directory) as its BLAKE3; what is neither is reported as such so that a test sees it.
fn tree_of(dir: &Path) -> BTreeMap<String, Option<String>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in fs::read_dir(&at).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                found.insert(name, None);
                pending.push(path);
            } else if kind.is_file() {
                found.insert(name, Some(hex(&blake3_file(&path))));
            } else {
                found.insert(name, Some("<not a regular file>".to_string()));
            }
        }
    }
    found
}

/// A nested tree: empty directories, files of 0 B, 1 B, and more than one DATA frame, and
/// enough small files to keep the pipeline full.
fn make_tree(at: &Path) {
    fs::create_dir_all(at.join("a/b/c")).unwrap();
    fs::create_dir_all(at.join("empty/deeper")).unwrap();
    fs::write(at.join("zero"), b"").unwrap();
    fs::write(at.join("one"), b"1").unwrap();
    fs::write(at.join("a/b/c/big"), random_bytes(7, 3 * MIB + 17)).unwrap();
    fs::write(at.join("a/medium"), random_bytes(8, 300_000)).unwrap();
    for i in 0..40 {
        fs::write(
            at.join(format!("a/b/small-{i:02}")),
            random_bytes(100 + i, 4096),
        )
        .unwrap();
    }
}

#[test]
fn a_nested_tree_round_trips_through_put_r_and_get_r() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-tree");
    make_tree(&cli.local("src"));
    cli.exits_with(0, "put", &["-r", "src", "dst"]);
    // `dst` did not exist: it receives src's contents.
    assert_eq!(tree_of(&server.at("dst")), tree_of(&cli.local("src")));
    cli.exits_with(0, "get", &["-r", "dst", "back"]);
    assert_eq!(tree_of(&cli.local("back")), tree_of(&cli.local("src")));
    // Into an existing directory, each lands under its own name.
    fs::create_dir(cli.local("into")).unwrap();
    cli.exits_with(0, "get", &["-r", "dst", "into"]);
    assert_eq!(tree_of(&cli.local("into/dst")), tree_of(&cli.local("src")));
    server.assert_nothing_outside("after the tree transfers");
}

#[test]
fn sources_land_as_scp_puts_them() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-tree");
    make_tree(&cli.local("src"));
    fs::write(cli.local("x.txt"), b"x").unwrap();
    fs::write(cli.local("y.txt"), b"yy").unwrap();
    fs::create_dir(server.at("existing")).unwrap();

    cli.exits_with(0, "put", &["-r", "src", "existing/"]);
    assert_eq!(
        tree_of(&server.at("existing/src")),
        tree_of(&cli.local("src"))
    );
    cli.exits_with(0, "put", &["-r", "src", "x.txt", "existing"]);
    assert_eq!(fs::read(server.at("existing/x.txt")).unwrap(), b"x");
    cli.exits_with(0, "put", &["x.txt", "y.txt", "existing"]);
    assert_eq!(fs::read(server.at("existing/y.txt")).unwrap(), b"yy");

    // Several sources need a directory; a directory needs -r.
    let several = cli.run("put", &["x.txt", "y.txt", "nothere"]);
    assert_eq!(several.code(), 2, "{}", several.stderr);
    assert!(several.stderr.contains("directory"), "{}", several.stderr);
    assert!(!server.at("nothere").exists());
    let no_r = cli.run("put", &["src", "x.txt", "existing"]);
    assert_eq!(no_r.code(), 1, "{}", no_r.stderr);
    assert!(no_r.stderr.contains("-r"), "{}", no_r.stderr);

    // The same rules locally for get.
    fs::create_dir(cli.local("down")).unwrap();
    cli.exits_with(0, "get", &["existing/x.txt", "existing/y.txt", "down"]);
    assert_eq!(fs::read(cli.local("down/x.txt")).unwrap(), b"x");
    assert_eq!(fs::read(cli.local("down/y.txt")).unwrap(), b"yy");
    let several = cli.run("get", &["existing/x.txt", "existing/y.txt", "nofile"]);
    assert_eq!(several.code(), 2, "{}", several.stderr);
    let dir_without_r = cli.run("get", &["existing/src", "existing/x.txt", "down"]);
    assert_eq!(dir_without_r.code(), 1, "{}", dir_without_r.stderr);
    assert!(cli.local("down/x.txt").exists());
}

#[test]
fn symlinks_are_skipped_unless_l_and_fifos_are_skipped_with_a_warning() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-tree");
    let src = cli.local("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/file"), b"content").unwrap();
    symlink("dir/file", src.join("link")).unwrap();
    symlink("dir", src.join("dirlink")).unwrap();
    symlink(server.outside().join("secret"), src.join("away")).unwrap();
    let fifo = std::ffi::CString::new(src.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a plain mkfifo on a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

    let put = cli.exits_with(0, "put", &["-r", "src", "plain"]);
    for name in ["link", "dirlink", "away", "fifo"] {
        assert!(
            put.stderr.contains("warning") && put.stderr.contains(name),
            "no warning for {name}: {}",
            put.stderr
        );
        assert!(
            fs::symlink_metadata(server.at(&format!("plain/{name}"))).is_err(),
            "{name} was stored"
        );
    }
    assert_eq!(fs::read(server.at("plain/dir/file")).unwrap(), b"content");

    let followed = cli.exits_with(0, "put", &["-r", "-L", "src", "followed"]);
    assert!(followed.stderr.contains("fifo"), "{}", followed.stderr);
    assert_eq!(fs::read(server.at("followed/link")).unwrap(), b"content");
    assert_eq!(
        fs::read(server.at("followed/dirlink/file")).unwrap(),
        b"content"
    );
    assert_eq!(fs::read(server.at("followed/away")).unwrap(), SECRET);
    assert!(
        fs::symlink_metadata(server.at("followed/link"))
            .unwrap()
            .is_file()
    );

    // A symlink on the server is listed, never followed: skipped with a warning.
    symlink("dir/file", server.at("plain/server-link")).unwrap();
    let get = cli.exits_with(0, "get", &["-r", "plain", "back"]);
    assert!(get.stderr.contains("server-link"), "{}", get.stderr);
    assert!(fs::symlink_metadata(cli.local("back/server-link")).is_err());
    assert_eq!(fs::read(cli.local("back/dir/file")).unwrap(), b"content");
}

/// Server flags that keep its access lines (the test servers are started with `-q`).
const ACCESS_LOG: [&str; 2] = ["--log-level", "warn,monoreactor::access=info"];

/// The access lines of one request kind in the server's log ("PATH OUTCOME out=BYTES"),
/// once at least `expected` of them are there (they are read from its stderr by a thread).
fn requests(server: &FileServer, kind: &str, expected: usize) -> Vec<String> {
    let mut lines = access_lines(server, kind);
    for _ in 0..100 {
        if lines.len() >= expected {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        lines = access_lines(server, kind);
    }
    lines
}

fn access_lines(server: &FileServer, kind: &str) -> Vec<String> {
    let quote = format!("\"{kind} ");
    server
        .server
        .stderr_text()
        .lines()
        .filter(|line| line.contains("monoreactor::access"))
        .filter_map(|line| {
            let start = line.find(&quote)? + quote.len();
            let end = start + line[start..].find('"')?;
            let outcome = line[end + 1..].split_whitespace().next().unwrap_or("");
            let out = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("out="))
                .unwrap_or("0");
            Some(format!("{} {outcome} out={out}", &line[start..end]))
        })
        .collect()
}

#[test]
fn put_r_continue_finishes_an_interrupted_tree_and_skips_what_is_stored() {
    // The server refuses files over 1 MB: the tree stops short of its big file.
    let mut server = FileServer::start(&[ACCESS_LOG[0], ACCESS_LOG[1], "--max-put", "1000000"]);
    let cli = ClientDir::new(&server, "files-tree");
    make_tree(&cli.local("src"));
    let first = cli.run("put", &["-r", "src/.", "dst"]);
    assert_eq!(first.code(), 1, "{}", first.stderr);
    assert!(first.stderr.contains("a/b/c/big"), "{}", first.stderr);
    assert!(!server.at("dst/a/b/c/big").exists());
    assert_eq!(
        fs::read(server.at("dst/a/b/small-07")).unwrap(),
        random_bytes(107, 4096)
    );

    // A server without the limit (its access lines start afresh); meanwhile one local file
    // changed and one stored file went away.
    server.restart(&ACCESS_LOG);
    let cli = ClientDir {
        addr: server.server.framed_str(),
        work: cli.work,
    };
    fs::write(cli.local("src/one"), b"2").unwrap();
    fs::remove_file(server.at("dst/a/medium")).unwrap();
    cli.exits_with(0, "put", &["-r", "--continue", "src/.", "dst"]);
    assert_eq!(tree_of(&server.at("dst")), tree_of(&cli.local("src")));
    let puts = requests(&server, "PUT", 3);
    let mut stored: Vec<&str> = puts
        .iter()
        .map(|line| line.split_whitespace().next().unwrap())
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        ["dst/a/b/c/big", "dst/a/medium", "dst/one"],
        "only what was missing or different goes again: {puts:#?}"
    );
}

#[test]
fn get_r_continue_fetches_only_what_is_missing_or_different() {
    let server = FileServer::start(&ACCESS_LOG);
    let cli = ClientDir::new(&server, "files-tree");
    make_tree(&server.at("tree"));
    cli.exits_with(0, "get", &["-r", "tree", "here"]);
    fs::remove_file(cli.local("here/a/b/small-03")).unwrap();
    fs::write(cli.local("here/one"), b"9").unwrap();
    let before = requests(&server, "GET", 44).len();
    cli.exits_with(0, "get", &["-r", "--continue", "tree/.", "here"]);
    assert_eq!(tree_of(&cli.local("here")), tree_of(&server.at("tree")));
    // The server knows every hash from the first run (STAT says it): only two are fetched.
    let gets = requests(&server, "GET", before + 2);
    let mut fetched: Vec<&str> = gets[before..]
        .iter()
        .filter(|line| !line.ends_with("out=0"))
        .map(|line| line.split_whitespace().next().unwrap())
        .collect();
    fetched.sort();
    assert_eq!(fetched, ["tree/a/b/small-03", "tree/one"], "{gets:#?}");
}

#[test]
fn small_downloads_replace_files_refuse_directories_and_leave_no_part_files() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-tree");
    fs::create_dir_all(server.at("tree/a")).unwrap();
    for name in ["x", "y", "z", "w"] {
        fs::write(server.at(&format!("tree/a/{name}")), name.repeat(5000)).unwrap();
    }
    fs::create_dir_all(cli.local("here/a/z")).unwrap();
    fs::write(cli.local("here/a/z/keep"), b"mine").unwrap();
    fs::write(cli.local("here/a/x"), b"old x").unwrap();
    let other_link = cli.local("x-other-link");
    fs::hard_link(cli.local("here/a/x"), &other_link).unwrap();
    // Left by a run killed part-way.
    fs::write(cli.local("here/a/.y.monoreactor-part"), b"stale").unwrap();
    let failed = cli.run("get", &["-r", "tree/.", "here"]);
    assert_eq!(failed.code(), 255, "{}", failed.stderr);
    assert!(failed.stderr.contains("z"), "{}", failed.stderr);
    for name in ["x", "y", "w"] {
        assert_eq!(
            fs::read(cli.local(&format!("here/a/{name}"))).unwrap(),
            name.repeat(5000).as_bytes(),
            "{name}"
        );
    }
    // Replaced in one step: the old inode, still linked elsewhere, keeps its bytes.
    assert_eq!(fs::read(&other_link).unwrap(), b"old x");
    assert_eq!(fs::read(cli.local("here/a/z/keep")).unwrap(), b"mine");
    let mut names: Vec<String> = fs::read_dir(cli.local("here/a"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["w", "x", "y", "z"], "nothing else left");
}

#[test]
fn a_download_that_fails_verification_fails_the_command() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-tree");
    make_tree(&server.at("tree"));
    cli.exits_with(0, "get", &["-r", "tree", "here"]);
    // A part file that is not the server's file's prefix: resumed from, it cannot verify.
    fs::remove_file(cli.local("here/a/medium")).unwrap();
    fs::write(
        cli.local("here/a/.medium.monoreactor-part"),
        b"not the file",
    )
    .unwrap();
    let failed = cli.run("get", &["-r", "--continue", "tree/.", "here"]);
    assert_eq!(failed.code(), 255, "{}", failed.stderr);
    assert!(failed.stderr.contains("medium"), "{}", failed.stderr);
    assert!(!cli.local("here/a/medium").exists());
    assert!(!cli.local("here/a/.medium.monoreactor-part").exists());
    // Run again, it starts that file over and succeeds.
    cli.exits_with(0, "get", &["-r", "--continue", "tree/.", "here"]);
    assert_eq!(tree_of(&cli.local("here")), tree_of(&server.at("tree")));
}

#[test]
fn get_p_keeps_modification_times() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-tree");
    make_tree(&server.at("tree"));
    let old = std::time::UNIX_EPOCH + std::time::Duration::new(1_500_000_000, 123_456_789);
    let times = fs::FileTimes::new().set_modified(old);
    fs::File::options()
        .write(true)
        .open(server.at("tree/a/medium"))
        .unwrap()
        .set_times(times)
        .unwrap();
    cli.exits_with(0, "get", &["-r", "-p", "tree", "here"]);
    assert_eq!(
        mtime_ns(&cli.local("here/a/medium")),
        mtime_ns(&server.at("tree/a/medium"))
    );
    assert_eq!(
        mtime_ns(&cli.local("here/a/medium")),
        1_500_000_000_123_456_789
    );
    cli.exits_with(0, "get", &["-r", "tree", "plain"]);
    assert_ne!(
        mtime_ns(&cli.local("plain/a/medium")),
        1_500_000_000_123_456_789
    );
}

#[test]
fn put_p_carries_modes_and_mtimes_and_get_p_brings_them_back() {
    use std::os::unix::fs::PermissionsExt;
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-tree");
    make_tree(&cli.local("src"));
    let set = |path: &Path, mode: u32, mtime_ns: i64| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(mtime_ns as u64);
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(at))
            .unwrap();
    };
    // setuid and sticky are never given by a client: the server keeps 0o777's bits.
    set(
        &cli.local("src/a/medium"),
        0o4751,
        1_400_000_000_987_654_321,
    );
    set(&cli.local("src/one"), 0o600, 1_300_000_000_000_000_001);
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;

    cli.exits_with(0, "put", &["-r", "-p", "src/.", "kept"]);
    assert_eq!(mode(&server.at("kept/a/medium")), 0o751);
    assert_eq!(
        mtime_ns(&server.at("kept/a/medium")),
        1_400_000_000_987_654_321
    );
    assert_eq!(mode(&server.at("kept/one")), 0o600);
    assert_eq!(mtime_ns(&server.at("kept/one")), 1_300_000_000_000_000_001);
    cli.exits_with(0, "put", &["-r", "src/.", "plain"]);
    assert_eq!(mode(&server.at("plain/a/medium")), 0o644);
    assert_ne!(
        mtime_ns(&server.at("plain/a/medium")),
        1_400_000_000_987_654_321
    );
    // One file with -p, no -r.
    cli.exits_with(0, "put", &["-p", "src/one", "single"]);
    assert_eq!(mode(&server.at("single")), 0o600);
    assert_eq!(mtime_ns(&server.at("single")), 1_300_000_000_000_000_001);

    cli.exits_with(0, "get", &["-r", "-p", "kept/.", "back"]);
    assert_eq!(mode(&cli.local("back/a/medium")), 0o751);
    assert_eq!(
        mtime_ns(&cli.local("back/a/medium")),
        1_400_000_000_987_654_321
    );
    assert_eq!(mode(&cli.local("back/one")), 0o600);
    cli.exits_with(0, "get", &["-r", "kept/.", "unkept"]);
    assert_ne!(
        mtime_ns(&cli.local("unkept/one")),
        1_300_000_000_000_000_001
    );
}

#[test]
fn a_server_with_fewer_streams_than_the_window_still_gets_the_whole_tree() {
    // Two streams per connection: the pipeline's first refusals (LIMIT_REACHED) narrow its
    // window, and the refused files go again.
    let server = FileServer::start(&["--max-streams-per-conn", "2"]);
    let cli = ClientDir::new(&server, "files-tree");
    make_tree(&cli.local("src"));
    fs::create_dir(cli.local("src/many")).unwrap();
    for i in 0..400 {
        fs::write(cli.local(&format!("src/many/{i}")), i.to_string()).unwrap();
    }
    cli.exits_with(0, "put", &["-r", "src", "dst"]);
    assert_eq!(tree_of(&server.at("dst")), tree_of(&cli.local("src")));
    cli.exits_with(0, "get", &["-r", "dst", "back"]);
    assert_eq!(tree_of(&cli.local("back")), tree_of(&cli.local("src")));
}

#[test]
fn a_tree_into_a_missing_parent_fails_once_per_directory() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-tree");
    make_tree(&cli.local("src"));
    let failed = cli.run("put", &["-r", "src", "missing/deeper"]);
    assert_eq!(failed.code(), 1, "{}", failed.stderr);
    assert!(failed.stderr.contains("NOT_FOUND"), "{}", failed.stderr);
    assert!(
        !failed.stderr.contains("small-0"),
        "files under a directory that could not be made are not tried: {}",
        failed.stderr
    );
    assert!(!server.at("missing").exists());
}

/// `get 'logs/*.gz' DIR`: a remote pattern, expanded by listing, lands every match in DIR as
/// several sources would; one that matches nothing is the server's NOT_FOUND (1), and a
/// pattern into something that is not a directory is a usage error (2). Before, the pattern
/// was asked for as a file named `*.gz`.
#[test]
fn get_takes_remote_patterns() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "files-tree");
    fs::create_dir_all(server.at("logs/old")).unwrap();
    for (name, bytes) in [
        ("a.gz", "a"),
        ("b.gz", "bb"),
        ("c.txt", "c"),
        ("old/d.gz", "d"),
    ] {
        fs::write(server.at(&format!("logs/{name}")), bytes).unwrap();
    }
    fs::create_dir(cli.local("into")).unwrap();
    cli.exits_with(0, "get", &["logs/*.gz", "into"]);
    let got: Vec<String> = tree_of(&cli.local("into")).into_keys().collect();
    assert_eq!(got, ["a.gz", "b.gz"]);
    assert_eq!(fs::read(cli.local("into/b.gz")).unwrap(), b"bb");
    // In a directory component too, with -r for the directories it matches.
    fs::create_dir(cli.local("deep")).unwrap();
    cli.exits_with(0, "get", &["-r", "log?/o*", "deep"]);
    assert_eq!(fs::read(cli.local("deep/old/d.gz")).unwrap(), b"d");
    let none = cli.run("get", &["logs/*.zip", "into"]);
    assert_eq!(none.code(), 1, "{}", none.stderr);
    assert!(none.stderr.contains("no match"), "{}", none.stderr);
    let not_dir = cli.run("get", &["logs/*.gz", "into/a.gz"]);
    assert_eq!(not_dir.code(), 2, "{}", not_dir.stderr);
    server.assert_nothing_outside("after the pattern downloads");
}

// === A tree resumed after its client was killed ===

/// A loopback relay between a client and a server that passes at most `RELAY_RATE` bytes a
/// second each way, so that a tree transfer lasts long enough to be killed part-way on a
/// fast machine. A side that closes closes the other; [`Relay::cut`] closes every connection
/// at once, dropping what the relay holds: a killed client's bytes still buffered here would
/// otherwise reach the server seconds after the kill, which no direct connection does.
struct Relay {
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

/// Bytes a second through [`Relay`]: a few seconds for the tree of [`make_killable_tree`].
const RELAY_RATE: usize = 8 * MIB;

impl Relay {
    fn to(server: &FileServer) -> Relay {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let target = server.server.framed();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = Arc::clone(&conns);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                open.lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), upstream.try_clone().unwrap()]);
                for (from, to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    let stopped = Arc::clone(&stopped);
                    std::thread::spawn(move || pump(from, to, &stopped));
                }
            }
        });
        Relay { addr, stop, conns }
    }

    /// Closes every connection relayed so far, both ways, dropping what is buffered here.
    fn cut(&self) {
        for conn in self.conns.lock().unwrap().drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes the accepting thread, which then sees `stop`.
        let _ = std::net::TcpStream::connect(&self.addr);
    }
}

/// Copies `from` to `to` at [`RELAY_RATE`] until either side ends, then shuts both down.
fn pump(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    stop: &std::sync::atomic::AtomicBool,
) {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    // A relay is never left behind by a test that failed: each read waits at most this.
    from.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0; 64 << 10];
    let mut sent = 0usize;
    let started = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let len = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(len) => len,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        if to.write_all(&buf[..len]).is_err() {
            break;
        }
        sent += len;
        let due = Duration::from_secs_f64(sent as f64 / RELAY_RATE as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// 200 files of 4 KiB in two directories, and three of 8 MiB: one between the directories, two
/// after them (the name order is the order `put -r` sends them in).
fn make_killable_tree(at: &Path) {
    for dir in ["a", "c"] {
        fs::create_dir_all(at.join(dir)).unwrap();
        for i in 0..100u64 {
            let seed = if dir == "a" { i } else { 100 + i };
            fs::write(
                at.join(format!("{dir}/{i:03}")),
                random_bytes(1000 + seed, 4096),
            )
            .unwrap();
        }
    }
    for (seed, name) in [(1, "b-big"), (2, "d-big"), (3, "e-big")] {
        fs::write(at.join(name), random_bytes(2000 + seed, 8 * MIB)).unwrap();
    }
}

/// The regular files under `dir` (relative paths) whose names do not start with a dot, with
/// their inode numbers; and the hidden ones (part files, partial uploads) with their sizes.
#[allow(clippy::type_complexity)]
fn landed_and_hidden(dir: &Path) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    use std::os::unix::fs::MetadataExt;
    let mut landed = BTreeMap::new();
    let mut hidden = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        let Ok(entries) = fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue; // Renamed or removed meanwhile.
            };
            let name = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if meta.is_dir() {
                pending.push(path);
            } else if entry.file_name().to_string_lossy().starts_with('.') {
                hidden.insert(name, meta.len());
            } else {
                landed.insert(name, meta.ino());
            }
        }
    }
    (landed, hidden)
}

/// `monoreactor COMMAND --addr ADDR ARGS...` in `cli`'s directory, not waited for.
fn spawn_client(cli: &ClientDir, command: &str, args: &[&str]) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_monoreactor"))
        .arg(command)
        .args(["--addr", &cli.addr])
        .args(args)
        .current_dir(cli.work.path())
        .env_remove("MONOREACTOR_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until more than `after` files have landed in `dir` and one hidden file there (a big
/// file's part or partial upload) holds at least 1 MiB, then SIGKILLs `client` by its pid and
/// cuts its connection at the relay; `log` is kept up to date meanwhile. Returns the files that had landed (with their inodes).
/// Fails if the client ends first.
fn kill_part_way(
    mut client: std::process::Child,
    relay: &Relay,
    log: &mut AccessLog<'_>,
    dir: &Path,
    after: usize,
) -> BTreeMap<String, u64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        log.update();
        let (landed, hidden) = landed_and_hidden(dir);
        if landed.len() > after && hidden.values().any(|&len| len >= MIB as u64) {
            break;
        }
        if let Some(status) = client.try_wait().unwrap() {
            panic!("the client ended ({status}) before it could be killed part-way");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no progress to kill: {landed:?} {hidden:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    client.kill().unwrap();
    relay.cut();
    let status = client.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the client finished before the kill"
    );
    let (landed, hidden) = landed_and_hidden(dir);
    assert!(landed.len() < 203, "everything had landed: {landed:?}");
    assert!(!hidden.is_empty(), "nothing was in progress: {landed:?}");
    landed
}

/// One request in the server's access lines: the client's address, the path (less the
/// prefix asked for), the outcome, and the payload bytes it carried in and out.
#[derive(Debug)]
struct Logged {
    client: String,
    path: String,
    outcome: String,
    bytes_in: u64,
    bytes_out: u64,
}

/// The server's access lines, for a test that makes more of them than the server's captured
/// stderr keeps (its last 64 KiB): each [`AccessLog::update`], made often, appends what came
/// since the one before.
struct AccessLog<'a> {
    server: &'a FileServer,
    lines: Vec<String>,
}

impl<'a> AccessLog<'a> {
    fn of(server: &'a FileServer) -> AccessLog<'a> {
        AccessLog {
            server,
            lines: Vec::new(),
        }
    }

    fn update(&mut self) {
        let text = self.server.server.stderr_text();
        let fresh: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("[monoreactor::access] "))
            .collect();
        let start = match self.lines.last() {
            None => 0,
            Some(last) => match fresh.iter().rposition(|line| line == last) {
                Some(at) => at + 1,
                None => panic!("access lines were lost between two updates: update more often"),
            },
        };
        self.lines
            .extend(fresh[start..].iter().map(|line| line.to_string()));
    }

    /// Each request of `kind` for a path under `prefix`, as far as [`AccessLog::update`] got.
    fn transfers(&self, kind: &str, prefix: &str) -> Vec<Logged> {
        let quote = format!("\"{kind} {prefix}");
        let field = |line: &str, name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(name))
                .map_or(0, |bytes| bytes.parse().unwrap())
        };
        self.lines
            .iter()
            .filter_map(|line| {
                let (_, access) = line.split_once("[monoreactor::access] ")?;
                let start = access.find(&quote)? + quote.len();
                let end = start + access[start..].find('"')?;
                Some(Logged {
                    client: access.split_whitespace().next()?.to_string(),
                    path: access[start..end].to_string(),
                    outcome: access[end + 1..].split_whitespace().next()?.to_string(),
                    bytes_in: field(access, "in="),
                    bytes_out: field(access, "out="),
                })
            })
            .collect()
    }

    /// Waits (bounded) until the server has logged `count` requests of `kind` under `prefix`:
    /// a killed client's requests are logged when the server sees its connection close.
    fn wait_transfers(&mut self, kind: &str, prefix: &str, count: usize) -> Vec<Logged> {
        for _ in 0..100 {
            self.update();
            let found = self.transfers(kind, prefix);
            if found.len() >= count {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.transfers(kind, prefix)
    }
}

#[test]
fn put_r_killed_twice_is_finished_by_continue_without_sending_stored_files_again() {
    let server = FileServer::start(&ACCESS_LOG);
    let mut log = AccessLog::of(&server);
    let relay = Relay::to(&server);
    let cli = ClientDir {
        addr: relay.addr.clone(),
        work: support::exec::Scratch::new("files-tree-kill"),
    };
    make_killable_tree(&cli.local("src"));
    let killed = spawn_client(&cli, "put", &["-q", "-r", "src/.", "dst"]);
    let first = kill_part_way(killed, &relay, &mut log, &server.at("dst"), 20);
    // Killed again, this time while it resumes.
    let resuming = spawn_client(&cli, "put", &["-q", "-r", "--continue", "src/.", "dst"]);
    let landed = kill_part_way(resuming, &relay, &mut log, &server.at("dst"), first.len());
    for (name, inode) in &first {
        assert_eq!(landed[name], *inode, "{name} was stored again");
    }

    cli.exits_with(0, "put", &["-q", "-r", "--continue", "src/.", "dst"]);
    assert_eq!(tree_of(&server.at("dst")), tree_of(&cli.local("src")));
    let (now, hidden) = landed_and_hidden(&server.at("dst"));
    assert!(hidden.is_empty(), "left behind on the server: {hidden:?}");
    // A file stored again would have been renamed over the old one: a new inode.
    for (name, inode) in &landed {
        assert_eq!(now[name], *inode, "{name} was stored again");
    }
    // Every file was stored exactly once, and one interrupted in the middle was resumed:
    // fewer bytes came in for it in the run that stored it than the file holds.
    let puts = log.wait_transfers("PUT", "dst/", 203);
    let mut stored: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for put in &puts {
        if put.outcome == "OK" {
            stored.entry(&put.path).or_default().push(put.bytes_in);
        }
    }
    assert_eq!(stored.len(), 203, "{puts:#?}");
    assert!(stored.values().all(|runs| runs.len() == 1), "{stored:#?}");
    let resumed: Vec<&&str> = stored
        .iter()
        .filter(|(_, runs)| runs[0] > 0 && runs[0] < 8 * MIB as u64 && runs[0] != 4096)
        .map(|(path, _)| path)
        .collect();
    assert!(
        !resumed.is_empty(),
        "no big file was resumed from its partial upload: {stored:?}"
    );
    server.assert_nothing_outside("after the resumed tree");
}

#[test]
fn get_r_killed_twice_is_finished_by_continue_without_fetching_landed_files_again() {
    let server = FileServer::start(&ACCESS_LOG);
    make_killable_tree(&server.at("tree"));
    let mut log = AccessLog::of(&server);
    let relay = Relay::to(&server);
    let cli = ClientDir {
        addr: relay.addr.clone(),
        work: support::exec::Scratch::new("files-tree-kill"),
    };
    let here = cli.local("here");
    // Its big files come first (the top directory's files before its subdirectories').
    let killed = spawn_client(&cli, "get", &["-q", "-r", "tree/.", "here"]);
    let first = kill_part_way(killed, &relay, &mut log, &here, 0);
    // Killed again, this time while it resumes.
    let resuming = spawn_client(&cli, "get", &["-q", "-r", "--continue", "tree/.", "here"]);
    let second = kill_part_way(resuming, &relay, &mut log, &here, first.len());
    for (name, inode) in &first {
        assert_eq!(second[name], *inode, "{name} was fetched again");
    }

    // Every connection so far has logged the files it delivered (a file is logged before
    // the client can rename it into place): what comes from another connection is the
    // last run's.
    log.update();
    let before: std::collections::BTreeSet<String> = log
        .transfers("GET", "tree/")
        .into_iter()
        .map(|get| get.client)
        .collect();
    cli.exits_with(0, "get", &["-q", "-r", "--continue", "tree/.", "here"]);
    assert_eq!(tree_of(&here), tree_of(&server.at("tree")));
    let (now, hidden) = landed_and_hidden(&here);
    assert!(hidden.is_empty(), "part files left behind: {hidden:?}");
    for (name, inode) in &second {
        assert_eq!(now[name], *inode, "{name} was fetched again");
    }
    let gets = log.wait_transfers("GET", "tree/", 203);
    // The server sent each file that had landed at the first kill once, its bytes and no
    // more (a resumed run's look at it, a GET from its end, carries none)...
    let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
    for get in &gets {
        *sent.entry(&get.path).or_default() += get.bytes_out;
    }
    for name in first.keys() {
        let size = fs::metadata(here.join(name)).unwrap().len();
        assert_eq!(sent.get(name.as_str()), Some(&size), "{name}: {gets:#?}");
    }
    // ...and the last run sent nothing of what had landed at the second.
    let last: Vec<&Logged> = gets
        .iter()
        .filter(|get| !before.contains(&get.client))
        .collect();
    assert!(!last.is_empty(), "{gets:#?}");
    for get in &last {
        assert!(
            !second.contains_key(&get.path) || get.bytes_out == 0,
            "fetched again: {get:?}"
        );
    }
}
