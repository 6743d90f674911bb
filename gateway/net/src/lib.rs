//! gatewayd's network plumbing, shared by every listener (MQTT, web, CoAP): what lets a
//! stranger on the site's network neither exhaust the gateway nor flood its log.
//!
//! - [`listen_tcp`]: a TCP listener with a deep accept queue (a site reconnects at once).
//! - [`Slots`]: connection slots bounded globally and per source address; a full pool evicts
//!   the oldest connection of the address that holds the most, so a newcomer always gets in
//!   and one address cannot hold the pool.
//! - [`fds`]: the process's file-descriptor limit raised to its hard limit, and a budget that
//!   keeps every listener's connection caps within it.
//! - [`Heartbeat`]: an accept loop's sign of life for the watchdog (busy is alive; dead or
//!   stuck is not).
//! - [`Throttle`]: one warning line per interval with a count and the top sources, instead of
//!   one line per refused connection or datagram.
//! - [`tls`]: TLS server configs from PEM files, the same for every listener.

pub mod fds;
mod heartbeat;
mod listen;
mod slots;
mod throttle;
pub mod tls;

pub use heartbeat::Heartbeat;
pub use listen::listen_tcp;
pub use slots::{Slot, Slots};
pub use throttle::{Throttle, flush_throttles};
