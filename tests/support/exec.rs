//! A blocking driver for remote exec (protocol version 2) against a real server: a server
//! with a token and a root of its own ([`Server::start_exec`]), and a connection ([`ExecConn`])
//! that runs several commands at once, files every frame under its stream, checks the order of
//! each stream (STARTED first, END_STREAM only on EXIT or ERROR, nothing after it) and tracks
//! the stdin credit.
//!
//! Every wait has a deadline; a server that goes quiet fails the test with what each stream
//! had received so far.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use monoreactor::client::{Client, ClientError, OwnedFrame};
use monoreactor::proto::exec::{ExecFlags, ExecRequest, Exit, Signal, SignalRequest, Started};
use monoreactor::proto::exec::{Termination, Window};
use monoreactor::proto::{ErrorCode, ErrorMessage, Flags, Frame, FrameType, Hello, HelloOk};
use monoreactor::proto::{SessionFlags, message::EXEC_VERSION};

use super::{IO_TIMEOUT, Server, children_of};

/// The token every [`Server::start_exec`] server is given (at least 16 bytes, as required).
pub const TEST_TOKEN: &[u8] = b"exec-test-token-0123456789abcdef";

/// How long a command in these tests may take from EXEC to EXIT unless a test says otherwise.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(20);

// === Scratch directories ===

/// A fresh directory under the system temp dir, removed (with everything in it) on drop.
#[derive(Debug)]
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates `TMP/monoreactor-LABEL-PID-N-NANOS`, mode 0700, canonicalized.
    pub fn new(label: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.subsec_nanos());
        let name = format!(
            "monoreactor-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        fs::create_dir(&path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).expect("chmod scratch");
        let path = fs::canonicalize(&path).expect("canonical scratch path");
        Scratch { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// What [`Server::start_exec`] set up for a server.
#[derive(Debug)]
pub struct ExecSetup {
    /// Holds `root/`, `token` and anything a test puts beside them (outside the root).
    scratch: Scratch,
    root: PathBuf,
    token: Vec<u8>,
}

impl Server {
    /// `serve --exec --token-file SCRATCH/token --root SCRATCH/root` plus `extra`, with
    /// [`TEST_TOKEN`] in a 0600 token file; the scratch directory goes when the server does.
    pub fn start_exec(extra: &[&str]) -> Server {
        Server::start_exec_with(extra, |_| {})
    }

    /// Like [`Server::start_exec`], with a chance to adjust the command first.
    pub fn start_exec_with(extra: &[&str], configure: impl FnOnce(&mut Command)) -> Server {
        let scratch = Scratch::new("exec");
        let root = scratch.path().join("root");
        fs::create_dir(&root).expect("create the root");
        let token_file = write_token_file(scratch.path(), TEST_TOKEN);
        let token_arg = token_file.to_str().expect("UTF-8 temp path").to_string();
        let root_arg = root.to_str().expect("UTF-8 temp path").to_string();
        let mut args = vec!["--exec", "--token-file", &token_arg, "--root", &root_arg];
        args.extend_from_slice(extra);
        let mut server = Server::start_with(&args, configure);
        server.exec = Some(ExecSetup {
            scratch,
            root,
            token: TEST_TOKEN.to_vec(),
        });
        server
    }

    fn setup(&self) -> &ExecSetup {
        self.exec
            .as_ref()
            .expect("a server started with Server::start_exec")
    }

    /// The server's `--root` (canonical: what commands see as `HOME` and `pwd`).
    pub fn root(&self) -> &Path {
        &self.setup().root
    }

    /// A directory beside the root, outside it, removed with the server.
    pub fn scratch(&self) -> &Path {
        self.setup().scratch.path()
    }

    /// The token clients must present.
    pub fn token(&self) -> &[u8] {
        &self.setup().token
    }

    /// The server's child processes (its commands, running or not yet reaped) and states;
    /// its disk helper, a child for the server's whole life, is not counted.
    pub fn children(&self) -> Vec<(u32, char)> {
        children_of(self.pid())
            .into_iter()
            .filter(|&(pid, _)| !super::is_disk_helper(pid))
            .collect()
    }

    /// Fails the test if the server has any child process.
    #[track_caller]
    pub fn assert_no_children(&self, when: &str) {
        let children = self.children();
        assert!(
            children.is_empty(),
            "{when}: the server has child processes {children:?}"
        );
    }

    /// Waits up to `timeout` for the server to have no child process; whether it has none.
    pub fn wait_no_children(&self, timeout: Duration) -> bool {
        super::retry(timeout, || self.children().is_empty().then_some(())).is_some()
    }
}

/// Writes `token` to `DIR/token` with mode 0600; returns the path.
pub fn write_token_file(dir: &Path, token: &[u8]) -> PathBuf {
    let path = dir.join("token");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
    file.write_all(token).expect("write the token");
    path
}

// === Requests ===

/// An EXEC request for `argv` (stdin from `/dev/null`, cwd the root, the server's time limit).
pub fn request<'a>(argv: &[&'a str]) -> ExecRequest<'a> {
    ExecRequest::new(argv.iter().map(|arg| arg.as_bytes()).collect())
}

/// Like [`request`], with the STDIN flag: the command's stdin is a pipe fed by STDIN frames.
pub fn request_with_stdin<'a>(argv: &[&'a str]) -> ExecRequest<'a> {
    ExecRequest {
        flags: ExecFlags::STDIN,
        ..request(argv)
    }
}

/// `sh -c SCRIPT`.
pub fn shell(script: &str) -> ExecRequest<'_> {
    request(&["sh", "-c", script])
}

/// A complete EXEC frame on `stream`.
pub fn exec_frame(stream: u32, request: &ExecRequest<'_>) -> Vec<u8> {
    let mut wire = Vec::new();
    request.encode(stream, &mut wire);
    wire
}

/// A complete STDIN frame.
pub fn stdin_frame(stream: u32, bytes: &[u8]) -> Vec<u8> {
    Frame::new(FrameType::Stdin, Flags::NONE, stream, bytes).to_vec()
}

/// A complete STDIN_EOF frame.
pub fn stdin_eof_frame(stream: u32) -> Vec<u8> {
    Frame::new(FrameType::StdinEof, Flags::END_STREAM, stream, &[]).to_vec()
}

/// A complete SIGNAL frame.
pub fn signal_frame(stream: u32, signal: Signal) -> Vec<u8> {
    let mut payload = [0; SignalRequest::PAYLOAD_LEN];
    SignalRequest { signal }.emit(&mut payload);
    Frame::new(FrameType::Signal, Flags::NONE, stream, &payload).to_vec()
}

/// A HELLO frame carrying `credentials`.
pub fn hello_with(credentials: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    Hello::with_credentials(credentials).encode(&mut wire);
    wire
}

// === Hashing ===

/// FNV-1a, 64 bits: a streaming hash whose value does not depend on how the bytes were split.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl fmt::Debug for Fnv64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fnv64({:016x})", self.0)
    }
}

impl Fnv64 {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        let mut hash = self.0;
        for &byte in bytes {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = hash;
    }

    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> Fnv64 {
        let mut hash = Fnv64::default();
        hash.update(bytes);
        hash
    }
}

// === Streams ===

/// What a stream's output is kept as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Every byte, plus length and hash.
    Keep,
    /// Length and hash only.
    Hash,
    /// Length only (for a GiB that the test reads as fast as it can).
    Count,
}

/// One output pipe's bytes as received.
#[derive(Debug, Default)]
pub struct Output {
    /// The bytes ([`Sink::Keep`] only).
    pub bytes: Vec<u8>,
    /// How many arrived.
    pub len: u64,
    /// Their hash ([`Sink::Keep`] and [`Sink::Hash`]).
    pub hash: Fnv64,
    /// How many frames carried them.
    pub frames: u64,
}

impl Output {
    fn add(&mut self, sink: Sink, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.frames += 1;
        match sink {
            Sink::Keep => {
                self.bytes.extend_from_slice(bytes);
                self.hash.update(bytes);
            }
            Sink::Hash => self.hash.update(bytes),
            Sink::Count => {}
        }
    }

    /// The bytes as text (lossy), for assertions.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Everything one stream received, in the order the server sent it.
#[derive(Debug)]
pub struct StreamState {
    /// The stream id.
    pub id: u32,
    sink: Sink,
    /// When the EXEC was sent.
    pub sent_at: Instant,
    /// STARTED, if it came.
    pub started: Option<Started>,
    /// STDOUT frames.
    pub stdout: Output,
    /// STDERR frames.
    pub stderr: Output,
    /// Every WINDOW increment.
    pub windows: Vec<u32>,
    /// STDIN bytes sent so far.
    pub stdin_sent: u64,
    /// STDIN bytes the client may still send: the window in STARTED plus the WINDOWs, less
    /// what was sent.
    pub credit: u64,
    /// EXIT, if it came.
    pub exit: Option<Exit>,
    /// An ERROR on this stream, if one came (a refused request).
    pub error: Option<(ErrorCode, String)>,
    /// When EXIT or ERROR arrived.
    pub ended_at: Option<Instant>,
}

impl StreamState {
    fn new(id: u32, sink: Sink) -> StreamState {
        StreamState {
            id,
            sink,
            sent_at: Instant::now(),
            started: None,
            stdout: Output::default(),
            stderr: Output::default(),
            windows: Vec::new(),
            stdin_sent: 0,
            credit: 0,
            exit: None,
            error: None,
            ended_at: None,
        }
    }

    /// Whether the stream has ended (EXIT or ERROR).
    pub fn ended(&self) -> bool {
        self.ended_at.is_some()
    }

    /// The EXIT, failing the test if the stream ended otherwise.
    #[track_caller]
    pub fn exit(&self) -> Exit {
        match (self.exit, &self.error) {
            (Some(exit), _) => exit,
            (None, Some((code, text))) => {
                panic!("stream {} was refused: {code}: {text}", self.id)
            }
            (None, None) => panic!("stream {} has not ended: {self:?}", self.id),
        }
    }

    /// The exit code, failing the test if the command did not exit by itself.
    #[track_caller]
    pub fn code(&self) -> u8 {
        match self.exit().termination {
            Termination::Exited(code) => code,
            other => panic!(
                "stream {}: expected an exit code, got {other:?} (stderr: {:?})",
                self.id,
                self.stderr.text()
            ),
        }
    }

    /// How long from EXEC to the end of the stream.
    pub fn elapsed(&self) -> Duration {
        self.ended_at
            .map_or_else(|| self.sent_at.elapsed(), |end| end - self.sent_at)
    }

    /// A short account of the stream, for assertion messages.
    pub fn summary(&self) -> String {
        format!(
            "stream {}: started {:?}, stdout {} bytes in {} frames, stderr {} bytes ({:?}), windows {:?}, stdin sent {}, exit {:?}, error {:?}",
            self.id,
            self.started,
            self.stdout.len,
            self.stdout.frames,
            self.stderr.len,
            String::from_utf8_lossy(&self.stderr.bytes[..self.stderr.bytes.len().min(200)]),
            self.windows,
            self.stdin_sent,
            self.exit,
            self.error
        )
    }
}

/// What one [`ExecConn::pump`] saw.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A frame, filed under its stream.
    Frame {
        /// Its stream.
        stream: u32,
        /// Its type.
        frame_type: FrameType,
    },
    /// Nothing arrived before the deadline.
    Timeout,
    /// The server closed the connection (`clean`: EOF between frames, not a reset or a cut
    /// frame).
    Closed {
        /// A clean close.
        clean: bool,
    },
}

/// A version 2 connection for running commands.
pub struct ExecConn {
    client: Client,
    /// The server's HELLO_OK.
    pub hello_ok: HelloOk,
    next_stream: u32,
    streams: HashMap<u32, StreamState>,
    /// ECHO_REPLY payloads by stream.
    echoes: HashMap<u32, Vec<u8>>,
    /// An ERROR on stream 0 (the connection is ending), if one came.
    pub conn_error: Option<(ErrorCode, String)>,
    /// Set once the server closed the connection.
    pub closed: Option<bool>,
}

impl fmt::Debug for ExecConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecConn")
            .field("hello_ok", &self.hello_ok)
            .field("streams", &self.streams.len())
            .field("conn_error", &self.conn_error)
            .field("closed", &self.closed)
            .finish()
    }
}

impl ExecConn {
    /// Connects to `server` with its token and checks HELLO_OK says version 2, authenticated,
    /// exec on.
    #[track_caller]
    pub fn connect(server: &Server) -> ExecConn {
        let conn = ExecConn::connect_with(server, Some(server.token()))
            .unwrap_or_else(|error| panic!("exec connection to {}: {error}", server.framed()));
        let flags = conn.hello_ok.flags;
        assert_eq!(conn.hello_ok.version, EXEC_VERSION, "protocol version");
        assert!(
            flags.contains(SessionFlags::AUTHENTICATED.with(SessionFlags::EXEC)),
            "HELLO_OK flags {:#x}: expected AUTHENTICATED and EXEC",
            flags.bits()
        );
        conn
    }

    /// Connects with `credentials` (none: a HELLO without a token).
    pub fn connect_with(
        server: &Server,
        credentials: Option<&[u8]>,
    ) -> Result<ExecConn, ClientError> {
        let mut client = Client::connect_raw(&server.framed_str(), IO_TIMEOUT)?;
        let hello_ok = client.hello(Hello::with_credentials(credentials.unwrap_or(&[])))?;
        Ok(ExecConn::from_client(client, hello_ok))
    }

    /// Wraps a client that has done HELLO.
    pub fn from_client(client: Client, hello_ok: HelloOk) -> ExecConn {
        ExecConn {
            client,
            hello_ok,
            next_stream: 1,
            streams: HashMap::new(),
            echoes: HashMap::new(),
            conn_error: None,
            closed: None,
        }
    }

    /// The client underneath (its socket: [`Client::stream`]).
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// A stream id not used before on this connection.
    pub fn new_stream(&mut self) -> u32 {
        let stream = self.next_stream;
        self.next_stream += 1;
        stream
    }

    /// Sends EXEC on a new stream, keeping all output; returns the stream.
    #[track_caller]
    pub fn exec(&mut self, request: &ExecRequest<'_>) -> u32 {
        self.exec_with(request, Sink::Keep)
    }

    /// Sends EXEC on a new stream with output kept as `sink`; returns the stream.
    #[track_caller]
    pub fn exec_with(&mut self, request: &ExecRequest<'_>, sink: Sink) -> u32 {
        let stream = self.new_stream();
        self.exec_on(stream, request, sink);
        stream
    }

    /// Sends EXEC on `stream`.
    #[track_caller]
    pub fn exec_on(&mut self, stream: u32, request: &ExecRequest<'_>, sink: Sink) {
        self.streams.insert(stream, StreamState::new(stream, sink));
        self.send(&exec_frame(stream, request));
    }

    /// Tracks `stream` as an exec stream and sends `wire` (an EXEC frame built by hand).
    #[track_caller]
    pub fn exec_on_raw(&mut self, stream: u32, wire: &[u8]) {
        self.streams
            .insert(stream, StreamState::new(stream, Sink::Keep));
        self.send(wire);
    }

    /// Sends raw bytes.
    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.client
            .send_raw(bytes)
            .unwrap_or_else(|error| panic!("write of {} bytes failed: {error}", bytes.len()));
    }

    /// Sends STDIN within the stream's credit (more is a test bug: see
    /// [`ExecConn::stdin_unchecked`]).
    #[track_caller]
    pub fn stdin(&mut self, stream: u32, bytes: &[u8]) {
        let state = self.state_mut(stream);
        assert!(
            bytes.len() as u64 <= state.credit,
            "stream {stream}: {} STDIN bytes with only {} of credit",
            bytes.len(),
            state.credit
        );
        self.stdin_unchecked(stream, bytes);
    }

    /// Sends STDIN whatever the credit.
    #[track_caller]
    pub fn stdin_unchecked(&mut self, stream: u32, bytes: &[u8]) {
        let state = self.state_mut(stream);
        state.credit = state.credit.saturating_sub(bytes.len() as u64);
        state.stdin_sent += bytes.len() as u64;
        self.send(&stdin_frame(stream, bytes));
    }

    /// Sends STDIN_EOF.
    #[track_caller]
    pub fn stdin_eof(&mut self, stream: u32) {
        self.send(&stdin_eof_frame(stream));
    }

    /// Sends SIGNAL.
    #[track_caller]
    pub fn signal(&mut self, stream: u32, signal: Signal) {
        self.send(&signal_frame(stream, signal));
    }

    /// The stream's state so far.
    #[track_caller]
    pub fn state(&self, stream: u32) -> &StreamState {
        self.streams
            .get(&stream)
            .unwrap_or_else(|| panic!("stream {stream} was never opened"))
    }

    #[track_caller]
    fn state_mut(&mut self, stream: u32) -> &mut StreamState {
        self.streams
            .get_mut(&stream)
            .unwrap_or_else(|| panic!("stream {stream} was never opened"))
    }

    /// Forgets the stream and returns what it received.
    #[track_caller]
    pub fn take(&mut self, stream: u32) -> StreamState {
        self.streams
            .remove(&stream)
            .unwrap_or_else(|| panic!("stream {stream} was never opened"))
    }

    /// Receives one frame (or learns of the close, or reaches `deadline`) and files it under
    /// its stream. A frame out of order for its stream fails the test.
    #[track_caller]
    pub fn pump(&mut self, deadline: Instant) -> Event {
        if let Some(clean) = self.closed {
            return Event::Closed { clean };
        }
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        self.client
            .stream()
            .set_read_timeout(Some(remaining))
            .expect("set the read timeout");
        let received = self.client.recv_frame();
        // Whoever reads next through `client()` gets the usual timeout back.
        self.client
            .stream()
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("set the read timeout");
        let frame = match received {
            Ok(frame) => frame,
            Err(ClientError::Io(error))
                if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                return Event::Timeout;
            }
            Err(ClientError::Closed { partial }) => {
                self.closed = Some(partial == 0);
                return Event::Closed {
                    clean: partial == 0,
                };
            }
            Err(ClientError::Io(error)) => {
                eprintln!("connection failed: {error}");
                self.closed = Some(false);
                return Event::Closed { clean: false };
            }
            Err(error) => panic!("bad frame from the server: {error}"),
        };
        let stream = frame.header.stream;
        let frame_type = frame.header.frame_type;
        self.file(frame);
        Event::Frame { stream, frame_type }
    }

    #[track_caller]
    fn file(&mut self, frame: OwnedFrame) {
        let stream = frame.header.stream;
        let frame_type = frame.header.frame_type;
        let end_stream = frame.header.flags.contains(Flags::END_STREAM);
        if stream == 0 {
            assert_eq!(
                frame_type,
                FrameType::Error,
                "only ERROR may come on stream 0 after HELLO_OK"
            );
            let error = ErrorMessage::parse(&frame.payload).expect("ERROR payload parses");
            assert!(
                self.conn_error.is_none(),
                "a second ERROR on stream 0: {error}"
            );
            self.conn_error = Some((error.code, error.text.to_string()));
            return;
        }
        if frame_type == FrameType::EchoReply {
            assert!(end_stream, "ECHO_REPLY without END_STREAM");
            let previous = self.echoes.insert(stream, frame.payload);
            assert!(
                previous.is_none(),
                "two ECHO_REPLY frames on stream {stream}"
            );
            return;
        }
        let Some(state) = self.streams.get_mut(&stream) else {
            panic!(
                "{frame_type} on stream {stream}, which this client never opened ({} bytes)",
                frame.payload.len()
            );
        };
        assert!(
            !state.ended(),
            "{frame_type} on stream {stream} after its end: {}",
            state.summary()
        );
        let ends = matches!(frame_type, FrameType::Exit | FrameType::Error);
        assert_eq!(
            end_stream,
            ends,
            "{frame_type} on stream {stream} with END_STREAM {}",
            if end_stream { "set" } else { "clear" }
        );
        if frame_type != FrameType::Started && frame_type != FrameType::Error {
            assert!(
                state.started.is_some(),
                "{frame_type} on stream {stream} before STARTED"
            );
        }
        match frame_type {
            FrameType::Started => {
                assert!(
                    state.started.is_none(),
                    "a second STARTED on stream {stream}"
                );
                let started = Started::parse(&frame.payload).expect("STARTED parses");
                state.credit = u64::from(started.stdin_window);
                state.started = Some(started);
            }
            FrameType::Stdout => state.stdout.add(state.sink, &frame.payload),
            FrameType::Stderr => state.stderr.add(state.sink, &frame.payload),
            FrameType::Window => {
                let window = Window::parse(&frame.payload).expect("WINDOW parses");
                state.windows.push(window.increment);
                state.credit += u64::from(window.increment);
            }
            FrameType::Exit => {
                state.exit = Some(Exit::parse(&frame.payload).expect("EXIT parses"));
                state.ended_at = Some(Instant::now());
            }
            FrameType::Error => {
                let error = ErrorMessage::parse(&frame.payload).expect("ERROR payload parses");
                state.error = Some((error.code, error.text.to_string()));
                state.ended_at = Some(Instant::now());
            }
            other => panic!("{other} is not a frame a server sends on an exec stream"),
        }
    }

    /// Pumps until `done` holds for the stream, the connection closes, or `timeout` passes
    /// (both fail the test).
    #[track_caller]
    pub fn wait_for(
        &mut self,
        stream: u32,
        timeout: Duration,
        what: &str,
        done: impl Fn(&StreamState) -> bool,
    ) -> &StreamState {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self.state(stream)) {
                return self.state(stream);
            }
            match self.pump(deadline) {
                Event::Frame { .. } => {}
                Event::Timeout => panic!(
                    "no {what} within {timeout:?}: {}",
                    self.state(stream).summary()
                ),
                Event::Closed { clean } => panic!(
                    "connection closed (clean: {clean}, error: {:?}) waiting for {what}: {}",
                    self.conn_error,
                    self.state(stream).summary()
                ),
            }
        }
    }

    /// Waits for STARTED on `stream`; a refusal fails the test.
    #[track_caller]
    pub fn started(&mut self, stream: u32) -> Started {
        let state = self.wait_for(stream, IO_TIMEOUT, "STARTED", |state| {
            state.started.is_some() || state.ended()
        });
        match (state.started, &state.error) {
            (Some(started), _) => started,
            (None, Some((code, text))) => panic!("stream {stream} refused: {code}: {text}"),
            (None, None) => unreachable!("waited for STARTED or the end"),
        }
    }

    /// Waits for the stream to end with an ERROR; returns its code and text. STARTED fails the
    /// test.
    #[track_caller]
    pub fn refused(&mut self, stream: u32) -> (ErrorCode, String) {
        let state = self.wait_for(stream, IO_TIMEOUT, "a refusal", |state| {
            state.started.is_some() || state.ended()
        });
        assert!(
            state.started.is_none(),
            "expected a refusal, got {}",
            state.summary()
        );
        state
            .error
            .clone()
            .expect("ended without STARTED: an ERROR")
    }

    /// Waits up to `timeout` for the stream to end (EXIT or ERROR).
    #[track_caller]
    pub fn wait_end(&mut self, stream: u32, timeout: Duration) -> &StreamState {
        self.wait_for(stream, timeout, "EXIT", StreamState::ended)
    }

    /// Runs `request` to its end within [`RUN_TIMEOUT`], keeping all output.
    #[track_caller]
    pub fn run(&mut self, request: &ExecRequest<'_>) -> StreamState {
        let stream = self.exec(request);
        self.wait_end(stream, RUN_TIMEOUT);
        self.take(stream)
    }

    /// Runs `argv` to its end, keeping all output.
    #[track_caller]
    pub fn run_argv(&mut self, argv: &[&str]) -> StreamState {
        self.run(&request(argv))
    }

    /// Sends ECHO_REQUEST on a new stream and waits for its reply (filing other frames
    /// meanwhile); returns the round-trip time.
    #[track_caller]
    pub fn echo(&mut self, payload: &[u8]) -> Duration {
        let stream = self.new_stream();
        let sent = Instant::now();
        self.send(&super::echo_request(stream, payload));
        let deadline = sent + IO_TIMEOUT;
        loop {
            if let Some(reply) = self.echoes.remove(&stream) {
                assert!(
                    reply == payload,
                    "echo on stream {stream} came back changed"
                );
                return sent.elapsed();
            }
            match self.pump(deadline) {
                Event::Frame { .. } => {}
                other => panic!("no ECHO_REPLY on stream {stream}: {other:?}"),
            }
        }
    }

    /// Waits for an ERROR on stream 0 and then the close; returns the error's text.
    #[track_caller]
    pub fn expect_conn_error(&mut self, code: ErrorCode) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        while self.conn_error.is_none() {
            match self.pump(deadline) {
                Event::Frame { .. } => {}
                other => panic!("expected ERROR {code} on stream 0, got {other:?}"),
            }
        }
        let (got, text) = self.conn_error.clone().expect("checked");
        assert_eq!(got, code, "connection error (text: {text:?})");
        match self.pump(deadline) {
            Event::Closed { clean: true } => {}
            other => panic!("expected a clean close after ERROR {code}, got {other:?}"),
        }
        text
    }

    /// Feeds `data` to the stream's stdin within its credit, from a writer thread (so a full
    /// socket never stalls the reading here), in STDIN frames of at most `chunk` bytes, then
    /// STDIN_EOF; meanwhile files everything that arrives. Returns once the stream has ended.
    /// Checks that the credit is never exceeded and that the server never grants more credit
    /// than the bytes it has taken.
    #[track_caller]
    pub fn feed_stdin(
        &mut self,
        stream: u32,
        data: &[u8],
        chunk: usize,
        timeout: Duration,
    ) -> &StreamState {
        self.started(stream);
        let mut writer = self
            .client
            .stream()
            .try_clone()
            .expect("clone the socket for writing");
        let deadline = Instant::now() + timeout;
        let (queue, frames) = mpsc::channel::<Vec<u8>>();
        thread::scope(|scope| {
            let writing = scope.spawn(move || -> std::io::Result<()> {
                for frame in frames {
                    writer.write_all(&frame)?;
                }
                Ok(())
            });
            let mut offset = 0;
            let mut eof_sent = false;
            loop {
                let state = self.streams.get_mut(&stream).expect("opened");
                let granted: u64 = state.windows.iter().map(|&w| u64::from(w)).sum();
                assert!(
                    granted <= state.stdin_sent,
                    "stream {stream}: WINDOWs granted {granted} bytes after only {} were sent",
                    state.stdin_sent
                );
                while offset < data.len() && state.credit > 0 && !state.ended() {
                    let n = chunk.min(data.len() - offset).min(state.credit as usize);
                    queue
                        .send(stdin_frame(stream, &data[offset..offset + n]))
                        .expect("writer alive");
                    state.credit -= n as u64;
                    state.stdin_sent += n as u64;
                    offset += n;
                }
                if offset == data.len() && !eof_sent {
                    queue.send(stdin_eof_frame(stream)).expect("writer alive");
                    eof_sent = true;
                }
                if state.ended() {
                    break;
                }
                match self.pump(deadline) {
                    Event::Frame { .. } => {}
                    Event::Timeout => panic!(
                        "stdin feed stalled at {offset} of {} bytes: {}",
                        data.len(),
                        self.state(stream).summary()
                    ),
                    Event::Closed { clean } => panic!(
                        "connection closed (clean: {clean}, error {:?}) at {offset} of {} stdin bytes: {}",
                        self.conn_error,
                        data.len(),
                        self.state(stream).summary()
                    ),
                }
            }
            drop(queue);
            writing
                .join()
                .expect("writer thread")
                .expect("writing STDIN frames");
        });
        self.state(stream)
    }
}
