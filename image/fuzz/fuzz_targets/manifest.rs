//! The bundle manifest parser on arbitrary bytes: it never panics, and whatever it accepts is
//! written back by `to_toml` into text that parses to the same manifest.
#![no_main]

use gw_image::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(manifest) = Manifest::parse(text) {
        let again = manifest.to_toml().expect("an accepted manifest serializes");
        let reparsed = Manifest::parse(&again).expect("a serialized manifest parses");
        assert_eq!(reparsed, manifest);
        assert!(
            manifest.payload_len() >= manifest.images.iter().map(|i| i.size).max().unwrap_or(0)
        );
    }
});
