//! Workloads whose client is a blocking one, run on one thread per connection: `bench get`,
//! `bench put` ([`FileClient`]) and `bench exec`.
//!
//! Each thread repeats one request on its own connection (closed loop). A request the server
//! refuses (an ERROR frame: NOT_FOUND, LIMIT_REACHED, ...) or that fails verification is
//! counted by kind and the thread goes on; a broken connection ends the thread. The report is
//! the same as the event-loop workloads' (see [`Report`]); the generator's CPU time is summed
//! over its threads.

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read, Seek, SeekFrom};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::exec::{authenticated, exec_frame, run_one};
use super::report::{
    Report, Stop, Value, count_error, cpu_of, io_kind, latency_histogram, own_cpu,
};
use super::{BenchTls, target, tls_setting};
use monoreactor::Token;
use monoreactor::client::ClientError;
use monoreactor::client::files::FileClient;
use monoreactor::proto::ErrorCode;
use monoreactor::proto::exec::Termination;

/// Bound on connecting and on the HELLO exchange.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A run of blocking clients.
#[derive(Clone, Debug)]
pub struct BlockingConfig {
    /// Server address (framed protocol), `HOST:PORT`.
    pub addr: String,
    /// The server's token, if it has one.
    pub token: Option<Token>,
    /// Connections, one thread each.
    pub connections: usize,
    /// File size for GET and PUT.
    pub size: u64,
    /// When the run stops.
    pub stop: Stop,
    /// Time before measuring starts.
    pub warmup: Duration,
    /// Server process, to report its CPU time per request.
    pub server_pid: Option<u32>,
    /// TLS, if the server speaks it.
    pub tls: Option<BenchTls>,
}

/// How one request failed.
pub enum Failure {
    /// The request failed; the connection can go on.
    Request(String),
    /// The connection is gone.
    Connection(String),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        match error {
            ClientError::Server { code, .. } => match code {
                ErrorCode::ServerBusy | ErrorCode::ShuttingDown | ErrorCode::Timeout => {
                    Failure::Connection(code.to_string())
                }
                code => Failure::Request(code.to_string()),
            },
            ClientError::Verify(_) => Failure::Request("verification failed".to_string()),
            ClientError::Io(error) => Failure::Connection(io_kind(&error)),
            ClientError::Closed { .. } => Failure::Connection("closed by server".to_string()),
            other => Failure::Connection(other.to_string()),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Failure {
        if error.kind() == ErrorKind::Other {
            Failure::Connection(error.to_string())
        } else {
            Failure::Connection(io_kind(&error))
        }
    }
}

struct Shared {
    measuring: AtomicBool,
    stop: AtomicBool,
    completed: AtomicU64,
    alive: AtomicUsize,
}

/// Runs `make(i)`'s worker on a thread per connection; see the module docs. `make` runs here,
/// before any thread starts: its error (a refused connection) fails the run.
fn run_threads<W>(
    config: &BlockingConfig,
    what: &str,
    unit: &'static str,
    bytes_per_request: u64,
    mut settings: Vec<(&'static str, Value)>,
    make: impl Fn(usize) -> Result<W, String>,
) -> Result<Report, String>
where
    W: FnMut() -> Result<(), Failure> + Send + 'static,
{
    if config.connections == 0 {
        return Err("run at least one connection".to_string());
    }
    let workers = (0..config.connections)
        .map(&make)
        .collect::<Result<Vec<W>, String>>()?;
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        alive: AtomicUsize::new(workers.len()),
    });
    let limit = match config.stop {
        Stop::Requests(count) => count,
        Stop::After(_) => u64::MAX,
    };
    let mut handles = Vec::with_capacity(workers.len());
    for mut work in workers {
        let shared = Arc::clone(&shared);
        handles.push(thread::spawn(move || {
            let mut latency = latency_histogram();
            let mut errors = BTreeMap::new();
            while !shared.stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match work() {
                    Ok(()) => {
                        if shared.measuring.load(Ordering::Relaxed)
                            && !shared.stop.load(Ordering::Relaxed)
                        {
                            let done = shared.completed.fetch_add(1, Ordering::Relaxed);
                            if done < limit {
                                let nanos = started.elapsed().as_nanos();
                                latency.saturating_record(u64::try_from(nanos).unwrap_or(u64::MAX));
                                crate::live::request();
                            }
                            if done + 1 >= limit {
                                shared.stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(Failure::Request(kind)) => {
                        count_error(&mut errors, &kind, 1);
                        crate::live::error();
                    }
                    Err(Failure::Connection(kind)) => {
                        count_error(&mut errors, &kind, 1);
                        crate::live::error();
                        break;
                    }
                }
            }
            shared.alive.fetch_sub(1, Ordering::Relaxed);
            (latency, errors)
        }));
    }
    let all_failed = || shared.alive.load(Ordering::Relaxed) == 0;
    let warm_until = Instant::now() + config.warmup;
    while Instant::now() < warm_until && !all_failed() && !crate::live::interrupted() {
        thread::sleep(Duration::from_millis(2));
    }
    let cpu_at_start = (cpu_of(config.server_pid), own_cpu());
    shared.measuring.store(true, Ordering::Relaxed);
    let window = Instant::now();
    let mut ended_early = None;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if crate::live::interrupted() {
            ended_early = Some(crate::live::INTERRUPTED.to_string());
            break;
        }
        if let Stop::After(duration) = config.stop {
            if window.elapsed() >= duration {
                break;
            }
        }
        if all_failed() {
            ended_early = Some("every connection failed: did the server go away?".to_string());
            break;
        }
        thread::sleep(Duration::from_millis(2));
    }
    shared.stop.store(true, Ordering::Relaxed);
    let elapsed = match config.stop {
        Stop::After(duration) => window.elapsed().min(duration),
        Stop::Requests(_) => window.elapsed(),
    };
    let since = |start: Option<Duration>, end: Option<Duration>| match (start, end) {
        (Some(start), Some(end)) => Some(end.saturating_sub(start)),
        _ => None,
    };
    let server_cpu = since(cpu_at_start.0, cpu_of(config.server_pid));
    let client_cpu = since(cpu_at_start.1, own_cpu());
    let mut latency: Histogram<u64> = latency_histogram();
    let mut errors = BTreeMap::new();
    for handle in handles {
        let (theirs, their_errors) = handle
            .join()
            .map_err(|_| "a benchmark thread panicked".to_string())?;
        latency
            .add(&theirs)
            .map_err(|error| format!("merging latencies: {error:?}"))?;
        for (kind, count) in their_errors {
            count_error(&mut errors, &kind, count);
        }
    }
    settings.insert(0, ("connections", Value::Int(config.connections as u64)));
    settings.extend(tls_setting(config.tls.as_ref()));
    let requests = latency.len();
    Ok(Report {
        what: what.to_string(),
        addr: config.addr.clone(),
        settings,
        unit,
        requests,
        bytes: requests * bytes_per_request,
        elapsed,
        errors,
        retried: 0,
        latency,
        server_cpu,
        client_cpu,
        client_threads: config.connections,
        ended_early,
    })
}

/// `size` zero bytes as a seekable reader: the content of every benchmark file.
struct Zeros {
    position: u64,
    len: u64,
}

impl Read for Zeros {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.position)).min(buf.len() as u64) as usize;
        buf[..n].fill(0);
        self.position += n as u64;
        Ok(n)
    }
}

impl Seek for Zeros {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.position = match to {
            SeekFrom::Start(offset) => offset,
            SeekFrom::End(back) => self.len.saturating_add_signed(back),
            SeekFrom::Current(by) => self.position.saturating_add_signed(by),
        };
        Ok(self.position)
    }
}

/// BLAKE3 of `len` zero bytes, or [`INTERRUPTED`](crate::live::INTERRUPTED) if Ctrl-C came
/// first: at `-s 1T` this takes minutes before the first request, and the SIGINT that asks
/// the run to stop must stop it too.
fn zeros_hash(len: u64) -> Result<[u8; 32], String> {
    let mut hasher = blake3::Hasher::new();
    let chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        if crate::live::interrupted() {
            return Err(crate::live::INTERRUPTED.to_string());
        }
        let n = left.min(chunk.len() as u64) as usize;
        hasher.update(&chunk[..n]);
        left -= n as u64;
    }
    Ok(*hasher.finalize().as_bytes())
}

fn connect(config: &BlockingConfig) -> Result<FileClient, String> {
    let target = target(config.addr.as_str(), config.tls.as_ref());
    FileClient::connect(target, config.token.as_ref(), CONNECT_TIMEOUT)
        .map_err(|error| error.to_string())
}

fn put_zeros(client: &mut FileClient, path: &str, len: u64, hash: [u8; 32]) -> Result<(), Failure> {
    let mut source = Zeros { position: 0, len };
    client.put(path, &mut source, len, hash, false, &mut |_, _| {})?;
    Ok(())
}

/// The file `bench get` downloads and `bench put` uploads: this size, in the server's root.
fn bench_path(kind: &str, size: u64, index: Option<usize>) -> String {
    match index {
        Some(index) => format!(
            "monoreactor-bench-{kind}-{size}-{}-{index}",
            std::process::id()
        ),
        None => format!("monoreactor-bench-{kind}-{size}"),
    }
}

/// `bench get`: every connection downloads the same file of `size` bytes, verified against its
/// BLAKE3, to nowhere. The file is uploaded first (zeros) and removed afterwards.
pub fn run_get(config: &BlockingConfig) -> Result<Report, String> {
    let path = bench_path("get", config.size, None);
    let hash = zeros_hash(config.size)?;
    let mut setup = connect(config)?;
    put_zeros(&mut setup, &path, config.size, hash).map_err(|failure| match failure {
        Failure::Request(kind) | Failure::Connection(kind) => {
            format!("cannot upload the file to download ({path}): {kind}")
        }
    })?;
    let size = config.size;
    let report = run_threads(
        config,
        "get",
        "transfer",
        size,
        vec![("size", Value::Int(size))],
        |_| {
            let mut client = connect(config)?;
            let path = path.clone();
            Ok(move || {
                let outcome = client.get(
                    &path,
                    0,
                    blake3::Hasher::new(),
                    &mut io::sink(),
                    &mut |_, _| {},
                )?;
                if outcome.info.size != size || outcome.hash != hash {
                    return Err(Failure::Request("wrong content".to_string()));
                }
                Ok(())
            })
        },
    );
    let _ = connect(config)
        .and_then(|mut client| client.delete(&path).map_err(|error| error.to_string()));
    report
}

/// `bench put`: every connection uploads `size` bytes (zeros, verified by the server's DIGEST)
/// to a path of its own, again and again. The files are removed afterwards.
pub fn run_put(config: &BlockingConfig) -> Result<Report, String> {
    let hash = zeros_hash(config.size)?;
    let size = config.size;
    let report = run_threads(
        config,
        "put",
        "transfer",
        size,
        vec![("size", Value::Int(size))],
        |index| {
            let mut client = connect(config)?;
            let path = bench_path("put", size, Some(index));
            Ok(move || put_zeros(&mut client, &path, size, hash))
        },
    );
    if let Ok(mut client) = connect(config) {
        for index in 0..config.connections {
            let _ = client.delete(&bench_path("put", size, Some(index)));
        }
    }
    report
}

/// `bench exec`: every connection runs `argv` on the server, one command after another; a
/// command counts when it exits 0 (any other end is an error of that kind).
pub fn run_exec(config: &BlockingConfig, argv: &[String]) -> Result<Report, String> {
    let token = config
        .token
        .clone()
        .ok_or("bench exec needs the server's token")?;
    let command = argv.join(" ");
    run_threads(
        config,
        "exec",
        "command",
        0,
        vec![("command", Value::Text(command))],
        |_| {
            let target = target(config.addr.as_str(), config.tls.as_ref());
            let mut client = authenticated(target, &token).map_err(|error| error.to_string())?;
            let argv = argv.to_vec();
            let mut stream = 0u32;
            Ok(move || {
                stream = stream.wrapping_add(1).max(1);
                let request = exec_frame(&argv, stream);
                match run_one(&mut client, stream, &request)?.0 {
                    Ok(exit) => match exit.termination {
                        Termination::Exited(0) => Ok(()),
                        Termination::Exited(code) => Err(Failure::Request(format!("exit {code}"))),
                        Termination::Signaled { signal, .. } => {
                            Err(Failure::Request(format!("signal {signal}")))
                        }
                    },
                    Err(code) => Err(Failure::Request(code)),
                }
            })
        },
    )
}
