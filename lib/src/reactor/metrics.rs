//! The loop's side of observability: the metrics port (`--metrics`: its listener and a small
//! fixed table of connections, each answering one HTTP request with the sans-IO
//! [`Exchange`]), the byte counting of client connections ([`Counted`]), and each client
//! connection's tally for its access line at the close ([`ConnTally`]).
//!
//! The metrics port is bounded like everything else: at most [`MAX_METRICS_CONNECTIONS`]
//! open at once (more are closed at accept and counted as refused), each closed once its
//! response is out and the client has closed (a lingering close, so the response is not reset
//! away) or at [`METRICS_TIMEOUT`], whichever comes first, and a request head is bounded by
//! the exchange. It runs in the same loop as the clients: a scrape renders a few KiB, in
//! well under a millisecond.

use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use log::{debug, warn};
use mio::Interest;
use mio::net::{TcpListener, TcpStream};

use super::Core;
use super::token::{Source, TimerKey};
use crate::conn::Protocol;
use crate::metrics::access::{Line, Outcome};
use crate::metrics::http::Exchange;
use crate::metrics::{Gauges, Refusal, RequestKind, Service, render};
use crate::throttle::LogThrottle;
use crate::timer::Tick;
use crate::transport::{Readiness, Transport};

/// Metrics connections open at once. A scraper opens one at a time; a few more leave room for
/// a human with `monoreactor stats` or curl.
pub(crate) const MAX_METRICS_CONNECTIONS: usize = 4;

/// How long a metrics connection may take from accept to its response's last byte.
const METRICS_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read and dropped after a metrics request is decided (the lingering close) before the
/// connection is closed at once: a scraper sends nothing after its request, and a client that
/// keeps sending must not keep the loop reading (it never sees `WouldBlock` from a fast
/// sender, and no timer runs meanwhile).
const MAX_LINGER_BYTES: usize = 64 << 10;

/// The metrics listener and its connections.
#[derive(Debug)]
pub(super) struct MetricsPort {
    listener: TcpListener,
    conns: [Option<Box<MetricsConn>>; MAX_METRICS_CONNECTIONS],
    refuse_log: LogThrottle,
}

/// One metrics connection: its socket, its exchange, its deadline.
#[derive(Debug)]
struct MetricsConn {
    socket: TcpStream,
    exchange: Exchange,
    deadline: Tick,
    /// The client's FIN has been read.
    peer_closed: bool,
    /// Our FIN has been sent, after the answer.
    shut: bool,
    /// Bytes read and dropped since the request was decided ([`MAX_LINGER_BYTES`]).
    lingered: usize,
}

impl MetricsPort {
    /// Registers `listener` in the poll.
    pub(super) fn new(mut listener: TcpListener, registry: &mio::Registry) -> io::Result<Self> {
        registry.register(
            &mut listener,
            Source::MetricsListener.token(),
            Interest::READABLE,
        )?;
        Ok(MetricsPort {
            listener,
            conns: Default::default(),
            refuse_log: LogThrottle::default(),
        })
    }

    /// Metrics connections open now.
    pub(super) fn open(&self) -> usize {
        self.conns.iter().filter(|conn| conn.is_some()).count()
    }
}

impl Core {
    /// The metrics listener is readable: accept what is waiting (at most the accept budget
    /// this turn), into free entries of the table; past its size, close at once.
    pub(super) fn accept_metrics(&mut self) {
        for _ in 0..self.env.limits.accept_budget {
            let Some(port) = self.metrics_port.as_mut() else {
                return;
            };
            let (socket, peer) = match port.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => {
                    // Out of descriptors or the like: the next readiness edge tries again.
                    debug!("metrics accept: {error}");
                    return;
                }
            };
            let Some(index) = port.conns.iter().position(Option::is_none) else {
                self.env.metrics.refused(Refusal::MetricsLimit);
                if let Some(suppressed) = port.refuse_log.allow(self.env.now) {
                    warn!(
                        "metrics: {MAX_METRICS_CONNECTIONS} connections open, refusing {peer} \
                         ({suppressed} more since last report)"
                    );
                }
                drop(socket);
                continue;
            };
            let mut socket = socket;
            let token = Source::Metrics(index as u8).token();
            if let Err(error) = self.env.poll.registry().register(
                &mut socket,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("metrics: register of {peer} failed: {error}");
                continue;
            }
            let deadline = self.env.now.after(METRICS_TIMEOUT);
            port.conns[index] = Some(Box::new(MetricsConn {
                socket,
                exchange: Exchange::default(),
                deadline,
                peer_closed: false,
                shut: false,
                lingered: 0,
            }));
            self.env.metrics.accepted(Service::Metrics);
            self.env
                .timers
                .push(deadline, TimerKey::Metrics(index as u8).pack());
            // Registration reports what is already waiting; nothing to read before it.
        }
        // Budget spent: the rest wait for the next edge (a scraper retries; this port is
        // never worth starving the clients for).
    }

    /// An event for metrics connection `index`: read the request until it is decided, answer
    /// it, write the answer, close once it is out.
    pub(super) fn serve_metrics(&mut self, index: u8) {
        let gauges = self.gauges();
        let Some(port) = self.metrics_port.as_mut() else {
            return;
        };
        let Some(conn) = port
            .conns
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
        else {
            return; // closed earlier in this batch: a spurious event
        };
        let mut read = 0;
        let mut written = 0;
        let mut failed = false;
        // The request until it is decided; after that, whatever else comes is read and
        // dropped until the client closes, so that the close after the answer goes out as a
        // FIN, not as a reset that could destroy the answer (a lingering close, bounded by
        // the connection's deadline).
        let mut buf = [0; 4096];
        while !conn.peer_closed {
            match conn.socket.read(&mut buf) {
                Ok(0) => conn.peer_closed = true,
                Ok(n) => {
                    read += n;
                    if conn.exchange.decided() {
                        conn.lingered += n;
                        if conn.lingered > MAX_LINGER_BYTES {
                            debug!("metrics connection {index}: sends past its request, closed");
                            failed = true;
                            break;
                        }
                        continue;
                    }
                    let metrics = &self.env.metrics;
                    if let Some(request) = conn
                        .exchange
                        .received(&buf[..n], || render(metrics, &gauges))
                    {
                        debug!("metrics connection {index}: {request:?}");
                    }
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        while !failed && !conn.exchange.output().is_empty() {
            match conn.socket.write(conn.exchange.output()) {
                Ok(n) => {
                    written += n;
                    conn.exchange.wrote(n);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => failed = true,
            }
        }
        if conn.exchange.done() && !conn.shut {
            // Everything is in the kernel's hands: FIN after it.
            let _ = conn.socket.shutdown(Shutdown::Write);
            conn.shut = true;
        }
        // Closed: after a failure (or too much sent after the request); when the client went
        // before its request was complete; once the answer is out and the client has closed too.
        let close =
            failed || (conn.peer_closed && (!conn.exchange.decided() || conn.exchange.done()));
        self.env
            .metrics
            .bytes(Service::Metrics, read as u64, written as u64);
        if close {
            port.conns[usize::from(index)] = None;
        }
    }

    /// A metrics connection's deadline: closed if it is still the one it was set for.
    pub(super) fn metrics_timer(&mut self, index: u8, at: Tick) {
        let Some(port) = self.metrics_port.as_mut() else {
            return;
        };
        if let Some(slot) = port.conns.get_mut(usize::from(index)) {
            if slot.as_ref().is_some_and(|conn| conn.deadline == at) {
                debug!("metrics connection {index}: timed out");
                *slot = None;
            }
        }
    }

    /// What a scrape reads from the loop's state rather than from counters.
    pub(super) fn gauges(&self) -> Gauges {
        let udp = self.udp.as_ref().map(|udp| udp.stats());
        Gauges {
            connections: self.conns.len() as u64,
            metrics_connections: self.metrics_port.as_ref().map_or(0, |port| port.open()) as u64,
            commands: self.env.children.len() as u64,
            client_memory_bytes: (self.client_memory_kib as u64) << 10,
            shed: self.stats.shed,
            udp_echoed: udp.map_or(0, |stats| stats.echoed),
            udp_dropped: udp.map_or(0, |stats| stats.dropped_queue_full),
            udp_bytes: udp.map_or((0, 0), |stats| (stats.bytes_in, stats.bytes_out)),
        }
    }

    /// The access line of a client connection at its close (`index` is its slot), from its
    /// tally: a raw echo connection always, a framed one when it sent echo requests (those
    /// have no line each: see docs/ARCHITECTURE.md) or no request at all (a client that
    /// never got as far as one is worth a line too, throttled with the refusals: a client
    /// failing its HELLO can do it at line rate; so is a raw echo connection that sent
    /// nothing).
    pub(super) fn log_connection(&mut self, index: usize, credential: Option<&str>) {
        let (Some(&tally), true) = (self.tallies.get(index), self.conns.contains(index)) else {
            return;
        };
        // A connection that sent nothing to echo, or made no request, says only that it came:
        // its line is throttled (a port scan, a balancer's connect-only health check).
        let request = match tally.protocol {
            Protocol::RawEcho if tally.bytes_in > 0 => "RAW-ECHO".to_string(),
            Protocol::Framed if tally.echoes > 0 => format!("ECHO x{}", tally.echoes),
            Protocol::RawEcho | Protocol::Framed if tally.requests == 0 => {
                let Some(held) = self.env.metrics.refusal_log.allow(self.env.now) else {
                    return;
                };
                if held > 0 {
                    log::info!(
                        target: crate::metrics::access::TARGET,
                        "{held} more refused or failed requests and connections not logged since the last line"
                    );
                }
                match tally.protocol {
                    Protocol::RawEcho => "RAW-ECHO".to_string(),
                    Protocol::Framed => "CONNECTION".to_string(),
                }
            }
            Protocol::Framed | Protocol::RawEcho => return,
        };
        Line {
            // The address every other line names (a PROXY header's, once there is one).
            peer: self.peer(index).addr,
            credential,
            request: &request,
            outcome: Outcome::Closed,
            bytes_in: tally.bytes_in,
            bytes_out: tally.bytes_out,
            millis: self.env.now.0.saturating_sub(tally.opened.0),
        }
        .log();
    }
}

/// What a client connection has done, for its access line at the close: kept beside the slab
/// (by slot index), not in the [`Slot`](super::slots::Slot), whose size every idle
/// connection pays.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConnTally {
    pub(super) opened: Tick,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    /// Framed echo requests.
    pub(super) echoes: u32,
    /// Other framed requests (which have lines of their own).
    pub(super) requests: u16,
    pub(super) protocol: Protocol,
}

impl ConnTally {
    pub(super) fn new(opened: Tick, protocol: Protocol) -> ConnTally {
        ConnTally {
            opened,
            bytes_in: 0,
            bytes_out: 0,
            echoes: 0,
            requests: 0,
            protocol,
        }
    }

    pub(super) fn service(&self) -> Service {
        match self.protocol {
            Protocol::Framed => Service::Framed,
            Protocol::RawEcho => Service::RawEcho,
        }
    }
}

/// The echo requests and the other requests counted so far, to take a drive's share of them
/// as a difference.
pub(super) fn request_marks(metrics: &crate::metrics::Metrics) -> (u64, u64) {
    let echoes = metrics.requests[RequestKind::Echo as usize];
    (echoes, metrics.requests.iter().sum::<u64>() - echoes)
}

/// A transport that counts the bytes through it: a connection's drive goes through one, so
/// the bytes in and out are counted without the connection knowing (a TLS connection's are
/// its plaintext).
pub(super) struct Counted<'a, T> {
    pub(super) inner: &'a mut T,
    pub(super) read: u64,
    pub(super) written: u64,
}

impl<'a, T> Counted<'a, T> {
    pub(super) fn new(inner: &'a mut T) -> Self {
        Counted {
            inner,
            read: 0,
            written: 0,
        }
    }
}

impl<T: Read> Read for Counted<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<T: Write> Write for Counted<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Transport> Transport for Counted<'_, T> {
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.inner.shutdown_write()
    }

    fn send_file(&mut self, file: &std::fs::File, offset: u64, len: usize) -> io::Result<usize> {
        let n = self.inner.send_file(file, offset, len)?;
        self.written += n as u64;
        Ok(n)
    }

    fn send_pending(&mut self) -> io::Result<()> {
        self.inner.send_pending()
    }

    fn wants(&self) -> Readiness {
        self.inner.wants()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream as StdTcpStream;

    use super::super::{Reactor, Setup, Sockets};
    use super::*;
    use crate::access::Access;
    use crate::limits::Limits;

    /// A reactor with a metrics port, and that port's address.
    fn reactor() -> (Reactor, std::net::SocketAddr) {
        let localhost = "127.0.0.1:0".parse().unwrap();
        let metrics = TcpListener::bind(localhost).unwrap();
        let addr = metrics.local_addr().unwrap();
        let setup = Setup {
            sockets: Sockets {
                framed: TcpListener::bind(localhost).unwrap(),
                echo_tcp: None,
                echo_udp: None,
                metrics: Some(metrics),
            },
            limits: Limits::default(),
            access: Access::ECHO_ONLY,
            root: None,
            files: false,
            handle_signals: false,
            disk_helper: None,
            tls: None,
            reload: crate::reload::Reload::default(),
            lifecycle: None,
            proxy: crate::transport::proxy::ProxyPolicy::default(),
        };
        (Reactor::new(setup).unwrap(), addr)
    }

    /// Accepts what is waiting, retrying until the kernel has queued `count` connections.
    fn accept(core: &mut Core, count: usize) {
        for _ in 0..200 {
            core.accept_metrics();
            let open = core.metrics_port.as_ref().map_or(0, MetricsPort::open);
            let refused = core.env.metrics.refused[Refusal::MetricsLimit as usize] as usize;
            if open + refused >= count {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("{count} metrics connections were not accepted");
    }

    #[test]
    fn a_silent_metrics_connection_is_closed_at_its_deadline() {
        let (mut reactor, addr) = reactor();
        let core = &mut reactor.core;
        let mut client = StdTcpStream::connect(addr).unwrap();
        accept(core, 1);
        let port = core.metrics_port.as_ref().unwrap();
        let deadline = port.conns[0].as_ref().unwrap().deadline;
        // A stale entry (another deadline) closes nothing.
        core.metrics_timer(0, Tick(deadline.0 - 1));
        assert_eq!(core.metrics_port.as_ref().unwrap().open(), 1);
        core.metrics_timer(0, deadline);
        assert_eq!(core.metrics_port.as_ref().unwrap().open(), 0);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0; 16];
        assert_eq!(
            client.read(&mut buf).unwrap(),
            0,
            "closed without an answer"
        );
    }

    #[test]
    fn a_fifth_metrics_connection_is_closed_and_counted() {
        let (mut reactor, addr) = reactor();
        let core = &mut reactor.core;
        let clients: Vec<StdTcpStream> = (0..=MAX_METRICS_CONNECTIONS)
            .map(|_| StdTcpStream::connect(addr).unwrap())
            .collect();
        accept(core, clients.len());
        assert_eq!(
            core.metrics_port.as_ref().unwrap().open(),
            MAX_METRICS_CONNECTIONS
        );
        assert_eq!(core.env.metrics.refused[Refusal::MetricsLimit as usize], 1);
        assert_eq!(
            core.env.metrics.accepted[Service::Metrics as usize],
            MAX_METRICS_CONNECTIONS as u64
        );
    }

    #[test]
    fn a_request_is_answered_and_the_connection_closes_after_the_client() {
        let (mut reactor, addr) = reactor();
        let core = &mut reactor.core;
        let mut client = StdTcpStream::connect(addr).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        accept(core, 1);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        // Readiness is the poll's business; serving without it just finds what is there.
        let mut answer = Vec::new();
        for _ in 0..200 {
            core.serve_metrics(0);
            if core.metrics_port.as_ref().unwrap().conns[0]
                .as_ref()
                .is_some_and(|conn| conn.exchange.done())
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        client.read_to_end(&mut answer).unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
        // Still open until the client's FIN is read: a lingering close.
        assert_eq!(core.metrics_port.as_ref().unwrap().open(), 1);
        drop(client);
        for _ in 0..200 {
            core.serve_metrics(0);
            if core.metrics_port.as_ref().unwrap().open() == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("not closed after the client's FIN");
    }

    #[test]
    fn a_connections_tally_costs_32_bytes() {
        // The idle-connection cost in README and docs/ARCHITECTURE.md counts these.
        assert!(std::mem::size_of::<ConnTally>() <= 32);
    }
}
