//! Before a run: one connection that checks the address speaks what the run will speak
//! (framed, raw echo, redis, UDP echo), so a wrong port gets a hint instead of a failure from
//! the middle of the run; and where each kind of run goes without `--addr`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use monoreactor::client::{Client, ClientError};
use monoreactor::proto::{Decoder, ErrorMessage, FrameType};
use monoreactor::{DEFAULT_ECHO_ADDR, DEFAULT_FRAMED_ADDR};
use monoreactor_bench::{BenchProtocol, BenchTls};

use crate::explain::explain;
use crate::token::TokenSource;

/// Checks, with one connection, that `addr` speaks what the benchmark will speak, so a wrong
/// port gets a hint instead of a failure from the middle of the run.
pub fn check(
    addr: SocketAddr,
    protocol: BenchProtocol,
    tls: Option<&BenchTls>,
) -> Result<(), String> {
    const TIMEOUT: Duration = Duration::from_secs(5);
    match protocol {
        BenchProtocol::Framed => {
            Client::connect(monoreactor_bench::target(addr.to_string(), tls), TIMEOUT)
                .map(drop)
                .map_err(|error| explain(&error, &TokenSource::None, None))
        }
        BenchProtocol::Raw => check_raw_echo(addr, TIMEOUT),
        BenchProtocol::Redis => check_redis(addr, TIMEOUT),
    }
}

/// The protocol a `bench echo` or `bench idle` speaks: framed unless told otherwise.
pub fn protocol(raw: bool, redis: bool) -> BenchProtocol {
    match (raw, redis) {
        (true, _) => BenchProtocol::Raw,
        (_, true) => BenchProtocol::Redis,
        _ => BenchProtocol::Framed,
    }
}

/// Where a benchmark of `protocol` goes without `--addr`.
pub fn default_addr(protocol: BenchProtocol) -> SocketAddr {
    match protocol {
        BenchProtocol::Framed => DEFAULT_FRAMED_ADDR,
        BenchProtocol::Raw => DEFAULT_ECHO_ADDR,
        BenchProtocol::Redis => SocketAddr::from(([127, 0, 0, 1], 6379)),
    }
}

/// Sends a RESP PING and expects redis's `+PONG`.
fn check_redis(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
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
fn check_raw_echo(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
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

/// Sends one datagram and expects it back, so a wrong address gets a hint instead of a run
/// of losses.
pub fn check_udp_echo(addr: SocketAddr) -> Result<(), String> {
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
