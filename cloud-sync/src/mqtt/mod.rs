//! The MQTT uplinks: Drogue Cloud's MQTT endpoint (`<channel>/<device>` as the gateway) and
//! any MQTT 3.1.1 broker (topic templates), both QoS 1 on one connection.
//!
//! [`Publisher`] is the uplink's [`Sender`]: it turns records into PUBLISH packets and hands
//! each device's chain to the connection task in one piece; each record's verdict comes back
//! on a oneshot when its PUBACK arrives (or as transient when the connection drops).
//! [`session`] holds the protocol state, [`connection`] the thin socket loop around it.
//!
//! Both take commands given a command intake: the Drogue kind subscribes `command/inbox/#`
//! after every CONNACK and routes `command/inbox/<device>/<cmd>`; the generic kind does the
//! same with its `command_topic` template, if one is set ([`inbox`]).

pub mod connection;
pub mod inbox;
pub mod session;
pub mod wire;

use gw_model::{Identity, Secret, Telemetry};
use rumqttc::mqttbytes::{
    QoS,
    v4::{Connect, Publish},
};
use tokio::sync::{mpsc, oneshot};

use crate::{
    CloudConfig, CloudError, CloudKind,
    backoff::Backoff,
    topic::TopicTemplate,
    uplink::{Sender, Verdict},
};
pub use connection::Connection;
pub(crate) use connection::Inbox;

/// A device's records, in order, each with the way back for its verdict.
pub(crate) type Chain = Vec<(Publish, oneshot::Sender<Verdict>)>;

/// The largest PUBLISH the uplink sends (MQTT's limit is 256 MiB; sensors' messages are far
/// smaller): a larger record is dead-lettered, never retried.
const MAX_PACKET: usize = 16 * 1024 * 1024;

/// Keep-alive announced in CONNECT; the connection pings after this long idle.
pub const KEEP_ALIVE_SECS: u16 = 30;

enum Topics {
    /// Drogue's `drogue/v1` dialect: `<channel>/<device>`, publishing on the device's behalf.
    Drogue,
    Template(TopicTemplate),
}

pub struct Publisher {
    topics: Topics,
    /// MQTT 5: each PUBLISH carries the record's content type and receive time.
    protocol: wire::Protocol,
    /// `[cloud] max_message`: a larger PUBLISH is dead-lettered, never sent (Drogue closes the
    /// connection on one, so it would be retried forever).
    max_packet: usize,
    gateway: Identity,
    chains: mpsc::Sender<Chain>,
}

impl Publisher {
    /// The publisher and the connection task that must run beside the uplink loop.
    pub fn new(
        config: &CloudConfig,
        gateway: &Identity,
        password: Secret,
        status: std::sync::Arc<crate::UplinkStatus>,
    ) -> Result<(Self, Connection), CloudError> {
        let broker = config.broker()?;
        let (topics, login) = match config.kind {
            CloudKind::Mqtt => {
                let password = config.has_password().then(|| password.expose().to_owned());
                let login = config.username.clone().map(|u| (u, password.unwrap_or_default()));
                (Topics::Template(config.topic_template()?), login)
            }
            _ => (Topics::Drogue, Some((gateway.to_string(), password.expose().to_owned()))),
        };
        let client_id = config.client_id.clone().unwrap_or_else(|| gateway.to_string());
        let mut connect = Connect::new(client_id);
        connect.keep_alive = KEEP_ALIVE_SECS;
        connect.clean_session = true;
        if let Some((user, password)) = login {
            connect.set_login(user, password);
        }
        let tls = if broker.tls { Some(crate::tls::client_config(config)?) } else { None };
        // Every chain holds at least one of `concurrency` permits, so this never fills.
        let (chains, rx) = mpsc::channel(config.concurrency);
        let connection = Connection::new(
            broker,
            tls,
            (config.protocol, connect),
            config.timeout,
            Backoff::new(config.retry_min, config.retry_max),
            rx,
            status,
        )?;
        let max_packet =
            usize::try_from(config.max_message()).unwrap_or(MAX_PACKET).min(MAX_PACKET);
        let protocol = config.protocol;
        Ok((Self { topics, protocol, max_packet, gateway: gateway.clone(), chains }, connection))
    }

    fn topic(&self, t: &Telemetry) -> String {
        match &self.topics {
            Topics::Drogue => format!("{}/{}", t.channel, t.device),
            Topics::Template(template) => template.render(&self.gateway, t),
        }
    }

    /// Puts `records` on the connection in one piece; one verdict receiver per record.
    fn start(&self, records: &[&Telemetry]) -> Vec<oneshot::Receiver<Verdict>> {
        let mut chain = Vec::with_capacity(records.len());
        let mut receivers = Vec::with_capacity(records.len());
        for t in records {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            let payload = match self.protocol {
                wire::Protocol::V311 => t.payload.clone(),
                wire::Protocol::V5 => {
                    // the receive time only from a clock that was set (never 1970)
                    let at = t.received_at.is_trusted().then(|| {
                        humantime::format_rfc3339_millis(t.received_at.to_system()).to_string()
                    });
                    let props = wire::publish_properties(t.content_type.as_deref(), at.as_deref());
                    wire::v5_payload(&props, &t.payload)
                }
            };
            let publish = Publish::from_bytes(self.topic(t), QoS::AtLeastOnce, payload);
            if publish.size() > self.max_packet {
                let _ = tx.send(Verdict::Rejected(format!(
                    "a {}-byte PUBLISH is larger than the cloud takes ({} bytes, [cloud] max_message)",
                    publish.size(),
                    self.max_packet
                )));
                // The chain stops here; the uplink sends the rest one by one after this verdict.
                break;
            }
            chain.push((publish, tx));
        }
        if let Err(e) = self.chains.try_send(chain) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the MQTT connection's queue is full",
                mpsc::error::TrySendError::Closed(_) => "the MQTT connection task has stopped",
            };
            tracing::error!(cause = why, "cannot hand records to the MQTT connection");
            // The senders were dropped with the chain: each receiver resolves as transient.
        }
        receivers
    }
}

impl Sender for Publisher {
    const PIPELINED: bool = true;

    fn send(&self, t: &Telemetry) -> impl Future<Output = Verdict> + Send {
        let rx = self.start(&[t]).pop();
        async move {
            match rx {
                Some(rx) => crate::uplink::verdict_of(rx.await),
                None => Verdict::Transient("no receiver".into()),
            }
        }
    }

    fn pipeline(&self, chain: &[&Telemetry]) -> Option<Vec<oneshot::Receiver<Verdict>>> {
        Some(self.start(chain))
    }
}
