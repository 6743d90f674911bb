//! Drogue's publish contract over CoAP (contracts/drogue-cloud.md §3): what a `POST
//! /v1/<channel>[/<suffix...>]` request means, read from its options, and the refusals a bad
//! one gets. Pure: the core calls it once a request (or its last block) is complete.
//!
//! Differences from Drogue, on purpose: every Uri-Query option is read (the standard form, one
//! parameter per option) as well as Drogue's single option holding `a=1&b=2`; a suffix is kept
//! as metadata instead of being dropped; a malformed request is answered 4.00 instead of not
//! at all; a missing or unreadable option 4209 is 4.01 (wrong credentials stay 4.03).

use std::time::Duration;

use bytes::Bytes;
use coap_lite::{Packet, ResponseType};
use gw_model::{AppId, AuthRequest, BasicCredentials, Channel, PublishQuery};
use percent_encoding::percent_decode_str;

use crate::wire::{self, AUTH_OPTION};

const URI_PATH: u16 = 11;
const CONTENT_FORMAT: u16 = 12;
const URI_QUERY: u16 = 15;

/// A publish, checked as far as it can be without the credential chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Who the request claims to be, with the credential it presents.
    pub auth: AuthRequest,
    /// `as=`: a sensor may only name itself.
    pub as_device: Option<String>,
    pub channel: Channel,
    /// Path segments after the channel, joined with `/`.
    pub suffix: Option<String>,
    pub content_type: Option<String>,
    pub data_schema: Option<String>,
    /// `ct=<seconds>`, capped at `max_command_wait`: wait this long for a command.
    pub command_wait: Option<Duration>,
    pub payload: Bytes,
}

/// An error answer: code, short diagnostic payload, and the options some codes carry.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: ResponseType,
    pub text: String,
    /// Max-Age (seconds): when to try again (4.29, 5.03).
    pub max_age: Option<u32>,
    /// Size1: the largest body accepted (4.13).
    pub size1: Option<u32>,
}

impl Refusal {
    pub fn new(code: ResponseType, text: impl Into<String>) -> Self {
        Self { code, text: text.into(), max_age: None, size1: None }
    }

    pub fn bad_request(text: impl Into<String>) -> Self {
        Self::new(ResponseType::BadRequest, text)
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.max_age = Some(seconds);
        self
    }
}

/// Reads the publish in `packet` (a POST; `payload` is the whole body, reassembled if it came
/// in blocks). `default_app` is the application of a bare `device` user.
pub fn parse_publish(
    packet: &Packet,
    payload: Bytes,
    default_app: &AppId,
    max_command_wait: Duration,
) -> Result<Publish, Refusal> {
    let (channel, suffix) = parse_path(packet)?;
    let query = parse_query(wire::option_values(packet, URI_QUERY))
        .map_err(|e| Refusal::bad_request(format!("bad query: {e}")))?;
    let content_type = match wire::option_values(packet, CONTENT_FORMAT).next() {
        None => None,
        Some(v) => {
            let n = wire::uint_value(v, 2)
                .ok_or_else(|| Refusal::bad_request("bad Content-Format option"))?;
            let n = u16::try_from(n).map_err(|_| Refusal::bad_request("bad Content-Format"))?;
            // A format not in the table is sent on without a content type (octet-stream).
            wire::content_type_of(n).map(str::to_owned)
        }
    };
    let mut auth_values = wire::option_values(packet, AUTH_OPTION);
    let header = auth_values.next().ok_or_else(|| {
        Refusal::new(ResponseType::Unauthorized, "missing credentials: option 4209 (Basic ...)")
    })?;
    if auth_values.next().is_some() {
        return Err(Refusal::bad_request("option 4209 given more than once"));
    }
    let unauthorized =
        |what: &str| Refusal::new(ResponseType::Unauthorized, format!("option 4209: {what}"));
    let header = std::str::from_utf8(header).map_err(|_| unauthorized("not UTF-8"))?;
    let basic = BasicCredentials::parse_header(header).map_err(|e| unauthorized(&e.to_string()))?;
    let auth = AuthRequest::from_http(
        basic,
        query.application.as_deref(),
        query.device.as_deref(),
        Some(default_app),
    )
    .map_err(|e| unauthorized(&e.to_string()))?;
    Ok(Publish {
        auth,
        as_device: query.as_device,
        channel,
        suffix,
        content_type,
        data_schema: query.data_schema,
        command_wait: query.ct.map(|s| Duration::from_secs(s).min(max_command_wait)),
        payload,
    })
}

impl Publish {
    /// A JSON content type needs a JSON payload (4.06 otherwise, as Drogue answers). Checked
    /// once the sender is authenticated.
    pub fn check_json(&self) -> Result<(), Refusal> {
        if self.content_type.as_deref().is_some_and(gw_model::is_json_content_type)
            && serde_json::from_slice::<serde::de::IgnoredAny>(&self.payload).is_err()
        {
            return Err(Refusal::new(ResponseType::NotAcceptable, "payload is not valid JSON"));
        }
        Ok(())
    }
}

/// A key naming the resource a request addresses (path and query), to match the blocks of one
/// block-wise transfer.
pub fn resource_key(packet: &Packet) -> Vec<u8> {
    let mut key = Vec::new();
    for number in [URI_PATH, URI_QUERY] {
        for value in wire::option_values(packet, number) {
            key.extend_from_slice(&number.to_be_bytes());
            key.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
            key.extend_from_slice(value);
        }
    }
    key
}

fn parse_path(packet: &Packet) -> Result<(Channel, Option<String>), Refusal> {
    let not_found = || Refusal::new(ResponseType::NotFound, "expected POST /v1/<channel>");
    let mut segments = Vec::new();
    for value in wire::option_values(packet, URI_PATH) {
        let s = std::str::from_utf8(value)
            .map_err(|_| Refusal::bad_request("Uri-Path is not UTF-8"))?;
        segments.push(s);
    }
    // A trailing slash (`/v1/temp/`) is an empty last segment: no suffix.
    while segments.len() > 2 && segments.last().is_some_and(|s| s.is_empty()) {
        segments.pop();
    }
    match segments.as_slice() {
        ["v1", channel, rest @ ..] => {
            let channel = Channel::new(*channel)
                .map_err(|e| Refusal::bad_request(format!("bad channel: {e}")))?;
            let suffix = (!rest.is_empty()).then(|| rest.join("/"));
            Ok((channel, suffix))
        }
        _ => Err(not_found()),
    }
}

/// Reads every Uri-Query option; each may hold one `key=value` (the standard form) or several
/// joined with `&` (Drogue's form). Values are URL-decoded (`%xx`, `+` as space). Unknown keys
/// and a key given twice are errors.
pub fn parse_query<'a>(options: impl Iterator<Item = &'a Vec<u8>>) -> Result<PublishQuery, String> {
    let mut q = PublishQuery::default();
    for option in options {
        let text = std::str::from_utf8(option).map_err(|_| "a Uri-Query option is not UTF-8")?;
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode_component(value)?;
            let slot = match decode_component(key)?.as_str() {
                "application" => &mut q.application,
                "device" => &mut q.device,
                "data_schema" => &mut q.data_schema,
                "as" => &mut q.as_device,
                "ct" | "commandTimeout" => {
                    if q.ct.is_some() {
                        return Err("ct given twice".into());
                    }
                    let secs = value
                        .parse::<u64>()
                        .map_err(|_| format!("ct must be whole seconds, not {value:?}"))?;
                    q.ct = Some(secs);
                    continue;
                }
                other => {
                    return Err(format!(
                        "unknown parameter {other:?} (allowed: application, device, data_schema, as, ct)"
                    ));
                }
            };
            if slot.is_some() {
                return Err(format!("{key} given twice"));
            }
            *slot = Some(value);
        }
    }
    Ok(q)
}

fn decode_component(raw: &str) -> Result<String, String> {
    let spaced = raw.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("{raw:?} is not UTF-8 once percent-decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
    use coap_lite::CoapOption;
    use proptest::prelude::*;

    fn app() -> AppId {
        AppId::new("gw-app").unwrap()
    }

    fn post(path: &[&str], query: &[&str], auth: Option<&str>) -> Packet {
        let mut p = Packet::new();
        for s in path {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        for q in query {
            p.add_option(CoapOption::UriQuery, q.as_bytes().to_vec());
        }
        if let Some(a) = auth {
            p.add_option(CoapOption::Unknown(AUTH_OPTION), a.as_bytes().to_vec());
        }
        p
    }

    fn basic(user_pw: &str) -> String {
        format!("Basic {}", STANDARD_NO_PAD.encode(user_pw))
    }

    fn parse(p: &Packet) -> Result<Publish, Refusal> {
        parse_publish(p, Bytes::from_static(b"{}"), &app(), Duration::from_secs(60))
    }

    #[test]
    fn reads_channel_suffix_auth_and_both_query_forms() {
        let auth = basic("sensor1@my-app:pw");
        let p = post(&["v1", "temp", "a", "b"], &["ct=30&data_schema=s1"], Some(&auth));
        let r = parse(&p).unwrap();
        assert_eq!(r.channel, "temp");
        assert_eq!(r.suffix.as_deref(), Some("a/b"));
        assert_eq!(r.auth.identity().to_string(), "sensor1@my-app");
        assert_eq!(r.command_wait, Some(Duration::from_secs(30)));
        assert_eq!(r.data_schema.as_deref(), Some("s1"));
        // standard form: one option per parameter, all read
        let p =
            post(&["v1", "temp", ""], &["data_schema=s%202", "ct=5", "as=sensor1"], Some(&auth));
        let r = parse(&p).unwrap();
        assert_eq!(r.suffix, None, "a trailing slash is no suffix");
        assert_eq!(r.command_wait, Some(Duration::from_secs(5)));
        assert_eq!(r.data_schema.as_deref(), Some("s 2"));
        assert_eq!(r.as_device.as_deref(), Some("sensor1"));
        // ct is capped at the configured maximum
        let p = post(&["v1", "t"], &["ct=3600"], Some(&auth));
        assert_eq!(parse(&p).unwrap().command_wait, Some(Duration::from_secs(60)));
    }

    #[test]
    fn bare_device_uses_the_gateway_app_and_query_forms_work() {
        let p = post(&["v1", "t"], &[], Some(&basic("sensor1:pw")));
        assert_eq!(parse(&p).unwrap().auth.identity().to_string(), "sensor1@gw-app");
        let p = post(&["v1", "t"], &["application=a2"], Some(&basic("dev:pw")));
        assert_eq!(parse(&p).unwrap().auth.identity().to_string(), "dev@a2");
    }

    #[test]
    fn refusals_name_the_problem() {
        let auth = basic("s@a:pw");
        let code = |p: &Packet| parse(p).unwrap_err().code;
        assert_eq!(code(&post(&["v2", "t"], &[], Some(&auth))), ResponseType::NotFound);
        assert_eq!(code(&post(&["v1"], &[], Some(&auth))), ResponseType::NotFound);
        assert_eq!(code(&post(&["v1", "t"], &[], None)), ResponseType::Unauthorized);
        assert_eq!(code(&post(&["v1", "t"], &[], Some("Bearer x"))), ResponseType::Unauthorized);
        let e = parse(&post(&["v1", "t"], &["foo=1"], Some(&auth))).unwrap_err();
        assert_eq!(e.code, ResponseType::BadRequest);
        assert!(e.text.contains("foo"), "{}", e.text);
        assert_eq!(code(&post(&["v1", "t"], &["ct=abc"], Some(&auth))), ResponseType::BadRequest);
        assert_eq!(
            code(&post(&["v1", "t"], &["ct=1", "ct=2"], Some(&auth))),
            ResponseType::BadRequest
        );
        assert_eq!(
            code(&post(&["v1", "t"], &["as=x&as=y"], Some(&auth))),
            ResponseType::BadRequest
        );
        let mut p = post(&["v1", "t"], &[], Some(&auth));
        p.add_option(CoapOption::ContentFormat, vec![50]);
        let publish =
            parse_publish(&p, Bytes::from_static(b"{nope"), &app(), Duration::ZERO).unwrap();
        assert_eq!(publish.check_json().unwrap_err().code, ResponseType::NotAcceptable);
    }

    #[test]
    fn content_format_maps_to_a_content_type() {
        let mut p = post(&["v1", "t"], &[], Some(&basic("s@a:pw")));
        p.add_option(CoapOption::ContentFormat, vec![50]);
        assert_eq!(parse(&p).unwrap().content_type.as_deref(), Some("application/json"));
        let mut p = post(&["v1", "t"], &[], Some(&basic("s@a:pw")));
        p.add_option(CoapOption::ContentFormat, vec![0x27, 0x10]);
        assert_eq!(parse(&p).unwrap().content_type, None);
    }

    proptest! {
        #[test]
        fn query_values_round_trip_in_either_form(
            schema in "[a-zA-Z0-9 &=%+/-]{0,20}",
            ct in proptest::option::of(0u64..100_000),
            joined: bool,
        ) {
            let enc: String = percent_encoding::utf8_percent_encode(&schema, percent_encoding::NON_ALPHANUMERIC).to_string();
            let mut parts = vec![format!("data_schema={enc}")];
            if let Some(ct) = ct { parts.push(format!("ct={ct}")); }
            let options: Vec<Vec<u8>> = if joined {
                vec![parts.join("&").into_bytes()]
            } else {
                parts.iter().map(|p| p.clone().into_bytes()).collect()
            };
            let q = parse_query(options.iter()).unwrap();
            prop_assert_eq!(q.data_schema.as_deref(), Some(schema.as_str()));
            prop_assert_eq!(q.ct, ct);
        }

        #[test]
        fn arbitrary_query_options_never_panic(options in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 0..4)) {
            let _ = parse_query(options.iter());
        }
    }
}
