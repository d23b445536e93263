//! Layer 5c (CPU kernels): the forward time loop of one block of lanes.
//!
//! For each block the time loop is the outer loop and the lanes the inner one, so the state
//! stays in the block's lane arrays (L1) across all `T` steps. The per-call choices (encoder or
//! synaptic current, a second drive, recording, storage dtypes, per-neuron parameters) are
//! run-time values tested outside the lane arithmetic, so one kernel serves them all.

use super::super::math;
use super::coefs::{BlockCoef, Coefs, PackSource};
use super::mem::{load_init, prefetch_ahead, put_row, row_in, stream_fence, PREFETCH_BYTES};
use super::views::{AnyInit, AnyRows, AnySlice, Native};
use super::{Blocks, LoadStore, BLOCK, P};
use std::ops::Range;

/// A forward sequence call with its buffers dtype-erased: `T` steps of `M` neurons (`[T, M]`
/// row-major data), computed in `F`.
pub(super) struct Fwd<'a, F> {
    pub t: usize,
    pub m: usize,
    pub xs: AnySlice<'a>,
    pub x2: Option<AnySlice<'a>>,
    pub v0: AnyInit<'a>,
    pub i0: Option<AnyInit<'a>>,
    pub a0: AnyInit<'a>,
    pub spikes: AnyRows<'a>,
    pub last: [Option<AnyRows<'a>>; 3],
    pub record: Option<[Option<AnyRows<'a>>; 3]>,
    pub coefs: &'a Coefs<F>,
}

/// The forward time loop of one block of lanes `m0..m0+len`.
#[inline(always)]
fn fwd_block<const V: usize, const G: usize, const FMA: bool, const DRIVE: u8, F: Native>(
    job: &Fwd<F>,
    (m0, len): (usize, usize),
    stream: bool,
    coef: &impl PackSource<F, V, G>,
) {
    let pack = G * V;
    let m = job.m;
    let zero = F::ZERO;
    let (mut v, mut i, mut a) = ([zero; BLOCK], [zero; BLOCK], [zero; BLOCK]);
    // The initial state first: it may alias the final state stored at the end.
    load_init(&job.v0, (m0, len), &mut v);
    if let Some(i0) = &job.i0 {
        load_init(i0, (m0, len), &mut i);
    }
    load_init(&job.a0, (m0, len), &mut a);
    // DRIVE: 0 the encoder (no synaptic current), 1 one drive, 2 a second drive, RUNTIME
    // whichever the job has.
    let syn = if DRIVE == RUNTIME {
        job.i0.is_some()
    } else {
        DRIVE > 0
    };
    let two = if DRIVE == RUNTIME {
        job.x2.is_some()
    } else {
        DRIVE == 2
    };
    let (mut x, mut x2, mut z) = ([zero; BLOCK], [zero; BLOCK], [zero; BLOCK]);
    let prefetching = job.xs.bytes() >= PREFETCH_BYTES;
    // Spikes in the compute precision go straight into a full block's row (unless streamed).
    let direct = F::native_rows(&job.spikes).filter(|_| len == BLOCK && !stream);
    for t in 0..job.t {
        let row = t * m + m0..t * m + m0 + len;
        if prefetching {
            prefetch_ahead(&job.xs, (t, job.t), m, (m0, len));
            if let Some(d) = &job.x2 {
                prefetch_ahead(d, (t, job.t), m, (m0, len));
            }
        }
        let in_place = len == BLOCK && !stream;
        let xr = row_in(&job.xs, row.clone(), &mut x, in_place);
        let x2r = job
            .x2
            .as_ref()
            .filter(|_| two)
            .map(|d| row_in(d, row, &mut x2, in_place));
        let zs: &mut [F] = match direct {
            // SAFETY: the block's columns belong to this thread; the segment is dropped at the
            // end of this step.
            Some(rows) => unsafe { rows.segment(t, m0, len) },
            None => &mut z,
        };
        for p in 0..BLOCK / pack {
            let c = &*coef.pack(p);
            let r = p * pack..(p + 1) * pack;
            let xp = <P<F, V, G>>::load(&xr[r.clone()]);
            let i_jump = if syn {
                let j = <P<F, V, G>>::load(&i[r.clone()]) + xp;
                match x2r {
                    Some(x2) if two => j + <P<F, V, G>>::load(&x2[r.clone()]),
                    _ => j,
                }
            } else {
                xp
            };
            let (zp, vp, ap) = math::update::<P<F, V, G>, FMA>(
                c,
                <P<F, V, G>>::load(&v[r.clone()]),
                i_jump,
                <P<F, V, G>>::load(&a[r.clone()]),
            );
            zp.store(&mut zs[r.clone()]);
            vp.store(&mut v[r.clone()]);
            ap.store(&mut a[r.clone()]);
            if syn {
                math::synapse(c, i_jump).store(&mut i[r]);
            }
        }
        if direct.is_none() {
            put_row::<_, true>(&job.spikes, t, (m0, len), &z, stream);
        }
        if let Some(rec) = &job.record {
            for (r, vals) in rec.iter().zip([&v, &i, &a]) {
                if let Some(r) = r {
                    put_row::<_, false>(r, t, (m0, len), vals, stream);
                }
            }
        }
    }
    for (r, vals) in job.last.iter().zip([&v, &i, &a]) {
        if let Some(r) = r {
            put_row::<_, false>(r, 0, (m0, len), vals, false);
        }
    }
}

/// The `DRIVE` of a loop that reads the drive kind from its job.
const RUNTIME: u8 = 3;

/// The blocks `range` of a forward call, in order, on this thread. With `SPLIT`, each drive
/// kind and scalar parameters get their own copy of the loop (run-time branches per pack
/// measured 10-20 % slower on AVX2), for f32 only (`Real::SPLIT_LOOPS`); without it (the
/// portable path, and f64) one loop serves all.
#[inline(always)]
pub(super) fn fwd_blocks<
    const V: usize,
    const G: usize,
    const FMA: bool,
    const SPLIT: bool,
    F: Native,
>(
    job: &Fwd<F>,
    blocks: Blocks,
    range: Range<usize>,
    stream: bool,
) {
    let drive = match (job.i0.is_some(), job.x2.is_some()) {
        (false, _) => 0,
        (true, false) => 1,
        (true, true) => 2,
    };
    let split = SPLIT && F::SPLIT_LOOPS;
    // With `split`, scalar parameters are splatted at each use, not read from packs.
    let mut coef = BlockCoef::<F, V, G>::for_call(job.coefs, !split);
    for k in range {
        let block = blocks.get(k);
        coef.set_block(job.coefs, block);
        match (split, job.coefs, drive) {
            (false, ..) => fwd_block::<V, G, FMA, RUNTIME, F>(job, block, stream, &coef),
            (true, Coefs::Scalar(c), 0) => fwd_block::<V, G, FMA, 0, F>(job, block, stream, c),
            (true, Coefs::Scalar(c), 1) => fwd_block::<V, G, FMA, 1, F>(job, block, stream, c),
            (true, Coefs::Scalar(c), _) => fwd_block::<V, G, FMA, 2, F>(job, block, stream, c),
            (true, _, 0) => fwd_block::<V, G, FMA, 0, F>(job, block, stream, &coef),
            (true, _, 1) => fwd_block::<V, G, FMA, 1, F>(job, block, stream, &coef),
            (true, ..) => fwd_block::<V, G, FMA, 2, F>(job, block, stream, &coef),
        }
    }
    if stream {
        stream_fence();
    }
}
