//! TLS on the framed listener: a [`TlsSession`] per connection, and the [`TlsLink`] that pairs
//! it with the byte stream beneath for one drive and is the connection's [`Transport`].
//!
//! # Shape
//! The session owns no descriptor: a drive lends it the socket (`TlsSession::link`), and
//! everything it does is reading and writing through that `S: Transport`. So a test drives it
//! with an in-memory pipe, byte by byte if it likes, and the server with the `mio` socket; the
//! plain path is untouched (a plaintext connection is driven with the socket itself, as
//! before).
//!
//! A session goes through three phases:
//! 1. **Fresh**: nothing received, no memory but the session itself. The first byte decides:
//!    0x16 (a TLS handshake record) starts the handshake; anything else is a plaintext client
//!    on a TLS port, which is answered with a plaintext ERROR `BAD_HELLO` ("this port speaks
//!    TLS: connect with --tls") and closed.
//! 2. **Handshake**: rustls' `UnbufferedServerConnection` (TLS 1.3 only, ALPN `monoreactor`)
//!    on buffers this session owns: records read from the socket are handed to
//!    `process_tls_records` one whole record at a time, and what it encodes is appended to the
//!    outgoing buffer and sent with the transport's `send_pending`. One record at a time, so
//!    that rustls stops exactly at the client's Finished and never decrypts what follows it:
//!    those bytes are the first frames, and they are ours to open.
//! 3. **Traffic**: at the end of the handshake the session takes the traffic secrets from
//!    rustls (`dangerous_into_kernel_connection`, the API kTLS uses; rustls keeps only what it
//!    needs for key updates) and protects records itself (`record.rs`, on `ring::aead`): each
//!    record is opened in place in the incoming buffer and sealed in place in the outgoing one.
//!
//! # Why our own record layer: the measurement
//! The steady state must allocate nothing (`tests/zero_alloc.rs`). rustls 0.23's buffered API
//! (`writer().write` + `write_tls`, `read_tls` + `process_new_packets` + `reader()`) does not:
//! counted with a counting allocator like that test's, a session in memory made 2,048
//! allocations writing 2,048 records of 16 KiB (its encrypter returns every sealed record in a
//! new `Vec`, `PrefixedPayload::with_capacity` in the ring provider's
//! `MessageEncrypter::encrypt`, queued in `sendable_tls`) and 10,240 reading as many (every
//! record's plaintext is copied into a new `Vec` in `received_plaintext`). The unbuffered API
//! avoids neither, by its source: `WriteTraffic::encrypt` goes through the same encrypter and
//! copies its `Vec` into the caller's buffer, and `ReadTraffic::next_record` pops the same
//! `received_plaintext` `Vec`s (in-place decryption is a TODO there). So rustls runs the
//! handshake (unbuffered, because the buffers must be ours to carry on with), and the record
//! layer is ours, `record.rs`: seal and open in place per RFC 8446 §5, alerts, KeyUpdate both
//! ways (its secrets computed by rustls' `KernelConnection`), and a key update of our own
//! before the suite's confidentiality limit. With it a TLS GET allocates nothing in steady
//! state (`steady_state_tls_file_get_allocates_nothing_on_the_server`).
//!
//! # What the record layer enforces
//! After the handshake every record is application_data outside, version 0x0303, at most
//! 2^14 + 256 bytes (decided from the header), and at most 2^14 + 1 inside (record_overflow);
//! a ChangeCipherSpec is refused then (rustls ignores it only before the client's Finished).
//! A KeyUpdate may be fragmented over records but must end its record, nothing else may come
//! between its fragments, and no other post-handshake message is accepted; 32 in a row
//! without data at most. Any number of update_requested get one KeyUpdate of ours, before our
//! next data record (RFC 8446 §4.6.3), so a peer asking and never reading cannot grow the
//! outgoing buffer. Our own errors are answered with their fatal alert (bad_record_mac,
//! record_overflow, unexpected_message, decode_error, illegal_parameter), sent by the failing
//! read; the peer's are not answered. close_notify is the end of the stream (`Ok(0)`), and so
//! is a FIN without it (the frames are length-delimited; a record cut by the FIN is never
//! handed out); user_canceled is ignored.
//!
//! # Memory
//! A session holds a buffer only while bytes are in it, as a plaintext connection does
//! (`buffer.rs`). Figures are RSS growth of a debug server per connection (the test
//! `an_idle_tls_connection_holds_no_record_buffer` in `tests/tls_server.rs`, run with 2,000;
//! `monoreactor bench idle --addr tls://…` against a release server agrees), each including
//! the 88 bytes of any idle connection (its slot and timer entry):
//!
//! | State | Per connection | What it is |
//! |---|---|---|
//! | Fresh (connected, nothing sent) | ~150–260 B | the boxed session (160 bytes) |
//! | Handshake, after the server's flight | 8,296 B | the incoming buffer ([`FIRST_READ`], 4 KiB) and rustls' `UnbufferedServerConnection` (1,080 bytes boxed, and the handshake state it boxes: transcript, key schedule, ~3 KiB) |
//! | Established, idle | 2,252 B | the session (160) and its `Traffic` (1,744: each direction's key, 576, ring's AES-GCM key schedule and GHASH table; rustls' `KernelConnection`, 552, and the key-schedule state it boxes, ~200) |
//!
//! Before the record buffers were given back, an idle established connection cost 7,215
//! bytes after a HELLO (the 4 KiB incoming buffer and the flight's outgoing one) and 35,082
//! after a 20 KiB echo (both buffers one record, 33 KiB): every connection that had ever sent
//! or received a full record kept them for good.
//!
//! **During the handshake** the incoming buffer is allocated at the first byte, [`FIRST_READ`]
//! (4 KiB: a ClientHello fits), and grows only when a record's header asks for more, never
//! past one record ([`INCOMING_MAX`], 16,645 bytes); it stays until the handshake ends
//! (rustls' deframer keeps positions in it). The outgoing buffer holds the server's first
//! flight (about the certificate chain's size) until it has been sent, and is freed at the end
//! of that drive. What rustls keeps is what it is: its handshake state, freed at the end of
//! the handshake, when only the `KernelConnection` stays (it is what computes the KeyUpdate
//! secrets, and rustls offers no smaller form: the traffic secrets themselves are not handed
//! out, only keys and IVs, so the key schedule cannot be kept here instead). A client whose
//! handshake message does not fit one record (a client certificate chain over ~16 KiB) is
//! refused; the client's certificate chain, if it sent one, stays in the `KernelConnection`.
//!
//! **While a file is sent** the outgoing buffer is a bulk one ([`BULK_LEN`], 65,651 bytes:
//! four records and a KeyUpdate), from the list's second, smaller list, and it goes back at
//! the end of the drive like the other (counted in [`TlsSession::buffer_bytes`] while held).
//!
//! **After the handshake** both buffers are record buffers of one size,
//! [`RECORD_BUFFER_LEN`] (16,645 bytes: one whole incoming record; the outgoing side needs
//! [`OUTGOING_LEN`], 16,406), lent by the loop's free list ([`RecordBuffers`]) through the
//! [`TlsLink`] of a drive: the incoming one taken when the socket is read, the outgoing one
//! when a record is sealed. When the link is dropped (the drive is over), each one that is
//! empty (no partial record and no plaintext not yet handed out; nothing unsent) goes back.
//! So an idle established connection holds no buffer; one that stops in the middle of a record,
//! or whose client does not read, keeps what it needs (two records at most, and a control
//! record behind a full one at worst, whose grown buffer is then freed rather than kept). A
//! busy connection takes and gives back the same buffers (a pop and a push; nothing is
//! allocated in steady state: `tests/zero_alloc.rs` over TLS, echo and GET). The list keeps at
//! most `Limits::pooled_buffers` of them, as many as the buffer pool keeps of each shape (256:
//! 4.2 MiB), so a burst does not pin memory afterwards; a closed connection's buffers go back
//! to it too.
//!
//! Not reading into a shared scratch first: a drive of an idle connection takes the buffer
//! on top of the list, the one the last drive gave back (the same memory every time, hot in
//! the cache), and gives it back at its end, which is what a scratch would be; the difference
//! would show only when the list is empty, and then a record that does not end in the read
//! would need a buffer of its own anyway.
//!
//! The reactor counts what a session holds after each drive in `--max-client-memory`
//! ([`TlsSession::buffer_bytes`]: 0 for an idle established connection).
//!
//! # Files: no sendfile under TLS, and no copy either
//! [`Transport::send_file`] is overridden ([`TlsSession::send_file`]): a file's range goes in
//! batches of [`BULK_RECORDS`] (4) records, each batch read with one `preadv` straight into
//! the records' plaintext slots of a bulk outgoing buffer ([`BULK_LEN`], 64 KiB, from the
//! loop's list like the record buffers), sealed in place, and sent with one `write`. Per
//! 64 KiB: one `preadv`, four seals, one `write`, and no copy in user space (the default,
//! reading 16 KiB into a stack chunk and writing it through [`Write`], made a `pread`, a
//! copy into the record buffer and a `write` per 16 KiB). A batch is at most what the caller
//! offered, so a GET is a bounded read and encrypt per turn, never the whole file in memory.
//! Measured on a 1 GiB GET over loopback (release, two cores, old and new servers
//! interleaved, medians of four sets of 6 to 9 runs): the server's CPU went from 0.85 to
//! 0.64 s, 0.68 to 0.55 s, 1.04 to 0.82 s and 1.14 to 0.84 s (20-26 % less); its system
//! calls from 66,564 `sendto` and 65,539 `pread64` to 17,414 `sendto` (a thousand short
//! ones: the socket was full) and 16,384 `preadv`. Eight records per batch measured the same
//! as four.
//!
//! Kernel TLS would give `sendfile` back where the kernel has it (not here:
//! `setsockopt(TCP_ULP, "tls")` fails with ENOENT on this
//! kernel): at the end of the handshake, instead of `record.rs`, hand the secrets that
//! `dangerous_into_kernel_connection` returns (`ExtractedSecrets`: key, IV and sequence per
//! direction) to the socket with `setsockopt(SOL_TCP, TCP_ULP, "tls")` and then
//! `setsockopt(SOL_TLS, TLS_TX, tls12_crypto_info_aes_gcm_128 { .. })` and `TLS_RX`; from then
//! on the socket reads and writes plaintext, so the link would pass reads and writes through
//! and take the plain `sendfile` path, handling only KeyUpdate (`KernelConnection`, as here)
//! and alerts (control messages, `TLS_GET_RECORD_TYPE`).

use std::io::{self, ErrorKind, Read, Write};
use std::ops::Range;
use std::sync::Arc;

use log::debug;
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError};
use rustls::{ServerConfig, SupportedCipherSuite};

use super::record::{
    self, ALERT, APPLICATION_DATA, DECODE_ERROR, HANDSHAKE, HEADER_LEN, ILLEGAL_PARAMETER,
    INTERNAL_ERROR, MAX_CIPHERTEXT, MAX_PLAINTEXT, Protection, SEAL_OVERHEAD, UNEXPECTED_MESSAGE,
};
use super::{KeyFingerprint, Readiness, Transport};
use crate::proto::{ErrorCode, ErrorMessage};

/// The incoming buffer's size at the first byte: a ClientHello fits (rustls' is about 300
/// bytes, a browser's with post-quantum key shares about 1.8 KiB).
pub(crate) const FIRST_READ: usize = 4 << 10;
/// The incoming buffer's bound: one whole record (header and 2^14 + 256 bytes), the most that
/// must be held to open one.
pub(crate) const INCOMING_MAX: usize = HEADER_LEN + MAX_CIPHERTEXT;
/// The most one data record takes in the outgoing buffer.
pub(crate) const OUTGOING_LEN: usize = MAX_PLAINTEXT + SEAL_OVERHEAD;
/// The size of every record buffer after the handshake, in either direction: one whole
/// incoming record, the larger of the two (by 239 bytes), so that one free list
/// ([`RecordBuffers`]) serves both.
pub(crate) const RECORD_BUFFER_LEN: usize = INCOMING_MAX;
const _: () = assert!(OUTGOING_LEN <= RECORD_BUFFER_LEN);
/// Records a file's range is sealed in per batch, and sent with one `write`
/// ([`TlsSession::send_file`]).
pub(crate) const BULK_RECORDS: usize = 4;
/// The outgoing buffer a file's range is sent from: [`BULK_RECORDS`] full data records, and a
/// KeyUpdate in front of them when one is due (64 KiB and 115 bytes).
pub(crate) const BULK_LEN: usize = BULK_RECORDS * OUTGOING_LEN + KEY_UPDATE_LEN + SEAL_OVERHEAD;

/// The first byte of a TLS handshake record (a ClientHello's record).
const HANDSHAKE_RECORD: u8 = 0x16;
/// The ERROR text a plaintext client on a TLS port gets.
pub(crate) const PLAINTEXT_ON_TLS_TEXT: &str = "this port speaks TLS: connect with --tls";
/// Reads of a refused plaintext client's bytes before the close, so that it sees our FIN
/// after the ERROR frame, not a reset that could destroy it.
const REFUSE_DRAIN_READS: usize = 4;
/// Records sealed under one key before ours is updated, short of the suite's confidentiality
/// limit (AES-GCM: 2^24.5 records): the KeyUpdate itself takes one.
const KEY_UPDATE_MARGIN: u64 = 16;
/// TLS 1.3 KeyUpdate handshake message type (RFC 8446 §4.6.3).
const KEY_UPDATE: u8 = 24;
/// A KeyUpdate's bytes: type, 24-bit length (1), request_update.
const KEY_UPDATE_LEN: usize = 5;
/// KeyUpdates accepted in a row without an application data record between them (rustls and
/// BoringSSL allow 32): each costs an HKDF, and nothing else bounds them.
const MAX_KEY_UPDATES_IN_A_ROW: u8 = 32;
/// Alert descriptions this side acts on.
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;

/// The record buffers established sessions borrow: a free list of [`RECORD_BUFFER_LEN`]-byte
/// buffers, owned by the loop and lent to a session for one drive with its [`TlsLink`].
///
/// A session past the handshake takes a buffer when bytes arrive (a read) or must be sent (a
/// write, close_notify), and the link gives back each one that is empty when the drive ends,
/// so an idle connection holds none and a busy one takes and returns the same buffers (a pop
/// and a push: no allocation once the list has warmed up). Bounded like [`BufferPool`]'s
/// lists (`Limits::pooled_buffers`): a burst of busy connections leaves at most that many
/// behind, and a buffer that grew past the standard size (a control record
/// behind a full one) is freed rather than kept. Not the `BufferPool` itself: its buffers are
/// `--io-buffer` long (64 KiB by default, and possibly shorter than a record).
///
/// [`BufferPool`]: crate::buffer::BufferPool
///
/// A second list holds the [`BULK_LEN`]-byte buffers a file's range is sent from
/// ([`TlsSession::send_file`]: four records per `write`), bounded to a quarter as many, so
/// that it pins no more memory than the first (64 buffers of 64 KiB by default: 4.2 MiB).
#[derive(Debug)]
pub(crate) struct RecordBuffers {
    free: Vec<Vec<u8>>,
    max_free: usize,
    bulk: Vec<Vec<u8>>,
    max_bulk: usize,
    created: u64,
}

impl RecordBuffers {
    /// A list that keeps at most `max_free` record buffers and a quarter as many bulk ones
    /// (at least one if any; reserved up front, so giving back never allocates).
    pub(crate) fn new(max_free: usize) -> RecordBuffers {
        let max_bulk = max_free.div_ceil(BULK_RECORDS);
        RecordBuffers {
            free: Vec::with_capacity(max_free),
            max_free,
            bulk: Vec::with_capacity(max_bulk),
            max_bulk,
            created: 0,
        }
    }

    /// A zeroed buffer of [`BULK_LEN`] bytes: a pooled one if there is one, else a new one.
    pub(crate) fn take_bulk(&mut self) -> Vec<u8> {
        self.bulk.pop().unwrap_or_else(|| {
            self.created += 1;
            vec![0; BULK_LEN]
        })
    }

    /// A zeroed buffer of [`RECORD_BUFFER_LEN`] bytes (its length is its size): a pooled one
    /// if there is one, else a new one.
    pub(crate) fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| {
            self.created += 1;
            vec![0; RECORD_BUFFER_LEN]
        })
    }

    /// Returns a buffer; kept if it is of one of the two standard sizes and its list is not
    /// full, else freed. An empty `Vec` (no buffer) is ignored.
    pub(crate) fn give(&mut self, buffer: Vec<u8>) {
        let (list, max) = match buffer.len() {
            RECORD_BUFFER_LEN => (&mut self.free, self.max_free),
            BULK_LEN => (&mut self.bulk, self.max_bulk),
            _ => return,
        };
        if buffer.capacity() == buffer.len() && list.len() < max {
            list.push(buffer);
        }
    }

    /// Buffers created since the list was made (a miss allocates one).
    #[cfg(test)]
    pub(crate) fn created(&self) -> u64 {
        self.created
    }

    /// Buffers waiting for reuse.
    #[cfg(test)]
    pub(crate) fn free_len(&self) -> usize {
        self.free.len()
    }

    /// Bulk buffers waiting for reuse.
    #[cfg(test)]
    pub(crate) fn bulk_len(&self) -> usize {
        self.bulk.len()
    }
}

/// What happened in the session that the loop must act on, taken with
/// [`TlsSession::take_events`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsEvents {
    /// The handshake just finished: the peer changed (encrypted, perhaps a client key), so the
    /// drive stopped there, and the connection must be driven again (its bytes may be waiting).
    pub(crate) established: bool,
    /// A plaintext client was answered with an ERROR and closed.
    pub(crate) plaintext_client: bool,
}

enum Phase {
    /// Nothing received: the configuration the handshake will use.
    Fresh(Arc<ServerConfig>),
    Handshake(Box<UnbufferedServerConnection>),
    Traffic(Box<Traffic>),
    /// Failed or refused: every read and write fails.
    Failed,
}

/// After the handshake: the two directions' protection, and what rustls keeps for key updates.
struct Traffic {
    kernel: KernelConnection<ServerConnectionData>,
    tx: Protection,
    rx: Protection,
    /// Records sealed under one key before it is updated.
    tx_limit: u64,
    suite: SupportedCipherSuite,
    /// The peer asked for our key to be updated (update_requested): done once, before our next
    /// application data record (RFC 8446 §4.6.3), however many requests came meanwhile.
    key_update_due: bool,
    /// KeyUpdates received since the last application data record.
    key_updates_in_a_row: u8,
    /// The first bytes of a KeyUpdate whose record ended inside it (a handshake message may
    /// be fragmented over records, §5.1): `partial[..partial_len]`.
    partial: [u8; KEY_UPDATE_LEN],
    partial_len: usize,
}

/// One TLS connection's state and buffers; see the module docs.
pub(crate) struct TlsSession {
    phase: Phase,
    /// Bytes read from the socket: `start..filled` is not used yet. Fully initialized (its
    /// length is its size), so reads go straight into it.
    incoming: Vec<u8>,
    start: usize,
    filled: usize,
    /// Handshake: bytes from `start` handed to rustls (whole records only).
    fed: usize,
    /// Traffic: the opened record's content not handed out yet, in `incoming`.
    plain: Range<usize>,
    /// Sealed records (or handshake messages) to send: `out_start..out_end` of `outgoing`.
    outgoing: Vec<u8>,
    out_start: usize,
    out_end: usize,
    /// The peer sent close_notify, or its FIN.
    peer_closed: bool,
    /// `shutdown_write` was asked for while records were still waiting: done once they left.
    shutdown_pending: bool,
    client_key: Option<KeyFingerprint>,
    events: TlsEvents,
    /// The buffer memory last counted in the loop's client-memory total, in KiB (the loop's
    /// bookkeeping, kept here so a plaintext connection's slot does not carry it).
    pub(crate) reported_kib: u16,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let phase = match &self.phase {
            Phase::Fresh(_) => "fresh",
            Phase::Handshake(_) => "handshake",
            Phase::Traffic(_) => "traffic",
            Phase::Failed => "failed",
        };
        f.debug_struct("TlsSession")
            .field("phase", &phase)
            .field("pending_in", &(self.filled - self.start))
            .field("pending_out", &(self.out_end - self.out_start))
            .field("client_key", &self.client_key)
            .finish_non_exhaustive()
    }
}

impl TlsSession {
    /// A session that will handshake with `config` once the client's first bytes arrive.
    pub(crate) fn new(config: Arc<ServerConfig>) -> TlsSession {
        TlsSession {
            phase: Phase::Fresh(config),
            incoming: Vec::new(),
            start: 0,
            filled: 0,
            fed: 0,
            plain: 0..0,
            outgoing: Vec::new(),
            out_start: 0,
            out_end: 0,
            peer_closed: false,
            shutdown_pending: false,
            client_key: None,
            events: TlsEvents::default(),
            reported_kib: 0,
        }
    }

    /// The transport for one drive: this session over `io`, borrowing record buffers from
    /// `buffers` as it needs them; when the link is dropped (the drive is over), the empty
    /// ones go back ([`TlsSession::park`]).
    pub(crate) fn link<'a, S: Transport>(
        &'a mut self,
        io: &'a mut S,
        buffers: &'a mut RecordBuffers,
    ) -> TlsLink<'a, S> {
        TlsLink {
            session: self,
            io,
            buffers,
        }
    }

    /// The end of a drive: each buffer with nothing in it goes back to `buffers` (which keeps
    /// it if it is a standard record buffer, and frees it otherwise), so an idle connection
    /// holds none. The outgoing one once nothing in it is unsent, in any phase (the server's
    /// first flight, once sent, is not kept for the rest of the handshake); the incoming one
    /// once past the handshake, when it holds no partial record and no plaintext not handed
    /// out. During the handshake the incoming buffer stays: rustls' deframer keeps positions
    /// in it between calls.
    fn park(&mut self, buffers: &mut RecordBuffers) {
        if !self.out_pending() && !self.outgoing.is_empty() {
            self.out_start = 0;
            self.out_end = 0;
            buffers.give(std::mem::take(&mut self.outgoing));
        }
        if self.handshaking() {
            return;
        }
        if self.start == self.filled && self.plain.is_empty() && !self.incoming.is_empty() {
            self.start = 0;
            self.filled = 0;
            self.plain = 0..0;
            buffers.give(std::mem::take(&mut self.incoming));
        }
    }

    /// Gives every buffer back, whatever it holds: the connection is closed (the session
    /// is dropped next).
    pub(crate) fn recycle(&mut self, buffers: &mut RecordBuffers) {
        buffers.give(std::mem::take(&mut self.incoming));
        buffers.give(std::mem::take(&mut self.outgoing));
    }

    /// The handshake is finished: the bytes are encrypted and the client checked our
    /// certificate.
    pub(crate) fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Traffic(_))
    }

    /// The key of the client certificate verified in the handshake, if one was presented.
    pub(crate) fn client_key(&self) -> Option<KeyFingerprint> {
        self.client_key
    }

    /// The negotiated cipher suite, once established (for the log).
    pub(crate) fn suite(&self) -> Option<SupportedCipherSuite> {
        match &self.phase {
            Phase::Traffic(traffic) => Some(traffic.suite),
            _ => None,
        }
    }

    /// What happened since the last call.
    pub(crate) fn take_events(&mut self) -> TlsEvents {
        std::mem::take(&mut self.events)
    }

    /// Bytes of buffer the session holds (capacity), for the client-memory budget.
    pub(crate) fn buffer_bytes(&self) -> usize {
        self.incoming.capacity() + self.outgoing.capacity()
    }

    fn out_pending(&self) -> bool {
        self.out_start < self.out_end
    }

    fn handshaking(&self) -> bool {
        matches!(self.phase, Phase::Fresh(_) | Phase::Handshake(_))
    }

    // === Reading ===

    fn read_plaintext<S: Transport>(
        &mut self,
        io: &mut S,
        buffers: &mut RecordBuffers,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.phase {
            Phase::Traffic(_) => self.read_traffic(io, buffers, buf).inspect_err(|_| {
                // The alert a fatal error queued: the connection closes at once after a
                // failed read, so it goes now or never.
                let _ = self.flush_out(io);
            }),
            Phase::Fresh(_) | Phase::Handshake(_) => match self.handshake(io, buffers) {
                Ok(Handshake::Eof) => Ok(0),
                Ok(Handshake::Blocked) => Err(ErrorKind::WouldBlock.into()),
                // The peer changed: the loop drives the connection again with the new one.
                Ok(Handshake::Established) => {
                    self.events.established = true;
                    Err(ErrorKind::WouldBlock.into())
                }
                Err(error) => {
                    // The alert rustls queued, if any: the connection closes at once after a
                    // failed read, so it goes now or never.
                    let _ = self.flush_out(io);
                    Err(error)
                }
            },
            Phase::Failed => Err(failed()),
        }
    }

    /// Reads from the socket into the incoming buffer, making room for `need` bytes from
    /// `start` (growing the buffer to at most [`INCOMING_MAX`]). `Ok(None)` for `WouldBlock`;
    /// `Ok(Some((n, short)))` otherwise, `short` when the read proved the socket drained.
    fn fill<S: Read>(
        &mut self,
        io: &mut S,
        need: usize,
        buffers: &mut RecordBuffers,
    ) -> io::Result<Option<(usize, bool)>> {
        if self.start == self.filled && self.plain.is_empty() {
            self.start = 0;
            self.filled = 0;
        }
        let need = need.clamp(1, INCOMING_MAX);
        if self.incoming.len() - self.start < need && self.start > 0 {
            self.incoming.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.incoming.len() < need {
            if self.handshaking() {
                // The handshake's own buffer: allocated at the first byte, and once more for
                // a record longer than what it has held so far.
                let len = need.max(FIRST_READ.min(INCOMING_MAX));
                self.incoming.resize(len, 0);
            } else {
                // Past the handshake: a record buffer from the loop's list, holding any
                // record; the bytes of the one begun (in the handshake's smaller buffer, the
                // first frames) move into it, and the old buffer goes back (freed unless it is
                // a standard one).
                let mut buffer = buffers.take();
                buffer[..self.filled].copy_from_slice(&self.incoming[..self.filled]);
                buffers.give(std::mem::replace(&mut self.incoming, buffer));
            }
        }
        let room = &mut self.incoming[self.filled..];
        loop {
            match io.read(room) {
                Ok(n) => {
                    let short = n < room.len();
                    self.filled += n;
                    return Ok(Some((n, short)));
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(error) => return Err(error),
            }
        }
    }

    /// Drives the handshake as far as the bytes allow: reads the socket until rustls has what
    /// it needs, feeds it whole records, queues what it answers.
    fn handshake<S: Transport>(
        &mut self,
        io: &mut S,
        buffers: &mut RecordBuffers,
    ) -> io::Result<Handshake> {
        loop {
            if let Phase::Fresh(_) = self.phase {
                if self.start < self.filled {
                    self.begin_handshake(io)?;
                    continue;
                }
            } else if let Some(done) = self.advance_handshake()? {
                return Ok(done);
            }
            // rustls needs another record: read until one is whole.
            let need = match record::record_len(&self.incoming[self.start + self.fed..self.filled])
            {
                Ok(Some(len)) => self.fed + len,
                Ok(None) => self.fed + HEADER_LEN,
                Err(error) => return Err(self.fail(error.to_string())),
            };
            if need > INCOMING_MAX {
                return Err(self.fail(format!(
                    "a handshake message over {INCOMING_MAX} bytes (one TLS record)"
                )));
            }
            match self.fill(io, need, buffers)? {
                Some((0, _)) => {
                    self.peer_closed = true;
                    return Ok(Handshake::Eof);
                }
                Some(_) => {}
                None => return Ok(Handshake::Blocked),
            }
        }
    }

    /// The first bytes are here: a TLS record starts the handshake; anything else is a
    /// plaintext client, told so in its own protocol.
    fn begin_handshake<S: Transport>(&mut self, io: &mut S) -> io::Result<()> {
        let Phase::Fresh(config) = std::mem::replace(&mut self.phase, Phase::Failed) else {
            return Ok(());
        };
        if self.incoming[self.start] != HANDSHAKE_RECORD {
            self.refuse_plaintext(io);
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                "a plaintext client on the TLS port",
            ));
        }
        match UnbufferedServerConnection::new(config) {
            Ok(conn) => {
                self.phase = Phase::Handshake(Box::new(conn));
                Ok(())
            }
            Err(error) => Err(self.fail(format!("TLS session: {error}"))),
        }
    }

    /// Answers a plaintext client with a plaintext ERROR frame, shuts the write side, and reads
    /// what else it sent (so the close is a FIN after the frame, not a reset).
    fn refuse_plaintext<S: Transport>(&mut self, io: &mut S) {
        self.events.plaintext_client = true;
        let mut frame = Vec::new();
        ErrorMessage::new(ErrorCode::BadHello, PLAINTEXT_ON_TLS_TEXT).encode(0, &mut frame);
        self.outgoing = frame;
        self.out_start = 0;
        self.out_end = self.outgoing.len();
        // A fresh socket takes a hundred bytes; if it did not, the client is gone anyway.
        let _ = self.flush_out(io);
        let _ = io.shutdown_write();
        for _ in 0..REFUSE_DRAIN_READS {
            self.start = 0;
            self.filled = 0;
            match io.read(&mut self.incoming) {
                Ok(n) if n == self.incoming.len() => {}
                _ => break,
            }
        }
    }

    /// Runs rustls over the records fed so far; `Some` when the handshake ended (or the
    /// peer closed), `None` when it needs another record.
    fn advance_handshake(&mut self) -> io::Result<Option<Handshake>> {
        loop {
            let Phase::Handshake(conn) = &mut self.phase else {
                return Ok(None);
            };
            let fed = self.start..self.start + self.fed;
            let status = conn.process_tls_records(&mut self.incoming[fed]);
            let discard = status.discard;
            let step = match status.state {
                Ok(ConnectionState::EncodeTlsData(mut state)) => {
                    encode(&mut state, &mut self.outgoing, &mut self.out_end);
                    Step::Again
                }
                // Encoded into `outgoing` already: sent by `send_pending`, in order.
                Ok(ConnectionState::TransmitTlsData(state)) => {
                    state.done();
                    Step::Again
                }
                Ok(ConnectionState::BlockedHandshake) => Step::NeedRecord,
                // Also offered between our Finished and the client's: not done before that.
                Ok(ConnectionState::WriteTraffic(_)) => Step::MaybeDone,
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Step::PeerClosed,
                Ok(other) => Step::Failed(format!("unexpected TLS state {other:?}"), false),
                Err(error) => {
                    let deframed = refused_by_deframer(&error);
                    Step::Failed(format!("TLS handshake: {error}"), deframed)
                }
            };
            self.start += discard;
            self.fed -= discard;
            match step {
                Step::Again => {}
                Step::NeedRecord => {
                    if !self.feed_record()? {
                        return Ok(None);
                    }
                }
                Step::MaybeDone => {
                    if !conn_handshaking(&self.phase) {
                        self.finish_handshake()?;
                        return Ok(Some(Handshake::Established));
                    }
                    if !self.feed_record()? {
                        return Ok(None);
                    }
                }
                Step::PeerClosed => {
                    self.peer_closed = true;
                    return Ok(Some(Handshake::Eof));
                }
                Step::Failed(text, deframed) => {
                    self.queue_alert(deframed);
                    return Err(self.fail(text));
                }
            }
        }
    }

    /// Hands rustls the next whole record, if one is buffered.
    fn feed_record(&mut self) -> io::Result<bool> {
        let rest = &self.incoming[self.start + self.fed..self.filled];
        match record::record_len(rest) {
            Ok(Some(len)) if len <= rest.len() => {
                self.fed += len;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(error) => Err(self.fail(error.to_string())),
        }
    }

    /// After a rustls error: encodes what it queued before and with it (the alert), so the
    /// client learns why. rustls answers from its queue before it looks at the records again,
    /// so the same records as before are passed (an empty or shorter slice would not match
    /// the positions its handshake deframer keeps). Once the queue is empty, though, it
    /// deframes them again: harmless after a handshake message was refused (the record was
    /// consumed, and its state is an error from then on), but a record the deframer itself
    /// refused (`deframed`: one that does not decrypt, say) is still there, and refusing it
    /// again queues a second fatal alert, which rustls asserts never happens — a panic of the
    /// whole server in a debug build. That alert was then the only thing queued (every chunk
    /// is encoded before another record is fed): one call.
    fn queue_alert(&mut self, deframed: bool) {
        let Phase::Handshake(conn) = &mut self.phase else {
            return;
        };
        let calls = if deframed { 1 } else { 8 };
        // A ServerHello, a ChangeCipherSpec and the alert at most; bounded all the same.
        for _ in 0..calls {
            let fed = self.start..self.start + self.fed;
            let status = conn.process_tls_records(&mut self.incoming[fed]);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut state)) => {
                    encode(&mut state, &mut self.outgoing, &mut self.out_end);
                }
                Ok(ConnectionState::TransmitTlsData(state)) => state.done(),
                _ => break,
            }
        }
    }

    /// The client's Finished is verified: take the secrets and switch to our record layer.
    fn finish_handshake(&mut self) -> io::Result<()> {
        let Phase::Handshake(conn) = std::mem::replace(&mut self.phase, Phase::Failed) else {
            return Err(failed());
        };
        if self.fed != 0 {
            return Err(self.fail("bytes fed to rustls past its Finished".to_string()));
        }
        self.client_key = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| super::tls_config::key_fingerprint(leaf).ok());
        let (secrets, kernel) = match (*conn).dangerous_into_kernel_connection() {
            Ok(parts) => parts,
            Err(error) => return Err(self.fail(format!("TLS secrets: {error}"))),
        };
        let suite = kernel.negotiated_cipher_suite();
        let Some(tls13) = suite.tls13() else {
            return Err(self.fail("a TLS version other than 1.3".to_string()));
        };
        let tx = Protection::new(secrets.tx.0, &secrets.tx.1);
        let rx = Protection::new(secrets.rx.0, &secrets.rx.1);
        let (tx, rx) = match (tx, rx) {
            (Ok(tx), Ok(rx)) => (tx, rx),
            (Err(text), _) | (_, Err(text)) => return Err(self.fail(text)),
        };
        self.phase = Phase::Traffic(Box::new(Traffic {
            kernel,
            tx,
            rx,
            tx_limit: tls13
                .common
                .confidentiality_limit
                .saturating_sub(KEY_UPDATE_MARGIN),
            suite,
            key_update_due: false,
            key_updates_in_a_row: 0,
            partial: [0; KEY_UPDATE_LEN],
            partial_len: 0,
        }));
        Ok(())
    }

    fn read_traffic<S: Transport>(
        &mut self,
        io: &mut S,
        buffers: &mut RecordBuffers,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let mut copied = 0;
        let mut drained = false;
        loop {
            if !self.plain.is_empty() {
                let n = self.plain.len().min(buf.len() - copied);
                let from = self.plain.start;
                buf[copied..copied + n].copy_from_slice(&self.incoming[from..from + n]);
                self.plain.start += n;
                copied += n;
                if copied == buf.len() {
                    return Ok(copied);
                }
                continue;
            }
            if self.peer_closed {
                return Ok(copied);
            }
            if self.open_record()? {
                continue;
            }
            if drained {
                return if copied > 0 {
                    Ok(copied)
                } else {
                    Err(ErrorKind::WouldBlock.into())
                };
            }
            let need = match record::record_len(&self.incoming[self.start..self.filled]) {
                Ok(Some(len)) => len,
                Ok(None) => HEADER_LEN,
                Err(error) => return Err(self.fatal(error.alert(), error.to_string())),
            };
            match self.fill(io, need, buffers) {
                Ok(Some((0, _))) => {
                    if self.start < self.filled {
                        debug!("TLS peer closed mid-record");
                    }
                    self.peer_closed = true;
                }
                Ok(Some((_, short))) => drained = short,
                Ok(None) => drained = true,
                Err(_) if copied > 0 => return Ok(copied), // the error comes again next read
                Err(error) => return Err(error),
            }
        }
    }

    /// Opens the next whole record in the incoming buffer, if there is one: application data
    /// becomes `plain`; an alert or a KeyUpdate is acted on. Returns whether one was opened.
    fn open_record(&mut self) -> io::Result<bool> {
        let available = &mut self.incoming[self.start..self.filled];
        let len = match record::record_len(available) {
            Ok(Some(len)) if len <= available.len() => len,
            Ok(_) => return Ok(false),
            Err(error) => return Err(self.fatal(error.alert(), error.to_string())),
        };
        let Phase::Traffic(traffic) = &mut self.phase else {
            return Err(failed());
        };
        let (kind, content) = match traffic.rx.open(&mut available[..len]) {
            Ok(opened) => opened,
            Err(error) => return Err(self.fatal(error.alert(), error.to_string())),
        };
        let content = self.start + content.start..self.start + content.end;
        self.start += len;
        // Handshake messages must not be interleaved with other record types (§5.1).
        if kind != HANDSHAKE && traffic.partial_len > 0 {
            return Err(self.fatal(
                UNEXPECTED_MESSAGE,
                "a record inside a fragmented KeyUpdate".to_string(),
            ));
        }
        match kind {
            APPLICATION_DATA => {
                traffic.key_updates_in_a_row = 0;
                self.plain = content;
            }
            ALERT => self.on_alert(content)?,
            HANDSHAKE => self.on_post_handshake(content)?,
            other => {
                return Err(self.fatal(
                    UNEXPECTED_MESSAGE,
                    format!("a TLS record of inner type {other}"),
                ));
            }
        }
        Ok(true)
    }

    fn on_alert(&mut self, content: Range<usize>) -> io::Result<()> {
        match self.incoming[content] {
            [_, CLOSE_NOTIFY] => {
                self.peer_closed = true;
                Ok(())
            }
            // Followed by close_notify (RFC 8446 §6.1).
            [_, USER_CANCELED] => Ok(()),
            // Any other alert is fatal whatever its level (§6), and answered with nothing.
            [_, description] => Err(self.fail(format!("the client sent TLS alert {description}"))),
            _ => Err(self.fatal(DECODE_ERROR, "a malformed TLS alert".to_string())),
        }
    }

    /// Post-handshake messages a server accepts: KeyUpdate (RFC 8446 §4.6.3). No tickets are
    /// sent and no client certificate is requested after the handshake, so nothing else
    /// (unexpected_message). A KeyUpdate may be fragmented over records, but it changes the
    /// key, so it must end its record (§5.1): nothing may follow it in the same record.
    fn on_post_handshake(&mut self, content: Range<usize>) -> io::Result<()> {
        if content.is_empty() {
            return Err(self.fatal(UNEXPECTED_MESSAGE, "an empty handshake record".into()));
        }
        for at in content.clone() {
            let byte = self.incoming[at];
            let Phase::Traffic(traffic) = &mut self.phase else {
                return Err(failed());
            };
            traffic.partial[traffic.partial_len] = byte;
            traffic.partial_len += 1;
            let message = traffic.partial;
            match traffic.partial_len {
                1 if byte != KEY_UPDATE => {
                    return Err(self.fatal(
                        UNEXPECTED_MESSAGE,
                        format!("a post-handshake message of type {byte}, not KeyUpdate"),
                    ));
                }
                4 if message[1..4] != [0, 0, 1] => {
                    return Err(self.fatal(DECODE_ERROR, "a KeyUpdate of a bad length".into()));
                }
                KEY_UPDATE_LEN => {
                    traffic.partial_len = 0;
                    if at + 1 != content.end {
                        return Err(self.fatal(
                            UNEXPECTED_MESSAGE,
                            "bytes after a KeyUpdate in its record".into(),
                        ));
                    }
                    self.on_key_update(message[4])?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A whole KeyUpdate: the peer's key moves on; ours is updated before our next data record
    /// if it asked (the one answer to any number of requests meanwhile).
    fn on_key_update(&mut self, request: u8) -> io::Result<()> {
        let Phase::Traffic(traffic) = &mut self.phase else {
            return Err(failed());
        };
        if request > 1 {
            return Err(self.fatal(
                ILLEGAL_PARAMETER,
                "a KeyUpdate with a bad request field".into(),
            ));
        }
        traffic.key_updates_in_a_row += 1;
        if traffic.key_updates_in_a_row > MAX_KEY_UPDATES_IN_A_ROW {
            return Err(self.fatal(
                UNEXPECTED_MESSAGE,
                format!("over {MAX_KEY_UPDATES_IN_A_ROW} KeyUpdates without data"),
            ));
        }
        let (seq, secrets) = match traffic.kernel.update_rx_secret() {
            Ok(update) => update,
            Err(error) => {
                return Err(self.fatal(INTERNAL_ERROR, format!("TLS key update: {error}")));
            }
        };
        match Protection::new(seq, &secrets) {
            Ok(rx) => traffic.rx = rx,
            Err(text) => return Err(self.fatal(INTERNAL_ERROR, text)),
        }
        // Our KeyUpdate goes before our next data record (`seal_data`), at most one however
        // many requests came: a peer sending requests and never reading cannot grow the
        // outgoing buffer with answers.
        traffic.key_update_due |= request == 1;
        Ok(())
    }

    /// Sends KeyUpdate(update_not_requested) under the current key, then switches to the next.
    fn update_tx_key(&mut self) -> io::Result<()> {
        self.seal_raw(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0]);
        let Phase::Traffic(traffic) = &mut self.phase else {
            return Err(failed());
        };
        traffic.key_update_due = false;
        let (seq, secrets) = match traffic.kernel.update_tx_secret() {
            Ok(update) => update,
            Err(error) => return Err(self.fail(format!("TLS key update: {error}"))),
        };
        match Protection::new(seq, &secrets) {
            Ok(tx) => traffic.tx = tx,
            Err(text) => return Err(self.fail(text)),
        }
        Ok(())
    }

    // === Writing ===

    /// Seals `content` as one record at the end of the outgoing buffer (growing it if a
    /// control record must go behind a full one).
    fn seal_raw(&mut self, content_type: u8, content: &[u8]) {
        let Phase::Traffic(traffic) = &mut self.phase else {
            return;
        };
        if self.out_start == self.out_end {
            self.out_start = 0;
            self.out_end = 0;
        }
        let need = self.out_end + content.len() + SEAL_OVERHEAD;
        if self.outgoing.len() < need {
            // Only where no buffer was taken first (a fatal alert, sealed by a read), or a
            // control record goes behind a full one (the grown buffer is freed, not kept).
            // Exactly that much: `resize` alone would let the `Vec` double its capacity, a
            // full record's worth more than the control record needs (found by the
            // `tls_session` fuzz target: 49,935 bytes held against a bound of 33,546).
            let target = need.max(RECORD_BUFFER_LEN);
            self.outgoing
                .reserve_exact(target.saturating_sub(self.outgoing.len()));
            self.outgoing.resize(target, 0);
        }
        self.out_end += traffic
            .tx
            .seal(content_type, content, &mut self.outgoing[self.out_end..]);
    }

    /// Seals application data, updating our key first when the peer asked for it or the
    /// suite's limit is near.
    fn seal_data(&mut self, content: &[u8]) -> io::Result<()> {
        let Phase::Traffic(traffic) = &self.phase else {
            return Err(failed());
        };
        if traffic.key_update_due || traffic.tx.seq() >= traffic.tx_limit {
            self.update_tx_key()?;
        }
        self.seal_raw(APPLICATION_DATA, content);
        Ok(())
    }

    /// Past the handshake, before sealing: an empty outgoing buffer that is not a standard
    /// one (none, or the handshake's) is swapped for one from `buffers`. One with records
    /// waiting is kept as it is, and so is a bulk one (a file's, larger).
    fn take_outgoing(&mut self, buffers: &mut RecordBuffers) {
        if !self.out_pending() && !matches!(self.outgoing.len(), RECORD_BUFFER_LEN | BULK_LEN) {
            self.out_start = 0;
            self.out_end = 0;
            let buffer = buffers.take();
            buffers.give(std::mem::replace(&mut self.outgoing, buffer));
        }
    }

    fn write_plaintext<S: Transport>(
        &mut self,
        io: &mut S,
        buffers: &mut RecordBuffers,
        data: &[u8],
    ) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        if !self.is_established() {
            // Nothing can be encrypted before the handshake ends; a connection writing now is
            // closing (a timeout's ERROR frame), and closing at once is right.
            return Err(io::Error::new(
                ErrorKind::NotConnected,
                "the TLS handshake has not finished",
            ));
        }
        self.take_outgoing(buffers);
        let mut taken = 0;
        loop {
            if self.out_pending() {
                match self.flush_out(io) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(_) if taken > 0 => break, // the error comes again next write
                    Err(error) => return Err(error),
                }
            }
            if taken == data.len() {
                break;
            }
            let n = (data.len() - taken).min(MAX_PLAINTEXT);
            self.seal_data(&data[taken..taken + n])?;
            taken += n;
        }
        if taken == 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Sends up to `len` bytes of `file` from `offset` ([`Transport::send_file`]) without
    /// copying them in user space: in batches of up to [`BULK_RECORDS`] records, each read
    /// with one `preadv` straight into the records' plaintext slots of a bulk outgoing buffer
    /// ([`BULK_LEN`], from `buffers`), sealed in place, and sent with one `write`. What a
    /// `write` did not take stays in the outgoing buffer and goes first next time, as a
    /// `write`'s records do. Returns the bytes sealed (they went, as far as the caller is
    /// concerned: they wait in the session); fewer than `len` only when the socket is full
    /// (`WouldBlock` if nothing could be sealed) or the file ended. Every byte read is sealed
    /// in the same batch, so nothing read is counted twice or lost: the last record of a batch
    /// carries what the last slot got. A KeyUpdate due (asked for, or the suite's limit near)
    /// goes in front of the batch's records, and a batch never crosses the limit.
    fn send_file<S: Transport>(
        &mut self,
        io: &mut S,
        buffers: &mut RecordBuffers,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> io::Result<usize> {
        if len == 0 {
            return Ok(0);
        }
        if !self.is_established() {
            return Err(io::Error::new(
                ErrorKind::NotConnected,
                "the TLS handshake has not finished",
            ));
        }
        let mut sent = 0;
        let mut blocked = false;
        loop {
            if self.out_pending() {
                match self.flush_out(io) {
                    Ok(true) => {}
                    Ok(false) => {
                        blocked = true;
                        break;
                    }
                    Err(_) if sent > 0 => break, // the error comes again next call
                    Err(error) => return Err(error),
                }
            }
            if sent == len {
                break;
            }
            // The outgoing buffer is empty (`flush_out` reset it): a bulk one for the batch.
            if self.outgoing.len() != BULK_LEN {
                let buffer = buffers.take_bulk();
                buffers.give(std::mem::replace(&mut self.outgoing, buffer));
            }
            let Phase::Traffic(traffic) = &self.phase else {
                return Err(failed());
            };
            if traffic.key_update_due || traffic.tx.seq() >= traffic.tx_limit {
                self.update_tx_key()?;
            }
            let Phase::Traffic(traffic) = &mut self.phase else {
                return Err(failed());
            };
            let base = self.out_end;
            let room = (self.outgoing.len() - base) / OUTGOING_LEN;
            let before_limit = traffic.tx_limit.saturating_sub(traffic.tx.seq()).max(1);
            let records = room
                .min(usize::try_from(before_limit).unwrap_or(usize::MAX))
                .min((len - sent).div_ceil(MAX_PLAINTEXT));
            let want = (len - sent).min(records * MAX_PLAINTEXT);
            let read = {
                let mut slots: [io::IoSliceMut<'_>; BULK_RECORDS] =
                    std::array::from_fn(|_| io::IoSliceMut::new(&mut []));
                let mut rest = &mut self.outgoing[base..];
                let mut left = want;
                for slot in slots.iter_mut().take(records) {
                    let (record, after) = rest.split_at_mut(OUTGOING_LEN.min(rest.len()));
                    let n = left.min(MAX_PLAINTEXT);
                    *slot = io::IoSliceMut::new(&mut record[HEADER_LEN..HEADER_LEN + n]);
                    left -= n;
                    rest = after;
                }
                loop {
                    match rustix::io::preadv(file, &mut slots[..records], offset + sent as u64) {
                        Ok(n) => break n,
                        Err(rustix::io::Errno::INTR) => {}
                        Err(error) => {
                            if sent > 0 {
                                // The error comes again next call; the KeyUpdate, if one
                                // was sealed, goes out then.
                                return Ok(sent);
                            }
                            return Err(error.into());
                        }
                    }
                }
            };
            if read == 0 {
                // The file ended (a KeyUpdate sealed for the batch goes with what follows).
                break;
            }
            // A short read (the file ended inside the range) is sealed as it is: its last
            // record shorter, and the next batch reads on from there.
            let mut at = base;
            let mut left = read;
            while left > 0 {
                let n = left.min(MAX_PLAINTEXT);
                at += traffic
                    .tx
                    .seal_in_place(APPLICATION_DATA, n, &mut self.outgoing[at..]);
                left -= n;
            }
            self.out_end = at;
            sent += read;
        }
        if sent == 0 && blocked {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(sent)
    }

    /// Writes the outgoing buffer to the socket: `Ok(true)` once it is empty, `Ok(false)` when
    /// the socket is full (a short write or `WouldBlock`).
    fn flush_out<S: Write>(&mut self, io: &mut S) -> io::Result<bool> {
        while self.out_start < self.out_end {
            match io.write(&self.outgoing[self.out_start..self.out_end]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_start += n;
                    if self.out_start < self.out_end {
                        return Ok(false);
                    }
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(error) => return Err(error),
            }
        }
        self.out_start = 0;
        self.out_end = 0;
        Ok(true)
    }

    fn send_pending<S: Transport>(&mut self, io: &mut S) -> io::Result<()> {
        if self.out_pending() && !self.flush_out(io)? {
            return Err(ErrorKind::WouldBlock.into());
        }
        if self.shutdown_pending {
            self.shutdown_pending = false;
            io.shutdown_write()?;
        }
        Ok(())
    }

    fn shutdown_write<S: Transport>(
        &mut self,
        io: &mut S,
        buffers: &mut RecordBuffers,
    ) -> io::Result<()> {
        if self.is_established() {
            self.take_outgoing(buffers);
            self.seal_raw(ALERT, &[1, CLOSE_NOTIFY]);
        }
        if self.flush_out(io)? {
            io.shutdown_write()
        } else {
            self.shutdown_pending = true;
            Ok(())
        }
    }

    fn wants(&self) -> Readiness {
        let write = if self.out_pending() || self.shutdown_pending {
            Readiness::WRITABLE
        } else {
            Readiness::NONE
        };
        let read = if self.handshaking() {
            Readiness::READABLE
        } else {
            Readiness::NONE
        };
        write | read
    }

    /// Ends the session after an error of the peer's: the fatal alert `description` is queued
    /// (sealed, once the handshake is over; rustls sends its own before), sent by the failing
    /// read, then as [`TlsSession::fail`].
    fn fatal(&mut self, description: u8, text: String) -> io::Error {
        self.seal_raw(ALERT, &[2, description]);
        self.fail(text)
    }

    /// Ends the session: logged once here, then every call fails.
    fn fail(&mut self, text: String) -> io::Error {
        debug!("TLS: {text}");
        self.phase = Phase::Failed;
        self.plain = 0..0;
        io::Error::new(ErrorKind::InvalidData, text)
    }
}

/// Appends the handshake record rustls offers to `outgoing` at `*end`, growing it to fit
/// (the server's flight is about the certificate chain's size).
fn encode(
    state: &mut rustls::unbuffered::EncodeTlsData<'_, ServerConnectionData>,
    outgoing: &mut Vec<u8>,
    end: &mut usize,
) {
    loop {
        match state.encode(&mut outgoing[*end..]) {
            Ok(n) => {
                *end += n;
                return;
            }
            Err(EncodeError::InsufficientSize(size)) => {
                outgoing.resize(*end + size.required_size, 0);
            }
            Err(EncodeError::AlreadyEncoded) => return,
        }
    }
}

/// Whether rustls' error is one its deframer raised for a record (with a fatal alert queued),
/// rather than one about a handshake message: `ConnectionCore::handle_deframe_error` in rustls
/// 0.23 sends decode_error for a malformed record, record_overflow, bad_record_mac, and
/// unexpected_message for a bad ChangeCipherSpec. (A malformed handshake message is also
/// `InvalidMessage`; it too is refused before anything else is queued, so one call suits it.)
fn refused_by_deframer(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidMessage(_)
            | rustls::Error::PeerSentOversizedRecord
            | rustls::Error::DecryptError
            | rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::IllegalMiddleboxChangeCipherSpec
            )
    )
}

/// Whether rustls is still handshaking (the server may write after its Finished, before the
/// client's: that is not the end).
fn conn_handshaking(phase: &Phase) -> bool {
    match phase {
        Phase::Handshake(conn) => conn.is_handshaking(),
        _ => false,
    }
}

fn failed() -> io::Error {
    io::Error::new(ErrorKind::InvalidData, "the TLS session has failed")
}

/// What driving the handshake came to.
enum Handshake {
    /// Finished: the traffic keys are in place.
    Established,
    /// The socket is drained and rustls needs more.
    Blocked,
    /// The peer closed.
    Eof,
}

/// What one `process_tls_records` call asked for.
enum Step {
    Again,
    NeedRecord,
    MaybeDone,
    PeerClosed,
    /// rustls failed (or offered a state this side never expects); `true` when its deframer
    /// refused the record (see [`TlsSession::queue_alert`]).
    Failed(String, bool),
}

/// A [`TlsSession`] over the byte stream `S` for one drive: the connection's [`Transport`].
/// Its reads and writes keep the socket's contract (see [`crate::transport`]): a read shorter
/// than asked, or `WouldBlock`, only when the socket beneath is drained; a write shorter than
/// offered only when it is full; `Ok(0)` only at the end of the stream. Once, at the end of
/// the handshake, a read says `WouldBlock` with bytes possibly waiting
/// ([`TlsEvents::established`]): whoever drives it must drive again.
pub(crate) struct TlsLink<'a, S> {
    session: &'a mut TlsSession,
    io: &'a mut S,
    buffers: &'a mut RecordBuffers,
}

/// The drive is over: the empty record buffers go back to the loop's list.
impl<S> Drop for TlsLink<'_, S> {
    fn drop(&mut self) {
        self.session.park(self.buffers);
    }
}

impl<S: Transport> Read for TlsLink<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.session.read_plaintext(self.io, self.buffers, buf)
    }
}

impl<S: Transport> Write for TlsLink<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.session.write_plaintext(self.io, self.buffers, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.session.send_pending(self.io)
    }
}

impl<S: Transport> Transport for TlsLink<'_, S> {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.session.shutdown_write(self.io, self.buffers)
    }

    fn send_file(&mut self, file: &std::fs::File, offset: u64, len: usize) -> io::Result<usize> {
        self.session
            .send_file(self.io, self.buffers, file, offset, len)
    }

    fn send_pending(&mut self) -> io::Result<()> {
        self.session.send_pending(self.io)
    }

    fn wants(&self) -> Readiness {
        self.session.wants()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::path::PathBuf;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };
    use rustls::client::UnbufferedClientConnection;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::unbuffered::UnbufferedStatus;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    use super::*;
    use crate::transport::{TlsSettings, tls_config};

    /// An in-memory connection ([`Wire`]) and the record buffers its session borrows (the
    /// loop's list, in the server); it derefs to the wire.
    struct Pipe {
        wire: Wire,
        buffers: RecordBuffers,
    }

    impl Default for Pipe {
        fn default() -> Pipe {
            Pipe {
                wire: Wire::default(),
                buffers: RecordBuffers::new(4),
            }
        }
    }

    impl std::ops::Deref for Pipe {
        type Target = Wire;

        fn deref(&self) -> &Wire {
            &self.wire
        }
    }

    impl std::ops::DerefMut for Pipe {
        fn deref_mut(&mut self) -> &mut Wire {
            &mut self.wire
        }
    }

    impl TlsSession {
        /// The session over `pipe` for one drive, as the loop links it with the socket.
        fn over<'a>(&'a mut self, pipe: &'a mut Pipe) -> TlsLink<'a, Wire> {
            let Pipe { wire, buffers } = pipe;
            self.link(wire, buffers)
        }
    }

    /// One side of an in-memory connection: what the client sent, waiting to be read (a read
    /// of nothing is `WouldBlock`), and what the session wrote.
    #[derive(Default)]
    struct Wire {
        input: VecDeque<u8>,
        output: Vec<u8>,
        shut: bool,
        /// The client sent its FIN: reads past `input` return 0.
        eof: bool,
        /// The client reads nothing: every write is `WouldBlock`.
        full: bool,
        /// If not empty, how much each write takes in turn, over and over (0: `WouldBlock`).
        takes: Vec<usize>,
        turn: usize,
    }

    impl Read for Wire {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.input.is_empty() && !self.eof {
                return Err(ErrorKind::WouldBlock.into());
            }
            self.input.read(buf)
        }
    }

    impl Write for Wire {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.full {
                return Err(ErrorKind::WouldBlock.into());
            }
            let mut n = buf.len();
            if !self.takes.is_empty() {
                let take = self.takes[self.turn % self.takes.len()];
                self.turn += 1;
                if take == 0 {
                    return Err(ErrorKind::WouldBlock.into());
                }
                n = n.min(take);
            }
            self.output.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Transport for Wire {
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.shut = true;
            Ok(())
        }
    }

    /// A CA, a server certificate from it as PEM files (for `TlsSettings::load`), and a
    /// client configuration trusting the CA.
    struct Certs {
        dir: PathBuf,
        ca: CertificateDer<'static>,
    }

    impl Certs {
        fn new(label: &str) -> Certs {
            let dir = std::env::temp_dir().join(format!(
                "monoreactor-tls-unit-{label}-{}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "unit CA");
            let ca_key = KeyPair::generate().unwrap();
            let ca = params.self_signed(&ca_key).unwrap();
            let issuer = Issuer::new(params, ca_key);
            let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            let key = KeyPair::generate().unwrap();
            let cert = leaf.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
            Certs {
                dir,
                ca: ca.der().clone(),
            }
        }

        fn server(&self) -> Arc<ServerConfig> {
            TlsSettings {
                cert: self.dir.join("cert.pem"),
                key: self.dir.join("key.pem"),
                client_ca: None,
            }
            .load()
            .unwrap()
        }

        fn client(&self) -> ClientConnection {
            let name = ServerName::try_from("localhost").unwrap();
            ClientConnection::new(self.client_config(), name).unwrap()
        }

        fn client_config(&self) -> Arc<ClientConfig> {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca.clone()).unwrap();
            let mut config = ClientConfig::builder_with_provider(tls_config::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.alpn_protocols = vec![ALPN_NAME.to_vec()];
            // For `RawClient`, which takes the client's keys as the server takes its own.
            config.enable_secret_extraction = true;
            Arc::new(config)
        }
    }

    impl Drop for Certs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const ALPN_NAME: &[u8] = tls_config::ALPN;

    /// Everything the client wants to send now.
    fn client_bytes(client: &mut ClientConnection) -> Vec<u8> {
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).unwrap();
        }
        bytes
    }

    /// Reads what the session answers (plaintext appended to `plain`), sends what it holds,
    /// and hands the output to the client (whose plaintext goes to `CLIENT_GOT`).
    fn server_turn(
        session: &mut TlsSession,
        pipe: &mut Pipe,
        client: &mut ClientConnection,
        plain: &mut Vec<u8>,
    ) {
        let mut buf = [0; 4096];
        loop {
            let read = session.over(pipe).read(&mut buf);
            match read {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    // Once the handshake ends, read again (the loop's job in the server).
                    if !session.take_events().established {
                        break;
                    }
                }
                Err(error) => panic!("server read: {error}"),
            }
        }
        session.over(pipe).send_pending().unwrap();
        deliver(pipe, client);
    }

    /// Hands what the session wrote to the client, whose plaintext goes to `CLIENT_GOT`;
    /// returns whether the client has seen close_notify.
    fn deliver(pipe: &mut Pipe, client: &mut ClientConnection) -> bool {
        let mut out = &pipe.output[..];
        let mut closed = false;
        while !out.is_empty() {
            client.read_tls(&mut out).unwrap();
            client.process_new_packets().unwrap();
            let mut got = [0; 16 << 10];
            loop {
                match client.reader().read(&mut got) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => CLIENT_GOT.with(|all| all.borrow_mut().extend_from_slice(&got[..n])),
                    Err(_) => break,
                }
            }
        }
        pipe.output.clear();
        closed
    }

    thread_local! {
        /// What the client of the running test has read.
        static CLIENT_GOT: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn client_got() -> Vec<u8> {
        CLIENT_GOT.with(|all| std::mem::take(&mut *all.borrow_mut()))
    }

    /// The outer record types of a run of records.
    fn record_types(mut bytes: &[u8]) -> Vec<u8> {
        let mut types = Vec::new();
        while let Ok(Some(len)) = record::record_len(bytes) {
            types.push(bytes[0]);
            bytes = &bytes[len.min(bytes.len())..];
        }
        types
    }

    #[test]
    fn every_split_of_a_recorded_client_hello_gets_the_same_answer() {
        let certs = Certs::new("splits");
        let config = certs.server();
        let hello = client_bytes(&mut certs.client());
        let mut answers = Vec::new();
        for split in 0..=hello.len() {
            let mut session = TlsSession::new(Arc::clone(&config));
            let mut pipe = Pipe::default();
            let mut buf = [0; 64];
            pipe.input.extend(&hello[..split]);
            let first = session.over(&mut pipe).read(&mut buf);
            assert_eq!(
                first.map_err(|error| error.kind()),
                Err(ErrorKind::WouldBlock),
                "split {split}: nothing to hand out yet"
            );
            if split < hello.len() {
                assert!(pipe.output.is_empty(), "split {split}: no answer to a part");
            }
            pipe.input.extend(&hello[split..]);
            let second = session.over(&mut pipe).read(&mut buf);
            assert_eq!(
                second.map_err(|error| error.kind()),
                Err(ErrorKind::WouldBlock),
                "split {split}"
            );
            session.over(&mut pipe).send_pending().unwrap();
            assert!(!session.is_established(), "split {split}");
            answers.push(record_types(&pipe.output));
        }
        // ServerHello, ChangeCipherSpec, then the encrypted rest of the flight.
        assert_eq!(answers[0][..2], [HANDSHAKE_RECORD, 20]);
        assert!(
            answers.iter().all(|types| *types == answers[0]),
            "the same flight whatever the split"
        );
    }

    #[test]
    fn a_handshake_fed_one_byte_at_a_time_completes_and_carries_data_both_ways() {
        let certs = Certs::new("bytes");
        let mut client = certs.client();
        let mut session = TlsSession::new(certs.server());
        let mut pipe = Pipe::default();
        let mut plain = Vec::new();
        client.writer().write_all(b"first frame").unwrap();
        while client.is_handshaking() || client.wants_write() {
            for byte in client_bytes(&mut client) {
                pipe.input.push_back(byte);
                server_turn(&mut session, &mut pipe, &mut client, &mut plain);
            }
            server_turn(&mut session, &mut pipe, &mut client, &mut plain);
        }
        assert!(session.is_established());
        assert_eq!(plain, b"first frame");
        assert_eq!(session.client_key(), None);

        // 100 KB from the client in uneven pieces, and 100 KB back.
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        plain.clear();
        for part in big.chunks(16_000) {
            client.writer().write_all(part).unwrap();
            for piece in client_bytes(&mut client).chunks(777) {
                pipe.input.extend(piece);
                server_turn(&mut session, &mut pipe, &mut client, &mut plain);
            }
        }
        assert!(plain == big, "the client's bytes arrive whole");
        client_got();
        assert_eq!(session.over(&mut pipe).write(&big).unwrap(), big.len());
        server_turn(&mut session, &mut pipe, &mut client, &mut plain);
        assert!(client_got() == big, "ours arrive whole");
    }

    #[test]
    fn key_updates_both_ways_keep_the_bytes_flowing() {
        let certs = Certs::new("keyupdate");
        let mut client = certs.client();
        let mut session = TlsSession::new(certs.server());
        let mut pipe = Pipe::default();
        let mut plain = Vec::new();
        while client.is_handshaking() || client.wants_write() {
            pipe.input.extend(client_bytes(&mut client));
            server_turn(&mut session, &mut pipe, &mut client, &mut plain);
        }
        // The client updates its key and asks for ours (update_requested).
        client.refresh_traffic_keys().unwrap();
        client
            .writer()
            .write_all(b"after the client's update")
            .unwrap();
        pipe.input.extend(client_bytes(&mut client));
        server_turn(&mut session, &mut pipe, &mut client, &mut plain);
        assert_eq!(plain, b"after the client's update");
        // Ours, near the suite's limit: a KeyUpdate of our own before the next record.
        if let Phase::Traffic(traffic) = &mut session.phase {
            traffic.tx_limit = traffic.tx.seq() + 2;
        }
        for round in 0..5u8 {
            assert_eq!(session.over(&mut pipe).write(&[round; 100]).unwrap(), 100);
        }
        client_got();
        server_turn(&mut session, &mut pipe, &mut client, &mut plain);
        let back = client_got();
        assert_eq!((back.len(), back[499]), (500, 4));
    }

    #[test]
    fn send_file_of_an_odd_range_through_short_writes_delivers_exactly_the_files_bytes() {
        let certs = Certs::new("send-file");
        let mut client = certs.client();
        let mut session = TlsSession::new(certs.server());
        let mut pipe = Pipe::default();
        let mut plain = Vec::new();
        while client.is_handshaking() || client.wants_write() {
            pipe.input.extend(client_bytes(&mut client));
            server_turn(&mut session, &mut pipe, &mut client, &mut plain);
        }
        client_got();
        let content: Vec<u8> = (0..300_007u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let path = certs.dir.join("file");
        std::fs::write(&path, &content).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // Our key reaches its limit in the middle: a KeyUpdate goes before the record past it.
        if let Phase::Traffic(traffic) = &mut session.phase {
            traffic.tx_limit = traffic.tx.seq() + 6;
        }
        // Odd-sized writes, and WouldBlock, over and over.
        pipe.takes = vec![1_000, 0, 7, 33_333, 0, 0, 16_407, 65_651, 1, 5_000, 0];
        let (offset, len) = (1_001u64, 250_001usize);
        let mut sent = 0;
        for call in 0.. {
            assert!(call < 10_000, "stuck at {sent} of {len}");
            if sent == len {
                break;
            }
            // Offered in pieces that are no multiple of a record either.
            let offered = (len - sent).min(40_009);
            let mut link = session.over(&mut pipe);
            match link.send_file(&file, offset + sent as u64, offered) {
                Ok(n) => {
                    assert!(0 < n && n <= offered, "{n} of {offered}");
                    sent += n;
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => {}
                Err(error) => panic!("send_file: {error}"),
            }
            drop(link);
            deliver(&mut pipe, &mut client);
        }
        // What the session holds goes, then close_notify after it.
        for call in 0.. {
            assert!(call < 100, "records still waiting");
            let mut link = session.over(&mut pipe);
            let done = link.send_pending().is_ok();
            drop(link);
            deliver(&mut pipe, &mut client);
            if done {
                break;
            }
        }
        assert_eq!(session.buffer_bytes(), 0, "nothing pending, no buffer held");
        session.over(&mut pipe).shutdown_write().unwrap();
        let mut closed = deliver(&mut pipe, &mut client);
        for call in 0.. {
            assert!(call < 100, "close_notify still waiting");
            if pipe.shut {
                break;
            }
            let _ = session.over(&mut pipe).send_pending();
            closed |= deliver(&mut pipe, &mut client);
        }
        assert!(closed, "close_notify after the data");
        if let Phase::Traffic(traffic) = &session.phase {
            // Over 15 records went: without the KeyUpdates the sequence would be past 15.
            assert!(traffic.tx.seq() <= 6, "our key was updated on the way");
        }
        let got = client_got();
        let want = &content[offset as usize..offset as usize + len];
        assert_eq!(got.len(), want.len());
        assert!(got == want, "every byte, in order, once");
        assert!(
            pipe.buffers.bulk_len() == 1 && pipe.buffers.created() <= 2,
            "one bulk buffer, taken and given back every call"
        );

        // A range past the end of the file: what there is, then 0.
        pipe.takes.clear();
        let (offset, len) = (content.len() as u64 - 20_000, 50_000);
        assert_eq!(
            session
                .over(&mut pipe)
                .send_file(&file, offset, len)
                .unwrap(),
            20_000
        );
        assert_eq!(
            session
                .over(&mut pipe)
                .send_file(&file, content.len() as u64, len)
                .unwrap(),
            0
        );
    }

    #[test]
    fn a_plaintext_client_is_answered_bad_hello_in_plaintext_and_the_session_fails() {
        let certs = Certs::new("plaintext");
        let mut session = TlsSession::new(certs.server());
        let mut pipe = Pipe::default();
        let mut hello = Vec::new();
        crate::proto::Hello::current().encode(&mut hello);
        pipe.input.extend(&hello);
        let error = session.over(&mut pipe).read(&mut [0; 64]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidData);
        assert!(session.take_events().plaintext_client);
        let header = crate::proto::Header::parse(&pipe.output, u32::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(header.frame_type, crate::proto::FrameType::Error);
        let message = ErrorMessage::parse(&pipe.output[crate::proto::HEADER_LEN..]).unwrap();
        assert_eq!(
            (message.code, message.text),
            (ErrorCode::BadHello, PLAINTEXT_ON_TLS_TEXT)
        );
        assert!(pipe.shut, "the write side is shut after the frame");
        assert!(session.over(&mut pipe).write(b"x").is_err());
    }

    #[test]
    fn a_fresh_session_holds_no_buffer_and_a_record_over_the_limit_is_refused_from_its_header() {
        let certs = Certs::new("limits");
        let mut session = TlsSession::new(certs.server());
        assert_eq!(session.buffer_bytes(), 0);
        assert_eq!(session.wants(), Readiness::READABLE);
        let mut pipe = Pipe::default();
        // A handshake record announcing 2^14 + 257 bytes: refused before any of them arrive.
        pipe.input.extend([HANDSHAKE_RECORD, 3, 1, 0x41, 0x01]);
        let error = session.over(&mut pipe).read(&mut [0; 64]).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidData);
        assert!(session.buffer_bytes() <= FIRST_READ);
    }

    #[test]
    fn what_an_idle_established_session_keeps_is_about_two_kib() {
        // The figures in the module docs ("Memory"): the session (boxed in the loop's
        // `Core::tls`), the traffic state (boxed in the session), and inside it rustls'
        // `KernelConnection` and the two directions' keys (ring's `LessSafeKey`). Bounds with
        // a little room, for new versions of rustls and ring.
        let session = std::mem::size_of::<TlsSession>();
        let traffic = std::mem::size_of::<Traffic>();
        let kernel = std::mem::size_of::<KernelConnection<ServerConnectionData>>();
        let protection = std::mem::size_of::<Protection>();
        assert!(session <= 192, "TlsSession is {session} bytes (160)");
        assert!(traffic <= 2048, "Traffic is {traffic} bytes (1,744)");
        assert!(kernel <= 640, "KernelConnection is {kernel} bytes (552)");
        assert!(protection <= 640, "Protection is {protection} bytes (576)");
    }

    // === A client that writes its own records ===

    /// A client past the handshake that seals and opens records itself, its keys taken from
    /// rustls the way the server takes its own: for the records no well-behaved client sends.
    struct RawClient {
        kernel: KernelConnection<rustls::client::ClientConnectionData>,
        tx: Protection,
        rx: Protection,
    }

    impl RawClient {
        /// One record of inner type `kind` around `content`.
        fn record(&mut self, kind: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![0; content.len() + SEAL_OVERHEAD];
            let len = self.tx.seal(kind, content, &mut out);
            out.truncate(len);
            out
        }

        /// A KeyUpdate record, after which the client's key is the next one.
        fn key_update(&mut self, requested: bool) -> Vec<u8> {
            let record = self.record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, u8::from(requested)]);
            self.update_tx();
            record
        }

        fn update_tx(&mut self) {
            let (seq, secrets) = self.kernel.update_tx_secret().unwrap();
            self.tx = Protection::new(seq, &secrets).unwrap();
        }

        /// The server's records in `bytes`, opened: (inner type, content) each, following its
        /// KeyUpdates.
        fn open_all(&mut self, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
            let mut bytes = bytes.to_vec();
            let mut at = 0;
            let mut records = Vec::new();
            while at < bytes.len() {
                let len = record::record_len(&bytes[at..]).unwrap().unwrap();
                let (kind, content) = self.rx.open(&mut bytes[at..at + len]).unwrap();
                let content = bytes[at + content.start..at + content.end].to_vec();
                if kind == HANDSHAKE && content[0] == KEY_UPDATE {
                    let (seq, secrets) = self.kernel.update_rx_secret().unwrap();
                    self.rx = Protection::new(seq, &secrets).unwrap();
                }
                records.push((kind, content));
                at += len;
            }
            records
        }
    }

    /// A session past the handshake with a [`RawClient`] (rustls' unbuffered client for the
    /// handshake, whose keys can be taken over like the server's), its pipe emptied.
    fn established(certs: &Certs) -> (TlsSession, Pipe, RawClient) {
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = UnbufferedClientConnection::new(certs.client_config(), name).unwrap();
        let mut session = TlsSession::new(certs.server());
        let mut pipe = Pipe::default();
        let mut incoming = Vec::new();
        let mut encoded = vec![0; 16 << 10];
        loop {
            let UnbufferedStatus { discard, state } = client.process_tls_records(&mut incoming);
            let mut server_turn = false;
            let mut traffic = false;
            match state.unwrap() {
                ConnectionState::EncodeTlsData(mut state) => {
                    let n = state.encode(&mut encoded).unwrap();
                    pipe.input.extend(&encoded[..n]);
                }
                ConnectionState::TransmitTlsData(state) => state.done(),
                ConnectionState::BlockedHandshake => server_turn = true,
                ConnectionState::WriteTraffic(_) => traffic = true,
                other => panic!("client state {other:?}"),
            }
            incoming.drain(..discard);
            if traffic && !client.is_handshaking() {
                break;
            }
            if server_turn {
                let (plain, ended) = read_all(&mut session, &mut pipe);
                assert_eq!((plain.len(), ended.unwrap()), (0, false));
                session.over(&mut pipe).send_pending().unwrap();
                incoming.append(&mut pipe.output);
            }
        }
        // The client's Finished: the read that takes it ends with the handshake's stop.
        let (plain, ended) = read_all(&mut session, &mut pipe);
        assert_eq!((plain.len(), ended.unwrap()), (0, false));
        assert!(session.take_events().established);
        assert!(session.is_established());
        assert!(pipe.input.is_empty() && pipe.output.is_empty());
        let (secrets, kernel) = client.dangerous_into_kernel_connection().unwrap();
        let raw = RawClient {
            kernel,
            tx: Protection::new(secrets.tx.0, &secrets.tx.1).unwrap(),
            rx: Protection::new(secrets.rx.0, &secrets.rx.1).unwrap(),
        };
        (session, pipe, raw)
    }

    /// Everything the session reads now: its plaintext, and how the reads ended (`Ok(true)`
    /// for the end of the stream, `Ok(false)` for `WouldBlock`, or the error).
    fn read_all(session: &mut TlsSession, pipe: &mut Pipe) -> (Vec<u8>, io::Result<bool>) {
        let mut plain = Vec::new();
        let mut buf = [0; 4096];
        loop {
            let read = session.over(pipe).read(&mut buf);
            match read {
                Ok(0) => return (plain, Ok(true)),
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    return (plain, Ok(false));
                }
                Err(error) => return (plain, Err(error)),
            }
        }
    }

    /// The session fails on what it was sent, and tells the client with one fatal alert of
    /// `description`.
    #[track_caller]
    fn assert_fails_with_alert(
        session: &mut TlsSession,
        pipe: &mut Pipe,
        raw: &mut RawClient,
        description: u8,
    ) {
        let (plain, ended) = read_all(session, pipe);
        assert!(plain.is_empty(), "nothing handed out: {plain:?}");
        let error = ended.expect_err("the session fails");
        assert_eq!(error.kind(), ErrorKind::InvalidData, "{error}");
        let records = raw.open_all(&std::mem::take(&mut pipe.output));
        assert_eq!(
            records,
            [(ALERT, vec![2, description])],
            "the fatal alert, after: {error}"
        );
        assert!(
            session.over(pipe).read(&mut [0; 8]).is_err(),
            "failed for good"
        );
    }

    const KEY_UPDATE_NOT_REQUESTED: [u8; 5] = [KEY_UPDATE, 0, 0, 1, 0];

    #[test]
    fn update_requested_is_answered_once_before_our_next_data_however_many_came() {
        let certs = Certs::new("ku-once");
        let (mut session, mut pipe, mut raw) = established(&certs);
        for _ in 0..5 {
            let record = raw.key_update(true);
            pipe.input.extend(record);
        }
        let record = raw.record(APPLICATION_DATA, b"after five requests");
        pipe.input.extend(record);
        let (plain, ended) = read_all(&mut session, &mut pipe);
        assert_eq!(
            (plain.as_slice(), ended.unwrap()),
            (&b"after five requests"[..], false)
        );
        assert_eq!(session.over(&mut pipe).write(b"reply").unwrap(), 5);
        session.over(&mut pipe).send_pending().unwrap();
        let records = raw.open_all(&std::mem::take(&mut pipe.output));
        assert_eq!(
            records,
            [
                (HANDSHAKE, KEY_UPDATE_NOT_REQUESTED.to_vec()),
                (APPLICATION_DATA, b"reply".to_vec())
            ],
            "one KeyUpdate of ours, then the data under the new key"
        );
        // Nothing new asked: the next data goes under the same key.
        assert_eq!(session.over(&mut pipe).write(b"again").unwrap(), 5);
        let records = raw.open_all(&std::mem::take(&mut pipe.output));
        assert_eq!(records, [(APPLICATION_DATA, b"again".to_vec())]);
    }

    #[test]
    fn an_established_session_with_nothing_pending_holds_no_buffer_after_the_drive() {
        let certs = Certs::new("idle");
        let (mut session, mut pipe, mut raw) = established(&certs);
        // The handshake's buffers went at the end of the drive that finished it.
        assert_eq!(session.buffer_bytes(), 0, "established, nothing pending");
        for round in 0..100u32 {
            // A request read whole and answered whole: both buffers taken in the drive, both
            // back at its end.
            let record = raw.record(APPLICATION_DATA, &round.to_be_bytes());
            pipe.input.extend(record);
            let mut link = session.over(&mut pipe);
            let mut got = [0; 64];
            assert_eq!(link.read(&mut got).unwrap(), 4);
            assert_eq!(link.write(b"reply").unwrap(), 5);
            drop(link);
            assert_eq!(session.buffer_bytes(), 0, "round {round}: idle again");
            let records = raw.open_all(&std::mem::take(&mut pipe.output));
            assert_eq!(records, [(APPLICATION_DATA, b"reply".to_vec())]);
        }
        // The same two buffers every round, from the list: nothing allocated in steady state.
        assert_eq!((pipe.buffers.created(), pipe.buffers.free_len()), (2, 2));

        // Kept while something is in them: a partial record,
        let record = raw.record(APPLICATION_DATA, b"split record");
        pipe.input.extend(&record[..7]);
        let (plain, ended) = read_all(&mut session, &mut pipe);
        assert_eq!((plain.len(), ended.unwrap()), (0, false));
        assert_eq!(
            session.buffer_bytes(),
            RECORD_BUFFER_LEN,
            "a partial record"
        );
        pipe.input.extend(&record[7..]);
        let (plain, ended) = read_all(&mut session, &mut pipe);
        assert_eq!(
            (plain.as_slice(), ended.unwrap()),
            (&b"split record"[..], false)
        );
        assert_eq!(session.buffer_bytes(), 0);
        // plaintext not handed out yet,
        let record = raw.record(APPLICATION_DATA, b"0123456789");
        pipe.input.extend(record);
        assert_eq!(session.over(&mut pipe).read(&mut [0; 4]).unwrap(), 4);
        assert_eq!(
            session.buffer_bytes(),
            RECORD_BUFFER_LEN,
            "plaintext pending"
        );
        let (plain, _) = read_all(&mut session, &mut pipe);
        assert_eq!(plain, b"456789");
        assert_eq!(session.buffer_bytes(), 0);
        // and a record the socket did not take.
        pipe.full = true;
        assert_eq!(
            session.over(&mut pipe).write(b"stuck").unwrap(),
            5,
            "sealed, waiting in the session"
        );
        assert_eq!(session.buffer_bytes(), RECORD_BUFFER_LEN, "a record unsent");
        pipe.full = false;
        session.over(&mut pipe).send_pending().unwrap();
        assert_eq!(session.buffer_bytes(), 0);
        let records = raw.open_all(&std::mem::take(&mut pipe.output));
        assert_eq!(records, [(APPLICATION_DATA, b"stuck".to_vec())]);
        assert_eq!(pipe.buffers.created(), 2, "still the same two buffers");

        // A closed connection gives back what it held.
        pipe.input
            .extend(&raw.record(APPLICATION_DATA, b"unread")[..3]);
        let _ = read_all(&mut session, &mut pipe);
        assert_eq!(session.buffer_bytes(), RECORD_BUFFER_LEN);
        let free = pipe.buffers.free_len();
        session.recycle(&mut pipe.buffers);
        assert_eq!(pipe.buffers.free_len(), free + 1);
    }

    #[test]
    fn the_record_buffer_list_is_bounded_and_keeps_only_standard_buffers() {
        let mut buffers = RecordBuffers::new(2);
        let taken: Vec<Vec<u8>> = (0..3).map(|_| buffers.take()).collect();
        assert!(taken.iter().all(|buffer| buffer.len() == RECORD_BUFFER_LEN));
        for buffer in taken {
            buffers.give(buffer);
        }
        assert_eq!(
            (buffers.created(), buffers.free_len()),
            (3, 2),
            "at most 2 kept"
        );
        let mut grown = buffers.take();
        grown.resize(RECORD_BUFFER_LEN + 30, 0);
        buffers.give(grown);
        buffers.give(vec![0; FIRST_READ]);
        buffers.give(Vec::new());
        assert_eq!(buffers.free_len(), 1, "only standard buffers are kept");
        // Bulk buffers (a file's): their own list, a quarter as long (rounded up).
        let bulk: Vec<Vec<u8>> = (0..2).map(|_| buffers.take_bulk()).collect();
        assert!(bulk.iter().all(|buffer| buffer.len() == BULK_LEN));
        for buffer in bulk {
            buffers.give(buffer);
        }
        assert_eq!((buffers.bulk_len(), buffers.free_len()), (1, 1));
        let mut grown = buffers.take_bulk();
        grown.push(0);
        buffers.give(grown);
        assert_eq!(buffers.bulk_len(), 0, "a grown bulk buffer is freed");
    }

    #[test]
    fn a_client_asking_for_key_updates_and_never_reading_cannot_grow_the_outgoing_buffer() {
        let certs = Certs::new("ku-flood");
        let (mut session, mut pipe, mut raw) = established(&certs);
        pipe.full = true;
        // Each request followed by an empty data record (which resets any count of KeyUpdates
        // in a row): 2,000 requests, whose answers would be 54 KB if each were queued.
        for _ in 0..2_000 {
            let record = raw.key_update(true);
            pipe.input.extend(record);
            let record = raw.record(APPLICATION_DATA, b"");
            pipe.input.extend(record);
            let (plain, ended) = read_all(&mut session, &mut pipe);
            assert_eq!((plain.len(), ended.unwrap()), (0, false));
        }
        assert!(
            session.buffer_bytes() <= 2 * RECORD_BUFFER_LEN,
            "the session holds {} bytes",
            session.buffer_bytes()
        );
        // The client reads at last: one KeyUpdate, then the data.
        pipe.full = false;
        assert_eq!(session.over(&mut pipe).write(b"x").unwrap(), 1);
        let records = raw.open_all(&std::mem::take(&mut pipe.output));
        assert_eq!(
            records,
            [
                (HANDSHAKE, KEY_UPDATE_NOT_REQUESTED.to_vec()),
                (APPLICATION_DATA, b"x".to_vec())
            ]
        );
    }

    #[test]
    fn key_updates_in_a_row_without_data_are_bounded() {
        let certs = Certs::new("ku-row");
        let (mut session, mut pipe, mut raw) = established(&certs);
        for _ in 0..MAX_KEY_UPDATES_IN_A_ROW {
            let record = raw.key_update(false);
            pipe.input.extend(record);
        }
        let record = raw.record(APPLICATION_DATA, b"still fine");
        pipe.input.extend(record);
        let (plain, ended) = read_all(&mut session, &mut pipe);
        assert_eq!(
            (plain.as_slice(), ended.unwrap()),
            (&b"still fine"[..], false)
        );
        for _ in 0..=MAX_KEY_UPDATES_IN_A_ROW {
            let record = raw.key_update(false);
            pipe.input.extend(record);
        }
        assert_fails_with_alert(&mut session, &mut pipe, &mut raw, UNEXPECTED_MESSAGE);
    }

    #[test]
    fn a_key_update_fragmented_over_two_records_is_accepted() {
        let certs = Certs::new("ku-fragment");
        let (mut session, mut pipe, mut raw) = established(&certs);
        let record = raw.record(HANDSHAKE, &[KEY_UPDATE, 0]);
        pipe.input.extend(record);
        // The rest in a later read.
        let (plain, ended) = read_all(&mut session, &mut pipe);
        assert_eq!((plain.len(), ended.unwrap()), (0, false));
        let record = raw.record(HANDSHAKE, &[0, 1, 1]);
        pipe.input.extend(record);
        raw.update_tx();
        let record = raw.record(APPLICATION_DATA, b"under the new key");
        pipe.input.extend(record);
        let (plain, ended) = read_all(&mut session, &mut pipe);
        assert_eq!(
            (plain.as_slice(), ended.unwrap()),
            (&b"under the new key"[..], false)
        );
        assert_eq!(session.over(&mut pipe).write(b"ok").unwrap(), 2);
        let records = raw.open_all(&std::mem::take(&mut pipe.output));
        assert_eq!(
            records,
            [
                (HANDSHAKE, KEY_UPDATE_NOT_REQUESTED.to_vec()),
                (APPLICATION_DATA, b"ok".to_vec())
            ]
        );
    }

    #[test]
    fn a_key_update_must_end_its_record() {
        let certs = Certs::new("ku-aligned");
        // Two KeyUpdates in one record: the second would be under the key the first retired.
        let (mut session, mut pipe, mut raw) = established(&certs);
        let mut two = KEY_UPDATE_NOT_REQUESTED.to_vec();
        two.extend(KEY_UPDATE_NOT_REQUESTED);
        let record = raw.record(HANDSHAKE, &two);
        pipe.input.extend(record);
        assert_fails_with_alert(&mut session, &mut pipe, &mut raw, UNEXPECTED_MESSAGE);
        // A KeyUpdate with a trailing byte.
        let (mut session, mut pipe, mut raw) = established(&certs);
        let record = raw.record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0, 0xff]);
        pipe.input.extend(record);
        assert_fails_with_alert(&mut session, &mut pipe, &mut raw, UNEXPECTED_MESSAGE);
        // A data record in the middle of a fragmented one.
        let (mut session, mut pipe, mut raw) = established(&certs);
        let record = raw.record(HANDSHAKE, &[KEY_UPDATE, 0, 0]);
        pipe.input.extend(record);
        let record = raw.record(APPLICATION_DATA, b"interleaved");
        pipe.input.extend(record);
        assert_fails_with_alert(&mut session, &mut pipe, &mut raw, UNEXPECTED_MESSAGE);
    }

    #[test]
    fn post_handshake_messages_other_than_key_update_are_unexpected() {
        let certs = Certs::new("post-hs");
        let messages: [&[u8]; 6] = [
            // NewSessionTicket, CertificateRequest, Finished, ClientHello: types 4, 13, 20, 1.
            &[4, 0, 0, 0],
            &[13, 0, 0, 0],
            &[20, 0, 0, 32],
            &[1, 0, 0, 0],
            // An empty handshake record.
            &[],
            // A KeyUpdate whose length says 2.
            &[KEY_UPDATE, 0, 0, 2, 0, 0],
        ];
        for (i, message) in messages.iter().enumerate() {
            let (mut session, mut pipe, mut raw) = established(&certs);
            let record = raw.record(HANDSHAKE, message);
            pipe.input.extend(record);
            let alert = if i == 5 {
                DECODE_ERROR
            } else {
                UNEXPECTED_MESSAGE
            };
            assert_fails_with_alert(&mut session, &mut pipe, &mut raw, alert);
        }
        // A request field other than 0 or 1.
        let (mut session, mut pipe, mut raw) = established(&certs);
        let record = raw.record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 2]);
        pipe.input.extend(record);
        assert_fails_with_alert(&mut session, &mut pipe, &mut raw, ILLEGAL_PARAMETER);
    }

    #[test]
    fn a_record_error_after_the_handshake_is_answered_with_its_alert() {
        let certs = Certs::new("alerts");
        // bad_record_mac: a changed byte.
        let (mut session, mut pipe, mut raw) = established(&certs);
        let mut record = raw.record(APPLICATION_DATA, b"tampered");
        record[8] ^= 0x40;
        pipe.input.extend(record);
        assert_fails_with_alert(&mut session, &mut pipe, &mut raw, record::BAD_RECORD_MAC);
        // bad_record_mac: a record under a key the server does not have (an update it was
        // never told of).
        let (mut session, mut pipe, mut raw) = established(&certs);
        raw.update_tx();
        let record = raw.record(APPLICATION_DATA, b"wrong key");
        pipe.input.extend(record);
        assert_fails_with_alert(&mut session, &mut pipe, &mut raw, record::BAD_RECORD_MAC);
        // record_overflow, from the header alone.
        let (mut session, mut pipe, mut raw) = established(&certs);
        pipe.input.extend([APPLICATION_DATA, 3, 3, 0x41, 0x01]);
        assert_fails_with_alert(&mut session, &mut pipe, &mut raw, record::RECORD_OVERFLOW);
        // unexpected_message: a plaintext handshake record, and a ChangeCipherSpec, which is
        // only ignored before the client's Finished.
        for outer in [[HANDSHAKE_RECORD, 3, 3, 0, 1, 1], [20, 3, 3, 0, 1, 1]] {
            let (mut session, mut pipe, mut raw) = established(&certs);
            pipe.input.extend(outer);
            assert_fails_with_alert(&mut session, &mut pipe, &mut raw, UNEXPECTED_MESSAGE);
        }
        // unexpected_message: an inner type that is not data, alert or handshake (CCS, 20),
        // and an inner plaintext of padding only.
        for (kind, content) in [(20u8, &[1u8][..]), (0, &[0, 0][..])] {
            let (mut session, mut pipe, mut raw) = established(&certs);
            let record = raw.record(kind, content);
            pipe.input.extend(record);
            assert_fails_with_alert(&mut session, &mut pipe, &mut raw, UNEXPECTED_MESSAGE);
        }
    }

    #[test]
    fn close_notify_is_the_end_of_the_stream_and_user_canceled_is_not_an_error() {
        let certs = Certs::new("close");
        let (mut session, mut pipe, mut raw) = established(&certs);
        for (kind, content) in [
            (ALERT, &[1u8, USER_CANCELED][..]),
            (APPLICATION_DATA, b"one"),
            // Empty data records are data, not the end.
            (APPLICATION_DATA, b""),
            (APPLICATION_DATA, b""),
            (APPLICATION_DATA, b" two"),
            (ALERT, &[1, CLOSE_NOTIFY]),
            (APPLICATION_DATA, b"after close_notify: never handed out"),
        ] {
            let record = raw.record(kind, content);
            pipe.input.extend(record);
        }
        let (plain, ended) = read_all(&mut session, &mut pipe);
        assert_eq!((plain.as_slice(), ended.unwrap()), (&b"one two"[..], true));
        assert_eq!(session.over(&mut pipe).read(&mut [0; 8]).unwrap(), 0);
        // We may still write, then close with our own close_notify.
        assert_eq!(session.over(&mut pipe).write(b"bye").unwrap(), 3);
        session.over(&mut pipe).shutdown_write().unwrap();
        let records = raw.open_all(&std::mem::take(&mut pipe.output));
        assert_eq!(
            records,
            [
                (APPLICATION_DATA, b"bye".to_vec()),
                (ALERT, vec![1, CLOSE_NOTIFY])
            ]
        );
        assert!(pipe.shut);

        // Any other alert ends the session, warning or not, and is not answered.
        for alert in [[1u8, 42], [2, 40]] {
            let (mut session, mut pipe, mut raw) = established(&certs);
            let record = raw.record(ALERT, &alert);
            pipe.input.extend(record);
            let (_, ended) = read_all(&mut session, &mut pipe);
            assert!(ended.is_err());
            assert!(pipe.output.is_empty());
        }
        // An alert of the wrong length: decode_error.
        for alert in [&[1u8][..], &[1, 0, 0]] {
            let (mut session, mut pipe, mut raw) = established(&certs);
            let record = raw.record(ALERT, alert);
            pipe.input.extend(record);
            assert_fails_with_alert(&mut session, &mut pipe, &mut raw, DECODE_ERROR);
        }
    }

    #[test]
    fn a_fin_without_close_notify_ends_the_stream_and_a_cut_record_is_never_handed_out() {
        let certs = Certs::new("truncated");
        let (mut session, mut pipe, mut raw) = established(&certs);
        let record = raw.record(APPLICATION_DATA, b"whole");
        pipe.input.extend(record);
        let cut = raw.record(APPLICATION_DATA, b"cut short by the FIN");
        pipe.input.extend(&cut[..cut.len() - 1]);
        pipe.eof = true;
        let (plain, ended) = read_all(&mut session, &mut pipe);
        assert_eq!((plain.as_slice(), ended.unwrap()), (&b"whole"[..], true));
    }

    #[test]
    fn no_plaintext_is_accepted_before_the_client_finished() {
        let certs = Certs::new("early-plain");
        let mut client = certs.client();
        let mut session = TlsSession::new(certs.server());
        let mut pipe = Pipe::default();
        // The ClientHello, then a plaintext data record where the client's flight should be.
        pipe.input.extend(client_bytes(&mut client));
        let (plain, ended) = read_all(&mut session, &mut pipe);
        assert_eq!((plain.len(), ended.unwrap()), (0, false));
        session.over(&mut pipe).send_pending().unwrap();
        assert!(
            !session.is_established(),
            "not before the client's Finished"
        );
        pipe.input
            .extend([APPLICATION_DATA, 3, 3, 0, 5, b'h', b'e', b'l', b'l', b'o']);
        let (plain, ended) = read_all(&mut session, &mut pipe);
        assert!(plain.is_empty());
        assert!(
            ended.is_err(),
            "a plaintext record mid-handshake is refused"
        );
        assert!(!session.is_established());
    }

    #[test]
    fn a_byte_changed_anywhere_in_the_clients_records_never_panics_the_session() {
        let certs = Certs::new("corrupt");
        let config = certs.server();
        // Every byte of a ClientHello flipped in turn.
        let hello = client_bytes(&mut certs.client());
        for at in 0..hello.len() {
            let mut session = TlsSession::new(Arc::clone(&config));
            let mut pipe = Pipe::default();
            let mut changed = hello.clone();
            changed[at] ^= 0x55;
            pipe.input.extend(changed);
            let (plain, _) = read_all(&mut session, &mut pipe);
            assert!(plain.is_empty());
            let _ = session.over(&mut pipe).send_pending();
            assert!(!session.is_established(), "byte {at}");
        }
        // Every byte of the client's second flight (ChangeCipherSpec, Finished) flipped in
        // turn, after a real ClientHello and server flight: the handshake never completes.
        for at in 0.. {
            let mut client = certs.client();
            let mut session = TlsSession::new(Arc::clone(&config));
            let mut pipe = Pipe::default();
            pipe.input.extend(client_bytes(&mut client));
            let (plain, _) = read_all(&mut session, &mut pipe);
            assert!(plain.is_empty());
            session.over(&mut pipe).send_pending().unwrap();
            client.read_tls(&mut &pipe.output[..]).unwrap();
            client.process_new_packets().unwrap();
            pipe.output.clear();
            let mut flight = client_bytes(&mut client);
            if at >= flight.len() {
                break;
            }
            // The legacy_record_version of each record, which rustls ignores (RFC 8446 §5.1).
            let mut versions = Vec::new();
            let mut record = 0;
            while record < flight.len() {
                versions.extend([record + 1, record + 2]);
                record += record::record_len(&flight[record..]).unwrap().unwrap();
            }
            flight[at] ^= 0x55;
            pipe.input.extend(flight);
            let (plain, ended) = read_all(&mut session, &mut pipe);
            assert!(plain.is_empty());
            let _ = session.over(&mut pipe).send_pending();
            assert!(
                versions.contains(&at)
                    || !session.is_established() && !session.take_events().established,
                "byte {at} of the client's flight changed, and the handshake completed ({ended:?})"
            );
        }
    }
}
