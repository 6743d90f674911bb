//! Helpers shared by this crate's integration tests: a real mosquitto on a free 127.0.0.1
//! port, killed on drop.
#![allow(dead_code)] // each test file uses a part

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// False (after a skip line) when mosquitto or its clients are missing; panics under CI.
pub fn have_mosquitto(test: &str) -> bool {
    let found = Path::new(MOSQUITTO).exists()
        && Command::new("mosquitto_sub").arg("--help").output().is_ok()
        && Command::new("mosquitto_pub").arg("--help").output().is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "{test}: mosquitto is required under CI");
        eprintln!("SKIP {test}: mosquitto / mosquitto-clients not installed");
    }
    found
}

/// A mosquitto on a free 127.0.0.1 port with its config and log in `dir`.
pub struct Mosquitto {
    pub addr: SocketAddr,
    dir: PathBuf,
    child: Child,
}

impl Mosquitto {
    /// Starts mosquitto with `extra` config lines after `listener PORT 127.0.0.1`. The port
    /// is found by binding port 0 and closing it; should another process take it before
    /// mosquitto binds, a new port is tried.
    pub fn start(dir: &Path, extra: &str) -> Self {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let conf = format!(
                "user root\nlog_dest file {dir}/mosquitto.log\nset_tcp_nodelay true\n\
                 listener {port} 127.0.0.1\n{extra}\n",
                dir = dir.display()
            );
            let path = dir.join("mosquitto.conf");
            std::fs::write(&path, conf).unwrap();
            let mut child = Command::new(MOSQUITTO)
                .arg("-c")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(addr).is_ok() {
                    return Self { addr, dir: dir.to_owned(), child };
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break; // port taken meanwhile, or mosquitto failed: try another port
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "mosquitto did not start: {}",
            std::fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default()
        );
    }

    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr)
    }

    /// Makes mosquitto read its config and password file again (SIGHUP).
    pub fn reload(&self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(sent.success(), "kill -HUP {pid}");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
