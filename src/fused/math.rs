//! Layer 5a: the AdEx update, its backward and the six surrogate derivatives as scalar,
//! branch-free functions: the one Rust definition that the fused CPU kernels vectorize.
//!
//! Every function here is `#[inline(always)]` and free of branches that depend on data (all
//! conditionals are selects), so the lane loops of [`super::cpu`] compile to SIMD code in each
//! instruction-set context they are instantiated in (AVX-512, AVX2+FMA, or the portable
//! baseline). The operation order is the reference path's (norse's) except in the membrane's
//! exponential term, computed in base 2 for a short dependency chain (see [`membrane`]), the
//! polynomial `exp2`/`exp` for f32 (about 1 ulp, see [`exp2_parts_f32`], [`exp_f32`]) and the
//! summation order of the gradient terms, so results agree with [`crate::reference`] to a few
//! ulp, not bit for bit.
//! The CUDA/Metal header in `kernels/` mirrors these functions line by line.

// Index loops over fixed-size lane arrays are the form the vectorizer handles best here
// (iterator adaptors with closures were measured not to inline into the SIMD contexts).
#![allow(clippy::needless_range_loop)]
use crate::surrogate::SurrogateMethod;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// A group of lanes the math is evaluated on: one scalar, or a [`Pack`] of `K` lanes. Every
/// operation of a pack is a loop over its lanes, so each operation of the model becomes `K/16`
/// independent AVX-512 instructions side by side: the independent dependency chains the core
/// needs to stay busy are interleaved in program order, not left to the out-of-order window.
pub(crate) trait Lanes:
    Copy
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    type S: Real;
    type Mask: Copy;
    fn splat(s: Self::S) -> Self;
    fn gt(self, o: Self) -> Self::Mask;
    fn lt(self, o: Self) -> Self::Mask;
    fn is_finite(self) -> Self::Mask;
    /// `if m { a } else { b }` lane by lane.
    fn select(m: Self::Mask, a: Self, b: Self) -> Self;
    fn abs(self) -> Self;
    fn sqrt(self) -> Self;
    /// `self*b + c`, fused where the instruction set has FMA (a libm call otherwise).
    fn mul_add<const FMA: bool>(self, b: Self, c: Self) -> Self;
    /// `f` applied lane by lane.
    fn map_lanes(self, f: impl Fn(Self::S) -> Self::S + Copy) -> Self;
    /// `2^n` from `t = y + 1.5*2^mantissa_bits` (`y` rounded to the integer `n` in adding),
    /// whose low mantissa bits hold `n`.
    fn pow2_shifted(self) -> Self;
    /// `exp(x)` for `x <= 88` in f32 (see [`exp_f32`] for f32; f64 uses the platform's `exp`).
    #[inline(always)]
    fn exp<const FMA: bool>(self) -> Self {
        <Self::S as Real>::exp_of::<Self, FMA>(self)
    }
}

macro_rules! scalar_lanes {
    ($t:ty, |$x:ident| $exp:expr) => {
        impl Lanes for $t {
            type S = $t;
            type Mask = bool;
            #[inline(always)]
            fn splat(s: $t) -> Self {
                s
            }
            #[inline(always)]
            fn gt(self, o: Self) -> bool {
                self > o
            }
            #[inline(always)]
            fn lt(self, o: Self) -> bool {
                self < o
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                <$t>::abs(self) < <$t>::INFINITY
            }
            #[inline(always)]
            fn select(m: bool, a: Self, b: Self) -> Self {
                if m {
                    a
                } else {
                    b
                }
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn mul_add<const FMA: bool>(self, b: Self, c: Self) -> Self {
                if FMA {
                    <$t>::mul_add(self, b, c)
                } else {
                    self * b + c
                }
            }
            #[inline(always)]
            fn map_lanes(self, f: impl Fn($t) -> $t + Copy) -> Self {
                f(self)
            }
            #[inline(always)]
            fn pow2_shifted(self) -> Self {
                // The low bits of the pattern hold n; shifted into the exponent field they give
                // the biased exponent (n + 127 in [1, 254] for f32 exponents n in [-126, 127]).
                let $x = self;
                $exp
            }
        }
    };
}

scalar_lanes!(f32, |t| f32::from_bits(t.to_bits().wrapping_add(127) << 23));
scalar_lanes!(f64, |t| f64::from_bits(
    t.to_bits().wrapping_add(1023) << 52
));

/// `K` lanes of `T`, evaluated operation by operation.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
pub(crate) struct Pack<T, const K: usize>(pub [T; K]);

impl<T: Copy, const K: usize> Pack<T, K> {
    #[inline(always)]
    pub(crate) fn load(src: &[T]) -> Self {
        Pack(src[..K].try_into().expect("a full pack"))
    }
    #[inline(always)]
    pub(crate) fn store(self, dst: &mut [T]) {
        dst[..K].copy_from_slice(&self.0);
    }
    #[inline(always)]
    fn map(self, f: impl Fn(T) -> T) -> Self {
        let mut r = self.0;
        for x in r.iter_mut() {
            *x = f(*x);
        }
        Pack(r)
    }
    #[inline(always)]
    fn zip(self, o: Self, f: impl Fn(T, T) -> T) -> Self {
        let mut r = self.0;
        for (x, y) in r.iter_mut().zip(o.0) {
            *x = f(*x, y);
        }
        Pack(r)
    }
}

macro_rules! pack_binop {
    ($tr:ident, $f:ident, $op:tt) => {
        impl<T: Copy + $tr<Output = T>, const K: usize> $tr for Pack<T, K> {
            type Output = Self;
            #[inline(always)]
            fn $f(self, o: Self) -> Self {
                self.zip(o, |a, b| a $op b)
            }
        }
    };
}
pack_binop!(Add, add, +);
pack_binop!(Sub, sub, -);
pack_binop!(Mul, mul, *);
pack_binop!(Div, div, /);

impl<T: Copy + Neg<Output = T>, const K: usize> Neg for Pack<T, K> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        self.map(|a| -a)
    }
}

/// A pack's mask holds one lane-wide integer per lane, all ones or all zeros (what a vector
/// compare produces), and a select tests it against zero, which LLVM folds back into a blend on
/// the compare's result. With `[bool; K]` masks LLVM narrowed every mask to bytes and widened
/// it again before each blend (five shuffle and shift instructions per mask on AVX2), which the
/// backward, holding several masks at once, paid on every step: forward+backward f32 at
/// (100, 1, 1000), one thread, AVX2 Zen 3, five interleaved runs, 0.27 -> 0.30-0.34 G/s, the
/// forward unchanged. (Selecting with `(m & a) | (!m & b)` on the bits instead was as fast
/// backward but cost the bf16 forward 10 %. Building the three masks through one shared
/// closure helper changed the code LLVM emitted and cost the backward 7 % on the same machine,
/// 0.334-0.341 -> 0.313-0.315 G/s, so each compare keeps its own loop.)
impl<T: Real + Lanes<S = T, Mask = bool>, const K: usize> Lanes for Pack<T, K> {
    type S = T;
    type Mask = [T::Bits; K];
    #[inline(always)]
    fn splat(s: T) -> Self {
        Pack([s; K])
    }
    #[inline(always)]
    fn gt(self, o: Self) -> Self::Mask {
        let mut m = [T::NONE; K];
        for k in 0..K {
            m[k] = T::mask(self.0[k] > o.0[k]);
        }
        m
    }
    #[inline(always)]
    fn lt(self, o: Self) -> Self::Mask {
        let mut m = [T::NONE; K];
        for k in 0..K {
            m[k] = T::mask(self.0[k] < o.0[k]);
        }
        m
    }
    #[inline(always)]
    fn is_finite(self) -> Self::Mask {
        let mut m = [T::NONE; K];
        for k in 0..K {
            m[k] = T::mask(Lanes::is_finite(self.0[k]));
        }
        m
    }
    #[inline(always)]
    fn select(m: Self::Mask, a: Self, b: Self) -> Self {
        let mut r = b.0;
        for k in 0..K {
            r[k] = if m[k] != T::NONE { a.0[k] } else { b.0[k] };
        }
        Pack(r)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        self.map(Lanes::abs)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        self.map(Lanes::sqrt)
    }
    #[inline(always)]
    fn mul_add<const FMA: bool>(self, b: Self, c: Self) -> Self {
        let mut r = self.0;
        for k in 0..K {
            r[k] = Lanes::mul_add::<FMA>(self.0[k], b.0[k], c.0[k]);
        }
        Pack(r)
    }
    #[inline(always)]
    fn map_lanes(self, f: impl Fn(T) -> T + Copy) -> Self {
        self.map(f)
    }
    #[inline(always)]
    fn pow2_shifted(self) -> Self {
        self.map(T::pow2_shifted)
    }
}

/// `J` lane groups evaluated side by side: every operation is applied to all `J` groups before
/// the next, so `J` independent dependency chains are interleaved in program order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Multi<V, const J: usize>(pub [V; J]);

macro_rules! multi_binop {
    ($tr:ident, $f:ident, $op:tt) => {
        impl<V: Copy + $tr<Output = V>, const J: usize> $tr for Multi<V, J> {
            type Output = Self;
            #[inline(always)]
            fn $f(self, o: Self) -> Self {
                let mut r = self.0;
                for j in 0..J {
                    r[j] = self.0[j] $op o.0[j];
                }
                Multi(r)
            }
        }
    };
}
multi_binop!(Add, add, +);
multi_binop!(Sub, sub, -);
multi_binop!(Mul, mul, *);
multi_binop!(Div, div, /);

impl<V: Copy + Neg<Output = V>, const J: usize> Neg for Multi<V, J> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        let mut r = self.0;
        for x in r.iter_mut() {
            *x = -*x;
        }
        Multi(r)
    }
}

impl<V: Lanes, const J: usize> Lanes for Multi<V, J> {
    type S = V::S;
    type Mask = [V::Mask; J];
    #[inline(always)]
    fn splat(s: V::S) -> Self {
        Multi([V::splat(s); J])
    }
    #[inline(always)]
    fn gt(self, o: Self) -> Self::Mask {
        let mut m = [self.0[0].gt(o.0[0]); J];
        for j in 1..J {
            m[j] = self.0[j].gt(o.0[j]);
        }
        m
    }
    #[inline(always)]
    fn lt(self, o: Self) -> Self::Mask {
        let mut m = [self.0[0].lt(o.0[0]); J];
        for j in 1..J {
            m[j] = self.0[j].lt(o.0[j]);
        }
        m
    }
    #[inline(always)]
    fn is_finite(self) -> Self::Mask {
        let mut m = [self.0[0].is_finite(); J];
        for j in 1..J {
            m[j] = self.0[j].is_finite();
        }
        m
    }
    #[inline(always)]
    fn select(m: Self::Mask, a: Self, b: Self) -> Self {
        let mut r = b.0;
        for j in 0..J {
            r[j] = V::select(m[j], a.0[j], b.0[j]);
        }
        Multi(r)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        let mut r = self.0;
        for x in r.iter_mut() {
            *x = x.abs();
        }
        Multi(r)
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        let mut r = self.0;
        for x in r.iter_mut() {
            *x = x.sqrt();
        }
        Multi(r)
    }
    #[inline(always)]
    fn mul_add<const FMA: bool>(self, b: Self, c: Self) -> Self {
        let mut r = self.0;
        for j in 0..J {
            r[j] = self.0[j].mul_add::<FMA>(b.0[j], c.0[j]);
        }
        Multi(r)
    }
    #[inline(always)]
    fn map_lanes(self, f: impl Fn(V::S) -> V::S + Copy) -> Self {
        let mut r = self.0;
        for x in r.iter_mut() {
            *x = x.map_lanes(f);
        }
        Multi(r)
    }
    #[inline(always)]
    fn pow2_shifted(self) -> Self {
        let mut r = self.0;
        for x in r.iter_mut() {
            *x = x.pow2_shifted();
        }
        Multi(r)
    }
}

/// Branch-free `exp` for f32 lanes, for `x <= 88`: range reduction by `ln 2` (Cody-Waite, two
/// constants), `e^r = 1 + r + r^2 P(r)` on `|r| <= ln(2)/2` with Cephes' degree-5 `expf`
/// polynomial (Estrin form; relative error about 1.2e-7, i.e. about 1 ulp), and `2^n` built in
/// the exponent bits. Arguments below -87 are raised to -87 so that `2^n` stays a normal number
/// (the result is then `1.6e-38` instead of smaller); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32<V: Lanes<S = f32>, const FMA: bool>(x: V) -> V {
    let c = V::splat;
    const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = V::select(x.lt(c(-87.0)), c(-87.0), x);
    let t = x.mul_add::<FMA>(c(std::f32::consts::LOG2_E), c(SHIFTER));
    let n = t - c(SHIFTER);
    let r = n.mul_add::<FMA>(c(-0.693_359_4), x); // ln 2, high part (exact in 9 bits)
    let r = n.mul_add::<FMA>(c(2.121_944_4e-4), r); // ln 2, low part
    let r2 = r * r;
    let p01 = r.mul_add::<FMA>(c(1.666_666_5e-1), c(0.5));
    let p23 = r.mul_add::<FMA>(c(8.333_452e-3), c(4.166_579_6e-2));
    let p45 = r.mul_add::<FMA>(c(1.987_569_1e-4), c(1.398_2e-3));
    let p = p45.mul_add::<FMA>(r2, p23).mul_add::<FMA>(r2, p01);
    let y = p.mul_add::<FMA>(r2, r) + c(1.0);
    y * t.pow2_shifted()
}

/// The least exponent [`exp2_parts_f32`] evaluates: far enough below 0 that the membrane's
/// exponential term `2^x * c_exp` there is below half an ulp of any membrane value it is added
/// to (unless that is itself below about `2^-76 * c_exp`), and high enough that the term stays a
/// normal number for any `c_exp` above `2^-26`. At -126, strongly hyperpolarized neurons made
/// subnormal products every step, which some CPUs execute a hundred times slower.
pub(crate) const EXP2_FLOOR: f32 = -100.0;

/// Branch-free `2^x` for f32 lanes, `x <= 127`, as `(p, s)` with `2^x = p*s`: `s = 2^n` for the
/// integer `n` nearest `x` (built in the exponent bits), `p = 2^f = 1 + f*q(f)` for `f = x - n`
/// (exact) in `[-1/2, 1/2]`, `q` Cephes' degree-5 `exp2f` polynomial in Estrin form (relative
/// error about 1.7e-7, i.e. about 1 ulp). Arguments below [`EXP2_FLOOR`] are raised to it. The
/// membrane keeps `p` and `s` apart: `s` joins the coefficient it multiplies off the critical
/// path.
#[inline(always)]
pub(crate) fn exp2_parts_f32<V: Lanes<S = f32>, const FMA: bool>(x: V) -> (V, V) {
    let c = V::splat;
    const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = V::select(x.lt(c(EXP2_FLOOR)), c(EXP2_FLOOR), x);
    // n by one rounding instruction where the instruction set has one (FMA marks AVX2,
    // AVX-512 and aarch64), else by the shifter; both give the nearest integer, ties to even.
    let (n, t) = if FMA {
        let n = x.map_lanes(f32::round_ties_even);
        (n, n + c(SHIFTER))
    } else {
        let t = x + c(SHIFTER);
        (t - c(SHIFTER), t)
    };
    let f = x - n;
    let f2 = f * f;
    let q01 = f.mul_add::<FMA>(c(2.402_264_8e-1), c(6.931_472e-1));
    let q23 = f.mul_add::<FMA>(c(9.618_437e-3), c(5.550_332_5e-2));
    let q45 = f.mul_add::<FMA>(c(1.535_336_2e-4), c(1.339_887_4e-3));
    let q = q45.mul_add::<FMA>(f2 * f2, q23.mul_add::<FMA>(f2, q01));
    (q.mul_add::<FMA>(f, c(1.0)), t.pow2_shifted())
}

/// The two compute precisions: f32 (for f32, f16 and bf16 data) and f64.
pub(crate) trait Real:
    Lanes<S = Self, Mask = bool> + PartialOrd + Default + Send + Sync + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// Largest exponent of the membrane's exponential, in base 2: the reference path's cap on
    /// `u` (88 for f32, 709 for f64) times `log2(e)`.
    const EXP2_CAP: Self;
    const LOG2_E: Self;
    /// Whether the SIMD kernels of this precision get a loop per drive kind and parameter
    /// kind (f32, the inference precision); f64, the validation precision, keeps one loop for
    /// all: a third of the crate's build time and code, for a speed difference within the
    /// noise (docs/PERFORMANCE.md).
    const SPLIT_LOOPS: bool;
    /// The unsigned integer of the same width: a [`Pack`]'s mask lanes.
    type Bits: Copy + PartialEq;
    /// The mask lane that is false (all bits clear).
    const NONE: Self::Bits;
    /// `c` as a mask lane: all bits set or all clear.
    fn mask(c: bool) -> Self::Bits;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    /// `exp` of lanes of this precision.
    fn exp_of<L: Lanes<S = Self>, const FMA: bool>(x: L) -> L;
    /// `2^x` of lanes of this precision as `(p, s)`, `2^x = p*s` (see [`exp2_parts_f32`]).
    fn exp2_parts_of<L: Lanes<S = Self>, const FMA: bool>(x: L) -> (L, L);
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const EXP2_CAP: Self = 88.0 * std::f32::consts::LOG2_E;
    const LOG2_E: Self = std::f32::consts::LOG2_E;
    const SPLIT_LOOPS: bool = true;
    type Bits = u32;
    const NONE: u32 = 0;
    #[inline(always)]
    fn mask(c: bool) -> u32 {
        u32::from(c).wrapping_neg()
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp_of<L: Lanes<S = f32>, const FMA: bool>(x: L) -> L {
        exp_f32::<L, FMA>(x)
    }
    #[inline(always)]
    fn exp2_parts_of<L: Lanes<S = f32>, const FMA: bool>(x: L) -> (L, L) {
        exp2_parts_f32::<L, FMA>(x)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const EXP2_CAP: Self = 709.0 * std::f64::consts::LOG2_E;
    const LOG2_E: Self = std::f64::consts::LOG2_E;
    const SPLIT_LOOPS: bool = false;
    type Bits = u64;
    const NONE: u64 = 0;
    #[inline(always)]
    fn mask(c: bool) -> u64 {
        u64::from(c).wrapping_neg()
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    /// f64 is the validation precision: the platform's `exp`, lane by lane.
    #[inline(always)]
    fn exp_of<L: Lanes<S = f64>, const FMA: bool>(x: L) -> L {
        x.map_lanes(f64::exp)
    }
    /// The platform's `exp2`, whole (`s = 1`).
    #[inline(always)]
    fn exp2_parts_of<L: Lanes<S = f64>, const FMA: bool>(x: L) -> (L, L) {
        (x.map_lanes(f64::exp2), L::splat(1.0))
    }
}

/// `if c { a } else { b }` as a select.
#[inline(always)]
pub(crate) fn sel<V: Lanes>(c: V::Mask, a: V, b: V) -> V {
    V::select(c, a, b)
}

/// The parameters of one neuron (or of all, when scalar), resolved to the compute precision with
/// the `dt` products formed as the reference path forms them, and the membrane's exponential
/// term pre-arranged (`x_scale`, `x_offset`, `c_exp`) so that its chain is short.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Coef<F> {
    pub v_leak: F,
    /// `-v_th * x_scale`: the exponent in base 2 is `v*x_scale + x_offset`.
    pub x_offset: F,
    /// The spike threshold: `v_peak` when set, else `v_th`.
    pub v_spike: F,
    pub v_reset: F,
    /// `c_mem * delta_T`: the exponential term's factor in `v_dec`.
    pub c_exp: F,
    /// `log2(e) / delta_T`
    pub x_scale: F,
    pub a_current: F,
    pub a_spike: F,
    /// `dt * tau_mem_inv`
    pub c_mem: F,
    /// `dt * tau_syn_inv`
    pub c_syn: F,
    /// `dt * tau_ada_inv`
    pub c_ada: F,
}

/// The number of fields of [`Coef`], in the order of [`Coef::to_array`].
pub(crate) const N_COEF: usize = 11;

impl<F: Copy> Coef<F> {
    pub(crate) fn to_array(self) -> [F; N_COEF] {
        [
            self.v_leak,
            self.x_offset,
            self.v_spike,
            self.v_reset,
            self.c_exp,
            self.x_scale,
            self.a_current,
            self.a_spike,
            self.c_mem,
            self.c_syn,
            self.c_ada,
        ]
    }

    #[inline(always)]
    pub(crate) fn from_array(a: [F; N_COEF]) -> Self {
        Self::from_fn(|k| a[k])
    }

    /// Field `k` (in the order of [`Coef::to_array`]) from `f(k)`, written out field by field
    /// (`std::array::from_fn` is not inlined into the kernels' instruction-set contexts).
    #[inline(always)]
    pub(crate) fn from_fn(f: impl Fn(usize) -> F) -> Self {
        Coef {
            v_leak: f(0),
            x_offset: f(1),
            v_spike: f(2),
            v_reset: f(3),
            c_exp: f(4),
            x_scale: f(5),
            a_current: f(6),
            a_spike: f(7),
            c_mem: f(8),
            c_syn: f(9),
            c_ada: f(10),
        }
    }

    /// The fields, mutably, in the order of [`Coef::to_array`].
    #[inline(always)]
    pub(crate) fn fields_mut(&mut self) -> [&mut F; N_COEF] {
        [
            &mut self.v_leak,
            &mut self.x_offset,
            &mut self.v_spike,
            &mut self.v_reset,
            &mut self.c_exp,
            &mut self.x_scale,
            &mut self.a_current,
            &mut self.a_spike,
            &mut self.c_mem,
            &mut self.c_syn,
            &mut self.c_ada,
        ]
    }
}

/// The membrane update before the spike: `(v_dec, e, capped)` with
/// `v_dec = v + dt*tau_mem_inv*((v_leak - v) + delta_T*exp(u) + i_jump - a)`,
/// `u = (v - v_th)/delta_T` capped at 88 (f32) or 709 (f64) (`capped` says the cap was hit),
/// `e = exp(u)`.
///
/// Arranged for a short dependency chain from `v` to `v_dec` (one step's chain is what bounds
/// the kernels): the exponent in base 2 by one multiply-add, `2^x = p*2^n` with `2^n` folded
/// into the coefficient `c_exp` and the exp-free part `v + c_mem*(...)` formed while the
/// polynomial runs, then one multiply-add. This differs from the reference path's order by a
/// few ulp of `v_dec`.
#[inline(always)]
fn membrane<V: Lanes, const FMA: bool>(c: &Coef<V>, v: V, i_jump: V, a: V) -> (V, V, V::Mask) {
    let x = v.mul_add::<FMA>(c.x_scale, c.x_offset);
    let cap = V::splat(V::S::EXP2_CAP);
    let capped = x.gt(cap);
    let (p, s) = <V::S as Real>::exp2_parts_of::<V, FMA>(sel(capped, cap, x));
    let base = ((c.v_leak - v) + i_jump) - a;
    let w = base.mul_add::<FMA>(c.c_mem, v);
    let v_dec = p.mul_add::<FMA>(s * c.c_exp, w);
    (v_dec, p * s, capped)
}

/// What the backward of one step needs from its forward, saved by [`update_taped`] so that
/// [`step_backward`] does not evaluate the exponential again: the membrane potential before
/// the reset, and the exponential term `exp(u)`, or `-1` where `u` was capped
/// (no gradient flows through a capped exponent; the exponential is never negative).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tape<V> {
    pub v_dec: V,
    pub e: V,
}

/// One AdEx update from the state `(v, a)` driven by `i_jump` (the synaptic current after the
/// input jump; the input current itself for the encoder). Returns `(z, v_new, a_new)`.
#[inline(always)]
pub(crate) fn update<V: Lanes, const FMA: bool>(c: &Coef<V>, v: V, i_jump: V, a: V) -> (V, V, V) {
    update_taped::<V, FMA>(c, v, i_jump, a).0
}

/// [`update`], also returning the step's [`Tape`].
#[inline(always)]
pub(crate) fn update_taped<V: Lanes, const FMA: bool>(
    c: &Coef<V>,
    v: V,
    i_jump: V,
    a: V,
) -> ((V, V, V), Tape<V>) {
    let (v_dec, e, capped) = membrane::<V, FMA>(c, v, i_jump, a);
    let a_dec = a + (c.a_current * (v - c.v_leak) - a) * c.c_ada;
    // `v_dec - v_spike > 0` and `v_dec > v_spike` agree for all floats.
    let spike = v_dec.gt(c.v_spike);
    let z = sel(spike, V::splat(V::S::ONE), V::splat(V::S::ZERO));
    let tape = Tape {
        v_dec,
        e: sel(capped, -V::splat(V::S::ONE), e),
    };
    (
        (z, sel(spike, c.v_reset, v_dec), a_dec + z * c.a_spike),
        tape,
    )
}

/// `i_new = i_jump - dt*tau_syn_inv*i_jump`.
#[inline(always)]
pub(crate) fn synapse<V: Lanes>(c: &Coef<V>, i_jump: V) -> V {
    i_jump - i_jump * c.c_syn
}

/// The surrogate pseudo-derivative `g(x)` of `method` (the table in [`crate::surrogate`]);
/// `heaviside` gives 0. `tanh` uses `1 - tanh(y)^2 = 4t/(1+t)^2` with `t = exp(-2|y|)`, which
/// never overflows.
#[inline(always)]
pub(crate) fn surrogate<V: Lanes, const FMA: bool>(method: SurrogateMethod, alpha: V, x: V) -> V {
    let one = V::splat(V::S::ONE);
    let zero = V::splat(V::S::ZERO);
    match method {
        SurrogateMethod::Super => {
            let d = alpha * x.abs() + one;
            one / (d * d)
        }
        SurrogateMethod::Triangle => {
            let r = one - x.abs();
            alpha * sel(r.gt(zero), r, zero)
        }
        SurrogateMethod::Tanh => {
            let t = (-((one + one) * (alpha * x).abs())).exp::<FMA>();
            let d = one + t;
            (V::splat(V::S::from_f64(4.0)) * t) / (d * d)
        }
        SurrogateMethod::Circ => {
            let q = alpha * alpha + x * x;
            (alpha * alpha * alpha) / (q * q.sqrt())
        }
        SurrogateMethod::HeaviErfc => {
            let y = alpha * x;
            V::splat(V::S::from_f64(std::f64::consts::FRAC_2_SQRT_PI)) * (-(y * y)).exp::<FMA>()
        }
        SurrogateMethod::Heaviside => zero,
    }
}

/// Gradients leaving one step backwards: with respect to `i_jump` (equal to the gradients of
/// the input current and of the previous synaptic current), `v` and `a`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepGrad<V> {
    pub i_jump: V,
    pub v: V,
    pub a: V,
}

/// The backward of one step (the adjoint of [`update`] and [`synapse`]), recomputing what it
/// needs from the pre-step state `(v, i_jump, a)`: [`step_backward`] of the step's tape. The
/// CPU kernels keep the tape instead; the header check holds `kernels/adex_math.h`'s
/// `update_backward` (the GPU kernels' form) to this one.
#[cfg(test)]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn update_backward<V: Lanes, const FMA: bool>(
    c: &Coef<V>,
    method: SurrogateMethod,
    alpha: V,
    v: V,
    i_jump: V,
    a: V,
    gz: V,
    gv: V,
    gi: V,
    ga: V,
) -> StepGrad<V> {
    let (_, tape) = update_taped::<V, FMA>(c, v, i_jump, a);
    step_backward::<V, FMA>(c, method, alpha, tape, [gz, gv, gi, ga])
}

/// The backward of one step from its [`Tape`]. `[gz, gv, gi, ga]` are the gradients of the
/// step's outputs `z`, `v_new`, `i_new`, `a_new`.
///
/// The spike passes `g(v_dec - v_spike)` (zero where that is not finite); the reset passes
/// `1 - z` to `v_dec` and `v_reset - v_dec` (zero where `v_dec` is not finite) to `z`;
/// `a_new = a_dec + z*a_spike` passes `a_spike` to `z`. These are the reference path's
/// derivatives, which are norse's.
#[inline(always)]
pub(crate) fn step_backward<V: Lanes, const FMA: bool>(
    c: &Coef<V>,
    method: SurrogateMethod,
    alpha: V,
    Tape { v_dec, e }: Tape<V>,
    [gz, gv, gi, ga]: [V; 4],
) -> StepGrad<V> {
    let zero = V::splat(V::S::ZERO);
    let s = v_dec - c.v_spike;
    let spike = s.gt(zero);
    let jump = sel(v_dec.is_finite(), c.v_reset - v_dec, zero);
    let gz_total = gz + ga * c.a_spike + gv * jump;
    let g_s = sel(
        s.is_finite(),
        gz_total * surrogate::<V, FMA>(method, alpha, s),
        zero,
    );
    let g_vdec = sel(spike, zero, gv) + g_s;
    // v_dec = v + bracket*c_mem, bracket = ((v_leak - v) + delta_T*e) + i_jump - a
    let g_bracket = g_vdec * c.c_mem;
    let g_exp = sel(e.lt(zero), zero, g_bracket * e);
    // a_dec = a + (a_current*(v - v_leak) - a)*c_ada
    let g_ada = ga * c.c_ada;
    StepGrad {
        i_jump: g_bracket + (gi - gi * c.c_syn),
        v: ((g_vdec - g_bracket) + g_exp) + g_ada * c.a_current,
        a: (ga - g_ada) - g_bracket,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_within_two_ulp_over_the_adex_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            for fma in [false, true] {
                let got = if fma {
                    exp_f32::<f32, true>(x)
                } else {
                    exp_f32::<f32, false>(x)
                } as f64;
                let want = (x as f64).exp();
                let rel = ((got - want) / want).abs();
                worst = worst.max(rel);
            }
            x += 0.001_37;
        }
        assert!(worst < 2.4e-7, "max relative error {worst}");
        assert!(exp_f32::<f32, false>(f32::NAN).is_nan());
        assert_eq!(exp_f32::<f32, true>(0.0), 1.0);
        assert!(exp_f32::<f32, false>(-1e30) > 0.0);
        assert!(exp_f32::<f32, false>(88.0).is_finite());
    }

    #[test]
    fn tanh_surrogate_matches_the_textbook_formula() {
        for k in -400..400 {
            let x = k as f64 * 0.01;
            let got = surrogate::<f64, false>(SurrogateMethod::Tanh, 3.0, x);
            let want = 1.0 - (3.0 * x).tanh().powi(2);
            assert!((got - want).abs() < 1e-14, "x={x}: {got} vs {want}");
        }
    }
}
