//! Logging: tracing to stderr, one line per event, human-readable or JSON.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // A daemon outlives its log reader: with stderr closed, dropped log lines must not turn
    // into a panic (the default reports write errors with eprintln!, which panics then).
    let builder =
        fmt().with_env_filter(filter).with_writer(std::io::stderr).log_internal_errors(false);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        eprintln!("gatewayd: logging already set up: {e}");
    }
}
