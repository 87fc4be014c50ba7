//! While a load run goes: a progress line on a terminal, and Ctrl-C. The run counts its
//! requests and errors in [`monoreactor_bench::live`]; a thread here shows them once a second
//! on stderr when stderr is a terminal (never in a pipe or a file, never with `-q`), and
//! SIGINT asks the run to stop and report what it has (a second SIGINT ends at once, 130).

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use monoreactor_bench::live;

/// How often the progress line changes.
const EVERY: Duration = Duration::from_secs(1);

/// A run in progress: Ctrl-C caught and, on a terminal, the progress line. Dropping it
/// removes the line.
pub struct Watch {
    progress: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Watch {
    /// Catches SIGINT and, unless `quiet` or stderr is not a terminal, starts the progress
    /// line.
    pub fn start(quiet: bool) -> Watch {
        catch_interrupt();
        let progress = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let done = Arc::new(AtomicBool::new(false));
            let thread_done = Arc::clone(&done);
            let started = Instant::now();
            let handle = thread::spawn(move || show_progress(&thread_done, started));
            (done, handle)
        });
        Watch { progress }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some((done, handle)) = self.progress.take() {
            done.store(true, Ordering::Relaxed);
            // The thread only writes to stderr: nothing of it to report.
            let _ = handle.join();
        }
    }
}

/// Runs `run` watched ([`Watch`], quiet if the command line says so); the progress line is
/// gone when it returns, before the report is printed.
pub fn watched<T>(run: impl FnOnce() -> T) -> T {
    let _watch = Watch::start(quiet_asked());
    run()
}

/// Rewrites one line on stderr every [`EVERY`] until `done`, then erases it, so the report
/// on stdout follows a clean terminal.
fn show_progress(done: &AtomicBool, started: Instant) {
    let mut next = started + EVERY;
    let mut shown = false;
    while !done.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now < next {
            thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        next += EVERY;
        let (requests, errors) = live::counts();
        // A terminal that cannot be written is no reason to stop the run.
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[K{:.0}s elapsed, {requests} requests, {errors} errors",
            started.elapsed().as_secs_f64()
        );
        shown = true;
    }
    if shown {
        let _ = write!(std::io::stderr(), "\r\x1b[K");
    }
}

/// SIGINT stops the run ([`live::interrupt`]); a second one, before the run has stopped,
/// ends the process at once with 130 as the default action would have.
fn catch_interrupt() {
    use signal_hook::consts::SIGINT;
    let flag = live::stop_flag();
    let installed = signal_hook::flag::register_conditional_shutdown(SIGINT, 130, flag)
        .and_then(|_| signal_hook::flag::register(SIGINT, flag));
    if let Err(error) = installed {
        log::warn!("cannot catch SIGINT: Ctrl-C will end the run without its report: {error}");
    }
}

/// Whether the command line asked for quiet (`-q`, `--quiet`, `-vq`): the program's global
/// flag, as `main` parsed it.
pub fn quiet_asked() -> bool {
    crate::args::quiet()
}
