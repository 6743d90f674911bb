//! The external push endpoint: Drogue Cloud pushes a command for a device to the gateway named
//! in the device's `spec.gatewaySelector`, when that gateway has `spec.commands` with an
//! external endpoint (contracts/drogue-cloud.md §4 "External push").
//!
//! `POST /api/commands/v1/push` with Drogue's default body
//! `{"application","device","command","payload": base64}` (`payload` may be missing or `null`:
//! an empty command). The answer is the truth about the command, and Drogue counts any 2xx as
//! success, so 2xx comes only once the command was delivered or durably queued:
//!
//! | outcome                                                  | status |
//! |----------------------------------------------------------|--------|
//! | delivered to the device (or handled by the gateway)      | 200    |
//! | queued durably for the device                            | 202    |
//! | bad JSON, base64, name or TTL                            | 400    |
//! | no `Authorization: Bearer` header                        | 401 with `WWW-Authenticate` |
//! | wrong secret; no verified client certificate when required | 403  |
//! | the device is not one this gateway proxies               | 404    |
//! | body above the limit, or a command too large to queue    | 413    |
//! | refused for another reason (e.g. already expired)        | 422    |
//! | the device's queue or the store is full                  | 503 with `Retry-After` |
//!
//! A per-command time to live becomes [`Command::expires_at`]: the body's `ttl` field
//! (`"30s"`, `"5m"`, or a number of seconds) or else the `X-Command-TTL` header (Drogue copies a
//! gateway's configured `headers` onto every push, so a header sets one TTL for all of them).
//! Without either, the router's default applies.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine;
use gw_model::{AppId, Command, CommandName, CommandOutcome, DeviceId, Secret, Timestamp};
use serde::Deserialize;
use serde_json::json;

use super::{CommandIntake, Via};

/// The route Drogue pushes to.
pub const PATH: &str = "/api/commands/v1/push";
/// The header that may carry a per-command time to live.
pub const TTL_HEADER: &str = "x-command-ttl";
/// Seconds a pusher is asked to wait after a full queue (503).
pub const RETRY_AFTER_SECS: u32 = 30;

/// How the push endpoint authenticates the cloud and bounds what it takes.
#[derive(Clone)]
pub struct PushConfig {
    /// The Bearer secret the cloud presents.
    pub token: Secret,
    /// Also require a TLS client certificate verified against the push CA: the web listener
    /// marks such requests with [`VerifiedClientCert`].
    pub require_client_cert: bool,
    /// The largest request body taken; larger ones get 413.
    pub max_body: usize,
}

impl std::fmt::Debug for PushConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("require_client_cert", &self.require_client_cert)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// A request extension the web listener adds when the TLS peer presented a client
/// certificate that verified against the push CA (`[web] push_client_ca_file`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifiedClientCert;

#[derive(Clone)]
struct PushState {
    intake: CommandIntake,
    token_digest: Arc<[u8]>,
    require_client_cert: bool,
}

/// The push route, to merge into the web listener's router.
pub fn router(intake: CommandIntake, config: PushConfig) -> Router {
    let state = PushState {
        intake,
        token_digest: digest(config.token.expose().as_bytes()).into(),
        require_client_cert: config.require_client_cert,
    };
    Router::new()
        .route(PATH, post(push))
        .layer(DefaultBodyLimit::max(config.max_body))
        .with_state(state)
}

fn digest(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes).as_ref().to_vec()
}

/// Compares the presented secret with the configured one in time independent of where they
/// differ: both are hashed to fixed-length digests first, then every byte is looked at.
fn token_matches(presented: &str, expected_digest: &[u8]) -> bool {
    let presented = digest(presented.as_bytes());
    presented.len() == expected_digest.len()
        && presented.iter().zip(expected_digest).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Drogue's default body, plus the optional `ttl`. Unknown fields are ignored.
#[derive(Deserialize)]
struct PushBody {
    application: String,
    device: String,
    command: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    ttl: Option<Ttl>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ttl {
    Seconds(u64),
    Text(String),
}

impl Ttl {
    fn duration(&self) -> Result<Duration, String> {
        let d = match self {
            Ttl::Seconds(s) => Duration::from_secs(*s),
            Ttl::Text(t) => match t.trim().parse::<u64>() {
                Ok(s) => Duration::from_secs(s),
                Err(_) => humantime::parse_duration(t.trim())
                    .map_err(|e| format!("ttl {t:?} is not a duration such as \"30s\": {e}"))?,
            },
        };
        if d.is_zero() {
            return Err("ttl must be above 0".into());
        }
        Ok(d)
    }
}

async fn push(State(state): State<PushState>, headers: HeaderMap, request: Request) -> Response {
    if state.require_client_cert && request.client_cert.is_none() {
        state.intake.count_refused_request(true);
        return error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "a client certificate issued by the push CA is required",
        );
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = bearer else {
        state.intake.count_refused_request(true);
        let mut r = error(StatusCode::UNAUTHORIZED, "Unauthorized", "a Bearer token is required");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"gatewayd\""),
        );
        return r;
    };
    if !token_matches(token, &state.token_digest) {
        state.intake.count_refused_request(true);
        return error(StatusCode::FORBIDDEN, "Forbidden", "wrong token");
    }
    let command = match parse(
        &headers,
        &request.body,
        Timestamp::from_system(std::time::SystemTime::now()),
    ) {
        Ok(c) => c,
        Err(why) => {
            state.intake.count_refused_request(false);
            return error(StatusCode::BAD_REQUEST, "BadRequest", &why);
        }
    };
    let outcome = state.intake.submit(Via::Push, command).await;
    answer(outcome)
}

/// The body and whether the listener verified a client certificate.
struct Request {
    body: Bytes,
    client_cert: Option<VerifiedClientCert>,
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Request {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let client_cert = req.extensions().get::<VerifiedClientCert>().copied();
        match Bytes::from_request(req, state).await {
            Ok(body) => Ok(Self { body, client_cert }),
            Err(rejection) => {
                let status = rejection.status();
                let message = rejection.body_text();
                let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "PayloadTooLarge"
                } else {
                    "BadRequest"
                };
                Err(error(status, kind, &message))
            }
        }
    }
}

/// Turns a push body into a command, `now` being its arrival.
fn parse(headers: &HeaderMap, body: &[u8], now: Timestamp) -> Result<Command, String> {
    let body: PushBody = serde_json::from_slice(body).map_err(|e| {
        format!("the body is not {{\"application\",\"device\",\"command\",\"payload\"}}: {e}")
    })?;
    let app = AppId::new(body.application).map_err(|e| e.to_string())?;
    let device = DeviceId::new(body.device).map_err(|e| e.to_string())?;
    let name = CommandName::new(body.command).map_err(|e| e.to_string())?;
    let payload = match body.payload.as_deref() {
        None | Some("") => Bytes::new(),
        Some(text) => Bytes::from(
            BASE64.decode(text.trim()).map_err(|e| format!("payload is not base64: {e}"))?,
        ),
    };
    let ttl = match body.ttl {
        Some(ttl) => Some(ttl.duration()?),
        None => match headers.get(TTL_HEADER) {
            None => None,
            Some(v) => {
                let text = v.to_str().map_err(|_| format!("{TTL_HEADER} is not text"))?;
                Some(Ttl::Text(text.to_owned()).duration()?)
            }
        },
    };
    Ok(Command {
        app,
        device,
        name,
        content_type: None,
        payload,
        created_at: now,
        expires_at: ttl.map(|ttl| now.saturating_add(ttl)),
    })
}

/// Standard base64, padding optional.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

fn answer(outcome: CommandOutcome) -> Response {
    match outcome {
        CommandOutcome::Delivered => {
            (StatusCode::OK, Json(json!({"outcome": "delivered"}))).into_response()
        }
        CommandOutcome::Queued => {
            (StatusCode::ACCEPTED, Json(json!({"outcome": "queued"}))).into_response()
        }
        CommandOutcome::UnknownDevice => error(
            StatusCode::NOT_FOUND,
            "UnknownDevice",
            "the device is not one this gateway acts for",
        ),
        CommandOutcome::TooLarge => {
            error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", "the command is too large")
        }
        CommandOutcome::QueueFull => {
            let mut r = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "QueueFull",
                "the device's command queue is full",
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            r
        }
        CommandOutcome::Rejected(why) => error(StatusCode::UNPROCESSABLE_ENTITY, "Rejected", &why),
    }
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({"code": status.as_u16(), "error": kind, "message": message})))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(ttl: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ttl) = ttl {
            h.insert(TTL_HEADER, HeaderValue::from_str(ttl).unwrap());
        }
        h
    }

    #[test]
    fn parses_drogues_default_body() {
        let body = br#"{"application":"my-app","device":"sensor1","command":"set-temp","payload":"eyJ0IjoyMX0="}"#;
        let c = parse(&headers(None), body, Timestamp::from_millis(1000)).unwrap();
        assert_eq!(
            (c.app.as_str(), c.device.as_str(), c.name.as_str()),
            ("my-app", "sensor1", "set-temp")
        );
        assert_eq!(&c.payload[..], br#"{"t":21}"#);
        assert_eq!(c.created_at, Timestamp::from_millis(1000));
        assert_eq!(c.expires_at, None);
    }

    #[test]
    fn missing_or_null_payload_is_empty_and_padding_is_optional() {
        for body in [
            r#"{"application":"a","device":"d","command":"c"}"#,
            r#"{"application":"a","device":"d","command":"c","payload":null}"#,
            r#"{"application":"a","device":"d","command":"c","payload":""}"#,
        ] {
            let c = parse(&headers(None), body.as_bytes(), Timestamp::from_millis(0)).unwrap();
            assert!(c.payload.is_empty(), "{body}");
        }
        let c = parse(
            &headers(None),
            br#"{"application":"a","device":"d","command":"c","payload":"aGk"}"#,
            Timestamp::from_millis(0),
        )
        .unwrap();
        assert_eq!(&c.payload[..], b"hi");
    }

    #[test]
    fn ttl_from_field_wins_over_header() {
        let now = Timestamp::from_millis(10_000);
        let body = br#"{"application":"a","device":"d","command":"c","ttl":"2s"}"#;
        let c = parse(&headers(Some("1h")), body, now).unwrap();
        assert_eq!(c.expires_at, Some(Timestamp::from_millis(12_000)));
        let body = br#"{"application":"a","device":"d","command":"c","ttl":5}"#;
        assert_eq!(
            parse(&headers(None), body, now).unwrap().expires_at,
            Some(Timestamp::from_millis(15_000))
        );
        let body = br#"{"application":"a","device":"d","command":"c"}"#;
        assert_eq!(
            parse(&headers(Some("1m")), body, now).unwrap().expires_at,
            Some(Timestamp::from_millis(70_000))
        );
        assert_eq!(
            parse(&headers(Some("3")), body, now).unwrap().expires_at,
            Some(Timestamp::from_millis(13_000))
        );
    }

    #[test]
    fn refuses_bad_bodies_with_a_reason() {
        let bad = [
            (r#"not json"#, "body is not"),
            (r#"{"device":"d","command":"c"}"#, "application"),
            (r#"{"application":"a","device":"d/x","command":"c"}"#, "device name"),
            (r#"{"application":"a","device":"d","command":"c d"}"#, "command name"),
            (r#"{"application":"a","device":"d","command":"c","payload":"!!"}"#, "base64"),
            (r#"{"application":"a","device":"d","command":"c","ttl":"soon"}"#, "ttl"),
            (r#"{"application":"a","device":"d","command":"c","ttl":0}"#, "ttl"),
        ];
        for (body, needle) in bad {
            let err =
                parse(&headers(None), body.as_bytes(), Timestamp::from_millis(0)).unwrap_err();
            assert!(err.contains(needle), "{body}: {err}");
        }
        let err = parse(
            &headers(Some("never")),
            br#"{"application":"a","device":"d","command":"c"}"#,
            Timestamp::from_millis(0),
        )
        .unwrap_err();
        assert!(err.contains("ttl"), "{err}");
    }

    #[test]
    fn token_comparison() {
        let expected = digest(b"s3cret");
        assert!(token_matches("s3cret", &expected));
        assert!(!token_matches("s3creT", &expected));
        assert!(!token_matches("s3cret ", &expected));
        assert!(!token_matches("", &expected));
    }

    #[test]
    fn outcomes_map_to_statuses() {
        assert_eq!(answer(CommandOutcome::Delivered).status(), StatusCode::OK);
        assert_eq!(answer(CommandOutcome::Queued).status(), StatusCode::ACCEPTED);
        assert_eq!(answer(CommandOutcome::UnknownDevice).status(), StatusCode::NOT_FOUND);
        assert_eq!(answer(CommandOutcome::TooLarge).status(), StatusCode::PAYLOAD_TOO_LARGE);
        let full = answer(CommandOutcome::QueueFull);
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.headers()[header::RETRY_AFTER], "30");
        assert_eq!(
            answer(CommandOutcome::Rejected("expired".into())).status(),
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}
