//! # monoreactor
//!
//! A server built as one event-driven, single-threaded reactor: one process, one thread, one
//! [`mio::Poll`]. It serves a length-prefixed framed protocol (echo, and authenticated remote
//! exec), raw TCP echo (RFC 862) and UDP echo, and is written to be read by people studying
//! nonblocking I/O.
//!
//! ## A tour, from the wire up
//! - [`proto`] — the protocol, sans-IO: [`proto::Header`] (12 bytes), the incremental
//!   [`proto::Decoder`], the connection messages (HELLO / HELLO_OK / ERROR) and the exec
//!   messages ([`proto::exec`]). No sockets, no processes, no clock.
//! - [`service`] — what requests do, as state machines that own no descriptor: echo, and
//!   [`service::exec::ExecSession`] for one running command (stdin credit, deadlines, EXIT).
//! - [`outbox`] — one connection's output: whole frames only, bytes or file ranges, and the
//!   one backpressure question every producer asks ([`outbox::Outbox::may_produce`]).
//! - [`transport`] — the one layer a connection reads and writes through
//!   ([`transport::Transport`]: the socket, with `sendfile`; where TLS or a PROXY-protocol
//!   parser would sit), where each read and write applies the loop's edge-triggered rules.
//! - [`conn`] — one connection's state machine over any [`transport::Transport`]: reading
//!   within a budget, frame handling, its open streams, deadlines, orderly close.
//! - [`sys`] — the I/O layer for what is not a socket: child processes (pipes, pidfds, process
//!   groups), the root directory paths are confined to, and the disk helper process that makes
//!   the blocking disk calls (`fsync`, the unlink of a big file) off the loop.
//! - [`reactor`] — the loop: tokens (a connection's socket, or one of its commands'
//!   descriptors), the slab, the ready list, timers, accept, signals. The edge-triggered rules
//!   are stated once at the top of that module.
//! - [`server`] — configuration and binding; [`limits`] — every limit in one struct;
//!   [`access`] — the token and who may do what.
//! - [`client`] — a blocking client. The load generator behind `monoreactor bench` is its own
//!   crate, `monoreactor-bench`, and the binary is `monoreactor-cli`.
//! - [`testkit`] — helpers for your own tests: a fragmenting writer, scripted I/O, scripted
//!   child processes and [`testkit::ConnHarness`], which drives a connection the way the loop
//!   does (the `testkit` feature).
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

#![deny(missing_docs)]

pub mod access;
pub mod buffer;
pub mod client;
pub mod conn;
pub mod limits;
pub mod outbox;
pub mod proto;
pub mod reactor;
pub mod server;
pub mod service;
pub mod sys;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod throttle;
pub mod timer;
pub mod transport;
pub mod workers;
