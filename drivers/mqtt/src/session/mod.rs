//! The pure per-connection protocol state machine of the endpoint. It owns no socket and no
//! clock: the socket loop ([`crate::server`]) feeds it decoded packets, completion events
//! (authentication outcome, ingest results), pushed commands and the current time, and
//! carries out the [`Action`]s it returns. Every rule of the endpoint lives here, so it is
//! tested synchronously.
//!
//! Rules (contracts/drogue-cloud.md §2, with the gateway's choices where Drogue is silent):
//! - CONNECT must ask for a clean session; otherwise, and for missing or wrong credentials,
//!   the CONNACK says bad user name or password (v3 `4`, v5 `0x86`), as Drogue answers every
//!   CONNECT failure. A rate-limited login gets not authorized (v3 `5`, v5 `0x87`).
//!   Credentials are read with [`AuthRequest::from_mqtt`]; a bare device name uses the
//!   gateway's application. Over TLS with a client CA configured, a CONNECT without username
//!   and password logs in with the verified client certificate
//!   ([`Session::set_client_certificate`], [`AuthRequest::from_certificate`]: the subject DN
//!   string or the common name names the device, in the gateway's application); a CONNECT with
//!   username and password logs in with those, whatever certificate the client showed.
//! - One session per device: a second connection of the same device takes over, and the
//!   endpoint closes the older one (v5 DISCONNECT 0x8E "session taken over"; its will is
//!   published). Drogue refuses the newer one instead; taking over lets a sensor that lost
//!   its connection silently come back at once.
//! - Keep-alive: no packet for 1.5 × the keep-alive closes the session (v5 DISCONNECT 0x8D).
//!   The clock pauses while the in-flight window is full (the endpoint is not reading then).
//! - A v5 CONNACK announces the limits: Maximum Packet Size, Receive Maximum (=
//!   `max_inflight`), Maximum QoS 1, Retain Available 0.
//! - PUBLISH to `<channel>` at QoS 0 or 1 goes to the ingest; a QoS 1 PUBLISH is acknowledged
//!   only once its ingest resolved, and PUBACKs leave in packet order. `<channel>/<device>` is
//!   accepted only when `<device>` is the connected device itself: a sensor publishes as
//!   itself. At most `max_inflight` publishes are in flight; the socket loop stops reading
//!   while the window is full ([`Session::wants_read`]).
//! - Refusals: on v5 a QoS 1 PUBLISH is answered with a PUBACK reason (0x87 not authorized,
//!   0x90 topic name invalid, 0x97 quota exceeded, 0x99 JSON content type with a payload that
//!   is not JSON, 0x83 a message the store cannot take (too large), 0x80 store unavailable)
//!   and a refused QoS 0 PUBLISH is dropped and logged. On 3.1.1, which has no negative
//!   PUBACK, a refused QoS 1 PUBLISH (and a QoS 0 PUBLISH to an invalid or foreign topic)
//!   closes the connection so the client retries; a QoS 0 message the store refused is
//!   dropped. A packet above the maximum size closes the session (v5 DISCONNECT 0x95: MQTT 5
//!   does not allow 0x95 in a PUBACK).
//! - Content type: the v5 `content_type` property when the sensor set one; otherwise, as
//!   Drogue, `application/json` when the payload parses as JSON, else
//!   `application/octet-stream` (also for the will).
//! - QoS 2 is not supported: v5 DISCONNECT 0x9B "QoS not supported", 3.1.1 closes.
//!   v5 topic aliases are not offered: a PUBLISH with one gets DISCONNECT 0x94.
//! - SUBSCRIBE accepts `command/inbox/#`, `command/inbox/+/#` and `command/inbox//#`, granting
//!   QoS 1 when asked for it (Drogue always grants QoS 0; QoS 1 gives reliable delivery) and
//!   QoS 0 otherwise; any other filter, and every filter of a v5 SUBSCRIBE with a
//!   subscription identifier, gets the failure code 0x80. Commands are published on
//!   `command/inbox//<command>` at the highest granted QoS; QoS 1 deliveries wait for the
//!   client's PUBACK (at most `max_inflight` outstanding).
//! - The last will is published (as an event on channel = will topic) when the session ends
//!   any other way than a normal DISCONNECT from the client: lost connection, keep-alive
//!   expiry, protocol error, takeover by a newer connection of the same device, shutdown. A
//!   will topic that is not a valid channel is dropped with a log line.
//! - Retained messages are not stored (the gateway is an endpoint, not a broker): the retain
//!   flag is ignored.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, Instant},
};

use bytes::Bytes;
use gw_model::{
    AppId, AuthOutcome, AuthRequest, Channel, CommandName, Identity, IngestError, Secret,
    Telemetry, Timestamp,
};

use crate::{
    MqttError,
    packet::{
        ConnAck, Connect, ConnectCode, Disconnect, DisconnectReason, Packet, PubAck, PubAckReason,
        Publish, QoS, SubAck, SubAckCode, Subscribe, UnsubAck, Version, Will,
    },
};

/// Sent once the sensor has a pushed command (see [`Session::command`]); dropped unsent when
/// the command or its session is lost first, so its sender can put the command back.
pub type Receipt = tokio::sync::oneshot::Sender<()>;

#[cfg(test)]
mod tests;

/// The settings every session of an endpoint shares.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The application of sensors that log in with a bare device name.
    pub default_app: AppId,
    /// Publishes of one connection in flight to the ingest (and QoS 1 commands awaiting the
    /// client's PUBACK); at least 1.
    pub max_inflight: usize,
    /// The largest packet accepted, announced in a v5 CONNACK.
    pub max_packet_size: usize,
    /// How long a new connection may take until its CONNACK.
    pub connect_timeout: Duration,
}

/// Identifies one ingest request of a session, to match its completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IngestToken(u64);

/// What the socket loop must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write this packet to the client.
    Send(Packet),
    /// Check these credentials and report with [`Session::auth_done`].
    Authenticate(AuthRequest),
    /// The session is now live as this device: register it (taking over an older session of
    /// the same device).
    Connected(Identity),
    /// Hand this message to the ingest and report with [`Session::ingest_done`].
    Ingest { token: IngestToken, telemetry: Telemetry },
    /// Hand the last will to the ingest; nobody waits for the result.
    PublishWill(Telemetry),
    /// Close the connection (after writing the packets before this action).
    Close(CloseReason),
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// No CONNECT (or no CONNACK) within the connect timeout.
    ConnectTimeout,
    /// The CONNECT was refused (a CONNACK with this code was sent).
    LoginRefused(ConnectCode),
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The connection broke or the client closed it without DISCONNECT.
    Lost,
    KeepAliveTimeout,
    /// A packet that could not be decoded, or was larger than the maximum.
    BadFrame,
    /// A packet out of place (a second CONNECT, PUBREL, server-only packets).
    ProtocolError,
    /// A QoS 2 PUBLISH.
    QoSNotSupported,
    /// A v5 PUBLISH with a topic alias (none are offered).
    TopicAlias,
    /// MQTT 3.1.1: a PUBLISH was refused and 3.1.1 can only close.
    PublishRefused,
    /// A newer connection of the same device took over.
    TakenOver,
    /// The device lost its access (the registry no longer lists it for this gateway).
    Revoked,
    /// The endpoint is shutting down.
    Shutdown,
}

impl CloseReason {
    /// The v5 DISCONNECT the server sends before closing, if any.
    fn v5_disconnect(self) -> Option<DisconnectReason> {
        Some(match self {
            CloseReason::KeepAliveTimeout => DisconnectReason::KeepAliveTimeout,
            CloseReason::ProtocolError => DisconnectReason::ProtocolError,
            CloseReason::QoSNotSupported => DisconnectReason::QoSNotSupported,
            CloseReason::TopicAlias => DisconnectReason::TopicAliasInvalid,
            CloseReason::TakenOver => DisconnectReason::SessionTakenOver,
            CloseReason::Revoked => DisconnectReason::NotAuthorized,
            CloseReason::Shutdown => DisconnectReason::ServerShuttingDown,
            CloseReason::PublishRefused => DisconnectReason::ImplementationSpecificError,
            CloseReason::ConnectTimeout
            | CloseReason::LoginRefused(_)
            | CloseReason::ClientDisconnect
            | CloseReason::Lost
            | CloseReason::BadFrame => return None,
        })
    }
}

/// The command filters a sensor may subscribe to; all of them receive its own commands.
const COMMAND_FILTERS: [&str; 3] = ["command/inbox/#", "command/inbox/+/#", "command/inbox//#"];

enum State {
    AwaitConnect { deadline: Instant },
    Authenticating { deadline: Instant, connect: Box<Connect> },
    Connected(Box<Live>),
    Closed,
}

/// What a connected session keeps.
struct Live {
    identity: Identity,
    version: Version,
    will: Option<Will>,
    keep_alive: Option<Duration>,
    last_rx: Instant,
    /// The largest packet the client accepts (v5).
    client_max_packet: Option<usize>,
    /// Publishes in packet order, until their answer is due.
    inflight: VecDeque<Inflight>,
    /// Granted command subscriptions: filter → QoS.
    subscriptions: HashMap<String, QoS>,
    /// Packet ids of QoS 1 commands awaiting the client's PUBACK, with the receipt each
    /// command's sender waits for (dropped unsent if the session ends first).
    outgoing: BTreeMap<u16, Option<Receipt>>,
    next_pkid: u16,
}

struct Inflight {
    /// `None` for a publish refused before the ingest (its outcome is already known).
    token: Option<IngestToken>,
    qos: QoS,
    pkid: u16,
    outcome: Option<Result<(), PubAckReason>>,
}

/// A client certificate the TLS layer verified against the endpoint's client CA.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificate {
    /// The subject DN string, e.g. `CN=sensor1, O=Acme`.
    pub subject: String,
    /// The subject's first common name, if any.
    pub common_name: Option<String>,
}

/// One connection's protocol state. Time comes in as an argument; nothing here blocks.
pub struct Session {
    config: SessionConfig,
    state: State,
    client_certificate: Option<ClientCertificate>,
    /// A monotonic and a wall-clock reading taken together, to stamp messages.
    epoch: (Instant, Timestamp),
    next_token: u64,
}

impl Session {
    /// A new connection, accepted at `now` (`wall`: the wall clock at that moment).
    pub fn new(config: SessionConfig, now: Instant, wall: Timestamp) -> Self {
        let deadline = now + config.connect_timeout;
        Self {
            config,
            state: State::AwaitConnect { deadline },
            client_certificate: None,
            epoch: (now, wall),
            next_token: 0,
        }
    }

    /// The client certificate of the connection (TLS with a client CA): a CONNECT without
    /// username and password logs in with it.
    pub fn set_client_certificate(&mut self, certificate: ClientCertificate) {
        self.client_certificate = Some(certificate);
    }

    /// The device of a connected session.
    pub fn identity(&self) -> Option<&Identity> {
        match &self.state {
            State::Connected(live) => Some(&live.identity),
            _ => None,
        }
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Whether the socket loop should read the next packet: before CONNECT, and while the
    /// session has room for another publish in flight.
    pub fn wants_read(&self) -> bool {
        match &self.state {
            State::AwaitConnect { .. } => true,
            State::Connected(live) => live.inflight.len() < self.config.max_inflight,
            State::Authenticating { .. } | State::Closed => false,
        }
    }

    /// Whether a pushed command can be taken now: the session subscribed to its commands and
    /// has room for another QoS 1 delivery.
    pub fn accepts_commands(&self) -> bool {
        match &self.state {
            State::Connected(live) => {
                !live.subscriptions.is_empty() && live.outgoing.len() < self.config.max_inflight
            }
            _ => false,
        }
    }

    /// Whether the client logged in (CONNACK sent) and the session is live.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected(_))
    }

    /// The connection loop did not read for a while by its own choice (flow control): the
    /// keep-alive counts from `now`, not from the last packet.
    pub fn resumed(&mut self, now: Instant) {
        if let State::Connected(live) = &mut self.state {
            live.last_rx = live.last_rx.max(now);
        }
    }

    /// Whether the session has a command subscription.
    pub fn is_subscribed(&self) -> bool {
        matches!(&self.state, State::Connected(live) if !live.subscriptions.is_empty())
    }

    /// Publishes handed to the ingest or refused, whose answer is not yet sent.
    pub fn inflight(&self) -> usize {
        match &self.state {
            State::Connected(live) => live.inflight.len(),
            _ => 0,
        }
    }

    /// When [`Session::tick`] must be called next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::AwaitConnect { deadline } | State::Authenticating { deadline, .. } => {
                Some(*deadline)
            }
            // while the window is full the loop does not read: the client is not idle
            State::Connected(live) if live.inflight.len() >= self.config.max_inflight => None,
            State::Connected(live) => live.keep_alive.map(|ka| live.last_rx + ka),
            State::Closed => None,
        }
    }

    /// Checks the timers at `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        match self.next_deadline() {
            Some(deadline) if now >= deadline => match self.state {
                State::Connected(_) => self.close(CloseReason::KeepAliveTimeout, now),
                _ => self.close(CloseReason::ConnectTimeout, now),
            },
            _ => Vec::new(),
        }
    }

    /// A decoded packet from the client.
    pub fn handle_packet(&mut self, packet: Packet, now: Instant) -> Vec<Action> {
        match &mut self.state {
            State::AwaitConnect { deadline } => match packet {
                Packet::Connect(c) => {
                    let deadline = *deadline;
                    self.connect(c, deadline)
                }
                _ => self.close(CloseReason::ProtocolError, now),
            },
            State::Authenticating { .. } => self.close(CloseReason::ProtocolError, now),
            State::Closed => Vec::new(),
            State::Connected(live) => {
                live.last_rx = now;
                match packet {
                    Packet::Publish(p) => self.publish(p, now),
                    Packet::Subscribe(s) => {
                        let ack = live.subscribe(s);
                        vec![Action::Send(Packet::SubAck(ack))]
                    }
                    Packet::Unsubscribe(u) => {
                        for f in &u.filters {
                            live.subscriptions.remove(f);
                        }
                        let ack = UnsubAck { pkid: u.pkid, filters: u.filters.len() };
                        vec![Action::Send(Packet::UnsubAck(ack))]
                    }
                    Packet::PingReq => vec![Action::Send(Packet::PingResp)],
                    Packet::PubAck(ack) => {
                        if let Some(Some(receipt)) = live.outgoing.remove(&ack.pkid) {
                            let _ = receipt.send(());
                        }
                        Vec::new()
                    }
                    Packet::Disconnect(d) => {
                        if d.reason != DisconnectReason::DisconnectWithWillMessage {
                            live.will = None;
                        }
                        self.close(CloseReason::ClientDisconnect, now)
                    }
                    // acknowledgements of a QoS 2 flow we never start: ignored
                    Packet::PubRec(_) | Packet::PubComp(_) => Vec::new(),
                    Packet::PubRel(_)
                    | Packet::Connect(_)
                    | Packet::ConnAck(_)
                    | Packet::SubAck(_)
                    | Packet::UnsubAck(_)
                    | Packet::PingResp => self.close(CloseReason::ProtocolError, now),
                }
            }
        }
    }

    /// The outcome of the [`Action::Authenticate`] request.
    pub fn auth_done(&mut self, outcome: AuthOutcome, now: Instant) -> Vec<Action> {
        if !matches!(self.state, State::Authenticating { .. }) {
            return Vec::new();
        }
        let State::Authenticating { connect, .. } =
            std::mem::replace(&mut self.state, State::Closed)
        else {
            return Vec::new();
        };
        match outcome {
            AuthOutcome::Pass(identity) => self.accept(*connect, identity, now),
            AuthOutcome::Fail => self.refuse(ConnectCode::BadUserNamePassword),
            AuthOutcome::RateLimited => self.refuse(ConnectCode::QuotaExceeded),
            AuthOutcome::Forbidden => self.refuse(ConnectCode::NotAuthorized),
        }
    }

    /// The login passed but the endpoint has no room for another session: CONNACK "server
    /// unavailable" and close. Nothing happens outside a login.
    pub fn server_unavailable(&mut self) -> Vec<Action> {
        if !matches!(self.state, State::Authenticating { .. }) {
            return Vec::new();
        }
        self.refuse(ConnectCode::ServerUnavailable)
    }

    /// The ingest's answer for the publish `token`.
    pub fn ingest_done(
        &mut self,
        token: IngestToken,
        result: Result<(), IngestError>,
        now: Instant,
    ) -> Vec<Action> {
        let max_inflight = self.config.max_inflight;
        let State::Connected(live) = &mut self.state else { return Vec::new() };
        if live.inflight.len() >= max_inflight {
            // reading resumes now: the keep-alive counts from here
            live.last_rx = live.last_rx.max(now);
        }
        let Some(entry) = live.inflight.iter_mut().find(|e| e.token == Some(token)) else {
            return Vec::new();
        };
        entry.outcome = Some(result.map_err(|e| {
            tracing::info!(device = %live.identity, cause = %e, "MQTT publish not stored");
            match e {
                IngestError::QuotaExceeded(_) => PubAckReason::QuotaExceeded,
                IngestError::TooLarge(_) => PubAckReason::PacketTooLarge,
                IngestError::Invalid(_) => PubAckReason::PayloadFormatInvalid,
                IngestError::Unavailable(_) => PubAckReason::UnspecifiedError,
            }
        }));
        self.flush_acks(now)
    }

    /// A command for the connected device, pushed by the daemon. Dropped (with a log line)
    /// when the session has no command subscription or no room; check
    /// [`Session::accepts_commands`] first. `receipt` is sent once the sensor has it: its
    /// PUBACK at QoS 1, at once for a QoS 0 subscription (the publish is handed to the
    /// socket); it is dropped unsent when the command is dropped or the session ends first.
    pub fn command(
        &mut self,
        name: &CommandName,
        payload: Bytes,
        receipt: Option<Receipt>,
    ) -> Vec<Action> {
        let max_inflight = self.config.max_inflight;
        let State::Connected(live) = &mut self.state else { return Vec::new() };
        let Some(qos) = live.subscriptions.values().copied().max() else {
            tracing::debug!(device = %live.identity, command = %name,
                "MQTT command dropped: no command subscription");
            return Vec::new();
        };
        let mut publish = Publish::new(format!("command/inbox//{name}"), qos, payload);
        if qos == QoS::AtLeastOnce && live.outgoing.len() >= max_inflight {
            tracing::warn!(device = %live.identity, command = %name,
                "MQTT command dropped: too many unacknowledged commands");
            return Vec::new();
        }
        // topic, packet id, remaining length: a few bytes above topic + payload
        let size = publish.topic.len() + publish.payload.len() + 16;
        if live.client_max_packet.is_some_and(|max| size > max) {
            tracing::warn!(device = %live.identity, command = %name,
                "MQTT command dropped: larger than the client accepts");
            return Vec::new();
        }
        if qos == QoS::AtLeastOnce {
            publish.pkid = live.allocate_pkid(receipt);
        } else if let Some(receipt) = receipt {
            let _ = receipt.send(());
        }
        vec![Action::Send(Packet::Publish(publish))]
    }

    /// The codec could not read the next packet; the connection cannot continue.
    pub fn bad_frame(&mut self, error: &MqttError, now: Instant) -> Vec<Action> {
        if let (MqttError::TooLarge { .. }, State::Connected(live)) = (error, &self.state)
            && live.version == Version::V5
        {
            let disconnect = Disconnect { reason: DisconnectReason::PacketTooLarge };
            let mut actions = vec![Action::Send(Packet::Disconnect(disconnect))];
            actions.extend(self.close(CloseReason::BadFrame, now));
            return actions;
        }
        if let (MqttError::Malformed { .. }, State::Connected(live)) = (error, &self.state)
            && live.version == Version::V5
        {
            let disconnect = Disconnect { reason: DisconnectReason::MalformedPacket };
            let mut actions = vec![Action::Send(Packet::Disconnect(disconnect))];
            actions.extend(self.close(CloseReason::BadFrame, now));
            return actions;
        }
        self.close(CloseReason::BadFrame, now)
    }

    /// The connection broke or the client closed it.
    pub fn connection_lost(&mut self, now: Instant) -> Vec<Action> {
        self.close(CloseReason::Lost, now)
    }

    /// A newer connection of the same device took over.
    pub fn taken_over(&mut self, now: Instant) -> Vec<Action> {
        self.close(CloseReason::TakenOver, now)
    }

    /// The device's access was revoked: the session ends (v5: DISCONNECT 0x87).
    pub fn revoked(&mut self, now: Instant) -> Vec<Action> {
        self.close(CloseReason::Revoked, now)
    }

    /// The endpoint is shutting down.
    pub fn shutdown(&mut self, now: Instant) -> Vec<Action> {
        self.close(CloseReason::Shutdown, now)
    }

    fn connect(&mut self, c: Connect, deadline: Instant) -> Vec<Action> {
        if !c.clean_session {
            static NOT_CLEAN: gw_net::Throttle =
                gw_net::Throttle::new("MQTT CONNECT refused: clean session required");
            if NOT_CLEAN.allow(None) {
                tracing::info!(client_id = %c.client_id, "MQTT CONNECT refused: clean session required");
            }
            return self.refuse(ConnectCode::BadUserNamePassword);
        }
        let parsed = match (&c.login, &self.client_certificate) {
            (Some(login), _) => AuthRequest::from_mqtt(
                &login.username,
                Secret::new(login.password.clone()),
                &c.client_id,
                Some(&self.config.default_app),
            )
            .map_err(|e| (login.username.clone(), e)),
            (None, Some(cert)) => AuthRequest::from_certificate(
                &cert.subject,
                cert.common_name.as_deref(),
                &self.config.default_app,
            )
            .map_err(|e| (cert.subject.clone(), e)),
            (None, None) => return self.refuse(ConnectCode::BadUserNamePassword),
        };
        let request = match parsed {
            Ok(r) => r,
            Err((username, e)) => {
                static UNREADABLE: gw_net::Throttle =
                    gw_net::Throttle::new("MQTT CONNECT refused: unreadable user name");
                if UNREADABLE.allow(None) {
                    tracing::info!(%username, cause = %e, "MQTT CONNECT refused");
                }
                return self.refuse(ConnectCode::BadUserNamePassword);
            }
        };
        self.state = State::Authenticating { deadline, connect: Box::new(c) };
        vec![Action::Authenticate(request)]
    }

    fn accept(&mut self, c: Connect, identity: Identity, now: Instant) -> Vec<Action> {
        let mut ack = ConnAck::new(ConnectCode::Success);
        if c.version == Version::V5 {
            // what a v5 client should know: no QoS 2, no retained messages, the window
            ack.max_packet_size = u32::try_from(self.config.max_packet_size).ok();
            ack.receive_max = Some(u16::try_from(self.config.max_inflight).unwrap_or(u16::MAX));
            ack.max_qos = Some(QoS::AtLeastOnce);
            ack.retain_available = Some(false);
        }
        // 1.5 × keep-alive, in milliseconds
        let keep_alive =
            (c.keep_alive > 0).then(|| Duration::from_millis(u64::from(c.keep_alive) * 1500));
        let live = Live {
            identity: identity.clone(),
            version: c.version,
            will: c.will,
            keep_alive,
            last_rx: now,
            client_max_packet: c.max_packet_size.and_then(|m| usize::try_from(m).ok()),
            inflight: VecDeque::new(),
            subscriptions: HashMap::new(),
            outgoing: BTreeMap::new(),
            next_pkid: 1,
        };
        self.state = State::Connected(Box::new(live));
        vec![Action::Send(Packet::ConnAck(ack)), Action::Connected(identity)]
    }

    fn refuse(&mut self, code: ConnectCode) -> Vec<Action> {
        self.state = State::Closed;
        vec![
            Action::Send(Packet::ConnAck(ConnAck::new(code))),
            Action::Close(CloseReason::LoginRefused(code)),
        ]
    }

    fn publish(&mut self, p: Publish, now: Instant) -> Vec<Action> {
        let State::Connected(live) = &mut self.state else { return Vec::new() };
        if p.qos == QoS::ExactlyOnce {
            return self.close(CloseReason::QoSNotSupported, now);
        }
        if p.topic_alias.is_some() {
            return self.close(CloseReason::TopicAlias, now);
        }
        let checked = live.check_publish(&p);
        let version = live.version;
        match checked {
            Ok(channel) => {
                self.next_token += 1;
                let token = IngestToken(self.next_token);
                let telemetry = Telemetry {
                    app: live.identity.app().clone(),
                    device: live.identity.device().clone(),
                    channel,
                    suffix: None,
                    content_type: content_type_of(p.content_type, &p.payload),
                    data_schema: None,
                    received_at: stamp(self.epoch, now),
                    payload: p.payload,
                    command_wait: None,
                };
                live.inflight.push_back(Inflight {
                    token: Some(token),
                    qos: p.qos,
                    pkid: p.pkid,
                    outcome: None,
                });
                vec![Action::Ingest { token, telemetry }]
            }
            Err(reason) => {
                tracing::info!(device = %live.identity, topic = %p.topic, ?reason,
                    "MQTT publish refused");
                if version == Version::V311 {
                    return self.close(CloseReason::PublishRefused, now);
                }
                live.inflight.push_back(Inflight {
                    token: None,
                    qos: p.qos,
                    pkid: p.pkid,
                    outcome: Some(Err(reason)),
                });
                self.flush_acks(now)
            }
        }
    }

    /// Answers the publishes at the front of the window whose outcome is known.
    fn flush_acks(&mut self, now: Instant) -> Vec<Action> {
        let State::Connected(live) = &mut self.state else { return Vec::new() };
        let mut actions = Vec::new();
        while live.inflight.front().is_some_and(|e| e.outcome.is_some()) {
            let Some(entry) = live.inflight.pop_front() else { break };
            let reason = match entry.outcome {
                Some(Ok(())) => PubAckReason::Success,
                Some(Err(reason)) => reason,
                None => continue,
            };
            match (entry.qos, live.version, reason) {
                (QoS::AtLeastOnce, Version::V311, r) if r != PubAckReason::Success => {
                    actions.extend(self.close(CloseReason::PublishRefused, now));
                    return actions;
                }
                (QoS::AtLeastOnce, _, reason) => {
                    actions.push(Action::Send(Packet::PubAck(PubAck { pkid: entry.pkid, reason })));
                }
                // QoS 0: nothing to answer; a refusal was logged
                _ => {}
            }
        }
        actions
    }

    /// Ends the session: the v5 DISCONNECT where one is due, the will unless the client
    /// disconnected normally, and the close.
    fn close(&mut self, reason: CloseReason, now: Instant) -> Vec<Action> {
        let state = std::mem::replace(&mut self.state, State::Closed);
        let mut actions = Vec::new();
        if let State::Connected(live) = state {
            if live.version == Version::V5
                && let Some(code) = reason.v5_disconnect()
            {
                actions.push(Action::Send(Packet::Disconnect(Disconnect { reason: code })));
            }
            if let Some(will) = live.will {
                match Channel::new(will.topic.as_str()) {
                    Ok(channel) => actions.push(Action::PublishWill(Telemetry {
                        app: live.identity.app().clone(),
                        device: live.identity.device().clone(),
                        channel,
                        suffix: None,
                        content_type: content_type_of(will.content_type, &will.payload),
                        data_schema: None,
                        received_at: stamp(self.epoch, now),
                        payload: will.payload,
                        command_wait: None,
                    })),
                    Err(e) => tracing::warn!(device = %live.identity, topic = %will.topic,
                        cause = %e, "MQTT last will dropped: its topic is not a valid channel"),
                }
            }
        }
        actions.push(Action::Close(reason));
        actions
    }
}

impl Live {
    /// The channel of a PUBLISH this device may make, or the v5 reason it may not.
    fn check_publish(&self, p: &Publish) -> Result<Channel, PubAckReason> {
        let (channel, device) = match p.topic.split_once('/') {
            None => (p.topic.as_str(), None),
            Some((channel, device)) => (channel, Some(device)),
        };
        let channel = Channel::new(channel).map_err(|_| PubAckReason::TopicNameInvalid)?;
        match device {
            None => {}
            Some(d) if d.contains('/') => return Err(PubAckReason::TopicNameInvalid),
            Some(d) if d == self.identity.device().as_str() => {}
            Some(_) => return Err(PubAckReason::NotAuthorized),
        }
        if p.content_type.as_deref().is_some_and(gw_model::is_json_content_type)
            && !is_json(&p.payload)
        {
            return Err(PubAckReason::PayloadFormatInvalid);
        }
        Ok(channel)
    }

    fn subscribe(&mut self, s: Subscribe) -> SubAck {
        let codes = s
            .filters
            .iter()
            .map(|f| {
                // v5 subscription identifiers are refused, as Drogue does
                if s.subscription_id.is_some() || !COMMAND_FILTERS.contains(&f.path.as_str()) {
                    tracing::info!(device = %self.identity, filter = %f.path,
                        "MQTT subscription refused");
                    return SubAckCode::Failure;
                }
                let qos = f.qos.min(QoS::AtLeastOnce);
                self.subscriptions.insert(f.path.clone(), qos);
                SubAckCode::Granted(qos)
            })
            .collect();
        SubAck { pkid: s.pkid, codes }
    }

    /// A packet id not in use by an outstanding QoS 1 command, taken for one with `receipt`.
    fn allocate_pkid(&mut self, receipt: Option<Receipt>) -> u16 {
        loop {
            let id = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if let std::collections::btree_map::Entry::Vacant(slot) = self.outgoing.entry(id) {
                slot.insert(receipt);
                return id;
            }
        }
    }
}

/// The content type a message travels with: the v5 property when the sensor set one; otherwise,
/// as Drogue's MQTT endpoint does, JSON when the payload parses as JSON, else
/// `application/octet-stream` (MQTT 3.1.1 has no content type at all).
pub(crate) fn content_type_of(declared: Option<String>, payload: &[u8]) -> Option<String> {
    declared.or_else(|| {
        let guessed =
            if is_json(payload) { "application/json" } else { "application/octet-stream" };
        Some(guessed.to_owned())
    })
}

/// Whether `payload` is one JSON value.
fn is_json(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok()
}

/// The wall-clock time at `now`, from the reading taken when the session began.
fn stamp(epoch: (Instant, Timestamp), now: Instant) -> Timestamp {
    epoch.1.saturating_add(now.saturating_duration_since(epoch.0))
}
