//! Client-certificate logins on the MQTT TLS listener, end to end: certificates made with
//! openssl in the test, `mosquitto_pub --cert/--key/--cafile` against the real gatewayd, the
//! dev cloud receiving what a certificate-authenticated sensor published. The client CA is
//! requested, not required: a password login over the same listener still works.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{Running, have_mosquitto_clients, status, write};
use gw_devcloud::{DevCloud, Seed};
use tokio_util::sync::CancellationToken;

const APP: &str = "my-app";

/// A CA (`{ca}.pem`/`.key`) and certificates it signs: `server` for 127.0.0.1, and client
/// certificates with the given subjects. Returns false (skip) without openssl outside CI.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

const EC: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

fn make_ca(dir: &Path, ca: &str) {
    let subj = format!("/CN={ca}");
    let (key, pem) = (format!("{ca}.key"), format!("{ca}.pem"));
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &EC,
            &["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj],
        ]
        .concat(),
    );
}

/// Signs `name.pem` (key `name.key`) with subject `subj` by `ca`; `ext` is its extension line.
fn make_cert(dir: &Path, ca: &str, name: &str, subj: &str, ext: &str) {
    let (key, csr, pem, extf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extf), format!("{ext}\n")).unwrap();
    openssl(dir, &[&["req"][..], &EC, &["-keyout", &key, "-out", &csr, "-subj", subj]].concat());
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
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
            &extf,
        ],
    );
}

fn args(v: &[String; 4]) -> [&str; 4] {
    [&v[0], &v[1], &v[2], &v[3]]
}

fn have_openssl() -> bool {
    let ok = Command::new("openssl").arg("version").output().is_ok();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "openssl is required under CI");
        eprintln!("SKIP: openssl not installed");
    }
    ok
}

fn config(dir: &Path, cloud: &str) -> String {
    let p = |f: &str| dir.join(f).display().to_string();
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {data:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {cloud:?}\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"200ms\"\n\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\n\
         cert_file = {cert:?}\nkey_file = {key:?}\nclient_ca_file = {ca:?}\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n[log]\nformat = \"json\"\n\n\
         [[devices]]\nname = \"sensor1\"\npassword = \"pw1\"\n",
        data = p("data"),
        cert = p("server.pem"),
        key = p("server.key"),
        ca = p("sensors-ca.pem"),
    );
    write(dir, "gatewayd.toml", &text)
}

fn publish(dir: &Path, port: &str, version: &str, login: &[&str], payload: &str) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .current_dir(dir)
        .args(["-h", "127.0.0.1", "-p", port, "--cafile", "server-ca.pem", "-V", version])
        .args(["-q", "1", "-t", "temperature", "-m", payload])
        .args(login)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_logs_in_as_the_known_device_it_names() {
    if !have_mosquitto_clients() || !have_openssl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "server-ca");
    make_cert(d, "server-ca", "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1");
    make_ca(d, "sensors-ca");
    make_ca(d, "rogue-ca");
    let client = "extendedKeyUsage=clientAuth";
    make_cert(d, "sensors-ca", "sensor1", "/O=Acme/CN=sensor1", client);
    make_cert(d, "sensors-ca", "stranger", "/O=Acme/CN=stranger", client);
    make_cert(d, "rogue-ca", "forged", "/O=Acme/CN=sensor1", client);

    let seed = Seed::new().application(APP).password_device(APP, "gw1", "gw-secret").sensor(
        APP,
        "sensor1",
        None,
        &["gw1"],
    );
    let cloud = DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, CancellationToken::new())
        .await
        .unwrap();
    let gw = Running::start(&config(d, &cloud.url()), None);
    let web = gw.web_addr();
    let tls = gw.listener_addr("mqtts");
    let port = tls.rsplit_once(':').unwrap().1.to_owned();

    let cert = |name: &'static str| {
        let (c, k) = (format!("{name}.pem"), format!("{name}.key"));
        [String::from("--cert"), c, String::from("--key"), k]
    };
    let (sensor1, stranger, forged) = (cert("sensor1"), cert("stranger"), cert("forged"));

    // the certificate alone: no username, no password
    for (version, payload) in [("mqttv311", r#"{"cert":311}"#), ("mqttv5", r#"{"cert":5}"#)] {
        let (ok, err) = publish(d, &port, version, &args(&sensor1), payload);
        assert!(ok, "{version}: {err}");
    }
    // a password login over the same listener, without a certificate
    let (ok, err) = publish(d, &port, "mqttv311", &["-u", "sensor1", "-P", "pw1"], r#"{"pw":1}"#);
    assert!(ok, "{err}");

    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events: Vec<_> =
            cloud.events().into_iter().filter(|e| e.kind == "io.drogue.event.v1").collect();
        if events.len() >= 3 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(events.len(), 3, "{events:?}");
    for (e, data) in events.iter().zip([
        serde_json::json!({"cert": 311}),
        serde_json::json!({"cert": 5}),
        serde_json::json!({"pw": 1}),
    ]) {
        assert_eq!(e.device.as_deref(), Some("sensor1"));
        assert_eq!(e.subject, "temperature");
        assert_eq!(e.data, Some(data));
    }

    // a valid certificate of a device the gateway does not know: refused like bad credentials
    let (ok, err) = publish(d, &port, "mqttv311", &args(&stranger), "x");
    assert!(!ok);
    assert!(err.contains("bad user name or password"), "{err}");
    let (ok, err) = publish(d, &port, "mqttv5", &args(&stranger), "x");
    assert!(!ok);
    assert!(err.contains("Bad User Name or Password"), "{err}");
    // a certificate from another CA, naming a known device: the TLS handshake fails
    let (ok, err) = publish(d, &port, "mqttv311", &args(&forged), "x");
    assert!(!ok, "a forged certificate got in: {err}");
    // no certificate and no password: refused
    let (ok, err) = publish(d, &port, "mqttv311", &[], "x");
    assert!(!ok);
    assert!(err.contains("bad user name or password"), "{err}");

    let status = status(&reqwest::Client::new(), &web).await;
    assert_eq!(status["mqtt"]["refused_logins"], 3, "{status}");
    assert_eq!(cloud.events().iter().filter(|e| e.kind == "io.drogue.event.v1").count(), 3);
}
