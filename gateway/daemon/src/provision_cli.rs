//! `gatewayd provision`: imports an installer's `provision.toml` (docs/installing.md) at boot,
//! before `gatewayd run`: checks it, moves its secrets into the data partition (0600), writes
//! the gateway's config from the image's base config and the file, and rewrites the file
//! without its secrets. A bad file changes nothing; its error is printed and kept in
//! `provision.error` beside the written config (removed by the next good import).

use std::{path::PathBuf, process::ExitCode};

use gw_image::provision::{ImportPaths, Imported, import};

#[derive(clap::Args, Debug)]
pub struct ProvisionArgs {
    /// The installer's file (on the FAT partition, mounted at /boot).
    #[arg(long, default_value = "/boot/provision.toml")]
    file: PathBuf,
    /// The image's base config: listeners, board, update; the file's sections are added to it.
    #[arg(long, default_value = "/etc/gatewayd/gatewayd.toml")]
    base: PathBuf,
    /// The config to write (on the data partition); `gatewayd run --config` it.
    #[arg(long, default_value = "/var/lib/gatewayd/gatewayd.toml")]
    config: PathBuf,
    /// The directory for the secrets (on the data partition).
    #[arg(long, default_value = "/var/lib/gatewayd/secrets")]
    secrets: PathBuf,
}

pub fn run(args: ProvisionArgs) -> ExitCode {
    let error_file = args.config.with_file_name("provision.error");
    let paths = ImportPaths {
        provision: args.file,
        base_config: args.base,
        config: args.config,
        secrets: args.secrets,
    };
    match import(&paths) {
        Ok(done) => {
            let _ = std::fs::remove_file(&error_file);
            match done {
                Imported::Applied { name } => println!(
                    "provisioned gateway {name}: secrets moved to {}, config {}",
                    paths.secrets.display(),
                    paths.config.display()
                ),
                Imported::Unchanged => println!("{}: already imported", paths.provision.display()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatewayd provision: {e}");
            if let Some(dir) = error_file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::write(&error_file, format!("{e}\n"));
            ExitCode::FAILURE
        }
    }
}
