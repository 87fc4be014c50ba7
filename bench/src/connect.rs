//! Short connections on one thread and one `mio::Poll`: `bench connect`.
//!
//! Each of N slots loops: a nonblocking connect, one echo of `size` bytes, close (with a reset
//! instead of a FIN if asked, so no TIME_WAIT piles up on the client), and again. A request's
//! latency runs from the connect to the last byte of the echo; the rate is connections per
//! second. The same loop as `../shared/bench-tools/c-connect/connectgen.c`, so the two can be
//! compared in the same minute.

use std::io::{self, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::LoadConfig;
use super::report::{Recorder, Report, Value, io_kind};
use monoreactor::raise_descriptor_limit;

/// How long a slot waits after a failed connect before it tries again.
const BACKOFF: Duration = Duration::from_millis(10);

struct Slot {
    stream: Option<TcpStream>,
    started: Instant,
    connected: bool,
    sent: usize,
    received: usize,
    retry_at: Option<Instant>,
}

/// Options of a connect run beyond [`LoadConfig`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectOptions {
    /// Close with a reset (SO_LINGER 0) instead of a FIN.
    pub reset: bool,
}

/// Runs short-connection load; see the module docs.
pub fn run_connect(config: &LoadConfig, options: ConnectOptions) -> io::Result<Report> {
    config.validate()?;
    raise_descriptor_limit();
    let mut poll = Poll::new()?;
    let payload = vec![b'x'; config.size];
    let mut chunk = vec![0; config.size.clamp(1, 64 * 1024)];
    let mut recorder = Recorder::new(
        config.stop,
        config.warmup,
        config.server_pid,
        2 * config.size as u64,
    );
    let now = Instant::now();
    let mut slots: Vec<Slot> = (0..config.connections)
        .map(|_| Slot {
            stream: None,
            started: now,
            connected: false,
            sent: 0,
            received: 0,
            retry_at: Some(now),
        })
        .collect();
    for (index, slot) in slots.iter_mut().enumerate() {
        start(&mut poll, slot, index, config, &mut recorder, now);
    }
    let mut events = Events::with_capacity(1024);
    let mut swept = now;
    let ended_early = loop {
        let now = Instant::now();
        recorder.tick(now);
        if recorder.finished(now) {
            break None;
        }
        if recorder.failing(now) {
            break Some("no connection succeeded for a second: did the server go away?".into());
        }
        if now.saturating_duration_since(swept) >= BACKOFF {
            swept = now;
            for (index, slot) in slots.iter_mut().enumerate() {
                if slot.retry_at.is_some_and(|at| at <= now) {
                    start(&mut poll, slot, index, config, &mut recorder, now);
                }
            }
        }
        let mut wake = now + BACKOFF;
        if let Some(deadline) = recorder.next_deadline() {
            wake = wake.min(deadline);
        }
        match poll.poll(&mut events, Some(wake.saturating_duration_since(now))) {
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            let index = event.token().0;
            let slot = &mut slots[index];
            let state = slot_state(slot);
            let Some(stream) = slot.stream.as_mut() else {
                continue;
            };
            match advance(stream, state, &payload, &mut chunk) {
                Ok(progress) => {
                    slot.connected = progress.connected;
                    slot.sent = progress.sent;
                    slot.received = progress.received;
                    if slot.received >= config.size {
                        let now = Instant::now();
                        recorder.record(now, now.saturating_duration_since(slot.started));
                        close(&mut poll, slot, options.reset);
                        start(&mut poll, slot, index, config, &mut recorder, now);
                    }
                }
                Err(error) => {
                    let now = Instant::now();
                    recorder.error(now, &io_kind(&error));
                    close(&mut poll, slot, true);
                    slot.retry_at = Some(now + BACKOFF);
                }
            }
        }
    };
    Ok(recorder.finish(
        "connect".to_string(),
        config.addr.to_string(),
        vec![
            ("concurrency", Value::Int(config.connections as u64)),
            ("size", Value::Int(config.size as u64)),
            ("reset", Value::Text(options.reset.to_string())),
        ],
        "conn",
        ended_early,
    ))
}

#[derive(Clone, Copy)]
struct Progress {
    connected: bool,
    sent: usize,
    received: usize,
}

fn slot_state(slot: &Slot) -> Progress {
    Progress {
        connected: slot.connected,
        sent: slot.sent,
        received: slot.received,
    }
}

/// Moves one connection on as far as its socket allows.
fn advance(
    stream: &mut TcpStream,
    mut progress: Progress,
    payload: &[u8],
    chunk: &mut [u8],
) -> io::Result<Progress> {
    if !progress.connected {
        if let Some(error) = stream.take_error()? {
            return Err(error);
        }
        match stream.peer_addr() {
            Ok(_) => {
                progress.connected = true;
                stream.set_nodelay(true)?;
            }
            Err(error) if error.kind() == ErrorKind::NotConnected => return Ok(progress),
            Err(error) => return Err(error),
        }
    }
    while progress.sent < payload.len() {
        match stream.write(&payload[progress.sent..]) {
            Ok(n) => progress.sent += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(progress),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    while progress.received < payload.len() {
        match stream.read(chunk) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => progress.received += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(progress),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(progress)
}

fn start(
    poll: &mut Poll,
    slot: &mut Slot,
    index: usize,
    config: &LoadConfig,
    recorder: &mut Recorder,
    now: Instant,
) {
    slot.retry_at = None;
    slot.connected = false;
    slot.sent = 0;
    slot.received = 0;
    slot.started = now;
    let connected = TcpStream::connect(config.addr).and_then(|mut stream| {
        poll.registry().register(
            &mut stream,
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(stream)
    });
    match connected {
        Ok(stream) => slot.stream = Some(stream),
        Err(error) => {
            recorder.error(now, &io_kind(&error));
            slot.retry_at = Some(now + BACKOFF);
        }
    }
}

fn close(poll: &mut Poll, slot: &mut Slot, reset: bool) {
    if let Some(mut stream) = slot.stream.take() {
        let _ = poll.registry().deregister(&mut stream);
        if reset {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    }
}
