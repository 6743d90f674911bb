//! The web listener's transport: plain HTTP, or HTTPS when `[web] cert_file` and `key_file`
//! are set (rustls on ring). With `[web] push_client_ca_file` the TLS handshake also asks for
//! a client certificate: one that verifies against that CA marks the connection's requests
//! with [`VerifiedClientCert`], which the command push endpoint requires; a connection without
//! a certificate is still served, so the status page, health checks and the southbound HTTP
//! endpoint need none. A certificate that does not verify fails the handshake.

use std::{net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use axum::{Extension, Router, extract::ConnectInfo};
use gw_cloud_sync::commands::push::VerifiedClientCert;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long a client may take for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTPS side of the web listener.
#[derive(Clone)]
pub struct WebTls {
    acceptor: TlsAcceptor,
}

impl WebTls {
    /// The server certificate chain and key, and optionally the CA client certificates are
    /// verified against. Errors name the file.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<Self> {
        let chain = read_certs(cert, "web.cert_file")?;
        let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| {
            anyhow::anyhow!("web.key_file: no private key in {}: {e}", key.display())
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs(ca, "web.push_client_ca_file")? {
                    roots.add(c).with_context(|| {
                        format!("web.push_client_ca_file: bad CA certificate in {}", ca.display())
                    })?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()
                    .with_context(|| format!("web.push_client_ca_file: {}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut server = builder.with_single_cert(chain, key_der).with_context(|| {
            format!("web.cert_file/key_file: {} and {} do not fit", cert.display(), key.display())
        })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(server)) })
    }
}

fn read_certs(path: &Path, key: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow::anyhow!("{key}: cannot read certificates from {}: {e}", path.display())
        })?;
    anyhow::ensure!(!certs.is_empty(), "{key}: no PEM certificate in {}", path.display());
    Ok(certs)
}

/// Serves `app` on `listener` until `stop`: over TLS when `tls` is given. Requests carry the
/// peer address as [`ConnectInfo`] either way.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<WebTls>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let Some(tls) = tls else {
        return axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .context("web listener failed");
    };
    let mut connections = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(cause = %e, "web accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let (acceptor, app, stop) = (tls.acceptor.clone(), app.clone(), stop.clone());
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, cause = %e, "web TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "web TLS handshake timed out");
                    return;
                }
            };
            // With the push CA configured, a certificate the client presented has verified (a
            // bad one fails the handshake).
            let verified = stream.get_ref().1.peer_certificates().is_some_and(|c| !c.is_empty());
            let mut app = app.layer(Extension(ConnectInfo(peer)));
            if verified {
                app = app.layer(Extension(VerifiedClientCert));
            }
            let service = TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, cause = %e, "web connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}
