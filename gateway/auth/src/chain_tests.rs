//! The chain's order, the remembered verifications, replacement after a sync, rate limiting.

use std::net::IpAddr;

use serde_json::json;

use super::*;

fn config() -> AuthConfig {
    AuthConfig { argon2_memory_kib: 64, ..Default::default() }
}

fn dev(name: &str, spec: serde_json::Value) -> Device {
    serde_json::from_value(json!({"metadata":{"application":"app","name":name},"spec":spec}))
        .unwrap()
}

fn pass(name: &str, password: &str) -> Device {
    dev(name, json!({"authentication":{"credentials":[{"pass":password}]}}))
}

fn req(device: &str, password: &str) -> AuthRequest {
    AuthRequest {
        app: AppId::new("app").unwrap(),
        device: DeviceId::new(device).unwrap(),
        credential: PresentedCredential::Password(Secret::new(password)),
    }
}

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn chain(dir: &Path) -> CredentialChain {
    CredentialChain::open(&config(), dir).unwrap()
}

#[tokio::test]
async fn registry_device_passes_by_alias_as_its_canonical_name() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path());
    let d = dev("s1", json!({"alias":["alt"],"authentication":{"credentials":[{"pass":"pw"}]}}));
    assert_eq!(c.replace_devices(vec![d]).await.unwrap(), 1);
    assert_eq!(c.authenticate(&req("alt", "pw"), None).await, AuthOutcome::Pass(id("s1@app")));
    assert_eq!(c.authenticate(&req("s1", "nope"), None).await, AuthOutcome::Fail);
    assert_eq!(c.authenticate(&req("unknown", "pw"), None).await, AuthOutcome::Fail);
    assert_eq!(c.registry().devices().collect::<Vec<_>>(), [("app", "s1")]);
    assert!(c.static_devices().is_empty());
}

#[tokio::test]
async fn success_is_remembered_without_the_secret_and_forgotten_when_the_password_changes() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path());
    c.replace_devices(vec![pass("s1", "old")]).await.unwrap();
    assert!(matches!(c.authenticate(&req("s1", "old"), None).await, AuthOutcome::Pass(_)));
    assert_eq!(c.verified_entries(), 1);
    // an unchanged sync keeps the memory valid
    c.replace_devices(vec![pass("s1", "old")]).await.unwrap();
    assert!(matches!(c.authenticate(&req("s1", "old"), None).await, AuthOutcome::Pass(_)));
    // a changed password invalidates it
    c.replace_devices(vec![pass("s1", "new")]).await.unwrap();
    assert_eq!(c.authenticate(&req("s1", "old"), None).await, AuthOutcome::Fail);
    assert!(matches!(c.authenticate(&req("s1", "new"), None).await, AuthOutcome::Pass(_)));
}

#[tokio::test]
async fn removed_device_loses_access_after_replace_devices() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path());
    c.replace_devices(vec![pass("s1", "pw"), pass("s2", "pw2")]).await.unwrap();
    assert!(matches!(c.authenticate(&req("s1", "pw"), None).await, AuthOutcome::Pass(_)));
    c.replace_devices(vec![pass("s2", "pw2")]).await.unwrap();
    assert_eq!(
        c.authenticate(&req("s1", "pw"), None).await,
        AuthOutcome::Fail,
        "remembered success no longer counts"
    );
    // ... and a restart from the snapshot agrees
    let c = chain(dir.path());
    assert_eq!(c.authenticate(&req("s1", "pw"), None).await, AuthOutcome::Fail);
    assert!(matches!(c.authenticate(&req("s2", "pw2"), None).await, AuthOutcome::Pass(_)));
}

#[tokio::test]
async fn cold_start_authenticates_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    chain(dir.path()).replace_devices(vec![pass("s1", "pw")]).await.unwrap();
    let c = chain(dir.path());
    assert_eq!(c.registry().len(), 1);
    assert_eq!(c.authenticate(&req("s1", "pw"), None).await, AuthOutcome::Pass(id("s1@app")));
}

#[tokio::test]
async fn static_devices_pass_and_are_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path())
        .with_static_devices(&[StaticDevice {
            app: AppId::new("app").unwrap(),
            name: DeviceId::new("static1").unwrap(),
            password: Secret::new("static-secret-777"),
        }])
        .unwrap();
    assert_eq!(
        c.authenticate(&req("static1", "static-secret-777"), None).await,
        AuthOutcome::Pass(id("static1@app"))
    );
    assert_eq!(c.authenticate(&req("static1", "x"), None).await, AuthOutcome::Fail);
    c.replace_devices(vec![pass("s1", "pw")]).await.unwrap();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"static"), "static device written to disk");
    }
}

#[tokio::test]
async fn registry_comes_before_local_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path());
    c.replace_devices(vec![pass("s1", "registry-pw")]).await.unwrap();
    c.accounts().add(&id("s1@app"), &Secret::new("local-pw")).unwrap();
    c.accounts().add(&id("tech@app"), &Secret::new("tech-pw")).unwrap();
    assert_eq!(
        c.authenticate(&req("s1", "local-pw"), None).await,
        AuthOutcome::Fail,
        "the registry decides for its devices"
    );
    assert_eq!(
        c.authenticate(&req("tech", "tech-pw"), None).await,
        AuthOutcome::Pass(id("tech@app"))
    );
    assert_eq!(c.authenticate(&req("tech", "wrong"), None).await, AuthOutcome::Fail);
}

#[tokio::test]
async fn failures_are_rate_limited_per_identifier_and_source_and_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path());
    c.replace_devices(vec![pass("s1", "pw"), pass("s2", "pw")]).await.unwrap();
    let attacker: IpAddr = "192.0.2.7".parse().unwrap();
    let owner: IpAddr = "192.0.2.8".parse().unwrap();
    for _ in 0..5 {
        assert_eq!(c.authenticate(&req("s1", "bad"), Some(attacker)).await, AuthOutcome::Fail);
    }
    assert_eq!(
        c.authenticate(&req("s1", "pw"), Some(attacker)).await,
        AuthOutcome::RateLimited,
        "from that address even a right password that never passed is refused"
    );
    assert_eq!(
        c.authenticate(&req("s1", "pw"), Some(owner)).await,
        AuthOutcome::Pass(id("s1@app")),
        "another address is not locked out by 5 failures"
    );
    assert_eq!(
        c.authenticate(&req("s1", "pw"), Some(attacker)).await,
        AuthOutcome::Pass(id("s1@app")),
        "a credential that passed is let through to the check"
    );
    assert_eq!(
        c.authenticate(&req("s1", "bad"), Some(attacker)).await,
        AuthOutcome::Fail,
        "the success cleared the identifier's count from that address"
    );
    let scanner: IpAddr = "192.0.2.9".parse().unwrap();
    for i in 0..20 {
        let _ = c.authenticate(&req(&format!("nobody{i}"), "x"), Some(scanner)).await;
    }
    assert_eq!(
        c.authenticate(&req("s2", "pw"), Some(scanner)).await,
        AuthOutcome::RateLimited,
        "20 failures lock the address"
    );
    assert!(matches!(c.authenticate(&req("s2", "pw"), Some(owner)).await, AuthOutcome::Pass(_)));
}

#[tokio::test]
async fn the_owner_of_a_verified_credential_passes_during_a_lockout_attack_from_ten_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path());
    c.replace_devices(vec![pass("s1", "pw")]).await.unwrap();
    let home: IpAddr = "198.51.100.1".parse().unwrap();
    assert!(matches!(c.authenticate(&req("s1", "pw"), Some(home)).await, AuthOutcome::Pass(_)));
    for a in 0..10 {
        let from: IpAddr = format!("203.0.113.{a}").parse().unwrap();
        for _ in 0..6 {
            let _ = c.authenticate(&req("s1", "guess"), Some(from)).await;
        }
    }
    let elsewhere: IpAddr = "198.51.100.2".parse().unwrap();
    assert_eq!(
        c.authenticate(&req("s1", "guess"), Some(elsewhere)).await,
        AuthOutcome::RateLimited,
        "the identifier is locked for guesses from anywhere"
    );
    assert_eq!(c.authenticate(&req("s1", "pw"), Some(home)).await, AuthOutcome::Pass(id("s1@app")));
    assert_eq!(
        c.authenticate(&req("s1", "pw"), Some(elsewhere)).await,
        AuthOutcome::Pass(id("s1@app")),
        "the owner's credential passes from a new address too"
    );
}

#[tokio::test]
async fn a_disabled_device_neither_logs_in_nor_falls_through_nor_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path());
    let off = dev(
        "off",
        json!({"core":{"disabled":true},"authentication":{"credentials":[{"pass":"pw"}]}}),
    );
    c.replace_devices(vec![off]).await.unwrap();
    c.accounts().add(&id("off@app"), &Secret::new("local")).unwrap();
    assert_eq!(c.authenticate(&req("off", "pw"), None).await, AuthOutcome::Fail);
    assert_eq!(c.authenticate(&req("off", "local"), None).await, AuthOutcome::Fail);
    assert_eq!(c.resolve(&AppId::new("app").unwrap(), "off"), None, "no commands for it");
}

#[tokio::test]
async fn people_log_in_with_local_accounts_only_never_as_a_registry_device() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path());
    c.replace_devices(vec![pass("s1", "sensorpw")]).await.unwrap();
    c.accounts().add(&id("tech@app"), &Secret::new("techpw")).unwrap();
    // a sensor's registry credentials open no status page
    assert_eq!(c.authenticate_local(&req("s1", "sensorpw"), None).await, AuthOutcome::Fail);
    assert_eq!(
        c.authenticate_local(&req("tech", "techpw"), None).await,
        AuthOutcome::Pass(id("tech@app"))
    );
    assert_eq!(c.authenticate_local(&req("tech", "wrong"), None).await, AuthOutcome::Fail);
    // failures count against the same limiter as sensor logins
    let peer: IpAddr = "192.0.2.9".parse().unwrap();
    let mut limited = false;
    for _ in 0..20 {
        if c.authenticate_local(&req("tech", "wrong"), Some(peer)).await == AuthOutcome::RateLimited
        {
            limited = true;
            break;
        }
    }
    assert!(limited, "20 bad passwords in a row must be rate-limited");
}

#[tokio::test]
async fn known_devices_come_from_registry_statics_and_accounts() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path())
        .with_static_devices(&[StaticDevice {
            app: AppId::new("app").unwrap(),
            name: DeviceId::new("static1").unwrap(),
            password: Secret::new("pw"),
        }])
        .unwrap();
    let d = dev("s1", json!({"alias":["alt"],"authentication":{"credentials":[{"pass":"pw"}]}}));
    c.replace_devices(vec![d]).await.unwrap();
    c.accounts().add(&id("local1@app"), &Secret::new("pw")).unwrap();
    let app = AppId::new("app").unwrap();
    assert_eq!(c.resolve(&app, "alt"), Some(id("s1@app")), "an alias gives the canonical name");
    assert_eq!(c.resolve(&app, "s1"), Some(id("s1@app")));
    assert_eq!(c.resolve(&app, "static1"), Some(id("static1@app")));
    assert_eq!(c.resolve(&app, "local1"), Some(id("local1@app")));
    assert_eq!(c.resolve(&app, "stranger"), None);
    assert_eq!(c.resolve(&AppId::new("other").unwrap(), "s1"), None);
    // a device the registry drops is no longer known
    c.replace_devices(vec![]).await.unwrap();
    assert_eq!(c.resolve(&app, "s1"), None);
}

#[tokio::test]
async fn certificates_log_in_only_as_known_devices() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path());
    let d = dev(
        "s1",
        json!({"alias":["CN=s1, O=Acme"],"authentication":{"credentials":[{"pass":"pw"}]}}),
    );
    c.replace_devices(vec![d, pass("s2", "pw")]).await.unwrap();
    let app = AppId::new("app").unwrap();
    let cert =
        |subject: &str, cn: Option<&str>| AuthRequest::from_certificate(subject, cn, &app).unwrap();
    // Drogue's form: the subject DN string is a name or an alias
    assert_eq!(
        c.authenticate(&cert("CN=s1, O=Acme", Some("s1")), None).await,
        AuthOutcome::Pass(id("s1@app"))
    );
    // the common name alone
    assert_eq!(
        c.authenticate(&cert("CN=s2, O=Other", Some("s2")), None).await,
        AuthOutcome::Pass(id("s2@app"))
    );
    // a verified certificate of a device the gateway does not know is refused
    assert_eq!(c.authenticate(&cert("CN=s9, O=Acme", Some("s9")), None).await, AuthOutcome::Fail);
    // and the device loses access when the registry drops it
    c.replace_devices(vec![pass("s1", "pw")]).await.unwrap();
    assert_eq!(c.authenticate(&cert("CN=s2, O=Other", Some("s2")), None).await, AuthOutcome::Fail);
}

#[tokio::test]
async fn an_empty_password_never_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    let c = chain(dir.path());
    c.replace_devices(vec![pass("empty", "")]).await.unwrap();
    assert_eq!(c.authenticate(&req("empty", ""), None).await, AuthOutcome::Fail);
    assert_eq!(c.authenticate(&req("nobody", ""), None).await, AuthOutcome::Fail);
}
