//! The command line.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::{
    config::{self, Config, LogFormat},
    logging, sd_notify,
    supervisor::Outcome,
    wiring::Gateway,
};

#[derive(Parser, Debug)]
#[command(
    name = "gatewayd",
    version,
    about = "Edge protocol gateway: sensors in, cloud out, nothing lost"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway with a config file.
    Run {
        #[arg(long, short, default_value = "/etc/gatewayd/gatewayd.toml")]
        config: PathBuf,
    },
    /// Start an embedded dev cloud, a gateway wired to it and simulated sensors, and print
    /// where to look.
    Demo(crate::demo::DemoArgs),
    /// Print the documented default configuration.
    PrintConfig,
    /// Check a config file: exit 0, or print the problem (key and line) and exit 1.
    CheckConfig { file: PathBuf },
    /// Manage the gateway's local accounts (in the data directory of the config).
    Accounts {
        #[arg(long, short, default_value = "/etc/gatewayd/gatewayd.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: crate::accounts_cli::AccountsCommand,
    },
    /// Import an installer's provision.toml: secrets into the data partition, the config
    /// written, the file rewritten without secrets (docs/installing.md).
    Provision(crate::provision_cli::ProvisionArgs),
    /// Install signed update bundles into the inactive slot; show the slots.
    Update {
        #[arg(long, short, default_value = "/etc/gatewayd/gatewayd.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: crate::update::UpdateCommand,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // TLS everywhere uses rustls with the ring provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::PrintConfig => {
            print!("{}", config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gatewayd: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Accounts { config, command } => {
            private_files();
            crate::accounts_cli::run(&config, command)
        }
        Command::Update { config, command } => crate::update::cli(&config, command),
        Command::Provision(args) => crate::provision_cli::run(args),
        Command::Run { config } => {
            let loaded = match Config::load(&config) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("gatewayd: {e}");
                    return ExitCode::from(2);
                }
            };
            logging::init(loaded.config.log.format, &loaded.config.log.level);
            private_files();
            runtime_then(|| async move {
                let stop = StopSignal::install();
                let gateway = Gateway::start(loaded, CancellationToken::new()).await?;
                Ok(supervise(gateway, stop.wait()).await)
            })
        }
        Command::Demo(args) => {
            logging::init(LogFormat::Human, "info");
            private_files();
            runtime_then(|| crate::demo::run(args))
        }
    }
}

/// Everything the gateway creates (outbox, command queue, credential cache, accounts, keys,
/// bundles) holds secrets or sensor data: files 0600 and directories 0700 at most, whatever
/// the code creating them asks for.
fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
}

fn runtime_then<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatewayd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f()) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(cause = %format!("{e:#}"), "gatewayd failed");
            eprintln!("gatewayd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Tells systemd the gateway is ready, runs it until a signal or a failure, and maps the
/// outcome to the exit code.
pub async fn supervise(gateway: Gateway, stop: impl std::future::Future<Output = ()>) -> ExitCode {
    if let Err(e) = sd_notify::notify_ready() {
        tracing::warn!(cause = %e, "cannot notify systemd");
    }
    let outcome = gateway.run(stop).await;
    let _ = sd_notify::notify_stopping();
    match outcome {
        Outcome::Stopped => {
            tracing::info!("gateway stopped");
            ExitCode::SUCCESS
        }
        Outcome::Stragglers(names) => {
            tracing::warn!(stragglers = ?names, "gateway stopped; some components were abandoned");
            ExitCode::SUCCESS
        }
        Outcome::Failed { component, error } => {
            eprintln!("gatewayd: component {component} failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGINT and SIGTERM, caught from the moment this is made: a stop asked for during start-up
/// is honoured once the gateway runs, instead of killing the process half-way.
pub struct StopSignal {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignal {
    /// Installs the handlers. Needs a tokio runtime.
    pub fn install() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        if term.is_err() || int.is_err() {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
        }
        Self { term: term.ok(), int: int.ok() }
    }

    /// Resolves on the first SIGTERM or SIGINT (also one that came before this call).
    pub async fn wait(mut self) {
        let term = async {
            match self.term.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        let int = async {
            match self.int.as_mut() {
                Some(i) => i.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term => tracing::info!(signal = "SIGTERM", "stopping"),
            _ = int => tracing::info!(signal = "SIGINT", "stopping"),
        }
    }
}
