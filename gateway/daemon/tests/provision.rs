//! `gatewayd provision` on the files an image has: the installer's provision.toml is imported
//! (secrets into the data directory 0600, config written from the base, the file rewritten
//! without secrets), the gateway then runs under the provisioned name and its technician logs
//! in with the provisioned password; a bad file changes nothing and leaves `provision.error`.

#![allow(clippy::unwrap_used)]

mod common;

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

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
         [web]\nlisten = \"127.0.0.1:0\"\n\n[log]\nformat = \"json\"\n",
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
    let error = std::fs::read_to_string(dir.path().join("data/provision.error")).unwrap();
    assert!(error.contains("cloud.url"), "{error}");
    assert_eq!(std::fs::read_to_string(dir.path().join("data/gatewayd.toml")).unwrap(), config);
    assert_eq!(std::fs::read_to_string(dir.path().join("boot/provision.toml")).unwrap(), bad);
    assert!(!dir.path().join("data/secrets/cloud.secret").exists());
    // Fixed: imported, and the error is gone.
    let good = bad.replace("ftp://cloud", "https://cloud.example.com");
    write(&dir.path().join("boot"), "provision.toml", &good);
    assert!(provision(dir.path()).0);
    assert!(!dir.path().join("data/provision.error").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/secrets/cloud.secret")).unwrap(),
        "new"
    );
}
