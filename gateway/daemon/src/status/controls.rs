//! The running gateway's handles behind the actions page: registry resync, release of parked
//! devices, uplink restart.

use std::sync::Arc;

use gw_cloud_sync::{ResyncHandle, UplinkStatus};
use gw_store::Acker;
use tokio::sync::Notify;

use super::Controls;

/// The handles the wiring collects; a missing one makes its action answer "not available".
#[derive(Default)]
pub struct GatewayControls {
    pub resync: Option<ResyncHandle>,
    /// The outbox's acker and the uplink's status, to release parked devices.
    pub parked: Option<(Acker, Arc<UplinkStatus>)>,
    /// Woken to restart the uplink (the wiring's uplink task waits on it).
    pub restart_uplink: Option<Arc<Notify>>,
    /// The LED task's identify requests, and how long an identify blink lasts.
    pub identify: Option<(tokio::sync::mpsc::Sender<std::time::Duration>, std::time::Duration)>,
}

impl Controls for GatewayControls {
    fn resync(&self) -> bool {
        self.resync.as_ref().map(ResyncHandle::resync).is_some()
    }

    fn retry_parked(&self) -> bool {
        let Some((acker, status)) = &self.parked else { return false };
        // Status first, as the uplink's own periodic release does.
        status.clear_parked();
        acker.unpark_all();
        true
    }

    fn restart_uplink(&self) -> bool {
        self.restart_uplink.as_ref().map(|n| n.notify_one()).is_some()
    }

    fn identify(&self) -> bool {
        self.identify.as_ref().is_some_and(|(tx, every)| tx.try_send(*every).is_ok())
    }
}
