//! Legacy login migration through the real binary: an account the old CheckLogin service
//! knows logs in once through it, is migrated, and is then checked locally; a password change
//! makes it native. Migration is per application: only a migratory application's identities
//! are ever sent to its service.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{Json, Router, extract::State, routing::post};
use common::{BIN, Running, write};
use serde_json::{Value, json};

/// The old service: knows `olduser` with password `legacy-pw`; counts the calls.
async fn check_login(
    State(calls): State<Arc<AtomicUsize>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    calls.fetch_add(1, Ordering::SeqCst);
    let known = body["Email"] == "olduser";
    let authenticated = known && body["Password"] == "legacy-pw";
    // the old service answers with strings
    Json(json!({"IsEmailValid": known.to_string(), "IsAuthenticated": authenticated.to_string()}))
}

fn accounts(config: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(["accounts", "--config", config]).args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_account_is_migrated_on_first_login_and_becomes_native_with_a_new_password() {
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy = listener.local_addr().unwrap();
    let app = Router::new().route("/login", post(check_login)).with_state(calls.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "gatewayd.toml",
        &format!(
            "[gateway]\nname = \"gw1\"\napplication = \"my-app\"\ndata_dir = {:?}\n\n\
             [auth]\nlegacy_login_url = \"http://{legacy}/login\"\n\n\
             [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n[log]\nformat = \"json\"\n",
            dir.path().join("data").display().to_string()
        ),
    );
    let client = reqwest::Client::new();
    let publish = |web: String, pw: &'static str| {
        let client = client.clone();
        async move {
            client
                .post(format!("http://{web}/v1/temperature"))
                .basic_auth("olduser@my-app", Some(pw))
                .body("21")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };

    {
        let gw = Running::start(&config, None);
        let web = gw.web_addr();
        assert_eq!(publish(web.clone(), "legacy-pw").await, 202);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "asked for the id, then for the pair");
        assert_eq!(publish(web.clone(), "legacy-pw").await, 202);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "a migrated account is checked locally");
        assert_eq!(publish(web, "wrong").await, 403);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "not even for a wrong password");
    }

    // the migrated account: app-scoped; the owner's password change makes it native
    let out = accounts(&config, &["list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("olduser@my-app") && listed.contains("migrated"), "{listed}");
    let pw = write(dir.path(), "new.pw", "new-pw\n");
    let out = accounts(&config, &["set-password", "olduser@my-app", "--password-file", &pw]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&accounts(&config, &["list"]).stdout).into_owned();
    assert!(listed.contains("olduser@my-app") && !listed.contains("migrated"), "{listed}");

    let gw = Running::start(&config, None);
    let web = gw.web_addr();
    assert_eq!(publish(web.clone(), "new-pw").await, 202);
    assert_eq!(publish(web, "legacy-pw").await, 403);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the legacy service is never asked again");
}

#[test]
fn accounts_add_list_remove() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "gatewayd.toml",
        &format!(
            "[gateway]\nname = \"gw1\"\napplication = \"my-app\"\ndata_dir = {:?}\n",
            dir.path().join("data").display().to_string()
        ),
    );
    let pw = write(dir.path(), "pw", "tech-pw\n");
    assert!(accounts(&config, &["add", "tech1", "--password-file", &pw]).status.success());
    let out = accounts(&config, &["add", "tech1", "--password-file", &pw]);
    assert!(!out.status.success(), "adding twice is an error");
    // an account is a sensor of the gateway's application or a technician, nothing else
    let out = accounts(&config, &["add", "tech1@evil-app", "--password-file", &pw]);
    assert!(!out.status.success(), "an account of another application");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is neither"), "{out:?}");
    let listed = String::from_utf8_lossy(&accounts(&config, &["list"]).stdout).into_owned();
    assert_eq!(listed.trim(), "tech1@my-app  sensor");
    assert!(accounts(&config, &["remove", "tech1@my-app"]).status.success());
    assert!(String::from_utf8_lossy(&accounts(&config, &["list"]).stdout).trim().is_empty());
    assert!(!accounts(&config, &["remove", "tech1@my-app"]).status.success());
    let mode = {
        use std::os::unix::fs::PermissionsExt;
        let file = dir.path().join("data").join(gw_auth::chain::ACCOUNTS_FILE);
        std::fs::metadata(file).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode, 0o600);
}

/// The seed's own sample service: knows `test@example.com` / `123`; records every identifier
/// it is asked about.
async fn seed_service(
    State(asked): State<Arc<std::sync::Mutex<Vec<String>>>>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let email = body["Email"].as_str().unwrap_or_default().to_owned();
    asked.lock().unwrap().push(email.clone());
    let known = email == "test@example.com";
    let authenticated = known && body["Password"] == "123";
    Json(json!({"IsEmailValid": known, "IsAuthenticated": authenticated}))
}

/// Per application, as the seed says: the sample account migrates into the migratory
/// application and logs in there (curl and mosquitto_pub), gets nothing in another application
/// or on the status page, and the service hears of no identity outside the migratory app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_sample_account_migrates_into_its_application_only() {
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy = listener.local_addr().unwrap();
    let app = Router::new().route("/CheckLogin", post(seed_service)).with_state(asked.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let text = |legacy_section: &str| {
        format!(
            "[gateway]\nname = \"gw1\"\napplication = \"my-app\"\ndata_dir = {data:?}\n\n\
             {legacy_section}\n\
             [mqtt]\nlisten = \"127.0.0.1:0\"\n\n\
             [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n[log]\nformat = \"json\"\n"
        )
    };
    // the technicians' application migrates only when the config says so
    let tech = write(
        dir.path(),
        "tech.toml",
        &text(&format!(
            "[[auth.legacy]]\napplication = \"technicians\"\nurl = \"http://{legacy}/CheckLogin\"\n"
        )),
    );
    let out = Command::new(BIN).args(["check-config", &tech]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("technicians = true"), "{out:?}");
    let foreign = write(
        dir.path(),
        "foreign.toml",
        &text(&format!(
            "[[auth.legacy]]\napplication = \"other-app\"\nurl = \"http://{legacy}/CheckLogin\"\n"
        )),
    );
    let out = Command::new(BIN).args(["check-config", &foreign]).output().unwrap();
    assert!(!out.status.success(), "an application this gateway does not serve: {out:?}");

    let config = write(
        dir.path(),
        "gatewayd.toml",
        &text(&format!(
            "[[auth.legacy]]\napplication = \"my-app\"\nurl = \"http://{legacy}/CheckLogin\"\n"
        )),
    );
    let gw = Running::start(&config, None);
    let web = gw.web_addr();
    let curl_publish = |user: &str, password: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-u"])
            .arg(format!("{user}:{password}"))
            .args(["-H", "Content-Type: application/json", "-d", "{\"temp\":21}"])
            .arg(format!("http://{web}/v1/temperature"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    // the same credential in any other application, and a bare e-mail (Drogue reads it as
    // device "test" of application "example.com"): refused, the service never asked
    assert_eq!(curl_publish("test@example.com@other-app", "123"), "403");
    assert_eq!(curl_publish("test@example.com@technicians", "123"), "403");
    assert_eq!(curl_publish("test@example.com", "123"), "403");
    assert!(asked.lock().unwrap().is_empty(), "{:?}", asked.lock().unwrap());
    // in the migratory application: asked twice (identifier, pair), migrated, then local
    assert_eq!(curl_publish("test@example.com@my-app", "123"), "202");
    assert_eq!(*asked.lock().unwrap(), ["test@example.com", "test@example.com"]);
    assert_eq!(curl_publish("test%40example.com@my-app", "123"), "202", "percent-encoded too");
    if common::have_mosquitto_clients() {
        let out = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(gw.listener_addr("mqtt").rsplit_once(':').unwrap().1)
            .args(["-q", "1", "-i", "mail-sensor", "-u", "test@example.com@my-app", "-P", "123"])
            .args(["-t", "temperature", "-m", "{\"temp\":22}"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(asked.lock().unwrap().len(), 2, "a migrated account is checked locally");
    // the status page is the technicians': the sample account opens nothing there
    let jar = dir.path().join("jar");
    assert_eq!(common::status_page_login(&web, &jar, "test@example.com", "123"), 401);
    assert_eq!(asked.lock().unwrap().len(), 2, "the technicians' app is not migratory");
    drop(gw);
    let listed = String::from_utf8_lossy(&accounts(&config, &["list"]).stdout).into_owned();
    assert!(listed.contains("test@example.com@my-app  sensor  (migrated"), "{listed}");
    assert!(
        !listed.contains("other-app") && !listed.contains("example.com@technicians"),
        "{listed}"
    );
}
