//! What a framed connection does with each complete frame: the handshake, then requests by
//! type. The rules, in the order they are applied:
//!
//! 1. Before HELLO only HELLO is valid (and it belongs on stream 0).
//! 2. On a version 1 connection the exec and file frame types are unknown, as to a version 1
//!    server.
//! 3. Stream 0 is the connection: a request there is fatal. A stream with a command or a
//!    transfer running takes only its frames (STDIN, STDIN_EOF, SIGNAL; DATA, DIGEST): a new
//!    request on it is fatal ([`Connection::claim_stream_id`]).
//! 4. A request the connection may not make (no token, the service off, the client's FIN, a
//!    shutdown, a limit) is refused on its own stream and ends only that stream: the one
//!    ladder, with its table, is [`Connection::admit`].
//! 5. STDIN, STDIN_EOF and SIGNAL for a stream with no command, and DATA and DIGEST for one
//!    with no upload, are ignored: they may have crossed the stream's last frame on the wire.
//!    (A SIGNAL whose payload does not parse is fatal all the same: it is checked before the
//!    stream is looked up.)
//! 6. A client's ERROR ends what its stream names: the connection on stream 0; on a version 2
//!    connection, only that stream (its command is released, its transfer ends), whose id is
//!    free for a new request from the next frame on.
//!
//! A request let in starts here: a command is spawned, a transfer opened into the stream
//! table ([`Streams`]), and STAT, DELETE and MKDIR are answered at once.

use log::{debug, info, warn};

use super::admission::Admitted;
use super::context::{Context, Fatal};
use super::streams::{Exec, Get, List, Put, StreamKind, Streams, close_record};
use super::{Bits, Connection, DRAINING_TEXT, State};
use crate::access::{Authentication, FilesRight, Grant};
use crate::metrics::RequestKind;
use crate::metrics::access::{self, Line, Outcome, Record};
use crate::proto::exec::{EndReason, ExecRequest, Resize, SignalRequest};
use crate::proto::files::{FileInfo, FileKind, GetRequest, PutRequest};
use crate::proto::message::{EXEC_VERSION, MIN_PROTOCOL_VERSION};
use crate::proto::{
    ErrorCode, ErrorMessage, Frame, FrameType, Hello, HelloOk, PROTOCOL_VERSION, SessionFlags,
};
use crate::service::disk::FileError;
use crate::service::echo;

/// What starting an admitted request came to.
enum Started {
    /// It runs on its stream: a command, a transfer.
    Open(StreamKind),
    /// It was answered at once (STAT, DELETE, MKDIR, SET_ATTRS).
    Answered,
    /// It could not start: its ERROR, with this code, is queued.
    Failed(ErrorCode),
}

/// What kind of request a frame type starts.
fn request_kind(frame_type: FrameType) -> RequestKind {
    match frame_type {
        FrameType::Exec => RequestKind::Exec,
        FrameType::Get => RequestKind::Get,
        FrameType::Put => RequestKind::Put,
        FrameType::List => RequestKind::List,
        FrameType::Stat => RequestKind::Stat,
        FrameType::Delete => RequestKind::Delete,
        FrameType::Mkdir => RequestKind::Mkdir,
        FrameType::SetAttrs => RequestKind::SetAttrs,
        _ => RequestKind::Echo,
    }
}

/// The access line's request for an admitted one: its argv, or its verb and path (within
/// the credential's scope, as the server opens it).
fn admitted_text(admitted: &Admitted<'_>) -> String {
    let (kind, path) = match admitted {
        Admitted::Exec { request, .. } => return exec_text(request),
        Admitted::Get { path, .. } => (RequestKind::Get, path),
        Admitted::Put { path, .. } => (RequestKind::Put, path),
        Admitted::List { path, .. } => (RequestKind::List, path),
        Admitted::Stat(path) => (RequestKind::Stat, path),
        Admitted::Delete(path) => (RequestKind::Delete, path),
        Admitted::Mkdir(path) => (RequestKind::Mkdir, path),
        Admitted::SetAttrs { path, .. } => (RequestKind::SetAttrs, path),
    };
    access::request_text(kind.verb(), path.as_bytes())
}

/// An EXEC's argv as the access line shows it; on a terminal, `EXEC -t ARGV` (`EXEC -t` alone
/// for the server's shell).
fn exec_text(request: &ExecRequest<'_>) -> String {
    let text = access::argv_text(&request.argv);
    match (request.pty.is_some(), text.strip_prefix("EXEC")) {
        (true, Some(rest)) => format!("EXEC -t{rest}"),
        _ => text,
    }
}

/// The access line's request for a refused one, from its payload as far as it parses (a
/// refusal may be for a payload that does not).
fn refused_text(kind: RequestKind, payload: &[u8]) -> String {
    let path = match kind {
        RequestKind::Exec => {
            return ExecRequest::parse(payload)
                .map_or_else(|_| "EXEC ?".to_string(), |request| exec_text(&request));
        }
        RequestKind::Get => GetRequest::parse(payload).ok().map(|request| request.path),
        RequestKind::Put => PutRequest::parse(payload).ok().map(|request| request.path),
        _ => std::str::from_utf8(payload).ok(),
    };
    access::request_text(kind.verb(), path.unwrap_or("?").as_bytes())
}

impl Connection {
    /// Handles one complete frame.
    pub(super) fn dispatch(&mut self, frame: Frame<'_>, cx: &mut Context<'_>) -> Result<(), Fatal> {
        let stream = frame.header.stream;
        let frame_type = self.understood(frame.header.frame_type);
        // Stream 0 is the connection itself: HELLO lives there, requests never do.
        if frame_type == FrameType::Hello && stream != 0 {
            return Err(Fatal::new(
                ErrorCode::BadHello,
                format!("HELLO on stream {stream}; it belongs on stream 0"),
            ));
        }
        match self.state {
            State::AwaitingHello if frame_type == FrameType::Hello => self.hello(frame, cx),
            State::AwaitingHello => Err(Fatal::new(
                ErrorCode::UnexpectedFrame,
                format!("expected HELLO first, got {frame_type}"),
            )),
            State::Open => self.request(frame_type, frame, cx),
            State::Echoing | State::Closing | State::Closed => Ok(()),
        }
    }

    /// The frame type as this connection's version understands it: exec and file types are
    /// unknown to a version 1 connection.
    fn understood(&self, frame_type: FrameType) -> FrameType {
        // The bit first: a version 2 connection (the common case) needs no look at the type.
        if self.bits.has(Bits::EXEC_FRAMES) || self.state != State::Open {
            return frame_type;
        }
        if frame_type.since_version() > 1 {
            FrameType::Unknown(frame_type.to_u8())
        } else {
            frame_type
        }
    }

    fn hello(&mut self, frame: Frame<'_>, cx: &mut Context<'_>) -> Result<(), Fatal> {
        if self.bits.has(Bits::FAIL_HEALTH_CHECK) {
            // A balancer's check while the server drains: it must see the server go.
            return Err(Fatal::new(ErrorCode::ShuttingDown, DRAINING_TEXT));
        }
        let hello = Hello::parse(frame.payload)
            .map_err(|error| Fatal::new(ErrorCode::BadHello, error.to_string()))?;
        let version = hello.negotiate().ok_or_else(|| {
            Fatal::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "client speaks versions {}..={}, server {}..={}",
                    hello.min_version, hello.max_version, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION
                ),
            )
        })?;
        let grant = match cx
            .access
            .authenticate(hello.credentials, cx.peer.client_key)
        {
            Authentication::Granted(grant) => Some(grant),
            Authentication::Refused => {
                match cx.auth_log.as_deref_mut() {
                    Some(throttle) => {
                        if let Some(suppressed) = throttle.allow(cx.now) {
                            warn!(
                                "HELLO from {} with a wrong token refused ({suppressed} more since last report)",
                                cx.peer.addr
                            );
                        }
                    }
                    None => debug!("HELLO from {} with a wrong token refused", cx.peer.addr),
                }
                return Err(Fatal::new(
                    ErrorCode::AuthFailed,
                    "the credentials are not this server's token",
                ));
            }
            Authentication::Anonymous => None,
        };
        let authenticated = grant.is_some();
        // An access file's grant, kept for the connection's life (see `Streams::grant`).
        let grant = grant.flatten();
        let (may_exec, may_use_files) = match &grant {
            None => (cx.access.exec, true),
            Some(grant) => (grant.exec.any(), grant.files != FilesRight::None),
        };
        if let Some(grant) = grant {
            debug!("HELLO as credential \"{}\"", grant.name);
            self.streams = Some(Streams::for_grant(grant));
        }
        self.bits.set(Bits::AUTHENTICATED, authenticated);
        self.bits.set(Bits::EXEC_FRAMES, version >= EXEC_VERSION);
        self.set_state(State::Open);
        let mut flags = SessionFlags::NONE;
        if authenticated {
            flags = flags.with(SessionFlags::AUTHENTICATED);
        }
        // Whether commands run is told only to those who may run them, and files only to
        // those who may use them.
        if cx.access.exec && may_exec && authenticated {
            flags = flags.with(SessionFlags::EXEC);
        }
        if cx.files.is_some() && may_use_files && authenticated {
            flags = flags.with(SessionFlags::FILES);
        }
        let ok = HelloOk {
            version,
            max_payload_len: self.max_payload(cx.limits),
            flags,
        };
        self.outbox.replies(cx.pool, cx.limits).reply(
            FrameType::HelloOk,
            0,
            ok.payload_len() as u32,
            |out| ok.emit(out),
        );
        Ok(())
    }

    fn request(
        &mut self,
        frame_type: FrameType,
        frame: Frame<'_>,
        cx: &mut Context<'_>,
    ) -> Result<(), Fatal> {
        let stream = frame.header.stream;
        self.claim_stream_id(frame_type, stream)?;
        match frame_type {
            FrameType::EchoRequest => {
                cx.count(|metrics| metrics.request(RequestKind::Echo));
                echo::reply(frame, &mut self.outbox.replies(cx.pool, cx.limits));
                Ok(())
            }
            FrameType::Exec => {
                self.start(frame_type, frame, cx);
                Ok(())
            }
            FrameType::Stdin | FrameType::StdinEof | FrameType::Signal | FrameType::Resize => {
                self.deliver_to_command(frame_type, frame, cx)
            }
            file_request if file_request.is_file_request() => {
                self.start(frame_type, frame, cx);
                Ok(())
            }
            FrameType::Data | FrameType::Digest => {
                match self.streams.as_mut() {
                    Some(streams) => streams.upload_frame(
                        stream,
                        frame_type,
                        frame.payload,
                        &mut self.outbox,
                        cx,
                    ),
                    None => {
                        debug!("{frame_type} for stream {stream}, which has no upload: ignored")
                    }
                }
                Ok(())
            }
            FrameType::Unknown(byte) => {
                let text = format!("frame type 0x{byte:02x} is not known to this server");
                cx.count(|metrics| metrics.error(ErrorCode::UnknownFrameType));
                self.outbox.replies(cx.pool, cx.limits).error(
                    stream,
                    ErrorCode::UnknownFrameType,
                    &text,
                );
                Ok(())
            }
            FrameType::Error => {
                let reason = ErrorMessage::parse(frame.payload)
                    .map(|error| error.to_string())
                    .unwrap_or_else(|error| format!("unparsable error frame: {error}"));
                if stream != 0 && self.bits.has(Bits::EXEC_FRAMES) {
                    // Version 2: an ERROR on a request's stream ends that stream only — the
                    // client abandons its command, which is stopped and sends nothing more.
                    self.abandon_stream(stream, cx, &reason);
                    return Ok(());
                }
                Err(Fatal::quiet(format!("client reported an error: {reason}")))
            }
            other => Err(Fatal::new(
                ErrorCode::UnexpectedFrame,
                format!("{other} is not valid from a client here"),
            )),
        }
    }

    /// The client ended `stream` with an ERROR: its command, if any, is released (stopped and
    /// reaped by the I/O layer), its transfer ends (an upload's resumable partial stays), and
    /// nothing more is sent on the stream.
    fn abandon_stream(&mut self, stream: u32, cx: &mut Context<'_>, reason: &str) {
        let Some(abandoned) = self
            .streams
            .as_mut()
            .and_then(|streams| streams.remove(stream, cx.turn))
        else {
            debug!("client ERROR for stream {stream}, which has no command: ignored");
            return;
        };
        match &abandoned.kind {
            StreamKind::Exec(command) => debug!(
                "stream {stream}: the client abandoned pid {} ({reason})",
                command.session.pid()
            ),
            _ => debug!("stream {stream}: the client abandoned its transfer ({reason})"),
        }
        let grant = self.grant().cloned();
        abandoned.end(cx, EndReason::ClientSignal, grant.as_deref());
    }

    /// EXEC or a file request: admitted ([`Connection::admit`]) or refused on its stream,
    /// then started. Never fatal: a refused or failed request ends only its stream. Its
    /// access line is written now if it ends now (refused, failed to open, or answered at
    /// once), else when its stream ends (`Streams`).
    fn start(&mut self, frame_type: FrameType, frame: Frame<'_>, cx: &mut Context<'_>) {
        let stream = frame.header.stream;
        let kind = request_kind(frame_type);
        cx.count(|metrics| metrics.request(kind));
        let started = cx.now;
        let admitted = match self.admit(frame_type, frame, cx) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                if refusal.code == ErrorCode::Forbidden {
                    self.log_forbidden(stream, &refusal.text, cx);
                }
                self.log_failed(|| refused_text(kind, frame.payload), refusal.code, cx);
                self.outbox
                    .replies(cx.pool, cx.limits)
                    .error(stream, refusal.code, &refusal.text);
                return;
            }
        };
        let request = admitted_text(&admitted);
        let mut record = Box::new(Record::new(kind, request, started));
        // The connection's grant, for the texts the client sees (an `Arc` clone: the stream
        // table it lives in is borrowed mutably below).
        let grant = self.grant().cloned();
        let opened = match admitted {
            Admitted::Exec {
                request,
                cwd,
                child_number,
                slot,
            } => Exec::spawn(
                stream,
                &request,
                &cwd,
                (child_number, slot),
                grant.as_deref(),
                &mut self.outbox,
                cx,
            )
            .map_or_else(Started::Failed, |exec| {
                Started::Open(StreamKind::Exec(exec))
            }),
            file_request => {
                match self.start_file_request(
                    stream,
                    frame_type,
                    file_request,
                    grant.as_deref(),
                    cx,
                ) {
                    Ok(Some(opened)) => Started::Open(opened),
                    Ok(None) => Started::Answered,
                    Err(error) => {
                        debug!("stream {stream}: {frame_type} refused: {}", error.text);
                        let text = grant
                            .as_deref()
                            .map_or(error.text.as_str().into(), |grant| grant.shown(&error.text));
                        self.outbox
                            .replies(cx.pool, cx.limits)
                            .error(stream, error.code, &text);
                        Started::Failed(error.code)
                    }
                }
            }
        };
        let credential = grant.as_deref().map(|grant| grant.name.as_str());
        match opened {
            Started::Open(opened) => {
                self.streams
                    .get_or_insert_with(|| Streams::new(cx.limits.max_streams_per_connection))
                    .insert(
                        stream,
                        opened,
                        Some(record),
                        cx.limits.max_streams_per_connection,
                    );
            }
            Started::Answered => close_record(&record, cx, credential, Outcome::Ok),
            // Refused by the disk or the process table: a client can ask for that at line
            // rate, so these lines are throttled like refusals.
            Started::Failed(code) => {
                let request = std::mem::take(&mut record.request);
                self.log_failed(|| request, code, cx);
            }
        }
    }

    /// The access line of a request that ended before it started (refused, or its file or
    /// command could not be opened), throttled: one a second, with a count of those held
    /// back, since a client can send them at line rate. Counted either way.
    fn log_failed(&self, request: impl FnOnce() -> String, code: ErrorCode, cx: &mut Context<'_>) {
        let now = cx.now;
        let mut held = None;
        cx.count(|metrics| {
            metrics.error(code);
            held = Some(metrics.refusal_log.allow(now));
        });
        // Without counters (a context made by hand), every line is logged.
        let Some(suppressed) = held.unwrap_or(Some(0)) else {
            return;
        };
        let request = request();
        Line {
            peer: cx.peer.addr,
            credential: self.grant().map(|grant| grant.name.as_str()),
            request: &request,
            outcome: Outcome::Error(code),
            bytes_in: 0,
            bytes_out: 0,
            millis: 0,
        }
        .log();
        if suppressed > 0 {
            log::info!(
                target: access::TARGET,
                "{suppressed} more refused or failed requests and connections not logged since the last line"
            );
        }
    }

    /// Logs a FORBIDDEN refusal with the credential's name: one line a second per credential
    /// (with a count of those held back), since a client can send them at line rate.
    fn log_forbidden(&self, stream: u32, text: &str, cx: &Context<'_>) {
        match self.grant() {
            Some(grant) => {
                if let Some(held) = grant.log_refusal(cx.now) {
                    info!(
                        "credential \"{}\" from {}: stream {stream} refused: {text} ({held} more since last report)",
                        grant.name, cx.peer.addr
                    );
                }
            }
            None => debug!("stream {stream} refused: {text}"),
        }
    }

    /// An admitted file request: STAT, DELETE, MKDIR and SET_ATTRS answered at once; GET, PUT and LIST
    /// opened, to run on their stream (returned).
    fn start_file_request(
        &mut self,
        stream: u32,
        frame_type: FrameType,
        admitted: Admitted<'_>,
        grant: Option<&Grant>,
        cx: &mut Context<'_>,
    ) -> Result<Option<StreamKind>, FileError> {
        let Some(disk) = cx.files.as_deref_mut() else {
            return Ok(None); // refused by admission
        };
        let mut replies = self.outbox.replies(cx.pool, cx.limits);
        let opened = match admitted {
            Admitted::Stat(path) => {
                let (info, mode) = disk.stat(&path)?;
                // The mode after the 50 bytes, as in GET's FILE_INFO: a client before this
                // version reads the 50 and ignores the rest.
                replies.reply(
                    FrameType::FileInfo,
                    stream,
                    FileInfo::WITH_MODE_LEN as u32,
                    |out| {
                        info.emit(out);
                        FileInfo::emit_mode(mode, out);
                    },
                );
                return Ok(None);
            }
            Admitted::SetAttrs { path, attrs } => {
                disk.set_attrs(&path, attrs)?;
                replies.reply(FrameType::Done, stream, 0, |_| {});
                return Ok(None);
            }
            Admitted::Delete(path) | Admitted::Mkdir(path) => {
                if frame_type == FrameType::Delete {
                    // A file deleted by a credential with a quota is credited back to it: its
                    // size, read with one `stat` just before.
                    let freed = grant
                        .filter(|grant| grant.quota.is_some())
                        .and_then(|_| disk.stat(&path).ok())
                        .filter(|(info, _)| info.kind == FileKind::File)
                        .map_or(0, |(info, _)| info.size);
                    // DONE goes out once the name is gone; a big file's blocks are freed
                    // after, off the loop (`Disk::delete`).
                    disk.delete(&path)?;
                    if let Some(grant) = grant {
                        grant.credit(freed);
                    }
                } else {
                    disk.mkdir(&path)?;
                }
                replies.reply(FrameType::Done, stream, 0, |_| {});
                return Ok(None);
            }
            Admitted::List { path, permit } => StreamKind::List(List::open(&path, permit, disk)?),
            Admitted::Get {
                request,
                path,
                permit,
            } => StreamKind::Get(Get::open(
                stream,
                &GetRequest {
                    path: &path,
                    ..request
                },
                permit,
                disk,
                &mut replies,
                cx.wall_clock,
            )?),
            Admitted::Put {
                request,
                path,
                permit,
                quota,
            } => StreamKind::Put(Box::new(Put::begin(
                stream,
                &PutRequest {
                    path: &path,
                    ..request
                },
                permit,
                quota,
                disk,
            )?)),
            Admitted::Exec { .. } => return Ok(None), // not a file request
        };
        Ok(Some(opened))
    }

    /// STDIN, STDIN_EOF, SIGNAL and RESIZE: delivered to the command on the frame's stream, if
    /// there is one. A STDIN beyond the credit window, or a SIGNAL or RESIZE that does not
    /// parse, is fatal: the command is running, and an ERROR on its stream would end the
    /// stream under it.
    fn deliver_to_command(
        &mut self,
        frame_type: FrameType,
        frame: Frame<'_>,
        cx: &mut Context<'_>,
    ) -> Result<(), Fatal> {
        let stream = frame.header.stream;
        let signal = if frame_type == FrameType::Signal {
            Some(
                SignalRequest::parse(frame.payload)
                    .map_err(|error| Fatal::new(ErrorCode::BadRequest, error.to_string()))?
                    .signal,
            )
        } else {
            None
        };
        let resize = if frame_type == FrameType::Resize {
            Some(
                Resize::parse(frame.payload)
                    .map_err(|error| Fatal::new(ErrorCode::BadRequest, error.to_string()))?,
            )
        } else {
            None
        };
        let Some(command) = self
            .streams
            .as_mut()
            .and_then(|streams| streams.command_mut(stream))
        else {
            debug!("{frame_type} for stream {stream}, which has no command: ignored");
            return Ok(());
        };
        match frame_type {
            FrameType::Stdin => command
                .session
                .handle_stdin(frame.payload, cx.pool, cx.limits.stdin_window as usize)
                .map_err(|error| Fatal::new(ErrorCode::FlowControl, error.to_string())),
            FrameType::StdinEof => {
                command
                    .session
                    .handle_stdin_eof(cx.pool, cx.limits.stdin_window as usize);
                Ok(())
            }
            FrameType::Resize => {
                if let Some(size) = resize {
                    debug!(
                        "stream {stream}: terminal resized to {}x{}",
                        size.rows, size.cols
                    );
                    command.session.handle_resize(size);
                }
                Ok(())
            }
            _ => {
                if let Some(signal) = signal {
                    debug!("stream {stream}: client asks for {signal}");
                    command.session.handle_signal(signal);
                }
                Ok(())
            }
        }
    }
}
