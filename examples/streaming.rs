//! A long run streamed in chunks: each call of a recurrent AdEx layer takes the state the last
//! call returned, so the chunks together compute exactly what one call over the whole input
//! does, while memory holds one chunk at a time.
//!
//! ```text
//! cargo run --release --example streaming
//! ```
//!
//! The input is generated chunk by chunk (a sensor, a file read piece by piece); only spike
//! counts are kept. The program checks that the streamed counts and final state equal one call
//! over the whole input, and (on Linux) that the resident memory stays flat while it streams.
//!
//! Inference uses plain weight tensors. With `Var`s (a layer being trained) every output tracks
//! gradients: a streaming loop then detaches what it carries (`state.detach()`), or memory grows
//! with every chunk.
//!
//! In f32 and f64 the chunked run is bit-identical to one call. In f16 and bf16 the state a call
//! returns is rounded to the storage type, so chunk boundaries round the state once more than one
//! call does; carry an f32 state when that matters. `tests/examples.rs` runs [`stream`] against
//! [`one_call`].

use candle_adex::modules::{LifAdexRecurrent, LifAdexRecurrentCell, RecurrentConfig};
use candle_adex::{AdexParameters, RecurrentState};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};

/// Batch, input features and neurons of the layer.
pub const SIZES: (usize, usize, usize) = (4, 16, 256);

/// The recurrent layer for inference: norse's initialisation through a `VarMap`, then plain
/// tensors (a `Var` would make every output track gradients, and a long call build a graph of
/// every step).
pub fn layer(dev: &Device) -> Result<LifAdexRecurrent> {
    let (_, inputs, hidden) = SIZES;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, dev);
    let params = AdexParameters::default();
    let trained = LifAdexRecurrentCell::new(
        inputs,
        hidden,
        params.clone(),
        RecurrentConfig::default(),
        vb,
    )?;
    let cell = LifAdexRecurrentCell::from_weights(
        trained.input_weights().detach(),
        trained.recurrent_weights()?.detach(),
        params,
        false,
    )?;
    Ok(LifAdexRecurrent::from_cell(
        cell,
        RecurrentConfig::default(),
    ))
}

/// Input currents for steps `t0 .. t0 + len`, `[len, B, I]`: slow sinusoids, a different phase
/// per input and batch row, so every chunk is a function of its time steps alone.
pub fn input(t0: usize, len: usize, dev: &Device) -> Result<Tensor> {
    let (batch, inputs, _) = SIZES;
    let t = Tensor::arange(t0 as u32, (t0 + len) as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((len, 1, 1))?;
    let i = Tensor::arange(0u32, inputs as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((1, 1, inputs))?;
    let b = Tensor::arange(0u32, batch as u32, dev)?
        .to_dtype(DType::F32)?
        .reshape((1, batch, 1))?;
    let phase = (i * 0.7)?.broadcast_add(&(b * 1.3)?)?;
    let wave = (t * 0.02)?.broadcast_add(&phase)?.sin()?;
    (wave + 1.0)? * 2.0
}

/// Spike counts `[B, H]` over the run, the final state, and the resident memory (bytes) after
/// each chunk where the system reports it.
pub struct Run {
    /// Spikes per neuron over the whole run.
    pub counts: Tensor,
    /// The state after the last step.
    pub state: RecurrentState,
    /// Resident set size after each chunk (Linux), else empty.
    pub resident: Vec<u64>,
}

/// Runs `total` steps in chunks of `chunk` steps, carrying the state from call to call.
pub fn stream(layer: &LifAdexRecurrent, total: usize, chunk: usize, dev: &Device) -> Result<Run> {
    let (batch, _, hidden) = SIZES;
    let mut counts = Tensor::zeros((batch, hidden), DType::F32, dev)?;
    let mut state: Option<RecurrentState> = None;
    let mut resident = vec![];
    for t0 in (0..total).step_by(chunk.max(1)) {
        let xs = input(t0, chunk.min(total - t0), dev)?;
        let out = layer.run(&xs, state.as_ref())?;
        // With trainable (`Var`) weights the outputs track gradients: detached, each chunk's
        // tensors are freed after the call instead of chaining every chunk into one graph.
        counts = (counts + out.spikes.sum(0)?.detach())?;
        state = Some(out.state.detach());
        resident.extend(resident_bytes());
    }
    let Some(state) = state else {
        candle_core::bail!("stream: no steps to run (total = {total})");
    };
    Ok(Run {
        counts,
        state,
        resident,
    })
}

/// The same run as one call over the whole input.
pub fn one_call(layer: &LifAdexRecurrent, total: usize, dev: &Device) -> Result<Run> {
    let out = layer.run(&input(0, total, dev)?, None)?;
    Ok(Run {
        counts: out.spikes.sum(0)?,
        state: out.state,
        resident: vec![],
    })
}

/// The largest absolute difference between the two runs' counts and final states.
pub fn difference(a: &Run, b: &Run) -> Result<f32> {
    let mut worst = 0f32;
    let pairs = [(&a.counts, &b.counts)]
        .into_iter()
        .chain(a.state.tensors().into_iter().zip(b.state.tensors()));
    for (x, y) in pairs {
        worst = worst.max((x - y)?.abs()?.max_all()?.to_scalar::<f32>()?);
    }
    Ok(worst)
}

/// This process's resident set size in bytes (Linux `/proc/self/statm`), if known.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[allow(dead_code)]
fn main() -> Result<()> {
    let dev = Device::Cpu;
    let (total, chunk) = (20_000, 500);
    let layer = layer(&dev)?;
    let start = std::time::Instant::now();
    let streamed = stream(&layer, total, chunk, &dev)?;
    let elapsed = start.elapsed().as_secs_f64();
    let (batch, _, hidden) = SIZES;
    println!(
        "{total} steps of {batch} x {hidden} recurrent AdEx neurons in chunks of {chunk}: {:.2} s, {} spikes",
        elapsed,
        streamed.counts.sum_all()?.to_scalar::<f32>()?
    );
    if let (Some(first), Some(last)) = (streamed.resident.get(1), streamed.resident.last()) {
        let max = streamed.resident.iter().max().copied().unwrap_or(*last);
        let mb = |b: u64| b as f64 / 1e6;
        println!(
            "resident memory after chunk 2: {:.1} MB, at the end: {:.1} MB, at most {:.1} MB",
            mb(*first),
            mb(*last),
            mb(max)
        );
        // One call would hold the [T, B, H] spikes alone: 20 000 x 4 x 256 x 4 bytes = 82 MB.
        if max > first + 32_000_000 {
            candle_core::bail!(
                "resident memory grew while streaming: {:.1} MB",
                mb(max - first)
            );
        }
    }
    let whole = one_call(&layer, total, &dev)?;
    let diff = difference(&streamed, &whole)?;
    println!("one call over the whole input: largest difference in counts and state {diff}");
    if diff != 0.0 {
        candle_core::bail!("the streamed run differs from one call");
    }
    Ok(())
}
