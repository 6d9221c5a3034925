//! Summaries of latency samples, in milliseconds.

use serde_json::{json, Value};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Summary {
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    /// In the order they were taken.
    pub samples: Vec<f64>,
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `x` rounded to `digits` decimals, for printing as JSON.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Self {
        assert!(!samples.is_empty(), "no samples");
        let samples: Vec<f64> = samples.iter().copied().map(ms).collect();
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        // Nearest rank: the smallest sample with at least 90% at or below it.
        let p90 = sorted[(n * 9).div_ceil(10) - 1];
        let p99 = sorted[(n * 99).div_ceil(100) - 1];
        Summary {
            median,
            p90,
            p99,
            min: sorted[0],
            samples,
        }
    }

    pub fn cell(&self) -> String {
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2}",
            self.median, self.p90, self.p99, self.min
        )
    }

    pub fn json(&self) -> Value {
        let us = |x: f64| round(x, 3);
        json!({
            "median": us(self.median),
            "p90": us(self.p90),
            "p99": us(self.p99),
            "min": us(self.min),
            "samples": self.samples.iter().copied().map(us).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of_ms(v: &[u64]) -> Summary {
        Summary::of(
            &v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn median_p90_min() {
        let s = of_ms(&[5, 1, 4, 2, 3]);
        assert_eq!((s.median, s.p90, s.min), (3.0, 5.0, 1.0));
        let s = of_ms(&(1..=20).collect::<Vec<_>>());
        assert_eq!((s.median, s.p90, s.min), (10.5, 18.0, 1.0));
        assert_eq!(s.samples[0], 1.0);
    }
}
