//! The `adex` command: simulate a population of AdEx neurons, map firing patterns and f-I
//! curves, check conformance with norse, benchmark against the memory roof.
//!
//! ```text
//! adex simulate [options]      run a population, print firing statistics, plot, record
//! adex patterns [options]      the classic firing patterns under a current step
//! adex fi-curve [options]      firing rate against input current
//! adex conformance FILE...     replay norse golden files and report errors per case
//! adex bench [options]         fused kernels vs reference path vs memory roof
//! ```

mod args;
mod config;
mod explore;
mod plot;
mod png;
mod simulate;

use anyhow::Context as _;
use args::{BenchArgs, BenchDevice, Cli, Command, ConformanceArgs, PathChoice};
use candle_adex::bench::{self, Op};
use candle_adex::fused::cpu::{with_isa, Isa};
use candle_adex::{conformance, ops};
use candle_core::{DType, Device};
use clap::{CommandFactory, Parser, ValueEnum};
use std::io::Write;
use std::process::ExitCode;

/// An error in a command's input, found before any work starts: exit code 2, as for clap's own
/// usage errors. Every other error (an `anyhow::Error` of any other kind) is a failure at run
/// time: exit code 1.
#[derive(Debug)]
pub struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A usage error (exit code 2) with this message.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// Lets a closed output pipe end the program quietly, as it ends other command-line tools
/// (`adex bench | head`): Rust ignores SIGPIPE, so `println!` would panic on the write error.
#[cfg(unix)]
fn die_quietly_on_closed_pipe() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13; // the same number on Linux and macOS
    const SIG_DFL: usize = 0;
    // SAFETY: restores the default disposition of one signal before any thread starts; no
    // handler code of ours runs on it.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}

fn main() -> ExitCode {
    #[cfg(unix)]
    die_quietly_on_closed_pipe();
    let cli = Cli::parse();
    if !cli.verbose {
        // candle attaches a backtrace to its errors when RUST_BACKTRACE is set; one line unless
        // asked for (panics keep theirs). Set before any thread starts.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let result = match cli.command {
        None => {
            Cli::command().print_long_help().ok();
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Simulate(a)) => simulate::simulate(a),
        Some(Command::Patterns(a)) => explore::patterns_cmd(a),
        Some(Command::FiCurve(a)) => explore::fi_cmd(a),
        Some(Command::Conformance(a)) => conformance_cmd(a),
        Some(Command::Bench(a)) => bench_cmd(a),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "adex", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    };
    let error = match result {
        Ok(code) => return code,
        Err(e) => e,
    };
    // One line, its causes joined by `: `; with -v, anyhow's report with each cause on a line
    // (and the backtraces that RUST_BACKTRACE asks for).
    let message = if cli.verbose {
        format!("{error:?}")
    } else {
        format!("{error:#}")
    };
    if error.downcast_ref::<Usage>().is_some() {
        eprintln!("error: {message}\n\nFor more information, try '--help'.");
        ExitCode::from(2)
    } else {
        eprintln!("error: {message}");
        ExitCode::from(1)
    }
}

fn conformance_cmd(a: ConformanceArgs) -> anyhow::Result<ExitCode> {
    let path = match a.path {
        PathChoice::Auto => ops::Path::Auto,
        PathChoice::Fused => ops::Path::Fused,
        PathChoice::Reference => ops::Path::Reference,
    };
    ops::with_path(path, || conformance_files(&a.files, a.json))
}

/// `conformance --json`: one case (or one unreadable file).
#[derive(serde::Serialize)]
struct CaseJson<'a> {
    file: String,
    group: Option<&'a str>,
    case: Option<&'a str>,
    /// `pass`, `fail`, `skip` or `unreadable`.
    outcome: &'static str,
    /// Why a case was skipped.
    reason: Option<&'a str>,
    error: Option<&'a str>,
    measures: Vec<MeasureJson<'a>>,
}

#[derive(serde::Serialize)]
struct MeasureJson<'a> {
    name: &'a str,
    value: f64,
    tol: Option<f64>,
    ok: bool,
}

fn print_json(case: &CaseJson) {
    println!(
        "{}",
        serde_json::to_string(case).expect("a report serializes")
    );
}

fn conformance_files(files: &[std::path::PathBuf], json: bool) -> anyhow::Result<ExitCode> {
    let mut all = vec![];
    let mut unreadable = false;
    for file in files {
        match conformance::GoldenFile::open(file) {
            Ok(golden) => {
                for report in golden.run() {
                    if json {
                        let (outcome, reason) = match &report.outcome {
                            conformance::Outcome::Pass => ("pass", None),
                            conformance::Outcome::Fail => ("fail", None),
                            conformance::Outcome::Skip(why) => ("skip", Some(why.as_str())),
                        };
                        print_json(&CaseJson {
                            file: file.display().to_string(),
                            group: Some(&report.group),
                            case: Some(&report.case),
                            outcome,
                            reason,
                            error: report.error.as_deref(),
                            measures: report
                                .measures
                                .iter()
                                .map(|m| MeasureJson {
                                    name: &m.name,
                                    value: m.value,
                                    tol: m.tol,
                                    ok: m.passes(),
                                })
                                .collect(),
                        });
                    } else {
                        println!("{report}");
                    }
                    all.push(report);
                }
            }
            Err(e) => {
                let message = e.to_string();
                if json {
                    print_json(&CaseJson {
                        file: file.display().to_string(),
                        group: None,
                        case: None,
                        outcome: "unreadable",
                        reason: None,
                        error: Some(&message),
                        measures: vec![],
                    });
                }
                eprintln!("adex conformance: {message}");
                unreadable = true;
            }
        }
    }
    let (passed, failed, skipped) = conformance::summarize(&all);
    if !json {
        println!("{passed} passed, {failed} failed, {skipped} skipped");
    }
    Ok(if failed > 0 || unreadable {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn bench_cmd(a: BenchArgs) -> anyhow::Result<ExitCode> {
    let (json, quick, with_reference) = (a.json, a.quick, !a.no_reference);
    let mut shapes = a.shapes.clone();
    let mut dtypes: Vec<DType> = a.dtypes.iter().map(|d| d.dtype()).collect();
    let isa = match a.isa {
        None => Isa::detected(),
        Some(choice) => {
            let value = choice.to_possible_value().expect("every choice is listed");
            let name = value.get_name();
            let available = Isa::available();
            available
                .iter()
                .copied()
                .find(|i| i.name() == name)
                .ok_or_else(|| {
                    let names: Vec<_> = available.iter().map(|i| i.name()).collect();
                    usage(format!("--isa {name}: this CPU has {}", names.join(", ")))
                })?
        }
    };
    if a.device != BenchDevice::Cpu {
        let name = if a.device == BenchDevice::Cuda {
            "cuda"
        } else {
            "metal"
        };
        let mut dev_ops = vec![];
        for op in &a.ops {
            let known = bench::DEVICE_OPS.into_iter().find(|o| o == op);
            dev_ops.push(known.ok_or_else(|| {
                usage(format!(
                    "--op {op} does not run on a GPU (there: {})",
                    bench::DEVICE_OPS.join(", ")
                ))
            })?);
        }
        return bench_device(name, json, quick, with_reference, shapes, dev_ops, dtypes);
    }
    let mut ops_ = vec![];
    for op in &a.ops {
        let known = Op::ALL.into_iter().find(|o| o.name() == op);
        ops_.push(known.ok_or_else(|| {
            usage(format!(
                "--op {op} runs only on a GPU (--device cuda or metal)"
            ))
        })?);
    }
    if shapes.is_empty() {
        shapes = bench::SHAPES[..if quick { 2 } else { 4 }].to_vec();
    }
    if ops_.is_empty() {
        ops_ = Op::ALL.to_vec();
    }
    if dtypes.is_empty() {
        dtypes = vec![DType::F32, DType::BF16, DType::F16];
    }
    // The kernel-level backward runs in f32 (half types convert first).
    let runs = |op: Op, dtype: DType| op != Op::SeqFwdBwd || dtype == DType::F32;
    if !ops_.iter().any(|&op| dtypes.iter().any(|&d| runs(op, d))) {
        return Err(usage(
            "nothing to measure: seq_fwd_bwd runs in f32 only (add --dtype f32)",
        ));
    }
    if !json {
        print_header(true);
    }
    for &shape in &shapes {
        for &op in &ops_ {
            for &dtype in &dtypes {
                if !runs(op, dtype) {
                    continue;
                }
                let row = with_isa(isa, || bench::measure(op, dtype, shape, with_reference))
                    .and_then(|r| r)
                    .with_context(|| format!("bench {} {dtype:?} {shape:?}", op.name()))?;
                print_row(&row, json, true);
                std::io::stdout().flush().ok();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `adex bench --device cuda|metal`.
#[allow(clippy::too_many_arguments)]
fn bench_device(
    name: &str,
    json: bool,
    quick: bool,
    with_reference: bool,
    mut shapes: Vec<(usize, usize, usize)>,
    mut ops: Vec<&'static str>,
    mut dtypes: Vec<DType>,
) -> anyhow::Result<ExitCode> {
    let dev = match name {
        "metal" => Device::new_metal(0),
        _ => Device::new_cuda(0),
    }
    .with_context(|| format!("--device {name}"))?;
    // Fresh outputs from the pool, not mapped anew on every call (see the function's docs).
    candle_adex::fused::retain_pool_memory(&dev).with_context(|| format!("--device {name}"))?;
    if shapes.is_empty() {
        shapes = bench::SHAPES[..if quick { 2 } else { 4 }].to_vec();
        if !quick {
            shapes.push((1000, 1, 262_144));
        }
    }
    if ops.is_empty() {
        ops = bench::DEVICE_OPS.to_vec();
    }
    if dtypes.is_empty() {
        dtypes = vec![DType::F32, DType::BF16, DType::F16, DType::F64];
    }
    if dev.is_metal() {
        dtypes.retain(|d| *d != DType::F64); // Metal has no f64
    }
    if !json {
        print_header(false);
    }
    for &shape in &shapes {
        for &op in &ops {
            if op == "step" && shape.0 * shape.1 * shape.2 > 1 << 24 {
                continue; // one launch per step: the small shapes show its cost
            }
            for &dtype in &dtypes {
                let row = bench::measure_device(&dev, op, dtype, shape, with_reference)
                    .with_context(|| format!("bench {op} {dtype:?} {shape:?}"))?;
                print_row(&row, json, false);
                std::io::stdout().flush().ok();
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The bench table's header (with the thread count on the CPU).
fn print_header(with_threads: bool) {
    let threads = if with_threads { " thr" } else { "" };
    println!(
        "{:<12} {:<5} {:>18}{threads} {:>10} {:>9} {:>9} {:>6} {:>10} {:>8}",
        "op", "dtype", "T,B,N", "fused G/s", "mem G/s", "cache G/s", "%limit", "ref G/s", "x ref"
    );
}

/// `bench --json`: one row.
#[derive(serde::Serialize)]
struct RowJson<'a> {
    op: &'a str,
    dtype: &'a str,
    device: &'a str,
    isa: &'a str,
    t: usize,
    b: usize,
    n: usize,
    threads: usize,
    neuron_steps_per_s: f64,
    roof_neuron_steps_per_s: f64,
    memory_roof_neuron_steps_per_s: f64,
    in_cache_neuron_steps_per_s: Option<f64>,
    reference_neuron_steps_per_s: Option<f64>,
}

impl<'a> From<&'a bench::Row> for RowJson<'a> {
    fn from(r: &'a bench::Row) -> Self {
        RowJson {
            op: r.op,
            dtype: r.dtype.as_str(),
            device: &r.device,
            isa: r.isa,
            t: r.t,
            b: r.b,
            n: r.n,
            threads: r.threads,
            neuron_steps_per_s: r.neuron_steps_per_s,
            roof_neuron_steps_per_s: r.roof_neuron_steps_per_s,
            memory_roof_neuron_steps_per_s: r.memory_roof_neuron_steps_per_s,
            in_cache_neuron_steps_per_s: r.in_cache_neuron_steps_per_s,
            reference_neuron_steps_per_s: r.reference_neuron_steps_per_s,
        }
    }
}

/// One bench row: JSON, or a table line (with the thread count on the CPU).
fn print_row(row: &bench::Row, json: bool, with_threads: bool) {
    if json {
        let line = serde_json::to_string(&RowJson::from(row)).expect("a row serializes");
        println!("{line}");
        return;
    }
    let g = |x: f64| x / 1e9;
    let (r, x) = match row.reference_neuron_steps_per_s {
        Some(r) => (
            format!("{:.3}", g(r)),
            format!("{:.1}", row.neuron_steps_per_s / r),
        ),
        None => ("-".to_string(), "-".to_string()),
    };
    let threads = if with_threads {
        format!(" {:>3}", row.threads)
    } else {
        String::new()
    };
    let cache = row
        .in_cache_neuron_steps_per_s
        .map_or("-".to_string(), |c| format!("{:.3}", g(c)));
    println!(
        "{:<12} {:<5} {:>18}{threads} {:>10.3} {:>9.3} {:>9} {:>5.0}% {:>10} {:>8}",
        row.op,
        row.dtype.as_str(),
        format!("{},{},{}", row.t, row.b, row.n),
        g(row.neuron_steps_per_s),
        g(row.memory_roof_neuron_steps_per_s),
        cache,
        100.0 * row.neuron_steps_per_s / row.limit_neuron_steps_per_s(),
        r,
        x
    );
}
