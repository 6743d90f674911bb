//! The one error type of the model: every variant says what was wrong with which input.

/// Why a piece of outside input could not become a model value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long; at most {max} are allowed")]
    TooLong { kind: &'static str, len: usize, max: usize },
    #[error("{kind} {value:?} contains {ch:?}, which is not allowed ({allowed})")]
    BadChar { kind: &'static str, value: String, ch: char, allowed: &'static str },
    #[error("{kind} {value:?} must start and end with a letter or digit")]
    BadEdge { kind: &'static str, value: String },
    /// `.` and `..` mean "here" and "up" in a URL path: a name that becomes a path segment
    /// upstream may not be one.
    #[error("{kind} {value:?} is a dot segment, which a URL path would resolve away")]
    DotSegment { kind: &'static str, value: String },
    #[error("identity {value:?} is not of the form device@app")]
    NoApp { value: String },
    #[error("authorization header is not HTTP Basic")]
    NotBasic,
    #[error("Basic credentials are not valid base64: {0}")]
    BadBase64(String),
    #[error("Basic credentials are not UTF-8")]
    NotUtf8,
    #[error("Basic credentials have no ':' between user and password")]
    NoColon,
    #[error("invalid size {value:?}: {reason}")]
    InvalidSize { value: String, reason: &'static str },
    #[error("percent-encoding in {value:?} does not decode to UTF-8")]
    BadPercent { value: String },
}
