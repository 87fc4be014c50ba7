//! The I/O layer for everything that is not a socket: child processes (their pipes, pidfds,
//! process groups), the root directory that paths are confined to, and the files of the file
//! service. The reactor drives it; connections reach processes only through the
//! [`Children`](crate::service::exec::Children) trait and files only through
//! [`files::Files`], so the protocol state machines own no descriptor.

pub mod files;
pub mod process;
pub mod root;
