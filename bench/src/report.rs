//! What every `bench` workload reports, and the bookkeeping that produces it: a measured
//! window (after an optional warm-up), an HDR histogram of latencies, errors counted by kind,
//! the server's and the generator's own CPU time, and the reason a run ended early.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::procstat;
use monoreactor::client::files::json_string;

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

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(n) => write!(f, "{n}"),
            Value::Num(n) => write!(f, "{n}"),
            Value::Text(text) => f.write_str(text),
        }
    }
}

impl Value {
    fn json(&self) -> String {
        match self {
            Value::Int(n) => n.to_string(),
            Value::Num(n) => json_number(*n),
            Value::Text(text) => json_string(text),
        }
    }
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
    /// Payload bytes moved in the window (both directions for an echo).
    pub bytes: u64,
    /// Length of the window.
    pub elapsed: Duration,
    /// Errors by kind (`SERVER_BUSY`, `closed by server`, `connection refused`, ...), warm-up
    /// included.
    pub errors: BTreeMap<String, u64>,
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

    /// Payload megabytes (10^6) per second in the window.
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

    fn latency_table(&self) -> [(&'static str, f64); 7] {
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

    fn per_request(&self, cpu: Option<Duration>) -> Option<f64> {
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

    /// The report as one JSON object on one line.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "{{\"what\":{},\"addr\":{}",
            json_string(&self.what),
            json_string(&self.addr)
        );
        for (key, value) in &self.settings {
            let _ = write!(out, ",{}:{}", json_string(key), value.json());
        }
        let _ = write!(
            out,
            ",\"unit\":{},\"requests\":{},\"duration_s\":{},\"throughput\":{},\"mb_per_s\":{},\"errors_total\":{},\"errors\":{{",
            json_string(self.unit),
            self.requests,
            json_number(self.elapsed.as_secs_f64()),
            json_number(self.rate()),
            json_number(self.megabytes_per_second()),
            self.error_total()
        );
        for (index, (kind, count)) in self.errors.iter().enumerate() {
            let comma = if index > 0 { "," } else { "" };
            let _ = write!(out, "{comma}{}:{count}", json_string(kind));
        }
        out.push_str("},\"latency_us\":{");
        for (index, (name, value)) in self.latency_table().iter().enumerate() {
            let comma = if index > 0 { "," } else { "" };
            let key = name.replace('.', "_");
            let _ = write!(out, "{comma}\"{key}\":{}", json_number(*value));
        }
        let optional = |value: Option<f64>| value.map_or("null".to_string(), json_number);
        let _ = write!(
            out,
            "}},\"server_cpu_us_per_request\":{},\"client_cpu_us_per_request\":{},\"generator_busy\":{},\"complete\":{},\"ended_early\":{}}}",
            optional(self.per_request(self.server_cpu)),
            optional(self.per_request(self.client_cpu)),
            optional(self.generator_busy()),
            self.ended_early.is_none(),
            self.ended_early
                .as_deref()
                .map_or("null".to_string(), json_string)
        );
        out
    }
}

/// A finite number as JSON (`null` for NaN and infinities, which JSON lacks).
fn json_number(value: f64) -> String {
    if value.is_finite() {
        let rounded = (value * 1000.0).round() / 1000.0;
        format!("{rounded}")
    } else {
        "null".to_string()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.what, self.addr)?;
        for (key, value) in &self.settings {
            write!(f, ", {key} {value}")?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  {} {} in {:.2} s, {} errors{}",
            self.requests,
            match self.unit {
                "req" => "requests",
                "conn" => "connections",
                "datagram" => "datagrams",
                "transfer" => "transfers",
                "command" => "commands",
                other => other,
            },
            self.elapsed.as_secs_f64(),
            self.error_total(),
            if self.errors.is_empty() {
                String::new()
            } else {
                let kinds: Vec<String> = self
                    .errors
                    .iter()
                    .map(|(kind, count)| format!("{kind} {count}"))
                    .collect();
                format!(" ({})", kinds.join(", "))
            }
        )?;
        writeln!(
            f,
            "  {:.0} {}/s, {:.2} MB/s",
            self.rate(),
            self.unit,
            self.megabytes_per_second()
        )?;
        write!(f, "  latency us")?;
        for (name, value) in self.latency_table() {
            write!(f, " {name} {value:.1}")?;
        }
        let server = self.per_request(self.server_cpu);
        let client = self.per_request(self.client_cpu);
        if server.is_some() || client.is_some() {
            write!(f, "\n  CPU per {}:", self.unit)?;
            if let Some(server) = server {
                write!(f, " server {server:.2} us")?;
            }
            if let Some(client) = client {
                write!(f, " generator {client:.2} us")?;
            }
        }
        if let Some(busy) = self.generator_busy() {
            write!(
                f,
                "\n  generator busy {:.0}% of a core over {} thread{}",
                busy * 100.0,
                self.client_threads,
                if self.client_threads == 1 { "" } else { "s" }
            )?;
            if busy > 0.9 * self.client_threads.min(available_cores()) as f64 {
                write!(
                    f,
                    "\n  note: the generator was nearly saturated and may be the bottleneck: use fewer connections or compare with ../shared/bench-tools/loadgen"
                )?;
            }
        }
        if let Some(reason) = &self.ended_early {
            write!(f, "\n  ended early: {reason} (partial results)")?;
        }
        Ok(())
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
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
        }
    }

    /// One error of `kind`.
    pub(crate) fn error(&mut self, now: Instant, kind: &str) {
        self.last_error = Some(now);
        count_error(&mut self.errors, kind, 1);
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

/// A short name for an I/O error, to count errors by kind.
pub(crate) fn io_kind(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
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
    fn report_json_has_every_key() {
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
        let json = report.to_json();
        for key in [
            "\"what\":\"echo raw\"",
            "\"connections\":1",
            "\"requests\":2",
            "\"errors\":{\"SERVER_BUSY\":1}",
            "\"p99_9\":",
            "\"complete\":true",
        ] {
            assert!(json.contains(key), "{key} in {json}");
        }
        let text = report.to_string();
        assert!(
            text.contains("SERVER_BUSY 1") && text.contains("req/s"),
            "{text}"
        );
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
