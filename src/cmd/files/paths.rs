//! `monoreactor rm` and `monoreactor mkdir`: one request per path, the paths the server
//! refuses reported one by one.

use clap::Args;
use monoreactor::client::ClientError;
use monoreactor::client::files::{self, FileClient};

use super::{SERVER_REFUSED, ServerArgs, Session};
use crate::failure::{Failure, say};

/// What `rm --help` says after the flags.
const RM_HELP: &str = file_help!(
    "Removes files, symlinks (the link itself) and empty directories, one PATH after another;
a PATH the server refuses is reported and the others are still tried (exit status 1)."
);

/// What `mkdir --help` says after the flags.
const MKDIR_HELP: &str = file_help!(
    "Creates each directory, one level at a time: its parent must exist. A PATH the server
refuses (exists, no parent) is reported and the others are still tried (exit status 1)."
);

/// The flags of `rm`.
#[derive(Args)]
#[command(after_help = RM_HELP)]
pub struct RmArgs {
    #[command(flatten)]
    paths: PathsArgs,
}

/// The flags of `mkdir`.
#[derive(Args)]
#[command(after_help = MKDIR_HELP)]
pub struct MkdirArgs {
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

/// Removes each path.
pub fn rm(args: RmArgs) -> Result<(), Failure> {
    each_path(args.paths, "rm", |client, path| client.delete(path))
}

/// Creates each directory.
pub fn mkdir(args: MkdirArgs) -> Result<(), Failure> {
    each_path(args.paths, "mkdir", |client, path| client.mkdir(path))
}

/// One request per path: a path the server refuses is reported and the next one tried
/// (exit status 1 at the end); any other failure stops at once.
fn each_path(
    args: PathsArgs,
    command: &str,
    mut request: impl FnMut(&mut FileClient, &str) -> Result<(), ClientError>,
) -> Result<(), Failure> {
    let mut paths = Vec::with_capacity(args.paths.len());
    for text in &args.paths {
        let path = if command == "rm" {
            files::normalize_removable(text)
        } else {
            files::normalize_remote(text)
        }
        .map_err(Failure::usage)?;
        if path.is_empty() {
            return Err(Failure::usage(format!(
                "`{text}` is the server's root; {command} needs a path beneath it"
            )));
        }
        paths.push(path);
    }
    let mut session = Session::open(args.server)?;
    let mut refused = false;
    for path in &paths {
        if let Err(error) = request(&mut session.client, path) {
            let failure = session.fail(&error);
            if failure.status != SERVER_REFUSED {
                return Err(failure);
            }
            refused = true;
            if let Some(message) = failure.message {
                say(&format!("{command} {path}: {message}"));
            }
        }
    }
    if refused {
        return Err(Failure {
            status: SERVER_REFUSED,
            message: None,
        });
    }
    Ok(())
}
