//! Layer 2: the AdEx parameters, their norse defaults and their validation.
//!
//! [`AdexParameters`] mirrors norse's `LIFAdExParameters` (plus `dt`, which norse passes
//! separately, and the optional spike cutoff `v_peak`). Every numeric field is a [`Param`]: a
//! scalar or a tensor of shape `[]` or `[N]` that broadcasts over the last (neuron) dimension,
//! as in norse. A tensor parameter that is a [`candle_core::Var`] receives gradients.

use crate::surrogate::SurrogateMethod;
use candle_core::{bail, DType, Device, Result, Tensor};

/// norse's names of the parameters, in the order of [`AdexParameters`]' fields: the nine numeric
/// ones (a number, or one value per neuron; see [`AdexParameters::numeric_mut`]), then `v_peak`,
/// `method`, `alpha` and `dt`. The one list of names that parameter files (feature `serde`),
/// the `adex` command and the conformance reader use.
pub const PARAMETER_NAMES: [&str; 13] = [
    "adaptation_current",
    "adaptation_spike",
    "delta_T",
    "tau_ada_inv",
    "tau_syn_inv",
    "tau_mem_inv",
    "v_leak",
    "v_th",
    "v_reset",
    "v_peak",
    "method",
    "alpha",
    "dt",
];

/// One numeric parameter: a scalar, or a tensor `[]` / `[N]` (per neuron).
#[derive(Clone, Debug)]
pub enum Param {
    /// The same value for every neuron; computed in the state's precision.
    Scalar(f64),
    /// A 0-d or `[N]` tensor of any float dtype, on the state's device. Scalar products with
    /// `dt` are formed in the tensor's own dtype before conversion, as torch does.
    Tensor(Tensor),
}

impl From<f64> for Param {
    fn from(v: f64) -> Self {
        Param::Scalar(v)
    }
}

impl From<f32> for Param {
    fn from(v: f32) -> Self {
        Param::Scalar(v as f64)
    }
}

impl From<Tensor> for Param {
    fn from(t: Tensor) -> Self {
        Param::Tensor(t)
    }
}

impl From<&Tensor> for Param {
    fn from(t: &Tensor) -> Self {
        Param::Tensor(t.clone())
    }
}

impl Param {
    /// The number of neurons this parameter is specific to: `None` for a scalar or 0-d tensor.
    ///
    /// ```
    /// use candle_adex::Param;
    /// use candle_core::{Device, Tensor};
    /// assert_eq!(Param::from(1.0).per_neuron_len(), None);
    /// let t = Tensor::new(&[1f32, 2., 3.], &Device::Cpu)?;
    /// assert_eq!(Param::from(t).per_neuron_len(), Some(3));
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn per_neuron_len(&self) -> Option<usize> {
        match self {
            Param::Tensor(t) if t.rank() == 1 => Some(t.dims()[0]),
            _ => None,
        }
    }

    /// The values as f64 (one for a scalar or 0-d tensor), copied to the host.
    pub fn values(&self) -> Result<Vec<f64>> {
        match self {
            Param::Scalar(v) => Ok(vec![*v]),
            Param::Tensor(t) => t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>(),
        }
    }

    /// The parameter as a tensor of `dtype` on `device`, shape `[]` or `[N]`.
    ///
    /// `dt_scale`, when given, multiplies the parameter by `dt` *before* the conversion, in the
    /// parameter's own precision: torch forms `dt * p.tau_mem_inv` in the parameter's dtype (a
    /// Python float times a float32 tensor stays float32), so an f64 state with float32
    /// parameters sees float32-rounded coefficients, and so does this crate.
    pub(crate) fn tensor(
        &self,
        dtype: DType,
        device: &Device,
        dt_scale: Option<f64>,
    ) -> Result<Tensor> {
        match self {
            Param::Scalar(v) => {
                let t = Tensor::new(*v, device)?.to_dtype(dtype)?;
                match dt_scale {
                    Some(dt) => t * dt,
                    None => Ok(t),
                }
            }
            Param::Tensor(t) => {
                let own = match t.dtype() {
                    DType::F16 | DType::BF16 => t.to_dtype(DType::F32)?,
                    DType::F32 | DType::F64 => t.clone(),
                    other => t.to_dtype(if other == DType::I64 || other == DType::U32 {
                        DType::F64
                    } else {
                        DType::F32
                    })?,
                };
                let own = match dt_scale {
                    Some(dt) => (own * dt)?,
                    None => own,
                };
                own.to_dtype(dtype)
            }
        }
    }
}

/// Parameters of the AdEx neuron, norse's `LIFAdExParameters` plus `dt` and `v_peak`.
///
/// Defaults are norse 1.1.0's, in its dimensionless units (time in seconds, so
/// `tau_mem_inv = 100` is a 10 ms membrane time constant):
///
/// | field | norse name | default |
/// |---|---|---|
/// | `adaptation_current` | `adaptation_current` | 4 |
/// | `adaptation_spike` | `adaptation_spike` | 0.02 |
/// | `delta_t` | `delta_T` | 0.5 |
/// | `tau_ada_inv` | `tau_ada_inv` | 2 |
/// | `tau_syn_inv` | `tau_syn_inv` | 200 |
/// | `tau_mem_inv` | `tau_mem_inv` | 100 |
/// | `v_leak` | `v_leak` | 0 |
/// | `v_th` | `v_th` | 1 |
/// | `v_reset` | `v_reset` | 0 |
/// | `v_peak` | (extension) | `None` |
/// | `method` | `method` | `super` |
/// | `alpha` | `alpha` | 100 |
/// | `dt` | (argument `dt`) | 0.001 |
///
/// `v_peak = None` is norse's rule: a spike is `v_dec > v_th`. With `Some(v_peak)` a spike is
/// `v_dec > v_peak` while the exponential stays centred on `v_th` (the standard AdEx of Brette &
/// Gerstner, Brian2 and NEST), and the surrogate sees `v_dec - v_peak`.
///
/// ```
/// use candle_adex::{AdexParameters, SurrogateMethod};
/// let p = AdexParameters { method: SurrogateMethod::Tanh, alpha: 5.0, ..Default::default() };
/// p.validate()?;
/// let bad = AdexParameters { delta_t: (-0.5).into(), ..Default::default() };
/// assert!(bad.validate().unwrap_err().to_string().contains("delta_T"));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct AdexParameters {
    /// Subthreshold adaptation coupling `a_current` (norse `adaptation_current`).
    pub adaptation_current: Param,
    /// Spike-triggered adaptation increment (norse `adaptation_spike`).
    pub adaptation_spike: Param,
    /// Sharpness of the exponential, `> 0` (norse `delta_T`).
    pub delta_t: Param,
    /// Inverse adaptation time constant, `>= 0`.
    pub tau_ada_inv: Param,
    /// Inverse synaptic time constant, `>= 0`.
    pub tau_syn_inv: Param,
    /// Inverse membrane time constant, `>= 0`.
    pub tau_mem_inv: Param,
    /// Leak (resting) potential.
    pub v_leak: Param,
    /// Threshold potential: the centre of the exponential, and the spike threshold unless
    /// `v_peak` is set.
    pub v_th: Param,
    /// Potential after a spike.
    pub v_reset: Param,
    /// Optional spike cutoff (see the type's docs); `None` is norse's rule.
    pub v_peak: Option<Param>,
    /// Surrogate-gradient method of the threshold.
    pub method: SurrogateMethod,
    /// Surrogate-gradient sharpness, finite and `> 0`.
    pub alpha: f64,
    /// Euler time step, finite and `> 0`.
    pub dt: f64,
}

impl Default for AdexParameters {
    fn default() -> Self {
        AdexParameters {
            adaptation_current: Param::Scalar(4.0),
            adaptation_spike: Param::Scalar(0.02),
            delta_t: Param::Scalar(0.5),
            tau_ada_inv: Param::Scalar(2.0),
            tau_syn_inv: Param::Scalar(200.0),
            tau_mem_inv: Param::Scalar(100.0),
            v_leak: Param::Scalar(0.0),
            v_th: Param::Scalar(1.0),
            v_reset: Param::Scalar(0.0),
            v_peak: None,
            method: SurrogateMethod::Super,
            alpha: 100.0,
            dt: 0.001,
        }
    }
}

/// The rule a numeric field must obey.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rule {
    Finite,
    Positive,
    NonNegative,
}

impl AdexParameters {
    /// The numeric fields with their norse names and rules (`v_peak` included when set).
    fn fields(&self) -> impl Iterator<Item = (&'static str, &Param, Rule)> {
        use Rule::{Finite, NonNegative, Positive};
        let rules = [
            Finite,
            Finite,
            Positive,
            NonNegative,
            NonNegative,
            NonNegative,
            Finite,
            Finite,
            Finite,
        ];
        let values = [
            &self.adaptation_current,
            &self.adaptation_spike,
            &self.delta_t,
            &self.tau_ada_inv,
            &self.tau_syn_inv,
            &self.tau_mem_inv,
            &self.v_leak,
            &self.v_th,
            &self.v_reset,
        ];
        (0..9)
            .map(move |k| (PARAMETER_NAMES[k], values[k], rules[k]))
            .chain(
                self.v_peak
                    .as_ref()
                    .map(|v| (PARAMETER_NAMES[9], v, Finite)),
            )
    }

    /// The nine numeric parameters (all but `v_peak`), mutably, with their norse names
    /// ([`PARAMETER_NAMES`]`[..9]`).
    ///
    /// ```
    /// use candle_adex::{AdexParameters, Param};
    /// let mut p = AdexParameters::default();
    /// for (name, value) in p.numeric_mut() {
    ///     if name == "v_th" {
    ///         *value = Param::Scalar(1.5);
    ///     }
    /// }
    /// assert_eq!(p.v_th.values()?, [1.5]);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn numeric_mut(&mut self) -> [(&'static str, &mut Param); 9] {
        let n = PARAMETER_NAMES;
        [
            (n[0], &mut self.adaptation_current),
            (n[1], &mut self.adaptation_spike),
            (n[2], &mut self.delta_t),
            (n[3], &mut self.tau_ada_inv),
            (n[4], &mut self.tau_syn_inv),
            (n[5], &mut self.tau_mem_inv),
            (n[6], &mut self.v_leak),
            (n[7], &mut self.v_th),
            (n[8], &mut self.v_reset),
        ]
    }

    /// Checks every rule that does not depend on the layer size: all values finite, `delta_T > 0`,
    /// inverse time constants `>= 0`, `alpha > 0`, `dt > 0`, tensors of rank 0 or 1 with a float
    /// dtype. Errors name the field and the rule.
    pub fn validate(&self) -> Result<()> {
        for (name, value, rule) in [
            ("dt", self.dt, Rule::Positive),
            ("alpha", self.alpha, Rule::Positive),
        ] {
            check_value(name, value, rule, None)?;
        }
        for (name, param, rule) in self.fields() {
            if let Param::Tensor(t) = param {
                if t.rank() > 1 {
                    bail!(
                        "invalid AdEx parameter `{name}`: must be a scalar or a per-neuron tensor [N], got shape {:?}",
                        t.dims()
                    );
                }
                if !t.dtype().is_float() && t.dtype() != DType::I64 && t.dtype() != DType::U32 {
                    bail!(
                        "invalid AdEx parameter `{name}`: unsupported dtype {:?}",
                        t.dtype()
                    );
                }
            }
            match param {
                // The common case, checked without copying anything (this runs on every call).
                Param::Scalar(v) => check_value(name, *v, rule, None)?,
                Param::Tensor(_) => {
                    let per_neuron = param.per_neuron_len().is_some();
                    for (k, v) in param.values()?.into_iter().enumerate() {
                        check_value(name, v, rule, per_neuron.then_some(k))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// [`validate`](Self::validate), plus: every per-neuron parameter has `n` values and lives on
    /// `device`. `n` is the size of the last dimension of the state.
    pub fn validate_for(&self, n: usize, device: &Device) -> Result<()> {
        self.validate()?;
        for (name, param, _) in self.fields() {
            if let Param::Tensor(t) = param {
                if let Some(len) = param.per_neuron_len() {
                    if len != n {
                        bail!(
                            "invalid AdEx parameter `{name}`: per-neuron length {len} does not match the {n} neurons of the state (its last dimension)"
                        );
                    }
                }
                if !t.device().same_device(device) {
                    bail!(
                        "invalid AdEx parameter `{name}`: on device {:?} but the state is on {:?}",
                        t.device().location(),
                        device.location()
                    );
                }
            }
        }
        Ok(())
    }

    /// The same parameters with every tensor moved to `device`; scalars stay scalars. A
    /// [`candle_core::Var`] becomes a plain tensor there (make new `Var`s on that device to train).
    ///
    /// ```
    /// use candle_adex::AdexParameters;
    /// use candle_core::{Device, Tensor};
    /// let cpu = Device::Cpu;
    /// let p = AdexParameters { v_th: Tensor::new(&[1f32, 1.2], &cpu)?.into(), ..Default::default() };
    /// // `Device::cuda_if_available(0)?` with the `cuda` feature; here it is the CPU.
    /// let q = p.to_device(&cpu)?;
    /// q.validate_for(2, &cpu)?;
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.map_tensors(|t| t.to_device(device))
    }

    /// The same parameters with every tensor converted to `dtype` (f32, f64, f16 or bf16); scalars
    /// stay scalars, which the kernels use in the state's precision.
    ///
    /// ```
    /// use candle_adex::{AdexParameters, Param};
    /// use candle_core::{DType, Device, Tensor};
    /// let p = AdexParameters { v_th: Tensor::new(&[1f64, 1.2], &Device::Cpu)?.into(), ..Default::default() };
    /// let q = p.to_dtype(DType::F32)?;
    /// assert!(matches!(&q.v_th, Param::Tensor(t) if t.dtype() == DType::F32));
    /// assert!(p.to_dtype(DType::U8).is_err());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        check_float(dtype, format_args!("AdexParameters::to_dtype"))?;
        self.map_tensors(|t| t.to_dtype(dtype))
    }

    /// A copy with `f` applied to every tensor parameter.
    fn map_tensors(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        let mut out = self.clone();
        let o = &mut out;
        // Every numeric field of the struct (`fields` lists the same ones with their names).
        let fields = [
            &mut o.adaptation_current,
            &mut o.adaptation_spike,
            &mut o.delta_t,
            &mut o.tau_ada_inv,
            &mut o.tau_syn_inv,
            &mut o.tau_mem_inv,
            &mut o.v_leak,
            &mut o.v_th,
            &mut o.v_reset,
        ];
        for param in fields.into_iter().chain(o.v_peak.as_mut()) {
            if let Param::Tensor(t) = param {
                *t = f(t)?;
            }
        }
        Ok(out)
    }

    /// True when any numeric field is a per-neuron tensor.
    pub fn has_per_neuron(&self) -> bool {
        self.fields().any(|(_, p, _)| p.per_neuron_len().is_some())
    }
}

/// Errors unless `dtype` is one the model computes in (f32, f64, f16, bf16); `what` names the
/// caller in the message.
pub(crate) fn check_float(dtype: DType, what: std::fmt::Arguments) -> Result<()> {
    match dtype {
        DType::F16 | DType::BF16 | DType::F32 | DType::F64 => Ok(()),
        other => bail!("{what}: dtype {other:?} is not supported (use f32, f64, f16 or bf16)"),
    }
}

fn check_value(name: &str, v: f64, rule: Rule, index: Option<usize>) -> Result<()> {
    let at = index.map(|k| format!(" at neuron {k}")).unwrap_or_default();
    if !v.is_finite() {
        bail!("invalid AdEx parameter `{name}`: must be finite, got {v}{at}");
    }
    match rule {
        Rule::Positive if v <= 0.0 => {
            bail!("invalid AdEx parameter `{name}`: must be > 0, got {v}{at}")
        }
        Rule::NonNegative if v < 0.0 => {
            bail!("invalid AdEx parameter `{name}`: must be >= 0, got {v}{at}")
        }
        _ => Ok(()),
    }
}
