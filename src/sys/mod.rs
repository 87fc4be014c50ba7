//! The I/O layer for everything that is not a socket: child processes (their pipes, pidfds,
//! process groups) and the root directory that paths are confined to. The reactor drives it;
//! connections and services reach it only through the
//! [`Children`](crate::service::exec::Children) trait, so they own no descriptor.

pub mod process;
pub mod root;
