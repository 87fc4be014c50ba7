//! A client error in the words of the command line: the server's refusal or our own failure
//! in one line, with a hint where the answer alone would leave a new user guessing (which
//! token was sent, that a larger frame needs one).

use monoreactor::TOKEN_ENV;
use monoreactor::client::ClientError;
use monoreactor::proto::ErrorCode;

use crate::failure::Failure;
use crate::token::TokenSource;

/// A failed request as a command ends with it: its line from [`explain`], with exit status 1
/// if the server refused (an ERROR frame), else 255, the client's or the connection's
/// failure; a closed stdout ends quietly (141).
pub fn failure(error: &ClientError, source: &TokenSource, authenticated: Option<bool>) -> Failure {
    if error.is_broken_pipe() {
        return Failure::reader_gone();
    }
    let message = explain(error, source, authenticated);
    match error.server_code() {
        Some(_) => Failure::refused(message),
        None => Failure::own(message),
    }
}

/// A client error in one line, with a hint where the server's answer alone would leave a new
/// user guessing. `authenticated` is what HELLO_OK said, once known.
pub fn explain(error: &ClientError, source: &TokenSource, authenticated: Option<bool>) -> String {
    let hint = match (error.server_code(), source) {
        (Some(ErrorCode::AuthFailed), TokenSource::File(path)) => format!(
            "; check --token-file {} (it wins over {TOKEN_ENV})",
            path.display()
        ),
        (Some(ErrorCode::AuthFailed), _) => {
            format!("; check {TOKEN_ENV}, or pass --token-file PATH")
        }
        (Some(ErrorCode::Unauthenticated), TokenSource::None) => {
            format!("; no token was given: pass --token-file PATH or set {TOKEN_ENV}")
        }
        _ if authenticated == Some(false)
            && matches!(
                (error, error.server_code()),
                (ClientError::TooLarge { .. }, _) | (_, Some(ErrorCode::FrameTooLarge))
            ) =>
        {
            format!(
                " before authentication; with the server's token (--token-file PATH or {TOKEN_ENV}) it accepts more"
            )
        }
        _ => String::new(),
    };
    format!("{error}{hint}")
}
