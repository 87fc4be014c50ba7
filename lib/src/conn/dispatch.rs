//! What a framed connection does with each complete frame: the handshake, then requests by
//! type. The rules, in the order they are applied:
//!
//! 1. Before HELLO only HELLO is valid (and it belongs on stream 0).
//! 2. On a version 1 connection the exec and file frame types are unknown, as to a version 1
//!    server.
//! 3. Stream 0 is the connection: a request there is fatal. A stream with a command or a
//!    transfer running takes only its frames (STDIN, STDIN_EOF, SIGNAL; DATA, DIGEST): a new
//!    request on it is fatal.
//! 4. A request the connection may not make (no token, exec off, a limit) is refused on its own
//!    stream and ends only that stream.
//! 5. STDIN, STDIN_EOF and SIGNAL for a stream with no command, and DATA and DIGEST for one
//!    with no upload, are ignored: they may have crossed the stream's last frame on the wire. (A SIGNAL whose payload does not parse is fatal
//!    all the same: it is checked before the stream is looked up.)
//! 6. A client's ERROR ends what its stream names: the connection on stream 0; on a version 2
//!    connection, only that stream (its command is released, its transfer ends), whose id is
//!    free for a new request from the next frame on.
//! 7. Once the client's FIN has been reported, an EXEC is refused on its stream: the FIN stops
//!    every command, so one started then would end at once without an EXIT.

use log::{debug, info, warn};

use super::streams::{ExecStream, Streams};
use super::{Bits, Connection, Context, Fatal, State};
use crate::proto::exec::{EndReason, ExecFlags, ExecRequest, SignalRequest, Started};
use crate::proto::message::{EXEC_VERSION, MIN_PROTOCOL_VERSION};
use crate::proto::{
    ErrorCode, ErrorMessage, Frame, FrameType, Hello, HelloOk, PROTOCOL_VERSION, SessionFlags,
};
use crate::service::echo;
use crate::service::exec::{ExecSession, SpawnSpec};
use crate::transport::IoState;

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
        let authenticated = match cx.access.authenticates(hello.credentials) {
            Some(true) => true,
            Some(false) => {
                match cx.auth_log.as_deref_mut() {
                    Some(throttle) => {
                        if let Some(suppressed) = throttle.allow(cx.now) {
                            warn!(
                                "HELLO with a wrong token refused ({suppressed} more since last report)"
                            );
                        }
                    }
                    None => debug!("HELLO with a wrong token refused"),
                }
                return Err(Fatal::new(
                    ErrorCode::AuthFailed,
                    "the credentials are not this server's token",
                ));
            }
            None => false,
        };
        self.bits.set(Bits::AUTHENTICATED, authenticated);
        self.bits.set(Bits::EXEC_FRAMES, version >= EXEC_VERSION);
        self.set_state(State::Open);
        let mut flags = SessionFlags::NONE;
        if authenticated {
            flags = flags.with(SessionFlags::AUTHENTICATED);
        }
        // Whether commands run is told only to those who may run them.
        if cx.access.exec && authenticated {
            flags = flags.with(SessionFlags::EXEC);
        }
        if cx.files.is_some() && authenticated {
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
        let starts_a_request = frame_type.is_file_request()
            || matches!(
                frame_type,
                FrameType::EchoRequest | FrameType::Exec | FrameType::Unknown(_)
            );
        if starts_a_request && stream == 0 {
            return Err(Fatal::new(
                ErrorCode::UnexpectedFrame,
                format!("{frame_type} on stream 0; requests need a stream id other than 0"),
            ));
        }
        if starts_a_request && self.stream_in_use(stream) {
            return Err(Fatal::new(
                ErrorCode::UnexpectedFrame,
                format!("{frame_type} on stream {stream}, which a command or transfer is using"),
            ));
        }
        match frame_type {
            FrameType::EchoRequest => {
                echo::reply(frame, &mut self.outbox.replies(cx.pool, cx.limits));
                Ok(())
            }
            FrameType::Exec => {
                self.exec(frame, cx);
                Ok(())
            }
            FrameType::Stdin | FrameType::StdinEof | FrameType::Signal => {
                self.deliver_to_command(frame_type, frame, cx)
            }
            file_request if file_request.is_file_request() => {
                self.file_request(frame_type, frame, cx);
                Ok(())
            }
            FrameType::Data | FrameType::Digest => {
                self.upload_frame(frame_type, frame, cx);
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
    /// reaped by the I/O layer) and nothing more is sent on the stream.
    fn abandon_stream(&mut self, stream: u32, cx: &mut Context<'_>, reason: &str) {
        if self.abandon_transfer(stream, cx) {
            debug!("stream {stream}: the client abandoned its transfer ({reason})");
            return;
        }
        let Some(mut command) = self
            .streams
            .as_mut()
            .and_then(|streams| streams.remove(stream, cx.turn))
        else {
            debug!("client ERROR for stream {stream}, which has no command: ignored");
            return;
        };
        debug!(
            "stream {stream}: the client abandoned pid {} ({reason})",
            command.session.pid()
        );
        command.session.release(cx.pool);
        if let Some(children) = cx.children.as_deref_mut() {
            children.release(command.child, EndReason::ClientSignal);
        }
    }

    fn stream_in_use(&self, stream: u32) -> bool {
        self.streams
            .as_ref()
            .is_some_and(|streams| streams.in_use(stream))
    }

    /// EXEC: checks, then a spawn through the I/O layer; STARTED on success, an ERROR on the
    /// request's stream otherwise. Never fatal: a refused command ends only its stream.
    fn exec(&mut self, frame: Frame<'_>, cx: &mut Context<'_>) {
        let stream = frame.header.stream;
        let refusal = if !self.bits.has(Bits::AUTHENTICATED) {
            Some((
                ErrorCode::Unauthenticated,
                "EXEC needs an authenticated connection: send the server's token in HELLO"
                    .to_string(),
            ))
        } else if !cx.access.exec || cx.children.is_none() {
            Some((
                ErrorCode::ExecDisabled,
                "this server does not run commands (start it with --exec)".to_string(),
            ))
        } else if self.io_state.has(IoState::PEER_EOF) || self.io_state.has(IoState::READ_CLOSED) {
            // Frames read before the client's FIN are still handled, but a command could
            // neither get stdin nor be signalled, and the FIN stops commands anyway. That holds
            // as soon as the poll has reported the FIN (`READ_CLOSED`), before the read that
            // sees it: an EXEC in the same write as the FIN would otherwise be started and
            // stopped at once, the client seeing STARTED and then nothing.
            Some((
                ErrorCode::BadRequest,
                "EXEC with or after the client's FIN: a half-closed connection cannot run \
                 commands (end stdin with STDIN_EOF, and keep the connection open until EXIT)"
                    .to_string(),
            ))
        } else if self.bits.has(Bits::DRAINING) {
            Some((
                ErrorCode::ShuttingDown,
                "the server is shutting down and starts no new commands".to_string(),
            ))
        } else if self.open_streams() >= cx.limits.max_streams_per_connection {
            Some((
                ErrorCode::LimitReached,
                format!(
                    "{} commands are running on this connection, its limit",
                    cx.limits.max_streams_per_connection
                ),
            ))
        } else {
            None
        };
        if let Some((code, text)) = refusal {
            self.outbox
                .replies(cx.pool, cx.limits)
                .error(stream, code, &text);
            return;
        }
        let request = match ExecRequest::parse(frame.payload) {
            Ok(request) => request,
            Err(error) => {
                self.outbox.replies(cx.pool, cx.limits).error(
                    stream,
                    ErrorCode::BadRequest,
                    &error.to_string(),
                );
                return;
            }
        };
        let Some(children) = cx.children.as_deref_mut() else {
            return; // checked above
        };
        let streams = self
            .streams
            .get_or_insert_with(|| Streams::new(cx.limits.max_streams_per_connection));
        let Some(index) = streams.free_index(cx.turn) else {
            self.outbox.replies(cx.pool, cx.limits).error(
                stream,
                ErrorCode::LimitReached,
                "no free child number on this connection",
            );
            return;
        };
        let stdin = request.flags.contains(ExecFlags::STDIN);
        let spec = SpawnSpec {
            argv: &request.argv,
            cwd: request.cwd,
            stdin,
        };
        match children.spawn(index, &spec) {
            Ok(spawned) => {
                let session =
                    ExecSession::new(spawned.pid, stdin, request.timeout_ms, cx.now, cx.limits);
                let started = session.started();
                debug!(
                    "stream {stream}: started pid {} {:?}",
                    spawned.pid,
                    request
                        .argv
                        .iter()
                        .map(|arg| String::from_utf8_lossy(arg))
                        .collect::<Vec<_>>()
                );
                self.outbox.replies(cx.pool, cx.limits).part(
                    FrameType::Started,
                    stream,
                    Started::PAYLOAD_LEN as u32,
                    |out| started.emit(out),
                );
                streams.insert(ExecStream::new(stream, index, spawned.child, session));
            }
            Err(error) => {
                info!("stream {stream}: command refused: {error}");
                self.outbox
                    .replies(cx.pool, cx.limits)
                    .error(stream, error.code(), error.text());
            }
        }
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
            .and_then(|streams| streams.find_mut(stream))
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
