//! `bench exec`, `bench get` and `bench put`: requests that block (a command's run, a file
//! transfer), one thread per connection.

use std::path::PathBuf;

use clap::Args;
use monoreactor::DEFAULT_FRAMED_ADDR;
use monoreactor::{Token, load_token};
use monoreactor_bench::{self as bench, BenchProtocol};

use super::live::watched;
use super::{BenchCommon, print_report, target};
use crate::args::byte_count;
use crate::failure::{CLIENT_FAILURE, Failure, print_stdout};

/// The flags of `bench exec`.
#[derive(Args)]
pub struct ExecBenchArgs {
    #[command(flatten)]
    common: BenchCommon,
    /// File holding the server's token [default: $MONOREACTOR_TOKEN].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Run the command here with posix_spawn + waitpid on -c threads instead: the reference
    /// to compare with (no server).
    #[arg(long)]
    local: bool,
    /// The command to run [default: true].
    #[arg(last = true, value_name = "PROG [ARGS]")]
    command: Vec<String>,
}

/// The flags of `bench get` and `bench put`.
#[derive(Args)]
pub struct FileBenchArgs {
    #[command(flatten)]
    common: BenchCommon,
    /// File size (64K, 1.5M, 1G: K, M, G, T are powers of 1024, KB, MB, GB, TB of 1000).
    #[arg(short = 's', long = "size", value_name = "SIZE", default_value = "1M", value_parser = byte_count)]
    size: u64,
    /// File holding the server's token, if it has one [default: $MONOREACTOR_TOKEN].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

/// Commands per second through the server ([`bench::blocking::run_exec`]), or with `--local`
/// the same command spawned here ([`bench::exec::run_local_spawn`]), the reference.
pub fn exec(args: ExecBenchArgs) -> Result<(), Failure> {
    let argv = command_or_true(&args.command);
    let common = &args.common;
    if args.local {
        let config = bench::exec::SpawnConfig {
            parallel: common.connections(1),
            argv,
            warmup: common.warmup(),
            duration: common.duration.0,
        };
        let report = bench::exec::run_local_spawn(&config)
            .map_err(|error| format!("local spawn loop: {error}"))?;
        return print_stdout(&format!("{report}\n"));
    }
    let (token, _) = load_token(args.token_file.as_deref())?;
    let token = token.ok_or(
        "bench exec needs the server's token: pass --token-file PATH or set MONOREACTOR_TOKEN",
    )?;
    let config = blocking_config(common, Some(token), 1, 0)?;
    let report = watched(|| bench::blocking::run_exec(&config, &argv))
        .map_err(|error| format!("commands on {}: {error}", config.addr))?;
    print_report(&report, common.json)
}

/// Downloads per second; see [`bench::blocking::run_get`].
pub fn get(args: FileBenchArgs) -> Result<(), Failure> {
    let (token, _) = load_token(args.token_file.as_deref())?;
    let config = blocking_config(&args.common, token, 4, args.size)?;
    let report = watched(|| bench::blocking::run_get(&config))
        .map_err(|error| before_the_run(format!("downloads from {}: {error}", config.addr)))?;
    print_report(&report, args.common.json)
}

/// Uploads per second; see [`bench::blocking::run_put`].
pub fn put(args: FileBenchArgs) -> Result<(), Failure> {
    let (token, _) = load_token(args.token_file.as_deref())?;
    let config = blocking_config(&args.common, token, 4, args.size)?;
    let report = watched(|| bench::blocking::run_put(&config))
        .map_err(|error| before_the_run(format!("uploads to {}: {error}", config.addr)))?;
    print_report(&report, args.common.json)
}

/// A run that ended before its first request: Ctrl-C (while the file's BLAKE3 was computed
/// or the file to download was uploaded) is 130, as an interrupted run's; else the client's
/// failure.
fn before_the_run(message: String) -> Failure {
    Failure {
        status: if monoreactor_bench::live::interrupted() {
            128 + libc::SIGINT as u8
        } else {
            CLIENT_FAILURE
        },
        message: Some(message),
    }
}

/// The get, put and exec settings from the common flags, after checking that the address
/// speaks the framed protocol.
fn blocking_config(
    common: &BenchCommon,
    token: Option<Token>,
    default_connections: usize,
    size: u64,
) -> Result<bench::blocking::BlockingConfig, String> {
    let (addr, tls) = common.server(DEFAULT_FRAMED_ADDR)?;
    target::check(addr, BenchProtocol::Framed, tls.as_ref())?;
    Ok(bench::blocking::BlockingConfig {
        addr: addr.to_string(),
        tls,
        token,
        connections: common.connections(default_connections),
        size,
        stop: common.stop(),
        warmup: common.warmup(),
        server_pid: common.pid,
    })
}

/// The command `bench exec` runs: the one after `--`, or `true`.
fn command_or_true(command: &[String]) -> Vec<String> {
    if command.is_empty() {
        vec!["true".to_string()]
    } else {
        command.to_vec()
    }
}
