//! One writer per upload across server processes (`serve --workers 2`): a resumable upload
//! held by one worker can be neither taken over, nor truncated, nor swept away by another, and
//! no confirmed file ever changes afterwards; a tree upload waits for one that is busy.

mod support;

use std::fs;
use std::time::{Duration, SystemTime};

use monoreactor::proto::ErrorCode;
use monoreactor::proto::files::PutFlags;
use support::files::*;
use support::workers::wait_workers;

const MIB: usize = 1 << 20;

/// The worker (of `pids`) that holds the server end of `conn`'s connection: the socket
/// whose peer is `conn`'s local address, found in `/proc/net/tcp` and in the worker's fds.
fn worker_of(pids: &[u32], conn: &mut FileConn) -> Option<u32> {
    let local = conn.client().stream().local_addr().ok()?;
    let peer = format!(":{:04X}", local.port());
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(2).is_some_and(|remote| remote.ends_with(&peer)) {
                if let Some(inode) = fields.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    pids.iter().copied().find(|pid| {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|entries| {
                entries.flatten().any(|entry| {
                    fs::read_link(entry.path()).is_ok_and(|target| {
                        inodes
                            .iter()
                            .any(|inode| target.as_os_str() == inode.as_str())
                    })
                })
            })
            .unwrap_or(false)
    })
}

/// Two connections served by two different workers.
fn conns_on_two_workers(server: &FileServer) -> (FileConn, FileConn) {
    let pids = wait_workers(&server.server, 2, Duration::from_secs(10), |_| true);
    let mut first = server.conn();
    first.echo(b"accepted");
    let first_worker = worker_of(&pids, &mut first).expect("find the first one's worker");
    // A new connection lands on either worker by a hash of its address: 64 tries all landing
    // on one worker would happen once in 2^64 runs.
    for _ in 0..64 {
        let mut other = server.conn();
        other.echo(b"accepted");
        if worker_of(&pids, &mut other).is_some_and(|worker| worker != first_worker) {
            return (first, other);
        }
    }
    panic!("64 connections all landed on worker {first_worker}");
}

/// Starts a declared PUT of `data` as `path` on `conn`, sends `sent` bytes, and makes sure
/// the server has written them (an echo behind them comes back).
fn start_put(conn: &mut FileConn, path: &str, data: &[u8], sent: usize) -> u32 {
    let stream = conn.new_stream();
    let ready = ok(
        conn.begin_put(
            stream,
            path.as_bytes(),
            data.len() as u64,
            PutFlags::NONE,
            Some(blake3_of(data)),
        ),
        "begin the first PUT",
    );
    assert_eq!(ready.held, 0);
    conn.send_data_in(stream, &data[..sent], MIB);
    conn.echo(b"written");
    stream
}

#[test]
fn a_resume_in_another_worker_is_busy_and_the_confirmed_file_never_changes() {
    let server = FileServer::start(&["--workers", "2"]);
    let (mut first, mut second) = conns_on_two_workers(&server);
    let data = random_bytes(71, 4 * MIB + 5);
    let hash = blake3_of(&data);
    let half = 2 * MIB;
    let first_stream = start_put(&mut first, "f", &data, half);

    // The same upload resumed in the other worker while the first still streams.
    let stream = second.new_stream();
    let resumed = second.begin_put(
        stream,
        b"f",
        data.len() as u64,
        PutFlags::RESUME,
        Some(hash),
    );
    if let Ok(ready) = &resumed {
        // What a server without a lock across processes does: it finishes the upload from
        // what the first one wrote, and confirms it.
        second.send_data_in(stream, &data[ready.held as usize..], MIB);
        assert_eq!(
            ok(second.finish_put(stream, &hash), "second finishes"),
            hash
        );
    }
    let confirmed = fs::read(server.at("f")).ok();

    // The first one's source changed meanwhile: it sends other bytes, then its DIGEST.
    let mut other_tail = data[half..].to_vec();
    other_tail.iter_mut().for_each(|byte| *byte ^= 0x5a);
    first.send_data_in(first_stream, &other_tail, MIB);
    let outcome = first.finish_put(first_stream, &hash);
    if let Some(confirmed) = confirmed {
        assert!(
            fs::read(server.at("f")).unwrap() == confirmed,
            "a file confirmed by a DIGEST changed afterwards ({outcome:?})"
        );
    }
    match resumed {
        Err((code, text)) => {
            assert_eq!(code, ErrorCode::UploadBusy, "{text}");
            assert!(text.contains("another server process"), "{text}");
        }
        Ok(_) => panic!("the other worker let a second writer in"),
    }
    assert!(
        matches!(outcome, Err((ErrorCode::HashMismatch, _))),
        "{outcome:?}"
    );
    assert!(!server.at("f").exists(), "nothing stored");

    // Once the first has let go, the upload can be made from the other worker.
    let (stream, ready) = ok(
        retry_busy_upload(Duration::from_secs(10), || {
            let stream = second.new_stream();
            second
                .begin_put(
                    stream,
                    b"f",
                    data.len() as u64,
                    PutFlags::RESUME,
                    Some(hash),
                )
                .map(|ready| (stream, ready))
        }),
        "resume after the mismatch",
    );
    assert_eq!(ready.held, 0, "a mismatch drops what was held");
    second.send_data_in(stream, &data, MIB);
    assert_eq!(ok(second.finish_put(stream, &hash), "finish"), hash);
    assert!(fs::read(server.at("f")).unwrap() == data);
    assert!(
        leftovers_after_the_disk(server.root()).is_empty(),
        "no partial left: {:?}",
        reserved_entries(server.root())
    );
}

#[test]
fn a_restart_in_another_worker_cannot_truncate_an_upload_in_progress() {
    let server = FileServer::start(&["--workers", "2"]);
    let (mut first, mut second) = conns_on_two_workers(&server);
    let data = random_bytes(72, 3 * MIB + 11);
    let hash = blake3_of(&data);
    let first_stream = start_put(&mut first, "g", &data, MIB);

    // The same upload started over (no RESUME) in the other worker: truncating the partial
    // would leave the first one's DIGEST vouching for a file of zeros.
    let stream = second.new_stream();
    let restarted = second.begin_put(stream, b"g", data.len() as u64, PutFlags::NONE, Some(hash));
    if let Err((code, text)) = &restarted {
        assert_eq!(*code, ErrorCode::UploadBusy, "{text}");
    }

    first.send_data_in(first_stream, &data[MIB..], MIB);
    let outcome = first.finish_put(first_stream, &hash);
    let stored = fs::read(server.at("g")).unwrap_or_default();
    if outcome.is_ok() {
        assert!(
            stored == data,
            "the first PUT's DIGEST vouched for {} bytes that are not what it sent",
            stored.len()
        );
    }
    assert!(restarted.is_err(), "the restart was let in: {restarted:?}");
    assert_eq!(ok(outcome, "the first one finishes"), hash);
}

#[test]
fn another_workers_sweep_leaves_a_locked_partial_alone() {
    let server = FileServer::start(&["--workers", "2"]);
    fs::create_dir(server.at("d")).unwrap();
    let (mut first, mut second) = conns_on_two_workers(&server);
    let data = random_bytes(73, 2 * MIB + 1);
    let hash = blake3_of(&data);
    let first_stream = start_put(&mut first, "d/h", &data, MIB);
    // The upload looks abandoned for two days (an old mtime), but it is being written.
    let partials = reserved_entries(&server.at("d"));
    assert_eq!(partials.len(), 1, "{partials:?}");
    let partial = server.at("d").join(&partials[0].0);
    fs::File::options()
        .write(true)
        .open(&partial)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(2 * 24 * 3600))
        .unwrap();

    // A PUT in the same directory, in the other worker, sweeps it for expired partials.
    ok(second.put("d/other", b"sweep now"), "the other PUT");
    assert!(
        partial.exists(),
        "the sweep removed a partial being written"
    );

    first.send_data_in(first_stream, &data[MIB..], MIB);
    assert_eq!(ok(first.finish_put(first_stream, &hash), "finish"), hash);
    assert!(fs::read(server.at("d/h")).unwrap() == data);
}

#[test]
fn a_busy_upload_can_be_resumed_once_the_other_worker_lets_go() {
    let server = FileServer::start(&["--workers", "2"]);
    let (mut first, mut second) = conns_on_two_workers(&server);
    let data = random_bytes(74, 3 * MIB + 3);
    let hash = blake3_of(&data);
    start_put(&mut first, "k", &data, 2 * MIB);
    let stream = second.new_stream();
    let busy = second.begin_put(
        stream,
        b"k",
        data.len() as u64,
        PutFlags::RESUME,
        Some(hash),
    );
    assert!(matches!(busy, Err((ErrorCode::UploadBusy, _))), "{busy:?}");
    // The first client goes away; its worker notices the close and lets go of the partial.
    drop(first);
    let ready = retry_busy_upload(Duration::from_secs(10), || {
        let stream = second.new_stream();
        second
            .begin_put(
                stream,
                b"k",
                data.len() as u64,
                PutFlags::RESUME,
                Some(hash),
            )
            .map(|ready| (stream, ready))
    });
    let (stream, ready) = ok(ready, "resume after the first let go");
    assert_eq!(
        ready.held,
        2 * MIB as u64,
        "the other worker's bytes are kept"
    );
    second.send_data_in(stream, &data[2 * MIB..], MIB);
    assert_eq!(ok(second.finish_put(stream, &hash), "finish"), hash);
    assert!(fs::read(server.at("k")).unwrap() == data);
}

/// `put -r --continue` right after an interrupted tree, on a server with workers: a file whose
/// upload another worker still holds (a connection it has not yet seen close) is busy for a
/// moment. The tree waits for it, as a single `put` does, instead of failing it after a few
/// retries made at once.
#[test]
fn a_tree_waits_for_an_upload_another_worker_still_holds() {
    let server = FileServer::start(&["--workers", "2"]);
    let (mut first, mut second) = conns_on_two_workers(&server);
    let cli = ClientDir::new(&server, "workers-tree");
    fs::create_dir(cli.local("src")).unwrap();
    let x = random_bytes(81, 2 * MIB + 1);
    let y = random_bytes(82, 2 * MIB + 3);
    fs::write(cli.local("src/x"), &x).unwrap();
    fs::write(cli.local("src/y"), &y).unwrap();
    for i in 0..20 {
        fs::write(cli.local(&format!("src/small-{i}")), i.to_string()).unwrap();
    }
    fs::create_dir(server.at("dst")).unwrap();
    // One upload held in each worker: whichever the client's connection lands in, the other
    // holds one of its files (the one in its own worker it takes over).
    start_put(&mut first, "dst/x", &x, MIB);
    start_put(&mut second, "dst/y", &y, MIB);
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(first);
        drop(second);
    });
    let put = cli.exits_with(0, "put", &["-r", "--continue", "src/.", "dst"]);
    release.join().unwrap();
    assert!(fs::read(server.at("dst/x")).unwrap() == x, "{}", put.stderr);
    assert!(fs::read(server.at("dst/y")).unwrap() == y, "{}", put.stderr);
    assert_eq!(fs::read(server.at("dst/small-7")).unwrap(), b"7");
}
