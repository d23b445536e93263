//! Two jobs:
//! - `cfg(golden_data)` when the norse golden files are present (the repository has them, the
//!   published package does not): the tests that read them are ignored without them.
//! - With the `cuda` feature: compiles `kernels/adex.cu` to PTX (embedded by `src/fused/cuda.rs`)
//!   for the compute capability `CUDA_COMPUTE_CAP` names (candle's convention), else that of the
//!   GPU `nvidia-smi` reports, else `compute_75`, the oldest CUDA 13 targets. The kernels need no
//!   newer: below 8.0 `cuda_bf16.h` converts bf16 in software. `ptxas` then checks the PTX and
//!   reports each kernel's registers and spills as build warnings. Without the feature, or on
//!   docs.rs (`DOCS_RS`), nothing is compiled and plain builds need no CUDA.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The compute capability used when neither `CUDA_COMPUTE_CAP` nor `nvidia-smi` names one.
const OLDEST_CAP: u32 = 75;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=tests/data/norse");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=DOCS_RS");
    println!("cargo::rustc-check-cfg=cfg(golden_data)");
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest"));
    if root.join("tests/data/norse/MANIFEST.md").exists() {
        println!("cargo::rustc-cfg=golden_data");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let ptx = out.join("adex.ptx");
    let docs_rs = std::env::var_os("DOCS_RS").is_some();
    let cap = if docs_rs { OLDEST_CAP } else { compute_cap() };
    println!("cargo:rustc-env=CANDLE_ADEX_CUDA_CAP={cap}");
    if docs_rs {
        // docs.rs has no nvcc; documentation needs only that the PTX constant exists.
        std::fs::write(&ptx, "").expect("write adex.ptx");
        return;
    }
    let kernels = root.join("kernels");
    let nvcc = tool("NVCC", "nvcc");
    run(
        Command::new(&nvcc)
            .arg("--ptx")
            .arg(format!("-arch=compute_{cap}"))
            .args(["-O3", "-std=c++17", "--fmad=false"])
            .arg("-I")
            .arg(&kernels)
            .arg(kernels.join("adex.cu"))
            .arg("-o")
            .arg(&ptx),
        &nvcc,
    );
    let ptxas = nvcc.with_file_name("ptxas");
    let report = run(
        Command::new(&ptxas)
            .arg(format!("-arch=sm_{cap}"))
            .args(["-O3", "-v"])
            .arg(&ptx)
            .arg("-o")
            .arg(out.join(format!("adex.sm_{cap}.cubin"))),
        &ptxas,
    );
    // ptxas -v: "Compiling entry function 'NAME' for 'sm_XX'" then "Used N registers, ..." and
    // "N bytes stack frame, N bytes spill stores, N bytes spill loads".
    let mut name = String::new();
    let mut spill = String::new();
    for line in report.lines() {
        if let Some(rest) = line.split("entry function '").nth(1) {
            name = rest.split('\'').next().unwrap_or("").to_string();
        } else if line.contains("spill stores") {
            spill = line
                .split("info    : ")
                .last()
                .unwrap_or(line)
                .trim()
                .to_string();
        } else if line.contains("Used") && line.contains("registers") {
            let used = line.split("info    : ").last().unwrap_or(line).trim();
            println!("cargo:warning=ptxas sm_{cap} {name}: {used}; {spill}");
        }
    }
    std::fs::write(out.join("ptxas.log"), report).expect("write ptxas.log");
}

/// The CUDA tool `name`: `$ENV`, else `$CUDA_HOME/bin/name`, else `name` on the PATH.
fn tool(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    if let Some(home) = std::env::var_os("CUDA_HOME") {
        let p = Path::new(&home).join("bin").join(name);
        if p.exists() {
            return p;
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!(
        "the `cuda` feature compiles kernels/adex.cu with `{name}`, which was not found (looked at \
         ${env}, $CUDA_HOME/bin and PATH). Install the CUDA toolkit (12 or 13; 13 needs a driver of \
         CUDA 13, 580 or newer), put its bin/ on PATH or set CUDA_HOME, and set CUDA_COMPUTE_CAP to \
         your GPU's compute capability (for example 90 for an H100, 80 for an A100, 75 for a T4), \
         as candle's own CUDA build also asks; or build without the `cuda` feature."
    );
}

/// The compute capability to build for: `CUDA_COMPUTE_CAP` (`90`, `9.0`, `sm_90` or
/// `compute_90`), else the lowest `nvidia-smi` reports, else [`OLDEST_CAP`].
fn compute_cap() -> u32 {
    let parse = |s: &str| -> Option<u32> {
        let s = s.trim();
        let s = s
            .strip_prefix("compute_")
            .or(s.strip_prefix("sm_"))
            .unwrap_or(s);
        s.replace('.', "")
            .parse()
            .ok()
            .filter(|&c| (30..1000).contains(&c))
    };
    if let Ok(v) = std::env::var("CUDA_COMPUTE_CAP") {
        return parse(&v).unwrap_or_else(|| {
            panic!("CUDA_COMPUTE_CAP={v:?} is not a compute capability (write 90, 9.0 or sm_90)")
        });
    }
    Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(parse)
                .min()
        })
        .unwrap_or(OLDEST_CAP)
}

/// Runs `cmd` and returns its stdout and stderr; a failure stops the build with its output.
fn run(cmd: &mut Command, what: &Path) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {e}", what.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        panic!("{} failed:\n{text}", what.display());
    }
    text
}
