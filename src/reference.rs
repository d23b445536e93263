//! Layer 4: the reference path, the AdEx model written once as candle tensor ops.
//!
//! Runs on every device and float dtype and is differentiable with candle's `backward()`
//! (surrogate gradients through the spike, see [`crate::surrogate`]). Operation order is
//! norse 1.1.0's, so f64 runs agree with norse to about 1e-12 and f32 runs to a few ulp:
//!
//! ```text
//! i_jump = i + x                              (recurrent: i + x W_in^T + z W_rec^T)
//! dv     = dt*tau_mem_inv * (((v_leak - v) + delta_T*exp((v - v_th)/delta_T)) + i_jump - a)
//! v_dec  = v + dv
//! i_new  = i_jump - dt*tau_syn_inv*i_jump
//! a_dec  = a + dt*tau_ada_inv*(adaptation_current*(v - v_leak) - a)    (old v, old a)
//! z      = threshold(v_dec - v_th)            (v_dec - v_peak when v_peak is set)
//! v_new  = (1 - z)*v_dec + z*v_reset
//! a_new  = a_dec + z*adaptation_spike
//! ```
//!
//! Deliberate deviations from norse (documented in the README):
//! - **No NaN from exp overflow.** The exponent is capped below the dtype's overflow point and
//!   the reset is a select, so a spiking neuron always resets to `v_reset` (norse computes
//!   `0*inf = NaN`). The reset's gradient stays norse's: `d v_new/d z = v_reset - v_dec` where
//!   `v_dec` is finite, 0 where it is not.
//! - **The current encoder integrates the adaptation with Euler** (it is the feed-forward update
//!   with no synaptic current). norse 1.1.0's diverging version is
//!   [`lif_adex_current_encoder_norse_1_1_0`].
//! - **f16/bf16 are computed in f32** and rounded once when stored; a sequence keeps its state in
//!   f32 from step to step (torch rounds every intermediate to the low-precision type).

use crate::params::AdexParameters;
use crate::state::{check_float, EncoderState, FeedForwardState, RecurrentState};
use crate::surrogate::{finite_mask, straight_through, threshold_with_mask, SurrogateMethod};
use candle_core::{bail, DType, Device, Result, Shape, Tensor};

/// The result of a time-first sequence.
#[derive(Clone, Debug)]
pub struct Sequence<S> {
    /// Spikes `[T, ...]`, 0 or 1 in the input's dtype.
    pub spikes: Tensor,
    /// The state after the last step.
    pub state: S,
    /// With `record_states`: every post-step state, each tensor stacked to `[T, ...]`
    /// (norse's `record_states`).
    pub recorded: Option<S>,
}

/// A state as a list of tensors, so that one generic driver serves every neuron kind.
pub(crate) trait StateTensors: Sized {
    /// The tensors' names in error messages (`state.v`, ...), in list order.
    const NAMES: &'static [&'static str];
    fn to_list(&self) -> Vec<Tensor>;
    fn from_list(list: Vec<Tensor>) -> Self;
}

impl StateTensors for FeedForwardState {
    const NAMES: &'static [&'static str] = &["state.v", "state.i", "state.a"];
    fn to_list(&self) -> Vec<Tensor> {
        self.tensors().into_iter().cloned().collect()
    }
    fn from_list(l: Vec<Tensor>) -> Self {
        let [v, i, a]: [Tensor; 3] = l.try_into().expect("three state tensors");
        FeedForwardState { v, i, a }
    }
}

impl StateTensors for RecurrentState {
    const NAMES: &'static [&'static str] = &["state.z", "state.v", "state.i", "state.a"];
    fn to_list(&self) -> Vec<Tensor> {
        self.tensors().into_iter().cloned().collect()
    }
    fn from_list(l: Vec<Tensor>) -> Self {
        let [z, v, i, a]: [Tensor; 4] = l.try_into().expect("four state tensors");
        RecurrentState { z, v, i, a }
    }
}

impl StateTensors for EncoderState {
    const NAMES: &'static [&'static str] = &["state.v", "state.a"];
    fn to_list(&self) -> Vec<Tensor> {
        self.tensors().into_iter().cloned().collect()
    }
    fn from_list(l: Vec<Tensor>) -> Self {
        let [v, a]: [Tensor; 2] = l.try_into().expect("two state tensors");
        EncoderState { v, a }
    }
}

/// The precision the model is computed in: f64 for f64, f32 for everything else.
pub fn compute_dtype(dtype: DType) -> DType {
    if dtype == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Largest exponent passed to `exp`: `delta_T * exp(u)` stays finite, and a neuron this far
/// above threshold spikes and resets either way.
fn exp_arg_cap(dtype: DType) -> f64 {
    if dtype == DType::F64 {
        709.0
    } else {
        88.0
    }
}

/// The parameters resolved to tensors (`[]` or `[N]`) in the compute dtype, with the `dt`
/// products formed as norse forms them.
pub(crate) struct Coeffs {
    v_leak: Tensor,
    v_th: Tensor,
    v_spike: Tensor,
    v_reset: Tensor,
    delta_t: Tensor,
    adaptation_current: Tensor,
    adaptation_spike: Tensor,
    /// `dt * tau_mem_inv`
    c_mem: Tensor,
    /// `dt * tau_syn_inv`
    c_syn: Tensor,
    /// `dt * tau_ada_inv`
    c_ada: Tensor,
    /// `tau_ada_inv` itself (only norse 1.1.0's encoder uses it without `dt`)
    tau_ada_inv: Tensor,
    method: SurrogateMethod,
    alpha: f64,
    exp_cap: f64,
}

impl Coeffs {
    /// Validates `p` for `n` neurons on `device` and resolves it for compute dtype `dtype`.
    pub(crate) fn new(p: &AdexParameters, n: usize, dtype: DType, device: &Device) -> Result<Self> {
        p.validate_for(n, device)?;
        let plain = |q: &crate::Param| q.tensor(dtype, device, None);
        let timed = |q: &crate::Param| q.tensor(dtype, device, Some(p.dt));
        let v_th = plain(&p.v_th)?;
        let v_spike = match &p.v_peak {
            Some(v_peak) => plain(v_peak)?,
            None => v_th.clone(),
        };
        Ok(Coeffs {
            v_leak: plain(&p.v_leak)?,
            v_th,
            v_spike,
            v_reset: plain(&p.v_reset)?,
            delta_t: plain(&p.delta_t)?,
            adaptation_current: plain(&p.adaptation_current)?,
            adaptation_spike: plain(&p.adaptation_spike)?,
            c_mem: timed(&p.tau_mem_inv)?,
            c_syn: timed(&p.tau_syn_inv)?,
            c_ada: timed(&p.tau_ada_inv)?,
            tau_ada_inv: plain(&p.tau_ada_inv)?,
            method: p.method,
            alpha: p.alpha,
            exp_cap: exp_arg_cap(dtype),
        })
    }

    /// `v_dec = v + dt*tau_mem_inv*(((v_leak - v) + delta_T*exp((v - v_th)/delta_T)) + drive - a)`
    fn membrane(&self, v: &Tensor, drive: &Tensor, a: &Tensor) -> Result<Tensor> {
        let u = v.broadcast_sub(&self.v_th)?.broadcast_div(&self.delta_t)?;
        let exp_term = u
            .minimum(self.exp_cap)?
            .exp()?
            .broadcast_mul(&self.delta_t)?;
        let bracket = ((self.v_leak.broadcast_sub(v)? + exp_term)? + drive)?.sub(a)?;
        v + bracket.broadcast_mul(&self.c_mem)?
    }

    /// `a_dec = a + dt*tau_ada_inv*(adaptation_current*(v - v_leak) - a)`
    fn adaptation(&self, v: &Tensor, a: &Tensor) -> Result<Tensor> {
        let drive = v
            .broadcast_sub(&self.v_leak)?
            .broadcast_mul(&self.adaptation_current)?;
        a + (drive - a)?.broadcast_mul(&self.c_ada)?
    }

    /// `i_new = i_jump - dt*tau_syn_inv*i_jump`
    fn synapse(&self, i_jump: &Tensor) -> Result<Tensor> {
        i_jump - i_jump.broadcast_mul(&self.c_syn)?
    }

    /// `z = threshold(v_dec - v_spike)`, with the mask of spiking neurons.
    fn spike(&self, v_dec: &Tensor) -> Result<(Tensor, Tensor)> {
        threshold_with_mask(
            &v_dec.broadcast_sub(&self.v_spike)?,
            self.method,
            self.alpha,
        )
    }

    /// `v_new = (1 - z)*v_dec + z*v_reset`, evaluated as a select (so that an infinite `v_dec`
    /// still resets), carrying norse's gradient `d v_new/d z = v_reset - v_dec`.
    fn reset(&self, v_dec: &Tensor, z: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let v_reset = self.v_reset.broadcast_as(v_dec.shape())?;
        let selected = mask.where_cond(&v_reset, v_dec)?;
        if !z.track_op() {
            return Ok(selected);
        }
        let finite = finite_mask(v_dec)?;
        let jump = finite.where_cond(&(&v_reset - v_dec)?, &v_dec.zeros_like()?)?;
        straight_through(&selected, &(z * jump.detach())?)
    }

    /// One AdEx update from `(v, a)` driven by the current `drive` (norse's `i_jump`):
    /// returns `(z, v_new, a_new)`.
    fn update(&self, v: &Tensor, drive: &Tensor, a: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let v_dec = self.membrane(v, drive, a)?;
        let a_dec = self.adaptation(v, a)?;
        let (z, mask) = self.spike(&v_dec)?;
        let v_new = self.reset(&v_dec, &z, &mask)?;
        let a_new = (a_dec + z.broadcast_mul(&self.adaptation_spike)?)?;
        Ok((z, v_new, a_new))
    }

    /// norse 1.1.0's `lif_adex_current_encoder` update: same membrane and spike, reset
    /// `v - z*(v - v_reset)`, and the adaptation *replaced* by
    /// `tau_ada_inv*(adaptation_current*(v_new - v_leak) - a) + z*adaptation_spike`.
    fn update_norse_1_1_0_encoder(
        &self,
        v: &Tensor,
        x: &Tensor,
        a: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let v_dec = self.membrane(v, x, a)?;
        let (z, _) = self.spike(&v_dec)?;
        let v_new = (&v_dec - (&z * v_dec.broadcast_sub(&self.v_reset)?)?)?;
        let drive = v_new
            .broadcast_sub(&self.v_leak)?
            .broadcast_mul(&self.adaptation_current)?;
        let a_new = ((drive - a)?.broadcast_mul(&self.tau_ada_inv)?
            + z.broadcast_mul(&self.adaptation_spike)?)?;
        Ok((z, v_new, a_new))
    }
}

/// `x [..., I] W^T` for `W [N, I]`: `[..., N]`.
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, i) = w.dims2()?;
    let mut out_dims = x.dims().to_vec();
    *out_dims.last_mut().expect("rank >= 1") = n;
    x.reshape(((), i))?.matmul(&w.t()?)?.reshape(out_dims)
}

/// Checks that every named tensor has a float dtype equal to the first one's, lives on its device
/// and (when `shape` is given) has that shape.
pub(crate) fn check_same(op: &str, items: &[(&str, &Tensor)], shape: Option<&Shape>) -> Result<()> {
    let (first_name, first) = items[0];
    check_float(first.dtype(), format_args!("{op}: {first_name}"))?;
    for (name, t) in items {
        if t.dtype() != first.dtype() {
            bail!(
                "{op}: {name} has dtype {:?} but {first_name} has dtype {:?}",
                t.dtype(),
                first.dtype()
            );
        }
        if !t.device().same_device(first.device()) {
            bail!(
                "{op}: {name} is on {:?} but {first_name} is on {:?}",
                t.device().location(),
                first.device().location()
            );
        }
        if let Some(shape) = shape {
            if t.shape() != shape {
                bail!(
                    "{op}: {name} has shape {:?} but {first_name} has shape {:?}",
                    t.dims(),
                    shape.dims()
                );
            }
        }
    }
    Ok(())
}

/// The number of neurons of a state tensor (its last dimension).
pub(crate) fn neurons(op: &str, t: &Tensor) -> Result<usize> {
    match t.dims().last() {
        Some(&n) => Ok(n),
        None => {
            bail!("{op}: the state must have at least one dimension (the neurons), got a scalar")
        }
    }
}

/// Validates `x` (one step, `[..., K]`) and a state list against each other; returns the state
/// shape. `input_matches_state` requires `x` to have the state's shape (feed-forward, encoder).
pub(crate) fn check_step<S: StateTensors>(
    op: &str,
    x: &Tensor,
    x_dims: &[usize],
    state: &[Tensor],
    input_matches_state: bool,
) -> Result<Shape> {
    let mut items: Vec<(&str, &Tensor)> = vec![("input", x)];
    items.extend(S::NAMES.iter().copied().zip(state));
    check_same(op, &items, None)?;
    let shape = state[0].shape().clone();
    check_same(op, &items[1..], Some(&shape))?;
    if input_matches_state && x_dims != shape.dims() {
        bail!(
            "{op}: input has shape {:?} per step but the state has shape {:?}",
            x_dims,
            shape.dims()
        );
    }
    neurons(op, &state[0])?;
    Ok(shape)
}

/// Converts every tensor of a list to `dtype`.
pub(crate) fn cast_all(list: &[Tensor], dtype: DType) -> Result<Vec<Tensor>> {
    list.iter().map(|t| t.to_dtype(dtype)).collect()
}

/// Runs `step` over the time dimension of `xs` (already in compute dtype), starting from `state`
/// (compute dtype), and returns the sequence converted to `out_dtype`.
fn run_sequence<S: StateTensors>(
    xs: &Tensor,
    state: Vec<Tensor>,
    record_states: bool,
    out_dtype: DType,
    mut step: impl FnMut(&Tensor, &[Tensor]) -> Result<(Tensor, Vec<Tensor>)>,
) -> Result<Sequence<S>> {
    let steps = xs.dim(0)?;
    let mut state = state;
    let mut spikes = Vec::with_capacity(steps);
    let mut trajectory: Vec<Vec<Tensor>> = vec![Vec::with_capacity(steps); state.len()];
    for t in 0..steps {
        let (z, next) = step(&xs.get(t)?, &state)?;
        spikes.push(z.to_dtype(out_dtype)?);
        if record_states {
            for (k, s) in next.iter().enumerate() {
                trajectory[k].push(s.to_dtype(out_dtype)?);
            }
        }
        state = next;
    }
    let stack = |list: &[Tensor], like: &Tensor| -> Result<Tensor> {
        if list.is_empty() {
            let mut dims = vec![0];
            dims.extend_from_slice(like.dims());
            Tensor::zeros(dims, out_dtype, like.device())
        } else {
            Tensor::stack(list, 0)
        }
    };
    let spikes = stack(&spikes, &state[0])?;
    let recorded = if record_states {
        let list = trajectory
            .iter()
            .zip(&state)
            .map(|(traj, like)| stack(traj, like))
            .collect::<Result<Vec<_>>>()?;
        Some(S::from_list(list))
    } else {
        None
    };
    Ok(Sequence {
        spikes,
        state: S::from_list(cast_all(&state, out_dtype)?),
        recorded,
    })
}

/// Splits a sequence input `[T, ...]` into its time length and checks its rank.
pub(crate) fn check_sequence_input(op: &str, xs: &Tensor) -> Result<()> {
    if xs.rank() < 2 {
        bail!(
            "{op}: the input must be time-first [T, ..., N] with at least two dimensions, got shape {:?}",
            xs.dims()
        );
    }
    Ok(())
}

/// One step of the feed-forward AdEx neuron (norse `lif_adex_feed_forward_step`).
///
/// `x` is the input current, of the state's shape `[..., N]`. Returns the spikes and the new state.
///
/// ```
/// use candle_adex::{reference, AdexParameters, FeedForwardState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let s = FeedForwardState::initial(&p, (1, 3), DType::F32, &Device::Cpu)?;
/// let x = Tensor::new(&[[0f32, 1.0, 20.0]], &Device::Cpu)?;
/// let (z, s) = reference::lif_adex_feed_forward_step(&x, &s, &p)?;
/// assert_eq!(z.to_vec2::<f32>()?, [[0.0, 0.0, 1.0]]);
/// assert_eq!(s.v.to_vec2::<f32>()?[0][2], 0.0); // reset to v_reset
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_feed_forward_step(
    x: &Tensor,
    state: &FeedForwardState,
    p: &AdexParameters,
) -> Result<(Tensor, FeedForwardState)> {
    step_with(
        x,
        state,
        p,
        "lif_adex_feed_forward_step",
        feed_forward_kernel,
    )
}

/// The feed-forward step on compute-dtype tensors `[v, i, a]`.
fn feed_forward_kernel(c: &Coeffs, x: &Tensor, s: &[Tensor]) -> Result<(Tensor, Vec<Tensor>)> {
    let (v, i, a) = (&s[0], &s[1], &s[2]);
    let i_jump = (i + x)?;
    let (z, v_new, a_new) = c.update(v, &i_jump, a)?;
    let i_new = c.synapse(&i_jump)?;
    Ok((z, vec![v_new, i_new, a_new]))
}

/// A time-first sequence of feed-forward steps: `xs [T, ..., N]` → spikes `[T, ..., N]` and the
/// final state; `record_states` also returns every post-step state.
///
/// f16/bf16 sequences keep the state in f32 between steps and round what they return.
///
/// ```
/// use candle_adex::{reference, AdexParameters, FeedForwardState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let xs = Tensor::full(0.5f32, (100, 4), &Device::Cpu)?;
/// let s0 = FeedForwardState::initial(&p, 4, DType::F32, &Device::Cpu)?;
/// let out = reference::lif_adex_feed_forward_seq(&xs, &s0, &p, true)?;
/// assert_eq!(out.spikes.dims(), &[100, 4]);
/// assert_eq!(out.recorded.unwrap().v.dims(), &[100, 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_feed_forward_seq(
    xs: &Tensor,
    state: &FeedForwardState,
    p: &AdexParameters,
    record_states: bool,
) -> Result<Sequence<FeedForwardState>> {
    seq_with(
        xs,
        state,
        p,
        record_states,
        "lif_adex_feed_forward_seq",
        feed_forward_kernel,
    )
}

/// Checks the recurrent step's weights against the input `[..., I]` and the state `[..., N]`.
pub(crate) fn check_weights(
    op: &str,
    x_dims: &[usize],
    state: &Tensor,
    w_in: &Tensor,
    w_rec: &Tensor,
) -> Result<()> {
    let items = [
        ("state", state),
        ("input_weights", w_in),
        ("recurrent_weights", w_rec),
    ];
    check_same(op, &items, None)?;
    let n = neurons(op, state)?;
    let Some(&i) = x_dims.last() else {
        bail!("{op}: the input must have at least one dimension (its features)");
    };
    if w_in.dims() != [n, i] {
        bail!(
            "{op}: input_weights must have shape [N, I] = [{n}, {i}] (neurons of the state, features of the input), got {:?}",
            w_in.dims()
        );
    }
    if w_rec.dims() != [n, n] {
        bail!(
            "{op}: recurrent_weights must have shape [N, N] = [{n}, {n}], got {:?}",
            w_rec.dims()
        );
    }
    let (xd, sd) = (x_dims, state.dims());
    if xd[..xd.len() - 1] != sd[..sd.len() - 1] {
        bail!(
            "{op}: input {:?} and state {:?} must agree on every dimension but the last",
            xd,
            sd
        );
    }
    Ok(())
}

/// The recurrent step on compute-dtype tensors `[z, v, i, a]`, given the projected input
/// `x W_in^T`.
fn recurrent_kernel(
    c: &Coeffs,
    x_proj: &Tensor,
    w_rec: &Tensor,
    s: &[Tensor],
) -> Result<(Tensor, Vec<Tensor>)> {
    let (z, v, i, a) = (&s[0], &s[1], &s[2], &s[3]);
    let i_jump = ((i + x_proj)? + linear(z, w_rec)?)?;
    let (z_new, v_new, a_new) = c.update(v, &i_jump, a)?;
    let i_new = c.synapse(&i_jump)?;
    Ok((z_new.clone(), vec![z_new, v_new, i_new, a_new]))
}

/// One step of the recurrent AdEx neuron (norse `lif_adex_step`): `x [..., I]` input spikes or
/// currents, `input_weights [N, I]`, `recurrent_weights [N, N]` (the diagonal is used as given),
/// state `[..., N]`.
///
/// ```
/// use candle_adex::{reference, AdexParameters, RecurrentState};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let p = AdexParameters::default();
/// let s = RecurrentState::initial(&p, (2, 3), DType::F32, &dev)?;
/// let x = Tensor::ones((2, 5), DType::F32, &dev)?;
/// let w_in = Tensor::full(10f32, (3, 5), &dev)?;
/// let w_rec = Tensor::zeros((3, 3), DType::F32, &dev)?;
/// let (z, s) = reference::lif_adex_step(&x, &s, &w_in, &w_rec, &p)?;
/// assert_eq!(z.sum_all()?.to_scalar::<f32>()?, 6.0);
/// assert_eq!(s.z.dims(), &[2, 3]);
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
    check_step::<RecurrentState>(OP, x, x.dims(), &list, false)?;
    check_weights(OP, x.dims(), &list[0], input_weights, recurrent_weights)?;
    let cd = compute_dtype(x.dtype());
    let c = Coeffs::new(p, neurons(OP, &list[0])?, cd, x.device())?;
    let x_proj = linear(&x.to_dtype(cd)?, &input_weights.to_dtype(cd)?)?;
    let (z, next) = recurrent_kernel(
        &c,
        &x_proj,
        &recurrent_weights.to_dtype(cd)?,
        &cast_all(&list, cd)?,
    )?;
    Ok((
        z.to_dtype(x.dtype())?,
        RecurrentState::from_list(cast_all(&next, x.dtype())?),
    ))
}

/// A time-first sequence of recurrent steps: `xs [T, ..., I]` → spikes `[T, ..., N]`. The input
/// projection `xs W_in^T` is one matrix product for all steps.
///
/// ```
/// use candle_adex::{reference, AdexParameters, RecurrentState};
/// use candle_core::{DType, Device, Tensor};
/// let dev = Device::Cpu;
/// let p = AdexParameters::default();
/// let xs = Tensor::ones((20, 2, 5), DType::F64, &dev)?;
/// let s0 = RecurrentState::initial(&p, (2, 3), DType::F64, &dev)?;
/// let w_in = Tensor::full(0.5f64, (3, 5), &dev)?;
/// let w_rec = Tensor::full(-0.1f64, (3, 3), &dev)?;
/// let out = reference::lif_adex_seq(&xs, &s0, &w_in, &w_rec, &p, false)?;
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
    const OP: &str = "lif_adex_seq";
    check_sequence_input(OP, xs)?;
    let list = state.to_list();
    check_step::<RecurrentState>(OP, xs, &xs.dims()[1..], &list, false)?;
    check_weights(
        OP,
        &xs.dims()[1..],
        &list[0],
        input_weights,
        recurrent_weights,
    )?;
    let cd = compute_dtype(xs.dtype());
    let c = Coeffs::new(p, neurons(OP, &list[0])?, cd, xs.device())?;
    let x_proj = linear(&xs.to_dtype(cd)?, &input_weights.to_dtype(cd)?)?;
    let w_rec = recurrent_weights.to_dtype(cd)?;
    run_sequence(
        &x_proj,
        cast_all(&list, cd)?,
        record_states,
        xs.dtype(),
        |x, s| recurrent_kernel(&c, x, &w_rec, s),
    )
}

/// The Euler current encoder on compute-dtype tensors `[v, a]`.
fn encoder_kernel(c: &Coeffs, x: &Tensor, s: &[Tensor]) -> Result<(Tensor, Vec<Tensor>)> {
    let (z, v_new, a_new) = c.update(&s[0], x, &s[1])?;
    Ok((z, vec![v_new, a_new]))
}

/// One step of the current encoder: the feed-forward update driven directly by the input current
/// `x` (no synaptic current state), with the adaptation integrated by Euler:
/// `a += dt*tau_ada_inv*(adaptation_current*(v - v_leak) - a)`, then `a += z*adaptation_spike`.
///
/// This deliberately differs from norse 1.1.0's `lif_adex_current_encoder`, which diverges; see
/// [`lif_adex_current_encoder_norse_1_1_0`].
///
/// ```
/// use candle_adex::{reference, AdexParameters, EncoderState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let mut s = EncoderState::initial(&p, 2, DType::F32, &Device::Cpu)?;
/// let x = Tensor::new(&[0f32, 200.0], &Device::Cpu)?;
/// let mut count = 0f32;
/// for _ in 0..1000 {
///     let (z, next) = reference::lif_adex_current_encoder(&x, &s, &p)?;
///     count += z.sum_all()?.to_scalar::<f32>()?;
///     s = next;
/// }
/// assert!(count > 0.0 && s.a.to_vec1::<f32>()?.iter().all(|a| a.is_finite()));
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_current_encoder(
    x: &Tensor,
    state: &EncoderState,
    p: &AdexParameters,
) -> Result<(Tensor, EncoderState)> {
    step_with(x, state, p, "lif_adex_current_encoder", encoder_kernel)
}

/// The current encoder over a time-first input `xs [T, ..., N]`.
///
/// ```
/// use candle_adex::{reference, AdexParameters, EncoderState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let xs = Tensor::full(100f32, (50, 3), &Device::Cpu)?;
/// let s0 = EncoderState::initial(&p, 3, DType::F32, &Device::Cpu)?;
/// let out = reference::lif_adex_current_encoder_seq(&xs, &s0, &p, false)?;
/// assert!(out.spikes.sum_all()?.to_scalar::<f32>()? > 0.0);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_current_encoder_seq(
    xs: &Tensor,
    state: &EncoderState,
    p: &AdexParameters,
    record_states: bool,
) -> Result<Sequence<EncoderState>> {
    seq_with(
        xs,
        state,
        p,
        record_states,
        "lif_adex_current_encoder_seq",
        encoder_kernel,
    )
}

/// norse 1.1.0's `lif_adex_current_encoder`, defect included, for validating ports against norse.
///
/// It *replaces* the adaptation with `tau_ada_inv*(adaptation_current*(v_new - v_leak) - a) +
/// z*adaptation_spike` (no `dt`, no `a +`, post-reset `v`) and resets with `v - z*(v - v_reset)`.
/// With default parameters `a` flips sign and doubles every step and overflows after about 100
/// steps. Use [`lif_adex_current_encoder`] for modelling.
///
/// ```
/// use candle_adex::{reference, AdexParameters, EncoderState};
/// use candle_core::{DType, Device, Tensor};
/// let p = AdexParameters::default();
/// let xs = Tensor::zeros((150, 1), DType::F32, &Device::Cpu)?;
/// let s0 = EncoderState { v: Tensor::zeros(1, DType::F32, &Device::Cpu)?, a: Tensor::full(0.01f32, 1, &Device::Cpu)? };
/// let out = reference::lif_adex_current_encoder_norse_1_1_0_seq(&xs, &s0, &p, false)?;
/// assert!(!out.state.a.to_vec1::<f32>()?[0].is_finite()); // norse's divergence
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn lif_adex_current_encoder_norse_1_1_0(
    x: &Tensor,
    state: &EncoderState,
    p: &AdexParameters,
) -> Result<(Tensor, EncoderState)> {
    step_with(
        x,
        state,
        p,
        "lif_adex_current_encoder_norse_1_1_0",
        norse_encoder_kernel,
    )
}

/// [`lif_adex_current_encoder_norse_1_1_0`] over a time-first input `xs [T, ..., N]`.
pub fn lif_adex_current_encoder_norse_1_1_0_seq(
    xs: &Tensor,
    state: &EncoderState,
    p: &AdexParameters,
    record_states: bool,
) -> Result<Sequence<EncoderState>> {
    seq_with(
        xs,
        state,
        p,
        record_states,
        "lif_adex_current_encoder_norse_1_1_0_seq",
        norse_encoder_kernel,
    )
}

/// norse 1.1.0's encoder step on compute-dtype tensors `[v, a]`.
fn norse_encoder_kernel(c: &Coeffs, x: &Tensor, s: &[Tensor]) -> Result<(Tensor, Vec<Tensor>)> {
    let (z, v_new, a_new) = c.update_norse_1_1_0_encoder(&s[0], x, &s[1])?;
    Ok((z, vec![v_new, a_new]))
}

/// A step on compute-dtype tensors: `(coefficients, input, state) -> (spikes, new state)`.
type Kernel = fn(&Coeffs, &Tensor, &[Tensor]) -> Result<(Tensor, Vec<Tensor>)>;

/// One step of an elementwise neuron (input shaped like the state) through `kernel`.
fn step_with<S: StateTensors>(
    x: &Tensor,
    state: &S,
    p: &AdexParameters,
    op: &str,
    kernel: Kernel,
) -> Result<(Tensor, S)> {
    let list = state.to_list();
    check_step::<S>(op, x, x.dims(), &list, true)?;
    let cd = compute_dtype(x.dtype());
    let c = Coeffs::new(p, neurons(op, &list[0])?, cd, x.device())?;
    let (z, next) = kernel(&c, &x.to_dtype(cd)?, &cast_all(&list, cd)?)?;
    Ok((
        z.to_dtype(x.dtype())?,
        S::from_list(cast_all(&next, x.dtype())?),
    ))
}

/// A time-first sequence of an elementwise neuron through `kernel`.
fn seq_with<S: StateTensors>(
    xs: &Tensor,
    state: &S,
    p: &AdexParameters,
    record_states: bool,
    op: &str,
    kernel: Kernel,
) -> Result<Sequence<S>> {
    check_sequence_input(op, xs)?;
    let list = state.to_list();
    check_step::<S>(op, xs, &xs.dims()[1..], &list, true)?;
    let cd = compute_dtype(xs.dtype());
    let c = Coeffs::new(p, neurons(op, &list[0])?, cd, xs.device())?;
    run_sequence(
        &xs.to_dtype(cd)?,
        cast_all(&list, cd)?,
        record_states,
        xs.dtype(),
        |x, s| kernel(&c, x, s),
    )
}
