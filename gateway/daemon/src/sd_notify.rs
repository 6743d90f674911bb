//! systemd's readiness protocol: one datagram to `$NOTIFY_SOCKET`. Outside systemd (no
//! variable) this does nothing.

use std::{io, os::unix::net::UnixDatagram};

/// Tells systemd the daemon is ready. Returns whether a notification was sent.
pub fn notify_ready() -> io::Result<bool> {
    notify("READY=1\n")
}

/// Tells systemd the daemon is stopping.
pub fn notify_stopping() -> io::Result<bool> {
    notify("STOPPING=1\n")
}

fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

/// Tells systemd's watchdog the daemon is alive.
pub fn notify_watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1\n")
}

/// How often systemd wants `WATCHDOG=1` (half of `WATCHDOG_USEC`), when it asked for it and
/// the request is for this process (`WATCHDOG_PID`).
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}
