//! The status page's update page: the slots as the updater sees them, and the upload of a
//! signed bundle into the inactive slot (docs/updating.md).
//!
//! The upload is a `multipart/form-data` POST whose `csrf` field must come before the `bundle`
//! file: the file is not read until the session's token has been checked. The bundle is
//! streamed into the updater's staging file (never held in memory), at most
//! `[update] max_bundle_bytes`, and installed while the updater's lock is held, so only one
//! install runs at a time.

use axum::{
    extract::{Multipart, State, multipart::MultipartRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use gw_image::ImageError;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{StatusPage, html, pages, require, session::constant_time_eq};
use crate::update::{InstallError, Staging, Updater};

/// Room for the form's other fields and the multipart framing, beyond the bundle itself.
pub const FORM_OVERHEAD: u64 = 64 * 1024;
/// The largest `csrf` or `force` field read.
const SMALL_FIELD: usize = 256;

/// What the page says about the last upload.
pub struct Notice {
    pub ok: bool,
    pub text: String,
}

/// The largest request body `POST /update` reads.
pub fn body_limit(page: &StatusPage) -> usize {
    let max = page.web.update.as_ref().map_or(0, |u| u.max_bundle_bytes());
    usize::try_from(max.saturating_add(FORM_OVERHEAD)).unwrap_or(usize::MAX)
}

fn render(page: &StatusPage, csrf: &str, status: StatusCode, notice: Option<Notice>) -> Response {
    let update = page.web.update.as_ref().map_or(Value::Null, |u| u.snapshot());
    let max = page.web.update.as_ref().map(|u| u.max_bundle_bytes());
    let mut r = html(pages::update(&update, max, csrf, notice.as_ref()));
    *r.status_mut() = status;
    r
}

/// `GET /update`.
pub async fn show(State(page): State<StatusPage>, headers: HeaderMap) -> Response {
    match require(&page, &headers, "/update") {
        Ok(s) => render(&page, &s.csrf, StatusCode::OK, None),
        Err(r) => r,
    }
}

fn refused(status: StatusCode, text: impl Into<String>) -> (StatusCode, Notice) {
    (status, Notice { ok: false, text: text.into() })
}

/// `POST /update`: receives a bundle and installs it into the inactive slot.
pub async fn upload(
    State(page): State<StatusPage>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let s = match require(&page, &headers, "/update") {
        Ok(s) => s,
        Err(r) => return r,
    };
    let user = s.user.to_string();
    let (status, notice) = match receive(&page, &headers, multipart, &s.csrf, &user).await {
        Err(Forbidden) => {
            tracing::warn!(user, action = "update", "upload without a valid CSRF token refused");
            return (StatusCode::FORBIDDEN, "invalid CSRF token\n").into_response();
        }
        Ok(Received::Refused(status, notice)) => {
            tracing::warn!(user, action = "update", done = false, reason = %notice.text, "technician action");
            (status, notice)
        }
        Ok(Received::Bundle { staging, force, bytes, updater }) => {
            tracing::info!(user, action = "update", bytes, force, "bundle received, installing");
            match updater.install_staged(staging, force).await {
                Ok(done) => {
                    tracing::info!(
                        user, action = "update", done = true, slot = %done.slot,
                        version = %done.version, "technician action"
                    );
                    let text = format!(
                        "Installed version {} into slot {}. Reboot to try it: the gateway boots \
                         slot {} once and keeps it when it proves healthy.",
                        done.version, done.slot, done.slot
                    );
                    (StatusCode::OK, Notice { ok: true, text })
                }
                Err(e) => {
                    let (status, notice) = refusal(&e);
                    tracing::warn!(user, action = "update", done = false, cause = %e, "technician action");
                    (status, notice)
                }
            }
        }
    };
    render(&page, &s.csrf, status, Some(notice))
}

/// The session's CSRF token was missing or wrong.
struct Forbidden;

enum Received {
    Bundle { staging: Staging, force: bool, bytes: u64, updater: std::sync::Arc<Updater> },
    Refused(StatusCode, Notice),
}

impl From<(StatusCode, Notice)> for Received {
    fn from((status, notice): (StatusCode, Notice)) -> Self {
        Self::Refused(status, notice)
    }
}

fn too_large(max: u64) -> (StatusCode, Notice) {
    refused(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Refused: the bundle is larger than this gateway accepts ({}, [update] max_bundle_bytes).",
            pages::bytes(max)
        ),
    )
}

fn multipart_error(e: &axum::extract::multipart::MultipartError, max: u64) -> (StatusCode, Notice) {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(max)
    } else {
        refused(StatusCode::BAD_REQUEST, format!("The upload broke off or is not a form: {e}"))
    }
}

/// Reads the form: the CSRF token first, then the bundle into the updater's staging file.
async fn receive(
    page: &StatusPage,
    headers: &HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
    csrf: &str,
    user: &str,
) -> Result<Received, Forbidden> {
    let Some(updater) = page.web.update.clone() else {
        return Ok(refused(
            StatusCode::NOT_IMPLEMENTED,
            "Refused: updates are not configured on this gateway ([board] with slots and [update]).",
        )
        .into());
    };
    let max = updater.max_bundle_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|l| l > max.saturating_add(FORM_OVERHEAD)) {
        return Ok(too_large(max).into());
    }
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(e) => {
            return Ok(refused(StatusCode::BAD_REQUEST, format!("Not an upload form: {e}")).into());
        }
    };
    let (mut token_ok, mut force, mut received) = (false, false, None);
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Ok(multipart_error(&e, max).into()),
        };
        match field.name().unwrap_or_default() {
            "csrf" => match small(&mut field).await {
                Some(v) => token_ok = constant_time_eq(csrf, &v),
                None => return Err(Forbidden),
            },
            "force" => force = small(&mut field).await.is_some_and(|v| !v.is_empty()),
            "bundle" => {
                if !token_ok {
                    return Err(Forbidden);
                }
                if received.is_some() {
                    return Ok(refused(StatusCode::BAD_REQUEST, "One bundle per upload.").into());
                }
                let Some(staging) = updater.try_stage() else {
                    return Ok(refused(
                        StatusCode::CONFLICT,
                        "Refused: another update is being installed; try again when it is done.",
                    )
                    .into());
                };
                tracing::info!(user, action = "update", "receiving a bundle");
                match stream_into(&mut field, &staging, max).await {
                    Ok(bytes) => received = Some((staging, bytes)),
                    Err(refusal) => return Ok(refusal.into()),
                }
            }
            other => {
                return Ok(refused(
                    StatusCode::BAD_REQUEST,
                    format!("Unexpected form field {other:?}."),
                )
                .into());
            }
        }
    }
    if !token_ok {
        return Err(Forbidden);
    }
    match received {
        Some((staging, bytes)) if bytes > 0 => {
            Ok(Received::Bundle { staging, force, bytes, updater })
        }
        _ => Ok(refused(StatusCode::BAD_REQUEST, "Choose a bundle file to upload.").into()),
    }
}

/// A short text field, or `None` when it is longer than [`SMALL_FIELD`] or broken.
async fn small(field: &mut axum::extract::multipart::Field<'_>) -> Option<String> {
    let mut value = Vec::new();
    while let Some(chunk) = field.chunk().await.ok()? {
        value.extend_from_slice(&chunk);
        if value.len() > SMALL_FIELD {
            return None;
        }
    }
    String::from_utf8(value).ok()
}

/// Writes the file field into the staging file, chunk by chunk; refuses more than `max` bytes.
async fn stream_into(
    field: &mut axum::extract::multipart::Field<'_>,
    staging: &Staging,
    max: u64,
) -> Result<u64, (StatusCode, Notice)> {
    let cannot_write = |e: std::io::Error| {
        tracing::error!(file = %staging.path().display(), cause = %e, "cannot store an uploaded bundle");
        refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Cannot store the bundle on the gateway: {e}"),
        )
    };
    let mut out = staging.create().await.map_err(cannot_write)?;
    let mut total = 0u64;
    loop {
        let chunk = match field.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(&e, max)),
        };
        total += chunk.len() as u64;
        if total > max {
            return Err(too_large(max));
        }
        out.write_all(&chunk).await.map_err(cannot_write)?;
    }
    out.flush().await.map_err(cannot_write)?;
    Ok(total)
}

/// The page's message and HTTP status for a bundle the updater did not install.
fn refusal(e: &InstallError) -> (StatusCode, Notice) {
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    match e {
        InstallError::Refused(e) => match e {
            ImageError::UntrustedSigner { key_id, .. } => refused(
                unprocessable,
                format!(
                    "Refused: the bundle is not signed by a key this gateway trusts (signer {key_id})."
                ),
            ),
            ImageError::BadSignature { .. } => refused(
                unprocessable,
                "Refused: bad signature. The bundle was changed after it was signed, or its \
                 signature is corrupt.",
            ),
            ImageError::Incompatible { .. } => refused(unprocessable, format!("Refused: {e}.")),
            ImageError::Downgrade { bundle, installed } => refused(
                StatusCode::CONFLICT,
                format!(
                    "Refused: version {bundle} is older than the installed {installed}. Tick \
                     \u{201c}Force downgrade\u{201d} to install it anyway."
                ),
            ),
            ImageError::HashMismatch { .. } | ImageError::Truncated { .. } => refused(
                unprocessable,
                format!(
                    "Refused: corrupt image ({e}). The inactive slot is left unbootable; the \
                     running system is untouched."
                ),
            ),
            ImageError::NotABundle { reason, .. } => {
                refused(unprocessable, format!("Refused: not an update bundle ({reason})."))
            }
            ImageError::Manifest(m) => {
                refused(unprocessable, format!("Refused: the bundle's manifest is bad: {m}."))
            }
            ImageError::BootedSlotOnTrial(_) => {
                refused(StatusCode::CONFLICT, format!("Refused: {e}."))
            }
            other => {
                refused(StatusCode::INTERNAL_SERVER_ERROR, format!("Install failed: {other}."))
            }
        },
        InstallError::Aborted(_) => {
            refused(StatusCode::INTERNAL_SERVER_ERROR, format!("Install failed: {e}."))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_own_status_and_message() {
        let status = |e: ImageError| refusal(&InstallError::Refused(e));
        let (code, n) = status(ImageError::BadSignature { path: "x".into(), key_id: "k".into() });
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(n.text.contains("bad signature") && !n.text.contains("x:"), "{}", n.text);
        let (code, n) = status(ImageError::Incompatible { bundle: "a".into(), board: "b".into() });
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(n.text.contains("bundle is for \"a\", this board is \"b\""), "{}", n.text);
        let (code, _) = status(ImageError::BootedSlotOnTrial(gw_image::Slot::B));
        assert_eq!(code, StatusCode::CONFLICT);
        let (code, n) = status(ImageError::HashMismatch {
            name: "rootfs.img".into(),
            expected: "e".into(),
            actual: "a".into(),
        });
        assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(n.text.contains("corrupt image"), "{}", n.text);
        let (code, _) = status(ImageError::Env("gone".into()));
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!n.ok);
    }
}
