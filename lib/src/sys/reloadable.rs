//! Reading a file that SIGHUP reads again on the loop (the configuration, the access file):
//! a regular file only, bounded, opened without blocking.

/// Reads a file that SIGHUP reads again on the loop (the configuration, the access file):
/// only a regular file of at most `max` bytes. It is opened without blocking, so a FIFO at
/// the path (which would block the open, and the loop with it, until a writer came) is
/// refused like a device (`/dev/zero` would fill the memory) or a directory. The token and
/// the TLS files are not read this way: a secret is often given as a pipe (`--tls-key
/// <(vault ...)`), which works at start (a SIGHUP then fails to read it again).
pub fn read_reloadable(path: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.is_dir() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "a directory, not a regular file",
        ));
    }
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a FIFO or a device cannot be read again at SIGHUP)",
        ));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(bytes)
}

/// The most bytes [`read_reloadable`] reads of an access file.
pub const MAX_RELOADABLE_FILE: u64 = 16 << 20;
