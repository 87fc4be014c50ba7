//! `monoreactor bench`: the load generator ([`monoreactor_bench`]) on the command line, one
//! subcommand per workload: echo, UDP and short connections ([`load`]), exec and file
//! transfers ([`blocking`]), and the runs that watch the server rather than load it: idle
//! memory, a latency probe, a long output to a slow reader ([`observe`]). Each checks its
//! address first ([`target`]) and prints its report as text or JSON ([`format`](mod@format)).

use std::time::Duration;

use clap::{Args, Subcommand};
use monoreactor_bench::{BenchTls, Report, Stop};

use crate::args::{Secs, ServerAddr, TlsArgs, at_least_one};
use crate::failure::{Failure, print_stdout};

mod blocking;
mod format;
mod live;
mod load;
mod observe;
mod target;

/// The flags of `bench`: a workload, and its own flags.
#[derive(Args)]
#[command(after_help = HELP)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

/// What `bench --help` says after the subcommands.
const HELP: &str = "\
Every load subcommand prints requests, errors by kind, throughput, MB/s and latency
min/avg/p50/p90/p99/p99.9/max (HDR histogram), and with --pid the server's CPU time per
request; --json prints the same as one JSON object. MB/s counts payload bytes sent plus
payload bytes received, 10^6 bytes to the MB (an echo of 64 bytes is 128 bytes, a GET or
a PUT of a file its size; frame headers are not counted): `mb_per_s` in the JSON.
`echo --raw`, `udp` and `connect` speak plain echo and measure any echo server, and
`echo --raw`, `connect` and `idle --raw` the same inside TLS (a TLS-terminating proxy such
as nginx's stream ssl in front of an echo server).

Is the generator the bottleneck? Each report gives the generator's own CPU time per request
and how busy it was (share of a core): echo, udp and connect run on one thread, and a
generator near 100% of its core says so in the report. Another load generator at the same
settings tells: equal rates mean the server, not the generator, sets the pace.

While a run goes, a terminal shows one line of progress on stderr (elapsed, requests,
errors), updated each second; never when stderr is a pipe or a file, nor with -q. Ctrl-C
stops the run: its report so far, marked interrupted, the files of `get` and `put` removed
from the server, exit 130.

Exit status: 0 the run completed; 1 the server refused every request; 2 the command line
cannot work (a payload larger than a frame or a datagram); 255 nothing succeeded because the
connections failed, or the run ended early (the server went away); 130 interrupted.

Examples:
  monoreactor bench echo -c 50 -s 64 -d 5 --pid $(pidof monoreactor)
  monoreactor bench echo --raw --addr 127.0.0.1:7007 -c 500 -P 16 -d 5
  monoreactor bench echo --rate 20000 -d 10          # open loop, latency from due times
  monoreactor bench udp -c 16 -n 100000
  monoreactor bench connect -c 50 -d 3 --rst
  monoreactor bench get -c 4 -s 1M -d 5
  monoreactor bench exec -c 2 -d 3 --token-file ~/.monoreactor-token
  monoreactor bench echo --addr tls://server.example:7878 -c 50 -d 5
  monoreactor bench echo --raw --addr tls://127.0.0.1:8443 --tls-ca ca.pem -c 50 -P 4 -d 5
  monoreactor bench connect --addr tls://127.0.0.1:7878 --tls-ca ca.pem --handshake-only --pid $(pidof monoreactor)
  monoreactor bench idle --addr tls://127.0.0.1:7878 --tls-ca ca.pem -c 1000 --pid $(pidof monoreactor)

TLS (--tls, or an address written tls://HOST:PORT) applies to every TCP workload but
`echo --redis`: the framed ones (echo, exec, get, put, idle, probe, stream) and raw echo
inside TLS (`echo --raw`, `connect`, `idle --raw`), which the server's own echo ports do not
speak but a TLS proxy in front of an echo server does; the report then says `tls on`.
`connect` over TLS is a full TLS 1.3 handshake per connection (no resumption), then the echo
or, with --handshake-only, nothing, and counts handshakes. Its key exchange is X25519, as
OpenSSL's and curl's is, so another TLS server (nginx) is measured doing the same work. ALPN: `monoreactor` for the framed
protocol and `connect --handshake-only` (a server set up without ALPN ignores it), none for
raw echo; --tls-alpn NAME offers NAME instead (an empty NAME: none). UDP is plaintext.";

/// The workloads.
#[derive(Subcommand)]
enum BenchCommand {
    /// TCP echo load: framed ECHO_REQUESTs (default, port 7878) or raw bytes (--raw, port
    /// 7007, any echo server).
    Echo(load::EchoBenchArgs),
    /// UDP echo load against any UDP echo server (default 127.0.0.1:7007).
    Udp(load::UdpBenchArgs),
    /// Short connections against any TCP echo server: connect, one echo, close, per request;
    /// reports connections per second (default 127.0.0.1:7007). Over TLS: a full handshake
    /// each, and --handshake-only for the handshake alone; reports handshakes per second.
    Connect(load::ConnectBenchArgs),
    /// Remote exec round trips: each connection runs a command (`true`, or the one after
    /// `--`) after another; needs the server's token.
    Exec(blocking::ExecBenchArgs),
    /// File downloads: each connection GETs the same file of -s bytes (uploaded first,
    /// removed after), verified by BLAKE3, to nowhere.
    Get(blocking::FileBenchArgs),
    /// File uploads: each connection PUTs -s bytes to a path of its own, again and again
    /// (removed after).
    Put(blocking::FileBenchArgs),
    /// Opens -c connections that stay idle and reports server memory per connection (needs
    /// --pid).
    Idle(observe::IdleBenchArgs),
    /// One client pings 64-byte framed echoes every millisecond: the latency another client
    /// sees while something heavy runs (with --pid, the server's peak memory too).
    Probe(observe::ProbeBenchArgs),
    /// One command writes -s bytes of output to a client reading at --read-rate, while a
    /// 64-byte echo client pings: the server's peak memory and the echo latency meanwhile
    /// (needs --pid and the server's token; its --exec-max-output must allow -s).
    Stream(observe::StreamBenchArgs),
}

/// Flags every load subcommand takes.
#[derive(Args)]
struct BenchCommon {
    /// Server address, HOST:PORT, or tls://HOST:PORT for TLS [default: per subcommand].
    #[arg(long, value_name = "ADDR")]
    addr: Option<ServerAddr>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Connections [default: 50 for echo, udp and connect; 1 for exec; 4 for get and put].
    #[arg(short = 'c', long = "connections", value_name = "N", value_parser = at_least_one)]
    connections: Option<usize>,
    /// How long the load is measured.
    #[arg(short = 'd', long = "duration", value_name = "DURATION", default_value_t = Secs(Duration::from_secs(5)))]
    duration: Secs,
    /// Stop after this many requests instead of after -d.
    #[arg(short = 'n', long = "requests", value_name = "N", value_parser = at_least_one)]
    requests: Option<usize>,
    /// How long the load runs before measuring starts [default: none].
    #[arg(long, value_name = "DURATION")]
    warmup: Option<Secs>,
    /// Server pid: report its CPU time per request.
    #[arg(long, value_name = "PID", value_parser = server_pid)]
    pid: Option<u32>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `--pid`: a process that exists now (its `/proc/PID/stat` reads). Checked when parsed, so
/// a typo is a usage error before the run, not a report without the server's figures that
/// says nothing (or a `/proc` error in the system's words after it).
pub fn server_pid(text: &str) -> Result<u32, String> {
    let pid = text
        .parse::<u32>()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| format!("`{text}` is not a process id"))?;
    monoreactor_bench::procstat::cpu_time(pid)
        .map(|_| pid)
        .map_err(|_| format!("no process {pid} (the server's is `pidof monoreactor`)"))
}

impl BenchCommon {
    fn stop(&self) -> Stop {
        match self.requests {
            Some(count) => Stop::Requests(count as u64),
            None => Stop::After(self.duration.0),
        }
    }

    fn warmup(&self) -> Duration {
        self.warmup.map_or(Duration::ZERO, |secs| secs.0)
    }

    fn connections(&self, default: usize) -> usize {
        self.connections.unwrap_or(default)
    }

    /// The address, or `default`, and its TLS if asked for.
    fn server(
        &self,
        default: std::net::SocketAddr,
    ) -> Result<(std::net::SocketAddr, Option<BenchTls>), String> {
        // `--addr HOST` takes the workload's own port (7007 for raw echo), not the framed one.
        let addr = match self.addr.clone() {
            Some(addr) => addr.or_port(default.port()),
            None => ServerAddr::from(default),
        };
        Ok((addr.addr, bench_tls(&self.tls, &addr)?))
    }
}

/// The TLS a run's flags ask for at `addr` (`None`: plaintext): the configuration, and the
/// name the certificate must carry, taken from the address as typed.
fn bench_tls(tls: &TlsArgs, addr: &ServerAddr) -> Result<Option<BenchTls>, String> {
    if !tls.wanted(addr) {
        return Ok(None);
    }
    let target = tls.target(addr)?;
    let server_name = target.server_name().map_err(|error| error.to_string())?;
    Ok(target.tls_config().map(|config| BenchTls {
        config: std::sync::Arc::clone(config),
        server_name,
    }))
}

/// Refuses TLS for a plaintext-only workload (UDP, redis), naming it.
fn plaintext_only(tls: Option<&BenchTls>, what: &str) -> Result<(), Failure> {
    match tls {
        Some(_) => Err(Failure::usage(format!("{what} is plaintext: drop --tls"))),
        None => Ok(()),
    }
}

/// `tls` offering the ALPN `--tls-alpn` names (`flag`; empty: none), or else `default`
/// (`None`: none). `--tls-alpn` without TLS is a usage error.
fn offer_alpn(
    tls: Option<BenchTls>,
    flag: Option<&str>,
    default: Option<&[u8]>,
) -> Result<Option<BenchTls>, Failure> {
    let Some(tls) = tls else {
        return match flag {
            Some(_) => Err(Failure::usage(
                "--tls-alpn is for TLS: add --tls or write the address tls://HOST:PORT".to_string(),
            )),
            None => Ok(None),
        };
    };
    let protocols = match flag.map(str::as_bytes).or(default) {
        Some(name) if !name.is_empty() => vec![name.to_vec()],
        _ => Vec::new(),
    };
    Ok(Some(tls.with_alpn(protocols)))
}

/// Runs the workload and prints its report.
pub fn run(args: BenchArgs) -> Result<(), Failure> {
    match args.command {
        BenchCommand::Echo(args) => load::echo(args),
        BenchCommand::Udp(args) => load::udp(args),
        BenchCommand::Connect(args) => load::connect(args),
        BenchCommand::Exec(args) => blocking::exec(args),
        BenchCommand::Get(args) => blocking::get(args),
        BenchCommand::Put(args) => blocking::put(args),
        BenchCommand::Idle(args) => observe::idle(args),
        BenchCommand::Probe(args) => observe::probe(args),
        BenchCommand::Stream(args) => observe::stream(args),
    }
}

/// Prints a load report (text or JSON) and says how the run ended: interrupted (130), with
/// nothing succeeded (1 if the server refused every request, 255 if the connections failed),
/// cut short (255: the server went away), or complete.
fn print_report(report: &Report, json: bool) -> Result<(), Failure> {
    let text = if json {
        format::report_json(report)?
    } else {
        format::report(report)
    };
    print_stdout(&format!("{text}\n"))?;
    let what = format!("{} {}", report.what, report.addr);
    if monoreactor_bench::live::interrupted() {
        return Err(Failure {
            status: 128 + libc::SIGINT as u8,
            message: Some(format!("{what}: interrupted (partial results above)")),
        });
    }
    if report.requests == 0 {
        let errors = if report.errors.is_empty() {
            "no reply".to_string()
        } else {
            let kinds: Vec<String> = report
                .errors
                .iter()
                .map(|(kind, count)| format!("{kind} {count}"))
                .collect();
            kinds.join(", ")
        };
        let message = format!("{what}: nothing succeeded ({errors})");
        let refused = !report.errors.is_empty()
            && report
                .errors
                .keys()
                .all(|kind| monoreactor_bench::report::refused_by_server(kind));
        return Err(if refused {
            Failure::refused(message)
        } else {
            Failure::own(message)
        });
    }
    match &report.ended_early {
        Some(reason) => Err(Failure::own(format!(
            "{what}: {reason} (partial results above)"
        ))),
        None => Ok(()),
    }
}

/// The largest payload `bench` sends in one frame: the protocol's largest frame (a server's
/// own limit, its --max-frame, may be lower; it is checked on the first connection).
const MAX_FRAMED_PAYLOAD: u64 = monoreactor::MAX_FRAME_LEN as u64;

/// The largest payload of one UDP datagram over IPv4 (65,535 less the IP and UDP headers),
/// which is also the largest the server's UDP echo answers (the library's `MAX_DATAGRAM`, not
/// exported).
const MAX_DATAGRAM_PAYLOAD: u64 = 65_507;
