//! `gatewayd demo`: the newcomer's first look. It starts the dev cloud in-process, a gateway
//! configured against it (temp data dir, free ports) and simulated sensors that publish
//! through the gateway's real southbound listeners, then prints where to look. Commands sent
//! to the dev cloud's command API reach the sensors the way Drogue routes them: the cloud
//! pushes them to the gateway's push endpoint, and the gateway delivers or queues them.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context;
use gw_devcloud::{DevCloud, Seed};
use tokio_util::sync::CancellationToken;

use crate::{cli, config::Config, wiring::Gateway};

const APP: &str = "my-app";
const GATEWAY: &str = "gw1";
const SENSORS: [&str; 3] = ["sensor1", "sensor2", "sensor3"];

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The gateway's web listener (status page, southbound HTTP).
    #[arg(long, default_value = "127.0.0.1:0")]
    web: SocketAddr,
    /// The gateway's southbound MQTT listener.
    #[arg(long, default_value = "127.0.0.1:0")]
    mqtt: SocketAddr,
    /// The gateway's southbound CoAP listener (UDP).
    #[arg(long, default_value = "127.0.0.1:0")]
    coap: SocketAddr,
    /// The dev cloud's listener (HTTP: registry, command API, the endpoint the gateway sends to).
    #[arg(long, default_value = "127.0.0.1:0")]
    cloud: SocketAddr,
    /// The dev cloud's MQTT endpoint (port 0: any free port on the cloud's address).
    #[arg(long)]
    cloud_mqtt: Option<SocketAddr>,
    /// Time between two messages of each simulated sensor.
    #[arg(long, default_value = "2s")]
    interval: humantime::Duration,
    /// Stop after this long instead of waiting for Ctrl-C.
    #[arg(long)]
    duration: Option<humantime::Duration>,
}

/// A random lowercase hex string of `n` bytes.
fn random_hex(n: usize) -> String {
    (0..n).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let signal = cli::StopSignal::install();
    let data = tempfile::Builder::new()
        .prefix("gatewayd-demo-")
        .tempdir()
        .context("cannot create a temporary data directory")?;
    let token = random_hex(12);
    let gateway_password = random_hex(12);
    let push_token = random_hex(12);
    let api_token = random_hex(16);
    let sensor_passwords: Vec<String> = SENSORS.iter().map(|_| random_hex(6)).collect();

    // 1. The dev cloud, seeded with the application, the gateway and its sensors.
    let mut seed = Seed::new().user("admin", &token).application(APP).password_device(
        APP,
        GATEWAY,
        &gateway_password,
    );
    for (name, pw) in SENSORS.iter().zip(&sensor_passwords) {
        seed = seed.sensor(APP, name, Some(pw), &[GATEWAY]);
    }
    let shutdown = CancellationToken::new();
    let cloud_mqtt = args.cloud_mqtt.unwrap_or_else(|| SocketAddr::new(args.cloud.ip(), 0));
    let cloud = DevCloud::start_with_mqtt(args.cloud, cloud_mqtt, seed, shutdown.child_token())
        .await
        .context("cannot start the dev cloud")?;
    let cloud_url = cloud.url();
    let cloud_mqtt_url = cloud.mqtt_url();

    // 2. The gateway, configured as an installer would, through the same config parser: it
    // learns its sensors and their credentials from the dev cloud's registry. It runs on the
    // simulated board: its watchdog, LEDs and button are files under the data directory.
    let board_dir = data.path().join("sim-board");
    gw_board::sim::SimBoard::create(&board_dir).context("cannot create the simulated board")?;
    let text = format!(
        "[gateway]\nname = {GATEWAY:?}\napplication = {APP:?}\ndata_dir = {:?}\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {cloud_url:?}\npassword = {gateway_password:?}\n\
         retry_max = \"5s\"\n\n\
         [registry]\nurl = {cloud_url:?}\ntoken = {token:?}\ninterval = \"30s\"\n\
         events_url = \"{cloud_url}/api/devcloud/v1/events\"\n\n\
         [mqtt]\nlisten = \"{}\"\n\n[coap]\nlisten = \"{}\"\n\n[web]\nlisten = \"{}\"\npush_token = {push_token:?}\napi_token = {api_token:?}\n\n\
         [board]\nprofile = \"sim\"\nroot = {:?}\n",
        data.path().join("state").display().to_string(),
        args.mqtt,
        args.coap,
        args.web,
        board_dir.display().to_string(),
    );
    let mut loaded = Config::from_str_at(&text, "demo config")?;
    // The status page's first technician, with a password for this run only.
    let admin_password = random_hex(8);
    loaded.admin_password = Some(gw_model::Secret::new(admin_password.clone()));
    let mut gateway = Gateway::start(loaded, shutdown.clone()).await?;
    let web = gateway.web_addr();
    let mqtt = gateway.listener("mqtt").context("the demo gateway has an MQTT listener")?;
    let coap = gateway.listener("coap").context("the demo gateway has a CoAP listener")?;

    // The gateway device gets Drogue's external command endpoint: the cloud pushes commands
    // for its sensors to the gateway, with the push secret in the headers.
    let mut device = cloud.device(APP, GATEWAY).context("the dev cloud lists the gateway")?;
    device.spec.commands =
        Some(serde_json::from_value(serde_json::json!({"commands": [{"external": {
            "url": format!("http://{web}/api/commands/v1/push"),
            "headers": {"Authorization": format!("Bearer {push_token}")},
        }}]}))?);
    cloud.apply_device(device).context("cannot give the gateway its push endpoint")?;

    registry_synced(web, &api_token, &shutdown).await;

    // 3. Simulated sensors, posting through the gateway's southbound HTTP endpoint.
    let sensors: Vec<(String, String)> =
        SENSORS.iter().map(|s| s.to_string()).zip(sensor_passwords.iter().cloned()).collect();
    let interval = *args.interval;
    let stop = shutdown.clone();
    gateway.supervisor().spawn("demo sensors", async move {
        simulate(web, mqtt, sensors, interval, stop).await;
        Ok(())
    });
    gateway.supervisor().spawn("dev cloud", async move {
        cloud.stopped().await;
        Ok(())
    });

    let hints = Hints {
        web,
        mqtt,
        coap,
        cloud: cloud_url.clone(),
        cloud_mqtt: cloud_mqtt_url,
        token: token.clone(),
        sensor1_password: sensor_passwords[0].clone(),
        admin_password: admin_password.clone(),
        api_token: api_token.clone(),
        push_token: push_token.clone(),
    };
    say(format_args!("{}", hints.banner()));
    say(format_args!("{}", hints.commands()));

    let duration = args.duration.map(Duration::from);
    let stop = async move {
        match duration {
            Some(d) => tokio::select! {
                _ = signal.wait() => {}
                _ = tokio::time::sleep(d) => tracing::info!("demo duration reached"),
            },
            None => signal.wait().await,
        }
    };
    let code = cli::supervise(gateway, stop).await;
    drop(data);
    Ok(code)
}

/// Where the demo's parts listen and their secrets for this run: what the hints print.
pub struct Hints {
    pub web: SocketAddr,
    pub mqtt: SocketAddr,
    pub coap: SocketAddr,
    pub cloud: String,
    pub cloud_mqtt: String,
    pub token: String,
    pub sensor1_password: String,
    pub admin_password: String,
    pub api_token: String,
    pub push_token: String,
}

impl Hints {
    /// Where to look, and one message per protocol as sensor1 (each line works as printed).
    pub fn banner(&self) -> String {
        let Self { web, mqtt, coap, cloud, cloud_mqtt, admin_password, api_token, .. } = self;
        let (pw, token) = (&self.sensor1_password, &self.token);
        let basic = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("sensor1@{APP}:{pw}"),
        );
        format!(
            "\ngatewayd demo: a dev cloud, gateway {GATEWAY} of application {APP}, and sensors {sensors}\n\
             posting a temperature through the gateway every few seconds ({http} over HTTP, {last}\n\
             over MQTT). The gateway learns the sensors and their passwords from the cloud's registry.\n\n\
             \x20 status page        http://{web}/  (log in as admin, password {admin_password})\n\
             \x20 gateway status     curl -H 'Authorization: Bearer {api_token}' http://{web}/api/v1/status\n\
             \x20 gateway MQTT       mqtt://{mqtt}\n\
             \x20 gateway CoAP       coap://{coap}\n\
             \x20 dev cloud          {cloud}/  (its MQTT endpoint: {cloud_mqtt})\n\
             \x20 cloud event log    {cloud}/api/devcloud/v1/events\n\n\
             Send a message as sensor1 (202 once it is on the gateway's disk):\n\
             \x20 curl -i -u sensor1@{APP}:{pw} -H 'Content-Type: application/json' -d '{{\"temp\":21.5}}' http://{web}/v1/temperature\n\
             Or over MQTT (PUBACK once it is on disk):\n\
             \x20 mosquitto_pub -h {mqtt_host} -p {mqtt_port} -q 1 -u sensor1@{APP} -P {pw} -t temperature -m '{{\"temp\":22}}'\n\
             Or over CoAP (2.04 once it is on disk; option 4209 carries the credentials):\n\
             \x20 coap-client-notls -m post -O 4209,'Basic {basic}' -t 50 -e '{{\"temp\":23}}' coap://{coap}/v1/temperature\n\
             See it arrive in the cloud as sensor1, sent by {GATEWAY}:\n\
             \x20 curl -s '{cloud}/api/devcloud/v1/events?since=0'\n\
             Look at the registry with Drogue's CLI (cargo install drg):\n\
             \x20 drg login {cloud} --access-token admin:{token} && drg get devices --application {APP}\n\n\
             Stop with Ctrl-C.\n",
            sensors = SENSORS.join(", "),
            http = SENSORS[..SENSORS.len() - 1].join(" and "),
            last = SENSORS[SENSORS.len() - 1],
            mqtt_host = mqtt.ip(),
            mqtt_port = mqtt.port(),
        )
    }

    /// How to send commands: through the cloud's command API, and straight to the gateway's
    /// push endpoint with the push secret (each line works as printed).
    pub fn commands(&self) -> String {
        let Self { web, mqtt, cloud, token, push_token, .. } = self;
        let pw = &self.sensor1_password;
        let last = SENSORS[SENSORS.len() - 1];
        format!(
            "Commands: the cloud pushes them to the gateway, which delivers them at once to a sensor\n\
             that is connected (MQTT subscription, HTTP/CoAP request waiting with ct=) and otherwise\n\
             queues them on disk for the sensor's next contact. Send {last} (subscribed over MQTT) one:\n\
             \x20 curl -i -u admin:{token} -H 'Content-Type: application/json' -d '{{\"interval\":10}}' '{cloud}/api/command/v1alpha1/apps/{APP}/devices/{last}?command=set-interval'\n\
             and watch the gateway's log for \"demo sensor received a command\". Or receive sensor1's\n\
             commands yourself, then send it one the same way:\n\
             \x20 mosquitto_sub -h {host} -p {port} -q 1 -u sensor1@{APP} -P {pw} -t 'command/inbox/#' -v\n\
             The gateway's push endpoint takes the cloud's pushes (docs/command-intake.md); as the cloud\n\
             would, with this run's push secret:\n\
             \x20 curl -i -H 'Authorization: Bearer {push_token}' -H 'Content-Type: application/json' -d '{{\"application\":\"{APP}\",\"device\":\"sensor1\",\"command\":\"set-led\",\"payload\":\"b24=\"}}' http://{web}/api/commands/v1/push\n",
            host = mqtt.ip(),
            port = mqtt.port(),
        )
    }
}

/// Prints a hint. Not println!: a reader that closed standard output (a pipe to `head`, a test
/// that has read enough) must not stop the demo.
fn say(text: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(text).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush());
}

/// Waits (up to 20 s) until the gateway holds its sensors' credentials from the registry, so
/// the first readings (and the printed hints) are not refused.
async fn registry_synced(web: SocketAddr, api_token: &str, stop: &CancellationToken) {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline && !stop.is_cancelled() {
        let status =
            client.get(format!("http://{web}/api/v1/status")).bearer_auth(api_token).send().await;
        if let Ok(r) = status
            && let Ok(v) = r.json::<serde_json::Value>().await
            && v["credentials"]["registry_devices"].as_u64() >= Some(SENSORS.len() as u64)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::warn!("the demo gateway has not synced its registry yet; starting the sensors anyway");
}

/// The sensors post a JSON reading every `interval`, the first ones over HTTP, the last over
/// MQTT (QoS 1); failures are logged and the next tick tries again, as a real sensor would.
async fn simulate(
    web: SocketAddr,
    mqtt: SocketAddr,
    sensors: Vec<(String, String)>,
    interval: Duration,
    stop: CancellationToken,
) {
    let Some(((mqtt_name, mqtt_password), http_sensors)) = sensors.split_last() else { return };
    let mut options =
        rumqttc::MqttOptions::new(format!("{mqtt_name}@{APP}"), mqtt.ip().to_string(), mqtt.port());
    options.set_credentials(format!("{mqtt_name}@{APP}"), mqtt_password.clone());
    options.set_keep_alive(Duration::from_secs(30));
    let (mqtt_client, mut events) = rumqttc::AsyncClient::new(options, 16);
    let mqtt_loop = async {
        loop {
            match events.poll().await {
                // a clean session: subscribe to its commands after every connect
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => {
                    let qos = rumqttc::QoS::AtLeastOnce;
                    if let Err(e) = mqtt_client.try_subscribe("command/inbox/#", qos) {
                        tracing::warn!(sensor = %mqtt_name, cause = %e, "demo MQTT sensor cannot subscribe");
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let command = p.topic.rsplit('/').next().unwrap_or_default();
                    let payload = String::from_utf8_lossy(&p.payload);
                    tracing::info!(sensor = %mqtt_name, %command, %payload, "demo sensor received a command");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(sensor = %mqtt_name, cause = %e, "demo MQTT sensor disconnected");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    };
    let readings = async {
        let client = reqwest::Client::new();
        let url = format!("http://{web}/v1/temperature");
        let mut tick = tokio::time::interval(interval);
        for n in 1u64.. {
            tick.tick().await;
            let reading = |i: usize| 20.0 + (n as f64 / 5.0 + i as f64).sin() * 3.0;
            for (i, (name, password)) in http_sensors.iter().enumerate() {
                let body = format!("{{\"temp\":{:.2},\"seq\":{n}}}", reading(i));
                let sent = client
                    .post(&url)
                    .basic_auth(format!("{name}@{APP}"), Some(password))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == reqwest::StatusCode::OK => {
                        // a command waited for this sensor: it comes in the answer
                        let command = r
                            .headers()
                            .get("command")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let payload = r.text().await.unwrap_or_default();
                        tracing::info!(sensor = %name, %command, %payload, "demo sensor received a command");
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::ACCEPTED => {
                        tracing::debug!(sensor = %name, seq = n, "demo reading accepted")
                    }
                    Ok(r) => {
                        tracing::warn!(sensor = %name, status = %r.status(), "demo reading refused")
                    }
                    Err(e) => tracing::warn!(sensor = %name, cause = %e, "demo reading failed"),
                }
            }
            let body = format!("{{\"temp\":{:.2},\"seq\":{n}}}", reading(http_sensors.len()));
            if let Err(e) =
                mqtt_client.publish("temperature", rumqttc::QoS::AtLeastOnce, false, body).await
            {
                tracing::warn!(sensor = %mqtt_name, cause = %e, "demo MQTT reading failed");
            }
        }
    };
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = mqtt_loop => {}
        _ = readings => {}
    }
}
