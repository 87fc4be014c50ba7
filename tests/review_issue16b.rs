//! Review of the issue-16 changes of the day (3eb82dd unnamed small uploads and batched disk
//! completions, the `pattrs` merge's SET_ATTRS and STAT mode, the `loose` merge's UPLOAD_BUSY
//! retries), against a real server over loopback. A test named for a defect failed on the
//! code it was written against; the others pin down what was checked and held.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use monoreactor::proto::files::{PutAttrs, PutFlags, SetAttrsRequest};
use monoreactor::proto::{ErrorCode, Flags, Frame, FrameType};
use support::files::*;

/// 2001-09-09 01:46:40 UTC and some nanoseconds: an mtime no test run could give by itself.
const OLD: i64 = 1_000_000_000_123_456_789;

/// `path`'s mode, setuid/setgid/sticky included.
fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A SET_ATTRS frame with a hand-built payload (which may be short or not UTF-8).
fn set_attrs_raw(stream: u32, payload: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::SetAttrs, Flags::NONE, stream, payload).to_vec()
}

/// The answer to a SET_ATTRS of `payload`: `Ok` for DONE, else the ERROR's code and text.
fn set_attrs_payload(conn: &mut FileConn, payload: &[u8]) -> Result<(), Refusal> {
    let stream = conn.new_stream();
    conn.send(&set_attrs_raw(stream, payload));
    let frame = conn.recv();
    assert_eq!(frame.header.stream, stream, "{}", support::describe(&frame));
    match refusal(&frame) {
        Some(refused) => Err(refused),
        None => {
            expect_frame(&frame, FrameType::Done, true);
            Ok(())
        }
    }
}

/// The answer to a SET_ATTRS of `path`.
fn set_attrs(conn: &mut FileConn, path: &str, mode: u32, mtime_ns: i64) -> Result<(), Refusal> {
    let request = SetAttrsRequest {
        attrs: PutAttrs { mode, mtime_ns },
        path,
    };
    set_attrs_payload(conn, &request.to_payload())
}

/// Finding (SET_ATTRS, security): it is the only request that changes an inode in place
/// (PUT renames a new file over the name, DELETE removes the name), so it alone reaches
/// through a hard link: a name in the root linked to a file outside it (or outside the
/// credential's scope) let any writing client chmod and re-date that file, which the
/// symlink checks never see. Refused now, and the file outside keeps its mode and mtime.
#[test]
fn set_attrs_refuses_a_file_with_another_hard_link_and_leaves_the_outside_alone() {
    let server = FileServer::start(&[]);
    let secret = server.outside().join("secret");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    fs::hard_link(&secret, server.at("innocent")).unwrap();
    let before = (mode(&secret), mtime_ns(&secret));
    let mut conn = server.conn();

    let refused = set_attrs(&mut conn, "innocent", 0o4777, OLD).expect_err("refused");
    assert_eq!(refused.0, ErrorCode::BadRequest, "{}", refused.1);
    assert!(refused.1.contains("innocent"), "{}", refused.1);
    assert_eq!(
        (mode(&secret), mtime_ns(&secret)),
        before,
        "the outside file"
    );
    // A file of its own still takes them; a directory (whose link count is always more
    // than one) too.
    fs::write(server.at("own"), b"own").unwrap();
    ok(
        set_attrs(&mut conn, "own", 0o640, OLD),
        "a file of one link",
    );
    assert_eq!(
        (mode(&server.at("own")), mtime_ns(&server.at("own"))),
        (0o640, OLD)
    );
    fs::create_dir_all(server.at("d/e")).unwrap();
    ok(set_attrs(&mut conn, "d", 0o750, OLD), "a directory");
    assert_eq!(mode(&server.at("d")), 0o750);
    server.assert_nothing_outside("after SET_ATTRS");
}

/// Checked and held: SET_ATTRS's bad input — a payload shorter than its 12 fixed bytes, a
/// path that is not UTF-8, one longer than any path, a reserved name (the hash index, a
/// partial), `..`, an absolute path — each gets an ERROR on its stream, and the connection
/// goes on.
#[test]
fn set_attrs_bad_input_gets_an_error_on_its_stream_and_the_connection_goes_on() {
    let server = FileServer::start(&[]);
    fs::write(server.at("f"), b"f").unwrap();
    let index_mode = {
        // The index exists once a GET hashed something.
        let mut conn = server.conn();
        conn.get("f", 0).unwrap();
        mode(&server.root().join(HASH_INDEX))
    };
    let file_before = (mode(&server.at("f")), mtime_ns(&server.at("f")));
    let mut conn = server.conn();
    let head = |path: &[u8]| {
        let mut payload = vec![0, 0, 0o7, 0o77, 0, 0, 0, 0, 0, 0, 0, 1];
        payload.extend_from_slice(path);
        payload
    };
    let huge = vec![b'a'; 70_000];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty payload", Vec::new()),
        ("11 bytes", vec![0; 11]),
        ("not UTF-8", head(b"f\xff")),
        ("huge path", head(&huge)),
        ("the hash index", head(HASH_INDEX.as_bytes())),
        ("a partial", head(b".monoreactor-partial-0123456789abcdef")),
        ("dot-dot", head(b"../f")),
        ("absolute", head(b"/f")),
        ("NUL", head(b"f\0")),
    ];
    for (what, payload) in cases {
        let refused = set_attrs_payload(&mut conn, &payload).expect_err(what);
        assert!(
            matches!(
                refused.0,
                ErrorCode::BadRequest | ErrorCode::OutsideRoot | ErrorCode::FrameTooLarge
            ),
            "{what}: {refused:?}"
        );
    }
    conn.echo(b"still here");
    assert_eq!(mode(&server.root().join(HASH_INDEX)), index_mode);
    assert_eq!(
        (mode(&server.at("f")), mtime_ns(&server.at("f"))),
        file_before
    );
}

/// Checked and held (3eb82dd, disk completions batched per connection): many unhashed
/// uploads pipelined on one connection, and a second connection's interleaved, each get
/// exactly one DIGEST on their own stream with the right hash — no completion lost, none
/// delivered to the wrong connection — every file lands whole, and nothing of the server's
/// own is left in the directory.
#[test]
fn pipelined_unnamed_uploads_on_two_connections_each_get_their_own_digest() {
    // 32 transfers a connection (the most), two connections: 64, the server's default.
    let server = FileServer::start(&["--max-commands-per-conn", "32"]);
    fs::create_dir(server.at("many")).unwrap();
    let mut conns = [server.conn(), server.conn()];
    const FILES: usize = 320;
    const WAVE: usize = 32;
    let data = |at: usize| random_bytes(at as u64, 1 + (at * 37) % 5000);
    for wave in (0..FILES).step_by(2 * WAVE) {
        let mut streams = [Vec::new(), Vec::new()];
        for at in wave..(wave + 2 * WAVE).min(FILES) {
            let side = at % 2;
            let bytes = data(at);
            let stream = conns[side].new_stream();
            let flags = if at + 2 >= FILES {
                PutFlags::SYNC_FS
            } else {
                PutFlags::DEFER_SYNC
            };
            let path = format!("many/f{at}");
            let mut wire = put_frame(stream, path.as_bytes(), bytes.len() as u64, flags, None);
            wire.extend_from_slice(&data_frame(stream, &bytes));
            wire.extend_from_slice(&digest_frame(stream, &blake3_of(&bytes)));
            conns[side].send(&wire);
            streams[side].push((stream, at));
        }
        for (side, conn) in conns.iter_mut().enumerate() {
            let mut digests = std::collections::HashMap::new();
            let expected = streams[side].len();
            while digests.len() < expected {
                let frame = conn.recv();
                match frame.header.frame_type {
                    FrameType::PutReady => {}
                    FrameType::Digest => {
                        assert!(frame.header.flags.contains(Flags::END_STREAM));
                        let again = digests.insert(frame.header.stream, frame.payload.clone());
                        assert!(again.is_none(), "two DIGESTs on {}", frame.header.stream);
                    }
                    _ => panic!("unexpected {}", support::describe(&frame)),
                }
            }
            for &(stream, at) in &streams[side] {
                assert_eq!(
                    digests.get(&stream).map(Vec::as_slice),
                    Some(&blake3_of(&data(at))[..]),
                    "stream {stream} (file {at}) on connection {side}"
                );
            }
        }
    }
    for conn in &mut conns {
        conn.echo(b"nothing else queued");
    }
    for at in 0..FILES {
        assert_eq!(
            fs::read(server.at(&format!("many/f{at}"))).unwrap(),
            data(at)
        );
    }
    assert_eq!(reserved_entries(&server.at("many")), Vec::new());
}

/// Checked and held (3eb82dd): an unnamed upload over an existing file, over a hard-linked
/// one, and onto a new name, each leave the file whole with one link of its own; the old
/// file's other link keeps the old bytes; nothing of the server's is left.
#[test]
fn unnamed_uploads_replace_or_create_without_touching_other_links() {
    let server = FileServer::start(&[]);
    fs::write(server.at("old"), b"old bytes").unwrap();
    fs::write(server.at("shared"), b"shared bytes").unwrap();
    fs::hard_link(server.at("shared"), server.at("shared-too")).unwrap();
    let mut conn = server.conn();
    for (path, bytes) in [
        ("old", &b"new"[..]),
        ("shared", b"replaced"),
        ("fresh", b"fresh"),
    ] {
        ok(conn.put_unhashed(path, bytes), path);
        assert_eq!(fs::read(server.at(path)).unwrap(), bytes, "{path}");
        assert_eq!(fs::metadata(server.at(path)).unwrap().nlink(), 1, "{path}");
    }
    assert_eq!(fs::read(server.at("shared-too")).unwrap(), b"shared bytes");
    assert_eq!(reserved_entries(server.root()), Vec::new());
}

/// Checked and held (`pattrs`): what the server says about SET_ATTRS — an access line for
/// each (its verb, the path, DONE or the refusal's code) and the request counter by kind.
#[test]
fn set_attrs_has_its_access_lines_and_its_counter() {
    let server = FileServer::start(&["-v", "--metrics", "127.0.0.1:0"]);
    fs::write(server.at("f"), b"f").unwrap();
    let mut conn = server.conn();
    ok(set_attrs(&mut conn, "f", 0o600, OLD), "a file");
    let refused = set_attrs(&mut conn, "missing", 0o600, OLD).expect_err("not there");
    assert_eq!(refused.0, ErrorCode::NotFound);
    drop(conn);
    let lines = support::retry(std::time::Duration::from_secs(5), || {
        let lines: Vec<String> = server
            .stderr_text()
            .lines()
            .filter(|line| line.contains("[monoreactor::access]") && line.contains("SET_ATTRS"))
            .map(str::to_string)
            .collect();
        (lines.len() >= 2).then_some(lines)
    })
    .expect("two SET_ATTRS access lines");
    assert!(
        lines.iter().any(|line| line.contains("SET_ATTRS f")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.contains("SET_ATTRS missing") && line.contains("NOT_FOUND")),
        "{lines:?}"
    );
    let metrics = server.addr("metrics").expect("a metrics port");
    let mut stream = std::net::TcpStream::connect(metrics).unwrap();
    use std::io::{Read, Write};
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer
            .lines()
            .any(|line| line == "monoreactor_requests_total{kind=\"set_attrs\"} 2"),
        "{answer}"
    );
}

/// A proxy in front of `server` that forwards frames both ways, showing each to `up` (client
/// to server) or `down` (server to client) just before forwarding it. Serves one connection.
fn watching_proxy(
    server: &FileServer,
    up: impl Fn(&[u8]) + Send + 'static,
    down: impl Fn(&[u8]) + Send + 'static,
) -> String {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    fn pump(mut from: TcpStream, mut to: TcpStream, see: impl Fn(&[u8])) {
        let mut header = [0; 12];
        while from.read_exact(&mut header).is_ok() {
            let len = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
            let mut frame = header.to_vec();
            frame.resize(12 + len as usize, 0);
            if from.read_exact(&mut frame[12..]).is_err() {
                break;
            }
            see(&frame);
            if to.write_all(&frame).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let upstream = server.framed();
    std::thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else {
            return;
        };
        let Ok(real) = TcpStream::connect(upstream) else {
            return;
        };
        let (client2, real2) = (client.try_clone().unwrap(), real.try_clone().unwrap());
        std::thread::spawn(move || pump(client, real, up));
        std::thread::spawn(move || pump(real2, client2, down));
    });
    addr
}

/// A frame's stream.
fn stream_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]])
}

/// A [`watching_proxy`] that records, for each PUT the client sends, how many PUTs were
/// unanswered with it (its own included): the window the client kept. Each answer that ends
/// a stream is held 10 ms.
fn window_recorder(server: &FileServer) -> (String, std::sync::Arc<std::sync::Mutex<Vec<usize>>>) {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    let samples = Arc::new(Mutex::new(Vec::new()));
    let open: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let (samples2, open2) = (Arc::clone(&samples), Arc::clone(&open));
    let addr = watching_proxy(
        server,
        move |frame| {
            if frame[0] == FrameType::Put.to_u8() {
                let mut open = open.lock().unwrap();
                open.insert(stream_of(frame));
                samples2.lock().unwrap().push(open.len());
            }
        },
        move |frame| {
            if frame[1] & Flags::END_STREAM.bits() != 0 {
                // Answers come a little late, as over any real network: on loopback the
                // server would answer each PUT before the proxy even read the next.
                std::thread::sleep(std::time::Duration::from_millis(10));
                open2.lock().unwrap().remove(&stream_of(frame));
            }
        },
    );
    (addr, samples)
}

/// Finding (`loose`, performance): an upload refused with UPLOAD_BUSY narrowed `put -r`'s
/// window to what was still in flight, as a LIMIT_REACHED does — but busy says nothing
/// about a limit, and the window never grows back: each refusal took one more off it (down to
/// 1 once the retry waits alone at the head of the queue), for the rest of the tree.
/// Here the busy file is the first of 65; once it is stored, the 64 small ones behind it
/// must go as many at a time as before it.
#[test]
fn a_busy_upload_leaves_the_tree_window_as_it_was() {
    let server = FileServer::start(&[]);
    let cli = ClientDir::new(&server, "busy-window");
    fs::create_dir(cli.local("src")).unwrap();
    let big = random_bytes(5, 300 << 10);
    fs::write(cli.local("src/a-big"), &big).unwrap();
    for i in 0..64 {
        fs::write(cli.local(&format!("src/b-{i:02}")), format!("small {i}")).unwrap();
    }
    fs::create_dir(server.at("dst")).unwrap();
    // Another process holds the big file's upload (its partial, locked), for a while.
    let id = monoreactor::internal::upload_id("dst/a-big", big.len() as u64, &blake3_of(&big));
    let partial =
        fs::File::create(server.at(&format!("dst/.monoreactor-partial-{id:016x}"))).unwrap();
    {
        use std::os::fd::AsRawFd;
        // SAFETY: plain data, all-zero is valid (whole file, l_pid 0 as OFD locks require).
        let mut request: libc::flock = unsafe { std::mem::zeroed() };
        request.l_type = libc::F_WRLCK as libc::c_short;
        request.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: fcntl on an open descriptor with a valid flock.
        let rc = unsafe { libc::fcntl(partial.as_raw_fd(), libc::F_OFD_SETLK, &request) };
        assert_eq!(rc, 0, "lock: {}", std::io::Error::last_os_error());
    }
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(partial);
    });
    let (proxy, samples) = window_recorder(&server);
    let mut cli = cli;
    cli.addr = proxy;
    let put = cli.exits_with(0, "put", &["-r", "src/.", "dst"]);
    release.join().unwrap();
    assert_eq!(
        fs::read(server.at("dst/a-big")).unwrap(),
        big,
        "{}",
        put.stderr
    );
    assert_eq!(fs::read(server.at("dst/b-63")).unwrap(), b"small 63");
    let samples = samples.lock().unwrap().clone();
    // The last PUT carries the sync of all and goes alone; the 40 before it came after the
    // first refusal (the big file's PUT is the first sent, and answered at once).
    assert!(samples.len() > 64, "{samples:?}");
    assert!(
        samples[..8].iter().any(|&open| open > 1),
        "no window at all: {samples:?}"
    );
    let late = &samples[samples.len() - 41..samples.len() - 1];
    let window = monoreactor::client::tree::DEFAULT_WINDOW.min(16);
    assert!(
        late.iter().max().copied().unwrap_or(0) >= window,
        "after the busy upload, the window stayed narrowed below {window}: {samples:?}"
    );
}

/// Finding (durability of `put -r`): the file that carries the sync of all (`SYNC_FS`, sent
/// last) can fail — the server refuses it (here: a directory at its name), or it cannot be
/// read here — and then no sync was ever asked for: every other file, stored with
/// `DEFER_SYNC` and reported stored, stayed unsynced (PROTOCOL.md 6.4: "may be missing" after
/// a crash). Now a file already stored goes again, once, to carry the sync.
#[test]
fn a_tree_whose_sync_carrier_fails_still_gets_a_sync() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let server = FileServer::start(&[]);
    let mut cli = ClientDir::new(&server, "sync-carrier");
    fs::create_dir(cli.local("src")).unwrap();
    for name in ["a", "b", "c"] {
        fs::write(cli.local(&format!("src/{name}")), name.repeat(10)).unwrap();
    }
    fs::write(cli.local("src/zz"), b"the last one").unwrap();
    fs::create_dir_all(server.at("dst/zz/in-the-way")).unwrap();
    // Stream -> the PUT's flags, and stream -> the type of the frame that ended it.
    let puts: Arc<Mutex<HashMap<u32, u8>>> = Arc::default();
    let ends: Arc<Mutex<HashMap<u32, u8>>> = Arc::default();
    let (puts2, ends2) = (Arc::clone(&puts), Arc::clone(&ends));
    cli.addr = watching_proxy(
        &server,
        move |frame| {
            if frame[0] == FrameType::Put.to_u8() {
                let flags = frame[12 + monoreactor::proto::files::put_field::FLAGS];
                puts2.lock().unwrap().insert(stream_of(frame), flags);
            }
        },
        move |frame| {
            if frame[1] & Flags::END_STREAM.bits() != 0 {
                ends2.lock().unwrap().insert(stream_of(frame), frame[0]);
            }
        },
    );
    let put = cli.exits_with(1, "put", &["-r", "src/.", "dst"]);
    assert!(put.stderr.contains("zz"), "{}", put.stderr);
    assert_eq!(fs::read(server.at("dst/a")).unwrap(), b"aaaaaaaaaa");
    let (puts, ends) = (puts.lock().unwrap(), ends.lock().unwrap());
    let synced: Vec<u32> = puts
        .iter()
        .filter(|&(_, &flags)| flags & PutFlags::SYNC_FS.bits() != 0)
        .filter(|&(stream, _)| ends.get(stream) == Some(&FrameType::Digest.to_u8()))
        .map(|(&stream, _)| stream)
        .collect();
    assert_eq!(
        synced.len(),
        1,
        "one SYNC_FS upload stored: PUTs {puts:?}, ends {ends:?}\n{}",
        put.stderr
    );
}

/// Checked and held (3eb82dd): the hash cache stays right for unnamed uploads, which never
/// write it. A file hashed by a GET (its hash cached), then replaced by an unnamed upload of
/// the same size, is never reported by STAT with the old hash: the new file is a new inode
/// with a new ctime, which the cached entry does not match.
#[test]
fn an_unnamed_upload_over_a_cached_file_never_leaves_the_old_hash_in_stat() {
    let server = FileServer::start(&[]);
    let old = random_bytes(61, 4096);
    let new = random_bytes(62, 4096);
    let mut conn = server.conn();
    ok(conn.put_unhashed("f", &old), "the old file");
    // Hashed well after its last change, so that the cache trusts it.
    std::thread::sleep(std::time::Duration::from_millis(
        (monoreactor::internal::RACY_WINDOW_NS / 1_000_000 + 50) as u64,
    ));
    ok(conn.get("f", 0), "GET hashes it");
    assert_eq!(
        ok(conn.stat("f"), "STAT").hash,
        Some(blake3_of(&old)),
        "cached"
    );
    ok(conn.put_unhashed("f", &new), "the new file, same size");
    let hash = ok(conn.stat("f"), "STAT").hash;
    assert!(
        hash.is_none() || hash == Some(blake3_of(&new)),
        "STAT after the replace: {hash:?}"
    );
    assert_eq!(fs::read(server.at("f")).unwrap(), new);
}

/// Finding (3eb82dd, error text): an unnamed upload has no name in its directory, so the
/// directory can be removed while the upload is received (a DELETE, or `rmdir` on the
/// server). The commit then failed with IO_FAILED "cannot name the upload (is /proc
/// mounted? was its partial removed?)", which points the user at the wrong thing; it says
/// now that the directory is gone (NOT_FOUND), as a PUT into a missing directory does.
#[test]
fn an_upload_whose_directory_is_removed_meanwhile_says_so() {
    let server = FileServer::start(&[]);
    fs::create_dir(server.at("d")).unwrap();
    let bytes = random_bytes(71, 10_000);
    let mut conn = server.conn();
    let stream = conn.new_stream();
    ok(
        conn.begin_put(stream, b"d/f", bytes.len() as u64, PutFlags::NONE, None),
        "PUT_READY",
    );
    conn.send_data(stream, &bytes);
    // Nothing in it has a name yet: it goes.
    fs::remove_dir(server.at("d")).unwrap();
    let refused = conn
        .finish_put(stream, &blake3_of(&bytes))
        .expect_err("nowhere to store it");
    assert_eq!(refused.0, ErrorCode::NotFound, "{}", refused.1);
    assert!(refused.1.contains("d/f"), "{}", refused.1);
    assert!(!refused.1.contains("/proc"), "{}", refused.1);
    conn.echo(b"the connection goes on");
}

/// Finding (3eb82dd, performance): a small file is meant to go whole, unnamed, without a
/// declared hash or RESUME (nothing to resume in it; the server then links it straight into
/// place). With `--continue` every file is hashed first, and that hash made the small ones go
/// the old way: declared, with RESUME — a named partial on the server and a round trip for
/// PUT_READY before its DATA, per small file, in exactly the run that re-sends the most.
#[test]
fn continue_sends_small_files_whole_and_unnamed_too() {
    use std::sync::{Arc, Mutex};
    let server = FileServer::start(&[]);
    let mut cli = ClientDir::new(&server, "continue-small");
    fs::create_dir(cli.local("src")).unwrap();
    for i in 0..12 {
        fs::write(cli.local(&format!("src/s-{i:02}")), format!("small {i}")).unwrap();
    }
    let big = random_bytes(9, 300 << 10);
    fs::write(cli.local("src/t-big"), &big).unwrap();
    fs::create_dir(server.at("dst")).unwrap();
    // Already there: skipped.
    fs::write(server.at("dst/s-00"), b"small 0").unwrap();
    let flags: Arc<Mutex<Vec<u8>>> = Arc::default();
    let flags2 = Arc::clone(&flags);
    cli.addr = watching_proxy(
        &server,
        move |frame| {
            if frame[0] == FrameType::Put.to_u8() {
                flags2
                    .lock()
                    .unwrap()
                    .push(frame[12 + monoreactor::proto::files::put_field::FLAGS]);
            }
        },
        |_| {},
    );
    let put = cli.exits_with(0, "put", &["-r", "--continue", "src/.", "dst"]);
    for i in 0..12 {
        assert_eq!(
            fs::read(server.at(&format!("dst/s-{i:02}"))).unwrap(),
            format!("small {i}").as_bytes(),
            "{}",
            put.stderr
        );
    }
    assert_eq!(fs::read(server.at("dst/t-big")).unwrap(), big);
    let flags = flags.lock().unwrap();
    let declared = PutFlags::HASH_DECLARED.bits() | PutFlags::RESUME.bits();
    let hashed = flags.iter().filter(|&&bits| bits & declared != 0).count();
    // 11 small files and the big one went; only the big one resumable.
    assert_eq!(flags.len(), 12, "{flags:?}");
    assert_eq!(hashed, 1, "PUT flags {flags:?}");
}
