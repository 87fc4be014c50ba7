//! `monoreactor exec`: a command on the server, run like ssh runs one. Stdin is forwarded, the
//! command's stdout and stderr come back as they are written, the first SIGINT or SIGTERM is
//! the remote command's, and its exit status is ours.
//!
//! `exec -t` runs it on a pseudo-terminal on the server (the server's shell if no program is
//! given), with the local terminal in raw mode for as long as it runs ([`tty`]): every key goes
//! to the remote terminal, `^C` included, and a window resize follows as a RESIZE.

use std::ffi::OsString;
use std::io::{self, IsTerminal};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args};
use monoreactor::DEFAULT_FRAMED_ADDR;
use monoreactor::client::exec::{
    Command as RemoteCommand, EscapeScanner, ExecClient, Signaller, Terminal,
};
use monoreactor::proto::exec::{EndReason, MAX_CWD_LEN, Signal};
use monoreactor::proto::{ErrorCode, SessionFlags};

use crate::args::{Secs, ServerAddr, TlsArgs};
use crate::explain::explain;
use crate::failure::{CLIENT_FAILURE, Failure, say};
use crate::token::client_token;

/// How long `exec` waits to connect, for HELLO_OK and for STARTED unless `--timeout` says
/// otherwise. The command's own run time is unbounded here (the server enforces its limit,
/// `--time-limit`), so this covers only the handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `exec --help` says after the flags: examples, stdin, signals, exit statuses.
const HELP: &str = "\
Examples:
  monoreactor exec -- uname -a
  monoreactor exec --shell 'ls | wc -l'
  monoreactor exec -- cat < big.bin | b3sum      (same sum as b3sum big.bin)
  monoreactor exec -t                            (an interactive shell, as ssh gives)
  monoreactor exec -t -- vi notes.txt

Terminal (-t): the command runs on a pseudo-terminal on the server (the server's
--exec-shell if no program is given) of this terminal's size and $TERM; this terminal is in
raw mode until it ends, so Ctrl-C, Ctrl-Z and every key go to the remote side, and a resize
follows. Stdout and stderr are one stream, as on any terminal. After Enter, ~. closes the
session (exit 255) and ~~ types one ~. -t needs stdin to be a terminal; -tt forces one anyway.
SIGTERM or SIGHUP restore this terminal and exit 255.

Stdin: forwarded until end of file, then the command sees EOF. With -n, or when stdin is a
terminal and this is a background job, nothing is read and the command's stdin is /dev/null.

Signals: the first SIGINT (Ctrl-C) or SIGTERM is sent to the remote command's process group;
a second one gives up at once (exit 130 or 143), as does SIGHUP (129), and the server stops the
command when the connection closes.

Exit status: the command's own; 128+N if signal N killed it; 127 if the server found no such
program, 126 if it found one it cannot execute; 255 if this client failed or the server refused
to run it (exec off, a program the credential does not allow, a wrong token): 1 to 254 are the
command's, as with ssh. One line on stderr says why.

The token comes from --token-file, else from $MONOREACTOR_TOKEN.";

/// The flags of `exec`: where, as whom, and what to run.
#[derive(Args)]
#[command(after_help = HELP, group(ArgGroup::new("command").args(["argv", "shell"])))]
pub struct ExecArgs {
    /// Server address (framed protocol), HOST:PORT, or tls://HOST:PORT for TLS.
    #[arg(long, value_name = "ADDR", default_value_t = ServerAddr::from(DEFAULT_FRAMED_ADDR))]
    addr: ServerAddr,
    #[command(flatten)]
    tls: TlsArgs,
    /// File holding the server's token [default: $MONOREACTOR_TOKEN].
    #[arg(long, value_name = "PATH")]
    token_file: Option<PathBuf>,
    /// How long to wait for the server: to connect, and for the command to start (500ms, 2s,
    /// 1m; a bare number is seconds). Its output is waited for as long as it runs.
    #[arg(long, value_name = "DURATION", default_value_t = Secs(CONNECT_TIMEOUT))]
    timeout: Secs,
    /// Time limit for the command on the server, which applies the smaller of this and its
    /// own --exec-timeout (500ms, 2s, 1m, 1h) [default: the server's].
    #[arg(long, value_name = "DURATION")]
    time_limit: Option<Secs>,
    /// Working directory, relative to the server's --root [default: the root].
    #[arg(long, value_name = "DIR", value_parser = parse_cwd)]
    cwd: Option<String>,
    /// Run STRING with `sh -c` on the server instead of PROG.
    #[arg(long, value_name = "STRING")]
    shell: Option<String>,
    /// Read no stdin: the command's stdin is /dev/null (like ssh -n).
    #[arg(short = 'n', long, conflicts_with = "tty")]
    no_stdin: bool,
    /// Run the command on a pseudo-terminal (an interactive shell if no program is given);
    /// twice (-tt) even when stdin is not a terminal.
    #[arg(short = 't', long, action = clap::ArgAction::Count)]
    tty: u8,
    /// The program and its arguments, best after `--`; no shell is involved.
    #[arg(value_name = "PROG", trailing_var_arg = true, value_parser = clap::value_parser!(OsString))]
    argv: Vec<OsString>,
}

/// A `--cwd` that fits in a request, refused before connecting otherwise.
fn parse_cwd(text: &str) -> Result<String, String> {
    if text.len() > MAX_CWD_LEN {
        return Err(format!(
            "{} bytes; at most {MAX_CWD_LEN} fit in a request",
            text.len()
        ));
    }
    Ok(text.to_string())
}

/// Runs the command and returns the exit status for this process: the remote
/// command's, or this client's own failure after its line on stderr.
pub fn run(args: ExecArgs) -> u8 {
    match run_remote(args) {
        Ok(status) => status,
        Err(failure) => {
            if let Some(message) = failure.message {
                say(&message);
            }
            failure.status
        }
    }
}

/// Starts the command and relays its input and output until it ends: its exit status as a
/// shell reports one, or why this client could not get it.
fn run_remote(args: ExecArgs) -> Result<u8, Failure> {
    let local_tty = io::stdin().is_terminal();
    if args.tty == 0 && args.argv.is_empty() && args.shell.is_none() {
        return Err(Failure::usage(
            "exec: give a program (after --), --shell STRING, or -t for a shell".to_string(),
        ));
    }
    if args.tty == 1 && !local_tty {
        return Err(Failure::usage(
            "exec -t: stdin is not a terminal; -tt forces a pseudo-terminal anyway".to_string(),
        ));
    }
    let (token, source) = client_token(args.token_file).map_err(Failure::own)?;
    let mut command = match args.shell {
        Some(script) => RemoteCommand::shell(&script),
        None => RemoteCommand::new(args.argv.into_iter().map(OsString::into_vec)),
    };
    command.cwd = args.cwd.unwrap_or_default();
    command.timeout = args.time_limit.map(|secs| secs.0);
    command.stdin = !args.no_stdin && stdin_is_ours();
    if args.tty > 0 {
        let (rows, cols) = tty::size().unwrap_or((24, 80));
        let term = std::env::var("TERM").ok();
        command.pty = Some(Terminal::new(rows, cols, term.as_deref()));
        command.stdin = true;
    }

    let target = args.tls.target(&args.addr).map_err(Failure::own)?;
    let client = ExecClient::connect(target, token.as_ref(), args.timeout.0)
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
    if command.pty.is_some() {
        return run_on_terminal(running, local_tty, &source, authenticated);
    }
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
        Err(error) if error.is_broken_pipe() => Err(Failure::reader_gone()),
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

/// `exec -t` once the command runs: the local terminal raw (if stdin is one) until the end,
/// SIGWINCH forwarded as RESIZE, `~.` watched for, and SIGINT, SIGTERM or SIGHUP from outside
/// ending this client with the terminal restored (255). The terminal is restored on every
/// way out: the guard's drop on a return, the panic hook on a panic, the signal thread before
/// it exits.
fn run_on_terminal(
    running: monoreactor::client::exec::Running,
    local_tty: bool,
    source: &crate::token::TokenSource,
    authenticated: Option<bool>,
) -> Result<u8, Failure> {
    let raw = if local_tty {
        match tty::RawMode::enter() {
            Ok(guard) => Some(guard),
            Err(error) => {
                return Err(Failure::own(format!(
                    "exec -t: cannot put the terminal in raw mode: {error}"
                )));
            }
        }
    } else {
        None
    };
    // A test hook, compiled into debug builds only (a release build has no such variable):
    // MONOREACTOR_TEST_PANIC=after-raw panics here, with the terminal raw, so that
    // tests/exec_pty.rs can see the panic hook restore the terminal before the panic is
    // reported.
    #[cfg(debug_assertions)]
    if std::env::var_os("MONOREACTOR_TEST_PANIC").is_some_and(|hook| hook == "after-raw") {
        panic!("MONOREACTOR_TEST_PANIC=after-raw: a panic with the terminal raw");
    }
    let signaller = running.signaller();
    let _signals = tty::watch_signals(signaller.clone());
    let escaped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tty::EscapeReader {
        inner: io::stdin(),
        // ssh watches for its escape only when stdin is a terminal.
        scanner: local_tty.then(EscapeScanner::new),
        signaller,
        escaped: std::sync::Arc::clone(&escaped),
        pending: Vec::new(),
    };
    // On a terminal, what is typed is read (and scanned for `~.`) by a thread of its own, so
    // the escape is seen even while the stdin thread waits for credit from a hung server.
    let input: Box<dyn io::Read + Send> = if local_tty {
        Box::new(tty::Typed::spawn(reader))
    } else {
        Box::new(reader)
    };
    let result = running.finish(Some(input), &mut io::stdout(), &mut io::stderr());
    // Back to the terminal as it was before any line of ours is printed.
    drop(raw);
    match result {
        Ok(exit) => {
            if !matches!(exit.reason, EndReason::None | EndReason::ClientSignal) {
                say(&format!("remote command {exit}"));
            }
            Ok(exit.shell_code())
        }
        Err(_) if escaped.load(std::sync::atomic::Ordering::Acquire) => Err(Failure::own(
            "connection closed (~.); the server stops the command".to_string(),
        )),
        Err(error) if error.is_broken_pipe() => Err(Failure::reader_gone()),
        Err(error) => Err(Failure::own(explain(&error, source, authenticated))),
    }
}

/// The local terminal for `exec -t`: raw mode and its restoring, its size, the signals that
/// matter while it is raw, and the `~.` escape in what is typed.
mod tty {
    use std::io::{self, Read};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, Once};

    use monoreactor::client::exec::{Escape, EscapeScanner, Signaller};
    use rustix::termios::{OptionalActions, Termios};

    use crate::failure::{CLIENT_FAILURE, say};

    /// The settings to restore, while the terminal is raw: shared with the panic hook and the
    /// signal thread, which restore it on their ways out.
    static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

    /// Puts the terminal back as it was, if it is raw; safe to call more than once.
    pub(super) fn restore() {
        let saved = SAVED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(termios) = saved {
            // TCSADRAIN: what we wrote is shown before the settings change back.
            let _ = rustix::termios::tcsetattr(io::stdin(), OptionalActions::Drain, &termios);
        }
    }

    /// Raw mode (cfmakeraw's settings) until dropped.
    pub(super) struct RawMode(());

    impl RawMode {
        /// Saves the terminal's settings and makes it raw; installs, once, a panic hook that
        /// restores them before the panic is reported.
        pub(super) fn enter() -> io::Result<RawMode> {
            let stdin = io::stdin();
            let saved = rustix::termios::tcgetattr(&stdin)?;
            let mut raw = saved.clone();
            raw.make_raw();
            *SAVED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(saved);
            static HOOK: Once = Once::new();
            HOOK.call_once(|| {
                let previous = std::panic::take_hook();
                std::panic::set_hook(Box::new(move |info| {
                    restore();
                    previous(info);
                }));
            });
            // TCSADRAIN, as ssh: what was typed ahead is kept and goes to the remote side.
            if let Err(error) = rustix::termios::tcsetattr(&stdin, OptionalActions::Drain, &raw) {
                restore();
                return Err(error.into());
            }
            Ok(RawMode(()))
        }
    }

    impl Drop for RawMode {
        fn drop(&mut self) {
            restore();
        }
    }

    /// The terminal's size, rows then columns: stdin's, else stdout's.
    pub(super) fn size() -> Option<(u16, u16)> {
        let size = rustix::termios::tcgetwinsize(io::stdin())
            .or_else(|_| rustix::termios::tcgetwinsize(io::stdout()))
            .ok()?;
        Some((size.ws_row, size.ws_col))
    }

    /// A thread for the signals of a terminal session: SIGWINCH sends the new size; SIGINT,
    /// SIGTERM and SIGHUP (from outside: in raw mode `^C` is a byte, not a signal) restore the
    /// terminal and exit 255, closing the connection with a reset so the server stops the
    /// command. The handle keeps the handlers installed.
    pub(super) fn watch_signals(signaller: Signaller) -> Option<signal_hook::iterator::Handle> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGWINCH};
        let mut signals =
            match signal_hook::iterator::Signals::new([SIGWINCH, SIGINT, SIGTERM, SIGHUP]) {
                Ok(signals) => signals,
                Err(error) => {
                    log::warn!("cannot watch signals: {error}");
                    return None;
                }
            };
        let handle = signals.handle();
        let spawned = std::thread::Builder::new()
            .name("signals".to_string())
            .spawn(move || {
                for number in signals.forever() {
                    if number == SIGWINCH {
                        if let Some((rows, cols)) = size() {
                            // A failed send means the connection is gone: the output side
                            // reports it.
                            let _ = signaller.resize(rows, cols);
                        }
                        continue;
                    }
                    signaller.abort_on_close();
                    restore();
                    if number != SIGHUP {
                        say(&format!(
                            "signal {number}: closed the session; the server stops the command"
                        ));
                    }
                    std::process::exit(i32::from(CLIENT_FAILURE));
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

    /// Most typed bytes held for the stdin thread while it waits for credit (a hung server): past
    /// this, typing blocks again (and `~.` behind it waits) rather than memory growing.
    const TYPED_AHEAD_CHUNKS: usize = 1024;

    /// What is typed, read from the terminal by a thread of its own (through an
    /// [`EscapeReader`], so `~.` is acted on as soon as it is typed) and queued for the reader
    /// of this end, the stdin thread, which may be waiting for credit meanwhile. Up to
    /// [`TYPED_AHEAD_CHUNKS`] reads are held; the end of input or a read error ends the queue.
    pub(super) struct Typed {
        queue: std::sync::mpsc::Receiver<Vec<u8>>,
        chunk: Vec<u8>,
        at: usize,
    }

    impl Typed {
        pub(super) fn spawn<R: Read + Send + 'static>(mut reader: EscapeReader<R>) -> Typed {
            let (sender, queue) = std::sync::mpsc::sync_channel(TYPED_AHEAD_CHUNKS);
            let spawned = std::thread::Builder::new()
                .name("terminal".to_string())
                .spawn(move || {
                    let mut buf = vec![0; 4096];
                    loop {
                        let n = match reader.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => n,
                            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                            Err(error) => {
                                // As the stdin thread does: the command's input ends.
                                log::warn!("cannot read the terminal ({error}); the command gets end of file");
                                return;
                            }
                        };
                        if sender.send(buf[..n].to_vec()).is_err() {
                            return; // the session is over
                        }
                    }
                });
            if let Err(error) = spawned {
                log::warn!(
                    "cannot start the terminal thread: {error}; the command gets end of file"
                );
            }
            Typed {
                queue,
                chunk: Vec::new(),
                at: 0,
            }
        }
    }

    impl Read for Typed {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            while self.at == self.chunk.len() {
                match self.queue.recv() {
                    Ok(chunk) => {
                        self.chunk = chunk;
                        self.at = 0;
                    }
                    Err(_) => return Ok(0),
                }
            }
            let n = buf.len().min(self.chunk.len() - self.at);
            buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// Local stdin with the `~.` escape taken out (when `scanner` is set): on `~.` the session
    /// is abandoned and the reader ends.
    pub(super) struct EscapeReader<R> {
        pub(super) inner: R,
        pub(super) scanner: Option<EscapeScanner>,
        pub(super) signaller: Signaller,
        pub(super) escaped: Arc<AtomicBool>,
        /// Bytes scanned and not yet returned.
        pub(super) pending: Vec<u8>,
    }

    impl<R: Read> Read for EscapeReader<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some(scanner) = self.scanner.as_mut() else {
                return self.inner.read(buf);
            };
            while self.pending.is_empty() {
                let mut chunk = [0; 4096];
                let n = self.inner.read(&mut chunk)?;
                if n == 0 {
                    return Ok(0);
                }
                if scanner.scan(&chunk[..n], &mut self.pending) == Escape::Disconnect {
                    self.escaped.store(true, Ordering::Release);
                    self.signaller.abandon();
                    return Ok(0);
                }
            }
            let n = buf.len().min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            Ok(n)
        }
    }
}
