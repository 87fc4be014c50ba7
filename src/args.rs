//! The values flags take, parsed once by clap so every command sees typed settings: addresses
//! ([`Addr`], [`Endpoint`], and a client's [`ServerAddr`]), durations with units
//! ([`duration`], [`Secs`]) and counts and sizes with units ([`at_least_one`], [`byte_size`],
//! [`byte_count`]). A value that does not parse is a usage error that names its flag and says
//! in words what is wrong. The flags every client command shares are here too, in one place,
//! and flattened into each command: [`TlsArgs`]; and whether `-q` was given ([`quiet`]).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use monoreactor::DEFAULT_FRAMED_ADDR;
use monoreactor::client::tls::{TLS_SCHEME, Target, split_scheme};

/// Whether `-q` was given to a client command: no progress bars (the file commands' bars ask
/// [`quiet`] before drawing), and only errors logged.
static QUIET: AtomicBool = AtomicBool::new(false);

/// Sets what [`quiet`] answers; `main` calls it once, from the global `-q`.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether the user asked for quiet (`-q`): a progress bar should not be drawn.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A count that must be at least 1 (clap puts the flag's name before the error).
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// A whole number from `min` to `max`, said in words when it is not one (clap puts the
/// flag's name before the error): `1e3` is "not a whole number", never Rust's "invalid digit
/// found in string".
pub fn count_in(text: &str, min: usize, max: usize) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(count) if count < min => Err(format!("must be at least {min}")),
        Ok(count) if count > max => Err(format!("at most {max}")),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// A socket address that must name its port, given as `IP:PORT`, `[IPV6]:PORT` or
/// `HOST:PORT` (`localhost:7878`): where `serve` listens, and the metrics port `stats` reads
/// (neither has a default port a bare host could take). Read as [`host_and_port`] reads a
/// client's, so the errors are the same words: a name that does not resolve is
/// [`AddrError::Unresolved`] (`main` makes it a client's 255, a server's "cannot start").
#[derive(Clone, Copy)]
pub struct Addr(pub SocketAddr);

impl FromStr for Addr {
    type Err = AddrError;
    fn from_str(text: &str) -> Result<Addr, AddrError> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(Addr(addr));
        }
        if !text.trim().is_empty() && !port_written(text) {
            // `::1` and `[::1]` alike are shown as they must be written: `[::1]:7878`.
            let bare = text
                .strip_prefix('[')
                .and_then(|inner| inner.strip_suffix(']'))
                .unwrap_or(text);
            let host = match bare.parse::<IpAddr>() {
                Ok(IpAddr::V6(ip)) => Some(format!("[{ip}]")),
                Ok(IpAddr::V4(ip)) => Some(ip.to_string()),
                // A name alone; anything else (`[::1`) is host_and_port's to explain.
                Err(_) => (!text.contains(['[', ']'])).then(|| text.to_string()),
            };
            if let Some(host) = host {
                return Err(AddrError::Syntax(format!(
                    "`{text}` has no port: write HOST:PORT, e.g. {host}:{}",
                    DEFAULT_FRAMED_ADDR.port()
                )));
            }
        }
        host_and_port(text, DEFAULT_FRAMED_ADDR.port()).map(|(_, addr)| Addr(addr))
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a server address could not be used. Resolution failing is not a usage error but the
/// network's (exit 255, as ssh's "Could not resolve hostname"), so `main` tells the two apart
/// by this type, which clap keeps as its error's source.
#[derive(Debug, Clone, PartialEq)]
pub enum AddrError {
    /// The text is not an address: a usage error.
    Syntax(String),
    /// The name does not resolve (`cannot resolve NAME`).
    Unresolved(String),
}

impl fmt::Display for AddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrError::Syntax(message) | AddrError::Unresolved(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for AddrError {}

/// `HOST`, `HOST:PORT`, `IP`, `IP:PORT`, `IPV6`, `[IPV6]` or `[IPV6]:PORT`, as nc, ssh and
/// redis-cli take them: without a port, `default_port`. The host as it should be written
/// with the port (`localhost:7878`, `[::1]:7878`), and what it resolves to (IPv4 first, as
/// `monoreactor::client::resolve_addr` does).
pub fn host_and_port(text: &str, default_port: u16) -> Result<(String, SocketAddr), AddrError> {
    let syntax = |why: &str| AddrError::Syntax(format!("`{text}` is not an address: {why}"));
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((text.to_string(), addr));
    }
    if let Some(scoped) = scoped_ipv6(text, default_port)? {
        return Ok((scoped.to_string(), SocketAddr::V6(scoped)));
    }
    // An IP without a port: `127.0.0.1`, `::1` or `[::1]`.
    let bare = text
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        let addr = SocketAddr::new(ip, default_port);
        return Ok((addr.to_string(), addr));
    }
    let (host, port) = match text.rsplit_once(':') {
        None => (text, default_port),
        Some((host, _)) if host.contains(':') || host.starts_with('[') => {
            return Err(syntax("an IPv6 address with a port is written [ADDR]:PORT"));
        }
        Some((host, port)) => (
            host,
            port.parse::<u16>().map_err(|_| {
                syntax(&format!(
                    "the port `{port}` is not a number from 0 to 65535"
                ))
            })?,
        ),
    };
    if host.is_empty() {
        return Err(syntax("the host is missing"));
    }
    let resolved: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|_| AddrError::Unresolved(format!("cannot resolve {host}")))?
        .collect();
    let addr = resolved
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| AddrError::Unresolved(format!("cannot resolve {host}")))?;
    Ok((format!("{host}:{port}"), addr))
}

/// A link-local IPv6 address with its zone, as ssh and ping take it: `fe80::1%eth0`,
/// `[fe80::1%eth0]:7000` (an interface's name or its index). `None` if `text` has no zone.
fn scoped_ipv6(text: &str, default_port: u16) -> Result<Option<SocketAddrV6>, AddrError> {
    let syntax = |why: String| AddrError::Syntax(format!("`{text}` is not an address: {why}"));
    let (inner, port) = match text.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inner, "")) => (inner, default_port),
            Some((inner, port)) => {
                let port = port.strip_prefix(':').unwrap_or(port);
                let port = port.parse::<u16>().map_err(|_| {
                    syntax(format!("the port `{port}` is not a number from 0 to 65535"))
                })?;
                (inner, port)
            }
            None => return Ok(None),
        },
        None => (text, default_port),
    };
    let Some((ip, zone)) = inner.split_once('%') else {
        return Ok(None);
    };
    let Ok(ip) = ip.parse::<Ipv6Addr>() else {
        return Ok(None);
    };
    let scope = match zone.parse::<u32>() {
        Ok(index) => index,
        Err(_) => {
            let name = std::ffi::CString::new(zone)
                .map_err(|_| syntax(format!("no network interface `{zone}`")))?;
            // SAFETY: if_nametoindex(3) reads the NUL-terminated name and nothing else.
            match unsafe { libc::if_nametoindex(name.as_ptr()) } {
                0 => return Err(syntax(format!("no network interface `{zone}`"))),
                index => index,
            }
        }
    };
    Ok(Some(SocketAddrV6::new(ip, port, 0, scope)))
}

/// Whether `text`, as [`host_and_port`] reads it, names a port: `HOST:PORT`, `IP:PORT` or
/// `[IPV6]:PORT`, not `HOST`, `IP`, `IPV6` or `[IPV6]`.
fn port_written(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match text.strip_prefix('[') {
        Some(bracketed) => bracketed.contains("]:"),
        // `fe80::1%eth0` is an IPv6 address (with its zone), never HOST:PORT.
        None => text.parse::<IpAddr>().is_err() && !text.contains('%') && text.contains(':'),
    }
}

/// An address or `off`.
#[derive(Clone, Copy)]
pub struct Endpoint(pub Option<SocketAddr>);

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

/// What `--help` says about every duration flag, in one place.
pub const DURATION_UNITS: &str = "a number with an optional unit ms, s, m, h (500ms, 2s, 1.5m, 1h, 1h30m); a bare number is seconds";

/// The longest duration any flag takes: far beyond any timeout, and small enough that
/// `Instant + duration` never overflows.
const MAX_DURATION_SECS: f64 = 1e9;

/// A duration: `500ms`, `2s`, `1.5m`, `1h`, a sum of those as systemd and Go write it
/// (`1h30m`, `1m 30s`), or a bare number of seconds (`5`, `0.25`), as [`DURATION_UNITS`]
/// says; 0 is allowed (see [`Secs`] for flags that need more).
pub fn duration(text: &str) -> Result<Duration, String> {
    let wrong = || format!("invalid duration \"{text}\": expected {DURATION_UNITS}");
    let number_char = |c: char| c.is_ascii_digit() || c == '.';
    let mut rest = text.trim();
    let mut seconds = 0.0;
    let mut parts = 0;
    while !rest.is_empty() {
        let (number, after) = rest.split_at(rest.find(|c| !number_char(c)).unwrap_or(rest.len()));
        let (unit, next) = after.split_at(after.find(number_char).unwrap_or(after.len()));
        let scale = match unit.trim().to_ascii_lowercase().as_str() {
            "ms" => 1e-3,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hour" | "hours" => 3600.0,
            // A bare number is seconds only alone: in `1h30` the 30 could be either.
            "" if parts == 0 && next.is_empty() => 1.0,
            _ => return Err(wrong()),
        };
        // `f64::parse` also takes "inf", "NaN" and "1e3": only digits and one point here.
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(wrong());
        }
        let value: f64 = number.parse().map_err(|_| wrong())?;
        seconds += value * scale;
        parts += 1;
        rest = next;
    }
    if parts == 0 {
        return Err(wrong());
    }
    if seconds > MAX_DURATION_SECS {
        return Err(format!(
            "invalid duration \"{text}\": at most {MAX_DURATION_SECS:e} seconds"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A duration above 0, as [`duration`] reads it: a timeout or a time limit, which 0 would
/// make meaningless.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Secs(pub Duration);

impl FromStr for Secs {
    type Err = String;
    fn from_str(text: &str) -> Result<Secs, String> {
        let value = duration(text)?;
        if value.is_zero() {
            return Err(format!("invalid duration \"{text}\": must be above 0"));
        }
        Ok(Secs(value))
    }
}

/// In seconds, as a bare number (which [`duration`] reads back as seconds).
impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// A size in bytes: `4096`, `64K`, `1M`, `16G`, `1T`, `1.5M`, as `monoreactor --help` says:
/// K, M, G, T (and KiB...) are powers of 1024, as in dd and truncate, KB, MB, GB, TB powers of
/// 1000. 0 is allowed (see [`byte_count`] for flags that need at least 1).
pub fn byte_size(text: &str) -> Result<u64, String> {
    let wrong =
        || format!("invalid size \"{text}\": expected a number with an optional unit K, M, G, T");
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    // K, KiB: 1024; KB: 1000 (as dd); the letter's case does not matter.
    let (power, base): (u32, u64) = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => (0, 1),
        "K" | "KIB" => (1, 1024),
        "M" | "MIB" => (2, 1024),
        "G" | "GIB" => (3, 1024),
        "T" | "TIB" => (4, 1024),
        "KB" => (1, 1000),
        "MB" => (2, 1000),
        "GB" => (3, 1000),
        "TB" => (4, 1000),
        _ => return Err(wrong()),
    };
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(wrong());
    }
    let multiplier = base.pow(power);
    let too_large = || format!("invalid size \"{text}\": more than {} bytes", u64::MAX);
    match number.split_once('.') {
        None => number
            .parse::<u64>()
            .map_err(|_| too_large())?
            .checked_mul(multiplier)
            .ok_or_else(too_large),
        Some((whole, fraction)) => {
            // 1.5M: whole and fraction computed apart, in integers, so no precision is lost
            // below 2^53; the fraction's bytes are rounded down.
            let whole: u64 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| too_large())?
            };
            let digits = fraction.len().min(18);
            let fraction: u64 = if digits == 0 {
                0
            } else {
                fraction[..digits].parse().map_err(|_| wrong())?
            };
            let part = u128::from(fraction) * u128::from(multiplier) / 10u128.pow(digits as u32);
            whole
                .checked_mul(multiplier)
                .and_then(|bytes| bytes.checked_add(u64::try_from(part).ok()?))
                .ok_or_else(too_large)
        }
    }
}

/// A size of at least 1 byte, as [`byte_size`] reads it (clap puts the flag's name before
/// the error).
pub fn byte_count(text: &str) -> Result<u64, String> {
    match byte_size(text)? {
        0 => Err(format!("invalid size \"{text}\": must be at least 1 byte")),
        bytes => Ok(bytes),
    }
}

/// A size as [`byte_size`] reads it, for a flag held in a `u32` (a frame length).
pub fn byte_size_u32(text: &str) -> Result<u32, String> {
    let bytes = byte_size(text)?;
    u32::try_from(bytes).map_err(|_| format!("invalid size \"{text}\": at most {} bytes", u32::MAX))
}

/// A size as [`byte_size`] reads it, for a flag held in a `usize` (memory).
pub fn byte_size_usize(text: &str) -> Result<usize, String> {
    let bytes = byte_size(text)?;
    usize::try_from(bytes)
        .map_err(|_| format!("invalid size \"{text}\": at most {} bytes", usize::MAX))
}

/// A client command's server address: `HOST:PORT`, or `HOST` alone for the framed protocol's
/// default port, or `tls://HOST[:PORT]` to ask for TLS (the same as `--tls`); see
/// [`host_and_port`]. It is resolved when parsed: a typo is a usage error (2), a name that
/// does not resolve a failure of the network (255, [`AddrError::Unresolved`]). The host is
/// kept as typed, because a TLS server's certificate names the host, not its address.
#[derive(Clone)]
pub struct ServerAddr {
    /// `HOST:PORT` as typed, without `tls://`, the default port added if it had none.
    pub text: String,
    /// What it resolved to.
    pub addr: SocketAddr,
    /// Whether it was written `tls://...`.
    pub tls: bool,
    /// Whether a port was written: a command whose default port is not the framed one
    /// (`bench echo --raw`) puts its own in with [`ServerAddr::or_port`].
    pub port_given: bool,
}

impl ServerAddr {
    /// This address, with `port` if none was written.
    pub fn or_port(mut self, port: u16) -> ServerAddr {
        if !self.port_given {
            self.addr.set_port(port);
            let host = self
                .text
                .rsplit_once(':')
                .map_or(self.text.as_str(), |(host, _)| host);
            self.text = format!("{host}:{port}");
        }
        self
    }
}

impl From<SocketAddr> for ServerAddr {
    fn from(addr: SocketAddr) -> ServerAddr {
        ServerAddr {
            text: addr.to_string(),
            addr,
            tls: false,
            port_given: true,
        }
    }
}

impl FromStr for ServerAddr {
    type Err = AddrError;
    fn from_str(text: &str) -> Result<ServerAddr, AddrError> {
        let (tls, rest) = split_scheme(text);
        if let Some((scheme, _)) = rest.split_once("://") {
            return Err(AddrError::Syntax(format!(
                "`{scheme}://` is not a scheme monoreactor knows: write HOST:PORT, or tls://HOST:PORT for TLS"
            )));
        }
        let (text, addr) = host_and_port(rest, DEFAULT_FRAMED_ADDR.port())?;
        Ok(ServerAddr {
            text,
            addr,
            tls,
            port_given: port_written(rest),
        })
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            f.write_str(TLS_SCHEME)?;
        }
        f.write_str(&self.text)
    }
}

/// The TLS flags every client command takes (flattened into each one's flags), for the
/// framed protocol inside TLS 1.3. Any of them but `--tls` implies `--tls`.
#[derive(Args, Clone, Default)]
pub struct TlsArgs {
    /// Speak TLS to the server (so does an address written tls://HOST:PORT). The server's
    /// certificate must name the address's host (a DNS name, or an IP address as an IP SAN)
    /// and be signed by a CA you trust (the system's, or --tls-ca).
    #[arg(long, help_heading = "TLS")]
    pub tls: bool,
    /// PEM file of the CA certificates to trust instead of the system's; implies --tls.
    #[arg(long, value_name = "PATH", help_heading = "TLS")]
    pub tls_ca: Option<PathBuf>,
    /// Accept any server certificate, unchecked. Exists for tests only: anyone between you
    /// and the server can read and change the connection. Prints a warning; implies --tls.
    #[arg(long, conflicts_with = "tls_ca", help_heading = "TLS")]
    pub tls_insecure: bool,
    /// PEM file of a client certificate (its chain) to present when the server asks for one;
    /// needs --tls-key; implies --tls.
    #[arg(long, value_name = "PATH", requires = "tls_key", help_heading = "TLS")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "PATH", requires = "tls_cert", help_heading = "TLS")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// Whether TLS is asked for, by a flag or by `addr`'s `tls://`.
    pub fn wanted(&self, addr: &ServerAddr) -> bool {
        addr.tls
            || self.tls
            || self.tls_ca.is_some()
            || self.tls_insecure
            || self.tls_cert.is_some()
    }

    /// Where to connect and how: `addr`, over TLS if asked for (the configuration built from
    /// these flags; `--tls-insecure` warns here, once).
    pub fn target(&self, addr: &ServerAddr) -> Result<Target, String> {
        let target = Target::plain(addr.text.clone());
        if !self.wanted(addr) {
            return Ok(target);
        }
        Ok(target.with_tls(Some(crate::tls::client_config(self)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units_and_decimal_ones_spelled_kb() {
        assert_eq!(byte_size("4096"), Ok(4096));
        assert_eq!(byte_size("0"), Ok(0));
        assert_eq!(byte_size("64K"), Ok(64 << 10));
        assert_eq!(byte_size("64k"), Ok(64 << 10));
        assert_eq!(byte_size("64KiB"), Ok(64 << 10));
        assert_eq!(byte_size("64KB"), Ok(64_000));
        assert_eq!(byte_size("1M"), Ok(1 << 20));
        assert_eq!(byte_size("1MB"), Ok(1_000_000));
        assert_eq!(byte_size("16G"), Ok(16 << 30));
        assert_eq!(byte_size("2T"), Ok(2 << 40));
        assert_eq!(byte_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(byte_size("1.5M"), Ok(3 << 19));
        assert_eq!(byte_size("0.5K"), Ok(512));
        assert_eq!(byte_size("12B"), Ok(12));
        assert_eq!(byte_size(" 7 "), Ok(7));
    }

    #[test]
    fn a_wrong_size_is_said_in_words() {
        for text in [
            "16X",
            "",
            "K",
            "1.2.3K",
            "-1",
            "1e3",
            "inf",
            "12 apples",
            "0x10",
        ] {
            let error = byte_size(text).expect_err(text);
            assert_eq!(
                error,
                format!(
                    "invalid size \"{text}\": expected a number with an optional unit K, M, G, T"
                )
            );
        }
        assert!(
            byte_size("16777216T")
                .expect_err("overflow")
                .contains("more than")
        );
        assert!(
            byte_size("99999999999999999999")
                .expect_err("overflow")
                .contains("more than")
        );
        assert!(
            byte_count("0")
                .expect_err("zero")
                .contains("at least 1 byte")
        );
        assert!(
            byte_size_u32("4G")
                .expect_err("u32")
                .contains("at most 4294967295")
        );
        assert_eq!(byte_size_u32("16M"), Ok(16 << 20));
        assert_eq!(byte_size_usize("1K"), Ok(1024));
    }

    #[test]
    fn an_address_without_a_port_takes_the_default_one() {
        let parse =
            |text: &str| host_and_port(text, 7878).map(|(text, addr)| (text, addr.to_string()));
        let both = |text: &str, addr: &str| Ok((text.to_string(), addr.to_string()));
        assert_eq!(parse("127.0.0.1"), both("127.0.0.1:7878", "127.0.0.1:7878"));
        assert_eq!(parse("127.0.0.1:9"), both("127.0.0.1:9", "127.0.0.1:9"));
        assert_eq!(parse("::1"), both("[::1]:7878", "[::1]:7878"));
        assert_eq!(parse("[::1]"), both("[::1]:7878", "[::1]:7878"));
        assert_eq!(parse("[::1]:7000"), both("[::1]:7000", "[::1]:7000"));
        let (text, addr) = host_and_port("localhost", 7878).expect("localhost resolves");
        assert_eq!((text.as_str(), addr.port()), ("localhost:7878", 7878));
        let (text, _) = host_and_port("localhost:7001", 7878).expect("localhost resolves");
        assert_eq!(text, "localhost:7001");
        for (text, given) in [
            ("127.0.0.1", false),
            ("127.0.0.1:7", true),
            ("::1", false),
            ("[::1]", false),
            ("[::1]:7", true),
            ("::1%lo", false),
            ("[::1%lo]", false),
            ("[::1%lo]:7", true),
            ("localhost", false),
            ("localhost:7", true),
        ] {
            assert_eq!(port_written(text), given, "{text}");
            let raw = text.parse::<ServerAddr>().expect(text).or_port(7007);
            assert_eq!(raw.addr.port(), if given { 7 } else { 7007 }, "{text}");
        }
        for wrong in ["a:b:c", "host:", ":7878", "host:65536", "[::1", "[::1]x"] {
            assert!(
                matches!(host_and_port(wrong, 7878), Err(AddrError::Syntax(_))),
                "{wrong}"
            );
        }
        assert_eq!(
            host_and_port("nowhere.invalid", 7878),
            Err(AddrError::Unresolved(
                "cannot resolve nowhere.invalid".to_string()
            ))
        );
        let lo = |port: u16| {
            // SAFETY: if_nametoindex(3) reads the NUL-terminated name and nothing else.
            let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
            format!("[::1%{index}]:{port}")
        };
        assert_eq!(parse("::1%lo"), both(&lo(7878), &lo(7878)));
        assert_eq!(parse("[::1%lo]:7000"), both(&lo(7000), &lo(7000)));
        assert_eq!(parse("[::1%1]"), both("[::1%1]:7878", "[::1%1]:7878"));
        assert!(matches!(
            host_and_port("fe80::1%nosuchif0", 7878),
            Err(AddrError::Syntax(message)) if message.contains("no network interface `nosuchif0`")
        ));
        let tls: ServerAddr = "tls://[::1]".parse().expect("an address");
        assert!(tls.tls);
        assert_eq!(tls.to_string(), "tls://[::1]:7878");
    }

    #[test]
    fn durations_take_units_and_a_bare_number_is_seconds() {
        assert_eq!(duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration("0"), Ok(Duration::ZERO));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("2s500ms"), Ok(Duration::from_millis(2500)));
        assert_eq!(
            "500ms".parse::<Secs>(),
            Ok(Secs(Duration::from_millis(500)))
        );
        let shown = Secs(Duration::from_millis(1500)).to_string();
        assert_eq!(shown.parse::<Secs>(), Ok(Secs(Duration::from_millis(1500))));
    }

    #[test]
    fn a_wrong_duration_is_said_in_words() {
        for text in [
            "5x", "", "ms", "1.2.3s", "-1", "inf", "NaN", "1e3", "five", "1h30", "1h-5m", "h1",
        ] {
            let error = duration(text).expect_err(text);
            assert!(
                error.starts_with(&format!("invalid duration \"{text}\": expected a number")),
                "{error}"
            );
        }
        assert!(duration("1000000h").expect_err("long").contains("at most"));
        let zero = "0s".parse::<Secs>().expect_err("zero");
        assert_eq!(zero, "invalid duration \"0s\": must be above 0");
    }
}
