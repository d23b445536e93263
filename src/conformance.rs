//! Layer 8: conformance against norse's golden files.
//!
//! A golden file (format `norse-adex-golden/1`, see `tests/data/norse/MANIFEST.md`) is a
//! safetensors file with tensors `<case>/<tensor>` and a JSON `cases` entry in its metadata. Each
//! case is replayed through this crate from its stored inputs, parameters and weights, and
//! compared with norse's outputs. Cases are recognised by the function that produced them (the
//! `function` metadata), not by their names, so files with other seeds, sizes and parameters work.
//!
//! ## Errors and tolerances
//! Let `u` be the unit roundoff of the dtype (f32: 2^-24, f64: 2^-53, f16: 2^-11, bf16: 2^-8).
//! State errors are `|ours - norse| / max(1, |norse|)`, the largest over a tensor (absolute
//! below 1, relative above); gradient errors are normwise, `max|ours - norse| / max|norse|`.
//! - **Steps** (one step, and every step of a sequence replayed from norse's previous state,
//!   "teacher forcing"): `32 u`. One step rounds about ten operations; torch's `exp` and ours
//!   may differ by an ulp, and the `dt*tau` coefficients are formed exactly as torch forms them.
//!   Recurrent steps add the matrix products' summation order: `64 u * (I + N)`.
//! - **Spikes**: a flip (ours and norse's disagree) is allowed only where the potential that did
//!   not reset lies within `1e3 u * max(1, |v_th|)` of the threshold: a last-bit difference
//!   there decides the comparison. v and a are not compared where a spike flipped.
//! - **Free-running sequences**: errors before the first flip, `32 u * T`.
//! - **Surrogate gradients** (`threshold`): `16 u`. **BPTT** through T steps: `64 u * T` for f64;
//!   f32 `1e-3` (gradients through the surrogate amplify last-bit differences by `alpha`).
//! - **Low precision** (`lowp`): sequences against norse's f32 reference run: `u + 32 u_f32 * T`
//!   before the first flip (ours is the f32 computation rounded once); steps and gradients
//!   against norse's low-precision run, which rounds every intermediate: `16 u`.
//! - **norse's quirks replayed**: `super` gradient cases use `alpha = 1` (norse 1.1.0 ignores
//!   `alpha` there); `encoder_seq` runs through [`lif_adex_current_encoder_norse_1_1_0`].
//! - **Edge cases**: where norse's result is finite ours must agree; where norse gives NaN or inf,
//!   ours must be finite (a documented deviation, counted as `fixed`) unless the input itself is
//!   non-finite or the synaptic current overflowed the dtype.
//!
//! [`lif_adex_current_encoder_norse_1_1_0`]: crate::reference::lif_adex_current_encoder_norse_1_1_0

use crate::fused::RecurrentInput;
use crate::modules::{
    LifAdex, LifAdexCell, LifAdexRecurrent, LifAdexRecurrentCell, RecurrentConfig,
};
use crate::params::{AdexParameters, Param};
use crate::reference::{self, compute_dtype, StateTensors};
use crate::state::{EncoderState, FeedForwardState, RecurrentState};
use crate::surrogate::SurrogateMethod;
use candle_core::{bail, DType, Device, Result, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

/// One measured quantity of a case and the tolerance it must stay within.
#[derive(Clone, Debug)]
pub struct Measure {
    /// Short name (`v`, `flips`, `grad_input`, ...).
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// The largest allowed value; `None` for information only.
    pub tol: Option<f64>,
}

impl Measure {
    /// Whether the value is within its tolerance (always, for information only).
    ///
    /// ```
    /// use candle_adex::conformance::Measure;
    /// let m = Measure { name: "v".into(), value: 2e-7, tol: Some(1e-6) };
    /// assert!(m.passes());
    /// assert!(!Measure { value: 1.0, ..m }.passes());
    /// ```
    pub fn passes(&self) -> bool {
        match self.tol {
            Some(tol) => self.value <= tol,
            None => true,
        }
    }
}

/// The verdict of one case.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every measure is within its tolerance.
    Pass,
    /// At least one measure is out of tolerance.
    Fail,
    /// Not run, with the reason.
    Skip(String),
}

/// The result of replaying one golden case.
#[derive(Clone, Debug)]
pub struct CaseReport {
    /// The file's group (`ff_step`, `bptt`, ...).
    pub group: String,
    /// The case name.
    pub case: String,
    /// What was measured.
    pub measures: Vec<Measure>,
    /// The verdict.
    pub outcome: Outcome,
    /// Why the case could not be replayed (a malformed case), if so.
    pub error: Option<String>,
}

impl fmt::Display for CaseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match &self.outcome {
            Outcome::Pass => "PASS".to_string(),
            Outcome::Fail => "FAIL".to_string(),
            Outcome::Skip(why) => format!("SKIP ({why})"),
        };
        write!(f, "{verdict} {}/{}", self.group, self.case)?;
        for m in &self.measures {
            match m.tol {
                Some(tol) => write!(f, "  {} {:.2e} (tol {:.1e})", m.name, m.value, tol)?,
                None => write!(f, "  {} {}", m.name, fmt_info(m.value))?,
            }
        }
        if let Some(error) = &self.error {
            write!(f, "  error: {error}")?;
        }
        Ok(())
    }
}

fn fmt_info(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v}")
    } else {
        format!("{v:.2e}")
    }
}

/// A loaded golden file.
pub struct GoldenFile {
    /// Group named in the metadata.
    pub group: String,
    /// Per-case metadata (JSON objects), by case name.
    pub cases: BTreeMap<String, serde_json::Value>,
    tensors: HashMap<String, Tensor>,
}

impl GoldenFile {
    /// Reads and checks a golden file. Truncated, corrupt or foreign files give an error that
    /// says what is wrong.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| candle_core::Error::Msg(format!("cannot read {}: {e}", path.display())))?;
        Self::from_bytes(&bytes).map_err(|e| {
            candle_core::Error::Msg(format!("{}: not a usable golden file: {e}", path.display()))
        })
    }

    /// Parses a golden file from memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| candle_core::Error::Msg(format!("invalid safetensors header: {e}")))?;
        let Some(meta) = meta.metadata() else {
            bail!("no metadata: expected format norse-adex-golden/1");
        };
        match meta.get("format").map(String::as_str) {
            Some("norse-adex-golden/1") => {}
            other => bail!("format is {other:?}, expected \"norse-adex-golden/1\""),
        }
        let group = meta.get("group").cloned().unwrap_or_default();
        let cases_json = meta
            .get("cases")
            .ok_or_else(|| candle_core::Error::Msg("metadata has no `cases` entry".into()))?;
        let cases: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(cases_json).map_err(|e| {
                candle_core::Error::Msg(format!("metadata `cases` is not valid JSON: {e}"))
            })?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
            .map_err(|e| candle_core::Error::Msg(format!("invalid tensor data: {e}")))?;
        Ok(GoldenFile {
            group,
            cases,
            tensors,
        })
    }

    fn get(&self, case: &str, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(&format!("{case}/{name}"))
            .ok_or_else(|| candle_core::Error::Msg(format!("case {case} lacks tensor {name}")))
    }

    fn has(&self, case: &str, name: &str) -> bool {
        self.tensors.contains_key(&format!("{case}/{name}"))
    }

    /// Replays every case and returns one report per case.
    pub fn run(&self) -> Vec<CaseReport> {
        self.cases
            .keys()
            .map(|case| {
                let (measures, outcome, error) = match self.run_case(case) {
                    Ok(Run::Measured(m)) => {
                        let ok = m.iter().all(Measure::passes);
                        (m, if ok { Outcome::Pass } else { Outcome::Fail }, None)
                    }
                    Ok(Run::Skipped(why)) => (vec![], Outcome::Skip(why), None),
                    Err(e) => (vec![], Outcome::Fail, Some(e.to_string())),
                };
                CaseReport {
                    group: self.group.clone(),
                    case: case.clone(),
                    measures,
                    outcome,
                    error,
                }
            })
            .collect()
    }

    fn run_case(&self, case: &str) -> Result<Run> {
        let meta = &self.cases[case];
        let text = |k: &str| meta.get(k).and_then(|v| v.as_str()).unwrap_or("");
        let c = Case {
            file: self,
            name: case,
            meta,
        };
        if meta.get("module").is_some() {
            return c.module(text("module"));
        }
        if !text("status").is_empty() && text("status") != "ok" {
            return Ok(Run::Skipped(format!(
                "norse produced no data: {}",
                text("status")
            )));
        }
        let function = text("function");
        if function.contains("threshold") {
            c.threshold()
        } else if function.contains("+ autograd") {
            c.bptt()
        } else if function.starts_with("lif_adex_current_encoder") {
            c.encoder()
        } else if function.starts_with("lif_adex_step") {
            c.recurrent()
        } else if function == "lif_adex_feed_forward_step" {
            c.feed_forward(false)
        } else if function.starts_with("lif_adex_feed_forward_step") {
            c.feed_forward(true)
        } else {
            bail!("unknown case kind (function {function:?})")
        }
    }
}

enum Run {
    Measured(Vec<Measure>),
    Skipped(String),
}

/// Unit roundoff of a dtype.
fn unit_roundoff(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => f64::EPSILON / 2.0,
        DType::F16 => 2f64.powi(-11),
        DType::BF16 => 2f64.powi(-8),
        _ => f32::EPSILON as f64 / 2.0,
    }
}

fn host(t: &Tensor) -> Result<Vec<f64>> {
    t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
}

/// A state comparison: errors of v, i, a over elements whose spike agrees, and the flips.
struct StateCheck {
    v: f64,
    i: f64,
    a: f64,
    flips: usize,
    bad_flips: usize,
    fixed: usize,
    broken: usize,
}

/// The values of one case, and how to compare them.
struct Case<'a> {
    file: &'a GoldenFile,
    name: &'a str,
    meta: &'a serde_json::Value,
}

impl Case<'_> {
    fn t(&self, name: &str) -> Result<Tensor> {
        self.file.get(self.name, name).cloned()
    }

    fn has(&self, name: &str) -> bool {
        self.file.has(self.name, name)
    }

    fn scalar(&self, name: &str) -> Result<f64> {
        self.t(name)?.to_dtype(DType::F64)?.to_scalar::<f64>()
    }

    fn method(&self) -> Result<SurrogateMethod> {
        let m = self
            .meta
            .get("method")
            .and_then(|v| v.as_str())
            .unwrap_or("super");
        m.parse()
            .map_err(|e: crate::surrogate::UnknownMethod| candle_core::Error::Msg(e.to_string()))
    }

    /// The case's parameters, tensors kept in their stored dtype (so that `dt` products round as
    /// torch rounds them).
    fn params(&self) -> Result<AdexParameters> {
        let mut p = AdexParameters {
            method: self.method()?,
            alpha: self.scalar("p.alpha")?,
            dt: self.scalar("dt")?,
            ..Default::default()
        };
        for (name, field) in p.numeric_mut() {
            *field = Param::Tensor(self.t(&format!("p.{name}"))?);
        }
        Ok(p)
    }

    /// norse 1.1.0 uses `alpha = 1` for `super` whatever `alpha` says.
    fn params_as_norse_ran(&self) -> Result<AdexParameters> {
        let mut p = self.params()?;
        if p.method == SurrogateMethod::Super {
            p.alpha = 1.0;
        }
        Ok(p)
    }

    /// The threshold potential per element of a `[..., N]` tensor with `len` elements.
    fn v_th_per_element(&self, len: usize, n: usize) -> Result<Vec<f64>> {
        let v_th = host(&self.t("p.v_th")?)?;
        Ok((0..len)
            .map(|k| v_th[if v_th.len() == 1 { 0 } else { k % n }])
            .collect())
    }

    /// Compares states elementwise; see the module docs for the rules.
    fn compare(
        &self,
        ours: [&Tensor; 4],
        norse: [&Tensor; 4],
        in_domain: &[bool],
        flip_tol: f64,
    ) -> Result<StateCheck> {
        self.compare_with(ours, norse, in_domain, flip_tol, false)
    }

    /// [`compare`](Self::compare); with `replayed_divergence`, non-finite in both is agreement
    /// (norse's diverging encoder replayed on purpose).
    fn compare_with(
        &self,
        ours: [&Tensor; 4],
        norse: [&Tensor; 4],
        in_domain: &[bool],
        flip_tol: f64,
        replayed_divergence: bool,
    ) -> Result<StateCheck> {
        let n = *ours[1].dims().last().unwrap_or(&1);
        let [oz, ov, oi, oa] = [
            host(ours[0])?,
            host(ours[1])?,
            host(ours[2])?,
            host(ours[3])?,
        ];
        let [nz, nv, ni, na] = [
            host(norse[0])?,
            host(norse[1])?,
            host(norse[2])?,
            host(norse[3])?,
        ];
        let v_th = self.v_th_per_element(ov.len(), n)?;
        let mut c = StateCheck {
            v: 0.0,
            i: 0.0,
            a: 0.0,
            flips: 0,
            bad_flips: 0,
            fixed: 0,
            broken: 0,
        };
        let err = |o: f64, r: f64| (o - r).abs() / r.abs().max(1.0);
        for k in 0..ov.len() {
            let flipped = oz[k] != nz[k] && nz[k].is_finite();
            if flipped {
                c.flips += 1;
                let unreset = if nz[k] > 0.0 { ov[k] } else { nv[k] };
                if (unreset - v_th[k]).abs() > flip_tol * v_th[k].abs().max(1.0) {
                    c.bad_flips += 1;
                }
            }
            let pairs = [
                (ov[k], nv[k], &mut c.v, !flipped),
                (oi[k], ni[k], &mut c.i, true),
                (oa[k], na[k], &mut c.a, !flipped),
            ];
            for (o, r, acc, compare) in pairs {
                if r.is_finite() {
                    if !o.is_finite() {
                        c.broken += 1;
                    } else if compare {
                        *acc = acc.max(err(o, r));
                    }
                } else if o.is_finite() {
                    c.fixed += 1;
                } else if in_domain[k] && !replayed_divergence {
                    c.broken += 1;
                }
            }
        }
        Ok(c)
    }

    fn state_measures(&self, prefix: &str, c: &StateCheck, tol: f64, with_i: bool) -> Vec<Measure> {
        let m = |name: &str, value: f64, tol: Option<f64>| Measure {
            name: format!("{prefix}{name}"),
            value,
            tol,
        };
        let mut out = vec![m("v", c.v, Some(tol))];
        if with_i {
            out.push(m("i", c.i, Some(tol)));
        }
        out.push(m("a", c.a, Some(tol)));
        out.push(m("flips", c.flips as f64, None));
        out.push(m("bad_flips", c.bad_flips as f64, Some(0.0)));
        if c.fixed > 0 {
            out.push(m("fixed", c.fixed as f64, None));
        }
        out.push(m("nonfinite", c.broken as f64, Some(0.0)));
        out
    }

    /// Initial feed-forward state: stored, or zeros shaped like one input step.
    fn initial_ff(&self, like: &Tensor) -> Result<[Tensor; 3]> {
        let get = |k: &str| -> Result<Tensor> {
            if self.has(k) {
                self.t(k)
            } else {
                like.zeros_like()
            }
        };
        Ok([get("v0")?, get("i0")?, get("a0")?])
    }

    /// `[T, ...]` of the state before each step: `init` then `out[..T-1]`.
    fn previous(init: &Tensor, out: &Tensor) -> Result<Tensor> {
        let t = out.dim(0)?;
        let head = init.unsqueeze(0)?;
        if t == 1 {
            Ok(head)
        } else {
            Tensor::cat(&[&head, &out.narrow(0, 0, t - 1)?], 0)
        }
    }

    /// Elements (of `[T, ...]`, flattened) inside the model's domain: the inputs so far are finite
    /// and (from `our_i`, `[T, ...]`) the synaptic current has not overflowed.
    fn domain(inputs: &[&Tensor], our_i: Option<&Tensor>, steps: usize) -> Result<Vec<bool>> {
        let per_step = inputs[0].elem_count() / steps.max(1);
        let mut ok = vec![true; per_step * steps];
        for t in inputs {
            let vals = host(t)?;
            let stepped = vals.len() == ok.len();
            for (k, flag) in ok.iter_mut().enumerate() {
                let v = if stepped {
                    vals[k]
                } else {
                    vals[k % vals.len()]
                };
                *flag &= v.is_finite();
            }
        }
        if let Some(i) = our_i {
            let vals = host(i)?;
            for (k, flag) in ok.iter_mut().enumerate() {
                *flag &= vals[k].is_finite();
            }
        }
        // once out of the domain, a neuron stays out
        for k in per_step..ok.len() {
            ok[k] &= ok[k - per_step];
        }
        Ok(ok)
    }

    fn feed_forward(&self, sequence: bool) -> Result<Run> {
        let x = self.t("input")?;
        let dtype = x.dtype();
        let p = self.params()?;
        let u = unit_roundoff(dtype);
        let uc = unit_roundoff(compute_dtype(dtype));
        let lowp = matches!(dtype, DType::F16 | DType::BF16);
        let xs = if sequence { x.clone() } else { x.unsqueeze(0)? };
        let steps = xs.dim(0)?;
        let like = xs.get(0)?;
        let [v0, i0, a0] = self.initial_ff(&like)?;
        let norse: Vec<Tensor> = ["out_z", "out_v", "out_i", "out_a"]
            .iter()
            .map(|k| {
                Ok(if sequence {
                    self.t(k)?
                } else {
                    self.t(k)?.unsqueeze(0)?
                })
            })
            .collect::<Result<_>>()?;
        let step_tol = if lowp { 16.0 * u } else { 32.0 * u };
        let flip_tol = if lowp { 16.0 * u } else { 1e3 * u };
        let mut measures = vec![];

        // Teacher forcing: every step from norse's previous state, all steps in one batched call.
        let prev = FeedForwardState {
            v: Self::previous(&v0, &norse[1])?,
            i: Self::previous(&i0, &norse[2])?,
            a: Self::previous(&a0, &norse[3])?,
        };
        let (z, next) = crate::ops::lif_adex_feed_forward_step(&xs, &prev, &p)?;
        let free = crate::ops::lif_adex_feed_forward_seq(
            &xs,
            &FeedForwardState {
                v: v0.clone(),
                i: i0.clone(),
                a: a0.clone(),
            },
            &p,
            true,
        )?;
        let rec = free.recorded.as_ref().expect("recorded");
        let domain = Self::domain(&[&xs, &v0, &i0, &a0], Some(&rec.i), steps)?;
        let c = self.compare(
            [&z, &next.v, &next.i, &next.a],
            [&norse[0], &norse[1], &norse[2], &norse[3]],
            &domain,
            flip_tol,
        )?;
        measures.extend(self.state_measures("", &c, step_tol, true));

        if sequence {
            let (flips, first, err) = free_run(&free.spikes, &rec.v, &norse[0], &norse[1])?;
            measures.push(info("free_flips", flips as f64));
            measures.push(info("first_flip_step", first.map_or(-1.0, |t| t as f64)));
            measures.push(tol("free_v", err, 32.0 * u * steps as f64));
        }
        if self.has("out_v_f32ref") {
            // low precision against norse's f32 run of the same inputs
            let zr = self.t("out_z_f32ref")?;
            let vr = self.t("out_v_f32ref")?;
            let (flips, first, err) = free_run(&free.spikes, &rec.v, &zr, &vr)?;
            measures.push(info("f32ref_flips", flips as f64));
            measures.push(info("f32ref_first_flip", first.map_or(-1.0, |t| t as f64)));
            measures.push(tol("f32ref_v", err, u + 32.0 * uc * steps as f64));
        }
        Ok(Run::Measured(measures))
    }

    fn recurrent(&self) -> Result<Run> {
        let xs = self.t("input")?;
        let dtype = xs.dtype();
        let p = self.params()?;
        let u = unit_roundoff(dtype);
        let (w_in, w_rec) = (self.t("w_in")?, self.t("w_rec")?);
        let (n, i_in) = w_in.dims2()?;
        let steps = xs.dim(0)?;
        let init: Vec<Tensor> = ["z0", "v0", "i0", "a0"]
            .iter()
            .map(|k| self.t(k))
            .collect::<Result<_>>()?;
        let norse: Vec<Tensor> = ["out_z", "out_v", "out_i", "out_a"]
            .iter()
            .map(|k| self.t(k))
            .collect::<Result<_>>()?;
        let prev = RecurrentState {
            z: Self::previous(&init[0], &norse[0])?,
            v: Self::previous(&init[1], &norse[1])?,
            i: Self::previous(&init[2], &norse[2])?,
            a: Self::previous(&init[3], &norse[3])?,
        };
        let (z, next) = crate::ops::lif_adex_step(&xs, &prev, &w_in, &w_rec, &p)?;
        let s0 = RecurrentState {
            z: init[0].clone(),
            v: init[1].clone(),
            i: init[2].clone(),
            a: init[3].clone(),
        };
        let free = crate::ops::lif_adex_seq(&xs, &s0, &w_in, &w_rec, &p, true)?;
        let rec = free.recorded.as_ref().expect("recorded");
        let domain = Self::domain(&[&init[1], &init[2], &init[3]], Some(&rec.i), steps)?;
        let step_tol = 64.0 * u * (n + i_in) as f64;
        let c = self.compare(
            [&z, &next.v, &next.i, &next.a],
            [&norse[0], &norse[1], &norse[2], &norse[3]],
            &domain,
            1e3 * u * (n + i_in) as f64,
        )?;
        let mut measures = self.state_measures("", &c, step_tol, true);
        let (flips, first, err) = free_run(&free.spikes, &rec.v, &norse[0], &norse[1])?;
        measures.push(info("free_flips", flips as f64));
        measures.push(info("first_flip_step", first.map_or(-1.0, |t| t as f64)));
        measures.push(tol("free_v", err, step_tol * steps as f64));
        Ok(Run::Measured(measures))
    }

    /// norse's modules, run as norse ran them: from `state = None`, with the weights norse
    /// created; cells called once per step with the state fed back, sequences in one call.
    /// Measured: the initial state (exact), every step replayed through our cell from norse's
    /// previous state (teacher forcing, tolerances of the functional cases), the free run (flips,
    /// v before the first flip), and the final state and recorded spikes when nothing flipped.
    fn module(&self, module: &str) -> Result<Run> {
        let name = module.split('(').next().unwrap_or("");
        let name = name.rsplit('.').next().unwrap_or("");
        let (recurrent, per_step) = match name {
            "LIFAdExCell" => (false, true),
            "LIFAdEx" => (false, false),
            "LIFAdExRecurrentCell" => (true, true),
            "LIFAdExRecurrent" => (true, false),
            _ => bail!("unknown module {module:?} (expected LIFAdEx[Recurrent][Cell])"),
        };
        let xs = self.t("input")?;
        let u = unit_roundoff(xs.dtype());
        let p = self.params()?;
        let steps = xs.dim(0)?;
        let fields: &[&str] = if recurrent {
            &["z", "v", "i", "a"]
        } else {
            &["v", "i", "a"]
        };
        let norse_out: Vec<Tensor> = ["out_z", "out_v", "out_i", "out_a"]
            .iter()
            .map(|k| self.t(k))
            .collect::<Result<_>>()?;
        let mut measures = vec![];
        // Our module's trajectory [z, v, i, a] as [T, ...] tensors, its initial and final state,
        // and the teacher-forced steps.
        let (ours, init, fin, forced, size): ([Tensor; 4], Vec<Tensor>, Vec<Tensor>, _, usize);
        if recurrent {
            let (w_in, w_rec) = (self.t("w_in")?, self.t("w_rec")?);
            size = w_in.dim(0)? + w_in.dim(1)?;
            let cell = LifAdexRecurrentCell::from_weights(w_in, w_rec.clone(), p, false)?;
            let diff = (cell.recurrent_weights()? - &w_rec)?.abs()?.max_all()?;
            measures.push(tol("w_rec_used", host(&diff)?[0], 0.0));
            let s0 = cell.initial_state(&xs.get(0)?)?;
            let trajectory = if per_step {
                let mut state: Option<RecurrentState> = None;
                let mut list = vec![];
                for t in 0..steps {
                    let (_, next) = cell.step(&xs.get(t)?, state.as_ref())?;
                    list.push(next.clone());
                    state = Some(next);
                }
                stack_states(&list.iter().map(|s| s.to_list()).collect::<Vec<_>>())?
            } else {
                let config = RecurrentConfig {
                    record_states: true,
                    recurrent_input: RecurrentInput::Dense,
                    ..Default::default()
                };
                let layer = LifAdexRecurrent::from_cell(cell.clone(), config);
                let out = layer.run(&xs, None)?;
                let rec = out.recorded.expect("recorded");
                let mismatch = (&out.spikes - &rec.z)?.abs()?.sum_all()?;
                measures.push(tol("spikes_vs_state_z", host(&mismatch)?[0], 0.0));
                rec.to_list()
            };
            let prev = RecurrentState::from_list(
                (0..4)
                    .map(|k| {
                        let init = self.t(&format!("init.{}", fields[k]))?;
                        Self::previous(&init.broadcast_as(s0.v.shape())?, &norse_out[k])
                    })
                    .collect::<Result<_>>()?,
            );
            let (z, next) = cell.step(&xs, Some(&prev))?;
            forced = [z, next.v, next.i, next.a];
            let last = |t: &Tensor| t.get(steps - 1);
            fin = trajectory.iter().map(last).collect::<Result<_>>()?;
            init = s0.to_list();
            ours = trajectory.try_into().expect("four tensors");
        } else {
            let cell = LifAdexCell::new(p)?;
            let s0 = cell.initial_state(&xs.get(0)?)?;
            let trajectory = if per_step {
                let mut state: Option<FeedForwardState> = None;
                let mut z = vec![];
                let mut list = vec![];
                for t in 0..steps {
                    let (zt, next) = cell.step(&xs.get(t)?, state.as_ref())?;
                    z.push(zt);
                    list.push(next.clone());
                    state = Some(next);
                }
                let mut all = vec![Tensor::stack(&z, 0)?];
                all.extend(stack_states(
                    &list.iter().map(|s| s.to_list()).collect::<Vec<_>>(),
                )?);
                all
            } else {
                let layer = LifAdex::new(cell.params().clone())?.with_record_states(true);
                let out = layer.run(&xs, None)?;
                let rec = out.recorded.expect("recorded");
                vec![out.spikes, rec.v, rec.i, rec.a]
            };
            let prev = FeedForwardState::from_list(
                (0..3)
                    .map(|k| {
                        let init = self.t(&format!("init.{}", fields[k]))?;
                        Self::previous(&init.broadcast_as(s0.v.shape())?, &norse_out[k + 1])
                    })
                    .collect::<Result<_>>()?,
            );
            let (z, next) = cell.step(&xs, Some(&prev))?;
            forced = [z, next.v, next.i, next.a];
            let last = |t: &Tensor| t.get(steps - 1);
            fin = trajectory[1..].iter().map(last).collect::<Result<_>>()?;
            init = s0.to_list();
            ours = trajectory.try_into().expect("four tensors");
            size = 0;
        }
        // the initial state norse made (v may be 0-d: it broadcasts)
        let mut init_err = 0f64;
        for (k, f) in fields.iter().enumerate() {
            let theirs = self
                .t(&format!("init.{f}"))?
                .broadcast_as(init[k].shape())?;
            let d = (&init[k].to_dtype(DType::F64)? - theirs.to_dtype(DType::F64)?)?;
            init_err = init_err.max(host(&d.abs()?.max_all()?)?[0]);
        }
        measures.push(tol("init_state", init_err, 0.0));

        let step_tol = if recurrent {
            64.0 * u * size as f64
        } else {
            32.0 * u
        };
        let flip_tol = if recurrent {
            1e3 * u * size as f64
        } else {
            1e3 * u
        };
        let domain = vec![true; forced[1].elem_count()];
        let c = self.compare(
            [&forced[0], &forced[1], &forced[2], &forced[3]],
            [&norse_out[0], &norse_out[1], &norse_out[2], &norse_out[3]],
            &domain,
            flip_tol,
        )?;
        measures.extend(self.state_measures("", &c, step_tol, true));
        let (flips, first, err) = free_run(&ours[0], &ours[1], &norse_out[0], &norse_out[1])?;
        measures.push(info("free_flips", flips as f64));
        measures.push(info("first_flip_step", first.map_or(-1.0, |t| t as f64)));
        measures.push(tol("free_v", err, step_tol * steps as f64));
        if self.has("final.v") && flips == 0 {
            let mut fin_err = 0f64;
            for (k, f) in fields.iter().enumerate() {
                let theirs = host(&self.t(&format!("final.{f}"))?)?;
                for (o, r) in host(&fin[k])?.iter().zip(&theirs) {
                    fin_err = fin_err.max((o - r).abs() / r.abs().max(1.0));
                }
            }
            measures.push(tol("final_state", fin_err, step_tol * steps as f64));
        }
        if self.has("out_zstate") && flips == 0 {
            let d = (&ours[0] - self.t("out_zstate")?)?.abs()?.sum_all()?;
            measures.push(tol("zstate_mismatch", host(&d)?[0], 0.0));
        }
        Ok(Run::Measured(measures))
    }

    fn encoder(&self) -> Result<Run> {
        let xs = self.t("input")?;
        let dtype = xs.dtype();
        let p = self.params()?;
        let u = unit_roundoff(dtype);
        let steps = xs.dim(0)?;
        let like = xs.get(0)?;
        let get = |k: &str| -> Result<Tensor> {
            if self.has(k) {
                self.t(k)
            } else {
                like.zeros_like()
            }
        };
        let (v0, a0) = (get("v0")?, get("a0")?);
        let norse: Vec<Tensor> = ["out_z", "out_v", "out_a"]
            .iter()
            .map(|k| self.t(k))
            .collect::<Result<_>>()?;
        let prev = EncoderState {
            v: Self::previous(&v0, &norse[1])?,
            a: Self::previous(&a0, &norse[2])?,
        };
        let (z, next) = reference::lif_adex_current_encoder_norse_1_1_0(&xs, &prev, &p)?;
        // norse's encoder has no current; compare v and a only (i slot: v again)
        let domain = Self::domain(&[&xs, &v0, &a0], None, steps)?;
        // the divergence is norse's and replayed on purpose: non-finite where norse is non-finite
        // is agreement here
        let c = self.compare_with(
            [&z, &next.v, &next.v, &next.a],
            [&norse[0], &norse[1], &norse[1], &norse[2]],
            &domain,
            1e3 * u,
            true,
        )?;
        let mut measures = self.state_measures("compat_", &c, 32.0 * u, false);
        // our Euler encoder on the same inputs must stay finite
        let ours = crate::ops::lif_adex_current_encoder_seq(
            &xs,
            &EncoderState { v: v0, a: a0 },
            &p,
            true,
        )?;
        let rec = ours.recorded.expect("recorded");
        let nonfinite = [&rec.v, &rec.a]
            .iter()
            .map(|t| Ok(host(t)?.iter().filter(|v| !v.is_finite()).count()))
            .sum::<Result<usize>>()?;
        let norse_nonfinite = [&norse[1], &norse[2]]
            .iter()
            .map(|t| Ok(host(t)?.iter().filter(|v| !v.is_finite()).count()))
            .sum::<Result<usize>>()?;
        measures.push(info("norse_nonfinite", norse_nonfinite as f64));
        measures.push(tol("euler_nonfinite", nonfinite as f64, 0.0));
        Ok(Run::Measured(measures))
    }

    fn threshold(&self) -> Result<Run> {
        let x = self.t("x")?;
        let u = unit_roundoff(x.dtype());
        let method = self.method()?;
        let alpha = if method == SurrogateMethod::Super {
            1.0
        } else {
            self.scalar("p.alpha")?
        };
        let xv = Var::from_tensor(&x)?;
        let out = crate::surrogate::threshold(xv.as_tensor(), method, alpha)?;
        let forward_mismatch = host(&out)?
            .iter()
            .zip(host(&self.t("out")?)?)
            .filter(|(a, b)| *a != b)
            .count();
        let mut measures = vec![tol("out_mismatch", forward_mismatch as f64, 0.0)];
        if self.has("grad_x") {
            let g = self.t("g")?;
            let grads = (out * &g)?.sum_all()?.backward()?;
            let ours = match grads.get(xv.as_tensor()) {
                Some(t) => host(t)?,
                None => vec![0.0; x.elem_count()],
            };
            let (err, fixed, broken) = normwise(&ours, &host(&self.t("grad_x")?)?);
            measures.push(tol("grad_x", err, 16.0 * u + erfc_constant_tol(method)));
            if fixed > 0 {
                measures.push(info("fixed", fixed as f64));
            }
            measures.push(tol("nonfinite", broken as f64, 0.0));
        }
        Ok(Run::Measured(measures))
    }

    fn bptt(&self) -> Result<Run> {
        let x = self.t("input")?;
        let dtype = x.dtype();
        let u = unit_roundoff(dtype);
        let lowp = matches!(dtype, DType::F16 | DType::BF16);
        let steps = x.dim(0)?;
        let mut p = self.params_as_norse_ran()?;
        let param_grads = self
            .meta
            .get("param_grads")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let like = x.get(0)?;
        let leaf = |k: &str| -> Result<Var> {
            let t = if self.has(k) {
                self.t(k)?
            } else {
                like.zeros_like()?
            };
            Var::from_tensor(&t)
        };
        let (xv, v0, i0, a0) = (Var::from_tensor(&x)?, leaf("v0")?, leaf("i0")?, leaf("a0")?);
        let mut pvars: Vec<(&str, Var)> = vec![];
        if param_grads {
            for (name, field) in p.numeric_mut() {
                let var = Var::from_tensor(&self.t(&format!("p.{name}"))?)?;
                *field = Param::Tensor(var.as_tensor().clone());
                pvars.push((name, var));
            }
        }
        let s0 = FeedForwardState {
            v: v0.as_tensor().clone(),
            i: i0.as_tensor().clone(),
            a: a0.as_tensor().clone(),
        };
        let out = crate::ops::lif_adex_feed_forward_seq(xv.as_tensor(), &s0, &p, true)?;
        let rec = out.recorded.as_ref().expect("recorded");
        let g = self.t("g")?;
        let last_v = rec.v.get(steps - 1)?;
        let h = if self.has("h") {
            self.t("h")?
        } else {
            last_v.ones_like()?
        };
        let loss = ((&out.spikes * &g)?.sum_all()? + (&last_v * &h)?.sum_all()?)?;
        let grads = loss.backward()?;

        let spike_mismatch = host(&out.spikes)?
            .iter()
            .zip(host(&self.t("out_z")?)?)
            .filter(|(a, b)| *a != b)
            .count();
        let grad_tol = if lowp {
            16.0 * u
        } else if dtype == DType::F64 {
            64.0 * u * steps as f64 + erfc_constant_tol(p.method)
        } else {
            1e-3
        };
        let mut measures = vec![];
        if lowp {
            // norse's low-precision run rounds every intermediate and may flip spikes near
            // threshold; a flip changes the gradient's path, so gradients are judged only
            // without flips
            let flip_tol = 16.0 * u;
            let (oz, nz) = (host(&out.spikes)?, host(&self.t("out_z")?)?);
            let (ov, nv) = (host(&rec.v)?, host(&self.t("out_v")?)?);
            let n = *x.dims().last().unwrap_or(&1);
            let v_th = self.v_th_per_element(ov.len(), n)?;
            // only a neuron's first flip must be near threshold: later ones follow from it
            let per_step = oz.len() / steps.max(1);
            let mut diverged = vec![false; per_step];
            let mut bad = 0;
            for k in (0..oz.len()).filter(|&k| oz[k] != nz[k]) {
                let unreset = if nz[k] > 0.0 { ov[k] } else { nv[k] };
                let near = (unreset - v_th[k]).abs() <= flip_tol * v_th[k].abs().max(1.0);
                if !near && !diverged[k % per_step] {
                    bad += 1;
                }
                diverged[k % per_step] = true;
            }
            measures.push(info("flips", spike_mismatch as f64));
            measures.push(tol("bad_flips", bad as f64, 0.0));
        } else {
            measures.push(tol("spike_mismatch", spike_mismatch as f64, 0.0));
        }
        let judged = !(lowp && spike_mismatch > 0);
        let loss_ref = self.scalar("loss")?;
        let loss_ours = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let loss_tol = if lowp { 16.0 * u } else { grad_tol };
        let loss_err = (loss_ours - loss_ref).abs() / loss_ref.abs().max(1.0);
        measures.push(judge("loss", loss_err, loss_tol, judged));
        let mut leaves: Vec<(String, &Var)> = vec![("input".into(), &xv)];
        for (k, v) in [("v0", &v0), ("i0", &i0), ("a0", &a0)] {
            leaves.push((k.into(), v));
        }
        for (name, var) in &pvars {
            leaves.push((format!("p.{name}"), var));
        }
        for (name, var) in leaves {
            let key = format!("grad_{name}");
            if !self.has(&key) {
                continue;
            }
            let ours = match grads.get(var.as_tensor()) {
                Some(t) => host(t)?,
                None => vec![0.0; var.elem_count()],
            };
            let (err, _, broken) = normwise(&ours, &host(&self.t(&key)?)?);
            measures.push(judge(&key, err, grad_tol, judged));
            if broken > 0 {
                measures.push(tol(&format!("{key}_nonfinite"), broken as f64, 0.0));
            }
        }
        Ok(Run::Measured(measures))
    }
}

fn tol(name: &str, value: f64, tol: f64) -> Measure {
    Measure {
        name: name.into(),
        value,
        tol: Some(tol),
    }
}

/// A measure with a tolerance when `judged`, information only otherwise.
fn judge(name: &str, value: f64, limit: f64, judged: bool) -> Measure {
    if judged {
        tol(name, value, limit)
    } else {
        info(name, value)
    }
}

/// norse 1.1.0 divides the `heavi_erfc` surrogate by `sqrt(pi)` rounded to float32, a relative
/// difference of 3.0e-8 from the exact constant this crate uses; f64 comparisons allow it.
fn erfc_constant_tol(method: SurrogateMethod) -> f64 {
    if method == SurrogateMethod::HeaviErfc {
        4e-8
    } else {
        0.0
    }
}

fn info(name: &str, value: f64) -> Measure {
    Measure {
        name: name.into(),
        value,
        tol: None,
    }
}

/// Normwise error `max|ours - ref| / max|ref|` over elements where `ref` is finite; also the
/// count of elements where ref is non-finite and ours finite (fixed), and where ours is
/// non-finite but ref finite (broken).
fn normwise(ours: &[f64], reference: &[f64]) -> (f64, usize, usize) {
    let (mut num, mut den, mut fixed, mut broken) = (0f64, 0f64, 0, 0);
    for (&o, &r) in ours.iter().zip(reference) {
        if !o.is_finite() {
            broken += 1;
        } else if !r.is_finite() {
            fixed += 1;
        } else {
            num = num.max((o - r).abs());
            den = den.max(r.abs());
        }
    }
    (if den > 0.0 { num / den } else { num }, fixed, broken)
}

/// Free-running comparison of `[T, ...]` spikes and potentials: the number of spike flips, the
/// first step with a flip, and the largest v error (absolute below 1, relative above) before it.
fn free_run(
    oz: &Tensor,
    ov: &Tensor,
    nz: &Tensor,
    nv: &Tensor,
) -> Result<(usize, Option<usize>, f64)> {
    let steps = oz.dim(0)?;
    let per = oz.elem_count() / steps.max(1);
    let (oz, ov, nz, nv) = (host(oz)?, host(ov)?, host(nz)?, host(nv)?);
    let (mut flips, mut first, mut err) = (0, None, 0f64);
    for t in 0..steps {
        let range = t * per..(t + 1) * per;
        let step_flips = range
            .clone()
            .filter(|&k| oz[k] != nz[k] && nz[k].is_finite())
            .count();
        if step_flips > 0 && first.is_none() {
            first = Some(t);
        }
        flips += step_flips;
        if first.is_none() {
            for k in range {
                if nv[k].is_finite() {
                    err = err.max((ov[k] - nv[k]).abs() / nv[k].abs().max(1.0));
                }
            }
        }
    }
    Ok((flips, first, err))
}

/// Stacks a list of states (each a list of tensors) field by field over a new leading time axis.
fn stack_states(states: &[Vec<Tensor>]) -> Result<Vec<Tensor>> {
    let fields = states.first().map_or(0, Vec::len);
    (0..fields)
        .map(|k| Tensor::stack(&states.iter().map(|s| &s[k]).collect::<Vec<_>>(), 0))
        .collect()
}

/// Runs every case of the golden files at `paths`; an unreadable file is an error.
pub fn run_files<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<CaseReport>> {
    let mut reports = vec![];
    for path in paths {
        reports.extend(GoldenFile::open(path.as_ref())?.run());
    }
    Ok(reports)
}

/// Counts of passed, failed and skipped cases.
pub fn summarize(reports: &[CaseReport]) -> (usize, usize, usize) {
    let count = |f: fn(&Outcome) -> bool| reports.iter().filter(|r| f(&r.outcome)).count();
    (
        count(|o| *o == Outcome::Pass),
        count(|o| *o == Outcome::Fail),
        count(|o| matches!(o, Outcome::Skip(_))),
    )
}
