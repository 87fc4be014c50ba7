//! How a command ends when it fails: a [`Failure`] is an exit status and the one line to print
//! for it; the statuses the commands share are here, and so are the two ways out to the
//! terminal every command uses, [`print_stdout`] and [`say`], neither of which panics.
//!
//! One convention for every client command: 0 done, [`SERVER_REFUSED`] (1) the server
//! answered with an ERROR frame, [`USAGE`] (2) the command line is wrong, [`CLIENT_FAILURE`]
//! (255) the client or the connection failed. `exec` passes the remote command's status
//! through instead, so 1 to 254 are the command's: like ssh, it exits [`CLIENT_FAILURE`]
//! (255) also when the server refuses to run the command (exec off, a program the credential
//! does not allow, a wrong token), and 127 or 126 when the server found no such program or
//! one it cannot execute, as a shell does; `serve` is not a client and exits
//! [`FAILED_TO_START`] (1).

use std::io::{self, ErrorKind, Write};

/// Exit status of a client command when the client itself failed (as ssh's), among others
/// when its stdout cannot be written; and of `exec` when the server refused to run the
/// command (its 1 would be taken for the command's own status).
pub const CLIENT_FAILURE: u8 = 255;

/// Exit status of a usage error, as clap's.
pub const USAGE: u8 = 2;

/// Exit status of a client command when the server refused what it asked (an ERROR frame:
/// a wrong token, a missing file, a limit); not `exec`'s, which says 255 instead.
pub const SERVER_REFUSED: u8 = 1;

/// Exit status of `serve` when it cannot start or stops on an error (not a client, so not
/// the clients' convention: as daemons do).
pub const FAILED_TO_START: u8 = 1;

/// Why a command failed: its exit status and the line to print (none for a closed stdout).
pub struct Failure {
    /// The process's exit status.
    pub status: u8,
    /// The line for stderr, without the `monoreactor: ` that [`say`] puts before it.
    pub message: Option<String>,
}

impl Failure {
    /// The client itself failed: [`CLIENT_FAILURE`].
    pub fn own(message: String) -> Failure {
        Failure {
            status: CLIENT_FAILURE,
            message: Some(message),
        }
    }

    /// The server answered with an ERROR frame: [`SERVER_REFUSED`].
    pub fn refused(message: String) -> Failure {
        Failure {
            status: SERVER_REFUSED,
            message: Some(message),
        }
    }

    /// The command line asks for something that cannot work: [`USAGE`].
    pub fn usage(message: String) -> Failure {
        Failure {
            status: USAGE,
            message: Some(message),
        }
    }

    /// Whoever read our output went away (`| head -1`): end quietly with 141, as SIGPIPE's
    /// default action would have.
    pub fn reader_gone() -> Failure {
        Failure {
            status: 128 + libc::SIGPIPE as u8,
            message: None,
        }
    }
}

/// A failure said as a line alone is the client's own, [`CLIENT_FAILURE`]: a refusal by the
/// server must be said as one ([`Failure::refused`], `explain::failure`), and `serve`'s
/// failures are given their own status where it ends (`main`).
impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::own(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_string())
    }
}

/// Output that could not be put into JSON (which the formats here never cause: their keys
/// are strings and their numbers finite): a failure of the client, like any other output
/// that cannot be written.
impl From<serde_json::Error> for Failure {
    fn from(error: serde_json::Error) -> Failure {
        Failure::own(format!("cannot write the output as JSON: {error}"))
    }
}

/// Writes all of `text` to stdout, flushed; a failure as [`output_failure`] says: never
/// `println!`'s panic.
pub fn print_stdout(text: &str) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| output_failure(&error))
}

/// A write to stdout that failed. A closed stdout ends the command quietly (141, as SIGPIPE
/// would have); any other error (a full disk, `>/dev/full`) is a failure of the client,
/// [`CLIENT_FAILURE`], with one line.
pub fn output_failure(error: &io::Error) -> Failure {
    if error.kind() == ErrorKind::BrokenPipe {
        return Failure::reader_gone();
    }
    Failure::own(format!("cannot write the output: {error}"))
}

/// One `monoreactor: ...` line on stderr. A stderr that cannot be written (a terminal that
/// hung up) is ignored: there is nowhere else to report it, and `eprintln!` would panic.
pub fn say(message: &str) {
    let _ = writeln!(io::stderr(), "monoreactor: {}", without_os_error(message));
}

/// `message` without the ` (os error 2)` that Rust's `io::Error` puts after the system's
/// words: the number is for programmers, and cat, cp or ssh say `No such file or directory`
/// alone. Done here, in the one place every line goes out, because the errors come from
/// everywhere (the library, the TLS files, the token file).
fn without_os_error(message: &str) -> String {
    const MARK: &str = " (os error ";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(MARK) {
        let after = &rest[at + MARK.len()..];
        let digits = after.len() - after.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        out.push_str(&rest[..at]);
        if digits > 0 && after[digits..].starts_with(')') {
            rest = &after[digits + 1..];
        } else {
            out.push_str(MARK);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::without_os_error;

    #[test]
    fn the_os_error_number_is_left_out_and_nothing_else() {
        assert_eq!(
            without_os_error("cannot read x: No such file or directory (os error 2)"),
            "cannot read x: No such file or directory"
        );
        assert_eq!(
            without_os_error("a (os error 2); b (os error 13) c"),
            "a; b c"
        );
        assert_eq!(
            without_os_error("(os error x) (os error "),
            "(os error x) (os error "
        );
        assert_eq!(without_os_error("plain"), "plain");
    }
}
