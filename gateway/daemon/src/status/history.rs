//! The last hour of throughput, sampled every few seconds, and its graph as inline SVG drawn
//! on the server.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::Mutex,
    time::{Duration, Instant},
};

/// One sample: messages per second into the outbox and out to the cloud over the interval
/// that ended at `at`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub at: Instant,
    pub rate_in: f64,
    pub rate_out: f64,
}

/// Samples over a fixed window.
#[derive(Debug)]
pub struct History {
    window: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    last: Option<(Instant, u64, u64)>,
    samples: VecDeque<Sample>,
}

impl History {
    pub fn new(window: Duration) -> Self {
        Self { window, inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Feeds the running totals (messages committed, messages sent) at `now`; the first call
    /// only sets the baseline. Counters that went backwards (a restart of a component) restart
    /// the baseline too.
    pub fn observe(&self, now: Instant, total_in: u64, total_out: u64) {
        let mut inner = self.lock();
        if let Some((t, i, o)) = inner.last {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            if dt > 0.0 && total_in >= i && total_out >= o {
                let sample = Sample {
                    at: now,
                    rate_in: (total_in - i) as f64 / dt,
                    rate_out: (total_out - o) as f64 / dt,
                };
                inner.samples.push_back(sample);
            }
        }
        inner.last = Some((now, total_in, total_out));
        while inner
            .samples
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) > self.window)
        {
            inner.samples.pop_front();
        }
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.lock().samples.iter().copied().collect()
    }

    /// The latest rates (in, out), zero before the second observation.
    pub fn latest(&self) -> (f64, f64) {
        self.lock().samples.back().map(|s| (s.rate_in, s.rate_out)).unwrap_or((0.0, 0.0))
    }

    /// The rates now, from the running totals at `now`: over the time since the last
    /// observation once that is at least [`Self::FRESH`] (a backlog that drains in seconds
    /// shows while it drains, not a sample later), else [`Self::latest`].
    pub fn current(&self, now: Instant, total_in: u64, total_out: u64) -> (f64, f64) {
        let inner = self.lock();
        match inner.last {
            Some((t, i, o)) if total_in >= i && total_out >= o => {
                let dt = now.saturating_duration_since(t);
                if dt < Self::FRESH {
                    drop(inner);
                    return self.latest();
                }
                let dt = dt.as_secs_f64();
                ((total_in - i) as f64 / dt, (total_out - o) as f64 / dt)
            }
            _ => (0.0, 0.0),
        }
    }

    /// The shortest interval [`Self::current`] measures over.
    pub const FRESH: Duration = Duration::from_secs(1);

    /// The graph of the window ending at `now`: two polylines (in, out) over a time axis of the
    /// window's length, y scaled to the largest rate. Plain SVG, no script.
    pub fn svg(&self, now: Instant) -> String {
        const W: f64 = 1000.0;
        const H: f64 = 200.0;
        const LEFT: f64 = 56.0;
        const BOTTOM: f64 = 20.0;
        let samples = self.samples();
        let max = samples.iter().map(|s| s.rate_in.max(s.rate_out)).fold(0.0, f64::max);
        let top = nice_ceiling(max);
        let window = self.window.as_secs_f64();
        let x = |at: Instant| {
            let age = now.saturating_duration_since(at).as_secs_f64().min(window);
            LEFT + (W - LEFT) * (1.0 - age / window)
        };
        let y = |rate: f64| (H - BOTTOM) * (1.0 - rate / top);
        let line = |pick: fn(&Sample) -> f64| -> String {
            samples
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.at), y(pick(s))))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut svg = String::new();
        let _ = write!(
            svg,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" class=\"graph\" \
             role=\"img\" aria-label=\"messages per second, last hour\">"
        );
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{0}\" x2=\"{W}\" y2=\"{0}\" class=\"axis\"/>\
             <line x1=\"{LEFT}\" y1=\"0\" x2=\"{LEFT}\" y2=\"{0}\" class=\"axis\"/>",
            H - BOTTOM
        );
        let _ = write!(
            svg,
            "<text x=\"{0}\" y=\"12\" class=\"label\" text-anchor=\"end\">{1}/s</text>\
             <text x=\"{0}\" y=\"{2}\" class=\"label\" text-anchor=\"end\">0</text>\
             <text x=\"{LEFT}\" y=\"{H}\" class=\"label\">-{3} min</text>\
             <text x=\"{W}\" y=\"{H}\" class=\"label\" text-anchor=\"end\">now</text>",
            LEFT - 4.0,
            number(top),
            H - BOTTOM,
            (window / 60.0).round()
        );
        if samples.len() >= 2 {
            let _ = write!(svg, "<polyline class=\"in\" points=\"{}\"/>", line(|s| s.rate_in));
            let _ = write!(svg, "<polyline class=\"out\" points=\"{}\"/>", line(|s| s.rate_out));
        } else {
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{}\" class=\"label\" text-anchor=\"middle\">collecting…</text>",
                (W + LEFT) / 2.0,
                H / 2.0
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

/// 1, 2 or 5 times a power of ten, at least `v` (and at least 1).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 1.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|c| *c >= v).unwrap_or(10.0 * p)
}

fn number(v: f64) -> String {
    if v >= 1000.0 { format!("{}k", v / 1000.0) } else { format!("{v}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_counter_deltas_and_old_samples_leave_the_window() {
        let h = History::new(Duration::from_secs(60));
        let t0 = Instant::now();
        h.observe(t0, 100, 50);
        assert_eq!(h.latest(), (0.0, 0.0));
        h.observe(t0 + Duration::from_secs(10), 200, 100);
        assert_eq!(h.latest(), (10.0, 5.0));
        // a counter going backwards restarts the baseline instead of a negative rate
        h.observe(t0 + Duration::from_secs(20), 5, 5);
        assert_eq!(h.samples().len(), 1);
        h.observe(t0 + Duration::from_secs(90), 15, 5);
        assert_eq!(h.samples().len(), 1, "the sample at 10 s is older than the window");
        let s = h.samples()[0];
        assert!((s.rate_in - 10.0 / 70.0).abs() < 1e-9);
    }

    #[test]
    fn the_current_rate_covers_the_time_since_the_last_sample_once_it_is_long_enough() {
        let h = History::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(h.current(t0, 0, 0), (0.0, 0.0), "no baseline yet");
        h.observe(t0, 100, 50);
        h.observe(t0 + Duration::from_secs(10), 200, 100);
        // 0.5 s after the sample: too short to measure, the sample's rates
        assert_eq!(h.current(t0 + Duration::from_millis(10_500), 10_000, 10_000), (10.0, 5.0));
        // 2 s after it: what moved since
        assert_eq!(h.current(t0 + Duration::from_secs(12), 400, 100_100), (100.0, 50_000.0));
        // a counter that went backwards (a component restarted): nothing to tell
        assert_eq!(h.current(t0 + Duration::from_secs(12), 5, 5), (0.0, 0.0));
    }

    #[test]
    fn the_graph_has_both_lines_scaled_to_a_round_maximum() {
        let h = History::new(Duration::from_secs(3600));
        let t0 = Instant::now();
        for (i, total) in [0u64, 300, 900, 1200].iter().enumerate() {
            h.observe(t0 + Duration::from_secs(10 * i as u64), *total, total / 2);
        }
        let svg = h.svg(t0 + Duration::from_secs(30));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("class=\"in\"") && svg.contains("class=\"out\""), "{svg}");
        assert!(svg.contains(">100/s<"), "max 60/s rounds up to 100: {svg}");
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(5000.0), 5000.0);
    }
}
