//! The fused GPU kernels (CUDA, or Metal on a Mac) held to the fused CPU kernels (which
//! tests/fused.rs holds to the reference path): every dtype the GPU has (Metal: no f64), odd
//! sizes, sequences longer than a checkpoint segment, per-neuron parameters, recording, u8
//! spikes, the encoder, the recurrent sequence, the step, and the gradients of every surrogate
//! method. Needs the `cuda` or `metal` feature and such a GPU; without one each test says so and
//! returns. The GPU check script runs these with `CANDLE_ADEX_POISON=1`, so an output element a
//! kernel does not write shows as NaN and fails the comparison.

use candle_adex::{fused, AdexParameters, EncoderState, FeedForwardState, RecurrentState};
use candle_adex::{Sequence, SurrogateMethod};
use candle_core::{DType, Device, Result, Tensor, Var};

mod common;
use common::{currents, per_neuron_params, tol};

/// The GPU of the build: CUDA with the `cuda` feature, else Metal with the `metal` feature.
fn gpu() -> Option<Device> {
    if cfg!(feature = "cuda") {
        match Device::new_cuda(0) {
            Ok(d) => return Some(d),
            Err(e) => eprintln!("skipped: no CUDA device ({e})"),
        }
    } else if cfg!(feature = "metal") {
        match Device::new_metal(0) {
            Ok(d) => return Some(d),
            Err(e) => eprintln!("skipped: no Metal device ({e})"),
        }
    } else {
        eprintln!("skipped: built without the `cuda` or `metal` feature");
    }
    None
}

/// Of `wanted`, the dtypes the device computes in (Metal has no f64).
fn dtypes(dev: &Device, wanted: &[DType]) -> Vec<DType> {
    wanted
        .iter()
        .copied()
        .filter(|d| !(dev.is_metal() && *d == DType::F64))
        .collect()
}

const DTYPES: [DType; 4] = [DType::F32, DType::F64, DType::F16, DType::BF16];

fn host(t: &Tensor) -> Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()
}

/// Spike trains compared neuron by neuron (flips counted; at most one in 10^4 neurons may flip
/// from a last-bit difference), states compared on the neurons that agree; no NaN anywhere.
fn compare(
    what: &str,
    dtype: DType,
    gpu: (&Tensor, &[&Tensor]),
    cpu: (&Tensor, &[&Tensor]),
) -> Result<(usize, f64)> {
    assert_eq!(gpu.0.dims(), cpu.0.dims(), "{what}: spike shape");
    let (zg, zc) = (host(gpu.0)?, host(cpu.0)?);
    let m = *gpu.0.dims().last().unwrap_or(&1)
        * gpu.0.dims()[1..gpu.0.rank().saturating_sub(1)]
            .iter()
            .product::<usize>();
    let t = zg.len() / m.max(1);
    assert!(
        zg.iter().all(|z| *z == 0.0 || *z == 1.0),
        "{what}: spikes not 0/1 (unwritten?)"
    );
    let flipped: Vec<bool> = (0..m)
        .map(|k| (0..t).any(|s| zg[s * m + k] != zc[s * m + k]))
        .collect();
    let flips = flipped.iter().filter(|f| **f).count();
    assert!(
        flips * 10_000 <= m.max(10_000),
        "{what} {dtype:?}: {flips} of {m} neurons flipped"
    );
    let mut worst = 0f64;
    for (k, (g, c)) in gpu.1.iter().zip(cpu.1).enumerate() {
        let (g, c) = (host(g)?, host(c)?);
        assert_eq!(g.len(), c.len(), "{what}: state {k} length");
        let per = g.len() / m.max(1);
        for j in 0..g.len() {
            assert!(
                !g[j].is_nan(),
                "{what} {dtype:?}: state {k}[{j}] is NaN (unwritten?)"
            );
            if flipped[j % m] || per == 0 {
                continue;
            }
            let d = (g[j] - c[j]).abs();
            worst = worst.max(d / (1.0 + c[j].abs()));
            assert!(
                d <= tol(dtype) * (1.0 + c[j].abs()),
                "{what} {dtype:?}: state {k}[{j}] gpu {} cpu {}",
                g[j],
                c[j]
            );
        }
    }
    Ok((flips, worst))
}

fn ff_state(s: &FeedForwardState) -> [&Tensor; 3] {
    [&s.v, &s.i, &s.a]
}

#[test]
fn feed_forward_sequences_equal_the_cpu_kernels() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let mut flips = 0;
    let mut total = 0;
    for dtype in dtypes(&dev, &DTYPES) {
        let mut worst = 0f64;
        let mut dflips = 0;
        for &(t, b, n) in &[
            (1, 1, 5),
            (15, 2, 37),
            (16, 1, 131),
            (33, 3, 131),
            (257, 2, 1000),
        ] {
            for per in [false, true] {
                for record in [false, true] {
                    let p = if per {
                        per_neuron_params(n, &Device::Cpu)?
                    } else {
                        AdexParameters::default()
                    };
                    let p_gpu = if per {
                        per_neuron_params(n, &dev)?
                    } else {
                        p.clone()
                    };
                    let xs = currents(&[t, b, n], dtype, (t * n) as u64)?;
                    let s0 = FeedForwardState::initial(&p, (b, n), dtype, &Device::Cpu)?;
                    let s0g = FeedForwardState::initial(&p_gpu, (b, n), dtype, &dev)?;
                    let c = fused::lif_adex_feed_forward_seq(&xs, &s0, &p, record)?;
                    let g = fused::lif_adex_feed_forward_seq(
                        &xs.to_device(&dev)?,
                        &s0g,
                        &p_gpu,
                        record,
                    )?;
                    let what = format!("ff T={t} B={b} N={n} per={per} record={record}");
                    let mut gs: Vec<&Tensor> = ff_state(&g.state).to_vec();
                    let mut cs: Vec<&Tensor> = ff_state(&c.state).to_vec();
                    if let (Some(gr), Some(cr)) = (&g.recorded, &c.recorded) {
                        gs.extend(ff_state(gr));
                        cs.extend(ff_state(cr));
                    }
                    let (f, w) = compare(&what, dtype, (&g.spikes, &gs), (&c.spikes, &cs))?;
                    flips += f;
                    dflips += f;
                    worst = worst.max(w);
                    total += b * n;
                    // u8 spikes are the same spikes.
                    let u = fused::lif_adex_feed_forward_seq_u8(
                        &xs.to_device(&dev)?,
                        &s0g,
                        &p_gpu,
                        false,
                    )?;
                    assert_eq!(u.spikes.dtype(), DType::U8);
                    assert_eq!(
                        host(&u.spikes)?,
                        host(&g.spikes)?,
                        "{what}: u8 spikes differ"
                    );
                }
            }
        }
        eprintln!(
            "feed-forward {dtype:?}: {dflips} flips; largest state error |gpu - cpu| / (1 + |cpu|) = {worst:.2e} (tolerance {:.0e})",
            tol(dtype)
        );
    }
    eprintln!("feed-forward, all dtypes: {flips} spike-train flips over {total} neurons");
    Ok(())
}

#[test]
fn strided_inputs_steps_and_the_encoder_equal_the_cpu_kernels() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let p = AdexParameters::default();
    for dtype in dtypes(&dev, &DTYPES) {
        // A transposed (non-contiguous) input.
        let xs = currents(&[77, 40], dtype, 3)?.t()?;
        let s0 = FeedForwardState::initial(&p, 77, dtype, &Device::Cpu)?;
        let c = fused::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
        let g = fused::lif_adex_feed_forward_seq(
            &xs.to_device(&dev)?,
            &FeedForwardState::initial(&p, 77, dtype, &dev)?,
            &p,
            false,
        )?;
        compare(
            "strided",
            dtype,
            (&g.spikes, &ff_state(&g.state)),
            (&c.spikes, &ff_state(&c.state)),
        )?;
        // Steps.
        let x = currents(&[3, 59], dtype, 4)?;
        let s0 = FeedForwardState::initial(&p, (3, 59), dtype, &Device::Cpu)?;
        let (zc, sc) = fused::lif_adex_feed_forward_step(&x, &s0, &p)?;
        let (zg, sg) = fused::lif_adex_feed_forward_step(
            &x.to_device(&dev)?,
            &FeedForwardState::initial(&p, (3, 59), dtype, &dev)?,
            &p,
        )?;
        compare("step", dtype, (&zg, &ff_state(&sg)), (&zc, &ff_state(&sc)))?;
        // The encoder, recorded.
        let xs = currents(&[70, 2, 45], dtype, 5)?.affine(30.0, 0.0)?;
        let e0 = EncoderState::initial(&p, (2, 45), dtype, &Device::Cpu)?;
        let c = fused::lif_adex_current_encoder_seq(&xs, &e0, &p, true)?;
        let g = fused::lif_adex_current_encoder_seq(
            &xs.to_device(&dev)?,
            &EncoderState::initial(&p, (2, 45), dtype, &dev)?,
            &p,
            true,
        )?;
        let (gr, cr) = (g.recorded.as_ref().unwrap(), c.recorded.as_ref().unwrap());
        compare(
            "encoder",
            dtype,
            (&g.spikes, &[&g.state.v, &g.state.a, &gr.v, &gr.a]),
            (&c.spikes, &[&c.state.v, &c.state.a, &cr.v, &cr.a]),
        )?;
    }
    Ok(())
}

#[test]
fn recurrent_sequences_equal_the_cpu_path() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    let p = AdexParameters::default();
    for dtype in dtypes(&dev, &[DType::F32, DType::F64]) {
        let (t, b, i, h) = (40, 3, 7, 33);
        let xs = currents(&[t, b, i], dtype, 6)?;
        let w_in = (currents(&[h, i], dtype, 7)? * 0.3)?;
        let w_rec = (currents(&[h, h], dtype, 8)? * 0.1)?;
        let s0 = RecurrentState::initial(&p, (b, h), dtype, &Device::Cpu)?;
        let c: Sequence<RecurrentState> = fused::lif_adex_seq(&xs, &s0, &w_in, &w_rec, &p, false)?;
        let g = fused::lif_adex_seq(
            &xs.to_device(&dev)?,
            &RecurrentState::initial(&p, (b, h), dtype, &dev)?,
            &w_in.to_device(&dev)?,
            &w_rec.to_device(&dev)?,
            &p,
            false,
        )?;
        compare(
            "recurrent",
            dtype,
            (&g.spikes, &[&g.state.v, &g.state.i, &g.state.a]),
            (&c.spikes, &[&c.state.v, &c.state.i, &c.state.a]),
        )?;
    }
    Ok(())
}

/// Gradients of `sum(spikes*wz) + sum(v*wv) (+ sum(recorded v))` for xs and the initial state.
fn grads(
    dev: &Device,
    xs: &Tensor,
    p: &AdexParameters,
    record: bool,
    wz: &Tensor,
) -> Result<Vec<Vec<f64>>> {
    let dims = xs.dims().to_vec();
    let x = Var::from_tensor(&xs.to_device(dev)?)?;
    let s0 = FeedForwardState::initial(p, &dims[1..], xs.dtype(), dev)?;
    let (v0, i0) = (Var::from_tensor(&s0.v)?, Var::from_tensor(&s0.i)?);
    let s0 = FeedForwardState {
        v: v0.as_tensor().clone(),
        i: i0.as_tensor().clone(),
        a: s0.a,
    };
    let out = fused::lif_adex_feed_forward_seq(x.as_tensor(), &s0, p, record)?;
    let mut loss = (out.spikes.mul(&wz.to_device(dev)?)?.sum_all()?
        + out.state.v.sum_all()?
        + out.state.a.sum_all()?)?;
    if let Some(r) = &out.recorded {
        loss = (loss + (r.v.sum_all()? * 0.1)? + (r.i.sum_all()? * 0.01)?)?;
    }
    let g = loss.backward()?;
    [x.as_tensor(), v0.as_tensor(), i0.as_tensor()]
        .iter()
        .map(|t| host(g.get(t).expect("gradient")))
        .collect()
}

#[test]
fn gradients_equal_the_cpu_kernels_for_every_method() -> Result<()> {
    let Some(dev) = gpu() else { return Ok(()) };
    for dtype in dtypes(&dev, &[DType::F64, DType::F32, DType::BF16]) {
        let mut worst = 0f64;
        for method in SurrogateMethod::ALL {
            for &(t, record) in &[(1, false), (40, true), (300, false)] {
                let p = AdexParameters {
                    method,
                    alpha: 20.0,
                    ..Default::default()
                };
                let (b, n) = (2, 53);
                // Milder drive than the forward tests: with bursts of 40 the f32 gradient of a
                // 300-step sequence overflows (on both paths alike) and nothing is compared.
                let xs = (currents(&[t, b, n], dtype, 11 + t as u64)? * 0.25)?;
                let wz = currents(&[t, b, n], dtype, 12)?;
                let c = grads(&Device::Cpu, &xs, &p, record, &wz)?;
                let g = grads(&dev, &xs, &p, record, &wz)?;
                for (k, (gk, ck)) in g.iter().zip(&c).enumerate() {
                    // Long f32 sequences with strong bursts can overflow the gradient (the
                    // exp term multiplies it by e^u per step) on both paths alike: the
                    // non-finite entries must coincide, the finite ones agree.
                    let mismatch: Vec<String> = (0..gk.len())
                        .filter(|&j| gk[j].is_finite() != ck[j].is_finite())
                        .take(6)
                        .map(|j| format!("[{j}] gpu {} cpu {}", gk[j], ck[j]))
                        .collect();
                    assert!(
                        mismatch.is_empty(),
                        "{dtype:?} {} T={t} record={record} gradient {k}: finiteness differs: {}",
                        method.name(),
                        mismatch.join(", ")
                    );
                    let keep = |v: &Vec<f64>| -> Vec<f64> {
                        v.iter()
                            .map(|x| if x.is_finite() { *x } else { 0.0 })
                            .collect()
                    };
                    let (gk, ck) = (&keep(gk), &keep(ck));
                    let finite = ck.iter().filter(|x| **x != 0.0).count();
                    // Over 300 steps the f32 gradients of the compact surrogates explode for
                    // most neurons (on the CPU alike); the shorter runs must compare most.
                    assert!(
                        t == 300 || finite * 4 > ck.len(),
                        "{dtype:?} {} T={t} record={record} gradient {k}: only {finite} of {} finite and non-zero",
                        method.name(),
                        ck.len()
                    );
                    let norm = ck.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
                    let diff = gk
                        .iter()
                        .zip(ck)
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f64>()
                        .sqrt();
                    worst = worst.max(diff / norm);
                    let limit = match dtype {
                        DType::F64 => 1e-9,
                        DType::F32 => 2e-3,
                        _ => 5e-2,
                    };
                    assert!(
                        diff <= limit * norm,
                        "{dtype:?} {} T={t} record={record} gradient {k}: |gpu-cpu| {diff:e} vs |cpu| {norm:e}",
                        method.name()
                    );
                }
            }
        }
        eprintln!(
            "gradients {dtype:?}: largest normwise |gpu - cpu| / |cpu| over 6 methods x 3 runs x (x, v0, i0) = {worst:.2e}"
        );
    }
    Ok(())
}
