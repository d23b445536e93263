//! The fused CPU kernels held to the reference path: every dtype, every instruction-set path
//! this CPU has, odd sizes, per-neuron parameters, strided inputs, recording, threads and
//! streaming stores, u8 spikes and caller-owned buffers; gradients for every surrogate method.

use candle_adex::fused::cpu::{with_isa, Isa};
use candle_adex::{fused, reference, AdexParameters, EncoderState, FeedForwardState, Param};
use candle_adex::{RecurrentState, Sequence, SurrogateMethod};
use candle_core::{DType, Device, Result, Tensor, Var};

mod common;
use common::{currents, per_neuron_params, tol};

const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

fn to_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// Spikes `[T, ..., N]` and states compared neuron by neuron: a neuron whose spike train differs
/// (a flip near threshold) is counted and excluded from the state comparison.
fn compare(
    what: &str,
    dtype: DType,
    fast_spikes: &Tensor,
    slow_spikes: &Tensor,
    fast_states: &[(&str, &Tensor)],
    slow_states: &[&Tensor],
    steps: usize,
) -> Result<usize> {
    assert_eq!(
        fast_spikes.dims(),
        slow_spikes.dims(),
        "{what}: spike shape"
    );
    assert_eq!(fast_spikes.dtype(), dtype, "{what}: spike dtype");
    let (a, b) = (to_f64(fast_spikes)?, to_f64(slow_spikes)?);
    let m = a.len() / steps.max(1);
    let mut bad_neuron = vec![false; m];
    let mut flips = 0;
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(*x == 0.0 || *x == 1.0, "{what}: spike value {x}");
        if x != y {
            flips += 1;
            bad_neuron[k % m] = true;
        }
    }
    let allowed = 2 + a.len() / 10_000;
    if dtype == DType::F64 {
        assert_eq!(flips, 0, "{what}: f64 spike flips");
    }
    assert!(
        flips <= allowed,
        "{what}: {flips} spike flips in {}",
        a.len()
    );
    for ((name, f), s) in fast_states.iter().zip(slow_states) {
        assert_eq!(f.dims(), s.dims(), "{what}: {name} shape");
        assert_eq!(f.dtype(), dtype, "{what}: {name} dtype");
        let (x, y) = (to_f64(f)?, to_f64(s)?);
        let per = x.len() / m;
        for (k, (p, q)) in x.iter().zip(&y).enumerate() {
            if bad_neuron[k % m] {
                continue;
            }
            let t = tol(dtype) * (1.0 + q.abs());
            assert!(
                (p - q).abs() <= t || (p.is_nan() && q.is_nan()),
                "{what}: {name}[{k}] (of {per} per neuron): fused {p} vs reference {q}"
            );
        }
    }
    Ok(flips)
}

fn compare_ff(
    what: &str,
    dtype: DType,
    fast: &Sequence<FeedForwardState>,
    slow: &Sequence<FeedForwardState>,
) -> Result<usize> {
    let steps = slow.spikes.dim(0)?;
    let (f, s) = (&fast.state, &slow.state);
    let mut fs = vec![("v", &f.v), ("i", &f.i), ("a", &f.a)];
    let mut ss = vec![&s.v, &s.i, &s.a];
    if let (Some(fr), Some(sr)) = (&fast.recorded, &slow.recorded) {
        fs.extend([("rec v", &fr.v), ("rec i", &fr.i), ("rec a", &fr.a)]);
        ss.extend([&sr.v, &sr.i, &sr.a]);
    }
    assert_eq!(fast.recorded.is_some(), slow.recorded.is_some());
    compare(what, dtype, &fast.spikes, &slow.spikes, &fs, &ss, steps)
}

#[test]
fn feed_forward_sequence_matches_reference_for_every_dtype_and_isa() -> Result<()> {
    let dev = Device::Cpu;
    let mut total_flips = 0;
    let mut total = 0;
    for isa in Isa::available() {
        for dtype in DTYPES {
            for (steps, state_shape, per_neuron, record) in [
                (1, vec![3usize, 37], false, true),
                (257, vec![2, 131], false, false),
                (60, vec![1000], true, true),
                (9, vec![5], true, false),
            ] {
                let n = *state_shape.last().unwrap();
                let p = if per_neuron {
                    per_neuron_params(n, &Device::Cpu)?
                } else {
                    AdexParameters::default()
                };
                let mut dims = vec![steps];
                dims.extend(&state_shape);
                let xs = currents(&dims, dtype, steps as u64 + n as u64)?;
                let s0 = FeedForwardState {
                    v: currents(&state_shape, dtype, 7)?,
                    i: currents(&state_shape, dtype, 8)?,
                    a: (currents(&state_shape, dtype, 9)? * 0.1)?,
                };
                let fast = with_isa(isa, || {
                    fused::lif_adex_feed_forward_seq(&xs, &s0, &p, record)
                })??;
                let slow = reference::lif_adex_feed_forward_seq(&xs, &s0, &p, record)?;
                let what =
                    format!("{isa:?} {dtype:?} T={steps} {state_shape:?} per_neuron={per_neuron}");
                total_flips += compare_ff(&what, dtype, &fast, &slow)?;
                total += xs.elem_count();
            }
        }
    }
    // The flip rate (a last-bit difference near threshold) is reported, and bounded.
    println!("spike flips: {total_flips} in {total} neuron-steps");
    assert!(
        total_flips * 10_000 <= total,
        "{total_flips} flips in {total}"
    );
    let _ = dev;
    Ok(())
}

#[test]
fn strided_and_batched_inputs_give_the_contiguous_result() -> Result<()> {
    let p = AdexParameters::default();
    // [N, B, T] transposed to [T, B, N]: not contiguous.
    let base = currents(&[29, 3, 70], DType::F32, 3)?;
    let xs = base.permute((2, 1, 0))?;
    assert!(!xs.is_contiguous());
    let s0 = FeedForwardState::initial(&p, (3, 29), DType::F32, &Device::Cpu)?;
    // A strided state: every other column of a wider tensor.
    let wide = currents(&[3, 58], DType::F32, 4)?;
    let v = wide.narrow(1, 0, 29)?;
    let s1 = FeedForwardState {
        v: v.clone(),
        ..s0.clone()
    };
    for s in [&s0, &s1] {
        let a = fused::lif_adex_feed_forward_seq(&xs, s, &p, true)?;
        let sc = FeedForwardState {
            v: s.v.contiguous()?,
            i: s.i.clone(),
            a: s.a.clone(),
        };
        let b = fused::lif_adex_feed_forward_seq(&xs.contiguous()?, &sc, &p, true)?;
        assert_eq!(to_f64(&a.spikes)?, to_f64(&b.spikes)?);
        assert_eq!(to_f64(&a.state.v)?, to_f64(&b.state.v)?);
        assert_eq!(
            to_f64(&a.recorded.unwrap().a)?,
            to_f64(&b.recorded.unwrap().a)?
        );
        let r = reference::lif_adex_feed_forward_seq(&xs, s, &p, false)?;
        compare_ff("strided", DType::F32, &a_no_rec(&xs, s, &p)?, &r)?;
    }
    Ok(())
}

fn a_no_rec(
    xs: &Tensor,
    s: &FeedForwardState,
    p: &AdexParameters,
) -> Result<Sequence<FeedForwardState>> {
    fused::lif_adex_feed_forward_seq(xs, s, p, false)
}

#[test]
fn steps_equal_the_reference_steps_and_one_step_sequences() -> Result<()> {
    for dtype in DTYPES {
        let p = per_neuron_params(41, &Device::Cpu)?;
        let x = currents(&[4, 41], dtype, 11)?;
        let s = FeedForwardState {
            v: currents(&[4, 41], dtype, 12)?,
            i: currents(&[4, 41], dtype, 13)?,
            a: currents(&[4, 41], dtype, 14)?,
        };
        let (zf, sf) = fused::lif_adex_feed_forward_step(&x, &s, &p)?;
        let (zr, sr) = reference::lif_adex_feed_forward_step(&x, &s, &p)?;
        compare(
            &format!("step {dtype:?}"),
            dtype,
            &zf,
            &zr,
            &[("v", &sf.v), ("i", &sf.i), ("a", &sf.a)],
            &[&sr.v, &sr.i, &sr.a],
            1,
        )?;
        let seq = fused::lif_adex_feed_forward_seq(&x.unsqueeze(0)?, &s, &p, false)?;
        assert_eq!(to_f64(&seq.spikes.squeeze(0)?)?, to_f64(&zf)?);
        assert_eq!(to_f64(&seq.state.v)?, to_f64(&sf.v)?);
        // The encoder step.
        let es = EncoderState {
            v: s.v.clone(),
            a: s.a.clone(),
        };
        let (zf, ef) = fused::lif_adex_current_encoder(&x, &es, &p)?;
        let (zr, er) = reference::lif_adex_current_encoder(&x, &es, &p)?;
        compare(
            &format!("encoder step {dtype:?}"),
            dtype,
            &zf,
            &zr,
            &[("v", &ef.v), ("a", &ef.a)],
            &[&er.v, &er.a],
            1,
        )?;
    }
    Ok(())
}

#[test]
fn encoder_sequence_matches_reference() -> Result<()> {
    for isa in Isa::available() {
        for dtype in DTYPES {
            let p = per_neuron_params(77, &Device::Cpu)?;
            let xs = (currents(&[150, 2, 77], dtype, 21)? * 30.0)?;
            let s0 = EncoderState::initial(&p, (2, 77), dtype, &Device::Cpu)?;
            let f = with_isa(isa, || {
                fused::lif_adex_current_encoder_seq(&xs, &s0, &p, true)
            })??;
            let r = reference::lif_adex_current_encoder_seq(&xs, &s0, &p, true)?;
            let (fr, rr) = (f.recorded.unwrap(), r.recorded.unwrap());
            compare(
                &format!("encoder {isa:?} {dtype:?}"),
                dtype,
                &f.spikes,
                &r.spikes,
                &[
                    ("v", &f.state.v),
                    ("a", &f.state.a),
                    ("rec v", &fr.v),
                    ("rec a", &fr.a),
                ],
                &[&r.state.v, &r.state.a, &rr.v, &rr.a],
                150,
            )?;
        }
    }
    Ok(())
}

#[test]
fn recurrent_step_and_sequence_match_reference() -> Result<()> {
    let dev = Device::Cpu;
    for dtype in DTYPES {
        let (inp, hid) = (13, 37);
        let p = AdexParameters::default();
        let xs = currents(&[40, 3, inp], dtype, 31)?;
        let w_in = (currents(&[hid, inp], DType::F32, 32)? * 2.0)?.to_dtype(dtype)?;
        let w_rec = (currents(&[hid, hid], DType::F32, 33)? - 1.0)?.to_dtype(dtype)?;
        let s0 = RecurrentState::initial(&p, (3, hid), dtype, &dev)?;
        let f = fused::lif_adex_seq(&xs, &s0, &w_in, &w_rec, &p, true)?;
        let r = reference::lif_adex_seq(&xs, &s0, &w_in, &w_rec, &p, true)?;
        let (fr, rr) = (f.recorded.unwrap(), r.recorded.unwrap());
        let fl = compare(
            &format!("recurrent seq {dtype:?}"),
            dtype,
            &f.spikes,
            &r.spikes,
            &[
                ("v", &f.state.v),
                ("i", &f.state.i),
                ("z", &f.state.z),
                ("rec v", &fr.v),
            ],
            &[&r.state.v, &r.state.i, &r.state.z, &rr.v],
            40,
        )?;
        // A flip changes the recurrent input of every neuron afterwards; none expected here.
        assert_eq!(fl, 0, "recurrent {dtype:?}");
        let (zf, sf) = fused::lif_adex_step(&xs.get(0)?, &f.state, &w_in, &w_rec, &p)?;
        let (zr, sr) = reference::lif_adex_step(&xs.get(0)?, &f.state, &w_in, &w_rec, &p)?;
        compare(
            &format!("recurrent step {dtype:?}"),
            dtype,
            &zf,
            &zr,
            &[("v", &sf.v), ("i", &sf.i), ("a", &sf.a)],
            &[&sr.v, &sr.i, &sr.a],
            1,
        )?;
    }
    Ok(())
}

#[test]
fn u8_spikes_and_caller_buffers_equal_the_allocating_call() -> Result<()> {
    let dev = Device::Cpu;
    let p = AdexParameters::default();
    for dtype in DTYPES {
        let xs = currents(&[90, 2, 53], dtype, 41)?;
        let s0 = FeedForwardState::initial(&p, (2, 53), dtype, &dev)?;
        let full = fused::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
        let bytes = fused::lif_adex_feed_forward_seq_u8(&xs, &s0, &p, false)?;
        assert_eq!(bytes.spikes.dtype(), DType::U8);
        assert_eq!(to_f64(&bytes.spikes)?, to_f64(&full.spikes)?);
        for spike_dtype in [dtype, DType::U8] {
            let state = FeedForwardState::initial(&p, (2, 53), dtype, &dev)?;
            let spikes = Tensor::full(7u8, (90, 2, 53), &dev)?.to_dtype(spike_dtype)?;
            fused::lif_adex_feed_forward_seq_into(&xs, &state, &p, &spikes)?;
            assert_eq!(to_f64(&spikes)?, to_f64(&full.spikes)?, "{dtype:?} into");
            assert_eq!(to_f64(&state.v)?, to_f64(&full.state.v)?);
            assert_eq!(to_f64(&state.i)?, to_f64(&full.state.i)?);
            assert_eq!(to_f64(&state.a)?, to_f64(&full.state.a)?);
        }
        let es = EncoderState::initial(&p, (2, 53), dtype, &dev)?;
        let enc = fused::lif_adex_current_encoder_seq(&xs, &es, &p, false)?;
        let spikes = Tensor::zeros((90, 2, 53), DType::U8, &dev)?;
        fused::lif_adex_current_encoder_seq_into(&xs, &es, &p, &spikes)?;
        assert_eq!(to_f64(&spikes)?, to_f64(&enc.spikes)?);
        assert_eq!(to_f64(&es.a)?, to_f64(&enc.state.a)?);
    }
    Ok(())
}

#[test]
fn zero_dim_parameter_tensors_act_as_scalars_beside_per_neuron_ones() -> Result<()> {
    // Scalar parameters take an allocation-free path; a 0-d tensor is one value for every
    // neuron there too, alone or beside per-neuron `[N]` tensors (which expand it to `N`).
    let dev = Device::Cpu;
    let n = 53;
    let zero_d = |v: f32| -> Result<Param> { Ok(Param::Tensor(Tensor::new(v, &dev)?)) };
    let ramp: Vec<f32> = (0..n).map(|k| 0.8 + 0.4 * k as f32 / n as f32).collect();
    let scalars = AdexParameters {
        v_th: 0.9.into(),
        tau_mem_inv: 120.0.into(),
        adaptation_spike: 0.05.into(),
        ..Default::default()
    };
    let tensors = AdexParameters {
        v_th: zero_d(0.9)?,
        tau_mem_inv: zero_d(120.0)?,
        adaptation_spike: zero_d(0.05)?,
        ..Default::default()
    };
    let mixed = |v_th: Param| AdexParameters {
        v_th,
        tau_mem_inv: 120.0.into(),
        adaptation_spike: 0.05.into(),
        ..Default::default()
    };
    let expanded = AdexParameters {
        tau_mem_inv: Param::Tensor(Tensor::full(120f32, n, &dev)?),
        adaptation_spike: Param::Tensor(Tensor::full(0.05f32, n, &dev)?),
        ..mixed(Param::Tensor(Tensor::new(ramp.as_slice(), &dev)?))
    };
    let with_zero_d = AdexParameters {
        tau_mem_inv: zero_d(120.0)?,
        adaptation_spike: zero_d(0.05)?,
        ..mixed(Param::Tensor(Tensor::new(ramp.as_slice(), &dev)?))
    };
    let xs = currents(&[40, 3, n], DType::F32, 5)?;
    let run = |p: &AdexParameters| -> Result<Vec<Vec<f64>>> {
        let s0 = FeedForwardState::initial(p, (3, n), DType::F32, &dev)?;
        let out = fused::lif_adex_feed_forward_seq(&xs, &s0, p, false)?;
        [&out.spikes, &out.state.v, &out.state.i, &out.state.a]
            .into_iter()
            .map(to_f64)
            .collect()
    };
    let plain = run(&scalars)?;
    assert!(plain[0].contains(&1.0), "the drive makes spikes");
    assert_eq!(run(&tensors)?, plain, "0-d tensors against scalars");
    let per_neuron = run(&expanded)?;
    assert_ne!(per_neuron, plain, "the ramp of thresholds changes the run");
    assert_eq!(
        run(&with_zero_d)?,
        per_neuron,
        "0-d beside [N] against [N] only"
    );
    Ok(())
}

#[test]
fn step_into_loops_equal_the_allocating_step() -> Result<()> {
    // Two layers of different sizes stepped in turn, from random initial states, so that a
    // state read after it was overwritten (the state is advanced in place) or a value left from
    // the other layer would show.
    let dev = Device::Cpu;
    let p = AdexParameters::default();
    for dtype in DTYPES {
        let shapes = [(3usize, 70usize), (1, 29)];
        let mut layers = Vec::new();
        for (k, &(b, n)) in shapes.iter().enumerate() {
            let seed = 90 + 10 * k as u64;
            let s0 = FeedForwardState {
                v: currents(&[b, n], dtype, seed)?,
                i: currents(&[b, n], dtype, seed + 1)?,
                a: currents(&[b, n], dtype, seed + 2)?,
            };
            let state = FeedForwardState {
                v: s0.v.copy()?,
                i: s0.i.copy()?,
                a: s0.a.copy()?,
            };
            let xs = currents(&[12, b, n], dtype, seed + 3)?;
            let spikes = Tensor::full(7u8, (12, b, n), &dev)?;
            layers.push((s0, state, xs, spikes));
        }
        for t in 0..12 {
            for (s0, state, xs, spikes) in layers.iter_mut() {
                let (z, next) = fused::lif_adex_feed_forward_step(&xs.get(t)?, s0, &p)?;
                fused::lif_adex_feed_forward_step_into(&xs.get(t)?, state, &p, &spikes.get(t)?)?;
                assert_eq!(to_f64(&spikes.get(t)?)?, to_f64(&z)?, "{dtype:?} step {t}");
                assert_eq!(to_f64(&state.v)?, to_f64(&next.v)?, "{dtype:?} v, step {t}");
                assert_eq!(to_f64(&state.i)?, to_f64(&next.i)?, "{dtype:?} i, step {t}");
                assert_eq!(to_f64(&state.a)?, to_f64(&next.a)?, "{dtype:?} a, step {t}");
                *s0 = next;
            }
        }
        let x = currents(&[2, 33], dtype, 99)?;
        let es0 = EncoderState::initial(&p, (2, 33), dtype, &dev)?;
        let es = EncoderState::initial(&p, (2, 33), dtype, &dev)?;
        let spikes = Tensor::zeros((2, 33), dtype, &dev)?;
        let (z, next) = fused::lif_adex_current_encoder(&x, &es0, &p)?;
        fused::lif_adex_current_encoder_step_into(&x, &es, &p, &spikes)?;
        assert_eq!(to_f64(&spikes)?, to_f64(&z)?);
        assert_eq!(to_f64(&es.v)?, to_f64(&next.v)?);
        assert_eq!(to_f64(&es.a)?, to_f64(&next.a)?);
    }
    Ok(())
}

#[test]
fn caller_buffers_may_be_views_of_one_storage() -> Result<()> {
    // Disjoint views of one storage (a packed state, spikes beside the state, the input beside
    // the spikes) give what separate tensors give: each storage is locked once.
    let p = AdexParameters::default();
    for dtype in DTYPES {
        let (t, n) = (7, 45);
        let xs = currents(&[t, n], dtype, 71)?;
        let s0 = FeedForwardState {
            v: currents(&[n], dtype, 72)?,
            i: currents(&[n], dtype, 73)?,
            a: currents(&[n], dtype, 74)?,
        };
        let want = fused::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
        // Rows 0..t: spikes; rows t..t+3: v, i, a.
        let packed = Tensor::cat(
            &[
                &xs.zeros_like()?,
                &s0.v.unsqueeze(0)?,
                &s0.i.unsqueeze(0)?,
                &s0.a.unsqueeze(0)?,
            ],
            0,
        )?;
        let state = FeedForwardState {
            v: packed.get(t)?,
            i: packed.get(t + 1)?,
            a: packed.get(t + 2)?,
        };
        fused::lif_adex_feed_forward_seq_into(&xs, &state, &p, &packed.narrow(0, 0, t)?)?;
        assert_eq!(
            to_f64(&packed.narrow(0, 0, t)?)?,
            to_f64(&want.spikes)?,
            "{dtype:?}"
        );
        assert_eq!(to_f64(&state.v)?, to_f64(&want.state.v)?, "{dtype:?} v");
        assert_eq!(to_f64(&state.i)?, to_f64(&want.state.i)?, "{dtype:?} i");
        assert_eq!(to_f64(&state.a)?, to_f64(&want.state.a)?, "{dtype:?} a");
        // A step reading row 0 of a buffer and writing its spikes to row 1.
        let both = Tensor::cat(
            &[
                &xs.get(0)?.unsqueeze(0)?,
                &xs.get(0)?.zeros_like()?.unsqueeze(0)?,
            ],
            0,
        )?;
        let state = FeedForwardState {
            v: s0.v.copy()?,
            i: s0.i.copy()?,
            a: s0.a.copy()?,
        };
        let (z, next) = fused::lif_adex_feed_forward_step(&xs.get(0)?, &s0, &p)?;
        fused::lif_adex_feed_forward_step_into(&both.get(0)?, &state, &p, &both.get(1)?)?;
        assert_eq!(to_f64(&both.get(1)?)?, to_f64(&z)?, "{dtype:?} step");
        assert_eq!(to_f64(&state.v)?, to_f64(&next.v)?, "{dtype:?} step v");
        assert_eq!(to_f64(&state.a)?, to_f64(&next.a)?, "{dtype:?} step a");
    }
    Ok(())
}

#[test]
fn crossed_caller_buffers_on_two_threads_do_not_wait_on_each_other() -> Result<()> {
    // Thread A steps from row 0 of `pb` into row 1 of `qb`, thread B from row 0 of `qb` into
    // row 1 of `pb`: taking the storage locks in argument order could leave each thread holding
    // one and waiting for the other; address order cannot.
    let p = AdexParameters::default();
    let n = 64;
    let row = |seed| -> Result<Tensor> {
        Tensor::cat(
            &[
                currents(&[1, n], DType::F32, seed)?,
                Tensor::zeros((1, n), DType::F32, &Device::Cpu)?,
            ],
            0,
        )
    };
    let (pb, qb) = (row(81)?, row(82)?);
    let (tx, rx) = std::sync::mpsc::channel();
    for (from, to) in [(pb.clone(), qb.clone()), (qb.clone(), pb.clone())] {
        let (tx, p) = (tx.clone(), p.clone());
        std::thread::spawn(move || {
            let run = || -> Result<()> {
                let s0 = FeedForwardState::initial(&p, n, DType::F32, &Device::Cpu)?;
                let state = FeedForwardState::initial(&p, n, DType::F32, &Device::Cpu)?;
                for _ in 0..300 {
                    fused::lif_adex_feed_forward_step_into(&from.get(0)?, &state, &p, &to.get(1)?)?;
                }
                // The same 300 steps through the allocating call.
                let (mut z, mut s) = (Tensor::zeros(n, DType::F32, &Device::Cpu)?, s0);
                for _ in 0..300 {
                    (z, s) = fused::lif_adex_feed_forward_step(&from.get(0)?, &s, &p)?;
                }
                for (what, got, want) in [
                    ("last spikes", &to.get(1)?, &z),
                    ("v", &state.v, &s.v),
                    ("a", &state.a, &s.a),
                ] {
                    if to_f64(got)? != to_f64(want)? {
                        candle_core::bail!("{what} differs from the allocating step");
                    }
                }
                Ok(())
            };
            let _ = tx.send(run());
        });
    }
    for _ in 0..2 {
        rx.recv_timeout(std::time::Duration::from_secs(120))
            .expect("both threads finish (no lock-order deadlock)")?;
    }
    Ok(())
}

#[test]
fn threaded_and_streaming_calls_match_reference() -> Result<()> {
    let p = AdexParameters::default();
    // 1100 x 4000 f32 spikes = 17.6 MB: threads, streaming stores and shifted block boundaries.
    let xs = currents(&[1100, 4000], DType::F32, 51)?;
    let s0 = FeedForwardState::initial(&p, 4000, DType::F32, &Device::Cpu)?;
    let f = fused::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
    let r = reference::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
    compare_ff("threaded, streamed", DType::F32, &f, &r)?;
    // The same input in caller buffers, u8 spikes, in a view that starts off a cache line.
    let state = FeedForwardState::initial(&p, 4000, DType::F32, &Device::Cpu)?;
    let big = Tensor::zeros(1100 * 4000 + 5, DType::U8, &Device::Cpu)?;
    let spikes = big.narrow(0, 5, 1100 * 4000)?.reshape((1100, 4000))?;
    fused::lif_adex_feed_forward_seq_into(&xs, &state, &p, &spikes)?;
    assert_eq!(to_f64(&spikes)?, to_f64(&f.spikes)?);
    Ok(())
}

#[test]
fn streamed_threaded_backward_equals_the_backward_of_column_slices() -> Result<()> {
    // 1100 x 4000 f32 input gradients = 17.6 MB: the backward runs on threads, streams them
    // and recomputes from checkpoints (T > SEG). Neurons are independent, so each column slice
    // (small: one thread, no streaming) must give exactly the same gradients.
    let p = AdexParameters::default();
    let (t, n) = (1100, 4000);
    let xs = currents(&[t, n], DType::F32, 71)?;
    let s0 = FeedForwardState {
        v: currents(&[n], DType::F32, 72)?,
        i: currents(&[n], DType::F32, 73)?,
        a: currents(&[n], DType::F32, 74)?,
    };
    let (wz, wv) = (
        currents(&[t, n], DType::F32, 75)?,
        currents(&[n], DType::F32, 76)?,
    );
    let (wi, wa) = (
        currents(&[n], DType::F32, 77)?,
        currents(&[n], DType::F32, 78)?,
    );
    let grads_of = |c0: usize, w: usize| -> Result<Vec<Vec<f32>>> {
        let last = |x: &Tensor| x.narrow(x.rank() - 1, c0, w);
        let vars = [&xs, &s0.v, &s0.i, &s0.a].map(|x| Var::from_tensor(&last(x).unwrap()).unwrap());
        let s = FeedForwardState {
            v: vars[1].as_tensor().clone(),
            i: vars[2].as_tensor().clone(),
            a: vars[3].as_tensor().clone(),
        };
        let out = fused::lif_adex_feed_forward_seq(vars[0].as_tensor(), &s, &p, false)?;
        let mut loss = (out.spikes * last(&wz)?)?.sum_all()?;
        for (x, wx) in [
            (&out.state.v, &wv),
            (&out.state.i, &wi),
            (&out.state.a, &wa),
        ] {
            loss = (loss + (x * last(wx)?)?.sum_all()?)?;
        }
        let g = loss.backward()?;
        vars.iter()
            .map(|v| {
                let g = g.get(v.as_tensor()).expect("a gradient");
                g.flatten_all()?.to_vec1::<f32>()
            })
            .collect()
    };
    let full = grads_of(0, n)?;
    assert!(
        full[0].iter().any(|g| *g != 0.0),
        "some input gradient is non-zero"
    );
    for (c0, w) in [(0, 37), (1999, 130), (3871, 129)] {
        let part = grads_of(c0, w)?;
        for (k, (gp, gf)) in part.iter().zip(&full).enumerate() {
            let rows = gp.len() / w;
            for r in 0..rows {
                assert_eq!(
                    gp[r * w..(r + 1) * w],
                    gf[r * n + c0..r * n + c0 + w],
                    "grad #{k}, row {r}, columns {c0}..{}",
                    c0 + w
                );
            }
        }
    }
    Ok(())
}

/// Gradients of a loss over spikes, final state and recorded states, with respect to the input
/// and the initial state, through `run`.
fn grads(
    xs: &Tensor,
    s0: &FeedForwardState,
    run: impl Fn(&Tensor, &FeedForwardState) -> Result<Sequence<FeedForwardState>>,
) -> Result<Vec<Vec<f64>>> {
    let vars = [xs, &s0.v, &s0.i, &s0.a].map(|t| Var::from_tensor(t).unwrap());
    let s = FeedForwardState {
        v: vars[1].as_tensor().clone(),
        i: vars[2].as_tensor().clone(),
        a: vars[3].as_tensor().clone(),
    };
    let out = run(vars[0].as_tensor(), &s)?;
    let w = |t: &Tensor, k: f64| -> Result<Tensor> {
        let ramp = Tensor::arange(0u32, t.elem_count() as u32, t.device())?
            .to_dtype(t.dtype())?
            .reshape(t.shape())?;
        (t * (ramp * (k / t.elem_count() as f64))?.cos()?)?.sum_all()
    };
    let mut loss = (w(&out.spikes, 3.0)? + w(&out.state.v, 5.0)?)?;
    loss = (loss + w(&out.state.i, 7.0)? + w(&out.state.a, 11.0)?)?;
    if let Some(r) = &out.recorded {
        loss = (loss + w(&r.v, 13.0)? + w(&r.a, 17.0)? + w(&r.i, 19.0)?)?;
    }
    let g = loss.backward()?;
    vars.iter()
        .map(|v| to_f64(g.get(v.as_tensor()).expect("a gradient")))
        .collect()
}

#[test]
fn fused_gradients_equal_reference_gradients_for_every_method() -> Result<()> {
    for isa in Isa::available() {
        for method in SurrogateMethod::ALL {
            for (dtype, steps, record) in [
                (DType::F64, 40, true),
                (DType::F64, 300, false),
                (DType::F32, 35, true),
            ] {
                let p = AdexParameters {
                    method,
                    alpha: 3.0,
                    ..per_neuron_params(23, &Device::Cpu)?
                };
                let xs = currents(&[steps, 2, 23], dtype, 61)?;
                let s0 = FeedForwardState {
                    v: currents(&[2, 23], dtype, 62)?,
                    i: currents(&[2, 23], dtype, 63)?,
                    a: currents(&[2, 23], dtype, 64)?,
                };
                let f = with_isa(isa, || {
                    grads(&xs, &s0, |x, s| {
                        fused::lif_adex_feed_forward_seq(x, s, &p, record)
                    })
                })??;
                let r = grads(&xs, &s0, |x, s| {
                    reference::lif_adex_feed_forward_seq(x, s, &p, record)
                })?;
                let rel = if dtype == DType::F64 { 1e-9 } else { 2e-3 };
                for (k, (gf, gr)) in f.iter().zip(&r).enumerate() {
                    let scale = gr.iter().fold(1e-30f64, |m, x| m.max(x.abs()));
                    for (a, b) in gf.iter().zip(gr) {
                        assert!(
                            (a - b).abs() <= rel * scale,
                            "{isa:?} {method} {dtype:?} T={steps} grad #{k}: fused {a} vs reference {b} (scale {scale})"
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

#[test]
fn encoder_and_recurrent_update_gradients_equal_reference() -> Result<()> {
    let p = AdexParameters {
        method: SurrogateMethod::Tanh,
        alpha: 2.0,
        ..Default::default()
    };
    // Encoder sequence: gradients of the input and the initial (v, a).
    let xs = Var::from_tensor(&(currents(&[50, 31], DType::F64, 71)? * 20.0)?)?;
    let v0 = Var::from_tensor(&currents(&[31], DType::F64, 72)?)?;
    let a0 = Var::from_tensor(&currents(&[31], DType::F64, 73)?)?;
    let s0 = EncoderState {
        v: v0.as_tensor().clone(),
        a: a0.as_tensor().clone(),
    };
    let loss = |o: &Sequence<EncoderState>| -> Result<Tensor> {
        let spikes = (&o.spikes
            * Tensor::arange(0f64, 50.0, &Device::Cpu)?
                .unsqueeze(1)?
                .broadcast_as((50, 31))?
                .cos()?)?;
        spikes.sum_all()? + o.state.v.sqr()?.sum_all()? + o.state.a.sum_all()?
    };
    let gf = loss(&fused::lif_adex_current_encoder_seq(
        xs.as_tensor(),
        &s0,
        &p,
        false,
    )?)?
    .backward()?;
    let gr = loss(&reference::lif_adex_current_encoder_seq(
        xs.as_tensor(),
        &s0,
        &p,
        false,
    )?)?
    .backward()?;
    for v in [&xs, &v0, &a0] {
        let (a, b) = (to_f64(gf.get(v).unwrap())?, to_f64(gr.get(v).unwrap())?);
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= 1e-9 * (1.0 + y.abs()),
                "encoder grad {x} vs {y}"
            );
        }
    }
    // The recurrent elementwise update: both drives receive the gradient of i_jump.
    let input = Var::from_tensor(&(currents(&[3, 17], DType::F64, 74)? * 30.0)?)?;
    let rec = Var::from_tensor(&currents(&[3, 17], DType::F64, 75)?)?;
    let s = RecurrentState::initial(&p, (3, 17), DType::F64, &Device::Cpu)?;
    let (z, next) = fused::lif_adex_recurrent_update(input.as_tensor(), rec.as_tensor(), &s, &p)?;
    let g = ((z * 2.0)?.sum_all()? + next.v.sum_all()?)?.backward()?;
    let drive = (input.as_tensor() + rec.as_tensor())?;
    let x = Var::from_tensor(&drive)?;
    let ff = FeedForwardState {
        v: s.v.clone(),
        i: s.i.clone(),
        a: s.a.clone(),
    };
    let (zr, nr) = reference::lif_adex_feed_forward_step(x.as_tensor(), &ff, &p)?;
    let gr = ((zr * 2.0)?.sum_all()? + nr.v.sum_all()?)?.backward()?;
    let want = to_f64(gr.get(&x).unwrap())?;
    for v in [&input, &rec] {
        let got = to_f64(g.get(v).unwrap())?;
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-9 * (1.0 + b.abs()),
                "recurrent update grad {a} vs {b}"
            );
        }
    }
    Ok(())
}

#[test]
fn crate_root_falls_back_to_the_reference_path_for_parameter_gradients() -> Result<()> {
    let dev = Device::Cpu;
    let tau = Var::new(&[100f64, 80.0, 120.0], &dev)?;
    let p = AdexParameters {
        tau_mem_inv: Param::Tensor(tau.as_tensor().clone()),
        ..Default::default()
    };
    let xs = currents(&[30, 3], DType::F64, 81)?;
    let s0 = FeedForwardState::initial(&p, 3, DType::F64, &dev)?;
    let err = fused::lif_adex_feed_forward_seq(&xs, &s0, &p, false).unwrap_err();
    assert!(
        err.to_string()
            .contains("parameter tensor needs a gradient"),
        "{err}"
    );
    let out = candle_adex::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
    let g = out.state.v.sum_all()?.backward()?;
    let gt = to_f64(g.get(&tau).expect("the parameter gradient is not dropped"))?;
    assert!(gt.iter().any(|x| *x != 0.0));
    Ok(())
}

#[test]
fn bad_calls_give_clear_errors() -> Result<()> {
    let dev = Device::Cpu;
    let p = AdexParameters::default();
    let xs = currents(&[10, 4], DType::F32, 91)?;
    let s0 = FeedForwardState::initial(&p, 4, DType::F32, &dev)?;
    // u8 spikes carry no gradient.
    let xv = Var::from_tensor(&xs)?;
    let e = fused::lif_adex_feed_forward_seq_u8(xv.as_tensor(), &s0, &p, false).unwrap_err();
    assert!(e.to_string().contains("u8 spikes are for inference"), "{e}");
    // Caller buffers: shape, dtype, aliasing, gradients.
    let e = fused::lif_adex_feed_forward_seq_into(
        &xs,
        &s0,
        &p,
        &Tensor::zeros((10, 5), DType::U8, &dev)?,
    )
    .unwrap_err();
    assert!(e.to_string().contains("must have the input's shape"), "{e}");
    let e = fused::lif_adex_feed_forward_seq_into(
        &xs,
        &s0,
        &p,
        &Tensor::zeros((10, 4), DType::F64, &dev)?,
    )
    .unwrap_err();
    assert!(e.to_string().contains("input's dtype"), "{e}");
    let shared = Tensor::zeros(4, DType::F32, &dev)?;
    let aliased = FeedForwardState {
        v: s0.v.clone(),
        i: shared.clone(),
        a: shared,
    };
    let e = fused::lif_adex_feed_forward_seq_into(
        &xs,
        &aliased,
        &p,
        &Tensor::zeros((10, 4), DType::U8, &dev)?,
    )
    .unwrap_err();
    assert!(e.to_string().contains("share memory"), "{e}");
    let e = fused::lif_adex_feed_forward_step_into(
        &xs.get(0)?,
        &FeedForwardState::initial(&p, 4, DType::F32, &dev)?,
        &p,
        &Tensor::zeros(5, DType::F32, &dev)?,
    )
    .unwrap_err();
    assert!(e.to_string().contains("input's shape [4], got [5]"), "{e}");
    let e = fused::lif_adex_feed_forward_seq_into(
        xv.as_tensor(),
        &s0,
        &p,
        &Tensor::zeros((10, 4), DType::U8, &dev)?,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no gradient"), "{e}");
    // The reference path's checks apply (shape, dtype, rank).
    let e =
        fused::lif_adex_feed_forward_seq(&xs.to_dtype(DType::F64)?, &s0, &p, false).unwrap_err();
    assert!(e.to_string().contains("dtype"), "{e}");
    let e = fused::lif_adex_feed_forward_seq(&xs.get(0)?, &s0, &p, false).unwrap_err();
    assert!(e.to_string().contains("time-first"), "{e}");
    let e = fused::lif_adex_recurrent_update(
        &xs.get(0)?,
        &xs.narrow(1, 0, 3)?.get(0)?,
        &RecurrentState::initial(&p, 4, DType::F32, &dev)?,
        &p,
    )
    .unwrap_err();
    assert!(e.to_string().contains("second drive"), "{e}");
    // An ISA this CPU lacks is refused; the portable path always exists.
    assert!(Isa::available().contains(&Isa::Portable));
    Ok(())
}

#[test]
fn extreme_inputs_stay_finite_and_reset() -> Result<()> {
    let p = AdexParameters::default();
    for dtype in DTYPES {
        let big = match dtype {
            DType::F16 => 6e4,
            DType::BF16 => 1e30,
            DType::F32 => 1e30,
            _ => 1e200,
        };
        let xs = Tensor::new(&[[0f64, 1e3, big, -big]], &Device::Cpu)?
            .to_dtype(dtype)?
            .broadcast_as((20, 4))?
            .contiguous()?;
        let s0 = FeedForwardState::initial(&p, 4, dtype, &Device::Cpu)?;
        let f = fused::lif_adex_feed_forward_seq(&xs, &s0, &p, true)?;
        let v = to_f64(&f.recorded.unwrap().v)?;
        // No NaN from the model: neurons driven past exp's range spike and reset; a current
        // beyond the dtype's range may round to -inf in a half-precision output, not to NaN.
        assert!(v.iter().all(|x| !x.is_nan()), "{dtype:?}: {v:?}");
        let z = to_f64(&f.spikes)?;
        for t in 0..20 {
            assert_eq!(
                (z[4 * t + 1], z[4 * t + 2]),
                (1.0, 1.0),
                "{dtype:?} step {t}"
            );
            assert_eq!((v[4 * t + 1], v[4 * t + 2]), (0.0, 0.0), "reset to v_reset");
        }
        let r = reference::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
        assert_eq!(to_f64(&r.spikes)?, z);
    }
    Ok(())
}
