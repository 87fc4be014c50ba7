//! The event loop: the only place that calls `poll()`.
//!
//! # Rules of the loop
//! `mio` is edge-triggered: a source is reported when it *becomes* ready, not while it *is*
//! ready. Everything below follows from that.
//!
//! 1. **Drain until `WouldBlock`.** After an event, read (or write, or accept) until the call
//!    says `WouldBlock`; otherwise no new event may ever come. A read or write shorter than
//!    asked proves the same for a stream socket (epoll(7)), so the extra call is skipped.
//! 2. **Retry `Interrupted`**, from `poll` itself and from every read and write.
//! 3. **EOF is a 0-byte read**, not an event flag: flags such as "read closed" are hints that
//!    only make us read.
//! 4. **Spurious events are normal.** An event may find nothing to do; `WouldBlock` is then the
//!    answer, never an error.
//! 5. **Budgets and the ready list.** Draining one source completely could starve the others,
//!    so each connection gets a budget per turn (bytes, frames); one that still has work goes
//!    on the ready list and is served next turn, and the loop polls with a zero timeout while
//!    that list is not empty. Rule 1 still holds: its readiness is remembered, not dropped.
//! 6. **A token from a closed slot never reaches its successor.** Closing is deferred to the
//!    end of the event batch (later events for it in the same batch are ignored), and every
//!    connection token carries a generation number that a reused slot does not share, so a
//!    stale token in the ready list or the timer queue finds nothing.
//!
//! # One turn
//! [`Reactor::run`]: take the ready list → `poll` (timeout: zero if anything is ready, else
//! until the nearest deadline) → handle each event → serve the ready list taken at the start
//! → fire due timers → close what was marked for closing → repeat.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{debug, error, info, trace, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::buffer::BufferPool;
use crate::conn::{Connection, Context, Protocol, Verdict};
use crate::limits::Limits;
use crate::proto::{ErrorCode, ErrorMessage};
use crate::service::echo::UdpEcho;
use crate::throttle::LogThrottle;
use crate::timer::{Clock, Tick, TimerQueue};

/// Events taken from the kernel per `poll` call.
const EVENTS_PER_POLL: usize = 1024;

/// How long accepting pauses after an `accept` failure it cannot work around: out of
/// descriptors with no spare left, or an error that is not about one pending connection.
/// Closing any connection resumes it sooner.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Stale timer entries tolerated beyond one per open connection before the queue is swept
/// (`Core::sweep_timers`); the sweep is O(entries), so it runs at most once per this many
/// closes, keeping its cost per close constant.
const TIMER_SLACK: usize = 64;

/// Bytes a refused client may already have sent that are read and dropped before the close, so
/// the close goes out as FIN rather than a reset that could destroy the SERVER_BUSY frame. A
/// client that pipelined more may still see a reset.
const REFUSE_DRAIN_BYTES: usize = 64 << 10;

/// Text of the ERROR frame sent to a framed client that cannot be admitted.
const BUSY_TEXT: &str = "server busy: connection limit reached, try again later";

// === Tokens ===

/// What a poll token (or a ready-list entry) refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// The framed-protocol listener.
    FramedListener,
    /// The raw TCP echo listener.
    EchoListener,
    /// The UDP echo socket.
    Udp,
    /// The self-pipe that SIGINT/SIGTERM write to.
    Signals,
    /// The waker a [`ShutdownHandle`] pokes.
    Waker,
    /// A connection, by slot and generation.
    Conn(ConnKey),
}

/// A connection's identity: its slab slot and the generation given at accept. A later
/// connection in the same slot has another generation, so stale tokens do not match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ConnKey {
    slot: u32,
    generation: u32,
}

/// Connection tokens have the top bit set; the rest are small constants. Below the top bit:
/// 32 bits of generation, then 24 bits of slot (16 M connections, far above any fd limit).
const CONN_TOKEN_BIT: usize = 1 << 63;
const SLOT_BITS: u32 = 24;
const SLOT_MASK: usize = (1 << SLOT_BITS) - 1;
const _: () = assert!(usize::BITS == 64, "token layout assumes 64-bit usize");
const _: () = assert!(crate::limits::MAX_CONNECTIONS <= 1 << SLOT_BITS);

impl Source {
    fn token(self) -> Token {
        Token(match self {
            Source::FramedListener => 0,
            Source::EchoListener => 1,
            Source::Udp => 2,
            Source::Signals => 3,
            Source::Waker => 4,
            Source::Conn(key) => {
                CONN_TOKEN_BIT | (key.generation as usize) << SLOT_BITS | key.slot as usize
            }
        })
    }

    fn from_token(token: Token) -> Option<Source> {
        Some(match token.0 {
            0 => Source::FramedListener,
            1 => Source::EchoListener,
            2 => Source::Udp,
            3 => Source::Signals,
            4 => Source::Waker,
            bits if bits & CONN_TOKEN_BIT != 0 => Source::Conn(ConnKey {
                slot: (bits & SLOT_MASK) as u32,
                generation: ((bits & !CONN_TOKEN_BIT) >> SLOT_BITS) as u32,
            }),
            _ => return None,
        })
    }
}

/// Entries in the deadline queue. Stored packed into a [`Token`] (a connection's own poll
/// token, or a constant no source is registered with), so a heap entry is 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerKey {
    /// A connection's deadline (idle, frame, linger).
    Conn(ConnKey),
    /// End of the shutdown grace period.
    ShutdownGrace,
    /// Try accepting again after running out of descriptors.
    AcceptRetry,
}

const SHUTDOWN_GRACE_TIMER: Token = Token(5);
const ACCEPT_RETRY_TIMER: Token = Token(6);

impl TimerKey {
    fn pack(self) -> Token {
        match self {
            TimerKey::Conn(key) => Source::Conn(key).token(),
            TimerKey::ShutdownGrace => SHUTDOWN_GRACE_TIMER,
            TimerKey::AcceptRetry => ACCEPT_RETRY_TIMER,
        }
    }

    fn unpack(token: Token) -> Option<TimerKey> {
        match token {
            SHUTDOWN_GRACE_TIMER => Some(TimerKey::ShutdownGrace),
            ACCEPT_RETRY_TIMER => Some(TimerKey::AcceptRetry),
            token => match Source::from_token(token)? {
                Source::Conn(key) => Some(TimerKey::Conn(key)),
                _ => None,
            },
        }
    }
}

// === Connections ===

/// A slab entry: the socket, its state machine, and the loop's bookkeeping for it.
#[derive(Debug)]
struct Slot {
    socket: TcpStream,
    conn: Connection,
    generation: u32,
    /// The interest the socket is registered with, to re-register only on change.
    registered: Interest,
    /// Deadline of this slot's live entry in the timer queue ([`Tick::NEVER`]: none).
    armed: Tick,
    /// On the ready list already.
    queued: bool,
    /// Marked for closing at the end of the batch.
    closing: bool,
}

/// Sockets handed to the reactor, already bound.
#[derive(Debug)]
pub struct Sockets {
    /// The framed-protocol listener.
    pub framed: TcpListener,
    /// The raw echo listener, if enabled.
    pub echo_tcp: Option<TcpListener>,
    /// The UDP echo socket, if enabled.
    pub echo_udp: Option<UdpSocket>,
}

/// Asks a running reactor to shut down, from any thread (tests, an embedding program).
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    waker: Arc<Waker>,
    requested: Arc<AtomicBool>,
}

impl ShutdownHandle {
    /// Starts the same graceful shutdown as SIGTERM.
    pub fn shutdown(&self) -> io::Result<()> {
        self.requested.store(true, Ordering::Release);
        self.waker.wake()
    }
}

/// Counters the loop keeps, for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReactorStats {
    /// Connections admitted.
    pub accepted: u64,
    /// Connections refused at the connection limit or shed when out of descriptors.
    pub refused: u64,
    /// Connections closed.
    pub closed: u64,
}

/// The event loop and everything it owns. Built by [`crate::server::Server::bind`].
pub struct Reactor {
    events: Events,
    core: Core,
}

/// The loop's state, apart from the event buffer (which `poll` borrows while handlers run).
struct Core {
    poll: Poll,
    framed_listener: Option<TcpListener>,
    echo_listener: Option<TcpListener>,
    udp: Option<UdpEcho<UdpSocket>>,
    udp_registered: Interest,
    signals: Option<Signals>,
    waker: Arc<Waker>,
    shutdown_requested: Arc<AtomicBool>,
    conns: Slab<Slot>,
    next_generation: u32,
    timers: TimerQueue<Token>,
    /// Sources to serve next turn without waiting for readiness.
    ready: Vec<Source>,
    /// The ready list being served this turn (swapped with `ready`, so neither reallocates).
    ready_now: Vec<Source>,
    /// Static sources currently on `ready` (bit per `Source` discriminant below `Conn`).
    static_queued: u8,
    to_close: Vec<usize>,
    pool: BufferPool,
    limits: Limits,
    clock: Clock,
    now: Tick,
    spare_fd: Option<File>,
    accept_paused: bool,
    refuse_log: LogThrottle,
    emfile_log: LogThrottle,
    shutdown_deadline: Option<Tick>,
    busy_frame: Vec<u8>,
    stats: ReactorStats,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("connections", &self.core.conns.len())
            .field("stats", &self.core.stats)
            .finish_non_exhaustive()
    }
}

impl Reactor {
    /// Registers `sockets` with a new poll. With `handle_signals`, SIGINT and SIGTERM start a
    /// graceful shutdown (through a self-pipe in the same poll: no thread, and the handler does
    /// nothing but write a byte).
    pub fn new(sockets: Sockets, limits: Limits, handle_signals: bool) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let registry = poll.registry();
        let Sockets {
            mut framed,
            mut echo_tcp,
            echo_udp,
        } = sockets;
        registry.register(
            &mut framed,
            Source::FramedListener.token(),
            Interest::READABLE,
        )?;
        if let Some(listener) = echo_tcp.as_mut() {
            registry.register(listener, Source::EchoListener.token(), Interest::READABLE)?;
        }
        let mut udp = echo_udp.map(UdpEcho::new);
        if let Some(udp) = udp.as_mut() {
            registry.register(udp.socket_mut(), Source::Udp.token(), Interest::READABLE)?;
        }
        let signals = if handle_signals {
            let mut signals = Signals::new([libc::SIGINT, libc::SIGTERM])?;
            registry.register(&mut signals, Source::Signals.token(), Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        let waker = Arc::new(Waker::new(registry, Source::Waker.token())?);
        let mut busy_frame = Vec::new();
        ErrorMessage::new(ErrorCode::ServerBusy, BUSY_TEXT).encode(0, &mut busy_frame);
        // Reserved up front: virtual memory only until used, and no reallocation (with its
        // copy of every entry) as connections arrive.
        let capacity = limits.max_connections;
        let core = Core {
            poll,
            framed_listener: Some(framed),
            echo_listener: echo_tcp,
            udp,
            udp_registered: Interest::READABLE,
            signals,
            waker: Arc::clone(&waker),
            shutdown_requested: Arc::new(AtomicBool::new(false)),
            conns: Slab::with_capacity(capacity),
            next_generation: 0,
            timers: TimerQueue::with_capacity(capacity),
            ready: Vec::with_capacity(capacity),
            ready_now: Vec::with_capacity(capacity),
            static_queued: 0,
            to_close: Vec::with_capacity(capacity),
            pool: BufferPool::new(limits.io_buffer_len, limits.pooled_buffers),
            clock: Clock::start(),
            now: Tick(0),
            spare_fd: open_spare_fd(),
            accept_paused: false,
            refuse_log: LogThrottle::default(),
            emfile_log: LogThrottle::default(),
            shutdown_deadline: None,
            busy_frame,
            stats: ReactorStats::default(),
            limits,
        };
        Ok(Reactor {
            events: Events::with_capacity(EVENTS_PER_POLL),
            core,
        })
    }

    /// A handle that starts a graceful shutdown from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            waker: Arc::clone(&self.core.waker),
            requested: Arc::clone(&self.core.shutdown_requested),
        }
    }

    /// Runs until a shutdown completes. Returns an error only if `poll` itself fails.
    pub fn run(mut self) -> io::Result<ReactorStats> {
        let core = &mut self.core;
        loop {
            std::mem::swap(&mut core.ready, &mut core.ready_now);
            core.static_queued = 0;
            // `now` was read after the previous poll, so a deadline fires late by at most the
            // time that turn's handlers took; in exchange the clock is read once per turn.
            let timeout = if core.ready_now.is_empty() {
                core.timers
                    .next_deadline()
                    .map(|deadline| core.now.until(deadline))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(error) = core.poll.poll(&mut self.events, timeout) {
                if error.kind() != ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            core.now = core.clock.now();
            for event in self.events.iter() {
                core.handle_event(event);
            }
            core.serve_ready_list();
            core.fire_timers();
            core.close_marked();
            if core.shutdown_deadline.is_some() && core.conns.is_empty() {
                let stats = core.stats;
                info!(
                    "shutdown complete: {} connections accepted, {} refused, {} closed",
                    stats.accepted, stats.refused, stats.closed
                );
                return Ok(stats);
            }
        }
    }
}

impl Core {
    fn handle_event(&mut self, event: &Event) {
        let Some(source) = Source::from_token(event.token()) else {
            trace!("event for unknown token {:?}", event.token());
            return;
        };
        // Error and hang-up flags only make us try: the read or write says what happened.
        let read_closed = event.is_read_closed() || event.is_error();
        let readable = event.is_readable() || read_closed;
        let writable = event.is_writable() || event.is_write_closed() || event.is_error();
        match source {
            Source::Conn(key) => self.serve_conn(key, readable, writable, read_closed),
            Source::FramedListener | Source::EchoListener => self.accept(source),
            Source::Udp => self.serve_udp(readable, writable),
            Source::Signals => self.drain_signals(),
            Source::Waker => {
                if self.shutdown_requested.swap(false, Ordering::AcqRel) {
                    self.begin_shutdown("shutdown requested");
                }
            }
        }
    }

    fn serve_ready_list(&mut self) {
        for index in 0..self.ready_now.len() {
            match self.ready_now[index] {
                Source::Conn(key) => {
                    if let Some(slot) = live_slot(&mut self.conns, key) {
                        slot.queued = false;
                        self.serve_conn(key, false, false, false);
                    }
                }
                source @ (Source::FramedListener | Source::EchoListener) => self.accept(source),
                Source::Udp => self.serve_udp(false, false),
                Source::Signals | Source::Waker => {}
            }
        }
        self.ready_now.clear();
    }

    fn queue_static(&mut self, source: Source) {
        let bit = match source {
            Source::FramedListener => 1 << 0,
            Source::EchoListener => 1 << 1,
            Source::Udp => 1 << 2,
            Source::Signals | Source::Waker | Source::Conn(_) => {
                debug_assert!(false, "{source:?} is not queued through queue_static");
                return;
            }
        };
        if self.static_queued & bit == 0 {
            self.static_queued |= bit;
            self.ready.push(source);
        }
    }

    // === Connections ===

    fn serve_conn(&mut self, key: ConnKey, readable: bool, writable: bool, read_closed: bool) {
        let Some(slot) = live_slot(&mut self.conns, key) else {
            trace!("stale or closing token {key:?} ignored");
            return;
        };
        slot.conn.on_ready(readable, writable);
        if read_closed {
            slot.conn.on_read_closed();
        }
        // Already on a ready list: it is driven there, with the readiness just recorded. Driving
        // it here too would give it two budgets in one turn.
        if slot.queued {
            return;
        }
        self.drive_slot(key);
    }

    /// Drives a connection and applies the verdict: close, queue, re-register, re-arm.
    fn drive_slot(&mut self, key: ConnKey) {
        let index = key.slot as usize;
        let Some(slot) = self.conns.get_mut(index) else {
            return;
        };
        let mut cx = Context {
            pool: &mut self.pool,
            limits: &self.limits,
            now: self.now,
        };
        let verdict = slot.conn.drive(&mut slot.socket, &mut cx);
        match verdict {
            Verdict::Close => {
                self.mark_closing(index);
                return;
            }
            Verdict::Again if !slot.queued => {
                slot.queued = true;
                self.ready.push(Source::Conn(key));
            }
            Verdict::Again | Verdict::Wait => {}
        }
        let wanted = slot.conn.interest();
        if wanted != slot.registered {
            let token = Source::Conn(key).token();
            if let Err(error) = self
                .poll
                .registry()
                .reregister(&mut slot.socket, token, wanted)
            {
                warn!("re-register of {key:?} failed: {error}");
                self.mark_closing(index);
                return;
            }
            slot.registered = wanted;
        }
        let deadline = slot.conn.deadline(&self.limits);
        if deadline < slot.armed {
            slot.armed = deadline;
            self.timers.push(deadline, TimerKey::Conn(key).pack());
        }
    }

    fn mark_closing(&mut self, index: usize) {
        if let Some(slot) = self.conns.get_mut(index) {
            if !slot.closing {
                slot.closing = true;
                self.to_close.push(index);
            }
        }
    }

    /// Closes every connection marked in this batch. Done last in the turn, so no event of this
    /// batch can reach a new connection that reuses the slot.
    fn close_marked(&mut self) {
        let closed_any = !self.to_close.is_empty();
        for index in self.to_close.drain(..) {
            let mut slot = self.conns.remove(index);
            if let Err(error) = self.poll.registry().deregister(&mut slot.socket) {
                debug!("deregister failed: {error}");
            }
            slot.conn.release(&mut self.pool);
            self.stats.closed += 1;
            trace!("closed slot {index} (generation {})", slot.generation);
        }
        if closed_any && self.accept_paused {
            self.resume_accepting();
        }
        if self.timers.len() > 2 * self.conns.len() + TIMER_SLACK {
            self.sweep_timers();
        }
    }

    /// Drops timer entries no live connection owns: those of closed connections (their idle
    /// entry lingers until it would fire) and those superseded by an earlier deadline. Without
    /// this, connection churn would grow the heap by one entry per connection for a whole idle
    /// timeout.
    fn sweep_timers(&mut self) {
        let conns = &self.conns;
        self.timers
            .retain(|at, token| match TimerKey::unpack(token) {
                Some(TimerKey::Conn(key)) => conns
                    .get(key.slot as usize)
                    .is_some_and(|slot| slot.generation == key.generation && slot.armed == at),
                Some(TimerKey::ShutdownGrace | TimerKey::AcceptRetry) => true,
                None => false,
            });
    }

    // === Accepting ===

    fn accept(&mut self, source: Source) {
        if self.accept_paused {
            return;
        }
        let protocol = if source == Source::FramedListener {
            Protocol::Framed
        } else {
            Protocol::RawEcho
        };
        for _ in 0..self.limits.accept_budget {
            let Some(listener) = self.listener(source) else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, protocol),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if is_out_of_descriptors(&error) => {
                    match self.shed_with_spare_fd(source, protocol) {
                        Shed::Refused => {}
                        Shed::BacklogEmpty => return,
                        Shed::NoDescriptor => {
                            self.pause_accepting();
                            return;
                        }
                    }
                }
                Err(error) if is_per_connection_error(&error) => {
                    debug!("accept: {error} (connection dropped by the network)");
                }
                Err(error) => {
                    error!("accept failed: {error}; pausing accept for {ACCEPT_RETRY:?}");
                    self.pause_accepting();
                    return;
                }
            }
        }
        // Budget spent and the backlog may hold more: next turn, without waiting for an event.
        self.queue_static(source);
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, protocol: Protocol) {
        if self.conns.len() >= self.limits.max_connections {
            if let Some(suppressed) = self.refuse_log.allow(self.now) {
                warn!(
                    "connection limit ({}) reached: refusing {peer} ({suppressed} more refused since last report)",
                    self.limits.max_connections
                );
            }
            self.refuse(stream, protocol);
            return;
        }
        if let Err(error) = stream.set_nodelay(true) {
            debug!("TCP_NODELAY on {peer}: {error}");
        }
        let entry = self.conns.vacant_entry();
        let key = ConnKey {
            slot: entry.key() as u32,
            generation: self.next_generation,
        };
        self.next_generation = self.next_generation.wrapping_add(1);
        let conn = Connection::new(protocol, self.now, &self.limits);
        let registered = conn.interest();
        // Registration reports bytes that are already waiting, so there is nothing to drive
        // yet; only the first deadline (hello or idle) needs arming.
        let deadline = conn.deadline(&self.limits);
        let mut socket = stream;
        if let Err(error) =
            self.poll
                .registry()
                .register(&mut socket, Source::Conn(key).token(), registered)
        {
            warn!("register of {peer} failed: {error}");
            return;
        }
        entry.insert(Slot {
            socket,
            conn,
            generation: key.generation,
            registered,
            armed: deadline,
            queued: false,
            closing: false,
        });
        self.stats.accepted += 1;
        debug!(
            "accepted {peer} ({protocol:?}) as slot {} generation {}",
            key.slot, key.generation
        );
        self.timers.push(deadline, TimerKey::Conn(key).pack());
    }

    /// Turns a client away: framed clients get SERVER_BUSY. Shutting the write side and reading
    /// what the client already sent lets the close go out as FIN, not a reset that could
    /// destroy the error frame.
    fn refuse(&mut self, stream: TcpStream, protocol: Protocol) {
        self.stats.refused += 1;
        let mut stream = stream;
        if protocol == Protocol::Framed {
            let _ = stream.write(&self.busy_frame);
        }
        let _ = stream.shutdown(Shutdown::Write);
        let mut discard = [0; 4096];
        let mut drained = 0;
        while drained < REFUSE_DRAIN_BYTES {
            match stream.read(&mut discard) {
                Ok(n) if n == discard.len() => drained += n,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                _ => break,
            }
        }
    }

    /// Out of descriptors: free the spare, accept one connection with it and turn it away,
    /// take the spare back. Keeps the backlog moving (clients hear "busy" instead of hanging)
    /// without spinning: each call consumes one pending connection, or finds none.
    fn shed_with_spare_fd(&mut self, source: Source, protocol: Protocol) -> Shed {
        if let Some(suppressed) = self.emfile_log.allow(self.now) {
            warn!(
                "out of file descriptors: turning connections away ({suppressed} more since last report)"
            );
        }
        let Some(spare) = self.spare_fd.take() else {
            return Shed::NoDescriptor;
        };
        drop(spare);
        let accepted = self.listener(source).map(|listener| listener.accept());
        let shed = match accepted {
            Some(Ok((stream, _))) => {
                self.refuse(stream, protocol);
                Shed::Refused
            }
            Some(Err(error)) if error.kind() == ErrorKind::WouldBlock => Shed::BacklogEmpty,
            None => Shed::BacklogEmpty,
            Some(Err(error)) => {
                debug!("accept with the spare descriptor failed: {error}");
                Shed::NoDescriptor
            }
        };
        self.spare_fd = open_spare_fd();
        shed
    }

    fn listener(&self, source: Source) -> Option<&TcpListener> {
        match source {
            Source::FramedListener => self.framed_listener.as_ref(),
            Source::EchoListener => self.echo_listener.as_ref(),
            _ => None,
        }
    }

    fn pause_accepting(&mut self) {
        if !self.accept_paused {
            self.accept_paused = true;
            self.timers
                .push(self.now.after(ACCEPT_RETRY), TimerKey::AcceptRetry.pack());
        }
    }

    fn resume_accepting(&mut self) {
        self.accept_paused = false;
        if self.spare_fd.is_none() {
            self.spare_fd = open_spare_fd();
        }
        // Connections may have queued in the backlog without a new edge: look now.
        self.queue_static(Source::FramedListener);
        self.queue_static(Source::EchoListener);
    }

    // === UDP ===

    fn serve_udp(&mut self, readable: bool, writable: bool) {
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        udp.on_ready(readable, writable);
        if udp.drive(&self.limits, self.now) == Verdict::Again {
            self.queue_static(Source::Udp);
        }
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        let wanted = udp.interest();
        if wanted != self.udp_registered {
            match self
                .poll
                .registry()
                .reregister(udp.socket_mut(), Source::Udp.token(), wanted)
            {
                Ok(()) => self.udp_registered = wanted,
                Err(error) => warn!("re-register of the UDP socket failed: {error}"),
            }
        }
    }

    // === Timers ===

    fn fire_timers(&mut self) {
        while let Some((at, token)) = self.timers.pop_due(self.now) {
            let Some(key) = TimerKey::unpack(token) else {
                continue;
            };
            match key {
                TimerKey::Conn(key) => self.conn_timer(key, at),
                TimerKey::ShutdownGrace => {
                    info!(
                        "shutdown grace period over: closing {} connections",
                        self.conns.len()
                    );
                    self.close_all();
                }
                TimerKey::AcceptRetry => {
                    if self.accept_paused {
                        self.resume_accepting();
                    }
                }
            }
        }
    }

    fn conn_timer(&mut self, key: ConnKey, at: Tick) {
        let now = self.now;
        let Some(slot) = live_slot(&mut self.conns, key) else {
            return;
        };
        if slot.armed != at {
            return; // superseded by an earlier entry
        }
        slot.armed = Tick::NEVER;
        if slot.conn.deadline(&self.limits) <= now {
            let mut cx = Context {
                pool: &mut self.pool,
                limits: &self.limits,
                now,
            };
            slot.conn.on_deadline(&mut cx);
        }
        // Either sends what the deadline produced (a TIMEOUT frame) or just re-arms.
        self.drive_slot(key);
    }

    // === Shutdown ===

    fn drain_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            let name = if signal == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            self.begin_shutdown(name);
        }
    }

    /// Stops accepting, tells every framed client SHUTTING_DOWN, and gives pending output the
    /// grace period to drain. A second request closes everything at once.
    fn begin_shutdown(&mut self, why: &str) {
        if self.shutdown_deadline.is_some() {
            info!("{why} again: closing {} connections now", self.conns.len());
            self.close_all();
            return;
        }
        let grace = self.limits.shutdown_grace;
        info!(
            "{why}: shutting down; {} connections get up to {grace:?} to flush",
            self.conns.len()
        );
        let registry = self.poll.registry();
        for listener in [self.framed_listener.take(), self.echo_listener.take()]
            .into_iter()
            .flatten()
        {
            let mut listener = listener;
            let _ = registry.deregister(&mut listener);
        }
        if let Some(mut udp) = self.udp.take() {
            let _ = registry.deregister(udp.socket_mut());
            let stats = udp.stats();
            info!(
                "udp echo: {} echoed, {} dropped (queue full), {} ignored (source port), {} send errors",
                stats.echoed,
                stats.dropped_queue_full,
                stats.refused_source_port,
                stats.send_errors
            );
        }
        let deadline = self.now.after(grace);
        self.shutdown_deadline = Some(deadline);
        self.timers.push(deadline, TimerKey::ShutdownGrace.pack());
        let keys: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, slot)| !slot.closing)
            .map(|(index, slot)| ConnKey {
                slot: index as u32,
                generation: slot.generation,
            })
            .collect();
        for key in keys {
            if let Some(slot) = self.conns.get_mut(key.slot as usize) {
                let mut cx = Context {
                    pool: &mut self.pool,
                    limits: &self.limits,
                    now: self.now,
                };
                slot.conn.begin_close(
                    Some((ErrorCode::ShuttingDown, "server is shutting down")),
                    grace,
                    &mut cx,
                );
                self.drive_slot(key);
            }
        }
    }

    fn close_all(&mut self) {
        let indices: Vec<usize> = self.conns.iter().map(|(index, _)| index).collect();
        for index in indices {
            self.mark_closing(index);
        }
    }
}

/// The slot for `key`, unless it was closed (or marked for closing) since the token was issued.
fn live_slot(conns: &mut Slab<Slot>, key: ConnKey) -> Option<&mut Slot> {
    conns
        .get_mut(key.slot as usize)
        .filter(|slot| slot.generation == key.generation && !slot.closing)
}

/// What [`Core::shed_with_spare_fd`] managed.
enum Shed {
    /// One pending connection was accepted and turned away.
    Refused,
    /// Nothing was pending: accepting goes on at the next connection's event.
    BacklogEmpty,
    /// No descriptor could be had even with the spare: pause accepting.
    NoDescriptor,
}

/// A descriptor held in reserve for [`Core::shed_with_spare_fd`].
fn open_spare_fd() -> Option<File> {
    File::open("/dev/null").ok()
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// `accept` errors that belong to one pending connection, not to the listener: skip it and go
/// on (accept(2), "Error handling").
fn is_per_connection_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EPROTO
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::EPERM
        )
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream as StdTcpStream;
    use std::thread::sleep;

    use super::*;
    use crate::conn::State;
    use crate::proto::Hello;

    fn reactor() -> (Reactor, SocketAddr) {
        let framed = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = framed.local_addr().unwrap();
        let sockets = Sockets {
            framed,
            echo_tcp: None,
            echo_udp: None,
        };
        (
            Reactor::new(sockets, Limits::default(), false).unwrap(),
            addr,
        )
    }

    fn keys(core: &Core) -> Vec<ConnKey> {
        core.conns
            .iter()
            .map(|(slot, s)| ConnKey {
                slot: slot as u32,
                generation: s.generation,
            })
            .collect()
    }

    /// Connects and accepts; loopback completes the handshake before `connect` returns, so one
    /// accept call finds it.
    fn connect_and_accept(core: &mut Core, addr: SocketAddr) -> (StdTcpStream, ConnKey) {
        let before = keys(core);
        let client = StdTcpStream::connect(addr).unwrap();
        core.accept(Source::FramedListener);
        let new: Vec<ConnKey> = keys(core)
            .into_iter()
            .filter(|key| !before.contains(key))
            .collect();
        assert_eq!(new.len(), 1, "exactly one connection accepted");
        (client, new[0])
    }

    fn hello() -> Vec<u8> {
        let mut wire = Vec::new();
        Hello::current().encode(&mut wire);
        wire
    }

    #[test]
    fn an_idle_connection_costs_one_64_byte_slot_and_one_16_byte_timer_entry() {
        // The per-connection memory figures in docs/PERFORMANCE.md rest on these sizes. In debug
        // builds mio adds a selector id to every socket for its own checks; allow exactly that.
        let socket_extra = std::mem::size_of::<TcpStream>() - std::mem::size_of::<i32>();
        let slot = std::mem::size_of::<Slot>();
        assert!(slot <= 64 + socket_extra, "Slot is {slot} bytes");
        assert_eq!(std::mem::size_of::<(Tick, Token)>(), 16);
    }

    #[test]
    fn tokens_round_trip_through_their_encoding() {
        let extremes = [
            ConnKey {
                slot: 0,
                generation: 0,
            },
            ConnKey {
                slot: SLOT_MASK as u32,
                generation: u32::MAX,
            },
        ];
        for key in extremes {
            assert_eq!(
                Source::from_token(Source::Conn(key).token()),
                Some(Source::Conn(key))
            );
        }
        for source in [
            Source::FramedListener,
            Source::EchoListener,
            Source::Udp,
            Source::Signals,
            Source::Waker,
        ] {
            assert_eq!(Source::from_token(source.token()), Some(source));
        }
        for key in [
            TimerKey::ShutdownGrace,
            TimerKey::AcceptRetry,
            TimerKey::Conn(extremes[1]),
        ] {
            assert_eq!(TimerKey::unpack(key.pack()), Some(key));
        }
    }

    #[test]
    fn slot_closed_in_a_batch_is_not_reused_and_its_stale_token_reaches_nothing() {
        let (mut reactor, addr) = reactor();
        let core = &mut reactor.core;

        // One batch: A is marked for closing (as a protocol error or EOF would); B is accepted
        // and the batch still holds an event for A, whose client has a HELLO waiting.
        let (mut client_a, key_a) = connect_and_accept(core, addr);
        client_a.write_all(&hello()).unwrap();
        core.mark_closing(key_a.slot as usize);
        let (_client_b, key_b) = connect_and_accept(core, addr);
        assert_ne!(
            key_b.slot, key_a.slot,
            "a slot closing in this batch is not handed out"
        );
        core.serve_conn(key_a, true, true, false);
        let slot_a = &core.conns[key_a.slot as usize];
        assert_eq!(
            (slot_a.conn.state(), slot_a.conn.pending_input()),
            (State::AwaitingHello, 0),
            "the later event for A did not drive it"
        );
        client_a.set_nonblocking(true).unwrap();
        assert_eq!(
            client_a.read(&mut [0; 64]).unwrap_err().kind(),
            ErrorKind::WouldBlock,
            "A got no HELLO_OK"
        );
        core.close_marked();
        assert!(!core.conns.contains(key_a.slot as usize));

        // Next batch: C reuses A's slot under a new generation; A's token is now stale.
        let (mut client_c, key_c) = connect_and_accept(core, addr);
        assert_eq!(key_c.slot, key_a.slot, "the freed slot is reused");
        assert_ne!(key_c.generation, key_a.generation);
        client_c.write_all(&hello()).unwrap();
        core.serve_conn(key_a, true, true, false);
        assert_eq!(
            core.conns[key_c.slot as usize].conn.state(),
            State::AwaitingHello,
            "stale token did not drive C"
        );
        client_c.set_nonblocking(true).unwrap();
        assert_eq!(
            client_c.read(&mut [0; 64]).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );

        // C's own token does reach C (retry until its HELLO has arrived).
        for _ in 0..100 {
            core.serve_conn(key_c, true, true, false);
            if core.conns[key_c.slot as usize].conn.state() == State::Open {
                break;
            }
            sleep(Duration::from_millis(10));
        }
        assert_eq!(core.conns[key_c.slot as usize].conn.state(), State::Open);
    }

    #[test]
    fn timer_queue_stays_proportional_to_open_connections_under_churn() {
        let (mut reactor, addr) = reactor();
        let core = &mut reactor.core;
        let (_kept, _) = connect_and_accept(core, addr);
        for _ in 0..3_000 {
            let (client, key) = connect_and_accept(core, addr);
            drop(client);
            core.mark_closing(key.slot as usize);
            core.close_marked();
        }
        assert_eq!(core.conns.len(), 1);
        assert!(
            core.timers.len() <= 2 * core.conns.len() + TIMER_SLACK,
            "{} timer entries for {} open connections",
            core.timers.len(),
            core.conns.len()
        );
    }

    #[test]
    fn a_blasting_client_gets_one_budget_and_the_other_is_answered_in_the_same_turn() {
        let (mut reactor, addr) = reactor();
        let core = &mut reactor.core;
        core.limits.frame_budget = 16;
        let (mut blaster, key_blaster) = connect_and_accept(core, addr);
        let (mut pinger, key_pinger) = connect_and_accept(core, addr);
        let request = |stream| {
            crate::proto::Frame::new(
                crate::proto::FrameType::EchoRequest,
                crate::proto::Flags::END_STREAM,
                stream,
                b"x",
            )
            .to_vec()
        };
        let mut flood = hello();
        for stream in 1..=2_000 {
            flood.extend(request(stream));
        }
        blaster.write_all(&flood).unwrap();
        pinger.write_all(&[hello(), request(1)].concat()).unwrap();
        // One turn: both report readable, the blaster first.
        for _ in 0..100 {
            core.serve_conn(key_blaster, true, true, false);
            if core.conns[key_blaster.slot as usize].queued {
                break;
            }
            sleep(Duration::from_millis(10));
        }
        core.serve_conn(key_pinger, true, true, false);
        assert!(
            core.conns[key_blaster.slot as usize].queued,
            "the blaster's work waits for the next turn"
        );
        assert_eq!(
            core.conns[key_pinger.slot as usize].conn.pending_output(),
            0,
            "the pinger was answered in this turn"
        );
        pinger
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reply = [0; 22 + 13];
        pinger.read_exact(&mut reply).unwrap();
        assert_eq!(reply[22], 0x11, "HELLO_OK then ECHO_REPLY");
    }

    #[test]
    fn budget_exhaustion_queues_the_connection_once() {
        let (mut reactor, addr) = reactor();
        let core = &mut reactor.core;
        core.limits.frame_budget = 2;
        let (mut client, key) = connect_and_accept(core, addr);
        let mut wire = hello();
        for stream in 1..=10 {
            let request = crate::proto::Frame::new(
                crate::proto::FrameType::EchoRequest,
                crate::proto::Flags::END_STREAM,
                stream,
                b"x",
            );
            request.encode_into(&mut wire);
        }
        client.write_all(&wire).unwrap();
        for _ in 0..100 {
            core.serve_conn(key, true, true, false);
            if core.conns[key.slot as usize].queued {
                break;
            }
            sleep(Duration::from_millis(10));
        }
        assert!(
            core.conns[key.slot as usize].queued,
            "frames left after the budget: queued"
        );
        assert_eq!(core.ready, vec![Source::Conn(key)]);
        let pending = core.conns[key.slot as usize].conn.pending_input();
        core.serve_conn(key, true, true, false);
        assert_eq!(core.ready.len(), 1, "queued once");
        assert_eq!(
            core.conns[key.slot as usize].conn.pending_input(),
            pending,
            "an event for a queued connection only records readiness: one budget per turn"
        );
    }
}
