//! Latency statistics: [`Latency`], an HDR histogram (`hdrhistogram`) of
//! request latencies in microseconds; [`Pct`], the percentiles a report
//! shows; [`Windows`], per-second histograms of a submit + pop phase, so a
//! stall shows in the second it happened instead of vanishing into a run's
//! average; and the bounded map of error kinds.
//!
//! Histograms keep three significant digits (a recorded value is off by at
//! most 0.1 %, exact below 2,048 µs) and grow to the largest value seen, so
//! memory is fixed by the range of latencies, not by the request count.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// Distinct error kinds kept per worker; more are lumped into "other" so a
/// misbehaving server cannot grow the map without bound.
pub const MAX_ERROR_KINDS: usize = 8;

/// Counts one error of `kind`, lumping kinds past [`MAX_ERROR_KINDS`] into "other".
pub fn count_kind(kinds: &mut BTreeMap<String, u64>, kind: String) {
    let key = if kinds.len() < MAX_ERROR_KINDS || kinds.contains_key(&kind) {
        kind
    } else {
        "other".to_string()
    };
    *kinds.entry(key).or_default() += 1;
}

/// Adds `from`'s counts into `into`, keeping the bound.
pub fn merge_kinds(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (k, n) in from {
        let key = if into.len() < MAX_ERROR_KINDS || into.contains_key(&k) {
            k
        } else {
            "other".to_string()
        };
        *into.entry(key).or_default() += n;
    }
}

/// Request latencies, microseconds.
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Latency {
        // 3 significant digits is within hdrhistogram's 0..=5: cannot fail.
        Latency(Histogram::new(3).expect("valid histogram precision"))
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        self.record_us(micros(d));
    }

    pub fn record_us(&mut self, us: u64) {
        // Grows the histogram to fit; clamping is only the fallback for a
        // value too large to index (never, for microseconds of a run).
        if self.0.record(us).is_err() {
            self.0.saturating_record(us);
        }
    }

    /// Adds another histogram's counts into this one.
    pub fn add(&mut self, other: &Latency) {
        // Both auto-resize, so the sum always fits.
        let _ = self.0.add(&other.0);
    }

    /// Number of recorded values.
    pub fn len(&self) -> u64 {
        self.0.len()
    }
}

/// Whole microseconds of `d`, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Percentiles of one histogram, nearest rank (the smallest recorded value at
/// or above the quantile), microseconds.
#[derive(Clone, Copy, Default)]
pub struct Pct {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Pct {
    pub fn of(h: &Latency) -> Pct {
        let h = &h.0;
        if h.is_empty() {
            return Pct::default();
        }
        Pct {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }

    pub fn json(&self) -> Value {
        json!({"p50_us": self.p50, "p99_us": self.p99, "p999_us": self.p999,
               "max_us": self.max, "mean_us": self.mean})
    }
}

/// The two requests of a submit + pop phase.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum MixOp {
    Submit,
    Pop,
}

/// One second of a submit + pop phase, by completion time.
#[derive(Default)]
pub struct Window {
    pub submit: Latency,
    pub pop: Latency,
    pub errors: u64,
}

/// Per-second windows of one phase, shared by its workers: a request counts
/// in the second (from `start`) in which it completed, so a request held up
/// by a stall shows with its whole latency in the second the stall ended.
/// One short lock per request: two client threads hardly contend for it, and
/// one histogram pair per second costs far less memory than one per worker.
pub struct Windows {
    start: Instant,
    /// Bound on the number of windows: requests completing later (only
    /// possible past the phase's end) count in the last one.
    max: usize,
    inner: Mutex<Vec<Window>>,
}

impl Windows {
    pub fn new(start: Instant, max: usize) -> Windows {
        Windows {
            start,
            max: max.max(1),
            inner: Mutex::new(Vec::new()),
        }
    }

    pub fn record(&self, end: Instant, op: MixOp, latency: Duration, ok: bool) {
        let second = end.saturating_duration_since(self.start).as_secs();
        let i = usize::try_from(second)
            .unwrap_or(usize::MAX)
            .min(self.max - 1);
        let mut windows = self.inner.lock();
        if windows.len() <= i {
            windows.resize_with(i + 1, Window::default);
        }
        let w = &mut windows[i];
        match op {
            MixOp::Submit => w.submit.record(latency),
            MixOp::Pop => w.pop.record(latency),
        }
        if !ok {
            w.errors += 1;
        }
    }

    pub fn into_inner(self) -> Vec<Window> {
        self.inner.into_inner()
    }
}

#[cfg(test)]
mod tests {
    //! Unit tests of the percentiles and the windows.

    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut h = Latency::default();
        for v in 1..=1000 {
            h.record_us(v);
        }
        let p = Pct::of(&h);
        assert_eq!((p.p50, p.p99, p.p999, p.max), (500, 990, 999, 1000));
        assert_eq!(Pct::of(&Latency::default()).p99, 0);
        let mut one = Latency::default();
        one.record_us(7);
        assert_eq!(Pct::of(&one).p999, 7);
    }

    #[test]
    fn large_latencies_keep_three_significant_digits() {
        let mut h = Latency::default();
        h.record(Duration::from_millis(1923));
        h.record_us(0);
        let p = Pct::of(&h);
        assert!(p.max.abs_diff(1_923_000) <= 1_923_000 / 1000, "{}", p.max);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn requests_count_in_the_second_they_complete() {
        let t0 = Instant::now();
        let w = Windows::new(t0, 3);
        let ms = Duration::from_millis;
        w.record(t0 + ms(10), MixOp::Submit, ms(1), true);
        w.record(t0 + ms(1500), MixOp::Pop, ms(900), false);
        // Past the last window: counted in it, not in a new one.
        w.record(t0 + ms(9000), MixOp::Pop, ms(2), true);
        let v = w.into_inner();
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].submit.len(), v[0].pop.len(), v[0].errors), (1, 0, 0));
        assert_eq!((v[1].pop.len(), v[1].errors), (1, 1));
        assert_eq!(v[2].pop.len(), 1);
    }

    #[test]
    fn error_kinds_are_bounded() {
        let mut kinds = BTreeMap::new();
        for i in 0..20 {
            count_kind(&mut kinds, format!("kind {i}"));
        }
        count_kind(&mut kinds, "kind 0".into());
        assert_eq!(kinds.len(), MAX_ERROR_KINDS + 1);
        assert_eq!(kinds["kind 0"], 2);
        assert_eq!(kinds["other"], 20 - MAX_ERROR_KINDS as u64);
    }
}
