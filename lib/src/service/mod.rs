//! Services: what a request asks for, kept apart from how bytes move. The request services are
//! state machines that own no descriptor and know no `mio`: requests and bytes in, frames out,
//! with `now` passed in; [`crate::conn`] and the reactor do the I/O.
//!
//! - [`echo`]: the framed echo reply, and which datagrams the UDP echo answers (its socket is
//!   the reactor's: a datagram echo is nothing but its socket);
//! - [`exec`]: one running command per stream, reaching its process through the
//!   [`Children`](exec::Children) trait;
//! - [`files`]: one file transfer (GET, PUT, LIST) per stream, and [`upload`]: an upload's
//!   writes and syncs; both reach the disk through the [`Disk`](disk::Disk) trait ([`disk`]).

pub(crate) mod disk;
pub(crate) mod echo;
pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod upload;
