//! `monoreactor echo`: one framed echo request, its reply printed. The smallest check that a
//! server is there and speaks the protocol.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use monoreactor::DEFAULT_FRAMED_ADDR;
use monoreactor::Token;
use monoreactor::client::{Client, ClientError};
use monoreactor::proto::SessionFlags;

use crate::args::{Secs, ServerAddr, TlsArgs};
use crate::explain::{explain, failure};
use crate::failure::{Failure, print_stdout};
use crate::token::client_token;

/// The flags of `echo`.
#[derive(Args)]
pub struct EchoArgs {
    /// Server address (framed protocol), HOST:PORT, or tls://HOST:PORT for TLS.
    #[arg(long, value_name = "ADDR", default_value_t = ServerAddr::from(DEFAULT_FRAMED_ADDR))]
    addr: ServerAddr,
    #[command(flatten)]
    tls: TlsArgs,
    /// How long to wait for the server: to connect, and for each answer (500ms, 2s, 1m; a
    /// bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value_t = Secs(Duration::from_secs(5)))]
    timeout: Secs,
    /// File holding the server's token, for texts above the small pre-authentication frame
    /// limit [default: $MONOREACTOR_TOKEN].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Text to send; several words are joined with spaces.
    #[arg(required = true, value_name = "TEXT")]
    text: Vec<String>,
}

/// Sends the text, prints the reply and a newline.
pub fn run(args: EchoArgs) -> Result<(), Failure> {
    let text = args.text.join(" ");
    let (token, source) = client_token(args.token_file)?;
    let target = args.tls.target(&args.addr)?;
    let credentials = token.as_ref().map_or(&[][..], Token::as_bytes);
    let (mut client, ok) = Client::connect_with(target, credentials, args.timeout.0)
        .map_err(|error| failure(&error, &source, None))?;
    let authenticated = ok.flags.contains(SessionFlags::AUTHENTICATED);
    if text.len() > ok.max_payload_len as usize {
        // The server's own limit, which it would refuse the request for: said as its refusal.
        let error = ClientError::TooLarge {
            len: text.len(),
            max: ok.max_payload_len,
        };
        return Err(Failure::refused(explain(
            &error,
            &source,
            Some(authenticated),
        )));
    }
    let reply = client
        .echo(text.as_bytes())
        .map_err(|error| failure(&error, &source, Some(authenticated)))?;
    print_stdout(&format!("{}\n", String::from_utf8_lossy(&reply)))
}
