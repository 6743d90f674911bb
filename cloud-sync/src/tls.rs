//! TLS for the MQTT uplinks: rustls on the ring provider, trusting `ca_file` or the system's
//! roots, optionally presenting a client certificate.

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::{CloudConfig, CloudError};

/// The rustls client config for `config`'s `ca_file`, `client_cert_file`, `client_key_file`.
pub fn client_config(config: &CloudConfig) -> Result<Arc<ClientConfig>, CloudError> {
    let mut roots = RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| CloudError::Tls {
                    what: format!("CA certificate in {}", path.display()),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(cause = %e, "cannot load some system root certificates");
            }
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(CloudError::Tls {
                    what: "system root certificates".into(),
                    reason: "none found; set cloud.ca_file".into(),
                });
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| CloudError::Tls { what: "TLS versions".into(), reason: e.to_string() })?
        .with_root_certificates(roots);
    let tls = match (&config.client_cert_file, &config.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| CloudError::Tls {
                what: format!("private key in {}", key.display()),
                reason: e.to_string(),
            })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| CloudError::Tls {
                what: format!("client certificate {}", cert.display()),
                reason: e.to_string(),
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(tls))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CloudError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CloudError::Tls {
            what: format!("certificates in {}", path.display()),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CloudError::Tls {
            what: format!("certificates in {}", path.display()),
            reason: "no PEM certificate found".into(),
        });
    }
    Ok(certs)
}
