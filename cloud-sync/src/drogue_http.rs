//! Drogue Cloud's HTTP endpoint, upstream: `POST {url}/v1/{channel}?as={device}` with the
//! gateway's own Basic credentials (contracts/drogue-cloud.md §1).

use gw_model::{BasicCredentials, Identity, Secret, Telemetry};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reqwest::{StatusCode, header};

use crate::{
    CloudConfig, CloudError,
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
}

impl DrogueHttp {
    pub fn new(
        config: &CloudConfig,
        gateway: &Identity,
        password: Secret,
    ) -> Result<Self, CloudError> {
        let client = client_builder(config.timeout, config.ca_file.as_deref())?
            .pool_max_idle_per_host(config.concurrency)
            .build()
            .map_err(CloudError::Client)?;
        let authorization = BasicCredentials::new(gateway.to_string(), password).to_header();
        Ok(Self { client, base: config.url.trim_end_matches('/').to_owned(), authorization })
    }

    fn url(&self, t: &Telemetry) -> String {
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
        url
    }
}

/// A reqwest client builder with gatewayd's defaults: `timeout` for connect and request, the
/// CAs of `ca_file` instead of the system's roots when given.
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
        let mut req = self
            .client
            .post(self.url(t))
            .header(header::AUTHORIZATION, &self.authorization)
            .body(t.payload.clone());
        if let Some(ct) = &t.content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        match req.send().await {
            Err(e) => Verdict::Transient(describe(&e)),
            Ok(resp) => classify(resp.status()),
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
mod tests {
    use super::*;

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
