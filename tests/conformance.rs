//! The conformance suite over the golden norse files shipped in `tests/data/norse`, and its
//! handling of damaged files. `build.rs` sets `cfg(golden_data)` when the files are present; the
//! published package leaves them out, and there these tests are reported as ignored.

use candle_adex::conformance::{GoldenFile, Outcome};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/norse")
        .join(name)
}

const GROUPS: [&str; 9] = [
    "ff_step",
    "ff_seq",
    "rec_seq",
    "encoder_seq",
    "threshold",
    "bptt",
    "lowp",
    "modules",
    "edge",
];

#[test]
#[cfg_attr(
    not(golden_data),
    ignore = "needs tests/data/norse, which the published package leaves out"
)]
fn every_golden_case_passes() {
    for group in GROUPS {
        let file = GoldenFile::open(&data(&format!("{group}.safetensors"))).unwrap();
        assert_eq!(file.group, group);
        let reports = file.run();
        assert_eq!(reports.len(), file.cases.len());
        for r in &reports {
            assert_eq!(r.outcome, Outcome::Pass, "{r}");
            assert!(!r.measures.is_empty());
        }
    }
}

/// The measured errors are real numbers, not placeholders: f64 steps agree to ~1e-15 and
/// nontrivial cases report non-zero errors somewhere.
#[test]
#[cfg_attr(
    not(golden_data),
    ignore = "needs tests/data/norse, which the published package leaves out"
)]
fn measures_are_meaningful() {
    let reports = GoldenFile::open(&data("bptt.safetensors")).unwrap().run();
    let r = reports
        .iter()
        .find(|r| r.case == "super_a100_f64_perneuron_pgrad")
        .unwrap();
    let names: Vec<_> = r.measures.iter().map(|m| m.name.as_str()).collect();
    for field in [
        "grad_input",
        "grad_v0",
        "grad_p.tau_mem_inv",
        "grad_p.v_th",
        "grad_p.delta_T",
    ] {
        assert!(names.contains(&field), "{names:?}");
    }
    for m in &r.measures {
        if let Some(tol) = m.tol {
            assert!(
                m.value <= tol && tol < 1e-10,
                "{}: {} / {tol}",
                m.name,
                m.value
            );
        }
    }
    let edge = GoldenFile::open(&data("edge.safetensors")).unwrap().run();
    let large_v0 = edge.iter().find(|r| r.case == "ff_large_v0_f32").unwrap();
    let fixed = large_v0
        .measures
        .iter()
        .find(|m| m.name == "fixed")
        .unwrap();
    assert!(
        fixed.value >= 4.0,
        "norse's NaN after exp overflow must come out finite"
    );
}

/// Rewrites a golden file with `edit` applied to its tensors (metadata kept).
fn rewrite(name: &str, edit: impl FnOnce(&mut HashMap<String, Vec<f32>>)) -> Vec<u8> {
    rewrite_all(name, edit, |k| k.to_string(), |m| m)
}

/// Rewrites a golden file: f32 tensor values edited, tensor names renamed, metadata edited.
fn rewrite_all(
    name: &str,
    edit: impl FnOnce(&mut HashMap<String, Vec<f32>>),
    rename: impl Fn(&str) -> String,
    edit_meta: impl FnOnce(HashMap<String, String>) -> HashMap<String, String>,
) -> Vec<u8> {
    let bytes = std::fs::read(data(name)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut f32s: HashMap<String, Vec<f32>> = HashMap::new();
    for (k, v) in st.tensors() {
        if v.dtype() == safetensors::Dtype::F32 {
            let vals = v
                .data()
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            f32s.insert(k.clone(), vals);
        }
    }
    edit(&mut f32s);
    let owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            let data = match f32s.get(&k) {
                Some(vals) => vals.iter().flat_map(|x| x.to_le_bytes()).collect(),
                None => v.data().to_vec(),
            };
            (rename(&k), v.dtype(), v.shape().to_vec(), data)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(k, d, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, Some(edit_meta(meta.metadata().clone().unwrap()))).unwrap()
}

/// The module cases are recognised by the module they ran, not by their names: a file with
/// renamed cases and fully qualified module names passes; a tampered module run fails.
#[test]
#[cfg_attr(
    not(golden_data),
    ignore = "needs tests/data/norse, which the published package leaves out"
)]
fn module_cases_replay_unseen_names_and_catch_wrong_values() {
    let bytes = rewrite_all(
        "modules.safetensors",
        |_| {},
        |k| k.replacen("LIFAdExRecurrentCell/", "run_7/", 1),
        |mut meta| {
            let mut cases: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&meta["cases"]).unwrap();
            let mut case = cases.remove("LIFAdExRecurrentCell").unwrap();
            case["module"] = "norse.torch.module.lif_adex.LIFAdExRecurrentCell(8, 16)".into();
            cases.insert("run_7".into(), case);
            meta.insert("cases".into(), serde_json::to_string(&cases).unwrap());
            meta
        },
    );
    let reports = GoldenFile::from_bytes(&bytes).unwrap().run();
    assert_eq!(reports.len(), 4);
    assert!(reports.iter().any(|r| r.case == "run_7"));
    for r in &reports {
        assert_eq!(r.outcome, Outcome::Pass, "{r}");
    }
    // wrong recurrent weights, a wrong potential, a wrong final state, an unknown module
    for (case, tensor, k, delta) in [
        ("LIFAdExRecurrent", "w_rec", 1, 0.5f32),
        ("LIFAdExCell", "out_v", 40, 1e-4),
        ("LIFAdEx", "final.a", 3, 1e-3),
        ("LIFAdExRecurrentCell", "w_rec", 0, 0.25),
    ] {
        let bytes = rewrite("modules.safetensors", |t| {
            t.get_mut(&format!("{case}/{tensor}")).unwrap()[k] += delta;
        });
        let reports = GoldenFile::from_bytes(&bytes).unwrap().run();
        let r = reports.iter().find(|r| r.case == case).unwrap();
        assert_eq!(r.outcome, Outcome::Fail, "{case}/{tensor}: {r}");
    }
    let bytes = rewrite_all(
        "modules.safetensors",
        |_| {},
        |k| k.to_string(),
        |mut meta| {
            meta.insert(
                "cases".into(),
                meta["cases"].replace("norse.torch.LIFAdEx()", "norse.torch.LIFBox()"),
            );
            meta
        },
    );
    let reports = GoldenFile::from_bytes(&bytes).unwrap().run();
    let r = reports.iter().find(|r| r.case == "LIFAdEx").unwrap();
    assert!(r.to_string().contains("unknown module"), "{r}");
}

#[test]
#[cfg_attr(
    not(golden_data),
    ignore = "needs tests/data/norse, which the published package leaves out"
)]
fn a_wrong_value_fails_its_case() {
    let bytes = rewrite("ff_step.safetensors", |t| {
        t.get_mut("f32_default/out_v").unwrap()[7] += 1e-4;
    });
    let reports = GoldenFile::from_bytes(&bytes).unwrap().run();
    for r in reports {
        let expected = if r.case == "f32_default" {
            Outcome::Fail
        } else {
            Outcome::Pass
        };
        assert_eq!(r.outcome, expected, "{r}");
    }
    // a flipped spike far from threshold is caught too
    let bytes = rewrite("ff_seq.safetensors", |t| {
        let z = t.get_mut("default_T100/out_z").unwrap();
        z[0] = 1.0 - z[0];
    });
    let reports = GoldenFile::from_bytes(&bytes).unwrap().run();
    let r = reports.iter().find(|r| r.case == "default_T100").unwrap();
    assert_eq!(r.outcome, Outcome::Fail, "{r}");
    // a wrong gradient
    let bytes = rewrite("bptt.safetensors", |t| {
        t.get_mut("super_a100_f32/grad_input").unwrap()[3] *= 1.01;
    });
    let reports = GoldenFile::from_bytes(&bytes).unwrap().run();
    let r = reports.iter().find(|r| r.case == "super_a100_f32").unwrap();
    assert_eq!(r.outcome, Outcome::Fail, "{r}");
}

#[test]
#[cfg_attr(
    not(golden_data),
    ignore = "needs tests/data/norse, which the published package leaves out"
)]
fn damaged_files_give_clear_errors() {
    let bytes = std::fs::read(data("ff_step.safetensors")).unwrap();
    let truncated = GoldenFile::from_bytes(&bytes[..bytes.len() / 2])
        .err()
        .unwrap();
    assert!(truncated.to_string().contains("invalid"), "{truncated}");
    let garbage = GoldenFile::from_bytes(b"not a safetensors file at all")
        .err()
        .unwrap();
    assert!(
        garbage.to_string().contains("invalid safetensors header"),
        "{garbage}"
    );
    let empty = GoldenFile::from_bytes(&[]).err().unwrap();
    assert!(!empty.to_string().is_empty());
    // a valid safetensors file that is not a golden file
    let t = candle_core::Tensor::new(&[1f32, 2.], &candle_core::Device::Cpu).unwrap();
    let path =
        std::env::temp_dir().join(format!("adex-foreign-{}.safetensors", std::process::id()));
    candle_core::safetensors::save(&HashMap::from([("x".to_string(), t)]), &path).unwrap();
    let foreign = GoldenFile::open(&path).err().unwrap().to_string();
    std::fs::remove_file(&path).ok();
    assert!(foreign.contains("norse-adex-golden/1"), "{foreign}");
    let missing = GoldenFile::open(Path::new("/nonexistent/x.safetensors"))
        .err()
        .unwrap();
    assert!(missing.to_string().contains("cannot read"));
}

#[test]
#[cfg_attr(
    not(golden_data),
    ignore = "needs tests/data/norse, which the published package leaves out"
)]
fn a_case_lacking_a_tensor_fails_with_a_message() {
    // drop a tensor by renaming it
    let bytes = std::fs::read(data("ff_step.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                if k == "f32_default/out_i" {
                    "f32_default/renamed".into()
                } else {
                    k
                },
                v,
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, meta.metadata().clone()).unwrap();
    let reports = GoldenFile::from_bytes(&bytes).unwrap().run();
    let r = reports.iter().find(|r| r.case == "f32_default").unwrap();
    assert_eq!(r.outcome, Outcome::Fail);
    assert!(r.to_string().contains("lacks tensor out_i"), "{r}");
}
