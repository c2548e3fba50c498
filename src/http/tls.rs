//! The server side of TLS: a certificate and key, and optionally the CAs whose client
//! certificates are required (the API server authenticates itself with one).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What is wrong with the TLS files.
#[derive(Debug)]
pub enum TlsError {
    /// A file cannot be read or holds no PEM item of the kind needed.
    Pem {
        file: PathBuf,
        what: &'static str,
        error: String,
    },
    /// rustls refuses the combination (a key that does not match the certificate, a CA that
    /// cannot be used).
    Config { error: String },
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Pem { file, what, error } => write!(
                f,
                "{}: no usable {what} ({error}); expected PEM (`-----BEGIN ...-----`)",
                file.display()
            ),
            TlsError::Config { error } => write!(f, "TLS: {error}"),
        }
    }
}

impl std::error::Error for TlsError {}

fn certs(file: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |error: String| TlsError::Pem {
        file: file.to_owned(),
        what,
        error,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no CERTIFICATE item".into()));
    }
    Ok(certs)
}

/// The server configuration: `cert` (chain, PEM), `key` (PEM), and when `client_ca` is
/// given, a client certificate signed by one of its CAs is required.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
        file: key.to_owned(),
        what: "private key",
        error: e.to_string(),
    })?;
    let config = |error: rustls::Error| TlsError::Config {
        error: error.to_string(),
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(file) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs(file, "CA certificate")? {
                roots.add(c).map_err(config)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config {
                    error: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let server = builder.with_single_cert(chain, key).map_err(config)?;
    Ok(Arc::new(server))
}
