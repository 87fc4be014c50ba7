//! `monoreactor get`: a file from the server's root, verified (BLAKE3) and atomic, to a
//! file, through a device or FIFO, or to stdout; resumable with `--continue`.

use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use clap::Args;
use monoreactor::client::ClientError;
use monoreactor::client::files::{self, Destination, DownloadError};
use monoreactor::client::glob::{self, Pattern};

use monoreactor::client::tree::{self, GetItem, GetPlan, TreeOptions};
use monoreactor::proto::files::FileKind;

use super::progress::{Bar, TreeBar};
use super::put::report_failures;
use super::{ServerArgs, Session};
use crate::failure::Failure;

/// What `get --help` says after the flags.
const HELP: &str = file_help!(
    "Examples:
  monoreactor get reports/q3.pdf               (writes ./q3.pdf)
  monoreactor get reports/q3.pdf ~/Downloads/  (writes ~/Downloads/q3.pdf)
  monoreactor get logs/big.log - | grep ERROR
  monoreactor get --continue images/disk.img   (after an interrupted download)
  monoreactor get -r photos ~/backup/          (writes ~/backup/photos/...)
  monoreactor get -r photos new-dir            (a new new-dir receives photos' contents)
  monoreactor get a.txt b.txt ~/Downloads/     (several files into a directory)
  monoreactor get -r -p --continue photos .    (modification times kept; resumed)
  monoreactor get 'logs/*.gz' .                (a remote pattern: quote it from the shell)

Every download is verified: the BLAKE3 of the bytes received (the same sum `b3sum` prints)
must equal the server's. A download to a file is atomic: the bytes go to a part file
`.NAME.monoreactor-part` beside the destination, which is renamed over it only once verified
and synced to disk (--no-fsync skips the sync). If the connection breaks (or the transfer
fails otherwise), the part file is kept, and the same command with --continue resumes from
where it stopped: the part's bytes are hashed, and only the rest is fetched. If verification
fails, the part file is removed and nothing is written. Without --continue, a stale part file
is overwritten.

The destination is checked before anything is fetched, as cp would: an existing directory
(or LOCAL ending in `/`, which must be one) receives REMOTE's name; otherwise LOCAL's
directory must exist. A symlink is followed: to a file, that file is replaced and the link
stays; a symlink to nothing is refused. A destination that is not a regular file (/dev/null,
a terminal, a FIFO, a disk) is never replaced: the bytes are written into it as they arrive,
as cp and curl -o do, so a failed verification is reported but cannot be taken back, and
--continue does not apply.

Trees (-r) and several sources land as scp gets them: into LOCAL if it is a directory
(LOCAL/NAME), else, for one source, as LOCAL itself (created); DIR/. stands for DIR's
contents, which go into LOCAL itself either way. Many files go on one
connection, several at once, each verified and atomic as above; they are not synced one by
one, but the destination's file system is synced once at the end (unless --no-fsync), before
the command reports success. With --continue, files already here (same size and BLAKE3 as
the server's) are skipped and part files resumed. Symlinks on the server are never followed:
they are skipped with a warning (exit status 0), as is anything that is not a file or a
directory. -p sets each file's and each directory's modification time and permission bits
(0o777 at most: never setuid, setgid or sticky) to the server's, a directory's once every
file inside it is in place, deepest first; a file skipped by --continue gets them too. From
an older server, whose STAT carries no mode, directories and skipped files get their times
only, and a tree says so in one warning.

A progress bar (bytes, rate, ETA) is drawn on stderr when it is a terminal, never on a pipe;
-q hides it (and the summary line a tree transfer leaves on a terminal)."
);

/// The flags of `get`.
#[derive(Args)]
#[command(after_help = HELP)]
pub struct GetArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Resume an interrupted download from its part file instead of starting over.
    #[arg(long = "continue")]
    resume: bool,
    /// Do not fsync the file before renaming it into place: faster (the download ends
    /// when the bytes are in the page cache, as with cp or curl -o), but a crash soon
    /// after may leave LOCAL empty or short. The rename stays atomic for readers.
    #[arg(long)]
    no_fsync: bool,
    /// Copy directories, recursively.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// Preserve modification times and modes (permission bits only).
    #[arg(short = 'p')]
    preserve: bool,
    /// The files on the server (directories with -r), then where to write them: a file, an
    /// existing directory (`DIR/` must be one), a device or FIFO (written through, never
    /// replaced), or `-` for stdout [default: REMOTE's last component, in the current
    /// directory]. With several REMOTEs, LOCAL is required and must be a directory.
    #[arg(value_name = "REMOTE... [LOCAL|-]", required = true, num_args = 1..)]
    paths: Vec<String>,
}

/// Downloads REMOTE; a failure says what was kept and how to resume.
pub fn run(args: GetArgs) -> Result<(), Failure> {
    // A remote pattern may name several files: the tree path expands it and lands them as
    // several sources would.
    let patterns = args.paths.len() > 1
        && args.paths[..args.paths.len() - 1]
            .iter()
            .any(|p| glob::has_magic(p));
    if args.recursive
        || args.paths.len() > 2
        || args.preserve
        || patterns
        || glob::has_magic(&args.paths[0])
    {
        return get_tree(args);
    }
    let local = args.paths.get(1).map(PathBuf::from);
    let remote = files::normalize_remote(&args.paths[0]).map_err(Failure::usage)?;
    let name = files::base_name(&remote);
    if name.is_empty() {
        return Err(Failure::usage(format!(
            "`{}` is the server's root; get fetches one file (get -r a tree)",
            args.paths[0]
        )));
    }
    let to_stdout = local.as_deref() == Some(Path::new("-"));
    if to_stdout && args.resume {
        return Err(Failure::usage(
            "--continue resumes a local file; it cannot resume standard output".to_string(),
        ));
    }
    // Before connecting: a destination that cannot work costs no transfer.
    let dest = if to_stdout {
        None
    } else {
        let dest = Destination::resolve(local.as_deref(), name)
            .map_err(|error| Failure::own(error.to_string()))?;
        if args.resume && matches!(dest, Destination::Through(_)) {
            return Err(Failure::usage(format!(
                "--continue resumes a regular file, and {} is not one",
                dest.path().display()
            )));
        }
        Some(dest)
    };
    let mut session = Session::open(args.server)?;
    let mut bar = Bar::new(name);
    let Some(dest) = dest else {
        // Smaller than a DATA piece, so pieces go straight to stdout, uncopied.
        let mut out = BufWriter::with_capacity(64 << 10, io::stdout().lock());
        let result = session.client.get(
            &remote,
            0,
            blake3::Hasher::new(),
            &mut out,
            &mut |done, total| bar.show(done, total),
        );
        bar.clear();
        return result.map(drop).map_err(|error| session.fail(&error));
    };
    let result = files::download(
        &mut session.client,
        &remote,
        &dest,
        args.resume,
        !args.no_fsync,
        &mut |done, total| bar.show(done, total),
    );
    bar.clear();
    let Err(DownloadError { error, kept }) = result else {
        return Ok(());
    };
    let mut failure = session.fail(&error);
    if let Some(message) = &mut failure.message {
        match kept {
            Some((part, len)) => message.push_str(&format!(
                "; the {len} bytes received are kept in {}: the same command with --continue resumes",
                part.display()
            )),
            None if matches!(error, ClientError::Verify(_)) => match dest {
                Destination::File(_) => message
                    .push_str("; nothing was kept: run the command again to start over"),
                Destination::Through(path) => message.push_str(&format!(
                    "; the bytes already written to {} are not the file",
                    path.display()
                )),
            },
            None => {}
        }
    }
    Err(failure)
}

/// A source of `get` as typed: a path, or a pattern that names what it matches.
enum Operand {
    /// The request path, and the source as typed (`DIR/.` means DIR's contents).
    Path(String, String),
    /// A remote pattern (`logs/*.gz`), expanded by listing.
    Pattern(Pattern),
}

/// `get -r`, several sources, a pattern, or `-p`: scp's rules for where they land, then the files
/// pipelined on one connection ([`tree::get_files`]).
fn get_tree(args: GetArgs) -> Result<(), Failure> {
    let (sources, local) = match args.paths.as_slice() {
        [one] => (std::slice::from_ref(one), PathBuf::from(".")),
        [sources @ .., local] => (sources, PathBuf::from(local)),
        [] => return Err(Failure::usage("get needs a REMOTE".to_string())),
    };
    if local == Path::new("-") {
        return Err(Failure::usage(
            "a tree or several files cannot go to standard output".to_string(),
        ));
    }
    // Each source as typed: a path (`\*` read as a literal `*`), or a pattern to expand.
    let mut operands = Vec::with_capacity(sources.len());
    for source in sources {
        operands.push(if glob::has_magic(source) {
            Operand::Pattern(Pattern::parse(source).map_err(Failure::usage)?)
        } else {
            let remote =
                files::normalize_remote(&glob::unescape(source)).map_err(Failure::usage)?;
            Operand::Path(remote, source.clone())
        });
    }
    let local_meta = std::fs::metadata(&local).ok();
    let into_dir = local_meta.as_ref().is_some_and(|meta| meta.is_dir());
    let several = operands.len() > 1 || matches!(operands.as_slice(), [Operand::Pattern(_)]);
    if several && !into_dir {
        return Err(Failure::usage(format!(
            "{}: several sources (or a pattern) go into a directory, and this is not one",
            local.display()
        )));
    }
    let mut session = Session::open(args.server)?;
    let mut plan = GetPlan::default();
    let mut refused = Vec::new();
    // The patterns expanded, as sh expands them: each match a source of its own.
    let mut remotes = Vec::new();
    for operand in operands {
        match operand {
            Operand::Path(remote, typed) => remotes.push((remote, typed)),
            Operand::Pattern(pattern) => {
                match glob::expand_pattern(&mut session.client, &pattern) {
                    Ok(matches) => remotes.extend(
                        matches
                            .into_iter()
                            .map(|matched| (matched.path.clone(), matched.path)),
                    ),
                    Err(error) if error.server_code().is_some() => {
                        let line = session.fail(&error).message.unwrap_or_default();
                        refused.push(line);
                    }
                    Err(error) => return Err(session.fail(&error)),
                }
            }
        }
    }
    for (remote, typed) in &remotes {
        let info = match session.client.stat(remote) {
            Ok(info) => info,
            Err(error) if error.server_code().is_some() => {
                let line = session.fail(&error).message.unwrap_or_default();
                refused.push(format!("`{remote}`: {line}"));
                continue;
            }
            Err(error) => return Err(session.fail(&error)),
        };
        let name = files::base_name(remote);
        let contents =
            info.kind == FileKind::Directory && super::put::names_contents(typed.as_bytes());
        let dest = if into_dir && !name.is_empty() && !contents {
            local.join(name)
        } else {
            local.clone()
        };
        match info.kind {
            FileKind::Directory if !args.recursive => {
                refused.push(format!("`{remote}` is a directory (-r copies it)"));
            }
            FileKind::Directory => {
                if local_meta.is_some() && !into_dir {
                    refused.push(format!("{}: not a directory", local.display()));
                    continue;
                }
                match tree::plan_get(&mut session.client, remote, &dest, &mut plan) {
                    Ok(()) => {}
                    Err(error) if error.server_code().is_some() => {
                        let line = session.fail(&error).message.unwrap_or_default();
                        refused.push(format!("`{remote}`: {line}"));
                    }
                    Err(error) => return Err(session.fail(&error)),
                }
            }
            FileKind::File => plan.files.push(GetItem {
                remote: remote.clone(),
                local: dest,
                size: info.size,
                mtime_ns: info.mtime_ns,
            }),
            _ => plan
                .skipped
                .push(format!("`{remote}`: not a regular file or a directory")),
        }
    }
    for line in &plan.skipped {
        eprintln!("monoreactor: warning: skipped {line}");
    }
    for dir in &plan.dirs {
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(_) if dir.is_dir() => {}
            Err(error) => {
                return Err(Failure::own(format!(
                    "cannot create {}: {error}",
                    dir.display()
                )));
            }
        }
    }
    let options = TreeOptions {
        resume: args.resume,
        preserve: args.preserve,
        durable: !args.no_fsync,
        ..TreeOptions::default()
    };
    let mut bar = TreeBar::new("get");
    let got = tree::get_files(&mut session.client, &plan.files, &options, &mut |tally| {
        bar.show(tally)
    });
    bar.finish();
    let mut failed = got.map_err(|error| session.fail(&error))?;
    if args.preserve && !plan.remote_dirs.is_empty() {
        // Once every file is in place (each one moved its directory's mtime), deepest first.
        let (dirs, unstated) = tree::remote_dir_attrs(&mut session.client, &plan.remote_dirs)
            .map_err(|error| session.fail(&error))?;
        failed.extend(unstated);
        if dirs.iter().any(|dir| dir.mode.is_none()) {
            eprintln!(
                "monoreactor: warning: the server's STAT carries no mode (an older server): directories keep only their times"
            );
        }
        failed.extend(tree::set_local_dir_attrs(&dirs));
        if options.durable {
            tree::sync_file_system(&plan.remote_dirs[0].1);
        }
    }
    report_failures(&session, refused, &failed, plan.files.len())
}
