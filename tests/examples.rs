//! Short runs of the examples in `examples/` (CI also runs each as a program).

#[path = "../examples/save_load.rs"]
#[allow(dead_code)]
mod save_load;

#[path = "../examples/streaming.rs"]
#[allow(dead_code)]
mod streaming;

#[path = "../examples/norse_import.rs"]
#[allow(dead_code)]
mod norse_import;

#[path = "../examples/gpu_inference.rs"]
#[allow(dead_code)]
mod gpu_inference;

use candle_core::{DType, Device, Tensor};
use std::path::PathBuf;

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("candle-adex-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_saved_and_reloaded_network_computes_the_same() {
    let dir = scratch("save-load");
    let report = save_load::run(&dir, 8).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(report.losses.len(), 8);
    assert!(report.losses[7] < report.losses[0], "{:?}", report.losses);
    assert!(report.spikes > 0.0, "the check input made no spikes");
    assert!(report.spikes_equal);
    assert_eq!(report.max_output_difference, 0.0);
}

#[test]
fn a_streamed_run_equals_one_call() {
    let dev = Device::Cpu;
    let layer = streaming::layer(&dev).unwrap();
    let total = 1_000;
    let whole = streaming::one_call(&layer, total, &dev).unwrap();
    assert!(whole.counts.sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    // chunk sizes that divide the run and one that leaves a short last chunk
    for chunk in [100, 250, 333] {
        let streamed = streaming::stream(&layer, total, chunk, &dev).unwrap();
        assert_eq!(
            streaming::difference(&streamed, &whole).unwrap(),
            0.0,
            "chunks of {chunk}"
        );
    }
    assert!(streaming::stream(&layer, 0, 10, &dev).is_err());
}

#[test]
#[cfg_attr(
    not(golden_data),
    ignore = "needs tests/data/norse, which the published package leaves out"
)]
fn a_norse_state_dict_replays_norses_run() {
    let golden =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/norse/modules.safetensors");
    let dir = scratch("norse-import");
    let replay = norse_import::replay_golden(&golden, &dir).unwrap();
    assert_eq!(replay.steps, 40);
    assert!(replay.norse_spikes > 10.0);
    assert_eq!(replay.spike_mismatches, 0.0);
    assert!(replay.max_v_difference < 1e-4, "{replay:?}");
    // wrong prefix, wrong file: errors that say what the file holds
    let file = dir.join("norse_cell.safetensors");
    let p = candle_adex::AdexParameters::default();
    let err = norse_import::import(&file, "layer1", p.clone(), DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("layer1.input_weights") && err.contains("recurrent_weights"),
        "{err}"
    );
    let cell = norse_import::import(&file, "", p, DType::F64, &Device::Cpu).unwrap();
    assert_eq!((cell.input_size(), cell.hidden_size()), (8, 16));
    assert_eq!(cell.input_weights().dtype(), DType::F64);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gpu_inference_runs_where_it_can_and_agrees_with_the_cpu() {
    let dev = gpu_inference::pick_device();
    let model = gpu_inference::Model::random(12, 40).unwrap();
    let xs = Tensor::rand(0f32, 2.0, (30, 3, 12), &Device::Cpu).unwrap();
    let cpu = gpu_inference::infer(&model, &xs, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(cpu.dims(), &[30, 3, 40]);
    assert!(cpu.sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    let here = gpu_inference::infer(&model, &xs, DType::F32, &dev).unwrap();
    let differ = here
        .to_device(&Device::Cpu)
        .unwrap()
        .ne(&cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    // the same device gives the same spikes; a GPU may flip a few near threshold
    assert!(
        differ <= if dev.is_cpu() { 0.0 } else { 36.0 },
        "{differ} spikes differ"
    );
}
