//! gatewayd, the edge protocol gateway daemon: reads one config file, opens its state, binds
//! its listeners and runs every component under one supervisor until it is told to stop or a
//! component fails.
//!
//! # Layout
//! - [`cli`]: the command line (`run`, `demo`, `print-config`, `check-config`, `accounts`).
//! - [`board`]: the board at runtime: watchdog, LEDs, button, factory reset.
//! - [`accounts_cli`]: `gatewayd accounts`: local accounts in the data directory.
//! - [`config`]: the config file, its sections and secret files.
//! - [`wiring`]: builds the gateway from its config in one top-to-bottom function.
//! - [`supervisor`]: runs components as tasks under one cancellation token.
//! - [`web`]: the web listener (health, readiness, status JSON).
//! - [`status`]: the technicians' status page, its live updates, and `/metrics`.
//! - [`commands`]: the command router (cloud intakes in, drivers out) and its durable queue.
//! - [`http_endpoint`]: southbound HTTP, `POST /v1/{channel}` (Drogue's device contract).
//! - [`demo`]: `gatewayd demo`, the gateway beside an embedded dev cloud.
//! - [`sd_notify`]: systemd readiness notification.
//! - [`logging`]: tracing set-up, human or JSON.
//! - [`web_tls`]: HTTPS for the web listener, with the push endpoint's client certificates.
//! - [`push`]: the command push endpoint's `[web]` settings, mounted on the web listener.
//! - [`provision_cli`]: `gatewayd provision`: imports an installer's provision.toml.
//! - [`update`]: `[update]`: signed bundles into the inactive slot, mark-good once healthy.

pub mod accounts_cli;
pub mod board;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod flow;
pub mod http_endpoint;
pub mod logging;
pub mod provision_cli;
pub mod push;
pub mod sd_notify;
pub mod status;
pub mod supervisor;
pub mod update;
pub mod web;
pub mod web_tls;
pub mod wiring;
