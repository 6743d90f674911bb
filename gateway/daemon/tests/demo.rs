//! `gatewayd demo` prints commands for a newcomer to paste: each one, run exactly as printed
//! through `sh`, does what the text around it says.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::BIN;

/// Runs `line` as a shell would; returns (success, stdout + stderr).
fn sh(line: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", line]).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn every_command_the_demo_prints_works_as_printed() {
    for tool in ["curl", "mosquitto_pub", "mosquitto_sub", "coap-client-notls"] {
        if !have(tool) {
            assert!(std::env::var_os("CI").is_none(), "{tool} missing in CI");
            eprintln!("SKIP: {tool} not installed");
            return;
        }
    }
    let mut child = Command::new(BIN)
        .args(["demo", "--duration", "60s", "--interval", "1s"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // every indented line that starts with a tool is a command to paste
    let mut commands = Vec::new();
    let mut push_seen = false;
    const TOOLS: [&str; 5] =
        ["curl ", "mosquitto_pub ", "mosquitto_sub ", "coap-client-notls ", "drg "];
    for line in stdout.lines().map_while(Result::ok).take(80) {
        // an indented line holding a tool's name (after a label or not) is a command
        let at = TOOLS.iter().filter_map(|t| line.find(&format!(" {t}")).map(|i| i + 1)).min();
        if let Some(at) = at.filter(|_| line.starts_with("  ")) {
            let command = line[at..].to_owned();
            if command.contains("/api/commands/v1/push") {
                push_seen = true;
            }
            commands.push(command);
        }
        if push_seen {
            break;
        }
    }
    let find = |needle: &str| -> String {
        commands
            .iter()
            .find(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("no printed command with {needle:?} in {commands:#?}"))
            .clone()
    };

    // the gateway's status, with the printed API token
    let (ok, out) = sh(&find("/api/v1/status"));
    assert!(ok && out.contains("\"gateway\""), "{out}");
    // one message per protocol as sensor1
    let http = commands.iter().find(|c| c.starts_with("curl -i -u sensor1")).unwrap();
    let (ok, out) = sh(http);
    assert!(ok && out.contains(" 202 "), "HTTP: {out}");
    let (ok, out) = sh(&find("mosquitto_pub"));
    assert!(ok, "MQTT: {out}");
    let (ok, out) = sh(&find("coap-client-notls"));
    let refused = out.split_whitespace().any(|w| w.starts_with("4.") || w.starts_with("5."));
    assert!(ok && !refused, "CoAP: {out}");
    // and the cloud's event log shows them as sensor1, sent by the gateway
    let events = find("/api/devcloud/v1/events?since=0");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out) = sh(&events);
        let page: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let from_sensor1 = |value: &str| {
            page["events"].as_array().into_iter().flatten().any(|e| {
                e["device"] == "sensor1"
                    && e["sender"] == "gw1"
                    && e["data"]["temp"].as_f64().is_some_and(|t| t.to_string() == value)
            })
        };
        if from_sensor1("21.5") && from_sensor1("22") && from_sensor1("23") {
            break;
        }
        assert!(Instant::now() < deadline, "the three messages did not reach the cloud: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // sensor1's commands, received as printed (bounded here: one message, 20 s)
    let sub = format!("{} -C 1 -W 20", find("mosquitto_sub"));
    let receiver = std::thread::spawn(move || sh(&sub));
    std::thread::sleep(Duration::from_secs(1));
    // the push endpoint, as the cloud would call it
    let (ok, out) = sh(&find("/api/commands/v1/push"));
    // 200 with the outcome when it was delivered at once, 202 when it was queued
    assert!(ok && (out.contains(" 200 ") || out.contains(" 202 ")), "push: {out}");
    let (ok, out) = receiver.join().unwrap();
    assert!(ok && out.contains("command/inbox//set-led on"), "mosquitto_sub: {out}");
    // the cloud's command API for the MQTT demo sensor
    let (ok, out) = sh(&find("?command=set-interval"));
    assert!(ok && out.lines().next().is_some_and(|l| l.contains(" 20")), "command API: {out}");
    if have("drg") {
        let (ok, out) = sh(&find("drg login"));
        assert!(ok && out.contains("sensor1"), "drg: {out}");
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let _ = child.wait();
}
