//! `bench echo`, `bench udp` and `bench connect`: event-loop load from one thread, framed or
//! plain echo, so they measure any echo server (and redis, with `echo --redis`); over TLS,
//! framed or plain echo inside it, and for `connect` a full handshake per connection.

use std::net::SocketAddr;

use clap::Args;
use monoreactor::DEFAULT_ECHO_ADDR;
use monoreactor::client::tls::ALPN;
use monoreactor_bench::{self as bench, BenchProtocol, LoadConfig};

use super::live::watched;
use super::{
    BenchCommon, MAX_DATAGRAM_PAYLOAD, MAX_FRAMED_PAYLOAD, offer_alpn, plaintext_only,
    print_report, target,
};
use crate::args::{at_least_one, byte_count};
use crate::failure::Failure;

/// The flags of `bench echo`.
#[derive(Args)]
pub struct EchoBenchArgs {
    #[command(flatten)]
    common: BenchCommon,
    /// Raw bytes to a plain echo server (default address 127.0.0.1:7007); with --tls, raw
    /// bytes inside TLS (a TLS proxy in front of an echo server).
    #[arg(long, conflicts_with_all = ["framed", "redis"])]
    raw: bool,
    /// The framed protocol (the default; address 127.0.0.1:7878).
    #[arg(long, conflicts_with = "redis")]
    framed: bool,
    /// The RESP ECHO command to redis-server (default address 127.0.0.1:6379), to measure
    /// redis with the same generator.
    #[arg(long)]
    redis: bool,
    /// Payload bytes per request (64K, 1.5M, 1G: K, M, G, T are powers of 1024, KB, MB, GB, TB of 1000).
    #[arg(short = 's', long = "size", value_name = "SIZE", default_value = "64", value_parser = byte_count)]
    size: u64,
    /// Requests in flight per connection (1 = ping-pong).
    #[arg(short = 'P', long = "depth", value_name = "N", default_value_t = 1, value_parser = at_least_one)]
    depth: usize,
    /// Open loop: requests per second over all connections, sent when due; latency counts
    /// from the due time, so stalls are not hidden (coordinated omission corrected).
    #[arg(long, value_name = "PER_SEC", value_parser = per_second)]
    rate: Option<f64>,
    /// ALPN protocol to offer over TLS with --raw [default: none]; an empty NAME offers none.
    #[arg(long, value_name = "NAME", requires = "raw", help_heading = "TLS")]
    tls_alpn: Option<String>,
    /// Open a connection again (after 10 ms) when the server closes or resets it, as a client
    /// behind a load balancer would, and count as errors the requests that were in flight on
    /// it (none if the server closed it after answering them): a server's restart then costs
    /// its failed requests, and the run goes on. The requests a framed server left unanswered
    /// at its SHUTTING_DOWN were not processed: they are sent again on the new connection and
    /// counted as retried, not as errors. Closed loop only.
    #[arg(long, conflicts_with = "rate")]
    reconnect: bool,
}

/// The flags of `bench udp`. UDP is plaintext: the TLS flags the workloads share are hidden
/// from its help (given, they are refused), and its address is said without `tls://`.
#[derive(Args)]
#[command(
    mut_arg("addr", |arg| arg.help("Server address, HOST:PORT (UDP is plaintext) [default: 127.0.0.1:7007]")),
    mut_arg("tls", |arg| arg.hide(true)),
    mut_arg("tls_ca", |arg| arg.hide(true)),
    mut_arg("tls_insecure", |arg| arg.hide(true)),
    mut_arg("tls_cert", |arg| arg.hide(true)),
    mut_arg("tls_key", |arg| arg.hide(true)),
)]
pub struct UdpBenchArgs {
    #[command(flatten)]
    common: BenchCommon,
    /// Payload bytes per datagram.
    #[arg(short = 's', long = "size", value_name = "SIZE", default_value = "64", value_parser = byte_count)]
    size: u64,
    /// Datagrams in flight per socket.
    #[arg(short = 'P', long = "depth", value_name = "N", default_value_t = 1, value_parser = at_least_one)]
    depth: usize,
    /// Open loop: datagrams per second over all sockets (see `bench echo --rate`).
    #[arg(long, value_name = "PER_SEC", value_parser = per_second)]
    rate: Option<f64>,
}

/// The flags of `bench connect`.
#[derive(Args)]
pub struct ConnectBenchArgs {
    #[command(flatten)]
    common: BenchCommon,
    /// Bytes echoed on each connection.
    #[arg(short = 's', long = "size", value_name = "SIZE", default_value = "64", value_parser = byte_count)]
    size: u64,
    /// Close with a reset instead of a FIN (no TIME_WAIT on this side).
    #[arg(long)]
    rst: bool,
    /// Over TLS: each connection is the handshake alone (then close_notify and close), no
    /// echo; any TLS port will do, the framed one too. The server's CPU per handshake with
    /// --pid.
    #[arg(long)]
    handshake_only: bool,
    /// ALPN protocol to offer over TLS [default: monoreactor with --handshake-only, else
    /// none]; an empty NAME offers none.
    #[arg(long, value_name = "NAME", help_heading = "TLS")]
    tls_alpn: Option<String>,
}

/// A rate, requests per second: a positive, finite number (a usage error otherwise, before
/// anything connects).
fn per_second(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "`{text}`: expected a positive number of requests per second"
        )),
    }
}

/// TCP echo load; see [`bench::echo::run_echo`].
pub fn echo(args: EchoBenchArgs) -> Result<(), Failure> {
    let protocol = target::protocol(args.raw, args.redis);
    if protocol == BenchProtocol::Framed && args.size > MAX_FRAMED_PAYLOAD {
        return Err(Failure::usage(format!(
            "-s {}: a framed echo carries at most {MAX_FRAMED_PAYLOAD} bytes (the protocol's largest frame); --raw has no such limit",
            args.size
        )));
    }
    let default = target::default_addr(protocol);
    let config = load_config(&args.common, default, protocol, args.size, args.depth)?;
    let tls = match protocol {
        BenchProtocol::Framed => config.tls,
        BenchProtocol::Raw => offer_alpn(config.tls, args.tls_alpn.as_deref(), None)?,
        BenchProtocol::Redis => {
            plaintext_only(config.tls.as_ref(), "echo --redis")?;
            None
        }
    };
    let config = LoadConfig {
        rate: args.rate,
        tls,
        ..config
    };
    if protocol == BenchProtocol::Framed {
        let limit = target::check_framed(config.addr, config.tls.as_ref())?;
        if args.size > u64::from(limit) {
            return Err(Failure::usage(format!(
                "-s {}: {} takes frames of at most {limit} bytes (its --max-frame; 4096 before authentication on a server with a token)",
                args.size, config.addr
            )));
        }
    } else {
        target::check(config.addr, protocol, config.tls.as_ref())?;
    }
    let options = bench::echo::EchoOptions {
        reconnect: args.reconnect,
    };
    let report = watched(|| bench::echo::run_echo_with(&config, options))
        .map_err(|error| Failure::own(format!("load against {}: {error}", config.addr)))?;
    print_report(&report, args.common.json)
}

/// UDP echo load; see [`bench::udp::run_udp`].
pub fn udp(args: UdpBenchArgs) -> Result<(), Failure> {
    if args.size > MAX_DATAGRAM_PAYLOAD {
        return Err(Failure::usage(format!(
            "-s {}: a UDP datagram carries at most {MAX_DATAGRAM_PAYLOAD} bytes over IPv4 (65,535 less the IP and UDP headers), the most the server's UDP echo answers",
            args.size
        )));
    }
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
    let report = watched(|| bench::udp::run_udp(&config))
        .map_err(|error| Failure::own(format!("UDP load against {}: {error}", config.addr)))?;
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
    if args.handshake_only && config.tls.is_none() {
        return Err(Failure::usage(
            "--handshake-only measures TLS handshakes: add --tls or write the address tls://HOST:PORT"
                .to_string(),
        ));
    }
    let alpn = args.handshake_only.then_some(ALPN);
    let config = LoadConfig {
        tls: offer_alpn(config.tls, args.tls_alpn.as_deref(), alpn)?,
        ..config
    };
    match (&config.tls, args.handshake_only) {
        (Some(tls), true) => target::check_handshake(config.addr, tls)?,
        (tls, _) => target::check(config.addr, BenchProtocol::Raw, tls.as_ref())?,
    }
    let options = bench::connect::ConnectOptions {
        reset: args.rst,
        handshake_only: args.handshake_only,
    };
    let report = watched(|| bench::connect::run_connect(&config, options))
        .map_err(|error| Failure::own(format!("connections to {}: {error}", config.addr)))?;
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
