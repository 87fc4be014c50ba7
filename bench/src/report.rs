//! What every `bench` workload reports, and the bookkeeping that produces it: a measured
//! window (after an optional warm-up), an HDR histogram of latencies, errors counted by kind,
//! the server's and the generator's own CPU time, and the reason a run ended early. A
//! [`Report`] is data: `monoreactor bench` writes it as text or JSON.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::procstat;

/// When a run stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// After this long (measured from the end of the warm-up).
    After(Duration),
    /// After this many requests completed in the window.
    Requests(u64),
}

/// A setting shown in the report's header and in its JSON.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A whole number.
    Int(u64),
    /// A number.
    Num(f64),
    /// Text.
    Text(String),
}

/// A finished run: what was measured, and how it ended.
#[derive(Clone, Debug)]
pub struct Report {
    /// The workload: `echo framed`, `echo raw`, `udp`, `connect`, `get`, `put`, `exec`.
    pub what: String,
    /// The target, `HOST:PORT`.
    pub addr: String,
    /// The settings that shape the load (connections, size, depth, rate...).
    pub settings: Vec<(&'static str, Value)>,
    /// What one request is called in the rate: `req`, `conn`, `datagram`, `transfer`, `command`.
    pub unit: &'static str,
    /// Requests completed in the window.
    pub requests: u64,
    /// Payload bytes moved in the window, sent plus received: both directions for an echo,
    /// the file's bytes for a GET or a PUT, none for exec.
    pub bytes: u64,
    /// Length of the window.
    pub elapsed: Duration,
    /// Errors by kind (`SERVER_BUSY`, `closed by server`, `connection refused`, ...), warm-up
    /// included.
    pub errors: BTreeMap<String, u64>,
    /// Requests sent again on a new connection because the server's SHUTTING_DOWN said they
    /// were not processed (`echo --reconnect`; warm-up included): not errors.
    pub retried: u64,
    /// Latencies in the window, nanoseconds.
    pub latency: Histogram<u64>,
    /// The server's CPU time (user + system) over the window, if its pid was given.
    pub server_cpu: Option<Duration>,
    /// This process's own CPU time over the window: how close the generator came to being the
    /// bottleneck.
    pub client_cpu: Option<Duration>,
    /// Threads the generator ran (1 for the event-loop workloads).
    pub client_threads: usize,
    /// Why the run ended before its time or count (the results are then partial).
    pub ended_early: Option<String>,
}

/// A histogram for latencies in nanoseconds, 1 ns to an hour, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("constant, valid bounds")
}

/// Adds `count` to `errors[kind]`.
pub fn count_error(errors: &mut BTreeMap<String, u64>, kind: &str, count: u64) {
    if let Some(seen) = errors.get_mut(kind) {
        *seen += count;
    } else {
        errors.insert(kind.to_string(), count);
    }
}

impl Report {
    /// Requests per second in the window.
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload megabytes (10^6 bytes) per second in the window, counting every payload byte
    /// sent and every one received: an echo of 64 bytes is 128, a GET or a PUT of 1 MB is 1 MB.
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// All errors, whatever their kind.
    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Latency at `quantile` (0..=1), microseconds; 0 with no samples.
    pub fn latency_us(&self, quantile: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// The latency statistics a report shows, microseconds (0 with no samples): `min`, `avg`,
    /// `p50`, `p90`, `p99`, `p99.9`, `max`.
    pub fn latency_table(&self) -> [(&'static str, f64); 7] {
        let h = &self.latency;
        let us = |ns: u64| ns as f64 / 1000.0;
        let (min, avg, max) = if h.is_empty() {
            (0.0, 0.0, 0.0)
        } else {
            (us(h.min()), h.mean() / 1000.0, us(h.max()))
        };
        [
            ("min", min),
            ("avg", avg),
            ("p50", self.latency_us(0.50)),
            ("p90", self.latency_us(0.90)),
            ("p99", self.latency_us(0.99)),
            ("p99.9", self.latency_us(0.999)),
            ("max", max),
        ]
    }

    /// A CPU time ([`Report::server_cpu`], [`Report::client_cpu`]) per request in the window,
    /// microseconds; `None` without it or without requests.
    pub fn per_request(&self, cpu: Option<Duration>) -> Option<f64> {
        cpu.filter(|_| self.requests > 0)
            .map(|cpu| cpu.as_secs_f64() * 1e6 / self.requests as f64)
    }

    /// The generator's CPU time as a share of one core (or of its threads' cores).
    pub fn generator_busy(&self) -> Option<f64> {
        // Below a few milliseconds the share says nothing (CPU time counts in microseconds).
        self.client_cpu
            .filter(|_| self.elapsed >= Duration::from_millis(5))
            .map(|cpu| cpu.as_secs_f64() / self.elapsed.as_secs_f64())
    }
}

/// CPU time of a process, or `None` if it cannot be read (a server that went away).
pub(crate) fn cpu_of(pid: Option<u32>) -> Option<Duration> {
    pid.and_then(|pid| procstat::cpu_time(pid).ok())
}

/// This process's CPU time (user + system, every thread), to the microsecond: `/proc` counts
/// in clock ticks (10 ms), too coarse for a short run.
pub(crate) fn own_cpu() -> Option<Duration> {
    // SAFETY: getrusage writes one `rusage` into the zeroed value it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let time = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
    };
    Some(time(usage.ru_utime) + time(usage.ru_stime))
}

/// The measured window of an event-loop run: when it starts and ends, the latencies and
/// errors recorded, CPU snapshots at both ends.
pub(crate) struct Recorder {
    latency: Histogram<u64>,
    requests: u64,
    bytes_per_request: u64,
    errors: BTreeMap<String, u64>,
    retried: u64,
    measure_from: Instant,
    measuring: bool,
    stop: Stop,
    server_pid: Option<u32>,
    cpu_at_start: (Option<Duration>, Option<Duration>),
    last_success: Instant,
    last_error: Option<Instant>,
}

/// How long a run goes on failing, with no success, before it ends early.
pub(crate) const GIVE_UP_AFTER: Duration = Duration::from_secs(1);

impl Recorder {
    pub(crate) fn new(
        stop: Stop,
        warmup: Duration,
        server_pid: Option<u32>,
        bytes_per_request: u64,
    ) -> Recorder {
        let now = Instant::now();
        let mut recorder = Recorder {
            latency: latency_histogram(),
            requests: 0,
            bytes_per_request,
            errors: BTreeMap::new(),
            retried: 0,
            measure_from: now + warmup,
            measuring: false,
            stop,
            server_pid,
            cpu_at_start: (None, None),
            last_success: now,
            last_error: None,
        };
        recorder.tick(now);
        recorder
    }

    /// Starts the window once the warm-up is over.
    pub(crate) fn tick(&mut self, now: Instant) {
        if !self.measuring && now >= self.measure_from {
            self.measuring = true;
            self.measure_from = now;
            self.cpu_at_start = (cpu_of(self.server_pid), own_cpu());
        }
    }

    /// One request completed at `now` after `latency`.
    pub(crate) fn record(&mut self, now: Instant, latency: Duration) {
        self.last_success = now;
        if self.measuring && !self.finished(now) {
            self.latency
                .saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
            self.requests += 1;
            crate::live::request();
        }
    }

    /// One error of `kind`.
    pub(crate) fn error(&mut self, now: Instant, kind: &str) {
        self.last_error = Some(now);
        count_error(&mut self.errors, kind, 1);
        crate::live::error();
    }

    /// `count` requests sent again after SHUTTING_DOWN ([`Report::retried`]).
    pub(crate) fn retried(&mut self, count: u64) {
        self.retried += count;
    }

    /// Whether the window has ended (its time is up or its count reached).
    pub(crate) fn finished(&self, now: Instant) -> bool {
        self.measuring
            && match self.stop {
                Stop::After(duration) => now >= self.measure_from + duration,
                Stop::Requests(count) => self.requests >= count,
            }
    }

    /// Whether the run has only failed for [`GIVE_UP_AFTER`].
    pub(crate) fn failing(&self, now: Instant) -> bool {
        self.last_error
            .is_some_and(|error| error > self.last_success)
            && now.saturating_duration_since(self.last_success) >= GIVE_UP_AFTER
    }

    /// The errors so far, `KIND COUNT, ...`.
    pub(crate) fn error_summary(&self) -> String {
        let kinds: Vec<String> = self
            .errors
            .iter()
            .map(|(kind, count)| format!("{kind} {count}"))
            .collect();
        kinds.join(", ")
    }

    /// When the run must next wake up for the window (its start or its end), if ever.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if !self.measuring {
            return Some(self.measure_from);
        }
        match self.stop {
            Stop::After(duration) => Some(self.measure_from + duration),
            Stop::Requests(_) => None,
        }
    }

    /// The report, `ended_early` saying why if the window was cut short.
    pub(crate) fn finish(
        self,
        what: String,
        addr: String,
        settings: Vec<(&'static str, Value)>,
        unit: &'static str,
        ended_early: Option<String>,
    ) -> Report {
        // A run cut short ends at its last success: the wait that showed nothing would come
        // any more is not part of the measurement.
        let now = match ended_early {
            Some(_) => self.last_success.max(self.measure_from),
            None => Instant::now(),
        };
        let elapsed = if self.measuring {
            let elapsed = now.saturating_duration_since(self.measure_from);
            match self.stop {
                Stop::After(duration) => elapsed.min(duration),
                Stop::Requests(_) => elapsed,
            }
        } else {
            Duration::ZERO
        };
        let since = |start: Option<Duration>, end: Option<Duration>| match (start, end) {
            (Some(start), Some(end)) => Some(end.saturating_sub(start)),
            _ => None,
        };
        let server_cpu = since(self.cpu_at_start.0, cpu_of(self.server_pid));
        let client_cpu = since(self.cpu_at_start.1, own_cpu());
        Report {
            what,
            addr,
            settings,
            unit,
            requests: self.requests,
            bytes: self.requests * self.bytes_per_request,
            elapsed,
            errors: self.errors,
            retried: self.retried,
            latency: self.latency,
            server_cpu,
            client_cpu,
            client_threads: 1,
            ended_early,
        }
    }
}

/// Open-loop pacing (wrk2's): request `k` is due at `start + k / rate`, whatever happened to
/// the ones before it; its latency counts from then, so a stall delays every request
/// scheduled behind it and shows in the percentiles (no coordinated omission).
pub(crate) struct Pacer {
    start: Instant,
    interval_ns: f64,
    next: u64,
}

impl Pacer {
    pub(crate) fn new(rate: f64) -> Pacer {
        Pacer {
            start: Instant::now(),
            interval_ns: 1e9 / rate.max(1e-3),
            next: 0,
        }
    }

    /// When the next request is due.
    pub(crate) fn next_at(&self) -> Instant {
        self.start + Duration::from_nanos((self.next as f64 * self.interval_ns) as u64)
    }

    /// The next request's scheduled time if it is due at `now`.
    pub(crate) fn due(&mut self, now: Instant) -> Option<Instant> {
        let at = self.next_at();
        (at <= now).then(|| {
            self.next += 1;
            at
        })
    }
}

/// Whether an error `kind` of a [`Report`] is the server's answer rather than a failure of the
/// connection or of the client: an ERROR code the server sent (`SERVER_BUSY`, `NOT_FOUND`,
/// ...) or the end of a command it ran (`exit 1`, `signal 9`). A run that only ever got such
/// answers was refused by the server; one with any other error, or none, failed on the way.
pub fn refused_by_server(kind: &str) -> bool {
    let code = !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_uppercase() || b == b'_');
    code || kind.starts_with("exit ") || kind.starts_with("signal ")
}

/// A short name for an I/O error, to count errors by kind.
pub(crate) fn io_kind(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    if let Some(error) = crate::tls::rustls_error(error) {
        return format!("TLS: {error}");
    }
    match error.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_string(),
        ErrorKind::ConnectionReset => "connection reset".to_string(),
        ErrorKind::ConnectionAborted => "connection aborted".to_string(),
        ErrorKind::BrokenPipe => "broken pipe".to_string(),
        ErrorKind::TimedOut => "timed out".to_string(),
        ErrorKind::AddrNotAvailable => "no local port (EADDRNOTAVAIL)".to_string(),
        ErrorKind::UnexpectedEof => "closed by server".to_string(),
        _ => match error.raw_os_error() {
            Some(code) => std::io::Error::from_raw_os_error(code).to_string(),
            None => error.kind().to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_counts_the_window_and_errors_by_kind() {
        let mut recorder = Recorder::new(Stop::Requests(2), Duration::ZERO, None, 128);
        let now = Instant::now();
        recorder.record(now, Duration::from_micros(10));
        recorder.record(now, Duration::from_micros(30));
        recorder.record(now, Duration::from_micros(99));
        recorder.error(now, "SERVER_BUSY");
        let report = recorder.finish(
            "echo raw".into(),
            "127.0.0.1:1".into(),
            vec![("connections", Value::Int(1))],
            "req",
            None,
        );
        assert_eq!(report.requests, 2);
        assert_eq!(report.bytes, 256);
        assert_eq!(report.settings, vec![("connections", Value::Int(1))]);
        assert_eq!(
            report.errors,
            BTreeMap::from([("SERVER_BUSY".to_string(), 1)])
        );
        assert_eq!(report.error_total(), 1);
        assert!(report.ended_early.is_none());
        let table = report.latency_table();
        let names: Vec<&str> = table.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["min", "avg", "p50", "p90", "p99", "p99.9", "max"]);
        // The third request came after the window's count: 10 and 30 us only.
        assert!((9.9..=10.1).contains(&table[0].1), "{table:?}");
        assert!((29.9..=30.1).contains(&table[6].1), "{table:?}");
    }

    #[test]
    fn server_answers_are_told_from_connection_failures() {
        for kind in ["SERVER_BUSY", "NOT_FOUND", "exit 1", "signal 9"] {
            assert!(refused_by_server(kind), "{kind}");
        }
        for kind in [
            "connection refused",
            "closed by server",
            "TLS: x",
            "",
            "lost (no reply within 1 s)",
        ] {
            assert!(!refused_by_server(kind), "{kind}");
        }
    }

    #[test]
    fn pacer_schedules_at_the_rate() {
        let mut pacer = Pacer::new(1000.0);
        let later = pacer.start + Duration::from_micros(4500);
        let mut due = 0;
        while pacer.due(later).is_some() {
            due += 1;
        }
        assert_eq!(due, 5);
    }
}
