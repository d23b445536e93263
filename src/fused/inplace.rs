//! Layer 5 (beside [`super::cpu`]): caller-owned CPU buffers for the `*_into` calls. The
//! storages of a call's tensors are locked for writing, each once and in address order, and
//! the kernel gets disjoint typed views of their elements.
//!
//! candle lends one storage at a time to an in-place op ([`InplaceOp1`]); a call that reads an
//! input, fills a spike buffer and advances two or three state tensors needs them all at once,
//! and some may be views of one storage (`packed.narrow(..)`). So the locks are taken by nesting
//! in-place ops, one per distinct storage, and the views are cut from the locked storages' base
//! pointers after checking that no written range overlaps another range of the call. Locking in
//! address order means two calls on overlapping sets of storages cannot wait on each other.

use super::elem::Elem;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, InplaceOp1, Layout, Result, Storage, Tensor};
use std::cell::RefCell;

/// Where a CPU tensor's elements lie: its storage's base address and the address range of its
/// elements (`start..end`, in bytes).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Place {
    pub base: usize,
    pub start: usize,
    pub end: usize,
}

impl Place {
    /// The place of a CPU tensor's elements (the tensor's layout need not be contiguous; the
    /// range then covers its first `elem_count` elements from its offset).
    pub fn of(t: &Tensor) -> Result<Place> {
        let (g, l) = t.storage_and_layout();
        let Storage::Cpu(c) = &*g else {
            bail!("fused AdEx: the CPU kernels need CPU tensors");
        };
        let (base, _) = base_of(c)?;
        let start = base + l.start_offset() * t.dtype().size_in_bytes();
        Ok(Place {
            base,
            start,
            end: start + t.elem_count() * t.dtype().size_in_bytes(),
        })
    }

    /// Whether the two element ranges share a byte.
    pub fn overlaps(&self, o: &Place) -> bool {
        self.start < o.end && o.start < self.end
    }
}

/// `(data pointer, length in bytes)` of a `CpuStorage`, the pointer taken with `$ptr`
/// (`as_ptr` to read the address, `as_mut_ptr` for a pointer that may write).
macro_rules! data_span {
    ($c:expr, $ptr:ident) => {
        match $c {
            CpuStorage::U8(v) => (v.$ptr().cast(), v.len()),
            CpuStorage::F32(v) => (v.$ptr().cast(), 4 * v.len()),
            CpuStorage::F64(v) => (v.$ptr().cast(), 8 * v.len()),
            CpuStorage::F16(v) => (v.$ptr().cast(), 2 * v.len()),
            CpuStorage::BF16(v) => (v.$ptr().cast(), 2 * v.len()),
            c => bail!("fused AdEx: unsupported dtype {:?}", c.dtype()),
        }
    };
}

/// A storage's data address and length in bytes.
fn base_of(c: &CpuStorage) -> Result<(usize, usize)> {
    let (ptr, bytes): (*const u8, usize) = data_span!(c, as_ptr);
    Ok((ptr as usize, bytes))
}

/// A locked storage's data pointer (with the provenance of its `&mut`) and length in bytes.
type Held = (*mut u8, usize);

/// What runs once every storage is locked, given their data pointers.
type Body<'b> = dyn FnMut(&[Held]) -> Result<()> + 'b;

fn held_of(c: &mut CpuStorage) -> Result<Held> {
    Ok(data_span!(c, as_mut_ptr))
}

/// Holds the write lock of `ts[0]`'s storage while locking the rest, then runs the body.
struct Hold<'a, 'b> {
    rest: &'a [&'a Tensor],
    held: RefCell<&'a mut Vec<Held>>,
    body: RefCell<&'a mut Body<'b>>,
}

impl InplaceOp1 for Hold<'_, '_> {
    fn name(&self) -> &'static str {
        "adex-hold-storage"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, _: &Layout) -> Result<()> {
        let mut held = self.held.borrow_mut();
        held.push(held_of(s)?);
        lock_all(self.rest, &mut held, &mut **self.body.borrow_mut())
    }
}

/// Runs `body` with the storages of `ts` write-locked (in the order given), passing their data
/// pointers in that order; the pointers are valid until `body` returns.
fn lock_all<'b>(ts: &[&Tensor], held: &mut Vec<Held>, body: &mut Body<'b>) -> Result<()> {
    match ts.split_first() {
        None => body(held),
        Some((t, rest)) => t.inplace_op1(&Hold {
            rest,
            held: RefCell::new(held),
            body: RefCell::new(body),
        }),
    }
}

/// Runs `f` on the elements of `read` (the input, dtype `E`), of each tensor of `write` (dtype
/// `E`, named by `names` in errors) and of `spikes` (dtype `O`), with every storage among them
/// locked for writing while `f` runs.
///
/// Fails, naming the tensors (prefixed with `op`), before locking anything unless every tensor
/// is a contiguous CPU tensor of its dtype and no written range (`write`, `spikes`) overlaps
/// another range of the call. Written tensors may be disjoint views of one storage, and may
/// share a storage with `read`.
pub(crate) fn with_views<E: Elem, O: Elem>(
    op: &str,
    read: &Tensor,
    write: &[Tensor],
    names: &[&str],
    spikes: &Tensor,
    f: impl FnOnce(&[E], Vec<&mut [E]>, &mut [O]) -> Result<()>,
) -> Result<()> {
    let all: Vec<(&Tensor, DType, &str)> = std::iter::once((read, E::DTYPE, "input"))
        .chain(
            write
                .iter()
                .zip(names)
                .map(|(t, &name)| (t, E::DTYPE, name)),
        )
        .chain(std::iter::once((spikes, O::DTYPE, "spikes")))
        .collect();
    if all.len() != write.len() + 2 {
        bail!(
            "{op}: {} names for {} state tensors",
            names.len(),
            write.len()
        );
    }
    let mut places: Vec<Place> = Vec::with_capacity(all.len());
    for &(t, dtype, name) in &all {
        if t.dtype() != dtype {
            bail!(
                "{op}: `{name}` has dtype {:?}, expected {dtype:?}",
                t.dtype()
            );
        }
        if !t.is_contiguous() {
            bail!("{op}: `{name}` must be contiguous to be written in place");
        }
        let p = Place::of(t)?;
        // Every range after the first (the read) is written: none may overlap another.
        if let Some(j) = places.iter().position(|o| o.overlaps(&p)) {
            if j == 0 {
                bail!("{op}: the input shares memory with `{name}`, which is written in place");
            }
            let other = all[j].2;
            bail!("{op}: `{other}` and `{name}` share memory; each output needs its own tensor (e.g. `.copy()`)");
        }
        places.push(p);
    }
    // One tensor per distinct storage, in address order.
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by_key(|&k| places[k].base);
    order.dedup_by_key(|k| places[*k].base);
    let lockers: Vec<&Tensor> = order.iter().map(|&k| all[k].0).collect();
    let mut f = Some(f);
    lock_all(
        &lockers,
        &mut Vec::with_capacity(order.len()),
        &mut |held| {
            // Each tensor's elements as (pointer, length in bytes) inside its locked storage.
            let mut spans = Vec::with_capacity(places.len());
            for p in &places {
                let j = order.partition_point(|&k| places[k].base < p.base);
                let (ptr, bytes) = held[j];
                if ptr as usize != p.base || p.end > p.base + bytes {
                    bail!("{op}: a buffer's storage changed during the call");
                }
                // SAFETY: `start - base <= bytes` (checked above), so the offset stays inside (or
                // one past the end of) the locked storage's allocation.
                spans.push((unsafe { ptr.add(p.start - p.base) }, p.end - p.start));
            }
            let mut spans = spans.into_iter();
            // SAFETY: each span lies inside a storage this thread holds the write lock of until
            // `lock_all` returns, which outlives `f`; the dtypes were checked against `E` and `O`
            // and a storage of dtype `E` holds a `Vec<E>`, so the spans are aligned; the written
            // spans overlap neither each other nor the read span (checked above), so the `&mut`
            // views are exclusive.
            let (xs, states, out) = unsafe {
                (
                    view::<E>(spans.next().expect("read span")),
                    write
                        .iter()
                        .map(|_| view_mut::<E>(spans.next().expect("state span")))
                        .collect::<Vec<_>>(),
                    view_mut::<O>(spans.next().expect("spike span")),
                )
            };
            let f = f.take().expect("the body runs once");
            f(xs, states, out)
        },
    )
}

/// # Safety
/// `span` must be `len` readable bytes of `T`s, aligned for `T`, not written while the view lives.
unsafe fn view<'a, T>((ptr, bytes): (*mut u8, usize)) -> &'a [T] {
    if bytes == 0 {
        return &[];
    }
    std::slice::from_raw_parts(ptr.cast::<T>(), bytes / std::mem::size_of::<T>())
}

/// # Safety
/// As [`view`], and nothing else may read or write the span while the view lives.
unsafe fn view_mut<'a, T>((ptr, bytes): (*mut u8, usize)) -> &'a mut [T] {
    if bytes == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(ptr.cast::<T>(), bytes / std::mem::size_of::<T>())
}
