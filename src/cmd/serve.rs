//! `monoreactor serve`: the flags become a [`Config`], and the server runs in this process, or
//! as `--workers N` processes supervised by this one. Prints one `listening KIND ADDR` line
//! per bound socket on stdout, which scripts read to learn the ports.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;
use monoreactor::{Access, load_token};
use monoreactor::{Cidr, DEFAULT_PROXIED_DRAIN_DELAY, ProxyMode, ProxyPolicy};
use monoreactor::{
    Config, DEFAULT_ECHO_ADDR, DEFAULT_FRAMED_ADDR, DEFAULT_ROOT, Listener, Server, StartError,
};
use monoreactor::{Limits, Reload, TlsSettings};

use crate::args::{Addr, Endpoint, Secs, at_least_one};
use crate::failure::Failure;
use crate::token::token_error;

/// The flags of `serve`: addresses, limits, what is served.
#[derive(Args)]
pub struct ServeArgs {
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
    /// After SIGTERM, seconds to keep accepting and serving while load balancers' health
    /// checks (PROXY v2 LOCAL, v1 UNKNOWN) fail, so the balancer stops sending clients before
    /// the listeners close; then the shutdown runs. A second SIGTERM ends it early; SIGINT
    /// skips it. [default: 1 with --proxy-protocol allow|require (covers HAProxy's `inter 200
    /// fall 2`), 0 with it off, where no balancer's check can be told apart]
    #[arg(long, value_name = "SECS", value_parser = drain_secs)]
    drain_delay: Option<std::time::Duration>,
    /// PROXY protocol (the v1 or v2 header a load balancer such as HAProxy sends first) on the
    /// framed and the raw TCP echo listeners, both: `off`; `allow` (a --proxy-from peer may
    /// start with a header); `require` (a --proxy-from peer must). A header from any other peer
    /// is refused. With --tls-cert the header comes before the TLS handshake. The address in
    /// the header is the client's for logs and for the loopback check.
    #[arg(long, value_name = "off|allow|require", default_value_t = ProxyMode::Off)]
    proxy_protocol: ProxyMode,
    /// Peers allowed to send a PROXY header (the balancers), as ADDR/BITS or ADDR, separated by
    /// commas [default: loopback only, 127.0.0.0/8 and ::1].
    #[arg(long, value_name = "CIDR,...", requires = "proxy_protocol")]
    proxy_from: Option<String>,
    /// Run commands for authenticated clients (needs a token). With --access, this is the
    /// token's right only: each access-file credential's own `exec` decides for it, and
    /// commands run in the root (its `root` for a scoped credential) as without.
    #[arg(long)]
    exec: bool,
    /// TOML file of credentials (each a token's BLAKE3 or a client certificate's key, with
    /// its subtree of the root, files none/read/write, which commands, max_commands, quota;
    /// see `monoreactor access add`). Read whole at start: any error stops the server.
    #[arg(long, value_name = "PATH")]
    access: Option<PathBuf>,
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
    /// Allow --listen on a non-loopback address without a token, or without TLS.
    #[arg(long)]
    insecure: bool,
    /// The TLS flags, boxed: `Command`'s variants stay close in size.
    #[command(flatten)]
    tls: Box<TlsArgs>,
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

/// `--tls-cert`, `--tls-key`, `--tls-client-ca`.
#[derive(Args)]
struct TlsArgs {
    /// Speak TLS 1.3 on the framed listener with this certificate chain (PEM, leaf first);
    /// needs --tls-key. The raw echo and UDP stay plaintext.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Ask TLS clients for a certificate and verify it against these CA certificates (PEM); a
    /// client without one may still connect (and authenticate with the token).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

/// Runs `serve` until SIGINT or SIGTERM; a failure to start is one line per problem.
pub fn run(args: ServeArgs) -> Result<(), Failure> {
    serve(args).map_err(Failure::from)
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let proxy = ProxyPolicy {
        mode: args.proxy_protocol,
        from: match &args.proxy_from {
            Some(list) => {
                Cidr::parse_list(list).map_err(|error| format!("--proxy-from {error}"))?
            }
            None => Vec::new(),
        },
    };
    let limits = Limits {
        max_connections: args.max_conns,
        idle_timeout: args.idle_timeout.0,
        hello_timeout: args.hello_timeout.0,
        frame_timeout: args.frame_timeout.0,
        max_frame_len: args.max_frame,
        shutdown_grace: args.shutdown_grace.0,
        drain_delay: args.drain_delay.unwrap_or(if proxy.is_on() {
            DEFAULT_PROXIED_DRAIN_DELAY
        } else {
            std::time::Duration::ZERO
        }),
        exec_timeout: args.exec_timeout.0,
        exec_output_cap: args.exec_max_output,
        max_exec: args.max_commands,
        max_streams_per_connection: args.max_commands_per_conn,
        max_put: args.max_put,
        max_transfers: args.max_transfers,
        max_client_memory: args
            .max_client_memory
            .unwrap_or_else(monoreactor::default_client_memory),
        ..Limits::default()
    };
    let (token, warning) = load_token(args.token_file.as_deref())
        .map_err(|error| token_error(args.token_file.as_deref(), error))?;
    // Loaded before anything is bound or created, so a bad file stops `serve` with one line
    // and nothing left behind.
    let TlsArgs {
        tls_cert,
        tls_key,
        tls_client_ca,
    } = *args.tls;
    let tls_settings = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(TlsSettings {
            cert,
            key,
            client_ca: tls_client_ca,
        }),
        _ => None,
    };
    let tls = tls_settings.as_ref().map(TlsSettings::load).transpose()?;
    if let Some(warning) = warning {
        log::warn!("{warning}");
    }
    let (workers, worker_of) = (args.workers, args.worker_of);
    let config = Config {
        framed: args.listen.0,
        echo_tcp: args.echo_tcp.0,
        echo_udp: args.echo_udp.0,
        limits,
        access: match &args.access {
            Some(path) => Access::load(path)?.with_token(token, args.exec),
            None => Access::ECHO_ONLY.with_token(token, args.exec),
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
        tls,
        // SIGHUP re-reads the same files.
        reload: Reload {
            access: args.access.clone(),
            tls: tls_settings,
        },
        proxy,
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
    // The supervisor installs its handlers only after starting the workers, and scripts act
    // on the `listening` lines: a SIGHUP in between must not kill it (the default action).
    // Ignored until then; the workers inherit that until their own handlers exist, and what
    // they run gets the default back at exec (a handler, unlike SIG_IGN, does not survive it).
    // SAFETY: setting a disposition to SIG_IGN installs no handler and touches no memory.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let (sets, addrs) = monoreactor::bind_shared(config, workers).map_err(describe_start_error)?;
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
fn print_listening(addrs: monoreactor::BoundAddrs) -> Result<(), String> {
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

/// `--drain-delay`: seconds, 0 allowed (no drain).
fn drain_secs(text: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.0..=1e9).contains(&seconds) {
        return Err(format!("`{text}`: seconds must be 0 to 1e9"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}
