//! Payloads of the remote-exec frames (protocol version 2): EXEC, STARTED, WINDOW, EXIT,
//! SIGNAL and RESIZE. STDIN, STDOUT and STDERR carry raw bytes and STDIN_EOF nothing, so they
//! have no layout of their own.
//!
//! One command lives on one stream, chosen by the client:
//!
//! ```text
//! client                                   server
//!   EXEC argv, cwd, flags, timeout  ---->
//!                                   <----  STARTED pid, stdin window     (or ERROR on the stream)
//!   STDIN bytes (within the window) ---->
//!                                   <----  WINDOW more credit
//!   STDIN_EOF                       ---->
//!   SIGNAL TERM                     ---->
//!                                   <----  STDOUT / STDERR bytes, in the order read
//!                                   <----  EXIT code or signal, reason   (END_STREAM)
//! ```
//!
//! Like the rest of [`crate::proto`], nothing here touches a process or a descriptor.

use std::fmt;

use super::frame::Frame;
use super::header::{Flags, FrameType};
use super::message::MessageError;

/// Most arguments in one EXEC (the program counts as one).
pub const MAX_ARGS: usize = 4096;

/// Longest working-directory path in an EXEC, bytes.
pub const MAX_CWD_LEN: usize = 4096;

/// Longest `TERM` value an EXEC with [`ExecFlags::PTY`] may carry, bytes.
pub const MAX_TERM_LEN: usize = 64;

/// Largest terminal dimension (rows or columns) an EXEC or RESIZE may ask for. Real terminals
/// stay far below it; a bigger one is a bug or an attack on programs that allocate per cell.
pub const MAX_TERM_DIM: u16 = 4096;

fn be_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// `bytes[at..at + len]`, or `Truncated` naming how many bytes were needed.
fn slice(bytes: &[u8], at: usize, len: usize) -> Result<&[u8], MessageError> {
    bytes.get(at..at + len).ok_or(MessageError::Truncated {
        need: at + len,
        got: bytes.len(),
    })
}

/// EXEC payload fields. The fixed part is followed by the working directory, then the
/// argument count and the arguments, then (with [`ExecFlags::PTY`] only) the terminal:
///
/// ```text
/// offset 0        2                6          8              8+cwd_len    10+cwd_len
///        +--------+----------------+----------+--------------+------------+------------------
///        | flags  | timeout_ms     | cwd_len  | cwd (UTF-8)  | argc (u16) | argc x (len u32, bytes)
///        +--------+----------------+----------+--------------+------------+------------------
///        then, with PTY: rows (u16) | cols (u16) | term_len (u8) | term (ASCII)
/// ```
///
/// A parser that predates PTY refuses such a request twice over: an unknown flag, and bytes
/// after the last argument.
pub mod exec_field {
    use std::ops::Range;
    /// [`ExecFlags`](super::ExecFlags) (BE u16).
    pub const FLAGS: Range<usize> = 0..2;
    /// Requested time limit in milliseconds (BE u32); 0 = the server's limit.
    pub const TIMEOUT_MS: Range<usize> = 2..6;
    /// Length of the working directory that follows (BE u16).
    pub const CWD_LEN: Range<usize> = 6..8;
    /// The working directory starts here; the argument count follows it.
    pub const CWD: usize = 8;
}

/// EXEC flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecFlags(u16);

impl ExecFlags {
    /// No flags: the command's stdin is `/dev/null`.
    pub const NONE: ExecFlags = ExecFlags(0);
    /// The client will send STDIN frames; the command's stdin is a pipe from the server.
    pub const STDIN: ExecFlags = ExecFlags(0x0001);
    /// The command runs on a pseudo-terminal; the terminal's fields follow the arguments.
    /// [`ExecRequest::pty`] carries them: [`ExecRequest::emit`] sets this bit from it and
    /// [`ExecRequest::parse`] moves it there, so `flags` never holds it in a parsed request.
    pub const PTY: ExecFlags = ExecFlags(0x0002);
    /// The flags this version defines; other bits must be zero.
    pub const KNOWN: ExecFlags = ExecFlags(0x0003);

    /// The raw bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: ExecFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// Why an EXEC payload was refused. Each is answered with `BAD_REQUEST` on the request's
/// stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecError {
    /// A field is cut short or a length runs past the payload.
    Message(MessageError),
    /// An EXEC flag this version does not define is set.
    UnknownFlags(u16),
    /// No program was given.
    NoProgram,
    /// More arguments than [`MAX_ARGS`].
    TooManyArgs(usize),
    /// The program is empty.
    EmptyProgram,
    /// An argument contains a NUL byte, which no `execve` argument can hold.
    NulInArgument(usize),
    /// The working directory is longer than [`MAX_CWD_LEN`] or not UTF-8.
    BadCwd,
    /// Bytes follow the last argument (or, with PTY, the terminal's fields).
    TrailingBytes(usize),
    /// A terminal size of 0 or above [`MAX_TERM_DIM`], rows then columns.
    BadSize(u16, u16),
    /// A `TERM` that is empty, longer than [`MAX_TERM_LEN`] or not made of
    /// `[A-Za-z0-9._+-]`.
    BadTerm,
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecError::Message(error) => write!(f, "malformed EXEC: {error}"),
            ExecError::UnknownFlags(bits) => write!(f, "unknown EXEC flags 0x{bits:04x}"),
            ExecError::NoProgram => f.write_str("EXEC names no program"),
            ExecError::TooManyArgs(count) => {
                write!(f, "EXEC has {count} arguments, limit is {MAX_ARGS}")
            }
            ExecError::EmptyProgram => f.write_str("the program name is empty"),
            ExecError::NulInArgument(index) => write!(f, "argument {index} contains a NUL byte"),
            ExecError::BadCwd => write!(
                f,
                "the working directory is not UTF-8 or longer than {MAX_CWD_LEN} bytes"
            ),
            ExecError::TrailingBytes(count) => {
                write!(f, "{count} bytes follow the last argument")
            }
            ExecError::BadSize(rows, cols) => write!(
                f,
                "terminal size {rows}x{cols}: rows and columns must be 1 to {MAX_TERM_DIM}"
            ),
            ExecError::BadTerm => write!(
                f,
                "TERM must be 1 to {MAX_TERM_LEN} bytes of letters, digits and ._+-"
            ),
        }
    }
}

impl std::error::Error for ExecError {}

impl From<MessageError> for ExecError {
    fn from(error: MessageError) -> ExecError {
        ExecError::Message(error)
    }
}

/// Whether `term` is a `TERM` a request may carry: 1 to [`MAX_TERM_LEN`] bytes of
/// `[A-Za-z0-9._+-]` (every name in terminfo fits; nothing a shell or a path could misread
/// does).
pub fn valid_term(term: &[u8]) -> bool {
    !term.is_empty()
        && term.len() <= MAX_TERM_LEN
        && term
            .iter()
            .all(|&byte| byte.is_ascii_alphanumeric() || b"._+-".contains(&byte))
}

/// Whether `rows` x `cols` is a terminal size a request may carry: each 1 to
/// [`MAX_TERM_DIM`].
pub const fn valid_size(rows: u16, cols: u16) -> bool {
    rows >= 1 && rows <= MAX_TERM_DIM && cols >= 1 && cols <= MAX_TERM_DIM
}

/// The pseudo-terminal an EXEC with [`ExecFlags::PTY`] asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtyRequest<'a> {
    /// Rows, 1 to [`MAX_TERM_DIM`].
    pub rows: u16,
    /// Columns, 1 to [`MAX_TERM_DIM`].
    pub cols: u16,
    /// The command's `TERM` ([`valid_term`]).
    pub term: &'a str,
}

impl PtyRequest<'_> {
    /// Bytes it adds to the EXEC payload.
    pub fn payload_len(&self) -> usize {
        2 + 2 + 1 + self.term.len()
    }
}

/// A command to run: argv as byte strings (no shell is involved unless argv names one), a
/// working directory relative to the server's root, and a time limit. The client sends no
/// environment: the server gives every command the same clean one (with a PTY, plus `TERM`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecRequest<'a> {
    /// Flags ([`ExecFlags::STDIN`]; [`ExecFlags::PTY`] is carried by `pty`).
    pub flags: ExecFlags,
    /// Requested time limit in milliseconds; 0 asks for the server's limit, and the server
    /// never allows more than its own limit.
    pub timeout_ms: u32,
    /// Working directory relative to the server's root; empty for the root itself.
    pub cwd: &'a str,
    /// The program (looked up in the server's fixed `PATH` unless it contains a `/`) and its
    /// arguments. Empty only with a PTY: the server's shell (`serve --exec-shell`).
    pub argv: Vec<&'a [u8]>,
    /// The pseudo-terminal to run it on, if any (`exec -t`).
    pub pty: Option<PtyRequest<'a>>,
}

impl<'a> ExecRequest<'a> {
    /// A request for `argv` with stdin from `/dev/null`, in the root, with the server's limit.
    pub fn new(argv: Vec<&'a [u8]>) -> ExecRequest<'a> {
        ExecRequest {
            flags: ExecFlags::NONE,
            timeout_ms: 0,
            cwd: "",
            argv,
            pty: None,
        }
    }

    /// Parses an EXEC payload. The argument vector is the only allocation, sized from the
    /// argument count the payload declares once that count is checked against [`MAX_ARGS`].
    pub fn parse(payload: &'a [u8]) -> Result<ExecRequest<'a>, ExecError> {
        let fixed = slice(payload, 0, exec_field::CWD)?;
        let flags = be_u16(fixed, exec_field::FLAGS.start);
        if flags & !ExecFlags::KNOWN.0 != 0 {
            return Err(ExecError::UnknownFlags(flags));
        }
        let timeout_ms = be_u32(fixed, exec_field::TIMEOUT_MS.start);
        let cwd_len = usize::from(be_u16(fixed, exec_field::CWD_LEN.start));
        if cwd_len > MAX_CWD_LEN {
            return Err(ExecError::BadCwd);
        }
        let cwd = slice(payload, exec_field::CWD, cwd_len)?;
        let cwd = std::str::from_utf8(cwd).map_err(|_| ExecError::BadCwd)?;
        let mut at = exec_field::CWD + cwd_len;
        let argc = usize::from(be_u16(slice(payload, at, 2)?, 0));
        at += 2;
        let has_pty = flags & ExecFlags::PTY.0 != 0;
        // With a PTY, no argv asks for the server's shell.
        if argc == 0 && !has_pty {
            return Err(ExecError::NoProgram);
        }
        if argc > MAX_ARGS {
            return Err(ExecError::TooManyArgs(argc));
        }
        // Each argument needs at least its 4-byte length: a count the payload cannot hold is
        // refused before anything is reserved for it.
        slice(payload, at, argc * 4)?;
        let mut argv = Vec::with_capacity(argc);
        for index in 0..argc {
            let len = be_u32(slice(payload, at, 4)?, 0) as usize;
            let arg = slice(payload, at + 4, len)?;
            if arg.contains(&0) {
                return Err(ExecError::NulInArgument(index));
            }
            argv.push(arg);
            at += 4 + len;
        }
        if argv.first().is_some_and(|program| program.is_empty()) {
            return Err(ExecError::EmptyProgram);
        }
        let pty = if has_pty {
            let fixed = slice(payload, at, 5)?;
            let rows = be_u16(fixed, 0);
            let cols = be_u16(fixed, 2);
            let term_len = usize::from(fixed[4]);
            let term = slice(payload, at + 5, term_len)?;
            at += 5 + term_len;
            if !valid_size(rows, cols) {
                return Err(ExecError::BadSize(rows, cols));
            }
            if !valid_term(term) {
                return Err(ExecError::BadTerm);
            }
            // Checked just above: ASCII only.
            let term = std::str::from_utf8(term).map_err(|_| ExecError::BadTerm)?;
            Some(PtyRequest { rows, cols, term })
        } else {
            None
        };
        if at != payload.len() {
            return Err(ExecError::TrailingBytes(payload.len() - at));
        }
        Ok(ExecRequest {
            flags: ExecFlags(flags & !ExecFlags::PTY.0),
            timeout_ms,
            cwd,
            argv,
            pty,
        })
    }

    /// The payload length [`ExecRequest::emit`] writes.
    pub fn payload_len(&self) -> usize {
        exec_field::CWD
            + self.cwd.len()
            + 2
            + self.argv.iter().map(|arg| 4 + arg.len()).sum::<usize>()
            + self.pty.map_or(0, |pty| pty.payload_len())
    }

    /// Writes the payload into `out[..self.payload_len()]`.
    ///
    /// # Panics
    /// If the request cannot be encoded: more than `u16::MAX` arguments, a working directory
    /// longer than `u16::MAX` bytes, an argument longer than `u32::MAX` bytes or a `TERM`
    /// longer than 255 bytes.
    pub fn emit(&self, out: &mut [u8]) {
        let mut flags = self.flags.0 & !ExecFlags::PTY.0;
        if self.pty.is_some() {
            flags |= ExecFlags::PTY.0;
        }
        out[exec_field::FLAGS].copy_from_slice(&flags.to_be_bytes());
        out[exec_field::TIMEOUT_MS].copy_from_slice(&self.timeout_ms.to_be_bytes());
        let cwd_len = u16::try_from(self.cwd.len()).expect("cwd length fits in u16");
        out[exec_field::CWD_LEN].copy_from_slice(&cwd_len.to_be_bytes());
        let mut at = exec_field::CWD;
        out[at..at + self.cwd.len()].copy_from_slice(self.cwd.as_bytes());
        at += self.cwd.len();
        let argc = u16::try_from(self.argv.len()).expect("argument count fits in u16");
        out[at..at + 2].copy_from_slice(&argc.to_be_bytes());
        at += 2;
        for arg in &self.argv {
            let len = u32::try_from(arg.len()).expect("argument length fits in u32");
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
            out[at + 4..at + 4 + arg.len()].copy_from_slice(arg);
            at += 4 + arg.len();
        }
        if let Some(pty) = &self.pty {
            out[at..at + 2].copy_from_slice(&pty.rows.to_be_bytes());
            out[at + 2..at + 4].copy_from_slice(&pty.cols.to_be_bytes());
            out[at + 4] = u8::try_from(pty.term.len()).expect("TERM length fits in u8");
            out[at + 5..at + 5 + pty.term.len()].copy_from_slice(pty.term.as_bytes());
        }
    }

    /// Appends a complete EXEC frame on `stream`.
    pub fn encode(&self, stream: u32, out: &mut Vec<u8>) {
        let mut payload = vec![0; self.payload_len()];
        self.emit(&mut payload);
        Frame::new(FrameType::Exec, Flags::NONE, stream, &payload).encode_into(out);
    }
}

/// STARTED payload fields.
pub mod started_field {
    use std::ops::Range;
    /// The command's process id on the server (BE u32); it leads its own process group.
    pub const PID: Range<usize> = 0..4;
    /// Initial STDIN credit in bytes (BE u32); 0 when the EXEC did not ask for stdin.
    pub const STDIN_WINDOW: Range<usize> = 4..8;
}

/// The server's answer to an EXEC that started a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    /// The command's process id (and process group id) on the server.
    pub pid: u32,
    /// How many STDIN bytes the client may send before it waits for a WINDOW.
    pub stdin_window: u32,
}

impl Started {
    /// Payload length of STARTED.
    pub const PAYLOAD_LEN: usize = started_field::STDIN_WINDOW.end;

    /// Parses a STARTED payload; later fields after the known ones are ignored.
    pub fn parse(payload: &[u8]) -> Result<Started, MessageError> {
        let fixed = slice(payload, 0, Self::PAYLOAD_LEN)?;
        Ok(Started {
            pid: be_u32(fixed, started_field::PID.start),
            stdin_window: be_u32(fixed, started_field::STDIN_WINDOW.start),
        })
    }

    /// Writes the payload into `out[..Started::PAYLOAD_LEN]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[started_field::PID].copy_from_slice(&self.pid.to_be_bytes());
        out[started_field::STDIN_WINDOW].copy_from_slice(&self.stdin_window.to_be_bytes());
    }
}

/// WINDOW payload: the credit added, in bytes (BE u32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// STDIN bytes the client may send in addition to its current credit.
    pub increment: u32,
}

impl Window {
    /// Payload length of WINDOW.
    pub const PAYLOAD_LEN: usize = 4;

    /// Parses a WINDOW payload.
    pub fn parse(payload: &[u8]) -> Result<Window, MessageError> {
        let fixed = slice(payload, 0, Self::PAYLOAD_LEN)?;
        Ok(Window {
            increment: be_u32(fixed, 0),
        })
    }

    /// Writes the payload into `out[..Window::PAYLOAD_LEN]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[..Self::PAYLOAD_LEN].copy_from_slice(&self.increment.to_be_bytes());
    }
}

/// RESIZE payload: the terminal's new size, rows then columns (BE u16 each). Client → server
/// on a command's stream; only a command on a PTY is resized (for any other it is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resize {
    /// Rows, 1 to [`MAX_TERM_DIM`].
    pub rows: u16,
    /// Columns, 1 to [`MAX_TERM_DIM`].
    pub cols: u16,
}

/// Why a RESIZE payload was refused. Fatal, like a bad SIGNAL: the command is running, and an
/// error on its stream would end the stream under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeError {
    /// The payload is not exactly 4 bytes.
    Length(usize),
    /// A size of 0 or above [`MAX_TERM_DIM`], rows then columns.
    BadSize(u16, u16),
}

impl fmt::Display for ResizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResizeError::Length(len) => write!(f, "RESIZE payload of {len} bytes, must be 4"),
            ResizeError::BadSize(rows, cols) => write!(
                f,
                "terminal size {rows}x{cols}: rows and columns must be 1 to {MAX_TERM_DIM}"
            ),
        }
    }
}

impl std::error::Error for ResizeError {}

impl Resize {
    /// Payload length of RESIZE.
    pub const PAYLOAD_LEN: usize = 4;

    /// Parses a RESIZE payload.
    pub fn parse(payload: &[u8]) -> Result<Resize, ResizeError> {
        if payload.len() != Self::PAYLOAD_LEN {
            return Err(ResizeError::Length(payload.len()));
        }
        let (rows, cols) = (be_u16(payload, 0), be_u16(payload, 2));
        if !valid_size(rows, cols) {
            return Err(ResizeError::BadSize(rows, cols));
        }
        Ok(Resize { rows, cols })
    }

    /// Writes the payload into `out[..Resize::PAYLOAD_LEN]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[0..2].copy_from_slice(&self.rows.to_be_bytes());
        out[2..4].copy_from_slice(&self.cols.to_be_bytes());
    }

    /// A complete RESIZE frame on `stream`.
    pub fn encode(&self, stream: u32, out: &mut Vec<u8>) {
        let mut payload = [0; Self::PAYLOAD_LEN];
        self.emit(&mut payload);
        Frame::new(FrameType::Resize, Flags::NONE, stream, &payload).encode_into(out);
    }
}

/// Signals a client may ask for, by their POSIX numbers (the same on every Linux
/// architecture for these four).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    /// SIGHUP (1).
    Hup,
    /// SIGINT (2).
    Int,
    /// SIGKILL (9).
    Kill,
    /// SIGTERM (15).
    Term,
}

impl Signal {
    /// The signal for a wire number, if it is one a client may send.
    pub const fn from_number(number: u8) -> Option<Signal> {
        match number {
            1 => Some(Signal::Hup),
            2 => Some(Signal::Int),
            9 => Some(Signal::Kill),
            15 => Some(Signal::Term),
            _ => None,
        }
    }

    /// The signal number.
    pub const fn number(self) -> u8 {
        match self {
            Signal::Hup => 1,
            Signal::Int => 2,
            Signal::Kill => 9,
            Signal::Term => 15,
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Hup => "SIGHUP",
            Signal::Int => "SIGINT",
            Signal::Kill => "SIGKILL",
            Signal::Term => "SIGTERM",
        })
    }
}

/// SIGNAL payload: one byte, the signal number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalRequest {
    /// The signal to deliver to the command's process group.
    pub signal: Signal,
}

/// Why a SIGNAL payload was refused: its length or number. Fatal: the command is running, and
/// an error on its stream would end the stream under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalError {
    /// The payload is not exactly one byte.
    Length(usize),
    /// Not HUP (1), INT (2), KILL (9) or TERM (15).
    Unsupported(u8),
}

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalError::Length(len) => write!(f, "SIGNAL payload of {len} bytes, must be 1"),
            SignalError::Unsupported(number) => write!(
                f,
                "signal {number} cannot be sent; only 1 (HUP), 2 (INT), 9 (KILL) and 15 (TERM)"
            ),
        }
    }
}

impl std::error::Error for SignalError {}

impl SignalRequest {
    /// Payload length of SIGNAL.
    pub const PAYLOAD_LEN: usize = 1;

    /// Parses a SIGNAL payload.
    pub fn parse(payload: &[u8]) -> Result<SignalRequest, SignalError> {
        let &[number] = payload else {
            return Err(SignalError::Length(payload.len()));
        };
        let signal = Signal::from_number(number).ok_or(SignalError::Unsupported(number))?;
        Ok(SignalRequest { signal })
    }

    /// Writes the payload into `out[..1]`.
    pub fn emit(&self, out: &mut [u8]) {
        out[0] = self.signal.number();
    }
}

/// EXIT payload fields.
pub mod exit_field {
    /// How the command ended: 0 exited, 1 killed by a signal.
    pub const HOW: usize = 0;
    /// The exit code (0–255), or the signal number.
    pub const VALUE: usize = 1;
    /// Bit 0: the process dumped core.
    pub const FLAGS: usize = 2;
    /// Why the server signalled the command, if it did ([`EndReason`](super::EndReason)).
    pub const REASON: usize = 3;
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Termination {
    /// It exited with this code.
    Exited(u8),
    /// A signal killed it.
    Signaled {
        /// The signal number.
        signal: u8,
        /// Whether it dumped core.
        core_dumped: bool,
    },
}

/// Why the server signalled a command's process group, if it did: the latest cause counts, so
/// it names the cause of the signal that ended the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The server never signalled it: it ended by itself.
    None,
    /// It ran past its time limit.
    Timeout,
    /// It wrote more than the output cap.
    OutputCap,
    /// The client asked, with a SIGNAL frame.
    ClientSignal,
    /// The client's connection ended (only ever logged: there is nobody to send EXIT to).
    Disconnect,
    /// The server is shutting down.
    Shutdown,
    /// A reason this build does not know.
    Other(u8),
}

impl EndReason {
    /// Decodes the wire byte.
    pub const fn from_u8(byte: u8) -> EndReason {
        match byte {
            0 => EndReason::None,
            1 => EndReason::Timeout,
            2 => EndReason::OutputCap,
            3 => EndReason::ClientSignal,
            4 => EndReason::Disconnect,
            5 => EndReason::Shutdown,
            other => EndReason::Other(other),
        }
    }

    /// The wire byte.
    pub const fn to_u8(self) -> u8 {
        match self {
            EndReason::None => 0,
            EndReason::Timeout => 1,
            EndReason::OutputCap => 2,
            EndReason::ClientSignal => 3,
            EndReason::Disconnect => 4,
            EndReason::Shutdown => 5,
            EndReason::Other(other) => other,
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::None => f.write_str("none"),
            EndReason::Timeout => f.write_str("time limit"),
            EndReason::OutputCap => f.write_str("output cap"),
            EndReason::ClientSignal => f.write_str("client signal"),
            EndReason::Disconnect => f.write_str("disconnect"),
            EndReason::Shutdown => f.write_str("server shutdown"),
            EndReason::Other(byte) => write!(f, "reason {byte}"),
        }
    }
}

/// The last frame of an exec stream: how the command ended and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Exit code or signal.
    pub termination: Termination,
    /// Why the server signalled it, if it did.
    pub reason: EndReason,
}

impl Exit {
    /// Payload length of EXIT.
    pub const PAYLOAD_LEN: usize = exit_field::REASON + 1;
    const CORE_DUMPED: u8 = 0x01;

    /// Parses an EXIT payload.
    pub fn parse(payload: &[u8]) -> Result<Exit, MessageError> {
        let fixed = slice(payload, 0, Self::PAYLOAD_LEN)?;
        let value = fixed[exit_field::VALUE];
        let termination = match fixed[exit_field::HOW] {
            0 => Termination::Exited(value),
            _ => Termination::Signaled {
                signal: value,
                core_dumped: fixed[exit_field::FLAGS] & Self::CORE_DUMPED != 0,
            },
        };
        Ok(Exit {
            termination,
            reason: EndReason::from_u8(fixed[exit_field::REASON]),
        })
    }

    /// Writes the payload into `out[..Exit::PAYLOAD_LEN]`.
    pub fn emit(&self, out: &mut [u8]) {
        let (how, value, flags) = match self.termination {
            Termination::Exited(code) => (0, code, 0),
            Termination::Signaled {
                signal,
                core_dumped,
            } => (1, signal, if core_dumped { Self::CORE_DUMPED } else { 0 }),
        };
        out[exit_field::HOW] = how;
        out[exit_field::VALUE] = value;
        out[exit_field::FLAGS] = flags;
        out[exit_field::REASON] = self.reason.to_u8();
    }

    /// The exit code a shell (or ssh) would report: the code itself, or 128 + the signal.
    pub fn shell_code(&self) -> u8 {
        match self.termination {
            Termination::Exited(code) => code,
            Termination::Signaled { signal, .. } => 128u8.saturating_add(signal),
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.termination {
            Termination::Exited(code) => write!(f, "exited with code {code}")?,
            Termination::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by signal {signal}")?;
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
            }
        }
        if self.reason != EndReason::None {
            write!(f, "; the server signalled it: {}", self.reason)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(request: &ExecRequest<'_>) -> Vec<u8> {
        let mut payload = vec![0xa5; request.payload_len()];
        request.emit(&mut payload);
        payload
    }

    // === EXEC ===

    #[test]
    fn exec_emit_then_parse_round_trips() {
        let request = ExecRequest {
            flags: ExecFlags::STDIN,
            timeout_ms: 1500,
            cwd: "work/dir",
            argv: vec![b"sh", b"-c", b"echo $(id);x", b""],
            pty: None,
        };
        let payload = encoded(&request);
        assert_eq!(
            &payload[..12],
            b"\x00\x01\x00\x00\x05\xdc\x00\x08work",
            "flags, timeout, cwd length, cwd"
        );
        assert_eq!(ExecRequest::parse(&payload), Ok(request));
    }

    #[test]
    fn exec_parse_of_every_strict_prefix_fails_without_panicking() {
        let payload = encoded(&ExecRequest::new(vec![b"echo", b"hi"]));
        for len in 0..payload.len() {
            assert!(ExecRequest::parse(&payload[..len]).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn exec_parse_refuses_what_execve_cannot_take() {
        let empty_program = encoded(&ExecRequest::new(vec![b""]));
        assert_eq!(
            ExecRequest::parse(&empty_program),
            Err(ExecError::EmptyProgram)
        );
        let nul = encoded(&ExecRequest::new(vec![b"echo", b"a\0b"]));
        assert_eq!(ExecRequest::parse(&nul), Err(ExecError::NulInArgument(1)));
        let none = encoded(&ExecRequest::new(vec![]));
        assert_eq!(ExecRequest::parse(&none), Err(ExecError::NoProgram));
        let mut flagged = encoded(&ExecRequest::new(vec![b"true"]));
        flagged[1] = 0x82;
        assert_eq!(
            ExecRequest::parse(&flagged),
            Err(ExecError::UnknownFlags(0x82))
        );
        let mut trailing = encoded(&ExecRequest::new(vec![b"true"]));
        trailing.push(0);
        assert_eq!(
            ExecRequest::parse(&trailing),
            Err(ExecError::TrailingBytes(1))
        );
    }

    #[test]
    fn exec_parse_refuses_an_argument_count_the_payload_cannot_hold_before_allocating() {
        // argc 4096 with no argument bytes at all.
        let payload = [0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x00];
        assert_eq!(
            ExecRequest::parse(&payload),
            Err(ExecError::Message(MessageError::Truncated {
                need: 10 + 4096 * 4,
                got: 10
            }))
        );
        let too_many = [0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0x01];
        assert_eq!(
            ExecRequest::parse(&too_many),
            Err(ExecError::TooManyArgs(4097))
        );
    }

    #[test]
    fn exec_parse_refuses_a_non_utf8_or_overlong_cwd() {
        let mut payload = encoded(&ExecRequest {
            cwd: "ab",
            ..ExecRequest::new(vec![b"true"])
        });
        payload[exec_field::CWD] = 0xff;
        assert_eq!(ExecRequest::parse(&payload), Err(ExecError::BadCwd));
        let overlong = [0, 0, 0, 0, 0, 0, 0x10, 0x01];
        assert_eq!(ExecRequest::parse(&overlong), Err(ExecError::BadCwd));
    }

    #[test]
    fn exec_with_a_pty_round_trips_and_sets_the_flag_on_the_wire() {
        let request = ExecRequest {
            flags: ExecFlags::STDIN,
            pty: Some(PtyRequest {
                rows: 24,
                cols: 80,
                term: "xterm-256color",
            }),
            ..ExecRequest::new(vec![])
        };
        let payload = encoded(&request);
        assert_eq!(&payload[..2], &[0, 3], "STDIN | PTY");
        assert_eq!(
            &payload[10..15],
            &[0, 24, 0, 80, 14],
            "after argc 0: rows, cols, term_len"
        );
        assert_eq!(ExecRequest::parse(&payload), Ok(request));
        for len in 0..payload.len() {
            assert!(ExecRequest::parse(&payload[..len]).is_err(), "prefix {len}");
        }
    }

    #[test]
    fn exec_with_a_pty_refuses_bad_sizes_and_terms() {
        let with = |rows, cols, term| {
            encoded(&ExecRequest {
                pty: Some(PtyRequest { rows, cols, term }),
                ..ExecRequest::new(vec![b"sh"])
            })
        };
        assert_eq!(
            ExecRequest::parse(&with(0, 80, "vt100")),
            Err(ExecError::BadSize(0, 80))
        );
        assert_eq!(
            ExecRequest::parse(&with(24, MAX_TERM_DIM + 1, "vt100")),
            Err(ExecError::BadSize(24, MAX_TERM_DIM + 1))
        );
        let overlong = "x".repeat(MAX_TERM_LEN + 1);
        for term in ["", "xterm;rm", "a b", "x/y", &overlong] {
            assert_eq!(
                ExecRequest::parse(&with(24, 80, term)),
                Err(ExecError::BadTerm),
                "{term:?}"
            );
        }
        assert!(ExecRequest::parse(&with(MAX_TERM_DIM, 1, "screen.xterm+256-x")).is_ok());
        // Without the flag, no argv is still no program, and the fields are trailing bytes.
        let mut plain = with(24, 80, "vt100");
        plain[1] = 0;
        assert_eq!(
            ExecRequest::parse(&plain),
            Err(ExecError::TrailingBytes(10))
        );
        assert_eq!(
            ExecRequest::parse(&encoded(&ExecRequest::new(vec![]))),
            Err(ExecError::NoProgram)
        );
    }

    #[test]
    fn resize_round_trips_and_refuses_bad_sizes() {
        let resize = Resize {
            rows: 50,
            cols: 132,
        };
        let mut payload = [0xa5; Resize::PAYLOAD_LEN];
        resize.emit(&mut payload);
        assert_eq!(payload, [0, 50, 0, 132]);
        assert_eq!(Resize::parse(&payload), Ok(resize));
        assert_eq!(Resize::parse(&[0, 50, 0]), Err(ResizeError::Length(3)));
        assert_eq!(
            Resize::parse(&[0, 0, 0, 1]),
            Err(ResizeError::BadSize(0, 1))
        );
        assert_eq!(
            Resize::parse(&[0xff, 0xff, 0, 1]),
            Err(ResizeError::BadSize(0xffff, 1))
        );
    }

    // === STARTED, WINDOW, SIGNAL ===

    #[test]
    fn started_and_window_round_trip() {
        let started = Started {
            pid: 0x0102_0304,
            stdin_window: 262_144,
        };
        let mut payload = [0xa5; Started::PAYLOAD_LEN];
        started.emit(&mut payload);
        assert_eq!(payload, [1, 2, 3, 4, 0, 4, 0, 0]);
        assert_eq!(Started::parse(&payload), Ok(started));

        let window = Window { increment: 65_536 };
        let mut payload = [0xa5; Window::PAYLOAD_LEN];
        window.emit(&mut payload);
        assert_eq!(payload, [0, 1, 0, 0]);
        assert_eq!(Window::parse(&payload), Ok(window));
    }

    #[test]
    fn signal_accepts_exactly_hup_int_kill_term() {
        for signal in [Signal::Hup, Signal::Int, Signal::Kill, Signal::Term] {
            let mut payload = [0];
            SignalRequest { signal }.emit(&mut payload);
            assert_eq!(SignalRequest::parse(&payload), Ok(SignalRequest { signal }));
        }
        assert_eq!(
            SignalRequest::parse(&[19]),
            Err(SignalError::Unsupported(19))
        );
        assert_eq!(SignalRequest::parse(&[]), Err(SignalError::Length(0)));
        assert_eq!(SignalRequest::parse(&[2, 2]), Err(SignalError::Length(2)));
    }

    // === EXIT ===

    #[test]
    fn exit_round_trips_codes_and_signals() {
        let cases = [
            (
                Exit {
                    termination: Termination::Exited(3),
                    reason: EndReason::None,
                },
                [0, 3, 0, 0],
                3,
            ),
            (
                Exit {
                    termination: Termination::Signaled {
                        signal: 9,
                        core_dumped: false,
                    },
                    reason: EndReason::Timeout,
                },
                [1, 9, 0, 1],
                137,
            ),
            (
                Exit {
                    termination: Termination::Signaled {
                        signal: 6,
                        core_dumped: true,
                    },
                    reason: EndReason::None,
                },
                [1, 6, 1, 0],
                134,
            ),
        ];
        for (exit, wire, shell_code) in cases {
            let mut payload = [0xa5; Exit::PAYLOAD_LEN];
            exit.emit(&mut payload);
            assert_eq!(payload, wire);
            assert_eq!(Exit::parse(&payload), Ok(exit));
            assert_eq!(exit.shell_code(), shell_code);
        }
    }

    #[test]
    fn every_end_reason_round_trips() {
        for byte in 0..=u8::MAX {
            assert_eq!(EndReason::from_u8(byte).to_u8(), byte);
        }
    }
}
