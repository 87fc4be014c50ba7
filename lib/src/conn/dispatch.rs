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
use super::streams::{Exec, Get, List, Put, StreamKind, Streams};
use super::{Bits, Connection, DRAINING_TEXT, State};
use crate::access::{Authentication, FilesRight, Grant};
use crate::proto::exec::{EndReason, SignalRequest};
use crate::proto::files::{FileInfo, FileKind, GetRequest, PutRequest};
use crate::proto::message::{EXEC_VERSION, MIN_PROTOCOL_VERSION};
use crate::proto::{
    ErrorCode, ErrorMessage, Frame, FrameType, Hello, HelloOk, PROTOCOL_VERSION, SessionFlags,
};
use crate::service::disk::FileError;
use crate::service::echo;

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
                echo::reply(frame, &mut self.outbox.replies(cx.pool, cx.limits));
                Ok(())
            }
            FrameType::Exec => {
                self.start(frame_type, frame, cx);
                Ok(())
            }
            FrameType::Stdin | FrameType::StdinEof | FrameType::Signal => {
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
        abandoned.end(cx, EndReason::ClientSignal);
    }

    /// EXEC or a file request: admitted ([`Connection::admit`]) or refused on its stream,
    /// then started. Never fatal: a refused or failed request ends only its stream.
    fn start(&mut self, frame_type: FrameType, frame: Frame<'_>, cx: &mut Context<'_>) {
        let stream = frame.header.stream;
        let admitted = match self.admit(frame_type, frame, cx) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                if refusal.code == ErrorCode::Forbidden {
                    self.log_forbidden(stream, &refusal.text, cx);
                }
                self.outbox
                    .replies(cx.pool, cx.limits)
                    .error(stream, refusal.code, &refusal.text);
                return;
            }
        };
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
            .map(StreamKind::Exec),
            file_request => {
                match self.start_file_request(
                    stream,
                    frame_type,
                    file_request,
                    grant.as_deref(),
                    cx,
                ) {
                    Ok(opened) => opened,
                    Err(error) => {
                        debug!("stream {stream}: {frame_type} refused: {}", error.text);
                        let text = grant
                            .as_deref()
                            .map_or(error.text.as_str().into(), |grant| grant.shown(&error.text));
                        self.outbox
                            .replies(cx.pool, cx.limits)
                            .error(stream, error.code, &text);
                        None
                    }
                }
            }
        };
        if let Some(kind) = opened {
            self.streams
                .get_or_insert_with(|| Streams::new(cx.limits.max_streams_per_connection))
                .insert(stream, kind, cx.limits.max_streams_per_connection);
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

    /// An admitted file request: STAT, DELETE and MKDIR answered at once; GET, PUT and LIST
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
                let info = disk.stat(&path)?;
                replies.reply(
                    FrameType::FileInfo,
                    stream,
                    FileInfo::PAYLOAD_LEN as u32,
                    |out| info.emit(out),
                );
                return Ok(None);
            }
            Admitted::Delete(path) | Admitted::Mkdir(path) => {
                if frame_type == FrameType::Delete {
                    // A file deleted by a credential with a quota is credited back to it: its
                    // size, read with one `stat` just before.
                    let freed = grant
                        .filter(|grant| grant.quota.is_some())
                        .and_then(|_| disk.stat(&path).ok())
                        .filter(|info| info.kind == FileKind::File)
                        .map_or(0, |info| info.size);
                    // DONE goes out once the name is gone; a big file's blocks are freed
                    // after, off the loop (`Disk::delete`).
                    disk.delete(&path)?;
                    if let Some(grant) = grant {
                        grant.credit(freed);
                    }
                } else {
                    disk.mkdir(&path)?;
                }
                info!("{frame_type} {path}");
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

    /// STDIN, STDIN_EOF and SIGNAL: delivered to the command on the frame's stream, if there
    /// is one. A STDIN beyond the credit window, or a SIGNAL that does not parse, is fatal: the
    /// command is running, and an ERROR on its stream would end the stream under it.
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
                command.session.handle_stdin_eof();
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
