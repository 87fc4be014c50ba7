//! The token a command presents or a server demands: from `--token-file`, else from
//! [`TOKEN_ENV`](monoreactor::TOKEN_ENV), else none; and, for a client, where it came from ([`TokenSource`]), which
//! is what the hint after a refused login points at ([`crate::explain`]).

use std::path::{Path, PathBuf};

use monoreactor::{Token, load_token};

/// A token that could not be loaded, named by where it came from: the file's errors carry
/// its path, the environment's carry the variable's name.
pub fn token_error(file: Option<&Path>, error: String) -> String {
    match file {
        Some(_) => format!("--token-file: {error}"),
        None => error,
    }
}

/// Where a client's token came from, for the hint after AUTH_FAILED or UNAUTHENTICATED.
pub enum TokenSource {
    /// `--token-file PATH`.
    File(PathBuf),
    /// [`TOKEN_ENV`](monoreactor::TOKEN_ENV).
    Env,
    /// Neither: the client presents no token.
    None,
}

/// The token for a client command: `--token-file`, else
/// [`TOKEN_ENV`](monoreactor::TOKEN_ENV), else none.
pub fn client_token(file: Option<PathBuf>) -> Result<(Option<Token>, TokenSource), String> {
    let (token, warning) =
        load_token(file.as_deref()).map_err(|error| token_error(file.as_deref(), error))?;
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    let source = match (&token, file) {
        (None, _) => TokenSource::None,
        (Some(_), Some(path)) => TokenSource::File(path),
        (Some(_), None) => TokenSource::Env,
    };
    Ok((token, source))
}
