//! The runs that watch the server rather than load it: `bench idle` (memory per idle
//! connection, plain or TLS), `bench probe` (the latency one light client sees meanwhile) and
//! `bench stream` (a long command output to a slow reader: memory and latency meanwhile).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use monoreactor::DEFAULT_FRAMED_ADDR;
use monoreactor::load_token;
use monoreactor_bench::{self as bench, BenchProtocol, IdleConfig};

use super::{bench_tls, format, offer_alpn, plaintext_only, target};
use crate::args::{Secs, ServerAddr, TlsArgs, at_least_one, byte_count};
use crate::failure::{Failure, print_stdout};

/// The flags of `bench idle`.
#[derive(Args)]
pub struct IdleBenchArgs {
    /// Server address, HOST:PORT, or tls://HOST:PORT for TLS [default: 127.0.0.1:7878, or
    /// 127.0.0.1:7007 with --raw].
    #[arg(long, value_name = "ADDR")]
    addr: Option<ServerAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Connections to open.
    #[arg(short = 'c', long = "connections", value_name = "N", default_value_t = 1000, value_parser = at_least_one)]
    connections: usize,
    /// Plain connections to a raw echo port (no HELLO); with --tls, connections that only
    /// complete the TLS handshake.
    #[arg(long, conflicts_with = "redis")]
    raw: bool,
    /// Plain connections to redis-server (checked with a RESP PING first).
    #[arg(long)]
    redis: bool,
    /// Server pid, whose memory is measured.
    #[arg(long, value_name = "PID", value_parser = super::server_pid)]
    pid: u32,
    /// ALPN protocol to offer over TLS with --raw [default: none]; an empty NAME offers none.
    #[arg(long, value_name = "NAME", requires = "raw", help_heading = "TLS")]
    tls_alpn: Option<String>,
}

/// The flags of `bench probe`.
#[derive(Args)]
pub struct ProbeBenchArgs {
    /// Server address (framed), HOST:PORT, or tls://HOST:PORT for TLS [default:
    /// 127.0.0.1:7878].
    #[arg(long, value_name = "ADDR")]
    addr: Option<ServerAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    /// How long to probe.
    #[arg(short = 'd', long = "duration", value_name = "DURATION", default_value_t = Secs(Duration::from_secs(5)))]
    duration: Secs,
    /// Server pid: report its peak memory.
    #[arg(long, value_name = "PID", value_parser = super::server_pid)]
    pid: Option<u32>,
}

/// The flags of `bench stream`.
#[derive(Args)]
pub struct StreamBenchArgs {
    /// Server address (framed), HOST:PORT, or tls://HOST:PORT for TLS [default:
    /// 127.0.0.1:7878].
    #[arg(long, value_name = "ADDR")]
    addr: Option<ServerAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Output bytes the command writes (64K, 1.5M, 1G: K, M, G, T are powers of 1024, KB, MB, GB, TB of 1000).
    #[arg(short = 's', long = "size", value_name = "SIZE", default_value = "1G", value_parser = byte_count)]
    size: u64,
    /// How fast the client reads, bytes per second.
    #[arg(long, value_name = "SIZE", default_value = "100MB", value_parser = byte_count)]
    read_rate: u64,
    /// Server pid, whose memory is measured.
    #[arg(long, value_name = "PID", value_parser = super::server_pid)]
    pid: u32,
    /// File holding the server's token [default: $MONOREACTOR_TOKEN].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

/// Holds idle connections and prints the server's memory per connection; see
/// [`bench::run_idle`].
pub fn idle(args: IdleBenchArgs) -> Result<(), Failure> {
    let protocol = target::protocol(args.raw, args.redis);
    let addr = args
        .addr
        .unwrap_or(ServerAddr::from(target::default_addr(protocol)));
    let tls = bench_tls(&args.tls, &addr)?;
    let tls = match protocol {
        BenchProtocol::Framed => tls,
        BenchProtocol::Raw => offer_alpn(tls, args.tls_alpn.as_deref(), None)?,
        BenchProtocol::Redis => {
            plaintext_only(tls.as_ref(), "idle --redis")?;
            None
        }
    };
    let addr = addr.addr;
    target::check(addr, protocol, tls.as_ref())?;
    let config = IdleConfig {
        addr,
        tls,
        protocol,
        connections: args.connections,
        server_pid: args.pid,
        settle: Duration::from_secs(1),
    };
    let report =
        bench::run_idle(&config).map_err(|error| format!("idle probe against {addr}: {error}"))?;
    print_stdout(&format!("{}\n", format::idle(&report)))
}

/// Pings 64-byte echoes for a while and prints their latency; see [`bench::run_probe`].
pub fn probe(args: ProbeBenchArgs) -> Result<(), Failure> {
    let addr = args.addr.unwrap_or(ServerAddr::from(DEFAULT_FRAMED_ADDR));
    let tls = bench_tls(&args.tls, &addr)?;
    let addr = addr.addr;
    target::check(addr, BenchProtocol::Framed, tls.as_ref())?;
    let config = bench::ProbeConfig {
        addr: addr.to_string(),
        tls,
        duration: args.duration.0,
        interval: Duration::from_millis(1),
        server_pid: args.pid,
    };
    let report = bench::run_probe(&config).map_err(|error| format!("probe of {addr}: {error}"))?;
    print_stdout(&format!("{}\n", format::probe(&report)))
}

/// Streams a long output to a slow reader; see [`bench::exec::run_stream`].
pub fn stream(args: StreamBenchArgs) -> Result<(), Failure> {
    let addr = args.addr.unwrap_or(ServerAddr::from(DEFAULT_FRAMED_ADDR));
    let tls = bench_tls(&args.tls, &addr)?;
    let addr = addr.addr;
    target::check(addr, BenchProtocol::Framed, tls.as_ref())?;
    let (token, _) = load_token(args.token_file.as_deref())?;
    let token = token.ok_or(
        "bench stream needs the server's token: pass --token-file PATH or set MONOREACTOR_TOKEN",
    )?;
    let config = bench::exec::StreamConfig {
        addr: addr.to_string(),
        tls,
        token,
        bytes: args.size,
        read_rate: args.read_rate,
        server_pid: args.pid,
    };
    let report =
        bench::exec::run_stream(&config).map_err(|error| format!("stream from {addr}: {error}"))?;
    print_stdout(&format!("{report}\n"))
}
