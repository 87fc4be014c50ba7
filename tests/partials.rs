//! Interrupted uploads are visible and removable: LIST shows each partial (kind PARTIAL, the
//! bytes held, the last write), DELETE removes one, and DELETE of a directory that holds only
//! partials removes them with it — but never one that is being received.

mod support;

use std::fs;
use std::time::Duration;

use monoreactor::proto::ErrorCode;
use monoreactor::proto::files::{FileKind, PutFlags};
use support::files::*;

const MIB: usize = 1 << 20;

/// Sends the first `sent` bytes of a declared PUT of `data` as `path`, then drops the
/// connection: the server keeps a partial.
fn interrupted(server: &FileServer, path: &str, data: &[u8], sent: usize) {
    let mut conn = server.conn();
    let stream = conn.new_stream();
    ok(
        conn.begin_put(
            stream,
            path.as_bytes(),
            data.len() as u64,
            PutFlags::NONE,
            Some(blake3_of(data)),
        ),
        "begin",
    );
    conn.send_data_in(stream, &data[..sent], MIB);
    conn.echo(b"written");
}

/// The partials LIST shows in `dir`, once the server has let go of them.
fn partials(conn: &mut FileConn, dir: &str) -> Vec<Entry> {
    ok(conn.list(dir), "list")
        .into_iter()
        .filter(|entry| entry.kind == FileKind::Partial)
        .collect()
}

#[test]
fn an_interrupted_upload_is_listed_and_can_be_removed() {
    let server = FileServer::start(&[]);
    fs::create_dir(server.at("d")).unwrap();
    let data = random_bytes(81, 2 * MIB);
    interrupted(&server, "d/f", &data, MIB + 7);
    let mut conn = server.conn();
    // The bytes sent are written by the server's disk helper, a moment after they arrive.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let listed = partials(&mut conn, "d");
        let held = listed.first().map(|entry| entry.size);
        if held == Some((MIB + 7) as u64) || std::time::Instant::now() >= deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].name.starts_with(".monoreactor-partial-"));
    assert_eq!(listed[0].size, (MIB + 7) as u64, "the bytes held");

    // GET, PUT or STAT of it stay refused: only DELETE may name it.
    let path = format!("d/{}", listed[0].name);
    assert!(matches!(conn.stat(&path), Err((ErrorCode::BadRequest, _))));
    let released = retry_busy_upload(Duration::from_secs(10), || conn.delete(&path));
    ok(released, "delete the partial");
    assert!(partials(&mut conn, "d").is_empty());
    assert!(leftovers_after_the_disk(&server.at("d")).is_empty());
    assert!(matches!(conn.delete(&path), Err((ErrorCode::NotFound, _))));
}

#[test]
fn a_directory_holding_only_partials_can_be_removed() {
    let server = FileServer::start(&[]);
    fs::create_dir(server.at("d")).unwrap();
    interrupted(&server, "d/a", &random_bytes(82, MIB), 1000);
    interrupted(&server, "d/b", &random_bytes(83, MIB), 2000);
    let mut conn = server.conn();
    assert!(
        ok(conn.list("d"), "list")
            .iter()
            .all(|entry| entry.kind == FileKind::Partial),
        "LIST shows nothing but the partials"
    );
    ok(
        retry_busy_upload(Duration::from_secs(10), || conn.delete("d")),
        "rm of a directory that holds only partials",
    );
    assert!(!server.at("d").exists());

    // A directory with a real file in it is still not empty, and keeps its partials.
    fs::create_dir(server.at("e")).unwrap();
    fs::write(server.at("e/kept"), b"kept").unwrap();
    interrupted(&server, "e/c", &random_bytes(84, MIB), 10);
    let refused = retry_busy_upload(Duration::from_secs(10), || conn.delete("e"));
    assert!(
        matches!(refused, Err((ErrorCode::NotEmpty, _))),
        "{refused:?}"
    );
    assert_eq!(partials(&mut conn, "e").len(), 1);
}

#[test]
fn a_partial_being_received_cannot_be_removed() {
    let server = FileServer::start(&[]);
    fs::create_dir(server.at("d")).unwrap();
    let data = random_bytes(85, 2 * MIB);
    let hash = blake3_of(&data);
    let mut writer = server.conn();
    let stream = writer.new_stream();
    ok(
        writer.begin_put(
            stream,
            b"d/f",
            data.len() as u64,
            PutFlags::NONE,
            Some(hash),
        ),
        "begin",
    );
    writer.send_data_in(stream, &data[..MIB], MIB);
    writer.echo(b"written");

    let mut other = server.conn();
    let name = partials(&mut other, "d")[0].name.clone();
    let refused = other.delete(&format!("d/{name}"));
    assert!(
        matches!(refused, Err((ErrorCode::UploadBusy, _))),
        "{refused:?}"
    );
    let refused = other.delete("d");
    assert!(
        matches!(refused, Err((ErrorCode::UploadBusy, _))),
        "{refused:?}"
    );

    writer.send_data_in(stream, &data[MIB..], MIB);
    assert_eq!(ok(writer.finish_put(stream, &hash), "finish"), hash);
    assert!(fs::read(server.at("d/f")).unwrap() == data);
}
