//! The restart policy shared by the two supervisors of helper processes — the workers'
//! supervisor ([`crate::workers`]) and the disk helper's ([`super::disk`]): restart at once
//! after the first death, then back off, doubling from [`FIRST_BACKOFF`] up to
//! [`MAX_BACKOFF`]; a process that lived [`STABLE_AFTER`] resets the backoff.

use std::time::Duration;

use rustix::process::WaitIdStatus;

/// The first restart delay after the immediate one.
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest restart delay.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A process that lived this long resets its backoff.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(10);

/// The delay before restarting a process after `crashes` short-lived predecessors: none for
/// the first, then [`FIRST_BACKOFF`] doubling up to [`MAX_BACKOFF`].
pub(crate) fn backoff(crashes: u32) -> Duration {
    match crashes {
        0 => Duration::ZERO,
        n => FIRST_BACKOFF
            .saturating_mul(1 << (n - 1).min(16))
            .min(MAX_BACKOFF),
    }
}

/// How a reaped process ended, for the log.
pub(crate) fn describe(status: &WaitIdStatus) -> String {
    if let Some(code) = status.exit_status() {
        format!("exited with status {code}")
    } else if let Some(signal) = status.terminating_signal() {
        format!("was killed by signal {signal}")
    } else {
        "ended".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_at_zero_and_is_capped() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
