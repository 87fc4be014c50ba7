//! The server's root directory (`--root`), and opening paths beneath it.
//!
//! Every path a client names is relative to the root. It is checked twice: for syntax
//! ([`crate::proto::path::check_relative`]: no `..`, no absolute path), and by the kernel,
//! which resolves it beneath the root's directory descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: no component may
//! leave the root or be a symlink, whatever was planted inside it, and there is no window
//! between a check and a use because the descriptor opened is the one used.

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::proto::path::{PathError, check_relative};

/// `openat2` may fail with `EAGAIN` when a rename elsewhere races with the lookup; it is
/// retried this many times.
const RETRIES: usize = 8;

/// Why a path under the root could not be opened.
#[derive(Debug)]
pub(crate) enum RootError {
    /// The path's syntax is refused.
    Syntax(PathError),
    /// Nothing by that name (or a component is not a directory).
    NotFound,
    /// It would leave the root, or passes through a symlink.
    Escapes,
    /// Another failure.
    Io(io::Error),
}

impl std::fmt::Display for RootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootError::Syntax(error) => error.fmt(f),
            RootError::NotFound => f.write_str("no such directory under the root"),
            RootError::Escapes => {
                f.write_str("the path leaves the root or passes through a symlink")
            }
            RootError::Io(error) => error.fmt(f),
        }
    }
}

/// The root directory, held open.
#[derive(Debug)]
pub(crate) struct Root {
    path: PathBuf,
    dir: OwnedFd,
}

impl Root {
    /// Opens `path` as the root, creating it (and its parents) if it is missing.
    pub(crate) fn open_or_create(path: &Path) -> io::Result<Root> {
        fs::create_dir_all(path)?;
        let path = fs::canonicalize(path)?;
        let dir = rustix::fs::open(
            &path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root { path, dir })
    }

    /// The root's absolute path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The root directory's own descriptor (an `O_PATH` descriptor: usable to resolve paths
    /// beneath it and to enter it, not to read it).
    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Opens the directory `relative` (empty: the root itself) beneath the root, as an
    /// `O_PATH` descriptor.
    pub(crate) fn open_dir(&self, relative: &str) -> Result<OwnedFd, RootError> {
        check_relative(relative).map_err(RootError::Syntax)?;
        let flags = OFlags::PATH | OFlags::DIRECTORY;
        self.open_beneath(relative, flags, Mode::empty())
            .map_err(|errno| match errno {
                rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => RootError::NotFound,
                rustix::io::Errno::XDEV | rustix::io::Errno::LOOP => RootError::Escapes,
                errno => RootError::Io(errno.into()),
            })
    }

    /// Opens `relative` (syntax already checked; empty: the root itself) beneath the root with
    /// `flags` (`O_CLOEXEC` is added), resolving no symlink at all and nothing outside the
    /// root. `EAGAIN` (a concurrent rename) is retried a few times. `ELOOP` and `EXDEV` mean
    /// the path passes through a symlink or would leave the root.
    pub(crate) fn open_beneath(
        &self,
        relative: &str,
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, rustix::io::Errno> {
        let path = if relative.is_empty() { "." } else { relative };
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let mut last = rustix::io::Errno::AGAIN;
        for _ in 0..RETRIES {
            match rustix::fs::openat2(&self.dir, path, flags | OFlags::CLOEXEC, mode, resolve) {
                Ok(fd) => return Ok(fd),
                Err(errno @ (rustix::io::Errno::AGAIN | rustix::io::Errno::INTR)) => last = errno,
                Err(errno) => return Err(errno),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("monoreactor-root-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn opens_directories_beneath_and_nothing_outside() {
        let base = scratch("beneath");
        let root = Root::open_or_create(&base.join("root")).unwrap();
        fs::create_dir_all(root.path().join("a/b")).unwrap();
        fs::create_dir_all(base.join("outside")).unwrap();
        symlink(base.join("outside"), root.path().join("link-out")).unwrap();
        symlink("a", root.path().join("link-in")).unwrap();
        fs::write(root.path().join("file"), b"x").unwrap();

        assert!(root.open_dir("").is_ok());
        assert!(root.open_dir("a/b").is_ok());
        assert!(matches!(root.open_dir("link-out"), Err(RootError::Escapes)));
        assert!(
            matches!(root.open_dir("link-in"), Err(RootError::Escapes)),
            "no symlink at all, even one that stays inside"
        );
        assert!(matches!(root.open_dir("missing"), Err(RootError::NotFound)));
        assert!(matches!(root.open_dir("file"), Err(RootError::NotFound)));
        assert!(matches!(
            root.open_dir("../outside"),
            Err(RootError::Syntax(PathError::DotComponent))
        ));
        assert!(matches!(
            root.open_dir("/tmp"),
            Err(RootError::Syntax(PathError::Absolute))
        ));
        fs::remove_dir_all(&base).unwrap();
    }
}
