//! The load generator behind `monoreactor bench`.
//!
//! - [`run_load`]: N connections each keep `depth` requests in flight (ping-pong when the depth
//!   is 1) for a fixed time after a warm-up; reports round trips per second, latency
//!   percentiles and, given the server's pid, the server's CPU time per request.
//! - [`run_idle`]: opens N connections that then sit idle, and reports how much the server's
//!   resident memory grew per connection.
//! - [`run_probe`]: one client pinging 64-byte echoes every millisecond for a while: the
//!   latency another client sees while something heavy (a file transfer) runs, and the worst
//!   wait, which bounds the longest stall of the server's loop.
//! - [`exec`]: commands per second against a local posix_spawn loop, and a long command
//!   output to a slow reader (server memory, echo latency meanwhile).
//!
//! The client is itself one thread on one `mio::Poll`, so on a 2-core machine it takes one
//! core and leaves the other to the server. It works against the framed listener and against
//! any raw TCP echo server.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

pub mod exec;

use crate::client::Client;
use crate::limits::MAX_FRAME_LEN;
use crate::procstat;
use crate::proto::{Decoder, Flags, Frame, FrameType, Hello};
use crate::server::raise_descriptor_limit;

/// Which protocol the benchmark speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchProtocol {
    /// ECHO_REQUEST frames after a HELLO.
    Framed,
    /// Plain bytes to an echo server; every `size` bytes back is one round trip.
    Raw,
}

/// A load run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// Protocol to speak.
    pub protocol: BenchProtocol,
    /// Connections, all active.
    pub connections: usize,
    /// Payload bytes per request.
    pub size: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Time before measuring starts (connections warm up, caches fill).
    pub warmup: Duration,
    /// Time measured.
    pub duration: Duration,
    /// Server process, to report its CPU time per request.
    pub server_pid: Option<u32>,
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

/// What a load run measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// The run's settings.
    pub config: LoadConfig,
    /// Round trips completed in the measured window.
    pub requests: u64,
    /// Length of the measured window.
    pub elapsed: Duration,
    /// Round-trip latencies in the window.
    pub latency: Percentiles,
    /// Server CPU time (user + system) per round trip, if its pid was given.
    pub server_cpu_per_request: Option<Duration>,
}

impl LoadReport {
    /// Round trips per second.
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let proto = match c.protocol {
            BenchProtocol::Framed => "framed",
            BenchProtocol::Raw => "raw",
        };
        let rate = self.requests_per_second();
        let mb = rate * c.size as f64 * 2.0 / 1e6;
        let l = self.latency;
        write!(
            f,
            "{proto} {}B x{} depth {}: {rate:.0} req/s, {mb:.1} MB/s both ways; latency us p50 {} p90 {} p99 {} p99.9 {} max {}",
            c.size, c.connections, c.depth, l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        if let Some(cpu) = self.server_cpu_per_request {
            write!(
                f,
                "; server CPU {:.2} us/req",
                cpu.as_nanos() as f64 / 1000.0
            )?;
        }
        Ok(())
    }
}

/// One benchmark connection.
struct LoadConn {
    stream: TcpStream,
    /// Bytes not yet written.
    out: Vec<u8>,
    out_sent: usize,
    /// Bytes received but not yet a whole reply.
    received: Vec<u8>,
    /// Send time of each request in flight, oldest first.
    in_flight: VecDeque<Instant>,
    /// Framed: HELLO_OK not seen yet.
    awaiting_hello: bool,
}

/// Runs a load test; see the module docs.
pub fn run_load(config: &LoadConfig) -> io::Result<LoadReport> {
    if config.connections == 0 || config.depth == 0 || config.size == 0 {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "connections, depth and size must be at least 1",
        ));
    }
    raise_descriptor_limit();
    let request = match config.protocol {
        BenchProtocol::Framed => Frame::new(
            FrameType::EchoRequest,
            Flags::END_STREAM,
            1,
            &vec![b'x'; config.size],
        )
        .to_vec(),
        BenchProtocol::Raw => vec![b'x'; config.size],
    };
    let decoder = Decoder::new(MAX_FRAME_LEN);
    let mut poll = Poll::new()?;
    let mut conns = Vec::with_capacity(config.connections);
    let start = Instant::now();
    for index in 0..config.connections {
        let stream = StdTcpStream::connect(config.addr)?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(stream);
        poll.registry().register(
            &mut stream,
            Token(index),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let mut conn = LoadConn {
            stream,
            out: Vec::new(),
            out_sent: 0,
            received: Vec::new(),
            in_flight: VecDeque::with_capacity(config.depth),
            awaiting_hello: config.protocol == BenchProtocol::Framed,
        };
        if conn.awaiting_hello {
            Hello::current().encode(&mut conn.out);
        }
        for _ in 0..config.depth {
            conn.out.extend_from_slice(&request);
            conn.in_flight.push_back(start);
        }
        flush(&mut conn)?;
        conns.push(conn);
    }

    let measure_from = Instant::now() + config.warmup;
    let measure_until = measure_from + config.duration;
    let mut cpu_at_start = None;
    let mut latencies: Vec<u32> = Vec::with_capacity(1 << 20);
    let mut events = Events::with_capacity(1024);
    loop {
        let now = Instant::now();
        if now >= measure_until {
            break;
        }
        if cpu_at_start.is_none() && now >= measure_from {
            cpu_at_start = config.server_pid.map(procstat::cpu_time).transpose()?;
        }
        let wait = measure_until
            .saturating_duration_since(now)
            .min(Duration::from_millis(50));
        match poll.poll(&mut events, Some(wait)) {
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            other => other?,
        }
        for event in events.iter() {
            let conn = &mut conns[event.token().0];
            if event.is_writable() {
                flush(conn)?;
            }
            if !event.is_readable() {
                continue;
            }
            let completed = receive(conn, config, &decoder)?;
            let now = Instant::now();
            for _ in 0..completed {
                let Some(sent) = conn.in_flight.pop_front() else {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        "more replies than requests",
                    ));
                };
                if now >= measure_from && now < measure_until {
                    latencies.push(
                        u32::try_from(now.duration_since(sent).as_micros()).unwrap_or(u32::MAX),
                    );
                }
                conn.out.extend_from_slice(&request);
                conn.in_flight.push_back(now);
            }
            if completed > 0 {
                flush(conn)?;
            }
        }
    }
    let elapsed = Instant::now()
        .saturating_duration_since(measure_from)
        .min(config.duration);
    let cpu_at_end = config.server_pid.map(procstat::cpu_time).transpose()?;
    let requests = latencies.len() as u64;
    let server_cpu_per_request = match (cpu_at_start, cpu_at_end) {
        (Some(before), Some(after)) if requests > 0 => Some((after - before) / requests as u32),
        _ => None,
    };
    Ok(LoadReport {
        config: config.clone(),
        requests,
        elapsed,
        latency: Percentiles::of(&mut latencies),
        server_cpu_per_request,
    })
}

fn flush(conn: &mut LoadConn) -> io::Result<()> {
    while conn.out_sent < conn.out.len() {
        match conn.stream.write(&conn.out[conn.out_sent..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => conn.out_sent += n,
            Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    conn.out.clear();
    conn.out_sent = 0;
    Ok(())
}

/// Reads until the socket is drained and returns how many whole replies arrived.
fn receive(conn: &mut LoadConn, config: &LoadConfig, decoder: &Decoder) -> io::Result<usize> {
    let mut chunk = [0; 64 * 1024];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "server closed a benchmark connection",
                ));
            }
            Ok(n) => {
                conn.received.extend_from_slice(&chunk[..n]);
                // A short read means the socket is drained (epoll(7)): skip the read that
                // would only say WouldBlock, as the server does.
                if n < chunk.len() {
                    break;
                }
            }
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    match config.protocol {
        BenchProtocol::Raw => {
            let replies = conn.received.len() / config.size;
            conn.received.drain(..replies * config.size);
            Ok(replies)
        }
        BenchProtocol::Framed => {
            let mut replies = 0;
            let mut frames = decoder.frames(&conn.received);
            for frame in frames.by_ref() {
                let frame = frame.map_err(|error| io::Error::new(ErrorKind::InvalidData, error))?;
                match frame.header.frame_type {
                    FrameType::HelloOk if conn.awaiting_hello => conn.awaiting_hello = false,
                    FrameType::EchoReply if frame.payload.len() == config.size => replies += 1,
                    other => {
                        return Err(io::Error::new(
                            ErrorKind::InvalidData,
                            format!("unexpected {other} frame of {} bytes", frame.payload.len()),
                        ));
                    }
                }
            }
            let consumed = frames.consumed();
            conn.received.drain(..consumed);
            Ok(replies)
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

impl fmt::Display for IdleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} idle connections: server RSS {} KiB -> {} KiB, {:.0} bytes ({:.3} KiB) per connection",
            self.connections,
            self.rss_before_kib,
            self.rss_after_kib,
            self.bytes_per_connection(),
            self.bytes_per_connection() / 1024.0
        )
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
    for stream in &held {
        stream.set_nonblocking(true)?;
        match (&*stream).read(&mut [0; 1]) {
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            _ => {
                return Err(io::Error::other(
                    "the server closed an idle connection during the probe",
                ));
            }
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

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = self.latency;
        write!(
            f,
            "{} echoes of 64 B, latency us p50 {} p90 {} p99 {} p99.9 {} max {}",
            self.echoes, l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        if let Some(rss) = self.rss_peak_kib {
            write!(f, "; server RSS peak {rss} KiB")?;
        }
        Ok(())
    }
}

/// Pings the server for a while; see the module docs.
pub fn run_probe(config: &ProbeConfig) -> io::Result<ProbeReport> {
    let mut client = Client::connect(&config.addr, Duration::from_secs(10))
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

/// One connection that has said HELLO (framed) or nothing (raw).
fn idle_connection(config: &IdleConfig, timeout: Duration) -> io::Result<StdTcpStream> {
    match config.protocol {
        BenchProtocol::Framed => Client::connect(&config.addr.to_string(), timeout)
            .map(Client::into_stream)
            .map_err(|error| io::Error::other(error.to_string())),
        BenchProtocol::Raw => StdTcpStream::connect(config.addr),
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
