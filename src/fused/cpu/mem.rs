//! Layer 5c (CPU kernels): moving a block's row segments between the call's buffers and the
//! kernels' lane arrays: conversions, prefetch and streaming stores.

use super::super::elem::Elem;
use super::super::math::Real;
use super::views::{with_any, AnyInit, AnyRows, AnySlice, Native, Rows};
use super::BLOCK;
use std::ops::Range;

/// How many rows ahead the input is prefetched.
pub(super) const PREFETCH_ROWS: usize = 6;
/// Inputs at least this large are prefetched (smaller ones stay in cache between calls).
pub(super) const PREFETCH_BYTES: usize = 8 << 20;
/// Outputs at least this large are written with streaming stores.
pub(super) const STREAM_BYTES: usize = 16 << 20;

/// `x` in the compute precision `F` (exact: `E::F` is `F` wherever a call reaches this).
#[inline(always)]
fn conv<E: Elem, F: Real>(x: E) -> F {
    F::from_f64(x.to_f().to_f64())
}

/// Whether storage `E` can meet compute precision `F` in a call (f32, f16, bf16 and u8 with
/// f32; f64 and u8 with f64). The erased views' other arms are never taken: this constant lets
/// LLVM drop their code.
#[inline(always)]
fn reachable<E: Elem, F: Real>() -> bool {
    std::mem::size_of::<E::F>() == std::mem::size_of::<F>() || std::mem::size_of::<E>() == 1
}

/// Converts a row segment into a block buffer, padding with zeros.
#[inline(always)]
pub(super) fn load<E: Elem, F: Real>(src: &[E], dst: &mut [F; BLOCK]) {
    if !reachable::<E, F>() {
        unreachable!("no kernel call pairs these dtypes");
    }
    if src.len() == BLOCK {
        for l in 0..BLOCK {
            dst[l] = conv(src[l]);
        }
    } else {
        for l in 0..BLOCK {
            dst[l] = if l < src.len() { conv(src[l]) } else { F::ZERO };
        }
    }
}

/// A block's initial-state segment `m0..m0+len` into `dst`.
#[inline(always)]
pub(super) fn load_init<F: Real>(src: &AnyInit, (m0, len): (usize, usize), dst: &mut [F; BLOCK]) {
    with_any!(src, AnyInit, |s| load(s.segment(m0, len), dst))
}

/// A block's row segment of an input as `BLOCK` lanes: with `in_place`, the row itself where it
/// is a full block in the compute precision, else converted into `buf` and zero-padded.
///
/// Rows streamed from DRAM are better copied: the copy loop keeps many misses in flight, while
/// the lane loop, read in place, would wait on each.
#[inline(always)]
pub(super) fn row_in<'s, F: Native>(
    src: &AnySlice<'s>,
    row: Range<usize>,
    buf: &'s mut [F; BLOCK],
    in_place: bool,
) -> &'s [F; BLOCK] {
    if let Some(full) = F::native(src)
        .filter(|_| in_place)
        .and_then(|s| <&[F; BLOCK]>::try_from(&s[row.clone()]).ok())
    {
        return full;
    }
    with_any!(src, AnySlice, |s| load(&s[row], buf));
    buf
}

/// A compute-precision row segment read in place for a full block, else copied into `buf`.
#[inline(always)]
pub(super) fn row_native<'s, F: Real + Elem>(
    src: &'s [F],
    buf: &'s mut [F; BLOCK],
) -> &'s [F; BLOCK] {
    match src.try_into() {
        Ok(full) => full,
        Err(_) => {
            load(src, buf);
            buf
        }
    }
}

/// Writes the first `dst.len()` lanes of `vals` to `dst` as `O`, streaming when asked and
/// possible (a full, 16-byte aligned block). `SPIKES`: the values are 0 or 1, stored as a
/// select of the two converted constants instead of a rounding conversion per lane.
#[inline(always)]
fn put<F: Real, O: Elem, const SPIKES: bool>(dst: &mut [O], vals: &[F; BLOCK], stream: bool) {
    if !reachable::<O, F>() {
        unreachable!("no kernel call pairs these dtypes");
    }
    let one = O::from_f(<O::F as Real>::ONE);
    let out = |x: F| {
        if SPIKES {
            if x > F::ZERO {
                one
            } else {
                O::NIL
            }
        } else {
            O::from_f(<O::F as Real>::from_f64(x.to_f64()))
        }
    };
    if stream && dst.len() == BLOCK && (dst.as_ptr() as usize).is_multiple_of(16) {
        let mut buf = [O::NIL; BLOCK];
        for l in 0..BLOCK {
            buf[l] = out(vals[l]);
        }
        stream_copy(dst, &buf);
    } else {
        for (d, v) in dst.iter_mut().zip(vals) {
            *d = out(*v);
        }
    }
}

/// Writes a block's lanes into row `t`, columns `m0..m0+len`, of an output of any dtype;
/// `SPIKES` as in [`put`].
#[inline(always)]
pub(super) fn put_row<F: Real, const SPIKES: bool>(
    out: &AnyRows,
    t: usize,
    (m0, len): (usize, usize),
    vals: &[F; BLOCK],
    stream: bool,
) {
    // SAFETY: the block's columns belong to this thread; the segment is dropped at once.
    with_any!(out, AnyRows, |r| put::<_, _, SPIKES>(
        unsafe { r.segment(t, m0, len) },
        vals,
        stream
    ))
}

/// [`put_row`] for an output in the compute precision.
#[inline(always)]
pub(super) fn put_native<F: Real + Elem>(
    out: &Rows<F>,
    t: usize,
    (m0, len): (usize, usize),
    vals: &[F; BLOCK],
    stream: bool,
) {
    // SAFETY: as in `put_row`.
    put::<_, _, false>(unsafe { out.segment(t, m0, len) }, vals, stream)
}

/// Copies `src` into the 16-byte aligned `dst` with non-temporal stores.
#[inline(always)]
fn stream_copy<O>(dst: &mut [O], src: &[O; BLOCK]) {
    let bytes = std::mem::size_of_val(src);
    debug_assert!(
        dst.len() == BLOCK
            && bytes.is_multiple_of(16)
            && (dst.as_ptr() as usize).is_multiple_of(16)
    );
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let (d, s) = (dst.as_mut_ptr() as *mut u8, src.as_ptr() as *const u8);
        let mut k = 0;
        while k + 16 <= bytes {
            // SAFETY: both buffers hold `bytes` bytes (`BLOCK` elements), `dst` is 16-byte
            // aligned (checked by the caller), and SSE2 is part of every x86-64 CPU.
            unsafe {
                _mm_stream_si128(
                    d.add(k) as *mut __m128i,
                    _mm_loadu_si128(s.add(k) as *const __m128i),
                )
            };
            k += 16;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst.copy_from_slice(src);
}

/// Orders this thread's streaming stores before whatever follows (the join).
pub(super) fn stream_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` is part of SSE, which every x86-64 CPU has.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

/// Hints that `bytes` from `p` will be read soon, as non-temporal data (`prefetchnta`).
///
/// The kernels walk `[T, M]` rows a block at a time, a pattern the hardware prefetchers do not
/// follow, so these hints carry the DRAM traffic. Each input line is read once (twice in the
/// backward, within a segment), so it is fetched without displacing the cache's resident data;
/// `prefetcht1` (into L2) measured up to 2x slower with u8 spikes (docs/PERFORMANCE.md).
#[inline(always)]
pub(super) fn prefetch<T>(p: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_NTA};
        let bytes = std::mem::size_of_val(p);
        let base = p.as_ptr() as *const i8;
        let mut k = 0;
        while k < bytes {
            // SAFETY: prefetching is a hint and never faults; the address is inside `p`.
            unsafe { _mm_prefetch::<_MM_HINT_NTA>(base.add(k)) };
            k += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Prefetches columns `m0..m0+len` of row `t + PREFETCH_ROWS` of a `[steps, m]` input, if
/// there is one.
#[inline(always)]
pub(super) fn prefetch_ahead(
    src: &AnySlice,
    (t, steps): (usize, usize),
    m: usize,
    (m0, len): (usize, usize),
) {
    if t + PREFETCH_ROWS < steps {
        let r = (t + PREFETCH_ROWS) * m + m0;
        with_any!(src, AnySlice, |s| prefetch(&s[r..r + len]))
    }
}

/// `dst.copy_from_slice(src)` with non-temporal stores (the benchmarks' memory roof: the
/// kernels stream their large outputs the same way).
pub(crate) fn copy_streaming(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "copy_streaming: lengths differ");
    let head = (16 - dst.as_ptr() as usize % 16) % 16;
    let head = head.min(dst.len());
    dst[..head].copy_from_slice(&src[..head]);
    let body = (dst.len() - head) / 16 * 16;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let (d, s) = (dst[head..].as_mut_ptr(), src[head..].as_ptr());
        let mut k = 0;
        while k < body {
            // SAFETY: `k + 16 <= body <= len - head` for both buffers, `d + k` is 16-byte
            // aligned (the head was copied first), and SSE2 is part of every x86-64 CPU.
            unsafe {
                _mm_stream_si128(
                    d.add(k) as *mut __m128i,
                    _mm_loadu_si128(s.add(k) as *const __m128i),
                )
            };
            k += 16;
        }
        stream_fence();
    }
    #[cfg(not(target_arch = "x86_64"))]
    dst[head..head + body].copy_from_slice(&src[head..head + body]);
    dst[head + body..].copy_from_slice(&src[head + body..]);
}
