//! The I/O layer for everything that is not a connection's socket: child processes (their
//! pipes, pidfds, process groups), the root directory that paths are confined to, the files of
//! the file service, the disk helper process that makes blocking disk calls off the loop
//! ([`disk`]), and batched datagram I/O for the UDP echo. The reactor drives it; connections reach processes only through the
//! [`Children`](crate::service::exec::Children) trait and files only through
//! [`files::Files`], so the protocol state machines own no descriptor.

pub mod disk;
pub mod files;
pub mod hash_index;
pub mod mmsg;
pub mod process;
pub mod root;
pub mod upload;
