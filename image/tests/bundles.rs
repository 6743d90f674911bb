#![allow(clippy::unwrap_used)]
//! The golden bundles of `tests/fixtures` against the sim board: each bad one is refused with
//! its own error and changes nothing; the good one lands in slot B and the boot loader
//! environment tries B once. Then the A/B life cycle: rollback of a slot that never becomes
//! healthy, mark-good of one that does; the GRUB and U-Boot backends through fake tools on
//! PATH; and the `gateway-image` command.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use gw_board::sim::SimBoard;
use gw_image::{
    BootEnv, BootState, Bundle, FileEnv, GrubEnv, HealthGate, ImageError, InstallOptions, Keyring,
    SecretKey, Slot, SlotSystem, UbootEnv,
    bootenv::ToolPath,
    bundle::{self, BundleSpec},
    slots::MarkGood,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn keyring() -> Keyring {
    Keyring::load(&fixtures().join("keyring")).unwrap()
}

struct Sim {
    _dir: tempfile::TempDir,
    sim: SimBoard,
}

impl Sim {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimBoard::create(dir.path()).unwrap();
        std::fs::write(sim.root().join("dev/sim-slot-a"), b"the running system").unwrap();
        Self { _dir: dir, sim }
    }

    fn env_file(&self) -> PathBuf {
        self.sim.root().join("boot/gatewayd.env")
    }

    fn file_env(&self) -> Box<dyn BootEnv> {
        Box::new(FileEnv::new(self.env_file()))
    }

    fn slots(&self) -> SlotSystem {
        SlotSystem::new(self.sim.board(), self.file_env())
    }

    fn slot_b(&self) -> Vec<u8> {
        std::fs::read(self.sim.root().join("dev/sim-slot-b")).unwrap()
    }

    fn env_text(&self) -> String {
        std::fs::read_to_string(self.env_file()).unwrap()
    }
}

fn install(slots: &SlotSystem, name: &str) -> Result<gw_image::Installed, ImageError> {
    let bundle = Bundle::open(&fixtures().join(name), &keyring())?;
    slots.install(&bundle, &InstallOptions::default())
}

#[test]
fn good_bundle_installs_into_the_inactive_slot_and_is_tried_once() {
    let sim = Sim::new();
    let slots = sim.slots();
    let done = install(&slots, "good.bundle").unwrap();
    assert_eq!(done.slot, Slot::B);
    assert_eq!(done.version, semver::Version::new(1, 1, 0));
    assert_eq!(sim.slot_b(), std::fs::read(fixtures().join("rootfs.img")).unwrap());
    assert_eq!(
        sim.env_text(),
        "gw_good=A\ngw_try=B\ngw_try_left=1\ngw_version_B=1.1.0\n",
        "the environment tries B once"
    );
    assert_eq!(slots.state().unwrap(), BootState::Pending { booted: Slot::A, next: Slot::B });
    assert_eq!(
        std::fs::read(sim.sim.root().join("dev/sim-slot-a")).unwrap(),
        b"the running system",
        "the booted slot is never written"
    );
}

#[test]
fn bad_signature_is_refused_before_anything_is_written() {
    let sim = Sim::new();
    let e = install(&sim.slots(), "bad-signature.bundle").unwrap_err();
    assert!(matches!(e, ImageError::BadSignature { .. }), "{e}");
    assert!(e.to_string().contains("bad signature"), "{e}");
    assert!(sim.slot_b().is_empty());
    assert_eq!(sim.env_text(), "");
}

#[test]
fn wrong_compatible_is_refused_naming_both() {
    let sim = Sim::new();
    let e = install(&sim.slots(), "wrong-compatible.bundle").unwrap_err();
    assert!(matches!(e, ImageError::Incompatible { .. }), "{e}");
    assert_eq!(e.to_string(), "bundle is for \"gatewayd-rpi4\", this board is \"gatewayd-sim\"");
    assert!(sim.slot_b().is_empty());
    assert_eq!(sim.env_text(), "");
}

#[test]
fn corrupt_image_is_refused_and_the_slot_is_not_tried() {
    let sim = Sim::new();
    let slots = sim.slots();
    // A pending try of an earlier install must not survive a failed one.
    install(&slots, "good.bundle").unwrap();
    let e = install(&slots, "corrupt-image.bundle").unwrap_err();
    let ImageError::HashMismatch { name, expected, actual } = &e else { panic!("{e}") };
    assert_eq!(name, "rootfs.img");
    assert_ne!(expected, actual);
    assert_eq!(sim.env_text(), "gw_good=A\n", "nothing points at the half-written slot");
    assert_eq!(slots.state().unwrap(), BootState::Good { booted: Slot::A });
    assert_eq!(slots.boot_step().unwrap(), Slot::A);
    // `gateway-image verify` finds the same without installing.
    let b = Bundle::open(&fixtures().join("corrupt-image.bundle"), &keyring()).unwrap();
    assert!(matches!(b.check_images(), Err(ImageError::HashMismatch { .. })));
    let good = Bundle::open(&fixtures().join("good.bundle"), &keyring()).unwrap();
    good.check_images().unwrap();
}

#[test]
fn untrusted_signer_and_a_truncated_file_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = SecretKey::generate();
    let resigned = dir.path().join("other.bundle");
    bundle::resign(&fixtures().join("good.bundle"), &other, &resigned).unwrap();
    let e = Bundle::open(&resigned, &keyring()).unwrap_err();
    assert!(matches!(e, ImageError::UntrustedSigner { .. }), "{e}");
    assert!(e.to_string().contains(&other.public().id()), "{e}");

    let good = std::fs::read(fixtures().join("good.bundle")).unwrap();
    let short = dir.path().join("short.bundle");
    std::fs::write(&short, &good[..good.len() - 1]).unwrap();
    let e = Bundle::open(&short, &keyring()).unwrap_err();
    assert!(e.to_string().contains("but the manifest's images make"), "{e}");
    std::fs::write(&short, b"PK\x03\x04 not a bundle at all").unwrap();
    let e = Bundle::open(&short, &keyring()).unwrap_err();
    assert!(e.to_string().contains("no GWBUNDLE magic"), "{e}");

    let empty = dir.path().join("keys");
    std::fs::create_dir(&empty).unwrap();
    let e = Keyring::load(&empty).unwrap_err();
    assert!(e.to_string().contains("no public keys"), "{e}");
}

#[test]
fn resigning_with_a_trusted_key_makes_the_bundle_good_again() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::load(&fixtures().join("test.key")).unwrap();
    let out = dir.path().join("fixed.bundle");
    bundle::resign(&fixtures().join("bad-signature.bundle"), &key, &out).unwrap();
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(fixtures().join("good.bundle")).unwrap()
    );
}

fn make_bundle(dir: &Path, version: &str, payload: &[u8]) -> PathBuf {
    let key = SecretKey::load(&fixtures().join("test.key")).unwrap();
    let rootfs = dir.join(format!("rootfs-{version}.img"));
    std::fs::write(&rootfs, payload).unwrap();
    let out = dir.join(format!("{version}.bundle"));
    let spec = BundleSpec {
        compatible: "gatewayd-sim".into(),
        version: version.parse().unwrap(),
        build: None,
        description: Some(format!("release {version}")),
        images: vec![("rootfs".into(), rootfs.as_path())],
    };
    bundle::create(&spec, &key, &out).unwrap();
    out
}

#[test]
fn no_downgrade_unless_forced() {
    let sim = Sim::new();
    let slots = sim.slots();
    FileEnv::new(sim.env_file()).write(&[("gw_good", "A"), ("gw_version_A", "2.0.0")]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let old = Bundle::open(&make_bundle(dir.path(), "1.9.9", b"old system"), &keyring()).unwrap();
    let e = slots.install(&old, &InstallOptions::default()).unwrap_err();
    assert!(matches!(e, ImageError::Downgrade { .. }), "{e}");
    assert!(e.to_string().contains("1.9.9 is older than the installed 2.0.0"), "{e}");
    assert!(sim.slot_b().is_empty());
    let done = slots.install(&old, &InstallOptions { allow_downgrade: true }).unwrap();
    assert_eq!(done.slot, Slot::B);
    assert_eq!(sim.slot_b(), b"old system");
    let same = Bundle::open(&make_bundle(dir.path(), "2.0.0", b"same"), &keyring()).unwrap();
    slots.install(&same, &InstallOptions::default()).unwrap();
}

/// Drives the health gate once a second for `secs` simulated seconds; marks good when it passes.
fn run_for(slots: &SlotSystem, gate: &mut HealthGate, healthy: bool, secs: u64) -> bool {
    let t0 = Instant::now();
    for s in 0..=secs {
        if gate.observe(t0 + Duration::from_secs(s), healthy) {
            assert!(matches!(slots.mark_good().unwrap(), MarkGood::Marked(_)));
            return true;
        }
    }
    false
}

#[test]
fn rollback_a_slot_that_never_becomes_healthy_and_keep_one_that_does() {
    let sim = Sim::new();
    let slots = sim.slots();
    install(&slots, "good.bundle").unwrap();

    // Boot into B once: on trial.
    assert_eq!(slots.boot_step().unwrap(), Slot::B);
    assert_eq!(slots.booted().unwrap(), Slot::B);
    assert_eq!(slots.state().unwrap(), BootState::Trying { booted: Slot::B, fallback: Slot::A });
    // A new install while on trial would overwrite the only good slot: refused.
    let e = install(&slots, "good.bundle").unwrap_err();
    assert!(matches!(e, ImageError::BootedSlotOnTrial(Slot::B)), "{e}");
    // Never healthy for 10 minutes: not marked good, and the environment says fall back.
    let mut gate = HealthGate::new(Duration::from_secs(120));
    assert!(!run_for(&slots, &mut gate, false, 600));
    assert_eq!(sim.env_text(), "gw_good=A\ngw_try=B\ngw_try_left=0\ngw_version_B=1.1.0\n");
    // The reset: the boot loader falls back to A.
    assert_eq!(slots.boot_step().unwrap(), Slot::A);
    assert_eq!(slots.state().unwrap(), BootState::FellBack { booted: Slot::A, failed: Slot::B });
    assert_eq!(slots.boot_step().unwrap(), Slot::A, "and stays there");
    // A's gateway is healthy: the failed try is forgotten, A stays good.
    assert_eq!(
        slots.mark_good().unwrap(),
        MarkGood::ClearedFailedTry { booted: Slot::A, failed: Slot::B }
    );
    assert_eq!(slots.state().unwrap(), BootState::Good { booted: Slot::A });

    // Install again; this time B is healthy for the whole period and is marked good.
    install(&slots, "good.bundle").unwrap();
    assert_eq!(slots.boot_step().unwrap(), Slot::B);
    let mut gate = HealthGate::new(Duration::from_secs(120));
    assert!(!run_for(&slots, &mut gate, true, 119), "not before the period");
    assert!(run_for(&slots, &mut gate.clone(), true, 200));
    assert_eq!(sim.env_text(), "gw_good=B\ngw_version_B=1.1.0\n");
    assert_eq!(slots.state().unwrap(), BootState::Good { booted: Slot::B });
    assert_eq!(slots.boot_step().unwrap(), Slot::B, "B is now booted at every reset");
    // The next install goes into A.
    let dir = tempfile::tempdir().unwrap();
    let next = Bundle::open(&make_bundle(dir.path(), "1.2.0", b"next"), &keyring()).unwrap();
    assert_eq!(slots.install(&next, &InstallOptions::default()).unwrap().slot, Slot::A);
    assert_eq!(std::fs::read(sim.sim.root().join("dev/sim-slot-a")).unwrap(), b"next");
}

#[test]
fn mark_bad_gives_up_a_try_at_once() {
    let sim = Sim::new();
    let slots = sim.slots();
    install(&slots, "good.bundle").unwrap();
    assert_eq!(slots.mark_bad().unwrap(), Slot::A);
    assert_eq!(slots.boot_step().unwrap(), Slot::A);
    assert_eq!(slots.state().unwrap(), BootState::FellBack { booted: Slot::A, failed: Slot::B });
}

fn script(dir: &Path, name: &str, body: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\nset -eu\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn tool_path(fake: &Path) -> ToolPath {
    let system = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![fake.to_owned()];
    paths.extend(std::env::split_paths(&system));
    ToolPath(Some(std::env::join_paths(paths).unwrap()))
}

/// A fake grub-editenv: the block as key=value lines in the named file, every call logged.
fn fake_grub_editenv(dir: &Path) {
    script(
        dir,
        "grub-editenv",
        r#"f="$1"; cmd="$2"; shift 2
echo "$cmd $*" >> "$f.calls"
touch "$f"
case "$cmd" in
  list) cat "$f" ;;
  set) for kv in "$@"; do k="${kv%%=*}"; grep -v "^$k=" "$f" > "$f.new" || true; echo "$kv" >> "$f.new"; mv "$f.new" "$f"; done ;;
  unset) for k in "$@"; do grep -v "^$k=" "$f" > "$f.new" || true; mv "$f.new" "$f"; done ;;
  *) echo "unknown command $cmd" >&2; exit 1 ;;
esac
"#,
    );
}

/// Fake fw_printenv / fw_setenv -s over a key=value file named by $FAKE_UBOOT_ENV's sibling.
fn fake_uboot(dir: &Path, env: &Path) {
    let env = env.display();
    script(dir, "fw_printenv", &format!("touch '{env}'; cat '{env}'\n"));
    script(
        dir,
        "fw_setenv",
        &format!(
            r#"f='{env}'; touch "$f"
[ "$1" = "-s" ] || {{ echo "expected -s SCRIPT" >&2; exit 1; }}
echo "-s" >> "$f.calls"
while read -r k v; do
  grep -v "^$k=" "$f" > "$f.new" || true; mv "$f.new" "$f"
  if [ -n "$v" ]; then echo "$k=$v" >> "$f"; fi
done < "$2"
"#
        ),
    );
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let mut l: Vec<String> =
        std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect();
    l.sort();
    l
}

#[test]
fn grub_backend_through_grub_editenv_on_path() {
    let sim = Sim::new();
    let fake = tempfile::tempdir().unwrap();
    fake_grub_editenv(fake.path());
    let grubenv = sim.sim.root().join("boot/grubenv");
    let env = GrubEnv::new(&grubenv, tool_path(fake.path()));
    let slots = SlotSystem::new(sim.sim.board(), Box::new(env));
    install(&slots, "good.bundle").unwrap();
    assert_eq!(
        sorted_lines(&grubenv),
        ["gw_good=A", "gw_try=B", "gw_try_left=1", "gw_version_B=1.1.0"]
    );
    let calls = std::fs::read_to_string(grubenv.with_extension("calls")).unwrap();
    assert!(calls.contains("set gw_try=B gw_try_left=1 gw_version_B=1.1.0"), "{calls}");
    assert!(calls.contains("unset gw_try gw_try_left gw_version_B"), "{calls}");
    assert_eq!(slots.boot_step().unwrap(), Slot::B);
    assert_eq!(slots.mark_good().unwrap(), MarkGood::Marked(Slot::B));
    assert_eq!(sorted_lines(&grubenv), ["gw_good=B", "gw_version_B=1.1.0"]);
}

#[test]
fn grub_backend_with_the_real_grub_editenv() {
    let Ok(out) = Command::new("grub-editenv").arg("--version").output() else {
        assert!(std::env::var_os("CI").is_none(), "grub-editenv (grub-common) is missing in CI");
        println!("SKIP: grub-editenv not installed (apt-get install grub-common)");
        return;
    };
    assert!(out.status.success());
    let sim = Sim::new();
    let grubenv = sim.sim.root().join("boot/grubenv");
    let st = Command::new("grub-editenv").arg(&grubenv).arg("create").status().unwrap();
    assert!(st.success());
    let slots =
        SlotSystem::new(sim.sim.board(), Box::new(GrubEnv::new(&grubenv, ToolPath::default())));
    install(&slots, "good.bundle").unwrap();
    assert_eq!(std::fs::metadata(&grubenv).unwrap().len(), 1024, "a GRUB block is 1 KiB");
    assert_eq!(slots.state().unwrap(), BootState::Pending { booted: Slot::A, next: Slot::B });
    assert_eq!(slots.boot_step().unwrap(), Slot::B);
    assert_eq!(slots.mark_good().unwrap(), MarkGood::Marked(Slot::B));
    let list = Command::new("grub-editenv").arg(&grubenv).arg("list").output().unwrap();
    assert_eq!(String::from_utf8(list.stdout).unwrap(), "gw_good=B\ngw_version_B=1.1.0\n");
}

#[test]
fn uboot_backend_through_fw_setenv_on_path() {
    let sim = Sim::new();
    let fake = tempfile::tempdir().unwrap();
    let envfile = fake.path().join("uboot.env");
    fake_uboot(fake.path(), &envfile);
    let slots =
        SlotSystem::new(sim.sim.board(), Box::new(UbootEnv::new(None, tool_path(fake.path()))));
    install(&slots, "good.bundle").unwrap();
    assert_eq!(
        sorted_lines(&envfile),
        ["gw_good=A", "gw_try=B", "gw_try_left=1", "gw_version_B=1.1.0"]
    );
    // Each change is one fw_setenv call (one environment write): clear, then try.
    assert_eq!(std::fs::read_to_string(envfile.with_extension("env.calls")).unwrap(), "-s\n-s\n");
    assert_eq!(slots.boot_step().unwrap(), Slot::B);
    let mut gate = HealthGate::new(Duration::from_secs(5));
    assert!(run_for(&slots, &mut gate, true, 10));
    assert_eq!(sorted_lines(&envfile), ["gw_good=B", "gw_version_B=1.1.0"]);
}

#[test]
fn a_failing_tool_is_reported_with_its_message() {
    let sim = Sim::new();
    let fake = tempfile::tempdir().unwrap();
    script(
        fake.path(),
        "fw_printenv",
        "echo 'Cannot read environment, using default' >&2; exit 1\n",
    );
    let slots =
        SlotSystem::new(sim.sim.board(), Box::new(UbootEnv::new(None, tool_path(fake.path()))));
    let e = install(&slots, "good.bundle").unwrap_err();
    assert!(matches!(e, ImageError::ToolFailed { .. }), "{e}");
    assert!(e.to_string().contains("Cannot read environment"), "{e}");
    assert!(sim.slot_b().is_empty());
}

fn gateway_image(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-image")).args(args).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_command_line_keygen_bundle_verify_info_install() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let (ok, out) = gateway_image(&["keygen", "--out", &d("release.key")]);
    assert!(ok, "{out}");
    let mode = std::fs::metadata(d("release.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let (ok, out) = gateway_image(&["keygen", "--out", &d("release.key")]);
    assert!(!ok && out.contains("cannot create"), "never over a key: {out}");
    std::fs::create_dir(d("keys")).unwrap();
    std::fs::rename(d("release.pub"), d("keys/release.pub")).unwrap();
    std::fs::write(d("rootfs.img"), vec![7u8; 300_000]).unwrap();
    let (ok, out) = gateway_image(&[
        "bundle",
        "--rootfs",
        &d("rootfs.img"),
        "--compatible",
        "gatewayd-sim",
        "--version",
        "3.0.0",
        "--key",
        &d("release.key"),
        "--out",
        &d("r.bundle"),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = gateway_image(&["verify", &d("r.bundle"), "--keyring", &d("keys")]);
    assert!(ok && out.contains("good: signed by release"), "{out}");
    let (ok, out) = gateway_image(&["info", &d("r.bundle")]);
    assert!(ok && out.contains("version:     3.0.0") && out.contains("not verified"), "{out}");
    assert!(out.contains("rootfs rootfs.img 300000 bytes"), "{out}");
    // The fixtures' key is not in this keyring.
    let good = fixtures().join("good.bundle").display().to_string();
    let (ok, out) = gateway_image(&["verify", &good, "--keyring", &d("keys")]);
    assert!(!ok && out.contains("not signed by a key of the keyring"), "{out}");
    let (ok, out) =
        gateway_image(&["sign", &good, "--key", &d("release.key"), "--out", &d("g.bundle")]);
    assert!(ok, "{out}");
    let (ok, out) = gateway_image(&["verify", &d("g.bundle"), "--keyring", &d("keys")]);
    assert!(ok, "{out}");
    let bad = fixtures().join("bad-signature.bundle").display().to_string();
    let (ok, out) = gateway_image(&[
        "verify",
        &bad,
        "--keyring",
        &fixtures().join("keyring").display().to_string(),
    ]);
    assert!(!ok && out.contains("bad signature"), "{out}");

    let sim = Sim::new();
    let root = sim.sim.root().display().to_string();
    let board = ["--board", "sim", "--root", &root];
    let install = |b: &str| {
        let mut a = vec!["install", b, "--keyring"];
        let keys = d("keys");
        a.push(&keys);
        a.extend(board);
        gateway_image(&a)
    };
    let (ok, out) = install(&d("r.bundle"));
    assert!(ok && out.contains("installed 3.0.0 into slot B"), "{out}");
    assert_eq!(sim.slot_b().len(), 300_000);
    let mut status = vec!["status"];
    status.extend(board);
    let (ok, out) = gateway_image(&status);
    assert!(ok && out.contains("B is installed and is tried at the next boot"), "{out}");
    assert!(out.contains("version 3.0.0"), "{out}");
    // The booted slot A runs 3.0.0: 1.1.0 is a downgrade, refused unless forced.
    FileEnv::new(sim.env_file()).write(&[("gw_version_A", "3.0.0")]).unwrap();
    let (ok, out) = install(&d("g.bundle"));
    assert!(!ok && out.contains("refusing") && out.contains("older than the installed"), "{out}");
    let keys = d("keys");
    let mut forced = vec!["install", "--force", "--keyring", &keys];
    let g = d("g.bundle");
    forced.push(&g);
    forced.extend(board);
    let (ok, out) = gateway_image(&forced);
    assert!(ok && out.contains("installed 1.1.0 into slot B"), "{out}");
    assert_eq!(sim.slot_b().len(), 20_000);
}
