//! Layer 5c: the fused CPU kernels: instruction-set dispatch, threads, and the calls' jobs.
//!
//! # Design (measurements in `docs/PERFORMANCE.md`)
//! - Neurons are processed in blocks of [`BLOCK`] lanes; for each block the time loop is the
//!   outer loop and the lanes the inner one (`forward.rs`, `backward.rs`), so the state stays in
//!   L1 across all `T` steps and each step offers the core independent dependency chains.
//! - The lane loop body is `fused/math.rs` (one scalar definition of the update), which LLVM
//!   vectorizes in whichever instruction-set context the block loop is instantiated in:
//!   AVX-512 (`avx512f/bw/vl/dq` + FMA + F16C), AVX2 + FMA + F16C, or the portable baseline
//!   (SSE2 on x86-64, NEON on aarch64). The choice is made at run time ([`Isa::detected`]);
//!   [`with_isa`] forces a path (tests run every path this CPU has).
//! - One kernel per instruction set and compute precision (f32, f64): storage dtypes, u8
//!   spikes, the encoder, a second drive, recording, per-neuron parameters and the surrogate
//!   method are run-time values (`views.rs`, `coefs.rs`), so the crate compiles 12 kernels, not
//!   hundreds.
//! - Inputs a few rows ahead are prefetched; large outputs are written with streaming stores,
//!   with block boundaries shifted so that a block's row segment starts on a cache line
//!   (`mem.rs`). Calls from `PARALLEL_WORK` neuron-steps up split the blocks across the worker
//!   pool of `fused::pool`.

// Index loops over fixed-size lane arrays are the form the vectorizer handles best here
// (iterator adaptors with closures were measured not to inline into the SIMD contexts).
#![allow(clippy::needless_range_loop)]

mod backward;
mod coefs;
mod forward;
mod mem;
mod views;

pub(crate) use backward::BwdJob;
pub use backward::SEG;
pub(crate) use coefs::Coefs;
pub(crate) use mem::copy_streaming;
pub(crate) use views::{Erase, Init, Rows};

use super::elem::{Compute, Elem};
use super::math::{Multi, Pack};
use forward::Fwd;
use std::cell::Cell;
use std::ops::Range;
use views::Native;

/// Lanes per block: 8 AVX-512 vectors of f32 (16 AVX2 vectors).
pub const BLOCK: usize = 128;
/// Vector groups evaluated side by side, operation by operation (nested, so that every loop
/// over groups is short enough to be unrolled rather than vectorized across groups). The
/// update is one long dependency chain, so the groups are the parallelism the core gets.
const GROUPS: usize = 4;
/// The lanes of one vector group, per instruction-set path: one AVX-512 register of f32 (16),
/// one 256-bit register on AVX2 (8; 16 spills too much of AVX2's 16 registers).
const VEC_AVX512: usize = 16;
const VEC_AVX2: usize = 8;
/// The AVX2 forward runs two 8-lane groups per pack: with the membrane's short chain, four
/// spill more of AVX2's 16 registers than their extra independent work pays for.
const GROUPS_AVX2_FWD: usize = 2;
/// The AVX-512 backward runs one 32-lane group (two registers) per pack: it holds more values
/// per lane than the forward, and four 16-lane groups measured slower (docs/PERFORMANCE.md).
const VEC_AVX512_BWD: usize = 32;
const GROUPS_AVX512_BWD: usize = 1;
/// The AVX2 backward keeps 16-lane groups (8 measured slower there).
const VEC_AVX2_BWD: usize = 16;
const GROUPS_AVX2_BWD: usize = 2;
/// The portable path's groups (SSE2 / NEON).
const VEC_PORTABLE: usize = 16;
/// A pack of compute lanes: `GROUPS` groups of `V` lanes.
type P<F, const V: usize, const G: usize> = Multi<Pack<F, V>, G>;
/// Neuron-steps below which a call runs on one thread (about 10 µs of work: below it, handing
/// work to a pool worker costs more than it saves).
const PARALLEL_WORK: usize = 1 << 15;

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

/// How the columns `0..M` are cut into blocks: an optional short head (so that the later blocks
/// start on a cache line of the streamed output), then blocks of `BLOCK`.
#[derive(Clone, Copy)]
struct Blocks {
    m: usize,
    head: usize,
}

impl Blocks {
    /// Whether a `[t, M]` output is large enough to be streamed, and the blocks for it: when
    /// streaming, the block boundaries are shifted so that blocks start on a cache line of the
    /// output rows (only possible when every row has the same alignment).
    fn for_output((addr, m, size): (usize, usize, usize), t: usize) -> (bool, Self) {
        let stream = t.saturating_mul(m).saturating_mul(size) >= mem::STREAM_BYTES;
        let head = if stream && (m * size) % 64 == 0 && addr % size == 0 {
            ((64 - addr % 64) % 64) / size
        } else {
            0
        };
        (
            stream,
            Blocks {
                m,
                head: head.min(m),
            },
        )
    }
    fn count(&self) -> usize {
        (self.head > 0) as usize + (self.m - self.head).div_ceil(BLOCK)
    }
    /// Block `k` as `(first column, lanes)`.
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

/// The kernels, one per instruction set and compute precision: the generic block loops
/// compiled with each path's target features.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn fwd_avx512<F: Native>(job: &Fwd<F>, b: Blocks, r: Range<usize>, s: bool) {
        forward::fwd_blocks::<VEC_AVX512, GROUPS, true, true, F>(job, b, r, s)
    }

    #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn fwd_avx2<F: Native>(job: &Fwd<F>, b: Blocks, r: Range<usize>, s: bool) {
        forward::fwd_blocks::<VEC_AVX2, GROUPS_AVX2_FWD, true, true, F>(job, b, r, s)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn bwd_avx512<F: Compute>(
        job: &BwdJob<F>,
        b: Blocks,
        r: Range<usize>,
        s: bool,
    ) {
        backward::bwd_blocks::<VEC_AVX512_BWD, GROUPS_AVX512_BWD, true, true, F>(job, b, r, s)
    }

    #[target_feature(enable = "avx2,fma,f16c,bmi1,bmi2")]
    pub(super) unsafe fn bwd_avx2<F: Compute>(
        job: &BwdJob<F>,
        b: Blocks,
        r: Range<usize>,
        s: bool,
    ) {
        backward::bwd_blocks::<VEC_AVX2_BWD, GROUPS_AVX2_BWD, true, true, F>(job, b, r, s)
    }
}

/// FMA in the portable path: always on aarch64 (NEON has it), never on baseline x86-64 (it
/// would be a libm call per element).
const PORTABLE_FMA: bool = cfg!(target_arch = "aarch64");

/// A forward sequence call: `T` steps of `M` neurons (`[T, M]` row-major data), storage `E`,
/// spikes `O` (`E` or `u8`).
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

/// Runs a forward sequence job.
pub(crate) fn forward<E: Elem, O: Elem>(job: FwdJob<E, O>) {
    assert!(
        job.i0.is_some() || job.x2.is_none(),
        "a second drive needs the synaptic current"
    );
    fn rows<E: Elem>(r: Option<Rows<'_, E>>) -> Option<views::AnyRows<'_>> {
        r.map(E::rows)
    }
    let [lv, li, la] = job.last;
    let erased = Fwd {
        t: job.t,
        m: job.m,
        xs: E::slice(job.xs),
        x2: job.x2.map(E::slice),
        v0: E::init(job.v0),
        i0: job.i0.map(E::init),
        a0: E::init(job.a0),
        spikes: O::rows(job.spikes),
        last: [rows(lv), rows(li), rows(la)],
        record: job.record.map(|[v, i, a]| [rows(v), rows(i), rows(a)]),
        coefs: job.coefs,
    };
    forward_erased(&erased);
}

fn forward_erased<F: Native>(job: &Fwd<F>) {
    if job.m == 0 {
        return;
    }
    let (stream, blocks) = Blocks::for_output(job.spikes.geometry(), job.t);
    let isa = Isa::current();
    parallel(blocks.count(), job.t * job.m, |range| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` comes from `Isa::current`, which only yields detected paths.
        Isa::Avx512 => unsafe { x86::fwd_avx512(job, blocks, range, stream) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::fwd_avx2(job, blocks, range, stream) },
        _ => forward::fwd_blocks::<VEC_PORTABLE, GROUPS, PORTABLE_FMA, false, F>(
            job, blocks, range, stream,
        ),
    });
}

/// Runs a backward sequence job.
pub(crate) fn backward<F: Compute>(job: &BwdJob<F>) {
    if job.m == 0 {
        return;
    }
    let (stream, blocks) =
        Blocks::for_output((job.g_xs.addr(), job.m, std::mem::size_of::<F>()), job.t);
    let isa = Isa::current();
    // The backward does about three forward passes' work per neuron-step.
    parallel(blocks.count(), 3 * job.t * job.m, |range| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa` comes from `Isa::current`, which only yields detected paths.
        Isa::Avx512 => unsafe { x86::bwd_avx512(job, blocks, range, stream) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { x86::bwd_avx2(job, blocks, range, stream) },
        _ => backward::bwd_blocks::<VEC_PORTABLE, GROUPS, PORTABLE_FMA, false, F>(
            job, blocks, range, stream,
        ),
    });
}
