//! The progress bar of `get` and `put` (and of hashing before a `put`): bytes, rate and ETA
//! on stderr, only when stderr is a terminal, never on a pipe or in a log.

use std::io::{self, IsTerminal};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr when it is a terminal, drawn from the first report on (so a
/// request that fails at once draws nothing); nothing at all otherwise.
pub struct Bar {
    label: String,
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl Bar {
    /// A bar labelled `label`, not drawn yet.
    pub fn new(label: &str) -> Bar {
        Bar {
            label: label.to_string(),
            enabled: io::stderr().is_terminal(),
            bar: None,
        }
    }

    /// `done` of `total` bytes so far; the first call draws the bar.
    pub fn show(&mut self, done: u64, total: u64) {
        if !self.enabled {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        match ProgressStyle::with_template(
            "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        ) {
            Ok(style) => bar.set_style(style),
            Err(error) => log::debug!("progress bar template: {error}"),
        }
        bar.set_message(self.label.clone());
        // A resumed transfer starts part-way: the rate and ETA count from here.
        bar.set_position(done);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    /// Takes the bar off the terminal (before a message goes to stderr, say).
    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Whether `-q`/`--quiet` was given (the global flag, as `main` parsed it).
pub fn quiet() -> bool {
    crate::args::quiet()
}

/// One bar for a tree transfer (files, bytes, rate, ETA), and the line left after it, both
/// on a terminal only and neither with `-q`.
pub struct TreeBar {
    verb: &'static str,
    enabled: bool,
    bar: Option<ProgressBar>,
    started: std::time::Instant,
    last: monoreactor::client::tree::Tally,
}

impl TreeBar {
    /// A bar for `verb` ("put", "get"), not drawn yet.
    pub fn new(verb: &'static str) -> TreeBar {
        TreeBar {
            verb,
            enabled: io::stderr().is_terminal() && !quiet(),
            bar: None,
            started: std::time::Instant::now(),
            last: Default::default(),
        }
    }

    /// Where the transfer is.
    pub fn show(&mut self, tally: &monoreactor::client::tree::Tally) {
        self.last = *tally;
        if !self.enabled {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let bar =
                ProgressBar::with_draw_target(Some(tally.bytes), ProgressDrawTarget::stderr());
            match ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            ) {
                Ok(style) => bar.set_style(style),
                Err(error) => log::debug!("progress bar template: {error}"),
            }
            bar
        });
        bar.set_message(format!(
            "{} files {}/{}",
            self.verb, tally.files_done, tally.files
        ));
        bar.set_position(tally.bytes_done);
    }

    /// Takes the bar off and, on a terminal, leaves one line: files, bytes, time, rate.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.enabled {
            return;
        }
        let seconds = self.started.elapsed().as_secs_f64().max(1e-3);
        let tally = self.last;
        let skipped = if tally.skipped > 0 {
            format!(" ({} already there)", tally.skipped)
        } else {
            String::new()
        };
        eprintln!(
            "{} {} files{skipped}, {} in {seconds:.1} s ({}/s)",
            self.verb,
            tally.files_done,
            indicatif::HumanBytes(tally.bytes_done),
            indicatif::HumanBytes((tally.bytes_done as f64 / seconds) as u64),
        );
    }
}
