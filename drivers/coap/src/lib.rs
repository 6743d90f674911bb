//! gatewayd's southbound CoAP driver: the UDP endpoint battery sensors talk to as they would
//! to Drogue Cloud's CoAP endpoint (contracts/drogue-cloud.md §3). A sensor sends
//! `POST /v1/<channel>` with option 4209 (`Basic base64(device@app:password)`); it hears 2.04
//! only once the gateway's [`Ingest`](gw_model::Ingest) has made the message durable, or 2.05
//! with the command name in option 4210 when it asked with `ct=<seconds>` and a command was
//! waiting or came. The protocol rules (RFC 7252 reliability and de-duplication, RFC 7959
//! block-wise transfer, limits) live in a pure [`Core`]: datagrams, answers and time in,
//! datagrams and jobs out. The socket loop around it is thin, and its datagram
//! [`Transport`] is a trait so DTLS can wrap it later.
//!
//! # Layout
//! - [`config`]: the `[coap]` config section, [`CoapConfig`] (every key documented there).
//! - [`protocol`]: the pure protocol state machine, [`Core`], its [`Job`]s and [`Answer`]s.
//! - [`request`]: Drogue's publish contract read from a request ([`Publish`], [`Refusal`]).
//! - [`wire`]: the message format on coap-lite: decoding with RFC 7252's checks, Block
//!   options, Content-Format numbers.
//! - [`server`]: [`CoapEndpoint`]: the socket loop, the jobs, shutdown.
//! - [`stats`]: the endpoint's counters, [`Stats`].
//! - [`error`]: the crate's one error type, [`CoapError`].

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod error;
pub mod protocol;
pub mod request;
pub mod server;
pub mod stats;
pub mod wire;

pub use config::CoapConfig;
pub use error::CoapError;
pub use protocol::{Answer, Core, CoreConfig, Job, JobId, Output};
pub use request::{Publish, Refusal};
pub use server::{CoapEndpoint, Transport};
pub use stats::{Stats, StatsSnapshot};
