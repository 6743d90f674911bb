//! Watches an event log for `io.drogue.registry.v1` events of the gateway's application and
//! asks the sync loop for a resync when one arrives.
//!
//! The form supported is the dev cloud's: `GET {events_url}?since=N` answers
//! `{first, next, dropped, events}` at once, so it is polled about every second. Drogue itself
//! publishes these events on its MQTT and WebSocket integrations (contracts §5 "Watching for
//! changes"); consuming those is future work. Whatever the stream misses, the periodic
//! listing catches.

use std::{sync::Arc, time::Duration};

use reqwest::header::{self, HeaderValue};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::status::RegistryStatus;
use crate::{CloudError, backoff::Backoff, drogue_http::describe};

/// The CloudEvent type of registry changes.
pub const REGISTRY_EVENT: &str = "io.drogue.registry.v1";

/// How often the event log is asked for news.
const POLL: Duration = Duration::from_secs(1);

/// The first request asks from here: the answer carries the log's current position and no
/// history (the first listing covers everything before).
const FROM_NOW: u64 = u64::MAX;

#[derive(Debug, Deserialize)]
struct Page {
    #[serde(default)]
    first: u64,
    next: u64,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    application: String,
}

pub(crate) struct EventWatcher {
    pub client: reqwest::Client,
    pub url: String,
    pub authorization: Option<HeaderValue>,
    pub app: String,
    pub status: Arc<RegistryStatus>,
    pub trigger: Arc<watch::Sender<u64>>,
}

/// What one answer of the log means for the sync, given the position asked from.
fn relevant(page: &Page, since: Option<u64>, app: &str) -> (u64, bool) {
    let events =
        page.events.iter().filter(|e| e.kind == REGISTRY_EVENT && e.application == app).count()
            as u64;
    let gap = match since {
        // positioned only now: a change may have come after the first listing
        None => true,
        // the log went backwards (the cloud restarted), or dropped events we did not see
        Some(s) => page.next < s || page.first > s,
    };
    (events, events > 0 || gap)
}

impl EventWatcher {
    async fn poll(&self, since: u64) -> Result<Page, CloudError> {
        let url = format!("{}?since={since}", self.url);
        let err = |reason: String| CloudError::Events { url: self.url.clone(), reason };
        let resp = self
            .client
            .get(&url)
            .headers(
                self.authorization.iter().map(|a| (header::AUTHORIZATION, a.clone())).collect(),
            )
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| err(describe(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(err(format!("answered {status}")));
        }
        let body = resp.bytes().await.map_err(|e| err(describe(&e)))?;
        serde_json::from_slice(&body).map_err(|e| err(format!("not an event page: {e}")))
    }

    /// Where the log stands now, without history; `None` when it cannot be asked within
    /// `patience`. Called before the first listing, so no change falls between the two.
    pub(crate) async fn position(&self, patience: Duration) -> Option<u64> {
        match tokio::time::timeout(patience, self.poll(FROM_NOW)).await {
            Ok(Ok(page)) => Some(page.next),
            Ok(Err(e)) => {
                tracing::warn!(cause = %describe(&e), "registry event stream failed; polling the registry only");
                self.status.record_events_error(Some(describe(&e)));
                None
            }
            Err(_) => None,
        }
    }

    /// Polls from `since` (`None`: unpositioned, the first answer requests a resync) until
    /// `token` is cancelled.
    pub(crate) async fn run(self, mut since: Option<u64>, token: CancellationToken) {
        let mut backoff = Backoff::new(POLL, Duration::from_secs(30));
        let mut failing = false;
        loop {
            let polled = tokio::select! {
                _ = token.cancelled() => return,
                r = self.poll(since.unwrap_or(FROM_NOW)) => r,
            };
            let delay = match polled {
                Ok(page) => {
                    if failing {
                        tracing::info!(url = %self.url, "registry event stream answers again");
                        self.status.record_events_error(None);
                        failing = false;
                    }
                    backoff.reset();
                    let (events, resync) = relevant(&page, since, &self.app);
                    since = Some(page.next);
                    for _ in 0..events {
                        self.status.record_event();
                    }
                    if resync {
                        tracing::debug!(events, "registry changed; resync requested");
                        self.trigger.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    POLL
                }
                Err(e) => {
                    let text = describe(&e);
                    if !failing {
                        tracing::warn!(cause = %text, "registry event stream failed; polling the registry only");
                    }
                    failing = true;
                    self.status.record_events_error(Some(text));
                    backoff.next_delay()
                }
            };
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(first: u64, next: u64, events: &[(&str, &str)]) -> Page {
        let events = events
            .iter()
            .map(|(kind, app)| Event { kind: (*kind).into(), application: (*app).into() })
            .collect();
        Page { first, next, events }
    }

    #[test]
    fn only_registry_events_of_our_app_trigger() {
        let p = page(
            5,
            8,
            &[("io.drogue.event.v1", "app"), (REGISTRY_EVENT, "other"), (REGISTRY_EVENT, "app")],
        );
        assert_eq!(relevant(&p, Some(5), "app"), (1, true));
        let quiet = page(5, 7, &[("io.drogue.event.v1", "app"), (REGISTRY_EVENT, "other")]);
        assert_eq!(relevant(&quiet, Some(5), "app"), (0, false));
    }

    #[test]
    fn positioning_late_requests_a_resync() {
        assert_eq!(relevant(&page(9, 9, &[]), None, "app"), (0, true));
    }

    #[test]
    fn a_restarted_or_overrun_log_triggers() {
        assert_eq!(relevant(&page(0, 2, &[]), Some(10), "app"), (0, true), "went backwards");
        assert_eq!(relevant(&page(20, 30, &[]), Some(10), "app"), (0, true), "dropped 10..20");
    }
}
