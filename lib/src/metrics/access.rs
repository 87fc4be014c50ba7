//! Access lines: one per request, like nginx's `access_log`, through `log` with the target
//! [`TARGET`] (so `RUST_LOG=monoreactor::access=off` silences them while the rest logs).
//!
//! ```text
//! 127.0.0.1:40312 alice "GET team/report.pdf" OK in=0 out=1048576 ms=12
//! 127.0.0.1:40318 - "EXEC sh -c 'exit 3'" exit=3 in=0 out=0 ms=4
//! 127.0.0.1:40320 alice "PUT big.bin" OK in=2147483648 out=0 ms=8123
//! 127.0.0.1:40322 - "STAT missing" NOT_FOUND in=0 out=0 ms=0
//! 127.0.0.1:40330 - "ECHO x1000" CLOSED in=72000 out=72000 ms=350
//! ```
//!
//! Fields: the client's address ([`Peer::addr`](crate::transport::Peer)), the credential's
//! name (`-` without one), the request in quotes, the outcome (`OK`, `exit=N`, `signal=N`, an
//! error code's name, `ENDED:reason` for a request cut short), the bytes the request read from
//! and sent to the client (payload: file bytes, stdin, stdout and stderr; for an echo
//! connection, every byte), and its duration in milliseconds (from the loop's ticks: the state
//! machines never read the clock). The time is the logger's, at the start of the line.
//!
//! Nothing a client sends reaches the line unescaped: a path or an argument is cut at
//! [`MAX_REQUEST_TEXT`] bytes and every byte outside printable ASCII, and `"` and `\`, is
//! written `\xNN`, so a newline in a file name cannot start a forged line and an escape
//! sequence cannot reach a terminal.

use std::fmt::{self, Write};
use std::net::SocketAddr;

use super::RequestKind;
use crate::proto::ErrorCode;
use crate::proto::exec::{EndReason, Exit, Termination};
use crate::timer::Tick;

/// The `log` target of access lines.
pub(crate) const TARGET: &str = "monoreactor::access";

/// The longest request text in a line; the rest is cut, and `...` says so.
pub(crate) const MAX_REQUEST_TEXT: usize = 256;

/// How a request ended, as the line says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered in full.
    Ok,
    /// A command's EXIT.
    Exit(Exit),
    /// Ended by an ERROR with this code.
    Error(ErrorCode),
    /// Cut short before its answer: the client went, abandoned it, or the server shut down.
    Ended(EndReason),
    /// An echo connection closed (its line is written at the close).
    Closed,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("OK"),
            Outcome::Exit(exit) => {
                match exit.termination {
                    Termination::Exited(code) => write!(f, "exit={code}")?,
                    Termination::Signaled { signal, .. } => write!(f, "signal={signal}")?,
                }
                if exit.reason != EndReason::None {
                    write!(f, ",{}", reason_name(exit.reason))?;
                }
                Ok(())
            }
            Outcome::Error(code) => write!(f, "{code}"),
            Outcome::Ended(reason) => write!(f, "ENDED:{}", reason_name(*reason)),
            Outcome::Closed => f.write_str("CLOSED"),
        }
    }
}

/// A one-word name of why the server ended a command or a request.
fn reason_name(reason: EndReason) -> &'static str {
    match reason {
        EndReason::None => "none",
        EndReason::Timeout => "timeout",
        EndReason::OutputCap => "output_cap",
        EndReason::ClientSignal => "client",
        EndReason::Disconnect => "disconnect",
        EndReason::Shutdown => "shutdown",
        EndReason::Other(_) => "other",
    }
}

/// A request that takes time, from its start to its line: kept in its stream's entry (the
/// per-request state; a connection's slot holds none of it).
#[derive(Debug)]
pub(crate) struct Record {
    /// What it asked for.
    pub(crate) kind: RequestKind,
    /// The request as the line shows it, escaped ([`request_text`], [`argv_text`]).
    pub(crate) request: String,
    /// When it started (the loop's tick).
    pub(crate) started: Tick,
    /// Payload bytes it read from the client.
    pub(crate) bytes_in: u64,
    /// Payload bytes it sent to the client.
    pub(crate) bytes_out: u64,
    /// How it ended, once its last frame is queued; `None` while it runs.
    pub(crate) outcome: Option<Outcome>,
}

impl Record {
    /// A request of `kind` started at `started`.
    pub(crate) fn new(kind: RequestKind, request: String, started: Tick) -> Record {
        Record {
            kind,
            request,
            started,
            bytes_in: 0,
            bytes_out: 0,
            outcome: None,
        }
    }
}

/// One access line's fields.
#[derive(Debug)]
pub(crate) struct Line<'a> {
    pub(crate) peer: SocketAddr,
    /// The credential's name, if the connection authenticated with one.
    pub(crate) credential: Option<&'a str>,
    /// The request, already escaped ([`request_text`], [`argv_text`]).
    pub(crate) request: &'a str,
    pub(crate) outcome: Outcome,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) millis: u64,
}

impl Line<'_> {
    /// Writes the line through `log` (info level, target [`TARGET`]).
    pub(crate) fn log(&self) {
        log::info!(target: TARGET, "{self}");
    }
}

impl fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let credential = self.credential.unwrap_or("-");
        f.write_str(&self.peer.to_string())?;
        f.write_char(' ')?;
        // A credential's name comes from the access file, not the client; escaped all the same.
        escape_into(f, credential.as_bytes(), usize::MAX)?;
        write!(
            f,
            " \"{}\" {} in={} out={} ms={}",
            self.request, self.outcome, self.bytes_in, self.bytes_out, self.millis
        )
    }
}

/// Whether a byte passes unescaped: printable ASCII but for the quote and the backslash.
fn plain(byte: u8) -> bool {
    (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\'
}

/// Writes `bytes` with every byte that is not [`plain`] as `\xNN`, at most `room` bytes of
/// output (then `...`). Returns the room left.
fn escape_into(out: &mut impl Write, bytes: &[u8], room: usize) -> Result<usize, fmt::Error> {
    let mut room = room;
    for &byte in bytes {
        let cost = if plain(byte) { 1 } else { 4 };
        if cost > room {
            out.write_str("...")?;
            return Ok(0);
        }
        room -= cost;
        if plain(byte) {
            out.write_char(char::from(byte))?;
        } else {
            write!(out, "\\x{byte:02x}")?;
        }
    }
    Ok(room)
}

/// `VERB path`, escaped and bounded.
pub(crate) fn request_text(verb: &str, path: &[u8]) -> String {
    let mut text = String::with_capacity(verb.len() + 1 + path.len().min(MAX_REQUEST_TEXT));
    text.push_str(verb);
    text.push(' ');
    // Writing to a String cannot fail.
    let _ = escape_into(&mut text, path, MAX_REQUEST_TEXT);
    text
}

/// `EXEC argv...`, each argument shell-quoted as a reader would type it (bare when it is
/// made of safe characters, else in single quotes), escaped and bounded: every byte of the
/// text counts against [`MAX_REQUEST_TEXT`] (the spaces between arguments, the quotes and a
/// quote's `'\''` too), so no argv (a million empty arguments, an argument of quotes) makes
/// a longer line.
pub(crate) fn argv_text(argv: &[&[u8]]) -> String {
    let mut text = String::from("EXEC");
    let mut out = Bounded {
        text: &mut text,
        room: MAX_REQUEST_TEXT,
        cut: false,
    };
    for arg in argv {
        if !out.literal(" ") {
            break;
        }
        let bare = !arg.is_empty()
            && arg
                .iter()
                .all(|&byte| byte.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&byte));
        if bare {
            if !out.escaped(arg) {
                break;
            }
            continue;
        }
        if !out.literal("'") {
            break;
        }
        for (index, part) in arg.split(|&byte| byte == b'\'').enumerate() {
            // A quote inside single quotes: close, an escaped quote, reopen.
            if (index > 0 && !out.literal("'\\''")) || !out.escaped(part) {
                break;
            }
        }
        if !out.literal("'") {
            break;
        }
    }
    text
}

/// A string written to at most `room` more bytes; what does not fit is cut, once, with `...`.
struct Bounded<'a> {
    text: &'a mut String,
    room: usize,
    cut: bool,
}

impl Bounded<'_> {
    /// Appends `piece` whole if it fits, else cuts. Whether it was written.
    fn literal(&mut self, piece: &str) -> bool {
        if self.cut || piece.len() > self.room {
            self.cut();
            return false;
        }
        self.text.push_str(piece);
        self.room -= piece.len();
        true
    }

    /// Appends `bytes` escaped ([`escape_into`]) as far as they fit. Whether all were written.
    fn escaped(&mut self, bytes: &[u8]) -> bool {
        if self.cut {
            return false;
        }
        let cost: usize = bytes
            .iter()
            .map(|&byte| if plain(byte) { 1 } else { 4 })
            .sum();
        if cost > self.room {
            // Writing to a String cannot fail; `escape_into` writes the `...` itself.
            let _ = escape_into(self.text, bytes, self.room);
            self.room = 0;
            self.cut = true;
            return false;
        }
        let _ = escape_into(self.text, bytes, self.room);
        self.room -= cost;
        true
    }

    fn cut(&mut self) {
        if !self.cut {
            self.text.push_str("...");
            self.cut = true;
            self.room = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newline_in_a_path_cannot_start_a_forged_line() {
        let text = request_text("GET", b"a\n127.0.0.1:1 admin \"GET x\" OK");
        assert_eq!(text, "GET a\\x0a127.0.0.1:1 admin \\x22GET x\\x22 OK");
        assert!(!text.contains('\n') && !text.contains('"'));
    }

    #[test]
    fn escape_sequences_and_non_ascii_are_escaped() {
        assert_eq!(
            request_text("PUT", "\x1b[2Jé".as_bytes()),
            "PUT \\x1b[2J\\xc3\\xa9"
        );
    }

    #[test]
    fn argv_is_shell_quoted() {
        let argv: [&[u8]; 4] = [b"sh", b"-c", b"echo 'hi' there", b""];
        assert_eq!(argv_text(&argv), "EXEC sh -c 'echo '\\''hi'\\'' there' ''");
    }

    #[test]
    fn a_long_request_is_cut_with_a_mark() {
        let long = vec![b'a'; 10_000];
        let text = request_text("GET", &long);
        assert!(text.len() <= "GET ".len() + MAX_REQUEST_TEXT + 3);
        assert!(text.ends_with("..."));
        let argv: Vec<&[u8]> = vec![&long; 3];
        assert!(argv_text(&argv).len() <= "EXEC ".len() + MAX_REQUEST_TEXT + 8);
    }

    /// The spaces, the quotes and a quote's escape count against the bound too: neither
    /// `MAX_ARGS` empty arguments (3 bytes each, uncounted before: 12 KiB) nor an argument
    /// made of quotes (4 bytes each, written past the bound before: 4 MiB for a 1 MiB frame)
    /// makes a line longer than it.
    #[test]
    fn no_argv_makes_a_longer_line_than_the_bound() {
        let bound = "EXEC".len() + MAX_REQUEST_TEXT + "...".len();
        let empty: Vec<&[u8]> = vec![b""; crate::proto::exec::MAX_ARGS];
        let text = argv_text(&empty);
        assert!(
            text.len() <= bound,
            "{} bytes for empty arguments",
            text.len()
        );
        assert!(text.ends_with("..."), "{text}");
        let quotes = vec![b'\''; 100_000];
        let text = argv_text(&[b"echo", &quotes]);
        assert!(text.len() <= bound, "{} bytes for quotes", text.len());
        assert!(text.ends_with("..."), "{text}");
        let spaces: Vec<&[u8]> = vec![b"a"; crate::proto::exec::MAX_ARGS];
        let text = argv_text(&spaces);
        assert!(
            text.len() <= bound,
            "{} bytes for short arguments",
            text.len()
        );
        // What fits is written whole, with no mark.
        let argv: [&[u8]; 3] = [b"echo", b"it's", b""];
        assert_eq!(argv_text(&argv), "EXEC echo 'it'\\''s' ''");
    }

    #[test]
    fn a_line_has_every_field() {
        let line = Line {
            peer: "127.0.0.1:4000".parse().unwrap(),
            credential: Some("alice"),
            request: "GET a/b",
            outcome: Outcome::Error(ErrorCode::NotFound),
            bytes_in: 1,
            bytes_out: 2,
            millis: 3,
        };
        assert_eq!(
            line.to_string(),
            "127.0.0.1:4000 alice \"GET a/b\" NOT_FOUND in=1 out=2 ms=3"
        );
    }
}
