//! Review of the one-writer-per-upload locks (85d96fd) and of listing and removing partials
//! (4c50111). Each test here fails on the code it was written against; see the report.

mod support;

use std::fs;
use std::os::fd::AsRawFd;
use std::time::Duration;

use monoreactor::proto::ErrorCode;
use monoreactor::proto::files::{FileKind, PutFlags};
use support::files::*;

const PARTIAL_PREFIX: &str = ".monoreactor-partial-";

/// Takes an exclusive OFD lock on `file`, as a server process receiving that upload does.
fn ofd_lock(file: &fs::File) {
    // SAFETY: plain data, all-zero is valid (whole file, l_pid 0 as OFD locks require).
    let mut request: libc::flock = unsafe { std::mem::zeroed() };
    request.l_type = libc::F_WRLCK as libc::c_short;
    request.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on an open descriptor with a valid flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &request) };
    assert_eq!(rc, 0, "lock: {}", std::io::Error::last_os_error());
}

/// Begins a declared PUT of `data` as `path` on a new stream of `conn`.
fn begin(
    conn: &mut FileConn,
    path: &str,
    data: &[u8],
    flags: PutFlags,
) -> Result<(u32, monoreactor::proto::files::PutReady), Refusal> {
    let stream = conn.new_stream();
    conn.begin_put(
        stream,
        path.as_bytes(),
        data.len() as u64,
        flags,
        Some(blake3_of(data)),
    )
    .map(|ready| (stream, ready))
}

/// Finding 1 (medium). A takeover makes the older upload a zombie that still holds the
/// partial's descriptor, hence its OFD lock. When the newer PUT then ends without a commit
/// or a discard (its client goes away: the partial is kept for a resume), its `Drop` removes
/// the map entry, so the next PUT can no longer take over: it opens the partial afresh, the
/// kernel refuses the lock (the zombie holds it) and the client gets UPLOAD_BUSY ("another
/// server process is receiving this upload") until the first client's connection idles out
/// (300 s by default) — exactly the wait the takeover exists to avoid. DELETE of the partial
/// is refused the same way.
#[test]
fn a_takeover_whose_newer_put_goes_away_leaves_the_upload_resumable() {
    let server = FileServer::start(&[]);
    let data = random_bytes(91, 2 * MIB + 11);
    let hash = blake3_of(&data);

    // The first client starts, then goes silent without closing (a vanished laptop).
    let mut first = server.conn();
    let (first_stream, ready) = ok(begin(&mut first, "f", &data, PutFlags::NONE), "first");
    assert_eq!(ready.held, 0);
    first.send_data_in(first_stream, &data[..MIB], MIB);
    first.echo(b"written");

    // The user resumes from elsewhere: the newer PUT takes the upload over ...
    let mut second = server.conn();
    let (_, ready) = ok(
        // Busy for a moment while the first one's bytes are still being written.
        retry_busy_upload(Duration::from_secs(10), || {
            begin(&mut second, "f", &data, PutFlags::RESUME)
        }),
        "takeover",
    );
    assert_eq!(ready.held, MIB as u64);
    // ... and that connection drops too (Ctrl-C, a flaky network).
    drop(second);

    // A third attempt must be able to continue (the server learns of the close
    // asynchronously, hence the retry while busy).
    let mut third = server.conn();
    let resumed = retry_busy_upload(Duration::from_secs(10), || {
        begin(&mut third, "f", &data, PutFlags::RESUME)
    });
    let (stream, ready) = match resumed {
        Ok(resumed) => resumed,
        Err((code, text)) => panic!(
            "the upload stays blocked while the superseded first PUT lingers: {code}: {text}"
        ),
    };
    third.send_data_in(stream, &data[ready.held as usize..], MIB);
    assert_eq!(ok(third.finish_put(stream, &hash), "finish"), hash);
    assert!(fs::read(server.at("f")).unwrap() == data);
    drop(first);
}

/// Finding 2 (low-medium). `remove_leftovers` means to refuse a directory with more than it
/// can look at (`leftovers.len() >= SWEEP_ENTRIES`), but the `take(SWEEP_ENTRIES)` also counts
/// `.` and `..`, so at most 4094 leftovers are ever collected and the check never fires. With
/// more partials than that, DELETE removes 4094 of them and then answers NOT_EMPTY: a refused
/// DELETE that destroyed uploads. (With a user file beyond the first 4096 entries in readdir
/// order, a DELETE that rightly answers NOT_EMPTY destroys up to 4094 resumable uploads.)
#[test]
fn a_refused_delete_of_a_directory_removes_none_of_its_partials() {
    let server = FileServer::start(&[]);
    let dir = server.at("d");
    fs::create_dir(&dir).unwrap();
    const COUNT: usize = 4095;
    for i in 0..COUNT {
        fs::write(dir.join(format!("{PARTIAL_PREFIX}{i:016x}")), b"x").unwrap();
    }
    let mut conn = server.conn();
    let outcome = conn.delete("d");
    match outcome {
        Ok(()) => assert!(!dir.exists(), "DONE, yet the directory is still there"),
        Err((code, text)) => {
            let left = reserved_entries(&dir).len();
            assert_eq!(
                left,
                COUNT,
                "DELETE was refused ({code}: {text}) after removing {} partials",
                COUNT - left
            );
        }
    }
}

/// Finding 3 (low). `remove_leftovers` unlinks every `.monoreactor-tmp-*` name without taking
/// its lock. Such a name exists for real between a commit's `linkat` and its `renameat` in
/// another worker — the very inode whose lock that worker holds. If readdir shows the link
/// before the partial, DELETE of the directory removes it (and then answers UPLOAD_BUSY for
/// the partial), so the other worker's `renameat` fails with ENOENT and a complete, verified
/// upload is answered NOT_FOUND. Simulated here: 16 directories each in the mid-commit state
/// (partial + link to it, locked by this test process standing in for the other worker), in
/// both creation orders; readdir order on ext4 is a hash, so a few of them fail.
#[test]
fn deleting_a_directory_leaves_the_link_of_a_commit_in_progress_alone() {
    let server = FileServer::start(&[]);
    let mut held = Vec::new();
    let mut removed = Vec::new();
    let mut conn = server.conn();
    for i in 0..16u32 {
        let dir = server.at(&format!("d{i}"));
        fs::create_dir(&dir).unwrap();
        let partial = dir.join(format!("{PARTIAL_PREFIX}{:016x}", 0xabc0 + i));
        let linked = dir.join(format!(".monoreactor-tmp-{:x}-{i:x}", 99_999 + i));
        let (first, second) = if i % 2 == 0 {
            (&partial, &linked)
        } else {
            (&linked, &partial)
        };
        fs::write(first, b"verified upload being committed").unwrap();
        fs::hard_link(first, second).unwrap();
        let file = fs::File::options()
            .read(true)
            .write(true)
            .open(&partial)
            .unwrap();
        ofd_lock(&file);
        held.push(file);

        let outcome = conn.delete(&format!("d{i}"));
        assert!(
            matches!(outcome, Err((ErrorCode::UploadBusy, _))),
            "d{i}: {outcome:?}"
        );
        if !linked.exists() {
            removed.push(format!("d{i}"));
        }
    }
    assert!(
        removed.is_empty(),
        "DELETE answered UPLOAD_BUSY but removed the link a commit in progress is about to \
         rename, in {removed:?}"
    );
}

/// Finding 4 (low). A partial's name replaced from outside the server (an EXEC, a local user)
/// by a symlink or a FIFO can never be removed through the server, and blocks that upload for
/// good: `open_locked` fails (ELOOP → OUTSIDE_ROOT; not a regular file → IO_FAILED) for the
/// PUT, for DELETE of the partial's path, for DELETE of the directory, and the sweep skips it
/// forever. The name is the server's own: DELETE of it (which LIST offers, as SYMLINK/OTHER)
/// should remove what is there.
#[test]
fn a_partial_name_replaced_by_a_symlink_or_fifo_can_be_removed() {
    let server = FileServer::start(&[]);
    let data = random_bytes(92, MIB + 3);
    let mut conn = server.conn();
    let mut failures = Vec::new();
    for (dir, kind) in [("s", "symlink"), ("p", "fifo")] {
        fs::create_dir(server.at(dir)).unwrap();
        let path = format!("{dir}/f");
        // An interrupted upload leaves its partial.
        {
            let mut writer = server.conn();
            let (stream, _) = ok(begin(&mut writer, &path, &data, PutFlags::NONE), "begin");
            writer.send_data_in(stream, &data[..1000], MIB);
            writer.echo(b"written");
        }
        let name = ok(
            retry_busy_upload(Duration::from_secs(10), || conn.list(dir)),
            "list",
        )
        .into_iter()
        .find(|entry| entry.kind == FileKind::Partial)
        .expect("the partial is listed")
        .name;
        let partial = server.at(dir).join(&name);
        // Replaced from outside the server.
        fs::remove_file(&partial).unwrap();
        if kind == "symlink" {
            std::os::unix::fs::symlink("f", &partial).unwrap();
        } else {
            let c_path = std::ffi::CString::new(partial.to_str().unwrap()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        }
        let put = retry_busy_upload(Duration::from_secs(10), || {
            begin(&mut conn, &path, &data, PutFlags::RESUME)
        });
        let delete = conn.delete(&format!("{dir}/{name}"));
        if put.is_err() && delete.is_err() {
            failures.push(format!(
                "{kind}: PUT {:?}, DELETE of the partial {:?}, DELETE of the directory {:?}",
                put.err(),
                delete.err(),
                conn.delete(dir).err()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "an upload blocked for good: {failures:#?}"
    );
}

/// Finding 5 (low-medium, functional). LIST — and `monoreactor ls` — now shows partial
/// uploads so that a user can remove them, but `monoreactor rm` runs every path through
/// `normalize_remote` → `check_relative`, which refuses any `.monoreactor-` component
/// locally: the shipped client cannot send the DELETE the server now accepts.
#[test]
fn the_cli_can_remove_a_partial_that_ls_shows() {
    let server = FileServer::start(&[]);
    fs::create_dir(server.at("d")).unwrap();
    let data = random_bytes(93, MIB + 5);
    {
        let mut writer = server.conn();
        let (stream, _) = ok(begin(&mut writer, "d/f", &data, PutFlags::NONE), "begin");
        writer.send_data_in(stream, &data[..1000], MIB);
        writer.echo(b"written");
    }
    let mut conn = server.conn();
    let name = ok(
        retry_busy_upload(Duration::from_secs(10), || conn.list("d")),
        "list",
    )
    .into_iter()
    .find(|entry| entry.kind == FileKind::Partial)
    .expect("the partial is listed")
    .name;
    let work = support::exec::Scratch::new("review-cli");
    let addr = server.framed_str();
    let listed = cli(&["ls", "--addr", &addr, "d"], work.path(), None);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&name),
        "ls shows the partial: {listed:?}"
    );
    let path = format!("d/{name}");
    let mut removed = cli(&["rm", "--addr", &addr, &path], work.path(), None);
    for _ in 0..50 {
        if removed.code() == 0 || !removed.stderr.contains("BUSY") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        removed = cli(&["rm", "--addr", &addr, &path], work.path(), None);
    }
    assert_eq!(
        removed.code(),
        0,
        "monoreactor rm {path} failed: {}",
        removed.stderr
    );
    assert!(leftovers_after_the_disk(&server.at("d")).is_empty());
}

/// Finding 1, the unbounded variant: the superseded stream lives on a connection that stays
/// active, so the idle timeout never frees the lock. One connection: stream A streams part of
/// the upload and stalls; stream B takes it over and fails without a discard (a DIGEST too
/// early: BAD_REQUEST, partial kept for a resume); every later PUT of that upload gets
/// UPLOAD_BUSY for as long as the connection lives.
#[test]
fn a_failed_takeover_on_a_live_connection_does_not_block_the_upload_for_good() {
    let server = FileServer::start(&[]);
    let data = random_bytes(94, 2 * MIB + 1);
    let hash = blake3_of(&data);
    let mut conn = server.conn();
    let (first, _) = ok(begin(&mut conn, "g", &data, PutFlags::NONE), "first");
    conn.send_data_in(first, &data[..MIB], MIB);
    conn.echo(b"written");
    let (second, ready) = ok(
        // Busy for a moment while the first one's bytes are still being written.
        retry_busy_upload(Duration::from_secs(10), || {
            begin(&mut conn, "g", &data, PutFlags::RESUME)
        }),
        "takeover",
    );
    assert_eq!(ready.held, MIB as u64);
    let early = conn.finish_put(second, &hash);
    assert!(
        matches!(early, Err((ErrorCode::BadRequest, _))),
        "{early:?}"
    );
    let third = retry_busy_upload(Duration::from_secs(5), || {
        begin(&mut conn, "g", &data, PutFlags::RESUME)
    });
    let (stream, ready) = match third {
        Ok(third) => third,
        Err((code, text)) => {
            panic!(
                "blocked by the superseded stream {first} of this very connection: {code}: {text}"
            )
        }
    };
    conn.send_data_in(stream, &data[ready.held as usize..], MIB);
    assert_eq!(ok(conn.finish_put(stream, &hash), "finish"), hash);
}

/// Finding 6 (low). A partial with a second link (what a crash between a commit's rename and
/// its unlink leaves: the partial's name *is* the committed file) is listed as PARTIAL, and
/// DELETE of it removes the name — but answers NOT_FOUND, because `open_locked` unlinks it
/// and then reports `Missing`. A client told NOT_FOUND for an entry LIST just showed (and
/// that is gone afterwards) cannot tell a race from success.
#[test]
fn deleting_a_partial_left_by_a_crash_after_the_rename_answers_done() {
    let server = FileServer::start(&[]);
    fs::write(server.at("t"), b"committed").unwrap();
    let name = format!("{PARTIAL_PREFIX}00000000000000aa");
    fs::hard_link(server.at("t"), server.at(&name)).unwrap();
    let mut conn = server.conn();
    let listed = ok(conn.list(""), "list");
    assert!(
        listed
            .iter()
            .any(|entry| entry.name == name && entry.kind == FileKind::Partial),
        "{listed:?}"
    );
    let outcome = conn.delete(&name);
    assert!(!server.at(&name).exists(), "the name is removed either way");
    assert_eq!(fs::read(server.at("t")).unwrap(), b"committed");
    assert!(outcome.is_ok(), "removed, yet answered {outcome:?}");
}

/// Checked and sound (passes): the DELETE path parser lets a partial's name through only as
/// the last component of an otherwise valid path.
#[test]
fn sound_parse_delete_path_admits_only_a_partial_as_the_last_component() {
    use monoreactor::proto::files::parse_delete_path;
    let id = "0123456789abcdef";
    for good in [
        format!("{PARTIAL_PREFIX}{id}"),
        format!("a/b/{PARTIAL_PREFIX}{id}"),
        "a/b".to_string(),
    ] {
        assert_eq!(
            parse_delete_path(good.as_bytes()),
            Ok(good.as_str()),
            "{good}"
        );
    }
    for bad in [
        format!("a/../{PARTIAL_PREFIX}{id}"),
        format!("./{PARTIAL_PREFIX}{id}"),
        format!("//{PARTIAL_PREFIX}{id}"),
        format!("a//{PARTIAL_PREFIX}{id}"),
        format!("{PARTIAL_PREFIX}{id}/x"),
        format!("{PARTIAL_PREFIX}{id}/"),
        format!("{PARTIAL_PREFIX}0123456789ABCDEF"),
        format!("{PARTIAL_PREFIX}{id}0"),
        format!("{PARTIAL_PREFIX}+123456789abcdef"),
        format!("{PARTIAL_PREFIX}{id}\0"),
        format!(".monoreactor-tmp-1/{PARTIAL_PREFIX}{id}"),
        format!("{PARTIAL_PREFIX}{id}/{PARTIAL_PREFIX}{id}"),
        ".monoreactor-tmp-1-2".to_string(),
        format!("a\\b/{PARTIAL_PREFIX}{id}"),
    ] {
        assert!(
            parse_delete_path(bad.as_bytes()).is_err(),
            "{bad:?} accepted"
        );
    }
}

/// Finding 7 (low; no escape). `parse_delete_path` splits at the last `/` and checks only the
/// parent, and `check_relative("")` is the root: so `/.monoreactor-partial-<id>` — an
/// absolute path, which every request must refuse (BAD_REQUEST) — is accepted, and the server
/// then removes the root's partial (resolution stays beneath the root, so nothing outside is
/// reachable; `//…` and `/a/…` are still refused).
#[test]
fn an_absolute_delete_path_to_a_partial_is_refused() {
    use monoreactor::proto::files::parse_delete_path;
    let name = format!("{PARTIAL_PREFIX}00000000000000bb");
    let absolute = format!("/{name}");
    let parsed = parse_delete_path(absolute.as_bytes());

    let server = FileServer::start(&[]);
    fs::write(server.at(&name), b"an interrupted upload").unwrap();
    let mut conn = server.conn();
    let outcome = conn.delete_raw(absolute.as_bytes());
    assert!(
        server.at(&name).exists() && matches!(outcome, Err((ErrorCode::BadRequest, _))),
        "DELETE {absolute:?} answered {outcome:?} (parser: {parsed:?}); partial still there: {}",
        server.at(&name).exists()
    );
}
