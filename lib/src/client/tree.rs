//! Whole trees, and many files, on one connection, pipelined: `monoreactor put -r` and
//! `get -r` (and `put a b c DIR`, `get a b c DIR`) are layers over this.
//!
//! [`FileClient`]'s own methods make one request at a time and wait for its answer: fine for
//! one big file, a round trip per file for a tree of small ones. Here up to
//! [`TreeOptions::window`] transfers are in flight at once, each on its own stream, and every
//! frame that comes back is handed to the transfer of its stream — so a thousand 4 KiB files
//! cost about as many round trips as thirty-two. The window stays at or under the server's
//! per-connection stream limit (32 by default: [`DEFAULT_WINDOW`]); a transfer refused with
//! `LIMIT_REACHED` anyway (a server with a lower limit, or its `--max-transfers` reached) is
//! queued again once and the window narrowed to what was in flight.
//!
//! Each file keeps the guarantees of a single transfer: BLAKE3 end to end, an upload declared
//! with its hash (so it can be resumed with `RESUME`), a download into a part file renamed
//! over its destination only once verified ([`super::files::part_path`]). A file that fails
//! fails alone: the others go on, and the failures are returned ([`Failed`]) for the caller
//! to report (the command then fails). Only a connection that breaks ends everything.
//!
//! **Resuming a tree** ([`TreeOptions::resume`]): a file the other side already has — same
//! size, same BLAKE3 — is skipped ([`remote_matches`]: STAT's hash when the server knows it,
//! else a GET from offset `size`, which carries no data but ends with the whole remote file's
//! DIGEST); an upload goes with `RESUME` (the server keeps what it holds of it), a download
//! resumes from its part file.
//!
//! **Durability.** Uploads are made durable by the server as today (each file and its
//! directory synced before its DIGEST). Downloads are not synced one by one (a sync per file
//! is what makes a tree of small files slow): with [`TreeOptions::durable`], once every file
//! has been renamed into place, the destination's file system is synced once (`syncfs`)
//! before [`get_files`] returns, so a tree reported complete is on disk.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use log::debug;

use super::files::{FileClient, hash_reader, hex, local, open_part, part_path, server_error};
use super::{ClientError, Pieces, Received};
use crate::proto::files::{
    Digest, FileInfo, FileKind, GetRequest, Hash, PutAttrs, PutFlags, PutReady, PutRequest,
    SetAttrsRequest,
};
use crate::proto::path::{MAX_PATH_LEN, check_relative};
use crate::proto::{ErrorCode, ErrorMessage, Flags, Frame, FrameType, HEADER_LEN, Header};

/// Transfers in flight at once by default: the server's default per-connection limit
/// ([`crate::MAX_STREAMS_PER_CONNECTION`]). Against 8, it takes a quarter less of the server's
/// CPU per small file (more requests per read and per reply) and a tree of small files goes
/// up to a third faster (docs/PERFORMANCE.md, "Whole trees").
pub const DEFAULT_WINDOW: usize = 32;

/// Batched small uploads are written once they hold this much.
const BATCH_BYTES: usize = 256 << 10;

/// A file at most this long is read whole, hashed, and sent in one write with its PUT and
/// DIGEST; a longer one is hashed in a first pass, then streamed.
const SMALL_FILE: u64 = 256 << 10;

/// How often a transfer refused for a limit (`LIMIT_REACHED`: the connection's streams, the
/// server's transfers) is tried again, each time with the window narrowed to what was still
/// in flight when the refusal came.
const MAX_TRIES: u8 = 8;

/// How often an upload refused with `UPLOAD_BUSY` (another server process still receives it:
/// a connection of an interrupted run it has not seen close yet) is tried again, after a
/// pause that doubles from [`BUSY_PAUSE`] up to [`BUSY_PAUSE_MAX`]: about two minutes in all,
/// as long as a single `put` waits for it.
const BUSY_TRIES: u8 = 64;

/// The first pause before an upload refused with `UPLOAD_BUSY` is tried again.
const BUSY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// The longest pause between two tries of an upload refused with `UPLOAD_BUSY`.
const BUSY_PAUSE_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// Requests answered at once (MKDIR) sent before their answers are read.
const MKDIR_BATCH: usize = 64;

/// Mode and modification time, carried with `-p`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attrs {
    /// Permission bits (`0o777` at most).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// One local file to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutItem {
    /// Where it is read from.
    pub local: PathBuf,
    /// Where it goes, a request path.
    pub remote: String,
    /// Its size when the tree was walked.
    pub size: u64,
    /// Its mode and mtime, if they are to be carried (`-p`).
    pub attrs: Option<Attrs>,
}

/// One remote file to download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GetItem {
    /// The request path.
    pub remote: String,
    /// Where it goes locally (through its part file).
    pub local: PathBuf,
    /// Its size as listed.
    pub size: u64,
    /// Its mtime as listed, applied with [`TreeOptions::preserve`].
    pub mtime_ns: i64,
}

/// What a tree to upload is made of: directories to create (parents first), files, and what
/// was left out, with why.
#[derive(Debug, Default)]
pub struct PutPlan {
    /// Remote directories to create, each after its parent.
    pub dirs: Vec<String>,
    /// With `preserve`: each directory of `dirs` with its local mode and mtime, in the same
    /// order (parents first), to be set once everything inside is stored, deepest first
    /// ([`set_remote_attrs`] of them reversed).
    pub dir_attrs: Vec<(String, Attrs)>,
    /// Files to upload.
    pub files: Vec<PutItem>,
    /// Entries skipped (a symlink not followed, a FIFO, a socket, a device, a name the
    /// protocol cannot carry), one line each.
    pub skipped: Vec<String>,
}

/// What a remote tree to download is made of.
#[derive(Debug, Default)]
pub struct GetPlan {
    /// Local directories to create, each after its parent.
    pub dirs: Vec<PathBuf>,
    /// The remote directory each of `dirs` copies, in the same order: where `-p` reads the
    /// modes and mtimes from ([`remote_dir_attrs`]).
    pub remote_dirs: Vec<(String, PathBuf)>,
    /// Files to download.
    pub files: Vec<GetItem>,
    /// Entries skipped (remote symlinks, which the server never follows; anything else that
    /// is not a file or a directory), one line each.
    pub skipped: Vec<String>,
}

/// How a tree is transferred.
#[derive(Clone, Copy, Debug)]
pub struct TreeOptions {
    /// Skip what the other side already has, resume what it has part of.
    pub resume: bool,
    /// Transfers in flight at once (at least 1).
    pub window: usize,
    /// Carry modes and mtimes (`-p`).
    pub preserve: bool,
    /// Sync once at the end instead of once per file: downloads sync the destination's file
    /// system (`syncfs`) before [`get_files`] returns; uploads go with `DEFER_SYNC`, but the
    /// last one with `SYNC_FS`, sent once every other is stored, so that its DIGEST vouches
    /// for all of them. Without it, downloads are not synced at all and each upload is
    /// synced by the server on its own, as a single `put` is.
    pub durable: bool,
}

impl Default for TreeOptions {
    fn default() -> TreeOptions {
        TreeOptions {
            resume: false,
            window: DEFAULT_WINDOW,
            preserve: false,
            durable: true,
        }
    }
}

/// Where a tree transfer is, for a progress bar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Files in the transfer.
    pub files: u64,
    /// Files finished (stored, verified, or skipped as already there).
    pub files_done: u64,
    /// Files skipped as already there ([`TreeOptions::resume`]).
    pub skipped: u64,
    /// Bytes in the transfer.
    pub bytes: u64,
    /// Bytes finished (sent, received, or already there).
    pub bytes_done: u64,
}

/// A file that failed, and why.
#[derive(Debug)]
pub struct Failed {
    /// The file (the remote path for an upload, the local one for a download).
    pub path: String,
    /// Why.
    pub error: ClientError,
}

impl Tally {
    fn of<'a>(sizes: impl Iterator<Item = &'a u64>) -> Tally {
        let mut tally = Tally::default();
        for size in sizes {
            tally.files += 1;
            tally.bytes += size;
        }
        tally
    }
}

/// `dir/name` as a request path (`name` alone in the root).
pub fn join_remote(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Walks the local `source` (a directory, or with `follow` a symlink to one) into a plan that
/// recreates it as `remote` (which becomes the directory itself, created if missing). A
/// symlink inside is skipped unless `follow`, then it is taken for what it points to (a
/// directory seen again on the way down, a loop, is skipped); FIFOs, sockets and devices are
/// skipped; so is a name that is not UTF-8 or that the protocol refuses. With `preserve`,
/// each file carries its mode and mtime.
pub fn plan_put(
    source: &Path,
    remote: &str,
    follow: bool,
    preserve: bool,
    plan: &mut PutPlan,
) -> io::Result<()> {
    let meta = fs::metadata(source)?;
    plan.dirs.push(remote.to_string());
    if preserve {
        plan.dir_attrs.push((remote.to_string(), attrs_of(&meta)));
    }
    let mut ancestors = vec![(meta.dev(), meta.ino())];
    walk_local(source, remote, follow, preserve, &mut ancestors, plan)
}

fn walk_local(
    dir: &Path,
    remote: &str,
    follow: bool,
    preserve: bool,
    ancestors: &mut Vec<(u64, u64)>,
    plan: &mut PutPlan,
) -> io::Result<()> {
    let mut entries = fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    // A stable order: the same tree is sent (and resumed) the same way.
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            plan.skipped.push(format!(
                "{}: the name is not UTF-8, which the protocol cannot carry",
                path.display()
            ));
            continue;
        };
        let target = join_remote(remote, &name);
        if let Err(error) = check_relative(&target) {
            plan.skipped
                .push(format!("{}: cannot be stored: {error}", path.display()));
            continue;
        }
        let mut meta = fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            if !follow {
                plan.skipped.push(format!(
                    "{}: a symlink, not followed (-L follows symlinks)",
                    path.display()
                ));
                continue;
            }
            meta = match fs::metadata(&path) {
                Ok(meta) => meta,
                Err(error) => {
                    plan.skipped.push(format!(
                        "{}: a symlink that cannot be followed: {error}",
                        path.display()
                    ));
                    continue;
                }
            };
        }
        if meta.is_dir() {
            let key = (meta.dev(), meta.ino());
            if ancestors.contains(&key) {
                plan.skipped.push(format!(
                    "{}: a symlink loop (a directory that contains it)",
                    path.display()
                ));
                continue;
            }
            plan.dirs.push(target.clone());
            if preserve {
                plan.dir_attrs.push((target.clone(), attrs_of(&meta)));
            }
            ancestors.push(key);
            let walked = walk_local(&path, &target, follow, preserve, ancestors, plan);
            ancestors.pop();
            walked?;
        } else if meta.is_file() {
            plan.files.push(PutItem {
                local: path,
                remote: target,
                size: meta.len(),
                attrs: preserve.then(|| attrs_of(&meta)),
            });
        } else {
            plan.skipped.push(format!(
                "{}: not a regular file or a directory (a FIFO, a socket or a device)",
                path.display()
            ));
        }
    }
    Ok(())
}

/// A local file's mode (permission bits only) and mtime.
pub fn attrs_of(meta: &fs::Metadata) -> Attrs {
    Attrs {
        mode: meta.mode() & 0o777,
        mtime_ns: meta
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
    }
}

/// Lists the remote directory `remote` recursively (one LIST per directory) into a plan that
/// recreates it as `local` (created if missing).
pub fn plan_get(
    client: &mut FileClient,
    remote: &str,
    local: &Path,
    plan: &mut GetPlan,
) -> Result<(), ClientError> {
    let mut pending = VecDeque::from([(remote.to_string(), local.to_path_buf())]);
    while let Some((dir, into)) = pending.pop_front() {
        plan.dirs.push(into.clone());
        plan.remote_dirs.push((dir.clone(), into.clone()));
        let mut entries = client.list(&dir)?;
        super::files::sort_entries(&mut entries);
        for entry in entries {
            let path = join_remote(&dir, &entry.name);
            // The name becomes a local path: one a broken or hostile server lists as `..`,
            // `/etc/x` or `a/../../b` would write outside `local` (scp's CVE-2019-6111), and
            // a path longer than a request can carry is a tree without end.
            if !super::glob::is_one_component(&entry.name) || path.len() > MAX_PATH_LEN {
                plan.skipped.push(format!(
                    "{}: the server listed a name that is not one path component, skipped",
                    entry.name.escape_debug()
                ));
                continue;
            }
            match entry.kind {
                FileKind::File => plan.files.push(GetItem {
                    remote: path,
                    local: into.join(&entry.name),
                    size: entry.size,
                    mtime_ns: entry.mtime_ns,
                }),
                FileKind::Directory => pending.push_back((path, into.join(&entry.name))),
                // An interrupted upload: not a file yet.
                FileKind::Partial => {}
                FileKind::Symlink => plan
                    .skipped
                    .push(format!("{path}: a symlink on the server, never followed")),
                FileKind::Other => plan.skipped.push(format!(
                    "{path}: not a regular file or a directory on the server"
                )),
            }
        }
    }
    Ok(())
}

/// Creates the remote directories `dirs` (parents first), pipelined: one that already exists
/// is fine. Returns those that could not be created.
pub fn make_remote_dirs(
    client: &mut FileClient,
    dirs: &[String],
) -> Result<Vec<Failed>, ClientError> {
    let mut failed = Vec::new();
    for batch in dirs.chunks(MKDIR_BATCH) {
        let mut streams = Vec::with_capacity(batch.len());
        let mut wire = Vec::new();
        for dir in batch.iter().filter(|dir| !dir.is_empty()) {
            let stream = client.open_stream();
            wire.extend_from_slice(
                &Frame::new(FrameType::Mkdir, Flags::NONE, stream, dir.as_bytes()).to_vec(),
            );
            streams.push((stream, dir));
        }
        client.raw().send_raw(&wire)?;
        let mut answered = 0;
        while answered < streams.len() {
            let frame = client.raw().recv_frame()?;
            let header = frame.header;
            if header.stream == 0 && header.frame_type == FrameType::Error {
                return Err(server_error(&frame.payload));
            }
            let Some((_, dir)) = streams.iter().find(|(stream, _)| *stream == header.stream) else {
                continue;
            };
            match header.frame_type {
                FrameType::Done => {}
                FrameType::Error => match server_error(&frame.payload) {
                    ClientError::Server {
                        code: ErrorCode::AlreadyExists,
                        ..
                    } => {}
                    error => failed.push(Failed {
                        path: dir.to_string(),
                        error,
                    }),
                },
                other => {
                    failed.push(Failed {
                        path: dir.to_string(),
                        error: ClientError::Unexpected(other),
                    });
                }
            }
            answered += 1;
        }
    }
    Ok(failed)
}

/// What [`set_remote_attrs`] came to.
#[derive(Debug, Default)]
pub struct AttrsOutcome {
    /// The paths whose attributes could not be set, and why.
    pub failed: Vec<Failed>,
    /// The server does not know SET_ATTRS (a version before it: `UNKNOWN_FRAME_TYPE`): no
    /// attribute was set, which the caller reports as one warning, not as failures.
    pub unsupported: bool,
}

/// Gives each remote path of `targets` its mode (permission bits only) and mtime, in the
/// order given, pipelined (SET_ATTRS is answered at once, and in order): a directory's must
/// come after everything inside it is stored and after its subdirectories' — writing in a
/// directory moves its mtime — so a tree passes its directories deepest first. The root
/// (the empty path) is left alone: the server refuses to change it.
pub fn set_remote_attrs(
    client: &mut FileClient,
    targets: &[(String, Attrs)],
) -> Result<AttrsOutcome, ClientError> {
    let targets: Vec<&(String, Attrs)> = targets
        .iter()
        .filter(|(path, _)| !path.is_empty())
        .collect();
    let mut outcome = AttrsOutcome::default();
    let answers = pipelined(client, targets.len(), MKDIR_BATCH, |at| {
        let (path, attrs) = targets[at];
        let request = SetAttrsRequest {
            attrs: PutAttrs {
                mode: attrs.mode,
                mtime_ns: attrs.mtime_ns,
            },
            path,
        };
        (FrameType::SetAttrs, request.to_payload())
    })?;
    for ((path, _), frames) in targets.iter().zip(answers) {
        let Some(last) = frames.last() else {
            continue;
        };
        let error = match last.header.frame_type {
            FrameType::Done => continue,
            FrameType::Error => server_error(&last.payload),
            other => ClientError::Unexpected(other),
        };
        if error.server_code() == Some(ErrorCode::UnknownFrameType) {
            outcome.unsupported = true;
            continue;
        }
        outcome.failed.push(Failed {
            path: path.clone(),
            error,
        });
    }
    Ok(outcome)
}

/// A local directory's mode and mtime to set, from its remote copy's STAT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalDirAttrs {
    /// The local directory.
    pub local: PathBuf,
    /// The server's permission bits; `None` from a server whose STAT does not carry them.
    pub mode: Option<u32>,
    /// The server's mtime.
    pub mtime_ns: i64,
}

/// The mode and mtime of each remote directory of a [`GetPlan`] (`remote_dirs`), by STATs,
/// pipelined; in the plan's order (parents first). A directory that cannot be STATed (gone
/// meanwhile) fails alone.
pub fn remote_dir_attrs(
    client: &mut FileClient,
    dirs: &[(String, PathBuf)],
) -> Result<(Vec<LocalDirAttrs>, Vec<Failed>), ClientError> {
    let answers = pipelined(client, dirs.len(), MKDIR_BATCH, |at| {
        (FrameType::Stat, dirs[at].0.as_bytes().to_vec())
    })?;
    let mut attrs = Vec::new();
    let mut failed = Vec::new();
    for ((remote, local), frames) in dirs.iter().zip(answers) {
        let Some(last) = frames.last() else {
            continue;
        };
        match last.header.frame_type {
            FrameType::FileInfo => {
                let info = FileInfo::parse(&last.payload).map_err(ClientError::Message)?;
                attrs.push(LocalDirAttrs {
                    local: local.clone(),
                    mode: FileInfo::parse_mode(&last.payload),
                    mtime_ns: info.mtime_ns,
                });
            }
            FrameType::Error => failed.push(Failed {
                path: remote.clone(),
                error: server_error(&last.payload),
            }),
            other => failed.push(Failed {
                path: remote.clone(),
                error: ClientError::Unexpected(other),
            }),
        }
    }
    Ok((attrs, failed))
}

/// Gives local directories their remote copies' modes and mtimes, deepest first (`dirs` in
/// a plan's order, parents first, is walked backwards), once every file inside them is in
/// place: writing in a directory moves its mtime.
pub fn set_local_dir_attrs(dirs: &[LocalDirAttrs]) -> Vec<Failed> {
    let mut failed = Vec::new();
    for dir in dirs.iter().rev() {
        if let Err(error) = set_local_attrs(&dir.local, dir.mode, dir.mtime_ns) {
            failed.push(Failed {
                path: dir.local.display().to_string(),
                error,
            });
        }
    }
    failed
}

/// A file the other side may already have: its request path, size and BLAKE3.
#[derive(Clone, Copy, Debug)]
pub struct Wanted<'a> {
    /// The request path.
    pub remote: &'a str,
    /// Its size here.
    pub size: u64,
    /// Its BLAKE3 here.
    pub hash: Hash,
}

/// Which of `wanted` the server already has: a regular file of the same size hashing the
/// same. STATs first, pipelined (answered at once); the server's hash when it knows it, else
/// a GET from offset `size`, pipelined [`DEFAULT_WINDOW`] at a time, which carries no DATA but
/// ends with the DIGEST of the whole remote file (the server hashes it). A refusal (not
/// found, a directory) is `false`; only a broken connection is an error.
pub fn remote_matches(
    client: &mut FileClient,
    wanted: &[Wanted<'_>],
) -> Result<Vec<bool>, ClientError> {
    Ok(remote_matches_with_modes(client, wanted)?.0)
}

/// [`remote_matches`], and the permission bits each STAT reported (`None`: not found, or a
/// server before STAT carried them), for `get --continue -p` to give a skipped file.
pub fn remote_matches_with_modes(
    client: &mut FileClient,
    wanted: &[Wanted<'_>],
) -> Result<(Vec<bool>, Vec<Option<u32>>), ClientError> {
    let mut matches = vec![false; wanted.len()];
    let mut modes = vec![None; wanted.len()];
    let mut unknown = Vec::new();
    for (batch_at, batch) in wanted.chunks(MKDIR_BATCH).enumerate() {
        let frames = pipelined(client, batch.len(), batch.len(), |at| {
            (FrameType::Stat, batch[at].remote.as_bytes().to_vec())
        })?;
        for (at, frames) in frames.into_iter().enumerate() {
            let index = batch_at * MKDIR_BATCH + at;
            let Some(frame) = frames.first() else {
                continue;
            };
            if frame.header.frame_type != FrameType::FileInfo {
                continue;
            }
            let info = FileInfo::parse(&frame.payload).map_err(ClientError::Message)?;
            if info.kind != FileKind::File || info.size != wanted[index].size {
                continue;
            }
            modes[index] = FileInfo::parse_mode(&frame.payload);
            match info.hash {
                Some(known) => matches[index] = known == wanted[index].hash,
                None => unknown.push(index),
            }
        }
    }
    let frames = pipelined(client, unknown.len(), DEFAULT_WINDOW, |at| {
        let want = &wanted[unknown[at]];
        let request = GetRequest {
            offset: want.size,
            path: want.remote,
        };
        let mut payload = vec![0; request.payload_len()];
        request.emit(&mut payload);
        (FrameType::Get, payload)
    })?;
    for (at, frames) in frames.into_iter().enumerate() {
        let want = &wanted[unknown[at]];
        let mut same = false;
        for frame in &frames {
            match frame.header.frame_type {
                // Bytes past `size`: it changed since the STAT.
                FrameType::Data | FrameType::Error => same = false,
                FrameType::FileInfo => {
                    let info = FileInfo::parse(&frame.payload).map_err(ClientError::Message)?;
                    if info.size != want.size {
                        break;
                    }
                }
                FrameType::Digest => {
                    same = Digest::parse(&frame.payload)
                        .map_err(ClientError::Message)?
                        .hash
                        == want.hash;
                }
                _ => {}
            }
        }
        matches[unknown[at]] = same;
    }
    Ok((matches, modes))
}

/// Sends `count` requests (`request(i)` builds the i-th), at most `window` unanswered at a
/// time, and collects each one's frames up to the one with END_STREAM (DATA payloads left
/// out). An ERROR on stream 0 ends it.
fn pipelined(
    client: &mut FileClient,
    count: usize,
    window: usize,
    mut request: impl FnMut(usize) -> (FrameType, Vec<u8>),
) -> Result<Vec<Vec<super::OwnedFrame>>, ClientError> {
    let mut answers: Vec<Vec<super::OwnedFrame>> = (0..count).map(|_| Vec::new()).collect();
    let mut open: HashMap<u32, usize> = HashMap::new();
    let mut next = 0;
    let mut wire = Vec::new();
    while next < count || !open.is_empty() {
        while next < count && open.len() < window.max(1) {
            let (frame_type, payload) = request(next);
            let stream = client.open_stream();
            wire.extend_from_slice(&Frame::new(frame_type, Flags::NONE, stream, &payload).to_vec());
            open.insert(stream, next);
            next += 1;
        }
        if !wire.is_empty() {
            client.raw().send_raw(&wire)?;
            wire.clear();
        }
        let mut frame = client.raw().recv_frame()?;
        let header = frame.header;
        if header.frame_type == FrameType::Error && header.stream == 0 {
            return Err(server_error(&frame.payload));
        }
        let Some(&index) = open.get(&header.stream) else {
            continue;
        };
        if header.flags.contains(Flags::END_STREAM) {
            open.remove(&header.stream);
        }
        if header.frame_type == FrameType::Data {
            frame.payload = Vec::new();
        }
        answers[index].push(frame);
    }
    Ok(answers)
}

/// An upload in flight.
struct Sending {
    index: usize,
    hash: Hash,
    /// The file, kept open between PUT and PUT_READY for a resumed upload.
    file: Option<File>,
    resume: bool,
    tries: u8,
    /// It carries the sync of all (`SYNC_FS`).
    syncs: bool,
}

/// Uploads `items`, pipelined ([`TreeOptions::window`] at once). Returns the files that
/// failed; `Err` only if the connection failed. `progress` is called as files and bytes go.
pub fn put_files(
    client: &mut FileClient,
    items: &[PutItem],
    options: &TreeOptions,
    progress: &mut dyn FnMut(&Tally),
) -> Result<Vec<Failed>, ClientError> {
    Ok(put_files_reporting(client, items, options, progress)?.failed)
}

/// What [`put_files_reporting`] came to.
#[derive(Debug, Default)]
pub struct PutOutcome {
    /// The files that failed, and why.
    pub failed: Vec<Failed>,
    /// The indices in `items` of the files skipped as already stored ([`TreeOptions::resume`]):
    /// not sent, so a PUT's `ATTRS` did not give them their mode and mtime (`put --continue
    /// -p` sends them a SET_ATTRS instead).
    pub skipped: Vec<usize>,
}

/// [`put_files`], saying also which files were skipped as already there.
pub fn put_files_reporting(
    client: &mut FileClient,
    items: &[PutItem],
    options: &TreeOptions,
    progress: &mut dyn FnMut(&Tally),
) -> Result<PutOutcome, ClientError> {
    let mut skipped = Vec::new();
    let failed = upload_all(client, items, options, progress, &mut skipped)?;
    Ok(PutOutcome { failed, skipped })
}

fn upload_all(
    client: &mut FileClient,
    items: &[PutItem],
    options: &TreeOptions,
    progress: &mut dyn FnMut(&Tally),
    skipped: &mut Vec<usize>,
) -> Result<Vec<Failed>, ClientError> {
    let mut run = PutRun {
        items,
        options,
        tally: Tally::of(items.iter().map(|item| &item.size)),
        failed: Vec::new(),
        in_flight: HashMap::new(),
        ready: VecDeque::new(),
        window: options.window.max(1),
        hashes: vec![None; items.len()],
        retry: VecDeque::new(),
        not_before: HashMap::new(),
        synced: false,
        smallest_stored: None,
        sync_again: false,
        ahead: None,
        unhashed: HashMap::new(),
        batch: Vec::new(),
    };
    progress(&run.tally);
    let mut queue: VecDeque<(usize, u8)> = VecDeque::new();
    if options.resume {
        // Hashed first, all of them: what the server has is asked about in one pipeline.
        let mut wanted = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match hash_file(&item.local, item.size) {
                Ok(hash) => {
                    run.hashes[index] = Some(hash);
                    wanted.push((index, hash));
                }
                Err(error) => run.fail(index, error),
            }
        }
        let asked: Vec<Wanted<'_>> = wanted
            .iter()
            .map(|&(index, hash)| Wanted {
                remote: &items[index].remote,
                size: items[index].size,
                hash,
            })
            .collect();
        let there = remote_matches(client, &asked)?;
        for (&(index, _), there) in wanted.iter().zip(there) {
            if there {
                debug!("{}: already there", items[index].remote);
                skipped.push(index);
                run.tally.files_done += 1;
                run.tally.skipped += 1;
                run.tally.bytes_done += items[index].size;
            } else {
                queue.push_back((index, 0));
            }
        }
        progress(&run.tally);
    } else {
        queue.extend((0..items.len()).map(|index| (index, 0)));
    }
    if options.durable && queue.is_empty() && run.tally.skipped > 0 {
        // Everything was there already, maybe from an interrupted run whose uploads were
        // never synced: the smallest file goes again, to carry the file system's sync.
        let smallest = (0..items.len())
            .filter(|&index| run.hashes[index].is_some())
            .min_by_key(|&index| items[index].size);
        if let Some(index) = smallest {
            skipped.retain(|&other| other != index);
            run.tally.files_done -= 1;
            run.tally.skipped -= 1;
            run.tally.bytes_done -= items[index].size;
            queue.push_back((index, 0));
        }
    }
    if options.resume || items.iter().all(|item| item.size <= SMALL_FILE) {
        return drive_puts(&mut run, client, queue, progress);
    }
    // Large files are hashed a little ahead, on a thread of their own, while the ones before
    // them are sent: the hash must be declared before the first byte, and reading it twice
    // on one thread would leave the network idle during each hashing pass.
    let large: Vec<usize> = (0..items.len())
        .filter(|&index| items[index].size > SMALL_FILE)
        .collect();
    std::thread::scope(|scope| {
        let (ahead, hashed) = std::sync::mpsc::sync_channel(HASH_AHEAD);
        scope.spawn(move || {
            for index in large {
                let result = hash_file(&items[index].local, items[index].size);
                if ahead.send((index, result)).is_err() {
                    return; // The transfer ended.
                }
            }
        });
        run.ahead = Some(hashed);
        let result = drive_puts(&mut run, client, queue, progress);
        // Dropped before the scope waits for the thread: its next send fails, and it ends.
        run.ahead = None;
        result
    })
}

/// Files of at least [`SMALL_FILE`] bytes hashed ahead of the one being sent.
const HASH_AHEAD: usize = 2;

/// [`put_files`]' loop: starts uploads while the window has room, sends what PUT_READY let
/// go, and hands each frame from the server to its upload.
fn drive_puts(
    run: &mut PutRun<'_>,
    client: &mut FileClient,
    mut queue: VecDeque<(usize, u8)>,
    progress: &mut dyn FnMut(&Tally),
) -> Result<Vec<Failed>, ClientError> {
    let options = run.options;
    loop {
        while let Some((stream, held)) = run.ready.pop_front() {
            run.send_body(client, stream, held, progress)?;
        }
        // Refused for a limit while another was being sent: tried again first.
        while let Some(retry) = run.retry.pop_back() {
            queue.push_front(retry);
        }
        // The last upload carries the sync of all: it waits until every other is stored.
        let hold_last = |run: &PutRun<'_>, queue: &VecDeque<(usize, u8)>| {
            options.durable
                && queue.len() == 1
                && !(run.in_flight.is_empty() && run.ready.is_empty())
        };
        // An upload refused as busy waits out its pause at the head of the queue, where
        // nothing overtakes it: the file that goes last, with the sync of all, still does.
        let paused = |run: &PutRun<'_>, queue: &VecDeque<(usize, u8)>| {
            queue
                .front()
                .and_then(|(index, _)| run.not_before.get(index))
                .and_then(|at| at.checked_duration_since(std::time::Instant::now()))
        };
        if run.in_flight.is_empty() && run.ready.is_empty() {
            if let Some(pause) = paused(run, &queue) {
                std::thread::sleep(pause);
            }
        }
        // Refilled once half the window is free, not at every answer: small uploads then go
        // out many to a write, and the other half keeps the server busy meanwhile.
        let refill = run.in_flight.len() <= run.window / 2;
        while refill
            && run.in_flight.len() < run.window
            && !hold_last(run, &queue)
            && paused(run, &queue).is_none()
        {
            let Some((index, tries)) = queue.pop_front() else {
                break;
            };
            let last = options.durable && queue.is_empty();
            run.start(client, index, tries, last, progress)?;
        }
        run.flush(client)?;
        if run.in_flight.is_empty() && queue.is_empty() && run.ready.is_empty() {
            // The upload that carried the sync of all failed (refused, unreadable here):
            // the others were stored with DEFER_SYNC and nothing synced them. A file stored
            // already goes again, once, to carry it.
            match run.smallest_stored {
                Some(index) if options.durable && !run.synced && !run.sync_again => {
                    debug!("{}: sent again to carry the sync", run.items[index].remote);
                    run.sync_again = true;
                    run.tally.files_done = run.tally.files_done.saturating_sub(1);
                    run.tally.bytes_done =
                        run.tally.bytes_done.saturating_sub(run.items[index].size);
                    queue.push_back((index, 0));
                    continue;
                }
                _ => return Ok(std::mem::take(&mut run.failed)),
            }
        }
        if !run.ready.is_empty()
            || (run.in_flight.len() <= run.window / 2
                && !queue.is_empty()
                && !hold_last(run, &queue)
                && paused(run, &queue).is_none())
        {
            continue;
        }
        let frame = client.raw().recv_frame()?;
        run.handle(frame.header, &frame.payload, progress)?;
    }
}

struct PutRun<'a> {
    items: &'a [PutItem],
    options: &'a TreeOptions,
    tally: Tally,
    failed: Vec<Failed>,
    in_flight: HashMap<u32, Sending>,
    /// Resumed uploads whose PUT_READY came: (stream, bytes held).
    ready: VecDeque<(u32, u64)>,
    window: usize,
    /// Hashes known before the upload starts (a resume hashes everything first).
    hashes: Vec<Option<Hash>>,
    /// Uploads refused for a limit, to be tried once more.
    retry: VecDeque<(usize, u8)>,
    /// When an upload refused as busy may be tried again.
    not_before: HashMap<usize, std::time::Instant>,
    /// A `SYNC_FS` upload was stored: every upload stored before it is durable.
    synced: bool,
    /// The smallest file stored in this run, to carry the sync again if the last one fails.
    smallest_stored: Option<usize>,
    /// The sync was carried again once already.
    sync_again: bool,
    /// Hashes of large files computed ahead, in order, on a thread of their own.
    ahead: Option<std::sync::mpsc::Receiver<(usize, Result<Hash, ClientError>)>>,
    /// What that thread could not hash, until the file's turn comes.
    unhashed: HashMap<usize, ClientError>,
    /// Small uploads (PUT, DATA and DIGEST each) not yet written: sent many to a write
    /// ([`PutRun::flush`]), always before anything else goes out.
    batch: Vec<u8>,
}

impl PutRun<'_> {
    fn fail(&mut self, index: usize, error: ClientError) {
        self.tally.files_done += 1;
        self.failed.push(Failed {
            path: self.items[index].remote.clone(),
            error,
        });
    }

    /// Opens and hashes item `index`, and sends its PUT — with its DATA and DIGEST right
    /// behind unless it resumes (which waits for PUT_READY to know where to start).
    fn start(
        &mut self,
        client: &mut FileClient,
        index: usize,
        tries: u8,
        last: bool,
        progress: &mut dyn FnMut(&Tally),
    ) -> Result<(), ClientError> {
        let item = &self.items[index];
        let opened = File::open(&item.local)
            .map_err(|source| local(&format!("open {}", item.local.display()), source));
        let mut file = match opened {
            Ok(file) => file,
            Err(error) => {
                self.fail(index, error);
                return Ok(());
            }
        };
        let size = item.size;
        // A small file is read once, hashed, and sent with its PUT in one write — with
        // `--continue` too, although it was hashed already to ask the server about it: it
        // goes unnamed either way (below), and what is sent is what was read now.
        let mut whole = None;
        let hashed = if size <= SMALL_FILE {
            let mut bytes = Vec::with_capacity(size as usize);
            match (&mut file).take(size + 1).read_to_end(&mut bytes) {
                Ok(_) if bytes.len() as u64 == size => {
                    let hash = *blake3::hash(&bytes).as_bytes();
                    whole = Some(bytes);
                    Ok(hash)
                }
                Ok(_) => Err(changed(&item.local)),
                Err(source) => Err(local(&format!("read {}", item.local.display()), source)),
            }
        } else if let Some(hash) = self.hashed_ahead(index) {
            hash
        } else {
            match hash_reader(&mut file, &mut |_| {}) {
                Ok(hasher) if hasher.count() == size => Ok(*hasher.finalize().as_bytes()),
                Ok(_) => Err(changed(&item.local)),
                Err(source) => Err(local(&format!("read {}", item.local.display()), source)),
            }
        };
        let hash = match hashed {
            Ok(hash) => hash,
            Err(error) => {
                self.fail(index, error);
                return Ok(());
            }
        };
        // A small file is not worth resuming: it goes whole, with its hash only in the
        // trailer, so the server keeps it in an unnamed file (no partial to name, lock, index
        // and remove) and links it straight into place. A tree of small files so costs the
        // server one directory change per file instead of four.
        let resume = self.options.resume && whole.is_none();
        let mut flags = if resume {
            PutFlags::RESUME
        } else {
            PutFlags::NONE
        };
        if last {
            flags = flags.with(PutFlags::SYNC_FS);
        } else if self.options.durable {
            flags = flags.with(PutFlags::DEFER_SYNC);
        }
        let request = PutRequest {
            size,
            flags,
            hash: if whole.is_some() { None } else { Some(hash) },
            attrs: item.attrs.map(|attrs| PutAttrs {
                mode: attrs.mode,
                mtime_ns: attrs.mtime_ns,
            }),
            path: &item.remote,
        };
        let mut payload = vec![0; request.payload_len()];
        request.emit(&mut payload);
        let max = client.hello_ok().max_payload_len as usize;
        if payload.len() > max {
            self.fail(
                index,
                ClientError::TooLarge {
                    len: payload.len(),
                    max: max as u32,
                },
            );
            return Ok(());
        }
        let stream = client.open_stream();
        self.in_flight.insert(
            stream,
            Sending {
                index,
                hash,
                file: Some(file),
                resume,
                tries,
                syncs: last,
            },
        );
        let wire = Frame::new(FrameType::Put, Flags::NONE, stream, &payload).to_vec();
        if let Some(bytes) = whole {
            self.batch.extend_from_slice(&wire);
            if !bytes.is_empty() {
                self.batch.extend_from_slice(
                    &Frame::new(FrameType::Data, Flags::NONE, stream, &bytes).to_vec(),
                );
            }
            self.batch.extend_from_slice(&digest_frame(stream, &hash));
            if self.batch.len() >= BATCH_BYTES {
                self.flush(client)?;
            }
            self.tally.bytes_done += size;
            progress(&self.tally);
            return Ok(());
        }
        self.flush(client)?;
        client.raw().send_raw(&wire)?;
        if resume {
            return Ok(());
        }
        self.send_body(client, stream, 0, progress)
    }

    /// Writes the small uploads batched so far.
    fn flush(&mut self, client: &mut FileClient) -> Result<(), ClientError> {
        if !self.batch.is_empty() {
            client.raw().send_raw(&self.batch)?;
            self.batch.clear();
        }
        Ok(())
    }

    /// Item `index`'s hash if it is known already or hashed ahead (waiting for the hashing
    /// thread to reach it); `None`: to be hashed here.
    fn hashed_ahead(&mut self, index: usize) -> Option<Result<Hash, ClientError>> {
        if let Some(hash) = self.hashes[index] {
            return Some(Ok(hash));
        }
        if let Some(error) = self.unhashed.remove(&index) {
            return Some(Err(error));
        }
        let ahead = self.ahead.as_ref()?;
        if self.items[index].size <= SMALL_FILE {
            return None;
        }
        loop {
            let (hashed, result) = ahead.recv().ok()?;
            match result {
                Ok(hash) if hashed == index => {
                    // Kept: a retry after a limit must not wait for the thread again.
                    self.hashes[index] = Some(hash);
                    return Some(Ok(hash));
                }
                Err(error) if hashed == index => return Some(Err(error)),
                Ok(hash) => self.hashes[hashed] = Some(hash),
                Err(error) => {
                    self.unhashed.insert(hashed, error);
                }
            }
        }
    }

    /// Sends an upload's DATA from `held`, then its DIGEST; between frames, reads what the
    /// server sent meanwhile (an ERROR for this upload stops it).
    fn send_body(
        &mut self,
        client: &mut FileClient,
        stream: u32,
        held: u64,
        progress: &mut dyn FnMut(&Tally),
    ) -> Result<(), ClientError> {
        let Some(sending) = self.in_flight.get_mut(&stream) else {
            return Ok(());
        };
        let index = sending.index;
        let hash = sending.hash;
        let Some(mut file) = sending.file.take() else {
            return Ok(());
        };
        let item = &self.items[index];
        let size = item.size;
        if let Err(source) = file.seek(SeekFrom::Start(held)) {
            let error = local(&format!("seek in {}", item.local.display()), source);
            return self.give_up(client, stream, error);
        }
        self.tally.bytes_done += held;
        let chunk = super::files::MAX_DATA
            .min(client.hello_ok().max_payload_len as usize)
            .max(1);
        let mut wire = vec![0; HEADER_LEN + chunk];
        let mut done = held;
        while done < size {
            let len = chunk.min(usize::try_from(size - done).unwrap_or(usize::MAX));
            if let Err(source) = file.read_exact(&mut wire[HEADER_LEN..HEADER_LEN + len]) {
                let error = if source.kind() == ErrorKind::UnexpectedEof {
                    changed(&item.local)
                } else {
                    local(&format!("read {}", item.local.display()), source)
                };
                return self.give_up(client, stream, error);
            }
            Header {
                frame_type: FrameType::Data,
                flags: Flags::NONE,
                stream,
                len: len as u32,
            }
            .emit(&mut wire[..HEADER_LEN]);
            client.raw().send_raw(&wire[..HEADER_LEN + len])?;
            done += len as u64;
            self.tally.bytes_done += len as u64;
            progress(&self.tally);
            while client.raw().input_pending() {
                let frame = client.raw().recv_frame()?;
                self.handle(frame.header, &frame.payload, progress)?;
                if !self.in_flight.contains_key(&stream) {
                    // Refused meanwhile: stop sending.
                    return Ok(());
                }
            }
        }
        client.raw().send_raw(&digest_frame(stream, &hash))?;
        Ok(())
    }

    /// Abandons upload `stream` for a reason of ours: an ERROR on its stream tells the server.
    fn give_up(
        &mut self,
        client: &mut FileClient,
        stream: u32,
        error: ClientError,
    ) -> Result<(), ClientError> {
        if let Some(sending) = self.in_flight.remove(&stream) {
            self.fail(sending.index, error);
        }
        let mut wire = Vec::new();
        ErrorMessage::new(
            ErrorCode::IoFailed,
            "client gave up on the transfer: a local I/O error",
        )
        .encode(stream, &mut wire);
        client.raw().send_raw(&wire)?;
        Ok(())
    }

    /// One frame from the server.
    fn handle(
        &mut self,
        header: Header,
        payload: &[u8],
        progress: &mut dyn FnMut(&Tally),
    ) -> Result<(), ClientError> {
        if header.frame_type == FrameType::Error && header.stream == 0 {
            return Err(server_error(payload));
        }
        let stream = header.stream;
        let Some(sending) = self.in_flight.get(&stream) else {
            return Ok(());
        };
        match header.frame_type {
            FrameType::PutReady => {
                let ready = PutReady::parse(payload).map_err(ClientError::Message)?;
                if sending.resume {
                    if ready.held > self.items[sending.index].size {
                        let index = sending.index;
                        self.in_flight.remove(&stream);
                        self.fail(
                            index,
                            ClientError::Verify(format!(
                                "the server holds {} bytes of a smaller upload",
                                ready.held
                            )),
                        );
                    } else {
                        self.ready.push_back((stream, ready.held));
                    }
                }
            }
            FrameType::Digest => {
                let Some(sending) = self.in_flight.remove(&stream) else {
                    return Ok(());
                };
                let stored = Digest::parse(payload).map_err(ClientError::Message)?;
                if stored.hash == sending.hash {
                    self.tally.files_done += 1;
                    self.synced |= sending.syncs;
                    let size = |index: usize| self.items[index].size;
                    if self
                        .smallest_stored
                        .is_none_or(|smallest| size(sending.index) < size(smallest))
                    {
                        self.smallest_stored = Some(sending.index);
                    }
                } else {
                    self.fail(
                        sending.index,
                        ClientError::Verify(format!(
                            "the server stored a file that hashes to {}, not the {} sent",
                            hex(&stored.hash),
                            hex(&sending.hash)
                        )),
                    );
                }
                progress(&self.tally);
            }
            FrameType::Error => {
                let Some(sending) = self.in_flight.remove(&stream) else {
                    return Ok(());
                };
                self.ready.retain(|(ready, _)| *ready != stream);
                let error = server_error(payload);
                // Bytes counted as sent for it are not done.
                match error.server_code() {
                    Some(ErrorCode::UploadBusy) if sending.tries < BUSY_TRIES => {
                        let pause = BUSY_PAUSE
                            .saturating_mul(1 << sending.tries.min(6))
                            .min(BUSY_PAUSE_MAX);
                        debug!(
                            "{}: {error}; trying again in {pause:?}",
                            self.items[sending.index].remote
                        );
                        self.not_before
                            .insert(sending.index, std::time::Instant::now() + pause);
                        // The window stays: busy is about this one file, not a limit of the
                        // server's (and the window never grows back once narrowed).
                        self.retry.push_back((sending.index, sending.tries + 1));
                    }
                    Some(ErrorCode::LimitReached) if sending.tries < MAX_TRIES => {
                        debug!(
                            "{}: {error}; trying again",
                            self.items[sending.index].remote
                        );
                        self.window = self.in_flight.len().max(1);
                        self.retry.push_back((sending.index, sending.tries + 1));
                    }
                    _ => self.fail(sending.index, error),
                }
                progress(&self.tally);
            }
            _ => {}
        }
        Ok(())
    }
}

fn digest_frame(stream: u32, hash: &Hash) -> Vec<u8> {
    let mut trailer = [0; Digest::PAYLOAD_LEN];
    Digest { hash: *hash }.emit(&mut trailer);
    Frame::new(FrameType::Digest, Flags::END_STREAM, stream, &trailer).to_vec()
}

/// A download in flight.
struct Receiving {
    index: usize,
    file: File,
    /// The part file's name (its name to be, if `unnamed`).
    part: PathBuf,
    /// The bytes go to an `O_TMPFILE` that is linked straight to the destination's name at
    /// the end ([`open_unnamed`]): a small file, not worth resuming.
    unnamed: bool,
    hasher: blake3::Hasher,
    offset: u64,
    done: u64,
    info: Option<FileInfo>,
    /// The permission bits GET's FILE_INFO carried after its 50 bytes.
    mode: Option<u32>,
    /// A local write that failed: the rest of its DATA is dropped, and it fails at its end.
    broken: Option<ClientError>,
    tries: u8,
}

impl Receiving {
    fn take(&mut self, bytes: &[u8], tally: &mut Tally) {
        if self.broken.is_some() {
            return;
        }
        let total = self.info.map_or(0, |info| info.size);
        if bytes.len() as u64 > total.saturating_sub(self.done) {
            self.broken = Some(ClientError::Verify(format!(
                "the server sent more than the {total} bytes FILE_INFO announced"
            )));
            return;
        }
        if let Err(source) = self.file.write_all(bytes) {
            // An unnamed file has no name yet: naming its part file would send the user
            // looking for (or cleaning up) a file that never existed.
            let what = match (self.unnamed, self.part.parent()) {
                (true, Some(dir)) => format!("write an unnamed file in {}", dir.display()),
                _ => format!("write {}", self.part.display()),
            };
            self.broken = Some(local(&what, source));
            return;
        }
        self.hasher.update(bytes);
        self.done += bytes.len() as u64;
        tally.bytes_done += bytes.len() as u64;
    }
}

/// Hands streamed DATA pieces to the download of their stream.
struct Dispatch<'a> {
    in_flight: &'a mut HashMap<u32, Receiving>,
    tally: &'a mut Tally,
    spare: Option<Vec<u8>>,
}

impl Pieces for Dispatch<'_> {
    fn buffer(&mut self) -> Vec<u8> {
        self.spare.take().unwrap_or_default()
    }

    fn take(&mut self, header: &Header, piece: Vec<u8>, len: usize) -> Result<(), ClientError> {
        if header.frame_type == FrameType::Data {
            if let Some(receiving) = self.in_flight.get_mut(&header.stream) {
                receiving.take(&piece[..len], self.tally);
            }
        }
        self.spare = Some(piece);
        Ok(())
    }
}

/// Downloads `items`, pipelined, each into its part file, verified, then renamed over its
/// destination (whose directory must exist). Returns the files that failed; `Err` only if
/// the connection failed.
pub fn get_files(
    client: &mut FileClient,
    items: &[GetItem],
    options: &TreeOptions,
    progress: &mut dyn FnMut(&Tally),
) -> Result<Vec<Failed>, ClientError> {
    let mut tally = Tally::of(items.iter().map(|item| &item.size));
    let mut failed = Vec::new();
    progress(&tally);
    let mut queue: VecDeque<(usize, u8)> = VecDeque::new();
    let mut here = vec![false; items.len()];
    let mut modes = vec![None; items.len()];
    if options.resume {
        let hashed: Vec<(usize, Hash)> = items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| Some((index, local_hash(item)?)))
            .collect();
        let asked: Vec<Wanted<'_>> = hashed
            .iter()
            .map(|&(index, hash)| Wanted {
                remote: &items[index].remote,
                size: items[index].size,
                hash,
            })
            .collect();
        let (same, remote_modes) = remote_matches_with_modes(client, &asked)?;
        for ((&(index, _), same), mode) in hashed.iter().zip(same).zip(remote_modes) {
            here[index] = same;
            modes[index] = mode;
        }
    }
    for (index, item) in items.iter().enumerate() {
        if here[index] {
            debug!("{}: already here", item.local.display());
            tally.files_done += 1;
            tally.skipped += 1;
            tally.bytes_done += item.size;
            if options.preserve {
                // Skipped, but `-p` still gives it the server's mode (when the server says
                // it) and time.
                if let Err(error) = set_local_attrs(&item.local, modes[index], item.mtime_ns) {
                    failed.push(Failed {
                        path: item.local.display().to_string(),
                        error,
                    });
                }
            }
        } else {
            queue.push_back((index, 0));
        }
    }
    progress(&tally);
    let mut in_flight: HashMap<u32, Receiving> = HashMap::new();
    let mut window = options.window.max(1);
    let mut spare = None;
    // Checked once: linking an `O_TMPFILE` into place goes through /proc.
    let unnamed_possible = Path::new("/proc/self/fd").is_dir();
    let mut requests = Vec::new();
    loop {
        // Refilled once half the window is free, not at every answer: the requests then go
        // out many to a write, and the other half keeps the server busy meanwhile.
        let refill = in_flight.len() <= window / 2;
        while refill && in_flight.len() < window {
            let Some((index, tries)) = queue.pop_front() else {
                break;
            };
            let item = &items[index];
            let unnamed = (item.size <= SMALL_FILE && unnamed_possible)
                .then(|| open_unnamed(&item.local))
                .flatten();
            let opened = match unnamed {
                Some(opened) => {
                    opened.map(|(file, part)| (file, part, blake3::Hasher::new(), true))
                }
                None => open_part(&item.local, options.resume)
                    .map(|(file, part, hasher)| (file, part, hasher, false)),
            };
            match opened {
                Ok((file, part, hasher, unnamed)) => {
                    let offset = hasher.count();
                    let request = GetRequest {
                        offset,
                        path: &item.remote,
                    };
                    let mut payload = vec![0; request.payload_len()];
                    request.emit(&mut payload);
                    let stream = client.open_stream();
                    // Sent together once the window is full: one write for many requests.
                    requests.extend_from_slice(
                        &Frame::new(FrameType::Get, Flags::NONE, stream, &payload).to_vec(),
                    );
                    tally.bytes_done += offset;
                    in_flight.insert(
                        stream,
                        Receiving {
                            index,
                            file,
                            part,
                            unnamed,
                            hasher,
                            offset,
                            done: offset,
                            info: None,
                            mode: None,
                            broken: None,
                            tries,
                        },
                    );
                }
                Err(error) => {
                    tally.files_done += 1;
                    failed.push(Failed {
                        path: item.local.display().to_string(),
                        error,
                    });
                }
            }
        }
        if !requests.is_empty() {
            client.raw().send_raw(&requests)?;
            requests.clear();
        }
        if in_flight.is_empty() && queue.is_empty() {
            break;
        }
        let mut dispatch = Dispatch {
            in_flight: &mut in_flight,
            tally: &mut tally,
            spare: spare.take(),
        };
        let received = client.raw().recv_frame_streaming(&mut dispatch)?;
        spare = dispatch.spare.take();
        let frame = match received {
            Received::Streamed(_) => {
                progress(&tally);
                continue;
            }
            Received::Frame(frame) => frame,
        };
        let header = frame.header;
        if header.frame_type == FrameType::Error && header.stream == 0 {
            return Err(server_error(&frame.payload));
        }
        let Some(receiving) = in_flight.get_mut(&header.stream) else {
            continue;
        };
        match header.frame_type {
            FrameType::FileInfo => match FileInfo::parse(&frame.payload) {
                Ok(info) if info.size >= receiving.offset => {
                    receiving.info = Some(info);
                    receiving.mode = FileInfo::parse_mode(&frame.payload);
                }
                Ok(info) => {
                    receiving.broken = Some(ClientError::Verify(format!(
                        "the server accepted offset {} for a file of {} bytes",
                        receiving.offset, info.size
                    )));
                }
                Err(error) => receiving.broken = Some(ClientError::Message(error)),
            },
            FrameType::Data => {
                receiving.take(&frame.payload, &mut tally);
                progress(&tally);
            }
            FrameType::Digest => {
                let Some(receiving) = in_flight.remove(&header.stream) else {
                    continue;
                };
                let item = &items[receiving.index];
                match finish(receiving, item, &frame.payload, options) {
                    Ok(()) => tally.files_done += 1,
                    Err(error) => {
                        tally.files_done += 1;
                        failed.push(Failed {
                            path: item.local.display().to_string(),
                            error,
                        });
                    }
                }
                progress(&tally);
            }
            FrameType::Error => {
                let Some(receiving) = in_flight.remove(&header.stream) else {
                    continue;
                };
                let item = &items[receiving.index];
                let error = server_error(&frame.payload);
                tally.bytes_done = tally.bytes_done.saturating_sub(receiving.done);
                let len = receiving.done;
                let tries = receiving.tries;
                let retry = tries < MAX_TRIES
                    && match error.server_code() {
                        // A part longer than the file, from another version of it: removed,
                        // and the file fetched from 0.
                        Some(ErrorCode::BadOffset)
                            if receiving.offset > 0 && !receiving.unnamed =>
                        {
                            let _ = fs::remove_file(&receiving.part);
                            true
                        }
                        Some(ErrorCode::LimitReached) => {
                            window = in_flight.len().max(1);
                            true
                        }
                        _ => false,
                    };
                let (index, part) = (receiving.index, receiving.part.clone());
                let unnamed = receiving.unnamed;
                drop(receiving);
                if retry {
                    queue.push_front((index, tries + 1));
                } else {
                    if len == 0 && !unnamed {
                        let _ = fs::remove_file(&part);
                    }
                    tally.files_done += 1;
                    failed.push(Failed {
                        path: item.local.display().to_string(),
                        error,
                    });
                }
                progress(&tally);
            }
            _ => {}
        }
    }
    if options.durable && !items.is_empty() {
        if let Some(first) = items.first() {
            sync_file_system(&first.local);
        }
    }
    Ok(failed)
}

/// Opens an unnamed file (`O_TMPFILE`) in `dest`'s directory for a small download, and
/// `dest`'s part file name; `None` where the file system has no `O_TMPFILE` (the caller then
/// uses a part file). A part file left from before (a run killed part-way) is removed: a
/// small file is fetched whole, and nothing of it may be left behind.
fn open_unnamed(dest: &Path) -> Option<Result<(File, PathBuf), ClientError>> {
    let part = part_path(dest)?;
    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .ok()?;
    let _ = fs::remove_file(&part);
    Some(Ok((file, part)))
}

/// Gives an unnamed download (`file`, verified) the name `dest`: linked straight to it if
/// nothing is there (`linkat` never replaces a name), else linked to its part file's name and
/// renamed over `dest` — a regular file only — in one step for its readers.
fn link_unnamed(file: &File, part: &Path, dest: &Path) -> Result<(), ClientError> {
    use std::os::fd::AsRawFd;
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let link = |to: &Path| {
        rustix::fs::linkat(
            rustix::fs::CWD,
            proc_path.as_str(),
            rustix::fs::CWD,
            to,
            rustix::fs::AtFlags::SYMLINK_FOLLOW,
        )
        .map_err(io::Error::from)
    };
    match link(dest) {
        Ok(()) => return Ok(()),
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
        Err(source) => return Err(local(&format!("create {}", dest.display()), source)),
    }
    let _ = fs::remove_file(part);
    link(part).map_err(|source| local(&format!("create {}", part.display()), source))?;
    if let Ok(meta) = fs::symlink_metadata(dest) {
        if !meta.is_file() {
            let _ = fs::remove_file(part);
            return Err(local(
                &format!("replace {}", dest.display()),
                io::Error::other("it is not a regular file"),
            ));
        }
    }
    fs::rename(part, dest).map_err(|source| {
        let _ = fs::remove_file(part);
        local(
            &format!("rename {} to {}", part.display(), dest.display()),
            source,
        )
    })
}

/// A download's DIGEST came: verify, rename into place, carry the mtime with `preserve`.
fn finish(
    receiving: Receiving,
    item: &GetItem,
    payload: &[u8],
    options: &TreeOptions,
) -> Result<(), ClientError> {
    let Receiving {
        file,
        part,
        unnamed,
        hasher,
        done,
        info,
        mode,
        broken,
        ..
    } = receiving;
    let verified = (|| {
        if let Some(error) = broken {
            return Err(error);
        }
        let digest = Digest::parse(payload).map_err(ClientError::Message)?;
        let info = info.ok_or(ClientError::Unexpected(FrameType::Digest))?;
        if done != info.size {
            return Err(ClientError::Verify(format!(
                "the transfer ended after {done} of the {} bytes FILE_INFO announced",
                info.size
            )));
        }
        let computed = *hasher.finalize().as_bytes();
        if computed != digest.hash || info.hash.is_some_and(|known| known != computed) {
            return Err(ClientError::Verify(format!(
                "the file hashes to {} here but to {} on the server",
                hex(&computed),
                hex(&digest.hash)
            )));
        }
        Ok(info)
    })();
    let info = match verified {
        Ok(info) => info,
        Err(error) => {
            // Wrong bytes are not worth resuming; a local failure keeps what was written.
            if !unnamed && (matches!(error, ClientError::Verify(_)) || done == 0) {
                let _ = fs::remove_file(&part);
            }
            return Err(error);
        }
    };
    if let (true, Some(mode)) = (options.preserve, mode) {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(mode & 0o777))
            .map_err(|source| local(&format!("chmod {}", part.display()), source))?;
    }
    if unnamed {
        link_unnamed(&file, &part, &item.local)?;
        drop(file);
        if options.preserve {
            set_mtime(&item.local, info.mtime_ns)?;
        }
        return Ok(());
    }
    drop(file);
    if let Ok(meta) = fs::symlink_metadata(&item.local) {
        if !meta.is_file() {
            return Err(local(
                &format!("replace {}", item.local.display()),
                io::Error::other("it is not a regular file"),
            ));
        }
    }
    fs::rename(&part, &item.local).map_err(|source| {
        local(
            &format!("rename {} to {}", part.display(), item.local.display()),
            source,
        )
    })?;
    if options.preserve {
        set_mtime(&item.local, info.mtime_ns)?;
    }
    Ok(())
}

/// The BLAKE3 of the local destination, if it is a regular file of the remote's size.
fn local_hash(item: &GetItem) -> Option<Hash> {
    let meta = fs::symlink_metadata(&item.local).ok()?;
    if !meta.is_file() || meta.len() != item.size {
        return None;
    }
    hash_file(&item.local, item.size).ok()
}

/// The BLAKE3 of a local file that must be `size` bytes long.
fn hash_file(path: &Path, size: u64) -> Result<Hash, ClientError> {
    let mut file =
        File::open(path).map_err(|source| local(&format!("open {}", path.display()), source))?;
    match hash_reader(&mut file, &mut |_| {}) {
        Ok(hasher) if hasher.count() == size => Ok(*hasher.finalize().as_bytes()),
        Ok(_) => Err(changed(path)),
        Err(source) => Err(local(&format!("read {}", path.display()), source)),
    }
}

/// Sets a local file's mtime (its atime too, to the same), as `cp -p` and `scp -p` do.
pub fn set_mtime(path: &Path, mtime_ns: i64) -> Result<(), ClientError> {
    set_local_attrs(path, None, mtime_ns)
}

/// Gives the local file or directory `path` the permission bits of `mode` (if given: never
/// setuid, setgid or sticky) and the mtime `mtime_ns` (its atime too), which may be before
/// 1970. By path, without opening it (a file or directory of mode 0o000 gets its mode all
/// the same); a symlink is refused, never followed.
pub fn set_local_attrs(path: &Path, mode: Option<u32>, mtime_ns: i64) -> Result<(), ClientError> {
    use std::os::unix::ffi::OsStrExt;
    let failed =
        |what: &str, source: io::Error| local(&format!("{what} {}", path.display()), source);
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(failed(
                "set the mode and time of",
                io::Error::other("it is a symlink, never followed"),
            ));
        }
        Ok(_) => {}
        Err(source) => return Err(failed("stat", source)),
    }
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| failed("name", io::Error::from(ErrorKind::InvalidInput)))?;
    if let Some(mode) = mode {
        // SAFETY: `c_path` is a NUL-terminated string that outlives the call.
        let rc = unsafe { libc::fchmodat(libc::AT_FDCWD, c_path.as_ptr(), mode & 0o777, 0) };
        if rc != 0 {
            return Err(failed("chmod", io::Error::last_os_error()));
        }
    }
    let at = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000) as libc::time_t,
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000) as _,
    };
    let times = [at, at];
    // SAFETY: `c_path` and `times` (two timespecs, as utimensat reads) outlive the call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(failed("set the mtime of", io::Error::last_os_error()));
    }
    Ok(())
}

/// Syncs the file system holding `path` (`syncfs`): one call for a whole tree's files.
pub fn sync_file_system(path: &Path) {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match File::open(dir) {
        // SAFETY: syncfs only reads the descriptor, which `file` keeps open for the call.
        Ok(file) => {
            use std::os::fd::AsRawFd;
            if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
                debug!("syncfs {}: {}", dir.display(), io::Error::last_os_error());
            }
        }
        Err(error) => debug!("cannot open {}: {error}", dir.display()),
    }
}

fn changed(path: &Path) -> ClientError {
    local(
        &format!("read {}", path.display()),
        io::Error::new(
            ErrorKind::UnexpectedEof,
            "its size changed since the tree was walked",
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("monoreactor-tree-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mtime_ns(path: &Path) -> i64 {
        let meta = fs::symlink_metadata(path).unwrap();
        meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
    }

    #[test]
    fn local_attrs_keep_permission_bits_and_any_time_and_never_follow_a_symlink() {
        let dir = scratch("attrs");
        let file = dir.join("f");
        fs::write(&file, b"f").unwrap();
        // setuid from a server is dropped; a time before 1970 is kept, to the nanosecond.
        set_local_attrs(&file, Some(0o4750), -1_500_000_001).unwrap();
        let meta = fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
        assert_eq!(mtime_ns(&file), -1_500_000_001);
        // A read-only file still gets its time (nothing is opened for writing).
        set_local_attrs(&file, Some(0o444), 7).unwrap();
        set_mtime(&file, 1_000_000_000_000_000_009).unwrap();
        assert_eq!(mtime_ns(&file), 1_000_000_000_000_000_009);
        // A directory, the mode left alone.
        let sub = dir.join("d");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o711)).unwrap();
        set_local_attrs(&sub, None, 42).unwrap();
        assert_eq!(mtime_ns(&sub), 42);
        assert_eq!(
            fs::metadata(&sub).unwrap().permissions().mode() & 0o777,
            0o711
        );
        // A symlink is refused, its target untouched.
        let link = dir.join("link");
        symlink(&sub, &link).unwrap();
        assert!(set_local_attrs(&link, Some(0o700), 5).is_err());
        assert_eq!(mtime_ns(&sub), 42);
        assert_eq!(
            fs::metadata(&sub).unwrap().permissions().mode() & 0o777,
            0o711
        );
        // Deepest first: the parent's time is set after its child's, and holds.
        let dirs = [
            LocalDirAttrs {
                local: sub.clone(),
                mode: Some(0o700),
                mtime_ns: 100,
            },
            LocalDirAttrs {
                local: sub.join("inner"),
                mode: Some(0o750),
                mtime_ns: 200,
            },
        ];
        fs::create_dir(sub.join("inner")).unwrap();
        assert!(set_local_dir_attrs(&dirs).is_empty());
        assert_eq!(mtime_ns(&sub), 100);
        assert_eq!(mtime_ns(&sub.join("inner")), 200);
        let _ = fs::remove_dir_all(&dir);
    }
}
