//! Who may do what: the server's token, the access file's credentials, and what each may do.
//!
//! Without a token or an access file every connection may make every request the server
//! offers. With either, a connection that has not presented a credential in HELLO (or a client
//! certificate whose key an access file names) may only echo, with frames no larger than
//! [`Limits::pre_auth_max_frame`](crate::limits::Limits::pre_auth_max_frame). Exec needs a
//! credential: a server that runs commands for whoever connects is not offered.
//!
//! - The server's token (`--token-file`, `MONOREACTOR_TOKEN`) is one credential: the whole
//!   root, every file request, commands if `--exec`.
//! - An access file (`--access PATH`, [`Access::load`]) holds any number, each a [`Grant`]:
//!   a name, a token's BLAKE3 or a client certificate's key, a subtree of the root, read or
//!   write, which commands, and limits. Its format is in `file.rs`'s documentation and in
//!   docs/SECURITY.md, *Scoped access*.
//!
//! A connection keeps the grant it authenticated with ([`Authentication::Granted`]), so a
//! reload ([`Access::reloaded`]) changes only connections that authenticate after it.

mod file;
mod grant;

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

pub use file::TOKEN_HASH_PREFIX;
pub use grant::{CommandSlot, Credential, ExecRule, FilesRight, Grant, QuotaHold, Usage};

use crate::proto::message::{MAX_CREDENTIALS_LEN, credentials_match};
use crate::transport::KeyFingerprint;

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
    /// The server's token (`--token-file`, `MONOREACTOR_TOKEN`); `None` with no credentials
    /// either: every connection is trusted.
    pub token: Option<Token>,
    /// Whether the server runs commands at all: `--exec` (which is the server token's right to
    /// run them), or an access-file credential that may.
    pub exec: bool,
    /// The access file's credentials (`--access`), with the server's token among them when
    /// both are given; `None`: only the token counts, as before access files.
    pub credentials: Option<Arc<Credentials>>,
}

/// What HELLO's credentials (and the client's certificate) are worth
/// ([`Access::authenticate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// Authenticated. With an access file, as this grant; without (`None`), with the server's
    /// token or none configured: the whole root, every file request, commands per `--exec`.
    Granted(Option<Arc<Grant>>),
    /// No credentials, and none needed to echo: the connection may only echo.
    Anonymous,
    /// Credentials that match nothing: `AUTH_FAILED`, and the connection closes.
    Refused,
}

/// An access file's credentials, by what a client presents.
#[derive(Debug, Default)]
pub struct Credentials {
    /// Every grant, in the file's order (the server token's last).
    grants: Vec<Arc<Grant>>,
    by_token_hash: HashMap<[u8; 32], usize>,
    by_key: HashMap<KeyFingerprint, usize>,
    /// The grant of the server's token (`Access::token`), when there is one.
    server_token: Option<usize>,
}

impl PartialEq for Credentials {
    fn eq(&self, other: &Credentials) -> bool {
        self.grants == other.grants
    }
}

impl Eq for Credentials {}

impl Credentials {
    fn new(grants: Vec<Grant>) -> Credentials {
        let mut credentials = Credentials::default();
        for grant in grants {
            credentials.push(grant);
        }
        credentials
    }

    fn push(&mut self, grant: Grant) {
        let at = self.grants.len();
        match grant.credential {
            Credential::TokenHash(hash) => {
                self.by_token_hash.insert(hash, at);
            }
            Credential::Key(key) => {
                self.by_key.insert(key, at);
            }
            Credential::ServerToken => self.server_token = Some(at),
        }
        self.grants.push(Arc::new(grant));
    }

    /// Every grant, in the file's order.
    pub fn grants(&self) -> &[Arc<Grant>] {
        &self.grants
    }

    /// The grant named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Grant>> {
        self.grants.iter().find(|grant| grant.name == name)
    }

    fn by_credential(&self, credential: &Credential) -> Option<&Arc<Grant>> {
        self.grants
            .iter()
            .find(|grant| grant.credential == *credential)
    }
}

impl Access {
    /// Echo only, no token: the server's default.
    pub const ECHO_ONLY: Access = Access {
        token: None,
        exec: false,
        credentials: None,
    };

    /// Reads and validates an access file whole (`serve --access PATH`): its credentials, no
    /// server token ([`Access::with_token`] adds one). Any error is one line naming the file,
    /// the line and the entry. What a reload (SIGHUP) would call, then [`Access::reloaded`].
    pub fn load(path: &Path) -> Result<Access, String> {
        let bytes = crate::sys::reloadable::read_reloadable(
            path,
            crate::sys::reloadable::MAX_RELOADABLE_FILE,
        )
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| format!("cannot read {}: not UTF-8 text", path.display()))?;
        Access::parse(&text, &path.display().to_string())
    }

    /// An access file's text, validated whole; errors start with `origin`.
    pub fn parse(text: &str, origin: &str) -> Result<Access, String> {
        let credentials = Credentials::new(file::parse(text, origin)?);
        let exec = credentials.grants.iter().any(|grant| grant.exec.any());
        Ok(Access {
            token: None,
            exec,
            credentials: Some(Arc::new(credentials)),
        })
    }

    /// Adds the server's token, if any, which runs commands if `exec` (`--exec`). Beside an
    /// access file it is one more credential, named `token`: the whole root, every file
    /// request. `--exec` is that token's right alone; the file's credentials have their own.
    pub fn with_token(self, token: Option<Token>, exec: bool) -> Access {
        let Some(credentials) = self.credentials else {
            return Access {
                token,
                exec,
                credentials: None,
            };
        };
        let mut grants: Vec<Grant> = credentials
            .grants
            .iter()
            .filter(|grant| grant.credential != Credential::ServerToken)
            .map(|grant| clone_grant(grant))
            .collect();
        if token.is_some() {
            grants.push(Grant::full("token", Credential::ServerToken, exec));
        }
        let credentials = Credentials::new(grants);
        let exec = credentials.grants.iter().any(|grant| grant.exec.any());
        Access {
            token,
            exec,
            credentials: Some(Arc::new(credentials)),
        }
    }

    /// The rules of `new` (a freshly loaded access file), with this one's server token and
    /// with every credential that both know — the same token hash, the same key — keeping
    /// its counters (commands running, bytes stored), so a reload neither frees places that
    /// are taken nor resets a quota. Connections that authenticated before keep their grants.
    pub fn reloaded(&self, new: Access) -> Access {
        let token_exec = self
            .credentials
            .as_ref()
            .and_then(|old| old.by_credential(&Credential::ServerToken))
            .map_or(self.exec, |grant| grant.exec.any());
        let new = new.with_token(self.token.clone(), token_exec);
        let (Some(old), Some(fresh)) = (self.credentials.as_ref(), new.credentials.as_ref()) else {
            return new;
        };
        let grants = fresh
            .grants
            .iter()
            .map(|grant| {
                let mut grant = clone_grant(grant);
                if let Some(before) = old.by_credential(&grant.credential) {
                    grant.usage = Arc::clone(&before.usage);
                }
                grant
            })
            .collect();
        Access {
            credentials: Some(Arc::new(Credentials::new(grants))),
            ..new
        }
    }

    /// Whether any credential is needed: a token, or an access file.
    pub fn guarded(&self) -> bool {
        self.token.is_some() || self.credentials.is_some()
    }

    /// What HELLO's `credentials`, and the key of the client's verified certificate, are
    /// worth. Credentials in HELLO are decided by themselves: the server's token (compared in
    /// constant time), else a token whose BLAKE3 the access file holds; credentials that match
    /// neither are refused, whatever the certificate. Without credentials, a certificate key
    /// the access file names authenticates; else the connection may only echo.
    pub fn authenticate(
        &self,
        credentials: &[u8],
        client_key: Option<KeyFingerprint>,
    ) -> Authentication {
        let Some(file) = self.credentials.as_ref() else {
            return match &self.token {
                None => Authentication::Granted(None),
                Some(_) if credentials.is_empty() => Authentication::Anonymous,
                Some(token) if token.matches(credentials) => Authentication::Granted(None),
                Some(_) => Authentication::Refused,
            };
        };
        let granted = |at: usize| Authentication::Granted(Some(Arc::clone(&file.grants[at])));
        if !credentials.is_empty() {
            if let (Some(token), Some(at)) = (&self.token, file.server_token) {
                if token.matches(credentials) {
                    return granted(at);
                }
            }
            // A lookup by hash: what its timing could reveal is where a guess's BLAKE3 differs
            // from a stored hash, which says nothing about the token.
            let hash = *blake3::hash(credentials).as_bytes();
            return match file.by_token_hash.get(&hash) {
                Some(&at) => granted(at),
                None => Authentication::Refused,
            };
        }
        match client_key.and_then(|key| file.by_key.get(&key)) {
            Some(&at) => granted(at),
            None => Authentication::Anonymous,
        }
    }

    /// Whether HELLO credentials authenticate a connection: `Some(true)` if they match a
    /// credential or none is configured, `Some(false)` for a wrong one, `None` when one is
    /// configured and none was presented (the connection may then only echo).
    pub fn authenticates(&self, credentials: &[u8]) -> Option<bool> {
        match self.authenticate(credentials, None) {
            Authentication::Granted(_) => Some(true),
            Authentication::Refused => Some(false),
            Authentication::Anonymous => None,
        }
    }
}

/// A grant's rules again, with the same counters (a grant is shared, so it is rebuilt rather
/// than changed).
fn clone_grant(grant: &Grant) -> Grant {
    Grant {
        name: grant.name.clone(),
        credential: grant.credential,
        scope: grant.scope.clone(),
        files: grant.files,
        exec: grant.exec.clone(),
        max_commands: grant.max_commands,
        quota: grant.quota,
        usage: Arc::clone(&grant.usage),
    }
}

/// A new random token for `monoreactor access add`: 32 bytes from the kernel's random source,
/// as 64 hex digits (fits HELLO, any shell and any file).
pub fn generate_token() -> Result<String, String> {
    let mut bytes = [0; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut random| std::io::Read::read_exact(&mut random, &mut bytes))
        .map_err(|error| format!("/dev/urandom: {error}"))?;
    Ok(grant::hex(&bytes))
}

/// How the access file stores `token`: `blake3:` and the hex of its BLAKE3.
pub fn token_hash(token: &[u8]) -> String {
    format!(
        "{TOKEN_HASH_PREFIX}{}",
        grant::hex(blake3::hash(token).as_bytes())
    )
}

/// A credential entry for an access file, as `monoreactor access add` appends it.
#[derive(Clone, Debug)]
pub struct NewEntry {
    /// Its name.
    pub name: String,
    /// The token's hash ([`token_hash`]).
    pub token_hash: String,
    /// Its subtree, if not the whole root.
    pub root: Option<String>,
    /// What it may do with files.
    pub files: FilesRight,
    /// `exec = true`.
    pub exec_any: bool,
    /// Allowed argv prefixes (each one or more words); with `exec_any` false and none of
    /// these, `exec = false`.
    pub allow: Vec<Vec<String>>,
    /// Commands at once.
    pub max_commands: Option<u64>,
    /// Bytes it may store.
    pub quota: Option<u64>,
}

impl NewEntry {
    /// The `[[credential]]` table, as TOML text.
    pub fn to_toml(&self) -> String {
        let mut text = format!(
            "\n[[credential]]\nname = {}\ntoken = {}\n",
            file::toml_string(&self.name),
            file::toml_string(&self.token_hash)
        );
        if let Some(root) = &self.root {
            text += &format!("root = {}\n", file::toml_string(root));
        }
        text += &format!("files = \"{}\"\n", self.files.as_str());
        let exec = if self.exec_any {
            "true".to_string()
        } else if self.allow.is_empty() {
            "false".to_string()
        } else {
            let items: Vec<String> = self
                .allow
                .iter()
                .map(|prefix| match prefix.as_slice() {
                    [program] => file::toml_string(program),
                    words => {
                        let words: Vec<String> =
                            words.iter().map(|word| file::toml_string(word)).collect();
                        format!("[{}]", words.join(", "))
                    }
                })
                .collect();
            format!("[{}]", items.join(", "))
        };
        text += &format!("exec = {exec}\n");
        if let Some(max) = self.max_commands {
            text += &format!("max_commands = {max}\n");
        }
        if let Some(quota) = self.quota {
            text += &format!("quota = {quota}\n");
        }
        text
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
            credentials: None,
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

    const ALICE: &[u8] = b"alice-token-0123456789";
    const KEY: [u8; 32] = [7; 32];

    fn file(extra: &str) -> String {
        format!(
            "[[credential]]\nname = \"alice\"\ntoken = \"{}\"\nfiles = \"read\"\nmax_commands = 1\nexec = true\nquota = 100\n\n\
             [[credential]]\nname = \"laptop\"\nkey = \"{}\"\nfiles = \"write\"\n{extra}",
            token_hash(ALICE),
            KeyFingerprint(KEY)
        )
    }

    fn granted(auth: Authentication) -> Arc<Grant> {
        match auth {
            Authentication::Granted(Some(grant)) => grant,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    #[test]
    fn a_token_a_key_and_the_server_token_each_find_their_grant() {
        let server = Token::new(b"the-server-token-0123".to_vec()).unwrap();
        let access = Access::parse(&file(""), "f")
            .unwrap()
            .with_token(Some(server.clone()), false);
        assert!(
            access.exec,
            "alice may run commands, so the server runs them"
        );
        assert_eq!(granted(access.authenticate(ALICE, None)).name, "alice");
        let key = Some(KeyFingerprint(KEY));
        assert_eq!(granted(access.authenticate(b"", key)).name, "laptop");
        let token = granted(access.authenticate(server.as_bytes(), None));
        assert_eq!((token.name.as_str(), token.exec.any()), ("token", false));
        assert_eq!(access.authenticate(b"", None), Authentication::Anonymous);
        assert_eq!(
            access.authenticate(b"", Some(KeyFingerprint([8; 32]))),
            Authentication::Anonymous
        );
        assert_eq!(
            access.authenticate(b"wrong-token-0123456789", key),
            Authentication::Refused,
            "credentials in HELLO decide, whatever the certificate"
        );
        assert!(access.guarded());
    }

    #[test]
    fn a_reload_carries_the_counters_of_the_credentials_it_keeps() {
        let old = Access::parse(&file(""), "f").unwrap();
        let alice = granted(old.authenticate(ALICE, None));
        let running = alice.take_command().unwrap();
        alice.reserve(60, 0).unwrap().unwrap().commit();
        // The reload renames nothing, drops the laptop's key, adds bob; alice's rules change.
        let text = file("").replace("files = \"read\"", "files = \"write\"")
            + &format!(
                "\n[[credential]]\nname = \"bob\"\ntoken = \"{}\"\n",
                token_hash(b"bob-0123456789abcdef")
            );
        let new = old.reloaded(Access::parse(&text, "f").unwrap());
        let alice_now = granted(new.authenticate(ALICE, None));
        assert_eq!(
            alice_now.files,
            FilesRight::Write,
            "the new rules apply to new connections"
        );
        assert_eq!(
            alice.files,
            FilesRight::Read,
            "a live connection keeps its grant"
        );
        assert!(alice_now.shares_usage(&alice));
        assert_eq!((alice_now.commands(), alice_now.stored()), (1, 60));
        assert!(
            alice_now.take_command().is_err(),
            "max_commands still counts the one running"
        );
        drop(running);
        assert_eq!(
            alice_now.commands(),
            0,
            "given back through the old grant, seen by the new"
        );
        let bob = granted(new.authenticate(b"bob-0123456789abcdef", None));
        assert_eq!((bob.commands(), bob.stored()), (0, 0));
        // A changed identity is a new credential: its counters start at 0.
        let rekeyed = file("").replace(&token_hash(ALICE), &token_hash(b"alice-new-0123456789"));
        let after = new.reloaded(Access::parse(&rekeyed, "f").unwrap());
        let renewed = granted(after.authenticate(b"alice-new-0123456789", None));
        assert!(!renewed.shares_usage(&alice));
        assert_eq!(after.authenticate(ALICE, None), Authentication::Refused);
    }

    #[test]
    fn a_reload_keeps_the_server_token_and_its_exec() {
        let server = Token::new(b"the-server-token-0123".to_vec()).unwrap();
        let old = Access::parse("", "f")
            .unwrap()
            .with_token(Some(server.clone()), true);
        let new = old.reloaded(Access::parse(&file(""), "f").unwrap());
        let token = granted(new.authenticate(server.as_bytes(), None));
        assert!(token.exec.any());
        assert!(new.exec);
    }

    #[test]
    fn a_new_entry_is_written_as_the_file_reads_it() {
        let entry = NewEntry {
            name: "ci \"x\"".to_string(),
            token_hash: token_hash(b"t"),
            root: Some("builds".to_string()),
            files: FilesRight::Read,
            exec_any: false,
            allow: vec![
                vec!["make".to_string()],
                vec!["git".to_string(), "status".to_string()],
            ],
            max_commands: Some(2),
            quota: Some(10),
        };
        let access = Access::parse(&entry.to_toml(), "f");
        // A quote is not allowed in a name: the entry is refused as a whole.
        assert!(access.unwrap_err().contains("credential name"));
        let entry = NewEntry {
            name: "ci".to_string(),
            ..entry
        };
        let access = Access::parse(&entry.to_toml(), "f").unwrap();
        let grant = granted(access.authenticate(b"t", None));
        assert_eq!(grant.scope.as_deref(), Some("builds"));
        assert!(grant.exec.allows(&[b"git", b"status"]));
        assert_eq!((grant.max_commands, grant.quota), (Some(2), Some(10)));
    }
}
