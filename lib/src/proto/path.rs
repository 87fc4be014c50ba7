//! The protocol's paths: UTF-8, relative to the server's root, `/`-separated.
//!
//! Checking the syntax here is the first of two fences: it refuses what can never name a
//! place under the root (absolute paths, `..`, `.`, empty components, NUL, backslash), and
//! what no system call would take (longer than `PATH_MAX` or `NAME_MAX`). The
//! second fence is the kernel: the I/O layer opens every path beneath the root's directory
//! descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! (`crate::sys::root`), so a symlink planted inside the root cannot lead out of it either.

use std::fmt;

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// It starts with `/`.
    Absolute,
    /// It has an empty component (`a//b`, a trailing `/`).
    EmptyComponent,
    /// It has a `.` or `..` component.
    DotComponent,
    /// It contains a NUL byte.
    Nul,
    /// It contains a backslash (a Windows separator that would mean something else here).
    Backslash,
    /// A component starts with [`RESERVED_PREFIX`]: the server's own temporary files.
    Reserved,
    /// The path is longer than [`MAX_PATH_LEN`] bytes (this many).
    TooLong(usize),
    /// A component is longer than [`MAX_NAME_LEN`] bytes (this many).
    NameTooLong(usize),
}

/// Linux's `PATH_MAX`: the longest path a system call takes, *counting its terminating NUL*.
pub const PATH_MAX: usize = 4096;

/// Linux's `NAME_MAX`: the longest name of one directory entry, in bytes.
pub const NAME_MAX: usize = 255;

/// Longest path in a request, in bytes: [`PATH_MAX`] less the NUL the server adds. Checked
/// here, once, so every request answers an over-long path the same way (`BAD_REQUEST`)
/// instead of whatever `ENAMETOOLONG` or a missing first component gives each system call.
pub const MAX_PATH_LEN: usize = PATH_MAX - 1;

/// Longest component of a request's path, in bytes ([`NAME_MAX`]).
pub const MAX_NAME_LEN: usize = NAME_MAX;

/// Names starting with this are the server's own (uploads in progress): never listed, never
/// reachable by a request.
pub const RESERVED_PREFIX: &str = ".monoreactor-";

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::Absolute => "the path is absolute; paths are relative to the server's root",
            PathError::EmptyComponent => "the path has an empty component",
            PathError::DotComponent => "the path has a '.' or '..' component",
            PathError::Nul => "the path contains a NUL byte",
            PathError::Backslash => "the path contains a backslash",
            PathError::Reserved => "names starting with .monoreactor- are reserved for the server",
            PathError::TooLong(len) => {
                return write!(
                    f,
                    "the path is {len} bytes; the longest is {MAX_PATH_LEN} (PATH_MAX {PATH_MAX} counts the NUL)"
                );
            }
            PathError::NameTooLong(len) => {
                return write!(
                    f,
                    "a component is {len} bytes; the longest name is {MAX_NAME_LEN} (NAME_MAX)"
                );
            }
        })
    }
}

impl std::error::Error for PathError {}

/// Checks a path's length in bytes against [`MAX_PATH_LEN`]; [`check_relative`] does too.
/// (A request's path is measured before its UTF-8 is checked.)
pub fn check_len(len: usize) -> Result<(), PathError> {
    if len > MAX_PATH_LEN {
        return Err(PathError::TooLong(len));
    }
    Ok(())
}

/// Checks a relative path. The empty path is accepted: it names the root itself.
pub fn check_relative(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Ok(());
    }
    check_len(path.len())?;
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent),
            "." | ".." => return Err(PathError::DotComponent),
            name if name.starts_with(RESERVED_PREFIX) => return Err(PathError::Reserved),
            name if name.len() > MAX_NAME_LEN => return Err(PathError::NameTooLong(name.len())),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_and_the_root_pass() {
        for path in ["", "a", "a/b", "a.b/..c/...", "dir with space/é"] {
            assert_eq!(check_relative(path), Ok(()), "{path:?}");
        }
    }

    #[test]
    fn every_escape_is_refused() {
        let cases = [
            ("/etc/passwd", PathError::Absolute),
            ("../x", PathError::DotComponent),
            ("a/../../x", PathError::DotComponent),
            ("./a", PathError::DotComponent),
            ("a/.", PathError::DotComponent),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("a\\..\\x", PathError::Backslash),
            ("a\0b", PathError::Nul),
            (".monoreactor-partial-1", PathError::Reserved),
            ("a/.monoreactor-x/b", PathError::Reserved),
        ];
        for (path, expected) in cases {
            assert_eq!(check_relative(path), Err(expected), "{path:?}");
        }
    }

    #[test]
    fn the_length_limits_are_exact() {
        let path = |len: usize| "a/".repeat(len / 2 + 1)[..len - 1].to_string() + "z";
        assert_eq!(check_relative(&path(MAX_PATH_LEN)), Ok(()));
        assert_eq!(
            check_relative(&path(PATH_MAX)),
            Err(PathError::TooLong(PATH_MAX))
        );
        let name = |len: usize| format!("d/{}", "n".repeat(len));
        assert_eq!(check_relative(&name(NAME_MAX)), Ok(()));
        assert_eq!(
            check_relative(&name(NAME_MAX + 1)),
            Err(PathError::NameTooLong(NAME_MAX + 1))
        );
        assert!(PathError::TooLong(4096).to_string().contains("4095"));
        assert!(PathError::NameTooLong(256).to_string().contains("255"));
    }
}
