//! Log lines on stderr, with levels per module in `RUST_LOG`'s syntax, that a reload can
//! change while the server runs.
//!
//! A server line is `2026-12-07T19:18:56.123Z INFO  [monoreactor::reactor] text`: the time in
//! UTC (RFC 3339, milliseconds), the level, the module, the text. Client commands print the
//! same without the time, as they always have (a person reads them, at once).
//!
//! `simple_logger` formats and writes every line. What it cannot do is change its levels once
//! it is installed, and SIGHUP must be able to raise them (`log-level = "debug"` in the
//! configuration file) as well as lower them. So the logger installed is [`Filtered`], a thin
//! `log::Log` of ours: it holds the filter, behind a lock the logging call reads, and hands a
//! record to the inner `SimpleLogger` (itself at `Trace`, so it lets everything through) only
//! when the filter enables it. The server has one thread, so the lock is never contended (the
//! disk helper is a process of its own).

use std::fmt;
use std::str::FromStr;
use std::sync::{OnceLock, RwLock};

use log::{LevelFilter, Log, Metadata, Record};
use simple_logger::SimpleLogger;

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

/// The installed logger: our filter in front of `simple_logger`, which writes the lines.
struct Filtered {
    filter: &'static RwLock<LogFilter>,
    /// At `Trace` with no module levels: everything that reaches it is written.
    inner: SimpleLogger,
}

/// Installs the logger with `filter`; `timestamps` for the server. A second call only
/// changes the filter.
pub fn init(filter: LogFilter, timestamps: bool) -> Result<(), String> {
    if FILTER.get().is_some() {
        set_filter(filter);
        return Ok(());
    }
    let inner = SimpleLogger::new().with_level(LevelFilter::Trace);
    let inner = if timestamps {
        // `2026-12-07T19:18:56.123Z`: simple_logger's UTC format, RFC 3339 with milliseconds.
        inner.with_utc_timestamps()
    } else {
        inner.without_timestamps()
    };
    let max = filter.most_verbose();
    let filter = FILTER.get_or_init(|| RwLock::new(filter));
    log::set_boxed_logger(Box::new(Filtered { filter, inner }))
        .map_err(|error| error.to_string())?;
    // What `SimpleLogger::init` would do with its own levels; ours are the filter's.
    log::set_max_level(max);
    Ok(())
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
        self.passes(metadata) && self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.passes(record.metadata()) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
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
            inner: SimpleLogger::new()
                .with_level(LevelFilter::Trace)
                .without_timestamps(),
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
}
