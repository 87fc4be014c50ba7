//! SIGHUP: re-reading the configuration while the server runs.
//!
//! Two sources, whichever the server was given. With a [`Reloader`] (`serve --config FILE`),
//! the program that started the server re-reads everything it was configured from — the
//! file, the command line over it, the access file, the TLS material — and hands back a
//! validated [`Fresh`]; without one, the access file and the TLS material named in
//! [`Reload`] are re-read. Either way everything is read and validated first, and swapped
//! only if *all* of it is good (nginx's rule for a reload): a bad file leaves the server
//! exactly as it was, and the error is logged in one line.
//!
//! What a reload may change is what the loop reads afresh each time it needs it:
//! - the limits [`Limits::take_live`] lists: the timeouts (a deadline already armed keeps
//!   its time; the next one uses the new value), the shutdown grace, the exec time and output
//!   limits (a running command keeps the ones it started with), streams per connection, the
//!   largest PUT, transfers at once and the client memory budget;
//! - the credentials HELLO is checked against and the certificate a handshake presents;
//! - the log levels (through [`Fresh::log_filter`], which the program applies).
//!
//! A connection keeps what it started with: its TLS session keeps its configuration, and an
//! authenticated connection its grant, so a reload never widens or narrows a live connection's
//! scope. A credential whose token hash or key is unchanged keeps its counters (commands
//! running, bytes stored) across the reload ([`Access::reloaded`]).
//!
//! What needs a restart is what was sized or set up once, at start: the addresses (bound
//! sockets), `--workers`, the root, the file service and exec on or off, TLS on or off, the
//! token, the connection limit (the slab, the timer queue and the TLS table are reserved for
//! it), the frame limit (buffers and frames in flight were accepted against it: lowering it
//! would strand a frame half read) and the command limit (descriptors are kept back for it).
//! The [`Reloader`] names such settings that changed in [`Fresh::needs_restart`], and the
//! loop logs them and keeps the values it runs with.
//!
//! The files are read on the loop: a reload is an operator's rare action, and the files are
//! small (a configuration, an access file, a certificate chain and a key).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::access::Access;
use crate::limits::Limits;
use crate::transport::TlsSettings;

/// What SIGHUP re-reads (`Config::reload`): a whole configuration through `reloader`, or else
/// the files named here; each `None` is left as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reload {
    /// The access file (`--access`).
    pub access: Option<PathBuf>,
    /// The TLS certificate, key and client CA (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<TlsSettings>,
    /// Re-reads the whole configuration (`serve --config`); when given, `access` and `tls`
    /// are not read by the library: the reloader reads them.
    pub reloader: Option<Reloader>,
}

/// A settings change a reload takes effect with, after everything was validated: installs
/// the log filter, and says what it installed (for the log line).
pub type LogSwap = Box<dyn FnOnce() -> String + Send>;

/// What a reload read, validated, ready to swap in.
#[derive(Default)]
pub struct Fresh {
    /// The new limits; only those [`Limits::take_live`] lists are taken.
    pub limits: Option<Limits>,
    /// The new access rules, as [`Access::load`] read them (the server's token and `--exec`
    /// are kept: they need a restart).
    pub access: Option<Access>,
    /// The new TLS configuration (only taken by a server that speaks TLS).
    pub tls: Option<Arc<ServerConfig>>,
    /// Installs the new log levels; run after everything else is swapped.
    pub log_filter: Option<LogSwap>,
    /// Settings that changed but need a restart, in the words of the configuration
    /// (`listen`, `workers`): logged, not applied.
    pub needs_restart: Vec<String>,
}

impl fmt::Debug for Fresh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fresh")
            .field("limits", &self.limits)
            .field("access", &self.access)
            .field("tls", &self.tls.is_some())
            .field("log_filter", &self.log_filter.is_some())
            .field("needs_restart", &self.needs_restart)
            .finish()
    }
}

/// Re-reads and validates a whole configuration: the error is one line (`FILE:LINE: what`
/// where a file is at fault). Called on the loop at each SIGHUP, and by the `--workers`
/// supervisor before it passes the signal on; cheap to clone.
#[derive(Clone)]
pub struct Reloader(Arc<dyn Fn() -> Result<Fresh, String> + Send + Sync>);

impl Reloader {
    /// A reloader calling `read`.
    pub fn new(read: impl Fn() -> Result<Fresh, String> + Send + Sync + 'static) -> Reloader {
        Reloader(Arc::new(read))
    }

    /// Reads the configuration now.
    pub fn read(&self) -> Result<Fresh, String> {
        (self.0)()
    }
}

impl fmt::Debug for Reloader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reloader")
    }
}

/// The same reloader (a clone of it), not an equal function.
impl PartialEq for Reloader {
    fn eq(&self, other: &Reloader) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Reloader {}

impl Reload {
    /// Whether there is anything to re-read.
    pub fn is_empty(&self) -> bool {
        self.access.is_none() && self.tls.is_none() && self.reloader.is_none()
    }

    /// Reads and validates everything; the first error, one line, if anything is bad.
    pub fn read(&self) -> Result<Fresh, String> {
        if let Some(reloader) = &self.reloader {
            let fresh = reloader.read()?;
            if let Some(limits) = &fresh.limits {
                limits.validate().map_err(|error| error.to_string())?;
            }
            return Ok(fresh);
        }
        let access = self.access.as_deref().map(Access::load).transpose()?;
        let tls = self.tls.as_ref().map(TlsSettings::load).transpose()?;
        Ok(Fresh {
            access,
            tls,
            ..Fresh::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reloader_s_error_or_invalid_limits_are_refused_whole() {
        let invalid = Reload {
            reloader: Some(Reloader::new(|| {
                Ok(Fresh {
                    limits: Some(Limits {
                        max_frame_len: 1,
                        ..Limits::default()
                    }),
                    ..Fresh::default()
                })
            })),
            ..Reload::default()
        };
        let error = invalid.read().unwrap_err();
        assert!(error.contains("max frame length"), "{error}");
        let failing = Reload {
            reloader: Some(Reloader::new(|| Err("f.toml:3: bad".to_string()))),
            ..Reload::default()
        };
        assert_eq!(failing.read().unwrap_err(), "f.toml:3: bad");
        assert!(!failing.is_empty() && Reload::default().is_empty());
        assert_eq!(failing.clone(), failing, "a clone is the same reloader");
        assert_ne!(failing, invalid);
    }
}
