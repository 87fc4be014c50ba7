//! Remote globs: `*`, `?` and `[...]` in any component of a remote path, expanded on the
//! client by LISTing the directories they walk through (the server knows no patterns).
//!
//! Two parts: a sans-IO matcher for one path component ([`matches()`], [`has_magic`],
//! [`unescape`]), and [`expand`], which walks a [`FileClient`] down a pattern's components.
//!
//! The syntax is the shell's (POSIX `fnmatch` on one component, without `/` ever matching):
//! - `*` matches any run of characters, `?` one character (`**` is `*`: no recursion);
//! - `[abc]`, `[a-z]` one character of the set, `[!a]` or `[^a]` one not in it; a `]` first in
//!   the set is one of its members (`[]]`, `[!]]`), a `-` first or last is itself; a `[` with
//!   no closing `]` is a literal `[`; POSIX classes (`[[:digit:]]`, `[[:alpha:]_]`) are known
//!   by their names, an unknown one matches nothing;
//! - `\x` is `x` itself, so `\*` names a file called `*`;
//! - a name beginning with `.` is matched only by a pattern component that begins with a
//!   literal `.`, as in sh: `*` does not list `.hidden` (nor the server's partial uploads).

use crate::proto::ErrorCode;
use crate::proto::files::FileKind;
use crate::proto::path::MAX_PATH_LEN;

use super::ClientError;
use super::files::{FileClient, OwnedDirEntry, normalize_remote, sort_entries};

/// One path a pattern matched on the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteMatch {
    /// The request path (normalized, relative to the server's root, `/`-separated).
    pub path: String,
    /// What it is (a symlink is reported as one, never followed).
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// The start of the text of the error [`expand`] returns when nothing matched; see
/// [`is_no_match`].
pub const NO_MATCH: &str = "no match for ";

/// Whether `error` is [`expand`]'s "nothing matched" (a [`ErrorCode::NotFound`], as the
/// server would answer for a missing path, so a command's exit status is the same).
pub fn is_no_match(error: &ClientError) -> bool {
    matches!(error, ClientError::Server { code: ErrorCode::NotFound, text } if text.starts_with(NO_MATCH))
}

/// Whether `pattern` has a wildcard in any `/`-separated component: an unescaped `*` or `?`,
/// or a `[` that opens a set closed in the same component. A path without one names one path
/// (after [`unescape`]) and needs no LIST.
pub fn has_magic(pattern: &str) -> bool {
    pattern.split('/').any(component_has_magic)
}

/// [`has_magic`] for one component.
fn component_has_magic(component: &str) -> bool {
    let chars: Vec<char> = component.chars().collect();
    let mut at = 0;
    while at < chars.len() {
        match chars[at] {
            '\\' => at += 2,
            '*' | '?' => return true,
            '[' if parse_set(&chars, at).is_some() => return true,
            _ => at += 1,
        }
    }
    false
}

/// `pattern` with its escapes taken off (`\*` → `*`, `\\` → `\`; a trailing lone `\` stays):
/// the name a pattern without [`has_magic`] stands for.
pub fn unescape(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(chars.next().unwrap_or('\\'));
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `name`, as a server listed it, can be one component of a request path: not
/// empty, `.` or `..`, without `/` or NUL. A walk down a tree (`rm -r`, `ls -R`, a pattern)
/// follows no other name: a broken or hostile server listing `..` must not send it round in
/// circles.
pub fn is_one_component(name: &str) -> bool {
    !matches!(name, "" | "." | "..") && !name.contains(['/', '\0'])
}

/// Refuses, as the server would, a path too long for a request ([`MAX_PATH_LEN`]): a walk
/// down a tree stops there rather than go on as deep as a server's answers lead it.
pub fn check_path_len(path: &str) -> Result<(), ClientError> {
    if path.len() > MAX_PATH_LEN {
        return Err(ClientError::Server {
            code: ErrorCode::BadRequest,
            text: format!(
                "the path is {} bytes; at most {MAX_PATH_LEN} fit in a request",
                path.len()
            ),
        });
    }
    Ok(())
}

/// Whether `text`, a remote path or pattern as typed, ends with `/` or `/.`: then it names a
/// directory (as in sh and coreutils: `rm file/` is refused, `*/` matches directories only).
pub fn names_a_directory(text: &str) -> bool {
    matches!(text.rsplit('/').next(), Some("" | ".")) && text.contains('/')
}

/// Whether `name` (one path component) matches `pattern` (one component), by the rules in
/// the [module documentation](self).
pub fn matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    // A leading `.` must be matched by a literal `.`: not by `*`, `?` or a set.
    if name.first() == Some(&'.') {
        let literal_dot = match pattern.first() {
            Some('.') => true,
            Some('\\') => pattern.get(1) == Some(&'.'),
            _ => false,
        };
        if !literal_dot {
            return false;
        }
    }
    match_from(&pattern, &name)
}

/// The matcher proper: iterative, with one saved position for the last `*` (the classic
/// linear backtracking, so no pattern can make it exponential).
fn match_from(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    // Where to resume after the last `*`: the pattern after it, the name position it is at.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match pattern.get(p) {
            Some('*') => {
                star = Some((p + 1, n));
                p += 1;
                continue;
            }
            Some('?') => Some(p + 1),
            Some('[') => match parse_set(pattern, p) {
                Some(set) => set.contains(name[n]).then_some(set.end),
                None => (name[n] == '[').then_some(p + 1),
            },
            Some('\\') => match pattern.get(p + 1) {
                Some(&escaped) => (name[n] == escaped).then_some(p + 2),
                None => (name[n] == '\\').then_some(p + 1),
            },
            Some(&literal) => (name[n] == literal).then_some(p + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                p = next;
                n += 1;
            }
            // Let the last `*` take one more character and try again from there.
            (None, Some((after, taken))) => {
                p = after;
                n = taken + 1;
                star = Some((after, taken + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// A bracket expression: its members and where the pattern goes on after it.
struct Set {
    negated: bool,
    /// Inclusive ranges; a single character is `(c, c)`.
    ranges: Vec<(char, char)>,
    /// Character classes (`[:digit:]`), as their tests.
    classes: Vec<fn(char) -> bool>,
    /// The index just past the closing `]`.
    end: usize,
}

impl Set {
    fn contains(&self, c: char) -> bool {
        let inside = self.ranges.iter().any(|&(low, high)| low <= c && c <= high)
            || self.classes.iter().any(|class| class(c));
        inside != self.negated
    }
}

/// The POSIX class `[:name:]` inside a set, as a test; an unknown name matches nothing (as
/// fnmatch's pattern with one matches nothing).
fn class(name: &[char]) -> fn(char) -> bool {
    let name: String = name.iter().collect();
    match name.as_str() {
        "alpha" => char::is_alphabetic,
        "digit" => |c: char| c.is_ascii_digit(),
        "alnum" => char::is_alphanumeric,
        "upper" => char::is_uppercase,
        "lower" => char::is_lowercase,
        "space" => char::is_whitespace,
        "blank" => |c: char| c == ' ' || c == '\t',
        "punct" => |c: char| c.is_ascii_punctuation(),
        "xdigit" => |c: char| c.is_ascii_hexdigit(),
        "cntrl" => char::is_control,
        "print" => |c: char| !c.is_control(),
        "graph" => |c: char| !c.is_control() && !c.is_whitespace(),
        _ => |_: char| false,
    }
}

/// The set that the `[` at `open` starts, or `None` if it has no closing `]` (then the `[`
/// is a literal).
fn parse_set(pattern: &[char], open: usize) -> Option<Set> {
    let mut at = open + 1;
    let negated = matches!(pattern.get(at), Some('!' | '^'));
    if negated {
        at += 1;
    }
    let mut ranges = Vec::new();
    let mut classes = Vec::new();
    let mut first = true;
    loop {
        let mut c = *pattern.get(at)?;
        if c == ']' && !first {
            return Some(Set {
                negated,
                ranges,
                classes,
                end: at + 1,
            });
        }
        first = false;
        // `[:digit:]`: without this `[[:digit:]]*` was the set `[:digt` and a literal `]`,
        // so `rm '[[:digit:]]*'` matched what no shell would.
        if c == '[' && pattern.get(at + 1) == Some(&':') {
            let name_at = at + 2;
            let close = (name_at..pattern.len().saturating_sub(1))
                .find(|&i| pattern[i] == ':' && pattern[i + 1] == ']');
            if let Some(close) = close {
                classes.push(class(&pattern[name_at..close]));
                at = close + 2;
                continue;
            }
        }
        if c == '\\' {
            at += 1;
            c = *pattern.get(at)?;
        }
        at += 1;
        // `a-z`; a `-` before the closing `]` is itself.
        if pattern.get(at) == Some(&'-') && pattern.get(at + 1).is_some_and(|&next| next != ']') {
            let mut high = pattern[at + 1];
            at += 2;
            if high == '\\' {
                high = *pattern.get(at)?;
                at += 1;
            }
            ranges.push((c, high));
        } else {
            ranges.push((c, c));
        }
    }
}

/// One component of a parsed pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Component {
    /// A name, its escapes taken off.
    Literal(String),
    /// A component with a wildcard, as typed.
    Wild(String),
}

/// A remote pattern, checked and split into components: what [`expand_pattern`] walks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    components: Vec<Component>,
    /// It ends with `/` (or `/.`): as in sh, only directories match.
    dirs_only: bool,
}

impl Pattern {
    /// Parses a remote pattern as typed. Empty and `.` components are dropped as in
    /// [`normalize_remote`]; the literal parts are checked by its rules (no absolute path, no
    /// `..`, no reserved name), so a mistake costs no connection. The error is one line for
    /// the command line.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.starts_with('/') {
            return Err(format!(
                "`{text}` is absolute; remote paths are relative to the server's root (`.` is the root)"
            ));
        }
        let mut components = Vec::new();
        for part in text.split('/') {
            if part.is_empty() || part == "." {
                continue;
            }
            if component_has_magic(part) {
                // Matching costs up to the name's length times the component's: a component
                // of the 128 KiB a shell lets through took 10 ms per name (a minute for a
                // directory of 6,000). No name is longer than a path, nor need a pattern be.
                if part.len() > MAX_PATH_LEN {
                    return Err(format!(
                        "a pattern component is {} bytes; at most {MAX_PATH_LEN}",
                        part.len()
                    ));
                }
                components.push(Component::Wild(part.to_string()));
            } else {
                let name = unescape(part);
                if name.contains('/') {
                    return Err(format!("`{text}`: a name cannot contain `/`"));
                }
                normalize_remote(&name).map_err(|error| format!("`{text}`: {error}"))?;
                components.push(Component::Literal(name));
            }
        }
        // `*/` names directories only in sh; without this, `rm -r 'build*/'` would remove
        // the file `build.log` too.
        let dirs_only = !components.is_empty() && names_a_directory(text);
        Ok(Pattern {
            text: text.to_string(),
            components,
            dirs_only,
        })
    }

    /// The pattern as typed.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether it ends with `/` (or `/.`), so that only directories match.
    pub fn dirs_only(&self) -> bool {
        self.dirs_only
    }

    /// Whether any component has a wildcard.
    pub fn has_magic(&self) -> bool {
        self.components
            .iter()
            .any(|component| matches!(component, Component::Wild(_)))
    }

    /// The request path it names when it has no wildcard (`""` for the root).
    pub fn literal_path(&self) -> Option<String> {
        let mut names = Vec::with_capacity(self.components.len());
        for component in &self.components {
            match component {
                Component::Literal(name) => names.push(name.as_str()),
                Component::Wild(_) => return None,
            }
        }
        Some(names.join("/"))
    }
}

/// Expands `pattern` on the server: [`Pattern::parse`] then [`expand_pattern`]. A pattern
/// that does not parse is refused as the server would refuse the path
/// ([`ErrorCode::BadRequest`]); a command line should call [`Pattern::parse`] itself first, to
/// report a usage error before connecting.
pub fn expand(client: &mut FileClient, pattern: &str) -> Result<Vec<RemoteMatch>, ClientError> {
    let parsed = Pattern::parse(pattern).map_err(|text| ClientError::Server {
        code: ErrorCode::BadRequest,
        text,
    })?;
    expand_pattern(client, &parsed)
}

/// Every path on the server that `pattern` matches, in the shell's order (component by
/// component, each directory's names in byte order).
///
/// A pattern without wildcards is one STAT: its path, or the server's error (NOT_FOUND...;
/// NOT_DIRECTORY if it ends with `/` and is something else). Otherwise each wildcard
/// component LISTs the directories matched so far (a directory that is gone, is not one or
/// is a symlink is skipped, as sh skips a file); a literal component after a wildcard is
/// checked by the next LIST, or by a STAT if it is the last one. A pattern ending with `/`
/// matches directories only. When nothing matches the error is [`ErrorCode::NotFound`] with
/// a text starting with [`NO_MATCH`] ([`is_no_match`]). Other failures (the connection, a
/// refusal of the literal part before the first wildcard other than NOT_FOUND or
/// NOT_DIRECTORY) end the walk.
pub fn expand_pattern(
    client: &mut FileClient,
    pattern: &Pattern,
) -> Result<Vec<RemoteMatch>, ClientError> {
    if let Some(path) = pattern.literal_path() {
        let info = client.stat(&path)?;
        if pattern.dirs_only && info.kind != FileKind::Directory {
            return Err(ClientError::Server {
                code: ErrorCode::NotDirectory,
                text: format!("`{}`: not a directory", pattern.as_str()),
            });
        }
        return Ok(vec![RemoteMatch {
            path,
            kind: info.kind,
            size: info.size,
            mtime_ns: info.mtime_ns,
        }]);
    }
    // The matches so far: their paths and, once a LIST has seen them, what they are.
    let mut found: Vec<(String, Option<RemoteMatch>)> = vec![(String::new(), None)];
    let last = pattern.components.len().saturating_sub(1);
    // Whether the paths in `found` came through a wildcard: then a symlink among them (the
    // server's OUTSIDE_ROOT) is skipped like a file; before, it is the operand's own error.
    let mut crossed_wild = false;
    for (index, component) in pattern.components.iter().enumerate() {
        let mut next = Vec::new();
        for (dir, _) in &found {
            match component {
                Component::Literal(name) => next.push((join(dir, name), None)),
                Component::Wild(wild) => {
                    let listed = check_path_len(dir).and_then(|()| client.list(dir));
                    let mut entries = match listed {
                        Ok(entries) => entries,
                        Err(error) if skippable(&error, crossed_wild) => continue,
                        Err(error) => return Err(error),
                    };
                    sort_entries(&mut entries);
                    // Only a directory can have a next component (symlinks are never
                    // followed by the server), or match a pattern ending with `/`.
                    let any_kind = index == last && !pattern.dirs_only;
                    for entry in entries {
                        if is_one_component(&entry.name)
                            && matches(wild, &entry.name)
                            && (any_kind || entry.kind == FileKind::Directory)
                        {
                            let path = join(dir, &entry.name);
                            next.push((path.clone(), Some(described(path, &entry))));
                        }
                    }
                }
            }
        }
        crossed_wild = crossed_wild || matches!(component, Component::Wild(_));
        found = next;
        if found.is_empty() {
            break;
        }
    }
    let mut matched = Vec::with_capacity(found.len());
    for (path, seen) in found {
        match seen {
            Some(entry) => matched.push(entry),
            // A literal last component: does it exist?
            None => match client.stat(&path) {
                Ok(info) if pattern.dirs_only && info.kind != FileKind::Directory => {}
                Ok(info) => matched.push(RemoteMatch {
                    path,
                    kind: info.kind,
                    size: info.size,
                    mtime_ns: info.mtime_ns,
                }),
                Err(error) if skippable(&error, crossed_wild) => {}
                Err(error) => return Err(error),
            },
        }
    }
    if matched.is_empty() {
        return Err(ClientError::Server {
            code: ErrorCode::NotFound,
            text: format!("{NO_MATCH}`{}`", pattern.as_str()),
        });
    }
    Ok(matched)
}

/// A refusal that means "not there" for a path a pattern led to: it is skipped. Past a
/// wildcard that includes a symlink where a directory was wanted (OUTSIDE_ROOT), which one
/// matched name must not make the whole pattern fail.
fn skippable(error: &ClientError, crossed_wild: bool) -> bool {
    match error.server_code() {
        Some(ErrorCode::NotFound | ErrorCode::NotDirectory) => true,
        Some(ErrorCode::OutsideRoot) => crossed_wild,
        _ => false,
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

fn described(path: String, entry: &OwnedDirEntry) -> RemoteMatch {
    RemoteMatch {
        path,
        kind: entry.kind,
        size: entry.size,
        mtime_ns: entry.mtime_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_and_question_marks() {
        assert!(matches("*", "anything"));
        assert!(matches("*", ""));
        assert!(matches("*.gz", "a.gz"));
        assert!(!matches("*.gz", ".gz.gz"));
        assert!(matches("*.gz", "a.b.gz"));
        assert!(!matches("*.gz", "a.gzip"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(matches("a*b*c", "abc"));
        assert!(!matches("a*b*c", "acb"));
        assert!(matches("**", "x"));
        assert!(matches("?", "é"));
        assert!(!matches("?", ""));
        assert!(!matches("?", "ab"));
        assert!(matches("a?c", "abc"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
        assert!(!matches("exactly", "exact"));
        // Many stars against a long non-match stays linear.
        let name = "a".repeat(10_000);
        assert!(!matches(&format!("{}b", "*a".repeat(50)), &name));
    }

    #[test]
    fn leading_dots_need_a_literal_dot() {
        assert!(!matches("*", ".hidden"));
        assert!(!matches("?hidden", ".hidden"));
        assert!(!matches("[.]hidden", ".hidden"));
        assert!(!matches(
            "*partial*",
            ".monoreactor-partial-0000000000000001"
        ));
        assert!(matches(".*", ".hidden"));
        assert!(matches("\\.h*", ".hidden"));
        assert!(matches("a.*", "a.b"), "only a leading dot is special");
        assert!(matches("*.b", "a.b"));
    }

    #[test]
    fn sets_ranges_and_negation() {
        assert!(matches("[abc]", "b"));
        assert!(!matches("[abc]", "d"));
        assert!(matches("[a-c]x", "bx"));
        assert!(!matches("[a-c]x", "dx"));
        assert!(matches("[!a]", "b"));
        assert!(!matches("[!a]", "a"));
        assert!(matches("[^a]", "b"));
        assert!(!matches("[^a]", "a"));
        assert!(matches("[]]", "]"));
        assert!(!matches("[]]", "a"));
        assert!(matches("[!]]", "a"));
        assert!(!matches("[!]]", "]"));
        assert!(matches("[]a]", "a"));
        assert!(matches("[a-]", "-"));
        assert!(matches("[-a]", "-"));
        assert!(!matches("[a-]", "b"));
        assert!(matches("[0-9][0-9]", "42"));
        assert!(matches("[\\]]", "]"));
        assert!(matches("[a\\-z]", "-"));
        assert!(!matches("[a\\-z]", "b"));
        assert!(matches("[é]", "é"));
    }

    #[test]
    fn posix_character_classes() {
        assert!(matches("[[:digit:]]*", "1a"));
        assert!(!matches("[[:digit:]]*", "a1"));
        assert!(
            !matches("[[:digit:]]*", ":]"),
            "no longer a set of `[:digt` and a `]`"
        );
        assert!(matches("[![:digit:]]", "x"));
        assert!(!matches("[![:digit:]]", "7"));
        assert!(matches("[[:alpha:]_][[:alnum:]]", "_9"));
        assert!(matches("[[:upper:][:digit:]]", "Q"));
        assert!(matches("[[:upper:][:digit:]]", "4"));
        assert!(!matches("[[:upper:][:digit:]]", "q"));
        assert!(matches("[[:space:]]", " "));
        assert!(matches("[[:xdigit:]]", "f"));
        assert!(!matches("[[:xdigit:]]", "g"));
        assert!(matches("[[:punct:]]", "-"));
        assert!(
            !matches("[[:nonsense:]]", "n"),
            "an unknown class matches nothing"
        );
        assert!(has_magic("[[:digit:]]"));
        // Not a class: `[:` without `:]` is two members.
        assert!(matches("[[:a]", ":"));
    }

    #[test]
    fn an_unterminated_bracket_is_literal() {
        assert!(matches("[", "["));
        assert!(matches("a[b", "a[b"));
        assert!(!matches("a[b", "ab"));
        assert!(matches("[!", "[!"));
        assert!(
            matches("[]", "[]"),
            "`]` first is a member, so `[]` is unterminated"
        );
        assert!(matches("*[", "x["));
        assert!(!has_magic("["));
        assert!(!has_magic("a[b"));
        assert!(!has_magic("[]"));
        assert!(has_magic("[]]"));
        assert!(has_magic("[ab]"));
        assert!(!has_magic("[a/b]"), "a set does not span components");
        assert!(has_magic("logs/*.gz"));
    }

    #[test]
    fn escapes_make_wildcards_literal() {
        assert!(!has_magic("\\*"));
        assert!(!has_magic("a\\?b\\[c]"));
        assert!(has_magic("\\\\*"));
        assert!(has_magic("*"));
        assert!(has_magic("a?"));
        assert!(!has_magic("plain/name.txt"));
        assert!(matches("\\*", "*"));
        assert!(!matches("\\*", "x"));
        assert!(matches("a\\?", "a?"));
        assert!(!matches("a\\?", "ab"));
        assert!(matches("x\\", "x\\"), "a trailing backslash is itself");
        assert_eq!(unescape("a\\*b\\\\c\\"), "a*b\\c\\");
        assert_eq!(unescape("plain"), "plain");
    }

    #[test]
    fn patterns_parse_into_literal_and_wild_components() {
        let pattern = Pattern::parse("./logs//*.gz").expect("parses");
        assert!(pattern.has_magic());
        assert_eq!(pattern.literal_path(), None);
        assert_eq!(
            pattern.components,
            vec![
                Component::Literal("logs".into()),
                Component::Wild("*.gz".into())
            ]
        );
        let literal = Pattern::parse("a/\\*b/").expect("parses");
        assert!(!literal.has_magic());
        assert_eq!(literal.literal_path().as_deref(), Some("a/*b"));
        assert_eq!(
            Pattern::parse(".").expect("root").literal_path().as_deref(),
            Some("")
        );
        assert!(literal.dirs_only(), "its STAT must find a directory");
        assert!(Pattern::parse("*/").expect("parses").dirs_only());
        assert!(Pattern::parse("a/*/.").expect("parses").dirs_only());
        assert!(!Pattern::parse("a/*").expect("parses").dirs_only());
        assert!(!Pattern::parse("./").expect("root").dirs_only());
        assert!(names_a_directory("a/") && names_a_directory("a/.") && names_a_directory("./"));
        assert!(!names_a_directory("a") && !names_a_directory(".") && !names_a_directory("a/.b"));
        assert!(Pattern::parse(&format!("*{}", "a".repeat(MAX_PATH_LEN - 1))).is_ok());
        assert!(Pattern::parse(&format!("*{}", "a".repeat(MAX_PATH_LEN))).is_err());
        assert!(Pattern::parse("/etc/*").is_err());
        assert!(is_one_component("a") && is_one_component("...") && is_one_component(".a"));
        for name in ["", ".", "..", "a/b", "a\0"] {
            assert!(!is_one_component(name), "{name:?}");
        }
        assert!(check_path_len(&"a".repeat(MAX_PATH_LEN)).is_ok());
        assert!(check_path_len(&"a".repeat(MAX_PATH_LEN + 1)).is_err());
        assert!(Pattern::parse("a/../*").is_err());
        assert!(Pattern::parse("*/..").is_err());
    }

    #[test]
    fn no_match_errors_are_recognised() {
        let error = ClientError::Server {
            code: ErrorCode::NotFound,
            text: format!("{NO_MATCH}`x*`"),
        };
        assert!(is_no_match(&error));
        let server = ClientError::Server {
            code: ErrorCode::NotFound,
            text: "x".into(),
        };
        assert!(!is_no_match(&server));
    }
}
