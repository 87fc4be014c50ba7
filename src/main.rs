//! `monoreactor`: the command-line front end. Parses flags, sets up logging, and hands over to
//! the library; every failure ends in one line on stderr and a non-zero exit.

use std::fmt;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use log::LevelFilter;
use monoreactor::access::{Access, load_token};
use monoreactor::bench::{self, BenchProtocol, IdleConfig, LoadConfig};
use monoreactor::client::Client;
use monoreactor::limits::Limits;
use monoreactor::server::{
    Config, DEFAULT_ECHO_ADDR, DEFAULT_FRAMED_ADDR, DEFAULT_ROOT, Listener, Server, StartError,
};

#[derive(Parser)]
#[command(
    name = "monoreactor",
    version,
    about = "A single-threaded, event-driven server: framed echo, raw TCP echo and UDP echo on one mio::Poll"
)]
struct Cli {
    /// More log output on stderr (-v debug, -vv trace).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output on stderr (-q warnings and errors, -qq errors only).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (loopback only unless told otherwise). Prints one `listening KIND ADDR`
    /// line per bound socket on stdout.
    Serve(ServeArgs),
    /// Send one framed echo request and print the reply.
    Echo(EchoArgs),
    /// Load generator: ping-pong round trips per second, or memory per idle connection.
    Bench(BenchArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Framed-protocol listen address (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value_t = Addr(DEFAULT_FRAMED_ADDR))]
    listen: Addr,
    /// Raw TCP echo listen address, or `off`.
    #[arg(long, value_name = "ADDR|off", default_value_t = Endpoint(Some(DEFAULT_ECHO_ADDR)))]
    echo_tcp: Endpoint,
    /// UDP echo address, or `off`.
    #[arg(long, value_name = "ADDR|off", default_value_t = Endpoint(Some(DEFAULT_ECHO_ADDR)))]
    echo_udp: Endpoint,
    /// Most connections open at once (lowered to fit the open-file limit).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    max_conns: usize,
    /// Close a connection after this many seconds without activity.
    #[arg(long, value_name = "SECS", default_value_t = Secs(Limits::default().idle_timeout))]
    idle_timeout: Secs,
    /// Close a framed connection that has not sent HELLO this many seconds after connecting.
    #[arg(long, value_name = "SECS", default_value_t = Secs(Limits::default().hello_timeout))]
    hello_timeout: Secs,
    /// Close a connection whose frame has not completed this many seconds after it began.
    #[arg(long, value_name = "SECS", default_value_t = Secs(Limits::default().frame_timeout))]
    frame_timeout: Secs,
    /// Largest frame payload accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_frame_len)]
    max_frame: u32,
    /// After SIGINT/SIGTERM, seconds allowed for pending output before everything is closed.
    #[arg(long, value_name = "SECS", default_value_t = Secs(Limits::default().shutdown_grace))]
    shutdown_grace: Secs,
    /// Run commands for authenticated clients (needs a token).
    #[arg(long)]
    exec: bool,
    /// File holding the token clients must present [default: $MONOREACTOR_TOKEN].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Directory commands run in; created if missing.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Allow --listen on a non-loopback address without a token.
    #[arg(long)]
    insecure: bool,
    /// Longest a command may run before it is stopped (SIGTERM, then SIGKILL).
    #[arg(long, value_name = "SECS", default_value_t = Secs(Limits::default().exec_timeout))]
    exec_timeout: Secs,
    /// Most output (stdout and stderr) one command may send before it is stopped.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().exec_output_cap)]
    exec_max_output: u64,
    /// Most commands running at once on the server.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_exec)]
    max_commands: usize,
    /// Most commands running at once on one connection.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_exec_per_connection)]
    max_commands_per_conn: usize,
}

#[derive(Args)]
struct EchoArgs {
    /// Server address (framed protocol).
    #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_FRAMED_ADDR.to_string())]
    addr: String,
    /// Seconds to wait for the connection and for each reply.
    #[arg(long, value_name = "SECS", default_value_t = Secs(Duration::from_secs(5)))]
    timeout: Secs,
    /// Text to send; several words are joined with spaces.
    #[arg(required = true, value_name = "TEXT")]
    text: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Framed,
    Raw,
}

#[derive(Args)]
struct BenchArgs {
    /// Server address [default: 127.0.0.1:7878 framed, 127.0.0.1:7007 raw].
    #[arg(long, value_name = "ADDR")]
    addr: Option<SocketAddr>,
    /// Protocol to speak.
    #[arg(long, value_enum, default_value = "framed")]
    proto: ProtocolArg,
    /// Connections.
    #[arg(long, value_name = "N", default_value_t = 50)]
    conns: usize,
    /// Payload bytes per request.
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    size: usize,
    /// Requests in flight per connection (1 = ping-pong).
    #[arg(long, value_name = "N", default_value_t = 1)]
    depth: usize,
    /// Seconds measured.
    #[arg(long, value_name = "SECS", default_value_t = Secs(Duration::from_secs(5)))]
    secs: Secs,
    /// Seconds of warm-up before measuring.
    #[arg(long, value_name = "SECS", default_value_t = Secs(Duration::from_millis(500)))]
    warmup: Secs,
    /// Server pid: report its CPU time per request (load) or its memory (idle).
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Instead of load, open --conns idle connections and report server memory per connection
    /// (needs --pid).
    #[arg(long)]
    idle: bool,
}

/// A socket address, given as `IP:PORT` or `HOST:PORT` (`localhost:7878`).
#[derive(Clone, Copy)]
struct Addr(SocketAddr);

impl FromStr for Addr {
    type Err = String;
    fn from_str(text: &str) -> Result<Addr, String> {
        if let Ok(addr) = text.parse() {
            return Ok(Addr(addr));
        }
        let resolved: Vec<SocketAddr> = text
            .to_socket_addrs()
            .map_err(|error| format!("`{text}` is not HOST:PORT ({error})"))?
            .collect();
        // A name that resolves to both families: IPv4 first, as most peers expect.
        resolved
            .iter()
            .find(|addr| addr.is_ipv4())
            .or(resolved.first())
            .copied()
            .map(Addr)
            .ok_or_else(|| format!("`{text}` resolves to no address"))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An address or `off`.
#[derive(Clone, Copy)]
struct Endpoint(Option<SocketAddr>);

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(text: &str) -> Result<Endpoint, String> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(Endpoint(None));
        }
        text.parse::<Addr>()
            .map(|addr| Endpoint(Some(addr.0)))
            .map_err(|_| format!("`{text}` is not HOST:PORT or `off`"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

/// A duration given in (possibly fractional) seconds.
#[derive(Clone, Copy)]
struct Secs(Duration);

impl FromStr for Secs {
    type Err = String;
    fn from_str(text: &str) -> Result<Secs, String> {
        let seconds: f64 = text
            .parse()
            .map_err(|_| format!("`{text}` is not a number of seconds"))?;
        if !(seconds > 0.0 && seconds <= 1e9) {
            return Err(format!("`{text}`: seconds must be above 0 and at most 1e9"));
        }
        Ok(Secs(Duration::from_secs_f64(seconds)))
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match i16::from(cli.verbose) - i16::from(cli.quiet) {
        ..=-3 => LevelFilter::Off,
        -2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        2.. => LevelFilter::Trace,
    };
    // Only the server logs by default; clients stay quiet unless asked.
    let level = match (&cli.command, cli.verbose) {
        (Command::Serve(_), _) | (_, 1..) => level,
        _ => level.min(LevelFilter::Warn),
    };
    if let Err(error) = simple_logger::SimpleLogger::new().with_level(level).init() {
        eprintln!("monoreactor: cannot set up logging: {error}");
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Echo(args) => echo(args),
        Command::Bench(args) => run_bench(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("monoreactor: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let limits = Limits {
        max_connections: args.max_conns,
        idle_timeout: args.idle_timeout.0,
        hello_timeout: args.hello_timeout.0,
        frame_timeout: args.frame_timeout.0,
        max_frame_len: args.max_frame,
        shutdown_grace: args.shutdown_grace.0,
        exec_timeout: args.exec_timeout.0,
        exec_output_cap: args.exec_max_output,
        max_exec: args.max_commands,
        max_exec_per_connection: args.max_commands_per_conn,
        ..Limits::default()
    };
    let (token, warning) =
        load_token(args.token_file.as_deref()).map_err(|error| format!("--token-file: {error}"))?;
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    let config = Config {
        framed: args.listen.0,
        echo_tcp: args.echo_tcp.0,
        echo_udp: args.echo_udp.0,
        limits,
        access: Access {
            token,
            exec: args.exec,
        },
        root: args.root,
        insecure: args.insecure,
        handle_signals: true,
    };
    let server = Server::bind(config).map_err(describe_start_error)?;
    let addrs = server.addrs();
    let mut stdout = io::stdout().lock();
    let mut lines = format!("listening framed {}\n", addrs.framed);
    if let Some(addr) = addrs.echo_tcp {
        lines += &format!("listening echo-tcp {addr}\n");
    }
    if let Some(addr) = addrs.echo_udp {
        lines += &format!("listening echo-udp {addr}\n");
    }
    stdout
        .write_all(lines.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| format!("stdout: {error}"))?;
    drop(stdout);
    server
        .run()
        .map(drop)
        .map_err(|error| format!("event loop failed: {error}"))
}

/// A start-up failure in the words of the command line: each bind failure names its flag and
/// what to try instead, all of them at once.
fn describe_start_error(error: StartError) -> String {
    let StartError::Bind(failures) = error else {
        return error.to_string();
    };
    let lines: Vec<String> = failures
        .iter()
        .map(|failure| {
            let (flag, offer_off) = match failure.listener {
                Listener::Framed => ("--listen", false),
                Listener::EchoTcp => ("--echo-tcp", true),
                Listener::EchoUdp => ("--echo-udp", true),
            };
            let mut line = format!(
                "{flag} {}: {}; try {flag} 127.0.0.1:0 for any free port",
                failure.addr, failure.error
            );
            if offer_off {
                line += &format!(", or {flag} off");
            }
            line
        })
        .collect();
    lines.join("\nmonoreactor: ")
}

fn echo(args: EchoArgs) -> Result<(), String> {
    let text = args.text.join(" ");
    let mut client =
        Client::connect(&args.addr, args.timeout.0).map_err(|error| error.to_string())?;
    let reply = client
        .echo(text.as_bytes())
        .map_err(|error| error.to_string())?;
    println!("{}", String::from_utf8_lossy(&reply));
    Ok(())
}

fn run_bench(args: BenchArgs) -> Result<(), String> {
    let protocol = match args.proto {
        ProtocolArg::Framed => BenchProtocol::Framed,
        ProtocolArg::Raw => BenchProtocol::Raw,
    };
    let addr = args.addr.unwrap_or(match protocol {
        BenchProtocol::Framed => DEFAULT_FRAMED_ADDR,
        BenchProtocol::Raw => DEFAULT_ECHO_ADDR,
    });
    if args.idle {
        let server_pid = args
            .pid
            .ok_or("--idle needs --pid, the server's process id")?;
        let config = IdleConfig {
            addr,
            protocol,
            connections: args.conns,
            server_pid,
            settle: Duration::from_secs(1),
        };
        let report = bench::run_idle(&config)
            .map_err(|error| format!("idle probe against {addr}: {error}"))?;
        println!("{report}");
        return Ok(());
    }
    let config = LoadConfig {
        addr,
        protocol,
        connections: args.conns,
        size: args.size,
        depth: args.depth,
        warmup: args.warmup.0,
        duration: args.secs.0,
        server_pid: args.pid,
    };
    let report =
        bench::run_load(&config).map_err(|error| format!("load against {addr}: {error}"))?;
    println!("{report}");
    Ok(())
}
