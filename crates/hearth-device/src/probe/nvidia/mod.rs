//! NVIDIA GPUs: NVML (loaded at run time) first, `nvidia-smi -q -x` when NVML is unavailable.
//!
//! Both sources fill the same [`GpuFacts`], and [`to_accelerator`] is the one pure conversion
//! from facts to an [`Accelerator`], so what a GPU is said to support never depends on which
//! source saw it.

pub mod nvml;
pub mod smi;

use super::{budget, command, Accelerator, Backend, DeviceKind, Precision, Reading};
use std::time::Duration;

pub use smi::{parse_smi_xml, SmiParseError};

/// What one NVIDIA GPU reported, before any derivation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuFacts {
    pub name: String,
    /// `GPU-xxxxxxxx-…` as the driver prints it.
    pub uuid: String,
    pub pci_bus_id: Option<String>,
    /// The source's own architecture name, where it gives one ("Ampere").
    pub architecture: Option<String>,
    /// CUDA compute capability (major, minor); nvidia-smi does not print it.
    pub compute_capability: Option<(u32, u32)>,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: Option<u64>,
    pub driver_version: Option<String>,
    /// The CUDA version the driver supports ("12.2").
    pub cuda_version: Option<String>,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    pub power_limit_w: Option<f64>,
    /// Busy fraction, 0..=1.
    pub utilisation: Option<f64>,
}

/// The NVIDIA probe failed although the platform is present.
#[derive(Debug, thiserror::Error)]
pub enum NvidiaError {
    #[error("nvml: {0}")]
    Nvml(#[from] nvml::NvmlProbeError),
    #[error(transparent)]
    Command(#[from] command::CommandError),
    #[error("nvidia-smi: {0}")]
    Parse(#[from] SmiParseError),
}

/// nvidia-smi can stall for seconds while the driver wakes GPUs without persistence mode.
const SMI_TIMEOUT: Duration = Duration::from_secs(10);
/// A -q -x report is ~15-50 KiB per GPU; this allows a large server with room to spare.
const SMI_LIMIT: usize = 8 << 20;

/// Finds NVIDIA GPUs. No driver, no library and no nvidia-smi is `Ok(vec![])`.
pub fn probe() -> Result<Vec<Accelerator>, NvidiaError> {
    if let Some(facts) = nvml::gather()? {
        return Ok(facts.iter().map(|f| to_accelerator(f, "nvml")).collect());
    }
    probe_smi()
}

/// The second source alone: runs `nvidia-smi -q -x`.
pub fn probe_smi() -> Result<Vec<Accelerator>, NvidiaError> {
    let Some(xml) = command::run("nvidia-smi", &["-q", "-x"], SMI_TIMEOUT, SMI_LIMIT)? else {
        return Ok(Vec::new());
    };
    let facts = parse_smi_xml(&xml)?;
    Ok(facts
        .iter()
        .map(|f| to_accelerator(f, "nvidia-smi"))
        .collect())
}

/// The architecture a compute capability belongs to.
pub fn architecture_for_cc(cc: (u32, u32)) -> Option<&'static str> {
    Some(match cc {
        (3, _) => "Kepler",
        (5, _) => "Maxwell",
        (6, _) => "Pascal",
        (7, 0) | (7, 2) => "Volta",
        (7, 5) => "Turing",
        (8, 9) => "Ada Lovelace",
        (8, _) => "Ampere",
        (9, _) => "Hopper",
        (10, _) | (11, _) | (12, _) => "Blackwell",
        _ => return None,
    })
}

/// The lowest compute capability of a named architecture: what may be assumed of a GPU whose
/// source names the architecture but not its capability (nvidia-smi). The lowest, because
/// claiming a format the GPU lacks is worse than leaving one unused.
pub fn min_cc_for_architecture(name: &str) -> Option<(u32, u32)> {
    let lower = name.to_ascii_lowercase();
    Some(match lower.as_str() {
        "kepler" => (3, 0),
        "maxwell" => (5, 0),
        "pascal" => (6, 0),
        "volta" => (7, 0),
        "turing" => (7, 5),
        "ampere" => (8, 0),
        "ada" | "ada lovelace" => (8, 9),
        "hopper" => (9, 0),
        "blackwell" => (10, 0),
        _ => return None,
    })
}

/// Formats a GPU computes in natively, from its compute capability.
pub fn precisions_for_cc(cc: Option<(u32, u32)>) -> Vec<Precision> {
    let mut out = vec![Precision::F32];
    let Some(cc) = cc else { return out };
    if cc >= (5, 3) {
        out.push(Precision::F16);
    }
    if cc >= (8, 0) {
        out.push(Precision::Bf16);
    }
    // DP4A arrived with 6.1; 6.0 (P100) has fast f16 but no int8 dot product.
    if cc >= (6, 1) {
        out.push(Precision::Int8Dot);
    }
    out
}

/// The one conversion both sources share.
pub fn to_accelerator(f: &GpuFacts, source: &str) -> Accelerator {
    let architecture = f
        .compute_capability
        .and_then(architecture_for_cc)
        .map(str::to_string)
        .or_else(|| f.architecture.clone());
    let effective_cc = f
        .compute_capability
        .or_else(|| f.architecture.as_deref().and_then(min_cc_for_architecture));
    // The UUID is burnt into the board; bus ids move when cards change slots.
    let id = if f.uuid.is_empty() {
        format!("cuda-pci-{}", f.pci_bus_id.as_deref().unwrap_or("unknown"))
    } else {
        format!("cuda-{}", f.uuid.to_ascii_lowercase())
    };
    Accelerator {
        id,
        name: f.name.clone(),
        vendor: "NVIDIA".to_string(),
        kind: DeviceKind::DiscreteGpu,
        backends: vec![Backend::Cuda],
        precisions: precisions_for_cc(effective_cc),
        memory_total_bytes: f.memory_total_bytes,
        memory_free_bytes: f.memory_free_bytes,
        memory_budget_bytes: budget(f.memory_total_bytes, f.memory_free_bytes),
        architecture,
        compute_capability: f.compute_capability.map(|(a, b)| format!("{a}.{b}")),
        driver_version: f.driver_version.clone(),
        runtime_version: f.cuda_version.clone(),
        reading: Reading {
            temperature_c: f.temperature_c,
            power_w: f.power_w,
            power_limit_w: f.power_limit_w,
            utilisation: f.utilisation,
            battery_level: None,
            charging: None,
        },
        source: source.to_string(),
    }
}
