//! Commands end to end: the dev cloud's command API
//! (`POST /api/command/v1alpha1/apps/{app}/devices/{device}?command=`) routes a command to the
//! real gatewayd (external push to its `/api/commands/v1/push`, the Drogue MQTT uplink's
//! `command/inbox/#` subscription, or a Drogue HTTP `ct` wait), and the gateway delivers it to
//! sensors that use real clients: `mosquitto_sub` on `command/inbox//#`, `curl` with `ct=5`
//! (200 + `command:`), `coap-client-notls` with `ct=5` (2.05 + option 4210). Commands for
//! sensors that are away wait in the gateway's durable queue (across a restart), expire after
//! their TTL (counted), and the push endpoint refuses bad callers and unknown devices.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use base64::Engine;
use common::{Running, have_mosquitto_clients, status, write};
use gw_devcloud::{DevCloud, Seed};
use gw_model::registry::{CommandTarget, CommandsSpec, ExternalEndpoint};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

const APP: &str = "my-app";
const PUSH_TOKEN: &str = "push-secret";
/// Every wait in these tests ends by this deadline.
const DEADLINE: Duration = Duration::from_secs(30);

/// How the dev cloud hands the gateway its commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Uplink {
    /// `[cloud] kind = "drogue-mqtt"`: the gateway subscribes `command/inbox/#` upstream.
    Mqtt,
    /// `[cloud] kind = "drogue-http"`: the gateway's publishes wait upstream with `ct=`.
    Http,
    /// `[cloud] kind = "mqtt"` (a generic broker: here the dev cloud's MQTT endpoint) with a
    /// `command_topic` the broker publishes commands on.
    Generic,
}

/// The dev cloud, with a gateway `gw1` proxying `mqtt-sensor`, `http-sensor` and
/// `coap-sensor`, and the running gatewayd.
struct Site {
    dir: tempfile::TempDir,
    cloud: DevCloud,
    _stop_cloud: CancellationToken,
    uplink: Uplink,
    /// Extra lines of the gateway's config (`[registry] interval`, `[commands]` keys).
    extra: Extra,
    gw: Running,
    web: String,
    client: reqwest::Client,
}

/// What a test changes in the gateway's config.
#[derive(Clone, Copy, Debug)]
struct Extra {
    registry_interval: &'static str,
    commands: &'static str,
    /// `[web] push_token`: the cloud may push commands (and then no `ct=` is relayed).
    push: bool,
    /// How the sensors name `gw1`: `gatewaySelector.matchNames`, or (with the providers RFC
    /// enabled in the dev cloud and in `[registry]`) one of the RFC's rules.
    proxy: Proxy,
}

/// How a sensor names the gateway that may act for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proxy {
    MatchNames,
    /// `spec.providers: ["gw1"]`.
    Providers,
    /// `spec.providerSelector: {"group": "site-b"}`, `gw1` labelled `group=site-b`.
    Selector,
}

const DEFAULT: Extra =
    Extra { registry_interval: "200ms", commands: "", push: true, proxy: Proxy::MatchNames };

/// A sensor of `gw1` by `proxy`'s rule.
fn sensor(name: &str, proxy: Proxy) -> gw_model::registry::Device {
    let gateways: &[&str] = if proxy == Proxy::MatchNames { &["gw1"] } else { &[] };
    let mut d = gw_devcloud::seed::device_with(APP, name, Some("pw"), gateways);
    match proxy {
        Proxy::MatchNames => {}
        Proxy::Providers => d.spec.providers = Some(vec!["gw1".into()]),
        Proxy::Selector => {
            let selector = serde_json::json!({"group": "site-b"});
            d.spec.provider_selector = selector.as_object().cloned();
        }
    }
    d
}

impl Site {
    async fn start(uplink: Uplink) -> Site {
        Self::start_with(uplink, DEFAULT).await
    }

    async fn start_with(uplink: Uplink, extra: Extra) -> Site {
        let mut gw1 = gw_devcloud::seed::device_with(APP, "gw1", Some("gw-secret"), &[]);
        gw1.metadata.labels.insert("group".into(), "site-b".into());
        let seed = Seed::new()
            .user("admin", "api-token")
            .application(APP)
            .device(gw1)
            .device(sensor("mqtt-sensor", extra.proxy))
            .device(sensor("http-sensor", extra.proxy))
            .device(sensor("coap-sensor", extra.proxy))
            .providers_rfc(extra.proxy != Proxy::MatchNames);
        let stop_cloud = CancellationToken::new();
        let cloud = DevCloud::start("127.0.0.1:0".parse().unwrap(), seed, stop_cloud.clone())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (gw, web) = start_gateway(dir.path(), &cloud, uplink, extra).await;
        let client = reqwest::Client::new();
        let site = Site { dir, cloud, _stop_cloud: stop_cloud, uplink, extra, gw, web, client };
        site.wait_until_ready().await;
        site
    }

    /// Stops gatewayd with SIGKILL and starts it again on the same data directory.
    async fn kill_and_restart(&mut self) {
        self.gw.signal("-KILL");
        self.gw.wait_exit(DEADLINE);
        let (gw, web) = start_gateway(self.dir.path(), &self.cloud, self.uplink, self.extra).await;
        self.gw = gw;
        self.web = web;
        self.wait_until_ready().await;
    }

    /// Until the registry sync listed the three sensors and, with the MQTT uplink, the
    /// gateway subscribed to its commands at the dev cloud.
    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let s = status(&self.client, &self.web).await;
            // listed by the sync and taken into the credential cache
            let synced = s["registry"]["devices"] == 3 && s["credentials"]["registry_devices"] == 3;
            let subscribed = self.uplink == Uplink::Http || self.cloud.command_subscribers() > 0;
            if synced && subscribed {
                return;
            }
            assert!(Instant::now() < deadline, "gateway not ready: {s}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn push_url(&self) -> String {
        format!("http://{}/api/commands/v1/push", self.web)
    }

    /// Gives `gw1` an external command endpoint: the dev cloud pushes to the gateway from now
    /// on, with the configured secret (and extra headers).
    fn enable_push(&self, extra: &[(&str, &str)]) {
        let mut gw1 = self.cloud.device(APP, "gw1").unwrap();
        let mut endpoint = ExternalEndpoint { url: self.push_url(), ..Default::default() };
        endpoint.headers.insert("Authorization".into(), format!("Bearer {PUSH_TOKEN}"));
        for (k, v) in extra {
            endpoint.headers.insert((*k).into(), (*v).into());
        }
        gw1.spec.commands = Some(CommandsSpec {
            commands: vec![CommandTarget::External(endpoint)],
            other: Default::default(),
        });
        self.cloud.apply_device(gw1).unwrap();
    }

    /// `POST /api/command/v1alpha1/apps/my-app/devices/{device}?command={name}` at the dev
    /// cloud; its status.
    async fn send(&self, device: &str, name: &str, payload: &str) -> u16 {
        self.client
            .post(format!(
                "{}/api/command/v1alpha1/apps/{APP}/devices/{device}?command={name}",
                self.cloud.url()
            ))
            .bearer_auth("api-token")
            .header("content-type", "application/json")
            .body(payload.to_owned())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn status(&self) -> serde_json::Value {
        status(&self.client, &self.web).await
    }

    /// Until `/api/v1/status` satisfies `f`.
    async fn until(&self, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let s = self.status().await;
            if f(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: {}", s["commands"]);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Until the HTTP uplink waits upstream (one more command subscriber at the dev cloud).
    async fn until_waiting_upstream(&self, before: usize) {
        let deadline = Instant::now() + DEADLINE;
        while self.cloud.command_subscribers() <= before {
            assert!(Instant::now() < deadline, "the HTTP uplink never waited upstream");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn until_waiting(&self, n: u64) {
        self.until(&format!("{n} waiting requests"), |s| s["commands"]["waiting_requests"] == n)
            .await;
    }

    /// The bound address of a listener, from `/api/v1/status`.
    async fn listener(&self, name: &str) -> String {
        let s = self.status().await;
        let listeners = s["listeners"].as_array().unwrap();
        let l = listeners.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("{s}"));
        l["addr"].as_str().unwrap().to_owned()
    }

    /// `curl` publishing as `http-sensor` (`ct` seconds to wait, if any): status line,
    /// headers and body.
    fn curl(&self, ct: Option<u64>) -> tokio::process::Child {
        let query = ct.map(|c| format!("?ct={c}")).unwrap_or_default();
        Command::new("curl")
            .args(["-s", "-i", "--max-time", "20", "-u", "http-sensor@my-app:pw"])
            .args(["-H", "content-type: application/json", "--data", "{\"temp\":21}"])
            .arg(format!("http://{}/v1/telemetry{query}", self.web))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// `mosquitto_sub` as `mqtt-sensor` on `command/inbox//#`, printing `count` commands.
    async fn mosquitto_sub(&self, count: usize) -> tokio::process::Child {
        let addr = self.listener("mqtt").await;
        let port = addr.rsplit_once(':').unwrap().1;
        Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", port, "-V", "mqttv311", "-q", "1"])
            .args(["-i", "mqtt-sensor@my-app", "-u", "mqtt-sensor@my-app", "-P", "pw"])
            .args(["-t", "command/inbox//#", "-v", "-C", &count.to_string(), "-W", "25"])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    /// `coap-client-notls` publishing as `coap-sensor` with `ct` (in one Uri-Query option, as
    /// Drogue's clients send it): the debug dump (stderr) and payload (stdout).
    async fn coap_client(&self, ct: u64) -> tokio::process::Child {
        let basic = base64::engine::general_purpose::STANDARD.encode("coap-sensor@my-app:pw");
        Command::new("coap-client-notls")
            .args(["-m", "post", "-v", "7", "-B", "20"])
            .args(["-O", &format!("4209,Basic {basic}"), "-O", &format!("15,ct={ct}")])
            .args(["-e", "{\"temp\":21}"])
            .arg(format!("coap://{}/v1/telemetry", self.listener("coap").await))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }
}

async fn start_gateway(
    dir: &Path,
    cloud: &DevCloud,
    uplink: Uplink,
    extra: Extra,
) -> (Running, String) {
    let (kind, url, generic) = match uplink {
        Uplink::Mqtt => ("drogue-mqtt", cloud.mqtt_url(), ""),
        Uplink::Http => ("drogue-http", cloud.url(), ""),
        // the dev cloud's drogue/v1 topics, written as a generic broker's templates
        Uplink::Generic => (
            "mqtt",
            cloud.mqtt_url(),
            "username = \"gw1@my-app\"\ntopic = \"{channel}/{device}\"\n\
             command_topic = \"command/inbox/{device}/{command}\"\n",
        ),
    };
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"{APP}\"\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"{kind}\"\nurl = {url:?}\npassword = \"gw-secret\"\n{generic}\n\
         [registry]\nurl = {:?}\ntoken = \"api-token\"\ninterval = \"{}\"\ntimeout = \"2s\"\n\
         providers_rfc = {}\n\n\
         [mqtt]\nlisten = \"127.0.0.1:0\"\n\n[coap]\nlisten = \"127.0.0.1:0\"\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n{}\n\
         [commands]\nttl = \"1h\"\n{}\n[log]\nformat = \"json\"\n",
        dir.join("data").display().to_string(),
        cloud.url(),
        extra.registry_interval,
        extra.proxy != Proxy::MatchNames,
        if extra.push { format!("push_token = \"{PUSH_TOKEN}\"\n") } else { String::new() },
        extra.commands,
    );
    let cfg = write(dir, "gatewayd.toml", &text);
    let gw = Running::start(&cfg, None);
    let web = gw.web_addr();
    (gw, web)
}

/// What a child printed on stdout once it exited (bounded by [`DEADLINE`]).
async fn output(child: tokio::process::Child) -> std::process::Output {
    tokio::time::timeout(DEADLINE, child.wait_with_output()).await.unwrap().unwrap()
}

/// The status code, `command` header and body of a `curl -i` answer.
fn http_answer(out: &std::process::Output) -> (u16, Option<String>, String) {
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let command = head
        .lines()
        .find_map(|l| l.strip_prefix("command: ").or_else(|| l.strip_prefix("Command: ")))
        .map(str::to_owned);
    (code, command, body.to_owned())
}

fn counts(s: &serde_json::Value) -> &serde_json::Value {
    &s["commands"]["counts"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_sensor_gets_commands_via_the_mqtt_uplink_and_via_push() {
    if !have_mosquitto_clients() {
        return;
    }
    let site = Site::start(Uplink::Mqtt).await;
    let sub = site.mosquitto_sub(2).await;
    site.until("mqtt-sensor subscribed", |s| {
        s["mqtt"]["devices"].as_array().is_some_and(|d| {
            d.iter().any(|d| d["device"] == "mqtt-sensor@my-app" && d["connected"] == true)
        })
    })
    .await;

    // via the Drogue MQTT uplink's command/inbox/# subscription (no external endpoint: 202)
    assert_eq!(site.send("mqtt-sensor", "set-led", "{\"on\":true}").await, 202);
    site.until("first delivered", |s| counts(s)["delivered"] == 1).await;
    // via the external push (the dev cloud answers 200 once the gateway took it)
    site.enable_push(&[]);
    assert_eq!(site.send("mqtt-sensor", "set-rate", "{\"hz\":2}").await, 200);

    let out = output(sub).await;
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(
        lines,
        ["command/inbox//set-led {\"on\":true}", "command/inbox//set-rate {\"hz\":2}"],
        "{out:?}"
    );
    let s = site.until("both delivered", |s| counts(s)["delivered"] == 2).await;
    assert_eq!(s["commands"]["recent"][0]["via"], "mqtt", "{s}");
    assert_eq!(s["commands"]["recent"][0]["device"], "mqtt-sensor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sensor_waiting_with_ct_gets_commands_via_the_mqtt_uplink_and_via_push() {
    let site = Site::start(Uplink::Mqtt).await;

    let curl = site.curl(Some(5));
    site.until_waiting(1).await;
    assert_eq!(site.send("http-sensor", "open-valve", "{\"valve\":1}").await, 202);
    let (code, command, body) = http_answer(&output(curl).await);
    assert_eq!(
        (code, command.as_deref(), body.as_str()),
        (200, Some("open-valve"), "{\"valve\":1}")
    );

    site.enable_push(&[]);
    let curl = site.curl(Some(5));
    site.until_waiting(1).await;
    assert_eq!(site.send("http-sensor", "close-valve", "{\"valve\":0}").await, 200);
    let (code, command, body) = http_answer(&output(curl).await);
    assert_eq!(
        (code, command.as_deref(), body.as_str()),
        (200, Some("close-valve"), "{\"valve\":0}")
    );

    // with nothing for it, ct runs out: 202
    let started = Instant::now();
    let (code, command, _) = http_answer(&output(site.curl(Some(1))).await);
    assert_eq!((code, command), (202, None));
    assert!(started.elapsed() >= Duration::from_millis(900));
    let s = site.status().await;
    assert_eq!(counts(&s)["delivered"], 2, "{s}");
    assert_eq!(s["commands"]["recent"][0]["via"], "wait");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_coap_sensors_waiting_with_ct_get_commands_via_the_http_uplinks_wait() {
    // commands come back on waiting publishes only where the cloud does not push them
    let site = Site::start_with(Uplink::Http, Extra { push: false, ..DEFAULT }).await;
    let before = site.cloud.command_subscribers();
    let curl = site.curl(Some(5));
    site.until_waiting(1).await;
    site.until_waiting_upstream(before).await;
    assert_eq!(site.send("http-sensor", "reboot-sensor", "{}").await, 202);
    let (code, command, body) = http_answer(&output(curl).await);
    assert_eq!((code, command.as_deref(), body.as_str()), (200, Some("reboot-sensor"), "{}"));
    let s = site.until("delivered", |s| counts(s)["delivered"] == 1).await;
    assert_eq!(s["commands"]["recent"][0]["via"], "wait", "{s}");

    if !have_coap_client() {
        return;
    }
    let before = site.cloud.command_subscribers();
    let client = site.coap_client(5).await;
    site.until_waiting(1).await;
    site.until_waiting_upstream(before).await;
    assert_eq!(site.send("coap-sensor", "blink", "{\"n\":3}").await, 202);
    assert_coap_command(output(client).await, "blink", "{\"n\":3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coap_sensor_waiting_with_ct_gets_2_05_with_option_4210() {
    if !have_coap_client() {
        return;
    }
    let site = Site::start(Uplink::Mqtt).await;
    for (via_push, name, want) in [(false, "beep", 202), (true, "blink", 200)] {
        if via_push {
            site.enable_push(&[]);
        }
        let client = site.coap_client(5).await;
        site.until_waiting(1).await;
        assert_eq!(site.send("coap-sensor", name, "{\"n\":3}").await, want);
        assert_coap_command(output(client).await, name, "{\"n\":3}");
    }
}

fn have_coap_client() -> bool {
    let ok = std::process::Command::new("coap-client-notls").arg("-h").output().is_ok();
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "coap-client-notls missing in CI");
        eprintln!("SKIP: coap-client-notls not installed");
    }
    ok
}

/// The answer was 2.05 with option 4210 = `name` and the payload.
fn assert_coap_command(out: std::process::Output, name: &str, payload: &str) {
    // libcoap prints its debug dump (with the options) and the payload on either stream
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let hex: String = name.bytes().map(|b| format!("\\x{b:02X}")).collect();
    assert!(text.contains("c:2.05"), "no 2.05 in {text}");
    assert!(text.contains(&format!("4210:{hex}")), "no option 4210 = {name} in {text}");
    assert!(text.contains(payload), "payload: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_sensor_gets_its_command_10s_later_and_a_1s_ttl_command_expires() {
    if !have_mosquitto_clients() {
        return;
    }
    let site = Site::start(Uplink::Mqtt).await;
    site.enable_push(&[]);

    // the push answers 202: queued for the sensor, which is not connected
    let body = serde_json::json!({
        "application": APP, "device": "mqtt-sensor", "command": "calibrate",
        "payload": base64::engine::general_purpose::STANDARD.encode("{\"zero\":true}"),
    });
    let push = |body: serde_json::Value| {
        site.client.post(site.push_url()).bearer_auth(PUSH_TOKEN).json(&body).send()
    };
    assert_eq!(push(body).await.unwrap().status(), 202);
    // and through the dev cloud's command API (which answers 200 for any 2xx of the push)
    assert_eq!(site.send("mqtt-sensor", "set-interval", "{\"s\":60}").await, 200);
    let s = site.status().await;
    assert_eq!(counts(&s)["queued"], 2, "{s}");
    assert_eq!(s["commands"]["queued"], 2);

    // a command with a 1 s TTL for the HTTP sensor, which is away for 2 s
    let short = serde_json::json!({
        "application": APP, "device": "http-sensor", "command": "short-lived", "ttl": "1s",
        "payload": base64::engine::general_purpose::STANDARD.encode("x"),
    });
    assert_eq!(push(short).await.unwrap().status(), 202);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, command, _) = http_answer(&output(site.curl(None)).await);
    assert_eq!((code, command), (202, None), "an expired command is not delivered");
    let s = site.until("expired counted", |s| counts(s)["expired"] == 1).await;
    assert_eq!(s["commands"]["recent"][0]["outcome"], "expired", "{s}");
    assert_eq!(s["commands"]["recent"][0]["command"], "short-lived");

    // the MQTT sensor connects 10 s after its commands were queued
    tokio::time::sleep(Duration::from_secs(8)).await;
    let out = output(site.mosquitto_sub(2).await).await;
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        lines.lines().collect::<Vec<_>>(),
        ["command/inbox//calibrate {\"zero\":true}", "command/inbox//set-interval {\"s\":60}"],
        "{out:?}"
    );
    let s = site.until("delivered", |s| counts(s)["delivered"] == 2).await;
    assert_eq!(s["commands"]["queued"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commands_survive_a_gatewayd_restart() {
    let mut site = Site::start(Uplink::Mqtt).await;
    // one through the MQTT uplink, one through the push, while the sensor is away
    assert_eq!(site.send("http-sensor", "first", "1").await, 202);
    site.until("first queued", |s| s["commands"]["queued"] == 1).await;
    site.enable_push(&[]);
    assert_eq!(site.send("http-sensor", "second", "2").await, 200);
    site.until("second queued", |s| s["commands"]["queued"] == 2).await;

    site.kill_and_restart().await;
    let s = site.status().await;
    assert_eq!(s["commands"]["queued"], 2, "{s}");
    assert_eq!(s["commands"]["devices"][0]["device"], "http-sensor");

    // the next publishes, even without ct, carry them in order; then nothing is left
    for (name, payload) in [("first", "1"), ("second", "2")] {
        let (code, command, body) = http_answer(&output(site.curl(None)).await);
        assert_eq!((code, command.as_deref(), body.as_str()), (200, Some(name), payload));
    }
    let (code, command, _) = http_answer(&output(site.curl(None)).await);
    assert_eq!((code, command), (202, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_endpoint_refuses_bad_callers_and_unknown_devices() {
    let site = Site::start(Uplink::Mqtt).await;
    let body = |device: &str| serde_json::json!({"application": APP, "device": device, "command": "c", "payload": ""});
    let curl = |auth: Option<&str>, device: &str| {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"])
            .args(["-H", "content-type: application/json"])
            .args(["--data", &body(device).to_string()]);
        if let Some(a) = auth {
            cmd.args(["-H", &format!("authorization: {a}")]);
        }
        cmd.arg(site.push_url()).stdout(Stdio::piped());
        async move {
            let out = tokio::time::timeout(DEADLINE, cmd.output()).await.unwrap().unwrap();
            String::from_utf8(out.stdout).unwrap().parse::<u16>().unwrap()
        }
    };
    assert_eq!(curl(None, "http-sensor").await, 401, "missing secret");
    assert!([401, 403].contains(&curl(Some("Bearer wrong"), "http-sensor").await), "wrong secret");
    assert!([401, 403].contains(&curl(Some("Basic Zm9vOmJhcg=="), "http-sensor").await));
    assert_eq!(curl(Some(&format!("Bearer {PUSH_TOKEN}")), "nobody").await, 404, "unknown device");
    assert_eq!(curl(Some(&format!("Bearer {PUSH_TOKEN}")), "http-sensor").await, 202);
    let s = site.status().await;
    assert_eq!(counts(&s)["unknown_device"], 1, "{s}");
    assert_eq!(counts(&s)["queued"], 1, "{s}");
    // a refused caller never reached the router
    assert_eq!(s["commands"]["recent"].as_array().unwrap().len(), 2, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_commands_resync_set_the_log_level_and_reject_unknown_ones() {
    // a slow registry poll, so that a listing can only come from the resync command
    let extra = Extra { registry_interval: "1h", ..DEFAULT };
    let mut site = Site::start_with(Uplink::Mqtt, extra).await;
    let syncs = |s: &serde_json::Value| s["registry"]["syncs"].as_u64().unwrap();
    let before = syncs(&site.status().await);

    // through the dev cloud's command API for the gateway device (the MQTT uplink receives it
    // on command/inbox//resync)
    assert_eq!(site.send("gw1", "resync", "").await, 202);
    site.until("resync listed the registry", |s| syncs(s) > before).await;

    // pushed: set-log-level, then an unknown command (422 with the reason)
    let push = |command: &str, payload: &str| {
        let body = serde_json::json!({
            "application": APP, "device": "gw1", "command": command,
            "payload": base64::engine::general_purpose::STANDARD.encode(payload),
        });
        site.client.post(site.push_url()).bearer_auth(PUSH_TOKEN).json(&body).send()
    };
    assert_eq!(push("set-log-level", "not a [filter").await.unwrap().status(), 422);
    assert_eq!(push("set-log-level", "debug").await.unwrap().status(), 200);
    let answer = push("dance", "").await.unwrap();
    assert_eq!(answer.status(), 422);
    assert!(answer.text().await.unwrap().contains("dance"));
    let s = site.status().await;
    assert_eq!(s["commands"]["log_filter"], "debug", "{s}");
    assert_eq!(counts(&s)["delivered"], 2, "{s}");
    assert_eq!(counts(&s)["rejected"], 2, "{s}");
    assert_eq!(s["commands"]["queued"], 0, "gateway commands are never queued");

    // debug lines appear from now on: the supervisor names each component it stopped
    site.gw.signal("-TERM");
    site.gw.wait_for("component stopped", DEADLINE);
    assert!(site.gw.wait_exit(DEADLINE).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_without_a_reboot_command_exits_with_failure_for_systemd_to_restart() {
    let mut site = Site::start(Uplink::Mqtt).await;
    // a command for the gateway device itself reaches it on command/inbox//reboot
    assert_eq!(site.send("gw1", "reboot", "").await, 202);
    site.gw.wait_for("restart requested by the reboot gateway command", DEADLINE);
    let status = site.gw.wait_exit(DEADLINE);
    assert!(!status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_reported_upstream_on_the_report_channel() {
    for uplink in [Uplink::Http, Uplink::Mqtt] {
        let extra = Extra {
            registry_interval: "200ms",
            commands: "report_channel = \"command-outcomes\"\n",
            ..DEFAULT
        };
        let site = Site::start_with(uplink, extra).await;
        site.enable_push(&[]);
        assert_eq!(site.send("http-sensor", "open", "1").await, 200);
        let (code, command, _) = http_answer(&output(site.curl(None)).await);
        assert_eq!((code, command.as_deref()), (200, Some("open")));
        // queued, then delivered: two reports from the gateway itself
        let deadline = Instant::now() + DEADLINE;
        let reports = loop {
            let reports: Vec<serde_json::Value> = site
                .cloud
                .events()
                .into_iter()
                .filter(|e| e.subject == "command-outcomes")
                .map(|e| serde_json::to_value(e).unwrap())
                .collect();
            if reports.len() >= 2 {
                break reports;
            }
            assert!(Instant::now() < deadline, "{uplink:?}: reports: {reports:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        let outcomes: Vec<serde_json::Value> = reports
            .iter()
            .map(|e| {
                assert_eq!(e["device"], "gw1", "{e}");
                e["data"].clone()
            })
            .collect();
        assert_eq!(outcomes[0]["outcome"], "queued", "{outcomes:?}");
        assert_eq!(outcomes[1]["outcome"], "delivered", "{outcomes:?}");
        assert_eq!(outcomes[1]["via"], "contact");
        assert_eq!(outcomes[1]["device"], "http-sensor");
        assert_eq!(outcomes[1]["command"], "open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_commands_reach_it_over_every_uplink_kind() {
    for uplink in [Uplink::Http, Uplink::Mqtt, Uplink::Generic] {
        // a slow registry poll, so that a listing can only come from the resync command
        let extra = Extra { registry_interval: "1h", ..DEFAULT };
        let site = Site::start_with(uplink, extra).await;
        let syncs = |s: &serde_json::Value| s["registry"]["syncs"].as_u64().unwrap();
        let before = syncs(&site.status().await);
        if uplink == Uplink::Http {
            // drogue-http: the gateway's heartbeat waits for its commands
            let deadline = Instant::now() + DEADLINE;
            while !site.cloud.all_events().iter().any(|e| e.subject == "gatewayd-heartbeat") {
                assert!(Instant::now() < deadline, "no heartbeat from the gateway");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let beat = site
                .cloud
                .all_events()
                .into_iter()
                .find(|e| e.subject == "gatewayd-heartbeat")
                .unwrap();
            assert_eq!(beat.device.as_deref(), Some("gw1"));
            assert!(beat.data.as_ref().is_some_and(|d| d["outbox_records"].is_u64()), "{beat:?}");
            assert!(
                beat.data.as_ref().is_some_and(|d| d.get("outbox_oldest_age_seconds").is_some()),
                "{beat:?}"
            );
        }
        // through the dev cloud's command API, addressed to the gateway device
        assert_eq!(site.send("gw1", "resync", "").await, 202, "{uplink:?}");
        site.until("resync listed the registry", |s| syncs(s) > before).await;
        // the poll waits again at once: the next command comes just as well
        assert_eq!(site.send("gw1", "set-log-level", "debug").await, 202, "{uplink:?}");
        site.until("set-log-level", |s| s["commands"]["log_filter"] == "debug").await;
        let s = site.status().await;
        assert_eq!(counts(&s)["delivered"], 2, "{uplink:?}: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_for_a_device_created_a_moment_ago_is_queued_and_delivered() {
    // a slow registry poll: only the resync the command asks for can bring the new device
    let extra = Extra { registry_interval: "1h", ..DEFAULT };
    let site = Site::start_with(Uplink::Http, extra).await;
    let device = gw_devcloud::seed::device_with(APP, "new-sensor", Some("pw-new"), &["gw1"]);
    site.cloud.apply_device(device).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let body = serde_json::json!({
        "application": APP, "device": "new-sensor", "command": "hello",
        "payload": base64::engine::general_purpose::STANDARD.encode("hi"),
    });
    let started = Instant::now();
    let answer =
        site.client.post(site.push_url()).bearer_auth(PUSH_TOKEN).json(&body).send().await.unwrap();
    assert_eq!(answer.status(), 202, "{}", answer.text().await.unwrap());
    assert!(started.elapsed() < Duration::from_secs(3), "answered within the resync's bound");
    // the new sensor's first contact carries it
    let out = Command::new("curl")
        .args(["-s", "-i", "--max-time", "20", "-u", "new-sensor@my-app:pw-new"])
        .args(["-H", "content-type: application/json", "-d", "{}"])
        .arg(format!("http://{}/v1/temp", site.web))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (code, command, payload) = http_answer(&output(out).await);
    assert_eq!((code, command.as_deref(), payload.as_str()), (200, Some("hello"), "hi"));
}

/// With the providers RFC enabled in the cloud and in `[registry]`, a sensor naming `gw1` in
/// `spec.providers` and one selecting its labels with `spec.providerSelector` are synced,
/// publish as themselves through gw1 over MQTT, HTTP and CoAP, and receive commands on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_rfc_sensors_publish_and_get_commands_over_mqtt_http_and_coap() {
    if !have_mosquitto_clients() || !have_coap_client() {
        return;
    }
    for proxy in [Proxy::Providers, Proxy::Selector] {
        let site = Site::start_with(Uplink::Mqtt, Extra { proxy, ..DEFAULT }).await;
        // MQTT: a command on the sensor's subscription, and a publish as the sensor
        let sub = site.mosquitto_sub(1).await;
        site.until("mqtt-sensor subscribed", |s| s["mqtt"]["sessions"] == 1).await;
        assert_eq!(site.send("mqtt-sensor", "set-led", "{\"on\":true}").await, 202, "{proxy:?}");
        let out = output(sub).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "command/inbox//set-led {\"on\":true}",
            "{proxy:?}"
        );
        let port = site.listener("mqtt").await.rsplit_once(':').unwrap().1.to_owned();
        let published = std::process::Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-q", "1"])
            .args(["-u", "mqtt-sensor@my-app", "-P", "pw", "-t", "telemetry", "-m", "{}"])
            .output()
            .unwrap();
        assert!(published.status.success(), "{proxy:?}: {published:?}");
        // HTTP: curl waits with ct= and gets the command
        let curl = site.curl(Some(5));
        site.until_waiting(1).await;
        assert_eq!(site.send("http-sensor", "open-valve", "{}").await, 202, "{proxy:?}");
        let (code, command, _) = http_answer(&output(curl).await);
        assert_eq!((code, command.as_deref()), (200, Some("open-valve")), "{proxy:?}");
        // CoAP: coap-client waits with ct= and gets 2.05 with option 4210
        let client = site.coap_client(5).await;
        site.until_waiting(1).await;
        assert_eq!(site.send("coap-sensor", "blink", "{\"n\":3}").await, 202, "{proxy:?}");
        assert_coap_command(output(client).await, "blink", "{\"n\":3}");
        // every publish reached the cloud as its sensor, sent by gw1
        let deadline = Instant::now() + DEADLINE;
        loop {
            let events = site.cloud.events();
            let from = |d: &str| {
                events
                    .iter()
                    .any(|e| e.device.as_deref() == Some(d) && e.sender.as_deref() == Some("gw1"))
            };
            if ["mqtt-sensor", "http-sensor", "coap-sensor"].iter().all(|d| from(d)) {
                break;
            }
            assert!(Instant::now() < deadline, "{proxy:?}: not every sensor's data arrived");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let s = site.status().await;
        let parked = s["uplink"]["parked"].as_array().map_or(0, Vec::len);
        assert_eq!(parked, 0, "{proxy:?}: nothing refused upstream: {}", s["uplink"]);
    }
}

/// A paho-mqtt sensor on `command/inbox//#` at QoS 1. With `die_unacked` it takes the command
/// without acknowledging it (paho's `manual_ack`) and kills itself with SIGKILL; otherwise it
/// acknowledges it. It prints the command's topic and payload first.
const PAHO_COMMAND_SENSOR: &str = r#"
import os, signal, sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, die_unacked = int(sys.argv[1]), sys.argv[2] == "die"
got = threading.Event()
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="mqtt-sensor@my-app", manual_ack=die_unacked)
c.username_pw_set("mqtt-sensor@my-app", "pw")
def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe("command/inbox//#", qos=1)
def on_message(client, userdata, msg):
    print(msg.topic, msg.payload.decode(), flush=True)
    if die_unacked:
        os.kill(os.getpid(), signal.SIGKILL)
    got.set()
c.on_connect = on_connect
c.on_message = on_message
c.connect("127.0.0.1", port)
c.loop_start()
ok = got.wait(20)
c.disconnect()
c.loop_stop()
sys.exit(0 if ok else 3)
"#;

/// A sensor killed after the command's publish reached it but before its PUBACK gets the
/// command again after it reconnects: it left the queue only with the PUBACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_killed_before_its_puback_gets_the_command_after_reconnecting() {
    let Some(python) = common::paho_python() else { return };
    let site = Site::start(Uplink::Mqtt).await;
    let port = site.listener("mqtt").await.rsplit_once(':').unwrap().1.to_owned();
    let paho = |mode: &str| {
        Command::new(&python)
            .args(["-c", PAHO_COMMAND_SENSOR, &port, mode])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let first = paho("die");
    site.until("the sensor subscribed", |s| s["mqtt"]["sessions"] == 1).await;
    assert_eq!(site.send("mqtt-sensor", "set-led", "{\"on\":true}").await, 202);
    let out = output(first).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "command/inbox//set-led {\"on\":true}");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(9), "killed before its PUBACK: {out:?}");
    // still queued, not counted as delivered
    let s = site.until("the session ended", |s| s["mqtt"]["sessions"] == 0).await;
    assert_eq!(s["commands"]["queued"], 1, "{}", s["commands"]);
    assert_eq!(counts(&s)["delivered"], 0, "{}", s["commands"]);

    let second = paho("ack");
    let out = output(second).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "command/inbox//set-led {\"on\":true}");
    let s = site.until("delivered once acknowledged", |s| counts(s)["delivered"] == 1).await;
    assert_eq!(s["commands"]["queued"], 0, "{}", s["commands"]);
    assert_eq!(s["commands"]["recent"][0]["via"], "mqtt");
}
