//! Review of issue 13's re-cut ("no behaviour change"): the public API as an outside crate
//! sees it, and resources given back on every path through real servers. (The command line was
//! compared with the tree before the re-cut by hand: the same outputs and exit statuses, but
//! for the legacy `bench` flags, which the issue removed; `tests/bench_cli.rs` pins that.)

mod support;

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::time::Duration;

use monoreactor::children::{ChildId, Children, OutputPipe, SpawnError, SpawnSpec, Spawned};
use monoreactor::disk::{
    BegunUpload, DirRead, Disk, FileError, FileMeta, JobId, ListingHandle, OpenedFile, Pending,
    SyncKind, TransferPermit, UploadHandle,
};
use monoreactor::proto::exec::{EndReason, Signal, Termination};
use monoreactor::proto::files::{FileInfo, FileKind, GetRequest, Hash, PutAttrs, PutRequest};
use monoreactor::proto::{Decoder, ErrorCode, ErrorMessage, Flags, Frame, FrameType, Hello};
use monoreactor::{
    Access, BufferPool, Connection, Context, Limits, Protocol, Tick, Token, Transport, Verdict,
    WallClock,
};

use support::files::{FileServer, MIB, blake3_of, get_frame, path_frame, random_bytes};

const TOKEN: &[u8] = b"0123456789abcdef-review-token";

// === An outside crate's own Children, Disk and Transport ===

/// Children that never start anything: every spawn is refused.
struct NoChildren;

impl Children for NoChildren {
    fn spawn(&mut self, _index: u8, _spec: &SpawnSpec<'_>) -> Result<Spawned, SpawnError> {
        Err(SpawnError::Failed("no processes here".into()))
    }
    fn read(&mut self, _: ChildId, _: OutputPipe, _: &mut [u8]) -> io::Result<usize> {
        Ok(0)
    }
    fn write_stdin(&mut self, _: ChildId, bytes: &[u8]) -> io::Result<usize> {
        Ok(bytes.len())
    }
    fn close_stdin(&mut self, _: ChildId) {}
    fn close_output(&mut self, _: ChildId, _: OutputPipe) {}
    fn signal(&mut self, _: ChildId, _: Signal) -> io::Result<()> {
        Ok(())
    }
    fn exit_status(&mut self, _: ChildId) -> io::Result<Option<Termination>> {
        Ok(None)
    }
    fn release(&mut self, _: ChildId, _: EndReason) {}
}

/// A disk holding one empty directory and nothing else, which counts its transfers.
struct EmptyDisk {
    running: Rc<Cell<usize>>,
    max: usize,
}

impl EmptyDisk {
    fn missing(path: &str) -> FileError {
        FileError::new(ErrorCode::NotFound, format!("{path}: not found"))
    }
}

impl Disk for EmptyDisk {
    fn stat(&mut self, path: &str) -> Result<(FileInfo, u32), FileError> {
        if path.is_empty() {
            let meta = FileMeta {
                size: 0,
                mtime_ns: 0,
                ctime_ns: 0,
                kind: FileKind::Directory,
                dev: 1,
                ino: 1,
            };
            return Ok((meta.info(None), 0o755));
        }
        Err(Self::missing(path))
    }
    fn mkdir(&mut self, path: &str) -> Result<(), FileError> {
        Err(FileError::new(
            ErrorCode::PermissionDenied,
            format!("{path}: read-only"),
        ))
    }
    fn set_attrs(&mut self, path: &str, _: PutAttrs) -> Result<(), FileError> {
        self.mkdir(path)
    }
    fn delete(&mut self, path: &str) -> Result<(), FileError> {
        Err(Self::missing(path))
    }
    fn admit(&mut self) -> Result<TransferPermit, FileError> {
        if self.running.get() >= self.max {
            return Err(FileError::new(ErrorCode::LimitReached, "full"));
        }
        self.running.set(self.running.get() + 1);
        Ok(TransferPermit::taken())
    }
    fn end_transfer(&mut self, permit: TransferPermit) {
        let _ = permit;
        self.running.set(self.running.get() - 1);
    }
    fn open_read(&mut self, path: &str) -> Result<OpenedFile, FileError> {
        Err(Self::missing(path))
    }
    fn read_at(&mut self, _: &File, _: &mut [u8], _: u64) -> Result<usize, FileError> {
        Ok(0)
    }
    fn unchanged(&mut self, _: &File, _: &FileMeta) -> bool {
        true
    }
    fn store_hash(&mut self, _: &FileMeta, _: &Hash, _: WallClock) {}
    fn open_listing(&mut self, path: &str) -> Result<ListingHandle, FileError> {
        if path.is_empty() {
            Ok(ListingHandle(7))
        } else {
            Err(Self::missing(path))
        }
    }
    fn read_entry(&mut self, _: ListingHandle) -> Result<DirRead, FileError> {
        Ok(DirRead::End)
    }
    fn close_listing(&mut self, _: ListingHandle) {}
    fn begin_put(&mut self, request: &PutRequest<'_>) -> Result<BegunUpload, FileError> {
        Err(FileError::new(
            ErrorCode::PermissionDenied,
            format!("{}: read-only", request.path),
        ))
    }
    fn superseded(&self, _: UploadHandle) -> bool {
        false
    }
    fn read_upload(&mut self, _: UploadHandle, _: &mut [u8], _: u64) -> Result<usize, FileError> {
        Ok(0)
    }
    fn write_upload(
        &mut self,
        _: UploadHandle,
        _: &[u8],
        _: u64,
    ) -> Result<Option<JobId>, FileError> {
        Ok(None)
    }
    fn sync_upload(&mut self, _: UploadHandle, _: SyncKind) -> Pending {
        Pending::Done(Ok(()))
    }
    fn publish(&mut self, _: UploadHandle) -> Result<Pending, FileError> {
        Ok(Pending::Done(Ok(())))
    }
    fn discard(&mut self, _: UploadHandle) {}
    fn release_upload(&mut self, _: UploadHandle) {}
}

/// A transport over two byte vectors: what the peer sent, and what the connection wrote.
#[derive(Default)]
struct Pipe {
    input: Vec<u8>,
    eof: bool,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.drain(..n);
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Transport for Pipe {
    fn shutdown_write(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn frames_of(bytes: &[u8]) -> Vec<(FrameType, u32, Vec<u8>)> {
    let decoder = Decoder::new(16 << 20);
    let mut at = 0;
    let mut out = Vec::new();
    while let Some(frame) = decoder.decode(&bytes[at..]).expect("valid frames") {
        out.push((
            frame.header.frame_type,
            frame.header.stream,
            frame.payload.to_vec(),
        ));
        at += frame.wire_len();
    }
    out
}

/// An outside crate implements `Children` and `Disk`, builds a `Context` from the crate root's
/// types, and drives a `Connection` over a transport of its own: STAT is answered by its disk,
/// EXEC refused by its children, and every transfer place it gave out comes back.
#[test]
fn an_outside_crate_drives_a_connection_with_its_own_children_disk_and_transport() {
    let limits = Limits::default();
    let mut pool = BufferPool::new(limits.io_buffer_len, 4);
    let access = Access {
        token: Some(Token::new(TOKEN.to_vec()).unwrap()),
        exec: true,
        credentials: None,
    };
    let running = Rc::new(Cell::new(0));
    let mut disk = EmptyDisk {
        running: Rc::clone(&running),
        max: 4,
    };
    let mut children = NoChildren;
    let mut conn = Connection::new(Protocol::Framed, Tick(0), &limits);

    let mut io = Pipe::default();
    Hello::with_credentials(TOKEN).encode(&mut io.input);
    io.input
        .extend(Frame::new(FrameType::Stat, Flags::NONE, 1, b"").to_vec());
    // A LIST left open (its one page waits for the next drive), a GET of nothing.
    io.input
        .extend(Frame::new(FrameType::List, Flags::NONE, 3, b"").to_vec());
    let mut get = vec![
        0;
        GetRequest {
            offset: 0,
            path: "x"
        }
        .payload_len()
    ];
    GetRequest {
        offset: 0,
        path: "x",
    }
    .emit(&mut get);
    io.input
        .extend(Frame::new(FrameType::Get, Flags::NONE, 5, &get).to_vec());

    let mut cx = Context::new(&mut pool, &limits, Tick(0));
    cx.access = &access;
    cx.children = Some(&mut children);
    cx.files = Some(&mut disk);
    conn.on_ready(true, true);
    let mut verdict = conn.drive(&mut io, &mut cx);
    for _ in 0..100 {
        if verdict != Verdict::Again {
            break;
        }
        verdict = conn.drive(&mut io, &mut cx);
    }
    let frames = frames_of(&io.output);
    let kinds: Vec<_> = frames.iter().map(|(t, s, _)| (*t, *s)).collect();
    assert!(kinds.contains(&(FrameType::FileInfo, 1)), "{kinds:?}");
    assert!(kinds.contains(&(FrameType::Entries, 3)), "{kinds:?}");
    assert!(kinds.contains(&(FrameType::Error, 5)), "{kinds:?}");
    conn.release(&mut cx);
    assert_eq!(running.get(), 0, "every transfer place came back");
}

// === Resources given back, through real servers ===

fn client_error(stream: u32) -> Vec<u8> {
    let mut wire = Vec::new();
    ErrorMessage::new(ErrorCode::Other(1000), "abandoned").encode(stream, &mut wire);
    wire
}

/// With `--max-transfers 1`, transfers ended every way a client can end them — dropping the
/// connection mid-GET, mid-LIST and mid-PUT, half-closing during a PUT, abandoning a GET and a
/// PUT with an ERROR on their stream — each give their place back: a GET afterwards is
/// served, and the upload's partial is not left locked (its resume is not UPLOAD_BUSY).
#[test]
fn aborted_transfers_give_back_their_place_and_their_upload_lock() {
    let server = FileServer::start(&["--max-transfers", "1"]);
    let big = random_bytes(13, 24 * MIB);
    std::fs::write(server.at("big"), &big).unwrap();
    for i in 0..300 {
        std::fs::write(server.at(&format!("f{i:03}")), b"x").unwrap();
    }
    let data = random_bytes(14, 3 * MIB);
    let hash = blake3_of(&data);

    let served = |why: &str| {
        let mut conn = server.conn();
        match conn.get("f000", 0) {
            Ok(_) => {}
            Err(refusal) => panic!("after {why}: GET refused {refusal:?}"),
        }
    };

    // Dropped mid-GET (the client never reads).
    for _ in 0..3 {
        let mut conn = server.conn();
        conn.send(&get_frame(1, b"big", 0));
        let first = conn.recv();
        assert_eq!(first.header.frame_type, FrameType::FileInfo);
        drop(conn);
    }
    wait_served(&served, "dropped GETs");

    // Dropped mid-LIST.
    {
        let mut conn = server.conn();
        conn.send(&path_frame(FrameType::List, 1, b""));
        let first = conn.recv();
        assert_eq!(first.header.frame_type, FrameType::Entries);
        drop(conn);
    }
    wait_served(&served, "a dropped LIST");

    // A GET abandoned with the client's ERROR, on a connection that goes on.
    {
        let mut conn = server.conn();
        conn.send(&get_frame(1, b"big", 0));
        let first = conn.recv();
        assert_eq!(first.header.frame_type, FrameType::FileInfo);
        conn.send(&client_error(1));
        echo_past(&mut conn, 9);
        drop(conn);
    }
    wait_served(&served, "an abandoned GET");

    // Dropped mid-PUT, then the resume.
    {
        let mut conn = server.conn();
        let ready = conn
            .begin_put(1, b"up", data.len() as u64, Default::default(), Some(hash))
            .expect("PUT_READY");
        assert_eq!(ready.held, 0);
        conn.send_data(1, &data[..MIB]);
        echo_past(&mut conn, 9);
        drop(conn);
    }
    wait_served(&served, "a dropped PUT");
    // A PUT abandoned with an ERROR.
    {
        let mut conn = server.conn();
        support::files::retry_busy_upload(Duration::from_secs(10), || {
            conn.begin_put(
                1,
                b"up",
                data.len() as u64,
                monoreactor::proto::files::PutFlags::RESUME,
                Some(hash),
            )
        })
        .expect("PUT_READY");
        conn.send(&client_error(1));
        echo_past(&mut conn, 9);
    }
    wait_served(&served, "an abandoned PUT");
    let mut conn = server.conn();
    let resumed = support::files::retry_busy_upload(Duration::from_secs(10), || {
        conn.put_full(b"up", &data, Some(hash), true, &hash)
    });
    match resumed {
        Ok((_, got)) => assert_eq!(got, hash),
        Err(refusal) => panic!("the resume was refused: {refusal:?}"),
    }
}

/// An echo on `stream`, skipping what the server had queued before it on other streams.
fn echo_past(conn: &mut support::files::FileConn, stream: u32) {
    conn.send(&Frame::new(FrameType::EchoRequest, Flags::END_STREAM, stream, b"?").to_vec());
    loop {
        let frame = conn.recv();
        if frame.header.stream == stream {
            assert_eq!(frame.header.frame_type, FrameType::EchoReply);
            return;
        }
    }
}

/// The place of the last transfer may come back a moment after the connection is gone (the
/// server has to notice the close): retried for a bounded time.
fn wait_served(served: &impl Fn(&str), why: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| served(why)));
        match attempt {
            Ok(()) => return,
            Err(panic) if std::time::Instant::now() >= deadline => std::panic::resume_unwind(panic),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
