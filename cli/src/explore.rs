//! `adex patterns` and `adex fi-curve`: single-neuron behaviour, printed and plotted.

use super::config;
use super::plot::{Figure, Mark, Panel, PALETTE};
use candle_adex::patterns::{fi_curve, Pattern, StepProtocol};
use candle_adex::AdexParameters;
use std::path::PathBuf;
use std::process::ExitCode;

pub const PATTERNS_HELP: &str = "\
adex patterns: the classic AdEx firing patterns (Naud et al. 2008, Table 1, rescaled to norse's
dimensionless units with a v_peak cutoff; see the docs of candle_adex::patterns), each neuron
driven by a current step. Prints spike count, first-spike latency, first/last inter-spike
interval and ISI CV per pattern; draws one panel per pattern (membrane potential, spikes).

OPTIONS:
    --pattern NAME   tonic, adapting, initial-burst, bursting, irregular, transient or delayed
                     (repeatable; default all seven)
    --duration S     simulated time in seconds (default 0.5)
    --onset S        step onset in seconds (default 0.05)
    --dt DT          Euler step in seconds (default 0.0001)
    --gain G         factor on each preset's step current (default 1)
    --plot FILE      write the figure (.png or .svg)";

pub const FI_HELP: &str = "\
adex fi-curve: firing rate against a constant input current (norse's input x per step) for one
parameter set, all currents simulated at once (one neuron each, f64, fused kernels). Prints a
table; draws the curve.

OPTIONS:
    --params FILE    parameters (.toml or .json, norse's names; see adex simulate --help);
                     default norse's defaults
    --pattern NAME   use a firing-pattern preset's parameters instead (see adex patterns)
    --max X          largest current (default: 4 for --params/defaults, 2x the preset's step)
    --points N       number of currents from 0 to --max (default 41)
    --duration S     simulated time per current in seconds (default 1)
    --transient S    initial time not counted, in seconds (default 0.2)
    --dt DT          Euler step in seconds (default: the parameters' own)
    --plot FILE      write the figure (.png or .svg)";

/// Iterates `--flag value` pairs, with errors that point at the command's help.
fn pairs<'a>(
    cmd: &'a str,
    args: &'a [String],
) -> impl Iterator<Item = Result<(&'a str, &'a str), String>> + 'a {
    args.chunks(2).map(move |pair| match pair {
        [flag, value] if flag.starts_with("--") => Ok((flag.as_str(), value.as_str())),
        [flag] if flag.starts_with("--") => Err(format!(
            "option {flag} needs a value (see adex {cmd} --help)"
        )),
        [other, ..] => Err(format!(
            "unexpected argument {other:?} (see adex {cmd} --help)"
        )),
        [] => unreachable!("chunks are never empty"),
    })
}

/// A positive finite number.
pub fn positive(flag: &str, value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| format!("{flag}: expected a positive number, got {value:?}"))
}

fn non_negative(flag: &str, value: &str) -> Result<f64, String> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| format!("{flag}: expected a number >= 0, got {value:?}"))
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

pub fn patterns_cmd(args: &[String]) -> Result<ExitCode, String> {
    let mut protocol = StepProtocol::default();
    let mut chosen = vec![];
    let mut plot: Option<PathBuf> = None;
    for pair in pairs("patterns", args) {
        let (flag, value) = pair?;
        match flag {
            "--pattern" => chosen.push(Pattern::from_name(value).map_err(|e| e.to_string())?),
            "--duration" => protocol.duration = positive(flag, value)?,
            "--onset" => protocol.onset = non_negative(flag, value)?,
            "--dt" => protocol.dt = positive(flag, value)?,
            "--gain" => protocol.gain = non_negative(flag, value)?,
            "--plot" => plot = Some(value.into()),
            _ => return Err(format!("unknown option {flag}\n\n{PATTERNS_HELP}")),
        }
    }
    if chosen.is_empty() {
        chosen = Pattern::ALL.to_vec();
    }
    println!(
        "{:<14} {:>6} {:>11} {:>14} {:>13} {:>7}",
        "pattern", "spikes", "latency ms", "first ISI ms", "last ISI ms", "ISI CV"
    );
    let mut panels = vec![];
    for (k, pattern) in chosen.iter().enumerate() {
        let r = pattern
            .step_response(&protocol)
            .map_err(|e| e.to_string())?;
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
        let peak = v_peak.map_err(|e| e.to_string())?[0];
        // spikes drawn from the reset potential up to the cutoff
        let mut v = r.v.clone();
        for &ts in &r.spike_times {
            let step = (ts / r.dt).round() as usize - 1;
            if let Some(x) = v.get_mut(step) {
                *x = peak;
            }
        }
        panels.push(
            Panel::new(
                &format!(
                    "{} ({} spike{})",
                    pattern.name(),
                    f.spikes,
                    if f.spikes == 1 { "" } else { "s" }
                ),
                "time (ms)",
                "v (dimensionless)",
            )
            .with(t, v, PALETTE[k % PALETTE.len()], Mark::Line),
        );
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

pub fn fi_cmd(args: &[String]) -> Result<ExitCode, String> {
    let mut params: Option<AdexParameters> = None;
    let mut preset: Option<Pattern> = None;
    let (mut max, mut points, mut duration, mut transient) = (None, 41usize, 1.0, 0.2);
    let mut dt: Option<f64> = None;
    let mut plot: Option<PathBuf> = None;
    for pair in pairs("fi-curve", args) {
        let (flag, value) = pair?;
        match flag {
            "--params" => params = Some(config::load(value.as_ref(), AdexParameters::default())?),
            "--pattern" => {
                preset = Some(Pattern::from_name(value).map_err(|e| e.to_string())?);
            }
            "--max" => max = Some(positive(flag, value)?),
            "--points" => {
                points = value
                    .parse::<usize>()
                    .ok()
                    .filter(|&n| n >= 2)
                    .ok_or_else(|| format!("--points: expected an integer >= 2, got {value:?}"))?
            }
            "--duration" => duration = positive(flag, value)?,
            "--transient" => transient = non_negative(flag, value)?,
            "--dt" => dt = Some(positive(flag, value)?),
            "--plot" => plot = Some(value.into()),
            _ => return Err(format!("unknown option {flag}\n\n{FI_HELP}")),
        }
    }
    if params.is_some() && preset.is_some() {
        return Err("--params and --pattern exclude each other".into());
    }
    let (mut p, default_max, what) = match preset {
        Some(pattern) => {
            let (p, current) = pattern.naud().to_adex(dt.unwrap_or(1e-4));
            (p, 2.0 * current, format!("preset {}", pattern.name()))
        }
        None => (params.unwrap_or_default(), 4.0, "parameters".to_string()),
    };
    if let Some(dt) = dt {
        p.dt = dt;
    }
    if transient >= duration {
        return Err(format!(
            "--transient ({transient} s) must be shorter than --duration ({duration} s)"
        ));
    }
    let max = max.unwrap_or(default_max);
    let currents: Vec<f64> = (0..points)
        .map(|k| max * k as f64 / (points - 1) as f64)
        .collect();
    let rates = fi_curve(&p, &currents, duration, transient).map_err(|e| e.to_string())?;
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
        let panel = Panel::new(
            &format!("f-I curve, {what}"),
            "input current x",
            "rate (Hz)",
        )
        .with(currents, rates, PALETTE[0], Mark::Line);
        Figure::new("AdEx firing rate against input current", vec![panel], 1).save(&path)?;
        println!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}
