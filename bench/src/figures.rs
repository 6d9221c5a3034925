//! One benchmark run's figures in one JSON shape, the report written from
//! it (docs/benchmarks.md and its SVG charts), and the comparison of two
//! runs that flags a figure that got worse by more than its spread.

use crate::method::{Machine, Ratio, Rounds};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Run {
    pub machine: Machine,
    pub quick: bool,
    pub benchmarks: Vec<Bench>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Bench {
    /// `svc-bench`, ...
    pub name: String,
    /// How to run it alone.
    pub command: String,
    pub figures: Vec<Figure>,
    #[serde(default)]
    pub charts: Vec<Chart>,
    /// Sluice-only figures and remarks, printed under the table: what has
    /// no baseline to be a ratio of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Figure {
    /// Stable across runs: what comparisons match on.
    pub id: String,
    pub title: String,
    pub unit: String,
    /// For the measured values (a rate: true; a latency: false). The ratio
    /// is Sluice ÷ baseline, so it is better higher when this is true.
    pub higher_is_better: bool,
    pub baseline_label: String,
    /// Medians.
    pub baseline: f64,
    pub sluice: f64,
    /// With its interval, when the two sides were interleaved.
    pub ratio: Option<Ratio>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<Rounds>,
    /// Computed, not timed (a Maglev table's balance): the same inputs give
    /// the same value, so it has no spread and any change is real.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Chart {
    /// File name without `.svg`.
    pub id: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    #[serde(default)]
    pub log_x: bool,
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// What a figure is, before its values: the fields every constructor
/// shares.
#[derive(Debug, Clone)]
pub struct Name {
    pub id: String,
    pub title: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub baseline_label: String,
}

impl Name {
    pub fn new(
        id: impl Into<String>,
        title: impl Into<String>,
        unit: impl Into<String>,
        higher_is_better: bool,
        baseline_label: impl Into<String>,
    ) -> Self {
        Name {
            id: id.into(),
            title: title.into(),
            unit: unit.into(),
            higher_is_better,
            baseline_label: baseline_label.into(),
        }
    }

    /// Baseline and Sluice measured in alternating rounds: medians, and
    /// the ratio with its interval.
    pub fn interleaved(self, rounds: Rounds) -> Figure {
        Figure {
            baseline: crate::method::median(&rounds.baseline),
            sluice: crate::method::median(&rounds.sluice),
            ratio: Some(crate::method::ratio(&rounds)),
            rounds: Some(rounds),
            ..self.bare()
        }
    }

    /// Each side measured once (or summarised elsewhere): no interval.
    pub fn once(self, baseline: f64, sluice: f64) -> Figure {
        Figure {
            baseline,
            sluice,
            ..self.bare()
        }
    }

    /// Computed, not timed: no noise, any change is real.
    pub fn exact(self, baseline: f64, sluice: f64) -> Figure {
        Figure {
            baseline,
            sluice,
            exact: true,
            ..self.bare()
        }
    }

    fn bare(self) -> Figure {
        Figure {
            id: self.id,
            title: self.title,
            unit: self.unit,
            higher_is_better: self.higher_is_better,
            baseline_label: self.baseline_label,
            baseline: f64::NAN,
            sluice: f64::NAN,
            ratio: None,
            rounds: None,
            exact: false,
        }
    }
}

impl Figure {
    /// The ratio as text: interleaved, with its interval and verdict;
    /// otherwise the plain quotient, marked as exact or as having no
    /// spread.
    pub fn ratio_text(&self) -> String {
        match &self.ratio {
            Some(r) => r.show(),
            None if self.exact => format!(
                "{:.3}× (exact: computed, no noise)",
                self.sluice / self.baseline
            ),
            None => format!(
                "{:.3}× (one measurement, no spread)",
                self.sluice / self.baseline
            ),
        }
    }
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a >= 1000.0 {
        // Thousands separated: 12,345.
        let s = format!("{:.0}", x);
        let (sign, digits) = s.split_at(usize::from(s.starts_with('-')));
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// docs/benchmarks.md from a run; charts are linked as `<chart_dir>/<id>.svg`.
pub fn markdown(run: &Run, chart_dir: &str) -> String {
    let m = &run.machine;
    let mut s = String::new();
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Measured {} on {} ({} CPUs), Linux {}; 1-minute load {:.2} before, {:.2} after{}. \
         Written by `bench/run all{}` (docs/benchmarks.md and `bench/results/latest.json`).\n",
        m.date,
        if m.cpu.is_empty() {
            "an unnamed CPU"
        } else {
            &m.cpu
        },
        m.cpus,
        m.kernel,
        m.load_before,
        m.load_after,
        if run.quick {
            " (quick run: short, wide intervals expected)"
        } else {
            ""
        },
        if run.quick { " --quick" } else { "" },
    );
    let _ = writeln!(
        s,
        "Each ratio is Sluice ÷ baseline: the median of the per-round ratios of \
         many short rounds in which the two alternate (warm-up rounds discarded), \
         with a bootstrap 95 % interval. An interval wider than {:.0} % of its ratio is \
         **inconclusive**: the machine was too noisy to tell a 5 % change from noise. \
         A figure measured once has no interval and says so.\n",
        crate::method::MAX_SPREAD * 100.0
    );
    for b in &run.benchmarks {
        let _ = writeln!(s, "## {}\n\n`{}`\n", b.name, b.command);
        let _ = writeln!(s, "| figure | baseline | Sluice | ratio [95 % interval] |");
        let _ = writeln!(s, "|---|---|---|---|");
        for f in &b.figures {
            let _ = writeln!(
                s,
                "| {} ({}, {} is better) | {} {} | {} | {} |",
                f.title,
                f.unit,
                if f.higher_is_better {
                    "higher"
                } else {
                    "lower"
                },
                f.baseline_label,
                num(f.baseline),
                num(f.sluice),
                f.ratio_text()
            );
        }
        let _ = writeln!(s);
        for n in &b.notes {
            let _ = writeln!(s, "- {n}");
        }
        if !b.notes.is_empty() {
            let _ = writeln!(s);
        }
        for c in &b.charts {
            let _ = writeln!(s, "![{}]({chart_dir}/{}.svg)\n", c.title, c.id);
        }
    }
    s
}

/// Draws `c` as an SVG line chart at `path`.
pub fn svg(c: &Chart, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let pts = || c.lines.iter().flat_map(|l| l.points.iter().copied());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    for (x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return Err(format!("chart {} has no points", c.id));
    }
    if x0 == x1 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut b = ChartBuilder::on(&root);
    b.caption(&c.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(&c.x_label)
                .y_desc(&c.y_label)
                .draw()
                .map_err(|e| err(&e))?;
            for (i, l) in c.lines.iter().enumerate() {
                let color = colors[i % colors.len()];
                chart
                    .draw_series(LineSeries::new(
                        l.points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(|e| err(&e))?
                    .label(&l.label)
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(l.points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(|e| err(&e))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    if c.log_x && x0 > 0.0 {
        draw!(b
            .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0f64..y1)
            .map_err(|e| err(&e))?);
    } else {
        draw!(b
            .build_cartesian_2d(x0..x1, 0f64..y1)
            .map_err(|e| err(&e))?);
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// A figure that got worse between two runs by more than its spread.
#[derive(Debug, Clone, PartialEq)]
pub struct Regression {
    pub id: String,
    pub before: Ratio,
    pub after: Ratio,
}

/// What comparing two runs found.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Worse, and the two intervals do not overlap.
    pub regressions: Vec<Regression>,
    /// Better, the intervals not overlapping.
    pub improvements: Vec<String>,
    /// In both runs but not judged: no interval on one side, or one side
    /// inconclusive.
    pub unjudged: Vec<String>,
    /// In one run only.
    pub unmatched: Vec<String>,
}

/// Compares every figure of `after` with the same figure of `before`. A
/// figure regressed when its ratio moved the worse way and the two 95 %
/// intervals are disjoint (a move within the measured spread is noise).
pub fn compare(before: &Run, after: &Run) -> Comparison {
    let index = |r: &Run| -> std::collections::BTreeMap<String, Figure> {
        r.benchmarks
            .iter()
            .flat_map(|b| b.figures.iter().cloned())
            .map(|f| (f.id.clone(), f))
            .collect()
    };
    let (old, new) = (index(before), index(after));
    let mut c = Comparison::default();
    for (id, f) in &new {
        let Some(o) = old.get(id) else {
            c.unmatched.push(id.clone());
            continue;
        };
        if o.exact && f.exact {
            // No noise: any move the worse way beyond rounding is real.
            let (a, b) = (o.sluice / o.baseline, f.sluice / f.baseline);
            let moved = (b - a) / a.abs().max(f64::MIN_POSITIVE);
            // Positive when the figure got better, whichever way that is.
            let gain = if f.higher_is_better { moved } else { -moved };
            if gain < -1e-9 {
                c.regressions.push(Regression {
                    id: id.clone(),
                    before: Ratio::exact(a),
                    after: Ratio::exact(b),
                });
            } else if gain > 1e-9 {
                c.improvements.push(id.clone());
            }
            continue;
        }
        let (Some(a), Some(b)) = (o.ratio, f.ratio) else {
            c.unjudged.push(id.clone());
            continue;
        };
        if !a.conclusive() || !b.conclusive() {
            c.unjudged.push(id.clone());
            continue;
        }
        let (worse, better) = if f.higher_is_better {
            (b.hi < a.lo, b.lo > a.hi)
        } else {
            (b.lo > a.hi, b.hi < a.lo)
        };
        if worse {
            c.regressions.push(Regression {
                id: id.clone(),
                before: a,
                after: b,
            });
        } else if better {
            c.improvements.push(id.clone());
        }
    }
    c.unmatched
        .extend(old.keys().filter(|k| !new.contains_key(*k)).cloned());
    c
}

/// Writes the report for `run` into `docs` (benchmarks.md, and the charts
/// under `docs/bench/`). Returns the files written.
pub fn write_report(run: &Run, docs: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let charts = docs.join("bench");
    std::fs::create_dir_all(&charts).map_err(|e| format!("{}: {e}", charts.display()))?;
    let mut out = Vec::new();
    for c in run.benchmarks.iter().flat_map(|b| &b.charts) {
        let p = charts.join(format!("{}.svg", c.id));
        svg(c, &p)?;
        out.push(p);
    }
    let md = docs.join("benchmarks.md");
    std::fs::write(&md, markdown(run, "bench")).map_err(|e| format!("{}: {e}", md.display()))?;
    out.push(md);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(name: &str) -> Run {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    }

    #[test]
    fn the_report_has_a_table_per_benchmark_and_its_charts() {
        let run = recorded("run-before.json");
        let dir = tempfile::tempdir().unwrap();
        let files = write_report(&run, dir.path()).unwrap();
        let md = std::fs::read_to_string(dir.path().join("benchmarks.md")).unwrap();
        for b in &run.benchmarks {
            assert!(md.contains(&format!("## {}", b.name)), "{md}");
            for f in &b.figures {
                assert!(md.contains(&f.title), "{md}");
            }
        }
        assert!(md.contains("Linux 6.18"), "machine and kernel: {md}");
        // A too-wide interval is called inconclusive in the table.
        assert!(md.contains("inconclusive"), "{md}");
        let svgs: Vec<_> = files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "svg"))
            .collect();
        assert_eq!(svgs.len(), 1);
        let svg = std::fs::read_to_string(svgs[0]).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.contains("Sluice") && svg.contains("iptables"), "legend");
        assert!(md.contains("(bench/connect-rate.svg)"));
    }

    #[test]
    fn a_regression_beyond_the_spread_is_flagged_and_noise_is_not() {
        let before = recorded("run-before.json");
        let after = recorded("run-after.json");
        let c = compare(&before, &after);
        let ids: Vec<&str> = c.regressions.iter().map(|r| r.id.as_str()).collect();
        // 1,000 services: 0.99 [0.98, 1.00] → 0.90 [0.89, 0.91].
        assert_eq!(ids, ["svc.connect.1000"], "{c:?}");
        // 1 service moved within its interval: neither.
        assert!(!c.improvements.contains(&"svc.connect.1".to_string()));
        // The noisy one is never judged.
        assert!(
            c.unjudged.contains(&"svc.connect.10000".to_string()),
            "{c:?}"
        );
        assert!(compare(&before, &before).regressions.is_empty());
    }

    /// A computed figure has no spread: any move the worse way is a
    /// regression, no move is neither, and the table calls it exact.
    #[test]
    fn an_exact_figure_is_judged_without_a_spread() {
        let run = |moved: f64| Run {
            benchmarks: vec![Bench {
                name: "maglev-bench".into(),
                command: "bench/run maglev-bench".into(),
                figures: vec![Name::new(
                    "maglev.disruption.100",
                    "slots moved when 1 of 100 leaves",
                    "share of the table",
                    false,
                    "ideal",
                )
                .exact(0.01, moved)],
                charts: Vec::new(),
                notes: vec!["a remark with no baseline".into()],
            }],
            ..Run::default()
        };
        let c = compare(&run(0.0105), &run(0.0110));
        assert_eq!(c.regressions.len(), 1, "{c:?}");
        assert!(compare(&run(0.0110), &run(0.0105)).improvements.len() == 1);
        let same = compare(&run(0.0105), &run(0.0105));
        assert!(
            same.regressions.is_empty() && same.improvements.is_empty() && same.unjudged.is_empty()
        );
        let md = markdown(&run(0.0105), "bench");
        assert!(md.contains("exact: computed"), "{md}");
        assert!(md.contains("- a remark with no baseline"), "{md}");
        // And it survives the JSON a later run is compared with.
        let back: Run =
            serde_json::from_str(&serde_json::to_string(&run(0.0105)).unwrap()).unwrap();
        assert!(back.benchmarks[0].figures[0].exact);
    }
}
