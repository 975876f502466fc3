//! Latencies kept in a histogram at microsecond resolution (three significant figures), and
//! the figures reported from them: count, throughput, percentiles, errors.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies and errors of one run (or one connection of it).
#[derive(Debug, Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
    errors: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            // Three significant figures is within the range the crate accepts (0 to 5).
            hist: Histogram::new(3).expect("3 significant figures is valid"),
            errors: 0,
        }
    }
}

impl Recorder {
    /// Records one answered request that took `latency`.
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let micros = micros.max(1);
        // `record` grows the histogram as needed; only a failure to grow clamps the value.
        if self.hist.record(micros).is_err() {
            self.hist.saturating_record(micros);
        }
    }

    /// Counts one request whose answer was wrong or never came.
    pub fn error(&mut self) {
        self.errors += 1;
    }

    /// Counts `n` requests whose answers never came.
    pub fn errors(&mut self, n: u64) {
        self.errors += n;
    }

    /// Adds another recorder's latencies and errors to this one.
    pub fn merge(&mut self, other: &Recorder) -> anyhow::Result<()> {
        self.hist
            .add(&other.hist)
            .map_err(|e| anyhow::anyhow!("cannot merge latency histograms: {e:?}"))?;
        self.errors += other.errors;
        Ok(())
    }

    /// How many requests were answered well.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The latency percentiles.
    pub fn latency(&self) -> Latency {
        if self.hist.is_empty() {
            return Latency::default();
        }
        let max = self.hist.max();
        let at = |q: f64| self.hist.value_at_quantile(q).min(max);
        Latency {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max,
            mean: (self.hist.mean() * 10.0).round() / 10.0,
        }
    }

    /// The figures of a run that lasted `elapsed`.
    pub fn load(&self, elapsed: Duration) -> Load {
        let secs = elapsed.as_secs_f64();
        let count = self.count();
        Load {
            count,
            errors: self.errors,
            elapsed_s: round3(secs),
            throughput_rps: if secs > 0.0 {
                (count as f64 / secs).round()
            } else {
                0.0
            },
            latency_us: self.latency(),
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// The slowest.
    pub max: u64,
    /// The mean, to a tenth.
    pub mean: f64,
}

/// The figures of one load run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Load {
    /// Requests answered well.
    pub count: u64,
    /// Requests answered wrongly or never answered.
    pub errors: u64,
    /// How long the run took, in seconds.
    pub elapsed_s: f64,
    /// Requests answered well per second.
    pub throughput_rps: f64,
    /// Latency of the requests answered well, from the write of their batch to their answer.
    pub latency_us: Latency,
}

/// `x` to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ordered_and_close() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for micros in 1..=1000u64 {
            a.record(Duration::from_micros(micros));
        }
        b.record(Duration::from_millis(50));
        b.error();
        a.merge(&b).expect("merge");
        let load = a.load(Duration::from_secs(2));
        assert_eq!(load.count, 1001);
        assert_eq!(load.errors, 1);
        assert_eq!(load.throughput_rps, 501.0);
        let l = load.latency_us;
        assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
        assert!((499..=502).contains(&l.p50), "{l:?}");
        assert!((988..=992).contains(&l.p99), "{l:?}");
        assert!((49_950..=50_050).contains(&l.max), "{l:?}");
    }

    #[test]
    fn an_empty_run_reports_zeros() {
        let load = Recorder::default().load(Duration::ZERO);
        assert_eq!(load.count, 0);
        assert_eq!(load.throughput_rps, 0.0);
        assert_eq!(load.latency_us, Latency::default());
    }

    #[test]
    fn a_sub_microsecond_latency_counts_as_one() {
        let mut r = Recorder::default();
        r.record(Duration::from_nanos(10));
        assert_eq!(r.latency().max, 1);
    }
}
