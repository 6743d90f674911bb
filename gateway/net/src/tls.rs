//! TLS configs from PEM files, one way for every listener (rustls on ring, its safe default
//! protocol versions). Errors name the part and the file; each caller adds its config key.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

/// What could not be loaded: which part (`certificate`, `private key`, `client CA`,
/// `certificate and key`), from which file, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    pub what: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

impl fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot load the TLS {} from {}: {}", self.what, self.path.display(), self.reason)
    }
}

impl std::error::Error for TlsFileError {}

fn error(what: &'static str, path: &Path, reason: impl ToString) -> TlsFileError {
    TlsFileError { what, path: path.to_owned(), reason: reason.to_string() }
}

/// The certificates of a PEM file (at least one).
pub fn certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| error(what, path, e))?;
    if certs.is_empty() {
        return Err(error(what, path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| error("private key", path, e))
}

/// A server config for the chain in `cert` and the key in `key`. With `client_ca`, clients
/// are asked for a certificate issued by that CA: one that does not verify fails the
/// handshake, and a client without one is still served (it logs in some other way).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerConfig, TlsFileError> {
    let chain = certificates(cert, "certificate")?;
    let key_der = private_key(key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| error("protocol versions", cert, e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certificates(ca, "client CA")? {
                roots.add(c).map_err(|e| error("client CA", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| error("client CA", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key_der).map_err(|e| error("certificate and key", cert, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_part_and_the_file() {
        let dir = std::env::temp_dir().join(format!("gw-net-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = server_config(&empty, &empty, None).unwrap_err();
        assert_eq!((e.what, e.path.as_path()), ("certificate", empty.as_path()));
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let missing = dir.join("missing.pem");
        let e = certificates(&missing, "client CA").unwrap_err();
        assert_eq!(e.what, "client CA");
        let e = private_key(&empty).unwrap_err();
        assert_eq!(e.what, "private key");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
