//! The hardware watchdog (`/dev/watchdog`, the kernel's watchdog API): any write kicks it; a
//! `V` written before closing disarms it (the "magic close"), so a clean shutdown does not reset
//! the board while a crash or a hang does.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    time::Duration,
};

/// An open (armed) watchdog.
#[derive(Debug)]
pub struct Watchdog {
    file: File,
    path: PathBuf,
    timeout: Duration,
}

impl Watchdog {
    /// Opens `path`; the kernel arms the watchdog at open. `timeout` is the driver's, from the
    /// board profile.
    pub fn open(path: &Path, timeout: Duration) -> io::Result<Self> {
        // append: a no-op for the device, and the sim board's file keeps every kick
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Self { file, path: path.to_owned(), timeout })
    }

    /// How often to kick: a third of the timeout.
    pub fn interval(&self) -> Duration {
        self.timeout / 3
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resets the watchdog's countdown.
    pub fn kick(&mut self) -> io::Result<()> {
        self.file.write_all(b"k")?;
        self.file.flush()
    }

    /// Disarms the watchdog and closes it (clean shutdown).
    pub fn close(mut self) -> io::Result<()> {
        self.file.write_all(b"V")?;
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kicks_are_writes_and_close_is_magic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watchdog");
        std::fs::write(&path, "").unwrap();
        let mut w = Watchdog::open(&path, Duration::from_secs(15)).unwrap();
        assert_eq!(w.interval(), Duration::from_secs(5));
        w.kick().unwrap();
        w.kick().unwrap();
        w.close().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kkV");
        assert!(Watchdog::open(&dir.path().join("missing"), Duration::from_secs(1)).is_err());
    }
}
