#![allow(clippy::unwrap_used)]
//! `gateway-image disk`: a GPT image with the four partitions, the FAT partition holding
//! provision.toml and the GRUB environment (gw_good=A, slot A's version, 1,024 bytes), slot A
//! holding the root file system; checked with sfdisk, mtools and debugfs, never mounted.

use std::{io::Read, io::Seek, path::Path, process::Command};

const TOOLS: &[&str] = &["sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "debugfs", "grub-editenv"];

fn have_tools() -> bool {
    let missing: Vec<_> = TOOLS
        .iter()
        .filter(|t| {
            !Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {t}"))
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "missing in CI: {missing:?}");
    println!(
        "SKIP: missing {missing:?} (apt-get install fdisk dosfstools mtools e2fsprogs grub-common)"
    );
    false
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn extract(img: &Path, offset: u64, len: u64, to: &Path) {
    let mut f = std::fs::File::open(img).unwrap();
    f.seek(std::io::SeekFrom::Start(offset)).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).unwrap();
    std::fs::write(to, buf).unwrap();
}

#[test]
fn disk_image_has_four_partitions_with_their_content() {
    if !have_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/hostname"), "gateway\n").unwrap();
    let provision = dir.path().join("provision.toml");
    std::fs::write(&provision, "[gateway]\nname = \"gw-test\"\napplication = \"app\"\n").unwrap();
    let img = dir.path().join("gateway.img");
    let out = run(Command::new(env!("CARGO_BIN_EXE_gateway-image"))
        .args([
            "disk",
            "--board",
            "x86-qemu",
            "--version",
            "1.0.0",
            "--provision-mib",
            "33",
            "--slot-mib",
            "8",
            "--data-mib",
            "8",
        ])
        .arg("--rootfs")
        .arg(&root)
        .arg("--provision")
        .arg(&provision)
        .arg("--out")
        .arg(&img));
    assert!(out.contains("GPT image for x86-qemu"), "{out}");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), (1 + 33 + 8 + 8 + 8 + 1) << 20);

    let table: serde_json::Value =
        serde_json::from_str(&run(Command::new("sfdisk").arg("--json").arg(&img))).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let got: Vec<(u64, u64, &str)> = parts
        .iter()
        .map(|p| {
            (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap(), p["name"].as_str().unwrap())
        })
        .collect();
    assert_eq!(
        got,
        [
            (2048, 33 * 2048, "provision"),
            (34 * 2048, 8 * 2048, "rootfs-a"),
            (42 * 2048, 8 * 2048, "rootfs-b"),
            (50 * 2048, 8 * 2048, "data")
        ]
    );
    assert_eq!(table["partitiontable"]["label"], "gpt");

    let fat = format!("{}@@1M", img.display());
    let text = run(Command::new("mtype").args(["-i", &fat, "::/provision.toml"]));
    assert_eq!(text, "[gateway]\nname = \"gw-test\"\napplication = \"app\"\n");
    let env = dir.path().join("grubenv");
    run(Command::new("mcopy").args(["-i", &fat, "::/grub/grubenv"]).arg(&env));
    assert_eq!(std::fs::metadata(&env).unwrap().len(), 1024);
    let list = run(Command::new("grub-editenv").arg(&env).arg("list"));
    assert_eq!(list, "gw_good=A\ngw_version_A=1.0.0\n");

    let a = dir.path().join("a.ext4");
    extract(&img, 34 << 20, 8 << 20, &a);
    let hostname = run(Command::new("debugfs").arg("-R").arg("cat /etc/hostname").arg(&a));
    assert_eq!(hostname, "gateway\n");
    let label = run(Command::new("debugfs").arg("-R").arg("stats").arg(&a));
    assert!(label.contains("Filesystem volume name:   rootfs-a"), "{label}");

    // `gateway-image provision`: a bad file is refused naming the key, the image untouched.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[gateway]\nname = \"gw 1\"\napplication = \"app\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-image"))
        .arg("provision")
        .arg(&img)
        .arg("--file")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway.name"));
    let text = run(Command::new("mtype").args(["-i", &fat, "::/provision.toml"]));
    assert_eq!(text, "[gateway]\nname = \"gw-test\"\napplication = \"app\"\n");
    let good = dir.path().join("good.toml");
    let content = "[gateway]\nname = \"gw-0042\"\napplication = \"app\"\n\n[cloud]\n\
                   url = \"https://http.example.com\"\npassword = \"pw\"\n";
    std::fs::write(&good, content).unwrap();
    let out = run(Command::new(env!("CARGO_BIN_EXE_gateway-image"))
        .arg("provision")
        .arg(&img)
        .arg("--file")
        .arg(&good));
    assert!(out.contains("gateway gw-0042 of app"), "{out}");
    let text = run(Command::new("mtype").args(["-i", &fat, "::/provision.toml"]));
    assert_eq!(text, content);
}

#[test]
fn disk_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-image"))
        .args(["disk", "--board", "x86-qemu", "--rootfs", "/nonexistent", "--out"])
        .arg(dir.path().join("x.img"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent: not a directory"));
    let out = Command::new(env!("CARGO_BIN_EXE_gateway-image"))
        .args(["disk", "--board", "amiga", "--rootfs", "/", "--out"])
        .arg(dir.path().join("x.img"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no built-in board profile \"amiga\""));
    assert!(!dir.path().join("x.img").exists());
}
