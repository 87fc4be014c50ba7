//! `monoreactor put`: a file (or stdin) into the server's root, hashed first, stored only if
//! what arrived hashes the same; resumable with `--continue`.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use monoreactor::client::files;
use monoreactor::proto::ErrorCode;
use monoreactor::proto::files::Hash;

use super::progress::Bar;
use super::{ServerArgs, Session};
use crate::failure::Failure;

/// What `put --help` says after the flags.
const HELP: &str = file_help!(
    "Examples:
  monoreactor put q3.pdf reports/q3.pdf
  monoreactor put q3.pdf reports/            (stores reports/q3.pdf)
  monoreactor put --continue disk.img images/disk.img   (after an interrupted upload)
  tar c src | monoreactor put - backups/src.tar

The file is hashed (BLAKE3) before it is sent, and the server stores it only if the bytes it
received hash to the same: the file appears under its name complete or not at all. An
interrupted upload stays on the server (invisible); the same command with --continue sends
only what the server lacks, provided the file is unchanged. `-` reads standard input, which
is first copied to an unnamed temporary file (in $TMPDIR, else /tmp) to learn its size and
hash; it cannot be resumed.

A progress bar (bytes, rate, ETA) is drawn on stderr when it is a terminal, never on a pipe."
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
    /// The local file, or `-` for standard input.
    #[arg(value_name = "LOCAL|-")]
    local: PathBuf,
    /// The file on the server; an existing directory (or a path ending in `/`, or `.`) to
    /// store LOCAL's name in.
    #[arg(value_name = "REMOTE")]
    remote: String,
}

/// Uploads LOCAL, into REMOTE if that is a directory; waits while another worker of the
/// server still holds the same upload.
pub fn run(args: PutArgs) -> Result<(), Failure> {
    let from_stdin = args.local == Path::new("-");
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
        args.local.file_name().and_then(|name| name.to_str())
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
        open_local(&args.local, args.resume, &label)?
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
            "{} is a directory; put stores one file",
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
