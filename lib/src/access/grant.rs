//! What one credential may do ([`Grant`]), and what it is using now ([`Usage`]): the commands
//! it runs and the bytes it has stored, counted across all its connections.
//!
//! A connection keeps the `Arc<Grant>` it authenticated with for its whole life, so a reload of
//! the access file never changes what a live connection may do. The counters are not in the
//! grant but behind it (`Arc<Usage>`), keyed by the credential's identity: a reload that keeps
//! a credential (same token hash, same key) hands the new grant the old counters
//! ([`Access::reloaded`](super::Access::reloaded)), so a reload neither forgets the commands
//! running nor resets a quota.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::throttle::LogThrottle;
use crate::timer::Tick;
use crate::transport::KeyFingerprint;

/// Who a credential is: what a client presents, as the server stores it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credential {
    /// A token, stored only as its BLAKE3 (`token = "blake3:<hex>"`).
    TokenHash([u8; 32]),
    /// A client certificate's key (`key = "<SPKI SHA-256 hex>"`), matched against the key the
    /// TLS layer verified ([`Peer::client_key`](crate::transport::Peer::client_key)).
    Key(KeyFingerprint),
    /// The server's own token (`--token-file` or `MONOREACTOR_TOKEN`), beside an access file.
    ServerToken,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::TokenHash(hash) => write!(f, "TokenHash(blake3:{})", hex(hash)),
            Credential::Key(key) => write!(f, "Key({key})"),
            Credential::ServerToken => f.write_str("ServerToken"),
        }
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// What a credential may do with files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilesRight {
    /// No file request at all.
    None,
    /// GET, LIST, STAT.
    Read,
    /// Everything: also PUT, DELETE, MKDIR.
    Write,
}

impl FilesRight {
    /// The word the access file uses.
    pub fn as_str(self) -> &'static str {
        match self {
            FilesRight::None => "none",
            FilesRight::Read => "read",
            FilesRight::Write => "write",
        }
    }
}

/// Which commands a credential may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecRule {
    /// None (`exec = false`).
    Off,
    /// Any (`exec = true`).
    Any,
    /// Those whose argv starts with one of these prefixes, element by element, exactly
    /// (`exec = ["ls", ["git", "status"]]`: a string is a prefix of one element, argv\[0\]).
    Allow(Vec<Vec<Box<[u8]>>>),
}

impl ExecRule {
    /// Whether `argv` — what the server will run, as parsed from the EXEC — is allowed. Never
    /// a string comparison of a command line: `sh -c ls` is argv `["sh", "-c", "ls"]`, which
    /// an allowed `ls` does not start, and `/bin/ls` is not `ls`.
    pub fn allows(&self, argv: &[&[u8]]) -> bool {
        match self {
            ExecRule::Off => false,
            ExecRule::Any => true,
            ExecRule::Allow(prefixes) => prefixes.iter().any(|prefix| {
                !prefix.is_empty()
                    && argv.len() >= prefix.len()
                    && prefix.iter().zip(argv).all(|(want, got)| **want == **got)
            }),
        }
    }

    /// Whether any command may run.
    pub fn any(&self) -> bool {
        !matches!(self, ExecRule::Off)
    }
}

/// What one credential may do: its name (for logs and refusals), where it sees files, which
/// requests it may make and its limits. Immutable; its running counts are its [`Usage`].
pub struct Grant {
    /// The name in the access file, shown in logs and in refusals.
    pub name: String,
    /// Who it is.
    pub credential: Credential,
    /// The directory beneath the server's root that is the only tree it sees (no leading or
    /// trailing `/`, checked like a request's path); `None`: the whole root.
    pub scope: Option<String>,
    /// What it may do with files.
    pub files: FilesRight,
    /// Which commands it may run.
    pub exec: ExecRule,
    /// Commands it may run at once, across all its connections; `None`: only the server's
    /// limits apply.
    pub max_commands: Option<usize>,
    /// Bytes it may store ([`Grant::stored`] counts them); `None`: no quota.
    pub quota: Option<u64>,
    /// Its counters, shared with the grant that replaces it at a reload.
    pub(crate) usage: Arc<Usage>,
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("name", &self.name)
            .field("credential", &self.credential)
            .field("scope", &self.scope)
            .field("files", &self.files)
            .field("exec", &self.exec)
            .field("max_commands", &self.max_commands)
            .field("quota", &self.quota)
            .field("usage", &self.usage)
            .finish()
    }
}

/// Two grants are the same rules; their counters do not count.
impl PartialEq for Grant {
    fn eq(&self, other: &Grant) -> bool {
        self.name == other.name
            && self.credential == other.credential
            && self.scope == other.scope
            && self.files == other.files
            && self.exec == other.exec
            && self.max_commands == other.max_commands
            && self.quota == other.quota
    }
}

impl Eq for Grant {}

/// A credential's running counts, across its connections (and across reloads, for as long as
/// it stays in the access file). Per server process: with `--workers N` each worker counts its
/// own.
#[derive(Debug, Default)]
pub struct Usage {
    /// Commands running now.
    commands: AtomicUsize,
    /// Bytes stored: committed PUTs' sizes, plus the PUTs admitted and not yet ended, less
    /// what its DELETEs and overwrites freed (never below 0).
    stored: AtomicU64,
    /// One log line a second for its refusals.
    refusals: Mutex<LogThrottle>,
}

impl Grant {
    /// The whole root, every file request, commands per `exec`, no limits: the server's token
    /// beside an access file.
    pub fn full(name: &str, credential: Credential, exec: bool) -> Grant {
        Grant {
            name: name.to_string(),
            credential,
            scope: None,
            files: FilesRight::Write,
            exec: if exec { ExecRule::Any } else { ExecRule::Off },
            max_commands: None,
            quota: None,
            usage: Arc::default(),
        }
    }

    /// Commands it runs now.
    pub fn commands(&self) -> usize {
        self.usage.commands.load(Ordering::Relaxed)
    }

    /// Bytes counted against its quota now ([`Usage`]).
    pub fn stored(&self) -> u64 {
        self.usage.stored.load(Ordering::Relaxed)
    }

    /// Whether both grants count in the same [`Usage`] (a reload carried it over).
    pub fn shares_usage(&self, other: &Grant) -> bool {
        Arc::ptr_eq(&self.usage, &other.usage)
    }

    /// A request's path (checked, relative) as a path beneath the server's root: inside the
    /// scope. The empty path, the scope's own root, is the scope.
    pub fn scoped<'p>(&self, path: &'p str) -> Cow<'p, str> {
        match &self.scope {
            None => Cow::Borrowed(path),
            Some(scope) if path.is_empty() => Cow::Owned(scope.clone()),
            Some(scope) => Cow::Owned(format!("{scope}/{path}")),
        }
    }

    /// A text for the client (an error naming a path the server resolved inside the scope)
    /// with the scope taken out, so the client sees its own paths and never where the scope
    /// lies: `scope/x` becomes `x`, the scope itself `/` (as the root is shown). Only whole
    /// path starts count: after the text's start, a space, a quote or a bracket.
    pub fn shown<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let Some(scope) = self.scope.as_deref() else {
            return Cow::Borrowed(text);
        };
        if !text.contains(scope) {
            return Cow::Borrowed(text);
        }
        let starts_path = |before: Option<char>| {
            before.is_none_or(|c| matches!(c, ' ' | '"' | '\'' | '`' | '(' | '['))
        };
        let ends_path = |after: Option<char>| {
            after.is_none_or(|c| matches!(c, ':' | '"' | '\'' | '`' | ')' | ']' | ' ' | ','))
        };
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        while let Some(found) = text[at..].find(scope) {
            let start = at + found;
            let end = start + scope.len();
            let before = text[..start].chars().next_back();
            let after = text[end..].chars().next();
            out.push_str(&text[at..start]);
            if starts_path(before) && after == Some('/') {
                at = end + 1; // `scope/x` is `x`
            } else if starts_path(before) && ends_path(after) {
                out.push('/');
                at = end;
            } else {
                out.push_str(scope);
                at = end;
            }
        }
        out.push_str(&text[at..]);
        Cow::Owned(out)
    }

    /// A place for one more command, if its `max_commands` allows; given back when the
    /// returned slot is dropped (the command's stream ends, however it ends).
    pub fn take_command(&self) -> Result<CommandSlot, String> {
        let max = self.max_commands.unwrap_or(usize::MAX);
        self.usage
            .commands
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |running| {
                (running < max).then_some(running + 1)
            })
            .map(|_| CommandSlot {
                usage: Arc::clone(&self.usage),
            })
            .map_err(|running| {
                format!(
                    "credential \"{}\" may run {max} commands at once (max_commands) and runs {running}",
                    self.name
                )
            })
    }

    /// Reserves `size` bytes of its quota for a PUT that would replace a file of `replaces`
    /// bytes (0 if none): refused if what it has stored plus `size` is over the quota. The
    /// reservation is given back when the hold is dropped, unless it was committed
    /// ([`QuotaHold::commit`]). `None` without a quota: nothing to count.
    pub fn reserve(&self, size: u64, replaces: u64) -> Result<Option<QuotaHold>, String> {
        let Some(quota) = self.quota else {
            return Ok(None);
        };
        self.usage
            .stored
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |stored| {
                stored.checked_add(size).filter(|&total| total <= quota)
            })
            .map(|_| {
                Some(QuotaHold {
                    usage: Arc::clone(&self.usage),
                    size,
                    replaces,
                    committed: false,
                })
            })
            .map_err(|stored| {
                format!(
                    "credential \"{}\" may store {quota} bytes (quota) and has stored {stored}; this PUT of {size} bytes would exceed it",
                    self.name
                )
            })
    }

    /// Gives `bytes` back to its quota (a file it deleted), never below 0.
    pub fn credit(&self, bytes: u64) {
        if self.quota.is_some() {
            sub_saturating(&self.usage.stored, bytes);
        }
    }

    /// Whether a refusal may be logged now (one line a second per credential), with the
    /// number held back since the last line.
    pub fn log_refusal(&self, now: Tick) -> Option<u64> {
        self.usage
            .refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allow(now)
    }
}

fn sub_saturating(counter: &AtomicU64, bytes: u64) {
    // `fetch_update` with a closure that always returns `Some` cannot fail.
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |stored| {
        Some(stored.saturating_sub(bytes))
    });
}

/// One running command's place in its credential's `max_commands`: given back when dropped.
#[derive(Debug)]
pub struct CommandSlot {
    usage: Arc<Usage>,
}

impl Drop for CommandSlot {
    fn drop(&mut self) {
        self.usage.commands.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A PUT's bytes reserved in its credential's quota: given back when dropped, unless the PUT
/// was committed ([`QuotaHold::commit`]).
#[derive(Debug)]
pub struct QuotaHold {
    usage: Arc<Usage>,
    size: u64,
    replaces: u64,
    committed: bool,
}

impl QuotaHold {
    /// The PUT is stored: its bytes stay counted, and those of the file it replaced go.
    pub fn commit(mut self) {
        self.committed = true;
        sub_saturating(&self.usage.stored, self.replaces);
    }
}

impl Drop for QuotaHold {
    fn drop(&mut self) {
        if !self.committed {
            sub_saturating(&self.usage.stored, self.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(scope: &str) -> Grant {
        Grant {
            scope: Some(scope.to_string()),
            ..Grant::full("t", Credential::ServerToken, false)
        }
    }

    #[test]
    fn argv_prefixes_match_element_by_element() {
        let rule = ExecRule::Allow(vec![
            vec![b"ls".to_vec().into()],
            vec![b"git".to_vec().into(), b"status".to_vec().into()],
        ]);
        assert!(rule.allows(&[b"ls"]));
        assert!(rule.allows(&[b"ls", b"-la"]));
        assert!(rule.allows(&[b"git", b"status", b"-s"]));
        assert!(!rule.allows(&[b"git", b"push"]));
        assert!(!rule.allows(&[b"git"]));
        assert!(!rule.allows(&[b"/bin/ls"]));
        assert!(!rule.allows(&[b"sh", b"-c", b"ls"]));
        assert!(!rule.allows(&[b"ls ", b"x"]));
        assert!(!rule.allows(&[]));
        assert!(!ExecRule::Off.allows(&[b"ls"]));
        assert!(ExecRule::Any.allows(&[b"anything"]));
    }

    #[test]
    fn paths_map_into_the_scope_and_texts_come_back_out() {
        let grant = scoped("team/a");
        assert_eq!(grant.scoped(""), "team/a");
        assert_eq!(grant.scoped("x/y"), "team/a/x/y");
        assert_eq!(grant.shown("team/a/x: no such file"), "x: no such file");
        assert_eq!(grant.shown("team/a: not a directory"), "/: not a directory");
        assert_eq!(
            grant.shown("working directory \"team/a/w\": gone"),
            "working directory \"w\": gone"
        );
        assert_eq!(
            grant.shown("working directory \"team/a\": gone"),
            "working directory \"/\": gone"
        );
        assert_eq!(grant.shown("steam/ab and team/ab"), "steam/ab and team/ab");
        let whole = Grant::full("t", Credential::ServerToken, false);
        assert_eq!(whole.scoped("x"), "x");
        assert_eq!(whole.shown("x: y"), "x: y");
    }

    #[test]
    fn commands_are_counted_and_given_back_when_their_slot_drops() {
        let grant = Grant {
            max_commands: Some(2),
            ..Grant::full("t", Credential::ServerToken, true)
        };
        let one = grant.take_command().unwrap();
        let two = grant.take_command().unwrap();
        let refused = grant.take_command().unwrap_err();
        assert!(
            refused.contains("\"t\"") && refused.contains("max_commands"),
            "{refused}"
        );
        drop(one);
        assert_eq!(grant.commands(), 1);
        let _three = grant.take_command().unwrap();
        drop(two);
        assert_eq!(grant.commands(), 1);
    }

    #[test]
    fn a_quota_reserves_commits_gives_back_and_credits() {
        let grant = Grant {
            quota: Some(100),
            ..Grant::full("t", Credential::ServerToken, false)
        };
        let hold = grant.reserve(60, 0).unwrap().unwrap();
        assert_eq!(grant.stored(), 60);
        assert!(grant.reserve(41, 0).is_err(), "60 + 41 > 100");
        hold.commit();
        assert_eq!(grant.stored(), 60);
        let failed = grant.reserve(40, 0).unwrap().unwrap();
        drop(failed);
        assert_eq!(grant.stored(), 60, "a failed PUT gives its bytes back");
        // An overwrite of a 50-byte file by 30 bytes: 60 + 30 - 50.
        grant.reserve(30, 50).unwrap().unwrap().commit();
        assert_eq!(grant.stored(), 40);
        grant.credit(1000);
        assert_eq!(grant.stored(), 0, "never below 0");
        let unlimited = Grant::full("u", Credential::ServerToken, false);
        assert!(unlimited.reserve(u64::MAX, 0).unwrap().is_none());
    }
}
