//! UDP echo load on one thread and one `mio::Poll`: `bench udp`.
//!
//! Each of N connected sockets keeps `depth` datagrams in flight (or, with a rate, sends them
//! when due, as [`echo`](super::echo) does). A datagram of 8 bytes or more carries a sequence
//! number, so a reply is matched to its request and a late one is not mistaken for a newer
//! one. A datagram unanswered after [`LOSS_TIMEOUT`] counts as lost; an ICMP "port
//! unreachable" shows as `connection refused`.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};

use super::LoadConfig;
use super::report::{Pacer, Recorder, Report, Value, io_kind};
use super::timer::Timer;

/// How long a datagram may go unanswered before it counts as lost.
pub const LOSS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a socket waits after a send error before it sends again.
const BACKOFF: Duration = Duration::from_millis(10);

struct Socket {
    socket: UdpSocket,
    /// Sequence number and start time of each datagram in flight, oldest first; the flag
    /// says whether it has been sent (a full send buffer defers it).
    in_flight: VecDeque<(u64, Instant, bool)>,
    backlog: VecDeque<Instant>,
    resume_at: Option<Instant>,
}

/// The open-loop timer's token in the poll.
const TIMER: Token = Token(usize::MAX);

/// Runs UDP echo load; see the module docs.
pub fn run_udp(config: &LoadConfig) -> io::Result<Report> {
    config.validate()?;
    let local: SocketAddr = if config.addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let mut poll = Poll::new()?;
    let mut sockets = Vec::with_capacity(config.connections);
    for index in 0..config.connections {
        let mut socket = UdpSocket::bind(local)?;
        socket.connect(config.addr)?;
        poll.registry().register(
            &mut socket,
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        sockets.push(Socket {
            socket,
            in_flight: VecDeque::with_capacity(config.depth),
            backlog: VecDeque::new(),
            resume_at: None,
        });
    }
    let mut recorder = Recorder::new(
        config.stop,
        config.warmup,
        config.server_pid,
        2 * config.size as u64,
    );
    let mut pacer = config.rate.map(Pacer::new);
    let timer = match pacer {
        Some(_) => Some(Timer::new(poll.registry(), TIMER)?),
        None => None,
    };
    let mut payload = vec![b'x'; config.size];
    let mut reply = vec![0; config.size.max(1) + 1];
    let mut sequence = 0u64;
    let mut turn = 0;
    let mut swept = Instant::now();
    let mut events = Events::with_capacity(1024);
    let ended_early = loop {
        let now = Instant::now();
        recorder.tick(now);
        if recorder.finished(now) {
            break None;
        }
        if crate::live::interrupted() {
            break Some(crate::live::INTERRUPTED.to_string());
        }
        if recorder.failing(now) {
            break Some("nothing came back for a second: did the server go away?".to_string());
        }
        if let Some(pacer) = pacer.as_mut() {
            while let Some(due) = pacer.due(now) {
                let index = turn % sockets.len();
                sockets[index].backlog.push_back(due);
                turn += 1;
            }
        }
        let sweep = now.saturating_duration_since(swept) >= BACKOFF;
        if sweep {
            swept = now;
        }
        for socket in sockets.iter_mut().filter(|_| sweep || pacer.is_some()) {
            if sweep {
                while let Some(&(_, start, _)) = socket.in_flight.front() {
                    if now.saturating_duration_since(start) < LOSS_TIMEOUT {
                        break;
                    }
                    socket.in_flight.pop_front();
                    recorder.error(now, "lost (no reply within 1 s)");
                }
            }
            if socket.resume_at.is_some_and(|at| at > now) {
                continue;
            }
            socket.resume_at = None;
            top_up(socket, config, pacer.is_some(), &mut sequence, now);
            send(socket, &mut payload, &mut recorder, now);
        }
        let mut wake = now + BACKOFF;
        if let Some(deadline) = recorder.next_deadline() {
            wake = wake.min(deadline);
        }
        if let (Some(pacer), Some(timer)) = (&pacer, &timer) {
            let due = pacer.next_at();
            if due < wake {
                // To the microsecond; the poll's own timeout counts milliseconds.
                timer.arm(due.saturating_duration_since(now))?;
                wake = due + Duration::from_millis(1);
            }
        }
        match poll.poll(&mut events, Some(wake.saturating_duration_since(now))) {
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            if event.token() == TIMER {
                continue;
            }
            let socket = &mut sockets[event.token().0];
            if event.is_readable() {
                receive(socket, config, &mut reply, &mut recorder);
            }
            let now = Instant::now();
            if socket.resume_at.is_none() {
                top_up(socket, config, pacer.is_some(), &mut sequence, now);
                send(socket, &mut payload, &mut recorder, now);
            }
        }
    };
    let mut settings = vec![
        ("sockets", Value::Int(config.connections as u64)),
        ("size", Value::Int(config.size as u64)),
        ("depth", Value::Int(config.depth as u64)),
    ];
    if let Some(rate) = config.rate {
        settings.push(("rate", Value::Num(rate)));
    }
    Ok(recorder.finish(
        "udp".to_string(),
        config.addr.to_string(),
        settings,
        "datagram",
        ended_early,
    ))
}

/// Queues new datagrams: up to `depth` in flight (closed loop) or the due ones that fit.
fn top_up(socket: &mut Socket, config: &LoadConfig, open: bool, sequence: &mut u64, now: Instant) {
    while socket.in_flight.len() < config.depth {
        let start = if open {
            match socket.backlog.pop_front() {
                Some(due) => due,
                None => break,
            }
        } else {
            now
        };
        *sequence += 1;
        socket.in_flight.push_back((*sequence, start, false));
    }
}

/// Sends the datagrams not sent yet, until the socket's buffer is full.
fn send(socket: &mut Socket, payload: &mut [u8], recorder: &mut Recorder, now: Instant) {
    for index in 0..socket.in_flight.len() {
        let (sequence, _, sent) = socket.in_flight[index];
        if sent {
            continue;
        }
        if payload.len() >= 8 {
            payload[..8].copy_from_slice(&sequence.to_le_bytes());
        }
        match socket.socket.send(payload) {
            Ok(_) => socket.in_flight[index].2 = true,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return,
            Err(error) => {
                recorder.error(now, &io_kind(&error));
                socket.in_flight.retain(|entry| entry.2);
                socket.resume_at = Some(now + BACKOFF);
                return;
            }
        }
    }
}

/// Reads every datagram waiting and matches each to its request.
fn receive(socket: &mut Socket, config: &LoadConfig, reply: &mut [u8], recorder: &mut Recorder) {
    loop {
        match socket.socket.recv(reply) {
            Ok(n) => {
                let now = Instant::now();
                if n != config.size {
                    recorder.error(now, "reply of the wrong size");
                    continue;
                }
                let seq =
                    (n >= 8).then(|| u64::from_le_bytes(reply[..8].try_into().expect("8 bytes")));
                // Older ones still waiting were lost (a reply overtook them).
                while let Some(&(front, _, _)) = socket.in_flight.front() {
                    if seq.is_some_and(|seq| front < seq) {
                        socket.in_flight.pop_front();
                        recorder.error(now, "lost (overtaken)");
                    } else {
                        break;
                    }
                }
                match socket.in_flight.front() {
                    Some(&(front, start, true)) if seq.is_none_or(|seq| seq == front) => {
                        socket.in_flight.pop_front();
                        recorder.record(now, now.saturating_duration_since(start));
                    }
                    _ => {} // A late reply to a datagram already counted lost.
                }
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => return,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => {
                // An ICMP error (port unreachable): the server is not there.
                let now = Instant::now();
                recorder.error(now, &io_kind(&error));
                socket.in_flight.clear();
                socket.resume_at = Some(now + BACKOFF);
                return;
            }
        }
    }
}
