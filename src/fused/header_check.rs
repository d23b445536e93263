//! The GPU sources checked on the CPU, without a GPU: the math header (`kernels/adex_math.h`)
//! compiled as C++ (plain, and with the Metal definitions of its macros) and held to the Rust
//! definition ([`super::math`]) bit for bit; the CUDA kernels (`kernels/adex.cu`) and the Metal
//! kernels (`kernels/adex.metal`) compiled as C++ and run thread by thread on the host against
//! plain loops over the same header (indexing, state slots, recording, second drive, per-neuron
//! parameters, the backward's checkpointed segments, half-type storage for Metal); and the
//! Metal source held to what the Rust side asks of it ([`super::metal_abi`]: kernel names,
//! buffer indices, parameter layout). A C++ compiler is needed (`$CXX`, else `c++`); without one
//! the tests fail and say so.

use super::math::{self, Coef, N_COEF};
use crate::surrogate::SurrogateMethod;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The directory of the GPU sources.
fn kernels_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

/// The flags that compile Metal sources as C++: the Metal branch of the header, `<metal_stdlib>`
/// from the host stand-in, Metal's attributes (`[[buffer(n)]]`) ignored.
fn metal_flags() -> Vec<String> {
    vec![
        "-D__METAL_VERSION__=310".to_string(),
        "-Wno-attributes".to_string(),
        "-I".to_string(),
        kernels_dir().join("metal_host").display().to_string(),
    ]
}

/// Compiles `kernels/<source>` with `extra` flags and returns the executable.
pub(crate) fn compile_host(source: &str, extra: &[&str]) -> PathBuf {
    let name = source.trim_end_matches(".cpp");
    let kernels = kernels_dir();
    let tag = if extra.is_empty() { "" } else { "-x" };
    let out = std::env::temp_dir().join(format!("{name}{tag}-{}", std::process::id()));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let status = Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-Wall", "-Werror"])
        .arg("-Wno-unknown-pragmas")
        .args(extra)
        .arg("-I")
        .arg(&kernels)
        .arg(kernels.join(source))
        .arg("-o")
        .arg(&out)
        .status()
        .unwrap_or_else(|e| {
            panic!("the header check needs a C++ compiler (`{cxx}`, set $CXX to choose one): {e}")
        });
    assert!(
        status.success(),
        "compiling the math header with {cxx} failed"
    );
    out
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next()
    }
}

/// One record: alpha, the coefficients, v i a x x2, syn, has_x2, gz gv gi ga.
struct Record {
    method: usize,
    alpha: f64,
    coef: [f64; N_COEF],
    state: [f64; 5],
    syn: bool,
    has_x2: bool,
    grads: [f64; 4],
}

fn records(count: usize) -> Vec<Record> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    (0..count)
        .map(|k| {
            let delta_t = rng.range(0.1, 2.0);
            let v_th = rng.range(0.5, 1.5);
            let (v_leak, v_spike, v_reset) = (
                rng.range(-0.2, 0.2),
                if k % 3 == 0 {
                    v_th
                } else {
                    rng.range(1.5, 5.0)
                },
                rng.range(-0.5, 0.3),
            );
            let (a_current, a_spike) = (rng.range(0.0, 2.0), rng.range(0.0, 1.0));
            let c_mem = rng.range(0.01, 0.3);
            // the membrane's base-2 exponent, as fused::resolve_coefs forms it
            let x_scale = std::f64::consts::LOG2_E / delta_t;
            let coef = [
                v_leak,
                -v_th * x_scale,
                v_spike,
                v_reset,
                c_mem * delta_t,
                x_scale,
                a_current,
                a_spike,
                c_mem,
                rng.range(0.01, 0.5),
                rng.range(0.0, 0.2),
            ];
            // Mostly ordinary states, some near threshold, some far past the exp cap, some far
            // below the exponent's floor (math::EXP2_FLOOR).
            let v = match k % 7 {
                0 => v_th + rng.range(-1e-3, 1e-3),
                1 => rng.range(50.0, 2000.0),
                2 => rng.range(-500.0, -20.0),
                _ => rng.range(-2.0, 3.0),
            };
            Record {
                method: k % 6,
                alpha: rng.range(0.5, 150.0),
                coef,
                state: [
                    v,
                    rng.range(-5.0, 5.0),
                    rng.range(-1.0, 2.0),
                    if k % 11 == 0 {
                        rng.range(-200.0, 100.0)
                    } else {
                        rng.range(-10.0, 10.0)
                    },
                    rng.range(-3.0, 3.0),
                ],
                syn: k % 5 != 0,
                has_x2: k % 4 == 0,
                grads: [
                    rng.range(-1.0, 1.0),
                    rng.range(-1.0, 1.0),
                    rng.range(-1.0, 1.0),
                    rng.range(-1.0, 1.0),
                ],
            }
        })
        .collect()
}

/// The Rust definition on one record, as `f64` (exact for both precisions).
fn rust_outputs<F: math::Real>(r: &Record) -> [F; N_OUT] {
    let f = F::from_f64;
    let c = Coef::from_array(r.coef.map(f));
    let [v, i, a, x, x2] = r.state.map(f);
    let [gz, gv, gi, ga] = r.grads.map(f);
    let alpha = f(r.alpha);
    let method = SurrogateMethod::ALL[r.method];
    // cpu/forward.rs forms the drive the same way: (i + x) (+ x2), or x for the encoder.
    let i_jump = match (r.syn, r.has_x2) {
        (false, _) => x,
        (true, false) => i + x,
        (true, true) => (i + x) + x2,
    };
    let ((z, vn, an), tape) = math::update_taped::<F, true>(&c, v, i_jump, a);
    let i_new = if r.syn { math::synapse(&c, i_jump) } else { i };
    let g = math::update_backward::<F, true>(&c, method, alpha, v, i_jump, a, gz, gv, gi, ga);
    [
        z,
        vn,
        i_new,
        an,
        g.i_jump,
        g.v,
        g.a,
        math::surrogate::<F, true>(method, alpha, v),
        x.exp::<true>(),
        tape.e,
    ]
}

/// Runs the compiled header on `records` in precision `bits` and returns its outputs as f64.
fn run_header(exe: &PathBuf, bits: u32, recs: &[Record]) -> Vec<[f64; N_OUT]> {
    let to_bits = |x: f64| -> u64 {
        if bits == 32 {
            (x as f32).to_bits() as u64
        } else {
            x.to_bits()
        }
    };
    let mut input = String::new();
    for r in recs {
        let mut vals: Vec<u64> = vec![to_bits(r.alpha)];
        vals.extend(r.coef.iter().map(|&c| to_bits(c)));
        vals.extend(r.state.iter().map(|&c| to_bits(c)));
        vals.push(r.syn as u64);
        vals.push(r.has_x2 as u64);
        vals.extend(r.grads.iter().map(|&c| to_bits(c)));
        let vals: Vec<String> = vals.iter().map(|v| v.to_string()).collect();
        input.push_str(&format!("{bits} {} {}\n", r.method, vals.join(" ")));
    }
    let mut child = Command::new(exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the header check");
    // Written from another thread: the child's output would fill its pipe meanwhile.
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("header check output");
    writer.join().expect("writer").expect("write records");
    assert!(out.status.success(), "the header check failed");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| {
            let v: Vec<f64> = l
                .split_whitespace()
                .map(|w| {
                    let b: u64 = w.parse().expect("bits");
                    if bits == 32 {
                        f32::from_bits(b as u32) as f64
                    } else {
                        f64::from_bits(b)
                    }
                })
                .collect();
            v.try_into().expect("one value per output name")
        })
        .collect()
}

/// The outputs per record, in the order the host driver prints them.
const N_OUT: usize = 10;
const NAMES: [&str; N_OUT] = [
    "z",
    "v_new",
    "i_new",
    "a_new",
    "g_ijump",
    "g_v",
    "g_a",
    "surrogate",
    "exp",
    "tape_e",
];

/// Compares bit patterns (NaN equal to NaN), reporting the first mismatches.
fn assert_same(
    bits: u32,
    recs: &[Record],
    got: &[[f64; N_OUT]],
    want: impl Fn(&Record) -> [f64; N_OUT],
) {
    assert_eq!(got.len(), recs.len(), "one output line per record");
    let mut bad = Vec::new();
    for (k, (r, g)) in recs.iter().zip(got).enumerate() {
        let w = want(r);
        for j in 0..N_OUT {
            let same = g[j].to_bits() == w[j].to_bits() || (g[j].is_nan() && w[j].is_nan());
            if !same && bad.len() < 10 {
                bad.push(format!(
                    "record {k} (method {}) {}: header {:e} vs rust {:e}",
                    r.method, NAMES[j], g[j], w[j]
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "f{bits}: the header differs from the Rust kernel:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_gpu_math_header_equals_the_rust_kernel_bit_for_bit() {
    let exe = compile_host("adex_host_check.cpp", &[]);
    let recs = records(20_000);
    let got32 = run_header(&exe, 32, &recs);
    assert_same(32, &recs, &got32, |r| {
        rust_outputs::<f32>(r).map(|x| x as f64)
    });
    let got64 = run_header(&exe, 64, &recs);
    assert_same(64, &recs, &got64, rust_outputs::<f64>);
    // The records reach what they should: spikes, capped exps and every method.
    let spikes = got32.iter().filter(|o| o[0] == 1.0).count();
    assert!(spikes > 1000 && spikes < 19_000, "{spikes} spikes");
    let _ = std::fs::remove_file(exe);
}

/// Compiles and runs a kernel emulation (`kernels/<source>`), which must report `expect`.
fn run_emulation(source: &str, flags: &[String], expect: &str) {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exe = compile_host(source, &flags);
    let out = Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("run {source}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{source}:\n{text}");
    assert!(text.contains(expect), "{text}");
    let _ = std::fs::remove_file(exe);
}

#[test]
fn the_cuda_kernels_run_on_the_host_equal_plain_loops() {
    run_emulation("adex_cuda_emu.cpp", &[], ", 0 mismatches");
}

#[test]
fn the_metal_branch_of_the_header_equals_the_rust_kernel_bit_for_bit() {
    let flags = metal_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let exe = compile_host("adex_host_check.cpp", &flags);
    let recs = records(20_000);
    let got32 = run_header(&exe, 32, &recs);
    assert_same(32, &recs, &got32, |r| {
        rust_outputs::<f32>(r).map(|x| x as f64)
    });
    let _ = std::fs::remove_file(exe);
}

#[test]
fn the_metal_kernels_run_on_the_host_equal_plain_loops() {
    run_emulation(
        "adex_metal_emu.cpp",
        &metal_flags(),
        "336 cases, 0 mismatches",
    );
}

/// The kernels of a Metal source as `(name, [(parameter, buffer index)])`, read from the
/// preprocessed source (macros expanded, Metal's words intact).
fn metal_kernels(source: &str) -> Vec<(String, Vec<(String, usize)>)> {
    let path = std::env::temp_dir().join(format!("adex-metal-lint-{}.metal", std::process::id()));
    std::fs::write(&path, source).expect("write the Metal source");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let out = Command::new(&cxx)
        .args(["-E", "-P", "-x", "c++", "-std=c++17"])
        .args(metal_flags())
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("the Metal lint needs a C++ preprocessor (`{cxx}`): {e}"));
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "preprocessing the Metal source failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut kernels = Vec::new();
    for piece in text.split("kernel void ").skip(1) {
        let (name, rest) = piece.split_once('(').expect("a kernel's parameter list");
        // The parameter list ends where the body begins (its ')' inside `[[buffer(N)]]` do not).
        let (params, _) = rest
            .split_once(") {")
            .unwrap_or_else(|| panic!("kernel {name}: no body"));
        let mut bound = Vec::new();
        for p in params.split(',') {
            if let Some((decl, attr)) = p.split_once("[[buffer(") {
                let index: usize = attr
                    .split(')')
                    .next()
                    .and_then(|i| i.trim().parse().ok())
                    .unwrap_or_else(|| panic!("kernel {name}: buffer index in `{p}`"));
                let pname = decl
                    .trim()
                    .rsplit([' ', '*', '&'])
                    .next()
                    .expect("parameter name")
                    .to_string();
                bound.push((pname, index));
            }
        }
        kernels.push((name.trim().to_string(), bound));
    }
    kernels
}

#[test]
fn the_metal_source_has_every_kernel_and_buffer_the_rust_side_uses() {
    use super::metal_abi::{self, BWD_BUFFERS, FWD_BUFFERS, INPUT_BUFFERS};
    // What Metal compiles: the embedded source (header prepended), not the file alone.
    let kernels = metal_kernels(metal_abi::SOURCE);
    let wanted = metal_abi::all_kernels();
    assert_eq!(
        kernels.len(),
        wanted.len(),
        "the source defines {} kernels, the Rust side asks for {}",
        kernels.len(),
        wanted.len()
    );
    for (name, fwd) in &wanted {
        let (_, bound) = kernels
            .iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("the Rust side asks for kernel {name}, the source has none"));
        let table: Vec<(&str, usize)> = INPUT_BUFFERS
            .iter()
            .chain(if *fwd {
                &FWD_BUFFERS[..]
            } else {
                &BWD_BUFFERS[..]
            })
            .copied()
            .collect();
        let mut got: Vec<(&str, usize)> = bound.iter().map(|(p, i)| (p.as_str(), *i)).collect();
        let mut want = table.clone();
        got.sort();
        want.sort();
        assert_eq!(
            got, want,
            "kernel {name}: its buffers vs the Rust side's indices"
        );
        let mut indices: Vec<usize> = bound.iter().map(|b| b.1).collect();
        indices.sort();
        indices.dedup();
        assert_eq!(
            indices.len(),
            bound.len(),
            "kernel {name}: two buffers share an index"
        );
    }
    assert_eq!(std::mem::size_of::<metal_abi::Params>(), 48);
    let seg = format!("#define ADEX_SEG {}", metal_abi::SEG);
    assert!(
        metal_abi::SOURCE.contains(&seg),
        "the kernels' segment length is not {seg}"
    );
    // The lint reads what it should: a wrong index in the source is caught.
    let broken =
        metal_abi::SOURCE.replace("#define ADEX_BUF_LAST_A 10", "#define ADEX_BUF_LAST_A 19");
    assert_ne!(broken, metal_abi::SOURCE);
    let k = metal_kernels(&broken);
    let (_, bound) = k
        .iter()
        .find(|(n, _)| n == "adex_fwd_f32_f32")
        .expect("kernel");
    assert!(bound.contains(&("last_a".to_string(), 19)));
}
