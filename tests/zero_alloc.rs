//! In steady state an echo allocates nothing on the server: buffers come from the pool and go
//! back to it, and every list the loop uses was sized up front.
//!
//! The server runs in this process, on its own thread, under a global allocator that counts
//! only that thread's allocations; the client's allocations (on the test thread) are not
//! counted. Deterministic: a count, not a timing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use monoreactor::client::Client;
use monoreactor::proto::{Decoder, Flags, Frame, FrameType};
use monoreactor::server::{Config, Server};

struct CountingAllocator;

static SERVER_ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IS_SERVER_THREAD: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    // `try_with`: the allocator may run while thread-locals are being torn down.
    if IS_SERVER_THREAD.try_with(Cell::get).unwrap_or(false) {
        SERVER_ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator unchanged; counting has no effect on
// the memory handed out.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
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

/// Sends one pre-encoded request and reads exactly `reply_len` bytes back.
fn round_trip(stream: &mut TcpStream, request: &[u8], reply: &mut [u8]) {
    stream.write_all(request).unwrap();
    stream.read_exact(reply).unwrap();
}

#[test]
fn steady_state_echo_allocates_nothing_on_the_server() {
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let config = Config {
        framed: localhost,
        echo_tcp: Some(localhost),
        echo_udp: None,
        files: false,
        handle_signals: false,
        ..Config::default()
    };
    let server = Server::bind(config).unwrap();
    let addrs = server.addrs();
    let shutdown = server.shutdown_handle();
    let server_thread = std::thread::spawn(move || {
        IS_SERVER_THREAD.with(|flag| flag.set(true));
        server.run()
    });

    // Framed: HELLO once, then ECHO_REQUEST / ECHO_REPLY of 64 bytes.
    let payload = [0x5a; 64];
    let client = Client::connect(&addrs.framed.to_string(), TIMEOUT).unwrap();
    let mut framed = client.into_stream();
    let request = Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 1, &payload).to_vec();
    let mut reply = vec![0; request.len()];
    for _ in 0..WARM_UP {
        round_trip(&mut framed, &request, &mut reply);
    }
    let before = SERVER_ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..MEASURED {
        round_trip(&mut framed, &request, &mut reply);
    }
    let framed_allocations = SERVER_ALLOCATIONS.load(Ordering::Relaxed) - before;
    let frame = Decoder::new(1 << 20).decode(&reply).unwrap().unwrap();
    assert_eq!(
        (frame.header.frame_type, frame.payload),
        (FrameType::EchoReply, &payload[..])
    );

    // Raw echo: 64 bytes out, the same 64 back.
    let mut raw = TcpStream::connect(addrs.echo_tcp.unwrap()).unwrap();
    raw.set_nodelay(true).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut echoed = [0; 64];
    for _ in 0..WARM_UP {
        round_trip(&mut raw, &payload, &mut echoed);
    }
    let before = SERVER_ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..MEASURED {
        round_trip(&mut raw, &payload, &mut echoed);
    }
    let raw_allocations = SERVER_ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(echoed, payload);

    shutdown.shutdown().unwrap();
    server_thread.join().unwrap().unwrap();
    assert!(
        SERVER_ALLOCATIONS.load(Ordering::Relaxed) > 0,
        "the counter sees the server thread at all"
    );
    assert_eq!(
        framed_allocations, 0,
        "framed: server allocations during {MEASURED} echoes"
    );
    assert_eq!(
        raw_allocations, 0,
        "raw: server allocations during {MEASURED} echoes"
    );
}
