//! Event-driven recurrent input, for inference on the CPU.
//!
//! The recurrent step needs `z_prev W_rec^T` every step: a dense `[B, H] x [H, H]` product, `B H^2`
//! multiply-adds however few neurons spiked. Spikes are sparse in most networks, so when a small
//! fraction of the previous step's neurons fired it is cheaper to add, for each spiking neuron
//! `j`, column `j` of `W_rec` (a contiguous row of `W_rec^T`, copied once per sequence) into the
//! rows of the batch where `j` fired: `B H d` additions at spike density `d`.
//!
//! The result equals the dense product up to summation order (a few ulp, which can flip a
//! spike within an ulp of threshold, as any change of BLAS would). It is a plain value
//! computation with no autograd: [`RecurrentInput::Auto`] only uses it when no tensor of the call
//! is tracked for gradients, and [`RecurrentInput::EventDriven`] refuses tracked tensors.
//!
//! When it pays is measured by `cargo bench --bench recurrent` (dense vs event-driven product at
//! 1 %, 5 % and 20 % density, same run); [`EVENT_DRIVEN_MAX_DENSITY`] is set from it.

use candle_core::{bail, DType, Device, Result, Tensor};

/// The spike density (fraction of `[.., H]` elements of the previous step's `z` that are
/// non-zero) at or below which [`RecurrentInput::Auto`] uses the event-driven product.
///
/// Measured on this project's CPU (AMD Zen 5, f32, `cargo bench --bench recurrent`, README
/// "Event-driven recurrence"): against candle's dense matmul the event-driven product is 10-100x
/// faster at 1 % density, 1.8-7x at 5 %, and slower at 20 % once the weights outgrow the cache
/// (B = 32, H = 1024: 0.55x; B = 8, H = 4096: 0.62x), while at B = 1 or H = 256 it still wins at
/// 50 %. The crossover lies near 11-14 % for the large cases; 8 % keeps a margin below it.
pub const EVENT_DRIVEN_MAX_DENSITY: f64 = 0.08;

/// How a recurrent sequence computes its recurrent input `z_prev W_rec^T` each step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RecurrentInput {
    /// A dense matrix product every step (differentiable, any device).
    Dense,
    /// Sum the weight columns of the neurons that spiked (CPU, inference only: an error when a
    /// tensor of the call needs a gradient or lives on another device).
    EventDriven,
    /// Event-driven on the CPU when nothing needs a gradient and the previous step's spike
    /// density is at most [`EVENT_DRIVEN_MAX_DENSITY`]; dense otherwise. The default.
    #[default]
    Auto,
}

/// `W_rec^T` on the host, in the compute dtype (f32 or f64), for the event-driven product.
enum Transposed {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A recurrent weight matrix prepared for event-driven products: `W_rec^T` copied once to the
/// host in the compute precision (f64 for f64 weights, f32 otherwise), then applied to the spikes
/// of each step.
///
/// ```
/// use candle_adex::fused::EventDriven;
/// use candle_core::{Device, Tensor};
/// let w = Tensor::randn(0f32, 1.0, (3, 3), &Device::Cpu)?;
/// let event = EventDriven::new(&w)?; // once per weight matrix
/// let z = Tensor::new(&[[1f32, 0., 0.], [0., 0., 1.]], &Device::Cpu)?; // spikes of a step
/// let dense = z.matmul(&w.t()?)?;
/// let sparse = event.apply(&z)?;
/// assert_eq!(dense.to_vec2::<f32>()?, sparse.to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub struct EventDriven {
    wt: Transposed,
    h: usize,
    device: Device,
}

/// `out[b, :] += z[b, j] * wt[j, :]` for every non-zero `z[b, j]`.
fn accumulate<T>(z: &[T], wt: &[T], h: usize, out: &mut [T])
where
    T: Copy + PartialEq + Default + std::ops::Mul<Output = T> + std::ops::AddAssign,
{
    for (z_row, out_row) in z.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        for (j, &zj) in z_row.iter().enumerate() {
            if zj != T::default() {
                let w_row = &wt[j * h..(j + 1) * h];
                for (o, &w) in out_row.iter_mut().zip(w_row) {
                    *o += zj * w;
                }
            }
        }
    }
}

impl EventDriven {
    /// Prepares `w_rec [H, H]` (on the CPU, any float dtype).
    pub fn new(w_rec: &Tensor) -> Result<Self> {
        Self::for_op("EventDriven::new", w_rec)
    }

    /// `z W_rec^T` for spikes (or any values) `z [..., H]` on the CPU: the weight columns of the
    /// non-zero entries, scaled by them, summed; same shape and dtype as `z`. No autograd.
    pub fn apply(&self, z: &Tensor) -> Result<Tensor> {
        if z.dims().last() != Some(&self.h) || !z.device().is_cpu() {
            bail!(
                "EventDriven::apply: z must be [..., {}] on the CPU, got {:?} on {:?}",
                self.h,
                z.dims(),
                z.device().location()
            );
        }
        Ok(self.apply_if(z, |_| true)?.1.expect("always applied"))
    }

    pub(crate) fn for_op(op: &str, w_rec: &Tensor) -> Result<Self> {
        let (h, h2) = w_rec.dims2()?;
        if h != h2 {
            bail!(
                "{op}: recurrent_weights must be square, got {:?}",
                w_rec.dims()
            );
        }
        if !w_rec.device().is_cpu() {
            bail!(
                "{op}: the event-driven recurrent input runs on the CPU, not on {:?} (use RecurrentInput::Dense)",
                w_rec.device().location()
            );
        }
        let wt = w_rec.t()?.contiguous()?.flatten_all()?;
        let wt = match w_rec.dtype() {
            DType::F64 => Transposed::F64(wt.to_vec1()?),
            _ => Transposed::F32(wt.to_dtype(DType::F32)?.to_vec1()?),
        };
        Ok(EventDriven {
            wt,
            h,
            device: w_rec.device().clone(),
        })
    }

    /// The spike density of `z` (`[..., H]`) and, when `use_if` says so given that density,
    /// the event-driven product `z W_rec^T` (same shape and dtype as `z`).
    pub(crate) fn apply_if(
        &self,
        z: &Tensor,
        use_if: impl Fn(f64) -> bool,
    ) -> Result<(f64, Option<Tensor>)> {
        let (density, out) = match &self.wt {
            Transposed::F32(wt) => self.product(z, wt, use_if)?,
            Transposed::F64(wt) => self.product(z, wt, use_if)?,
        };
        Ok((density, out.map(|t| t.to_dtype(z.dtype())).transpose()?))
    }

    /// [`apply_if`](Self::apply_if) in the precision `T` of the prepared weights.
    fn product<T>(
        &self,
        z: &Tensor,
        wt: &[T],
        use_if: impl Fn(f64) -> bool,
    ) -> Result<(f64, Option<Tensor>)>
    where
        T: candle_core::WithDType + Default,
    {
        let zs: Vec<T> = z.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1()?;
        let events = zs.iter().filter(|&&v| v != T::default()).count();
        let density = events as f64 / zs.len().max(1) as f64;
        if !use_if(density) {
            return Ok((density, None));
        }
        let mut out = vec![T::default(); zs.len()];
        accumulate(&zs, wt, self.h, &mut out);
        Ok((
            density,
            Some(Tensor::from_vec(out, z.shape(), &self.device)?),
        ))
    }
}

/// The recurrent input `z W_rec^T` (`z [..., H]`, `W_rec [H, H]`, CPU) computed event-driven:
/// the weight columns of the non-zero entries of `z`, scaled by them, summed. No autograd.
///
/// ```
/// use candle_adex::fused::recurrent_input_event_driven;
/// use candle_core::{Device, Tensor};
/// let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.], [7., 8., 9.]], &Device::Cpu)?;
/// let z = Tensor::new(&[[0f32, 1., 0.], [1., 0., 1.]], &Device::Cpu)?;
/// let sparse = recurrent_input_event_driven(&z, &w)?;
/// let dense = z.matmul(&w.t()?)?;
/// assert_eq!(sparse.to_vec2::<f32>()?, dense.to_vec2::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn recurrent_input_event_driven(z: &Tensor, w_rec: &Tensor) -> Result<Tensor> {
    const OP: &str = "recurrent_input_event_driven";
    let h = *z.dims().last().unwrap_or(&0);
    if w_rec.dims() != [h, h] {
        bail!(
            "{OP}: recurrent_weights must have shape [H, H] = [{h}, {h}] for z {:?}, got {:?}",
            z.dims(),
            w_rec.dims()
        );
    }
    if z.dtype() != w_rec.dtype() || !z.device().same_device(w_rec.device()) {
        bail!(
            "{OP}: z ({:?} on {:?}) and recurrent_weights ({:?} on {:?}) must share dtype and device",
            z.dtype(),
            z.device().location(),
            w_rec.dtype(),
            w_rec.device().location()
        );
    }
    EventDriven::for_op(OP, w_rec)?.apply(z)
}
