//! Log lines on stderr, with levels per module in `RUST_LOG`'s syntax, that a reload can
//! change while the server runs.
//!
//! A server line is `2026-12-07T19:18:56.123Z INFO  [monoreactor::reactor] text`: the time in
//! UTC (RFC 3339, milliseconds), the level, the module, the text. Client commands print the
//! same without the time, as they always have (a person reads them, at once).
//!
//! The logger installed is [`Filtered`], a thin `log::Log` of ours: it holds the filter,
//! behind a lock the logging call reads, so SIGHUP can raise the levels as well as lower them
//! (`log-level = "debug"` in the configuration file), and it writes each line itself, in
//! simple_logger's format, as **one** `write(2)` of the whole line with its newline. That is
//! what keeps lines whole with `--workers`, where the supervisor and every worker share one
//! stderr (journald's stream, a file): simple_logger's `eprintln!` made two writes, the text
//! and then the newline, and two processes' lines came out mixed (`A B`, then an empty
//! line). The server has one thread, so the lock is never contended (the disk helper is a
//! process of its own).

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::sync::{OnceLock, RwLock};

use log::{LevelFilter, Log, Metadata, Record};

/// Levels per module: `info,monoreactor::conn=debug,rustls=warn` (the syntax of `RUST_LOG`
/// in env_logger, without its regular expressions). A bare level is the default for every
/// module (`info` if none is given); `MODULE=LEVEL` sets one module and the modules beneath
/// it, the longest match winning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFilter {
    default: LevelFilter,
    /// `(module path, level)`, longest path first so the first match is the most specific.
    modules: Vec<(String, LevelFilter)>,
}

impl LogFilter {
    /// Every module at `level`.
    pub fn level(level: LevelFilter) -> LogFilter {
        LogFilter {
            default: level,
            modules: Vec::new(),
        }
    }

    /// The level for a record from `target` (a module path).
    fn level_for(&self, target: &str) -> LevelFilter {
        self.modules
            .iter()
            .find(|(module, _)| {
                target
                    .strip_prefix(module.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .map_or(self.default, |(_, level)| *level)
    }

    /// The most verbose level any module gets: what `log::set_max_level` must allow.
    fn most_verbose(&self) -> LevelFilter {
        self.modules
            .iter()
            .map(|(_, level)| *level)
            .fold(self.default, Ord::max)
    }
}

impl FromStr for LogFilter {
    type Err = String;
    fn from_str(text: &str) -> Result<LogFilter, String> {
        let level = |word: &str| {
            LevelFilter::from_str(word.trim()).map_err(|_| {
                format!("`{word}` is not a level (off, error, warn, info, debug, trace)")
            })
        };
        let mut filter = LogFilter::level(LevelFilter::Info);
        let mut default_seen = false;
        for part in text
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
        {
            match part.split_once('=') {
                Some((module, word)) => {
                    let module = module.trim();
                    if module.is_empty() || module.contains(char::is_whitespace) {
                        return Err(format!("`{part}`: expected MODULE=LEVEL"));
                    }
                    filter.modules.retain(|(known, _)| known != module);
                    filter.modules.push((module.to_string(), level(word)?));
                }
                None => {
                    if default_seen {
                        return Err(format!("`{text}` names more than one default level"));
                    }
                    default_seen = true;
                    filter.default = level(part)?;
                }
            }
        }
        if !default_seen && filter.modules.is_empty() {
            return Err("empty: expected a level such as info, or MODULE=LEVEL".to_string());
        }
        filter
            .modules
            .sort_by(|(a, _), (b, _)| b.len().cmp(&a.len()).then(a.cmp(b)));
        Ok(filter)
    }
}

impl fmt::Display for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.default.as_str().to_ascii_lowercase())?;
        for (module, level) in &self.modules {
            write!(f, ",{module}={}", level.as_str().to_ascii_lowercase())?;
        }
        Ok(())
    }
}

/// Where a server's log filter comes from, first match wins: `--log-level` on the command
/// line, then `-v`/`-q` there, then `RUST_LOG`, then `log-level` in the configuration file,
/// then `info`. Only the file can change while the server runs, so a reload changes the
/// levels only when none of the first three is given.
#[derive(Clone, Debug, Default)]
pub struct LogSources {
    /// `--log-level`, as typed on the command line (not from the file).
    pub flag: Option<LogFilter>,
    /// `-v` count minus `-q` count.
    pub shift: i16,
    /// `RUST_LOG`, if set and not empty.
    pub env: Option<String>,
}

impl LogSources {
    /// The filter with `file` as the configuration file's `log-level`.
    pub fn choose(&self, file: Option<&LogFilter>) -> Result<LogFilter, String> {
        if let Some(flag) = &self.flag {
            return Ok(flag.clone());
        }
        if self.shift != 0 {
            return Ok(LogFilter::level(shifted(self.shift)));
        }
        if let Some(env) = &self.env {
            return env
                .parse()
                .map_err(|error| format!("RUST_LOG={env}: {error}"));
        }
        Ok(file.cloned().unwrap_or(LogFilter::level(LevelFilter::Info)))
    }

    /// Whether the file's `log-level` counts at all (nothing before it in the order).
    pub fn file_decides(&self) -> bool {
        self.flag.is_none() && self.shift == 0 && self.env.is_none()
    }
}

/// The level `-v` and `-q` give: info moved by their difference.
pub fn shifted(shift: i16) -> LevelFilter {
    match shift {
        ..=-3 => LevelFilter::Off,
        -2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        2.. => LevelFilter::Trace,
    }
}

/// The filter of the installed logger (set once per process, with it); a reload swaps the
/// value inside.
static FILTER: OnceLock<RwLock<LogFilter>> = OnceLock::new();

/// The installed logger: our filter, and the line writer.
struct Filtered {
    filter: &'static RwLock<LogFilter>,
    /// Whether each line starts with the time (the server's lines do).
    timestamps: bool,
}

/// Installs the logger with `filter`; `timestamps` for the server. A second call only
/// changes the filter.
pub fn init(filter: LogFilter, timestamps: bool) -> Result<(), String> {
    if FILTER.get().is_some() {
        set_filter(filter);
        return Ok(());
    }
    let max = filter.most_verbose();
    let filter = FILTER.get_or_init(|| RwLock::new(filter));
    // Installed once per process, for its whole life.
    let logger: &'static Filtered = Box::leak(Box::new(Filtered { filter, timestamps }));
    log::set_logger(logger).map_err(|error| error.to_string())?;
    // The most verbose level any module gets: `log` skips the rest before calling us.
    log::set_max_level(max);
    Ok(())
}

/// A line as simple_logger writes it, newline included: `2026-12-07T19:18:56.123Z INFO
/// [target] text` (the time only with `timestamps`: UTC, RFC 3339, milliseconds).
fn format_line(record: &Record<'_>, timestamps: bool, now: std::time::SystemTime) -> String {
    let target = if record.target().is_empty() {
        record.module_path().unwrap_or_default()
    } else {
        record.target()
    };
    let time = if timestamps {
        format!("{} ", utc_timestamp(now))
    } else {
        String::new()
    };
    format!(
        "{time}{:<5} [{target}] {}\n",
        record.level().to_string(),
        record.args()
    )
}

/// `now` as `2026-12-07T19:18:56.123Z` (days to a civil date: Howard Hinnant's algorithm).
fn utc_timestamp(now: std::time::SystemTime) -> String {
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since.as_secs();
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let of_day = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// Swaps the filter of the installed logger (a reload); nothing if none is installed.
pub fn set_filter(filter: LogFilter) {
    let Some(current) = FILTER.get() else {
        return;
    };
    let max = filter.most_verbose();
    // A poisoned lock only means a panic while logging; the filter itself is still whole.
    match current.write() {
        Ok(mut current) => *current = filter,
        Err(poisoned) => *poisoned.into_inner() = filter,
    }
    log::set_max_level(max);
}

/// The filter in use, if a logger is installed.
pub fn current_filter() -> Option<LogFilter> {
    let filter = match FILTER.get()?.read() {
        Ok(filter) => filter.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    Some(filter)
}

impl Filtered {
    /// Whether the filter lets a record at `metadata` through.
    fn passes(&self, metadata: &Metadata<'_>) -> bool {
        let level = match self.filter.read() {
            Ok(filter) => filter.level_for(metadata.target()),
            Err(poisoned) => poisoned.into_inner().level_for(metadata.target()),
        };
        metadata.level() <= level
    }
}

impl Log for Filtered {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.passes(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.passes(record.metadata()) {
            let line = format_line(record, self.timestamps, std::time::SystemTime::now());
            // One write of the whole line (stderr is unbuffered): lines of processes sharing
            // it stay whole. A stderr that cannot be written has nowhere to report it.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_takes_a_default_and_modules_the_longest_match_winning() {
        let filter: LogFilter = "warn,monoreactor=info,monoreactor::conn=trace"
            .parse()
            .unwrap();
        assert_eq!(filter.level_for("rustls::conn"), LevelFilter::Warn);
        assert_eq!(filter.level_for("monoreactor::reactor"), LevelFilter::Info);
        assert_eq!(
            filter.level_for("monoreactor::conn::framed"),
            LevelFilter::Trace
        );
        assert_eq!(
            filter.level_for("monoreactor_cli"),
            LevelFilter::Warn,
            "a module path prefix only at a :: boundary"
        );
        assert_eq!(filter.most_verbose(), LevelFilter::Trace);
        assert_eq!(
            filter.to_string(),
            "warn,monoreactor::conn=trace,monoreactor=info"
        );
        let only_module: LogFilter = "monoreactor=debug".parse().unwrap();
        assert_eq!(only_module.level_for("other"), LevelFilter::Info);
    }

    #[test]
    fn bad_filters_say_what_is_wrong() {
        for (text, expected) in [
            ("loud", "not a level"),
            ("info,debug", "more than one default"),
            ("=debug", "MODULE=LEVEL"),
            ("", "empty"),
            ("monoreactor=loud", "not a level"),
        ] {
            let error = text.parse::<LogFilter>().unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn the_flag_beats_the_environment_which_beats_the_file() {
        let file: LogFilter = "debug".parse().unwrap();
        let mut sources = LogSources::default();
        assert_eq!(sources.choose(Some(&file)).unwrap(), file);
        assert_eq!(
            sources.choose(None).unwrap(),
            LogFilter::level(LevelFilter::Info)
        );
        sources.env = Some("error".to_string());
        assert_eq!(
            sources.choose(Some(&file)).unwrap(),
            LogFilter::level(LevelFilter::Error)
        );
        sources.shift = -1;
        assert_eq!(
            sources.choose(Some(&file)).unwrap(),
            LogFilter::level(LevelFilter::Warn)
        );
        sources.flag = Some("trace".parse().unwrap());
        assert_eq!(
            sources.choose(Some(&file)).unwrap(),
            LogFilter::level(LevelFilter::Trace)
        );
        assert!(!sources.file_decides());
    }

    #[test]
    fn the_wrapper_passes_what_its_filter_enables_and_follows_a_swap() {
        let filter = Box::leak(Box::new(RwLock::new(
            "warn,monoreactor::conn=debug".parse::<LogFilter>().unwrap(),
        )));
        let logger = Filtered {
            filter,
            timestamps: false,
        };
        let at = |level, target| {
            logger.enabled(&Metadata::builder().level(level).target(target).build())
        };
        assert!(at(log::Level::Debug, "monoreactor::conn::framed"));
        assert!(!at(log::Level::Trace, "monoreactor::conn"));
        assert!(!at(log::Level::Info, "monoreactor::reactor"));
        assert!(at(log::Level::Warn, "rustls"));
        *filter.write().unwrap() = "trace".parse().unwrap();
        assert!(at(log::Level::Trace, "monoreactor::reactor"));
        *filter.write().unwrap() = "off".parse().unwrap();
        assert!(!at(log::Level::Error, "monoreactor::conn"));
    }

    #[test]
    fn a_line_is_simple_logger_s_format_with_its_newline() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let line = format_line(
            &Record::builder()
                .level(log::Level::Info)
                .target("monoreactor::access")
                .args(format_args!("hello"))
                .build(),
            true,
            at,
        );
        assert_eq!(
            line,
            "2023-11-14T22:13:20.123Z INFO  [monoreactor::access] hello\n"
        );
        let line = format_line(
            &Record::builder()
                .level(log::Level::Error)
                .target("x")
                .args(format_args!("bad"))
                .build(),
            false,
            at,
        );
        assert_eq!(line, "ERROR [x] bad\n");
    }

    #[test]
    fn timestamps_are_civil_dates() {
        let at = |seconds: u64| {
            utc_timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(951_868_800), "2000-03-01T00:00:00.000Z");
        assert_eq!(at(1_735_689_599), "2024-12-31T23:59:59.000Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00.000Z");
    }
}
