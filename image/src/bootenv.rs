//! The boot loader's environment: the few variables the boot script reads to choose a slot and
//! the gateway writes to install and confirm one. Three backends behind [`BootEnv`]:
//!
//! - [`GrubEnv`]: a GRUB environment block (1,024 bytes) through `grub-editenv FILE list|set`,
//!   or, where `grub-editenv` is not on `PATH` (a gateway's own system), read and written
//!   natively in the same format.
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
    /// True when `tool` is an executable file in one of the `PATH` directories.
    fn finds(&self, tool: &str) -> bool {
        use std::os::unix::fs::PermissionsExt;
        let path = self.0.clone().or_else(|| std::env::var_os("PATH")).unwrap_or_default();
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }

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

/// GRUB's environment block, edited with `grub-editenv`, or natively when that is not on
/// `PATH` (see [`GRUB_ENV_HEADER`] for the format).
#[derive(Clone, Debug)]
pub struct GrubEnv {
    file: PathBuf,
    tools: ToolPath,
}

/// The first line of a GRUB environment block. The block is that line, then one `name=value`
/// line per variable (a `\` or a newline in a value escaped with `\`), then `#` up to the
/// block's size: 1,024 bytes as `grub-editenv create` makes it. GRUB's `save_env` overwrites
/// the file's sectors in place, so the size never changes.
pub const GRUB_ENV_HEADER: &str = "# GRUB Environment Block\n";

/// The size of a new GRUB environment block.
pub const GRUB_ENV_SIZE: usize = 1024;

impl GrubEnv {
    /// GRUB's usual place: `/boot/grub/grubenv`.
    pub const DEFAULT_FILE: &str = "/boot/grub/grubenv";

    pub fn new(file: impl Into<PathBuf>, tools: ToolPath) -> Self {
        Self { file: file.into(), tools }
    }

    fn native(&self) -> bool {
        !self.tools.finds("grub-editenv")
    }

    fn read_block(&self) -> Result<Vec<u8>, ImageError> {
        std::fs::read(&self.file).map_err(ImageError::io("cannot read", &self.file))
    }

    fn write_native(&self, vars: &[(&str, &str)]) -> Result<(), ImageError> {
        let (mut all, size) = match std::fs::read(&self.file) {
            Ok(block) => (parse_grub_block(&block)?, block.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), GRUB_ENV_SIZE),
            Err(e) => {
                return Err(ImageError::Io {
                    what: "cannot read",
                    path: self.file.clone(),
                    source: e,
                });
            }
        };
        for (k, v) in vars {
            if v.is_empty() {
                all.remove(*k);
            } else {
                all.insert((*k).to_owned(), (*v).to_owned());
            }
        }
        let block = render_grub_block(&all, size)?;
        replace_file(&self.file, &block)
    }
}

/// The variables of a GRUB environment block.
pub fn parse_grub_block(block: &[u8]) -> Result<BTreeMap<String, String>, ImageError> {
    let text = std::str::from_utf8(block)
        .map_err(|_| ImageError::Env("the GRUB environment block is not UTF-8".into()))?;
    let body = text.strip_prefix(GRUB_ENV_HEADER).ok_or_else(|| {
        ImageError::Env(
            "not a GRUB environment block (no \"# GRUB Environment Block\" line)".into(),
        )
    })?;
    let mut vars = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        // One line, where an escaped newline continues it.
        let mut line = String::new();
        let mut chars = rest.char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => line.push(e),
                    None => break,
                },
                '\n' => {
                    end = i + 1;
                    break;
                }
                c => line.push(c),
            }
        }
        rest = &rest[end..];
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=')
            && !v.is_empty()
        {
            vars.insert(k.to_owned(), v.to_owned());
        }
    }
    Ok(vars)
}

/// A GRUB environment block of exactly `size` bytes holding `vars`.
pub fn render_grub_block(
    vars: &BTreeMap<String, String>,
    size: usize,
) -> Result<Vec<u8>, ImageError> {
    let mut text = String::from(GRUB_ENV_HEADER);
    for (k, v) in vars {
        check_var(k, v)?;
        text.push_str(k);
        text.push('=');
        for c in v.chars() {
            if c == '\\' {
                text.push('\\');
            }
            text.push(c);
        }
        text.push('\n');
    }
    if text.len() > size {
        return Err(ImageError::Env(format!(
            "the variables take {} bytes, more than the GRUB environment block's {size}",
            text.len()
        )));
    }
    let mut block = text.into_bytes();
    block.resize(size, b'#');
    Ok(block)
}

/// Replaces `file` with `content`: written beside it, synced, renamed over it.
fn replace_file(file: &Path, content: &[u8]) -> Result<(), ImageError> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(ImageError::io("cannot create a file in", dir))?;
    tmp.write_all(content)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(ImageError::io("cannot write", file))?;
    tmp.persist(file).map_err(|e| ImageError::Io {
        what: "cannot replace",
        path: file.to_owned(),
        source: e.error,
    })?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl BootEnv for GrubEnv {
    fn read(&self) -> Result<BTreeMap<String, String>, ImageError> {
        if self.native() {
            return parse_grub_block(&self.read_block()?);
        }
        let mut c = self.tools.command("grub-editenv");
        c.arg(&self.file).arg("list");
        Ok(parse_lines(&run(c, "grub-editenv")?))
    }

    fn write(&self, vars: &[(&str, &str)]) -> Result<(), ImageError> {
        for (k, v) in vars {
            check_var(k, v)?;
        }
        if self.native() {
            return self.write_native(vars);
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
        replace_file(&self.file, text.as_bytes())
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
        let e = UbootEnv::new(None, tools).read().unwrap_err().to_string();
        assert!(e.contains("cannot run fw_printenv"), "{e}");
    }

    /// No grub-editenv on this PATH: the GRUB backend reads and writes the block itself.
    fn native_grub(file: &Path) -> GrubEnv {
        GrubEnv::new(file, ToolPath(Some("/nonexistent".into())))
    }

    #[test]
    fn native_grub_env_keeps_the_block_at_exactly_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grubenv");
        let env = native_grub(&file);
        let e = env.read().unwrap_err().to_string();
        assert!(e.contains("cannot read") && e.contains("grubenv"), "{e}");
        env.write(&[("gw_good", "A"), ("gw_version_A", "1.0.0")]).unwrap();
        let block = std::fs::read(&file).unwrap();
        assert_eq!(block.len(), GRUB_ENV_SIZE);
        let text = String::from_utf8(block).unwrap();
        let body = "# GRUB Environment Block\ngw_good=A\ngw_version_A=1.0.0\n";
        assert!(text.starts_with(body), "{text}");
        assert!(text[body.len()..].bytes().all(|b| b == b'#'), "{text}");
        env.write(&[("gw_try", "B"), ("gw_try_left", "1"), ("gw_version_A", "")]).unwrap();
        let vars = env.read().unwrap();
        let pairs: Vec<_> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(pairs, ["gw_good=A", "gw_try=B", "gw_try_left=1"]);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1024);
    }

    #[test]
    fn native_grub_env_escapes_backslashes_and_refuses_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grubenv");
        let env = native_grub(&file);
        env.write(&[("path", r"C:\boot\")]).unwrap();
        assert!(std::fs::read_to_string(&file).unwrap().contains(r"path=C:\\boot\\"));
        assert_eq!(env.read().unwrap()["path"], r"C:\boot\");
        let before = std::fs::read(&file).unwrap();
        let e = env.write(&[("big", &"x".repeat(1000))]).unwrap_err().to_string();
        assert!(e.contains("more than the GRUB environment block's 1024"), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), before, "unchanged");
    }

    #[test]
    fn native_grub_env_refuses_a_file_that_is_not_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grubenv");
        std::fs::write(&file, "gw_good=A\n").unwrap();
        let env = native_grub(&file);
        let e = env.read().unwrap_err().to_string();
        assert!(e.contains("not a GRUB environment block"), "{e}");
        assert!(env.write(&[("gw_good", "B")]).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "gw_good=A\n");
    }

    /// The real grub-editenv reads what the native writer wrote, and the other way round.
    #[test]
    fn native_grub_env_round_trips_with_grub_editenv() {
        if Command::new("grub-editenv").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "grub-editenv (grub-common) is missing in CI"
            );
            println!("SKIP: grub-editenv not installed (apt-get install grub-common)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("grubenv");
        let grub = |args: &[&str]| {
            let out = Command::new("grub-editenv").arg(&file).args(args).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        grub(&["create"]);
        grub(&["set", "gw_good=A", r"odd=a\b", "gw_version_A=1.0.0"]);
        let native = native_grub(&file);
        let vars = native.read().unwrap();
        assert_eq!(vars["gw_good"], "A");
        assert_eq!(vars["odd"], r"a\b");
        assert_eq!(vars["gw_version_A"], "1.0.0");

        native.write(&[("gw_try", "B"), ("gw_try_left", "1"), ("gw_good", "")]).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1024);
        let mut listed: Vec<_> = grub(&["list"]).lines().map(str::to_owned).collect();
        listed.sort();
        assert_eq!(listed, ["gw_try=B", "gw_try_left=1", "gw_version_A=1.0.0", r"odd=a\b"]);
        // after grub-editenv rewrote the block, the native reader reads the same variables
        let mine = std::fs::read(&file).unwrap();
        grub(&["unset", "gw_try"]);
        grub(&["set", "gw_try=B"]);
        assert_eq!(native.read().unwrap(), parse_grub_block(&mine).unwrap());
        // and a fresh block with the variables set in name order holds the same lines as the
        // native one (Debian's grub-editenv adds a "# WARNING" comment line after the header)
        std::fs::remove_file(&file).unwrap();
        grub(&["create"]);
        grub(&["set", "gw_good=A", "gw_try=B", r"odd=a\b"]);
        let lines = |block: Vec<u8>| -> Vec<String> {
            let text = String::from_utf8(block).unwrap();
            text.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect()
        };
        let vars = native.read().unwrap();
        let native_block = render_grub_block(&vars, 1024).unwrap();
        assert!(native_block.starts_with(GRUB_ENV_HEADER.as_bytes()));
        assert_eq!(lines(std::fs::read(&file).unwrap()), lines(native_block));
        assert_eq!(lines(std::fs::read(&file).unwrap()), ["gw_good=A", "gw_try=B", r"odd=a\\b"]);
    }
}
