//! Layer 1: the spike threshold and its surrogate gradients.
//!
//! The forward pass of every method is the Heaviside step `x > 0` (strict; NaN gives 0). The
//! backward pass replaces the step's zero derivative by a smooth pseudo-derivative `g(x)`,
//! exactly as norse's `threshold(x, method, alpha)`:
//!
//! | method | `g(x)` |
//! |---|---|
//! | `super` | `1 / (alpha*|x| + 1)^2` (SuperSpike) |
//! | `triangle` | `alpha * relu(1 - |x|)` |
//! | `tanh` | `1 - tanh(alpha*x)^2` |
//! | `circ` | `alpha^3 / (alpha^2 + x^2)^1.5` |
//! | `heavi_erfc` | `2 * exp(-(alpha*x)^2) / sqrt(pi)` |
//! | `heaviside` | none: no gradient flows through the spike |
//!
//! norse 1.1.0 ignores `alpha` for `super` (it uses 1); this crate uses the documented formula,
//! and the conformance suite replays norse's `super` cases with `alpha = 1`.
//!
//! The threshold is built from plain candle ops, so it works on every device and float dtype and
//! records itself for `backward()`: `z = H(x) + (x*g - detach(x*g))`. The bracket is exactly zero
//! in value (a finite number minus itself) and has derivative `g(x)` with respect to `x`.
//! Non-finite `x` gets a zero gradient (norse gives NaN for `x = NaN`, and for `circ` at
//! `|x| >= ~1.8e19` in f32, where its formula divides infinity by infinity).

use candle_core::{DType, Result, Tensor};
use std::fmt;
use std::str::FromStr;

/// The surrogate-gradient method of the spike threshold (norse's `method` string).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SurrogateMethod {
    /// `super`: SuperSpike, `1/(alpha*|x|+1)^2` (norse's default).
    #[default]
    Super,
    /// `triangle`: `alpha * relu(1 - |x|)`.
    Triangle,
    /// `tanh`: `1 - tanh(alpha*x)^2`.
    Tanh,
    /// `circ`: `alpha^3 / (alpha^2 + x^2)^1.5`.
    Circ,
    /// `heavi_erfc`: `2 exp(-(alpha x)^2) / sqrt(pi)`.
    HeaviErfc,
    /// `heaviside`: no surrogate; the spike passes no gradient.
    Heaviside,
}

impl SurrogateMethod {
    /// All methods, in norse's documentation order.
    pub const ALL: [SurrogateMethod; 6] = [
        SurrogateMethod::Super,
        SurrogateMethod::Triangle,
        SurrogateMethod::Tanh,
        SurrogateMethod::Circ,
        SurrogateMethod::HeaviErfc,
        SurrogateMethod::Heaviside,
    ];

    /// norse's name of the method (`"super"`, `"heavi_erfc"`, ...).
    ///
    /// ```
    /// use candle_adex::SurrogateMethod;
    /// assert_eq!(SurrogateMethod::HeaviErfc.name(), "heavi_erfc");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            SurrogateMethod::Super => "super",
            SurrogateMethod::Triangle => "triangle",
            SurrogateMethod::Tanh => "tanh",
            SurrogateMethod::Circ => "circ",
            SurrogateMethod::HeaviErfc => "heavi_erfc",
            SurrogateMethod::Heaviside => "heaviside",
        }
    }
}

impl fmt::Display for SurrogateMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error from parsing a method name that norse does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownMethod(pub String);

impl fmt::Display for UnknownMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = SurrogateMethod::ALL.iter().map(|m| m.name()).collect();
        write!(
            f,
            "unknown surrogate method {:?}: valid methods are {}",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownMethod {}

impl FromStr for SurrogateMethod {
    type Err = UnknownMethod;

    /// Parses norse's method strings.
    ///
    /// ```
    /// use candle_adex::SurrogateMethod;
    /// assert_eq!("circ".parse::<SurrogateMethod>().unwrap(), SurrogateMethod::Circ);
    /// let err = "sigmoid".parse::<SurrogateMethod>().unwrap_err().to_string();
    /// assert!(err.contains("super, triangle, tanh, circ, heavi_erfc, heaviside"));
    /// ```
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        SurrogateMethod::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMethod(s.to_string()))
    }
}

/// The pseudo-derivative `g(x)` of `method` (see the module table), elementwise, or `None` for
/// `heaviside`. `x` must be a float tensor; the result has its dtype and shape.
///
/// ```
/// use candle_adex::{surrogate::surrogate_derivative, SurrogateMethod};
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[0f64, 0.5], &Device::Cpu)?;
/// let g = surrogate_derivative(&x, SurrogateMethod::Triangle, 2.0)?.unwrap();
/// assert_eq!(g.to_vec1::<f64>()?, [2.0, 1.0]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn surrogate_derivative(
    x: &Tensor,
    method: SurrogateMethod,
    alpha: f64,
) -> Result<Option<Tensor>> {
    let g = match method {
        SurrogateMethod::Super => x.abs()?.affine(alpha, 1.0)?.sqr()?.recip()?,
        SurrogateMethod::Triangle => (x.abs()?.affine(-1.0, 1.0)?.relu()? * alpha)?,
        SurrogateMethod::Tanh => (x * alpha)?.tanh()?.sqr()?.affine(-1.0, 1.0)?,
        SurrogateMethod::Circ => {
            let t = (x.sqr()? + alpha * alpha)?;
            ((&t * t.sqrt()?)?.recip()? * alpha.powi(3))?
        }
        SurrogateMethod::HeaviErfc => {
            ((x * alpha)?.sqr()?.neg()?.exp()? * (2.0 / std::f64::consts::PI.sqrt()))?
        }
        SurrogateMethod::Heaviside => return Ok(None),
    };
    Ok(Some(g))
}

/// Largest finite value of a float dtype (as f64), used for finiteness masks.
pub(crate) fn max_finite(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => half::f16::MAX.to_f64(),
        DType::BF16 => half::bf16::MAX.to_f64(),
        DType::F32 => f32::MAX as f64,
        _ => f64::MAX,
    }
}

/// `1` where `x` is finite, `0` where it is ±inf or NaN (u8 mask).
pub(crate) fn finite_mask(x: &Tensor) -> Result<Tensor> {
    x.abs()?.le(max_finite(x.dtype()))
}

/// `value + (carrier - detach(carrier))`: the value of `value`, with `carrier`'s gradient added.
/// `carrier` must be finite, so that the bracket is exactly zero.
pub(crate) fn straight_through(value: &Tensor, carrier: &Tensor) -> Result<Tensor> {
    value + (carrier - carrier.detach())?
}

/// The spike threshold: forward `x > 0` as 0/1 in `x`'s dtype, backward `dy * g(x)`.
///
/// ```
/// use candle_adex::{surrogate::threshold, SurrogateMethod};
/// use candle_core::{Device, Var};
/// let x = Var::new(&[-0.5f64, 0.0, 0.25], &Device::Cpu)?;
/// let z = threshold(x.as_tensor(), SurrogateMethod::Super, 1.0)?;
/// assert_eq!(z.to_vec1::<f64>()?, [0.0, 0.0, 1.0]);
/// let grads = z.sum_all()?.backward()?;
/// let dx = grads.get(&x).unwrap().to_vec1::<f64>()?;
/// assert_eq!(dx, [1.0 / 2.25, 1.0, 1.0 / 1.5625]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn threshold(x: &Tensor, method: SurrogateMethod, alpha: f64) -> Result<Tensor> {
    threshold_with_mask(x, method, alpha).map(|(z, _)| z)
}

/// [`threshold`], also returning the spike mask (`u8`, 1 where `x > 0`).
pub(crate) fn threshold_with_mask(
    x: &Tensor,
    method: SurrogateMethod,
    alpha: f64,
) -> Result<(Tensor, Tensor)> {
    let mask = x.gt(0.0)?;
    let h = mask.to_dtype(x.dtype())?;
    if !x.track_op() {
        return Ok((h, mask));
    }
    let x_finite = finite_mask(x)?.where_cond(x, &x.zeros_like()?)?;
    let Some(g) = surrogate_derivative(&x_finite.detach(), method, alpha)? else {
        return Ok((h, mask));
    };
    let z = straight_through(&h, &(x_finite * g)?)?;
    Ok((z, mask))
}
