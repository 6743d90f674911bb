//! Any bytes as a registry device (what a registry listing or a snapshot holds): it parses or
//! is refused, and every question the gateway asks of a parsed device answers without a panic.
#![no_main]

use gw_model::registry::Device;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(device) = serde_json::from_slice::<Device>(data) else { return };
    let _ = device.named_gateways(gw_model::registry::ProxyRules::PROVIDERS_RFC).any(|n| n == "gw1");
    let _ = device.is_known_as("sensor1");
    let _ = device.external_endpoint();
    // a parsed device round-trips
    let json = serde_json::to_vec(&device).expect("a parsed device serializes");
    let again: Device = serde_json::from_slice(&json).expect("its own JSON parses");
    assert_eq!(serde_json::to_vec(&again).expect("serializes"), json);
});
