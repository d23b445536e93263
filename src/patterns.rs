//! The classic AdEx firing patterns as parameter presets in norse's dimensionless units, their
//! response to a current step, and the spike-train features that tell them apart.
//!
//! **Source.** The presets are the parameter sets of Naud, Marcille, Clopath & Gerstner (2008),
//! "Firing patterns in the adaptive exponential integrate-and-fire model", Biol. Cybern. 99,
//! Table 1 (C, g_L, E_L, V_T, Δ_T, a, τ_w, b, V_r and the step current I), rescaled by
//! [`NaudParameters::to_adex`]: potentials as `(V - E_L) / (V_T - E_L)` (so `v_leak = 0` and
//! `v_th = 1`, norse's defaults), currents (input and adaptation) divided by
//! `g_L (V_T - E_L)`, `tau_mem_inv = g_L / C`, `tau_ada_inv = 1 / τ_w`,
//! `adaptation_current = a / g_L`, `adaptation_spike = b / (g_L (V_T - E_L))`.
//!
//! **Spike cutoff.** These patterns need the standard AdEx cutoff `v_peak` (here
//! `V_T + 5 Δ_T`, as in Brian2's AdEx examples): norse's rule spikes at `v_th`, before the
//! exponential upswing that shapes bursts and delays, and would turn every preset into a plain
//! adapting neuron. The input reaches the membrane directly: `tau_syn_inv = 1 / dt`, so the
//! synaptic current of norse's model decays within the step it arrives.
//!
//! ```
//! use candle_adex::patterns::{Pattern, StepProtocol};
//! let response = Pattern::Adapting.step_response(&StepProtocol::default())?;
//! let f = response.features();
//! assert!(f.spikes >= 5 && f.last_isi.unwrap() > 3.0 * f.first_isi.unwrap());
//! # Ok::<(), candle_core::Error>(())
//! ```

use crate::params::AdexParameters;
use crate::state::FeedForwardState;
use candle_core::{bail, DType, Device, Result, Tensor};

/// An AdEx neuron in physical units (Naud et al. 2008, Table 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NaudParameters {
    /// Membrane capacitance C (pF).
    pub c: f64,
    /// Leak conductance g_L (nS).
    pub g_l: f64,
    /// Leak reversal E_L (mV).
    pub e_l: f64,
    /// Threshold slope factor centre V_T (mV).
    pub v_t: f64,
    /// Slope factor Δ_T (mV).
    pub delta_t: f64,
    /// Subthreshold adaptation a (nS).
    pub a: f64,
    /// Adaptation time constant τ_w (ms).
    pub tau_w: f64,
    /// Spike-triggered adaptation b (pA).
    pub b: f64,
    /// Reset potential V_r (mV).
    pub v_r: f64,
    /// Step current I (pA) of the published figure.
    pub i: f64,
}

impl NaudParameters {
    /// The voltage scale `V_T - E_L` (mV) of the rescaling.
    fn scale(&self) -> f64 {
        self.v_t - self.e_l
    }

    /// The same neuron in norse's dimensionless units (see the module docs), integrated with
    /// step `dt` seconds, and its step current in those units.
    ///
    /// ```
    /// use candle_adex::patterns::Pattern;
    /// let (p, current) = Pattern::Tonic.naud().to_adex(1e-4);
    /// assert_eq!(p.v_th.values()?, [1.0]);
    /// assert!((current - 2.5).abs() < 1e-12); // 500 pA / (10 nS * 20 mV)
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn to_adex(&self, dt: f64) -> (AdexParameters, f64) {
        let s = self.scale();
        let volts = |v: f64| (v - self.e_l) / s;
        let p = AdexParameters {
            adaptation_current: (self.a / self.g_l).into(),
            adaptation_spike: (self.b / (self.g_l * s)).into(),
            delta_t: (self.delta_t / s).into(),
            tau_ada_inv: (1e3 / self.tau_w).into(),
            tau_syn_inv: (1.0 / dt).into(),
            tau_mem_inv: (1e3 * self.g_l / self.c).into(),
            v_leak: 0.0.into(),
            v_th: 1.0.into(),
            v_reset: volts(self.v_r).into(),
            v_peak: Some(volts(self.v_t + 5.0 * self.delta_t).into()),
            dt,
            ..Default::default()
        };
        (p, self.i / (self.g_l * s))
    }
}

/// The firing patterns of Naud et al. (2008) that the AdEx model reproduces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Regular spiking at a constant rate.
    Tonic,
    /// Spike-frequency adaptation: intervals lengthen.
    Adapting,
    /// A short burst at onset, then regular spikes.
    InitialBurst,
    /// Regular bursts separated by long pauses.
    Bursting,
    /// Irregular intervals (subthreshold resonance, `a < 0`).
    Irregular,
    /// A few spikes at onset, then silence.
    Transient,
    /// A delayed first spike, then accelerating spikes (`a < 0`).
    Delayed,
}

impl Pattern {
    /// Every pattern, in the order of the figure.
    pub const ALL: [Pattern; 7] = [
        Pattern::Tonic,
        Pattern::Adapting,
        Pattern::InitialBurst,
        Pattern::Bursting,
        Pattern::Irregular,
        Pattern::Transient,
        Pattern::Delayed,
    ];

    /// The preset's name (`tonic`, `adapting`, `initial-burst`, `bursting`, `irregular`,
    /// `transient`, `delayed`).
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Tonic => "tonic",
            Pattern::Adapting => "adapting",
            Pattern::InitialBurst => "initial-burst",
            Pattern::Bursting => "bursting",
            Pattern::Irregular => "irregular",
            Pattern::Transient => "transient",
            Pattern::Delayed => "delayed",
        }
    }

    /// The pattern called `name` (see [`name`](Self::name)); the error lists the valid names.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|p| p.name()).collect();
                candle_core::Error::Msg(format!(
                    "unknown firing pattern {name:?} (expected one of {})",
                    names.join(", ")
                ))
            })
    }

    /// The published parameters (Naud et al. 2008, Table 1; "delayed" is their delayed
    /// accelerating cell, "bursting" their regular bursting one).
    pub fn naud(self) -> NaudParameters {
        let n = |c, g_l, e_l, a, tau_w, b, v_r, i| NaudParameters {
            c,
            g_l,
            e_l,
            v_t: -50.0,
            delta_t: 2.0,
            a,
            tau_w,
            b,
            v_r,
            i,
        };
        match self {
            Pattern::Tonic => n(200.0, 10.0, -70.0, 2.0, 30.0, 0.0, -58.0, 500.0),
            Pattern::Adapting => n(200.0, 12.0, -70.0, 2.0, 300.0, 60.0, -58.0, 500.0),
            Pattern::InitialBurst => n(130.0, 18.0, -58.0, 4.0, 150.0, 120.0, -50.0, 400.0),
            Pattern::Bursting => n(200.0, 10.0, -58.0, 2.0, 120.0, 100.0, -46.0, 210.0),
            Pattern::Irregular => n(100.0, 12.0, -60.0, -11.0, 130.0, 30.0, -48.0, 160.0),
            Pattern::Transient => n(100.0, 10.0, -65.0, 10.0, 90.0, 100.0, -47.0, 180.0),
            Pattern::Delayed => n(200.0, 12.0, -70.0, -10.0, 300.0, 0.0, -58.0, 300.0),
        }
    }

    /// The response of one neuron with this preset to [`StepProtocol`].
    pub fn step_response(self, protocol: &StepProtocol) -> Result<StepResponse> {
        let (p, current) = self.naud().to_adex(protocol.dt);
        step_response(&p, current, protocol)
    }
}

/// A current step: zero for `onset` seconds, then the preset's current (times `gain`) until
/// `duration`, integrated with step `dt` in f64 on the CPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepProtocol {
    /// Euler step (s); default 0.1 ms.
    pub dt: f64,
    /// Total simulated time (s); default 0.5 s.
    pub duration: f64,
    /// Step onset (s); default 50 ms.
    pub onset: f64,
    /// Factor on the preset's current; default 1.
    pub gain: f64,
}

impl Default for StepProtocol {
    fn default() -> Self {
        Self {
            dt: 1e-4,
            duration: 0.5,
            onset: 0.05,
            gain: 1.0,
        }
    }
}

/// What one neuron did under a current step.
#[derive(Clone, Debug)]
pub struct StepResponse {
    /// Euler step (s).
    pub dt: f64,
    /// Step onset (s).
    pub onset: f64,
    /// The input current per step (dimensionless).
    pub input: Vec<f64>,
    /// Membrane potential after each step (reset values after spikes).
    pub v: Vec<f64>,
    /// Adaptation current after each step.
    pub a: Vec<f64>,
    /// Spike times (s from the start).
    pub spike_times: Vec<f64>,
}

/// Simulates one neuron with parameters `p` under a step of `current` (dimensionless), as
/// [`StepProtocol`] says (the parameters' own `dt` is replaced by the protocol's).
pub fn step_response(
    p: &AdexParameters,
    current: f64,
    protocol: &StepProtocol,
) -> Result<StepResponse> {
    let StepProtocol {
        dt,
        duration,
        onset,
        gain,
    } = *protocol;
    if !(dt > 0.0 && duration > dt && (0.0..duration).contains(&onset)) {
        bail!(
            "step protocol needs dt > 0, duration > dt and 0 <= onset < duration, got {protocol:?}"
        );
    }
    let p = AdexParameters { dt, ..p.clone() };
    let steps = (duration / dt).round() as usize;
    let input: Vec<f64> = (0..steps)
        .map(|k| {
            if k as f64 * dt >= onset {
                current * gain
            } else {
                0.0
            }
        })
        .collect();
    let dev = Device::Cpu;
    let xs = Tensor::from_vec(input.clone(), (steps, 1), &dev)?;
    let s0 = FeedForwardState::initial(&p, 1, DType::F64, &dev)?;
    let out = crate::ops::lif_adex_feed_forward_seq(&xs, &s0, &p, true)?;
    let rec = out.recorded.expect("recorded");
    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f64>();
    let z = flat(&out.spikes)?;
    Ok(StepResponse {
        dt,
        onset,
        input,
        v: flat(&rec.v)?,
        a: flat(&rec.a)?,
        spike_times: z
            .iter()
            .enumerate()
            .filter(|(_, &z)| z > 0.0)
            .map(|(k, _)| (k + 1) as f64 * dt)
            .collect(),
    })
}

/// Features of a spike train that tell the patterns apart (intervals in ms).
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// Number of spikes.
    pub spikes: usize,
    /// Time from the step onset to the first spike (ms).
    pub latency: Option<f64>,
    /// The first inter-spike interval (ms).
    pub first_isi: Option<f64>,
    /// The last inter-spike interval (ms).
    pub last_isi: Option<f64>,
    /// The shortest interval (ms).
    pub min_isi: Option<f64>,
    /// The longest interval (ms).
    pub max_isi: Option<f64>,
    /// Coefficient of variation of the intervals.
    pub cv: Option<f64>,
    /// Time of the last spike after the onset (ms).
    pub last_spike: Option<f64>,
}

impl StepResponse {
    /// The inter-spike intervals (ms).
    pub fn isis(&self) -> Vec<f64> {
        self.spike_times
            .windows(2)
            .map(|w| 1e3 * (w[1] - w[0]))
            .collect()
    }

    /// The spike-train features.
    pub fn features(&self) -> Features {
        let isi = self.isis();
        let fold = |f: fn(f64, f64) -> f64| isi.iter().copied().reduce(f);
        let cv = (isi.len() >= 2).then(|| {
            let mean = isi.iter().sum::<f64>() / isi.len() as f64;
            let var = isi.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / isi.len() as f64;
            var.sqrt() / mean
        });
        Features {
            spikes: self.spike_times.len(),
            latency: self.spike_times.first().map(|t| 1e3 * (t - self.onset)),
            first_isi: isi.first().copied(),
            last_isi: isi.last().copied(),
            min_isi: fold(f64::min),
            max_isi: fold(f64::max),
            cv,
            last_spike: self.spike_times.last().map(|t| 1e3 * (t - self.onset)),
        }
    }
}

/// Firing rate (Hz) of one neuron with parameters `p` against each constant input current in
/// `currents` (dimensionless, as norse's input `x`), after discarding the first `transient`
/// seconds of `duration`; all currents run at once, one neuron each (f64, fused path on the
/// CPU).
///
/// ```
/// use candle_adex::{patterns::fi_curve, AdexParameters};
/// let rates = fi_curve(&AdexParameters::default(), &[0.0, 0.5, 1.0, 2.0], 1.0, 0.2)?;
/// assert_eq!(rates[0], 0.0);
/// assert!(rates[1] <= rates[2] && rates[2] < rates[3]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn fi_curve(
    p: &AdexParameters,
    currents: &[f64],
    duration: f64,
    transient: f64,
) -> Result<Vec<f64>> {
    if !(duration > p.dt && (0.0..duration).contains(&transient)) {
        bail!("fi_curve needs duration > dt and 0 <= transient < duration, got duration {duration}, transient {transient}");
    }
    if currents.is_empty() {
        return Ok(vec![]);
    }
    let n = currents.len();
    let steps = (duration / p.dt).round() as usize;
    let skip = (transient / p.dt).round() as usize;
    if skip >= steps {
        bail!(
            "fi_curve: the transient ({transient} s) leaves no step of the {duration} s to count"
        );
    }
    let dev = Device::Cpu;
    let xs = Tensor::from_vec(currents.to_vec(), (1, n), &dev)?.repeat((steps, 1))?;
    let s0 = FeedForwardState::initial(p, n, DType::F64, &dev)?;
    let out = crate::ops::lif_adex_feed_forward_seq(&xs, &s0, p, false)?;
    let counts = out.spikes.narrow(0, skip, steps - skip)?.sum(0)?;
    let seconds = (steps - skip) as f64 * p.dt;
    Ok(counts
        .to_vec1::<f64>()?
        .into_iter()
        .map(|c| c / seconds)
        .collect())
}
