//! Configuration, socket setup and the public face of a running server.
//!
//! [`Server::bind`] does everything that can fail before the loop starts (check the
//! configuration, raise the descriptor limit, clamp the connection limit to it, open the root,
//! bind every socket), so a caller can print the bound addresses before [`Server::run`] takes
//! over the thread.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{error, info, warn};
use mio::net::{TcpListener, UdpSocket};
use socket2::{Domain, Socket, Type};

use crate::access::Access;
use crate::limits::{DESCRIPTORS_PER_COMMAND, Limits};
use crate::reactor::{Reactor, ReactorStats, Setup, ShutdownHandle, Sockets};
use crate::reload::Reload;
use crate::sys::root::Root;
use crate::transport::proxy::ProxyPolicy;

/// Default framed-protocol address: loopback only, so a fresh install exposes nothing.
pub const DEFAULT_FRAMED_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7878));
/// Default raw echo address (TCP and UDP share the port number, as RFC 862's port 7 does).
pub const DEFAULT_ECHO_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7007));

/// Default root directory for files and commands, relative to the working directory.
pub const DEFAULT_ROOT: &str = "monoreactor-files";

/// Pending connections the kernel may queue per listener. std and mio fix it at 128, which a
/// burst of a thousand connects overflows; the kernel caps it at `net.core.somaxconn`.
pub(crate) const LISTEN_BACKLOG: i32 = 1024;

/// What to serve, where, and within which limits.
#[derive(Clone, Debug)]
pub struct Config {
    /// Framed-protocol listener.
    pub framed: SocketAddr,
    /// Raw TCP echo listener; `None` disables it.
    pub echo_tcp: Option<SocketAddr>,
    /// UDP echo socket; `None` disables it.
    pub echo_udp: Option<SocketAddr>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// The token, and whether commands run (only ever with a token).
    pub access: Access,
    /// The directory files are served from, commands run in, and paths are confined to;
    /// created if missing. Opened when files or commands are enabled.
    pub root: PathBuf,
    /// Serve files (GET, PUT, LIST, ...) under `root`.
    pub files: bool,
    /// Allow a framed listener on a non-loopback address without a token.
    pub insecure: bool,
    /// Shut down gracefully on SIGINT/SIGTERM. A program embedding the server may prefer to
    /// keep its own handlers and use a [`ShutdownHandle`].
    pub handle_signals: bool,
    /// The program started as the disk helper (`PROGRAM __disk-helper FD`, see
    /// `crate::sys::disk`) when files are served. `monoreactor serve` names itself
    /// (`/proc/self/exe`); the default is `None` (blocking disk calls inline on the loop), since
    /// a program embedding the server is not a helper.
    pub disk_helper: Option<PathBuf>,
    /// TLS on the framed listener (the raw echo and UDP stay plaintext), from
    /// [`TlsSettings::load`](crate::TlsSettings::load); `None`: plaintext. A configuration
    /// built some other way must allow TLS 1.3, send no session tickets and enable secret
    /// extraction, or every handshake fails at its end.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The files SIGHUP re-reads (with `handle_signals`): the access file and the TLS
    /// material, swapped only if all of them are good (see [`Reload`]). Empty: SIGHUP only
    /// logs that there is nothing to reload.
    pub reload: Reload,
    /// Told when a reload starts and ends and when a shutdown starts (a service manager's
    /// news: [`SystemdNotify`](crate::SystemdNotify)); `None`: nobody is told.
    pub lifecycle: Option<Arc<dyn crate::Lifecycle>>,
    /// The metrics port (`--metrics`): Prometheus text at `GET /metrics` over plain HTTP;
    /// `None` (the default) serves none. A non-loopback address needs `insecure`: the
    /// counters tell anyone who can reach the port how busy the server is and with what.
    pub metrics: Option<SocketAddr>,
    /// The PROXY protocol on the framed and raw echo listeners: off, or which peers may (or
    /// must) start a connection with the header. Off by default.
    pub proxy: ProxyPolicy,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            framed: DEFAULT_FRAMED_ADDR,
            echo_tcp: Some(DEFAULT_ECHO_ADDR),
            echo_udp: Some(DEFAULT_ECHO_ADDR),
            limits: Limits::default(),
            access: Access::ECHO_ONLY,
            root: PathBuf::from(DEFAULT_ROOT),
            files: true,
            insecure: false,
            handle_signals: true,
            disk_helper: None,
            tls: None,
            reload: Reload::default(),
            proxy: ProxyPolicy::default(),
            metrics: None,
            lifecycle: None,
        }
    }
}

impl Config {
    /// What [`Server::bind`] checks before it changes anything: the limits together, a token
    /// for commands and for a listener off loopback, TLS off loopback, and a root that is a
    /// directory or can be created as one. Binds nothing, creates nothing, raises no limit
    /// (`serve --check-config`).
    pub fn check(&self) -> Result<(), StartError> {
        self.limits
            .validate()
            .map_err(|error| StartError::Config(error.to_string()))?;
        check_access(&self.access, self.framed, self.proxy.is_on(), self.insecure)?;
        check_transport(self.framed, self.tls.is_some(), self.insecure)?;
        check_metrics(self.metrics, self.insecure)?;
        if self.access.exec || self.files {
            check_root(&self.root)?;
        }
        Ok(())
    }
}

/// The root is a directory, or is missing and its parent is a directory: `serve` creates the
/// root as `mkdir` would, the last component only, never a whole chain of directories from a
/// mistyped path. Whether it can really be created is known only by trying ([`open_root`]).
fn check_root(root: &Path) -> Result<(), StartError> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(StartError::Config(format!(
            "{} is not a directory (--root)",
            root.display()
        ))),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let Some(parent) = root
                .parent()
                .filter(|parent| !parent.as_os_str().is_empty())
            else {
                // A relative name of one component is created in the working directory.
                return Ok(());
            };
            match std::fs::metadata(parent) {
                Ok(meta) if meta.is_dir() => Ok(()),
                Ok(_) => Err(StartError::Config(format!(
                    "cannot create the root directory {}: {} is not a directory",
                    root.display(),
                    parent.display()
                ))),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    Err(missing_parent(root, parent))
                }
                Err(error) => Err(StartError::Config(format!(
                    "cannot create the root directory {}: {}: {error}",
                    root.display(),
                    parent.display()
                ))),
            }
        }
        Err(error) => Err(StartError::Config(format!(
            "cannot use {} as the root directory: {error}",
            root.display()
        ))),
    }
}

/// The root cannot be created because its parent is missing: `serve` creates the last
/// component only.
fn missing_parent(root: &Path, parent: &Path) -> StartError {
    StartError::Config(format!(
        "cannot create the root directory {}: parent directory {} does not exist (serve creates only the last component; create the parent first or fix --root)",
        root.display(),
        parent.display()
    ))
}

/// What `config` exposes to other hosts that an operator should know of, one line each for
/// the log's warn level: an echo listener off loopback (anyone can make the server send
/// traffic, and a UDP echo answers spoofed sources, so it reflects traffic at a third party),
/// and files served with no credential to a listener others reach (off loopback, which
/// needed `--insecure`, or behind a balancer with the PROXY protocol). Empty for the
/// defaults, which listen on loopback only.
pub(crate) fn exposure_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(addr) = config.echo_tcp.filter(|addr| !addr.ip().is_loopback()) {
        warnings.push(format!(
            "the raw TCP echo on {addr} is reachable from other hosts: anyone there can make this server send traffic; listen on 127.0.0.1 or pass --echo-tcp off unless an open echo service is wanted"
        ));
    }
    if let Some(addr) = config.echo_udp.filter(|addr| !addr.ip().is_loopback()) {
        warnings.push(format!(
            "the UDP echo on {addr} is reachable from other hosts: it answers any source address, spoofed ones too, so it can reflect traffic at a third party; listen on 127.0.0.1 or pass --echo-udp off unless an open echo service is wanted"
        ));
    }
    let reachable = !config.framed.ip().is_loopback() || config.proxy.is_on();
    if config.files && !config.access.guarded() && reachable {
        warnings.push(format!(
            "files under {} are served without authentication on {}{}: anyone who can reach it may read, write and delete them; give --token-file PATH",
            config.root.display(),
            config.framed,
            if config.proxy.is_on() {
                " (behind a balancer: its clients reach it)"
            } else if config.tls.is_some() {
                " (TLS encrypts, but asks no one who they are)"
            } else {
                ""
            }
        ));
    }
    warnings
}

/// Logs [`exposure_warnings`], once per start (by the supervisor alone with workers).
fn warn_exposure(config: &Config) {
    for warning in exposure_warnings(config) {
        warn!("{warning}");
    }
}

/// Which socket a bind failure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// The framed-protocol listener.
    Framed,
    /// The raw TCP echo listener.
    EchoTcp,
    /// The UDP echo socket.
    EchoUdp,
    /// The metrics listener.
    Metrics,
}

/// One socket that could not be bound.
#[derive(Debug)]
pub struct BindFailure {
    /// Which socket.
    pub listener: Listener,
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why.
    pub error: io::Error,
}

/// Why a server could not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration cannot work; the text says what to change.
    Config(String),
    /// Sockets could not be bound: every failure, not just the first.
    Bind(Vec<BindFailure>),
    /// Anything else (the poll, the root directory).
    Io(io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Config(text) => f.write_str(text),
            StartError::Bind(failures) => {
                let lines: Vec<String> = failures
                    .iter()
                    .map(|failure| {
                        format!(
                            "cannot bind {:?} {}: {}",
                            failure.listener, failure.addr, failure.error
                        )
                    })
                    .collect();
                f.write_str(&lines.join("; "))
            }
            StartError::Io(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(error: io::Error) -> StartError {
        StartError::Io(error)
    }
}

/// The addresses actually bound (port 0 resolved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundAddrs {
    /// Framed-protocol listener.
    pub framed: SocketAddr,
    /// Raw TCP echo listener, if enabled.
    pub echo_tcp: Option<SocketAddr>,
    /// UDP echo socket, if enabled.
    pub echo_udp: Option<SocketAddr>,
    /// Metrics listener, if enabled (never for [`bind_shared`]: each worker binds its own).
    pub metrics: Option<SocketAddr>,
}

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    reactor: Reactor,
    addrs: BoundAddrs,
}

impl Server {
    /// Checks the configuration, raises `RLIMIT_NOFILE`, opens the root (when files or
    /// commands are enabled), binds every socket and registers it.
    ///
    /// Raising the descriptor limit affects the whole process, as it should for a server that
    /// is the process; a program embedding it should know that its own limit rises too. So does
    /// enabling commands: every inherited descriptor is made close-on-exec
    /// (`keep_descriptors_from_commands`)
    /// and SIGCHLD gets its default disposition
    /// (`restore_default_sigchld`).
    pub fn bind(mut config: Config) -> Result<Server, StartError> {
        let limits = prepare(&mut config)?;
        let mut failures = Vec::new();
        let framed = attempt(
            &mut failures,
            Listener::Framed,
            config.framed,
            bind_listener(config.framed),
        );
        let echo_tcp = config
            .echo_tcp
            .map(|addr| attempt(&mut failures, Listener::EchoTcp, addr, bind_listener(addr)));
        let echo_udp = config.echo_udp.map(|addr| {
            attempt(
                &mut failures,
                Listener::EchoUdp,
                addr,
                UdpSocket::bind(addr),
            )
        });
        let metrics = config
            .metrics
            .map(|addr| attempt(&mut failures, Listener::Metrics, addr, bind_listener(addr)));
        let (Some(framed), Some(echo_tcp), Some(echo_udp), Some(metrics)) = (
            framed,
            echo_tcp.map_or(Some(None), |socket| socket.map(Some)),
            echo_udp.map_or(Some(None), |socket| socket.map(Some)),
            metrics.map_or(Some(None), |socket| socket.map(Some)),
        ) else {
            return Err(StartError::Bind(failures));
        };
        let sockets = Sockets {
            framed,
            echo_tcp,
            echo_udp,
            metrics,
        };
        // Only now that every socket is bound: a server that cannot start leaves no root
        // directory behind.
        let root = open_root(&config)?;
        warn_exposure(&config);
        Server::assemble(config, limits, root, sockets)
    }

    /// Like [`Server::bind`], but serves sockets that are already bound and listening (a
    /// worker's share of [`bind_shared`]'s sockets) instead of binding `config`'s addresses;
    /// `config`'s addresses are not used. Every other check and setup step is the same.
    pub fn from_listeners(mut config: Config, listeners: Listeners) -> Result<Server, StartError> {
        let limits = prepare(&mut config)?;
        let root = open_root(&config)?;
        let sockets = listeners.into_sockets()?;
        Server::assemble(config, limits, root, sockets)
    }

    fn assemble(
        config: Config,
        limits: Limits,
        root: Option<Root>,
        sockets: Sockets,
    ) -> Result<Server, StartError> {
        let addrs = BoundAddrs {
            framed: sockets.framed.local_addr()?,
            echo_tcp: sockets
                .echo_tcp
                .as_ref()
                .map(TcpListener::local_addr)
                .transpose()?,
            echo_udp: sockets
                .echo_udp
                .as_ref()
                .map(UdpSocket::local_addr)
                .transpose()?,
            metrics: sockets
                .metrics
                .as_ref()
                .map(TcpListener::local_addr)
                .transpose()?,
        };
        let reactor = Reactor::new(Setup {
            sockets,
            limits,
            access: config.access,
            root,
            files: config.files,
            handle_signals: config.handle_signals,
            disk_helper: config.disk_helper,
            tls: config.tls,
            reload: config.reload,
            lifecycle: config.lifecycle,
            proxy: config.proxy,
        })?;
        Ok(Server { reactor, addrs })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// A handle that starts a graceful shutdown from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.reactor.shutdown_handle()
    }

    /// Runs the event loop on this thread until shutdown.
    pub fn run(self) -> io::Result<ReactorStats> {
        self.reactor.run()
    }
}

/// Everything [`Server::bind`] checks and sets up before binding: the configuration, the
/// descriptor limit (and the connection limit clamped to it), and commands' descriptor
/// hygiene. The root directory comes after the binding ([`open_root`]).
/// `config.limits` is taken (left at its default) and returned adjusted.
fn prepare(config: &mut Config) -> Result<Limits, StartError> {
    config.check()?;
    let mut limits = std::mem::take(&mut config.limits);
    let descriptors = raise_descriptor_limit();
    let commands = if config.access.exec {
        limits.max_exec
    } else {
        0
    };
    limits.max_connections = clamp_connections(
        limits.max_connections,
        limits.reserved_fds + commands * DESCRIPTORS_PER_COMMAND,
        descriptors,
    );
    if config.access.exec {
        crate::sys::process::keep_descriptors_from_commands()?;
        crate::sys::process::restore_default_sigchld()?;
    }
    Ok(limits)
}

/// Opens the root directory (created if missing) when files are served or commands run; called
/// once the sockets are bound, so a server that fails to start creates nothing.
fn open_root(config: &Config) -> Result<Option<Root>, StartError> {
    let root = if config.access.exec || config.files {
        // The last component only, as `mkdir` (the check said the parent exists; a parent
        // removed since is said so again, not recreated).
        match std::fs::create_dir(&config.root) {
            Ok(()) => info!("created the root directory {}", config.root.display()),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let parent = config.root.parent().unwrap_or(Path::new("."));
                return Err(missing_parent(&config.root, parent));
            }
            Err(error) => {
                return Err(StartError::Config(format!(
                    "cannot create the root directory {}: {error}",
                    config.root.display()
                )));
            }
        }
        let root = Root::open_or_create(&config.root).map_err(|error| {
            StartError::Config(format!(
                "cannot use {} as the root directory: {error}",
                config.root.display()
            ))
        })?;
        let serves = match (config.files, config.access.exec) {
            (true, true) => "files are served and commands run",
            (true, false) => "files are served",
            _ => "commands run",
        };
        info!("{serves} under {}", root.path().display());
        Some(root)
    } else {
        None
    };
    Ok(root)
}

/// One worker's listening sockets: bound, listening, nonblocking, `SO_REUSEPORT` set. The
/// supervisor keeps them for the worker's whole slot, so a replacement serves the very same
/// sockets (and their queued connections).
#[derive(Debug)]
pub struct Listeners {
    /// The framed-protocol listener.
    pub framed: std::net::TcpListener,
    /// The raw echo listener, if enabled.
    pub echo_tcp: Option<std::net::TcpListener>,
    /// The UDP echo socket, if enabled.
    pub echo_udp: Option<std::net::UdpSocket>,
    /// The metrics listener, if enabled: not shared, each worker binds its own (see
    /// `serve --workers`).
    pub metrics: Option<std::net::TcpListener>,
}

impl Listeners {
    fn into_sockets(self) -> io::Result<Sockets> {
        self.framed.set_nonblocking(true)?;
        if let Some(listener) = &self.echo_tcp {
            listener.set_nonblocking(true)?;
        }
        if let Some(socket) = &self.echo_udp {
            socket.set_nonblocking(true)?;
        }
        if let Some(listener) = &self.metrics {
            listener.set_nonblocking(true)?;
        }
        Ok(Sockets {
            framed: TcpListener::from_std(self.framed),
            echo_tcp: self.echo_tcp.map(TcpListener::from_std),
            echo_udp: self.echo_udp.map(UdpSocket::from_std),
            metrics: self.metrics.map(TcpListener::from_std),
        })
    }
}

/// The sockets systemd passed by socket activation (`LISTEN_FDS`, `LISTEN_PID`), as
/// [`Listeners`] for [`Server::from_listeners`], or `None` if none were passed. They are taken
/// by name (`LISTEN_FDNAMES`: `framed`, `echo-tcp`, `echo-udp`, see
/// [`ACTIVATION_NAMES`](crate::ACTIVATION_NAMES)) or else in that order, and each is checked to
/// be what its place says (a listening TCP socket, a UDP socket). `Err`: one line saying what is
/// wrong.
///
/// Call it once, at start: it takes ownership of the passed descriptors.
pub fn activated_listeners() -> Result<Option<Listeners>, String> {
    Ok(
        crate::sys::notify::activated_sockets()?.map(|sockets| Listeners {
            framed: sockets.framed.into(),
            echo_tcp: sockets.echo_tcp.map(Into::into),
            echo_udp: sockets.echo_udp.map(Into::into),
            // Not one of the activated sockets: `serve` binds it from `--metrics`.
            metrics: None,
        }),
    )
}

/// Binds `count` sets of sockets on the same addresses with `SO_REUSEPORT`, one set per
/// worker, after the same checks as [`Server::bind`] (the root directory is not created here:
/// each worker opens, or creates, its own once it starts, so a failed bind leaves nothing). A port 0 is resolved once: the first socket of each
/// kind picks the port and the others bind that one. The kernel spreads new connections (and
/// datagrams) over the sets by a hash of the peer's address.
///
/// Nothing here creates a poll, a thread or a signal handler, so a caller may still fork.
pub fn bind_shared(
    mut config: Config,
    count: usize,
) -> Result<(Vec<Listeners>, BoundAddrs), StartError> {
    prepare(&mut config)?;
    check_worker_count(&config, count)?;
    let mut failures = Vec::new();
    let mut resolved: [Option<SocketAddr>; 3] =
        [Some(config.framed), config.echo_tcp, config.echo_udp];
    let mut sets = Vec::with_capacity(count);
    for _ in 0..count {
        let framed = bind_kind(
            &mut failures,
            Listener::Framed,
            &mut resolved[0],
            Type::STREAM,
        );
        let echo_tcp = bind_kind(
            &mut failures,
            Listener::EchoTcp,
            &mut resolved[1],
            Type::STREAM,
        );
        let echo_udp = bind_kind(
            &mut failures,
            Listener::EchoUdp,
            &mut resolved[2],
            Type::DGRAM,
        );
        if !failures.is_empty() {
            return Err(StartError::Bind(failures));
        }
        sets.push(Listeners {
            framed: framed.map(std::net::TcpListener::from).ok_or_else(|| {
                StartError::Config("the framed listener is always bound".to_string())
            })?,
            echo_tcp: echo_tcp.map(std::net::TcpListener::from),
            echo_udp: echo_udp.map(std::net::UdpSocket::from),
            metrics: None,
        });
    }
    warn_exposure(&config);
    let [Some(framed), echo_tcp, echo_udp] = resolved else {
        return Err(StartError::Config(
            "the framed listener is always bound".to_string(),
        ));
    };
    Ok((
        sets,
        BoundAddrs {
            framed,
            echo_tcp,
            echo_udp,
            metrics: None,
        },
    ))
}

// The worker limits are here, not in `workers`, which depends on this module (never the
// other way round).
/// The most workers `serve --workers` starts. Each is a whole server process holding its own
/// copy of every listening socket; past the cores, more of them only contend for the same
/// CPUs, and a mistyped count (100000) should be refused with this reason rather than fail
/// halfway through binding its sockets.
pub const MAX_WORKERS: usize = 1024;

/// Descriptors the supervisor holds per worker besides its listening sockets: the worker's
/// pidfd and the read end of its ready pipe, and the write end while it starts.
pub(crate) const DESCRIPTORS_PER_WORKER: usize = 3;

/// Refuses more workers than [`MAX_WORKERS`], or than the
/// supervisor's descriptors can hold: it keeps every worker's copy of every listening socket,
/// plus the worker's pidfd and ready pipe. Said before any socket is bound, so the message is
/// the limit and why, not a bind failure.
fn check_worker_count(config: &Config, count: usize) -> Result<(), StartError> {
    if count > MAX_WORKERS {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        return Err(StartError::Config(format!(
            "--workers {count}: at most {MAX_WORKERS}: each worker is a whole server process with its own copy of every listening socket, and workers beyond the cores ({cores} here) add no throughput"
        )));
    }
    let sockets =
        1 + usize::from(config.echo_tcp.is_some()) + usize::from(config.echo_udp.is_some());
    let needed = count * (sockets + DESCRIPTORS_PER_WORKER) + config.limits.reserved_fds;
    if let Some(limit) = raise_descriptor_limit() {
        if needed as u64 > limit {
            return Err(StartError::Config(format!(
                "--workers {count}: the supervisor would hold {needed} descriptors (every worker's copy of {sockets} listening sockets, its pidfd and ready pipe), more than its limit of {limit} (ulimit -n); start fewer workers"
            )));
        }
    }
    Ok(())
}

/// The metrics addresses of `serve --workers N`: the N consecutive ports from `base`'s (fewer
/// if they would pass 65535).
pub fn worker_metrics_addrs(base: SocketAddr, workers: usize) -> Vec<SocketAddr> {
    (0..workers)
        .filter_map(|index| {
            let port = base.port().checked_add(u16::try_from(index).ok()?)?;
            Some(SocketAddr::new(base.ip(), port))
        })
        .collect()
}

/// A worker's metrics listener: the first of [`worker_metrics_addrs`] that is free. Each
/// worker process is a server with counters of its own, so each has a port of its own rather
/// than one shared with `SO_REUSEPORT` (where a scrape would reach one random worker); a
/// worker that replaces one that died takes the port its predecessor left. One that finds
/// none free serves no metrics, and says so.
pub fn bind_worker_metrics(base: SocketAddr, workers: usize) -> Option<std::net::TcpListener> {
    let bound = worker_metrics_addrs(base, workers)
        .into_iter()
        .find_map(|addr| std::net::TcpListener::bind(addr).ok());
    if bound.is_none() {
        error!(
            "--metrics: all {workers} worker ports from {base} are taken; this worker serves no metrics"
        );
    }
    bound
}

/// Binds one `SO_REUSEPORT` socket of `kind` at `*addr` (if that listener is enabled) and,
/// the first time, replaces a port 0 in `*addr` by the port the kernel chose.
fn bind_kind(
    failures: &mut Vec<BindFailure>,
    listener: Listener,
    addr: &mut Option<SocketAddr>,
    kind: Type,
) -> Option<Socket> {
    let wanted = (*addr)?;
    let result = (|| {
        let socket = Socket::new(Domain::for_address(wanted), kind, None)?;
        if kind == Type::STREAM {
            socket.set_reuse_address(true)?;
        }
        set_reuse_port(&socket)?;
        socket.set_nonblocking(true)?;
        socket.bind(&wanted.into())?;
        if kind == Type::STREAM {
            socket.listen(LISTEN_BACKLOG)?;
        }
        let bound = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))?;
        Ok::<_, io::Error>((socket, bound))
    })();
    match result {
        Ok((socket, bound)) => {
            *addr = Some(bound);
            Some(socket)
        }
        Err(error) => {
            failures.push(BindFailure {
                listener,
                addr: wanted,
                error,
            });
            None
        }
    }
}

/// `SO_REUSEPORT` through libc: socket2 offers it only with its `all` feature.
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `on`, which lives across the
    // call; the descriptor is owned by `socket`.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Keeps `result`'s socket, or records its failure so every failure can be reported at once.
fn attempt<T>(
    failures: &mut Vec<BindFailure>,
    listener: Listener,
    addr: SocketAddr,
    result: io::Result<T>,
) -> Option<T> {
    match result {
        Ok(socket) => Some(socket),
        Err(error) => {
            failures.push(BindFailure {
                listener,
                addr,
                error,
            });
            None
        }
    }
}

/// Refuses what must not run: commands without a token, and a framed listener reachable from
/// other hosts without one (unless `insecure`). With the PROXY protocol on (`proxied`), a
/// loopback listener is reachable from other hosts too: a balancer relays their clients to it
/// (over TLS, nothing else would stop them from using the files with no credential at all).
fn check_access(
    access: &Access,
    framed: SocketAddr,
    proxied: bool,
    insecure: bool,
) -> Result<(), StartError> {
    if access.exec && !access.guarded() {
        return Err(StartError::Config(format!(
            "--exec needs a token: give --token-file PATH or set {}",
            crate::access::TOKEN_ENV
        )));
    }
    if !access.guarded() && proxied && !insecure {
        return Err(StartError::Config(format!(
            "refusing to take --proxy-protocol on {framed} without a token: the balancer relays clients from other hosts, and any of them could use the server; give --token-file PATH (or set {}), or pass --insecure",
            crate::access::TOKEN_ENV
        )));
    }
    if !access.guarded() && !framed.ip().is_loopback() && !insecure {
        return Err(StartError::Config(format!(
            "refusing to listen on {framed} without a token: anyone who can reach it could use the server; give --token-file PATH (or set {}), listen on 127.0.0.1, or pass --insecure",
            crate::access::TOKEN_ENV
        )));
    }
    Ok(())
}

/// Refuses a framed listener reachable from other hosts in plaintext (unless `insecure`):
/// tokens, commands and files would cross the network readable by anyone on the way.
fn check_transport(framed: SocketAddr, tls: bool, insecure: bool) -> Result<(), StartError> {
    if !tls && !framed.ip().is_loopback() && !insecure {
        return Err(StartError::Config(format!(
            "refusing to listen on {framed} without TLS: tokens and files would cross the network in plaintext; give --tls-cert PATH --tls-key PATH, listen on 127.0.0.1, or pass --insecure"
        )));
    }
    Ok(())
}

/// The metrics port on a non-loopback address only with `insecure`: it is plain HTTP with no
/// authentication, and what it shows (connections, commands, errors by code) is for the
/// operator.
fn check_metrics(metrics: Option<SocketAddr>, insecure: bool) -> Result<(), StartError> {
    match metrics {
        Some(addr) if !addr.ip().is_loopback() && !insecure => Err(StartError::Config(format!(
            "refusing --metrics on {addr}: the metrics port is plain HTTP without authentication; \
             listen on 127.0.0.1 (and let the scraper reach it through a tunnel or a proxy), or \
             pass --insecure"
        ))),
        _ => Ok(()),
    }
}

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as redis does at start) and returns the
/// soft limit now in force, or `None` if it cannot be read.
pub fn raise_descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        warn!("getrlimit(RLIMIT_NOFILE): {}", io::Error::last_os_error());
        return None;
    }
    // An unlimited hard limit cannot be the soft one on Linux (nr_open caps it): aim lower.
    let target = if limit.rlim_max == libc::RLIM_INFINITY {
        1 << 20
    } else {
        limit.rlim_max
    };
    if limit.rlim_cur < target {
        let raised = libc::rlimit {
            rlim_cur: target,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            info!(
                "raised the open-file limit from {} to {target}",
                limit.rlim_cur
            );
            return Some(target);
        }
        warn!(
            "could not raise the open-file limit above {}: {}",
            limit.rlim_cur,
            io::Error::last_os_error()
        );
    }
    Some(limit.rlim_cur)
}

/// The connection limit that fits in `descriptors` after `reserved` ones; logs when it lowers
/// the configured value.
fn clamp_connections(wanted: usize, reserved: usize, descriptors: Option<u64>) -> usize {
    let Some(descriptors) = descriptors else {
        return wanted;
    };
    let available = usize::try_from(descriptors)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserved)
        .max(1);
    if wanted > available {
        warn!(
            "max connections lowered from {wanted} to {available}: the open-file limit is {descriptors} and {reserved} descriptors are kept in reserve"
        );
        return available;
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_off_loopback_and_files_without_a_token_off_loopback_are_warned_of_once_each() {
        assert!(exposure_warnings(&Config::default()).is_empty());
        let public: SocketAddr = ([0, 0, 0, 0], 7007).into();
        let config = Config {
            echo_tcp: Some(public),
            echo_udp: Some(public),
            framed: ([192, 0, 2, 1], 7878).into(),
            insecure: true,
            ..Config::default()
        };
        let warnings = exposure_warnings(&config);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(
            warnings[0].contains("raw TCP echo on 0.0.0.0:7007"),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains("UDP echo on 0.0.0.0:7007"),
            "{warnings:?}"
        );
        assert!(
            warnings[2].contains("without authentication on 192.0.2.1:7878"),
            "{warnings:?}"
        );
        // A token, or no files: nothing to say about files.
        let guarded = Config {
            access: Access::ECHO_ONLY.with_token(
                Some(
                    crate::Token::new(b"0123456789abcdef0123456789abcdef".to_vec())
                        .expect("a token"),
                ),
                false,
            ),
            ..config.clone()
        };
        assert_eq!(exposure_warnings(&guarded).len(), 2);
        let no_files = Config {
            files: false,
            ..config
        };
        assert_eq!(exposure_warnings(&no_files).len(), 2);
        // Loopback behind a balancer: its clients reach the files.
        let proxied = Config {
            proxy: ProxyPolicy {
                mode: crate::ProxyMode::Allow,
                from: Vec::new(),
            },
            insecure: true,
            ..Config::default()
        };
        let warnings = exposure_warnings(&proxied);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("balancer"), "{warnings:?}");
    }

    #[test]
    fn the_root_is_created_as_mkdir_does_never_a_chain() {
        let base =
            std::env::temp_dir().join(format!("monoreactor-root-check-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir(&base).expect("base");
        // The last component: fine.
        assert!(check_root(&base.join("new")).is_ok());
        // More than one missing: refused, naming the missing parent.
        let error = check_root(&base.join("a/b"))
            .expect_err("a chain")
            .to_string();
        assert!(
            error.contains(&format!(
                "parent directory {} does not exist",
                base.join("a").display()
            )),
            "{error}"
        );
        // A file: not a directory.
        std::fs::write(base.join("file"), b"x").expect("a file");
        let error = check_root(&base.join("file"))
            .expect_err("a file")
            .to_string();
        assert!(error.contains("is not a directory"), "{error}");
        std::fs::remove_dir_all(&base).expect("clean up");
    }

    #[test]
    fn clamp_keeps_reserved_descriptors() {
        assert_eq!(clamp_connections(10_000, 32, Some(1024)), 992);
        assert_eq!(clamp_connections(100, 32, Some(1024)), 100);
        assert_eq!(
            clamp_connections(100, 32, Some(16)),
            1,
            "never below one connection"
        );
        assert_eq!(clamp_connections(100, 32, None), 100);
    }

    #[test]
    fn exec_without_a_token_and_a_public_listener_without_one_are_refused() {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let exec_no_token = Access {
            credentials: None,
            token: None,
            exec: true,
        };
        assert!(matches!(
            check_access(&exec_no_token, loopback, false, false),
            Err(StartError::Config(text)) if text.contains("--exec needs a token")
        ));
        assert!(check_access(&Access::ECHO_ONLY, public, false, false).is_err());
        assert!(check_access(&Access::ECHO_ONLY, public, false, true).is_ok());
        assert!(check_access(&Access::ECHO_ONLY, loopback, false, false).is_ok());
    }

    #[test]
    fn a_loopback_listener_behind_the_proxy_protocol_without_a_token_is_refused() {
        // A balancer on this machine relays remote clients to it: it is not loopback-only.
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert!(matches!(
            check_access(&Access::ECHO_ONLY, loopback, true, false),
            Err(StartError::Config(text)) if text.contains("--proxy-protocol")
        ));
        assert!(check_access(&Access::ECHO_ONLY, loopback, true, true).is_ok());
        let guarded = Access {
            credentials: None,
            token: Some(
                crate::access::Token::new("a-token-of-enough-length-0123456789").expect("token"),
            ),
            exec: false,
        };
        assert!(check_access(&guarded, loopback, true, false).is_ok());
    }

    #[test]
    fn every_bind_failure_is_reported_not_just_the_first() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let config = Config {
            framed: taken.local_addr().unwrap(),
            echo_tcp: Some(taken.local_addr().unwrap()),
            echo_udp: Some(taken_udp.local_addr().unwrap()),
            handle_signals: false,
            ..Config::default()
        };
        let Err(StartError::Bind(failures)) = Server::bind(config) else {
            panic!("binding taken ports succeeded");
        };
        let listeners: Vec<Listener> = failures.iter().map(|failure| failure.listener).collect();
        assert_eq!(
            listeners,
            [Listener::Framed, Listener::EchoTcp, Listener::EchoUdp]
        );
    }

    #[test]
    fn port_zero_reports_the_real_port() {
        let config = Config {
            framed: "127.0.0.1:0".parse().unwrap(),
            echo_tcp: Some("127.0.0.1:0".parse().unwrap()),
            echo_udp: Some("127.0.0.1:0".parse().unwrap()),
            handle_signals: false,
            ..Config::default()
        };
        let addrs = Server::bind(config).unwrap().addrs();
        assert_ne!(addrs.framed.port(), 0);
        assert_ne!(addrs.echo_tcp.unwrap().port(), 0);
        assert_ne!(addrs.echo_udp.unwrap().port(), 0);
    }
}
