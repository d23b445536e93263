use candle_adex::{fused, reference, AdexParameters, FeedForwardState};
use candle_core::{DType, Device, Tensor};
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let p = AdexParameters::default();
    for &(t, m) in &[(100usize, 1000usize), (100, 64*16384), (1000, 100000)] {
        let xs = Tensor::rand(0f32, 6.0, (t, m), &dev)?;
        let s0 = FeedForwardState::initial(&p, m, DType::F32, &dev)?;
        let a = fused::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
        let b = reference::lif_adex_feed_forward_seq(&xs, &s0, &p, false)?;
        let flips = (a.spikes.clone() - &b.spikes)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        let dv = (a.state.v.clone() - &b.state.v)?.abs()?.max_all()?.to_scalar::<f32>()?;
        println!("t={t} m={m} spikes={} flips={flips} dv={dv}", a.spikes.sum_all()?.to_scalar::<f32>()?);
        let out = Tensor::zeros((t, m), DType::F32, &dev)?;
        let out8 = Tensor::zeros((t, m), DType::U8, &dev)?;
        let src = xs.flatten_all()?.to_vec1::<f32>()?;
        let mut dst = vec![1f32; t*m];
        let st = FeedForwardState::initial(&p, m, DType::F32, &dev)?;
        for _ in 0..4 {
            let t0 = std::time::Instant::now();
            fused::lif_adex_feed_forward_seq_into(&xs, &st, &p, &out)?;
            let dt = t0.elapsed().as_secs_f64();
            let t0 = std::time::Instant::now();
            fused::lif_adex_feed_forward_seq_into(&xs, &st, &p, &out8)?;
            let du = t0.elapsed().as_secs_f64();
            let t0 = std::time::Instant::now();
            dst.copy_from_slice(&src);
            std::hint::black_box(&mut dst);
            let dc = t0.elapsed().as_secs_f64();
            let n = (t*m) as f64;
            println!("  into f32 {:.3} G/s  u8 {:.3} G/s  copy {:.3} G/s", n/dt/1e9, n/du/1e9, n/dc/1e9);
        }
    }
    Ok(())
}
