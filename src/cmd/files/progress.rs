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
