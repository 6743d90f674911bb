//! The publisher's protocol state, without sockets or clocks of its own: which packet id
//! belongs to which record, what is in flight, what waits for a connection, when to ping, and
//! when the connection counts as dead. The connection loop feeds it events and writes the
//! packets it returns; every decision is here, so it is tested synchronously.
//!
//! Each record carries a `T` (in the daemon a oneshot that resolves the record's verdict);
//! the session hands it back when the record is settled: on PUBACK, or as failed when the
//! connection drops, so the caller can nack it (at-least-once).
//!
//! With a command subscription (the Drogue MQTT uplink), every CONNACK is followed by a
//! SUBSCRIBE; commands the broker publishes are acknowledged (QoS 1) only when the caller says
//! the command router took them ([`Session::ack_command`]).
//!
//! A *chain* is one device's records of an outbox batch. It goes onto the wire in one piece
//! and in order, so one connection carries either all of a chain or none of it: a failure
//! never sends a device's later record on a new connection while its earlier one is retried.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use rumqttc::mqttbytes::{
    QoS,
    v4::{Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode},
};

/// A packet id in use bitmap over 1..=65535.
struct PkidSet([u64; 1024]);

impl PkidSet {
    fn contains(&self, id: u16) -> bool {
        self.0[usize::from(id / 64)] & (1 << (id % 64)) != 0
    }
    fn set(&mut self, id: u16, on: bool) {
        let (word, bit) = (usize::from(id / 64), 1u64 << (id % 64));
        if on {
            self.0[word] |= bit;
        } else {
            self.0[word] &= !bit;
        }
    }
}

struct Flight<T> {
    pkid: u16,
    sent_at: Instant,
    token: T,
}

struct Waiting<T> {
    records: Vec<(Publish, T)>,
    deadline: Instant,
}

/// Why the session gave up on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dead {
    /// A PUBACK took longer than the timeout.
    AckTimeout(Duration),
    /// No PINGRESP within the keep-alive interval.
    PingTimeout(Duration),
}

impl std::fmt::Display for Dead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dead::AckTimeout(d) => write!(f, "no PUBACK within {d:?}"),
            Dead::PingTimeout(d) => write!(f, "no PINGRESP within {d:?}"),
        }
    }
}

pub struct Session<T> {
    keep_alive: Duration,
    timeout: Duration,
    up: bool,
    next_pkid: u16,
    in_use: Box<PkidSet>,
    /// In send order; PUBACKs normally arrive in this order, so settling is O(1).
    in_flight: VecDeque<Flight<T>>,
    /// Chains submitted while no connection was up, in order.
    waiting: VecDeque<Waiting<T>>,
    last_sent: Option<Instant>,
    ping_sent: Option<Instant>,
    /// The filter subscribed after every CONNACK, if any.
    subscription: Option<String>,
    /// The packet id of the SUBSCRIBE awaiting its SUBACK.
    subscribing: Option<u16>,
}

/// What a SUBACK said about the session's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// Granted with this maximum QoS (Drogue always grants QoS 0).
    Granted(QoS),
    /// The broker refused the subscription.
    Refused,
}

impl<T> Session<T> {
    /// `keep_alive`: ping after this long without sending; a PINGRESP must come within it.
    /// `timeout`: how long a record may wait for a connection, and then for its PUBACK.
    pub fn new(keep_alive: Duration, timeout: Duration) -> Self {
        Self {
            keep_alive,
            timeout,
            up: false,
            next_pkid: 1,
            in_use: Box::new(PkidSet([0; 1024])),
            in_flight: VecDeque::new(),
            waiting: VecDeque::new(),
            last_sent: None,
            ping_sent: None,
            subscription: None,
            subscribing: None,
        }
    }

    /// Subscribes `filter` (QoS 1 asked) after every CONNACK.
    pub fn set_subscription(&mut self, filter: impl Into<String>) {
        self.subscription = Some(filter.into());
    }

    /// The filter subscribed after every CONNACK, if any.
    pub fn subscription(&self) -> Option<&str> {
        self.subscription.as_deref()
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn waiting(&self) -> usize {
        self.waiting.iter().map(|w| w.records.len()).sum()
    }

    /// A device's chain, in order. Returns the packets to write now (none while down; the
    /// chain then waits up to `timeout` for a connection).
    pub fn submit(&mut self, records: Vec<(Publish, T)>, now: Instant, out: &mut Vec<Packet>) {
        if self.up {
            self.put_on_wire(records, now, out);
        } else {
            self.waiting.push_back(Waiting { records, deadline: now + self.timeout });
        }
    }

    /// The broker accepted the CONNECT: waiting chains go out, oldest first.
    pub fn connected(&mut self, now: Instant, out: &mut Vec<Packet>) {
        self.up = true;
        self.ping_sent = None;
        self.last_sent = Some(now);
        if let Some(filter) = self.subscription.clone() {
            let pkid = self.allocate();
            let mut subscribe = Subscribe::new(filter, QoS::AtLeastOnce);
            subscribe.pkid = pkid;
            out.push(Packet::Subscribe(subscribe));
            self.subscribing = Some(pkid);
        }
        while let Some(w) = self.waiting.pop_front() {
            self.put_on_wire(w.records, now, out);
        }
    }

    /// The connection is gone (or given up). Returns every record that was in flight, in send
    /// order: their fate is unknown, so the caller nacks them and they are sent again.
    pub fn disconnected(&mut self) -> Vec<T> {
        self.up = false;
        self.ping_sent = None;
        self.last_sent = None;
        if let Some(pkid) = self.subscribing.take() {
            self.in_use.set(pkid, false);
        }
        self.in_flight
            .drain(..)
            .map(|f| {
                self.in_use.set(f.pkid, false);
                f.token
            })
            .collect()
    }

    /// The broker acknowledged `pkid`; returns its record, or `None` for an unknown id.
    pub fn puback(&mut self, pkid: u16) -> Option<T> {
        let at = self.in_flight.iter().position(|f| f.pkid == pkid)?;
        let flight = self.in_flight.remove(at)?;
        self.in_use.set(pkid, false);
        Some(flight.token)
    }

    /// The broker answered a SUBSCRIBE; `None` when it is not the one awaited.
    pub fn suback(&mut self, ack: &SubAck) -> Option<Subscribed> {
        if self.subscribing != Some(ack.pkid) {
            return None;
        }
        self.subscribing = None;
        self.in_use.set(ack.pkid, false);
        Some(match ack.return_codes.first() {
            Some(SubscribeReasonCode::Success(qos)) => Subscribed::Granted(*qos),
            _ => Subscribed::Refused,
        })
    }

    /// Acknowledges a QoS 1 command the broker published (`pkid`), once it was taken.
    pub fn ack_command(&mut self, pkid: u16, now: Instant, out: &mut Vec<Packet>) {
        if self.up {
            out.push(Packet::PubAck(PubAck::new(pkid)));
            self.last_sent = Some(now);
        }
    }

    pub fn pingresp(&mut self) {
        self.ping_sent = None;
    }

    /// Chains that waited for a connection longer than `timeout`: failed, in order.
    pub fn expire(&mut self, now: Instant) -> Vec<T> {
        let mut failed = Vec::new();
        while self.waiting.front().is_some_and(|w| w.deadline <= now) {
            if let Some(w) = self.waiting.pop_front() {
                failed.extend(w.records.into_iter().map(|(_, t)| t));
            }
        }
        failed
    }

    /// The end: every record in flight and every waiting one, to be failed.
    pub fn abandon(&mut self) -> Vec<T> {
        let mut all = self.disconnected();
        all.extend(self.waiting.drain(..).flat_map(|w| w.records.into_iter().map(|(_, t)| t)));
        all
    }

    /// Time-driven duties while up: a PINGREQ when idle for `keep_alive`; `Err` when the
    /// broker stopped answering (the caller drops the connection and calls `disconnected`).
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Packet>) -> Result<(), Dead> {
        if !self.up {
            return Ok(());
        }
        if self.in_flight.front().is_some_and(|f| now >= f.sent_at + self.timeout) {
            return Err(Dead::AckTimeout(self.timeout));
        }
        if let Some(sent) = self.ping_sent {
            if now >= sent + self.keep_alive {
                return Err(Dead::PingTimeout(self.keep_alive));
            }
        } else if self.last_sent.is_some_and(|t| now >= t + self.keep_alive) {
            out.push(Packet::PingReq);
            self.ping_sent = Some(now);
            self.last_sent = Some(now);
        }
        Ok(())
    }

    /// When `tick` or `expire` next has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let expiry = self.waiting.front().map(|w| w.deadline);
        let duties = self.up.then(|| {
            let ack = self.in_flight.front().map(|f| f.sent_at + self.timeout);
            let ping = match self.ping_sent {
                Some(sent) => Some(sent + self.keep_alive),
                None => self.last_sent.map(|t| t + self.keep_alive),
            };
            [ack, ping].into_iter().flatten().min()
        });
        [expiry, duties.flatten()].into_iter().flatten().min()
    }

    fn put_on_wire(&mut self, records: Vec<(Publish, T)>, now: Instant, out: &mut Vec<Packet>) {
        for (mut publish, token) in records {
            let pkid = self.allocate();
            publish.pkid = pkid;
            out.push(Packet::Publish(publish));
            self.in_flight.push_back(Flight { pkid, sent_at: now, token });
        }
        self.last_sent = Some(now);
    }

    /// The next free packet id after the last one given out. The uplink keeps at most
    /// `concurrency` (<= 4096) records in flight, so a free id is always found.
    fn allocate(&mut self) -> u16 {
        let mut id = self.next_pkid;
        for _ in 0..u16::MAX {
            if !self.in_use.contains(id) {
                break;
            }
            id = id.checked_add(1).unwrap_or(1);
        }
        self.in_use.set(id, true);
        self.next_pkid = id.checked_add(1).unwrap_or(1);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KA: Duration = Duration::from_secs(30);
    const TIMEOUT: Duration = Duration::from_secs(10);

    fn chain(tokens: &[u32]) -> Vec<(Publish, u32)> {
        tokens
            .iter()
            .map(|&t| (Publish::new(format!("t/{t}"), QoS::AtLeastOnce, vec![]), t))
            .collect()
    }

    fn pkids(out: &[Packet]) -> Vec<u16> {
        out.iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.pkid),
                _ => None,
            })
            .collect()
    }

    fn up(now: Instant) -> Session<u32> {
        let mut s = Session::new(KA, TIMEOUT);
        s.connected(now, &mut Vec::new());
        s
    }

    #[test]
    fn publishes_a_chain_in_order_and_settles_on_puback() {
        let now = Instant::now();
        let mut s = up(now);
        let mut out = Vec::new();
        s.submit(chain(&[10, 11, 12]), now, &mut out);
        assert_eq!(pkids(&out), vec![1, 2, 3]);
        let topics: Vec<_> = out
            .iter()
            .filter_map(|p| if let Packet::Publish(p) = p { Some(p.topic.clone()) } else { None })
            .collect();
        assert_eq!(topics, ["t/10", "t/11", "t/12"]);
        assert_eq!(s.puback(2), Some(11));
        assert_eq!(s.puback(2), None, "an id is settled once");
        assert_eq!(s.puback(1), Some(10));
        assert_eq!(s.puback(3), Some(12));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn nacks_everything_in_flight_on_disconnect_and_reuses_no_live_id() {
        let now = Instant::now();
        let mut s = up(now);
        let mut out = Vec::new();
        s.submit(chain(&[1, 2]), now, &mut out);
        s.submit(chain(&[3]), now, &mut out);
        assert_eq!(s.puback(1), Some(1));
        assert_eq!(s.disconnected(), vec![2, 3]);
        assert!(!s.is_up());
        assert_eq!(s.puback(2), None, "a PUBACK after the drop settles nothing");
    }

    #[test]
    fn chains_submitted_while_down_wait_and_go_out_whole_on_connect() {
        let now = Instant::now();
        let mut s: Session<u32> = Session::new(KA, TIMEOUT);
        let mut out = Vec::new();
        s.submit(chain(&[1, 2]), now, &mut out);
        s.submit(chain(&[3]), now, &mut out);
        assert!(out.is_empty());
        assert_eq!(s.waiting(), 3);
        s.connected(now + Duration::from_secs(1), &mut out);
        assert_eq!(pkids(&out), vec![1, 2, 3]);
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn waiting_chains_fail_after_the_timeout() {
        let now = Instant::now();
        let mut s: Session<u32> = Session::new(KA, TIMEOUT);
        s.submit(chain(&[1, 2]), now, &mut Vec::new());
        s.submit(chain(&[3]), now + Duration::from_secs(5), &mut Vec::new());
        assert_eq!(s.next_wakeup(), Some(now + TIMEOUT));
        assert!(s.expire(now + Duration::from_secs(9)).is_empty());
        assert_eq!(s.expire(now + TIMEOUT), vec![1, 2]);
        assert_eq!(s.expire(now + Duration::from_secs(15)), vec![3]);
        assert_eq!(s.next_wakeup(), None);
        s.submit(chain(&[4]), now, &mut Vec::new());
        assert_eq!(s.abandon(), vec![4], "at the end nothing is left unanswered");
    }

    #[test]
    fn pings_when_idle_and_gives_up_without_pingresp() {
        let now = Instant::now();
        let mut s = up(now);
        let mut out = Vec::new();
        assert_eq!(s.next_wakeup(), Some(now + KA));
        s.tick(now + Duration::from_secs(29), &mut out).unwrap();
        assert!(out.is_empty());
        s.tick(now + KA, &mut out).unwrap();
        assert_eq!(out, vec![Packet::PingReq]);
        s.pingresp();
        out.clear();
        s.tick(now + KA + Duration::from_secs(1), &mut out).unwrap();
        assert!(out.is_empty(), "the next ping is due a keep-alive after the last one");
        s.tick(now + KA * 2, &mut out).unwrap();
        assert_eq!(out, vec![Packet::PingReq]);
        assert_eq!(s.tick(now + KA * 3, &mut out), Err(Dead::PingTimeout(KA)));
    }

    #[test]
    fn a_publish_resets_the_ping_clock() {
        let now = Instant::now();
        let mut s = up(now);
        let mut out = Vec::new();
        s.submit(chain(&[1]), now + Duration::from_secs(20), &mut out);
        s.puback(1);
        out.clear();
        s.tick(now + KA, &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(s.next_wakeup(), Some(now + Duration::from_secs(20) + KA));
    }

    #[test]
    fn a_missing_puback_kills_the_connection_after_the_timeout() {
        let now = Instant::now();
        let mut s = up(now);
        s.submit(chain(&[1]), now, &mut Vec::new());
        assert_eq!(s.next_wakeup(), Some(now + TIMEOUT));
        assert!(s.tick(now + Duration::from_secs(9), &mut Vec::new()).is_ok());
        assert_eq!(s.tick(now + TIMEOUT, &mut Vec::new()), Err(Dead::AckTimeout(TIMEOUT)));
    }

    #[test]
    fn subscribes_after_every_connack_with_its_own_packet_id() {
        let now = Instant::now();
        let mut s: Session<u32> = Session::new(KA, TIMEOUT);
        s.set_subscription("command/inbox/#");
        s.submit(chain(&[1]), now, &mut Vec::new());
        let mut out = Vec::new();
        s.connected(now, &mut out);
        let Packet::Subscribe(sub) = &out[0] else { panic!("{out:?}") };
        assert_eq!(sub.filters[0].path, "command/inbox/#");
        assert_eq!(sub.filters[0].qos, QoS::AtLeastOnce);
        assert_eq!(pkids(&out), vec![2], "the waiting record does not reuse the SUBSCRIBE's id");
        let sub_id = sub.pkid;
        assert_eq!(s.suback(&SubAck::new(99, vec![])), None);
        let granted = SubAck::new(sub_id, vec![SubscribeReasonCode::Success(QoS::AtMostOnce)]);
        assert_eq!(s.suback(&granted), Some(Subscribed::Granted(QoS::AtMostOnce)));
        assert_eq!(s.suback(&granted), None, "answered once");

        // again on the next connection, and a refusal is reported
        s.disconnected();
        out.clear();
        s.connected(now, &mut out);
        let Packet::Subscribe(sub) = &out[0] else { panic!("{out:?}") };
        let refused = SubAck::new(sub.pkid, vec![SubscribeReasonCode::Failure]);
        assert_eq!(s.suback(&refused), Some(Subscribed::Refused));
    }

    #[test]
    fn acknowledges_commands_only_while_up() {
        let now = Instant::now();
        let mut s: Session<u32> = Session::new(KA, TIMEOUT);
        s.set_subscription("command/inbox/#");
        let mut out = Vec::new();
        s.ack_command(7, now, &mut out);
        assert!(out.is_empty(), "no connection, no PUBACK");
        s.connected(now, &mut out);
        out.clear();
        s.ack_command(7, now + Duration::from_secs(20), &mut out);
        assert_eq!(out, vec![Packet::PubAck(PubAck::new(7))]);
        assert_eq!(
            s.next_wakeup(),
            Some(now + Duration::from_secs(20) + KA),
            "a PUBACK counts as sending"
        );
    }

    #[test]
    fn without_a_subscription_nothing_is_subscribed() {
        let mut out = Vec::new();
        let mut s: Session<u32> = Session::new(KA, TIMEOUT);
        s.connected(Instant::now(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn packet_ids_wrap_and_skip_ids_still_in_flight() {
        let now = Instant::now();
        let mut s = up(now);
        let mut out = Vec::new();
        s.submit(chain(&[0]), now, &mut out); // pkid 1 stays in flight
        for i in 0..u32::from(u16::MAX) - 2 {
            out.clear();
            s.submit(chain(&[i]), now, &mut out);
            let id = pkids(&out)[0];
            assert_eq!(s.puback(id), Some(i));
        }
        out.clear();
        s.submit(chain(&[7, 8, 9]), now, &mut out);
        assert_eq!(pkids(&out), vec![65535, 2, 3], "0 is never used, 1 is still in flight");
    }
}
