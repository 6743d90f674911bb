//! What every scenario shares: child processes that die with the run, free ports, the gatewayd
//! binary and its listeners, mosquitto, /proc readings, percentiles and markdown tables.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// The gatewayd binary: `GATEWAYD_BIN`, else the one beside this binary (same profile), built
/// with cargo first when it is missing and this runs under `cargo run`.
pub fn gatewayd_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("GATEWAYD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("cannot find this binary's path")?;
    let dir = me.parent().context("this binary has no directory")?;
    let bin = dir.join("gatewayd");
    if !bin.exists() {
        let cargo = std::env::var_os("CARGO").context(
            "gatewayd is not beside gw-bench: build it (cargo build --release -p gatewayd) or set GATEWAYD_BIN",
        )?;
        let release = dir.file_name().is_some_and(|n| n != "debug");
        eprintln!("building gatewayd ({})", if release { "release" } else { "debug" });
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "gatewayd", "--bin", "gatewayd"]);
        if release {
            cmd.arg("--release");
        }
        if !cmd.status().context("cannot run cargo")?.success() {
            bail!("cargo build -p gatewayd failed");
        }
    }
    Ok(bin)
}

/// A running gatewayd and the listener addresses it logged.
pub struct Gatewayd {
    pub proc: Proc,
    pub listeners: HashMap<String, String>,
    pub started: Instant,
}

impl Gatewayd {
    /// Writes `config` (its `[log]` is added: JSON, warnings and the listener lines) and starts
    /// `gatewayd run` on it; returns once every listener of `wanted` is logged (at most
    /// `timeout`).
    pub fn start(
        dir: &Path,
        name: &str,
        config: &str,
        wanted: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let path = dir.join(format!("{name}.toml"));
        let text =
            format!("{config}\n[log]\nformat = \"json\"\nlevel = \"warn,gatewayd::wiring=info\"\n");
        std::fs::write(&path, text)?;
        let started = Instant::now();
        let mut child = Command::new(gatewayd_bin()?)
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start gatewayd")?;
        let stderr = child.stderr.take().context("gatewayd's stderr")?;
        let proc = Proc(child);
        let (tx, rx) = mpsc::channel::<(String, String)>();
        let label = name.to_owned();
        // GW_BENCH_LOG=1: every line gatewayd logs (warnings included) on this stderr
        let verbose = std::env::var_os("GW_BENCH_LOG").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if let (Some(l), Some(a)) = (v["listener"].as_str(), v["addr"].as_str()) {
                    let _ = tx.send((l.to_owned(), a.to_owned()));
                } else if v["level"].as_str() == Some("ERROR") || verbose {
                    eprintln!("{label}: {line}");
                }
            }
        });
        let mut listeners = HashMap::new();
        let deadline = Instant::now() + timeout;
        while wanted.iter().any(|w| !listeners.contains_key(*w)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((l, a)) => {
                    listeners.insert(l, a);
                }
                Err(_) => {
                    bail!("gatewayd {name} did not log its listeners {wanted:?} in {timeout:?}")
                }
            }
        }
        Ok(Self { proc, listeners, started })
    }

    pub fn addr(&self, listener: &str) -> anyhow::Result<SocketAddr> {
        self.listeners
            .get(listener)
            .with_context(|| format!("gatewayd has no {listener} listener"))?
            .parse()
            .context("listener address")
    }

    pub fn web(&self) -> String {
        format!("http://{}", self.listeners.get("web").map_or("", String::as_str))
    }

    /// `/api/v1/status` as JSON (with the API token the benchmark configs set).
    pub async fn status(&self) -> anyhow::Result<serde_json::Value> {
        let request = reqwest::Client::new()
            .get(format!("{}/api/v1/status", self.web()))
            .bearer_auth(BENCH_API_TOKEN);
        Ok(request.send().await?.error_for_status()?.json().await?)
    }

    /// Waits (at most `timeout`) until `/readyz` answers 200; returns how long since the start.
    pub async fn ready(&self, timeout: Duration) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/readyz", self.web());
        while Instant::now() < deadline {
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                return Ok(self.started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        bail!("gatewayd was not ready within {timeout:?}")
    }
}

/// The read-only API token every benchmark config sets (`[web] api_token`).
pub const BENCH_API_TOKEN: &str = "bench-api-token-0123";

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A mosquitto on a free port of 127.0.0.1 with `extra` config lines.
pub fn mosquitto(dir: &Path, name: &str, extra: &str) -> anyhow::Result<(Proc, SocketAddr)> {
    if !Path::new(MOSQUITTO).exists() {
        bail!("{MOSQUITTO} is missing (apt-get install mosquitto)");
    }
    for _ in 0..5 {
        let port = free_port();
        let conf = dir.join(format!("{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "user root\nlog_dest file {}/{name}.log\nset_tcp_nodelay true\n\
                 listener {port} 127.0.0.1\n{extra}\n",
                dir.display()
            ),
        )?;
        let child = Command::new(MOSQUITTO).arg("-c").arg(&conf).stderr(Stdio::null()).spawn()?;
        let mut p = Proc(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok((p, addr));
            }
            if p.0.try_wait()?.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = p.0.kill();
    }
    bail!("mosquitto {name} did not start (see {}/{name}.log)", dir.display())
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 =
        fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

/// The `p` quantile of `v` (sorted in place), in the unit of `v` divided by `scale`.
pub fn pct(v: &mut [u64], p: f64, scale: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)] as f64 / scale
}

/// p50 of `n` append + fdatasync rounds of 100 bytes in `dir`: the disk's commit latency.
pub fn fdatasync_p50(dir: &Path, n: usize) -> anyhow::Result<Duration> {
    let mut f = std::fs::File::create(dir.join("fsync-probe"))?;
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        f.write_all(&[0u8; 100])?;
        f.sync_data()?;
        t.push(s.elapsed());
    }
    t.sort();
    Ok(t[n / 2])
}

/// A markdown table, printed as it is built (so a long scenario shows progress).
pub struct Table {
    columns: usize,
}

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Self {
        println!("\n### {title}\n");
        println!("| {} |", headers.join(" | "));
        let rule: Vec<&str> =
            headers.iter().enumerate().map(|(i, _)| if i == 0 { "---" } else { "---:" }).collect();
        println!("|{}|", rule.join("|"));
        Self { columns: headers.len() }
    }

    pub fn row(&self, cells: &[String]) {
        debug_assert_eq!(cells.len(), self.columns);
        println!("| {} |", cells.join(" | "));
        let _ = std::io::stdout().flush();
    }
}

/// `n` with thousands separators.
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// `a / b` as "2.41×", or "–" when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() { format!("{:.2}×", a / b) } else { "–".to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(-12345.0), "-12,345");
    }

    #[test]
    fn percentiles_pick_the_sorted_position() {
        let mut v = vec![5, 1, 4, 2, 3, 6, 7, 8, 9, 10];
        assert_eq!(pct(&mut v, 0.5, 1.0), 6.0);
        assert_eq!(pct(&mut v, 0.99, 1.0), 10.0);
        assert!(pct(&mut [], 0.5, 1.0).is_nan());
        assert_eq!(ratio(3.0, 2.0), "1.50×");
        assert_eq!(ratio(3.0, 0.0), "–");
    }
}
