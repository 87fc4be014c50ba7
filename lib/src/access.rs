//! Who may do what: the server's token, and whether it runs commands.
//!
//! Without a token every connection may make every request the server offers. With one, a
//! connection that has not presented it in HELLO may only echo, with frames no larger than
//! [`Limits::pre_auth_max_frame`](crate::limits::Limits::pre_auth_max_frame). Exec needs a
//! token: a server that runs commands for whoever connects is not offered.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::proto::message::{MAX_CREDENTIALS_LEN, credentials_match};

/// The environment variable that may hold the token (a `--token-file` wins over it).
pub const TOKEN_ENV: &str = "MONOREACTOR_TOKEN";

/// The shared secret a client presents in HELLO's credentials. Its `Debug` output never shows
/// the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Box<[u8]>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({} bytes)", self.0.len())
    }
}

impl Token {
    /// Shortest token accepted, bytes: 16 random bytes (or 22 base64 characters) are beyond
    /// guessing; shorter ones invite it.
    pub const MIN_LEN: usize = 16;

    /// A token from its bytes; refused if shorter than [`Token::MIN_LEN`], longer than HELLO's
    /// credentials can carry, or containing a line break (a sign of a badly cut file).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Token, String> {
        let bytes = bytes.into();
        if bytes.len() < Self::MIN_LEN {
            return Err(format!(
                "the token is {} bytes; it must be at least {} (try: head -c 32 /dev/urandom | base64)",
                bytes.len(),
                Self::MIN_LEN
            ));
        }
        if bytes.len() > MAX_CREDENTIALS_LEN {
            return Err(format!(
                "the token is {} bytes; at most {MAX_CREDENTIALS_LEN} fit in HELLO",
                bytes.len()
            ));
        }
        if bytes.iter().any(|byte| matches!(byte, b'\n' | b'\r')) {
            return Err("the token contains a line break".to_string());
        }
        Ok(Token(bytes.into_boxed_slice()))
    }

    /// Reads a token file: its content, less one trailing newline. A file that other users can
    /// read is accepted with a warning returned beside the token, as ssh warns about keys.
    pub fn from_file(path: &Path) -> Result<(Token, Option<String>), String> {
        let bytes =
            fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let warning = match fs::metadata(path) {
            Ok(meta) if meta.mode() & 0o077 != 0 => Some(format!(
                "token file {} is readable by other users (mode {:o}); chmod 600 it",
                path.display(),
                meta.mode() & 0o777
            )),
            _ => None,
        };
        let token = Token::new(strip_newline(bytes))
            .map_err(|error| format!("{}: {error}", path.display()))?;
        Ok((token, warning))
    }

    /// The token from [`TOKEN_ENV`], if it is set.
    pub fn from_env() -> Option<Result<Token, String>> {
        let value = std::env::var_os(TOKEN_ENV)?;
        use std::os::unix::ffi::OsStrExt;
        Some(
            Token::new(strip_newline(value.as_bytes().to_vec()))
                .map_err(|error| format!("{TOKEN_ENV}: {error}")),
        )
    }

    /// The token's bytes, for a client's HELLO.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether `presented` is this token, in constant time ([`credentials_match`]).
    pub fn matches(&self, presented: &[u8]) -> bool {
        credentials_match(presented, &self.0)
    }
}

fn strip_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    bytes
}

/// The access rules a server runs with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// The token that authenticates a connection; `None`: every connection is trusted.
    pub token: Option<Token>,
    /// Whether EXEC requests are served (only ever with a token).
    pub exec: bool,
}

impl Access {
    /// Echo only, no token: the server's default.
    pub const ECHO_ONLY: Access = Access {
        token: None,
        exec: false,
    };

    /// Whether HELLO credentials authenticate a connection: `Some(true)` if they match the
    /// token or there is no token to match, `Some(false)` for a wrong token, `None` when a
    /// token is configured and none was presented (the connection may then only echo).
    pub fn authenticates(&self, credentials: &[u8]) -> Option<bool> {
        match &self.token {
            None => Some(true),
            Some(_) if credentials.is_empty() => None,
            Some(token) => Some(token.matches(credentials)),
        }
    }
}

/// Reads the token the way `serve` and the clients do: `--token-file` if given, else
/// [`TOKEN_ENV`], else none. The warning, if any, is for the caller to print.
pub fn load_token(file: Option<&Path>) -> Result<(Option<Token>, Option<String>), String> {
    if let Some(path) = file {
        let (token, warning) = Token::from_file(path)?;
        return Ok((Some(token), warning));
    }
    match Token::from_env() {
        Some(result) => Ok((Some(result?), None)),
        None => Ok((None, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_multiline_and_oversize_tokens_are_refused() {
        assert!(Token::new(b"short".to_vec()).is_err());
        assert!(Token::new(b"0123456789abcdef\nx".to_vec()).is_err());
        assert!(Token::new(vec![b'a'; MAX_CREDENTIALS_LEN + 1]).is_err());
        assert!(Token::new(b"0123456789abcdef".to_vec()).is_ok());
    }

    #[test]
    fn debug_output_hides_the_token() {
        let token = Token::new(b"0123456789abcdef".to_vec()).unwrap();
        assert_eq!(format!("{token:?}"), "Token(16 bytes)");
    }

    #[test]
    fn authentication_with_and_without_a_token() {
        let open = Access::ECHO_ONLY;
        assert_eq!(open.authenticates(b""), Some(true));
        assert_eq!(open.authenticates(b"anything"), Some(true));
        let guarded = Access {
            token: Some(Token::new(b"0123456789abcdef".to_vec()).unwrap()),
            exec: true,
        };
        assert_eq!(
            guarded.authenticates(b""),
            None,
            "no credentials: echo only"
        );
        assert_eq!(guarded.authenticates(b"0123456789abcdef"), Some(true));
        assert_eq!(guarded.authenticates(b"0123456789abcdeX"), Some(false));
    }

    #[test]
    fn a_token_file_loses_one_trailing_newline() {
        assert_eq!(strip_newline(b"abc\r\n".to_vec()), b"abc");
        assert_eq!(strip_newline(b"abc\n\n".to_vec()), b"abc\n");
        assert_eq!(strip_newline(b"abc".to_vec()), b"abc");
    }
}
