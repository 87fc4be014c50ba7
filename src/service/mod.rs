//! Services: what a request asks for, kept apart from how bytes move. Each service turns a
//! decoded request into replies; the reactor and [`crate::conn`] do the I/O.

pub mod echo;
