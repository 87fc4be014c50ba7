//! The server and its service manager: telling systemd what the server is doing
//! (`Type=notify` and `Type=notify-reload`, through [`SystemdNotify`]) and taking the sockets
//! it passes (socket activation, [`activated_sockets`]), which the server serves instead of
//! binding its own ([`activated_listeners`](crate::activated_listeners)).
//!
//! The loop knows none of this: it calls a [`Lifecycle`] at the moments a manager cares about
//! (a reload starts and ends, a shutdown starts), if the program gave it one
//! ([`Config::lifecycle`](crate::Config::lifecycle)); `monoreactor serve` gives it a
//! [`SystemdNotify`] when `NOTIFY_SOCKET` is set, and a program embedding the server may give
//! its own or none. The "ready" moment is the program's: it is after its own start-up output
//! (`serve` prints its `listening` lines first), or, with `--workers`, once every worker is.

use std::fmt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use log::warn;
use sd_notify::NotifyState;

/// Told of the moments in a server's life a service manager wants to hear about. Every call
/// is made on the loop's thread and must not block for long (a datagram, a log line).
pub trait Lifecycle: Send + Sync + fmt::Debug {
    /// The server serves: its listeners are bound, or a reload is over. `status` is one line
    /// for humans (`systemctl status` shows it).
    fn ready(&self, status: &str);
    /// A reload (SIGHUP) starts; [`Lifecycle::ready`] follows when it is over, whatever its
    /// outcome.
    fn reloading(&self);
    /// A graceful shutdown starts: the server stops accepting and drains.
    fn stopping(&self, status: &str);
}

/// A [`Lifecycle`] that speaks systemd's notification protocol (`sd_notify(3)`) on the
/// datagram socket named by `NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct SystemdNotify(());

impl SystemdNotify {
    /// The notifier, if this process was started with `NOTIFY_SOCKET` (by systemd with
    /// `Type=notify`, or by a test); `None` otherwise, and nothing is ever sent.
    pub fn from_env() -> Option<Arc<dyn Lifecycle>> {
        std::env::var_os("NOTIFY_SOCKET")
            .filter(|path| !path.is_empty())
            .map(|_| Arc::new(SystemdNotify(())) as Arc<dyn Lifecycle>)
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        // `sd_notify` connects to the variable's value as a path; a leading `@` names an
        // abstract socket (sd_notify(3)), which is sent to here.
        let result = match std::env::var_os("NOTIFY_SOCKET") {
            Some(socket) if socket.as_bytes().first() == Some(&b'@') => {
                send_abstract(&socket.as_bytes()[1..], states)
            }
            _ => sd_notify::notify(states),
        };
        // A manager that went away must not stop the server: the message is only news.
        if let Err(error) = result {
            warn!("cannot notify the service manager: {error}");
        }
    }
}

impl Lifecycle for SystemdNotify {
    fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    fn reloading(&self) {
        // `Type=notify-reload` wants the monotonic time of the reload beside RELOADING=1, to
        // tell this reload's READY=1 from an earlier one's.
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading"),
            ]),
            Err(error) => {
                warn!("cannot read the monotonic clock for RELOADING=1: {error}");
                self.send(&[NotifyState::Reloading]);
            }
        }
    }

    fn stopping(&self, status: &str) {
        self.send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}

/// Sends `states` (one `KEY=VALUE` line each, as `sd_notify` writes them) to the abstract
/// datagram socket `name` (`NOTIFY_SOCKET` without its `@`).
fn send_abstract(name: &[u8], states: &[NotifyState<'_>]) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let message: String = states.iter().map(|state| format!("{state}\n")).collect();
    let socket = std::os::unix::net::UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(message.as_bytes(), &addr)?;
    if sent == message.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the notification was cut short",
        ))
    }
}

/// The names a socket unit gives the server's sockets (`FileDescriptorName=`), in the order
/// taken when the sockets have other names (or none).
pub const ACTIVATION_NAMES: [&str; 3] = ["framed", "echo-tcp", "echo-udp"];

/// The sockets socket activation passed, each checked to be what its name says.
#[derive(Debug)]
pub(crate) struct ActivatedSockets {
    /// A listening TCP socket.
    pub framed: OwnedFd,
    /// A listening TCP socket, if passed.
    pub echo_tcp: Option<OwnedFd>,
    /// A UDP socket, if passed.
    pub echo_udp: Option<OwnedFd>,
}

/// The sockets passed by socket activation (`LISTEN_FDS`, for this process by `LISTEN_PID`),
/// or `None` if none were. Named `framed`, `echo-tcp` and `echo-udp` (`LISTEN_FDNAMES`), or
/// else taken in that order; each is checked to be what its name says (a listening TCP socket,
/// a UDP socket). `Err`: one line saying what is wrong.
///
/// Call it once, at start: it takes ownership of the descriptors, which nothing else in the
/// process owns.
pub(crate) fn activated_sockets() -> Result<Option<ActivatedSockets>, String> {
    let passed: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()
        .map_err(|error| format!("socket activation: {error}"))?
        .collect();
    if passed.is_empty() {
        return Ok(None);
    }
    let by_name = passed
        .iter()
        .all(|(_, name)| ACTIVATION_NAMES.contains(&name.as_str()));
    let mut slots: [Option<RawFd>; 3] = [None; 3];
    for (position, (fd, name)) in passed.iter().enumerate() {
        let index = if by_name {
            ACTIVATION_NAMES
                .iter()
                .position(|known| known == name)
                .unwrap_or(position)
        } else {
            position
        };
        let Some(slot) = slots.get_mut(index) else {
            return Err(format!(
                "socket activation: {} sockets passed, at most 3 are served (framed, echo-tcp, echo-udp); name them with FileDescriptorName=",
                passed.len()
            ));
        };
        if slot.is_some() {
            return Err(format!(
                "socket activation: two sockets named {}",
                ACTIVATION_NAMES[index]
            ));
        }
        *slot = Some(*fd);
    }
    let [framed, echo_tcp, echo_udp] = slots;
    let Some(framed) = framed else {
        let names: Vec<&str> = passed.iter().map(|(_, name)| name.as_str()).collect();
        return Err(format!(
            "socket activation: no socket named framed among those passed ({})",
            names.join(", ")
        ));
    };
    let framed = take(framed, "framed", SocketKind::TcpListener)?;
    let echo_tcp = echo_tcp
        .map(|fd| take(fd, "echo-tcp", SocketKind::TcpListener))
        .transpose()?;
    let echo_udp = echo_udp
        .map(|fd| take(fd, "echo-udp", SocketKind::Udp))
        .transpose()?;
    Ok(Some(ActivatedSockets {
        framed,
        echo_tcp,
        echo_udp,
    }))
}

/// What a passed socket must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SocketKind {
    TcpListener,
    Udp,
}

/// Checks that `fd` is an IPv4 or IPv6 socket of `kind` (a TCP one listening), then owns it.
fn take(fd: RawFd, name: &str, kind: SocketKind) -> Result<OwnedFd, String> {
    let wanted = match kind {
        SocketKind::TcpListener => "a listening TCP socket (ListenStream=)",
        SocketKind::Udp => "a UDP socket (ListenDatagram=)",
    };
    let wrong =
        |what: &str| format!("socket activation: descriptor {fd} ({name}) is {what}, not {wanted}");
    let domain = socket_option(fd, libc::SO_DOMAIN).map_err(|error| wrong(&error))?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(wrong("not an IP socket (a unix socket?)"));
    }
    let (socket_type, listening) = (
        socket_option(fd, libc::SO_TYPE).map_err(|error| wrong(&error))?,
        socket_option(fd, libc::SO_ACCEPTCONN).map_err(|error| wrong(&error))?,
    );
    match kind {
        SocketKind::TcpListener if socket_type != libc::SOCK_STREAM => {
            return Err(wrong("a datagram socket"));
        }
        SocketKind::TcpListener if listening == 0 => {
            return Err(wrong("a TCP socket that is not listening"));
        }
        SocketKind::Udp if socket_type != libc::SOCK_DGRAM => {
            return Err(wrong("a stream socket"));
        }
        _ => {}
    }
    // SAFETY: the descriptor is an open socket (getsockopt succeeded above), passed to this
    // process by its service manager; nothing else in the process owns it, and
    // `activated_sockets`, called once at start, hands each passed descriptor out once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An integer socket option of `fd` at `SOL_SOCKET`; `Err`: what the failure means.
fn socket_option(fd: RawFd, option: libc::c_int) -> Result<libc::c_int, String> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        let error = io::Error::last_os_error();
        Err(match error.raw_os_error() {
            Some(libc::EBADF) => "not open".to_string(),
            Some(libc::ENOTSOCK) => "not a socket".to_string(),
            _ => format!("unreadable ({error})"),
        })
    }
}
