//! Layer 5c: the CUDA backend of the fused ops (feature `cuda`): launches the kernels of
//! `kernels/adex.cu` (PTX for the compute capability `build.rs` chose, `ptxas`-checked there,
//! embedded here and loaded once per device with `get_or_load_custom_func`).
//!
//! One thread per neuron runs the whole time loop with the state in registers; `[T, M]` rows are
//! read and written coalesced. The backward recomputes the forward: a first pass stores the
//! state every [`SEG`] steps in a scratch buffer (`3 * M * T / SEG` values of the compute
//! precision), then each segment is recomputed into registers and walked back. This reads the
//! input twice instead of storing the trajectories (which would cost `3 * T * M` values of
//! memory and traffic).
//!
//! Setting `CANDLE_ADEX_POISON=1` fills every output buffer with `0xff` bytes (NaN in every float
//! type) before the kernel writes it, so an element the kernel misses shows as NaN; the GPU check
//! script uses it.

use super::math::Real;
use super::math::N_COEF;
use super::{AnyCoefs, Coefs, Neuron, SeqOp};
use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, DType, Layout, Result, Shape, Tensor};
use half::{bf16, f16};

/// The kernels, compiled by `build.rs` for compute capability [`PTX_CAP`].
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/adex.ptx"));
/// The compute capability the PTX targets (`CUDA_COMPUTE_CAP` at build time, see `build.rs`).
const PTX_CAP: &str = env!("CANDLE_ADEX_CUDA_CAP");
/// The module name the PTX is cached under in candle's device.
const MODULE: &str = "candle_adex_kernels";
/// Threads per block (the kernels' `__launch_bounds__`).
const BLOCK: u32 = 128;
/// Steps per checkpoint segment of the backward (the kernels' `ADEX_SEG`).
pub const SEG: usize = 16;

/// The forward kernel's argument struct (`FwdArgs<F>` in `kernels/adex.cu`, same layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct FwdArgs<F> {
    xs: u64,
    x2: u64,
    v0: u64,
    i0: u64,
    a0: u64,
    spikes: u64,
    last: [u64; 3],
    rec: [u64; 3],
    coefs: u64,
    t: u64,
    m: u64,
    np: u64,
    c: [F; N_COEF],
}

/// The backward kernel's argument struct (`BwdArgs<F>` in `kernels/adex.cu`, same layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BwdArgs<F> {
    xs: u64,
    x2: u64,
    v0: u64,
    i0: u64,
    a0: u64,
    g_spikes: u64,
    g_last: [u64; 3],
    g_rec: [u64; 3],
    g_xs: u64,
    g0: [u64; 3],
    ckpt: u64,
    coefs: u64,
    t: u64,
    m: u64,
    np: u64,
    method: i32,
    pad: i32,
    alpha: F,
    c: [F; N_COEF],
}

// SAFETY: plain `#[repr(C)]` data (integers and floats) with the layout of the kernels' structs.
unsafe impl DeviceRepr for FwdArgs<f32> {}
// SAFETY: as above.
unsafe impl DeviceRepr for FwdArgs<f64> {}
// SAFETY: as above.
unsafe impl DeviceRepr for BwdArgs<f32> {}
// SAFETY: as above.
unsafe impl DeviceRepr for BwdArgs<f64> {}

fn launch_config(m: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((m as u32).div_ceil(BLOCK), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Says why a GPU could not load the kernels when its compute capability is below the PTX's.
fn arch_error(dev: &CudaDevice, e: candle_core::Error) -> candle_core::Error {
    let cap: i32 = PTX_CAP.parse().unwrap_or(0);
    match dev.cuda_stream().context().compute_capability() {
        Ok((major, minor)) if major * 10 + minor < cap => candle_core::Error::Msg(format!(
            "candle-adex: the CUDA kernels were built for compute capability {cap} but this GPU \
             is {major}.{minor}: rebuild with CUDA_COMPUTE_CAP={major}{minor} ({e})"
        )),
        _ => e,
    }
}

/// A fresh output buffer of `len` elements (uninitialised, or poisoned when asked).
fn output<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every element is written by the kernel before it is read (poisoning makes a miss
    // visible as NaN).
    let mut out = unsafe { dev.alloc::<T>(len.max(1))? };
    if super::poisoning() {
        let bytes = (len.max(1) * std::mem::size_of::<T>()) as u64;
        let func = dev
            .get_or_load_custom_func("adex_poison_u8", MODULE, PTX)
            .map_err(|e| arch_error(dev, e))?;
        let stream = dev.cuda_stream();
        let (ptr, guard) = out.device_ptr_mut(&stream);
        let mut b = func.builder();
        b.arg(&ptr);
        b.arg(&bytes);
        let cfg = LaunchConfig {
            grid_dim: (1024, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the kernel writes `bytes` bytes from `ptr`, the buffer's size.
        unsafe { b.launch(cfg) }.w()?;
        drop(guard);
    }
    Ok(out)
}

/// The parameters: scalar ones go into the argument struct, per-neuron ones to the device as
/// `[11, M]` (kept alive by the returned slice until the launch is queued; freed in stream order).
#[allow(clippy::type_complexity)]
fn coefs_on<F: DeviceRepr + Copy + Default + 'static>(
    dev: &CudaDevice,
    c: &Coefs<F>,
) -> Result<([F; N_COEF], u64, Option<CudaSlice<F>>)> {
    match c {
        Coefs::Scalar(c) => Ok((c.to_array(), 1, None)),
        Coefs::PerNeuron { n, fields } => {
            let flat: Vec<F> = fields.iter().flatten().copied().collect();
            Ok((
                [F::default(); N_COEF],
                *n as u64,
                Some(dev.clone_htod(&flat)?),
            ))
        }
    }
}

/// The element offset of a contiguous layout.
fn start(l: &Layout, what: &str) -> Result<usize> {
    match l.contiguous_offsets() {
        Some((a, _)) => Ok(a),
        None => bail!("fused AdEx (cuda): {what} must be contiguous"),
    }
}

/// The name suffix of a data dtype in the kernel names.
fn dtype_name(dt: DType) -> Result<&'static str> {
    Ok(match dt {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        dt => bail!("fused AdEx (cuda): unsupported dtype {dt:?}"),
    })
}

/// The initial state of a forward call: packed `[S, M]` (the custom op's argument), or the
/// `S` state tensors `[M]` (the inference path, no packing copy).
enum StateIn<'a> {
    Packed(&'a CudaStorage, &'a Layout),
    Tensors(&'a [Tensor]),
}

/// One forward sequence: `xs [T, M]` (and `x2`) from the initial state; spikes go to
/// the device address `sp_p` (`[T, M]` of `O`: the data dtype or `u8`), the final state and, with
/// `record`, the post-step states to `out_p` (`[S + S*T, M]` rows of `E`: final state, then
/// recorded). The caller holds the output buffers (and their stream guards) for the launch.
#[allow(clippy::too_many_arguments)]
fn forward<E: Dev, O: Dev>(
    op: &SeqOp,
    xs: (&CudaStorage, &Layout),
    x2: Option<(&CudaStorage, &Layout)>,
    st: StateIn<'_>,
    sp_p: u64,
    out_p: u64,
    t: usize,
    m: usize,
) -> Result<()> {
    if m == 0 {
        return Ok(());
    }
    let dev = &xs.0.device;
    let stream = dev.cuda_stream();
    let name = format!(
        "adex_fwd_{}_{}",
        dtype_name(E::DTYPE_OF)?,
        if O::IS_U8 {
            "u8"
        } else {
            dtype_name(E::DTYPE_OF)?
        }
    );
    let func = dev
        .get_or_load_custom_func(&name, MODULE, PTX)
        .map_err(|e| arch_error(dev, e))?;
    let se = std::mem::size_of::<E>() as u64;
    let s = op.neuron.state_len();
    let (tt, mm) = (t as u64, m as u64);
    let xs_s = xs.0.as_cuda_slice::<E>()?;
    let (xs_p, _g1) = xs_s.device_ptr(&stream);
    let xs_p = xs_p + start(xs.1, "xs")? as u64 * se;
    let tensor_guards: Vec<_> = match &st {
        StateIn::Tensors(ts) => ts.iter().map(|t| t.storage_and_layout()).collect(),
        StateIn::Packed(..) => Vec::new(),
    };
    let mut state_guards = Vec::with_capacity(s);
    let mut bases: Vec<u64> = Vec::with_capacity(s);
    match st {
        StateIn::Packed(storage, layout) => {
            let (p, g) = storage.as_cuda_slice::<E>()?.device_ptr(&stream);
            state_guards.push(g);
            let p = p + start(layout, "state")? as u64 * se;
            bases.extend((0..s as u64).map(|k| p + k * mm * se));
        }
        StateIn::Tensors(_) => {
            for (g, l) in &tensor_guards {
                let candle_core::Storage::Cuda(c) = &**g else {
                    bail!("fused AdEx (cuda): the state must be on the input's device");
                };
                let (p, pg) = c.as_cuda_slice::<E>()?.device_ptr(&stream);
                state_guards.push(pg);
                bases.push(p + start(l, "state")? as u64 * se);
            }
        }
    }
    if bases.len() != s {
        bail!(
            "fused AdEx (cuda): expected {s} state tensors, got {}",
            bases.len()
        );
    }
    let x2_s = match x2 {
        Some((s2, _)) => Some(s2.as_cuda_slice::<E>()?),
        None => None,
    };
    let (x2_p, _g3) = match (x2_s, x2) {
        (Some(sl), Some((_, l))) => {
            let (p, g) = sl.device_ptr(&stream);
            (p + start(l, "x2")? as u64 * se, Some(g))
        }
        _ => (0, None),
    };
    let row = |k: u64| out_p + k * mm * se;
    // Kernel slots (v, i, a); the encoder has no i.
    let (v0, i0, a0) = match op.neuron {
        Neuron::FeedForward => (bases[0], bases[1], bases[2]),
        Neuron::Encoder => (bases[0], 0, bases[1]),
    };
    let slot = |k: u64| -> [u64; 3] {
        // k: the row of the first state tensor; S rows apart by `stride` rows.
        let stride = if k < s as u64 { 1 } else { tt };
        match op.neuron {
            Neuron::FeedForward => [row(k), row(k + stride), row(k + 2 * stride)],
            Neuron::Encoder => [row(k), 0, row(k + stride)],
        }
    };
    let last = slot(0);
    let rec = if op.record { slot(s as u64) } else { [0; 3] };
    macro_rules! go {
        ($f:ty, $c:expr) => {{
            let (c, np, per) = coefs_on::<$f>(dev, $c)?;
            let (cp, _g6) = match &per {
                Some(p) => {
                    let (p, g) = p.device_ptr(&stream);
                    (p, Some(g))
                }
                None => (0, None),
            };
            let args = FwdArgs::<$f> {
                xs: xs_p,
                x2: x2_p,
                v0,
                i0,
                a0,
                spikes: sp_p,
                last,
                rec,
                coefs: cp,
                t: tt,
                m: mm,
                np,
                c,
            };
            let mut b = func.builder();
            b.arg(&args);
            // SAFETY: every pointer addresses a live buffer of the sizes the kernel reads or
            // writes ([T, M] rows, [M] states, [11, M] parameters), checked by the callers.
            unsafe { b.launch(launch_config(m)) }.w()?;
        }};
    }
    match op.coefs.as_ref() {
        AnyCoefs::F32(c) if E::DTYPE_OF != DType::F64 => go!(f32, c),
        AnyCoefs::F64(c) if E::DTYPE_OF == DType::F64 => go!(f64, c),
        _ => bail!("fused AdEx (cuda): parameter precision does not match the data"),
    }
    Ok(())
}

/// Storage element types the kernels take, with their dtype.
pub(crate) trait Dev: CudaDType + DeviceRepr {
    const DTYPE_OF: DType;
    const IS_U8: bool = false;
}
impl Dev for f32 {
    const DTYPE_OF: DType = DType::F32;
}
impl Dev for f64 {
    const DTYPE_OF: DType = DType::F64;
}
impl Dev for f16 {
    const DTYPE_OF: DType = DType::F16;
}
impl Dev for bf16 {
    const DTYPE_OF: DType = DType::BF16;
}
impl Dev for u8 {
    const DTYPE_OF: DType = DType::U8;
    const IS_U8: bool = true;
}

/// [`SeqOp`]'s forward on CUDA: one packed output `[T + S (+ S*T), M]` in the data dtype.
pub(crate) fn seq_packed(
    op: &SeqOp,
    xs: (&CudaStorage, &Layout),
    x2: Option<(&CudaStorage, &Layout)>,
    st: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (t, m) = xs.1.shape().dims2()?;
    let s = op.neuron.state_len();
    let rows = t + s + if op.record { s * t } else { 0 };
    let dev = xs.0.device.clone();
    let stream = dev.cuda_stream();
    macro_rules! go {
        ($e:ty) => {{
            let mut out = output::<$e>(&dev, rows * m)?;
            {
                let (p, _guard) = out.device_ptr_mut(&stream);
                let row = (t * m * std::mem::size_of::<$e>()) as u64;
                let st = StateIn::Packed(st.0, st.1);
                forward::<$e, $e>(op, xs, x2, st, p, p + row, t, m)?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let storage = match xs.0.dtype() {
        DType::F32 => go!(f32),
        DType::F64 => go!(f64),
        DType::F16 => go!(f16),
        DType::BF16 => go!(bf16),
        dt => bail!("fused AdEx (cuda): unsupported dtype {dt:?}"),
    };
    Ok((storage, Shape::from((rows, m))))
}

/// An inference call's forward on CUDA (nothing tracked; [`super::gpu::infer`]): spikes
/// `[T, M]` (`u8` or the data dtype) and the states packed `[S (+ S*T), M]` (final, then
/// recorded) in two buffers written by one kernel. The initial state is read from the state
/// tensors directly.
pub(crate) fn infer_run(
    op: &SeqOp,
    state: &[Tensor],
    spikes_u8: bool,
    xs: (&CudaStorage, &Layout),
    x2: Option<(&CudaStorage, &Layout)>,
) -> Result<((CudaStorage, Shape), (CudaStorage, Shape))> {
    let (t, m) = xs.1.shape().dims2()?;
    let s = op.neuron.state_len();
    let rows = s + if op.record { s * t } else { 0 };
    let dev = xs.0.device.clone();
    let stream = dev.cuda_stream();
    macro_rules! go {
        ($e:ty, $o:ty) => {{
            let mut spikes = output::<$o>(&dev, t * m)?;
            let mut rest = output::<$e>(&dev, rows * m)?;
            {
                let (sp, _g1) = spikes.device_ptr_mut(&stream);
                let (rp, _g2) = rest.device_ptr_mut(&stream);
                let st = StateIn::Tensors(state);
                forward::<$e, $o>(op, xs, x2, st, sp, rp, t, m)?;
            }
            (
                CudaStorage::wrap_cuda_slice(spikes, dev.clone()),
                CudaStorage::wrap_cuda_slice(rest, dev.clone()),
            )
        }};
    }
    let (spikes, rest) = match xs.0.dtype() {
        DType::F32 if spikes_u8 => go!(f32, u8),
        DType::F32 => go!(f32, f32),
        DType::F64 if spikes_u8 => go!(f64, u8),
        DType::F64 => go!(f64, f64),
        DType::F16 if spikes_u8 => go!(f16, u8),
        DType::F16 => go!(f16, f16),
        DType::BF16 if spikes_u8 => go!(bf16, u8),
        DType::BF16 => go!(bf16, bf16),
        dt => bail!("fused AdEx (cuda): unsupported dtype {dt:?}"),
    };
    Ok((
        (spikes, Shape::from((t, m))),
        (rest, Shape::from((rows, m))),
    ))
}

/// The backward on CUDA ([`super::gpu::backward`]): `xs [T or 2T, M]` (x2 stacked under xs),
/// the initial state `[S, M]` and the output gradient `[T + S (+ S*T), M]` give `[T + S, M]`:
/// the input gradient, then the initial-state gradient.
fn bwd_typed<E: Dev>(
    op: &SeqOp,
    has_x2: bool,
    xs: (&CudaStorage, &Layout),
    st: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (rows_in, m) = xs.1.shape().dims2()?;
    let t = if has_x2 { rows_in / 2 } else { rows_in };
    let s = op.neuron.state_len();
    let dev = xs.0.device.clone();
    let stream = dev.cuda_stream();
    let mut out = output::<E>(&dev, (t + s) * m)?;
    if m == 0 {
        return Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((t + s, m)),
        ));
    }
    let func = dev
        .get_or_load_custom_func(
            &format!("adex_bwd_{}_{}", dtype_name(E::DTYPE_OF)?, op.method as i32),
            MODULE,
            PTX,
        )
        .map_err(|e| arch_error(&dev, e))?;
    let se = std::mem::size_of::<E>() as u64;
    let (tt, mm) = (t as u64, m as u64);
    let nseg = t.div_ceil(SEG).max(1);
    let xs_s = xs.0.as_cuda_slice::<E>()?;
    let st_s = st.0.as_cuda_slice::<E>()?;
    let g_s = g.0.as_cuda_slice::<E>()?;
    let (xs_p, _g1) = xs_s.device_ptr(&stream);
    let xs_p = xs_p + start(xs.1, "xs")? as u64 * se;
    let (st_p, _g2) = st_s.device_ptr(&stream);
    let st_p = st_p + start(st.1, "state")? as u64 * se;
    let (g_p, _g3) = g_s.device_ptr(&stream);
    let g_p = g_p + start(g.1, "gradient")? as u64 * se;
    let (o_p, _g4) = out.device_ptr_mut(&stream);
    let at = |base: u64, row: u64| base + row * mm * se;
    let three = |base: u64, first: u64, stride: u64| -> [u64; 3] {
        match op.neuron {
            Neuron::FeedForward => [
                at(base, first),
                at(base, first + stride),
                at(base, first + 2 * stride),
            ],
            Neuron::Encoder => [at(base, first), 0, at(base, first + stride)],
        }
    };
    let [v0, i0, a0] = three(st_p, 0, 1);
    let s64 = s as u64;
    macro_rules! go {
        ($f:ty, $c:expr) => {{
            let (c, np, per) = coefs_on::<$f>(&dev, $c)?;
            let (cp, _g5) = match &per {
                Some(p) => {
                    let (p, g) = p.device_ptr(&stream);
                    (p, Some(g))
                }
                None => (0, None),
            };
            let mut ckpt = if nseg > 1 {
                // SAFETY: scratch written by the kernel's first pass before it is read.
                Some(unsafe { dev.alloc::<$f>((nseg - 1) * 3 * m)? })
            } else {
                None
            };
            let (kp, _g6) = match ckpt.as_mut() {
                Some(k) => {
                    let (p, g) = k.device_ptr_mut(&stream);
                    (p, Some(g))
                }
                None => (0, None),
            };
            let args = BwdArgs::<$f> {
                xs: xs_p,
                x2: if has_x2 { at(xs_p, tt) } else { 0 },
                v0,
                i0,
                a0,
                g_spikes: g_p,
                g_last: three(g_p, tt, 1),
                g_rec: if op.record {
                    three(g_p, tt + s64, tt)
                } else {
                    [0; 3]
                },
                g_xs: o_p,
                g0: three(o_p, tt, 1),
                ckpt: kp,
                coefs: cp,
                t: tt,
                m: mm,
                np,
                method: op.method as i32,
                pad: 0,
                alpha: <$f>::from_f64(op.alpha),
                c,
            };
            let mut b = func.builder();
            b.arg(&args);
            // SAFETY: every pointer addresses a live buffer of the sizes the kernel reads
            // or writes, checked by the caller (shapes of xs, state and gradient).
            unsafe { b.launch(launch_config(m)) }.w()?;
        }};
    }
    match op.coefs.as_ref() {
        AnyCoefs::F32(c) if E::DTYPE_OF != DType::F64 => go!(f32, c),
        AnyCoefs::F64(c) if E::DTYPE_OF == DType::F64 => go!(f64, c),
        _ => bail!("fused AdEx (cuda): parameter precision does not match the data"),
    }
    drop((_g1, _g2, _g3, _g4));
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from((t + s, m)),
    ))
}

/// [`bwd_typed`] for the data dtype of `xs`.
pub(crate) fn bwd_run(
    op: &SeqOp,
    has_x2: bool,
    xs: (&CudaStorage, &Layout),
    st: (&CudaStorage, &Layout),
    g: (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    match xs.0.dtype() {
        DType::F32 => bwd_typed::<f32>(op, has_x2, xs, st, g),
        DType::F64 => bwd_typed::<f64>(op, has_x2, xs, st, g),
        DType::F16 => bwd_typed::<f16>(op, has_x2, xs, st, g),
        DType::BF16 => bwd_typed::<bf16>(op, has_x2, xs, st, g),
        dt => bail!("fused AdEx (cuda): unsupported dtype {dt:?}"),
    }
}

/// Keeps device memory that candle frees in CUDA's default memory pool instead of handing it
/// back to the driver at every synchronisation (the pool's release threshold set to "never"),
/// so that fresh outputs of the next call are served from the pool, as PyTorch's caching
/// allocator does. Without it, large outputs (hundreds of MB) are mapped anew on each call, which
/// on an H200 costs about as much as the kernel. The memory stays reserved by this process.
pub fn retain_pool_memory(dev: &CudaDevice) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::{result, sys};
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    ctx.bind_to_thread().w()?;
    let mut threshold: u64 = u64::MAX;
    // SAFETY: the device handle comes from candle's live context, and the release-threshold
    // attribute takes a pointer to a u64, which `threshold` is.
    unsafe {
        let pool = result::device::get_default_mem_pool(ctx.cu_device()).w()?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()
        .w()?;
    }
    Ok(())
}

/// A device-to-device copy of `bytes` bytes between two buffers allocated once: the memory roof
/// of the benchmarks. Returns a closure that runs one copy (not synchronised).
pub fn copy_roof(dev: &CudaDevice, bytes: usize) -> Result<impl FnMut() -> Result<()>> {
    let src = dev.alloc_zeros::<u8>(bytes.max(1))?;
    let mut dst = dev.alloc_zeros::<u8>(bytes.max(1))?;
    let dev = dev.clone();
    Ok(move || dev.memcpy_dtod(&src, &mut dst))
}
