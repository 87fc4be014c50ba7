//! `monoreactor stat`: what a path on the server is (kind, size, modification time, mode,
//! BLAKE3 if the server knows it), as lines or as JSON ([`format`](mod@super::format)).

use clap::Args;
use monoreactor::client::{files, glob};

use super::{ServerArgs, Session, format};
use crate::failure::{Failure, print_stdout};

/// What `stat --help` says after the flags.
const HELP: &str = file_help!(
    "Output: the path, its kind, size, modification time (UTC, to the nanosecond), its
permission bits (octal, and as ls -l shows them; a server older than issue 16 does not send
them, and the line is left out) and its BLAKE3 if the server knows it; with --json one object
{\"path\", \"kind\", \"size\", \"mtime_ns\", \"mode\" (a number, or null), \"blake3\" (hex, or
null)}. A symlink is described itself, never followed."
);

/// The flags of `stat`.
#[derive(Args)]
#[command(after_help = HELP)]
pub struct StatArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// One JSON object instead of lines.
    #[arg(long)]
    json: bool,
    /// The path on the server (`.` for the root).
    #[arg(value_name = "PATH")]
    path: String,
}

/// Describes the path.
pub fn run(args: StatArgs) -> Result<(), Failure> {
    // `\*` is a literal `*` here too, as in ls, rm and mkdir: the same operand names the
    // same path in each command.
    let path = files::normalize_remote(&glob::unescape(&args.path)).map_err(Failure::usage)?;
    let mut session = Session::open(args.server)?;
    let (info, mode) = session
        .client
        .stat_with_mode(&path)
        .map_err(|error| session.fail(&error))?;
    print_stdout(&if args.json {
        format::info_json(&path, &info, mode)?
    } else {
        format::info(&path, &info, mode)
    })
}
