//! Layer 5: what the GPU backends ([`super::cuda`], [`super::metal`]) share: the inference call
//! as two custom ops (the kernel writes spikes and states into two buffers, a custom op returns
//! one storage, so the second is handed out by a second op), and the backward as a custom op.
//! Each backend supplies the kernel launches (`infer_run`, `bwd_run`); the plumbing is here once.

use super::SeqOp;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};
use std::sync::Mutex;

/// The second output of an inference call, per backend.
enum Rest {
    #[cfg(feature = "cuda")]
    Cuda(candle_core::CudaStorage, Shape),
    #[cfg(feature = "metal")]
    Metal(candle_core::MetalStorage, Shape),
}

/// The spikes of an inference call (`u8` or the data dtype); the states packed
/// `[S (+ S*T), M]` are kept in `rest` for [`Take`]. The initial state is read from the state
/// tensors directly.
struct Split<'a> {
    op: &'a SeqOp,
    state: &'a [Tensor],
    spikes_u8: bool,
    rest: Mutex<Option<Rest>>,
}

impl Split<'_> {
    fn keep(&self, rest: Rest) {
        *self.rest.lock().expect("unpoisoned") = Some(rest);
    }
}

#[cfg(feature = "cuda")]
type CudaIn<'a> = (&'a candle_core::CudaStorage, &'a Layout);
#[cfg(feature = "metal")]
type MetalIn<'a> = (&'a candle_core::MetalStorage, &'a Layout);

impl Split<'_> {
    #[cfg(feature = "cuda")]
    fn cuda(
        &self,
        xs: CudaIn<'_>,
        x2: Option<CudaIn<'_>>,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (spikes, (rest, shape)) =
            super::cuda::infer_run(self.op, self.state, self.spikes_u8, xs, x2)?;
        self.keep(Rest::Cuda(rest, shape));
        Ok(spikes)
    }

    #[cfg(feature = "metal")]
    fn metal(
        &self,
        xs: MetalIn<'_>,
        x2: Option<MetalIn<'_>>,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        let (spikes, (rest, shape)) =
            super::metal::infer_run(self.op, self.state, self.spikes_u8, xs, x2)?;
        self.keep(Rest::Metal(rest, shape));
        Ok(spikes)
    }
}

impl CustomOp1 for Split<'_> {
    fn name(&self) -> &'static str {
        "adex-seq-split"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("fused AdEx: the split GPU op has no CPU form")
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda((s1, l1), None)
    }
    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        self.metal((s1, l1), None)
    }
}

impl CustomOp2 for Split<'_> {
    fn name(&self) -> &'static str {
        "adex-seq2-split"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("fused AdEx: the split GPU op has no CPU form")
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda((s1, l1), Some((s2, l2)))
    }
    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        s2: &candle_core::MetalStorage,
        l2: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        self.metal((s1, l1), Some((s2, l2)))
    }
}

/// Hands out the storage a [`Split`] kept, as a tensor.
struct Take<'a>(&'a Mutex<Option<Rest>>);

impl Take<'_> {
    fn take(&self) -> Option<Rest> {
        self.0.lock().expect("unpoisoned").take()
    }
}

const MISSING: &str = "fused AdEx: the kernel's second output is missing";

impl CustomOp1 for Take<'_> {
    fn name(&self) -> &'static str {
        "adex-take"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("fused AdEx: the take op has no CPU form")
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        match self.take() {
            Some(Rest::Cuda(s, shape)) => Ok((s, shape)),
            _ => bail!("{MISSING}"),
        }
    }
    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        _: &candle_core::MetalStorage,
        _: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        match self.take() {
            Some(Rest::Metal(s, shape)) => Ok((s, shape)),
            _ => bail!("{MISSING}"),
        }
    }
}

/// Inference on a GPU (nothing tracked): spikes `[T, M]` (`u8` or the data dtype) and the
/// states packed `[S (+ S*T), M]` (final, then recorded), written by one kernel.
pub(crate) fn infer(
    op: &SeqOp,
    xs: &Tensor,
    x2: Option<&Tensor>,
    state: &[Tensor],
    spikes_u8: bool,
) -> Result<(Tensor, Tensor)> {
    let split = Split {
        op,
        state,
        spikes_u8,
        rest: Mutex::new(None),
    };
    let spikes = match x2 {
        Some(x2) => xs.apply_op2_no_bwd(x2, &split)?,
        None => xs.apply_op1_no_bwd(&split)?,
    };
    let rest = xs.apply_op1_no_bwd(&Take(&split.rest))?;
    Ok((spikes, rest))
}

/// The backward as a custom op on `(xs [T or 2T, M] (x2 stacked under xs), state [S, M],
/// output gradient [T + S (+ S*T), M])`, giving `[T + S, M]`: the input gradient, then the
/// initial-state gradient.
struct Bwd<'a> {
    op: &'a SeqOp,
    has_x2: bool,
}

impl CustomOp3 for Bwd<'_> {
    fn name(&self) -> &'static str {
        "adex-seq-bwd"
    }
    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("fused AdEx: the GPU backward op has no CPU form")
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
        super::cuda::bwd_run(self.op, self.has_x2, (s1, l1), (s2, l2), (s3, l3))
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
        super::metal::bwd_run(self.op, self.has_x2, (s1, l1), (s2, l2), (s3, l3))
    }
}

/// The gradients of `(xs, state)` on a GPU, `[T, M]` and `[S, M]` in the data dtype.
pub(crate) fn backward(
    op: &SeqOp,
    xs: &Tensor,
    x2: Option<&Tensor>,
    st: &Tensor,
    grad: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let (t, _) = xs.dims2()?;
    let xs_all = match x2 {
        Some(x2) => Tensor::cat(&[xs, x2], 0)?,
        None => xs.contiguous()?,
    };
    let grad = grad.to_dtype(xs.dtype())?.contiguous()?;
    let st = st.contiguous()?;
    let out = xs_all.apply_op3_no_bwd(
        &st,
        &grad,
        &Bwd {
            op,
            has_x2: x2.is_some(),
        },
    )?;
    let s = op.neuron.state_len();
    Ok((out.narrow(0, 0, t)?, out.narrow(0, t, s)?))
}
