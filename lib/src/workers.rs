//! `serve --workers N`: more cores without threads.
//!
//! The parent (the *supervisor*) binds every listening socket N times with `SO_REUSEPORT`
//! ([`bind_shared`](crate::server::bind_shared)), one set per worker *slot*, and starts N
//! workers. Each worker is the ordinary single-threaded server, running on its slot's sockets
//! instead of binding its own; the kernel spreads new connections (and datagrams) over the
//! sets.
//!
//! **Re-exec, not a bare fork.** A worker is started with `std::process::Command`: fork, then
//! in the child only async-signal-safe calls (`fcntl` to let the slot's descriptors survive
//! exec, `prctl(PR_SET_PDEATHSIG)`, `getppid`, `setpgid`), then `execve("/proc/self/exe", the
//! same arguments + --worker-of FDS)`. The worker thus starts from a fresh image: no poll,
//! signal handler, logger state, heap or lock inherited from the parent, which makes a
//! *restart* — necessarily done after the supervisor's own poll and signal handlers exist —
//! as safe as the first start. The initial workers are started before the supervisor creates
//! its poll or installs its handlers.
//!
//! **The supervisor is one thread on one poll** (no threads, `Threads: 1`): SIGINT/SIGTERM
//! through `signal-hook-mio`'s self-pipe, each worker's exit through its pidfd (read with
//! `waitid(P_PIDFD)`, as `sys::process` does for commands), and each
//! worker's *ready pipe*, on which the worker writes one byte once it is serving.
//!
//! **Sockets outlive workers.** The supervisor keeps each slot's sockets open for as long as
//! the slot lives. A worker's death therefore closes nothing: connections the kernel queued on
//! its listener wait there (closing the last descriptor of a `SO_REUSEPORT` listener would
//! reset them), and the replacement accepts them from the same socket.
//!
//! **Restarts.** A worker that dies after it was ready is restarted at once the first time, then
//! with a backoff (`crate::sys::restart`, the policy the disk helper's restarts follow too); a
//! worker that lived `STABLE_AFTER` resets the backoff. A worker that dies before it was ready *failed at
//! start* and is not restarted (a broken setup would otherwise restart in a loop): its slot is
//! retired and its sockets closed, so the kernel sends new connections to the other workers;
//! when every slot is retired the supervisor exits with an error.
//!
//! **Shutdown.** SIGINT or SIGTERM is forwarded to every worker (each drains as a lone server
//! does), the supervisor closes its copies of the sockets (new connects are then refused once
//! the workers have closed theirs) and exits when the last worker has exited. A second signal
//! is forwarded too, so the workers stop at once. Workers run in their own process group, so a
//! terminal's Ctrl-C reaches them once, through the supervisor; and `PR_SET_PDEATHSIG` gives
//! each worker SIGTERM if the supervisor dies.
//!
//! **Reload.** SIGHUP is validated here first ([`Reload::read`], the same reading a worker
//! does) and passed on only if everything is good, so a bad file is logged once and leaves
//! every worker as it was; the settings that need a restart are named here, once. SIGUSR1 is
//! passed on (each worker logs its counters); SIGUSR2 is logged and ignored.
//!
//! Limits (connections, commands, transfers) are per worker: N workers accept up to N times
//! `--max-conns`.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use log::{error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustix::process::{Pid, PidfdFlags, Signal, WaitIdOptions};
use signal_hook_mio::v1_0::Signals;

use crate::reload::Reload;
use crate::server::Listeners;
pub use crate::server::MAX_WORKERS;
use crate::sys::notify::Lifecycle;
use crate::sys::restart::{STABLE_AFTER, backoff, describe};

/// The hidden `serve` flag that makes a process a worker: `--worker-of READY,FRAMED,TCP,UDP`.
pub const WORKER_FLAG: &str = "--worker-of";

/// The program a worker runs: this very binary, even if the file was replaced since.
const SELF_EXE: &str = "/proc/self/exe";

/// The descriptors a worker inherits, as named on its command line: the write end of its
/// ready pipe, then the framed listener, the raw echo listener and the UDP socket (`-` for a
/// disabled one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerFds {
    /// Write end of the ready pipe.
    pub ready: RawFd,
    /// The framed-protocol listener.
    pub framed: RawFd,
    /// The raw echo listener, if enabled.
    pub echo_tcp: Option<RawFd>,
    /// The UDP echo socket, if enabled.
    pub echo_udp: Option<RawFd>,
}

impl WorkerFds {
    /// Parses `READY,FRAMED,TCP,UDP` (`-` for a disabled echo socket).
    pub fn parse(spec: &str) -> Result<WorkerFds, String> {
        let fields: Vec<&str> = spec.split(',').collect();
        let number = |text: &str| {
            text.parse::<RawFd>()
                .ok()
                .filter(|fd| *fd > 2)
                .ok_or_else(|| format!("{WORKER_FLAG} {spec}: `{text}` is not a descriptor"))
        };
        let optional = |text: &str| {
            if text == "-" {
                Ok(None)
            } else {
                number(text).map(Some)
            }
        };
        let [ready, framed, echo_tcp, echo_udp] = fields[..] else {
            return Err(format!(
                "{WORKER_FLAG} {spec}: expected READY,FRAMED,TCP,UDP"
            ));
        };
        Ok(WorkerFds {
            ready: number(ready)?,
            framed: number(framed)?,
            echo_tcp: optional(echo_tcp)?,
            echo_udp: optional(echo_udp)?,
        })
    }

    /// Takes ownership of the inherited descriptors, after checking that each is an open
    /// socket of the expected type (the ready pipe: an open descriptor), and makes them
    /// close-on-exec again so the commands this worker runs do not inherit them.
    ///
    /// Call it once, at start, with the descriptors from this process's own command line:
    /// nothing else in the process owns them.
    pub fn take(self) -> io::Result<(Listeners, ReadyNotice)> {
        let stream = |fd: RawFd| inherited(fd, Some(libc::SOCK_STREAM));
        let ready = inherited(self.ready, None)?;
        let framed = stream(self.framed)?;
        let echo_tcp = self.echo_tcp.map(stream).transpose()?;
        let echo_udp = self
            .echo_udp
            .map(|fd| inherited(fd, Some(libc::SOCK_DGRAM)))
            .transpose()?;
        Ok((
            Listeners {
                framed: framed.into(),
                echo_tcp: echo_tcp.map(Into::into),
                echo_udp: echo_udp.map(Into::into),
                // Each worker binds its own metrics port (`serve --workers`), never shared.
                metrics: None,
            },
            ReadyNotice(File::from(ready)),
        ))
    }
}

impl fmt::Display for WorkerFds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let optional = |fd: Option<RawFd>| fd.map_or_else(|| "-".to_string(), |fd| fd.to_string());
        write!(
            f,
            "{},{},{},{}",
            self.ready,
            self.framed,
            optional(self.echo_tcp),
            optional(self.echo_udp)
        )
    }
}

/// Checks that `fd` is open (and a socket of `kind`, if given), owns it and sets
/// close-on-exec.
fn inherited(fd: RawFd, kind: Option<libc::c_int>) -> io::Result<OwnedFd> {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(io::Error::other(format!(
            "descriptor {fd} was not inherited: {}",
            io::Error::last_os_error()
        )));
    }
    if let Some(kind) = kind {
        let mut found: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `found`, which outlives the call.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&raw mut found).cast(),
                &mut len,
            )
        };
        if rc != 0 || found != kind {
            return Err(io::Error::other(format!(
                "descriptor {fd} is not the socket expected"
            )));
        }
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this process on its
    // command line by the supervisor; no other object in this process owns it, and `take`
    // consumes the only description of it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: F_SETFD only changes the descriptor's flags.
    if unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

/// The write end of a worker's ready pipe.
#[derive(Debug)]
pub struct ReadyNotice(File);

impl ReadyNotice {
    /// Tells the supervisor this worker serves: one byte, then the pipe is closed. A worker
    /// that exits before this is taken to have failed at start and is not restarted.
    pub fn announce(self) {
        let mut pipe = self.0;
        if let Err(error) = pipe.write_all(b"r") {
            warn!("cannot tell the supervisor this worker is ready: {error}");
        }
    }
}

/// One worker process, started and not yet reaped.
struct Worker {
    pid: Pid,
    pidfd: OwnedFd,
    /// The read end of the ready pipe, until the byte (or EOF) arrives.
    ready: Option<File>,
    started: Instant,
}

enum State {
    /// Started, has not said it is ready.
    Starting(Worker),
    /// Ready and serving.
    Running(Worker),
    /// Died; restarts at the instant.
    Waiting(Instant),
    /// No worker and none to come (shut down, or retired after a failure at start).
    Gone,
}

struct Slot {
    /// The slot's sockets; `None` once the slot is retired or shutting down.
    listeners: Option<Listeners>,
    state: State,
    /// Consecutive deaths of workers that did not live [`STABLE_AFTER`].
    crashes: u32,
    /// A SIGHUP came while the worker was starting: it may have read the files before they
    /// changed, so it gets the signal once it is ready (and has its handler).
    reload_missed: bool,
}

impl Slot {
    fn worker(&self) -> Option<&Worker> {
        match &self.state {
            State::Starting(worker) | State::Running(worker) => Some(worker),
            State::Waiting(_) | State::Gone => None,
        }
    }
}

/// Sends `signal` to a ready worker; whether it went.
fn send_signal(worker: &Worker, signal: Signal) -> bool {
    match rustix::process::pidfd_send_signal(&worker.pidfd, signal) {
        Ok(()) => true,
        Err(error) => {
            warn!(
                "cannot signal worker {}: {}",
                worker.pid.as_raw_nonzero(),
                io::Error::from(error)
            );
            false
        }
    }
}

const SIGNALS: Token = Token(usize::MAX);

fn exit_token(slot: usize) -> Token {
    Token(2 * slot)
}

fn ready_token(slot: usize) -> Token {
    Token(2 * slot + 1)
}

/// Runs the supervisor: starts one worker per set of `listeners`, restarts them, forwards
/// SIGINT/SIGTERM and returns once every worker has exited after a signal. `args` are this
/// process's arguments (without the program name); each worker runs them plus
/// [`WORKER_FLAG`].
///
/// Call it before this process creates any poll, thread or signal handler: the first workers
/// are started before the supervisor's own poll and handlers exist.
///
/// Errors: the poll or the signal handlers could not be set up, or every worker failed at
/// start.
pub fn supervise(listeners: Vec<Listeners>, args: Vec<OsString>, reload: Reload) -> io::Result<()> {
    supervise_with(listeners, args, reload, true, None)
}

/// [`supervise`], telling `lifecycle` (a service manager) when every worker is ready, when a
/// SIGHUP is forwarded and when the shutdown starts. The workers are started without
/// `NOTIFY_SOCKET`: the supervisor speaks for them.
pub fn supervise_notifying(
    listeners: Vec<Listeners>,
    args: Vec<OsString>,
    reload: Reload,
    lifecycle: Option<Arc<dyn Lifecycle>>,
) -> io::Result<()> {
    supervise_with(listeners, args, reload, true, lifecycle)
}

/// [`supervise`], optionally without SIGINT/SIGTERM handlers (for tests, which must not
/// change the test process's signal dispositions).
fn supervise_with(
    listeners: Vec<Listeners>,
    args: Vec<OsString>,
    reload: Reload,
    handle_signals: bool,
    lifecycle: Option<Arc<dyn Lifecycle>>,
) -> io::Result<()> {
    let mut supervisor = Supervisor {
        slots: Vec::with_capacity(listeners.len()),
        args,
        reload,
        shutting_down: false,
        lifecycle,
        announced: false,
    };
    for listeners in listeners {
        let state = match spawn(&supervisor.args, &listeners) {
            Ok(worker) => {
                info!("worker {} started", worker.pid.as_raw_nonzero());
                State::Starting(worker)
            }
            Err(error) => {
                error!("cannot start a worker: {error}");
                State::Gone
            }
        };
        supervisor.slots.push(Slot {
            listeners: Some(listeners),
            state,
            crashes: 0,
            reload_missed: false,
        });
    }
    supervisor.run(handle_signals)
}

struct Supervisor {
    slots: Vec<Slot>,
    args: Vec<OsString>,
    /// What SIGHUP re-reads, validated here once before the workers are told.
    reload: Reload,
    shutting_down: bool,
    /// Told when every worker is ready, of reloads and of the shutdown.
    lifecycle: Option<Arc<dyn Lifecycle>>,
    /// Ready was told (once: a restarted worker is not news to the manager).
    announced: bool,
}

impl Supervisor {
    fn run(&mut self, handle_signals: bool) -> io::Result<()> {
        let mut poll = Poll::new()?;
        let mut signals = if handle_signals {
            let mut signals = Signals::new([
                libc::SIGINT,
                libc::SIGTERM,
                libc::SIGHUP,
                libc::SIGUSR1,
                libc::SIGUSR2,
            ])?;
            poll.registry()
                .register(&mut signals, SIGNALS, Interest::READABLE)?;
            Some(signals)
        } else {
            None
        };
        for index in 0..self.slots.len() {
            self.register(&poll, index)?;
        }
        let mut events = Events::with_capacity(64);
        loop {
            self.retire_failed_slots();
            let live = self
                .slots
                .iter()
                .filter(|slot| slot.worker().is_some())
                .count();
            if self.shutting_down && live == 0 {
                info!("every worker has exited");
                return Ok(());
            }
            if !self.shutting_down
                && self
                    .slots
                    .iter()
                    .all(|slot| matches!(slot.state, State::Gone))
            {
                return Err(io::Error::other("every worker failed at start"));
            }
            let now = Instant::now();
            let timeout = self
                .slots
                .iter()
                .filter_map(|slot| match slot.state {
                    State::Waiting(at) => Some(at.saturating_duration_since(now)),
                    _ => None,
                })
                .min();
            match poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
            for event in &events {
                match event.token() {
                    SIGNALS => {
                        let Some(signals) = signals.as_mut() else {
                            continue;
                        };
                        let received: Vec<i32> = signals.pending().collect();
                        for signal in received {
                            self.on_signal(signal);
                        }
                    }
                    Token(token) => {
                        let index = token / 2;
                        if index >= self.slots.len() {
                            continue;
                        }
                        if token % 2 == 0 {
                            self.on_exit(&poll, index);
                        } else {
                            self.on_ready(&poll, index);
                        }
                    }
                }
            }
            self.restart_due(&poll);
        }
    }

    /// Registers slot `index`'s worker (pidfd and ready pipe), if it has one.
    fn register(&self, poll: &Poll, index: usize) -> io::Result<()> {
        let Some(worker) = self.slots[index].worker() else {
            return Ok(());
        };
        let registry = poll.registry();
        registry.register(
            &mut SourceFd(&worker.pidfd.as_raw_fd()),
            exit_token(index),
            Interest::READABLE,
        )?;
        if let Some(ready) = &worker.ready {
            registry.register(
                &mut SourceFd(&ready.as_raw_fd()),
                ready_token(index),
                Interest::READABLE,
            )?;
        }
        Ok(())
    }

    /// A slot whose worker could not even be spawned has no sockets to keep.
    fn retire_failed_slots(&mut self) {
        for slot in &mut self.slots {
            if matches!(slot.state, State::Gone) {
                slot.listeners = None;
            }
        }
    }

    /// SIGHUP: the configuration is read and validated here once; only if it is good is the
    /// signal passed on, and each worker re-reads it and swaps it in itself (and logs that it
    /// did). A bad file is logged once, here, and the workers are left alone, so they all keep
    /// the same configuration. The settings that need a restart are named here too (the
    /// workers leave that to the supervisor), and the supervisor takes the new log levels for
    /// its own lines. A worker still starting has no handler yet (SIGHUP's default action
    /// would kill it) and may have read the files before they changed: it gets the signal
    /// once it says it is ready.
    fn forward_reload(&mut self) {
        if !self.reload.is_empty() {
            match self.reload.read() {
                Ok(fresh) => {
                    if !fresh.needs_restart.is_empty() {
                        warn!(
                            "SIGHUP: {} changed and needs a restart; the workers keep the old value",
                            fresh.needs_restart.join(", ")
                        );
                    }
                    if let Some(install) = fresh.log_filter {
                        install();
                    }
                }
                Err(error) => {
                    error!(
                        "SIGHUP: {error}; not passed on: the workers keep the configuration in use"
                    );
                    return;
                }
            }
        }
        let forwarded = self.signal_workers(Signal::HUP, true);
        info!("SIGHUP: configuration valid, forwarded to {forwarded} worker(s), each reloads");
    }

    /// Sends `signal` to every running worker (with `or_when_ready`, a starting one gets it
    /// once ready); how many it went to.
    fn signal_workers(&mut self, signal: Signal, or_when_ready: bool) -> usize {
        let mut sent = 0;
        for slot in &mut self.slots {
            match &slot.state {
                State::Running(worker) => sent += usize::from(send_signal(worker, signal)),
                State::Starting(_) if or_when_ready => slot.reload_missed = true,
                State::Starting(_) | State::Waiting(_) | State::Gone => {}
            }
        }
        sent
    }

    fn on_signal(&mut self, signal: i32) {
        match signal {
            libc::SIGHUP => {
                // The workers reload on their own; the supervisor's part is over once forwarded.
                // Once the manager has heard STOPPING=1, nothing says the server serves again.
                let manager = self.lifecycle.as_ref().filter(|_| !self.shutting_down);
                if let Some(manager) = manager {
                    manager.reloading();
                }
                self.forward_reload();
                if let Some(manager) = self.lifecycle.as_ref().filter(|_| !self.shutting_down) {
                    manager.ready("serving (reload forwarded to the workers)");
                }
                return;
            }
            libc::SIGUSR1 => {
                // Each worker logs its own counters: the supervisor holds no connection.
                let sent = self.signal_workers(Signal::USR1, false);
                info!("SIGUSR1: forwarded to {sent} worker(s), each logs its counters");
                return;
            }
            libc::SIGUSR2 => {
                info!("SIGUSR2: ignored (nothing is bound to it)");
                return;
            }
            _ => {}
        }
        if let (false, Some(manager)) = (self.shutting_down, &self.lifecycle) {
            manager.stopping("draining the workers");
        }
        let (name, forward) = if signal == libc::SIGINT {
            ("SIGINT", Signal::INT)
        } else {
            ("SIGTERM", Signal::TERM)
        };
        if self.shutting_down {
            info!("{name} again: forwarded, the workers stop at once");
        } else {
            let live = self
                .slots
                .iter()
                .filter(|slot| slot.worker().is_some())
                .count();
            info!("{name}: forwarded to {live} worker(s); exiting once they have drained");
            self.shutting_down = true;
        }
        for slot in &mut self.slots {
            // Closing the supervisor's copies: once each worker closes its own, the sockets
            // are gone and new connects are refused, as with a lone server.
            slot.listeners = None;
            match &slot.state {
                State::Starting(worker) | State::Running(worker) => {
                    if let Err(error) = rustix::process::pidfd_send_signal(&worker.pidfd, forward) {
                        warn!(
                            "cannot signal worker {}: {}",
                            worker.pid.as_raw_nonzero(),
                            io::Error::from(error)
                        );
                    }
                }
                State::Waiting(_) => slot.state = State::Gone,
                State::Gone => {}
            }
        }
    }

    /// The ready pipe of slot `index` is readable: the byte (ready) or EOF.
    fn on_ready(&mut self, poll: &Poll, index: usize) {
        let slot = &mut self.slots[index];
        let State::Starting(worker) = &mut slot.state else {
            return;
        };
        let Some(pipe) = worker.ready.as_mut() else {
            return;
        };
        let mut byte = [0; 1];
        let ready = loop {
            match pipe.read(&mut byte) {
                Ok(0) => break false,
                Ok(_) => break true,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break false,
            }
        };
        let _ = poll.registry().deregister(&mut SourceFd(&pipe.as_raw_fd()));
        worker.ready = None;
        if !ready {
            // EOF without the byte: the worker is exiting; its pidfd will say so.
            return;
        }
        let State::Starting(worker) = std::mem::replace(&mut slot.state, State::Gone) else {
            unreachable!("matched above");
        };
        info!("worker {} ready", worker.pid.as_raw_nonzero());
        if std::mem::take(&mut slot.reload_missed) {
            send_signal(&worker, Signal::HUP);
        }
        slot.state = State::Running(worker);
        self.announce_if_all_ready();
    }

    /// Tells the [`Lifecycle`] once every worker that was started is ready (a slot retired
    /// after a failure at start is not waited for).
    fn announce_if_all_ready(&mut self) {
        if self.announced || self.shutting_down {
            return;
        }
        let running = self
            .slots
            .iter()
            .filter(|slot| matches!(slot.state, State::Running(_)))
            .count();
        let all = self
            .slots
            .iter()
            .all(|slot| matches!(slot.state, State::Running(_) | State::Gone));
        if running > 0 && all {
            self.announced = true;
            if let Some(manager) = &self.lifecycle {
                manager.ready(&format!("serving with {running} workers"));
            }
        }
    }

    /// The pidfd of slot `index` is readable: reap the worker, then restart it, retire the
    /// slot, or (shutting down) let it go.
    fn on_exit(&mut self, poll: &Poll, index: usize) {
        // The ready byte and the exit may be reported in the same turn: read the byte first.
        self.on_ready(poll, index);
        let slot = &mut self.slots[index];
        let Some(worker) = slot.worker() else {
            return;
        };
        let status = match rustix::process::waitid(
            rustix::process::WaitId::PidFd(worker.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(status)) => describe(&status),
            // Spurious: the worker still runs.
            Ok(None) => return,
            Err(error) => format!("status unknown ({})", io::Error::from(error)),
        };
        let was_ready = matches!(slot.state, State::Running(_));
        let (State::Starting(worker) | State::Running(worker)) =
            std::mem::replace(&mut slot.state, State::Gone)
        else {
            unreachable!("a worker was found above");
        };
        let registry = poll.registry();
        let _ = registry.deregister(&mut SourceFd(&worker.pidfd.as_raw_fd()));
        if let Some(pipe) = &worker.ready {
            let _ = registry.deregister(&mut SourceFd(&pipe.as_raw_fd()));
        }
        let pid = worker.pid.as_raw_nonzero();
        if self.shutting_down {
            info!("worker {pid} {status}");
            return;
        }
        if !was_ready {
            error!(
                "worker {pid} failed at start ({status}); not restarting it: its sockets are closed and the other workers take the connections"
            );
            slot.listeners = None;
            return;
        }
        if worker.started.elapsed() >= STABLE_AFTER {
            slot.crashes = 0;
        }
        let delay = backoff(slot.crashes);
        slot.crashes = slot.crashes.saturating_add(1);
        warn!("worker {pid} {status}; restarting it in {delay:?} on the same sockets");
        slot.state = State::Waiting(Instant::now() + delay);
    }

    /// Starts the workers whose restart time has come.
    fn restart_due(&mut self, poll: &Poll) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            let (State::Waiting(at), Some(listeners)) = (&slot.state, &slot.listeners) else {
                continue;
            };
            if *at > now {
                continue;
            }
            slot.state = match spawn(&self.args, listeners) {
                Ok(worker) => {
                    info!("worker {} started", worker.pid.as_raw_nonzero());
                    State::Starting(worker)
                }
                Err(error) => {
                    error!("cannot start a worker: {error}; its sockets are closed");
                    slot.listeners = None;
                    State::Gone
                }
            };
            if let Err(error) = self.register(poll, index) {
                error!("cannot watch a worker: {error}");
            }
        }
    }
}

/// Starts one worker on `listeners`: fork, keep the slot's descriptors across exec, exec.
fn spawn(args: &[OsString], listeners: &Listeners) -> io::Result<Worker> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are new descriptors that nothing else owns.
    let (ready_read, ready_write) =
        unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let spec = WorkerFds {
        ready: ready_write.as_raw_fd(),
        framed: listeners.framed.as_raw_fd(),
        echo_tcp: listeners.echo_tcp.as_ref().map(AsRawFd::as_raw_fd),
        echo_udp: listeners.echo_udp.as_ref().map(AsRawFd::as_raw_fd),
    };
    let keep = [
        Some(spec.ready),
        Some(spec.framed),
        spec.echo_tcp,
        spec.echo_udp,
    ];
    let parent = std::process::id();
    let mut command = Command::new(SELF_EXE);
    // `ps` shows the name the supervisor was started as, not /proc/self/exe.
    if let Some(name) = std::env::args_os().next() {
        command.arg0(name);
    }
    command
        .args(args)
        .arg(WORKER_FLAG)
        .arg(spec.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // The supervisor speaks to the service manager for all of them.
        .env_remove("NOTIFY_SOCKET")
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (fcntl, prctl, getppid); it allocates nothing (`keep` is
    // a copied array, and an `io::Error` from an errno holds no allocation).
    unsafe {
        command.pre_exec(move || {
            for fd in keep.into_iter().flatten() {
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The supervisor died before PR_SET_PDEATHSIG took effect: do not start orphaned.
            if u32::try_from(libc::getppid()) != Ok(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let child = command.spawn()?;
    drop(ready_write);
    let raw = i32::try_from(child.id()).map_err(io::Error::other)?;
    let pid = Pid::from_raw(raw).ok_or_else(|| io::Error::other("pid 0"))?;
    // The child is not reaped until its pidfd says so, so the pid cannot be reused meanwhile.
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(|error| {
        let _ = rustix::process::kill_process(pid, Signal::KILL);
        io::Error::other(format!(
            "pidfd_open: {} (needs Linux 5.3 or later)",
            io::Error::from(error)
        ))
    })?;
    // `std::process::Child` neither kills nor waits when dropped: the pidfd takes over.
    drop(child);
    Ok(Worker {
        pid,
        pidfd,
        ready: Some(ready_read),
        started: Instant::now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_fds_round_trip() {
        let fds = WorkerFds {
            ready: 7,
            framed: 3,
            echo_tcp: None,
            echo_udp: Some(5),
        };
        assert_eq!(fds.to_string(), "7,3,-,5");
        assert_eq!(WorkerFds::parse("7,3,-,5"), Ok(fds));
        assert!(WorkerFds::parse("7,3,-").is_err());
        assert!(
            WorkerFds::parse("7,1,-,-").is_err(),
            "stdio is never a socket"
        );
        assert!(WorkerFds::parse("7,x,-,-").is_err());
    }

    /// The workers here are this test binary (`/proc/self/exe`) run with `--list` plus
    /// `--worker-of ...`: libtest refuses the flag and exits before any "ready" byte, as a
    /// worker that cannot start would. The supervisor must give up on both slots, not restart
    /// them in a loop.
    #[test]
    fn workers_that_fail_at_start_are_not_restarted() {
        let config = crate::server::Config {
            framed: "127.0.0.1:0".parse().unwrap(),
            echo_tcp: None,
            echo_udp: None,
            files: false,
            handle_signals: false,
            ..crate::server::Config::default()
        };
        let (sets, _) = crate::server::bind_shared(config, 2).unwrap();
        let started = Instant::now();
        let error = supervise_with(sets, vec!["--list".into()], Reload::default(), false, None)
            .unwrap_err();
        assert!(
            error.to_string().contains("every worker failed at start"),
            "{error}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "gave up without a restart loop"
        );
    }
}
