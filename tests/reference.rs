//! Behaviour of the reference path: dtypes, layouts, sequences vs steps, deviations from norse,
//! the v_peak extension, parameters, initial states and every error path.

use candle_adex::reference::*;
use candle_adex::{
    AdexParameters, EncoderState, FeedForwardState, Param, RecurrentState, SurrogateMethod,
};
use candle_core::{DType, Device, IndexOp, Result, Tensor};

fn dev() -> Device {
    Device::Cpu
}

fn ramp(dims: &[usize], scale: f64, shift: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|k| ((k * 7919 % 1000) as f64 / 1000.0 * scale + shift) as f32)
        .collect();
    Tensor::from_vec(v, dims, &dev()).unwrap()
}

fn vec_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn sequence_equals_repeated_steps_and_records_states() -> Result<()> {
    for dtype in [DType::F32, DType::F64] {
        let p = AdexParameters::default();
        let xs = ramp(&[30, 2, 7], 3.0, -0.2).to_dtype(dtype)?;
        let s0 = FeedForwardState::initial(&p, (2, 7), dtype, &dev())?;
        let seq = lif_adex_feed_forward_seq(&xs, &s0, &p, true)?;
        let rec = seq.recorded.unwrap();
        let mut s = s0;
        for t in 0..30 {
            let (z, next) = lif_adex_feed_forward_step(&xs.get(t)?, &s, &p)?;
            assert_eq!(vec_f64(&z), vec_f64(&seq.spikes.get(t)?));
            assert_eq!(vec_f64(&next.v), vec_f64(&rec.v.get(t)?));
            assert_eq!(vec_f64(&next.i), vec_f64(&rec.i.get(t)?));
            assert_eq!(vec_f64(&next.a), vec_f64(&rec.a.get(t)?));
            s = next;
        }
        assert_eq!(vec_f64(&s.v), vec_f64(&seq.state.v));
        assert!(vec_f64(&seq.spikes).iter().sum::<f64>() > 10.0);
    }
    Ok(())
}

#[test]
fn half_precision_is_f32_computation_rounded_once() -> Result<()> {
    let p = AdexParameters::default();
    for dtype in [DType::F16, DType::BF16] {
        let xs = ramp(&[40, 3, 5], 2.0, 0.0).to_dtype(dtype)?;
        let s0 = FeedForwardState::initial(&p, (3, 5), dtype, &dev())?;
        let low = lif_adex_feed_forward_seq(&xs, &s0, &p, true)?;
        let s32 = FeedForwardState::initial(&p, (3, 5), DType::F32, &dev())?;
        let full = lif_adex_feed_forward_seq(&xs.to_dtype(DType::F32)?, &s32, &p, true)?;
        assert_eq!(low.spikes.dtype(), dtype);
        assert_eq!(vec_f64(&low.spikes), vec_f64(&full.spikes));
        let rounded = full.recorded.unwrap().v.to_dtype(dtype)?;
        assert_eq!(vec_f64(&low.recorded.unwrap().v), vec_f64(&rounded));
    }
    Ok(())
}

#[test]
fn strided_inputs_give_the_same_results() -> Result<()> {
    let p = AdexParameters::default();
    let xs = ramp(&[2, 7, 25], 3.0, 0.0); // [B, N, T]
    let strided = xs.permute((2, 0, 1))?; // [T, B, N], not contiguous
    assert!(!strided.is_contiguous());
    let s0 = FeedForwardState::initial(&p, (2, 7), DType::F32, &dev())?;
    let a = lif_adex_feed_forward_seq(&strided, &s0, &p, false)?;
    let b = lif_adex_feed_forward_seq(&strided.contiguous()?, &s0, &p, false)?;
    assert_eq!(vec_f64(&a.spikes), vec_f64(&b.spikes));
    assert_eq!(vec_f64(&a.state.v), vec_f64(&b.state.v));
    // a strided state too
    let v = ramp(&[7, 2], 1.0, 0.0).t()?;
    let s = FeedForwardState {
        v: v.clone(),
        i: v.zeros_like()?,
        a: v.zeros_like()?,
    };
    let (_, x1) = lif_adex_feed_forward_step(&strided.get(0)?, &s, &p)?;
    let s = FeedForwardState {
        v: v.contiguous()?,
        i: v.zeros_like()?,
        a: v.zeros_like()?,
    };
    let (_, x2) = lif_adex_feed_forward_step(&strided.get(0)?.contiguous()?, &s, &p)?;
    assert_eq!(vec_f64(&x1.v), vec_f64(&x2.v));
    Ok(())
}

#[test]
fn exp_overflow_resets_instead_of_nan() -> Result<()> {
    let p = AdexParameters::default();
    for dtype in [DType::F32, DType::F64, DType::F16, DType::BF16] {
        let v = Tensor::new(&[10f32, 45.4, 100.0, 1e30, 3e38], &dev())?.to_dtype(dtype)?;
        let zero = v.zeros_like()?;
        let s = FeedForwardState {
            v,
            i: zero.clone(),
            a: zero.clone(),
        };
        let (z, next) = lif_adex_feed_forward_step(&zero, &s, &p)?;
        for (k, (zk, vk)) in vec_f64(&z).iter().zip(vec_f64(&next.v)).enumerate() {
            if vec_f64(&s.v)[k].is_finite() {
                assert_eq!((*zk, vk), (1.0, 0.0), "{dtype:?} neuron {k}");
            }
        }
    }
    // huge but finite input currents: still no NaN in v
    let xs = Tensor::full(1e37f32, (5, 3), &dev())?;
    let s0 = FeedForwardState::initial(&p, 3, DType::F32, &dev())?;
    let out = lif_adex_feed_forward_seq(&xs, &s0, &p, true)?;
    assert!(vec_f64(&out.recorded.unwrap().v)
        .iter()
        .all(|v| v.is_finite()));
    Ok(())
}

#[test]
fn overflow_gradients_stay_finite() -> Result<()> {
    let p = AdexParameters::default();
    let v = candle_core::Var::new(&[50f32, 0.5, 300.0], &dev())?;
    let zero = Tensor::zeros(3, DType::F32, &dev())?;
    let s = FeedForwardState {
        v: v.as_tensor().clone(),
        i: zero.clone(),
        a: zero.clone(),
    };
    let (z, next) = lif_adex_feed_forward_step(&zero, &s, &p)?;
    let grads = (z.sum_all()? + next.v.sum_all()? + next.a.sum_all()?)?.backward()?;
    let g = vec_f64(grads.get(v.as_tensor()).unwrap());
    assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
    Ok(())
}

#[test]
fn per_neuron_parameters_broadcast_over_the_last_dimension() -> Result<()> {
    let v_th = Tensor::new(&[0.5f32, 1.0, 2.0], &dev())?;
    let p = AdexParameters {
        v_th: v_th.clone().into(),
        ..Default::default()
    };
    let xs = ramp(&[20, 4, 3], 1.0, 0.3);
    let s0 = FeedForwardState::initial(&p, (4, 3), DType::F32, &dev())?;
    let out = lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
    // the same as three separate scalar runs
    for (k, th) in [0.5, 1.0, 2.0].into_iter().enumerate() {
        let pk = AdexParameters {
            v_th: th.into(),
            ..Default::default()
        };
        let col = xs.i((.., .., k..k + 1))?.contiguous()?;
        let sk = FeedForwardState::initial(&pk, (4, 1), DType::F32, &dev())?;
        let ok = lif_adex_feed_forward_seq(&col, &sk, &pk, false)?;
        assert_eq!(
            vec_f64(&ok.spikes),
            vec_f64(&out.spikes.i((.., .., k..k + 1))?)
        );
    }
    Ok(())
}

#[test]
fn v_peak_moves_the_spike_cutoff_only() -> Result<()> {
    let base = AdexParameters::default();
    let peaked = AdexParameters {
        v_peak: Some(5.0.into()),
        ..Default::default()
    };
    let v = Tensor::new(&[1.5f64, 3.0, 6.0], &dev())?;
    let zero = v.zeros_like()?;
    let s = FeedForwardState {
        v,
        i: zero.clone(),
        a: zero.clone(),
    };
    let (z0, n0) = lif_adex_feed_forward_step(&zero, &s, &base)?;
    let (z1, n1) = lif_adex_feed_forward_step(&zero, &s, &peaked)?;
    assert_eq!(vec_f64(&z0), [1.0, 1.0, 1.0]);
    assert_eq!(vec_f64(&z1), [0.0, 1.0, 1.0]); // 3.0 runs away past 5 within the step
                                               // below the cutoff the membrane update is the same (exponential centred on v_th)
    let s_low = FeedForwardState {
        v: Tensor::new(&[0.9f64], &dev())?,
        i: Tensor::new(&[0.0f64], &dev())?,
        a: Tensor::new(&[0.0f64], &dev())?,
    };
    let x = Tensor::new(&[0.0f64], &dev())?;
    let (_, a) = lif_adex_feed_forward_step(&x, &s_low, &base)?;
    let (_, b) = lif_adex_feed_forward_step(&x, &s_low, &peaked)?;
    assert_eq!(vec_f64(&a.v), vec_f64(&b.v));
    // the neuron at 1.5 is above v_th but below v_peak: not reset (norse's rule resets it)
    assert!(vec_f64(&n1.v)[0] > 1.0 && vec_f64(&n0.v)[0] == 0.0);
    Ok(())
}

#[test]
fn encoder_is_the_feed_forward_update_without_synaptic_current() -> Result<()> {
    let p = AdexParameters::default();
    let xs = ramp(&[50, 6], 10.0, 0.0);
    let e0 = EncoderState::initial(&p, 6, DType::F32, &dev())?;
    let enc = lif_adex_current_encoder_seq(&xs, &e0, &p, true)?;
    let mut s = FeedForwardState::initial(&p, 6, DType::F32, &dev())?;
    for t in 0..50 {
        s.i = s.i.zeros_like()?;
        let (z, next) = lif_adex_feed_forward_step(&xs.get(t)?, &s, &p)?;
        assert_eq!(vec_f64(&z), vec_f64(&enc.spikes.get(t)?));
        s = next;
    }
    assert_eq!(vec_f64(&s.a), vec_f64(&enc.state.a));
    // norse 1.1.0's version diverges on the same input, ours does not
    let norse = lif_adex_current_encoder_norse_1_1_0_seq(
        &Tensor::zeros((150, 6), DType::F32, &dev())?,
        &EncoderState {
            v: e0.v.clone(),
            a: e0.a.ones_like()?,
        },
        &p,
        false,
    )?;
    assert!(vec_f64(&norse.state.a).iter().all(|a| !a.is_finite()));
    Ok(())
}

#[test]
fn unbatched_and_empty_sequences() -> Result<()> {
    let p = AdexParameters::default();
    let s0 = FeedForwardState::initial(&p, 4, DType::F32, &dev())?;
    let out = lif_adex_feed_forward_seq(&ramp(&[10, 4], 2.0, 0.0), &s0, &p, true)?;
    assert_eq!(out.spikes.dims(), &[10, 4]);
    let empty =
        lif_adex_feed_forward_seq(&Tensor::zeros((0, 4), DType::F32, &dev())?, &s0, &p, true)?;
    assert_eq!(empty.spikes.dims(), &[0, 4]);
    assert_eq!(empty.recorded.unwrap().v.dims(), &[0, 4]);
    assert_eq!(vec_f64(&empty.state.v), vec_f64(&s0.v));
    // recurrent, unbatched
    let rs = RecurrentState::initial(&p, 3, DType::F32, &dev())?;
    let w_in = Tensor::ones((3, 2), DType::F32, &dev())?;
    let w_rec = Tensor::zeros((3, 3), DType::F32, &dev())?;
    let r = lif_adex_seq(
        &Tensor::ones((5, 2), DType::F32, &dev())?,
        &rs,
        &w_in,
        &w_rec,
        &p,
        false,
    )?;
    assert_eq!(r.spikes.dims(), &[5, 3]);
    Ok(())
}

#[test]
fn initial_states_follow_norse() -> Result<()> {
    let v_leak = Tensor::new(&[-0.1f32, 0.0, 0.2], &dev())?;
    let p = AdexParameters {
        v_leak: v_leak.into(),
        ..Default::default()
    };
    let s = RecurrentState::initial(&p, (2, 3), DType::BF16, &dev())?;
    assert_eq!(s.v.dtype(), DType::BF16);
    assert_eq!(
        vec_f64(&s.v.to_dtype(DType::F32)?),
        vec_f64(&Tensor::new(&[[-0.1f32, 0.0, 0.2]; 2], &dev())?.to_dtype(DType::BF16)?)
    );
    for t in [&s.z, &s.i, &s.a] {
        assert!(vec_f64(t).iter().all(|x| *x == 0.0));
    }
    let err = FeedForwardState::initial(&p, (2, 4), DType::F32, &dev())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("v_leak") && err.contains("per-neuron length 3"),
        "{err}"
    );
    let err = FeedForwardState::initial(&AdexParameters::default(), 3, DType::U8, &dev())
        .unwrap_err()
        .to_string();
    assert!(err.contains("U8"), "{err}");
    Ok(())
}

#[test]
fn invalid_parameters_are_named() {
    let cases: Vec<(AdexParameters, &str, &str)> = vec![
        (
            AdexParameters {
                delta_t: 0.0.into(),
                ..Default::default()
            },
            "delta_T",
            "> 0",
        ),
        (
            AdexParameters {
                tau_mem_inv: (-1.0).into(),
                ..Default::default()
            },
            "tau_mem_inv",
            ">= 0",
        ),
        (
            AdexParameters {
                tau_syn_inv: (-1.0).into(),
                ..Default::default()
            },
            "tau_syn_inv",
            ">= 0",
        ),
        (
            AdexParameters {
                tau_ada_inv: (-1.0).into(),
                ..Default::default()
            },
            "tau_ada_inv",
            ">= 0",
        ),
        (
            AdexParameters {
                v_th: f64::NAN.into(),
                ..Default::default()
            },
            "v_th",
            "finite",
        ),
        (
            AdexParameters {
                v_peak: Some(f64::INFINITY.into()),
                ..Default::default()
            },
            "v_peak",
            "finite",
        ),
        (
            AdexParameters {
                alpha: 0.0,
                ..Default::default()
            },
            "alpha",
            "> 0",
        ),
        (
            AdexParameters {
                dt: -0.001,
                ..Default::default()
            },
            "dt",
            "> 0",
        ),
        (
            AdexParameters {
                adaptation_spike: Param::Tensor(
                    Tensor::new(&[0.1f32, f32::NAN], &Device::Cpu).unwrap(),
                ),
                ..Default::default()
            },
            "adaptation_spike",
            "at neuron 1",
        ),
        (
            AdexParameters {
                v_reset: Param::Tensor(Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap()),
                ..Default::default()
            },
            "v_reset",
            "[N]",
        ),
    ];
    for (p, field, rule) in cases {
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains(field) && err.contains(rule), "{field}: {err}");
        // and every entry point refuses it
        let x = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        let s = FeedForwardState {
            v: x.clone(),
            i: x.clone(),
            a: x.clone(),
        };
        let err = lif_adex_feed_forward_step(&x, &s, &p)
            .unwrap_err()
            .to_string();
        assert!(err.contains(field), "{err}");
    }
    let err = "sigmoid"
        .parse::<SurrogateMethod>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("sigmoid") && err.contains("heavi_erfc") && err.contains("heaviside"));
    for m in SurrogateMethod::ALL {
        assert_eq!(m.name().parse::<SurrogateMethod>().unwrap(), m);
    }
}

#[test]
fn shape_dtype_and_layout_errors_are_clear() {
    let p = AdexParameters::default();
    let f = |dims: &[usize], dtype| Tensor::zeros(dims, dtype, &Device::Cpu).unwrap();
    let s = FeedForwardState {
        v: f(&[2, 3], DType::F32),
        i: f(&[2, 3], DType::F32),
        a: f(&[2, 3], DType::F32),
    };
    let msg = |r: Result<(Tensor, FeedForwardState)>| r.unwrap_err().to_string();
    assert!(
        msg(lif_adex_feed_forward_step(&f(&[2, 4], DType::F32), &s, &p))
            .contains("input has shape [2, 4]")
    );
    assert!(msg(lif_adex_feed_forward_step(&f(&[2, 3], DType::F64), &s, &p)).contains("dtype F32"));
    assert!(msg(lif_adex_feed_forward_step(&f(&[2, 3], DType::U32), &s, &p)).contains("U32"));
    let bad = FeedForwardState {
        a: f(&[3, 2], DType::F32),
        ..s.clone()
    };
    assert!(msg(lif_adex_feed_forward_step(
        &f(&[2, 3], DType::F32),
        &bad,
        &p
    ))
    .contains("state.a has shape [3, 2]"));
    let pn = AdexParameters {
        v_th: Param::Tensor(f(&[4], DType::F32)),
        ..Default::default()
    };
    let err = msg(lif_adex_feed_forward_step(&f(&[2, 3], DType::F32), &s, &pn));
    assert!(
        err.contains("v_th") && err.contains("per-neuron length 4") && err.contains("3 neurons"),
        "{err}"
    );
    let seq = lif_adex_feed_forward_seq(&f(&[3], DType::F32), &s, &p, false)
        .unwrap_err()
        .to_string();
    assert!(seq.contains("time-first"), "{seq}");
    let seq = lif_adex_feed_forward_seq(&f(&[5, 2, 4], DType::F32), &s, &p, false)
        .unwrap_err()
        .to_string();
    assert!(seq.contains("per step"), "{seq}");
    // recurrent weights
    let rs = RecurrentState::initial(&p, (2, 3), DType::F32, &Device::Cpu).unwrap();
    let x = f(&[2, 5], DType::F32);
    let err = lif_adex_step(
        &x,
        &rs,
        &f(&[3, 4], DType::F32),
        &f(&[3, 3], DType::F32),
        &p,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("input_weights must have shape [N, I] = [3, 5]"),
        "{err}"
    );
    let err = lif_adex_step(
        &x,
        &rs,
        &f(&[3, 5], DType::F32),
        &f(&[3, 2], DType::F32),
        &p,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("recurrent_weights must have shape [N, N] = [3, 3]"),
        "{err}"
    );
    let err = lif_adex_step(
        &f(&[4, 5], DType::F32),
        &rs,
        &f(&[3, 5], DType::F32),
        &f(&[3, 3], DType::F32),
        &p,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("every dimension but the last"), "{err}");
    let err = lif_adex_step(
        &x,
        &rs,
        &f(&[3, 5], DType::F64),
        &f(&[3, 3], DType::F32),
        &p,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("input_weights has dtype F64"), "{err}");
    // a scalar state
    let s0 = FeedForwardState {
        v: Tensor::new(0f32, &Device::Cpu).unwrap(),
        i: Tensor::new(0f32, &Device::Cpu).unwrap(),
        a: Tensor::new(0f32, &Device::Cpu).unwrap(),
    };
    let err = msg(lif_adex_feed_forward_step(
        &Tensor::new(0f32, &Device::Cpu).unwrap(),
        &s0,
        &p,
    ));
    assert!(err.contains("at least one dimension"), "{err}");
}
