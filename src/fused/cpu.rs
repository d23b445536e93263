//! Layer 5c: the fused CPU kernels: the time loop over blocks of neurons, instruction-set
//! dispatch, threads, prefetch and streaming stores.
//!
//! # Design (see `../shared/perf/CPU-ROOFLINE.md` for the measurements behind it)
//! - Neurons are processed in blocks of [`BLOCK`] lanes; for each block the **time loop is the
//!   outer loop** and the lanes the inner one, so the state stays in the block's local arrays (L1)
//!   across all `T` steps and the lane loop gives the out-of-order core independent dependency
//!   chains per step (8 AVX-512 vectors, 16 AVX2 ones), evaluated four vectors at a time.
//! - The lane loop body is [`super::math`] (one scalar definition of the update), which LLVM
//!   vectorizes in whichever instruction-set context the block loop is instantiated in:
//!   AVX-512 (`avx512f/bw/vl/dq` + FMA + F16C), AVX2 + FMA + F16C, or the portable baseline
//!   (SSE2 on x86-64, NEON on aarch64). The choice is made at run time ([`Isa::detected`]) from
//!   one generic build; [`with_isa`] forces a path (tests run every path this CPU has).
//! - Inputs a few rows ahead are prefetched; large outputs are written with non-temporal
//!   (streaming) stores, with block boundaries shifted so that a block's row segment starts on a
//!   cache line. Half types are converted in registers (see [`super::elem`]).
//! - Problems from `PARALLEL_WORK` neuron-steps up split the blocks across the persistent
//!   worker pool of `fused::pool` (`candle_core::utils::get_num_threads()` threads, i.e.
//!   `RAYON_NUM_THREADS` or the core count; a hand-over costs about a microsecond, so a call of
//!   10^5 neuron-steps, some 25 µs, runs on both cores); smaller ones run on the calling thread.
//!
//! # Backward
//! The sequence backward **recomputes** the forward instead of storing it: the forward pass with
//! gradients writes exactly what inference writes, and the backward walks each block through
//! time again, keeping checkpoints of the state every [`SEG`] steps and the tapes of one segment
//! at a time (the two values per step that the step's backward needs, [`math::Tape`]) in a
//! per-thread buffer (128 KB, L2-resident), then runs the reverse time loop over that segment.
//! Memory traffic is the inputs and gradients once more instead of three state trajectories
//! written and read back; the extra arithmetic is one forward pass (two for `T > SEG`), and the
//! reverse step reads the exponential from the tape instead of evaluating it again.

// Index loops over fixed-size lane arrays are the form the vectorizer handles best here
// (iterator adaptors with closures were measured not to inline into the SIMD contexts).
#![allow(clippy::needless_range_loop)]
use super::elem::{Compute, Elem};
use super::math::{self, Coef, Lanes, Multi, Pack, Real, N_COEF};
use crate::surrogate::SurrogateMethod;
use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::Range;

/// Lanes per block: 8 AVX-512 vectors of f32 (16 AVX2 vectors).
pub const BLOCK: usize = 128;
/// Vector groups evaluated side by side, operation by operation (nested, so that every loop
/// over groups is short enough to be unrolled rather than vectorized across groups).
///
/// Four is the measured optimum on AVX2 too, although its 16 registers then hold no constants
/// (a pack of 4 x 8 lanes issues about 270 instructions, some 80 of them spills and broadcasts):
/// the update is a long dependency chain and one pack fills the reorder window, so the groups
/// are the parallelism the core gets. AVX2 forward with 2 groups, 1 thread, seq in cache
/// (100, 1, 1000): 0.63-0.66 against 0.74-1.06 G/s; with 8 groups 0.20-0.27 (Zen 3, three
/// interleaved runs).
const GROUPS: usize = 4;
/// The lanes of one vector group, per instruction-set path (the `V` of the kernels' generic
/// parameters): one AVX-512 register of f32 (16), and on AVX2 one 256-bit register (8). With 16
/// lanes on AVX2 a pack spans 8 of its 16 registers per value, and the spills and the masks'
/// byte conversions cost 1.4-1.7x in forward throughput (measured on an AVX2-only Zen 3).
const VEC_AVX512: usize = 16;
const VEC_AVX2: usize = 8;
/// The AVX2 backward keeps 16-lane groups: 8 measured no faster there (0.23-0.29 G/s against
/// 0.25-0.44 forward+backward, interleaved runs on the same Zen 3), and with lane-wide masks
/// (see [`math::Pack`]) slower: 0.21-0.23 against 0.31-0.32 G/s at (100, 1, 1000), one thread.
const VEC_AVX2_BWD: usize = 16;
/// The portable path's groups (SSE2 / NEON); 8 measured no better than 16 on SSE2.
const VEC_PORTABLE: usize = 16;
/// The most packs a block holds (with the narrowest groups).
const MAX_NP: usize = BLOCK / (GROUPS * VEC_AVX2);
/// A pack of compute lanes: `GROUPS` groups of `V` lanes.
type P<F, const V: usize> = Multi<Pack<F, V>, GROUPS>;

/// Loading and storing lane groups from slices.
trait LoadStore<F>: Sized {
    const LEN: usize;
    fn load(src: &[F]) -> Self;
    fn store(self, dst: &mut [F]);
}

impl<F: Copy, const K: usize> LoadStore<F> for Pack<F, K> {
    const LEN: usize = K;
    #[inline(always)]
    fn load(src: &[F]) -> Self {
        Pack::load(src)
    }
    #[inline(always)]
    fn store(self, dst: &mut [F]) {
        Pack::store(self, dst)
    }
}

impl<F: Copy, V: LoadStore<F> + Copy, const J: usize> LoadStore<F> for Multi<V, J> {
    const LEN: usize = V::LEN * J;
    #[inline(always)]
    fn load(src: &[F]) -> Self {
        let mut r = [V::load(src); J];
        for (j, p) in r.iter_mut().enumerate().skip(1) {
            *p = V::load(&src[j * V::LEN..]);
        }
        Multi(r)
    }
    #[inline(always)]
    fn store(self, dst: &mut [F]) {
        for (j, p) in self.0.into_iter().enumerate() {
            p.store(&mut dst[j * V::LEN..]);
        }
    }
}
/// Steps per recomputation segment of the backward pass.
pub const SEG: usize = 128;
/// How many rows ahead the input is prefetched.
const PREFETCH_ROWS: usize = 6;
/// Inputs at least this large are prefetched (smaller ones stay in cache between calls).
const PREFETCH_BYTES: usize = 8 << 20;
/// Outputs at least this large are written with streaming stores.
const STREAM_BYTES: usize = 16 << 20;
/// Neuron-steps below which a call runs on one thread (about 10 µs of work: below it, handing
/// work to a pool worker costs more than it saves).
const PARALLEL_WORK: usize = 1 << 15;

/// The instruction-set paths of the CPU kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512 F/BW/VL/DQ with FMA and F16C (x86-64).
    Avx512,
    /// AVX2 with FMA and F16C (x86-64).
    Avx2,
    /// The target's baseline (SSE2 on x86-64, NEON on aarch64), still vectorized.
    Portable,
}

thread_local! {
    static FORCED: Cell<Option<Isa>> = const { Cell::new(None) };
}

impl Isa {
    /// The paths this CPU can run, best first.
    ///
    /// ```
    /// use candle_adex::fused::cpu::Isa;
    /// assert_eq!(*Isa::available().last().unwrap(), Isa::Portable);
    /// ```
    pub fn available() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                v.push(Isa::Avx2);
            }
        }
        v.push(Isa::Portable);
        v
    }

    /// The best path of this CPU.
    pub fn detected() -> Isa {
        Isa::available()[0]
    }

    /// The path the kernels use on this thread now: the one forced by [`with_isa`], else
    /// [`Isa::detected`].
    pub fn current() -> Isa {
        FORCED.with(|f| f.get()).unwrap_or_else(Isa::detected)
    }

    /// Lower-case name (`avx512`, `avx2`, `portable`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

/// Runs `f` with the CPU kernels forced onto `isa` on this thread (for tests and benchmarks).
/// Errors if this CPU cannot run `isa`.
///
/// ```
/// use candle_adex::fused::cpu::{with_isa, Isa};
/// let r = with_isa(Isa::Portable, || Isa::current())?;
/// assert_eq!(r, Isa::Portable);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> candle_core::Result<R> {
    if !Isa::available().contains(&isa) {
        candle_core::bail!("this CPU cannot run the {} kernels", isa.name());
    }
    let old = FORCED.with(|c| c.replace(Some(isa)));
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(old);
    Ok(f())
}

/// The threads a call of `work` neuron-steps over `nblocks` blocks uses.
pub fn threads_for(work: usize, nblocks: usize) -> usize {
    if work < PARALLEL_WORK {
        return 1;
    }
    super::pool::threads().min(nblocks.div_ceil(2)).max(1)
}

/// A row-major `[rows, width]` output written by several threads, each to its own columns.
///
/// Created from an exclusive borrow whose length is checked, so every in-range write lands in
/// memory this value owns for its lifetime; the kernels write column ranges that do not overlap
/// between threads.
pub(crate) struct Rows<'a, T> {
    ptr: *mut T,
    rows: usize,
    width: usize,
    _own: PhantomData<&'a mut [T]>,
}

// SAFETY: `Rows` is a view of an exclusively borrowed buffer; threads write disjoint columns.
unsafe impl<T: Send> Send for Rows<'_, T> {}
unsafe impl<T: Send> Sync for Rows<'_, T> {}

impl<'a, T> Rows<'a, T> {
    pub(crate) fn new(buf: &'a mut [T], rows: usize, width: usize) -> Self {
        assert_eq!(buf.len(), rows * width, "output buffer size");
        Rows {
            ptr: buf.as_mut_ptr(),
            rows,
            width,
            _own: PhantomData,
        }
    }

    /// The row segment `[t, m0..m0+len]`.
    #[inline(always)]
    fn segment(&self, t: usize, m0: usize, len: usize) -> *mut T {
        assert!(t < self.rows && m0 + len <= self.width);
        // SAFETY: in bounds by the assertion above.
        unsafe { self.ptr.add(t * self.width + m0) }
    }
}

/// A `[width]` initial state the forward reads, one block's segment at a time: a borrowed slice,
/// or the final-state row the same job writes (a step applied in place).
///
/// Aliasing its job's final state is sound because the forward loads a block's initial segment
/// before it stores that block's final segment, and each block (columns `m0..m0+len`) is read
/// and written by one thread only.
#[derive(Clone, Copy)]
pub(crate) struct Init<'a, T> {
    ptr: *const T,
    len: usize,
    _view: PhantomData<&'a [T]>,
}

// SAFETY: a read view of memory that lives for `'a`; see the type's comment for the aliasing
// rule that keeps reads and the kernel's writes apart.
unsafe impl<T: Sync> Send for Init<'_, T> {}
unsafe impl<T: Sync> Sync for Init<'_, T> {}

impl<'a, T> From<&'a [T]> for Init<'a, T> {
    fn from(s: &'a [T]) -> Self {
        Init {
            ptr: s.as_ptr(),
            len: s.len(),
            _view: PhantomData,
        }
    }
}

impl<'a, T> Init<'a, T> {
    /// The segment `m0..m0+len`, valid until the caller next writes through an aliasing
    /// [`Rows`] (the forward copies it into registers first).
    #[inline(always)]
    fn segment(&self, m0: usize, len: usize) -> &[T] {
        assert!(m0 + len <= self.len);
        // SAFETY: in bounds by the assertion; nothing writes these columns while the returned
        // borrow lives (the type's aliasing rule).
        unsafe { std::slice::from_raw_parts(self.ptr.add(m0), len) }
    }
}

impl<'a, T> Rows<'a, T> {
    /// The first row as the initial state of the job that writes this row as its final state
    /// (the state advanced in place).
    ///
    /// # Safety
    /// Only for a [`FwdJob`]'s `v0`/`i0`/`a0` whose matching `last` slot is `self`, so that the
    /// forward's load-before-store order per block holds (see [`Init`]).
    pub(crate) unsafe fn as_init(&self) -> Init<'a, T> {
        Init {
            ptr: self.ptr,
            len: self.width,
            _view: PhantomData,
        }
    }
}

/// Parameters for a call: one set for all neurons, or one per neuron (`[N]` each, the neuron
/// index being the flat index modulo `N`).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // built once per call
pub(crate) enum Coefs<F> {
    Scalar(Coef<F>),
    PerNeuron { n: usize, fields: [Vec<F>; N_COEF] },
}

/// A block's parameters, lane by lane.
struct BlockCoef<F> {
    lanes: [[F; BLOCK]; N_COEF],
}

impl<F: Real> Coefs<F> {
    fn block(&self, m0: usize, len: usize) -> BlockCoef<F> {
        let mut lanes = [[F::ZERO; BLOCK]; N_COEF];
        match self {
            Coefs::Scalar(c) => {
                for (lane, v) in lanes.iter_mut().zip(c.to_array()) {
                    *lane = [v; BLOCK];
                }
            }
            Coefs::PerNeuron { n, fields } => {
                for (lane, field) in lanes.iter_mut().zip(fields) {
                    for (l, slot) in lane.iter_mut().enumerate() {
                        // Padding lanes repeat the first neuron, so they stay finite.
                        let m = m0 + if l < len { l } else { 0 };
                        *slot = field[m % n];
                    }
                }
            }
        }
        BlockCoef { lanes }
    }
}

impl<F: Copy> BlockCoef<F> {
    /// The block's parameters as packs of `GROUPS * V` lanes (the first `BLOCK / (GROUPS * V)`
    /// entries; any after them repeat the first).
    #[inline(always)]
    fn packs<const V: usize>(&self) -> [Coef<P<F, V>>; MAX_NP] {
        let pack = GROUPS * V;
        std::array::from_fn(|p| {
            let p = if p * pack < BLOCK { p } else { 0 };
            Coef::from_array(std::array::from_fn(|k| {
                <P<F, V>>::load(&self.lanes[k][p * pack..])
            }))
        })
    }
}

/// Where a block's parameters come from, pack by pack: one set splatted to every lane (kept
/// in registers or broadcast from memory), or per-neuron values gathered for the block.
trait PackSource<F, const V: usize> {
    fn pack(&self, p: usize) -> Coef<P<F, V>>;
}

impl<F: Real, const V: usize> PackSource<F, V> for Coef<F> {
    #[inline(always)]
    fn pack(&self, _p: usize) -> Coef<P<F, V>> {
        self.splat()
    }
}

impl<F: Copy, const V: usize> PackSource<F, V> for [Coef<P<F, V>>; MAX_NP] {
    #[inline(always)]
    fn pack(&self, p: usize) -> Coef<P<F, V>> {
        self[p]
    }
}

/// A forward sequence call: `T` steps of `M` neurons (`[T, M]` row-major data).
pub(crate) struct FwdJob<'a, E: Elem, O: Elem> {
    pub t: usize,
    pub m: usize,
    /// Input currents `[T, M]`.
    pub xs: &'a [E],
    /// A second drive `[T, M]` added after the input (the recurrent current), or `None`.
    pub x2: Option<&'a [E]>,
    /// Initial state `[M]` each; `i0` is `None` for the encoder (no synaptic current). May be
    /// the `last` rows themselves (see [`Rows::as_init`]).
    pub v0: Init<'a, E>,
    pub i0: Option<Init<'a, E>>,
    pub a0: Init<'a, E>,
    /// Spikes `[T, M]`.
    pub spikes: Rows<'a, O>,
    /// Final state `[1, M]` each (`i` unused for the encoder).
    pub last: [Option<Rows<'a, E>>; 3],
    /// Post-step states `[T, M]` each, when recording.
    pub record: Option<[Option<Rows<'a, E>>; 3]>,
    pub coefs: &'a Coefs<E::F>,
}

/// A backward sequence call, in the compute precision.
pub(crate) struct BwdJob<'a, F: Real> {
    pub t: usize,
    pub m: usize,
    pub xs: &'a [F],
    pub x2: Option<&'a [F]>,
    pub v0: &'a [F],
    pub i0: Option<&'a [F]>,
    pub a0: &'a [F],
    /// Gradient of the spikes `[T, M]`.
    pub g_spikes: &'a [F],
    /// Gradient of the final state `[M]` each (`i` unused for the encoder).
    pub g_last: [&'a [F]; 3],
    /// Gradients of the recorded post-step states `[T, M]` each.
    pub g_record: Option<[&'a [F]; 3]>,
    /// Gradient of the inputs `[T, M]`.
    pub g_xs: Rows<'a, F>,
    /// Gradients of the initial state `[1, M]` each (`i` unused for the encoder).
    pub g0: [Option<Rows<'a, F>>; 3],
    pub coefs: &'a Coefs<F>,
    pub method: SurrogateMethod,
    pub alpha: f64,
}

/// How the columns `0..M` are cut into blocks: an optional short head (so that the later blocks
/// start on a cache line of the streamed output), then blocks of `BLOCK`.
#[derive(Clone, Copy)]
struct Blocks {
    m: usize,
    head: usize,
}

impl Blocks {
    fn new(m: usize, head: usize) -> Self {
        Blocks {
            m,
            head: head.min(m),
        }
    }
    /// Whether a `[t, M]` output is large enough to be streamed, and the blocks for it: when
    /// streaming, the block boundaries are shifted so that blocks start on a cache line of the
    /// output rows (only possible when every row has the same alignment).
    fn for_output<O>(out: &Rows<O>, t: usize) -> (bool, Self) {
        let (m, size) = (out.width, std::mem::size_of::<O>());
        let stream = t * m * size >= STREAM_BYTES;
        let addr = out.ptr as usize;
        let head = if stream && (m * size) % 64 == 0 && addr % size == 0 {
            ((64 - addr % 64) % 64) / size
        } else {
            0
        };
        (stream, Blocks::new(m, head))
    }
    fn count(&self) -> usize {
        (self.head > 0) as usize + (self.m - self.head).div_ceil(BLOCK)
    }
    fn get(&self, k: usize) -> (usize, usize) {
        if self.head > 0 {
            if k == 0 {
                return (0, self.head);
            }
            let m0 = self.head + (k - 1) * BLOCK;
            return (m0, BLOCK.min(self.m - m0));
        }
        let m0 = k * BLOCK;
        (m0, BLOCK.min(self.m - m0))
    }
}

/// Converts a row segment into a block buffer, padding with zeros.
#[inline(always)]
fn load<E: Elem>(src: &[E], dst: &mut [E::F; BLOCK]) {
    if src.len() == BLOCK {
        for l in 0..BLOCK {
            dst[l] = src[l].to_f();
        }
    } else {
        for l in 0..BLOCK {
            dst[l] = if l < src.len() {
                src[l].to_f()
            } else {
                E::F::ZERO
            };
        }
    }
}

/// A block's row segment of a compute-precision input as `BLOCK` lanes: the row itself for a
/// full block (read in place, no copy), else `src` copied into `buf` and zero-padded.
#[inline(always)]
fn row_in<'s, F: Compute>(src: &'s [F], buf: &'s mut [F; BLOCK]) -> &'s [F; BLOCK] {
    match src.try_into() {
        Ok(full) => full,
        Err(_) => {
            load(src, buf);
            buf
        }
    }
}

/// A pack read from `E` values, converted in registers (the buffers of this and
/// [`store_conv`] are sized for the widest pack; only the first `GROUPS * V` lanes are used).
#[inline(always)]
fn load_conv<E: Elem, const V: usize>(src: &[E]) -> P<E::F, V> {
    let src = &src[..GROUPS * V];
    let mut buf = [<E::F as Real>::ZERO; BLOCK];
    for k in 0..GROUPS * V {
        buf[k] = src[k].to_f();
    }
    <P<E::F, V>>::load(&buf)
}

/// A pack written as `O` values.
#[inline(always)]
fn store_conv<F: Real, O: Elem, const V: usize>(vals: P<F, V>, dst: &mut [O]) {
    let mut f = [F::ZERO; BLOCK];
    vals.store(&mut f);
    let dst = &mut dst[..GROUPS * V];
    for k in 0..GROUPS * V {
        dst[k] = O::from_f(<O::F as Real>::from_f64(f[k].to_f64()));
    }
}

/// Writes `len` lanes of `vals` to `dst` as `O`, streaming when asked and possible.
///
/// # Safety
/// `dst` must be valid for `len` writes (it comes from [`Rows::segment`]).
#[inline(always)]
unsafe fn put<F: Real, O: Elem>(dst: *mut O, len: usize, vals: &[F; BLOCK], stream: bool) {
    let conv = |x: F| O::from_f(<O::F as Real>::from_f64(x.to_f64()));
    if stream && len == BLOCK && (dst as usize) % 16 == 0 {
        let mut buf = [O::NIL; BLOCK];
        for l in 0..BLOCK {
            buf[l] = conv(vals[l]);
        }
        stream_copy(
            dst as *mut u8,
            buf.as_ptr() as *const u8,
            BLOCK * std::mem::size_of::<O>(),
        );
    } else {
        for (l, v) in vals.iter().take(len).enumerate() {
            *dst.add(l) = conv(*v);
        }
    }
}

/// Copies `bytes` (a multiple of 16) to a 16-byte aligned `dst` with non-temporal stores.
///
/// # Safety
/// `dst` and `src` valid for `bytes`, `dst` 16-byte aligned.
#[inline(always)]
unsafe fn stream_copy(dst: *mut u8, src: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let mut k = 0;
        while k + 16 <= bytes {
            _mm_stream_si128(
                dst.add(k) as *mut __m128i,
                _mm_loadu_si128(src.add(k) as *const __m128i),
            );
            k += 16;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::ptr::copy_nonoverlapping(src, dst, bytes);
}

/// Orders this thread's streaming stores before whatever follows (the join).
fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` is part of SSE, which every x86-64 CPU has.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Hints that `bytes` from `p` will be read soon: into L2 (`prefetcht1`), not L1.
///
/// The kernels walk `[T, M]` rows a block (512 bytes of f32) at a time, a pattern the hardware
/// prefetchers do not follow, so these hints carry the DRAM traffic. A prefetch into L1 holds
/// one of the core's few line-fill buffers until its line arrives, which caps the lines in
/// flight (and the streaming stores share those buffers); into L2 it does not. Measured on the
/// development machine (kernel harness, 2 threads, one run): forward f32 at (1000, 1, 100000)
/// 2.35-2.38 -> 2.62-2.72 G/s, u8 spikes 1.59 -> 2.43, (100, 1, 2^20) 2.92-3.00 -> 3.06-3.10;
/// the backward unchanged.
#[inline(always)]
fn prefetch<T>(p: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let bytes = std::mem::size_of_val(p);
        let base = p.as_ptr() as *const i8;
        let mut k = 0;
        while k < bytes {
            // SAFETY: prefetching is a hint and never faults; the address is inside `p`.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(base.add(k)) };
            k += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches the block's inputs (columns `m0..m0+len` of the `[steps, m]` drives) of the step
/// [`PREFETCH_ROWS`] after step `t`, if there is one.
#[inline(always)]
fn prefetch_ahead<T>(
    xs: &[T],
    x2: Option<&[T]>,
    (t, steps): (usize, usize),
    m: usize,
    (m0, len): (usize, usize),
) {
    if t + PREFETCH_ROWS < steps {
        let r = (t + PREFETCH_ROWS) * m + m0;
        prefetch(&xs[r..r + len]);
        if let Some(d) = x2 {
            prefetch(&d[r..r + len]);
        }
    }
}

/// The forward time loop of one block of lanes `m0..m0+len`.
#[inline(always)]
fn fwd_block<const V: usize, const FMA: bool, const SYN: bool, const X2: bool, E: Elem, O: Elem>(
    job: &FwdJob<E, O>,
    m0: usize,
    len: usize,
    stream: bool,
    coef: &impl PackSource<E::F, V>,
) {
    let pack = GROUPS * V;
    let m = job.m;
    let zero = <E::F as Real>::ZERO;
    let (mut v, mut i, mut a) = ([zero; BLOCK], [zero; BLOCK], [zero; BLOCK]);
    // The initial state first: it may alias the final state stored at the end.
    load(job.v0.segment(m0, len), &mut v);
    if let Some(i0) = &job.i0 {
        load(i0.segment(m0, len), &mut i);
    }
    load(job.a0.segment(m0, len), &mut a);
    let (mut x, mut x2, mut z) = ([zero; BLOCK], [zero; BLOCK], [zero; BLOCK]);
    let drive2 = if X2 { job.x2 } else { None };
    let prefetching = std::mem::size_of_val(job.xs) >= PREFETCH_BYTES;
    for t in 0..job.t {
        let row = t * m + m0..t * m + m0 + len;
        if prefetching {
            prefetch_ahead(job.xs, drive2, (t, job.t), m, (m0, len));
        }
        // Full blocks read the input and write the spikes straight from and to the rows; a
        // short block, or streamed spikes, go through the block buffers.
        let direct = len == BLOCK && !stream;
        if !direct {
            load(&job.xs[row.clone()], &mut x);
        }
        if let Some(d) = drive2 {
            load(&d[row.clone()], &mut x2);
        }
        // SAFETY: `segment` checks the bounds; this thread alone writes these columns.
        let spikes = unsafe { std::slice::from_raw_parts_mut(job.spikes.segment(t, m0, len), len) };
        for p in 0..BLOCK / pack {
            let c = &coef.pack(p);
            let r = p * pack..(p + 1) * pack;
            let xp = if direct {
                load_conv::<E, V>(&job.xs[row.start + p * pack..row.end])
            } else {
                <P<E::F, V>>::load(&x[r.clone()])
            };
            let ip = <P<E::F, V>>::load(&i[r.clone()]);
            let i_jump = match (SYN, X2) {
                (false, _) => xp,
                (true, false) => ip + xp,
                (true, true) => (ip + xp) + <P<E::F, V>>::load(&x2[r.clone()]),
            };
            let (zp, vp, ap) = math::update::<P<E::F, V>, FMA>(
                c,
                <P<E::F, V>>::load(&v[r.clone()]),
                i_jump,
                <P<E::F, V>>::load(&a[r.clone()]),
            );
            if direct {
                store_conv(zp, &mut spikes[p * pack..]);
            } else {
                zp.store(&mut z[r.clone()]);
            }
            vp.store(&mut v[r.clone()]);
            ap.store(&mut a[r.clone()]);
            if SYN {
                math::synapse(c, i_jump).store(&mut i[r]);
            }
        }
        // SAFETY: `segment` checks the bounds.
        unsafe {
            if !direct {
                put(spikes.as_mut_ptr(), len, &z, stream);
            }
            if let Some(rec) = &job.record {
                for (r, vals) in rec.iter().zip([&v, &i, &a]) {
                    if let Some(r) = r {
                        put(r.segment(t, m0, len), len, vals, stream);
                    }
                }
            }
        }
    }
    for (r, vals) in job.last.iter().zip([&v, &i, &a]) {
        if let Some(r) = r {
            // SAFETY: `segment` checks the bounds.
            unsafe { put(r.segment(0, m0, len), len, vals, false) };
        }
    }
}

#[inline(always)]
fn fwd_blocks<
    const V: usize,
    const FMA: bool,
    const SYN: bool,
    const X2: bool,
    E: Elem,
    O: Elem,
>(
    job: &FwdJob<E, O>,
    blocks: Blocks,
    range: Range<usize>,
    stream: bool,
) {
    for k in range {
        let (m0, len) = blocks.get(k);
        match job.coefs {
            Coefs::Scalar(c) => fwd_block::<V, FMA, SYN, X2, E, O>(job, m0, len, stream, c),
            per_neuron => {
                let packs = per_neuron.block(m0, len).packs::<V>();
                fwd_block::<V, FMA, SYN, X2, E, O>(job, m0, len, stream, &packs)
            }
        }
    }
    if stream {
        stream_fence();
    }
}

/// Per-thread scratch of the backward pass.
struct Scratch<F> {
    /// Checkpoints: the pre-step state `(v, i, a)` at every `SEG`-th step.
    ckpt: Vec<[[F; BLOCK]; 3]>,
    /// The tapes (`v_dec`, `e`) of the current segment's steps.
    seg: Vec<[[F; BLOCK]; 2]>,
}

/// One forward step of a block inside the backward pass, optionally keeping the step's tape
/// (see [`math::Tape`]) in `tape`; with `prefetching`, the inputs [`PREFETCH_ROWS`] ahead are
/// prefetched.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn recompute<const V: usize, const FMA: bool, const SYN: bool, F: Compute>(
    job: &BwdJob<F>,
    t: usize,
    m0: usize,
    len: usize,
    coef: &impl PackSource<F, V>,
    [v, i, a]: [&mut [F; BLOCK]; 3],
    [x, x2]: [&mut [F; BLOCK]; 2],
    mut tape: Option<&mut [[F; BLOCK]; 2]>,
    prefetching: bool,
) {
    let row = t * job.m + m0..t * job.m + m0 + len;
    if prefetching {
        prefetch_ahead(job.xs, job.x2, (t, job.t), job.m, (m0, len));
    }
    let x = row_in(&job.xs[row.clone()], x);
    let x2 = match job.x2 {
        Some(d) => row_in(&d[row], x2),
        None => &*x2,
    };
    let pack = GROUPS * V;
    for p in 0..BLOCK / pack {
        let c = &coef.pack(p);
        let r = p * pack..(p + 1) * pack;
        let xp = <P<F, V>>::load(&x[r.clone()]);
        // Without a second drive x2 stays zero, and (i + x) + 0 == i + x.
        let i_jump = if SYN {
            (<P<F, V>>::load(&i[r.clone()]) + xp) + <P<F, V>>::load(&x2[r.clone()])
        } else {
            xp
        };
        let (vp, ap) = (
            <P<F, V>>::load(&v[r.clone()]),
            <P<F, V>>::load(&a[r.clone()]),
        );
        let ((_, vn, an), tp) = math::update_taped::<P<F, V>, FMA>(c, vp, i_jump, ap);
        if let Some(tape) = tape.as_deref_mut() {
            tp.v_dec.store(&mut tape[0][r.clone()]);
            tp.e.store(&mut tape[1][r.clone()]);
        }
        if SYN {
            math::synapse(c, i_jump).store(&mut i[r.clone()]);
        }
        vn.store(&mut v[r.clone()]);
        an.store(&mut a[r]);
    }
}

/// The backward of one block: checkpointed recomputation, then reverse time.
#[inline(always)]
fn bwd_block<const V: usize, const FMA: bool, const SYN: bool, const METHOD: u8, F: Compute>(
    job: &BwdJob<F>,
    m0: usize,
    len: usize,
    stream: bool,
    scratch: &mut Scratch<F>,
    coef: &impl PackSource<F, V>,
) {
    let method = SurrogateMethod::ALL[METHOD as usize];
    let pack = GROUPS * V;
    let alpha = <P<F, V>>::splat(<F as Real>::from_f64(job.alpha));
    let (steps, m) = (job.t, job.m);
    let zero = <F as Real>::ZERO;
    let nseg = steps.div_ceil(SEG).max(1);
    let (mut v, mut i, mut a, mut x) = ([zero; BLOCK], [zero; BLOCK], [zero; BLOCK], [zero; BLOCK]);
    load(&job.v0[m0..m0 + len], &mut v);
    if let Some(i0) = job.i0 {
        load(&i0[m0..m0 + len], &mut i);
    }
    load(&job.a0[m0..m0 + len], &mut a);
    scratch.ckpt.clear();
    scratch.ckpt.push([v, i, a]);
    let mut x2 = [zero; BLOCK];
    let prefetching = std::mem::size_of_val(job.xs) >= PREFETCH_BYTES;
    for t in 0..(nseg - 1) * SEG {
        recompute::<V, FMA, SYN, F>(
            job,
            t,
            m0,
            len,
            coef,
            [&mut v, &mut i, &mut a],
            [&mut x, &mut x2],
            None,
            prefetching,
        );
        if (t + 1) % SEG == 0 {
            scratch.ckpt.push([v, i, a]);
        }
    }
    let (mut gv, mut gi, mut ga, mut gz) =
        ([zero; BLOCK], [zero; BLOCK], [zero; BLOCK], [zero; BLOCK]);
    load(&job.g_last[0][m0..m0 + len], &mut gv);
    if SYN {
        load(&job.g_last[1][m0..m0 + len], &mut gi);
    }
    load(&job.g_last[2][m0..m0 + len], &mut ga);
    let mut gx = [zero; BLOCK];
    for s in (0..nseg).rev() {
        let (t0, t1) = (s * SEG, ((s + 1) * SEG).min(steps));
        [v, i, a] = scratch.ckpt[s];
        scratch.seg.resize(SEG, [[zero; BLOCK]; 2]);
        for t in t0..t1 {
            let tape = &mut scratch.seg[t - t0];
            recompute::<V, FMA, SYN, F>(
                job,
                t,
                m0,
                len,
                coef,
                [&mut v, &mut i, &mut a],
                [&mut x, &mut x2],
                Some(tape),
                prefetching,
            );
        }
        for t in (t0..t1).rev() {
            let row = t * m + m0..t * m + m0 + len;
            if let Some(rec) = &job.g_record {
                let mut g = [zero; BLOCK];
                for (k, acc) in [&mut gv, &mut gi, &mut ga].into_iter().enumerate() {
                    if k == 1 && !SYN {
                        continue;
                    }
                    load(&rec[k][row.clone()], &mut g);
                    for l in 0..BLOCK {
                        acc[l] += g[l];
                    }
                }
            }
            if t + PREFETCH_ROWS < steps && t >= PREFETCH_ROWS {
                let r = (t - PREFETCH_ROWS) * m + m0;
                prefetch(&job.g_spikes[r..r + len]);
            }
            let gz = row_in(&job.g_spikes[row], &mut gz);
            let tape = &scratch.seg[t - t0];
            for p in 0..BLOCK / pack {
                let c = &coef.pack(p);
                let r = p * pack..(p + 1) * pack;
                let tp = math::Tape {
                    v_dec: <P<F, V>>::load(&tape[0][r.clone()]),
                    e: <P<F, V>>::load(&tape[1][r.clone()]),
                };
                let g = math::step_backward::<P<F, V>, FMA>(
                    c,
                    method,
                    alpha,
                    tp,
                    [
                        <P<F, V>>::load(&gz[r.clone()]),
                        <P<F, V>>::load(&gv[r.clone()]),
                        <P<F, V>>::load(&gi[r.clone()]),
                        <P<F, V>>::load(&ga[r.clone()]),
                    ],
                );
                g.i_jump.store(&mut gx[r.clone()]);
                g.v.store(&mut gv[r.clone()]);
                g.a.store(&mut ga[r.clone()]);
                if SYN {
                    g.i_jump.store(&mut gi[r]);
                }
            }
            // SAFETY: `segment` checks the bounds.
            unsafe { put(job.g_xs.segment(t, m0, len), len, &gx, stream) };
        }
    }
    for (r, vals) in job.g0.iter().zip([&gv, &gi, &ga]) {
        if let Some(r) = r {
            // SAFETY: `segment` checks the bounds.
            unsafe { put(r.segment(0, m0, len), len, vals, false) };
        }
    }
}

#[inline(always)]
fn bwd_blocks<const V: usize, const FMA: bool, const SYN: bool, const METHOD: u8, F: Compute>(
    job: &BwdJob<F>,
    blocks: Blocks,
    range: Range<usize>,
    stream: bool,
) {
    let mut scratch = Scratch {
        ckpt: Vec::with_capacity(job.t.div_ceil(SEG) + 1),
        seg: Vec::with_capacity(SEG),
    };
    for k in range {
        let (m0, len) = blocks.get(k);
        match job.coefs {
            Coefs::Scalar(c) => {
                bwd_block::<V, FMA, SYN, METHOD, F>(job, m0, len, stream, &mut scratch, c)
            }
            per_neuron => {
                let packs = per_neuron.block(m0, len).packs::<V>();
                bwd_block::<V, FMA, SYN, METHOD, F>(job, m0, len, stream, &mut scratch, &packs)
            }
        }
    }
    if stream {
        stream_fence();
    }
}

/// Runs `f` over `nblocks` block indices, split across the worker pool ([`super::pool`]) when
/// `work` is large.
fn parallel(nblocks: usize, work: usize, f: impl Fn(Range<usize>) + Sync) {
    let threads = threads_for(work, nblocks);
    if threads <= 1 {
        f(0..nblocks);
        return;
    }
    let chunk = nblocks.div_ceil(threads);
    super::pool::run(threads, &|k| {
        let r = (k * chunk).min(nblocks)..((k + 1) * chunk).min(nblocks);
        if !r.is_empty() {
            f(r);
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn fwd_avx512<const SYN: bool, const X2: bool, E: Elem, O: Elem>(
        job: &FwdJob<E, O>,
        blocks: Blocks,
        range: Range<usize>,
        stream: bool,
    ) {
        fwd_blocks::<VEC_AVX512, true, SYN, X2, E, O>(job, blocks, range, stream)
    }

    #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn fwd_avx2<const SYN: bool, const X2: bool, E: Elem, O: Elem>(
        job: &FwdJob<E, O>,
        blocks: Blocks,
        range: Range<usize>,
        stream: bool,
    ) {
        fwd_blocks::<VEC_AVX2, true, SYN, X2, E, O>(job, blocks, range, stream)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn bwd_avx512<const SYN: bool, const METHOD: u8, F: Compute>(
        job: &BwdJob<F>,
        blocks: Blocks,
        range: Range<usize>,
        stream: bool,
    ) {
        bwd_blocks::<VEC_AVX512, true, SYN, METHOD, F>(job, blocks, range, stream)
    }

    #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn bwd_avx2<const SYN: bool, const METHOD: u8, F: Compute>(
        job: &BwdJob<F>,
        blocks: Blocks,
        range: Range<usize>,
        stream: bool,
    ) {
        bwd_blocks::<VEC_AVX2_BWD, true, SYN, METHOD, F>(job, blocks, range, stream)
    }
}

/// FMA in the portable path: always on aarch64 (NEON has it), never on baseline x86-64 (it
/// would be a libm call per element).
const PORTABLE_FMA: bool = cfg!(target_arch = "aarch64");

fn fwd_dispatch<const SYN: bool, const X2: bool, E: Elem, O: Elem>(
    isa: Isa,
    job: &FwdJob<E, O>,
    blocks: Blocks,
    range: Range<usize>,
    stream: bool,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` comes from `Isa::current`, which only yields detected paths.
        Isa::Avx512 => unsafe { x86::fwd_avx512::<SYN, X2, E, O>(job, blocks, range, stream) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::fwd_avx2::<SYN, X2, E, O>(job, blocks, range, stream) },
        _ => fwd_blocks::<VEC_PORTABLE, PORTABLE_FMA, SYN, X2, E, O>(job, blocks, range, stream),
    }
}

/// Runs a forward sequence job.
pub(crate) fn forward<E: Elem, O: Elem>(job: &FwdJob<E, O>) {
    if job.m == 0 {
        return;
    }
    let (stream, blocks) = Blocks::for_output(&job.spikes, job.t);
    let isa = Isa::current();
    let syn = job.i0.is_some();
    let x2 = job.x2.is_some();
    assert!(syn || !x2, "a second drive needs the synaptic current");
    parallel(blocks.count(), job.t * job.m, |range| match (syn, x2) {
        (true, true) => fwd_dispatch::<true, true, E, O>(isa, job, blocks, range, stream),
        (true, false) => fwd_dispatch::<true, false, E, O>(isa, job, blocks, range, stream),
        _ => fwd_dispatch::<false, false, E, O>(isa, job, blocks, range, stream),
    });
}

fn bwd_dispatch<const SYN: bool, const METHOD: u8, F: Compute>(
    isa: Isa,
    job: &BwdJob<F>,
    blocks: Blocks,
    range: Range<usize>,
    stream: bool,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` comes from `Isa::current`, which only yields detected paths.
        Isa::Avx512 => unsafe { x86::bwd_avx512::<SYN, METHOD, F>(job, blocks, range, stream) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::bwd_avx2::<SYN, METHOD, F>(job, blocks, range, stream) },
        _ => bwd_blocks::<VEC_PORTABLE, PORTABLE_FMA, SYN, METHOD, F>(job, blocks, range, stream),
    }
}

fn bwd_method<const SYN: bool, F: Compute>(
    isa: Isa,
    job: &BwdJob<F>,
    blocks: Blocks,
    range: Range<usize>,
    stream: bool,
) {
    match job.method {
        SurrogateMethod::Super => bwd_dispatch::<SYN, 0, F>(isa, job, blocks, range, stream),
        SurrogateMethod::Triangle => bwd_dispatch::<SYN, 1, F>(isa, job, blocks, range, stream),
        SurrogateMethod::Tanh => bwd_dispatch::<SYN, 2, F>(isa, job, blocks, range, stream),
        SurrogateMethod::Circ => bwd_dispatch::<SYN, 3, F>(isa, job, blocks, range, stream),
        SurrogateMethod::HeaviErfc => bwd_dispatch::<SYN, 4, F>(isa, job, blocks, range, stream),
        SurrogateMethod::Heaviside => bwd_dispatch::<SYN, 5, F>(isa, job, blocks, range, stream),
    }
}

/// Runs a backward sequence job.
pub(crate) fn backward<F: Compute>(job: &BwdJob<F>) {
    if job.m == 0 {
        return;
    }
    let (stream, blocks) = Blocks::for_output(&job.g_xs, job.t);
    let isa = Isa::current();
    let syn = job.i0.is_some();
    // The backward does about three forward passes' work per neuron-step.
    parallel(blocks.count(), 3 * job.t * job.m, |range| {
        if syn {
            bwd_method::<true, F>(isa, job, blocks, range.clone(), stream)
        } else {
            bwd_method::<false, F>(isa, job, blocks, range.clone(), stream)
        }
    });
}
