//! gatewayd on the simulated board (`[board] profile = "sim"`): the name from the board's
//! serial, the watchdog file written while healthy and disarmed at a clean stop, the status LED
//! following the cloud link, the button's identify, temperature in the status and metrics, and
//! a factory reset applied at start.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Running, write};
use gw_board::sim::SimBoard;
use gw_devcloud::{DevCloud, Seed};
use tokio_util::sync::CancellationToken;

const APP: &str = "app";
const NAME: &str = "gw-sim-0000000001";

async fn until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sim_board_names_kicks_blinks_identifies_and_reports() {
    let stop_cloud = CancellationToken::new();
    let cloud = DevCloud::start(
        "127.0.0.1:0".parse().unwrap(),
        Seed::new()
            .user("admin", "token")
            .application(APP)
            .password_device(APP, NAME, "gw-secret")
            .sensor(APP, "sensor1", None, &[NAME]),
        stop_cloud.clone(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sim = SimBoard::create(&dir.path().join("board")).unwrap();
    let data = dir.path().join("data");
    // a factory reset asked for before: applied at start, before anything opens the data
    std::fs::create_dir_all(data.join("outbox")).unwrap();
    std::fs::write(data.join("outbox/stale"), b"x").unwrap();
    std::fs::write(data.join(gatewayd::board::FACTORY_RESET_MARKER), b"").unwrap();
    let config = format!(
        "[gateway]\napplication = \"{APP}\"\ndata_dir = {data:?}\n\n\
         [board]\nprofile = \"sim\"\nroot = {root:?}\nidentify_for = \"30s\"\n\n\
         [cloud]\nkind = \"drogue-http\"\nurl = {url:?}\npassword = \"gw-secret\"\n\
         retry_min = \"50ms\"\nretry_max = \"200ms\"\ntimeout = \"1s\"\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n[log]\nformat = \"json\"\n\n\
         [[devices]]\nname = \"sensor1\"\npassword = \"pw\"\n",
        data = data.display().to_string(),
        root = sim.root().display().to_string(),
        url = cloud.url(),
    );
    let mut gw = Running::start(&write(dir.path(), "gatewayd.toml", &config), None);
    let web = gw.web_addr();
    assert!(!data.join("outbox/stale").exists(), "the factory reset wiped the data directory");
    assert!(!data.join(gatewayd::board::FACTORY_RESET_MARKER).exists());

    let client = reqwest::Client::new();
    let status = common::status(&client, &web).await;
    assert_eq!(status["gateway"]["name"], NAME, "named after the board's serial");
    assert_eq!(status["board"]["profile"], "sim");
    assert_eq!(status["board"]["temperature_celsius"], 42.0);
    let metrics = common::metrics(&client, &web).await;
    assert!(metrics.contains("\ngatewayd_board_temperature_celsius 42\n"), "{metrics}");

    // The watchdog is kicked every second (sim timeout 3 s) while everything is healthy.
    let first = sim.watchdog_log().len();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(sim.watchdog_log().len() >= first + 2, "kicks: {:?}", sim.watchdog_log());

    // A message reaches the cloud: the link is up, the status LED shines steadily.
    let publish = |n: u32| {
        let (client, web) = (client.clone(), web.clone());
        async move {
            client
                .post(format!("http://{web}/v1/temp"))
                .basic_auth("sensor1@app", Some("pw"))
                .body(format!("{{\"n\":{n}}}"))
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(publish(1).await, 202);
    until("status LED on", Duration::from_secs(10), || {
        (sim.led("status") == ("none".into(), "1".into(), None)).then_some(())
    })
    .await;
    // The cloud goes away: the LED blinks slowly while messages are buffered.
    stop_cloud.cancel();
    cloud.stopped().await;
    assert_eq!(publish(2).await, 202);
    until("status LED slow blink", Duration::from_secs(15), || {
        (sim.led("status").2 == Some((1000, 1000))).then_some(())
    })
    .await;

    // A short press of the button: identify blinks the activity LED.
    sim.button(true).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sim.button(false).unwrap();
    until("identify blink", Duration::from_secs(5), || {
        (sim.led("activity").2 == Some((250, 250))).then_some(())
    })
    .await;
    assert_eq!(common::status(&client, &web).await["board"]["identify"], true);

    // A clean stop disarms the watchdog (the magic close).
    gw.signal("-TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).success());
    assert!(sim.watchdog_log().ends_with('V'), "{:?}", sim.watchdog_log());
}
