//! Any text as an uplink topic template (`[cloud] topic`) or a bridge mapping's topic and
//! command templates: parsing succeeds or names the problem; a parsed template renders, and a
//! bridge template matches any topic, without a panic. The first line is the template, the
//! rest a topic to match.
#![no_main]

use bytes::Bytes;
use gw_model::{Identity, Telemetry, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (template, topic) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(t) = template.parse::<gw_cloud_sync::topic::TopicTemplate>() {
        let gateway: Identity = "gw1@app".parse().expect("a valid identity");
        let telemetry = Telemetry::new(
            "app".parse().expect("app"),
            "sensor1".parse().expect("device"),
            "temp".parse().expect("channel"),
            Timestamp::from_millis(0),
            Bytes::new(),
        );
        let rendered = t.render(&gateway, &telemetry);
        assert!(rendered.contains("sensor1"), "the device is in every uplink topic");
    }
    if let Ok(t) = gw_driver_mqtt::bridge::template::TopicTemplate::parse(template) {
        let _ = t.filter();
        let _ = t.matches(topic);
    }
    if let Ok(t) = gw_driver_mqtt::bridge::template::CommandTemplate::parse(template) {
        let _ = t.render(&"sensor1".parse().expect("device"), &"reboot".parse().expect("command"));
    }
});
