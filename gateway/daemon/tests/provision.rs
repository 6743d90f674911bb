//! `gatewayd provision` on the files an image has: the installer's provision.toml is imported
//! (secrets into the data directory 0600, config written from the base, the file rewritten
//! without secrets), the gateway then runs under the provisioned name and its technician logs
//! in with the provisioned password; a bad file changes nothing and leaves `provision.error`,
//! which the next `gatewayd run` shows on the status page, in `/api/v1/status` and `/metrics`,
//! and as the error pattern of the status LED, until a good file is imported.

#![allow(clippy::unwrap_used)]

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use common::{Running, write};

const BIN: &str = env!("CARGO_BIN_EXE_gatewayd");

fn provision(dir: &Path) -> (bool, String) {
    let d = |p: &str| dir.join(p).display().to_string();
    let out = Command::new(BIN)
        .args(["provision", "--file", &d("boot/provision.toml"), "--base", &d("base.toml")])
        .args(["--config", &d("data/gatewayd.toml"), "--secrets", &d("data/secrets")])
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

const PROVISION: &str = "[gateway]\nname = \"gw-0042\"\napplication = \"site-7\"\n\n\
                         [technician]\npassword = \"installer-pw-1\"\n";

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("boot")).unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    let base = format!(
        "[gateway]\napplication = \"unprovisioned\"\ndata_dir = {:?}\n\n\
         [web]\nlisten = \"127.0.0.1:0\"\napi_token = \"test-api-token-0123\"\n\n[log]\nformat = \"json\"\n",
        dir.path().join("data/state").display().to_string()
    );
    write(dir.path(), "base.toml", &base);
    dir
}

#[test]
fn a_provisioned_gateway_runs_under_its_name_with_its_technician_password() {
    let dir = setup();
    write(&dir.path().join("boot"), "provision.toml", PROVISION);
    let (ok, out) = provision(dir.path());
    assert!(ok && out.contains("provisioned gateway gw-0042"), "{out}");
    let secret = dir.path().join("data/secrets/admin.password");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "installer-pw-1");
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    let fat = std::fs::read_to_string(dir.path().join("boot/provision.toml")).unwrap();
    assert!(!fat.contains("installer-pw-1") && fat.contains("moved to the gateway"), "{fat}");
    let (ok, out) = provision(dir.path());
    assert!(ok && out.contains("already imported"), "{out}");

    let config = dir.path().join("data/gatewayd.toml").display().to_string();
    let gw = Running::start(&config, None);
    let web = gw.web_addr();
    let client = common::blocking_client();
    let status: serde_json::Value =
        serde_json::from_str(&client.get(format!("http://{web}/api/v1/status")).text()).unwrap();
    assert_eq!(status["gateway"]["name"], "gw-0042");
    assert_eq!(status["gateway"]["application"], "site-7");
    let jar = dir.path().join("jar");
    assert_eq!(common::status_page_login(&web, &jar, "admin", "installer-pw-1"), 303);
}

#[test]
fn a_bad_provision_file_changes_nothing_and_says_why() {
    let dir = setup();
    write(&dir.path().join("boot"), "provision.toml", PROVISION);
    assert!(provision(dir.path()).0);
    let config = std::fs::read_to_string(dir.path().join("data/gatewayd.toml")).unwrap();
    let bad = "[gateway]\nname = \"gw-0042\"\napplication = \"site-7\"\n\n\
               [cloud]\nurl = \"ftp://cloud\"\npassword = \"new\"\n";
    write(&dir.path().join("boot"), "provision.toml", bad);
    let (ok, out) = provision(dir.path());
    assert!(!ok && out.contains("cloud.url"), "{out}");
    let error = std::fs::read_to_string(dir.path().join("data/state/provision.error")).unwrap();
    assert!(error.contains("cloud.url"), "{error}");
    assert_eq!(std::fs::read_to_string(dir.path().join("data/gatewayd.toml")).unwrap(), config);
    assert_eq!(std::fs::read_to_string(dir.path().join("boot/provision.toml")).unwrap(), bad);
    assert!(!dir.path().join("data/secrets/cloud.secret").exists());
    // Fixed: imported, and the error is gone.
    let good = bad.replace("ftp://cloud", "https://cloud.example.com");
    write(&dir.path().join("boot"), "provision.toml", &good);
    assert!(provision(dir.path()).0);
    assert!(!dir.path().join("data/state/provision.error").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/secrets/cloud.secret")).unwrap(),
        "new"
    );
}

/// A page of the status page, fetched with curl and the session in `jar`.
fn page(web: &str, jar: &Path, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-b"])
        .arg(jar)
        .arg(format!("http://{web}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_led(sim: &gw_board::sim::SimBoard, want: Option<(u32, u32)>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.led("status").2 != want {
        assert!(Instant::now() < deadline, "status LED {:?}, expected {want:?}", sim.led("status"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`setup`] with the sim board in the base config.
fn setup_with_board() -> (tempfile::TempDir, gw_board::sim::SimBoard) {
    let dir = setup();
    let sim = gw_board::sim::SimBoard::create(&dir.path().join("board")).unwrap();
    let base = std::fs::read_to_string(dir.path().join("base.toml")).unwrap();
    let board =
        format!("\n[board]\nprofile = \"sim\"\nroot = {:?}\n", sim.root().display().to_string());
    write(dir.path(), "base.toml", &(base + &board));
    (dir, sim)
}

fn status(web: &str) -> serde_json::Value {
    let client = common::blocking_client();
    serde_json::from_str(&client.get(format!("http://{web}/api/v1/status")).text()).unwrap()
}

#[test]
fn a_refused_provision_file_at_the_first_boot_shows_on_the_gateway_running_its_base_config() {
    let (dir, sim) = setup_with_board();
    write(&dir.path().join("boot"), "provision.toml", &PROVISION.replace("[technician]", "[x]"));
    let (ok, out) = provision(dir.path());
    assert!(!ok && out.contains("unknown field `x`"), "{out}");
    assert!(!dir.path().join("data/gatewayd.toml").exists(), "nothing written");
    // No config was written, so the system runs the image's base config (as the image's init
    // does); the note is in the data directory both configs share.
    let gw = Running::start(&dir.path().join("base.toml").display().to_string(), None);
    let line = gw.wait_for("provision.toml was refused", Duration::from_secs(10));
    assert!(line.contains("unknown field"), "{line}");
    let web = gw.web_addr();
    let password = gw.wait_for("status page login", Duration::from_secs(10));
    let password = password.split("password \"").nth(1).unwrap().split('"').next().unwrap();
    let v = status(&web);
    assert!(v["provisioning"]["error"].as_str().unwrap().contains("unknown field `x`"), "{v}");
    let jar = dir.path().join("jar");
    assert_eq!(common::status_page_login(&web, &jar, "admin", password), 303);
    let overview = page(&web, &jar, "/");
    assert!(overview.contains("id=\"provision-error\"") && overview.contains("unknown field"));
    wait_led(&sim, Some((100, 900)));
}

#[test]
fn a_refused_provision_file_shows_on_the_status_page_and_the_status_led_until_fixed() {
    let (dir, sim) = setup_with_board();
    write(&dir.path().join("boot"), "provision.toml", PROVISION);
    assert!(provision(dir.path()).0);
    let bad = PROVISION.replace("gw-0042", "gw 42");
    write(&dir.path().join("boot"), "provision.toml", &bad);
    let (ok, out) = provision(dir.path());
    assert!(!ok && out.contains("gateway.name"), "{out}");

    let config = dir.path().join("data/gatewayd.toml").display().to_string();
    let client = common::blocking_client();
    let jar = dir.path().join("jar");
    {
        let gw = Running::start(&config, None);
        let line = gw.wait_for("provision.toml was refused", Duration::from_secs(10));
        assert!(line.contains("gateway.name"), "{line}");
        let web = gw.web_addr();
        let v = status(&web);
        let error = v["provisioning"]["error"].as_str().unwrap_or_else(|| panic!("{v}"));
        assert!(error.contains("provision.toml: gateway.name: 1 to 63 letters"), "{error}");
        assert_eq!(v["gateway"]["name"], "gw-0042", "the previous settings run");
        assert_eq!(common::status_page_login(&web, &jar, "admin", "installer-pw-1"), 303);
        let overview = page(&web, &jar, "/");
        assert!(overview.contains("id=\"provision-error\""), "{overview}");
        assert!(overview.contains("provision.toml: gateway.name: 1 to 63 letters"), "{overview}");
        let metrics = client.get(format!("http://{web}/metrics")).text();
        assert!(metrics.contains("\ngatewayd_provision_error 1\n"), "{metrics}");
        wait_led(&sim, Some((100, 900)));
        assert_eq!(status(&web)["board"]["leds"], "error");
    }

    // Fixed and imported: no banner, no error, the LED follows the cloud link (none: slow blink).
    write(&dir.path().join("boot"), "provision.toml", PROVISION);
    assert!(provision(dir.path()).0);
    let gw = Running::start(&config, None);
    let web = gw.web_addr();
    let v = status(&web);
    assert!(v["provisioning"]["error"].is_null(), "{v}");
    assert_eq!(common::status_page_login(&web, &jar, "admin", "installer-pw-1"), 303);
    let overview = page(&web, &jar, "/");
    assert!(
        overview.contains("id=\"gw-name\"") && !overview.contains("provision-error"),
        "{overview}"
    );
    let metrics = client.get(format!("http://{web}/metrics")).text();
    assert!(metrics.contains("\ngatewayd_provision_error 0\n"), "{metrics}");
    wait_led(&sim, Some((1000, 1000)));
}
