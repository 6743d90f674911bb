//! Legacy login migration against a small `CheckLogin` service (seeds/003) on 127.0.0.1:0
//! that counts the calls it gets.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, routing::post};
use gw_auth::{AuthConfig, CredentialChain};
use gw_model::{
    AppId, AuthOutcome, AuthRequest, Authenticate, DeviceId, Identity, PresentedCredential, Secret,
};
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Service {
    calls: Arc<AtomicUsize>,
    /// Answer with strings ("true"/"false") rather than booleans.
    strings: bool,
    /// Never answer (a hung legacy service).
    hang: bool,
}

async fn check_login(State(s): State<Service>, Json(req): Json<Value>) -> Json<Value> {
    s.calls.fetch_add(1, Ordering::SeqCst);
    if s.hang {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    let email = req["Email"].as_str().unwrap_or_default();
    let password = req["Password"].as_str().unwrap_or_default();
    let (auth, valid) = if password.is_empty() {
        (false, email == "olduser")
    } else {
        (email == "olduser" && password == "123", email == "olduser")
    };
    Json(if s.strings {
        json!({"IsAuthenticated": auth.to_string(), "IsEmailValid": valid.to_string()})
    } else {
        json!({"IsAuthenticated": auth, "IsEmailValid": valid})
    })
}

async fn serve(service: Service) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/api/login", post(check_login)).with_state(service);
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn config(url: String, timeout: Duration) -> AuthConfig {
    AuthConfig {
        argon2_memory_kib: 64,
        legacy_login_url: Some(url),
        legacy_timeout: timeout,
        ..Default::default()
    }
}

fn req(app: &str, device: &str, password: &str) -> AuthRequest {
    AuthRequest {
        app: AppId::new(app).unwrap(),
        device: DeviceId::new(device).unwrap(),
        credential: PresentedCredential::Password(Secret::new(password)),
    }
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

async fn migrates_once(strings: bool) {
    let service = Service { strings, ..Default::default() };
    let addr = serve(service.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(format!("http://{addr}/api/login"), Duration::from_secs(5));
    let chain = CredentialChain::open(&cfg, dir.path()).unwrap();

    // first login: the service is asked twice (identifier, then the pair) and the account migrates
    let out = chain.authenticate(&req("app", "olduser", "123"), None).await;
    assert_eq!(out, AuthOutcome::Pass(id("olduser@app")));
    assert_eq!(service.calls.load(Ordering::SeqCst), 2);
    let listed = chain.accounts().list();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].migrated && listed[0].app == "app" && listed[0].name == "olduser");

    // second login (also after a restart): the service is not asked
    let chain = CredentialChain::open(&cfg, dir.path()).unwrap();
    assert_eq!(
        chain.authenticate(&req("app", "olduser", "123"), None).await,
        AuthOutcome::Pass(id("olduser@app"))
    );
    assert_eq!(chain.authenticate(&req("app", "olduser", "wrong"), None).await, AuthOutcome::Fail);
    assert_eq!(service.calls.load(Ordering::SeqCst), 2);

    // app-scoped: the same identifier in another application is not the migrated account
    assert!(!chain.accounts().contains(&id("olduser@other")));
    assert!(chain.accounts().contains(&id("olduser@app")));

    // the owner's password change makes it a native account
    chain.accounts().set_password(&id("olduser@app"), &Secret::new("mine")).unwrap();
    assert!(!chain.accounts().list()[0].migrated);
    assert_eq!(
        chain.authenticate(&req("app", "olduser", "mine"), None).await,
        AuthOutcome::Pass(id("olduser@app"))
    );

    // the plain password is not in the accounts file
    let bytes = std::fs::read(dir.path().join("accounts.snap")).unwrap();
    assert!(!bytes.windows(4).any(|w| w == b"mine"));
}

#[tokio::test]
async fn first_login_asks_twice_and_migrates_then_never_asks_again() {
    migrates_once(false).await;
}

#[tokio::test]
async fn string_booleans_are_accepted() {
    migrates_once(true).await;
}

#[tokio::test]
async fn unknown_identifier_is_asked_once_and_wrong_password_twice() {
    let service = Service::default();
    let addr = serve(service.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(format!("http://{addr}/api/login"), Duration::from_secs(5));
    let chain = CredentialChain::open(&cfg, dir.path()).unwrap();
    assert_eq!(chain.authenticate(&req("app", "stranger", "123"), None).await, AuthOutcome::Fail);
    assert_eq!(service.calls.load(Ordering::SeqCst), 1);
    assert_eq!(chain.authenticate(&req("app", "olduser", "124"), None).await, AuthOutcome::Fail);
    assert_eq!(service.calls.load(Ordering::SeqCst), 3);
    assert!(chain.accounts().list().is_empty(), "nothing migrated");
}

#[tokio::test]
async fn legacy_service_down_fails_closed() {
    // bind and drop: nothing listens there any more
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(format!("http://{addr}/api/login"), Duration::from_secs(2));
    let chain = CredentialChain::open(&cfg, dir.path()).unwrap();
    assert_eq!(chain.authenticate(&req("app", "olduser", "123"), None).await, AuthOutcome::Fail);
    assert!(chain.accounts().list().is_empty());
}

#[tokio::test]
async fn legacy_service_timeout_fails_closed_within_the_timeout() {
    let service = Service { hang: true, ..Default::default() };
    let addr = serve(service.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(format!("http://{addr}/api/login"), Duration::from_millis(300));
    let chain = CredentialChain::open(&cfg, dir.path()).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(chain.authenticate(&req("app", "olduser", "123"), None).await, AuthOutcome::Fail);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(service.calls.load(Ordering::SeqCst), 1);
    assert!(chain.accounts().list().is_empty());
}
