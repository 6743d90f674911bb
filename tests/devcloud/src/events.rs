//! The application event stream: every accepted telemetry message and every registry change
//! becomes a CloudEvent (contracts/drogue-cloud.md §7), appended to a bounded in-memory log
//! that tests read in-process or over HTTP.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::util;

/// The default number of events kept; older ones are dropped and only counted.
pub const DEFAULT_EVENT_CAPACITY: usize = 1_000_000;

/// A CloudEvent 1.0 in structured JSON form, with Drogue's extensions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub subject: String,
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    pub application: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applicationuid: Option<String>,
    /// The device the event is about: the `as` device, by its canonical name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deviceuid: Option<String>,
    /// The device that sent it (the gateway, when it published `as` another device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub senderuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitionkey: Option<String>,
    /// The payload when the content type is JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// The payload otherwise, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

/// Type of telemetry events.
pub const TYPE_EVENT: &str = "io.drogue.event.v1";
/// Type of connection events.
pub const TYPE_CONNECTION: &str = "io.drogue.connection.v1";
/// Type of registry change events.
pub const TYPE_REGISTRY: &str = "io.drogue.registry.v1";

/// The identities one telemetry event carries: `(name, uid)` pairs.
pub(crate) struct EventParties<'a> {
    pub app: (&'a str, &'a str),
    pub device: (&'a str, &'a str),
    pub sender: (&'a str, &'a str),
}

impl CloudEvent {
    fn base(kind: &str, app: &str, source_device: &str, subject: &str) -> Self {
        Self {
            specversion: "1.0".to_owned(),
            id: util::uuid_v4(),
            kind: kind.to_owned(),
            source: format!("drogue://{}/{}", util::pct(app), util::pct(source_device)),
            subject: subject.to_owned(),
            time: util::rfc3339(SystemTime::now()),
            datacontenttype: None,
            dataschema: None,
            application: app.to_owned(),
            applicationuid: None,
            device: None,
            deviceuid: None,
            sender: None,
            senderuid: None,
            partitionkey: None,
            data: None,
            data_base64: None,
        }
    }

    /// A telemetry event. `json` is the parsed payload when the content type is JSON.
    pub(crate) fn telemetry(
        parties: &EventParties<'_>,
        channel: &str,
        content_type: Option<&str>,
        data_schema: Option<&str>,
        json: Option<Value>,
        payload: &[u8],
    ) -> Self {
        let mut ev = Self::base(TYPE_EVENT, parties.app.0, parties.device.0, channel);
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        ev.applicationuid = non_empty(parties.app.1);
        ev.device = Some(parties.device.0.to_owned());
        ev.deviceuid = non_empty(parties.device.1);
        ev.sender = Some(parties.sender.0.to_owned());
        ev.senderuid = non_empty(parties.sender.1);
        ev.partitionkey =
            Some(format!("{}/{}", util::pct(parties.app.0), util::pct(parties.sender.0)));
        ev.datacontenttype = content_type.map(str::to_owned);
        ev.dataschema = data_schema.map(str::to_owned);
        match json {
            Some(v) => ev.data = Some(v),
            None if payload.is_empty() => {}
            None => {
                ev.data_base64 = Some(base64::engine::general_purpose::STANDARD.encode(payload))
            }
        }
        ev
    }

    /// A connection event of a directly connected device: subject `connection`, data
    /// `{"connected": bool}`.
    pub(crate) fn connection(parties: &EventParties<'_>, connected: bool) -> Self {
        let json = serde_json::json!({ "connected": connected });
        let mut ev =
            Self::telemetry(parties, "connection", Some("application/json"), None, None, &[]);
        ev.kind = TYPE_CONNECTION.to_owned();
        ev.data = Some(json);
        ev
    }

    /// A registry change event: subject `devices` with the device's name, or subject
    /// `applications` for a change of the application itself. The body is empty.
    pub(crate) fn registry_change(app: &str, device: Option<&str>) -> Self {
        let mut ev = match device {
            Some(d) => Self::base(TYPE_REGISTRY, app, d, "devices"),
            None => Self::base(TYPE_REGISTRY, app, "", "applications"),
        };
        ev.device = device.map(str::to_owned);
        ev.partitionkey = Some(util::pct(app));
        ev
    }

    /// The payload bytes: `data` serialized, or `data_base64` decoded.
    pub fn payload(&self) -> Vec<u8> {
        if let Some(v) = &self.data {
            return serde_json::to_vec(v).unwrap_or_default();
        }
        self.data_base64
            .as_deref()
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default()
    }
}

/// A bounded, append-only event log. Events are numbered from 0 in arrival order; when the
/// log is full the oldest are dropped (their numbers are never reused).
pub(crate) struct EventLog {
    inner: Mutex<LogInner>,
    /// Total number of events ever appended.
    total: watch::Sender<u64>,
}

struct LogInner {
    events: VecDeque<CloudEvent>,
    /// Index of `events[0]`, which equals the number of dropped events.
    first: u64,
    capacity: usize,
}

/// A slice of the log, as served by `GET /api/devcloud/v1/events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    /// Index of the first event in `events`.
    pub first: u64,
    /// Index the next event will get; pass it as `since` to continue.
    pub next: u64,
    /// Events dropped because the log was full.
    pub dropped: u64,
    pub events: Vec<CloudEvent>,
}

impl EventLog {
    pub(crate) fn new(capacity: usize) -> Self {
        let inner = LogInner { events: VecDeque::new(), first: 0, capacity: capacity.max(1) };
        Self { inner: Mutex::new(inner), total: watch::Sender::new(0) }
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn append(&self, event: CloudEvent) {
        let total = {
            let mut inner = self.lock();
            inner.events.push_back(event);
            if inner.events.len() > inner.capacity {
                inner.events.pop_front();
                inner.first += 1;
            }
            inner.first + inner.events.len() as u64
        };
        self.total.send_replace(total);
    }

    /// Every retained event.
    pub(crate) fn total(&self) -> u64 {
        *self.total.borrow()
    }

    pub(crate) fn snapshot(&self) -> Vec<CloudEvent> {
        self.lock().events.iter().cloned().collect()
    }

    /// The retained events with index `>= since`.
    pub(crate) fn page(&self, since: u64) -> EventPage {
        let inner = self.lock();
        let next = inner.first + inner.events.len() as u64;
        let start = since.max(inner.first);
        let skip = usize::try_from(start - inner.first).unwrap_or(usize::MAX);
        EventPage {
            first: start.min(next),
            next,
            dropped: inner.first,
            events: inner.events.iter().skip(skip).cloned().collect(),
        }
    }

    /// Waits until at least `n` events were appended in total, or `timeout` passes; returns
    /// the retained events either way.
    pub(crate) async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<CloudEvent> {
        let mut rx = self.total.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|t| *t >= n as u64)).await;
        self.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(n: usize) -> CloudEvent {
        CloudEvent::registry_change("app", Some(&format!("d{n}")))
    }

    #[test]
    fn keeps_the_newest_and_counts_the_dropped() {
        let log = EventLog::new(3);
        for n in 0..5 {
            log.append(ev(n));
        }
        let page = log.page(0);
        assert_eq!((page.first, page.next, page.dropped), (2, 5, 2));
        let names: Vec<_> = page.events.iter().filter_map(|e| e.device.clone()).collect();
        assert_eq!(names, ["d2", "d3", "d4"]);
        assert_eq!(log.page(4).events.len(), 1);
        assert!(log.page(9).events.is_empty());
    }

    #[tokio::test]
    async fn wait_for_returns_once_enough_arrived() {
        let log = std::sync::Arc::new(EventLog::new(10));
        let writer = log.clone();
        let task = tokio::spawn(async move {
            for n in 0..2 {
                writer.append(ev(n));
                tokio::task::yield_now().await;
            }
        });
        let got = log.wait_for(2, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 2);
        task.await.unwrap();
        // and gives up after the timeout with what it has
        tokio::time::pause();
        assert_eq!(log.wait_for(3, Duration::from_secs(1)).await.len(), 2);
    }

    #[test]
    fn telemetry_event_has_drogue_shape() {
        let parties = EventParties {
            app: ("my-app", "u-app"),
            device: ("sensor 1", "u-dev"),
            sender: ("gw1", ""),
        };
        let e = CloudEvent::telemetry(&parties, "temp", Some("text/plain"), None, None, b"hi");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "io.drogue.event.v1");
        assert_eq!(v["source"], "drogue://my-app/sensor%201");
        assert_eq!(v["partitionkey"], "my-app/gw1");
        assert_eq!(v["device"], "sensor 1");
        assert_eq!(v["sender"], "gw1");
        assert_eq!(v["data_base64"], "aGk=");
        assert!(v.get("senderuid").is_none());
        assert_eq!(e.payload(), b"hi");
    }
}
