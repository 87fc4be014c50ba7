//! `monoreactor get`: a file from the server's root, verified (BLAKE3) and atomic, to a
//! file, through a device or FIFO, or to stdout; resumable with `--continue`.

use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};

use clap::Args;
use monoreactor::client::ClientError;
use monoreactor::client::files::{self, Destination, DownloadError};

use super::progress::Bar;
use super::{ServerArgs, Session};
use crate::failure::Failure;

/// What `get --help` says after the flags.
const HELP: &str = file_help!(
    "Examples:
  monoreactor get reports/q3.pdf               (writes ./q3.pdf)
  monoreactor get reports/q3.pdf ~/Downloads/  (writes ~/Downloads/q3.pdf)
  monoreactor get logs/big.log - | grep ERROR
  monoreactor get --continue images/disk.img   (after an interrupted download)

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

A progress bar (bytes, rate, ETA) is drawn on stderr when it is a terminal, never on a pipe."
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
    /// The file on the server.
    #[arg(value_name = "REMOTE")]
    remote: String,
    /// Where to write it: a file, an existing directory (`DIR/` must be one), a device or
    /// FIFO (written through, never replaced), or `-` for stdout [default: REMOTE's last
    /// component, in the current directory].
    #[arg(value_name = "LOCAL|-")]
    local: Option<PathBuf>,
}

/// Downloads REMOTE; a failure says what was kept and how to resume.
pub fn run(args: GetArgs) -> Result<(), Failure> {
    let remote = files::normalize_remote(&args.remote).map_err(Failure::usage)?;
    let name = files::base_name(&remote);
    if name.is_empty() {
        return Err(Failure::usage(format!(
            "`{}` is the server's root; get fetches one file",
            args.remote
        )));
    }
    let to_stdout = args.local.as_deref() == Some(Path::new("-"));
    if to_stdout && args.resume {
        return Err(Failure::usage(
            "--continue resumes a local file; it cannot resume standard output".to_string(),
        ));
    }
    // Before connecting: a destination that cannot work costs no transfer.
    let dest = if to_stdout {
        None
    } else {
        let dest = Destination::resolve(args.local.as_deref(), name)
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
