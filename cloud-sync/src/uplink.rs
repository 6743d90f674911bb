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
//! | transient (connect, 5xx, 429)          | nack      | failure, backoff |
//! | unknown (timeout after sending, connection lost in flight) | nack | failure, possible duplicate, backoff |
//! | refused the gateway itself (403 that a probe of the gateway's own login confirms) | nack | gateway refused, backoff |
//!
//! After a refusal or a transient failure the device's later records of that batch are
//! nacked unsent, so nothing overtakes. Parked devices are released every `parked_retry`.
//!
//! A sender whose transport keeps order across records in flight (one MQTT connection) is
//! *pipelined*: a device's chain goes out at once, in order, and each record holds one of the
//! `concurrency` permits until its verdict. Otherwise a chain holds one permit and its records
//! go one after another.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use gw_model::{AppId, Identity, Secret, Telemetry};
use gw_store::{Acker, OutboxReader, Seq};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, oneshot},
    task::JoinSet,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    CloudConfig, CloudError, CloudKind, UplinkStatus,
    backoff::Backoff,
    commands::CommandIntake,
    drogue_http::DrogueHttp,
    mqtt::{Connection, Inbox, Publisher, inbox::CommandTopic},
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
    /// The record went out but its fate is unknown (a timeout after the request was sent, a
    /// connection lost before the acknowledgement): tried again like a transient failure and
    /// counted as a possible duplicate, since the cloud may have taken it.
    Unknown(String),
    /// The cloud refused the gateway's own credentials, not this device: nothing is parked,
    /// every record waits (with backoff) until the gateway may log in again.
    GatewayRefused(String),
}

/// Sends one record to the cloud as its sensor.
pub trait Sender: Send + Sync + 'static {
    /// True when the transport keeps order across records in flight, so a device's records
    /// may all be in flight at once (see [`pipeline`](Self::pipeline)).
    const PIPELINED: bool = false;

    fn send(&self, t: &Telemetry) -> impl Future<Output = Verdict> + Send;

    /// For a pipelined sender: puts all of one device's records in flight now, in order, and
    /// returns one verdict receiver per record. `None` (the default): records go one after
    /// another through [`send`](Self::send).
    fn pipeline(&self, _chain: &[&Telemetry]) -> Option<Vec<oneshot::Receiver<Verdict>>> {
        None
    }
}

/// The verdict of a pipelined record; a sender dropped unanswered means its fate is unknown.
pub(crate) fn verdict_of(r: Result<Verdict, oneshot::error::RecvError>) -> Verdict {
    r.unwrap_or_else(|_| Verdict::Unknown("the connection dropped the record".into()))
}

/// An uplink of the configured kind.
pub struct Uplink {
    kind: Kind,
    status: Arc<UplinkStatus>,
    config: CloudConfig,
    gateway: Identity,
}

enum Kind {
    DrogueHttp(Box<DrogueHttp>),
    Mqtt(Arc<Publisher>, Box<Connection>),
}

impl Uplink {
    /// Builds the uplink; `gateway` is the gateway's own identity in the cloud.
    pub fn new(
        config: &CloudConfig,
        gateway: &Identity,
        password: Secret,
    ) -> Result<Self, CloudError> {
        let status = Arc::new(UplinkStatus::new(config.kind.label(), config.url.clone()));
        Self::with_status(config, gateway, password, status)
    }

    /// Builds the uplink reporting into an existing `status`: a restarted uplink (new client,
    /// new connection) keeps the counters and state the status page shows.
    pub fn with_status(
        config: &CloudConfig,
        gateway: &Identity,
        password: Secret,
        status: Arc<UplinkStatus>,
    ) -> Result<Self, CloudError> {
        config.validate()?;
        let kind = match config.kind {
            CloudKind::DrogueHttp => {
                Kind::DrogueHttp(Box::new(DrogueHttp::new(config, gateway, password)?))
            }
            CloudKind::DrogueMqtt | CloudKind::Mqtt => {
                let (publisher, connection) =
                    Publisher::new(config, gateway, password, Arc::clone(&status))?;
                Kind::Mqtt(Arc::new(publisher), Box::new(connection))
            }
        };
        Ok(Self { kind, status, config: config.clone(), gateway: gateway.clone() })
    }

    /// Takes the cloud's commands and hands them to `intake`: `drogue-mqtt` subscribes
    /// `command/inbox/#` after every CONNACK, `mqtt` its `command_topic` if one is set;
    /// `drogue-http` submits the commands that come back on publishes that waited (`ct=`).
    pub fn with_commands(mut self, intake: CommandIntake) -> Self {
        let topic = match self.config.kind {
            CloudKind::DrogueMqtt => Some(CommandTopic::drogue(&self.gateway)),
            // checked when the config was loaded
            CloudKind::Mqtt => {
                self.config.command_topic().ok().flatten().map(|t| t.for_gateway(&self.gateway))
            }
            CloudKind::DrogueHttp => None,
        };
        match (&mut self.kind, topic) {
            (Kind::DrogueHttp(sender), _) => sender.set_commands(intake),
            (Kind::Mqtt(_, connection), Some(topic)) => {
                connection.set_inbox(Inbox {
                    intake,
                    gateway: self.gateway.clone(),
                    topic: Arc::new(topic),
                });
            }
            (Kind::Mqtt(..), None) => {}
        }
        self
    }

    /// `drogue-http`: the gateway polls the cloud for its own commands with a heartbeat
    /// (`command_poll`, `heartbeat_channel`); commands of `poll.commands`' names go to the
    /// intake given to [`Uplink::with_commands`]. Other kinds take the gateway's commands
    /// their own way (drogue-mqtt's inbox) or not at all.
    pub fn with_gateway_poll(mut self, poll: crate::drogue_http::GatewayPoll) -> Self {
        if let Kind::DrogueHttp(sender) = &mut self.kind {
            sender.set_gateway_poll(poll);
        }
        self
    }

    /// The cloud hands this gateway's commands to its push endpoint: `drogue-http` publishes
    /// never wait upstream (`ct=`), since Drogue then answers no wait with a command and the
    /// device's later records would wait behind it.
    pub fn without_command_waits(mut self) -> Self {
        if let Kind::DrogueHttp(sender) = &mut self.kind {
            sender.set_relay_waits(false);
        }
        self
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
        let Self { kind, status, config, gateway } = self;
        let app = gateway.app();
        match kind {
            Kind::DrogueHttp(sender) => {
                let sender = Arc::new(*sender);
                let stop = token.child_token();
                let poll = {
                    let (sender, stop) = (Arc::clone(&sender), stop.clone());
                    tokio::spawn(async move { sender.poll_own_commands(stop).await })
                };
                let result = drive(sender, reader, status, &config, app, token).await;
                stop.cancel();
                let _ = poll.await;
                result
            }
            Kind::Mqtt(publisher, connection) => {
                let stop = token.child_token();
                let task = tokio::spawn(connection.run(stop.clone()));
                let result = drive(publisher, reader, status, &config, app, token).await;
                stop.cancel();
                let _ = task.await;
                result
            }
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
    app: &AppId,
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
        (config.parked_retry, config.parked_max_age),
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
        // The gateway acts for its own application only: a record of another one (written
        // before that was enforced at login) is never sent under the gateway's name.
        let batch: Vec<_> = batch
            .into_iter()
            .filter_map(|(seq, t)| {
                if t.app == *app {
                    return Some((seq, t));
                }
                let why =
                    format!("a record of application {}; this gateway acts for {app} only", t.app);
                settle(&acker, &status, &pause, seq, &t, Verdict::Rejected(why));
                None
            })
            .collect();
        let mut first = Some(first);
        for chain in by_device(batch) {
            // A pipelined chain holds a permit per record; the batch fits the free permits.
            let wanted = if S::PIPELINED { chain.len() } else { 1 };
            let permit = match first.take() {
                Some(mut p) => {
                    if wanted > 1 {
                        p.merge(acquire(&permits, wanted - 1).await?);
                    }
                    p
                }
                None => acquire(&permits, wanted).await?,
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
    // Records whose requests were cut short go back, so an uplink started again on the same
    // outbox is handed them.
    acker.release_in_flight();
    Ok(())
}

async fn acquire(permits: &Arc<Semaphore>, n: usize) -> Result<OwnedSemaphorePermit, CloudError> {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    Arc::clone(permits)
        .acquire_many_owned(n)
        .await
        .map_err(|_| CloudError::Config { key: "concurrency", reason: "semaphore closed".into() })
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
    let refs: Vec<&Telemetry> = chain.iter().map(|(_, t)| t).collect();
    let mut pipelined =
        if S::PIPELINED { sender.pipeline(&refs) } else { None }.map(Vec::into_iter);
    let mut records = chain.iter();
    while let Some((seq, t)) = records.next() {
        let verdict = match pipelined.as_mut().and_then(Iterator::next) {
            Some(rx) => verdict_of(rx.await),
            None => sender.send(t).await,
        };
        if !settle(acker, status, pause, *seq, t, verdict) {
            // Nothing of this device may overtake: its later records go back to the outbox
            // (a pipelined one may already be out; then it is a bounded duplicate).
            records.for_each(|(s, _)| acker.nack(*s));
            return;
        }
    }
}

/// Applies one verdict; false when the device's chain must stop here.
fn settle(
    acker: &Acker,
    status: &UplinkStatus,
    pause: &Mutex<Pause>,
    seq: Seq,
    t: &Telemetry,
    verdict: Verdict,
) -> bool {
    // The status is updated before the outbox hears the verdict, so whoever sees a record
    // gone from the outbox also sees it counted.
    match verdict {
        Verdict::Accepted => {
            status.record_sent();
            lock(pause).succeeded();
            acker.ack(seq);
            true
        }
        Verdict::Rejected(why) => {
            tracing::warn!(device = %t.device, app = %t.app, channel = %t.channel, cause = %why, "cloud rejected a message; dead-lettered");
            status.record_dead_letter(format!("{}@{}", t.device, t.app), why);
            acker.ack(seq);
            true
        }
        Verdict::Refused(why) => {
            tracing::warn!(device = %t.device, app = %t.app, cause = %why, "cloud refused the device; its messages are parked");
            status.record_parked(format!("{}@{}", t.device, t.app), why);
            acker.park(seq);
            false
        }
        Verdict::Transient(why) => {
            tracing::debug!(device = %t.device, cause = %why, "send failed; will retry");
            status.record_failure(why);
            lock(pause).failed();
            acker.nack(seq);
            false
        }
        Verdict::Unknown(why) => {
            tracing::debug!(device = %t.device, cause = %why, "send outcome unknown; will retry (possible duplicate)");
            status.record_possible_duplicate();
            status.record_failure(why);
            lock(pause).failed();
            acker.nack(seq);
            false
        }
        Verdict::GatewayRefused(why) => {
            if !status.gateway_refused() {
                tracing::error!(cause = %why, "the cloud refused the gateway's own credentials; every message waits until they are fixed");
            }
            status.record_gateway_refused(why);
            lock(pause).failed();
            acker.nack(seq);
            false
        }
    }
}

async fn release_parked(
    acker: Acker,
    status: Arc<UplinkStatus>,
    (every, max_age): (Duration, Duration),
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {
                if !max_age.is_zero() {
                    for (app, device, records) in acker.expire_parked(max_age) {
                        tracing::warn!(%app, %device, records,
                            max_age = %humantime::format_duration(max_age),
                            "records of a device the cloud keeps refusing expired: dropped");
                    }
                }
                if !status.snapshot().parked_devices.is_empty() {
                    tracing::info!("retrying parked devices");
                    // Status first: a device parked between the two calls stays listed (and is
                    // released next time) instead of staying parked unlisted.
                    status.clear_parked();
                    acker.unpark_all();
                }
            }
        }
    }
}
