//! Trains a small spiking network of AdEx layers with surrogate gradients on a synthetic task:
//! tell which of several noisy input-current patterns was presented, from spike counts.
//!
//! The input noise is large (std 2 per step against patterns in [0, 1]), so a class can only be
//! told from currents integrated over time: the membranes and synapses of the AdEx layers do that.
//!
//! Network: input currents `[T, B, I]` → linear → feed-forward AdEx layer ([`LifAdex`]) →
//! recurrent AdEx layer ([`LifAdexRecurrent`], no autapses) → spike rates over time →
//! linear readout → cross-entropy. Trained with candle-nn's AdamW; everything runs on the CPU
//! through the fused kernels (forward and reverse-time backward).
//!
//! ```text
//! cargo run --release --example train_patterns
//! ```
//!
//! `tests/training.rs` runs a short version of [`train`] and checks that it learns.

use candle_adex::modules::{LifAdex, LifAdexRecurrent, RecurrentConfig};
use candle_adex::{AdexParameters, SurrogateMethod};
use candle_core::{DType, Device, Module, Result, Tensor, Var, D};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};

/// The task and training sizes.
#[derive(Clone, Debug)]
pub struct Config {
    /// Number of input patterns (classes).
    pub classes: usize,
    /// Input channels.
    pub inputs: usize,
    /// Neurons in each AdEx layer.
    pub hidden: usize,
    /// Time steps per sample (dt = 1 ms).
    pub steps: usize,
    /// Samples per batch.
    pub batch: usize,
    /// Optimiser steps.
    pub iterations: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// Standard deviation of the input noise at every step (patterns lie in [0, 1]).
    pub noise: f32,
    /// Seed of the data and the initial weights.
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            classes: 10,
            inputs: 16,
            hidden: 48,
            steps: 40,
            batch: 64,
            iterations: 200,
            learning_rate: 0.005,
            noise: 2.0,
            seed: 7,
        }
    }
}

/// What one optimiser step saw.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// 0-based optimiser step.
    pub iteration: usize,
    /// Cross-entropy of the batch, before the step.
    pub loss: f32,
    /// Fraction of the batch classified correctly, before the step.
    pub accuracy: f32,
}

/// A small deterministic generator (SplitMix64), so runs repeat exactly.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
    fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }
}

/// The network.
pub struct Net {
    input: Linear,
    ff: LifAdex,
    rec: LifAdexRecurrent,
    readout: Linear,
}

impl Net {
    /// Builds the network; its weights are created in `varmap` from `rng` (deterministic).
    fn new(cfg: &Config, varmap: &VarMap, rng: &mut Rng, dev: &Device) -> Result<Self> {
        let (i, h, k) = (cfg.inputs, cfg.hidden, cfg.classes);
        // Weights drawn here (norse's sqrt(2/H) for the recurrent layer, 1/sqrt(fan-in) for the
        // linear ones), inserted before the modules ask the VarBuilder for them.
        let rec_std = (2.0 / h as f32).sqrt();
        let init: [(&str, (usize, usize), f32); 6] = [
            ("input.weight", (h, i), 2.0 / (i as f32).sqrt()),
            ("input.bias", (1, h), 0.1),
            ("rec.input_weights", (h, h), rec_std),
            ("rec.recurrent_weights", (h, h), rec_std),
            ("readout.weight", (k, h), 1.0 / (h as f32).sqrt()),
            ("readout.bias", (1, k), 0.0),
        ];
        {
            let mut data = varmap.data().lock().expect("varmap lock");
            for (name, (r, c), std) in init {
                let t = Tensor::from_vec(rng.normals(r * c, std), (r, c), dev)?;
                let t = if r == 1 { t.squeeze(0)? } else { t };
                data.insert(name.to_string(), Var::from_tensor(&t)?);
            }
        }
        let vb = VarBuilder::from_varmap(varmap, DType::F32, dev);
        let p = AdexParameters {
            method: SurrogateMethod::Super,
            alpha: 10.0,
            ..Default::default()
        };
        Ok(Self {
            input: candle_nn::linear(i, h, vb.pp("input"))?,
            ff: LifAdex::new(p.clone())?,
            rec: LifAdexRecurrent::new(h, h, p, RecurrentConfig::default(), vb.pp("rec"))?,
            readout: candle_nn::linear(h, k, vb.pp("readout"))?,
        })
    }

    /// Logits `[B, K]` for input currents `[T, B, I]`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let currents = self.input.forward(xs)?;
        let s1 = self.ff.forward(&currents)?;
        let s2 = self.rec.forward(&s1)?;
        // spike rates over time, scaled to order one
        let rates = (s2.mean(0)? * 10.0)?;
        self.readout.forward(&rates)
    }
}

/// The synthetic task: each class is a fixed pattern of input currents; a sample is its pattern
/// plus independent noise at every time step.
struct Task {
    patterns: Vec<Vec<f32>>,
}

impl Task {
    fn new(cfg: &Config, rng: &mut Rng) -> Self {
        let patterns = (0..cfg.classes)
            .map(|_| (0..cfg.inputs).map(|_| rng.uniform()).collect())
            .collect();
        Self { patterns }
    }

    /// A batch: inputs `[T, B, I]` and labels `[B]`.
    fn batch(&self, cfg: &Config, rng: &mut Rng, dev: &Device) -> Result<(Tensor, Tensor)> {
        let labels: Vec<u32> = (0..cfg.batch)
            .map(|_| (rng.next_u64() % cfg.classes as u64) as u32)
            .collect();
        let mut xs = Vec::with_capacity(cfg.steps * cfg.batch * cfg.inputs);
        for _ in 0..cfg.steps {
            for &label in &labels {
                for &c in &self.patterns[label as usize] {
                    xs.push(c + cfg.noise * rng.normal());
                }
            }
        }
        Ok((
            Tensor::from_vec(xs, (cfg.steps, cfg.batch, cfg.inputs), dev)?,
            Tensor::new(labels, dev)?,
        ))
    }
}

/// Fraction of rows whose largest logit is the label.
fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<f32> {
    let hits = logits
        .argmax(D::Minus1)?
        .eq(labels)?
        .to_dtype(DType::F32)?
        .mean_all()?;
    hits.to_scalar::<f32>()
}

/// Trains a fresh network for `cfg.iterations` steps, calling `report` after each; returns the
/// accuracy on 4 fresh batches (held out: never trained on).
pub fn train(cfg: &Config, mut report: impl FnMut(Progress)) -> Result<f32> {
    let dev = Device::Cpu;
    let mut rng = Rng(cfg.seed);
    let task = Task::new(cfg, &mut rng);
    let varmap = VarMap::new();
    let net = Net::new(cfg, &varmap, &mut rng, &dev)?;
    let params = ParamsAdamW {
        lr: cfg.learning_rate,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(varmap.all_vars(), params)?;
    for iteration in 0..cfg.iterations {
        let (xs, labels) = task.batch(cfg, &mut rng, &dev)?;
        let logits = net.forward(&xs)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        report(Progress {
            iteration,
            loss: loss.to_scalar::<f32>()?,
            accuracy: accuracy(&logits, &labels)?,
        });
        opt.backward_step(&loss)?;
    }
    let mut held_out = 0.0;
    for _ in 0..4 {
        let (xs, labels) = task.batch(cfg, &mut rng, &dev)?;
        held_out += accuracy(&net.forward(&xs)?, &labels)? / 4.0;
    }
    Ok(held_out)
}

#[allow(dead_code)]
fn main() -> Result<()> {
    let cfg = Config::default();
    println!(
        "{} patterns x {} inputs, AdEx layers of {} neurons, T = {}, batch {}, {} AdamW steps",
        cfg.classes, cfg.inputs, cfg.hidden, cfg.steps, cfg.batch, cfg.iterations
    );
    let start = std::time::Instant::now();
    let mut window = vec![];
    let held_out = train(&cfg, |p| {
        window.push(p);
        if (p.iteration + 1) % 20 == 0 {
            let n = window.len() as f32;
            let loss = window.iter().map(|p| p.loss).sum::<f32>() / n;
            let acc = window.iter().map(|p| p.accuracy).sum::<f32>() / n;
            println!(
                "step {:>4}  loss {loss:.3}  accuracy {:>5.1} %  ({:.1} s)",
                p.iteration + 1,
                100.0 * acc,
                start.elapsed().as_secs_f32()
            );
            window.clear();
        }
    })?;
    println!(
        "held-out accuracy {:.1} % (chance {:.1} %); done in {:.1} s",
        100.0 * held_out,
        100.0 / cfg.classes as f32,
        start.elapsed().as_secs_f32()
    );
    Ok(())
}
