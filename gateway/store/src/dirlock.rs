//! The outbox directory's lock: `<dir>/LOCK`, held with `flock` for as long as the outbox is
//! open and holding the holder's pid, so that a second process (a unit started twice, a
//! technician's manual run) is refused with a message naming the first.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use crate::StoreError;

pub(crate) const LOCK_FILE: &str = "LOCK";

/// Takes the lock of `dir` (which exists), or says who holds it. The lock lasts as long as
/// the returned file is open.
pub(crate) fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let lock_err = |source| StoreError::LockFile { path: path.clone(), source };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(lock_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(StoreError::Locked {
                dir: dir.to_owned(),
                holder: text.trim().parse().ok(),
            });
        }
        Err(TryLockError::Error(source)) => return Err(lock_err(source)),
    }
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .map_err(lock_err)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let first = lock(tmp.path()).unwrap();
        let err = lock(tmp.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("in use by process {}", std::process::id())), "{text}");
        assert!(text.contains(&tmp.path().display().to_string()), "{text}");
        drop(first);
        let _again = lock(tmp.path()).unwrap();
    }
}
