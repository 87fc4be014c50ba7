//! The load generator behind `monoreactor bench`.
//!
//! - [`echo::run_echo`]: TCP echo, framed or raw: N connections each keep `depth` requests in
//!   flight (ping-pong at depth 1), or, with a rate, an open loop whose latency counts from
//!   each request's due time (no coordinated omission).
//! - [`udp::run_udp`]: the same over UDP datagrams, losses counted after a timeout.
//! - [`connect::run_connect`]: short connections: connect, one echo, close, per request;
//!   over TLS a full handshake each (no resumption), or the handshake alone.
//! - [`blocking`]: file GET and PUT, and exec, on one thread per connection.
//! - [`run_idle`]: opens N connections that then sit idle, and reports how much the server's
//!   resident memory grew per connection.
//! - [`run_probe`]: one client pinging 64-byte echoes every millisecond for a while: the
//!   latency another client sees while something heavy (a file transfer) runs, and the worst
//!   wait, which bounds the longest stall of the server's loop.
//! - [`exec`]: commands per second against a local posix_spawn loop, and a long command
//!   output to a slow reader (server memory, echo latency meanwhile).
//!
//! Every load run ends in a [`Report`]: requests, errors by kind, throughput, latency
//! percentiles from an HDR histogram, and CPU time per request of the server (given its pid)
//! and of the generator itself. A [`Report`] is data: `monoreactor bench` writes it as text
//! or JSON. The echo, UDP and connect generators are each one thread on one `mio::Poll`; the
//! report says how busy that thread was, so a run whose generator was saturated says so
//! instead of passing off the generator's limit as the server's. Raw echo, UDP and connect
//! speak nothing but echo, so they measure any echo server.
//!
//! Every TCP workload but redis runs over TLS too ([`BenchTls`] in its configuration): the
//! blocking ones through the library's client, `echo` (framed or raw) and `connect` by driving
//! a rustls session per connection in their own loop, `idle` with a blocking handshake
//! ([`tls`]). Raw echo inside TLS is what a TLS-terminating proxy in front of an echo server
//! speaks, so the same generator measures that proxy against the framed TLS port. UDP and
//! redis stay plaintext.

use std::io::{self, ErrorKind, Read};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

pub mod blocking;
pub mod connect;
pub mod echo;
pub mod exec;
pub mod live;
pub mod procstat;
pub mod report;
mod timer;
pub mod tls;
pub mod udp;

pub use report::{Report, Stop};
pub use tls::BenchTls;

use monoreactor::client::{Client, Target};
use monoreactor::raise_descriptor_limit;

/// `addr`, over `tls` if given.
pub fn target(addr: impl Into<String>, tls: Option<&BenchTls>) -> Target {
    match tls {
        Some(tls) => tls.target(addr),
        None => Target::plain(addr),
    }
}

/// The setting a report carries when its run was over TLS.
pub fn tls_setting(tls: Option<&BenchTls>) -> Option<(&'static str, report::Value)> {
    tls.map(|_| ("tls", report::Value::Text("on".to_string())))
}

/// Which protocol the benchmark speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchProtocol {
    /// ECHO_REQUEST frames after a HELLO.
    Framed,
    /// Plain bytes to an echo server; every `size` bytes back is one round trip.
    Raw,
    /// The RESP `ECHO` command of `size` bytes, to redis-server (or anything speaking RESP):
    /// the same generator then measures redis. Its reply, `$SIZE\r\n` + the bytes + `\r\n`,
    /// has a known length, so replies are counted like raw echoes.
    Redis,
}

impl BenchProtocol {
    /// One request of `size` payload bytes on the wire.
    pub fn request(self, size: usize) -> Vec<u8> {
        let payload = vec![b'x'; size];
        match self {
            BenchProtocol::Framed => monoreactor::proto::Frame::new(
                monoreactor::proto::FrameType::EchoRequest,
                monoreactor::proto::Flags::END_STREAM,
                1,
                &payload,
            )
            .to_vec(),
            BenchProtocol::Raw => payload,
            BenchProtocol::Redis => {
                let mut request = format!("*2\r\n$4\r\nECHO\r\n${size}\r\n").into_bytes();
                request.extend_from_slice(&payload);
                request.extend_from_slice(b"\r\n");
                request
            }
        }
    }

    /// Bytes of one reply, for the protocols counted by length (raw, redis).
    pub fn reply_len(self, size: usize) -> usize {
        match self {
            BenchProtocol::Framed | BenchProtocol::Raw => size,
            BenchProtocol::Redis => format!("${size}\r\n").len() + size + 2,
        }
    }
}

/// An echo load run (`bench echo`, `bench udp`, `bench connect`).
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// Protocol to speak (TCP echo only).
    pub protocol: BenchProtocol,
    /// Connections (or UDP sockets, or connections at once for `connect`).
    pub connections: usize,
    /// Payload bytes per request.
    pub size: usize,
    /// Requests in flight per connection (1 = ping-pong).
    pub depth: usize,
    /// When the run stops.
    pub stop: Stop,
    /// Time before measuring starts (connections warm up, caches fill).
    pub warmup: Duration,
    /// Open loop: requests per second over all connections, due at fixed times.
    pub rate: Option<f64>,
    /// Server process, to report its CPU time per request.
    pub server_pid: Option<u32>,
    /// TLS (TCP, not redis): framed or raw echo inside it; for `connect`, a full handshake
    /// per connection.
    pub tls: Option<BenchTls>,
}

impl LoadConfig {
    /// Refuses settings that cannot run.
    pub fn validate(&self) -> io::Result<()> {
        if self.connections == 0 || self.depth == 0 || self.size == 0 {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "connections, depth and size must be at least 1",
            ));
        }
        if self
            .rate
            .is_some_and(|rate| !(rate.is_finite() && rate > 0.0))
        {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "the rate must be a positive number of requests per second",
            ));
        }
        if self.tls.is_some() && self.protocol == BenchProtocol::Redis {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                "TLS is for the framed protocol and raw echo: redis is plaintext",
            ));
        }
        Ok(())
    }
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    /// Median.
    pub p50: u32,
    /// 90th percentile.
    pub p90: u32,
    /// 99th percentile.
    pub p99: u32,
    /// 99.9th percentile.
    pub p999: u32,
    /// Largest.
    pub max: u32,
}

impl Percentiles {
    /// Percentiles of `samples` (which it sorts).
    pub fn of(samples: &mut [u32]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        Percentiles {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: samples[samples.len() - 1],
        }
    }
}

/// An idle-memory probe.
#[derive(Clone, Debug)]
pub struct IdleConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// Framed connections complete the HELLO exchange before going idle.
    pub protocol: BenchProtocol,
    /// Connections to open.
    pub connections: usize,
    /// The server's pid, whose memory is measured.
    pub server_pid: u32,
    /// Pause after the last connect before measuring.
    pub settle: Duration,
    /// TLS: framed connections say HELLO inside it, raw ones only complete the handshake.
    pub tls: Option<BenchTls>,
}

/// What an idle probe measured.
#[derive(Clone, Copy, Debug)]
pub struct IdleReport {
    /// Connections held open.
    pub connections: usize,
    /// Server RSS before connecting, KiB.
    pub rss_before_kib: u64,
    /// Server RSS with every connection open and idle, KiB.
    pub rss_after_kib: u64,
}

impl IdleReport {
    /// Server memory per idle connection, in bytes.
    pub fn bytes_per_connection(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 * 1024.0
            / self.connections.max(1) as f64
    }
}

/// Opens idle connections and measures the server's memory; see the module docs.
pub fn run_idle(config: &IdleConfig) -> io::Result<IdleReport> {
    raise_descriptor_limit();
    let timeout = Duration::from_secs(10);
    let mut held = Vec::with_capacity(config.connections + 1);
    // One connection first, outside the count: its HELLO makes the server's buffer pool
    // allocate its first buffers, a fixed cost (about 128 KiB) that would otherwise be spread
    // over the measured connections.
    held.push(idle_connection(config, timeout)?);
    std::thread::sleep(Duration::from_millis(100));
    let rss_before_kib = procstat::rss_kib(config.server_pid)?;
    for _ in 0..config.connections {
        held.push(idle_connection(config, timeout)?);
    }
    std::thread::sleep(config.settle);
    let rss_after_kib = procstat::rss_kib(config.server_pid)?;
    // The server must still hold every connection: a closed one reads EOF at once.
    for held in &mut held {
        let closed = match held {
            Held::Plain(stream) => {
                stream.set_nonblocking(true)?;
                !matches!((&*stream).read(&mut [0; 1]),
                    Err(error) if error.kind() == ErrorKind::WouldBlock)
            }
            Held::Tls(stream) => tls::is_closed(stream)?,
            // Under TLS a record may still come (a session ticket): only an end counts.
            Held::Client(client) => {
                client.input_pending() && {
                    client
                        .stream()
                        .set_read_timeout(Some(Duration::from_millis(100)))?;
                    !matches!(client.recv_frame(),
                        Err(monoreactor::client::ClientError::Io(error))
                            if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
                }
            }
        };
        if closed {
            return Err(io::Error::other(
                "the server closed an idle connection during the probe",
            ));
        }
    }
    Ok(IdleReport {
        connections: config.connections,
        rss_before_kib,
        rss_after_kib,
    })
}

/// A latency probe.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Server address (framed protocol), `HOST:PORT`.
    pub addr: String,
    /// How long to probe.
    pub duration: Duration,
    /// Pause between echoes.
    pub interval: Duration,
    /// The server's pid, for its peak memory.
    pub server_pid: Option<u32>,
    /// TLS, if the server speaks it.
    pub tls: Option<BenchTls>,
}

/// What [`run_probe`] measured.
#[derive(Clone, Copy, Debug)]
pub struct ProbeReport {
    /// Echo round trips completed.
    pub echoes: u64,
    /// Their latency, microseconds.
    pub latency: Percentiles,
    /// Highest server RSS seen (sampled between echoes, at most every 20 ms), KiB.
    pub rss_peak_kib: Option<u64>,
}

/// Pings the server for a while; see the module docs.
pub fn run_probe(config: &ProbeConfig) -> io::Result<ProbeReport> {
    let mut client = Client::connect(
        target(config.addr.as_str(), config.tls.as_ref()),
        Duration::from_secs(10),
    )
    .map_err(|error| io::Error::other(error.to_string()))?;
    let payload = [0x5a; 64];
    let mut latencies = Vec::new();
    let mut rss_peak_kib = None;
    let mut rss_sampled = Instant::now() - Duration::from_secs(1);
    let started = Instant::now();
    while started.elapsed() < config.duration {
        let sent = Instant::now();
        client
            .echo(&payload)
            .map_err(|error| io::Error::other(error.to_string()))?;
        latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
        if let Some(pid) = config.server_pid {
            if rss_sampled.elapsed() >= Duration::from_millis(20) {
                rss_sampled = Instant::now();
                let rss = procstat::rss_kib(pid)?;
                rss_peak_kib = Some(rss_peak_kib.map_or(rss, |peak: u64| peak.max(rss)));
            }
        }
        std::thread::sleep(config.interval);
    }
    Ok(ProbeReport {
        echoes: latencies.len() as u64,
        latency: Percentiles::of(&mut latencies),
        rss_peak_kib,
    })
}

/// An idle connection held open: a socket, a framed client or a raw TLS session (whose TLS
/// session must live as long as the connection).
enum Held {
    Plain(StdTcpStream),
    Client(Box<Client>),
    Tls(Box<tls::TlsStream>),
}

/// One connection that has said HELLO (framed) or nothing (raw; over TLS, it has completed
/// the handshake).
fn idle_connection(config: &IdleConfig, timeout: Duration) -> io::Result<Held> {
    match config.protocol {
        BenchProtocol::Framed if config.tls.is_some() => Client::connect(
            target(config.addr.to_string(), config.tls.as_ref()),
            timeout,
        )
        .map(|client| Held::Client(Box::new(client)))
        .map_err(|error| io::Error::other(error.to_string())),
        BenchProtocol::Framed => Client::connect(config.addr, timeout)
            .map(|client| Held::Plain(client.into_stream()))
            .map_err(|error| io::Error::other(error.to_string())),
        BenchProtocol::Raw | BenchProtocol::Redis => match &config.tls {
            Some(tls) => tls::connect_blocking(config.addr, tls, timeout)
                .map(|stream| Held::Tls(Box::new(stream))),
            None => StdTcpStream::connect(config.addr).map(Held::Plain),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_series() {
        let mut samples: Vec<u32> = (1..=1000).rev().collect();
        let p = Percentiles::of(&mut samples);
        assert_eq!(
            (p.p50, p.p90, p.p99, p.p999, p.max),
            (501, 901, 991, 1000, 1000)
        );
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }
}
