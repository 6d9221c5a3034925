//! maglev-bench: the Maglev tables the daemon builds (daemon/src/maglev.rs),
//! at 10, 100 and 1,000 backends in the default table (16,381 slots) and
//! 1,000 in the large one (65,521):
//!
//! - **build time**, against the build at 10 backends, the two alternating
//!   in short rounds (how the cost grows with backends);
//! - **balance**: the fullest backend's slots against its fair share (the
//!   ideal is 1.0);
//! - **disruption**: the share of slots that change backend when one
//!   backend leaves, against the ideal (only the leaver's 1/N).
//!
//! No privileges needed.

#[path = "figures.rs"]
#[allow(dead_code)]
mod figures;
#[path = "method.rs"]
#[allow(dead_code)]
mod method;

use sluice_daemon::maglev::{table, MaglevBackend, DEFAULT_SEED, DEFAULT_TABLE_SIZE};
use std::process::ExitCode;
use std::time::Instant;

const USAGE: &str = "\
usage: maglev-bench [--rounds N] [--quick] [--figures FILE]

  --rounds N      build-time rounds per size (default 30; --quick 8)
  --figures FILE  also write the figures in bench-report's shape to FILE";

const LARGE: u32 = 65_521;

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:8080/TCP", i / 65536, (i / 256) % 256, i % 256))
        .collect()
}

fn build(keys: &[String], size: u32) -> Vec<u32> {
    let b: Vec<MaglevBackend<'_>> = keys
        .iter()
        .map(|k| MaglevBackend { key: k, weight: 1 })
        .collect();
    table(&b, size, DEFAULT_SEED).expect("a valid table")
}

/// Milliseconds to build the table of `keys`.
fn time(keys: &[String], size: u32) -> f64 {
    let t = Instant::now();
    std::hint::black_box(build(keys, size));
    t.elapsed().as_secs_f64() * 1e3
}

fn main() -> ExitCode {
    let mut rounds = 30usize;
    let mut figures_to: Option<std::path::PathBuf> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(0),
            "--quick" => rounds = 8,
            "--figures" => figures_to = it.next().map(Into::into),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("unknown argument {a:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if rounds == 0 {
        eprintln!("--rounds must be at least 1\n{USAGE}");
        return ExitCode::from(2);
    }
    let base = keys(10);
    let mut figs = Vec::new();
    let mut build_line = Vec::new();
    println!("maglev-bench: {rounds} rounds per size, alternating with the 10-backend build");
    println!(
        "{:>9} {:>7} {:>12} {:>26} {:>9} {:>12} {:>12}",
        "backends", "slots", "build ms", "÷ 10 backends [95 %]", "balance", "disruption", "ideal"
    );
    for (n, size) in [
        (10usize, DEFAULT_TABLE_SIZE),
        (100, DEFAULT_TABLE_SIZE),
        (1000, DEFAULT_TABLE_SIZE),
        (1000, LARGE),
    ] {
        let k = keys(n);
        let r = method::interleave(
            2,
            rounds,
            || time(&base, DEFAULT_TABLE_SIZE),
            || time(&k, size),
        );
        let ratio = method::ratio(&r);
        let t = build(&k, size);
        let mut counts = vec![0usize; n];
        for &i in &t {
            counts[i as usize] += 1;
        }
        let fair = size as f64 / n as f64;
        let balance = *counts.iter().max().unwrap() as f64 / fair;
        // One backend (the middle one by key) leaves.
        let gone = n / 2;
        let rest: Vec<String> = k
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != gone)
            .map(|(_, s)| s.clone())
            .collect();
        let after = build(&rest, size);
        let moved = t
            .iter()
            .zip(&after)
            .filter(|(a, b)| k[**a as usize] != rest[**b as usize])
            .count() as f64
            / size as f64;
        let ideal = 1.0 / n as f64;
        let build_ms = method::median(&r.sluice);
        println!(
            "{:>9} {:>7} {:>12.3} {:>26} {:>9.4} {:>12.5} {:>12.5}",
            n,
            size,
            build_ms,
            ratio.show(),
            balance,
            moved,
            ideal
        );
        if size == DEFAULT_TABLE_SIZE {
            build_line.push((n as f64, build_ms));
        }
        let tag = format!("{n}.{size}");
        if n != 10 || size != DEFAULT_TABLE_SIZE {
            figs.push(
                figures::Name::new(
                    format!("maglev.build.{tag}"),
                    format!("Maglev table build, {n} backends in {size} slots, against 10 backends in {DEFAULT_TABLE_SIZE}"),
                    "ms",
                    false,
                    "10 backends",
                )
                .interleaved(r),
            );
        }
        figs.push(
            figures::Name::new(
                format!("maglev.balance.{tag}"),
                format!(
                    "Maglev fullest backend's slots, {n} backends in {size}, against the fair share"
                ),
                "× fair share",
                false,
                "ideal",
            )
            .exact(1.0, balance),
        );
        figs.push(
            figures::Name::new(
                format!("maglev.disruption.{tag}"),
                format!("Maglev slots moved when 1 of {n} backends leaves ({size} slots)"),
                "share of the table",
                false,
                "ideal (the leaver's 1/N)",
            )
            .exact(ideal, moved),
        );
    }
    if let Some(to) = &figures_to {
        let b = figures::Bench {
            name: "maglev-bench".into(),
            command: "bench/run maglev-bench".into(),
            figures: figs,
            charts: vec![figures::Chart {
                id: "maglev-build".into(),
                title: format!("Maglev table build time, {DEFAULT_TABLE_SIZE} slots"),
                x_label: "backends".into(),
                y_label: "ms (median)".into(),
                log_x: true,
                lines: vec![figures::Line {
                    label: "Sluice".into(),
                    points: build_line,
                }],
            }],
            notes: Vec::new(),
        };
        if let Err(e) = std::fs::write(to, serde_json::to_string_pretty(&b).unwrap()) {
            eprintln!("maglev-bench: writing {}: {e}", to.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
