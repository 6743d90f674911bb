//! `devcloud`: the dev cloud as its own process. Prints `devcloud listening on URL` as its
//! first line on stdout and `devcloud mqtt on mqtt://HOST:PORT` as its second, then serves
//! until SIGINT or SIGTERM.

use std::{io::Write, net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use gw_devcloud::{DevCloud, Seed};
use tokio_util::sync::CancellationToken;

/// A Drogue-Cloud-compatible cloud for development, demos and tests.
#[derive(Debug, Parser)]
#[command(name = "devcloud", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address of the device MQTT endpoint; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    mqtt_listen: SocketAddr,
    /// Seed file with users, applications and devices (`.json` or TOML).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// An extra API user, `name:token`; may be repeated.
    #[arg(long = "user", value_name = "NAME:TOKEN")]
    users: Vec<String>,
    /// Also honour the providers RFC (`spec.providers`, `spec.providerSelector`) for `as=`
    /// and command routing; Drogue Cloud reads only `spec.gatewaySelector.matchNames`.
    #[arg(long)]
    providers_rfc: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut seed = match &args.seed {
        Some(path) => Seed::load(path)?,
        None => Seed::new(),
    };
    if args.providers_rfc {
        seed = seed.providers_rfc(true);
    }
    for user in &args.users {
        let (name, token) =
            user.split_once(':').with_context(|| format!("--user {user:?} is not NAME:TOKEN"))?;
        seed = seed.user(name, token);
    }
    let shutdown = CancellationToken::new();
    let cloud =
        DevCloud::start_with_mqtt(args.listen, args.mqtt_listen, seed, shutdown.clone()).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "devcloud listening on {}", cloud.url())?;
        writeln!(out, "devcloud mqtt on {}", cloud.mqtt_url())?;
        out.flush()?;
    }
    wait_for_signal().await?;
    shutdown.cancel();
    cloud.stopped().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot wait for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
