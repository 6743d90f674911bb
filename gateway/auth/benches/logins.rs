//! 1,000 simultaneous sensor logins from the credential cache, cold (a fresh chain loaded from
//! the snapshot, as right after a reboot) and warm (the same sensors reconnecting), with the
//! default `[auth]` argon2id parameters. Run: `cargo bench -p gw-auth --bench logins`.
//! `ARGON2_MEMORY_KIB=8192 ARGON2_ITERATIONS=2 cargo bench ...` measures other parameters
//! (the < 5 s / < 1 s targets are asserted for the defaults only).

use std::time::{Duration, Instant};

use gw_auth::{AuthConfig, CredentialChain};
use gw_model::{
    AppId, AuthOutcome, AuthRequest, Authenticate, DeviceId, PresentedCredential, Secret,
    registry::Device,
};
use serde_json::json;

const SENSORS: usize = 1000;

fn device(i: usize) -> Device {
    serde_json::from_value(json!({"metadata":{"application":"app","name":format!("sensor{i}")},
        "spec":{"authentication":{"credentials":[{"pass":format!("secret-{i}")}]}}}))
    .expect("valid device")
}

fn request(i: usize) -> AuthRequest {
    AuthRequest {
        app: AppId::new("app").expect("app"),
        device: DeviceId::new(format!("sensor{i}")).expect("device"),
        credential: PresentedCredential::Password(Secret::new(format!("secret-{i}"))),
    }
}

async fn storm(chain: &CredentialChain) -> Duration {
    let started = Instant::now();
    let tasks: Vec<_> = (0..SENSORS)
        .map(|i| {
            let chain = chain.clone();
            tokio::spawn(async move { chain.authenticate(&request(i), None).await })
        })
        .collect();
    for t in tasks {
        let outcome = t.await.expect("login task");
        assert!(matches!(outcome, AuthOutcome::Pass(_)), "login failed: {outcome:?}");
    }
    started.elapsed()
}

fn main() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
        let defaults = AuthConfig::default();
        let config = AuthConfig {
            argon2_memory_kib: env("ARGON2_MEMORY_KIB").unwrap_or(defaults.argon2_memory_kib),
            argon2_iterations: env("ARGON2_ITERATIONS").unwrap_or(defaults.argon2_iterations),
            ..defaults.clone()
        };
        let params = config.hash_params().expect("params");
        let started = Instant::now();
        for _ in 0..20 {
            params.hash("one password").expect("hash");
        }
        let one = started.elapsed() / 20;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        println!(
            "argon2id m={} KiB t={} p={}: one hash {:.2} ms; {cores} cores",
            config.argon2_memory_kib,
            config.argon2_iterations,
            config.argon2_parallelism,
            one.as_secs_f64() * 1e3
        );

        let dir = tempfile::tempdir().expect("temp dir");
        let syncing = CredentialChain::open(&config, dir.path()).expect("chain");
        let started = Instant::now();
        syncing.replace_devices((0..SENSORS).map(device).collect()).await.expect("sync");
        println!("first sync of {SENSORS} devices (hash + snapshot): {:.2} s", started.elapsed().as_secs_f64());
        drop(syncing);

        let started = Instant::now();
        let chain = CredentialChain::open(&config, dir.path()).expect("chain from snapshot");
        println!("snapshot load: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        let cold = storm(&chain).await;
        println!("{SENSORS} simultaneous logins, cold (fresh chain from the snapshot): {:.3} s (target < 5 s)", cold.as_secs_f64());
        let warm = storm(&chain).await;
        println!("{SENSORS} simultaneous logins, warm (reconnect): {:.3} s (target < 1 s)", warm.as_secs_f64());
        if config == defaults {
            assert!(cold < Duration::from_secs(5), "cold storm over target");
            assert!(warm < Duration::from_secs(1), "warm storm over target");
        }
    });
}
