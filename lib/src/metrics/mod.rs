//! What the server counts, and how it tells: access lines (`access.rs`), the counters behind
//! `serve --metrics` ([`Metrics`]), their Prometheus text rendering (`render.rs`), and the
//! small HTTP/1.1 responder that serves them (`http.rs`, sans-IO; the reactor's side is
//! `reactor/metrics.rs`).
//!
//! **Plain integers in the loop, Prometheus types at scrape time.** The server is one thread,
//! so a counter needs no atomic and no lock: a bump is `+= 1` on a `u64` in an array indexed by
//! an enum, which allocates nothing and costs what an add costs. `prometheus-client`'s own
//! metric types are atomics behind `Arc`s, made for many threads; here they are built only
//! when a scrape asks (`render.rs`), from a snapshot of these integers, so the hot path never
//! sees them.

pub(crate) mod access;
pub(crate) mod http;
mod render;

use std::time::Duration;

use crate::proto::ErrorCode;
use crate::proto::exec::{EndReason, Exit, Termination};
use crate::throttle::LogThrottle;

pub(crate) use render::{Gauges, render};

/// Which service bytes moved for (`monoreactor_bytes_*_total{service=...}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    /// The framed protocol (TLS connections count their plaintext).
    Framed,
    /// The raw TCP echo.
    RawEcho,
    /// The metrics responder itself.
    Metrics,
}

impl Service {
    pub(crate) const ALL: [Service; 3] = [Service::Framed, Service::RawEcho, Service::Metrics];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Service::Framed => "framed",
            Service::RawEcho => "raw_echo",
            Service::Metrics => "metrics",
        }
    }
}

/// Why a connection was turned away (`monoreactor_connections_refused_total{reason=...}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// At `--max-conns`.
    ConnectionLimit,
    /// The process was out of descriptors.
    Descriptors,
    /// Too many metrics connections at once.
    MetricsLimit,
}

impl Refusal {
    pub(crate) const ALL: [Refusal; 3] = [
        Refusal::ConnectionLimit,
        Refusal::Descriptors,
        Refusal::MetricsLimit,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::Descriptors => "out_of_descriptors",
            Refusal::MetricsLimit => "metrics_limit",
        }
    }
}

/// What a request asked for (`monoreactor_requests_total{kind=...}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestKind {
    Echo,
    Exec,
    Get,
    Put,
    List,
    Stat,
    Delete,
    Mkdir,
    SetAttrs,
}

impl RequestKind {
    pub(crate) const ALL: [RequestKind; 9] = [
        RequestKind::Echo,
        RequestKind::Exec,
        RequestKind::Get,
        RequestKind::Put,
        RequestKind::List,
        RequestKind::Stat,
        RequestKind::Delete,
        RequestKind::Mkdir,
        RequestKind::SetAttrs,
    ];

    /// The name in an access line and the label in the metrics.
    pub(crate) fn verb(self) -> &'static str {
        match self {
            RequestKind::Echo => "ECHO",
            RequestKind::Exec => "EXEC",
            RequestKind::Get => "GET",
            RequestKind::Put => "PUT",
            RequestKind::List => "LIST",
            RequestKind::Stat => "STAT",
            RequestKind::Delete => "RM",
            RequestKind::Mkdir => "MKDIR",
            RequestKind::SetAttrs => "SET_ATTRS",
        }
    }
}

/// How a command ended (`monoreactor_command_exits_total{cause=...}`): by itself, or because
/// the server signalled it (and why).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExitCause {
    /// Exited with code 0.
    Success,
    /// Exited with another code.
    Failure,
    /// Killed by a signal nobody on the server sent (or the client's SIGNAL).
    Signal,
    /// Stopped at its time limit.
    Timeout,
    /// Stopped at the output cap.
    OutputCap,
    /// Stopped because its client went (or abandoned the stream).
    Disconnect,
    /// Stopped by the server's shutdown.
    Shutdown,
}

impl ExitCause {
    pub(crate) const ALL: [ExitCause; 7] = [
        ExitCause::Success,
        ExitCause::Failure,
        ExitCause::Signal,
        ExitCause::Timeout,
        ExitCause::OutputCap,
        ExitCause::Disconnect,
        ExitCause::Shutdown,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            ExitCause::Success => "exit_0",
            ExitCause::Failure => "exit_nonzero",
            ExitCause::Signal => "signal",
            ExitCause::Timeout => "timeout",
            ExitCause::OutputCap => "output_cap",
            ExitCause::Disconnect => "disconnect",
            ExitCause::Shutdown => "shutdown",
        }
    }

    /// The cause of an EXIT: the server's reason if it signalled the command, else how it
    /// ended by itself.
    pub(crate) fn of_exit(exit: &Exit) -> ExitCause {
        match exit.reason {
            EndReason::Timeout => return ExitCause::Timeout,
            EndReason::OutputCap => return ExitCause::OutputCap,
            EndReason::Shutdown => return ExitCause::Shutdown,
            EndReason::Disconnect => return ExitCause::Disconnect,
            EndReason::None | EndReason::ClientSignal | EndReason::Other(_) => {}
        }
        match exit.termination {
            Termination::Exited(0) => ExitCause::Success,
            Termination::Exited(_) => ExitCause::Failure,
            Termination::Signaled { .. } => ExitCause::Signal,
        }
    }

    /// The cause of a command released before its EXIT could be sent.
    pub(crate) fn of_release(reason: EndReason) -> ExitCause {
        match reason {
            EndReason::Shutdown => ExitCause::Shutdown,
            EndReason::Timeout => ExitCause::Timeout,
            EndReason::OutputCap => ExitCause::OutputCap,
            _ => ExitCause::Disconnect,
        }
    }
}

/// Error codes are counted by their wire number; codes above this share the last entry.
const ERROR_SLOTS: usize = 32;

/// Upper bounds of the loop-turn histogram's buckets, in microseconds: from a turn that served
/// one echo (a few µs) to a stall a user would notice (a second).
pub(crate) const TURN_BUCKETS_US: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 10_000, 50_000, 250_000, 1_000_000,
];

/// A histogram of loop turns' handler time, in plain integers: one count per bucket (not
/// cumulative: a bump touches one entry), the turns past the last bound, and the sum.
#[derive(Clone, Debug, Default)]
pub(crate) struct TurnHistogram {
    pub(crate) buckets: [u64; TURN_BUCKETS_US.len()],
    pub(crate) over: u64,
    pub(crate) sum_ns: u64,
}

impl TurnHistogram {
    /// Records one turn that took `took`.
    pub(crate) fn observe(&mut self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns = self.sum_ns.saturating_add(ns);
        // `le`: a bucket holds what is at most its bound.
        match TURN_BUCKETS_US
            .iter()
            .position(|&bound| ns <= bound.saturating_mul(1000))
        {
            Some(at) => self.buckets[at] += 1,
            None => self.over += 1,
        }
    }

    /// Turns recorded.
    pub(crate) fn count(&self) -> u64 {
        self.buckets.iter().sum::<u64>() + self.over
    }
}

/// The server's counters: plain integers, bumped in the loop (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Connections accepted, by service (framed, raw echo, metrics).
    pub(crate) accepted: [u64; Service::ALL.len()],
    /// Connections turned away, by [`Refusal`].
    pub(crate) refused: [u64; Refusal::ALL.len()],
    /// Bytes read, by service.
    pub(crate) bytes_in: [u64; Service::ALL.len()],
    /// Bytes written, by service.
    pub(crate) bytes_out: [u64; Service::ALL.len()],
    /// Requests received, by [`RequestKind`] (refused ones included).
    pub(crate) requests: [u64; RequestKind::ALL.len()],
    /// ERROR frames that ended a request or a connection, by wire code.
    pub(crate) errors: [u64; ERROR_SLOTS],
    /// Commands started.
    pub(crate) commands_started: u64,
    /// Commands ended, by [`ExitCause`].
    pub(crate) exits: [u64; ExitCause::ALL.len()],
    /// File bytes sent by GETs (queued for the socket).
    pub(crate) get_bytes: u64,
    /// File bytes received by PUTs.
    pub(crate) put_bytes: u64,
    /// Transfers (GET, PUT, LIST) that ended, by whether they succeeded.
    pub(crate) transfers_ok: u64,
    /// Transfers that ended in an error or were abandoned.
    pub(crate) transfers_failed: u64,
    /// Loop turns' handler time.
    pub(crate) turns: TurnHistogram,
    /// Throttles the access lines of refused and failed requests, which a client can make at
    /// line rate.
    pub(crate) refusal_log: LogThrottle,
}

impl Metrics {
    pub(crate) fn request(&mut self, kind: RequestKind) {
        self.requests[kind as usize] += 1;
    }

    pub(crate) fn error(&mut self, code: ErrorCode) {
        let at = usize::from(code.to_u16()).min(ERROR_SLOTS - 1);
        self.errors[at] += 1;
    }

    pub(crate) fn exit(&mut self, cause: ExitCause) {
        self.exits[cause as usize] += 1;
    }

    pub(crate) fn accepted(&mut self, service: Service) {
        self.accepted[service as usize] += 1;
    }

    pub(crate) fn refused(&mut self, why: Refusal) {
        self.refused[why as usize] += 1;
    }

    pub(crate) fn bytes(&mut self, service: Service, read: u64, written: u64) {
        self.bytes_in[service as usize] += read;
        self.bytes_out[service as usize] += written;
    }

    /// The error codes counted so far, with their counts.
    pub(crate) fn errors_by_code(&self) -> impl Iterator<Item = (ErrorCode, u64)> + '_ {
        self.errors
            .iter()
            .enumerate()
            .filter(|&(_, &count)| count > 0)
            .map(|(code, &count)| (ErrorCode::from_u16(code as u16), count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_lands_in_the_first_bucket_whose_bound_it_does_not_pass() {
        let mut turns = TurnHistogram::default();
        turns.observe(Duration::from_micros(3));
        turns.observe(Duration::from_micros(10));
        turns.observe(Duration::from_nanos(10_001));
        turns.observe(Duration::from_secs(2));
        assert_eq!(turns.buckets[0], 2);
        assert_eq!(turns.buckets[1], 1);
        assert_eq!(turns.over, 1);
        assert_eq!(turns.count(), 4);
    }

    #[test]
    fn exit_causes_prefer_the_servers_reason() {
        let exit = |termination, reason| {
            ExitCause::of_exit(&Exit {
                termination,
                reason,
            })
        };
        assert_eq!(
            exit(Termination::Exited(0), EndReason::None),
            ExitCause::Success
        );
        assert_eq!(
            exit(Termination::Exited(3), EndReason::None),
            ExitCause::Failure
        );
        let killed = Termination::Signaled {
            signal: 9,
            core_dumped: false,
        };
        assert_eq!(exit(killed, EndReason::Timeout), ExitCause::Timeout);
        assert_eq!(exit(killed, EndReason::ClientSignal), ExitCause::Signal);
    }
}
