//! One MQTT connection: CONNECT and authentication, then the packet loop (publish as
//! events, command subscriptions, keep-alive), and at the end the last will.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use gw_driver_mqtt::{
    Codec, CodecError, ConnAck, Connect, ConnectCode, Disconnect, DisconnectReason, Packet, PubAck,
    PubAckReason, Publish, QoS, SubAck, SubAckCode, Subscribe, UnsubAck, Unsubscribe, Version,
    Will, read_connect, read_packet, write_packet,
};
use gw_model::{AuthRequest, Secret, registry::Device};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, tcp::OwnedWriteHalf},
    sync::{broadcast, mpsc},
};

use super::{
    AS_CACHE_SIZE, AS_CACHE_TTL, CLOSE_TIMEOUT, CONNECT_TIMEOUT, MAX_PACKET_SIZE, OUTGOING_QUEUE,
    SessionSlot, Sessions,
    topics::{self, CommandSub},
};
use crate::{
    auth::{self, Authenticated},
    commands::RoutedCommand,
    events::{CloudEvent, EventParties},
    http::{AppState, endpoint::is_json},
};

/// Serves one connection to its end; errors are logged, never returned.
pub(super) async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    state: AppState,
    sessions: Arc<Sessions>,
) {
    if let Err(e) = serve(stream, &state, &sessions).await {
        tracing::debug!(%peer, cause = %e, "MQTT connection ended with an error");
    }
}

async fn serve(
    stream: TcpStream,
    state: &AppState,
    sessions: &Arc<Sessions>,
) -> Result<(), CodecError> {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::new();
    let first = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, read_connect(&mut rd, &mut buf, MAX_PACKET_SIZE)) => r,
        () = state.shutdown.cancelled() => return Ok(()),
    };
    let (codec, connect) = match first {
        Err(_) | Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(c))) => c,
        Ok(Err(CodecError::UnsupportedProtocol { .. })) => {
            let codec = Codec::new(Version::V311, MAX_PACKET_SIZE);
            let refused = ConnAck::new(ConnectCode::UnsupportedProtocolVersion);
            return write_packet(&mut wr, &codec, &Packet::ConnAck(refused)).await;
        }
        Ok(Err(e)) => return Err(e),
    };
    let Some((who, _slot)) = accept(&connect, state, sessions).await else {
        // Drogue answers every CONNECT failure as bad user name or password.
        let refused = ConnAck::new(ConnectCode::BadUserNamePassword);
        write_packet(&mut wr, &codec, &Packet::ConnAck(refused)).await?;
        let _ = wr.shutdown().await;
        return Ok(());
    };
    let (out, out_rx) = mpsc::channel(OUTGOING_QUEUE);
    let writer = tokio::spawn(write_loop(wr, codec, out_rx));
    // Drogue announces no maximum packet size in its CONNACK, although it enforces one.
    let ack = ConnAck::new(ConnectCode::Success);
    let _ = out.send(Packet::ConnAck(ack)).await;
    tracing::info!(app = %who.app.metadata.name, device = %who.device.metadata.name,
        version = %codec.version(), "MQTT session started");
    state.events.append(connection_event(&who, true));

    let mut session = Session {
        state,
        codec,
        who,
        out,
        subs: Vec::new(),
        commands: None,
        as_cache: HashMap::new(),
    };
    let keep_alive = (connect.keep_alive > 0)
        .then(|| Duration::from_millis(u64::from(connect.keep_alive) * 1500));
    let end = session.run(&mut rd, &mut buf, keep_alive).await;
    tracing::info!(device = %session.who.device.metadata.name, end = ?end, "MQTT session ended");

    if codec.version() == Version::V5
        && let Some(reason) = end.server_reason()
    {
        let _ = session.out.try_send(Packet::Disconnect(Disconnect { reason }));
    }
    let Session { who, out, .. } = session;
    drop(out);
    let mut writer = writer;
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer).await.is_err() {
        writer.abort();
    }
    if end.publishes_will()
        && let Some(will) = &connect.will
    {
        publish_will(state, &who, will);
    }
    state.events.append(connection_event(&who, false));
    Ok(())
}

/// Checks CONNECT: clean session, credentials, and the device's one session slot.
async fn accept(
    connect: &Connect,
    state: &AppState,
    sessions: &Arc<Sessions>,
) -> Option<(Authenticated, SessionSlot)> {
    if !connect.clean_session {
        return None;
    }
    let login = connect.login.as_ref()?;
    let req = AuthRequest::from_mqtt(
        &login.username,
        Secret::new(login.password.clone()),
        &connect.client_id,
        None,
    )
    .ok()?;
    let who = auth::authenticate(&state.registry, req, None).await?;
    let slot = sessions.claim(&who.app.metadata.name, &who.device.metadata.name)?;
    Some((who, slot))
}

/// Writes queued packets until the queue closes, then closes the socket.
async fn write_loop(mut wr: OwnedWriteHalf, codec: Codec, mut rx: mpsc::Receiver<Packet>) {
    let mut out = BytesMut::new();
    while let Some(packet) = rx.recv().await {
        let mut next = Some(packet);
        // coalesce whatever else is queued into one write
        while let Some(p) = next {
            if let Err(e) = codec.encode(&p, &mut out) {
                tracing::warn!(packet = p.name(), cause = %e, "cannot encode MQTT packet");
            }
            next = rx.try_recv().ok();
        }
        if wr.write_all(&out).await.is_err() {
            return;
        }
        out.clear();
    }
    let _ = wr.shutdown().await;
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The client sent DISCONNECT (v5: with this reason).
    ClientDisconnect(DisconnectReason),
    /// The connection broke or the peer closed it without DISCONNECT.
    Lost,
    KeepAliveTimeout,
    ServerShutdown,
    /// A protocol violation, with the v5 reason sent before closing.
    Violation(DisconnectReason),
    /// MQTT 3.1.1: a QoS 1 PUBLISH was refused; 3.1.1 can only close the connection.
    RejectedPublish,
}

impl End {
    fn server_reason(self) -> Option<DisconnectReason> {
        match self {
            End::KeepAliveTimeout => Some(DisconnectReason::KeepAliveTimeout),
            End::ServerShutdown => Some(DisconnectReason::ServerShuttingDown),
            End::Violation(r) => Some(r),
            End::ClientDisconnect(_) | End::Lost | End::RejectedPublish => None,
        }
    }

    /// Only a normal DISCONNECT from the client discards the will.
    fn publishes_will(self) -> bool {
        !matches!(self, End::ClientDisconnect(DisconnectReason::NormalDisconnection))
    }
}

struct Session<'a> {
    state: &'a AppState,
    codec: Codec,
    who: Authenticated,
    out: mpsc::Sender<Packet>,
    /// Accepted command subscriptions, with the filter they were made with.
    subs: Vec<(String, CommandSub)>,
    /// The command bus, subscribed while there is at least one subscription.
    commands: Option<broadcast::Receiver<RoutedCommand>>,
    /// `authorize_as` answers by requested device: the as-device, or `None` if refused.
    as_cache: HashMap<String, (Instant, Option<Device>)>,
}

impl Session<'_> {
    async fn run(
        &mut self,
        rd: &mut tokio::net::tcp::OwnedReadHalf,
        buf: &mut BytesMut,
        keep_alive: Option<Duration>,
    ) -> End {
        let codec = self.codec;
        let mut last_rx = tokio::time::Instant::now();
        loop {
            let idle = async {
                match keep_alive {
                    Some(d) => tokio::time::sleep_until(last_rx + d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = read_packet(rd, buf, &codec) => {
                    last_rx = tokio::time::Instant::now();
                    match r {
                        Ok(Some(p)) => {
                            if let Some(end) = self.handle(p).await {
                                return end;
                            }
                        }
                        Ok(None) => return End::Lost,
                        Err(CodecError::TooLarge { .. }) => {
                            return End::Violation(DisconnectReason::PacketTooLarge);
                        }
                        Err(CodecError::Io(_) | CodecError::UnexpectedEof) => return End::Lost,
                        Err(_) => return End::Violation(DisconnectReason::MalformedPacket),
                    }
                }
                cmd = next_command(&mut self.commands) => self.deliver(cmd),
                () = idle => return End::KeepAliveTimeout,
                () = self.state.shutdown.cancelled() => return End::ServerShutdown,
            }
        }
    }

    /// Handles one packet from the client; `Some` ends the session.
    async fn handle(&mut self, packet: Packet) -> Option<End> {
        let reply = match packet {
            Packet::Publish(p) => return self.publish(p).await,
            Packet::Subscribe(s) => Packet::SubAck(self.subscribe(s)),
            Packet::Unsubscribe(u) => Packet::UnsubAck(self.unsubscribe(u)),
            Packet::PingReq => Packet::PingResp,
            Packet::Disconnect(d) => return Some(End::ClientDisconnect(d.reason)),
            // acknowledgements of nothing we sent with QoS > 0: ignored
            Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => return None,
            Packet::PubRel(_)
            | Packet::Connect(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => return Some(End::Violation(DisconnectReason::ProtocolError)),
        };
        self.send(reply).await
    }

    async fn send(&self, packet: Packet) -> Option<End> {
        self.out.send(packet).await.err().map(|_| End::Lost)
    }

    async fn publish(&mut self, p: Publish) -> Option<End> {
        if p.qos == QoS::ExactlyOnce {
            return Some(End::Violation(DisconnectReason::QoSNotSupported));
        }
        if p.topic_alias.is_some() {
            // the CONNACK advertised no topic aliases
            return Some(End::Violation(DisconnectReason::TopicAliasInvalid));
        }
        let result = self.accept_publish(&p);
        if let Err(reason) = result {
            tracing::debug!(device = %self.who.device.metadata.name, topic = %p.topic,
                reason = ?reason, "MQTT publish refused");
        }
        match (p.qos, result) {
            (QoS::AtMostOnce | QoS::ExactlyOnce, _) => None,
            (QoS::AtLeastOnce, Ok(())) => {
                self.send(Packet::PubAck(PubAck { pkid: p.pkid, reason: PubAckReason::Success }))
                    .await
            }
            (QoS::AtLeastOnce, Err(reason)) => match self.codec.version() {
                Version::V5 => self.send(Packet::PubAck(PubAck { pkid: p.pkid, reason })).await,
                Version::V311 => Some(End::RejectedPublish),
            },
        }
    }

    /// Turns a PUBLISH into an event in the log, or says why not.
    fn accept_publish(&mut self, p: &Publish) -> Result<(), PubAckReason> {
        let topic = topics::parse_publish(&p.topic).ok_or(PubAckReason::TopicNameInvalid)?;
        let as_device = match topic.as_device {
            None => self.who.device.clone(),
            Some(id) => self.authorize_as(id).ok_or(PubAckReason::NotAuthorized)?,
        };
        let (content_type, json) = content(p.content_type.as_deref(), &p.payload)
            .ok_or(PubAckReason::PayloadFormatInvalid)?;
        let who = &self.who;
        let parties = EventParties {
            app: (&who.app.metadata.name, &who.app.metadata.uid),
            device: (&as_device.metadata.name, &as_device.metadata.uid),
            sender: (&who.device.metadata.name, &who.device.metadata.uid),
        };
        let event = CloudEvent::telemetry(
            &parties,
            topic.channel,
            Some(&content_type),
            None,
            json,
            &p.payload,
        );
        self.state.events.append(event);
        Ok(())
    }

    /// Drogue's `authorize_as` with the per-session cache (negative answers cached too).
    fn authorize_as(&mut self, id: &str) -> Option<Device> {
        let now = Instant::now();
        if let Some((at, answer)) = self.as_cache.get(id)
            && now.duration_since(*at) < AS_CACHE_TTL
        {
            return answer.clone();
        }
        let gateway = &self.who.device;
        let answer = self.state.registry.find_device(&self.who.app.metadata.name, id).filter(|t| {
            t.metadata.name == gateway.metadata.name
                || auth::may_act_as(gateway, t, self.state.registry.rules())
        });
        if self.as_cache.len() >= AS_CACHE_SIZE && !self.as_cache.contains_key(id) {
            let oldest =
                self.as_cache.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.as_cache.remove(&k);
            }
        }
        self.as_cache.insert(id.to_owned(), (now, answer.clone()));
        answer
    }

    fn subscribe(&mut self, s: Subscribe) -> SubAck {
        let mut codes = Vec::with_capacity(s.filters.len());
        for f in &s.filters {
            // v5 subscription identifiers are refused, as Drogue does
            let sub =
                if s.subscription_id.is_some() { None } else { topics::parse_filter(&f.path) };
            match sub {
                Some(sub) => {
                    let sub = self.canonical(sub);
                    if !self.subs.iter().any(|(path, _)| *path == f.path) {
                        self.subs.push((f.path.clone(), sub));
                    }
                    codes.push(SubAckCode::Granted(QoS::AtMostOnce));
                }
                None => codes.push(SubAckCode::Failure),
            }
        }
        if !self.subs.is_empty() && self.commands.is_none() {
            self.commands = Some(self.state.bus.subscribe());
        }
        SubAck { pkid: s.pkid, codes }
    }

    /// A device subscription by alias selects the device's canonical name.
    fn canonical(&self, sub: CommandSub) -> CommandSub {
        match sub {
            CommandSub::Device(id) => {
                let found = self.state.registry.find_device(&self.who.app.metadata.name, &id);
                CommandSub::Device(found.map_or(id, |d| d.metadata.name))
            }
            other => other,
        }
    }

    fn unsubscribe(&mut self, u: Unsubscribe) -> UnsubAck {
        self.subs.retain(|(path, _)| !u.filters.contains(path));
        if self.subs.is_empty() {
            self.commands = None;
        }
        UnsubAck { pkid: u.pkid, filters: u.filters.len() }
    }

    /// Queues a routed command if this connection subscribed to it; at most once, QoS 0.
    fn deliver(&mut self, cmd: RoutedCommand) {
        let me = &self.who.device.metadata.name;
        if cmd.app != self.who.app.metadata.name || cmd.sender != *me {
            return;
        }
        let subs = self.subs.iter().map(|(_, s)| s);
        let Some(topic) = topics::delivery_topic(subs, me, &cmd.device, &cmd.command) else {
            return;
        };
        let publish = Publish::new(topic, QoS::AtMostOnce, cmd.payload);
        if self.out.try_send(Packet::Publish(publish)).is_err() {
            tracing::warn!(device = %me, command = %cmd.command,
                "MQTT outgoing queue full: command dropped");
        }
    }
}

/// The next command from the bus; never resolves without a subscription.
async fn next_command(rx: &mut Option<broadcast::Receiver<RoutedCommand>>) -> RoutedCommand {
    let Some(rx) = rx.as_mut() else { return std::future::pending().await };
    loop {
        match rx.recv().await {
            Ok(cmd) => return cmd,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "MQTT session lagged behind the command bus");
            }
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

/// The event's content type and parsed JSON: the v5 content type if given (JSON types must
/// parse: `None` otherwise), else JSON if the payload parses, else octet-stream.
fn content(
    content_type: Option<&str>,
    payload: &[u8],
) -> Option<(String, Option<serde_json::Value>)> {
    match content_type {
        Some(ct) if is_json(ct) => {
            let v = serde_json::from_slice(payload).ok()?;
            Some((ct.to_owned(), Some(v)))
        }
        Some(ct) => Some((ct.to_owned(), None)),
        None => match serde_json::from_slice(payload) {
            Ok(v) => Some(("application/json".to_owned(), Some(v))),
            Err(_) => Some(("application/octet-stream".to_owned(), None)),
        },
    }
}

/// The last will as an event of the connected device, on channel = will topic.
fn publish_will(state: &AppState, who: &Authenticated, will: &Will) {
    let (ct, json) = content(will.content_type.as_deref(), &will.payload)
        .unwrap_or_else(|| ("application/octet-stream".to_owned(), None));
    let device = (who.device.metadata.name.as_str(), who.device.metadata.uid.as_str());
    let parties = EventParties {
        app: (&who.app.metadata.name, &who.app.metadata.uid),
        device,
        sender: device,
    };
    let event = CloudEvent::telemetry(&parties, &will.topic, Some(&ct), None, json, &will.payload);
    state.events.append(event);
}

fn connection_event(who: &Authenticated, connected: bool) -> CloudEvent {
    let device = (who.device.metadata.name.as_str(), who.device.metadata.uid.as_str());
    let parties = EventParties {
        app: (&who.app.metadata.name, &who.app.metadata.uid),
        device,
        sender: device,
    };
    CloudEvent::connection(&parties, connected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_from_v5_property_or_json_sniffing() {
        let (ct, json) = content(None, br#"{"t":1}"#).unwrap();
        assert_eq!((ct.as_str(), json), ("application/json", Some(serde_json::json!({"t":1}))));
        assert_eq!(content(None, b"\x01\x02").unwrap(), ("application/octet-stream".into(), None));
        assert_eq!(content(Some("text/plain"), b"{}").unwrap(), ("text/plain".into(), None));
        assert!(content(Some("application/json"), b"not json").is_none());
    }

    #[test]
    fn only_a_normal_disconnect_discards_the_will() {
        assert!(!End::ClientDisconnect(DisconnectReason::NormalDisconnection).publishes_will());
        assert!(
            End::ClientDisconnect(DisconnectReason::DisconnectWithWillMessage).publishes_will()
        );
        for end in [End::Lost, End::KeepAliveTimeout, End::RejectedPublish, End::ServerShutdown] {
            assert!(end.publishes_will());
        }
    }
}
