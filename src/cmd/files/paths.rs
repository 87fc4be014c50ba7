//! `monoreactor rm` and `monoreactor mkdir`: each path in turn, the paths the server refuses
//! reported one by one. `rm -r` removes a tree deepest first, `rm` takes remote globs,
//! `mkdir -p` creates the missing parents.

use std::collections::HashSet;

use clap::Args;
use monoreactor::client::ClientError;
use monoreactor::client::files::{self, FileClient};
use monoreactor::client::glob::{self, Pattern};
use monoreactor::proto::ErrorCode;
use monoreactor::proto::files::FileKind;

use super::format::display_name;
use super::{SERVER_REFUSED, ServerArgs, Session};
use crate::failure::{Failure, say};

/// What `rm --help` says after the flags.
const RM_HELP: &str = file_help!(
    "Removes files, symlinks (the link itself) and empty directories, one PATH after another;
with -r a directory and everything beneath it, deepest first (a symlink inside is removed,
never followed). Without -r a directory that is not empty is refused (NOT_EMPTY). With -f a
PATH that does not exist (or a pattern that matches nothing) is not an error. A PATH the
server refuses is reported and the others are still tried (exit status 1); so is, with -r,
each entry inside a tree, and the walk goes on (the directories above it are left). As rm,
a PATH whose last component is `.` or `..` is refused (exit status 2), and a PATH ending
with `/` must be a directory.

A PATH may hold wildcards in any component: *, ?, [abc], [a-z], [!a], [[:digit:]]
(quote them from the local shell: rm 'tmp/*.part'). They are matched here, against LISTs
of the server's directories; * and ? do not match a leading dot. \\* stands for a literal
*. A pattern ending with / matches directories only; ** is * (nothing matches across a
/). A pattern that matches nothing is an error (exit status 1)."
);

/// What `mkdir --help` says after the flags.
const MKDIR_HELP: &str = file_help!(
    "Creates each directory, one level at a time: its parent must exist, unless -p is given,
which creates the missing parents and accepts a directory that already exists (as
mkdir -p). A PATH the server refuses (exists, no parent) is reported and the others are
still tried (exit status 1). Wildcards are not expanded (\\* is a literal *, as elsewhere)."
);

/// The flags of `rm`.
#[derive(Args)]
#[command(after_help = RM_HELP)]
pub struct RmArgs {
    /// Remove directories and everything beneath them.
    #[arg(short = 'r', short_alias = 'R', long = "recursive")]
    recursive: bool,
    /// Ignore paths that do not exist (and patterns that match nothing).
    #[arg(short = 'f', long = "force")]
    force: bool,
    #[command(flatten)]
    paths: PathsArgs,
}

/// The flags of `mkdir`.
#[derive(Args)]
#[command(after_help = MKDIR_HELP)]
pub struct MkdirArgs {
    /// Create missing parents; a directory that exists is not an error.
    #[arg(short = 'p', long = "parents")]
    parents: bool,
    #[command(flatten)]
    paths: PathsArgs,
}

/// The flags `rm` and `mkdir` share: the server and the paths.
#[derive(Args)]
struct PathsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Paths on the server.
    #[arg(value_name = "PATH", required = true)]
    paths: Vec<String>,
}

/// A path the server refused, and why: what the command reports for it.
struct Refused {
    path: String,
    error: ClientError,
}

impl Refused {
    fn at(path: &str) -> impl FnOnce(ClientError) -> Refused + '_ {
        move |error| Refused {
            path: path.to_string(),
            error,
        }
    }
}

/// Removes each path (or each match of a pattern).
pub fn rm(args: RmArgs) -> Result<(), Failure> {
    let RmArgs {
        recursive,
        force,
        paths,
    } = args;
    let operands = paths
        .paths
        .iter()
        .map(|text| {
            refuse_dot_operand(text)?;
            if glob::has_magic(text) {
                return Pattern::parse(text).map(Operand::Glob);
            }
            let path = files::normalize_removable(&glob::unescape(text))?;
            if path.is_empty() {
                return Err(root_refused(text, "rm"));
            }
            Ok(Operand::Path {
                path,
                directory: glob::names_a_directory(text),
            })
        })
        .collect::<Result<Vec<Operand>, String>>()
        .map_err(Failure::usage)?;
    let mut session = Session::open(paths.server)?;
    let mut refused = false;
    for operand in &operands {
        let targets = match operand {
            Operand::Path { path, directory } => {
                // `rm file/` is refused as rm refuses it, not taken for `rm file`.
                if *directory {
                    if let Err(error) = require_directory(&mut session.client, path) {
                        if !(force && error.server_code() == Some(ErrorCode::NotFound)) {
                            refused = true;
                            report(&session, "rm", path, &error)?;
                        }
                        continue;
                    }
                }
                vec![path.clone()]
            }
            Operand::Glob(pattern) => match glob::expand_pattern(&mut session.client, pattern) {
                Ok(matches) => matches.into_iter().map(|matched| matched.path).collect(),
                Err(error) if force && glob::is_no_match(&error) => continue,
                Err(error) => {
                    refused = true;
                    report(&session, "rm", pattern.as_str(), &error)?;
                    continue;
                }
            },
        };
        for path in targets {
            let mut refusals = Vec::new();
            let ended = remove(&mut session.client, &path, recursive, &mut refusals);
            for Refused { path, error } in refusals.iter().chain(ended.as_ref().err()) {
                if force && error.server_code() == Some(ErrorCode::NotFound) {
                    continue;
                }
                refused = true;
                report(&session, "rm", path, error)?;
            }
        }
    }
    finish(refused)
}

/// Creates each directory (and with `-p` its missing parents).
pub fn mkdir(args: MkdirArgs) -> Result<(), Failure> {
    let MkdirArgs { parents, paths } = args;
    let mut targets = Vec::with_capacity(paths.paths.len());
    for text in &paths.paths {
        let path = files::normalize_remote(&glob::unescape(text)).map_err(Failure::usage)?;
        if path.is_empty() {
            return Err(Failure::usage(root_refused(text, "mkdir")));
        }
        targets.push(path);
    }
    let mut session = Session::open(paths.server)?;
    let mut refused = false;
    for path in &targets {
        let made = if parents {
            make_parents(&mut session.client, path)
        } else {
            session.client.mkdir(path).map_err(Refused::at(path))
        };
        if let Err(Refused { path, error }) = made {
            refused = true;
            report(&session, "mkdir", &path, &error)?;
        }
    }
    finish(refused)
}

/// One `rm` operand: a path (and whether it was typed as a directory, with a trailing `/`),
/// or a pattern to expand on the server.
enum Operand {
    Path { path: String, directory: bool },
    Glob(Pattern),
}

/// Refuses an operand whose last component is `.` or `..`, as coreutils' rm does: `a/.` is
/// squashed to `a` by the path rules, so `rm -r a/.` (or `'*/.'`) would remove the directory
/// itself, which no rm does.
fn refuse_dot_operand(text: &str) -> Result<(), String> {
    let last = text.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if matches!(glob::unescape(last).as_str(), "." | "..") {
        return Err(format!(
            "refusing to remove `.` or `..`: `{}`",
            display_name(text)
        ));
    }
    Ok(())
}

/// For an operand typed with a trailing `/`: it must be a directory (not a file, nor a
/// symlink, which is never followed), else NOT_DIRECTORY as the server would say it.
fn require_directory(client: &mut FileClient, path: &str) -> Result<(), ClientError> {
    let info = client.stat(path)?;
    if info.kind != FileKind::Directory {
        return Err(ClientError::Server {
            code: ErrorCode::NotDirectory,
            text: format!("{path}/: not a directory"),
        });
    }
    Ok(())
}

/// The usage error for a command on the root itself.
fn root_refused(text: &str, command: &str) -> String {
    format!("`{text}` is the server's root; {command} needs a path beneath it")
}

/// Removes `path`; with `recursive`, a directory that is not empty is emptied first, deepest
/// first. One DELETE for a file or an empty directory: the tree is walked only when the
/// server answers NOT_EMPTY. What the server refused inside the tree is added to `refusals`
/// (the walk goes on, as rm's does); the error is the one that ended the command's use of
/// the connection, or the refusal of `path` itself.
fn remove(
    client: &mut FileClient,
    path: &str,
    recursive: bool,
    refusals: &mut Vec<Refused>,
) -> Result<(), Refused> {
    match client.delete(path) {
        Err(error) if recursive && error.server_code() == Some(ErrorCode::NotEmpty) => {
            remove_tree(client, path, refusals)
        }
        done => done.map_err(Refused::at(path)),
    }
}

/// Removes the directory `root` and everything beneath it: each directory is LISTed, its
/// other entries (files, symlinks, partial uploads) removed in name order, its
/// subdirectories emptied the same way, then it is removed itself. A path that vanished
/// meanwhile is not an error. A refusal is added to `refusals` and the walk goes on, as rm's
/// does; the directories above it are then left without a word (they cannot be empty, and
/// rm says nothing of them either). A failure that is not the server's (the connection)
/// ends the walk: every later request would fail the same way.
fn remove_tree(
    client: &mut FileClient,
    root: &str,
    refusals: &mut Vec<Refused>,
) -> Result<(), Refused> {
    // Directories still to visit (`false`) or emptied and to remove (`true`); a directory is
    // pushed back below its subdirectories, so it comes off after them.
    let mut stack = vec![(root.to_string(), false)];
    // Directories with something refused beneath them: not to be removed.
    let mut kept: HashSet<String> = HashSet::new();
    let mut refuse = |path: &str, error: ClientError, kept: &mut HashSet<String>| {
        if error.server_code().is_none() {
            return Err(Refused::at(path)(error));
        }
        // Its ancestors up to `root`, each once: they stay.
        let mut above = path;
        while let Some((parent, _)) = above.rsplit_once('/') {
            if parent.len() < root.len() || !kept.insert(parent.to_string()) {
                break;
            }
            above = parent;
        }
        refusals.push(Refused::at(path)(error));
        Ok(())
    };
    while let Some((dir, emptied)) = stack.pop() {
        if emptied {
            if !kept.contains(&dir) {
                if let Err(error) = gone_is_fine(client.delete(&dir)) {
                    refuse(&dir, unlisted_entries(error), &mut kept)?;
                }
            }
            continue;
        }
        // No deeper than a request can name: a server's tree cannot lead the walk on forever.
        let listed = glob::check_path_len(&dir).and_then(|()| client.list(&dir));
        let mut entries = match listed {
            Ok(entries) => entries,
            Err(error) if error.server_code() == Some(ErrorCode::NotFound) => continue,
            Err(error) => {
                refuse(&dir, error, &mut kept)?;
                continue;
            }
        };
        files::sort_entries(&mut entries);
        stack.push((dir.clone(), true));
        let mut subdirs = Vec::new();
        // A name no request could hold (`..`, from a broken server) is left alone: the
        // directory then stays, reported NOT_EMPTY.
        for entry in entries
            .into_iter()
            .filter(|e| glob::is_one_component(&e.name))
        {
            let path = format!("{dir}/{}", entry.name);
            if entry.kind == FileKind::Directory {
                subdirs.push((path, false));
            } else if let Err(error) = gone_is_fine(client.delete(&path)) {
                refuse(&path, error, &mut kept)?;
            }
        }
        // The first by name on top.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(())
}

/// NOT_EMPTY for a directory whose every listed entry was removed: say why, since `ls`
/// shows it empty (names LIST leaves out: not UTF-8, or the server's own), or something new.
fn unlisted_entries(error: ClientError) -> ClientError {
    match error {
        ClientError::Server {
            code: ErrorCode::NotEmpty,
            text,
        } => ClientError::Server {
            code: ErrorCode::NotEmpty,
            text: format!(
                "{text} (its listed entries are gone: what is left is not listed, such as a \
                 name that is not UTF-8, or was created meanwhile)"
            ),
        },
        other => other,
    }
}

/// A removal whose path is already gone has what it wanted.
fn gone_is_fine(result: Result<(), ClientError>) -> Result<(), ClientError> {
    match result {
        Err(error) if error.server_code() == Some(ErrorCode::NotFound) => Ok(()),
        other => other,
    }
}

/// `mkdir -p`: one MKDIR when the parent exists; else each missing ancestor from the top. A
/// directory that exists is fine; anything else there is the server's ALREADY_EXISTS.
fn make_parents(client: &mut FileClient, path: &str) -> Result<(), Refused> {
    match client.mkdir(path) {
        Ok(()) => return Ok(()),
        Err(error) if error.server_code() == Some(ErrorCode::AlreadyExists) => {
            return existing_directory(client, path, error);
        }
        Err(error) if error.server_code() == Some(ErrorCode::NotFound) => {}
        Err(error) => return Err(Refused::at(path)(error)),
    }
    let mut prefix = String::with_capacity(path.len());
    for name in path.split('/') {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(name);
        match client.mkdir(&prefix) {
            Ok(()) => {}
            Err(error) if error.server_code() == Some(ErrorCode::AlreadyExists) => {
                existing_directory(client, &prefix, error)?;
            }
            Err(error) => return Err(Refused::at(&prefix)(error)),
        }
    }
    Ok(())
}

/// After ALREADY_EXISTS for `path`: fine if it is a directory, else that refusal.
fn existing_directory(
    client: &mut FileClient,
    path: &str,
    exists: ClientError,
) -> Result<(), Refused> {
    match client.stat(path) {
        Ok(info) if info.kind == FileKind::Directory => Ok(()),
        Ok(_) => Err(Refused::at(path)(exists)),
        Err(error) => Err(Refused::at(path)(error)),
    }
}

/// Reports a refusal about `what` on stderr (`COMMAND PATH: why`); any other failure is
/// returned, to end the command.
fn report(
    session: &Session,
    command: &str,
    what: &str,
    error: &ClientError,
) -> Result<(), Failure> {
    let failure = session.fail(error);
    if failure.status != SERVER_REFUSED {
        return Err(failure);
    }
    if let Some(message) = failure.message {
        // "no match for `PATTERN`" names the operand already.
        if glob::is_no_match(error) {
            say(&format!("{command}: {message}"));
        } else {
            say(&format!("{command} {}: {message}", display_name(what)));
        }
    }
    Ok(())
}

/// Exit status 1 when something was refused (each refusal was already reported).
fn finish(refused: bool) -> Result<(), Failure> {
    if refused {
        return Err(Failure {
            status: SERVER_REFUSED,
            message: None,
        });
    }
    Ok(())
}
