//! Rate-limited logging for events a hostile or overloaded peer can trigger at line rate
//! (refused connections, dropped datagrams): one line per second at most, with a count of what
//! was suppressed in between.

use std::time::Duration;

use crate::timer::Tick;

/// Allows one log line per interval and counts the events it held back.
#[derive(Debug, Default)]
pub(crate) struct LogThrottle {
    last: Option<Tick>,
    suppressed: u64,
}

impl LogThrottle {
    /// The shortest gap between two lines.
    pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

    /// Records one event at `now`. Returns `Some(suppressed)` when a line may be logged now,
    /// with the number of events held back since the previous line.
    pub(crate) fn allow(&mut self, now: Tick) -> Option<u64> {
        match self.last {
            Some(last) if now < last.after(Self::INTERVAL) => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_second_with_suppressed_count() {
        let mut throttle = LogThrottle::default();
        assert_eq!(throttle.allow(Tick(0)), Some(0));
        assert_eq!(throttle.allow(Tick(10)), None);
        assert_eq!(throttle.allow(Tick(999)), None);
        assert_eq!(throttle.allow(Tick(1000)), Some(2));
        assert_eq!(throttle.allow(Tick(1001)), None);
    }
}
