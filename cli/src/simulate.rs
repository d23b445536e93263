//! `adex simulate`: a heterogeneous population under a noisy current, its statistics, a figure
//! and a recording.

use super::args::{Input, Params, SimDevice, SimulateArgs, StateName};
use super::plot::{Corner, Figure, Mark, Panel, PALETTE};
use super::{config, usage};
use anyhow::Context as _;
use candle_adex::{fused, lif_adex_feed_forward_seq, AdexParameters, FeedForwardState, Param};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::{SmallRng, StdRng};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

/// Host bytes per neuron-step the run holds at once: the input (and its copy in a half dtype),
/// the spikes (u8) and each recorded trajectory.
fn bytes_per_neuron_step(o: &SimulateArgs) -> u64 {
    let wide = if o.dtype.dtype() == DType::F64 { 8 } else { 4 };
    let cast = if o.dtype.dtype().size_in_bytes() == 2 {
        2
    } else {
        0
    };
    let recorded = if o.record.is_some() {
        o.record_states.len() as u64
    } else {
        0
    };
    wide + cast + 1 + recorded * wide
}

/// Refuses a run that needs more memory than the machine has available (Linux reports it; other
/// systems are not checked).
fn check_memory(o: &SimulateArgs) -> Result<(), String> {
    let need = (o.steps as u64)
        .checked_mul(o.neurons as u64)
        .and_then(|ns| ns.checked_mul(bytes_per_neuron_step(o)))
        .ok_or_else(|| {
            format!(
                "{} steps of {} neurons do not fit in memory",
                o.steps, o.neurons
            )
        })?;
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    });
    match available {
        Some(have) if need > have => Err(format!(
            "{} steps of {} neurons need about {:.1} GiB of memory ({} bytes per neuron-step), \
             and {:.1} GiB are available: fewer --steps or --neurons, or fewer --record-states",
            o.steps,
            o.neurons,
            need as f64 / (1u64 << 30) as f64,
            bytes_per_neuron_step(o),
            have as f64 / (1u64 << 30) as f64
        )),
        _ => Ok(()),
    }
}

/// Steps per independently seeded block of the generated input: blocks are drawn in parallel,
/// and the input depends on the seed only, not on the number of threads.
const NOISE_ROWS: usize = 16;

fn device(choice: SimDevice) -> anyhow::Result<Device> {
    match choice {
        SimDevice::Cpu => Ok(Device::Cpu),
        SimDevice::Cuda => Device::new_cuda(0).context("--device cuda"),
        SimDevice::Metal => Device::new_metal(0).context("--device metal"),
        // auto: a GPU when this build has CUDA or Metal and one answers, the CPU otherwise (a
        // build with a GPU feature on a machine without that GPU gets an error here, not a GPU)
        SimDevice::Auto => Ok(Device::new_cuda(0)
            .or_else(|_| Device::new_metal(0))
            .unwrap_or(Device::Cpu)),
    }
}

pub fn simulate(o: SimulateArgs) -> anyhow::Result<ExitCode> {
    let dev = device(o.device)?;
    run_simulation(o, &dev)?;
    Ok(ExitCode::SUCCESS)
}

/// The input currents `[T, N]` on the host: a file's tensor as stored, generated ones in f64
/// for an f64 run and in f32 otherwise. Sets the population size and steps from a file.
fn input_currents(o: &mut SimulateArgs, rng: &mut StdRng) -> Result<Tensor, String> {
    if let Input::File(path) = &o.input {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| format!("--input {}: {e}", path.display()))?;
        let x = tensors.get("input").ok_or_else(|| {
            format!(
                "--input {}: no tensor named `input` (found: {:?})",
                path.display(),
                tensors.keys().collect::<Vec<_>>()
            )
        })?;
        let (t, n) = x.dims2().map_err(|_| {
            format!(
                "--input {}: `input` must be [T, N], got {:?}",
                path.display(),
                x.dims()
            )
        })?;
        if !x.dtype().is_float() {
            return Err(format!(
                "--input {}: `input` must hold floats, got {:?}",
                path.display(),
                x.dtype()
            ));
        }
        (o.steps, o.neurons) = (t, n);
        return Ok(x.clone());
    }
    let gain: Vec<f64> = (0..o.neurons).map(|_| rng.random_range(0.5..1.5)).collect();
    let shape = (o.steps, o.neurons);
    let x = if o.dtype.dtype() == DType::F64 {
        Tensor::from_vec(generated(o, &gain, |x| x), shape, &Device::Cpu)
    } else {
        Tensor::from_vec(generated(o, &gain, |x| x as f32), shape, &Device::Cpu)
    };
    x.map_err(|e| e.to_string())
}

/// The generated input `[T, N]`, row-major, in blocks of [`NOISE_ROWS`] steps on all cores.
fn generated<T: Copy + Send>(o: &SimulateArgs, gain: &[f64], cast: fn(f64) -> T) -> Vec<T> {
    let (steps, n) = (o.steps, o.neurons);
    let noise = Normal::new(0.0, o.input_noise).expect("--input-noise is finite and >= 0");
    let mut data = vec![cast(0.0); steps * n];
    data.par_chunks_mut(NOISE_ROWS * n)
        .enumerate()
        .for_each(|(block, rows)| {
            let stream = (block as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut rng = SmallRng::seed_from_u64(o.seed ^ stream);
            for (k, x) in rows.iter_mut().enumerate() {
                let (t, j) = (block * NOISE_ROWS + k / n, k % n);
                let mean = o.input_mean * gain[j];
                *x = cast(match o.input {
                    Input::Constant => mean,
                    Input::Ramp => 2.0 * mean * t as f64 / steps as f64 + noise.sample(&mut rng),
                    _ => mean + noise.sample(&mut rng),
                });
            }
        });
    data
}

/// The built-in heterogeneous population, norse's defaults, or the parameter file's.
fn parameters(o: &SimulateArgs, rng: &mut StdRng) -> Result<AdexParameters, String> {
    let n = o.neurons;
    let base = AdexParameters {
        dt: o.dt,
        ..Default::default()
    };
    if let Params::Defaults = o.params {
        return Ok(base);
    }
    if let Params::File(path) = &o.params {
        let p = config::load(path, o.dt)?;
        p.validate_for(n, &Device::Cpu)
            .map_err(|e| format!("{}: {}", path.display(), config::without_backtrace(e)))?;
        return Ok(p);
    }
    let mut per_neuron = |lo: f64, hi: f64| -> Result<Param, String> {
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi) as f32).collect();
        Ok(Param::Tensor(
            Tensor::from_vec(v, n, &Device::Cpu).map_err(|e| e.to_string())?,
        ))
    };
    Ok(AdexParameters {
        v_th: per_neuron(0.9, 1.1)?,
        tau_ada_inv: per_neuron(1.0, 4.0)?,
        adaptation_spike: per_neuron(0.0, 0.1)?,
        adaptation_current: per_neuron(2.0, 6.0)?,
        ..base
    })
}

/// Neurons whose traces the figure shows.
const TRACED: usize = 3;

fn run_simulation(mut o: SimulateArgs, dev: &Device) -> anyhow::Result<()> {
    // Input and parameter files are read and checked before any work: an input file first (it
    // sets the population size the parameters are checked for). The generated input draws from
    // the seed before the built-in population does.
    let mut rng = StdRng::seed_from_u64(o.seed);
    let file_input = match &o.input {
        Input::File(_) => Some(input_currents(&mut o, &mut rng).map_err(usage)?),
        _ => None,
    };
    let given = match &o.params {
        Params::Population => None,
        _ => Some(parameters(&o, &mut rng).map_err(usage)?),
    };
    check_memory(&o).map_err(usage)?;
    let input = match file_input {
        Some(x) => x,
        None => input_currents(&mut o, &mut rng).map_err(usage)?,
    };
    let p = match given {
        Some(p) => p,
        None => parameters(&o, &mut rng).map_err(usage)?,
    };
    let (n, steps) = (o.neurons, o.steps);
    let dt = p.dt;
    let run = || -> candle_core::Result<Outcome> {
        let p = p.to_device(dev)?;
        let xs = input.to_device(dev)?.to_dtype(o.dtype.dtype())?;
        simulate_population(&o, &p, &xs)
    };
    let path = match fused::unsupported_reason(&p, dev) {
        None => "fused kernels".to_string(),
        Some(why) => format!("reference path: {why}"),
    };
    let params = match &o.params {
        Params::Population => format!("built-in heterogeneous population, seed {}", o.seed),
        Params::Defaults => "norse's default parameters".to_string(),
        Params::File(path) => format!("parameters from {}", path.display()),
    };
    let device = match dev {
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
        Device::Cpu => "cpu",
    };
    if !o.json {
        println!(
            "simulating {n} AdEx neurons for {steps} steps (dt = {dt} s, {:?}, {device}, {path}; {params})",
            o.dtype.dtype(),
        );
    }
    let out = run().context("the simulation failed")?;
    let stats = SpikeStats::new(&out.spikes, o.steps, o.neurons, dt);
    if !o.json {
        report(&o, dt, &out, &stats);
    }
    if let Some(file) = &o.plot {
        figure(&o, dt, &out, &stats).save(file)?;
        if !o.json {
            println!("  wrote figure          {}", file.display());
        }
    }
    if let Some(file) = &o.record {
        record(file, &o, dt, &out)?;
        if !o.json {
            println!("  wrote recording       {}", file.display());
        }
    }
    if o.json {
        let a = &out.final_a;
        let summary = Summary {
            neurons: n,
            steps,
            dt,
            dtype: o.dtype.dtype().as_str(),
            device,
            path,
            parameters: params,
            seed: o.seed,
            wall_s: out.wall,
            neuron_steps_per_s: (n * steps) as f64 / out.wall,
            spikes: stats.total,
            rate_hz: Rates {
                mean: stats.mean_rate,
                p10: stats.rate_p[0],
                median: stats.rate_p[1],
                p90: stats.rate_p[2],
                max: stats.rate_p[3],
            },
            silent_fraction: stats.silent_fraction,
            isi_cv: stats.cv,
            isi_cv_neurons: stats.cv_neurons,
            a_final_mean: a.iter().sum::<f64>() / n as f64,
            a_final_max: a.iter().cloned().fold(f64::MIN, f64::max),
            mean_a: out
                .mean_a
                .iter()
                .map(|&(step, a)| MeanA { step, a })
                .collect(),
            figure: o.plot.as_ref().map(|p| p.display().to_string()),
            recording: o.record.as_ref().map(|p| p.display().to_string()),
        };
        println!("{}", serde_json::to_string(&summary)?);
    }
    Ok(())
}

/// `simulate --json`: the run and its statistics as one object.
#[derive(Serialize)]
struct Summary {
    neurons: usize,
    steps: usize,
    dt: f64,
    dtype: &'static str,
    device: &'static str,
    /// `fused kernels`, or `reference path: <why>`.
    path: String,
    /// Which parameters ran (the header line's words).
    parameters: String,
    seed: u64,
    wall_s: f64,
    neuron_steps_per_s: f64,
    spikes: usize,
    rate_hz: Rates,
    silent_fraction: f64,
    /// Mean ISI coefficient of variation over the neurons with at least 3 spikes.
    isi_cv: Option<f64>,
    isi_cv_neurons: usize,
    a_final_mean: f64,
    a_final_max: f64,
    /// The population's mean adaptation current after each chunk of steps.
    mean_a: Vec<MeanA>,
    figure: Option<String>,
    recording: Option<String>,
}

#[derive(Serialize)]
struct Rates {
    mean: f64,
    p10: f64,
    median: f64,
    p90: f64,
    max: f64,
}

#[derive(Serialize)]
struct MeanA {
    step: usize,
    a: f64,
}

/// What a simulation produced (host copies).
struct Outcome {
    wall: f64,
    /// `[T, N]` spikes, 0 or 1.
    spikes: Vec<u8>,
    final_a: Vec<f64>,
    mean_a: Vec<(usize, f64)>,
    /// `[T, N]` trajectories by name (chunks on the host, f64 for an f64 run, else f32), when
    /// recorded.
    recorded: HashMap<String, Vec<Tensor>>,
    /// `[T, TRACED]` v and a of the first neurons, for the figure.
    traces: [Vec<f32>; 2],
}

fn simulate_population(
    o: &SimulateArgs,
    p: &AdexParameters,
    xs: &Tensor,
) -> candle_core::Result<Outcome> {
    let (steps, n) = xs.dims2()?;
    let need_states = o.plot.is_some() || o.record.is_some();
    // The state in the compute precision between chunks (f32 for f16/bf16), as one library call
    // keeps it: each chunk's input is widened exactly, and only what is reported is rounded.
    let compute = candle_adex::reference::compute_dtype(o.dtype.dtype());
    let record_dtype = if o.dtype.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let mut state = FeedForwardState::initial(p, n, compute, xs.device())?;
    // Drawn on a terminal only (indicatif hides it when stderr is a file or a pipe).
    let progress = ProgressBar::new(steps as u64).with_style(
        ProgressStyle::with_template("[{bar:30}] {pos}/{len} steps, {eta} left")
            .expect("a valid template")
            .progress_chars("#>-"),
    );
    let start = Instant::now();
    let chunk = 100.min(steps);
    let mut out = Outcome {
        wall: 0.0,
        spikes: Vec::with_capacity(steps * n),
        final_a: vec![],
        mean_a: vec![],
        recorded: HashMap::new(),
        traces: [vec![], vec![]],
    };
    let host = |t: &Tensor| -> candle_core::Result<Vec<f32>> {
        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
    };
    for begin in (0..steps).step_by(chunk) {
        let len = chunk.min(steps - begin);
        let x = xs.narrow(0, begin, len)?.to_dtype(compute)?;
        let seq = lif_adex_feed_forward_seq(&x, &state, p, need_states)?;
        out.spikes.extend(
            seq.spikes
                .to_dtype(DType::U8)?
                .flatten_all()?
                .to_vec1::<u8>()?,
        );
        if let Some(rec) = &seq.recorded {
            let k = TRACED.min(n);
            // What a run in o.dtype.dtype() returns: the states rounded to it.
            let round = |t: &Tensor| t.to_dtype(o.dtype.dtype())?.to_dtype(record_dtype);
            out.traces[0].extend(host(&round(&rec.v.narrow(1, 0, k)?)?.contiguous()?)?);
            out.traces[1].extend(host(&round(&rec.a.narrow(1, 0, k)?)?.contiguous()?)?);
            if o.record.is_some() {
                for &state in &o.record_states {
                    let name = state.name().to_string();
                    let t = match state {
                        StateName::V => &rec.v,
                        StateName::I => &rec.i,
                        StateName::A => &rec.a,
                    };
                    out.recorded
                        .entry(name.clone())
                        .or_default()
                        .push(round(t)?.to_device(&Device::Cpu)?);
                }
            }
        }
        state = seq.state;
        let a = state
            .a
            .to_dtype(o.dtype.dtype())?
            .to_dtype(DType::F64)?
            .mean_all()?
            .to_scalar::<f64>()?;
        out.mean_a.push((begin + len, a));
        progress.set_position((begin + len) as u64);
    }
    progress.finish_and_clear();
    out.wall = start.elapsed().as_secs_f64();
    out.final_a = state
        .a
        .to_dtype(o.dtype.dtype())?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    Ok(out)
}

fn report(o: &SimulateArgs, dt: f64, out: &Outcome, stats: &SpikeStats) {
    let (n, steps) = (o.neurons, o.steps);
    let seconds = steps as f64 * dt;
    println!("  neurons               {n}");
    println!("  steps                 {steps} ({seconds} s simulated)");
    println!("  wall time             {:.3} s", out.wall);
    println!(
        "  throughput            {:.3e} neuron-steps/s",
        (n * steps) as f64 / out.wall
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
    let a = &out.final_a;
    let (a_mean, a_max) = (
        a.iter().sum::<f64>() / n as f64,
        a.iter().cloned().fold(f64::MIN, f64::max),
    );
    println!("  adaptation a (final)  mean {a_mean:.4}  max {a_max:.4}");
    let every = out.mean_a.first().map_or(0, |m| m.0);
    let trace: Vec<String> = out.mean_a.iter().map(|(_, a)| format!("{a:.3}")).collect();
    println!("  mean a every {every} steps: {}", trace.join(" "));
}

/// Raster, traces and the rate histogram in one figure.
fn figure(o: &SimulateArgs, dt: f64, out: &Outcome, stats: &SpikeStats) -> Figure {
    let (n, steps) = (o.neurons, o.steps);
    let shown = n.min(200);
    let (mut xs, mut ys) = (vec![], vec![]);
    for (k, &z) in out.spikes.iter().enumerate() {
        if z > 0 && k % n < shown {
            xs.push((k / n + 1) as f64 * dt);
            ys.push((k % n) as f64);
        }
    }
    let raster = Panel::new(
        &format!("spike raster (first {shown} of {n} neurons)"),
        "time (s)",
        "neuron",
    )
    .with(xs, ys, [0, 0, 0], Mark::Ticks);
    let seconds = steps as f64 * dt;
    let raster = Panel {
        x_range: Some((0.0, seconds)),
        ..raster
    };
    let k = TRACED.min(n);
    let time: Vec<f64> = (1..=steps).map(|s| s as f64 * dt).collect();
    let trace = |which: usize, title: &str, label: &str, legend: Corner| {
        let mut panel = Panel {
            x_range: Some((0.0, seconds)),
            legend,
            ..Panel::new(title, "time (s)", label)
        };
        for (j, &color) in PALETTE.iter().enumerate().take(k) {
            let ys = out.traces[which]
                .iter()
                .skip(j)
                .step_by(k)
                .map(|&v| v as f64)
                .collect();
            panel =
                panel.with_labelled(&format!("neuron {j}"), time.clone(), ys, color, Mark::Line);
        }
        panel
    };
    let max_rate = stats.rate_p[3].max(1.0);
    let bins = 30;
    let width = max_rate / bins as f64;
    let mut counts = vec![0.0; bins];
    for &r in &stats.rates {
        counts[((r / width) as usize).min(bins - 1)] += 1.0;
    }
    let edges = (0..bins).map(|b| b as f64 * width).collect();
    let hist = Panel::new("firing-rate distribution", "rate (Hz)", "neurons").with(
        edges,
        counts,
        PALETTE[0],
        Mark::Bars(width),
    );
    Figure::new(
        &format!("{n} AdEx neurons, {seconds} s, dt = {dt} s"),
        vec![
            raster,
            hist,
            trace(
                0,
                &format!("membrane potential v of {k} neurons"),
                "v",
                Corner::UpperRight,
            ),
            trace(
                1,
                &format!("adaptation current a of {k} neurons"),
                "a",
                Corner::LowerRight,
            ),
        ],
        2,
    )
}

fn record(path: &Path, o: &SimulateArgs, dt: f64, out: &Outcome) -> anyhow::Result<()> {
    let (n, steps) = (o.neurons, o.steps);
    let spikes = out.spikes.clone();
    let mut tensors = vec![(
        "spikes".to_string(),
        Tensor::from_vec(spikes, (steps, n), &Device::Cpu)?,
    )];
    for (name, chunks) in &out.recorded {
        tensors.push((name.clone(), Tensor::cat(chunks, 0)?));
    }
    let meta = HashMap::from([
        ("dt".to_string(), dt.to_string()),
        ("neurons".to_string(), n.to_string()),
        ("steps".to_string(), steps.to_string()),
        ("seed".to_string(), o.seed.to_string()),
    ]);
    safetensors::serialize_to_file(tensors, Some(meta), path)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Firing statistics of a `[T, N]` spike raster.
struct SpikeStats {
    /// Per-neuron rates (Hz), sorted.
    rates: Vec<f64>,
    total: usize,
    mean_rate: f64,
    rate_p: [f64; 4],
    silent_fraction: f64,
    cv: Option<f64>,
    cv_neurons: usize,
}

impl SpikeStats {
    fn new(spikes: &[u8], steps: usize, n: usize, dt: f64) -> Self {
        let seconds = steps as f64 * dt;
        let mut times: Vec<Vec<usize>> = vec![vec![]; n];
        for (k, &z) in spikes.iter().enumerate() {
            if z > 0 {
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
            rates: rates.clone(),
            total,
            mean_rate: total as f64 / seconds / n as f64,
            rate_p: [pick(0.1), pick(0.5), pick(0.9), pick(1.0)],
            silent_fraction: silent as f64 / n as f64,
            cv: (!cvs.is_empty()).then(|| cvs.iter().sum::<f64>() / cvs.len() as f64),
            cv_neurons: cvs.len(),
        }
    }
}
