//! The client of an old installation's `CheckLogin` service (seeds/003): `POST {url}` with
//! `{"Email": id, "Password": ""}` asks whether the identifier exists (`IsEmailValid`), then
//! `{"Email": id, "Password": pw}` whether the pair matches (`IsAuthenticated`). Both fields are
//! accepted as JSON booleans or `"true"`/`"false"` strings, their names without regard to case
//! (ASP.NET may camelCase them); a missing field is false. Anything else (timeout, refused
//! connection, non-2xx status, a body that is not a JSON object) fails closed.

use std::time::Duration;

use serde_json::{Value, json};

use crate::AuthError;

/// The legacy service's answer to a login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LegacyVerdict {
    /// Both calls said yes: the account may be migrated.
    Authenticated,
    /// The identifier is unknown or the password wrong.
    Refused,
    /// The service could not be asked (timeout, error): fail closed.
    Unavailable(String),
}

/// The `CheckLogin` client.
#[derive(Clone, Debug)]
pub struct LegacyLogin {
    client: reqwest::Client,
    url: String,
}

impl LegacyLogin {
    /// A client for `url`; each request times out after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, AuthError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(AuthError::Client)?;
        Ok(Self { client, url: url.to_owned() })
    }

    /// Asks the service about `id` and `password`: the identifier alone first, then the pair.
    pub async fn check(&self, id: &str, password: &str) -> LegacyVerdict {
        if password.is_empty() {
            // An empty password is the "is the identifier valid" question: never a login.
            return LegacyVerdict::Refused;
        }
        match self.ask(id, "", "IsEmailValid").await {
            Ok(true) => {}
            Ok(false) => return LegacyVerdict::Refused,
            Err(e) => return LegacyVerdict::Unavailable(e),
        }
        match self.ask(id, password, "IsAuthenticated").await {
            Ok(true) => LegacyVerdict::Authenticated,
            Ok(false) => LegacyVerdict::Refused,
            Err(e) => LegacyVerdict::Unavailable(e),
        }
    }

    async fn ask(&self, id: &str, password: &str, field: &str) -> Result<bool, String> {
        let response = self
            .client
            .post(&self.url)
            .json(&json!({"Email": id, "Password": password}))
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        let body: Value = response.json().await.map_err(|e| format!("bad response body: {e}"))?;
        flag(&body, field).ok_or_else(|| format!("response is not a LoginResponse object: {body}"))
    }
}

/// Reads `field` of a LoginResponse: `None` if the body is not an object or the field has a
/// type other than boolean / "true" / "false" / null.
pub(crate) fn flag(body: &Value, field: &str) -> Option<bool> {
    let obj = body.as_object()?;
    let value = obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)).map(|(_, v)| v);
    match value {
        None | Some(Value::Null) => Some(false),
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Some(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Some(false),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_strings_and_case_are_accepted() {
        assert_eq!(flag(&json!({"IsEmailValid": true}), "IsEmailValid"), Some(true));
        assert_eq!(flag(&json!({"IsEmailValid": "true"}), "IsEmailValid"), Some(true));
        assert_eq!(flag(&json!({"isEmailValid": "False"}), "IsEmailValid"), Some(false));
        assert_eq!(flag(&json!({"IsAuthenticated": true}), "IsEmailValid"), Some(false));
        assert_eq!(flag(&json!({"IsEmailValid": "yes"}), "IsEmailValid"), None);
        assert_eq!(flag(&json!([true]), "IsEmailValid"), None);
    }
}
