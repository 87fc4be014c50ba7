//! What an errno means to a client: the one place a system call's failure becomes the
//! protocol's [`ErrorCode`] and the words of its ERROR frame ([`DiskError`], [`FileError`]).

use std::io;

use rustix::io::Errno;

use crate::proto::ErrorCode;
use crate::service::disk::{DiskError, FileError};

/// The failure `errno`, as the client will hear it (the path is added by [`DiskError::on`]).
pub(crate) fn disk_error(errno: Errno) -> DiskError {
    let os_error = Some(errno.raw_os_error());
    let (code, what) = match errno {
        Errno::NOENT => (ErrorCode::NotFound, "no such file or directory"),
        Errno::NOTDIR => (ErrorCode::NotDirectory, "a component is not a directory"),
        Errno::LOOP | Errno::XDEV => (
            ErrorCode::OutsideRoot,
            "the path leaves the root or passes through a symlink",
        ),
        Errno::ACCESS | Errno::PERM | Errno::ROFS => {
            (ErrorCode::PermissionDenied, "permission denied")
        }
        Errno::ISDIR => (ErrorCode::IsDirectory, "is a directory"),
        Errno::NOSPC | Errno::DQUOT => (ErrorCode::NoSpace, "no space left on the device"),
        Errno::EXIST => (ErrorCode::AlreadyExists, "already exists"),
        Errno::NOTEMPTY => (ErrorCode::NotEmpty, "directory not empty"),
        Errno::NAMETOOLONG => (ErrorCode::BadRequest, "a name is too long"),
        // Opening a socket file (or a device with nothing behind it) gives ENXIO: like a
        // FIFO's, the answer is that it is not a regular file, not an I/O failure.
        Errno::NXIO => (ErrorCode::BadRequest, "not a regular file"),
        Errno::MFILE | Errno::NFILE => (ErrorCode::LimitReached, "out of file descriptors"),
        _ => {
            let text = io::Error::from(errno).to_string();
            return DiskError::new(ErrorCode::IoFailed, text, os_error);
        }
    };
    DiskError::new(code, what, os_error)
}

/// The failure `errno` of an operation on `path` (what the client asked about).
pub fn file_error(errno: Errno, path: &str) -> FileError {
    disk_error(errno).on(path)
}

/// The failure `error` of an operation on `path`: as its errno says, or `IO_FAILED`.
pub(crate) fn io_file_error(error: &io::Error, path: &str) -> FileError {
    match error.raw_os_error() {
        Some(raw) => file_error(Errno::from_raw_os_error(raw), path),
        None => FileError::new(ErrorCode::IoFailed, format!("{path}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_errno_names_its_path_and_shows_the_systems_words_when_it_has_no_code_of_its_own() {
        assert_eq!(
            file_error(Errno::NOSPC, "big.iso"),
            FileError::new(ErrorCode::NoSpace, "big.iso: no space left on the device")
        );
        assert_eq!(
            file_error(Errno::NOENT, ""),
            FileError::new(ErrorCode::NotFound, "/: no such file or directory")
        );
        let io = file_error(Errno::IO, "hello.txt");
        assert_eq!(io.code, ErrorCode::IoFailed);
        assert_eq!(
            io.text,
            format!("hello.txt: {}", io::Error::from(Errno::IO))
        );
        // Shown in logs as the system says it, whatever the client hears.
        assert_eq!(
            disk_error(Errno::NOSPC).to_string(),
            Errno::NOSPC.to_string()
        );
    }
}
