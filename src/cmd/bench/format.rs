//! What `bench` prints: a [`Report`] as lines for people or as one JSON object for scripts
//! (`docs/bench/side-by-side.sh` reads it), and the one-line results of `bench idle` and
//! `bench probe`. The load generator measures and returns typed reports; their text is the
//! command line's business, so it is written here.

use std::collections::BTreeMap;
use std::fmt::{self, Display};

use monoreactor_bench::report::Value;
use monoreactor_bench::{IdleReport, ProbeReport, Report};
use serde::Serialize;
use serde::ser::{Error as _, Serializer};
use serde_json::value::RawValue;

/// The report in lines: the workload and its settings, counts, rates, latency, CPU per
/// request, how busy the generator was (with a warning near saturation), and why it ended
/// early if it did. No newline at the end.
pub fn report(report: &Report) -> String {
    ReportText(report).to_string()
}

/// [`report`]'s text, written as a `Display` so its parts read as one `write!` each.
struct ReportText<'a>(&'a Report);

impl Display for ReportText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let report = self.0;
        write!(f, "{} {}", report.what, report.addr)?;
        for (key, value) in &report.settings {
            write!(f, ", {key} {}", SettingText(value))?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "  {} {} in {:.2} s, {} errors{}",
            report.requests,
            match report.unit {
                "req" => "requests",
                "conn" => "connections",
                "handshake" => "handshakes",
                "datagram" => "datagrams",
                "transfer" => "transfers",
                "command" => "commands",
                other => other,
            },
            report.elapsed.as_secs_f64(),
            report.error_total(),
            if report.errors.is_empty() {
                String::new()
            } else {
                let kinds: Vec<String> = report
                    .errors
                    .iter()
                    .map(|(kind, count)| format!("{kind} {count}"))
                    .collect();
                format!(" ({})", kinds.join(", "))
            }
        )?;
        writeln!(
            f,
            "  {:.0} {}/s, {:.2} MB/s (payload sent + received, 10^6 bytes)",
            report.rate(),
            report.unit,
            report.megabytes_per_second()
        )?;
        write!(f, "  latency us")?;
        for (name, value) in report.latency_table() {
            write!(f, " {name} {value:.1}")?;
        }
        let server = report.per_request(report.server_cpu);
        let client = report.per_request(report.client_cpu);
        if server.is_some() || client.is_some() {
            write!(f, "\n  CPU per {}:", report.unit)?;
            if let Some(server) = server {
                write!(f, " server {server:.2} us")?;
            }
            if let Some(client) = client {
                write!(f, " generator {client:.2} us")?;
            }
        }
        if let Some(busy) = report.generator_busy() {
            write!(
                f,
                "\n  generator busy {:.0}% of a core over {} thread{}",
                busy * 100.0,
                report.client_threads,
                if report.client_threads == 1 { "" } else { "s" }
            )?;
            if busy > 0.9 * report.client_threads.min(available_cores()) as f64 {
                write!(
                    f,
                    "\n  note: the generator was nearly saturated and may be the bottleneck: use fewer connections or compare with another load generator"
                )?;
            }
        }
        if report.retried > 0 {
            write!(
                f,
                "\n  retried {} {} the server's SHUTTING_DOWN left unanswered (not processed: sent again on a new connection)",
                report.retried,
                if report.retried == 1 {
                    "request"
                } else {
                    "requests"
                }
            )?;
        }
        if let Some(reason) = &report.ended_early {
            write!(f, "\n  ended early: {reason} (partial results)")?;
        }
        Ok(())
    }
}

/// A setting's value as the report's header shows it.
struct SettingText<'a>(&'a Value);

impl Display for SettingText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Value::Int(n) => write!(f, "{n}"),
            Value::Num(n) => write!(f, "{n}"),
            Value::Text(text) => f.write_str(text),
        }
    }
}

/// The cores this machine offers, against which the generator's busy share is judged.
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The report as one JSON object on one line, its keys in this order: `what`, `addr`, the
/// settings, then the measurements.
pub fn report_json(report: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string(&ReportJson {
        what: &report.what,
        addr: &report.addr,
        settings: Settings(&report.settings),
        unit: report.unit,
        requests: report.requests,
        duration_s: Rounded(report.elapsed.as_secs_f64()),
        throughput: Rounded(report.rate()),
        mb_per_s: Rounded(report.megabytes_per_second()),
        errors_total: report.error_total(),
        errors: &report.errors,
        retried: (report.retried > 0).then_some(report.retried),
        latency_us: Latency(report.latency_table()),
        server_cpu_us_per_request: report.per_request(report.server_cpu).map(Rounded),
        client_cpu_us_per_request: report.per_request(report.client_cpu).map(Rounded),
        generator_busy: report.generator_busy().map(Rounded),
        complete: report.ended_early.is_none(),
        ended_early: report.ended_early.as_deref(),
    })
}

/// [`report_json`]'s object.
#[derive(Serialize)]
struct ReportJson<'a> {
    what: &'a str,
    addr: &'a str,
    #[serde(flatten)]
    settings: Settings<'a>,
    unit: &'a str,
    requests: u64,
    duration_s: Rounded,
    throughput: Rounded,
    mb_per_s: Rounded,
    errors_total: u64,
    errors: &'a BTreeMap<String, u64>,
    /// Only when there were any (`echo --reconnect` after SHUTTING_DOWN): the keys of every
    /// other report stay what they were.
    #[serde(skip_serializing_if = "Option::is_none")]
    retried: Option<u64>,
    latency_us: Latency,
    server_cpu_us_per_request: Option<Rounded>,
    client_cpu_us_per_request: Option<Rounded>,
    generator_busy: Option<Rounded>,
    complete: bool,
    ended_early: Option<&'a str>,
}

/// The settings as keys of the report's object, in their order.
struct Settings<'a>(&'a [(&'static str, Value)]);

impl Serialize for Settings<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(key, value)| (key, SettingJson(value))))
    }
}

/// A setting's value in JSON: a whole number, a [`Rounded`] number, or a string.
struct SettingJson<'a>(&'a Value);

impl Serialize for SettingJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Int(n) => serializer.serialize_u64(*n),
            Value::Num(n) => Rounded(*n).serialize(serializer),
            Value::Text(text) => serializer.serialize_str(text),
        }
    }
}

/// The latency statistics, microseconds, keyed `min`, `avg`, `p50` ... `max`, with `p99_9`
/// for p99.9 so that every key is a plain identifier.
struct Latency([(&'static str, f64); 7]);

impl Serialize for Latency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.0
                .iter()
                .map(|(name, value)| (name.replace('.', "_"), Rounded(*value))),
        )
    }
}

/// A measurement in JSON: rounded to three decimals and written the way Rust writes an
/// `f64` (`5`, `0.125`, never `5.0` or an exponent), which is how the report has always
/// written them; `null` if it is not a finite number (JSON has no NaN or infinity).
/// serde_json would write `5.0` and switch to exponents for large and small values, so the
/// digits are handed to it as they are ([`RawValue`]).
struct Rounded(f64);

impl Serialize for Rounded {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let rounded = (self.0 * 1000.0).round() / 1000.0;
        if !rounded.is_finite() {
            return serializer.serialize_none();
        }
        RawValue::from_string(format!("{rounded}"))
            .map_err(S::Error::custom)?
            .serialize(serializer)
    }
}

/// `bench idle`'s result in one line: server memory before and after, and per connection.
pub fn idle(report: &IdleReport) -> String {
    format!(
        "{} idle connections: server RSS {} KiB -> {} KiB, {:.0} bytes ({:.3} KiB) per connection",
        report.connections,
        report.rss_before_kib,
        report.rss_after_kib,
        report.bytes_per_connection(),
        report.bytes_per_connection() / 1024.0
    )
}

/// `bench probe`'s result in one line: echo latency percentiles, and the server's peak
/// memory if its pid was given.
pub fn probe(report: &ProbeReport) -> String {
    let l = report.latency;
    let mut line = format!(
        "{} echoes of 64 B, latency us p50 {} p90 {} p99 {} p99.9 {} max {}",
        report.echoes, l.p50, l.p90, l.p99, l.p999, l.max
    );
    if let Some(rss) = report.rss_peak_kib {
        line += &format!("; server RSS peak {rss} KiB");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use monoreactor_bench::report::latency_histogram;

    /// A report of two requests (10 and 30 us) and one error, as a recorder would make it.
    fn two_requests() -> Report {
        let mut latency = latency_histogram();
        for micros in [10, 30] {
            latency.saturating_record(micros * 1000);
        }
        Report {
            what: "echo raw".into(),
            addr: "127.0.0.1:1".into(),
            settings: vec![("connections", Value::Int(1))],
            unit: "req",
            requests: 2,
            bytes: 256,
            elapsed: Duration::from_millis(2),
            errors: BTreeMap::from([("SERVER_BUSY".to_string(), 1)]),
            retried: 0,
            latency,
            server_cpu: None,
            client_cpu: None,
            client_threads: 1,
            ended_early: None,
        }
    }

    #[test]
    fn report_json_has_every_key() {
        let json = report_json(&two_requests()).expect("JSON");
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
        let text = report(&two_requests());
        assert!(
            text.contains("SERVER_BUSY 1") && text.contains("req/s"),
            "{text}"
        );
    }

    /// The keys, their order, the escapes and the digits, as the hand-written writer had
    /// them (the histogram's buckets make 30 us read as 30.015).
    #[test]
    fn report_json_is_byte_for_byte_what_it_was() {
        let mut run = two_requests();
        run.settings.push(("rate", Value::Num(1000.0)));
        run.settings.push(("mode", Value::Text("a \"b\"\n".into())));
        run.server_cpu = Some(Duration::from_micros(5));
        run.ended_early = Some("refused 3".into());
        assert_eq!(
            report_json(&run).expect("JSON"),
            "{\"what\":\"echo raw\",\"addr\":\"127.0.0.1:1\",\"connections\":1,\"rate\":1000,\
             \"mode\":\"a \\\"b\\\"\\n\",\"unit\":\"req\",\"requests\":2,\"duration_s\":0.002,\
             \"throughput\":1000,\"mb_per_s\":0.128,\"errors_total\":1,\
             \"errors\":{\"SERVER_BUSY\":1},\"latency_us\":{\"min\":10,\"avg\":20.006,\
             \"p50\":10.007,\"p90\":30.015,\"p99\":30.015,\"p99_9\":30.015,\"max\":30.015},\
             \"server_cpu_us_per_request\":2.5,\
             \"client_cpu_us_per_request\":null,\"generator_busy\":null,\"complete\":false,\
             \"ended_early\":\"refused 3\"}"
        );
    }

    #[test]
    fn retried_requests_show_only_when_there_were_some() {
        let mut run = two_requests();
        assert!(!report_json(&run).expect("JSON").contains("retried"));
        assert!(!report(&run).contains("retried"));
        run.retried = 3;
        let json = report_json(&run).expect("JSON");
        assert!(
            json.contains("\"errors\":{\"SERVER_BUSY\":1},\"retried\":3,"),
            "{json}"
        );
        assert!(
            report(&run).contains("retried 3 requests"),
            "{}",
            report(&run)
        );
    }

    #[test]
    fn numbers_are_rounded_to_three_decimals_and_never_infinite() {
        let json = |value: f64| serde_json::to_string(&Rounded(value)).expect("JSON");
        assert_eq!(json(5.0), "5");
        assert_eq!(json(0.1234), "0.123");
        assert_eq!(json(123456.7891), "123456.789");
        assert_eq!(json(1e21), "1000000000000000000000");
        assert_eq!(json(f64::NAN), "null");
        assert_eq!(json(f64::INFINITY), "null");
    }
}
