//! Drogue Cloud's HTTP endpoint, upstream: `POST {url}/v1/{channel}?as={device}` with the
//! gateway's own Basic credentials (contracts/drogue-cloud.md §1).
//!
//! **Command waits.** When the sensor itself waits for a command in the answer to its message
//! (southbound HTTP or CoAP `ct=`, kept on the record as [`Telemetry::command_wait`]), the
//! publish asks the cloud to wait too: `ct=` the part of the sensor's wait that is left when
//! the record goes up (rounded to seconds, at most `command_wait_max`; none once it is under a
//! second, so a backlog drains without waiting). A `200` with a `command:` header is a command
//! for the device the publish was `as=`: it goes to the command intake, its body the payload.
//! Drogue buffers nothing for a wait that has not begun, so a command sent while no publish of
//! the device waits is not seen here (it reaches the gateway only through push or MQTT).
//! No wait is relayed once the sensor had its answer (a command pushed to it, or its own wait
//! ran out), and none at all when the gateway takes commands by push: Drogue then hands a
//! device's commands to the push endpoint, never to a waiting publish, and a relayed wait
//! would only hold the device's later records back.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use gw_model::{BasicCredentials, Command, CommandName, Identity, Secret, Telemetry, Timestamp};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::{StatusCode, header};

use crate::{
    CloudConfig, CloudError,
    commands::{CommandIntake, Via},
    uplink::{Sender, Verdict},
};

/// Characters escaped in a query value.
pub(crate) const QUERY: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'&')
    .add(b'=')
    .add(b'+')
    .add(b'%')
    .add(b'?');
/// Characters escaped in a path segment.
pub(crate) const SEGMENT: &AsciiSet = &QUERY.add(b'/');

pub struct DrogueHttp {
    client: reqwest::Client,
    base: String,
    authorization: String,
    timeout: Duration,
    wait_max: Duration,
    /// Where commands that come back on waiting publishes go; without it no publish waits.
    commands: Option<CommandIntake>,
    /// Whether a sensor's wait is relayed upstream at all (not when commands come by push).
    relay_waits: bool,
    /// The last check of the gateway's own login after a 403: when, and what it found.
    login_check: tokio::sync::Mutex<Option<(std::time::Instant, Login)>>,
    /// The gateway's own command poll (`command_poll`, `heartbeat_channel`), if set up.
    poll: Option<GatewayPoll>,
    gateway: Identity,
    poll_wait: Duration,
    /// `[cloud] received_at_field`: the member that carries the receive time in JSON objects.
    received_at_field: Option<String>,
    heartbeat_channel: String,
    retry: (Duration, Duration),
}

/// What the gateway's own command poll needs from the daemon.
#[derive(Clone)]
pub struct GatewayPoll {
    /// The heartbeat's JSON body, made fresh for each poll.
    pub heartbeat: Arc<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// The gateway's own commands. Drogue widens a gateway's wait for itself to every device
    /// it proxies and does not say which device a command is for: a command of another name
    /// is taken to be a sensor's (it reaches the sensor by push or its own wait) and dropped
    /// here.
    pub commands: Vec<&'static str>,
}

/// What a check of the gateway's own login found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Login {
    Accepted,
    Refused,
    /// The check itself failed (no answer, an unexpected status).
    Unknown,
}

/// The channel the login check posts to. Its body is not JSON although it says so: Drogue
/// checks the credentials first and then refuses the body (406), so nothing is published.
const LOGIN_CHECK_CHANNEL: &str = "gatewayd-login-check";
/// How long a login check's answer stands for further 403s.
const LOGIN_CHECK_TTL: Duration = Duration::from_secs(5);

impl DrogueHttp {
    pub fn new(
        config: &CloudConfig,
        gateway: &Identity,
        password: Secret,
    ) -> Result<Self, CloudError> {
        let client = client_builder(config.timeout, config.ca_file.as_deref())?
            .timeout(config.publish_timeout)
            .pool_max_idle_per_host(config.concurrency)
            .build()
            .map_err(CloudError::Client)?;
        let authorization = BasicCredentials::new(gateway.to_string(), password).to_header();
        Ok(Self {
            client,
            base: config.url.trim_end_matches('/').to_owned(),
            authorization,
            timeout: config.publish_timeout,
            wait_max: config.command_wait_max,
            commands: None,
            relay_waits: true,
            login_check: tokio::sync::Mutex::new(None),
            poll: None,
            gateway: gateway.clone(),
            poll_wait: config.command_poll,
            heartbeat_channel: config.heartbeat_channel.clone(),
            retry: (config.retry_min, config.retry_max),
            received_at_field: config.received_at_field.clone(),
        })
    }

    pub(crate) fn set_gateway_poll(&mut self, poll: GatewayPoll) {
        self.poll = Some(poll);
    }

    /// The gateway's own command poll, until `stop`: a heartbeat as the gateway that waits
    /// `command_poll` for a command, then the next one at once. Nothing to do without an
    /// intake, a poll or with `command_poll = "0s"`.
    pub(crate) async fn poll_own_commands(&self, stop: tokio_util::sync::CancellationToken) {
        let (Some(intake), Some(poll)) = (&self.commands, &self.poll) else { return };
        let wait = self.poll_wait.as_secs();
        if wait == 0 {
            return;
        }
        let url = format!(
            "{}/v1/{}?ct={wait}",
            self.base,
            utf8_percent_encode(&self.heartbeat_channel, SEGMENT)
        );
        let mut backoff = self.retry.0;
        let mut failing = false;
        loop {
            let body = serde_json::to_vec(&(poll.heartbeat)()).unwrap_or_default();
            let request = self
                .client
                .post(&url)
                .header(header::AUTHORIZATION, &self.authorization)
                .header(header::CONTENT_TYPE, "application/json")
                .timeout(self.timeout + self.poll_wait)
                .body(body);
            let answer = tokio::select! {
                a = request.send() => a,
                () = stop.cancelled() => return,
            };
            let problem = match answer {
                Ok(resp) if resp.status() == StatusCode::OK => {
                    let name = resp
                        .headers()
                        .get("command")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    match name {
                        Some(name) if poll.commands.contains(&name.as_str()) => {
                            self.take_own_command(intake, &name, resp).await;
                        }
                        Some(name) => tracing::debug!(command = %name,
                            "a command on the gateway's own poll that is no gateway command: taken to be a proxied sensor's, left to its push or wait"),
                        None => {}
                    }
                    None
                }
                Ok(resp) if resp.status().is_success() => None,
                Ok(resp) => Some(format!("HTTP {}", resp.status())),
                Err(e) if e.is_timeout() => None,
                Err(e) => Some(describe(&e)),
            };
            match problem {
                None => {
                    if failing {
                        tracing::info!("the gateway's command poll works again");
                    }
                    failing = false;
                    backoff = self.retry.0;
                }
                Some(cause) => {
                    if !failing {
                        tracing::warn!(%cause, "the gateway's command poll failed; retrying");
                    }
                    failing = true;
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = stop.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(self.retry.1);
                }
            }
        }
    }

    async fn take_own_command(&self, intake: &CommandIntake, name: &str, resp: reqwest::Response) {
        let (app, device) = (self.gateway.app(), self.gateway.device());
        if let Some(command) = command_in(resp, name, app, device).await {
            tracing::info!(command = %command.name, "command for the gateway from its command poll");
            intake.submit(Via::HttpWait, command).await;
        }
    }

    /// Whether the cloud accepts the gateway's own credentials. Drogue's 403 is the same for
    /// a wrong gateway password and for a device the gateway may not act for, so after a 403
    /// the gateway asks as itself, without `as=`.
    async fn check_login(&self) -> Login {
        let mut last = self.login_check.lock().await;
        if let Some((at, login)) = *last
            && at.elapsed() < LOGIN_CHECK_TTL
        {
            return login;
        }
        let answer = self
            .client
            .post(format!("{}/v1/{LOGIN_CHECK_CHANNEL}", self.base))
            .header(header::AUTHORIZATION, &self.authorization)
            .header(header::CONTENT_TYPE, "application/json")
            .body("{")
            .send()
            .await;
        let login = match answer.map(|r| r.status().as_u16()) {
            Ok(401 | 403) => Login::Refused,
            Ok(406 | 200..=299) => Login::Accepted,
            Ok(_) | Err(_) => Login::Unknown,
        };
        *last = Some((std::time::Instant::now(), login));
        login
    }

    pub(crate) fn set_relay_waits(&mut self, relay: bool) {
        self.relay_waits = relay;
    }

    pub(crate) fn set_commands(&mut self, intake: CommandIntake) {
        self.commands = Some(intake);
    }

    /// Whole seconds the cloud is asked to wait for a command with `t` at `now`: what is left
    /// of the sensor's wait, capped; `None` when there is no wait or less than a second left.
    fn wait_secs(&self, t: &Telemetry, now: Timestamp) -> Option<u64> {
        let intake = self.commands.as_ref().filter(|_| self.relay_waits)?;
        let wait = t.command_wait?.min(self.wait_max);
        if intake.wait_ended_since(&Identity::new(t.app.clone(), t.device.clone()), t.received_at) {
            // the sensor had its answer (a pushed command, or its own wait ran out)
            return None;
        }
        let until = t.received_at.saturating_add(wait);
        let left_ms = until.as_millis().checked_sub(now.as_millis())?;
        let secs = (left_ms + 500) / 1000;
        (secs >= 1).then_some(secs)
    }

    fn url(&self, t: &Telemetry, ct: Option<u64>) -> String {
        let mut url =
            format!("{}/v1/{}", self.base, utf8_percent_encode(t.channel.as_str(), SEGMENT));
        if let Some(suffix) = t.suffix.as_deref().filter(|s| !s.is_empty()) {
            for part in suffix.split('/') {
                url.push('/');
                url.extend(utf8_percent_encode(part, SEGMENT));
            }
        }
        url.push_str("?as=");
        url.extend(utf8_percent_encode(t.device.as_str(), QUERY));
        if let Some(schema) = &t.data_schema {
            url.push_str("&data_schema=");
            url.extend(utf8_percent_encode(schema, QUERY));
        }
        if let Some(ct) = ct {
            url.push_str(&format!("&ct={ct}"));
        }
        url
    }

    /// A `200` with a `command:` header: the command for `t`'s device goes to the intake.
    async fn take_command(&self, t: &Telemetry, resp: reqwest::Response) {
        let Some(intake) = &self.commands else { return };
        let Some(name) = resp.headers().get("command").and_then(|v| v.to_str().ok()) else {
            return;
        };
        let name = name.to_owned();
        if let Some(command) = command_in(resp, &name, &t.app, &t.device).await {
            intake.submit(Via::HttpWait, command).await;
        }
    }
}

/// The command in a `200` answer (header `command:` = `name`, its content type, the body as
/// payload) for `app`/`device`; `None`, logged, when the name or the body cannot be read.
async fn command_in(
    resp: reqwest::Response,
    name: &str,
    app: &gw_model::AppId,
    device: &gw_model::DeviceId,
) -> Option<Command> {
    let name = match CommandName::new(name) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(%device, cause = %e, "the cloud answered a command with a bad name; dropped");
            return None;
        }
    };
    let content_type =
        resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let payload = match resp.bytes().await {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(%device, command = %name, cause = %describe(&e), "cannot read a command from the cloud; lost");
            return None;
        }
    };
    Some(Command {
        app: app.clone(),
        device: device.clone(),
        name,
        content_type,
        payload,
        created_at: Timestamp::from_system(SystemTime::now()),
        expires_at: None,
    })
}

/// A reqwest client builder with gatewayd's defaults: `timeout` for connect and request, the
/// CAs of `ca_file` instead of the system's roots when given.
/// The payload with `"<field>": "<receive time, RFC 3339>"` added as the first member, when it
/// is a JSON object that has no such member and the time comes from a clock that was set;
/// otherwise the payload as it is. The object's own text is kept byte for byte.
pub fn with_received_at(payload: &bytes::Bytes, field: &str, at: Timestamp) -> bytes::Bytes {
    let text = payload.as_ref();
    let start = text.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start.filter(|&i| text[i] == b'{') else { return payload.clone() };
    if !at.is_trusted() {
        return payload.clone();
    }
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(text) else {
        return payload.clone();
    };
    if object.contains_key(field) {
        return payload.clone();
    }
    let time = humantime::format_rfc3339_millis(at.to_system()).to_string();
    let member = serde_json::to_string(&serde_json::Map::from_iter([(
        field.to_owned(),
        serde_json::Value::String(time),
    )]))
    .unwrap_or_default();
    // `{"field":"time"}` without its braces, then a comma unless the object is empty
    let inner = &member[1..member.len() - 1];
    let mut out = Vec::with_capacity(text.len() + inner.len() + 1);
    out.extend_from_slice(&text[..=start]);
    out.extend_from_slice(inner.as_bytes());
    if !object.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(&text[start + 1..]);
    bytes::Bytes::from(out)
}

/// The bytes [`with_received_at`] may add to a payload: the member, its quotes, colon and
/// comma, and a 24-character time.
pub fn received_at_overhead(field: &str) -> usize {
    field.len() + 6 + 24
}

pub(crate) fn client_builder(
    timeout: std::time::Duration,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::ClientBuilder, CloudError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .tcp_nodelay(true)
        .user_agent(concat!("gatewayd/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|source| CloudError::CaFile { path: path.to_owned(), source })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|source| CloudError::CaPem { path: path.to_owned(), source })?;
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

impl Sender for DrogueHttp {
    async fn send(&self, t: &Telemetry) -> Verdict {
        let ct = self.wait_secs(t, Timestamp::from_system(SystemTime::now()));
        let mut req = self
            .client
            .post(self.url(t, ct))
            .header(header::AUTHORIZATION, &self.authorization)
            .body(match &self.received_at_field {
                Some(field) => with_received_at(&t.payload, field, t.received_at),
                None => t.payload.clone(),
            });
        if let Some(secs) = ct {
            // the cloud holds a waiting request open up to `ct` before it answers
            req = req.timeout(self.timeout + Duration::from_secs(secs));
        }
        if let Some(ct) = &t.content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        match req.send().await {
            // A request that cannot even be built (a header value a record from an older
            // version let through) never will be: dead-lettered, not retried forever.
            Err(e) if e.is_builder() => Verdict::Rejected(describe(&e)),
            // Sent, no answer in time: the cloud may still deliver it.
            Err(e) if e.is_timeout() && !e.is_connect() => Verdict::Unknown(describe(&e)),
            Err(e) => Verdict::Transient(describe(&e)),
            Ok(resp) if resp.status() == StatusCode::FORBIDDEN => match self.check_login().await {
                Login::Accepted => classify(resp.status()),
                Login::Refused => Verdict::GatewayRefused(
                    "403 Forbidden: the cloud refused the gateway's own credentials".into(),
                ),
                Login::Unknown => Verdict::Transient(
                    "403 Forbidden, and the gateway's own login could not be checked".into(),
                ),
            },
            Ok(resp) => {
                let verdict = classify(resp.status());
                if resp.status() == StatusCode::OK {
                    self.take_command(t, resp).await;
                }
                verdict
            }
        }
    }
}

/// Maps the endpoint's status to a verdict.
fn classify(status: StatusCode) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Accepted,
        403 => Verdict::Refused(
            "403 Forbidden: the cloud refused the gateway acting for this device".into(),
        ),
        408 | 425 | 429 => Verdict::Transient(format!("HTTP {status}")),
        400..=499 => Verdict::Rejected(format!("HTTP {status}")),
        _ => Verdict::Transient(format!("HTTP {status}")),
    }
}

/// An error with its chain of sources, on one line.
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod received_at_tests {
    use super::*;

    #[test]
    fn the_receive_time_goes_first_into_json_objects_only() {
        let at = Timestamp::from_millis(1_765_101_600_123); // 2025-12-07T10:00:00.123Z
        let add = |p: &'static str| {
            let out = with_received_at(&bytes::Bytes::from_static(p.as_bytes()), "received_at", at);
            String::from_utf8(out.to_vec()).unwrap()
        };
        assert_eq!(
            add(r#"{"z":1, "a":[2]}"#),
            r#"{"received_at":"2025-12-07T10:00:00.123Z","z":1, "a":[2]}"#
        );
        assert_eq!(add(" {}"), r#" {"received_at":"2025-12-07T10:00:00.123Z"}"#);
        for kept in [r#"{"received_at":"mine"}"#, "[1,2]", "21.5", "{not json", "text"] {
            assert_eq!(add(kept), kept);
        }
        // a clock that was never set: nothing is added
        let p = bytes::Bytes::from_static(b"{\"t\":1}");
        assert_eq!(with_received_at(&p, "received_at", Timestamp::from_millis(5_000)), p);
        let longest = add("{}").len() - 2;
        assert!(longest <= received_at_overhead("received_at"), "{longest}");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    struct Nowhere;

    impl gw_model::CommandSink for Nowhere {
        async fn submit(&self, _: Command) -> gw_model::CommandOutcome {
            gw_model::CommandOutcome::UnknownDevice
        }
    }

    fn uplink(wait_max: u64, commands: bool) -> DrogueHttp {
        let mut config =
            CloudConfig::new(crate::CloudKind::DrogueHttp, "http://127.0.0.1:9", "pw".into());
        config.command_wait_max = Duration::from_secs(wait_max);
        let gw = Identity::new("app".parse().unwrap(), "gw".parse().unwrap());
        let mut up = DrogueHttp::new(&config, &gw, "pw".into()).unwrap();
        if commands {
            up.set_commands(CommandIntake::new(Arc::new(Nowhere)));
        }
        up
    }

    fn waiting(received_ms: u64, wait: Option<u64>) -> Telemetry {
        let mut t = Telemetry::new(
            "app".parse().unwrap(),
            "s1".parse().unwrap(),
            "temp".parse().unwrap(),
            Timestamp::from_millis(received_ms),
            bytes::Bytes::new(),
        );
        t.command_wait = wait.map(Duration::from_secs);
        t
    }

    #[test]
    fn waits_for_what_is_left_of_the_sensors_wait() {
        let up = uplink(60, true);
        let at = |ms| Timestamp::from_millis(ms);
        assert_eq!(up.wait_secs(&waiting(10_000, Some(5)), at(10_020)), Some(5));
        assert_eq!(up.wait_secs(&waiting(10_000, Some(5)), at(12_000)), Some(3));
        assert_eq!(
            up.wait_secs(&waiting(10_000, Some(5)), at(14_600)),
            None,
            "under a second left"
        );
        assert_eq!(
            up.wait_secs(&waiting(10_000, Some(5)), at(99_000)),
            None,
            "a backlog does not wait"
        );
        assert_eq!(up.wait_secs(&waiting(10_000, None), at(10_000)), None);
        assert_eq!(up.wait_secs(&waiting(10_000, Some(600)), at(10_000)), Some(60), "capped");
        let url = up.url(&waiting(0, Some(5)), Some(5));
        assert!(url.ends_with("/v1/temp?as=s1&ct=5"), "{url}");
        let no_intake = uplink(60, false);
        assert_eq!(
            no_intake.wait_secs(&waiting(10_000, Some(5)), at(10_000)),
            None,
            "nobody to take a command"
        );
    }

    #[test]
    fn classifies_drogue_statuses() {
        assert_eq!(classify(StatusCode::ACCEPTED), Verdict::Accepted);
        assert!(matches!(classify(StatusCode::FORBIDDEN), Verdict::Refused(_)));
        assert!(matches!(classify(StatusCode::NOT_ACCEPTABLE), Verdict::Rejected(_)));
        assert!(matches!(classify(StatusCode::SERVICE_UNAVAILABLE), Verdict::Transient(_)));
        assert!(matches!(classify(StatusCode::TOO_MANY_REQUESTS), Verdict::Transient(_)));
        assert!(matches!(classify(StatusCode::INTERNAL_SERVER_ERROR), Verdict::Transient(_)));
    }
}
