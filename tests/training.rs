//! A short run of the training example (`examples/train_patterns.rs`): the loss must fall and the
//! accuracy rise well above chance.

#[path = "../examples/train_patterns.rs"]
#[allow(dead_code)]
mod train_patterns;

use train_patterns::{train, Config, Progress};

#[test]
fn a_short_training_run_learns() {
    let cfg = Config {
        iterations: 60,
        batch: 32,
        ..Default::default()
    };
    let mut log: Vec<Progress> = vec![];
    let held_out = train(&cfg, |p| log.push(p)).unwrap();
    assert_eq!(log.len(), cfg.iterations);
    let mean = |part: &[Progress], f: fn(&Progress) -> f32| {
        part.iter().map(f).sum::<f32>() / part.len() as f32
    };
    let (head, tail) = (&log[..8], &log[log.len() - 8..]);
    let (loss0, loss1) = (mean(head, |p| p.loss), mean(tail, |p| p.loss));
    let (acc0, acc1) = (mean(head, |p| p.accuracy), mean(tail, |p| p.accuracy));
    let chance = 1.0 / cfg.classes as f32;
    eprintln!("loss {loss0:.3} -> {loss1:.3}, accuracy {acc0:.3} -> {acc1:.3}, held out {held_out:.3} (chance {chance})");
    assert!(loss1 < 0.7 * loss0, "loss {loss0} -> {loss1}");
    assert!(acc1 > chance + 0.3, "accuracy {acc0} -> {acc1}");
    assert!(held_out > chance + 0.3, "held-out accuracy {held_out}");
    assert!(log.iter().all(|p| p.loss.is_finite()));
}
