//! The slab of connections: serving an event, driving a connection and applying its verdict,
//! deferred closing, and the connection timers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

use log::{debug, trace, warn};
use mio::net::TcpStream;
use slab::Slab;

use super::accept::{is_loopback, turn_away};
use super::metrics::{Counted, request_marks};
use super::token::{ConnKey, Source, Sub, TimerKey};
use super::{Core, TIMER_SLACK, poll_interest, socket_wants};
use crate::conn::{Connection, SHUTTING_DOWN_TEXT, State, Verdict};
use crate::proto::proxy::ProxyHeader;
use crate::proto::{ErrorCode, ErrorMessage};
use crate::timer::Tick;
use crate::transport::proxy::{Prelude, PreludeError, ProxyPrelude};
use crate::transport::tls::TlsSession;
use crate::transport::{Peer, Readiness, Transport};

/// The ERROR text of a connection closed to bring the client buffers under the budget.
const SHED_TEXT: &str = "the server's memory for client buffers is full (--max-client-memory)";

/// A slab entry: the socket, its state machine, and the loop's bookkeeping for it.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) socket: TcpStream,
    pub(super) conn: Connection,
    pub(super) generation: u32,
    /// The readiness the socket is registered for, to re-register only on change.
    pub(super) registered: Readiness,
    /// Deadline of this slot's live entry in the timer queue ([`Tick::NEVER`]: none).
    pub(super) armed: Tick,
    /// On the ready list already.
    pub(super) queued: bool,
    /// Marked for closing at the end of the batch.
    pub(super) closing: bool,
    /// The client's address: the `addr` of its [`Peer`] (the socket's peer, until a PROXY
    /// header names the client).
    pub(super) addr: PackedAddr,
    /// A PROXY header may still come first: until it is taken off the socket (or ruled
    /// out), nothing else reads the socket.
    pub(super) prelude: Option<ProxyPrelude>,
    /// The PROXY header said this is the balancer's health check ([`Peer::health_check`]).
    pub(super) health_check: bool,
    /// [`Peer::loopback`], decided once (at the accept, then again at the PROXY header)
    /// rather than at every drive: the client's address is a loopback one and, behind a
    /// balancer, the balancer is on this machine too (a header that names no client is never
    /// loopback: the client's bytes are not known to have stayed here).
    pub(super) loopback: bool,
}

/// A client's address in 18 bytes with no padding (a `SocketAddr` takes 32): kept in every
/// slot, so an idle connection's cost stays small. An IPv4 address is stored mapped into
/// IPv6 (`::ffff:a.b.c.d`) and comes back as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PackedAddr {
    ip: [u8; 16],
    port: [u8; 2],
}

impl From<SocketAddr> for PackedAddr {
    fn from(addr: SocketAddr) -> PackedAddr {
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        PackedAddr {
            ip: ip.octets(),
            port: addr.port().to_ne_bytes(),
        }
    }
}

/// The first 12 bytes of an IPv4 address mapped into IPv6 (`::ffff:0:0/96`).
const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

impl From<PackedAddr> for SocketAddr {
    /// Runs at every drive (the [`Peer`] is built each time), so it compares bytes rather
    /// than going through `Ipv6Addr::to_ipv4_mapped`, which converts to segments first and
    /// made this a tenth of a framed echo's instructions.
    #[inline]
    fn from(packed: PackedAddr) -> SocketAddr {
        let port = u16::from_ne_bytes(packed.port);
        match packed.ip.split_first_chunk::<12>() {
            Some((prefix, &[a, b, c, d])) if *prefix == V4_MAPPED_PREFIX => {
                SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), port))
            }
            _ => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(packed.ip)), port),
        }
    }
}

/// The KiB a connection was last counted for: its buffers and its TLS session's.
fn held_kib(tls: &[Option<Box<TlsSession>>], index: usize, slot: &Slot) -> usize {
    let session = tls.get(index).and_then(Option::as_deref);
    usize::from(slot.conn.reported_buffer_kib())
        + session.map_or(0, |session| usize::from(session.reported_kib))
}

/// A TLS session's buffers in KiB, as counted in the client-memory total: none once its
/// connection is closing (or closed), since it is on its way out (and counting it would make the shedding
/// close one more connection for memory already being freed).
fn tls_kib(session: &TlsSession, conn: &Connection) -> u16 {
    if matches!(conn.state(), State::Closing | State::Closed) {
        return 0;
    }
    u16::try_from(session.buffer_bytes().div_ceil(1024)).unwrap_or(u16::MAX)
}

/// The slot for `key`, unless it was closed (or marked for closing) since the token was issued.
pub(super) fn live_slot(conns: &mut Slab<Slot>, key: ConnKey) -> Option<&mut Slot> {
    conns
        .get_mut(key.slot as usize)
        .filter(|slot| slot.generation == key.generation && !slot.closing)
}

impl Core {
    /// An event for one of a connection's descriptors: record the readiness where it belongs,
    /// and put the connection on this turn's ready list (once), to be driven after the batch's
    /// events. A connection with several events in a batch — its socket and its commands'
    /// pipes — is driven once, with one budget.
    pub(super) fn serve_conn(
        &mut self,
        key: ConnKey,
        sub: Sub,
        readable: bool,
        writable: bool,
        read_closed: bool,
    ) {
        let Some(slot) = live_slot(&mut self.conns, key) else {
            trace!("stale or closing token {key:?} ignored");
            return;
        };
        match sub {
            Sub::Socket => {
                slot.conn.on_ready(readable, writable);
                if read_closed {
                    slot.conn.on_read_closed();
                    if let Some(prelude) = slot.prelude.as_mut() {
                        prelude.on_read_closed();
                    }
                }
            }
            Sub::Child(index, source) => slot.conn.on_child_ready(index, source),
        }
        // Already on a ready list: it is driven there, with the readiness just recorded.
        if !slot.queued {
            slot.queued = true;
            self.ready_now.push(Source::Conn(key, Sub::Socket));
        }
    }

    /// Who connection `index` is talking to, for its [`Context`](crate::conn::Context).
    pub(super) fn peer(&self, index: usize) -> Peer {
        let Some(slot) = self.conns.get(index) else {
            return Peer::LOCAL;
        };
        let (addr, loopback, health_check) = (slot.addr.into(), slot.loopback, slot.health_check);
        match self.tls.get(index).and_then(Option::as_deref) {
            None => Peer {
                addr,
                encrypted: false,
                loopback,
                client_key: None,
                health_check,
            },
            Some(session) => Peer {
                addr,
                encrypted: session.is_established(),
                loopback,
                client_key: session.client_key(),
                health_check,
            },
        }
    }

    /// Looks for the PROXY header of connection `key` (see `transport/proxy.rs`); true once
    /// the connection may be driven: the header is gone (its client's address now in the
    /// slot) or there was none. A connection refused over its header is turned away here: a
    /// framed one with an ERROR frame, a raw echo one with nothing.
    fn run_prelude(&mut self, key: ConnKey) -> bool {
        let index = key.slot as usize;
        let Some(slot) = self.conns.get_mut(index) else {
            return false;
        };
        let Some(mut prelude) = slot.prelude.take() else {
            return true;
        };
        let proxy = SocketAddr::from(slot.addr);
        let framed = slot.conn.state() == State::AwaitingHello;
        match prelude.advance(&mut slot.socket) {
            // Shutting down, and no whole header has come (nothing at all, or part of one):
            // the client sent no request there is to answer, so it is told at once, as a
            // connection that sent nothing is without the PROXY protocol, rather than left
            // to hold the shutdown for the grace period and be closed without a word. A TLS
            // connection keeps waiting for its bytes, as its handshake would without the
            // header (and a plaintext frame is no answer to a TLS client).
            Prelude::NeedMore
                if self.shutdown_deadline.is_some()
                    && self.tls.get(index).is_none_or(Option::is_none) =>
            {
                debug!("slot {index}: {proxy}: shutting down before a whole PROXY header came");
                self.turn_away_slot(
                    index,
                    framed.then_some((ErrorCode::ShuttingDown, SHUTTING_DOWN_TEXT)),
                );
                false
            }
            Prelude::NeedMore => {
                slot.prelude = Some(prelude);
                false
            }
            Prelude::Closed => {
                debug!("slot {index}: {proxy} closed before sending anything");
                self.mark_closing(index);
                false
            }
            // The socket failed (a reset): nobody to tell, nothing to report above debug.
            Prelude::Failed(PreludeError::Io(error)) => {
                debug!("slot {index}: {proxy}: {error}");
                self.mark_closing(index);
                false
            }
            Prelude::Failed(error) => {
                if let Some(suppressed) = self.proxy_log.allow(self.env.now) {
                    warn!(
                        "{proxy}: {error}; {} ({suppressed} more since last report)",
                        if framed {
                            "told BAD_HELLO and closed"
                        } else {
                            "closed"
                        }
                    );
                }
                let text = format!("{error} (this server's --proxy-protocol and --proxy-from)");
                self.turn_away_slot(index, framed.then_some((ErrorCode::BadHello, &text)));
                false
            }
            Prelude::Done(header) => {
                if let Some(header) = header {
                    // Loopback means the bytes never left this machine: a client on the
                    // balancer's host is local only if the balancer is; a client the header
                    // does not name may be anywhere.
                    slot.loopback = match header {
                        ProxyHeader::Proxied { client, .. } => {
                            slot.addr = client.into();
                            is_loopback(proxy.ip()) && is_loopback(client.ip())
                        }
                        ProxyHeader::Local | ProxyHeader::Unknown | ProxyHeader::Unspecified => {
                            false
                        }
                    };
                    slot.health_check = header.is_health_check();
                    debug!("slot {index}: PROXY header from {proxy}: {header}");
                }
                // The bytes after the header (or all of them) are the connection's to read.
                slot.conn.on_ready(true, false);
                // Draining, or already shutting down (a check taken from the backlog at the
                // shutdown): the balancer must not see this server as up.
                if slot.health_check
                    && (self.draining.is_some() || self.shutdown_deadline.is_some())
                {
                    return self.fail_health_check(index, framed);
                }
                true
            }
        }
    }

    /// A health check while draining: the balancer must see this server as down. A framed
    /// check gets ERROR SHUTTING_DOWN where HELLO_OK would be (through its TLS session, if
    /// it has one: the connection answers it, [`Connection::fail_health_check`]); a raw echo
    /// one is closed with nothing echoed. Returns whether the connection is to be driven.
    pub(super) fn fail_health_check(&mut self, index: usize, framed: bool) -> bool {
        debug!("slot {index}: a health check while draining: failed on purpose");
        if !framed {
            self.turn_away_slot(index, None);
            return false;
        }
        if let Some(slot) = self.conns.get_mut(index) {
            slot.conn.fail_health_check();
        }
        true
    }

    /// Closes connection `index` before its protocol started: `error` (if any) is written as
    /// an ERROR frame straight to the socket, whose send buffer is empty this early.
    fn turn_away_slot(&mut self, index: usize, error: Option<(ErrorCode, &str)>) {
        let Some(slot) = self.conns.get_mut(index) else {
            return;
        };
        let mut frame = Vec::new();
        if let Some((code, text)) = error {
            ErrorMessage::new(code, text).encode(0, &mut frame);
        }
        turn_away(&mut slot.socket, &frame);
        self.mark_closing(index);
    }

    /// Drives a connection and applies the verdict: close, queue, re-register, re-arm.
    pub(super) fn drive_slot(&mut self, key: ConnKey) {
        let index = key.slot as usize;
        if self
            .conns
            .get(index)
            .is_some_and(|slot| slot.prelude.is_some())
            && !self.run_prelude(key)
        {
            // Still waiting for the header: only its deadline needs to stay armed (the
            // connection was not driven, so nothing else changed).
            if let Some(slot) = live_slot(&mut self.conns, key) {
                let deadline = slot.conn.deadline(&self.env.limits);
                if deadline < slot.armed {
                    slot.armed = deadline;
                    self.env.timers.push(deadline, TimerKey::Conn(key).pack());
                }
            }
            return;
        }
        let peer = self.peer(index);
        let Some(slot) = self.conns.get_mut(index) else {
            return;
        };
        // A plaintext connection is driven with its socket, exactly as before TLS existed; a
        // TLS one through its session, which the socket is lent to for the drive.
        let tls = self.tls.get_mut(index).and_then(Option::as_deref_mut);
        // The requests counted so far, to give this connection its share (a difference, so
        // the connection code counts only once, in the server's counters).
        let marks = request_marks(&self.env.metrics);
        let (verdict, wanted, tls_held, moved) = match tls {
            None => {
                let mut counted = Counted::new(&mut slot.socket);
                let verdict = self
                    .env
                    .with_context(key, peer, |cx| slot.conn.drive(&mut counted, cx));
                let moved = (counted.read, counted.written);
                (verdict, socket_wants(&slot.conn, &slot.socket), None, moved)
            }
            Some(session) => {
                let mut link = session.link(&mut slot.socket, &mut self.tls_buffers);
                let mut counted = Counted::new(&mut link);
                let verdict = self
                    .env
                    .with_context(key, peer, |cx| slot.conn.drive(&mut counted, cx));
                let moved = (counted.read, counted.written);
                let wanted = slot.conn.interest() | link.wants();
                // The drive is over: the session's empty record buffers go back to the list
                // (an idle connection holds none), and what it still holds is counted.
                drop(link);
                let held = tls_kib(session, &slot.conn);
                let before = std::mem::replace(&mut session.reported_kib, held);
                let events = session.take_events();
                if events.established && verdict != Verdict::Close {
                    debug!(
                        "slot {index}: TLS established ({:?}) with {}, client key {}",
                        session.suite().map(|suite| suite.suite()),
                        peer.addr,
                        session
                            .client_key()
                            .map_or_else(|| "none".to_string(), |key| key.to_string())
                    );
                    // The handshake's end stopped the drive (the peer changed, and the next
                    // bytes must be read with the new one): drive again next turn, with
                    // the read hint that the stop cleared.
                    slot.conn.on_ready(true, false);
                    slot.conn.set_transport_pending(false);
                    if !slot.queued {
                        slot.queued = true;
                        self.ready.push(Source::Conn(key, Sub::Socket));
                    }
                }
                if events.plaintext_client {
                    if let Some(suppressed) = self.tls_log.allow(self.env.now) {
                        warn!(
                            "a plaintext client on the TLS port: told BAD_HELLO and closed \
                             ({suppressed} more since last report)"
                        );
                    }
                }
                (verdict, wanted, Some((before, held)), moved)
            }
        };
        if let Some(tally) = self.tallies.get_mut(index) {
            let (echoes, requests) = request_marks(&self.env.metrics);
            tally.echoes = tally
                .echoes
                .saturating_add((echoes - marks.0).try_into().unwrap_or(u32::MAX));
            tally.requests = tally
                .requests
                .saturating_add((requests - marks.1).try_into().unwrap_or(u16::MAX));
            tally.bytes_in += moved.0;
            tally.bytes_out += moved.1;
            self.env.metrics.bytes(tally.service(), moved.0, moved.1);
        }
        let (before, held) = slot.conn.report_buffer_kib();
        let (tls_before, tls_now) = tls_held.unwrap_or((0, 0));
        self.client_memory_kib = self.client_memory_kib - usize::from(before) + usize::from(held)
            - usize::from(tls_before)
            + usize::from(tls_now);
        if (held > before || tls_now > tls_before)
            && self.client_memory_kib > self.env.limits.max_client_memory >> 10
        {
            self.shed_client_memory();
        }
        let Some(slot) = self.conns.get_mut(index) else {
            return;
        };
        match verdict {
            Verdict::Close => {
                self.mark_closing(index);
                return;
            }
            Verdict::Again if !slot.queued => {
                slot.queued = true;
                self.ready.push(Source::Conn(key, Sub::Socket));
            }
            Verdict::Again | Verdict::Wait => {}
        }
        if wanted != slot.registered {
            let interest = poll_interest(wanted);
            if let Err(error) =
                self.env
                    .poll
                    .registry()
                    .reregister(&mut slot.socket, key.socket(), interest)
            {
                warn!("re-register of {key:?} failed: {error}");
                self.mark_closing(index);
                return;
            }
            slot.registered = wanted;
        }
        let deadline = slot.conn.deadline(&self.env.limits);
        if deadline < slot.armed {
            slot.armed = deadline;
            self.env.timers.push(deadline, TimerKey::Conn(key).pack());
        }
    }

    /// The connections' buffers together hold more than `--max-client-memory`: the ones
    /// holding the most are told LIMIT_REACHED and closed (their input is freed at once), until
    /// the total is back under the budget — redis's `maxmemory-clients`. Without it, many
    /// clients each trickling one large frame could pin the machine's memory.
    pub(super) fn shed_client_memory(&mut self) {
        let budget = self.env.limits.max_client_memory;
        let over = self.client_memory_kib;
        let mut shed = 0u64;
        while self.client_memory_kib > budget >> 10 {
            let tls = &self.tls;
            let Some((index, generation)) = self
                .conns
                .iter()
                // Not one closing, nor one whose drive just ended it (its verdict, applied after
                // this, closes it): begin_close would do nothing, and the loop never end.
                .filter(|&(index, slot)| {
                    !slot.closing
                        && held_kib(tls, index, slot) > 0
                        && !matches!(slot.conn.state(), State::Closing | State::Closed)
                })
                .max_by_key(|&(index, slot)| held_kib(tls, index, slot))
                .map(|(index, slot)| (index, slot.generation))
            else {
                break; // what is left belongs to connections already closing
            };
            let key = ConnKey {
                slot: index as u32,
                generation,
            };
            let linger = self.env.limits.linger_timeout;
            let peer = self.peer(index);
            let Some(slot) = self.conns.get_mut(index) else {
                break;
            };
            debug!(
                "shedding slot {index}, which holds {} KiB",
                held_kib(&self.tls, index, slot)
            );
            self.env.with_context(key, peer, |cx| {
                slot.conn
                    .begin_close(Some((ErrorCode::LimitReached, SHED_TEXT)), linger, cx);
            });
            let (before, now) = slot.conn.report_buffer_kib();
            self.client_memory_kib =
                self.client_memory_kib - usize::from(before) + usize::from(now);
            // A closing connection's session is no longer counted (`tls_kib`).
            if let Some(session) = self.tls.get_mut(index).and_then(Option::as_deref_mut) {
                self.client_memory_kib -= usize::from(std::mem::take(&mut session.reported_kib));
            }
            self.stats.shed += 1;
            shed += 1;
            // Driven next turn, to send the error and close.
            if !slot.queued {
                slot.queued = true;
                self.ready.push(Source::Conn(key, Sub::Socket));
            }
        }
        if shed > 0 {
            warn!(
                "client buffers held {over} KiB, over --max-client-memory ({budget} bytes): \
                 closed the {shed} connections holding the most"
            );
            // The freed input buffers go back to the allocator, which would keep the pages;
            // an attack is exactly when they should go back to the system. (Rare: only after
            // shedding.)
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free heap memory; it touches no live block.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }

    pub(super) fn mark_closing(&mut self, index: usize) {
        if let Some(slot) = self.conns.get_mut(index) {
            if !slot.closing {
                slot.closing = true;
                self.to_close.push(index);
            }
        }
    }

    /// Closes every connection marked in this batch. Done last in the turn, so no event of this
    /// batch can reach a new connection that reuses the slot. A connection's commands are
    /// released to the I/O layer, which stops and reaps them.
    pub(super) fn close_marked(&mut self) {
        let closed_any = !self.to_close.is_empty();
        let mut to_close = std::mem::take(&mut self.to_close);
        for index in to_close.drain(..) {
            let peer = self.peer(index);
            let credential = self
                .conns
                .get(index)
                .and_then(|slot| slot.conn.grant().cloned());
            self.log_connection(index, credential.as_ref().map(|grant| grant.name.as_str()));
            let mut slot = self.conns.remove(index);
            self.client_memory_kib -= usize::from(slot.conn.reported_buffer_kib());
            if let Some(mut session) = self.tls.get_mut(index).and_then(Option::take) {
                self.client_memory_kib -= usize::from(session.reported_kib);
                session.recycle(&mut self.tls_buffers);
            }
            // No `epoll_ctl(DEL)` first: closing the socket (when `slot` drops below) removes
            // it from the poll, since no other descriptor refers to it (epoll(7); nginx skips
            // the call for the same reason), and no poll runs between here and the close. One
            // system call less per connection.
            let key = ConnKey {
                slot: index as u32,
                generation: slot.generation,
            };
            self.env.with_context(key, peer, |cx| slot.conn.release(cx));
            self.stats.closed += 1;
            trace!("closed slot {index} (generation {})", slot.generation);
        }
        self.to_close = to_close;
        if closed_any && self.accept_paused {
            self.resume_accepting();
        }
        if self.env.timers.len() > 2 * self.conns.len() + TIMER_SLACK + self.env.children.len() {
            self.sweep_timers();
        }
    }

    /// Drops timer entries nothing live owns: those of closed connections (their idle entry
    /// lingers until it would fire), those superseded by an earlier deadline, and kill
    /// deadlines of children already reaped. Without this, connection churn would grow the
    /// heap by one entry per connection for a whole idle timeout.
    pub(super) fn sweep_timers(&mut self) {
        let conns = &self.conns;
        let children = &self.env.children;
        self.env
            .timers
            .retain(|at, token| match TimerKey::unpack(token) {
                Some(TimerKey::Conn(key)) => conns
                    .get(key.slot as usize)
                    .is_some_and(|slot| slot.generation == key.generation && slot.armed == at),
                Some(TimerKey::Released(child)) => children.released_deadline(child) == Some(at),
                Some(
                    TimerKey::ShutdownGrace
                    | TimerKey::AcceptRetry
                    | TimerKey::DiskRestart
                    | TimerKey::Metrics(_)
                    | TimerKey::DrainOver,
                ) => true,
                None => false,
            });
    }

    pub(super) fn conn_timer(&mut self, key: ConnKey, at: Tick) {
        let now = self.env.now;
        let peer = self.peer(key.slot as usize);
        let Some(slot) = live_slot(&mut self.conns, key) else {
            return;
        };
        if slot.armed != at {
            return; // superseded by an earlier entry
        }
        slot.armed = Tick::NEVER;
        if slot.prelude.is_some() && slot.conn.deadline(&self.env.limits) <= now {
            // Its first deadline (HELLO's, or idle for the raw echo) passed with the PROXY
            // header still incomplete: nothing was said, so nothing is answered.
            debug!(
                "slot {}: no complete PROXY header from {} in time; closed",
                key.slot, peer.addr
            );
            self.mark_closing(key.slot as usize);
            return;
        }
        if slot.conn.deadline(&self.env.limits) <= now {
            self.env
                .with_context(key, peer, |cx| slot.conn.on_deadline(cx));
        }
        // Either acts on what the deadline produced (a TIMEOUT frame, a signal) or re-arms.
        self.drive_slot(key);
    }
}
