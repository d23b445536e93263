//! Layer 5d (interface): the Metal kernels as the Rust side addresses them: the embedded
//! source, the kernel names, the buffer indices and the launch-parameter layout. Compiled on
//! every platform (the Metal backend itself, [`super::metal`], only with the `metal` feature),
//! so that a test holds all of it to `kernels/adex.metal` without a Mac
//! (`src/fused/header_check.rs`: every name the backend can ask for is a kernel of the source,
//! every buffer index it binds is the index of the kernel parameter of that name).

use crate::surrogate::SurrogateMethod;
use candle_core::{bail, DType, Result};

/// The Metal source compiled at run time: the math header, then the kernels (whose `#include`
/// of the header is skipped by the header's include guard).
pub(crate) const SOURCE: &str = concat!(
    include_str!("../../kernels/adex_math.h"),
    "\n",
    include_str!("../../kernels/adex.metal")
);

/// Steps per checkpoint segment of the backward (the kernels' `ADEX_SEG`).
pub(crate) const SEG: usize = 16;

/// Buffer indices (the kernels' `ADEX_BUF_*`).
#[allow(dead_code)] // read by the backend (feature `metal`) and by the tests
pub(crate) mod buf {
    pub const XS: usize = 0;
    pub const X2: usize = 1;
    pub const V0: usize = 2;
    pub const I0: usize = 3;
    pub const A0: usize = 4;
    pub const COEFS: usize = 5;
    pub const PARAMS: usize = 6;
    pub const SPIKES: usize = 7;
    pub const LAST_V: usize = 8;
    pub const LAST_I: usize = 9;
    pub const LAST_A: usize = 10;
    pub const REC_V: usize = 11;
    pub const REC_I: usize = 12;
    pub const REC_A: usize = 13;
    pub const G_SPIKES: usize = 7;
    pub const G_LAST_V: usize = 8;
    pub const G_LAST_I: usize = 9;
    pub const G_LAST_A: usize = 10;
    pub const G_REC_V: usize = 11;
    pub const G_REC_I: usize = 12;
    pub const G_REC_A: usize = 13;
    pub const G_XS: usize = 14;
    pub const G0_V: usize = 15;
    pub const G0_I: usize = 16;
    pub const G0_A: usize = 17;
    pub const CKPT: usize = 18;
}

/// The buffers of both kernel families by the kernels' parameter names (the lint's table).
#[cfg(test)]
pub(crate) const INPUT_BUFFERS: [(&str, usize); 7] = [
    ("xs", buf::XS),
    ("x2", buf::X2),
    ("v0", buf::V0),
    ("i0", buf::I0),
    ("a0", buf::A0),
    ("coefs", buf::COEFS),
    ("prm", buf::PARAMS),
];

/// The forward kernels' outputs by parameter name.
#[cfg(test)]
pub(crate) const FWD_BUFFERS: [(&str, usize); 7] = [
    ("spikes", buf::SPIKES),
    ("last_v", buf::LAST_V),
    ("last_i", buf::LAST_I),
    ("last_a", buf::LAST_A),
    ("rec_v", buf::REC_V),
    ("rec_i", buf::REC_I),
    ("rec_a", buf::REC_A),
];

/// The backward kernels' output gradients read and gradients written, by parameter name.
#[cfg(test)]
pub(crate) const BWD_BUFFERS: [(&str, usize); 12] = [
    ("g_spikes", buf::G_SPIKES),
    ("g_last_v", buf::G_LAST_V),
    ("g_last_i", buf::G_LAST_I),
    ("g_last_a", buf::G_LAST_A),
    ("g_rec_v", buf::G_REC_V),
    ("g_rec_i", buf::G_REC_I),
    ("g_rec_a", buf::G_REC_A),
    ("g_xs", buf::G_XS),
    ("g0_v", buf::G0_V),
    ("g0_i", buf::G0_I),
    ("g0_a", buf::G0_A),
    ("ckpt", buf::CKPT),
];

/// The launch parameters (`AdexParams` in `kernels/adex.metal`, same layout: 48 bytes, which
/// the host emulation asserts on the C++ side and a test here on the Rust side).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Params {
    pub t: u64,
    pub m: u64,
    pub np: u64,
    pub syn: u32,
    pub has_x2: u32,
    pub record: u32,
    pub method: u32,
    pub alpha: f32,
    pub pad: u32,
}

/// The name suffix of a data dtype in the kernel names.
fn dtype_name(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => bail!(
            "fused AdEx (metal): Metal has no f64; use f32, f16 or bf16 on Metal (f64 runs on the CPU and CUDA)"
        ),
        dt => bail!("fused AdEx (metal): unsupported dtype {dt:?}"),
    })
}

/// The forward kernel for data dtype `dt`, spikes as `u8` or in the data dtype.
pub(crate) fn fwd_kernel(dt: DType, u8_spikes: bool) -> Result<String> {
    let d = dtype_name(dt)?;
    Ok(format!("adex_fwd_{d}_{}", if u8_spikes { "u8" } else { d }))
}

/// The backward kernel for data dtype `dt` and a surrogate method.
pub(crate) fn bwd_kernel(dt: DType, method: SurrogateMethod) -> Result<String> {
    Ok(format!("adex_bwd_{}_{}", dtype_name(dt)?, method as i32))
}

/// Every kernel the backend can ask for, with `true` for the forward ones.
#[cfg(test)]
pub(crate) fn all_kernels() -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for dt in [DType::F32, DType::F16, DType::BF16] {
        for u8s in [false, true] {
            out.push((fwd_kernel(dt, u8s).expect("a Metal dtype"), true));
        }
        for method in SurrogateMethod::ALL {
            out.push((bwd_kernel(dt, method).expect("a Metal dtype"), false));
        }
    }
    out
}
