//! `gateway-image`: make keys and signed update bundles, check them, and install them into a
//! board's inactive slot.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use gw_board::{Board, BoardConfig};
use gw_image::{
    Bundle, InstallOptions, Keyring, SecretKey, SlotSystem,
    bootenv::{self, ToolPath},
    bundle::{self as bundle_file, BundleSpec},
};

#[derive(Parser, Debug)]
#[command(
    name = "gateway-image",
    version,
    about = "gatewayd's signed update bundles and A/B slots"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug)]
struct BoardArgs {
    /// The board profile (rpi4, rock-pi-s, x86-qemu, sim) or auto.
    #[arg(long, default_value = "auto")]
    board: String,
    /// The directory the profile's paths are under (the sim board's directory).
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

impl BoardArgs {
    fn slots(&self) -> anyhow::Result<SlotSystem> {
        let config = BoardConfig {
            profile: self.board.clone(),
            root: self.root.clone(),
            ..Default::default()
        };
        let board = Board::select(&config)?;
        let env = bootenv::for_board(&board, ToolPath::default());
        Ok(SlotSystem::new(board, env))
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Make a signing key (mode 0600) and its public key beside it (same name, `.pub`).
    Keygen {
        /// The secret key's file, e.g. release.key (release.pub is written beside it).
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a signed bundle from a rootfs image.
    Bundle {
        #[arg(long)]
        rootfs: PathBuf,
        /// The boards it is for: gatewayd-<board profile>, e.g. gatewayd-x86-qemu.
        #[arg(long)]
        compatible: String,
        /// Semantic version, e.g. 1.4.0.
        #[arg(long)]
        version: semver::Version,
        /// Build date, RFC 3339 UTC (default: now).
        #[arg(long)]
        build: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// The signing key (from keygen).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a bundle again with another key (replaces its signature).
    Sign {
        bundle: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed bundle (default: in place).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a bundle's signature against a keyring and its images against the manifest.
    Verify {
        bundle: PathBuf,
        #[arg(long, default_value = "/etc/gatewayd/keys")]
        keyring: PathBuf,
    },
    /// Print a bundle's manifest and signer (the signature is checked only with --keyring).
    Info {
        bundle: PathBuf,
        #[arg(long)]
        keyring: Option<PathBuf>,
    },
    /// Install a bundle into the inactive slot and try it at the next boot.
    Install {
        bundle: PathBuf,
        #[arg(long, default_value = "/etc/gatewayd/keys")]
        keyring: PathBuf,
        /// Allow installing an older version than the booted one.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        board: BoardArgs,
    },
    /// Write a flashable GPT disk image: FAT provision partition, rootfs slots A (from a
    /// directory) and B (empty), data. No root privileges or loop devices needed.
    Disk {
        /// The board profile the image is for.
        #[arg(long)]
        board: String,
        /// The root file system of slot A (a directory; run under fakeroot for root ownership).
        #[arg(long)]
        rootfs: PathBuf,
        /// A directory whose files go to the FAT partition (EFI loader, grub.cfg, ...).
        #[arg(long)]
        boot: Option<PathBuf>,
        /// A provision.toml to put on the FAT partition.
        #[arg(long)]
        provision: Option<PathBuf>,
        /// The version of the system in slot A (recorded for the no-downgrade check).
        #[arg(long)]
        version: Option<semver::Version>,
        #[arg(long, default_value_t = 64)]
        provision_mib: u64,
        #[arg(long, default_value_t = 256)]
        slot_mib: u64,
        #[arg(long, default_value_t = 128)]
        data_mib: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a provision.toml and write it onto a disk image's FAT partition (mtools).
    Provision {
        image: PathBuf,
        #[arg(long)]
        file: PathBuf,
    },
    /// Print the slots' state: booted, good, tried, versions.
    Status {
        #[command(flatten)]
        board: BoardArgs,
    },
    /// Mark the booted slot good (normally gatewayd does it once healthy).
    MarkGood {
        #[command(flatten)]
        board: BoardArgs,
    },
    /// Give up the slot on trial: the next boot is the good slot.
    MarkBad {
        #[command(flatten)]
        board: BoardArgs,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen { out } => {
            let public = out.with_extension("pub");
            if public == out {
                bail!("{}: name the secret key something other than *.pub", out.display());
            }
            let key = SecretKey::generate();
            key.save(&out)?;
            key.public().save(&public)?;
            println!("secret key {} (keep it off the gateways)", out.display());
            println!(
                "public key {} (id {}): copy it into /etc/gatewayd/keys/",
                public.display(),
                key.public().id()
            );
        }
        Command::Bundle { rootfs, compatible, version, build, description, key, out } => {
            let key = SecretKey::load(&key)?;
            let spec = BundleSpec {
                compatible,
                version,
                build,
                description,
                images: vec![("rootfs".into(), rootfs.as_path())],
            };
            let manifest = bundle_file::create(&spec, &key, &out)?;
            println!(
                "{}: {} {} signed by {}",
                out.display(),
                manifest.compatible,
                manifest.version,
                key.public().id()
            );
        }
        Command::Sign { bundle, key, out } => {
            let key = SecretKey::load(&key)?;
            let out = out.unwrap_or_else(|| bundle.clone());
            bundle_file::resign(&bundle, &key, &out)?;
            println!("{}: signed by {}", out.display(), key.public().id());
        }
        Command::Verify { bundle, keyring } => {
            let keyring = Keyring::load(&keyring)?;
            let b = Bundle::open(&bundle, &keyring)?;
            b.check_images()?;
            println!(
                "{}: good: signed by {} ({}), {} image(s) match the manifest",
                bundle.display(),
                b.trusted_as().unwrap_or_default(),
                b.signer().id(),
                b.manifest().images.len()
            );
        }
        Command::Info { bundle, keyring } => {
            let b = match &keyring {
                Some(dir) => Bundle::open(&bundle, &Keyring::load(dir)?)?,
                None => Bundle::open_unverified(&bundle)?,
            };
            let m = b.manifest();
            println!("compatible:  {}", m.compatible);
            println!("version:     {}", m.version);
            println!("build:       {}", m.build);
            if let Some(d) = &m.description {
                println!("description: {d}");
            }
            match b.trusted_as() {
                Some(name) => println!("signer:      {} ({name}, verified)", b.signer().id()),
                None => println!("signer:      {} (not verified: pass --keyring)", b.signer().id()),
            }
            for i in &m.images {
                println!(
                    "image:       {} {} {} bytes sha256 {}",
                    i.slot_class, i.name, i.size, i.sha256
                );
            }
        }
        Command::Install { bundle, keyring, force, board } => {
            let slots = board.slots()?;
            let keyring = Keyring::load(&keyring)?;
            let b = Bundle::open(&bundle, &keyring)
                .with_context(|| format!("refusing {}", bundle.display()))?;
            let done = slots
                .install(&b, &InstallOptions { allow_downgrade: force })
                .with_context(|| format!("refusing {}", bundle.display()))?;
            println!(
                "installed {} into slot {} ({} bytes); it is tried at the next boot",
                done.version, done.slot, done.bytes
            );
        }
        Command::Disk {
            board,
            rootfs,
            boot,
            provision,
            version,
            provision_mib,
            slot_mib,
            data_mib,
            out,
        } => {
            let spec = gw_image::disk::DiskSpec {
                board: gw_board::Profile::builtin(&board)?,
                rootfs,
                boot,
                provision,
                version,
                provision_mib,
                slot_mib,
                data_mib,
            };
            gw_image::disk::build(&spec, &out)?;
            let parts = gw_image::disk::layout(&spec);
            println!("{}: GPT image for {}", out.display(), spec.board.name);
            for (name, p) in ["provision", "rootfs-a", "rootfs-b", "data"].iter().zip(parts) {
                println!("  {name:<10} at {:>6} MiB, {:>5} MiB", p.offset >> 20, p.len >> 20);
            }
        }
        Command::Provision { image, file } => {
            let p = gw_image::disk::write_provision(&image, &file)?;
            println!(
                "{}: provision.toml for gateway {} of {} written",
                image.display(),
                p.gateway.name,
                p.gateway.application
            );
        }
        Command::Status { board } => {
            let slots = board.slots()?;
            println!("state:   {}", slots.state()?);
            println!("env:     {}", slots.env().describe());
            for slot in [gw_image::Slot::A, gw_image::Slot::B] {
                let version = slots.version(slot)?.map_or("unknown".into(), |v| v.to_string());
                println!("slot {slot}:  {} version {version}", slots.slot_device(slot).display());
            }
        }
        Command::MarkGood { board } => {
            println!("{:?}", board.slots()?.mark_good()?);
        }
        Command::MarkBad { board } => {
            let fallback = board.slots()?.mark_bad()?;
            println!("the next boot is slot {fallback}");
        }
    }
    Ok(())
}
