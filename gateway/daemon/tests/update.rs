//! Updates through gatewayd on the sim board: `gatewayd update install` refuses the golden bad
//! bundles (bad signature, wrong compatible, corrupt image) and installs the good one into slot
//! B; a running gateway on a slot on trial marks it good once healthy for `healthy_after`, and
//! leaves it unmarked while the cloud link is down within `cloud_grace`, so the boot loader
//! falls back at the next reset.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use common::{Running, write};
use gw_board::sim::SimBoard;
use gw_image::{BootState, FileEnv, Slot, SlotSystem};

const BIN: &str = env!("CARGO_BIN_EXE_gatewayd");

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/tests/fixtures")
}

struct Setup {
    dir: tempfile::TempDir,
    sim: SimBoard,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBoard::create(&dir.path().join("board")).unwrap();
        Self { dir, sim }
    }

    fn config(&self, update: &str) -> String {
        let text = format!(
            "[gateway]\nname = \"gw1\"\napplication = \"app\"\ndata_dir = {data:?}\n\n\
             [board]\nprofile = \"sim\"\nroot = {root:?}\n\n\
             [update]\nkeyring = {keys:?}\n{update}\n\
             [web]\nlisten = \"127.0.0.1:0\"\n\n[log]\nformat = \"json\"\n",
            data = self.dir.path().join("data").display().to_string(),
            root = self.sim.root().display().to_string(),
            keys = fixtures().join("keyring").display().to_string(),
        );
        write(self.dir.path(), "gatewayd.toml", &text)
    }

    fn slots(&self) -> SlotSystem {
        SlotSystem::new(
            self.sim.board(),
            Box::new(FileEnv::new(self.sim.root().join("boot/gatewayd.env"))),
        )
    }

    fn env_text(&self) -> String {
        std::fs::read_to_string(self.sim.root().join("boot/gatewayd.env")).unwrap()
    }
}

fn update(config: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(["update", "--config", config]).args(args).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

#[test]
fn update_install_refuses_each_bad_bundle_and_installs_the_good_one() {
    let s = Setup::new();
    let config = s.config("");
    for (bundle, why) in [
        ("bad-signature.bundle", "bad signature"),
        (
            "wrong-compatible.bundle",
            "bundle is for \"gatewayd-rpi4\", this board is \"gatewayd-sim\"",
        ),
        ("corrupt-image.bundle", "does not match the manifest's"),
    ] {
        let (ok, out) = update(&config, &["install", &fixture(bundle)]);
        assert!(!ok, "{bundle}: {out}");
        assert!(out.contains("refusing") && out.contains(why), "{bundle}: {out}");
        assert!(!s.env_text().contains("gw_try"), "{bundle} left a try: {}", s.env_text());
    }
    let (ok, out) = update(&config, &["install", &fixture("good.bundle")]);
    assert!(ok && out.contains("installed 1.1.0 into slot B"), "{out}");
    assert_eq!(
        std::fs::read(s.sim.root().join("dev/sim-slot-b")).unwrap(),
        std::fs::read(fixtures().join("rootfs.img")).unwrap()
    );
    assert_eq!(s.env_text(), "gw_good=A\ngw_try=B\ngw_try_left=1\ngw_version_B=1.1.0\n");
    let (ok, out) = update(&config, &["status"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version_b"], "1.1.0");
    assert!(v["state"].as_str().unwrap().contains("B is installed"), "{v}");
}

#[test]
fn update_needs_a_board() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[gateway]\nname = \"gw1\"\napplication = \"app\"\n[update]\n";
    let config = write(dir.path(), "gatewayd.toml", text);
    let (ok, out) = update(&config, &["status"]);
    assert!(!ok && out.contains("update: needs [board]"), "{out}");
}

/// Installs the good bundle and boots the sim board into B, on trial.
fn boot_into_trial(s: &Setup, config: &str) -> SlotSystem {
    let (ok, out) = update(config, &["install", &fixture("good.bundle")]);
    assert!(ok, "{out}");
    let slots = s.slots();
    assert_eq!(slots.boot_step().unwrap(), Slot::B);
    assert_eq!(slots.state().unwrap(), BootState::Trying { booted: Slot::B, fallback: Slot::A });
    slots
}

fn status(web: &str) -> serde_json::Value {
    let client = common::blocking_client();
    serde_json::from_str(&client.get(format!("http://{web}/api/v1/status")).text()).unwrap()
}

#[test]
fn a_healthy_gateway_marks_its_trial_slot_good() {
    let s = Setup::new();
    // No cloud configured and no grace: healthy as soon as the listeners and store answer.
    let config = s.config("healthy_after = \"2s\"\ncloud_grace = \"0s\"\n");
    let slots = boot_into_trial(&s, &config);
    let started = Instant::now();
    let gw = Running::start(&config, None);
    let web = gw.web_addr();
    let line = gw.wait_for("slot marked good", Duration::from_secs(30));
    assert!(line.contains("\"slot\":\"B\""), "{line}");
    assert!(started.elapsed() >= Duration::from_secs(2), "not before healthy_after");
    assert_eq!(slots.state().unwrap(), BootState::Good { booted: Slot::B });
    assert_eq!(s.env_text(), "gw_good=B\ngw_version_B=1.1.0\n");
    let v = status(&web);
    assert_eq!(v["update"]["booted"], "B");
    assert_eq!(v["update"]["state"], "booted B, marked good");
    assert_eq!(slots.boot_step().unwrap(), Slot::B, "B is booted from now on");
}

#[test]
fn a_gateway_that_is_not_healthy_leaves_the_trial_to_fall_back() {
    let s = Setup::new();
    // The cloud link never comes up (no [cloud]) and the grace is long: never healthy.
    let config = s.config("healthy_after = \"1s\"\ncloud_grace = \"1h\"\n");
    let slots = boot_into_trial(&s, &config);
    let mut gw = Running::start(&config, None);
    let web = gw.web_addr();
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let v = status(&web);
        assert!(v["update"]["state"].as_str().unwrap().contains("on trial"), "{v}");
        std::thread::sleep(Duration::from_millis(500));
    }
    gw.signal("-TERM");
    assert!(gw.wait_exit(Duration::from_secs(20)).success());
    assert_eq!(s.env_text(), "gw_good=A\ngw_try=B\ngw_try_left=0\ngw_version_B=1.1.0\n");
    // The reset: the boot loader falls back to A, whose gateway forgets the failed try.
    assert_eq!(slots.boot_step().unwrap(), Slot::A);
    let config = s.config("healthy_after = \"1s\"\ncloud_grace = \"0s\"\n");
    let gw = Running::start(&config, None);
    let line = gw.wait_for("never became healthy", Duration::from_secs(30));
    assert!(line.contains("\"failed\":\"B\""), "{line}");
    assert_eq!(slots.state().unwrap(), BootState::Good { booted: Slot::A });
}
