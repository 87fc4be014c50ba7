//! TCP echo load, framed or raw, on one thread and one `mio::Poll`: `bench echo`. Over TLS
//! each connection drives its own rustls session in the same loop, framed or raw alike.
//!
//! Closed loop (the default): every connection keeps `depth` requests in flight and sends the
//! next one when a reply arrives; latency counts from the send. Open loop (`rate`): requests
//! are due at a fixed rate whatever the server does ([`Pacer`](super::report)), spread over the
//! connections in turn; a request that finds its connection at `depth` waits, and its latency
//! counts from when it was due, so a stalled server shows in the percentiles.
//!
//! A connection the server closes or resets is counted as an error of that kind and dropped;
//! an ERROR frame is counted by its code (SERVER_BUSY, SHUTTING_DOWN, ...). When none is left,
//! or nothing has succeeded for a second, the run ends early with what it measured. With
//! [`EchoOptions::reconnect`] (closed loop only) a dropped connection is opened again after
//! [`RECONNECT_AFTER`], as a client behind a load balancer would, so a run through a server's
//! restart counts what the restart cost and goes on: then each request in flight on a dropped
//! connection is one error, and a connection the server closes with nothing in flight is none.
//!
//! Except after SHUTTING_DOWN, as an HTTP/2 client after GOAWAY: the server answers every
//! request it received before that error and handles nothing after it (docs/PROTOCOL.md,
//! SHUTTING_DOWN), so a request with no answer before it was not processed, and a
//! reconnecting run sends it again on the new connection, counted as *retried*, not as an
//! error. Only then: a reset, or an EOF without SHUTTING_DOWN, leaves it unknown whether the
//! server processed what was in flight (an echo is harmless, but the rule is the protocol's,
//! and the generator keeps it), so those stay errors.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;

use super::report::{Pacer, Recorder, Report, io_kind};
use super::timer::Timer;
use super::{BenchProtocol, LoadConfig};
use monoreactor::MAX_FRAME_LEN;
use monoreactor::proto::{Decoder, ErrorCode, ErrorMessage, FrameType, Hello};
use monoreactor::raise_descriptor_limit;

/// One benchmark connection.
struct Conn {
    stream: TcpStream,
    /// Over TLS, the session: requests are written into it and its records to the socket;
    /// records read from the socket go into it and the plaintext to `received`.
    tls: Option<Box<ClientConnection>>,
    alive: bool,
    /// Bytes not yet written.
    out: Vec<u8>,
    out_sent: usize,
    /// Framed: bytes received but not yet a whole frame.
    received: Vec<u8>,
    /// Raw: bytes received beyond the last whole reply.
    raw_pending: usize,
    /// Start time (send time, or due time in open loop) of each request in flight.
    in_flight: VecDeque<Instant>,
    /// Open loop: due times of requests waiting for room under `depth`.
    backlog: VecDeque<Instant>,
    /// Framed: HELLO_OK not seen yet.
    awaiting_hello: bool,
    /// Reconnecting: when this dropped connection is opened again.
    retry_at: Option<Instant>,
    /// Reconnecting after SHUTTING_DOWN: start times of the requests it left unanswered, sent
    /// again first on the next connection (their latency counts from the first send).
    resend: VecDeque<Instant>,
}

/// Options of an echo run beyond [`LoadConfig`].
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoOptions {
    /// Open a connection again when the server drops it (closed loop only).
    pub reconnect: bool,
}

/// How long a dropped connection waits before it is opened again.
pub const RECONNECT_AFTER: Duration = Duration::from_millis(10);

/// Longest a reconnection may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens connection `index`: connected, registered, HELLO queued (framed).
fn open(config: &LoadConfig, poll: &Poll, index: usize) -> io::Result<Conn> {
    let stream = StdTcpStream::connect_timeout(&config.addr, CONNECT_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_nonblocking(true)?;
    let mut stream = TcpStream::from_std(stream);
    let tls = match &config.tls {
        Some(tls) => Some(Box::new(tls.session()?)),
        None => None,
    };
    poll.registry().register(
        &mut stream,
        Token(index),
        Interest::READABLE | Interest::WRITABLE,
    )?;
    let mut conn = Conn {
        stream,
        tls,
        alive: true,
        out: Vec::new(),
        out_sent: 0,
        received: Vec::new(),
        raw_pending: 0,
        in_flight: VecDeque::with_capacity(config.depth),
        backlog: VecDeque::new(),
        awaiting_hello: config.protocol == BenchProtocol::Framed,
        retry_at: None,
        resend: VecDeque::new(),
    };
    if conn.awaiting_hello {
        Hello::current().encode(&mut conn.out);
    }
    Ok(conn)
}

impl Conn {
    fn push(&mut self, request: &[u8], start: Instant) {
        self.out.extend_from_slice(request);
        self.in_flight.push_back(start);
    }

    /// Moves waiting requests into flight while there is room.
    fn admit(&mut self, request: &[u8], depth: usize) {
        while self.in_flight.len() < depth {
            let Some(due) = self.backlog.pop_front() else {
                break;
            };
            self.push(request, due);
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            return flush_tls(tls, &mut self.stream, &mut self.out, &mut self.out_sent);
        }
        while self.out_sent < self.out.len() {
            match self.stream.write(&self.out[self.out_sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.out_sent += n,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.out.clear();
        self.out_sent = 0;
        Ok(())
    }
}

/// [`Conn::flush`] over TLS: plaintext into the session as its buffer allows (before the
/// handshake ends it holds what it may and takes more once the handshake is done), records
/// to the socket until it would block.
fn flush_tls(
    tls: &mut ClientConnection,
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    out_sent: &mut usize,
) -> io::Result<()> {
    loop {
        let mut moved = 0;
        if *out_sent < out.len() {
            moved = tls.writer().write(&out[*out_sent..])?;
            *out_sent += moved;
        }
        if tls.wants_write() {
            match tls.write_tls(stream) {
                Ok(_) => continue,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        if *out_sent == out.len() {
            out.clear();
            *out_sent = 0;
            return Ok(());
        }
        if moved == 0 {
            // The session holds all it will before its handshake is done; the read that
            // completes it calls flush again.
            return Ok(());
        }
    }
}

/// Reads records until the socket would block, each into the session, and the plaintext
/// they carry into `received` (framed), or only counted into `raw_pending` (raw: an echo is
/// known by its length); `true` if the server closed.
fn receive_tls(
    tls: &mut ClientConnection,
    stream: &mut TcpStream,
    mut received: Sink<'_>,
    chunk: &mut [u8],
) -> Result<bool, Fatal> {
    loop {
        let eof = match tls.read_tls(stream) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => return Err(Fatal::Io(error)),
        };
        tls.process_new_packets()
            .map_err(|error| Fatal::Protocol(format!("TLS: {error}")))?;
        loop {
            match tls.reader().read(chunk) {
                Ok(0) => return Ok(true),
                Ok(n) => match &mut received {
                    Sink::Keep(received) => received.extend_from_slice(&chunk[..n]),
                    Sink::Count(count) => **count += n,
                },
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == ErrorKind::UnexpectedEof => return Ok(true),
                Err(error) => return Err(Fatal::Io(error)),
            }
        }
        if eof {
            return Ok(true);
        }
    }
}

/// Where [`receive_tls`] puts the plaintext.
enum Sink<'a> {
    /// Kept, to be decoded as frames.
    Keep(&'a mut Vec<u8>),
    /// Only counted.
    Count(&'a mut usize),
}

/// What one readable event brought.
#[derive(Default)]
struct Received {
    replies: usize,
    /// The server closed the connection after these.
    closed: bool,
    /// ERROR frames on a request's stream: that request failed, the connection lives on.
    failed: Vec<String>,
    /// An ERROR on stream 0 after the replies: the server ends the connection.
    fatal: Option<Fatal>,
}

/// Why a connection is done.
enum Fatal {
    /// ERROR SHUTTING_DOWN on stream 0: what had no answer before it was not processed.
    ShuttingDown,
    /// Any other ERROR frame on stream 0 (the server closes after it), by code.
    Server(String),
    Io(io::Error),
    Protocol(String),
}

impl Fatal {
    fn kind(&self) -> String {
        match self {
            Fatal::ShuttingDown => ErrorCode::ShuttingDown.to_string(),
            Fatal::Server(code) => code.clone(),
            Fatal::Io(error) => io_kind(error),
            Fatal::Protocol(what) => what.clone(),
        }
    }
}

impl From<io::Error> for Fatal {
    fn from(error: io::Error) -> Fatal {
        Fatal::Io(error)
    }
}

fn receive(
    conn: &mut Conn,
    config: &LoadConfig,
    decoder: &Decoder,
    chunk: &mut [u8],
) -> Result<Received, Fatal> {
    let mut got = Received::default();
    let reply_len = config.protocol.reply_len(config.size);
    if let Some(tls) = conn.tls.as_mut() {
        let sink = match config.protocol {
            BenchProtocol::Framed => Sink::Keep(&mut conn.received),
            // Redis is refused over TLS (`LoadConfig::validate`).
            BenchProtocol::Raw | BenchProtocol::Redis => Sink::Count(&mut conn.raw_pending),
        };
        got.closed = receive_tls(tls, &mut conn.stream, sink, chunk)?;
    }
    // A read that fails after bytes came: those bytes are decoded first (an ERROR
    // SHUTTING_DOWN among them says what the server handled, whatever broke after it).
    let mut read_failed = None;
    while conn.tls.is_none() {
        match conn.stream.read(chunk) {
            Ok(0) => {
                got.closed = true;
                break;
            }
            Ok(n) => {
                match config.protocol {
                    BenchProtocol::Raw => conn.raw_pending += n,
                    BenchProtocol::Redis => {
                        check_redis_replies(&chunk[..n], conn.raw_pending, reply_len)?;
                        conn.raw_pending += n;
                    }
                    BenchProtocol::Framed => conn.received.extend_from_slice(&chunk[..n]),
                }
                // A short read means the socket is drained (epoll(7)): skip the read that
                // would only say WouldBlock, as the server does.
                if n < chunk.len() {
                    break;
                }
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => {
                read_failed = Some(error);
                break;
            }
        }
    }
    match config.protocol {
        BenchProtocol::Raw | BenchProtocol::Redis => {
            got.replies = conn.raw_pending / reply_len;
            conn.raw_pending %= reply_len;
        }
        BenchProtocol::Framed => {
            let mut frames = decoder.frames(&conn.received);
            for frame in frames.by_ref() {
                let frame = frame
                    .map_err(|error| Fatal::Protocol(format!("undecodable reply ({error})")))?;
                match frame.header.frame_type {
                    FrameType::HelloOk if conn.awaiting_hello => conn.awaiting_hello = false,
                    FrameType::EchoReply if frame.payload.len() == config.size => {
                        got.replies += 1;
                    }
                    FrameType::Error => {
                        let message = ErrorMessage::parse(frame.payload).ok();
                        let code = message
                            .as_ref()
                            .map_or("undecodable ERROR".to_string(), |message| {
                                message.code.to_string()
                            });
                        if frame.header.stream == 0 {
                            // The replies before it count; the connection ends here.
                            let shutting_down = message
                                .is_some_and(|message| message.code == ErrorCode::ShuttingDown);
                            got.fatal = Some(if shutting_down {
                                Fatal::ShuttingDown
                            } else {
                                Fatal::Server(code)
                            });
                            break;
                        }
                        got.failed.push(code);
                    }
                    FrameType::Hello => {
                        return Err(Fatal::Protocol(
                            "our own HELLO came back (a raw echo port?)".to_string(),
                        ));
                    }
                    other => {
                        return Err(Fatal::Protocol(format!(
                            "unexpected {other} of {} bytes",
                            frame.payload.len()
                        )));
                    }
                }
            }
            let consumed = frames.consumed();
            conn.received.drain(..consumed);
        }
    }
    if let Some(error) = read_failed {
        got.fatal.get_or_insert(Fatal::Io(error));
    }
    Ok(got)
}

/// Checks that every redis reply starting in `bytes` (which follow `pending` bytes of the
/// replies so far) is a bulk string, `$...`: anything else is an error reply (`-ERR ...`) or
/// not redis, and counting its bytes as replies would be wrong.
fn check_redis_replies(bytes: &[u8], pending: usize, reply_len: usize) -> Result<(), Fatal> {
    let mut at = (reply_len - pending % reply_len) % reply_len;
    while at < bytes.len() {
        if bytes[at] != b'$' {
            let line = bytes[at..]
                .split(|&byte| byte == b'\r')
                .next()
                .unwrap_or(&[]);
            return Err(Fatal::Protocol(format!(
                "not a RESP bulk reply to ECHO: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(80)])
            )));
        }
        at += reply_len;
    }
    Ok(())
}

/// The open-loop timer's token in the poll.
const TIMER: Token = Token(usize::MAX);

/// Runs TCP echo load; see the module docs. Errors only if no connection can be made; a
/// server that goes away mid-run ends it early with a partial report.
pub fn run_echo(config: &LoadConfig) -> io::Result<Report> {
    run_echo_with(config, EchoOptions::default())
}

/// [`run_echo`] with [`EchoOptions`].
pub fn run_echo_with(config: &LoadConfig, options: EchoOptions) -> io::Result<Report> {
    config.validate()?;
    if options.reconnect && config.rate.is_some() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "reconnecting is for the closed loop: drop the rate",
        ));
    }
    raise_descriptor_limit();
    let request = config.protocol.request(config.size);
    let decoder = Decoder::new(MAX_FRAME_LEN);
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(config.connections);
    for index in 0..config.connections {
        conns.push(open(config, &poll, index)?);
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
    let now = Instant::now();
    for conn in &mut conns {
        if pacer.is_none() {
            for _ in 0..config.depth {
                conn.push(&request, now);
            }
        }
        // A failure here shows on the first event.
        let _ = conn.flush();
    }
    let mut live = conns.len();
    let mut turn = 0;
    let mut chunk = vec![0; 64 * 1024];
    let mut events = Events::with_capacity(1024);
    let mut touched = Vec::new();
    let ended_early = loop {
        let now = Instant::now();
        recorder.tick(now);
        if recorder.finished(now) {
            break None;
        }
        if crate::live::interrupted() {
            break Some(crate::live::INTERRUPTED.to_string());
        }
        if live == 0 {
            break Some(format!(
                "every connection was closed ({})",
                recorder.error_summary()
            ));
        }
        if recorder.failing(now) {
            break Some("nothing succeeded for a second".to_string());
        }
        if options.reconnect {
            reopen_due(&mut conns, config, &poll, &request, &mut recorder, now);
        }
        if let Some(pacer) = pacer.as_mut() {
            while let Some(due) = pacer.due(now) {
                // The next live connection in turn.
                while !conns[turn % conns.len()].alive {
                    turn += 1;
                }
                let index = turn % conns.len();
                turn += 1;
                conns[index].backlog.push_back(due);
                touched.push(index);
            }
            for index in touched.drain(..) {
                let conn = &mut conns[index];
                if conn.backlog.is_empty() {
                    continue;
                }
                conn.admit(&request, config.depth);
                if let Err(error) = conn.flush() {
                    kill(
                        &mut poll,
                        conn,
                        &mut live,
                        &mut recorder,
                        now,
                        &error.into(),
                        options.reconnect,
                    );
                }
            }
        }
        let mut wake = now + Duration::from_millis(50);
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
            let conn = &mut conns[event.token().0];
            if !conn.alive {
                continue;
            }
            if event.is_writable() {
                if let Err(error) = conn.flush() {
                    drop_and_retry(
                        &mut poll,
                        conn,
                        &mut live,
                        &mut recorder,
                        now,
                        &error.into(),
                        options,
                    );
                    continue;
                }
            }
            if !event.is_readable() {
                continue;
            }
            let got = match receive(conn, config, &decoder, &mut chunk) {
                Ok(got) => got,
                Err(fatal) => {
                    drop_and_retry(
                        &mut poll,
                        conn,
                        &mut live,
                        &mut recorder,
                        now,
                        &fatal,
                        options,
                    );
                    continue;
                }
            };
            let now = Instant::now();
            let mut done = 0;
            for _ in 0..got.replies {
                let Some(start) = conn.in_flight.pop_front() else {
                    let fatal = Fatal::Protocol("more replies than requests".to_string());
                    drop_and_retry(
                        &mut poll,
                        conn,
                        &mut live,
                        &mut recorder,
                        now,
                        &fatal,
                        options,
                    );
                    break;
                };
                recorder.record(now, now.saturating_duration_since(start));
                done += 1;
            }
            for code in &got.failed {
                conn.in_flight.pop_front();
                recorder.error(now, code);
                done += 1;
            }
            if !conn.alive {
                continue;
            }
            // A fatal error, or else the server's EOF, ends the connection.
            let fatal = got.fatal.or_else(|| {
                got.closed
                    .then(|| Fatal::Io(ErrorKind::UnexpectedEof.into()))
            });
            if let Some(fatal) = fatal {
                drop_and_retry(
                    &mut poll,
                    conn,
                    &mut live,
                    &mut recorder,
                    now,
                    &fatal,
                    options,
                );
                continue;
            }
            if pacer.is_some() {
                conn.admit(&request, config.depth);
            } else {
                for _ in 0..done {
                    conn.push(&request, now);
                }
            }
            // Over TLS a read may leave records to send (the handshake's, a key update's).
            if done > 0 || conn.tls.is_some() {
                if let Err(error) = conn.flush() {
                    drop_and_retry(
                        &mut poll,
                        conn,
                        &mut live,
                        &mut recorder,
                        now,
                        &error.into(),
                        options,
                    );
                }
            }
        }
    };
    let mut settings = vec![
        (
            "connections",
            super::report::Value::Int(config.connections as u64),
        ),
        ("size", super::report::Value::Int(config.size as u64)),
        ("depth", super::report::Value::Int(config.depth as u64)),
    ];
    if let Some(rate) = config.rate {
        settings.push(("rate", super::report::Value::Num(rate)));
    }
    settings.extend(super::tls_setting(config.tls.as_ref()));
    let what = match config.protocol {
        BenchProtocol::Framed => "echo framed",
        BenchProtocol::Raw => "echo raw",
        BenchProtocol::Redis => "echo redis",
    };
    Ok(recorder.finish(
        what.to_string(),
        config.addr.to_string(),
        settings,
        "req",
        ended_early,
    ))
}

/// [`kill`], then [`retry_later`]: a connection that failed, opened again later with
/// `--reconnect`.
fn drop_and_retry(
    poll: &mut Poll,
    conn: &mut Conn,
    live: &mut usize,
    recorder: &mut Recorder,
    now: Instant,
    why: &Fatal,
    options: EchoOptions,
) {
    kill(poll, conn, live, recorder, now, why, options.reconnect);
    retry_later(conn, options, live, now);
}

/// Reconnecting: `conn`, just killed, is opened again after [`RECONNECT_AFTER`] and counts
/// as live meanwhile.
fn retry_later(conn: &mut Conn, options: EchoOptions, live: &mut usize, now: Instant) {
    if options.reconnect && !conn.alive && conn.retry_at.is_none() {
        conn.retry_at = Some(now + RECONNECT_AFTER);
        *live += 1;
    }
}

/// Opens again the dropped connections whose time has come, with `depth` requests in flight
/// (a connection that cannot be opened is an error of its kind, and tries again later).
fn reopen_due(
    conns: &mut [Conn],
    config: &LoadConfig,
    poll: &Poll,
    request: &[u8],
    recorder: &mut Recorder,
    now: Instant,
) {
    for (index, conn) in conns.iter_mut().enumerate() {
        if conn.retry_at.is_none_or(|at| at > now) {
            continue;
        }
        match open(config, poll, index) {
            Ok(mut fresh) => {
                // What SHUTTING_DOWN left unanswered goes first (never more than `depth`: it
                // was in flight), then new requests up to `depth`.
                let resend = std::mem::take(&mut conn.resend);
                recorder.retried(resend.len() as u64);
                for start in resend {
                    fresh.push(request, start);
                }
                while fresh.in_flight.len() < config.depth {
                    fresh.push(request, now);
                }
                // A failure here shows on the first event.
                let _ = fresh.flush();
                *conn = fresh;
            }
            Err(error) => {
                recorder.error(now, &io_kind(&error));
                conn.retry_at = Some(now + RECONNECT_AFTER);
            }
        }
    }
}

/// Drops `conn` and counts why. Reconnecting, what is counted is the requests it loses: one
/// error per request in flight (none for a connection the server closed after answering
/// everything, a protocol error at least one), except after SHUTTING_DOWN, which loses none:
/// the requests in flight were not processed, and are kept to be sent again on the next
/// connection ([`reopen_due`]). Otherwise one error per connection.
fn kill(
    poll: &mut Poll,
    conn: &mut Conn,
    live: &mut usize,
    recorder: &mut Recorder,
    now: Instant,
    why: &Fatal,
    reconnect: bool,
) {
    if !conn.alive {
        return;
    }
    conn.alive = false;
    *live -= 1;
    let lost = conn.in_flight.len();
    let count = match (reconnect, why) {
        (false, _) => 1,
        (true, Fatal::ShuttingDown) => {
            conn.resend = std::mem::take(&mut conn.in_flight);
            0
        }
        (true, Fatal::Protocol(_)) => lost.max(1),
        (true, _) => lost,
    };
    let kind = why.kind();
    for _ in 0..count {
        recorder.error(now, &kind);
    }
    let _ = poll.registry().deregister(&mut conn.stream);
    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::Stop;

    /// A raw echo server on loopback that hangs up after ten 64-byte echoes per connection.
    fn echo_ten_then_hang_up() -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local address");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                std::thread::spawn(move || {
                    let mut request = [0; 64];
                    for _ in 0..10 {
                        if stream.read_exact(&mut request).is_err()
                            || stream.write_all(&request).is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn config(addr: std::net::SocketAddr) -> LoadConfig {
        LoadConfig {
            addr,
            protocol: BenchProtocol::Raw,
            connections: 2,
            size: 64,
            depth: 1,
            stop: Stop::Requests(200),
            warmup: Duration::ZERO,
            rate: None,
            server_pid: None,
            tls: None,
        }
    }

    #[test]
    fn a_reconnecting_run_goes_on_after_the_server_hangs_up_and_counts_each_hang_up() {
        let config = config(echo_ten_then_hang_up());
        let report = run_echo_with(&config, EchoOptions { reconnect: true }).expect("a run");
        assert_eq!(report.ended_early, None);
        assert!(report.requests >= 200, "{}", report.requests);
        // Ten requests per connection, then one error: about one error per ten requests.
        let errors = report.error_total();
        assert!((15..=25).contains(&errors), "{:?}", report.errors);
    }

    #[test]
    fn without_reconnecting_the_run_ends_when_every_connection_is_gone() {
        let config = config(echo_ten_then_hang_up());
        let report = run_echo(&config).expect("a run");
        assert!(report.ended_early.is_some());
        assert_eq!(report.error_total(), 2, "{:?}", report.errors);
    }

    /// How a [`framed_server`] ends each connection after answering ten echoes and reading
    /// the eleventh.
    #[derive(Clone, Copy)]
    enum Ending {
        /// ERROR SHUTTING_DOWN on stream 0, then an orderly close: the eleventh was not
        /// processed.
        ShuttingDown,
        /// Another ERROR on stream 0 (TIMEOUT), then an orderly close.
        OtherError,
        /// An EOF with no ERROR: whether the eleventh was processed is unknown.
        Eof,
        /// A reset (SO_LINGER 0) with no ERROR.
        Reset,
    }

    /// A framed echo server on loopback: HELLO_OK, ten echo replies per connection, then
    /// `ending` once the eleventh request has arrived. Also returns how many echoes it
    /// answered in all.
    fn framed_server(ending: Ending) -> (std::net::SocketAddr, Arc<AtomicU64>) {
        use monoreactor::proto::{Flags, Frame, HelloOk, SessionFlags};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local address");
        let answered = Arc::new(AtomicU64::new(0));
        let count = answered.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let count = count.clone();
                std::thread::spawn(move || {
                    let next_frame = |stream: &mut std::net::TcpStream| {
                        let mut header = [0; monoreactor::proto::HEADER_LEN];
                        stream.read_exact(&mut header).ok()?;
                        let header = monoreactor::proto::Header::parse(&header, MAX_FRAME_LEN)
                            .ok()
                            .flatten()?;
                        let mut payload = vec![0; header.len as usize];
                        stream.read_exact(&mut payload).ok()?;
                        Some((header, payload))
                    };
                    if next_frame(&mut stream).is_none() {
                        return;
                    }
                    let mut out = Vec::new();
                    HelloOk {
                        version: monoreactor::proto::PROTOCOL_VERSION,
                        max_payload_len: MAX_FRAME_LEN,
                        flags: SessionFlags::AUTHENTICATED,
                    }
                    .encode(&mut out);
                    for _ in 0..10 {
                        let Some((header, payload)) = next_frame(&mut stream) else {
                            return;
                        };
                        Frame::new(
                            FrameType::EchoReply,
                            Flags::END_STREAM,
                            header.stream,
                            &payload,
                        )
                        .encode_into(&mut out);
                        // Counted before it is sent: the client may count the reply before
                        // this thread runs again, and the run's total must never exceed this.
                        count.fetch_add(1, Ordering::Relaxed);
                        if stream.write_all(&out).is_err() {
                            return;
                        }
                        out.clear();
                    }
                    if next_frame(&mut stream).is_none() {
                        return;
                    }
                    let code = match ending {
                        Ending::ShuttingDown => ErrorCode::ShuttingDown,
                        Ending::OtherError => ErrorCode::Timeout,
                        Ending::Eof => {
                            let _ = stream.shutdown(std::net::Shutdown::Write);
                            let _ = stream.read_to_end(&mut Vec::new());
                            return;
                        }
                        Ending::Reset => {
                            let _ =
                                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                            return;
                        }
                    };
                    ErrorMessage::new(code, "bye").encode(0, &mut out);
                    let _ = stream.write_all(&out);
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                    let _ = stream.read_to_end(&mut Vec::new());
                });
            }
        });
        (addr, answered)
    }

    fn framed_config(addr: std::net::SocketAddr) -> LoadConfig {
        LoadConfig {
            protocol: BenchProtocol::Framed,
            ..config(addr)
        }
    }

    #[test]
    fn after_shutting_down_the_unanswered_requests_are_retried_not_errors() {
        let (addr, answered) = framed_server(Ending::ShuttingDown);
        let config = framed_config(addr);
        let report = run_echo_with(&config, EchoOptions { reconnect: true }).expect("a run");
        assert_eq!(report.ended_early, None);
        assert_eq!(report.error_total(), 0, "{:?}", report.errors);
        assert!(report.requests >= 200, "{}", report.requests);
        // One request unanswered per connection of ten echoes, each sent again.
        assert!(
            (15..=25).contains(&report.retried),
            "retried {}",
            report.retried
        );
        // Every reply the run counted is one the server sent: the retried requests were
        // answered on their new connection, and none was counted twice.
        assert!(report.requests <= answered.load(Ordering::Relaxed));
    }

    #[test]
    fn with_two_in_flight_every_unanswered_one_is_retried() {
        let (addr, _) = framed_server(Ending::ShuttingDown);
        let config = LoadConfig {
            depth: 2,
            ..framed_config(addr)
        };
        let report = run_echo_with(&config, EchoOptions { reconnect: true }).expect("a run");
        assert_eq!(report.ended_early, None);
        assert_eq!(report.error_total(), 0, "{:?}", report.errors);
        // The eleventh at each SHUTTING_DOWN, and the twelfth unless the tenth reply and
        // SHUTTING_DOWN came in one read (the twelfth was then never sent).
        assert!(
            (15..=50).contains(&report.retried),
            "retried {}",
            report.retried
        );
    }

    #[test]
    fn an_eof_a_reset_or_another_error_leaves_the_request_an_error_not_retried() {
        for ending in [Ending::Eof, Ending::Reset, Ending::OtherError] {
            let (addr, _) = framed_server(ending);
            let config = framed_config(addr);
            let report = run_echo_with(&config, EchoOptions { reconnect: true }).expect("a run");
            assert_eq!(report.ended_early, None);
            assert_eq!(report.retried, 0);
            let errors = report.error_total();
            assert!((15..=25).contains(&errors), "{:?}", report.errors);
        }
    }

    #[test]
    fn without_reconnecting_shutting_down_ends_the_connection_as_an_error() {
        let (addr, _) = framed_server(Ending::ShuttingDown);
        let report = run_echo(&framed_config(addr)).expect("a run");
        assert!(report.ended_early.is_some());
        assert_eq!(report.retried, 0);
        assert_eq!(
            report.errors,
            std::collections::BTreeMap::from([("SHUTTING_DOWN".to_string(), 2)])
        );
    }

    #[test]
    fn reconnecting_is_refused_with_a_rate() {
        let config = LoadConfig {
            rate: Some(100.0),
            ..config(echo_ten_then_hang_up())
        };
        assert!(run_echo_with(&config, EchoOptions { reconnect: true }).is_err());
    }
}
