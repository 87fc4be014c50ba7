//! `monoreactor stats`: the server's counters for a human, read from its metrics port
//! (`serve --metrics ADDR`) — the same `GET /metrics` a Prometheus scraper makes, parsed and
//! printed as an aligned table. The loop-turn histogram is summed up by its quantiles' bucket
//! bounds instead of printed bucket by bucket.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clap::Args;

use crate::args::{Addr, Secs};
use crate::failure::{Failure, print_stdout};

/// The flags of `stats`.
#[derive(Args)]
pub struct StatsArgs {
    /// The server's metrics address (what `serve --metrics` was given).
    #[arg(long, value_name = "ADDR")]
    addr: Addr,
    /// How long to wait for the server: to connect, and for the answer (500ms, 2s, 1m; a
    /// bare number is seconds).
    #[arg(long, value_name = "DURATION", default_value_t = Secs(Duration::from_secs(5)))]
    timeout: Secs,
}

/// The most a metrics answer may be: a few KiB today; anything far larger is not ours.
const MAX_ANSWER: u64 = 4 << 20;

/// Fetches the metrics and prints them.
pub fn run(args: StatsArgs) -> Result<(), Failure> {
    let addr = args.addr.0;
    let text = fetch(addr, args.timeout.0)
        .map_err(|error| Failure::own(format!("stats from {addr}: {error}")))?;
    let samples = parse(&text);
    if samples.is_empty() {
        return Err(Failure::own(format!(
            "stats from {addr}: the answer holds no metrics"
        )));
    }
    print_stdout(&table(&samples))
}

/// `GET /metrics` over HTTP/1.1 (the server closes after the answer); the body of a 200.
fn fetch(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|error| {
        format!(
            "cannot connect: {} (is the server running with --metrics {addr}?)",
            io_words(&error)
        )
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|error| error.to_string())?;
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: monoreactor-stats\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|error| format!("sending the request: {}", io_words(&error)))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(|error| format!("reading the answer: {}", io_words(&error)))?;
    let answer = String::from_utf8(answer).map_err(|_| "the answer is not text".to_string())?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or("the answer is not HTTP (is ADDR the metrics port, not the framed one?)")?;
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200") && !status.starts_with("HTTP/1.0 200") {
        return Err(format!("the server answered `{status}`"));
    }
    Ok(body.to_string())
}

/// An I/O error as the other clients say it (`connection refused`, `timed out`): the
/// system's words without Rust's `(os error 111)` and its capital letter.
fn io_words(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_string(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timed out".to_string(),
        ErrorKind::ConnectionReset => "the connection was reset".to_string(),
        _ => {
            let text = error.to_string();
            let text = text.split(" (os error").next().unwrap_or(&text);
            let mut chars = text.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_lowercase().chain(chars).collect::<String>()
            })
        }
    }
}

/// One sample line: `name{labels} value`.
#[derive(Debug, PartialEq)]
struct Sample {
    name: String,
    labels: String,
    value: f64,
}

/// The samples of a Prometheus text exposition (comments skipped; a line that does not
/// parse is skipped too: this is for reading, not for checking).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value = match value {
                "+Inf" => f64::INFINITY,
                value => value.parse().ok()?,
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(Sample {
                name: name.to_string(),
                labels: labels.to_string(),
                value,
            })
        })
        .collect()
}

/// The table: one row per sample (the prefix `monoreactor_` and `_total` dropped), the
/// histogram's buckets replaced by the bounds under which half, 99 % and all turns fell.
fn table(samples: &[Sample]) -> String {
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for sample in samples {
        let name = sample.name.trim_start_matches("monoreactor_");
        if name.ends_with("_bucket") {
            let bound = sample
                .labels
                .strip_prefix("le=\"")
                .and_then(|rest| rest.strip_suffix('"'))
                .map_or(f64::INFINITY, |bound| {
                    bound.parse().unwrap_or(f64::INFINITY)
                });
            buckets.push((bound, sample.value));
            continue;
        }
        let name = name.strip_suffix("_total").unwrap_or(name);
        rows.push((
            name.to_string(),
            sample.labels.clone(),
            number(sample.value),
        ));
    }
    if let Some(&(_, count)) = buckets.last() {
        for (quantile, label) in [(0.5, "p50"), (0.99, "p99"), (1.0, "max")] {
            let bound = buckets
                .iter()
                .find(|&&(_, cumulative)| cumulative >= quantile * count && count > 0.0)
                .map_or("-".to_string(), |&(bound, _)| {
                    if bound.is_infinite() {
                        "> 1 s".to_string()
                    } else {
                        format!("<= {}", seconds(bound))
                    }
                });
            rows.push(("loop_turn".to_string(), label.to_string(), bound));
        }
    }
    let name_width = rows.iter().map(|row| row.0.len()).max().unwrap_or(0);
    let label_width = rows.iter().map(|row| row.1.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, labels, value) in rows {
        out += &format!("{name:<name_width$}  {labels:<label_width$}  {value}\n");
    }
    out
}

/// A value as an integer when it is one (counters), else as it came.
fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// A bound in seconds, in the unit a human reads it in.
fn seconds(bound: f64) -> String {
    if bound < 1e-3 {
        format!("{} µs", (bound * 1e6).round())
    } else if bound < 1.0 {
        format!("{} ms", bound * 1e3)
    } else {
        format!("{bound} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP monoreactor_connections Client connections open now.\n\
        # TYPE monoreactor_connections gauge\n\
        monoreactor_connections 2\n\
        monoreactor_requests_total{kind=\"get\"} 7\n\
        monoreactor_loop_turn_seconds_bucket{le=\"0.00001\"} 90\n\
        monoreactor_loop_turn_seconds_bucket{le=\"0.001\"} 99\n\
        monoreactor_loop_turn_seconds_bucket{le=\"+Inf\"} 100\n\
        monoreactor_loop_turn_seconds_sum 0.5\n\
        monoreactor_loop_turn_seconds_count 100\n";

    #[test]
    fn samples_parse_with_their_labels() {
        let samples = parse(TEXT);
        assert_eq!(samples.len(), 7);
        assert_eq!(
            samples[1],
            Sample {
                name: "monoreactor_requests_total".to_string(),
                labels: "kind=\"get\"".to_string(),
                value: 7.0
            }
        );
    }

    #[test]
    fn the_table_is_aligned_and_sums_up_the_histogram() {
        let table = table(&parse(TEXT));
        assert!(
            table.contains("requests                 kind=\"get\"  7\n"),
            "{table}"
        );
        assert!(
            table.contains("loop_turn                p50         <= 10 µs\n"),
            "{table}"
        );
        assert!(table.contains("p99         <= 1 ms\n"), "{table}");
        assert!(table.contains("max         > 1 s\n"), "{table}");
    }
}
