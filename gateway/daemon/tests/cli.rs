//! The real `gatewayd` binary: its config commands, start-up, readiness, signals and failures.

#![allow(clippy::unwrap_used)] // a failed step should fail the test right there

use std::{
    io::{BufRead, BufReader},
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_gatewayd");

fn gatewayd(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run gatewayd")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn printed_default_config_checks_clean() {
    let out = gatewayd(&["print-config"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "x.toml", std::str::from_utf8(&out.stdout).unwrap());
    let check = gatewayd(&["check-config", &file]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[gateway]\nname = \"gw1\"\napplication = \"app\"\n";
    let cases = [
        ("unknown.toml", format!("{base}[web]\nlisten = \"127.0.0.1:0\"\nport = 1\n"), "port"),
        ("duration.toml", format!("{base}shutdown_grace = \"5 parsecs\"\n"), "shutdown_grace"),
        (
            "secret.toml",
            format!("{base}[[devices]]\nname = \"s1\"\npassword_file = \"/nonexistent/pw\"\n"),
            "devices[0].password_file",
        ),
    ];
    for (name, text, key) in cases {
        let file = write(dir.path(), name, &text);
        let out = gatewayd(&["check-config", &file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} passed");
        assert!(stderr.contains(key), "{name}: {stderr}");
    }
}

/// A running gatewayd whose log lines (JSON) arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(config: &str, notify_socket: Option<&Path>) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--config", config]).stdout(Stdio::null()).stderr(Stdio::piped());
        cmd.env("RUST_LOG", "info");
        if let Some(p) = notify_socket {
            cmd.env("NOTIFY_SOCKET", p);
        }
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
    fn wait_for(&self, needle: &str, timeout: Duration) -> String {
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

    fn web_addr(&self) -> String {
        let line = self.wait_for("\"listener\":\"web\"", Duration::from_secs(20));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["addr"].as_str().unwrap().to_owned()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
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

fn config_in(dir: &Path, web: &str) -> String {
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"app\"\ndata_dir = {:?}\n\n[web]\nlisten = {web:?}\n\n[log]\nformat = \"json\"\n",
        dir.join("data").display().to_string()
    );
    write(dir, "gatewayd.toml", &text)
}

#[test]
fn runs_ready_and_stops_on_sigterm_within_5s() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(20))).unwrap();

    let mut gw = Running::start(&config_in(dir.path(), "127.0.0.1:0"), Some(&sock_path));
    let addr = gw.web_addr();

    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("sd_notify datagram");
    assert_eq!(&buf[..n], b"READY=1\n");

    let client = reqwest::blocking_client();
    assert_eq!(client.get(format!("http://{addr}/healthz")).status(), 200);
    assert_eq!(client.get(format!("http://{addr}/readyz")).status(), 200);
    assert!(client.get(format!("http://{addr}/")).text().contains("gw1"));

    let meta = std::fs::metadata(dir.path().join("data")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);

    let asked = Instant::now();
    gw.signal("-TERM");
    let status = gw.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    assert!(asked.elapsed() < Duration::from_secs(5));
}

#[test]
fn sigint_stops_cleanly_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Running::start(&config_in(dir.path(), "127.0.0.1:0"), None);
    gw.web_addr();
    gw.signal("-INT");
    assert!(gw.wait_exit(Duration::from_secs(5)).success());
}

#[test]
fn failing_component_exits_nonzero_with_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut gw = Running::start(&config_in(dir.path(), &addr), None);
    let line = gw.wait_for("cannot bind web listener", Duration::from_secs(20));
    assert!(line.contains(&addr), "{line}");
    let status = gw.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1));
}

#[test]
fn bad_config_exits_2_before_starting() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", "[gateway]\nname = \"gw1\"\n");
    let out = gatewayd(&["run", "--config", &file]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("application"));
}

/// A blocking HTTP client for these synchronous tests, on a private runtime.
mod reqwest {
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
                let r = self.1.get(url).send().await.unwrap();
                let status = r.status().as_u16();
                Resp { status, body: r.text().await.unwrap() }
            })
        }
    }
}
