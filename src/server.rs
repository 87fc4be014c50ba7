//! Configuration, socket setup and the public face of a running server.
//!
//! [`Server::bind`] does everything that can fail before the loop starts (raise the descriptor
//! limit, clamp the connection limit to it, bind every socket), so a caller can print the bound
//! addresses before [`Server::run`] takes over the thread.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use log::{info, warn};
use mio::net::{TcpListener, UdpSocket};
use socket2::{Domain, Socket, Type};

use crate::limits::Limits;
use crate::reactor::{Reactor, ReactorStats, ShutdownHandle, Sockets};

/// Default framed-protocol address: loopback only, so a fresh install exposes nothing.
pub const DEFAULT_FRAMED_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7878));
/// Default raw echo address (TCP and UDP share the port number, as RFC 862's port 7 does).
pub const DEFAULT_ECHO_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7007));

/// Pending connections the kernel may queue per listener. std and mio fix it at 128, which a
/// burst of a thousand connects overflows; the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: i32 = 1024;

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
    /// Shut down gracefully on SIGINT/SIGTERM. A program embedding the server may prefer to
    /// keep its own handlers and use a [`ShutdownHandle`].
    pub handle_signals: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            framed: DEFAULT_FRAMED_ADDR,
            echo_tcp: Some(DEFAULT_ECHO_ADDR),
            echo_udp: Some(DEFAULT_ECHO_ADDR),
            limits: Limits::default(),
            handle_signals: true,
        }
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
}

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    reactor: Reactor,
    addrs: BoundAddrs,
}

impl Server {
    /// Validates the limits, raises `RLIMIT_NOFILE`, binds every socket and registers it.
    ///
    /// Raising the descriptor limit affects the whole process, as it should for a server that
    /// is the process; a program embedding it should know that its own limit rises too.
    pub fn bind(config: Config) -> io::Result<Server> {
        let mut limits = config.limits;
        limits
            .validate()
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        let descriptors = raise_descriptor_limit();
        limits.max_connections =
            clamp_connections(limits.max_connections, limits.reserved_fds, descriptors);

        let framed = bind_listener(config.framed)?;
        let echo_tcp = config.echo_tcp.map(bind_listener).transpose()?;
        let echo_udp = config.echo_udp.map(bind_udp).transpose()?;
        let addrs = BoundAddrs {
            framed: framed.local_addr()?,
            echo_tcp: echo_tcp.as_ref().map(TcpListener::local_addr).transpose()?,
            echo_udp: echo_udp.as_ref().map(UdpSocket::local_addr).transpose()?,
        };
        let sockets = Sockets {
            framed,
            echo_tcp,
            echo_udp,
        };
        let reactor = Reactor::new(sockets, limits, config.handle_signals)?;
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

fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let bind = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(TcpListener::from_std(socket.into()))
    };
    bind().map_err(|error| with_context(error, "TCP", addr))
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr).map_err(|error| with_context(error, "UDP", addr))
}

fn with_context(error: io::Error, what: &str, addr: SocketAddr) -> io::Error {
    io::Error::new(error.kind(), format!("cannot bind {what} {addr}: {error}"))
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
