//! Review of the tree client's fast paths (2210b98): small downloads received into an
//! `O_TMPFILE` and linked into place, windows refilled by halves, and batched small uploads
//! and GET requests. Every command runs under the support's CLI timeout, so a hang or a busy
//! spin fails the test instead of blocking it.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use support::files::*;

/// Every file under `dir`, relative, with its BLAKE3 (`None` for a directory).
fn tree_of(dir: &Path) -> BTreeMap<String, Option<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Option<String>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(name, None);
                walk(root, &path, out);
            } else if meta.is_file() {
                out.insert(name, Some(hex(&blake3_file(&path))));
            } else {
                out.insert(name, Some("not a file".into()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Small files (batched, unnamed on the way down) around two large ones (streamed, part
/// files), so that batched frames of many streams interleave with a large file's own.
fn make_mixed_tree(at: &Path) {
    fs::create_dir_all(at.join("d/e")).unwrap();
    fs::write(at.join("empty"), b"").unwrap();
    fs::write(at.join("d/large-1"), random_bytes(1, 1_000_003)).unwrap();
    fs::write(at.join("d/e/large-2"), random_bytes(2, 600_001)).unwrap();
    // Exactly the small-file bound and one over it: either side of the fast path.
    fs::write(at.join("d/edge-small"), random_bytes(3, 256 << 10)).unwrap();
    fs::write(at.join("d/edge-large"), random_bytes(4, (256 << 10) + 1)).unwrap();
    for i in 0..70u64 {
        let dir = if i % 2 == 0 { "d" } else { "d/e" };
        fs::write(
            at.join(format!("{dir}/small-{i:02}")),
            random_bytes(10 + i, 1 + (i as usize * 997) % 9000),
        )
        .unwrap();
    }
}

/// Servers with 1, 2 and 3 streams per connection: the default window of 32 is narrowed by
/// LIMIT_REACHED to a window of 1, 2 or 3, where "half free" is 0 or 1 in flight; put -r's
/// last file waits with the sync of all. Both directions finish, byte for byte.
#[test]
fn mixed_trees_round_trip_through_one_two_and_three_streams() {
    // The last: 32 streams but 2 transfers server-wide, refused by the other limit.
    for (flag, streams) in [
        ("--max-commands-per-conn", "1"),
        ("--max-commands-per-conn", "2"),
        ("--max-commands-per-conn", "3"),
        ("--max-transfers", "2"),
    ] {
        let server = FileServer::start(&[flag, streams]);
        let cli = ClientDir::new(&server, "review-tree-fast");
        make_mixed_tree(&cli.local("src"));
        cli.exits_with(0, "put", &["-r", "src", "dst"]);
        assert_eq!(
            tree_of(&server.at("dst")),
            tree_of(&cli.local("src")),
            "put -r with {streams} streams"
        );
        cli.exits_with(0, "get", &["-r", "dst", "back"]);
        assert_eq!(
            tree_of(&cli.local("back")),
            tree_of(&cli.local("src")),
            "get -r with {streams} streams"
        );
        // Again with --continue: nothing to do, nothing hangs.
        // `src/.`: into dst, not into dst/src (scp's rule for an existing directory).
        cli.exits_with(0, "put", &["-r", "--continue", "src/.", "dst"]);
        cli.exits_with(0, "get", &["-r", "--continue", "dst/.", "back"]);
        assert_eq!(tree_of(&server.at("dst")), tree_of(&cli.local("src")));
        assert_eq!(tree_of(&cli.local("back")), tree_of(&cli.local("src")));
    }
}

/// A small download whose name is a symlink (to a file outside the tree, or dangling) or a
/// FIFO is refused: nothing is written through the link, the link and FIFO stay, and no
/// part file is left; the other files land.
#[test]
fn small_downloads_never_write_through_symlinks_or_into_fifos() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-tree-fast");
    fs::create_dir_all(server.at("tree")).unwrap();
    for name in ["linked", "dangling", "fifo", "plain"] {
        fs::write(server.at(&format!("tree/{name}")), name.repeat(300)).unwrap();
    }
    fs::create_dir_all(cli.local("here")).unwrap();
    let outside = cli.local("outside");
    fs::write(&outside, b"not to be touched").unwrap();
    symlink(&outside, cli.local("here/linked")).unwrap();
    symlink(cli.local("nowhere"), cli.local("here/dangling")).unwrap();
    let fifo = cli.local("here/fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let failed = cli.run("get", &["-r", "tree/.", "here"]);
    assert_ne!(failed.code(), 0, "{}", failed.stderr);
    for name in ["linked", "dangling", "fifo"] {
        assert!(failed.stderr.contains(name), "{name}: {}", failed.stderr);
    }
    assert_eq!(fs::read(&outside).unwrap(), b"not to be touched");
    assert!(
        !cli.local("nowhere").exists(),
        "created through a dangling link"
    );
    assert!(
        fs::symlink_metadata(cli.local("here/linked"))
            .unwrap()
            .is_symlink()
    );
    assert!(
        fs::symlink_metadata(cli.local("here/dangling"))
            .unwrap()
            .is_symlink()
    );
    assert!(
        fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo(),
        "the FIFO stays"
    );
    assert_eq!(
        fs::read(cli.local("here/plain")).unwrap(),
        "plain".repeat(300).as_bytes()
    );
    let mut names: Vec<String> = fs::read_dir(cli.local("here"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["dangling", "fifo", "linked", "plain"],
        "nothing left"
    );
}

use std::os::unix::fs::FileTypeExt;

/// `--continue` on small files: a complete copy is kept, one of the same size with other
/// bytes and a stale part file are fetched again; `-p` carries mode and mtime on the unnamed
/// path, also when it replaces a file that is there.
#[test]
fn small_downloads_continue_and_preserve() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-tree-fast");
    fs::create_dir_all(server.at("tree")).unwrap();
    for name in ["same", "other", "stale", "new"] {
        fs::write(server.at(&format!("tree/{name}")), name.repeat(1000)).unwrap();
        let path = server.at(&format!("tree/{name}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_300_000_000);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }
    fs::create_dir_all(cli.local("here")).unwrap();
    fs::write(cli.local("here/same"), "same".repeat(1000)).unwrap();
    fs::write(cli.local("here/other"), "OTHE".repeat(1250)).unwrap();
    fs::write(cli.local("here/.stale.monoreactor-part"), b"stale bytes").unwrap();
    cli.exits_with(0, "get", &["-r", "-p", "--continue", "tree/.", "here"]);
    assert_eq!(tree_of(&cli.local("here")), tree_of(&server.at("tree")));
    for name in ["other", "stale", "new"] {
        let local = cli.local(&format!("here/{name}"));
        let meta = fs::metadata(&local).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640, "{name}");
        assert_eq!(
            mtime_ns(&local),
            mtime_ns(&server.at(&format!("tree/{name}"))),
            "{name}"
        );
    }
}

/// A small download into a directory it may not write: one clear error, exit non-zero, no
/// panic and nothing left.
#[test]
fn small_downloads_into_an_unwritable_directory_fail_cleanly() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-tree-fast");
    fs::create_dir_all(server.at("tree")).unwrap();
    fs::write(server.at("tree/a"), b"aaaa").unwrap();
    fs::create_dir_all(cli.local("here")).unwrap();
    // A file where the directory should be: neither O_TMPFILE nor a part file can open.
    fs::write(cli.local("blocked"), b"x").unwrap();
    let failed = cli.run("get", &["-r", "tree/.", "blocked/deeper"]);
    assert_ne!(failed.code(), 0, "{}", failed.stderr);
    assert!(!failed.stderr.contains("panicked"), "{}", failed.stderr);
    assert_eq!(fs::read(cli.local("blocked")).unwrap(), b"x");
}

/// The defaults raised in 79dfcec (32 streams per connection, 256 transfers) are what the
/// protocol and architecture documents state: no stale "8" or "64" left for readers.
#[test]
fn documents_state_the_raised_stream_and_transfer_defaults() {
    let limits = monoreactor::Limits::default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protocol = fs::read_to_string(root.join("docs/PROTOCOL.md")).unwrap();
    let transfers = format!(
        "| transfers (GET, PUT, LIST) on the server | {} |",
        limits.max_transfers
    );
    assert!(protocol.contains(&transfers), "PROTOCOL.md: {transfers}");
    let exec_row = format!(
        "| fewer than {} commands run on this connection |",
        limits.max_streams_per_connection
    );
    assert!(protocol.contains(&exec_row), "PROTOCOL.md: {exec_row}");
    let commands = format!(
        "at most {} per connection\n  and {} on the whole server by default",
        limits.max_streams_per_connection, limits.max_exec
    );
    assert!(protocol.contains(&commands), "PROTOCOL.md: {commands}");
    let architecture = fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let stated = format!(
        "`Limits::max_streams_per_connection` ({})",
        limits.max_streams_per_connection
    );
    let stale = architecture
        .matches("`Limits::max_streams_per_connection` (")
        .count();
    assert_eq!(
        architecture.matches(&stated).count(),
        stale,
        "ARCHITECTURE.md states another default than {stated}"
    );
}

/// Mounts a tmpfs of `kib` KiB at `at` (root only); `None` where that is not allowed.
fn small_tmpfs(at: &Path, kib: u32) -> Option<Mounted> {
    fs::create_dir_all(at).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
        .arg(at)
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| Mounted(at.to_path_buf()))
}

/// Unmounts on drop, also when the test fails.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk while small files are received unnamed: the command fails with the write
/// error, the files that fitted land, and the ones that did not leave nothing behind — not a
/// part file, and no space held (the unnamed files are gone with their descriptors).
#[test]
fn a_full_disk_under_small_downloads_leaves_nothing_and_frees_its_space() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-tree-fast");
    fs::create_dir_all(server.at("tree")).unwrap();
    for i in 0..6u64 {
        fs::write(
            server.at(&format!("tree/f{i}")),
            random_bytes(40 + i, 100_000),
        )
        .unwrap();
    }
    let Some(_mounted) = small_tmpfs(&cli.local("disk"), 256) else {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    };
    let failed = cli.run("get", &["-r", "tree/.", "disk"]);
    assert_ne!(failed.code(), 0, "{}", failed.stderr);
    assert!(!failed.stderr.contains("panicked"), "{}", failed.stderr);
    // The error names no part file: none was ever made, nothing to look for or clean up.
    assert!(
        !failed.stderr.contains("monoreactor-part"),
        "{}",
        failed.stderr
    );
    assert!(
        failed.stderr.contains("space") || failed.stderr.contains("write"),
        "{}",
        failed.stderr
    );
    let mut landed = 0;
    for entry in fs::read_dir(cli.local("disk")).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert!(!name.starts_with('.'), "left behind: {name}");
        assert_eq!(
            blake3_file(&entry.path()),
            blake3_file(&server.at(&format!("tree/{name}"))),
            "{name}"
        );
        landed += 1;
    }
    assert!(landed < 6, "a 256 KiB disk cannot hold 600 KB");
    // What did not land holds no space: the files that did fit in what remains.
    let free = free_kib(&cli.local("disk"));
    assert!(
        free + landed * 100 >= 240,
        "free {free} KiB with {landed} files"
    );
}

/// Free KiB on the file system holding `path`, from `df`.
fn free_kib(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-k", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .unwrap()
}

/// Runs `work` on a thread and fails the test if it takes longer than a minute: a hang or a
/// busy spin in a window must fail, not block the suite.
fn within_a_minute<T: Send + 'static>(what: &str, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    result
        .recv_timeout(std::time::Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what}: no end within a minute (hang or spin)"))
}

/// The client's own windows of 1, 2 and 3 (where "half free" is 0 or 1 in flight), against
/// servers with the default limits and with 2 streams per connection (a window of 3 then
/// refused and narrowed): put_files and get_files of a mixed tree finish, byte for byte.
#[test]
fn client_windows_of_one_two_and_three_move_a_mixed_tree() {
    use monoreactor::client::files::FileClient;
    use monoreactor::client::tree::{
        GetPlan, PutPlan, TreeOptions, get_files, make_remote_dirs, plan_get, plan_put, put_files,
    };
    for extra in [&[][..], &["--max-commands-per-conn", "2"][..]] {
        let server = FileServer::start(extra);
        let cli = ClientDir::new(&server, "review-tree-fast");
        make_mixed_tree(&cli.local("src"));
        let addr = server.server.framed();
        for window in 1..=3usize {
            let src = cli.local("src");
            let back = cli.local(&format!("back-{window}"));
            let remote = format!("dst-{window}");
            within_a_minute(&format!("window {window}, {extra:?}"), move || {
                let options = TreeOptions {
                    window,
                    ..TreeOptions::default()
                };
                let timeout = std::time::Duration::from_secs(10);
                let mut client = FileClient::connect(addr, None, timeout).unwrap();
                let mut plan = PutPlan::default();
                plan_put(&src, &remote, false, false, &mut plan).unwrap();
                let failed = make_remote_dirs(&mut client, &plan.dirs).unwrap();
                assert!(failed.is_empty(), "{failed:?}");
                let failed = put_files(&mut client, &plan.files, &options, &mut |_| {}).unwrap();
                assert!(failed.is_empty(), "put, window {window}: {failed:?}");
                let mut plan = GetPlan::default();
                plan_get(&mut client, &remote, &back, &mut plan).unwrap();
                for dir in &plan.dirs {
                    fs::create_dir_all(dir).unwrap();
                }
                let failed = get_files(&mut client, &plan.files, &options, &mut |_| {}).unwrap();
                assert!(failed.is_empty(), "get, window {window}: {failed:?}");
            });
            assert_eq!(
                tree_of(&server.at(&format!("dst-{window}"))),
                tree_of(&cli.local("src")),
                "put, window {window}, {extra:?}"
            );
            assert_eq!(
                tree_of(&cli.local(&format!("back-{window}"))),
                tree_of(&cli.local("src")),
                "get, window {window}, {extra:?}"
            );
        }
    }
}

/// What the server says at GET time differs from its LIST: a small file removed (ERROR on
/// its stream), one grown far past the small-file bound (FILE_INFO larger than LIST), one
/// shrunk to nothing. The removed one fails and leaves nothing, the others land verified
/// with their new bytes; no part file is left anywhere.
#[test]
fn files_changed_between_list_and_get_land_verified_or_leave_nothing() {
    use monoreactor::client::files::FileClient;
    use monoreactor::client::tree::{GetPlan, TreeOptions, get_files, plan_get};
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-tree-fast");
    fs::create_dir_all(server.at("tree")).unwrap();
    for name in ["removed", "grown", "shrunk", "kept"] {
        fs::write(server.at(&format!("tree/{name}")), name.repeat(100)).unwrap();
    }
    let addr = server.server.framed();
    let timeout = std::time::Duration::from_secs(10);
    let mut client = FileClient::connect(addr, None, timeout).unwrap();
    let mut plan = GetPlan::default();
    let here = cli.local("here");
    plan_get(&mut client, "tree", &here, &mut plan).unwrap();
    fs::create_dir_all(&here).unwrap();
    fs::remove_file(server.at("tree/removed")).unwrap();
    let grown = random_bytes(77, 3 << 20);
    fs::write(server.at("tree/grown"), &grown).unwrap();
    fs::write(server.at("tree/shrunk"), b"").unwrap();
    let files = plan.files;
    let failed = within_a_minute("changed files", move || {
        get_files(&mut client, &files, &TreeOptions::default(), &mut |_| {}).unwrap()
    });
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].path.ends_with("removed"), "{failed:?}");
    assert_eq!(fs::read(here.join("grown")).unwrap(), grown);
    assert_eq!(fs::read(here.join("shrunk")).unwrap(), b"");
    assert_eq!(
        fs::read(here.join("kept")).unwrap(),
        "kept".repeat(100).as_bytes()
    );
    let mut names: Vec<String> = fs::read_dir(&here)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["grown", "kept", "shrunk"], "nothing else left");
}

/// A large file of the tree refused as UPLOAD_BUSY (its partial locked as by another server
/// process) for a second and a half, with 3 streams per connection: the small files go on,
/// batched, around its pauses; once released it is resumed and the tree is complete, the
/// last file still carrying the sync, and no partial is left.
#[test]
fn a_busy_large_upload_waits_its_turn_while_small_ones_flow() {
    let server = FileServer::start(&["--max-commands-per-conn", "3"]);
    let cli = ClientDir::new(&server, "review-tree-fast");
    make_mixed_tree(&cli.local("src"));
    fs::create_dir_all(server.at("dst/d")).unwrap();
    let data = fs::read(cli.local("src/d/large-1")).unwrap();
    let held = hold_upload_elsewhere(server.root(), "dst/d/large-1", &data, 0);
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        drop(held);
    });
    cli.exits_with(0, "put", &["-r", "src/.", "dst"]);
    releaser.join().unwrap();
    assert_eq!(tree_of(&server.at("dst")), tree_of(&cli.local("src")));
}

/// The server killed part-way through a get -r: the call ends with an error (no hang); what
/// landed is whole and verified; small files in flight leave nothing (their unnamed files
/// go with the process's descriptors); only a large file may leave its resumable part file.
#[test]
fn a_connection_lost_part_way_leaves_only_whole_files_and_large_part_files() {
    use monoreactor::client::files::FileClient;
    use monoreactor::client::tree::{GetPlan, TreeOptions, get_files, plan_get};
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "review-tree-fast");
    make_mixed_tree(&server.at("tree"));
    let addr = server.server.framed();
    let timeout = std::time::Duration::from_secs(10);
    let mut client = FileClient::connect(addr, None, timeout).unwrap();
    let mut plan = GetPlan::default();
    let here = cli.local("here");
    plan_get(&mut client, "tree", &here, &mut plan).unwrap();
    for dir in &plan.dirs {
        fs::create_dir_all(dir).unwrap();
    }
    let pid = libc::pid_t::try_from(server.server.pid()).unwrap();
    let files = plan.files;
    let result = within_a_minute("killed part-way", move || {
        let mut killed = false;
        get_files(&mut client, &files, &TreeOptions::default(), &mut |tally| {
            if !killed && tally.files_done >= 10 {
                killed = true;
                // SAFETY: a signal to our own server child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        })
        .map(|failed| failed.len())
    });
    // Usually the connection is lost; if the kernel had buffered every answer before the
    // kill, the tree is complete instead. Either way, below: nothing half-done is left.
    if let Ok(failed) = result {
        assert_eq!(failed, 0);
        assert_eq!(tree_of(&here), tree_of(&server.at("tree")));
    }
    let mut whole = 0;
    for (name, hash) in tree_of(&here) {
        let base = name.rsplit('/').next().unwrap();
        if base.starts_with('.') {
            assert!(
                base.starts_with(".large-") || base.starts_with(".edge-large"),
                "left behind: {name}"
            );
            continue;
        }
        if let Some(hash) = hash {
            assert_eq!(
                Some(hash),
                tree_of(&server.at("tree")).remove(&name).flatten(),
                "{name}"
            );
            whole += 1;
        }
    }
    assert!(whole >= 10, "{whole} files landed before the kill");
}
