//! Criterion benches of the fused CPU kernels beside the reference path and copies of the same
//! bytes (a plain `memcpy` and the memory roof, with streaming stores), in neuron-steps per
//! second, for the benchmark shapes.
//! `adex bench` prints the same comparison quickly without criterion.

use candle_adex::bench::{Op, Workload, IN_CACHE_SHAPE, SHAPES};
use candle_core::DType;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

fn fused(c: &mut Criterion) {
    for (t, b, n) in SHAPES {
        let mut group = c.benchmark_group(format!("T{t}_B{b}_N{n}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(2));
        group.throughput(Throughput::Elements((t * b * n) as u64));
        for (op, dtype) in [
            (Op::Step, DType::F32),
            (Op::StepInto, DType::F32),
            (Op::Seq, DType::F32),
            (Op::Seq, DType::BF16),
            (Op::Seq, DType::F16),
            (Op::SeqU8, DType::F32),
            (Op::SeqFwdBwd, DType::F32),
        ] {
            let mut w = Workload::new(op, dtype, (t, b, n)).expect("workload");
            let name = format!("{}_{}", op.name(), dtype.as_str());
            group.bench_function(format!("fused_{name}"), |bench| {
                bench.iter(|| w.run_fused().expect("fused"))
            });
            group.bench_function(format!("roof_{name}"), |bench| bench.iter(|| w.run_copy()));
            group.bench_function(format!("memory_roof_{name}"), |bench| {
                bench.iter(|| w.run_stream_copy())
            });
            // The reference path is 10-50x slower: only where one call stays short.
            if t * b * n <= 4_000_000 && w.reference_fits() {
                group.bench_function(format!("reference_{name}"), |bench| {
                    bench.iter(|| w.run_reference().expect("reference"))
                });
            }
        }
        group.finish();
    }
    // Neurons held far below threshold: the exponential term at its floor every step, which
    // must cost no more than ordinary input (no subnormal arithmetic).
    let (t, b, n) = IN_CACHE_SHAPE;
    let mut group = c.benchmark_group(format!("T{t}_B{b}_N{n}_hyperpolarized"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements((t * b * n) as u64));
    for (label, shift) in [("ordinary", 0.0), ("hyperpolarized", -170.0)] {
        let mut w = Workload::new(Op::Seq, DType::F32, (t, b, n))
            .and_then(|w| w.shifted(shift))
            .expect("workload");
        group.bench_function(format!("fused_seq_f32_{label}"), |bench| {
            bench.iter(|| w.run_fused().expect("fused"))
        });
    }
    group.finish();
}

criterion_group!(benches, fused);
criterion_main!(benches);
