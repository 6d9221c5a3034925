//! bench-report: runs the benchmarks that write figures in the shared
//! shape (`figures::Bench`), keeps the run as JSON, writes
//! docs/benchmarks.md with its SVG charts, and compares two runs.
//!
//!   bench-report all [--quick] [--docs DIR] [--results DIR]
//!   bench-report render RUN.json [--docs DIR]
//!   bench-report compare BEFORE.json AFTER.json

#[path = "figures.rs"]
#[allow(dead_code)] // the figure constructors are for the benchmarks
mod figures;
#[path = "method.rs"]
#[allow(dead_code)] // interleave and ratio are for the benchmarks
mod method;

use figures::{Bench, Run};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: bench-report all [--quick] [--docs DIR] [--results DIR]
       bench-report render RUN.json [--docs DIR]
       bench-report compare BEFORE.json AFTER.json

  all      runs every benchmark that writes figures (cni-bench, daemon-bench,
           svc-bench, accel-bench, nodeport-bench, api-bench, maglev-bench), each
           with --figures FILE (and --quick), records the machine, writes the
           run to RESULTS/<date>.json and RESULTS/latest.json (default
           bench/results) and the report to DOCS (default docs)
  render   writes DOCS/benchmarks.md and DOCS/bench/*.svg from a run
  compare  lists every figure whose ratio got worse by more than its 95 %
           interval (exit 1 if any), better, or could not be judged

Runs as root: bench/run all [--quick] builds the release binaries first.";

/// The benchmarks `all` runs, in order, with the arguments of a quick run.
const BENCHES: &[(&str, &[&str])] = &[
    ("cni-bench", &["--quick"]),
    ("daemon-bench", &["--quick"]),
    ("svc-bench", &["--quick"]),
    ("accel-bench", &["--quick"]),
    ("nodeport-bench", &["--quick"]),
    ("api-bench", &["--quick"]),
    ("maglev-bench", &["--quick"]),
];

fn read_run(p: &Path) -> Result<Run, String> {
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
}

fn render(run: &Run, docs: &Path) -> Result<(), String> {
    for f in figures::write_report(run, docs)? {
        println!("wrote {}", f.display());
    }
    Ok(())
}

fn compare(before: &Path, after: &Path) -> Result<bool, String> {
    let (a, b) = (read_run(before)?, read_run(after)?);
    let c = figures::compare(&a, &b);
    for r in &c.regressions {
        println!(
            "REGRESSED  {}: {} → {}",
            r.id,
            r.before.show(),
            r.after.show()
        );
    }
    for id in &c.improvements {
        println!("improved   {id}");
    }
    for id in &c.unjudged {
        println!("unjudged   {id} (no interval, or too wide to conclude)");
    }
    for id in &c.unmatched {
        println!("unmatched  {id} (in one run only)");
    }
    if c.regressions.is_empty() {
        println!("no figure regressed beyond its spread");
    }
    Ok(c.regressions.is_empty())
}

fn all(quick: bool, docs: &Path, results: &Path) -> Result<bool, String> {
    let here = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or("cannot find the benchmarks next to bench-report")?;
    let mut run = Run {
        machine: method::Machine::now(),
        quick,
        benchmarks: Vec::new(),
    };
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut ok = true;
    for (name, quick_args) in BENCHES {
        let out = tmp.path().join(format!("{name}.json"));
        let mut c = Command::new(here.join(name));
        c.arg("--figures").arg(&out);
        if quick {
            c.args(*quick_args);
        }
        eprintln!("bench-report: running {name}");
        let st = c.status().map_err(|e| format!("{name}: {e}"))?;
        if !st.success() {
            eprintln!("bench-report: {name} failed ({st}); its figures are left out");
            ok = false;
            continue;
        }
        let text = std::fs::read_to_string(&out).map_err(|e| format!("{name}: {e}"))?;
        let b: Bench = serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
        run.benchmarks.push(b);
    }
    run.machine.finish();
    std::fs::create_dir_all(results).map_err(|e| format!("{}: {e}", results.display()))?;
    let text = serde_json::to_string_pretty(&run).map_err(|e| e.to_string())?;
    let stamp: String = run
        .machine
        .date
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    for p in [
        results.join(format!("{stamp}.json")),
        results.join("latest.json"),
    ] {
        std::fs::write(&p, &text).map_err(|e| format!("{}: {e}", p.display()))?;
        println!("wrote {}", p.display());
    }
    render(&run, docs)?;
    print!("{}", figures::markdown(&run, "bench"));
    Ok(ok)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str, default: &str| -> PathBuf {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or_else(|| PathBuf::from(default), PathBuf::from)
    };
    let res = match args.first().map(String::as_str) {
        Some("all") => all(
            args.iter().any(|a| a == "--quick"),
            &opt("--docs", "docs"),
            &opt("--results", "bench/results"),
        ),
        Some("render") if args.len() >= 2 => read_run(Path::new(&args[1]))
            .and_then(|r| render(&r, &opt("--docs", "docs")).map(|()| true)),
        Some("compare") if args.len() == 3 => compare(Path::new(&args[1]), Path::new(&args[2])),
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench-report: {e}");
            ExitCode::from(2)
        }
    }
}
