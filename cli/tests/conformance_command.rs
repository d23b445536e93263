//! `adex conformance` on the golden norse files in the repository: one line per case, the
//! summary, and a non-zero exit when a file cannot be read.

use candle_adex::conformance::GoldenFile;
use std::path::PathBuf;
use std::process::Command;

/// The golden files (this package is not published, so the repository's data is always here).
fn golden_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/norse");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 9,
        "golden files in {}: {files:?}",
        dir.display()
    );
    files
}

#[test]
fn the_adex_binary_reports_and_exits_nonzero_on_failure() {
    let bin = env!("CARGO_BIN_EXE_adex");
    let files = golden_files();
    let cases: usize = files
        .iter()
        .map(|f| GoldenFile::open(f).unwrap().cases.len())
        .sum();
    let out = Command::new(bin)
        .arg("conformance")
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap();
    assert!(
        last.ends_with(&format!("{cases} passed, 0 failed, 0 skipped")),
        "{cases} cases: {last}"
    );
    let out = Command::new(bin)
        .args(["conformance", "/nonexistent.safetensors"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
