//! The `adex` command end to end: simulate with a figure and a recording, patterns, f-I curve,
//! help texts, and user mistakes reported without backtraces.

use std::path::PathBuf;
use std::process::{Command, Output};

fn adex(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adex"))
        .args(args)
        .output()
        .unwrap()
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("adex-cmd-{}-{name}", std::process::id()))
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn simulate_prints_statistics_and_writes_a_figure_and_a_recording() {
    let (svg, png, rec) = (tmp("sim.svg"), tmp("sim.png"), tmp("sim.safetensors"));
    let o = adex(&[
        "simulate",
        "--neurons",
        "300",
        "--steps",
        "400",
        "--plot",
        svg.to_str().unwrap(),
        "--record",
        rec.to_str().unwrap(),
        "--record-states",
        "v,i,a",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    for needle in [
        "neurons               300",
        "neuron-steps/s",
        "firing rate (Hz)",
        "ISI CV",
        "adaptation a",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    for label in [
        "spike raster",
        "time (s)",
        "rate (Hz)",
        "membrane potential",
        "adaptation current",
    ] {
        assert!(text.contains(label), "{label}");
    }
    let tensors = candle_core::safetensors::load(&rec, &candle_core::Device::Cpu).unwrap();
    assert_eq!(tensors["spikes"].dims(), &[400, 300]);
    assert_eq!(tensors["spikes"].dtype(), candle_core::DType::U8);
    for name in ["v", "i", "a"] {
        assert_eq!(tensors[name].dims(), &[400, 300], "{name}");
    }
    // the recorded spikes are the ones the statistics counted
    let total: u32 = tensors["spikes"]
        .to_dtype(candle_core::DType::U32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(
        out.contains(&format!("spikes                {total}")),
        "{total}: {out}"
    );
    // a PNG of the same run, same seed: same statistics
    let o2 = adex(&[
        "simulate",
        "--neurons",
        "300",
        "--steps",
        "400",
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(o2.status.success());
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    for p in [svg, png, rec] {
        std::fs::remove_file(p).ok();
    }
}

#[test]
fn simulate_reads_parameter_and_input_files() {
    let params = tmp("p.toml");
    std::fs::write(&params, "tau_mem_inv = 50\nv_th = 1.2\n").unwrap();
    let o = adex(&[
        "simulate",
        "--neurons",
        "50",
        "--steps",
        "100",
        "--params",
        params.to_str().unwrap(),
        "--input",
        "ramp",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let input = tmp("input.safetensors");
    let x = candle_core::Tensor::full(3f32, (120, 7), &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("input".to_string(), x)]),
        &input,
    )
    .unwrap();
    let o = adex(&["simulate", "--input", input.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("neurons               7"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("steps                 120"),
        "{}",
        stdout(&o)
    );
    std::fs::write(&params, "tau_mem = 50\n").unwrap();
    let o = adex(&["simulate", "--params", params.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown parameter `tau_mem`"),
        "{}",
        stderr(&o)
    );
    std::fs::write(&params, "v_th = [1.0, 1.1]\n").unwrap();
    let o = adex(&[
        "simulate",
        "--neurons",
        "3",
        "--params",
        params.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("v_th"), "{}", stderr(&o));
    std::fs::remove_file(params).ok();
    std::fs::remove_file(input).ok();
}

#[test]
fn patterns_and_fi_curve_print_and_plot() {
    let png = tmp("patterns.png");
    let o = adex(&["patterns", "--plot", png.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    for name in [
        "tonic",
        "adapting",
        "initial-burst",
        "bursting",
        "irregular",
        "transient",
        "delayed",
    ] {
        assert!(out.contains(name), "{name}: {out}");
    }
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);
    let svg = tmp("fi.svg");
    let o = adex(&[
        "fi-curve",
        "--pattern",
        "tonic",
        "--points",
        "6",
        "--duration",
        "0.4",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(
        out.contains("rate (Hz)") && out.contains("rheobase"),
        "{out}"
    );
    assert!(std::fs::read_to_string(&svg)
        .unwrap()
        .contains("input current x"));
    std::fs::remove_file(png).ok();
    std::fs::remove_file(svg).ok();
}

#[test]
fn help_and_user_mistakes() {
    for cmd in ["simulate", "patterns", "fi-curve", "bench", "conformance"] {
        let o = adex(&[cmd, "--help"]);
        assert!(o.status.success());
        assert!(
            stdout(&o).contains("OPTIONS") || stdout(&o).contains("USAGE"),
            "{cmd}"
        );
    }
    for (args, needle) in [
        (
            vec!["simulate", "--neurons", "zero"],
            "--neurons: expected a positive integer",
        ),
        (
            vec!["simulate", "--plot", "x.jpg", "--steps", "10"],
            ".png or .svg",
        ),
        (
            vec!["simulate", "--input", "sine"],
            "--input: expected noisy",
        ),
        (
            vec!["simulate", "--record-states", "v,q"],
            "\"q\" is not one of v, i, a",
        ),
        (
            vec!["patterns", "--pattern", "chattering"],
            "unknown firing pattern",
        ),
        (vec!["fi-curve", "--points", "1"], "--points"),
        (vec!["fi-curve", "--transient", "2"], "--transient"),
        (vec!["frobnicate"], "unknown command"),
    ] {
        let o = adex(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
}

#[test]
fn a_closed_output_pipe_ends_the_command_without_a_panic() {
    use std::io::Read;
    use std::process::Stdio;
    // `adex patterns | head -0`: the reader is gone before the table is printed.
    let mut child = Command::new(env!("CARGO_BIN_EXE_adex"))
        .arg("patterns")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !status.success(),
        "the command cannot have printed its table"
    );
}
