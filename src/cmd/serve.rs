//! `monoreactor serve`: the flags (and `--config FILE`, whose keys are the same flags) become
//! a [`Config`], and the server runs in this process, or as `--workers N` processes
//! supervised by this one. Prints one `listening KIND ADDR` line per bound socket on stdout,
//! which scripts read to learn the ports.
//!
//! The same [`settings`] turn flags into a configuration at start, for `--check-config`, and
//! at each SIGHUP ([`reloader`]), where the whole command line is parsed again over the
//! file as it is now.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use monoreactor::workers::MAX_WORKERS;
use monoreactor::{Access, load_token};
use monoreactor::{Cidr, DEFAULT_PROXIED_DRAIN_DELAY, ProxyMode, ProxyPolicy};
use monoreactor::{
    Config, DEFAULT_ECHO_ADDR, DEFAULT_FRAMED_ADDR, DEFAULT_ROOT, Listener, Listeners, Server,
    StartError, SystemdNotify,
};
use monoreactor::{
    Fresh, Limits, MAX_CONNECTIONS, MAX_FRAME_LEN, MAX_STREAMS_PER_CONNECTION, MIN_FRAME_LEN,
    Reload, Reloader, TlsSettings,
};

use crate::args::{
    Addr, AddrError, Endpoint, Secs, at_least_one, byte_size, byte_size_u32, byte_size_usize,
    count_in, duration, host_and_port,
};
use crate::config::FileArgs;
use crate::failure::{Failure, print_stdout};
use crate::logger::{self, LogFilter, LogSources};
use crate::token::token_error;

/// The flags of `serve`: addresses, limits, what is served. Each one that is not hidden is
/// also a key of the `--config` file, under its long name (see `crate::config`): a flag added
/// here is configurable from the file with nothing else to do. A later occurrence of a flag
/// overrides an earlier one (`args_override_self`), which is how the command line overrides
/// the file placed before it.
#[derive(Args)]
#[command(args_override_self = true)]
pub struct ServeArgs {
    /// Read settings from this TOML file: each key is one of these flags without its `--`
    /// (`max-conns = 100`, `exec = true`, `listen = "0.0.0.0:7878"`); flags given here
    /// override it. SIGHUP reads it again (see docs/monoreactor.toml for every key).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Check the configuration (the file, the flags, the access file, the TLS files, the
    /// token) and exit: 0 and one line if it is good, else the errors, one per line. Binds
    /// nothing and creates nothing.
    #[arg(long)]
    check_config: bool,
    /// Log levels in RUST_LOG's syntax: `info`, or `warn,monoreactor::conn=debug`. Wins over
    /// -v/-q, which win over RUST_LOG, which wins over the file's `log-level` [default: info].
    #[arg(long, value_name = "LEVELS")]
    log_level: Option<LogFilter>,
    /// Framed-protocol listen address: HOST:PORT, or HOST alone for port 7878, as the
    /// clients' --addr (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value_t = Addr(DEFAULT_FRAMED_ADDR),
          value_parser = |text: &str| listen_on(text, DEFAULT_FRAMED_ADDR.port()))]
    listen: Addr,
    /// Raw TCP echo listen address (HOST alone: port 7007), or `off`.
    #[arg(long, value_name = "ADDR|off", default_value_t = Endpoint(Some(DEFAULT_ECHO_ADDR)),
          value_parser = echo_on)]
    echo_tcp: Endpoint,
    /// UDP echo address (HOST alone: port 7007), or `off`.
    #[arg(long, value_name = "ADDR|off", default_value_t = Endpoint(Some(DEFAULT_ECHO_ADDR)),
          value_parser = echo_on)]
    echo_udp: Endpoint,
    /// Most connections open at once (lowered to fit the open-file limit); per worker.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections,
          value_parser = connection_count)]
    max_conns: usize,
    /// Close a connection after this long without activity.
    #[arg(long, value_name = "DURATION", default_value_t = Secs(Limits::default().idle_timeout))]
    idle_timeout: Secs,
    /// Close a framed connection that has not sent HELLO this long after connecting.
    #[arg(long, value_name = "DURATION", default_value_t = Secs(Limits::default().hello_timeout))]
    hello_timeout: Secs,
    /// Close a connection whose frame has not completed this long after it began.
    #[arg(long, value_name = "DURATION", default_value_t = Secs(Limits::default().frame_timeout))]
    frame_timeout: Secs,
    /// Largest frame payload accepted, in bytes.
    #[arg(long, value_name = "SIZE", default_value_t = Limits::default().max_frame_len, value_parser = frame_len)]
    max_frame: u32,
    /// After SIGINT/SIGTERM, how long pending output may take before everything is closed.
    #[arg(long, value_name = "DURATION", default_value_t = Secs(Limits::default().shutdown_grace))]
    shutdown_grace: Secs,
    /// After SIGTERM, seconds to keep accepting and serving while load balancers' health
    /// checks (PROXY v2 LOCAL, v1 UNKNOWN) fail, so the balancer stops sending clients before
    /// the listeners close; then the shutdown runs. A second SIGTERM ends it early; SIGINT
    /// skips it. [default: 1 with --proxy-protocol allow|require (covers HAProxy's `inter 200
    /// fall 2`), 0 with it off, where no balancer's check can be told apart]
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    drain_delay: Option<std::time::Duration>,
    /// PROXY protocol (the v1 or v2 header a load balancer such as HAProxy sends first) on the
    /// framed and the raw TCP echo listeners, both: `off`; `allow` (a --proxy-from peer may
    /// start with a header); `require` (a --proxy-from peer must). A header from any other peer
    /// is refused. With --tls-cert the header comes before the TLS handshake. The address in
    /// the header is the client's for logs and for the loopback check. Needs a token (or
    /// --insecure), even on 127.0.0.1: the balancer relays clients from other hosts.
    #[arg(long, value_name = "off|allow|require", default_value_t = ProxyMode::Off)]
    proxy_protocol: ProxyMode,
    /// Peers allowed to send a PROXY header (the balancers), as ADDR/BITS or ADDR, separated by
    /// commas [default: loopback only, 127.0.0.0/8 and ::1].
    #[arg(long, value_name = "CIDR,...", requires = "proxy_protocol", value_parser = cidr_list)]
    proxy_from: Option<String>,
    /// Run commands for authenticated clients (needs a token). With --access, this is the
    /// token's right only: each access-file credential's own `exec` decides for it, and
    /// commands run in the root (its `root` for a scoped credential) as without.
    #[arg(long)]
    exec: bool,
    /// TOML file of credentials (each a token's BLAKE3 or a client certificate's key, with
    /// its subtree of the root, files none/read/write, which commands, max_commands, quota;
    /// see `monoreactor access add`). Read whole at start (any error stops the server) and
    /// at each SIGHUP (any error keeps the one in use).
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
    #[arg(long, value_name = "SIZE", default_value_t = Limits::default().max_put, value_parser = byte_size)]
    max_put: u64,
    /// Most file transfers (GET, PUT, LIST) running at once on the server; per worker.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_transfers,
          value_parser = |text: &str| count_in(text, 1, usize::MAX))]
    max_transfers: usize,
    /// Bytes of buffer all connections together may hold; past it, those holding the most
    /// are closed with LIMIT_REACHED [default: a quarter of the machine's memory].
    #[arg(long, value_name = "SIZE", value_parser = byte_size_usize)]
    max_client_memory: Option<usize>,
    /// Allow --listen on a non-loopback address without a token, or without TLS (and
    /// --metrics on a non-loopback address).
    #[arg(long)]
    insecure: bool,
    /// Serve Prometheus metrics over HTTP at ADDR (`GET /metrics`); off unless given, and
    /// loopback only unless --insecure. With --workers N, worker metrics are on the N ports
    /// from ADDR's on, one per worker (scrape them all).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<Addr>,
    /// The TLS flags, boxed: `Command`'s variants stay close in size.
    #[command(flatten)]
    tls: Box<TlsArgs>,
    /// Worker processes, each this whole single-threaded server on the same ports
    /// (SO_REUSEPORT), supervised by this process; every limit applies to each worker. With 1
    /// the server runs in this process.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = worker_count)]
    workers: usize,
    /// Internal: serve as a worker of a `--workers` supervisor, on inherited descriptors.
    #[arg(long = "worker-of", value_name = "FDS", hide = true)]
    worker_of: Option<String>,
    /// Internal: the program run as the disk helper [default: this binary]; `off` makes
    /// blocking disk calls on the loop, as does a program that cannot be started.
    #[arg(long = "disk-helper", value_name = "PROGRAM", hide = true)]
    disk_helper: Option<PathBuf>,
    /// Longest a command may run before it is stopped (SIGTERM, then SIGKILL).
    #[arg(long, value_name = "DURATION", default_value_t = Secs(Limits::default().exec_timeout))]
    exec_timeout: Secs,
    /// Most output (stdout and stderr) one command may send before it is stopped.
    #[arg(long, value_name = "SIZE", default_value_t = Limits::default().exec_output_cap, value_parser = byte_size)]
    exec_max_output: u64,
    /// The program `exec -t` runs when given none: a name looked up in the commands' fixed
    /// PATH, or a path. A credential's exec allowlist must admit it.
    #[arg(long, value_name = "PROG", default_value_t = Limits::default().exec_shell)]
    exec_shell: String,
    /// Most commands running at once on the server; per worker.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_exec,
          value_parser = |text: &str| count_in(text, 1, usize::MAX))]
    max_commands: usize,
    /// Most commands and file transfers (GET, PUT, LIST) running at once on one connection.
    #[arg(
        long,
        visible_alias = "max-streams-per-conn",
        value_name = "N",
        default_value_t = Limits::default().max_streams_per_connection,
        value_parser = |text: &str| count_in(text, 1, MAX_STREAMS_PER_CONNECTION)
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

impl ServeArgs {
    /// `--config`.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config.clone()
    }

    /// Whether this process is a worker of a `--workers N` supervisor (`--worker-of`).
    pub fn is_worker(&self) -> bool {
        self.worker_of.is_some()
    }

    /// `--log-level` (from the command line, or the file once it is read in).
    pub fn log_level_flag(&self) -> Option<LogFilter> {
        self.log_level.clone()
    }
}

/// What `main` hands `serve` besides its flags.
pub struct Context {
    /// With `--config`: parses the whole command line again over the file as it is now (the
    /// flags, and the file's keys as read); SIGHUP calls it.
    pub reparse: Option<Reparse>,
    /// The file's keys as they were at start (none without `--config`).
    pub file: FileArgs,
    /// The keys given on the command line itself: the file cannot change those.
    pub on_command_line: BTreeSet<String>,
    /// Where the log levels come from.
    pub log: LogSources,
}

/// Parses the command line again over the configuration file; the error is one line.
pub type Reparse = Arc<dyn Fn() -> Result<(ServeArgs, FileArgs), String> + Send + Sync>;

/// The keys a running server takes from a reload. The limits among them are those
/// `Limits::take_live` takes; `access`, `tls-cert` and `tls-key` only while they stay given
/// (turning the access file or TLS on or off needs a restart). Every other key that changed is
/// logged as needing a restart, so a flag added to `ServeArgs` is, until it is added here.
const LIVE_KEYS: [&str; 16] = [
    "idle-timeout",
    "hello-timeout",
    "frame-timeout",
    "shutdown-grace",
    "drain-delay",
    "exec-timeout",
    "exec-max-output",
    "max-commands-per-conn",
    "max-put",
    "max-transfers",
    "max-client-memory",
    "access",
    "tls-cert",
    "tls-key",
    "tls-client-ca",
    "log-level",
];

/// Keys whose presence cannot change live, though their value can.
const PRESENCE_NEEDS_RESTART: [&str; 3] = ["access", "tls-cert", "tls-key"];

/// A listen address as a client's is read ([`host_and_port`]): HOST alone takes
/// `default_port`, so `serve --listen 0.0.0.0` listens where `echo --addr HOST` connects.
fn listen_on(text: &str, default_port: u16) -> Result<Addr, AddrError> {
    host_and_port(text, default_port).map(|(_, addr)| Addr(addr))
}

/// `--echo-tcp`, `--echo-udp`: [`listen_on`] with the echo port, or `off`.
fn echo_on(text: &str) -> Result<Endpoint, AddrError> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Endpoint(None));
    }
    listen_on(text, DEFAULT_ECHO_ADDR.port()).map(|addr| Endpoint(Some(addr.0)))
}

/// `--max-frame`: a size from [`MIN_FRAME_LEN`] to [`MAX_FRAME_LEN`], a usage error
/// otherwise, said with units (not as the range `64..=67108864`).
fn frame_len(text: &str) -> Result<u32, String> {
    match byte_size_u32(text)? {
        len if len < MIN_FRAME_LEN => Err(format!("at least {MIN_FRAME_LEN} bytes")),
        len if len > MAX_FRAME_LEN => Err(format!(
            "at most {}M ({MAX_FRAME_LEN} bytes)",
            MAX_FRAME_LEN >> 20
        )),
        len => Ok(len),
    }
}

/// `--workers`: 1 to [`MAX_WORKERS`], a usage error otherwise (as `--workers 0` is), with
/// why there is a limit. (That the descriptors allow that many is the server's to say when it
/// starts: it depends on the machine, not on the flag.)
fn worker_count(text: &str) -> Result<usize, String> {
    match at_least_one(text)? {
        count if count > MAX_WORKERS => {
            let cores = std::thread::available_parallelism().map_or(1, usize::from);
            Err(format!(
                "at most {MAX_WORKERS}: each worker is a whole server process with its own copy of every listening socket, and workers beyond the cores ({cores} here) add no throughput"
            ))
        }
        count => Ok(count),
    }
}

/// `--max-conns`: 1 to [`MAX_CONNECTIONS`], a usage error otherwise (as `--workers 0` is),
/// not a server that "cannot start".
fn connection_count(text: &str) -> Result<usize, String> {
    match at_least_one(text)? {
        count if count > MAX_CONNECTIONS => Err(format!("at most {MAX_CONNECTIONS}")),
        count => Ok(count),
    }
}

/// Runs `serve` until SIGINT or SIGTERM (or checks the configuration, with
/// `--check-config`); a failure to start is one line per problem.
pub fn run(args: ServeArgs, context: Context) -> Result<(), Failure> {
    let check = args.check_config;
    let origin = args.config.clone();
    let mut settings =
        settings(args).map_err(|errors| Failure::from(errors.join("\nmonoreactor: ")))?;
    if let Some(warning) = settings.token_warning.take() {
        log::warn!("{warning}");
    }
    if check {
        settings
            .config
            .check()
            .map_err(|error| Failure::from(error.to_string()))?;
        return print_stdout(&match origin {
            Some(path) => format!("{}: configuration OK\n", path.display()),
            None => "configuration OK\n".to_string(),
        });
    }
    if settings.workers > 1 && settings.worker_of.is_none() && context.reparse.is_some() {
        hand_to_workers(&context.file.text);
    }
    settings.config.reload = match context.reparse.clone() {
        Some(reparse) => Reload {
            reloader: Some(reloader(reparse, &settings, context)),
            ..Reload::default()
        },
        // SIGHUP re-reads the same files.
        None => Reload {
            access: settings.access_path.clone(),
            tls: settings.tls_settings.clone(),
            reloader: None,
        },
    };
    serve(settings).map_err(Failure::from)
}

/// What the flags amount to: the server's configuration and what is decided around it.
struct Settings {
    config: Config,
    workers: usize,
    worker_of: Option<String>,
    /// `--access`, and the file as read (before the server's token is added to it).
    access_path: Option<PathBuf>,
    access_file: Option<Access>,
    tls_settings: Option<TlsSettings>,
    /// A warning about the token file, for the log.
    token_warning: Option<String>,
}

/// Reads everything the flags name (the token, the TLS files, the access file) and builds
/// the configuration; every error, one line each. Changes nothing: binding, creating the
/// root and raising limits come later.
fn settings(args: ServeArgs) -> Result<Settings, Vec<String>> {
    let proxy = ProxyPolicy {
        mode: args.proxy_protocol,
        from: match &args.proxy_from {
            Some(list) => {
                Cidr::parse_list(list).map_err(|error| vec![format!("--proxy-from {error}")])?
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
        exec_shell: args.exec_shell.clone(),
        max_exec: args.max_commands,
        max_streams_per_connection: args.max_commands_per_conn,
        max_put: args.max_put,
        max_transfers: args.max_transfers,
        max_client_memory: args
            .max_client_memory
            .unwrap_or_else(monoreactor::default_client_memory),
        ..Limits::default()
    };
    let mut errors = Vec::new();
    if let Some(problem) = args
        .metrics
        .and_then(|addr| worker_metrics_problem(addr.0, args.workers))
    {
        errors.push(problem);
    }
    let (token, token_warning) = load_token(args.token_file.as_deref())
        .map_err(|error| errors.push(token_error(args.token_file.as_deref(), error)))
        .unwrap_or_default();
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
    let tls = tls_settings
        .as_ref()
        .map(TlsSettings::load)
        .transpose()
        .map_err(|error| errors.push(error))
        .unwrap_or_default();
    let access_file = args
        .access
        .as_deref()
        .map(Access::load)
        .transpose()
        .map_err(|error| errors.push(error))
        .unwrap_or_default();
    if !errors.is_empty() {
        return Err(errors);
    }
    let access = access_file
        .clone()
        .unwrap_or(Access::ECHO_ONLY)
        .with_token(token, args.exec);
    let config = Config {
        framed: args.listen.0,
        echo_tcp: args.echo_tcp.0,
        echo_udp: args.echo_udp.0,
        limits,
        access,
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
        reload: Reload::default(),
        // systemd's Type=notify, when it started us (a worker has no NOTIFY_SOCKET).
        lifecycle: SystemdNotify::from_env(),
        metrics: args.metrics.map(|addr| addr.0),
        proxy,
    };
    Ok(Settings {
        config,
        workers: args.workers,
        worker_of: args.worker_of,
        access_path: args.access,
        access_file,
        tls_settings,
        token_warning,
    })
}

/// SIGHUP with `--config`: the command line is parsed again over the file as it is now, and
/// everything it names is read again ([`settings`]); the loop takes what can change live.
/// The keys that changed and cannot are named (by the supervisor alone with `--workers`: its
/// workers would each say the same).
fn reloader(reparse: Reparse, running: &Settings, context: Context) -> Reloader {
    let tls_on = running.config.tls.is_some();
    let access_on = running.access_path.is_some();
    let is_worker = running.worker_of.is_some();
    let supervisor = running.workers > 1 && !is_worker;
    let Context {
        file: start_file,
        on_command_line,
        log,
        ..
    } = context;
    Reloader::new(move || {
        let (args, file) = reparse()?;
        let file_filter = args.log_level.clone();
        let fresh = settings(args).map_err(|errors| errors.join("; "))?;
        if supervisor && fresh.config.check().is_ok() {
            // What the workers are told to reload is what a worker started from now on
            // reads (the limits `Reload::read` validates next are part of the check).
            hand_to_workers(&file.text);
        }
        let needs_restart = if is_worker {
            Vec::new()
        } else {
            needs_restart(&start_file, &file, &on_command_line)
        };
        let log_filter = if log.file_decides() {
            let filter = log.choose(file_filter.as_ref())?;
            (logger::current_filter().as_ref() != Some(&filter)).then(|| {
                Box::new(move || {
                    let described = format!("log levels {filter}");
                    logger::set_filter(filter);
                    described
                }) as monoreactor::LogSwap
            })
        } else {
            None
        };
        Ok(Fresh {
            limits: Some(fresh.config.limits),
            access: fresh.access_file.filter(|_| access_on),
            tls: fresh.config.tls.filter(|_| tls_on),
            log_filter,
            needs_restart,
        })
    })
}

/// The environment variable through which a `--workers` supervisor hands the workers it
/// starts the configuration file's text it last validated (at its start, or at a SIGHUP):
/// a worker restarted after a crash takes that, not the file as it is at that moment, which
/// may be halfway through an edit (it failed at start, and was given up for good) or hold
/// changes the running workers were never told of. A worker's own SIGHUP reads the file.
pub const WORKER_CONFIG_ENV: &str = "MONOREACTOR_WORKER_CONFIG";

/// Sets [`WORKER_CONFIG_ENV`] to `text` for the workers started from now on; a text the
/// environment cannot carry (a NUL, or past the kernel's 128 KiB for one string) removes it,
/// and a worker then reads the file.
fn hand_to_workers(text: &str) {
    // SAFETY: only the supervisor of `--workers` calls this, and it runs on one thread (its
    // loop; the logger writes from it), so nothing reads the environment meanwhile.
    unsafe {
        if text.contains('\0') || text.len() > 64 << 10 {
            std::env::remove_var(WORKER_CONFIG_ENV);
        } else {
            std::env::set_var(WORKER_CONFIG_ENV, text);
        }
    }
}

/// The keys whose value in the file changed since the start, the command line does not set,
/// and a running server cannot take ([`LIVE_KEYS`]).
fn needs_restart(
    before: &FileArgs,
    after: &FileArgs,
    on_command_line: &BTreeSet<String>,
) -> Vec<String> {
    let keys: BTreeSet<&String> = before.entries.keys().chain(after.entries.keys()).collect();
    keys.into_iter()
        .filter(|key| !on_command_line.contains(*key))
        .filter(|key| {
            let (was, is) = (before.entries.get(*key), after.entries.get(*key));
            if was.map(|entry| &entry.args) == is.map(|entry| &entry.args) {
                return false;
            }
            let presence_changed = was.is_some() != is.is_some();
            !LIVE_KEYS.contains(&key.as_str())
                || (presence_changed && PRESENCE_NEEDS_RESTART.contains(&key.as_str()))
        })
        .cloned()
        .collect()
}

fn serve(settings: Settings) -> Result<(), String> {
    let Settings {
        config,
        workers,
        worker_of,
        ..
    } = settings;
    // The loop (or the supervisor) installs its handlers only once the sockets are bound
    // (after the workers are started, for a supervisor), and scripts act on the `listening`
    // lines: a SIGHUP, SIGUSR1 or SIGUSR2 in between must not kill it (their default action).
    // Ignored until then; workers inherit that until their own handlers exist, and what the
    // server runs (the disk helper, commands) is started after the handlers are installed, so
    // it gets the default back at exec (a handler, unlike SIG_IGN, does not survive it).
    // SAFETY: setting a disposition to SIG_IGN installs no handler and touches no memory.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        libc::signal(libc::SIGUSR1, libc::SIG_IGN);
        libc::signal(libc::SIGUSR2, libc::SIG_IGN);
    }
    if let Some(spec) = worker_of {
        return serve_worker(config, &spec, workers);
    }
    let activated = monoreactor::activated_listeners()?;
    if workers > 1 {
        if activated.is_some() {
            return Err(format!(
                "--workers {workers} with socket activation: not supported; start one server per socket unit (or bind: drop the .socket unit)"
            ));
        }
        return serve_workers(config, workers);
    }
    let lifecycle = config.lifecycle.clone();
    let server = match activated {
        Some(listeners) => serve_activated(config, listeners)?,
        None => Server::bind(config).map_err(describe_start_error)?,
    };
    print_listening(server.addrs())?;
    if let Some(manager) = lifecycle {
        manager.ready(&format!("serving on {}", server.addrs().framed));
    }
    server
        .run()
        .map(drop)
        .map_err(|error| format!("event loop failed: {error}"))
}

/// The server on the sockets systemd passed (socket activation): the flags' addresses are
/// ignored, and the start checks (no public listener without a token or TLS) apply to the
/// address the framed socket is bound to.
fn serve_activated(mut config: Config, mut listeners: Listeners) -> Result<Server, String> {
    if let Some(addr) = config.metrics {
        let metrics = std::net::TcpListener::bind(addr)
            .map_err(|error| format!("--metrics {addr}: {error}"))?;
        listeners.metrics = Some(metrics);
    }
    config.framed = listeners
        .framed
        .local_addr()
        .map_err(|error| format!("socket activation: the framed socket: {error}"))?;
    config.echo_tcp = None;
    config.echo_udp = None;
    Server::from_listeners(config, listeners).map_err(describe_start_error)
}

/// `serve --workers N` (N > 1): bind every socket N times with SO_REUSEPORT, print the
/// addresses once, and supervise N worker processes (`monoreactor::workers`).
fn serve_workers(config: Config, workers: usize) -> Result<(), String> {
    let reload = config.reload.clone();
    let lifecycle = config.lifecycle.clone();
    let metrics = config.metrics;
    if metrics.is_some_and(|addr| addr.port() == 0) {
        return Err(
            "--metrics with --workers needs a port (worker i serves on the port + i), not 0".into(),
        );
    }
    let (sets, addrs) = monoreactor::bind_shared(config, workers).map_err(describe_start_error)?;
    print_listening(addrs)?;
    // One metrics port per worker, each bound by its worker (`bind_worker_metrics`).
    for port in metrics.map_or_else(Vec::new, |base| {
        monoreactor::worker_metrics_addrs(base, workers)
    }) {
        print_metrics_line(port)?;
    }
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    monoreactor::workers::supervise_notifying(sets, args, reload, lifecycle)
        .map_err(|error| format!("workers: {error}"))
}

/// One worker of `serve --workers N`: the ordinary server on the supervisor's sockets. It
/// prints nothing on stdout (the supervisor did) and says when it is ready.
fn serve_worker(config: Config, spec: &str, workers: usize) -> Result<(), String> {
    let fds = monoreactor::workers::WorkerFds::parse(spec)?;
    let (mut listeners, ready) = fds
        .take()
        .map_err(|error| format!("--worker-of {spec}: {error}"))?;
    listeners.metrics = config
        .metrics
        .and_then(|base| monoreactor::bind_worker_metrics(base, workers));
    let server = Server::from_listeners(config, listeners).map_err(describe_start_error)?;
    ready.announce();
    server
        .run()
        .map(drop)
        .map_err(|error| format!("event loop failed: {error}"))
}

/// A `listening metrics ADDR` line for one worker's metrics port, flushed.
fn print_metrics_line(addr: std::net::SocketAddr) -> Result<(), String> {
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "listening metrics {addr}")
        .and_then(|()| stdout.flush())
        .map_err(|error| format!("stdout: {error}"))
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
    if let Some(addr) = addrs.metrics {
        lines += &format!("listening metrics {addr}\n");
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
                Listener::Metrics => ("--metrics", false),
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

/// What is wrong with `--metrics ADDR` for `--workers N` (N > 1): worker i serves on ADDR's
/// port + i, so the port cannot be 0 and the N ports must exist. Checked with the rest of the
/// settings, so `--check-config` says it too (it said "configuration OK" to a command line
/// whose start then failed).
fn worker_metrics_problem(base: std::net::SocketAddr, workers: usize) -> Option<String> {
    if workers <= 1 {
        return None;
    }
    if base.port() == 0 {
        return Some(
            "--metrics with --workers needs a port (worker i serves on the port + i), not 0"
                .to_string(),
        );
    }
    let last = usize::from(base.port()) + (workers - 1);
    (last > usize::from(u16::MAX)).then(|| {
        format!(
            "--metrics {base} with --workers {workers}: worker i serves on the port + i, and port {last} does not exist"
        )
    })
}

/// `--proxy-from`: checked by clap, so a wrong range is a usage error (2) like any bad value;
/// kept as text, which the configuration's reload compares and parses again.
fn cidr_list(text: &str) -> Result<String, String> {
    Cidr::parse_list(text)?;
    Ok(text.to_string())
}

#[cfg(test)]
impl ServeArgs {
    /// `--max-conns`, for the configuration file's tests.
    pub fn max_conns(&self) -> usize {
        self.max_conns
    }

    /// `--max-put`, for the configuration file's tests.
    pub fn max_put(&self) -> u64 {
        self.max_put
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use clap::{Command, FromArgMatches};

    fn command() -> Command {
        ServeArgs::augment_args(Command::new("serve"))
    }

    fn read(text: &str) -> FileArgs {
        config::parse(text, "test.toml", &command()).unwrap()
    }

    #[test]
    fn a_changed_address_needs_a_restart_a_changed_timeout_does_not() {
        let before = read("listen = \"127.0.0.1:1\"\nhello-timeout = 5\naccess = \"a\"\n");
        let after =
            read("listen = \"127.0.0.1:2\"\nhello-timeout = 1\naccess = \"b\"\nworkers = 2\n");
        assert_eq!(
            needs_restart(&before, &after, &BTreeSet::new()),
            ["listen", "workers"]
        );
        let on_command_line = BTreeSet::from(["listen".to_string()]);
        assert_eq!(
            needs_restart(&before, &after, &on_command_line),
            ["workers"],
            "the command line's value is the one in use, whatever the file says"
        );
        let without_access = read("listen = \"127.0.0.1:1\"\nhello-timeout = 5\n");
        assert_eq!(
            needs_restart(&before, &without_access, &BTreeSet::new()),
            ["access"],
            "an access file taken away needs a restart"
        );
    }

    /// Each live key changes a limit `Limits::take_live` takes, or is one of the files or
    /// the log levels the reloader hands over itself.
    #[test]
    fn every_live_limit_key_reaches_a_limit_the_loop_takes() {
        let limits_of = |text: &str| {
            let mut argv = vec![OsString::from("serve")];
            argv.extend(read(text).args());
            let matches = command().try_get_matches_from(argv).expect("parses");
            let args = ServeArgs::from_arg_matches(&matches).expect("args");
            settings(args)
                .map_err(|errors| errors.join("; "))
                .unwrap()
                .config
                .limits
        };
        let base = limits_of("max-client-memory = 1000000000\n");
        for (key, value) in [
            ("idle-timeout", "7"),
            ("hello-timeout", "7"),
            ("frame-timeout", "7"),
            ("shutdown-grace", "7"),
            ("drain-delay", "7"),
            ("exec-timeout", "7"),
            ("exec-max-output", "7"),
            ("max-commands-per-conn", "7"),
            ("max-put", "7"),
            ("max-transfers", "7"),
            ("max-client-memory", "2000000000"),
        ] {
            assert!(LIVE_KEYS.contains(&key), "{key}");
            let changed = if key == "max-client-memory" {
                limits_of(&format!("{key} = {value}\n"))
            } else {
                limits_of(&format!(
                    "max-client-memory = 1000000000\n{key} = {value}\n"
                ))
            };
            let mut running = base.clone();
            assert!(
                !running.take_live(&changed).is_empty(),
                "{key} reaches no live limit"
            );
        }
        for key in LIVE_KEYS {
            assert!(
                config::keys(&command())
                    .iter()
                    .any(|known| known.name == key),
                "{key} is not a key"
            );
        }
    }
}
