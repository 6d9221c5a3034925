//! The figures, as a table or as JSON.

use crate::stats::{round, Summary};
use serde_json::{json, Value};

/// ADD and DEL must take at most this share of the reference's median
/// and p99 (the pod-edge issue's target).
pub const MAX_RATIO: f64 = 0.25;
/// ADD's median may grow by at most this much from the fewest to the most
/// pods already on the node.
pub const MAX_GROWTH: f64 = 1.10;

#[derive(Debug)]
pub struct Latency {
    pub sluice: Summary,
    pub reference: Summary,
}

impl Latency {
    pub fn ratio(&self) -> f64 {
        self.sluice.median / self.reference.median
    }

    pub fn ratio_p99(&self) -> f64 {
        self.sluice.p99 / self.reference.p99
    }
}

/// ADD's cost with more and more pods already on the node, each level
/// against a second node that keeps the fewest.
#[derive(Debug)]
pub struct Scale {
    /// The pods the second node keeps.
    pub against: usize,
    /// In rising order of pods.
    pub levels: Vec<Level>,
}

/// One level: sluice's ADD on the node with `pods` of its pods and on the
/// second node, round by round (`rounds.baseline` the second node's).
#[derive(Debug)]
pub struct Level {
    pub pods: usize,
    pub big: Summary,
    pub small: Summary,
    pub rounds: crate::method::Rounds,
}

impl Level {
    pub fn ratio(&self) -> crate::method::Ratio {
        crate::method::ratio(&self.rounds)
    }
}

impl Scale {
    /// The largest per-level ratio (ADD with that level's pods over ADD on
    /// the second node, median of the rounds' ratios).
    pub fn growth(&self) -> f64 {
        self.levels
            .iter()
            .map(|l| l.ratio().median)
            .fold(f64::MIN, f64::max)
    }
}

#[derive(Debug)]
pub struct Parallel {
    pub count: usize,
    /// Wall time (ms) of each batch; round `i` ran the reference first when
    /// `i` is even.
    pub rounds: crate::method::Rounds,
}

impl Parallel {
    pub fn reference_ms(&self) -> f64 {
        crate::method::median(&self.rounds.baseline)
    }
    pub fn sluice_ms(&self) -> f64 {
        crate::method::median(&self.rounds.sluice)
    }
}

#[derive(Debug)]
pub struct Report {
    pub rounds: usize,
    pub residents: usize,
    pub sluice: &'static str,
    pub reference: &'static str,
    pub add: Latency,
    pub del: Latency,
    pub parallel: Parallel,
    pub scale: Option<Scale>,
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = format!(
            "CNI ADD/DEL latency, {} interleaved rounds, sluiced running, {} pods of each plugin \
             already on the node (median / p90 / p99 / min, ms)\n",
            self.rounds, self.residents
        );
        out += &format!(
            "{:<8}{:<32}{:<32}{}\n",
            "", self.sluice, self.reference, "ratio (median, p99)"
        );
        for (name, l) in [("ADD", &self.add), ("DEL", &self.del)] {
            out += &format!(
                "{name:<8}{:<32}{:<32}{:.2}, {:.2}\n",
                l.sluice.cell(),
                l.reference.cell(),
                l.ratio(),
                l.ratio_p99()
            );
        }
        let p = &self.parallel;
        out += &format!(
            "{} parallel ADDs (wall, ms, median of {} alternating rounds): {} {:.1}, {} {:.1}, ratio {}\n",
            p.count,
            p.rounds.sluice.len(),
            self.sluice,
            p.sluice_ms(),
            self.reference,
            p.reference_ms(),
            crate::method::ratio(&p.rounds).show()
        );
        if let Some(sc) = &self.scale {
            out += &format!(
                "sluice ADD with pods already on the node, round by round against a second node \
                 with {} (median / p90 / p99 / min, ms):\n",
                sc.against
            );
            for l in &sc.levels {
                out += &format!(
                    "  {:>5} pods  {:<32}second node {:<32}ratio {}\n",
                    l.pods,
                    l.big.cell(),
                    l.small.cell(),
                    l.ratio().show()
                );
            }
        }
        for (name, l) in [("ADD", &self.add), ("DEL", &self.del)] {
            let ok = l.ratio() <= MAX_RATIO && l.ratio_p99() <= MAX_RATIO;
            out += &format!(
                "target: {name} median and p99 <= {MAX_RATIO:.2} of the reference: {:.2}, {:.2} -> {}\n",
                l.ratio(),
                l.ratio_p99(),
                verdict(ok)
            );
        }
        if let Some(sc) = &self.scale {
            out += &format!(
                "target: ADD median flat within {:.0}% from {} to {} pods: {:.2}x -> {}\n",
                (MAX_GROWTH - 1.0) * 100.0,
                sc.against,
                sc.levels.last().map_or(0, |l| l.pods),
                sc.growth(),
                verdict(sc.growth() <= MAX_GROWTH)
            );
        }
        out
    }

    pub fn json(&self) -> Value {
        let latency = |l: &Latency| {
            json!({
                "sluice": l.sluice.json(),
                "reference": l.reference.json(),
                "ratio_median": round(l.ratio(), 4),
                "ratio_p99": round(l.ratio_p99(), 4),
                "max_ratio": MAX_RATIO,
                "pass": l.ratio() <= MAX_RATIO && l.ratio_p99() <= MAX_RATIO,
            })
        };
        let p = &self.parallel;
        json!({
            "unit": "ms",
            "rounds": self.rounds,
            "residents": self.residents,
            "scale": self.scale.as_ref().map(|sc| json!({
                "against": sc.against,
                "levels": sc.levels.iter().map(|l| {
                    let r = l.ratio();
                    json!({
                        "pods": l.pods,
                        "add": l.big.json(),
                        "second_node_add": l.small.json(),
                        "ratio": round(r.median, 4),
                        "ratio_lo": round(r.lo, 4),
                        "ratio_hi": round(r.hi, 4),
                    })
                }).collect::<Vec<_>>(),
                "growth": round(sc.growth(), 4),
                "max_growth": MAX_GROWTH,
                "pass": sc.growth() <= MAX_GROWTH,
            })),
            "sluice": self.sluice,
            "reference": self.reference,
            "add": latency(&self.add),
            "del": latency(&self.del),
            "parallel_add": {
                "count": p.count,
                "rounds": p.rounds.sluice.len(),
                "sluice_wall": round(p.sluice_ms(), 3),
                "reference_wall": round(p.reference_ms(), 3),
                "ratio": round(p.sluice_ms() / p.reference_ms(), 4),
            },
        })
    }
}

impl Report {
    /// The figures in bench-report's shape: ADD and DEL against the
    /// reference round by round (interleaved), the parallel ADDs and the
    /// scale levels (each measured once), and two charts.
    pub fn shared(&self) -> crate::figures::Bench {
        use crate::figures::{Bench, Chart, Line, Name};
        use crate::method::Rounds;
        let mut figures = Vec::new();
        for (cmd, l) in [("ADD", &self.add), ("DEL", &self.del)] {
            let rounds = Rounds {
                baseline: l.reference.samples.clone(),
                sluice: l.sluice.samples.clone(),
            };
            figures.push(
                Name::new(
                    format!("cni.{}", cmd.to_lowercase()),
                    format!(
                        "{cmd} latency, exec'd like a runtime, {} pods of each on the node",
                        self.residents
                    ),
                    "ms",
                    false,
                    self.reference,
                )
                .interleaved(rounds),
            );
        }
        figures.push(
            Name::new(
                format!("cni.parallel_add.{}", self.parallel.count),
                format!("{} parallel ADDs, wall time", self.parallel.count),
                "ms",
                false,
                self.reference,
            )
            .interleaved(self.parallel.rounds.clone()),
        );
        let mut charts = Vec::new();
        // Sorted samples: each line is the latency distribution.
        let dist = |label: &str, s: &Summary| {
            let mut v = s.samples.clone();
            v.sort_by(f64::total_cmp);
            let n = v.len().max(1) as f64;
            Line {
                label: label.into(),
                points: v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| ((i as f64 + 0.5) * 100.0 / n, *x))
                    .collect(),
            }
        };
        charts.push(Chart {
            id: "cni-add-latency".into(),
            title: "ADD latency distribution".into(),
            x_label: "percentile".into(),
            y_label: "ms".into(),
            log_x: false,
            lines: vec![
                dist(self.sluice, &self.add.sluice),
                dist(self.reference, &self.add.reference),
            ],
        });
        if let Some(sc) = &self.scale {
            for l in &sc.levels {
                figures.push(
                    Name::new(
                        format!("cni.add_at.{}", l.pods),
                        format!(
                            "sluice ADD with {} pods on the node, against a second node with {} \
                             (one kernel), {} alternating rounds",
                            l.pods,
                            sc.against,
                            l.rounds.sluice.len()
                        ),
                        "ms",
                        false,
                        format!("{} pods", sc.against),
                    )
                    .interleaved(l.rounds.clone()),
                );
            }
            let line = |label: String, pick: fn(&Level) -> &Summary| Line {
                label,
                points: sc
                    .levels
                    .iter()
                    .map(|l| (l.pods as f64, pick(l).median))
                    .collect(),
            };
            charts.push(Chart {
                id: "cni-add-by-pods".into(),
                title: "sluice ADD median by pods already on the node".into(),
                x_label: "pods on the node".into(),
                y_label: "ms".into(),
                log_x: true,
                lines: vec![
                    line(self.sluice.into(), |l| &l.big),
                    line(
                        format!("second node, {} pods, same rounds", sc.against),
                        |l| &l.small,
                    ),
                ],
            });
        }
        Bench {
            name: "cni-bench".into(),
            command: "bench/run cni-bench".into(),
            figures,
            charts,
            notes: Vec::new(),
        }
    }
}
