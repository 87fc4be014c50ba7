//! The scrape: the loop's plain counters ([`Metrics`]) and the gauges read from its state at
//! that moment ([`Gauges`]) turned into `prometheus-client` metrics and rendered as the
//! Prometheus text format (0.0.4). Everything here runs once per scrape; it allocates freely.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::{ExitCause, Metrics, Refusal, RequestKind, Service, TURN_BUCKETS_US};

/// What is read from the loop's state at scrape time rather than counted.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Gauges {
    /// Open connections (framed and raw echo).
    pub(crate) connections: u64,
    /// Open metrics connections.
    pub(crate) metrics_connections: u64,
    /// Commands running (or released and not yet reaped).
    pub(crate) commands: u64,
    /// Bytes of buffer the client connections hold (the `--max-client-memory` total).
    pub(crate) client_memory_bytes: u64,
    /// Connections closed to bring the client buffers under `--max-client-memory`.
    pub(crate) shed: u64,
    /// UDP datagrams echoed.
    pub(crate) udp_echoed: u64,
    /// UDP datagrams dropped (queue full).
    pub(crate) udp_dropped: u64,
    /// UDP payload bytes received and sent back (counted by the UDP echo itself).
    pub(crate) udp_bytes: (u64, u64),
}

/// Counters or gauges of one name, one per value of one label, in a fixed order.
#[derive(Debug)]
struct Labeled {
    key: &'static str,
    rows: Vec<(String, u64)>,
    gauge: bool,
}

impl Labeled {
    fn counters(key: &'static str, rows: impl IntoIterator<Item = (String, u64)>) -> Labeled {
        Labeled {
            key,
            rows: rows.into_iter().collect(),
            gauge: false,
        }
    }
}

impl EncodeMetric for Labeled {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (value, count) in &self.rows {
            let labels = [(self.key, value.as_str())];
            let mut row = encoder.encode_family(&labels)?;
            if self.gauge {
                row.encode_gauge(&(*count as i64))?;
            } else {
                row.encode_counter::<NoLabelSet, _, u64>(count, None)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        if self.gauge {
            MetricType::Gauge
        } else {
            MetricType::Counter
        }
    }
}

/// The loop-turn histogram, from its plain bucket counts.
#[derive(Debug)]
struct Turns {
    sum_seconds: f64,
    count: u64,
    /// Upper bound in seconds and the turns in that bucket alone (the encoder accumulates).
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for Turns {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum_seconds, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The exposition of `metrics` and `gauges`, in the Prometheus text format.
pub(crate) fn render(metrics: &Metrics, gauges: &Gauges) -> String {
    let mut registry = Registry::with_prefix("monoreactor");
    let gauge = |value: u64| ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(
        "connections",
        "Client connections open now (framed and raw echo)",
        gauge(gauges.connections),
    );
    registry.register(
        "metrics_connections",
        "Connections to this metrics port open now",
        gauge(gauges.metrics_connections),
    );
    let by_service = |values: &[u64], udp: u64| {
        let mut rows: Vec<_> = Service::ALL
            .iter()
            .map(|service| (service.label().to_string(), values[*service as usize]))
            .collect();
        rows.push(("udp".to_string(), udp));
        rows
    };
    registry.register(
        "connections_accepted",
        "Connections accepted, by service",
        Labeled::counters(
            "service",
            Service::ALL.iter().map(|service| {
                (
                    service.label().to_string(),
                    metrics.accepted[*service as usize],
                )
            }),
        ),
    );
    registry.register(
        "connections_refused",
        "Connections turned away, by reason",
        Labeled::counters(
            "reason",
            Refusal::ALL
                .iter()
                .map(|why| (why.label().to_string(), metrics.refused[*why as usize])),
        ),
    );
    registry.register(
        "connections_shed",
        "Connections closed because client buffers were over --max-client-memory",
        ConstCounter::new(gauges.shed),
    );
    registry.register(
        "bytes_in",
        "Bytes read from clients, by service (TLS: plaintext)",
        Labeled::counters("service", by_service(&metrics.bytes_in, gauges.udp_bytes.0)),
    );
    registry.register(
        "bytes_out",
        "Bytes written to clients, by service (TLS: plaintext)",
        Labeled::counters(
            "service",
            by_service(&metrics.bytes_out, gauges.udp_bytes.1),
        ),
    );
    registry.register(
        "udp_datagrams_echoed",
        "UDP datagrams echoed",
        ConstCounter::new(gauges.udp_echoed),
    );
    registry.register(
        "udp_datagrams_dropped",
        "UDP datagrams dropped because the reply queue was full",
        ConstCounter::new(gauges.udp_dropped),
    );
    registry.register(
        "requests",
        "Framed requests received, by kind (refused ones included)",
        Labeled::counters(
            "kind",
            RequestKind::ALL.iter().map(|kind| {
                (
                    kind.verb().to_ascii_lowercase(),
                    metrics.requests[*kind as usize],
                )
            }),
        ),
    );
    registry.register(
        "errors",
        "ERROR frames that ended a request or a connection, by code",
        Labeled::counters(
            "code",
            metrics
                .errors_by_code()
                .map(|(code, count)| (code.to_string(), count)),
        ),
    );
    registry.register(
        "commands_started",
        "Commands started",
        ConstCounter::new(metrics.commands_started),
    );
    registry.register(
        "commands_running",
        "Commands running now (including released ones not yet reaped)",
        gauge(gauges.commands),
    );
    registry.register(
        "command_exits",
        "Commands ended, by cause",
        Labeled::counters(
            "cause",
            ExitCause::ALL
                .iter()
                .map(|cause| (cause.label().to_string(), metrics.exits[*cause as usize])),
        ),
    );
    registry.register(
        "transfers",
        "File transfers (GET, PUT, LIST) ended, by result",
        Labeled::counters(
            "result",
            [
                ("ok".to_string(), metrics.transfers_ok),
                ("failed".to_string(), metrics.transfers_failed),
            ],
        ),
    );
    registry.register(
        "transfer_bytes",
        "File bytes moved by transfers, by direction",
        Labeled::counters(
            "direction",
            [
                ("get".to_string(), metrics.get_bytes),
                ("put".to_string(), metrics.put_bytes),
            ],
        ),
    );
    registry.register(
        "client_memory_bytes",
        "Buffer memory client connections hold (counted against --max-client-memory)",
        gauge(gauges.client_memory_bytes),
    );
    let turns = &metrics.turns;
    let mut buckets: Vec<(f64, u64)> = TURN_BUCKETS_US
        .iter()
        .zip(turns.buckets.iter())
        .map(|(&bound, &count)| (bound as f64 / 1e6, count))
        .collect();
    buckets.push((f64::INFINITY, turns.over));
    registry.register(
        "loop_turn_seconds",
        "Handler time of each loop turn, from poll's return to the next poll (the stall detector)",
        Turns {
            sum_seconds: turns.sum_ns as f64 / 1e9,
            count: turns.count(),
            buckets,
        },
    );
    let mut text = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a metric above.
    if prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).is_err() {
        log::error!("rendering the metrics failed");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ErrorCode;
    use std::time::Duration;

    #[test]
    fn counters_render_with_their_labels_and_the_histogram_accumulates() {
        let mut metrics = Metrics::default();
        metrics.request(RequestKind::Get);
        metrics.error(ErrorCode::NotFound);
        metrics.bytes(Service::Framed, 10, 20);
        metrics.turns.observe(Duration::from_micros(5));
        metrics.turns.observe(Duration::from_micros(30));
        let text = render(
            &metrics,
            &Gauges {
                connections: 2,
                ..Gauges::default()
            },
        );
        assert!(text.contains("monoreactor_connections 2\n"), "{text}");
        assert!(text.contains("monoreactor_requests_total{kind=\"get\"} 1\n"));
        assert!(text.contains("monoreactor_errors_total{code=\"NOT_FOUND\"} 1\n"));
        assert!(text.contains("monoreactor_bytes_in_total{service=\"framed\"} 10\n"));
        assert!(
            text.contains("monoreactor_loop_turn_seconds_bucket{le=\"1e-05\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("monoreactor_loop_turn_seconds_bucket{le=\"5e-05\"} 2\n"));
        assert!(text.contains("monoreactor_loop_turn_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("monoreactor_loop_turn_seconds_count 2\n"));
    }
}
