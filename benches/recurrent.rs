//! The recurrent input `z W_rec^T` per step: candle's dense matrix product against the
//! event-driven sum of the spiking neurons' weight columns, at 1 %, 5 %, 20 % and 50 % spike
//! density, in the same run. Throughput is in neuron-steps (`B * H` outputs per call). The
//! crossover sets `fused::EVENT_DRIVEN_MAX_DENSITY`, which `RecurrentInput::Auto` uses.

use candle_adex::fused::EventDriven;
use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::time::Duration;

/// `[b, h]` spikes with exactly `round(density * h)` ones per row, spread evenly.
fn spikes(b: usize, h: usize, density: f64) -> Tensor {
    let k = ((density * h as f64).round() as usize).max(1);
    let mut z = vec![0f32; b * h];
    for r in 0..b {
        for j in 0..k {
            z[r * h + (j * h / k + r) % h] = 1.0;
        }
    }
    Tensor::from_vec(z, (b, h), &Device::Cpu).unwrap()
}

fn recurrent(c: &mut Criterion) {
    for (b, h) in [(1, 1024), (32, 1024), (32, 256), (8, 4096)] {
        let mut group = c.benchmark_group(format!("recurrent_input_B{b}_H{h}"));
        group.sample_size(20);
        group.measurement_time(Duration::from_secs(1));
        group.throughput(Throughput::Elements((b * h) as u64));
        let w = Tensor::randn(0f32, 0.05, (h, h), &Device::Cpu).unwrap();
        let event = EventDriven::new(&w).unwrap();
        for density in [0.01, 0.05, 0.2, 0.5] {
            let z = spikes(b, h, density);
            let pct = (density * 100.0) as u32;
            group.bench_function(format!("dense_{pct}pct"), |bench| {
                bench.iter(|| z.matmul(&w.t().unwrap()).unwrap())
            });
            group.bench_function(format!("event_driven_{pct}pct"), |bench| {
                bench.iter(|| event.apply(&z).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, recurrent);
criterion_main!(benches);
