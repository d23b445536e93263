//! Throughput of the reference path (candle tensor ops), in neuron-steps, beside a memory copy
//! of the bytes a fused sequence kernel would have to move (input read + spikes written): the
//! memory roof the fused kernels are measured against.

use candle_adex::{lif_adex_feed_forward_seq, AdexParameters, FeedForwardState};
use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench_sequence(c: &mut Criterion) {
    let dev = Device::Cpu;
    let p = AdexParameters::default();
    let mut group = c.benchmark_group("feed_forward_seq");
    group.sample_size(10);
    for (t, b, n) in [(100, 1, 1000), (100, 32, 1024), (20, 64, 16384)] {
        let shape = format!("T{t}_B{b}_N{n}");
        group.throughput(Throughput::Elements((t * b * n) as u64));
        for dtype in [DType::F32, DType::BF16] {
            let xs = Tensor::rand(0f32, 0.6, (t, b, n), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            let s0 = FeedForwardState::initial(&p, (b, n), dtype, &dev).unwrap();
            let id = BenchmarkId::new(format!("reference_{dtype:?}"), &shape);
            group.bench_with_input(id, &xs, |bench, xs| {
                bench.iter(|| lif_adex_feed_forward_seq(xs, &s0, &p, false).unwrap())
            });
            // the roof: read the input once and write an output of the same size
            let id = BenchmarkId::new(format!("copy_roof_{dtype:?}"), &shape);
            group.bench_with_input(id, &xs, |bench, xs| bench.iter(|| xs.copy().unwrap()));
        }
    }
    group.finish();
}

criterion_group!(benches, bench_sequence);
criterion_main!(benches);
