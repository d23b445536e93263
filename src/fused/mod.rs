//! Layer 5: the fused kernels: each AdEx call as one pass over memory, with the state kept in
//! registers/L1 across time, and a surrogate-gradient backward.
//!
//! The functions here compute what [`crate::reference`] computes (same equations, same
//! operation order, same gradients) but in a single kernel per call instead of about twenty
//! tensor ops per step. They run on the CPU (SIMD with run-time dispatch, see [`cpu`]), on CUDA
//! (feature `cuda`, `kernels/adex.cu`) and on Metal (feature `metal`, `kernels/adex.metal`, not
//! yet run on Apple hardware); on other devices, or when a parameter tensor itself needs a
//! gradient, they return an error that says so. The crate-root functions
//! ([`crate::lif_adex_feed_forward_seq`], ...) choose this path on their own and fall back to the
//! reference path where it cannot serve.
//!
//! **Autograd.** When any input or state tensor is tracked (a [`candle_core::Var`] or derived
//! from one), the call is applied as one candle custom op ([`SeqOp`]) whose packed output is
//! narrowed into spikes, final state and recorded states, so `backward()` reaches the fused
//! backward kernel (reverse-time BPTT with recomputation, see [`cpu`]). Otherwise the kernel
//! writes separate output tensors directly (no packing, `u8` spikes possible).
//!
//! **Precision.** f32, f16 and bf16 are computed in f32 (half types converted a row segment at a
//! time), f64 in f64; the f32 `exp` is a polynomial accurate to about 1 ulp. A last-bit difference
//! from the reference can flip a spike of a neuron that lands within an ulp of threshold; the tests
//! count such flips.
//!
//! ```
//! use candle_adex::{fused, reference, AdexParameters, FeedForwardState};
//! use candle_core::{DType, Device, Tensor};
//! let dev = Device::Cpu;
//! let p = AdexParameters::default();
//! let xs = (Tensor::rand(0f32, 4.0, (300, 2, 37), &dev)?);
//! let s0 = FeedForwardState::initial(&p, (2, 37), DType::F32, &dev)?;
//! let fast = fused::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
//! let slow = reference::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
//! let dv = (fast.state.v - slow.state.v)?.abs()?.max_all()?.to_scalar::<f32>()?;
//! assert!(dv < 1e-4);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub(crate) mod elem;
mod event;
#[cfg(any(feature = "cuda", feature = "metal"))]
mod gpu;
#[cfg(test)]
mod header_check;
mod inplace;
pub(crate) mod math;
#[cfg(feature = "metal")]
pub mod metal;
#[cfg(any(test, feature = "metal"))]
pub(crate) mod metal_abi;
pub(crate) mod pool;

use crate::params::{AdexParameters, Param};
use crate::reference::{self, Sequence, StateTensors};
use crate::state::{EncoderState, FeedForwardState, RecurrentState};
use crate::surrogate::SurrogateMethod;
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor,
};
use cpu::{BwdJob, Coefs, FwdJob, Rows};
use elem::{Compute, Elem};
use half::{bf16, f16};
use math::{Coef, Real, N_COEF};
use std::sync::Arc;

pub use event::{
    recurrent_input_event_driven, EventDriven, RecurrentInput, EVENT_DRIVEN_MAX_DENSITY,
};

/// Keeps freed device memory in CUDA's memory pool for the next call (see
/// [`cuda::retain_pool_memory`]); an error on other devices. Recommended for repeated large
/// calls on a GPU.
///
/// ```no_run
/// # #[cfg(feature = "cuda")] {
/// let dev = candle_core::Device::new_cuda(0)?;
/// candle_adex::fused::cuda_retain_pool_memory(&dev)?;
/// # }
/// # Ok::<(), candle_core::Error>(())
/// ```
#[cfg(feature = "cuda")]
pub fn cuda_retain_pool_memory(dev: &Device) -> Result<()> {
    cuda::retain_pool_memory(dev.as_cuda_device()?)
}

/// `cuda_retain_pool_memory` when `dev` is a CUDA device and this build has the `cuda` feature;
/// nothing otherwise. For code compiled with and without the feature (the `adex` command is a
/// crate of its own, so it cannot test this crate's features).
///
/// ```
/// candle_adex::fused::retain_pool_memory(&candle_core::Device::Cpu)?; // nothing to keep
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn retain_pool_memory(dev: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        return cuda_retain_pool_memory(dev);
    }
    let _ = dev;
    Ok(())
}

/// True when `CANDLE_ADEX_POISON` asks the GPU backends to fill every output buffer with `0xff`
/// bytes (NaN in every float type) before the kernel writes it, so that an element the kernel
/// misses shows as NaN (the GPU checks use it).
#[cfg(any(feature = "cuda", feature = "metal"))]
pub(crate) fn poisoning() -> bool {
    static P: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *P.get_or_init(|| std::env::var("CANDLE_ADEX_POISON").is_ok_and(|v| v != "0" && !v.is_empty()))
}

/// Why the fused kernels cannot serve a call, or `None` when they can: the device is not the
/// CPU, or a parameter tensor needs a gradient (the fused backward computes gradients for
/// inputs and states only).
pub fn unsupported_reason(p: &AdexParameters, device: &Device) -> Option<String> {
    let served = device.is_cpu()
        || (cfg!(feature = "cuda") && device.is_cuda())
        || (cfg!(feature = "metal") && device.is_metal());
    if !served {
        let gpus = match (cfg!(feature = "cuda"), cfg!(feature = "metal")) {
            (true, true) => ", CUDA and Metal",
            (true, false) => " and CUDA",
            (false, true) => " and Metal",
            (false, false) => "",
        };
        return Some(format!(
            "the fused kernels run on the CPU{gpus}, not on {:?}",
            device.location()
        ));
    }
    if params_track_grad(p) {
        return Some(
            "a parameter tensor needs a gradient; the fused backward differentiates inputs and states only (use the reference path)"
                .to_string(),
        );
    }
    None
}

/// True when a parameter tensor is tracked for gradients.
pub(crate) fn params_track_grad(p: &AdexParameters) -> bool {
    [
        &p.adaptation_current,
        &p.adaptation_spike,
        &p.delta_t,
        &p.tau_ada_inv,
        &p.tau_syn_inv,
        &p.tau_mem_inv,
        &p.v_leak,
        &p.v_th,
        &p.v_reset,
    ]
    .into_iter()
    .chain(p.v_peak.as_ref())
    .any(|q| matches!(q, Param::Tensor(t) if t.track_op()))
}

/// One parameter resolved to the compute precision: one value for all neurons, or one each.
#[derive(Clone)]
enum Values<F> {
    One(F),
    Each(Vec<F>),
}

impl<F: Real> Values<F> {
    fn map(self, f: impl Fn(F) -> F) -> Self {
        match self {
            Values::One(x) => Values::One(f(x)),
            Values::Each(v) => Values::Each(v.into_iter().map(f).collect()),
        }
    }

    /// `f` of the two, neuron by neuron (one value stands for every neuron).
    fn zip(&self, o: &Self, f: impl Fn(F, F) -> F) -> Self {
        match (self, o) {
            (Values::One(a), Values::One(b)) => Values::One(f(*a, *b)),
            (Values::One(a), Values::Each(b)) => {
                Values::Each(b.iter().map(|&b| f(*a, b)).collect())
            }
            (Values::Each(a), Values::One(b)) => {
                Values::Each(a.iter().map(|&a| f(a, *b)).collect())
            }
            (Values::Each(a), Values::Each(b)) => {
                Values::Each(a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect())
            }
        }
    }
}

/// Resolves one parameter to `F` values, as the reference path forms them.
fn resolve_one<F: Real>(q: &Param, dt: Option<f64>, cd: DType) -> Result<Values<F>> {
    match q {
        // The reference path converts the scalar to the compute dtype, then multiplies by dt
        // (candle's affine: x*mul + add).
        Param::Scalar(v) => {
            let x = F::from_f64(*v);
            Ok(Values::One(match dt {
                Some(dt) => x * F::from_f64(dt) + F::ZERO,
                None => x,
            }))
        }
        Param::Tensor(_) => {
            let t = q.tensor(cd, &Device::Cpu, dt)?.flatten_all()?;
            let t = t.to_dtype(DType::F64)?;
            let v: Vec<F> = t.to_vec1::<f64>()?.into_iter().map(F::from_f64).collect();
            // A 0-d tensor (or a one-neuron layer) is one value for all.
            Ok(match v[..] {
                [x] => Values::One(x),
                _ => Values::Each(v),
            })
        }
    }
}

/// The parameters for `n` neurons, in compute precision `F` (scalar parameters, the common
/// case, allocate nothing: this runs on every call).
pub(crate) fn resolve_coefs<F: Real>(
    p: &AdexParameters,
    n: usize,
    device: &Device,
) -> Result<Coefs<F>> {
    p.validate_for(n, device)?;
    let cd = if std::mem::size_of::<F>() == 8 {
        DType::F64
    } else {
        DType::F32
    };
    let plain = |q: &Param| resolve_one::<F>(q, None, cd);
    let timed = |q: &Param| resolve_one::<F>(q, Some(p.dt), cd);
    // Each parameter is resolved once (a tensor one is a copy to the host).
    let v_th = plain(&p.v_th)?;
    let v_spike = match &p.v_peak {
        Some(v_peak) => plain(v_peak)?,
        None => v_th.clone(),
    };
    let delta_t = plain(&p.delta_t)?;
    let c_mem = timed(&p.tau_mem_inv)?;
    // The membrane's exponential term in base 2 (math.rs: membrane).
    let x_scale = delta_t.clone().map(|d| F::LOG2_E / d);
    let x_offset = v_th.zip(&x_scale, |v_th, k| -(v_th * k));
    let c_exp = c_mem.zip(&delta_t, |c, d| c * d);
    let fields: [Values<F>; N_COEF] = [
        plain(&p.v_leak)?,
        x_offset,
        v_spike,
        plain(&p.v_reset)?,
        c_exp,
        x_scale,
        plain(&p.adaptation_current)?,
        plain(&p.adaptation_spike)?,
        c_mem,
        timed(&p.tau_syn_inv)?,
        timed(&p.tau_ada_inv)?,
    ];
    let mut one = [F::ZERO; N_COEF];
    let scalar = fields.iter().zip(&mut one).all(|(f, o)| match f {
        Values::One(x) => {
            *o = *x;
            true
        }
        Values::Each(_) => false,
    });
    if scalar {
        return Ok(Coefs::Scalar(Coef::from_array(one)));
    }
    Ok(Coefs::PerNeuron {
        n,
        fields: fields.map(|f| match f {
            Values::One(x) => vec![x; n],
            Values::Each(v) => v,
        }),
    })
}

/// The parameters in both compute precisions' form, chosen by the data dtype.
#[derive(Clone, Debug)]
enum AnyCoefs {
    F32(Coefs<f32>),
    F64(Coefs<f64>),
}

impl AnyCoefs {
    fn new(p: &AdexParameters, n: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(if dtype == DType::F64 {
            AnyCoefs::F64(resolve_coefs(p, n, device)?)
        } else {
            AnyCoefs::F32(resolve_coefs(p, n, device)?)
        })
    }
}

/// Which neuron a sequence op integrates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Neuron {
    /// The feed-forward neuron: state `(v, i, a)`, `i_jump = i + x` (`+ x2` with a second
    /// drive, as in the recurrent step).
    FeedForward,
    /// The (Euler) current encoder: state `(v, a)`, driven by `x` directly.
    Encoder,
}

impl Neuron {
    fn state_len(self) -> usize {
        match self {
            Neuron::FeedForward => 3,
            Neuron::Encoder => 2,
        }
    }
}

/// The fused sequence as one candle custom op, for autograd: arguments `xs [T, M]`,
/// optionally a second drive `x2 [T, M]`, and the initial state packed as `[S, M]` (`S = 3`:
/// `v, i, a`; encoder `S = 2`: `v, a`); output packed as `[T + S (+ S*T), M]`: spikes, final
/// state, and with `record` the post-step states. Its `bwd` is the fused reverse-time kernel.
#[derive(Clone, Debug)]
pub struct SeqOp {
    neuron: Neuron,
    record: bool,
    coefs: Arc<AnyCoefs>,
    method: SurrogateMethod,
    alpha: f64,
}

/// `&[E]` of a contiguous CPU tensor's storage.
fn data<'a, E: Elem>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [E]> {
    let Ok(v) = E::cpu_storage_as_slice(s) else {
        bail!(
            "fused AdEx: {what} has dtype {:?}, expected {:?}",
            s.dtype(),
            E::DTYPE
        );
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("fused AdEx: {what} must be contiguous"),
    }
}

/// Splits `buf` into consecutive pieces of `rows[k] * width` elements.
fn split_rows<'a, T>(mut buf: &'a mut [T], width: usize, rows: &[usize]) -> Vec<Rows<'a, T>> {
    let mut out = Vec::with_capacity(rows.len());
    for &r in rows {
        let (head, tail) = buf.split_at_mut(r * width);
        out.push(Rows::new(head, r, width));
        buf = tail;
    }
    out
}

/// Maps the `S` state rows of `neuron` onto the kernel's `(v, i, a)` slots.
pub(crate) fn slots<T>(neuron: Neuron, mut rows: Vec<T>) -> [Option<T>; 3] {
    match neuron {
        Neuron::FeedForward => {
            let a = rows.pop();
            let i = rows.pop();
            [rows.pop(), i, a]
        }
        Neuron::Encoder => {
            let a = rows.pop();
            [rows.pop(), None, a]
        }
    }
}

/// Zero-filled output buffer (fresh pages from the allocator where possible).
fn zeros<E: Elem>(n: usize) -> Vec<E> {
    vec![E::NIL; n]
}

impl SeqOp {
    fn fwd_typed<E: Elem>(
        &self,
        xs: &[E],
        x2: Option<&[E]>,
        st: &[E],
        m: usize,
        coefs: &Coefs<E::F>,
    ) -> Result<(CpuStorage, Shape)> {
        let s = self.neuron.state_len();
        let t = xs.len().checked_div(m).unwrap_or(0);
        let rows = t + s + if self.record { s * t } else { 0 };
        let mut out = zeros::<E>(rows * m);
        {
            let mut parts = split_rows(
                &mut out,
                m,
                &[
                    &[t][..],
                    &vec![1; s],
                    &vec![if self.record { t } else { 0 }; s],
                ]
                .concat(),
            );
            let rec: Vec<_> = parts.split_off(1 + s);
            let last: Vec<_> = parts.split_off(1);
            let spikes = parts.pop().expect("spike rows");
            let (v0, i0, a0) = match self.neuron {
                Neuron::FeedForward => (&st[..m], Some(&st[m..2 * m]), &st[2 * m..3 * m]),
                Neuron::Encoder => (&st[..m], None, &st[m..2 * m]),
            };
            let job = FwdJob {
                t,
                m,
                xs,
                x2,
                v0: v0.into(),
                i0: i0.map(Into::into),
                a0: a0.into(),
                spikes,
                last: slots(self.neuron, last),
                record: self.record.then(|| slots(self.neuron, rec)),
                coefs,
            };
            cpu::forward(job);
        }
        Ok((E::to_cpu_storage_owned(out), Shape::from((rows, m))))
    }

    fn fwd(
        &self,
        xs: (&CpuStorage, &Layout),
        x2: Option<(&CpuStorage, &Layout)>,
        st: (&CpuStorage, &Layout),
    ) -> Result<(CpuStorage, Shape)> {
        let m = st.1.dims()[1];
        macro_rules! run {
            ($e:ty, $coefs:expr) => {{
                let x2 = match x2 {
                    Some((s, l)) => Some(data::<$e>(s, l, "x2")?),
                    None => None,
                };
                self.fwd_typed::<$e>(
                    data::<$e>(xs.0, xs.1, "xs")?,
                    x2,
                    data::<$e>(st.0, st.1, "state")?,
                    m,
                    $coefs,
                )
            }};
        }
        match (xs.0.dtype(), self.coefs.as_ref()) {
            (DType::F32, AnyCoefs::F32(c)) => run!(f32, c),
            (DType::F16, AnyCoefs::F32(c)) => run!(f16, c),
            (DType::BF16, AnyCoefs::F32(c)) => run!(bf16, c),
            (DType::F64, AnyCoefs::F64(c)) => run!(f64, c),
            (dt, _) => bail!("fused AdEx: unsupported dtype {dt:?}"),
        }
    }

    /// Gradients of `(xs, state)` given the packed output gradient.
    fn bwd_all(
        &self,
        xs: &Tensor,
        x2: Option<&Tensor>,
        st: &Tensor,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        #[cfg(any(feature = "cuda", feature = "metal"))]
        if xs.device().is_cuda() || xs.device().is_metal() {
            return gpu::backward(self, xs, x2, st, grad);
        }
        let dtype = xs.dtype();
        match &*self.coefs {
            AnyCoefs::F32(c) => self.bwd_typed::<f32>(xs, x2, st, grad, c, dtype),
            AnyCoefs::F64(c) => self.bwd_typed::<f64>(xs, x2, st, grad, c, dtype),
        }
    }

    fn bwd_typed<F: Compute>(
        &self,
        xs: &Tensor,
        x2: Option<&Tensor>,
        st: &Tensor,
        grad: &Tensor,
        coefs: &Coefs<F>,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        // Borrowed in place when already in the compute precision and contiguous (f32, f64);
        // half types are converted once.
        let compute = |t: &Tensor| -> Result<Tensor> {
            t.to_dtype(<F as candle_core::WithDType>::DTYPE)?
                .contiguous()
        };
        let (t, m) = xs.dims2()?;
        let s = self.neuron.state_len();
        let owned: Vec<Tensor> = [Some(xs), x2, Some(st), Some(grad)]
            .into_iter()
            .flatten()
            .map(compute)
            .collect::<Result<_>>()?;
        let guards: Vec<_> = owned.iter().map(|t| t.storage_and_layout()).collect();
        let mut views: Vec<&[F]> = Vec::with_capacity(guards.len());
        for (g, l) in &guards {
            let Storage::Cpu(c) = &**g else {
                bail!("fused AdEx: the CPU kernels need CPU tensors");
            };
            views.push(data::<F>(c, l, "gradient input")?);
        }
        let xs_h = views[0];
        let x2_h = x2.map(|_| views[1]);
        let st_h = views[views.len() - 2];
        let g_h = views[views.len() - 1];
        let mut g_xs = vec![<F as Real>::ZERO; t * m];
        let mut g_st = vec![<F as Real>::ZERO; s * m];
        {
            let row = |k: usize| &g_h[k * m..(k + 1) * m];
            let g_last: Vec<&[F]> = (0..s).map(|k| row(t + k)).collect();
            let g_rec: Vec<&[F]> = if self.record {
                (0..s)
                    .map(|k| &g_h[(t + s + k * t) * m..(t + s + (k + 1) * t) * m])
                    .collect()
            } else {
                Vec::new()
            };
            let neuron = self.neuron;
            fn expand<T>(neuron: Neuron, v: Vec<&[T]>) -> [&[T]; 3] {
                match neuron {
                    Neuron::FeedForward => [v[0], v[1], v[2]],
                    Neuron::Encoder => [v[0], &[], v[1]],
                }
            }
            let (v0, i0, a0) = match self.neuron {
                Neuron::FeedForward => (&st_h[..m], Some(&st_h[m..2 * m]), &st_h[2 * m..]),
                Neuron::Encoder => (&st_h[..m], None, &st_h[m..]),
            };
            let g0 = split_rows(&mut g_st, m, &vec![1; s]);
            let job = BwdJob {
                t,
                m,
                xs: xs_h,
                x2: x2_h,
                v0,
                i0,
                a0,
                g_spikes: &g_h[..t * m],
                g_last: expand(neuron, g_last),
                g_record: self.record.then(|| expand(neuron, g_rec)),
                g_xs: Rows::new(&mut g_xs, t, m),
                g0: slots(self.neuron, g0),
                coefs,
                method: self.method,
                alpha: self.alpha,
            };
            cpu::backward(&job);
        }
        let dev = xs.device();
        Ok((
            Tensor::from_vec(g_xs, (t, m), dev)?.to_dtype(dtype)?,
            Tensor::from_vec(g_st, (s, m), dev)?.to_dtype(dtype)?,
        ))
    }
}

impl CustomOp2 for SeqOp {
    fn name(&self) -> &'static str {
        "adex-seq"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), None, (s2, l2))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::seq_packed(self, (s1, l1), None, (s2, l2))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        metal::seq_packed(self, (s1, l1), None, (s2, l2))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        st: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gs) = self.bwd_all(xs, None, st, grad)?;
        Ok((Some(gx), Some(gs)))
    }
}

impl CustomOp3 for SeqOp {
    fn name(&self) -> &'static str {
        "adex-seq2"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd((s1, l1), Some((s2, l2)), (s3, l3))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda::seq_packed(self, (s1, l1), Some((s2, l2)), (s3, l3))
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
        s3: &candle_core::MetalStorage,
        l3: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        metal::seq_packed(self, (s1, l1), Some((s2, l2)), (s3, l3))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        x2: &Tensor,
        st: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gs) = self.bwd_all(xs, Some(x2), st, grad)?;
        Ok((Some(gx.clone()), Some(gx), Some(gs)))
    }
}

/// The outputs of one fused sequence call, flattened to `[T, M]` / `[M]`.
struct Flat {
    spikes: Tensor,
    state: Vec<Tensor>,
    recorded: Option<Vec<Tensor>>,
}

/// One fused call on flattened tensors: `xs [T, M]`, `x2 [T, M]`, state `S` tensors `[M]`.
#[allow(clippy::too_many_arguments)]
fn run_flat(
    neuron: Neuron,
    xs: &Tensor,
    x2: Option<&Tensor>,
    state: &[Tensor],
    p: &AdexParameters,
    n: usize,
    record: bool,
    u8_spikes: bool,
) -> Result<Flat> {
    let coefs = AnyCoefs::new(p, n, xs.dtype(), xs.device())?;
    let tracked =
        xs.track_op() || x2.is_some_and(|x| x.track_op()) || state.iter().any(|s| s.track_op());
    let (t, m) = xs.dims2()?;
    if tracked {
        if u8_spikes {
            bail!("fused AdEx: u8 spikes are for inference and carry no gradient; use the float-spike function to train");
        }
        let op = SeqOp {
            neuron,
            record,
            coefs: Arc::new(coefs),
            method: p.method,
            alpha: p.alpha,
        };
        let st = Tensor::stack(state, 0)?;
        let packed = match x2 {
            Some(x2) => xs.apply_op3(x2, &st, op)?,
            None => xs.apply_op2(&st, op)?,
        };
        let s = state.len();
        let spikes = packed.narrow(0, 0, t)?;
        let fin = (0..s)
            .map(|k| packed.get(t + k))
            .collect::<Result<Vec<_>>>()?;
        let recorded = if record {
            Some(
                (0..s)
                    .map(|k| packed.narrow(0, t + s + k * t, t))
                    .collect::<Result<Vec<_>>>()?,
            )
        } else {
            None
        };
        return Ok(Flat {
            spikes,
            state: fin,
            recorded,
        });
    }
    #[cfg(any(feature = "cuda", feature = "metal"))]
    if xs.device().is_cuda() || xs.device().is_metal() {
        let op = SeqOp {
            neuron,
            record,
            coefs: Arc::new(coefs),
            method: p.method,
            alpha: p.alpha,
        };
        let (spikes, rest) = gpu::infer(&op, xs, x2, state, u8_spikes)?;
        let s = state.len();
        return Ok(Flat {
            spikes,
            state: (0..s).map(|k| rest.get(k)).collect::<Result<_>>()?,
            recorded: if record {
                Some(
                    (0..s)
                        .map(|k| rest.narrow(0, s + k * t, t))
                        .collect::<Result<_>>()?,
                )
            } else {
                None
            },
        });
    }
    macro_rules! infer {
        ($e:ty, $o:ty, $coefs:expr) => {{
            infer_typed::<$e, $o>(neuron, xs, x2, state, t, m, record, $coefs)
        }};
    }
    match (xs.dtype(), &coefs, u8_spikes) {
        (DType::F32, AnyCoefs::F32(c), false) => infer!(f32, f32, c),
        (DType::F32, AnyCoefs::F32(c), true) => infer!(f32, u8, c),
        (DType::F16, AnyCoefs::F32(c), false) => infer!(f16, f16, c),
        (DType::F16, AnyCoefs::F32(c), true) => infer!(f16, u8, c),
        (DType::BF16, AnyCoefs::F32(c), false) => infer!(bf16, bf16, c),
        (DType::BF16, AnyCoefs::F32(c), true) => infer!(bf16, u8, c),
        (DType::F64, AnyCoefs::F64(c), false) => infer!(f64, f64, c),
        (DType::F64, AnyCoefs::F64(c), true) => infer!(f64, u8, c),
        (dt, _, _) => bail!("fused AdEx: unsupported dtype {dt:?}"),
    }
}

/// The inference call: separate output tensors written by the kernel directly.
#[allow(clippy::too_many_arguments)]
fn infer_typed<E: Elem, O: Elem>(
    neuron: Neuron,
    xs: &Tensor,
    x2: Option<&Tensor>,
    state: &[Tensor],
    t: usize,
    m: usize,
    record: bool,
    coefs: &Coefs<E::F>,
) -> Result<Flat> {
    let s = state.len();
    let mut spikes = zeros::<O>(t * m);
    let mut fin: Vec<Vec<E>> = (0..s).map(|_| zeros::<E>(m)).collect();
    let mut rec: Vec<Vec<E>> = (0..if record { s } else { 0 })
        .map(|_| zeros::<E>(t * m))
        .collect();
    {
        let guards: Vec<_> = std::iter::once(xs)
            .chain(x2)
            .chain(state.iter())
            .map(|t| t.storage_and_layout())
            .collect();
        let mut slices = Vec::with_capacity(guards.len());
        for (g, l) in &guards {
            let Storage::Cpu(c) = &**g else {
                bail!("fused AdEx: the CPU kernels need CPU tensors");
            };
            slices.push(data::<E>(c, l, "input")?);
        }
        let xs_s = slices[0];
        let x2_s = x2.map(|_| slices[1]);
        let st = &slices[1 + x2.is_some() as usize..];
        let (v0, i0, a0) = match neuron {
            Neuron::FeedForward => (st[0], Some(st[1]), st[2]),
            Neuron::Encoder => (st[0], None, st[1]),
        };
        let last = fin.iter_mut().map(|f| Rows::new(f, 1, m)).collect();
        let recorded = rec.iter_mut().map(|f| Rows::new(f, t, m)).collect();
        let job = FwdJob {
            t,
            m,
            xs: xs_s,
            x2: x2_s,
            v0: v0.into(),
            i0: i0.map(Into::into),
            a0: a0.into(),
            spikes: Rows::new(&mut spikes, t, m),
            last: slots(neuron, last),
            record: record.then(|| slots(neuron, recorded)),
            coefs,
        };
        cpu::forward(job);
    }
    let dev = xs.device();
    Ok(Flat {
        spikes: Tensor::from_vec(spikes, (t, m), dev)?,
        state: fin
            .into_iter()
            .map(|f| Tensor::from_vec(f, m, dev))
            .collect::<Result<_>>()?,
        recorded: if record {
            Some(
                rec.into_iter()
                    .map(|r| Tensor::from_vec(r, (t, m), dev))
                    .collect::<Result<_>>()?,
            )
        } else {
            None
        },
    })
}

/// The backward kernel of the feed-forward sequence alone, on flattened tensors: `xs [T, M]`,
/// the initial state `[3, M]` and the gradient of the packed output `[T + 3, M]` (spikes, then
/// final `v, i, a`) give the gradients of `xs` and of the initial state. For benchmarks and
/// checks of the kernel without autograd around it.
pub(crate) fn feed_forward_seq_backward(
    xs: &Tensor,
    state: &Tensor,
    grad: &Tensor,
    p: &AdexParameters,
) -> Result<(Tensor, Tensor)> {
    let (_, m) = xs.dims2()?;
    let op = SeqOp {
        neuron: Neuron::FeedForward,
        record: false,
        coefs: Arc::new(AnyCoefs::new(p, m, xs.dtype(), xs.device())?),
        method: p.method,
        alpha: p.alpha,
    };
    op.bwd_all(xs, None, state, grad)
}

/// Checks that the fused path can serve the call.
fn check_supported(op: &str, p: &AdexParameters, device: &Device) -> Result<()> {
    if let Some(why) = unsupported_reason(p, device) {
        bail!("{op}: {why}");
    }
    Ok(())
}

/// A time-first elementwise sequence through the fused kernel, with the same checks and
/// results as the reference path's.
#[allow(clippy::too_many_arguments)]
fn seq_fused<S: StateTensors>(
    op: &str,
    neuron: Neuron,
    xs: &Tensor,
    x2: Option<&Tensor>,
    state: &S,
    p: &AdexParameters,
    record: bool,
    u8_spikes: bool,
) -> Result<Sequence<S>> {
    reference::check_sequence_input(op, xs)?;
    let list = state.to_list();
    reference::check_step::<S>(op, xs, &xs.dims()[1..], &list, true)?;
    if let Some(x2) = x2 {
        if x2.dims() != xs.dims() || x2.dtype() != xs.dtype() {
            bail!(
                "{op}: the second drive must match the input: {:?} {:?} vs {:?} {:?}",
                x2.dims(),
                x2.dtype(),
                xs.dims(),
                xs.dtype()
            );
        }
    }
    check_supported(op, p, xs.device())?;
    let n = reference::neurons(op, &list[0])?;
    let state_dims = list[0].dims().to_vec();
    let t = xs.dim(0)?;
    let m = list[0].elem_count();
    let flat = |x: &Tensor| x.reshape((t, m))?.contiguous();
    let xs_f = flat(xs)?;
    let x2_f = x2.map(flat).transpose()?;
    let st: Vec<Tensor> = list
        .iter()
        .map(|s| s.flatten_all()?.contiguous())
        .collect::<Result<_>>()?;
    let out = run_flat(neuron, &xs_f, x2_f.as_ref(), &st, p, n, record, u8_spikes)?;
    let mut seq_dims = vec![t];
    seq_dims.extend_from_slice(&state_dims);
    let state = out
        .state
        .iter()
        .map(|s| s.reshape(state_dims.as_slice()))
        .collect::<Result<Vec<_>>>()?;
    let recorded = match out.recorded {
        Some(r) => Some(
            r.iter()
                .map(|s| s.reshape(seq_dims.as_slice()))
                .collect::<Result<Vec<_>>>()?,
        ),
        None => None,
    };
    Ok(Sequence {
        spikes: out.spikes.reshape(seq_dims.as_slice())?,
        state: S::from_list(state),
        recorded: recorded.map(S::from_list),
    })
}

/// One elementwise step through the fused kernel (a sequence of length 1).
fn step_fused<S: StateTensors>(
    op: &str,
    neuron: Neuron,
    x: &Tensor,
    x2: Option<&Tensor>,
    state: &S,
    p: &AdexParameters,
) -> Result<(Tensor, S)> {
    let xs = x.unsqueeze(0)?;
    let x2 = x2.map(|x| x.unsqueeze(0)).transpose()?;
    let list = state.to_list();
    reference::check_step::<S>(op, x, x.dims(), &list, true)?;
    let out = seq_fused(op, neuron, &xs, x2.as_ref(), state, p, false, false)?;
    Ok((out.spikes.squeeze(0)?, out.state))
}

/// One feed-forward step (norse `lif_adex_feed_forward_step`) through the fused kernel.
///
/// ```
/// use candle_adex::{fused, AdexParameters, FeedForwardState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let s = FeedForwardState::initial(&p, (1, 3), DType::F32, &Device::Cpu)?;
/// let x = Tensor::new(&[[0f32, 1.0, 20.0]], &Device::Cpu)?;
/// let (z, s) = fused::lif_adex_feed_forward_step(&x, &s, &p)?;
/// assert_eq!(z.to_vec2::<f32>()?, [[0.0, 0.0, 1.0]]);
/// assert_eq!(s.v.to_vec2::<f32>()?[0][2], 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_feed_forward_step(
    x: &Tensor,
    state: &FeedForwardState,
    p: &AdexParameters,
) -> Result<(Tensor, FeedForwardState)> {
    step_fused(
        "lif_adex_feed_forward_step",
        Neuron::FeedForward,
        x,
        None,
        state,
        p,
    )
}

/// A feed-forward sequence `xs [T, ..., N]` through the fused kernel (state kept in registers
/// across time); see [`reference::lif_adex_feed_forward_seq`] for the semantics.
///
/// ```
/// use candle_adex::{fused, AdexParameters, FeedForwardState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let xs = Tensor::full(0.5f32, (100, 4), &Device::Cpu)?;
/// let s0 = FeedForwardState::initial(&p, 4, DType::F32, &Device::Cpu)?;
/// let out = fused::lif_adex_feed_forward_seq(&xs, &s0, &p, true)?;
/// assert_eq!(out.recorded.unwrap().v.dims(), &[100, 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_feed_forward_seq(
    xs: &Tensor,
    state: &FeedForwardState,
    p: &AdexParameters,
    record_states: bool,
) -> Result<Sequence<FeedForwardState>> {
    seq_fused(
        "lif_adex_feed_forward_seq",
        Neuron::FeedForward,
        xs,
        None,
        state,
        p,
        record_states,
        false,
    )
}

/// [`lif_adex_feed_forward_seq`] for inference, with the spikes as `u8` (a quarter of the f32
/// output traffic); the state keeps the input's dtype. Errors when gradients are tracked.
///
/// ```
/// use candle_adex::{fused, AdexParameters, FeedForwardState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let xs = Tensor::full(3f32, (100, 4), &Device::Cpu)?;
/// let s0 = FeedForwardState::initial(&p, 4, DType::F32, &Device::Cpu)?;
/// let out = fused::lif_adex_feed_forward_seq_u8(&xs, &s0, &p, false)?;
/// assert_eq!(out.spikes.dtype(), DType::U8);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_feed_forward_seq_u8(
    xs: &Tensor,
    state: &FeedForwardState,
    p: &AdexParameters,
    record_states: bool,
) -> Result<Sequence<FeedForwardState>> {
    seq_fused(
        "lif_adex_feed_forward_seq_u8",
        Neuron::FeedForward,
        xs,
        None,
        state,
        p,
        record_states,
        true,
    )
}

/// One step of the (Euler) current encoder through the fused kernel; see
/// [`reference::lif_adex_current_encoder`].
///
/// ```
/// use candle_adex::{fused, AdexParameters, EncoderState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let s = EncoderState::initial(&p, 2, DType::F32, &Device::Cpu)?;
/// let (z, _) = fused::lif_adex_current_encoder(&Tensor::new(&[0f32, 2000.0], &Device::Cpu)?, &s, &p)?;
/// assert_eq!(z.to_vec1::<f32>()?, [0.0, 1.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_current_encoder(
    x: &Tensor,
    state: &EncoderState,
    p: &AdexParameters,
) -> Result<(Tensor, EncoderState)> {
    step_fused(
        "lif_adex_current_encoder",
        Neuron::Encoder,
        x,
        None,
        state,
        p,
    )
}

/// The current encoder over `xs [T, ..., N]` through the fused kernel.
///
/// ```
/// use candle_adex::{fused, AdexParameters, EncoderState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let xs = Tensor::full(100f32, (50, 3), &Device::Cpu)?;
/// let s0 = EncoderState::initial(&p, 3, DType::F32, &Device::Cpu)?;
/// let out = fused::lif_adex_current_encoder_seq(&xs, &s0, &p, false)?;
/// assert!(out.spikes.sum_all()?.to_scalar::<f32>()? > 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_current_encoder_seq(
    xs: &Tensor,
    state: &EncoderState,
    p: &AdexParameters,
    record_states: bool,
) -> Result<Sequence<EncoderState>> {
    seq_fused(
        "lif_adex_current_encoder_seq",
        Neuron::Encoder,
        xs,
        None,
        state,
        p,
        record_states,
        false,
    )
}

/// [`lif_adex_current_encoder_seq`] with `u8` spikes, for inference.
pub fn lif_adex_current_encoder_seq_u8(
    xs: &Tensor,
    state: &EncoderState,
    p: &AdexParameters,
    record_states: bool,
) -> Result<Sequence<EncoderState>> {
    seq_fused(
        "lif_adex_current_encoder_seq_u8",
        Neuron::Encoder,
        xs,
        None,
        state,
        p,
        record_states,
        true,
    )
}

/// The elementwise part of the recurrent step, after the two matrix products: with
/// `input_current = x W_in^T` and `recurrent_current = z W_rec^T` (both `[..., N]`),
/// `i_jump = (i + input_current) + recurrent_current` and the AdEx update, in one kernel.
/// Returns the spikes and the new recurrent state (whose `z` is the spikes).
///
/// ```
/// use candle_adex::{fused, AdexParameters, RecurrentState};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let p = AdexParameters::default();
/// let s = RecurrentState::initial(&p, 3, DType::F32, &dev)?;
/// let input = Tensor::new(&[0f32, 0.0, 3000.0], &dev)?;
/// let rec = Tensor::zeros(3, DType::F32, &dev)?;
/// let (z, s) = fused::lif_adex_recurrent_update(&input, &rec, &s, &p)?;
/// assert_eq!(z.to_vec1::<f32>()?, [0.0, 0.0, 1.0]);
/// assert_eq!(s.z.to_vec1::<f32>()?, [0.0, 0.0, 1.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_recurrent_update(
    input_current: &Tensor,
    recurrent_current: &Tensor,
    state: &RecurrentState,
    p: &AdexParameters,
) -> Result<(Tensor, RecurrentState)> {
    let ff = FeedForwardState {
        v: state.v.clone(),
        i: state.i.clone(),
        a: state.a.clone(),
    };
    let (z, s) = step_fused(
        "lif_adex_recurrent_update",
        Neuron::FeedForward,
        input_current,
        Some(recurrent_current),
        &ff,
        p,
    )?;
    Ok((
        z.clone(),
        RecurrentState {
            z,
            v: s.v,
            i: s.i,
            a: s.a,
        },
    ))
}

/// One recurrent step (norse `lif_adex_step`): the two matrix products by candle, then the fused
/// elementwise update ([`lif_adex_recurrent_update`]).
///
/// ```
/// use candle_adex::{fused, AdexParameters, RecurrentState};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let p = AdexParameters::default();
/// let s = RecurrentState::initial(&p, (2, 3), DType::F32, &dev)?;
/// let x = Tensor::ones((2, 5), DType::F32, &dev)?;
/// let w_in = Tensor::full(10f32, (3, 5), &dev)?;
/// let w_rec = Tensor::zeros((3, 3), DType::F32, &dev)?;
/// let (z, _) = fused::lif_adex_step(&x, &s, &w_in, &w_rec, &p)?;
/// assert_eq!(z.sum_all()?.to_scalar::<f32>()?, 6.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_step(
    x: &Tensor,
    state: &RecurrentState,
    input_weights: &Tensor,
    recurrent_weights: &Tensor,
    p: &AdexParameters,
) -> Result<(Tensor, RecurrentState)> {
    const OP: &str = "lif_adex_step";
    let list = state.to_list();
    reference::check_step::<RecurrentState>(OP, x, x.dims(), &list, false)?;
    reference::check_weights(OP, x.dims(), &list[0], input_weights, recurrent_weights)?;
    check_supported(OP, p, x.device())?;
    // Computed in the compute dtype (f32 for half types) and rounded once, as the reference path.
    let cd = reference::compute_dtype(x.dtype());
    let s = cast_state(state, cd)?;
    let input = reference::linear(&x.to_dtype(cd)?, &input_weights.to_dtype(cd)?)?;
    let rec = reference::linear(&s.z, &recurrent_weights.to_dtype(cd)?)?;
    let (z, next) = lif_adex_recurrent_update(&input, &rec, &s, p)?;
    Ok((z.to_dtype(x.dtype())?, cast_state(&next, x.dtype())?))
}

/// The recurrent state converted to `dtype`.
fn cast_state(s: &RecurrentState, dtype: DType) -> Result<RecurrentState> {
    Ok(RecurrentState::from_list(reference::cast_all(
        &s.to_list(),
        dtype,
    )?))
}

/// A recurrent sequence `xs [T, ..., I]`: the input projection for all `T` in one matrix
/// product, then per step one recurrent product and the fused elementwise update.
///
/// ```
/// use candle_adex::{fused, AdexParameters, RecurrentState};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let p = AdexParameters::default();
/// let xs = Tensor::ones((20, 2, 5), DType::F32, &dev)?;
/// let s0 = RecurrentState::initial(&p, (2, 3), DType::F32, &dev)?;
/// let w_in = Tensor::full(0.5f32, (3, 5), &dev)?;
/// let w_rec = Tensor::full(-0.1f32, (3, 3), &dev)?;
/// let out = fused::lif_adex_seq(&xs, &s0, &w_in, &w_rec, &p, true)?;
/// assert_eq!(out.spikes.dims(), &[20, 2, 3]);
/// assert_eq!(out.recorded.unwrap().z.dims(), &[20, 2, 3]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_seq(
    xs: &Tensor,
    state: &RecurrentState,
    input_weights: &Tensor,
    recurrent_weights: &Tensor,
    p: &AdexParameters,
    record_states: bool,
) -> Result<Sequence<RecurrentState>> {
    lif_adex_seq_with(
        xs,
        state,
        input_weights,
        recurrent_weights,
        p,
        record_states,
        RecurrentInput::Dense,
    )
}

/// [`lif_adex_seq`] with a choice of how the recurrent input is computed each step (see
/// [`RecurrentInput`]): dense matrix products, or, for inference on the CPU, the event-driven sum
/// of the weight columns of the neurons that spiked.
///
/// ```
/// use candle_adex::{fused::{self, RecurrentInput}, AdexParameters, RecurrentState};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let p = AdexParameters::default();
/// let xs = Tensor::rand(0f64, 1.0, (50, 2, 5), &dev)?;
/// let s0 = RecurrentState::initial(&p, (2, 30), DType::F64, &dev)?;
/// let w_in = Tensor::full(0.5f64, (30, 5), &dev)?;
/// let w_rec = Tensor::randn(0f64, 0.3, (30, 30), &dev)?;
/// let run = |how| fused::lif_adex_seq_with(&xs, &s0, &w_in, &w_rec, &p, false, how);
/// let (dense, sparse) = (run(RecurrentInput::Dense)?, run(RecurrentInput::EventDriven)?);
/// let dv = (dense.state.v - sparse.state.v)?.abs()?.max_all()?.to_scalar::<f64>()?;
/// assert!(dv < 1e-9);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_seq_with(
    xs: &Tensor,
    state: &RecurrentState,
    input_weights: &Tensor,
    recurrent_weights: &Tensor,
    p: &AdexParameters,
    record_states: bool,
    recurrent_input: RecurrentInput,
) -> Result<Sequence<RecurrentState>> {
    const OP: &str = "lif_adex_seq";
    reference::check_sequence_input(OP, xs)?;
    let list = state.to_list();
    reference::check_step::<RecurrentState>(OP, xs, &xs.dims()[1..], &list, false)?;
    reference::check_weights(
        OP,
        &xs.dims()[1..],
        &list[0],
        input_weights,
        recurrent_weights,
    )?;
    check_supported(OP, p, xs.device())?;
    // The state stays in the compute dtype between steps (f32 for half types), as in the
    // reference path; outputs are rounded once at the end.
    let cd = reference::compute_dtype(xs.dtype());
    let projected = reference::linear(&xs.to_dtype(cd)?, &input_weights.to_dtype(cd)?)?;
    let w_rec = recurrent_weights.to_dtype(cd)?;
    let steps = xs.dim(0)?;
    let tracked = [xs, input_weights, recurrent_weights]
        .into_iter()
        .chain(state.tensors())
        .any(Tensor::track_op);
    let event = match recurrent_input {
        RecurrentInput::Dense => None,
        RecurrentInput::Auto if tracked || !xs.device().is_cpu() => None,
        RecurrentInput::Auto => Some((event::EventDriven::for_op(OP, &w_rec)?, false)),
        RecurrentInput::EventDriven => {
            if tracked {
                bail!("{OP}: the event-driven recurrent input has no gradient, but a tensor of the call is tracked for one (use RecurrentInput::Dense or Auto)");
            }
            Some((event::EventDriven::for_op(OP, &w_rec)?, true))
        }
    };
    let mut state = cast_state(state, cd)?;
    let mut spikes = Vec::with_capacity(steps);
    let mut recorded: Vec<RecurrentState> = Vec::new();
    for t in 0..steps {
        let sparse = match &event {
            Some((ed, always)) => {
                ed.apply_if(&state.z, |d| *always || d <= EVENT_DRIVEN_MAX_DENSITY)?
                    .1
            }
            None => None,
        };
        let rec = match sparse {
            Some(rec) => rec,
            None => reference::linear(&state.z, &w_rec)?,
        };
        let (z, next) = lif_adex_recurrent_update(&projected.get(t)?, &rec, &state, p)?;
        spikes.push(z);
        if record_states {
            recorded.push(next.clone());
        }
        state = next;
    }
    let stack = |list: Vec<Tensor>| -> Result<Tensor> {
        if list.is_empty() {
            let mut dims = vec![0];
            dims.extend_from_slice(state.v.dims());
            Tensor::zeros(dims, xs.dtype(), xs.device())
        } else {
            Tensor::stack(&list, 0)?.to_dtype(xs.dtype())
        }
    };
    let recorded = if record_states {
        let field = |f: fn(&RecurrentState) -> &Tensor| {
            stack(recorded.iter().map(|s| f(s).clone()).collect())
        };
        Some(RecurrentState {
            z: field(|s| &s.z)?,
            v: field(|s| &s.v)?,
            i: field(|s| &s.i)?,
            a: field(|s| &s.a)?,
        })
    } else {
        None
    };
    Ok(Sequence {
        spikes: stack(spikes)?,
        state: cast_state(&state, xs.dtype())?,
        recorded,
    })
}

/// The forward kernel on caller buffers: `xs` is `[t, m]` (contiguous), spikes go into
/// `spikes` (dtype `E` or `u8`), the state is read and advanced in place (each block loads its
/// initial state before it stores the final one, see [`cpu::Init`]).
#[allow(clippy::too_many_arguments)]
fn run_into<E: Elem, O: Elem>(
    op: &str,
    neuron: Neuron,
    xs: &Tensor,
    (t, m): (usize, usize),
    state: &[Tensor],
    names: &[&str],
    spikes: &Tensor,
    coefs: &Coefs<E::F>,
) -> Result<()> {
    inplace::with_views::<E, O>(op, xs, state, names, spikes, |xs, state, out| {
        let last = slots(
            neuron,
            state.into_iter().map(|s| Rows::new(s, 1, m)).collect(),
        );
        // SAFETY: each view becomes the initial state of the job whose `last` slot it reads.
        let [v0, i0, a0] = last
            .each_ref()
            .map(|r| r.as_ref().map(|r| unsafe { r.as_init() }));
        let (Some(v0), Some(a0)) = (v0, a0) else {
            bail!("{op}: missing state tensors");
        };
        cpu::forward(FwdJob {
            t,
            m,
            xs,
            x2: None,
            v0,
            i0,
            a0,
            spikes: Rows::new(out, t, m),
            last,
            record: None,
            coefs,
        });
        Ok(())
    })
}

/// The caller-buffer calls: `xs` holds `steps` steps of shape `step_dims`, which must be the
/// state's shape (`[T, ...]` for a sequence, the state's own shape for one step), `spikes` has
/// the shape of `xs`, and the state is advanced in place.
fn into<S: StateTensors>(
    op: &str,
    neuron: Neuron,
    xs: &Tensor,
    (steps, step_dims): (usize, &[usize]),
    state: &S,
    p: &AdexParameters,
    spikes: &Tensor,
) -> Result<()> {
    let list = state.to_list();
    reference::check_step::<S>(op, xs, step_dims, &list, true)?;
    check_supported(op, p, xs.device())?;
    if !xs.device().is_cpu() {
        bail!(
            "{op}: writing into caller buffers is implemented on the CPU; on {:?} use the allocating function",
            xs.device().location()
        );
    }
    if xs.track_op() || list.iter().any(|s| s.track_op()) {
        bail!("{op}: writes into caller buffers for inference and carries no gradient; use the allocating function to train");
    }
    if spikes.dims() != xs.dims() {
        bail!(
            "{op}: the spike buffer must have the input's shape {:?}, got {:?}",
            xs.dims(),
            spikes.dims()
        );
    }
    if spikes.dtype() != xs.dtype() && spikes.dtype() != DType::U8 {
        bail!(
            "{op}: the spike buffer must have the input's dtype {:?} or u8, got {:?}",
            xs.dtype(),
            spikes.dtype()
        );
    }
    if !spikes.device().is_cpu() {
        bail!("{op}: the spike buffer must be on the CPU");
    }
    let n = reference::neurons(op, &list[0])?;
    let m = list[0].elem_count();
    // No step or no neuron: nothing to write.
    if steps * m == 0 {
        return Ok(());
    }
    let xs = xs.contiguous()?;
    let coefs = AnyCoefs::new(p, n, xs.dtype(), xs.device())?;
    macro_rules! go {
        ($e:ty, $c:expr) => {
            if spikes.dtype() == DType::U8 {
                run_into::<$e, u8>(op, neuron, &xs, (steps, m), &list, S::NAMES, spikes, $c)
            } else {
                run_into::<$e, $e>(op, neuron, &xs, (steps, m), &list, S::NAMES, spikes, $c)
            }
        };
    }
    match (xs.dtype(), &coefs) {
        (DType::F32, AnyCoefs::F32(c)) => go!(f32, c),
        (DType::F16, AnyCoefs::F32(c)) => go!(f16, c),
        (DType::BF16, AnyCoefs::F32(c)) => go!(bf16, c),
        (DType::F64, AnyCoefs::F64(c)) => go!(f64, c),
        (dt, _) => bail!("{op}: unsupported dtype {dt:?}"),
    }
}

/// A sequence `xs [T, ...]` with caller-owned outputs.
fn seq_into<S: StateTensors>(
    op: &str,
    neuron: Neuron,
    xs: &Tensor,
    state: &S,
    p: &AdexParameters,
    spikes: &Tensor,
) -> Result<()> {
    reference::check_sequence_input(op, xs)?;
    into(
        op,
        neuron,
        xs,
        (xs.dim(0)?, &xs.dims()[1..]),
        state,
        p,
        spikes,
    )
}

/// One step with caller-owned outputs (`x` of the state's shape).
fn step_into<S: StateTensors>(
    op: &str,
    neuron: Neuron,
    x: &Tensor,
    state: &S,
    p: &AdexParameters,
    spikes: &Tensor,
) -> Result<()> {
    into(op, neuron, x, (1, x.dims()), state, p, spikes)
}

/// Inference with caller-owned buffers: runs the feed-forward sequence `xs [T, ..., N]`, writes
/// the spikes into `spikes` (same shape; the input's dtype or `u8`) and advances `state` in
/// place. No output is allocated, so repeated calls avoid the page faults of fresh buffers
/// (which on some machines cost more than the kernel), and the state is read and written in
/// place (no copy of it is made). Each state tensor and `spikes` must be contiguous and overlap
/// neither each other nor the input; disjoint views of one storage are fine (each storage is
/// locked once, in address order).
///
/// ```
/// use candle_adex::{fused, AdexParameters, FeedForwardState};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let p = AdexParameters::default();
/// let xs = Tensor::full(3f32, (100, 4), &dev)?;
/// let state = FeedForwardState::initial(&p, 4, DType::F32, &dev)?;
/// let spikes = Tensor::zeros((100, 4), DType::U8, &dev)?;
/// fused::lif_adex_feed_forward_seq_into(&xs, &state, &p, &spikes)?;
/// let again = fused::lif_adex_feed_forward_seq(&xs, &FeedForwardState::initial(&p, 4, DType::F32, &dev)?, &p, false)?;
/// assert_eq!(spikes.to_dtype(DType::F32)?.to_vec2::<f32>()?, again.spikes.to_vec2::<f32>()?);
/// assert_eq!(state.v.to_vec1::<f32>()?, again.state.v.to_vec1::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_feed_forward_seq_into(
    xs: &Tensor,
    state: &FeedForwardState,
    p: &AdexParameters,
    spikes: &Tensor,
) -> Result<()> {
    seq_into(
        "lif_adex_feed_forward_seq_into",
        Neuron::FeedForward,
        xs,
        state,
        p,
        spikes,
    )
}

/// One feed-forward step with caller-owned buffers: [`lif_adex_feed_forward_step`] that writes
/// the spikes into `spikes` (the shape of `x`; its dtype or `u8`) and advances `state` in place.
/// A step loop allocates nothing per step this way (the allocating step pays fresh outputs, and
/// their page faults, on every call). `spikes` may be a row of a `[T, ...]` buffer
/// (`spikes.get(t)`); the same rules as [`lif_adex_feed_forward_seq_into`] apply.
///
/// ```
/// use candle_adex::{fused, AdexParameters, FeedForwardState};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let p = AdexParameters::default();
/// let xs = Tensor::full(3f32, (100, 4), &dev)?;
/// let state = FeedForwardState::initial(&p, 4, DType::F32, &dev)?;
/// let spikes = Tensor::zeros((100, 4), DType::F32, &dev)?;
/// for t in 0..100 {
///     fused::lif_adex_feed_forward_step_into(&xs.get(t)?, &state, &p, &spikes.get(t)?)?;
/// }
/// let s0 = FeedForwardState::initial(&p, 4, DType::F32, &dev)?;
/// let seq = fused::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
/// assert_eq!(spikes.to_vec2::<f32>()?, seq.spikes.to_vec2::<f32>()?);
/// assert_eq!(state.a.to_vec1::<f32>()?, seq.state.a.to_vec1::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_feed_forward_step_into(
    x: &Tensor,
    state: &FeedForwardState,
    p: &AdexParameters,
    spikes: &Tensor,
) -> Result<()> {
    step_into(
        "lif_adex_feed_forward_step_into",
        Neuron::FeedForward,
        x,
        state,
        p,
        spikes,
    )
}

/// [`lif_adex_feed_forward_step_into`] for the current encoder.
pub fn lif_adex_current_encoder_step_into(
    x: &Tensor,
    state: &EncoderState,
    p: &AdexParameters,
    spikes: &Tensor,
) -> Result<()> {
    step_into(
        "lif_adex_current_encoder_step_into",
        Neuron::Encoder,
        x,
        state,
        p,
        spikes,
    )
}

/// [`lif_adex_feed_forward_seq_into`] for the current encoder.
pub fn lif_adex_current_encoder_seq_into(
    xs: &Tensor,
    state: &EncoderState,
    p: &AdexParameters,
    spikes: &Tensor,
) -> Result<()> {
    seq_into(
        "lif_adex_current_encoder_seq_into",
        Neuron::Encoder,
        xs,
        state,
        p,
        spikes,
    )
}
