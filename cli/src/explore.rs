//! `adex patterns` and `adex fi-curve`: single-neuron behaviour, printed and plotted.

use super::args::{FiArgs, PatternsArgs};
use super::plot::{Corner, Figure, Mark, Panel, PALETTE};
use super::{config, usage};
use candle_adex::patterns::{fi_curve, Pattern, StepProtocol};
use candle_adex::AdexParameters;
use std::process::ExitCode;

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

pub fn patterns_cmd(a: PatternsArgs) -> anyhow::Result<ExitCode> {
    let protocol = StepProtocol {
        dt: a.dt,
        duration: a.duration,
        onset: a.onset,
        gain: a.gain,
    };
    if a.onset >= a.duration || a.dt >= a.duration {
        return Err(usage(format!(
            "--onset ({} s) and --dt ({} s) must be shorter than --duration ({} s)",
            a.onset, a.dt, a.duration
        )));
    }
    let (mut chosen, plot) = (a.pattern, a.plot);
    if chosen.is_empty() {
        chosen = Pattern::ALL.to_vec();
    }
    println!(
        "{:<14} {:>6} {:>11} {:>14} {:>13} {:>7}",
        "pattern", "spikes", "latency ms", "first ISI ms", "last ISI ms", "ISI CV"
    );
    let mut panels = vec![];
    for (k, pattern) in chosen.iter().enumerate() {
        let r = pattern.step_response(&protocol)?;
        let f = r.features();
        println!(
            "{:<14} {:>6} {:>11} {:>14} {:>13} {:>7}",
            pattern.name(),
            f.spikes,
            fmt_opt(f.latency),
            fmt_opt(f.first_isi),
            fmt_opt(f.last_isi),
            f.cv.map_or("-".into(), |c| format!("{c:.2}"))
        );
        let t: Vec<f64> = (1..=r.v.len()).map(|s| 1e3 * s as f64 * r.dt).collect();
        let (p, _) = pattern.naud().to_adex(protocol.dt);
        let v_peak = p.v_peak.as_ref().map_or(Ok(vec![1.0]), |v| v.values());
        let peak = v_peak?[0];
        // spikes drawn from the reset potential up to the cutoff
        let mut v = r.v.clone();
        for &ts in &r.spike_times {
            let step = (ts / r.dt).round() as usize - 1;
            if let Some(x) = v.get_mut(step) {
                *x = peak;
            }
        }
        let ms = 1e3 * r.dt * r.v.len() as f64;
        panels.push(Panel {
            x_range: Some((0.0, ms)),
            ..Panel::new(
                &format!(
                    "{} ({} spike{})",
                    pattern.name(),
                    f.spikes,
                    if f.spikes == 1 { "" } else { "s" }
                ),
                "time (ms)",
                "v (dimensionless)",
            )
            .with(t, v, PALETTE[k % PALETTE.len()], Mark::Line)
        });
    }
    if let Some(path) = plot {
        let fig = Figure::new(
            "AdEx firing patterns under a current step (Naud et al. 2008 presets)",
            panels,
            2,
        );
        fig.save(&path)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn fi_cmd(a: FiArgs) -> anyhow::Result<ExitCode> {
    let (max, points, duration, transient, dt, plot) =
        (a.max, a.points, a.duration, a.transient, a.dt, a.plot);
    if transient >= duration {
        return Err(usage(format!(
            "--transient ({transient} s) must be shorter than --duration ({duration} s)"
        )));
    }
    let params = match &a.params {
        Some(path) => Some(config::load(path, AdexParameters::default().dt).map_err(usage)?),
        None => None,
    };
    let preset = a.pattern;
    let (mut p, default_max, what) = match (preset, params) {
        (Some(pattern), _) => {
            let (p, current) = pattern.naud().to_adex(dt.unwrap_or(1e-4));
            (p, 2.0 * current, format!("preset {}", pattern.name()))
        }
        (None, Some(p)) => {
            let file = a.params.as_ref().map(|f| f.display().to_string());
            (
                p,
                4.0,
                format!("parameters of {}", file.unwrap_or_default()),
            )
        }
        (None, None) => (AdexParameters::default(), 4.0, "norse's defaults".into()),
    };
    if let Some(dt) = dt {
        p.dt = dt;
    }
    let max = max.unwrap_or(default_max);
    let currents: Vec<f64> = (0..points)
        .map(|k| max * k as f64 / (points - 1) as f64)
        .collect();
    let rates = fi_curve(&p, &currents, duration, transient)?;
    println!("f-I curve of the {what} (dt = {} s, {duration} s per current, first {transient} s not counted)", p.dt);
    println!("{:>12} {:>12}", "current", "rate (Hz)");
    for (c, r) in currents.iter().zip(&rates) {
        println!("{c:>12.4} {r:>12.2}");
    }
    match currents.iter().zip(&rates).find(|(_, &r)| r > 0.0) {
        Some((c, _)) => println!(
            "rheobase between {:.4} and {c:.4}",
            c - max / (points - 1) as f64
        ),
        None => println!("no spikes up to {max}"),
    }
    if let Some(path) = plot {
        let panel = Panel {
            legend: Corner::UpperLeft,
            ..Panel::new(
                &format!("f-I curve, {what}"),
                "input current x",
                "rate (Hz)",
            )
        }
        .with_labelled("rate", currents.clone(), rates, PALETTE[0], Mark::Line)
        .with_labelled(
            "1/dt: a spike every step",
            vec![0.0, max],
            vec![1.0 / p.dt; 2],
            [128, 128, 128],
            Mark::Line,
        );
        Figure::new("AdEx firing rate against input current", vec![panel], 1).save(&path)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
