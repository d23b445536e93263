//! Layer 5a: the AdEx update, its backward and the six surrogate derivatives as scalar,
//! branch-free functions: the one Rust definition that the fused CPU kernels vectorize.
//!
//! Every function here is `#[inline(always)]` and free of branches that depend on data (all
//! conditionals are selects), so the lane loops of [`super::cpu`] compile to SIMD code in each
//! instruction-set context they are instantiated in (AVX-512, AVX2+FMA, or the portable
//! baseline). The operation order is the reference path's (norse's); the differences are the
//! polynomial `exp` for f32 (about 1 ulp, see [`exp_f32`]) and the summation order of the
//! gradient terms, so results agree with [`crate::reference`] to a few ulp, not bit for bit.
//! The CUDA/Metal header in `kernels/` mirrors these functions line by line.

use crate::surrogate::SurrogateMethod;
use std::ops::{Add, Div, Mul, Neg, Sub};

/// The two compute precisions: f32 (for f32, f16 and bf16 data) and f64.
pub(crate) trait Real:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + Default
    + Send
    + Sync
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// Largest exponent passed to `exp` (the reference path's cap: 88 for f32, 709 for f64).
    const EXP_CAP: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    fn abs(self) -> Self;
    fn is_finite(self) -> bool;
    /// `exp(x)` for `x <= EXP_CAP`; `FMA` says whether fused multiply-add is compiled in.
    fn exp<const FMA: bool>(self) -> Self;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const EXP_CAP: Self = 88.0;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f32::abs(self)
    }
    #[inline(always)]
    fn is_finite(self) -> bool {
        f32::abs(self) < f32::INFINITY
    }
    #[inline(always)]
    fn exp<const FMA: bool>(self) -> Self {
        exp_f32::<FMA>(self)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const EXP_CAP: Self = 709.0;
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn abs(self) -> Self {
        f64::abs(self)
    }
    #[inline(always)]
    fn is_finite(self) -> bool {
        f64::abs(self) < f64::INFINITY
    }
    /// f64 is the validation precision: the platform's correctly rounded-ish `exp`, per lane.
    #[inline(always)]
    fn exp<const FMA: bool>(self) -> Self {
        f64::exp(self)
    }
}

/// `if c { a } else { b }` as a select.
#[inline(always)]
pub(crate) fn sel<F: Copy>(c: bool, a: F, b: F) -> F {
    if c {
        a
    } else {
        b
    }
}

/// `a*b + c`, fused where the instruction set has FMA (it is a libm call otherwise).
#[inline(always)]
fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Branch-free `exp` for f32, for `x <= 88`: range reduction by `ln 2` (Cody-Waite, two
/// constants), a degree-7 minimax polynomial for `e^r` on `|r| <= ln(2)/2` (Cephes' `expf`
/// coefficients, relative error about 1.2e-7, i.e. about 1 ulp), and `2^n` built in the exponent
/// bits. Arguments below -87 are raised to -87 so that `2^n` stays a normal number (the result is
/// then `1.6e-38` instead of smaller); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375, exact in 9 bits
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer and leaves n in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let x = sel(x < -87.0, -87.0, x);
    let t = mul_add::<FMA>(x, LOG2E, SHIFTER);
    let n = t - SHIFTER;
    let r = mul_add::<FMA>(n, -LN2_HI, x);
    let r = mul_add::<FMA>(n, -LN2_LO, r);
    // e^r = 1 + r + r^2 * P(r), P of degree 5, in Estrin form for a short dependency chain.
    let r2 = r * r;
    let p01 = mul_add::<FMA>(1.666_666_5e-1, r, 5.000_000_1e-1);
    let p23 = mul_add::<FMA>(8.333_452e-3, r, 4.166_579_6e-2);
    let p45 = mul_add::<FMA>(1.987_569_1e-4, r, 1.398_2e-3);
    let p = mul_add::<FMA>(mul_add::<FMA>(p45, r2, p23), r2, p01);
    let y = mul_add::<FMA>(p, r2, r) + 1.0;
    // The low 9 bits of t's pattern hold n (mod 512); shifted into the exponent field they give
    // the biased exponent n + 127, which lies in [1, 254] for x in [-87, 88].
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    y * scale
}

/// The parameters of one neuron (or of all, when scalar), resolved to the compute precision with
/// the `dt` products formed as the reference path forms them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Coef<F> {
    pub v_leak: F,
    pub v_th: F,
    /// The spike threshold: `v_peak` when set, else `v_th`.
    pub v_spike: F,
    pub v_reset: F,
    pub delta_t: F,
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
pub(crate) const N_COEF: usize = 10;

impl<F: Copy> Coef<F> {
    pub(crate) fn to_array(self) -> [F; N_COEF] {
        [
            self.v_leak,
            self.v_th,
            self.v_spike,
            self.v_reset,
            self.delta_t,
            self.a_current,
            self.a_spike,
            self.c_mem,
            self.c_syn,
            self.c_ada,
        ]
    }

    #[inline(always)]
    pub(crate) fn from_array(a: [F; N_COEF]) -> Self {
        Coef {
            v_leak: a[0],
            v_th: a[1],
            v_spike: a[2],
            v_reset: a[3],
            delta_t: a[4],
            a_current: a[5],
            a_spike: a[6],
            c_mem: a[7],
            c_syn: a[8],
            c_ada: a[9],
        }
    }
}

/// The membrane update before the spike: `(v_dec, e, capped)` with
/// `v_dec = v + dt*tau_mem_inv*(((v_leak - v) + delta_T*exp(u)) + i_jump - a)`,
/// `u = (v - v_th)/delta_T` capped at `EXP_CAP` (`capped` says the cap was hit).
#[inline(always)]
fn membrane<F: Real, const FMA: bool>(c: &Coef<F>, v: F, i_jump: F, a: F) -> (F, F, bool) {
    let u = (v - c.v_th) / c.delta_t;
    let capped = u > F::EXP_CAP;
    let e = sel(capped, F::EXP_CAP, u).exp::<FMA>();
    let v_dec = v + ((((c.v_leak - v) + c.delta_t * e) + i_jump) - a) * c.c_mem;
    (v_dec, e, capped)
}

/// One AdEx update from the state `(v, a)` driven by `i_jump` (the synaptic current after the
/// input jump; the input current itself for the encoder). Returns `(z, v_new, a_new)`.
#[inline(always)]
pub(crate) fn update<F: Real, const FMA: bool>(c: &Coef<F>, v: F, i_jump: F, a: F) -> (F, F, F) {
    let (v_dec, _, _) = membrane::<F, FMA>(c, v, i_jump, a);
    let a_dec = a + (c.a_current * (v - c.v_leak) - a) * c.c_ada;
    let spike = v_dec - c.v_spike > F::ZERO;
    let z = sel(spike, F::ONE, F::ZERO);
    (z, sel(spike, c.v_reset, v_dec), a_dec + z * c.a_spike)
}

/// `i_new = i_jump - dt*tau_syn_inv*i_jump`.
#[inline(always)]
pub(crate) fn synapse<F: Real>(c: &Coef<F>, i_jump: F) -> F {
    i_jump - i_jump * c.c_syn
}

/// The surrogate pseudo-derivative `g(x)` of `method` (the table in [`crate::surrogate`]);
/// `heaviside` gives 0. `tanh` uses `1 - tanh(y)^2 = 4t/(1+t)^2` with `t = exp(-2|y|)`, which
/// never overflows.
#[inline(always)]
pub(crate) fn surrogate<F: Real, const FMA: bool>(method: SurrogateMethod, alpha: F, x: F) -> F {
    let two = F::ONE + F::ONE;
    match method {
        SurrogateMethod::Super => {
            let d = alpha * x.abs() + F::ONE;
            F::ONE / (d * d)
        }
        SurrogateMethod::Triangle => {
            let r = F::ONE - x.abs();
            alpha * sel(r > F::ZERO, r, F::ZERO)
        }
        SurrogateMethod::Tanh => {
            let t = (-(two * (alpha * x).abs())).exp::<FMA>();
            let d = F::ONE + t;
            (two * two * t) / (d * d)
        }
        SurrogateMethod::Circ => {
            let q = alpha * alpha + x * x;
            (alpha * alpha * alpha) / (q * q.sqrt())
        }
        SurrogateMethod::HeaviErfc => {
            let y = alpha * x;
            F::from_f64(std::f64::consts::FRAC_2_SQRT_PI) * (-(y * y)).exp::<FMA>()
        }
        SurrogateMethod::Heaviside => F::ZERO,
    }
}

/// Gradients leaving one step backwards: with respect to `i_jump` (equal to the gradients of
/// the input current and of the previous synaptic current), `v` and `a`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StepGrad<F> {
    pub i_jump: F,
    pub v: F,
    pub a: F,
}

/// The backward of one step (the adjoint of [`update`] and [`synapse`]), recomputing what it
/// needs from the pre-step state `(v, i_jump, a)`. `gz`, `gv`, `gi`, `ga` are the gradients of
/// the step's outputs `z`, `v_new`, `i_new`, `a_new`.
///
/// The spike passes `g(v_dec - v_spike)` (zero where that is not finite); the reset passes
/// `1 - z` to `v_dec` and `v_reset - v_dec` (zero where `v_dec` is not finite) to `z`;
/// `a_new = a_dec + z*a_spike` passes `a_spike` to `z`. These are the reference path's
/// derivatives, which are norse's.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn update_backward<F: Real, const FMA: bool>(
    c: &Coef<F>,
    method: SurrogateMethod,
    alpha: F,
    v: F,
    i_jump: F,
    a: F,
    gz: F,
    gv: F,
    gi: F,
    ga: F,
) -> StepGrad<F> {
    let (v_dec, e, capped) = membrane::<F, FMA>(c, v, i_jump, a);
    let s = v_dec - c.v_spike;
    let spike = s > F::ZERO;
    let jump = sel(v_dec.is_finite(), c.v_reset - v_dec, F::ZERO);
    let gz_total = gz + ga * c.a_spike + gv * jump;
    let g_s = sel(
        s.is_finite(),
        gz_total * surrogate::<F, FMA>(method, alpha, s),
        F::ZERO,
    );
    let g_vdec = sel(spike, F::ZERO, gv) + g_s;
    // v_dec = v + bracket*c_mem, bracket = ((v_leak - v) + delta_T*e) + i_jump - a
    let g_bracket = g_vdec * c.c_mem;
    let g_exp = sel(capped, F::ZERO, g_bracket * e);
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
                    exp_f32::<true>(x)
                } else {
                    exp_f32::<false>(x)
                } as f64;
                let want = (x as f64).exp();
                let rel = ((got - want) / want).abs();
                worst = worst.max(rel);
            }
            x += 0.001_37;
        }
        assert!(worst < 2.4e-7, "max relative error {worst}");
        assert!(exp_f32::<false>(f32::NAN).is_nan());
        assert_eq!(exp_f32::<true>(0.0), 1.0);
        assert!(exp_f32::<false>(-1e30) > 0.0);
        assert!(exp_f32::<false>(88.0).is_finite());
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
