//! The `adex` command: simulate a population of AdEx neurons, check conformance with norse.
//!
//! ```text
//! adex simulate [options]      run a population and print firing statistics
//! adex conformance FILE...     replay norse golden files and report errors per case
//! adex bench [options]         fused kernels vs reference path vs memory roof
//! ```

use candle_adex::bench::{self, Op};
use candle_adex::fused::cpu::{with_isa, Isa};
use candle_adex::{
    conformance, lif_adex_feed_forward_seq, ops, AdexParameters, FeedForwardState, Param,
};
use candle_core::{DType, Device, Tensor};
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

const HELP: &str = "\
adex: AdEx neurons (norse semantics) on candle

USAGE:
    adex simulate [OPTIONS]      simulate a population and print firing statistics
    adex conformance FILE...     replay norse golden files (norse-adex-golden/1) and compare
    adex bench [OPTIONS]         fused kernels against the reference path and the memory roof
    adex help                    this text

Run `adex <command> --help` for the options of a command.";

const SIMULATE_HELP: &str = "\
adex simulate: a population of AdEx neurons with heterogeneous parameters and a noisy input
current, through the reference path; prints rates, ISI variability and adaptation.

OPTIONS:
    --neurons N      population size (default 1000)
    --steps T        time steps (default 1000, one simulated second at dt = 1 ms)
    --dt DT          time step in seconds (default 0.001)
    --dtype D        f32, f64, f16 or bf16 (default f32)
    --seed S         seed of the parameter and input draws (default 1)
    --input-mean X   mean input current per step, scaled per neuron by 0.5..1.5 (default 0.4)
    --input-noise X  standard deviation of the white input noise (default 0.3)";

const CONFORMANCE_HELP: &str = "\
adex conformance FILE...: replay golden runs of norse (safetensors files in the format of
norse-adex-golden/1) through this crate. Prints one line per case with its measured errors and
tolerances, then `N passed, M failed, K skipped`. Exits non-zero if a case fails or a file
cannot be read.

OPTIONS:
    --path P     auto (default: the fused kernels where they serve, else the reference path),
                 fused (always the fused kernels) or reference (always the reference path)";

const BENCH_HELP: &str = "\
adex bench: neuron-steps per second of the fused CPU kernels, the reference path (candle tensor
ops) and a multi-threaded memory copy of the bytes the op must move (the roof), measured in the
same run. Sequences write into caller-owned buffers (see `fused::lif_adex_feed_forward_seq_into`).

OPTIONS:
    --json             one JSON object per line: op, dtype, device, isa, t, b, n, threads,
                       neuron_steps_per_s, roof_neuron_steps_per_s, reference_neuron_steps_per_s
    --quick            only the two small shapes
    --shape T,B,N      only this shape (repeatable)
    --op OP            step, seq, seq_u8, seq_fwd_bwd (kernels, f32) or seq_autograd
                       (candle backward() end to end) (repeatable; default all)
    --dtype D          f32, bf16, f16 or f64 (repeatable; default f32, bf16, f16)
    --isa I            avx512, avx2 or portable (default: the best this CPU has)
    --no-reference     skip the reference path (it is slow at the large shapes)
    --device D         cpu (default) or cuda: on cuda the ops are step, seq, seq_u8, seq_bwd
                       (the backward kernel alone) and encoder_seq, the roof a device-to-device
                       copy of the same bytes, the shapes the four above plus 1000,1,262144 (1 GB
                       of f32 input), dtypes f32, bf16, f16 and f64";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    let wants_help = rest.iter().any(|a| a == "--help" || a == "-h");
    let result = match args.first().map(String::as_str) {
        Some("simulate") if wants_help => Ok(print(SIMULATE_HELP)),
        Some("simulate") => simulate(rest),
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

/// Options of `simulate`.
struct SimOptions {
    neurons: usize,
    steps: usize,
    dt: f64,
    dtype: DType,
    seed: u64,
    input_mean: f64,
    input_noise: f64,
}

fn parse_simulate(args: &[String]) -> Result<SimOptions, String> {
    let mut o = SimOptions {
        neurons: 1000,
        steps: 1000,
        dt: 0.001,
        dtype: DType::F32,
        seed: 1,
        input_mean: 0.4,
        input_noise: 0.3,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("option {flag} needs a value (see adex simulate --help)"))?;
        let num = |what: &str| -> Result<f64, String> {
            value
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("{flag}: expected {what}, got {value:?}"))
        };
        let count = || -> Result<usize, String> {
            value
                .parse::<usize>()
                .ok()
                .filter(|&v| v > 0)
                .ok_or_else(|| format!("{flag}: expected a positive integer, got {value:?}"))
        };
        match flag.as_str() {
            "--neurons" => o.neurons = count()?,
            "--steps" => o.steps = count()?,
            "--dt" => {
                o.dt = num("a positive number")?;
                if o.dt <= 0.0 {
                    return Err(format!("--dt: must be > 0, got {value}"));
                }
            }
            "--seed" => {
                o.seed = value
                    .parse()
                    .map_err(|_| format!("--seed: expected an integer, got {value:?}"))?
            }
            "--input-mean" => o.input_mean = num("a number")?,
            "--input-noise" => {
                o.input_noise = num("a non-negative number")?;
                if o.input_noise < 0.0 {
                    return Err(format!("--input-noise: must be >= 0, got {value}"));
                }
            }
            "--dtype" => {
                o.dtype = match value.as_str() {
                    "f32" => DType::F32,
                    "f64" => DType::F64,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    _ => {
                        return Err(format!(
                            "--dtype: expected f32, f64, f16 or bf16, got {value:?}"
                        ))
                    }
                }
            }
            _ => return Err(format!("unknown option {flag} (see adex simulate --help)")),
        }
    }
    Ok(o)
}

/// A small deterministic generator (SplitMix64) with uniform and normal draws.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform(f64::MIN_POSITIVE, 1.0);
        let u2 = self.uniform(0.0, 1.0);
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn simulate(args: &[String]) -> Result<ExitCode, String> {
    let o = parse_simulate(args)?;
    run_simulation(&o).map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn run_simulation(o: &SimOptions) -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let n = o.neurons;
    let mut rng = Rng(o.seed);
    let mut per_neuron = |lo: f64, hi: f64| -> candle_core::Result<Param> {
        let v: Vec<f32> = (0..n).map(|_| rng.uniform(lo, hi) as f32).collect();
        Ok(Param::Tensor(Tensor::from_vec(v, n, &dev)?))
    };
    let p = AdexParameters {
        v_th: per_neuron(0.9, 1.1)?,
        tau_ada_inv: per_neuron(1.0, 4.0)?,
        adaptation_spike: per_neuron(0.0, 0.1)?,
        adaptation_current: per_neuron(2.0, 6.0)?,
        dt: o.dt,
        ..Default::default()
    };
    let gain: Vec<f64> = (0..n).map(|_| rng.uniform(0.5, 1.5)).collect();
    let input: Vec<f32> = (0..o.steps * n)
        .map(|k| (o.input_mean * gain[k % n] + o.input_noise * rng.normal()) as f32)
        .collect();
    let xs = Tensor::from_vec(input, (o.steps, n), &dev)?.to_dtype(o.dtype)?;
    let mut state = FeedForwardState::initial(&p, n, o.dtype, &dev)?;

    println!(
        "simulating {n} AdEx neurons for {} steps (dt = {} s, {:?}, cpu, reference path)",
        o.steps, o.dt, o.dtype
    );
    let start = Instant::now();
    let chunk = 100.min(o.steps);
    let mut spikes = Vec::with_capacity(o.steps * n);
    let mut a_trace_mean = vec![];
    for begin in (0..o.steps).step_by(chunk) {
        let len = chunk.min(o.steps - begin);
        let out = lif_adex_feed_forward_seq(&xs.narrow(0, begin, len)?, &state, &p, false)?;
        spikes.extend(
            out.spikes
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
        );
        state = out.state;
        a_trace_mean.push(
            state
                .a
                .to_dtype(DType::F64)?
                .mean_all()?
                .to_scalar::<f64>()?,
        );
        if start.elapsed().as_secs_f64() > 0.5 {
            let done = begin + len;
            let bar = "#".repeat(30 * done / o.steps);
            eprint!("\r[{bar:<30}] {done}/{} steps", o.steps);
            std::io::stderr().flush().ok();
        }
    }
    let wall = start.elapsed().as_secs_f64();
    if wall > 0.5 {
        eprintln!();
    }
    let seconds = o.steps as f64 * o.dt;
    let stats = SpikeStats::new(&spikes, o.steps, n, o.dt);
    let final_a = state.a.to_dtype(DType::F64)?.to_vec1::<f64>()?;
    println!("  neurons               {n}");
    println!(
        "  steps                 {} ({seconds} s simulated)",
        o.steps
    );
    println!("  wall time             {wall:.3} s");
    println!(
        "  throughput            {:.3e} neuron-steps/s",
        (n * o.steps) as f64 / wall
    );
    println!("  spikes                {}", stats.total);
    println!(
        "  firing rate (Hz)      mean {:.2}  p10 {:.2}  median {:.2}  p90 {:.2}  max {:.2}",
        stats.mean_rate, stats.rate_p[0], stats.rate_p[1], stats.rate_p[2], stats.rate_p[3]
    );
    println!(
        "  silent neurons        {:.1} %",
        100.0 * stats.silent_fraction
    );
    match stats.cv {
        Some(cv) => println!(
            "  ISI CV                mean {cv:.3} over {} neurons with >= 3 spikes",
            stats.cv_neurons
        ),
        None => println!("  ISI CV                n/a (no neuron spiked 3 times)"),
    }
    let (a_mean, a_max) = (
        final_a.iter().sum::<f64>() / n as f64,
        final_a.iter().cloned().fold(f64::MIN, f64::max),
    );
    println!("  adaptation a (final)  mean {a_mean:.4}  max {a_max:.4}");
    let trace: Vec<String> = a_trace_mean.iter().map(|a| format!("{a:.3}")).collect();
    println!("  mean a every {chunk} steps: {}", trace.join(" "));
    Ok(())
}

/// Firing statistics of a `[T, N]` spike raster.
struct SpikeStats {
    total: usize,
    mean_rate: f64,
    rate_p: [f64; 4],
    silent_fraction: f64,
    cv: Option<f64>,
    cv_neurons: usize,
}

impl SpikeStats {
    fn new(spikes: &[f32], steps: usize, n: usize, dt: f64) -> Self {
        let seconds = steps as f64 * dt;
        let mut times: Vec<Vec<usize>> = vec![vec![]; n];
        for (k, &z) in spikes.iter().enumerate() {
            if z > 0.0 {
                times[k % n].push(k / n);
            }
        }
        let mut rates: Vec<f64> = times.iter().map(|t| t.len() as f64 / seconds).collect();
        let total = times.iter().map(Vec::len).sum();
        let silent = rates.iter().filter(|&&r| r == 0.0).count();
        rates.sort_by(f64::total_cmp);
        let pick = |q: f64| rates[((rates.len() - 1) as f64 * q).round() as usize];
        let cvs: Vec<f64> = times
            .iter()
            .filter(|t| t.len() >= 3)
            .map(|t| {
                let isi: Vec<f64> = t.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
                let mean = isi.iter().sum::<f64>() / isi.len() as f64;
                let var = isi.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / isi.len() as f64;
                var.sqrt() / mean
            })
            .collect();
        SpikeStats {
            total,
            mean_rate: total as f64 / seconds / n as f64,
            rate_p: [pick(0.1), pick(0.5), pick(0.9), pick(1.0)],
            silent_fraction: silent as f64 / n as f64,
            cv: (!cvs.is_empty()).then(|| cvs.iter().sum::<f64>() / cvs.len() as f64),
            cv_neurons: cvs.len(),
        }
    }
}

fn parse_dtype(s: &str) -> Result<DType, String> {
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
                    "cuda" => device = Some(v),
                    _ => return Err(format!("--device must be cpu or cuda, got {v:?}")),
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
                        "--op must be step, seq, seq_u8, seq_fwd_bwd or seq_autograd, got {v:?}"
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
    if device.is_some() {
        return bench_device(json, quick, with_reference, shapes, dev_ops, dtypes);
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
        println!(
            "{:<12} {:<5} {:>18} {:>3} {:>10} {:>10} {:>6} {:>10} {:>8}",
            "op", "dtype", "T,B,N", "thr", "fused G/s", "roof G/s", "%roof", "ref G/s", "x ref"
        );
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

/// `adex bench --device cuda`.
fn bench_device(
    json: bool,
    quick: bool,
    with_reference: bool,
    mut shapes: Vec<(usize, usize, usize)>,
    mut ops: Vec<&'static str>,
    mut dtypes: Vec<DType>,
) -> Result<ExitCode, String> {
    let dev = Device::new_cuda(0).map_err(|e| format!("--device cuda: {e}"))?;
    // Fresh outputs from the pool, not mapped anew on every call (see the function's docs).
    #[cfg(feature = "cuda")]
    candle_adex::fused::cuda_retain_pool_memory(&dev).map_err(|e| format!("--device cuda: {e}"))?;
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
    if !json {
        println!(
            "{:<12} {:<5} {:>18} {:>10} {:>10} {:>6} {:>10} {:>8}",
            "op", "dtype", "T,B,N", "fused G/s", "roof G/s", "%roof", "ref G/s", "x ref"
        );
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
    println!(
        "{:<12} {:<5} {:>18}{threads} {:>10.3} {:>10.3} {:>5.0}% {:>10} {:>8}",
        row.op,
        row.dtype.as_str(),
        format!("{},{},{}", row.t, row.b, row.n),
        g(row.neuron_steps_per_s),
        g(row.roof_neuron_steps_per_s),
        100.0 * row.neuron_steps_per_s / row.roof_neuron_steps_per_s,
        r,
        x
    );
}
