//! LIST's side of the disk: a directory opened beneath the root and read one entry at a time,
//! each with its `stat`. Which entries are shown is decided here (not `.` and `..`, not the
//! server's own names but for partial uploads, which a user must be able to see and remove);
//! how they are paged and encoded on the wire is the service's
//! ([`ListTransfer`](crate::service::files::ListTransfer)).

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

use log::debug;

use crate::proto::files::{FileKind, partial_id};
use crate::proto::path::RESERVED_PREFIX;
use crate::service::disk::{DirRead, FileError};
use crate::sys::errno::file_error;
use crate::sys::files::meta_of_stat;
use crate::sys::root::Root;

/// A directory being listed.
#[derive(Debug)]
pub(crate) struct Listing {
    dir: rustix::fs::Dir,
    /// The directory, as the client named it (for errors).
    path: String,
}

impl Listing {
    /// Opens the directory `path` beneath `root` for listing.
    pub(crate) fn open(root: &Root, path: &str) -> Result<Listing, FileError> {
        let fd = root
            .open_beneath(path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .map_err(|errno| file_error(errno, path))?;
        let dir = rustix::fs::Dir::new(fd).map_err(|errno| file_error(errno, path))?;
        Ok(Listing {
            dir,
            path: path.to_string(),
        })
    }

    /// The next directory entry: one worth listing, with its metadata, or one skipped.
    pub(crate) fn read_entry(&mut self) -> Result<DirRead, FileError> {
        let Some(next) = self.dir.read() else {
            return Ok(DirRead::End);
        };
        let entry = next.map_err(|errno| file_error(errno, &self.path))?;
        let Ok(name) = entry.file_name().to_str() else {
            debug!("{}: skipping an entry whose name is not UTF-8", self.path);
            return Ok(DirRead::Skipped);
        };
        let partial = partial_id(name).is_some();
        if name == "." || name == ".." || (name.starts_with(RESERVED_PREFIX) && !partial) {
            return Ok(DirRead::Skipped);
        }
        let fd = self
            .dir
            .fd()
            .map_err(|errno| file_error(errno, &self.path))?;
        match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => {
                let mut meta = meta_of_stat(&stat);
                if partial && meta.kind == FileKind::File {
                    meta.kind = FileKind::Partial;
                }
                Ok(DirRead::Entry(name.to_string(), meta))
            }
            // Removed between the read and the stat: not listed.
            Err(Errno::NOENT) => Ok(DirRead::Skipped),
            Err(errno) => Err(file_error(errno, &self.path)),
        }
    }
}
