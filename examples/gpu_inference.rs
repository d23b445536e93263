//! Inference on a GPU: a recurrent AdEx layer feeding a feed-forward one, run on CUDA (or Metal)
//! when the crate is built with that feature and a device is there, on the CPU otherwise.
//!
//! ```text
//! cargo run --release --features cuda --example gpu_inference
//! cargo run --release --example gpu_inference   # CPU
//! ```
//!
//! The weights are made on the CPU and moved with the network's inputs (a trained model would
//! load them onto the device with `VarBuilder::from_mmaped_safetensors(.., &device)`). On a GPU
//! the program also runs the same network on the CPU and reports how many spikes differ (the
//! kernels agree with the CPU's bit for bit in f32; the matrix products of the recurrent layer
//! may differ in their last bits, which can flip a spike near threshold). `tests/examples.rs`
//! runs [`infer`].

use candle_adex::modules::{LifAdex, LifAdexRecurrent, LifAdexRecurrentCell, RecurrentConfig};
use candle_adex::AdexParameters;
use candle_core::{DType, Device, Module, Result, Tensor};

/// The first CUDA device, else the first Metal device, else the CPU (saying why).
pub fn pick_device() -> Device {
    match Device::new_cuda(0) {
        Ok(dev) => return dev,
        Err(e) => eprintln!("no CUDA device: {e}"),
    }
    match Device::new_metal(0) {
        Ok(dev) => return dev,
        Err(e) => eprintln!("no Metal device: {e}"),
    }
    eprintln!("running on the CPU");
    Device::Cpu
}

/// The network's weights, made on the CPU.
pub struct Model {
    /// Input weights `[H, I]`.
    pub input_weights: Tensor,
    /// Recurrent weights `[H, H]`.
    pub recurrent_weights: Tensor,
}

impl Model {
    /// Random weights (norse's scale) for `inputs` features and `hidden` neurons.
    pub fn random(inputs: usize, hidden: usize) -> Result<Self> {
        let std = (2.0 / hidden as f64).sqrt();
        Ok(Self {
            input_weights: Tensor::randn(0f32, std as f32, (hidden, inputs), &Device::Cpu)?,
            recurrent_weights: Tensor::randn(0f32, std as f32, (hidden, hidden), &Device::Cpu)?,
        })
    }
}

/// Output spikes `[T, B, H]` of the two layers for `xs` (on any device), in `dtype` on `dev`.
pub fn infer(model: &Model, xs: &Tensor, dtype: DType, dev: &Device) -> Result<Tensor> {
    let p = AdexParameters::default().to_device(dev)?;
    let cell = LifAdexRecurrentCell::from_weights(
        model.input_weights.to_device(dev)?.to_dtype(dtype)?,
        model.recurrent_weights.to_device(dev)?.to_dtype(dtype)?,
        p.clone(),
        false,
    )?;
    let rec = LifAdexRecurrent::from_cell(cell, RecurrentConfig::default());
    let ff = LifAdex::new(p)?;
    let xs = xs.to_device(dev)?.to_dtype(dtype)?;
    ff.forward(&(rec.forward(&xs)? * 20.0)?)
}

#[allow(dead_code)]
fn main() -> Result<()> {
    let dev = pick_device();
    let (t, b, inputs, hidden) = (200, 16, 64, 1024);
    let model = Model::random(inputs, hidden)?;
    let xs = Tensor::rand(0f32, 2.0, (t, b, inputs), &Device::Cpu)?;
    let dtype = if dev.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    infer(&model, &xs, dtype, &dev)?; // warm-up: loads the kernels
    let start = std::time::Instant::now();
    let z = infer(&model, &xs, dtype, &dev)?;
    let spikes = z.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?; // waits for the device
    let secs = start.elapsed().as_secs_f64();
    let neuron_steps = (2 * t * b * hidden) as f64;
    println!(
        "{:?} {dtype:?}: {t} steps x {b} x {hidden} neurons in two layers, {spikes} spikes, {:.2} ms, {:.3} G neuron-steps/s",
        dev.location(),
        secs * 1e3,
        neuron_steps / secs / 1e9
    );
    if !dev.is_cpu() {
        let cpu = infer(&model, &xs, dtype, &Device::Cpu)?;
        let differ = z
            .to_device(&Device::Cpu)?
            .ne(&cpu)?
            .to_dtype(DType::F32)?
            .sum_all()?
            .to_scalar::<f32>()?;
        println!(
            "against the CPU: {differ} of {} spikes differ",
            cpu.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?
        );
    }
    Ok(())
}
