//! Pure parser of `nvidia-smi -q -x` output into [`GpuFacts`].
//!
//! The schema changed across drivers (`power_readings` became `gpu_power_readings`,
//! `power_draw` became `average_power_draw`/`instant_power_draw`), so each field is looked up
//! under every name it has had. "N/A", "[Not Supported]" and similar are absent values.

use super::GpuFacts;
use roxmltree::{Document, Node, ParsingOptions};

/// A report has ~1500 nodes per GPU (most of them supported clocks); this is ample for 64.
const MAX_NODES: u32 = 1 << 20;

/// Output that is not a usable `nvidia-smi -q -x` report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmiParseError {
    #[error("not XML: {0}")]
    Xml(String),
    #[error("root element is <{0}>, not <nvidia_smi_log>")]
    NotSmiLog(String),
    #[error("gpu {gpu}: no {field}")]
    Missing { gpu: usize, field: &'static str },
    #[error("gpu {gpu}: {field} is not a valid value: {value:?}")]
    BadValue {
        gpu: usize,
        field: &'static str,
        value: String,
    },
}

/// Parses a whole report; a report without `<gpu>` elements is an empty list.
pub fn parse_smi_xml(xml: &str) -> Result<Vec<GpuFacts>, SmiParseError> {
    // Every report starts with a DOCTYPE naming nvsmi_device_vNN.dtd; roxmltree refuses DTDs
    // unless told, and never fetches external ones. The node limit bounds what entity
    // expansion in a hostile document can build.
    let options = ParsingOptions {
        allow_dtd: true,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(xml, options)
        .map_err(|e| SmiParseError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "nvidia_smi_log" {
        return Err(SmiParseError::NotSmiLog(root.tag_name().name().to_string()));
    }
    let driver_version = text(root, &["driver_version"]).map(str::to_string);
    let cuda_version = text(root, &["cuda_version"]).map(str::to_string);
    root.children()
        .filter(|n| n.has_tag_name("gpu"))
        .enumerate()
        .map(|(i, gpu)| parse_gpu(i, gpu, &driver_version, &cuda_version))
        .collect()
}

fn parse_gpu(
    i: usize,
    gpu: Node,
    driver_version: &Option<String>,
    cuda_version: &Option<String>,
) -> Result<GpuFacts, SmiParseError> {
    let name = text(gpu, &["product_name"]).ok_or(SmiParseError::Missing {
        gpu: i,
        field: "product_name",
    })?;
    let uuid = text(gpu, &["uuid"]).ok_or(SmiParseError::Missing {
        gpu: i,
        field: "uuid",
    })?;
    // Only the board's own memory block: MIG slices nest their own `fb_memory_usage`.
    let total = text(gpu, &["fb_memory_usage", "total"]).ok_or(SmiParseError::Missing {
        gpu: i,
        field: "fb_memory_usage/total",
    })?;
    let memory_total_bytes = bytes(i, "fb_memory_usage/total", total)?;
    let memory_free_bytes = text(gpu, &["fb_memory_usage", "free"])
        .map(|v| bytes(i, "fb_memory_usage/free", v))
        .transpose()?;
    let pci_bus_id = text(gpu, &["pci", "pci_bus_id"])
        .or_else(|| gpu.attribute("id"))
        .map(str::to_string);
    let temperature_c = text(gpu, &["temperature", "gpu_temp"])
        .map(|v| number(i, "temperature/gpu_temp", v, "C"))
        .transpose()?;
    let power = gpu
        .children()
        .find(|n| n.has_tag_name("gpu_power_readings") || n.has_tag_name("power_readings"));
    let power_w = match power {
        Some(p) => first_text(
            p,
            &["power_draw", "average_power_draw", "instant_power_draw"],
        )
        .map(|v| number(i, "power_draw", v, "W"))
        .transpose()?,
        None => None,
    };
    let power_limit_w = match power {
        Some(p) => first_text(
            p,
            &["current_power_limit", "enforced_power_limit", "power_limit"],
        )
        .map(|v| number(i, "power_limit", v, "W"))
        .transpose()?,
        None => None,
    };
    let utilisation = text(gpu, &["utilization", "gpu_util"])
        .map(|v| number(i, "utilization/gpu_util", v, "%"))
        .transpose()?
        .map(|pct| pct / 100.0);
    if utilisation.is_some_and(|u| !(0.0..=1.0).contains(&u)) {
        return Err(SmiParseError::BadValue {
            gpu: i,
            field: "utilization/gpu_util",
            value: text(gpu, &["utilization", "gpu_util"])
                .unwrap_or_default()
                .to_string(),
        });
    }
    Ok(GpuFacts {
        name: name.to_string(),
        uuid: uuid.to_string(),
        pci_bus_id,
        architecture: text(gpu, &["product_architecture"]).map(str::to_string),
        compute_capability: None,
        memory_total_bytes,
        memory_free_bytes,
        driver_version: driver_version.clone(),
        cuda_version: cuda_version.clone(),
        temperature_c,
        power_w,
        power_limit_w,
        utilisation,
    })
}

/// The trimmed text at `path` below `node` (direct children only), absent when the element is
/// missing, empty or one of nvidia-smi's "no value" spellings.
fn text<'a>(node: Node<'a, 'a>, path: &[&str]) -> Option<&'a str> {
    let mut cur = node;
    for step in path {
        cur = cur.children().find(|n| n.has_tag_name(*step))?;
    }
    let t = cur.text()?.trim();
    let absent = t.is_empty()
        || t == "N/A"
        || t.starts_with('[')
        || t.eq_ignore_ascii_case("Unknown Error")
        || t.starts_with("Requested functionality");
    (!absent).then_some(t)
}

fn first_text<'a>(node: Node<'a, 'a>, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| text(node, &[n]))
}

/// "81920 MiB" → bytes.
fn bytes(gpu: usize, field: &'static str, value: &str) -> Result<u64, SmiParseError> {
    let bad = || SmiParseError::BadValue {
        gpu,
        field,
        value: value.to_string(),
    };
    let (num, unit) = value.split_once(' ').ok_or_else(bad)?;
    let n: u64 = num.trim().parse().map_err(|_| bad())?;
    let scale: u64 = match unit.trim() {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

/// "67.03 W" with the expected unit → 67.03; a finite number or an error.
fn number(gpu: usize, field: &'static str, value: &str, unit: &str) -> Result<f64, SmiParseError> {
    let bad = || SmiParseError::BadValue {
        gpu,
        field,
        value: value.to_string(),
    };
    let num = value
        .strip_suffix(unit)
        .map(str::trim_end)
        .ok_or_else(bad)?;
    let n: f64 = num.parse().map_err(|_| bad())?;
    if n.is_finite() {
        Ok(n)
    } else {
        Err(bad())
    }
}
