//! Trains a small recurrent AdEx network for a few steps, saves it with `VarMap::save`, reloads it
//! with `VarBuilder::from_mmaped_safetensors` and checks that the reloaded network computes the
//! same outputs bit for bit.
//!
//! ```text
//! cargo run --release --example save_load
//! ```
//!
//! What is saved is what the `VarMap` holds: the weights (`rec.input_weights`,
//! `rec.recurrent_weights`, `readout.weight`, `readout.bias`). The neuron parameters are plain
//! values of the program ([`AdexParameters`]); keep them beside the file (or in its metadata) and
//! pass the same ones when reloading. `tests/examples.rs` runs [`run`].

use candle_adex::modules::{LifAdexRecurrent, RecurrentConfig};
use candle_adex::AdexParameters;
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use std::path::Path;

/// Input features, AdEx neurons, outputs, steps and batch of the toy network.
const SIZES: (usize, usize, usize, usize, usize) = (6, 32, 3, 30, 8);

/// A recurrent AdEx layer read out through a linear layer from its spike rates.
pub struct Net {
    rec: LifAdexRecurrent,
    readout: Linear,
}

impl Net {
    /// The network with weights from `vb` (created there when `vb` is a fresh `VarMap`'s, loaded
    /// when it reads a file).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let (inputs, hidden, outputs, _, _) = SIZES;
        let rec = LifAdexRecurrent::new(
            inputs,
            hidden,
            AdexParameters::default(),
            RecurrentConfig::default(),
            vb.pp("rec"),
        )?;
        let readout = candle_nn::linear(hidden, outputs, vb.pp("readout"))?;
        Ok(Self { rec, readout })
    }

    /// Spikes `[T, B, H]` and outputs `[B, O]` for input currents `[T, B, I]`.
    pub fn forward(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let spikes = self.rec.forward(xs)?;
        let rates = (spikes.mean(0)? * 10.0)?;
        Ok((spikes.clone(), self.readout.forward(&rates)?))
    }
}

/// What [`run`] did.
#[derive(Debug)]
pub struct Report {
    /// The loss before each optimiser step.
    pub losses: Vec<f32>,
    /// Spikes the trained network fired on the check input.
    pub spikes: f32,
    /// Largest difference between the outputs of the trained and the reloaded network.
    pub max_output_difference: f32,
    /// Whether every spike of the reloaded network equals the trained network's.
    pub spikes_equal: bool,
}

/// Trains for `steps` AdamW steps, saves to `dir/net.safetensors`, reloads and compares.
pub fn run(dir: &Path, steps: usize) -> Result<Report> {
    let dev = Device::Cpu;
    let (inputs, _, outputs, t, b) = SIZES;
    let varmap = VarMap::new();
    let net = Net::new(VarBuilder::from_varmap(&varmap, DType::F32, &dev))?;
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW::default())?;
    let xs = Tensor::rand(0f32, 3.0, (t, b, inputs), &dev)?;
    let target = Tensor::rand(0f32, 1.0, (b, outputs), &dev)?;
    let mut losses = vec![];
    for _ in 0..steps {
        let (_, out) = net.forward(&xs)?;
        let loss = candle_nn::loss::mse(&out, &target)?;
        losses.push(loss.to_scalar::<f32>()?);
        opt.backward_step(&loss)?;
    }

    let path = dir.join("net.safetensors");
    varmap.save(&path)?;
    // SAFETY: the file is memory-mapped; nothing writes it while the mapping lives (this
    // function wrote it above and only reads it from here on).
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &dev)? };
    let reloaded = Net::new(vb)?;

    let check = Tensor::rand(0f32, 3.0, (t, b, inputs), &dev)?;
    let (z0, out0) = net.forward(&check)?;
    let (z1, out1) = reloaded.forward(&check)?;
    let max_output_difference = (out0 - out1)?.abs()?.max_all()?.to_scalar::<f32>()?;
    let spikes_equal = z0
        .eq(&z1)?
        .to_dtype(DType::F32)?
        .min_all()?
        .to_scalar::<f32>()?
        == 1.0;
    Ok(Report {
        losses,
        spikes: z0.sum_all()?.to_scalar::<f32>()?,
        max_output_difference,
        spikes_equal,
    })
}

#[allow(dead_code)]
fn main() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("candle-adex-save-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let report = run(&dir, 20)?;
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "loss {:.4} -> {:.4} over {} AdamW steps; {} spikes on the check input",
        report.losses[0],
        report.losses[report.losses.len() - 1],
        report.losses.len(),
        report.spikes
    );
    println!(
        "reloaded from safetensors: spikes identical: {}, largest output difference {}",
        report.spikes_equal, report.max_output_difference
    );
    if !report.spikes_equal || report.max_output_difference != 0.0 {
        candle_core::bail!("the reloaded network differs from the saved one");
    }
    Ok(())
}
