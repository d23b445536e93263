//! Layer 5b: the storage types of the fused CPU kernels and their conversions to the compute
//! precision, written as branch-free integer/float code so that they vectorize inside the
//! kernels' instruction-set contexts (`half`'s own conversions check the CPU per element unless
//! F16C is enabled for the whole build, and then do not vectorize).

use super::cpu::Erase;
use super::math::Real;
use candle_core::WithDType;
use half::{bf16, f16};

/// A dtype the kernels read and write. `F` is the precision it is computed in.
pub(crate) trait Elem: WithDType + Erase + Copy + Send + Sync + 'static {
    type F: Real + Erase;
    /// The value 0, exactly.
    const NIL: Self;
    fn to_f(self) -> Self::F;
    /// Only ever given 0 or 1 for `u8`.
    fn from_f(x: Self::F) -> Self;
}

/// A compute precision that is also a storage type (f32, f64): what the backward kernel reads
/// and writes.
pub(crate) trait Compute: Real + Elem<F = Self> {}
impl<T: Real + Elem<F = T>> Compute for T {}

macro_rules! elem {
    ($t:ty, $f:ty, $nil:expr, |$x:ident| $to:expr, |$y:ident| $from:expr) => {
        impl Elem for $t {
            type F = $f;
            const NIL: Self = $nil;
            #[inline(always)]
            fn to_f(self) -> $f {
                let $x = self;
                $to
            }
            #[inline(always)]
            fn from_f($y: $f) -> Self {
                $from
            }
        }
    };
}

elem!(f32, f32, 0.0, |x| x, |y| y);
elem!(f64, f64, 0.0, |x| x, |y| y);
elem!(u8, f32, 0, |x| x as f32, |y| (y != 0.0) as u8);
elem!(
    bf16,
    f32,
    bf16::ZERO,
    |x| f32::from_bits((x.to_bits() as u32) << 16),
    |y| bf16::from_bits(f32_to_bf16_bits(y))
);
elem!(f16, f32, f16::ZERO, |x| f16_bits_to_f32(x.to_bits()), |y| {
    f16::from_bits(f32_to_f16_bits(y))
});

/// f32 to bf16 bits, rounding to nearest even; NaN stays a (quiet) NaN.
#[inline(always)]
pub(crate) fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b >> 16) | 0x40;
    (if x.is_nan() { nan } else { rounded }) as u16
}

/// f16 bits to f32, exactly: normal and subnormal numbers by one multiplication that rebiases
/// the exponent, infinities and NaN by setting the exponent field.
#[inline(always)]
pub(crate) fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    // 2^112 = 2^(127 - 15): moves an f16 exponent into the f32 range.
    let scaled = f32::from_bits(em << 13) * f32::from_bits(0x7780_0000);
    let special = f32::from_bits((em << 13) | 0x7f80_0000);
    let mag = if em >= 0x7c00 { special } else { scaled };
    f32::from_bits(mag.to_bits() | sign)
}

/// f32 to f16 bits, rounding to nearest even, with overflow to infinity, subnormals and NaN
/// (quiet) handled without branches.
#[inline(always)]
pub(crate) fn f32_to_f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = (b >> 16) & 0x8000;
    let a = b & 0x7fff_ffff;
    // Too large (including inf) or NaN.
    let big = if a > 0x7f80_0000 { 0x7e00 } else { 0x7c00 };
    // Subnormal results: adding 0.5 (as a float with the right exponent) rounds the mantissa
    // in the FPU; the low bits then hold the f16 pattern.
    let denorm_magic = f32::from_bits(((127 - 15) + (23 - 10) + 1) << 23);
    let sub = (f32::from_bits(a) + denorm_magic)
        .to_bits()
        .wrapping_sub(denorm_magic.to_bits());
    // Normal results: rebias the exponent and round to nearest even.
    let mant_odd = (a >> 13) & 1;
    let norm = (a
        .wrapping_add(((15u32).wrapping_sub(127) << 23).wrapping_add(0xfff))
        .wrapping_add(mant_odd))
        >> 13;
    let out = if a >= 0x4780_0000 {
        big
    } else if a < 0x3880_0000 {
        sub
    } else {
        norm
    };
    (out | sign) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversions_match_half_exactly() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#x}"
            );
        }
        let mut b = 0u32;
        loop {
            let x = f32::from_bits(b);
            let want = f16::from_f32(x);
            let got = f16::from_bits(f32_to_f16_bits(x));
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{x:e} ({b:#x}): {got} vs {want}"
            );
            match b.checked_add(4093) {
                Some(n) => b = n,
                None => break,
            }
        }
    }

    #[test]
    fn bf16_conversions_match_half_exactly() {
        for h in 0..=u16::MAX {
            let want = bf16::from_bits(h).to_f32();
            let got = bf16::from_bits(h).to_f();
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
        }
        let mut b = 0u32;
        loop {
            let x = f32::from_bits(b);
            let want = bf16::from_f32(x);
            let got = bf16::from_f(x);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{x:e}"
            );
            match b.checked_add(4093) {
                Some(n) => b = n,
                None => break,
            }
        }
    }
}
