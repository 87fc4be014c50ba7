//! Accepting connections: the listeners' events, admission against the connection limit,
//! refusals, and shedding when the process is out of descriptors.

use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;

use log::{debug, error, warn};
use mio::net::{TcpListener, TcpStream};

use super::metrics::ConnTally;
use super::slots::Slot;
use super::token::{ConnKey, Source, TimerKey};
use super::{ACCEPT_RETRY, Core, REFUSE_DRAIN_BYTES, poll_interest, socket_wants};
use crate::conn::{Connection, Protocol};
use crate::metrics::Refusal;
use crate::proto::ErrorCode;
use crate::transport::proxy::ProxyPrelude;
use crate::transport::tls::TlsSession;

impl Core {
    pub(super) fn accept(&mut self, source: Source) {
        if self.accept_some(source) {
            // Budget spent and the backlog may hold more: next turn, without waiting for an
            // event.
            self.queue_static(source);
        }
    }

    /// Accepts until the backlog is empty (or accepting fails): at shutdown, before the
    /// listener is closed. Bounded by the backlog's length, which nothing refills once this
    /// turn ends.
    pub(super) fn accept_backlog(&mut self, source: Source) {
        while self.listener(source).is_some() && self.accept_some(source) {}
    }

    /// Accepts up to the accept budget; true if the budget ran out (the backlog may hold
    /// more).
    fn accept_some(&mut self, source: Source) -> bool {
        if self.accept_paused {
            return false;
        }
        let protocol = if source == Source::FramedListener {
            Protocol::Framed
        } else {
            Protocol::RawEcho
        };
        for _ in 0..self.env.limits.accept_budget {
            let Some(listener) = self.listener(source) else {
                return false;
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, protocol),
                Err(error) if error.kind() == ErrorKind::WouldBlock => return false,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if is_out_of_descriptors(&error) => {
                    match self.shed_with_spare_fd(source, protocol) {
                        Shed::Refused => {}
                        Shed::BacklogEmpty => return false,
                        Shed::NoDescriptor => {
                            self.pause_accepting();
                            return false;
                        }
                    }
                }
                Err(error) if is_per_connection_error(&error) => {
                    debug!("accept: {error} (connection dropped by the network)");
                }
                Err(error) => {
                    error!("accept failed: {error}; pausing accept for {ACCEPT_RETRY:?}");
                    self.pause_accepting();
                    return false;
                }
            }
        }
        true
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, protocol: Protocol) {
        if self.conns.len() >= self.env.limits.max_connections {
            if let Some(suppressed) = self.refuse_log.allow(self.env.now) {
                warn!(
                    "connection limit ({}) reached: refusing {peer} ({suppressed} more refused since last report)",
                    self.env.limits.max_connections
                );
            }
            self.env.metrics.refused(Refusal::ConnectionLimit);
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
        let conn = Connection::new(protocol, self.env.now, &self.env.limits);
        // Only the framed listener speaks TLS; the raw echo stays plaintext. A fresh session
        // wants nothing the connection does not (READABLE), and holds no buffer yet.
        let session = match (&self.tls_config, protocol) {
            (Some(config), Protocol::Framed) => Some(Box::new(TlsSession::new(Arc::clone(config)))),
            _ => None,
        };
        let registered = socket_wants(&conn, &stream);
        // Registration reports bytes that are already waiting, so there is nothing to drive
        // yet; only the first deadline (hello or idle) needs arming.
        let deadline = conn.deadline(&self.env.limits);
        let mut socket = stream;
        let interest = poll_interest(registered);
        if let Err(error) = self
            .env
            .poll
            .registry()
            .register(&mut socket, key.socket(), interest)
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
            addr: peer.into(),
            prelude: self.proxy.expect_for(peer.ip()).map(ProxyPrelude::new),
            health_check: false,
            loopback: is_loopback(peer.ip()),
        });
        let index = key.slot as usize;
        if self.tls.len() <= index && session.is_some() {
            self.tls.resize_with(index + 1, || None);
        }
        if let Some(entry) = self.tls.get_mut(index) {
            *entry = session;
        }
        self.stats.accepted += 1;
        let tally = ConnTally::new(self.env.now, protocol);
        self.env.metrics.accepted(tally.service());
        if self.tallies.len() <= index {
            // Grown with the slab's high-water mark, by doubling: never in steady state.
            self.tallies.resize(index + 1, tally);
        }
        self.tallies[index] = tally;
        debug!(
            "accepted {peer} ({protocol:?}) as slot {} generation {}",
            key.slot, key.generation
        );
        self.env.timers.push(deadline, TimerKey::Conn(key).pack());
    }

    /// Turns a client away: framed clients get SERVER_BUSY. Shutting the write side and reading
    /// what the client already sent lets the close go out as FIN, not a reset that could
    /// destroy the error frame.
    fn refuse(&mut self, stream: TcpStream, protocol: Protocol) {
        self.stats.refused += 1;
        let mut stream = stream;
        let frame: &[u8] = if protocol == Protocol::Framed {
            self.env.metrics.error(ErrorCode::ServerBusy);
            &self.busy_frame
        } else {
            &[]
        };
        turn_away(&mut stream, frame);
    }

    /// Out of descriptors: free the spare, accept one connection with it and turn it away,
    /// take the spare back. Keeps the backlog moving (clients hear "busy" instead of hanging)
    /// without spinning: each call consumes one pending connection, or finds none.
    fn shed_with_spare_fd(&mut self, source: Source, protocol: Protocol) -> Shed {
        if let Some(suppressed) = self.emfile_log.allow(self.env.now) {
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
                self.env.metrics.refused(Refusal::Descriptors);
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
            self.env.timers.push(
                self.env.now.after(ACCEPT_RETRY),
                TimerKey::AcceptRetry.pack(),
            );
        }
    }

    pub(super) fn resume_accepting(&mut self) {
        self.accept_paused = false;
        if self.spare_fd.is_none() {
            self.spare_fd = open_spare_fd();
        }
        // Connections may have queued in the backlog without a new edge: look now.
        self.queue_static(Source::FramedListener);
        self.queue_static(Source::EchoListener);
    }
}

/// Writes `frame` (if not empty) to a connection being turned away, shuts the write side, and
/// reads what the client already sent, so that the close goes out as FIN, not a reset that
/// could destroy the frame. A fresh socket's send buffer takes the frame whole.
pub(super) fn turn_away(stream: &mut TcpStream, frame: &[u8]) {
    if !frame.is_empty() {
        let _ = stream.write(frame);
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
pub(super) fn open_spare_fd() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Whether `ip` is this machine: 127.0.0.0/8, ::1, or an IPv4 loopback address mapped into
/// IPv6 (::ffff:127.x.y.z, what a dual-stack listener sees from 127.0.0.1).
pub(super) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
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
