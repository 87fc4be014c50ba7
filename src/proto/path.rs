//! The protocol's paths: UTF-8, relative to the server's root, `/`-separated.
//!
//! Checking the syntax here is the first of two fences: it refuses what can never name a
//! place under the root (absolute paths, `..`, `.`, empty components, NUL, backslash). The
//! second fence is the kernel: the I/O layer opens every path beneath the root's directory
//! descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! ([`crate::sys::root`]), so a symlink planted inside the root cannot lead out of it either.

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
}

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
        })
    }
}

impl std::error::Error for PathError {}

/// Checks a relative path. The empty path is accepted: it names the root itself.
pub fn check_relative(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Ok(());
    }
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
}
