//! Layer 2 (feature `serde`): [`AdexParameters`] read from any serde format (TOML, JSON, ...)
//! under norse's names ([`PARAMETER_NAMES`]): each numeric parameter a number or a list with
//! one value per neuron, `method` norse's name of the surrogate, keys left out keep norse's
//! defaults, unknown or repeated keys and wrong types are errors naming the key.
//!
//! Written by hand rather than derived so that the keys come from the one table of names and
//! the errors say what each key takes.

use crate::params::{AdexParameters, Param, PARAMETER_NAMES};
use crate::surrogate::SurrogateMethod;
use candle_core::{Device, Tensor};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

/// A numeric parameter as a file writes it: a number, or a list of numbers (one per neuron).
struct FileParam(Param);

impl<'de> Deserialize<'de> for FileParam {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FileParam;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number or a list of numbers (one per neuron)")
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<FileParam, E> {
                Ok(FileParam(Param::Scalar(x)))
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<FileParam, E> {
                self.visit_f64(x as f64)
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<FileParam, E> {
                self.visit_f64(x as f64)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FileParam, A::Error> {
                let mut values: Vec<f64> = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(x) = seq.next_element::<f64>()? {
                    values.push(x);
                }
                if values.is_empty() {
                    return Err(de::Error::invalid_length(0, &"one value per neuron"));
                }
                let n = values.len();
                Tensor::from_vec(values, n, &Device::Cpu)
                    .map(|t| FileParam(Param::Tensor(t)))
                    .map_err(de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The surrogate method by its norse name.
struct FileMethod(SurrogateMethod);

impl<'de> Deserialize<'de> for FileMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map(FileMethod).map_err(de::Error::custom)
    }
}

/// Reads the parameters from a map under norse's names; keys left out keep norse's defaults.
///
/// ```
/// use candle_adex::AdexParameters;
/// let p: AdexParameters = serde_json::from_str(r#"{"v_th": [0.9, 1.1], "method": "triangle"}"#)
///     .map_err(candle_core::Error::wrap)?;
/// assert_eq!(p.v_th.values()?, [0.9, 1.1]);
/// assert_eq!(p.method, candle_adex::SurrogateMethod::Triangle);
/// let err = serde_json::from_str::<AdexParameters>(r#"{"tau_mem": 50}"#).unwrap_err();
/// assert!(err.to_string().contains("unknown field `tau_mem`"));
/// # Ok::<(), candle_core::Error>(())
/// ```
impl<'de> Deserialize<'de> for AdexParameters {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AdexParameters;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of AdEx parameters under norse's names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AdexParameters, A::Error> {
                let mut p = AdexParameters::default();
                let mut seen = [false; PARAMETER_NAMES.len()];
                while let Some(key) = map.next_key::<String>()? {
                    let k = PARAMETER_NAMES
                        .iter()
                        .position(|n| *n == key)
                        .ok_or_else(|| de::Error::unknown_field(&key, &PARAMETER_NAMES))?;
                    if std::mem::replace(&mut seen[k], true) {
                        return Err(de::Error::duplicate_field(PARAMETER_NAMES[k]));
                    }
                    match PARAMETER_NAMES[k] {
                        "v_peak" => p.v_peak = Some(map.next_value::<FileParam>()?.0),
                        "method" => p.method = map.next_value::<FileMethod>()?.0,
                        "alpha" => p.alpha = map.next_value()?,
                        "dt" => p.dt = map.next_value()?,
                        name => {
                            let value = map.next_value::<FileParam>()?.0;
                            for (field_name, field) in p.numeric_mut() {
                                if field_name == name {
                                    *field = value;
                                    break;
                                }
                            }
                        }
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_of_the_table_is_read() {
        for name in PARAMETER_NAMES {
            let value = match name {
                "method" => "\"circ\"".to_string(),
                "alpha" | "dt" => "0.5".to_string(),
                _ => "[0.25, 0.5]".to_string(),
            };
            let p: AdexParameters = serde_json::from_str(&format!("{{\"{name}\": {value}}}"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut q = p.clone();
            let changed = match name {
                "method" => p.method == SurrogateMethod::Circ,
                "alpha" => p.alpha == 0.5,
                "dt" => p.dt == 0.5,
                "v_peak" => p.v_peak.unwrap().values().unwrap() == [0.25, 0.5],
                _ => q
                    .numeric_mut()
                    .into_iter()
                    .any(|(n, v)| n == name && v.values().unwrap() == [0.25, 0.5]),
            };
            assert!(changed, "{name}");
        }
    }

    #[test]
    fn wrong_types_and_repeated_keys_are_errors_naming_the_key() {
        let err = |text: &str| {
            serde_json::from_str::<AdexParameters>(text)
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"v_th": "high"}"#).contains("a number or a list of numbers"));
        assert!(err(r#"{"v_th": []}"#).contains("one value per neuron"));
        assert!(err(r#"{"method": "sigmoid"}"#).contains("sigmoid"));
        assert!(err(r#"{"dt": [1]}"#).contains("f64"));
        assert!(err(r#"{"v_th": 1, "v_th": 2}"#).contains("duplicate field `v_th`"));
        assert!(err(r#"{"tau_mem": 1}"#).contains("expected one of `adaptation_current`"));
    }
}
