//! The fuzz targets' corpus (`fuzz/corpus/<target>/`), replayed on stable through the same
//! entry points cargo-fuzz runs (`monoreactor::fuzzing`): this is how CI exercises every
//! target without nightly. The seeds are written by `write_seed_corpus` below (ignored; run it
//! with `cargo test --test fuzz_corpus -- --ignored` after changing the op script), and a
//! finding's minimized input is added as `crash-<what>` next to them.

use std::path::{Path, PathBuf};

use monoreactor::fuzzing::{self, Script, op};
use monoreactor::proto::exec::{ExecFlags, ExecRequest};
use monoreactor::proto::files::{GetRequest, PutFlags, PutRequest};
use monoreactor::proto::{Flags, Frame, FrameType, Hello};

/// A fuzz target's entry point.
type Entry = fn(&[u8]);

const TARGETS: [(&str, Entry); 6] = [
    ("decoder", fuzzing::decoder),
    ("framed_connection", fuzzing::framed_connection),
    ("exec_session", fuzzing::exec_session),
    ("file_session", fuzzing::file_session),
    ("tls_session", fuzzing::tls_session),
    ("proxy_header", fuzzing::proxy_header),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn replay(target: &str, entry: Entry) {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus for {target}");
    for file in files {
        let data = std::fs::read(&file).unwrap();
        let outcome = std::panic::catch_unwind(|| entry(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", file.display());
    }
}

#[test]
fn decoder_corpus_replays() {
    replay(TARGETS[0].0, TARGETS[0].1);
}

#[test]
fn framed_connection_corpus_replays() {
    replay(TARGETS[1].0, TARGETS[1].1);
}

#[test]
fn exec_session_corpus_replays() {
    replay(TARGETS[2].0, TARGETS[2].1);
}

#[test]
fn file_session_corpus_replays() {
    replay(TARGETS[3].0, TARGETS[3].1);
}

#[test]
fn tls_session_corpus_replays() {
    replay(TARGETS[4].0, TARGETS[4].1);
}

#[test]
fn proxy_header_corpus_replays() {
    replay(TARGETS[5].0, TARGETS[5].1);
}

/// The `tls_session` entry point on inputs of every mode, short and odd ones included.
#[test]
fn tls_session_runs_every_mode() {
    use fuzzing::tls::{mode, mutation, op as tls_op};
    for data in [
        &[][..],
        &[mode::RAW, tls_op::SEND, 0, 3, 0x16, 3, 1, tls_op::DRIVE, 0],
        &[
            mode::RAW,
            tls_op::SEND,
            0,
            4,
            b'G',
            b'E',
            b'T',
            b' ',
            tls_op::DRIVE,
            9,
        ],
        &[mode::AFTER_HANDSHAKE],
        &[
            mode::AFTER_HANDSHAKE,
            2,
            3,
            10,
            200,
            tls_op::SEND,
            0,
            5,
            23,
            3,
            3,
            0,
            40,
        ],
        &[
            mode::MUTATED,
            4,
            3,
            1,
            2,
            3,
            255,
            2,
            mutation::FLIP,
            0,
            30,
            1,
            mutation::INSERT,
            0,
            7,
            9,
        ],
        &[
            mode::MUTATED,
            1,
            0,
            50,
            1,
            mutation::TRUNCATE,
            0,
            20,
            0,
            tls_op::FIN,
            tls_op::DRIVE,
            0,
        ],
        &[0xff; 64],
    ] {
        fuzzing::tls_session(data);
    }
    // A recorded client flight, replayed raw, completes the handshake and can carry data.
    fuzzing::tls_session(&tls_raw_replay());
}

// ------------------------------------------------------------------------------------------
// The seeds

fn frame(frame_type: FrameType, stream: u32, payload: &[u8]) -> Vec<u8> {
    Frame::new(frame_type, Flags::NONE, stream, payload).to_vec()
}

fn hello() -> Vec<u8> {
    let mut out = Vec::new();
    Hello::current().encode(&mut out);
    out
}

fn exec(stream: u32, stdin: bool, argv: &[&[u8]]) -> Vec<u8> {
    let mut request = ExecRequest::new(argv.to_vec());
    if stdin {
        request.flags = ExecFlags::STDIN;
    }
    let mut out = Vec::new();
    request.encode(stream, &mut out);
    out
}

fn put(stream: u32, path: &str, contents: &[u8], declared: bool) -> Vec<u8> {
    let mut flags = PutFlags::NONE;
    if declared {
        flags = flags.with(PutFlags::RESUME);
    }
    let request = PutRequest {
        size: contents.len() as u64,
        flags,
        hash: declared.then(|| *blake3::hash(contents).as_bytes()),
        attrs: None,
        path,
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    frame(FrameType::Put, stream, &payload)
}

fn get(stream: u32, path: &str, offset: u64) -> Vec<u8> {
    let request = GetRequest { offset, path };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    frame(FrameType::Get, stream, &payload)
}

/// Server frames, for the decoder's corpus.
fn server_frames() -> Vec<u8> {
    use monoreactor::proto::exec::{EndReason, Exit, Started, Termination, Window};
    use monoreactor::proto::files::{FileInfo, FileKind, PutReady};
    let mut out = Vec::new();
    let mut fixed = |frame_type, len: usize, emit: &dyn Fn(&mut [u8])| {
        let mut payload = vec![0; len];
        emit(&mut payload);
        out.extend(frame(frame_type, 1, &payload));
    };
    fixed(FrameType::Started, Started::PAYLOAD_LEN, &|out| {
        Started {
            pid: 1000,
            stdin_window: 262_144,
        }
        .emit(out)
    });
    fixed(FrameType::Window, Window::PAYLOAD_LEN, &|out| {
        Window { increment: 4096 }.emit(out)
    });
    fixed(FrameType::Exit, Exit::PAYLOAD_LEN, &|out| {
        Exit {
            termination: Termination::Exited(3),
            reason: EndReason::None,
        }
        .emit(out)
    });
    fixed(FrameType::FileInfo, FileInfo::PAYLOAD_LEN, &|out| {
        FileInfo {
            size: 13,
            mtime_ns: 1,
            kind: FileKind::File,
            hash: Some([7; 32]),
        }
        .emit(out)
    });
    fixed(FrameType::PutReady, PutReady::PAYLOAD_LEN, &|out| {
        PutReady {
            upload_id: 42,
            held: 0,
        }
        .emit(out)
    });
    out
}

fn decoder_input(limit: u8, step: u8, stream: &[u8]) -> Vec<u8> {
    let mut input = vec![limit, step];
    input.extend_from_slice(stream);
    input
}

/// `tls_session`, raw mode: `bytes` sent in one piece, then a drive.
fn tls_send(script: &mut Vec<u8>, bytes: &[u8]) {
    use fuzzing::tls::op as tls_op;
    script.push(tls_op::SEND);
    script.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
    script.extend_from_slice(bytes);
    script.extend_from_slice(&[tls_op::DRIVE, 255]);
}

/// `tls_session`, raw mode: the real client's flights replayed (the handshake completes, the
/// session being deterministic), the server writing 100 bytes through short writes, and a
/// record of garbage after.
fn tls_raw_replay() -> Vec<u8> {
    use fuzzing::tls::{mode, op as tls_op};
    let mut script = vec![mode::RAW];
    for flight in fuzzing::tls::client_flights() {
        tls_send(&mut script, &flight);
    }
    script.extend_from_slice(&[tls_op::WRITE, 0, 0, 30, tls_op::WRITE_PLAIN, 0, 100]);
    tls_send(&mut script, &[23, 3, 3, 0, 20, 1, 2, 3]);
    script
}

fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    use fuzzing::tls::{mode, mutation, op as tls_op};
    let mut seeds = Vec::new();

    // decoder
    let mut echo = hello();
    echo.extend(Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 1, b"hello").to_vec());
    echo.extend(frame(FrameType::Unknown(0x3f), 2, b"xyz"));
    seeds.push(("decoder", "hello-echo", decoder_input(0, 5, &echo)));
    let mut exec_frames = exec(1, true, &[b"sh", b"-c", b"cat"]);
    exec_frames.extend(frame(FrameType::Stdin, 1, b"hi\n"));
    exec_frames.extend(frame(FrameType::StdinEof, 1, b""));
    exec_frames.extend(frame(FrameType::Signal, 1, &[15]));
    seeds.push(("decoder", "exec-frames", decoder_input(1, 7, &exec_frames)));
    let mut file_frames = put(3, "hello.txt", b"hello, world\n", true);
    file_frames.extend(frame(FrameType::Data, 3, b"hello, world\n"));
    file_frames.extend(frame(
        FrameType::Digest,
        3,
        blake3::hash(b"hello, world\n").as_bytes(),
    ));
    file_frames.extend(get(5, "hello.txt", 0));
    file_frames.extend(frame(FrameType::List, 7, b""));
    file_frames.extend(server_frames());
    seeds.push((
        "decoder",
        "file-and-server-frames",
        decoder_input(0, 3, &file_frames),
    ));
    let mut too_large = frame(FrameType::EchoRequest, 1, b"");
    too_large[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    seeds.push(("decoder", "too-large", decoder_input(1, 1, &too_large)));

    // framed_connection
    seeds.push((
        "framed_connection",
        "hello-echo",
        Script::new(false)
            .hello(false)
            .event()
            .frame(FrameType::EchoRequest, Flags::END_STREAM, 1, b"hi")
            .event()
            .fin()
            .event()
            .into_bytes(),
    ));
    let mut pipelined = hello();
    pipelined.extend(frame(FrameType::EchoRequest, 1, b"hello"));
    pipelined.extend(frame(FrameType::Unknown(0x3f), 2, b"xyz"));
    seeds.push((
        "framed_connection",
        "pipelined-split-reads",
        Script::new(false)
            .read_upto(5)
            .read_upto(20)
            .send(&pipelined)
            .event()
            .event()
            .read_would_block()
            .event()
            .event()
            .into_bytes(),
    ));
    let mut many = hello();
    for stream in 1..40 {
        many.extend(frame(FrameType::EchoRequest, stream, &[stream as u8; 100]));
    }
    seeds.push((
        "framed_connection",
        "short-writes-backpressure",
        Script::new(true)
            .room(10)
            .send(&many)
            .event()
            .drain(500)
            .event()
            .write_upto(3)
            .drain(3000)
            .event()
            .room(u16::MAX)
            .event()
            .into_bytes(),
    ));
    let mut oversize = frame(FrameType::EchoRequest, 1, b"");
    oversize[8..12].copy_from_slice(&(1u32 << 30).to_be_bytes());
    seeds.push((
        "framed_connection",
        "frame-too-large",
        Script::new(false)
            .hello(false)
            .send(&oversize)
            .event()
            .fin()
            .event()
            .into_bytes(),
    ));
    seeds.push((
        "framed_connection",
        "hello-timeout-and-partial-frame",
        Script::new(false)
            .send(&hello()[..7])
            .event()
            .time(5000)
            .expire()
            .expire()
            .into_bytes(),
    ));
    seeds.push((
        "framed_connection",
        "shutdown",
        Script::new(false)
            .hello(false)
            .event()
            .shutdown(100)
            .time(200)
            .expire()
            .into_bytes(),
    ));

    // exec_session
    let mut command = exec(1, true, &[b"sh", b"-c", b"cat; echo bye >&2; exit 3"]);
    command.extend(frame(FrameType::Stdin, 1, b"hi\n"));
    command.extend(frame(FrameType::StdinEof, 1, b""));
    seeds.push((
        "exec_session",
        "exec-stdin-exit",
        Script::new(false)
            .hello(true)
            .send(&command)
            .event()
            .event()
            .child_output(0, false, b"hi\n")
            .child_output(0, true, b"bye\n")
            .child_exit(0, 3)
            .event()
            .into_bytes(),
    ));
    seeds.push((
        "exec_session",
        "signal",
        Script::new(false)
            .hello(true)
            .send(&exec(3, false, &[b"sleep", b"99"]))
            .event()
            .frame(FrameType::Signal, Flags::NONE, 3, &[15])
            .event()
            .child(0, op::child::KILLED, &[15])
            .child(0, op::child::CLOSE_STDOUT, &[])
            .child(0, op::child::CLOSE_STDERR, &[])
            .event()
            .into_bytes(),
    ));
    seeds.push((
        "exec_session",
        "refused-and-unauthenticated",
        Script::new(false)
            .child(0, op::child::REFUSE, &[0])
            .hello(true)
            .send(&exec(1, false, &[b"nope"]))
            .event()
            .send(&exec(1, false, &[b"true"]))
            .event()
            .into_bytes(),
    ));
    let mut window = exec(1, true, &[b"cat"]);
    window.extend(frame(FrameType::Stdin, 1, &[b'x'; 100]));
    seeds.push((
        "exec_session",
        "stdin-window-and-slow-reader",
        Script::new(true)
            .hello(true)
            .send(&window)
            .event()
            .child(0, op::child::STDIN_ROOM, &[0, 50])
            .event()
            .room(100)
            .child_output(0, false, &[b'o'; 5000])
            .event()
            .drain(3000)
            .event()
            .child(0, op::child::FAIL_READ, &[0, 1])
            .child_output(0, true, &[b'e'; 100])
            .event()
            .frame(FrameType::Stdin, Flags::NONE, 1, &[b'y'; 60])
            .event()
            .room(u16::MAX)
            .event()
            .into_bytes(),
    ));
    seeds.push((
        "exec_session",
        "shutdown-drains-commands",
        Script::new(false)
            .hello(true)
            .send(&exec(1, false, &[b"sleep", b"1"]))
            .send(&exec(3, true, &[b"cat"]))
            .event()
            .shutdown(1000)
            .child_exit(0, 0)
            .event()
            .expire()
            .expire()
            .into_bytes(),
    ));

    // file_session
    let contents = b"hello, world\n";
    let digest = blake3::hash(contents);
    let mut upload = put(3, "hello.txt", contents, true);
    upload.extend(frame(FrameType::Data, 3, contents));
    upload.extend(frame(FrameType::Digest, 3, digest.as_bytes()));
    let mut script = Script::new(false).hello(false).send(&upload).event();
    for _ in 0..6 {
        script = script.disk(0).event();
    }
    seeds.push((
        "file_session",
        "put-get-list",
        script
            .send(&get(5, "hello.txt", 0))
            .send(&frame(FrameType::List, 7, b""))
            .event()
            .event()
            .into_bytes(),
    ));
    let mut mismatch = put(3, "bad.txt", contents, true);
    mismatch.extend(frame(FrameType::Data, 3, contents));
    mismatch.extend(frame(FrameType::Digest, 3, &[0; 32]));
    seeds.push((
        "file_session",
        "put-hash-mismatch",
        Script::new(false)
            .hello(false)
            .send(&mismatch)
            .event()
            .disk(0)
            .event()
            .into_bytes(),
    ));
    let mut undeclared = put(3, "d/new.bin", contents, false);
    undeclared.extend(frame(FrameType::Data, 3, &contents[..5]));
    undeclared.extend(frame(FrameType::Data, 3, &contents[5..]));
    undeclared.extend(frame(FrameType::Digest, 3, digest.as_bytes()));
    let mut script = Script::new(true).hello(false).send(&undeclared).event();
    for _ in 0..6 {
        script = script.disk(0).event();
    }
    seeds.push(("file_session", "put-undeclared-hash", script.into_bytes()));
    let mut requests = frame(FrameType::Mkdir, 1, b"docs");
    requests.extend(frame(FrameType::Stat, 3, b"a.txt"));
    requests.extend(frame(FrameType::Delete, 5, b"empty"));
    requests.extend(frame(FrameType::List, 7, b"d"));
    seeds.push((
        "file_session",
        "mkdir-stat-delete-list",
        Script::new(false)
            .hello(false)
            .send(&requests)
            .event()
            .disk(0)
            .event()
            .into_bytes(),
    ));
    seeds.push((
        "file_session",
        "get-resumed-slow-reader",
        Script::new(true)
            .hello(false)
            .room(30)
            .send(&get(1, "a.txt", 5))
            .event()
            .drain(10)
            .event()
            .write_upto(7)
            .drain(100)
            .event()
            .into_bytes(),
    ));
    let mut failing = put(3, "full.txt", contents, true);
    failing.extend(frame(FrameType::Data, 3, contents));
    failing.extend(frame(FrameType::Digest, 3, digest.as_bytes()));
    seeds.push((
        "file_session",
        "put-disk-errors",
        Script::new(false)
            .hello(false)
            .send(&failing)
            .event()
            .disk(2)
            .event()
            .disk(1)
            .event()
            .into_bytes(),
    ));

    // tls_session
    let flights = fuzzing::tls::client_flights();
    let mut hello = vec![mode::RAW];
    tls_send(&mut hello, &flights[0]);
    seeds.push(("tls_session", "client-hello", hello));
    let mut split = vec![mode::RAW, tls_op::READ, 0, 0, 7, tls_op::READ, 1, 0, 0];
    tls_send(&mut split, &flights[0][..100]);
    tls_send(&mut split, &flights[0][100..]);
    split.extend_from_slice(&[tls_op::FIN, tls_op::DRIVE, 0]);
    seeds.push(("tls_session", "client-hello-split-fin", split));
    seeds.push(("tls_session", "client-flights", tls_raw_replay()));
    // Two data records, a KeyUpdate after the first, close_notify; the server writes through
    // a full send buffer and shuts down.
    seeds.push((
        "tls_session",
        "after-handshake-records-and-garbage",
        vec![
            mode::AFTER_HANDSHAKE,
            2,
            3,
            20,
            250,
            tls_op::DRIVE,
            100,
            tls_op::ROOM,
            0,
            10,
            tls_op::WRITE_PLAIN,
            0x40,
            0,
            tls_op::SEND,
            0,
            6,
            23,
            3,
            3,
            0,
            1,
            0,
            tls_op::DRIVE,
            0,
            tls_op::SHUTDOWN,
            tls_op::ROOM,
            0xff,
            0xff,
            tls_op::DRIVE,
            0,
        ],
    ));
    seeds.push((
        "tls_session",
        "mutated-records",
        vec![
            mode::MUTATED,
            3,
            1,
            5,
            30,
            2,
            3,
            mutation::FLIP,
            0,
            40,
            0x80,
            mutation::INSERT,
            1,
            0,
            0,
            mutation::REMOVE,
            0,
            9,
            4,
            tls_op::READ,
            0,
            0,
            3,
            tls_op::SEND,
            0,
            50,
            tls_op::DRIVE,
            1,
            tls_op::SEND,
            0xff,
            0xff,
            tls_op::DRIVE,
            255,
        ],
    ));
    seeds
}

/// Writes the seeds into `fuzz/corpus/<target>/seed-<name>` (run by hand; see the module docs).
#[test]
#[ignore = "writes the seed corpus; run by hand after changing the op script"]
fn write_seed_corpus() {
    for (target, name, data) in seeds() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }
}

/// The seeds run clean from the code, whatever is on disk.
#[test]
fn seeds_pass() {
    for (target, name, data) in seeds() {
        let entry = TARGETS
            .iter()
            .find(|(known, _)| *known == target)
            .unwrap()
            .1;
        let outcome = std::panic::catch_unwind(|| entry(&data));
        assert!(outcome.is_ok(), "{target}: seed {name} fails");
    }
}

/// Replays one input, or every input in a directory: `FUZZ_TARGET=exec_session
/// FUZZ_INPUT=fuzz/artifacts/... cargo test
/// --test fuzz_corpus replay_one -- --ignored --nocapture` (with `MONOREACTOR_FUZZ_TRACE=1`
/// to see the server's frames).
#[test]
#[ignore = "replays the input named by FUZZ_TARGET and FUZZ_INPUT"]
fn replay_one() {
    let target = std::env::var("FUZZ_TARGET").expect("FUZZ_TARGET");
    let input = std::env::var("FUZZ_INPUT").expect("FUZZ_INPUT");
    let entry = TARGETS
        .iter()
        .find(|(known, _)| *known == target)
        .expect("a known target")
        .1;
    let input = Path::new(&input);
    if input.is_dir() {
        let mut failed = Vec::new();
        for file in std::fs::read_dir(input).unwrap() {
            let file = file.unwrap().path();
            let data = std::fs::read(&file).unwrap();
            if std::panic::catch_unwind(|| entry(&data)).is_err() {
                failed.push(file);
            }
        }
        assert!(failed.is_empty(), "failing inputs: {failed:#?}");
    } else {
        entry(&std::fs::read(input).unwrap());
    }
}

/// An open finding of the `tls_session` target (fuzz/findings/, not in the corpus, so not
/// replayed by `tls_session_corpus_replays`): after the outgoing buffer stopped doubling, an
/// input still leaves the session holding 33,555 bytes against the target's bound of 33,546 —
/// 265 bytes behind a full record where the bound allows 256 of control records. Whether the
/// bound or the session is wrong is not settled yet.
#[test]
#[ignore = "open (issue 14 fuzz finding): control records behind a full record exceed the target's slack"]
fn tls_session_finding_control_records_over_slack() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/findings/tls_session-control-records-over-slack"
    );
    let data = std::fs::read(path).expect("the finding's input");
    fuzzing::tls_session(&data);
}
