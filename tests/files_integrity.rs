//! What a GET's FILE_INFO and DIGEST vouch for, against the real binary over loopback: a
//! cached hash must never outlive the content it was computed for (issue 12 §2), whatever the
//! timestamps say, and a GET whose file changes under it ends with an error rather than a
//! DIGEST for bytes the file no longer has.

mod support;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::thread;
use std::time::Duration;

use monoreactor::proto::{ErrorCode, FrameType};
use support::files::*;
use support::*;

/// Past the server's racy window (100 ms): a hash computed now is trusted from then on.
const SETTLE: Duration = Duration::from_millis(250);

/// GETs `path` whole until its hash is cached (STAT shows it), so a later GET takes the
/// cached-hash path.
#[track_caller]
fn cache_hash_of(conn: &mut FileConn, path: &str, content: &[u8]) {
    let whole = ok(conn.get(path, 0), "the first GET");
    assert_eq!(whole.received_hash, blake3_of(content));
    assert_eq!(whole.digest, blake3_of(content));
    assert_eq!(
        ok(conn.stat(path), "STAT after a GET").hash,
        Some(blake3_of(content)),
        "precondition: the hash is cached"
    );
}

// === A content change that keeps size and mtime ===

#[test]
fn a_resumed_get_after_an_in_place_change_with_the_mtime_restored_gets_the_current_hash() {
    let server = FileServer::start(&[]);
    let old = random_bytes(12, MIB);
    fs::write(server.at("f"), &old).unwrap();
    thread::sleep(SETTLE);
    let mut conn = server.conn();
    cache_hash_of(&mut conn, "f", &old);

    // Bytes 100..200 change; size and mtime (to the nanosecond) stay as they were.
    let path = server.at("f");
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let before_ns = mtime_ns(&path);
    let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
    let mut new = old.clone();
    for byte in &mut new[100..200] {
        *byte ^= 0x5a;
    }
    file.write_all_at(&new[100..200], 100).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);
    assert_eq!(mtime_ns(&path), before_ns, "the mtime is restored exactly");
    assert_eq!(fs::read(&path).unwrap(), new);

    // A client holding the old first 64 KiB resumes.
    let held = 64 << 10;
    let tail = ok(conn.get("f", held as u64), "the resumed GET");
    assert_eq!(tail.bytes, new[held..], "the tail is unchanged");
    let spliced = [&old[..held], &tail.bytes[..]].concat();
    assert_ne!(
        hex(&tail.digest),
        hex(&blake3_of(&spliced)),
        "the DIGEST vouches for the old prefix plus the tail: a file the server no longer has"
    );
    assert_eq!(
        hex(&tail.digest),
        hex(&blake3_of(&new)),
        "the DIGEST is the file's hash now"
    );
    if let Some(hash) = tail.info.hash {
        assert_eq!(hex(&hash), hex(&blake3_of(&new)), "FILE_INFO's hash");
    }
    if let Some(hash) = ok(conn.stat("f"), "STAT").hash {
        assert_eq!(hex(&hash), hex(&blake3_of(&new)), "STAT's hash");
    }
    // And the file can be downloaded whole, verified, at once.
    let whole = ok(conn.get("f", 0), "a whole GET");
    assert_eq!(whole.bytes, new);
    assert_eq!(whole.digest, whole.received_hash);
    // Once settled, the new hash is cached again.
    thread::sleep(SETTLE);
    ok(conn.get("f", 0), "a GET that caches the new hash");
    assert_eq!(ok(conn.stat("f"), "STAT").hash, Some(blake3_of(&new)));
}

// === A file truncated under a slow GET ===

/// Bytes waiting in `socket`'s receive queue (`FIONREAD`).
fn queued_in(socket: &std::net::TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD");
    n as usize
}

/// Sends GET on a new stream and reads FILE_INFO and DATA until `until` bytes are in, pausing
/// `pause` after each frame.
#[track_caller]
fn start_get(conn: &mut FileConn, path: &[u8], until: usize, pause: Duration) -> (u32, Vec<u8>) {
    let stream = conn.new_stream();
    conn.send(&get_frame(stream, path, 0));
    let info = conn.recv();
    assert_eq!(
        info.header.frame_type,
        FrameType::FileInfo,
        "{}",
        describe(&info)
    );
    let mut received = Vec::new();
    while received.len() < until {
        let frame = conn.recv();
        assert_eq!(
            frame.header.frame_type,
            FrameType::Data,
            "{}",
            describe(&frame)
        );
        received.extend_from_slice(&frame.payload);
        thread::sleep(pause);
    }
    (stream, received)
}

/// Reads the rest of a GET: the DATA bytes after `received`, and how it ended (its last frame,
/// or what ended the connection).
fn finish_get(
    conn: &mut FileConn,
    received: &mut Vec<u8>,
) -> Result<monoreactor::client::OwnedFrame, String> {
    loop {
        match conn.try_recv() {
            Ok(frame) if frame.header.frame_type == FrameType::Data => {
                received.extend_from_slice(&frame.payload);
            }
            Ok(frame) => return Ok(frame),
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// The only acceptable ends of a GET whose file changed under it: a DIGEST of exactly the
/// bytes received, which are a version the file really had (`versions`), or an error (on the
/// stream: IO_FAILED; or the connection closed mid-frame, when a range could not be sent).
#[track_caller]
fn assert_vouches_only_for_a_real_version(
    ended: &Result<monoreactor::client::OwnedFrame, String>,
    received: &[u8],
    versions: &[&[u8]],
) {
    match ended {
        Ok(frame) if frame.header.frame_type == FrameType::Digest => {
            assert_eq!(
                hex(frame.payload[..].try_into().unwrap()),
                hex(&blake3_of(received)),
                "a DIGEST that does not verify the {} bytes sent",
                received.len()
            );
            assert!(
                versions.contains(&received),
                "a verified DIGEST for {} bytes that were never the file",
                received.len()
            );
        }
        Ok(frame) => {
            let (code, text) = refusal(frame).expect("DIGEST or ERROR");
            assert_eq!(code, ErrorCode::IoFailed, "{text}");
        }
        Err(_) => {}
    }
}

/// Issue 12's report: a 24 MiB file with a cached hash, truncated to 1 MiB while a client that
/// has read 2 MiB reads slowly, and the client still receives 24 MiB and a verifying DIGEST.
/// Here the first 2 MiB are read at full speed, as a download starts, so the client's receive
/// buffer grows (`tcp_rmem`'s maximum is 32 MiB on many systems) and the server can hand the
/// whole file to the kernel before the truncation. Those bytes are then in socket buffers as
/// references to the page-cache pages `sendfile` sent (loopback copies nothing): truncation
/// takes the pages out of the file, not out of the buffers. They are the file as it was, and
/// the DIGEST verifies that version — which is right. What must never happen is a DIGEST for
/// anything else, or a DIGEST decided before the last byte left the server.
#[test]
fn a_file_truncated_under_a_slow_get_is_never_vouched_for() {
    let server = FileServer::start(&[]);
    let old = random_bytes(24, 24 * MIB);
    fs::write(server.at("big"), &old).unwrap();
    thread::sleep(SETTLE);
    let mut conn = server.conn();
    cache_hash_of(&mut conn, "big", &old);

    let (_, mut received) = start_get(&mut conn, b"big", 2 * MIB, Duration::ZERO);
    // Slow from here on: let the kernel take what it will.
    thread::sleep(Duration::from_millis(300));
    let in_flight = queued_in(conn.client().stream());
    fs::OpenOptions::new()
        .write(true)
        .open(server.at("big"))
        .unwrap()
        .set_len(MIB as u64)
        .unwrap();
    let read_before = received.len();
    let ended = finish_get(&mut conn, &mut received);
    eprintln!(
        "truncated after {read_before} bytes read, {in_flight} waiting in the client's \
         receive queue; {} more came; ended with {:?}",
        received.len() - read_before,
        ended.as_ref().map(describe)
    );
    assert_vouches_only_for_a_real_version(&ended, &received, &[&old]);
}

/// The same with a client whose receive buffer is small, so most of the file is still to be
/// sent when it changes, and a change that keeps the size: the file is rewritten in place from
/// 4 MiB on. The DATA still to be sent carry the new bytes; a DIGEST vouching for the old
/// file (the cached hash) would be a verified lie for neither version.
#[test]
fn a_file_rewritten_under_a_slow_get_ends_with_an_error_not_a_digest() {
    let server = FileServer::start(&[]);
    let old = random_bytes(25, 24 * MIB);
    fs::write(server.at("big"), &old).unwrap();
    thread::sleep(SETTLE);
    let mut conn = server.conn();
    cache_hash_of(&mut conn, "big", &old);
    socket2::SockRef::from(conn.client().stream())
        .set_recv_buffer_size(64 << 10)
        .unwrap();

    let (_, mut received) = start_get(&mut conn, b"big", 2 * MIB, Duration::from_millis(2));
    let mut new = old.clone();
    for byte in &mut new[4 * MIB..] {
        *byte = !*byte;
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .open(server.at("big"))
        .unwrap();
    file.write_all_at(&new[4 * MIB..], 4 * MIB as u64).unwrap();
    drop(file);
    let ended = finish_get(&mut conn, &mut received);
    eprintln!(
        "{} bytes received; ended with {:?}",
        received.len(),
        ended.as_ref().map(describe)
    );
    assert_vouches_only_for_a_real_version(&ended, &received, &[&old, &new]);
}

// === The index: damage costs a recomputation, never a wrong hash ===

#[test]
fn a_damaged_or_resized_index_only_costs_a_recomputation() {
    let mut server = FileServer::start(&[]);
    let data = random_bytes(26, 3 * MIB);
    fs::write(server.at("f"), &data).unwrap();
    thread::sleep(SETTLE);
    let mut conn = server.conn();
    cache_hash_of(&mut conn, "f", &data);
    let index = server.at(HASH_INDEX);
    let len = fs::metadata(&index).unwrap().len();

    // Every byte of the index overwritten: every slot's checksum fails.
    fs::write(&index, random_bytes(27, len as usize)).unwrap();
    assert_eq!(
        ok(conn.stat("f"), "STAT").hash,
        None,
        "a damaged slot is no entry"
    );
    let got = ok(conn.get("f", MIB as u64), "a GET over a damaged index");
    assert_eq!(got.digest, blake3_of(&data), "hashed again, from the file");
    assert_eq!(
        ok(conn.stat("f"), "STAT").hash,
        Some(blake3_of(&data)),
        "cached again"
    );

    // An index of the wrong size (another version's, or cut short), met by a new server.
    drop(conn);
    fs::OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap()
        .set_len(1000)
        .unwrap();
    server.restart(&[]);
    let mut conn = server.conn();
    assert_eq!(
        ok(conn.stat("f"), "STAT").hash,
        None,
        "a resized index starts empty"
    );
    assert_eq!(
        fs::metadata(&index).unwrap().len(),
        len,
        "and has its size again"
    );
    cache_hash_of(&mut conn, "f", &data);
    server.assert_nothing_outside("after the index was damaged");
}

#[test]
fn without_an_index_every_get_hashes_and_none_fails() {
    let server = FileServer::start(&[]);
    // Something the index cannot be is in its place, as a read-only root would refuse to
    // create it: the server goes on without a cache.
    fs::create_dir(server.at(HASH_INDEX)).unwrap();
    let data = random_bytes(28, 2 * MIB);
    fs::write(server.at("f"), &data).unwrap();
    thread::sleep(SETTLE);
    let mut conn = server.conn();
    for round in 0..2 {
        let got = ok(conn.get("f", 0), "GET without an index");
        assert_eq!(got.info.hash, None, "GET {round}: nothing cached");
        assert_eq!(got.digest, got.received_hash);
        assert_eq!(got.bytes, data);
    }
    assert_eq!(ok(conn.stat("f"), "STAT").hash, None);
    assert!(server.at(HASH_INDEX).is_dir(), "left as it was");
}

/// The decision for uploads: a PUT's rename moves the file's ctime after its bytes were
/// hashed, so the hash it verified is not cached; the first GET hashes the stored file (from
/// the disk) and caches that.
#[test]
fn a_fresh_upload_is_hashed_at_its_first_get_then_cached() {
    let server = FileServer::start(&[]);
    let data = random_bytes(29, MIB + 17);
    let mut conn = server.conn();
    assert_eq!(ok(conn.put("up", &data), "PUT"), blake3_of(&data));
    assert_eq!(ok(conn.stat("up"), "STAT after the PUT").hash, None);
    thread::sleep(SETTLE);
    let first = ok(conn.get("up", 0), "the first GET");
    assert_eq!(first.info.hash, None, "hashed during the first GET");
    assert_eq!(first.digest, blake3_of(&data));
    let second = ok(conn.get("up", 0), "the second GET");
    assert_eq!(
        second.info.hash,
        Some(blake3_of(&data)),
        "cached by the first"
    );
    assert_eq!(second.digest, second.received_hash);
}
