//! Before a run: one connection that checks the address speaks what the run will speak
//! (framed, raw echo, redis, UDP echo; over TLS or not), so a wrong port gets a hint instead
//! of a failure from the middle of the run; and where each kind of run goes without `--addr`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use monoreactor::client::{Client, ClientError, TlsFailure};
use monoreactor::proto::{Decoder, ErrorMessage, FrameType};
use monoreactor::{DEFAULT_ECHO_ADDR, DEFAULT_FRAMED_ADDR};
use monoreactor_bench::tls::{NotTls, connect_blocking, rustls_error};
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
        BenchProtocol::Raw => check_raw_echo(addr, tls, TIMEOUT),
        BenchProtocol::Redis => check_redis(addr, TIMEOUT),
    }
}

/// [`check`] for the framed protocol, returning the largest frame payload the server takes
/// from this connection (HELLO_OK's, without credentials as the run's connections).
pub fn check_framed(addr: SocketAddr, tls: Option<&BenchTls>) -> Result<u32, String> {
    Client::connect_with(
        monoreactor_bench::target(addr.to_string(), tls),
        &[],
        Duration::from_secs(5),
    )
    .map(|(_, hello_ok)| hello_ok.max_payload_len)
    .map_err(|error| explain(&error, &TokenSource::None, None))
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

/// Checks, with one connection, that `addr` completes a TLS handshake with `tls`.
pub fn check_handshake(addr: SocketAddr, tls: &BenchTls) -> Result<(), String> {
    let mut stream = connect_blocking(addr, tls, Duration::from_secs(5))
        .map_err(|error| handshake_failure(addr, tls, error))?;
    stream.conn.send_close_notify();
    // Best effort: the check is done.
    let _ = stream.conn.write_tls(&mut stream.sock);
    Ok(())
}

/// A failed TLS connect to `addr` in words a user can act on: a port that does not speak
/// TLS ([`NotTls`]), the ALPN offered refused, and the library client's words for the rest
/// (a certificate not trusted, expired, for another name; a client certificate refused).
fn handshake_failure(addr: SocketAddr, tls: &BenchTls, error: io::Error) -> String {
    if let Some(not_tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<NotTls>())
    {
        return format!("{addr} {not_tls}");
    }
    let Some(failure) = rustls_error(&error) else {
        return match error.kind() {
            ErrorKind::UnexpectedEof => {
                format!("{addr} closed the connection during the TLS handshake")
            }
            _ => ClientError::Connect {
                addr: addr.to_string(),
                source: error,
            }
            .to_string(),
        };
    };
    match failure {
        rustls::Error::NoApplicationProtocol
        | rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol) => {
            let offered: Vec<String> = tls
                .config
                .alpn_protocols
                .iter()
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect();
            format!(
                "{addr} accepts no ALPN protocol offered ({}): --tls-alpn NAME offers another",
                if offered.is_empty() {
                    "none".to_string()
                } else {
                    offered.join(", ")
                }
            )
        }
        other => {
            let expected = tls.server_name.to_str().into_owned();
            format!(
                "{addr}: {}",
                TlsFailure::from_rustls(other.clone(), &expected)
            )
        }
    }
}

/// Sends a few bytes and expects them back, over TLS if given. A framed server answers them
/// (they are not a valid header) with an ERROR frame, which gives it away.
fn check_raw_echo(
    addr: SocketAddr,
    tls: Option<&BenchTls>,
    timeout: Duration,
) -> Result<(), String> {
    match tls {
        Some(tls) => {
            let mut stream = connect_blocking(addr, tls, timeout)
                .map_err(|error| handshake_failure(addr, tls, error))?;
            probe_echo(&mut stream, addr)
        }
        None => {
            let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|error| {
                ClientError::Connect {
                    addr: addr.to_string(),
                    source: error,
                }
                .to_string()
            })?;
            let io_error = |error: io::Error| format!("{addr}: {error}");
            stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
            stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
            probe_echo(&mut stream, addr)
        }
    }
}

/// [`check_raw_echo`] on a connected stream (its timeouts set).
fn probe_echo(stream: &mut (impl Read + Write), addr: SocketAddr) -> Result<(), String> {
    const PROBE: &[u8] = b"monoreactor raw echo probe";
    let timeout = Duration::from_secs(5);
    let framed_hint = || {
        format!(
            "{addr} speaks the framed protocol, not raw echo: use `bench echo` without --raw, or the raw echo port ({} by default)",
            DEFAULT_ECHO_ADDR.port()
        )
    };
    let io_error = |error: io::Error| format!("{addr}: {error}");
    stream.write_all(PROBE).map_err(io_error)?;
    stream.flush().map_err(io_error)?;
    let mut answer = Vec::new();
    let mut chunk = [0; 1024];
    while answer.len() < PROBE.len() {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            // A timeout, or (under TLS) an end without close_notify: judged by what came.
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::UnexpectedEof
                ) =>
            {
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
