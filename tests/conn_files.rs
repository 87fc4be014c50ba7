//! The file service on the connection state machine: GET, PUT and LIST driven through
//! [`ConnHarness::with_files`] against a real temporary directory, with in-memory I/O — no
//! socket, no reactor. Covers how a request's bytes may be split on the wire, backpressure and
//! the per-turn disk budget, the stream rules, PUT's per-stream errors, resumable uploads and
//! paged listings.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;

use monoreactor::Limits;
use monoreactor::client::OwnedFrame;
use monoreactor::proto::files::{DATA_FRAME_LEN, LIST_PAGE_LEN};
use monoreactor::proto::files::{
    Digest, Entries, FileInfo, FileKind, GetRequest, Hash, PutFlags, PutReady, PutRequest,
};
use monoreactor::proto::{
    ErrorCode, ErrorMessage, Flags, Frame, FrameType, Hello, HelloOk, SessionFlags,
};
use monoreactor::testkit::{ConnHarness, MemoryIo};
use monoreactor::{Access, Token};
use monoreactor::{State, Verdict};
use support::TempDir;

const TOKEN: &[u8] = b"0123456789abcdef-token";

// === Scaffolding ===

/// `len` bytes that differ from position to position and from seed to seed.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[1] ^ seed)
        .collect()
}

fn blake3(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

// === Frames a client sends ===

fn hello(credentials: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::with_credentials(credentials).encode(&mut wire);
    wire
}

fn get(stream: u32, offset: u64, path: &str) -> Vec<u8> {
    let request = GetRequest { offset, path };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    Frame::new(FrameType::Get, Flags::NONE, stream, &payload).to_vec()
}

fn put(stream: u32, size: u64, flags: PutFlags, hash: Option<Hash>, path: &str) -> Vec<u8> {
    let request = PutRequest {
        size,
        flags,
        hash,
        attrs: None,
        path,
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    Frame::new(FrameType::Put, Flags::NONE, stream, &payload).to_vec()
}

/// A request whose payload is just a path: LIST, STAT, DELETE, MKDIR.
fn path_request(frame_type: FrameType, stream: u32, path: &str) -> Vec<u8> {
    Frame::new(frame_type, Flags::NONE, stream, path.as_bytes()).to_vec()
}

fn data(stream: u32, bytes: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::Data, Flags::NONE, stream, bytes).to_vec()
}

fn digest(stream: u32, hash: &Hash) -> Vec<u8> {
    Frame::new(FrameType::Digest, Flags::END_STREAM, stream, hash).to_vec()
}

fn echo(stream: u32, payload: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::EchoRequest, Flags::END_STREAM, stream, payload).to_vec()
}

fn client_error(stream: u32) -> Vec<u8> {
    let mut wire = Vec::new();
    ErrorMessage::new(ErrorCode::Other(1000), "not interested any more").encode(stream, &mut wire);
    wire
}

// === What the server sends ===

fn kinds(frames: &[OwnedFrame]) -> Vec<(FrameType, u32)> {
    frames
        .iter()
        .map(|frame| (frame.header.frame_type, frame.header.stream))
        .collect()
}

/// The frames of each stream, in order. Streams are independent: a reply may overtake one
/// on another stream (a DIGEST waits for the disk's syncs, an echo does not).
fn by_stream(frames: &[OwnedFrame]) -> BTreeMap<u32, Vec<OwnedFrame>> {
    let mut streams: BTreeMap<u32, Vec<OwnedFrame>> = BTreeMap::new();
    for frame in frames {
        streams
            .entry(frame.header.stream)
            .or_default()
            .push(frame.clone());
    }
    streams
}

#[track_caller]
fn error_of(frame: &OwnedFrame) -> (u32, ErrorCode) {
    assert_eq!(
        frame.header.frame_type,
        FrameType::Error,
        "expected ERROR, got {frame:?}"
    );
    assert!(frame.header.flags.contains(Flags::END_STREAM));
    let message = ErrorMessage::parse(&frame.payload).expect("ERROR payload");
    (frame.header.stream, message.code)
}

#[track_caller]
fn ready_of(frame: &OwnedFrame) -> PutReady {
    assert_eq!(frame.header.frame_type, FrameType::PutReady, "{frame:?}");
    assert!(!frame.header.flags.contains(Flags::END_STREAM));
    PutReady::parse(&frame.payload).unwrap()
}

#[track_caller]
fn digest_of(frame: &OwnedFrame) -> Hash {
    assert_eq!(frame.header.frame_type, FrameType::Digest, "{frame:?}");
    assert!(
        frame.header.flags.contains(Flags::END_STREAM),
        "DIGEST ends its stream"
    );
    Digest::parse(&frame.payload).unwrap().hash
}

/// One readiness event (both ways), then the turns the connection asks for.
///
/// While output is pending and the peer has room left, the peer is reading: the poll reports the
/// socket writable again. (A file range's DATA goes out through `Transport::send_file`, whose
/// default — used by `MemoryIo` — sends at most 16 KiB per call; the outbox takes that for a
/// full socket and waits for the next writable event. See
/// `one_drive_with_room_to_spare_sends_a_whole_queued_file_range`.)
fn run(h: &mut ConnHarness, io: &mut MemoryIo) -> Verdict {
    let mut verdict = h.event(io, true, true);
    for _ in 0..100_000 {
        verdict = match verdict {
            Verdict::Again => h.drive(io),
            Verdict::Wait if h.conn.pending_output() > 0 && io.room != Some(0) => {
                h.event(io, false, true)
            }
            verdict => return verdict,
        };
    }
    panic!("the connection never settles");
}

/// The client sends `bytes`; everything the connection then does, until it waits.
fn send(h: &mut ConnHarness, io: &mut MemoryIo, bytes: &[u8]) -> Vec<OwnedFrame> {
    io.push(bytes);
    run(h, io);
    io.take_frames()
}

/// A connection serving `root`, after a HELLO that authenticates it (the server has no token).
fn connect(limits: Limits, root: &Path) -> (ConnHarness, MemoryIo) {
    let mut h = ConnHarness::framed(limits).with_files(root);
    let mut io = MemoryIo::new();
    let frames = send(&mut h, &mut io, &hello(b""));
    assert_eq!(kinds(&frames), [(FrameType::HelloOk, 0)]);
    let ok = HelloOk::parse(&frames[0].payload).unwrap();
    assert!(
        ok.flags
            .contains(SessionFlags::AUTHENTICATED.with(SessionFlags::FILES)),
        "the file service is announced: {:?}",
        ok.flags
    );
    (h, io)
}

/// Transfers the server counts as running (its `--max-transfers` places in use).
fn transfers_running(h: &ConnHarness) -> usize {
    h.disk.as_ref().expect("with_files").transfers()
}

/// The connection goes on: an echo on `stream` comes back.
#[track_caller]
fn assert_still_serving(h: &mut ConnHarness, io: &mut MemoryIo, stream: u32) {
    let frames = send(h, io, &echo(stream, b"still there?"));
    assert_eq!(kinds(&frames), [(FrameType::EchoReply, stream)]);
    assert_eq!(h.conn.state(), State::Open);
}

/// FILE_INFO, the DATA payloads concatenated (each checked to be at most a DATA frame), and the
/// DIGEST of a GET's frames on `stream`.
#[track_caller]
fn split_get(frames: &[OwnedFrame], stream: u32) -> (FileInfo, Vec<u8>, Hash) {
    assert!(frames.len() >= 2, "{:?}", kinds(frames));
    assert_eq!(kinds(&frames[..1]), [(FrameType::FileInfo, stream)]);
    assert!(
        !frames[0].header.flags.contains(Flags::END_STREAM),
        "DATA and DIGEST follow FILE_INFO"
    );
    let info = FileInfo::parse(&frames[0].payload).unwrap();
    let (last, middle) = frames[1..].split_last().unwrap();
    let mut bytes = Vec::new();
    for frame in middle {
        assert_eq!(
            (frame.header.frame_type, frame.header.stream),
            (FrameType::Data, stream)
        );
        assert!(!frame.header.flags.contains(Flags::END_STREAM));
        assert!(!frame.payload.is_empty(), "no empty DATA frame");
        assert!(frame.payload.len() as u64 <= DATA_FRAME_LEN);
        bytes.extend_from_slice(&frame.payload);
    }
    assert_eq!(last.header.stream, stream);
    (info, bytes, digest_of(last))
}

// === PUT: every way the bytes can be cut ===

/// HELLO, PUT of `file` (300 bytes in three DATA frames), its DIGEST, then an echo.
fn put_session(file: &[u8], path: &str) -> Vec<u8> {
    let mut wire = hello(b"");
    wire.extend(put(1, file.len() as u64, PutFlags::NONE, None, path));
    for chunk in file.chunks(100) {
        wire.extend(data(1, chunk));
    }
    wire.extend(digest(1, &blake3(file)));
    wire.extend(echo(2, b"after"));
    wire
}

/// What the server must answer to [`put_session`], however its bytes arrive.
fn put_session_replies(file: &[u8]) -> Vec<OwnedFrame> {
    let mut wire = Vec::new();
    HelloOk {
        version: monoreactor::proto::PROTOCOL_VERSION,
        max_payload_len: Limits::default().max_frame_len,
        flags: SessionFlags::AUTHENTICATED.with(SessionFlags::FILES),
    }
    .encode(&mut wire);
    let mut ready = [0; PutReady::PAYLOAD_LEN];
    PutReady {
        upload_id: 0,
        held: 0,
    }
    .emit(&mut ready);
    wire.extend(Frame::new(FrameType::PutReady, Flags::NONE, 1, &ready).to_vec());
    wire.extend(digest(1, &blake3(file)));
    wire.extend(Frame::new(FrameType::EchoReply, Flags::END_STREAM, 2, b"after").to_vec());
    // Written as the connection would, so that `take_frames` decodes them.
    let mut io = MemoryIo::new();
    std::io::Write::write_all(&mut io, &wire).unwrap();
    io.take_frames()
}

/// Checks one delivery of a PUT session: the replies and the stored file; removes the file.
#[track_caller]
fn check_put_session(
    dir: &TempDir,
    h: &mut ConnHarness,
    io: &mut MemoryIo,
    file: &[u8],
    expected: &[OwnedFrame],
    how: &str,
) {
    let frames = io.take_frames();
    let mut got = kinds(&frames);
    let mut want = kinds(expected);
    got.sort_by_key(|&(_, stream)| stream);
    want.sort_by_key(|&(_, stream)| stream);
    assert_eq!(got, want, "{how}: the server's replies, stream by stream");
    assert_eq!(
        by_stream(&frames),
        by_stream(expected),
        "{how}: the server's replies"
    );
    assert_eq!(h.conn.state(), State::Open, "{how}");
    assert_eq!(h.conn.open_streams(), 0, "{how}");
    assert_eq!(
        fs::read(dir.join("up.bin")).unwrap(),
        file,
        "{how}: the stored file"
    );
    assert_eq!(dir.names(), ["up.bin"], "{how}: no temporary left behind");
    fs::remove_file(dir.join("up.bin")).unwrap();
}

#[test]
fn a_put_split_in_two_at_every_byte_stores_the_same_file_and_gets_the_same_replies() {
    let dir = TempDir::new("split");
    let file = content(300, 1);
    let wire = put_session(&file, "up.bin");
    let expected = put_session_replies(&file);
    for split in 0..=wire.len() {
        let mut h = ConnHarness::framed(Limits::default()).with_files(dir.path());
        let mut io = MemoryIo::new();
        io.push(&wire[..split]);
        run(&mut h, &mut io);
        io.push(&wire[split..]);
        run(&mut h, &mut io);
        check_put_session(
            &dir,
            &mut h,
            &mut io,
            &file,
            &expected,
            &format!("split at {split} of {}", wire.len()),
        );
    }
}

#[test]
fn a_put_delivered_one_byte_at_a_time_stores_the_same_file_and_gets_the_same_replies() {
    let dir = TempDir::new("bytes");
    let file = content(300, 2);
    let wire = put_session(&file, "up.bin");
    let expected = put_session_replies(&file);
    let mut h = ConnHarness::framed(Limits::default()).with_files(dir.path());
    let mut io = MemoryIo::new();
    for byte in &wire {
        io.push(std::slice::from_ref(byte));
        run(&mut h, &mut io);
    }
    check_put_session(
        &dir,
        &mut h,
        &mut io,
        &file,
        &expected,
        "one byte at a time",
    );
}

#[test]
fn put_ready_comes_first_even_when_the_whole_upload_arrives_in_one_read() {
    // The client may send DATA before PUT_READY arrives (not resuming): the server still
    // answers PUT with PUT_READY, before the DIGEST or the ERROR that ends the stream.
    let dir = TempDir::new("pipelined");
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    let mut wire = put(1, 3, PutFlags::NONE, None, "ok");
    wire.extend(data(1, b"abc"));
    wire.extend(digest(1, &blake3(b"abc")));
    wire.extend(put(3, 3, PutFlags::NONE, None, "bad"));
    wire.extend(data(3, b"abc"));
    wire.extend(digest(3, &blake3(b"abd")));
    let frames = send(&mut h, &mut io, &wire);
    let mut got = kinds(&frames);
    got.sort_by_key(|&(_, stream)| stream);
    assert_eq!(
        got,
        [
            (FrameType::PutReady, 1),
            (FrameType::Digest, 1),
            (FrameType::PutReady, 3),
            (FrameType::Error, 3)
        ],
        "stream by stream"
    );
    assert_eq!(fs::read(dir.join("ok")).unwrap(), b"abc");
    assert_eq!(dir.names(), ["ok"]);
}

// === GET ===

#[test]
fn get_sends_info_then_the_bytes_from_the_offset_then_the_whole_files_digest() {
    let dir = TempDir::new("get");
    let file = content(3 * (1 << 20) + 123, 3);
    fs::write(dir.join("big.bin"), &file).unwrap();
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    for (stream, offset) in [(1, 0), (3, 1000), (5, (1 << 20) + 1)] {
        let frames = send(&mut h, &mut io, &get(stream, offset, "big.bin"));
        let (info, bytes, hash) = split_get(&frames, stream);
        assert_eq!(info.size, file.len() as u64, "the whole file's size");
        assert_eq!(info.kind, FileKind::File);
        if let Some(known) = info.hash {
            assert_eq!(known, blake3(&file));
        }
        assert!(
            bytes == file[offset as usize..],
            "from offset {offset}: {} bytes",
            bytes.len()
        );
        assert_eq!(
            hash,
            blake3(&file),
            "the whole file's hash, not the range's"
        );
    }
    assert_eq!(h.conn.open_streams(), 0);

    // Offset at the end: nothing to send but the digest.
    let frames = send(&mut h, &mut io, &get(7, file.len() as u64, "big.bin"));
    assert_eq!(
        kinds(&frames),
        [(FrameType::FileInfo, 7), (FrameType::Digest, 7)]
    );
    assert_eq!(digest_of(&frames[1]), blake3(&file));

    // An empty file.
    fs::write(dir.join("empty"), b"").unwrap();
    let frames = send(&mut h, &mut io, &get(9, 0, "empty"));
    let (info, bytes, hash) = split_get(&frames, 9);
    assert_eq!((info.size, bytes.len()), (0, 0));
    assert_eq!(hash, blake3(b""));

    // Errors end only their stream.
    fs::create_dir(dir.join("sub")).unwrap();
    let mut wire = get(11, file.len() as u64 + 1, "big.bin");
    wire.extend(get(13, 0, "missing"));
    wire.extend(get(15, 0, "sub"));
    wire.extend(get(17, 0, "../escape"));
    let frames = send(&mut h, &mut io, &wire);
    let errors: Vec<_> = frames.iter().map(error_of).collect();
    assert_eq!(
        errors,
        [
            (11, ErrorCode::BadOffset),
            (13, ErrorCode::NotFound),
            (15, ErrorCode::IsDirectory),
            (17, ErrorCode::BadRequest)
        ]
    );
    assert_eq!(h.conn.open_streams(), 0);
    assert_eq!(
        transfers_running(&h),
        0,
        "every place in the limit given back"
    );
    assert_still_serving(&mut h, &mut io, 19);
}

#[test]
fn a_get_to_a_slow_reader_is_produced_only_as_the_reader_drains_it() {
    let dir = TempDir::new("slow");
    let file = content(1 << 20, 4);
    fs::write(dir.join("f"), &file).unwrap();
    let limits = Limits {
        output_high_water: 32 << 10,
        output_low_water: 8 << 10,
        disk_budget: 16 << 10,
        ..Limits::default()
    };
    // What may be queued at once: up to the high-water mark, plus the frame that crossed it.
    let bound = limits.output_high_water + limits.disk_budget + 2 * 64;
    let (mut h, mut io) = connect(limits, dir.path());

    // The client reads nothing: the outbox fills to the high-water mark and stops there.
    io.room = Some(0);
    io.push(&get(1, 0, "f"));
    run(&mut h, &mut io);
    let held = h.conn.pending_output();
    assert!(
        (h.limits.output_high_water..=bound).contains(&held),
        "{held} bytes queued"
    );
    for _ in 0..20 {
        let verdict = h.drive(&mut io);
        assert_ne!(verdict, Verdict::Close);
        assert_eq!(h.conn.pending_output(), held, "nothing more is produced");
    }
    assert_eq!(h.conn.open_streams(), 1, "the GET waits, it is not dropped");

    // The client reads 10,000 bytes at a time.
    let mut written = 0;
    let mut steps = 0;
    while h.conn.open_streams() > 0 || h.conn.pending_output() > 0 {
        steps += 1;
        assert!(steps < 10_000, "the transfer does not finish");
        io.room = Some(10_000);
        let verdict = match h.event(&mut io, false, true) {
            Verdict::Again => h.settle(&mut io),
            verdict => verdict,
        };
        assert_eq!(verdict, Verdict::Wait);
        written += 10_000 - io.room.unwrap();
        assert!(
            h.conn.pending_output() <= bound,
            "step {steps}: {} bytes queued",
            h.conn.pending_output()
        );
    }
    assert!(steps > 100, "{steps} steps for {written} bytes");
    let frames = io.take_frames();
    let (_, bytes, hash) = split_get(&frames, 1);
    assert!(bytes == file, "{} of {} bytes", bytes.len(), file.len());
    assert_eq!(hash, blake3(&file));
    let expected: usize = frames.iter().map(|f| 12 + f.payload.len()).sum();
    assert_eq!(written, expected, "every byte written was a frame's");
    assert_eq!(h.conn.state(), State::Open);
}

#[test]
fn a_big_get_takes_several_turns_within_the_disk_budget() {
    let dir = TempDir::new("budget");
    let file = content(1 << 20, 5);
    fs::write(dir.join("f"), &file).unwrap();
    let limits = Limits {
        disk_budget: 64 << 10,
        ..Limits::default()
    };
    let (mut h, mut io) = connect(limits, dir.path());
    // The peer reads everything, and the poll says so every turn: only the budget paces it.
    const ROOM: usize = 1 << 40;
    io.room = Some(ROOM);
    io.push(&get(1, 0, "f"));
    let mut verdict = h.event(&mut io, true, true);
    let mut turns = 1;
    let mut agains = 0;
    let mut produced_before = 0;
    loop {
        // Bytes the turn produced: written to the peer or still queued.
        let produced = ROOM - io.room.unwrap() + h.conn.pending_output();
        let headers = 62 + 12 + 44; // FILE_INFO, one DATA header, DIGEST
        assert!(
            produced - produced_before <= h.limits.disk_budget + headers,
            "turn {turns}: {} bytes",
            produced - produced_before
        );
        produced_before = produced;
        match verdict {
            Verdict::Again => agains += 1,
            Verdict::Wait if h.conn.open_streams() == 0 && h.conn.pending_output() == 0 => break,
            Verdict::Wait => {}
            Verdict::Close => panic!("closed"),
        }
        verdict = h.event(&mut io, false, true);
        turns += 1;
        assert!(turns < 1000);
    }
    // Each byte is both queued and hashed within the budget: at least 2 MiB of disk work.
    let minimum = 2 * (1 << 20) / h.limits.disk_budget;
    assert!(
        turns >= minimum && agains >= minimum / 2,
        "{turns} turns ({agains} said Again) for a 1 MiB file with a 64 KiB budget"
    );
    let (_, bytes, hash) = split_get(&io.take_frames(), 1);
    assert!(bytes == file);
    assert_eq!(hash, blake3(&file));
}

#[test]
fn one_drive_with_room_to_spare_sends_a_whole_queued_file_range() {
    // The peer has unlimited room: one readiness event and the turns the connection asks for
    // must send the whole GET, as they send any bytes. (Fails while `Transport::send_file`'s
    // default sends 16 KiB per call and the outbox reads that as a full socket.)
    let dir = TempDir::new("sendfile");
    let file = content(100 << 10, 13);
    fs::write(dir.join("f"), &file).unwrap();
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    io.push(&get(1, 0, "f"));
    let verdict = match h.event(&mut io, true, true) {
        Verdict::Again => h.settle(&mut io),
        verdict => verdict,
    };
    assert_eq!(verdict, Verdict::Wait);
    assert_eq!(
        h.conn.pending_output(),
        0,
        "the socket took every byte it was offered, yet output waits for another writable event"
    );
    let (_, bytes, hash) = split_get(&io.take_frames(), 1);
    assert!(bytes == file);
    assert_eq!(hash, blake3(&file));
}

// === Stream rules ===

#[test]
fn a_file_request_on_stream_0_is_fatal() {
    let dir = TempDir::new("stream0");
    fs::write(dir.join("f"), b"x").unwrap();
    for request in [
        get(0, 0, "f"),
        put(0, 1, PutFlags::NONE, None, "g"),
        path_request(FrameType::List, 0, ""),
        path_request(FrameType::Stat, 0, "f"),
    ] {
        let (mut h, mut io) = connect(Limits::default(), dir.path());
        let frames = send(&mut h, &mut io, &request);
        assert_eq!(frames.len(), 1, "{:?}", kinds(&frames));
        assert_eq!(error_of(&frames[0]), (0, ErrorCode::UnexpectedFrame));
        assert_eq!(h.conn.state(), State::Closing);
        assert!(io.write_shut);
    }
    assert_eq!(dir.names(), ["f"]);
}

#[test]
fn a_new_request_on_a_stream_with_a_transfer_running_is_fatal() {
    let dir = TempDir::new("inuse");
    fs::write(dir.join("f"), b"x").unwrap();
    for request in [
        get(1, 0, "f"),
        put(1, 1, PutFlags::NONE, None, "g"),
        path_request(FrameType::Stat, 1, "f"),
        echo(1, b"x"),
    ] {
        let (mut h, mut io) = connect(Limits::default(), dir.path());
        let frames = send(&mut h, &mut io, &put(1, 10, PutFlags::NONE, None, "up"));
        assert_eq!(
            ready_of(&frames[0]),
            PutReady {
                upload_id: 0,
                held: 0
            }
        );
        let frames = send(&mut h, &mut io, &request);
        assert_eq!(frames.len(), 1, "{:?}", kinds(&frames));
        assert_eq!(error_of(&frames[0]), (0, ErrorCode::UnexpectedFrame));
        assert_eq!(h.conn.state(), State::Closing);
    }
    assert_eq!(dir.names(), ["f"], "the unfinished uploads left nothing");
}

#[test]
fn data_and_digest_for_a_stream_without_an_upload_are_ignored() {
    let dir = TempDir::new("stray");
    let file = content(5000, 6);
    fs::write(dir.join("f"), &file).unwrap();
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    let mut wire = data(3, b"nobody asked");
    wire.extend(digest(3, &[0; 32]));
    wire.extend(Frame::new(FrameType::Data, Flags::NONE, 7, b"").to_vec());
    let frames = send(&mut h, &mut io, &wire);
    assert!(frames.is_empty(), "{:?}", kinds(&frames));
    assert_still_serving(&mut h, &mut io, 5);

    // On a GET's stream too: DATA is not the client's to send there.
    let limits = Limits {
        disk_budget: 1024,
        ..Limits::default()
    };
    let (mut h, mut io) = connect(limits, dir.path());
    io.push(&get(1, 0, "f"));
    assert_eq!(h.event(&mut io, true, true), Verdict::Again);
    io.push(&data(1, b"stray"));
    io.push(&digest(1, &[0; 32]));
    run(&mut h, &mut io);
    let (_, bytes, hash) = split_get(&io.take_frames(), 1);
    assert!(bytes == file);
    assert_eq!(hash, blake3(&file));
    assert_still_serving(&mut h, &mut io, 3);
    assert_eq!(dir.names(), ["f"]);
}

#[test]
fn a_client_error_on_a_gets_stream_ends_it_and_the_connection_goes_on() {
    let dir = TempDir::new("abandon");
    let file = content(1 << 20, 7);
    fs::write(dir.join("f"), &file).unwrap();
    let limits = Limits {
        disk_budget: 64 << 10,
        ..Limits::default()
    };
    let (mut h, mut io) = connect(limits, dir.path());
    io.room = Some(0);
    io.push(&get(1, 0, "f"));
    assert_eq!(h.event(&mut io, true, true), Verdict::Again);
    assert!(h.conn.pending_output() > 0);
    io.push(&client_error(1));
    io.push(&echo(2, b"next"));
    h.event(&mut io, true, false);
    assert_eq!(h.conn.open_streams(), 0, "the GET is over");
    assert_eq!(transfers_running(&h), 0);
    let queued = h.conn.pending_output();

    io.room = None;
    assert_eq!(run(&mut h, &mut io), Verdict::Wait);
    let frames = io.take_frames();
    let written: usize = frames.iter().map(|f| 12 + f.payload.len()).sum();
    assert_eq!(written, queued, "only what was queued before the ERROR");
    assert_eq!(kinds(&frames[..1]), [(FrameType::FileInfo, 1)]);
    assert_eq!(
        kinds(&frames[frames.len() - 1..]),
        [(FrameType::EchoReply, 2)]
    );
    let mut bytes = Vec::new();
    for frame in &frames[1..frames.len() - 1] {
        assert_eq!(kinds(std::slice::from_ref(frame)), [(FrameType::Data, 1)]);
        bytes.extend_from_slice(&frame.payload);
    }
    assert!(
        !bytes.is_empty() && bytes.len() < file.len(),
        "{} bytes",
        bytes.len()
    );
    assert!(bytes == file[..bytes.len()], "a prefix of the file");

    for _ in 0..5 {
        h.drive(&mut io);
    }
    assert!(io.take_frames().is_empty(), "nothing more on stream 1");
    assert_still_serving(&mut h, &mut io, 3);
}

#[test]
fn a_connection_without_the_token_gets_unauthenticated_for_every_file_request() {
    let dir = TempDir::new("unauth");
    fs::write(dir.join("f"), b"secret").unwrap();
    let mut h = ConnHarness::framed(Limits::default()).with_files(dir.path());
    h.access = Access {
        token: Some(Token::new(TOKEN.to_vec()).unwrap()),
        exec: false,
        credentials: None,
    };
    let mut io = MemoryIo::new();
    let frames = send(&mut h, &mut io, &hello(b""));
    let ok = HelloOk::parse(&frames[0].payload).unwrap();
    assert_eq!(ok.flags, SessionFlags::NONE, "not told of the file service");

    let mut wire = get(1, 0, "f");
    wire.extend(put(3, 4, PutFlags::NONE, None, "g"));
    wire.extend(data(3, b"abcd"));
    wire.extend(digest(3, &blake3(b"abcd")));
    wire.extend(path_request(FrameType::List, 5, ""));
    wire.extend(path_request(FrameType::Stat, 7, "f"));
    wire.extend(path_request(FrameType::Mkdir, 9, "d"));
    wire.extend(path_request(FrameType::Delete, 11, "f"));
    let frames = send(&mut h, &mut io, &wire);
    let errors: Vec<_> = frames.iter().map(error_of).collect();
    assert_eq!(
        errors,
        [1, 3, 5, 7, 9, 11].map(|stream| (stream, ErrorCode::Unauthenticated))
    );
    assert_still_serving(&mut h, &mut io, 13);
    assert_eq!(dir.names(), ["f"], "nothing created or removed");

    // With the token, the same server serves files.
    let mut h = ConnHarness::framed(Limits::default()).with_files(dir.path());
    h.access = Access {
        token: Some(Token::new(TOKEN.to_vec()).unwrap()),
        exec: false,
        credentials: None,
    };
    let mut io = MemoryIo::new();
    let frames = send(&mut h, &mut io, &hello(TOKEN));
    let ok = HelloOk::parse(&frames[0].payload).unwrap();
    assert!(ok.flags.contains(SessionFlags::FILES));
    let frames = send(&mut h, &mut io, &get(1, 0, "f"));
    assert_eq!(split_get(&frames, 1).1, b"secret");
}

#[test]
fn a_version_1_connection_does_not_know_file_frames() {
    let dir = TempDir::new("v1");
    fs::write(dir.join("f"), b"x").unwrap();
    let mut h = ConnHarness::framed(Limits::default()).with_files(dir.path());
    let mut io = MemoryIo::new();
    let mut wire = Vec::new();
    Hello {
        min_version: 1,
        max_version: 1,
        credentials: b"",
    }
    .encode(&mut wire);
    wire.extend(get(1, 0, "f"));
    wire.extend(put(3, 1, PutFlags::NONE, None, "g"));
    wire.extend(path_request(FrameType::List, 5, ""));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(HelloOk::parse(&frames[0].payload).unwrap().version, 1);
    let errors: Vec<_> = frames[1..].iter().map(error_of).collect();
    assert_eq!(
        errors,
        [1, 3, 5].map(|stream| (stream, ErrorCode::UnknownFrameType))
    );
    assert_eq!(h.conn.state(), State::Open);
    assert_eq!(dir.names(), ["f"]);
}

#[test]
fn transfers_count_against_the_per_connection_limit() {
    let dir = TempDir::new("limit");
    fs::write(dir.join("f"), b"x").unwrap();
    let limits = Limits {
        max_streams_per_connection: 2,
        ..Limits::default()
    };
    let (mut h, mut io) = connect(limits, dir.path());
    let mut wire = put(1, 10, PutFlags::NONE, None, "a");
    wire.extend(put(3, 10, PutFlags::NONE, None, "b"));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(
        kinds(&frames),
        [(FrameType::PutReady, 1), (FrameType::PutReady, 3)]
    );
    let mut wire = get(5, 0, "f");
    wire.extend(path_request(FrameType::Stat, 7, "f"));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(error_of(&frames[0]), (5, ErrorCode::LimitReached));
    assert_eq!(
        kinds(&frames[1..]),
        [(FrameType::FileInfo, 7)],
        "STAT takes no stream"
    );
    assert!(frames[1].header.flags.contains(Flags::END_STREAM));
}

#[test]
fn transfers_count_against_the_server_wide_limit() {
    let dir = TempDir::new("max-transfers");
    fs::write(dir.join("f"), b"x").unwrap();
    let limits = Limits {
        max_transfers: 1,
        ..Limits::default()
    };
    let (mut h, mut io) = connect(limits, dir.path());
    let frames = send(&mut h, &mut io, &put(1, 10, PutFlags::NONE, None, "a"));
    assert_eq!(kinds(&frames), [(FrameType::PutReady, 1)]);
    assert_eq!(transfers_running(&h), 1);
    let mut wire = get(3, 0, "f");
    wire.extend(path_request(FrameType::List, 5, ""));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(
        frames.iter().map(error_of).collect::<Vec<_>>(),
        [(3, ErrorCode::LimitReached), (5, ErrorCode::LimitReached)]
    );
    // The upload ends (the client abandons it): its place is free again.
    assert!(send(&mut h, &mut io, &client_error(1)).is_empty());
    assert_eq!(transfers_running(&h), 0);
    let frames = send(&mut h, &mut io, &get(7, 0, "f"));
    assert_eq!(split_get(&frames, 7).1, b"x");
}

#[test]
fn a_get_goes_on_after_the_client_closes_its_side_but_a_put_ends() {
    let dir = TempDir::new("half-close");
    let file = content(300 << 10, 14);
    fs::write(dir.join("f"), &file).unwrap();
    let limits = Limits {
        disk_budget: 64 << 10,
        ..Limits::default()
    };
    let (mut h, mut io) = connect(limits, dir.path());
    io.push(&put(1, 10, PutFlags::NONE, None, "up"));
    io.push(&data(1, b"01234"));
    io.push(&get(3, 0, "f"));
    io.close();
    // The FIN comes with the bytes: the poll reports the read side closed.
    h.conn.on_read_closed();
    let verdict = run(&mut h, &mut io);
    assert_eq!(verdict, Verdict::Close, "closed once the GET is sent");
    let (put_frames, get_frames): (Vec<_>, Vec<_>) = io
        .take_frames()
        .into_iter()
        .partition(|frame| frame.header.stream == 1);
    assert_eq!(
        kinds(&put_frames),
        [(FrameType::PutReady, 1)],
        "the upload ends without a word: the client will read nothing more on it"
    );
    let (_, bytes, hash) = split_get(&get_frames, 3);
    assert!(bytes == file);
    assert_eq!(hash, blake3(&file));
    assert_eq!(transfers_running(&h), 0);
    assert!(
        dir.names() == ["f"],
        "the unfinished upload left nothing: {:?}",
        dir.names()
    );
}

// === PUT errors: each ends its stream, the connection goes on ===

#[test]
fn more_data_than_the_size_is_a_bad_request_on_the_stream() {
    let dir = TempDir::new("toomuch");
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    let frames = send(&mut h, &mut io, &put(1, 10, PutFlags::NONE, None, "up"));
    assert_eq!(
        ready_of(&frames[0]),
        PutReady {
            upload_id: 0,
            held: 0
        }
    );
    let mut wire = data(1, b"012345");
    wire.extend(data(1, b"6789X"));
    wire.extend(data(1, b"late"));
    wire.extend(digest(1, &blake3(b"0123456789")));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(
        frames.iter().map(error_of).collect::<Vec<_>>(),
        [(1, ErrorCode::BadRequest)],
        "once; the frames after it are ignored"
    );
    assert_eq!(h.conn.open_streams(), 0);
    assert_eq!(transfers_running(&h), 0);
    assert!(dir.names().is_empty(), "{:?}", dir.names());
    assert_still_serving(&mut h, &mut io, 2);

    // The stream is free again: a new PUT on it works.
    let frames = send(&mut h, &mut io, &put(1, 10, PutFlags::NONE, None, "up"));
    assert_eq!(kinds(&frames), [(FrameType::PutReady, 1)]);
    let mut wire = data(1, b"0123456789");
    wire.extend(digest(1, &blake3(b"0123456789")));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(digest_of(&frames[0]), blake3(b"0123456789"));
    assert_eq!(frames.len(), 1);
    assert_eq!(fs::read(dir.join("up")).unwrap(), b"0123456789");
}

#[test]
fn a_digest_before_all_the_bytes_is_a_bad_request_on_the_stream() {
    let dir = TempDir::new("early");
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    let mut wire = put(1, 10, PutFlags::NONE, None, "up");
    wire.extend(data(1, b"0123"));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(kinds(&frames), [(FrameType::PutReady, 1)]);
    let frames = send(&mut h, &mut io, &digest(1, &blake3(b"0123456789")));
    assert_eq!(frames.len(), 1, "{:?}", kinds(&frames));
    assert_eq!(error_of(&frames[0]), (1, ErrorCode::BadRequest));
    assert!(dir.names().is_empty(), "{:?}", dir.names());
    assert_still_serving(&mut h, &mut io, 2);
}

#[test]
fn a_wrong_digest_is_a_hash_mismatch_and_leaves_nothing_behind() {
    let dir = TempDir::new("mismatch");
    let file = content(1000, 8);
    let other = blake3(b"something else");
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    // (declared hash, trailer): a wrong trailer, with and without a declared hash; a wrong
    // declared hash with the right trailer.
    let cases = [
        (None, other),
        (Some(blake3(&file)), other),
        (Some(other), blake3(&file)),
    ];
    for (n, (declared, trailer)) in cases.into_iter().enumerate() {
        let stream = 1 + 2 * n as u32;
        let flags = if declared.is_some() {
            PutFlags::HASH_DECLARED
        } else {
            PutFlags::NONE
        };
        let mut wire = put(stream, file.len() as u64, flags, declared, "up");
        wire.extend(data(stream, &file[..600]));
        io.push(&wire);
        run(&mut h, &mut io);
        assert_eq!(ready_of(&io.take_frames()[0]).held, 0);
        if declared.is_some() {
            assert_eq!(dir.partials().len(), 1, "case {n}: a partial while it runs");
        }
        let mut wire = data(stream, &file[600..]);
        wire.extend(digest(stream, &trailer));
        let frames = send(&mut h, &mut io, &wire);
        assert_eq!(frames.len(), 1, "case {n}: {:?}", kinds(&frames));
        assert_eq!(error_of(&frames[0]), (stream, ErrorCode::HashMismatch));
        assert!(
            dir.names().is_empty(),
            "case {n}: no target, no partial: {:?}",
            dir.names()
        );
    }
    assert_still_serving(&mut h, &mut io, 100);
}

#[test]
fn a_put_onto_a_directory_is_refused_with_is_directory() {
    let dir = TempDir::new("isdir");
    fs::create_dir(dir.join("sub")).unwrap();
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    let mut wire = put(1, 3, PutFlags::NONE, None, "sub");
    wire.extend(data(1, b"abc"));
    wire.extend(digest(1, &blake3(b"abc")));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(frames.len(), 1, "{:?}", kinds(&frames));
    assert_eq!(error_of(&frames[0]), (1, ErrorCode::IsDirectory));
    assert!(dir.join("sub").is_dir());
    assert_eq!(dir.names(), ["sub"]);
    assert_still_serving(&mut h, &mut io, 2);
}

#[test]
fn a_put_larger_than_max_put_is_refused_with_limit_reached() {
    let dir = TempDir::new("maxput");
    let limits = Limits {
        max_put: 1000,
        ..Limits::default()
    };
    let (mut h, mut io) = connect(limits, dir.path());
    let file = content(1001, 9);
    let mut wire = put(1, 1001, PutFlags::NONE, None, "big");
    wire.extend(data(1, &file));
    wire.extend(digest(1, &blake3(&file)));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(frames.len(), 1, "{:?}", kinds(&frames));
    assert_eq!(error_of(&frames[0]), (1, ErrorCode::LimitReached));
    assert!(dir.names().is_empty());

    // At the limit exactly it is stored.
    let mut wire = put(3, 1000, PutFlags::NONE, None, "big");
    wire.extend(data(3, &file[..1000]));
    wire.extend(digest(3, &blake3(&file[..1000])));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(digest_of(frames.last().unwrap()), blake3(&file[..1000]));
    assert_eq!(fs::read(dir.join("big")).unwrap(), &file[..1000]);
}

// === Resumable uploads ===

#[test]
fn a_declared_upload_cut_by_the_client_closing_resumes_on_a_new_connection() {
    let dir = TempDir::new("resume");
    let file = content(10_000, 10);
    let hash = blake3(&file);
    let half = file.len() / 2;

    // First connection: half the bytes, then the client goes away.
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    let mut wire = put(
        1,
        file.len() as u64,
        PutFlags::HASH_DECLARED,
        Some(hash),
        "up",
    );
    wire.extend(data(1, &file[..half]));
    let frames = send(&mut h, &mut io, &wire);
    let first = ready_of(&frames[0]);
    assert_eq!(first.held, 0);
    assert_ne!(first.upload_id, 0, "a declared upload is resumable");
    io.close();
    assert_eq!(h.event(&mut io, true, false), Verdict::Close);
    h.with_context(|conn, cx| conn.release(cx));
    let partials = dir.partials();
    assert_eq!(partials.len(), 1, "{:?}", dir.names());
    assert_eq!(
        fs::read(dir.join(&partials[0])).unwrap(),
        &file[..half],
        "the partial holds what was sent"
    );
    assert!(!dir.join("up").exists(), "the target is untouched");

    // Second connection: RESUME finds the half and takes the rest.
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    let flags = PutFlags::HASH_DECLARED.with(PutFlags::RESUME);
    let frames = send(
        &mut h,
        &mut io,
        &put(1, file.len() as u64, flags, Some(hash), "up"),
    );
    assert_eq!(
        ready_of(&frames[0]),
        PutReady {
            upload_id: first.upload_id,
            held: half as u64
        }
    );
    let mut wire = data(1, &file[half..]);
    wire.extend(digest(1, &hash));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(frames.len(), 1, "{:?}", kinds(&frames));
    assert_eq!(digest_of(&frames[0]), hash);
    assert!(fs::read(dir.join("up")).unwrap() == file);
    assert_eq!(dir.names(), ["up"], "the partial became the file");
}

#[test]
fn a_declared_upload_survives_a_client_error_and_a_dropped_connection() {
    let dir = TempDir::new("keep");
    let file = content(4000, 11);
    let hash = blake3(&file);
    let (mut h, mut io) = connect(Limits::default(), dir.path());

    // The client abandons it with an ERROR on the stream.
    let mut wire = put(
        1,
        file.len() as u64,
        PutFlags::HASH_DECLARED,
        Some(hash),
        "up",
    );
    wire.extend(data(1, &file[..1000]));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(kinds(&frames), [(FrameType::PutReady, 1)]);
    let frames = send(&mut h, &mut io, &client_error(1));
    assert!(frames.is_empty(), "nothing more on the stream");
    assert_eq!(h.conn.open_streams(), 0);
    assert_eq!(dir.partials().len(), 1);
    assert_still_serving(&mut h, &mut io, 2);

    // Resumed on the same connection, then the socket fails: the connection is released
    // without the client's EOF.
    let flags = PutFlags::HASH_DECLARED.with(PutFlags::RESUME);
    let mut wire = put(3, file.len() as u64, flags, Some(hash), "up");
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(ready_of(&frames[0]).held, 1000);
    wire = data(3, &file[1000..3000]);
    assert!(send(&mut h, &mut io, &wire).is_empty());
    h.with_context(|conn, cx| conn.release(cx));
    let partials = dir.partials();
    assert_eq!(partials.len(), 1);
    assert_eq!(fs::read(dir.join(&partials[0])).unwrap(), &file[..3000]);

    // Without RESUME the same upload starts over.
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    let mut wire = put(
        1,
        file.len() as u64,
        PutFlags::HASH_DECLARED,
        Some(hash),
        "up",
    );
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(ready_of(&frames[0]).held, 0);
    wire = data(1, &file);
    wire.extend(digest(1, &hash));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(digest_of(&frames[0]), hash);
    assert!(fs::read(dir.join("up")).unwrap() == file);
    assert_eq!(dir.names(), ["up"]);
}

#[test]
fn data_pipelined_after_a_resume_before_put_ready_is_a_bad_request() {
    let dir = TempDir::new("early-resume");
    let file = content(2000, 12);
    let hash = blake3(&file);
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    let mut wire = put(
        1,
        file.len() as u64,
        PutFlags::HASH_DECLARED,
        Some(hash),
        "up",
    );
    wire.extend(data(1, &file[..500]));
    wire.extend(client_error(1));
    send(&mut h, &mut io, &wire);

    let flags = PutFlags::HASH_DECLARED.with(PutFlags::RESUME);
    let mut wire = put(3, file.len() as u64, flags, Some(hash), "up");
    wire.extend(data(3, &file[500..]));
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(
        frames.iter().map(error_of).collect::<Vec<_>>(),
        [(3, ErrorCode::BadRequest)]
    );
    assert_eq!(dir.partials().len(), 1, "what it held is kept");
    assert_still_serving(&mut h, &mut io, 5);
}

// === LIST ===

fn make_listing_dir(label: &str) -> (TempDir, HashSet<String>) {
    let dir = TempDir::new(label);
    let mut names = HashSet::new();
    for i in 0..3000 {
        let name = format!("entry-{i:04}-{}", "n".repeat(40));
        fs::write(dir.join(&name), vec![b'x'; i % 7]).unwrap();
        names.insert(name);
    }
    // The server's own names are never listed — but for partial uploads, which are, so
    // that a user can see and remove them.
    fs::write(dir.join(".monoreactor-tmp-1-0"), b"hidden").unwrap();
    fs::write(dir.join(".monoreactor-partial-00000000deadbeef"), b"held").unwrap();
    names.insert(".monoreactor-partial-00000000deadbeef".to_string());
    (dir, names)
}

/// Checks a LIST's pages on `stream`: each at most a page, only the last with END_STREAM,
/// every name in `expected` exactly once (with its size) and nothing else.
#[track_caller]
fn check_listing(frames: &[OwnedFrame], stream: u32, expected: &HashSet<String>) {
    let mut seen = HashSet::new();
    for (n, frame) in frames.iter().enumerate() {
        assert_eq!(
            (frame.header.frame_type, frame.header.stream),
            (FrameType::Entries, stream)
        );
        assert!(frame.payload.len() <= LIST_PAGE_LEN, "page {n}");
        assert_eq!(
            frame.header.flags.contains(Flags::END_STREAM),
            n == frames.len() - 1,
            "only the last page ends the stream (page {n} of {})",
            frames.len()
        );
        for entry in Entries::new(&frame.payload) {
            let entry = entry.expect("a whole entry");
            assert!(expected.contains(entry.name), "{:?}", entry.name);
            if entry.name.starts_with(".monoreactor-partial-") {
                assert_eq!((entry.kind, entry.size), (FileKind::Partial, 4));
            } else {
                assert_eq!(entry.kind, FileKind::File);
                let i: usize = entry.name[6..10].parse().unwrap();
                assert_eq!(entry.size, (i % 7) as u64, "{}", entry.name);
            }
            assert!(seen.insert(entry.name.to_string()), "{} twice", entry.name);
        }
    }
    assert_eq!(seen.len(), expected.len(), "every entry once");
}

#[test]
fn a_list_of_3000_entries_comes_in_pages_holding_each_name_once() {
    let (dir, names) = make_listing_dir("list");
    let (mut h, mut io) = connect(Limits::default(), dir.path());
    let frames = send(&mut h, &mut io, &path_request(FrameType::List, 1, ""));
    assert!(
        frames.len() >= 3,
        "{} pages for ~200 KB of entries",
        frames.len()
    );
    check_listing(&frames, 1, &names);
    assert_eq!(h.conn.open_streams(), 0);
    assert_still_serving(&mut h, &mut io, 3);
}

#[test]
fn a_list_with_a_small_disk_budget_takes_several_turns() {
    let (dir, names) = make_listing_dir("list-budget");
    let limits = Limits {
        disk_budget: 64 << 10,
        ..Limits::default()
    };
    let (mut h, mut io) = connect(limits, dir.path());
    io.push(&path_request(FrameType::List, 1, ""));
    let mut verdict = h.event(&mut io, true, true);
    let mut turns = 1;
    while verdict == Verdict::Again {
        verdict = h.drive(&mut io);
        turns += 1;
        assert!(turns < 100_000);
    }
    assert_eq!(verdict, Verdict::Wait);
    assert!(turns >= 10, "{turns} turns");
    check_listing(&io.take_frames(), 1, &names);
}
