//! A `timerfd` in the generator's poll, so open-loop sends wake at their due time to the
//! microsecond: `epoll_wait`'s own timeout counts in whole milliseconds (mio rounds up), which
//! would add up to a millisecond of lateness to every paced request's latency.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

/// A one-shot monotonic timer, readable when it expires.
pub(crate) struct Timer {
    fd: OwnedFd,
}

impl Timer {
    /// A disarmed timer registered in `registry` under `token`.
    pub(crate) fn new(registry: &Registry, token: Token) -> io::Result<Timer> {
        // SAFETY: timerfd_create takes no pointers; a non-negative result is a new descriptor
        // that we own from here on.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        registry.register(&mut SourceFd(&fd.as_raw_fd()), token, Interest::READABLE)?;
        Ok(Timer { fd })
    }

    /// Fires once, `after` from now (at least a nanosecond: zero would disarm it).
    pub(crate) fn arm(&self, after: Duration) -> io::Result<()> {
        self.clear();
        let nanos = after.max(Duration::from_nanos(1));
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: nanos.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(nanos.subsec_nanos() as i32),
            },
        };
        // SAFETY: `spec` is a valid itimerspec for the call's duration; the old value is not
        // asked for (null).
        let result =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes an expiry, so the next one is a new edge.
    pub(crate) fn clear(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into `count`, which has 8.
        let _ = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                count.as_mut_ptr().cast::<libc::c_void>(),
                count.len(),
            )
        };
    }
}
