//! `monoreactor`: the command-line front end. Parses flags, sets up logging, and hands over to
//! the library; every failure ends in one line on stderr and a non-zero exit.
//!
//! The client commands (`echo`, `exec`, `bench`, and the file commands `get`, `put`, `ls`,
//! `stat`, `rm`, `mkdir`) behave like Unix tools: a closed stdout ends them quietly (SIGPIPE's
//! default action is restored for them, never for `serve`), a stdout that cannot be written
//! otherwise (`>/dev/full`) is one line and exit 255 ([`failure::print_stdout`]), every
//! address takes `HOST:PORT`, and server errors are shown decoded with a hint where one helps
//! ([`explain`]).
//!
//! This file is the command line itself and what every command shares at its start and end;
//! each subcommand is a module of [`cmd`] that holds its flags and its run. Beside them:
//! [`args`] (the values flags take), [`failure`] (exit statuses, stdout and stderr),
//! [`token`] (where a token comes from), [`explain`] (client errors with hints), [`tls`]
//! (the rustls configuration the client commands' TLS flags ask for), [`config`] (`serve
//! --config FILE`: the file's keys as flags) and [`logger`] (log lines, levels per module).

mod args;
mod cmd;
mod config;
mod explain;
mod failure;
mod logger;
mod tls;
mod token;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use log::LevelFilter;

use cmd::files::{get, ls, paths, put, stat};
use config::FileArgs;
use failure::{CLIENT_FAILURE, FAILED_TO_START, Failure, USAGE, output_failure, say};
use logger::{LogFilter, LogSources};

/// What `monoreactor --help` says after the commands: the conventions every command keeps.
const AFTER_HELP: &str = "\
Sizes: a number with an optional unit K, M, G, T (powers of 1024, as dd and truncate: 16K =
16384); KiB, MiB, GiB, TiB are the same, KB, MB, GB, TB are powers of 1000.
Durations: a number with an optional unit ms, s, m, h (500ms, 2s, 1.5m, 1h), or a sum of them
(1h30m); a bare number is seconds.

Addresses: HOST:PORT, or HOST alone for the default port 7878 (127.0.0.1, localhost, ::1,
[::1]:7000), or tls://HOST[:PORT] for TLS. $MONOREACTOR_ADDR sets the server of echo, exec
and the file commands (--addr wins; bench and stats have ports of their own);
$MONOREACTOR_TOKEN the token (--token-file wins).

Exit status of the client commands: 0 done; 1 the server refused (it answered with an error);
2 a usage error (a flag or value that is wrong); 255 the client or the connection failed (no
server, a name that does not resolve, a timeout). `exec` exits with the remote command's status
instead, and 255 when the server refuses to run it (see exec --help); `serve` exits 1 when it
cannot start.

-v shows what a client does (where it connects, TLS or not, authenticated); -q hides progress.
Shell completions: monoreactor completions bash|zsh|fish|elvish|powershell; the manual page:
monoreactor man.";

/// The command line: the global flags and one subcommand.
#[derive(Parser)]
#[command(
    name = "monoreactor",
    version,
    propagate_version = true,
    about = "A single-threaded, event-driven server on one mio::Poll and its client. Services: \
             framed echo; raw TCP and UDP echo; remote exec, with a terminal; files (get, put, \
             ls, stat, rm, mkdir, whole trees too), BLAKE3-verified; and a load generator \
             (bench).",
    after_help = AFTER_HELP
)]
struct Cli {
    /// More log output on stderr (-v debug, -vv trace); for `serve`, see also --log-level.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output on stderr (-q warnings and errors, -qq errors only); -q also hides
    /// the clients' progress bars.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

/// The subcommands; the first line of each one's doc is its line in `--help`.
#[derive(Subcommand)]
enum Command {
    /// Run the server (loopback only unless told otherwise). Prints one `listening KIND ADDR`
    /// line per bound socket on stdout.
    ///
    /// Exit status: 0 after a graceful shutdown, 1 when it cannot start (a port in use, a bad
    /// configuration) or stops on an error, 2 for a usage error. `serve` is not a client: the
    /// clients' 255 does not apply to it.
    ///
    /// Signals: SIGINT or SIGTERM shut it down gracefully (a second one at once), SIGHUP
    /// re-reads the configuration (--config, --access, the TLS files), SIGUSR1 logs a line of
    /// counters, SIGUSR2 is logged and ignored.
    Serve(Box<cmd::serve::ServeArgs>),
    /// Every other command: the clients, and the commands that print something.
    #[command(flatten)]
    Client(Box<ClientCommand>),
    /// Internal: the server's disk helper (blocking disk calls off the loop), on the socket
    /// inherited as descriptor FD. Started by `serve`, never by hand.
    #[command(name = "__disk-helper", hide = true)]
    DiskHelper {
        /// The inherited SOCK_SEQPACKET socket.
        fd: i32,
    },
}

/// The commands that are not the server: they log quietly unless asked, and a closed stdout
/// ends them as it ends a Unix filter.
#[derive(Subcommand)]
enum ClientCommand {
    /// The access file's credentials: add one (a new token, printed once), or hash a token.
    Access(cmd::access::AccessArgs),
    /// Send one framed echo request and print the reply.
    Echo(cmd::echo::EchoArgs),
    /// Run a command on a server started with --exec, like ssh: stdin is forwarded, its
    /// stdout and stderr come back as they are written, and its exit status is ours.
    Exec(cmd::exec::ExecArgs),
    /// Load generator: echo (framed, raw), UDP, short connections, exec, file get and put;
    /// latency percentiles, errors by kind, CPU per request.
    Bench(cmd::bench::BenchArgs),
    /// Download a file from the server's root, verified (BLAKE3) and atomic; resumable.
    Get(get::GetArgs),
    /// Upload a file (or stdin) into the server's root, verified (BLAKE3) and atomic;
    /// resumable.
    Put(put::PutArgs),
    /// List a directory on the server.
    Ls(ls::LsArgs),
    /// Show what a path on the server is: kind, size, modification time, BLAKE3 if known.
    Stat(stat::StatArgs),
    /// Remove files or empty directories on the server.
    Rm(paths::RmArgs),
    /// Create directories on the server.
    Mkdir(paths::MkdirArgs),
    /// The server's counters as a table, read from its metrics port (`serve --metrics`).
    Stats(cmd::stats::StatsArgs),
    /// Print a sandboxed systemd unit for `serve` (Type=notify), or its socket unit, with
    /// this binary's path and the root filled in.
    SystemdUnit(cmd::systemd_unit::SystemdUnitArgs),
    /// Print the completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completions(cmd::completions::CompletionsArgs),
    /// Print the manual page (roff; `monoreactor man | man -l -`), of a subcommand if named.
    Man(cmd::man::ManArgs),
}

/// The variable that sets the server of every client command that speaks the framed
/// protocol, as `--addr` does (the flag wins).
const ADDR_ENV: &str = "MONOREACTOR_ADDR";

/// The commands whose `--addr` [`ADDR_ENV`] sets: all that speak the framed protocol to one
/// server. Not `bench` (its default port depends on what it measures: framed, raw echo,
/// UDP, redis) and not `stats` (the metrics port).
const ADDR_ENV_COMMANDS: [&str; 8] = ["echo", "exec", "get", "put", "ls", "stat", "rm", "mkdir"];

/// The whole command line as clap sees it: the derived definitions, with [`ADDR_ENV`] as
/// the default of the client commands' `--addr`.
fn cli_command() -> clap::Command {
    // Set but empty is unset, as for RUST_LOG: `MONOREACTOR_ADDR= monoreactor ls` is the
    // default server, not a usage error about an --addr nobody typed.
    if std::env::var_os(ADDR_ENV).is_some_and(|value| value.is_empty()) {
        return Cli::command();
    }
    ADDR_ENV_COMMANDS
        .iter()
        .fold(Cli::command(), |command, name| {
            command.mut_subcommand(name, |sub| sub.mut_arg("addr", |arg| arg.env(ADDR_ENV)))
        })
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let matches = match cli_command().try_get_matches_from(&argv) {
        Ok(matches) => matches,
        Err(answer) => return command_line_answer(&argv, &answer),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(answer) => return command_line_answer(&argv, &answer),
    };
    let shift = i16::from(cli.verbose) - i16::from(cli.quiet);
    let command = match cli.command {
        Command::Serve(args) => return start_serve(argv, &matches, *args, shift),
        Command::DiskHelper { fd } => {
            // A part of the server: its lines are stamped like the server's.
            let sources = LogSources {
                shift,
                env: rust_log(),
                ..LogSources::default()
            };
            let filter = sources
                .choose(None)
                .unwrap_or(LogFilter::level(LevelFilter::Info));
            init_logger(filter, true);
            return finish(
                monoreactor::internal::helper_main(fd).map_err(|error| Failure {
                    status: FAILED_TO_START,
                    message: Some(format!("disk helper: {error}")),
                }),
            );
        }
        Command::Client(command) => *command,
    };
    // Clients stay quiet unless asked.
    let level = match cli.verbose {
        0 => logger::shifted(shift).min(LevelFilter::Warn),
        _ => logger::shifted(shift),
    };
    init_logger(LogFilter::level(level), false);
    args::set_quiet(cli.quiet > 0);
    restore_sigpipe();
    let result = match command {
        ClientCommand::Access(args) => cmd::access::run(args),
        ClientCommand::Echo(args) => cmd::echo::run(args),
        ClientCommand::Exec(args) => return ExitCode::from(cmd::exec::run(args)),
        ClientCommand::Bench(args) => cmd::bench::run(args),
        ClientCommand::Get(args) => get::run(args),
        ClientCommand::Put(args) => put::run(args),
        ClientCommand::Ls(args) => ls::run(args),
        ClientCommand::Stat(args) => stat::run(args),
        ClientCommand::Rm(args) => paths::rm(args),
        ClientCommand::Mkdir(args) => paths::mkdir(args),
        ClientCommand::Stats(args) => cmd::stats::run(args),
        ClientCommand::SystemdUnit(args) => cmd::systemd_unit::run(args),
        ClientCommand::Completions(args) => cmd::completions::run(args, cli_command()),
        ClientCommand::Man(args) => cmd::man::run(args, cli_command()),
    };
    finish(result)
}

/// The exit status of a command's result, its failure's line printed.
fn finish(result: Result<(), Failure>) -> ExitCode {
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

/// Installs the logger; a failure (never expected: nothing else installs one) is said, not
/// fatal.
fn init_logger(filter: LogFilter, timestamps: bool) {
    if let Err(error) = logger::init(filter, timestamps) {
        say(&format!("cannot set up logging: {error}"));
    }
}

/// `RUST_LOG`, unless unset or empty.
fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// `serve`: with `--config`, the command line is parsed again with the file's keys before
/// serve's flags; then the log levels, then the server.
fn start_serve(
    argv: Vec<OsString>,
    matches: &ArgMatches,
    args: cmd::serve::ServeArgs,
    shift: i16,
) -> ExitCode {
    let log = LogSources {
        flag: args.log_level_flag(),
        shift,
        env: rust_log(),
    };
    let on_command_line = matches
        .subcommand_matches("serve")
        .map(given_on_command_line)
        .unwrap_or_default();
    let (args, file, reparse) = match args.config_path() {
        None => (args, FileArgs::default(), None),
        Some(path) => match with_config(&argv, &path, worker_snapshot(&args).as_deref()) {
            Ok((args, file)) => {
                let reparse: cmd::serve::Reparse = Arc::new(move || {
                    with_config(&argv, &path, None).map_err(|failure| match failure {
                        Reread::File(lines) => lines.join("; "),
                        Reread::Clap(error) => config::first_line(&error),
                    })
                });
                (args, file, Some(reparse))
            }
            Err(Reread::File(lines)) => {
                for line in lines {
                    say(&line);
                }
                return ExitCode::from(USAGE);
            }
            Err(Reread::Clap(error)) => {
                let status = parse_answer(&error);
                say(&format!(
                    "(the keys of {} were read as flags, before the command line's)",
                    path.display()
                ));
                return status;
            }
        },
    };
    let filter = match log.choose(args.log_level_flag().as_ref()) {
        Ok(filter) => filter,
        Err(error) => {
            say(&error);
            return ExitCode::from(USAGE);
        }
    };
    init_logger(filter, true);
    let result = cmd::serve::run(
        args,
        cmd::serve::Context {
            reparse,
            file,
            on_command_line,
            log,
        },
    );
    // The server is not a client: whatever stops it (a line of its own, which alone would be
    // a client's 255) is "failed", 1, as daemons say; a closed stdout stays 141.
    finish(result.map_err(|failure| match failure.status {
        CLIENT_FAILURE => Failure {
            status: FAILED_TO_START,
            ..failure
        },
        _ => failure,
    }))
}

/// Why the command line could not be read again over the configuration file.
enum Reread {
    /// The file: its errors, one line each (`PATH:LINE: what`).
    File(Vec<String>),
    /// The flags and the file together (a flag that needs another, say).
    Clap(clap::Error),
}

/// For a worker of `--workers N` at its start: the configuration file's text its supervisor
/// validated ([`cmd::serve::WORKER_CONFIG_ENV`]), which it takes instead of the file as it is
/// now (halfway through an edit, say, when a worker is restarted).
fn worker_snapshot(args: &cmd::serve::ServeArgs) -> Option<String> {
    if !args.is_worker() {
        return None;
    }
    std::env::var(cmd::serve::WORKER_CONFIG_ENV).ok()
}

/// `argv` parsed with the keys of the file at `path` placed before serve's own flags; the
/// serve flags, and the file's keys as read. `snapshot`: the file's text, already read.
fn with_config(
    argv: &[OsString],
    path: &Path,
    snapshot: Option<&str>,
) -> Result<(cmd::serve::ServeArgs, FileArgs), Reread> {
    let command = Cli::command();
    let serve = command
        .find_subcommand("serve")
        .ok_or_else(|| Reread::File(vec!["no serve command".to_string()]))?;
    let origin = path.display().to_string();
    let file = match snapshot {
        Some(text) => config::parse(text, &origin, serve),
        None => config::read(path, serve),
    }
    .map_err(Reread::File)?;
    config::check_values(&file, &origin, serve).map_err(|error| Reread::File(vec![error]))?;
    let spliced = config::splice(argv, &file).map_err(|error| Reread::File(vec![error]))?;
    match Cli::try_parse_from(spliced).map_err(Reread::Clap)?.command {
        Command::Serve(args) => Ok((*args, file)),
        _ => Err(Reread::File(vec![
            "--config is a flag of serve".to_string(),
        ])),
    }
}

/// The configuration keys (long names) of the flags given on the command line itself.
fn given_on_command_line(serve: &ArgMatches) -> BTreeSet<String> {
    let command = Cli::command();
    let Some(definition) = command.find_subcommand("serve") else {
        return BTreeSet::new();
    };
    definition
        .get_arguments()
        .filter(|arg| serve.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine))
        .filter_map(|arg| arg.get_long().map(str::to_string))
        .collect()
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

/// [`parse_answer`] for the command line `argv`, with what clap cannot know: that a wrong
/// server address came from [`ADDR_ENV`], not from an `--addr` the user typed; and that a
/// name `serve` cannot resolve stops a server (1, "cannot start"), not a client (255).
fn command_line_answer(argv: &[OsString], answer: &clap::Error) -> ExitCode {
    let words: Vec<&str> = argv.iter().skip(1).filter_map(|arg| arg.to_str()).collect();
    let serving = words.iter().find(|word| !word.starts_with('-')) == Some(&"serve");
    let unresolved = std::error::Error::source(answer)
        .and_then(|source| source.downcast_ref::<args::AddrError>())
        .and_then(|error| match error {
            args::AddrError::Unresolved(message) => Some(message),
            args::AddrError::Syntax(_) => None,
        });
    if let (true, Some(message)) = (serving, unresolved) {
        say(message);
        return ExitCode::from(FAILED_TO_START);
    }
    let addr_flag = matches!(
        answer.get(clap::error::ContextKind::InvalidArg),
        Some(clap::error::ContextValue::String(flag)) if flag.starts_with("--addr ")
    );
    let typed = words
        .iter()
        .any(|word| *word == "--addr" || word.starts_with("--addr="));
    if addr_flag && !typed && unresolved.is_none() {
        if let (Some(value), Some(why)) = (
            std::env::var_os(ADDR_ENV),
            std::error::Error::source(answer),
        ) {
            say(&format!(
                "${ADDR_ENV} is `{}`: {why} (or give --addr)",
                value.to_string_lossy()
            ));
            return ExitCode::from(USAGE);
        }
    }
    parse_answer(answer)
}

/// Prints clap's answer to `--help`, `--version` or a usage error and returns its exit
/// status. clap's own `exit` ignores a failed write, so `--help >/dev/full` would succeed; a
/// help text that cannot be written is an [`output_failure`] like any other output. (A usage
/// error goes to stderr, where a failure has nowhere to be reported.)
fn parse_answer(answer: &clap::Error) -> ExitCode {
    // A server's name that does not resolve is the network's failure, not the command
    // line's: one line and 255, as ssh's "Could not resolve hostname".
    if let Some(args::AddrError::Unresolved(message)) = std::error::Error::source(answer)
        .and_then(|source| source.downcast_ref::<args::AddrError>())
    {
        say(message);
        return ExitCode::from(CLIENT_FAILURE);
    }
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
