//! The real `gatewayd` binary: its config commands, start-up, readiness, signals and failures.

#![allow(clippy::unwrap_used)] // a failed step should fail the test right there

mod common;

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{BIN, Running, blocking_client, write};

fn gatewayd(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run gatewayd")
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
        (
            "unknown.toml",
            format!(
                "{base}[web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\nport = 1\n"
            ),
            "port",
        ),
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

    let client = blocking_client();
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

#[test]
fn survives_its_log_reader_going_away() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config", &config_in(dir.path(), "127.0.0.1:0")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line =
        lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("\"listener\":\"web\""))).unwrap();
    let addr = serde_json::from_str::<serde_json::Value>(&line.unwrap()).unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(lines); // the log reader is gone: every later log line fails to write
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "gatewayd at {addr} died instead of stopping cleanly");
}

/// The systemd unit the project ships gives the default connection caps their descriptors
/// (systemd's default soft limit of 1,024 does not) and runs the daemon as it expects.
#[test]
fn the_systemd_unit_leaves_room_for_the_default_connection_caps() {
    let unit = include_str!("../../../image/gatewayd.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .unwrap_or_else(|| panic!("{key} missing"))
            .trim()
            .to_owned()
    };
    let nofile: u64 = value("LimitNOFILE").parse().unwrap();
    let web = gatewayd::config::WebConfig::default();
    let mqtt = gw_driver_mqtt::MqttConfig::default();
    let wanted = (web.max_connections + mqtt.max_connections + mqtt.max_unauthenticated) as u64
        + gw_net::fds::RESERVE;
    assert!(nofile >= wanted, "LimitNOFILE={nofile} < {wanted}");
    assert_eq!(value("Type"), "notify");
    assert!(value("ExecStart").ends_with("gatewayd run --config /etc/gatewayd/gatewayd.toml"));
    assert!(value("WatchdogSec").parse::<u64>().unwrap() > 0);
}
