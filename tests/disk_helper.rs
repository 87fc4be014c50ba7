//! The disk helper (`lib/src/sys/disk.rs`): the real helper process (this package's binary, run as
//! `monoreactor __disk-helper FD`) driven by a [`DiskHelper`] on a poll of the test's own;
//! its death and restart; a helper that cannot start; DELETE through a connection with
//! scripted completions; and DELETE through a real server, whose helper is one thread and
//! ends with it.

mod support;

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use monoreactor::Limits;
use monoreactor::client::files::FileClient;
use monoreactor::disk::{JobId, JobKind};
use monoreactor::internal::disk::{
    DiskDone, DiskHelper, HelperTokens, Job, MAX_HELD, MAX_IN_FLIGHT, TRASH_PREFIX,
};
use monoreactor::proto::files::{PutFlags, PutReady, PutRequest};
use monoreactor::proto::{ErrorCode, Flags, Frame, FrameType, Hello};
use monoreactor::testkit::{ConnHarness, MemoryIo};
use monoreactor::{Connection, Protocol, Verdict};
use rustix::io::Errno;

use support::{Server, TempDir, children_of, is_disk_helper, process_state, retry, threads};

const HELPER: &str = env!("CARGO_BIN_EXE_monoreactor");
const SOCKET: Token = Token(1);
const EXIT: Token = Token(2);

/// A helper on a poll of our own, with the little loop the reactor would run around it.
struct Rig {
    poll: Poll,
    events: Events,
    disk: DiskHelper,
    restart_at: Option<Instant>,
}

impl Rig {
    fn new(program: &str) -> Rig {
        let poll = Poll::new().unwrap();
        let mut disk = DiskHelper::new(
            Some(PathBuf::from(program)),
            HelperTokens {
                socket: SOCKET,
                exit: EXIT,
            },
        );
        disk.start(poll.registry());
        Rig {
            poll,
            events: Events::with_capacity(16),
            disk,
            restart_at: None,
        }
    }

    fn submit(&mut self, owner: u64, job: Job) -> JobId {
        self.disk.submit(Some(owner), job, self.poll.registry())
    }

    /// One turn: poll (up to 50 ms), hand each event to the helper, restart when due.
    fn turn(&mut self) {
        let timeout = if self.disk.has_done() {
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        };
        self.poll.poll(&mut self.events, Some(timeout)).unwrap();
        let tokens: Vec<Token> = self.events.iter().map(|event| event.token()).collect();
        for token in tokens {
            let restart = match token {
                SOCKET => self.disk.on_socket_event(self.poll.registry()),
                EXIT => self.disk.on_exit_event(self.poll.registry()),
                other => panic!("unexpected token {other:?}"),
            };
            if let Some(delay) = restart {
                assert!(self.restart_at.is_none(), "one restart at a time");
                self.restart_at = Some(Instant::now() + delay);
            }
        }
        if self.restart_at.is_some_and(|at| at <= Instant::now()) {
            self.restart_at = None;
            self.disk.restart(self.poll.registry());
        }
    }

    /// Turns until `count` completions came (at most 10 s), and a little longer to catch any
    /// extra one.
    fn completions(&mut self, count: usize) -> Vec<(Option<u64>, DiskDone)> {
        let mut done = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while done.len() < count && Instant::now() < deadline {
            self.turn();
            while let Some(one) = self.disk.next_done() {
                done.push(one);
            }
        }
        for _ in 0..4 {
            self.turn();
            while let Some(one) = self.disk.next_done() {
                done.push(one);
            }
        }
        done
    }

    fn wait_ready(&mut self) -> u32 {
        // HELLO makes it ready; an fsync round trip proves it.
        let file = fs::File::open("/proc/self/exe").unwrap();
        self.submit(0, Job::Fsync(OwnedFd::from(file)));
        let done = self.completions(1);
        assert_eq!(done.len(), 1, "{done:?}");
        self.disk.pid().expect("a helper runs")
    }
}

fn file_with(dir: &TempDir, name: &str, len: usize) -> fs::File {
    let path = dir.path().join(name);
    fs::write(&path, vec![7u8; len]).unwrap();
    fs::OpenOptions::new().write(true).open(path).unwrap()
}

#[test]
fn the_real_helper_runs_fsync_fdatasync_and_unlink_jobs() {
    let dir = TempDir::new("jobs");
    let mut rig = Rig::new(HELPER);
    assert!(!rig.disk.is_inline());
    let pid = rig.disk.pid().expect("started");
    let fsync = rig.submit(1, Job::Fsync(file_with(&dir, "a", 4096).into()));
    let fdatasync = rig.submit(2, Job::Fdatasync(file_with(&dir, "b", 4096).into()));
    let unlink = rig.submit(
        3,
        Job::Unlink {
            dir: dir.dir_fd(),
            name: "a".to_string(),
        },
    );
    let missing = rig.submit(
        4,
        Job::Unlink {
            dir: dir.dir_fd(),
            name: "never-there".to_string(),
        },
    );
    let done = rig.completions(4);
    assert_eq!(
        done,
        vec![
            (
                Some(1),
                DiskDone {
                    id: fsync,
                    kind: JobKind::Fsync,
                    result: Ok(())
                }
            ),
            (
                Some(2),
                DiskDone {
                    id: fdatasync,
                    kind: JobKind::Fdatasync,
                    result: Ok(())
                }
            ),
            (
                Some(3),
                DiskDone {
                    id: unlink,
                    kind: JobKind::Unlink,
                    result: Ok(())
                }
            ),
            // Sent once: ENOENT is the answer, not a success.
            (
                Some(4),
                DiskDone {
                    id: missing,
                    kind: JobKind::Unlink,
                    result: Err(Errno::NOENT)
                }
            ),
        ]
    );
    assert_eq!(dir.names(), ["b"], "the helper removed a");
    let stats = rig.disk.stats();
    assert_eq!((stats.by_helper, stats.inline), (4, 0), "{stats:?}");
    assert_eq!(threads(pid), 1, "the helper is one thread");
    assert!(rig.disk.is_idle());
    // Dropping the server's end ends the helper (EOF), and it is reaped.
    drop(rig);
    assert!(
        retry(Duration::from_secs(5), || process_state(pid)
            .is_none()
            .then_some(()))
        .is_some(),
        "the helper exited and was reaped: {:?}",
        process_state(pid)
    );
}

#[test]
fn a_killed_helper_is_restarted_and_its_unanswered_jobs_complete_once() {
    let dir = TempDir::new("kill");
    let mut rig = Rig::new(HELPER);
    let first = rig.wait_ready();
    fs::write(dir.path().join("victim"), b"x").unwrap();
    fs::write(dir.path().join("already-gone"), b"x").unwrap();
    // Stopped, the helper takes nothing from its socket: both jobs are sent and unanswered
    // when it dies.
    signal(first, libc::SIGSTOP);
    assert!(
        retry(Duration::from_secs(5), || (process_state(first)
            == Some('T'))
        .then_some(()))
        .is_some()
    );
    let victim = rig.submit(
        7,
        Job::Unlink {
            dir: dir.dir_fd(),
            name: "victim".to_string(),
        },
    );
    let gone = rig.submit(
        8,
        Job::Unlink {
            dir: dir.dir_fd(),
            name: "already-gone".to_string(),
        },
    );
    let sync = rig.submit(9, Job::Fsync(file_with(&dir, "synced", 10).into()));
    // As if the dead helper had unlinked it but died before answering.
    fs::remove_file(dir.path().join("already-gone")).unwrap();
    rig.turn();
    assert_eq!(rig.disk.next_done(), None, "nothing answered while stopped");
    signal(first, libc::SIGKILL);
    let done = rig.completions(3);
    let mut ids: Vec<_> = done.iter().map(|(_, done)| done.id).collect();
    ids.sort();
    assert_eq!(
        ids,
        [victim, gone, sync],
        "exactly one completion each: {done:?}"
    );
    let result = |id| {
        done.iter()
            .find(|(_, done)| done.id == id)
            .map(|(_, done)| done.result)
    };
    assert_eq!(result(victim), Some(Ok(())));
    assert_eq!(
        result(gone),
        Some(Ok(())),
        "a resent unlink that finds ENOENT was done"
    );
    assert_eq!(
        result(sync),
        Some(Err(Errno::IO)),
        "a sync the dead helper may have made is failed, never repeated"
    );
    assert!(!dir.path().join("victim").exists());
    let second = rig.disk.pid().expect("restarted");
    assert_ne!(first, second);
    let stats = rig.disk.stats();
    assert_eq!((stats.started, stats.died), (2, 1), "{stats:?}");
    assert!(stats.resent >= 2, "{stats:?}");
    assert_eq!(stats.inline, 0, "{stats:?}");
    assert_eq!(process_state(first), None, "the dead helper was reaped");
}

#[test]
fn jobs_past_the_bounds_wait_in_the_queue_or_run_inline_and_each_completes_once() {
    let dir = TempDir::new("bounds");
    let mut rig = Rig::new(HELPER);
    let pid = rig.wait_ready();
    let file = file_with(&dir, "f", 10);
    // Stopped, the helper answers nothing: MAX_IN_FLIGHT jobs go out, the rest of MAX_HELD
    // wait in the queue, and any more run inline at once.
    signal(pid, libc::SIGSTOP);
    assert!(
        retry(Duration::from_secs(5), || (process_state(pid) == Some('T'))
            .then_some(()))
        .is_some()
    );
    let extra = 20;
    let mut ids = Vec::new();
    for _ in 0..MAX_HELD + extra {
        let fd = file.try_clone().unwrap();
        ids.push(rig.submit(1, Job::Fdatasync(fd.into())));
    }
    assert_eq!(
        rig.disk.stats().inline,
        extra as u64,
        "{:?}",
        rig.disk.stats()
    );
    signal(pid, libc::SIGCONT);
    let done = rig.completions(MAX_HELD + extra);
    let mut seen: Vec<_> = done.iter().map(|(_, done)| done.id).collect();
    seen.sort();
    assert_eq!(seen, ids, "each job completes exactly once");
    assert!(done.iter().all(|(_, done)| done.result == Ok(())));
    let stats = rig.disk.stats();
    // wait_ready's fsync was answered by the helper too.
    assert_eq!(stats.by_helper, MAX_HELD as u64 + 1, "{stats:?}");
    const { assert!(MAX_IN_FLIGHT < MAX_HELD) };
}

#[test]
fn a_helper_that_cannot_start_leaves_the_jobs_inline() {
    for program in ["/nonexistent/monoreactor", "/bin/true"] {
        let dir = TempDir::new("inline");
        fs::write(dir.path().join("f"), b"x").unwrap();
        let mut rig = Rig::new(program);
        let job = rig.submit(
            5,
            Job::Unlink {
                dir: dir.dir_fd(),
                name: "f".to_string(),
            },
        );
        let done = rig.completions(1);
        assert_eq!(
            done,
            vec![(
                Some(5),
                DiskDone {
                    id: job,
                    kind: JobKind::Unlink,
                    result: Ok(())
                }
            )],
            "{program}"
        );
        assert!(rig.disk.is_inline(), "{program}: given up on");
        assert_eq!(rig.disk.stats().inline, 1, "{program}");
        assert!(dir.names().is_empty(), "{program}");
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill only sends a signal, to a child of this test process not yet reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

// === DELETE on a connection, with scripted completions ===

fn hello() -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::with_credentials(b"").encode(&mut wire);
    wire
}

fn settle(h: &mut ConnHarness, io: &mut MemoryIo) {
    let mut verdict = h.event(io, true, true);
    for _ in 0..1000 {
        if verdict != Verdict::Again {
            return;
        }
        verdict = h.drive(io);
    }
    panic!("never settles");
}

#[test]
fn delete_answers_done_at_once_and_leaves_the_unlink_of_the_aside_name_to_the_disk() {
    let dir = TempDir::new("conn");
    fs::write(dir.path().join("big"), vec![1u8; 2 << 20]).unwrap();
    fs::write(dir.path().join("small"), b"tiny").unwrap();
    let mut h = ConnHarness::framed(Limits::default())
        .with_files(dir.path())
        .with_disk();
    let mut io = MemoryIo::new();
    io.push(&hello());
    settle(&mut h, &mut io);
    io.take_frames();

    io.push(&Frame::new(FrameType::Delete, Flags::NONE, 1, b"big").to_vec());
    settle(&mut h, &mut io);
    let frames = io.take_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(
        (frames[0].header.frame_type, frames[0].header.stream),
        (FrameType::Done, 1),
        "DONE before the blocks are freed"
    );
    let names = dir.names();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].starts_with(TRASH_PREFIX),
        "renamed aside: {names:?}"
    );
    assert_eq!(names[1], "small");
    let pending: Vec<_> = h.disk().pending().map(|(_, kind)| kind).collect();
    assert_eq!(pending, [JobKind::Unlink]);

    // A small file is unlinked at once: nothing to gain from the helper.
    io.push(&Frame::new(FrameType::Delete, Flags::NONE, 3, b"small").to_vec());
    settle(&mut h, &mut io);
    assert_eq!(io.take_frames()[0].header.frame_type, FrameType::Done);
    assert_eq!(h.disk().pending().count(), 1, "no job for a small file");
    assert_eq!(dir.names().len(), 1);

    // The aside name is hidden from LIST and is not a path a client can name.
    io.push(&Frame::new(FrameType::List, Flags::NONE, 5, b"").to_vec());
    settle(&mut h, &mut io);
    let listing = io.take_frames();
    assert!(
        listing
            .iter()
            .all(|frame| !String::from_utf8_lossy(&frame.payload).contains(TRASH_PREFIX)),
        "{listing:?}"
    );
    let trash = dir.names().remove(0);
    io.push(&Frame::new(FrameType::Delete, Flags::NONE, 7, trash.as_bytes()).to_vec());
    settle(&mut h, &mut io);
    assert_eq!(io.take_frames()[0].header.frame_type, FrameType::Error);

    // The job completes (for real); the connection takes the news and goes on.
    let done = h.disk().run_next().expect("a job");
    assert_eq!(done.result, Ok(()));
    assert_eq!(h.disk_done(&mut io, done), Verdict::Wait);
    assert!(
        dir.names().is_empty(),
        "the blocks are freed: {:?}",
        dir.names()
    );
    // And a failure is only logged: DONE was right, the name was gone.
    fs::write(dir.path().join("big"), vec![1u8; 2 << 20]).unwrap();
    io.push(&Frame::new(FrameType::Delete, Flags::NONE, 9, b"big").to_vec());
    settle(&mut h, &mut io);
    assert_eq!(io.take_frames()[0].header.frame_type, FrameType::Done);
    let failed = h.disk().finish_next(Err(Errno::IO)).expect("a job");
    assert_eq!(h.disk_done(&mut io, failed), Verdict::Wait);
    assert!(
        io.take_frames().is_empty(),
        "nothing more is said to the client"
    );
}

// === A real server ===

/// The helper of server `pid`: its child running `__disk-helper`.
fn helper_of(pid: u32) -> u32 {
    retry(Duration::from_secs(5), || {
        children_of(pid)
            .into_iter()
            .find_map(|(child, _)| is_disk_helper(child).then_some(child))
    })
    .expect("the server started a disk helper")
}

fn trash_in(root: &Path) -> Vec<String> {
    fs::read_dir(root)
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(TRASH_PREFIX))
        .collect()
}

/// Writes `len` real bytes (not a sparse file: its blocks must be allocated to be freed).
fn big_file(path: &Path, len: usize) {
    use std::io::Write;
    let mut file = fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..len >> 20 {
        file.write_all(&chunk).unwrap();
    }
    file.sync_all().unwrap();
}

fn delete_big_file_through(server: &Server, root: &Path) {
    big_file(&root.join("big"), 256 << 20);
    let mut client =
        FileClient::connect(&server.framed_str(), None, Duration::from_secs(5)).expect("connect");
    client.delete("big").expect("DONE");
    let listed: Vec<String> = client
        .list("")
        .expect("LIST")
        .into_iter()
        .map(|entry| entry.name)
        .collect();
    assert!(listed.is_empty(), "gone from LIST: {listed:?}");
    assert!(
        retry(Duration::from_secs(20), || trash_in(root)
            .is_empty()
            .then_some(()))
        .is_some(),
        "the aside name is unlinked soon after: {:?}",
        trash_in(root)
    );
    assert!(!root.join("big").exists());
}

#[test]
fn a_server_deletes_a_big_file_through_its_one_thread_helper_which_ends_with_it() {
    let root = TempDir::new("serve");
    let root_arg = root.path().to_string_lossy().into_owned();
    let mut server = Server::start(&["--root", &root_arg, "-vv"]);
    let helper = helper_of(server.pid());
    assert_eq!(threads(helper), 1, "the helper is one thread");
    assert_eq!(server.threads(), 1, "and so is the server");
    delete_big_file_through(&server, root.path());
    // Stderr is collected by a thread: the line may still be on its way.
    let log = retry(Duration::from_secs(5), || {
        let log = server.stderr_text();
        log.contains("renamed aside to .monoreactor-trash-")
            .then_some(log)
    })
    .unwrap_or_else(|| panic!("the unlink went to the helper: {}", server.stderr_text()));
    assert!(!log.contains("run on the loop instead"), "{log}");
    // SIGTERM: the server drains and exits; the helper sees EOF and exits too.
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).is_some());
    assert!(
        retry(Duration::from_secs(5), || matches!(
            process_state(helper),
            None | Some('Z')
        )
        .then_some(()))
        .is_some(),
        "the helper ended with the server (SIGTERM)"
    );

    // SIGKILL: nothing runs in the server, the kernel closes its end; the helper ends.
    let server = Server::start(&["--root", &root_arg]);
    let helper = helper_of(server.pid());
    server.signal(libc::SIGKILL);
    assert!(
        retry(Duration::from_secs(5), || matches!(
            process_state(helper),
            None | Some('Z')
        )
        .then_some(()))
        .is_some(),
        "the helper ended with the server (SIGKILL)"
    );
}

#[test]
fn a_server_whose_helper_cannot_start_still_deletes() {
    let root = TempDir::new("nohelper");
    let root_arg = root.path().to_string_lossy().into_owned();
    let server = Server::start(&[
        "--root",
        &root_arg,
        "--disk-helper",
        "/nonexistent/monoreactor",
        "-v",
    ]);
    assert!(children_of(server.pid()).is_empty(), "no helper runs");
    delete_big_file_through(&server, root.path());
    let log = retry(Duration::from_secs(5), || {
        let log = server.stderr_text();
        log.contains("run on the loop instead").then_some(log)
    })
    .unwrap_or_else(|| server.stderr_text());
    assert_eq!(
        log.matches("run on the loop instead").count(),
        1,
        "one warning: {log}"
    );
}

// === PUT: every blocking step by the disk, the DIGEST last ===

/// A PUT request of `size` bytes to `path`, with `hash` declared if given.
fn put_request(stream: u32, size: u64, hash: Option<[u8; 32]>, path: &str) -> Vec<u8> {
    let request = PutRequest {
        size,
        flags: if hash.is_some() {
            PutFlags::HASH_DECLARED
        } else {
            PutFlags::NONE
        },
        hash,
        attrs: None,
        path,
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    Frame::new(FrameType::Put, Flags::NONE, stream, &payload).to_vec()
}

/// The whole upload of `bytes` on `stream`: PUT (hash declared), DATA frames, DIGEST.
fn upload(stream: u32, bytes: &[u8], path: &str) -> Vec<u8> {
    let hash = *blake3::hash(bytes).as_bytes();
    let mut wire = put_request(stream, bytes.len() as u64, Some(hash), path);
    for chunk in bytes.chunks(1 << 20) {
        wire.extend(Frame::new(FrameType::Data, Flags::NONE, stream, chunk).to_vec());
    }
    wire.extend(Frame::new(FrameType::Digest, Flags::END_STREAM, stream, &hash).to_vec());
    wire
}

fn frame_kinds(frames: &[monoreactor::client::OwnedFrame]) -> Vec<(FrameType, u32)> {
    frames
        .iter()
        .map(|frame| (frame.header.frame_type, frame.header.stream))
        .collect()
}

fn pending_kinds(h: &mut ConnHarness) -> Vec<JobKind> {
    h.disk().pending().map(|(_, kind)| kind).collect()
}

/// A connection with a scripted disk, after HELLO.
fn disk_conn(dir: &TempDir) -> (ConnHarness, MemoryIo) {
    let mut h = ConnHarness::framed(Limits::default())
        .with_files(dir.path())
        .with_disk();
    let mut io = MemoryIo::new();
    io.push(&hello());
    settle(&mut h, &mut io);
    io.take_frames();
    (h, io)
}

#[test]
fn a_put_answers_digest_only_once_its_data_and_directory_are_durable() {
    let dir = TempDir::new("put-durable");
    let old = vec![0x0du8; 2 << 20]; // big enough for the helper to free
    fs::write(dir.path().join("f"), &old).unwrap();
    let (mut h, mut io) = disk_conn(&dir);
    let bytes = vec![7u8; 3000];
    io.push(&upload(1, &bytes, "f"));
    settle(&mut h, &mut io);
    assert_eq!(frame_kinds(&io.take_frames()), [(FrameType::PutReady, 1)]);
    // The bytes are the disk helper's to write; the fsync waits for the write.
    assert_eq!(pending_kinds(&mut h), [JobKind::Write]);
    let done = h.disk().run_next().unwrap();
    h.disk_done(&mut io, done);
    assert_eq!(pending_kinds(&mut h), [JobKind::Fsync], "the data's fsync");
    assert!(io.take_frames().is_empty());
    assert!(fs::read(dir.path().join("f")).unwrap() == old, "not yet");

    // The data is durable: the file is renamed into place (the old one set aside for the
    // disk to free), and the directory's fsync is asked for. Still no DIGEST.
    let done = h.disk().run_next().unwrap();
    h.disk_done(&mut io, done);
    assert!(
        io.take_frames().is_empty(),
        "no DIGEST before the directory is durable"
    );
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), bytes);
    let mut pending = pending_kinds(&mut h);
    pending.sort_by_key(|kind| format!("{kind:?}"));
    assert_eq!(pending, [JobKind::Fsync, JobKind::Unlink]);

    // Both done: the DIGEST, and nothing left but the file.
    while let Some(done) = h.disk().run_next() {
        h.disk_done(&mut io, done);
    }
    let frames = io.take_frames();
    assert_eq!(frame_kinds(&frames), [(FrameType::Digest, 1)]);
    assert_eq!(frames[0].payload, blake3::hash(&bytes).as_bytes());
    assert_eq!(
        dir.names(),
        ["f"],
        "the replaced file is gone, no partial left"
    );
    assert_eq!(h.conn.open_streams(), 0);
}

#[test]
fn a_failed_sync_fails_the_upload_and_stores_nothing() {
    let dir = TempDir::new("put-eio");
    fs::write(dir.path().join("f"), b"old").unwrap();
    let (mut h, mut io) = disk_conn(&dir);
    io.push(&upload(1, &[9u8; 5000], "f"));
    settle(&mut h, &mut io);
    io.take_frames();
    let written = h.disk().run_next().unwrap();
    h.disk_done(&mut io, written);
    // The disk reports a write-back error to the data's fsync.
    let failed = h.disk().finish_next(Err(Errno::IO)).unwrap();
    h.disk_done(&mut io, failed);
    let frames = io.take_frames();
    assert_eq!(frame_kinds(&frames), [(FrameType::Error, 1)]);
    assert!(
        String::from_utf8_lossy(&frames[0].payload).contains("Input/output error"),
        "{frames:?}"
    );
    assert_eq!(
        fs::read(dir.path().join("f")).unwrap(),
        b"old",
        "target untouched"
    );
    assert_eq!(
        dir.names(),
        ["f"],
        "the partial, whose bytes are suspect, is gone"
    );
    assert_eq!(h.conn.open_streams(), 0);
}

#[test]
fn an_upload_that_runs_ahead_of_the_disk_is_read_no_further() {
    let dir = TempDir::new("put-ahead");
    let (mut h, mut io) = disk_conn(&dir);
    let bytes = vec![3u8; 80 << 20];
    io.push(&upload(1, &bytes, "big"));
    settle(&mut h, &mut io);
    // 2 MiB (and the rest of the frame that reached it) waiting to be written by the disk
    // helper: no more is read.
    let pending = pending_kinds(&mut h);
    assert!(
        (8..=12).contains(&pending.len()) && pending.iter().all(|kind| *kind == JobKind::Write),
        "{pending:?}"
    );
    assert!(
        io.unread() > 40 << 20,
        "{} bytes read past what the disk has synced",
        bytes.len() - io.unread()
    );
    // As the disk catches up, the connection reads on, and the upload completes.
    let mut turns = 0;
    while let Some(done) = h.disk().run_next() {
        h.disk_done(&mut io, done);
        settle(&mut h, &mut io);
        assert!(
            h.disk().pending().count() <= 12,
            "at most 2 MiB and a frame of writes, or two windows' syncs, ahead of the disk"
        );
        turns += 1;
        assert!(turns < 1000);
    }
    let frames = io.take_frames();
    assert_eq!(
        frame_kinds(&frames),
        [(FrameType::PutReady, 1), (FrameType::Digest, 1)]
    );
    assert!(fs::read(dir.path().join("big")).unwrap() == bytes);
}

#[test]
fn a_put_survives_its_disk_helper_being_killed_mid_upload() {
    let root = TempDir::new("put-kill");
    let root_arg = root.path().to_string_lossy().into_owned();
    let server = Server::start(&["--root", &root_arg, "-v"]);
    let helper = helper_of(server.pid());
    let data: Vec<u8> = (0..48u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let hash = *blake3::hash(&data).as_bytes();
    let mut client =
        FileClient::connect(&server.framed_str(), None, Duration::from_secs(30)).expect("connect");
    let mut killed = false;
    let stored = client
        .put(
            "big",
            &mut std::io::Cursor::new(&data),
            data.len() as u64,
            hash,
            false,
            &mut |done, _| {
                // A third of the way in, with writes in the helper's hands: kill it.
                if !killed && done >= 16 << 20 {
                    // SAFETY: kill sends a signal to the server's helper, a process we
                    // started (through the server) and that is still unreaped.
                    assert_eq!(
                        unsafe { libc::kill(helper as libc::pid_t, libc::SIGKILL) },
                        0
                    );
                    killed = true;
                }
            },
        )
        .expect("the PUT completes");
    assert!(killed);
    assert_eq!(stored.hash, hash);
    assert!(
        fs::read(root.path().join("big")).unwrap() == data,
        "every byte where it belongs"
    );
    let replacement = helper_of(server.pid());
    assert_ne!(replacement, helper, "a new helper took over");
    let log = server.stderr_text();
    assert!(log.contains("restarting it"), "{log}");
}

#[test]
fn a_shutdown_lets_a_commit_in_progress_send_its_digest() {
    let dir = TempDir::new("put-shutdown");
    let (mut h, mut io) = disk_conn(&dir);
    let bytes = vec![5u8; 1000];
    io.push(&upload(1, &bytes, "f"));
    settle(&mut h, &mut io);
    assert_eq!(frame_kinds(&io.take_frames()), [(FrameType::PutReady, 1)]);
    // SIGTERM while the upload is verified but not yet durable: the connection waits for it.
    h.shutdown(&mut io, Duration::from_secs(5));
    assert!(
        io.take_frames().is_empty(),
        "no SHUTTING_DOWN before the DIGEST"
    );
    while let Some(done) = h.disk().run_next() {
        h.disk_done(&mut io, done);
    }
    let frames = io.take_frames();
    assert_eq!(
        frame_kinds(&frames),
        [(FrameType::Digest, 1), (FrameType::Error, 0)],
        "the DIGEST, then SHUTTING_DOWN"
    );
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), bytes);
}

#[test]
fn a_mismatched_upload_leaves_the_unlink_of_its_partial_to_the_disk() {
    let dir = TempDir::new("put-mismatch");
    let (mut h, mut io) = disk_conn(&dir);
    let bytes = vec![1u8; 3 << 20];
    let mut wire = upload(1, &bytes, "f");
    // The trailer says another file: HASH_MISMATCH, and the partial (3 MiB) goes.
    let at = wire.len() - 32;
    wire[at] ^= 1;
    io.push(&wire);
    settle(&mut h, &mut io);
    // Its writes first (the disk helper's), then the verdict.
    while h.disk().pending().any(|(_, kind)| kind == JobKind::Write) {
        let done = h.disk().run_next().unwrap();
        h.disk_done(&mut io, done);
    }
    let frames = io.take_frames();
    assert_eq!(
        frame_kinds(&frames),
        [(FrameType::PutReady, 1), (FrameType::Error, 1)]
    );
    let names = dir.names();
    assert!(
        names.len() == 1 && names[0].starts_with(TRASH_PREFIX),
        "renamed aside for the disk helper to free: {names:?}"
    );
    while let Some(done) = h.disk().run_next() {
        h.disk_done(&mut io, done);
    }
    assert!(dir.names().is_empty(), "{:?}", dir.names());
}

/// A client vanished mid-upload (no FIN) and resumes on a new connection: the new PUT would
/// take the older one over, but while the older one's writes are still in the disk helper's
/// hands what the partial holds cannot be told, so it is refused UPLOAD_BUSY (the client
/// retries). Once the helper has done them — their connection never hears of it, stalled as
/// it is — the same PUT takes over and is offered every byte written.
#[test]
fn a_takeover_waits_until_the_older_uploads_writes_are_done() {
    let dir = TempDir::new("takeover-busy");
    let (mut h, mut io) = disk_conn(&dir);
    let bytes = vec![6u8; 300 << 10];
    let hash = *blake3::hash(&bytes).as_bytes();
    let size = 2 * bytes.len() as u64;
    let mut wire = put_request(1, size, Some(hash), "f");
    wire.extend(Frame::new(FrameType::Data, Flags::NONE, 1, &bytes).to_vec());
    io.push(&wire);
    settle(&mut h, &mut io);
    assert_eq!(frame_kinds(&io.take_frames()), [(FrameType::PutReady, 1)]);
    assert_eq!(pending_kinds(&mut h), [JobKind::Write, JobKind::Write]);

    // The same client, on a new connection (the old one stalls, its upload still open).
    let stalled = std::mem::replace(
        &mut h.conn,
        Connection::new(Protocol::Framed, h.now, &h.limits),
    );
    let mut io = MemoryIo::new();
    io.push(&hello());
    settle(&mut h, &mut io);
    io.take_frames();
    let resume = |stream| {
        let request = PutRequest {
            size,
            flags: PutFlags::HASH_DECLARED.with(PutFlags::RESUME),
            hash: Some(hash),
            attrs: None,
            path: "f",
        };
        let mut payload = vec![0; request.payload_len()];
        request.emit(&mut payload);
        Frame::new(FrameType::Put, Flags::NONE, stream, &payload).to_vec()
    };
    io.push(&resume(1));
    settle(&mut h, &mut io);
    let frames = io.take_frames();
    assert_eq!(frame_kinds(&frames), [(FrameType::Error, 1)]);
    let error = monoreactor::proto::ErrorMessage::parse(&frames[0].payload).unwrap();
    assert_eq!(error.code, ErrorCode::UploadBusy, "{}", error.text);

    // The helper writes both pieces; the stalled connection is not told.
    while h.disk().run_next().is_some() {}
    io.push(&resume(3));
    settle(&mut h, &mut io);
    let frames = io.take_frames();
    assert_eq!(frame_kinds(&frames), [(FrameType::PutReady, 3)]);
    let ready = PutReady::parse(&frames[0].payload).unwrap();
    assert_eq!(ready.held, bytes.len() as u64, "every byte written is held");
    drop(stalled);
}

/// A whole upload of `bytes` with the given PUT flags (the hash declared) and attributes.
fn upload_with(
    stream: u32,
    bytes: &[u8],
    path: &str,
    flags: PutFlags,
    attrs: Option<monoreactor::proto::files::PutAttrs>,
) -> Vec<u8> {
    let hash = *blake3::hash(bytes).as_bytes();
    let request = PutRequest {
        size: bytes.len() as u64,
        flags,
        hash: Some(hash),
        attrs,
        path,
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    let mut wire = Frame::new(FrameType::Put, Flags::NONE, stream, &payload).to_vec();
    wire.extend(Frame::new(FrameType::Data, Flags::NONE, stream, bytes).to_vec());
    wire.extend(Frame::new(FrameType::Digest, Flags::END_STREAM, stream, &hash).to_vec());
    wire
}

#[test]
fn a_deferred_put_syncs_nothing_and_a_sync_fs_put_syncs_the_file_system_once() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("put-deferred");
    let (mut h, mut io) = disk_conn(&dir);
    let attrs = monoreactor::proto::files::PutAttrs {
        mode: 0o6751,
        mtime_ns: 1_600_000_000_000_000_007,
    };
    io.push(&upload_with(
        1,
        b"deferred",
        "a",
        PutFlags::DEFER_SYNC,
        Some(attrs),
    ));
    settle(&mut h, &mut io);
    assert_eq!(frame_kinds(&io.take_frames()), [(FrameType::PutReady, 1)]);
    assert_eq!(pending_kinds(&mut h), [JobKind::Write]);
    let done = h.disk().run_next().unwrap();
    h.disk_done(&mut io, done);
    // Written: stored and answered at once, neither the file nor its directory synced.
    assert_eq!(pending_kinds(&mut h), []);
    assert_eq!(frame_kinds(&io.take_frames()), [(FrameType::Digest, 1)]);
    assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"deferred");
    let meta = fs::metadata(dir.path().join("a")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o751, "never setuid");
    assert_eq!(
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        1_600_000_000_000_000_007
    );

    io.push(&upload_with(3, b"last", "b", PutFlags::SYNC_FS, None));
    settle(&mut h, &mut io);
    assert_eq!(frame_kinds(&io.take_frames()), [(FrameType::PutReady, 3)]);
    let done = h.disk().run_next().unwrap();
    h.disk_done(&mut io, done);
    // No fsync of the file: renamed, then one syncfs, and only then the DIGEST.
    assert_eq!(pending_kinds(&mut h), [JobKind::Syncfs]);
    assert!(io.take_frames().is_empty(), "no DIGEST before the syncfs");
    assert_eq!(fs::read(dir.path().join("b")).unwrap(), b"last");
    let done = h.disk().run_next().unwrap();
    h.disk_done(&mut io, done);
    assert_eq!(frame_kinds(&io.take_frames()), [(FrameType::Digest, 3)]);
    let mode = fs::metadata(dir.path().join("b"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o644 & !umask(),
        "no ATTRS: the server's own mode"
    );
}

/// The process's umask (read by setting it and back).
fn umask() -> u32 {
    // SAFETY: umask cannot fail; the old mask is put back at once.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    }
}
