//! The UDP echo: the reactor's one datagram socket, answered in batches.
//!
//! A datagram echo is nothing but its socket, so it lives here, beside the loop that polls it,
//! rather than among the services: [`UdpEcho`] owns the socket (any [`Datagrams`], so its
//! queue logic is tested with a scripted one), receives with `recvmmsg` and sends with
//! `sendmmsg` ([`crate::sys::mmsg`]), and keeps a bounded queue of replies the socket would not
//! take. Which datagrams are answered at all is the echo service's rule
//! ([`check_datagram`]).

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::AsFd;

use log::{debug, warn};
use mio::Interest;

use super::{Core, Source};
use crate::conn::Verdict;
use crate::limits::Limits;
use crate::service::echo::{MAX_DATAGRAM, Unanswered, check_datagram};
use crate::sys::mmsg::{self, BATCH};
use crate::throttle::LogThrottle;
use crate::timer::Tick;

/// A datagram socket, as [`UdpEcho`] uses it. Implemented by `mio::net::UdpSocket` (with
/// `recvmmsg`/`sendmmsg`); tests substitute a scripted one, for which the batch methods'
/// defaults call the single ones.
pub(super) trait Datagrams {
    /// Receives one datagram (see `UdpSocket::recv_from`).
    fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    /// Sends one datagram (see `UdpSocket::send_to`).
    fn send_to(&mut self, buf: &[u8], target: SocketAddr) -> io::Result<usize>;

    /// Receives up to `bufs.len()` datagrams, one per buffer, recording each length and sender
    /// in `got`. Returns how many (at least one), or the first one's error (`WouldBlock` when
    /// none waits).
    fn recv_many(
        &mut self,
        bufs: &mut [Box<[u8]>],
        got: &mut [(usize, SocketAddr)],
    ) -> io::Result<usize> {
        let mut count = 0;
        while count < bufs.len().min(got.len()) {
            match self.recv_from(&mut bufs[count]) {
                Ok(datagram) => got[count] = datagram,
                Err(error) if count == 0 => return Err(error),
                Err(_) => break,
            }
            count += 1;
        }
        Ok(count)
    }

    /// Sends `msgs` in order. Returns how many went (fewer: the next would block or failed,
    /// and says which when sent again), or the first one's error.
    fn send_many(&mut self, msgs: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
        let mut count = 0;
        for &(payload, target) in msgs {
            match self.send_to(payload, target) {
                Ok(_) => count += 1,
                Err(error) if count == 0 => return Err(error),
                Err(_) => break,
            }
        }
        Ok(count)
    }
}

impl Datagrams for mio::net::UdpSocket {
    fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        mio::net::UdpSocket::recv_from(self, buf)
    }

    fn send_to(&mut self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        mio::net::UdpSocket::send_to(self, buf, target)
    }

    fn recv_many(
        &mut self,
        bufs: &mut [Box<[u8]>],
        got: &mut [(usize, SocketAddr)],
    ) -> io::Result<usize> {
        mmsg::recv_many(self.as_fd(), bufs, got)
    }

    fn send_many(&mut self, msgs: &[(&[u8], SocketAddr)]) -> io::Result<usize> {
        mmsg::send_many(self.as_fd(), msgs)
    }
}

/// Counters for the UDP echo, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct UdpStats {
    /// Datagrams sent back.
    pub echoed: u64,
    /// Replies dropped because the queue was full.
    pub dropped_queue_full: u64,
    /// Datagrams ignored because of their source port.
    pub refused_source_port: u64,
    /// Replies that failed to send for another reason.
    pub send_errors: u64,
    /// Payload bytes received (for the metrics).
    pub bytes_in: u64,
    /// Payload bytes sent back.
    pub bytes_out: u64,
}

/// UDP echo over any [`Datagrams`] socket.
///
/// Call order: [`UdpEcho::on_ready`] with what the poll reported, then [`UdpEcho::drive`];
/// re-register when [`UdpEcho::interest`] changes. A reply that cannot be sent now
/// (`WouldBlock`) waits in a bounded queue and goes out on the next WRITABLE; when the queue is
/// full, the reply is dropped and counted: UDP promises nothing, and memory stays bounded.
#[derive(Debug)]
pub(super) struct UdpEcho<S> {
    socket: S,
    /// One receive buffer per datagram of a batch; a buffer's pages are touched only as far
    /// as its datagrams reach, so small datagrams cost one page each.
    datagrams: Vec<Box<[u8]>>,
    /// Length and sender of each datagram of the last batch.
    got: Vec<(usize, SocketAddr)>,
    queue: VecDeque<(SocketAddr, Box<[u8]>)>,
    queued_bytes: usize,
    read_ready: bool,
    write_ready: bool,
    stats: UdpStats,
    drop_log: LogThrottle,
}

impl<S: Datagrams> UdpEcho<S> {
    /// Echoes on `socket`. The receive buffers are allocated once, here.
    pub(super) fn new(socket: S) -> UdpEcho<S> {
        UdpEcho {
            socket,
            // One byte more than the largest datagram, so a larger (IPv6) one shows as truncated
            // instead of being echoed cut short.
            datagrams: (0..BATCH)
                .map(|_| vec![0; MAX_DATAGRAM + 1].into_boxed_slice())
                .collect(),
            got: vec![(0, SocketAddr::from(([0, 0, 0, 0], 0))); BATCH],
            queue: VecDeque::new(),
            queued_bytes: 0,
            read_ready: true,
            write_ready: true,
            stats: UdpStats::default(),
            drop_log: LogThrottle::default(),
        }
    }

    /// The socket, for registering with the poll.
    pub(super) fn socket_mut(&mut self) -> &mut S {
        &mut self.socket
    }

    /// Counters so far.
    pub(super) fn stats(&self) -> UdpStats {
        self.stats
    }

    /// Replies waiting for the socket to become writable.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Records readiness reported by the poll.
    pub(super) fn on_ready(&mut self, readable: bool, writable: bool) {
        self.read_ready |= readable;
        self.write_ready |= writable;
    }

    /// READABLE always; WRITABLE only while replies wait, since a UDP socket is nearly always
    /// writable and would otherwise wake the loop for nothing.
    pub(super) fn interest(&self) -> Interest {
        if self.queue.is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        }
    }

    /// Sends queued replies, then receives and echoes up to the turn's datagram budget, a
    /// batch (`recvmmsg`, then `sendmmsg`) at a time. Returns [`Verdict::Again`] if the budget
    /// ran out with datagrams possibly left.
    pub(super) fn drive(&mut self, limits: &Limits, now: Tick) -> Verdict {
        self.send_queued();
        let mut budget = limits.datagram_budget;
        while self.read_ready {
            if budget == 0 {
                return Verdict::Again;
            }
            let want = budget.min(BATCH);
            match self
                .socket
                .recv_many(&mut self.datagrams[..want], &mut self.got[..want])
            {
                Ok(received) => {
                    budget -= received;
                    // Fewer than asked: the queue is drained. Each datagram that arrives later
                    // raises a new readiness edge, so no second call is needed to see
                    // `WouldBlock`.
                    if received < want {
                        self.read_ready = false;
                    }
                    self.echo_batch(received, limits, now);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => self.read_ready = false,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => {
                    // Wait for the next readiness event rather than retry: an error that
                    // persists would otherwise keep the socket on the ready list, and the loop
                    // polling with a zero timeout, forever.
                    self.read_ready = false;
                    debug!("udp echo: receive failed: {error}");
                }
            }
        }
        Verdict::Wait
    }

    /// Echoes the first `received` datagrams of the batch: sent back together while the
    /// socket takes them, queued (bounded) when it would block, dropped past the queue.
    fn echo_batch(&mut self, received: usize, limits: &Limits, now: Tick) {
        let mut replies: [(&[u8], SocketAddr); BATCH] =
            [(&[], SocketAddr::from(([0, 0, 0, 0], 0))); BATCH];
        let mut count = 0;
        for (buf, &(len, source)) in self.datagrams.iter().zip(&self.got[..received]) {
            self.stats.bytes_in += len as u64;
            match check_datagram(source, len) {
                Ok(()) => {}
                Err(Unanswered::SourcePort) => {
                    self.stats.refused_source_port += 1;
                    continue;
                }
                Err(Unanswered::TooLarge) => {
                    debug!(
                        "udp echo: datagram from {source} larger than {MAX_DATAGRAM} bytes, ignored"
                    );
                    continue;
                }
            }
            replies[count] = (&buf[..len], source);
            count += 1;
        }
        let mut sent = 0;
        while sent < count && self.queue.is_empty() && self.write_ready {
            match self.socket.send_many(&replies[sent..count]) {
                Ok(n) => {
                    self.stats.echoed += n as u64;
                    self.stats.bytes_out += replies[sent..sent + n]
                        .iter()
                        .map(|(payload, _)| payload.len() as u64)
                        .sum::<u64>();
                    sent += n;
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => self.write_ready = false,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => {
                    // That reply cannot go (its target refuses it); the others may.
                    self.stats.send_errors += 1;
                    debug!("udp echo: send to {} failed: {error}", replies[sent].1);
                    sent += 1;
                }
            }
        }
        for &(payload, source) in &replies[sent..count] {
            if self.queue.len() >= limits.udp_queue_len
                || self.queued_bytes + payload.len() > limits.udp_queue_bytes
            {
                self.stats.dropped_queue_full += 1;
                if let Some(suppressed) = self.drop_log.allow(now) {
                    warn!(
                        "udp echo: reply queue full, dropping replies ({suppressed} more since last report)"
                    );
                }
                continue;
            }
            self.queued_bytes += payload.len();
            self.queue.push_back((source, payload.into()));
        }
    }

    fn send_queued(&mut self) {
        while self.write_ready {
            let Some((target, payload)) = self.queue.pop_front() else {
                break;
            };
            match self.socket.send_to(&payload, target) {
                Ok(_) => {
                    self.stats.echoed += 1;
                    self.stats.bytes_out += payload.len() as u64;
                    self.queued_bytes -= payload.len();
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    self.write_ready = false;
                    self.queue.push_front((target, payload));
                }
                Err(error) if error.kind() == ErrorKind::Interrupted => {
                    self.queue.push_front((target, payload));
                }
                Err(error) => {
                    self.stats.send_errors += 1;
                    self.queued_bytes -= payload.len();
                    debug!("udp echo: send to {target} failed: {error}");
                }
            }
        }
    }
}

impl Core {
    /// The UDP socket is ready (or on the ready list): echo what the turn's budget allows, and
    /// re-register if the interest changed.
    pub(super) fn serve_udp(&mut self, readable: bool, writable: bool) {
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        udp.on_ready(readable, writable);
        if udp.drive(&self.env.limits, self.env.now) == Verdict::Again {
            self.queue_static(Source::Udp);
        }
        let Some(udp) = self.udp.as_mut() else {
            return;
        };
        let wanted = udp.interest();
        if wanted != self.udp_registered {
            match self
                .env
                .poll
                .registry()
                .reregister(udp.socket_mut(), Source::Udp.token(), wanted)
            {
                Ok(()) => self.udp_registered = wanted,
                Err(error) => warn!("re-register of the UDP socket failed: {error}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that delivers scripted datagrams and accepts `send_capacity` sends before
    /// answering `WouldBlock`.
    struct FakeSocket {
        incoming: VecDeque<(Vec<u8>, SocketAddr)>,
        sent: Vec<(Vec<u8>, SocketAddr)>,
        send_capacity: usize,
        /// When set, every receive fails with this error.
        receive_error: Option<ErrorKind>,
        receives: usize,
    }

    impl Datagrams for FakeSocket {
        fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
            self.receives += 1;
            if let Some(kind) = self.receive_error {
                return Err(kind.into());
            }
            let (bytes, from) = self.incoming.pop_front().ok_or(ErrorKind::WouldBlock)?;
            buf[..bytes.len()].copy_from_slice(&bytes);
            Ok((bytes.len(), from))
        }

        fn send_to(&mut self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
            if self.sent.len() == self.send_capacity {
                return Err(ErrorKind::WouldBlock.into());
            }
            self.sent.push((buf.to_vec(), target));
            Ok(buf.len())
        }
    }

    fn from_port(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn echo_with(
        incoming: Vec<(Vec<u8>, SocketAddr)>,
        send_capacity: usize,
    ) -> UdpEcho<FakeSocket> {
        UdpEcho::new(FakeSocket {
            incoming: incoming.into(),
            sent: Vec::new(),
            send_capacity,
            receive_error: None,
            receives: 0,
        })
    }

    #[test]
    fn echoes_each_datagram_to_its_sender() {
        let mut echo = echo_with(
            vec![
                (b"a".to_vec(), from_port(5000)),
                (b"bc".to_vec(), from_port(5001)),
            ],
            10,
        );
        assert_eq!(echo.drive(&Limits::default(), Tick(0)), Verdict::Wait);
        assert_eq!(
            echo.socket.sent,
            vec![
                (b"a".to_vec(), from_port(5000)),
                (b"bc".to_vec(), from_port(5001))
            ]
        );
        assert_eq!(echo.stats().echoed, 2);
    }

    #[test]
    fn never_replies_to_ports_0_7_19() {
        let incoming = [0, 7, 19]
            .map(|port| (b"loop".to_vec(), from_port(port)))
            .to_vec();
        let mut echo = echo_with(incoming, 10);
        echo.drive(&Limits::default(), Tick(0));
        assert!(echo.socket.sent.is_empty());
        assert_eq!(echo.stats().refused_source_port, 3);
    }

    #[test]
    fn queues_when_send_would_block_then_drops_when_full() {
        let limits = Limits {
            udp_queue_len: 2,
            ..Limits::default()
        };
        let incoming = (0..5u8).map(|i| (vec![i], from_port(6000))).collect();
        let mut echo = echo_with(incoming, 1);
        echo.drive(&limits, Tick(0));
        assert_eq!(echo.socket.sent.len(), 1);
        assert_eq!(echo.queued(), 2);
        assert_eq!(echo.stats().dropped_queue_full, 2);
        assert_eq!(echo.interest(), Interest::READABLE | Interest::WRITABLE);

        echo.socket.send_capacity = 10;
        echo.on_ready(false, true);
        echo.drive(&limits, Tick(1));
        let payloads: Vec<Vec<u8>> = echo.socket.sent.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(
            payloads,
            vec![vec![0], vec![1], vec![2]],
            "queued replies keep their order"
        );
        assert_eq!(echo.interest(), Interest::READABLE);
    }

    #[test]
    fn persistent_receive_error_waits_for_the_next_event_instead_of_spinning() {
        let mut echo = echo_with(vec![], 10);
        echo.socket.receive_error = Some(ErrorKind::OutOfMemory);
        assert_eq!(echo.drive(&Limits::default(), Tick(0)), Verdict::Wait);
        assert_eq!(echo.socket.receives, 1);
        assert_eq!(echo.drive(&Limits::default(), Tick(1)), Verdict::Wait);
        assert_eq!(
            echo.socket.receives, 1,
            "no retry without a new readiness event"
        );
        echo.on_ready(true, false);
        echo.drive(&Limits::default(), Tick(2));
        assert_eq!(echo.socket.receives, 2);
    }

    #[test]
    fn a_batch_skips_refused_senders_and_keeps_the_order_of_the_rest() {
        let incoming = vec![
            (b"1".to_vec(), from_port(5000)),
            (b"x".to_vec(), from_port(7)),
            (b"2".to_vec(), from_port(5001)),
            (vec![0; MAX_DATAGRAM + 1], from_port(5002)),
            (b"3".to_vec(), from_port(5003)),
        ];
        let mut echo = echo_with(incoming, 10);
        assert_eq!(echo.drive(&Limits::default(), Tick(0)), Verdict::Wait);
        let sent: Vec<(Vec<u8>, u16)> = echo
            .socket
            .sent
            .iter()
            .map(|(payload, to)| (payload.clone(), to.port()))
            .collect();
        assert_eq!(
            sent,
            vec![
                (b"1".to_vec(), 5000),
                (b"2".to_vec(), 5001),
                (b"3".to_vec(), 5003)
            ]
        );
        assert_eq!(echo.stats().refused_source_port, 1);
    }

    #[test]
    fn budget_bounds_one_turn() {
        let limits = Limits {
            datagram_budget: 3,
            ..Limits::default()
        };
        let incoming = (0..5u8).map(|i| (vec![i], from_port(6000))).collect();
        let mut echo = echo_with(incoming, 10);
        assert_eq!(echo.drive(&limits, Tick(0)), Verdict::Again);
        assert_eq!(echo.socket.sent.len(), 3);
        assert_eq!(echo.drive(&limits, Tick(0)), Verdict::Wait);
        assert_eq!(echo.socket.sent.len(), 5);
    }
}
