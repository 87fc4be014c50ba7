//! Adversarial review of the disk helper's upload path (branch review-disk). Each test here
//! shows a bug: it FAILS on the code as reviewed.

mod support;

use std::fs;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};
use monoreactor::Limits;
use monoreactor::Tick;
use monoreactor::disk::JobKind;
use monoreactor::internal::disk::{
    DiskDone, DiskHelper, HelperTokens, Job, MAX_HELD, MAX_IN_FLIGHT, Ring, SLOT_LEN, write_job,
};
use monoreactor::proto::files::{PutFlags, PutRequest};
use monoreactor::proto::{ErrorCode, Flags, Frame, FrameType, Hello};
use monoreactor::testkit::{ConnHarness, MemoryIo};
use monoreactor::{Connection, Protocol, Verdict};
use rustix::io::Errno;

use support::{TempDir, process_state, retry};

const HELPER: &str = env!("CARGO_BIN_EXE_monoreactor");
const SOCKET: Token = Token(1);
const EXIT: Token = Token(2);

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

fn put_request(stream: u32, size: u64, hash: [u8; 32], resume: bool, path: &str) -> Vec<u8> {
    let flags = if resume {
        PutFlags::RESUME.with(PutFlags::HASH_DECLARED)
    } else {
        PutFlags::HASH_DECLARED
    };
    let request = PutRequest {
        size,
        flags,
        hash: Some(hash),
        attrs: None,
        path,
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    Frame::new(FrameType::Put, Flags::NONE, stream, &payload).to_vec()
}

fn data(stream: u32, bytes: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    for chunk in bytes.chunks(1 << 20) {
        wire.extend(Frame::new(FrameType::Data, Flags::NONE, stream, chunk).to_vec());
    }
    wire
}

fn digest(stream: u32, hash: [u8; 32]) -> Vec<u8> {
    Frame::new(FrameType::Digest, Flags::END_STREAM, stream, &hash).to_vec()
}

fn kinds(frames: &[monoreactor::client::OwnedFrame]) -> Vec<(FrameType, u32)> {
    frames
        .iter()
        .map(|frame| (frame.header.frame_type, frame.header.stream))
        .collect()
}

fn error_code(frame: &monoreactor::client::OwnedFrame) -> Option<ErrorCode> {
    monoreactor::proto::ErrorMessage::parse(&frame.payload)
        .ok()
        .map(|error| error.code)
}

/// A fresh connection in the harness (same files, same scripted disk), after HELLO; the
/// connection it replaces is returned.
fn new_conn(h: &mut ConnHarness) -> (Connection, MemoryIo) {
    let old = std::mem::replace(
        &mut h.conn,
        Connection::new(Protocol::Framed, Tick(0), &h.limits),
    );
    let mut io = MemoryIo::new();
    io.push(&hello());
    settle(h, &mut io);
    io.take_frames();
    (old, io)
}

fn run_all(h: &mut ConnHarness, io: &mut MemoryIo) {
    while let Some(done) = h.disk().run_next() {
        h.disk_done(io, done);
        settle(h, io);
    }
}

// === 1. The `writing` counter of an upload dropped with writes in flight sticks ===

/// A resumable upload A stalls (its client vanished without a FIN); the client resumes from
/// elsewhere (B takes A over: the designed path). B's connection dies too while one of its
/// writes is with the disk helper. The helper finishes that write — but the completion is for
/// a closed connection and is dropped, so B's `writing` counter, which the table entry still
/// holds (A shares the descriptor, so the entry stays), is never decremented. Every later
/// PUT of the upload is refused UPLOAD_BUSY for as long as A lingers (the idle timeout, or for
/// ever if A's connection stays busy with other streams) — though no write is outstanding.
#[test]
fn an_upload_dropped_with_writes_in_flight_leaves_no_stuck_upload_busy() {
    let dir = TempDir::new("stuck");
    let mut h = ConnHarness::framed(Limits::default())
        .with_files(dir.path())
        .with_disk();
    let bytes = support::seeded_bytes(7, 2 << 20);
    let hash = *blake3::hash(&bytes).as_bytes();
    let size = bytes.len() as u64;

    // A: PUT and 512 KiB, all written; then its client stalls.
    let (_, mut io_a) = new_conn(&mut h);
    io_a.push(&put_request(1, size, hash, false, "f"));
    io_a.push(&data(1, &bytes[..512 << 10]));
    settle(&mut h, &mut io_a);
    assert_eq!(kinds(&io_a.take_frames()), [(FrameType::PutReady, 1)]);
    run_all(&mut h, &mut io_a);

    // B resumes from elsewhere: takes A over, sends 256 KiB more, and its connection dies
    // while that write is with the helper.
    let (conn_a, mut io_b) = new_conn(&mut h);
    io_b.push(&put_request(1, size, hash, true, "f"));
    settle(&mut h, &mut io_b);
    let frames = io_b.take_frames();
    assert_eq!(kinds(&frames), [(FrameType::PutReady, 1)], "B takes A over");
    io_b.push(&data(1, &bytes[512 << 10..768 << 10]));
    settle(&mut h, &mut io_b);
    assert_eq!(
        h.disk().pending().map(|(_, kind)| kind).collect::<Vec<_>>(),
        [JobKind::Write]
    );
    io_b.close();
    settle(&mut h, &mut io_b);
    h.with_context(|conn, cx| conn.release(cx));
    // The helper does the write; its connection is gone, so the completion is dropped
    // (`deliver_disk_done`: no live slot).
    let done = h.disk().run_next().expect("the write");
    assert_eq!(done.result, Ok(()));
    assert_eq!(
        h.disk().pending().count(),
        0,
        "nothing left in the helper's hands"
    );

    // C resumes: nothing is being written, so it must get PUT_READY.
    let (_conn_b, mut io_c) = new_conn(&mut h);
    io_c.push(&put_request(1, size, hash, true, "f"));
    settle(&mut h, &mut io_c);
    let frames = io_c.take_frames();
    drop(conn_a); // A is still alive up to here (a stalled client)
    assert_eq!(
        kinds(&frames),
        [(FrameType::PutReady, 1)],
        "refused though no write is outstanding: {:?}",
        frames.iter().map(error_code).collect::<Vec<_>>()
    );
}

// === 2. A write job run inline shares the file position with the helper's ===

/// Two runners of `Job::Write` on descriptors of one open file (the helper, and the loop
/// running a write inline: `DiskHelper::submit` past `MAX_HELD`, or a failed `sendmsg`) race
/// on the shared file position: `lseek` then `sendfile` is not atomic, so one runner's bytes
/// land at the other's offset. Here two threads stand in for the two processes, each with a
/// write ring of its own, as each server has (only the server's one thread claims slots).
#[test]
fn write_jobs_on_one_open_file_never_land_at_the_wrong_offset() {
    let dir = TempDir::new("pos-race");
    let path = dir.path().join("f");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let piece = 64 << 10;
    let far: u64 = 4 << 20;
    let runner = |fill: u8, offset: u64| {
        let file = file.try_clone().unwrap();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut ring = Ring::new().unwrap();
            let bytes = vec![fill; piece];
            let mut runs = 0u32;
            while !stop.load(Ordering::Relaxed) && runs < 20_000 {
                let job = write_job(&mut ring, file.as_fd(), offset, &bytes).expect("a free slot");
                job.run().expect("written");
                ring.release_job(&job);
                runs += 1;
            }
        })
    };
    let a = runner(b'A', 0);
    let b = runner(b'B', far);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    a.join().unwrap();
    b.join().unwrap();
    let len = file.metadata().unwrap().len();
    let mut got = vec![0u8; len as usize];
    file.read_exact_at(&mut got, 0).unwrap();
    let misplaced = got
        .iter()
        .enumerate()
        .filter(|(at, byte)| {
            let at = *at as u64;
            let want = if at < piece as u64 {
                b'A'
            } else if at >= far && at < far + piece as u64 {
                b'B'
            } else {
                0
            };
            **byte != want
        })
        .count();
    assert_eq!(
        (len, misplaced),
        (far + piece as u64, 0),
        "bytes written at another job's offset"
    );
}

/// The precondition of the race above, with the real helper: while the helper holds (and
/// may be running) a write of a file, the loop runs the next write of the same file inline,
/// on the same open file, because `MAX_HELD` jobs are held (a burst of DELETEs of big files
/// queues one unlink each). A write job must never run inline while another write of its
/// file is held by the helper (or the inline path must not use the file position).
#[test]
fn the_loop_never_runs_a_write_inline_while_the_helper_holds_one_of_the_same_file() {
    let dir = TempDir::new("inline-write");
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(16);
    let mut disk = DiskHelper::new(
        Some(PathBuf::from(HELPER)),
        HelperTokens {
            socket: SOCKET,
            exit: EXIT,
        },
    );
    disk.start(poll.registry());
    // Ready: one fsync round trip.
    let me = fs::File::open("/proc/self/exe").unwrap();
    disk.submit(Some(0), Job::Fsync(OwnedFd::from(me)), poll.registry());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !disk.has_done() && Instant::now() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for event in events.iter() {
            if event.token() == SOCKET {
                disk.on_socket_event(poll.registry());
            }
        }
    }
    assert!(disk.next_done().is_some(), "the helper answers");
    let pid = disk.pid().expect("a helper");
    // Stopped, so that what it holds stays held (it would be running the first write).
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    assert!(
        retry(Duration::from_secs(5), || (process_state(pid) == Some('T'))
            .then_some(()))
        .is_some()
    );
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("upload"))
        .unwrap();
    let other = fs::File::create(dir.path().join("other")).unwrap();
    let piece = vec![1u8; SLOT_LEN];
    assert!(
        disk.submit_write(Some(1), file.as_fd(), 0, &piece, poll.registry())
            .is_some()
    );
    for _ in 1..MAX_HELD {
        let fd = other.try_clone().unwrap();
        disk.submit(Some(2), Job::Fdatasync(fd.into()), poll.registry());
    }
    let before = disk.stats().inline;
    // Past MAX_HELD the write is not taken (the caller pwrites it from its own buffer); it
    // must not be run inline as a job either way. (Since the fix, a write job never uses the
    // file position: `write_jobs_on_one_open_file_never_land_at_the_wrong_offset`.)
    let taken = disk.submit_write(
        Some(1),
        file.as_fd(),
        SLOT_LEN as u64,
        &piece,
        poll.registry(),
    );
    let inline = disk.stats().inline - before;
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    const { assert!(MAX_IN_FLIGHT >= 1) };
    assert!(
        taken.is_none(),
        "a write past MAX_HELD is left to the caller"
    );
    assert_eq!(
        inline, 0,
        "the second write ran inline as a job while the helper held the first"
    );
}

// === 3. ENOSPC in the helper's write: NO_SPACE, and the partial removed ===

#[test]
fn a_write_that_finds_no_space_answers_no_space_and_removes_the_partial() {
    let dir = TempDir::new("enospc");
    let mut h = ConnHarness::framed(Limits::default())
        .with_files(dir.path())
        .with_disk();
    let bytes = support::seeded_bytes(3, 600 << 10);
    let hash = *blake3::hash(&bytes).as_bytes();
    let (_, mut io) = new_conn(&mut h);
    io.push(&put_request(1, bytes.len() as u64, hash, false, "f"));
    io.push(&data(1, &bytes));
    io.push(&digest(1, hash));
    settle(&mut h, &mut io);
    let frames = io.take_frames();
    assert_eq!(kinds(&frames), [(FrameType::PutReady, 1)]);
    // The first piece finds the disk full; the others are written.
    let failed = h.disk().finish_next(Err(Errno::NOSPC)).unwrap();
    h.disk_done(&mut io, failed);
    settle(&mut h, &mut io);
    run_all(&mut h, &mut io);
    let frames = io.take_frames();
    assert_eq!(kinds(&frames), [(FrameType::Error, 1)], "{frames:?}");
    assert_eq!(error_code(&frames[0]), Some(ErrorCode::NoSpace));
    assert!(dir.names().is_empty(), "partial left: {:?}", dir.names());
    let _: Option<DiskDone> = None;
}

// === 4. A client that half-closes after its DIGEST still gets the server's DIGEST ===

#[test]
fn a_client_that_half_closes_after_its_digest_still_hears_the_digest() {
    let dir = TempDir::new("half-close");
    let mut h = ConnHarness::framed(Limits::default())
        .with_files(dir.path())
        .with_disk();
    let bytes = support::seeded_bytes(5, 300 << 10);
    let hash = *blake3::hash(&bytes).as_bytes();
    let (_, mut io) = new_conn(&mut h);
    io.push(&put_request(1, bytes.len() as u64, hash, false, "f"));
    io.push(&data(1, &bytes));
    io.push(&digest(1, hash));
    io.close();
    settle(&mut h, &mut io);
    run_all(&mut h, &mut io);
    let frames = io.take_frames();
    assert_eq!(
        kinds(&frames),
        [(FrameType::PutReady, 1), (FrameType::Digest, 1)],
        "{:?}",
        frames.iter().map(error_code).collect::<Vec<_>>()
    );
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), bytes);
}

// === 5. A discarded big partial's blocks are freed by the loop's close, not the helper ===

/// A big partial discarded while some of its writes are still with the helper (a hash
/// mismatch right behind the last DATA, a full disk) is renamed aside and its unlink queued
/// behind those writes. The helper answers the last write and goes straight on to the
/// unlink; the server still holds that write's descriptor (in its `Held`) until it reads the
/// answer. So the unlink frees nothing, and the loop's `close` of the job's descriptor is
/// the last one: the file's blocks are freed on the loop (0.65 s per GiB), the stall the
/// helper exists to take. Here: after the helper answered both, the server process still
/// holds a descriptor of the unlinked file.
#[test]
#[ignore = "open at the helper's level: the server itself no longer submits an unlink behind a write of the same file (Disk::discard waits for Upload::disk_idle, a_discarded_partial_is_unlinked_only_after_its_writes_are_answered)"]
fn after_the_helper_unlinks_a_file_the_server_holds_no_descriptor_of_it() {
    let dir = TempDir::new("last-close");
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(16);
    let mut disk = DiskHelper::new(
        Some(PathBuf::from(HELPER)),
        HelperTokens {
            socket: SOCKET,
            exit: EXIT,
        },
    );
    disk.start(poll.registry());
    let me = fs::File::open("/proc/self/exe").unwrap();
    disk.submit(Some(0), Job::Fsync(OwnedFd::from(me)), poll.registry());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !disk.has_done() && Instant::now() < deadline {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        for event in events.iter() {
            if event.token() == SOCKET {
                disk.on_socket_event(poll.registry());
            }
        }
    }
    assert!(disk.next_done().is_some(), "the helper answers");

    let name = ".monoreactor-trash-review";
    let path = dir.path().join(name);
    fs::write(&path, vec![9u8; 4 << 20]).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    // The partial's last write, then (discard) its unlink.
    let piece = vec![1u8; SLOT_LEN];
    disk.submit_write(Some(1), file.as_fd(), 0, &piece, poll.registry())
        .expect("a slot");
    drop(file); // the Upload is dropped by `discard`
    let dir_fd = OwnedFd::from(fs::File::open(dir.path()).unwrap());
    disk.submit(
        Some(1),
        Job::Unlink {
            dir: dir_fd,
            name: name.to_string(),
        },
        poll.registry(),
    );
    // The helper does both before the loop reads either answer.
    assert!(
        retry(Duration::from_secs(5), || (!path.exists()).then_some(())).is_some(),
        "the helper unlinked it"
    );
    std::thread::sleep(Duration::from_millis(100));
    let ours: Vec<String> = fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .filter(|target| target.contains(name))
        .collect();
    assert!(
        ours.is_empty(),
        "the unlinked file is still open in the server ({ours:?}): its blocks are freed by \
         the loop's close when it reads the write's answer"
    );
}

/// The connection-level half of the finding above: a mismatched upload is discarded (and the
/// unlink of its renamed-aside partial handed to the helper) while writes of that partial are
/// still with the helper, queued before the unlink — so the server still holds their
/// descriptors when the helper unlinks.
#[test]
fn a_discarded_partial_is_unlinked_only_after_its_writes_are_answered() {
    let dir = TempDir::new("discard-order");
    let mut h = ConnHarness::framed(Limits::default())
        .with_files(dir.path())
        .with_disk();
    let bytes = support::seeded_bytes(9, 3 << 20);
    let mut hash = *blake3::hash(&bytes).as_bytes();
    let (_, mut io) = new_conn(&mut h);
    io.push(&put_request(1, bytes.len() as u64, hash, false, "f"));
    io.push(&data(1, &bytes));
    hash[0] ^= 1;
    io.push(&digest(1, hash));
    settle(&mut h, &mut io);
    let mut turns = 0;
    loop {
        let pending: Vec<JobKind> = h.disk().pending().map(|(_, kind)| kind).collect();
        if let Some(at) = pending.iter().position(|kind| *kind == JobKind::Unlink) {
            assert!(
                !pending[..at].contains(&JobKind::Write),
                "the unlink was queued behind the partial's own writes: {pending:?}"
            );
            break;
        }
        let Some(done) = h.disk().run_next() else {
            panic!("no unlink was ever asked for");
        };
        h.disk_done(&mut io, done);
        settle(&mut h, &mut io);
        turns += 1;
        assert!(turns < 100);
    }
}

// === 6. An fsync unanswered at a helper's death is resent, and a second fsync vouches ===

/// Linux reports a writeback error once per open file description (errseq): if the dead
/// helper's `fsync` had seen EIO, the resent one, on the same open file, returns 0 — the
/// dirty pages were dropped, and the upload is confirmed with bytes that are not on the disk
/// ("fsyncgate"). The server cannot tell whether the dead helper ran it, so an `fsync` (or
/// `fdatasync`) left unanswered by a dead helper must not be reported Ok (fail the upload,
/// the client retries) — this test stands in for the EIO it cannot inject.
#[test]
fn an_fsync_left_unanswered_by_a_dead_helper_is_never_reported_ok() {
    let dir = TempDir::new("fsync-resend");
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(16);
    let mut disk = DiskHelper::new(
        Some(PathBuf::from(HELPER)),
        HelperTokens {
            socket: SOCKET,
            exit: EXIT,
        },
    );
    disk.start(poll.registry());
    let mut restart_at = None;
    let me = fs::File::open("/proc/self/exe").unwrap();
    disk.submit(Some(0), Job::Fsync(OwnedFd::from(me)), poll.registry());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !disk.has_done() && Instant::now() < deadline {
        turn(&mut poll, &mut events, &mut disk, &mut restart_at);
    }
    assert!(disk.next_done().is_some());
    let pid = disk.pid().unwrap();
    let file = fs::File::create(dir.path().join("data")).unwrap();
    file.write_all_at(&[5u8; 4096], 0).unwrap();
    disk.submit(Some(1), Job::Fsync(file.into()), poll.registry());
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !disk.has_done() && Instant::now() < deadline {
        turn(&mut poll, &mut events, &mut disk, &mut restart_at);
    }
    let (_, done) = disk.next_done().expect("answered");
    assert_eq!(done.kind, JobKind::Fsync);
    assert!(
        done.result.is_err(),
        "an fsync whose first run's outcome is unknown was reported {:?}",
        done.result
    );
}

fn turn(
    poll: &mut Poll,
    events: &mut Events,
    disk: &mut DiskHelper,
    restart_at: &mut Option<Instant>,
) {
    poll.poll(events, Some(Duration::from_millis(20))).unwrap();
    for event in events.iter() {
        let restart = if event.token() == SOCKET {
            disk.on_socket_event(poll.registry())
        } else {
            disk.on_exit_event(poll.registry())
        };
        if let Some(delay) = restart {
            *restart_at = Some(Instant::now() + delay);
        }
    }
    if restart_at.is_some_and(|at| at <= Instant::now()) {
        *restart_at = None;
        disk.restart(poll.registry());
    }
}

// === 7. A PUT without RESUME truncates a big partial on the loop ===

/// A client sends part of a big upload, goes away, and starts it over without RESUME (or
/// another client does). `begin_put` then `set_len(0)`s the partial on the loop, which frees
/// all of its blocks inside the call: the 0.65 s per GiB stall that `remove_partial` (rename
/// aside, unlink by the helper) and DELETE avoid. The old inode should be set aside for the
/// helper, and a fresh partial started. Here the test keeps the old inode open and finds it
/// emptied by the loop.
#[test]
#[ignore = "open (issue 12 review finding 5): a PUT without RESUME truncates a big partial on the loop"]
fn a_put_without_resume_never_truncates_a_big_partial_on_the_loop() {
    let dir = TempDir::new("truncate");
    let mut h = ConnHarness::framed(Limits::default())
        .with_files(dir.path())
        .with_disk();
    let bytes = support::seeded_bytes(11, 8 << 20);
    let hash = *blake3::hash(&bytes).as_bytes();
    let size = bytes.len() as u64;
    let (_, mut io) = new_conn(&mut h);
    io.push(&put_request(1, size, hash, false, "f"));
    io.push(&data(1, &bytes[..4 << 20]));
    settle(&mut h, &mut io);
    run_all(&mut h, &mut io);
    io.close();
    settle(&mut h, &mut io);
    h.with_context(|conn, cx| conn.release(cx));
    let names = dir.names();
    assert_eq!(names.len(), 1, "{names:?}");
    let old = fs::File::open(dir.path().join(&names[0])).unwrap();
    assert_eq!(old.metadata().unwrap().len(), 4 << 20);

    let (_, mut io) = new_conn(&mut h);
    io.push(&put_request(1, size, hash, false, "f"));
    settle(&mut h, &mut io);
    assert_eq!(kinds(&io.take_frames()), [(FrameType::PutReady, 1)]);
    assert_eq!(
        old.metadata().unwrap().len(),
        4 << 20,
        "the 4 MiB partial was truncated (its blocks freed) on the loop"
    );
}

// === 8. A write that fails after its upload was released leaves a hole that is resumed ===

/// The client goes away while its first piece is with the helper and the later ones are
/// written; the first then fails (ENOSPC, EIO). Its completion finds no upload (released),
/// so nothing records the hole: the partial is kept at its full length, and the resume is
/// offered everything as held — zeros where the failed piece was. The client uploads the
/// rest for nothing and gets HASH_MISMATCH at the end. A resume must never be offered bytes
/// that were not written (held at most where the failed piece starts), or the partial must go.
#[test]
#[ignore = "open (issue 12 review finding 6): a failed write of a released upload leaves a hole a resume is offered"]
fn a_resume_is_never_offered_a_piece_whose_write_failed() {
    let dir = TempDir::new("hole");
    let mut h = ConnHarness::framed(Limits::default())
        .with_files(dir.path())
        .with_disk();
    let bytes = support::seeded_bytes(13, 4 << 20);
    let hash = *blake3::hash(&bytes).as_bytes();
    let size = bytes.len() as u64;
    let (_, mut io) = new_conn(&mut h);
    io.push(&put_request(1, size, hash, false, "f"));
    io.push(&data(1, &bytes[..1 << 20]));
    settle(&mut h, &mut io);
    io.take_frames();
    io.close();
    settle(&mut h, &mut io);
    h.with_context(|conn, cx| conn.release(cx));
    // The helper: the first piece fails, the other three are written.
    let failed = h.disk().finish_next(Err(Errno::NOSPC)).unwrap();
    assert_eq!(failed.kind, JobKind::Write);
    while h.disk().run_next().is_some() {}

    let (_, mut io) = new_conn(&mut h);
    io.push(&put_request(1, size, hash, true, "f"));
    settle(&mut h, &mut io);
    let frames = io.take_frames();
    assert_eq!(kinds(&frames), [(FrameType::PutReady, 1)]);
    let ready = monoreactor::proto::files::PutReady::parse(&frames[0].payload).unwrap();
    assert_eq!(
        ready.held, 0,
        "offered {} bytes as held, a failed 256 KiB piece of zeros at offset 0 among them",
        ready.held
    );
}
