//! Pure parser of `rocm-smi ... --json` into [`AmdFacts`].
//!
//! rocm-smi prints one object per `cardN` plus a `system` object. Keys changed spelling
//! across releases ("Card Series" / "Card series"), values are mostly strings but some are
//! numbers, and "N/A" means absent; each field is looked up under every spelling it has had.

use super::AmdFacts;
use serde_json::{Map, Value};

/// Output that is not a usable rocm-smi JSON report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RocmSmiError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("top level is not an object")]
    NotAnObject,
    #[error("{card}: not an object")]
    CardNotAnObject { card: String },
    #[error("{card}: no {field}")]
    Missing { card: String, field: &'static str },
    #[error("{card}: {field} is not a valid value: {value}")]
    BadValue {
        card: String,
        field: &'static str,
        value: String,
    },
}

const NAME: &[&str] = &["Card Series", "Card series", "Device Name", "Card SKU"];
const VRAM_TOTAL: &[&str] = &["VRAM Total Memory (B)"];
const VRAM_USED: &[&str] = &["VRAM Total Used Memory (B)"];
const TEMP: &[&str] = &[
    "Temperature (Sensor edge) (C)",
    "Temperature (Sensor junction) (C)",
];
const POWER: &[&str] = &[
    "Average Graphics Package Power (W)",
    "Current Socket Graphics Package Power (W)",
];
const POWER_CAP: &[&str] = &["Max Graphics Package Power (W)"];
const BUSY: &[&str] = &["GPU use (%)"];

/// Parses a report; cards are returned in `cardN` order.
pub fn parse_rocm_smi(json: &str) -> Result<Vec<AmdFacts>, RocmSmiError> {
    let value: Value = serde_json::from_str(json).map_err(|e| RocmSmiError::Json(e.to_string()))?;
    let top = value.as_object().ok_or(RocmSmiError::NotAnObject)?;
    let driver_version = top
        .get("system")
        .and_then(Value::as_object)
        .and_then(|s| text(s, &["Driver version"]));
    let mut cards: Vec<(u32, &String, &Value)> = top
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("card")?.parse().ok()?, k, v)))
        .collect();
    cards.sort_by_key(|(n, _, _)| *n);
    cards
        .into_iter()
        .map(|(_, key, v)| {
            let obj = v
                .as_object()
                .ok_or_else(|| RocmSmiError::CardNotAnObject { card: key.clone() })?;
            parse_card(key, obj, &driver_version)
        })
        .collect()
}

fn parse_card(
    card: &str,
    obj: &Map<String, Value>,
    driver_version: &Option<String>,
) -> Result<AmdFacts, RocmSmiError> {
    let vram_total_bytes =
        integer(card, obj, "VRAM Total Memory (B)", VRAM_TOTAL)?.ok_or(RocmSmiError::Missing {
            card: card.to_string(),
            field: "VRAM Total Memory (B)",
        })?;
    let busy = float(card, obj, "GPU use (%)", BUSY)?;
    if busy.is_some_and(|b| !(0.0..=100.0).contains(&b)) {
        return Err(RocmSmiError::BadValue {
            card: card.to_string(),
            field: "GPU use (%)",
            value: busy.unwrap_or_default().to_string(),
        });
    }
    Ok(AmdFacts {
        card: card.to_string(),
        pci_address: text(obj, &["PCI Bus"]).map(|s| s.to_ascii_lowercase()),
        device_id: text(obj, &["Device ID"]).map(|s| s.to_ascii_lowercase()),
        unique_id: text(obj, &["Unique ID"]),
        name: text(obj, NAME),
        architecture: text(obj, &["GFX Version"]),
        vram_total_bytes,
        vram_used_bytes: integer(card, obj, "VRAM Total Used Memory (B)", VRAM_USED)?,
        vram_vendor: text(obj, &["GPU memory vendor"]),
        driver_version: driver_version.clone(),
        temperature_c: float(card, obj, "Temperature (C)", TEMP)?,
        power_w: float(card, obj, "Graphics Package Power (W)", POWER)?,
        power_limit_w: float(card, obj, "Max Graphics Package Power (W)", POWER_CAP)?,
        utilisation: busy.map(|b| b / 100.0),
    })
}

/// The first key present with a real value, as trimmed text.
fn text(obj: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| {
        let s = match obj.get(*k)? {
            Value::String(s) => s.trim().to_string(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let absent = s.is_empty() || s.eq_ignore_ascii_case("n/a") || s == "0x0";
        (!absent).then_some(s)
    })
}

fn integer(
    card: &str,
    obj: &Map<String, Value>,
    field: &'static str,
    keys: &[&str],
) -> Result<Option<u64>, RocmSmiError> {
    text(obj, keys)
        .map(|s| {
            s.parse::<u64>().map_err(|_| RocmSmiError::BadValue {
                card: card.to_string(),
                field,
                value: s,
            })
        })
        .transpose()
}

fn float(
    card: &str,
    obj: &Map<String, Value>,
    field: &'static str,
    keys: &[&str],
) -> Result<Option<f64>, RocmSmiError> {
    text(obj, keys)
        .map(|s| match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(RocmSmiError::BadValue {
                card: card.to_string(),
                field,
                value: s,
            }),
        })
        .transpose()
}
