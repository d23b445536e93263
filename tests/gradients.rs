//! Gradients of the reference path against central finite differences in f64, where no spike
//! flips (method `heaviside`: the gradient is the true derivative of the continuous path).

use candle_adex::{
    lif_adex_feed_forward_seq, lif_adex_seq, AdexParameters, FeedForwardState, Param,
    RecurrentState, SurrogateMethod,
};
use candle_core::{DType, Device, Result, Tensor, Var};

/// Deterministic pseudo-random values in [lo, hi).
fn values(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

fn tensor(n: usize, dims: &[usize], seed: u64, lo: f64, hi: f64) -> Tensor {
    Tensor::from_vec(values(n, seed, lo, hi), dims, &Device::Cpu).unwrap()
}

const T: usize = 12;
const B: usize = 2;
const N: usize = 5;

/// The inputs of one feed-forward case, each differentiable.
struct Inputs {
    xs: Tensor,
    v0: Tensor,
    i0: Tensor,
    a0: Tensor,
    p: Vec<Tensor>,
}

fn inputs() -> Inputs {
    Inputs {
        xs: tensor(T * B * N, &[T, B, N], 1, 0.0, 1.2),
        v0: tensor(B * N, &[B, N], 2, -0.2, 0.95),
        i0: tensor(B * N, &[B, N], 3, -0.5, 0.5),
        a0: tensor(B * N, &[B, N], 4, -0.1, 0.1),
        p: vec![
            tensor(N, &[N], 5, 2.0, 6.0),     // adaptation_current
            tensor(N, &[N], 6, 0.0, 0.1),     // adaptation_spike
            tensor(N, &[N], 7, 0.3, 0.8),     // delta_T
            tensor(N, &[N], 8, 1.0, 5.0),     // tau_ada_inv
            tensor(N, &[N], 9, 100.0, 300.0), // tau_syn_inv
            tensor(N, &[N], 10, 50.0, 150.0), // tau_mem_inv
            tensor(N, &[N], 11, -0.1, 0.1),   // v_leak
            tensor(N, &[N], 12, 0.9, 1.1),    // v_th
            tensor(N, &[N], 13, -0.2, 0.1),   // v_reset
        ],
    }
}

fn params(p: &[Tensor], method: SurrogateMethod) -> AdexParameters {
    let t = |k: usize| Param::Tensor(p[k].clone());
    AdexParameters {
        adaptation_current: t(0),
        adaptation_spike: t(1),
        delta_t: t(2),
        tau_ada_inv: t(3),
        tau_syn_inv: t(4),
        tau_mem_inv: t(5),
        v_leak: t(6),
        v_th: t(7),
        v_reset: t(8),
        method,
        ..Default::default()
    }
}

/// loss = sum(v_T * h) + sum(a_T) + sum(i_T * 0.1) + sum(z * g), and the spikes.
fn loss(inp: &Inputs, method: SurrogateMethod) -> Result<(Tensor, Vec<f64>)> {
    let s0 = FeedForwardState {
        v: inp.v0.clone(),
        i: inp.i0.clone(),
        a: inp.a0.clone(),
    };
    let out = lif_adex_feed_forward_seq(&inp.xs, &s0, &params(&inp.p, method), false)?;
    let h = tensor(B * N, &[B, N], 20, -1.0, 1.0);
    let g = tensor(T * B * N, &[T, B, N], 21, -1.0, 1.0);
    let l = ((out.state.v * h)?.sum_all()? + out.state.a.sum_all()?)?;
    let l = ((l + (out.state.i * 0.1)?.sum_all()?)? + (&out.spikes * g)?.sum_all()?)?;
    let z = out.spikes.flatten_all()?.to_vec1::<f64>()?;
    Ok((l, z))
}

/// Checks d loss / d (every input and parameter) against central differences.
#[test]
fn feed_forward_gradients_match_finite_differences() -> Result<()> {
    let base = inputs();
    let (_, z_base) = loss(&base, SurrogateMethod::Heaviside)?;
    assert!(z_base.iter().sum::<f64>() > 3.0, "the case must spike");
    // autograd
    let vars: Vec<Var> = [&base.xs, &base.v0, &base.i0, &base.a0]
        .into_iter()
        .chain(base.p.iter())
        .map(|t| Var::from_tensor(t).unwrap())
        .collect();
    let tv: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let inp = Inputs {
        xs: tv[0].clone(),
        v0: tv[1].clone(),
        i0: tv[2].clone(),
        a0: tv[3].clone(),
        p: tv[4..].to_vec(),
    };
    let (l, _) = loss(&inp, SurrogateMethod::Heaviside)?;
    let grads = l.backward()?;
    let names: Vec<&str> = ["input", "v0", "i0", "a0"]
        .into_iter()
        .chain(candle_adex::PARAMETER_NAMES[..9].iter().copied())
        .collect();
    let mut checked = 0;
    for (k, name) in names.iter().enumerate() {
        let auto = grads
            .get(&tv[k])
            .expect(name)
            .flatten_all()?
            .to_vec1::<f64>()?;
        let flat = tv[k].flatten_all()?.to_vec1::<f64>()?;
        for e in 0..flat.len() {
            let h = 1e-6 * flat[e].abs().max(1e-2);
            let eval = |delta: f64| -> Result<(f64, Vec<f64>)> {
                let mut moved = flat.clone();
                moved[e] += delta;
                let mut all: Vec<Tensor> = tv.iter().map(|t| t.detach()).collect();
                all[k] = Tensor::from_vec(moved, tv[k].dims(), &Device::Cpu)?;
                let inp = Inputs {
                    xs: all[0].clone(),
                    v0: all[1].clone(),
                    i0: all[2].clone(),
                    a0: all[3].clone(),
                    p: all[4..].to_vec(),
                };
                let (l, z) = loss(&inp, SurrogateMethod::Heaviside)?;
                Ok((l.to_scalar::<f64>()?, z))
            };
            let ((lp, zp), (lm, zm)) = (eval(h)?, eval(-h)?);
            if zp != z_base || zm != z_base {
                continue; // a spike flipped: no derivative to compare
            }
            let fd = (lp - lm) / (2.0 * h);
            let err = (fd - auto[e]).abs() / auto[e].abs().max(1.0);
            assert!(
                err < 1e-6,
                "{name}[{e}]: autograd {} vs finite difference {fd}",
                auto[e]
            );
            checked += 1;
        }
    }
    assert!(checked > 150, "only {checked} entries compared");
    Ok(())
}

/// Surrogate methods other than heaviside add `g(x) * dL/dz` terms; in a neuron far below
/// threshold for `triangle` (g = 0 there) the gradient is again the true derivative.
#[test]
fn subthreshold_triangle_gradient_is_the_true_derivative() -> Result<()> {
    let mut inp = inputs();
    inp.xs = (inp.xs * 0.05)?; // far below threshold: v - v_th < -1
    inp.v0 = inp.v0.affine(0.0, -0.5)?;
    let p = AdexParameters {
        method: SurrogateMethod::Triangle,
        alpha: 3.0,
        v_th: 3.0.into(), // v_dec - v_th < -1 throughout: g = 0
        ..Default::default()
    };
    let f = |x: &Tensor| -> Result<Tensor> {
        let s0 = FeedForwardState {
            v: inp.v0.clone(),
            i: inp.i0.clone(),
            a: inp.a0.clone(),
        };
        let out = lif_adex_feed_forward_seq(x, &s0, &p, false)?;
        assert_eq!(out.spikes.sum_all()?.to_scalar::<f64>()?, 0.0);
        (out.state.v.sum_all()? + out.state.a.sum_all()?)?.sum_all()
    };
    let xv = Var::from_tensor(&inp.xs)?;
    let grads = f(xv.as_tensor())?.backward()?;
    let auto = grads
        .get(xv.as_tensor())
        .unwrap()
        .flatten_all()?
        .to_vec1::<f64>()?;
    let flat = inp.xs.flatten_all()?.to_vec1::<f64>()?;
    for e in (0..flat.len()).step_by(7) {
        let eval = |d: f64| -> Result<f64> {
            let mut m = flat.clone();
            m[e] += d;
            f(&Tensor::from_vec(m, inp.xs.dims(), &Device::Cpu)?)?.to_scalar::<f64>()
        };
        let fd = (eval(1e-6)? - eval(-1e-6)?) / 2e-6;
        assert!((fd - auto[e]).abs() < 1e-7, "x[{e}]: {} vs {fd}", auto[e]);
    }
    Ok(())
}

/// Gradients reach both weight matrices of the recurrent step and match finite differences.
#[test]
fn recurrent_weight_gradients_match_finite_differences() -> Result<()> {
    let (i_in, n) = (4, 6);
    let xs = tensor(T * B * i_in, &[T, B, i_in], 30, 0.0, 1.0)
        .ge(0.6)?
        .to_dtype(DType::F64)?;
    let w_in = tensor(n * i_in, &[n, i_in], 31, 0.0, 1.5);
    let w_rec = tensor(n * n, &[n, n], 32, -0.5, 0.5);
    let p = AdexParameters {
        method: SurrogateMethod::Heaviside,
        ..Default::default()
    };
    let s0 = RecurrentState::initial(&p, (B, n), DType::F64, &Device::Cpu)?;
    let h = tensor(B * n, &[B, n], 33, -1.0, 1.0);
    let f = |w_in: &Tensor, w_rec: &Tensor| -> Result<(Tensor, Vec<f64>)> {
        let out = lif_adex_seq(&xs, &s0, w_in, w_rec, &p, false)?;
        let l = ((out.state.v * &h)?.sum_all()? + out.state.i.sum_all()?)?;
        Ok((l, out.spikes.flatten_all()?.to_vec1::<f64>()?))
    };
    let (wi, wr) = (Var::from_tensor(&w_in)?, Var::from_tensor(&w_rec)?);
    let (l, z0) = f(wi.as_tensor(), wr.as_tensor())?;
    assert!(z0.iter().sum::<f64>() > 2.0, "recurrent spikes needed");
    let grads = l.backward()?;
    let mut checked = 0;
    for (which, w) in [(0, &w_in), (1, &w_rec)] {
        let auto = grads
            .get(if which == 0 {
                wi.as_tensor()
            } else {
                wr.as_tensor()
            })
            .unwrap();
        let auto = auto.flatten_all()?.to_vec1::<f64>()?;
        let flat = w.flatten_all()?.to_vec1::<f64>()?;
        for e in 0..flat.len() {
            let eval = |d: f64| -> Result<(f64, Vec<f64>)> {
                let mut m = flat.clone();
                m[e] += d;
                let moved = Tensor::from_vec(m, w.dims(), &Device::Cpu)?;
                let (l, z) = if which == 0 {
                    f(&moved, &w_rec)?
                } else {
                    f(&w_in, &moved)?
                };
                Ok((l.to_scalar::<f64>()?, z))
            };
            let ((lp, zp), (lm, zm)) = (eval(1e-7)?, eval(-1e-7)?);
            if zp != z0 || zm != z0 {
                continue;
            }
            let fd = (lp - lm) / 2e-7;
            assert!(
                (fd - auto[e]).abs() / auto[e].abs().max(1.0) < 1e-5,
                "w{which}[{e}]: {} vs {fd}",
                auto[e]
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} weights compared");
    Ok(())
}
