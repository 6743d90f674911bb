//! The web listener's transport: plain HTTP, or HTTPS when `[web] cert_file` and `key_file`
//! are set (rustls on ring), with the limits that keep strangers from holding it (see
//! [`serve`]). With `[web] push_client_ca_file` the TLS handshake also asks for
//! a client certificate: one that verifies against that CA marks the connection's requests
//! with [`VerifiedClientCert`], which the command push endpoint requires; a connection without
//! a certificate is still served, so the status page, health checks and the southbound HTTP
//! endpoint need none. A certificate that does not verify fails the handshake.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use gw_cloud_sync::commands::push::VerifiedClientCert;
use gw_net::{Heartbeat, Slot, Slots, Throttle};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpListener,
    task::JoinSet,
};
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
        let mut server = gw_net::tls::server_config(cert, key, client_ca).map_err(|e| {
            let key = match e.what {
                "private key" => "web.key_file",
                "client CA" => "web.push_client_ca_file",
                "certificate and key" => "web.cert_file/key_file",
                _ => "web.cert_file",
            };
            anyhow::anyhow!("{key}: {e}")
        })?;
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(server)) })
    }
}

/// The web listener's limits: `[web]`'s, with the connection caps fitted to the process's
/// file-descriptor budget.
#[derive(Clone, Debug)]
pub struct WebLimits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_timeout: Duration,
    pub send_timeout: Duration,
}

impl WebLimits {
    /// `[web]`'s limits as configured (before any fitting to the descriptor budget).
    pub fn from_config(web: &crate::config::WebConfig) -> Self {
        Self {
            max_connections: web.max_connections,
            max_connections_per_address: web.max_connections_per_address,
            header_timeout: web.header_timeout,
            send_timeout: web.send_timeout,
        }
    }
}

static ACCEPT_FAILED: Throttle = Throttle::new("web accept failed");
static EVICTED: Throttle = Throttle::new("web connection closed for a newer one");

/// Serves `app` on `listener` until `stop`: over TLS when `tls` is given. Requests carry the
/// peer address as [`ConnectInfo`] either way.
///
/// Every connection holds a slot of a [`Slots`] pool (`max_connections`, at most
/// `max_connections_per_address` per source): a full pool closes the oldest connection of the
/// address holding the most. A request head must arrive within `header_timeout` (counted from
/// the connection's start or the previous answer, so idle keep-alive connections close too),
/// an answer left unread for `send_timeout` closes the connection, and the TLS handshake has
/// [`HANDSHAKE_TIMEOUT`]. HTTP/1.1 only (ALPN offers `http/1.1`). The request body deadline is
/// the router's [`crate::web::body_deadline`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<WebTls>,
    limits: WebLimits,
    heartbeat: Heartbeat,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let slots = Slots::new(limits.max_connections, limits.max_connections_per_address);
    let guard = heartbeat.guard();
    let mut beat = tokio::time::interval(Heartbeat::EVERY);
    let mut connections = JoinSet::new();
    loop {
        heartbeat.beat();
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            _ = beat.tick() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    if ACCEPT_FAILED.allow(None) {
                        tracing::warn!(cause = %e, "web accept failed");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let slot = Arc::new(slots.admit(peer.ip()));
        let (app, tls, limits, stop) = (app.clone(), tls.clone(), limits.clone(), stop.clone());
        connections.spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Some(tls) = tls else {
                return connection(tcp, peer, false, app, &slot, &limits, &stop).await;
            };
            let handshake = tokio::select! {
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(tcp)) => r,
                () = slot.evicted() => return,
                _ = stop.cancelled() => return,
            };
            let stream = match handshake {
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
            connection(stream, peer, verified, app, &slot, &limits, &stop).await;
        });
    }
    while connections.join_next().await.is_some() {}
    guard.stopped();
    Ok(())
}

/// Serves one connection's HTTP/1.1 requests until it ends, is evicted or the listener stops.
async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    peer: SocketAddr,
    verified: bool,
    app: Router,
    slot: &Arc<Slot>,
    limits: &WebLimits,
    stop: &CancellationToken,
) {
    let serving = Arc::clone(slot);
    let service = hyper::service::service_fn(move |mut request: axum::extract::Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if verified {
            request.extensions_mut().insert(VerifiedClientCert);
        }
        let mut app = app.clone();
        let slot = Arc::clone(&serving);
        // Not marked busy while its request runs: a request whose body trickles in would be
        // protected so. The body deadline ends such a request; a success proves the client.
        async move {
            let response =
                tower_service::Service::call(&mut app, request.map(axum::body::Body::new)).await;
            // a connection that got a real answer is a client's, not a stranger's
            if response.as_ref().is_ok_and(|r| r.status().is_success()) {
                slot.prove();
            }
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    let io = TokioIo::new(SendDeadline::new(stream, limits.send_timeout));
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, cause = %e, "web connection ended with an error");
            }
        }
        () = slot.evicted() => {
            if EVICTED.allow(Some(peer.ip())) {
                tracing::info!(%peer, "web connection closed to make room for a newer one");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn).await;
        }
    }
}

/// A stream whose writes fail with `TimedOut` once one has waited `timeout` for the peer to
/// take bytes: a client that never reads its answers cannot hold a connection.
struct SendDeadline<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> SendDeadline<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        Self { inner, timeout, stalled: None }
    }

    /// A write's (or flush's) poll, timed: a pending one fails with `TimedOut` once it has
    /// been pending for `timeout`; a ready one clears the timer.
    fn timed<T>(
        &mut self,
        cx: &mut TaskContext<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let timeout = self.timeout;
        let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client does not read its answer",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.timed(cx, polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.timed(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.timed(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_reads_its_answer_times_the_write_out() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut io = SendDeadline::new(ours, Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        let err = io.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_reads_slowly_but_steadily_is_served() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                total += tokio::io::AsyncReadExt::read(&mut theirs, &mut buf).await.unwrap();
            }
            total
        });
        let mut io = SendDeadline::new(ours, Duration::from_secs(30));
        io.write_all(&[0u8; 4096]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 4096);
    }
}
