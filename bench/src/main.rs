//! `gw-bench`: gatewayd's benchmark suite. Every scenario measures gatewayd and a real peer
//! (mosquitto, its bridge, libcoap) side by side in the same run and prints markdown tables
//! with the ratios. See docs/benchmarks.md for the recorded results.
//!
//! `cargo run --release -p gw-bench -- all` (needs mosquitto, mosquitto_passwd and
//! coap-server-notls: the packages `.ci/run` installs).

mod coap;
mod drain;
mod footprint;
mod mqtt;
mod util;

use std::{process::ExitCode, time::Instant};

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "gw-bench",
    about = "gatewayd's benchmarks, side by side with mosquitto and libcoap"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Seconds each measured cell runs.
    #[arg(long, global = true, default_value_t = 2.0)]
    seconds: f64,
    /// Where the scenarios keep their data (a temporary directory under it); the disk under
    /// test for every durable path.
    #[arg(long, global = true)]
    dir: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Every scenario, one after another (about 10-20 minutes on 2 cores).
    All,
    /// MQTT QoS 1 forwarding: gatewayd vs a mosquitto bridge into an upstream mosquitto.
    Mqtt {
        /// Publisher counts (comma separated).
        #[arg(long, value_delimiter = ',', default_values_t = mqtt::PUBLISHERS)]
        publishers: Vec<usize>,
        /// QoS 1 publishes in flight per publisher (comma separated).
        #[arg(long, value_delimiter = ',', default_values_t = [mqtt::WINDOW])]
        windows: Vec<usize>,
        /// Payload sizes in bytes (comma separated).
        #[arg(long, value_delimiter = ',', default_values_t = mqtt::SIZES)]
        sizes: Vec<usize>,
        /// What the messages are forwarded into.
        #[arg(long, value_enum, default_value = "mosquitto")]
        upstream: mqtt::Upstream,
    },
    /// CoAP CON POST: gatewayd vs libcoap's coap-server.
    Coap {
        /// Sensor counts, each with one request in flight (comma separated).
        #[arg(long, value_delimiter = ',', default_values_t = [32, 1000])]
        sensors: Vec<usize>,
    },
    /// MQTT forwarding at offered rates (paced): gatewayd vs a mosquitto bridge, each pinned to
    /// one core, the load on the other.
    MqttPaced {
        /// Offered msg/s over all publishers (comma separated).
        #[arg(long, value_delimiter = ',', default_values_t = [20_000.0, 50_000.0, 80_000.0, 100_000.0, 130_000.0])]
        rates: Vec<f64>,
        #[arg(long, default_value_t = 10)]
        publishers: usize,
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// The CPUs gatewayd may use (taskset's list); "0,1" gives it both cores, shared
        /// with the load.
        #[arg(long, default_value = "0")]
        gatewayd_cpus: String,
    },
    /// Draining a backlog taken in while the upstream was down.
    Drain {
        #[arg(long, default_value_t = 1_000_000)]
        messages: usize,
        /// Live msg/s (all publishers) that keep arriving while the backlog drains.
        #[arg(long)]
        live: Option<f64>,
    },
    /// Memory, start-up, reconnect storm and binary size.
    Footprint {
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        #[arg(long, default_value_t = 1_000)]
        sensors: usize,
    },
}

fn describe_machine() {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = read("/proc/meminfo").lines().next().unwrap_or_default().to_owned();
    let kernel = read("/proc/sys/kernel/osrelease");
    let load = read("/proc/loadavg");
    println!(
        "# gw-bench\n\nMachine: {cores} cores ({cpu}), {}, Linux {}; load average at start: {}",
        mem.split_whitespace().skip(1).collect::<Vec<_>>().join(" "),
        kernel.trim(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let base = cli.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new().prefix("gw-bench-").tempdir_in(base)?;
    let d = dir.path();
    let secs = cli.seconds;
    describe_machine();
    let all_cpus = format!("0-{}", std::thread::available_parallelism().map_or(1, |n| n.get()) - 1);
    let bin = util::gatewayd_bin()?;
    println!("gatewayd: {}\n", bin.display());
    let coap_dir = d.join("coap");
    std::fs::create_dir_all(&coap_dir)?;
    match cli.scenario {
        Scenario::All => {
            let t0 = Instant::now();
            mqtt::scenario(d, secs, &mqtt::Matrix::default()).await?;
            let cd = coap_dir.clone();
            tokio::task::spawn_blocking(move || coap::scenario(&cd, secs.max(3.0), &[32, 1000]))
                .await??;
            drain::scenario(d, 1_000_000, None).await?;
            // the pinned scenarios left this process on CPU 1: the footprint's gatewayd (and
            // its storm of logins) gets every core again
            mqtt::pin(std::process::id(), &all_cpus)?;
            footprint::scenario(d, 10_000, 1_000).await?;
            println!("\nall scenarios: {:.0} s", t0.elapsed().as_secs_f64());
        }
        Scenario::Mqtt { publishers, windows, sizes, upstream } => {
            let m = mqtt::Matrix { publishers, windows, sizes, upstream };
            mqtt::scenario(d, secs, &m).await?
        }
        Scenario::Coap { sensors } => {
            tokio::task::spawn_blocking(move || coap::scenario(&coap_dir, secs, &sensors)).await??
        }
        Scenario::MqttPaced { rates, publishers, window, size, gatewayd_cpus } => {
            mqtt::paced(d, secs, &rates, publishers, window, size, &gatewayd_cpus).await?
        }
        Scenario::Drain { messages, live } => drain::scenario(d, messages, live).await?,
        Scenario::Footprint { devices, sensors } => {
            footprint::scenario(d, devices, sensors).await?
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("gw-bench: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gw-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
