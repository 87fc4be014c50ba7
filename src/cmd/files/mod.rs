//! The file commands, `get`, `put`, `ls`, `stat`, `rm` and `mkdir`: the command line over
//! [`monoreactor::client::files`], one module each (`rm` and `mkdir` share [`paths`]). What
//! they have in common is here: the server flags, the connection with what its errors need
//! for their hints ([`Session`]), and the exit statuses: 1 when the server refused, 255 when
//! this client failed, 2 for a usage error.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use monoreactor::DEFAULT_FRAMED_ADDR;
use monoreactor::client::ClientError;
use monoreactor::client::files::FileClient;
use monoreactor::client::glob;
use monoreactor::proto::SessionFlags;

use crate::args::{Secs, ServerAddr, TlsArgs};
use crate::explain::explain;
use crate::failure::{CLIENT_FAILURE, Failure};
use crate::token::{TokenSource, client_token};

/// How long the file commands wait to connect and for HELLO_OK, without --timeout (each
/// later answer: the library's [`files::IO_TIMEOUT`](monoreactor::client::files::IO_TIMEOUT)).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit status when the server refused or failed the request (an ERROR frame).
const SERVER_REFUSED: u8 = 1;

/// The `after_help` of a file command: its own text, then the conventions they share.
macro_rules! file_help {
    ($text:literal) => {
        concat!(
            $text,
            "\n\n",
            "Remote paths are relative to the server's --root (`.` is the root) and \
             `/`-separated;\nsymlinks on the server are never followed.\n\n",
            "Exit status: 0 on success; 1 if the server refused or failed the request (not \
             found,\nalready exists, no space, ...); 2 for a usage error; 255 if this client \
             failed (cannot\nconnect, the connection broke, a local file error, a stdout \
             that cannot be written,\na download that failed verification). One line on \
             stderr says why.\n\n",
            "The token comes from --token-file, else from $MONOREACTOR_TOKEN."
        )
    };
}

pub mod format;
pub mod get;
pub mod ls;
pub mod paths;
mod progress;
pub mod put;
pub mod stat;

/// Where the server is and how to authenticate: the flags every file command takes.
#[derive(Args)]
pub struct ServerArgs {
    /// Server address (framed protocol), HOST:PORT, or tls://HOST:PORT for TLS.
    #[arg(long, value_name = "ADDR", default_value_t = ServerAddr::from(DEFAULT_FRAMED_ADDR))]
    addr: ServerAddr,
    /// File holding the server's token [default: $MONOREACTOR_TOKEN].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// How long to wait for the server: to connect, and then for each answer [default: 10 s
    /// to connect, 120 s for each answer].
    #[arg(long, value_name = "DURATION")]
    timeout: Option<Secs>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// A connection and what [`explain`] needs to add hints to its errors.
struct Session {
    client: FileClient,
    source: TokenSource,
    authenticated: Option<bool>,
}

impl Session {
    /// Connects and says HELLO, with the token from the flags or the environment.
    fn open(server: ServerArgs) -> Result<Session, Failure> {
        let (token, source) = client_token(server.token_file).map_err(Failure::own)?;
        let target = server.tls.target(&server.addr).map_err(Failure::own)?;
        let wait = server.timeout.map(|Secs(wait)| wait);
        let mut client =
            FileClient::connect(target, token.as_ref(), wait.unwrap_or(CONNECT_TIMEOUT))
                .map_err(|error| failure(&error, &source, None))?;
        if let Some(wait) = wait {
            client
                .set_timeout(Some(wait))
                .map_err(|error| failure(&error, &source, None))?;
        }
        let authenticated = Some(
            client
                .hello_ok()
                .flags
                .contains(SessionFlags::AUTHENTICATED),
        );
        Ok(Session {
            client,
            source,
            authenticated,
        })
    }

    /// A failed request on this connection, as [`failure`] says.
    fn fail(&self, error: &ClientError) -> Failure {
        failure(error, &self.source, self.authenticated)
    }
}

/// A failed request's exit status and line: 1 for the server's ERROR, 255 for our own
/// failures, nothing at all for a closed stdout.
fn failure(error: &ClientError, source: &TokenSource, authenticated: Option<bool>) -> Failure {
    if error.is_broken_pipe() {
        return Failure::reader_gone();
    }
    // A remote glob that matched nothing: the client's finding, in its own words (not
    // "server error"), with the exit status of the server's NOT_FOUND.
    if let ClientError::Server { text, .. } = error {
        if glob::is_no_match(error) {
            return Failure {
                status: SERVER_REFUSED,
                message: Some(text.clone()),
            };
        }
    }
    Failure {
        status: if error.server_code().is_some() {
            SERVER_REFUSED
        } else {
            CLIENT_FAILURE
        },
        message: Some(explain(error, source, authenticated)),
    }
}
