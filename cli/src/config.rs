//! Parameter files for `adex simulate` and `adex fi-curve`: JSON (an object) or TOML (flat
//! `key = value` lines, `#` comments), keys named as norse names them. A value is a number, or
//! an array of numbers (one per neuron); `method` is a string. Unknown keys and invalid values are
//! errors that name the key.
//!
//! ```text
//! # adex.toml
//! tau_mem_inv = 50
//! v_th = [0.9, 1.0, 1.1]     # per neuron
//! method = "triangle"
//! v_peak = 2.0
//! ```

use candle_adex::{AdexParameters, Param, SurrogateMethod};
use candle_core::{Device, Tensor};
use std::path::Path;

/// The keys a parameter file may set.
pub const KEYS: [&str; 13] = [
    "adaptation_current",
    "adaptation_spike",
    "delta_T",
    "tau_ada_inv",
    "tau_syn_inv",
    "tau_mem_inv",
    "v_leak",
    "v_th",
    "v_reset",
    "v_peak",
    "method",
    "alpha",
    "dt",
];

/// A value of a parameter file.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Number(f64),
    List(Vec<f64>),
    Text(String),
}

/// Reads a parameter file over `base` (usually the defaults), by its extension.
pub fn load(path: &Path, base: AdexParameters) -> Result<AdexParameters, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read parameter file {}: {e}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let entries = match ext {
        "json" => parse_json(&text),
        "toml" => parse_toml(&text),
        _ => Err("the parameter file must end in .json or .toml".to_string()),
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    apply(base, &entries).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse_json(text: &str) -> Result<Vec<(String, Value)>, String> {
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let obj = json
        .as_object()
        .ok_or("the JSON must be an object of parameters")?;
    obj.iter()
        .map(|(k, v)| {
            let value = match v {
                serde_json::Value::Number(n) => Value::Number(n.as_f64().unwrap_or(f64::NAN)),
                serde_json::Value::String(s) => Value::Text(s.clone()),
                serde_json::Value::Array(a) => Value::List(
                    a.iter()
                        .map(|x| {
                            x.as_f64()
                                .ok_or(format!("`{k}`: array items must be numbers"))
                        })
                        .collect::<Result<_, _>>()?,
                ),
                other => {
                    return Err(format!(
                        "`{k}`: expected a number, a list of numbers or a string, got {other}"
                    ))
                }
            };
            Ok((k.clone(), value))
        })
        .collect()
}

fn parse_number(key: &str, s: &str) -> Result<f64, String> {
    s.trim()
        .replace('_', "")
        .parse::<f64>()
        .map_err(|_| format!("`{key}`: {:?} is not a number", s.trim()))
}

fn parse_toml(text: &str) -> Result<Vec<(String, Value)>, String> {
    let mut out = vec![];
    for (n, line) in text.lines().enumerate() {
        let line = match line.find('#') {
            Some(k) if !line[..k].contains('"') => &line[..k],
            _ => line,
        }
        .trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            return Err(format!(
                "line {}: tables are not supported; write the parameters as top-level `key = value` lines",
                n + 1
            ));
        }
        let (key, raw) = line.split_once('=').ok_or(format!(
            "line {}: expected `key = value`, got {line:?}",
            n + 1
        ))?;
        let (key, raw) = (key.trim().trim_matches('"').to_string(), raw.trim());
        let value = if let Some(s) = raw.strip_prefix('"') {
            Value::Text(
                s.strip_suffix('"')
                    .ok_or(format!("line {}: unterminated string", n + 1))?
                    .to_string(),
            )
        } else if let Some(list) = raw.strip_prefix('[') {
            let list = list.strip_suffix(']').ok_or(format!(
                "line {}: unterminated list (lists must fit one line)",
                n + 1
            ))?;
            Value::List(
                list.split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| parse_number(&key, s))
                    .collect::<Result<_, _>>()?,
            )
        } else {
            Value::Number(parse_number(&key, raw)?)
        };
        out.push((key, value));
    }
    Ok(out)
}

fn apply(mut p: AdexParameters, entries: &[(String, Value)]) -> Result<AdexParameters, String> {
    for (key, value) in entries {
        if entries.iter().filter(|(k, _)| k == key).count() > 1 {
            return Err(format!("`{key}` is set twice"));
        }
        let number = || match value {
            Value::Number(x) => Ok(*x),
            _ => Err(format!("`{key}` must be a number")),
        };
        let param = || -> Result<Param, String> {
            match value {
                Value::Number(x) => Ok(Param::Scalar(*x)),
                Value::List(xs) if !xs.is_empty() => {
                    let t = Tensor::new(xs.as_slice(), &Device::Cpu).map_err(|e| e.to_string())?;
                    Ok(Param::Tensor(t))
                }
                Value::List(_) => Err(format!("`{key}`: the list is empty")),
                Value::Text(_) => Err(format!("`{key}` must be a number or a list of numbers")),
            }
        };
        match key.as_str() {
            "adaptation_current" => p.adaptation_current = param()?,
            "adaptation_spike" => p.adaptation_spike = param()?,
            "delta_T" | "delta_t" => p.delta_t = param()?,
            "tau_ada_inv" => p.tau_ada_inv = param()?,
            "tau_syn_inv" => p.tau_syn_inv = param()?,
            "tau_mem_inv" => p.tau_mem_inv = param()?,
            "v_leak" => p.v_leak = param()?,
            "v_th" => p.v_th = param()?,
            "v_reset" => p.v_reset = param()?,
            "v_peak" => p.v_peak = Some(param()?),
            "alpha" => p.alpha = number()?,
            "dt" => p.dt = number()?,
            "method" => match value {
                Value::Text(s) => {
                    p.method = s
                        .parse::<SurrogateMethod>()
                        .map_err(|e| format!("`method`: {e}"))?
                }
                _ => return Err("`method` must be a string such as \"super\"".into()),
            },
            other => {
                return Err(format!(
                    "unknown parameter `{other}` (valid: {})",
                    KEYS.join(", ")
                ))
            }
        }
    }
    p.validate().map_err(|e| e.to_string())?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("adex-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn toml_and_json_set_the_named_fields() {
        let toml = write(
            "a.toml",
            "# comment\ntau_mem_inv = 50 # inline\nv_th = [0.9, 1.0, 1.1]\nmethod = \"triangle\"\nv_peak = 2\ndt = 1e-4\n",
        );
        let json = write(
            "a.json",
            r#"{"tau_mem_inv": 50, "v_th": [0.9, 1.0, 1.1], "method": "triangle", "v_peak": 2, "dt": 1e-4}"#,
        );
        for path in [toml, json] {
            let p = load(&path, AdexParameters::default()).unwrap();
            assert_eq!(p.tau_mem_inv.values().unwrap(), [50.0]);
            assert_eq!(p.v_th.values().unwrap(), [0.9, 1.0, 1.1]);
            assert_eq!(p.v_peak.unwrap().values().unwrap(), [2.0]);
            assert_eq!(p.method, SurrogateMethod::Triangle);
            assert_eq!(p.dt, 1e-4);
            assert_eq!(p.v_leak.values().unwrap(), [0.0]); // untouched default
            std::fs::remove_file(&path).ok();
        }
    }

    #[test]
    fn mistakes_name_the_key() {
        for (name, text, needle) in [
            ("b.toml", "tau_mem = 50\n", "unknown parameter `tau_mem`"),
            ("c.toml", "delta_T = -1\n", "delta_T"),
            ("d.toml", "dt = fast\n", "`dt`: \"fast\" is not a number"),
            ("e.toml", "method = \"spiky\"\n", "`method`"),
            ("f.json", r#"{"alpha": [1, 2]}"#, "`alpha` must be a number"),
            ("g.json", r#"{"v_th": true}"#, "`v_th`"),
            ("h.json", "[1, 2]", "object"),
            ("i.toml", "[params]\n", "tables are not supported"),
            ("j.yaml", "dt: 1", ".json or .toml"),
            ("k.toml", "v_th = 1\nv_th = 2\n", "`v_th` is set twice"),
        ] {
            let path = write(name, text);
            let e = load(&path, AdexParameters::default()).unwrap_err();
            std::fs::remove_file(&path).ok();
            assert!(e.contains(needle), "{name}: {e}");
        }
        let e = load(Path::new("/nonexistent.toml"), AdexParameters::default()).unwrap_err();
        assert!(e.contains("cannot read"), "{e}");
    }
}
