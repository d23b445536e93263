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
        "neuron 2", // the traces' legend
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
        stderr(&o).contains("p.toml:1: unknown field `tau_mem`"),
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

/// Runs `simulate --dtype <dtype> --params defaults --input <xs> --record`, and the library's
/// sequence over the same input in one call: the recorded spikes and states must be equal.
fn simulate_equals_one_library_call(name: &str, xs: candle_core::Tensor, dtype: &str) {
    use candle_adex::{lif_adex_feed_forward_seq, AdexParameters, FeedForwardState};
    use candle_core::{DType, Device};
    let (input, rec) = (
        tmp(&format!("{name}-in.safetensors")),
        tmp(&format!("{name}-rec.safetensors")),
    );
    let map = std::collections::HashMap::from([("input".to_string(), xs.clone())]);
    candle_core::safetensors::save(&map, &input).unwrap();
    let o = adex(&[
        "simulate",
        "--dtype",
        dtype,
        "--params",
        "defaults",
        "--device",
        "cpu",
        "--input",
        input.to_str().unwrap(),
        "--record",
        rec.to_str().unwrap(),
        "--record-states",
        "v,i,a",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("norse's default parameters"),
        "{}",
        stdout(&o)
    );
    let got = candle_core::safetensors::load(&rec, &Device::Cpu).unwrap();
    let p = AdexParameters::default();
    let s0 = FeedForwardState::initial(&p, xs.dim(1).unwrap(), xs.dtype(), &Device::Cpu).unwrap();
    let want = lif_adex_feed_forward_seq(&xs, &s0, &p, true).unwrap();
    let wide = if xs.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let rec_w = want.recorded.unwrap();
    let spikes = want.spikes.to_dtype(DType::U8).unwrap();
    for (key, want) in [
        ("spikes", &spikes),
        ("v", &rec_w.v),
        ("i", &rec_w.i),
        ("a", &rec_w.a),
    ] {
        let want = if key == "spikes" {
            want.clone()
        } else {
            want.to_dtype(wide).unwrap()
        };
        assert_eq!(got[key].dtype(), want.dtype(), "{name} {key}");
        let differ: f64 = got[key]
            .ne(&want)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(
            differ, 0.0,
            "{name}: {differ} values of {key} differ from one library call"
        );
    }
    // the run spiked, so the comparison saw dynamics, not a resting population
    assert!(
        spikes
            .to_dtype(DType::F32)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 50.0
    );
    std::fs::remove_file(input).ok();
    std::fs::remove_file(rec).ok();
}

#[test]
fn simulate_keeps_the_runs_dtype_and_does_not_depend_on_its_chunks() {
    use candle_core::{DType, Device, Tensor};
    // A noisy input with bits below f32's precision, over 250 steps (three progress chunks).
    let (t, n) = (250, 60);
    let x: Vec<f64> = (0..t * n)
        .map(|k| 1.5 + (k as f64 * 0.7311).sin() * 2.0 + 1e-9 * (k % 7) as f64)
        .collect();
    let xs = Tensor::from_vec(x, (t, n), &Device::Cpu).unwrap();
    // f64: the file's input is not rounded to f32 on its way to an f64 run.
    simulate_equals_one_library_call("f64", xs.clone(), "f64");
    // bf16 and f16: the state stays in f32 between chunks, as in one library call.
    for (dtype, name) in [(DType::BF16, "bf16"), (DType::F16, "f16")] {
        simulate_equals_one_library_call(name, xs.to_dtype(dtype).unwrap(), name);
    }
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
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("input current x"), "the x axis label");
    assert!(text.contains("1/dt: a spike every step"), "the legend");
    std::fs::remove_file(png).ok();
    std::fs::remove_file(svg).ok();
}

#[test]
fn help_version_and_completions() {
    for cmd in ["simulate", "patterns", "fi-curve", "bench", "conformance"] {
        // `adex CMD --help` and `adex help CMD` print the command's own help
        for args in [vec![cmd, "--help"], vec!["help", cmd]] {
            let o = adex(&args);
            assert!(o.status.success(), "{args:?}");
            let out = stdout(&o);
            assert!(
                out.contains(&format!("Usage: adex {cmd}")) && out.contains("Options:"),
                "{args:?}: {out}"
            );
        }
    }
    // typed values list what they allow
    let out = stdout(&adex(&["help", "bench"]));
    assert!(
        out.contains("f32") && out.contains("bf16") && out.contains("avx2"),
        "{out}"
    );
    for flag in ["--version", "-V"] {
        let o = adex(&[flag]);
        assert!(o.status.success());
        assert_eq!(
            stdout(&o).trim(),
            format!("adex {}", env!("CARGO_PKG_VERSION"))
        );
    }
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef adex"),
        ("fish", "complete -c adex"),
    ] {
        let o = adex(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let script = stdout(&o);
        assert!(script.contains(needle), "{shell}: {script}");
        assert!(
            script.contains("fi-curve") && script.contains("--record-states"),
            "{shell}"
        );
    }
}

#[test]
fn options_take_either_form_in_any_order() {
    // `--flag=value` and `--flag value`, in any order
    let o = adex(&["simulate", "--steps=20", "--neurons=10", "--dtype", "bf16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("simulating 10 AdEx neurons for 20 steps"),
        "{}",
        stdout(&o)
    );
    // --op before --device: judged against the device given after it (this build has no GPU,
    // so the device is what fails, at run time)
    let o = adex(&["bench", "--op", "seq_bwd", "--device", "cuda", "--quick"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--device cuda"), "{}", stderr(&o));
    // a GPU-only op on the CPU is refused, not dropped
    let o = adex(&["bench", "--op", "seq_bwd"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("runs only on a GPU"), "{}", stderr(&o));
}

#[test]
fn user_mistakes_exit_2_with_one_line_and_run_time_failures_exit_1() {
    for (args, needle) in [
        (
            vec!["simulate", "--neurons", "zero"],
            "expected a positive integer",
        ),
        (vec!["simulate", "--neurons"], "a value is required"),
        (
            vec!["simulate", "--plot", "x.jpg", "--steps", "10"],
            ".png or .svg",
        ),
        (
            vec!["simulate", "--plot", "/nonexistent/dir/x.png"],
            "no directory /nonexistent/dir",
        ),
        (
            vec!["simulate", "--record", "/nonexistent/r.safetensors"],
            "no directory /nonexistent",
        ),
        // a directory that exists and takes no files (Linux's /proc, even for root)
        (
            vec!["simulate", "--plot", "/proc/adex.png"],
            "cannot write /proc/adex.png",
        ),
        (
            vec!["simulate", "--input", "sine"],
            "expected noisy, constant, ramp",
        ),
        (
            vec!["simulate", "--record-states", "v,q"],
            "possible values: v, i, a",
        ),
        (
            vec!["simulate", "--dtype", "f8"],
            "possible values: f32, f64, f16, bf16",
        ),
        (
            vec!["patterns", "--pattern", "chattering"],
            "possible values: tonic",
        ),
        (
            vec!["patterns", "--pattern", "tonic", "--duration", "0.05"],
            "--onset",
        ),
        (
            vec!["fi-curve", "--points", "1"],
            "expected an integer >= 2",
        ),
        (vec!["fi-curve", "--transient", "2"], "--transient"),
        (
            vec!["fi-curve", "--params", "p.toml", "--pattern", "tonic"],
            "cannot be used with",
        ),
        (vec!["bench", "--shape", "10,1"], "expected T,B,N"),
        (
            vec![
                "bench",
                "--op",
                "seq_fwd_bwd",
                "--dtype",
                "f16",
                "--shape",
                "10,1,128",
            ],
            "nothing to measure",
        ),
        (
            vec!["bench", "--isa", "sse"],
            "possible values: avx512, avx2, portable",
        ),
        (vec!["conformance"], "required"),
        (
            vec!["simulate", "--neurons", "1000000000", "--steps", "1000000"],
            "GiB are available",
        ),
        (
            vec![
                "simulate",
                "--neurons",
                "18446744073709551615",
                "--steps",
                "2",
            ],
            "do not fit in memory",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ] {
        let o = adex(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("backtrace"),
            "{err}"
        );
    }
    let dir = tmp("figure-dir.png");
    std::fs::create_dir_all(&dir).unwrap();
    let o = adex(&["simulate", "--plot", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("is a directory"), "{}", stderr(&o));
    std::fs::remove_dir(dir).ok();
    // a bad parameter file: one line naming the file and key, even with RUST_BACKTRACE set
    let params = tmp("bad.toml");
    std::fs::write(&params, "tau_mem = 50\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_adex"))
        .args(["simulate", "--params", params.to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("tau_mem") && err.contains("bad.toml"), "{err}");
    assert!(err.lines().count() <= 3, "{err}");
    std::fs::remove_file(params).ok();
    // a failure while running (an unreadable golden file) exits 1
    let o = adex(&["conformance", "/nonexistent.safetensors"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // a device that is not there (Metal, off macOS): exit 1, the option and its cause on one
    // line; -v puts the cause on a line of its own
    if cfg!(not(target_os = "macos")) {
        let args = [
            "simulate",
            "--device",
            "metal",
            "--steps",
            "10",
            "--neurons",
            "4",
        ];
        let o = Command::new(env!("CARGO_BIN_EXE_adex"))
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(err.starts_with("error: --device metal: "), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        let o = adex(&[&args[..], &["-v"]].concat());
        let err = stderr(&o);
        assert!(
            err.starts_with("error: --device metal\n\nCaused by:\n"),
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

/// Parses every stdout line as a JSON object.
fn json_lines(o: &Output) -> Vec<serde_json::Map<String, serde_json::Value>> {
    stdout(o)
        .lines()
        .map(|l| match serde_json::from_str(l) {
            Ok(serde_json::Value::Object(m)) => m,
            other => panic!("not a JSON object: {l}: {other:?}"),
        })
        .collect()
}

#[test]
fn json_output_of_simulate_conformance_and_bench() {
    let rec = tmp("json.safetensors");
    let o = adex(&[
        "simulate",
        "--json",
        "--neurons",
        "40",
        "--steps",
        "150",
        "--record",
        rec.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), 1, "{}", stdout(&o));
    let run = &lines[0];
    for key in [
        "neurons",
        "steps",
        "dt",
        "dtype",
        "device",
        "path",
        "parameters",
        "seed",
        "wall_s",
        "neuron_steps_per_s",
        "spikes",
        "rate_hz",
        "silent_fraction",
        "isi_cv",
        "isi_cv_neurons",
        "a_final_mean",
        "a_final_max",
        "mean_a",
        "figure",
        "recording",
    ] {
        assert!(run.contains_key(key), "{key}: {run:?}");
    }
    assert_eq!(run["neurons"], 40);
    assert_eq!(run["dtype"], "f32");
    assert_eq!(run["mean_a"].as_array().unwrap().len(), 2);
    let recorded = candle_core::safetensors::load(&rec, &candle_core::Device::Cpu).unwrap();
    let total: f32 = recorded["spikes"]
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert_eq!(run["spikes"].as_f64().unwrap(), total as f64);
    std::fs::remove_file(rec).ok();

    let golden =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/norse/ff_step.safetensors");
    let cases = candle_adex::conformance::GoldenFile::open(&golden)
        .unwrap()
        .cases
        .len();
    let o = adex(&[
        "conformance",
        "--json",
        golden.to_str().unwrap(),
        "/nonexistent.safetensors",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let lines = json_lines(&o);
    assert_eq!(lines.len(), cases + 1);
    for case in &lines[..cases] {
        assert_eq!(case["outcome"], "pass", "{case:?}");
        assert_eq!(case["group"], "ff_step");
        let measures = case["measures"].as_array().unwrap();
        assert!(
            !measures.is_empty() && measures.iter().all(|m| m["ok"] == true),
            "{case:?}"
        );
    }
    assert_eq!(lines[cases]["outcome"], "unreadable");

    let o = adex(&[
        "bench",
        "--json",
        "--op",
        "seq",
        "--dtype",
        "f32",
        "--shape",
        "10,1,128",
        "--no-reference",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = json_lines(&o);
    assert_eq!(rows.len(), 1);
    for key in [
        "op",
        "dtype",
        "t",
        "b",
        "n",
        "neuron_steps_per_s",
        "memory_roof_neuron_steps_per_s",
        "in_cache_neuron_steps_per_s",
    ] {
        assert!(rows[0].contains_key(key), "{key}: {:?}", rows[0]);
    }
    assert_eq!(rows[0]["op"], "seq");
}
