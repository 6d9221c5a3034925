//! The figures, as a table or as JSON.

use crate::stats::{round, Summary};
use serde_json::{json, Value};

/// ADD and DEL must take at most this share of the reference's median.
pub const MAX_RATIO: f64 = 0.5;
/// What to aim for.
pub const AIM_RATIO: f64 = 0.25;

#[derive(Debug)]
pub struct Latency {
    pub sluice: Summary,
    pub reference: Summary,
}

impl Latency {
    pub fn ratio(&self) -> f64 {
        self.sluice.median / self.reference.median
    }
}

#[derive(Debug)]
pub struct Parallel {
    pub count: usize,
    /// Labels in the order the batches ran.
    pub order: Vec<&'static str>,
    pub sluice_ms: f64,
    pub reference_ms: f64,
}

#[derive(Debug)]
pub struct Report {
    pub rounds: usize,
    pub sluice: &'static str,
    pub reference: &'static str,
    pub add: Latency,
    pub del: Latency,
    pub parallel: Parallel,
}

fn verdict(ratio: f64) -> String {
    let pass = if ratio <= MAX_RATIO { "PASS" } else { "FAIL" };
    let aim = if ratio <= AIM_RATIO { "met" } else { "missed" };
    format!("{pass} (aim {aim})")
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = format!(
            "CNI ADD/DEL latency, {} interleaved rounds (median / p90 / min, ms)\n",
            self.rounds
        );
        out += &format!(
            "{:<8}{:<26}{:<26}{}\n",
            "", self.sluice, self.reference, "ratio (median)"
        );
        for (name, l) in [("ADD", &self.add), ("DEL", &self.del)] {
            out += &format!(
                "{name:<8}{:<26}{:<26}{:.2}\n",
                l.sluice.cell(),
                l.reference.cell(),
                l.ratio()
            );
        }
        let p = &self.parallel;
        out += &format!(
            "{} parallel ADDs (wall, ms; {} ran first): {} {:.1}, {} {:.1}, ratio {:.2}\n",
            p.count,
            p.order[0],
            self.sluice,
            p.sluice_ms,
            self.reference,
            p.reference_ms,
            p.sluice_ms / p.reference_ms
        );
        for (name, l) in [("ADD", &self.add), ("DEL", &self.del)] {
            out += &format!(
                "target: {name} ratio <= {MAX_RATIO:.2} (aim {AIM_RATIO:.2}): {:.2} -> {}\n",
                l.ratio(),
                verdict(l.ratio())
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
                "max_ratio": MAX_RATIO,
                "aim_ratio": AIM_RATIO,
                "pass": l.ratio() <= MAX_RATIO,
                "aim_met": l.ratio() <= AIM_RATIO,
            })
        };
        let p = &self.parallel;
        json!({
            "unit": "ms",
            "rounds": self.rounds,
            "sluice": self.sluice,
            "reference": self.reference,
            "add": latency(&self.add),
            "del": latency(&self.del),
            "parallel_add": {
                "count": p.count,
                "order": p.order,
                "sluice_wall": round(p.sluice_ms, 3),
                "reference_wall": round(p.reference_ms, 3),
                "ratio": round(p.sluice_ms / p.reference_ms, 4),
            },
        })
    }
}
