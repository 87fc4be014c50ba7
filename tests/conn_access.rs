//! The access file's rules on the connection state machine, one admission rung at a time,
//! through [`ConnHarness`] with a scripted [`Peer`], scripted children and a real temporary
//! root: plaintext from another host, read-only and no-files credentials, a scope and what its
//! replies reveal, the exec allowlist, `max_commands` across connections, the quota, and a
//! client certificate's key. Each refusal is FORBIDDEN on its stream, and nothing is created,
//! spawned or revealed.

mod support;

use std::fs;
use std::path::Path;

use monoreactor::children::{ChildSource, OutputPipe};
use monoreactor::client::OwnedFrame;
use monoreactor::proto::exec::{ExecRequest, Termination};
use monoreactor::proto::files::{
    Entries, FileInfo, FileKind, GetRequest, Hash, PutFlags, PutRequest,
};
use monoreactor::proto::{
    ErrorCode, ErrorMessage, Flags, Frame, FrameType, Hello, HelloOk, SessionFlags,
};
use monoreactor::testkit::{ConnHarness, MemoryIo};
use monoreactor::{Access, Connection, KeyFingerprint, Limits, Peer, Verdict, token_hash};
use support::TempDir;

const READER: &[u8] = b"reader-token-0123456789";
const WRITER: &[u8] = b"writer-token-0123456789";
const NOFILES: &[u8] = b"nofiles-token-0123456789";
const RUNNER: &[u8] = b"runner-token-0123456789";
const KEY: KeyFingerprint = KeyFingerprint([0x5a; 32]);

/// The access file every test here uses.
fn access() -> Access {
    let text = format!(
        r#"
[[credential]]
name = "reader"
token = "{reader}"
root = "team/a"
files = "read"

[[credential]]
name = "writer"
token = "{writer}"
root = "team/a"
files = "write"
quota = 1000

[[credential]]
name = "nofiles"
token = "{nofiles}"
exec = true

[[credential]]
name = "runner"
token = "{runner}"
root = "team/a"
files = "write"
exec = ["echo", ["git", "status"]]
max_commands = 2

[[credential]]
name = "laptop"
key = "{key}"
files = "read"
"#,
        reader = token_hash(READER),
        writer = token_hash(WRITER),
        nofiles = token_hash(NOFILES),
        runner = token_hash(RUNNER),
        key = KEY,
    );
    Access::parse(&text, "access.toml").expect("a valid access file")
}

/// A root with `team/a/inside.txt`, `team/b/secret.txt` and `top.txt`.
fn root(label: &str) -> TempDir {
    let dir = TempDir::new(label);
    fs::create_dir_all(dir.path().join("team/a/sub")).unwrap();
    fs::create_dir_all(dir.path().join("team/b")).unwrap();
    fs::write(dir.path().join("team/a/inside.txt"), b"inside").unwrap();
    fs::write(dir.path().join("team/b/secret.txt"), b"secret").unwrap();
    fs::write(dir.path().join("top.txt"), b"top").unwrap();
    dir
}

/// Every file and directory under `dir`, as sorted relative paths.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.strip_prefix(base).unwrap().display().to_string());
            if path.is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.retain(|path| !path.contains(".monoreactor-"));
    out.sort();
    out
}

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

fn send(h: &mut ConnHarness, io: &mut MemoryIo, bytes: &[u8]) -> Vec<OwnedFrame> {
    io.push(bytes);
    run(h, io);
    io.take_frames()
}

/// A connection from `peer` to a server with the access file, files under `root` and
/// scripted commands, after a HELLO with `credentials`; returns its HELLO_OK flags.
fn connect(root: &Path, peer: Peer, credentials: &[u8]) -> (ConnHarness, MemoryIo, SessionFlags) {
    let mut h = ConnHarness::framed(Limits::default())
        .with_files(root)
        .with_exec(b"not-the-access-file-0123");
    h.access = access();
    h.peer = peer;
    let mut io = MemoryIo::new();
    let mut wire = Vec::new();
    Hello::with_credentials(credentials).encode(&mut wire);
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(
        frames[0].header.frame_type,
        FrameType::HelloOk,
        "{frames:?}"
    );
    let flags = HelloOk::parse(&frames[0].payload).unwrap().flags;
    (h, io, flags)
}

fn path_request(frame_type: FrameType, stream: u32, path: &str) -> Vec<u8> {
    Frame::new(frame_type, Flags::NONE, stream, path.as_bytes()).to_vec()
}

fn get(stream: u32, path: &str) -> Vec<u8> {
    let request = GetRequest { offset: 0, path };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    Frame::new(FrameType::Get, Flags::NONE, stream, &payload).to_vec()
}

fn put(stream: u32, size: u64, hash: Option<Hash>, path: &str) -> Vec<u8> {
    let flags = if hash.is_some() {
        PutFlags::HASH_DECLARED
    } else {
        PutFlags::NONE
    };
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

/// A whole upload of `bytes` to `path` on `stream`: PUT, one DATA, DIGEST.
fn upload(stream: u32, path: &str, bytes: &[u8]) -> Vec<u8> {
    let hash = *blake3::hash(bytes).as_bytes();
    let mut wire = put(stream, bytes.len() as u64, Some(hash), path);
    wire.extend(Frame::new(FrameType::Data, Flags::NONE, stream, bytes).to_vec());
    wire.extend(Frame::new(FrameType::Digest, Flags::END_STREAM, stream, &hash).to_vec());
    wire
}

fn exec(stream: u32, argv: &[&[u8]], cwd: &str) -> Vec<u8> {
    let mut wire = Vec::new();
    ExecRequest {
        cwd,
        ..ExecRequest::new(argv.to_vec())
    }
    .encode(stream, &mut wire);
    wire
}

/// The ERROR a request got: its code and text.
#[track_caller]
fn refusal(frames: &[OwnedFrame], stream: u32) -> (ErrorCode, String) {
    let frame = frames
        .iter()
        .find(|frame| frame.header.stream == stream && frame.header.frame_type == FrameType::Error)
        .unwrap_or_else(|| panic!("no ERROR on stream {stream}: {frames:?}"));
    let message = ErrorMessage::parse(&frame.payload).unwrap();
    (message.code, message.text.to_string())
}

#[track_caller]
fn forbidden(frames: &[OwnedFrame], stream: u32, words: &[&str]) {
    let (code, text) = refusal(frames, stream);
    assert_eq!(code, ErrorCode::Forbidden, "{text}");
    for word in words {
        assert!(text.contains(word), "{text:?} should say {word:?}");
    }
    assert!(
        !text.contains("team"),
        "the text reveals the layout: {text}"
    );
}

fn another_host() -> Peer {
    Peer {
        encrypted: false,
        loopback: false,
        client_key: None,
        ..Peer::LOCAL
    }
}

fn over_tls() -> Peer {
    Peer {
        encrypted: true,
        loopback: false,
        client_key: None,
        ..Peer::LOCAL
    }
}

// === The transport: plaintext from another host ===

#[test]
fn exec_and_files_need_tls_from_another_host_and_echo_does_not() {
    let dir = root("access-plain");
    let before = tree(dir.path());
    let (mut h, mut io, _) = connect(dir.path(), another_host(), WRITER);
    let mut wire = upload(1, "new.txt", b"x");
    wire.extend(get(3, "inside.txt"));
    wire.extend(path_request(FrameType::Mkdir, 5, "d"));
    wire.extend(path_request(FrameType::List, 7, ""));
    wire.extend(Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 9, b"hi").to_vec());
    let frames = send(&mut h, &mut io, &wire);
    for stream in [1, 3, 5, 7] {
        forbidden(
            &frames,
            stream,
            &["needs TLS", "plaintext from another host"],
        );
    }
    assert!(
        frames
            .iter()
            .any(|frame| frame.header.frame_type == FrameType::EchoReply)
    );
    assert_eq!(tree(dir.path()), before, "nothing created");

    let (mut h, mut io, _) = connect(dir.path(), another_host(), RUNNER);
    let frames = send(&mut h, &mut io, &exec(1, &[b"echo", b"hi"], ""));
    forbidden(&frames, 1, &["EXEC needs TLS"]);
    assert!(h.children().all().is_empty(), "nothing spawned");

    // The same over TLS, or from this machine, goes through.
    for peer in [over_tls(), Peer::LOCAL] {
        let (mut h, mut io, _) = connect(dir.path(), peer, READER);
        let frames = send(&mut h, &mut io, &get(1, "inside.txt"));
        assert_eq!(
            frames[0].header.frame_type,
            FrameType::FileInfo,
            "{frames:?}"
        );
    }
}

// === The grant's right ===

#[test]
fn a_read_only_credential_cannot_put_delete_or_mkdir_and_may_read() {
    let dir = root("access-read");
    let before = tree(dir.path());
    let (mut h, mut io, flags) = connect(dir.path(), Peer::LOCAL, READER);
    assert_eq!(flags, SessionFlags::AUTHENTICATED.with(SessionFlags::FILES));
    let mut wire = upload(1, "new.txt", b"x");
    wire.extend(path_request(FrameType::Delete, 3, "inside.txt"));
    wire.extend(path_request(FrameType::Mkdir, 5, "d"));
    let frames = send(&mut h, &mut io, &wire);
    for (stream, kind) in [(1, "PUT"), (3, "DELETE"), (5, "MKDIR")] {
        forbidden(
            &frames,
            stream,
            &["credential \"reader\"", "files = \"read\"", kind],
        );
    }
    assert_eq!(tree(dir.path()), before, "nothing created or removed");
    let frames = send(
        &mut h,
        &mut io,
        &path_request(FrameType::Stat, 7, "inside.txt"),
    );
    let info = FileInfo::parse(&frames[0].payload).unwrap();
    assert_eq!((info.kind, info.size), (FileKind::File, 6));
}

#[test]
fn a_credential_without_files_gets_none_and_is_not_told_of_them() {
    let dir = root("access-nofiles");
    let (mut h, mut io, flags) = connect(dir.path(), Peer::LOCAL, NOFILES);
    assert_eq!(flags, SessionFlags::AUTHENTICATED.with(SessionFlags::EXEC));
    let mut wire = get(1, "top.txt");
    wire.extend(path_request(FrameType::Stat, 3, "top.txt"));
    wire.extend(path_request(FrameType::List, 5, ""));
    let frames = send(&mut h, &mut io, &wire);
    for stream in [1, 3, 5] {
        forbidden(
            &frames,
            stream,
            &["credential \"nofiles\"", "files = \"none\""],
        );
    }
    // And a credential without exec is refused commands, and not told of them.
    let (mut h, mut io, flags) = connect(dir.path(), Peer::LOCAL, WRITER);
    assert!(!flags.contains(SessionFlags::EXEC));
    let frames = send(&mut h, &mut io, &exec(1, &[b"true"], ""));
    forbidden(&frames, 1, &["credential \"writer\"", "exec = false"]);
    assert!(h.children().all().is_empty());
}

// === The scope ===

#[test]
fn a_scoped_credential_sees_its_subtree_as_the_root_and_nothing_else() {
    let dir = root("access-scope");
    let (mut h, mut io, _) = connect(dir.path(), Peer::LOCAL, WRITER);
    // LIST of its root is team/a.
    let frames = send(&mut h, &mut io, &path_request(FrameType::List, 1, ""));
    let mut names: Vec<String> = frames
        .iter()
        .flat_map(|frame| {
            Entries::new(&frame.payload)
                .map(|entry| entry.unwrap().name.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["inside.txt", "sub"]);
    // Outside it, nothing is found, and no text names where it is.
    for (stream, path) in [
        (3, "team/b/secret.txt"),
        (5, "top.txt"),
        (7, "b/secret.txt"),
    ] {
        let frames = send(
            &mut h,
            &mut io,
            &path_request(FrameType::Stat, stream, path),
        );
        let (code, text) = refusal(&frames, stream);
        assert_eq!(code, ErrorCode::NotFound, "{text}");
        let named = text.split(':').next().unwrap();
        assert!(path.starts_with(named), "the client's own path: {text}");
        assert!(!text.contains("team/a"), "{text}");
    }
    // Every escape the path syntax refuses, refused the same inside a scope.
    for (stream, path) in [
        (9, "../b/secret.txt"),
        (11, "/etc/passwd"),
        (13, "sub/../../b"),
    ] {
        let frames = send(&mut h, &mut io, &get(stream, path));
        let (code, text) = refusal(&frames, stream);
        assert_eq!(code, ErrorCode::BadRequest, "{path}: {text}");
        assert!(!text.contains("team"), "{text}");
    }
    // An error on the scope's own root shows it as `/`.
    let frames = send(&mut h, &mut io, &path_request(FrameType::Mkdir, 15, ""));
    let (_, text) = refusal(&frames, 15);
    assert!(!text.contains("team"), "{text}");
    // A PUT lands inside, under the client's name.
    let frames = send(&mut h, &mut io, &upload(17, "sub/new.txt", b"12345"));
    assert!(
        frames
            .iter()
            .any(|frame| frame.header.frame_type == FrameType::Digest),
        "{frames:?}"
    );
    assert_eq!(
        fs::read(dir.path().join("team/a/sub/new.txt")).unwrap(),
        b"12345"
    );
    assert!(!dir.path().join("sub").exists());
}

// === Exec: the allowlist, the working directory, max_commands ===

#[test]
fn the_exec_allowlist_compares_argv_element_by_element() {
    let dir = root("access-allow");
    let (mut h, mut io, flags) = connect(dir.path(), Peer::LOCAL, RUNNER);
    assert!(flags.contains(SessionFlags::EXEC));
    let refused: [&[&[u8]]; 6] = [
        &[b"sh", b"-c", b"echo hi"],
        &[b"/bin/echo", b"hi"],
        &[b"./echo"],
        &[b"git", b"push"],
        &[b"git"],
        &[b"echo hi"],
    ];
    for (n, argv) in refused.iter().enumerate() {
        let stream = 1 + 2 * n as u32;
        let frames = send(&mut h, &mut io, &exec(stream, argv, ""));
        forbidden(
            &frames,
            stream,
            &["credential \"runner\"", "may not run this command"],
        );
    }
    assert!(h.children().all().is_empty(), "nothing spawned");
    let frames = send(
        &mut h,
        &mut io,
        &exec(21, &[b"git", b"status", b"-s"], "sub"),
    );
    assert_eq!(
        frames[0].header.frame_type,
        FrameType::Started,
        "{frames:?}"
    );
    assert_eq!(
        h.children().nth(0).argv,
        [b"git".to_vec(), b"status".to_vec(), b"-s".to_vec()]
    );
    assert_eq!(
        h.children().nth(0).cwd,
        "team/a/sub",
        "its working directory is in its scope"
    );
    let frames = send(&mut h, &mut io, &exec(23, &[b"echo"], ""));
    assert_eq!(
        frames[0].header.frame_type,
        FrameType::Started,
        "{frames:?}"
    );
    assert_eq!(
        h.children().nth(1).cwd,
        "team/a",
        "the scope's root by default"
    );
}

/// Command `n` of `h` closes its pipes and exits 0.
fn finish(h: &mut ConnHarness, io: &mut MemoryIo, n: usize) {
    let index = h.children().nth(n).index;
    h.children()
        .nth(n)
        .close(OutputPipe::Stdout)
        .close(OutputPipe::Stderr)
        .exit(Termination::Exited(0));
    h.child_event(io, index, ChildSource::Exit);
    h.child_event(io, index, ChildSource::Stdout);
    h.child_event(io, index, ChildSource::Stderr);
}

#[test]
fn max_commands_counts_across_connections_and_every_end_gives_back() {
    let dir = root("access-max");
    let (mut one, mut io_one, _) = connect(dir.path(), Peer::LOCAL, RUNNER);
    // A second connection to the same server: the same access rules (`Access` clones share
    // their credentials, as the reactor's one `Access` is shared by every connection).
    let mut two = ConnHarness::framed(Limits::default())
        .with_files(dir.path())
        .with_exec(b"not-the-access-file-0123");
    two.access = one.access.clone();
    let mut io_two = MemoryIo::new();
    let mut wire = Vec::new();
    Hello::with_credentials(RUNNER).encode(&mut wire);
    send(&mut two, &mut io_two, &wire);
    let grant = one.conn.grant().unwrap().clone();
    assert!(grant.shares_usage(two.conn.grant().unwrap()));
    let started = |frames: &[OwnedFrame]| frames[0].header.frame_type == FrameType::Started;
    assert!(started(&send(
        &mut one,
        &mut io_one,
        &exec(1, &[b"echo"], "")
    )));
    assert!(started(&send(
        &mut two,
        &mut io_two,
        &exec(1, &[b"echo"], "")
    )));
    let frames = send(&mut one, &mut io_one, &exec(3, &[b"echo"], ""));
    forbidden(
        &frames,
        3,
        &["credential \"runner\"", "max_commands", "runs 2"],
    );
    assert_eq!(grant.commands(), 2);
    // An exit gives one back.
    finish(&mut one, &mut io_one, 0);
    io_one.take_frames();
    assert_eq!(grant.commands(), 1);
    assert!(started(&send(
        &mut one,
        &mut io_one,
        &exec(5, &[b"echo"], "")
    )));
    // A client's ERROR on the stream (the command killed) gives one back.
    let mut abandon = Vec::new();
    ErrorMessage::new(ErrorCode::Other(1000), "enough").encode(5, &mut abandon);
    send(&mut one, &mut io_one, &abandon);
    assert_eq!(grant.commands(), 1);
    // And so does a connection's close.
    two.release();
    assert_eq!(grant.commands(), 0);
    // A spawn that fails takes nothing.
    one.children()
        .refuse_next(monoreactor::children::SpawnError::NotFound(
            "no such program".into(),
        ));
    let frames = send(&mut one, &mut io_one, &exec(7, &[b"echo"], ""));
    assert_eq!(refusal(&frames, 7).0, ErrorCode::NotFound);
    assert_eq!(grant.commands(), 0);
}

// === The quota ===

#[test]
fn a_put_over_the_quota_is_refused_before_a_byte_and_leaves_nothing() {
    let dir = root("access-quota");
    let (mut h, mut io, _) = connect(dir.path(), Peer::LOCAL, WRITER);
    let grant = h.conn.grant().unwrap().clone();
    let frames = send(&mut h, &mut io, &upload(1, "six.txt", &[b'x'; 600]));
    assert!(
        frames
            .iter()
            .any(|frame| frame.header.frame_type == FrameType::Digest)
    );
    assert_eq!(grant.stored(), 600);
    let before = tree(dir.path());
    // 600 + 500 > 1000: refused from the PUT's declared size, before any DATA.
    let frames = send(&mut h, &mut io, &put(3, 500, Some([1; 32]), "big.txt"));
    forbidden(
        &frames,
        3,
        &["credential \"writer\"", "quota", "1000", "600"],
    );
    assert_eq!(tree(dir.path()), before, "nothing stored");
    let partials = fs::read_dir(dir.path().join("team/a"))
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with(".monoreactor-")
        })
        .count();
    assert_eq!(partials, 0, "no partial left");
    // An upload that fails gives its reservation back, and leaves no partial either.
    let mut wire = put(5, 300, Some([2; 32]), "bad.txt");
    wire.extend(Frame::new(FrameType::Data, Flags::NONE, 5, &[b'y'; 300]).to_vec());
    wire.extend(Frame::new(FrameType::Digest, Flags::END_STREAM, 5, &[2; 32]).to_vec());
    let frames = send(&mut h, &mut io, &wire);
    assert_eq!(refusal(&frames, 5).0, ErrorCode::HashMismatch);
    assert_eq!(grant.stored(), 600);
    // An overwrite counts the difference; a DELETE gives the file's size back.
    send(&mut h, &mut io, &upload(7, "six.txt", &[b'z'; 100]));
    assert_eq!(grant.stored(), 100);
    send(
        &mut h,
        &mut io,
        &path_request(FrameType::Delete, 9, "six.txt"),
    );
    assert_eq!(grant.stored(), 0);
    let frames = send(&mut h, &mut io, &upload(11, "full.txt", &[b'f'; 1000]));
    assert!(
        frames
            .iter()
            .any(|frame| frame.header.frame_type == FrameType::Digest)
    );
    assert_eq!(grant.stored(), 1000);
}

#[test]
fn an_interrupted_upload_under_a_quota_leaves_no_partial_to_fill_the_disk_with() {
    let dir = root("access-partial");
    let (mut h, mut io, _) = connect(dir.path(), Peer::LOCAL, WRITER);
    let grant = h.conn.grant().unwrap().clone();
    let mut wire = put(1, 500, Some([3; 32]), "half.txt");
    wire.extend(Frame::new(FrameType::Data, Flags::NONE, 1, &[b'h'; 200]).to_vec());
    send(&mut h, &mut io, &wire);
    assert_eq!(grant.stored(), 500, "reserved while it runs");
    h.release();
    assert_eq!(grant.stored(), 0, "given back when it ends unfinished");
    let leftovers: Vec<_> = fs::read_dir(dir.path().join("team/a"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name.starts_with(".monoreactor-partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// === A client certificate's key ===

#[test]
fn a_verified_client_key_authenticates_without_credentials() {
    let dir = root("access-key");
    let peer = Peer {
        client_key: Some(KEY),
        ..over_tls()
    };
    let (mut h, mut io, flags) = connect(dir.path(), peer, b"");
    assert_eq!(flags, SessionFlags::AUTHENTICATED.with(SessionFlags::FILES));
    assert_eq!(h.conn.grant().unwrap().name, "laptop");
    let frames = send(&mut h, &mut io, &get(1, "top.txt"));
    assert_eq!(frames[0].header.frame_type, FrameType::FileInfo);
    let frames = send(&mut h, &mut io, &path_request(FrameType::Mkdir, 3, "d"));
    forbidden(&frames, 3, &["credential \"laptop\"", "files = \"read\""]);

    // Another key is not a credential: echo only.
    let stranger = Peer {
        client_key: Some(KeyFingerprint([1; 32])),
        ..over_tls()
    };
    let (mut h, mut io, flags) = connect(dir.path(), stranger, b"");
    assert_eq!(flags, SessionFlags::NONE);
    let frames = send(&mut h, &mut io, &get(1, "top.txt"));
    assert_eq!(refusal(&frames, 1).0, ErrorCode::Unauthenticated);
}

#[test]
fn a_wrong_token_is_refused_whatever_the_key() {
    let mut h = ConnHarness::framed(Limits::default());
    h.access = access();
    h.peer = Peer {
        client_key: Some(KEY),
        ..over_tls()
    };
    let mut io = MemoryIo::new();
    let mut wire = Vec::new();
    Hello::with_credentials(b"a-wrong-token-0123456789").encode(&mut wire);
    io.push(&wire);
    h.event(&mut io, true, true);
    let frames = io.take_frames();
    assert_eq!(refusal(&frames, 0).0, ErrorCode::AuthFailed);
}

// === What a grant costs ===

#[test]
fn the_grant_costs_an_idle_connection_nothing() {
    // Measured before access files: 48 bytes. The grant lives in the stream table, allocated
    // only for connections authenticated by an access file.
    assert_eq!(std::mem::size_of::<Connection>(), 48);
}
