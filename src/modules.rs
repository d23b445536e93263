//! Layer 7: candle-nn modules, mirroring norse's `LIFAdExCell`, `LIFAdEx`,
//! `LIFAdExRecurrentCell` and `LIFAdExRecurrent`, plus the current encoder.
//!
//! Modules are thin: they hold parameters (and, for the recurrent ones, weights created through
//! a [`VarBuilder`]) and call the crate-root functions ([`crate::ops`]), which use the fused
//! kernels where they can and the reference path otherwise, so every module trains with
//! surrogate gradients through either path.
//!
//! | module | norse | call |
//! |---|---|---|
//! | [`LifAdexCell`] | `LIFAdExCell` | [`step`](LifAdexCell::step): one step of input current |
//! | [`LifAdex`] | `LIFAdEx` | [`run`](LifAdex::run), [`Module`]: time-first `[T, ...]` |
//! | [`LifAdexRecurrentCell`] | `LIFAdExRecurrentCell` | [`step`](LifAdexRecurrentCell::step), [`RNN`] |
//! | [`LifAdexRecurrent`] | `LIFAdExRecurrent` | [`run`](LifAdexRecurrent::run), [`Module`] |
//! | [`LifAdexEncoder`] | `lif_adex_current_encoder` | [`step`](LifAdexEncoder::step), [`run`](LifAdexEncoder::run), [`Module`] |
//!
//! States are explicit: every call takes `Option<&State>` (`None` is norse's initial state:
//! `z = 0`, `v = v_leak`, `i = a = 0`, shaped like one step of the output) and returns the new
//! state. Inputs may be unbatched (`[N]`, `[T, N]`) or carry any batch dimensions
//! (`[B, N]`, `[T, B, N]`, ...); the last dimension indexes neurons (features for the
//! recurrent input).
//!
//! **Autapses.** With `autapses = false` (norse's default) the recurrent modules use the
//! recurrent weights with their diagonal multiplied by zero at every call, so no neuron feeds
//! itself, the diagonal's gradient is exactly zero, and the weights the model uses
//! ([`LifAdexRecurrentCell::recurrent_weights`]) keep a zero diagonal through any optimiser
//! step. (norse zeroes the stored diagonal once and masks its gradient with a hook; the effect
//! is the same.)
//!
//! ```
//! use candle_adex::modules::{LifAdex, LifAdexRecurrent, RecurrentConfig};
//! use candle_adex::AdexParameters;
//! use candle_core::{DType, Device, Module, Tensor};
//! use candle_nn::{VarBuilder, VarMap};
//!
//! let dev = Device::Cpu;
//! let varmap = VarMap::new();
//! let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
//! let p = AdexParameters::default();
//! // input currents [T = 100, B = 4, I = 10] -> 32 recurrent AdEx neurons -> 32 feed-forward ones
//! let rec = LifAdexRecurrent::new(10, 32, p.clone(), RecurrentConfig::default(), vb.pp("rec"))?;
//! let ff = LifAdex::new(p)?;
//! let xs = Tensor::rand(0f32, 2.0, (100, 4, 10), &dev)?;
//! let spikes = ff.forward(&(rec.forward(&xs)? * 5.0)?)?;
//! assert_eq!(spikes.dims(), &[100, 4, 32]);
//! assert_eq!(varmap.all_vars().len(), 2); // input and recurrent weights
//! # Ok::<(), candle_core::Error>(())
//! ```

use crate::fused::RecurrentInput;
use crate::params::AdexParameters;
use crate::reference::Sequence;
use crate::state::{EncoderState, FeedForwardState, RecurrentState};
use candle_core::{bail, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder, RNN};
use std::borrow::Cow;

/// The caller's state, or the initial one made by `initial`.
fn state_or<'a, S: Clone>(
    state: Option<&'a S>,
    initial: impl FnOnce() -> Result<S>,
) -> Result<Cow<'a, S>> {
    Ok(match state {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(initial()?),
    })
}

/// The shape of one step of a time-first input `[T, ...]`.
fn step_dims<'a>(module: &str, xs: &'a Tensor) -> Result<&'a [usize]> {
    if xs.rank() < 2 {
        bail!(
            "{module}: the input must be time-first [T, ..., N] with at least two dimensions, got {:?}",
            xs.dims()
        );
    }
    Ok(&xs.dims()[1..])
}

/// A feed-forward AdEx cell (norse `LIFAdExCell`): one step of input current `[..., N]`.
///
/// ```
/// use candle_adex::{modules::LifAdexCell, AdexParameters};
/// use candle_core::{Device, Tensor};
/// let cell = LifAdexCell::new(AdexParameters::default())?;
/// let x = Tensor::new(&[[0f32, 200.0], [1.0, 300.0]], &Device::Cpu)?;
/// let (z, s) = cell.step(&x, None)?; // from rest
/// assert_eq!(z.to_vec2::<f32>()?, [[0.0, 1.0], [0.0, 1.0]]);
/// let (_z, _s) = cell.step(&x, Some(&s))?; // state fed back
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LifAdexCell {
    params: AdexParameters,
}

impl LifAdexCell {
    /// A cell with these parameters (validated).
    pub fn new(params: AdexParameters) -> Result<Self> {
        params.validate()?;
        Ok(Self { params })
    }

    /// The parameters.
    pub fn params(&self) -> &AdexParameters {
        &self.params
    }

    /// norse's initial state for an input step `x`: `v = v_leak`, `i = a = 0`, shaped like `x`.
    pub fn initial_state(&self, x: &Tensor) -> Result<FeedForwardState> {
        FeedForwardState::initial(&self.params, x.shape(), x.dtype(), x.device())
    }

    /// One step: spikes `[..., N]` and the new state; `None` starts from
    /// [`initial_state`](Self::initial_state).
    pub fn step(
        &self,
        x: &Tensor,
        state: Option<&FeedForwardState>,
    ) -> Result<(Tensor, FeedForwardState)> {
        let state = state_or(state, || self.initial_state(x))?;
        crate::ops::lif_adex_feed_forward_step(x, &state, &self.params)
    }
}

/// A feed-forward AdEx sequence (norse `LIFAdEx`): input currents `[T, ..., N]` to spikes
/// `[T, ..., N]` and the final state, the state kept in registers across time by the fused
/// kernel.
///
/// ```
/// use candle_adex::{modules::LifAdex, AdexParameters};
/// use candle_core::{Device, Module, Tensor};
/// let layer = LifAdex::new(AdexParameters::default())?.with_record_states(true);
/// let xs = Tensor::full(1.5f32, (100, 2, 8), &Device::Cpu)?;
/// let out = layer.run(&xs, None)?;
/// assert_eq!(out.recorded.unwrap().v.dims(), &[100, 2, 8]); // every post-step state
/// assert_eq!(layer.forward(&xs)?.to_vec3::<f32>()?, out.spikes.to_vec3::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LifAdex {
    cell: LifAdexCell,
    record_states: bool,
}

impl LifAdex {
    /// A sequence layer with these parameters (validated), not recording states.
    pub fn new(params: AdexParameters) -> Result<Self> {
        Ok(Self {
            cell: LifAdexCell::new(params)?,
            record_states: false,
        })
    }

    /// Whether [`run`](Self::run) returns every post-step state (norse's `record_states`).
    pub fn with_record_states(mut self, record_states: bool) -> Self {
        self.record_states = record_states;
        self
    }

    /// The one-step cell with the same parameters.
    pub fn cell(&self) -> &LifAdexCell {
        &self.cell
    }

    /// norse's initial state for the input `xs [T, ...]`: shaped like one step.
    pub fn initial_state(&self, xs: &Tensor) -> Result<FeedForwardState> {
        let dims = step_dims("LifAdex", xs)?;
        FeedForwardState::initial(&self.cell.params, dims, xs.dtype(), xs.device())
    }

    /// Runs the sequence from `state` (`None`: [`initial_state`](Self::initial_state)).
    pub fn run(
        &self,
        xs: &Tensor,
        state: Option<&FeedForwardState>,
    ) -> Result<Sequence<FeedForwardState>> {
        let state = state_or(state, || self.initial_state(xs))?;
        crate::ops::lif_adex_feed_forward_seq(xs, &state, &self.cell.params, self.record_states)
    }
}

impl Module for LifAdex {
    /// Spikes `[T, ..., N]` from norse's initial state.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.run(xs, None)?.spikes)
    }
}

/// The AdEx current encoder as a module: currents `[T, ..., N]` (or one step `[..., N]`) to
/// spikes, state `(v, a)` (the Euler encoder of [`crate::lif_adex_current_encoder`]).
///
/// ```
/// use candle_adex::{modules::LifAdexEncoder, AdexParameters};
/// use candle_core::{Device, Module, Tensor};
/// let enc = LifAdexEncoder::new(AdexParameters::default())?;
/// let xs = Tensor::new(&[[0f32, 3.0, 8.0]], &Device::Cpu)?.repeat((100, 1))?;
/// let counts = enc.forward(&xs)?.sum(0)?.to_vec1::<f32>()?;
/// assert!(counts[0] == 0.0 && counts[1] < counts[2]); // rate grows with the current
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LifAdexEncoder {
    params: AdexParameters,
    record_states: bool,
}

impl LifAdexEncoder {
    /// An encoder with these parameters (validated), not recording states.
    pub fn new(params: AdexParameters) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            params,
            record_states: false,
        })
    }

    /// Whether [`run`](Self::run) returns every post-step state.
    pub fn with_record_states(mut self, record_states: bool) -> Self {
        self.record_states = record_states;
        self
    }

    /// The parameters.
    pub fn params(&self) -> &AdexParameters {
        &self.params
    }

    /// The initial state `v = v_leak`, `a = 0` for one step of input `x [..., N]`.
    pub fn initial_state(&self, x: &Tensor) -> Result<EncoderState> {
        EncoderState::initial(&self.params, x.shape(), x.dtype(), x.device())
    }

    /// One step of the encoder from `state` (`None`: the initial state).
    pub fn step(&self, x: &Tensor, state: Option<&EncoderState>) -> Result<(Tensor, EncoderState)> {
        let state = state_or(state, || self.initial_state(x))?;
        crate::ops::lif_adex_current_encoder(x, &state, &self.params)
    }

    /// The encoder over `xs [T, ..., N]` from `state` (`None`: the initial state).
    pub fn run(&self, xs: &Tensor, state: Option<&EncoderState>) -> Result<Sequence<EncoderState>> {
        let state = state_or(state, || {
            let dims = step_dims("LifAdexEncoder", xs)?;
            EncoderState::initial(&self.params, dims, xs.dtype(), xs.device())
        })?;
        crate::ops::lif_adex_current_encoder_seq(xs, &state, &self.params, self.record_states)
    }
}

impl Module for LifAdexEncoder {
    /// Spikes `[T, ..., N]` from the initial state.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.run(xs, None)?.spikes)
    }
}

/// Options of the recurrent modules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecurrentConfig {
    /// Whether a neuron may feed its own spikes back to itself (norse's `autapses`, default
    /// `false`: the diagonal of the recurrent weights is held at zero).
    pub autapses: bool,
    /// Whether [`LifAdexRecurrent::run`] returns every post-step state.
    pub record_states: bool,
    /// How [`LifAdexRecurrent::run`] computes the recurrent input (default
    /// [`RecurrentInput::Auto`]: event-driven for sparse spikes at inference on the CPU).
    pub recurrent_input: RecurrentInput,
}

impl Default for RecurrentConfig {
    fn default() -> Self {
        Self {
            autapses: false,
            record_states: false,
            recurrent_input: RecurrentInput::Auto,
        }
    }
}

/// A recurrent AdEx cell (norse `LIFAdExRecurrentCell`): input `[..., I]` through input weights
/// `[H, I]`, the previous spikes through recurrent weights `[H, H]`, one step.
///
/// Also implements candle-nn's [`RNN`] trait (whose sequences are batch-first `[B, T, I]`).
///
/// ```
/// use candle_adex::{modules::{LifAdexRecurrentCell, RecurrentConfig}, AdexParameters};
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::{VarBuilder, VarMap, RNN};
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let cell = LifAdexRecurrentCell::new(3, 5, AdexParameters::default(), RecurrentConfig::default(), vb)?;
/// let x = Tensor::ones((2, 3), DType::F32, &Device::Cpu)?; // [B, I]
/// let (z, s) = cell.step(&x, None)?;
/// assert_eq!(z.dims(), &[2, 5]);
/// let w = cell.recurrent_weights()?; // the weights the cell uses: no autapses
/// assert!(w.to_vec2::<f32>()?.iter().enumerate().all(|(k, row)| row[k] == 0.0));
/// // candle-nn's RNN trait, batch-first [B, T, I]
/// let states = cell.seq(&Tensor::ones((2, 7, 3), DType::F32, &Device::Cpu)?)?;
/// assert_eq!(cell.states_to_tensor(&states)?.dims(), &[2, 7, 5]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LifAdexRecurrentCell {
    input_weights: Tensor,
    recurrent_weights: Tensor,
    /// `1 - I` when autapses are off.
    no_autapses: Option<Tensor>,
    params: AdexParameters,
}

impl LifAdexRecurrentCell {
    /// A cell of `hidden_size` neurons reading `input_size` features. The weights
    /// `input_weights [H, I]` and `recurrent_weights [H, H]` come from `vb` (created with norse's
    /// initialisation, normal with std `sqrt(2 / H)`, when `vb` creates them).
    pub fn new(
        input_size: usize,
        hidden_size: usize,
        params: AdexParameters,
        config: RecurrentConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        if input_size == 0 || hidden_size == 0 {
            bail!("LifAdexRecurrentCell: input_size ({input_size}) and hidden_size ({hidden_size}) must be positive");
        }
        let init = Init::Randn {
            mean: 0.0,
            stdev: (2.0 / hidden_size as f64).sqrt(),
        };
        let w_in = vb.get_with_hints((hidden_size, input_size), "input_weights", init)?;
        let w_rec = vb.get_with_hints((hidden_size, hidden_size), "recurrent_weights", init)?;
        Self::from_weights(w_in, w_rec, params, config.autapses)
    }

    /// A cell with the given weights `input_weights [H, I]`, `recurrent_weights [H, H]` (for
    /// instance norse's, or `Var`s of your own).
    pub fn from_weights(
        input_weights: Tensor,
        recurrent_weights: Tensor,
        params: AdexParameters,
        autapses: bool,
    ) -> Result<Self> {
        const M: &str = "LifAdexRecurrentCell";
        let (h, _i) = input_weights.dims2().map_err(|_| {
            candle_core::Error::Msg(format!(
                "{M}: input_weights must be [H, I], got {:?}",
                input_weights.dims()
            ))
        })?;
        if recurrent_weights.dims() != [h, h] {
            bail!(
                "{M}: recurrent_weights must be [H, H] = [{h}, {h}] to match input_weights {:?}, got {:?}",
                input_weights.dims(),
                recurrent_weights.dims()
            );
        }
        crate::reference::check_same(
            M,
            &[
                ("input_weights", &input_weights),
                ("recurrent_weights", &recurrent_weights),
            ],
            None,
        )?;
        params.validate_for(h, input_weights.device())?;
        let no_autapses = if autapses {
            None
        } else {
            let dev = recurrent_weights.device();
            let eye = Tensor::eye(h, recurrent_weights.dtype(), dev)?;
            Some((Tensor::ones((h, h), recurrent_weights.dtype(), dev)? - eye)?)
        };
        Ok(Self {
            input_weights,
            recurrent_weights,
            no_autapses,
            params,
        })
    }

    /// The parameters.
    pub fn params(&self) -> &AdexParameters {
        &self.params
    }

    /// The number of input features `I`.
    pub fn input_size(&self) -> usize {
        self.input_weights.dims()[1]
    }

    /// The number of neurons `H`.
    pub fn hidden_size(&self) -> usize {
        self.input_weights.dims()[0]
    }

    /// The input weights `[H, I]`.
    pub fn input_weights(&self) -> &Tensor {
        &self.input_weights
    }

    /// The recurrent weights `[H, H]` as the model uses them: without autapses, the stored
    /// weights with their diagonal multiplied by zero (differentiable; the diagonal gets no
    /// gradient).
    pub fn recurrent_weights(&self) -> Result<Tensor> {
        match &self.no_autapses {
            Some(mask) => self.recurrent_weights.mul(mask),
            None => Ok(self.recurrent_weights.clone()),
        }
    }

    /// norse's initial state for an input step `x [..., I]`: `z = 0`, `v = v_leak`, `i = a = 0`
    /// of shape `[..., H]`.
    pub fn initial_state(&self, x: &Tensor) -> Result<RecurrentState> {
        let Some((_, batch)) = x.dims().split_last() else {
            bail!("LifAdexRecurrentCell: the input must be [..., I], got a scalar");
        };
        let mut dims = batch.to_vec();
        dims.push(self.hidden_size());
        RecurrentState::initial(&self.params, dims, x.dtype(), x.device())
    }

    /// One step from `state` (`None`: [`initial_state`](Self::initial_state)): spikes
    /// `[..., H]` and the new state.
    pub fn step(
        &self,
        x: &Tensor,
        state: Option<&RecurrentState>,
    ) -> Result<(Tensor, RecurrentState)> {
        let state = state_or(state, || self.initial_state(x))?;
        let w_rec = self.recurrent_weights()?;
        crate::ops::lif_adex_step(x, &state, &self.input_weights, &w_rec, &self.params)
    }
}

impl RNN for LifAdexRecurrentCell {
    type State = RecurrentState;

    /// norse's initial state for `batch_dim` rows: `[B, H]` in the weights' dtype and device.
    fn zero_state(&self, batch_dim: usize) -> Result<RecurrentState> {
        RecurrentState::initial(
            &self.params,
            (batch_dim, self.hidden_size()),
            self.input_weights.dtype(),
            self.input_weights.device(),
        )
    }

    fn step(&self, input: &Tensor, state: &RecurrentState) -> Result<RecurrentState> {
        Ok(LifAdexRecurrentCell::step(self, input, Some(state))?.1)
    }

    /// The spikes of each state stacked batch-first: `[B, T, H]`.
    fn states_to_tensor(&self, states: &[RecurrentState]) -> Result<Tensor> {
        let zs: Vec<&Tensor> = states.iter().map(|s| &s.z).collect();
        Tensor::stack(&zs, 1)
    }
}

/// A recurrent AdEx sequence (norse `LIFAdExRecurrent`): inputs `[T, ..., I]` to spikes
/// `[T, ..., H]`. The input is projected for all `T` in one matrix product; each step then adds
/// the recurrent input (a dense product, or event-driven for sparse spikes at inference, see
/// [`RecurrentInput`]) and runs the fused elementwise update.
///
/// ```
/// use candle_adex::{modules::{LifAdexRecurrent, RecurrentConfig}, AdexParameters};
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// let varmap = VarMap::new();
/// let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
/// let config = RecurrentConfig { record_states: true, ..Default::default() };
/// let layer = LifAdexRecurrent::new(4, 16, AdexParameters::default(), config, vb)?;
/// let xs = Tensor::rand(0f32, 3.0, (50, 4), &Device::Cpu)?; // unbatched [T, I]
/// let out = layer.run(&xs, None)?;
/// assert_eq!(out.spikes.dims(), &[50, 16]);
/// assert_eq!(out.recorded.unwrap().a.dims(), &[50, 16]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LifAdexRecurrent {
    cell: LifAdexRecurrentCell,
    record_states: bool,
    recurrent_input: RecurrentInput,
}

impl LifAdexRecurrent {
    /// A layer of `hidden_size` neurons reading `input_size` features, weights from `vb` as in
    /// [`LifAdexRecurrentCell::new`].
    pub fn new(
        input_size: usize,
        hidden_size: usize,
        params: AdexParameters,
        config: RecurrentConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cell = LifAdexRecurrentCell::new(input_size, hidden_size, params, config, vb)?;
        Ok(Self::from_cell(cell, config))
    }

    /// A layer around an existing cell (its weights and parameters); `config.autapses` is the
    /// cell's own.
    pub fn from_cell(cell: LifAdexRecurrentCell, config: RecurrentConfig) -> Self {
        Self {
            cell,
            record_states: config.record_states,
            recurrent_input: config.recurrent_input,
        }
    }

    /// The one-step cell (same weights and parameters).
    pub fn cell(&self) -> &LifAdexRecurrentCell {
        &self.cell
    }

    /// The same layer computing the recurrent input as `how` says.
    pub fn with_recurrent_input(mut self, how: RecurrentInput) -> Self {
        self.recurrent_input = how;
        self
    }

    /// norse's initial state for `xs [T, ..., I]`: `[..., H]`.
    pub fn initial_state(&self, xs: &Tensor) -> Result<RecurrentState> {
        step_dims("LifAdexRecurrent", xs)?;
        self.cell.initial_state(&xs.get(0)?)
    }

    /// Runs the sequence from `state` (`None`: [`initial_state`](Self::initial_state)).
    pub fn run(
        &self,
        xs: &Tensor,
        state: Option<&RecurrentState>,
    ) -> Result<Sequence<RecurrentState>> {
        let state = state_or(state, || self.initial_state(xs))?;
        let w_rec = self.cell.recurrent_weights()?;
        let p = &self.cell.params;
        let (w_in, record) = (&self.cell.input_weights, self.record_states);
        if crate::ops::use_fused(p, xs.device()) {
            crate::fused::lif_adex_seq_with(
                xs,
                &state,
                w_in,
                &w_rec,
                p,
                record,
                self.recurrent_input,
            )
        } else if self.recurrent_input == RecurrentInput::EventDriven {
            bail!(
                "LifAdexRecurrent: the event-driven recurrent input needs the fused path: {}",
                crate::fused::unsupported_reason(p, xs.device())
                    .unwrap_or_else(|| "the reference path was forced".into())
            )
        } else {
            crate::reference::lif_adex_seq(xs, &state, w_in, &w_rec, p, record)
        }
    }
}

impl Module for LifAdexRecurrent {
    /// Spikes `[T, ..., H]` from norse's initial state.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.run(xs, None)?.spikes)
    }
}
