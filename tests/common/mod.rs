//! Inputs shared by the kernel tests (tests/fused.rs, tests/gpu.rs).

use candle_adex::{AdexParameters, Param};
use candle_core::{DType, Device, Result, Tensor};

/// Input currents around the firing threshold: mostly sub-threshold drive with bursts.
pub fn currents(shape: &[usize], dtype: DType, seed: u64) -> Result<Tensor> {
    let dev = Device::Cpu;
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f32 / (1u64 << 53) as f32;
            if u < 0.1 {
                40.0 * u
            } else {
                3.0 * u - 0.5
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &dev)?.to_dtype(dtype)
}

/// Per-neuron parameters (ramps over the `n` neurons) as tensors on `dev`.
pub fn per_neuron_params(n: usize, dev: &Device) -> Result<AdexParameters> {
    let ramp = |lo: f32, hi: f32| -> Result<Param> {
        let v: Vec<f32> = (0..n)
            .map(|k| lo + (hi - lo) * k as f32 / n.max(2) as f32)
            .collect();
        Ok(Param::Tensor(Tensor::from_vec(v, n, dev)?))
    };
    Ok(AdexParameters {
        v_th: ramp(0.8, 1.2)?,
        tau_mem_inv: ramp(50.0, 150.0)?,
        adaptation_current: ramp(0.0, 6.0)?,
        delta_t: ramp(0.3, 0.7)?,
        adaptation_spike: 0.05.into(),
        ..Default::default()
    })
}

/// Tolerances (absolute + relative) for states of `dtype` after a sequence compared between
/// two kernels.
pub fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-11,
        DType::F32 => 2e-4,
        DType::F16 => 4e-3,
        _ => 2e-2,
    }
}
