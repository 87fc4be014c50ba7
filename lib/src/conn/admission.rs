//! Admission: whether a request may start, decided in one place. Every request that opens a
//! stream (EXEC, GET, PUT, LIST) or asks the file service for an answer (STAT, DELETE, MKDIR)
//! passes through [`Connection::admit`]; what a stream id may carry is
//! [`Connection::claim_stream_id`]'s.

use std::borrow::Cow;

use log::debug;

use super::context::{Context, Fatal};
use super::{Bits, Connection};
use crate::access::{CommandSlot, FilesRight, Grant, QuotaHold};
use crate::proto::exec::ExecRequest;
use crate::proto::files::{
    FileKind, FileRequestError, GetRequest, PutAttrs, PutRequest, SetAttrsRequest,
    parse_delete_path, parse_path,
};
use crate::proto::{ErrorCode, Frame, FrameType};
use crate::service::disk::{FileError, TransferPermit};
use crate::transport::IoState;

/// A request let in: parsed, its paths mapped into the credential's scope (the path the disk
/// is asked for, beneath the server's root), with its place in the limits it counts against.
#[derive(Debug)]
pub(super) enum Admitted<'f> {
    /// EXEC, with its working directory inside the scope, the child number its descriptors
    /// will carry in poll tokens, and its place in its credential's `max_commands`.
    Exec {
        request: ExecRequest<'f>,
        cwd: Cow<'f, str>,
        child_number: u8,
        slot: Option<CommandSlot>,
    },
    /// GET of `path`, with its place among the server's transfers.
    Get {
        request: GetRequest<'f>,
        path: Cow<'f, str>,
        permit: TransferPermit,
    },
    /// PUT to `path`, with its place among the server's transfers and its bytes reserved in
    /// its credential's quota.
    Put {
        request: PutRequest<'f>,
        path: Cow<'f, str>,
        permit: TransferPermit,
        quota: Option<QuotaHold>,
    },
    /// LIST of a directory, with its place among the server's transfers.
    List {
        path: Cow<'f, str>,
        permit: TransferPermit,
    },
    /// STAT of a path.
    Stat(Cow<'f, str>),
    /// DELETE of a path.
    Delete(Cow<'f, str>),
    /// MKDIR of a path.
    Mkdir(Cow<'f, str>),
    /// SET_ATTRS of a path: its new mode and mtime.
    SetAttrs { path: Cow<'f, str>, attrs: PutAttrs },
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
    /// request's stream (a dash: a rung that kind skips). Every access rule is a rung here,
    /// and nowhere else.
    ///
    /// | #  | rung             | EXEC              | GET, PUT, LIST       | STAT, DELETE, MKDIR  |
    /// |----|------------------|-------------------|----------------------|----------------------|
    /// | 1  | authenticated    | `UNAUTHENTICATED` | `UNAUTHENTICATED`    | `UNAUTHENTICATED`    |
    /// | 2  | service on       | `EXEC_DISABLED`   | `UNKNOWN_FRAME_TYPE` | `UNKNOWN_FRAME_TYPE` |
    /// | 3  | TLS or loopback  | `FORBIDDEN`       | `FORBIDDEN`          | `FORBIDDEN`          |
    /// | 4  | the grant's right| `FORBIDDEN`       | `FORBIDDEN`          | `FORBIDDEN`          |
    /// | 5  | no FIN yet       | `BAD_REQUEST`     | PUT: `BAD_REQUEST`   | —                    |
    /// | 6  | not draining     | `SHUTTING_DOWN`   | `SHUTTING_DOWN`      | `SHUTTING_DOWN`      |
    /// | 7  | a stream free    | `LIMIT_REACHED`   | `LIMIT_REACHED`      | —                    |
    /// | 8  | payload parses   | `BAD_REQUEST`     | `BAD_REQUEST`        | `BAD_REQUEST`        |
    /// | 9  | the grant's rule | `FORBIDDEN`       | PUT: `FORBIDDEN`     | —                    |
    /// | 10 | a place to run   | `LIMIT_REACHED`   | [`Disk::admit`]'s    | —                    |
    ///
    /// The texts, rung by rung:
    /// 1. "{type} needs an authenticated connection: send the server's token in HELLO".
    /// 2. EXEC: "this server does not run commands (start it with --exec)" (no `--exec`, no
    ///    credential that may run commands, or no processes in the [`Context`]); the others:
    ///    "this server has no file service".
    /// 3. A plaintext connection from another host ([`Peer`]: neither `encrypted` nor
    ///    `loopback`): "{type} needs TLS: this connection is plaintext from another host".
    ///    Whatever the credential: a token or a command sent in clear is anyone's on the path.
    /// 4. Only with an access file's grant: EXEC when its `exec` is false: "credential "N" may
    ///    not run commands (exec = false)"; a file request with `files = "none"`: "credential
    ///    "N" may not use files (files = "none"): {type} refused"; PUT, DELETE or MKDIR with
    ///    `files = "read"`: "credential "N" may only read files (files = "read"): {type}
    ///    refused".
    /// 5. EXEC, once the poll has reported the FIN (before the read that sees it): "EXEC with
    ///    or after the client's FIN: ..."; PUT, once the FIN was read: "PUT after the client
    ///    closed its side of the connection". GET and LIST need nothing more from the client.
    /// 6. "the server is shutting down and starts no new commands" (EXEC), "... transfers"
    ///    (the others).
    /// 7. Open streams at [`max_streams_per_connection`] (N): "N commands are running on this
    ///    connection, its limit" (EXEC), "N commands and transfers are running on this
    ///    connection, its limit" (GET, PUT, LIST). STAT, DELETE and MKDIR keep no stream open.
    /// 8. The parser's text (logged for the file requests). Then every path is mapped into
    ///    the grant's scope ([`Grant::scoped`]): the working directory of EXEC, the path of
    ///    a file request. The syntax checks of [`check_relative`] have passed (or, for EXEC's
    ///    working directory, fail the same way mapped or not, at the spawn).
    /// 9. Only with a grant: EXEC whose argv (as parsed, element by element) starts with none
    ///    of the prefixes its `exec` lists: "credential "N" may not run this command: ...";
    ///    EXEC beyond its `max_commands` across all its connections: "credential "N" may run
    ///    M commands at once (max_commands) and runs M"; PUT whose declared size does not fit
    ///    its quota: "credential "N" may store Q bytes (quota) and has stored S; this PUT of
    ///    B bytes would exceed it".
    /// 10. EXEC: a child number free on this connection, else "no free child number on this
    ///     connection"; GET, PUT, LIST: a place among the server's transfers, else the disk's
    ///     refusal (logged).
    ///
    /// What can still fail belongs to starting the request, after this: the spawn (where the
    /// I/O layer applies the server's command limit, [`max_exec`], atomically with taking
    /// the place), the file's or directory's open, the STAT, DELETE or MKDIR itself. Their
    /// texts are shown through the grant ([`Grant::shown`]), so none names the scope.
    ///
    /// Rung 5 differs by kind on purpose: the FIN stops every command, so one started then
    /// would end at once without an EXIT, and that holds from the poll's report; an upload
    /// needs the client's bytes, while a GET or a LIST needs nothing more from it.
    ///
    /// [`max_streams_per_connection`]: crate::limits::Limits::max_streams_per_connection
    /// [`max_exec`]: crate::limits::Limits::max_exec
    /// [`Disk::admit`]: crate::service::disk::Disk::admit
    /// [`Peer`]: crate::transport::Peer
    /// [`check_relative`]: crate::proto::path::check_relative
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
        // 3. Exec and files only over TLS or from this machine.
        if !cx.peer.encrypted && !cx.peer.loopback {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("{frame_type} needs TLS: this connection is plaintext from another host"),
            ));
        }
        // 4. The grant's right to this kind of request.
        let grant = self.grant();
        if let Some(grant) = grant {
            rights(grant, frame_type)?;
        }
        // 5. The client's FIN.
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
        // 6. Not shutting down (the requests received before it are answered, but none
        // starts anything that would outlive the connection's last moments).
        if self.bits.has(Bits::FINISHING) {
            return Err(Refusal::new(
                ErrorCode::ShuttingDown,
                format!("the server is shutting down and starts no new {what}"),
            ));
        }
        // 7. A stream free on this connection.
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
        // 8, 9 and 10.
        if exec {
            return self.admit_command(frame, cx, grant.map(|grant| &**grant));
        }
        let stream = frame.header.stream;
        admit_file_request(frame_type, frame, cx, grant.map(|grant| &**grant)).map_err(|error| {
            if error.code != ErrorCode::Forbidden {
                debug!("stream {stream}: {frame_type} refused: {}", error.text);
            }
            Refusal::from(error)
        })
    }

    /// Rungs 8, 9 and 10 for EXEC: the request parses, its argv is one the grant allows and
    /// the grant has a command to spare, and a child number is free.
    fn admit_command<'f>(
        &self,
        frame: Frame<'f>,
        cx: &Context<'_>,
        grant: Option<&Grant>,
    ) -> Result<Admitted<'f>, Refusal> {
        let request = ExecRequest::parse(frame.payload)
            .map_err(|error| Refusal::new(ErrorCode::BadRequest, error.to_string()))?;
        let (cwd, slot) = match grant {
            None => (Cow::Borrowed(request.cwd), None),
            Some(grant) => {
                // With a PTY and no argv, the server's shell runs: the allowlist judges that
                // argv like any other.
                let shell = [cx.limits.exec_shell.as_bytes()];
                let argv: &[&[u8]] = if request.argv.is_empty() {
                    &shell
                } else {
                    &request.argv
                };
                if !grant.exec.allows(argv) {
                    return Err(Refusal::new(
                        ErrorCode::Forbidden,
                        format!(
                            "credential \"{}\" may not run this command: its argv starts with none of the prefixes its exec allows",
                            grant.name
                        ),
                    ));
                }
                let slot = match grant.max_commands {
                    None => None,
                    Some(_) => Some(
                        grant
                            .take_command()
                            .map_err(|text| Refusal::new(ErrorCode::Forbidden, text))?,
                    ),
                };
                (grant.scoped(request.cwd), slot)
            }
        };
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
            cwd,
            child_number,
            slot,
        })
    }
}

/// Rung 4 with a grant: its right to this kind of request.
fn rights(grant: &Grant, frame_type: FrameType) -> Result<(), Refusal> {
    let name = &grant.name;
    let refused = |text: String| Err(Refusal::new(ErrorCode::Forbidden, text));
    if frame_type == FrameType::Exec {
        if !grant.exec.any() {
            return refused(format!(
                "credential \"{name}\" may not run commands (exec = false)"
            ));
        }
        return Ok(());
    }
    let writes = matches!(
        frame_type,
        FrameType::Put | FrameType::Delete | FrameType::Mkdir | FrameType::SetAttrs
    );
    match grant.files {
        FilesRight::None => refused(format!(
            "credential \"{name}\" may not use files (files = \"none\"): {frame_type} refused"
        )),
        FilesRight::Read if writes => refused(format!(
            "credential \"{name}\" may only read files (files = \"read\"): {frame_type} refused"
        )),
        FilesRight::Read | FilesRight::Write => Ok(()),
    }
}

/// Rungs 8, 9 and 10 for a file request: the request parses (its path mapped into the
/// grant's scope), a PUT fits the grant's quota, and a transfer has its place among the
/// server's.
fn admit_file_request<'f>(
    frame_type: FrameType,
    frame: Frame<'f>,
    cx: &mut Context<'_>,
    grant: Option<&Grant>,
) -> Result<Admitted<'f>, FileError> {
    let bad = |error: FileRequestError| FileError::new(ErrorCode::BadRequest, error.to_string());
    let scoped = |path: &'f str| grant.map_or(Cow::Borrowed(path), |grant| grant.scoped(path));
    let payload = frame.payload;
    let admitted = match frame_type {
        FrameType::Stat => Admitted::Stat(scoped(parse_path(payload).map_err(bad)?)),
        FrameType::Delete => Admitted::Delete(scoped(parse_delete_path(payload).map_err(bad)?)),
        FrameType::Mkdir => Admitted::Mkdir(scoped(parse_path(payload).map_err(bad)?)),
        FrameType::SetAttrs => {
            let request = SetAttrsRequest::parse(payload).map_err(bad)?;
            // The root as the client sees it, refused before the scope maps it: a scoped
            // credential's root is the operator's directory as much as the server's is.
            if request.path.is_empty() {
                return Err(FileError::new(
                    ErrorCode::BadRequest,
                    "the root's mode and times cannot be set",
                ));
            }
            Admitted::SetAttrs {
                path: scoped(request.path),
                attrs: request.attrs,
            }
        }
        FrameType::List => {
            let path = scoped(parse_path(payload).map_err(bad)?);
            Admitted::List {
                path,
                permit: take_transfer_place(cx)?,
            }
        }
        FrameType::Get => {
            let request = GetRequest::parse(payload).map_err(bad)?;
            Admitted::Get {
                path: scoped(request.path),
                request,
                permit: take_transfer_place(cx)?,
            }
        }
        FrameType::Put => {
            let request = PutRequest::parse(payload).map_err(bad)?;
            let path = scoped(request.path);
            let quota = match grant {
                Some(grant) if grant.quota.is_some() => {
                    // What the upload replaces is freed when it lands: one `stat`, for
                    // credentials with a quota only.
                    let replaces = cx
                        .files
                        .as_deref_mut()
                        .and_then(|disk| disk.stat(&path).ok())
                        .filter(|(info, _)| info.kind == FileKind::File)
                        .map_or(0, |(info, _)| info.size);
                    grant
                        .reserve(request.size, replaces)
                        .map_err(|text| FileError::new(ErrorCode::Forbidden, text))?
                }
                _ => None,
            };
            // Taken after the quota, so a refusal there holds no transfer place; a refusal
            // here drops the reservation.
            Admitted::Put {
                request,
                path,
                permit: take_transfer_place(cx)?,
                quota,
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

/// Rung 10 for a transfer: its place among the server's ([`Disk::admit`]).
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
