//! Parameter files for `adex simulate` and `adex fi-curve`: TOML or JSON (by the extension, in
//! any case), read through the library's serde support, keys named as norse names them
//! (`candle_adex::PARAMETER_NAMES`). A numeric value is a number or an array with one number
//! per neuron; `method` is norse's name of the surrogate. Errors are one line: the file, the
//! line (and column for JSON) and the parser's message, which names the key.
//!
//! ```text
//! # adex.toml
//! tau_mem_inv = 50
//! v_th = [0.9, 1.0, 1.1]     # per neuron
//! method = 'triangle'
//! v_peak = 2.0
//! ```

use candle_adex::AdexParameters;
use std::path::Path;

/// Reads a parameter file, then checks the values. Keys left out keep norse's defaults, except
/// `dt`, which is `dt` when the file does not set it.
pub fn load(path: &Path, dt: f64) -> Result<AdexParameters, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read parameter file {}: {e}", path.display()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let at = |line: usize| format!("{}:{line}", path.display());
    let (mut p, sets_dt) = match ext.as_str() {
        "toml" => {
            let p = toml::from_str::<AdexParameters>(&text).map_err(|e| {
                let line = e
                    .span()
                    .map_or(1, |s| text[..s.start].matches('\n').count() + 1);
                format!("{}: {}", at(line), e.message().trim_end())
            })?;
            // Parsed once more, untyped, to see whether `dt` was given (the typed parse above
            // keeps the spans its errors need; a value-first parse would lose them).
            let table: toml::Table = toml::from_str(&text).map_err(|e| e.to_string())?;
            (p, table.contains_key("dt"))
        }
        "json" => {
            let p = serde_json::from_str::<AdexParameters>(&text).map_err(|e| {
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                format!("{}:{}: {msg}", at(e.line()), e.column())
            })?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| e.to_string())?;
            (p, value.get("dt").is_some())
        }
        _ => {
            return Err(format!(
                "{}: a parameter file must end in .toml or .json",
                path.display()
            ))
        }
    };
    if !sets_dt {
        p.dt = dt;
    }
    p.validate()
        .map_err(|e| format!("{}: {}", path.display(), without_backtrace(e)))?;
    Ok(p)
}

/// A candle error's message without the backtrace candle attaches when `RUST_BACKTRACE` is set.
pub fn without_backtrace(e: candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => inner.to_string(),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_adex::SurrogateMethod;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("adex-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn toml_and_json_set_the_named_fields() {
        let toml = write(
            "a.TOML",
            "# comment\ntau_mem_inv = 50 # inline\nv_th = [\n  0.9,\n  1.0, # per neuron\n  1.1,\n]\nmethod = 'triangle' # surrogate\nv_peak = 2\ndt = 1e-4\n",
        );
        let json = write(
            "a.json",
            r#"{"tau_mem_inv": 50, "v_th": [0.9, 1.0, 1.1], "method": "triangle", "v_peak": 2, "dt": 1e-4}"#,
        );
        for path in [toml, json] {
            let p = load(&path, 0.5).unwrap();
            assert_eq!(p.tau_mem_inv.values().unwrap(), [50.0]);
            assert_eq!(p.v_th.values().unwrap(), [0.9, 1.0, 1.1]);
            assert_eq!(p.v_peak.unwrap().values().unwrap(), [2.0]);
            assert_eq!(p.method, SurrogateMethod::Triangle);
            assert_eq!(p.dt, 1e-4);
            assert_eq!(p.v_leak.values().unwrap(), [0.0]); // untouched default
            std::fs::remove_file(&path).ok();
        }
        let path = write("b.toml", "v_th = 1.2\n");
        assert_eq!(load(&path, 0.25).unwrap().dt, 0.25); // the command's --dt
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn mistakes_name_the_file_line_and_key() {
        for (name, text, needle) in [
            (
                "b.toml",
                "tau_mem = 50\n",
                "b.toml:1: unknown field `tau_mem`",
            ),
            ("c.toml", "v_th = 1\ndelta_T = -1\n", "delta_T"),
            (
                "d.toml",
                "v_th = 1\ndt = \"fast\"\n",
                "d.toml:2: invalid type: string \"fast\"",
            ),
            ("e.toml", "method = \"spiky\"\n", "spiky"),
            ("f.json", "{\"v_th\": 1,\n \"alpha\": [1, 2]}", "f.json:2:"),
            (
                "g.json",
                r#"{"v_th": true}"#,
                "a number or a list of numbers",
            ),
            ("h.json", "[1, 2]", "a map of AdEx parameters"),
            ("j.yaml", "dt: 1", ".toml or .json"),
            ("k.toml", "v_th = 1\nv_th = 2\n", "k.toml:2:"),
            (
                "l.json",
                r#"{"v_th": 1, "v_th": 2}"#,
                "duplicate field `v_th`",
            ),
        ] {
            let path = write(name, text);
            let e = load(&path, 1e-3).unwrap_err();
            std::fs::remove_file(&path).ok();
            assert!(e.contains(needle), "{name}: {e}");
            assert_eq!(e.lines().count(), 1, "{name}: {e}");
        }
        let e = load(Path::new("/nonexistent.toml"), 1e-3).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
