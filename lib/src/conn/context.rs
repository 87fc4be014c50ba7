//! What a drive borrows from the loop ([`Context`]), what it may spend this turn ([`Budget`]),
//! what it answers ([`Verdict`]), what a stream's turn did ([`Pumped`]), where a reading loop
//! goes after a read ([`Step`]), and why a framed connection must close ([`Fatal`]).

use std::fmt;

use log::debug;

use crate::access::Access;
use crate::buffer::BufferPool;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::proto::ErrorCode;
use crate::service::disk::Disk;
use crate::service::exec::Children;
use crate::throttle::LogThrottle;
use crate::timer::{Tick, WallClock};
use crate::transport::{IoState, Peer, ReadOutcome};

/// What the caller should do after driving a connection for a turn: the connection's answer
/// to the loop.
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

/// The server's access rules when a [`Context`] is made without any: echo only, no token.
static ECHO_ONLY: Access = Access::ECHO_ONLY;

/// What [`Connection::drive`](super::Connection::drive) borrows from the loop.
pub struct Context<'a> {
    /// Where buffers come from and go back to.
    pub pool: &'a mut BufferPool,
    /// The limits in force.
    pub limits: &'a Limits,
    /// The loop's current time.
    pub now: Tick,
    /// The wall clock as the loop read it this turn (only the file service uses it).
    pub wall_clock: WallClock,
    /// The token and whether commands may run.
    pub access: &'a Access,
    /// Who is at the other end: encrypted or not, on this machine or not, and the key of its
    /// client certificate ([`Peer::LOCAL`] where [`Context::new`] made the context).
    pub peer: Peer,
    /// The I/O layer's processes; `None` where no command can run (EXEC is then refused).
    pub children: Option<&'a mut dyn Children>,
    /// The loop's turn number: a child number freed in a turn is not reused in the same turn,
    /// so no event of that turn's batch can reach the wrong command.
    pub turn: u64,
    /// Throttles the log line for a wrong token (the reactor's); `None`, as [`Context::new`]
    /// leaves it, logs each at debug level only.
    pub(crate) auth_log: Option<&'a mut LogThrottle>,
    /// The file service's disk (the I/O layer's, which hands blocking calls to the disk
    /// helper); `None` where files are not served (file requests are then refused).
    pub files: Option<&'a mut dyn Disk>,
    /// The server's counters (the reactor's); `None`, as [`Context::new`] leaves it, counts
    /// nothing. Access lines are logged either way.
    pub(crate) metrics: Option<&'a mut Metrics>,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("now", &self.now)
            .field("turn", &self.turn)
            .field("access", &self.access)
            .field("peer", &self.peer)
            .field("children", &self.children.is_some())
            .field("files", &self.files.is_some())
            .finish_non_exhaustive()
    }
}

impl Context<'_> {
    /// Bumps the server's counters, if this context has them.
    pub(crate) fn count(&mut self, bump: impl FnOnce(&mut Metrics)) {
        if let Some(metrics) = self.metrics.as_deref_mut() {
            bump(metrics);
        }
    }
}

impl<'a> Context<'a> {
    /// A context for driving one connection by hand (tests, fuzzing, another event loop):
    /// echo only, no token, no processes.
    pub fn new(pool: &'a mut BufferPool, limits: &'a Limits, now: Tick) -> Context<'a> {
        Context {
            pool,
            limits,
            now,
            wall_clock: WallClock::default(),
            access: &ECHO_ONLY,
            peer: Peer::LOCAL,
            children: None,
            turn: 0,
            auth_log: None,
            files: None,
            metrics: None,
        }
    }
}

/// Per-turn allowance, so one busy connection cannot starve the rest.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Bytes that may still be read, from the socket and from commands' pipes together.
    pub(crate) bytes: usize,
    /// Frames that may still be handled.
    pub(crate) frames: usize,
    /// File bytes that may still be queued, hashed or re-read (and directory entries listed,
    /// at a fixed cost each).
    pub(crate) disk: usize,
}

/// What one stream's turn did ([`Streams::pump`](super::streams::Streams::pump)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pumped {
    /// Still running; whether it moved anything.
    Running(bool),
    /// Finished: its last frame is queued, and it leaves the table.
    Finished,
}

/// Why a framed connection must close: the ERROR frame to send first (none when the client
/// itself reported an error), and the text for the log.
pub(super) struct Fatal {
    pub(super) code: Option<ErrorCode>,
    pub(super) text: String,
    /// The socket itself failed: close at once, with nothing more to send.
    pub(super) broken: bool,
}

impl Fatal {
    pub(super) fn new(code: ErrorCode, text: impl Into<String>) -> Fatal {
        Fatal {
            code: Some(code),
            text: text.into(),
            broken: false,
        }
    }

    pub(super) fn quiet(text: impl Into<String>) -> Fatal {
        Fatal {
            code: None,
            text: text.into(),
            broken: false,
        }
    }

    pub(super) fn broken(text: impl Into<String>) -> Fatal {
        Fatal {
            code: None,
            text: text.into(),
            broken: true,
        }
    }
}

/// Where a reading loop goes after a read ([`after_read`]).
pub(super) enum Step {
    /// Read again.
    Continue,
    /// Leave the loop.
    Stop,
    /// The connection failed: close it.
    Fail,
}

/// What a reading loop does after a read: go on after data, stop when drained, stop for good
/// at EOF (noted), fail on an error.
pub(super) fn after_read(io_state: &mut IoState, outcome: ReadOutcome) -> Step {
    match outcome {
        ReadOutcome::Data(_) => Step::Continue,
        ReadOutcome::Drained => Step::Stop,
        ReadOutcome::Eof => {
            io_state.set(IoState::PEER_EOF, true);
            Step::Stop
        }
        ReadOutcome::Failed(error) => {
            debug!("read failed: {error}");
            Step::Fail
        }
    }
}

/// Charges a read to the turn's budget and the activity clock.
pub(super) fn count_read(
    outcome: &ReadOutcome,
    budget: &mut Budget,
    last_active: &mut Tick,
    now: Tick,
) {
    if let ReadOutcome::Data(n) = outcome {
        budget.bytes = budget.bytes.saturating_sub(*n);
        *last_active = now;
    }
}
