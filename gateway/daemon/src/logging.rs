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
    let layer = fmt::layer().log_internal_errors(false);
    // colours only for a person at a terminal: a log file or journal gets plain text
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let layer = layer.with_ansi(colour);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        // a field a client chose (an MQTT client id, a user name) must not start a line of
        // its own: human lines get their control characters escaped (JSON escapes them)
        LogFormat::Human => {
            registry.with(layer.with_writer(|| OneLine(std::io::stderr()))).try_init()
        }
        LogFormat::Json => {
            registry.with(layer.with_writer(std::io::stderr).json().flatten_event(true)).try_init()
        }
    };
    match result {
        Ok(()) => {
            let _ = FILTER.set(handle);
        }
        Err(e) => eprintln!("gatewayd: logging already set up: {e}"),
    }
}

/// A writer of formatted log lines that escapes every line break and control character inside
/// a line (`\n` as `\\n`, others as `\\x1f`) and keeps the line's own final line break.
/// The formatter hands over each event in one write; ESC stays (the formatter escapes ANSI
/// sequences in field values itself and colours its own output with them).
struct OneLine<W>(W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        if !body.iter().any(|b| needs_escape(*b)) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        for &b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b if needs_escape(b) => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                b => out.push(b),
            }
        }
        out.extend_from_slice(end);
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn needs_escape(b: u8) -> bool {
    (b < 0x20 && b != b'\t' && b != 0x1b) || b == 0x7f
}

/// Replaces the log filter with `directive` (`debug`, `gw_store=trace,info`, ...).
pub fn set_filter(directive: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(directive).map_err(|e| format!("bad filter '{directive}': {e}"))?;
    let handle = FILTER.get().ok_or("logging was not set up by gatewayd")?;
    handle.reload(filter).map_err(|e| format!("cannot replace the log filter: {e}"))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::OneLine;

    #[test]
    fn a_line_break_inside_a_field_cannot_start_a_forged_line() {
        let mut w = OneLine(Vec::new());
        w.write_all(b"INFO client_id=a\n2026 ERROR forged\r\x07\tend\n").unwrap();
        assert_eq!(w.0, b"INFO client_id=a\\n2026 ERROR forged\\r\\x07\tend\n");
        let mut w = OneLine(Vec::new());
        w.write_all(b"\x1b[32mINFO\x1b[0m plain\n").unwrap();
        assert_eq!(w.0, b"\x1b[32mINFO\x1b[0m plain\n", "colours and clean lines pass");
    }
}
