//! The flashable disk image: GPT with four partitions, built from files without root
//! privileges or loop devices (`sfdisk` on the image file, `mkfs.vfat` + `mcopy` for the FAT
//! partition, `mkfs.ext4 -d` for the ext4 ones, each made as a file and copied into place).
//!
//! | # | name | type | content |
//! |---|---|---|---|
//! | 1 | `provision` | EFI system (FAT) | boot files, the GRUB environment (`/grub/grubenv`), `provision.toml` |
//! | 2 | `rootfs-a` | Linux (ext4) | slot A: the given root file system |
//! | 3 | `rootfs-b` | Linux (ext4) | slot B: empty until the first update |
//! | 4 | `data` | Linux (ext4) | store, snapshot, accounts, secrets; survives updates |
//!
//! Partitions start on 1 MiB boundaries. The FAT partition is what installers edit from any
//! laptop, and what the system mounts at `/boot`, so the boot loader's environment there is
//! shared by both slots.

use std::{
    fs::{File, OpenOptions},
    io::{self, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::Command,
};

use gw_board::profile::BootloaderKind;

use crate::{ImageError, slots::Slot};

const MIB: u64 = 1 << 20;
const EFI_SYSTEM: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// What goes into a disk image.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub board: gw_board::Profile,
    /// The root file system for slot A (a directory; run under fakeroot for root ownership).
    pub rootfs: PathBuf,
    /// Files copied to the FAT partition's root (EFI loader, grub.cfg, ...).
    pub boot: Option<PathBuf>,
    /// A `provision.toml` put on the FAT partition.
    pub provision: Option<PathBuf>,
    /// The version of the system in slot A, recorded in the boot loader environment.
    pub version: Option<semver::Version>,
    pub provision_mib: u64,
    pub slot_mib: u64,
    pub data_mib: u64,
}

/// Where a partition lies in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// The partition layout of a spec: provision, A, B, data.
pub fn layout(spec: &DiskSpec) -> [Extent; 4] {
    let sizes = [spec.provision_mib, spec.slot_mib, spec.slot_mib, spec.data_mib];
    let mut offset = MIB;
    sizes.map(|mib| {
        let e = Extent { offset, len: mib * MIB };
        offset += mib * MIB;
        e
    })
}

fn tool(cmd: &mut Command, name: &str) -> Result<(), ImageError> {
    let out = cmd.output().map_err(|source| ImageError::Tool { tool: name.into(), source })?;
    if !out.status.success() {
        return Err(ImageError::ToolFailed {
            tool: name.into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

fn sized_file(path: &Path, len: u64) -> Result<(), ImageError> {
    let f = File::create(path).map_err(ImageError::io("cannot create", path))?;
    f.set_len(len).map_err(ImageError::io("cannot size", path))
}

/// Builds the image at `out` (replaced if it exists). The scratch files live in a temporary
/// directory beside `out`.
pub fn build(spec: &DiskSpec, out: &Path) -> Result<(), ImageError> {
    if spec.provision_mib < 33 || spec.slot_mib < 8 || spec.data_mib < 8 {
        return Err(ImageError::Disk(
            "sizes: the provision partition needs at least 33 MiB (FAT32), slots and data 8 MiB"
                .into(),
        ));
    }
    if !spec.rootfs.is_dir() {
        return Err(ImageError::Disk(format!("{}: not a directory", spec.rootfs.display())));
    }
    if let Some(p) = &spec.provision {
        let text = std::fs::read_to_string(p).map_err(ImageError::io("cannot read", p))?;
        crate::provision::Provision::parse(&text)?;
    }
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let scratch = tempfile::Builder::new()
        .prefix(".disk-")
        .tempdir_in(dir)
        .map_err(ImageError::io("cannot create a directory in", dir))?;
    let parts = layout(spec);
    let total = parts[3].offset + parts[3].len + MIB;

    // 1. The FAT partition.
    let fat = scratch.path().join("provision.vfat");
    sized_file(&fat, parts[0].len)?;
    tool(Command::new("mkfs.vfat").args(["-F", "32", "-n", "PROVISION"]).arg(&fat), "mkfs.vfat")?;
    let mcopy = |src: &Path, dst: &str| -> Result<(), ImageError> {
        tool(
            Command::new("mcopy").arg("-i").arg(&fat).arg("-s").arg("-o").arg(src).arg(dst),
            "mcopy",
        )
    };
    if let Some(boot) = &spec.boot {
        let entries = std::fs::read_dir(boot).map_err(ImageError::io("cannot read", boot))?;
        for entry in entries {
            let path = entry.map_err(ImageError::io("cannot read", boot))?.path();
            mcopy(&path, "::/")?;
        }
    }
    if let Some(p) = &spec.provision {
        mcopy(p, "::/provision.toml")?;
    }
    if spec.board.bootloader.kind == BootloaderKind::Grub {
        let env = scratch.path().join("grubenv");
        tool(Command::new("grub-editenv").arg(&env).arg("create"), "grub-editenv")?;
        let mut set = Command::new("grub-editenv");
        set.arg(&env).arg("set").arg(format!("gw_good={}", Slot::A));
        if let Some(v) = &spec.version {
            set.arg(format!("gw_version_A={v}"));
        }
        tool(&mut set, "grub-editenv")?;
        tool(Command::new("mmd").arg("-i").arg(&fat).arg("-D").arg("s").arg("::/grub"), "mmd")
            .or_else(|e| match e {
                // an existing /grub from --boot is fine
                ImageError::ToolFailed { .. } => Ok(()),
                e => Err(e),
            })?;
        mcopy(&env, "::/grub/grubenv")?;
    }

    // 2. The ext4 partitions: slot A from the directory, B and data empty.
    let ext4 = |name: &str, len: u64, content: Option<&Path>| -> Result<PathBuf, ImageError> {
        let file = scratch.path().join(format!("{name}.ext4"));
        sized_file(&file, len)?;
        let mut c = Command::new("mkfs.ext4");
        c.args(["-q", "-F", "-L", name, "-E", "root_owner=0:0"]);
        if let Some(d) = content {
            c.arg("-d").arg(d);
        }
        c.arg(&file);
        tool(&mut c, "mkfs.ext4")?;
        Ok(file)
    };
    let a = ext4("rootfs-a", parts[1].len, Some(&spec.rootfs))?;
    let b = ext4("rootfs-b", parts[2].len, None)?;
    let data = ext4("data", parts[3].len, None)?;

    // 3. The partition table, then each partition copied into place.
    let disk = scratch.path().join("disk.img");
    sized_file(&disk, total)?;
    let names = ["provision", "rootfs-a", "rootfs-b", "data"];
    let types = [EFI_SYSTEM, LINUX_FS, LINUX_FS, LINUX_FS];
    let mut script = String::from("label: gpt\nunit: sectors\n");
    for ((p, name), ty) in parts.iter().zip(names).zip(types) {
        script.push_str(&format!(
            "start={}, size={}, type={ty}, name=\"{name}\"\n",
            p.offset / 512,
            p.len / 512
        ));
    }
    let script_file = scratch.path().join("sfdisk.script");
    std::fs::write(&script_file, &script).map_err(ImageError::io("cannot write", &script_file))?;
    let script_in =
        File::open(&script_file).map_err(ImageError::io("cannot read", &script_file))?;
    tool(
        Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&disk)
            .stdin(script_in),
        "sfdisk",
    )?;
    let mut w =
        OpenOptions::new().write(true).open(&disk).map_err(ImageError::io("cannot open", &disk))?;
    for (file, p) in [(&fat, parts[0]), (&a, parts[1]), (&b, parts[2]), (&data, parts[3])] {
        let mut r = File::open(file).map_err(ImageError::io("cannot read", file))?;
        w.seek(SeekFrom::Start(p.offset))
            .and_then(|_| io::copy(&mut r, &mut w))
            .map_err(ImageError::io("cannot write", &disk))?;
    }
    w.sync_all().map_err(ImageError::io("cannot write", &disk))?;
    drop(w);
    std::fs::rename(&disk, out).map_err(ImageError::io("cannot write", out))?;
    Ok(())
}

/// Where the partition named `name` lies in a GPT image (read with `sfdisk --json`).
pub fn find_partition(image: &Path, name: &str) -> Result<Extent, ImageError> {
    let out = Command::new("sfdisk")
        .arg("--json")
        .arg(image)
        .output()
        .map_err(|source| ImageError::Tool { tool: "sfdisk".into(), source })?;
    if !out.status.success() {
        return Err(ImageError::Disk(format!(
            "{}: no partition table ({})",
            image.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let table: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| ImageError::Disk(format!("cannot read sfdisk's table: {e}")))?;
    let table = &table["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    table["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| {
            Some(Extent {
                offset: p["start"].as_u64()?.checked_mul(sector)?,
                len: p["size"].as_u64()?.checked_mul(sector)?,
            })
        })
        .ok_or_else(|| {
            ImageError::Disk(format!("{}: no partition named {name:?}", image.display()))
        })
}

/// Checks a provision file and writes it as `provision.toml` onto an image's FAT partition
/// (`gateway-image provision`): a file that does not check is refused and the image untouched.
pub fn write_provision(
    image: &Path,
    file: &Path,
) -> Result<crate::provision::Provision, ImageError> {
    let text = std::fs::read_to_string(file).map_err(ImageError::io("cannot read", file))?;
    let provision = crate::provision::Provision::parse(&text)?;
    let part = find_partition(image, "provision")?;
    let target = format!("{}@@{}", image.display(), part.offset);
    tool(
        Command::new("mcopy").args(["-o", "-i", &target]).arg(file).arg("::/provision.toml"),
        "mcopy",
    )?;
    Ok(provision)
}
