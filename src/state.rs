//! Layer 3: neuron states and norse's initial states.
//!
//! States are plain tensors of one shape `[..., N]` (the last dimension indexes neurons), one
//! dtype and one device. Sequences reuse the same structs with a leading time dimension for
//! recorded trajectories (`[T, ..., N]`).

pub(crate) use crate::params::check_float;
use crate::params::AdexParameters;
use candle_core::{DType, Device, Result, Shape, Tensor};

/// State of the feed-forward neuron (norse `LIFAdExFeedForwardState`).
///
/// Every state type moves between devices and dtypes with `to_device` and `to_dtype`, and leaves
/// the autograd graph with `detach`:
///
/// ```
/// use candle_adex::{AdexParameters, FeedForwardState};
/// use candle_core::{DType, Device};
/// let s = FeedForwardState::initial(&AdexParameters::default(), 3, DType::F32, &Device::Cpu)?;
/// let h = s.to_dtype(DType::BF16)?.to_device(&Device::Cpu)?;
/// assert_eq!(h.v.dtype(), DType::BF16);
/// assert!(s.to_dtype(DType::I64).is_err());
/// let _carried = h.detach();
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct FeedForwardState {
    /// Membrane potential.
    pub v: Tensor,
    /// Synaptic input current.
    pub i: Tensor,
    /// Adaptation current.
    pub a: Tensor,
}

/// State of the recurrent neuron (norse `LIFAdExState`): the last spikes feed back.
#[derive(Clone, Debug)]
pub struct RecurrentState {
    /// Spikes of the previous step (0 or 1).
    pub z: Tensor,
    /// Membrane potential.
    pub v: Tensor,
    /// Synaptic input current.
    pub i: Tensor,
    /// Adaptation current.
    pub a: Tensor,
}

/// State of the current encoder: membrane potential and adaptation (no synaptic current).
#[derive(Clone, Debug)]
pub struct EncoderState {
    /// Membrane potential.
    pub v: Tensor,
    /// Adaptation current.
    pub a: Tensor,
}

/// `v_leak` broadcast to `shape` (whose last dimension is the neuron count).
fn leak_potential(
    p: &AdexParameters,
    shape: &Shape,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    check_float(dtype, format_args!("initial state"))?;
    let n = shape.dims().last().copied().unwrap_or(1);
    p.validate_for(n, device)?;
    let v = p.v_leak.tensor(dtype, device, None)?.broadcast_as(shape)?;
    // Always a fresh buffer (never the parameter's own), so that the state can be advanced in
    // place.
    if v.is_contiguous() {
        v.copy()
    } else {
        v.contiguous()
    }
}

/// `to_device`, `detach` and `to_dtype` for a state struct, tensor by tensor.
macro_rules! moves {
    ($state:ident { $($field:ident),+ }) => {
        impl $state {
            /// The same state on `device` (each tensor copied there).
            pub fn to_device(&self, device: &Device) -> Result<Self> {
                Ok($state { $($field: self.$field.to_device(device)?),+ })
            }

            /// The same state cut from the autograd graph: streaming inference carries it to the
            /// next call without chaining every call into one graph, and truncated
            /// backpropagation through time starts a new window with it.
            pub fn detach(&self) -> Self {
                $state { $($field: self.$field.detach()),+ }
            }

            /// The same state in `dtype` (f32, f64, f16 or bf16).
            pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
                check_float(dtype, format_args!("{}::to_dtype", stringify!($state)))?;
                Ok($state { $($field: self.$field.to_dtype(dtype)?),+ })
            }
        }
    };
}

moves!(FeedForwardState { v, i, a });
moves!(RecurrentState { z, v, i, a });
moves!(EncoderState { v, a });

impl FeedForwardState {
    /// norse's initial state: `v = v_leak`, `i = a = 0`, of `shape` (`[..., N]`).
    ///
    /// ```
    /// use candle_adex::{AdexParameters, FeedForwardState};
    /// use candle_core::{DType, Device};
    /// let p = AdexParameters { v_leak: (-0.1).into(), ..Default::default() };
    /// let s = FeedForwardState::initial(&p, (2, 3), DType::F32, &Device::Cpu)?;
    /// assert_eq!(s.v.to_vec2::<f32>()?, [[-0.1f32; 3]; 2]);
    /// assert_eq!(s.a.to_vec2::<f32>()?, [[0f32; 3]; 2]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn initial<S: Into<Shape>>(
        p: &AdexParameters,
        shape: S,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = shape.into();
        let v = leak_potential(p, &shape, dtype, device)?;
        // Separate buffers, so that the state can be advanced in place.
        let zeros = || Tensor::zeros(&shape, dtype, device);
        Ok(FeedForwardState {
            v,
            i: zeros()?,
            a: zeros()?,
        })
    }

    /// The tensors in the order `(v, i, a)`.
    pub fn tensors(&self) -> [&Tensor; 3] {
        [&self.v, &self.i, &self.a]
    }
}

impl RecurrentState {
    /// norse's initial state: `z = 0`, `v = v_leak`, `i = a = 0`, of `shape` (`[..., N]`).
    ///
    /// ```
    /// use candle_adex::{AdexParameters, RecurrentState};
    /// use candle_core::{DType, Device};
    /// let s = RecurrentState::initial(&AdexParameters::default(), 4, DType::F64, &Device::Cpu)?;
    /// assert_eq!(s.z.to_vec1::<f64>()?, [0.0; 4]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn initial<S: Into<Shape>>(
        p: &AdexParameters,
        shape: S,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = shape.into();
        let v = leak_potential(p, &shape, dtype, device)?;
        let zeros = || Tensor::zeros(&shape, dtype, device);
        Ok(RecurrentState {
            z: zeros()?,
            v,
            i: zeros()?,
            a: zeros()?,
        })
    }

    /// The tensors in the order `(z, v, i, a)`.
    pub fn tensors(&self) -> [&Tensor; 4] {
        [&self.z, &self.v, &self.i, &self.a]
    }
}

impl EncoderState {
    /// Initial state `v = v_leak`, `a = 0`, of `shape` (`[..., N]`).
    ///
    /// ```
    /// use candle_adex::{AdexParameters, EncoderState};
    /// use candle_core::{DType, Device};
    /// let s = EncoderState::initial(&AdexParameters::default(), (1, 5), DType::BF16, &Device::Cpu)?;
    /// assert_eq!(s.v.dims(), &[1, 5]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn initial<S: Into<Shape>>(
        p: &AdexParameters,
        shape: S,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let shape = shape.into();
        let v = leak_potential(p, &shape, dtype, device)?;
        let a = Tensor::zeros(&shape, dtype, device)?;
        Ok(EncoderState { v, a })
    }

    /// The tensors in the order `(v, a)`.
    pub fn tensors(&self) -> [&Tensor; 2] {
        [&self.v, &self.a]
    }
}
