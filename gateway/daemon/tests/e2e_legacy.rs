//! Legacy login migration through the real binary: an account the old CheckLogin service
//! knows logs in once through it, is migrated, and is then checked locally; the migrated
//! account's password is locked until `gatewayd accounts reset`.

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
async fn legacy_account_is_migrated_on_first_login_and_locked_until_reset() {
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
             [web]\nlisten = \"127.0.0.1:0\"\n\n[log]\nformat = \"json\"\n",
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

    // the migrated account: app-scoped, locked against password changes until reset
    let out = accounts(&config, &["list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("olduser@my-app") && listed.contains("migrated"), "{listed}");
    let pw = write(dir.path(), "new.pw", "new-pw\n");
    let out = accounts(&config, &["set-password", "olduser@my-app", "--password-file", &pw]);
    assert!(!out.status.success(), "password change of a migrated account must be refused");
    let out = accounts(&config, &["reset", "olduser@my-app"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = accounts(&config, &["set-password", "olduser@my-app", "--password-file", &pw]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

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
