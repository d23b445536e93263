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

mod config;
mod explore;
mod font;
mod plot;
mod png;
mod simulate;

use candle_adex::bench::{self, Op};
use candle_adex::fused::cpu::{with_isa, Isa};
use candle_adex::{conformance, ops};
use candle_core::{DType, Device};
use std::io::Write;
use std::process::ExitCode;

const HELP: &str = "\
adex: AdEx neurons (norse semantics) on candle

USAGE:
    adex simulate [OPTIONS]      simulate a population: firing statistics, plot, recording
    adex patterns [OPTIONS]      the classic AdEx firing patterns under a current step
    adex fi-curve [OPTIONS]      firing rate against input current
    adex conformance FILE...     replay norse golden files (norse-adex-golden/1) and compare
    adex bench [OPTIONS]         fused kernels against the reference path and the memory roof
    adex help                    this text

Run `adex <command> --help` for the options of a command.";

const CONFORMANCE_HELP: &str = "\
adex conformance FILE...: replay golden runs of norse (safetensors files in the format of
norse-adex-golden/1) through this crate. Prints one line per case with its measured errors and
tolerances, then `N passed, M failed, K skipped`. Exits non-zero if a case fails or a file
cannot be read.

OPTIONS:
    --path P     auto (default: the fused kernels where they serve, else the reference path),
                 fused (always the fused kernels) or reference (always the reference path)";

const BENCH_HELP: &str = "\
adex bench: neuron-steps per second of the fused CPU kernels beside the limits measured in the
same run: the memory roof (a copy of the bytes the op must move, with streaming stores, on as
many threads as the kernel), the in-cache figure (the same op and dtype at 100,1,4096, whose
input stays in cache: the kernel's compute speed) and %limit, the row's fraction of the lower
of the two; and the reference path (candle tensor ops). Sequences write into caller-owned
buffers (see `fused::lif_adex_feed_forward_seq_into`).

OPTIONS:
    --json             one JSON object per line: op, dtype, device, isa, t, b, n, threads,
                       neuron_steps_per_s, roof_neuron_steps_per_s (plain memcpy),
                       memory_roof_neuron_steps_per_s, in_cache_neuron_steps_per_s,
                       reference_neuron_steps_per_s
    --quick            only the two small shapes
    --shape T,B,N      only this shape (repeatable)
    --op OP            step, step_into, seq, seq_u8, seq_fwd_bwd (kernels, f32) or seq_autograd
                       (candle backward() end to end) (repeatable; default all)
    --dtype D          f32, bf16, f16 or f64 (repeatable; default f32, bf16, f16)
    --isa I            avx512, avx2 or portable (default: the best this CPU has)
    --no-reference     skip the reference path (it is slow at the large shapes)
    --device D         cpu (default), cuda or metal: on a GPU the ops are step, seq, seq_u8,
                       seq_bwd (the backward kernel alone) and encoder_seq, the roof a
                       device-to-device copy of the same bytes, the shapes the four above plus
                       1000,1,262144 (1 GB of f32 input), dtypes f32, bf16, f16 and f64 (Metal:
                       no f64)";

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    let wants_help = rest.iter().any(|a| a == "--help" || a == "-h");
    let result = match args.first().map(String::as_str) {
        Some("simulate") if wants_help => Ok(print(simulate::HELP)),
        Some("simulate") => simulate::simulate(rest),
        Some("patterns") if wants_help => Ok(print(explore::PATTERNS_HELP)),
        Some("patterns") => explore::patterns_cmd(rest),
        Some("fi-curve") if wants_help => Ok(print(explore::FI_HELP)),
        Some("fi-curve") => explore::fi_cmd(rest),
        Some("conformance") if wants_help => Ok(print(CONFORMANCE_HELP)),
        Some("conformance") => conformance_cmd(rest),
        Some("bench") if wants_help => Ok(print(BENCH_HELP)),
        Some("bench") => bench_cmd(rest),
        Some("help" | "--help" | "-h") | None => Ok(print(HELP)),
        Some(other) => Err(format!("unknown command {other:?}\n\n{HELP}")),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("adex: {message}");
            ExitCode::from(2)
        }
    }
}

fn print(text: &str) -> ExitCode {
    println!("{text}");
    ExitCode::SUCCESS
}

fn conformance_cmd(args: &[String]) -> Result<ExitCode, String> {
    let mut path = ops::Path::Auto;
    let mut files = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--path" {
            path = match it.next().map(String::as_str) {
                Some("auto") => ops::Path::Auto,
                Some("fused") => ops::Path::Fused,
                Some("reference") => ops::Path::Reference,
                other => {
                    return Err(format!(
                        "--path must be auto, fused or reference, got {other:?}"
                    ))
                }
            };
        } else if a.starts_with("--") {
            return Err(format!("unknown option {a}\n\n{CONFORMANCE_HELP}"));
        } else {
            files.push(a.clone());
        }
    }
    ops::with_path(path, || conformance_files(&files))
}

fn conformance_files(files: &[String]) -> Result<ExitCode, String> {
    if files.is_empty() {
        return Err(format!(
            "conformance needs at least one file\n\n{CONFORMANCE_HELP}"
        ));
    }
    let mut all = vec![];
    let mut unreadable = false;
    for file in files {
        match conformance::GoldenFile::open(file.as_ref()) {
            Ok(golden) => {
                for report in golden.run() {
                    println!("{report}");
                    all.push(report);
                }
            }
            Err(e) => {
                eprintln!("adex conformance: {e}");
                unreadable = true;
            }
        }
    }
    let (passed, failed, skipped) = conformance::summarize(&all);
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    Ok(if failed > 0 || unreadable {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "f64" => Ok(DType::F64),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(format!(
            "dtype must be f32, f64, f16 or bf16, got {other:?}"
        )),
    }
}

fn bench_cmd(args: &[String]) -> Result<ExitCode, String> {
    let (mut json, mut quick, mut with_reference) = (false, false, true);
    let (mut shapes, mut ops_, mut dtypes) = (Vec::new(), Vec::new(), Vec::new());
    let mut isa = Isa::detected();
    let mut device: Option<String> = None;
    let mut dev_ops: Vec<&'static str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value\n\n{BENCH_HELP}"))
        };
        match a.as_str() {
            "--json" => json = true,
            "--quick" => quick = true,
            "--no-reference" => with_reference = false,
            "--shape" => {
                let v = value()?;
                let dims: Vec<usize> = v
                    .split(',')
                    .map(|d| d.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| {
                        format!("--shape must be T,B,N with positive integers, got {v:?}")
                    })?;
                match dims[..] {
                    [t, b, n] if t > 0 && b > 0 && n > 0 => shapes.push((t, b, n)),
                    _ => {
                        return Err(format!(
                            "--shape must be T,B,N with positive integers, got {v:?}"
                        ))
                    }
                }
            }
            "--device" => {
                let v = value()?;
                match v.as_str() {
                    "cpu" => device = None,
                    "cuda" | "metal" => device = Some(v),
                    _ => return Err(format!("--device must be cpu, cuda or metal, got {v:?}")),
                }
            }
            "--op" if device.is_some() => {
                let v = value()?;
                let op = bench::DEVICE_OPS
                    .into_iter()
                    .find(|o| *o == v)
                    .ok_or_else(|| {
                        format!(
                            "--op on a device must be one of {:?}, got {v:?}",
                            bench::DEVICE_OPS
                        )
                    })?;
                dev_ops.push(op);
            }
            "--op" => {
                let v = value()?;
                let op = Op::ALL.into_iter().find(|o| o.name() == v).ok_or_else(|| {
                    format!(
                        "--op must be step, step_into, seq, seq_u8, seq_fwd_bwd or seq_autograd, got {v:?}"
                    )
                })?;
                ops_.push(op);
            }
            "--dtype" => dtypes.push(parse_dtype(&value()?)?),
            "--isa" => {
                let v = value()?;
                isa = Isa::available()
                    .into_iter()
                    .find(|i| i.name() == v)
                    .ok_or_else(|| {
                        let names: Vec<_> = Isa::available().iter().map(|i| i.name()).collect();
                        format!(
                            "--isa must be one this CPU has ({}), got {v:?}",
                            names.join(", ")
                        )
                    })?;
            }
            other => return Err(format!("unknown option {other}\n\n{BENCH_HELP}")),
        }
    }
    if let Some(name) = device {
        return bench_device(&name, json, quick, with_reference, shapes, dev_ops, dtypes);
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
    if !json {
        print_header(true);
    }
    for &shape in &shapes {
        for &op in &ops_ {
            for &dtype in &dtypes {
                if op == Op::SeqFwdBwd && dtype != DType::F32 {
                    continue; // the kernel-level backward runs in f32 (half types convert first)
                }
                let row = with_isa(isa, || bench::measure(op, dtype, shape, with_reference))
                    .and_then(|r| r)
                    .map_err(|e| format!("bench {} {dtype:?} {shape:?}: {e}", op.name()))?;
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
) -> Result<ExitCode, String> {
    let dev = match name {
        "metal" => Device::new_metal(0),
        _ => Device::new_cuda(0),
    }
    .map_err(|e| format!("--device {name}: {e}"))?;
    // Fresh outputs from the pool, not mapped anew on every call (see the function's docs).
    candle_adex::fused::retain_pool_memory(&dev).map_err(|e| format!("--device {name}: {e}"))?;
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
                    .map_err(|e| format!("bench {op} {dtype:?} {shape:?}: {e}"))?;
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

/// One bench row: JSON, or a table line (with the thread count on the CPU).
fn print_row(row: &bench::Row, json: bool, with_threads: bool) {
    if json {
        println!("{}", row.json());
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
