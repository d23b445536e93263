//! Layer 5c (CPU kernels): the sequence backward of one block of lanes.
//!
//! The backward **recomputes** the forward instead of storing it: the forward pass with
//! gradients writes exactly what inference writes, and the backward walks each block through
//! time again, keeping checkpoints of the state every [`SEG`] steps and the tapes of one segment
//! at a time (the two values per step that the step's backward needs, [`math::Tape`]) in a
//! per-thread buffer (128 KB, L2-resident), then runs the reverse time loop over that segment.
//! Memory traffic is the inputs and gradients once more instead of three state trajectories
//! written and read back; the reverse step reads the exponential from the tape instead of
//! evaluating it again. The surrogate method and the encoder/synaptic choice are run-time
//! values (a branch per pack), so one kernel serves them all.

use super::super::elem::Compute;
use super::super::math::{self, Lanes, Real};
use super::coefs::{BlockCoef, Coefs, PackSource};
use super::mem::{
    load, prefetch, put_native, row_native, stream_fence, PREFETCH_BYTES, PREFETCH_ROWS,
};
use super::views::Rows;
use super::{Blocks, LoadStore, BLOCK, P};
use crate::surrogate::SurrogateMethod;
use std::ops::Range;

/// Steps per recomputation segment of the backward pass.
pub const SEG: usize = 128;

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
fn recompute<const V: usize, const G: usize, const FMA: bool, const SYN: u8, F: Compute>(
    job: &BwdJob<F>,
    t: usize,
    (m0, len): (usize, usize),
    coef: &impl PackSource<F, V, G>,
    [v, i, a]: [&mut [F; BLOCK]; 3],
    [x, x2]: [&mut [F; BLOCK]; 2],
    mut tape: Option<&mut [[F; BLOCK]; 2]>,
    prefetching: bool,
) {
    let row = t * job.m + m0..t * job.m + m0 + len;
    if prefetching && t + PREFETCH_ROWS < job.t {
        let r = row.start + PREFETCH_ROWS * job.m..row.end + PREFETCH_ROWS * job.m;
        prefetch(&job.xs[r.clone()]);
        if let Some(d) = job.x2 {
            prefetch(&d[r]);
        }
    }
    let x = row_native(&job.xs[row.clone()], x);
    let x2 = match job.x2 {
        Some(d) => row_native(&d[row], x2),
        None => &*x2,
    };
    let syn = if SYN == RUNTIME {
        job.i0.is_some()
    } else {
        SYN == 1
    };
    let pack = G * V;
    for p in 0..BLOCK / pack {
        let c = &*coef.pack(p);
        let r = p * pack..(p + 1) * pack;
        let xp = <P<F, V, G>>::load(&x[r.clone()]);
        // Without a second drive x2 stays zero, and (i + x) + 0 == i + x.
        let i_jump = if syn {
            (<P<F, V, G>>::load(&i[r.clone()]) + xp) + <P<F, V, G>>::load(&x2[r.clone()])
        } else {
            xp
        };
        let (vp, ap) = (
            <P<F, V, G>>::load(&v[r.clone()]),
            <P<F, V, G>>::load(&a[r.clone()]),
        );
        let ((_, vn, an), tp) = math::update_taped::<P<F, V, G>, FMA>(c, vp, i_jump, ap);
        if let Some(tape) = tape.as_deref_mut() {
            tp.v_dec.store(&mut tape[0][r.clone()]);
            tp.e.store(&mut tape[1][r.clone()]);
        }
        if syn {
            math::synapse(c, i_jump).store(&mut i[r.clone()]);
        }
        vn.store(&mut v[r.clone()]);
        an.store(&mut a[r]);
    }
}

/// The backward of one block: checkpointed recomputation, then reverse time.
#[inline(always)]
fn bwd_block<const V: usize, const G: usize, const FMA: bool, const SYN: u8, F: Compute>(
    job: &BwdJob<F>,
    (m0, len): (usize, usize),
    stream: bool,
    scratch: &mut Scratch<F>,
    coef: &impl PackSource<F, V, G>,
) {
    let block = (m0, len);
    let pack = G * V;
    let alpha = <P<F, V, G>>::splat(<F as Real>::from_f64(job.alpha));
    let (steps, m) = (job.t, job.m);
    let syn = if SYN == RUNTIME {
        job.i0.is_some()
    } else {
        SYN == 1
    };
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
        recompute::<V, G, FMA, SYN, F>(
            job,
            t,
            block,
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
    if syn {
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
            recompute::<V, G, FMA, SYN, F>(
                job,
                t,
                block,
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
                    if k == 1 && !syn {
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
            let gz = row_native(&job.g_spikes[row], &mut gz);
            let tape = &scratch.seg[t - t0];
            for p in 0..BLOCK / pack {
                let c = &*coef.pack(p);
                let r = p * pack..(p + 1) * pack;
                let tp = math::Tape {
                    v_dec: <P<F, V, G>>::load(&tape[0][r.clone()]),
                    e: <P<F, V, G>>::load(&tape[1][r.clone()]),
                };
                let g = math::step_backward::<P<F, V, G>, FMA>(
                    c,
                    job.method,
                    alpha,
                    tp,
                    [
                        <P<F, V, G>>::load(&gz[r.clone()]),
                        <P<F, V, G>>::load(&gv[r.clone()]),
                        <P<F, V, G>>::load(&gi[r.clone()]),
                        <P<F, V, G>>::load(&ga[r.clone()]),
                    ],
                );
                g.i_jump.store(&mut gx[r.clone()]);
                g.v.store(&mut gv[r.clone()]);
                g.a.store(&mut ga[r.clone()]);
                if syn {
                    g.i_jump.store(&mut gi[r]);
                }
            }
            put_native(&job.g_xs, t, block, &gx, stream);
        }
    }
    for (r, vals) in job.g0.iter().zip([&gv, &gi, &ga]) {
        if let Some(r) = r {
            put_native(r, 0, block, vals, false);
        }
    }
}

/// The `SYN` of a loop that reads from its job whether there is a synaptic current.
const RUNTIME: u8 = 2;

/// The blocks `range` of a backward call, in order, on this thread; `SPLIT` as in the forward.
#[inline(always)]
pub(super) fn bwd_blocks<
    const V: usize,
    const G: usize,
    const FMA: bool,
    const SPLIT: bool,
    F: Compute,
>(
    job: &BwdJob<F>,
    blocks: Blocks,
    range: Range<usize>,
    stream: bool,
) {
    let mut scratch = Scratch {
        ckpt: Vec::with_capacity(job.t.div_ceil(SEG) + 1),
        seg: Vec::with_capacity(SEG),
    };
    // With SPLIT (f32 only), the encoder and the feed-forward neuron have their own loops
    // (as run-time branches per pack they cost 10-20 % on AVX2). Scalar parameters are
    // splatted into the lane packs: unlike the forward, the backward measured no faster with a
    // loop for them.
    let mut coef = BlockCoef::<F, V, G>::for_call(job.coefs, true);
    let syn = job.i0.is_some();
    for k in range {
        let block = blocks.get(k);
        coef.set_block(job.coefs, block);
        let s = &mut scratch;
        match (SPLIT && F::SPLIT_LOOPS, syn) {
            (false, _) => bwd_block::<V, G, FMA, RUNTIME, F>(job, block, stream, s, &coef),
            (true, true) => bwd_block::<V, G, FMA, 1, F>(job, block, stream, s, &coef),
            (true, false) => bwd_block::<V, G, FMA, 0, F>(job, block, stream, s, &coef),
        }
    }
    if stream {
        stream_fence();
    }
}
