//! Child processes: spawn, pipes, pidfds, process-group signals and reaping. The one place in
//! the server that owns a child's descriptors.
//!
//! - **Spawn** goes through `std::process::Command` (posix_spawn underneath): argv exactly as
//!   the client sent it, the program looked up in a fixed `PATH` here (so a missing program is
//!   a clear `NOT_FOUND`, not an exec failure in the child), a clean environment
//!   ([`EXEC_ENV`]), the working directory opened beneath the root and entered through its
//!   descriptor, and its own process group (`process_group(0)`), so one signal reaches
//!   everything it started.
//! - **Pipes** are made non-blocking on the server's end only. `O_NONBLOCK` lives in the open
//!   file description, shared by every descriptor that refers to it; each end of a pipe is a
//!   description of its own, and the child holds only its ends, so setting the flag on ours
//!   leaves the child's blocking, as programs expect (setting it on the child's end would make
//!   a plain `write` in the child fail with `EAGAIN`). `mio`'s `From<ChildStdout>` does not set
//!   the flag; we do.
//! - **Exit** is seen through a pidfd registered in the poll (readable once the process has
//!   exited), as tokio's `pidfd_reaper` does. The status is read with `waitid(P_PIDFD,
//!   WNOWAIT)`, leaving the process a zombie until the connection is done with it: while it
//!   is unreaped its process group id cannot be reused, so the final `kill(-pgid)` for
//!   leftovers can never reach a stranger. On a kernel without pidfds (before 5.3) spawning
//!   fails with a clear error; the fallback would be a SIGCHLD self-pipe that, on each signal,
//!   try-waits *every* child (signals coalesce) — documented, not built.
//! - **Terminals** (`exec -t`, [`SpawnSpec::pty`]): the child's stdin, stdout and stderr are
//!   the slave of a new pseudo-terminal ([`crate::sys::pty`]), and it starts a session of its
//!   own with that terminal as its controlling terminal. The server holds the master twice
//!   over, as the "stdout" it reads and the "stdin" it writes, each non-blocking in the poll
//!   like a pipe; there is no stderr. Signals go to the session leader's group (its pid, as
//!   for a pipe command) *and* to the terminal's foreground job if that is another group,
//!   which is where an interactive shell puts what it runs: so the time limit, the output
//!   cap, a client's SIGNAL, the disconnect and the shutdown reach the job too. The server's
//!   own TERM and KILL (time limit, output cap, disconnect, shutdown, leftovers at the end)
//!   go to every process of the terminal's session as well, so a shell's `job &`, in a group
//!   of its own, does not outlive it.
//! - **Release**: a child the connection is done with (EXIT sent, or the connection gone) has
//!   its pipes closed, its group signalled, and is reaped — at once if it has exited, else
//!   after TERM, then KILL after the grace, when its pidfd fires. Nothing is left a zombie.

use std::ffi::OsStr;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::unix::pipe::{Receiver, Sender};
use mio::{Interest, Registry, Token};
use rustix::process::{Pid, PidfdFlags, WaitIdOptions, WaitIdStatus};
use slab::Slab;

use crate::proto::exec::{EndReason, Resize, Signal, Termination};
use crate::service::exec::{ChildId, ChildSource, OutputPipe, SpawnError, SpawnSpec, Spawned};
use crate::sys::pty;
use crate::sys::root::{Root, RootError};
use crate::timer::Tick;

/// The search path for programs named without a `/`, and the `PATH` every command gets.
pub(crate) const EXEC_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The environment every command gets, besides `HOME` (the root directory). Nothing comes from
/// the client or from the server's own environment (sshd's `PermitUserEnvironment no`).
pub const EXEC_ENV: [(&str, &str); 2] = [("PATH", EXEC_PATH), ("LANG", "C.UTF-8")];

/// Marks every descriptor from 3 up close-on-exec, so nothing the server inherited (a shell's
/// stray descriptor, a supervisor's socket) reaches the commands it runs; everything the
/// server opens itself is close-on-exec already. Call once, before the first spawn. In a
/// program that embeds the server this applies to the whole process: its own descriptors stop
/// passing to its own children too.
pub(crate) fn keep_descriptors_from_commands() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing and touches no memory; it
    // only sets a flag on descriptors of this process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Before Linux 5.11: one descriptor at a time, as /proc lists them.
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if fd > 2 {
            // SAFETY: F_SETFD on a descriptor number only sets its flag; a number that was the
            // directory listing's own and is gone by now fails with EBADF, which is fine.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

/// Gives SIGCHLD its default disposition. A server started with SIGCHLD ignored (a shell or
/// supervisor can leave it so, and it survives `exec`) would have its children reaped by the
/// kernel as they exit: no zombie to read the status from, and no zombie holding the process
/// group id either. Call once, before the first spawn.
pub(crate) fn restore_default_sigchld() -> io::Result<()> {
    // SAFETY: SIG_DFL installs no handler; only the disposition of SIGCHLD changes.
    if unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Who a child belongs to.
#[derive(Debug)]
enum Owner {
    /// A connection: its pipes are registered under that connection's tokens.
    Connection,
    /// Released before it exited: only its pidfd is registered, and it is killed at `kill_at`.
    Released {
        reason: EndReason,
        kill_at: Tick,
        killed: bool,
    },
}

/// One child process and every descriptor the server holds for it.
#[derive(Debug)]
struct ChildProcess {
    pid: Pid,
    pidfd: OwnedFd,
    stdin: Option<Sender>,
    stdout: Option<Receiver>,
    stderr: Option<Receiver>,
    /// The PTY master, for its size and its foreground job (`stdin` and `stdout` are
    /// duplicates of it, for writing and reading); `None` for a command on pipes.
    terminal: Option<OwnedFd>,
    /// Set once `waitid(WNOWAIT)` saw the exit.
    exited: Option<Termination>,
    /// The kernel reaped it already (SIGCHLD was ignored in this process, see
    /// [`restore_default_sigchld`]): its pid and group id may belong to others now, so nothing
    /// is sent to them.
    gone: bool,
    owner: Owner,
}

/// Counters for logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChildStats {
    /// Commands started.
    pub spawned: u64,
    /// Commands reaped.
    pub reaped: u64,
    /// Spawn attempts refused or failed.
    pub failed: u64,
}

/// Every child process of the server, whether a connection still owns it or it was released
/// and awaits reaping.
#[derive(Debug)]
pub(crate) struct ChildTable {
    children: Slab<ChildProcess>,
    max: usize,
    stats: ChildStats,
}

impl ChildTable {
    /// An empty table that holds at most `max` children (`Limits::max_exec`).
    pub(crate) fn new(max: usize) -> ChildTable {
        ChildTable {
            children: Slab::with_capacity(max),
            max,
            stats: ChildStats::default(),
        }
    }

    /// Children alive or unreaped.
    pub(crate) fn len(&self) -> usize {
        self.children.len()
    }

    /// Whether there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// Counters so far.
    pub(crate) fn stats(&self) -> ChildStats {
        self.stats
    }

    /// Starts `spec` under `root`, registering its descriptors with `registry` under the
    /// tokens `tokens` gives for each [`ChildSource`].
    pub(crate) fn spawn(
        &mut self,
        spec: &SpawnSpec<'_>,
        root: &Root,
        registry: &Registry,
        tokens: impl Fn(ChildSource) -> Token,
    ) -> Result<Spawned, SpawnError> {
        let result = self.try_spawn(spec, root, registry, tokens);
        match &result {
            Ok(spawned) => {
                self.stats.spawned += 1;
                debug!("spawned pid {} as child {}", spawned.pid, spawned.child.0);
            }
            Err(error) => {
                self.stats.failed += 1;
                debug!("spawn refused: {error}");
            }
        }
        result
    }

    fn try_spawn(
        &mut self,
        spec: &SpawnSpec<'_>,
        root: &Root,
        registry: &Registry,
        tokens: impl Fn(ChildSource) -> Token,
    ) -> Result<Spawned, SpawnError> {
        if self.children.len() >= self.max {
            return Err(SpawnError::LimitReached(format!(
                "{} commands are running on this server, its limit",
                self.max
            )));
        }
        // The root itself needs no lookup: its own descriptor is entered.
        let cwd = if spec.cwd.is_empty() {
            None
        } else {
            Some(root.open_dir(spec.cwd).map_err(|error| match error {
                RootError::NotFound => {
                    SpawnError::NotFound(format!("working directory {:?}: {error}", spec.cwd))
                }
                RootError::Syntax(_) | RootError::Escapes => SpawnError::PermissionDenied(format!(
                    "working directory {:?}: {error}",
                    spec.cwd
                )),
                RootError::Io(error) => spawn_io_error("working directory", &error),
            })?)
        };
        let cwd_fd = cwd
            .as_ref()
            .map_or(root.dir().as_raw_fd(), |fd| fd.as_raw_fd());
        let name = spec.argv[0];
        let program = resolve_program(name)?;
        let mut command = Command::new(&program);
        command
            .arg0(OsStr::from_bytes(name))
            .args(spec.argv[1..].iter().map(|arg| OsStr::from_bytes(arg)))
            .env_clear()
            .envs(EXEC_ENV)
            .env("HOME", root.path())
            // The directory is entered through the descriptor just opened beneath the root,
            // so nothing renamed in between can redirect it.
            .current_dir(format!("/proc/self/fd/{cwd_fd}"));
        let terminal = match &spec.pty {
            None => {
                command
                    .process_group(0)
                    .stdin(if spec.stdin {
                        Stdio::piped()
                    } else {
                        Stdio::null()
                    })
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                None
            }
            Some(request) => {
                let pair = pty::open(request.rows, request.cols)
                    .map_err(|error| spawn_io_error("pseudo-terminal", &error))?;
                let slave = |pair: &pty::PtyPair| {
                    pair.slave
                        .try_clone()
                        .map_err(|error| spawn_io_error("pseudo-terminal", &error))
                };
                command
                    .env("TERM", request.term)
                    .stdin(Stdio::from(slave(&pair)?))
                    .stdout(Stdio::from(slave(&pair)?))
                    .stderr(Stdio::from(pair.slave));
                // SAFETY: `become_session_leader` makes only async-signal-safe calls (setsid,
                // ioctl), as the code between fork and exec must. No `process_group`: setsid
                // makes the child a group leader, and fails if it already is one.
                unsafe {
                    command.pre_exec(pty::become_session_leader);
                }
                Some(pair.master)
            }
        };
        let mut child = command
            .spawn()
            .map_err(|error| spawn_io_error(&String::from_utf8_lossy(name), &error))?;
        // The child has its copies of the slave: ours go, so the master reads EOF (EIO) once
        // the child's are all closed.
        drop(command);
        drop(cwd);
        let raw_pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        let Some(pid) = Pid::from_raw(raw_pid) else {
            return Err(SpawnError::Failed("spawn returned pid 0".to_string()));
        };
        let pidfd = match rustix::process::pidfd_open(pid, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(errno) => {
                // Without a pidfd the loop would never hear of the exit: undo the spawn. The
                // child was just started and dies at once of SIGKILL, so the wait is short.
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                let _ = child.wait();
                let error = io::Error::from(errno);
                return Err(if errno == rustix::io::Errno::NOSYS {
                    SpawnError::Failed(format!("pidfd_open: {error} (needs Linux 5.3 or later)"))
                } else {
                    spawn_io_error("pidfd_open", &error)
                });
            }
        };
        let (stdin, stdout) = match &terminal {
            None => (
                child.stdin.take().map(Sender::from),
                child.stdout.take().map(Receiver::from),
            ),
            Some(master) => match (master.try_clone(), master.try_clone()) {
                (Ok(writer), Ok(reader)) => {
                    (Some(Sender::from(writer)), Some(Receiver::from(reader)))
                }
                (Err(error), _) | (_, Err(error)) => {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                    let _ = child.wait();
                    return Err(spawn_io_error("pseudo-terminal", &error));
                }
            },
        };
        let mut process = ChildProcess {
            pid,
            pidfd,
            stdin,
            stdout,
            stderr: child.stderr.take().map(Receiver::from),
            terminal,
            exited: None,
            gone: false,
            owner: Owner::Connection,
        };
        // `std::process::Child` neither kills nor waits when dropped; the pidfd takes over.
        drop(child);
        if let Err(error) = register(&mut process, registry, &tokens) {
            deregister_pipes(&mut process, registry);
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            reap_blocking(&process, Duration::from_secs(1));
            return Err(spawn_io_error("poll registration", &error));
        }
        let pid_number = raw_pid as u32;
        let child = ChildId(self.children.insert(process) as u32);
        Ok(Spawned {
            child,
            pid: pid_number,
        })
    }

    /// Reads from an output pipe; a closed pipe reads as EOF.
    pub(crate) fn read(
        &mut self,
        id: ChildId,
        pipe: OutputPipe,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let Some(process) = self.children.get_mut(id.0 as usize) else {
            return Ok(0);
        };
        let receiver = match pipe {
            OutputPipe::Stdout => process.stdout.as_mut(),
            OutputPipe::Stderr => process.stderr.as_mut(),
        };
        match receiver {
            Some(receiver) if process.terminal.is_some() => pty::read_master(receiver, buf),
            Some(receiver) => receiver.read(buf),
            None => Ok(0),
        }
    }

    /// Sets the size of the child's terminal; nothing for a child on pipes.
    pub(crate) fn resize(&mut self, id: ChildId, size: Resize) -> io::Result<()> {
        match self
            .children
            .get(id.0 as usize)
            .and_then(|process| process.terminal.as_ref())
        {
            Some(master) => pty::set_size(master, size.rows, size.cols),
            None => Ok(()),
        }
    }

    /// Writes to the stdin pipe; a closed pipe fails with `BrokenPipe`.
    pub(crate) fn write_stdin(&mut self, id: ChildId, bytes: &[u8]) -> io::Result<usize> {
        match self
            .children
            .get_mut(id.0 as usize)
            .and_then(|process| process.stdin.as_mut())
        {
            Some(sender) => sender.write(bytes),
            None => Err(ErrorKind::BrokenPipe.into()),
        }
    }

    /// Closes the stdin pipe.
    pub(crate) fn close_stdin(&mut self, id: ChildId, registry: &Registry) {
        if let Some(mut sender) = self
            .children
            .get_mut(id.0 as usize)
            .and_then(|process| process.stdin.take())
        {
            let _ = registry.deregister(&mut sender);
        }
    }

    /// Closes an output pipe.
    pub(crate) fn close_output(&mut self, id: ChildId, pipe: OutputPipe, registry: &Registry) {
        let Some(process) = self.children.get_mut(id.0 as usize) else {
            return;
        };
        let receiver = match pipe {
            OutputPipe::Stdout => process.stdout.take(),
            OutputPipe::Stderr => process.stderr.take(),
        };
        if let Some(mut receiver) = receiver {
            let _ = registry.deregister(&mut receiver);
        }
    }

    /// Sends `signal` to the child's process group. Safe even after the leader's exit: until
    /// it is reaped, its zombie keeps the group id from being reused. (Sessions stop asking once
    /// the exit is seen; the group's leftovers are killed at release.)
    pub(crate) fn signal(&mut self, id: ChildId, signal: Signal) -> io::Result<()> {
        match self.children.get(id.0 as usize) {
            Some(process) if !process.gone => signal_process(process, signal),
            _ => Ok(()),
        }
    }

    /// The child's termination once it has exited, without reaping it.
    pub(crate) fn exit_status(&mut self, id: ChildId) -> io::Result<Option<Termination>> {
        let Some(process) = self.children.get_mut(id.0 as usize) else {
            return Ok(None);
        };
        peek_exit(process)
    }

    /// The owner is done with the child. If it has exited, whatever is left of its group is
    /// killed and it is reaped now (`None`). Otherwise its group gets SIGTERM, its pidfd is
    /// re-registered under `released_token`, and the caller must call
    /// [`ChildTable::on_deadline`] at the returned time to send SIGKILL.
    pub(crate) fn release(
        &mut self,
        id: ChildId,
        reason: EndReason,
        registry: &Registry,
        released_token: Token,
        kill_at: Tick,
    ) -> Option<Tick> {
        let process = self.children.get_mut(id.0 as usize)?;
        deregister_pipes(process, registry);
        if process.exited.is_none() {
            let _ = peek_exit(process);
        }
        if process.exited.is_some() {
            self.finish(id);
            return None;
        }
        debug!(
            "child {} (pid {}) released while running ({reason}): SIGTERM to its group",
            id.0,
            process.pid.as_raw_nonzero()
        );
        let _ = signal_process(process, Signal::Term);
        let fd = process.pidfd.as_raw_fd();
        if let Err(error) =
            registry.reregister(&mut SourceFd(&fd), released_token, Interest::READABLE)
        {
            warn!("cannot watch released child {}: {error}", id.0);
        }
        process.owner = Owner::Released {
            reason,
            kill_at,
            killed: false,
        };
        Some(kill_at)
    }

    /// A released child's pidfd became readable: reap it if it has exited.
    pub(crate) fn on_released_event(&mut self, id: ChildId) {
        let Some(process) = self.children.get_mut(id.0 as usize) else {
            return;
        };
        if !matches!(process.owner, Owner::Released { .. }) {
            return;
        }
        if let Ok(Some(_)) = peek_exit(process) {
            self.finish(id);
        }
    }

    /// A released child's kill deadline: SIGKILL to its group if it is still running.
    pub(crate) fn on_deadline(&mut self, id: ChildId, now: Tick) {
        let Some(process) = self.children.get_mut(id.0 as usize) else {
            return;
        };
        if let Owner::Released {
            kill_at, killed, ..
        } = &mut process.owner
        {
            if !*killed && now >= *kill_at {
                *killed = true;
                debug!(
                    "child {} (pid {}) outlived its grace: SIGKILL to its group",
                    id.0,
                    process.pid.as_raw_nonzero()
                );
                let _ = signal_process(process, Signal::Kill);
            }
        }
    }

    /// The SIGKILL deadline of released child `id`, if it is still waiting for one (the timer
    /// sweep keeps only entries that match).
    pub(crate) fn released_deadline(&self, id: ChildId) -> Option<Tick> {
        match self.children.get(id.0 as usize)?.owner {
            Owner::Released {
                kill_at,
                killed: false,
                ..
            } => Some(kill_at),
            _ => None,
        }
    }

    /// Last resort at exit: SIGKILL every group and reap every child, waiting at most
    /// `within` in all. Returns how many could not be reaped in time.
    pub(crate) fn kill_and_reap_all(&mut self, within: Duration) -> usize {
        for (_, process) in self.children.iter().filter(|(_, process)| !process.gone) {
            let _ = signal_process(process, Signal::Kill);
        }
        let deadline = Instant::now() + within;
        let ids: Vec<usize> = self.children.iter().map(|(id, _)| id).collect();
        let mut left = 0;
        for id in ids {
            let process = &self.children[id];
            let remaining = deadline.saturating_duration_since(Instant::now());
            if reap_blocking(process, remaining) {
                self.children.remove(id);
                self.stats.reaped += 1;
            } else {
                left += 1;
            }
        }
        if left > 0 {
            warn!("{left} children could not be reaped before exit");
        }
        left
    }

    /// Kills what is left of an exited child's group, reaps it and forgets it.
    fn finish(&mut self, id: ChildId) {
        let process = self.children.remove(id.0 as usize);
        if process.gone {
            self.stats.reaped += 1;
            return;
        }
        // The zombie still holds the group id, so this cannot reach another group.
        match signal_process(&process, Signal::Kill) {
            Ok(()) => debug!(
                "SIGKILL to process group {} (leftovers of a finished command)",
                process.pid.as_raw_nonzero()
            ),
            Err(error) if error.raw_os_error() == Some(libc::ESRCH) => {}
            Err(error) => debug!("kill of a finished group: {error}"),
        }
        match rustix::process::waitid(
            rustix::process::WaitId::PidFd(process.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(_) => self.stats.reaped += 1,
            Err(errno) => warn!(
                "reaping pid {} failed: {}",
                process.pid.as_raw_nonzero(),
                io::Error::from(errno)
            ),
        }
        if let Owner::Released { reason, .. } = process.owner {
            info!(
                "command pid {} ended after its client was gone ({reason}): {}",
                process.pid.as_raw_nonzero(),
                process
                    .exited
                    .map_or_else(|| "status unknown".to_string(), describe)
            );
        }
    }
}

fn describe(termination: Termination) -> String {
    match termination {
        Termination::Exited(code) => format!("exit code {code}"),
        Termination::Signaled { signal, .. } => format!("signal {signal}"),
    }
}

fn register(
    process: &mut ChildProcess,
    registry: &Registry,
    tokens: &impl Fn(ChildSource) -> Token,
) -> io::Result<()> {
    for receiver in [process.stdout.as_mut(), process.stderr.as_mut()]
        .into_iter()
        .flatten()
    {
        receiver.set_nonblocking(true)?;
    }
    if let Some(sender) = process.stdin.as_mut() {
        sender.set_nonblocking(true)?;
        registry.register(sender, tokens(ChildSource::Stdin), Interest::WRITABLE)?;
    }
    if let Some(receiver) = process.stdout.as_mut() {
        registry.register(receiver, tokens(ChildSource::Stdout), Interest::READABLE)?;
    }
    if let Some(receiver) = process.stderr.as_mut() {
        registry.register(receiver, tokens(ChildSource::Stderr), Interest::READABLE)?;
    }
    let fd = process.pidfd.as_raw_fd();
    registry.register(
        &mut SourceFd(&fd),
        tokens(ChildSource::Exit),
        Interest::READABLE,
    )
}

fn deregister_pipes(process: &mut ChildProcess, registry: &Registry) {
    if let Some(mut sender) = process.stdin.take() {
        let _ = registry.deregister(&mut sender);
    }
    for receiver in [process.stdout.take(), process.stderr.take()]
        .into_iter()
        .flatten()
    {
        let mut receiver = receiver;
        let _ = registry.deregister(&mut receiver);
    }
}

fn peek_exit(process: &mut ChildProcess) -> io::Result<Option<Termination>> {
    if process.exited.is_some() {
        return Ok(process.exited);
    }
    let status = match rustix::process::waitid(
        rustix::process::WaitId::PidFd(process.pidfd.as_fd()),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
    ) {
        Ok(status) => status,
        Err(rustix::io::Errno::CHILD) => {
            // Reaped by the kernel: the process is gone and its status with it. Report 255,
            // as ssh does for a status it cannot know, rather than leave the stream open.
            warn!(
                "pid {} was reaped before the server could read its status (is SIGCHLD ignored?)",
                process.pid.as_raw_nonzero()
            );
            process.gone = true;
            process.exited = Some(Termination::Exited(255));
            return Ok(process.exited);
        }
        Err(errno) => return Err(errno.into()),
    };
    process.exited = status.as_ref().and_then(termination);
    Ok(process.exited)
}

fn termination(status: &WaitIdStatus) -> Option<Termination> {
    if let Some(code) = status.exit_status() {
        return Some(Termination::Exited(code as u8));
    }
    status
        .terminating_signal()
        .map(|signal| Termination::Signaled {
            signal: signal as u8,
            core_dumped: status.dumped(),
        })
}

/// Signals the child's process group, and with a terminal its foreground job too when that
/// is another group (an interactive shell's job). The foreground group is one of the child's
/// session (the kernel lets only those be a terminal's foreground), and it is read at the
/// moment of the signal, so nothing outside the session is reached. The leader's group
/// decides the result.
///
/// On a terminal, TERM and KILL — the server ending the command: time limit, output cap,
/// disconnect, shutdown, leftovers — reach the whole session as well: an interactive shell
/// puts each `job &` in a process group of its own, neither its group nor the foreground one,
/// and nothing else would stop it. HUP and INT (a client's SIGNAL) stay with the job.
fn signal_process(process: &ChildProcess, signal: Signal) -> io::Result<()> {
    if let Some(foreground) = process.terminal.as_ref().and_then(pty::foreground_group) {
        if foreground != process.pid {
            let _ = signal_group(foreground, signal);
        }
    }
    let result = signal_group(process.pid, signal);
    if process.terminal.is_some() && matches!(signal, Signal::Term | Signal::Kill) {
        signal_session(process.pid, signal);
    }
    result
}

/// Signals every process of the session `sid` — a PTY command's session, led by the command
/// itself (`setsid` in the child), so the session id is its pid. Only a child's own session is
/// ever named, and only while the child is unreaped: its process (or zombie) holds the pid, so
/// no other session can have that id. A process that called `setsid` itself has left the
/// session and is not reached (as with ssh).
///
/// Linux has no call for "the processes of a session": `/proc` is scanned. What a process
/// forks while the scan runs is caught by the next pass (a few, bounded); a job started later
/// than that is in a group the last pass signalled, since its parent's group was.
fn signal_session(sid: Pid, signal: Signal) {
    const PASSES: usize = 3;
    let sid = sid.as_raw_nonzero().get();
    let mut previous = usize::MAX;
    for _ in 0..PASSES {
        let members = session_members(sid);
        let mut sent = 0;
        for (pid, pgrp) in &members {
            if *pgrp != sid {
                // Its whole group, so what it forks meanwhile in that group is reached too.
                if let Some(group) = Pid::from_raw(*pgrp) {
                    let _ = signal_group(group, signal);
                }
            }
            if let Some(pid) = Pid::from_raw(*pid) {
                let _ = signal_pid(pid, signal);
            }
            sent += 1;
        }
        if sent == 0 || sent == previous {
            break;
        }
        previous = sent;
    }
}

/// The (pid, process group) of every process in session `sid`, from `/proc/PID/stat`.
fn session_members(sid: i32) -> Vec<(i32, i32)> {
    let mut members = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return members;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // Gone since the listing: skipped.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((pgrp, session)) = parse_stat_group_and_session(&stat) {
            if session == sid {
                members.push((pid, pgrp));
            }
        }
    }
    members
}

/// The process group and session of a `/proc/PID/stat` line: the 5th and 6th fields, after the
/// command name, which may hold spaces and parentheses (hence the last `)`).
fn parse_stat_group_and_session(stat: &str) -> Option<(i32, i32)> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(2); // state, ppid
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some((pgrp, session))
}

fn signal_pid(pid: Pid, signal: Signal) -> io::Result<()> {
    rustix::process::kill_process(pid, rustix_signal(signal)).map_err(io::Error::from)
}

fn signal_group(pid: Pid, signal: Signal) -> io::Result<()> {
    rustix::process::kill_process_group(pid, rustix_signal(signal)).map_err(io::Error::from)
}

fn rustix_signal(signal: Signal) -> rustix::process::Signal {
    match signal {
        Signal::Hup => rustix::process::Signal::HUP,
        Signal::Int => rustix::process::Signal::INT,
        Signal::Kill => rustix::process::Signal::KILL,
        Signal::Term => rustix::process::Signal::TERM,
    }
}

/// Waits for the child's exit and reaps it, polling its pidfd for at most `within`.
fn reap_blocking(process: &ChildProcess, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        match rustix::process::waitid(
            rustix::process::WaitId::PidFd(process.pidfd.as_fd()),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
        ) {
            Ok(Some(_)) => return true,
            Ok(None) => {}
            Err(_) => return true, // already reaped (ECHILD): nothing left to wait for
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Finds `name` the way a shell would with [`EXEC_PATH`]; a name with a `/` is used as it is
/// (relative to the command's working directory).
fn resolve_program(name: &[u8]) -> Result<PathBuf, SpawnError> {
    let printable = String::from_utf8_lossy(name);
    if name.contains(&b'/') {
        return Ok(PathBuf::from(OsStr::from_bytes(name)));
    }
    let mut found_not_executable = false;
    for dir in EXEC_PATH.split(':') {
        let candidate = PathBuf::from(dir).join(OsStr::from_bytes(name));
        let Ok(meta) = std::fs::metadata(&candidate) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if rustix::fs::access(&candidate, rustix::fs::Access::EXEC_OK).is_ok() {
            return Ok(candidate);
        }
        found_not_executable = true;
    }
    if found_not_executable {
        return Err(SpawnError::PermissionDenied(format!(
            "{printable}: found in PATH ({EXEC_PATH}) but not executable"
        )));
    }
    Err(SpawnError::NotFound(format!(
        "{printable}: command not found in PATH ({EXEC_PATH})"
    )))
}

fn spawn_io_error(what: &str, error: &io::Error) -> SpawnError {
    let text = format!("{what}: {error}");
    match error.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) => SpawnError::NotFound(text),
        Some(libc::EACCES | libc::EPERM | libc::ENOEXEC) => SpawnError::PermissionDenied(text),
        // ENOSPC: openpt when every pseudo-terminal the kernel allows is taken.
        Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM | libc::ENOSPC) => {
            SpawnError::LimitReached(text)
        }
        _ => SpawnError::Failed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ErrorCode;

    #[test]
    fn programs_resolve_in_the_fixed_path() {
        assert!(resolve_program(b"sh").unwrap().ends_with("sh"));
        assert!(matches!(
            resolve_program(b"no-such-program-anywhere"),
            Err(SpawnError::NotFound(_))
        ));
        assert_eq!(
            resolve_program(b"./local").unwrap(),
            PathBuf::from("./local")
        );
    }

    #[test]
    fn the_group_and_session_are_read_past_a_command_name_with_parentheses_and_spaces() {
        let stat = "4242 (a) b (c) S 1 4240 4200 34816 4242 4194304 0 0";
        assert_eq!(parse_stat_group_and_session(stat), Some((4240, 4200)));
        assert_eq!(parse_stat_group_and_session("4242 (x) S 1"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (pgrp, session) = parse_stat_group_and_session(&own).unwrap();
        // libc, not rustix: inside a container whose session leader lives in an outer pid
        // namespace both IDs read as 0, which rustix's `Pid` cannot hold.
        // SAFETY: getpgrp and getsid(0) only read the calling process's own IDs.
        let (own_pgrp, own_session) = unsafe { (libc::getpgrp(), libc::getsid(0)) };
        assert_eq!(pgrp, own_pgrp);
        assert_eq!(session, own_session);
    }

    #[test]
    fn spawn_errors_map_to_codes_by_errno() {
        let cases = [
            (libc::EMFILE, ErrorCode::LimitReached),
            (libc::EAGAIN, ErrorCode::LimitReached),
            // openpt past /proc/sys/kernel/pty/max: every pseudo-terminal is taken.
            (libc::ENOSPC, ErrorCode::LimitReached),
            (libc::EACCES, ErrorCode::PermissionDenied),
            (libc::ENOEXEC, ErrorCode::PermissionDenied),
            (libc::ENOENT, ErrorCode::NotFound),
            (libc::EIO, ErrorCode::SpawnFailed),
        ];
        for (errno, code) in cases {
            let error = spawn_io_error("x", &io::Error::from_raw_os_error(errno));
            assert_eq!(error.code(), code, "errno {errno}");
        }
    }
}
