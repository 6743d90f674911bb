//! What each sensor did lately, as the drivers see it: the [`Tracked`] ingest wraps the outbox
//! for one driver and records, per device, the protocol, when it was last seen and how many
//! messages it sent today, plus the ingest latency and message size histograms of `/metrics`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use gw_model::{Identity, Ingest, IngestError, Telemetry, Timestamp, UplinkLimits};

use super::metrics::Histogram;

/// Devices remembered at most; beyond it the longest silent one is forgotten.
const MAX_DEVICES: usize = 65_536;

/// One sensor's recent activity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensorActivity {
    /// The driver it last used: `mqtt`, `coap`, `http`, `bridge`.
    pub protocol: &'static str,
    pub last_seen: SystemTime,
    /// Messages accepted today (UTC day of `last_seen`).
    pub today: u64,
    /// Messages accepted since start.
    pub total: u64,
    day: u64,
}

/// Per-sensor activity and the ingest histograms.
#[derive(Debug)]
pub struct Activity {
    devices: Mutex<HashMap<Identity, SensorActivity>>,
    /// Seconds from a message's arrival to its durable commit.
    pub latency: Histogram,
    /// Payload sizes in bytes.
    pub sizes: Histogram,
    /// Messages refused per reason: quota, too large, unavailable.
    refused: Mutex<[u64; 4]>,
}

const LATENCY_BOUNDS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
const SIZE_BOUNDS: &[f64] = &[16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0];

fn utc_day(t: SystemTime) -> u64 {
    Timestamp::from_system(t).as_millis() / 86_400_000
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            devices: Mutex::default(),
            latency: Histogram::new(LATENCY_BOUNDS),
            sizes: Histogram::new(SIZE_BOUNDS),
            refused: Mutex::default(),
        }
    }
}

impl Activity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, SensorActivity>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one accepted message of `device` over `protocol` at `now`.
    pub fn record(&self, device: Identity, protocol: &'static str, now: SystemTime) {
        let day = utc_day(now);
        let mut map = self.lock();
        if !map.contains_key(&device)
            && map.len() >= MAX_DEVICES
            && let Some(oldest) =
                map.iter().min_by_key(|(_, a)| a.last_seen).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        let a = map.entry(device).or_insert(SensorActivity {
            protocol,
            last_seen: now,
            today: 0,
            total: 0,
            day,
        });
        if a.day != day {
            a.day = day;
            a.today = 0;
        }
        a.protocol = protocol;
        a.last_seen = now;
        a.today += 1;
        a.total += 1;
    }

    /// One device's activity; `today` reads 0 once its day has passed.
    pub fn get(&self, device: &Identity, now: SystemTime) -> Option<SensorActivity> {
        let mut a = self.lock().get(device)?.clone();
        if a.day != utc_day(now) {
            a.today = 0;
        }
        Some(a)
    }

    /// Every device seen, with its activity (today's counts as of `now`).
    pub fn all(&self, now: SystemTime) -> Vec<(Identity, SensorActivity)> {
        let day = utc_day(now);
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(k, a)| {
                let mut a = a.clone();
                if a.day != day {
                    a.today = 0;
                }
                (k.clone(), a)
            })
            .collect();
        v.sort_by_key(|(id, _)| id.to_string());
        v
    }

    fn refused(&self, e: &IngestError) {
        let i = match e {
            IngestError::QuotaExceeded(_) => 0,
            IngestError::TooLarge(_) => 1,
            IngestError::Unavailable(_) => 2,
            IngestError::Invalid(_) => 3,
        };
        self.refused.lock().unwrap_or_else(|p| p.into_inner())[i] += 1;
    }

    /// Refused messages: (quota exceeded, too large, unavailable, invalid metadata).
    pub fn refusals(&self) -> [u64; 4] {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The outbox as one driver sees it, with its activity recorded.
#[derive(Debug)]
pub struct Tracked<I> {
    inner: Arc<I>,
    protocol: &'static str,
    activity: Arc<Activity>,
    /// What the uplink can carry: a message it never could is refused before the outbox.
    limits: UplinkLimits,
}

impl<I> Tracked<I> {
    pub fn new(
        inner: Arc<I>,
        protocol: &'static str,
        activity: Arc<Activity>,
        limits: UplinkLimits,
    ) -> Self {
        Self { inner, protocol, activity, limits }
    }
}

impl<I: Ingest> Ingest for Tracked<I> {
    fn pressure(&self) -> &gw_model::Pressure {
        self.inner.pressure()
    }

    async fn publish(&self, telemetry: Telemetry) -> Result<(), IngestError> {
        let started = Instant::now();
        let device = Identity::new(telemetry.app.clone(), telemetry.device.clone());
        let size = telemetry.payload.len();
        let result = match self.limits.admit(&telemetry) {
            Ok(()) => self.inner.publish(telemetry).await,
            Err(refused) => Err(refused),
        };
        match &result {
            Ok(()) => {
                self.activity.latency.observe(started.elapsed().as_secs_f64());
                self.activity.sizes.observe(size as f64);
                self.activity.record(device, self.protocol, SystemTime::now());
            }
            Err(e) => self.activity.refused(e),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    struct Store(Mutex<Vec<Telemetry>>, bool);
    impl Ingest for Store {
        async fn publish(&self, t: Telemetry) -> Result<(), IngestError> {
            if self.1 {
                return Err(IngestError::QuotaExceeded("full".into()));
            }
            self.0.lock().unwrap().push(t);
            Ok(())
        }
    }

    const NO_LIMITS: UplinkLimits = UplinkLimits::payload(usize::MAX);

    #[tokio::test]
    async fn refuses_what_the_uplink_cannot_carry_before_the_outbox() {
        let activity = Arc::new(Activity::default());
        let store = Arc::new(Store(Mutex::default(), false));
        let http = Tracked::new(store.clone(), "http", activity.clone(), UplinkLimits::payload(4));
        assert!(matches!(http.publish(telemetry("s1")).await, Err(IngestError::TooLarge(_))));
        let mut bad = telemetry("s1");
        bad.payload = Bytes::from_static(b"1");
        bad.content_type = Some("text/plain\r\nx: y".into());
        assert!(matches!(http.publish(bad).await, Err(IngestError::Invalid(_))));
        assert!(store.0.lock().unwrap().is_empty(), "nothing reached the outbox");
        assert_eq!(activity.refusals(), [0, 1, 0, 1]);
    }

    fn telemetry(device: &str) -> Telemetry {
        Telemetry::new(
            "app".parse().unwrap(),
            device.parse().unwrap(),
            "temp".parse().unwrap(),
            Timestamp::from_millis(0),
            Bytes::from_static(b"12345"),
        )
    }

    #[tokio::test]
    async fn accepted_messages_are_counted_per_device_and_protocol() {
        let activity = Arc::new(Activity::default());
        let store = Arc::new(Store(Mutex::default(), false));
        let mqtt = Tracked::new(store.clone(), "mqtt", activity.clone(), NO_LIMITS);
        let coap = Tracked::new(store.clone(), "coap", activity.clone(), NO_LIMITS);
        mqtt.publish(telemetry("s1")).await.unwrap();
        mqtt.publish(telemetry("s1")).await.unwrap();
        coap.publish(telemetry("s2")).await.unwrap();
        assert_eq!(store.0.lock().unwrap().len(), 3);
        let now = SystemTime::now();
        let s1 = activity.get(&"s1@app".parse().unwrap(), now).unwrap();
        assert_eq!((s1.protocol, s1.today, s1.total), ("mqtt", 2, 2));
        assert_eq!(activity.get(&"s2@app".parse().unwrap(), now).unwrap().protocol, "coap");
        assert_eq!(activity.latency.count(), 3);
        assert_eq!(activity.sizes.sum(), 15.0);
        // tomorrow, today's count starts again
        let tomorrow = now + Duration::from_secs(86_400);
        assert_eq!(activity.get(&"s1@app".parse().unwrap(), tomorrow).unwrap().today, 0);
        assert_eq!(activity.all(now).len(), 2);
    }

    #[tokio::test]
    async fn refused_messages_are_counted_not_recorded_as_activity() {
        let activity = Arc::new(Activity::default());
        let full = Tracked::new(
            Arc::new(Store(Mutex::default(), true)),
            "http",
            activity.clone(),
            NO_LIMITS,
        );
        assert!(full.publish(telemetry("s1")).await.is_err());
        assert_eq!(activity.refusals(), [1, 0, 0, 0]);
        assert!(activity.all(SystemTime::now()).is_empty());
    }
}
