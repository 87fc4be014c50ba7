//! # monoreactor
//!
//! A server built as one event-driven, single-threaded reactor: one process, one thread, one
//! [`mio::Poll`]. It serves a length-prefixed framed protocol, raw TCP echo (RFC 862) and UDP
//! echo, and is written to be read by people studying nonblocking I/O.
//!
//! ## A tour, from the wire up
//! - [`proto`] — the protocol, sans-IO: [`proto::Header`] (12 bytes), the incremental
//!   [`proto::Decoder`], and the HELLO / HELLO_OK / ERROR messages. No sockets, no clock.
//! - [`conn`] — one connection's state machine over any `Read + Write`: reading within a
//!   budget, frame handling, backpressure, deadlines, orderly close.
//! - [`service`] — what requests do (echo today).
//! - [`reactor`] — the loop: tokens and the slab, the ready list, timers, accept, signals.
//!   The edge-triggered rules are stated once at the top of that module.
//! - [`server`] — configuration and binding; [`limits`] — every limit in one struct.
//! - [`client`] — a blocking client; [`bench`](mod@bench) — the load generator behind `monoreactor bench`.
//! - [`testkit`] — helpers for your own tests: a fragmenting writer and a scripted I/O;
//!   [`procstat`] — memory, CPU and thread counts from `/proc`.
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
pub mod bench;
pub mod buffer;
pub mod client;
pub mod conn;
pub mod limits;
pub mod outbox;
pub mod procstat;
pub mod proto;
pub mod reactor;
pub mod server;
pub mod service;
pub mod sys;
pub mod testkit;
pub mod throttle;
pub mod timer;
pub mod transport;
