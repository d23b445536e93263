//! Layer 5c (CPU kernels): views of a call's buffers, and every `unsafe` pointer they need.
//!
//! The kernels are compiled once per instruction set and compute precision, not per storage
//! dtype: a call's inputs and outputs reach them as [`AnySlice`], [`AnyInit`] and [`AnyRows`],
//! dtype-erased views that the kernels convert row segment by row segment (one `match` per
//! row, outside the lane loop).

use super::super::math::Real;
use half::{bf16, f16};
use std::marker::PhantomData;

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
        assert_eq!(
            Some(buf.len()),
            rows.checked_mul(width),
            "output buffer size"
        );
        Rows {
            ptr: buf.as_mut_ptr(),
            rows,
            width,
            _own: PhantomData,
        }
    }

    /// Row `t`, columns `m0..m0+len`, as a slice to write.
    ///
    /// # Safety
    /// No other reference to these elements may be alive while the slice is: the kernels give
    /// each block's columns to one thread and drop each segment before taking the next.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn segment(&self, t: usize, m0: usize, len: usize) -> &mut [T] {
        assert!(t < self.rows && m0 <= self.width && len <= self.width - m0);
        // SAFETY: in bounds by the assertion above (`rows * width` is the checked buffer
        // length); the columns are written by one thread only while the view lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(t * self.width + m0), len) }
    }

    /// The buffer's address (for aligning blocks to its cache lines).
    pub(super) fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// The first row as the initial state of the job that writes this row as its final state
    /// (the state advanced in place).
    ///
    /// # Safety
    /// Only for a forward job's `v0`/`i0`/`a0` whose matching `last` slot is `self`, so that the
    /// forward's load-before-store order per block holds (see [`Init`]).
    pub(crate) unsafe fn as_init(&self) -> Init<'a, T> {
        Init {
            ptr: self.ptr,
            len: self.width,
            _view: PhantomData,
        }
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

impl<T> Init<'_, T> {
    /// The segment `m0..m0+len`, valid until the caller next writes through an aliasing
    /// [`Rows`] (the forward copies it into its block buffers first).
    #[inline(always)]
    pub(super) fn segment(&self, m0: usize, len: usize) -> &[T] {
        assert!(m0 <= self.len && len <= self.len - m0);
        // SAFETY: in bounds by the assertion; nothing writes these columns while the returned
        // borrow lives (the type's aliasing rule).
        unsafe { std::slice::from_raw_parts(self.ptr.add(m0), len) }
    }
}

macro_rules! any_view {
    ($(#[$doc:meta])* $name:ident, $inner:ident) => {
        $(#[$doc])*
        pub(crate) enum $name<'a> {
            F32($inner<'a, f32>),
            F64($inner<'a, f64>),
            Bf16($inner<'a, bf16>),
            F16($inner<'a, f16>),
            U8($inner<'a, u8>),
        }
    };
}

/// A shared slice of a kernel dtype.
pub(crate) type Slice<'a, T> = &'a [T];

any_view!(
    /// An input `[T, M]` (or `[M]`) of any kernel dtype.
    AnySlice,
    Slice
);
any_view!(
    /// An initial state `[M]` of any kernel dtype.
    AnyInit,
    Init
);
any_view!(
    /// An output of any kernel dtype.
    AnyRows,
    Rows
);

impl Clone for AnySlice<'_> {
    fn clone(&self) -> Self {
        *self
    }
}
impl Copy for AnySlice<'_> {}

/// `$body` with `$x` bound to the typed view inside `$view` (one arm per kernel dtype).
macro_rules! with_any {
    ($view:expr, $name:ident, |$x:ident| $body:expr) => {
        match $view {
            $name::F32($x) => $body,
            $name::F64($x) => $body,
            $name::Bf16($x) => $body,
            $name::F16($x) => $body,
            $name::U8($x) => $body,
        }
    };
}
pub(super) use with_any;

impl AnySlice<'_> {
    pub(super) fn bytes(&self) -> usize {
        with_any!(self, AnySlice, |s| std::mem::size_of_val(*s))
    }
}

impl AnyRows<'_> {
    /// `(address, width, element size)`, for aligning blocks to the rows' cache lines.
    pub(super) fn geometry(&self) -> (usize, usize, usize) {
        with_any!(self, AnyRows, |r| (r.ptr as usize, r.width, elem_size(r)))
    }
}

fn elem_size<T>(_: &Rows<'_, T>) -> usize {
    std::mem::size_of::<T>()
}

/// The storage dtypes as views: what the kernels' dtype erasure needs of each.
pub(crate) trait Erase: Sized {
    /// The view's own slice if it holds this dtype (read in place, without conversion).
    fn native<'a>(s: &AnySlice<'a>) -> Option<&'a [Self]>;
    /// The view's own rows if they hold this dtype (written without conversion).
    fn native_rows<'r, 'a>(r: &'r AnyRows<'a>) -> Option<&'r Rows<'a, Self>>;
    fn slice(s: &[Self]) -> AnySlice<'_>;
    fn init(s: Init<'_, Self>) -> AnyInit<'_>;
    fn rows(r: Rows<'_, Self>) -> AnyRows<'_>;
}

macro_rules! erase {
    ($t:ty, $v:ident) => {
        impl Erase for $t {
            #[inline(always)]
            fn native<'a>(s: &AnySlice<'a>) -> Option<&'a [Self]> {
                match s {
                    AnySlice::$v(s) => Some(s),
                    _ => None,
                }
            }
            #[inline(always)]
            fn native_rows<'r, 'a>(r: &'r AnyRows<'a>) -> Option<&'r Rows<'a, Self>> {
                match r {
                    AnyRows::$v(r) => Some(r),
                    _ => None,
                }
            }
            fn slice(s: &[Self]) -> AnySlice<'_> {
                AnySlice::$v(s)
            }
            fn init(s: Init<'_, Self>) -> AnyInit<'_> {
                AnyInit::$v(s)
            }
            fn rows(r: Rows<'_, Self>) -> AnyRows<'_> {
                AnyRows::$v(r)
            }
        }
    };
}
erase!(f32, F32);
erase!(f64, F64);
erase!(bf16, Bf16);
erase!(f16, F16);
erase!(u8, U8);

/// A compute precision: what the kernels are generic over.
pub(crate) trait Native: Real + Erase {}
impl<T: Real + Erase> Native for T {}
