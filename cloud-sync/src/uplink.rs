//! The uplink loop every kind of cloud shares.
//!
//! It pulls fair batches from the outbox (a device has at most one batch in flight), sends
//! each device's records of a batch one after the other, in order, and different devices
//! concurrently, up to `concurrency` at once. Each record gets one verdict:
//!
//! | the cloud said                         | outbox    | counted as      |
//! |----------------------------------------|-----------|-----------------|
//! | accepted (2xx, PUBACK)                 | ack       | sent            |
//! | refused the device (403)               | park      | parked          |
//! | rejected the message for good (406, other 4xx) | ack | dead letter  |
//! | transient (connect, timeout, 5xx, 429) | nack      | failure, backoff |
//!
//! After a refusal or a transient failure the device's later records of that batch are
//! nacked unsent, so nothing overtakes. Parked devices are released every `parked_retry`.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use gw_model::{Identity, Secret, Telemetry};
use gw_store::{Acker, OutboxReader, Seq};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    CloudConfig, CloudError, CloudKind, UplinkStatus, backoff::Backoff, drogue_http::DrogueHttp,
};

/// What the cloud made of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Permanently rejected: dead-lettered.
    Rejected(String),
    /// The cloud refuses this device (for now): parked.
    Refused(String),
    /// Try again later.
    Transient(String),
}

/// Sends one record to the cloud as its sensor.
pub trait Sender: Send + Sync + 'static {
    fn send(&self, t: &Telemetry) -> impl Future<Output = Verdict> + Send;
}

/// An uplink of the configured kind.
pub struct Uplink {
    kind: Kind,
    status: Arc<UplinkStatus>,
    config: CloudConfig,
}

enum Kind {
    DrogueHttp(Arc<DrogueHttp>),
}

impl Uplink {
    /// Builds the uplink; `gateway` is the gateway's own identity in the cloud.
    pub fn new(
        config: &CloudConfig,
        gateway: &Identity,
        password: Secret,
    ) -> Result<Self, CloudError> {
        config.validate()?;
        let (kind, label) = match config.kind {
            CloudKind::DrogueHttp => (
                Kind::DrogueHttp(Arc::new(DrogueHttp::new(config, gateway, password)?)),
                "drogue-http",
            ),
        };
        let status = Arc::new(UplinkStatus::new(label, config.url.clone()));
        Ok(Self { kind, status, config: config.clone() })
    }

    pub fn status(&self) -> Arc<UplinkStatus> {
        Arc::clone(&self.status)
    }

    /// Drains the outbox until `token` is cancelled. Records in flight at that moment stay
    /// unacknowledged in the outbox and are sent again after the restart.
    pub async fn run(
        self,
        reader: OutboxReader,
        token: CancellationToken,
    ) -> Result<(), CloudError> {
        let Self { kind, status, config } = self;
        match kind {
            Kind::DrogueHttp(sender) => drive(sender, reader, status, &config, token).await,
        }
    }
}

/// Backoff shared by the request tasks: the first transient failure after a success starts
/// a pause; the loop waits it out before handing out more records.
struct Pause {
    backoff: Backoff,
    until: Option<Instant>,
}

impl Pause {
    fn failed(&mut self) {
        let now = Instant::now();
        if self.until.is_none_or(|u| u <= now) {
            self.until = Some(now + self.backoff.next_delay());
        }
    }

    fn succeeded(&mut self) {
        self.backoff.reset();
    }
}

fn lock(p: &Mutex<Pause>) -> std::sync::MutexGuard<'_, Pause> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

async fn drive<S: Sender>(
    sender: Arc<S>,
    mut reader: OutboxReader,
    status: Arc<UplinkStatus>,
    config: &CloudConfig,
    token: CancellationToken,
) -> Result<(), CloudError> {
    let acker = reader.acker();
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let pause = Arc::new(Mutex::new(Pause {
        backoff: Backoff::new(config.retry_min, config.retry_max),
        until: None,
    }));
    let mut tasks = JoinSet::new();
    tasks.spawn(release_parked(
        acker.clone(),
        Arc::clone(&status),
        config.parked_retry,
        token.clone(),
    ));

    loop {
        while tasks.try_join_next().is_some() {}
        let first = tokio::select! {
            _ = token.cancelled() => break,
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let until = lock(&pause).until;
        if let Some(until) = until.filter(|u| *u > Instant::now()) {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep_until(until) => {}
            }
        }
        let max = permits.available_permits() + 1;
        let batch = tokio::select! {
            _ = token.cancelled() => break,
            b = reader.next(max) => b?,
        };
        let mut first = Some(first);
        for chain in by_device(batch) {
            let permit = match first.take() {
                Some(p) => p,
                None => match Arc::clone(&permits).try_acquire_owned() {
                    Ok(p) => p,
                    Err(_) => Arc::clone(&permits).acquire_owned().await.map_err(|_| {
                        CloudError::Config { key: "concurrency", reason: "semaphore closed".into() }
                    })?,
                },
            };
            let (sender, acker, status, pause) =
                (Arc::clone(&sender), acker.clone(), Arc::clone(&status), Arc::clone(&pause));
            tasks.spawn(async move {
                send_chain(&*sender, &acker, &status, &pause, chain).await;
                drop(permit);
            });
        }
    }
    tasks.shutdown().await;
    Ok(())
}

/// Splits a batch into per-device chains, keeping each device's records in order.
fn by_device(batch: Vec<(Seq, Telemetry)>) -> Vec<Vec<(Seq, Telemetry)>> {
    let mut chains: Vec<Vec<(Seq, Telemetry)>> = Vec::new();
    for (seq, t) in batch {
        match chains.iter_mut().find(|c| c[0].1.device == t.device && c[0].1.app == t.app) {
            Some(chain) => chain.push((seq, t)),
            None => chains.push(vec![(seq, t)]),
        }
    }
    chains
}

async fn send_chain<S: Sender>(
    sender: &S,
    acker: &Acker,
    status: &UplinkStatus,
    pause: &Mutex<Pause>,
    chain: Vec<(Seq, Telemetry)>,
) {
    let mut records = chain.into_iter();
    while let Some((seq, t)) = records.next() {
        match sender.send(&t).await {
            Verdict::Accepted => {
                acker.ack(seq);
                status.record_sent();
                lock(pause).succeeded();
            }
            Verdict::Rejected(why) => {
                acker.ack(seq);
                tracing::warn!(device = %t.device, app = %t.app, channel = %t.channel, cause = %why, "cloud rejected a message; dead-lettered");
                status.record_dead_letter(why);
            }
            Verdict::Refused(why) => {
                acker.park(seq);
                records.for_each(|(s, _)| acker.nack(s));
                tracing::warn!(device = %t.device, app = %t.app, cause = %why, "cloud refused the device; its messages are parked");
                status.record_parked(format!("{}@{}", t.device, t.app), why);
                return;
            }
            Verdict::Transient(why) => {
                acker.nack(seq);
                records.for_each(|(s, _)| acker.nack(s));
                tracing::debug!(device = %t.device, cause = %why, "send failed; will retry");
                status.record_failure(why);
                lock(pause).failed();
                return;
            }
        }
    }
}

async fn release_parked(
    acker: Acker,
    status: Arc<UplinkStatus>,
    every: Duration,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {
                if !status.snapshot().parked_devices.is_empty() {
                    tracing::info!("retrying parked devices");
                    acker.unpark_all();
                    status.clear_parked();
                }
            }
        }
    }
}
