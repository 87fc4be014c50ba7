//! `monoreactor`: the command-line front end. Parses flags, sets up logging, and hands over to
//! the library; every failure ends in one line on stderr and a non-zero exit.
//!
//! The client commands (`echo`, `exec`, `bench`, and the file commands `get`, `put`, `ls`,
//! `stat`, `rm`, `mkdir`) behave like Unix tools: a closed stdout ends them quietly (SIGPIPE's
//! default action is restored for them, never for `serve`), a stdout that cannot be written
//! otherwise (`>/dev/full`) is one line and exit 255 ([`print_stdout`]), every address takes
//! `HOST:PORT`, and server errors are shown decoded with a hint where one helps.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, ErrorKind, IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, ArgGroup, Args, Parser, Subcommand, ValueEnum};
use log::LevelFilter;
use monoreactor::access::{Access, TOKEN_ENV, Token, load_token};
use monoreactor::client::exec::{Command as RemoteCommand, ExecClient, Signaller};
use monoreactor::client::{Client, ClientError, resolve_addr};
use monoreactor::limits::Limits;
use monoreactor::proto::exec::{EndReason, MAX_CWD_LEN, Signal};
use monoreactor::proto::{Decoder, ErrorCode, ErrorMessage, FrameType, SessionFlags};
use monoreactor::server::{
    Config, DEFAULT_ECHO_ADDR, DEFAULT_FRAMED_ADDR, DEFAULT_ROOT, Listener, Server, StartError,
};
use monoreactor_bench::{self as bench, BenchProtocol, IdleConfig, LoadConfig};

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
    /// Run a command on a server started with --exec, like ssh: stdin is forwarded, its
    /// stdout and stderr come back as they are written, and its exit status is ours.
    #[command(after_help = EXEC_HELP)]
    Exec(ExecArgs),
    /// Load generator: echo (framed, raw), UDP, short connections, exec, file get and put;
    /// latency percentiles, errors by kind, CPU per request.
    Bench(BenchArgs),
    /// Download a file from the server's root, verified (BLAKE3) and atomic; resumable.
    #[command(after_help = file_commands::GET_HELP)]
    Get(file_commands::GetArgs),
    /// Upload a file (or stdin) into the server's root, verified (BLAKE3) and atomic;
    /// resumable.
    #[command(after_help = file_commands::PUT_HELP)]
    Put(file_commands::PutArgs),
    /// List a directory on the server.
    #[command(after_help = file_commands::LS_HELP)]
    Ls(file_commands::LsArgs),
    /// Show what a path on the server is: kind, size, modification time, BLAKE3 if known.
    #[command(after_help = file_commands::STAT_HELP)]
    Stat(file_commands::StatArgs),
    /// Remove files or empty directories on the server.
    #[command(after_help = file_commands::RM_HELP)]
    Rm(file_commands::PathsArgs),
    /// Create directories on the server.
    #[command(after_help = file_commands::MKDIR_HELP)]
    Mkdir(file_commands::PathsArgs),
    /// Internal: the server's disk helper (blocking disk calls off the loop), on the socket
    /// inherited as descriptor FD. Started by `serve`, never by hand.
    #[command(name = "__disk-helper", hide = true)]
    DiskHelper {
        /// The inherited SOCK_SEQPACKET socket.
        fd: i32,
    },
}

const EXEC_HELP: &str = "\
Examples:
  monoreactor exec -- uname -a
  monoreactor exec --shell 'ls | wc -l'
  monoreactor exec -- cat < big.bin | b3sum      (same sum as b3sum big.bin)

Stdin: forwarded until end of file, then the command sees EOF. With -n, or when stdin is a
terminal and this is a background job, nothing is read and the command's stdin is /dev/null.

Signals: the first SIGINT (Ctrl-C) or SIGTERM is sent to the remote command's process group;
a second one gives up at once (exit 130 or 143), as does SIGHUP (129), and the server stops the
command when the connection closes.

Exit status: the command's own; 128+N if signal N killed it; 127 if the server found no such
program, 126 if it may not run it; 255 if this client failed (one line on stderr says why).

The token comes from --token-file, else from $MONOREACTOR_TOKEN.";

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
    /// Most connections open at once (lowered to fit the open-file limit); per worker.
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
    /// Directory files are served from and commands run in; created if missing. No path
    /// leads outside it (symlinks are never followed), but a hard link placed inside it
    /// serves its target's content, as with nginx or rsync: keep files that must not be
    /// served from being linked in (making one needs access to the file on the same
    /// filesystem; see fs.protected_hardlinks).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Do not serve files (GET, PUT, LIST, ...); the root is then opened only for --exec.
    #[arg(long)]
    no_files: bool,
    /// Largest file one PUT may store, bytes.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_put)]
    max_put: u64,
    /// Most file transfers (GET, PUT, LIST) running at once on the server; per worker.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_transfers)]
    max_transfers: usize,
    /// Bytes of buffer all connections together may hold; past it, those holding the most
    /// are closed with LIMIT_REACHED [default: a quarter of the machine's memory].
    #[arg(long, value_name = "BYTES")]
    max_client_memory: Option<usize>,
    /// Allow --listen on a non-loopback address without a token.
    #[arg(long)]
    insecure: bool,
    /// Worker processes, each this whole single-threaded server on the same ports
    /// (SO_REUSEPORT), supervised by this process; every limit applies to each worker. With 1
    /// the server runs in this process.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least_one)]
    workers: usize,
    /// Internal: serve as a worker of a `--workers` supervisor, on inherited descriptors.
    #[arg(long = "worker-of", value_name = "FDS", hide = true)]
    worker_of: Option<String>,
    /// Internal: the program run as the disk helper [default: this binary]; `off` makes
    /// blocking disk calls on the loop, as does a program that cannot be started.
    #[arg(long = "disk-helper", value_name = "PROGRAM", hide = true)]
    disk_helper: Option<PathBuf>,
    /// Longest a command may run before it is stopped (SIGTERM, then SIGKILL).
    #[arg(long, value_name = "SECS", default_value_t = Secs(Limits::default().exec_timeout))]
    exec_timeout: Secs,
    /// Most output (stdout and stderr) one command may send before it is stopped.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().exec_output_cap)]
    exec_max_output: u64,
    /// Most commands running at once on the server; per worker.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_exec)]
    max_commands: usize,
    /// Most commands and file transfers (GET, PUT, LIST) running at once on one connection.
    #[arg(
        long,
        visible_alias = "max-streams-per-conn",
        value_name = "N",
        default_value_t = Limits::default().max_streams_per_connection
    )]
    max_commands_per_conn: usize,
}

#[derive(Args)]
struct EchoArgs {
    /// Server address (framed protocol), HOST:PORT.
    #[arg(long, value_name = "ADDR", default_value_t = Addr(DEFAULT_FRAMED_ADDR))]
    addr: Addr,
    /// Seconds to wait for the connection and for each reply.
    #[arg(long, value_name = "SECS", default_value_t = Secs(Duration::from_secs(5)))]
    timeout: Secs,
    /// File holding the server's token, for texts above the small pre-authentication frame
    /// limit [default: $MONOREACTOR_TOKEN].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Text to send; several words are joined with spaces.
    #[arg(required = true, value_name = "TEXT")]
    text: Vec<String>,
}

#[derive(Args)]
#[command(group(ArgGroup::new("command").required(true).args(["argv", "shell"])))]
struct ExecArgs {
    /// Server address (framed protocol), HOST:PORT.
    #[arg(long, value_name = "ADDR", default_value_t = Addr(DEFAULT_FRAMED_ADDR))]
    addr: Addr,
    /// File holding the server's token [default: $MONOREACTOR_TOKEN].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// Time limit for the command; the server applies the smaller of this and its own
    /// --exec-timeout [default: the server's].
    #[arg(long, value_name = "SECS")]
    timeout: Option<Secs>,
    /// Working directory, relative to the server's --root [default: the root].
    #[arg(long, value_name = "DIR", value_parser = parse_cwd)]
    cwd: Option<String>,
    /// Run STRING with `sh -c` on the server instead of PROG.
    #[arg(long, value_name = "STRING")]
    shell: Option<String>,
    /// Read no stdin: the command's stdin is /dev/null (like ssh -n).
    #[arg(short = 'n', long)]
    no_stdin: bool,
    /// The program and its arguments, best after `--`; no shell is involved.
    #[arg(value_name = "PROG", trailing_var_arg = true, value_parser = clap::value_parser!(OsString))]
    argv: Vec<OsString>,
}

fn parse_cwd(text: &str) -> Result<String, String> {
    if text.len() > MAX_CWD_LEN {
        return Err(format!(
            "{} bytes; at most {MAX_CWD_LEN} fit in a request",
            text.len()
        ));
    }
    Ok(text.to_string())
}

#[derive(Clone, Copy, ValueEnum)]
enum ProtocolArg {
    Framed,
    Raw,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, after_help = BENCH_HELP)]
struct BenchArgs {
    #[command(subcommand)]
    command: Option<BenchCommand>,
    /// The flag style from before the subcommands (`bench --conns 50 --size 64`, `--idle`,
    /// `--exec`, `--stream`, `--probe`), kept working but not shown.
    #[command(flatten)]
    legacy: LegacyBenchArgs,
}

const BENCH_HELP: &str = "\
Every load subcommand prints requests, errors by kind, throughput, MB/s and latency
min/avg/p50/p90/p99/p99.9/max (HDR histogram), and with --pid the server's CPU time per
request; --json prints the same as one JSON object. `echo --raw`, `udp` and `connect` speak
plain echo and measure any echo server (the C references in ../shared/bench-tools too).

Is the generator the bottleneck? Each report gives the generator's own CPU time per request
and how busy it was (share of a core): echo, udp and connect run on one thread, and a
generator near 100% of its core says so in the report. Compare with ../shared/bench-tools
loadgen at the same settings: equal rates mean the server, not the generator, sets the pace.

Examples:
  monoreactor bench echo -c 50 -s 64 -d 5 --pid $PID
  monoreactor bench echo --raw --addr 127.0.0.1:7007 -c 500 -P 16 -d 5
  monoreactor bench echo --rate 20000 -d 10          # open loop, latency from due times
  monoreactor bench udp -c 16 -n 100000
  monoreactor bench connect -c 50 -d 3 --rst
  monoreactor bench get -c 4 -s 1M -d 5
  monoreactor bench exec -c 2 -d 3 --token-file ~/.monoreactor-token";

#[derive(Subcommand)]
enum BenchCommand {
    /// TCP echo load: framed ECHO_REQUESTs (default, port 7878) or raw bytes (--raw, port
    /// 7007, any echo server).
    Echo(EchoBenchArgs),
    /// UDP echo load against any UDP echo server (default 127.0.0.1:7007).
    Udp(UdpBenchArgs),
    /// Short connections against any TCP echo server: connect, one echo, close, per request;
    /// reports connections per second (default 127.0.0.1:7007).
    Connect(ConnectBenchArgs),
    /// Remote exec round trips: each connection runs a command (`true`, or the one after
    /// `--`) after another; needs the server's token.
    Exec(ExecBenchArgs),
    /// File downloads: each connection GETs the same file of -s bytes (uploaded first,
    /// removed after), verified by BLAKE3, to nowhere.
    Get(FileBenchArgs),
    /// File uploads: each connection PUTs -s bytes to a path of its own, again and again
    /// (removed after).
    Put(FileBenchArgs),
    /// Opens -c connections that stay idle and reports server memory per connection (needs
    /// --pid).
    Idle(IdleBenchArgs),
    /// One client pings 64-byte framed echoes every millisecond: the latency another client
    /// sees while something heavy runs (with --pid, the server's peak memory too).
    Probe(ProbeBenchArgs),
}

/// Flags every load subcommand takes.
#[derive(Args)]
struct BenchCommon {
    /// Server address, HOST:PORT [default: per subcommand].
    #[arg(long, value_name = "ADDR")]
    addr: Option<Addr>,
    /// Connections [default: 50 for echo, udp and connect; 1 for exec; 4 for get and put].
    #[arg(short = 'c', long = "connections", value_name = "N", value_parser = at_least_one)]
    connections: Option<usize>,
    /// Seconds measured.
    #[arg(short = 'd', long = "duration", value_name = "SECS", default_value_t = Secs(Duration::from_secs(5)))]
    duration: Secs,
    /// Stop after this many requests instead of after -d.
    #[arg(short = 'n', long = "requests", value_name = "N", value_parser = at_least_one)]
    requests: Option<usize>,
    /// Seconds of load before measuring starts [default: none].
    #[arg(long, value_name = "SECS")]
    warmup: Option<Secs>,
    /// Server pid: report its CPU time per request.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

impl BenchCommon {
    fn stop(&self) -> bench::Stop {
        match self.requests {
            Some(count) => bench::Stop::Requests(count as u64),
            None => bench::Stop::After(self.duration.0),
        }
    }

    fn warmup(&self) -> Duration {
        self.warmup.map_or(Duration::ZERO, |secs| secs.0)
    }

    fn connections(&self, default: usize) -> usize {
        self.connections.unwrap_or(default)
    }
}

#[derive(Args)]
struct EchoBenchArgs {
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

#[derive(Args)]
struct UdpBenchArgs {
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

#[derive(Args)]
struct ConnectBenchArgs {
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

#[derive(Args)]
struct ExecBenchArgs {
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

#[derive(Args)]
struct FileBenchArgs {
    #[command(flatten)]
    common: BenchCommon,
    /// File size (K, M, G suffixes: powers of 1024).
    #[arg(short = 's', long = "size", value_name = "BYTES", default_value = "1M", value_parser = byte_count)]
    size: u64,
    /// File holding the server's token, if it has one [default: $MONOREACTOR_TOKEN].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
}

#[derive(Args)]
struct IdleBenchArgs {
    /// Server address, HOST:PORT [default: 127.0.0.1:7878, or 127.0.0.1:7007 with --raw].
    #[arg(long, value_name = "ADDR")]
    addr: Option<Addr>,
    /// Connections to open.
    #[arg(short = 'c', long = "connections", value_name = "N", default_value_t = 1000, value_parser = at_least_one)]
    connections: usize,
    /// Plain connections to a raw echo port (no HELLO).
    #[arg(long, conflicts_with = "redis")]
    raw: bool,
    /// Plain connections to redis-server (checked with a RESP PING first).
    #[arg(long)]
    redis: bool,
    /// Server pid, whose memory is measured.
    #[arg(long, value_name = "PID")]
    pid: u32,
}

#[derive(Args)]
struct ProbeBenchArgs {
    /// Server address (framed), HOST:PORT [default: 127.0.0.1:7878].
    #[arg(long, value_name = "ADDR")]
    addr: Option<Addr>,
    /// Seconds to probe.
    #[arg(short = 'd', long = "duration", value_name = "SECS", default_value_t = Secs(Duration::from_secs(5)))]
    duration: Secs,
    /// Server pid: report its peak memory.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
}

/// A byte count: `4096`, `64K`, `1M`, `1G` (powers of 1024).
fn byte_count(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => (&text[..at], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("`{text}`: the suffix must be K, M or G")),
    };
    match digits.parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(count) => count
            .checked_mul(1 << shift)
            .ok_or_else(|| format!("`{text}` is too large")),
        Err(_) => Err(format!(
            "`{text}` is not a byte count (such as 64, 16K, 1M)"
        )),
    }
}

#[derive(Args)]
struct LegacyBenchArgs {
    /// Server address, HOST:PORT [default: 127.0.0.1:7878 framed, 127.0.0.1:7007 raw].
    #[arg(long, value_name = "ADDR", hide = true)]
    addr: Option<Addr>,
    /// Protocol to speak.
    #[arg(long, value_enum, default_value = "framed", hide = true)]
    proto: ProtocolArg,
    /// Connections.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = at_least_one, hide = true)]
    conns: usize,
    /// Payload bytes per request.
    #[arg(long, value_name = "BYTES", default_value_t = 64, value_parser = at_least_one, hide = true)]
    size: usize,
    /// Requests in flight per connection (1 = ping-pong).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = at_least_one, hide = true)]
    depth: usize,
    /// Seconds measured.
    #[arg(long, value_name = "SECS", default_value_t = Secs(Duration::from_secs(5)), hide = true)]
    secs: Secs,
    /// Seconds of warm-up before measuring.
    #[arg(long, value_name = "SECS", default_value_t = Secs(Duration::from_millis(500)), hide = true)]
    warmup: Secs,
    /// Server pid: report its CPU time per request (load) or its memory (idle).
    #[arg(long, value_name = "PID", hide = true)]
    pid: Option<u32>,
    /// `bench idle`.
    #[arg(long, hide = true)]
    idle: bool,
    /// `bench probe`.
    #[arg(long, conflicts_with_all = ["idle", "exec", "stream"], hide = true)]
    probe: bool,
    /// `bench exec`.
    #[arg(long, conflicts_with_all = ["idle", "stream"], hide = true)]
    exec: bool,
    /// `bench exec --local`.
    #[arg(long, requires = "exec", hide = true)]
    local: bool,
    /// Instead of echo: one command writes BYTES of output to a client reading at --read-rate,
    /// while a 64-byte echo client pings; reports server memory and echo latency (needs --pid
    /// and a token; the server's --exec-max-output must allow BYTES).
    #[arg(long, value_name = "BYTES", conflicts_with = "idle", hide = true)]
    stream: Option<u64>,
    /// With --stream: how fast the client reads, bytes per second.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 100_000_000,
        requires = "stream",
        hide = true
    )]
    read_rate: u64,
    /// File holding the server's token, for --exec and --stream [default: $MONOREACTOR_TOKEN].
    #[arg(long, value_name = "PATH", hide = true)]
    token_file: Option<PathBuf>,
    /// With --exec: the command to run [default: true].
    #[arg(last = true, value_name = "PROG [ARGS]", hide = true)]
    command: Vec<String>,
}

/// A count that must be at least 1 (clap puts the flag's name before the error).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// A socket address, given as `IP:PORT` or `HOST:PORT` (`localhost:7878`), for every flag
/// that takes one ([`resolve_addr`] says why IPv4 comes first).
#[derive(Clone, Copy)]
struct Addr(SocketAddr);

impl FromStr for Addr {
    type Err = String;
    fn from_str(text: &str) -> Result<Addr, String> {
        resolve_addr(text).map(Addr)
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

/// Exit status of a client command when the client itself failed (as ssh's), among others
/// when its stdout cannot be written.
const CLIENT_FAILURE: u8 = 255;

/// Exit status of a usage error, as clap's.
const USAGE: u8 = 2;

/// Exit status of `serve`, `echo` and `bench` when they fail for a reason other than their
/// stdout (no server, the wrong protocol, a run cut short), as they always have.
const FAILED: u8 = 1;

/// How long `exec` waits to connect, for HELLO_OK and for STARTED. The command's own run time
/// is unbounded here (the server enforces its limit), so this covers only the handshake.
const EXEC_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(answer) => return parse_answer(&answer),
    };
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
        say(&format!("cannot set up logging: {error}"));
    }
    if !matches!(cli.command, Command::Serve(_)) {
        restore_sigpipe();
    }
    let result = match cli.command {
        Command::Serve(args) => serve(args).map_err(Failure::from),
        Command::Echo(args) => echo(args),
        Command::Exec(args) => return ExitCode::from(exec(args)),
        Command::Bench(args) => run_bench(args),
        Command::Get(args) => file_commands::get(args),
        Command::Put(args) => file_commands::put(args),
        Command::Ls(args) => file_commands::ls(args),
        Command::Stat(args) => file_commands::stat(args),
        Command::Rm(args) => file_commands::rm(args),
        Command::Mkdir(args) => file_commands::mkdir(args),
        Command::DiskHelper { fd } => monoreactor::sys::disk::helper_main(fd)
            .map_err(|error| Failure::from(format!("disk helper: {error}"))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if let Some(message) = failure.message {
                say(&message);
            }
            ExitCode::from(failure.status)
        }
    }
}

/// Gives SIGPIPE back its default action, for client commands only. Rust ignores it before
/// `main`, so a write to a closed pipe returns `EPIPE`, and `println!` panics on that. A Unix
/// filter should instead end quietly when its reader goes away (`monoreactor exec -- yes |
/// head -1`). The server keeps ignoring it: a client that disconnects must never kill it.
/// Sockets are unaffected either way: std sends with `MSG_NOSIGNAL`.
fn restore_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler, so nothing can run in signal
    // context; it is called before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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
        max_streams_per_connection: args.max_commands_per_conn,
        max_put: args.max_put,
        max_transfers: args.max_transfers,
        max_client_memory: args
            .max_client_memory
            .unwrap_or_else(monoreactor::limits::default_client_memory),
        ..Limits::default()
    };
    let (token, warning) = load_token(args.token_file.as_deref())
        .map_err(|error| token_error(args.token_file.as_deref(), error))?;
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    let (workers, worker_of) = (args.workers, args.worker_of);
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
        files: !args.no_files,
        insecure: args.insecure,
        handle_signals: true,
        // This very binary, even if the file was replaced since (as workers are started).
        disk_helper: match args.disk_helper {
            None => Some(PathBuf::from("/proc/self/exe")),
            Some(path) if path.as_os_str() == "off" => None,
            Some(path) => Some(path),
        },
    };
    if let Some(spec) = worker_of {
        return serve_worker(config, &spec);
    }
    if workers > 1 {
        return serve_workers(config, workers);
    }
    let server = Server::bind(config).map_err(describe_start_error)?;
    print_listening(server.addrs())?;
    server
        .run()
        .map(drop)
        .map_err(|error| format!("event loop failed: {error}"))
}

/// `serve --workers N` (N > 1): bind every socket N times with SO_REUSEPORT, print the
/// addresses once, and supervise N worker processes (`monoreactor::workers`).
fn serve_workers(config: Config, workers: usize) -> Result<(), String> {
    let (sets, addrs) =
        monoreactor::server::bind_shared(config, workers).map_err(describe_start_error)?;
    print_listening(addrs)?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    monoreactor::workers::supervise(sets, args).map_err(|error| format!("workers: {error}"))
}

/// One worker of `serve --workers N`: the ordinary server on the supervisor's sockets. It
/// prints nothing on stdout (the supervisor did) and says when it is ready.
fn serve_worker(config: Config, spec: &str) -> Result<(), String> {
    let fds = monoreactor::workers::WorkerFds::parse(spec)?;
    let (listeners, ready) = fds
        .take()
        .map_err(|error| format!("--worker-of {spec}: {error}"))?;
    let server = Server::from_listeners(config, listeners).map_err(describe_start_error)?;
    ready.announce();
    server
        .run()
        .map(drop)
        .map_err(|error| format!("event loop failed: {error}"))
}

/// One `listening KIND ADDR` line per socket on stdout, flushed.
fn print_listening(addrs: monoreactor::server::BoundAddrs) -> Result<(), String> {
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
        .map_err(|error| format!("stdout: {error}"))
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

/// A token that could not be loaded, named by where it came from: the file's errors carry
/// its path, the environment's carry the variable's name.
fn token_error(file: Option<&Path>, error: String) -> String {
    match file {
        Some(_) => format!("--token-file: {error}"),
        None => error,
    }
}

/// Where a client's token came from, for the hint after AUTH_FAILED or UNAUTHENTICATED.
enum TokenSource {
    File(PathBuf),
    Env,
    None,
}

/// The token for a client command: `--token-file`, else [`TOKEN_ENV`], else none.
fn client_token(file: Option<PathBuf>) -> Result<(Option<Token>, TokenSource), String> {
    let (token, warning) =
        load_token(file.as_deref()).map_err(|error| token_error(file.as_deref(), error))?;
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    let source = match (&token, file) {
        (None, _) => TokenSource::None,
        (Some(_), Some(path)) => TokenSource::File(path),
        (Some(_), None) => TokenSource::Env,
    };
    Ok((token, source))
}

/// A client error in one line, with a hint where the server's answer alone would leave a new
/// user guessing. `authenticated` is what HELLO_OK said, once known.
fn explain(error: &ClientError, source: &TokenSource, authenticated: Option<bool>) -> String {
    let hint = match (error.server_code(), source) {
        (Some(ErrorCode::AuthFailed), TokenSource::File(path)) => format!(
            "; check --token-file {} (it wins over {TOKEN_ENV})",
            path.display()
        ),
        (Some(ErrorCode::AuthFailed), _) => {
            format!("; check {TOKEN_ENV}, or pass --token-file PATH")
        }
        (Some(ErrorCode::Unauthenticated), TokenSource::None) => {
            format!("; no token was given: pass --token-file PATH or set {TOKEN_ENV}")
        }
        _ if authenticated == Some(false)
            && matches!(
                (error, error.server_code()),
                (ClientError::TooLarge { .. }, _) | (_, Some(ErrorCode::FrameTooLarge))
            ) =>
        {
            format!(
                " before authentication; with the server's token (--token-file PATH or {TOKEN_ENV}) it accepts more"
            )
        }
        _ => String::new(),
    };
    format!("{error}{hint}")
}

fn echo(args: EchoArgs) -> Result<(), Failure> {
    let text = args.text.join(" ");
    let (token, source) = client_token(args.token_file)?;
    let credentials = token.as_ref().map_or(&[][..], Token::as_bytes);
    let (mut client, ok) =
        Client::connect_with(&args.addr.to_string(), credentials, args.timeout.0)
            .map_err(|error| explain(&error, &source, None))?;
    let authenticated = Some(ok.flags.contains(SessionFlags::AUTHENTICATED));
    if text.len() > ok.max_payload_len as usize {
        let error = ClientError::TooLarge {
            len: text.len(),
            max: ok.max_payload_len,
        };
        return Err(explain(&error, &source, authenticated).into());
    }
    let reply = client
        .echo(text.as_bytes())
        .map_err(|error| explain(&error, &source, authenticated))?;
    print_stdout(&format!("{}\n", String::from_utf8_lossy(&reply)))
}

/// Why a command failed: its exit status and the line to print (none for a closed stdout).
struct Failure {
    status: u8,
    message: Option<String>,
}

impl Failure {
    /// The client itself failed: [`CLIENT_FAILURE`].
    fn own(message: String) -> Failure {
        Failure {
            status: CLIENT_FAILURE,
            message: Some(message),
        }
    }
}

/// `serve`, `echo` and `bench` report their failures as a line: [`FAILED`].
impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            status: FAILED,
            message: Some(message),
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::from(message.to_string())
    }
}

/// Writes all of `text` to stdout, flushed; a failure as [`output_failure`] says: never
/// `println!`'s panic.
fn print_stdout(text: &str) -> Result<(), Failure> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| output_failure(&error))
}

/// A write to stdout that failed. A closed stdout ends the command quietly (141, as SIGPIPE
/// would have); any other error (a full disk, `>/dev/full`) is a failure of the client,
/// [`CLIENT_FAILURE`], with one line.
fn output_failure(error: &io::Error) -> Failure {
    if error.kind() == ErrorKind::BrokenPipe {
        return Failure {
            status: 128 + libc::SIGPIPE as u8,
            message: None,
        };
    }
    Failure::own(format!("cannot write the output: {error}"))
}

/// Prints clap's answer to `--help`, `--version` or a usage error and returns its exit
/// status. clap's own `exit` ignores a failed write, so `--help >/dev/full` would succeed; a
/// help text that cannot be written is an [`output_failure`] like any other output. (A usage
/// error goes to stderr, where a failure has nowhere to be reported.)
fn parse_answer(answer: &clap::Error) -> ExitCode {
    match answer.print() {
        Err(error) if !answer.use_stderr() => {
            let failure = output_failure(&error);
            if let Some(message) = failure.message {
                say(&message);
            }
            ExitCode::from(failure.status)
        }
        _ => ExitCode::from(u8::try_from(answer.exit_code()).unwrap_or(USAGE)),
    }
}

fn exec(args: ExecArgs) -> u8 {
    match run_exec(args) {
        Ok(status) => status,
        Err(failure) => {
            if let Some(message) = failure.message {
                say(&message);
            }
            failure.status
        }
    }
}

fn run_exec(args: ExecArgs) -> Result<u8, Failure> {
    let (token, source) = client_token(args.token_file).map_err(Failure::own)?;
    let mut command = match args.shell {
        Some(script) => RemoteCommand::shell(&script),
        None => RemoteCommand::new(args.argv.into_iter().map(OsString::into_vec)),
    };
    command.cwd = args.cwd.unwrap_or_default();
    command.timeout = args.timeout.map(|secs| secs.0);
    command.stdin = !args.no_stdin && stdin_is_ours();

    let addr = args.addr.to_string();
    let client = ExecClient::connect(&addr, token.as_ref(), EXEC_CONNECT_TIMEOUT)
        .map_err(|error| Failure::own(explain(&error, &source, None)))?;
    let authenticated = Some(
        client
            .hello_ok()
            .flags
            .contains(SessionFlags::AUTHENTICATED),
    );
    let running = client.start(&command).map_err(|error| {
        // As a shell (and so ssh) reports them: 127 not found, 126 found but not runnable.
        let status = match error.server_code() {
            Some(ErrorCode::NotFound) => 127,
            Some(ErrorCode::PermissionDenied) => 126,
            _ => CLIENT_FAILURE,
        };
        Failure {
            status,
            message: Some(explain(&error, &source, authenticated)),
        }
    })?;
    log::debug!("remote pid {}", running.pid());
    // From here a Ctrl-C is the remote command's; before, it simply ends this client (and the
    // server, seeing the connection close, stops anything it started).
    let _signals = forward_signals(running.signaller(), running.pid());
    let input = command.stdin.then(io::stdin);
    match running.finish(input, &mut io::stdout(), &mut io::stderr()) {
        Ok(exit) => {
            if !matches!(exit.reason, EndReason::None | EndReason::ClientSignal) {
                // The status alone (143, 137) would not say that the server, not the command,
                // decided this.
                say(&format!("remote command {exit}"));
            }
            Ok(exit.shell_code())
        }
        // Our reader went away (`| head -1`): stop quietly, as the command itself would have.
        // SIGPIPE's default action usually ends us before this is reached.
        Err(error) if error.is_broken_pipe() => Err(Failure {
            status: 128 + libc::SIGPIPE as u8,
            message: None,
        }),
        Err(error) => Err(Failure::own(explain(&error, &source, authenticated))),
    }
}

/// Whether `exec` should read stdin: yes, as ssh does, even from a terminal (`exec -- sh`
/// then reads what is typed; Ctrl-D ends it), except in a background job on that terminal,
/// where reading would only stop us with SIGTTIN (what `ssh -n` exists for): there the
/// command gets /dev/null.
fn stdin_is_ours() -> bool {
    if !io::stdin().is_terminal() {
        return true;
    }
    // SAFETY: both calls only read process and terminal state; fd 0 is a terminal.
    let (foreground, ours) = unsafe { (libc::tcgetpgrp(0), libc::getpgrp()) };
    let background = foreground != -1 && foreground != ours;
    if background {
        log::debug!("stdin is the terminal of another job: not forwarding it");
    }
    !background
}

/// Forwards the first SIGINT or SIGTERM to the remote command as a SIGNAL request; a second
/// one gives up at once with 128+N and one line on stderr. SIGHUP (the terminal is gone) gives
/// up at once with 129. Giving up closes the connection with a reset, on which the server stops
/// the command (TERM to its group, KILL after a grace). The returned handle keeps the handlers
/// installed; `None` if they could not be (the signals then end this client by their default
/// action, and the server stops the command when the connection closes).
fn forward_signals(signaller: Signaller, pid: u32) -> Option<signal_hook::iterator::Handle> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(signals) => signals,
        Err(error) => {
            log::warn!("cannot catch SIGINT and SIGTERM to forward them: {error}");
            return None;
        }
    };
    let handle = signals.handle();
    let spawned = std::thread::Builder::new()
        .name("signals".to_string())
        .spawn(move || {
            let mut forwarded = false;
            for number in signals.forever() {
                let signal = match number {
                    SIGINT => Signal::Int,
                    SIGTERM => Signal::Term,
                    _ => Signal::Hup,
                };
                if !forwarded && signal != Signal::Hup {
                    forwarded = true;
                    log::debug!("forwarding {signal} to remote pid {pid}");
                    // A failed send means the connection is gone: the output side reports it.
                    let _ = signaller.send(signal);
                    continue;
                }
                signaller.abort_on_close();
                if signal != Signal::Hup {
                    say(&format!(
                        "{signal} again: gave up waiting for remote pid {pid}; the server stops it as the connection closes"
                    ));
                }
                // Exit here rather than in the output thread, which may be blocked writing to a
                // stdout nobody reads. The exit closes the connection (with a reset); closing
                // it first would let the output thread report the close as an error of its own.
                std::process::exit(128 + number);
            }
        });
    match spawned {
        Ok(_) => Some(handle),
        Err(error) => {
            log::warn!("cannot start the signal thread: {error}");
            handle.close();
            None
        }
    }
}

/// One `monoreactor: ...` line on stderr. A stderr that cannot be written (a terminal that
/// hung up) is ignored: there is nowhere else to report it, and `eprintln!` would panic.
fn say(message: &str) {
    let _ = writeln!(io::stderr(), "monoreactor: {message}");
}

/// Checks, with one connection, that `addr` speaks what the benchmark will speak, so a wrong
/// port gets a hint instead of a failure from the middle of the run.
fn probe_bench_target(addr: SocketAddr, protocol: BenchProtocol) -> Result<(), String> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    match protocol {
        BenchProtocol::Framed => Client::connect(&addr.to_string(), TIMEOUT)
            .map(drop)
            .map_err(|error| explain(&error, &TokenSource::None, None)),
        BenchProtocol::Raw => probe_raw_echo(addr, TIMEOUT),
        BenchProtocol::Redis => probe_redis(addr, TIMEOUT),
    }
}

/// The protocol a `bench echo` or `bench idle` speaks: framed unless told otherwise.
fn bench_protocol(raw: bool, redis: bool) -> BenchProtocol {
    match (raw, redis) {
        (true, _) => BenchProtocol::Raw,
        (_, true) => BenchProtocol::Redis,
        _ => BenchProtocol::Framed,
    }
}

/// Where a benchmark of `protocol` goes without `--addr`.
fn default_bench_addr(protocol: BenchProtocol) -> SocketAddr {
    match protocol {
        BenchProtocol::Framed => DEFAULT_FRAMED_ADDR,
        BenchProtocol::Raw => DEFAULT_ECHO_ADDR,
        BenchProtocol::Redis => SocketAddr::from(([127, 0, 0, 1], 6379)),
    }
}

/// Sends a RESP PING and expects redis's `+PONG`.
fn probe_redis(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    const PONG: &[u8] = b"+PONG\r\n";
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|error| {
        ClientError::Connect {
            addr: addr.to_string(),
            source: error,
        }
        .to_string()
    })?;
    let io_error = |error: io::Error| format!("{addr}: {error}");
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream
        .write_all(b"*1\r\n$4\r\nPING\r\n")
        .map_err(io_error)?;
    let mut answer = [0; PONG.len()];
    match stream.read_exact(&mut answer) {
        Ok(()) if answer == PONG => Ok(()),
        Ok(()) => Err(format!(
            "{addr} does not answer PING as redis does (got {:?})",
            String::from_utf8_lossy(&answer)
        )),
        Err(error) => Err(format!(
            "{addr} does not answer PING as redis does: {error}"
        )),
    }
}

/// Sends a few bytes and expects them back. A framed server answers them (they are not a valid
/// header) with an ERROR frame, which gives it away.
fn probe_raw_echo(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    const PROBE: &[u8] = b"monoreactor raw echo probe";
    let framed_hint = || {
        format!(
            "{addr} speaks the framed protocol, not raw echo: use `bench echo` without --raw, or the raw echo port ({} by default)",
            DEFAULT_ECHO_ADDR.port()
        )
    };
    let connect_error = |error: io::Error| {
        ClientError::Connect {
            addr: addr.to_string(),
            source: error,
        }
        .to_string()
    };
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(connect_error)?;
    let io_error = |error: io::Error| format!("{addr}: {error}");
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
    stream.write_all(PROBE).map_err(io_error)?;
    let mut answer = Vec::new();
    let mut chunk = [0; 1024];
    while answer.len() < PROBE.len() {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break;
            }
            Err(error) => return Err(io_error(error)),
        }
    }
    if answer.starts_with(PROBE) {
        return Ok(());
    }
    if let Ok(Some(frame)) = Decoder::new(u32::MAX).decode(&answer) {
        if frame.header.frame_type == FrameType::Error {
            if let Ok(error) = ErrorMessage::parse(frame.payload) {
                log::debug!("{addr} answered the raw probe with ERROR {error}");
            }
            return Err(framed_hint());
        }
    }
    if answer.is_empty() {
        return Err(format!(
            "{addr} did not echo a probe within {}s: is it a raw echo port ({} by default)?",
            timeout.as_secs_f64(),
            DEFAULT_ECHO_ADDR.port()
        ));
    }
    Err(format!(
        "{addr} did not echo a probe (it answered \"{}\"): is it a raw echo port ({} by default)?",
        answer[..answer.len().min(24)].escape_ascii(),
        DEFAULT_ECHO_ADDR.port()
    ))
}

/// The command `bench exec` runs: the one after `--`, or `true`.
fn bench_command(command: &[String]) -> Vec<String> {
    if command.is_empty() {
        vec!["true".to_string()]
    } else {
        command.to_vec()
    }
}

/// Sends one datagram and expects it back, so a wrong address gets a hint instead of a run
/// of losses.
fn probe_udp_echo(addr: SocketAddr) -> Result<(), String> {
    const PROBE: &[u8] = b"monoreactor udp echo probe";
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let io_error = |error: io::Error| format!("{addr}: {error}");
    let socket = std::net::UdpSocket::bind(local).map_err(io_error)?;
    socket.connect(addr).map_err(io_error)?;
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .map_err(io_error)?;
    let mut answer = [0; 64];
    for _ in 0..3 {
        socket.send(PROBE).map_err(io_error)?;
        match socket.recv(&mut answer) {
            Ok(n) if &answer[..n] == PROBE => return Ok(()),
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::ConnectionRefused => {
                return Err(format!(
                    "nothing listens on UDP {addr} (port unreachable): is it a UDP echo port ({} by default)?",
                    DEFAULT_ECHO_ADDR.port()
                ));
            }
            Err(_) => {}
        }
    }
    Err(format!(
        "{addr} did not echo a UDP probe: is it a UDP echo port ({} by default)?",
        DEFAULT_ECHO_ADDR.port()
    ))
}

/// Prints a load report (text or JSON); a run cut short is a failure after its partial
/// results.
fn print_report(report: &bench::Report, json: bool) -> Result<(), Failure> {
    if json {
        print_stdout(&format!("{}\n", report.to_json()))?;
    } else {
        print_stdout(&format!("{report}\n"))?;
    }
    match &report.ended_early {
        Some(reason) => Err(Failure::from(format!(
            "{} {}: {reason} (partial results above)",
            report.what, report.addr
        ))),
        None => Ok(()),
    }
}

fn run_bench(args: BenchArgs) -> Result<(), Failure> {
    let Some(command) = args.command else {
        return run_legacy_bench(args.legacy);
    };
    match command {
        BenchCommand::Echo(args) => {
            let protocol = bench_protocol(args.raw, args.redis);
            let default = default_bench_addr(protocol);
            let config = load_config(&args.common, default, protocol, args.size, args.depth);
            let config = LoadConfig {
                rate: args.rate,
                ..config
            };
            probe_bench_target(config.addr, protocol)?;
            let report = bench::echo::run_echo(&config)
                .map_err(|error| format!("load against {}: {error}", config.addr))?;
            print_report(&report, args.common.json)
        }
        BenchCommand::Udp(args) => {
            let config = load_config(
                &args.common,
                DEFAULT_ECHO_ADDR,
                BenchProtocol::Raw,
                args.size,
                args.depth,
            );
            let config = LoadConfig {
                rate: args.rate,
                ..config
            };
            probe_udp_echo(config.addr)?;
            let report = bench::udp::run_udp(&config)
                .map_err(|error| format!("UDP load against {}: {error}", config.addr))?;
            print_report(&report, args.common.json)
        }
        BenchCommand::Connect(args) => {
            let config = load_config(
                &args.common,
                DEFAULT_ECHO_ADDR,
                BenchProtocol::Raw,
                args.size,
                1,
            );
            probe_bench_target(config.addr, BenchProtocol::Raw)?;
            let options = bench::connect::ConnectOptions { reset: args.rst };
            let report = bench::connect::run_connect(&config, options)
                .map_err(|error| format!("connections to {}: {error}", config.addr))?;
            print_report(&report, args.common.json)
        }
        BenchCommand::Exec(args) => {
            let argv = bench_command(&args.command);
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
            let report = bench::blocking::run_exec(&config, &argv)
                .map_err(|error| format!("commands on {}: {error}", config.addr))?;
            print_report(&report, common.json)
        }
        BenchCommand::Get(args) => {
            let (token, _) = load_token(args.token_file.as_deref())?;
            let config = blocking_config(&args.common, token, 4, args.size)?;
            let report = bench::blocking::run_get(&config)
                .map_err(|error| format!("downloads from {}: {error}", config.addr))?;
            print_report(&report, args.common.json)
        }
        BenchCommand::Put(args) => {
            let (token, _) = load_token(args.token_file.as_deref())?;
            let config = blocking_config(&args.common, token, 4, args.size)?;
            let report = bench::blocking::run_put(&config)
                .map_err(|error| format!("uploads to {}: {error}", config.addr))?;
            print_report(&report, args.common.json)
        }
        BenchCommand::Idle(args) => {
            let protocol = bench_protocol(args.raw, args.redis);
            let addr = args
                .addr
                .map_or(default_bench_addr(protocol), |addr| addr.0);
            probe_bench_target(addr, protocol)?;
            bench_idle(addr, protocol, args.connections, args.pid)
        }
        BenchCommand::Probe(args) => {
            let addr = args.addr.map_or(DEFAULT_FRAMED_ADDR, |addr| addr.0);
            probe_bench_target(addr, BenchProtocol::Framed)?;
            bench_probe(addr, args.duration.0, args.pid)
        }
    }
}

/// The echo, UDP and connect settings from the common flags.
fn load_config(
    common: &BenchCommon,
    default_addr: SocketAddr,
    protocol: BenchProtocol,
    size: u64,
    depth: usize,
) -> LoadConfig {
    LoadConfig {
        addr: common.addr.map_or(default_addr, |addr| addr.0),
        protocol,
        connections: common.connections(50),
        size: usize::try_from(size).unwrap_or(usize::MAX),
        depth,
        stop: common.stop(),
        warmup: common.warmup(),
        rate: None,
        server_pid: common.pid,
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
    let addr = common.addr.map_or(DEFAULT_FRAMED_ADDR, |addr| addr.0);
    probe_bench_target(addr, BenchProtocol::Framed)?;
    Ok(bench::blocking::BlockingConfig {
        addr: addr.to_string(),
        token,
        connections: common.connections(default_connections),
        size,
        stop: common.stop(),
        warmup: common.warmup(),
        server_pid: common.pid,
    })
}

fn bench_idle(
    addr: SocketAddr,
    protocol: BenchProtocol,
    connections: usize,
    server_pid: u32,
) -> Result<(), Failure> {
    let config = IdleConfig {
        addr,
        protocol,
        connections,
        server_pid,
        settle: Duration::from_secs(1),
    };
    let report =
        bench::run_idle(&config).map_err(|error| format!("idle probe against {addr}: {error}"))?;
    print_stdout(&format!("{report}\n"))
}

fn bench_probe(
    addr: SocketAddr,
    duration: Duration,
    server_pid: Option<u32>,
) -> Result<(), Failure> {
    let config = bench::ProbeConfig {
        addr: addr.to_string(),
        duration,
        interval: Duration::from_millis(1),
        server_pid,
    };
    let report = bench::run_probe(&config).map_err(|error| format!("probe of {addr}: {error}"))?;
    print_stdout(&format!("{report}\n"))
}

/// `bench --conns 50 --size 64`, `bench --idle`, `bench --exec`, `bench --stream`,
/// `bench --probe`: the flag style from before the subcommands.
fn run_legacy_bench(args: LegacyBenchArgs) -> Result<(), Failure> {
    let protocol = match args.proto {
        ProtocolArg::Framed => BenchProtocol::Framed,
        ProtocolArg::Raw => BenchProtocol::Raw,
    };
    let addr = args
        .addr
        .map_or(default_bench_addr(protocol), |addr| addr.0);
    if args.exec && args.local {
        let config = bench::exec::SpawnConfig {
            parallel: args.conns,
            argv: bench_command(&args.command),
            warmup: args.warmup.0,
            duration: args.secs.0,
        };
        let report = bench::exec::run_local_spawn(&config)
            .map_err(|error| format!("local spawn loop: {error}"))?;
        return print_stdout(&format!("{report}\n"));
    }
    probe_bench_target(addr, protocol)?;
    if args.exec || args.stream.is_some() {
        let (token, _) = load_token(args.token_file.as_deref())?;
        let token = token.ok_or(
            "--exec and --stream need the server's token: pass --token-file PATH or set MONOREACTOR_TOKEN",
        )?;
        if let Some(bytes) = args.stream {
            let server_pid = args
                .pid
                .ok_or("--stream needs --pid, the server's process id")?;
            let config = bench::exec::StreamConfig {
                addr: addr.to_string(),
                token,
                bytes,
                read_rate: args.read_rate,
                server_pid,
            };
            let report = bench::exec::run_stream(&config)
                .map_err(|error| format!("stream from {addr}: {error}"))?;
            return print_stdout(&format!("{report}\n"));
        }
        let config = bench::blocking::BlockingConfig {
            addr: addr.to_string(),
            token: Some(token),
            connections: args.conns,
            size: 0,
            stop: bench::Stop::After(args.secs.0),
            warmup: args.warmup.0,
            server_pid: args.pid,
        };
        let report = bench::blocking::run_exec(&config, &bench_command(&args.command))
            .map_err(|error| format!("commands on {addr}: {error}"))?;
        return print_report(&report, false);
    }
    if args.probe {
        return bench_probe(addr, args.secs.0, args.pid);
    }
    if args.idle {
        let server_pid = args
            .pid
            .ok_or("--idle needs --pid, the server's process id")?;
        return bench_idle(addr, protocol, args.conns, server_pid);
    }
    let config = LoadConfig {
        addr,
        protocol,
        connections: args.conns,
        size: args.size,
        depth: args.depth,
        stop: bench::Stop::After(args.secs.0),
        warmup: args.warmup.0,
        rate: None,
        server_pid: args.pid,
    };
    let report =
        bench::echo::run_echo(&config).map_err(|error| format!("load against {addr}: {error}"))?;
    print_report(&report, false)
}

/// The file commands (`get`, `put`, `ls`, `stat`, `rm`, `mkdir`): the command line over
/// [`monoreactor::client::files`].
mod file_commands {
    use std::fs::File;
    use std::io::{self, BufWriter, IsTerminal};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use clap::Args;
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use monoreactor::client::ClientError;
    use monoreactor::client::files::{self, Destination, DownloadError, FileClient, OwnedDirEntry};
    use monoreactor::proto::files::{FileKind, Hash};
    use monoreactor::proto::{ErrorCode, SessionFlags};
    use monoreactor::server::DEFAULT_FRAMED_ADDR;

    use super::{
        Addr, CLIENT_FAILURE, Failure, TokenSource, USAGE, client_token, explain, print_stdout, say,
    };

    /// How long the file commands wait to connect and for HELLO_OK.
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    /// Exit status when the server refused or failed the request (an ERROR frame).
    const SERVER_REFUSED: u8 = 1;

    /// The `after_help` of a file command: its own text, then the conventions they share.
    macro_rules! file_help {
        ($text:literal) => {
            concat!(
                $text,
                "\n\n",
                "Remote paths are relative to the server's --root (`.` is the root) and \
                 `/`-separated;\nsymlinks on the server are never followed.\n\n",
                "Exit status: 0 on success; 1 if the server refused or failed the request (not \
                 found,\nalready exists, no space, ...); 2 for a usage error; 255 if this client \
                 failed (cannot\nconnect, the connection broke, a local file error, a stdout \
                 that cannot be written,\na download that failed verification). One line on \
                 stderr says why.\n\n",
                "The token comes from --token-file, else from $MONOREACTOR_TOKEN."
            )
        };
    }

    pub(super) const GET_HELP: &str = file_help!(
        "Examples:
  monoreactor get reports/q3.pdf               (writes ./q3.pdf)
  monoreactor get reports/q3.pdf ~/Downloads/  (writes ~/Downloads/q3.pdf)
  monoreactor get logs/big.log - | grep ERROR
  monoreactor get --continue images/disk.img   (after an interrupted download)

Every download is verified: the BLAKE3 of the bytes received (the same sum `b3sum` prints)
must equal the server's. A download to a file is atomic: the bytes go to a part file
`.NAME.monoreactor-part` beside the destination, which is renamed over it only once verified
and synced to disk (--no-fsync skips the sync). If the connection breaks (or the transfer
fails otherwise), the part file is kept, and the same command with --continue resumes from
where it stopped: the part's bytes are hashed, and only the rest is fetched. If verification
fails, the part file is removed and nothing is written. Without --continue, a stale part file
is overwritten.

The destination is checked before anything is fetched, as cp would: an existing directory
(or LOCAL ending in `/`, which must be one) receives REMOTE's name; otherwise LOCAL's
directory must exist. A symlink is followed: to a file, that file is replaced and the link
stays; a symlink to nothing is refused. A destination that is not a regular file (/dev/null,
a terminal, a FIFO, a disk) is never replaced: the bytes are written into it as they arrive,
as cp and curl -o do, so a failed verification is reported but cannot be taken back, and
--continue does not apply.

A progress bar (bytes, rate, ETA) is drawn on stderr when it is a terminal, never on a pipe."
    );

    pub(super) const PUT_HELP: &str = file_help!(
        "Examples:
  monoreactor put q3.pdf reports/q3.pdf
  monoreactor put q3.pdf reports/            (stores reports/q3.pdf)
  monoreactor put --continue disk.img images/disk.img   (after an interrupted upload)
  tar c src | monoreactor put - backups/src.tar

The file is hashed (BLAKE3) before it is sent, and the server stores it only if the bytes it
received hash to the same: the file appears under its name complete or not at all. An
interrupted upload stays on the server (invisible); the same command with --continue sends
only what the server lacks, provided the file is unchanged. `-` reads standard input, which
is first copied to an unnamed temporary file (in $TMPDIR, else /tmp) to learn its size and
hash; it cannot be resumed.

A progress bar (bytes, rate, ETA) is drawn on stderr when it is a terminal, never on a pipe."
    );

    pub(super) const LS_HELP: &str = file_help!(
        "Output: one line per entry, sorted by name: its kind (- file, d directory, l symlink,
? other), its size in bytes, its modification time (UTC, YYYY-MM-DD HH:MM) and its name
(control characters escaped). With --json: one JSON array of
{\"name\", \"kind\" (file, directory, symlink, other), \"size\", \"mtime_ns\"} objects, mtime_ns
being nanoseconds since the Unix epoch. A PATH that is not a directory is shown as one entry."
    );

    pub(super) const STAT_HELP: &str = file_help!(
        "Output: the path, its kind, size, modification time (UTC, to the nanosecond) and its
BLAKE3 if the server knows it; with --json one object
{\"path\", \"kind\", \"size\", \"mtime_ns\", \"blake3\" (hex, or null)}. A symlink is described
itself, never followed."
    );

    pub(super) const RM_HELP: &str = file_help!(
        "Removes files, symlinks (the link itself) and empty directories, one PATH after another;
a PATH the server refuses is reported and the others are still tried (exit status 1)."
    );

    pub(super) const MKDIR_HELP: &str = file_help!(
        "Creates each directory, one level at a time: its parent must exist. A PATH the server
refuses (exists, no parent) is reported and the others are still tried (exit status 1)."
    );

    /// Where the server is and how to authenticate: the flags every file command takes.
    #[derive(Args)]
    pub(super) struct ServerArgs {
        /// Server address (framed protocol), HOST:PORT.
        #[arg(long, value_name = "ADDR", default_value_t = Addr(DEFAULT_FRAMED_ADDR))]
        addr: Addr,
        /// File holding the server's token [default: $MONOREACTOR_TOKEN].
        #[arg(long, value_name = "PATH")]
        token_file: Option<PathBuf>,
    }

    #[derive(Args)]
    pub(super) struct GetArgs {
        #[command(flatten)]
        server: ServerArgs,
        /// Resume an interrupted download from its part file instead of starting over.
        #[arg(long = "continue")]
        resume: bool,
        /// Do not fsync the file before renaming it into place: faster (the download ends
        /// when the bytes are in the page cache, as with cp or curl -o), but a crash soon
        /// after may leave LOCAL empty or short. The rename stays atomic for readers.
        #[arg(long)]
        no_fsync: bool,
        /// The file on the server.
        #[arg(value_name = "REMOTE")]
        remote: String,
        /// Where to write it: a file, an existing directory (`DIR/` must be one), a device or
        /// FIFO (written through, never replaced), or `-` for stdout [default: REMOTE's last
        /// component, in the current directory].
        #[arg(value_name = "LOCAL|-")]
        local: Option<PathBuf>,
    }

    #[derive(Args)]
    pub(super) struct PutArgs {
        #[command(flatten)]
        server: ServerArgs,
        /// Resume an interrupted upload of the same file to the same REMOTE.
        #[arg(long = "continue")]
        resume: bool,
        /// The local file, or `-` for standard input.
        #[arg(value_name = "LOCAL|-")]
        local: PathBuf,
        /// The file on the server; an existing directory (or a path ending in `/`, or `.`) to
        /// store LOCAL's name in.
        #[arg(value_name = "REMOTE")]
        remote: String,
    }

    #[derive(Args)]
    pub(super) struct LsArgs {
        #[command(flatten)]
        server: ServerArgs,
        /// One JSON array instead of columns.
        #[arg(long)]
        json: bool,
        /// The directory on the server [default: the root].
        #[arg(value_name = "PATH")]
        dir: Option<String>,
    }

    #[derive(Args)]
    pub(super) struct StatArgs {
        #[command(flatten)]
        server: ServerArgs,
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
        /// The path on the server (`.` for the root).
        #[arg(value_name = "PATH")]
        path: String,
    }

    #[derive(Args)]
    pub(super) struct PathsArgs {
        #[command(flatten)]
        server: ServerArgs,
        /// Paths on the server.
        #[arg(value_name = "PATH", required = true)]
        paths: Vec<String>,
    }

    fn usage(message: String) -> Failure {
        Failure {
            status: USAGE,
            message: Some(message),
        }
    }

    /// A connection and what [`explain`] needs to add hints to its errors.
    struct Session {
        client: FileClient,
        source: TokenSource,
        authenticated: Option<bool>,
    }

    impl Session {
        fn open(server: ServerArgs) -> Result<Session, Failure> {
            let (token, source) = client_token(server.token_file).map_err(Failure::own)?;
            let client =
                FileClient::connect(&server.addr.to_string(), token.as_ref(), CONNECT_TIMEOUT)
                    .map_err(|error| failure(&error, &source, None))?;
            let authenticated = Some(
                client
                    .hello_ok()
                    .flags
                    .contains(SessionFlags::AUTHENTICATED),
            );
            Ok(Session {
                client,
                source,
                authenticated,
            })
        }

        fn fail(&self, error: &ClientError) -> Failure {
            failure(error, &self.source, self.authenticated)
        }
    }

    /// A failed request's exit status and line: 1 for the server's ERROR, 255 for our own
    /// failures, nothing at all for a closed stdout.
    fn failure(error: &ClientError, source: &TokenSource, authenticated: Option<bool>) -> Failure {
        if error.is_broken_pipe() {
            return Failure {
                status: 128 + libc::SIGPIPE as u8,
                message: None,
            };
        }
        Failure {
            status: if error.server_code().is_some() {
                SERVER_REFUSED
            } else {
                CLIENT_FAILURE
            },
            message: Some(explain(error, source, authenticated)),
        }
    }

    /// A progress bar on stderr when it is a terminal, drawn from the first report on (so a
    /// request that fails at once draws nothing); nothing at all otherwise.
    struct Bar {
        label: String,
        enabled: bool,
        bar: Option<ProgressBar>,
    }

    impl Bar {
        fn new(label: &str) -> Bar {
            Bar {
                label: label.to_string(),
                enabled: io::stderr().is_terminal(),
                bar: None,
            }
        }

        fn show(&mut self, done: u64, total: u64) {
            if !self.enabled {
                return;
            }
            if let Some(bar) = &self.bar {
                bar.set_position(done);
                return;
            }
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            match ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            ) {
                Ok(style) => bar.set_style(style),
                Err(error) => log::debug!("progress bar template: {error}"),
            }
            bar.set_message(self.label.clone());
            // A resumed transfer starts part-way: the rate and ETA count from here.
            bar.set_position(done);
            bar.reset_eta();
            self.bar = Some(bar);
        }

        fn clear(&mut self) {
            if let Some(bar) = self.bar.take() {
                bar.finish_and_clear();
            }
        }
    }

    impl Drop for Bar {
        fn drop(&mut self) {
            self.clear();
        }
    }

    pub(super) fn get(args: GetArgs) -> Result<(), Failure> {
        let remote = files::normalize_remote(&args.remote).map_err(usage)?;
        let name = files::base_name(&remote);
        if name.is_empty() {
            return Err(usage(format!(
                "`{}` is the server's root; get fetches one file",
                args.remote
            )));
        }
        let to_stdout = args.local.as_deref() == Some(Path::new("-"));
        if to_stdout && args.resume {
            return Err(usage(
                "--continue resumes a local file; it cannot resume standard output".to_string(),
            ));
        }
        // Before connecting: a destination that cannot work costs no transfer.
        let dest = if to_stdout {
            None
        } else {
            let dest = Destination::resolve(args.local.as_deref(), name)
                .map_err(|error| Failure::own(error.to_string()))?;
            if args.resume && matches!(dest, Destination::Through(_)) {
                return Err(usage(format!(
                    "--continue resumes a regular file, and {} is not one",
                    dest.path().display()
                )));
            }
            Some(dest)
        };
        let mut session = Session::open(args.server)?;
        let mut bar = Bar::new(name);
        let Some(dest) = dest else {
            // Smaller than a DATA piece, so pieces go straight to stdout, uncopied.
            let mut out = BufWriter::with_capacity(64 << 10, io::stdout().lock());
            let result = session.client.get(
                &remote,
                0,
                blake3::Hasher::new(),
                &mut out,
                &mut |done, total| bar.show(done, total),
            );
            bar.clear();
            return result.map(drop).map_err(|error| session.fail(&error));
        };
        let result = files::download(
            &mut session.client,
            &remote,
            &dest,
            args.resume,
            !args.no_fsync,
            &mut |done, total| bar.show(done, total),
        );
        bar.clear();
        let Err(DownloadError { error, kept }) = result else {
            return Ok(());
        };
        let mut failure = session.fail(&error);
        if let Some(message) = &mut failure.message {
            match kept {
                Some((part, len)) => message.push_str(&format!(
                    "; the {len} bytes received are kept in {}: the same command with --continue resumes",
                    part.display()
                )),
                None if matches!(error, ClientError::Verify(_)) => match dest {
                    Destination::File(_) => message
                        .push_str("; nothing was kept: run the command again to start over"),
                    Destination::Through(path) => message.push_str(&format!(
                        "; the bytes already written to {} are not the file",
                        path.display()
                    )),
                },
                None => {}
            }
        }
        Err(failure)
    }

    pub(super) fn put(args: PutArgs) -> Result<(), Failure> {
        let from_stdin = args.local == Path::new("-");
        if from_stdin && args.resume {
            return Err(usage(
                "--continue cannot resume standard input (it cannot be read again): drop --continue"
                    .to_string(),
            ));
        }
        // LOCAL's name, for a REMOTE that is a directory.
        let name = if from_stdin {
            None
        } else {
            args.local.file_name().and_then(|name| name.to_str())
        };
        let into = |dir: &str| match name {
            Some(name) if dir.is_empty() => files::normalize_remote(name).map_err(usage),
            Some(name) => files::normalize_remote(&format!("{dir}/{name}")).map_err(usage),
            None => Err(usage(format!(
                "`{}` is a directory: name the remote file (REMOTE/NAME)",
                args.remote
            ))),
        };
        let mut remote = files::normalize_remote(&args.remote).map_err(usage)?;
        let mut joined = remote.is_empty() || args.remote.ends_with('/');
        if joined {
            remote = into(&remote)?;
        }
        let label = files::base_name(&remote).to_string();
        let (mut source, size, hash) = if from_stdin {
            files::spool(
                &mut io::stdin().lock(),
                "standard input",
                &std::env::temp_dir(),
            )
            .map_err(|error| Failure::own(error.to_string()))?
        } else {
            open_local(&args.local, args.resume, &label)?
        };
        let mut session = Session::open(args.server)?;
        let (mut waited, mut pause) = (Duration::ZERO, Duration::from_millis(100));
        loop {
            let mut bar = Bar::new(files::base_name(&remote));
            let result = session.client.put(
                &remote,
                &mut source,
                size,
                hash,
                args.resume,
                &mut |done, total| bar.show(done, total),
            );
            bar.clear();
            match result {
                Ok(outcome) => {
                    log::debug!(
                        "stored {remote}: {size} bytes, {} were already there, BLAKE3 {}",
                        outcome.held,
                        files::hex(&outcome.hash)
                    );
                    return Ok(());
                }
                // REMOTE is an existing directory: store LOCAL's name in it, as cp does.
                Err(error)
                    if !joined
                        && name.is_some()
                        && error.server_code() == Some(ErrorCode::IsDirectory) =>
                {
                    remote = into(&remote)?;
                    joined = true;
                }
                // Another server process (a worker sharing the root) is receiving this very
                // upload — a connection of ours it has not seen close yet, say: wait for it to
                // let go, as long as the client waits for anything.
                Err(error)
                    if error.server_code() == Some(ErrorCode::UploadBusy)
                        && waited < files::IO_TIMEOUT =>
                {
                    if waited.is_zero() {
                        eprintln!(
                            "monoreactor: {remote}: the server is still receiving this upload elsewhere; waiting"
                        );
                    }
                    std::thread::sleep(pause);
                    waited += pause;
                    pause = (pause * 2).min(BUSY_PAUSE_MAX);
                }
                Err(error) => return Err(session.fail(&error)),
            }
        }
    }

    /// The longest pause between two tries of an upload the server says is busy.
    const BUSY_PAUSE_MAX: Duration = Duration::from_secs(2);

    /// Opens LOCAL for `put` and hashes it: a regular file as it is (with a progress bar for
    /// the hashing), anything else that can be read (a pipe, `<(...)`) spooled like stdin.
    fn open_local(path: &Path, resume: bool, label: &str) -> Result<(File, u64, Hash), Failure> {
        let cannot = |what: &str, error: io::Error| {
            Failure::own(format!("cannot {what} {}: {error}", path.display()))
        };
        let mut file = File::open(path).map_err(|error| cannot("open", error))?;
        let meta = file.metadata().map_err(|error| cannot("stat", error))?;
        if meta.is_dir() {
            return Err(usage(format!(
                "{} is a directory; put stores one file",
                path.display()
            )));
        }
        if !meta.is_file() {
            if resume {
                return Err(usage(format!(
                    "--continue needs a regular file, and {} is not one",
                    path.display()
                )));
            }
            return files::spool(
                &mut file,
                &path.display().to_string(),
                &std::env::temp_dir(),
            )
            .map_err(|error| Failure::own(error.to_string()));
        }
        let mut bar = Bar::new(&format!("hashing {label}"));
        let hasher = files::hash_reader(&mut file, &mut |done| bar.show(done, meta.len()))
            .map_err(|error| cannot("read", error))?;
        bar.clear();
        Ok((file, hasher.count(), *hasher.finalize().as_bytes()))
    }

    pub(super) fn ls(args: LsArgs) -> Result<(), Failure> {
        let dir = files::normalize_remote(args.dir.as_deref().unwrap_or("")).map_err(usage)?;
        let mut session = Session::open(args.server)?;
        let mut entries = match session.client.list(&dir) {
            Ok(entries) => entries,
            // `ls FILE` shows the file (and `ls LINK` the link), as ls does.
            Err(error)
                if !dir.is_empty()
                    && matches!(
                        error.server_code(),
                        Some(ErrorCode::NotDirectory | ErrorCode::OutsideRoot)
                    ) =>
            {
                match session.client.stat(&dir) {
                    Ok(info) if info.kind != FileKind::Directory => vec![OwnedDirEntry {
                        name: dir.clone(),
                        kind: info.kind,
                        size: info.size,
                        mtime_ns: info.mtime_ns,
                    }],
                    _ => return Err(session.fail(&error)),
                }
            }
            Err(error) => return Err(session.fail(&error)),
        };
        files::sort_entries(&mut entries);
        print_stdout(&if args.json {
            files::listing_json(&entries)
        } else {
            files::format_listing(&entries)
        })
    }

    pub(super) fn stat(args: StatArgs) -> Result<(), Failure> {
        let path = files::normalize_remote(&args.path).map_err(usage)?;
        let mut session = Session::open(args.server)?;
        let info = session
            .client
            .stat(&path)
            .map_err(|error| session.fail(&error))?;
        print_stdout(&if args.json {
            files::info_json(&path, &info)
        } else {
            files::format_info(&path, &info)
        })
    }

    pub(super) fn rm(args: PathsArgs) -> Result<(), Failure> {
        each_path(args, "rm", |client, path| client.delete(path))
    }

    pub(super) fn mkdir(args: PathsArgs) -> Result<(), Failure> {
        each_path(args, "mkdir", |client, path| client.mkdir(path))
    }

    /// One request per path: a path the server refuses is reported and the next one tried
    /// (exit status 1 at the end); any other failure stops at once.
    fn each_path(
        args: PathsArgs,
        command: &str,
        mut request: impl FnMut(&mut FileClient, &str) -> Result<(), ClientError>,
    ) -> Result<(), Failure> {
        let mut paths = Vec::with_capacity(args.paths.len());
        for text in &args.paths {
            let path = if command == "rm" {
                files::normalize_removable(text)
            } else {
                files::normalize_remote(text)
            }
            .map_err(usage)?;
            if path.is_empty() {
                return Err(usage(format!(
                    "`{text}` is the server's root; {command} needs a path beneath it"
                )));
            }
            paths.push(path);
        }
        let mut session = Session::open(args.server)?;
        let mut refused = false;
        for path in &paths {
            if let Err(error) = request(&mut session.client, path) {
                let failure = session.fail(&error);
                if failure.status != SERVER_REFUSED {
                    return Err(failure);
                }
                refused = true;
                if let Some(message) = failure.message {
                    say(&format!("{command} {path}: {message}"));
                }
            }
        }
        if refused {
            return Err(Failure {
                status: SERVER_REFUSED,
                message: None,
            });
        }
        Ok(())
    }
}
