//! Loading the server's TLS configuration from PEM files ([`TlsSettings::load`]), and the
//! fingerprint of a client certificate's key ([`key_fingerprint`]).
//!
//! The configuration is what the TLS link needs and nothing more: TLS 1.3 only (the record
//! layer after the handshake is 1.3's), ALPN `monoreactor` (a client that offers ALPN without
//! it is refused with `no_application_protocol`; one that offers none is accepted), no session
//! tickets and no resumption cache (a ticket would be a post-handshake message and a stored
//! session per client), and secret extraction on (the link takes the traffic secrets over at
//! the end of the handshake). With a client CA, a client certificate is asked for and, if
//! presented, verified against it; a client without one still connects (and may authenticate
//! with the token).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::digest::{SHA256, digest};
use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::KeyFingerprint;

/// The ALPN protocol name of the framed protocol over TLS.
pub const ALPN: &[u8] = b"monoreactor";

/// Where the server's TLS material is: `serve --tls-cert PATH --tls-key PATH
/// [--tls-client-ca PATH]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) client certificates are verified against; with it, a client
    /// certificate is asked for (and optional).
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// Reads the files and builds the configuration. An error is one line naming the file and
    /// what is wrong with it.
    pub fn load(&self) -> Result<Arc<ServerConfig>, String> {
        let chain = read_certs(&self.cert, "--tls-cert")?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|error| {
            pem_error(
                &self.key,
                "--tls-key",
                "a private key (BEGIN PRIVATE KEY)",
                error,
            )
        })?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|error| format!("TLS 1.3: {error}"))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs(path, "--tls-client-ca")? {
                    roots
                        .add(cert)
                        .map_err(|error| format!("--tls-client-ca {}: {error}", path.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|error| format!("--tls-client-ca {}: {error}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|error| {
            format!(
                "--tls-key {}: does not go with --tls-cert {}: {error}",
                self.key.display(),
                self.cert.display()
            )
        })?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.max_early_data_size = 0;
        config.enable_secret_extraction = true;
        Ok(Arc::new(config))
    }
}

/// The crypto provider: rustls' ring provider (Cargo.toml says why ring). rustls deprecates
/// it for having no post-quantum key exchange, which ring lacks; X25519 and the NIST curves
/// are what it negotiates.
///
/// Its key exchange groups are reordered X25519 first, as OpenSSL, curl and browsers order
/// them: rustls 0.23's ring provider leads with P-384, so a rustls client would offer a P-384
/// key share first (several times slower to compute than X25519, on both sides), and a server
/// follows the client's order.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::ring::kx_group::{SECP256R1, SECP384R1, X25519};
    #[allow(deprecated)]
    let mut provider = rustls::crypto::ring::default_provider();
    provider.kx_groups = vec![X25519, SECP256R1, SECP384R1];
    Arc::new(provider)
}

/// Every certificate in the PEM file at `path`; at least one.
fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| pem_error(path, flag, "certificates (BEGIN CERTIFICATE)", error))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no certificate (BEGIN CERTIFICATE) in it",
            path.display()
        ));
    }
    Ok(certs)
}

fn pem_error(path: &Path, flag: &str, wanted: &str, error: pem::Error) -> String {
    let what = match error {
        pem::Error::Io(error) => format!("cannot read it: {error}"),
        pem::Error::NoItemsFound => format!("no {wanted} in it"),
        other => format!("not valid PEM: {other}"),
    };
    format!("{flag} {}: {what}", path.display())
}

/// The SHA-256 of `cert`'s SubjectPublicKeyInfo (the whole DER `SEQUENCE`, as `openssl pkey
/// -pubin -outform der | sha256sum` hashes it). The SPKI is found by webpki, which rustls
/// already uses to verify the certificate: no second X.509 parser, and no DER walked by hand.
pub fn key_fingerprint(cert: &CertificateDer<'_>) -> Result<KeyFingerprint, String> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|error| format!("not a usable certificate: {error}"))?;
    let spki = parsed.subject_public_key_info();
    let mut bytes = [0; 32];
    bytes.copy_from_slice(digest(&SHA256, spki.as_ref()).as_ref());
    Ok(KeyFingerprint(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_provider_offers_x25519_first_as_openssl_and_curl_do() {
        let names: Vec<_> = provider()
            .kx_groups
            .iter()
            .map(|group| group.name())
            .collect();
        assert_eq!(names[0], rustls::NamedGroup::X25519, "{names:?}");
    }
}
