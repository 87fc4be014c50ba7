//! `monoreactor stat`: what a path on the server is (kind, size, modification time, BLAKE3 if
//! the server knows it), as lines or as JSON ([`format`](mod@super::format)).

use clap::Args;
use monoreactor::client::{files, glob};

use super::{ServerArgs, Session, format};
use crate::failure::{Failure, print_stdout};

/// What `stat --help` says after the flags.
const HELP: &str = file_help!(
    "Output: the path, its kind, size, modification time (UTC, to the nanosecond) and its
BLAKE3 if the server knows it; with --json one object
{\"path\", \"kind\", \"size\", \"mtime_ns\", \"blake3\" (hex, or null)}. A symlink is described
itself, never followed."
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
    let info = session
        .client
        .stat(&path)
        .map_err(|error| session.fail(&error))?;
    print_stdout(&if args.json {
        format::info_json(&path, &info)?
    } else {
        format::info(&path, &info)
    })
}
