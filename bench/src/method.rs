//! The method every benchmark shares (docs/benchmarks.md): the baseline and
//! Sluice measured in many short alternating rounds (which goes first
//! alternates too), warm-up rounds discarded, and for each figure the
//! median of the per-round ratios with a bootstrap 95 % interval. A ratio
//! whose interval is wider than [`MAX_SPREAD`] of it is called
//! inconclusive: the machine was too noisy to say.

use serde::{Deserialize, Serialize};

/// An interval wider than this share of its ratio cannot tell a 5 %
/// change from noise.
pub const MAX_SPREAD: f64 = 0.10;

/// Samples of the two sides, round by round (`baseline[i]` and `sluice[i]`
/// were taken back to back).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Rounds {
    pub baseline: Vec<f64>,
    pub sluice: Vec<f64>,
}

/// Runs `warmup + rounds` rounds of one `baseline()` and one `sluice()`
/// sample each, alternating which goes first; keeps the last `rounds`.
pub fn interleave(
    warmup: usize,
    rounds: usize,
    mut baseline: impl FnMut() -> f64,
    mut sluice: impl FnMut() -> f64,
) -> Rounds {
    let mut r = Rounds::default();
    for i in 0..warmup + rounds {
        let (b, s) = if i % 2 == 0 {
            let b = baseline();
            (b, sluice())
        } else {
            let s = sluice();
            (baseline(), s)
        };
        if i >= warmup {
            r.baseline.push(b);
            r.sluice.push(s);
        }
    }
    r
}

/// A ratio (Sluice ÷ baseline) with its bootstrap 95 % interval.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Ratio {
    pub median: f64,
    pub lo: f64,
    pub hi: f64,
    pub rounds: usize,
}

impl Ratio {
    /// A computed ratio: no interval around it.
    pub fn exact(x: f64) -> Self {
        Ratio {
            median: x,
            lo: x,
            hi: x,
            rounds: 0,
        }
    }

    /// Whether the interval is narrow enough to conclude anything.
    pub fn conclusive(&self) -> bool {
        self.rounds >= 5 && (self.hi - self.lo) <= MAX_SPREAD * self.median.abs()
    }

    /// `0.98× [0.96, 1.01]`, or with "inconclusive" appended.
    pub fn show(&self) -> String {
        let s = format!("{:.3}× [{:.3}, {:.3}]", self.median, self.lo, self.hi);
        if self.conclusive() {
            s
        } else {
            format!("{s} inconclusive")
        }
    }
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// The median of the per-round ratios and its bootstrap 95 % interval
/// (2,000 resamples of the rounds, a fixed seed: the same rounds give the
/// same interval).
pub fn ratio(r: &Rounds) -> Ratio {
    let ratios: Vec<f64> = r
        .sluice
        .iter()
        .zip(&r.baseline)
        .filter(|(_, b)| **b != 0.0)
        .map(|(s, b)| s / b)
        .collect();
    let n = ratios.len();
    if n == 0 {
        return Ratio {
            median: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
            rounds: 0,
        };
    }
    let mut rng = fastrand::Rng::with_seed(0x5_1ce);
    let mut meds: Vec<f64> = (0..2000)
        .map(|_| {
            let sample: Vec<f64> = (0..n).map(|_| ratios[rng.usize(..n)]).collect();
            median(&sample)
        })
        .collect();
    meds.sort_by(f64::total_cmp);
    Ratio {
        median: median(&ratios),
        lo: meds[(meds.len() as f64 * 0.025) as usize],
        hi: meds[((meds.len() as f64 * 0.975) as usize).min(meds.len() - 1)],
        rounds: n,
    }
}

/// The machine a run was measured on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    /// 1-minute load average before and after the run.
    pub load_before: f64,
    pub load_after: f64,
    /// UTC, RFC 3339.
    pub date: String,
}

pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

impl Machine {
    /// The machine now (the load after is filled in by [`Machine::finish`]).
    pub fn now() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Machine {
            kernel,
            cpu,
            cpus,
            load_before: load_average(),
            load_after: f64::NAN,
            date,
        }
    }

    pub fn finish(&mut self) {
        self.load_after = load_average();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleave_alternates_and_drops_the_warmup() {
        let order = std::cell::RefCell::new(Vec::new());
        let r = interleave(
            2,
            3,
            || {
                order.borrow_mut().push('b');
                1.0
            },
            || {
                order.borrow_mut().push('s');
                2.0
            },
        );
        assert_eq!(r.baseline.len(), 3);
        assert_eq!(order.into_inner().iter().collect::<String>(), "bssbbssbbs");
    }

    #[test]
    fn a_steady_ratio_is_conclusive_a_noisy_one_is_not() {
        let steady = Rounds {
            baseline: vec![100.0; 20],
            sluice: (0..20).map(|i| 98.0 + (i % 3) as f64 * 0.5).collect(),
        };
        let r = ratio(&steady);
        assert!((r.median - 0.985).abs() < 0.01, "{r:?}");
        assert!(r.lo <= r.median && r.median <= r.hi);
        assert!(r.conclusive(), "{r:?}");
        let noisy = Rounds {
            baseline: vec![100.0; 20],
            sluice: (0..20)
                .map(|i| if i % 2 == 0 { 70.0 } else { 170.0 })
                .collect(),
        };
        let r = ratio(&noisy);
        assert!(!r.conclusive(), "{r:?}");
        assert!(r.show().ends_with("inconclusive"));
        assert!(!ratio(&Rounds::default()).conclusive());
    }
}
