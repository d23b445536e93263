use candle_core::{Device, Tensor};
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (t, m) = (1000usize, 100000usize);
    let xs = Tensor::rand(0f32, 6.0, (t, m), &dev)?;
    let v: Vec<f32> = xs.flatten_all()?.to_vec1()?;
    let mut out = vec![0f32; t * m];
    for _ in 0..3 {
        let st = std::time::Instant::now();
        let _c = xs.copy()?;
        let a = st.elapsed().as_secs_f64();
        let st = std::time::Instant::now();
        out.copy_from_slice(&v);
        let b = st.elapsed().as_secs_f64();
        let st = std::time::Instant::now();
        let mut fresh = vec![0f32; t * m];
        fresh.copy_from_slice(&v);
        let c = st.elapsed().as_secs_f64();
        println!("candle copy {:.2} G/s  prealloc memcpy {:.2} G/s fresh vec memcpy {:.2} G/s", (t*m) as f64/a/1e9, (t*m) as f64/b/1e9, (t*m) as f64/c/1e9);
    }
    Ok(())
}
