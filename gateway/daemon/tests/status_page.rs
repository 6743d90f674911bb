//! The technicians' status page in a real headless Chromium (driven by chromedriver over the
//! W3C WebDriver protocol), its login protections checked with curl, and `/metrics` read by
//! Python's `prometheus_client` text-format parser.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use base64::Engine;
use common::{Running, have_mosquitto_clients, write};
use serde_json::{Value, json};

const ADMIN_PW: &str = "correct horse battery";

fn config(dir: &Path) -> String {
    let pw = write(dir, "admin.pw", &format!("{ADMIN_PW}\n"));
    let text = format!(
        r#"
[gateway]
name = "gw1"
application = "app"
data_dir = "{data}"
[web]
listen = "127.0.0.1:0"
admin_password_file = "{pw}"
api_token = "test-api-token-0123"
[mqtt]
listen = "127.0.0.1:0"
[[devices]]
name = "sensor1"
password = "pw"
[[devices]]
name = "sensor2"
password = "pw"
[log]
format = "json"
"#,
        data = dir.join("data").display()
    );
    write(dir, "gatewayd.toml", &text)
}

/// Where screenshots go: `$GATEWAYD_TEST_OUTPUT` (kept), else the target dir.
fn output_dir() -> PathBuf {
    let dir = std::env::var_os("GATEWAYD_TEST_OUTPUT").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page-screenshots")
    });
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn have(bin: &str) -> bool {
    let ok = Command::new(bin).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "{bin} missing in CI");
        eprintln!("SKIP: {bin} not installed");
    }
    ok
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A chromedriver process and one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start() -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let mut last = None;
        for _ in 0..3 {
            let port = free_port();
            let driver = Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let base = format!("http://127.0.0.1:{port}");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if http
                    .get(format!("{base}/status"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    let caps = json!({"capabilities": {"alwaysMatch": {
                        "browserName": "chrome",
                        "goog:chromeOptions": {
                            "binary": "/usr/bin/chromium",
                            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                     "--disable-dev-shm-usage", "--window-size=1100,900"]
                        }
                    }}});
                    let r: Value = http
                        .post(format!("{base}/session"))
                        .json(&caps)
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let session = r["value"]["sessionId"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{r}"))
                        .to_owned();
                    return Self { driver, base, session, http };
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last = Some(driver);
        }
        drop(last);
        panic!("chromedriver did not start");
    }

    async fn try_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        match v["value"].get("error").and_then(Value::as_str) {
            Some(e) => Err(format!("{e}: {}", v["value"]["message"])),
            None => Ok(v["value"].clone()),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).await.unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Retries `f` while the page is still loading (element not there yet, or replaced by the
    /// next page), for up to 15 s: a click that submits a form returns before the next page
    /// has loaded.
    async fn settled<T, F, Fut>(&self, what: &str, mut f: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match f().await {
                Ok(v) => return v,
                Err(e)
                    if (e.starts_with("no such element") || e.starts_with("stale element"))
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }

    async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    async fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None).await.as_str().unwrap().to_owned()
    }

    /// Waits until the current URL contains `part` (a submitted form's next page).
    async fn wait_url(&self, part: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let url = self.url().await;
            if url.contains(part) {
                return url;
            }
            assert!(Instant::now() < deadline, "still at {url}, expected {part}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_find(&self, css: &str) -> Result<String, String> {
        let body = json!({"using": "css selector", "value": css});
        let v = self.try_call(reqwest::Method::POST, "/element", Some(body)).await?;
        Ok(v[ELEMENT].as_str().unwrap().to_owned())
    }

    async fn text(&self, css: &str) -> String {
        self.settled(css, || async {
            let id = self.try_find(css).await?;
            let v =
                self.try_call(reqwest::Method::GET, &format!("/element/{id}/text"), None).await?;
            Ok(v.as_str().unwrap().to_owned())
        })
        .await
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.settled(css, || async {
            let id = self.try_find(css).await?;
            let body = json!({"text": text});
            self.try_call(reqwest::Method::POST, &format!("/element/{id}/value"), Some(body)).await
        })
        .await;
    }

    async fn click(&self, css: &str) {
        self.settled(css, || async {
            let id = self.try_find(css).await?;
            self.try_call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({})))
                .await
        })
        .await;
    }

    async fn source(&self) -> String {
        self.call(reqwest::Method::GET, "/source", None).await.as_str().unwrap().to_owned()
    }

    async fn screenshot(&self, file: &Path) {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(file, png).unwrap();
    }

    /// Polls `css`'s text until `ok` accepts it.
    async fn wait_text(&self, css: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.text(css).await;
            if ok(&t) {
                return t;
            }
            assert!(Instant::now() < deadline, "{css} stayed {t:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session, which closes Chromium, then stops chromedriver. Plain blocking HTTP:
        // drop cannot await.
        let addr = self.base.trim_start_matches("http://").to_owned();
        if let Ok(mut conn) = std::net::TcpStream::connect(&addr) {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if conn.write_all(request.as_bytes()).is_ok() {
                let _ = std::io::Read::read_to_end(&mut conn, &mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_technician_logs_in_and_sees_sensors_outbox_and_every_page() {
    if !have("chromedriver") || !have_mosquitto_clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::start(&config(dir.path()), None);
    let web = gw.web_addr();
    let mqtt = gw.listener_addr("mqtt");
    let (mhost, mport) = mqtt.rsplit_once(':').unwrap();
    let out = output_dir();
    let browser = Browser::start().await;

    // Any page sends an anonymous visitor to the login form, which comes back after login.
    browser.goto(&format!("http://{web}/sensors")).await;
    assert!(browser.url().await.contains("/login"), "{}", browser.url().await);
    browser.screenshot(&out.join("login.png")).await;
    browser.type_into("#username", "admin").await;
    browser.type_into("#password", "wrong password").await;
    browser.click("button[type=submit]").await;
    assert!(browser.text(".error").await.contains("Wrong user or password"));
    browser.type_into("#username", "admin").await;
    browser.type_into("#password", ADMIN_PW).await;
    browser.click("button[type=submit]").await;
    assert!(browser.wait_url("/sensors").await.ends_with("/sensors"));
    let sensors = browser.text("#sensors").await;
    assert!(sensors.contains("sensor1@app") && sensors.contains("sensor2@app"), "{sensors}");
    assert!(!sensors.contains("connected\tmqtt"), "nobody connected yet: {sensors}");

    // The overview: identity, no cloud, empty buffer.
    browser.goto(&format!("http://{web}/")).await;
    assert_eq!(browser.text("#gw-name").await, "gw1");
    assert_eq!(browser.text("#outbox-depth").await, "0");
    assert!(browser.source().await.contains("<svg"), "the throughput graph is drawn");

    // A sensor connects and publishes (and stays connected: mosquitto_pub -l reads stdin).
    let mut publisher = Command::new("mosquitto_pub")
        .args(["-h", mhost, "-p", mport, "-u", "sensor1@app", "-P", "pw", "-q", "1"])
        .args(["-t", "temperature", "-l", "-i", "sensor1@app"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = publisher.stdin.take().unwrap();
    for i in 0..3 {
        writeln!(stdin, "{{\"temp\":{i}}}").unwrap();
    }
    stdin.flush().unwrap();

    // Without a cloud, the messages wait in the outbox: the live update shows the depth change.
    let depth = browser.wait_text("#outbox-depth", Duration::from_secs(15), |t| t == "3").await;
    assert_eq!(depth, "3");
    browser.screenshot(&out.join("overview.png")).await;

    browser.goto(&format!("http://{web}/sensors")).await;
    let row = browser.text("tr[data-device=\"sensor1@app\"]").await;
    assert!(row.contains("connected") && !row.contains("not connected"), "{row}");
    assert!(row.contains("mqtt"), "{row}");
    let other = browser.text("tr[data-device=\"sensor2@app\"]").await;
    assert!(other.contains("not connected"), "{other}");
    browser.screenshot(&out.join("sensors.png")).await;
    // search filters on the server
    browser.goto(&format!("http://{web}/sensors?q=sensor2")).await;
    let filtered = browser.text("#sensors").await;
    assert!(filtered.contains("sensor2@app") && !filtered.contains("sensor1@app"), "{filtered}");

    browser.goto(&format!("http://{web}/commands")).await;
    assert!(browser.source().await.contains("Recent commands"));
    browser.screenshot(&out.join("commands.png")).await;
    browser.goto(&format!("http://{web}/interworking")).await;
    let drivers = browser.text("#drivers").await;
    assert!(
        drivers.contains("mqtt") && drivers.contains("4209") == drivers.contains("coap"),
        "{drivers}"
    );
    browser.screenshot(&out.join("interworking.png")).await;
    browser.goto(&format!("http://{web}/actions")).await;
    browser.click("form[action=\"/actions/retry-parked\"] button").await;
    // without a [cloud] there is no uplink whose parked devices could be released
    assert!(browser.text("#done").await.contains("Not available"));
    browser.screenshot(&out.join("actions.png")).await;

    // Log out: the session is gone.
    browser.click("header form button").await;
    browser.wait_url("/login").await;
    browser.goto(&format!("http://{web}/")).await;
    assert!(browser.url().await.contains("/login"));

    drop(stdin);
    let _ = publisher.wait();
    for page in ["login", "overview", "sensors", "commands", "interworking", "actions"] {
        let png = std::fs::metadata(out.join(format!("{page}.png"))).unwrap();
        assert!(png.len() > 1000, "{page}.png has a picture");
    }
    eprintln!("screenshots in {}", out.display());
}

fn curl(args: &[&str]) -> String {
    let out =
        Command::new("curl").args(["-s", "-i", "--max-time", "10"]).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status_line(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The login CSRF token and cookie from `GET /login`.
fn login_form(web: &str) -> (String, String) {
    let r = curl(&[&format!("http://{web}/login")]);
    let cookie = r
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let token =
        r.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    (cookie, token)
}

#[tokio::test(flavor = "multi_thread")]
async fn login_needs_csrf_slows_down_guessing_and_sets_strict_cookies() {
    if !have("curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = Running::start(&config(dir.path()), None);
    let web = gw.web_addr();
    let url = format!("http://{web}/login");

    // No CSRF token, or one that does not match the cookie: refused even with the right password.
    let pw = format!("password={ADMIN_PW}");
    let r = curl(&["-d", "username=admin", "-d", &pw, &url]);
    assert_eq!(status_line(&r), 403, "{r}");
    let (cookie, _) = login_form(&web);
    let r = curl(&["-b", &cookie, "-d", "csrf=forged", "-d", "username=admin", "-d", &pw, &url]);
    assert_eq!(status_line(&r), 403, "{r}");

    // The right token and password: a session cookie with the flags.
    let (cookie, token) = login_form(&web);
    let csrf = format!("csrf={token}");
    let r = curl(&["-b", &cookie, "-d", &csrf, "-d", "username=admin", "-d", &pw, &url]);
    assert_eq!(status_line(&r), 303, "{r}");
    let session =
        r.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie: gw_session=")).unwrap();
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"), "{session}");
    assert!(!session.contains("Secure"), "plain HTTP: no Secure flag ({session})");

    // 20 bad passwords in a row are slowed down: a 429 with Retry-After comes; while it holds,
    // the owner's password, which logged in before, still passes (the lockout is not a weapon
    // against the owner), asked at once, well within the shortest lockout of 1 s.
    let attempt = |password: &str| {
        let (cookie, token) = login_form(&web);
        let (csrf, pw) = (format!("csrf={token}"), format!("password={password}"));
        let r = curl(&["-b", &cookie, "-d", &csrf, "-d", "username=admin", "-d", &pw, &url]);
        (status_line(&r), r)
    };
    let mut codes = Vec::new();
    for _ in 0..20 {
        let (code, _) = attempt("guess");
        codes.push(code);
        if code == 429 {
            let (_, r) = attempt("guess");
            assert!(r.to_ascii_lowercase().contains("retry-after:"), "{r}");
            let (right, r) = attempt(ADMIN_PW);
            assert_eq!(right, 303, "a credential verified before passes during a lockout: {r}");
            break;
        }
    }
    assert_eq!(codes[0], 401, "{codes:?}");
    assert!(codes.contains(&429), "guessing must be rate-limited: {codes:?}");
}

/// The Python venv with `prometheus_client` (its text-format parser): `$PAHO_VENV` when CI made
/// one, else one in `dir`. `None` when it cannot be installed outside CI.
fn prometheus_python(dir: &Path) -> Option<PathBuf> {
    let venv = std::env::var_os("PAHO_VENV").map(PathBuf::from).unwrap_or_else(|| dir.join("venv"));
    let python = venv.join("bin/python");
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", "import prometheus_client"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if python.exists() && has(&python) {
        return Some(python);
    }
    let made = python.exists()
        || Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success());
    let installed = made
        && Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "prometheus-client>=0.17"])
            .status()
            .is_ok_and(|s| s.success());
    if !installed {
        assert!(std::env::var_os("CI").is_none(), "CI: cannot install prometheus-client");
        eprintln!("SKIP: prometheus-client not installable");
        return None;
    }
    Some(python)
}

const PARSE: &str = r#"
import sys, json
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        key = s.name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else "")
        out[key] = s.value
    out["type:" + fam.name] = fam.type
print(json.dumps(out))
"#;

fn parse_metrics(python: &Path, text: &str) -> Value {
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "parser: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_move_with_messages() {
    if !have("curl") || !have_mosquitto_clients() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(python) = prometheus_python(dir.path()) else { return };
    let gw = Running::start(&config(dir.path()), None);
    let web = gw.web_addr();
    let mqtt = gw.listener_addr("mqtt");
    let (mhost, mport) = mqtt.rsplit_once(':').unwrap();
    let bearer = format!("Authorization: Bearer {}", common::API_TOKEN);
    let metrics = || {
        let out = Command::new("curl")
            .args(["-sf", "-H", &bearer, &format!("http://{web}/metrics")])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let before = parse_metrics(&python, &metrics());
    assert_eq!(before["type:gatewayd_ingest_latency_seconds"], "histogram");
    assert_eq!(before["type:gatewayd_outbox_committed"], "counter");
    assert_eq!(before["gatewayd_outbox_records"], 0.0);
    assert_eq!(before["gatewayd_ingest_latency_seconds_count"], 0.0);

    for i in 0..5 {
        let ok = Command::new("mosquitto_pub")
            .args(["-h", mhost, "-p", mport, "-u", "sensor1@app", "-P", "pw", "-q", "1"])
            .args(["-t", "temperature", "-m", &format!("{{\"t\":{i}}}")])
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let after = parse_metrics(&python, &metrics());
    assert_eq!(after["gatewayd_outbox_records"], 5.0, "{after}");
    assert_eq!(after["gatewayd_outbox_committed_total"], 5.0);
    assert_eq!(after["gatewayd_messages_received_total{protocol=mqtt}"], 5.0, "{after}");
    assert_eq!(after["gatewayd_ingest_latency_seconds_count"], 5.0);
    assert_eq!(after["gatewayd_message_payload_bytes_sum"], 5.0 * 7.0);
    assert!(after["gatewayd_mqtt_sessions"].is_number());
}

/// A curl session: a cookie jar in `dir`, logged in as the first technician.
struct CurlSession {
    jar: String,
    web: String,
}

impl CurlSession {
    fn login(dir: &Path, web: &str) -> Self {
        let jar = dir.join("cookies.txt");
        assert_eq!(common::status_page_login(web, &jar, "admin", ADMIN_PW), 303);
        Self { jar: jar.display().to_string(), web: web.to_owned() }
    }

    /// The session's CSRF token, from any page's forms.
    fn csrf(&self) -> String {
        let page = curl(&["-b", &self.jar, &format!("http://{}/actions", self.web)]);
        page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
    }

    /// Posts an action; returns where it redirected to.
    fn act(&self, action: &str, csrf: &str) -> (u16, String) {
        let r = curl(&[
            "-b",
            &self.jar,
            "-d",
            &format!("csrf={csrf}"),
            &format!("http://{}/actions/{action}", self.web),
        ]);
        let location = r
            .lines()
            .find_map(|l| l.strip_prefix("location: ").or_else(|| l.strip_prefix("Location: ")))
            .unwrap_or("")
            .trim()
            .to_owned();
        (status_line(&r), location)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_restart_the_uplink_and_retry_parked_devices_behind_csrf() {
    use gw_devcloud::{DevCloud, Seed};
    if !have("curl") {
        return;
    }
    let cloud = DevCloud::start(
        "127.0.0.1:0".parse().unwrap(),
        Seed::new()
            .user("admin", "token")
            .application("app")
            .password_device("app", "gw1", "gw-secret")
            .sensor("app", "sensor1", None, &["gw1"]),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(config(dir.path())).unwrap();
    let text = format!(
        "{base}\n[cloud]\nkind = \"drogue-http\"\nurl = \"{}\"\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"200ms\"\nparked_retry = \"1h\"\n",
        cloud.url()
    );
    let gw = Running::start(&write(dir.path(), "cloud.toml", &text), None);
    let web = gw.web_addr();
    let client = reqwest::Client::new();
    let publish = |device: &'static str, n: u32| {
        let (client, web) = (client.clone(), web.clone());
        async move {
            let r = client
                .post(format!("http://{web}/v1/temp"))
                .basic_auth(format!("{device}@app"), Some("pw"))
                .body(format!("{{\"n\":{n}}}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
        }
    };
    let sent_to_cloud = |want: usize| {
        let cloud = &cloud;
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let n = cloud.events().iter().filter(|e| e.kind == "io.drogue.event.v1").count();
                if n >= want {
                    return n;
                }
                assert!(Instant::now() < deadline, "{n} of {want} events reached the cloud");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // sensor2 is a static device the cloud does not let gw1 proxy: its messages get parked.
    publish("sensor1", 1).await;
    publish("sensor2", 1).await;
    sent_to_cloud(1).await;
    let parked_events = || {
        let (client, web) = (client.clone(), web.clone());
        async move { common::status(&client, &web).await["uplink"]["parked_events"].as_u64().unwrap() }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while parked_events().await == 0 {
        assert!(Instant::now() < deadline, "sensor2 never parked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let session = CurlSession::login(dir.path(), &web);
    let csrf = session.csrf();
    // without the session's token nothing happens
    assert_eq!(session.act("restart-uplink", "forged").0, 403);

    let (code, to) = session.act("restart-uplink", &csrf);
    assert_eq!((code, to.as_str()), (303, "/actions?done=restart-uplink"));
    gw.wait_for("uplink restarted on request", Duration::from_secs(10));
    publish("sensor1", 2).await;
    sent_to_cloud(2).await;

    // Retrying parked devices sends sensor2's message again (the cloud refuses it again).
    let before = parked_events().await;
    let (code, to) = session.act("retry-parked", &csrf);
    assert_eq!((code, to.as_str()), (303, "/actions?done=retry-parked"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while parked_events().await == before {
        assert!(Instant::now() < deadline, "the parked device was not retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // No registry configured: resync is not available, and says so.
    assert_eq!(session.act("resync", &csrf).1, "/actions?done=unavailable");
    assert_eq!(session.act("no-such-action", &csrf).0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_technician_uploads_an_update_bundle_in_the_browser() {
    if !have("chromedriver") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = gw_board::sim::SimBoard::create(&dir.path().join("board")).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/tests/fixtures");
    let base = std::fs::read_to_string(config(dir.path())).unwrap();
    let text = format!(
        "{base}\n[board]\nprofile = \"sim\"\nroot = {:?}\n\n[update]\nkeyring = {:?}\n",
        sim.root().display().to_string(),
        fixtures.join("keyring").display().to_string(),
    );
    let gw = Running::start(&write(dir.path(), "update.toml", &text), None);
    let web = gw.web_addr();
    let out = output_dir();
    let browser = Browser::start().await;

    browser.goto(&format!("http://{web}/update")).await;
    browser.type_into("#username", "admin").await;
    browser.type_into("#password", ADMIN_PW).await;
    browser.click("button[type=submit]").await;
    browser.wait_url("/update").await;
    assert!(browser.text("#slot-state").await.contains("booted A"));
    // chromedriver hands a local file to a file input as its path
    let bundle = fixtures.join("good.bundle").canonicalize().unwrap().display().to_string();
    browser.type_into("#bundle", &bundle).await;
    browser.click("#upload button[type=submit]").await;
    let result =
        browser.wait_text("#result", Duration::from_secs(20), |t| t.contains("Installed")).await;
    assert!(result.contains("Installed version 1.1.0 into slot B. Reboot to try it"), "{result}");
    assert!(browser.text("#last-install").await.contains("installed 1.1.0 into slot B"));
    browser.screenshot(&out.join("update.png")).await;
    let env = std::fs::read_to_string(sim.root().join("boot/gatewayd.env")).unwrap();
    assert!(env.contains("gw_try=B"), "{env}");
}
