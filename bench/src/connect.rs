//! Short connections on one thread and one `mio::Poll`: `bench connect`.
//!
//! Each of N slots loops: a nonblocking connect, one echo of `size` bytes, close (with a reset
//! instead of a FIN if asked, so no TIME_WAIT piles up on the client), and again. A request's
//! latency runs from the connect to the last byte of the echo; the rate is connections per
//! second. The same loop as `../shared/bench-tools/c-connect/connectgen.c`, so the two can be
//! compared in the same minute.
//!
//! Over TLS every connection is a full TLS 1.3 handshake: a new session each time from a
//! configuration that never resumes (no ticket kept, no PSK offered), so the server pays its
//! key exchange and certificate signature every time. The echo then goes inside the session,
//! or, with [`ConnectOptions::handshake_only`], nothing does: the request is done once the
//! client's Finished is on its way, and its latency runs from the connect to there. Either
//! way the connection ends with a close_notify, then the FIN (or reset). The key exchange is
//! the first group of the configuration's provider: X25519 with `monoreactor::tls_provider`,
//! as OpenSSL and curl offer it (rustls' ring provider alone would lead with P-384, which
//! OpenSSL 3.0 computes with generic big numbers, several times slower). The server's CPU
//! time per connection is then its cost of a handshake, to compare with another TLS server's
//! (nginx's stream proxy) at the same concurrency.

use std::io::{self, ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;

use super::LoadConfig;
use super::report::{Recorder, Report, Value, io_kind};
use super::tls::{BenchTls, tls_error};
use monoreactor::raise_descriptor_limit;

/// How long a slot waits after a failed connect before it tries again.
const BACKOFF: Duration = Duration::from_millis(10);

struct Slot {
    stream: Option<TcpStream>,
    /// Over TLS, this connection's session: a new one per connection.
    tls: Option<Box<ClientConnection>>,
    started: Instant,
    progress: Progress,
    retry_at: Option<Instant>,
}

/// Options of a connect run beyond [`LoadConfig`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectOptions {
    /// Close with a reset (SO_LINGER 0) instead of a FIN.
    pub reset: bool,
    /// Over TLS: the handshake alone, no echo.
    pub handshake_only: bool,
}

/// Runs short-connection load; see the module docs.
pub fn run_connect(config: &LoadConfig, options: ConnectOptions) -> io::Result<Report> {
    config.validate()?;
    if options.handshake_only && config.tls.is_none() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "a handshake-only run needs TLS",
        ));
    }
    raise_descriptor_limit();
    let tls = config.tls.as_ref().map(BenchTls::without_resumption);
    let mut poll = Poll::new()?;
    let payload = if options.handshake_only {
        Vec::new()
    } else {
        vec![b'x'; config.size]
    };
    let mut chunk = vec![0; config.size.clamp(1, 64 * 1024)];
    let mut recorder = Recorder::new(
        config.stop,
        config.warmup,
        config.server_pid,
        2 * payload.len() as u64,
    );
    let now = Instant::now();
    let mut slots: Vec<Slot> = (0..config.connections)
        .map(|_| Slot {
            stream: None,
            tls: None,
            started: now,
            progress: Progress::default(),
            retry_at: Some(now),
        })
        .collect();
    for (index, slot) in slots.iter_mut().enumerate() {
        start(
            &mut poll,
            slot,
            index,
            config,
            tls.as_ref(),
            &mut recorder,
            now,
        );
    }
    let mut events = Events::with_capacity(1024);
    let mut swept = now;
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
            break Some("no connection succeeded for a second: did the server go away?".into());
        }
        if now.saturating_duration_since(swept) >= BACKOFF {
            swept = now;
            for (index, slot) in slots.iter_mut().enumerate() {
                if slot.retry_at.is_some_and(|at| at <= now) {
                    start(
                        &mut poll,
                        slot,
                        index,
                        config,
                        tls.as_ref(),
                        &mut recorder,
                        now,
                    );
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
            let Some(stream) = slot.stream.as_mut() else {
                continue;
            };
            let done = match slot.tls.as_deref_mut() {
                Some(session) => advance_tls(
                    stream,
                    session,
                    &mut slot.progress,
                    &payload,
                    &mut chunk,
                    options.handshake_only,
                ),
                None => advance(stream, &mut slot.progress, &payload, &mut chunk),
            };
            let now = Instant::now();
            match done {
                Ok(false) => {}
                Ok(true) => {
                    recorder.record(now, now.saturating_duration_since(slot.started));
                    close(&mut poll, slot, options.reset, true);
                    start(
                        &mut poll,
                        slot,
                        index,
                        config,
                        tls.as_ref(),
                        &mut recorder,
                        now,
                    );
                }
                Err(error) => {
                    recorder.error(now, &io_kind(&error));
                    close(&mut poll, slot, true, false);
                    slot.retry_at = Some(now + BACKOFF);
                }
            }
        }
    };
    let mut settings = vec![("concurrency", Value::Int(config.connections as u64))];
    if !options.handshake_only {
        settings.push(("size", Value::Int(config.size as u64)));
    }
    settings.push(("reset", Value::Text(options.reset.to_string())));
    settings.extend(super::tls_setting(config.tls.as_ref()));
    if options.handshake_only {
        settings.push(("handshake_only", Value::Text("true".to_string())));
    }
    Ok(recorder.finish(
        "connect".to_string(),
        config.addr.to_string(),
        settings,
        // Over TLS every connection is one full handshake.
        if tls.is_some() { "handshake" } else { "conn" },
        ended_early,
    ))
}

/// How far one connection has got.
#[derive(Clone, Copy, Default)]
struct Progress {
    connected: bool,
    /// Payload bytes written (over TLS: into the session).
    sent: usize,
    /// Payload bytes echoed back.
    received: usize,
}

/// Steps 2 and 3 of a nonblocking connect (mio's `TcpStream::connect`): an error is taken
/// from the socket, and a peer address means connected; `false` while still connecting.
fn connected(stream: &TcpStream, progress: &mut Progress) -> io::Result<bool> {
    if progress.connected {
        return Ok(true);
    }
    if let Some(error) = stream.take_error()? {
        return Err(error);
    }
    match stream.peer_addr() {
        Ok(_) => {
            progress.connected = true;
            stream.set_nodelay(true)?;
            Ok(true)
        }
        Err(error) if error.kind() == ErrorKind::NotConnected => Ok(false),
        Err(error) => Err(error),
    }
}

/// Moves one plaintext connection on as far as its socket allows; `true` once the echo is
/// back whole.
fn advance(
    stream: &mut TcpStream,
    progress: &mut Progress,
    payload: &[u8],
    chunk: &mut [u8],
) -> io::Result<bool> {
    if !connected(stream, progress)? {
        return Ok(false);
    }
    while progress.sent < payload.len() {
        match stream.write(&payload[progress.sent..]) {
            Ok(n) => progress.sent += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    while progress.received < payload.len() {
        match stream.read(chunk) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => progress.received += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}

/// [`advance`] over TLS: the handshake, then the echo inside the session (written into it
/// from the start: rustls holds it until the handshake is done). `true` once the echo is
/// back whole or, with `handshake_only`, once the handshake is done and the client's
/// Finished written.
///
/// Reads go on until the socket would block, whatever the writes did: the events are
/// edge-triggered, so a readable edge left undrained would not come again. A write that
/// would block waits for the writable edge.
fn advance_tls(
    stream: &mut TcpStream,
    session: &mut ClientConnection,
    progress: &mut Progress,
    payload: &[u8],
    chunk: &mut [u8],
    handshake_only: bool,
) -> io::Result<bool> {
    if !connected(stream, progress)? {
        return Ok(false);
    }
    loop {
        if progress.sent < payload.len() {
            progress.sent += session.writer().write(&payload[progress.sent..])?;
        }
        while session.wants_write() {
            match session.write_tls(stream) {
                Ok(_) => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        let done = if handshake_only {
            !session.is_handshaking() && !session.wants_write()
        } else {
            progress.received >= payload.len()
        };
        if done {
            return Ok(true);
        }
        match session.read_tls(stream) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
        if let Err(error) = session.process_new_packets() {
            // The alert rustls queued tells the server why; best effort.
            let _ = session.write_tls(stream);
            return Err(tls_error(error));
        }
        loop {
            match session.reader().read(chunk) {
                // The server's close_notify.
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => progress.received += n,
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            }
        }
    }
}

fn start(
    poll: &mut Poll,
    slot: &mut Slot,
    index: usize,
    config: &LoadConfig,
    tls: Option<&BenchTls>,
    recorder: &mut Recorder,
    now: Instant,
) {
    slot.retry_at = None;
    slot.progress = Progress::default();
    slot.started = now;
    let connected = TcpStream::connect(config.addr).and_then(|mut stream| {
        poll.registry().register(
            &mut stream,
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(stream)
    });
    // The session (its key share made) while the SYN is out.
    let session = connected.and_then(|stream| {
        let session = tls.map(BenchTls::session).transpose()?;
        Ok((stream, session))
    });
    match session {
        Ok((stream, session)) => {
            slot.stream = Some(stream);
            slot.tls = session.map(Box::new);
        }
        Err(error) => {
            recorder.error(now, &io_kind(&error));
            slot.retry_at = Some(now + BACKOFF);
        }
    }
}

/// Ends a slot's connection: over TLS with a close_notify first if `goodbye` (best effort:
/// it goes if the socket takes it now), then a FIN, or a reset if `reset`.
fn close(poll: &mut Poll, slot: &mut Slot, reset: bool, goodbye: bool) {
    let session = slot.tls.take();
    let Some(mut stream) = slot.stream.take() else {
        return;
    };
    if let (Some(mut session), true) = (session, goodbye) {
        session.send_close_notify();
        while session.wants_write() {
            match session.write_tls(&mut stream) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
    let _ = poll.registry().deregister(&mut stream);
    if reset {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
}
