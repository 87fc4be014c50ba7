//! The I/O layer for everything that is not a connection's socket: child processes (their
//! pipes, pidfds, process groups), the root directory that paths are confined to, the files of
//! the file service, the disk helper process that makes blocking disk calls off the loop
//! ([`disk`]), and batched datagram I/O for the UDP echo. The reactor drives it; connections
//! reach processes only through the [`Children`](crate::service::exec::Children) trait and
//! files only through the [`Disk`](crate::service::disk::Disk) trait ([`files::Files`]
//! implements it), so the protocol state machines own no descriptor and `conn` and `service`
//! import nothing from here.
//!
//! The file service's part, by concern: [`files`] (opening, `stat`, DELETE, MKDIR, the
//! server's file state, and the [`Disk`](crate::service::disk::Disk) implementation),
//! [`upload`] (the partial, its lock, the commit by descriptor, leftovers), [`listing`]
//! (directory entries for LIST), [`hash_index`] (the hash cache), [`errno`] (what a failed call
//! means to a client), [`disk`] (the helper process, its protocol and its write ring), [`restart`] (when a helper
//! process that died is started again). [`notify`]: systemd's notifications and socket activation. [`reloadable`]: reading a file
//! that a SIGHUP reads again on the loop.

pub(crate) mod disk;
pub(crate) mod errno;
pub(crate) mod files;
pub(crate) mod hash_index;
pub(crate) mod listing;
pub(crate) mod mmsg;
pub(crate) mod notify;
pub(crate) mod process;
pub(crate) mod pty;
pub(crate) mod reloadable;
pub(crate) mod restart;
pub(crate) mod root;
pub(crate) mod upload;
