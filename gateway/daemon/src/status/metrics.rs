//! `/metrics` in the Prometheus text exposition format (version 0.0.4): counters, gauges and
//! histograms written by hand, with no metrics library behind them.

use std::{fmt::Write as _, sync::Mutex};

/// A histogram with fixed upper bounds (`le`), cumulative on output.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<HistogramInner>,
}

#[derive(Debug, Default, Clone)]
struct HistogramInner {
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        let inner = HistogramInner { counts: vec![0; bounds.len() + 1], ..Default::default() };
        Self { bounds, inner: Mutex::new(inner) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HistogramInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn observe(&self, value: f64) {
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        let mut h = self.lock();
        h.counts[i] += 1;
        h.sum += value;
        h.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.lock().count
    }

    pub fn sum(&self) -> f64 {
        self.lock().sum
    }

    /// The value below which `q` (0..=1) of the observations fall, as the upper bound of the
    /// bucket that holds it (`None` without observations).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let h = self.lock();
        if h.count == 0 {
            return None;
        }
        let rank = (q * h.count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in h.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(self.bounds.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        Some(f64::INFINITY)
    }
}

/// Builds one exposition. Each metric family is written once, with its HELP and TYPE lines.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> =
        pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", escape_label(v))).collect();
    format!("{{{}}}", inner.join(","))
}

fn number(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Exposition {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A counter family with one sample per label set (`name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        self.header(name, help, "counter");
        for (l, v) in samples {
            let _ = writeln!(self.out, "{name}{} {}", labels(l), number(*v));
        }
    }

    /// A gauge family.
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(&[(&str, &str)], f64)]) {
        self.header(name, help, "gauge");
        for (l, v) in samples {
            let _ = writeln!(self.out, "{name}{} {}", labels(l), number(*v));
        }
    }

    /// One unlabelled counter.
    pub fn counter1(&mut self, name: &str, help: &str, value: u64) {
        self.counter(name, help, &[(&[], value as f64)]);
    }

    /// One unlabelled gauge.
    pub fn gauge1(&mut self, name: &str, help: &str, value: f64) {
        self.gauge(name, help, &[(&[], value)]);
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        let snap = h.lock().clone();
        self.header(name, help, "histogram");
        let mut cumulative = 0;
        for (i, c) in snap.counts.iter().enumerate() {
            cumulative += c;
            let le = h.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{}\"}} {cumulative}", number(le));
        }
        let _ = writeln!(self.out, "{name}_sum {}", number(snap.sum));
        let _ = writeln!(self.out, "{name}_count {}", snap.count);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let h = Histogram::new(&[1.0, 5.0]);
        for v in [0.5, 2.0, 3.0, 9.0] {
            h.observe(v);
        }
        let mut e = Exposition::default();
        e.histogram("x_seconds", "X.", &h);
        let text = e.finish();
        assert!(text.contains("# TYPE x_seconds histogram\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"5\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("x_seconds_sum 14.5\n"), "{text}");
        assert!(text.contains("x_seconds_count 4\n"), "{text}");
        assert_eq!(h.quantile_bound(0.5), Some(5.0));
        assert_eq!(h.quantile_bound(1.0), Some(f64::INFINITY));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut e = Exposition::default();
        e.counter("y_total", "Y.", &[(&[("device", "a\"b\\c\nd")], 2.0)]);
        assert!(e.finish().contains("y_total{device=\"a\\\"b\\\\c\\nd\"} 2\n"));
    }
}
