//! In steady state the server allocates nothing per request: an echo, a command's output
//! streaming back, a file streaming out. Buffers come from the pool and go back to it, and
//! every list the loop uses was sized up front (or grew once, during the warm-up, and kept
//! its capacity).
//!
//! Each server runs in this process, on its own thread, under a global allocator that counts
//! only the allocations of server threads, each into its own test's counter; the clients'
//! allocations (on the test threads) are not counted, and tests running in parallel do not
//! see each other's servers. Deterministic: a count over a span of bytes, not a timing.
//!
//! A streaming measurement starts after a warm-up (the first requests, or the first MiBs of a
//! stream, when buffers, queues and the command's table are set up) and ends long before the
//! stream could end. The client's receive buffer is fixed (`SO_RCVBUF`, which turns off
//! autotuning), so the server can run ahead of what the client has read by at most that
//! buffer, the server's send buffer (`tcp_wmem`, 4 MiB by default) and one outbox: far less
//! than the margin left after the window, so the end of a stream (EXIT, DIGEST, storing the
//! hash) can never fall inside it.

#[path = "support/tls.rs"]
mod tls_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use monoreactor::Limits;
use monoreactor::client::Client;
use monoreactor::proto::exec::{ExecRequest, PtyRequest};
use monoreactor::proto::files::FileInfo;
use monoreactor::proto::files::GetRequest;
use monoreactor::proto::{
    Decoder, Flags, Frame, FrameType, HEADER_LEN, Header, Hello, SessionFlags,
};
use monoreactor::{Access, Token};
use monoreactor::{BoundAddrs, Config, Server};
use monoreactor::{ReactorStats, ShutdownHandle};

struct CountingAllocator;

/// What one server thread allocated.
struct Counts {
    /// Allocations and reallocations.
    allocations: AtomicU64,
    /// The largest block asked for.
    largest: AtomicUsize,
}

impl Counts {
    const fn new() -> Counts {
        Counts {
            allocations: AtomicU64::new(0),
            largest: AtomicUsize::new(0),
        }
    }
}

thread_local! {
    /// The counts of the server running on this thread; `None` on every other thread.
    static COUNTS: Cell<Option<&'static Counts>> = const { Cell::new(None) };
}

fn count(size: usize) {
    // `try_with`: the allocator may run while thread-locals are being torn down.
    if let Ok(Some(counts)) = COUNTS.try_with(Cell::get) {
        counts.allocations.fetch_add(1, Ordering::Relaxed);
        counts.largest.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator unchanged; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const WARM_UP: usize = 1_000;
const MEASURED: usize = 10_000;
const TIMEOUT: Duration = Duration::from_secs(10);

const MIB: u64 = 1 << 20;
/// Stream bytes read before the measurement starts.
const STREAM_WARM_UP: u64 = 4 * MIB;
/// Stream bytes read while measuring.
const STREAM_MEASURED: u64 = 32 * MIB;
/// The client's receive buffer for the streaming tests (see the module docs).
const CLIENT_RCVBUF: usize = 256 << 10;

/// The token of the exec server.
const TOKEN: &[u8] = b"zero-alloc-test-token-0123456789";

/// A server on its own thread, counting into `counts`.
struct Running {
    addrs: BoundAddrs,
    shutdown: ShutdownHandle,
    thread: JoinHandle<std::io::Result<ReactorStats>>,
    counts: &'static Counts,
}

impl Running {
    fn start(config: Config, counts: &'static Counts) -> Running {
        let server = Server::bind(config).unwrap();
        let addrs = server.addrs();
        let shutdown = server.shutdown_handle();
        let thread = std::thread::spawn(move || {
            COUNTS.with(|cell| cell.set(Some(counts)));
            server.run()
        });
        Running {
            addrs,
            shutdown,
            thread,
            counts,
        }
    }

    fn allocations(&self) -> u64 {
        self.counts.allocations.load(Ordering::Relaxed)
    }

    /// The largest block the server has asked for so far.
    fn largest(&self) -> usize {
        self.counts.largest.load(Ordering::Relaxed)
    }

    /// Shuts the server down, waits for its thread, and checks the counter saw it at all.
    fn stop(self) {
        self.shutdown.shutdown().unwrap();
        self.thread.join().unwrap().unwrap();
        assert!(
            self.counts.allocations.load(Ordering::Relaxed) > 0,
            "the counter sees the server thread at all"
        );
    }
}

/// A loopback-only config with nothing but the framed listener unless the caller adds it.
fn config() -> Config {
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Config {
        framed: localhost,
        echo_tcp: None,
        echo_udp: None,
        files: false,
        handle_signals: false,
        ..Config::default()
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "monoreactor-zero-alloc-{label}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        Scratch(std::fs::canonicalize(&path).unwrap())
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sends one pre-encoded request and reads exactly `reply_len` bytes back.
fn round_trip(stream: &mut TcpStream, request: &[u8], reply: &mut [u8]) {
    stream.write_all(request).unwrap();
    stream.read_exact(reply).unwrap();
}

#[test]
fn steady_state_echo_allocates_nothing_on_the_server() {
    static SERVER_COUNTS: Counts = Counts::new();
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Running::start(
        Config {
            echo_tcp: Some(localhost),
            // With the metrics port: its counters and the loop-turn histogram are bumped on
            // every request and turn, and must not allocate either.
            metrics: Some(localhost),
            ..config()
        },
        &SERVER_COUNTS,
    );

    // Framed: HELLO once, then ECHO_REQUEST / ECHO_REPLY of 64 bytes.
    let payload = [0x5a; 64];
    let client = Client::connect(&server.addrs.framed.to_string(), TIMEOUT).unwrap();
    let mut framed = client.into_stream();
    let request = Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 1, &payload).to_vec();
    let mut reply = vec![0; request.len()];
    for _ in 0..WARM_UP {
        round_trip(&mut framed, &request, &mut reply);
    }
    let before = server.allocations();
    for _ in 0..MEASURED {
        round_trip(&mut framed, &request, &mut reply);
    }
    let framed_allocations = server.allocations() - before;
    let frame = Decoder::new(1 << 20).decode(&reply).unwrap().unwrap();
    assert_eq!(
        (frame.header.frame_type, frame.payload),
        (FrameType::EchoReply, &payload[..])
    );

    // Raw echo: 64 bytes out, the same 64 back.
    let mut raw = TcpStream::connect(server.addrs.echo_tcp.unwrap()).unwrap();
    raw.set_nodelay(true).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut echoed = [0; 64];
    for _ in 0..WARM_UP {
        round_trip(&mut raw, &payload, &mut echoed);
    }
    let before = server.allocations();
    for _ in 0..MEASURED {
        round_trip(&mut raw, &payload, &mut echoed);
    }
    let raw_allocations = server.allocations() - before;
    assert_eq!(echoed, payload);

    server.stop();
    assert_eq!(
        framed_allocations, 0,
        "framed: server allocations during {MEASURED} echoes"
    );
    assert_eq!(
        raw_allocations, 0,
        "raw: server allocations during {MEASURED} echoes"
    );
}

/// A byte stream both ways: a socket, or a TLS stream over one.
trait Duplex: Read + Write {}
impl<T: Read + Write> Duplex for T {}

/// A framed connection with a small fixed receive buffer, after HELLO (with `credentials`),
/// read frame by frame with payloads discarded.
struct Reader {
    stream: Box<dyn Duplex>,
    /// A payload's bytes are read into this and dropped.
    sink: Vec<u8>,
}

impl Reader {
    fn connect(addr: SocketAddr, credentials: &[u8]) -> Reader {
        let stream = Reader::socket(addr);
        let mut client = Client::from_stream(stream);
        let ok = client.hello(Hello::with_credentials(credentials)).unwrap();
        assert!(
            ok.flags.contains(SessionFlags::AUTHENTICATED),
            "HELLO_OK: {ok:?}"
        );
        // Nothing follows HELLO_OK until a request is sent: the client buffered nothing more.
        Reader {
            stream: Box::new(client.into_stream()),
            sink: vec![0; 256 << 10],
        }
    }

    /// The same over TLS (a rustls client trusting `ca`), HELLO without credentials.
    fn connect_tls(addr: SocketAddr, ca: &rustls::pki_types::CertificateDer<'static>) -> Reader {
        let config = tls_support::client_config(ca, &[tls_support::ALPN], None);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, Reader::socket(addr));
        let mut hello = Vec::new();
        Hello::with_credentials(b"").encode(&mut hello);
        stream.write_all(&hello).unwrap();
        let mut reader = Reader {
            stream: Box::new(stream),
            sink: vec![0; 256 << 10],
        };
        let ok = reader.frame(&mut Vec::new());
        assert_eq!(ok.frame_type, FrameType::HelloOk);
        reader
    }

    /// A socket whose receive buffer is fixed before it connects.
    fn socket(addr: SocketAddr) -> TcpStream {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        // Before connecting, so the window the client advertises never grows past it.
        socket.set_recv_buffer_size(CLIENT_RCVBUF).unwrap();
        socket.connect_timeout(&addr.into(), TIMEOUT).unwrap();
        let stream: TcpStream = socket.into();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        stream
    }

    fn send(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).unwrap();
    }

    /// The next frame's header; its payload is read and dropped, all but its first bytes,
    /// which are left in `keep` (for FILE_INFO, or for a message when a test fails).
    fn frame(&mut self, keep: &mut Vec<u8>) -> Header {
        let mut head = [0; HEADER_LEN];
        self.stream.read_exact(&mut head).unwrap();
        let header = Header::parse(&head, u32::MAX).unwrap().unwrap();
        keep.clear();
        let mut left = header.len as usize;
        while left > 0 {
            let want = left.min(self.sink.len());
            self.stream.read_exact(&mut self.sink[..want]).unwrap();
            if keep.len() < 256 {
                keep.extend_from_slice(&self.sink[..want.min(256)]);
            }
            left -= want;
        }
        header
    }

    /// Reads frames of `frame_type` on `stream` until at least `bytes` of payload have come;
    /// returns how many did. Any other frame fails the test (with its payload's start).
    fn stream_payload(&mut self, frame_type: FrameType, stream: u32, bytes: u64) -> u64 {
        let mut got = 0;
        let mut payload = Vec::new();
        while got < bytes {
            let header = self.frame(&mut payload);
            assert!(
                header.frame_type == frame_type && header.stream == stream,
                "expected {frame_type} on stream {stream} after {got} bytes, got {header:?}: {:?}",
                String::from_utf8_lossy(&payload)
            );
            got += u64::from(header.len);
        }
        got
    }
}

/// A command's output streams back: once the connection's output buffer has grown to hold the
/// high-water mark, reading and framing the output allocates nothing on the server (the
/// connection keeps its grown output buffer while the command runs).
#[test]
fn steady_state_exec_output_allocates_nothing_on_the_server() {
    static SERVER_COUNTS: Counts = Counts::new();
    exec_output_allocates_nothing(&SERVER_COUNTS, None);
}

/// The same from a command on a pseudo-terminal (`exec -t`): its master is read like a pipe.
#[test]
fn steady_state_exec_output_on_a_pty_allocates_nothing_on_the_server() {
    static SERVER_COUNTS: Counts = Counts::new();
    let pty = PtyRequest {
        rows: 24,
        cols: 80,
        term: "xterm",
    };
    exec_output_allocates_nothing(&SERVER_COUNTS, Some(pty));
}

fn exec_output_allocates_nothing(counts: &'static Counts, pty: Option<PtyRequest<'_>>) {
    let scratch = Scratch::new(if pty.is_some() { "exec-pty" } else { "exec" });
    // Far more output than the test reads, and a cap above it: the command is still writing
    // when the measurement ends, and is stopped when the client goes.
    let output = 1u64 << 30;
    let server = Running::start(
        Config {
            access: Access {
                token: Some(Token::new(TOKEN).unwrap()),
                exec: true,
                credentials: None,
            },
            root: scratch.path().to_path_buf(),
            limits: Limits {
                exec_output_cap: 2 * output,
                ..Limits::default()
            },
            ..config()
        },
        counts,
    );

    let high_water = Limits::default().output_high_water;
    let mut reader = Reader::connect(server.addrs.framed, TOKEN);
    assert!(
        server.largest() < high_water,
        "nothing before the command needs a block of {high_water} bytes: {}",
        server.largest()
    );
    let count = output.to_string();
    let argv: Vec<&[u8]> = vec![b"head", b"-c", count.as_bytes(), b"/dev/zero"];
    // No STDIN flag: the command's stdin is /dev/null (or, on a terminal, the terminal).
    let request = ExecRequest {
        pty,
        ..ExecRequest::new(argv)
    };
    let mut wire = Vec::new();
    request.encode(1, &mut wire);
    reader.send(&wire);
    let mut payload = Vec::new();
    let started = reader.frame(&mut payload);
    assert_eq!(
        (started.frame_type, started.stream),
        (FrameType::Started, 1),
        "{:?}",
        String::from_utf8_lossy(&payload)
    );

    // A client that reads more slowly than the command writes makes the output queue fill to
    // the high-water mark, and its buffer grow once to hold it: an allocation at the start of
    // the stream, which a fast client might otherwise put off into the measured window. So
    // the client reads nothing until it has happened: the socket fills, then the queue. The
    // wait is for an event that must come, and the bound only keeps a broken server from
    // hanging the test.
    let deadline = Instant::now() + TIMEOUT;
    while server.largest() < high_water {
        assert!(
            Instant::now() < deadline,
            "the server's output buffer never grew to the high-water mark ({high_water} bytes) \
             while the client was not reading; largest block: {}",
            server.largest()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let warmed = reader.stream_payload(FrameType::Stdout, 1, STREAM_WARM_UP);
    let before = server.allocations();
    let measured = reader.stream_payload(FrameType::Stdout, 1, STREAM_MEASURED);
    let allocations = server.allocations() - before;
    assert!(
        warmed + measured < output / 2,
        "the command is far from done"
    );

    // Closing the connection stops the command; the server reaps it on its own.
    drop(reader);
    server.stop();
    assert_eq!(
        allocations, 0,
        "server allocations while {measured} bytes of a command's output streamed"
    );
}

/// A file streams out with `sendfile`: after the first MiBs, queueing its DATA ranges (and
/// hashing it, on the first GET) allocates nothing on the server.
#[test]
fn steady_state_file_get_allocates_nothing_on_the_server() {
    static SERVER_COUNTS: Counts = Counts::new();
    get_allocates_nothing(&SERVER_COUNTS, None);
}

/// The same over TLS: the file is read 16 KiB at a time and sealed in place into the TLS
/// session's outgoing buffer (no sendfile), and that allocates nothing either.
#[test]
fn steady_state_tls_file_get_allocates_nothing_on_the_server() {
    static SERVER_COUNTS: Counts = Counts::new();
    let scratch = Scratch::new("tls-certs");
    let files = tls_support::ServerFiles::write(scratch.path());
    let tls = monoreactor::TlsSettings {
        cert: files.cert.clone(),
        key: files.key.clone(),
        client_ca: None,
    }
    .load()
    .unwrap();
    get_allocates_nothing(&SERVER_COUNTS, Some((tls, files.ca.der.clone())));
}

/// A TLS connection in steady state, echoing 64 bytes and 20 KiB in turn (a full record
/// each way): between drives it holds no record buffer, and each drive takes its buffers from
/// the loop's list and gives them back, so nothing is allocated.
#[test]
fn steady_state_tls_echo_allocates_nothing_on_the_server() {
    static SERVER_COUNTS: Counts = Counts::new();
    let scratch = Scratch::new("tls-echo");
    let files = tls_support::ServerFiles::write(scratch.path());
    let tls = monoreactor::TlsSettings {
        cert: files.cert.clone(),
        key: files.key.clone(),
        client_ca: None,
    }
    .load()
    .unwrap();
    let server = Running::start(
        Config {
            tls: Some(tls),
            ..config()
        },
        &SERVER_COUNTS,
    );
    let mut reader = Reader::connect_tls(server.addrs.framed, &files.ca.der);
    let small = Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 1, &[0x5a; 64]).to_vec();
    let large = vec![0xa5; 20 << 10];
    let large = Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 3, &large).to_vec();
    let mut round_trips = |count: usize| {
        let mut kept = Vec::new();
        for i in 0..count {
            let (request, stream) = if i % 2 == 0 { (&small, 1) } else { (&large, 3) };
            reader.send(request);
            let reply = reader.frame(&mut kept);
            assert_eq!(
                (reply.frame_type, reply.stream, reply.len as usize),
                (FrameType::EchoReply, stream, request.len() - HEADER_LEN)
            );
        }
    };
    round_trips(WARM_UP);
    let before = server.allocations();
    round_trips(MEASURED);
    let allocations = server.allocations() - before;
    drop(reader);
    server.stop();
    assert_eq!(
        allocations, 0,
        "server allocations during {MEASURED} echoes over TLS"
    );
}

/// Two GETs of a 64 MiB file (the hash computed, then cached), each counted over a window of
/// the stream; over TLS when `tls` is given (the server's configuration and the CA the client
/// trusts).
fn get_allocates_nothing(
    counts: &'static Counts,
    tls: Option<(
        std::sync::Arc<rustls::ServerConfig>,
        rustls::pki_types::CertificateDer<'static>,
    )>,
) {
    let label = if tls.is_some() { "get-tls" } else { "get" };
    let scratch = Scratch::new(label);
    let size = 64 * MIB;
    let file = File::create(scratch.path().join("big")).unwrap();
    // Sparse: reads as zeros, costs no disk. The hash the first GET stores is trusted by the
    // second only if the hashing began more than the racy window after the file's last change
    // — its ctime, which setting the mtime back moves too — so the test waits that out.
    file.set_len(size).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    drop(file);
    std::thread::sleep(Duration::from_nanos(
        monoreactor::internal::RACY_WINDOW_NS as u64 * 2,
    ));
    let (server_tls, ca) = tls.map_or((None, None), |(config, ca)| (Some(config), Some(ca)));
    let server = Running::start(
        Config {
            root: scratch.path().to_path_buf(),
            files: true,
            tls: server_tls,
            ..config()
        },
        counts,
    );

    let mut reader = match &ca {
        None => Reader::connect(server.addrs.framed, b""),
        Some(ca) => Reader::connect_tls(server.addrs.framed, ca),
    };
    let mut measured_allocations = Vec::new();
    // First GET: the hash is computed alongside (and stored at the end); second: cached.
    for (stream, hash_known) in [(1, false), (3, true)] {
        let get = GetRequest {
            offset: 0,
            path: "big",
        };
        let mut payload = vec![0; get.payload_len()];
        get.emit(&mut payload);
        reader.send(&Frame::new(FrameType::Get, Flags::NONE, stream, &payload).to_vec());
        let info = reader.frame(&mut payload);
        assert_eq!(
            (info.frame_type, info.stream),
            (FrameType::FileInfo, stream),
            "{:?}",
            String::from_utf8_lossy(&payload)
        );
        let info = FileInfo::parse(&payload).unwrap();
        assert_eq!(
            (info.size, info.hash.is_some()),
            (size, hash_known),
            "GET {stream}"
        );

        let warmed = reader.stream_payload(FrameType::Data, stream, STREAM_WARM_UP);
        let before = server.allocations();
        let measured = reader.stream_payload(FrameType::Data, stream, STREAM_MEASURED);
        measured_allocations.push(server.allocations() - before);
        // The rest, then the DIGEST (which stores the hash on the first GET).
        let rest = size - warmed - measured;
        assert!(rest >= size / 4, "the window ends far from the end");
        assert_eq!(reader.stream_payload(FrameType::Data, stream, rest), rest);
        let digest = reader.frame(&mut payload);
        assert_eq!(
            (digest.frame_type, digest.stream),
            (FrameType::Digest, stream)
        );
    }

    drop(reader);
    server.stop();
    assert_eq!(
        measured_allocations,
        [0, 0],
        "server allocations while {STREAM_MEASURED} bytes of a file streamed (hash computed, \
         hash cached){}",
        if ca.is_some() { ", over TLS" } else { "" }
    );
}
