//! Only the right identity, only in its own place, tried against the real binary as an
//! attacker on the site's network would, with independent clients (curl, mosquitto_pub,
//! coap-client, raw sockets): other applications' and technicians' identities reach nothing,
//! no request leaves the cloud's `/v1/`, a disabled device is out, a lockout attack from ten
//! addresses does not keep the owner out, and the smaller holes stay closed.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use common::{API_TOKEN, BIN, Running, have_mosquitto_clients, status, write};
use gw_devcloud::{CloudEvent, DevCloud, Seed, events::TYPE_EVENT, seed::device_with};
use gw_model::registry::Device;
use tokio_util::sync::CancellationToken;

const APP: &str = "my-app";
const PUSH: &str = "push-s3cret";

/// A gateway of `my-app` with the dev cloud as uplink and registry, MQTT, CoAP, the web
/// listener (push endpoint, API token, admin password `admin-pw`), and `extra` sections.
fn config(dir: &Path, cloud: &str, extra: &str) -> String {
    let pw = write(dir, "admin.pw", "admin-pw\n");
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {cloud:?}\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"300ms\"\n\n\
         [registry]\nurl = {cloud:?}\ntoken = \"api-token\"\ninterval = \"200ms\"\n\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\n\n[coap]\nlisten = \"127.0.0.1:0\"\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = {API_TOKEN:?}\npush_token = {PUSH:?}\n\
         admin_password_file = {pw:?}\n\n{extra}\n[log]\nformat = \"json\"\n",
        dir.join("data").display().to_string()
    );
    write(dir, "gatewayd.toml", &text)
}

async fn cloud(devices: Vec<Device>) -> DevCloud {
    let mut seed = Seed::new()
        .user("admin", "api-token")
        .application(APP)
        .password_device(APP, "gw1", "gw-secret")
        .sensor(APP, "s1", Some("pw-s1"), &["gw1"]);
    for d in devices {
        seed = seed.device(d);
    }
    DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, CancellationToken::new()).await.unwrap()
}

/// A sensor of `my-app` the registry lists for `gw1`, with `spec` merged in.
fn sensor(name: &str, spec: serde_json::Value) -> Device {
    let mut d = device_with(APP, name, Some("pw"), &["gw1"]);
    let mut v = serde_json::to_value(&d).unwrap();
    for (k, val) in spec.as_object().unwrap() {
        v["spec"][k] = val.clone();
    }
    d = serde_json::from_value(v).unwrap();
    d
}

fn telemetry(cloud: &DevCloud) -> Vec<CloudEvent> {
    cloud.events().into_iter().filter(|e| e.kind == TYPE_EVENT).collect()
}

/// `curl` with `args`; returns the status line's code and the whole answer (headers, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out =
        Command::new("curl").args(["-s", "-i", "--max-time", "10"]).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

fn post(web: &str, user_pw: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let url = format!("http://{web}{path}");
    let mut args = vec!["-u", user_pw, "-H", "Content-Type: application/json", "-d", "{\"t\":1}"];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

fn push(web: &str, device: &str, app: &str, command: &str) -> (u16, String) {
    let body =
        serde_json::json!({"application": app, "device": device, "command": command}).to_string();
    let url = format!("http://{web}/api/commands/v1/push");
    let bearer = format!("Authorization: Bearer {PUSH}");
    curl(&["-H", &bearer, "-H", "Content-Type: application/json", "-d", &body, &url])
}

/// `mosquitto_pub -d` (QoS 1) as `user`; debug output (stdout and stderr) and success.
fn mosquitto_pub(port: &str, version: &str, user: &str, pw: &str, topic: &str) -> (bool, String) {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", port, "-V", version, "-q", "1", "-d", "-t", topic])
        .args(["-u", user, "-P", pw, "-i", &format!("pub-{}", user.len()), "-m", "{\"t\":1}"])
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn coap_post(addr: &str, user_pw: &str, path: &str) -> String {
    let auth = format!("4209,Basic {}", STANDARD_NO_PAD.encode(user_pw));
    let out = Command::new("coap-client-notls")
        .args(["-B", "10", "-m", "post", "-t", "50", "-O", &auth, "-e", "{\"t\":1}"])
        .arg(format!("coap://{addr}{path}"))
        .output()
        .unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn have_coap_client() -> bool {
    let ok = Command::new("coap-client-notls").arg("-h").output().is_ok();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "coap-client-notls missing in CI");
        eprintln!("SKIP: coap-client-notls not installed");
    }
    ok
}

/// The bound addresses of the listeners, from `/api/v1/status`.
async fn listeners(web: &str) -> std::collections::HashMap<String, String> {
    let s = status(&reqwest::Client::new(), web).await;
    s["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].as_str().unwrap().to_owned(), l["addr"].as_str().unwrap().to_owned()))
        .collect()
}

fn port(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

/// Polls until `user_pw` publishing over HTTP gets `want` (15 s at most).
async fn until_post(web: &str, user_pw: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (got, text) = post(web, user_pw, "/v1/temperature", &[]);
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{user_pw}: {got}, wanted {want}: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_telemetry(cloud: &DevCloud, n: usize) -> Vec<CloudEvent> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let t = telemetry(cloud);
        if t.len() >= n || Instant::now() > deadline {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn technicians_and_other_applications_reach_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = cloud(vec![]).await;
    let cfg = config(dir.path(), &cloud.url(), "");
    let gw = Running::start(&cfg, None);
    let web = gw.web_addr();
    until_post(&web, "s1@my-app:pw-s1", 202).await;
    let l = listeners(&web).await;

    // the technician's own password, on every protocol
    assert_eq!(post(&web, "admin@technicians:admin-pw", "/v1/temperature", &[]).0, 403);
    if have_mosquitto_clients() {
        for v in ["mqttv311", "mqttv5"] {
            let (ok, out) =
                mosquitto_pub(port(&l["mqtt"]), v, "admin@technicians", "admin-pw", "t");
            assert!(!ok && out.to_lowercase().contains("not author"), "{v}: {out}");
        }
    }
    if have_coap_client() {
        let out = coap_post(&l["coap"], "admin@technicians:admin-pw", "/v1/temperature");
        assert!(out.contains("4.03"), "{out}");
    }
    // a local account of another application cannot even be made
    let mut add = Command::new(BIN)
        .args(["accounts", "--config", &cfg, "add", "sensor1@evil-app"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin.take().unwrap().write_all(b"evil-pw\n").unwrap();
    assert!(!add.wait_with_output().unwrap().status.success());
    // a static device of another application is a config error
    let foreign = write(
        dir.path(),
        "foreign.toml",
        "[gateway]\nname = \"gw1\"\napplication = \"my-app\"\n\n[[devices]]\nname = \"foreign1\"\napplication = \"other-app\"\npassword = \"pw\"\n",
    );
    let out = Command::new(BIN).args(["check-config", &foreign]).output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    // no commands are queued for them
    for (device, app) in [("admin", "technicians"), ("foreign1", "other-app")] {
        let (code, text) = push(&web, device, app, "set");
        assert!(!(200..300).contains(&code), "{device}@{app}: {text}");
    }
    let events = wait_telemetry(&cloud, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let devices: Vec<_> = telemetry(&cloud).iter().map(|e| e.device.clone()).collect();
    assert_eq!(devices, [Some("s1".to_owned())], "only the sensor's message: {events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_leaves_the_clouds_v1_whatever_a_sensor_sends() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = cloud(vec![]).await;
    let gw = Running::start(&config(dir.path(), &cloud.url(), ""), None);
    let web = gw.web_addr();
    until_post(&web, "s1@my-app:pw-s1", 202).await;
    let l = listeners(&web).await;
    for path in ["/v1/..", "/v1/%2e%2e", "/v1/.%2e", "/v1/.", "/v1/temp/..", "/v1/temp/%2E%2e/x"] {
        let (code, text) = post(&web, "s1@my-app:pw-s1", path, &["--path-as-is"]);
        assert!(code == 400 || code == 404, "{path}: {text}");
    }
    if have_mosquitto_clients() {
        for topic in ["..", "temp/..", "temp/%2e%2e/x", "./x"] {
            let (_, out) = mosquitto_pub(port(&l["mqtt"]), "mqttv5", "s1@my-app", "pw-s1", topic);
            assert!(!out.contains("PUBACK (Mid: 1, RC:0)"), "{topic}: {out}");
        }
    }
    if have_coap_client() {
        for path in ["/v1/%2E%2E", "/v1/temp/%2e%2e"] {
            let out = coap_post(&l["coap"], "s1@my-app:pw-s1", path);
            assert!(!out.contains("2.04") && !out.contains("2.01"), "{path}: {out}");
        }
    }
    // one more good message, then everything the cloud was asked
    assert_eq!(post(&web, "s1@my-app:pw-s1", "/v1/last", &[]).0, 202);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !telemetry(&cloud).iter().any(|e| e.subject == "last") {
        assert!(Instant::now() < deadline, "the last message never arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests = cloud.faults().requests();
    for r in &requests {
        let path = r.split_whitespace().nth(1).unwrap();
        let ok = if r.starts_with("POST ") {
            path.starts_with("/v1/")
        } else {
            path.starts_with("/api/")
        };
        assert!(ok && !path.contains("/.") && !path.contains("%2e"), "{r} in {requests:?}");
    }
    let subjects: Vec<_> = telemetry(&cloud).into_iter().map(|e| e.subject).collect();
    assert_eq!(subjects, ["temperature", "last"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_device_logs_in_nowhere_and_gets_no_commands() {
    let dir = tempfile::tempdir().unwrap();
    let off = sensor("off", serde_json::json!({"core": {"disabled": true}}));
    let empty = {
        let mut v = serde_json::to_value(device_with(APP, "empty", Some(""), &["gw1"])).unwrap();
        v["spec"]["authentication"] = serde_json::json!({"credentials": [{"pass": ""}]});
        serde_json::from_value::<Device>(v).unwrap()
    };
    let cloud = cloud(vec![off, empty]).await;
    let gw = Running::start(&config(dir.path(), &cloud.url(), ""), None);
    let web = gw.web_addr();
    until_post(&web, "s1@my-app:pw-s1", 202).await;
    let l = listeners(&web).await;
    assert_eq!(post(&web, "off@my-app:pw", "/v1/temperature", &[]).0, 403);
    assert_eq!(post(&web, "empty@my-app:", "/v1/temperature", &[]).0, 403, "no password");
    if have_mosquitto_clients() {
        let (ok, out) = mosquitto_pub(port(&l["mqtt"]), "mqttv311", "off@my-app", "pw", "t");
        assert!(!ok, "{out}");
    }
    if have_coap_client() {
        assert!(coap_post(&l["coap"], "off@my-app:pw", "/v1/temperature").contains("4.03"));
    }
    let (code, text) = push(&web, "off", APP, "set");
    assert_eq!(code, 404, "{text}");
    // enabled again in the registry: in at the next sync
    let mut d = cloud.device(APP, "off").unwrap();
    d.spec.other.remove("core");
    cloud.apply_device(d).unwrap();
    until_post(&web, "off@my-app:pw", 202).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_logs_in_during_a_lockout_attack_from_ten_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = cloud(vec![]).await;
    let gw = Running::start(&config(dir.path(), &cloud.url(), ""), None);
    let web = gw.web_addr();
    until_post(&web, "s1@my-app:pw-s1", 202).await;
    let l = listeners(&web).await;
    let (web_ip, web_port) = web.rsplit_once(':').unwrap();
    assert_eq!(web_ip, "127.0.0.1");
    let from = |ip: &str, pw: &str| {
        post(&web, &format!("s1@my-app:{pw}"), "/v1/temperature", &["--interface", ip])
    };
    let mut codes = std::collections::BTreeMap::new();
    let mut retry_after = false;
    for a in 2..12 {
        let ip = format!("127.0.0.{a}");
        for _ in 0..6 {
            let (code, text) = from(&ip, "guess");
            *codes.entry(code).or_insert(0) += 1;
            retry_after |= code == 429 && text.to_ascii_lowercase().contains("retry-after:");
        }
    }
    assert!(codes.keys().all(|c| [403, 429].contains(c)), "{codes:?}");
    assert!(codes.contains_key(&429) && retry_after, "throttled with 429 + Retry-After: {codes:?}");
    // the identifier is locked for guesses from anywhere...
    assert_eq!(from("127.0.0.12", "guess").0, 429);
    if have_mosquitto_clients() {
        let (ok, out) = mosquitto_pub(port(&l["mqtt"]), "mqttv5", "s1@my-app", "guess", "t");
        assert!(!ok && out.contains("Quota exceeded"), "MQTT v5 0x97: {out}");
    }
    if have_coap_client() {
        assert!(coap_post(&l["coap"], "s1@my-app:guess", "/v1/t").contains("4.29"));
    }
    // ...but the owner's credential, verified before, passes, from home and from elsewhere
    assert_eq!(from("127.0.0.1", "pw-s1").0, 202);
    assert_eq!(from("127.0.0.13", "pw-s1").0, 202);
    let _ = web_port;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_technician_api_needs_a_login_and_answers_with_security_headers() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = cloud(vec![]).await;
    let gw = Running::start(&config(dir.path(), &cloud.url(), ""), None);
    let web = gw.web_addr();
    let bearer = format!("Authorization: Bearer {API_TOKEN}");
    for path in ["/api/v1/status", "/metrics"] {
        let url = format!("http://{web}{path}");
        assert_eq!(curl(&[&url]).0, 401, "{path} without credentials");
        assert_eq!(curl(&["-H", "Authorization: Bearer wrong-token-000000", &url]).0, 401);
        assert_eq!(curl(&["-H", &bearer, &url]).0, 200, "{path} with the API token");
    }
    // a technician's session opens it too
    let jar = dir.path().join("jar");
    assert_eq!(common::status_page_login(&web, &jar, "admin", "admin-pw"), 303);
    let url = format!("http://{web}/api/v1/status");
    assert_eq!(curl(&["-b", &jar.display().to_string(), &url]).0, 200);
    // headers on every page
    let (_, login) = curl(&[&format!("http://{web}/login")]);
    let lower = login.to_ascii_lowercase();
    for h in
        ["x-content-type-options: nosniff", "x-frame-options: deny", "referrer-policy: no-referrer"]
    {
        assert!(lower.contains(h), "{h}: {login}");
    }
    assert!(
        lower.contains("content-security-policy: default-src 'none'; style-src 'sha256-"),
        "{login}"
    );
    // after login, `next` stays on this site
    for next in ["/\t/evil.example", "//evil.example", "/%09/evil.example", "https://evil.example/"]
    {
        let page = curl(&[&format!("http://{web}/login")]).1;
        let token = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap();
        let cookie = page
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .unwrap()
            .split_once(':')
            .unwrap()
            .1
            .split(';')
            .next()
            .unwrap()
            .trim()
            .to_owned();
        let (code, r) = curl(&[
            "-b",
            &cookie,
            "-d",
            &format!("csrf={token}"),
            "-d",
            "username=admin",
            "-d",
            "password=admin-pw",
            "--data-urlencode",
            &format!("next={next}"),
            &format!("http://{web}/login"),
        ]);
        assert_eq!(code, 303, "{r}");
        let location = r.lines().find(|l| l.to_ascii_lowercase().starts_with("location:")).unwrap();
        assert_eq!(location.split_once(':').unwrap().1.trim(), "/", "{next:?}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_take_basic_refuse_replays_and_warn_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = cloud(vec![]).await;
    let gw = Running::start(&config(dir.path(), &cloud.url(), ""), None);
    let web = gw.web_addr();
    until_post(&web, "s1@my-app:pw-s1", 202).await;
    let url = format!("http://{web}/api/commands/v1/push");
    let body =
        serde_json::json!({"application": APP, "device": "s1", "command": "set"}).to_string();
    let basic = format!("drogue:{PUSH}");
    let (first, text) =
        curl(&["-u", &basic, "-H", "Content-Type: application/json", "-d", &body, &url]);
    assert_eq!(first, 202, "Basic with the token as password: {text}");
    for _ in 0..2 {
        let (code, text) = push(&web, "s1", APP, "set");
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("duplicate"), "a captured push replayed: {text}");
    }
    let s = status(&reqwest::Client::new(), &web).await;
    assert_eq!(s["commands"]["queued"], 1, "queued once: {}", s["commands"]);
    gw.wait_for("travels in clear", Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_name_costs_as_much_as_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = cloud(vec![]).await;
    // the default argon2 parameters; no lockout in the way of the measurement
    let gw =
        Running::start(&config(dir.path(), &cloud.url(), "[auth]\nmax_failures = 1000\n"), None);
    let web = gw.web_addr();
    until_post(&web, "s1@my-app:pw-s1", 202).await;
    let once = |user: &str, i: usize| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{time_total}", "-u"])
            .arg(format!("{user}:wrong-{i}"))
            .args(["-d", "{}", &format!("http://{web}/v1/t")])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().parse::<f64>().unwrap()
    };
    // interleaved, so that whatever else runs on the machine weighs on both alike
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for i in 0..15 {
        known.push(once("s1@my-app", i));
        unknown.push(once("nobody@my-app", i));
    }
    let median = |mut t: Vec<f64>| {
        t.sort_by(f64::total_cmp);
        t[t.len() / 2]
    };
    let (known, unknown) = (median(known), median(unknown));
    assert!(unknown > known * 0.5, "unknown {unknown:.4} s vs known {known:.4} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_forged_log_lines_no_malformed_connects_and_a_private_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cloud = cloud(vec![]).await;
    // a data dir made loosely by hand, with a stray readable file
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("outbox")).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(data.join("outbox"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("notes.txt"), "site notes").unwrap();
    std::fs::set_permissions(data.join("notes.txt"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let cfg = config(dir.path(), &cloud.url(), "");
    let human =
        std::fs::read_to_string(&cfg).unwrap().replace("format = \"json\"", "format = \"human\"");
    let web_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mqtt_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let human = human
        .replacen(
            "[mqtt]\nlisten = \"127.0.0.1:0\"",
            &format!("[mqtt]\nlisten = \"{mqtt_port}\""),
            1,
        )
        .replacen("[web]\nlisten = \"127.0.0.1:0\"", &format!("[web]\nlisten = \"{web_port}\""), 1);
    let cfg = write(dir.path(), "human.toml", &human);
    let gw = Running::start(&cfg, None);
    let web = web_port.to_string();
    until_post(&web, "s1@my-app:pw-s1", 202).await;
    let port = mqtt_port.port().to_string();

    // a client id with a line break cannot start a log line of its own (raw bytes: the
    // mosquitto clients refuse control characters themselves); without a clean session the
    // refusal is logged with the client id
    let id = b"x\nFORGED ERROR admin logged in";
    let mut forged =
        vec![0x10, (10 + 2 + id.len()) as u8, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60];
    forged.extend_from_slice(&(id.len() as u16).to_be_bytes());
    forged.extend_from_slice(id);
    let mut s = TcpStream::connect(mqtt_port).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&forged).unwrap();
    let mut buf = [0u8; 8];
    let n = s.read(&mut buf).unwrap_or(0);
    assert!(n >= 4 && buf[0] == 0x20 && buf[3] != 0, "refused: {:?}", &buf[..n]);
    let _ = port;
    // a reserved CONNECT flag, and a v5 Receive Maximum of 0: no session
    let connects: [&[u8]; 2] = [
        &[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 1, b'a'],
        &[0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 3, 0x21, 0, 0, 0, 1, b'a'],
    ];
    for connect in connects {
        let mut s = TcpStream::connect(mqtt_port).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(connect).unwrap();
        let mut buf = [0u8; 8];
        let n = s.read(&mut buf).unwrap_or(0);
        let accepted = n >= 4 && buf[0] == 0x20 && buf[3] == 0;
        assert!(!accepted, "{connect:?} got {:?}", &buf[..n]);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut log = Vec::new();
    while let Ok(line) = gw.lines.try_recv() {
        log.push(line);
    }
    assert!(log.iter().any(|l| l.contains("FORGED")), "the refusal is logged: {log:?}");
    assert!(!log.iter().any(|l| l.starts_with("FORGED")), "a forged line: {log:?}");
    drop(gw);

    // nothing under data_dir is open to anybody else
    let mut stack = vec![data.clone()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            seen += 1;
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let mode = meta.permissions().mode() & 0o777;
                assert_eq!(mode & 0o177, 0, "{} is {mode:o}", e.path().display());
            }
        }
    }
    assert!(seen > 5, "the walk saw the outbox, the caches and the accounts: {seen}");
}
