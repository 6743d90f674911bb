//! The device-facing MQTT endpoint (contracts/drogue-cloud.md §2): MQTT 3.1.1 and 5 over
//! plain TCP, Drogue's CONNECT credentials, one live session per device, the `drogue/v1`
//! dialect for publishing (as yourself or on behalf of a proxied device), command delivery
//! from the command bus, keep-alive and last will. Built on `gw-driver-mqtt`'s codec.
//!
//! Deliberate choices where Drogue's behaviour is unconfirmed: on MQTT 3.1.1 a rejected QoS 1
//! PUBLISH closes the connection (3.1.1 has no negative PUBACK); a rejected QoS 0 PUBLISH is
//! dropped. QoS 2 is not supported: it closes the connection (v5: DISCONNECT 0x9B). Only the
//! `drogue/v1` dialect is implemented (`plainTopic` is not).

mod session;
mod topics;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinHandle};

use crate::http::AppState;

/// The largest packet accepted or sent (fixed header included): Drogue's `MQTT__MAX_SIZE`
/// default of 16,384 bytes of remaining length, plus the fixed header (at most 4 bytes at
/// this size). Above it Drogue closes the connection (v5: DISCONNECT 0x95 first).
const MAX_PACKET_SIZE: usize = 16 * 1024 + 4;
/// Packets queued towards one client before commands for it are dropped.
const OUTGOING_QUEUE: usize = 64;
/// How long a new connection may take to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the writer may take to flush the last packets of a closing session.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The per-session `authorize_as` cache: entries and time to live (`session/cache.rs`).
const AS_CACHE_SIZE: usize = 128;
const AS_CACHE_TTL: Duration = Duration::from_secs(30);

/// Devices with a live session, by `(app, device)` canonical names.
#[derive(Default)]
pub(crate) struct Sessions {
    live: Mutex<HashSet<(String, String)>>,
}

impl Sessions {
    /// Claims the device's one session slot; `None` if it is occupied ("State still
    /// occupied").
    fn claim(self: &Arc<Self>, app: &str, device: &str) -> Option<SessionSlot> {
        let key = (app.to_owned(), device.to_owned());
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.insert(key.clone()).then(|| SessionSlot { sessions: self.clone(), key })
    }
}

/// A claimed session slot, released on drop.
struct SessionSlot {
    sessions: Arc<Sessions>,
    key: (String, String),
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.sessions.live.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.key);
    }
}

/// Accepts connections on `listener` until shutdown; each runs as its own task.
pub(crate) fn serve(listener: TcpListener, state: AppState) -> JoinHandle<()> {
    let sessions = Arc::new(Sessions::default());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = state.shutdown.cancelled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let (state, sessions) = (state.clone(), sessions.clone());
                    tokio::spawn(session::run(stream, peer, state, sessions));
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "MQTT accept failed");
                    // e.g. out of file descriptors: do not spin
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// `mqtt://host:port` for a bound address.
pub(crate) fn url(addr: SocketAddr) -> String {
    format!("mqtt://{addr}")
}
