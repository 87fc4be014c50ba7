//! Admission: whether a request may start, decided in one place. Every request that opens a
//! stream (EXEC, GET, PUT, LIST) or asks the file service for an answer (STAT, DELETE, MKDIR)
//! passes through [`Connection::admit`]; what a stream id may carry is
//! [`Connection::claim_stream_id`]'s.

use log::debug;

use super::context::{Context, Fatal};
use super::{Bits, Connection};
use crate::proto::exec::ExecRequest;
use crate::proto::files::{
    FileRequestError, GetRequest, PutRequest, parse_delete_path, parse_path,
};
use crate::proto::{ErrorCode, Frame, FrameType};
use crate::service::disk::{FileError, TransferPermit};
use crate::transport::IoState;

/// A request let in: parsed, with its place in the limits it counts against.
#[derive(Debug)]
pub(super) enum Admitted<'f> {
    /// EXEC, with the child number its descriptors will carry in poll tokens.
    Exec {
        request: ExecRequest<'f>,
        child_number: u8,
    },
    /// GET, with its place among the server's transfers.
    Get {
        request: GetRequest<'f>,
        permit: TransferPermit,
    },
    /// PUT, with its place among the server's transfers.
    Put {
        request: PutRequest<'f>,
        permit: TransferPermit,
    },
    /// LIST of a directory, with its place among the server's transfers.
    List {
        path: &'f str,
        permit: TransferPermit,
    },
    /// STAT of a path.
    Stat(&'f str),
    /// DELETE of a path.
    Delete(&'f str),
    /// MKDIR of a path.
    Mkdir(&'f str),
}

/// Why a request was refused: the ERROR sent on its stream, which ends only that stream.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) code: ErrorCode,
    pub(super) text: String,
}

impl Refusal {
    fn new(code: ErrorCode, text: impl Into<String>) -> Refusal {
        Refusal {
            code,
            text: text.into(),
        }
    }
}

impl From<FileError> for Refusal {
    fn from(error: FileError) -> Refusal {
        Refusal::new(error.code, error.text)
    }
}

impl Connection {
    /// Whether a request of type `frame_type` may use stream `stream` at all: a breach is the
    /// client's protocol error, fatal to the connection. Requests (echo, EXEC, the file
    /// requests, and unknown types, which may be requests of a later version) need a stream id
    /// other than 0, which is the connection's own, and one no open stream is using: a
    /// running stream takes only its own frames (STDIN, STDIN_EOF, SIGNAL; DATA, DIGEST).
    pub(super) fn claim_stream_id(&self, frame_type: FrameType, stream: u32) -> Result<(), Fatal> {
        let starts_a_request = frame_type.is_file_request()
            || matches!(
                frame_type,
                FrameType::EchoRequest | FrameType::Exec | FrameType::Unknown(_)
            );
        if !starts_a_request {
            return Ok(());
        }
        if stream == 0 {
            return Err(Fatal::new(
                ErrorCode::UnexpectedFrame,
                format!("{frame_type} on stream 0; requests need a stream id other than 0"),
            ));
        }
        let in_use = self
            .streams
            .as_ref()
            .is_some_and(|streams| streams.contains(stream));
        if in_use {
            return Err(Fatal::new(
                ErrorCode::UnexpectedFrame,
                format!("{frame_type} on stream {stream}, which a command or transfer is using"),
            ));
        }
        Ok(())
    }

    /// Whether the request in `frame` (EXEC or a file request, on a stream id
    /// [`claim_stream_id`](Connection::claim_stream_id) let through) may start: the one
    /// ladder every such request climbs, its first failed rung the refusal sent on the
    /// request's stream (a dash: a rung that kind skips).
    ///
    /// | # | rung           | EXEC              | GET, PUT, LIST       | STAT, DELETE, MKDIR  |
    /// |---|----------------|-------------------|----------------------|----------------------|
    /// | 1 | authenticated  | `UNAUTHENTICATED` | `UNAUTHENTICATED`    | `UNAUTHENTICATED`    |
    /// | 2 | service on     | `EXEC_DISABLED`   | `UNKNOWN_FRAME_TYPE` | `UNKNOWN_FRAME_TYPE` |
    /// | 3 | no FIN yet     | `BAD_REQUEST`     | PUT: `BAD_REQUEST`   | —                    |
    /// | 4 | not draining   | `SHUTTING_DOWN`   | `SHUTTING_DOWN`      | `SHUTTING_DOWN`      |
    /// | 5 | a stream free  | `LIMIT_REACHED`   | `LIMIT_REACHED`      | —                    |
    /// | 6 | payload parses | `BAD_REQUEST`     | `BAD_REQUEST`        | `BAD_REQUEST`        |
    /// | 7 | a place to run | `LIMIT_REACHED`   | [`Disk::admit`]'s    | —                    |
    ///
    /// The texts, rung by rung:
    /// 1. "{type} needs an authenticated connection: send the server's token in HELLO".
    /// 2. EXEC: "this server does not run commands (start it with --exec)" (no `--exec`, or no
    ///    processes in the [`Context`]); the others: "this server has no file service".
    /// 3. EXEC, once the poll has reported the FIN (before the read that sees it): "EXEC with
    ///    or after the client's FIN: ..."; PUT, once the FIN was read: "PUT after the client
    ///    closed its side of the connection". GET and LIST need nothing more from the client.
    /// 4. "the server is shutting down and starts no new commands" (EXEC), "... transfers"
    ///    (the others).
    /// 5. Open streams at [`max_streams_per_connection`] (N): "N commands are running on this
    ///    connection, its limit" (EXEC), "N commands and transfers are running on this
    ///    connection, its limit" (GET, PUT, LIST). STAT, DELETE and MKDIR keep no stream open.
    /// 6. The parser's text (logged for the file requests).
    /// 7. EXEC: a child number free on this connection, else "no free child number on this
    ///    connection"; GET, PUT, LIST: a place among the server's transfers, else the disk's
    ///    refusal (logged).
    ///
    /// What can still fail belongs to starting the request, after this: the spawn (where the
    /// I/O layer applies the server's command limit, [`max_exec`], atomically with taking
    /// the place), the file's or directory's open, the STAT, DELETE or MKDIR itself.
    ///
    /// Rung 3 differs by kind on purpose: the FIN stops every command, so one started then
    /// would end at once without an EXIT, and that holds from the poll's report; an upload
    /// needs the client's bytes, while a GET or a LIST needs nothing more from it.
    ///
    /// [`max_streams_per_connection`]: crate::limits::Limits::max_streams_per_connection
    /// [`max_exec`]: crate::limits::Limits::max_exec
    /// [`Disk::admit`]: crate::service::disk::Disk::admit
    pub(super) fn admit<'f>(
        &self,
        frame_type: FrameType,
        frame: Frame<'f>,
        cx: &mut Context<'_>,
    ) -> Result<Admitted<'f>, Refusal> {
        let exec = frame_type == FrameType::Exec;
        let what = if exec { "commands" } else { "transfers" };
        // 1. Authenticated.
        if !self.bits.has(Bits::AUTHENTICATED) {
            return Err(Refusal::new(
                ErrorCode::Unauthenticated,
                format!(
                    "{frame_type} needs an authenticated connection: send the server's token in HELLO"
                ),
            ));
        }
        // 2. The service is on.
        if exec && (!cx.access.exec || cx.children.is_none()) {
            return Err(Refusal::new(
                ErrorCode::ExecDisabled,
                "this server does not run commands (start it with --exec)",
            ));
        }
        if !exec && cx.files.is_none() {
            return Err(Refusal::new(
                ErrorCode::UnknownFrameType,
                "this server has no file service",
            ));
        }
        // 3. The client's FIN.
        if exec && (self.io_state.has(IoState::PEER_EOF) || self.io_state.has(IoState::READ_CLOSED))
        {
            // Frames read before the client's FIN are still handled, but a command could
            // neither get stdin nor be signalled, and the FIN stops commands anyway. That holds
            // as soon as the poll has reported the FIN (`READ_CLOSED`), before the read that
            // sees it: an EXEC in the same write as the FIN would otherwise be started and
            // stopped at once, the client seeing STARTED and then nothing.
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "EXEC with or after the client's FIN: a half-closed connection cannot run \
                 commands (end stdin with STDIN_EOF, and keep the connection open until EXIT)",
            ));
        }
        if frame_type == FrameType::Put && self.io_state.has(IoState::PEER_EOF) {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "PUT after the client closed its side of the connection",
            ));
        }
        // 4. Not draining.
        if self.bits.has(Bits::DRAINING) {
            return Err(Refusal::new(
                ErrorCode::ShuttingDown,
                format!("the server is shutting down and starts no new {what}"),
            ));
        }
        // 5. A stream free on this connection.
        let opens_a_stream = matches!(
            frame_type,
            FrameType::Exec | FrameType::Get | FrameType::Put | FrameType::List
        );
        let limit = cx.limits.max_streams_per_connection;
        if opens_a_stream && self.open_streams() >= limit {
            let running = if exec {
                "commands"
            } else {
                "commands and transfers"
            };
            return Err(Refusal::new(
                ErrorCode::LimitReached,
                format!("{limit} {running} are running on this connection, its limit"),
            ));
        }
        // 6 and 7.
        if exec {
            return self.admit_command(frame, cx);
        }
        let stream = frame.header.stream;
        admit_file_request(frame_type, frame, cx).map_err(|error| {
            debug!("stream {stream}: {frame_type} refused: {}", error.text);
            Refusal::from(error)
        })
    }

    /// Rungs 6 and 7 for EXEC: the request parses, and a child number is free.
    fn admit_command<'f>(
        &self,
        frame: Frame<'f>,
        cx: &Context<'_>,
    ) -> Result<Admitted<'f>, Refusal> {
        let request = ExecRequest::parse(frame.payload)
            .map_err(|error| Refusal::new(ErrorCode::BadRequest, error.to_string()))?;
        // Without a table, nothing is running or cooling: the first number is free.
        let child_number = match self.streams.as_ref() {
            Some(streams) => streams.free_child_number(cx.turn),
            None => Some(0),
        };
        let Some(child_number) = child_number else {
            return Err(Refusal::new(
                ErrorCode::LimitReached,
                "no free child number on this connection",
            ));
        };
        Ok(Admitted::Exec {
            request,
            child_number,
        })
    }
}

/// Rungs 6 and 7 for a file request: the request parses, and a transfer has its place among
/// the server's.
fn admit_file_request<'f>(
    frame_type: FrameType,
    frame: Frame<'f>,
    cx: &mut Context<'_>,
) -> Result<Admitted<'f>, FileError> {
    let bad = |error: FileRequestError| FileError::new(ErrorCode::BadRequest, error.to_string());
    let payload = frame.payload;
    let admitted = match frame_type {
        FrameType::Stat => Admitted::Stat(parse_path(payload).map_err(bad)?),
        FrameType::Delete => Admitted::Delete(parse_delete_path(payload).map_err(bad)?),
        FrameType::Mkdir => Admitted::Mkdir(parse_path(payload).map_err(bad)?),
        FrameType::List => {
            let path = parse_path(payload).map_err(bad)?;
            Admitted::List {
                path,
                permit: take_transfer_place(cx)?,
            }
        }
        FrameType::Get => {
            let request = GetRequest::parse(payload).map_err(bad)?;
            Admitted::Get {
                request,
                permit: take_transfer_place(cx)?,
            }
        }
        FrameType::Put => {
            let request = PutRequest::parse(payload).map_err(bad)?;
            Admitted::Put {
                request,
                permit: take_transfer_place(cx)?,
            }
        }
        other => {
            return Err(FileError::new(
                ErrorCode::UnexpectedFrame,
                format!("{other} is not a file request"),
            ));
        }
    };
    Ok(admitted)
}

/// Rung 7 for a transfer: its place among the server's ([`Disk::admit`]).
///
/// [`Disk::admit`]: crate::service::disk::Disk::admit
fn take_transfer_place(cx: &mut Context<'_>) -> Result<TransferPermit, FileError> {
    match cx.files.as_deref_mut() {
        Some(disk) => disk.admit(),
        // Rung 2 refused this already.
        None => Err(FileError::new(
            ErrorCode::UnknownFrameType,
            "this server has no file service",
        )),
    }
}
