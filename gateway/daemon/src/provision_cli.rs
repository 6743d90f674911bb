//! `gatewayd provision`: imports an installer's `provision.toml` (docs/installing.md) at boot,
//! before `gatewayd run`: checks it, moves its secrets into the data partition (0600), writes
//! the gateway's config from the image's base config and the file, and rewrites the file
//! without its secrets. A bad file changes nothing; its error is printed and kept in
//! `provision.error` in the gateway's data directory (the base config's `[gateway] data_dir`,
//! which the written config keeps), removed by the next good import. `gatewayd run` reads it
//! from there whichever of the two configs it runs with.

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

/// Where a refused import's error is kept: `provision.error` in the gateway's data directory.
pub fn error_file(data_dir: &Path) -> PathBuf {
    data_dir.join("provision.error")
}

/// The error of a refused import that still stands for the gateway whose data directory is
/// `data_dir` (at most 4 KiB of its `provision.error`), or `None` after a good import.
pub fn standing_error(data_dir: &Path) -> Option<String> {
    let file = error_file(data_dir);
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

/// The data directory the base config names (`[gateway] data_dir`, else the default). Read
/// leniently: a base config is not a complete gateway config.
fn data_dir_of(base: &Path) -> PathBuf {
    std::fs::read_to_string(base)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("gateway")?.get("data_dir")?.as_str().map(PathBuf::from))
        .unwrap_or_else(crate::config::default_data_dir)
}

pub fn run(args: ProvisionArgs) -> ExitCode {
    let error_file = error_file(&data_dir_of(&args.base));
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
    fn the_standing_error_is_read_from_the_data_directory_of_the_base_config() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let base = dir.path().join("base.toml");
        std::fs::write(&base, format!("[gateway]\ndata_dir = {:?}\n", data.display().to_string()))
            .unwrap();
        assert_eq!(data_dir_of(&base), data);
        assert_eq!(
            data_dir_of(&dir.path().join("missing.toml")),
            crate::config::default_data_dir()
        );
        std::fs::create_dir_all(&data).unwrap();
        assert_eq!(standing_error(&data), None);
        std::fs::write(error_file(&data), "provision.toml: cloud.url: bad\n").unwrap();
        assert_eq!(standing_error(&data).as_deref(), Some("provision.toml: cloud.url: bad"));
        std::fs::write(error_file(&data), "").unwrap();
        assert_eq!(standing_error(&data).as_deref(), Some("provision.toml was refused"));
    }
}
