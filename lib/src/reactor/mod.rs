//! The event loop: the only place that calls `poll()`.
//!
//! # Rules of the loop
//! `mio` is edge-triggered: a source is reported when it *becomes* ready, not while it *is*
//! ready. Everything below follows from that, for sockets and for a command's pipes alike.
//!
//! 1. **Drain until `WouldBlock`.** After an event, read (or write, or accept) until the call
//!    says `WouldBlock`; otherwise no new event may ever come. A read or write shorter than
//!    asked proves the same for a stream socket or a pipe (epoll(7)), so the extra call is
//!    skipped.
//! 2. **Retry `Interrupted`**, from `poll` itself and from every read and write.
//! 3. **EOF is a 0-byte read**, not an event flag: flags such as "read closed" are hints that
//!    only make us read. A process's exit is its pidfd turning readable, and is confirmed by
//!    `waitid`, never assumed.
//! 4. **Spurious events are normal.** An event may find nothing to do; `WouldBlock` is then the
//!    answer, never an error.
//! 5. **Budgets and the ready list.** Draining one source completely could starve the others,
//!    so each connection gets one budget per turn (bytes from its socket and its commands'
//!    pipes, frames), however many of its descriptors the batch reports; one that still has
//!    work goes on the ready list and is served next turn, and the loop polls with a zero
//!    timeout while that list is not empty. Rule 1 still holds: its readiness is remembered,
//!    not dropped.
//! 6. **A token from a closed slot never reaches its successor.** Closing is deferred to the
//!    end of the event batch (later events for it in the same batch are ignored), and every
//!    connection token carries a generation number that a reused slot does not share, so a
//!    stale token in the ready list or the timer queue finds nothing. A command's descriptors
//!    carry their connection's token and a child number that is not reused within a turn.
//!
//! # One turn
//! [`Reactor::run`]: take the ready list → `poll` (timeout: zero if anything is ready, else
//! until the nearest deadline) → handle each event (a connection's event only records its
//! readiness and adds it to this turn's list) → drive each connection on this turn's list
//! once, with one budget → fire due timers → close what was marked for closing → repeat. With a
//! metrics port, the time from `poll`'s return to the end of the turn goes into the loop-turn
//! histogram (`crate::metrics`): the stall detector.
//!
//! # Files
//! - `token.rs`: what a token names, and its bit layout;
//! - `slots.rs`: the slab of connections — serving, driving, closing;
//! - `accept.rs`: accepting, refusing, shedding when out of descriptors;
//! - `children.rs`: the loop's side of child processes;
//! - `disk.rs`: the loop's side of the disk helper (blocking disk calls off the loop);
//! - `udp.rs`: the UDP echo, its socket and its queue of replies;
//! - `metrics.rs`: the metrics port (`--metrics`), byte counting, connections' access lines.

mod accept;
mod children;
mod disk;
pub(crate) mod metrics;
mod slots;
pub(crate) mod token;
mod udp;

use std::fs::File;
use std::io::{self, ErrorKind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use log::{error, info, trace, warn};
use mio::event::Event;
use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Poll, Token, Waker};
use rustls::ServerConfig;
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::access::Access;
use crate::buffer::BufferPool;
use crate::conn::{Connection, Context, State};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::proto::{ErrorCode, ErrorMessage};
use crate::reload::Reload;
use crate::service::disk::Disk;
use crate::service::exec::Children;
use crate::sys::disk::{DiskHelper, HelperTokens};
use crate::sys::files::{FileState, Files};
use crate::sys::notify::Lifecycle;
use crate::sys::process::ChildTable;
use crate::sys::root::Root;
use crate::throttle::LogThrottle;
use crate::timer::{Clock, Tick, TimerQueue, WallClock};
use crate::transport::proxy::ProxyPolicy;
use crate::transport::tls::{RecordBuffers, TlsSession};
use crate::transport::{Peer, Readiness, Transport};
use children::ConnChildren;
use disk::ConnJobs;
use metrics::{ConnTally, MetricsPort};
use slots::Slot;
use token::{ConnKey, Source, TimerKey};
use udp::UdpEcho;

/// The readiness a connection's socket is registered for: what the connection wants and what
/// its transport wants for itself ([`Transport::wants`]).
fn socket_wants(conn: &Connection, socket: &impl Transport) -> Readiness {
    conn.interest() | socket.wants()
}

/// `wanted` in `mio`'s terms, converted only when a registration changes. `mio` cannot register
/// nothing; a connection never wants nothing (READABLE also brings errors and hang-ups), so
/// the fallback is only for the type's sake.
fn poll_interest(wanted: Readiness) -> Interest {
    match (wanted.is_readable(), wanted.is_writable()) {
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, true) => Interest::WRITABLE,
        _ => Interest::READABLE,
    }
}

/// The signals the loop takes (with `handle_signals`): SIGINT and SIGTERM shut it down, SIGHUP
/// reloads, SIGUSR1 logs a line of counters, and SIGUSR2 is logged and ignored. The last two
/// are here because their default action ends the process without a word, and they are sent
/// by habit (by log rotation scripts, for one). SIGPIPE is ignored (std does so before
/// `main`), and SIGQUIT keeps its default: a core dump on purpose.
const HANDLED_SIGNALS: [libc::c_int; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

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

/// After the shutdown grace period, how long the loop waits for killed children to be reaped
/// before it exits anyway.
const FINAL_REAP: Duration = Duration::from_secs(2);

/// Sockets handed to the reactor, already bound.
#[derive(Debug)]
pub(crate) struct Sockets {
    /// The framed-protocol listener.
    pub framed: TcpListener,
    /// The raw echo listener, if enabled.
    pub echo_tcp: Option<TcpListener>,
    /// The UDP echo socket, if enabled.
    pub echo_udp: Option<UdpSocket>,
    /// The metrics listener (`--metrics`), if enabled.
    pub metrics: Option<TcpListener>,
}

/// Everything the reactor is built from.
#[derive(Debug)]
pub(crate) struct Setup {
    /// The bound sockets.
    pub sockets: Sockets,
    /// Limits and timeouts.
    pub limits: Limits,
    /// The token, and whether commands run.
    pub access: Access,
    /// The root directory commands run under and files are served from; needed when
    /// `access.exec` is set, and without it there is no file service.
    pub root: Option<Root>,
    /// Serve files under `root`.
    pub files: bool,
    /// Shut down gracefully on SIGINT/SIGTERM.
    pub handle_signals: bool,
    /// The program run as the disk helper (`PROGRAM __disk-helper FD`), started when files
    /// are served; `None` makes blocking disk calls inline on the loop.
    pub disk_helper: Option<PathBuf>,
    /// TLS on the framed listener: every connection it accepts speaks TLS first.
    pub tls: Option<Arc<ServerConfig>>,
    /// The files SIGHUP re-reads.
    pub reload: Reload,
    /// Told of reloads and of the shutdown.
    pub lifecycle: Option<Arc<dyn Lifecycle>>,
    /// Who may (or must) start a connection with a PROXY header.
    pub proxy: ProxyPolicy,
}

/// Asks a running reactor to shut down, from any thread (tests, an embedding program).
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    waker: Arc<Waker>,
    // Atomic, the one thing the loop shares: another thread sets it, then wakes the loop.
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
    /// Commands started.
    pub commands: u64,
    /// Connections closed because the client buffers were over `--max-client-memory`.
    pub shed: u64,
}

/// The event loop and everything it owns. Built by [`crate::server::Server::bind`].
pub(crate) struct Reactor {
    events: Events,
    core: Core,
}

/// What a connection's drive borrows from the loop, kept apart from the slab so that one slot
/// and these can be borrowed at the same time.
struct Env {
    poll: Poll,
    pool: BufferPool,
    limits: Limits,
    access: Access,
    children: ChildTable,
    root: Option<Root>,
    /// The file service's state; `None` without a file service.
    files: Option<FileState>,
    /// Blocking disk calls, off the loop (or inline without a helper).
    disk: DiskHelper,
    timers: TimerQueue<Token>,
    auth_log: LogThrottle,
    clock: Clock,
    now: Tick,
    /// The wall clock, read beside `now` on every turn of a server that serves files.
    wall_clock: WallClock,
    /// Turns of the loop so far.
    turn: u64,
    /// The server's counters (`crate::metrics`): plain integers, bumped by the loop and, through
    /// the [`Context`], by the connections.
    metrics: Metrics,
}

impl Env {
    /// Runs `work` with the [`Context`] of connection `key`: the pool, the limits, the time,
    /// the access rules, who the peer is and, when commands are enabled, the child processes.
    fn with_context<R>(
        &mut self,
        key: ConnKey,
        peer: Peer,
        work: impl FnOnce(&mut Context<'_>) -> R,
    ) -> R {
        // Built only where commands run: an echo-only server's drives pay nothing for it.
        let mut host = match (&self.root, self.access.exec) {
            (Some(root), true) => Some(ConnChildren {
                table: &mut self.children,
                root,
                registry: self.poll.registry(),
                timers: &mut self.timers,
                limits: &self.limits,
                key,
                now: self.now,
            }),
            _ => None,
        };
        let children = host.as_mut().map(|host| host as &mut dyn Children);
        let mut jobs = ConnJobs {
            helper: &mut self.disk,
            registry: self.poll.registry(),
            key,
        };
        let mut files = match (&self.root, self.files.as_mut()) {
            (Some(root), Some(state)) => Some(Files {
                root,
                state,
                jobs: &mut jobs,
                now: self.wall_clock,
            }),
            _ => None,
        };
        let mut cx = Context {
            pool: &mut self.pool,
            limits: &self.limits,
            now: self.now,
            wall_clock: self.wall_clock,
            access: &self.access,
            peer,
            children,
            turn: self.turn,
            auth_log: Some(&mut self.auth_log),
            files: files.as_mut().map(|files| files as &mut dyn Disk),
            metrics: Some(&mut self.metrics),
        };
        work(&mut cx)
    }
}

/// The loop's state, apart from the event buffer (which `poll` borrows while handlers run).
struct Core {
    env: Env,
    framed_listener: Option<TcpListener>,
    echo_listener: Option<TcpListener>,
    udp: Option<UdpEcho<UdpSocket>>,
    udp_registered: Interest,
    signals: Option<Signals>,
    waker: Arc<Waker>,
    /// Set from another thread by a [`ShutdownHandle`] (hence atomic), read after its wake-up.
    shutdown_requested: Arc<AtomicBool>,
    conns: Slab<Slot>,
    next_generation: u32,
    /// Sources to serve next turn without waiting for readiness.
    ready: Vec<Source>,
    /// The ready list being served this turn (swapped with `ready`, so neither reallocates);
    /// this turn's events add their connections to it.
    ready_now: Vec<Source>,
    /// Static sources currently on `ready` (bit per listener and the UDP socket).
    static_queued: u8,
    to_close: Vec<usize>,
    /// The connections that got disk completions this turn, to drive once each (kept
    /// between turns with its capacity).
    disk_woken: Vec<ConnKey>,
    spare_fd: Option<File>,
    accept_paused: bool,
    refuse_log: LogThrottle,
    emfile_log: LogThrottle,
    shutdown_deadline: Option<Tick>,
    /// Draining after SIGTERM, until this time: still serving, failing health checks.
    draining: Option<Tick>,
    /// The shutdown grace period has ended: whatever is left is killed.
    grace_over: bool,
    busy_frame: Vec<u8>,
    stats: ReactorStats,
    /// KiB of buffer the connections hold, as of their last drives (their TLS sessions'
    /// buffers included).
    client_memory_kib: usize,
    /// The TLS configuration new framed connections handshake with; `None`: plaintext.
    /// Swapped by a SIGHUP (`Core::reload`); a session keeps the one it started with.
    tls_config: Option<Arc<ServerConfig>>,
    /// The TLS session of each slot that has one, by slot index (empty on a plaintext server,
    /// so a plaintext drive pays one bounds check). Kept beside the slab rather than in the
    /// `Slot`, so a slot stays 72 bytes and a plaintext connection costs what it did.
    tls: Vec<Option<Box<TlsSession>>>,
    /// The record buffers established TLS sessions borrow while bytes are in them (none on a
    /// plaintext server): an idle TLS connection holds none.
    tls_buffers: RecordBuffers,
    /// Throttles the line for a plaintext client on the TLS port.
    tls_log: LogThrottle,
    /// The files SIGHUP re-reads.
    reload: Reload,
    /// Told of reloads and of the shutdown (a service manager's news).
    lifecycle: Option<Arc<dyn Lifecycle>>,
    /// The metrics port, with `--metrics`.
    metrics_port: Option<MetricsPort>,
    /// Each client connection's tally for its access line, by slot index (beside the slab,
    /// like `tls`).
    tallies: Vec<ConnTally>,
    /// Who may (or must) start a connection with a PROXY header.
    proxy: ProxyPolicy,
    /// Throttles the line for a connection refused over its PROXY header.
    proxy_log: LogThrottle,
}

impl std::fmt::Debug for Reactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reactor")
            .field("connections", &self.core.conns.len())
            .field("children", &self.core.env.children.len())
            .field("stats", &self.core.stats)
            .finish_non_exhaustive()
    }
}

impl Reactor {
    /// Registers the sockets with a new poll. With `handle_signals`, SIGINT and SIGTERM start a
    /// graceful shutdown (through a self-pipe in the same poll: no thread, and the handler does
    /// nothing but write a byte).
    pub(crate) fn new(setup: Setup) -> io::Result<Reactor> {
        let Setup {
            sockets,
            limits,
            access,
            root,
            files,
            handle_signals,
            disk_helper,
            tls,
            reload,
            lifecycle,
            proxy,
        } = setup;
        if access.exec && root.is_none() {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "commands need a root directory",
            ));
        }
        let poll = Poll::new()?;
        let registry = poll.registry();
        let Sockets {
            mut framed,
            mut echo_tcp,
            echo_udp,
            metrics,
        } = sockets;
        let metrics_port = metrics
            .map(|listener| MetricsPort::new(listener, registry))
            .transpose()?;
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
            let mut signals = Signals::new(HANDLED_SIGNALS)?;
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
        let serves_files = files && root.is_some();
        let mut disk = DiskHelper::new(
            disk_helper,
            HelperTokens {
                socket: Source::Disk.token(),
                exit: Source::DiskExit.token(),
            },
        );
        // Only the file service makes blocking disk calls; without it, no helper process.
        if serves_files {
            disk.start(poll.registry());
        }
        // Bounded like the buffer pool's lists; nothing reserved without TLS.
        let tls_buffers = RecordBuffers::new(if tls.is_some() {
            limits.pooled_buffers
        } else {
            0
        });
        let env = Env {
            disk,
            poll,
            pool: BufferPool::new(limits.io_buffer_len, limits.pooled_buffers),
            children: ChildTable::new(limits.max_exec),
            files: (files && root.is_some())
                .then(|| FileState::new(limits.max_transfers, limits.max_put)),
            root,
            timers: TimerQueue::with_capacity(capacity),
            auth_log: LogThrottle::default(),
            clock: Clock::start(),
            now: Tick(0),
            wall_clock: WallClock::read(),
            turn: 0,
            metrics: Metrics::default(),
            access,
            limits,
        };
        let core = Core {
            env,
            framed_listener: Some(framed),
            echo_listener: echo_tcp,
            udp,
            udp_registered: Interest::READABLE,
            signals,
            waker: Arc::clone(&waker),
            shutdown_requested: Arc::new(AtomicBool::new(false)),
            conns: Slab::with_capacity(capacity),
            next_generation: 0,
            ready: Vec::with_capacity(capacity),
            ready_now: Vec::with_capacity(capacity),
            static_queued: 0,
            to_close: Vec::with_capacity(capacity),
            disk_woken: Vec::new(),
            spare_fd: accept::open_spare_fd(),
            accept_paused: false,
            refuse_log: LogThrottle::default(),
            emfile_log: LogThrottle::default(),
            shutdown_deadline: None,
            draining: None,
            grace_over: false,
            busy_frame,
            stats: ReactorStats::default(),
            client_memory_kib: 0,
            // Reserved up front like the slab (zeroed pages: virtual memory until touched).
            tls: if tls.is_some() {
                std::iter::repeat_with(|| None).take(capacity).collect()
            } else {
                Vec::new()
            },
            tls_buffers,
            tls_config: tls,
            reload,
            lifecycle,
            tls_log: LogThrottle::default(),
            metrics_port,
            tallies: Vec::new(),
            proxy,
            proxy_log: LogThrottle::default(),
        };
        Ok(Reactor {
            events: Events::with_capacity(EVENTS_PER_POLL),
            core,
        })
    }

    /// A handle that starts a graceful shutdown from another thread.
    pub(crate) fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            waker: Arc::clone(&self.core.waker),
            requested: Arc::clone(&self.core.shutdown_requested),
        }
    }

    /// Runs until a shutdown completes. Returns an error only if `poll` itself fails.
    pub(crate) fn run(mut self) -> io::Result<ReactorStats> {
        let core = &mut self.core;
        loop {
            std::mem::swap(&mut core.ready, &mut core.ready_now);
            core.static_queued = 0;
            core.env.turn += 1;
            // `now` was read after the previous poll, so a deadline fires late by at most the
            // time that turn's handlers took; in exchange the clock is read once per turn.
            let timeout = if core.ready_now.is_empty() && !core.env.disk.has_done() {
                core.env
                    .timers
                    .next_deadline()
                    .map(|deadline| core.env.now.until(deadline))
            } else {
                Some(Duration::ZERO)
            };
            if let Err(error) = core.env.poll.poll(&mut self.events, timeout) {
                if error.kind() != ErrorKind::Interrupted {
                    return Err(error);
                }
            }
            // The turn's handler time starts here (the stall detector's histogram); read only
            // with a metrics port, the one place it is shown.
            let turn_started = core.metrics_port.is_some().then(Instant::now);
            core.env.now = core.env.clock.now();
            // Only the file service needs it: an echo-only server does not pay for the call.
            if core.env.files.is_some() {
                core.env.wall_clock = WallClock::read();
            }
            for event in self.events.iter() {
                core.handle_event(event);
            }
            core.serve_ready_list();
            core.fire_timers();
            // After the drives and timers, which may have submitted jobs run inline.
            core.deliver_disk_done();
            core.close_marked();
            if let Some(started) = turn_started {
                core.env.metrics.turns.observe(started.elapsed());
            }
            if let Some(stats) = core.shutdown_complete() {
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
            Source::Conn(key, sub) => self.serve_conn(key, sub, readable, writable, read_closed),
            Source::FramedListener | Source::EchoListener => self.accept(source),
            Source::Udp => self.serve_udp(readable, writable),
            Source::Released(child) => self.serve_released(child),
            Source::Disk => self.serve_disk(false),
            Source::DiskExit => self.serve_disk(true),
            Source::Signals => self.drain_signals(),
            Source::MetricsListener => self.accept_metrics(),
            Source::Metrics(index) => self.serve_metrics(index),
            Source::Waker => {
                if self.shutdown_requested.swap(false, Ordering::AcqRel) {
                    self.begin_drain("shutdown requested");
                }
            }
        }
    }

    fn serve_ready_list(&mut self) {
        for index in 0..self.ready_now.len() {
            match self.ready_now[index] {
                Source::Conn(key, _) => {
                    if let Some(slot) = slots::live_slot(&mut self.conns, key) {
                        slot.queued = false;
                        self.drive_slot(key);
                    }
                }
                source @ (Source::FramedListener | Source::EchoListener) => self.accept(source),
                Source::Udp => self.serve_udp(false, false),
                Source::Signals
                | Source::Waker
                | Source::Released(_)
                | Source::Disk
                | Source::DiskExit
                | Source::MetricsListener
                | Source::Metrics(_) => {}
            }
        }
        self.ready_now.clear();
    }

    fn queue_static(&mut self, source: Source) {
        let bit = match source {
            Source::FramedListener => 1 << 0,
            Source::EchoListener => 1 << 1,
            Source::Udp => 1 << 2,
            Source::Signals
            | Source::Waker
            | Source::Conn(..)
            | Source::Released(_)
            | Source::Disk
            | Source::DiskExit
            | Source::MetricsListener
            | Source::Metrics(_) => {
                debug_assert!(false, "{source:?} is not queued through queue_static");
                return;
            }
        };
        if self.static_queued & bit == 0 {
            self.static_queued |= bit;
            self.ready.push(source);
        }
    }

    // === Timers ===

    fn fire_timers(&mut self) {
        while let Some((at, token)) = self.env.timers.pop_due(self.env.now) {
            let Some(key) = TimerKey::unpack(token) else {
                continue;
            };
            match key {
                TimerKey::Conn(key) => self.conn_timer(key, at),
                TimerKey::Released(child) => self.released_timer(child),
                TimerKey::ShutdownGrace => {
                    info!(
                        "shutdown grace period over: closing {} connections",
                        self.conns.len()
                    );
                    self.grace_over = true;
                    self.close_all();
                }
                TimerKey::AcceptRetry => {
                    if self.accept_paused {
                        self.resume_accepting();
                    }
                }
                TimerKey::DiskRestart => self.disk_restart_timer(),
                TimerKey::Metrics(index) => self.metrics_timer(index, at),
                TimerKey::DrainOver => {
                    if self.draining.is_some() {
                        info!(
                            "drain over after {:?}: shutting down",
                            self.env.limits.drain_delay
                        );
                        self.begin_shutdown("drain over");
                    }
                }
            }
        }
    }

    // === Shutdown ===

    fn drain_signals(&mut self) {
        let Some(signals) = self.signals.as_mut() else {
            return;
        };
        let received: Vec<i32> = signals.pending().collect();
        for signal in received {
            match signal {
                libc::SIGHUP => {
                    // Whatever the outcome, the server serves on: ready again after it. Not
                    // once the manager has heard STOPPING=1 (draining, or shut down): the
                    // reload still happens, but the server is not serving its way back.
                    let stopping = self.draining.is_some() || self.shutdown_deadline.is_some();
                    if !stopping {
                        self.tell(|manager| manager.reloading());
                    }
                    self.reload();
                    if !stopping {
                        self.tell(|manager| manager.ready("serving (reload done)"));
                    }
                }
                libc::SIGUSR1 => self.log_counters(),
                libc::SIGUSR2 => info!("SIGUSR2: ignored (nothing is bound to it)"),
                // Ctrl-C is a person at a terminal who wants the server gone now: no drain
                // (the graceful shutdown still answers what was received).
                libc::SIGINT => self.begin_shutdown("SIGINT"),
                // What a service manager or an orchestrator sends: drain first.
                _ => self.begin_drain("SIGTERM"),
            }
        }
    }

    /// SIGUSR1: one line of what the server holds and has done, for an operator's look.
    fn log_counters(&self) {
        let stats = self.stats;
        let children = self.env.children.stats();
        info!(
            "SIGUSR1: {} connections open, {} accepted, {} refused, {} closed, {} shed over the memory budget; {} commands running, {} started; {} KiB of client buffers",
            self.conns.len(),
            stats.accepted,
            stats.refused,
            stats.closed,
            stats.shed,
            self.env.children.len(),
            children.spawned,
            self.client_memory_kib
        );
    }

    /// SIGHUP: re-reads the configuration (see `crate::reload`) and swaps in what can change
    /// live, only if all of it is good; connections keep what they started with, and what
    /// needs a restart is named and left as it is.
    fn reload(&mut self) {
        if self.reload.is_empty() {
            info!("SIGHUP: nothing to reload (no --config, no --access, no --tls-cert)");
            return;
        }
        let fresh = match self.reload.read() {
            Ok(fresh) => fresh,
            Err(error) => {
                error!("SIGHUP: {error}; keeping the configuration in use");
                return;
            }
        };
        let mut swapped: Vec<String> = Vec::new();
        if let Some(limits) = &fresh.limits {
            // The new limits were validated whole, but they join the ones sized at start
            // (a frame limit that needs a restart may not fit a new memory budget).
            let mut candidate = self.env.limits.clone();
            let changed = candidate.take_live(limits);
            if let Err(error) = candidate.validate() {
                error!(
                    "SIGHUP: {error} (with the limits that need a restart left as they are); keeping the configuration in use"
                );
                return;
            }
            self.env.limits = candidate;
            if let Some(files) = self.env.files.as_mut() {
                files.max_put = self.env.limits.max_put;
                files.max_transfers = self.env.limits.max_transfers;
            }
            // A lower memory budget holds from now on, not from the next buffer that grows.
            if self.client_memory_kib > self.env.limits.max_client_memory >> 10 {
                self.shed_client_memory();
            }
            swapped.extend(changed);
        }
        if let Some(access) = fresh.access {
            self.env.access = self.env.access.reloaded(access);
            swapped.push("the access file".to_string());
        }
        if let Some(tls) = fresh.tls {
            if let Some(current) = self.tls_config.as_mut() {
                *current = tls;
                swapped.push("the TLS certificate".to_string());
            }
        }
        if let Some(install) = fresh.log_filter {
            swapped.push(install());
        }
        if !fresh.needs_restart.is_empty() {
            warn!(
                "SIGHUP: {} changed and needs a restart; still running with the old value",
                fresh.needs_restart.join(", ")
            );
        }
        if swapped.is_empty() {
            info!("SIGHUP: reloaded; nothing that can change live has changed");
        } else {
            info!(
                "SIGHUP: reloaded {} (open connections keep their TLS session and grant)",
                swapped.join(", ")
            );
        }
    }

    /// SIGTERM (or a [`ShutdownHandle`]): drain for `Limits::drain_delay` — keep accepting and
    /// serving, but fail load balancers' health checks (connections whose PROXY header was a
    /// v2 `LOCAL` or v1 `UNKNOWN`), so the balancer stops sending clients before the
    /// listeners close — then shut down. Without a delay, or once draining or shutting down,
    /// this is [`Core::begin_shutdown`]: a second SIGTERM cuts the drain short, a third
    /// closes everything.
    fn begin_drain(&mut self, why: &str) {
        let delay = self.env.limits.drain_delay;
        if self.draining.is_some() {
            info!("{why} again: ending the drain early");
            self.begin_shutdown(why);
            return;
        }
        if delay.is_zero() || self.shutdown_deadline.is_some() {
            self.begin_shutdown(why);
            return;
        }
        info!(
            "{why}: draining for {delay:?} before shutting down: health checks fail, \
             clients are still served; send it again to shut down now"
        );
        // The service manager hears of the stop when it starts, not a drain delay later.
        self.tell(|manager| manager.stopping("draining: health checks fail, clients are served"));
        let deadline = self.env.now.after(delay);
        self.draining = Some(deadline);
        self.env.timers.push(deadline, TimerKey::DrainOver.pack());
        // Checks already connected and not yet answered fail too.
        let checks: Vec<(ConnKey, bool)> = self
            .conns
            .iter()
            .filter(|(_, slot)| slot.health_check && !slot.closing)
            .filter(|(_, slot)| matches!(slot.conn.state(), State::AwaitingHello | State::Echoing))
            .map(|(index, slot)| {
                let key = ConnKey {
                    slot: index as u32,
                    generation: slot.generation,
                };
                (key, slot.conn.state() == State::AwaitingHello)
            })
            .collect();
        for (key, framed) in checks {
            if self.fail_health_check(key.slot as usize, framed) {
                self.drive_slot(key);
            }
        }
    }

    /// Stops accepting (after taking in what the backlog already holds), stops running
    /// commands, answers what every client sent before it, tells every framed client
    /// SHUTTING_DOWN, and gives pending output the grace period to drain. A second request
    /// closes everything at once.
    fn begin_shutdown(&mut self, why: &str) {
        self.draining = None;
        if self.shutdown_deadline.is_some() {
            info!("{why} again: closing {} connections now", self.conns.len());
            self.grace_over = true;
            self.close_all();
            return;
        }
        // Connections the kernel completed and queued are clients who were told "connected":
        // closing the listener would reset them. They are served like the others.
        for source in [Source::FramedListener, Source::EchoListener] {
            self.accept_backlog(source);
        }
        let grace = self.env.limits.shutdown_grace;
        let commands = self.env.children.len();
        let draining = format!("{why}: draining {} connections", self.conns.len());
        self.tell(|manager| manager.stopping(&draining));
        info!(
            "{why}: shutting down; waiting up to {grace:?} for {} clients{}; send it again to stop at once",
            self.conns.len(),
            if commands > 0 {
                format!(" and {commands} commands")
            } else {
                String::new()
            }
        );
        let registry = self.env.poll.registry();
        for listener in [self.framed_listener.take(), self.echo_listener.take()]
            .into_iter()
            .flatten()
        {
            let mut listener = listener;
            let _ = registry.deregister(&mut listener);
        }
        // The metrics port goes with the listeners: a scrape during the grace period would
        // show a server that is leaving (its sockets close with it: no deregistration needed).
        self.metrics_port = None;
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
        let deadline = self.env.now.after(grace);
        self.shutdown_deadline = Some(deadline);
        self.env
            .timers
            .push(deadline, TimerKey::ShutdownGrace.pack());
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
            let index = key.slot as usize;
            let peer = self.peer(index);
            // A TLS handshake still running: its end must not pass for "the client sent
            // nothing" (the HELLO may follow the client's Finished in the same flight).
            let handshaking = self
                .tls
                .get(index)
                .and_then(Option::as_deref)
                .is_some_and(|session| !session.is_established());
            if let Some(slot) = self.conns.get_mut(index) {
                slot.conn.set_transport_pending(handshaking);
                if slot.health_check {
                    // A check whose HELLO is still to come must not get HELLO_OK now.
                    slot.conn.fail_health_check();
                }
                self.env
                    .with_context(key, peer, |cx| slot.conn.begin_shutdown(grace, cx));
                self.drive_slot(key);
            }
        }
    }

    /// Tells the [`Lifecycle`], if there is one.
    fn tell(&self, news: impl FnOnce(&dyn Lifecycle)) {
        if let Some(manager) = &self.lifecycle {
            news(manager.as_ref());
        }
    }

    fn close_all(&mut self) {
        let indices: Vec<usize> = self.conns.iter().map(|(index, _)| index).collect();
        for index in indices {
            self.mark_closing(index);
        }
    }

    /// After a shutdown started: the stats once every connection is closed and every child
    /// reaped (or, after the grace period, killed and reaped as far as possible).
    fn shutdown_complete(&mut self) -> Option<ReactorStats> {
        self.shutdown_deadline?;
        if !self.conns.is_empty() {
            return None;
        }
        // Jobs the connections handed over (a deleted file's unlink) finish before the exit,
        // within the grace period; one left after it is the sweep's to clean up.
        if !self.env.disk.is_idle() && !self.grace_over {
            return None;
        }
        if !self.env.children.is_empty() {
            if !self.grace_over {
                return None; // released commands are being stopped; their exits come in
            }
            self.env.children.kill_and_reap_all(FINAL_REAP);
        }
        let stats = self.stats;
        let children = self.env.children.stats();
        info!(
            "shutdown complete: {} connections accepted, {} refused, {} closed; {} commands started, {} reaped",
            stats.accepted, stats.refused, stats.closed, children.spawned, children.reaped
        );
        Some(ReactorStats {
            commands: children.spawned,
            ..stats
        })
    }
}

#[cfg(test)]
mod tests;
