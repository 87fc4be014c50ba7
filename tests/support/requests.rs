//! Request frames built by hand for the access tests (tests/access_scope.rs over plaintext,
//! tests/tls_access.rs over TLS): the paths and argv they carry are the ones a well-behaved
//! client would never send, so they are not made with the client library.

#![allow(dead_code)]

use monoreactor::client::OwnedFrame;
use monoreactor::proto::exec::{ExecRequest, Exit};
use monoreactor::proto::files::{GetRequest, Hash, PutFlags, PutRequest};
use monoreactor::proto::{Flags, Frame, FrameType};

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
