//! # monoreactor
//!
//! A server built as one event-driven, single-threaded reactor: one process, one thread, one
//! [`mio::Poll`]. It serves a length-prefixed framed protocol (echo, and authenticated remote
//! exec), raw TCP echo (RFC 862) and UDP echo, and is written to be read by people studying
//! nonblocking I/O.
//!
//! ## What it offers, to three kinds of users
//! - **Run a server:** [`Server`] bound from a [`Config`] (with its [`Limits`] and [`Access`]),
//!   run on the calling thread until a [`ShutdownHandle`] or a signal stops it; [`workers`] runs
//!   several such processes on one port. This is what `monoreactor serve` does.
//! - **Write a client:** [`proto`], the protocol sans-IO (frames, the incremental decoder, every
//!   message), and [`client`], a blocking client for echo, exec and files.
//! - **Drive the state machine yourself** (tests, fuzzers, another event loop): a [`Connection`]
//!   is fed through any [`Transport`] with a [`Context`] and answers with a [`Verdict`] and the
//!   [`Readiness`] it wants next. Its commands run on a [`children::Children`] and its files on a
//!   [`disk::Disk`]; the `testkit` feature adds scripted implementations of all three and
//!   `testkit::ConnHarness`, which drives a connection the way the loop does.
//!
//! ## A tour of the source, from the wire up
//! The modules behind this surface are private; their docs are in the source, and
//! `docs/ARCHITECTURE.md` walks through them.
//! - `proto/` — the protocol, sans-IO. No sockets, no processes, no clock.
//! - `service/` — what requests do, as state machines that own no descriptor: echo, one running
//!   command (`ExecSession`: stdin credit, deadlines, EXIT), one file transfer; they reach
//!   processes through [`children::Children`] and the disk through [`disk::Disk`].
//! - `buffer.rs`, `outbox.rs` — pooled buffers; one connection's output, whole frames only, and
//!   the one backpressure question every producer asks.
//! - `transport/` — the one layer a connection reads and writes through (the socket, with
//!   `sendfile`, or TLS 1.3 over it: rustls for the handshake, an in-place record layer after
//!   it; where a PROXY-protocol parser would sit), applying the loop's edge-triggered rules to
//!   each read and write.
//! - `conn/` — one connection's state machine: reading within a budget, frames, its open streams,
//!   deadlines, orderly close.
//! - `sys/` — the I/O layer for what is not a socket: child processes (pipes, pidfds, process
//!   groups), the root directory paths are confined to, the files, and the disk helper process
//!   that makes the blocking disk calls off the loop.
//! - `reactor/` — the loop, the only `poll()`: tokens, the slab, the ready list, timers, accept,
//!   signals, UDP echo, the metrics port. The edge-triggered rules are stated once at the top of
//!   that module.
//! - `metrics/` — access lines (one per request, escaped), the counters (plain integers bumped
//!   in the loop), their Prometheus rendering, and the metrics port's sans-IO HTTP.
//! - `server.rs`, `workers.rs`, `limits.rs`, `access/`, `reload.rs` — binding and
//!   configuration, worker processes, every limit in one struct, the token, and what a SIGHUP
//!   may change on a running server.
//!
//! The load generator behind `monoreactor bench` is its own crate (`monoreactor-bench`), and the
//! binary is `monoreactor-cli`: neither is a dependency of this one. The fuzz targets in `fuzz/`
//! drive the decoder and whole connections through the test kit (README, "Fuzzing").
//!
//! ## Feeding the decoder partial input
//! The decoder answers `Ok(None)` until a whole frame is present, whatever the split, so a
//! test can feed it one byte at a time:
//!
//! ```
//! use monoreactor::proto::{Decoder, Flags, Frame, FrameType};
//!
//! let wire = Frame::new(FrameType::EchoRequest, Flags::END_STREAM, 7, b"hello").to_vec();
//! let decoder = Decoder::new(1 << 20);
//! let mut received = Vec::new();
//! for (i, byte) in wire.iter().enumerate() {
//!     received.push(*byte);
//!     match decoder.decode(&received).expect("valid frame") {
//!         None => assert!(i + 1 < wire.len(), "only a complete frame decodes"),
//!         Some(frame) => {
//!             assert_eq!(i + 1, wire.len());
//!             assert_eq!(frame.header.stream, 7);
//!             assert_eq!(frame.payload, b"hello");
//!         }
//!     }
//! }
//! ```
//!
#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod access;
mod buffer;
mod conn;
mod limits;
mod metrics;
mod outbox;
mod reactor;
mod reload;
mod server;
mod service;
mod sys;
mod throttle;
mod timer;
mod transport;

pub mod client;
// The fuzz targets' entry points: see `fuzz/` and README, "Fuzzing".
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod proto;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod workers;

// Run a server.
pub use access::{
    Access, Authentication, CommandSlot, Credential, Credentials, ExecRule, FilesRight, Grant,
    NewEntry, QuotaHold, TOKEN_ENV, TOKEN_HASH_PREFIX, Token, Usage, generate_token, load_token,
    token_hash,
};
pub use limits::{
    DEFAULT_PROXIED_DRAIN_DELAY, InvalidLimits, Limits, MAX_CONNECTIONS, MAX_FRAME_LEN,
    MAX_STREAMS_PER_CONNECTION, MIN_FRAME_LEN, MIN_IO_BUFFER_LEN, default_client_memory,
};
pub use reactor::{ReactorStats, ShutdownHandle};
pub use reload::{Fresh, LogSwap, Reload, Reloader};
pub use server::{
    BindFailure, BoundAddrs, Config, DEFAULT_ECHO_ADDR, DEFAULT_FRAMED_ADDR, DEFAULT_ROOT,
    Listener, Listeners, Server, StartError, activated_listeners, bind_shared, bind_worker_metrics,
    raise_descriptor_limit, worker_metrics_addrs,
};
pub use sys::notify::{ACTIVATION_NAMES, Lifecycle, SystemdNotify};
pub use sys::reloadable::{MAX_RELOADABLE_FILE, read_reloadable};

// Drive a connection yourself.
pub use buffer::BufferPool;
pub use conn::{Connection, Context, Protocol, State, Verdict};
pub use timer::{Tick, WallClock};
pub use transport::proxy::{Cidr, ProxyMode, ProxyPolicy};
pub use transport::{
    ALPN, KeyFingerprint, Peer, Readiness, TlsSettings, Transport, key_fingerprint, tls_provider,
};

/// What a connection's commands run on: implement [`Children`](children::Children) to give
/// a [`Connection`] processes of your own (the server's are real ones; the test kit's are
/// scripted).
pub mod children {
    pub use crate::service::exec::{
        ChildId, ChildSource, Children, OutputPipe, SpawnError, SpawnSpec, Spawned,
    };
}

/// What the file service reads and writes through: implement [`Disk`](disk::Disk) to give a
/// [`Connection`] a disk of your own (the server's is the root directory and the disk helper;
/// the test kit's injects failures).
pub mod disk {
    pub use crate::service::disk::{
        BegunUpload, DirRead, Disk, DiskError, FileError, FileMeta, JobDone, JobId, JobKind,
        ListingHandle, OpenedFile, Pending, SyncKind, TransferPermit, UploadHandle,
    };
}

/// Not an API: what the `monoreactor` binary and this repository's own tests reach inside the
/// server (the disk helper's entry point, server policy constants). It may change in any
/// release.
#[doc(hidden)]
pub mod internal {
    pub use crate::service::echo::{MAX_DATAGRAM, REFUSED_SOURCE_PORTS};
    /// The disk helper's pieces, for its own tests.
    pub mod disk {
        pub use crate::sys::disk::{
            DiskDone, DiskHelper, HelperTokens, Job, MAX_HELD, MAX_IN_FLIGHT, Ring, SLOT_LEN,
            TRASH_PREFIX, write_job,
        };
    }
    pub use crate::sys::disk::helper_main;
    pub use crate::sys::errno::file_error;
    pub use crate::sys::hash_index::{INDEX_NAME, RACY_WINDOW_NS};
    pub use crate::sys::process::EXEC_ENV;
    pub use crate::sys::upload::{PARTIAL_TTL_NS, upload_id};
}
