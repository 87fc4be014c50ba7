//! `bench echo`, `bench udp` and `bench connect`: event-loop load from one thread, framed or
//! plain echo, so they measure any echo server (and redis, with `echo --redis`).

use std::net::SocketAddr;

use clap::Args;
use monoreactor::DEFAULT_ECHO_ADDR;
use monoreactor_bench::{self as bench, BenchProtocol, LoadConfig};

use super::{BenchCommon, plaintext_only, print_report, target};
use crate::args::{at_least_one, byte_count};
use crate::failure::Failure;

/// The flags of `bench echo`.
#[derive(Args)]
pub struct EchoBenchArgs {
    #[command(flatten)]
    common: BenchCommon,
    /// Raw bytes to a plain echo server (default address 127.0.0.1:7007).
    #[arg(long, conflicts_with_all = ["framed", "redis"])]
    raw: bool,
    /// The framed protocol (the default; address 127.0.0.1:7878).
    #[arg(long, conflicts_with = "redis")]
    framed: bool,
    /// The RESP ECHO command to redis-server (default address 127.0.0.1:6379), to measure
    /// redis with the same generator.
    #[arg(long)]
    redis: bool,
    /// Payload bytes per request (K, M, G suffixes: powers of 1024).
    #[arg(short = 's', long = "size", value_name = "BYTES", default_value = "64", value_parser = byte_count)]
    size: u64,
    /// Requests in flight per connection (1 = ping-pong).
    #[arg(short = 'P', long = "depth", value_name = "N", default_value_t = 1, value_parser = at_least_one)]
    depth: usize,
    /// Open loop: requests per second over all connections, sent when due; latency counts
    /// from the due time, so stalls are not hidden (coordinated omission corrected).
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
}

/// The flags of `bench udp`.
#[derive(Args)]
pub struct UdpBenchArgs {
    #[command(flatten)]
    common: BenchCommon,
    /// Payload bytes per datagram.
    #[arg(short = 's', long = "size", value_name = "BYTES", default_value = "64", value_parser = byte_count)]
    size: u64,
    /// Datagrams in flight per socket.
    #[arg(short = 'P', long = "depth", value_name = "N", default_value_t = 1, value_parser = at_least_one)]
    depth: usize,
    /// Open loop: datagrams per second over all sockets (see `bench echo --rate`).
    #[arg(long, value_name = "PER_SEC")]
    rate: Option<f64>,
}

/// The flags of `bench connect`.
#[derive(Args)]
pub struct ConnectBenchArgs {
    #[command(flatten)]
    common: BenchCommon,
    /// Bytes echoed on each connection.
    #[arg(short = 's', long = "size", value_name = "BYTES", default_value = "64", value_parser = byte_count)]
    size: u64,
    /// Close with a reset instead of a FIN (no TIME_WAIT on this side), as connectgen's
    /// CONNECTGEN_RST=1.
    #[arg(long)]
    rst: bool,
}

/// TCP echo load; see [`bench::echo::run_echo`].
pub fn echo(args: EchoBenchArgs) -> Result<(), Failure> {
    let protocol = target::protocol(args.raw, args.redis);
    let default = target::default_addr(protocol);
    let config = load_config(&args.common, default, protocol, args.size, args.depth)?;
    if protocol != BenchProtocol::Framed {
        plaintext_only(config.tls.as_ref(), "echo --raw or --redis")?;
    }
    let config = LoadConfig {
        rate: args.rate,
        ..config
    };
    target::check(config.addr, protocol, config.tls.as_ref())?;
    let report = bench::echo::run_echo(&config)
        .map_err(|error| format!("load against {}: {error}", config.addr))?;
    print_report(&report, args.common.json)
}

/// UDP echo load; see [`bench::udp::run_udp`].
pub fn udp(args: UdpBenchArgs) -> Result<(), Failure> {
    let config = load_config(
        &args.common,
        DEFAULT_ECHO_ADDR,
        BenchProtocol::Raw,
        args.size,
        args.depth,
    )?;
    plaintext_only(config.tls.as_ref(), "UDP echo")?;
    let config = LoadConfig {
        rate: args.rate,
        ..config
    };
    target::check_udp_echo(config.addr)?;
    let report = bench::udp::run_udp(&config)
        .map_err(|error| format!("UDP load against {}: {error}", config.addr))?;
    print_report(&report, args.common.json)
}

/// Short connections; see [`bench::connect::run_connect`].
pub fn connect(args: ConnectBenchArgs) -> Result<(), Failure> {
    let config = load_config(
        &args.common,
        DEFAULT_ECHO_ADDR,
        BenchProtocol::Raw,
        args.size,
        1,
    )?;
    plaintext_only(config.tls.as_ref(), "connect (raw echo)")?;
    target::check(config.addr, BenchProtocol::Raw, None)?;
    let options = bench::connect::ConnectOptions { reset: args.rst };
    let report = bench::connect::run_connect(&config, options)
        .map_err(|error| format!("connections to {}: {error}", config.addr))?;
    print_report(&report, args.common.json)
}

/// The echo, UDP and connect settings from the common flags.
fn load_config(
    common: &BenchCommon,
    default_addr: SocketAddr,
    protocol: BenchProtocol,
    size: u64,
    depth: usize,
) -> Result<LoadConfig, Failure> {
    let (addr, tls) = common.server(default_addr)?;
    Ok(LoadConfig {
        addr,
        tls,
        protocol,
        connections: common.connections(50),
        size: usize::try_from(size).unwrap_or(usize::MAX),
        depth,
        stop: common.stop(),
        warmup: common.warmup(),
        rate: None,
        server_pid: common.pid,
    })
}
