//! SIGHUP: re-reading the access file and the TLS material while the server runs.
//!
//! What a reload may change is what a new connection meets: the credentials HELLO is checked
//! against and the certificate the handshake presents. Both are read and validated first, and
//! swapped only if *every* file is good (nginx's rule for a reload): a bad file leaves the
//! server exactly as it was, and the error is logged. A connection keeps what it started with:
//! its TLS session keeps its configuration, and an authenticated connection its grant, so a
//! reload never widens or narrows a live connection's scope. A credential whose token hash or
//! key is unchanged keeps its counters (commands running, bytes stored) across the reload
//! ([`Access::reloaded`]).
//!
//! The files are read on the loop: a reload is an operator's rare action, and the files are
//! small (an access file, a certificate chain and a key). What cannot change without a restart
//! (addresses, the root, `--workers`, whether TLS is on at all) is not re-read.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::access::Access;
use crate::transport::TlsSettings;

/// The files a running server re-reads on SIGHUP (`Config::reload`); each `None` is left as
/// it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reload {
    /// The access file (`--access`).
    pub access: Option<PathBuf>,
    /// The TLS certificate, key and client CA (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<TlsSettings>,
}

/// What a reload read, validated, ready to swap in.
#[derive(Debug)]
pub(crate) struct Reloaded {
    /// The new access rules (before [`Access::reloaded`] carries the counters over).
    pub(crate) access: Option<Access>,
    /// The new TLS configuration.
    pub(crate) tls: Option<Arc<ServerConfig>>,
}

impl Reload {
    /// Whether there is anything to re-read.
    pub fn is_empty(&self) -> bool {
        self.access.is_none() && self.tls.is_none()
    }

    /// Reads and validates every file; the first error, one line, if any is bad.
    pub(crate) fn read(&self) -> Result<Reloaded, String> {
        let access = self.access.as_deref().map(Access::load).transpose()?;
        let tls = self.tls.as_ref().map(TlsSettings::load).transpose()?;
        Ok(Reloaded { access, tls })
    }
}
