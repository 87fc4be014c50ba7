//! `monoreactor ls`: directories on the server, in columns or as JSON ([`format`](mod@super::format)),
//! as ls shows them: a PATH that is not a directory is shown as one entry, several PATHs
//! (or a remote glob's matches) as the files first and then one section per directory, `-R`
//! every directory beneath as well.

use clap::{ArgAction, Args};
use monoreactor::client::ClientError;
use monoreactor::client::files::{self, OwnedDirEntry};
use monoreactor::client::glob::{self, Pattern};
use monoreactor::proto::ErrorCode;
use monoreactor::proto::files::FileKind;

use super::format::{self, Listed, Style};
use super::{SERVER_REFUSED, ServerArgs, Session};
use crate::failure::{Failure, print_stdout, say};

/// What `ls --help` says after the flags.
const HELP: &str = file_help!(
    "Output: one line per entry, sorted by name: its kind (- file, d directory, l symlink,
u partial upload, ? other), its size in bytes (-h: 1.0K, 23M, powers of 1024 as ls -h), its
modification time (UTC, YYYY-MM-DD HH:MM; -l: in the local time zone, TZ honoured, as ls -l
shows it: `Dec  7 21:02`, or `Dec  7  2025` when older than six months) and its name (control
characters escaped). A PATH that is not a directory is shown as one entry. With several
PATHs the files come first, then each directory under a `PATH:` line, as ls does; -R lists
every directory beneath too, the same way.

With --json: one JSON array of {\"name\", \"kind\" (file, directory, symlink, other, partial
upload), \"size\", \"mtime_ns\", \"path\"} objects, mtime_ns being nanoseconds since the Unix
epoch and path the entry's path from the server's root.

A PATH may hold wildcards in any component: *, ?, [abc], [a-z], [!a], [[:digit:]]
(quote them from the local shell: ls 'logs/*.gz'). They are matched here, against LISTs
of the server's directories; * and ? do not match a leading dot. \\* stands for a literal
*. A pattern ending with / matches directories only; ** is * (nothing matches across a
/). A pattern that matches nothing is an error (exit status 1)."
);

/// The flags of `ls`.
#[derive(Args)]
#[command(after_help = HELP, disable_help_flag = true)]
pub struct LsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Times in the local time zone, as ls -l shows them.
    #[arg(short = 'l')]
    long: bool,
    /// Every directory beneath as well, each under a `PATH:` line.
    #[arg(short = 'R', long = "recursive")]
    recursive: bool,
    /// Sizes in powers of 1024 (1.0K, 23M), as ls -h.
    #[arg(short = 'h', long = "human-readable")]
    human: bool,
    /// One JSON array instead of columns.
    #[arg(long)]
    json: bool,
    /// Print help (-h is --human-readable, as in ls).
    #[arg(long, action = ArgAction::Help)]
    help: Option<bool>,
    /// Paths or patterns on the server [default: the root].
    #[arg(value_name = "PATH")]
    paths: Vec<String>,
}

/// One operand as typed: a path (and whether it was typed as a directory, with a trailing
/// `/`), or a pattern to expand on the server.
enum Operand {
    Path { path: String, directory: bool },
    Glob(Pattern),
}

/// A directory to list: its request path and how its section names it.
struct Dir {
    path: String,
    shown: String,
    /// Its entries when they are already known (the LIST that found it was a directory).
    entries: Option<Vec<OwnedDirEntry>>,
}

/// What the operands came to: the paths that are not directories (shown as entries named by
/// their path), then the directories.
#[derive(Default)]
struct Found {
    files: Vec<OwnedDirEntry>,
    dirs: Vec<Dir>,
    /// How many operands (or patterns) were refused: they count as operands for the
    /// `PATH:` headers, as in ls (`ls dir missing` heads `dir`'s section).
    refused: usize,
}

/// Lists the operands as ls does.
pub fn run(args: LsArgs) -> Result<(), Failure> {
    let texts = if args.paths.is_empty() {
        vec![".".to_string()]
    } else {
        args.paths.clone()
    };
    let operands = texts
        .iter()
        .map(|text| parse_operand(text))
        .collect::<Result<Vec<Operand>, String>>()
        .map_err(Failure::usage)?;
    let mut session = Session::open(args.server)?;
    let mut found = Found::default();
    for operand in &operands {
        resolve(&mut session, operand, &mut found)?;
    }
    found.files.sort_by(|a, b| a.name.cmp(&b.name));
    found.dirs.sort_by(|a, b| a.path.cmp(&b.path));

    let style = Style {
        local_now: args.long.then(now_s),
        human: args.human,
    };
    let headers = args.recursive || found.files.len() + found.dirs.len() + found.refused > 1;
    let mut refused = found.refused > 0;
    let mut json = Vec::new();
    let mut printed = false;
    if !found.files.is_empty() {
        if args.json {
            json.extend(found.files.iter().map(|entry| Listed {
                path: entry.name.clone(),
                entry: entry.clone(),
            }));
        } else {
            print_stdout(&format::listing(&found.files, style))?;
            printed = true;
        }
    }
    // Depth first, in name order: the stack holds the next directory on top.
    let mut stack: Vec<Dir> = found.dirs.into_iter().rev().collect();
    while let Some(dir) = stack.pop() {
        let mut entries = match dir.entries {
            Some(entries) => entries,
            // No deeper than a request can name: a server's tree cannot lead -R on forever.
            None => match glob::check_path_len(&dir.path)
                .and_then(|()| session.client.list(&dir.path))
            {
                Ok(entries) => entries,
                Err(error) => {
                    refused = true;
                    report(&session, &dir.shown, &error)?;
                    continue;
                }
            },
        };
        files::sort_entries(&mut entries);
        if args.recursive {
            let subdirs = entries
                .iter()
                // Not `..` or the like from a broken server, which would go round in circles.
                .filter(|entry| {
                    entry.kind == FileKind::Directory && glob::is_one_component(&entry.name)
                })
                .map(|entry| Dir {
                    path: join(&dir.path, &entry.name),
                    shown: join(&dir.shown, &entry.name),
                    entries: None,
                });
            let at = stack.len();
            stack.extend(subdirs);
            stack[at..].reverse();
        }
        if args.json {
            json.extend(entries.into_iter().map(|entry| Listed {
                path: join(&dir.path, &entry.name),
                entry,
            }));
            continue;
        }
        let mut section = String::new();
        if printed {
            section.push('\n');
        }
        if headers {
            section.push_str(&format!("{}:\n", format::display_name(&dir.shown)));
        }
        section.push_str(&format::listing(&entries, style));
        print_stdout(&section)?;
        printed = printed || !section.is_empty();
    }
    if args.json {
        print_stdout(&format::listing_json(&json)?)?;
    }
    if refused {
        return Err(Failure {
            status: SERVER_REFUSED,
            message: None,
        });
    }
    Ok(())
}

/// An operand as typed → a request path, or a pattern when it has wildcards.
fn parse_operand(text: &str) -> Result<Operand, String> {
    if glob::has_magic(text) {
        Pattern::parse(text).map(Operand::Glob)
    } else {
        let path = files::normalize_remote(&glob::unescape(text))?;
        Ok(Operand::Path {
            path,
            directory: glob::names_a_directory(text),
        })
    }
}

/// Finds what `operand` names on the server: a directory (listed at once, since that LIST
/// is also how it is found to be one), or something else (its STAT). A refusal is reported
/// and remembered; any other failure ends the command.
fn resolve(session: &mut Session, operand: &Operand, found: &mut Found) -> Result<(), Failure> {
    let pattern = match operand {
        Operand::Path { path, directory } => {
            return resolve_path(session, path, *directory, found);
        }
        Operand::Glob(pattern) => pattern,
    };
    let matches = match glob::expand_pattern(&mut session.client, pattern) {
        Ok(matches) => matches,
        Err(error) => {
            found.refused += 1;
            return report(session, pattern.as_str(), &error);
        }
    };
    for matched in matches {
        if matched.kind == FileKind::Directory {
            found.dirs.push(Dir {
                shown: matched.path.clone(),
                path: matched.path,
                entries: None,
            });
        } else {
            found.files.push(OwnedDirEntry {
                name: matched.path,
                kind: matched.kind,
                size: matched.size,
                mtime_ns: matched.mtime_ns,
            });
        }
    }
    Ok(())
}

/// [`resolve`] for a path without wildcards; `directory`: it was typed with a trailing `/`,
/// so it must be a directory (`ls file/` is refused, as ls refuses it).
fn resolve_path(
    session: &mut Session,
    path: &str,
    directory: bool,
    found: &mut Found,
) -> Result<(), Failure> {
    let shown = if path.is_empty() { "." } else { path };
    match session.client.list(path) {
        Ok(entries) => found.dirs.push(Dir {
            path: path.to_string(),
            shown: shown.to_string(),
            entries: Some(entries),
        }),
        // `ls FILE` shows the file (and `ls LINK` the link), as ls does.
        Err(error)
            if !path.is_empty()
                && !directory
                && matches!(
                    error.server_code(),
                    Some(ErrorCode::NotDirectory | ErrorCode::OutsideRoot)
                ) =>
        {
            match session.client.stat(path) {
                Ok(info) if info.kind != FileKind::Directory => found.files.push(OwnedDirEntry {
                    name: path.to_string(),
                    kind: info.kind,
                    size: info.size,
                    mtime_ns: info.mtime_ns,
                }),
                _ => {
                    found.refused += 1;
                    report(session, shown, &error)?;
                }
            }
        }
        Err(error) => {
            found.refused += 1;
            report(session, shown, &error)?;
        }
    }
    Ok(())
}

/// Reports a refusal about `what` on stderr (`ls PATH: why`); any other failure is returned,
/// to end the command.
fn report(session: &Session, what: &str, error: &ClientError) -> Result<(), Failure> {
    let failure = session.fail(error);
    if failure.status != SERVER_REFUSED {
        return Err(failure);
    }
    if let Some(message) = failure.message {
        // "no match for `PATTERN`" names the operand already.
        if glob::is_no_match(error) {
            say(&format!("ls: {message}"));
        } else {
            say(&format!("ls {}: {message}", format::display_name(what)));
        }
    }
    Ok(())
}

/// `dir/name`, or `name` in the root.
fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The time now, seconds since the epoch (0 for a clock before 1970, which only makes every
/// date show its year).
fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        })
}
