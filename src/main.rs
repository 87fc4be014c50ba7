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
//! [`token`] (where a token comes from), [`explain`] (client errors with hints) and [`tls`]
//! (the rustls configuration the client commands' TLS flags ask for).

mod args;
mod cmd;
mod explain;
mod failure;
mod tls;
mod token;

use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use log::LevelFilter;

use cmd::files::{get, ls, paths, put, stat};
use failure::{Failure, USAGE, output_failure, say};

/// The command line: the global flags and one subcommand.
#[derive(Parser)]
#[command(
    name = "monoreactor",
    version,
    about = "A single-threaded, event-driven server on one mio::Poll: framed echo, raw TCP and UDP \
             echo, remote exec, and BLAKE3-verified file transfer"
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

/// The subcommands; the first line of each one's doc is its line in `--help`.
#[derive(Subcommand)]
enum Command {
    /// Run the server (loopback only unless told otherwise). Prints one `listening KIND ADDR`
    /// line per bound socket on stdout.
    Serve(Box<cmd::serve::ServeArgs>),
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
    /// Internal: the server's disk helper (blocking disk calls off the loop), on the socket
    /// inherited as descriptor FD. Started by `serve`, never by hand.
    #[command(name = "__disk-helper", hide = true)]
    DiskHelper {
        /// The inherited SOCK_SEQPACKET socket.
        fd: i32,
    },
}

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
        Command::Serve(args) => cmd::serve::run(*args),
        Command::Access(args) => cmd::access::run(args),
        Command::Echo(args) => cmd::echo::run(args),
        Command::Exec(args) => return ExitCode::from(cmd::exec::run(args)),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Get(args) => get::run(args),
        Command::Put(args) => put::run(args),
        Command::Ls(args) => ls::run(args),
        Command::Stat(args) => stat::run(args),
        Command::Rm(args) => paths::rm(args),
        Command::Mkdir(args) => paths::mkdir(args),
        Command::Stats(args) => cmd::stats::run(args),
        Command::DiskHelper { fd } => monoreactor::internal::helper_main(fd)
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
