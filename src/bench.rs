//! Layer 9 (beside conformance): the benchmark harness shared by `adex bench` and the criterion benches: one
//! [`Workload`] per (op, dtype, shape) that runs the fused kernel, the reference path, and a
//! memory copy of the same bytes (the roof), all measured in the same process.
//!
//! Throughput is in neuron-steps per second (`T*B*N` per call). Each CPU row carries two
//! limits measured in the same run: the **memory roof**, a copy of as many bytes as the op must
//! move at least (its inputs read once and its outputs written once) with streaming stores and
//! as many threads as the kernel uses (beside it the plain `memcpy` roof of earlier reports),
//! and the **in-cache figure**, the same op and dtype on [`IN_CACHE_SHAPE`], whose inputs stay
//! in cache between calls (the kernel's compute speed). The lower of the two is what the row
//! can reach. Sequences write into caller-owned buffers ([`fused::lif_adex_feed_forward_seq_into`]):
//! a fresh output of hundreds of MB costs page faults that on some machines take longer than the
//! kernel, and would measure the allocator rather than the kernel.

use crate::fused::{self, cpu};
use crate::params::AdexParameters;
use crate::reference;
use crate::state::FeedForwardState;
use candle_core::{DType, Device, Result, Tensor, Var};
use std::time::Instant;

/// What a workload runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `T` feed-forward steps, one call per step (outputs allocated by each call).
    Step,
    /// `T` feed-forward steps, one call per step, into caller-owned buffers
    /// ([`fused::lif_adex_feed_forward_step_into`]: spikes into a row of a `[T, ...]` buffer,
    /// the state advanced in place).
    StepInto,
    /// One feed-forward sequence call, spikes in the input dtype.
    Seq,
    /// One feed-forward sequence call, spikes as `u8`.
    SeqU8,
    /// The sequence's forward and backward kernels back to back, on caller-owned buffers
    /// (f32 and f64: the backward runs in the compute precision). The reference is its
    /// autograd forward plus `backward()`.
    SeqFwdBwd,
    /// Forward plus `backward()` through candle autograd with the fused custom op, end to end
    /// (allocations, the packed output's narrow/sum gradients and the accumulation included).
    SeqAutograd,
}

impl Op {
    /// All ops, in report order.
    pub const ALL: [Op; 6] = [
        Op::Step,
        Op::StepInto,
        Op::Seq,
        Op::SeqU8,
        Op::SeqFwdBwd,
        Op::SeqAutograd,
    ];

    /// The name used in reports and JSON (`step`, `step_into`, `seq`, `seq_u8`, `seq_fwd_bwd`,
    /// `seq_autograd`).
    pub fn name(self) -> &'static str {
        match self {
            Op::Step => "step",
            Op::StepInto => "step_into",
            Op::Seq => "seq",
            Op::SeqU8 => "seq_u8",
            Op::SeqFwdBwd => "seq_fwd_bwd",
            Op::SeqAutograd => "seq_autograd",
        }
    }

    /// Bytes the op must move per neuron-step for elements of `size` bytes.
    fn bytes_per_neuron_step(self, size: usize) -> usize {
        match self {
            // x, v, i, a read; z, v, i, a written.
            Op::Step | Op::StepInto => 8 * size,
            // x read, spikes written.
            Op::Seq => 2 * size,
            Op::SeqU8 => size + 1,
            // forward: x read, z written; backward: x and dz read, dx written.
            Op::SeqFwdBwd | Op::SeqAutograd => 5 * size,
        }
    }
}

/// The benchmark shapes `(T, B, N)` of the fused-kernel issue.
pub const SHAPES: [(usize, usize, usize); 4] = [
    (100, 1, 1000),
    (100, 32, 1024),
    (100, 64, 16384),
    (1000, 1, 100_000),
];

/// The L2/L3-resident shape of a row's in-cache figure (`T, B, N`): 1.6 MB of f32 input.
pub const IN_CACHE_SHAPE: (usize, usize, usize) = (100, 1, 4096);

/// One measured row (what `adex bench` prints, as text or JSON).
#[derive(Clone, Debug)]
pub struct Row {
    pub op: &'static str,
    pub dtype: DType,
    pub device: String,
    pub isa: &'static str,
    pub t: usize,
    pub b: usize,
    pub n: usize,
    pub threads: usize,
    pub neuron_steps_per_s: f64,
    /// The plain `memcpy` roof.
    pub roof_neuron_steps_per_s: f64,
    /// The memory roof: a copy of the same bytes with streaming stores (CPU rows; on devices
    /// the device copy).
    pub memory_roof_neuron_steps_per_s: f64,
    /// The same op and dtype on [`IN_CACHE_SHAPE`] (CPU rows only).
    pub in_cache_neuron_steps_per_s: Option<f64>,
    /// `None` where the reference path would not fit in memory (its autograd graph for the
    /// largest backward shapes) or was not asked for.
    pub reference_neuron_steps_per_s: Option<f64>,
}

impl Row {
    /// The lower of the memory roof and the in-cache figure: what this row can reach.
    pub fn limit_neuron_steps_per_s(&self) -> f64 {
        let m = self.memory_roof_neuron_steps_per_s;
        self.in_cache_neuron_steps_per_s.map_or(m, |c| c.min(m))
    }
}

/// Inputs, states and buffers of one benchmark case.
pub struct Workload {
    pub op: Op,
    pub dtype: DType,
    pub t: usize,
    pub b: usize,
    pub n: usize,
    p: AdexParameters,
    xs: Tensor,
    s0: FeedForwardState,
    state: FeedForwardState,
    spikes: Tensor,
    copy_src: Vec<u8>,
    copy_dst: Vec<u8>,
    kernels: Option<KernelBuffers>,
}

/// Host buffers of the kernel-level forward + backward (f32; f64 inputs are rounded to f32).
struct KernelBuffers {
    xs: Vec<f32>,
    s0: Vec<f32>,
    spikes: Vec<f32>,
    last: Vec<f32>,
    g_spikes: Vec<f32>,
    g_last: Vec<f32>,
    g_xs: Vec<f32>,
    g0: Vec<f32>,
    coefs: cpu::Coefs<f32>,
}

impl Workload {
    /// Builds the inputs (uniform currents in `[0, 4)`, which make the default neuron fire at a
    /// few hundred Hz) and buffers.
    pub fn new(op: Op, dtype: DType, (t, b, n): (usize, usize, usize)) -> Result<Self> {
        let dev = Device::Cpu;
        let p = AdexParameters::default();
        let xs = Tensor::rand(0f32, 4.0, (t, b, n), &dev)?.to_dtype(dtype)?;
        let s0 = FeedForwardState::initial(&p, (b, n), dtype, &dev)?;
        let state = FeedForwardState::initial(&p, (b, n), dtype, &dev)?;
        let spike_dtype = if op == Op::SeqU8 { DType::U8 } else { dtype };
        let spikes = Tensor::zeros((t, b, n), spike_dtype, &dev)?;
        let bytes = t * b * n * op.bytes_per_neuron_step(dtype.size_in_bytes()) / 2;
        let kernels = if op == Op::SeqFwdBwd {
            let m = b * n;
            let xs_h = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let mut s0_h = vec![0f32; 3 * m];
            s0_h[..m].copy_from_slice(&s0.v.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
            Some(KernelBuffers {
                g_spikes: xs_h.iter().map(|x| 0.25 - x * 0.1).collect(),
                xs: xs_h,
                s0: s0_h,
                spikes: vec![0f32; t * m],
                last: vec![0f32; 3 * m],
                g_last: vec![1f32; 3 * m],
                g_xs: vec![0f32; t * m],
                g0: vec![0f32; 3 * m],
                coefs: fused::resolve_coefs(&p, n, &dev)?,
            })
        } else {
            None
        };
        Ok(Workload {
            op,
            dtype,
            t,
            b,
            n,
            p,
            xs,
            s0,
            state,
            spikes,
            copy_src: vec![1u8; bytes],
            copy_dst: vec![0u8; bytes],
            kernels,
        })
    }

    /// The same workload with every input current shifted by `shift`: a large negative shift
    /// (about -170) holds the default neurons far below threshold, where the membrane's
    /// exponential term is at its floor every step (the hyperpolarized regime).
    ///
    /// ```
    /// use candle_adex::bench::{Op, Workload};
    /// let mut w = Workload::new(Op::Seq, candle_core::DType::F32, (10, 1, 64))?.shifted(-170.0)?;
    /// w.run_fused()?;
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn shifted(mut self, shift: f64) -> Result<Self> {
        self.xs = (&self.xs + shift)?;
        if let Some(k) = &mut self.kernels {
            // Derived from the shifted tensor as `new` derives it, so both paths see one input.
            k.xs = self
                .xs
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
        }
        Ok(self)
    }

    /// Neuron-steps per call.
    pub fn neuron_steps(&self) -> usize {
        self.t * self.b * self.n
    }

    /// The threads the fused kernel uses for this workload.
    pub fn threads(&self) -> usize {
        cpu::threads_for(self.neuron_steps(), (self.b * self.n).div_ceil(cpu::BLOCK))
    }

    /// One call of the fused path.
    pub fn run_fused(&mut self) -> Result<()> {
        match self.op {
            Op::Step => {
                let mut s = self.s0.clone();
                for k in 0..self.t {
                    let (_, next) =
                        fused::lif_adex_feed_forward_step(&self.xs.get(k)?, &s, &self.p)?;
                    s = next;
                }
            }
            Op::StepInto => {
                for k in 0..self.t {
                    fused::lif_adex_feed_forward_step_into(
                        &self.xs.get(k)?,
                        &self.state,
                        &self.p,
                        &self.spikes.get(k)?,
                    )?;
                }
            }
            Op::Seq | Op::SeqU8 => {
                fused::lif_adex_feed_forward_seq_into(&self.xs, &self.state, &self.p, &self.spikes)?
            }
            Op::SeqFwdBwd => self.kernels_fwd_bwd(),
            Op::SeqAutograd => {
                self.fwd_bwd(|x, s, p| fused::lif_adex_feed_forward_seq(x, s, p, false))?;
            }
        }
        Ok(())
    }

    /// The forward and backward kernels on the host buffers.
    fn kernels_fwd_bwd(&mut self) {
        let (t, m) = (self.t, self.b * self.n);
        let method = self.p.method;
        let alpha = self.p.alpha;
        let k = self.kernels.as_mut().expect("kernel buffers");
        let (v0, rest) = k.s0.split_at(m);
        let (i0, a0) = rest.split_at(m);
        let mut last = k.last.chunks_mut(m).map(|c| cpu::Rows::new(c, 1, m));
        let fwd = cpu::FwdJob {
            t,
            m,
            xs: &k.xs,
            x2: None,
            v0: v0.into(),
            i0: Some(i0.into()),
            a0: a0.into(),
            spikes: cpu::Rows::new(&mut k.spikes, t, m),
            last: [last.next(), last.next(), last.next()],
            record: None,
            coefs: &k.coefs,
        };
        cpu::forward(fwd);
        let mut g0 = k.g0.chunks_mut(m).map(|c| cpu::Rows::new(c, 1, m));
        let bwd = cpu::BwdJob {
            t,
            m,
            xs: &k.xs,
            x2: None,
            v0,
            i0: Some(i0),
            a0,
            g_spikes: &k.g_spikes,
            g_last: [&k.g_last[..m], &k.g_last[m..2 * m], &k.g_last[2 * m..]],
            g_record: None,
            g_xs: cpu::Rows::new(&mut k.g_xs, t, m),
            g0: [g0.next(), g0.next(), g0.next()],
            coefs: &k.coefs,
            method,
            alpha,
        };
        cpu::backward(&bwd);
        std::hint::black_box(&k.g_xs);
    }

    /// One call of the reference path.
    pub fn run_reference(&mut self) -> Result<()> {
        match self.op {
            Op::Step | Op::StepInto => {
                let mut s = self.s0.clone();
                for k in 0..self.t {
                    let (_, next) =
                        reference::lif_adex_feed_forward_step(&self.xs.get(k)?, &s, &self.p)?;
                    s = next;
                }
            }
            Op::Seq | Op::SeqU8 => {
                reference::lif_adex_feed_forward_seq(&self.xs, &self.s0, &self.p, false)?;
            }
            Op::SeqFwdBwd | Op::SeqAutograd => {
                self.fwd_bwd(|x, s, p| reference::lif_adex_feed_forward_seq(x, s, p, false))?;
            }
        }
        Ok(())
    }

    /// The reference path's autograd graph keeps about 30 tensors per step alive: skip it where
    /// that would not fit comfortably in memory.
    pub fn reference_fits(&self) -> bool {
        !matches!(self.op, Op::SeqFwdBwd | Op::SeqAutograd) || self.neuron_steps() <= 1 << 24
    }

    fn fwd_bwd(
        &self,
        run: impl Fn(
            &Tensor,
            &FeedForwardState,
            &AdexParameters,
        ) -> Result<reference::Sequence<FeedForwardState>>,
    ) -> Result<()> {
        let x = Var::from_tensor(&self.xs)?;
        let out = run(x.as_tensor(), &self.s0, &self.p)?;
        let loss = (out.spikes.sum_all()? + out.state.v.sum_all()?)?;
        let grads = loss.backward()?;
        assert!(grads.get(&x).is_some());
        Ok(())
    }

    /// One `memcpy` of the roof's bytes, split over the kernel's thread count (on the kernels'
    /// worker pool, so that the roof and the kernel pay the same hand-over).
    pub fn run_copy(&mut self) {
        self.copy_with(|d, s| d.copy_from_slice(s));
    }

    /// [`Workload::run_copy`] with streaming stores: the memory roof.
    pub fn run_stream_copy(&mut self) {
        self.copy_with(cpu::copy_streaming);
    }

    fn copy_with(&mut self, copy: impl Fn(&mut [u8], &[u8]) + Sync) {
        let threads = self.threads();
        if threads == 1 {
            copy(&mut self.copy_dst, &self.copy_src);
            std::hint::black_box(&mut self.copy_dst);
            return;
        }
        let chunk = self.copy_src.len().div_ceil(threads).max(1);
        let parts: Vec<std::sync::Mutex<(&mut [u8], &[u8])>> = self
            .copy_dst
            .chunks_mut(chunk)
            .zip(self.copy_src.chunks(chunk))
            .map(std::sync::Mutex::new)
            .collect();
        fused::pool::run(parts.len(), &|k| {
            let mut part = parts[k].lock().unwrap_or_else(|e| e.into_inner());
            let (d, s) = &mut *part;
            copy(d, s);
        });
        std::hint::black_box(&mut self.copy_dst);
    }
}

/// Median seconds per call of `f`, after one warm-up call, over at least `reps` calls and
/// `min_secs` seconds.
pub fn time(reps: usize, min_secs: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < reps || start.elapsed().as_secs_f64() < min_secs {
        let t0 = Instant::now();
        f()?;
        times.push(t0.elapsed().as_secs_f64());
        if times.len() >= 1000 {
            break;
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// Measures one case: fused, the two copy roofs, the in-cache figure and (when asked and
/// feasible) the reference, in this order.
pub fn measure(
    op: Op,
    dtype: DType,
    shape: (usize, usize, usize),
    with_reference: bool,
) -> Result<Row> {
    let mut w = Workload::new(op, dtype, shape)?;
    let steps = w.neuron_steps() as f64;
    let fused_s = time(3, 0.3, || w.run_fused())?;
    let roof_s = time(3, 0.2, || {
        w.run_copy();
        Ok(())
    })?;
    let stream_s = time(3, 0.2, || {
        w.run_stream_copy();
        Ok(())
    })?;
    let in_cache = if shape == IN_CACHE_SHAPE {
        steps / fused_s
    } else {
        drop(w.kernels.take());
        let mut c = Workload::new(op, dtype, IN_CACHE_SHAPE)?;
        c.neuron_steps() as f64 / time(3, 0.2, || c.run_fused())?
    };
    let reference = if with_reference && w.reference_fits() {
        Some(steps / time(1, 0.0, || w.run_reference())?)
    } else {
        None
    };
    Ok(Row {
        op: op.name(),
        dtype,
        device: "cpu".to_string(),
        isa: cpu::Isa::current().name(),
        t: shape.0,
        b: shape.1,
        n: shape.2,
        threads: w.threads(),
        neuron_steps_per_s: steps / fused_s,
        roof_neuron_steps_per_s: steps / roof_s,
        memory_roof_neuron_steps_per_s: steps / stream_s,
        in_cache_neuron_steps_per_s: Some(in_cache),
        reference_neuron_steps_per_s: reference,
    })
}

/// The ops `adex bench --device` measures on an accelerator: `step` (one call per step),
/// `seq`, `seq_u8`, `seq_bwd` (the backward kernel alone) and `encoder_seq`.
pub const DEVICE_OPS: [&str; 5] = ["step", "seq", "seq_u8", "seq_bwd", "encoder_seq"];

/// Bytes an op on `DEVICE_OPS` must move per neuron-step for elements of `size` bytes: its
/// inputs read once and its outputs written once.
fn device_bytes(op: &str, size: usize) -> usize {
    match op {
        "step" => 8 * size,
        "seq_u8" => size + 1,
        // x and the spike gradient read, the input gradient written.
        "seq_bwd" => 3 * size,
        _ => 2 * size,
    }
}

/// One copy of `bytes` bytes between two device buffers allocated once (the roof).
fn device_copy(dev: &Device, bytes: usize) -> Result<Box<dyn FnMut() -> Result<()>>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        return Ok(Box::new(fused::cuda::copy_roof(d, bytes)?));
    }
    let src = Tensor::zeros(bytes, DType::U8, dev)?;
    Ok(Box::new(move || src.copy().map(|_| ())))
}

/// Measures one case on an accelerator (any candle device): the fused op, a device-to-device
/// copy of the same bytes (the roof; for `step` one copy per step, as the op makes one call per
/// step), and the reference path where asked and small enough. Every timed call ends with a
/// device synchronisation.
pub fn measure_device(
    dev: &Device,
    op: &'static str,
    dtype: DType,
    (t, b, n): (usize, usize, usize),
    with_reference: bool,
) -> Result<Row> {
    let p = AdexParameters::default();
    let m = b * n;
    let xs = Tensor::rand(0f32, 4.0, (t, b, n), dev)?.to_dtype(dtype)?;
    let s0 = FeedForwardState::initial(&p, (b, n), dtype, dev)?;
    let e0 = crate::state::EncoderState::initial(&p, (b, n), dtype, dev)?;
    let sync = || dev.synchronize();
    let steps = (t * m) as f64;
    let reps = 5;
    let min_s = 0.2;
    let fused_s = match op {
        "step" => {
            let rows: Vec<Tensor> = (0..t).map(|k| xs.get(k)).collect::<Result<_>>()?;
            time(reps, min_s, || {
                let mut s = s0.clone();
                for x in &rows {
                    s = fused::lif_adex_feed_forward_step(x, &s, &p)?.1;
                }
                sync()
            })?
        }
        "seq" => time(reps, min_s, || {
            fused::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
            sync()
        })?,
        "seq_u8" => time(reps, min_s, || {
            fused::lif_adex_feed_forward_seq_u8(&xs, &s0, &p, false)?;
            sync()
        })?,
        "encoder_seq" => time(reps, min_s, || {
            fused::lif_adex_current_encoder_seq(&xs, &e0, &p, false)?;
            sync()
        })?,
        "seq_bwd" => {
            let x = xs.reshape((t, m))?;
            let st = Tensor::stack(
                &[
                    s0.v.flatten_all()?,
                    s0.i.flatten_all()?,
                    s0.a.flatten_all()?,
                ],
                0,
            )?;
            let grad = Tensor::rand(-1f32, 1.0, (t + 3, m), dev)?.to_dtype(dtype)?;
            time(reps, min_s, || {
                fused::feed_forward_seq_backward(&x, &st, &grad, &p)?;
                sync()
            })?
        }
        other => candle_core::bail!("unknown device op {other:?} (expected one of {DEVICE_OPS:?})"),
    };
    let bytes = t * m * device_bytes(op, dtype.size_in_bytes());
    let copies = if op == "step" { t } else { 1 };
    let mut copy = device_copy(dev, bytes / copies / 2)?;
    let roof_s = time(reps, min_s, || {
        for _ in 0..copies {
            copy()?;
        }
        sync()
    })?;
    let reference = if with_reference && t * m <= 1 << 22 {
        let r = match op {
            "step" => {
                let rows: Vec<Tensor> = (0..t).map(|k| xs.get(k)).collect::<Result<_>>()?;
                Some(time(1, 0.0, || {
                    let mut s = s0.clone();
                    for x in &rows {
                        s = reference::lif_adex_feed_forward_step(x, &s, &p)?.1;
                    }
                    sync()
                })?)
            }
            "seq" => Some(time(1, 0.0, || {
                reference::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
                sync()
            })?),
            "encoder_seq" => Some(time(1, 0.0, || {
                reference::lif_adex_current_encoder_seq(&xs, &e0, &p, false)?;
                sync()
            })?),
            _ => None,
        };
        r.map(|s| steps / s)
    } else {
        None
    };
    Ok(Row {
        op,
        dtype,
        device: format!("{:?}", dev.location()),
        isa: "gpu",
        t,
        b,
        n,
        threads: 1,
        neuron_steps_per_s: steps / fused_s,
        roof_neuron_steps_per_s: steps / roof_s,
        memory_roof_neuron_steps_per_s: steps / roof_s,
        in_cache_neuron_steps_per_s: None,
        reference_neuron_steps_per_s: reference,
    })
}
