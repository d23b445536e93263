//! The command line as clap types: every command, option, default and allowed value, checked
//! while parsing (a bad value exits with code 2 before any work starts).

use candle_adex::patterns::{Pattern, StepProtocol};
use candle_core::DType;
use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "adex",
    version,
    about = "AdEx neurons (norse semantics) on candle",
    long_about = "AdEx neurons (norse semantics) on candle: simulate populations, map firing \
                  patterns and f-I curves, replay norse golden runs, benchmark the kernels.",
    propagate_version = true
)]
pub struct Cli {
    /// Errors with each cause on a line of its own, and the backtraces RUST_BACKTRACE=1 asks for,
    /// instead of one line
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Simulate a population: firing statistics, figure, recording
    #[command(
        long_about = "Simulate a population of AdEx neurons with heterogeneous parameters \
        (per neuron v_th, tau_ada_inv, adaptation_spike, adaptation_current) under a noisy input \
        current, on the best available device through the fused kernels. Prints neurons, steps, \
        wall time, neuron-steps/s, the firing-rate distribution, ISI variability and \
        adaptation.\n\nThe input stays in the run's dtype (a file's f64 input is not rounded to \
        f32 for an f64 run), and f16/bf16 runs keep the state in f32 between the chunks the \
        progress bar is drawn after, as one library call does: the result does not depend on \
        the chunking.\n\nMemory: about 5 bytes per neuron-step on the host (the input in f32 and \
        the spikes), 2 more in f16/bf16, 9 in f64, and 4 (f64: 8) per recorded state; a run \
        that needs more than the machine has available is refused before it starts."
    )]
    Simulate(SimulateArgs),
    /// The classic AdEx firing patterns under a current step
    #[command(
        long_about = "The classic AdEx firing patterns (Naud et al. 2008, Table 1, \
        rescaled to norse's dimensionless units with a v_peak cutoff; see the docs of \
        candle_adex::patterns), each neuron driven by a current step. Prints spike count, \
        first-spike latency, first/last inter-spike interval and ISI CV per pattern; draws one \
        panel per pattern (membrane potential, spikes)."
    )]
    Patterns(PatternsArgs),
    /// Firing rate against input current
    #[command(
        name = "fi-curve",
        long_about = "Firing rate against a constant input current (norse's input x per step) \
        for one parameter set, all currents simulated at once (one neuron each, f64, fused \
        kernels). Prints a table; draws the curve."
    )]
    FiCurve(FiArgs),
    /// Replay norse golden files (norse-adex-golden/1) and compare
    #[command(
        long_about = "Replay golden runs of norse (safetensors files in the format of \
        norse-adex-golden/1) through this crate. Prints one line per case with its measured \
        errors and tolerances, then `N passed, M failed, K skipped`. Exits with 1 if a case \
        fails or a file cannot be read."
    )]
    Conformance(ConformanceArgs),
    /// Fused kernels against the reference path and the memory roof
    #[command(
        long_about = "Neuron-steps per second of the fused kernels beside the limits \
        measured in the same run: the memory roof (a copy of the bytes the op must move, with \
        streaming stores, on as many threads as the kernel), the in-cache figure (the same op \
        and dtype at 100,1,4096, whose input stays in cache: the kernel's compute speed) and \
        %limit, the row's fraction of the lower of the two; and the reference path (candle \
        tensor ops). Sequences write into caller-owned buffers (see \
        `fused::lif_adex_feed_forward_seq_into`). On a GPU the ops are step, seq, seq_u8, \
        seq_bwd (the backward kernel alone) and encoder_seq, the roof a device-to-device copy \
        of the same bytes, the shapes the four CPU ones plus 1000,1,262144 (1 GB of f32 input), \
        dtypes f32, bf16, f16 and f64 (Metal: no f64)."
    )]
    Bench(BenchArgs),
    /// A shell completion script on stdout (e.g. `adex completions bash > adex.bash`)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// A storage dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dtype {
    F32,
    F64,
    F16,
    Bf16,
}

impl Dtype {
    pub fn dtype(self) -> DType {
        match self {
            Dtype::F32 => DType::F32,
            Dtype::F64 => DType::F64,
            Dtype::F16 => DType::F16,
            Dtype::Bf16 => DType::BF16,
        }
    }
}

/// Where `simulate` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SimDevice {
    /// CUDA or Metal when built with it and present, else the CPU
    Auto,
    Cpu,
    Cuda,
    Metal,
}

/// Where the input current comes from.
#[derive(Clone, Debug)]
pub enum Input {
    Noisy,
    Constant,
    Ramp,
    File(PathBuf),
}

/// Which parameters a run uses.
#[derive(Clone, Debug)]
pub enum Params {
    /// The built-in heterogeneous population (per-neuron draws from the seed).
    Population,
    /// norse's defaults for every neuron.
    Defaults,
    /// A parameter file over the defaults.
    File(PathBuf),
}

/// A recordable state variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateName {
    V,
    I,
    A,
}

impl StateName {
    pub fn name(self) -> &'static str {
        match self {
            StateName::V => "v",
            StateName::I => "i",
            StateName::A => "a",
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct SimulateArgs {
    /// Population size
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = count)]
    pub neurons: usize,
    /// Time steps (the default is one simulated second at dt = 1 ms)
    #[arg(long, value_name = "T", default_value_t = 1000, value_parser = count)]
    pub steps: usize,
    /// Time step in seconds
    #[arg(long, default_value_t = 0.001, value_parser = positive)]
    pub dt: f64,
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    #[arg(long, value_enum, default_value_t = SimDevice::Auto)]
    pub device: SimDevice,
    /// Seed of the parameter and input draws
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// noisy: mean x gain + white noise; constant: mean x gain; ramp: 0 to 2 x mean x gain
    /// over the run, plus noise; or a .safetensors file with a tensor `input` [T, N] (sets
    /// --steps and --neurons)
    #[arg(long, value_name = "KIND|FILE", default_value = "noisy", value_parser = input_kind)]
    pub input: Input,
    /// Mean input current per step, scaled per neuron by 0.5..1.5
    #[arg(long, value_name = "X", default_value_t = 0.4, value_parser = finite)]
    pub input_mean: f64,
    /// Standard deviation of the white input noise
    #[arg(long, value_name = "X", default_value_t = 0.3, value_parser = non_negative)]
    pub input_noise: f64,
    /// population: the built-in heterogeneous population drawn from --seed; defaults: norse's
    /// default parameters; or a .toml/.json file whose keys (norse's names: adaptation_current,
    /// adaptation_spike, delta_T, tau_ada_inv, tau_syn_inv, tau_mem_inv, v_leak, v_th, v_reset,
    /// v_peak, method, alpha, dt) override the defaults, each a number or a list of one number
    /// per neuron. The header line says which ran
    #[arg(long, value_name = "P", default_value = "population", value_parser = params_source)]
    pub params: Params,
    /// Figure (.png or .svg): spike raster, v and a traces of three neurons, rate histogram
    #[arg(long, value_name = "FILE", value_parser = figure_path)]
    pub plot: Option<PathBuf>,
    /// Write a .safetensors file: `spikes` [T, N] (u8) and the --record-states trajectories
    /// [T, N] (f64 for --dtype f64, else f32, holding the values of the run's dtype), with dt in
    /// its metadata
    #[arg(long, value_name = "FILE", value_parser = recording_path)]
    pub record: Option<PathBuf>,
    /// The states to record, comma-separated
    #[arg(long, value_enum, value_delimiter = ',', default_value = "v,a")]
    pub record_states: Vec<StateName>,
    /// Print the run and its statistics as one JSON object (neurons, steps, dt, dtype, device,
    /// path, parameters, seed, wall_s, neuron_steps_per_s, spikes, rate_hz {mean, p10, median,
    /// p90, max}, silent_fraction, isi_cv, isi_cv_neurons, a_final_mean, a_final_max, mean_a
    /// [{step, a}], figure, recording) instead of the text report
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone, Debug)]
pub struct PatternsArgs {
    /// The patterns to run (repeatable; default all seven)
    #[arg(long, value_name = "NAME", value_parser = pattern_parser())]
    pub pattern: Vec<Pattern>,
    /// Simulated time in seconds
    #[arg(long, value_name = "S", default_value_t = StepProtocol::default().duration, value_parser = positive)]
    pub duration: f64,
    /// Step onset in seconds (before the end of --duration)
    #[arg(long, value_name = "S", default_value_t = StepProtocol::default().onset, value_parser = non_negative)]
    pub onset: f64,
    /// Euler step in seconds
    #[arg(long, default_value_t = StepProtocol::default().dt, value_parser = positive)]
    pub dt: f64,
    /// Factor on each preset's step current
    #[arg(long, value_name = "G", default_value_t = StepProtocol::default().gain, value_parser = non_negative)]
    pub gain: f64,
    /// Write the figure (.png or .svg)
    #[arg(long, value_name = "FILE", value_parser = figure_path)]
    pub plot: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct FiArgs {
    /// Parameters (.toml or .json, norse's names; see `adex help simulate`); default norse's
    /// defaults
    #[arg(long, value_name = "FILE", conflicts_with = "pattern")]
    pub params: Option<PathBuf>,
    /// Use a firing-pattern preset's parameters instead (see `adex help patterns`)
    #[arg(long, value_name = "NAME", value_parser = pattern_parser())]
    pub pattern: Option<Pattern>,
    /// Largest current (default: 4 for --params or the defaults, 2x the preset's step)
    #[arg(long, value_name = "X", value_parser = positive)]
    pub max: Option<f64>,
    /// Number of currents from 0 to --max
    #[arg(long, value_name = "N", default_value_t = 41, value_parser = at_least_two)]
    pub points: usize,
    /// Simulated time per current in seconds
    #[arg(long, value_name = "S", default_value_t = 1.0, value_parser = positive)]
    pub duration: f64,
    /// Initial time not counted, in seconds (shorter than --duration)
    #[arg(long, value_name = "S", default_value_t = 0.2, value_parser = non_negative)]
    pub transient: f64,
    /// Euler step in seconds (default: the parameters' own)
    #[arg(long, value_parser = positive)]
    pub dt: Option<f64>,
    /// Write the figure (.png or .svg)
    #[arg(long, value_name = "FILE", value_parser = figure_path)]
    pub plot: Option<PathBuf>,
}

/// Which path `conformance` replays through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PathChoice {
    /// The fused kernels where they serve, else the reference path
    Auto,
    /// Always the fused kernels
    Fused,
    /// Always the reference path
    Reference,
}

#[derive(Args, Clone, Debug)]
pub struct ConformanceArgs {
    /// Golden files (.safetensors)
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[arg(long, value_enum, default_value_t = PathChoice::Auto)]
    pub path: PathChoice,
    /// One JSON object per case (file, group, case, outcome pass/fail/skip/unreadable, reason,
    /// error, measures [{name, value, tol, ok}]) instead of the text lines and summary
    #[arg(long)]
    pub json: bool,
}

/// Where `bench` runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchDevice {
    Cpu,
    Cuda,
    Metal,
}

/// The CPU kernels' instruction-set paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IsaChoice {
    Avx512,
    Avx2,
    Portable,
}

/// Every op name `bench --op` takes: the CPU ops, then the GPU-only ones.
pub const BENCH_OPS: [&str; 8] = [
    "step",
    "step_into",
    "seq",
    "seq_u8",
    "seq_fwd_bwd",
    "seq_autograd",
    "seq_bwd",
    "encoder_seq",
];

#[derive(Args, Clone, Debug)]
pub struct BenchArgs {
    /// One JSON object per line: op, dtype, device, isa, t, b, n, threads, neuron_steps_per_s,
    /// roof_neuron_steps_per_s (plain memcpy), memory_roof_neuron_steps_per_s,
    /// in_cache_neuron_steps_per_s, reference_neuron_steps_per_s
    #[arg(long)]
    pub json: bool,
    /// Only the two small shapes
    #[arg(long)]
    pub quick: bool,
    /// Only this shape (repeatable)
    #[arg(long = "shape", value_name = "T,B,N", value_parser = shape)]
    pub shapes: Vec<(usize, usize, usize)>,
    /// On the CPU step, step_into, seq, seq_u8, seq_fwd_bwd (kernels, f32) or seq_autograd
    /// (candle backward() end to end); on a GPU step, seq, seq_u8, seq_bwd, encoder_seq
    /// (repeatable; default all of the device's)
    #[arg(long = "op", value_name = "OP", value_parser = PossibleValuesParser::new(BENCH_OPS))]
    pub ops: Vec<String>,
    /// Dtypes (repeatable; default f32, bf16, f16, and f64 on a GPU)
    #[arg(long = "dtype", value_enum)]
    pub dtypes: Vec<Dtype>,
    /// Instruction set of the CPU kernels (default: the best this CPU has)
    #[arg(long, value_enum)]
    pub isa: Option<IsaChoice>,
    /// Skip the reference path (it is slow at the large shapes)
    #[arg(long)]
    pub no_reference: bool,
    #[arg(long, value_enum, default_value_t = BenchDevice::Cpu)]
    pub device: BenchDevice,
}

fn count(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|&v| v > 0)
        .ok_or_else(|| "expected a positive integer".to_string())
}

fn at_least_two(s: &str) -> Result<usize, String> {
    s.parse::<usize>()
        .ok()
        .filter(|&v| v >= 2)
        .ok_or_else(|| "expected an integer >= 2".to_string())
}

fn finite(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| "expected a finite number".to_string())
}

fn positive(s: &str) -> Result<f64, String> {
    finite(s)
        .ok()
        .filter(|v| *v > 0.0)
        .ok_or_else(|| "expected a positive number".to_string())
}

fn non_negative(s: &str) -> Result<f64, String> {
    finite(s)
        .ok()
        .filter(|v| *v >= 0.0)
        .ok_or_else(|| "expected a number >= 0".to_string())
}

fn shape(s: &str) -> Result<(usize, usize, usize), String> {
    let dims: Option<Vec<usize>> = s.split(',').map(|d| d.trim().parse().ok()).collect();
    match dims.as_deref() {
        Some(&[t, b, n]) if t > 0 && b > 0 && n > 0 => {
            t.checked_mul(b)
                .and_then(|tb| tb.checked_mul(n))
                .ok_or_else(|| format!("T*B*N of {s} overflows"))?;
            Ok((t, b, n))
        }
        _ => Err("expected T,B,N with positive integers".to_string()),
    }
}

fn input_kind(s: &str) -> Result<Input, String> {
    match s {
        "noisy" => Ok(Input::Noisy),
        "constant" => Ok(Input::Constant),
        "ramp" => Ok(Input::Ramp),
        file if file.ends_with(".safetensors") => Ok(Input::File(file.into())),
        _ => Err("expected noisy, constant, ramp or a .safetensors file".to_string()),
    }
}

fn params_source(s: &str) -> Result<Params, String> {
    match s {
        "population" => Ok(Params::Population),
        "defaults" => Ok(Params::Defaults),
        file => Ok(Params::File(file.into())),
    }
}

/// An output file with one of `exts` (any case) that can be written, checked before any work:
/// an existing file is opened for writing without changing it, a new one is created and removed.
fn output_path(s: &str, exts: &[&str]) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !exts.iter().any(|e| e.eq_ignore_ascii_case(ext)) {
        return Err(format!("the file must end in .{}", exts.join(" or .")));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(format!("no directory {}", dir.display()));
        }
    }
    if path.is_dir() {
        return Err(format!("{} is a directory", path.display()));
    }
    let existed = path.exists();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    if !existed {
        std::fs::remove_file(&path).ok();
    }
    Ok(path)
}

fn figure_path(s: &str) -> Result<PathBuf, String> {
    output_path(s, &["png", "svg"])
}

fn recording_path(s: &str) -> Result<PathBuf, String> {
    output_path(s, &["safetensors"])
}

fn pattern_parser() -> impl clap::builder::TypedValueParser<Value = Pattern> {
    use clap::builder::TypedValueParser;
    PossibleValuesParser::new(Pattern::ALL.map(Pattern::name))
        .map(|s: String| Pattern::from_name(&s).expect("one of the listed names"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_ops_cover_the_cpu_and_device_ops() {
        for op in candle_adex::bench::Op::ALL {
            assert!(BENCH_OPS.contains(&op.name()), "{}", op.name());
        }
        for op in candle_adex::bench::DEVICE_OPS {
            assert!(BENCH_OPS.contains(&op), "{op}");
        }
    }
}
