//! Updates through gatewayd on the sim board: `gatewayd update install` refuses the golden bad
//! bundles (bad signature, wrong compatible, corrupt image) and installs the good one into slot
//! B; a running gateway on a slot on trial marks it good once healthy for `healthy_after`, and
//! leaves it unmarked while the cloud link is down within `cloud_grace`, so the boot loader
//! falls back at the next reset. A technician uploads bundles on the status page with curl
//! (`-F`, as a browser posts the form): login and the CSRF token come first, over-size uploads
//! get 413, each bad bundle its own refusal, the good one lands in slot B; one upload at a time.

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
             [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n[log]\nformat = \"json\"\n",
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

/// curl as a browser posts the upload form: `-F` fields in order, the session's cookie jar.
fn curl(args: &[&str]) -> (u16, String) {
    let out =
        Command::new("curl").args(["-s", "-i", "--max-time", "60"]).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // the last status line: a `100 Continue` may come first
    let code = text
        .lines()
        .filter(|l| l.starts_with("HTTP/"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .next_back()
        .unwrap_or(0);
    (code, text)
}

struct Technician {
    web: String,
    jar: String,
}

impl Technician {
    fn login(dir: &Path, web: &str) -> Self {
        let jar = dir.join("cookies.txt");
        assert_eq!(common::status_page_login(web, &jar, "admin", "technician-pw"), 303);
        Self { web: web.to_owned(), jar: jar.display().to_string() }
    }

    fn page(&self) -> String {
        let (code, page) = curl(&["-b", &self.jar, &format!("http://{}/update", self.web)]);
        assert_eq!(code, 200, "{page}");
        page
    }

    fn csrf(&self) -> String {
        let page = self.page();
        page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
    }

    /// Posts the form with `fields` (curl `-F` syntax), in this order.
    fn upload(&self, fields: &[String]) -> (u16, String) {
        let mut args = vec!["-b".to_owned(), self.jar.clone()];
        for f in fields {
            args.extend(["-F".to_owned(), f.clone()]);
        }
        args.push(format!("http://{}/update", self.web));
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn upload_bundle(&self, csrf: &str, file: &str, force: bool) -> (u16, String) {
        let mut fields = vec![format!("csrf={csrf}")];
        if force {
            fields.push("force=1".into());
        }
        fields.push(format!("bundle=@{file}"));
        self.upload(&fields)
    }
}

fn with_technician(config: &str, dir: &Path) -> String {
    let pw = write(dir, "admin.pw", "technician-pw\n");
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("[web]\n", &format!("[web]\nadmin_password_file = {pw:?}\n"));
    write(dir, "gatewayd.toml", &text)
}

#[test]
fn a_technician_uploads_a_bundle_on_the_status_page_and_bad_ones_are_refused() {
    let s = Setup::new();
    // slot A runs 2.0.0: 1.1.0 is a downgrade
    std::fs::write(s.sim.root().join("boot/gatewayd.env"), "gw_version_A=2.0.0\n").unwrap();
    let config = with_technician(&s.config("max_bundle_bytes = 25000\n"), s.dir.path());
    let gw = Running::start(&config, None);
    let web = gw.web_addr();
    let good = fixture("good.bundle");
    let untouched = |what: &str| {
        assert!(!s.env_text().contains("gw_try"), "{what} left a try: {}", s.env_text());
    };
    let slot_b = || std::fs::read(s.sim.root().join("dev/sim-slot-b")).unwrap();

    // Not logged in: sent to the login form, nothing read.
    let (code, r) = curl(&["-F", &format!("bundle=@{good}"), &format!("http://{web}/update")]);
    assert_eq!(code, 303, "{r}");
    assert!(r.to_ascii_lowercase().contains("location: /login?next=%2fupdate"), "{r}");

    let tech = Technician::login(s.dir.path(), &web);
    let page = tech.page();
    assert!(page.contains("href=\"/update\""), "in the navigation");
    assert!(page.contains("enctype=\"multipart/form-data\""), "{page}");
    assert!(page.contains("name=\"force\""), "the updater can force a downgrade");
    assert!(page.contains("booted A"), "the slots' state: {page}");
    let csrf = tech.csrf();

    // Without the session's token, with a forged one, or with the token after the file: 403.
    for fields in [
        vec![format!("bundle=@{good}")],
        vec!["csrf=forged".into(), format!("bundle=@{good}")],
        vec![format!("bundle=@{good}"), format!("csrf={csrf}")],
    ] {
        let (code, r) = tech.upload(&fields);
        assert_eq!(code, 403, "{fields:?}: {r}");
        untouched("a forged upload");
    }

    // Larger than max_bundle_bytes: 413, whether the request says so up front or not.
    let big = s.dir.path().join("big.bundle");
    for size in [30_000, 200_000] {
        std::fs::write(&big, vec![7u8; size]).unwrap();
        let (code, r) = tech.upload_bundle(&csrf, &big.display().to_string(), false);
        assert_eq!(code, 413, "{size}: {r}");
        assert!(r.contains("larger than this gateway accepts"), "{r}");
    }
    assert!(slot_b().is_empty(), "nothing written so far");

    // Each golden bad bundle: refused with its reason, nothing written.
    for (bundle, code, why, logged) in [
        ("bad-signature.bundle", 422, "bad signature", "bad signature"),
        (
            "wrong-compatible.bundle",
            422,
            "bundle is for &quot;gatewayd-rpi4&quot;, this board is &quot;gatewayd-sim&quot;",
            "bundle is for",
        ),
        ("good.bundle", 409, "older than the installed 2.0.0", "older than the installed"),
        // force allows the downgrade, never a bad image
        ("corrupt-image.bundle", 422, "corrupt image", "does not match"),
    ] {
        let force = bundle == "corrupt-image.bundle";
        let (got, r) = tech.upload_bundle(&csrf, &fixture(bundle), force);
        assert_eq!(got, code, "{bundle}: {r}");
        assert!(r.contains(why), "{bundle}: {r}");
        untouched(bundle);
        let line = gw.wait_for(logged, Duration::from_secs(10));
        assert!(line.contains("admin@technicians") && line.contains("\"done\":false"), "{line}");
    }
    assert!(s.dir.path().join("data/update").read_dir().unwrap().next().is_none(), "cleaned up");

    // The good bundle, with force: installed into B, tried at the next boot.
    let (code, r) = tech.upload_bundle(&csrf, &good, true);
    assert_eq!(code, 200, "{r}");
    assert!(r.contains("Installed version 1.1.0 into slot B. Reboot to try it"), "{r}");
    let line = gw.wait_for("\"done\":true", Duration::from_secs(10));
    assert!(line.contains("admin@technicians") && line.contains("\"slot\":\"B\""), "{line}");
    assert_eq!(slot_b(), std::fs::read(fixtures().join("rootfs.img")).unwrap());
    assert_eq!(
        s.env_text(),
        "gw_good=A\ngw_try=B\ngw_try_left=1\ngw_version_A=2.0.0\ngw_version_B=1.1.0\n"
    );
    assert!(tech.page().contains("installed 1.1.0 into slot B"));
    let v = status(&web);
    assert_eq!(v["update"]["last_install"]["outcome"], "installed", "{v}");
    assert!(s.dir.path().join("data/update").read_dir().unwrap().next().is_none(), "cleaned up");
}

#[test]
fn one_upload_at_a_time_and_a_broken_off_upload_frees_the_updater() {
    let s = Setup::new();
    let config = with_technician(&s.config(""), s.dir.path());
    let gw = Running::start(&config, None);
    let web = gw.web_addr();
    let tech = Technician::login(s.dir.path(), &web);
    let csrf = tech.csrf();
    // A slow upload (1 MiB at 16 KiB/s) holds the updater while it streams.
    let big = s.dir.path().join("big.bundle");
    std::fs::write(&big, vec![7u8; 1 << 20]).unwrap();
    let mut slow = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--limit-rate", "16K"])
        .args(["-b", &tech.jar, "-F", &format!("csrf={csrf}")])
        .args(["-F", &format!("bundle=@{}", big.display())])
        .arg(format!("http://{web}/update"))
        .spawn()
        .unwrap();
    // Once it is being received, another upload is refused as busy.
    let line = gw.wait_for("receiving a bundle", Duration::from_secs(10));
    assert!(line.contains("admin@technicians"), "{line}");
    let (code, r) = tech.upload_bundle(&csrf, &fixture("good.bundle"), false);
    assert_eq!(code, 409, "{r}");
    assert!(r.contains("another update is being installed"), "{r}");
    assert!(!s.env_text().contains("gw_try"), "{}", s.env_text());
    let staged = s.dir.path().join("data/update/incoming.bundle");
    assert!(staged.exists(), "the slow upload streams into the staging file");

    // The slow client goes away: its partial file is removed and the next upload installs.
    slow.kill().unwrap();
    slow.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, r) = tech.upload_bundle(&csrf, &fixture("good.bundle"), false);
        if code == 200 {
            break;
        }
        assert_eq!(code, 409, "{r}");
        assert!(Instant::now() < deadline, "the updater stayed busy");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.env_text().contains("gw_try=B"), "{}", s.env_text());
    assert!(!staged.exists(), "no partial bundle left behind");
}

#[test]
fn without_an_updater_the_page_says_so_and_refuses_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "admin.pw", "technician-pw\n");
    let text = format!(
        "[gateway]\nname = \"gw1\"\napplication = \"app\"\ndata_dir = {:?}\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\nadmin_password_file = {pw:?}\n\n[log]\nformat = \"json\"\n",
        dir.path().join("data").display().to_string()
    );
    let gw = Running::start(&write(dir.path(), "gatewayd.toml", &text), None);
    let tech = Technician::login(dir.path(), &gw.web_addr());
    let page = tech.page();
    assert!(page.contains("Updates are not configured on this gateway"), "{page}");
    assert!(!page.contains("multipart/form-data"), "no upload form: {page}");
    let (code, r) = tech.upload_bundle(&tech.csrf(), &fixture("good.bundle"), false);
    assert_eq!(code, 501, "{r}");
    assert!(r.contains("not configured"), "{r}");
}
