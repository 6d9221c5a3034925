//! Compiles every `bpf/*.c` into `$OUT_DIR/<name>.o` with clang-19 and
//! libbpf's headers, as aya's own examples do.

use std::path::Path;
use std::process::Command;

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let clang = std::env::var("SLUICE_CLANG").unwrap_or_else(|_| "clang-19".into());
    println!("cargo:rerun-if-env-changed=SLUICE_CLANG");
    for dir in ["bpf", "bpf/include"] {
        println!("cargo:rerun-if-changed={dir}");
        for e in std::fs::read_dir(dir).expect("bpf sources") {
            let p = e.expect("dir entry").path();
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    for e in std::fs::read_dir("bpf").expect("bpf/") {
        let src = e.expect("dir entry").path();
        if src.extension().and_then(|x| x.to_str()) != Some("c") {
            continue;
        }
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let obj = Path::new(&out).join(format!("{stem}.o"));
        let status = Command::new(&clang)
            .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
            // v3: 32-bit sub-registers and the atomic instructions (the
            // affinity word's compare-and-swap; Linux 5.12).
            .arg("-mcpu=v3")
            .args(["-I", "bpf/include", "-I/usr/include/x86_64-linux-gnu"])
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {clang} to build {}: {e}; install clang-19 and libbpf-dev \
                     (.ci/setup does) or set SLUICE_CLANG",
                    src.display()
                )
            });
        assert!(status.success(), "{clang} failed on {}", src.display());
    }
}
