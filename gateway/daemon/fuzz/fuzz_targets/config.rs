//! Any text as a config file: parsing and checking either succeed or name a problem; they
//! never panic. Secret files named in the text are read only if they exist.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(loaded) = gatewayd::config::Config::from_str_at(text, "fuzz.toml") {
        // what parses also serializes (the status page and print-config show it)
        let _ = json_roundtrip(&loaded.config);
    }
});

fn json_roundtrip(c: &gatewayd::config::Config) -> Option<String> {
    serde_json::to_string(c).ok()
}
