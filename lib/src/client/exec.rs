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
//!    thread writes STDOUT and STDERR payloads out as they arrive and returns the EXIT.
//!
//! Why a thread for stdin: the client waits on two things at once, local stdin and the socket.
//! The server does that with one `poll`; a client may block, and two blocking loops that meet
//! at a `Condvar` (for credit) and a `Mutex` (for the socket's write half) are less code than a
//! second event loop. The thread holds at most one 64 KiB chunk, so however fast stdin is,
//! neither side buffers more than the window.
//!
//! [`Running::signaller`] hands out a [`Signaller`] that another thread (a signal handler
//! thread, a test) uses to send a SIGNAL request while `finish` runs.
//!
//! # Closing
//! After EXIT the connection is closed the ordinary way (FIN). When the client gives up
//! instead (an error, [`Signaller::abandon`], [`Signaller::abort_on_close`]) it closes with a
//! reset (`SO_LINGER` 0): an abort, not an end of input. The server stops a command whose
//! client is gone either way (TERM to its group, KILL after a grace), but a reset cannot be
//! mistaken for a client that merely finished sending, by this server or one in between.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use log::{debug, warn};

use super::{Client, ClientError};
use crate::access::Token;
use crate::proto::exec::{ExecFlags, ExecRequest, Exit, Signal, SignalRequest, Started, Window};
use crate::proto::message::EXEC_VERSION;
use crate::proto::{ErrorMessage, Flags, Frame, FrameType, HelloOk};

/// The stream id the command runs on (any non-zero id would do: one command per connection).
pub const STREAM: u32 = 1;

/// Largest STDIN payload sent, and the size of each read from local stdin.
const CHUNK: usize = 64 << 10;

/// TCP keepalive once the command runs: reads no longer time out, so a server that vanished
/// without a FIN or RST (a host down, a cable out) is noticed this way, after `IDLE` plus the
/// kernel's probe count (9 on Linux) times `INTERVAL` (two minutes) instead of never.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

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
    /// and the client reads none (like `ssh -n`).
    pub stdin: bool,
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
        addr: &str,
        token: Option<&Token>,
        timeout: Duration,
    ) -> Result<ExecClient, ClientError> {
        let credentials = token.map_or(&[][..], Token::as_bytes);
        let (client, hello) = Client::connect_with(addr, credentials, timeout)?;
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
        let writer = Some(socket.try_clone()?);
        Ok(Running {
            client: self.client,
            started,
            stdin: command.stdin,
            max_payload: (self.hello.max_payload_len as usize).clamp(1, CHUNK),
            shared: Arc::new(Shared {
                writer: Mutex::new(writer),
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

/// What the output side and the stdin thread share.
#[derive(Debug)]
struct Shared {
    /// The socket's write half (a clone of the descriptor): STDIN, STDIN_EOF and SIGNAL frames
    /// come from different threads, and the lock keeps each frame whole on the wire. Taken out
    /// when the conversation ends, so a stdin thread still blocked in a read of stdin does not
    /// keep the connection open.
    writer: Mutex<Option<TcpStream>>,
    /// STDIN credit, and whether the conversation is over.
    credit: Mutex<Credit>,
    /// Signalled when credit grows or the conversation ends.
    more: Condvar,
}

#[derive(Debug)]
struct Credit {
    /// STDIN bytes the server will still accept.
    bytes: u64,
    /// EXIT came, or the connection failed: the stdin thread stops at its next wake-up.
    finished: bool,
}

impl Shared {
    fn credit(&self) -> MutexGuard<'_, Credit> {
        // A poisoned lock means the other thread panicked mid-update of two integers; the
        // values are still usable, and refusing them would only turn one panic into two.
        self.credit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, Option<TcpStream>> {
        // Poisoned: a thread panicked while writing; the socket itself is still a socket.
        self.writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends one frame whole.
    fn send(&self, frame: Frame<'_>, scratch: &mut Vec<u8>) -> io::Result<()> {
        scratch.clear();
        frame.encode_into(scratch);
        let mut writer = self.writer();
        let Some(socket) = writer.as_mut() else {
            return Err(io::Error::new(
                ErrorKind::NotConnected,
                "the command's connection is closed",
            ));
        };
        // `write_all` uses send(2) with MSG_NOSIGNAL: a closed connection is an error here,
        // never a SIGPIPE, even in a client that restored SIGPIPE's default action.
        socket.write_all(scratch)
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

    fn finish(&self) {
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
    /// command ended: the server ignores a SIGNAL for a stream with no command.
    pub fn send(&self, signal: Signal) -> io::Result<()> {
        let mut payload = [0; SignalRequest::PAYLOAD_LEN];
        SignalRequest { signal }.emit(&mut payload);
        let frame = Frame::new(FrameType::Signal, Flags::NONE, STREAM, &payload);
        self.shared.send(frame, &mut Vec::new())
    }

    /// Gives up on the command: [`Running::finish`] returns an error at once, and the
    /// connection closes with a reset, so the server stops the command (TERM to its group,
    /// KILL after a grace).
    pub fn abandon(&self) {
        self.shared.finish();
        if let Some(socket) = self.shared.writer().as_ref() {
            abort_on_close(socket);
            // SHUT_RD sends nothing to the peer; it only wakes our own blocked read, which
            // then sees end of file.
            let _ = socket.shutdown(Shutdown::Read);
        }
    }

    /// Makes the connection close with a reset instead of a FIN whenever it closes, without
    /// closing it now: for a process about to exit while its other threads are blocked.
    pub fn abort_on_close(&self) {
        if let Some(socket) = self.shared.writer().as_ref() {
            abort_on_close(socket);
        }
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
            mut client,
            shared,
            stdin,
            max_payload,
            ..
        } = self;
        let pump = if stdin {
            let for_thread = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name("stdin".to_string())
                .spawn(move || pump_stdin(&for_thread, input, max_payload));
            match spawned {
                Ok(handle) => Some(handle),
                Err(error) => {
                    close(&client, &shared, false);
                    return Err(ClientError::Io(error));
                }
            }
        } else {
            None
        };
        let result = pump_output(&mut client, &shared, stdout, stderr);
        close(&client, &shared, result.is_ok());
        if let Some(handle) = pump {
            reap(handle);
        }
        result
    }
}

/// Ends the conversation: wakes the stdin thread so it stops, and closes the connection, in
/// order after EXIT (`exited`), with a reset otherwise (see the module docs on closing).
fn close(client: &Client, shared: &Shared, exited: bool) {
    shared.finish();
    let socket = client.stream();
    if exited {
        // A FIN; it also makes a write blocked in the stdin thread fail.
        let _ = socket.shutdown(Shutdown::Both);
    } else {
        abort_on_close(socket);
        let _ = socket.shutdown(Shutdown::Read);
    }
    // The descriptor clone goes now, unless the stdin thread is in the middle of a send: it
    // then drops it with its last reference when that send ends. The socket closes once both
    // it and `client`, dropped on return from `finish`, are gone.
    if let Ok(mut writer) = shared.writer.try_lock() {
        writer.take();
    }
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
    let mut scratch = Vec::with_capacity(crate::proto::HEADER_LEN + max_payload);
    let Some(mut input) = input else {
        let _ = shared.send(eof_frame(), &mut scratch);
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
            // A send error means the connection is gone; the output side reports it.
            let _ = shared.send(eof_frame(), &mut scratch);
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
            if shared.send(frame, &mut scratch).is_err() {
                return;
            }
            sent += grant;
        }
    }
}

fn eof_frame() -> Frame<'static> {
    Frame::new(FrameType::StdinEof, Flags::NONE, STREAM, &[])
}

/// The calling thread: frames from the server until EXIT.
fn pump_output<O, E>(
    client: &mut Client,
    shared: &Shared,
    stdout: &mut O,
    stderr: &mut E,
) -> Result<Exit, ClientError>
where
    O: Write + ?Sized,
    E: Write + ?Sized,
{
    loop {
        let frame = client.recv_frame()?;
        let header = frame.header;
        if header.frame_type == FrameType::Error {
            // On stream 0 it ends the connection, on ours the command; either way it is the
            // last word about this command.
            return Err(server_error(&frame.payload));
        }
        if header.stream != STREAM {
            if let FrameType::Unknown(byte) = header.frame_type {
                debug!(
                    "ignoring frame type 0x{byte:02x} on stream {}",
                    header.stream
                );
                continue;
            }
            return Err(ClientError::Unexpected(header.frame_type));
        }
        match header.frame_type {
            FrameType::Stdout => write_out(stdout, &frame.payload)?,
            FrameType::Stderr => write_out(stderr, &frame.payload)?,
            FrameType::Window => {
                let window = Window::parse(&frame.payload).map_err(ClientError::Message)?;
                shared.add_credit(window.increment);
            }
            FrameType::Exit => return Exit::parse(&frame.payload).map_err(ClientError::Message),
            FrameType::Unknown(byte) => debug!("ignoring frame type 0x{byte:02x}"),
            other => return Err(ClientError::Unexpected(other)),
        }
    }
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
    fn credit_is_taken_within_what_was_granted_and_finish_wakes_the_waiter() {
        let (a, _b) = loopback_pair();
        let shared = Arc::new(Shared {
            writer: Mutex::new(Some(a)),
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
    }

    fn loopback_pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }
}
