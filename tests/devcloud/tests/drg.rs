//! Drives the dev cloud with Drogue's real CLI `drg` 0.11, and the `devcloud` binary.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use base64::Engine;
use common::{ADMIN, Cloud, Receiver, TIMEOUT};
use gw_devcloud::Seed;

const DRG_TIMEOUT: Duration = Duration::from_secs(60);

fn find_drg() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|p| p.join("drg")).find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = PathBuf::from(std::env::var_os("HOME")?);
        Some(home.join(".cargo/bin/drg")).filter(|p| p.is_file())
    })
}

/// Runs `drg` with a config file and HOME inside `dir`, so the user's config is untouched.
async fn drg(bin: &Path, dir: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("--config")
        .arg(dir.join("drg_config.yaml"))
        .args(args)
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", dir.join(".config"))
        .env_remove("DRGCFG")
        .env_remove("DRG_CONTEXT")
        .env_remove("DRG_APP")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(DRG_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("drg {args:?} did not finish within {DRG_TIMEOUT:?}"))
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn real_drg_manages_devices_and_sends_a_pushed_command() {
    let Some(bin) = find_drg() else {
        assert!(std::env::var_os("CI").is_none(), "drg is required in CI but was not found");
        println!("SKIP real_drg_manages_devices_and_sends_a_pushed_command: drg not installed");
        return;
    };
    let rx = Receiver::start(axum::http::StatusCode::OK).await;
    let c = Cloud::start(Seed::new().user(ADMIN.0, ADMIN.1)).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = format!("{}:{}", ADMIN.0, ADMIN.1);
    let url = c.cloud.url();

    let (ok, out) = drg(&bin, d, &["login", &url, "--access-token", &token]).await;
    assert!(ok, "login: {out}");
    let (ok, out) = drg(&bin, d, &["create", "app", "demo"]).await;
    assert!(ok, "create app: {out}");
    let gw_spec = serde_json::json!({
        "authentication": {"credentials": [{"pass": "gw-secret"}]},
        "commands": {"commands": [{"external": {"url": rx.url()}}]},
    })
    .to_string();
    let (ok, out) =
        drg(&bin, d, &["create", "device", "--application", "demo", "gw1", "--spec", &gw_spec])
            .await;
    assert!(ok, "create gw1: {out}");
    let sensor_spec = r#"{"gatewaySelector":{"matchNames":["gw1"]},"alias":["s-1"]}"#;
    let (ok, out) = drg(
        &bin,
        d,
        &["create", "device", "--application", "demo", "sensor1", "--spec", sensor_spec],
    )
    .await;
    assert!(ok, "create sensor1: {out}");

    let (ok, out) = drg(&bin, d, &["get", "devices", "--application", "demo"]).await;
    assert!(ok && out.contains("gw1") && out.contains("sensor1"), "get devices: {out}");
    let stored = c.cloud.device("demo", "sensor1").unwrap();
    assert!(stored.named_gateways(gw_model::registry::ProxyRules::DROGUE).any(|n| n == "gw1"));

    // A successful push answers 200 with an empty body, as Drogue does; drg 0.11 then tries to
    // decode a JSON body and reports "error decoding response body", so its exit status is not
    // asserted. What counts is that the command reached the gateway's push endpoint.
    let (_ok, out) = drg(
        &bin,
        d,
        &["cmd", "sensor1", "set-temp", "--application", "demo", "--payload", r#"{"t":21}"#],
    )
    .await;
    let bodies = rx.bodies();
    assert_eq!(bodies.len(), 1, "drg cmd output: {out}");
    assert_eq!(bodies[0]["application"], "demo");
    assert_eq!(bodies[0]["device"], "sensor1");
    assert_eq!(bodies[0]["command"], "set-temp");
    let payload = base64::engine::general_purpose::STANDARD
        .decode(bodies[0]["payload"].as_str().unwrap())
        .unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&payload).unwrap()["t"], 21);
    println!("drg cmd said: {out}");
    // the registry changes were logged as events
    let events = c.cloud.wait_for_events(3, TIMEOUT).await;
    assert!(events.iter().any(|e| e.device.as_deref() == Some("sensor1")));
}

#[test]
fn binary_prints_its_url_and_serves() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devcloud"))
        .args(["--listen", "127.0.0.1:0", "--user", "admin:t"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // keep the pipe open while the binary runs: it prints a second line
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("devcloud listening on ").map(str::to_owned);
    let mut mqtt_line = String::new();
    stdout.read_line(&mut mqtt_line).unwrap();
    let result = url.as_ref().map(|url| {
        gw_devcloud::commands::install_crypto_provider();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let resp = reqwest::Client::new()
                .get(format!("{url}/.well-known/drogue-endpoints"))
                .timeout(TIMEOUT)
                .send()
                .await
                .unwrap();
            resp.json::<serde_json::Value>().await.unwrap()
        })
    });
    let _ = child.kill();
    let _ = child.wait();
    let url = url.unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(result.unwrap()["registry"]["url"], url);
    let mqtt = mqtt_line.trim().strip_prefix("devcloud mqtt on ").unwrap_or_default();
    assert!(mqtt.starts_with("mqtt://127.0.0.1:"), "{mqtt_line:?}");
}
