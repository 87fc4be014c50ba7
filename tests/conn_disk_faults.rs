//! A full or broken disk, met by a connection: a PUT whose write, `fsync` or rename fails
//! (`ENOSPC`, `EIO`) through a [`ScriptedDisk`] that fails the call on demand
//! ([`ScriptedDisk::fail_next`]), over a real directory. The client hears the failure as an
//! ERROR on the upload's stream with the right code (NO_SPACE, IO_FAILED), the connection goes
//! on, the server's place for the transfer is given back, and nothing is left visible: no
//! target (an existing one untouched), no partial, no trash — but for a verified upload whose
//! rename failed, whose resumable partial is kept, whole, for a resume that commits it.
//!
//! Each case runs with the blocking calls made at once (no disk helper: the write or sync
//! fails inside the call) and held until the test completes them (the disk helper's job
//! fails, and its completion comes later).

mod support;

use monoreactor::Limits;
use monoreactor::client::OwnedFrame;
use monoreactor::proto::files::{Hash, PutFlags, PutReady};
use monoreactor::proto::{
    ErrorCode, ErrorMessage, Flags, Frame, FrameType, Hello, HelloOk, SessionFlags,
};
use monoreactor::testkit::{ConnHarness, DiskCall, MemoryIo};
use monoreactor::{State, Verdict};
use rustix::io::Errno;

use support::TempDir;
use support::files::{blake3_of, data_frame, digest_frame, put_frame};

/// The failures a disk gives, and what the client must hear of each.
const FAILURES: [(Errno, ErrorCode); 2] = [
    (Errno::NOSPC, ErrorCode::NoSpace),
    (Errno::IO, ErrorCode::IoFailed),
];

// === Scaffolding ===

/// `len` bytes that differ from position to position and from seed to seed.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1] ^ seed)
        .collect()
}

/// One readiness event, then the turns the connection asks for (and the writable events a
/// peer reading everything would bring).
fn run(h: &mut ConnHarness, io: &mut MemoryIo) -> Verdict {
    let mut verdict = h.event(io, true, true);
    for _ in 0..10_000 {
        verdict = match verdict {
            Verdict::Again => h.drive(io),
            Verdict::Wait if h.conn.pending_output() > 0 => h.event(io, false, true),
            verdict => return verdict,
        };
    }
    panic!("the connection never settles");
}

/// Completes every held disk job, in order, each completion reaching the connection as the
/// reactor delivers it; with the calls made at once there are none.
fn complete_jobs(h: &mut ConnHarness, io: &mut MemoryIo) {
    while let Some(done) = h.disk().run_next() {
        h.disk_done(io, done);
        run(h, io);
    }
}

/// The client sends `bytes`; everything the connection then does, the disk's jobs completed,
/// until it waits.
fn send(h: &mut ConnHarness, io: &mut MemoryIo, bytes: &[u8]) -> Vec<OwnedFrame> {
    io.push(bytes);
    run(h, io);
    complete_jobs(h, io);
    io.take_frames()
}

/// A connection serving `dir` after a HELLO (the server has no token), its disk's blocking
/// calls made at once or, with `held`, held until completed.
fn connect(dir: &TempDir, held: bool) -> (ConnHarness, MemoryIo) {
    let mut h = ConnHarness::framed(Limits::default()).with_files(dir.path());
    if held {
        h = h.with_disk();
    }
    let mut io = MemoryIo::new();
    let mut hello = Vec::new();
    Hello::with_credentials(b"").encode(&mut hello);
    let frames = send(&mut h, &mut io, &hello);
    assert_eq!(frames.len(), 1);
    let ok = HelloOk::parse(&frames[0].payload).unwrap();
    assert!(ok.flags.contains(SessionFlags::FILES));
    (h, io)
}

/// A whole upload of `file` to `path` on `stream`: PUT (with its hash declared, which makes
/// it resumable, or not), its DATA, its DIGEST.
fn upload(stream: u32, path: &str, file: &[u8], declared: bool) -> Vec<u8> {
    let hash = declared.then(|| blake3_of(file));
    let mut wire = put_frame(
        stream,
        path.as_bytes(),
        file.len() as u64,
        PutFlags::NONE,
        hash,
    );
    for chunk in file.chunks(100 << 10) {
        wire.extend(data_frame(stream, chunk));
    }
    wire.extend(digest_frame(stream, &blake3_of(file)));
    wire
}

fn kinds(frames: &[OwnedFrame]) -> Vec<(FrameType, u32)> {
    frames
        .iter()
        .map(|frame| (frame.header.frame_type, frame.header.stream))
        .collect()
}

/// The code and text of an ERROR frame that ends its stream.
#[track_caller]
fn error_of(frame: &OwnedFrame) -> (ErrorCode, String) {
    assert_eq!(frame.header.frame_type, FrameType::Error, "{frame:?}");
    assert!(frame.header.flags.contains(Flags::END_STREAM));
    let message = ErrorMessage::parse(&frame.payload).expect("an ERROR payload");
    (message.code, message.text.to_string())
}

#[track_caller]
fn digest_of(frame: &OwnedFrame) -> Hash {
    assert_eq!(frame.header.frame_type, FrameType::Digest, "{frame:?}");
    frame.payload.as_slice().try_into().unwrap()
}

/// The upload on `stream` got PUT_READY, then an ERROR with `code` naming `path`; returns
/// the ERROR's text.
#[track_caller]
fn failed_with(frames: &[OwnedFrame], stream: u32, code: ErrorCode, path: &str) -> String {
    assert_eq!(
        kinds(frames),
        [(FrameType::PutReady, stream), (FrameType::Error, stream)],
        "{frames:?}"
    );
    let (got, text) = error_of(&frames[1]);
    assert_eq!(got, code, "{text}");
    assert!(text.contains(path), "the ERROR names the file: {text}");
    text
}

/// The connection goes on, with no transfer left running on the server.
#[track_caller]
fn assert_still_serving(h: &mut ConnHarness, io: &mut MemoryIo, stream: u32) {
    assert_eq!(h.conn.state(), State::Open);
    assert_eq!(h.conn.open_streams(), 0, "the upload's stream is over");
    assert_eq!(
        h.disk.as_ref().expect("with_files").transfers(),
        0,
        "its place among the server's transfers is given back"
    );
    let echo = Frame::new(FrameType::EchoRequest, Flags::END_STREAM, stream, b"ping").to_vec();
    let frames = send(h, io, &echo);
    assert_eq!(kinds(&frames), [(FrameType::EchoReply, stream)]);
}

// === A write fails ===

#[test]
fn a_write_that_fails_ends_the_upload_with_its_error_and_leaves_nothing() {
    for held in [false, true] {
        for (errno, code) in FAILURES {
            for declared in [false, true] {
                let case = format!("held {held}, {errno:?}, declared {declared}");
                let dir = TempDir::new("write-fails");
                std::fs::write(dir.join("upload.bin"), b"the old file").unwrap();
                let (mut h, mut io) = connect(&dir, held);
                h.disk().fail_next(DiskCall::Write, errno);
                let frames = send(
                    &mut h,
                    &mut io,
                    &upload(1, "upload.bin", &content(300 << 10, 1), declared),
                );
                let text = failed_with(&frames, 1, code, "upload.bin");
                assert_eq!(
                    std::fs::read(dir.join("upload.bin")).unwrap(),
                    b"the old file",
                    "{case}: the target is untouched ({text})"
                );
                assert_eq!(
                    dir.names(),
                    ["upload.bin"],
                    "{case}: no partial, no trash left"
                );
                assert_still_serving(&mut h, &mut io, 3);
            }
        }
    }
}

// === The data's fsync fails ===

#[test]
fn an_fsync_that_fails_ends_the_upload_with_its_error_and_leaves_nothing() {
    for held in [false, true] {
        for (errno, code) in FAILURES {
            for declared in [false, true] {
                let case = format!("held {held}, {errno:?}, declared {declared}");
                let dir = TempDir::new("fsync-fails");
                let (mut h, mut io) = connect(&dir, held);
                h.disk().fail_next(DiskCall::Fsync, errno);
                let frames = send(
                    &mut h,
                    &mut io,
                    &upload(1, "upload.bin", &content(5000, 2), declared),
                );
                failed_with(&frames, 1, code, "upload.bin");
                assert!(
                    dir.names().is_empty(),
                    "{case}: nothing stored, the partial gone: {:?}",
                    dir.names()
                );
                assert_still_serving(&mut h, &mut io, 3);
            }
        }
    }
}

/// The directory's `fsync` comes after the rename: the file is in place, but the DIGEST —
/// which says it is durable — is never sent; the client hears the error instead.
#[test]
fn a_directory_fsync_that_fails_is_heard_instead_of_the_digest() {
    for (errno, code) in FAILURES {
        let dir = TempDir::new("dir-fsync-fails");
        let (mut h, mut io) = connect(&dir, true);
        let file = content(5000, 3);
        io.push(&upload(1, "upload.bin", &file, false));
        run(&mut h, &mut io);
        // The write; then the data's fsync is asked for, so the next fsync asked for is the
        // directory's, after the rename.
        let done = h.disk().run_next().expect("the write");
        h.disk_done(&mut io, done);
        run(&mut h, &mut io);
        h.disk().fail_next(DiskCall::Fsync, errno);
        complete_jobs(&mut h, &mut io);
        let frames = io.take_frames();
        let text = failed_with(&frames, 1, code, "the upload's directory");
        assert_eq!(
            std::fs::read(dir.join("upload.bin")).unwrap(),
            file,
            "renamed into place before the directory's sync ({text})"
        );
        assert_eq!(dir.names(), ["upload.bin"]);
        assert_still_serving(&mut h, &mut io, 3);
    }
}

// === The rename fails ===

#[test]
fn a_rename_that_fails_ends_the_upload_with_its_error_and_leaves_the_target_untouched() {
    for held in [false, true] {
        for (errno, code) in FAILURES {
            let case = format!("held {held}, {errno:?}");
            let dir = TempDir::new("rename-fails");
            std::fs::write(dir.join("upload.bin"), b"the old file").unwrap();
            let (mut h, mut io) = connect(&dir, held);
            h.disk().fail_next(DiskCall::Rename, errno);
            let frames = send(
                &mut h,
                &mut io,
                &upload(1, "upload.bin", &content(5000, 4), false),
            );
            failed_with(&frames, 1, code, "upload.bin");
            assert_eq!(
                std::fs::read(dir.join("upload.bin")).unwrap(),
                b"the old file",
                "{case}: the target is untouched"
            );
            assert_eq!(
                dir.names(),
                ["upload.bin"],
                "{case}: the unnamed upload is gone"
            );
            assert_still_serving(&mut h, &mut io, 3);
        }
    }
}

/// A declared upload was verified and made durable before its rename failed: its partial is
/// kept (as after a dropped connection), and a resume finds every byte held and commits.
#[test]
fn a_verified_upload_whose_rename_failed_is_kept_whole_for_a_resume() {
    let dir = TempDir::new("rename-resume");
    let file = content(5000, 5);
    let hash = blake3_of(&file);
    let (mut h, mut io) = connect(&dir, true);
    h.disk().fail_next(DiskCall::Rename, Errno::IO);
    let frames = send(&mut h, &mut io, &upload(1, "upload.bin", &file, true));
    failed_with(&frames, 1, ErrorCode::IoFailed, "upload.bin");
    assert!(
        !dir.join("upload.bin").exists(),
        "nothing renamed into place"
    );
    let partials = dir.partials();
    assert_eq!(partials.len(), 1, "{:?}", dir.names());
    assert!(std::fs::read(dir.join(&partials[0])).unwrap() == file);

    let resume = put_frame(
        3,
        b"upload.bin",
        file.len() as u64,
        PutFlags::RESUME,
        Some(hash),
    );
    let frames = send(&mut h, &mut io, &resume);
    assert_eq!(kinds(&frames), [(FrameType::PutReady, 3)]);
    let ready = PutReady::parse(&frames[0].payload).unwrap();
    assert_eq!(ready.held, file.len() as u64, "every byte is held");
    let frames = send(&mut h, &mut io, &digest_frame(3, &hash));
    assert_eq!(digest_of(&frames[0]), hash);
    assert!(std::fs::read(dir.join("upload.bin")).unwrap() == file);
    assert_eq!(dir.names(), ["upload.bin"], "the partial became the file");
}
