//! The access file (`serve --access PATH`): TOML, one `[[credential]]` table per credential,
//! read whole and validated whole, or refused with one line naming the file, the line and the
//! entry.
//!
//! ```toml
//! [[credential]]
//! name = "ci"                      # in logs and refusals
//! token = "blake3:5f1c...64 hex"   # BLAKE3 of the token (`monoreactor access hash`), or:
//! # key = "9a0b...64 hex"          # SHA-256 of a client certificate's SubjectPublicKeyInfo
//! root = "builds"                  # the only tree it sees, beneath the server's root
//! files = "write"                  # "none" (the default) | "read" | "write"
//! exec = ["make", ["git", "status"]]  # false (the default) | true | argv prefixes
//! max_commands = 2                 # commands at once, across its connections
//! quota = 1_000_000_000            # bytes it may store (see `Usage`)
//! ```

use std::collections::HashSet;
use std::ops::Range;

use serde::Deserialize;

use super::grant::{Credential, ExecRule, FilesRight, Grant};
use crate::proto::path::check_relative;
use crate::transport::KeyFingerprint;

/// The prefix of a token's hash in the file.
pub const TOKEN_HASH_PREFIX: &str = "blake3:";

/// Longest credential name, in bytes: a name is for logs, not prose.
const MAX_NAME_LEN: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    credential: Vec<toml::Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    token: Option<String>,
    key: Option<String>,
    root: Option<String>,
    files: Option<String>,
    exec: Option<RawExec>,
    max_commands: Option<u64>,
    quota: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawExec {
    Switch(bool),
    List(Vec<RawArgv>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawArgv {
    Program(String),
    Prefix(Vec<String>),
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count()
        + 1
}

/// Parses and validates an access file's text; `origin` (its path) starts every error, which
/// is one line: `origin:LINE: what`, naming the entry where one is at fault.
pub(crate) fn parse(text: &str, origin: &str) -> Result<Vec<Grant>, String> {
    let document: Document = toml::from_str(text).map_err(|error| {
        let message = error.message().trim().replace('\n', " ");
        match error.span() {
            Some(span) => format!("{origin}:{}: {message}", line_of(text, span.start)),
            None => format!("{origin}: {message}"),
        }
    })?;
    let mut grants: Vec<(Grant, Range<usize>)> = Vec::with_capacity(document.credential.len());
    let mut names = HashSet::new();
    for spanned in document.credential {
        let span = spanned.span();
        let at = |what: String| format!("{origin}:{}: {what}", line_of(text, span.start));
        let entry = spanned.into_inner();
        let grant = validate(entry).map_err(at)?;
        if !names.insert(grant.name.clone()) {
            return Err(at(format!(
                "credential \"{}\": the name is already used by another credential",
                grant.name
            )));
        }
        if let Some((earlier, where_)) = grants
            .iter()
            .find(|(other, _)| other.credential == grant.credential)
        {
            return Err(at(format!(
                "credential \"{}\": the same {} as credential \"{}\" (line {})",
                grant.name,
                match grant.credential {
                    Credential::Key(_) => "key",
                    _ => "token",
                },
                earlier.name,
                line_of(text, where_.start)
            )));
        }
        grants.push((grant, span));
    }
    Ok(grants.into_iter().map(|(grant, _)| grant).collect())
}

/// One entry, checked: every error names it.
fn validate(entry: RawEntry) -> Result<Grant, String> {
    let name = entry.name;
    let named = |what: &str| format!("credential \"{name}\": {what}");
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.chars().any(|c| c.is_control() || c == '"')
    {
        return Err(format!(
            "credential name {name:?}: 1 to {MAX_NAME_LEN} bytes, no quote or control character"
        ));
    }
    let credential = match (entry.token, entry.key) {
        (Some(token), None) => Credential::TokenHash(parse_token_hash(&token).ok_or_else(|| {
            named(&format!(
                "token must be \"{TOKEN_HASH_PREFIX}\" and 64 hex digits, the token's BLAKE3 (monoreactor access hash prints it)"
            ))
        })?),
        (None, Some(key)) => {
            Credential::Key(KeyFingerprint::parse(&key).map_err(|error| named(&error))?)
        }
        (Some(_), Some(_)) => return Err(named("give token or key, not both")),
        (None, None) => {
            return Err(named(
                "no credential: give token = \"blake3:...\" or key = \"<SPKI SHA-256>\"",
            ));
        }
    };
    let scope = match entry.root.as_deref().map(|root| root.trim_end_matches('/')) {
        None | Some("") => None,
        Some(root) => {
            check_relative(root).map_err(|error| named(&format!("root {root:?}: {error}")))?;
            Some(root.to_string())
        }
    };
    let files = match entry.files.as_deref() {
        None | Some("none") => FilesRight::None,
        Some("read") => FilesRight::Read,
        Some("write") => FilesRight::Write,
        Some(other) => {
            return Err(named(&format!(
                "files = {other:?}: it is \"none\", \"read\" or \"write\""
            )));
        }
    };
    let exec = match entry.exec {
        None | Some(RawExec::Switch(false)) => ExecRule::Off,
        Some(RawExec::Switch(true)) => ExecRule::Any,
        Some(RawExec::List(list)) => {
            let mut prefixes = Vec::with_capacity(list.len());
            for item in list {
                let prefix = match item {
                    RawArgv::Program(program) => vec![program],
                    RawArgv::Prefix(prefix) => prefix,
                };
                let bad = prefix.first().is_none_or(String::is_empty)
                    || prefix.iter().any(|arg| arg.contains('\0'));
                if bad {
                    return Err(named(&format!(
                        "exec entry {prefix:?}: a program (or an argv prefix starting with one), not empty, no NUL"
                    )));
                }
                prefixes.push(
                    prefix
                        .into_iter()
                        .map(|arg| arg.into_bytes().into_boxed_slice())
                        .collect(),
                );
            }
            if prefixes.is_empty() {
                return Err(named("exec = []: write exec = false to allow no command"));
            }
            ExecRule::Allow(prefixes)
        }
    };
    let max_commands = match entry.max_commands {
        None => None,
        Some(0) => return Err(named("max_commands = 0: write exec = false instead")),
        Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
    };
    Ok(Grant {
        scope,
        files,
        exec,
        max_commands,
        quota: entry.quota,
        ..Grant::full(&name, credential, false)
    })
}

/// The 32 bytes of `blake3:<64 hex>`.
pub(crate) fn parse_token_hash(text: &str) -> Option<[u8; 32]> {
    let digits = text.strip_prefix(TOKEN_HASH_PREFIX)?.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut hash = [0; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(hash)
}

/// A TOML basic string: `"` and `\` escaped, control characters as `\uXXXX`.
pub(crate) fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "blake3:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const KEY: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn a_full_entry_parses() {
        let text = format!(
            "[[credential]]\nname = \"ci\"\ntoken = \"{HASH}\"\nroot = \"builds/\"\nfiles = \"read\"\n\
             exec = [\"make\", [\"git\", \"status\"]]\nmax_commands = 2\nquota = 1000\n\n\
             [[credential]]\nname = \"laptop\"\nkey = \"{KEY}\"\n"
        );
        let grants = parse(&text, "a.toml").unwrap();
        assert_eq!(grants.len(), 2);
        let ci = &grants[0];
        assert_eq!(ci.scope.as_deref(), Some("builds"));
        assert_eq!(ci.files, FilesRight::Read);
        assert!(ci.exec.allows(&[b"git", b"status"]));
        assert_eq!((ci.max_commands, ci.quota), (Some(2), Some(1000)));
        let laptop = &grants[1];
        assert_eq!(laptop.files, FilesRight::None, "least privilege by default");
        assert_eq!(laptop.exec, ExecRule::Off);
        assert_eq!(laptop.scope, None);
        assert!(matches!(laptop.credential, Credential::Key(_)));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let text = format!("[[credential]]\nname = \"ci\"\ntoken = \"{HASH}\"\ncolour = \"red\"\n");
        let error = parse(&text, "a.toml").unwrap_err();
        assert!(error.starts_with("a.toml:4: "), "{error}");
        assert!(error.contains("colour"), "{error}");
        assert!(!error.contains('\n'), "{error}");
        let top = parse("verbose = true\n", "a.toml").unwrap_err();
        assert!(
            top.starts_with("a.toml:1: ") && top.contains("verbose"),
            "{top}"
        );
    }

    #[test]
    fn bad_entries_are_named() {
        let cases = [
            ("token = \"blake3:1234\"", "token must be"),
            ("token = \"sha256:00\"", "token must be"),
            (&*format!("token = \"{HASH}\"\nkey = \"{KEY}\""), "not both"),
            ("files = \"all\"", "no credential"),
            (
                &*format!("token = \"{HASH}\"\nfiles = \"all\""),
                "files = \"all\"",
            ),
            (
                &*format!("token = \"{HASH}\"\nroot = \"../x\""),
                "root \"../x\"",
            ),
            (
                &*format!("token = \"{HASH}\"\nroot = \"/etc\""),
                "root \"/etc\"",
            ),
            (&*format!("token = \"{HASH}\"\nexec = []"), "exec = []"),
            (&*format!("token = \"{HASH}\"\nexec = [[]]"), "exec entry"),
            (
                &*format!("token = \"{HASH}\"\nmax_commands = 0"),
                "max_commands = 0",
            ),
        ];
        for (body, expected) in cases {
            let text = format!("\n[[credential]]\nname = \"bad\"\n{body}\n");
            let error = parse(&text, "f").unwrap_err();
            assert!(error.contains(expected), "{body}: {error}");
            assert!(error.starts_with("f:"), "{error}");
            assert!(error.contains("\"bad\""), "names the entry: {error}");
        }
    }

    #[test]
    fn a_duplicate_credential_or_name_is_refused() {
        let text = format!(
            "[[credential]]\nname = \"a\"\ntoken = \"{HASH}\"\n[[credential]]\nname = \"b\"\ntoken = \"{HASH}\"\n"
        );
        let error = parse(&text, "f").unwrap_err();
        assert!(
            error.contains("\"b\": the same token as credential \"a\" (line 1)"),
            "{error}"
        );
        let text = format!(
            "[[credential]]\nname = \"a\"\ntoken = \"{HASH}\"\n[[credential]]\nname = \"a\"\nkey = \"{KEY}\"\n"
        );
        assert!(parse(&text, "f").unwrap_err().contains("already used"));
    }

    #[test]
    fn names_and_strings_are_written_back_as_toml() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
