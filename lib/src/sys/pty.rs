//! Pseudo-terminals for `exec -t`: open a master/slave pair, size it, and make the slave the
//! controlling terminal of a new session in the child.
//!
//! The server keeps only the master, non-blocking, in its poll like a pipe; the child gets
//! the slave as its stdin, stdout and stderr. Between `fork` and `exec` the child calls
//! `setsid()` (a new session and process group, led by itself: so the group id is still the
//! pid, and a signal to the group reaches the shell) and `TIOCSCTTY` on its stdin (the slave
//! becomes its controlling terminal: job control, `^C` to the foreground job, `/dev/tty`).
//!
//! Reading the master fails with `EIO` once every descriptor of the slave is closed — the
//! command and everything it started are gone or have let go of the terminal. That is the
//! terminal's end of file, and [`read_master`] reports it as one.

use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::process::Pid;
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

/// A new master/slave pair. Both are close-on-exec: the child gets the slave through
/// `dup2` onto 0, 1 and 2, which clears the flag on those.
pub(crate) struct PtyPair {
    /// The server's end.
    pub(crate) master: OwnedFd,
    /// The command's end (stdin, stdout and stderr).
    pub(crate) slave: OwnedFd,
}

/// Opens a pseudo-terminal of `rows` x `cols`.
pub(crate) fn open(rows: u16, cols: u16) -> io::Result<PtyPair> {
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = rustix::pty::openpt(flags)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    // TIOCGPTPEER opens the slave from the master itself, so no path is looked up in between
    // (Linux 4.13); before that, the name /dev/pts gives.
    let slave = match rustix::pty::ioctl_tiocgptpeer(&master, flags) {
        Ok(slave) => slave,
        Err(_) => {
            let name = rustix::pty::ptsname(&master, Vec::new())?;
            rustix::fs::open(
                name.as_c_str(),
                OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
                Mode::empty(),
            )?
        }
    };
    set_size(&master, rows, cols)?;
    Ok(PtyPair { master, slave })
}

/// Sets the terminal's size; the kernel sends SIGWINCH to its foreground process group.
pub(crate) fn set_size(master: impl AsFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, size).map_err(io::Error::from)
}

/// The terminal's foreground process group (the job a `^C` would reach), if it has one.
pub(crate) fn foreground_group(master: impl AsFd) -> Option<Pid> {
    rustix::termios::tcgetpgrp(master).ok()
}

/// Reads the master; `EIO` (every slave descriptor closed) is end of file.
pub(crate) fn read_master(master: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    match master.read(buf) {
        Err(error) if error.raw_os_error() == Some(libc::EIO) => Ok(0),
        other => other,
    }
}

/// In the child, between `fork` and `exec`: a new session, with stdin (the slave) as its
/// controlling terminal. Only async-signal-safe calls: this runs in a copy of a process that
/// may have had other threads.
pub(crate) fn become_session_leader() -> io::Result<()> {
    // SAFETY: setsid and ioctl(TIOCSCTTY) take no pointers; both are async-signal-safe.
    unsafe {
        if libc::setsid() == -1 {
            return Err(io::Error::last_os_error());
        }
        if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_pty_has_the_size_asked_and_the_master_reads_eof_once_the_slave_closes() {
        let pair = open(33, 111).unwrap();
        let size = rustix::termios::tcgetwinsize(&pair.slave).unwrap();
        assert_eq!((size.ws_row, size.ws_col), (33, 111));
        set_size(&pair.master, 40, 120).unwrap();
        let size = rustix::termios::tcgetwinsize(&pair.slave).unwrap();
        assert_eq!((size.ws_row, size.ws_col), (40, 120));
        drop(pair.slave);
        let mut master = std::fs::File::from(pair.master);
        let mut buf = [0; 16];
        assert_eq!(read_master(&mut master, &mut buf).unwrap(), 0);
    }
}
