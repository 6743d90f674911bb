//! Logging: tracing to stderr, one line per event, human-readable or JSON. The filter can be
//! replaced at runtime ([`set_filter`], used by the `set-log-level` gateway command).

use std::sync::OnceLock;

use tracing_subscriber::{
    EnvFilter, Registry, fmt, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

use crate::config::LogFormat;

/// The handle that replaces the filter of the installed subscriber.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // A daemon outlives its log reader: with stderr closed, dropped log lines must not turn
    // into a panic (the default reports write errors with eprintln!, which panics then).
    let layer = fmt::layer().with_writer(std::io::stderr).log_internal_errors(false);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Human => registry.with(layer).try_init(),
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
    };
    match result {
        Ok(()) => {
            let _ = FILTER.set(handle);
        }
        Err(e) => eprintln!("gatewayd: logging already set up: {e}"),
    }
}

/// Replaces the log filter with `directive` (`debug`, `gw_store=trace,info`, ...).
pub fn set_filter(directive: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(directive).map_err(|e| format!("bad filter '{directive}': {e}"))?;
    let handle = FILTER.get().ok_or("logging was not set up by gatewayd")?;
    handle.reload(filter).map_err(|e| format!("cannot replace the log filter: {e}"))
}
