//! `monoreactor ls`: a directory on the server, in columns or as JSON ([`format`](mod@super::format));
//! a path that is not a directory is shown as one entry, as ls does.

use clap::Args;
use monoreactor::client::files::{self, OwnedDirEntry};
use monoreactor::proto::ErrorCode;
use monoreactor::proto::files::FileKind;

use super::{ServerArgs, Session, format};
use crate::failure::{Failure, print_stdout};

/// What `ls --help` says after the flags.
const HELP: &str = file_help!(
    "Output: one line per entry, sorted by name: its kind (- file, d directory, l symlink,
? other), its size in bytes, its modification time (UTC, YYYY-MM-DD HH:MM) and its name
(control characters escaped). With --json: one JSON array of
{\"name\", \"kind\" (file, directory, symlink, other), \"size\", \"mtime_ns\"} objects, mtime_ns
being nanoseconds since the Unix epoch. A PATH that is not a directory is shown as one entry."
);

/// The flags of `ls`.
#[derive(Args)]
#[command(after_help = HELP)]
pub struct LsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// One JSON array instead of columns.
    #[arg(long)]
    json: bool,
    /// The directory on the server [default: the root].
    #[arg(value_name = "PATH")]
    dir: Option<String>,
}

/// Lists the directory, sorted by name.
pub fn run(args: LsArgs) -> Result<(), Failure> {
    let dir = files::normalize_remote(args.dir.as_deref().unwrap_or("")).map_err(Failure::usage)?;
    let mut session = Session::open(args.server)?;
    let mut entries = match session.client.list(&dir) {
        Ok(entries) => entries,
        // `ls FILE` shows the file (and `ls LINK` the link), as ls does.
        Err(error)
            if !dir.is_empty()
                && matches!(
                    error.server_code(),
                    Some(ErrorCode::NotDirectory | ErrorCode::OutsideRoot)
                ) =>
        {
            match session.client.stat(&dir) {
                Ok(info) if info.kind != FileKind::Directory => vec![OwnedDirEntry {
                    name: dir.clone(),
                    kind: info.kind,
                    size: info.size,
                    mtime_ns: info.mtime_ns,
                }],
                _ => return Err(session.fail(&error)),
            }
        }
        Err(error) => return Err(session.fail(&error)),
    };
    files::sort_entries(&mut entries);
    print_stdout(&if args.json {
        format::listing_json(&entries)?
    } else {
        format::listing(&entries)
    })
}
