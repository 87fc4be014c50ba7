//! Poll tokens: what each registered source is, packed into the `usize` that `epoll` hands
//! back, and the timer keys that share the same packing.
//!
//! ```text
//!  bit 63      62      61      60 .. 29          28 .. 20          19 .. 0
//!  +------+------+------+------------------+-------------------+---------------+
//!  |  1   |  0   |  0   | generation (32)  | sub-source (9)    | slot (20)     |   a connection's source
//!  +------+------+------+------------------+-------------------+---------------+
//!  |  0   |  1   |  0                                          | child (32)    |   a released child's pidfd
//!  +------+------+-------------------------------------------+---------------+
//!  |  0   |  0   |  0                                          | 0..=11        |   listeners, signals, waker, timers, disk helper
//!  +------+------+-------------------------------------------+---------------+
//!  |  0   |  0   |  0                                          | 16..16+N      |   a metrics connection (and its timer)
//!  +------+------+-------------------------------------------+---------------+
//! ```
//!
//! The sub-source says which of a connection's descriptors an event is about: its socket
//! (`0`), or `0x100 | child << 2 | descriptor` for one of its commands (stdin, stdout, stderr,
//! pidfd). An event for a command's stdout thus finds its connection by slot, is checked
//! against the connection's generation like any other, and finds the command by child number.

use mio::Token;

use super::metrics::MAX_METRICS_CONNECTIONS;
use crate::limits::MAX_CONNECTIONS;
use crate::service::exec::{ChildId, ChildSource};

/// What a poll token (or a ready-list entry) refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// The framed-protocol listener.
    FramedListener,
    /// The raw TCP echo listener.
    EchoListener,
    /// The UDP echo socket.
    Udp,
    /// The self-pipe that SIGINT/SIGTERM write to.
    Signals,
    /// The waker a [`ShutdownHandle`](super::ShutdownHandle) pokes.
    Waker,
    /// One of a connection's descriptors, by slot and generation.
    Conn(ConnKey, Sub),
    /// The pidfd of a child released by its connection, awaiting reaping.
    Released(ChildId),
    /// The disk helper's socket.
    Disk,
    /// The disk helper's pidfd.
    DiskExit,
    /// The metrics listener (`--metrics`).
    MetricsListener,
    /// A metrics connection, by its index in the metrics port's small table.
    Metrics(u8),
}

/// A connection's identity: its slab slot and the generation given at accept. A later
/// connection in the same slot has another generation, so stale tokens do not match it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ConnKey {
    pub(super) slot: u32,
    pub(super) generation: u32,
}

/// Which of a connection's descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sub {
    /// The TCP socket.
    Socket,
    /// A descriptor of the command with this child number (below 64).
    Child(u8, ChildSource),
}

const CONN_BIT: usize = 1 << 63;
const RELEASED_BIT: usize = 1 << 62;
const SLOT_BITS: u32 = 20;
const SUB_BITS: u32 = 9;
const SLOT_MASK: usize = (1 << SLOT_BITS) - 1;
const SUB_MASK: usize = (1 << SUB_BITS) - 1;
const SUB_CHILD: usize = 1 << 8;
const GENERATION_SHIFT: u32 = SLOT_BITS + SUB_BITS;
/// The first metrics connection's token; the table's size bounds the range.
const METRICS_BASE: usize = 16;
const METRICS_END: usize = METRICS_BASE + MAX_METRICS_CONNECTIONS;
const _: () = assert!(METRICS_END <= 64);
const _: () = assert!(usize::BITS == 64, "token layout assumes 64-bit usize");
const _: () = assert!(MAX_CONNECTIONS <= 1 << SLOT_BITS);
const _: () = assert!(GENERATION_SHIFT + 32 <= 62);

impl Sub {
    fn bits(self) -> usize {
        match self {
            Sub::Socket => 0,
            Sub::Child(index, source) => {
                let source = match source {
                    ChildSource::Stdin => 0,
                    ChildSource::Stdout => 1,
                    ChildSource::Stderr => 2,
                    ChildSource::Exit => 3,
                };
                SUB_CHILD | usize::from(index & 63) << 2 | source
            }
        }
    }

    fn from_bits(bits: usize) -> Sub {
        if bits & SUB_CHILD == 0 {
            Sub::Socket
        } else {
            Sub::Child(((bits >> 2) & 63) as u8, ChildSource::ALL[bits & 3])
        }
    }
}

impl ConnKey {
    /// The token of this connection's socket.
    pub(super) fn socket(self) -> Token {
        Source::Conn(self, Sub::Socket).token()
    }
}

impl Source {
    pub(super) fn token(self) -> Token {
        Token(match self {
            Source::FramedListener => 0,
            Source::EchoListener => 1,
            Source::Udp => 2,
            Source::Signals => 3,
            Source::Waker => 4,
            Source::Conn(key, sub) => {
                CONN_BIT
                    | (key.generation as usize) << GENERATION_SHIFT
                    | sub.bits() << SLOT_BITS
                    | key.slot as usize
            }
            Source::Released(child) => RELEASED_BIT | child.0 as usize,
            Source::Disk => 7,
            Source::DiskExit => 8,
            Source::MetricsListener => 10,
            Source::Metrics(index) => METRICS_BASE + usize::from(index),
        })
    }

    pub(super) fn from_token(token: Token) -> Option<Source> {
        Some(match token.0 {
            0 => Source::FramedListener,
            1 => Source::EchoListener,
            2 => Source::Udp,
            3 => Source::Signals,
            4 => Source::Waker,
            7 => Source::Disk,
            8 => Source::DiskExit,
            10 => Source::MetricsListener,
            bits @ METRICS_BASE..METRICS_END => Source::Metrics((bits - METRICS_BASE) as u8),
            bits if bits & CONN_BIT != 0 => Source::Conn(
                ConnKey {
                    slot: (bits & SLOT_MASK) as u32,
                    generation: ((bits & !CONN_BIT) >> GENERATION_SHIFT) as u32,
                },
                Sub::from_bits((bits >> SLOT_BITS) & SUB_MASK),
            ),
            bits if bits & RELEASED_BIT != 0 => {
                Source::Released(ChildId((bits & !RELEASED_BIT) as u32))
            }
            _ => return None,
        })
    }
}

/// Entries in the deadline queue. Stored packed into a [`Token`] (a source's own token, or a
/// constant no source is registered with), so a heap entry is 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TimerKey {
    /// A connection's deadline (idle, frame, linger, or one of its commands').
    Conn(ConnKey),
    /// A released child's SIGKILL deadline.
    Released(ChildId),
    /// End of the shutdown grace period.
    ShutdownGrace,
    /// Try accepting again after running out of descriptors.
    AcceptRetry,
    /// Start the disk helper again after its backoff.
    DiskRestart,
    /// A metrics connection's deadline (its index), packed as its own token.
    Metrics(u8),
    /// End of the drain delay: the shutdown proper begins.
    DrainOver,
}

const SHUTDOWN_GRACE_TIMER: Token = Token(5);
const ACCEPT_RETRY_TIMER: Token = Token(6);
const DISK_RESTART_TIMER: Token = Token(9);
const DRAIN_OVER_TIMER: Token = Token(11);

impl TimerKey {
    pub(super) fn pack(self) -> Token {
        match self {
            TimerKey::Conn(key) => key.socket(),
            TimerKey::Released(child) => Source::Released(child).token(),
            TimerKey::ShutdownGrace => SHUTDOWN_GRACE_TIMER,
            TimerKey::AcceptRetry => ACCEPT_RETRY_TIMER,
            TimerKey::DiskRestart => DISK_RESTART_TIMER,
            TimerKey::Metrics(index) => Source::Metrics(index).token(),
            TimerKey::DrainOver => DRAIN_OVER_TIMER,
        }
    }

    pub(super) fn unpack(token: Token) -> Option<TimerKey> {
        match token {
            SHUTDOWN_GRACE_TIMER => Some(TimerKey::ShutdownGrace),
            ACCEPT_RETRY_TIMER => Some(TimerKey::AcceptRetry),
            DISK_RESTART_TIMER => Some(TimerKey::DiskRestart),
            DRAIN_OVER_TIMER => Some(TimerKey::DrainOver),
            token => match Source::from_token(token)? {
                Source::Conn(key, Sub::Socket) => Some(TimerKey::Conn(key)),
                Source::Released(child) => Some(TimerKey::Released(child)),
                Source::Metrics(index) => Some(TimerKey::Metrics(index)),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_their_encoding() {
        let extremes = [
            ConnKey {
                slot: 0,
                generation: 0,
            },
            ConnKey {
                slot: SLOT_MASK as u32,
                generation: u32::MAX,
            },
        ];
        let subs = [
            Sub::Socket,
            Sub::Child(0, ChildSource::Stdin),
            Sub::Child(63, ChildSource::Exit),
            Sub::Child(17, ChildSource::Stderr),
        ];
        for key in extremes {
            for sub in subs {
                assert_eq!(
                    Source::from_token(Source::Conn(key, sub).token()),
                    Some(Source::Conn(key, sub))
                );
            }
        }
        for source in [
            Source::FramedListener,
            Source::EchoListener,
            Source::Udp,
            Source::Signals,
            Source::Waker,
            Source::Released(ChildId(0)),
            Source::Released(ChildId(u32::MAX)),
            Source::Disk,
            Source::DiskExit,
            Source::MetricsListener,
            Source::Metrics(0),
            Source::Metrics(MAX_METRICS_CONNECTIONS as u8 - 1),
        ] {
            assert_eq!(Source::from_token(source.token()), Some(source));
        }
        for key in [
            TimerKey::ShutdownGrace,
            TimerKey::AcceptRetry,
            TimerKey::DiskRestart,
            TimerKey::DrainOver,
            TimerKey::Conn(extremes[1]),
            TimerKey::Released(ChildId(7)),
            TimerKey::Metrics(1),
        ] {
            assert_eq!(TimerKey::unpack(key.pack()), Some(key));
        }
    }

    #[test]
    fn a_childs_token_names_its_connection_generation_and_descriptor() {
        let key = ConnKey {
            slot: 5,
            generation: 9,
        };
        let token = Source::Conn(key, Sub::Child(3, ChildSource::Stdout)).token();
        let Some(Source::Conn(found, Sub::Child(index, source))) = Source::from_token(token) else {
            panic!("not a child token");
        };
        assert_eq!(found, key, "the generation travels with the child's token");
        assert_eq!((index, source), (3, ChildSource::Stdout));
        assert_ne!(token, key.socket(), "the socket's token differs");
        assert_eq!(
            TimerKey::unpack(token),
            None,
            "child tokens are not timer keys"
        );
    }
}
