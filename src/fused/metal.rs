//! Layer 5d: the Metal backend of the fused ops (feature `metal`, Apple GPUs): dispatches the
//! kernels of `kernels/adex.metal`, which include the one GPU math header
//! (`kernels/adex_math.h`). **Not yet run on Apple hardware**: it is type-checked against
//! candle 0.11.1's Metal API, its kernels are run thread by thread on the CPU (compiled as C++,
//! `src/fused/header_check.rs`) and its kernel names, buffer indices and parameter layout are
//! held to the source by tests ([`super::metal_abi`]).
//!
//! The source (header + kernels) is compiled at run time once per device with fast math off
//! (the f32 `exp` is the header's polynomial, and the NaN/overflow guards must stay), and each
//! pipeline is built once per kernel and cached. One thread per neuron runs the whole time loop
//! with the state in registers; threadgroups are as wide as the pipeline allows, up to 256. The
//! backward recomputes the forward from checkpoints every [`SEG`] steps (scratch of
//! `3 * M * T / SEG` floats), as on CUDA. Metal has no f64: f64 data gives an error naming the
//! dtypes that work. Metal may contract products into FMAs where the CPU kernel does not, so its
//! results can differ from the CPU's in the last bits (a neuron within an ulp of threshold can
//! flip); the tests compare with tolerances and count flips.

use super::math::N_COEF;
use super::metal_abi::{self, buf, Params, SEG, SOURCE};
use super::{slots, AnyCoefs, Coefs, Neuron, SeqOp};
use candle_core::backend::BackendStorage;
use candle_core::metal_backend::DeviceId;
use candle_core::{
    bail, DType, Layout, MetalDevice, MetalError, MetalStorage, Result, Shape, Storage, Tensor,
};
use candle_metal_kernels::metal::{Buffer, ComputeCommandEncoder, ComputePipeline, Library};
use objc2_metal::{MTLCompileOptions, MTLSize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Widest threadgroup used (the pipeline's own limit may be lower).
const MAX_GROUP: usize = 256;

/// The compiled library of one device and its pipelines by kernel name.
struct Compiled {
    library: Library,
    pipelines: Mutex<HashMap<String, ComputePipeline>>,
}

/// The library for `dev`, compiled on first use.
fn compiled(dev: &MetalDevice) -> Result<Arc<Compiled>> {
    static CACHE: OnceLock<Mutex<HashMap<DeviceId, Arc<Compiled>>>> = OnceLock::new();
    let mut cache = CACHE
        .get_or_init(Default::default)
        .lock()
        .expect("unpoisoned");
    if let Some(c) = cache.get(&dev.id()) {
        return Ok(c.clone());
    }
    let options = MTLCompileOptions::new();
    // Fast math would drop the header's overflow and NaN guards and reorder its exp.
    #[allow(deprecated)]
    options.setFastMathEnabled(false);
    let library = dev
        .metal_device()
        .new_library_with_source(SOURCE, Some(&options))
        .map_err(MetalError::from)?;
    let c = Arc::new(Compiled {
        library,
        pipelines: Mutex::new(HashMap::new()),
    });
    cache.insert(dev.id(), c.clone());
    Ok(c)
}

/// The pipeline of kernel `name` on `dev`, built on first use.
fn pipeline(dev: &MetalDevice, name: &str) -> Result<ComputePipeline> {
    let c = compiled(dev)?;
    let mut pipelines = c.pipelines.lock().expect("unpoisoned");
    if let Some(p) = pipelines.get(name) {
        return Ok(p.clone());
    }
    let function = match c.library.get_function(name, None) {
        Ok(f) => f,
        Err(e) if name.contains("bf16") => bail!(
            "fused AdEx (metal): kernel {name} is missing; bf16 needs Metal 3.1 (macOS 14 or later): {e}"
        ),
        Err(e) => Err(MetalError::from(e))?,
    };
    let p = dev
        .metal_device()
        .new_compute_pipeline_state_with_function(&function)
        .map_err(MetalError::from)?;
    pipelines.insert(name.to_string(), p.clone());
    Ok(p)
}

/// A buffer and a byte offset into it.
#[derive(Clone, Copy)]
struct At<'a>(&'a Buffer, usize);

impl<'a> At<'a> {
    /// `rows` rows of `m` elements of `size` bytes further on.
    fn rows(self, rows: usize, m: usize, size: usize) -> At<'a> {
        At(self.0, self.1 + rows * m * size)
    }
}

/// One dispatch of kernel `name` over `m` threads: inputs, outputs (each with its buffer
/// index) and the parameters.
fn dispatch(
    dev: &MetalDevice,
    name: &str,
    m: usize,
    inputs: &[(usize, At<'_>)],
    outputs: &[(usize, At<'_>)],
    params: &Params,
) -> Result<()> {
    if m == 0 {
        return Ok(());
    }
    let pipeline = pipeline(dev, name)?;
    let encoder = dev.command_encoder()?;
    encoder.set_label(name);
    let enc: &ComputeCommandEncoder = encoder.as_ref();
    enc.set_compute_pipeline_state(&pipeline);
    for &(index, At(b, off)) in inputs {
        enc.set_input_buffer(index, Some(b), off);
    }
    for &(index, At(b, off)) in outputs {
        enc.set_output_buffer(index, Some(b), off);
    }
    enc.set_bytes(buf::PARAMS, params);
    let width = pipeline
        .max_total_threads_per_threadgroup()
        .clamp(1, MAX_GROUP);
    let size = |width| MTLSize {
        width,
        height: 1,
        depth: 1,
    };
    enc.dispatch_thread_groups(size(m.div_ceil(width)), size(width));
    Ok(())
}

/// A fresh output buffer of `count` elements of `dtype` (uninitialised, or poisoned when
/// asked; see [`super::poisoning`]).
fn output(dev: &MetalDevice, count: usize, dtype: DType) -> Result<Arc<Buffer>> {
    let b = dev.new_buffer(count.max(1), dtype, "adex")?;
    if super::poisoning() {
        let mut blit = dev.blit_command_encoder()?;
        blit.set_label("adex-poison");
        blit.fill_buffer(&b, (0, b.length()), 0xff);
    }
    Ok(b)
}

/// The parameters as a `[11, NP]` float buffer (`NP = 1` for scalar ones) and `NP`.
fn coefs_on(dev: &MetalDevice, c: &AnyCoefs) -> Result<(Arc<Buffer>, u64)> {
    let (flat, np) = match c {
        AnyCoefs::F32(Coefs::Scalar(c)) => (c.to_array().to_vec(), 1),
        AnyCoefs::F32(Coefs::PerNeuron { n, fields }) => {
            let flat: Vec<f32> = fields.iter().flatten().copied().collect();
            debug_assert_eq!(flat.len(), N_COEF * n);
            (flat, *n as u64)
        }
        AnyCoefs::F64(_) => bail!("fused AdEx (metal): Metal has no f64"),
    };
    Ok((dev.new_buffer_with_data(&flat)?, np))
}

/// The byte offset of a contiguous layout.
fn start(l: &Layout, dtype: DType, what: &str) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((a, _)) => Ok(a * dtype.size_in_bytes()),
        None => bail!("fused AdEx (metal): {what} must be contiguous"),
    }
}

/// The initial state of a forward call: packed `[S, M]` (the custom op's argument), or the
/// `S` state tensors `[M]` (the inference path, no packing copy).
enum StateIn<'a> {
    Packed(&'a MetalStorage, &'a Layout),
    Tensors(&'a [Tensor]),
}

/// The launch parameters of a call.
fn params(op: &SeqOp, t: usize, m: usize, np: u64, has_x2: bool, record: bool) -> Params {
    Params {
        t: t as u64,
        m: m as u64,
        np,
        syn: (op.neuron == Neuron::FeedForward) as u32,
        has_x2: has_x2 as u32,
        record: record as u32,
        method: op.method as u32,
        alpha: op.alpha as f32,
        pad: 0,
    }
}

/// One forward sequence: `xs [T, M]` (and `x2`) from the initial state; spikes (`[T, M]`, the
/// data dtype or `u8`) to `spikes`, the final state and, with `record`, the post-step states to
/// `rest` (`[S + S*T, M]` rows of the data dtype: final state, then recorded).
#[allow(clippy::too_many_arguments)]
fn forward(
    op: &SeqOp,
    xs: (&MetalStorage, &Layout),
    x2: Option<(&MetalStorage, &Layout)>,
    st: StateIn<'_>,
    spikes: At<'_>,
    u8_spikes: bool,
    rest: At<'_>,
    t: usize,
    m: usize,
) -> Result<()> {
    let dev = xs.0.device();
    let dtype = xs.0.dtype();
    let size = dtype.size_in_bytes();
    let name = metal_abi::fwd_kernel(dtype, u8_spikes)?;
    let s = op.neuron.state_len();
    let x = At(xs.0.buffer(), start(xs.1, dtype, "xs")?);
    let guards: Vec<_> = match &st {
        StateIn::Tensors(ts) => ts.iter().map(|t| t.storage_and_layout()).collect(),
        StateIn::Packed(..) => Vec::new(),
    };
    let mut rows: Vec<At<'_>> = Vec::with_capacity(s);
    match st {
        StateIn::Packed(storage, layout) => {
            let base = At(storage.buffer(), start(layout, dtype, "state")?);
            rows.extend((0..s).map(|k| base.rows(k, m, size)));
        }
        StateIn::Tensors(_) => {
            for (g, l) in &guards {
                let Storage::Metal(ms) = &**g else {
                    bail!("fused AdEx (metal): the state must be on the input's device");
                };
                if ms.dtype() != dtype {
                    bail!(
                        "fused AdEx (metal): the state has dtype {:?}, the input {dtype:?}",
                        ms.dtype()
                    );
                }
                rows.push(At(ms.buffer(), start(l, dtype, "state")?));
            }
        }
    }
    if rows.len() != s {
        bail!(
            "fused AdEx (metal): expected {s} state tensors, got {}",
            rows.len()
        );
    }
    let x2 = match x2 {
        Some((s2, l2)) => Some(At(s2.buffer(), start(l2, dtype, "x2")?)),
        None => None,
    };
    let (coefs, np) = coefs_on(dev, &op.coefs)?;
    let [v0, i0, a0] = slots(op.neuron, rows);
    // Absent inputs are bound to the input, absent outputs to the state output; never touched.
    let inputs = [
        (buf::XS, x),
        (buf::X2, x2.unwrap_or(x)),
        (buf::V0, v0.unwrap_or(x)),
        (buf::I0, i0.unwrap_or(x)),
        (buf::A0, a0.unwrap_or(x)),
        (buf::COEFS, At(&coefs, 0)),
    ];
    let last: Vec<At<'_>> = (0..s).map(|k| rest.rows(k, m, size)).collect();
    let [lv, li, la] = slots(op.neuron, last);
    let recorded: Vec<At<'_>> = (0..s).map(|k| rest.rows(s + k * t, m, size)).collect();
    let [rv, ri, ra] = if op.record {
        slots(op.neuron, recorded)
    } else {
        [None; 3]
    };
    let outputs = [
        (buf::SPIKES, spikes),
        (buf::LAST_V, lv.unwrap_or(rest)),
        (buf::LAST_I, li.unwrap_or(rest)),
        (buf::LAST_A, la.unwrap_or(rest)),
        (buf::REC_V, rv.unwrap_or(rest)),
        (buf::REC_I, ri.unwrap_or(rest)),
        (buf::REC_A, ra.unwrap_or(rest)),
    ];
    let prm = params(op, t, m, np, x2.is_some(), op.record);
    dispatch(dev, &name, m, &inputs, &outputs, &prm)
}

/// [`SeqOp`]'s forward on Metal: one packed output `[T + S (+ S*T), M]` in the data dtype.
pub(crate) fn seq_packed(
    op: &SeqOp,
    xs: (&MetalStorage, &Layout),
    x2: Option<(&MetalStorage, &Layout)>,
    st: (&MetalStorage, &Layout),
) -> Result<(MetalStorage, Shape)> {
    let (t, m) = xs.1.shape().dims2()?;
    let s = op.neuron.state_len();
    let rows = t + s + if op.record { s * t } else { 0 };
    let dev = xs.0.device();
    let dtype = xs.0.dtype();
    let out = output(dev, rows * m, dtype)?;
    let rest = At(&out, t * m * dtype.size_in_bytes());
    forward(
        op,
        xs,
        x2,
        StateIn::Packed(st.0, st.1),
        At(&out, 0),
        false,
        rest,
        t,
        m,
    )?;
    Ok((
        MetalStorage::new(out, dev.clone(), rows * m, dtype),
        Shape::from((rows, m)),
    ))
}

/// An inference call's forward on Metal (nothing tracked; [`super::gpu::infer`]): spikes
/// `[T, M]` (`u8` or the data dtype) and the states packed `[S (+ S*T), M]` in two buffers.
pub(crate) fn infer_run(
    op: &SeqOp,
    state: &[Tensor],
    spikes_u8: bool,
    xs: (&MetalStorage, &Layout),
    x2: Option<(&MetalStorage, &Layout)>,
) -> Result<((MetalStorage, Shape), (MetalStorage, Shape))> {
    let (t, m) = xs.1.shape().dims2()?;
    let s = op.neuron.state_len();
    let rows = s + if op.record { s * t } else { 0 };
    let dev = xs.0.device();
    let dtype = xs.0.dtype();
    let sp_dtype = if spikes_u8 { DType::U8 } else { dtype };
    let spikes = output(dev, t * m, sp_dtype)?;
    let rest = output(dev, rows * m, dtype)?;
    forward(
        op,
        xs,
        x2,
        StateIn::Tensors(state),
        At(&spikes, 0),
        spikes_u8,
        At(&rest, 0),
        t,
        m,
    )?;
    Ok((
        (
            MetalStorage::new(spikes, dev.clone(), t * m, sp_dtype),
            Shape::from((t, m)),
        ),
        (
            MetalStorage::new(rest, dev.clone(), rows * m, dtype),
            Shape::from((rows, m)),
        ),
    ))
}

/// The backward on Metal ([`super::gpu::backward`]): `xs [T or 2T, M]` (x2 stacked under xs),
/// the initial state `[S, M]` and the output gradient `[T + S (+ S*T), M]` give `[T + S, M]`:
/// the input gradient, then the initial-state gradient.
pub(crate) fn bwd_run(
    op: &SeqOp,
    has_x2: bool,
    xs: (&MetalStorage, &Layout),
    st: (&MetalStorage, &Layout),
    g: (&MetalStorage, &Layout),
) -> Result<(MetalStorage, Shape)> {
    let (rows_in, m) = xs.1.shape().dims2()?;
    let t = if has_x2 { rows_in / 2 } else { rows_in };
    let s = op.neuron.state_len();
    let dev = xs.0.device();
    let dtype = xs.0.dtype();
    for (what, other) in [("state", st.0.dtype()), ("gradient", g.0.dtype())] {
        if other != dtype {
            bail!("fused AdEx (metal): the {what} has dtype {other:?}, the input {dtype:?}");
        }
    }
    let size = dtype.size_in_bytes();
    let name = metal_abi::bwd_kernel(dtype, op.method)?;
    let out = output(dev, (t + s) * m, dtype)?;
    let nseg = t.div_ceil(SEG).max(1);
    let ckpt = output(dev, ((nseg - 1) * 3 * m).max(1), DType::F32)?;
    let (coefs, np) = coefs_on(dev, &op.coefs)?;
    let x = At(xs.0.buffer(), start(xs.1, dtype, "xs")?);
    let st0 = At(st.0.buffer(), start(st.1, dtype, "state")?);
    let g0 = At(g.0.buffer(), start(g.1, dtype, "gradient")?);
    let o = At(&out, 0);
    let state_rows: Vec<At<'_>> = (0..s).map(|k| st0.rows(k, m, size)).collect();
    let [v0, i0, a0] = slots(op.neuron, state_rows);
    let g_last: Vec<At<'_>> = (0..s).map(|k| g0.rows(t + k, m, size)).collect();
    let [glv, gli, gla] = slots(op.neuron, g_last);
    let g_rec: Vec<At<'_>> = (0..s).map(|k| g0.rows(t + s + k * t, m, size)).collect();
    let [grv, gri, gra] = if op.record {
        slots(op.neuron, g_rec)
    } else {
        [None; 3]
    };
    let g_first: Vec<At<'_>> = (0..s).map(|k| o.rows(t + k, m, size)).collect();
    let [g0v, g0i, g0a] = slots(op.neuron, g_first);
    let inputs = [
        (buf::XS, x),
        (buf::X2, if has_x2 { x.rows(t, m, size) } else { x }),
        (buf::V0, v0.unwrap_or(x)),
        (buf::I0, i0.unwrap_or(x)),
        (buf::A0, a0.unwrap_or(x)),
        (buf::COEFS, At(&coefs, 0)),
        (buf::G_SPIKES, g0),
        (buf::G_LAST_V, glv.unwrap_or(g0)),
        (buf::G_LAST_I, gli.unwrap_or(g0)),
        (buf::G_LAST_A, gla.unwrap_or(g0)),
        (buf::G_REC_V, grv.unwrap_or(g0)),
        (buf::G_REC_I, gri.unwrap_or(g0)),
        (buf::G_REC_A, gra.unwrap_or(g0)),
    ];
    let outputs = [
        (buf::G_XS, o),
        (buf::G0_V, g0v.unwrap_or(o)),
        (buf::G0_I, g0i.unwrap_or(o)),
        (buf::G0_A, g0a.unwrap_or(o)),
        (buf::CKPT, At(&ckpt, 0)),
    ];
    let prm = params(op, t, m, np, has_x2, op.record);
    dispatch(dev, &name, m, &inputs, &outputs, &prm)?;
    Ok((
        MetalStorage::new(out, dev.clone(), (t + s) * m, dtype),
        Shape::from((t + s, m)),
    ))
}
