//! What the access tests share (tests/access_scope.rs over plaintext, tests/tls_access.rs over
//! TLS): request frames built by hand (the paths and argv they carry are the ones a
//! well-behaved client would never send, so they are not made with the client library), the
//! exchange of one request's frames, and a snapshot of a tree to prove nothing changed.

#![allow(dead_code)]

use std::fs;
use std::path::Path;

use monoreactor::client::{Client, OwnedFrame};
use monoreactor::proto::exec::{ExecRequest, Exit};
use monoreactor::proto::files::{GetRequest, Hash, PutFlags, PutRequest};
use monoreactor::proto::{ErrorCode, ErrorMessage, Flags, Frame, FrameType};

pub fn get(stream: u32, path: &[u8]) -> Vec<u8> {
    // Built by hand: the paths here are the ones a well-behaved client would never send.
    let request = GetRequest {
        offset: 0,
        path: "",
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    payload.extend_from_slice(path);
    Frame::new(FrameType::Get, Flags::NONE, stream, &payload).to_vec()
}

pub fn put(stream: u32, path: &[u8], bytes: &[u8]) -> Vec<u8> {
    let hash: Hash = *blake3::hash(bytes).as_bytes();
    let request = PutRequest {
        size: bytes.len() as u64,
        flags: PutFlags::HASH_DECLARED,
        hash: Some(hash),
        attrs: None,
        path: "",
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    payload.extend_from_slice(path);
    let mut wire = Frame::new(FrameType::Put, Flags::NONE, stream, &payload).to_vec();
    wire.extend(Frame::new(FrameType::Data, Flags::NONE, stream, bytes).to_vec());
    wire.extend(Frame::new(FrameType::Digest, Flags::END_STREAM, stream, &hash).to_vec());
    wire
}

pub fn path_request(frame_type: FrameType, stream: u32, path: &[u8]) -> Vec<u8> {
    Frame::new(frame_type, Flags::NONE, stream, path).to_vec()
}

pub fn exec(stream: u32, argv: &[&[u8]]) -> Vec<u8> {
    let mut wire = Vec::new();
    ExecRequest::new(argv.to_vec()).encode(stream, &mut wire);
    wire
}

/// Standard output of an EXEC's frames, and its EXIT.
pub fn output_of(frames: &[OwnedFrame]) -> (Vec<u8>, Option<Exit>) {
    let mut out = Vec::new();
    let mut exit = None;
    for frame in frames {
        match frame.header.frame_type {
            FrameType::Stdout => out.extend_from_slice(&frame.payload),
            FrameType::Exit => exit = Some(Exit::parse(&frame.payload).unwrap()),
            _ => {}
        }
    }
    (out, exit)
}

/// Every path under `dir` with its content (files) or `/` (directories), sorted.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(base).unwrap().display().to_string();
            if name.contains(".monoreactor-hash") {
                continue; // the hash cache's index, the server's own
            }
            if path.is_dir() {
                out.push((name, b"/".to_vec()));
                walk(base, &path, out);
            } else {
                out.push((name, fs::read(&path).unwrap_or_default()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Sends `frames` and reads what comes back on `stream` until the frame that ends it.
pub fn exchange(client: &mut Client, frames: &[u8], stream: u32) -> Vec<OwnedFrame> {
    client.send_raw(frames).unwrap();
    let mut got = Vec::new();
    loop {
        let frame = client.recv_frame().expect("a frame");
        if frame.header.stream != stream {
            continue;
        }
        let end = frame.header.flags.contains(Flags::END_STREAM);
        got.push(frame);
        if end {
            return got;
        }
    }
}

/// The ERROR that ended a request, if it ended with one.
pub fn error_of(frames: &[OwnedFrame]) -> Option<(ErrorCode, String)> {
    let last = frames.last()?;
    (last.header.frame_type == FrameType::Error).then(|| {
        let message = ErrorMessage::parse(&last.payload).unwrap();
        (message.code, message.text.to_string())
    })
}
