//! Time as the loop sees it, and the deadline queue that sets `poll`'s timeout.
//!
//! The reactor reads the clock once per turn and hands the result ([`Tick`]) to everything else,
//! so connection code never reads the clock itself and tests can pass any time they like.
//!
//! [`TimerQueue`] is a min-heap of `(deadline, key)`. Entries are *hints*: when one comes due,
//! its owner recomputes its real deadline from its own state and either acts or pushes a new
//! entry. So pushing a later deadline never needs to find and update the old entry (an idle
//! connection's deadline moves on every byte, and costs nothing until it fires), and a
//! leftover entry for a closed connection is simply ignored. Owners push only when their
//! deadline moves *earlier* than the one they have queued (libev's "be smart about timeouts",
//! strategy 2), and [`TimerQueue::retain`] sweeps out leftovers when they outnumber the live
//! entries, so churn cannot grow the heap.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the reactor started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(pub u64);

impl Tick {
    /// A deadline that never comes: later than every real tick, so `min` ignores it. Used
    /// instead of `Option<Tick>` to keep per-connection state small.
    pub const NEVER: Tick = Tick(u64::MAX);

    /// The tick `duration` after this one, rounded up to the next millisecond so a deadline never
    /// fires early.
    pub fn after(self, duration: Duration) -> Tick {
        // Whole seconds and a rounded-up millisecond part: u64 arithmetic only, since this runs
        // on every drive (a `u128` division showed in profiles).
        let millis = duration
            .as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(duration.subsec_nanos().div_ceil(1_000_000)));
        Tick(self.0.saturating_add(millis))
    }

    /// Time from `self` until `later`, zero if `later` is not later.
    pub fn until(self, later: Tick) -> Duration {
        Duration::from_millis(later.0.saturating_sub(self.0))
    }
}

/// Converts the monotonic clock to [`Tick`]s.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Clock {
    epoch: Instant,
}

impl Clock {
    /// A clock whose tick 0 is now.
    pub(crate) fn start() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    /// The current tick. (`as_secs` and `subsec_millis` rather than `as_millis`, whose `u128`
    /// division shows up in a profile of the loop.)
    pub(crate) fn now(&self) -> Tick {
        let elapsed = self.epoch.elapsed();
        Tick(
            elapsed
                .as_secs()
                .saturating_mul(1000)
                .saturating_add(u64::from(elapsed.subsec_millis())),
        )
    }
}

/// The wall clock: nanoseconds since the Unix epoch, the time file timestamps are kept in.
///
/// [`Tick`] is for deadlines; this is for what must be compared with a file's mtime or ctime:
/// when a GET's hashing began (the hash cache trusts an entry only if that was well after
/// the file's last change), and the age of an upload's leftovers. The reactor reads it once
/// per turn, beside `Tick`, when it serves files, and everything below gets it as an argument
/// ([`Context::wall_clock`](crate::conn::Context::wall_clock)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallClock(pub i64);

impl WallClock {
    /// Reads the system's real-time clock (0 if it is set before the epoch). Only the loop
    /// (and a harness playing it) calls this.
    pub fn read() -> WallClock {
        WallClock(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as i64),
        )
    }
}

/// A min-heap of deadlines; see the module docs for how entries are used as hints.
#[derive(Debug)]
pub(crate) struct TimerQueue<K: Ord> {
    heap: BinaryHeap<Reverse<(Tick, K)>>,
}

impl<K: Ord + Copy> TimerQueue<K> {
    /// An empty queue with room for `capacity` entries before it reallocates.
    pub(crate) fn with_capacity(capacity: usize) -> TimerQueue<K> {
        TimerQueue {
            heap: BinaryHeap::with_capacity(capacity),
        }
    }

    /// Queues `key` to come due at `at`.
    pub(crate) fn push(&mut self, at: Tick, key: K) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest deadline, if any.
    pub(crate) fn next_deadline(&self) -> Option<Tick> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Tick) -> Option<(Tick, K)> {
        if self.next_deadline()? > now {
            return None;
        }
        self.heap.pop().map(|Reverse(entry)| entry)
    }

    /// Entries queued, live or stale.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries for which `keep(deadline, key)` is true, in place. Owners call it
    /// when stale entries pile up (see the module docs), which bounds the heap by the live ones.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(Tick, K) -> bool) {
        self.heap.retain(|Reverse((at, key))| keep(*at, *key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_rounds_up_to_whole_milliseconds() {
        assert_eq!(Tick(10).after(Duration::from_micros(1)), Tick(11));
        assert_eq!(Tick(10).after(Duration::from_millis(5)), Tick(15));
        assert_eq!(
            Tick(u64::MAX - 1).after(Duration::from_secs(9)),
            Tick(u64::MAX)
        );
    }

    #[test]
    fn until_saturates_at_zero() {
        assert_eq!(Tick(5).until(Tick(8)), Duration::from_millis(3));
        assert_eq!(Tick(8).until(Tick(5)), Duration::ZERO);
    }

    #[test]
    fn retain_drops_entries_and_keeps_heap_order() {
        let mut queue = TimerQueue::with_capacity(8);
        for (at, key) in [(50, 5), (10, 1), (40, 4), (20, 2), (30, 3)] {
            queue.push(Tick(at), key);
        }
        queue.retain(|_, key| key % 2 == 1);
        assert_eq!(queue.len(), 3);
        let order: Vec<u32> =
            std::iter::from_fn(|| queue.pop_due(Tick(100)).map(|(_, key)| key)).collect();
        assert_eq!(order, [1, 3, 5]);
    }

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let mut queue = TimerQueue::with_capacity(4);
        queue.push(Tick(30), 'c');
        queue.push(Tick(10), 'a');
        queue.push(Tick(20), 'b');
        assert_eq!(queue.next_deadline(), Some(Tick(10)));
        assert_eq!(queue.pop_due(Tick(9)), None);
        assert_eq!(queue.pop_due(Tick(25)), Some((Tick(10), 'a')));
        assert_eq!(queue.pop_due(Tick(25)), Some((Tick(20), 'b')));
        assert_eq!(queue.pop_due(Tick(25)), None);
        assert_eq!(queue.len(), 1);
    }
}
