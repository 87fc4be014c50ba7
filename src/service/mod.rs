//! Services: what a request asks for, kept apart from how bytes move. Each service is a state
//! machine that owns no descriptor and knows no `mio`: requests and bytes in, frames out, with
//! `now` passed in. [`crate::conn`] and the reactor do the I/O.
//!
//! - [`echo`]: framed echo, and the UDP echo;
//! - [`exec`]: one running command per stream.

pub mod echo;
pub mod exec;

/// What the caller should do after driving a state machine for a turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing more can happen until a source becomes ready again or a deadline passes.
    Wait,
    /// The turn's budget ran out with work left: drive again on the next turn, without waiting
    /// for readiness (an edge-triggered poll will not report it again).
    Again,
    /// Close the connection.
    Close,
}
