use candle_adex::{fused, AdexParameters, FeedForwardState};
use candle_core::{DType, Device, Tensor};
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let p = AdexParameters::default();
    let m: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(1000);
    let t = 100usize;
    let u8s = std::env::args().nth(2).is_some();
    let reps = 3_000_000 / m;
    let xs = Tensor::rand(0f32, 6.0, (t, m), &dev)?;
    let out = Tensor::zeros((t, m), if u8s { DType::U8 } else { DType::F32 }, &dev)?;
    let st = FeedForwardState::initial(&p, m, DType::F32, &dev)?;
    let t0 = std::time::Instant::now();
    for _ in 0..reps {
        fused::lif_adex_feed_forward_seq_into(&xs, &st, &p, &out)?;
    }
    println!("{:.3} G/s", reps as f64 * (t*m) as f64 / t0.elapsed().as_secs_f64() / 1e9);
    Ok(())
}
