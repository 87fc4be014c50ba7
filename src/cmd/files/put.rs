//! `monoreactor put`: a file (or stdin) into the server's root, hashed first, stored only if
//! what arrived hashes the same; resumable with `--continue`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use monoreactor::client::files;
use monoreactor::client::tree::{self, Failed, PutItem, PutPlan, TreeOptions};
use monoreactor::proto::ErrorCode;
use monoreactor::proto::files::{FileKind, Hash};

use super::progress::{Bar, TreeBar};
use super::{ServerArgs, Session};
use crate::failure::Failure;

/// What `put --help` says after the flags.
const HELP: &str = file_help!(
    "Examples:
  monoreactor put q3.pdf reports/q3.pdf
  monoreactor put q3.pdf reports/            (stores reports/q3.pdf)
  monoreactor put --continue disk.img images/disk.img   (after an interrupted upload)
  tar c src | monoreactor put - backups/src.tar
  monoreactor put -r photos backups/          (stores backups/photos/...)
  monoreactor put -r photos backups/pics      (a new backups/pics receives photos' contents)
  monoreactor put -r photos/. backups/pics    (photos' contents, whether pics exists or not)
  monoreactor put a.txt b.txt docs/           (several files into a directory)
  monoreactor put -r --continue photos backups/   (after an interrupted tree)

The file is hashed (BLAKE3) before it is sent, and the server stores it only if the bytes it
received hash to the same: the file appears under its name complete or not at all. An
interrupted upload stays on the server (invisible); the same command with --continue sends
only what the server lacks, provided the file is unchanged. `-` reads standard input, which
is first copied to an unnamed temporary file (in $TMPDIR, else /tmp) to learn its size and
hash; it cannot be resumed.

Trees (-r) and several sources land as scp puts them: into REMOTE if it is a directory
(REMOTE/NAME), else, for one source, as REMOTE itself (created); DIR/. stands for DIR's
contents, which go into REMOTE itself either way (so a tree is resumed with the same
command: put -r --continue DIR/. REMOTE). Many files go on one
connection, several at once. Each file is verified, atomic and resumable as above, but not
synced on its own: the server syncs its file system once, with the last file, and the
command reports success only after that (docs/PROTOCOL.md 6.4, DEFER_SYNC). With
--continue, files the server already has (same size and BLAKE3) are skipped and partial
uploads resumed. Symlinks inside a tree are not followed but skipped with a warning (-L
follows them); FIFOs, sockets and devices are skipped with a warning: the exit status stays
0 for what was skipped. A source named on the command line is followed if it is a symlink.
-p gives each stored file the local file's permission bits (0o777 at most: never setuid,
setgid or sticky) and modification time, set by the server as it stores it; each directory
of a tree gets its local directory's the same way, once everything inside it is stored,
deepest first (storing a file moves its directory's time). With --continue -p, files skipped
as already there get theirs too. A server older than that (no SET_ATTRS) leaves directories
and skipped files as they are, with one warning; the command still succeeds.

A progress bar (bytes, rate, ETA) is drawn on stderr when it is a terminal, never on a pipe;
-q hides it (and the summary line a tree transfer leaves on a terminal)."
);

/// The flags of `put`.
#[derive(Args)]
#[command(after_help = HELP)]
pub struct PutArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Resume an interrupted upload of the same file to the same REMOTE.
    #[arg(long = "continue")]
    resume: bool,
    /// Copy directories, recursively.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// Follow symlinks inside a local tree (they are skipped otherwise).
    #[arg(short = 'L', long)]
    dereference: bool,
    /// Preserve modes and modification times.
    #[arg(short = 'p')]
    preserve: bool,
    /// The local files (or directories, with -r), or `-` for standard input.
    #[arg(value_name = "LOCAL|-", required = true, num_args = 1..)]
    local: Vec<PathBuf>,
    /// The file on the server; an existing directory (or a path ending in `/`, or `.`) to
    /// store LOCAL's name in.
    #[arg(value_name = "REMOTE")]
    remote: String,
}

/// Uploads LOCAL, into REMOTE if that is a directory; waits while another worker of the
/// server still holds the same upload.
pub fn run(args: PutArgs) -> Result<(), Failure> {
    if args.recursive || args.local.len() > 1 || args.preserve {
        return put_tree(args);
    }
    let local = args.local[0].clone();
    let from_stdin = local == Path::new("-");
    if from_stdin && args.resume {
        return Err(Failure::usage(
            "--continue cannot resume standard input (it cannot be read again): drop --continue"
                .to_string(),
        ));
    }
    // LOCAL's name, for a REMOTE that is a directory.
    let name = if from_stdin {
        None
    } else {
        local.file_name().and_then(|name| name.to_str())
    };
    let into = |dir: &str| match name {
        Some(name) if dir.is_empty() => files::normalize_remote(name).map_err(Failure::usage),
        Some(name) => files::normalize_remote(&format!("{dir}/{name}")).map_err(Failure::usage),
        None => Err(Failure::usage(format!(
            "`{}` is a directory: name the remote file (REMOTE/NAME)",
            args.remote
        ))),
    };
    let mut remote = files::normalize_remote(&args.remote).map_err(Failure::usage)?;
    let mut joined = remote.is_empty() || args.remote.ends_with('/');
    if joined {
        remote = into(&remote)?;
    }
    let label = files::base_name(&remote).to_string();
    let (mut source, size, hash) = if from_stdin {
        files::spool(
            &mut io::stdin().lock(),
            "standard input",
            &std::env::temp_dir(),
        )
        .map_err(|error| Failure::own(error.to_string()))?
    } else {
        open_local(&local, args.resume, &label)?
    };
    let mut session = Session::open(args.server)?;
    let (mut waited, mut pause) = (Duration::ZERO, Duration::from_millis(100));
    loop {
        let mut bar = Bar::new(files::base_name(&remote));
        let result = session.client.put(
            &remote,
            &mut source,
            size,
            hash,
            args.resume,
            &mut |done, total| bar.show(done, total),
        );
        bar.clear();
        match result {
            Ok(outcome) => {
                log::debug!(
                    "stored {remote}: {size} bytes, {} were already there, BLAKE3 {}",
                    outcome.held,
                    files::hex(&outcome.hash)
                );
                return Ok(());
            }
            // REMOTE is an existing directory: store LOCAL's name in it, as cp does.
            Err(error)
                if !joined
                    && name.is_some()
                    && error.server_code() == Some(ErrorCode::IsDirectory) =>
            {
                remote = into(&remote)?;
                joined = true;
            }
            // Another server process (a worker sharing the root) is receiving this very
            // upload — a connection of ours it has not seen close yet, say: wait for it to
            // let go, as long as the client waits for anything.
            Err(error)
                if error.server_code() == Some(ErrorCode::UploadBusy)
                    && waited < files::IO_TIMEOUT =>
            {
                if waited.is_zero() {
                    eprintln!(
                        "monoreactor: {remote}: the server is still receiving this upload elsewhere; waiting"
                    );
                }
                std::thread::sleep(pause);
                waited += pause;
                pause = (pause * 2).min(BUSY_PAUSE_MAX);
            }
            Err(error) => return Err(session.fail(&error)),
        }
    }
}

/// The longest pause between two tries of an upload the server says is busy.
const BUSY_PAUSE_MAX: Duration = Duration::from_secs(2);

/// Opens LOCAL for `put` and hashes it: a regular file as it is (with a progress bar for
/// the hashing), anything else that can be read (a pipe, `<(...)`) spooled like stdin.
fn open_local(path: &Path, resume: bool, label: &str) -> Result<(File, u64, Hash), Failure> {
    let cannot = |what: &str, error: io::Error| {
        Failure::own(format!("cannot {what} {}: {error}", path.display()))
    };
    let mut file = File::open(path).map_err(|error| cannot("open", error))?;
    let meta = file.metadata().map_err(|error| cannot("stat", error))?;
    if meta.is_dir() {
        return Err(Failure::usage(format!(
            "{} is a directory; put -r stores a tree",
            path.display()
        )));
    }
    if !meta.is_file() {
        if resume {
            return Err(Failure::usage(format!(
                "--continue needs a regular file, and {} is not one",
                path.display()
            )));
        }
        return files::spool(
            &mut file,
            &path.display().to_string(),
            &std::env::temp_dir(),
        )
        .map_err(|error| Failure::own(error.to_string()));
    }
    let mut bar = Bar::new(&format!("hashing {label}"));
    let hasher = files::hash_reader(&mut file, &mut |done| bar.show(done, meta.len()))
        .map_err(|error| cannot("read", error))?;
    bar.clear();
    Ok((file, hasher.count(), *hasher.finalize().as_bytes()))
}

/// `put -r`, or several sources: scp's rules for where they land, then the files pipelined on
/// one connection ([`tree::put_files`]).
fn put_tree(args: PutArgs) -> Result<(), Failure> {
    if args.local.iter().any(|local| local == Path::new("-")) {
        return Err(Failure::usage(
            "`-` (standard input) is one file: it cannot be among several sources or in a tree"
                .to_string(),
        ));
    }
    let target = files::normalize_remote(&args.remote).map_err(Failure::usage)?;
    let mut session = Session::open(args.server)?;
    let target_kind = match session.client.stat(&target) {
        Ok(info) => Some(info.kind),
        Err(error) if error.server_code() == Some(ErrorCode::NotFound) => None,
        Err(error) => return Err(session.fail(&error)),
    };
    let into_dir = target_kind == Some(FileKind::Directory);
    if args.local.len() > 1 && !into_dir {
        return Err(Failure::usage(format!(
            "`{}`: several sources go into a directory, and this is not one on the server",
            args.remote
        )));
    }
    let mut plan = PutPlan::default();
    let mut refused = Vec::new();
    for local in &args.local {
        let meta = match std::fs::metadata(local) {
            Ok(meta) => meta,
            Err(error) => {
                refused.push(format!("cannot stat {}: {error}", local.display()));
                continue;
            }
        };
        let name = std::fs::canonicalize(local)
            .ok()
            .and_then(|path| path.file_name().map(|name| name.to_os_string()));
        let Some(name) = name.as_deref().and_then(|name| name.to_str()) else {
            refused.push(format!("{}: no name that can be stored", local.display()));
            continue;
        };
        // `DIR/.` is DIR's contents, as cp -r takes it: they go into the target itself
        // whether it exists or not, so the same command resumes (--continue) the same way.
        let contents = meta.is_dir() && names_contents(local.as_os_str().as_encoded_bytes());
        let dest = if into_dir && !contents {
            tree::join_remote(&target, name)
        } else {
            target.clone()
        };
        if let Err(error) = files::normalize_remote(&dest) {
            refused.push(error);
            continue;
        }
        if meta.is_dir() {
            if !args.recursive {
                refused.push(format!("{} is a directory (-r copies it)", local.display()));
                continue;
            }
            if target_kind.is_some() && !into_dir && !(contents && dest.is_empty()) {
                refused.push(format!(
                    "{}: `{}` is not a directory on the server",
                    local.display(),
                    args.remote
                ));
                continue;
            }
            if let Err(error) =
                tree::plan_put(local, &dest, args.dereference, args.preserve, &mut plan)
            {
                refused.push(format!("cannot read {}: {error}", local.display()));
            }
        } else if meta.is_file() {
            plan.files.push(PutItem {
                local: local.clone(),
                remote: dest,
                size: meta.len(),
                attrs: args.preserve.then(|| tree::attrs_of(&meta)),
            });
        } else {
            plan.skipped.push(format!(
                "{}: not a regular file or a directory",
                local.display()
            ));
        }
    }
    for line in &plan.skipped {
        eprintln!("monoreactor: warning: skipped {line}");
    }
    let mut bar = TreeBar::new("put");
    let mut failed = tree::make_remote_dirs(&mut session.client, &plan.dirs)
        .map_err(|error| session.fail(&error))?;
    // Files under a directory that could not be created would each fail the same way.
    if !failed.is_empty() {
        let under_failed = |remote: &str| {
            failed.iter().any(|dir| {
                remote
                    .strip_prefix(dir.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        };
        plan.files.retain(|item| !under_failed(&item.remote));
    }
    let options = TreeOptions {
        resume: args.resume,
        ..TreeOptions::default()
    };
    let sent =
        tree::put_files_reporting(&mut session.client, &plan.files, &options, &mut |tally| {
            bar.show(tally)
        });
    bar.finish();
    let sent = sent.map_err(|error| session.fail(&error))?;
    failed.extend(sent.failed);
    if args.preserve {
        failed.extend(set_tree_attrs(&mut session, &plan, &sent.skipped, &failed)?);
    }
    report_failures(&session, refused, &failed, plan.files.len())
}

/// `-p` after the files are stored: the mode and mtime of each file `--continue` skipped as
/// already there (`skipped`, indices in `plan.files`: not sent, so no PUT carried them);
/// then every directory's, deepest first, since storing a file moved its directory's mtime.
/// A server that does not know SET_ATTRS gets one warning, and the tree does not fail for it.
fn set_tree_attrs(
    session: &mut Session,
    plan: &PutPlan,
    skipped: &[usize],
    failed: &[Failed],
) -> Result<Vec<Failed>, Failure> {
    let under_failed = |remote: &str| {
        failed.iter().any(|failure| {
            remote
                .strip_prefix(failure.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    };
    let mut targets: Vec<_> = skipped
        .iter()
        .filter_map(|&index| {
            let item = plan.files.get(index)?;
            Some((item.remote.clone(), item.attrs?))
        })
        .collect();
    targets.extend(
        plan.dir_attrs
            .iter()
            .rev()
            .filter(|(dir, _)| !under_failed(dir))
            .cloned(),
    );
    let outcome = tree::set_remote_attrs(&mut session.client, &targets)
        .map_err(|error| session.fail(&error))?;
    if outcome.unsupported {
        eprintln!(
            "monoreactor: warning: the server is older than SET_ATTRS: directories keep the server's modes and times{}",
            if skipped.is_empty() {
                ""
            } else {
                ", and so do files skipped by --continue"
            }
        );
    }
    Ok(outcome.failed)
}

/// One line per file that failed (and per source refused), then the command's failure: 1 if
/// only the server refused, 255 if this client failed too.
pub(super) fn report_failures(
    session: &Session,
    refused: Vec<String>,
    failed: &[Failed],
    files: usize,
) -> Result<(), Failure> {
    if refused.is_empty() && failed.is_empty() {
        return Ok(());
    }
    let mut status = 1;
    for line in &refused {
        eprintln!("monoreactor: {line}");
    }
    for failure in failed {
        let one = session.fail(&failure.error);
        if one.status != 1 {
            status = one.status;
        }
        if let Some(message) = one.message {
            eprintln!("monoreactor: {}: {message}", failure.path);
        }
    }
    let mut what = Vec::new();
    if !failed.is_empty() {
        what.push(format!(
            "{} of {} files and directories failed",
            failed.len(),
            files.max(failed.len())
        ));
    }
    if !refused.is_empty() {
        what.push(format!("{} sources refused", refused.len()));
    }
    Err(Failure {
        status,
        message: Some(what.join(", ")),
    })
}

/// Whether a source names a directory's contents: `.`, or a path ending in `/.`.
pub(super) fn names_contents(path: &[u8]) -> bool {
    path == b"." || path.ends_with(b"/.")
}
