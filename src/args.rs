//! The values flags take, parsed once by clap so every command sees typed settings: addresses
//! ([`Addr`], [`Endpoint`]), durations ([`Secs`]) and counts ([`at_least_one`],
//! [`byte_count`]). A value that does not parse is a usage error that names its flag.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use monoreactor::client::resolve_addr;

/// A count that must be at least 1 (clap puts the flag's name before the error).
pub fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(count) => Ok(count),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

/// A socket address, given as `IP:PORT` or `HOST:PORT` (`localhost:7878`), for every flag
/// that takes one ([`resolve_addr`] says why IPv4 comes first).
#[derive(Clone, Copy)]
pub struct Addr(pub SocketAddr);

impl FromStr for Addr {
    type Err = String;
    fn from_str(text: &str) -> Result<Addr, String> {
        resolve_addr(text).map(Addr)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
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

/// A duration given in (possibly fractional) seconds.
#[derive(Clone, Copy)]
pub struct Secs(pub Duration);

impl FromStr for Secs {
    type Err = String;
    fn from_str(text: &str) -> Result<Secs, String> {
        let seconds: f64 = text
            .parse()
            .map_err(|_| format!("`{text}` is not a number of seconds"))?;
        if !(seconds > 0.0 && seconds <= 1e9) {
            return Err(format!("`{text}`: seconds must be above 0 and at most 1e9"));
        }
        Ok(Secs(Duration::from_secs_f64(seconds)))
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// A byte count: `4096`, `64K`, `1M`, `1G` (powers of 1024).
pub fn byte_count(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => (&text[..at], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("`{text}`: the suffix must be K, M or G")),
    };
    match digits.parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(count) => count
            .checked_mul(1 << shift)
            .ok_or_else(|| format!("`{text}` is too large")),
        Err(_) => Err(format!(
            "`{text}` is not a byte count (such as 64, 16K, 1M)"
        )),
    }
}
