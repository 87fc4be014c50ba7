//! Exec benchmarks.
//!
//! - [`run_exec`]: N clients, each running one command after another (`true` by default) on
//!   its own connection: commands per second, round-trip latency, server CPU per command.
//! - [`run_local_spawn`]: the reference: N threads each running the same command with
//!   `posix_spawn` + `waitpid` (std's `Command::spawn` + `wait`) on this machine, no server.
//!   Interleave it with [`run_exec`] in the same minute and compare rates.
//! - [`run_stream`]: one command writes a large output (`head -c N /dev/zero`) to a client that
//!   reads it at a limited rate, while a second client pings 64-byte echoes; reports the
//!   server's peak memory and the echo latency during the stream.
//!
//! These are client-side tools: they use threads and blocking sockets freely.

use std::fmt;
use std::io;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::Percentiles;
use crate::procstat;
use monoreactor::Token;
use monoreactor::client::{Client, ClientError, Target};
use monoreactor::proto::exec::{ExecRequest, Exit, Termination};
use monoreactor::proto::{ErrorMessage, FrameType, Hello};

/// Bound on connecting and on every read, so a stuck server ends the run instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// An exec round-trip run.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    /// Server address (framed protocol), `HOST:PORT`.
    pub addr: String,
    /// The server's token.
    pub token: Token,
    /// Clients running commands at the same time.
    pub parallel: usize,
    /// The command.
    pub argv: Vec<String>,
    /// Time before measuring starts.
    pub warmup: Duration,
    /// Time measured.
    pub duration: Duration,
    /// Server process, to report its CPU time per command.
    pub server_pid: Option<u32>,
}

/// What a run of commands (remote or local) measured.
#[derive(Clone, Debug)]
pub struct ExecReport {
    /// What was run: "exec" or "local posix_spawn".
    pub what: &'static str,
    /// Clients (or threads) at once.
    pub parallel: usize,
    /// Commands completed in the measured window.
    pub commands: u64,
    /// Commands that failed (an ERROR, or an exit other than 0).
    pub failures: u64,
    /// Length of the window.
    pub elapsed: Duration,
    /// Round-trip latency, microseconds.
    pub latency: Percentiles,
    /// Server CPU time per command, if its pid was given.
    pub server_cpu_per_command: Option<Duration>,
}

impl ExecReport {
    /// Commands per second.
    pub fn rate(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for ExecReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = self.latency;
        write!(
            f,
            "{} x{}: {:.0} commands/s ({} in {:.2} s, {} failed); latency us p50 {} p90 {} p99 {} max {}",
            self.what,
            self.parallel,
            self.rate(),
            self.commands,
            self.elapsed.as_secs_f64(),
            self.failures,
            l.p50,
            l.p90,
            l.p99,
            l.max
        )?;
        if let Some(cpu) = self.server_cpu_per_command {
            write!(
                f,
                "; server CPU {:.1} us/command",
                cpu.as_nanos() as f64 / 1000.0
            )?;
        }
        Ok(())
    }
}

/// What one worker counted in the measured window.
#[derive(Default)]
struct Tally {
    commands: u64,
    failures: u64,
    latencies: Vec<u32>,
}

/// Runs `work` on `parallel` threads: each calls it in a loop, timing each call; calls that end
/// inside the window after `warmup` are counted. `work` returns whether the call succeeded.
fn measure<W>(
    parallel: usize,
    warmup: Duration,
    duration: Duration,
    make_worker: impl Fn() -> io::Result<W>,
) -> io::Result<(Vec<Tally>, Duration)>
where
    W: FnMut() -> io::Result<bool> + Send + 'static,
{
    if parallel == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "run at least one client",
        ));
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::with_capacity(parallel);
    for _ in 0..parallel {
        let mut work = make_worker()?;
        let measuring = Arc::clone(&measuring);
        let stop = Arc::clone(&stop);
        handles.push(thread::spawn(move || -> io::Result<Tally> {
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let ok = work()?;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    tally.commands += 1;
                    if !ok {
                        tally.failures += 1;
                    }
                    let micros = started.elapsed().as_micros();
                    tally
                        .latencies
                        .push(u32::try_from(micros).unwrap_or(u32::MAX));
                }
            }
            Ok(tally)
        }));
    }
    thread::sleep(warmup);
    measuring.store(true, Ordering::Relaxed);
    let window = Instant::now();
    thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    let elapsed = window.elapsed();
    let mut tallies = Vec::with_capacity(parallel);
    for handle in handles {
        let tally = handle
            .join()
            .map_err(|_| io::Error::other("a benchmark thread panicked"))??;
        tallies.push(tally);
    }
    Ok((tallies, elapsed))
}

fn report(
    what: &'static str,
    parallel: usize,
    tallies: Vec<Tally>,
    elapsed: Duration,
) -> ExecReport {
    let mut latencies = Vec::new();
    let (mut commands, mut failures) = (0, 0);
    for tally in tallies {
        commands += tally.commands;
        failures += tally.failures;
        latencies.extend(tally.latencies);
    }
    ExecReport {
        what,
        parallel,
        commands,
        failures,
        elapsed,
        latency: Percentiles::of(&mut latencies),
        server_cpu_per_command: None,
    }
}

/// A connection that has presented the token.
pub(super) fn authenticated(target: impl Into<Target>, token: &Token) -> io::Result<Client> {
    let mut client = Client::connect_raw(target, IO_TIMEOUT).map_err(to_io)?;
    client
        .hello(Hello::with_credentials(token.as_bytes()))
        .map_err(to_io)?;
    Ok(client)
}

fn to_io(error: ClientError) -> io::Error {
    io::Error::other(error.to_string())
}

/// Runs one command on `stream` to its end: returns its EXIT (or, for a per-stream ERROR, the
/// error's code) and the output bytes received. An ERROR on stream 0 (the server is closing
/// the connection) is an `Other` error whose text is the code.
pub(super) fn run_one(
    client: &mut Client,
    stream: u32,
    request: &[u8],
) -> io::Result<(Result<Exit, String>, u64)> {
    client.send_raw(request)?;
    let mut output = 0u64;
    loop {
        let frame = client.recv_frame().map_err(to_io)?;
        let code = || {
            ErrorMessage::parse(&frame.payload).map_or("undecodable ERROR".to_string(), |message| {
                message.code.to_string()
            })
        };
        if frame.header.stream == 0 && frame.header.frame_type == FrameType::Error {
            return Err(io::Error::other(code()));
        }
        if frame.header.stream != stream {
            continue;
        }
        match frame.header.frame_type {
            FrameType::Stdout | FrameType::Stderr => output += frame.payload.len() as u64,
            FrameType::Exit => {
                let exit = Exit::parse(&frame.payload)
                    .map_err(|error| io::Error::other(error.to_string()))?;
                return Ok((Ok(exit), output));
            }
            FrameType::Error => return Ok((Err(code()), output)),
            _ => {}
        }
    }
}

pub(super) fn exec_frame(argv: &[String], stream: u32) -> Vec<u8> {
    let args: Vec<&[u8]> = argv.iter().map(|arg| arg.as_bytes()).collect();
    let mut wire = Vec::new();
    ExecRequest::new(args).encode(stream, &mut wire);
    wire
}

/// Runs commands on the server; see the module docs.
pub fn run_exec(config: &ExecConfig) -> io::Result<ExecReport> {
    if config.argv.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "name a command to run",
        ));
    }
    let cpu_before = config.server_pid.map(procstat::cpu_time).transpose()?;
    let (tallies, elapsed) = measure(config.parallel, config.warmup, config.duration, || {
        let mut client = authenticated(config.addr.as_str(), &config.token)?;
        let argv = config.argv.clone();
        let mut stream = 0u32;
        Ok(move || {
            stream = stream.wrapping_add(1).max(1);
            let request = exec_frame(&argv, stream);
            let (exit, _) = run_one(&mut client, stream, &request)?;
            Ok(exit.is_ok_and(|exit| exit.termination == Termination::Exited(0)))
        })
    })?;
    // CPU over warm-up and window alike: an estimate per command, not an exact figure.
    let cpu = match (config.server_pid, cpu_before) {
        (Some(pid), Some(before)) => Some(procstat::cpu_time(pid)?.saturating_sub(before)),
        _ => None,
    };
    let mut report = report("exec", config.parallel, tallies, elapsed);
    if let Some(cpu) = cpu {
        let window_share = elapsed.as_secs_f64() / (elapsed + config.warmup).as_secs_f64();
        let commands = report.commands.max(1) as f64;
        report.server_cpu_per_command = Some(Duration::from_secs_f64(
            cpu.as_secs_f64() * window_share / commands,
        ));
    }
    Ok(report)
}

/// The local reference run.
#[derive(Clone, Debug)]
pub struct SpawnConfig {
    /// Threads spawning at the same time.
    pub parallel: usize,
    /// The command.
    pub argv: Vec<String>,
    /// Time before measuring starts.
    pub warmup: Duration,
    /// Time measured.
    pub duration: Duration,
}

/// Runs the command locally with posix_spawn + waitpid; see the module docs.
pub fn run_local_spawn(config: &SpawnConfig) -> io::Result<ExecReport> {
    let Some((program, args)) = config.argv.split_first() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "name a command to run",
        ));
    };
    let (tallies, elapsed) = measure(config.parallel, config.warmup, config.duration, || {
        let program = program.clone();
        let args = args.to_vec();
        Ok(move || {
            let status = Command::new(&program)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?
                .wait()?;
            Ok(status.success())
        })
    })?;
    Ok(report(
        "local posix_spawn",
        config.parallel,
        tallies,
        elapsed,
    ))
}

/// A long stream to a slow reader, with an echo client alongside.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// Server address (framed protocol), `HOST:PORT`.
    pub addr: String,
    /// The server's token.
    pub token: Token,
    /// Output bytes the command writes (`head -c BYTES /dev/zero`); the server's output cap
    /// must allow them.
    pub bytes: u64,
    /// How fast the client reads, bytes per second (a slow reader keeps the server's output
    /// backpressure engaged).
    pub read_rate: u64,
    /// The server's pid, for its memory.
    pub server_pid: u32,
    /// TLS, if the server speaks it.
    pub tls: Option<super::BenchTls>,
}

/// What [`run_stream`] measured.
#[derive(Clone, Debug)]
pub struct StreamReport {
    /// Output bytes received.
    pub received: u64,
    /// How the command ended.
    pub exit: Option<Exit>,
    /// Time the stream took.
    pub elapsed: Duration,
    /// Server RSS before the stream, KiB.
    pub rss_before_kib: u64,
    /// Highest server RSS seen during it (sampled every 20 ms), KiB.
    pub rss_peak_kib: u64,
    /// 64-byte echo round trips during the stream, microseconds.
    pub echo_latency: Percentiles,
    /// Echo round trips completed during the stream.
    pub echoes: u64,
}

impl fmt::Display for StreamReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = self.echo_latency;
        write!(
            f,
            "stream of {} bytes in {:.1} s ({:.0} MB/s), exit {}; server RSS {} KiB before, {} KiB peak (+{} KiB); {} echoes of 64 B meanwhile, latency us p50 {} p90 {} p99 {} max {}",
            self.received,
            self.elapsed.as_secs_f64(),
            self.received as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e6,
            self.exit
                .map_or_else(|| "none".to_string(), |exit| exit.to_string()),
            self.rss_before_kib,
            self.rss_peak_kib,
            self.rss_peak_kib.saturating_sub(self.rss_before_kib),
            self.echoes,
            l.p50,
            l.p90,
            l.p99,
            l.max
        )
    }
}

/// Streams a large output to a slow reader; see the module docs.
pub fn run_stream(config: &StreamConfig) -> io::Result<StreamReport> {
    let rss_before_kib = procstat::rss_kib(config.server_pid)?;
    let done = Arc::new(AtomicBool::new(false));
    let echo = {
        let target = super::target(config.addr.as_str(), config.tls.as_ref());
        let mut client = Client::connect(target, IO_TIMEOUT).map_err(to_io)?;
        let done = Arc::clone(&done);
        thread::spawn(move || -> io::Result<Vec<u32>> {
            let payload = [0x5a; 64];
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                client.echo(&payload).map_err(to_io)?;
                latencies.push(u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX));
                // A client pinging every millisecond, not a flood competing for the loop.
                thread::sleep(Duration::from_millis(1));
            }
            Ok(latencies)
        })
    };
    let reader = {
        let target = super::target(config.addr.as_str(), config.tls.as_ref());
        let mut client = authenticated(target, &config.token)?;
        let request = exec_frame(
            &[
                "head".to_string(),
                "-c".to_string(),
                config.bytes.to_string(),
                "/dev/zero".to_string(),
            ],
            1,
        );
        let rate = config.read_rate.max(1);
        thread::spawn(move || -> io::Result<(Option<Exit>, u64, Duration)> {
            let started = Instant::now();
            client.send_raw(&request)?;
            let mut received = 0u64;
            loop {
                let frame = client.recv_frame().map_err(to_io)?;
                match frame.header.frame_type {
                    FrameType::Stdout | FrameType::Stderr => {
                        received += frame.payload.len() as u64;
                        // Pace the reading: never ahead of `rate` bytes per second.
                        let due = Duration::from_secs_f64(received as f64 / rate as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            thread::sleep(wait);
                        }
                    }
                    FrameType::Exit => {
                        let exit = Exit::parse(&frame.payload)
                            .map_err(|error| io::Error::other(error.to_string()))?;
                        return Ok((Some(exit), received, started.elapsed()));
                    }
                    FrameType::Error => return Ok((None, received, started.elapsed())),
                    _ => {}
                }
            }
        })
    };
    let mut rss_peak_kib = rss_before_kib;
    while !reader.is_finished() {
        rss_peak_kib = rss_peak_kib.max(procstat::rss_kib(config.server_pid)?);
        thread::sleep(Duration::from_millis(20));
    }
    let (exit, received, elapsed) = reader
        .join()
        .map_err(|_| io::Error::other("the reader panicked"))??;
    done.store(true, Ordering::Relaxed);
    let mut latencies = echo
        .join()
        .map_err(|_| io::Error::other("the echo client panicked"))??;
    let echoes = latencies.len() as u64;
    Ok(StreamReport {
        received,
        exit,
        elapsed,
        rss_before_kib,
        rss_peak_kib,
        echo_latency: Percentiles::of(&mut latencies),
        echoes,
    })
}
