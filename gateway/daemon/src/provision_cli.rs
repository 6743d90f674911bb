//! `gatewayd provision`: imports an installer's `provision.toml` (docs/installing.md) at boot,
//! before `gatewayd run`: checks it, moves its secrets into the data partition (0600), writes
//! the gateway's config from the image's base config and the file, and rewrites the file
//! without its secrets. A bad file changes nothing; its error is printed and kept in
//! `provision.error` beside the written config (removed by the next good import).

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::ExitCode,
};

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

/// Where a refused import's error is kept: `provision.error` beside the written config, which
/// is the config `gatewayd run` reads.
pub fn error_file(config: &Path) -> PathBuf {
    config.with_file_name("provision.error")
}

/// The error of a refused import that still stands for the config at `config` (its
/// `provision.error`, at most 4 KiB of it), or `None` after a good import.
pub fn standing_error(config: &Path) -> Option<String> {
    let file = error_file(config);
    let mut text = String::new();
    match std::fs::File::open(&file).and_then(|f| f.take(4096).read_to_string(&mut text)) {
        Ok(_) if text.trim().is_empty() => Some("provision.toml was refused".into()),
        Ok(_) => Some(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            Some(format!("provision.toml was refused ({} cannot be read: {e})", file.display()))
        }
    }
}

pub fn run(args: ProvisionArgs) -> ExitCode {
    let error_file = error_file(&args.config);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_standing_error_is_read_beside_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gatewayd.toml");
        assert_eq!(standing_error(&config), None);
        std::fs::write(dir.path().join("provision.error"), "provision.toml: cloud.url: bad\n")
            .unwrap();
        assert_eq!(standing_error(&config).as_deref(), Some("provision.toml: cloud.url: bad"));
        std::fs::write(dir.path().join("provision.error"), "").unwrap();
        assert_eq!(standing_error(&config).as_deref(), Some("provision.toml was refused"));
    }
}
