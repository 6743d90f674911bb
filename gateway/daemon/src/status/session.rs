//! Technician sessions of the status page: random session tokens in an `HttpOnly`,
//! `SameSite=Strict` cookie (`Secure` on HTTPS), a CSRF token per session for every form, and
//! a login CSRF token (double-submit cookie) for the login form itself.
//!
//! Sessions live in memory only: a restart logs everyone out. Their number is bounded; the
//! oldest is evicted when a new login would exceed it.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::{HeaderMap, header};
use gw_model::Identity;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "gw_session";
/// The login form's double-submit CSRF cookie.
pub const LOGIN_CSRF_COOKIE: &str = "gw_login_csrf";

/// Sessions kept at most; a login beyond this evicts the least recently used one.
const MAX_SESSIONS: usize = 64;

/// A logged-in technician.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: Identity,
    /// Must come back in the `csrf` field of every form this session posts.
    pub csrf: String,
    last_used: Instant,
}

/// The live sessions.
#[derive(Debug)]
pub struct Sessions {
    idle_timeout: Duration,
    secure: bool,
    map: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes as 64 hex digits (from the operating system's CSPRNG via `rand`).
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

impl Sessions {
    /// `secure`: the page is served over HTTPS, so cookies get the `Secure` flag.
    pub fn new(idle_timeout: Duration, secure: bool) -> Self {
        Self { idle_timeout, secure, map: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a session for `user`; returns its token.
    pub fn start(&self, user: Identity) -> String {
        let token = random_token();
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| now.duration_since(s.last_used) < self.idle_timeout);
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(token.clone(), Session { user, csrf: random_token(), last_used: now });
        token
    }

    /// The session the request's cookie names, if it is live; refreshes its idle timer.
    pub fn get(&self, headers: &HeaderMap) -> Option<Session> {
        let token = cookie(headers, SESSION_COOKIE)?;
        let now = Instant::now();
        let mut map = self.lock();
        let session = map.get_mut(&token)?;
        if now.duration_since(session.last_used) >= self.idle_timeout {
            map.remove(&token);
            return None;
        }
        session.last_used = now;
        Some(session.clone())
    }

    /// Ends the request's session.
    pub fn end(&self, headers: &HeaderMap) {
        if let Some(token) = cookie(headers, SESSION_COOKIE) {
            self.lock().remove(&token);
        }
    }

    /// Live sessions (for the status JSON).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A `Set-Cookie` value for `name` = `value` with the flags every cookie here carries.
    pub fn set_cookie(&self, name: &str, value: &str, max_age: Option<Duration>) -> String {
        let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
        if let Some(age) = max_age {
            c.push_str(&format!("; Max-Age={}", age.as_secs()));
        }
        if self.secure {
            c.push_str("; Secure");
        }
        c
    }

    /// A `Set-Cookie` value that deletes cookie `name`.
    pub fn clear_cookie(&self, name: &str) -> String {
        self.set_cookie(name, "", Some(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends_on_logout() {
        let s = Sessions::new(Duration::from_secs(60), false);
        let token = s.start("tech@app".parse().unwrap());
        let h = headers(&format!("other=1; {SESSION_COOKIE}={token}"));
        let session = s.get(&h).unwrap();
        assert_eq!(session.user.to_string(), "tech@app");
        assert_eq!(session.csrf.len(), 64);
        assert!(s.get(&headers(&format!("{SESSION_COOKIE}=forged"))).is_none());
        s.end(&h);
        assert!(s.get(&h).is_none());
    }

    #[test]
    fn idle_sessions_expire_and_the_table_is_bounded() {
        let s = Sessions::new(Duration::ZERO, false);
        let token = s.start("tech@app".parse().unwrap());
        assert!(s.get(&headers(&format!("{SESSION_COOKIE}={token}"))).is_none());
        let s = Sessions::new(Duration::from_secs(60), false);
        for _ in 0..MAX_SESSIONS + 10 {
            s.start("tech@app".parse().unwrap());
        }
        assert_eq!(s.len(), MAX_SESSIONS);
    }

    #[test]
    fn cookies_carry_httponly_samesite_strict_and_secure_on_https() {
        let plain = Sessions::new(Duration::from_secs(60), false).set_cookie("a", "b", None);
        assert_eq!(plain, "a=b; Path=/; HttpOnly; SameSite=Strict");
        let https = Sessions::new(Duration::from_secs(60), true).set_cookie("a", "b", None);
        assert!(https.ends_with("; Secure"), "{https}");
    }

    #[test]
    fn constant_time_comparison_compares() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
        assert_ne!(random_token(), random_token());
    }
}
