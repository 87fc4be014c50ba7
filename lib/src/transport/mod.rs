//! The transport: the one layer a connection reads and writes its bytes through, and the rules
//! every read and write follows.
//!
//! A [`Connection`](crate::conn::Connection) owns no descriptor. Each drive is handed a
//! [`Transport`] — the `mio` socket in the server, a scripted peer in tests — and every byte in
//! or out goes through it: reads with `IoState::read_once`, writes with
//! `IoState::write_once` and (for whole queues and file ranges) the outbox, which calls
//! [`Transport::send_file`] for a file range. `IoState` is what the connection knows of its
//! transport between drives: the readiness hints (may read, may write) and the half-closes
//! seen, kept true by the edge-triggered rules stated at the top of [`crate::reactor`]. Its
//! reads and writes apply them, and so does the outbox's flush, which writes whole queues
//! through the same hints.
//!
//! # A transport under the framed protocol: TLS, PROXY
//! The framed logic sees plaintext through these traits and nothing else, so a layer that
//! changes the bytes on the wire is a `Transport` wrapping the socket, and the connection does
//! not change. The reactor keeps registering the socket underneath in the poll.
//!
//! The **TLS** transport is `tls::TlsLink`: a connection's `tls::TlsSession` (its state and
//! buffers, kept by the reactor beside the slot) lent the socket for one drive. It is built
//! as rustls' `tlsserver-mio` drives a session — read records, process them, hand out
//! plaintext, write records, and derive the poll interest from what the session wants — with
//! rustls' unbuffered API for the handshake and a record layer of our own after it
//! (`record.rs`), because rustls allocates per record (`tls.rs` has the measurement). It
//! implements:
//! - [`Read`]: hand out plaintext already opened; else open the next whole record in the
//!   incoming buffer (in place); else read the socket. It keeps the socket's contract: `Ok(0)`
//!   only at the end of the stream (close_notify, or the peer's FIN); `WouldBlock` when there
//!   is no plaintext and the socket is drained; fewer bytes than asked only when the socket
//!   beneath is drained (it reads on until the buffer is full or the socket says so), because
//!   a short read is what clears the read hint (epoll(7)). The one exception is the end of the
//!   handshake, where it stops with `WouldBlock` so that the reactor drives the connection
//!   again with the new [`Peer`] (encrypted, the client's key).
//! - [`Write`]: seal the plaintext one record (16 KiB) at a time into the outgoing buffer and
//!   write it to the socket. Fewer bytes than offered, or `WouldBlock` for none, only when the
//!   socket is full: records already sealed wait in the session, not in the outbox.
//! - [`Transport::send_pending`]: write the outgoing buffer until it is empty or the socket is
//!   full (`WouldBlock`). The connection calls it after its own output, whenever the transport
//!   may write, so handshake records, alerts and KeyUpdates go out although no frame is queued.
//! - [`Transport::wants`]: WRITABLE while records wait, READABLE while handshaking. A plain
//!   socket needs nothing of its own.
//! - [`Transport::shutdown_write`]: seal close_notify, then the socket's `shutdown(SHUT_WR)`
//!   once it has left.
//! - [`Transport::send_file`]: `sendfile` hands page-cache pages to the socket as they are,
//!   which is the point of it and exactly what TLS cannot allow: every byte must be encrypted
//!   in user space. So the link reads the range itself, but without copying it: up to four
//!   records at a time are read with one `preadv` straight into their plaintext slots in the
//!   outgoing buffer, sealed in place, and sent with one `write` (`TlsSession::send_file`);
//!   the outbox and the file transfers do not change. (Kernel TLS would be a transport that
//!   takes `sendfile` back: `tls.rs` says how.)
//!
//! The other mixup — a TLS client on the plaintext framed port — is the framed connection's
//! to see, from its first bytes (`conn/sniff.rs`).
//!
//! The **PROXY protocol** header is not a transport: it is taken off the socket once, before
//! the connection (or its TLS session) reads a byte, by a prelude that peeks at the first
//! bytes and reads exactly the header's (`proxy.rs`). After it the socket is the transport
//! again, untouched, and the connection's [`Peer`] carries the client's address from the
//! header.
//!
//! # How readiness flows
//! 1. The poll reports the socket; the reactor records it in the connection
//!    ([`Connection::on_ready`](crate::conn::Connection::on_ready) and
//!    [`on_read_closed`](crate::conn::Connection::on_read_closed)), which sets the hints.
//! 2. The drive reads and writes through the transport while the hints allow, and a short
//!    read or write, or `WouldBlock`, clears them (`IoState::read_once`,
//!    `IoState::write_once`).
//! 3. After the drive the reactor registers what the connection wants
//!    ([`Connection::interest`](crate::conn::Connection::interest)) together with what the
//!    transport wants ([`Transport::wants`]), both a [`Readiness`]; only the reactor turns
//!    that into a `mio::Interest`.

pub(crate) mod proxy;
mod record;
pub(crate) mod tls;
mod tls_config;

pub use tls_config::{ALPN, TlsSettings, key_fingerprint, provider as tls_provider};

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::ops::BitOr;
use std::os::unix::fs::FileExt;

/// What a connection needs from its transport: bytes both ways with a nonblocking socket's
/// contract (see the module docs), closing the write half, sending from a file, and what it
/// needs from the poll and holds back for itself (both nothing for a plain socket).
pub trait Transport: Read + Write {
    /// Sends FIN after the pending bytes (`shutdown(SHUT_WR)`).
    fn shutdown_write(&mut self) -> io::Result<()>;

    /// Sends up to `len` bytes of `file` from `offset`; returns how many went, fewer than
    /// `len` only if the transport took fewer (it is full) or the file ended. The default
    /// reads chunks and writes them until then (a short write rereads the rest next time); a
    /// socket sends straight from the page cache with `sendfile`.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut chunk = [0; 16 << 10];
        let mut sent = 0;
        while sent < len {
            let want = (len - sent).min(chunk.len());
            let n = file.read_at(&mut chunk[..want], offset + sent as u64)?;
            if n == 0 {
                break;
            }
            let written = match self.write(&chunk[..n]) {
                Ok(written) => written,
                // What went before counts; the error comes again on the next call.
                Err(error) if sent > 0 && error.kind() == ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            };
            sent += written;
            if written < n {
                break;
            }
        }
        Ok(sent)
    }

    /// Sends what the transport holds back for itself (a TLS session's records), until it
    /// holds nothing (`Ok`) or the socket is full (`WouldBlock`). A socket holds nothing.
    fn send_pending(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// What the transport needs from the poll for itself, on top of what the connection
    /// wants: a TLS session with records waiting needs WRITABLE. A socket needs nothing.
    fn wants(&self) -> Readiness {
        Readiness::NONE
    }
}

impl Transport for mio::net::TcpStream {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut offset = offset;
        rustix::fs::sendfile(&*self, file, Some(&mut offset), len).map_err(io::Error::from)
    }
}

/// What the transport knows of the client at the other end, for the access checks: whether
/// the bytes are encrypted, whether the client is on this machine, and the key of the
/// certificate it presented. The reactor fills it in for each drive ([`Context::peer`]).
///
/// [`Context::peer`]: crate::conn::Context::peer
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The client's address: the socket's peer, or the one a trusted proxy reported for it.
    /// Every log line about the connection names it.
    pub addr: SocketAddr,
    /// The connection runs over TLS: its bytes are encrypted, and the client checked the
    /// server's certificate.
    pub encrypted: bool,
    /// The client's address is a loopback address (127.0.0.0/8, ::1, ::ffff:127.x.y.z): its
    /// bytes never leave this machine, so a plaintext connection from it may authenticate.
    /// Behind a PROXY header, only if the balancer is on loopback too and the header names
    /// the client (a health check's or an `UNKNOWN` header's client may be anywhere).
    pub loopback: bool,
    /// The client certificate's key, if it presented one that the server verified against
    /// `--tls-client-ca`.
    pub client_key: Option<KeyFingerprint>,
    /// The connection is a load balancer's health check: its PROXY header was a v2 `LOCAL` or
    /// a v1 `UNKNOWN`, sent by the balancer for itself (`addr` is then the balancer's). A
    /// draining server fails these so the balancer stops sending it clients.
    pub health_check: bool,
}

impl Peer {
    /// A plaintext client on this machine: what a connection driven by hand (tests, the test
    /// kit) is, and what every connection was before TLS.
    pub const LOCAL: Peer = Peer {
        addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
        encrypted: false,
        loopback: true,
        client_key: None,
        health_check: false,
    };
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo: the key a client certificate stands
/// for, whatever certificate carries it (so a renewed certificate with the same key keeps its
/// credential). Written as 64 lowercase hex digits, as `openssl` prints it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyFingerprint(pub [u8; 32]);

impl KeyFingerprint {
    /// Parses 64 hex digits (either case; `:` between bytes allowed, as `openssl` writes them).
    pub fn parse(text: &str) -> Result<KeyFingerprint, String> {
        let digits: Vec<u8> = text.bytes().filter(|&byte| byte != b':').collect();
        if digits.len() != 64 {
            return Err(format!(
                "a key fingerprint is 64 hex digits (SHA-256 of the key); `{text}` has {}",
                digits.len()
            ));
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| format!("`{text}` is not hex"))?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| format!("`{text}` is not hex"))?;
        }
        Ok(KeyFingerprint(bytes))
    }
}

impl std::fmt::Display for KeyFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl std::fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyFingerprint({self})")
    }
}

/// Which readiness a connection (or its transport) waits for: the poll interest, in the
/// crate's own terms, so that no `mio` type is part of the connection's API.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness(u8);

impl Readiness {
    /// Nothing.
    pub const NONE: Readiness = Readiness(0);
    /// Bytes to read (or the peer's FIN, or an error).
    pub const READABLE: Readiness = Readiness(1 << 0);
    /// Room to write.
    pub const WRITABLE: Readiness = Readiness(1 << 1);

    /// Whether READABLE is included.
    pub const fn is_readable(self) -> bool {
        self.0 & Readiness::READABLE.0 != 0
    }

    /// Whether WRITABLE is included.
    pub const fn is_writable(self) -> bool {
        self.0 & Readiness::WRITABLE.0 != 0
    }
}

impl BitOr for Readiness {
    type Output = Readiness;

    fn bitor(self, other: Readiness) -> Readiness {
        Readiness(self.0 | other.0)
    }
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match (self.is_readable(), self.is_writable()) {
            (false, false) => "NONE",
            (true, false) => "READABLE",
            (false, true) => "WRITABLE",
            (true, true) => "READABLE | WRITABLE",
        };
        f.write_str(name)
    }
}

/// What a connection knows of its transport between drives, one bit each: the readiness
/// hints and the half-closes. Reads and writes go through its methods, which keep the hints
/// true by the loop's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IoState(u8);

impl IoState {
    /// The transport may have bytes to read (cleared by `WouldBlock` or a short read).
    pub(crate) const READ_READY: u8 = 1 << 0;
    /// The transport may accept bytes (cleared by `WouldBlock` or a short write).
    pub(crate) const WRITE_READY: u8 = 1 << 1;
    /// A read returned 0: the peer will send nothing more.
    pub(crate) const PEER_EOF: u8 = 1 << 2;
    /// `shutdown(SHUT_WR)` was done.
    pub(crate) const WRITE_SHUT: u8 = 1 << 3;
    /// The poll reported the peer's FIN (or an error) with the bytes before it. Its edge is
    /// spent, so a short read no longer proves the socket drained: read on until 0 or an error.
    pub(crate) const READ_CLOSED: u8 = 1 << 4;

    /// A fresh transport's state: both hints set, since a new socket may already hold bytes
    /// and its send buffer is empty.
    pub(crate) const fn fresh() -> IoState {
        IoState(IoState::READ_READY | IoState::WRITE_READY)
    }

    pub(crate) fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    pub(crate) fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }

    /// Reads once into `buf` with the loop's rules. A read shorter than asked means the
    /// transport is drained (epoll(7)), which saves the extra `read` that would only return
    /// `WouldBlock` — unless the poll already reported the peer's FIN, whose edge is spent (see
    /// [`IoState::READ_CLOSED`]). `Interrupted` is retried.
    pub(crate) fn read_once<T: Transport>(&mut self, io: &mut T, buf: &mut [u8]) -> ReadOutcome {
        loop {
            match io.read(buf) {
                Ok(0) if !buf.is_empty() => return ReadOutcome::Eof,
                Ok(n) => {
                    if n < buf.len() && !self.has(IoState::READ_CLOSED) {
                        self.set(IoState::READ_READY, false);
                    }
                    return ReadOutcome::Data(n);
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    self.set(IoState::READ_READY, false);
                    return ReadOutcome::Drained;
                }
                Err(error) => return ReadOutcome::Failed(error),
            }
        }
    }

    /// Writes `bytes` once with the loop's rules: returns how many the transport took, 0 for
    /// `WouldBlock`; a write shorter than offered (or `WouldBlock`) means the transport is full
    /// (epoll(7)), which clears the write hint. `Interrupted` is retried; a write that takes
    /// nothing of a non-empty slice is an error.
    pub(crate) fn write_once<T: Transport>(
        &mut self,
        io: &mut T,
        bytes: &[u8],
    ) -> io::Result<usize> {
        loop {
            match io.write(bytes) {
                Ok(0) if !bytes.is_empty() => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    if n < bytes.len() {
                        self.set(IoState::WRITE_READY, false);
                    }
                    return Ok(n);
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    self.set(IoState::WRITE_READY, false);
                    return Ok(0);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Lets the transport send what it holds back for itself ([`Transport::send_pending`]) if
    /// it may write, with the same rules: `WouldBlock` clears the write hint, `Interrupted` is
    /// retried.
    pub(crate) fn send_pending<T: Transport>(&mut self, io: &mut T) -> io::Result<()> {
        while self.has(IoState::WRITE_READY) {
            match io.send_pending() {
                Ok(()) => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    self.set(IoState::WRITE_READY, false);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// What one read did.
pub(crate) enum ReadOutcome {
    /// Some bytes were read.
    Data(usize),
    /// Nothing to read now.
    Drained,
    /// The peer closed its side.
    Eof,
    /// The connection failed.
    Failed(io::Error),
}
