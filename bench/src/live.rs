//! What a run shows while it goes, and how it is told to stop early.
//!
//! The event-loop workloads and the blocking threads count every request and error here as
//! they happen, so `monoreactor bench` can show a progress line on a terminal without
//! reaching into a run. [`interrupt`] (called from a SIGINT handler: it only stores to an
//! atomic, which is async-signal-safe) makes every run end at its next turn with a partial
//! report whose `ended_early` is [`INTERRUPTED`], and the file workloads then remove their
//! files as after a complete run. One process runs one benchmark, so these are process-wide.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The `ended_early` of a run cut short by [`interrupt`].
pub const INTERRUPTED: &str = "interrupted (SIGINT)";

static REQUESTS: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

/// Asks the running benchmark to stop and report what it has. Async-signal-safe.
pub fn interrupt() {
    STOP.store(true, Ordering::SeqCst);
}

/// The flag [`interrupt`] sets, for a signal handler that sets it itself
/// (`signal_hook::flag::register`).
pub fn stop_flag() -> &'static AtomicBool {
    &STOP
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Requests completed in the measured window, and errors, so far.
pub fn counts() -> (u64, u64) {
    (
        REQUESTS.load(Ordering::Relaxed),
        ERRORS.load(Ordering::Relaxed),
    )
}

/// One request completed in the measured window.
pub(crate) fn request() {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
}

/// One error.
pub(crate) fn error() {
    ERRORS.fetch_add(1, Ordering::Relaxed);
}
