//! The boot loader's environment: the few variables the boot script reads to choose a slot and
//! the gateway writes to install and confirm one. Three backends behind [`BootEnv`]:
//!
//! - [`GrubEnv`]: a GRUB environment block (1,024 bytes) through `grub-editenv FILE list|set`.
//! - [`UbootEnv`]: U-Boot's environment through `fw_printenv` and `fw_setenv -s` (libubootenv
//!   or u-boot-tools; `-c` names a config file when the board's profile gives one).
//! - [`FileEnv`]: a plain `key=value` file, written atomically (the sim board, and boot loaders
//!   whose script reads such a file).
//!
//! The tools are looked up on `PATH`; [`ToolPath`] lets a caller (a test) give its own `PATH`,
//! so fake `grub-editenv`/`fw_setenv` scripts stand in for the real ones.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use gw_board::{Board, profile::BootloaderKind};

use crate::ImageError;

/// Variables of the boot loader's environment. A value is never empty: writing `""` removes the
/// variable, and a missing variable reads as absent.
pub trait BootEnv: std::fmt::Debug + Send + Sync {
    /// Every variable.
    fn read(&self) -> Result<BTreeMap<String, String>, ImageError>;
    /// Sets (or, with `""`, removes) variables, as one write where the backend allows it.
    fn write(&self, vars: &[(&str, &str)]) -> Result<(), ImageError>;
    /// What the environment is, for messages.
    fn describe(&self) -> String;
}

/// The `PATH` the tools are searched in; `None`: the process's own.
#[derive(Clone, Debug, Default)]
pub struct ToolPath(pub Option<OsString>);

impl ToolPath {
    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        if let Some(path) = &self.0 {
            c.env("PATH", path);
        }
        c.stdin(Stdio::null());
        c
    }
}

fn run(mut cmd: Command, tool: &str) -> Result<String, ImageError> {
    let out = cmd.output().map_err(|source| ImageError::Tool { tool: tool.into(), source })?;
    if !out.status.success() {
        return Err(ImageError::ToolFailed {
            tool: tool.into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    String::from_utf8(out.stdout)
        .map_err(|_| ImageError::Env(format!("{tool} printed something that is not UTF-8")))
}

fn check_var(key: &str, value: &str) -> Result<(), ImageError> {
    let key_ok = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    if !key_ok {
        return Err(ImageError::Env(format!("variable name {key:?}: letters, digits and '_'")));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(ImageError::Env(format!("{key}: a value is one line")));
    }
    Ok(())
}

fn parse_lines(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .collect()
}

/// GRUB's environment block, edited with `grub-editenv`.
#[derive(Clone, Debug)]
pub struct GrubEnv {
    file: PathBuf,
    tools: ToolPath,
}

impl GrubEnv {
    /// GRUB's usual place: `/boot/grub/grubenv`.
    pub const DEFAULT_FILE: &str = "/boot/grub/grubenv";

    pub fn new(file: impl Into<PathBuf>, tools: ToolPath) -> Self {
        Self { file: file.into(), tools }
    }
}

impl BootEnv for GrubEnv {
    fn read(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let mut c = self.tools.command("grub-editenv");
        c.arg(&self.file).arg("list");
        Ok(parse_lines(&run(c, "grub-editenv")?))
    }

    fn write(&self, vars: &[(&str, &str)]) -> Result<(), ImageError> {
        for (k, v) in vars {
            check_var(k, v)?;
        }
        let (unset, set): (Vec<_>, Vec<_>) = vars.iter().partition(|(_, v)| v.is_empty());
        if !set.is_empty() {
            let mut c = self.tools.command("grub-editenv");
            c.arg(&self.file).arg("set").args(set.iter().map(|(k, v)| format!("{k}={v}")));
            run(c, "grub-editenv")?;
        }
        if !unset.is_empty() {
            let mut c = self.tools.command("grub-editenv");
            c.arg(&self.file).arg("unset").args(unset.iter().map(|(k, _)| *k));
            run(c, "grub-editenv")?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("GRUB environment {}", self.file.display())
    }
}

/// U-Boot's environment, through `fw_printenv` and `fw_setenv`.
#[derive(Clone, Debug)]
pub struct UbootEnv {
    /// `fw_env.config` when not the tools' default.
    config: Option<PathBuf>,
    tools: ToolPath,
}

impl UbootEnv {
    pub fn new(config: Option<PathBuf>, tools: ToolPath) -> Self {
        Self { config, tools }
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = self.tools.command(tool);
        if let Some(config) = &self.config {
            c.arg("-c").arg(config);
        }
        c
    }
}

impl BootEnv for UbootEnv {
    fn read(&self) -> Result<BTreeMap<String, String>, ImageError> {
        Ok(parse_lines(&run(self.command("fw_printenv"), "fw_printenv")?))
    }

    fn write(&self, vars: &[(&str, &str)]) -> Result<(), ImageError> {
        // One `fw_setenv -s` writes every variable in one environment update: lines of
        // "name value", a name alone removes the variable.
        let mut script = tempfile::NamedTempFile::new()
            .map_err(ImageError::io("cannot create a temporary file in", std::env::temp_dir()))?;
        for (k, v) in vars {
            check_var(k, v)?;
            writeln!(script, "{k} {v}")
                .map_err(ImageError::io("cannot write", script.path().to_owned()))?;
        }
        script.flush().map_err(ImageError::io("cannot write", script.path().to_owned()))?;
        let mut c = self.command("fw_setenv");
        c.arg("-s").arg(script.path());
        run(c, "fw_setenv").map(drop)
    }

    fn describe(&self) -> String {
        match &self.config {
            Some(c) => format!("U-Boot environment ({})", c.display()),
            None => "U-Boot environment".into(),
        }
    }
}

/// A `key=value` file (one variable a line), replaced atomically on each write.
#[derive(Clone, Debug)]
pub struct FileEnv {
    file: PathBuf,
}

impl FileEnv {
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self { file: file.into() }
    }
}

impl BootEnv for FileEnv {
    fn read(&self) -> Result<BTreeMap<String, String>, ImageError> {
        match std::fs::read_to_string(&self.file) {
            Ok(text) => Ok(parse_lines(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => {
                Err(ImageError::Io { what: "cannot read", path: self.file.clone(), source: e })
            }
        }
    }

    fn write(&self, vars: &[(&str, &str)]) -> Result<(), ImageError> {
        let mut all = self.read()?;
        for (k, v) in vars {
            check_var(k, v)?;
            if v.is_empty() {
                all.remove(*k);
            } else {
                all.insert((*k).to_owned(), (*v).to_owned());
            }
        }
        let text: String = all.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let dir = self.file.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(ImageError::io("cannot create a file in", dir))?;
        tmp.write_all(text.as_bytes())
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(ImageError::io("cannot write", &self.file))?;
        tmp.persist(&self.file).map_err(|e| ImageError::Io {
            what: "cannot replace",
            path: self.file.clone(),
            source: e.error,
        })?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("environment file {}", self.file.display())
    }
}

/// The environment of a board, as its profile's `[bootloader]` says (paths under the board's
/// root).
pub fn for_board(board: &Board, tools: ToolPath) -> Box<dyn BootEnv> {
    let env = board.profile.bootloader.env.as_deref().map(|p| board.path(p));
    match board.profile.bootloader.kind {
        BootloaderKind::Grub => Box::new(GrubEnv::new(
            env.unwrap_or_else(|| board.path(Path::new(GrubEnv::DEFAULT_FILE))),
            tools,
        )),
        BootloaderKind::Uboot => Box::new(UbootEnv::new(env, tools)),
        // The profile check makes sure the file kind names its file.
        BootloaderKind::File => Box::new(FileEnv::new(
            env.unwrap_or_else(|| board.path(Path::new("/boot/gatewayd.env"))),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_env_sets_and_removes_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let env = FileEnv::new(dir.path().join("env"));
        assert!(env.read().unwrap().is_empty());
        env.write(&[("a", "1"), ("b", "two words")]).unwrap();
        env.write(&[("a", ""), ("c", "3")]).unwrap();
        let vars = env.read().unwrap();
        assert_eq!(vars.get("b").map(String::as_str), Some("two words"));
        assert_eq!(vars.get("c").map(String::as_str), Some("3"));
        assert!(!vars.contains_key("a"));
        assert_eq!(std::fs::read_to_string(dir.path().join("env")).unwrap(), "b=two words\nc=3\n");
    }

    #[test]
    fn refuses_bad_names_and_multi_line_values() {
        let dir = tempfile::tempdir().unwrap();
        let env = FileEnv::new(dir.path().join("env"));
        assert!(env.write(&[("a=b", "1")]).unwrap_err().to_string().contains("variable name"));
        assert!(env.write(&[("a", "1\nb=2")]).unwrap_err().to_string().contains("one line"));
        assert!(env.read().unwrap().is_empty());
    }

    #[test]
    fn a_missing_tool_is_named() {
        let tools = ToolPath(Some("/nonexistent".into()));
        let e = GrubEnv::new("/tmp/x", tools.clone()).read().unwrap_err().to_string();
        assert!(e.contains("cannot run grub-editenv"), "{e}");
        let e = UbootEnv::new(None, tools).read().unwrap_err().to_string();
        assert!(e.contains("cannot run fw_printenv"), "{e}");
    }
}
