//! Remote exec, blocking: run one command on a server, feed it stdin, stream its stdout and
//! stderr back, and return how it ended. `monoreactor exec` is a thin layer over this, and
//! tests can drive it with any `Read` as stdin and any `Write` as stdout and stderr.
//!
//! One command per connection, on stream [`STREAM`]:
//!
//! 1. [`ExecClient::connect`]: TCP connect and HELLO with the token, bounded by a timeout.
//! 2. [`ExecClient::start`]: EXEC, then STARTED or the server's ERROR for the stream, still
//!    bounded by the same timeout. From then on nothing times out: a command may run, silent,
//!    for as long as the server lets it (the server enforces the time limit; TCP keepalive
//!    notices a peer that vanished).
//! 3. [`Running::finish`]: a thread copies local stdin into STDIN frames, never more than the
//!    credit the server granted (the window in STARTED plus every WINDOW since); the calling
//!    thread owns the connection, sends those frames, writes STDOUT and STDERR payloads out
//!    as they arrive and returns the EXIT.
//!
//! # Why one thread owns the connection
//! The client waits on two things at once, local stdin and the socket. Local stdin is any
//! `Read` (a terminal, a pipe, a test's buffer): it can only be read by a thread that blocks
//! on it, so it gets one. The connection, though, cannot be split between two threads the
//! way a plain socket can (a clone of the descriptor for writes, the original for reads): a
//! TLS session is one state machine whose reads and writes share keys, sequence numbers and
//! buffers. So the calling thread owns the connection, plaintext or TLS alike, and drives
//! both directions on one `mio::Poll`, the socket nonblocking: it sleeps in the poll until
//! the socket is readable, writable (when output is pending) or a [`mio::Waker`] says another
//! thread queued a frame (STDIN and STDIN_EOF from the stdin thread, SIGNAL from a
//! [`Signaller`]). No read times out and nothing spins. The alternatives were worse: a
//! mutex around the session with short read timeouts wakes up every few milliseconds for
//! nothing and adds that delay to stdin; a mutex held across a blocking read starves the
//! writer, and one held across a blocking write can deadlock with a server that stops
//! reading while its output to us is not read. The stdin thread holds at most one 64 KiB
//! chunk and queues only within the credit, so however fast stdin is, neither side buffers
//! more than the window.
//!
//! [`Running::signaller`] hands out a [`Signaller`] that another thread (a signal handler
//! thread, a test) uses to send a SIGNAL request while `finish` runs, or a RESIZE for a
//! command on a terminal ([`Command::pty`], `exec -t`).
//!
//! # On a terminal
//! With [`Command::pty`] the server runs the command on a pseudo-terminal of that size: its
//! stdout and stderr are one stream (STDOUT frames only), local stdin goes to the terminal
//! byte for byte (the caller puts its own terminal in raw mode: `^C` is then a byte the remote
//! terminal turns into SIGINT for its foreground job), and the end of local stdin becomes one
//! `^D`. [`EscapeScanner`] finds ssh's `~.` in what is typed.
//!
//! # Closing
//! After EXIT the connection is closed the ordinary way (a TLS close_notify, then FIN). When
//! the client gives up instead (an error, [`Signaller::abandon`], [`Signaller::abort_on_close`])
//! it closes with a reset (`SO_LINGER` 0): an abort, not an end of input. The server stops a
//! command whose client is gone either way (TERM to its group, KILL after a grace), but a
//! reset cannot be mistaken for a client that merely finished sending, by this server or one
//! in between.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{debug, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token as PollToken, Waker};

use super::{Client, ClientError, Target, Transport};
use crate::access::Token;
use crate::limits::MAX_FRAME_LEN;
use crate::proto::exec::{
    ExecFlags, ExecRequest, Exit, PtyRequest, Resize, Signal, SignalRequest, Started, Window,
    valid_term,
};
use crate::proto::message::EXEC_VERSION;
use crate::proto::{Decoder, ErrorMessage, Flags, Frame, FrameType, HelloOk};

/// The stream id the command runs on (any non-zero id would do: one command per connection).
pub const STREAM: u32 = 1;

/// Largest STDIN payload sent, and the size of each read from local stdin.
const CHUNK: usize = 64 << 10;

/// TCP keepalive once the command runs: reads no longer time out, so a server that vanished
/// without a FIN or RST (a host down, a cable out) is noticed this way, after `IDLE` plus the
/// kernel's probe count (9 on Linux) times `INTERVAL` (two minutes) instead of never.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// The connection's token in the poll.
const SOCKET: PollToken = PollToken(0);
/// The waker's token: another thread queued a frame, or gave up.
const WAKE: PollToken = PollToken(1);

/// A command to run remotely.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// Program and arguments, as bytes (they need not be UTF-8). No shell is involved unless
    /// the program is one ([`Command::shell`]).
    pub argv: Vec<Vec<u8>>,
    /// Working directory relative to the server's root; empty for the root.
    pub cwd: String,
    /// Time limit asked of the server, which applies the smaller of it and its own; `None`
    /// for the server's own limit.
    pub timeout: Option<Duration>,
    /// Whether the command reads stdin from the client; otherwise its stdin is `/dev/null`
    /// and the client reads none (like `ssh -n`). A command on a terminal always reads it.
    pub stdin: bool,
    /// Run it on a pseudo-terminal of this size and `TERM` (`exec -t`); with no argv, the
    /// server runs its shell.
    pub pty: Option<Terminal>,
}

/// The terminal a command runs on: its size and `TERM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminal {
    /// Rows.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
    /// The command's `TERM`.
    pub term: String,
}

impl Terminal {
    /// The `TERM` a client sends when its own is unset or is not one a request may carry
    /// ([`valid_term`]): what most terminal emulators are.
    pub const DEFAULT_TERM: &'static str = "xterm-256color";

    /// A terminal of `rows` x `cols` with `term` if it is valid, else
    /// [`Terminal::DEFAULT_TERM`]. Sizes are clamped to 1..=[`MAX_TERM_DIM`] (a terminal that
    /// reports 0, as some do when they cannot tell, gets 24 x 80).
    ///
    /// [`MAX_TERM_DIM`]: crate::proto::exec::MAX_TERM_DIM
    pub fn new(rows: u16, cols: u16, term: Option<&str>) -> Terminal {
        let (rows, cols) = clamp_size(rows, cols);
        let term = match term {
            Some(term) if valid_term(term.as_bytes()) => term.to_string(),
            _ => Terminal::DEFAULT_TERM.to_string(),
        };
        Terminal { rows, cols, term }
    }
}

/// A size every server accepts: 0 (unknown) becomes 24 x 80's side, a huge one the maximum.
pub fn clamp_size(rows: u16, cols: u16) -> (u16, u16) {
    use crate::proto::exec::MAX_TERM_DIM;
    let rows = if rows == 0 {
        24
    } else {
        rows.min(MAX_TERM_DIM)
    };
    let cols = if cols == 0 {
        80
    } else {
        cols.min(MAX_TERM_DIM)
    };
    (rows, cols)
}

impl Command {
    /// `argv` in the root, with the server's time limit and stdin from the client.
    pub fn new<I, A>(argv: I) -> Command
    where
        I: IntoIterator<Item = A>,
        A: Into<Vec<u8>>,
    {
        Command {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: String::new(),
            timeout: None,
            stdin: true,
            pty: None,
        }
    }

    /// `sh -c SCRIPT`: the one way to get a shell, asked for explicitly.
    pub fn shell(script: &str) -> Command {
        Command::new(["sh", "-c", script])
    }

    /// The time limit as EXEC carries it: milliseconds, 0 for the server's limit. A limit
    /// rounds up to at least 1 ms (0 would mean "no limit of mine"), and one beyond the field
    /// (49 days) is the field's maximum, which the server's own limit undercuts anyway.
    pub fn timeout_ms(&self) -> u32 {
        match self.timeout {
            None => 0,
            Some(limit) => {
                let ms = limit.as_nanos().div_ceil(1_000_000).max(1);
                u32::try_from(ms).unwrap_or(u32::MAX)
            }
        }
    }

    /// The EXEC request for this command.
    pub fn request(&self) -> ExecRequest<'_> {
        ExecRequest {
            flags: if self.stdin {
                ExecFlags::STDIN
            } else {
                ExecFlags::NONE
            },
            timeout_ms: self.timeout_ms(),
            cwd: &self.cwd,
            argv: self.argv.iter().map(Vec::as_slice).collect(),
            pty: self.pty.as_ref().map(|pty| PtyRequest {
                rows: pty.rows,
                cols: pty.cols,
                term: &pty.term,
            }),
        }
    }
}

/// A connection that has done HELLO and may start one command.
#[derive(Debug)]
pub struct ExecClient {
    client: Client,
    hello: HelloOk,
}

impl ExecClient {
    /// Connects to `addr` and sends HELLO with `token` (none: the server decides whether an
    /// unauthenticated connection may run commands; it will not if it has a token). `timeout`
    /// bounds the connect, the handshake and, later, the wait for STARTED.
    pub fn connect(
        target: impl Into<Target>,
        token: Option<&Token>,
        timeout: Duration,
    ) -> Result<ExecClient, ClientError> {
        let credentials = token.map_or(&[][..], Token::as_bytes);
        let (client, hello) = Client::connect_with(target, credentials, timeout)?;
        Ok(ExecClient { client, hello })
    }

    /// Wraps a client that has already done HELLO, with the server's answer.
    pub fn from_client(client: Client, hello: HelloOk) -> ExecClient {
        ExecClient { client, hello }
    }

    /// The server's HELLO_OK: the version, the frame limit, and whether the connection is
    /// authenticated and the server runs commands.
    pub fn hello_ok(&self) -> HelloOk {
        self.hello
    }

    /// Sends EXEC and waits (within the connect timeout) for STARTED. An ERROR on the stream
    /// (not found, not permitted, exec disabled, unauthenticated, a limit) or on the
    /// connection comes back as [`ClientError::Server`].
    pub fn start(mut self, command: &Command) -> Result<Running, ClientError> {
        if self.hello.version < EXEC_VERSION {
            return Err(ClientError::Unsupported {
                version: self.hello.version,
                feature: "remote exec",
            });
        }
        let request = command.request();
        let len = request.payload_len();
        if len > self.hello.max_payload_len as usize {
            // The server would refuse it from the header and close the connection; saying so
            // here names the cause instead of FRAME_TOO_LARGE.
            return Err(ClientError::TooLarge {
                len,
                max: self.hello.max_payload_len,
            });
        }
        let mut wire = Vec::with_capacity(len + crate::proto::HEADER_LEN);
        request.encode(STREAM, &mut wire);
        self.client.send_raw(&wire)?;
        let started = loop {
            let frame = self.client.recv_frame()?;
            match frame.header.frame_type {
                FrameType::Started if frame.header.stream == STREAM => {
                    break Started::parse(&frame.payload).map_err(ClientError::Message)?;
                }
                FrameType::Error => return Err(server_error(&frame.payload)),
                // A newer server may send frames this client does not know on the connection;
                // ignoring them is what the protocol's version rules allow.
                FrameType::Unknown(byte) => debug!("ignoring frame type 0x{byte:02x}"),
                other => return Err(ClientError::Unexpected(other)),
            }
        };
        let socket = self.client.stream();
        // The command may now run, and be silent, for as long as the server allows: no read
        // timeout. Writes only carry STDIN within the credit and SIGNALs, which the server
        // always reads, so they need none either.
        socket.set_read_timeout(None)?;
        socket.set_write_timeout(None)?;
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL);
        if let Err(error) = socket2::SockRef::from(socket).set_tcp_keepalive(&keepalive) {
            debug!("no TCP keepalive: {error}");
        }
        // A descriptor for SO_LINGER only (see `Signaller::abort_on_close`), never for I/O.
        let linger = socket.try_clone()?;
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKE)?;
        Ok(Running {
            client: self.client,
            poll,
            started,
            stdin: command.stdin || command.pty.is_some(),
            max_payload: (self.hello.max_payload_len as usize).clamp(1, CHUNK),
            shared: Arc::new(Shared {
                outgoing: Mutex::new(Outgoing::default()),
                waker,
                linger,
                abandoned: AtomicBool::new(false),
                credit: Mutex::new(Credit {
                    bytes: u64::from(started.stdin_window),
                    finished: false,
                }),
                more: Condvar::new(),
            }),
        })
    }
}

/// ERROR payload → [`ClientError::Server`] (or the reason it does not parse).
fn server_error(payload: &[u8]) -> ClientError {
    match ErrorMessage::parse(payload) {
        Ok(error) => ClientError::Server {
            code: error.code,
            text: error.text.to_string(),
        },
        Err(error) => ClientError::Message(error),
    }
}

/// What the connection's thread, the stdin thread and the signallers share.
#[derive(Debug)]
struct Shared {
    /// Frames other threads want sent, whole and in order; the connection's thread takes
    /// them when woken.
    outgoing: Mutex<Outgoing>,
    /// Wakes the connection's thread from its poll.
    waker: Waker,
    /// A clone of the socket's descriptor, for `SO_LINGER` and nothing else.
    linger: TcpStream,
    /// [`Signaller::abandon`] was called.
    abandoned: AtomicBool,
    /// STDIN credit, and whether the conversation is over.
    credit: Mutex<Credit>,
    /// Signalled when credit grows or the conversation ends.
    more: Condvar,
}

/// Frames queued by other threads.
#[derive(Debug, Default)]
struct Outgoing {
    bytes: Vec<u8>,
    /// The conversation is over: nothing more is taken.
    closed: bool,
}

#[derive(Debug)]
struct Credit {
    /// STDIN bytes the server will still accept.
    bytes: u64,
    /// EXIT came, or the connection failed: the stdin thread stops at its next wake-up.
    finished: bool,
}

/// Recovers a lock whose holder panicked: the data behind these locks (a byte queue, two
/// integers) stays usable, and refusing it would only turn one panic into two.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn credit(&self) -> MutexGuard<'_, Credit> {
        lock(&self.credit)
    }

    /// Queues one frame, whole, for the connection's thread and wakes it.
    fn send(&self, frame: Frame<'_>) -> io::Result<()> {
        {
            let mut outgoing = lock(&self.outgoing);
            if outgoing.closed {
                return Err(io::Error::new(
                    ErrorKind::NotConnected,
                    "the command's connection is closed",
                ));
            }
            frame.encode_into(&mut outgoing.bytes);
        }
        self.waker.wake()
    }

    /// Moves the queued frames to the end of `out`.
    fn take_outgoing(&self, out: &mut Vec<u8>) {
        let mut outgoing = lock(&self.outgoing);
        if out.is_empty() {
            std::mem::swap(out, &mut outgoing.bytes);
        } else {
            out.append(&mut outgoing.bytes);
        }
    }

    /// Waits for credit, then takes up to `want` bytes of it; `None` once the conversation
    /// is over.
    fn take_credit(&self, want: usize) -> Option<usize> {
        let mut credit = self.credit();
        loop {
            if credit.finished {
                return None;
            }
            if credit.bytes > 0 {
                let grant = credit.bytes.min(want as u64);
                credit.bytes -= grant;
                return Some(grant as usize);
            }
            credit = self
                .more
                .wait(credit)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn add_credit(&self, increment: u32) {
        self.credit().bytes += u64::from(increment);
        self.more.notify_all();
    }

    /// Ends the conversation for the other threads: the stdin thread stops at its next
    /// wake-up, and nothing more is queued.
    fn finish(&self) {
        lock(&self.outgoing).closed = true;
        self.credit().finished = true;
        self.more.notify_all();
    }
}

/// Sends SIGNAL requests for a running command from any thread.
#[derive(Clone, Debug)]
pub struct Signaller {
    shared: Arc<Shared>,
}

impl Signaller {
    /// Asks the server to deliver `signal` to the command's process group. Harmless after the
    /// command ended: the server ignores a SIGNAL for a stream with no command. An error
    /// means the conversation is already over.
    pub fn send(&self, signal: Signal) -> io::Result<()> {
        let mut payload = [0; SignalRequest::PAYLOAD_LEN];
        SignalRequest { signal }.emit(&mut payload);
        let frame = Frame::new(FrameType::Signal, Flags::NONE, STREAM, &payload);
        self.shared.send(frame)
    }

    /// Tells the server the command's terminal is now `rows` x `cols` (clamped as
    /// [`clamp_size`] does). Ignored by the server for a command without a terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let (rows, cols) = clamp_size(rows, cols);
        let mut payload = [0; Resize::PAYLOAD_LEN];
        Resize { rows, cols }.emit(&mut payload);
        let frame = Frame::new(FrameType::Resize, Flags::NONE, STREAM, &payload);
        self.shared.send(frame)
    }

    /// Gives up on the command: [`Running::finish`] returns an error at once, and the
    /// connection closes with a reset, so the server stops the command (TERM to its group,
    /// KILL after a grace).
    pub fn abandon(&self) {
        abort_on_close(&self.shared.linger);
        self.shared.abandoned.store(true, Ordering::Release);
        self.shared.finish();
        if let Err(error) = self.shared.waker.wake() {
            debug!("cannot wake the connection's thread: {error}");
        }
    }

    /// Makes the connection close with a reset instead of a FIN whenever it closes, without
    /// closing it now: for a process about to exit while its other threads are blocked.
    pub fn abort_on_close(&self) {
        abort_on_close(&self.shared.linger);
    }
}

/// Finds ssh's escape in what is typed on a terminal: `~` right after a newline (or at the
/// very start) begins an escape; `~.` then closes the session, `~~` sends one `~`, and `~`
/// followed by anything else sends both. Sans-IO: feed it each chunk read.
#[derive(Clone, Copy, Debug)]
pub struct EscapeScanner {
    /// The last byte was a newline (or nothing was typed yet).
    at_line_start: bool,
    /// A `~` at a line start was held back, waiting for the next byte.
    pending_tilde: bool,
}

impl Default for EscapeScanner {
    fn default() -> EscapeScanner {
        EscapeScanner::new()
    }
}

/// What [`EscapeScanner::scan`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escape {
    /// Nothing: send what was written out.
    None,
    /// `~.`: close the session (what was written out precedes it and may still be sent).
    Disconnect,
}

impl EscapeScanner {
    /// At the start of a line.
    pub const fn new() -> EscapeScanner {
        EscapeScanner {
            at_line_start: true,
            pending_tilde: false,
        }
    }

    /// Scans `input`, appending what should be sent to `out`.
    pub fn scan(&mut self, input: &[u8], out: &mut Vec<u8>) -> Escape {
        for &byte in input {
            if self.pending_tilde {
                self.pending_tilde = false;
                match byte {
                    b'.' => return Escape::Disconnect,
                    b'~' => {
                        out.push(b'~');
                        self.at_line_start = false;
                        continue;
                    }
                    _ => out.push(b'~'),
                }
            } else if byte == b'~' && self.at_line_start {
                self.pending_tilde = true;
                continue;
            }
            out.push(byte);
            // In raw mode Enter is a CR; a cooked or piped stdin has LF.
            self.at_line_start = byte == b'\r' || byte == b'\n';
        }
        Escape::None
    }
}

/// `SO_LINGER` 0: the last close of the socket sends RST (see the module docs on closing).
fn abort_on_close(socket: &impl AsFd) {
    if let Err(error) = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO)) {
        debug!("cannot set SO_LINGER: {error}");
    }
}

/// A command the server has started.
#[derive(Debug)]
pub struct Running {
    client: Client,
    poll: Poll,
    started: Started,
    stdin: bool,
    /// Largest STDIN payload: the server's frame limit, at most [`CHUNK`].
    max_payload: usize,
    shared: Arc<Shared>,
}

impl Running {
    /// The command's process id on the server (also its process group id).
    pub fn pid(&self) -> u32 {
        self.started.pid
    }

    /// The STARTED message: pid and initial stdin window.
    pub fn started(&self) -> Started {
        self.started
    }

    /// A handle that sends SIGNAL requests while [`Running::finish`] runs.
    pub fn signaller(&self) -> Signaller {
        Signaller {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Runs the command to its end: `input` is copied into STDIN frames by a thread (if the
    /// command was started with stdin; `None` sends EOF at once), STDOUT and STDERR payloads
    /// are written to `stdout` and `stderr` as they arrive, each flushed at once. Returns the
    /// EXIT.
    ///
    /// Nothing here times out (see the module docs). When this returns, the connection is
    /// closed both ways. The stdin thread stops as soon as it wakes up; one blocked in a read
    /// of `input` that never returns (a terminal nobody types into) stays blocked until the
    /// process exits, as nothing can interrupt a blocking read portably; it holds nothing but
    /// its chunk buffer.
    pub fn finish<R, O, E>(
        self,
        input: Option<R>,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<Exit, ClientError>
    where
        R: Read + Send + 'static,
        O: Write + ?Sized,
        E: Write + ?Sized,
    {
        let Running {
            client,
            mut poll,
            shared,
            stdin,
            max_payload,
            ..
        } = self;
        let (transport, received, _) = client.into_parts();
        let mut connection = Connection {
            transport,
            received,
            out: Vec::new(),
            sent: 0,
        };
        let pump = if stdin {
            let for_thread = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name("stdin".to_string())
                .spawn(move || pump_stdin(&for_thread, input, max_payload));
            match spawned {
                Ok(handle) => Some(handle),
                Err(error) => {
                    connection.close(&shared, false);
                    return Err(ClientError::Io(error));
                }
            }
        } else {
            None
        };
        let result = connection.pump(&mut poll, &shared, stdout, stderr);
        connection.close(&shared, result.is_ok());
        if let Some(handle) = pump {
            reap(handle);
        }
        result
    }
}

/// The connection while a command runs: its transport, nonblocking, driven by one thread.
struct Connection {
    transport: Transport,
    /// Bytes received and not yet decoded.
    received: Vec<u8>,
    /// Bytes to send; `out[..sent]` are gone.
    out: Vec<u8>,
    sent: usize,
}

impl Connection {
    /// Until EXIT: decodes what came, hands other threads' frames to the socket, reads what
    /// the socket has, and sleeps in `poll` only when none of that made progress (the rules
    /// of edge-triggered readiness: every read and write goes on until it would block, so no
    /// edge is missed).
    fn pump<O, E>(
        &mut self,
        poll: &mut Poll,
        shared: &Shared,
        stdout: &mut O,
        stderr: &mut E,
    ) -> Result<Exit, ClientError>
    where
        O: Write + ?Sized,
        E: Write + ?Sized,
    {
        self.transport.tcp().set_nonblocking(true)?;
        let fd = self.transport.tcp().as_raw_fd();
        poll.registry().register(
            &mut SourceFd(&fd),
            SOCKET,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let decoder = Decoder::new(MAX_FRAME_LEN);
        let mut events = Events::with_capacity(4);
        loop {
            let mut frames = decoder.frames(&self.received);
            for frame in frames.by_ref() {
                let frame = frame.map_err(ClientError::Decode)?;
                if let Some(exit) = handle_frame(&frame, shared, stdout, stderr)? {
                    return Ok(exit);
                }
            }
            let consumed = frames.consumed();
            self.received.drain(..consumed);
            if shared.abandoned.load(Ordering::Acquire) {
                return Err(ClientError::Io(io::Error::new(
                    ErrorKind::ConnectionAborted,
                    "gave up on the command",
                )));
            }
            shared.take_outgoing(&mut self.out);
            self.send_available()?;
            let (progress, eof) = self.transport.read_available(&mut self.received)?;
            if eof {
                // Frames that came before the end are still decoded above, once.
                let mut frames = decoder.frames(&self.received);
                for frame in frames.by_ref() {
                    let frame = frame.map_err(ClientError::Decode)?;
                    if let Some(exit) = handle_frame(&frame, shared, stdout, stderr)? {
                        return Ok(exit);
                    }
                }
                let partial = self.received.len() - frames.consumed();
                return Err(ClientError::Closed { partial });
            }
            if progress {
                continue;
            }
            match poll.poll(&mut events, None) {
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                other => other?,
            }
        }
    }

    /// Writes what it can of `out` (nonblocking).
    fn send_available(&mut self) -> io::Result<()> {
        self.transport.write_available(&self.out, &mut self.sent)?;
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        }
        Ok(())
    }

    /// Ends the conversation: wakes the stdin thread so it stops, and closes the connection,
    /// in order after EXIT (`exited`), with a reset otherwise (see the module docs).
    fn close(&mut self, shared: &Shared, exited: bool) {
        shared.finish();
        let socket = self.transport.tcp();
        if exited {
            self.transport.close_notify();
            // A FIN.
            let _ = self.transport.tcp().shutdown(Shutdown::Both);
        } else {
            abort_on_close(socket);
            let _ = socket.shutdown(Shutdown::Read);
        }
    }
}

/// One frame from the server; `Some` once it is the EXIT.
fn handle_frame<O, E>(
    frame: &Frame<'_>,
    shared: &Shared,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<Option<Exit>, ClientError>
where
    O: Write + ?Sized,
    E: Write + ?Sized,
{
    let header = frame.header;
    if header.frame_type == FrameType::Error {
        // On stream 0 it ends the connection, on ours the command; either way it is the
        // last word about this command.
        return Err(server_error(frame.payload));
    }
    if header.stream != STREAM {
        if let FrameType::Unknown(byte) = header.frame_type {
            debug!(
                "ignoring frame type 0x{byte:02x} on stream {}",
                header.stream
            );
            return Ok(None);
        }
        return Err(ClientError::Unexpected(header.frame_type));
    }
    match header.frame_type {
        FrameType::Stdout => write_out(stdout, frame.payload)?,
        FrameType::Stderr => write_out(stderr, frame.payload)?,
        FrameType::Window => {
            let window = Window::parse(frame.payload).map_err(ClientError::Message)?;
            shared.add_credit(window.increment);
        }
        FrameType::Exit => {
            return Exit::parse(frame.payload)
                .map(Some)
                .map_err(ClientError::Message);
        }
        FrameType::Unknown(byte) => debug!("ignoring frame type 0x{byte:02x}"),
        other => return Err(ClientError::Unexpected(other)),
    }
    Ok(None)
}

/// Joins the stdin thread if it has already stopped; otherwise leaves it (see
/// [`Running::finish`]).
fn reap(handle: JoinHandle<()>) {
    if handle.is_finished() && handle.join().is_err() {
        warn!("the stdin thread panicked");
    }
}

/// The stdin thread: local stdin → STDIN frames within the credit, then STDIN_EOF.
fn pump_stdin<R: Read>(shared: &Shared, input: Option<R>, max_payload: usize) {
    let Some(mut input) = input else {
        let _ = shared.send(eof_frame());
        return;
    };
    let mut chunk = vec![0; CHUNK];
    loop {
        if shared.credit().finished {
            return;
        }
        let n = match input.read(&mut chunk) {
            Ok(n) => n,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(error) => {
                // Like ssh: an unreadable stdin ends the command's input, not the command.
                warn!("cannot read stdin ({error}); the command gets end of file");
                0
            }
        };
        if n == 0 {
            // A send error means the conversation is over; the connection's thread reports
            // why.
            let _ = shared.send(eof_frame());
            return;
        }
        let mut sent = 0;
        while sent < n {
            let Some(grant) = shared.take_credit((n - sent).min(max_payload)) else {
                return;
            };
            let frame = Frame::new(
                FrameType::Stdin,
                Flags::NONE,
                STREAM,
                &chunk[sent..sent + grant],
            );
            if shared.send(frame).is_err() {
                return;
            }
            sent += grant;
        }
    }
}

fn eof_frame() -> Frame<'static> {
    Frame::new(FrameType::StdinEof, Flags::NONE, STREAM, &[])
}

/// Writes and flushes: output appears as it arrives, and a slow reader of our stdout slows the
/// command down (we stop reading the socket, the server stops reading its pipes).
fn write_out<W: Write + ?Sized>(out: &mut W, bytes: &[u8]) -> Result<(), ClientError> {
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(ClientError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_a_millisecond_and_saturate() {
        let mut command = Command::new(["true"]);
        assert_eq!(command.timeout_ms(), 0, "no limit of ours");
        command.timeout = Some(Duration::from_micros(1));
        assert_eq!(command.timeout_ms(), 1, "never 0, which means the server's");
        command.timeout = Some(Duration::from_millis(1500));
        assert_eq!(command.timeout_ms(), 1500);
        command.timeout = Some(Duration::from_secs(1 << 40));
        assert_eq!(command.timeout_ms(), u32::MAX);
    }

    #[test]
    fn shell_is_sh_dash_c_and_stdin_decides_the_flag() {
        let mut command = Command::shell("echo $((1+1))");
        let request = command.request();
        assert_eq!(
            request.argv,
            [&b"sh"[..], &b"-c"[..], &b"echo $((1+1))"[..]]
        );
        assert_eq!(request.flags, ExecFlags::STDIN);
        command.stdin = false;
        assert_eq!(command.request().flags, ExecFlags::NONE);
    }

    #[test]
    fn a_terminal_sets_the_pty_fields_and_a_bad_term_or_size_is_made_good() {
        let mut command = Command::new(Vec::<Vec<u8>>::new());
        command.pty = Some(Terminal::new(0, 5000, Some("xterm;rm -rf")));
        let request = command.request();
        assert_eq!(
            request.pty,
            Some(PtyRequest {
                rows: 24,
                cols: crate::proto::exec::MAX_TERM_DIM,
                term: Terminal::DEFAULT_TERM
            })
        );
        let mut payload = vec![0; request.payload_len()];
        request.emit(&mut payload);
        assert_eq!(ExecRequest::parse(&payload), Ok(request));
        assert_eq!(Terminal::new(50, 132, Some("screen")).term, "screen");
        assert_eq!(Terminal::new(50, 132, None).term, Terminal::DEFAULT_TERM);
    }

    #[test]
    fn the_escape_is_tilde_dot_at_a_line_start_only_and_tilde_tilde_sends_one() {
        let scan = |chunks: &[&[u8]]| {
            let mut scanner = EscapeScanner::new();
            let mut out = Vec::new();
            for chunk in chunks {
                if scanner.scan(chunk, &mut out) == Escape::Disconnect {
                    return (out, true);
                }
            }
            (out, false)
        };
        assert_eq!(scan(&[b"~."]), (vec![], true), "at the very start");
        assert_eq!(scan(&[b"ls\r~."]), (b"ls\r".to_vec(), true));
        assert_eq!(scan(&[b"ls\r~", b"."]), (b"ls\r".to_vec(), true), "split");
        assert_eq!(scan(&[b"a~."]), (b"a~.".to_vec(), false), "mid-line");
        assert_eq!(scan(&[b"\n~~."]), (b"\n~.".to_vec(), false), "~~ is one ~");
        assert_eq!(scan(&[b"~x"]), (b"~x".to_vec(), false));
    }

    #[test]
    fn credit_is_taken_within_what_was_granted_and_finish_wakes_the_waiter() {
        let (a, _b) = loopback_pair();
        let poll = Poll::new().unwrap();
        let shared = Arc::new(Shared {
            outgoing: Mutex::new(Outgoing::default()),
            waker: Waker::new(poll.registry(), WAKE).unwrap(),
            linger: a,
            abandoned: AtomicBool::new(false),
            credit: Mutex::new(Credit {
                bytes: 10,
                finished: false,
            }),
            more: Condvar::new(),
        });
        assert_eq!(shared.take_credit(4), Some(4));
        assert_eq!(shared.take_credit(100), Some(6));
        let waiter = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || shared.take_credit(100))
        };
        shared.add_credit(3);
        assert_eq!(waiter.join().unwrap(), Some(3));
        let waiter = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || shared.take_credit(100))
        };
        shared.finish();
        assert_eq!(waiter.join().unwrap(), None);
        assert!(
            shared.send(eof_frame()).is_err(),
            "nothing is queued after the end"
        );
    }

    fn loopback_pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }
}
