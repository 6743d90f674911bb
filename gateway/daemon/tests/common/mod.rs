//! Helpers the binary-level tests share: start `gatewayd`, read its JSON log, stop it.

#![allow(clippy::unwrap_used, dead_code)]

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatewayd");

/// The read-only API token the tests' configs set (`[web] api_token`).
pub const API_TOKEN: &str = "test-api-token-0123";

/// `GET /api/v1/status` of a gateway at `web` (`host:port`), with the API token.
pub async fn status(client: &reqwest::Client, web: &str) -> serde_json::Value {
    client
        .get(format!("http://{web}/api/v1/status"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET /metrics` of a gateway at `web` (`host:port`), with the API token.
pub async fn metrics(client: &reqwest::Client, web: &str) -> String {
    client
        .get(format!("http://{web}/metrics"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Whether the mosquitto clients are installed; in CI their absence fails the test.
pub fn have_mosquitto_clients() -> bool {
    let ok = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "mosquitto clients missing in CI");
        eprintln!("SKIP: mosquitto clients not installed");
    }
    ok
}

pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A running gatewayd whose log lines (JSON) arrive on a channel.
pub struct Running {
    pub child: Child,
    pub lines: mpsc::Receiver<String>,
}

impl Running {
    pub fn start(config: &str, notify_socket: Option<&Path>) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config", config]);
        if let Some(p) = notify_socket {
            cmd.env("NOTIFY_SOCKET", p);
        }
        Self::spawn(cmd)
    }

    /// Runs `cmd` (which ends up exec-ing gatewayd, e.g. through `unshare`), reading its log.
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.env("RUST_LOG", "info");
        let mut child = cmd.spawn().expect("spawn gatewayd");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a log line containing `needle`, returning it.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line with {needle:?} within {timeout:?}");
    }

    pub fn web_addr(&self) -> String {
        self.listener_addr("web")
    }

    /// The address a listener reported (`listening` log line), in the order they bind: web,
    /// then mqtt.
    pub fn listener_addr(&self, name: &str) -> String {
        let line = self.wait_for(&format!("\"listener\":\"{name}\""), Duration::from_secs(20));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["addr"].as_str().unwrap().to_owned()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "gatewayd did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP client for these synchronous tests, on a private runtime.
#[allow(unused_imports)] // not every test file uses it
pub use blocking::blocking_client;

mod blocking {
    pub struct Client(tokio::runtime::Runtime, ::reqwest::Client);
    pub fn blocking_client() -> Client {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Client(rt, ::reqwest::Client::new())
    }
    pub struct Resp {
        status: u16,
        body: String,
    }
    impl Resp {
        pub fn status(&self) -> u16 {
            self.status
        }
        pub fn text(self) -> String {
            self.body
        }
    }
    impl Client {
        pub fn get(&self, url: String) -> Resp {
            self.0.block_on(async {
                // the API token opens /api/v1/status and /metrics; other routes ignore it
                let r = self.1.get(url).bearer_auth(super::API_TOKEN).send().await.unwrap();
                let status = r.status().as_u16();
                Resp { status, body: r.text().await.unwrap() }
            })
        }
    }
}

/// Logs in to the status page at `web` as `user` with curl, keeping the session in the cookie
/// jar `jar`; returns the HTTP status of the login POST (303 on success).
pub fn status_page_login(web: &str, jar: &Path, user: &str, password: &str) -> u16 {
    let jar = jar.display().to_string();
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-i", "--max-time", "10"])
            .args(args)
            .output()
            .expect("curl is installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let page = curl(&["-c", &jar, &format!("http://{web}/login")]);
    let token = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    let r = curl(&[
        "-b",
        &jar,
        "-c",
        &jar,
        "-d",
        &format!("csrf={token}"),
        "--data-urlencode",
        &format!("username={user}"),
        "--data-urlencode",
        &format!("password={password}"),
        &format!("http://{web}/login"),
    ]);
    r.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A dev cloud with application `app`, its gateway `gw1` (password `gw-secret`) and `sensors`
/// that name `gw1` (no password credential: the gateway's own `[[devices]]` log them in).
pub async fn cloud_with(app: &str, sensors: &[&str]) -> gw_devcloud::DevCloud {
    let mut seed =
        gw_devcloud::Seed::new().application(app).password_device(app, "gw1", "gw-secret");
    for s in sensors {
        seed = seed.sensor(app, s, None, &["gw1"]);
    }
    gw_devcloud::DevCloud::start(
        "127.0.0.1:0".parse().unwrap(),
        seed,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap()
}

/// The numbers the cloud received on `channel`, in arrival order: each event's payload, JSON
/// (`42`) or raw text (`42`).
pub fn numbers_on(cloud: &gw_devcloud::DevCloud, channel: &str) -> Vec<u64> {
    use base64::Engine as _;
    cloud
        .events()
        .iter()
        .filter(|e| e.subject == channel)
        .filter_map(|e| {
            let raw = e
                .data_base64
                .as_deref()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
            e.data
                .as_ref()
                .and_then(serde_json::Value::as_u64)
                .or_else(|| String::from_utf8(raw?).ok()?.trim().parse().ok())
        })
        .collect()
}

/// Waits (up to 30 s) until `n` distinct numbers arrived on `channel`; returns all that did,
/// in arrival order (repeats included).
pub async fn wait_numbers(cloud: &gw_devcloud::DevCloud, channel: &str, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = numbers_on(cloud, channel);
        let distinct: std::collections::BTreeSet<u64> = got.iter().copied().collect();
        if distinct.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts `got` is exactly `0..n`, naming how many arrived out of order.
pub fn assert_in_order(got: &[u64], n: u64, what: &str) {
    let out_of_order = got.windows(2).filter(|w| w[1] < w[0]).count();
    assert_eq!(out_of_order, 0, "{what}: {out_of_order} out of order");
    assert_eq!(got, (0..n).collect::<Vec<_>>(), "{what}: each once, in order");
}

/// The Python of the venv with paho-mqtt (`$PAHO_VENV`, as CI sets it); `None` outside CI when
/// it is not set.
pub fn paho_python() -> Option<std::path::PathBuf> {
    let venv = std::env::var_os("PAHO_VENV").map(std::path::PathBuf::from);
    let python = venv.map(|v| v.join("bin/python")).filter(|p| p.exists());
    if python.is_none() {
        assert!(std::env::var_os("CI").is_none(), "CI: PAHO_VENV with paho-mqtt is not set");
        eprintln!("SKIP: no PAHO_VENV with paho-mqtt");
    }
    python
}

/// A CoAP CON POST to `/v1/<channel>` with message id and token `mid`, option 4209 = `auth`
/// when given, a Block1 option value when given, and `payload`: what a sensor (or a stranger)
/// sends, written by hand for tests that need exact control of the datagrams.
pub fn coap_post(
    mid: u16,
    channel: &str,
    auth: Option<&str>,
    block1: Option<u8>,
    payload: &[u8],
) -> Vec<u8> {
    use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType};
    let mut p = Packet::new();
    p.header.set_version(1);
    p.header.set_type(MessageType::Confirmable);
    p.header.code = MessageClass::Request(RequestType::Post);
    p.header.message_id = mid;
    p.set_token(mid.to_be_bytes().to_vec());
    p.add_option(CoapOption::UriPath, b"v1".to_vec());
    p.add_option(CoapOption::UriPath, channel.as_bytes().to_vec());
    if let Some(a) = auth {
        p.add_option(CoapOption::Unknown(4209), a.as_bytes().to_vec());
    }
    if let Some(v) = block1 {
        p.add_option(CoapOption::Block1, vec![v]);
    }
    p.payload = payload.to_vec();
    p.to_bytes().unwrap()
}
