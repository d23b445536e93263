//! Layer 6: the public entry points (re-exported at the crate root): the fused kernels where
//! they can serve the call, the reference path otherwise.
//!
//! The fused path ([`crate::fused`]) serves CPU tensors (and CUDA tensors when built with the
//! `cuda` feature) of every float dtype, scalar and per-neuron parameters, and gradients with
//! respect to inputs and states. A call goes to the reference path ([`crate::reference`]) when
//! the tensors live on another device (Metal, until its kernels exist) or when a parameter
//! tensor itself needs a gradient (the fused backward does not differentiate parameters; the
//! reference path does, so nothing is dropped).
//! [`with_path`] forces one path on the current thread, for comparisons and tests.

use crate::fused;
use crate::params::AdexParameters;
use crate::reference::{self, Sequence};
use crate::state::{EncoderState, FeedForwardState, RecurrentState};
use candle_core::{Device, Result, Tensor};
use std::cell::Cell;

/// Which implementation a call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// The fused kernels where they can serve the call, else the reference path (the default).
    Auto,
    /// Always the reference path (candle tensor ops).
    Reference,
    /// Always the fused kernels; calls they cannot serve are errors.
    Fused,
}

thread_local! {
    static PATH: Cell<Path> = const { Cell::new(Path::Auto) };
}

/// Runs `f` with every crate-root AdEx call on this thread going through `path`.
///
/// ```
/// use candle_adex::{lif_adex_feed_forward_seq, ops::{with_path, Path}, AdexParameters, FeedForwardState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let xs = Tensor::full(2f32, (50, 3), &Device::Cpu)?;
/// let s0 = FeedForwardState::initial(&p, 3, DType::F32, &Device::Cpu)?;
/// let slow = with_path(Path::Reference, || lif_adex_feed_forward_seq(&xs, &s0, &p, false))?;
/// let fast = lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
/// assert_eq!(slow.spikes.to_vec2::<f32>()?, fast.spikes.to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn with_path<R>(path: Path, f: impl FnOnce() -> R) -> R {
    let old = PATH.with(|c| c.replace(path));
    struct Restore(Path);
    impl Drop for Restore {
        fn drop(&mut self) {
            PATH.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(old);
    f()
}

/// True when the call should use the fused kernels.
pub(crate) fn use_fused(p: &AdexParameters, device: &Device) -> bool {
    match PATH.with(|c| c.get()) {
        Path::Auto => fused::unsupported_reason(p, device).is_none(),
        Path::Reference => false,
        Path::Fused => true,
    }
}

/// One feed-forward step (norse `lif_adex_feed_forward_step`); see
/// [`reference::lif_adex_feed_forward_step`] for the semantics.
///
/// ```
/// use candle_adex::{lif_adex_feed_forward_step, AdexParameters, FeedForwardState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let s = FeedForwardState::initial(&p, 2, DType::F32, &Device::Cpu)?;
/// let (z, _) = lif_adex_feed_forward_step(&Tensor::new(&[0f32, 50.0], &Device::Cpu)?, &s, &p)?;
/// assert_eq!(z.to_vec1::<f32>()?, [0.0, 1.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_feed_forward_step(
    x: &Tensor,
    state: &FeedForwardState,
    p: &AdexParameters,
) -> Result<(Tensor, FeedForwardState)> {
    if use_fused(p, x.device()) {
        fused::lif_adex_feed_forward_step(x, state, p)
    } else {
        reference::lif_adex_feed_forward_step(x, state, p)
    }
}

/// A feed-forward sequence `xs [T, ..., N]`; see [`reference::lif_adex_feed_forward_seq`].
///
/// ```
/// use candle_adex::{lif_adex_feed_forward_seq, AdexParameters, FeedForwardState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let xs = Tensor::full(2f32, (100, 3), &Device::Cpu)?;
/// let s0 = FeedForwardState::initial(&p, 3, DType::F32, &Device::Cpu)?;
/// let out = lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
/// assert!(out.spikes.sum_all()?.to_scalar::<f32>()? > 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_feed_forward_seq(
    xs: &Tensor,
    state: &FeedForwardState,
    p: &AdexParameters,
    record_states: bool,
) -> Result<Sequence<FeedForwardState>> {
    if use_fused(p, xs.device()) {
        fused::lif_adex_feed_forward_seq(xs, state, p, record_states)
    } else {
        reference::lif_adex_feed_forward_seq(xs, state, p, record_states)
    }
}

/// One step of the (Euler) current encoder; see [`reference::lif_adex_current_encoder`].
///
/// ```
/// use candle_adex::{lif_adex_current_encoder, AdexParameters, EncoderState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let s = EncoderState::initial(&p, 1, DType::F64, &Device::Cpu)?;
/// let (z, _) = lif_adex_current_encoder(&Tensor::new(&[5000f64], &Device::Cpu)?, &s, &p)?;
/// assert_eq!(z.to_vec1::<f64>()?, [1.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_current_encoder(
    x: &Tensor,
    state: &EncoderState,
    p: &AdexParameters,
) -> Result<(Tensor, EncoderState)> {
    if use_fused(p, x.device()) {
        fused::lif_adex_current_encoder(x, state, p)
    } else {
        reference::lif_adex_current_encoder(x, state, p)
    }
}

/// The current encoder over `xs [T, ..., N]`; see [`reference::lif_adex_current_encoder_seq`].
///
/// ```
/// use candle_adex::{lif_adex_current_encoder_seq, AdexParameters, EncoderState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let xs = Tensor::full(100f32, (50, 3), &Device::Cpu)?;
/// let s0 = EncoderState::initial(&p, 3, DType::F32, &Device::Cpu)?;
/// let out = lif_adex_current_encoder_seq(&xs, &s0, &p, false)?;
/// assert!(out.spikes.sum_all()?.to_scalar::<f32>()? > 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_current_encoder_seq(
    xs: &Tensor,
    state: &EncoderState,
    p: &AdexParameters,
    record_states: bool,
) -> Result<Sequence<EncoderState>> {
    if use_fused(p, xs.device()) {
        fused::lif_adex_current_encoder_seq(xs, state, p, record_states)
    } else {
        reference::lif_adex_current_encoder_seq(xs, state, p, record_states)
    }
}

/// One recurrent step (norse `lif_adex_step`); see [`reference::lif_adex_step`].
///
/// ```
/// use candle_adex::{lif_adex_step, AdexParameters, RecurrentState};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let p = AdexParameters::default();
/// let s = RecurrentState::initial(&p, (2, 3), DType::F32, &dev)?;
/// let x = Tensor::ones((2, 5), DType::F32, &dev)?;
/// let w_in = Tensor::full(10f32, (3, 5), &dev)?;
/// let w_rec = Tensor::zeros((3, 3), DType::F32, &dev)?;
/// let (z, _) = lif_adex_step(&x, &s, &w_in, &w_rec, &p)?;
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
    if use_fused(p, x.device()) {
        fused::lif_adex_step(x, state, input_weights, recurrent_weights, p)
    } else {
        reference::lif_adex_step(x, state, input_weights, recurrent_weights, p)
    }
}

/// A recurrent sequence `xs [T, ..., I]`; see [`reference::lif_adex_seq`].
///
/// ```
/// use candle_adex::{lif_adex_seq, AdexParameters, RecurrentState};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let p = AdexParameters::default();
/// let xs = Tensor::ones((20, 2, 5), DType::F64, &dev)?;
/// let s0 = RecurrentState::initial(&p, (2, 3), DType::F64, &dev)?;
/// let w_in = Tensor::full(0.5f64, (3, 5), &dev)?;
/// let w_rec = Tensor::full(-0.1f64, (3, 3), &dev)?;
/// let out = lif_adex_seq(&xs, &s0, &w_in, &w_rec, &p, false)?;
/// assert_eq!(out.spikes.dims(), &[20, 2, 3]);
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
    if use_fused(p, xs.device()) {
        fused::lif_adex_seq(
            xs,
            state,
            input_weights,
            recurrent_weights,
            p,
            record_states,
        )
    } else {
        reference::lif_adex_seq(
            xs,
            state,
            input_weights,
            recurrent_weights,
            p,
            record_states,
        )
    }
}
