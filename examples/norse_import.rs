//! Imports a recurrent AdEx cell trained in norse: its `state_dict`, saved as safetensors, loads
//! straight into [`LifAdexRecurrentCell`], whose weights carry norse's names.
//!
//! In Python (norse 1.1.0, `pip install norse safetensors`):
//!
//! ```python
//! import norse.torch as norse, safetensors.torch
//! cell = norse.LIFAdExRecurrentCell(8, 16)  # ... trained ...
//! safetensors.torch.save_file(cell.state_dict(), "cell.safetensors")
//! ```
//!
//! The file then holds `input_weights` `[H, I]` and `recurrent_weights` `[H, H]`; the same holds
//! for `LIFAdExRecurrent`. A cell inside a larger norse model has its module path as a prefix
//! (`layer1.input_weights`): pass it as `prefix`. norse keeps the neuron parameters
//! (`LIFAdExParameters`) and `dt` outside the `state_dict`: give the same values as
//! [`AdexParameters`] (norse's defaults are `AdexParameters::default()`), and the same
//! `autapses` (norse's default is `false`).
//!
//! ```text
//! cargo run --release --example norse_import -- cell.safetensors [prefix]
//! cargo run --release --example norse_import   # replays a run recorded in norse 1.1.0
//! ```
//!
//! Without arguments the program writes such a file from the weights of the golden norse run in
//! `tests/data/norse/modules.safetensors` (case `LIFAdExRecurrentCell`: 8 inputs, 16 neurons,
//! 40 steps, batch 3), imports it and replays norse's input, comparing spikes and membrane
//! potentials with norse's. `tests/examples.rs` does the same.

use candle_adex::modules::{LifAdexRecurrentCell, RecurrentConfig};
use candle_adex::AdexParameters;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// Loads the cell in a norse `state_dict` file, its keys under `prefix` (`""` for a cell saved on
/// its own), in `dtype` on `dev`.
pub fn import(
    path: &Path,
    prefix: &str,
    params: AdexParameters,
    dtype: DType,
    dev: &Device,
) -> Result<LifAdexRecurrentCell> {
    let tensors = candle_core::safetensors::load(path, dev)?;
    let key = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    };
    let Some(w_in) = tensors.get(&key("input_weights")) else {
        let keys: Vec<&String> = tensors.keys().collect();
        candle_core::bail!(
            "{}: no `{}` (a norse recurrent cell's state_dict has input_weights and recurrent_weights; the file has {keys:?})",
            path.display(),
            key("input_weights")
        );
    };
    let (hidden, inputs) = w_in.dims2()?;
    let vb = VarBuilder::from_tensors(tensors, dtype, dev);
    let vb = if prefix.is_empty() { vb } else { vb.pp(prefix) };
    LifAdexRecurrentCell::new(inputs, hidden, params, RecurrentConfig::default(), vb)
}

/// How far the imported cell's replay is from norse's recording.
#[derive(Debug)]
pub struct Replay {
    /// Steps replayed.
    pub steps: usize,
    /// Spikes norse recorded.
    pub norse_spikes: f32,
    /// Spikes (step, batch, neuron) where the cell and norse differ.
    pub spike_mismatches: f32,
    /// Largest absolute difference of the membrane potential over the run.
    pub max_v_difference: f32,
}

/// Writes the golden run's weights to `dir` as a norse `state_dict` file, imports it and replays
/// the recorded input step by step from norse's initial state.
pub fn replay_golden(golden: &Path, dir: &Path) -> Result<Replay> {
    let dev = Device::Cpu;
    let case = candle_core::safetensors::load(golden, &dev)?;
    let get = |name: &str| {
        case.get(&format!("LIFAdExRecurrentCell/{name}"))
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: no {name}", golden.display())))
    };
    // What `safetensors.torch.save_file(cell.state_dict(), path)` writes.
    let state_dict = dir.join("norse_cell.safetensors");
    candle_core::safetensors::save(
        &[
            ("input_weights", get("w_in")?),
            ("recurrent_weights", get("w_rec")?),
        ]
        .into_iter()
        .collect(),
        &state_dict,
    )?;
    let cell = import(&state_dict, "", AdexParameters::default(), DType::F32, &dev)?;

    let (input, out_z, out_v) = (get("input")?, get("out_z")?, get("out_v")?);
    let steps = input.dim(0)?;
    let (mut zs, mut vs) = (vec![], vec![]);
    let mut state = None;
    for t in 0..steps {
        let (z, s) = cell.step(&input.get(t)?, state.as_ref())?;
        zs.push(z);
        vs.push(s.v.clone());
        state = Some(s);
    }
    let (z, v) = (Tensor::stack(&zs, 0)?, Tensor::stack(&vs, 0)?);
    let scalar = |t: Tensor| t.to_dtype(DType::F32)?.to_scalar::<f32>();
    Ok(Replay {
        steps,
        norse_spikes: scalar(out_z.sum_all()?)?,
        spike_mismatches: scalar(z.ne(&out_z)?.sum_all()?)?,
        max_v_difference: scalar((v - out_v)?.abs()?.max_all()?)?,
    })
}

#[allow(dead_code)]
fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(path) = args.first() {
        let prefix = args.get(1).map(String::as_str).unwrap_or("");
        let cell = import(
            Path::new(path),
            prefix,
            AdexParameters::default(),
            DType::F32,
            &Device::Cpu,
        )?;
        println!(
            "{path}: a recurrent AdEx cell of {} neurons reading {} inputs",
            cell.hidden_size(),
            cell.input_size()
        );
        return Ok(());
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/norse/modules.safetensors");
    if !golden.exists() {
        candle_core::bail!(
            "{} is not here (the published package leaves the golden data out): pass a state_dict file",
            golden.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("candle-adex-norse-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let replay = replay_golden(&golden, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let replay = replay?;
    println!(
        "replayed {} steps of norse's LIFAdExRecurrentCell run: {} of norse's {} spikes differ, largest |v - v_norse| = {:.2e}",
        replay.steps, replay.spike_mismatches, replay.norse_spikes, replay.max_v_difference
    );
    if replay.spike_mismatches != 0.0 || replay.max_v_difference > 1e-4 {
        candle_core::bail!("the imported cell does not reproduce norse's run");
    }
    Ok(())
}
