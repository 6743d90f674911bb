//! `gatewayd accounts`: the gateway's local accounts (locally provisioned sensors, technicians,
//! and accounts migrated from a legacy login service), kept in the data directory.
//!
//! A running gatewayd reads the accounts file at start-up; restart it to apply changes.

use std::{
    io::BufRead,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::Subcommand;
use gw_auth::{Accounts, chain::ACCOUNTS_FILE};
use gw_model::{Identity, Secret};

use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum AccountsCommand {
    /// Add an account `device@app` (the app defaults to gateway.application).
    Add {
        id: String,
        /// Read the password from this file; without it, from the first line of stdin.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// List the accounts, with those migrated from the legacy login service marked.
    List,
    /// An administrator's reset: a migrated account becomes a native one, optionally with a
    /// new password set at the same time.
    Reset {
        id: String,
        /// Also set a new password, read from this file.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Change an account's password (a migrated account becomes a native one).
    SetPassword {
        id: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Remove an account.
    Remove { id: String },
}

pub fn run(config_path: &Path, command: AccountsCommand) -> ExitCode {
    match execute(config_path, command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatewayd accounts: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(config_path: &Path, command: AccountsCommand) -> anyhow::Result<()> {
    let loaded = Config::load(config_path)?;
    let config = loaded.config;
    let params = config.auth.hash_params().context("auth parameters")?;
    std::fs::create_dir_all(&config.gateway.data_dir).with_context(|| {
        format!("cannot create data directory {}", config.gateway.data_dir.display())
    })?;
    let accounts = Accounts::open(&config.gateway.data_dir.join(ACCOUNTS_FILE), params)
        .context("cannot open the accounts file")?;
    let app = &config.gateway.application;
    let identity = |id: &str| {
        Identity::parse(id, Some(app)).with_context(|| format!("{id:?} is not device@app"))
    };
    match command {
        AccountsCommand::Add { id, password_file } => {
            let id = identity(&id)?;
            let technicians = &config.web.technician_app;
            if id.app() != app && id.app() != technicians {
                anyhow::bail!(
                    "{id}: an account is a sensor of the gateway's application ({app}) or a technician of web.technician_app ({technicians}); {} is neither",
                    id.app()
                );
            }
            accounts.add(&id, &password(password_file)?)?;
            let role = if id.app() == app { "sensor" } else { "technician" };
            println!("added {id} ({role})");
        }
        AccountsCommand::List => {
            for a in accounts.list() {
                let role = if a.app == app.as_str() {
                    "sensor"
                } else if a.app == config.web.technician_app.as_str() {
                    "technician"
                } else {
                    "unused: of no application this gateway serves"
                };
                let note =
                    if a.migrated { "  (migrated from the legacy login service)" } else { "" };
                println!("{}@{}  {role}{note}", a.name, a.app);
            }
        }
        AccountsCommand::Reset { id, password_file } => {
            let id = identity(&id)?;
            let new = password_file.map(|f| password(Some(f))).transpose()?;
            accounts.reset(&id, new.as_ref())?;
            println!("reset {id}");
        }
        AccountsCommand::SetPassword { id, password_file } => {
            let id = identity(&id)?;
            accounts.set_password(&id, &password(password_file)?)?;
            println!("password of {id} changed");
        }
        AccountsCommand::Remove { id } => {
            let id = identity(&id)?;
            accounts.remove(&id)?;
            println!("removed {id}");
        }
    }
    Ok(())
}

/// A password from a file, or from the first line of stdin.
fn password(file: Option<PathBuf>) -> anyhow::Result<Secret> {
    let text = match file {
        Some(f) => std::fs::read_to_string(&f)
            .with_context(|| format!("cannot read password file {}", f.display()))?,
        None => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).context("cannot read the password")?;
            line
        }
    };
    let pw = text.trim_end_matches(['\n', '\r']);
    anyhow::ensure!(!pw.is_empty(), "the password is empty");
    Ok(Secret::new(pw))
}
