//! One test per matching rule (contracts/drogue-cloud.md §6), plus the snapshot file.

use std::os::unix::fs::PermissionsExt;

use gw_model::{AppId, DeviceId, Secret};
use serde_json::json;

use super::*;

/// sha512-crypt of "Hello world!" with salt "saltstring" (the reference test vector).
const SHA512_HELLO: &str = "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1";

fn params() -> HashParams {
    HashParams::new(64, 1, 1).unwrap()
}

fn dev(name: &str, spec: serde_json::Value) -> Device {
    serde_json::from_value(json!({"metadata":{"application":"app","name":name},"spec":spec}))
        .unwrap()
}

fn creds(list: serde_json::Value) -> serde_json::Value {
    json!({"authentication":{"credentials":list}})
}

fn pw(device: &str, password: &str) -> AuthRequest {
    AuthRequest {
        app: AppId::new("app").unwrap(),
        device: DeviceId::new(device).unwrap(),
        credential: PresentedCredential::Password(Secret::new(password)),
    }
}

fn user(device: &str, username: &str, password: &str) -> AuthRequest {
    AuthRequest {
        app: AppId::new("app").unwrap(),
        device: DeviceId::new(device).unwrap(),
        credential: PresentedCredential::UsernamePassword {
            username: username.into(),
            password: Secret::new(password),
        },
    }
}

fn cache(devices: &[Device]) -> CredentialCache {
    CredentialCache::from_devices(devices, &params()).unwrap()
}

/// The fixtures: every credential form, with distinctive plain passwords.
fn fixtures() -> Vec<Device> {
    vec![
        dev("plain", creds(json!([{"pass":"plain-secret-111"}]))),
        dev("tagged", creds(json!([{"pass":{"plain":"tagged-secret-222"}}]))),
        dev("bc", creds(json!([{"pass":{"bcrypt": bcrypt::hash("bcrypt-pw", 4).unwrap()}}]))),
        dev("sha", creds(json!([{"pass":{"sha512": SHA512_HELLO}}]))),
        dev(
            "aliased",
            json!({"alias":["alt-1","CN=aliased,O=Org"],
            "authentication":{"credentials":[{"pass":"alias-secret-333"}]}}),
        ),
        dev("withuser", creds(json!([{"user":{"username":"bob","password":"user-secret-444"}}]))),
        dev(
            "uniq",
            creds(
                json!([{"user":{"username":"ursula","password":"unique-secret-555","unique":true}}]),
            ),
        ),
        dev(
            "selfuser",
            creds(json!([{"user":{"username":"selfuser","password":"self-secret-666"}}])),
        ),
        dev("psk", creds(json!([{"psk":{"key":"a2V5"}}]))),
    ]
}

#[test]
fn plain_registry_password_is_hashed_with_argon2_and_matches() {
    let c = cache(&fixtures());
    assert_eq!(c.verify(&pw("plain", "plain-secret-111")), Some(true));
    assert_eq!(c.verify(&pw("tagged", "tagged-secret-222")), Some(true));
    let cand = c.candidates(&pw("plain", "x")).unwrap();
    assert!(matches!(&cand.hashes[..], [StoredHash::Argon2(h)] if h.starts_with("$argon2id$")));
}

#[test]
fn bcrypt_hash_is_kept_and_verified() {
    let c = cache(&fixtures());
    assert_eq!(c.verify(&pw("bc", "bcrypt-pw")), Some(true));
    assert_eq!(c.verify(&pw("bc", "bcrypt-px")), Some(false));
    assert!(matches!(&c.candidates(&pw("bc", "")).unwrap().hashes[..], [StoredHash::Bcrypt(_)]));
}

#[test]
fn sha512_crypt_hash_is_kept_and_verified() {
    let c = cache(&fixtures());
    assert_eq!(c.verify(&pw("sha", "Hello world!")), Some(true));
    assert_eq!(c.verify(&pw("sha", "Hello world")), Some(false));
}

#[test]
fn alias_resolves_to_the_canonical_name() {
    let c = cache(&fixtures());
    assert_eq!(c.resolve("app", "alt-1"), Some("aliased"));
    assert_eq!(c.verify(&pw("CN=aliased,O=Org", "alias-secret-333")), Some(true));
    assert_eq!(c.candidates(&pw("alt-1", "")).unwrap().name, "aliased");
    assert_eq!(c.resolve("other-app", "alt-1"), None, "aliases are per application");
}

#[test]
fn user_credential_matches_username_and_password() {
    let c = cache(&fixtures());
    assert_eq!(c.verify(&user("withuser", "bob", "user-secret-444")), Some(true));
    assert_eq!(c.verify(&user("withuser", "bobby", "user-secret-444")), Some(false));
    assert_eq!(c.verify(&user("withuser", "bob", "wrong")), Some(false));
    // a non-unique username is no alias
    assert_eq!(c.verify(&pw("bob", "user-secret-444")), None);
    // `pass` does not match a non-unique user whose username is not the device name
    assert_eq!(c.verify(&pw("withuser", "user-secret-444")), Some(false));
    // ... but does when the username is the device name
    assert_eq!(c.verify(&pw("selfuser", "self-secret-666")), Some(true));
}

#[test]
fn unique_username_identifies_the_device() {
    let c = cache(&fixtures());
    assert_eq!(c.resolve("app", "ursula"), Some("uniq"));
    assert_eq!(c.verify(&user("uniq", "ursula", "unique-secret-555")), Some(true));
    assert_eq!(c.candidates(&pw("ursula", "")).unwrap().name, "uniq");
}

#[test]
fn pass_matches_a_unique_user_only_when_presented_by_its_username() {
    let c = cache(&fixtures());
    assert_eq!(c.verify(&pw("ursula", "unique-secret-555")), Some(true));
    assert_eq!(c.verify(&pw("uniq", "unique-secret-555")), Some(false), "by device name: no");
}

#[test]
fn user_credential_matches_pass_when_username_is_the_device_name() {
    let c = cache(&fixtures());
    assert_eq!(c.verify(&user("plain", "plain", "plain-secret-111")), Some(true));
    assert_eq!(c.verify(&user("plain", "other", "plain-secret-111")), Some(false));
}

#[test]
fn wrong_password_and_unknown_device() {
    let c = cache(&fixtures());
    assert_eq!(c.verify(&pw("plain", "plain-secret-112")), Some(false));
    assert_eq!(c.verify(&pw("nobody", "plain-secret-111")), None);
    assert_eq!(c.verify(&pw("psk", "")), Some(false), "psk is not a password");
}

#[test]
fn device_being_deleted_is_left_out() {
    let mut d = dev("gone", creds(json!([{"pass":"p"}])));
    d.metadata.deletion_timestamp = Some("2024-01-01T00:00:00Z".into());
    assert_eq!(cache(&[d]).verify(&pw("gone", "p")), None);
}

#[test]
fn alias_never_shadows_another_devices_name() {
    let c = cache(&[
        dev("a", json!({"alias":["b"],"authentication":{"credentials":[{"pass":"pa"}]}})),
        dev("b", creds(json!([{"pass":"pb"}]))),
    ]);
    assert_eq!(c.resolve("app", "b"), Some("b"));
}

#[test]
fn snapshot_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.snap");
    cache(&fixtures()).save(&path).unwrap();
    let loaded = CredentialCache::load(&path).unwrap().unwrap();
    assert_eq!(loaded.len(), fixtures().len());
    assert_eq!(loaded.verify(&pw("plain", "plain-secret-111")), Some(true));
    assert_eq!(loaded.verify(&pw("alt-1", "alias-secret-333")), Some(true));
    assert_eq!(loaded.verify(&pw("ursula", "unique-secret-555")), Some(true));
    assert_eq!(loaded.verify(&pw("bc", "bcrypt-pw")), Some(true));
    assert_eq!(loaded.verify(&pw("sha", "Hello world!")), Some(true));
    assert_eq!(loaded.verify(&pw("plain", "wrong")), Some(false));
}

#[test]
fn snapshot_holds_no_plain_password_and_is_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.snap");
    cache(&fixtures()).save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    for plain in [
        "plain-secret-111",
        "tagged-secret-222",
        "alias-secret-333",
        "user-secret-444",
        "unique-secret-555",
        "self-secret-666",
    ] {
        assert!(!bytes.windows(plain.len()).any(|w| w == plain.as_bytes()), "{plain} is on disk");
    }
    assert!(bytes.windows(9).any(|w| w == b"$argon2id"), "the hashes are there");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
}

#[test]
fn missing_snapshot_is_none_and_damaged_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.snap");
    assert!(CredentialCache::load(&path).unwrap().is_none());
    cache(&fixtures()).save(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert!(matches!(CredentialCache::load(&path), Err(AuthError::Snapshot(_))), "truncated");
    let mut flipped = good.clone();
    flipped[good.len() - 10] ^= 0x20;
    std::fs::write(&path, &flipped).unwrap();
    assert!(matches!(CredentialCache::load(&path), Err(AuthError::Snapshot(_))), "flipped");
    // intact frame, but not the expected JSON
    gw_store::snapshot::write(&path, KIND, VERSION, b"{\"nope\":1}").unwrap();
    assert!(matches!(CredentialCache::load(&path), Err(AuthError::Decode { .. })));
}

#[test]
fn rebuild_reuses_unchanged_devices_and_renews_changed_ones() {
    let before = cache(&fixtures());
    let mut next = fixtures();
    next[0] = dev("plain", creds(json!([{"pass":"changed"}])));
    let after = CredentialCache::rebuild(&next, &params(), Some(&before)).unwrap();
    assert_ne!(after.generation("app", "plain"), before.generation("app", "plain"));
    assert_eq!(after.generation("app", "tagged"), before.generation("app", "tagged"));
    assert_eq!(after.verify(&pw("plain", "changed")), Some(true));
    assert_eq!(after.verify(&pw("plain", "plain-secret-111")), Some(false));
}

/// A device as the registry lists it: with its `uid` and `resourceVersion`.
fn versioned(name: &str, uid: &str, version: &str, password: &str) -> Device {
    serde_json::from_value(json!({
        "metadata": {"application": "app", "name": name, "uid": uid, "resourceVersion": version},
        "spec": creds(json!([{"pass": password}])),
    }))
    .unwrap()
}

/// The stored hash of a device's first credential, as written to the snapshot.
fn stored_hash(c: &CredentialCache, name: &str) -> String {
    let d = &c.devices[&("app".to_owned(), name.to_owned())];
    serde_json::to_string(&d.credentials).unwrap()
}

#[test]
fn after_a_restart_devices_of_an_unchanged_registry_version_are_not_hashed_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.snap");
    let synced = vec![
        versioned("same", "u1", "v1", "same-pw"),
        versioned("edited", "u2", "v1", "old-pw"),
        versioned("recreated", "u3", "v1", "first-pw"),
        dev("unversioned", creds(json!([{"pass": "plain-pw"}]))),
    ];
    let first = cache(&synced);
    first.save(&path).unwrap();
    let loaded = CredentialCache::load(&path).unwrap().unwrap();

    // the next boot's sync: one device edited, one deleted and created again under its name
    let now = vec![
        versioned("same", "u1", "v1", "same-pw"),
        versioned("edited", "u2", "v2", "new-pw"),
        versioned("recreated", "u9", "v1", "second-pw"),
        dev("unversioned", creds(json!([{"pass": "plain-pw"}]))),
    ];
    let after = CredentialCache::rebuild(&now, &params(), Some(&loaded)).unwrap();
    // argon2 salts are random: an equal hash string means it was not hashed again
    assert_eq!(stored_hash(&after, "same"), stored_hash(&first, "same"));
    assert_eq!(after.generation("app", "same"), loaded.generation("app", "same"));
    for renewed in ["edited", "recreated", "unversioned"] {
        assert_ne!(stored_hash(&after, renewed), stored_hash(&first, renewed), "{renewed}");
    }
    assert_eq!(after.verify(&pw("same", "same-pw")), Some(true));
    assert_eq!(after.verify(&pw("edited", "new-pw")), Some(true));
    assert_eq!(after.verify(&pw("edited", "old-pw")), Some(false));
    assert_eq!(after.verify(&pw("recreated", "second-pw")), Some(true));
    assert_eq!(after.verify(&pw("recreated", "first-pw")), Some(false));

    // the sync after that one goes by the in-process fingerprint again
    let again = CredentialCache::rebuild(&now, &params(), Some(&after)).unwrap();
    for name in ["same", "edited", "recreated", "unversioned"] {
        assert_eq!(stored_hash(&again, name), stored_hash(&after, name), "{name}");
    }
}

#[test]
fn a_snapshot_without_registry_versions_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("credentials.snap");
    let body = json!({"devices": [{"app": "app", "name": "old", "aliases": [],
        "credentials": [{"pass": {"bcrypt": bcrypt::hash("pw", 4).unwrap()}}]}]});
    gw_store::snapshot::write(&path, KIND, VERSION, body.to_string().as_bytes()).unwrap();
    let loaded = CredentialCache::load(&path).unwrap().unwrap();
    assert_eq!(loaded.verify(&pw("old", "pw")), Some(true));
}

#[test]
fn a_disabled_device_is_known_but_matches_nothing_and_resolves_to_nobody() {
    let disabled = dev(
        "off",
        json!({"core":{"disabled":true},"alias":["off-alias"],
               "authentication":{"credentials":[{"pass":"pw"}]}}),
    );
    let enabled = dev(
        "on",
        json!({"core":{"disabled":false},"authentication":{"credentials":[{"pass":"pw"}]}}),
    );
    let c = cache(&[disabled.clone(), enabled]);
    assert_eq!(c.verify(&pw("off", "pw")), Some(false), "known, so no later source answers");
    assert_eq!(c.verify(&pw("off-alias", "pw")), Some(false));
    assert_eq!(c.resolve("app", "off"), None, "no commands, no sessions");
    assert!(c.is_disabled("app", "off-alias"));
    assert_eq!(c.verify(&pw("on", "pw")), Some(true));
    assert_eq!(c.resolve("app", "on"), Some("on"));
    // enabling it again is a change: the next build hashes its password
    let mut again = disabled;
    again.spec.other.remove("core");
    let c2 = CredentialCache::rebuild(&[again], &params(), Some(&c)).unwrap();
    assert_eq!(c2.verify(&pw("off", "pw")), Some(true));
    // the snapshot keeps the flag
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.snap");
    c.save(&path).unwrap();
    let loaded = CredentialCache::load(&path).unwrap().unwrap();
    assert!(loaded.is_disabled("app", "off"));
    assert_eq!(loaded.verify(&pw("off", "pw")), Some(false));
}
