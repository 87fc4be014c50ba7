//! Framed echo replies written straight from the input.
//!
//! An ECHO_REPLY is its request with two header bytes changed: the type, and the flags (set to
//! END_STREAM); stream, length and payload are the same. So a run of echo requests in the
//! input becomes the run of their replies by rewriting those bytes in place, and goes out in
//! one `write` straight from the input buffer — no copy of the payloads into the outbox, which
//! made framed echo cost 1.17× the raw echo at 16 KiB. This holds while nothing is queued and
//! the socket takes bytes; only what the socket does not take is copied into the outbox,
//! behind which everything else then queues.
//!
//! **Order** is kept by one rule: while an [`EchoRun`] holds replies, the outbox is empty, and
//! anything else about to be queued sends the run first ([`Connection::send_echoes`]).

use super::{Connection, Context, Fatal, State};
use crate::proto::{HEADER_LEN, Header};
use crate::service::echo;
use crate::transport::{IoState, Transport};

/// The echo replies rewritten in place and not yet sent: `input[start..end]`, whole frames.
#[derive(Debug, Default)]
pub(super) struct EchoRun {
    start: usize,
    end: usize,
}

impl EchoRun {
    fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

impl Connection {
    /// If the echo request whose `header` starts at `at` in `input` can be answered in place,
    /// rewrites it into its reply, adds it to `run` and returns true. That needs a framed
    /// echo on an open connection with no stream that could claim its id, and either a run
    /// already (so the outbox is empty) or nothing queued and a socket that takes bytes.
    pub(super) fn echo_in_place(
        &self,
        header: &Header,
        input: &mut [u8],
        at: usize,
        run: &mut EchoRun,
    ) -> bool {
        let direct = self.state == State::Open
            && header.stream != 0
            && self.streams.is_none()
            && (!run.is_empty()
                || (self.outbox.is_empty() && self.io_state.has(IoState::WRITE_READY)));
        if !direct {
            return false;
        }
        echo::reply_header(header).emit(&mut input[at..at + HEADER_LEN]);
        if run.is_empty() {
            run.start = at;
        }
        debug_assert_eq!(run.end.max(at), at, "a run is contiguous");
        run.end = at + header.wire_len();
        true
    }

    /// Sends the run with one write ([`IoState::write_once`]'s rules) and empties it. What the socket
    /// does not take is copied into the outbox. A failed write is fatal.
    pub(super) fn send_echoes<T: Transport>(
        &mut self,
        io: &mut T,
        input: &[u8],
        run: &mut EchoRun,
        cx: &mut Context<'_>,
    ) -> Result<(), Fatal> {
        if run.is_empty() {
            return Ok(());
        }
        let replies = &input[run.start..run.end];
        *run = EchoRun::default();
        let sent = self
            .io_state
            .write_once(io, replies)
            .map_err(|error| Fatal::broken(format!("write failed: {error}")))?;
        if sent > 0 {
            self.last_active = cx.now;
        }
        if sent < replies.len() {
            self.outbox
                .replies(cx.pool, cx.limits)
                .raw(&replies[sent..]);
        }
        Ok(())
    }
}
