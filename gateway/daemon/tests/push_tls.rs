//! The web listener over HTTPS, and the command push endpoint behind a client certificate
//! (mTLS): `curl` with and without a certificate, with one from another CA, against the
//! daemon's TLS serving and the push endpoint as `gatewayd` mounts them. The command router is
//! a test sink.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Command, sync::Arc, time::Duration};

use gatewayd::{config::Config, push, web_tls};
use gw_cloud_sync::CommandIntake;
use gw_model::{CommandOutcome, CommandSink};
use tokio_util::sync::CancellationToken;

struct Sink;

impl CommandSink for Sink {
    async fn submit(&self, command: gw_model::Command) -> CommandOutcome {
        if command.device.as_str() == "sensor1" {
            CommandOutcome::Queued
        } else {
            CommandOutcome::UnknownDevice
        }
    }
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok()
        || Command::new(tool).arg("version").output().is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{tool} is required under CI");
        eprintln!("SKIP: {tool} not installed");
    }
    found
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

const EC: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

fn ca(dir: &Path, name: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &EC,
            &["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &format!("/CN={name}")],
        ]
        .concat(),
    );
}

fn issue(dir: &Path, ca: &str, name: &str, cn: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
    openssl(
        dir,
        &[&["req"][..], &EC, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={cn}")]]
            .concat(),
    );
    let (ca_pem, ca_key, ext) = (format!("{ca}.pem"), format!("{ca}.key"), format!("{name}.ext"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

/// Server CA + server certificate for 127.0.0.1; the push CA and a cloud client certificate it
/// issued; another CA and a client certificate from it.
fn make_pki(dir: &Path) {
    ca(dir, "server-ca");
    issue(dir, "server-ca", "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\n");
    ca(dir, "push-ca");
    issue(dir, "push-ca", "cloud", "drogue-cloud", "extendedKeyUsage=clientAuth\n");
    ca(dir, "rogue-ca");
    issue(dir, "rogue-ca", "rogue", "drogue-cloud", "extendedKeyUsage=clientAuth\n");
}

/// Runs curl; returns the HTTP status, or 0 when the TLS handshake (or connection) failed.
async fn curl(dir: &Path, url: &str, extra: &[&str]) -> u16 {
    let body = r#"{"application":"my-app","device":"sensor1","command":"set","payload":"MQ=="}"#;
    let out = tokio::process::Command::new("curl")
        .current_dir(dir)
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", "server-ca.pem"])
        .args(["-H", "Content-Type: application/json", "--data", body])
        .args(extra)
        .arg(url)
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

async fn start(dir: &Path, client_ca: bool) -> (String, CancellationToken) {
    let d = dir.display();
    let mut web = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"my-app\"\n[web]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\npush_token = \"s3cret\"\n"
    );
    if client_ca {
        web.push_str(&format!("push_client_ca_file = \"{d}/push-ca.pem\"\n"));
    }
    let loaded = Config::from_str_at(&web, "test.toml").unwrap();
    let web = &loaded.config.web;
    let tls = push::tls(web).unwrap();
    assert!(tls.is_some());
    let intake = CommandIntake::new(Arc::new(Sink));
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .merge(push::router(web, loaded.push_token.clone(), intake).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let limits = web_tls::WebLimits::from_config(&gatewayd::config::WebConfig::default());
    let heartbeat = gw_net::Heartbeat::new("web");
    tokio::spawn(web_tls::serve(listener, app, tls, limits, heartbeat, stop.clone()));
    (format!("https://{addr}"), stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_over_https_requires_a_client_certificate_from_the_push_ca() {
    if !have("curl") || !have("openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    make_pki(tmp.path());
    let (base, stop) = start(tmp.path(), true).await;
    let push = format!("{base}/api/commands/v1/push");
    let dir = tmp.path();
    let bearer = ["-H", "Authorization: Bearer s3cret"];
    let cloud_cert = ["--cert", "cloud.pem", "--key", "cloud.key"];

    assert_eq!(curl(dir, &push, &[&bearer[..], &cloud_cert[..]].concat()).await, 202);
    assert_eq!(curl(dir, &push, &bearer).await, 403, "no client certificate");
    assert_eq!(
        curl(
            dir,
            &push,
            &[&bearer[..], &["--cert", "rogue.pem", "--key", "rogue.key"][..]].concat()
        )
        .await,
        0,
        "a certificate from another CA fails the handshake"
    );
    assert_eq!(curl(dir, &push, &cloud_cert).await, 401, "the certificate alone is not enough");
    assert_eq!(
        curl(dir, &push, &[&cloud_cert[..], &["-H", "Authorization: Bearer nope"][..]].concat())
            .await,
        403
    );
    // other routes need no client certificate
    let health = tokio::process::Command::new("curl")
        .current_dir(dir)
        .args(["-s", "--cacert", "server-ca.pem", &format!("{base}/healthz")])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&health.stdout), "ok");
    // plain HTTP to the TLS port is no request
    let plain = base.replace("https://", "http://");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), curl(dir, &format!("{plain}/healthz"), &[]))
            .await
            .unwrap(),
        0
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_over_https_without_client_ca_takes_the_bearer_secret_alone() {
    if !have("curl") || !have("openssl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    make_pki(tmp.path());
    let (base, stop) = start(tmp.path(), false).await;
    let push = format!("{base}/api/commands/v1/push");
    let dir = tmp.path();
    assert_eq!(curl(dir, &push, &["-H", "Authorization: Bearer s3cret"]).await, 202);
    assert_eq!(curl(dir, &push, &[]).await, 401);
    stop.cancel();
}
