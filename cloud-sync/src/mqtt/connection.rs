//! The socket side of the MQTT uplinks: connect (TCP, optionally TLS), CONNECT/CONNACK, then
//! shuttle bytes between the socket and the [`Session`]; reconnect with backoff. Every
//! protocol decision is the session's; this loop only does I/O and resolves verdicts.
//!
//! With an [`Inbox`] (the Drogue MQTT uplink given a command intake), commands the broker
//! publishes go, in order, to a worker that submits them to the command router one after
//! another; a QoS 1 command's PUBACK is written only once the router took it.

use std::{sync::Arc, time::Duration};

use bytes::BytesMut;
use rumqttc::mqttbytes::{
    self,
    v4::{ConnectReturnCode, Packet},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, oneshot},
};
use tokio_rustls::{TlsConnector, rustls::pki_types::ServerName};
use tokio_util::sync::CancellationToken;

use gw_model::{Command, Identity, Timestamp};
use rumqttc::mqttbytes::{QoS, v4::Publish};

use super::{
    Chain, MAX_PACKET, inbox,
    session::{Session, Subscribed},
    wire::{Incoming, Protocol},
};
use crate::{
    CloudError, UplinkStatus,
    backoff::Backoff,
    commands::{CommandIntake, Via},
    config::Broker,
    uplink::Verdict,
};

/// Commands read from the broker and not yet submitted, per connection; more are left
/// unacknowledged (Drogue delivers at most once; a QoS 1 broker redelivers).
const INBOX_QUEUE: usize = 256;

/// Where commands the broker publishes go.
#[derive(Clone)]
pub(crate) struct Inbox {
    pub(crate) intake: CommandIntake,
    /// The gateway: its app is every command's, its name the device of an empty device level.
    pub(crate) gateway: Identity,
    /// Where commands are published, and the filter subscribed.
    pub(crate) topic: std::sync::Arc<inbox::CommandTopic>,
}

/// The largest packet accepted from the broker (CONNACK, PUBACK, PINGRESP are 2-4 bytes).
const MAX_INCOMING: usize = 64 * 1024;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How many connections in a row may end with the same record first in flight before its
/// device is parked: a broker that cannot refuse a publish on MQTT 3.1.1 closes the
/// connection instead (Drogue does, for a device the gateway may not act for), and resending
/// the record would drop every connection after it.
pub const POISON_STRIKES: u32 = 3;

/// A record's way back for its verdict, with what tells it apart from other records.
struct Reply {
    tx: oneshot::Sender<Verdict>,
    /// A hash of the PUBLISH's topic and payload.
    key: u64,
}

impl Reply {
    fn new(publish: &Publish, tx: oneshot::Sender<Verdict>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        publish.topic.hash(&mut h);
        publish.payload.hash(&mut h);
        Self { tx, key: h.finish() }
    }

    fn send(self, verdict: Verdict) {
        let _ = self.tx.send(verdict);
    }
}

/// Wraps a chain's senders for the session.
fn replies(chain: Chain) -> Vec<(Publish, Reply)> {
    chain
        .into_iter()
        .map(|(p, tx)| {
            let reply = Reply::new(&p, tx);
            (p, reply)
        })
        .collect()
}

/// The record first in flight when connections dropped, and how many drops in a row.
#[derive(Default)]
struct Suspect {
    key: Option<u64>,
    strikes: u32,
}

impl Suspect {
    /// Settles the records in flight on a lost connection: the first one is refused once it
    /// was first in flight at `POISON_STRIKES` drops in a row; the others' fate is unknown.
    fn settle(&mut self, dropped: Vec<Reply>, why: &str) -> Option<String> {
        let first = dropped.first().map(|r| r.key);
        if first.is_some() && first == self.key {
            self.strikes += 1;
        } else {
            *self = Suspect { key: first, strikes: u32::from(first.is_some()) };
        }
        let poisoned = self.strikes >= POISON_STRIKES;
        let mut refused = None;
        for (i, reply) in dropped.into_iter().enumerate() {
            if i == 0 && poisoned {
                let reason = format!(
                    "the broker closed the connection {} times in a row with this record first in flight",
                    self.strikes
                );
                refused = Some(reason.clone());
                reply.send(Verdict::Refused(reason));
            } else {
                reply.send(Verdict::Unknown(why.to_owned()));
            }
        }
        if poisoned {
            *self = Suspect::default();
        }
        refused
    }
}

/// The connection task of one MQTT uplink.
pub struct Connection {
    dial: Dial,
    backoff: Backoff,
    link: Link,
    status: Arc<UplinkStatus>,
    suspect: Suspect,
}

impl Connection {
    /// Takes commands the broker publishes (subscribing `command/inbox/#` after every
    /// CONNACK) and hands them to `intake`.
    pub(crate) fn set_inbox(&mut self, inbox: Inbox) {
        self.link.session.set_subscription(inbox.topic.filter());
        self.link.inbox = Some(inbox);
    }
}

/// What it takes to open a connection.
struct Dial {
    protocol: Protocol,
    broker: Broker,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect: Packet,
    timeout: Duration,
}

/// The session and the chains arriving for it.
struct Link {
    protocol: Protocol,
    session: Session<Reply>,
    chains: mpsc::Receiver<Chain>,
    inbox: Option<Inbox>,
    status: Arc<UplinkStatus>,
}

impl Connection {
    /// `hello`: the protocol spoken and the CONNECT that opens each connection.
    pub(super) fn new(
        broker: Broker,
        tls: Option<Arc<rustls::ClientConfig>>,
        hello: (Protocol, mqttbytes::v4::Connect),
        timeout: Duration,
        backoff: Backoff,
        chains: mpsc::Receiver<Chain>,
        status: Arc<UplinkStatus>,
    ) -> Result<Self, CloudError> {
        let tls = match tls {
            None => None,
            Some(config) => {
                let name = ServerName::try_from(broker.host.clone()).map_err(|e| {
                    CloudError::Config { key: "url", reason: format!("{:?}: {e}", broker.host) }
                })?;
                Some((TlsConnector::from(config), name))
            }
        };
        let (protocol, connect) = hello;
        let keep_alive = Duration::from_secs(u64::from(super::KEEP_ALIVE_SECS));
        Ok(Self {
            dial: Dial { protocol, broker, tls, connect: Packet::Connect(connect), timeout },
            backoff,
            link: Link {
                protocol,
                session: Session::new(keep_alive, timeout),
                chains,
                inbox: None,
                status: Arc::clone(&status),
            },
            status,
            suspect: Suspect::default(),
        })
    }

    /// Connects, publishes, reconnects, until `token` is cancelled or the publisher is gone.
    /// Records still in flight or waiting at the end resolve as transient (nacked).
    pub async fn run(mut self, token: CancellationToken) {
        let broker = format!("{}:{}", self.dial.broker.host, self.dial.broker.port);
        loop {
            let opened = match self.link.wait(&token, self.dial.open()).await {
                Some(opened) => opened,
                None => break,
            };
            let why = match opened {
                Ok((io, rest)) => {
                    tracing::info!(broker = %broker, "MQTT uplink connected");
                    self.backoff.reset();
                    self.status.record_connected();
                    let why = self.link.serve(io, rest, &token).await;
                    let dropped = self.link.session.disconnected();
                    let lost = dropped.len();
                    if let Some(reason) =
                        self.suspect.settle(dropped, "the connection to the broker dropped")
                    {
                        tracing::warn!(broker = %broker, cause = %reason, "MQTT uplink: a record keeps the broker closing the connection; its device is parked");
                    }
                    match why {
                        None => break,
                        Some(why) => {
                            tracing::warn!(broker = %broker, cause = %why, in_flight = lost, "MQTT uplink disconnected; unacknowledged records are sent again");
                            why
                        }
                    }
                }
                Err(why) => {
                    tracing::warn!(broker = %broker, cause = %why, "cannot connect the MQTT uplink");
                    why
                }
            };
            self.status.record_failure(why);
            let delay = self.backoff.next_delay();
            if self.link.wait(&token, tokio::time::sleep(delay)).await.is_none() {
                break;
            }
        }
        fail(self.link.session.abandon(), "the uplink stopped");
    }
}

/// Records that never went out on a connection: tried again later.
fn fail(replies: Vec<Reply>, why: &str) {
    for reply in replies {
        reply.send(Verdict::Transient(why.to_owned()));
    }
}

fn encode(protocol: Protocol, out: &mut Vec<Packet>, buf: &mut BytesMut) -> Result<(), String> {
    for packet in out.drain(..) {
        protocol.write(&packet, buf, MAX_PACKET)?;
    }
    Ok(())
}

impl Dial {
    /// TCP, TLS, CONNECT, CONNACK, within `timeout`. Returns the stream and any bytes read
    /// past the CONNACK.
    async fn open(&self) -> Result<(Box<dyn Io>, BytesMut), String> {
        let attempt = async {
            let (host, port) = (self.broker.host.as_str(), self.broker.port);
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let mut io: Box<dyn Io> = match &self.tls {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?,
                ),
            };
            let mut buf = BytesMut::with_capacity(256);
            self.protocol.write(&self.connect, &mut buf, MAX_PACKET)?;
            io.write_all(&buf).await.map_err(|e| format!("sending CONNECT: {e}"))?;
            io.flush().await.map_err(|e| format!("sending CONNECT: {e}"))?;
            buf.clear();
            loop {
                match self.protocol.read(&mut buf, MAX_INCOMING) {
                    Ok(Some(Incoming::Packet(Packet::ConnAck(ack))))
                        if ack.code == ConnectReturnCode::Success =>
                    {
                        return Ok((io, buf));
                    }
                    Ok(Some(Incoming::Packet(Packet::ConnAck(ack)))) => {
                        return Err(format!("the broker refused the connection: {:?}", ack.code));
                    }
                    Ok(Some(other)) => return Err(format!("expected CONNACK, got {other:?}")),
                    Ok(None) => {}
                    Err(e) => return Err(format!("bad CONNACK: {e}")),
                }
                match io.read_buf(&mut buf).await {
                    Ok(0) => return Err("the broker closed the connection before CONNACK".into()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("waiting for CONNACK: {e}")),
                }
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("no CONNACK within {:?}", self.timeout)))
    }
}

impl Link {
    /// Runs `fut` while taking chains (they wait in the session for the connection) and
    /// failing those that waited too long. `None` when cancelled or the publisher is gone.
    async fn wait<F: Future>(&mut self, token: &CancellationToken, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        loop {
            let wake = self.session.next_wakeup();
            tokio::select! {
                _ = token.cancelled() => return None,
                out = &mut fut => return Some(out),
                chain = self.chains.recv() => {
                    self.session.submit(replies(chain?), std::time::Instant::now(), &mut Vec::new());
                }
                _ = sleep_until(wake), if wake.is_some() => {
                    fail(self.session.expire(std::time::Instant::now()), "not connected to the broker in time");
                }
            }
        }
    }

    /// One live connection. Returns why it ended, or `None` when cancelled.
    async fn serve(
        &mut self,
        io: Box<dyn Io>,
        mut rbuf: BytesMut,
        token: &CancellationToken,
    ) -> Option<String> {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut wbuf = BytesMut::with_capacity(64 * 1024);
        let mut out = Vec::new();
        let mut unflushed = false;
        // This connection's command worker: its PUBACKs belong to this connection only.
        let (commands, mut acks, worker) = match &self.inbox {
            Some(inbox) => {
                let (tx, rx) = mpsc::channel(INBOX_QUEUE);
                let (ack_tx, ack_rx) = mpsc::unbounded_channel();
                let worker = tokio::spawn(submit_commands(inbox.clone(), rx, ack_tx));
                (Some(tx), Some(ack_rx), Some(AbortOnDrop(worker)))
            }
            None => (None, None, None),
        };
        let _worker = worker;
        self.session.connected(std::time::Instant::now(), &mut out);
        loop {
            if let Err(e) = encode(self.protocol, &mut out, &mut wbuf) {
                return Some(e);
            }
            // Packets already read (the CONNACK's tail, or a whole burst of PUBACKs).
            loop {
                let packet = match self.protocol.read(&mut rbuf, MAX_INCOMING) {
                    Ok(Some(Incoming::Packet(packet))) => Ok(packet),
                    Ok(Some(Incoming::Refused { pkid, verdict })) => {
                        match self.session.puback(pkid) {
                            Some(reply) => reply.send(verdict),
                            None => tracing::debug!(pkid, "PUBACK for no record in flight"),
                        }
                        continue;
                    }
                    Ok(Some(Incoming::Disconnected(why))) => {
                        return Some(format!("the broker disconnected: {why}"));
                    }
                    Ok(None) => break,
                    Err(e) => Err(e),
                };
                match packet {
                    Ok(Packet::PubAck(ack)) => match self.session.puback(ack.pkid) {
                        Some(reply) => reply.send(Verdict::Accepted),
                        None => tracing::debug!(pkid = ack.pkid, "PUBACK for no record in flight"),
                    },
                    Ok(Packet::PingResp) => self.session.pingresp(),
                    Ok(Packet::SubAck(ack)) => match self.session.suback(&ack) {
                        Some(Subscribed::Granted(qos)) => {
                            tracing::info!(
                                filter = self.session.subscription().unwrap_or_default(),
                                ?qos,
                                "MQTT uplink subscribed to commands"
                            );
                        }
                        Some(Subscribed::Refused) => {
                            tracing::error!(
                                filter = self.session.subscription().unwrap_or_default(),
                                "the broker refused the command subscription; no commands arrive over MQTT"
                            );
                            self.status.record_failure(format!(
                                "the broker refused the subscription to {}",
                                self.session.subscription().unwrap_or_default()
                            ));
                        }
                        None => tracing::debug!(pkid = ack.pkid, "SUBACK for no SUBSCRIBE"),
                    },
                    Ok(Packet::Publish(publish)) if commands.is_some() => {
                        let Some(tx) = &commands else { continue };
                        if let Err(e) = tx.try_send(publish) {
                            let publish = match e {
                                mpsc::error::TrySendError::Full(p)
                                | mpsc::error::TrySendError::Closed(p) => p,
                            };
                            tracing::warn!(topic = %publish.topic, "command inbox full; command left unacknowledged");
                        }
                    }
                    Ok(other) => {
                        return Some(format!("unexpected packet from the broker: {other:?}"));
                    }
                    Err(e) => return Some(format!("malformed packet from the broker: {e}")),
                }
            }
            let wake = self.session.next_wakeup();
            tokio::select! {
                _ = token.cancelled() => return None,
                read = rd.read_buf(&mut rbuf) => match read {
                    Ok(0) => return Some("the broker closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => return Some(format!("reading from the broker: {e}")),
                },
                chain = self.chains.recv() => match chain {
                    Some(chain) => self.session.submit(replies(chain), std::time::Instant::now(), &mut out),
                    None => return None,
                },
                Some(pkid) = recv_ack(&mut acks) => {
                    self.session.ack_command(pkid, std::time::Instant::now(), &mut out);
                }
                written = write_some(&mut wr, &mut wbuf, &mut unflushed), if unflushed || !wbuf.is_empty() => {
                    if let Err(e) = written {
                        return Some(format!("writing to the broker: {e}"));
                    }
                }
                _ = sleep_until(wake), if wake.is_some() => {
                    if let Err(dead) = self.session.tick(std::time::Instant::now(), &mut out) {
                        return Some(dead.to_string());
                    }
                }
            }
        }
    }
}

/// Stops the command worker with its connection.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn recv_ack(acks: &mut Option<mpsc::UnboundedReceiver<u16>>) -> Option<u16> {
    match acks {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Submits the connection's commands one after another, in the order the broker sent them;
/// sends back the packet id of each QoS 1 command the router took, to be acknowledged.
async fn submit_commands(
    inbox: Inbox,
    mut commands: mpsc::Receiver<Publish>,
    acks: mpsc::UnboundedSender<u16>,
) {
    while let Some(publish) = commands.recv().await {
        let route = match inbox.topic.parse(&publish.topic, inbox.gateway.device()) {
            Ok(route) => route,
            Err(why) => {
                tracing::warn!(cause = %why, "command on an unexpected topic; not acknowledged");
                continue;
            }
        };
        let command = Command {
            app: inbox.gateway.app().clone(),
            device: route.device,
            name: route.command,
            // MQTT 3.1.1 carries no content type (and Drogue sends commands without one).
            content_type: None,
            payload: publish.payload,
            created_at: Timestamp::from_system(std::time::SystemTime::now()),
            expires_at: None,
        };
        let outcome = inbox.intake.submit(Via::Mqtt, command).await;
        if publish.qos == QoS::AtLeastOnce
            && outcome.is_accepted()
            && acks.send(publish.pkid).is_err()
        {
            return;
        }
    }
}

/// Writes what it can of `buf`; once it is empty, flushes (TLS keeps bytes of its own).
/// Cancel-safe: `unflushed` remembers a flush still owed.
async fn write_some<W: AsyncWrite + Unpin>(
    wr: &mut W,
    buf: &mut BytesMut,
    unflushed: &mut bool,
) -> std::io::Result<()> {
    if !buf.is_empty() {
        let n = wr.write_buf(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        *unflushed = true;
    }
    if buf.is_empty() {
        wr.flush().await?;
        *unflushed = false;
    }
    Ok(())
}

async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight(payload: &'static str) -> (Reply, oneshot::Receiver<Verdict>) {
        let (tx, rx) = oneshot::channel();
        let publish = Publish::new("temp/s1", QoS::AtLeastOnce, payload);
        (Reply::new(&publish, tx), rx)
    }

    #[test]
    fn parks_the_record_first_in_flight_on_three_drops_in_a_row() {
        let mut suspect = Suspect::default();
        for round in 1..=POISON_STRIKES {
            let (bad, mut bad_rx) = flight("bad");
            let (other, mut other_rx) = flight("other");
            let refused = suspect.settle(vec![bad, other], "dropped");
            assert!(matches!(other_rx.try_recv(), Ok(Verdict::Unknown(_))));
            if round < POISON_STRIKES {
                assert_eq!(refused, None);
                assert!(matches!(bad_rx.try_recv(), Ok(Verdict::Unknown(_))));
            } else {
                assert!(refused.is_some_and(|r| r.contains("closed the connection 3 times")));
                assert!(matches!(bad_rx.try_recv(), Ok(Verdict::Refused(_))));
            }
        }
    }

    #[test]
    fn a_different_record_first_in_flight_starts_the_count_again() {
        let mut suspect = Suspect::default();
        for payload in ["a", "a", "b", "a", "a"] {
            let (reply, mut rx) = flight(payload);
            assert_eq!(suspect.settle(vec![reply], "dropped"), None);
            assert!(matches!(rx.try_recv(), Ok(Verdict::Unknown(_))));
        }
        assert_eq!(suspect.settle(Vec::new(), "dropped"), None, "nothing in flight");
        assert_eq!(suspect.strikes, 0);
    }
}
