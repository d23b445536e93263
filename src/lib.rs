//! # candle-adex
//!
//! The Adaptive Exponential Integrate-and-Fire neuron (AdEx) of the Python library
//! [norse](https://github.com/norse/norse) (`norse.torch.functional.lif_adex`), for the
//! [candle](https://github.com/huggingface/candle) tensor library: the same equations, defaults
//! and surrogate gradients, checked against golden runs of norse 1.1.0.
//!
//! The crate is built in layers, each using only those above it in this list:
//! 1. [`surrogate`]: the spike threshold and its six surrogate gradients;
//! 2. [`params`]: [`AdexParameters`] with norse's defaults, scalar or per-neuron;
//! 3. [`state`]: feed-forward, recurrent and encoder states and norse's initial states;
//! 4. [`reference`](mod@reference): the AdEx model written once as candle tensor ops, any device and dtype,
//!    differentiable;
//! 5. [`fused`]: the same model as fused kernels (CPU SIMD now), one pass over memory per call,
//!    with a reverse-time surrogate-gradient backward;
//! 6. [`ops`]: the crate-root functions, which use the fused kernels where they can serve the
//!    call and the reference path otherwise;
//! 7. [`modules`]: candle-nn modules (cells and time-first sequences, feed-forward, recurrent
//!    and encoder) with explicit states, weights from a `VarBuilder`;
//! 8. [`patterns`]: the classic AdEx firing patterns as presets (Naud et al. 2008, rescaled),
//!    step responses, spike-train features and f-I curves;
//! 9. [`conformance`]: replays norse's golden files through this crate and measures the errors.
//!
//! ```
//! use candle_adex::{lif_adex_feed_forward_seq, AdexParameters, FeedForwardState};
//! use candle_core::{DType, Device, Tensor};
//!
//! let dev = Device::Cpu;
//! let p = AdexParameters::default();
//! // 200 steps of a constant current into 8 neurons (time first: [T, N]).
//! let xs = Tensor::full(2.0f32, (200, 8), &dev)?;
//! let s0 = FeedForwardState::initial(&p, 8, DType::F32, &dev)?;
//! let out = lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
//! let spikes = out.spikes.sum_all()?.to_scalar::<f32>()?;
//! assert!(spikes > 0.0);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod bench;
pub mod conformance;
pub mod fused;
pub mod modules;
pub mod ops;
pub mod params;
pub mod patterns;
pub mod reference;
#[cfg(feature = "serde")]
mod serde_params;
pub mod state;
pub mod surrogate;

pub use ops::{
    lif_adex_current_encoder, lif_adex_current_encoder_seq, lif_adex_feed_forward_seq,
    lif_adex_feed_forward_step, lif_adex_seq, lif_adex_step,
};
pub use params::{AdexParameters, Param, PARAMETER_NAMES};
pub use reference::{
    lif_adex_current_encoder_norse_1_1_0, lif_adex_current_encoder_norse_1_1_0_seq, Sequence,
};
pub use state::{EncoderState, FeedForwardState, RecurrentState};
pub use surrogate::{threshold, SurrogateMethod};

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
