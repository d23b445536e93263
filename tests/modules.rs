//! The candle-nn modules: equal to the functional calls, norse's initialisation and autapses
//! rule, event-driven recurrence equal to dense, gradients equal through both paths, and clear
//! errors.

use candle_adex::fused::RecurrentInput;
use candle_adex::modules::{
    LifAdex, LifAdexCell, LifAdexEncoder, LifAdexRecurrent, LifAdexRecurrentCell, RecurrentConfig,
};
use candle_adex::ops::{with_path, Path};
use candle_adex::{
    lif_adex_current_encoder_seq, lif_adex_feed_forward_seq, lif_adex_feed_forward_step,
    AdexParameters, EncoderState, FeedForwardState, Param, RecurrentState,
};
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap, RNN};

const CPU: Device = Device::Cpu;

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn varmap_cell(
    i: usize,
    h: usize,
    dtype: DType,
    config: RecurrentConfig,
) -> (VarMap, LifAdexRecurrentCell) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, dtype, &CPU);
    let cell = LifAdexRecurrentCell::new(i, h, AdexParameters::default(), config, vb).unwrap();
    (varmap, cell)
}

/// A cell with plain (untracked) random weights, for inference.
fn plain_cell(i: usize, h: usize, dtype: DType) -> LifAdexRecurrentCell {
    let std = (2.0 / h as f64).sqrt();
    let w = |r, c| {
        Tensor::randn(0f64, std, (r, c), &CPU)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    };
    LifAdexRecurrentCell::from_weights(w(h, i), w(h, h), AdexParameters::default(), false).unwrap()
}

fn diagonal(w: &Tensor) -> Vec<f64> {
    let rows = w.to_dtype(DType::F64).unwrap().to_vec2::<f64>().unwrap();
    rows.iter().enumerate().map(|(k, r)| r[k]).collect()
}

#[test]
fn feed_forward_modules_equal_the_functional_calls() -> Result<()> {
    let p = AdexParameters::default();
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        for dims in [vec![60, 7], vec![60, 3, 7]] {
            let xs = Tensor::rand(-1f32, 4.0, dims.as_slice(), &CPU)?.to_dtype(dtype)?;
            let s0 = FeedForwardState::initial(&p, &dims[1..], dtype, &CPU)?;
            let want = lif_adex_feed_forward_seq(&xs, &s0, &p, true)?;
            let layer = LifAdex::new(p.clone())?.with_record_states(true);
            let got = layer.run(&xs, None)?;
            assert_eq!(max_diff(&got.spikes, &want.spikes), 0.0);
            assert_eq!(max_diff(&got.state.v, &want.state.v), 0.0);
            assert_eq!(got.recorded.unwrap().a.dims(), &dims[..]);
            assert_eq!(max_diff(&layer.forward(&xs)?, &want.spikes), 0.0);
            // explicit state in and out: two halves equal the whole
            let first = layer.run(&xs.narrow(0, 0, 25)?, None)?;
            let second = layer.run(&xs.narrow(0, 25, 35)?, Some(&first.state))?;
            // (half types keep an f32 state inside a call but return it rounded)
            if dtype != DType::BF16 {
                assert_eq!(max_diff(&second.state.a, &want.state.a), 0.0);
            }
            // the cell, once per step, from the initial state
            let cell = LifAdexCell::new(p.clone())?;
            let (z, s) = cell.step(&xs.get(0)?, None)?;
            let (z_ref, s_ref) = lif_adex_feed_forward_step(&xs.get(0)?, &s0, &p)?;
            assert_eq!(max_diff(&z, &z_ref), 0.0);
            assert_eq!(max_diff(&s.i, &s_ref.i), 0.0);
            // norse's initial state
            let init = layer.initial_state(&xs)?;
            assert_eq!(init.v.dims(), &dims[1..]);
            assert_eq!(max_diff(&init.v, &s0.v), 0.0);
        }
    }
    // the encoder module
    let xs = Tensor::rand(0f64, 300.0, (80, 2, 5), &CPU)?;
    let s0 = EncoderState::initial(&p, (2, 5), DType::F64, &CPU)?;
    let want = lif_adex_current_encoder_seq(&xs, &s0, &p, false)?;
    let enc = LifAdexEncoder::new(p.clone())?;
    assert_eq!(max_diff(&enc.forward(&xs)?, &want.spikes), 0.0);
    assert!(want.spikes.sum_all()?.to_scalar::<f64>()? > 0.0);
    let (z0, _) = enc.step(&xs.get(0)?, None)?;
    assert_eq!(max_diff(&z0, &want.spikes.get(0)?), 0.0);
    Ok(())
}

#[test]
fn recurrent_cell_loop_and_rnn_trait_equal_the_sequence() -> Result<()> {
    let (_vm, cell) = varmap_cell(5, 19, DType::F64, RecurrentConfig::default());
    let xs = (Tensor::rand(0f64, 1.0, (70, 3, 5), &CPU)? * 4.0)?;
    let config = RecurrentConfig {
        record_states: true,
        recurrent_input: RecurrentInput::Dense,
        ..Default::default()
    };
    let layer = LifAdexRecurrent::from_cell(cell.clone(), config);
    let out = layer.run(&xs, None)?;
    assert!(
        out.spikes.sum_all()?.to_scalar::<f64>()? > 10.0,
        "the case must spike"
    );
    let mut state: Option<RecurrentState> = None;
    for t in 0..70 {
        let (z, next) = cell.step(&xs.get(t)?, state.as_ref())?;
        assert!(max_diff(&z, &out.spikes.get(t)?) == 0.0, "step {t}");
        state = Some(next);
    }
    let state = state.unwrap();
    assert!(max_diff(&state.v, &out.state.v) < 1e-12);
    // candle-nn's RNN trait: batch-first
    let states = cell.seq(&xs.transpose(0, 1)?)?;
    let zs = cell.states_to_tensor(&states)?;
    assert_eq!(zs.dims(), &[3, 70, 19]);
    assert_eq!(max_diff(&zs.transpose(0, 1)?, &out.spikes), 0.0);
    // unbatched input [T, I]
    let single = layer.run(&xs.narrow(1, 1, 1)?.squeeze(1)?, None)?;
    assert_eq!(single.spikes.dims(), &[70, 19]);
    assert!(max_diff(&single.spikes, &out.spikes.narrow(1, 1, 1)?.squeeze(1)?) == 0.0);
    Ok(())
}

#[test]
fn weights_follow_norse_initialisation() -> Result<()> {
    let (h, i) = (256, 64);
    let (varmap, cell) = varmap_cell(i, h, DType::F32, RecurrentConfig::default());
    let mut names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["input_weights", "recurrent_weights"]);
    assert_eq!(cell.input_weights().dims(), &[h, i]);
    let want = (2.0 / h as f64).sqrt();
    let std = |t: &Tensor| -> f64 {
        let v = t
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
    };
    let s_in = std(cell.input_weights());
    assert!(
        (s_in / want - 1.0).abs() < 0.03,
        "input std {s_in} vs {want}"
    );
    // the recurrent weights the cell uses: that std off the diagonal, zero on it
    let w = cell.recurrent_weights()?;
    let off: f64 = std(&w) * (h as f64 / (h as f64 - 1.0)).sqrt();
    assert!(
        (off / want - 1.0).abs() < 0.03,
        "recurrent std {off} vs {want}"
    );
    assert!(diagonal(&w).iter().all(|&d| d == 0.0));
    Ok(())
}

#[test]
fn no_autapses_keeps_the_diagonal_zero_through_training() -> Result<()> {
    for autapses in [false, true] {
        let config = RecurrentConfig {
            autapses,
            recurrent_input: RecurrentInput::Dense,
            ..Default::default()
        };
        let (varmap, cell) = varmap_cell(4, 9, DType::F64, config);
        let layer = LifAdexRecurrent::from_cell(cell.clone(), config);
        let mut sgd = candle_nn::SGD::new(varmap.all_vars(), 0.5)?;
        let mut adamw = candle_nn::AdamW::new(
            varmap.all_vars(),
            candle_nn::ParamsAdamW {
                lr: 0.1,
                weight_decay: 0.1,
                ..Default::default()
            },
        )?;
        let xs = (Tensor::rand(0f64, 1.0, (40, 2, 4), &CPU)? * 6.0)?;
        for k in 0..4 {
            let out = layer.run(&xs, None)?;
            let loss = (out.spikes.sum_all()? + out.state.v.sqr()?.sum_all()?)?;
            let grads = loss.backward()?;
            let w_var = varmap.data().lock().unwrap()["recurrent_weights"].clone();
            let g = grads
                .get(w_var.as_tensor())
                .expect("recurrent weights get a gradient");
            assert!(g.abs()?.sum_all()?.to_scalar::<f64>()? > 0.0);
            let diag_grad = diagonal(g);
            if autapses {
                assert!(diag_grad.iter().any(|&d| d != 0.0));
            } else {
                assert!(diag_grad.iter().all(|&d| d == 0.0), "{diag_grad:?}");
            }
            if k % 2 == 0 {
                sgd.step(&grads)?;
            } else {
                adamw.step(&grads)?;
            }
            let used = diagonal(&cell.recurrent_weights()?);
            assert_eq!(used.iter().all(|&d| d == 0.0), !autapses, "{used:?}");
        }
    }
    // without autapses a purely self-connected network gets no recurrent input at all
    let p = AdexParameters::default();
    let w_in = Tensor::full(1f64, (3, 2), &CPU)?;
    let selfish = (Tensor::eye(3, DType::F64, &CPU)? * 50.0)?;
    // A fixed, moderate drive: the neurons spike now and then, so a self-connection (which
    // makes a spiking neuron spike again at once) changes the trains. A random or strong drive
    // could make every neuron spike at every step with or without it.
    let drive: Vec<f64> = (0..120)
        .map(|k| 0.3 + 0.05 * ((k * 7) % 5) as f64)
        .collect();
    let xs = Tensor::from_vec(drive, (60, 2), &CPU)?;
    let run = |w_rec: &Tensor, autapses| -> Result<Tensor> {
        let cell =
            LifAdexRecurrentCell::from_weights(w_in.clone(), w_rec.clone(), p.clone(), autapses)?;
        LifAdexRecurrent::from_cell(cell, RecurrentConfig::default()).forward(&xs)
    };
    let zero = Tensor::zeros((3, 3), DType::F64, &CPU)?;
    assert_eq!(max_diff(&run(&selfish, false)?, &run(&zero, false)?), 0.0);
    let plain = run(&zero, true)?;
    assert!(
        plain.sum_all()?.to_scalar::<f64>()? > 0.0,
        "the drive makes spikes"
    );
    assert!(max_diff(&run(&selfish, true)?, &plain) > 0.0);
    Ok(())
}

/// Spike flips and the largest v difference between two `[T, ...]` runs.
fn compare_runs(
    a: &candle_adex::Sequence<RecurrentState>,
    b: &candle_adex::Sequence<RecurrentState>,
) -> (usize, f64) {
    let za = a
        .spikes
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let zb = b
        .spikes
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let flips = za.iter().zip(&zb).filter(|(x, y)| x != y).count();
    (flips, max_diff(&a.state.v, &b.state.v))
}

#[test]
fn event_driven_recurrence_equals_dense() -> Result<()> {
    // drives giving low, medium and high spike densities
    for (dtype, tol) in [(DType::F64, 1e-10), (DType::F32, 1e-4)] {
        for drive in [1.0, 3.0, 12.0] {
            let cell = plain_cell(6, 67, dtype);
            let xs = (Tensor::rand(0f32, 1.0, (120, 3, 6), &CPU)? * drive)?.to_dtype(dtype)?;
            let layer = LifAdexRecurrent::from_cell(cell.clone(), RecurrentConfig::default());
            let run = |how| layer.clone().with_recurrent_input(how).run(&xs, None);
            let dense = run(RecurrentInput::Dense)?;
            let density = dense
                .spikes
                .to_dtype(DType::F64)?
                .mean_all()?
                .to_scalar::<f64>()?;
            for how in [RecurrentInput::EventDriven, RecurrentInput::Auto] {
                let other = run(how)?;
                let (flips, dv) = compare_runs(&dense, &other);
                assert!(flips == 0 && dv < tol, "{dtype:?} drive {drive} (density {density:.3}) {how:?}: {flips} flips, dv {dv}");
            }
        }
    }
    // a non-binary initial z (a user's state) is weighted, not just counted
    let cell = plain_cell(2, 5, DType::F64);
    let layer = LifAdexRecurrent::from_cell(cell.clone(), RecurrentConfig::default());
    let xs = Tensor::zeros((1, 2), DType::F64, &CPU)?;
    let mut s0 = layer.initial_state(&xs)?;
    s0.z = Tensor::new(&[0.5f64, 0.0, -2.0, 0.0, 0.25], &CPU)?;
    let dense = layer
        .clone()
        .with_recurrent_input(RecurrentInput::Dense)
        .run(&xs, Some(&s0))?;
    let sparse = layer
        .clone()
        .with_recurrent_input(RecurrentInput::EventDriven)
        .run(&xs, Some(&s0))?;
    assert!(max_diff(&dense.state.i, &sparse.state.i) < 1e-14);
    assert!(max_diff(&dense.state.i, &Tensor::zeros(5, DType::F64, &CPU)?) > 0.0);
    Ok(())
}

#[test]
fn event_driven_refuses_gradients_and_auto_falls_back_to_dense() -> Result<()> {
    let (varmap, cell) = varmap_cell(3, 8, DType::F32, RecurrentConfig::default());
    let xs = (Tensor::rand(0f32, 1.0, (30, 2, 3), &CPU)? * 5.0)?;
    let sparse = LifAdexRecurrent::from_cell(cell.clone(), RecurrentConfig::default())
        .with_recurrent_input(RecurrentInput::EventDriven);
    // weights from a VarMap are tracked
    let err = sparse.run(&xs, None).unwrap_err().to_string();
    assert!(err.contains("no gradient"), "{err}");
    // Auto trains (dense, differentiable)
    let auto = LifAdexRecurrent::from_cell(cell, RecurrentConfig::default());
    let loss = auto.run(&xs, None)?.state.v.sum_all()?;
    let grads = loss.backward()?;
    for var in varmap.all_vars() {
        assert!(grads.get(var.as_tensor()).is_some());
    }
    // plain tensors: event-driven works
    let cell = LifAdexRecurrentCell::from_weights(
        Tensor::ones((8, 3), DType::F32, &CPU)?,
        Tensor::ones((8, 8), DType::F32, &CPU)?,
        AdexParameters::default(),
        false,
    )?;
    let layer = LifAdexRecurrent::from_cell(cell, RecurrentConfig::default())
        .with_recurrent_input(RecurrentInput::EventDriven);
    assert_eq!(layer.run(&xs, None)?.spikes.dims(), &[30, 2, 8]);
    // the reference path has no event-driven input: a clear error, not a silent switch
    let err = with_path(Path::Reference, || layer.run(&xs, None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("event-driven"), "{err}");
    Ok(())
}

#[test]
fn gradients_through_fused_and_reference_paths_agree() -> Result<()> {
    let p = AdexParameters {
        alpha: 10.0,
        ..Default::default()
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &CPU);
    let config = RecurrentConfig {
        recurrent_input: RecurrentInput::Dense,
        ..Default::default()
    };
    let rec = LifAdexRecurrent::new(4, 11, p.clone(), config, vb.pp("rec"))?;
    let ff = LifAdex::new(p)?;
    let xs = Var::from_tensor(&(Tensor::rand(0f64, 1.0, (50, 2, 4), &CPU)? * 5.0)?)?;
    let weights = Tensor::rand(-1f64, 1.0, (50, 2, 11), &CPU)?;
    let grads = |path| -> Result<Vec<Tensor>> {
        with_path(path, || {
            let s = rec.run(xs.as_tensor(), None)?;
            let out = ff.run(&(&s.spikes * 3.0)?, None)?;
            let loss = ((&out.spikes * &weights)?.sum_all()?
                + out.state.v.sum_all()?
                + s.state.v.sqr()?.sum_all()?)?;
            let g = loss.backward()?;
            let mut list = vec![g.get(xs.as_tensor()).unwrap().clone()];
            for name in ["rec.input_weights", "rec.recurrent_weights"] {
                let var = varmap.data().lock().unwrap()[name].clone();
                list.push(g.get(var.as_tensor()).unwrap().clone());
            }
            Ok(list)
        })
    };
    let fused = grads(Path::Fused)?;
    let reference = grads(Path::Reference)?;
    for (name, (f, r)) in ["input", "input_weights", "recurrent_weights"]
        .iter()
        .zip(fused.iter().zip(&reference))
    {
        let scale = r.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(scale > 0.0, "{name}: zero gradient");
        let err = max_diff(f, r) / scale;
        assert!(err < 1e-9, "{name}: normwise {err}");
    }
    Ok(())
}

#[test]
fn bad_input_gives_errors_that_name_it() {
    let (_vm, cell) = varmap_cell(3, 5, DType::F32, RecurrentConfig::default());
    let layer = LifAdexRecurrent::from_cell(cell.clone(), RecurrentConfig::default());
    let msg = |r: Result<candle_adex::Sequence<RecurrentState>>| r.unwrap_err().to_string();
    // wrong feature count
    let e = msg(layer.run(&Tensor::zeros((10, 2, 4), DType::F32, &CPU).unwrap(), None));
    assert!(e.contains("input_weights") && e.contains("[5, 4]"), "{e}");
    // wrong dtype
    let e = msg(layer.run(&Tensor::zeros((10, 2, 3), DType::F64, &CPU).unwrap(), None));
    assert!(e.contains("dtype"), "{e}");
    // not time-first
    let e = msg(layer.run(&Tensor::zeros(3, DType::F32, &CPU).unwrap(), None));
    assert!(e.contains("time-first"), "{e}");
    // a state of the wrong size
    let xs = Tensor::zeros((10, 2, 3), DType::F32, &CPU).unwrap();
    let bad =
        RecurrentState::initial(&AdexParameters::default(), (2, 6), DType::F32, &CPU).unwrap();
    let e = msg(layer.run(&xs, Some(&bad)));
    assert!(e.contains("[5, 5]") || e.contains("shape"), "{e}");
    // construction: weights [H, I] and [H, H] of one dtype, parameters of H neurons
    let build = |w_rec: (usize, usize), rec_dtype, v_th: Param| {
        let p = AdexParameters {
            v_th,
            ..Default::default()
        };
        let w_in = Tensor::zeros((5, 3), DType::F32, &CPU).unwrap();
        let w_rec = Tensor::zeros(w_rec, rec_dtype, &CPU).unwrap();
        LifAdexRecurrentCell::from_weights(w_in, w_rec, p, false)
            .unwrap_err()
            .to_string()
    };
    let e = build((5, 4), DType::F32, 1.0.into());
    assert!(
        e.contains("recurrent_weights must be [H, H] = [5, 5]"),
        "{e}"
    );
    let e = build((5, 5), DType::F64, 1.0.into());
    assert!(e.contains("dtype"), "{e}");
    let e = build(
        (5, 5),
        DType::F32,
        Param::Tensor(Tensor::ones(4, DType::F32, &CPU).unwrap()),
    );
    assert!(e.contains("v_th"), "{e}");
    let vb = VarBuilder::zeros(DType::F32, &CPU);
    let e = LifAdexRecurrentCell::new(
        0,
        5,
        AdexParameters::default(),
        RecurrentConfig::default(),
        vb,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("input_size"), "{e}");
    let bad_params = AdexParameters {
        dt: -1.0,
        ..Default::default()
    };
    assert!(LifAdex::new(bad_params)
        .unwrap_err()
        .to_string()
        .contains("dt"));
    let e = LifAdex::new(AdexParameters::default())
        .unwrap()
        .forward(&Tensor::zeros(5, DType::F32, &CPU).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("time-first"), "{e}");
}
