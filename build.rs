//! With the `cuda` feature: compiles `kernels/adex.cu` to PTX for `compute_80` (embedded by
//! `src/fused/cuda.rs`) and checks it with `ptxas -arch=sm_90`, reporting each kernel's registers
//! and spills as build warnings. Without the feature it does nothing (plain builds need no CUDA).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let kernels =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest")).join("kernels");
    let nvcc = tool("NVCC", "nvcc");
    let ptx = out.join("adex.ptx");
    run(
        Command::new(&nvcc)
            .args([
                "--ptx",
                "-arch=compute_80",
                "-O3",
                "-std=c++17",
                "--fmad=false",
            ])
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
            .args(["-arch=sm_90", "-O3", "-v"])
            .arg(&ptx)
            .arg("-o")
            .arg(out.join("adex.sm_90.cubin")),
        &ptxas,
    );
    // ptxas -v: "Compiling entry function 'NAME' for 'sm_90'" then "Used N registers, ..." and
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
            println!("cargo:warning=ptxas sm_90 {name}: {used}; {spill}");
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
        "the `cuda` feature compiles kernels/adex.cu with `{name}`, which was not found (looked at ${env}, $CUDA_HOME/bin, PATH). \
         Install a CUDA toolkit (13.0 matches the driver of the lent GPUs), or without a GPU: \
         `bash ../shared/cuda/setup-cuda.sh > target/cuda-env.sh && . target/cuda-env.sh` (pinned CUDA 13.0 from PyPI)."
    );
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
