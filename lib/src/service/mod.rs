//! Services: what a request asks for, kept apart from how bytes move. The request services are
//! state machines that own no descriptor and know no `mio`: requests and bytes in, frames out,
//! with `now` passed in; [`crate::conn`] and the reactor do the I/O.
//!
//! - [`echo`]: the framed echo reply; and the UDP echo, the one exception to the rule above,
//!   since a datagram echo is nothing but its socket ([`echo::UdpEcho`] owns it, behind a
//!   trait so tests can script it);
//! - [`exec`]: one running command per stream;
//! - [`files`]: one file transfer (GET, PUT) per stream.

pub mod echo;
pub mod exec;
pub mod files;
