//! Helpers shared by the integration tests: a dev cloud on 127.0.0.1:0, Basic headers, and a
//! stand-in for a gateway's external command push endpoint.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, http::StatusCode, routing::post};
use base64::Engine;
use gw_devcloud::{DevCloud, Seed};
use tokio_util::sync::CancellationToken;

pub const APP: &str = "my-app";
pub const ADMIN: (&str, &str) = ("admin", "admin-token");
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Cloud {
    pub cloud: DevCloud,
    pub http: reqwest::Client,
    token: CancellationToken,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Cloud {
    pub async fn start(seed: Seed) -> Self {
        gw_devcloud::commands::install_crypto_provider();
        let token = CancellationToken::new();
        let cloud =
            DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, token.clone()).await.unwrap();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        Self { cloud, http, token }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.cloud.url())
    }

    /// A request with the admin's API token as Basic `user:token`.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).basic_auth(ADMIN.0, Some(ADMIN.1))
    }

    /// Waits (bounded) until `n` endpoints wait for commands.
    pub async fn until_command_waiters(&self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.cloud.command_subscribers() < n {
            assert!(Instant::now() < deadline, "no command waiter within {TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// `Basic base64(user:password)`, padded or not.
pub fn basic(user: &str, password: &str, padded: bool) -> String {
    let raw = format!("{user}:{password}");
    let b64 = if padded {
        base64::engine::general_purpose::STANDARD.encode(raw)
    } else {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
    };
    format!("Basic {b64}")
}

/// The standard seed: an API user, an app, gateway `gw1`, `sensor1` behind it, `sensor2`
/// behind nobody.
pub fn seed() -> Seed {
    Seed::new()
        .user(ADMIN.0, ADMIN.1)
        .application(APP)
        .password_device(APP, "gw1", "gw-secret")
        .sensor(APP, "sensor1", Some("s1-pass"), &["gw1"])
        .sensor(APP, "sensor2", Some("s2-secret"), &[])
}

/// A stand-in for a gateway's push endpoint: records each request (headers, body) and
/// answers with `status`.
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<(axum::http::HeaderMap, Bytes)>>>,
    token: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl Receiver {
    pub async fn start(status: StatusCode) -> Self {
        let received: Arc<Mutex<Vec<(axum::http::HeaderMap, Bytes)>>> = Arc::default();
        let store = received.clone();
        let app = Router::new().route(
            "/push",
            post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let store = store.clone();
                async move {
                    store.lock().unwrap().push((headers, body));
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = CancellationToken::new();
        let stop = token.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        Self { addr, received, token }
    }

    pub fn url(&self) -> String {
        format!("http://{}/push", self.addr)
    }

    pub fn bodies(&self) -> Vec<serde_json::Value> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_slice(b).unwrap())
            .collect()
    }
}
