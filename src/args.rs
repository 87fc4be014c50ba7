//! The values flags take, parsed once by clap so every command sees typed settings: addresses
//! ([`Addr`], [`Endpoint`], and a client's [`ServerAddr`]), durations ([`Secs`]) and counts
//! ([`at_least_one`], [`byte_count`]). A value that does not parse is a usage error that
//! names its flag. The flags every client command shares are here too, in one place, and
//! flattened into each command: [`TlsArgs`].

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use monoreactor::client::resolve_addr;
use monoreactor::client::tls::{TLS_SCHEME, Target, split_scheme};

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
        let duration = Duration::from_secs_f64(seconds);
        // Below a nanosecond it rounds to 0, which no socket takes as a timeout.
        if duration.is_zero() {
            return Err(format!("`{text}`: seconds must be at least 1e-9"));
        }
        Ok(Secs(duration))
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

/// A client command's server address: `HOST:PORT`, or `tls://HOST:PORT` to ask for TLS
/// (the same as `--tls`). It is resolved when parsed, so a typo is a usage error; the host is
/// kept as typed, because a TLS server's certificate names the host, not its address.
#[derive(Clone)]
pub struct ServerAddr {
    /// `HOST:PORT` as typed, without `tls://`.
    pub text: String,
    /// What it resolved to.
    pub addr: SocketAddr,
    /// Whether it was written `tls://...`.
    pub tls: bool,
}

impl From<SocketAddr> for ServerAddr {
    fn from(addr: SocketAddr) -> ServerAddr {
        ServerAddr {
            text: addr.to_string(),
            addr,
            tls: false,
        }
    }
}

impl FromStr for ServerAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<ServerAddr, String> {
        let (tls, rest) = split_scheme(text);
        if let Some((scheme, _)) = rest.split_once("://") {
            return Err(format!(
                "`{scheme}://` is not a scheme monoreactor knows: write HOST:PORT, or tls://HOST:PORT for TLS"
            ));
        }
        Ok(ServerAddr {
            text: rest.to_string(),
            addr: resolve_addr(rest)?,
            tls,
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
