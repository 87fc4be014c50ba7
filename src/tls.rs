//! The rustls configuration a client command's TLS flags ask for ([`TlsArgs`]): the CAs it
//! trusts (a PEM bundle from `--tls-ca`, else the operating system's store), or none at all
//! with `--tls-insecure` (which warns), and the client certificate it presents. PEM files
//! are read with pki-types' [`PemObject`].

use std::path::Path;
use std::sync::Arc;

use monoreactor::client::tls::{Identity, client_config as config_with, insecure_config};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::args::TlsArgs;
use crate::failure::say;

/// The configuration `args` asks for; an error is one line naming the flag at fault.
pub fn client_config(args: &TlsArgs) -> Result<Arc<ClientConfig>, String> {
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(identity(cert, key)?),
        _ => None,
    };
    if args.tls_insecure {
        say(
            "warning: --tls-insecure: the server's certificate is not checked; anyone between \
             you and the server can read and change this connection (for tests only)",
        );
        return insecure_config(identity).map_err(|error| format!("TLS setup: {error}"));
    }
    let roots = match &args.tls_ca {
        Some(path) => ca_bundle(path)?,
        None => system_roots()?,
    };
    config_with(roots, identity).map_err(|error| format!("TLS setup: {error}"))
}

/// Every certificate in the PEM file at `path`, as trust anchors.
fn ca_bundle(path: &Path) -> Result<RootCertStore, String> {
    let cannot = |error: &dyn std::fmt::Display| format!("--tls-ca {}: {error}", path.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|error| cannot(&error))? {
        let cert = cert.map_err(|error| cannot(&error))?;
        roots.add(cert).map_err(|error| cannot(&error))?;
    }
    if roots.is_empty() {
        return Err(cannot(&"no CERTIFICATE in it"));
    }
    Ok(roots)
}

/// The operating system's CA store (`rustls-native-certs`: on Linux the distribution's
/// bundle, or `SSL_CERT_FILE`/`SSL_CERT_DIR`).
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        log::debug!("system CA store: {error}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        log::debug!("system CA store: {ignored} certificates ignored, {added} added");
    }
    if roots.is_empty() {
        return Err(
            "TLS: no CA certificates found in the system's store: pass --tls-ca PATH".to_string(),
        );
    }
    Ok(roots)
}

/// The client certificate chain and key (`--tls-cert`, `--tls-key`).
fn identity(cert: &Path, key: &Path) -> Result<Identity, String> {
    let cannot = |flag: &str, path: &Path, error: &dyn std::fmt::Display| {
        format!("{flag} {}: {error}", path.display())
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|error| cannot("--tls-cert", cert, &error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| cannot("--tls-cert", cert, &error))?;
    if chain.is_empty() {
        return Err(cannot("--tls-cert", cert, &"no CERTIFICATE in it"));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|error| cannot("--tls-key", key, &error))?;
    Ok((chain, key))
}
