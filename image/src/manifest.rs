//! The bundle manifest: TOML, signed as bytes.
//!
//! ```toml
//! compatible = "gatewayd-x86-qemu"      # the boards it is for: gatewayd-<board profile>
//! version = "1.4.0"                     # semver; no downgrade unless forced
//! build = "2026-11-23T07:00:00Z"        # RFC 3339, UTC
//! description = "optional free text"
//!
//! [[image]]
//! slot_class = "rootfs"                 # the A/B slot pair it goes to
//! name = "rootfs.ext4"
//! size = 134217728
//! sha256 = "5f1d...64 hex digits"
//! ```

use serde::{Deserialize, Serialize};

use crate::ImageError;

/// The longest manifest a bundle may carry.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;

/// The slot classes a bundle may hold images for.
pub const SLOT_CLASSES: &[&str] = &["rootfs"];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub compatible: String,
    pub version: semver::Version,
    /// The build date, RFC 3339 in UTC (`2026-11-23T07:00:00Z`).
    pub build: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(rename = "image")]
    pub images: Vec<Image>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    pub slot_class: String,
    /// The image's file name when it was bundled (for people; not a path on the gateway).
    pub name: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the image's `size` bytes.
    pub sha256: String,
}

impl Manifest {
    /// Parses and checks a manifest.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ImageError::Manifest(format!(
                "{} bytes; at most {MAX_MANIFEST_BYTES}",
                text.len()
            )));
        }
        let m: Self =
            toml::from_str(text).map_err(|e| ImageError::Manifest(e.to_string().trim().into()))?;
        m.validate().map_err(ImageError::Manifest)?;
        Ok(m)
    }

    /// The manifest as TOML, as it is signed and stored in a bundle.
    pub fn to_toml(&self) -> Result<String, ImageError> {
        self.validate().map_err(ImageError::Manifest)?;
        toml::to_string(self).map_err(|e| ImageError::Manifest(e.to_string()))
    }

    /// The image of a slot class.
    pub fn image(&self, slot_class: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.slot_class == slot_class)
    }

    /// The payload's length: every image's size.
    pub fn payload_len(&self) -> u64 {
        self.images.iter().map(|i| i.size).fold(0u64, u64::saturating_add)
    }

    fn validate(&self) -> Result<(), String> {
        let compatible_ok = !self.compatible.is_empty()
            && self.compatible.len() <= 128
            && self
                .compatible
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !compatible_ok {
            return Err(format!(
                "compatible: {:?} must be 1 to 128 letters, digits, '-', '_' or '.'",
                self.compatible
            ));
        }
        humantime::parse_rfc3339(&self.build)
            .map_err(|e| format!("build: {:?} is not an RFC 3339 UTC date ({e})", self.build))?;
        if self.images.is_empty() {
            return Err("image: a bundle holds at least one image".into());
        }
        let mut total = 0u64;
        for (i, image) in self.images.iter().enumerate() {
            if !SLOT_CLASSES.contains(&image.slot_class.as_str()) {
                return Err(format!(
                    "image[{i}].slot_class: {:?} is not one of {SLOT_CLASSES:?}",
                    image.slot_class
                ));
            }
            if self.images[..i].iter().any(|o| o.slot_class == image.slot_class) {
                return Err(format!(
                    "image[{i}].slot_class: a second image for {:?}",
                    image.slot_class
                ));
            }
            let name_ok = !image.name.is_empty()
                && image.name.len() <= 255
                && !image.name.contains(['/', '\0'])
                && !image.name.chars().any(char::is_control);
            if !name_ok {
                return Err(format!(
                    "image[{i}].name: {:?} must be a file name (1 to 255 bytes, no '/')",
                    image.name
                ));
            }
            if image.size == 0 {
                return Err(format!("image[{i}].size: an image is not empty"));
            }
            total = total
                .checked_add(image.size)
                .ok_or_else(|| format!("image[{i}].size: the sizes overflow"))?;
            let hash_ok = image.sha256.len() == 64
                && image.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hash_ok {
                return Err(format!(
                    "image[{i}].sha256: {:?} must be 64 lower-case hex digits",
                    image.sha256
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GOOD: &str = r#"
compatible = "gatewayd-sim"
version = "1.2.3"
build = "2026-11-23T07:00:00Z"

[[image]]
slot_class = "rootfs"
name = "rootfs.ext4"
size = 4096
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

    fn err(text: &str) -> String {
        Manifest::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_a_manifest_and_round_trips_it() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.compatible, "gatewayd-sim");
        assert_eq!(m.version, semver::Version::new(1, 2, 3));
        assert_eq!(m.image("rootfs").unwrap().size, 4096);
        assert_eq!(Manifest::parse(&m.to_toml().unwrap()).unwrap(), m);
    }

    #[test]
    fn names_the_bad_key() {
        assert!(err(&GOOD.replace("1.2.3", "1.2")).contains("version"));
        assert!(err(&GOOD.replace("2026-11-23T07:00:00Z", "yesterday")).contains("build:"));
        assert!(err(&GOOD.replace("gatewayd-sim", "a b")).contains("compatible:"));
        assert!(err(&GOOD.replace("\"rootfs\"", "\"bootloader\"")).contains("slot_class"));
        assert!(err(&GOOD.replace("4096", "0")).contains("image[0].size"));
        assert!(err(&GOOD.replace("0000000000", "ABCDEF0000")).contains("sha256"));
        assert!(err(&GOOD.replace("rootfs.ext4", "../x")).contains("name"));
        assert!(err(&format!("{GOOD}extra = 1\n")).contains("extra"));
        assert!(err(GOOD.split("[[image]]").next().unwrap()).contains("image"));
        let twice = format!("{GOOD}{}", &GOOD[GOOD.find("[[image]]").unwrap()..]);
        assert!(err(&twice).contains("a second image"));
    }

    #[test]
    fn refuses_an_oversized_manifest() {
        let big = format!("{GOOD}description = \"{}\"\n", "x".repeat(MAX_MANIFEST_BYTES));
        assert!(err(&big).contains("at most"));
    }

    proptest! {
        #[test]
        fn any_valid_manifest_round_trips(
            compatible in "[a-z0-9][a-z0-9._-]{0,40}",
            major in 0u64..1000, minor in 0u64..1000, patch in 0u64..1000,
            pre in proptest::option::of("[a-z]{1,8}"),
            size in 1u64..u64::MAX / 2,
            hash in "[0-9a-f]{64}",
            name in "[A-Za-z0-9._ -]{1,40}",
            description in proptest::option::of("\\PC{0,60}"),
        ) {
            let mut version = semver::Version::new(major, minor, patch);
            if let Some(p) = pre { version.pre = semver::Prerelease::new(&p).unwrap(); }
            let m = Manifest {
                compatible, version, build: "2026-01-02T03:04:05Z".into(), description,
                images: vec![Image { slot_class: "rootfs".into(), name, size, sha256: hash }],
            };
            let text = m.to_toml().unwrap();
            prop_assert_eq!(Manifest::parse(&text).unwrap(), m);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = Manifest::parse(&text);
        }
    }
}
