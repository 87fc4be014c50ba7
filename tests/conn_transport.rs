//! A transport beneath the framed logic: [`Sealed`], a stand-in for a TLS session, changes the
//! bytes on the wire, holds what the socket cannot take yet and declines `sendfile`, and the
//! connection serves through it unchanged (see `monoreactor::transport`).

mod support;

use std::collections::VecDeque;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};

use monoreactor::Limits;
use monoreactor::Verdict;
use monoreactor::client::OwnedFrame;
use monoreactor::proto::files::{Digest, FileInfo, GetRequest};
use monoreactor::proto::{Decoder, Flags, Frame, FrameType, Hello};
use monoreactor::testkit::ConnHarness;
use monoreactor::{Readiness, Transport};
use support::TempDir;

/// What every byte on the wire is XORed with: enough to prove the connection never sees it.
const KEY: u8 = 0x5a;

/// A socket stand-in: bytes the peer sent, bytes written, and how many more it takes.
#[derive(Default)]
struct Wire {
    input: VecDeque<u8>,
    written: Vec<u8>,
    /// Bytes writes may still add; `None`: unlimited.
    room: Option<usize>,
}

/// A TLS-like session over a [`Wire`]: plaintext in, sealed bytes out. Like rustls it accepts
/// plaintext into its own buffer (up to `limit` bytes), sends what the socket takes, and keeps
/// the rest until [`Transport::send_pending`]; it wants WRITABLE while it holds any.
struct Sealed {
    wire: Wire,
    held: Vec<u8>,
    limit: usize,
}

impl Sealed {
    fn new(limit: usize) -> Sealed {
        Sealed {
            wire: Wire::default(),
            held: Vec::new(),
            limit,
        }
    }

    /// The client sends `plaintext`, sealed.
    fn push(&mut self, plaintext: &[u8]) {
        self.wire
            .input
            .extend(plaintext.iter().map(|byte| byte ^ KEY));
    }

    /// Everything on the wire so far, opened, as frames.
    fn frames(&self) -> Vec<OwnedFrame> {
        let plaintext: Vec<u8> = self.wire.written.iter().map(|byte| byte ^ KEY).collect();
        let decoder = Decoder::new(u32::MAX);
        let mut frames = decoder.frames(&plaintext);
        let owned = frames
            .by_ref()
            .map(|frame| {
                let frame = frame.expect("valid frames");
                OwnedFrame {
                    header: frame.header,
                    payload: frame.payload.to_vec(),
                }
            })
            .collect();
        assert_eq!(frames.consumed(), plaintext.len(), "whole frames only");
        owned
    }

    /// Moves held bytes to the wire until it is full.
    fn send_held(&mut self) -> io::Result<()> {
        while !self.held.is_empty() {
            let n = self
                .wire
                .room
                .map_or(self.held.len(), |room| room.min(self.held.len()));
            if n == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            self.wire.written.extend(self.held.drain(..n));
            if let Some(room) = self.wire.room.as_mut() {
                *room -= n;
            }
        }
        Ok(())
    }
}

impl Read for Sealed {
    /// Opens what the socket holds. A read is short exactly when the socket's was, so the
    /// connection's "short read means drained" stays true.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.wire.input.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.wire.input.len());
        for (slot, byte) in buf.iter_mut().zip(self.wire.input.drain(..n)) {
            *slot = byte ^ KEY;
        }
        Ok(n)
    }
}

impl Write for Sealed {
    /// Takes what fits in the session, then sends what the socket takes; short only when the
    /// session is full, which happens only while the socket is.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.send_held();
        let n = buf.len().min(self.limit - self.held.len());
        if n == 0 && !buf.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        self.held.extend(buf[..n].iter().map(|byte| byte ^ KEY));
        let _ = self.send_held();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Sealed {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.send_held()
    }

    // `send_file` is not overridden: the bytes must be sealed here, so a file range goes out
    // through the default, which reads it and writes it through `write`.

    fn send_pending(&mut self) -> io::Result<()> {
        self.send_held()
    }

    fn wants(&self) -> Readiness {
        if self.held.is_empty() {
            Readiness::NONE
        } else {
            Readiness::WRITABLE
        }
    }
}

fn hello() -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::with_credentials(b"").encode(&mut wire);
    wire
}

fn kinds(frames: &[OwnedFrame]) -> Vec<FrameType> {
    frames.iter().map(|frame| frame.header.frame_type).collect()
}

/// What the reactor registers: the connection's interest with the transport's.
fn registered(h: &ConnHarness, io: &Sealed) -> Readiness {
    h.conn.interest() | io.wants()
}

/// One readiness event, then the turns the connection asks for, and a writable event
/// whenever what is registered asks for one (the wire has room).
fn run(h: &mut ConnHarness, io: &mut Sealed) -> Verdict {
    let mut verdict = h.event(io, true, true);
    for _ in 0..100_000 {
        verdict = match verdict {
            Verdict::Again => h.drive(io),
            Verdict::Wait if registered(h, io).is_writable() => h.event(io, false, true),
            verdict => return verdict,
        };
    }
    panic!("the connection never settles");
}

#[test]
fn records_the_transport_holds_go_out_when_the_socket_has_room_again() {
    let mut h = ConnHarness::framed(Limits::default());
    let mut io = Sealed::new(1 << 20);
    io.wire.room = Some(10);
    io.push(&hello());
    io.push(&Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 1, b"sealed").to_vec());

    assert_eq!(h.event(&mut io, true, true), Verdict::Wait);
    // The session took both replies; the socket only ten bytes of them.
    assert_eq!(h.conn.pending_output(), 0, "nothing waits in the outbox");
    assert_eq!(io.wire.written.len(), 10);
    assert_eq!(h.conn.interest(), Readiness::READABLE);
    assert_eq!(
        registered(&h, &io),
        Readiness::READABLE | Readiness::WRITABLE,
        "the transport asks for WRITABLE itself"
    );

    // The peer reads: the socket turns writable, and the held records go out.
    io.wire.room = None;
    assert_eq!(h.event(&mut io, false, true), Verdict::Wait);
    assert_eq!(io.wants(), Readiness::NONE);
    let frames = io.frames();
    assert_eq!(kinds(&frames), [FrameType::HelloOk, FrameType::EchoReply]);
    assert_eq!(frames[1].payload, b"sealed");
}

#[test]
fn a_full_session_is_a_full_socket_and_the_outbox_waits_behind_it() {
    let mut h = ConnHarness::framed(Limits::default());
    let mut io = Sealed::new(64);
    io.wire.room = Some(0);
    io.push(&hello());
    io.push(&Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 1, &[7; 500]).to_vec());

    assert_eq!(h.event(&mut io, true, true), Verdict::Wait);
    assert!(
        h.conn.pending_output() > 0,
        "what the session refused waits"
    );
    assert!(h.conn.interest().is_writable());

    io.wire.room = None;
    assert_eq!(run(&mut h, &mut io), Verdict::Wait);
    let frames = io.frames();
    assert_eq!(kinds(&frames), [FrameType::HelloOk, FrameType::EchoReply]);
    assert_eq!(frames[1].payload, [7; 500]);
}

#[test]
fn a_get_goes_out_through_a_transport_that_declines_sendfile() {
    let dir = TempDir::new("conn-transport");
    let file: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(dir.path().join("f"), &file).unwrap();
    let mut h = ConnHarness::framed(Limits::default()).with_files(dir.path());
    let mut io = Sealed::new(16 << 10);
    io.push(&hello());
    let request = GetRequest {
        offset: 0,
        path: "f",
    };
    let mut payload = vec![0; request.payload_len()];
    request.emit(&mut payload);
    io.push(&Frame::new(FrameType::Get, Flags::NONE, 1, &payload).to_vec());

    assert_eq!(run(&mut h, &mut io), Verdict::Wait);
    let frames = io.frames();
    let (last, rest) = frames.split_last().unwrap();
    assert_eq!(kinds(&rest[..2]), [FrameType::HelloOk, FrameType::FileInfo]);
    assert_eq!(
        FileInfo::parse(&rest[1].payload).unwrap().size,
        file.len() as u64
    );
    let mut received = Vec::new();
    for frame in &rest[2..] {
        assert_eq!(frame.header.frame_type, FrameType::Data);
        received.extend_from_slice(&frame.payload);
    }
    assert!(
        received == file,
        "the file arrives whole, sealed and opened"
    );
    assert_eq!(last.header.frame_type, FrameType::Digest);
    assert_eq!(
        Digest::parse(&last.payload).unwrap().hash,
        *blake3::hash(&file).as_bytes()
    );
}
